//! The outbox: each message's records on their way from the mapper to their consumer,
//! the local record store or the broker, in arrival order.
//!
//! Every entry is handed to the consumer in memory. An entry bound for the broker is
//! also kept in a sled tree until the broker confirmed it (store-and-forward: the broker
//! may be away for hours). Key: journal id as 8 bytes big-endian (so iteration follows
//! arrival order). Value: `{"route": NAME, "records": [...]}` for that message (an older
//! plain JSON array of records is still read, with an empty route). At open, whatever the
//! tree still holds is queued again, and an entry leaves the tree only once its consumer
//! is done, so a crash in between sends it again (consumers are idempotent).
//!
//! Records bound for the local record store are not written to the tree: the journal
//! already holds their message durably, marked `mapped` until the store's records are on
//! disk, and a restart maps every `mapped` entry again (mapping is deterministic, upserts
//! are idempotent). Writing them here too cost a sled write and sync per batch and
//! another write to delete them, for nothing the journal does not already give.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::record::Record;

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
    /// The route that produced the records (a header when published to RabbitMQ).
    pub route: String,
    pub records: Vec<Record>,
    /// Each record as JSON, in the order of `records`, once [`Outbox::put`] wrote the
    /// entry (empty for entries read back at open): the store takes these bytes rather
    /// than serialising the records again.
    pub encoded: Vec<Vec<u8>>,
    /// Each record's index entries, in the order of `records`, when the mapper worked
    /// them out for the local record store (empty otherwise).
    pub index: Vec<Option<crate::store::IndexEntries>>,
    /// Whether the entry is in the outbox's tree (written by [`Outbox::put`], or found
    /// there at open); an entry only in memory has the journal as its durable copy.
    pub kept: bool,
}

impl OutboxEntry {
    /// A message's records, not yet encoded nor kept.
    pub fn new(journal_id: u64, route: String, records: Vec<Record>) -> OutboxEntry {
        OutboxEntry {
            journal_id,
            route,
            records,
            encoded: Vec::new(),
            index: Vec::new(),
            kept: false,
        }
    }

    /// What the record store's writer takes: each record with its JSON when
    /// [`Outbox::put`] made it, and its index entries when the mapper worked them out.
    pub fn for_store(
        &self,
    ) -> impl Iterator<Item = (&Record, Option<&[u8]>, Option<&crate::store::IndexEntries>)> {
        let bytes = self.encoded.iter().map(|b| Some(b.as_slice()));
        let index = self.index.iter().map(Option::as_ref);
        self.records
            .iter()
            .zip(bytes.chain(std::iter::repeat(None)))
            .zip(index.chain(std::iter::repeat(None)))
            .map(|((r, b), ix)| (r, b, ix))
    }

