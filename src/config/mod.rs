//! `halong.toml`: the engine's configuration.
//!
//! Every key is documented on its field (this struct is the reference), every key has a
//! default that works on one machine, unknown keys are errors, and every error names
//! `file:line:column`. Scalars can be overridden from the environment with
//! `HALONG_SECTION__KEY` (for a listener: `HALONG_LISTENER__<NAME>__KEY`).
//! `routes/` and `mappings/` are read from the directory that holds the config file, and a
//! relative `[data] dir` is taken relative to it too.

mod env;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::diag::{did_you_mean, Diagnostic};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where halong keeps its journal, outbox and record store.
    #[serde(default)]
    pub data: DataConfig,
    /// Network listeners that take messages in (`[[listener]]`, one table each).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Where mapped records go on their way to the record store.
    #[serde(default)]
    pub queue: QueueConfig,
    /// The HTTP API (FHIR search, health).
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// How the processing stages share the CPU with intake.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Directory holding the config file; `routes/` and `mappings/` are read from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Data directory (journal, outbox, record store). Relative paths are relative to the
    /// config file's directory. Default `data`.
    #[serde(default = "default_data_dir")]
    pub dir: PathBuf,
    /// Size at which the journal starts a new segment file, in MiB. Default 128.
    #[serde(default = "default_segment_mib")]
    pub journal_segment_mib: u64,
    /// Retention: journal segments whose messages are all stored and older than this
    /// many days are deleted (checked at start and every hour). Messages not yet stored
    /// (in flight; errors and unrouted unless `error_retention_days` says otherwise) are
    /// never deleted, and neither is anything after them. Default 0: keep everything.
    #[serde(default)]
    pub journal_retention_days: u64,
    /// Retention of messages in `error` or `unrouted`: older than this many days, they
    /// count as finished for journal retention (and their DICOM files for archive
    /// retention), so one message no mapping will ever take does not keep the journal
    /// from shrinking. At least `journal_retention_days`. Default 0: keep them, and with
    /// them everything received after them.
    #[serde(default)]
    pub error_retention_days: u64,
    /// Retention of the DICOM archive: files under `<dir>/dicom/` (instances, and the
    /// copies of refused instances under `failed/`) received more than this many days ago
    /// are deleted, then the study and series directories left empty (checked at start
    /// and every hour). An instance whose journal entry is not yet stored (or, with
    /// `[queue] kind = "amqp"`, queued) is never deleted; one in error or unrouted, not
    /// before `error_retention_days`. A DICOM instance's journal
    /// entry is kept until its file is gone, so with a DICOM listener and
    /// `journal_retention_days` set this must be set too. At most 36500. Default 0: keep
    /// every file.
    #[serde(default)]
    pub dicom_retention_days: u64,
    /// Memory for the record store's page cache, in MiB (16 to 65536). More keeps more
    /// of the store's pages in memory, so fewer upserts and searches read them back from
    /// disk. Default 256.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: default_data_dir(),
            journal_segment_mib: default_segment_mib(),
            cache_mib: default_cache_mib(),
            journal_retention_days: 0,
            error_retention_days: 0,
            dicom_retention_days: 0,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_segment_mib() -> u64 {
    128
}

fn default_cache_mib() -> u64 {
    256
}

/// Bounds of `[data] cache_mib`.
const CACHE_MIB: std::ops::RangeInclusive<u64> = 16..=65536;

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// HL7 v2 over MLLP (minimal lower layer protocol).
    Mllp,
    /// DICOM upper layer (C-ECHO, C-STORE).
    Dicom,
}

