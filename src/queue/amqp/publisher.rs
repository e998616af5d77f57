//! Publishing records with confirms, timeouts and reconnects.
//!
//! One connection and one confirm-mode channel. [`Publisher::publish`] sends every
//! record of a batch of outbox entries (pipelined: all publishes first, then the
//! confirms), waits at most `publish_timeout` for the confirms, and says which entries
//! the broker confirmed in full. Anything else (a lost connection, a timeout, a nack, an
//! unroutable return) drops the connection, so the next attempt reconnects and declares
//! the topology again, after a backoff that doubles from 200 ms to 10 s.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{Channel, Connection, ConnectionProperties};

use super::message::{encode_with, Origin};
use super::state::Side;
use super::{AmqpError, AmqpSettings, BrokerState, Topology};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One outbox entry to publish.
pub struct PublishItem<'a> {
    pub journal_id: u64,
    pub route: &'a str,
    pub listener: &'a str,
    pub records: &'a [crate::record::Record],
    /// The records' JSON, in the same order, where the outbox made it (may be empty).
    pub encoded: &'a [Vec<u8>],
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

pub struct Publisher {
    settings: AmqpSettings,
    topology: Topology,
    state: Arc<BrokerState>,
    link: Option<(Connection, Channel)>,
    backoff: Duration,
}

impl Publisher {
    pub fn new(settings: AmqpSettings, state: Arc<BrokerState>) -> Publisher {
        Publisher {
            topology: Topology::new(&settings.prefix),
            settings,
            state,
            link: None,
            backoff: BACKOFF_MIN,
        }
    }

    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Connects (one attempt, bounded by the publish timeout) unless connected.
    pub async fn ensure_connected(&mut self) -> Result<(), AmqpError> {
        if let Some((conn, ch)) = &self.link {
            if conn.status().connected() && ch.status().connected() {
                return Ok(());
            }
            self.drop_link("the broker closed the connection".into());
        }
        let (conn, ch) = match connect(&self.settings, &self.topology).await {
            Ok(link) => link,
            Err(e) => {
                self.state.set_disconnected(Side::Publisher, e.to_string());
                return Err(e);
            }
        };
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        tracing::info!(url = %self.settings.redacted_url(), "publisher connected to the broker");
        self.state.set_connected(Side::Publisher);
        self.link = Some((conn, ch));
        Ok(())
    }

    /// Publishes every record of `items` and waits for the confirms. `Ok(v)`: `v[i]` says
    /// whether every record of `items[i]` was confirmed. `Err`: nothing is known to be
    /// confirmed; the connection was dropped.
    pub async fn publish(&mut self, items: &[PublishItem<'_>]) -> Result<Vec<bool>, PublishError> {
        self.ensure_connected().await?;
        let timeout = self.settings.publish_timeout;
        let (_, ch) = self.link.as_ref().expect("connected above");
        let ch = ch.clone();
        let exchange = self.topology.exchange.clone();
        let sent = tokio::time::timeout(timeout, async {
            let mut pending = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let origin = Origin {
                    journal_id: item.journal_id,
                    route: item.route,
                    listener: item.listener,
                };
                for (k, record) in item.records.iter().enumerate() {
                    let json = item.encoded.get(k).map(Vec::as_slice);
                    let out = encode_with(record, json, &origin);
                    let confirm = ch
                        .basic_publish(
                            exchange.as_str().into(),
                            out.routing_key.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &out.body,
                            out.properties,
                        )
                        .await?;
                    pending.push((i, confirm));
                }
            }
            let mut ok = vec![true; items.len()];
            let (mut returned, mut nacked, mut confirmed) = (0u64, 0u64, 0u64);
            for (i, confirm) in pending {
                match confirm.await? {
                    Confirmation::Ack(None) => confirmed += 1,
                    Confirmation::Ack(Some(_)) => {
                        returned += 1;
                        ok[i] = false;
                    }
                    Confirmation::Nack(_) | Confirmation::NotRequested => {
                        nacked += 1;
                        ok[i] = false;
                    }
                }
            }
            Ok::<_, lapin::Error>((ok, confirmed, returned, nacked))
        })
        .await;
        match sent {
            Err(_) => {
                self.state.add(&self.state.timeouts, 1);
                let e = PublishError::Timeout(timeout);
                self.drop_link(e.to_string());
                Err(e)
            }
            Ok(Err(e)) => {
                let e = PublishError::Broker(AmqpError::Channel(e));
                self.drop_link(e.to_string());
                Err(e)
            }
            Ok(Ok((ok, confirmed, returned, nacked))) => {
                self.state.add(&self.state.confirmed, confirmed);
                self.state.add(&self.state.returned, returned);
                self.state.add(&self.state.nacked, nacked);
                if returned > 0 || nacked > 0 {
                    tracing::warn!(
                        returned,
                        nacked,
                        "the broker did not take every record; sending them again after a backoff"
                    );
                    // Reconnecting declares the topology again (a deleted queue or
                    // binding is the usual cause of returns).
                    self.drop_link(format!("{returned} returned, {nacked} nacked"));
                } else {
                    self.backoff = BACKOFF_MIN;
                }
                Ok(ok)
            }
        }
    }

    /// How long to wait before the next attempt; doubles each time until a success.
    pub fn next_backoff(&mut self) -> Duration {
        let d = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        d
    }

    /// Notices a connection the broker closed while nothing was being published.
    pub fn check(&mut self) {
        if let Some((conn, ch)) = &self.link {
            if !(conn.status().connected() && ch.status().connected()) {
                self.drop_link("the broker closed the connection".into());
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    fn drop_link(&mut self, why: String) {
        if let Some((conn, _)) = self.link.take() {
            tracing::warn!(reason = %why, "publisher disconnected from the broker");
            tokio::spawn(async move {
                let _ = conn.close(200, "reconnecting".into()).await;
            });
        }
        self.state.set_disconnected(Side::Publisher, why);
    }

    /// Closes the connection politely.
    pub async fn close(&mut self) {
        if let Some((conn, _)) = self.link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                conn.close(200, "halong stopping".into()),
            )
            .await;
        }
    }
}

/// Opens a connection and a channel and declares the topology, all within the timeout.
pub async fn connect(
    settings: &AmqpSettings,
    topology: &Topology,
) -> Result<(Connection, Channel), AmqpError> {
    let url = settings.redacted_url();
    let secs = settings.publish_timeout.as_secs();
    let attempt = async {
        let conn = Connection::connect(&settings.url, ConnectionProperties::default())
            .await
            .map_err(|source| AmqpError::Connect {
                url: url.clone(),
                source,
            })?;
        let ch = conn.create_channel().await?;
        topology.declare(&ch, settings.delivery_limit).await?;
        Ok((conn, ch))
    };
    tokio::time::timeout(settings.publish_timeout, attempt)
        .await
        .map_err(|_| AmqpError::ConnectTimeout {
            url: url.clone(),
            secs,
        })?
}
