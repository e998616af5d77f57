//! The central record store: FHIR R4 resources (JSON) kept by `<resourceType>/<id>`,
//! with a patient index for name and identifier search and `$everything`.
//!
//! The store lives in one tree of the engine's sled database (the embedded queue's
//! outbox lives in another tree of the same database, so one [`Store::sync`] makes
//! both durable). It knows nothing of HL7, DICOM, routes or mappings.
//!
//! # Invariants
//!
//! 1. **One record per `(resourceType, id)`.** Ids are deterministic upstream, so
//!    re-processing a message overwrites its records and never duplicates them.
//! 2. **Indexes match the stored records.** A batch's records, its index additions and
//!    removals, and the per-type counts are applied as one atomic sled batch on one
//!    tree: a crash leaves either all of a batch or none of it. That is why records and
//!    indexes share a tree: with two trees a crash between the two applies could leave
//!    a record whose index entries are missing, and since a replay of the same record
//!    is skipped as unchanged, they would never be repaired.
//! 3. **Index entries of a previous version are removed.** Before a record is replaced
//!    the entries its previous version implied are computed and those that no longer
//!    apply are deleted: a renamed patient stops matching the old name, a record that
//!    points at another patient leaves the old patient's `$everything`.
//! 4. **Re-writing identical bytes costs one read.** A record whose serialised JSON is
//!    byte-identical to the stored one is counted as unchanged and not written.
//! 5. **A batch is all or nothing.** Every resource is validated before anything is
//!    written; one invalid resource refuses the batch with
//!    [`StoreError::InvalidResource`] naming its position and the problem.
//! 6. **Durable only after [`Store::sync`].** `sled::Db::flush` does not fsync; `sync`
//!    flushes and then fdatasyncs `<db_dir>/db`, one sync at a time.
//! 7. **Search cost follows the answer, not the store.** Name search scans index
//!    ranges in patient-id order and stops at the limit: the ranges of one token when
//!    the query has one, else those of the most selective *pair* of query tokens
//!    (Vietnamese names share few syllables, so every single token is common while
//!    pairs are not). Remaining tokens are checked against the token list stored in
//!    the index value; only the returned patients are read and parsed. A clinical
//!    search without a patient reads the code and date key ranges its criteria bound
//!    (`k/`, `t/`, `s/`, `e/`) and then only the records found there.
//! 8. **No logging.** Nothing here logs; errors carry ids and type names, never names,
//!    identifiers or other record content.
//!
//! Writers are serialised inside the store (one `upsert_batch` at a time); `get`,
//! `search_patients`, `everything` and `count` run concurrently with them. sled gives
//! readers no snapshot across keys, so a read racing a batch may see part of it: a
//! patient as of just before or just after the batch, or an index entry whose record is
//! not visible yet (skipped). Once `upsert_batch` returns, every read sees the batch.
//!
//! # On-disk layout
//!
//! sled tree `"records"`; keys are bytes, `\0` is the byte 0. Types are
//! `[A-Z][A-Za-z]{0,63}` and ids `[A-Za-z0-9\-.]{1,64}`, so neither contains `/` or `\0`;
//! name tokens contain only letters and digits.
//!
//! | key                                    | value                                                          |
//! |----------------------------------------|----------------------------------------------------------------|
//! | `m/layout`                             | layout version, ASCII `"2"` (a `"1"` store is upgraded at open) |
//! | `d/<Type>/<id>`                        | the resource, compact JSON (`serde_json`)                      |
//! | `c/<Type>`                             | number of stored resources, u64 big-endian                     |
//! | `n/<token>\0<patient id>`              | all name tokens of the patient, space-joined                   |
//! | `p/<token a>\0<token b>\0<patient id>` | the same token list; one key per token pair, `a < b`           |
//! | `x/<patient id>`                       | the same token list; only patients with > 12 tokens (no pairs) |
//! | `i/<value>\0<system>\0<patient id>`    | empty (system empty when absent)                               |
//! | `r/<patient id>\0<Type>/<id>`          | empty: `<Type>/<id>` references the patient                    |
//! | `l/<survivor id>\0<merged id>`         | empty: a `Patient.link` (`replaced-by`/`replaces`) merge       |
//! | `k/<Type>\0<code>\0<system>\0<id>`     | empty: a clinical record's coding (layout 2)                   |
//! | `t/<Type>\0<date>\0<id>`               | empty: a clinical record's date, when one point (layout 2)     |
//! | `s/<Type>\0<start>\0<id>`              | empty: the start of a clinical record's period (layout 2)      |
//! | `e/<Type>\0<end>\0<id>`                | empty: its end, `\x7f` when open (layout 2)                    |
//!
//! Name tokens are [`normalize`]d text (lowercase, no marks, `đ` → `d`), cut to
//! [`normalize::MAX_TOKEN_BYTES`]; a patient's tokens come from every `name[*]`'s
//! `family`, `given`, `prefix`, `suffix` and `text` (at most 64 distinct tokens per
//! patient). A patient with 3 name tokens and 1 identifier costs 8 keys: its record,
//! 3 `n/`, 3 `p/`, 1 `i/`. References are relative
//! `"reference": "Patient/<id>"` strings anywhere in a resource (a Patient's reference
//! to itself is not indexed).

