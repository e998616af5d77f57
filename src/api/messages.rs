//! The operator's message browser: `/api/messages` (filtered, paged), one message with
//! its processing trail, and replay.
//!
//! Lists carry ids, times, types, control ids, routes, statuses and errors, never
//! message content. Errors and trail details are shown without the values they quote
//! ([`crate::telemetry::redact_values`]: a failing date or name is patient data). The
//! raw message and the full error texts are returned only with `include=raw`, and only
//! when the API is guarded by the operator token.

// Parameter checks return the finished error response; it is built once per request.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{api_error, auth, AppState};
use crate::journal::{EntryMeta, MessageFilter, Status};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// A replay by filter takes at most this many messages per call.
const MAX_REPLAY: usize = 10_000;
/// How long a replay waits for the records of the replayed messages to be stored.
const REPLAY_WAIT: Duration = Duration::from_secs(10);
const LIST_PARAMS: [&str; 8] = [
    "status", "listener", "route", "type", "since", "until", "before", "limit",
];
const STATUSES: &str = "received, routed, mapped, queued, stored, error, unrouted";

type Params = Vec<(String, String)>;
type ParamsResult = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/messages", get(list))
        .route("/api/messages/replay", post(replay_filtered))
        .route("/api/messages/{id}", get(one))
        .route("/api/messages/{id}/replay", post(replay_one))
}

/// One message without its content; `full` keeps the values its error quotes.
fn summary(e: &EntryMeta, full: bool) -> Value {
    let error = e.error.as_deref().map(|t| {
        if full {
            t.to_string()
        } else {
            crate::telemetry::redact_values(t)
        }
    });
    json!({
        "id": e.id,
        "received": chrono::DateTime::from_timestamp_millis(e.received_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "received_ms": e.received_ms,
        "listener": &*e.listener,
        "type": &*e.message_type,
        "control_id": &*e.control_id,
        "route": e.route_name(),
        "status": e.status.as_str(),
        "error": error,
        "size": e.size,
    })
}

fn bad(text: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, text)
}

fn parse_status(text: &str) -> Result<Status, Response> {
    (1..=7u8)
        .filter_map(Status::from_u8)
        .find(|st| st.as_str() == text)
        .ok_or_else(|| bad(&format!("unknown status \"{text}\"; one of {STATUSES}")))
}

/// A time as RFC 3339 (`2026-11-26T09:00:00Z`) or milliseconds since the epoch.
fn parse_time(key: &str, text: &str) -> Result<i64, Response> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            bad(&format!(
                "{key} \"{text}\" is not a time: give RFC 3339 (2026-11-26T09:00:00Z) or milliseconds since 1970"
            ))
        })
}

/// Builds the filter from the query; `allowed` lists the parameters this endpoint takes.
fn filter_from(params: &Params, allowed: &[&str]) -> Result<(MessageFilter, usize), Response> {
    let mut f = MessageFilter::default();
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in params {
        match k.as_str() {
            _ if !allowed.contains(&k.as_str()) => {
                let hint = crate::diag::did_you_mean(k, allowed.iter().copied())
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                return Err(bad(&format!(
                    "unknown parameter \"{k}\"{hint}; parameters: {}",
                    allowed.join(", ")
                )));
            }
            "status" => f.status = Some(parse_status(v)?),
            "listener" => f.listener = Some(v.clone()),
            "route" => f.route = Some(v.clone()),
            "type" => f.message_type = Some(v.clone()),
            "since" => f.since_ms = Some(parse_time(k, v)?),
            "until" => f.until_ms = Some(parse_time(k, v)?),
            "before" => {
                f.before_id = Some(
                    v.parse()
                        .map_err(|_| bad("before must be a message id (a whole number)"))?,
                )
            }
            "limit" => {
                limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => return Err(bad(&format!("limit must be from 1 to {MAX_LIMIT}"))),
                }
            }
            _ => {}
        }
    }
    Ok((f, limit))
}

