//! Helpers for the API and security tests: an engine in a scratch directory (own
//! config, routes and a copy of the mappings the test may edit), on top of the helpers
//! in `tests/common` (whose HTTP client can send a bearer token and POST).
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use halong::config::Config;
use halong::engine::Engine;
use serde_json::Value;

#[path = "../common/mod.rs"]
mod common;

// Not every test uses every helper.
#[allow(unused_imports)]
pub use common::{enc, http as request, msa_code, parse_response, sample, REPO};

/// A scratch directory holding `halong.toml`, `routes/`, `mappings/` and `data/`.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    /// Copies the shipped routes and mappings; `http_extra` and `listener_extra` are
    /// appended to the `[http]` table and to every `[[listener]]`.
    pub fn new(http_extra: &str, listener_extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["routes", "mappings", "mappings/tables"] {
            let from = Path::new(REPO).join(sub);
            let to = dir.path().join(sub);
            std::fs::create_dir_all(&to).unwrap();
            for e in std::fs::read_dir(&from).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
                }
            }
        }
        let text = format!(
            r#"
[data]
dir = "data"

[[listener]]
name = "his"
kind = "mllp"
bind = "127.0.0.1:0"
{listener_extra}

[[listener]]
name = "lab"
kind = "mllp"
bind = "127.0.0.1:0"
{listener_extra}

[http]
bind = "127.0.0.1:0"
{http_extra}

[log]
level = "warn"
"#
        );
        std::fs::write(dir.path().join("halong.toml"), text).unwrap();
        Site { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("halong.toml")
    }

    pub fn config(&self) -> Config {
        Config::from_text(
            &self.config_path(),
            &std::fs::read_to_string(self.config_path()).unwrap(),
            Vec::new(),
        )
        .expect("test config is valid")
    }

    pub async fn start(&self) -> Engine {
        Engine::start(self.config()).await.expect("engine starts")
    }
}

/// GET (or POST) returning JSON.
pub fn json(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let (code, _, body) = request(addr, method, path, token);
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
    (code, v)
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    json(addr, "GET", path, None)
}

/// Ids of a Bundle's entries, in order.
pub fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap_or_else(|| panic!("a Bundle with entries: {bundle}"))
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// The `next` link of a Bundle, as a path and query (the host part dropped).
pub fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(|u| {
            let after_scheme = u.split_once("://").map_or(u, |(_, r)| r);
            after_scheme[after_scheme.find('/').unwrap()..].to_string()
        })
}

/// An MLLP exchange: sends one framed message, returns the ACK text.
pub fn mllp_send(addr: SocketAddr, msg: &[u8]) -> String {
    common::Mllp::connect(addr).send(msg)
}

/// Reads one MLLP frame from any stream.
pub fn read_frame(s: &mut impl Read) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == [0x1C, 0x0D]) {
            let start = buf.iter().position(|b| *b == 0x0B).expect("start block");
            return String::from_utf8(buf[start + 1..end].to_vec()).unwrap();
        }
        let n = s.read(&mut chunk).expect("read ACK");
        assert!(n > 0, "connection closed before the ACK");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A runtime for the engine; the test thread stays a plain blocking client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