/// How an MLLP listener answers a message that no route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum UnroutedAck {
    #[default]
    AA,
    AE,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name; routes refer to it and the journal records it.
    pub name: String,
    /// `"mllp"` or `"dicom"`.
    pub kind: ListenerKind,
    /// Address and port to listen on, e.g. `"0.0.0.0:2575"`.
    pub bind: SocketAddr,
    /// MLLP: largest message accepted, in bytes; a larger one gets AR and the connection
    /// is closed. Default 10 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most connections (MLLP) or associations (DICOM) open at once; further ones wait
    /// in the kernel's backlog. Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a connection may stay silent before it is closed. Default 300.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// MLLP: the answer to a message no route takes. `"AA"` (default): it is durably kept
    /// with status `unrouted` and can be replayed once a route exists. `"AE"`: the sender
    /// is told (AE, or CE in enhanced mode, with ERR code 200); the message is still kept.
    #[serde(default)]
    pub unrouted_ack: UnroutedAck,
    /// The facility (hospital or health centre code) the senders on this listener belong
    /// to: the mappings' `facility()`, which the shipped ones use where a message names
    /// no facility of its own (an empty MSH-4, a DICOM instance without an issuer or a
    /// known institution), so that two hospitals' patient numbers stay apart. Unset:
    /// absent.
    #[serde(default)]
    pub facility: Option<String>,
    /// DICOM: this listener's AE title. Default `HALONG`.
    #[serde(default)]
    pub ae_title: Option<String>,
    /// DICOM: calling AE titles allowed to connect; empty means any.
    #[serde(default)]
    pub allowed_callers: Option<Vec<String>>,
    /// MLLP: PEM certificate chain for MLLP over TLS; needs `tls_key`. Unset: plain TCP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// MLLP: PEM private key for MLLP over TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// DICOM: peer IP addresses allowed to connect; empty or omitted means any. Other
    /// peers' connections are closed at once.
    #[serde(default)]
    pub allowed_peers: Option<Vec<std::net::IpAddr>>,
    /// DICOM: largest PDU accepted, in bytes (announced to the caller). Default 65536;
    /// at least 4096.
    #[serde(default)]
    pub max_pdu_bytes: Option<u32>,
    /// DICOM: accept PDUs longer than `max_pdu_bytes` (some devices send PDUs larger
    /// than the maximum they were given). Off by default: such a PDU is then held in
    /// memory whole, so a peer could make halong buffer up to 4 GiB; turn on only for
    /// listeners whose `allowed_peers` are known devices that need it.
    #[serde(default)]
    pub accept_oversized_pdus: Option<bool>,
    /// DICOM: seconds a response may take to be written before the association is
    /// aborted. Default 30.
    #[serde(default)]
    pub write_timeout_secs: Option<u64>,
}

impl ListenerConfig {
    /// DICOM: the AE title, `HALONG` by default.
    pub fn dicom_ae_title(&self) -> String {
        self.ae_title.clone().unwrap_or_else(|| "HALONG".into())
    }
}

fn default_max_message_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_max_connections() -> usize {
    256
}
fn default_idle_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// In-process outbox (sled) feeding the local record store. Needs nothing else.
    #[default]
    Embedded,
    /// RabbitMQ (AMQP 0-9-1).
    Amqp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// `"embedded"` (default) or `"amqp"`.
    #[serde(default)]
    pub kind: QueueKind,
    /// AMQP broker URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (amqp only).
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix for every exchange and queue halong declares. Default `halong`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// What this process does: `"all"` (default) takes messages in and keeps the records;
    /// `"edge"` takes messages in and publishes records to RabbitMQ; `"store"` consumes
    /// records from RabbitMQ into the record store. `edge` and `store` need kind = "amqp".
    /// `halong serve --role` overrides it.
    #[serde(default)]
    pub role: Role,
    /// amqp: deliveries the store consumer holds unacknowledged at once. Default 512.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// amqp: seconds to wait for the broker to confirm a publish (or to answer a
    /// connection attempt) before the connection is dropped and the records are sent
    /// again. Default 10.
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout_secs: u64,
    /// amqp: deliveries of one message to the store consumer before the broker moves it
    /// to the dead-letter queue (`<prefix>.dead`). Default 5.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
}

