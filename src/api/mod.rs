//! HTTP: FHIR-style read and search under `/fhir`, the operator's message browser and
//! replay under `/api`, `/metrics` and `/health`. Handlers read the journal and the
//! store; they never call listeners. With a token configured, `/fhir` and `/api` need
//! `Authorization: Bearer <token>` ([`auth`]).

mod auth;
mod fhir;
mod messages;
mod metrics;

use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::Role;
use crate::journal::Journal;
use crate::pipeline::Rules;
use crate::queue::amqp::state::Side;
use crate::queue::amqp::BrokerState;
use crate::queue::Outbox;
use crate::store::Store;

/// Everything a handler may read.
#[derive(Clone)]
pub struct AppState {
    journal: Journal,
    store: Store,
    outbox: Arc<Outbox>,
    rules: Arc<RwLock<Arc<Rules>>>,
    role: Role,
    broker: Option<Arc<BrokerState>>,
    /// The bearer token guarding `/fhir` and `/api`; `None`: open (loopback only).
    token: Option<Arc<str>>,
    /// Served over TLS (links say `https`).
    tls: bool,
    /// The configuration routes and mappings are reloaded from; `None`: no reload.
    reload_from: Option<Arc<crate::config::Config>>,
    /// Set while DICOM archive files cannot be written (instances wait in the journal).
    archive_failing: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl AppState {
    /// Sets the bearer token and whether the API is served over TLS.
    pub fn with_security(mut self, token: Option<String>, tls: bool) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self.tls = tls;
        self
    }

    pub fn new(
        journal: Journal,
        store: Store,
        outbox: Arc<Outbox>,
        rules: Arc<RwLock<Arc<Rules>>>,
    ) -> Self {
        AppState {
            journal,
            store,
            outbox,
            rules,
            role: Role::All,
            broker: None,
            token: None,
            tls: false,
            reload_from: None,
            archive_failing: None,
        }
    }

    /// Reports in `/ready` while `flag` is set: the DICOM archive cannot be written.
    pub fn with_archive_health(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.archive_failing = Some(flag);
        self
    }

    /// What this process runs and, with RabbitMQ, the broker connection (for `/ready`).
    pub fn with_queue(mut self, role: Role, broker: Option<Arc<BrokerState>>) -> Self {
        self.role = role;
        self.broker = broker;
        self
    }

    /// Enables `POST /api/routes/reload`, reading routes and mappings beside `config`.
    pub fn with_reload(mut self, config: Arc<crate::config::Config>) -> Self {
        self.reload_from = Some(config);
        self
    }
}

/// The whole HTTP API, testable without a socket.
pub fn app(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/api/routes", get(routes))
        .route("/api/routes/reload", post(reload))
        .merge(messages::routes())
        .merge(fhir::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(metrics::routes())
        .merge(guarded)
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Response {
    let failing = s.journal.is_failing();
    let statuses: serde_json::Map<String, Value> = s
        .journal
        .status_counts()
        .into_iter()
        .map(|(st, n)| (st.as_str().to_string(), json!(n)))
        .collect();
    let body = json!({
        "status": if failing { "failing" } else { "ok" },
        "journal": { "last_id": s.journal.durable_id(), "writable": !failing, "messages": statuses },
        "outbox": { "waiting": s.outbox.len() },
        "role": s.role.as_str(),
        "broker": s.broker.as_ref().map(|b| b.snapshot()),
    });
    let code = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// 200 when this process can do its job, 503 with the reasons when not: the journal must
/// be writable (roles that take messages in), the record store readable and syncing
/// (roles that keep records), the publisher connected to the broker
/// (edge, all with amqp) and the store consumer connected (store, all with amqp). While
/// the broker is away an edge still acknowledges messages (they wait in the outbox); it
/// reports 503 so an operator sees it, with the outbox size.
async fn ready(State(s): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if s.role.takes_messages() && s.journal.is_failing() {
        problems.push("the journal cannot write".to_string());
    }
    if s.archive_failing
        .as_ref()
        .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
    {
        problems.push(
            "DICOM archive files cannot be written; received instances wait in the journal"
                .to_string(),
        );
    }
    if s.role.keeps_records() {
        let store = s.store.clone();
        let readable = tokio::task::spawn_blocking(move || store.count("Patient").is_ok())
            .await
            .unwrap_or(false);
        if !readable {
            problems.push("the record store cannot be read".to_string());
        }
        if s.store.is_failing() {
            problems.push(
                "the record store cannot make records durable (a sync failed; a restart recovers)"
                    .to_string(),
            );
        }
    }
    if let Some(b) = &s.broker {
        let last = b.last_error().unwrap_or_default();
        if s.role.takes_messages() && !b.is_connected(Side::Publisher) {
            problems.push(format!("publisher not connected to the broker: {last}"));
        }
        if s.role.keeps_records() && !b.is_connected(Side::Consumer) {
            problems.push(format!(
                "store consumer not connected to the broker: {last}"
            ));
        }
    }
    let body = json!({
        "ready": problems.is_empty(),
        "role": s.role.as_str(),
        "problems": problems,
        "outbox": { "waiting": s.outbox.len() },
        "broker": s.broker.as_ref().map(|b| b.snapshot()),
    });
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn routes(State(s): State<AppState>) -> Response {
    let rules = s.rules.read().expect("rules lock").clone();
    let list: Vec<Value> = rules
        .routes
        .routes()
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "from": r.from,
                "message": r.message.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "mapping": r.mapping,
                "file": r.file.display().to_string(),
            })
        })
        .collect();
    Json(json!({ "routes": list })).into_response()
}

/// Loads routes and mappings again; swaps them in only when valid. 200 with the counts,
/// or 422 with every problem (file:line:column) while the running set stays.
async fn reload(State(s): State<AppState>) -> Response {
    let Some(config) = s.reload_from.clone() else {
        return api_error(StatusCode::NOT_FOUND, "reload is not enabled here");
    };
    let rules = s.rules.clone();
    let result = tokio::task::spawn_blocking(move || Rules::reload(&config, &rules)).await;
    match result {
        Ok(Ok(new)) => {
            tracing::info!(
                routes = new.routes.routes().len(),
                mappings = new.mappings.names().count(),
                "routes and mappings reloaded"
            );
            Json(json!({
                "status": "reloaded",
                "routes": new.routes.routes().len(),
                "mappings": new.mappings.names().count(),
            }))
            .into_response()
        }
        Ok(Err(problems)) => {
            tracing::warn!(
                problems = problems.len(),
                "reload refused; the running routes and mappings stay"
            );
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": "the new routes and mappings have problems; the running set stays",
                    "problems": list,
                })),
            )
                .into_response()
        }
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reload failed: {e}"),
        ),
    }
}

pub(crate) fn api_error(code: StatusCode, text: &str) -> Response {
    (code, Json(json!({ "error": text }))).into_response()
}
