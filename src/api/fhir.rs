//! `/fhir`: read and search of the record store, FHIR R4 style (JSON only).
//!
//! Searches answer a `searchset` Bundle with `total` and, when more matches remain, a
//! `next` link. Patient pages continue from the last patient id (`_after`, cheap at
//! any depth); clinical searches and `$everything` by position (`_offset`). Every
//! error is an OperationOutcome: 400 for a request halong cannot answer, 404 for
//! something not in the store.

// Parameter checks return the finished error response; it is built once per request.
#![allow(clippy::result_large_err)]

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::AppState;
use crate::diag::did_you_mean;
use crate::store::{
    ClinicalQuery, DateFilter, DateOrder, NameMatch, Page, PatientQuery, TokenQuery, CLINICAL_TYPES,
};

const FHIR_JSON: &str = "application/fhir+json";
const PATIENT_PARAMS: [&str; 9] = [
    "name",
    "name:exact",
    "name:contains",
    "identifier",
    "birthdate",
    "gender",
    "_count",
    "_after",
    "_total",
];
const CLINICAL_PARAMS: [&str; 7] = [
    "patient", "subject", "date", "code", "_count", "_offset", "_sort",
];
const EVERYTHING_PARAMS: [&str; 2] = ["_count", "_offset"];
const GENDERS: [&str; 4] = ["male", "female", "other", "unknown"];
const DEFAULT_COUNT: usize = 100;
const MAX_COUNT: usize = 1000;

type Params = Vec<(String, String)>;
type ParamsResult = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/Patient", get(search_patients))
        .route("/fhir/Patient/{id}/$everything", get(everything))
        .route("/fhir/{rtype}", get(search_clinical))
        .route("/fhir/{rtype}/{id}", get(read))
}

fn fhir(code: StatusCode, body: Value) -> Response {
    (code, [(header::CONTENT_TYPE, FHIR_JSON)], body.to_string()).into_response()
}

/// An OperationOutcome with one issue.
pub(super) fn outcome(code: StatusCode, issue_code: &str, text: &str) -> Response {
    fhir(
        code,
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": issue_code, "diagnostics": text }]
        }),
    )
}

fn bad(text: &str) -> Response {
    outcome(StatusCode::BAD_REQUEST, "invalid", text)
}

fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "record store read failed");
    outcome(
        StatusCode::INTERNAL_SERVER_ERROR,
        "exception",
        "the record store could not be read",
    )
}

/// Percent-encodes a query value for a link.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `path?k=v&…` with the paging parameters replaced.
fn link(base: &str, path: &str, params: &Params, paging: &[(&str, String)]) -> String {
    let mut parts: Vec<String> = params
        .iter()
        .filter(|(k, _)| !paging.iter().any(|(p, _)| p == k))
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    parts.extend(paging.iter().map(|(k, v)| format!("{k}={}", enc(v))));
    format!("{base}{path}?{}", parts.join("&"))
}

/// `http://host` as the client addressed us (for absolute links).
fn base_url(s: &AppState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if s.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

fn bundle(resources: Vec<Value>, total: Option<usize>, links: Vec<(&str, String)>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let url = format!(
                "{}/{}",
                r.get("resourceType").and_then(Value::as_str).unwrap_or(""),
                r.get("id").and_then(Value::as_str).unwrap_or("")
            );
            json!({ "fullUrl": url, "resource": r, "search": { "mode": "match" } })
        })
        .collect();
    let mut b = json!({ "resourceType": "Bundle", "type": "searchset" });
    if let Some(t) = total {
        b["total"] = json!(t);
    }
    b["link"] = Value::Array(
        links
            .into_iter()
            .map(|(rel, url)| json!({ "relation": rel, "url": url }))
            .collect(),
    );
    b["entry"] = Value::Array(entries);
    b
}

