//! Records through the real RabbitMQ at 127.0.0.1:5672: round trip, message properties,
//! poison messages, a store killed with unacknowledged deliveries, and two edges feeding
//! one store. Each test declares its own prefix and deletes what it declared.

mod amqp_support;
mod common;

use std::path::Path;
use std::time::Duration;

use amqp_support::*;
use common::{http_json, http_json_with, metric, msa_code, wait_until, Mllp};
use halong::config::Config;
use halong::engine::Engine;
use halong::journal::Status;
use halong::mapping::RunContext;
use halong::pipeline::Rules;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn engine_config(data: &Path, prefix: &str, role: &str) -> Config {
    let path = Path::new(REPO).join("halong.toml");
    Config::from_text(&path, &config_text(data, prefix, role), Vec::new()).expect("valid config")
}

/// The records the shipped routes and mappings make of `raw`, journal entry `id` of
/// `listener`.
fn expected_records(config: &Config, listener: &str, raw: &[u8], id: u64) -> Vec<Value> {
    let rules = Rules::load(config).expect("shipped rules load");
    let msg = halong::hl7::parse(raw).expect("the sample parses");
    let route = rules
        .routes
        .find(listener, msg.header())
        .expect("a route takes it");
    let ctx = RunContext {
        source: format!("urn:halong:{listener}:{id}"),
        ..Default::default()
    };
    rules
        .mappings
        .get(&route.mapping)
        .unwrap()
        .run(&msg, &ctx)
        .map(|r| halong::record::to_values(&r))
        .expect("the sample maps")
}

fn wait_queued(engine: &Engine, id: u64) {
    wait_until("the broker confirmed the entry's records", LIMIT, || {
        engine.journal.entry(id).map(|e| e.status) == Some(Status::Queued)
    });
}

#[test]
fn round_trip_mllp_in_records_out_of_the_store_via_rabbitmq() {
    let guard = TopologyGuard::new("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let config = engine_config(dir.path(), &guard.prefix, "all");
    let adt = common::sample("adt_a01_nguyen_thi_ngoc_anh.hl7");
    let oru = common::sample("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7");
    let mut want = expected_records(&config, "his", &adt, 1);
    want.extend(expected_records(&config, "lab", &oru, 2));
    let engine = rt.block_on(Engine::start(config)).expect("engine starts");

    let ack = Mllp::connect(engine.listener_addr("his").unwrap()).send(&adt);
    assert_eq!(msa_code(&ack), "CA");
    let ack = Mllp::connect(engine.listener_addr("lab").unwrap()).send(&oru);
    assert_eq!(msa_code(&ack), "AA");

    // On the broker, entries end `queued`: the store is not this pipeline's.
    wait_queued(&engine, 1);
    wait_queued(&engine, 2);
    let store = engine.store.clone();
    wait_until("every record is in the store", LIMIT, || {
        want.iter().all(|r| {
            store
                .get(
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap(),
                )
                .unwrap()
                .is_some()
        })
    });
    let (code, found) = http_json(engine.http_addr, "/fhir/Patient?name=nguyen%20thi%20ngoc");
    assert_eq!(code, 200);
    assert_eq!(found["total"], 1);
    let broker = engine.broker.clone().unwrap().snapshot();
    assert_eq!(broker["confirmed"], json!(want.len()));
    assert_eq!(broker["dead_lettered"], 0);
    let (code, ready) = http_json(engine.http_addr, "/ready");
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["role"], "all");
    rt.block_on(engine.shutdown());
}

/// Every message waiting in `queue`, taken off it.
fn drain(queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    block_on(async {
        let ch = channel().await.unwrap();
        let mut got = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            got.push(m);
        }
        got
    })
}

/// An edge engine with its own topology, and a lab result with the records it maps to.
struct Edge {
    guard: TopologyGuard,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    engine: Engine,
    oru: Vec<u8>,
    want: Vec<Value>,
}

fn edge(name: &str) -> Edge {
    let guard = TopologyGuard::new(name);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let config = engine_config(dir.path(), &guard.prefix, "edge");
    let oru = common::sample("oru_r01_dang_van_duc_glucose.hl7");
    let want = expected_records(&config, "lab", &oru, 1);
    let engine = rt.block_on(Engine::start(config)).expect("engine starts");
    Edge {
        guard,
        _dir: dir,
        rt,
        engine,
        oru,
        want,
    }
}

