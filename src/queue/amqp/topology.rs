//! The exchanges and queues halong declares, all named from one prefix.
//!
//! ```text
//! edge ──publish (routing key = resourceType)──▶ <prefix>.records (topic, durable)
//!                                                   │ binding "#"
//!                                                   ▼
//!                               <prefix>.store (quorum queue; delivery limit;
//!                                                   │  dead-letter exchange <prefix>.dead)
//!                                                   ▼ rejected or over the limit
//!                               <prefix>.dead (fanout) ──▶ <prefix>.dead (quorum queue)
//! ```
//! Declarations are idempotent: every edge and the store declare the same topology at
//! every (re)connect. Declaring a queue that exists with other arguments fails with
//! PRECONDITION_FAILED; RabbitMQ policies (deploy/rabbitmq/definitions.json) are the way
//! to change limits on a running cluster.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::AmqpError;

/// Names derived from the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topic exchange the edges publish records to.
    pub exchange: String,
    /// Quorum queue the store consumes.
    pub queue: String,
    /// Dead-letter exchange (fanout) and its queue share this name.
    pub dead: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Topology {
        Topology {
            exchange: format!("{prefix}.records"),
            queue: format!("{prefix}.store"),
            dead: format!("{prefix}.dead"),
        }
    }

    /// The routing key of a record: its resource type (`Patient`, `Observation`, ...), so
    /// other consumers can bind to the kinds they want.
    pub fn routing_key(resource_type: &str) -> &str {
        if resource_type.is_empty() {
            "unknown"
        } else {
            resource_type
        }
    }

    /// Declares everything (idempotent).
    pub async fn declare(&self, ch: &Channel, delivery_limit: u32) -> Result<(), AmqpError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            self.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Declare {
            what: format!("exchange {}", self.exchange),
            source,
        })?;
        ch.exchange_declare(
            self.dead.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Declare {
            what: format!("exchange {}", self.dead),
            source,
        })?;

        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.declare_queue(ch, &self.dead, dead_args).await?;
        ch.queue_bind(
            self.dead.as_str().into(),
            self.dead.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Declare {
            what: format!("binding {} → {}", self.dead, self.dead),
            source,
        })?;

        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead.as_str().into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(delivery_limit.min(i32::MAX as u32) as i32),
        );
        self.declare_queue(ch, &self.queue, args).await?;
        ch.queue_bind(
            self.queue.as_str().into(),
            self.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Declare {
            what: format!("binding {} → {}", self.exchange, self.queue),
            source,
        })?;
        Ok(())
    }

    async fn declare_queue(
        &self,
        ch: &Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<(), AmqpError> {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map(|_| ())
        .map_err(|source| AmqpError::Declare {
            what: format!("queue {name}"),
            source,
        })
    }

    /// Deletes everything [`Topology::declare`] made (tests and decommissioning).
    pub async fn delete(&self, ch: &Channel) -> Result<(), AmqpError> {
        for q in [&self.queue, &self.dead] {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in [&self.exchange, &self.dead] {
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}