/// Which parts of the engine a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Listeners, journal, mapping and the record store, in one process.
    #[default]
    All,
    /// Listeners, journal and mapping; records are published to RabbitMQ.
    Edge,
    /// The RabbitMQ consumer, the record store and `/fhir`; no listeners.
    Store,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Edge => "edge",
            Role::Store => "store",
        }
    }

    /// Runs listeners, journal and mapping.
    pub fn takes_messages(self) -> bool {
        matches!(self, Role::All | Role::Edge)
    }

    /// Keeps records in the local record store.
    pub fn keeps_records(self) -> bool {
        matches!(self, Role::All | Role::Store)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "all" => Ok(Role::All),
            "edge" => Ok(Role::Edge),
            "store" => Ok(Role::Store),
            _ => Err(format!("unknown role \"{s}\"; one of all, edge, store")),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            kind: QueueKind::Embedded,
            url: None,
            prefix: default_prefix(),
            role: Role::All,
            prefetch: default_prefetch(),
            publish_timeout_secs: default_publish_timeout(),
            delivery_limit: default_delivery_limit(),
        }
    }
}

fn default_prefetch() -> u16 {
    512
}
fn default_publish_timeout() -> u64 {
    10
}
fn default_delivery_limit() -> u32 {
    5
}

fn default_prefix() -> String {
    "halong".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API. Default `127.0.0.1:8080`. An address other than
    /// loopback needs `token`.
    #[serde(default = "default_http_bind")]
    pub bind: SocketAddr,
    /// Bearer token required on `/fhir` and `/api` (`Authorization: Bearer <token>`),
    /// at least 16 characters. Unset: no token is asked for, which is allowed only on
    /// a loopback `bind`. Prefer the environment (`HALONG_HTTP__TOKEN`) to this file.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM certificate chain for HTTPS; needs `tls_key`. Unset: plain HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: default_http_bind(),
            token: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

fn default_http_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Log filter, e.g. `"info"` or `"halong=debug"`; `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Put patient data (names, identifiers, message contents) in log lines. Off by
    /// default: turn on only on a machine whose logs are handled as patient records.
    #[serde(default)]
    pub log_phi: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// CPU priority of the threads that map, store and publish messages after they are
    /// acknowledged. `"idle"` (default): they run on the CPU time that intake (listeners,
    /// the journal, the HTTP API) and other programs leave, so acknowledgements stay fast
    /// in a burst while the backlog waits, durable, in the journal. `"normal"`: they share
    /// the CPU evenly, for a host where other busy programs would otherwise hold records
    /// back. Either way their disk I/O keeps the normal priority. Linux only; elsewhere
    /// both mean normal.
    #[serde(default)]
    pub priority: PipelinePriority,
}

/// See [`PipelineConfig::priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelinePriority {
    #[default]
    Idle,
    Normal,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            log_phi: false,
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}

impl Config {
    /// Reads and validates `path`, applying `HALONG_*` overrides from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (pass --config FILE, or run from the directory holding halong.toml)"
            } else {
                ""
            };
            vec![Diagnostic::whole_file(
                path,
                format!("cannot read config: {e}{hint}"),
            )]
        })?;
        Config::from_text(path, &text, std::env::vars())
    }

    /// Parses config text; `env` supplies the `HALONG_*` overrides.
    pub fn from_text(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Vec<Diagnostic>> {
        let mut config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                // With only misspelt keys, the checks below run on the file as meant.
                let (mut problems, repaired) = every_toml_problem::<Config>(path, text, e);
                if let Some((mut config, meant)) = repaired {
                    config.resolve_paths(path);
                    problems.extend(config.validate(path, &meant));
                }
                return Err(problems);
            }
        };
        let overrides = env::collect(env);
        if !overrides.is_empty() {
            config = env::apply(path, text, &overrides)?;
        }
        config.resolve_paths(path);
        let problems = config.validate(path, text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// The data directory and TLS files relative to the config file's directory.
    fn resolve_paths(&mut self, path: &Path) {
        self.base_dir = Config::base_dir_of(path);
        if self.data.dir.is_relative() {
            self.data.dir = self.base_dir.join(&self.data.dir);
        }
        for l in &mut self.listeners {
            for p in [&mut l.tls_cert, &mut l.tls_key].into_iter().flatten() {
                if p.is_relative() {
                    *p = self.base_dir.join(&*p);
                }
            }
        }
    }

    /// Cross-field checks serde cannot express.
    fn validate(&self, path: &Path, text: &str) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let at = |needle: &str, nth: usize| locate(text, needle, nth);
        let diag =
            |(line, col): (usize, usize), message: &str| Diagnostic::new(path, line, col, message);
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let (line, col) = at("[[listener]]", i);
            if l.name.trim().is_empty() {
                out.push(diag((line, col), "listener name must not be empty"));
            } else if !seen.insert(l.name.clone()) {
                out.push(diag(
                    (line, col),
                    &format!("duplicate listener name \"{}\"", l.name),
                ));
            }
            if let Some(f) = &l.facility {
                if f.is_empty()
                    || f.trim() != f
                    || f.chars().any(|c| c.is_control() || "|^~\\&".contains(c))
                {
                    out.push(diag((line, col), &format!("listener \"{}\": facility must be a code without surrounding spaces and without | ^ ~ \\ &, e.g. \"BVDK_TINH\"", l.name)));
                }
            }
            if l.kind == ListenerKind::Mllp
                && (l.ae_title.is_some()
                    || l.allowed_callers.is_some()
                    || l.allowed_peers.is_some()
                    || l.max_pdu_bytes.is_some()
                    || l.accept_oversized_pdus.is_some()
                    || l.write_timeout_secs.is_some())
            {
                out.push(diag((line, col), &format!("listener \"{}\": ae_title, allowed_callers, allowed_peers, max_pdu_bytes, accept_oversized_pdus and write_timeout_secs apply to kind = \"dicom\" only", l.name)));
            }
            if l.kind == ListenerKind::Dicom {
                let ae = l.dicom_ae_title();
                if ae.trim().is_empty()
                    || ae.len() > 16
                    || !ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
                {
                    out.push(diag((line, col), &format!("listener \"{}\": ae_title must be 1 to 16 printable ASCII characters without a backslash", l.name)));
                }
                if l.max_pdu_bytes.is_some_and(|m| m < 4096) {
                    out.push(diag(
                        (line, col),
                        &format!(
                            "listener \"{}\": max_pdu_bytes must be at least 4096",
                            l.name
                        ),
                    ));
                }
            }
            if l.max_message_bytes < 1024 {
                out.push(diag(
                    (line, col),
                    &format!(
                        "listener \"{}\": max_message_bytes must be at least 1024",
                        l.name
                    ),
                ));
            }
            if l.max_connections == 0 {
                out.push(diag(
                    (line, col),
                    &format!(
                        "listener \"{}\": max_connections must be at least 1",
                        l.name
                    ),
                ));
            }
        }
        let mut binds = std::collections::HashMap::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.bind.port() == 0 {
                continue; // the system picks a free port for each
            }
            if let Some(other) = binds.insert(l.bind, &l.name) {
                let (line, col) = at("[[listener]]", i);
                out.push(diag(
                    (line, col),
                    &format!(
                        "listener \"{}\" binds {} like listener \"{}\"",
                        l.name, l.bind, other
                    ),
                ));
            }
        }
        if self.queue.kind == QueueKind::Amqp && self.queue.url.is_none() {
            let (line, col) = at("[queue]", 0);
            out.push(diag(
                (line, col),
                "queue kind \"amqp\" needs url = \"amqp://user:pass@host:5672/%2f\"",
            ));
        }
        if self.queue.kind == QueueKind::Embedded && self.queue.role != Role::All {
            let (line, col) = at("role", 0);
            out.push(diag((line, col), &format!(
                    "role \"{}\" sends records through RabbitMQ: set [queue] kind = \"amqp\" and url, or use role = \"all\"",
                    self.queue.role.as_str()
                )));
        }
        if self.queue.kind == QueueKind::Amqp {
            let q = &self.queue;
            let bad_prefix = q.prefix.is_empty()
                || q.prefix.len() > 200
                || !q
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if bad_prefix {
                let (line, col) = at("prefix", 0);
                out.push(diag(
                    (line, col),
                    "prefix must be 1 to 200 characters of letters, digits, '-', '_', '.' or ':'",
                ));
            }
            if q.prefetch == 0 {
                let (line, col) = at("prefetch", 0);
                out.push(diag((line, col), "prefetch must be at least 1"));
            }
            if q.publish_timeout_secs == 0 {
                let (line, col) = at("publish_timeout_secs", 0);
                out.push(diag((line, col), "publish_timeout_secs must be at least 1"));
            }
            if q.delivery_limit == 0 {
                let (line, col) = at("delivery_limit", 0);
                out.push(diag((line, col), "delivery_limit must be at least 1"));
            }
            if let Some(url) = &q.url {
                if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                    let (line, col) = at("url", 0);
                    out.push(diag((line, col), "url must start with amqp:// or amqps://, e.g. \"amqp://user:pass@host:5672/%2f\""));
                }
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.tls_cert.is_some() != l.tls_key.is_some() {
                let (line, col) = at("[[listener]]", i);
                out.push(diag(
                    (line, col),
                    &format!(
                        "listener \"{}\": give both tls_cert and tls_key, or neither",
                        l.name
                    ),
                ));
            }
        }
        let http_at = if text.contains("[http]") {
            "[http]"
        } else {
            ""
        };
        let (hline, hcol) = at(http_at, 0);
        let token = self.http.token.as_deref().filter(|t| !t.is_empty());
        if token.is_none() && !self.http.bind.ip().is_loopback() {
            out.push(diag((hline, hcol), &format!(
                    "[http] bind = \"{}\" is reachable from other machines, but no token is set: set token (or the environment variable HALONG_HTTP__TOKEN), or bind 127.0.0.1",
                    self.http.bind
                )));
        }
        if let Some(t) = token {
            if t.chars().count() < MIN_TOKEN_LEN || t.chars().any(|c| c.is_whitespace()) {
                out.push(diag((hline, hcol), &format!("[http] token must be at least {MIN_TOKEN_LEN} characters without spaces (e.g. the output of `openssl rand -hex 24`)")));
            }
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            out.push(diag(
                (hline, hcol),
                "[http]: give both tls_cert and tls_key, or neither",
            ));
        }
        if self.data.journal_segment_mib == 0 {
            let (line, col) = at("journal_segment_mib", 0);
            out.push(diag((line, col), "journal_segment_mib must be at least 1"));
        }
        if !CACHE_MIB.contains(&self.data.cache_mib) {
            out.push(diag(
                locate_key(text, "cache_mib"),
                &format!(
                    "cache_mib = {} is out of range: give {} to {} (MiB; default {})",
                    self.data.cache_mib,
                    CACHE_MIB.start(),
                    CACHE_MIB.end(),
                    default_cache_mib()
                ),
            ));
        }
        for (key, days) in [
            ("journal_retention_days", self.data.journal_retention_days),
            ("dicom_retention_days", self.data.dicom_retention_days),
            ("error_retention_days", self.data.error_retention_days),
        ] {
            if days > MAX_RETENTION_DAYS {
                out.push(diag(
                    locate_key(text, key),
                    &format!("{key} must be at most {MAX_RETENTION_DAYS} (0 keeps everything)"),
                ));
            }
        }
        let (journal_days, error_days) = (
            self.data.journal_retention_days,
            self.data.error_retention_days,
        );
        if error_days > 0 && (journal_days == 0 || error_days < journal_days) {
            let fix = if journal_days == 0 {
                "it applies only with journal retention: set [data] journal_retention_days too (at most as many days), or error_retention_days = 0".to_string()
            } else {
                format!("messages in error would go before the stored ones: give at least journal_retention_days ({journal_days}), or 0 to keep them")
            };
            out.push(diag(
                locate_key(text, "error_retention_days"),
                &format!("error_retention_days = {error_days}: {fix}"),
            ));
        }
        if let Some(problem) = log_filter_problem(&self.log.level) {
            out.push(diag(locate_key(text, "level"), &problem));
        }
        let has_dicom = self.listeners.iter().any(|l| l.kind == ListenerKind::Dicom);
        if has_dicom && self.data.journal_retention_days > 0 && self.data.dicom_retention_days == 0
        {
            out.push(diag(
                locate_key(text, "journal_retention_days"),
                &format!(
                    "journal_retention_days = {} would have to keep the journal entries of DICOM files kept forever (a DICOM entry goes only after its file): set [data] dicom_retention_days too (e.g. {}), or journal_retention_days = 0",
                    self.data.journal_retention_days, self.data.journal_retention_days
                ),
            ));
        }
        out
    }

    /// The directory of config file `path`: where `routes/`, `mappings/` and relative
    /// paths are.
    pub fn base_dir_of(path: &Path) -> PathBuf {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The listener names of config text that does not load, as far as they can be read
    /// (`None` when they cannot), so that routes can still be checked against them.
    pub fn listener_names_in(text: &str) -> Option<Vec<String>> {
        let (doc, errors) = toml::de::DeTable::parse_recoverable(text);
        let listeners = doc.get_ref().get("listener");
        // A syntax error may have cut the file short before its listeners.
        if !errors.is_empty() && listeners.is_none() && text.contains("[[listener]]") {
            return None;
        }
        let Some(listeners) = listeners else {
            return Some(Vec::new());
        };
        let toml::de::DeValue::Array(items) = listeners.get_ref() else {
            return None;
        };
        let name = |item: &toml::Spanned<toml::de::DeValue<'_>>| match item.get_ref() {
            toml::de::DeValue::Table(t) => match t.get("name").map(|n| n.get_ref()) {
                Some(toml::de::DeValue::String(s)) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        };
        items.iter().map(name).collect()
    }

    pub fn routes_dir(&self) -> PathBuf {
        self.base_dir.join("routes")
    }

    pub fn mappings_dir(&self) -> PathBuf {
        self.base_dir.join("mappings")
    }

    /// A path from the config, relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_relative() {
            self.base_dir.join(p)
        } else {
            p.to_path_buf()
        }
    }

    pub fn listener_names(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.name.clone()).collect()
    }

    /// Each listener's `facility`, by listener name, where one is set.
    pub fn facilities(&self) -> std::collections::BTreeMap<String, String> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.facility.clone()?)))
            .collect()
    }
}