/// Refuses parameters outside `known`, with a suggestion.
fn check_params(params: &Params, known: &[&str]) -> Result<(), Response> {
    for (key, _) in params {
        if !known.contains(&key.as_str()) {
            let hint = did_you_mean(key, known.iter().copied())
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return Err(outcome(
                StatusCode::BAD_REQUEST,
                "not-supported",
                &format!(
                    "unknown search parameter '{key}'{hint}; supported: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn params_or_400(query: ParamsResult) -> Result<Params, Response> {
    query
        .map(|Query(p)| p)
        .map_err(|e| bad(&format!("unreadable query string: {e}")))
}

/// The single value of `key`, refusing repeats.
fn single<'a>(params: &'a Params, key: &str) -> Result<Option<&'a str>, Response> {
    let mut values = params
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(bad(&format!("'{key}' may be given only once")));
    }
    Ok(first.filter(|v| !v.trim().is_empty()))
}

fn count_param(params: &Params) -> Result<usize, Response> {
    match single(params, "_count")?.map(str::parse::<usize>) {
        None => Ok(DEFAULT_COUNT),
        Some(Ok(n)) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        Some(_) => Err(bad(&format!(
            "_count must be a whole number from 1 to {MAX_COUNT}"
        ))),
    }
}

fn offset_param(params: &Params) -> Result<usize, Response> {
    match single(params, "_offset")?.map(str::parse::<usize>) {
        None => Ok(0),
        Some(Ok(n)) => Ok(n),
        Some(Err(_)) => Err(bad("_offset must be a whole number")),
    }
}

fn date_filters(params: &Params, key: &str) -> Result<Vec<DateFilter>, Response> {
    params
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| DateFilter::parse(v).map_err(|e| bad(&format!("{key}: {e}"))))
        .collect()
}

async fn search_patients(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: ParamsResult,
) -> Response {
    let params = match params_or_400(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match patient_query(&params) {
        Ok((q, want_total)) => run_patient_search(s, headers, params, q, want_total).await,
        Err(r) => r,
    }
}

fn patient_query(params: &Params) -> Result<(PatientQuery, bool), Response> {
    check_params(params, &PATIENT_PARAMS)?;
    let names: Vec<(&str, NameMatch)> = [
        ("name", NameMatch::Prefix),
        ("name:exact", NameMatch::Exact),
        ("name:contains", NameMatch::Contains),
    ]
    .into_iter()
    .filter(|(k, _)| params.iter().any(|(p, _)| p == k))
    .collect();
    if names.len() > 1 {
        return Err(bad("give one of name, name:exact, name:contains"));
    }
    let (name, name_match) = match names.first() {
        Some((k, m)) => (single(params, k)?.map(str::to_string), *m),
        None => (None, NameMatch::Prefix),
    };
    let gender = single(params, "gender")?.map(str::to_string);
    if let Some(g) = &gender {
        if !GENDERS.contains(&g.as_str()) {
            return Err(bad(&format!(
                "gender '{g}' is not one of {}",
                GENDERS.join(", ")
            )));
        }
    }
    let want_total = match single(params, "_total")? {
        None | Some("none") | Some("estimate") => false,
        Some("accurate") => true,
        Some(other) => {
            return Err(bad(&format!(
                "_total '{other}' is not one of none, estimate, accurate"
            )))
        }
    };
    Ok((
        PatientQuery {
            name,
            name_match,
            identifier: single(params, "identifier")?.map(str::to_string),
            birthdate: date_filters(params, "birthdate")?,
            gender,
            after: single(params, "_after")?.map(str::to_string),
            limit: count_param(params)?,
        },
        want_total,
    ))
}

async fn run_patient_search(
    s: AppState,
    headers: HeaderMap,
    params: Params,
    q: PatientQuery,
    want_total: bool,
) -> Response {
    let store = s.store.clone();
    let count = q.limit;
    let found = tokio::task::spawn_blocking(move || {
        // One more than the page tells whether a next page exists.
        let page = store.search_patients(&PatientQuery {
            limit: count + 1,
            ..q.clone()
        })?;
        let total = if want_total && q.after.is_none() {
            let mut n = 0;
            let mut all = PatientQuery {
                limit: 10_000,
                ..q.clone()
            };
            loop {
                let chunk = store.search_patients(&all)?;
                n += chunk.len();
                match chunk
                    .last()
                    .and_then(|p| p.get("id"))
                    .and_then(Value::as_str)
                {
                    Some(last) if chunk.len() == all.limit => all.after = Some(last.to_string()),
                    _ => break,
                }
            }
            Some(n)
        } else {
            None
        };
        Ok::<_, crate::store::StoreError>((page, total))
    })
    .await;
    let (mut page, total) = match found {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return store_error(e),
        Err(e) => return store_error(e),
    };
    let base = base_url(&s, &headers);
    let mut links = vec![("self", link(&base, "/fhir/Patient", &params, &[]))];
    let more = page.len() > count;
    page.truncate(count);
    // Without a cursor and without more pages, the page is the whole answer.
    let total = total
        .or((!more && single(&params, "_after").ok().flatten().is_none()).then_some(page.len()));
    if more {
        if let Some(last) = page
            .last()
            .and_then(|p| p.get("id"))
            .and_then(Value::as_str)
        {
            links.push((
                "next",
                link(
                    &base,
                    "/fhir/Patient",
                    &params,
                    &[("_after", last.to_string()), ("_count", count.to_string())],
                ),
            ));
        }
    }
    fhir(StatusCode::OK, bundle(page, total, links))
}

async fn search_clinical(
    State(s): State<AppState>,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    query: ParamsResult,
) -> Response {
    if !CLINICAL_TYPES.contains(&rtype.as_str()) {
        let hint = did_you_mean(&rtype, CLINICAL_TYPES.iter().copied().chain(["Patient"]))
            .map(|t| format!(" (did you mean '{t}'?)"))
            .unwrap_or_default();
        return outcome(
            StatusCode::NOT_FOUND,
            "not-supported",
            &format!(
                "'{rtype}' cannot be searched{hint}; searchable: Patient, {}",
                CLINICAL_TYPES.join(", ")
            ),
        );
    }
    let params = match params_or_400(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let parsed = (|| -> Result<(ClinicalQuery, usize, usize), Response> {
        check_params(&params, &CLINICAL_PARAMS)?;
        let patient = match (single(&params, "patient")?, single(&params, "subject")?) {
            (Some(_), Some(_)) => return Err(bad("give patient or subject, not both")),
            (Some(p), None) | (None, Some(p)) => {
                let id = p.strip_prefix("Patient/").unwrap_or(p);
                if id.is_empty() || id.contains('/') {
                    return Err(bad(&format!(
                        "'{p}' is not a patient reference: give <id> or Patient/<id>"
                    )));
                }
                Some(id.to_string())
            }
            (None, None) => None,
        };
        let codes = params
            .iter()
            .filter(|(k, _)| k == "code")
            .flat_map(|(_, v)| v.split(','))
            .filter(|c| !c.is_empty())
            .map(TokenQuery::parse)
            .collect();
        let order = match single(&params, "_sort")? {
            None | Some("date") => DateOrder::Ascending,
            Some("-date") => DateOrder::Descending,
            Some(other) => {
                return Err(bad(&format!(
                    "_sort '{other}' is not supported; use date or -date"
                )))
            }
        };
        Ok((
            ClinicalQuery {
                resource_type: rtype.clone(),
                patient,
                dates: date_filters(&params, "date")?,
                codes,
                order,
            },
            offset_param(&params)?,
            count_param(&params)?,
        ))
    })();
    let (q, offset, count) = match parsed {
        Ok(x) => x,
        Err(r) => return r,
    };
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.search_clinical(&q, offset, count)).await {
        Ok(Ok(page)) => {
            let path = format!("/fhir/{rtype}");
            paged(&s, &headers, &path, &params, page, offset, count)
        }
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}

/// A Bundle for an offset-paged answer.
fn paged(
    s: &AppState,
    headers: &HeaderMap,
    path: &str,
    params: &Params,
    page: Page,
    offset: usize,
    count: usize,
) -> Response {
    let base = base_url(s, headers);
    let mut links = vec![("self", link(&base, path, params, &[]))];
    if offset + page.resources.len() < page.total {
        links.push((
            "next",
            link(
                &base,
                path,
                params,
                &[
                    ("_offset", (offset + count).to_string()),
                    ("_count", count.to_string()),
                ],
            ),
        ));
    }
    fhir(
        StatusCode::OK,
        bundle(page.resources, Some(page.total), links),
    )
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

async fn everything(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: ParamsResult,
) -> Response {
    let params = match params_or_400(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let paging = check_params(&params, &EVERYTHING_PARAMS)
        .and_then(|()| Ok((offset_param(&params)?, count_param(&params)?)));
    let (offset, count) = match paging {
        Ok(x) => x,
        Err(r) => return r,
    };
    let store = s.store.clone();
    let pid = id.clone();
    match tokio::task::spawn_blocking(move || store.everything_page(&pid, offset, count)).await {
        Ok(Ok(Some(page))) => {
            let path = format!("/fhir/Patient/{id}/$everything");
            paged(&s, &headers, &path, &params, page, offset, count)
        }
        Ok(Ok(None)) => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("Patient/{id} is not in the record store"),
        ),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}
