//! Where mapped records wait on their way to the record store.
//!
//! `embedded`: a sled tree (the outbox) in the same database as the record store, drained
//! by an in-process consumer. `amqp`: the same outbox drained by a publisher into
//! RabbitMQ, and a consumer that feeds the record store from it (edge and store roles).

pub mod amqp;
pub mod embedded;

pub use embedded::{Outbox, OutboxEntry};
