//! HTTP: FHIR-style read and search under `/fhir`, a small message view under `/api`,
//! and `/health`. Handlers read the journal and the store; they never call listeners.

mod fhir;

use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::journal::{Journal, Status};
use crate::pipeline::Rules;
use crate::queue::Outbox;
use crate::store::Store;

/// Everything a handler may read.
#[derive(Clone)]
pub struct AppState {
    journal: Journal,
    store: Store,
    outbox: Arc<Outbox>,
    rules: Arc<RwLock<Arc<Rules>>>,
    /// The configuration routes and mappings are reloaded from; `None`: no reload.
    reload_from: Option<Arc<crate::config::Config>>,
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
            reload_from: None,
        }
    }

    /// Enables `POST /api/routes/reload`, reading routes and mappings beside `config`.
    pub fn with_reload(mut self, config: Arc<crate::config::Config>) -> Self {
        self.reload_from = Some(config);
        self
    }
}

/// The whole HTTP API, testable without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/messages", get(messages))
        .route("/api/messages/{id}", get(message))
        .route("/api/routes", get(routes))
        .route("/api/routes/reload", post(reload))
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
    });
    let code = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
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

fn api_error(code: StatusCode, text: &str) -> Response {
    (code, Json(json!({ "error": text }))).into_response()
}
