//! What the broker connection is doing, for `/ready`, `/health` and metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

/// Shared between the publisher or consumer and the HTTP API. Counters only grow.
#[derive(Debug, Default)]
pub struct BrokerState {
    /// The URL without its password.
    pub url: String,
    publisher_connected: AtomicBool,
    consumer_connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Connections made (the first one included).
    pub connects: AtomicU64,
    /// Records the broker confirmed.
    pub confirmed: AtomicU64,
    /// Records the broker returned as unroutable (`mandatory`), to be sent again.
    pub returned: AtomicU64,
    /// Records the broker nacked, to be sent again.
    pub nacked: AtomicU64,
    /// Publish rounds given up after `publish_timeout_secs` without a confirm.
    pub timeouts: AtomicU64,
    /// Deliveries committed to the record store and acknowledged.
    pub stored: AtomicU64,
    /// Deliveries rejected into the dead-letter queue.
    pub dead_lettered: AtomicU64,
}

/// Which side of the broker a state change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Publisher,
    Consumer,
}

impl BrokerState {
    pub fn new(url: String) -> BrokerState {
        BrokerState {
            url,
            ..Default::default()
        }
    }

    fn flag(&self, side: Side) -> &AtomicBool {
        match side {
            Side::Publisher => &self.publisher_connected,
            Side::Consumer => &self.consumer_connected,
        }
    }

    pub fn set_connected(&self, side: Side) {
        self.flag(side).store(true, Ordering::SeqCst);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection is gone; `why` names the failure (no patient data).
    pub fn set_disconnected(&self, side: Side, why: String) {
        self.flag(side).store(false, Ordering::SeqCst);
        *self.last_error.lock().expect("broker state lock") = Some(why);
    }

    pub fn is_connected(&self, side: Side) -> bool {
        self.flag(side).load(Ordering::SeqCst)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("broker state lock").clone()
    }

    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A JSON view for `/ready` and `/health`.
    pub fn snapshot(&self) -> Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "url": self.url,
            "publisher_connected": self.is_connected(Side::Publisher),
            "consumer_connected": self.is_connected(Side::Consumer),
            "last_error": self.last_error(),
            "connects": n(&self.connects),
            "confirmed": n(&self.confirmed),
            "returned": n(&self.returned),
            "nacked": n(&self.nacked),
            "timeouts": n(&self.timeouts),
            "stored": n(&self.stored),
            "dead_lettered": n(&self.dead_lettered),
        })
    }

    /// The same figures in Prometheus text format, for `/metrics`.
    pub fn prometheus(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let b = |side| u8::from(self.is_connected(side));
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        line(
            "halong_amqp_publisher_connected",
            "gauge",
            "1 while the edge's publisher is connected to RabbitMQ.",
            b(Side::Publisher).to_string(),
        );
        line(
            "halong_amqp_consumer_connected",
            "gauge",
            "1 while the store consumer is connected to RabbitMQ.",
            b(Side::Consumer).to_string(),
        );
        line(
            "halong_amqp_connects_total",
            "counter",
            "Connections made to RabbitMQ.",
            n(&self.connects).to_string(),
        );
        line(
            "halong_amqp_confirmed_total",
            "counter",
            "Records RabbitMQ confirmed.",
            n(&self.confirmed).to_string(),
        );
        line(
            "halong_amqp_returned_total",
            "counter",
            "Records returned as unroutable, sent again.",
            n(&self.returned).to_string(),
        );
        line(
            "halong_amqp_nacked_total",
            "counter",
            "Records nacked by RabbitMQ, sent again.",
            n(&self.nacked).to_string(),
        );
        line(
            "halong_amqp_publish_timeouts_total",
            "counter",
            "Publish rounds without a confirm in time.",
            n(&self.timeouts).to_string(),
        );
        line(
            "halong_amqp_stored_total",
            "counter",
            "Deliveries committed to the record store.",
            n(&self.stored).to_string(),
        );
        line(
            "halong_amqp_dead_lettered_total",
            "counter",
            "Deliveries rejected into the dead-letter queue.",
            n(&self.dead_lettered).to_string(),
        );
        out
    }
}
