//! HTTP: FHIR-style read and search under `/fhir`, a small message view under `/api`,
//! and `/health`. Handlers read the journal and the store; they never call listeners.

mod fhir;

use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::Role;
use crate::journal::{Journal, Status};
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
}

impl AppState {
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
        }
    }

    /// What this process runs and, with RabbitMQ, the broker connection (for `/ready`).
    pub fn with_queue(mut self, role: Role, broker: Option<Arc<BrokerState>>) -> Self {
        self.role = role;
        self.broker = broker;
        self
    }
}

/// The whole HTTP API, testable without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/messages", get(messages))
        .route("/api/messages/{id}", get(message))
        .route("/api/routes", get(routes))
        .merge(fhir::routes())
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
/// be writable (roles that take messages in), the publisher connected to the broker
/// (edge, all with amqp) and the store consumer connected (store, all with amqp). While
/// the broker is away an edge still acknowledges messages (they wait in the outbox); it
/// reports 503 so an operator sees it, with the outbox size.
async fn ready(State(s): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if s.role.takes_messages() && s.journal.is_failing() {
        problems.push("the journal cannot write".to_string());
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    status: Option<String>,
    limit: Option<usize>,
}

/// The newest journal entries: ids, times, types, statuses and errors, no message content.
async fn messages(
    State(s): State<AppState>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                &format!("{e}; parameters: status, limit"),
            )
        }
    };
    let status = match q.status.as_deref() {
        None => None,
        Some(text) => match (1..=7u8).filter_map(Status::from_u8).find(|st| st.as_str() == text) {
            Some(st) => Some(st),
            None => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown status \"{text}\"; one of received, routed, mapped, queued, stored, error, unrouted"),
                )
            }
        },
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Json(json!({ "messages": s.journal.recent(limit, status) })).into_response()
}

async fn message(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match id.parse::<u64>().ok().and_then(|id| s.journal.entry(id)) {
        Some(e) => Json(json!(e)).into_response(),
        None => api_error(StatusCode::NOT_FOUND, &format!("no message {id}")),
    }
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

fn api_error(code: StatusCode, text: &str) -> Response {
    (code, Json(json!({ "error": text }))).into_response()
}