/// The levels a log filter names.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// What is wrong with a `[log] level` filter, if anything. The filter syntax would take
/// any bare word as the name of a code module to log (`"verbose"` logs only a module of
/// that name, so nothing at all): here a bare word must be a level, and a module is
/// given with its level (`"info,halong=debug"`).
fn log_filter_problem(filter: &str) -> Option<String> {
    let usage = "give one of off, error, warn, info, debug, trace, optionally followed by MODULE=LEVEL items (e.g. \"info,lapin=warn\")";
    for item in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // Span filters (`target[span{field}]=level`) are left to the filter's own parser.
        if item.contains('[') {
            continue;
        }
        let (module, level) = match item.split_once('=') {
            Some((m, l)) => (Some(m.trim()), l.trim()),
            None => (None, item),
        };
        if module.is_some_and(|m| {
            m.is_empty()
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b))
        }) {
            return Some(format!(
                "log level {filter:?}: {item:?} does not name a module; {usage}"
            ));
        }
        let numeric = level.len() == 1 && (b'0'..=b'5').contains(&level.as_bytes()[0]);
        if !numeric && !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            // "warning", "err", "inf": a level that begins the other.
            let word = level.to_ascii_lowercase();
            let hint = crate::diag::did_you_mean(&word, LOG_LEVELS)
                .or_else(|| {
                    let near = |l: &&str| word.starts_with(*l) || l.starts_with(word.as_str());
                    LOG_LEVELS
                        .iter()
                        .copied()
                        .filter(|_| !word.is_empty())
                        .find(near)
                })
                .map(|l| format!(" (did you mean {l:?}?)"))
                .unwrap_or_default();
            return Some(format!(
                "log level {filter:?}: {level:?} is not a level{hint}; {usage}"
            ));
        }
    }
    let text = crate::telemetry::log_filter_text(filter);
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(text) {
        return Some(format!("log level {filter:?}: {e}; {usage}"));
    }
    None
}

