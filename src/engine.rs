//! Starts and stops a whole engine from a [`Config`]: data directory, journal, record
//! store, pipeline, listeners and HTTP. `halong serve` and the integration tests use it.
//!
//! What runs depends on `[queue] kind` and `role`:
//!
//! | kind, role | listeners + journal + mapper | outbox drains to | RabbitMQ consumer |
//! |---|---|---|---|
//! | embedded, all | yes | the local record store | no |
//! | amqp, all | yes | RabbitMQ | yes, into the local record store |
//! | amqp, edge | yes | RabbitMQ | no |
//! | amqp, store | no (no listeners; its journal stays empty) | - | yes |

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ListenerKind, QueueKind, Role};
use crate::journal::{Journal, JournalOptions};
use crate::listeners::dicom;
use crate::listeners::mllp::{self, MllpSettings};
use crate::pipeline::{Pipeline, Rules, Sink};
use crate::queue::amqp::{AmqpSettings, BrokerState, Publisher};
use crate::queue::Outbox;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", crate::diag::render(.0).trim_end())]
    Config(Vec<crate::diag::Diagnostic>),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the data directory {path} is in use by another halong process (it holds {path}/halong.lock); stop it, or give this one its own [data] dir")]
    DataDirInUse { path: String },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot open the record database in {path}: {source}")]
    Db { path: String, source: sled::Error },
    #[error("{0}")]
    Store(String),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("listener \"{listener}\": {source}")]
    DicomTls {
        listener: String,
        source: crate::listeners::dicom::TlsError,
    },
}

/// A running engine.
pub struct Engine {
    /// Held while the engine runs (an exclusive lock on `<data>/halong.lock`).
    _data_lock: std::fs::File,
    pub journal: Journal,
    pub store: Store,
    pub rules: Arc<RwLock<Arc<Rules>>>,
    config: Arc<Config>,
    /// Where the HTTP API listens (useful when the config asked for port 0).
    pub http_addr: SocketAddr,
    /// Each listener's name and bound address.
    pub listener_addrs: Vec<(String, SocketAddr)>,
    /// What this process runs.
    pub role: Role,
    /// The DICOM archive, when a DICOM listener runs.
    pub dicom_archive: Option<Arc<crate::listeners::dicom::Archive>>,
    /// The broker connection's state and counters (`[queue] kind = "amqp"` only).
    pub broker: Option<Arc<BrokerState>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    pipeline: Option<Pipeline>,
}

