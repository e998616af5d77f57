//! The operator API over HTTP: the message browser's filters and paging, the processing
//! trail, and replay after fixing a mapping (the error message becomes stored).

mod api_helpers;

use std::sync::Arc;
use std::time::Duration;

use api_helpers::*;
use halong::journal::Status;
use halong::pipeline::Rules;
use serde_json::Value;

const ORIGINAL: &str = r#""birthDate" = "date(PID-7)""#;
/// MSH-10 ("LAB0002") is no date: every ORU^R01 fails to map.
const BROKEN: &str = r#""birthDate" = "date(MSH-10)""#;

fn message_ids(v: &Value) -> Vec<u64> {
    v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("a message list: {v}"))
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn post(http: std::net::SocketAddr, path: &str) -> (u16, Value) {
    json(http, "POST", path, None)
}

#[test]
fn browse_filter_trail_and_replay_after_fixing_a_mapping() {
    let rt = runtime();
    let site = Site::new("", "");
    let mapping = site.path().join("mappings/oru_r01.toml");
    let text = std::fs::read_to_string(&mapping).unwrap();
    assert!(
        text.contains(ORIGINAL),
        "the test edits this line of the shipped mapping"
    );
    std::fs::write(&mapping, text.replace(ORIGINAL, BROKEN)).unwrap();
    let engine = rt.block_on(site.start());
    let http = engine.http_addr;
    let his = engine.listener_addr("his").unwrap();
    let lab = engine.listener_addr("lab").unwrap();
    let settle = |id| engine.journal.wait_settled(id, Duration::from_secs(30));

    // 1: a result the broken mapping fails on; 2: an admission; 3: a result sent to
    // the admissions port (no route takes it).
    assert_eq!(
        msa_code(&mllp_send(lab, &sample("oru_r01_dang_van_duc_glucose.hl7"))),
        "AA"
    );
    assert_eq!(settle(1), Some(Status::Error));
    assert_eq!(
        msa_code(&mllp_send(his, &sample("adt_a04_dang_van_duc.hl7"))),
        "AA"
    );
    assert_eq!(settle(2), Some(Status::Stored));
    assert_eq!(
        msa_code(&mllp_send(his, &sample("oru_r01_dang_van_duc_glucose.hl7"))),
        "AA"
    );
    assert_eq!(settle(3), Some(Status::Unrouted));

    let (code, errors) = get(http, "/api/messages?status=error");
    assert_eq!(code, 200);
    assert_eq!(message_ids(&errors), [1]);
    let m = &errors["messages"][0];
    assert_eq!(m["route"], "lab-results");
    assert_eq!(m["type"], "ORU^R01");
    assert_eq!(m["listener"], "lab");
    assert_eq!(m["control_id"], "LAB0002");
    assert!(m["received"].as_str().unwrap().ends_with('Z'));
    assert!(
        m["error"]
            .as_str()
            .unwrap()
            .contains("not a valid HL7 date"),
        "{m}"
    );
    assert!(m.get("raw").is_none());
    let listing = errors.to_string();
    for phi in ["Đặng", "BN000777", "19850704"] {
        assert!(
            !listing.contains(phi),
            "the list shows no patient data ({phi})"
        );
    }

    // Filters, newest first.
    let r2 = engine.journal.entry(2).unwrap().received_ms;
    let filters: Vec<(String, Vec<u64>)> = vec![
        ("listener=his".into(), vec![3, 2]),
        ("route=lab-results".into(), vec![1]),
        ("route=admissions".into(), vec![2]),
        (format!("type={}", enc("ADT^*")), vec![2]),
        (format!("type={}", enc("ORU^R01")), vec![3, 1]),
        ("status=unrouted&listener=his".into(), vec![3]),
        (format!("since={r2}"), vec![3, 2]),
        (format!("until={r2}"), vec![1]),
        (format!("since={}", enc("2999-01-01T00:00:00Z")), vec![]),
        (
            format!("until={}", enc("2000-01-01T00:00:00+07:00")),
            vec![],
        ),
    ];
    for (q, want) in &filters {
        let (code, v) = get(http, &format!("/api/messages?{q}"));
        assert_eq!(code, 200, "{q}: {v}");
        assert_eq!(message_ids(&v), *want, "/api/messages?{q}");
    }
    // Paging: `next` continues after the last message shown.
    let (_, p1) = get(http, "/api/messages?limit=2");
    assert_eq!(message_ids(&p1), [3, 2]);
    let next = p1["next"].as_str().expect("a next link").to_string();
    assert!(next.contains("before=2"), "{next}");
    let (_, p2) = get(http, &next);
    assert_eq!(message_ids(&p2), [1]);
    assert!(p2["next"].is_null());
    for (q, text) in [
        ("status=broken", "one of received"),
        ("sinse=1", "did you mean \"since\""),
        ("since=yesterday", "RFC 3339"),
        ("limit=0", "limit"),
    ] {
        let (code, v) = get(http, &format!("/api/messages?{q}"));
        assert_eq!(code, 400, "{q}");
        assert!(v["error"].as_str().unwrap().contains(text), "{q}: {v}");
    }

    // One message: summary and trail, no content.
    let (_, one) = get(http, "/api/messages/1");
    let stages: Vec<&str> = one["trail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["received", "routed", "error"], "{one}");
    assert_eq!(one["trail"][1]["detail"], "lab-results");
    assert!(one.get("raw").is_none());
    let (code, _) = get(http, "/api/messages/1?include=raw");
    assert_eq!(code, 403, "no content without the operator token");
    assert_eq!(get(http, "/api/messages/99").0, 404);

    // Replaying with the broken mapping fails the same way.
    let (code, r) = post(http, "/api/messages/replay?status=error");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["replayed"][0]["id"], 1);
    assert_eq!(r["replayed"][0]["status"], "error");

    // Fix the mapping, load the rules again, replay: the message is stored.
    std::fs::write(&mapping, text).unwrap();
    let fixed = Rules::load(&site.config()).expect("the fixed mapping loads");
    *engine.rules.write().unwrap() = Arc::new(fixed);
    let (code, r) = post(http, "/api/messages/1/replay");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["replayed"][0]["status"], "stored", "{r}");
    let (_, one) = get(http, "/api/messages/1");
    assert_eq!(one["status"], "stored");
    assert!(one["error"].is_null());
    let stages: Vec<&str> = one["trail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "received", "routed", "error", "replay", "routed", "error", "replay", "routed",
            "mapped", "stored"
        ],
        "{one}"
    );
    assert_eq!(
        get(http, "/api/messages?status=error").1["messages"],
        serde_json::json!([])
    );
    let (_, obs) = get(http, "/fhir/Observation?code=2345-7");
    assert_eq!(
        obs["total"], 1,
        "the replayed result's glucose is in the store"
    );

    // Replay by filter: the unrouted message stays unrouted (no route takes it).
    let (_, r) = post(http, "/api/messages/replay?status=unrouted&listener=his");
    assert_eq!(r["replayed"][0]["id"], 3);
    assert_eq!(r["replayed"][0]["status"], "unrouted");
    let (code, v) = post(http, "/api/messages/replay");
    assert_eq!(code, 400, "a replay by filter needs a status: {v}");
    assert_eq!(post(http, "/api/messages/99/replay").0, 404);

    // The same from the command line, against the running engine.
    let cli = site.path().join("cli.toml");
    std::fs::write(&cli, format!("[http]\nbind = \"{http}\"\n")).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_halong"))
            .arg("replay")
            .arg("--config")
            .arg(&cli)
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(run(&["1"]), (true, "1 stored\n".to_string()));
    let (ok, out) = run(&["--status", "unrouted", "--listener", "his"]);
    assert!(!ok, "a message still unrouted fails the command");
    assert!(
        out.starts_with("3 unrouted: no route takes ORU^R01"),
        "{out}"
    );
    rt.block_on(engine.shutdown());
}

