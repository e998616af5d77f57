//! The embedded outbox: records keyed by the journal id of the message they came from.
//!
//! Key: journal id as 8 bytes big-endian (so iteration follows arrival order). Value:
//! the JSON array of that message's records. An entry is removed only after the store
//! has committed its records, so a crash in between replays it (upserts are idempotent).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database error: {0}")]
    Db(#[from] sled::Error),
    #[error("outbox entry {id} is not a JSON array of records: {reason}")]
    Corrupt { id: u64, reason: String },
}

/// One message's records.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub journal_id: u64,
    pub records: Vec<Value>,
}

pub struct Outbox {
    tree: sled::Tree,
    /// Bumped on every put; the consumer waits on it.
    signal: Mutex<u64>,
    cv: Condvar,
}

impl Outbox {
    pub fn open(db: &sled::Db) -> Result<Outbox, OutboxError> {
        Ok(Outbox {
            tree: db.open_tree("outbox")?,
            signal: Mutex::new(0),
            cv: Condvar::new(),
        })
    }

    /// Adds entries (not yet durable: the caller syncs the database).
    pub fn put(&self, entries: &[OutboxEntry]) -> Result<(), OutboxError> {
        let mut batch = sled::Batch::default();
        for e in entries {
            let value = serde_json::to_vec(&e.records).expect("records serialize");
            batch.insert(&e.journal_id.to_be_bytes(), value);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Wakes the consumer after the caller made the entries durable.
    pub fn notify(&self) {
        *self.signal.lock().expect("outbox signal lock") += 1;
        self.cv.notify_all();
    }

    /// Up to `max` entries in arrival order, waiting up to `wait` for the first one.
    pub fn take(&self, max: usize, wait: Duration) -> Result<Vec<OutboxEntry>, OutboxError> {
        let seen = *self.signal.lock().expect("outbox signal lock");
        let mut out = self.peek(max)?;
        if out.is_empty() {
            let guard = self.signal.lock().expect("outbox signal lock");
            let _ = self
                .cv
                .wait_timeout_while(guard, wait, |s| *s == seen)
                .expect("outbox signal lock");
            out = self.peek(max)?;
        }
        Ok(out)
    }

    fn peek(&self, max: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut out = Vec::new();
        for item in self.tree.iter().take(max) {
            let (k, v) = item?;
            let journal_id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let records: Vec<Value> =
                serde_json::from_slice(&v).map_err(|e| OutboxError::Corrupt {
                    id: journal_id,
                    reason: e.to_string(),
                })?;
            out.push(OutboxEntry {
                journal_id,
                records,
            });
        }
        Ok(out)
    }

    /// Drops entries whose records are committed in the store.
    pub fn remove(&self, ids: &[u64]) -> Result<(), OutboxError> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.to_be_bytes());
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}