impl Engine {
    /// Opens everything and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Engine, StartError> {
        let role = config.queue.role;
        let amqp = match config.queue.kind {
            QueueKind::Embedded if role != Role::All => {
                return Err(StartError::Unsupported(format!(
                    "role \"{}\" sends records through RabbitMQ: set [queue] kind = \"amqp\" and url, or run with --role all",
                    role.as_str()
                )))
            }
            QueueKind::Embedded => None,
            QueueKind::Amqp => Some(AmqpSettings::from_config(&config.queue).ok_or_else(|| {
                StartError::Unsupported(
                    "[queue] kind = \"amqp\" needs url = \"amqp://user:pass@host:5672/%2f\"".into(),
                )
            })?),
        };
        let broker = amqp
            .as_ref()
            .map(|a| Arc::new(BrokerState::new(a.redacted_url())));
        // A store maps nothing: it reads no routes or mappings.
        let rules = if role.takes_messages() {
            Rules::load(&config).map_err(StartError::Config)?
        } else {
            Rules::none()
        };
        crate::telemetry::install_metrics();
        for r in rules.routes.routes() {
            crate::telemetry::register_route(&r.name);
        }
        let data = &config.data.dir;
        std::fs::create_dir_all(data).map_err(|source| StartError::DataDir {
            path: data.display().to_string(),
            source,
        })?;
        // One engine per data directory: two would interleave journal writes.
        let data_lock = lock_data_dir(data)?;
        let journal = Journal::open(
            &data.join("journal"),
            JournalOptions {
                segment_bytes: config.data.journal_segment_mib << 20,
            },
        )?;
        let db_dir = data.join("db");
        let db = Store::sled_config(&db_dir)
            .cache_capacity(config.data.cache_mib << 20)
            .open()
            .map_err(|source| StartError::Db {
                path: db_dir.display().to_string(),
                source,
            })?;
        let (outbox, unreadable) =
            Outbox::open(&db).map_err(|e| StartError::Store(e.to_string()))?;
        for e in unreadable {
            if let crate::queue::embedded::OutboxError::Corrupt { id, reason } = e {
                tracing::error!(
                    id,
                    "outbox entry unreadable; the message is marked error and can be replayed"
                );
                journal.set_status(
                    id,
                    crate::journal::Status::Error,
                    Some(format!("outbox entry unreadable: {reason}")),
                );
            }
        }
        if !role.takes_messages() && !outbox.is_empty() {
            tracing::warn!(
                waiting = outbox.len(),
                "this data directory's outbox holds records from an earlier edge or all role; a store does not send them: start it once with --role edge or all to drain them"
            );
        }
        let outbox = Arc::new(outbox);
        let store = Store::open(db, &db_dir).map_err(|e| StartError::Store(e.to_string()))?;
        let rules = Arc::new(RwLock::new(Arc::new(rules)));
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let listeners = if role.takes_messages() {
            &config.listeners[..]
        } else {
            &[]
        };
        let policy = crate::retention::Policy {
            journal_days: config.data.journal_retention_days,
            dicom_days: config.data.dicom_retention_days,
            error_days: config.data.error_retention_days,
            queued_is_done: amqp.is_some(),
        };
        // The archive is opened for a DICOM listener, and for retention even when no
        // DICOM listener is configured any more.
        let archive_dir = data.join("dicom");
        let dicom_archive = if listeners.iter().any(|l| l.kind == ListenerKind::Dicom)
            || (policy.dicom_days > 0 && archive_dir.is_dir())
        {
            Some(
                crate::listeners::dicom::Archive::open(&archive_dir)
                    .map(Arc::new)
                    .map_err(|e| StartError::DataDir {
                        path: archive_dir.display().to_string(),
                        source: e,
                    })?,
            )
        } else {
            None
        };
        let settle = dicom::Settle::new(&archive_dir, dicom_archive.clone());
        let archive_health = settle.health();
        let pipeline = if role.takes_messages() {
            let sink = match (&amqp, &broker) {
                (Some(settings), Some(state)) => Sink::Publish(
                    Box::new(Publisher::new(settings.clone(), state.clone())),
                    tokio::runtime::Handle::current(),
                ),
                _ => Sink::Store,
            };
            Some(Pipeline::start(
                journal.clone(),
                outbox.clone(),
                store.clone(),
                rules.clone(),
                sink,
                settle,
                config.pipeline.priority,
            ))
        } else {
            None
        };
        if let (Some(settings), Some(state), true) = (&amqp, &broker, role.keeps_records()) {
            tasks.push(tokio::spawn(crate::queue::amqp::run_consumer(
                settings.clone(),
                store.clone(),
                state.clone(),
                shutdown.clone(),
            )));
        }
        tracing::info!(
            role = role.as_str(),
            amqp = amqp.is_some(),
            "engine starting"
        );

