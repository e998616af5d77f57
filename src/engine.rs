//! Starts and stops a whole engine from a [`Config`]: data directory, journal, record
//! store, pipeline, listeners and HTTP. `halong serve` and the integration tests use it.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ListenerKind, QueueKind};
use crate::journal::{Journal, JournalOptions};
use crate::listeners::mllp::{self, MllpSettings};
use crate::pipeline::{Pipeline, Rules};
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
}

/// A running engine.
pub struct Engine {
    pub journal: Journal,
    pub store: Store,
    pub rules: Arc<RwLock<Arc<Rules>>>,
    config: Arc<Config>,
    /// Where the HTTP API listens (useful when the config asked for port 0).
    pub http_addr: SocketAddr,
    /// Each listener's name and bound address.
    pub listener_addrs: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    pipeline: Option<Pipeline>,
}

impl Engine {
    /// Opens everything and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Engine, StartError> {
        if config.queue.kind == QueueKind::Amqp {
            return Err(StartError::Unsupported(
                "[queue] kind = \"amqp\" is not available in this version yet; use kind = \"embedded\"".into(),
            ));
        }
        if let Some(l) = config
            .listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Dicom)
        {
            return Err(StartError::Unsupported(format!(
                "listener \"{}\": kind = \"dicom\" is not available in this version yet",
                l.name
            )));
        }
        let rules = Rules::load(&config).map_err(StartError::Config)?;
        let data = &config.data.dir;
        std::fs::create_dir_all(data).map_err(|source| StartError::DataDir {
            path: data.display().to_string(),
            source,
        })?;
        let journal = Journal::open(
            &data.join("journal"),
            JournalOptions {
                segment_bytes: config.data.journal_segment_mib << 20,
            },
        )?;
        let db_dir = data.join("db");
        let db = Store::sled_config(&db_dir)
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
        let outbox = Arc::new(outbox);
        let store = Store::open(db, &db_dir).map_err(|e| StartError::Store(e.to_string()))?;
        let rules = Arc::new(RwLock::new(Arc::new(rules)));
        let pipeline = Pipeline::start(
            journal.clone(),
            outbox.clone(),
            store.clone(),
            rules.clone(),
        );

        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut listener_addrs = Vec::new();
        for l in &config.listeners {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    what: format!("listener \"{}\"", l.name),
                    addr: l.bind,
                    source,
                })?;
            let addr = socket.local_addr().expect("bound socket has an address");
            listener_addrs.push((l.name.clone(), addr));
            let settings = MllpSettings {
                name: l.name.clone(),
                max_message_bytes: l.max_message_bytes,
                max_connections: l.max_connections,
                idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            };
            tracing::info!(listener = %l.name, %addr, "MLLP listener ready");
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
        let config = Arc::new(config);
        let app = crate::api::app(
            crate::api::AppState::new(journal.clone(), store.clone(), outbox, rules.clone())
                .with_reload(Arc::clone(&config)),
        );
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(http, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }));
        tracing::info!(%http_addr, "HTTP API ready");
        Ok(Engine {
            journal,
            store,
            rules,
            config,
            http_addr,
            listener_addrs,
            shutdown,
            tasks,
            pipeline: Some(pipeline),
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
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "final store sync failed");
        }
    }
}
