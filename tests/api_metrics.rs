//! `/metrics`: every metric of the issue is listed, and each moves when messages flow.
//! (Its own test binary: the metrics recorder is process-wide.)

mod api_helpers;

use std::time::Duration;

use api_helpers::*;
use halong::journal::Status;

/// The value of the series `name{labels}` (or `name` without labels) in Prometheus text.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

fn scrape(http: std::net::SocketAddr) -> String {
    let (code, head, body) = request(http, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/plain"), "{head}");
    body
}

#[test]
fn metrics_are_listed_and_move() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    let http = engine.http_addr;
    let before = scrape(http);
    let series = [
        r#"halong_messages_received_total{listener="lab"}"#,
        r#"halong_messages_acked_total{listener="lab"}"#,
        r#"halong_messages_naked_total{listener="lab"}"#,
        r#"halong_route_mapped_total{route="lab-results"}"#,
        r#"halong_route_failed_total{route="(none)"}"#,
        "halong_journal_lag",
        "halong_outbox_depth",
        "halong_store_writes_total",
    ];
    for s in series {
        assert_eq!(value(&before, s), 0.0, "{s} starts at 0");
    }

    let lab = engine.listener_addr("lab").unwrap();
    assert_eq!(
        msa_code(&mllp_send(lab, &sample("oru_r01_dang_van_duc_glucose.hl7"))),
        "AA"
    );
    assert_eq!(msa_code(&mllp_send(lab, b"not an HL7 message")), "AR");
    assert_eq!(
        msa_code(&mllp_send(lab, &sample("adt_a04_dang_van_duc.hl7"))),
        "AA"
    );
    for id in 1..=3 {
        assert!(engine
            .journal
            .wait_settled(id, Duration::from_secs(30))
            .is_some());
    }
    assert_eq!(engine.journal.entry(1).unwrap().status, Status::Stored);

    let after = scrape(http);
    assert_eq!(value(&after, series[0]), 3.0, "received");
    assert_eq!(value(&after, series[1]), 2.0, "acked");
    assert_eq!(value(&after, series[2]), 1.0, "naked");
    assert_eq!(value(&after, series[3]), 1.0, "mapped");
    assert_eq!(
        value(&after, series[4]),
        1.0,
        "an ADT on the lab port: unrouted"
    );
    assert_eq!(value(&after, "halong_journal_lag"), 0.0);
    assert!(
        value(&after, "halong_store_writes_total") >= 3.0,
        "patient, report, observations"
    );
    assert_eq!(
        value(
            &after,
            r#"halong_ack_latency_seconds_count{listener="lab"}"#
        ),
        3.0
    );
    assert_eq!(
        value(&after, "halong_end_to_end_latency_seconds_count"),
        1.0
    );
    assert!(after.contains("# TYPE halong_ack_latency_seconds histogram"));
    assert!(after.contains(r#"halong_ack_latency_seconds_bucket{listener="lab",le="+Inf"} 3"#));
    rt.block_on(engine.shutdown());
}