/// Retention periods above this many days (100 years) are refused.
const MAX_RETENTION_DAYS: u64 = 36_500;

/// Line and column of the line that sets `key` (not a comment that names it), or (0, 0).
fn locate_key(text: &str, key: &str) -> (usize, usize) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return crate::diag::line_col(text, offset + line.len() - trimmed.len());
            }
        }
        offset += line.len();
    }
    (0, 0)
}

/// Line and column of the `nth` occurrence of `needle` in `text`, or (0, 0).
fn locate(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    text.match_indices(needle)
        .nth(nth)
        .map_or((0, 0), |(i, _)| crate::diag::line_col(text, i))
}

/// Turns a toml error into a diagnostic with position, adding a suggestion for an
/// unknown key when one is close.
fn toml_diagnostic(path: &Path, text: &str, e: &toml::de::Error) -> Diagnostic {
    let message = e.message().trim().to_string();
    let message = suggest_unknown_field(&message).unwrap_or(message);
    let message = match (message.as_str(), e.span()) {
        ("duplicate key", Some(span)) => {
            crate::diag::explain_duplicate(text, span.start).unwrap_or(message)
        }
        ("invalid socket address syntax", Some(span)) => text
            .get(span.clone())
            .and_then(explain_bad_address)
            .unwrap_or(message),
        _ => message,
    };
    match e.span() {
        Some(span) => Diagnostic::at_offset(path, text, span.start, message),
        None => Diagnostic::whole_file(path, message),
    }
}

