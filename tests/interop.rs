//! Interop with an independent MLLP client: python-hl7's `MLLPClient` (installed by
//! scripts/test-all.sh).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn python_hl7_client_gets_acks_and_records_arrive() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let addr = engine.listener_addr("lab").unwrap();
    let script = std::path::Path::new(REPO).join("tests/peers/mllp_send.py");
    let files = [
        "oru_r01_nguyen_thi_ngoc_anh_cbc.hl7",
        "oru_r01_dang_van_duc_glucose.hl7",
    ];
    let out = Command::new("python3")
        .arg(&script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files.iter().map(|f| samples_dir().join(f)))
        .output()
        .expect("python3 runs (scripts/test-all.sh installs python-hl7)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-hl7 client failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let acks: Vec<&str> = stdout.lines().collect();
    assert_eq!(acks.len(), 2, "{stdout}");
    assert!(acks[0].contains("|CR|MSA|AA|LAB0001"), "{}", acks[0]);
    assert!(acks[1].contains("|CR|MSA|AA|LAB0002"), "{}", acks[1]);
    for id in 1..=2 {
        assert_eq!(
            engine.journal.wait_settled(id, Duration::from_secs(30)),
            Some(halong::journal::Status::Stored)
        );
    }
    let (_, b) = http_json(
        engine.http_addr,
        &format!("/fhir/Patient?name={}", enc("Đặng Văn Đức")),
    );
    assert_eq!(b["total"], 1);
    rt.block_on(engine.shutdown());
}
