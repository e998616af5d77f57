//! Where mapped records wait on their way to the record store.
//!
//! `embedded`: a sled tree (the outbox) in the same database as the record store, drained
//! by an in-process consumer. The AMQP backend (RabbitMQ) is a sibling folder to come.

pub mod embedded;

pub use embedded::{Outbox, OutboxEntry};