fn query_string(params: &Params, replace: &[(&str, String)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    params
        .iter()
        .filter(|(k, _)| !replace.iter().any(|(r, _)| r == k))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .chain(replace.iter().map(|(k, v)| (*k, v.clone())))
        .map(|(k, v)| format!("{}={}", enc(k), enc(&v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `GET /api/messages?status=&listener=&route=&type=&since=&until=&before=&limit=`:
/// newest first; `next` continues after the last one.
async fn list(State(s): State<AppState>, query: ParamsResult) -> Response {
    let Ok(Query(params)) = query else {
        return bad("unreadable query string");
    };
    let (filter, limit) = match filter_from(&params, &LIST_PARAMS) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let journal = s.journal.clone();
    let found = tokio::task::spawn_blocking(move || journal.query(&filter, limit + 1))
        .await
        .unwrap_or_default();
    let more = found.len() > limit;
    let page: Vec<Value> = found
        .iter()
        .take(limit)
        .map(|e| summary(e, false))
        .collect();
    let next = more.then(|| found.get(limit - 1)).flatten().map(|last| {
        format!(
            "/api/messages?{}",
            query_string(&params, &[("before", last.id.to_string())])
        )
    });
    Json(json!({ "messages": page, "next": next })).into_response()
}

/// `GET /api/messages/{id}[?include=raw]`: the summary, the trail, and (with the
/// operator token and `include=raw`) the raw message.
async fn one(State(s): State<AppState>, Path(id): Path<String>, query: ParamsResult) -> Response {
    let Ok(Query(params)) = query else {
        return bad("unreadable query string");
    };
    let mut include_raw = false;
    for (k, v) in &params {
        match (k.as_str(), v.as_str()) {
            ("include", "raw") => include_raw = true,
            ("include", other) => {
                return bad(&format!(
                    "include \"{other}\" is not known; use include=raw"
                ))
            }
            _ => return bad(&format!("unknown parameter \"{k}\"; parameters: include")),
        }
    }
    let Some(meta) = id.parse::<u64>().ok().and_then(|n| s.journal.entry(n)) else {
        return api_error(StatusCode::NOT_FOUND, &format!("no message {id}"));
    };
    if include_raw && !auth::has_token(&s) {
        return api_error(
            StatusCode::FORBIDDEN,
            "message content is shown only when the API is guarded by a token: set [http] token (or HALONG_HTTP__TOKEN)",
        );
    }
    let mut body = summary(&meta, include_raw);
    let mut trail = s.journal.trail(meta.id);
    if !include_raw {
        for step in &mut trail {
            if let Some(d) = &mut step.detail {
                *d = crate::telemetry::redact_values(d);
            }
        }
    }
    body["trail"] = json!(trail);
    if include_raw {
        let journal = s.journal.clone();
        let n = meta.id;
        match tokio::task::spawn_blocking(move || journal.read_raw(n)).await {
            Ok(Ok(raw)) => {
                // A DICOM entry shows its reference, not the instance bytes it carries.
                let raw = crate::dicom::InstanceRef::printable(&raw);
                body["raw"] = json!(String::from_utf8_lossy(raw).replace('\r', "\n"));
            }
            _ => {
                return api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("message {n} could not be read from the journal"),
                )
            }
        }
    }
    Json(body).into_response()
}

/// `POST /api/messages/{id}/replay`.
async fn replay_one(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(n) = id
        .parse::<u64>()
        .ok()
        .filter(|n| s.journal.entry(*n).is_some())
    else {
        return api_error(StatusCode::NOT_FOUND, &format!("no message {id}"));
    };
    run_replay(s, vec![n], false).await
}

/// `POST /api/messages/replay?status=error[&route=…&listener=…&type=…&since=…&until=…]`:
/// replays every matching message (oldest first, at most 10,000 per call).
async fn replay_filtered(State(s): State<AppState>, query: ParamsResult) -> Response {
    let Ok(Query(params)) = query else {
        return bad("unreadable query string");
    };
    let allowed = ["status", "listener", "route", "type", "since", "until"];
    let (filter, _) = match filter_from(&params, &allowed) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if filter.status.is_none() {
        return bad("give status (error or unrouted, usually) so a replay never takes every message by accident");
    }
    let journal = s.journal.clone();
    let mut ids: Vec<u64> = tokio::task::spawn_blocking(move || {
        journal
            .query(&filter, MAX_REPLAY + 1)
            .into_iter()
            .map(|e| e.id)
            .collect()
    })
    .await
    .unwrap_or_default();
    let more = ids.len() > MAX_REPLAY;
    ids.truncate(MAX_REPLAY);
    ids.reverse();
    run_replay(s, ids, more).await
}

async fn run_replay(s: AppState, ids: Vec<u64>, more: bool) -> Response {
    let (journal, outbox, store) = (s.journal.clone(), s.outbox.clone(), s.store.clone());
    // An edge's records end with the broker's confirm (`queued`), not in a store.
    let edge = s.role == crate::config::Role::Edge;
    let done = move |st: Status| {
        matches!(st, Status::Stored | Status::Error | Status::Unrouted)
            || (edge && st == Status::Queued)
    };
    let rules = s.rules.read().expect("rules lock").clone();
    let done = tokio::task::spawn_blocking(move || {
        let report = crate::pipeline::replay(&journal, &outbox, &store, &rules, &ids)?;
        // Wait (bounded) for the store thread (or the broker, on an edge), so the answer
        // tells the final status.
        let deadline = std::time::Instant::now() + REPLAY_WAIT;
        let results: Vec<Value> = report
            .iter()
            .map(|r| {
                let mut v = json!(r);
                if r.outcome == "mapped" {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    let status = journal
                        .wait_status(r.id, left, done)
                        .or_else(|| journal.entry(r.id).map(|m| m.status));
                    v["status"] = json!(status.map_or("mapped", Status::as_str));
                } else {
                    v["status"] = json!(r.outcome);
                }
                if let Some(e) = journal.entry(r.id).and_then(|m| m.error) {
                    v["error"] = json!(&*e);
                }
                if let Some(e) = v["error"].as_str() {
                    v["error"] = json!(crate::telemetry::redact_values(e));
                }
                v
            })
            .collect();
        Ok::<_, crate::pipeline::ReplayError>(results)
    })
    .await;
    match done {
        Ok(Ok(results)) => {
            tracing::info!(count = results.len(), "replayed messages");
            Json(json!({ "replayed": results, "more": more })).into_response()
        }
        Ok(Err(e)) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(_) => api_error(StatusCode::INTERNAL_SERVER_ERROR, "replay failed"),
    }
}
