//! The bearer token: required on /fhir and /api when configured, refused when wrong;
//! raw message content only with it; no HTTP beyond loopback without one.

mod api_helpers;

use std::path::Path;
use std::time::Duration;

use api_helpers::*;
use halong::config::Config;

const TOKEN: &str = "s3cret-operator-token-0123";

#[test]
fn token_guards_fhir_and_api() {
    let rt = runtime();
    let site = Site::new(&format!("token = \"{TOKEN}\""), "");
    let engine = rt.block_on(site.start());
    let http = engine.http_addr;
    let his = engine.listener_addr("his").unwrap();
    assert_eq!(
        msa_code(&mllp_send(his, &sample("adt_a01_nguyen_thi_ngoc_anh.hl7"))),
        "CA"
    );
    assert!(engine
        .journal
        .wait_settled(1, Duration::from_secs(30))
        .is_some());

    for path in [
        "/fhir/Patient?name=nguyen",
        "/fhir/Patient/x",
        "/fhir/Observation?patient=x",
        "/api/messages",
        "/api/messages/1",
        "/api/routes",
    ] {
        let (code, head, _) = request(http, "GET", path, None);
        assert_eq!(code, 401, "{path} without a token");
        assert!(head.contains("www-authenticate: bearer"), "{path}: {head}");
        let (code, _, _) = request(http, "GET", path, Some("s3cret-operator-token-0124"));
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, _, body) = request(http, "GET", path, Some(TOKEN));
        assert!(
            code == 200 || code == 404,
            "{path} with the token: {code} {body}"
        );
    }
    let (code, _, _) = request(http, "POST", "/api/messages/1/replay", None);
    assert_eq!(code, 401, "replay needs the token");
    // Health and metrics carry no patient data and stay open for monitoring.
    assert_eq!(request(http, "GET", "/health", None).0, 200);
    assert_eq!(request(http, "GET", "/metrics", None).0, 200);

    let (code, found) = json(http, "GET", "/fhir/Patient?name=nguyen", Some(TOKEN));
    assert_eq!((code, found["total"].as_u64()), (200, Some(1)));

    // Raw content: only with include=raw, and only with the token.
    let (_, plain) = json(http, "GET", "/api/messages/1", Some(TOKEN));
    assert!(plain.get("raw").is_none());
    assert!(!plain.to_string().contains("Nguyễn"));
    let (code, raw) = json(http, "GET", "/api/messages/1?include=raw", Some(TOKEN));
    assert_eq!(code, 200);
    let raw = raw["raw"].as_str().expect("the raw message");
    assert!(raw.starts_with("MSH|^~\\&|HIS|BVDK_TINH"), "{raw}");
    assert!(raw.contains("Nguyễn^Thị Ngọc^Ánh"));
    assert_eq!(
        request(http, "GET", "/api/messages/1?include=raw", None).0,
        401
    );
    rt.block_on(engine.shutdown());
}

fn config_with(http: &str, env: Vec<(String, String)>) -> Result<Config, String> {
    let text = format!("[http]\n{http}\n");
    Config::from_text(Path::new("/site/halong.toml"), &text, env).map_err(|problems| {
        problems
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[test]
fn no_http_beyond_loopback_without_a_token() {
    let e = config_with("bind = \"0.0.0.0:8080\"", vec![]).unwrap_err();
    assert!(e.starts_with("/site/halong.toml:1:1: "), "{e}");
    assert!(e.contains("no token is set"), "{e}");
    assert!(e.contains("HALONG_HTTP__TOKEN"), "{e}");
    assert!(config_with("bind = \"[::]:8080\"", vec![]).is_err());
    assert!(config_with("bind = \"192.168.1.10:8080\"", vec![]).is_err());

    // A token from the file or the environment allows it.
    assert!(config_with(
        &format!("bind = \"0.0.0.0:8080\"\ntoken = \"{TOKEN}\""),
        vec![]
    )
    .is_ok());
    let env = vec![("HALONG_HTTP__TOKEN".to_string(), TOKEN.to_string())];
    let c = config_with("bind = \"0.0.0.0:8080\"", env).unwrap();
    assert_eq!(c.http.token.as_deref(), Some(TOKEN));
    // Loopback needs none.
    assert!(config_with("bind = \"127.0.0.1:8080\"", vec![]).is_ok());
    assert!(config_with("bind = \"[::1]:8080\"", vec![]).is_ok());

    let e = config_with("bind = \"0.0.0.0:8080\"\ntoken = \"short\"", vec![]).unwrap_err();
    assert!(e.contains("at least 16 characters"), "{e}");
    let e = config_with("tls_cert = \"cert.pem\"", vec![]).unwrap_err();
    assert!(e.contains("both tls_cert and tls_key"), "{e}");
}
