//! Records through RabbitMQ (AMQP 0-9-1, on lapin).
//!
//! An edge publishes each record from its outbox to a durable topic exchange with
//! publisher confirms; a store consumes them from a quorum queue into the record store.
//!
//! Invariants:
//! 1. RabbitMQ is never on the ACK path: listeners acknowledge once the journal has the
//!    message; the outbox holds the records for as long as the broker is away.
//! 2. An outbox entry is released only after the broker confirmed every one of its
//!    records (`Ack` without a return). A nack, a return (unroutable), a timeout or a
//!    lost connection puts the entry back at the front of the outbox, so after an
//!    outage the outbox drains in its original order.
//! 3. The store consumer acknowledges a delivery only after the record store has
//!    committed it (fdatasync). A crash before that means a redelivery, and upserts are
//!    idempotent, so every record ends up in the store exactly once.
//! 4. A delivery the store can never take (not JSON, not a FHIR resource, an unknown
//!    resource type) is rejected without requeue and the broker dead-letters it to
//!    `<prefix>.dead`; the consumer goes on with the next one.
//!
//! Files: [`config`] (settings from `[queue]`), [`topology`] (names and declarations),
//! [`message`] (one record as one AMQP message), [`publisher`] (confirms, timeouts,
//! reconnects), [`consumer`] (the store side), [`state`] (what `/ready` and metrics show).

pub mod config;
pub mod consumer;
pub mod message;
pub mod publisher;
pub mod state;
pub mod topology;

pub use config::AmqpSettings;
pub use consumer::run_consumer;
pub use publisher::{PublishError, Publisher};
pub use state::BrokerState;
pub use topology::Topology;

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker at {url} did not answer within {secs} s")]
    ConnectTimeout { url: String, secs: u64 },
    #[error("cannot declare {what}: {source}")]
    Declare {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("{0}")]
    Closed(String),
    #[error("record store failed; nothing acknowledged: {0}")]
    Store(String),
    #[error("broker channel error: {0}")]
    Channel(#[from] lapin::Error),
}
