//! The broker stopped mid-stream (`rabbitmqctl stop_app`) and started again. Its own test
//! binary, so no other test sees the outage; a drop guard starts the broker again even
//! when the test fails.

mod amqp_support;
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use amqp_support::*;
use common::{count_status, http_json, msa_code, wait_until, Mllp};
use halong::config::Config;
use halong::engine::Engine;

const LIMIT: Duration = Duration::from_secs(120);

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the broker's application again when dropped.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        if !rabbitmqctl(&["start_app"]) {
            eprintln!("rabbitmqctl start_app failed: start RabbitMQ by hand");
        }
        let _ = rabbitmqctl(&["await_startup", "--timeout", "60"]);
    }
}

#[test]
fn a_broker_outage_mid_stream_loses_nothing_and_duplicates_nothing() {
    const BEFORE: usize = 50;
    const DURING: usize = 150;
    const AFTER: usize = 100;
    const N: usize = BEFORE + DURING + AFTER;
    let guard = TopologyGuard::new("outage");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = Path::new(REPO).join("halong.toml");
    let config = Config::from_text(
        &path,
        &config_text(dir.path(), &guard.prefix, "all"),
        Vec::new(),
    )
    .unwrap();
    let engine = rt.block_on(Engine::start(config)).expect("engine starts");
    let http = engine.http_addr;
    wait_until("the engine is ready", LIMIT, || {
        http_json(http, "/ready").0 == 200
    });

    // The sender pauses at two points; the test moves the broker in between.
    let his = engine.listener_addr("his").unwrap();
    let (at_mark, reached) = mpsc::channel::<usize>();
    let (go_on, proceed) = mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let mut conn = Mllp::connect(his);
        for n in 0..N {
            if n == BEFORE || n == BEFORE + DURING {
                at_mark.send(n).unwrap();
                proceed.recv().unwrap();
            }
            let ack = conn.send(&admission("OUT", n));
            assert_eq!(msa_code(&ack), "AA", "message {n} acknowledged");
        }
    });

    assert_eq!(reached.recv_timeout(LIMIT).unwrap(), BEFORE);
    let back = BrokerBack;
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
    go_on.send(()).unwrap();
    assert_eq!(
        reached.recv_timeout(LIMIT).unwrap(),
        BEFORE + DURING,
        "every message sent during the outage was acknowledged"
    );
    wait_until("/ready reports the lost broker", LIMIT, || {
        let (code, body) = http_json(http, "/ready");
        code == 503 && body["problems"].to_string().contains("broker")
    });
    wait_until("the outage's records wait in the outbox", LIMIT, || {
        count_status(http, "mapped") >= DURING as u64
    });
    let (_, health) = http_json(http, "/health");
    assert!(
        health["outbox"]["waiting"].as_u64().unwrap() >= DURING as u64,
        "{health}"
    );

    drop(back);
    go_on.send(()).unwrap();
    sender
        .join()
        .expect("the sender got an AA for every message");

    wait_until("every message is confirmed by the broker", LIMIT, || {
        count_status(http, "queued") == N as u64
    });
    for n in 0..N {
        wait_until("the patient is in the store", LIMIT, || {
            let (_, b) = http_json(http, &format!("/fhir/Patient?identifier=OUT{n:06}"));
            b["total"] == 1
        });
    }
    assert_eq!(
        engine.store.count("Patient").unwrap(),
        N,
        "exactly once each"
    );
    wait_until("/ready recovers", LIMIT, || {
        http_json(http, "/ready").0 == 200
    });
    wait_until("the outbox is empty", LIMIT, || {
        http_json(http, "/health").1["outbox"]["waiting"] == 0
    });
    let (_, health) = http_json(http, "/health");
    assert!(
        health["broker"]["connects"].as_u64().unwrap() >= 4,
        "{health}"
    );
    rt.block_on(engine.shutdown());
}
