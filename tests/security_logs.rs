//! No patient data in the log of a full run: the real binary at debug level takes
//! admissions, results, an update, an unroutable and a malformed message, answers
//! searches and a replay; its whole log must not contain a name, identifier, birth
//! date or phone number that was sent.

mod api_helpers;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use api_helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_halong");

/// Patient data in the samples (names as sent and as normalised, identifiers, birth
/// dates, phone numbers, addresses).
const PHI: &[&str] = &[
    "Nguyễn",
    "Ngọc",
    "Ánh",
    "Nguyen",
    "NGUYEN",
    "nguyen thi",
    "Đặng",
    "Dang Van",
    "Trần",
    "Lê Lợi",
    "079190000001",
    "BN000123",
    "BN000777",
    "DN4790000000001",
    "19900215",
    "1990-02-15",
    "19850704",
    "909000001",
    "909000002",
];

fn addr_after(line: &str, key: &str) -> SocketAddr {
    line.split(key)
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_full_run_logs_no_patient_data() {
    let site = Site::new("", "");
    let config = site.config_path();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("level = \"warn\"", "level = \"debug\"");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start halong");
    let _kill = KillOnDrop(child.id());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let (mut his, mut lab, mut http) = (None, None, None);
    while his.is_none() || lab.is_none() || http.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("halong logs its addresses");
        if line.contains("MLLP listener ready") && line.contains("listener=his") {
            his = Some(addr_after(&line, " addr="));
        } else if line.contains("MLLP listener ready") && line.contains("listener=lab") {
            lab = Some(addr_after(&line, " addr="));
        } else if line.contains("HTTP API ready") {
            http = Some(addr_after(&line, "http_addr="));
        }
        log.push(line);
    }
    let (his, lab, http) = (his.unwrap(), lab.unwrap(), http.unwrap());

    let sends: [(SocketAddr, &[u8]); 6] = [
        (his, &sample("adt_a01_nguyen_thi_ngoc_anh.hl7")),
        (lab, &sample("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7")),
        (his, &sample("adt_a08_nguyen_thi_ngoc_anh_update.hl7")),
        (lab, &sample("oru_r01_dang_van_duc_glucose.hl7")),
        (his, &sample("oru_r01_dang_van_duc_glucose.hl7")),
        (
            his,
            b"MSH|^~\\&|HIS|BVDK\rPID|1||BN000123||Nguy\xe1\xbb\x85n^Th\xe1\xbb\x8b||19900215",
        ),
    ];
    for (addr, msg) in sends {
        let code = msa_code(&mllp_send(addr, msg));
        assert!(!code.is_empty(), "every message is answered");
    }
    // Across the process boundary the HTTP API is the only signal: poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, h) = get(http, "/health");
        let m = &h["journal"]["messages"];
        let settled: u64 = ["stored", "error", "unrouted"]
            .iter()
            .map(|s| m[s].as_u64().unwrap_or(0))
            .sum();
        if settled == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "messages settle: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, found) = get(http, &format!("/fhir/Patient?name={}", enc("Nguyễn Thị")));
    assert_eq!(found["total"], 1);
    let (_, found) = get(http, "/fhir/Patient?identifier=079190000001");
    assert_eq!(found["total"], 1);
    assert_eq!(get(http, "/fhir/Patient?name=a&bad=1").0, 400);
    let (code, _) = json(http, "POST", "/api/messages/replay?status=unrouted", None);
    assert_eq!(code, 200);

    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    log.extend(rx.try_iter());
    let whole = log.join("\n");
    assert!(
        whole.contains("message journaled"),
        "the run logged its work at debug level:\n{whole}"
    );
    assert!(whole.contains("replayed messages"));
    for phi in PHI {
        let hits: Vec<&String> = log.iter().filter(|l| l.contains(phi)).collect();
        assert!(hits.is_empty(), "{phi:?} appears in the log: {hits:#?}");
    }
}

/// Kills the engine when the test ends, also when it fails half-way.
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}