#[test]
fn an_edge_whose_journal_cannot_record_a_publish_publishes_the_records_once() {
    let e = edge("edge-sync");
    let (engine, guard) = (&e.engine, &e.guard);
    // The mapper waits in its outbox sync while the journal is made to fail.
    engine.store.faults().hold_sync(true);
    let ack = Mllp::connect(engine.listener_addr("lab").unwrap()).send(&e.oru);
    assert_eq!(msa_code(&ack), "AA");
    wait_until("the mapper holds in its outbox sync", LIMIT, || {
        engine.store.faults().sync_is_held()
    });
    let failed = engine.journal.failed_commits();
    engine.journal.faults().fail_sync(true);
    engine.store.faults().hold_sync(false);
    // Published and confirmed; `queued` cannot be made durable, tried again and again.
    wait_until("three failed journal commits", LIMIT, || {
        engine.journal.failed_commits() >= failed + 3
    });
    engine.journal.faults().fail_sync(false);
    wait_until("a journal commit succeeds again", LIMIT, || {
        !engine.journal.is_failing()
    });
    wait_queued(engine, 1);
    // Only the sync was tried again, not the publish.
    let got = drain(&guard.topology().queue);
    assert_eq!(got.len(), e.want.len(), "each record published once");
    e.rt.block_on(e.engine.shutdown());
}

#[test]
fn a_replay_on_an_edge_answers_with_the_brokers_confirm() {
    let e = edge("edge-replay");
    let engine = &e.engine;
    let ack = Mllp::connect(engine.listener_addr("lab").unwrap()).send(&e.oru);
    assert_eq!(msa_code(&ack), "AA");
    wait_queued(engine, 1);
    assert_eq!(drain(&e.guard.topology().queue).len(), e.want.len());
    // An edge's records end at the broker: `queued` is the answer, not `stored`.
    let (code, r) = http_json_with(engine.http_addr, "POST", "/api/messages/1/replay");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["replayed"][0]["status"], "queued", "{r}");
    assert_eq!(drain(&e.guard.topology().queue).len(), e.want.len());
    e.rt.block_on(e.engine.shutdown());
}

#[test]
fn an_edge_publishes_persistent_confirmed_records_with_their_origin() {
    let e = edge("edge");
    let (engine, guard) = (&e.engine, &e.guard);
    let ack = Mllp::connect(engine.listener_addr("lab").unwrap()).send(&e.oru);
    assert_eq!(msa_code(&ack), "AA");
    wait_queued(engine, 1);
    assert_eq!(
        engine.store.count("Observation").unwrap(),
        0,
        "an edge keeps no records"
    );

    let got = drain(&guard.topology().queue);
    assert_eq!(got.len(), e.want.len(), "one message per record");
    for (m, r) in got.iter().zip(&e.want) {
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        let p = &m.delivery.properties;
        assert_eq!(&body, r, "records arrive in order and unchanged");
        assert_eq!(
            m.delivery.routing_key.as_str(),
            r["resourceType"].as_str().unwrap()
        );
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/fhir+json"
        );
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            halong::queue::amqp::message::message_id(
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap(),
                &m.delivery.data
            )
        );
        let h = p.headers().as_ref().unwrap().inner();
        assert_eq!(
            h.get("x-halong-journal-id"),
            Some(&AMQPValue::LongLongInt(1))
        );
        assert_eq!(
            h.get("x-halong-listener"),
            Some(&AMQPValue::LongString("lab".into()))
        );
        assert!(
            matches!(h.get("x-halong-route"), Some(AMQPValue::LongString(s)) if !s.to_string().is_empty())
        );
    }
    let (code, ready) = http_json(engine.http_addr, "/ready");
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["role"], "edge");
    e.rt.block_on(e.engine.shutdown());
}

async fn publish_raw(prefix: &str, routing_key: &str, body: &[u8]) {
    let ch = channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            format!("{prefix}.records").as_str().into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(confirm, lapin::Confirmation::Ack(None)),
        "{confirm:?}"
    );
}

