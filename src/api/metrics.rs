//! `/metrics`: Prometheus text exposition. Names are in [`crate::telemetry`].

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let handle = crate::telemetry::install_metrics();
    let journal = s.journal.clone();
    let outbox = s.outbox.clone();
    let broker = s.broker.clone();
    let text = tokio::task::spawn_blocking(move || {
        let durable = journal.durable_id();
        let lag = (durable + 1).saturating_sub(journal.first_unprocessed());
        crate::telemetry::set_gauges(lag, outbox.len());
        let mut text = handle.render();
        if let Some(b) = broker {
            text.push_str(&b.prometheus());
        }
        text
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
