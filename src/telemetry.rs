//! Logging setup. Log lines carry ids, types, routes, sizes and errors; never names,
//! identifiers or values, unless the operator sets `[log] log_phi = true`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

static LOG_PHI: OnceLock<bool> = OnceLock::new();

/// Installs the global subscriber (stderr). `RUST_LOG` wins over `level`.
pub fn init(level: &str, log_phi: bool) {
    let _ = LOG_PHI.set(log_phi);
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(log_filter_text(level)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A `[log] level` filter as the filter parser takes it: items without the spaces an
/// operator may put after a comma.
pub fn log_filter_text(level: &str) -> String {
    let items: Vec<&str> = level.split(',').map(str::trim).collect();
    items.join(",")
}

/// Whether patient data may appear in logs.
pub fn log_phi() -> bool {
    LOG_PHI.get().copied().unwrap_or(false)
}

/// Words after which a quoted part names configuration, not message content.
const NAMES_AFTER: [&str; 6] = ["route", "mapping", "listener", "AE", "table", "function"];
/// Quoted parts that are FHIR key names, not values.
const KEY_NAMES: [&str; 2] = ["id", "resourceType"];
/// What a hidden value is shown as.
pub const HIDDEN: &str = "\"…\"";

/// An error text without the values it quotes. Processing errors name routes, mappings
/// and fields, and quote the value that failed (`"Đặng" is not a valid HL7 date`), which
/// may be patient data. Every double-quoted part becomes `"…"` unless it follows one of
/// `route`, `mapping`, `listener`, `AE`, `table`, `function` (names from halong's own
/// files and config) or is a FHIR key name (`"id"`, `"resourceType"`). Quoted parts use
/// Rust's escapes (`\"`, `\\`); an unterminated quote hides the rest of the text.
pub fn redact_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let body = &rest[start + 1..];
        let mut escaped = false;
        let end = body.char_indices().find_map(|(i, c)| {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                return Some(i);
            }
            None
        });
        let Some(end) = end else {
            out.push_str(HIDDEN);
            return out;
        };
        let inner = &body[..end];
        let before = out
            .trim_end()
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or("");
        if NAMES_AFTER.contains(&before) || KEY_NAMES.contains(&inner) {
            out.push('"');
            out.push_str(inner);
            out.push('"');
        } else {
            out.push_str(HIDDEN);
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------
// Metrics (Prometheus text at `/metrics`). Names, one place:

/// Messages taken off the wire, per listener.
pub const RECEIVED: &str = "halong_messages_received_total";
/// Positive acknowledgements sent (AA/CA), per listener.
pub const ACKED: &str = "halong_messages_acked_total";
/// Negative acknowledgements sent (AE/AR/CE/CR), per listener.
pub const NAKED: &str = "halong_messages_naked_total";
/// Messages mapped to records, per route.
pub const MAPPED: &str = "halong_route_mapped_total";
/// Messages that failed routing or mapping, per route (`route="(none)"`: unrouted or
/// unparsable).
pub const FAILED: &str = "halong_route_failed_total";
/// Journal entries durable but not yet routed and mapped.
pub const JOURNAL_LAG: &str = "halong_journal_lag";
/// Entries waiting in the outbox for the record store.
pub const OUTBOX_DEPTH: &str = "halong_outbox_depth";
/// Records written to the record store.
pub const STORE_WRITES: &str = "halong_store_writes_total";
/// Results and reports the store kept because the version given was at an earlier
/// stage (a preliminary after its final).
pub const STORE_KEPT: &str = "halong_store_kept_total";
/// Seconds from a message's last byte to its ACK, per listener.
pub const ACK_LATENCY: &str = "halong_ack_latency_seconds";
/// Seconds from a message's arrival to its records being stored.
pub const END_TO_END: &str = "halong_end_to_end_latency_seconds";

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static METRICS: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

/// Installs the process-wide metrics recorder (once; later calls return the same
/// handle) and registers every metric so `/metrics` lists them before they move.
pub fn install_metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    METRICS.get_or_init(|| {
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        metrics::describe_counter!(RECEIVED, "Messages taken off the wire, per listener.");
        metrics::describe_counter!(ACKED, "Positive acknowledgements sent, per listener.");
        metrics::describe_counter!(NAKED, "Negative acknowledgements sent, per listener.");
        metrics::describe_counter!(MAPPED, "Messages mapped to records, per route.");
        metrics::describe_counter!(
            FAILED,
            "Messages that failed routing or mapping, per route."
        );
        metrics::describe_gauge!(
            JOURNAL_LAG,
            "Journal entries durable but not yet processed."
        );
        metrics::describe_gauge!(OUTBOX_DEPTH, "Outbox entries waiting for the record store.");
        metrics::describe_counter!(STORE_WRITES, "Records written to the record store.");
        metrics::describe_counter!(
            STORE_KEPT,
            "Results and reports kept as stored because the version given was at an earlier stage (a preliminary after its final)."
        );
        metrics::describe_histogram!(
            ACK_LATENCY,
            metrics::Unit::Seconds,
            "Seconds from a message's last byte to its ACK."
        );
        metrics::describe_histogram!(
            END_TO_END,
            metrics::Unit::Seconds,
            "Seconds from a message's arrival to its records being stored."
        );
        metrics::counter!(STORE_WRITES).increment(0);
        metrics::counter!(STORE_KEPT).increment(0);
        metrics::counter!(FAILED, "route" => "(none)").increment(0);
        handle
    })
}

/// Registers the per-listener series at 0 so they are listed before the first message.
pub fn register_listener(listener: &str) {
    for name in [RECEIVED, ACKED, NAKED] {
        metrics::counter!(name, "listener" => listener.to_string()).increment(0);
    }
}

/// Registers the per-route series at 0.
pub fn register_route(route: &str) {
    metrics::counter!(MAPPED, "route" => route.to_string()).increment(0);
    metrics::counter!(FAILED, "route" => route.to_string()).increment(0);
}

pub fn message_received(listener: &str) {
    metrics::counter!(RECEIVED, "listener" => listener.to_string()).increment(1);
}

/// An ACK was sent `latency` after the message arrived; `positive`: AA/CA.
pub fn ack_sent(listener: &str, positive: bool, latency: std::time::Duration) {
    let name = if positive { ACKED } else { NAKED };
    metrics::counter!(name, "listener" => listener.to_string()).increment(1);
    metrics::histogram!(ACK_LATENCY, "listener" => listener.to_string())
        .record(latency.as_secs_f64());
}

pub fn route_mapped(route: &str) {
    metrics::counter!(MAPPED, "route" => route.to_string()).increment(1);
}

/// `route` empty: no route took the message.
pub fn route_failed(route: &str) {
    let route = if route.is_empty() { "(none)" } else { route };
    metrics::counter!(FAILED, "route" => route.to_string()).increment(1);
}

pub fn store_writes(n: usize) {
    metrics::counter!(STORE_WRITES).increment(n as u64);
}

/// The store kept a result at a later stage than the version given (a preliminary after
/// its final), from the message `journal_id` (the sending node's, through RabbitMQ):
/// logged with the record's id and both statuses (no patient data), and counted.
pub fn store_kept(journal_id: Option<u64>, kept: &crate::store::Kept) {
    tracing::info!(
        journal_id,
        record = %kept.reference,
        stored = %kept.stored,
        given = %kept.given,
        "the store keeps a result at a later stage than this message's version"
    );
    metrics::counter!(STORE_KEPT).increment(1);
}

/// Records were stored for a message received at `received_ms` (ms since the epoch).
pub fn end_to_end(received_ms: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    metrics::histogram!(END_TO_END).record((now - received_ms).max(0) as f64 / 1000.0);
}

/// Sets the gauges read at scrape time.
pub fn set_gauges(journal_lag: u64, outbox_depth: usize) {
    metrics::gauge!(JOURNAL_LAG).set(journal_lag as f64);
    metrics::gauge!(OUTBOX_DEPTH).set(outbox_depth as f64);
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_values;

    #[test]
    fn quoted_values_are_hidden_and_names_kept() {
        for (text, want) in [
            (
                "route \"lab-results\", mapping \"oru_r01\": Patient birthDate: \"Đặng\" is not a valid HL7 date",
                "route \"lab-results\", mapping \"oru_r01\": Patient birthDate: \"…\" is not a valid HL7 date",
            ),
            (
                "no route takes DICOM^CT from calling AE \"CT01\" on listener \"pacs\"",
                "no route takes DICOM^CT from calling AE \"CT01\" on listener \"pacs\"",
            ),
            (
                "record store refused the records: Patient: \"id\" \"a b\" is not a FHIR id",
                "record store refused the records: Patient: \"id\" \"…\" is not a FHIR id",
            ),
            // Escaped quotes inside a value do not end it early.
            (
                "x: \"say \\\"Nguyễn\\\" \\\\\" is not a decimal",
                "x: \"…\" is not a decimal",
            ),
            ("x: \"19850704 unterminated", "x: \"…\""),
            ("no quotes at all", "no quotes at all"),
            ("", ""),
        ] {
            assert_eq!(redact_values(text), want, "{text}");
        }
    }
}
