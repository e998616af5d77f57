//! The real `halong` binary: crash safety under SIGKILL, and `halong send`/`check`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_halong");

/// A running `halong serve` and the addresses it logged.
struct Server {
    child: Child,
    his: SocketAddr,
    lab: SocketAddr,
    http: SocketAddr,
}

/// A failing test must not leave its engine running.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config beside links to the shipped routes/ and mappings/.
fn setup(dir: &Path) -> std::path::PathBuf {
    let text = config_text(&dir.join("data"), "").replace("level = \"warn\"", "level = \"info\"");
    std::fs::write(dir.join("halong.toml"), text).unwrap();
    for sub in ["routes", "mappings"] {
        let link = dir.join(sub);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new(REPO).join(sub), link).unwrap();
        }
    }
    dir.join("halong.toml")
}

fn spawn(config: &Path) -> Server {
    let (server, rx) = spawn_env(config, &[]);
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    server
}

/// Starts `halong serve` with these environment variables; returns it once it logged
/// its addresses, with the rest of its log.
fn spawn_env(config: &Path, env: &[(&str, &str)]) -> (Server, std::sync::mpsc::Receiver<String>) {
    let (child, rx) = serve_logged(config, env);
    let (mut his, mut lab, mut http) = (None, None, None);
    while his.is_none() || lab.is_none() || http.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("halong logs its addresses");
        let addr = || -> SocketAddr {
            let a = line.split("addr=").nth(1).expect("addr= in the line");
            a.split_whitespace()
                .next()
                .unwrap()
                .parse()
                .expect("an address")
        };
        if line.contains("MLLP listener ready") && line.contains("listener=his") {
            his = Some(addr());
        } else if line.contains("MLLP listener ready") && line.contains("listener=lab") {
            lab = Some(addr());
        } else if line.contains("HTTP API ready") {
            let a = line
                .split("http_addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            http = Some(a.parse().unwrap());
        }
    }
    let server = Server {
        child,
        his: his.unwrap(),
        lab: lab.unwrap(),
        http: http.unwrap(),
    };
    (server, rx)
}

/// An ADT^A04 for synthetic patient `n`.
fn admission(n: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|BVDK|HALONG|SO_Y_TE|20261120081500+0700||ADT^A04^ADT_A01|CRASH{n}|P|2.5\r\
         PID|1||CR{n:06}^^^BVDK^MR||Hoàng^Minh {n}||19800101|M\r\
         PV1|1|O|KHAM^01|||||||||||||||||V{n:06}\r"
    )
    .into_bytes()
}

#[test]
fn every_acknowledged_message_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let mut server = spawn(&config);
    const N: usize = 300;
    let his = server.his;
    let senders: Vec<_> = (0..4)
        .map(|k| {
            std::thread::spawn(move || {
                let mut conn = Mllp::connect(his);
                let mut acked = Vec::new();
                for n in (k..N).step_by(4) {
                    let ack = conn.send(&admission(n));
                    assert_eq!(msa_code(&ack), "AA", "message {n}");
                    acked.push(n);
                }
                acked
            })
        })
        .collect();
    let acked: usize = senders.into_iter().map(|s| s.join().unwrap().len()).sum();
    assert_eq!(acked, N);
    // Kill at once: some messages are surely still on their way to the store.
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = spawn(&config);
    wait_until(
        "every acknowledged message is stored after the restart",
        Duration::from_secs(120),
        || count_status(server.http, "stored") == N as u64,
    );
    for n in 0..N {
        let (_, b) = http_json(server.http, &format!("/fhir/Patient?identifier=CR{n:06}"));
        assert_eq!(b["total"], 1, "patient {n} is in the store exactly once");
    }
    let (_, b) = http_json(
        server.http,
        &format!("/fhir/Patient?name={}", enc("hoang minh")),
    );
    assert_eq!(
        b["entry"].as_array().map(Vec::len),
        Some(100),
        "name search pages by the default page of 100"
    );
    assert!(
        b["link"][1]["relation"] == "next",
        "a next link leads to the rest"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// A failed sync of the record store stops `serve` with exit status 1, saying why, so
/// that the service manager's restart opens the store anew (a later sync could not
/// vouch for what the failed one lost); the restart stores the message that was on its
/// way.
#[test]
fn serve_stops_after_a_failed_store_sync_and_the_restart_stores_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let (mut server, log) = spawn_env(&config, &[("HALONG_TEST_FAIL_STORE_SYNC", "1")]);
    let mut conn = Mllp::connect(server.his);
    assert_eq!(msa_code(&conn.send(&admission(7))), "AA");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    // The log ends when the process does.
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("serve stops after the failed sync");
        match log.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("serve did not stop: {e}"),
        }
    }
    assert_eq!(server.child.wait().unwrap().code(), Some(1));
    assert!(
        said.iter()
            .any(|l| l.contains("the record store failed a sync")),
        "the log says why: {said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with("halong: stopped because the record store")),
        "and so does stderr: {said:?}"
    );

    let server = spawn(&config);
    wait_until(
        "the admission is stored after the restart",
        Duration::from_secs(60),
        || count_status(server.http, "stored") == 1,
    );
    let (_, b) = http_json(server.http, "/fhir/Patient?identifier=CR000007");
    assert_eq!(b["total"], 1);
}

#[test]
fn send_prints_each_ack_and_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (2 listeners, 7 routes"));

    let mut server = spawn(&config);
    let out = Command::new(BIN)
        .args(["send", "--to", &server.lab.to_string()])
        .arg(samples_dir().join("oru_r01_dang_van_duc_glucose.hl7"))
        .arg(samples_dir().join("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].ends_with("oru_r01_dang_van_duc_glucose.hl7: AA"),
        "{stdout}"
    );

    // Load mode: a summary line with rate and latency percentiles.
    let out = Command::new(BIN)
        .args([
            "send",
            "--to",
            &server.his.to_string(),
            "--repeat",
            "20",
            "--concurrency",
            "4",
            "--unique-ids",
        ])
        .arg(samples_dir().join("adt_a04_dang_van_duc.hl7"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("20 messages in "), "{stdout}");
    assert!(
        stdout.contains("msg/s; ACK latency p50") && stdout.contains("20 AA/CA, 0 other"),
        "{stdout}"
    );

    // A message routed to no mapping on this listener: AA (kept as unrouted), exit 0.
    let out = Command::new(BIN)
        .args(["send", "--to", &server.his.to_string()])
        .arg(samples_dir().join("oru_r01_dang_van_duc_glucose.hl7"))
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_until(
        "the unrouted message is recorded",
        Duration::from_secs(30),
        || count_status(server.http, "unrouted") == 1,
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[test]
fn check_reports_every_problem_with_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("halong.toml"), "[http]\nbnd = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path().join("halong.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The misspelt key is read as `bind`, so what is wrong with its value shows too.
    let file = dir.path().join("halong.toml").display().to_string();
    assert_eq!(
        stderr,
        format!(
            "{file}:2:1: unknown key `bnd` (did you mean `bind`?)\n\
             {file}:2:7: \"x\" has no port: give IP:PORT, e.g. \"0.0.0.0:2575\" or \"127.0.0.1:8080\" (an IP address, not a host name; IPv6 in brackets: \"[::1]:2575\")\n\
             2 problems found\n"
        )
    );

    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config: No such file or directory"));
}