/// The problems the file's TOML holds for `T`, `first` and the others, in file order.
/// serde stops at the first; so the text is read again with each entry found wrong set
/// right or taken out, byte for byte so that positions stay the file's: a misspelt key
/// becomes the key it was meant to be (so the field it stands for is not missing too),
/// any other wrong entry is blanked, with the lines of its value. It stops at a syntax
/// error (one at a time is all TOML allows), at an error that is no `key = value`
/// entry, and at a missing field (reported unless an entry was blanked: it may be that
/// entry's own). When only misspelt keys were wrong, the file as meant is returned too,
/// with its text, so that the checks after parsing can run on it.
pub(crate) fn every_toml_problem<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    first: toml::de::Error,
) -> (Vec<Diagnostic>, Option<(T, String)>) {
    const MAX_PROBLEMS: usize = 50;
    let at = |e: &toml::de::Error| e.span().map_or(0, |s| s.start);
    let parses = |t: &str| toml::from_str::<toml::Table>(t).is_ok();
    let mut found = vec![(at(&first), toml_diagnostic(path, text, &first))];
    let mut work = text.to_string();
    let mut err = first;
    let mut blanked = false;
    let mut repaired = None;
    while found.len() < MAX_PROBLEMS {
        let Some(span) = err.span() else { break };
        let renamed = unknown_field(err.message())
            .and_then(|(field, expected)| did_you_mean(field, expected))
            .and_then(|meant| renamed_key(&work, span.clone(), meant))
            .filter(|w| parses(w));
        match renamed {
            Some(w) => work = w,
            None => {
                let start = work[..span.start].rfind('\n').map_or(0, |i| i + 1);
                if work[start..].trim_start().starts_with('[') {
                    break;
                }
                // The entry's line, and the lines after it while its value goes on; an
                // entry no blanking makes whole (a value begun on an earlier line) ends
                // the report.
                let Some(w) = blanked_entry(&work, start, span.end) else {
                    break;
                };
                work = w;
                blanked = true;
            }
        }
        match toml::from_str::<T>(&work) {
            Ok(t) => {
                if !blanked {
                    repaired = Some((t, work));
                }
                break;
            }
            Err(e) if e.message().starts_with("missing field") => {
                if !blanked {
                    found.push((at(&e), toml_diagnostic(path, text, &e)));
                }
                break;
            }
            Err(e) => {
                found.push((at(&e), toml_diagnostic(path, text, &e)));
                err = e;
            }
        }
    }
    // In the file's order, whatever order serde met them in.
    found.sort_by_key(|(offset, _)| *offset);
    (found.into_iter().map(|(_, d)| d).collect(), repaired)
}

