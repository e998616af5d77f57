//! Helpers shared by the integration tests: an engine on ephemeral ports, an MLLP
//! client, and a tiny HTTP client (no extra dependencies).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halong::config::Config;
use halong::engine::Engine;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Config text for an engine with listeners `his` and `lab` on ephemeral ports and its
/// data in `data`; routes and mappings are the shipped ones.
pub fn config_text(data: &Path, extra: &str) -> String {
    format!(
        r#"
[data]
dir = "{}"

[[listener]]
name = "his"
kind = "mllp"
bind = "127.0.0.1:0"
{extra}

[[listener]]
name = "lab"
kind = "mllp"
bind = "127.0.0.1:0"
{extra}

[http]
bind = "127.0.0.1:0"

[log]
level = "warn"
"#,
        data.display()
    )
}

pub fn config(data: &Path, extra: &str) -> Config {
    let path = Path::new(REPO).join("halong.toml");
    Config::from_text(&path, &config_text(data, extra), Vec::new()).expect("test config is valid")
}

pub async fn start(data: &Path) -> Engine {
    Engine::start(config(data, ""))
        .await
        .expect("engine starts")
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(REPO).join("samples").join(name)).expect("sample exists")
}

pub fn samples_dir() -> PathBuf {
    Path::new(REPO).join("samples")
}

/// A blocking MLLP connection.
pub struct Mllp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Mllp {
    pub fn connect(addr: SocketAddr) -> Mllp {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Mllp {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one framed message and returns the ACK content (unframed, as text).
    pub fn send(&mut self, msg: &[u8]) -> String {
        self.send_raw(&halong::listeners::mllp::frame(msg));
        self.read_frame().expect("an ACK")
    }

    /// Next frame from the server, or None when it closed the connection.
    pub fn read_frame(&mut self) -> Option<String> {
        loop {
            if let Some(start) = self.buf.iter().position(|b| *b == 0x0B) {
                if let Some(end) = self.buf[start..].windows(2).position(|w| w == [0x1C, 0x0D]) {
                    let content = self.buf[start + 1..start + end].to_vec();
                    self.buf.drain(..start + end + 2);
                    return Some(String::from_utf8(content).expect("ACK is UTF-8"));
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// True when the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        self.read_frame().is_none()
    }
}

/// Segments of an ACK, with the MSH timestamp (MSH-7) and ACK control id (MSH-10) blanked
/// so exact comparisons are possible.
pub fn ack_segments(ack: &str) -> Vec<String> {
    ack.split('\r')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("MSH") {
                let mut f: Vec<&str> = s.split('|').collect();
                if f.len() > 9 {
                    f[6] = "<now>";
                    f[9] = "<id>";
                }
                f.join("|")
            } else {
                s.to_string()
            }
        })
        .collect()
}

pub fn msa_code(ack: &str) -> String {
    ack.split('\r')
        .find(|s| s.starts_with("MSA"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap_or("")
        .to_string()
}

/// GET over HTTP/1.1; returns (status, body).
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    http_request(addr, "GET", path_and_query)
}

/// A request without a body over HTTP/1.1; returns (status, body).
pub fn http_request(addr: SocketAddr, method: &str, path_and_query: &str) -> (u16, String) {
    let (code, _, body) = http(addr, method, path_and_query, None);
    (code, body)
}

/// One HTTP/1.1 exchange without a body, with a bearer token when given; returns status,
/// headers (lowercased) and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    parse_response(&resp)
}

/// Status, headers (lowercased) and body of an HTTP/1.1 response (chunked or not).
pub fn parse_response(resp: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8(resp.to_vec()).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The value of a metric without labels (`halong_store_kept_total`) as `/metrics` shows
/// it. Metrics are the process's: tests that run engines side by side read differences.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

pub fn http_json(addr: SocketAddr, path_and_query: &str) -> (u16, serde_json::Value) {
    http_json_with(addr, "GET", path_and_query)
}

/// `method` (without a body) and the JSON answer.
pub fn http_json_with(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
) -> (u16, serde_json::Value) {
    let (code, body) = http_request(addr, method, path_and_query);
    (
        code,
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {body}")),
    )
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until `cond` holds, checking after each journal status change would be ideal;
/// across a process boundary the HTTP API is the only signal, so it is asked every 20 ms,
/// for at most `limit`. Panics with `what` when the limit passes.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Number of journal entries with `status`, from /health.
pub fn count_status(http: SocketAddr, status: &str) -> u64 {
    let (_, h) = http_json(http, "/health");
    h["journal"]["messages"][status].as_u64().unwrap_or(0)
}

/// Starts `halong serve --config CONFIG` (with `env` added, `RUST_LOG` removed) and hands
/// back the process and its log lines as they arrive, so a test can wait for the lines
/// that name its addresses.
pub fn serve_logged(
    config: &Path,
    env: &[(&str, &str)],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_halong"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start halong");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}
