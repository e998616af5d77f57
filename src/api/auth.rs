//! The bearer token on `/fhir` and `/api`.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Lets the request through when no token is configured or when it carries
/// `Authorization: Bearer <token>`; otherwise 401 with `WWW-Authenticate: Bearer`.
pub async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = s.token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => refuse("the bearer token is not the operator token"),
        None => refuse("this endpoint needs Authorization: Bearer <token>"),
    }
}

/// Whether the API was given a token (raw message content is shown only then).
pub fn has_token(s: &AppState) -> bool {
    s.token.is_some()
}

fn refuse(text: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "error": text })),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"halong\""),
    );
    r
}

/// Compares in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn comparison() {
        assert!(super::same(b"abcdefgh", b"abcdefgh"));
        assert!(!super::same(b"abcdefgh", b"abcdefgx"));
        assert!(!super::same(b"abc", b"abcd"));
    }
}