/// `text` with the lines from `start` blanked (byte for byte), through the line holding
/// `end` and on, line by line, until the text is TOML again; `None` when it never is.
fn blanked_entry(text: &str, start: usize, end: usize) -> Option<String> {
    let mut end = end;
    loop {
        end = text[end..].find('\n').map_or(text.len(), |i| end + i);
        let blank: String = text[start..end]
            .chars()
            .map(|c| " ".repeat(c.len_utf8()))
            .collect();
        let mut trial = text.to_string();
        trial.replace_range(start..end, &blank);
        if toml::from_str::<toml::Table>(&trial).is_ok() {
            return Some(trial);
        }
        if end == text.len() {
            return None;
        }
        end += 1;
    }
}

/// `text` with the bare key at `span` replaced by `meant`, when the key and the blanks
/// after it have room for it (`mesage = 1` → `message= 1`).
fn renamed_key(text: &str, span: std::ops::Range<usize>, meant: &str) -> Option<String> {
    let key = text.get(span.clone())?;
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    let room = key.len()
        + text[span.end..]
            .bytes()
            .take_while(|b| *b == b' ' || *b == b'\t')
            .count();
    if meant.len() > room {
        return None;
    }
    let mut out = text.to_string();
    out.replace_range(span.start..span.start + room, &format!("{meant:<room$}"));
    Some(out)
}

