//! The store side: records from `<prefix>.store` into the record store.
//!
//! Deliveries come in a prefetch window (`[queue] prefetch`). The consumer takes what has
//! arrived (up to [`BATCH`], waiting at most [`LINGER`] for more), upserts the batch,
//! makes the record store durable, and only then acknowledges. Upserts are idempotent
//! (record ids are deterministic), so a redelivery after a crash or a lost connection
//! stores nothing twice. A delivery the store can never take is rejected without
//! requeue, which dead-letters it to `<prefix>.dead`; it is logged by reason and journal
//! id, never by content, and counted.
//!
//! A failing record store (database or fdatasync error) acknowledges nothing: the
//! connection is dropped, the broker redelivers, and the consumer tries again after a
//! backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::message::{decode, Poison, HEADER_JOURNAL_ID};
use super::publisher::connect;
use super::state::Side;
use super::{AmqpError, AmqpSettings, BrokerState, Topology};
use crate::store::{Kept, Store, StoreError};

/// Most deliveries stored in one record store commit.
pub const BATCH: usize = 256;
/// How long to wait for more deliveries once one has arrived.
pub const LINGER: Duration = Duration::from_millis(5);

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Consumes until `stop` is cancelled, reconnecting with backoff.
pub async fn run_consumer(
    settings: AmqpSettings,
    store: Store,
    state: Arc<BrokerState>,
    stop: CancellationToken,
) {
    let topology = Topology::new(&settings.prefix);
    let mut backoff = BACKOFF_MIN;
    while !stop.is_cancelled() {
        match consume(&settings, &topology, &store, &state, &stop, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "store consumer lost the broker; reconnecting");
                state.set_disconnected(Side::Consumer, e.to_string());
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    state.set_disconnected(Side::Consumer, "stopped".into());
}

async fn consume(
    settings: &AmqpSettings,
    topology: &Topology,
    store: &Store,
    state: &BrokerState,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), AmqpError> {
    let (conn, ch) = connect(settings, topology).await?;
    ch.basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = ch
        .basic_consume(
            topology.queue.as_str().into(),
            format!("halong-store-{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    state.set_connected(Side::Consumer);
    *backoff = BACKOFF_MIN;
    tracing::info!(queue = %topology.queue, prefetch = settings.prefetch, "store consumer connected");
    let result = deliver(&mut deliveries, store, state, stop).await;
    // Closing (rather than dropping) makes the broker requeue every unacknowledged
    // delivery now, also after a record store failure.
    let reason = if result.is_ok() {
        "halong stopping"
    } else {
        "reconnecting"
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, reason.into())).await;
    result
}

async fn deliver(
    deliveries: &mut lapin::Consumer,
    store: &Store,
    state: &BrokerState,
    stop: &CancellationToken,
) -> Result<(), AmqpError> {
    let closed = || AmqpError::Closed("the broker ended the consumer".into());
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            d = deliveries.next() => d,
        };
        let mut batch = vec![first.ok_or_else(closed)??];
        while batch.len() < BATCH {
            match tokio::time::timeout(LINGER, deliveries.next()).await {
                Ok(Some(d)) => batch.push(d?),
                Ok(None) => return Err(closed()),
                Err(_) => break,
            }
        }
        handle_batch(store, state, batch).await?;
    }
}

async fn handle_batch(
    store: &Store,
    state: &BrokerState,
    batch: Vec<Delivery>,
) -> Result<(), AmqpError> {
    let mut good: Vec<(Delivery, Value)> = Vec::with_capacity(batch.len());
    let mut poison: Vec<(Delivery, Poison)> = Vec::new();
    for d in batch {
        match decode(&d.data) {
            Ok(v) => good.push((d, v)),
            Err(p) => poison.push((d, p)),
        }
    }
    if !good.is_empty() {
        let values: Vec<Value> = good.iter().map(|(_, v)| v.clone()).collect();
        let st = store.clone();
        let (refused, kept) = tokio::task::spawn_blocking(move || commit(&st, &values))
            .await
            .map_err(|e| AmqpError::Store(format!("store task failed: {e}")))?
            .map_err(|e| AmqpError::Store(e.to_string()))?;
        // Results the store kept at a later stage than the version delivered (a
        // preliminary after its final), with the message they came from.
        for k in &kept {
            let from = good.get(k.position).and_then(|(d, _)| journal_id(d));
            crate::telemetry::store_kept(from.and_then(|n| u64::try_from(n).ok()), k);
        }
        if !refused.is_empty() {
            let mut accepted = Vec::with_capacity(good.len());
            for (i, (d, v)) in good.into_iter().enumerate() {
                match refused.iter().find(|(at, _)| *at == i) {
                    Some((_, why)) => poison.push((d, Poison::Refused(why.clone()))),
                    None => accepted.push((d, v)),
                }
            }
            good = accepted;
        }
    }
    for (d, why) in &poison {
        tracing::warn!(
            journal_id = journal_id(d),
            redelivered = d.redelivered,
            reason = %why,
            "record cannot be stored; moved to the dead-letter queue"
        );
        d.acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: false,
            })
            .await?;
    }
    state.add(&state.dead_lettered, poison.len() as u64);
    if poison.is_empty() {
        if let Some((last, _)) = good.last() {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    } else {
        for (d, _) in &good {
            d.acker.ack(BasicAckOptions::default()).await?;
        }
    }
    state.add(&state.stored, good.len() as u64);
    Ok(())
}

/// What [`commit`] did: the positions the store refused, with the reason, and the
/// results it kept instead of the version given (positions in the values).
type Committed = (Vec<(usize, String)>, Vec<Kept>);

/// Upserts and syncs.
fn commit(store: &Store, values: &[Value]) -> Result<Committed, StoreError> {
    let mut refused = Vec::new();
    let mut kept = Vec::new();
    match store.upsert_batch(values) {
        Ok(stats) => kept = stats.kept,
        Err(StoreError::InvalidResource { .. }) => {
            for (i, v) in values.iter().enumerate() {
                match store.upsert_batch(std::slice::from_ref(v)) {
                    Ok(stats) => {
                        kept.extend(stats.kept.into_iter().map(|k| Kept { position: i, ..k }))
                    }
                    Err(StoreError::InvalidResource { problem, .. }) => {
                        refused.push((i, problem.to_string()))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(e) => return Err(e),
    }
    store.sync()?;
    Ok((refused, kept))
}

fn journal_id(d: &Delivery) -> Option<i64> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(HEADER_JOURNAL_ID)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}