#[test]
fn errors_keep_their_route_across_a_restart() {
    let rt = runtime();
    let site = Site::new("", "");
    let mapping = site.path().join("mappings/oru_r01.toml");
    let text = std::fs::read_to_string(&mapping).unwrap();
    std::fs::write(&mapping, text.replace(ORIGINAL, BROKEN)).unwrap();
    let engine = rt.block_on(site.start());
    let lab = engine.listener_addr("lab").unwrap();
    assert_eq!(
        msa_code(&mllp_send(lab, &sample("oru_r01_dang_van_duc_glucose.hl7"))),
        "AA"
    );
    assert_eq!(
        engine.journal.wait_settled(1, Duration::from_secs(30)),
        Some(Status::Error)
    );
    rt.block_on(engine.shutdown());

    // The operator fixes the mapping and restarts; the error is still found by route.
    std::fs::write(&mapping, text).unwrap();
    let engine = rt.block_on(site.start());
    let http = engine.http_addr;
    let (_, v) = get(http, "/api/messages?status=error&route=lab-results");
    assert_eq!(message_ids(&v), [1]);
    assert_eq!(v["messages"][0]["route"], "lab-results");
    // The trail of the first run is kept in the journal.
    let stages = |one: &Value| -> Vec<String> {
        one["trail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, one) = get(http, "/api/messages/1");
    assert_eq!(stages(&one), ["received", "routed", "error"], "{one}");
    assert_eq!(one["trail"][1]["detail"], "lab-results");
    let (_, r) = post(http, "/api/messages/replay?status=error&route=lab-results");
    assert_eq!(r["replayed"][0]["status"], "stored", "{r}");
    rt.block_on(engine.shutdown());
    let engine = rt.block_on(site.start());
    let (_, one) = get(engine.http_addr, "/api/messages/1");
    assert_eq!(
        stages(&one),
        ["received", "routed", "error", "replay", "routed", "mapped", "stored"],
        "{one}"
    );
    rt.block_on(engine.shutdown());
}

/// An error that quotes a patient's value (here the family name a broken mapping reads
/// as a birth date) is listed without it; the full text needs `include=raw` and the token.
#[test]
fn error_texts_show_values_only_with_include_raw_and_the_token() {
    const TOKEN: &str = "s3cret-operator-token-0123";
    let rt = runtime();
    let site = Site::new(&format!("token = \"{TOKEN}\""), "");
    let mapping = site.path().join("mappings/oru_r01.toml");
    let text = std::fs::read_to_string(&mapping).unwrap();
    let reads_the_name = r#""birthDate" = "date(PID-5.1)""#;
    std::fs::write(&mapping, text.replace(ORIGINAL, reads_the_name)).unwrap();
    let engine = rt.block_on(site.start());
    let http = engine.http_addr;
    let lab = engine.listener_addr("lab").unwrap();
    assert_eq!(
        msa_code(&mllp_send(lab, &sample("oru_r01_dang_van_duc_glucose.hl7"))),
        "AA"
    );
    assert_eq!(
        engine.journal.wait_settled(1, Duration::from_secs(30)),
        Some(Status::Error)
    );
    let stored = engine.journal.entry(1).unwrap().error.unwrap();
    assert!(
        stored.contains("\"Đặng\""),
        "the journal keeps the whole text: {stored}"
    );

    let get = |path: &str| json(http, "GET", path, Some(TOKEN));
    let (code, list) = get("/api/messages?status=error");
    assert_eq!(code, 200);
    let error = list["messages"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("route \"lab-results\", mapping \"oru_r01\": "),
        "route and mapping stay named: {error}"
    );
    assert!(
        error.ends_with("birthDate: date(PID-5.1): \"…\" is not a valid HL7 date"),
        "{error}"
    );
    assert_eq!(list["messages"][0]["route"], "lab-results");
    let (_, one) = get("/api/messages/1");
    let (_, replayed) = json(http, "POST", "/api/messages/1/replay", Some(TOKEN));
    assert_eq!(replayed["replayed"][0]["status"], "error", "{replayed}");
    for (what, v) in [("list", &list), ("one", &one), ("replay", &replayed)] {
        let text = v.to_string();
        for phi in ["Đặng", "BN000777", "19850704"] {
            assert!(
                !text.contains(phi),
                "{what} shows no patient data ({phi}): {text}"
            );
        }
    }
    assert_eq!(one["error"], list["messages"][0]["error"]);
    let error_step = one["trail"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "error")
        .expect("an error step");
    assert_eq!(error_step["detail"], one["error"]);

    let (code, full) = get("/api/messages/1?include=raw");
    assert_eq!(code, 200);
    assert_eq!(full["error"].as_str(), Some(&*stored));
    assert!(full["trail"].to_string().contains("Đặng"));
    assert!(full["raw"].as_str().unwrap().contains("Đặng^Văn^Đức"));
    rt.block_on(engine.shutdown());
}
