//! Helpers for the tests against the real RabbitMQ at 127.0.0.1:5672: unique prefixes,
//! a guard that deletes what a test declared, configs per role, and `halong serve`
//! processes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halong::queue::amqp::Topology;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const BIN: &str = env!("CARGO_BIN_EXE_halong");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A prefix no other test (or run) uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("halong-test.{test}.{}.{nanos}", std::process::id())
}

/// Deletes the exchanges and queues of `prefix` when dropped, also when the test failed.
pub struct TopologyGuard {
    pub prefix: String,
}

impl TopologyGuard {
    pub fn new(test: &str) -> TopologyGuard {
        TopologyGuard {
            prefix: unique_prefix(test),
        }
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.prefix)
    }
}

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        let topology = self.topology();
        // Its own thread and runtime: a test's runtime may be gone or panicking.
        let done = std::thread::spawn(move || {
            block_on(async move {
                if let Ok(ch) = channel().await {
                    let _ = topology.delete(&ch).await;
                }
            })
        })
        .join();
        if done.is_err() {
            eprintln!("could not delete the test's exchanges and queues");
        }
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A fresh connection and channel to the test broker.
pub async fn channel() -> Result<Channel, lapin::Error> {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    conn.create_channel().await
}

/// Messages ready in `queue` (0 when it does not exist).
pub async fn ready_count(queue: &str) -> u32 {
    let Ok(ch) = channel().await else { return 0 };
    match ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(q) => q.message_count(),
        Err(_) => 0,
    }
}

/// `[queue]` for `role` on the test broker.
pub fn queue_section(prefix: &str, role: &str) -> String {
    format!(
        "[queue]\nkind = \"amqp\"\nurl = \"{URL}\"\nprefix = \"{prefix}\"\nrole = \"{role}\"\npublish_timeout_secs = 3\n"
    )
}

/// Config text: listeners `his` and `lab` on ephemeral ports (none for `store`), HTTP on
/// an ephemeral port, the queue on the test broker.
pub fn config_text(data: &Path, prefix: &str, role: &str) -> String {
    let listeners = if role == "store" {
        String::new()
    } else {
        "[[listener]]\nname = \"his\"\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"lab\"\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\n"
            .to_string()
    };
    format!(
        "[data]\ndir = \"{}\"\n\n{listeners}\n{}\n[http]\nbind = \"127.0.0.1:0\"\n\n[log]\nlevel = \"info\"\n",
        data.display(),
        queue_section(prefix, role)
    )
}

/// Writes `halong.toml` in `dir` beside links to the shipped routes/ and mappings/.
pub fn write_config(dir: &Path, prefix: &str, role: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("halong.toml"),
        config_text(&dir.join("data"), prefix, role),
    )
    .unwrap();
    for sub in ["routes", "mappings"] {
        let link = dir.join(sub);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new(REPO).join(sub), link).unwrap();
        }
    }
    dir.join("halong.toml")
}

/// A running `halong serve` and the addresses it logged.
pub struct Server {
    pub child: Child,
    pub listeners: HashMap<String, SocketAddr>,
    pub http: SocketAddr,
}

impl Server {
    pub fn spawn(config: &Path) -> Server {
        Server::spawn_env(config, &[])
    }

    /// Like [`Server::spawn`], with extra environment variables (`HALONG_*` overrides).
    pub fn spawn_env(config: &Path, env: &[(&str, &str)]) -> Server {
        let (child, rx) = crate::common::serve_logged(config, env);
        let mut listeners = HashMap::new();
        let field = |line: &str, key: &str| -> SocketAddr {
            line.split(key)
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{key} in: {line}"))
        };
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("halong logs its addresses");
            if line.contains("MLLP listener ready") {
                let name = line
                    .split("listener=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .unwrap()
                    .to_string();
                listeners.insert(name, field(&line, "addr="));
            } else if line.contains("HTTP API ready") {
                let http = field(&line, "http_addr=");
                return Server {
                    child,
                    listeners,
                    http,
                };
            }
        }
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ADT^A04 for synthetic patient `n` of facility `site`: its own Patient record.
pub fn admission(site: &str, n: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|{site}|HALONG|SO_Y_TE|20261120081500+0700||ADT^A04^ADT_A01|{site}{n}|P|2.5\r\
         PID|1||{site}{n:06}^^^{site}^MR||Hoàng^Minh {n}||19800101|M\r\
         PV1|1|O|KHAM^01|||||||||||||||||V{n:06}\r"
    )
    .into_bytes()
}

/// Records of `resource_type` in a record store directory of a stopped process.
pub fn count_in_store(data: &Path, resource_type: &str) -> usize {
    let db_dir = data.join("db");
    let db = halong::store::Store::sled_config(&db_dir).open().unwrap();
    let store = halong::store::Store::open(db, &db_dir).unwrap();
    store.count(resource_type).unwrap()
}