mod clinical;
mod dates;
mod error;
mod index;
pub mod normalize;
mod search;
mod upsert;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub use clinical::{record_date_range, ClinicalQuery, DateOrder, Page, TokenQuery, CLINICAL_TYPES};
pub use dates::{DateCmp, DateFilter};
pub use error::{InvalidResource, StoreError};
pub use index::{index_entries_of_record, IndexEntries};
pub use normalize::normalize;
pub use search::{NameMatch, PatientQuery};
pub use upsert::{Kept, UpsertStats};

/// Name of the sled tree holding records and indexes.
pub const TREE: &str = "records";

/// sled's page cache size for a database opened with [`Store::sled_config`]; the engine
/// takes `[data] cache_mib` instead (default the same). sled's 1 GB default grows memory
/// without making the store faster; at 16 MB the store thread re-read pages for most
/// upserts. End to end (60,000 lab results): 256 MB gave about 20% more throughput and
/// 15% less CPU per message than 64 MB, for about 200 MB more resident memory.
pub const CACHE_CAPACITY: u64 = 256 << 20;

/// The record store. Cheap to clone (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    /// `<db_dir>/db`, kept open for fdatasync; the mutex makes syncs one at a time.
    db_file: Mutex<File>,
    db_file_path: PathBuf,
    /// Serialises writers: the read-previous-then-write of `upsert_batch` needs it.
    write_lock: Mutex<()>,
    /// Set for good once a `sync` failed (see [`Store::sync`]).
    sync_failed: std::sync::atomic::AtomicBool,
    faults: Faults,
}

/// Deliberate failures, for tests that prove a store that cannot make records durable
/// is reported and recovered.
#[derive(Debug, Default)]
pub struct Faults {
    fail_sync: std::sync::atomic::AtomicBool,
    /// While set, syncs wait (see [`Faults::hold_sync`]); read without a lock, so a
    /// sync with no hold set (every sync outside tests) takes none.
    held: std::sync::atomic::AtomicBool,
    /// Guards waiting on `held`, with `released`.
    hold_lock: Mutex<()>,
    released: std::sync::Condvar,
    /// A sync is waiting on the hold.
    holding: std::sync::atomic::AtomicBool,
}

impl Faults {
    /// While set, every [`Store::sync`] waits before it syncs (a slow disk): the
    /// records stay written and not yet durable for as long as a test needs.
    pub fn hold_sync(&self, on: bool) {
        let guard = self.hold_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.held.store(on, std::sync::atomic::Ordering::SeqCst);
        drop(guard);
        if !on {
            self.released.notify_all();
        }
    }