    /// Whether one of the records is an ImagingStudy.
    pub fn has_imaging_study(&self) -> bool {
        self.records
            .iter()
            .any(|r| r.resource_type() == Some("ImagingStudy"))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    Entry { route: String, records: Vec<Value> },
    Records(Vec<Value>),
}

pub struct Outbox {
    tree: sled::Tree,
    /// Entries put (or recovered) and not yet taken, in arrival order.
    waiting: Mutex<VecDeque<OutboxEntry>>,
    cv: Condvar,
    /// Signalled when entries are taken (see [`Outbox::wait_for_room`]).
    room: Condvar,
    /// Journal ids of the entries found at open (see [`Outbox::was_reloaded`]).
    reloaded: std::collections::HashSet<u64>,
    /// Entries released without being kept in the tree and not yet removed.
    in_memory: AtomicUsize,
}

impl Outbox {
    /// Opens the outbox and queues every entry left from before a restart. Entries that
    /// cannot be read are returned with the reason, for the caller to mark.
    pub fn open(db: &sled::Db) -> Result<(Outbox, Vec<OutboxError>), OutboxError> {
        let tree = db.open_tree("outbox")?;
        let mut waiting = VecDeque::new();
        let mut bad = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            let journal_id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            match serde_json::from_slice::<Stored>(&v) {
                Ok(stored) => {
                    let (route, values) = match stored {
                        Stored::Entry { route, records } => (route, records),
                        Stored::Records(records) => (String::new(), records),
                    };
                    let records: Option<Vec<Record>> =
                        values.iter().map(Record::from_value).collect();
                    match records {
                        Some(records) => waiting.push_back(OutboxEntry {
                            kept: true,
                            ..OutboxEntry::new(journal_id, route, records)
                        }),
                        None => {
                            tree.remove(k)?;
                            bad.push(OutboxError::Corrupt {
                                id: journal_id,
                                reason: "a record is not a JSON object".to_string(),
                            });
                        }
                    }
                }
                Err(e) => {
                    tree.remove(k)?;
                    bad.push(OutboxError::Corrupt {
                        id: journal_id,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let reloaded = waiting.iter().map(|e| e.journal_id).collect();
        Ok((
            Outbox {
                tree,
                waiting: Mutex::new(waiting),
                cv: Condvar::new(),
                room: Condvar::new(),
                reloaded,
                in_memory: AtomicUsize::new(0),
            },
            bad,
        ))
    }

    /// Encodes each entry's records as JSON into [`OutboxEntry::encoded`] (what the
    /// consumers send or write), without keeping the entries in the tree. Entries
    /// encoded already are left as they are.
    pub fn encode(entries: &mut [OutboxEntry]) {
        for e in entries
            .iter_mut()
            .filter(|e| e.encoded.len() != e.records.len())
        {
            e.encoded = e.records.iter().map(Record::to_json_vec).collect();
        }
    }

    /// Encodes entries (see [`Outbox::encode`]) and writes them to the tree (not yet
    /// durable: the caller syncs the database, then calls [`Outbox::release`]).
    pub fn put(&self, entries: &mut [OutboxEntry]) -> Result<(), OutboxError> {
        Outbox::encode(entries);
        let mut batch = sled::Batch::default();
        for e in entries.iter_mut() {
            // `{"route": …, "records": [...]}` ([`Stored::Entry`]) from those bytes.
            let size: usize = e.encoded.iter().map(|r| r.len() + 1).sum();
            let mut value = Vec::with_capacity(size + e.route.len() + 32);
            value.extend_from_slice(b"{\"route\":");
            serde_json::to_writer(&mut value, &e.route).expect("a string serialises");
            value.extend_from_slice(b",\"records\":[");
            for (i, r) in e.encoded.iter().enumerate() {
                if i > 0 {
                    value.push(b',');
                }
                value.extend_from_slice(r);
            }
            value.extend_from_slice(b"]}");
            batch.insert(&e.journal_id.to_be_bytes(), value);
        }
        self.tree.apply_batch(batch)?;
        for e in entries.iter_mut() {
            e.kept = true;
        }
        Ok(())
    }

    /// Hands entries to the consumer: kept ones once the tree is synced, the others
    /// once the journal holds their messages.
    pub fn release(&self, entries: Vec<OutboxEntry>) {
        if entries.is_empty() {
            return;
        }
        let in_memory = entries.iter().filter(|e| !e.kept).count();
        self.in_memory.fetch_add(in_memory, Ordering::SeqCst);
        self.waiting.lock().expect("outbox lock").extend(entries);
        self.cv.notify_all();
    }

    /// Up to `max` entries in arrival order, waiting up to `wait` for the first one.
    pub fn take(&self, max: usize, wait: Duration) -> Vec<OutboxEntry> {
        let guard = self.waiting.lock().expect("outbox lock");
        let (mut guard, _) = self
            .cv
            .wait_timeout_while(guard, wait, |w| w.is_empty())
            .expect("outbox lock");
        let n = guard.len().min(max);
        let taken = guard.drain(..n).collect();
        drop(guard);
        if n > 0 {
            self.room.notify_all();
        }
        taken
    }

    /// Waits up to `wait` until fewer than `limit` entries wait for the consumer; true
    /// when they do. The producer calls it before mapping more, so the entries held in
    /// memory stay bounded when the consumer falls behind (the store is slower than
    /// intake, or the broker is down): the backlog stays in the journal instead.
    pub fn wait_for_room(&self, limit: usize, wait: Duration) -> bool {
        let guard = self.waiting.lock().expect("outbox lock");
        let (guard, _) = self
            .room
            .wait_timeout_while(guard, wait, |w| w.len() >= limit)
            .expect("outbox lock");
        guard.len() < limit
    }

    /// Entries handed over and not yet taken by the consumer.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().expect("outbox lock").len()
    }

    /// Puts taken entries back at the front, in order (their commit failed).
    pub fn requeue(&self, entries: Vec<OutboxEntry>) {
        let mut waiting = self.waiting.lock().expect("outbox lock");
        for e in entries.into_iter().rev() {
            waiting.push_front(e);
        }
    }

    /// Drops entries their consumer is done with (records durable in the store, or
    /// confirmed by the broker).
    pub fn remove(&self, entries: &[OutboxEntry]) -> Result<(), OutboxError> {
        let mut batch = sled::Batch::default();
        let mut in_memory = 0;
        for e in entries {
            if e.kept {
                batch.remove(&e.journal_id.to_be_bytes());
            } else {
                in_memory += 1;
            }
        }
        self.in_memory.fetch_sub(in_memory, Ordering::SeqCst);
        if in_memory < entries.len() {
            self.tree.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Whether the entry of journal id `id` was in the outbox when it was opened: its
    /// records go from there, whatever the journal says of it (a status change can be
    /// lost when the process is killed), so the producer does not map it again.
    pub fn was_reloaded(&self, id: u64) -> bool {
        self.reloaded.contains(&id)
    }

    /// Entries handed over and not yet removed: kept in the tree, or in memory.
    pub fn len(&self) -> usize {
        self.tree.len() + self.in_memory.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Without sled's background flusher, dropping the database releases its file lock
    /// almost at once; but sled's I/O pool may still hold it for a moment after a flush
    /// (seen on a loaded machine), and it gives no signal when it lets go, so a reopen
    /// tries again for up to ten seconds.
    fn open_db(dir: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match sled::Config::new().path(dir).flush_every_ms(None).open() {
                Ok(db) => return db,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn record(v: Value) -> Record {
        Record::from_value(&v).expect("an object")
    }

    #[test]
    fn entries_left_at_a_crash_are_queued_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path());
            let (outbox, bad) = Outbox::open(&db).unwrap();
            assert!(bad.is_empty());
            let entries: Vec<OutboxEntry> = (1..=3)
                .map(|id| OutboxEntry::new(id, "r".into(), vec![record(json!({"id": id}))]))
                .collect();
            let mut entries = entries;
            outbox.put(&mut entries).unwrap();
            assert_eq!(entries[2].encoded, vec![br#"{"id":3}"#.to_vec()]);
            outbox.release(entries);
            // Written in this run: the producer itself decides about them.
            assert!(!outbox.was_reloaded(3));
            let taken = outbox.take(2, Duration::from_secs(1));
            assert_eq!(
                taken.iter().map(|e| e.journal_id).collect::<Vec<_>>(),
                vec![1, 2]
            );
            outbox.remove(&taken).unwrap();
            db.flush().unwrap();
        }
        let db = open_db(dir.path());
        let (outbox, _) = Outbox::open(&db).unwrap();
        // Found at open: its records go from here, the producer does not map it again.
        assert!(outbox.was_reloaded(3));
        assert!(!outbox.was_reloaded(1) && !outbox.was_reloaded(4));
        let again = outbox.take(10, Duration::from_secs(1));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].journal_id, 3);
        assert_eq!(again[0].records, vec![record(json!({"id": 3}))]);
        assert_eq!(again[0].route, "r");
        assert!(outbox.take(10, Duration::from_millis(1)).is_empty());
    }

    #[test]
    fn entries_for_the_local_store_live_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path());
            let (outbox, _) = Outbox::open(&db).unwrap();
            let mut entries: Vec<OutboxEntry> = (1..=2)
                .map(|id| OutboxEntry::new(id, "r".into(), vec![record(json!({"id": id}))]))
                .collect();
            Outbox::encode(&mut entries);
            assert_eq!(entries[1].encoded, vec![br#"{"id":2}"#.to_vec()]);
            outbox.release(entries);
            // Counted while on their way, though the tree is empty.
            assert_eq!(outbox.len(), 2);
            let taken = outbox.take(1, Duration::from_secs(1));
            assert!(!taken[0].kept);
            outbox.remove(&taken).unwrap();
            assert_eq!(outbox.len(), 1);
            db.flush().unwrap();
        }
        // Gone at a restart: the journal, not the outbox, brings them back.
        let db = open_db(dir.path());
        let (outbox, _) = Outbox::open(&db).unwrap();
        assert!(outbox.is_empty());
        assert!(!outbox.was_reloaded(2));
        assert!(outbox.take(10, Duration::from_millis(1)).is_empty());
    }

    #[test]
    fn a_full_outbox_has_no_room_until_the_consumer_takes() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let (outbox, _) = Outbox::open(&db).unwrap();
        let entry = |id| OutboxEntry::new(id, "r".into(), vec![record(json!({"id": id}))]);
        outbox.release((1..=3).map(entry).collect());
        assert_eq!(outbox.waiting(), 3);
        assert!(!outbox.wait_for_room(3, Duration::from_millis(1)));
        assert!(outbox.wait_for_room(4, Duration::from_millis(1)));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| outbox.wait_for_room(3, Duration::from_secs(30)));
            assert_eq!(outbox.take(1, Duration::from_secs(1)).len(), 1);
            assert!(waiter.join().unwrap(), "room once an entry is taken");
        });
        assert_eq!(outbox.waiting(), 2);
    }
}