/// A central store (role `store`) on `prefix`'s topology, once its consumer has
/// declared the queues.
fn start_store(rt: &tokio::runtime::Runtime, data: &Path, prefix: &str) -> Engine {
    let engine = rt
        .block_on(Engine::start(engine_config(data, prefix, "store")))
        .expect("engine starts");
    let http = engine.http_addr;
    wait_until("the consumer has declared the queues", LIMIT, || {
        http_json(http, "/ready").0 == 200
    });
    engine
}

/// The central store behind RabbitMQ keeps a final result when its preliminary is
/// delivered after it, acknowledges the delivery (it is handled, not poison) and counts it.
#[test]
fn the_store_consumer_keeps_a_final_result_over_a_late_preliminary() {
    let guard = TopologyGuard::new("kept");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let engine = start_store(&rt, dir.path(), &guard.prefix);
    let broker = engine.broker.clone().unwrap();
    let (http, store) = (engine.http_addr, engine.store.clone());
    let kept_total = || metric(http, "halong_store_kept_total");
    let result = |status: &str, value: &str| {
        json!({"resourceType": "Observation", "id": "o1", "status": status,
               "valueString": value, "subject": {"reference": "Patient/p1"}})
    };
    let send = |v: Value| {
        block_on(publish_raw(
            &guard.prefix,
            "Observation",
            serde_json::to_string(&v).unwrap().as_bytes(),
        ))
    };
    send(result("final", "13.5"));
    wait_until("the final is stored", LIMIT, || {
        broker.snapshot()["stored"] == 1
    });
    let before = kept_total();
    send(result("preliminary", "9.9"));
    wait_until("the preliminary is handled", LIMIT, || {
        broker.snapshot()["stored"] == 2
    });
    let stored = store.get("Observation", "o1").unwrap().unwrap();
    assert_eq!(
        (stored["status"].as_str(), stored["valueString"].as_str()),
        (Some("final"), Some("13.5"))
    );
    assert_eq!(kept_total() - before, 1);
    assert_eq!(block_on(ready_count(&guard.topology().dead)), 0);
    assert_eq!(block_on(ready_count(&guard.topology().queue)), 0);
    rt.block_on(engine.shutdown());
}

#[test]
fn poison_messages_land_in_the_dead_letter_queue_and_the_consumer_goes_on() {
    let guard = TopologyGuard::new("poison");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let engine = start_store(&rt, dir.path(), &guard.prefix);
    assert!(
        engine.listener_addrs.is_empty(),
        "a store takes no messages in"
    );
    let broker = engine.broker.clone().unwrap();
    let store = engine.store.clone();
    let patient = |id: &str| json!({"resourceType": "Patient", "id": id, "gender": "female"});
    block_on(async {
        publish_raw(
            &guard.prefix,
            "Patient",
            serde_json::to_string(&patient("before"))
                .unwrap()
                .as_bytes(),
        )
        .await;
        publish_raw(&guard.prefix, "Patient", b"Nguyen Van A, not JSON").await;
        publish_raw(
            &guard.prefix,
            "Spaceship",
            br#"{"resourceType":"Spaceship","id":"x"}"#,
        )
        .await;
        publish_raw(
            &guard.prefix,
            "Patient",
            br#"{"resourceType":"Patient","id":"not a valid id!"}"#,
        )
        .await;
        publish_raw(
            &guard.prefix,
            "Patient",
            serde_json::to_string(&patient("after")).unwrap().as_bytes(),
        )
        .await;
    });
    wait_until("both good records are stored", LIMIT, || {
        store.get("Patient", "before").unwrap().is_some()
            && store.get("Patient", "after").unwrap().is_some()
    });
    let dead = guard.topology().dead;
    wait_until("three poison messages are dead-lettered", LIMIT, || {
        block_on(ready_count(&dead)) == 3
    });
    let s = broker.snapshot();
    assert_eq!(s["dead_lettered"], 3);
    assert_eq!(s["stored"], 2);
    assert_eq!(block_on(ready_count(&guard.topology().queue)), 0);
    rt.block_on(engine.shutdown());
}