    /// Whether a sync is waiting on [`Faults::hold_sync`].
    pub fn sync_is_held(&self) -> bool {
        self.holding.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wait_while_held(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.held.load(SeqCst) {
            return;
        }
        let mut guard = self.hold_lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.held.load(SeqCst) {
            self.holding.store(true, SeqCst);
            guard = self.released.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        self.holding.store(false, SeqCst);
    }

    /// While set, every [`Store::sync`] fails as if `fdatasync` had returned EIO (and
    /// the store stays failed once one did: see [`Store::sync`]).
    pub fn fail_sync(&self, on: bool) {
        self.fail_sync
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this sync is to fail.
    fn sync_fails(&self) -> bool {
        self.fail_sync.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Store {
    /// Opens the store inside an existing sled database. `db_dir` is the directory
    /// sled was opened at; its file `db` is fdatasynced by [`Store::sync`].
    pub fn open(db: sled::Db, db_dir: &Path) -> Result<Store, StoreError> {
        let db_file_path = db_dir.join("db");
        let db_file = File::open(&db_file_path).map_err(|source| StoreError::OpenDbFile {
            path: db_file_path.clone(),
            source,
        })?;
        let tree = db.open_tree(TREE)?;
        match tree.get(index::LAYOUT_KEY)? {
            None => {
                tree.insert(index::LAYOUT_KEY, index::LAYOUT_VERSION.as_bytes())?;
            }
            Some(v) if v.as_ref() == index::LAYOUT_VERSION.as_bytes() => {}
            Some(v) if v.as_ref() == index::LAYOUT_WITHOUT_CLINICAL_KEYS.as_bytes() => {
                add_clinical_keys(&tree)?;
                tree.flush()?;
                tree.insert(index::LAYOUT_KEY, index::LAYOUT_VERSION.as_bytes())?;
            }
            Some(v) => {
                return Err(StoreError::UnsupportedLayout {
                    found: String::from_utf8_lossy(&v).into_owned(),
                    supported: index::LAYOUT_VERSION,
                })
            }
        }
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tree,
                db_file: Mutex::new(db_file),
                db_file_path,
                write_lock: Mutex::new(()),
                sync_failed: std::sync::atomic::AtomicBool::new(false),
                faults: Faults::default(),
            }),
        })
    }

    /// The sled configuration the engine should open its database with
    /// (`cache_capacity` = [`CACHE_CAPACITY`]).
    pub fn sled_config(db_dir: &Path) -> sled::Config {
        // No background flusher: every batch is made durable by `sync` (which also
        // fdatasyncs, unlike sled's flusher), and a flusher thread that outlives the
        // `Db` keeps its file lock, so reopening in the same process could fail.
        sled::Config::new()
            .path(db_dir)
            .cache_capacity(CACHE_CAPACITY)
            .flush_every_ms(None)
    }

    /// Makes everything written so far durable: `flush()`, then fdatasync of
    /// `<db_dir>/db`. Concurrent callers take turns.
    ///
    /// Once a sync failed, every later one fails too, until the store is opened again:
    /// after a failed fdatasync the kernel may have dropped the pages it could not
    /// write and marked them clean, so a later sync would succeed without them, and
    /// records it vouched for could be missing after a power cut (PostgreSQL's
    /// "fsyncgate", 2018). Nothing is marked `stored` meanwhile; a restart reopens the
    /// store from what is on disk and maps every `mapped` message again.
    pub fn sync(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let file = lock(&self.inner.db_file);
        self.inner.faults.wait_while_held();
        if self.inner.sync_failed.load(SeqCst) {
            return Err(StoreError::SyncFailedBefore {
                path: self.inner.db_file_path.clone(),
            });
        }
        let result = self
            .inner
            .db
            .flush()
            .map_err(StoreError::from)
            .and_then(|_| {
                let synced = if self.inner.faults.sync_fails() {
                    Err(std::io::Error::other("injected fdatasync failure"))
                } else {
                    file.sync_data()
                };
                synced.map_err(|source| StoreError::Sync {
                    path: self.inner.db_file_path.clone(),
                    source,
                })
            });
        if result.is_err() {
            self.inner.sync_failed.store(true, SeqCst);
        }
        result
    }

    /// True once a [`Store::sync`] failed: records are no longer made durable until the
    /// store is opened again.
    pub fn is_failing(&self) -> bool {
        self.inner
            .sync_failed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// The stored resource, or `None`. A type or id that could never be stored
    /// (not a FHIR type name or id) is simply not found.
    pub fn get(&self, resource_type: &str, id: &str) -> Result<Option<Value>, StoreError> {
        if !index::is_type_name(resource_type) || !index::is_fhir_id(id) {
            return Ok(None);
        }
        self.get_key(&index::doc_key(resource_type, id))
    }

    /// Number of stored resources of `resource_type` (kept as a counter: O(1)).
    pub fn count(&self, resource_type: &str) -> Result<usize, StoreError> {
        if !index::is_type_name(resource_type) {
            return Ok(0);
        }
        Ok(self
            .inner
            .tree
            .get(index::count_key(resource_type))?
            .map_or(0, |v| decode_count(&v) as usize))
    }

    /// Reads and parses the record at a `d/` key.
    fn get_key(&self, key: &[u8]) -> Result<Option<Value>, StoreError> {
        match self.inner.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => parse_record(key, &bytes).map(Some),
        }
    }
}

/// Writes the code and date keys of every clinical record of a layout 1 store (at open,
/// before anything else uses it). Idempotent: interrupted, it runs again at the next open.
fn add_clinical_keys(tree: &sled::Tree) -> Result<(), StoreError> {
    const PER_BATCH: usize = 10_000;
    for rt in CLINICAL_TYPES {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for entry in tree.scan_prefix(index::doc_key(rt, "")) {
            let (key, bytes) = entry?;
            let record = parse_record(&key, &bytes)?;
            let id = String::from_utf8_lossy(&key[index::doc_key(rt, "").len()..]).into_owned();
            let mut keys = std::collections::BTreeMap::new();
            index::clinical_entries(rt, &id, &record, &mut keys);
            for (k, v) in keys {
                batch.insert(k, v);
            }
            n += 1;
            if n % PER_BATCH == 0 {
                tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        tree.apply_batch(batch)?;
    }
    Ok(())
}

fn parse_record(key: &[u8], bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::CorruptRecord {
        key: String::from_utf8_lossy(key.strip_prefix(index::DOC).unwrap_or(key)).into_owned(),
        source,
    })
}

fn decode_count(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map_or(0, u64::from_be_bytes)
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