/// What is wrong with a quoted `bind` value that is no socket address.
fn explain_bad_address(quoted: &str) -> Option<String> {
    let value = quoted.trim().trim_matches('"');
    let example = "give IP:PORT, e.g. \"0.0.0.0:2575\" or \"127.0.0.1:8080\" (an IP address, not a host name; IPv6 in brackets: \"[::1]:2575\")";
    if value.parse::<u16>().is_ok() {
        return Some(format!(
            "\"{value}\" is a port without an IP address: {example}"
        ));
    }
    let bare = value.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!("\"{value}\" has no port: {example}"));
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Some(format!("\"{value}\" has no port: {example}"));
    };
    if port.parse::<u16>().is_err() {
        return Some(format!(
            "\"{value}\": port \"{port}\" must be a number from 0 to 65535; {example}"
        ));
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => Some(format!("\"{value}\": {example}")),
        Ok(_) => None,
        Err(_) => Some(format!(
            "\"{value}\": \"{host}\" is not an IP address; {example}"
        )),
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" gains "(did you mean `a`?)".
fn suggest_unknown_field(message: &str) -> Option<String> {
    let (field, expected) = unknown_field(message)?;
    Some(match did_you_mean(field, expected.iter().copied()) {
        Some(s) => format!("unknown key `{field}` (did you mean `{s}`?)"),
        None => {
            let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!("unknown key `{field}`; expected one of {}", list.join(", "))
        }
    })
}

/// The unknown key serde's message names, and the keys it expected instead.
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    Some((field, rest.split('`').skip(1).step_by(2).collect()))
}

#[cfg(test)]
mod tests;