#[test]
fn a_store_killed_with_unacknowledged_deliveries_stores_each_record_once() {
    const N: usize = 10_000;
    let guard = TopologyGuard::new("sigkill");
    let dir = tempfile::tempdir().unwrap();
    let topology = guard.topology();
    block_on(async {
        let ch = channel().await.unwrap();
        topology.declare(&ch, 5).await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut confirms = Vec::new();
        for n in 0..N {
            let body = json!({"resourceType": "Patient", "id": format!("k{n}"), "gender": "male"});
            confirms.push(
                ch.basic_publish(
                    topology.exchange.as_str().into(),
                    "Patient".into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&body).unwrap(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
    });
    let config = write_config(dir.path(), &guard.prefix, "store");
    let server = Server::spawn(&config);
    let http = server.http;
    let stored = |http| {
        let (_, r) = http_json(http, "/ready");
        r["broker"]["stored"].as_u64().unwrap_or(0)
    };
    wait_until("the store has stored a few batches", LIMIT, || {
        stored(http) > 1000
    });
    server.kill();
    // The unacknowledged deliveries (and any ack the kill cut off) are back in the queue.
    let left = block_on(ready_count(&topology.queue)) as usize;
    assert!(
        left > 0,
        "killed mid-stream with deliveries outstanding ({left} of {N} back in the queue)"
    );

    let server = Server::spawn(&config);
    let http = server.http;
    wait_until("the queue is drained", LIMIT, || {
        block_on(ready_count(&topology.queue)) == 0 && stored(http) as usize >= left
    });
    server.stop();
    assert_eq!(count_in_store(&dir.path().join("data"), "Patient"), N);
    assert_eq!(
        block_on(ready_count(&topology.queue)),
        0,
        "every delivery acknowledged"
    );
    assert_eq!(block_on(ready_count(&topology.dead)), 0);
}

#[test]
fn two_edges_and_one_store_on_one_machine_deliver_every_record() {
    const N: usize = 150;
    let guard = TopologyGuard::new("edges");
    let dir = tempfile::tempdir().unwrap();
    let store = Server::spawn(&write_config(
        &dir.path().join("store"),
        &guard.prefix,
        "store",
    ));
    let edges: Vec<Server> = ["a", "b"]
        .iter()
        .map(|e| Server::spawn(&write_config(&dir.path().join(e), &guard.prefix, "edge")))
        .collect();
    let senders: Vec<_> = edges
        .iter()
        .zip(["SITEA", "SITEB"])
        .map(|(edge, site)| {
            let his = edge.listener("his");
            std::thread::spawn(move || {
                let mut conn = Mllp::connect(his);
                for n in 0..N {
                    assert_eq!(
                        msa_code(&conn.send(&admission(site, n))),
                        "AA",
                        "{site} {n}"
                    );
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    for edge in &edges {
        wait_until(
            "the edge has every message confirmed by the broker",
            LIMIT,
            || common::count_status(edge.http, "queued") == N as u64,
        );
    }
    for site in ["SITEA", "SITEB"] {
        for n in 0..N {
            wait_until("the store has the patient", LIMIT, || {
                let (_, b) = http_json(
                    store.http,
                    &format!("/fhir/Patient?identifier={site}{n:06}"),
                );
                b["total"] == 1
            });
        }
    }
    for edge in edges {
        edge.stop();
    }
    store.stop();
}

#[test]
fn deploy_files_agree_with_the_code() {
    let deploy = Path::new(REPO).join("deploy");
    for (role, want) in [
        ("edge", halong::config::Role::Edge),
        ("store", halong::config::Role::Store),
    ] {
        let path = deploy.join(role).join("halong.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = Config::from_text(&path, &text, Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        assert_eq!(c.queue.role, want);
        assert_eq!(c.queue.kind, halong::config::QueueKind::Amqp);
        assert_eq!(c.queue.prefix, "halong");
    }
    let defs: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("rabbitmq/definitions.json")).unwrap(),
    )
    .unwrap();
    let t = halong::queue::amqp::Topology::new("halong");
    let queue = |name: &str| {
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("queue {name} in definitions.json"))
            .clone()
    };
    // Exactly the arguments Topology::declare uses with the default delivery limit, or
    // RabbitMQ refuses halong's declaration.
    let limit = halong::config::QueueConfig::default().delivery_limit;
    assert_eq!(
        queue(&t.queue)["arguments"],
        json!({"x-queue-type": "quorum", "x-dead-letter-exchange": t.dead, "x-delivery-limit": limit})
    );
    assert_eq!(
        queue(&t.dead)["arguments"],
        json!({"x-queue-type": "quorum"})
    );
    let exchange = |name: &str| {
        defs["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["type"]
            .clone()
    };
    assert_eq!(exchange(&t.exchange), "topic");
    assert_eq!(exchange(&t.dead), "fanout");
    let bound = |src: &str, dst: &str, key: &str| {
        defs["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == src && b["destination"] == dst && b["routing_key"] == key)
    };
    assert!(bound(&t.exchange, &t.queue, "#"));
    assert!(bound(&t.dead, &t.dead, ""));
    let check = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(deploy.join("store/halong.toml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("reads no routes or mappings"));
    let compose = std::fs::read_to_string(deploy.join("compose.yaml")).unwrap();
    for service in [
        "rabbitmq-1:",
        "rabbitmq-2:",
        "rabbitmq-3:",
        "edge-a:",
        "edge-b:",
        "store:",
    ] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "compose service {service}"
        );
    }
}

#[test]
fn unroutable_records_are_counted_and_sent_again_once_the_queue_is_back() {
    let guard = TopologyGuard::new("unroutable");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let config = engine_config(dir.path(), &guard.prefix, "edge");
    let oru = common::sample("oru_r01_dang_van_duc_glucose.hl7");
    let want = expected_records(&config, "lab", &oru, 1);
    let engine = rt.block_on(Engine::start(config)).expect("engine starts");
    let http = engine.http_addr;
    wait_until("the edge reached the broker", LIMIT, || {
        http_json(http, "/ready").0 == 200
    });
    // Without its queue the exchange routes nowhere: a mandatory publish comes back.
    let queue = guard.topology().queue;
    block_on(async {
        let ch = channel().await.unwrap();
        ch.queue_delete(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    });
    let ack = Mllp::connect(engine.listener_addr("lab").unwrap()).send(&oru);
    assert_eq!(msa_code(&ack), "AA");
    wait_queued(&engine, 1);
    let s = engine.broker.clone().unwrap().snapshot();
    assert!(s["returned"].as_u64().unwrap() >= want.len() as u64, "{s}");
    assert_eq!(s["confirmed"], json!(want.len()), "{s}");
    assert_eq!(
        block_on(ready_count(&queue)) as usize,
        want.len(),
        "the reconnect declared the queue again and the records went in once"
    );
    rt.block_on(engine.shutdown());
}

#[test]
fn an_edge_restarted_before_the_broker_was_reachable_publishes_its_outbox_once_in_order() {
    const N: usize = 40;
    let guard = TopologyGuard::new("restart");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &guard.prefix, "edge");
    let per_message = expected_records(
        &Config::load(&config).unwrap(),
        "his",
        &admission("RST", 0),
        1,
    )
    .len();
    // Nothing listens on port 1: the broker is unreachable.
    let edge = Server::spawn_env(
        &config,
        &[("HALONG_QUEUE__URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    let mut conn = Mllp::connect(edge.listener("his"));
    for n in 0..N {
        assert_eq!(
            msa_code(&conn.send(&admission("RST", n))),
            "AA",
            "message {n}"
        );
    }
    wait_until("every message waits in the outbox", LIMIT, || {
        common::count_status(edge.http, "mapped") == N as u64
    });
    let (code, ready) = http_json(edge.http, "/ready");
    assert_eq!(code, 503, "{ready}");
    edge.kill();

    let edge = Server::spawn(&config);
    wait_until(
        "the restarted edge had every message confirmed",
        LIMIT,
        || common::count_status(edge.http, "queued") == N as u64,
    );
    wait_until("the outbox is empty", LIMIT, || {
        http_json(edge.http, "/health").1["outbox"]["waiting"] == 0
    });
    edge.stop();

    let queue = guard.topology().queue;
    let journal_ids: Vec<i64> = block_on(async {
        let ch = channel().await.unwrap();
        let mut ids = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let h = m.delivery.properties.headers().as_ref().unwrap().inner();
            match h.get("x-halong-journal-id") {
                Some(AMQPValue::LongLongInt(id)) => ids.push(*id),
                other => panic!("journal id header: {other:?}"),
            }
        }
        ids
    });
    assert_eq!(
        journal_ids.len(),
        N * per_message,
        "each record published once: entries waiting in the outbox are not mapped again"
    );
    assert!(
        journal_ids.windows(2).all(|w| w[0] <= w[1]),
        "the outbox drained in arrival order"
    );
}
