//! TLS for HTTP and MLLP, with real rustls client handshakes against a certificate
//! made for the test.

mod api_helpers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use api_helpers::*;

const TOKEN: &str = "tls-test-token-0123456789";

fn client_config(
    trusted: Option<&rustls::pki_types::CertificateDer<'static>>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(c) = trusted {
        roots.add(c.clone()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn https_and_mllp_over_tls() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let site = Site::new(
        &format!("token = \"{TOKEN}\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\""),
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"",
    );
    std::fs::write(site.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(site.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let rt = runtime();
    let engine = rt.block_on(site.start());
    let trusted = client_config(Some(cert.cert.der()));

    // MLLP over TLS: a real handshake, then the ACK after the journal commit.
    let his = engine.listener_addr("his").unwrap();
    let mut s = tls_connect(his, trusted.clone());
    s.write_all(&halong::listeners::mllp::frame(&sample(
        "adt_a01_nguyen_thi_ngoc_anh.hl7",
    )))
    .unwrap();
    s.flush().unwrap();
    let ack = read_frame(&mut s);
    assert_eq!(msa_code(&ack), "CA", "{ack}");
    assert_eq!(
        engine.journal.wait_settled(1, Duration::from_secs(30)),
        Some(halong::journal::Status::Stored)
    );

    // HTTPS: the token, and links that say https.
    let mut s = tls_connect(engine.http_addr, trusted.clone());
    write!(
        s,
        "GET /fhir/Patient?name=nguyen HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        // Some servers close without close_notify; what was read is complete.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the HTTPS response: {e}"),
    }
    let (code, _, body) = parse_response(&resp);
    assert_eq!(code, 200, "{body}");
    let bundle: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bundle["total"], 1);
    assert!(bundle["link"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("https://localhost/fhir/Patient?"));

    // A client that does not trust the certificate gets no session.
    let mut s = tls_connect(engine.http_addr, client_config(None));
    let refused = s
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .and_then(|()| s.flush());
    let mut buf = [0u8; 16];
    let read = s.read(&mut buf);
    assert!(
        refused.is_err() || read.is_err(),
        "an untrusted certificate fails the handshake"
    );

    // Plain text on the TLS ports gets no answer in the clear.
    let mut plain = TcpStream::connect(engine.http_addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "no plain HTTP on the HTTPS port"
    );
    rt.block_on(engine.shutdown());
}

#[test]
fn unusable_certificate_files_stop_the_start_with_the_file_named() {
    let site = Site::new("", "tls_cert = \"missing.pem\"\ntls_key = \"key.pem\"");
    let rt = runtime();
    let err = rt
        .block_on(halong::engine::Engine::start(site.config()))
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(text.contains("missing.pem"), "{text}");

    let site = Site::new("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"", "");
    std::fs::write(site.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(site.path().join("key.pem"), "not a key").unwrap();
    let err = rt
        .block_on(halong::engine::Engine::start(site.config()))
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(
        text.contains("cert.pem") && text.contains("BEGIN CERTIFICATE"),
        "{text}"
    );
}