        let mut listener_addrs = Vec::new();
        if policy.is_active() {
            tasks.push(tokio::spawn(retention(
                journal.clone(),
                dicom_archive.clone(),
                policy,
                shutdown.clone(),
            )));
        }
        for l in listeners {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    what: format!("listener \"{}\"", l.name),
                    addr: l.bind,
                    source,
                })?;
            let addr = socket.local_addr().expect("bound socket has an address");
            listener_addrs.push((l.name.clone(), addr));
            if l.kind == ListenerKind::Dicom {
                let archive = dicom_archive
                    .as_ref()
                    .expect("opened above for every DICOM listener");
                let tls = match (&l.tls_cert, &l.tls_key) {
                    (Some(cert), Some(key)) => {
                        Some(dicom::tls_server_config(cert, key).map_err(|source| {
                            StartError::DicomTls {
                                listener: l.name.clone(),
                                source,
                            }
                        })?)
                    }
                    _ => None,
                };
                let settings = dicom::DicomSettings {
                    name: l.name.clone(),
                    ae_title: l.dicom_ae_title(),
                    allowed_callers: l.allowed_callers.clone().unwrap_or_default(),
                    allowed_peers: l.allowed_peers.clone().unwrap_or_default(),
                    max_associations: l.max_connections,
                    max_pdu: l.max_pdu_bytes.unwrap_or(65536),
                    accept_oversized_pdus: l.accept_oversized_pdus.unwrap_or(false),
                    idle_timeout: Duration::from_secs(l.idle_timeout_secs),
                    write_timeout: Duration::from_secs(l.write_timeout_secs.unwrap_or(30)),
                    tls,
                };
                tracing::info!(listener = %l.name, %addr, tls = settings.tls.is_some(), "DICOM listener ready");
                tasks.push(tokio::spawn(dicom::serve(
                    socket,
                    settings,
                    archive.clone(),
                    journal.clone(),
                    shutdown.clone(),
                )));
                continue;
            }
            let tls = match (&l.tls_cert, &l.tls_key) {
                (Some(c), Some(k)) => Some(crate::tls::Acceptor::load(
                    &config.resolve(c),
                    &config.resolve(k),
                )?),
                _ => None,
            };
            let settings = MllpSettings {
                name: l.name.clone(),
                max_message_bytes: l.max_message_bytes,
                max_connections: l.max_connections,
                idle_timeout: Duration::from_secs(l.idle_timeout_secs),
                tls: tls.clone(),
                nak_unrouted: (l.unrouted_ack == crate::config::UnroutedAck::AE).then(|| {
                    let rules = rules.clone();
                    let check: mllp::RouteCheck = Arc::new(move |listener, header| {
                        let rules = rules.read().expect("rules lock");
                        rules.routes.find(listener, header).is_some()
                    });
                    check
                }),
            };
            crate::telemetry::register_listener(&l.name);
            tracing::info!(listener = %l.name, %addr, tls = tls.is_some(), "MLLP listener ready");
            tasks.push(tokio::spawn(mllp::serve(
                socket,
                settings,
                journal.clone(),
                shutdown.clone(),
            )));
        }

        let http = TcpListener::bind(config.http.bind)
            .await
            .map_err(|source| StartError::Bind {
                what: "the HTTP API".into(),
                addr: config.http.bind,
                source,
            })?;
        let http_addr = http.local_addr().expect("bound socket has an address");
        let http_tls = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::Acceptor::load(
                &config.resolve(c),
                &config.resolve(k),
            )?),
            _ => None,
        };
        let config = Arc::new(config);
        let app = crate::api::app(
            crate::api::AppState::new(journal.clone(), store.clone(), outbox, rules.clone())
                .with_queue(role, broker.clone())
                .with_archive_health(archive_health)
                .with_security(config.http.token.clone(), http_tls.is_some())
                .with_reload(Arc::clone(&config)),
        );
        let token = shutdown.clone();
        let with_tls = http_tls.is_some();
        tasks.push(tokio::spawn(async move {
            let stop = async move { token.cancelled().await };
            let served = match http_tls {
                None => axum::serve(http, app).with_graceful_shutdown(stop).await,
                Some(acceptor) => match crate::tls::TlsListener::new(http, acceptor) {
                    Ok(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }));
        tracing::info!(%http_addr, tls = with_tls, token = config.http.token.is_some(), "HTTP API ready");
        Ok(Engine {
            _data_lock: data_lock,
            journal,
            store,
            rules,
            config,
            http_addr,
            listener_addrs,
            role,
            dicom_archive,
            broker,
            shutdown,
            tasks,
            pipeline,
        })
    }

    /// Reloads routes and mappings (SIGHUP, `POST /api/routes/reload`): the new set is
    /// validated first and swapped in atomically; an invalid set is refused with its
    /// problems and the running set stays.
    pub fn reload(&self) -> Result<Arc<Rules>, Vec<crate::diag::Diagnostic>> {
        Rules::reload(&self.config, &self.rules)
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, lets connections finish their current message, stops the pipeline.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        if let Some(p) = self.pipeline.take() {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
        // Status changes and trail steps ride along with commits; the last ones are
        // made durable here rather than left to the next start's replay.
        let journal = self.journal.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || journal.sync_blocking()).await {
            tracing::error!(error = %e, "final journal sync failed");
        }
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "final store sync failed");
        }
    }
}

/// Runs a retention pass ([`crate::retention::run_once`]) at start and every hour.
async fn retention(
    journal: Journal,
    archive: Option<Arc<crate::listeners::dicom::Archive>>,
    policy: crate::retention::Policy,
    shutdown: CancellationToken,
) {
    const EVERY: Duration = Duration::from_secs(3600);
    loop {
        let (j, a) = (journal.clone(), archive.clone());
        let pass = tokio::task::spawn_blocking(move || {
            crate::retention::run_once(&j, a.as_deref(), &policy, std::time::SystemTime::now())
        });
        match pass.await {
            Ok(Ok(r)) => {
                if r.archive.files > 0 || r.archive.dirs > 0 {
                    tracing::info!(
                        files = r.archive.files,
                        bytes = r.archive.bytes,
                        directories = r.archive.dirs,
                        held = r.archive.held,
                        "retention pruned the DICOM archive"
                    );
                }
                if r.journal.segments > 0 {
                    tracing::info!(
                        segments = r.journal.segments,
                        entries = r.journal.entries,
                        first_kept = r.journal.first_kept,
                        "retention pruned the journal"
                    );
                }
                if r.given_up > 0 {
                    tracing::warn!(
                        messages = r.given_up,
                        error_retention_days = policy.error_days,
                        "retention removed messages that were in error or unrouted (never stored) and older than error_retention_days"
                    );
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Takes the data directory's lock file, or says who holds it.
fn lock_data_dir(data: &std::path::Path) -> Result<std::fs::File, StartError> {
    let path = data.join("halong.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirInUse {
            path: data.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::DataDir {
            path: path.display().to_string(),
            source,
        }),
    }
}
