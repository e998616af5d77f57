//! `/fhir`: read and search of the record store, FHIR R4 style (JSON only).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::AppState;
use crate::diag::did_you_mean;
use crate::store::PatientQuery;

const FHIR_JSON: &str = "application/fhir+json";
const PATIENT_PARAMS: [&str; 3] = ["name", "identifier", "_count"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/Patient", get(search_patients))
        .route("/fhir/Patient/{id}/$everything", get(everything))
        .route("/fhir/{rtype}/{id}", get(read))
}

fn fhir(code: StatusCode, body: Value) -> Response {
    (code, [(header::CONTENT_TYPE, FHIR_JSON)], body.to_string()).into_response()
}

/// An OperationOutcome with one issue.
fn outcome(code: StatusCode, issue_code: &str, text: &str) -> Response {
    fhir(
        code,
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": issue_code, "diagnostics": text }]
        }),
    )
}

fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "record store read failed");
    outcome(
        StatusCode::INTERNAL_SERVER_ERROR,
        "exception",
        "the record store could not be read",
    )
}

fn bundle(kind: &str, resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let url = format!(
                "{}/{}",
                r.get("resourceType").and_then(Value::as_str).unwrap_or(""),
                r.get("id").and_then(Value::as_str).unwrap_or("")
            );
            let mut e = json!({ "fullUrl": url, "resource": r });
            if kind == "searchset" {
                e["search"] = json!({ "mode": "match" });
            }
            e
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": kind, "total": entries.len(), "entry": entries })
}

async fn search_patients(
    State(s): State<AppState>,
    Query(params): Query<BTreeMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    for key in params.keys() {
        if !PATIENT_PARAMS.contains(&key.as_str()) {
            let hint = did_you_mean(key, PATIENT_PARAMS)
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return outcome(
                StatusCode::BAD_REQUEST,
                "not-supported",
                &format!(
                    "unknown search parameter '{key}'{hint}; supported: {}",
                    PATIENT_PARAMS.join(", ")
                ),
            );
        }
    }
    let _ = raw;
    let limit = match params.get("_count").map(|c| c.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                "_count must be a whole number from 1 to 1000",
            )
        }
    };
    let name = params.get("name").filter(|v| !v.trim().is_empty()).cloned();
    let identifier = params
        .get("identifier")
        .filter(|v| !v.trim().is_empty())
        .cloned();
    if name.is_none() && identifier.is_none() {
        return outcome(
            StatusCode::BAD_REQUEST,
            "required",
            "give name or identifier, e.g. /fhir/Patient?name=nguyen",
        );
    }
    let q = PatientQuery {
        name,
        identifier,
        limit,
    };
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.search_patients(&q)).await {
        Ok(Ok(found)) => fhir(StatusCode::OK, bundle("searchset", found)),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}

async fn read(State(s): State<AppState>, Path((rtype, id)): Path<(String, String)>) -> Response {
    let store = s.store.clone();
    let (t, i) = (rtype.clone(), id.clone());
    match tokio::task::spawn_blocking(move || store.get(&t, &i)).await {
        Ok(Ok(Some(r))) => fhir(StatusCode::OK, r),
        Ok(Ok(None)) => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("{rtype}/{id} is not in the record store"),
        ),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}

async fn everything(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let store = s.store.clone();
    let pid = id.clone();
    match tokio::task::spawn_blocking(move || store.everything(&pid)).await {
        Ok(Ok(Some(all))) => fhir(StatusCode::OK, bundle("searchset", all)),
        Ok(Ok(None)) => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("Patient/{id} is not in the record store"),
        ),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}
