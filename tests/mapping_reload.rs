//! Hot reload of routes and mappings: `POST /api/routes/reload` and SIGHUP. The new set
//! is validated first; an invalid one is refused with its problems and the running set
//! stays in force.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_halong");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let (_, rest) = body.split_once("\r\n").unwrap();
        rest.rsplit_once("\r\n0\r\n")
            .map_or(rest, |(b, _)| b)
            .trim_end()
            .to_string()
    } else {
        body.to_string()
    };
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")),
    )
}

fn route_names(addr: SocketAddr) -> Vec<String> {
    let (code, v) = http(addr, "GET", "/api/routes");
    assert_eq!(code, 200);
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A config in `dir` with copies of the shipped routes and mappings, ports 0.
fn setup(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        "[data]\ndir = \"{}\"\n\n[[listener]]\nname = \"his\"\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"lab\"\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\n\n[http]\nbind = \"127.0.0.1:0\"\n\n[log]\nlevel = \"info\"\n",
        dir.join("data").display()
    );
    std::fs::write(dir.join("halong.toml"), text).unwrap();
    copy_dir(&Path::new(REPO).join("routes"), &dir.join("routes"));
    copy_dir(&Path::new(REPO).join("mappings"), &dir.join("mappings"));
    dir.join("halong.toml")
}

const EXTRA_ROUTE: &str = "\n[[route]]\nname = \"lab-on-his\"\nfrom = [\"his\"]\nmessage = [\"ORU^R01\"]\nmapping = \"oru_r01\"\n";

#[test]
fn reload_swaps_a_valid_set_and_refuses_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = setup(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = halong::config::Config::load(&config_path)
        .unwrap_or_else(|d| panic!("{}", halong::diag::render(&d)));
    let engine = rt.block_on(halong::engine::Engine::start(config)).unwrap();
    let addr = engine.http_addr;
    let before = route_names(addr);
    assert!(!before.contains(&"lab-on-his".to_string()));

    // An invalid change: a route to a mapping that does not exist, and a bad function.
    let routes = dir.path().join("routes/his.toml");
    let original = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(
        &routes,
        format!(
            "{original}{}",
            EXTRA_ROUTE.replace("\"oru_r01\"", "\"oru_r1\"")
        ),
    )
    .unwrap();
    let (code, body) = http(addr, "POST", "/api/routes/reload");
    assert_eq!(code, 422, "{body}");
    let problems: Vec<String> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    // The `mapping` line of the appended route.
    let line = original.lines().count() + 6;
    let want =
        format!("his.toml:{line}:11: unknown mapping \"oru_r1\" (did you mean \"oru_r01\"?)");
    assert!(problems[0].ends_with(&want), "{problems:?}");
    assert_eq!(route_names(addr), before, "the running set stays");
    assert!(engine.reload().is_err());

    // The fixed change is taken.
    std::fs::write(&routes, format!("{original}{EXTRA_ROUTE}")).unwrap();
    let (code, body) = http(addr, "POST", "/api/routes/reload");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["routes"], before.len() + 1);
    assert!(route_names(addr).contains(&"lab-on-his".to_string()));
    rt.block_on(engine.shutdown());
}

#[test]
fn sighup_reloads_and_keeps_the_old_set_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = setup(dir.path());
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(child.id());
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    let line = wait_for("HTTP API ready");
    let addr: SocketAddr = line
        .split("http_addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let pid = child.id().to_string();
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    let before = route_names(addr);

    let mapping = dir.path().join("mappings/siu_s12.toml");
    let good = std::fs::read_to_string(&mapping).unwrap();
    std::fs::write(
        &mapping,
        good.replace("codeable_concept(SCH-8)", "codeable_concep(SCH-8)"),
    )
    .unwrap();
    hup();
    let refused = wait_for("reload refused");
    assert!(refused.contains("unknown function"), "{refused}");
    assert_eq!(route_names(addr), before);

    std::fs::write(&mapping, good).unwrap();
    let routes = dir.path().join("routes/his.toml");
    let original = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(&routes, format!("{original}{EXTRA_ROUTE}")).unwrap();
    hup();
    wait_for("routes and mappings reloaded");
    assert!(route_names(addr).contains(&"lab-on-his".to_string()));
    child.kill().unwrap();
    child.wait().unwrap();
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
