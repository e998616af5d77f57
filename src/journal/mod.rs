//! The journal: the durable, append-only log of every message halong receives.
//!
//! Invariants:
//! 1. [`Journal::append`] resolves `Ok(id)` only after the entry's bytes were written and
//!    `fdatasync`ed. Listeners send their ACK (or C-STORE success) only after that.
//! 2. Group commit: one committer thread takes every append waiting at that moment,
//!    writes them with one `pwrite` and one `fdatasync`, then answers each. Concurrent
//!    connections share a flush; an append never waits for more than the flush that
//!    covers it and the one before it.
//! 3. When a write or sync fails, every append of that batch gets an error (so the
//!    listener NAKs), the segment is cut back to the last durable length, and ids are
//!    not consumed. Nothing in a failed batch is ever reported durable.
//! 4. Ids are dense, start at 1 and follow commit order, so "every id up to the
//!    durable watermark is on disk" holds, and the pipeline's cursor is just an id.
//! 5. Status changes and processing-trail steps are appended as small frames that ride
//!    along with the next batch (or are written within [`LAZY_EVERY`] when none comes);
//!    they are not waited for, and do not wake the committer. Losing the last few on a
//!    crash or a kill only means a message is processed again, which is idempotent
//!    downstream, and its trail misses those steps. Those of a commit that fails go
//!    with the next one, in their order.
//! 6. Retention ([`Journal::prune`], [`Journal::prune_where`]) deletes only whole,
//!    closed segments whose every entry is finished (`stored`; `queued` where records
//!    leave through RabbitMQ), from the oldest on; a message not yet stored is never
//!    pruned, except `error` and `unrouted` ones older than the operator's
//!    `error_retention_days`. Ids stay dense from the oldest kept entry. The order
//!    against the DICOM archive is in [`crate::retention`].
//!
//! On disk: `<data>/journal/<8-digit n>.seg`, each a sequence of frames (see
//! [`frame`]). A new segment starts when the current one passes the configured size.
//! Commits write at the end of the frames with `pwrite`, and the committer keeps up to
//! `ZERO_AHEAD` (1 MiB) of zeros written past them, so most commits write over blocks
//! the file already has and their `fdatasync` has no inode to write; a finished segment
//! is trimmed to its frames. At open every segment is scanned: a tail of zeros ends a
//! segment (and is kept in the last one, to be written over); a torn frame at the end
//! of the last segment is cut off; damage anywhere else stops the open with an error
//! naming segment and offset.

mod frame;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

/// Processing status of a journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Status {
    /// Durable, not processed yet.
    Received = 1,
    /// A route matched.
    Routed = 2,
    /// Mapped to records.
    Mapped = 3,
    /// Records are in the outbox.
    Queued = 4,
    /// Records are in the record store.
    Stored = 5,
    /// Parsing or mapping failed; `error` says why.
    Error = 6,
    /// No route matched.
    Unrouted = 7,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            1 => Status::Received,
            2 => Status::Routed,
            3 => Status::Mapped,
            4 => Status::Queued,
            5 => Status::Stored,
            6 => Status::Error,
            7 => Status::Unrouted,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Routed => "routed",
            Status::Mapped => "mapped",
            Status::Queued => "queued",
            Status::Stored => "stored",
            Status::Error => "error",
            Status::Unrouted => "unrouted",
        }
    }

    /// Still has to go through routing and mapping.
    pub fn needs_processing(self) -> bool {
        matches!(self, Status::Received | Status::Routed | Status::Mapped)
    }
}

impl EntryMeta {
    /// The route that took the message: its last `routed` trail step (kept in the
    /// journal), else the route an error names — processing errors start with
    /// `route "<name>"` (entries written before trails were kept).
    pub fn route_name(&self) -> Option<&str> {
        if let Some(r) = self.route.as_deref() {
            return Some(r);
        }
        let rest = self.error.as_deref()?.strip_prefix("route \"")?;
        rest.split_once('"').map(|(name, _)| name)
    }
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub listener: String,
    pub peer: String,
    pub received_ms: i64,
    /// `MSH-9` type and trigger as received, e.g. `ORU^R01` (empty when unreadable).
    pub message_type: String,
    /// `MSH-10`.
    pub control_id: String,
    pub status: Status,
    pub error: Option<String>,
    pub raw: Vec<u8>,
}

/// What the journal remembers about an entry (the raw bytes stay on disk).
#[derive(Debug, Clone, Serialize)]
pub struct EntryMeta {
    pub id: u64,
    pub received_ms: i64,
    pub listener: Arc<str>,
    pub peer: Arc<str>,
    pub message_type: Box<str>,
    pub control_id: Box<str>,
    pub status: Status,
    pub error: Option<Box<str>>,
    pub size: u32,
    /// The route that took the message, once routed (from its `routed` trail steps, so
    /// it is known again after a restart).
    pub route: Option<Arc<str>>,
    #[serde(skip)]
    segment: u32,
    #[serde(skip)]
    raw_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("journal segment {path} is damaged at byte {offset}: {what}; move the file aside to start without it")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error("journal write failed, message not stored: {0}")]
    CommitFailed(String),
    #[error("journal is closed")]
    Closed,
    #[error("no journal entry {0}")]
    NoSuchEntry(u64),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options for [`Journal::open`].
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// A segment is closed once it grows past this many bytes.
    pub segment_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 128 << 20,
        }
    }
}

/// Deliberate failures, for tests that prove no ACK follows a failed commit.
#[derive(Debug, Default)]
pub struct Faults {
    fail_sync: AtomicBool,
}

impl Faults {
    /// While set, every commit fails as if `fdatasync` had returned EIO.
    pub fn fail_sync(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }
}

enum Cmd {
    Append(NewEntry, oneshot::Sender<Result<u64, JournalError>>),
    /// Id, new status, error, when.
    Status(u64, Status, Option<String>, i64),
    /// A trail step that changes no status.
    Step(u64, Step),
    /// Resolves once everything sent before it is durable.
    Sync(oneshot::Sender<Result<(), JournalError>>),
}

struct Shared {
    dir: PathBuf,
    index: RwLock<Index>,
    /// Highest id known durable, with a condvar for the pipeline to wait on.
    durable: Mutex<u64>,
    durable_cv: Condvar,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    faults: Faults,
    /// Bumped on every status change, for [`Journal::wait_settled`].
    changes: Mutex<u64>,
    changes_cv: Condvar,
    /// Set when a commit failed and nothing has succeeded since.
    failing: AtomicBool,
    /// Commits that failed since the journal was opened.
    failed_commits: std::sync::atomic::AtomicU64,
    /// Processing trail of the newest [`TRAIL_CAP`] entries that changed, by id.
    trails: Mutex<std::collections::BTreeMap<u64, Vec<Step>>>,
    /// Status changes and trail steps waiting for the committer's next batch (see
    /// [`LAZY_EVERY`]): queued here rather than sent, so they never wake it.
    lazy: Mutex<Vec<Cmd>>,
}

/// Status and step frames ride along with the next commit of appends or syncs; when none
/// comes, the committer writes them after at most this long. Sending each one would wake
/// the committer per message the pipeline handles, in the middle of the ACK path.
const LAZY_EVERY: Duration = Duration::from_millis(50);

/// Trails are kept for at most this many entries (the oldest ids are dropped first).
pub const TRAIL_CAP: usize = 100_000;

/// One stage of a message's processing, for the message browser.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    /// `received`, `routed`, `queued`, `stored`, `error`, `unrouted`, `replay`…
    pub stage: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The route, the error or other detail (never message content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What [`Journal::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub segments: u64,
    pub entries: u64,
    /// The oldest id still in the journal (or the next one to be written).
    pub first_kept: u64,
}

/// Criteria for [`Journal::query`]; `None` does not restrict.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<Status>,
    pub listener: Option<String>,
    pub route: Option<String>,
    /// `ORU^R01`, or `ADT^*` for every trigger of a type.
    pub message_type: Option<String>,
    /// Received at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Received before (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Only ids below this one (the paging cursor: newest first).
    pub before_id: Option<u64>,
}

impl MessageFilter {
    pub fn matches(&self, e: &EntryMeta) -> bool {
        self.status.is_none_or(|s| e.status == s)
            && self.listener.as_deref().is_none_or(|l| &*e.listener == l)
            && self
                .route
                .as_deref()
                .is_none_or(|r| e.route_name() == Some(r))
            && self
                .message_type
                .as_deref()
                .is_none_or(|t| match t.strip_suffix('*') {
                    Some(prefix) => e.message_type.starts_with(prefix),
                    None => &*e.message_type == t,
                })
            && self.since_ms.is_none_or(|t| e.received_ms >= t)
            && self.until_ms.is_none_or(|t| e.received_ms < t)
            && self.before_id.is_none_or(|b| e.id < b)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Default)]
struct Index {
    /// `entries[i]` has id `base + i + 1`; `base` is the number of ids pruned from the
    /// front (see [`Journal::prune`]).
    base: u64,
    entries: Vec<EntryMeta>,
    listeners: HashMap<String, Arc<str>>,
    routes: HashMap<String, Arc<str>>,
}

impl Index {
    fn get_mut(&mut self, id: u64) -> Option<&mut EntryMeta> {
        id.checked_sub(self.base + 1)
            .and_then(|i| self.entries.get_mut(i as usize))
    }

    fn intern_route(&mut self, route: &str) -> Arc<str> {
        if let Some(a) = self.routes.get(route) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(route);
        self.routes.insert(route.to_string(), a.clone());
        a
    }

    fn intern(&mut self, listener: &str) -> Arc<str> {
        if let Some(a) = self.listeners.get(listener) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(listener);
        self.listeners.insert(listener.to_string(), a.clone());
        a
    }
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, recovering what is on disk.
    pub fn open(dir: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut index = Index::default();
        let mut trails = std::collections::BTreeMap::new();
        let mut segments = list_segments(dir)?;
        let last = segments.last().copied();
        let mut end = 0;
        for &n in &segments {
            end = recover_segment(dir, n, Some(n) == last, &mut index, &mut trails)?;
        }
        if segments.is_empty() {
            segments.push(1);
        }
        let current = *segments.last().expect("one segment");
        let path = segment_path(dir, current);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if last.is_none() {
            sync_dir(dir)?;
        }
        // Frames end at `end`; zeros written ahead may follow.
        let prepared = file.metadata().map_err(io_err(&path))?.len();
        let len = end.min(prepared);
        let durable = index.base + index.entries.len() as u64;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            index: RwLock::new(index),
            durable: Mutex::new(durable),
            durable_cv: Condvar::new(),
            readers: Mutex::new(HashMap::new()),
            faults: Faults::default(),
            changes: Mutex::new(0),
            changes_cv: Condvar::new(),
            failing: AtomicBool::new(false),
            failed_commits: std::sync::atomic::AtomicU64::new(0),
            trails: Mutex::new(trails),
            lazy: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel();
        let committer = Committer {
            shared: shared.clone(),
            segment: current,
            file,
            len,
            prepared,
            next_id: durable + 1,
            options,
        };
        std::thread::Builder::new()
            .name("journal-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(io_err(dir))?;
        Ok(Journal { shared, tx })
    }

    /// Appends a message and resolves with its id once it is durable.
    pub async fn append(&self, entry: NewEntry) -> Result<u64, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(entry, tx))
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Blocking form of [`Journal::append`], for threads outside the async runtime.
    pub fn append_blocking(&self, entry: NewEntry) -> Result<u64, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(entry, tx))
            .map_err(|_| JournalError::Closed)?;
        rx.blocking_recv().map_err(|_| JournalError::Closed)?
    }

    /// Records a status change (in memory now, on disk with the next commit).
    pub fn set_status(&self, id: u64, status: Status, error: Option<String>) {
        self.set_statuses(vec![(id, status, error)]);
    }

    /// Records several status changes under one lock. `queued` never overwrites
    /// `stored`: it follows `mapped` on an edge, which never stores, so over `stored` it
    /// could only come late and would make a finished entry look unfinished.
    pub fn set_statuses(&self, mut changes: Vec<(u64, Status, Option<String>)>) {
        {
            let mut index = self.shared.index.write().expect("journal index lock");
            changes.retain(|(id, status, error)| match index.get_mut(*id) {
                Some(e) if *status == Status::Queued && e.status == Status::Stored => false,
                Some(e) => {
                    e.status = *status;
                    e.error = error.as_deref().map(Box::from);
                    true
                }
                None => false,
            });
        }
        let at_ms = now_ms();
        {
            let mut trails = self.shared.trails.lock().expect("journal trails lock");
            for (id, status, error) in &changes {
                trails.entry(*id).or_default().push(Step {
                    stage: status.as_str().to_string(),
                    at_ms,
                    detail: error.clone(),
                });
            }
            while trails.len() > TRAIL_CAP {
                trails.pop_first();
            }
        }
        self.shared.lazy.lock().expect("journal lazy lock").extend(
            changes
                .into_iter()
                .map(|(id, status, error)| Cmd::Status(id, status, error, at_ms)),
        );
        *self.shared.changes.lock().expect("journal changes lock") += 1;
        self.shared.changes_cv.notify_all();
    }

    /// Records which route took entry `id` (the route in memory, and a trail step).
    pub fn set_route(&self, id: u64, route: &str) {
        {
            let mut index = self.shared.index.write().expect("journal index lock");
            let interned = index.intern_route(route);
            match index.get_mut(id) {
                Some(e) => e.route = Some(interned),
                None => return,
            }
        }
        self.add_step(id, "routed", Some(route.to_string()));
    }

    /// Appends a step to the trail of entry `id` (in memory now, on disk with the next
    /// commit, like a status change).
    pub fn add_step(&self, id: u64, stage: &str, detail: Option<String>) {
        let step = Step {
            stage: stage.to_string(),
            at_ms: now_ms(),
            detail,
        };
        {
            let mut trails = self.shared.trails.lock().expect("journal trails lock");
            trails.entry(id).or_default().push(step.clone());
            while trails.len() > TRAIL_CAP {
                trails.pop_first();
            }
        }
        self.shared
            .lazy
            .lock()
            .expect("journal lazy lock")
            .push(Cmd::Step(id, step));
    }

    /// The processing trail of entry `id`: its arrival, then every recorded step (kept
    /// in the journal, so it survives a restart, for the newest [`TRAIL_CAP`] entries;
    /// entries written before trails were kept show their last status instead).
    pub fn trail(&self, id: u64) -> Vec<Step> {
        let Some(meta) = self.entry(id) else {
            return Vec::new();
        };
        let mut out = vec![Step {
            stage: "received".into(),
            at_ms: meta.received_ms,
            detail: Some(format!("listener {}", meta.listener)),
        }];
        let steps = self
            .shared
            .trails
            .lock()
            .expect("journal trails lock")
            .get(&id)
            .cloned();
        match steps {
            Some(steps) => out.extend(steps),
            None if meta.status != Status::Received => out.push(Step {
                stage: meta.status.as_str().to_string(),
                at_ms: meta.received_ms,
                detail: meta.error.as_deref().map(str::to_string),
            }),
            None => {}
        }
        out
    }

    /// Entries matching `filter`, newest first, at most `limit`.
    pub fn query(&self, filter: &MessageFilter, limit: usize) -> Vec<EntryMeta> {
        let index = self.shared.index.read().expect("journal index lock");
        let end = filter.before_id.map_or(index.entries.len(), |b| {
            (b.saturating_sub(index.base + 1) as usize).min(index.entries.len())
        });
        index.entries[..end]
            .iter()
            .rev()
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Waits until entry `id` has a final status (stored, error or unrouted) and returns
    /// it, or `None` after `timeout`.
    pub fn wait_settled(&self, id: u64, timeout: Duration) -> Option<Status> {
        self.wait_status(id, timeout, |s| {
            matches!(s, Status::Stored | Status::Error | Status::Unrouted)
        })
    }

    /// Waits until entry `id` has a status `done` accepts and returns it, or `None`
    /// after `timeout`.
    pub fn wait_status(
        &self,
        id: u64,
        timeout: Duration,
        done: impl Fn(Status) -> bool,
    ) -> Option<Status> {
        let settled = |j: &Journal| j.entry(id).map(|e| e.status).filter(|s| done(*s));
        let deadline = std::time::Instant::now() + timeout;
        let mut guard = self.shared.changes.lock().expect("journal changes lock");
        loop {
            if let Some(s) = settled(self) {
                return Some(s);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            guard = self
                .shared
                .changes_cv
                .wait_timeout(guard, left)
                .expect("journal changes lock")
                .0;
        }
    }

    /// Waits until everything appended or status-changed before this call is on disk.
    pub fn sync_blocking(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync(tx))
            .map_err(|_| JournalError::Closed)?;
        rx.blocking_recv().map_err(|_| JournalError::Closed)?
    }

    pub fn entry(&self, id: u64) -> Option<EntryMeta> {
        let index = self.shared.index.read().expect("journal index lock");
        id.checked_sub(index.base + 1)
            .and_then(|i| index.entries.get(i as usize))
            .cloned()
    }

    /// The newest entries first, at most `limit`, optionally of one status.
    pub fn recent(&self, limit: usize, status: Option<Status>) -> Vec<EntryMeta> {
        let index = self.shared.index.read().expect("journal index lock");
        index
            .entries
            .iter()
            .rev()
            .filter(|e| status.is_none_or(|s| e.status == s))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Number of entries per status.
    pub fn status_counts(&self) -> Vec<(Status, usize)> {
        let index = self.shared.index.read().expect("journal index lock");
        let mut counts = [0usize; 8];
        for e in &index.entries {
            counts[e.status as usize] += 1;
        }
        (1..=7u8)
            .filter_map(|s| Some((Status::from_u8(s)?, counts[s as usize])))
            .collect()
    }

    /// Reads the raw message bytes of entry `id` from disk.
    pub fn read_raw(&self, id: u64) -> Result<Vec<u8>, JournalError> {
        self.read_raw_head(id, usize::MAX)
    }

    /// The first `max` bytes of entry `id` (all of it when it is shorter).
    pub fn read_raw_head(&self, id: u64, max: usize) -> Result<Vec<u8>, JournalError> {
        let meta = self.entry(id).ok_or(JournalError::NoSuchEntry(id))?;
        let file = self.reader(meta.segment)?;
        let mut buf = vec![0u8; (meta.size as usize).min(max)];
        let path = segment_path(&self.shared.dir, meta.segment);
        file.read_exact_at(&mut buf, meta.raw_offset)
            .map_err(io_err(&path))?;
        Ok(buf)
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, JournalError> {
        let mut readers = self.shared.readers.lock().expect("journal readers lock");
        if let Some(f) = readers.get(&segment) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.shared.dir, segment);
        let f = Arc::new(File::open(&path).map_err(io_err(&path))?);
        readers.insert(segment, f.clone());
        Ok(f)
    }

    /// Highest id that is durable.
    pub fn durable_id(&self) -> u64 {
        *self.shared.durable.lock().expect("journal durable lock")
    }

    /// Blocks until an id above `after` is durable or `timeout` passes; returns the
    /// durable watermark.
    pub fn wait_durable_beyond(&self, after: u64, timeout: Duration) -> u64 {
        let guard = self.shared.durable.lock().expect("journal durable lock");
        let (guard, _) = self
            .shared
            .durable_cv
            .wait_timeout_while(guard, timeout, |d| *d <= after)
            .expect("journal durable lock");
        *guard
    }

    /// The first id that still needs routing and mapping (the cursor after a restart),
    /// or the next id to be written when everything is processed.
    pub fn first_unprocessed(&self) -> u64 {
        let index = self.shared.index.read().expect("journal index lock");
        index
            .entries
            .iter()
            .find(|e| e.status.needs_processing())
            .map_or(index.base + index.entries.len() as u64 + 1, |e| e.id)
    }

    /// Retention: deletes whole segments from the oldest on, as long as every entry of
    /// the segment is `stored` and was received before `cutoff_ms`. Stops at the first
    /// segment that does not qualify (so ids stay dense) and never touches the segment
    /// being written. Entries not yet stored (received, queued, error, unrouted) are
    /// therefore never pruned. Everything recorded so far is synced first.
    pub fn prune(&self, cutoff_ms: i64) -> Result<PruneReport, JournalError> {
        self.prune_where(|e| e.status == Status::Stored && e.received_ms < cutoff_ms)
    }

    /// Retention with the caller's rule: like [`Journal::prune`], but a segment goes when
    /// `may_go` holds for each of its entries. The rule must hold only for entries that
    /// are finished (`stored`, or `queued` where records leave through RabbitMQ) or
    /// settled and given up by the operator's choice (`error` or `unrouted` older than
    /// `error_retention_days`), so the invariant stays: nothing in flight is pruned. It
    /// runs under the journal's index lock and must not call back into the journal.
    pub fn prune_where(
        &self,
        may_go: impl Fn(&EntryMeta) -> bool,
    ) -> Result<PruneReport, JournalError> {
        self.sync_blocking()?;
        let dir = &self.shared.dir;
        let segments = list_segments(dir)?;
        let mut report = PruneReport::default();
        let Some((&last, older)) = segments.split_last() else {
            return Ok(report);
        };
        let mut index = self.shared.index.write().expect("journal index lock");
        for &n in older {
            let count = index.entries.iter().take_while(|e| e.segment == n).count();
            let rest_elsewhere = index.entries.iter().skip(count).any(|e| e.segment == n);
            let qualifies = !rest_elsewhere && index.entries[..count].iter().all(&may_go);
            if !qualifies || n == last {
                break;
            }
            let path = segment_path(dir, n);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            self.shared
                .readers
                .lock()
                .expect("journal readers lock")
                .remove(&n);
            index.entries.drain(..count);
            index.base += count as u64;
            report.segments += 1;
            report.entries += count as u64;
        }
        let base = index.base;
        drop(index);
        if report.segments > 0 {
            sync_dir(dir)?;
            let mut trails = self.shared.trails.lock().expect("journal trails lock");
            trails.retain(|id, _| *id > base);
        }
        report.first_kept = base + 1;
        Ok(report)
    }

    /// Ids of the entries with `status`.
    pub fn ids_with_status(&self, status: Status) -> Vec<u64> {
        let index = self.shared.index.read().expect("journal index lock");
        index
            .entries
            .iter()
            .filter(|e| e.status == status)
            .map(|e| e.id)
            .collect()
    }

    /// True while the last commit failed (the disk is refusing writes).
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::SeqCst)
    }

    /// How many commits failed since the journal was opened.
    pub fn failed_commits(&self) -> u64 {
        self.shared.failed_commits.load(Ordering::SeqCst)
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

struct Committer {
    shared: Arc<Shared>,
    segment: u32,
    file: File,
    /// End of the frames in the current segment: where the next commit writes.
    len: u64,
    /// Length of the segment file: from `len` to here it holds zeros written ahead
    /// (see [`ZERO_AHEAD`]).
    prepared: u64,
    next_id: u64,
    options: JournalOptions,
}

/// Bytes of zeros written past the frames whenever a commit reaches the end of the
/// segment file. A commit that writes over blocks the file already has makes its
/// fdatasync flush only the data; one that grows the file must also write the inode
/// (measured here: an in-place O_DSYNC write runs at 1.5–2 times the rate of an appending
/// one). The zeros cost one larger sync per this many bytes of journal. Recovery reads a
/// zero tail as the end of a segment.
const ZERO_AHEAD: u64 = 1 << 20;

/// Bounds one batch so a flood of appends still gets answered in slices.
const MAX_BATCH_CMDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 16 << 20;
/// When commands have lately come soon after a commit, the committer polls for the next
/// one for up to twice that gap (at least [`SPIN_MIN`], at most this) before it sleeps.
/// A sender waiting for its ACK before it sends again (one connection) finds the
/// committer awake: waking a sleeping thread cost about as much as the disk's sync on
/// the development machine (1-connection rate +20 to +26 %, docs/PERFORMANCE.md). A
/// sender that pauses longer than this between messages never makes the committer
/// poll, so an engine with little traffic does not burn CPU.
const SPIN_MAX: Duration = Duration::from_micros(500);
/// The shortest poll (see [`SPIN_MAX`]).
const SPIN_MIN: Duration = Duration::from_micros(50);

struct Pending {
    meta: EntryMeta,
    reply: oneshot::Sender<Result<u64, JournalError>>,
}

/// The next command if one comes before `until`, polling without sleeping.
fn poll(rx: &mpsc::Receiver<Cmd>, until: std::time::Instant) -> Option<Cmd> {
    loop {
        match rx.try_recv() {
            Ok(cmd) => return Some(cmd),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::hint::spin_loop();
    }
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut buf = Vec::with_capacity(1 << 20);
        // How long the committer last waited for a command (see [`SPIN_MAX`]).
        let mut last_gap = Duration::MAX;
        loop {
            let idle_since = std::time::Instant::now();
            let spin = (last_gap < SPIN_MAX).then(|| (last_gap * 2).clamp(SPIN_MIN, SPIN_MAX));
            let polled = spin.and_then(|spin| poll(&rx, idle_since + spin));
            let (first, closing) = match polled {
                Some(cmd) => (Some(cmd), false),
                None => match rx.recv_timeout(LAZY_EVERY) {
                    Ok(cmd) => (Some(cmd), false),
                    Err(mpsc::RecvTimeoutError::Timeout) => (None, false),
                    // Every handle is gone: write what is left, then stop.
                    Err(mpsc::RecvTimeoutError::Disconnected) => (None, true),
                },
            };
            last_gap = if first.is_some() {
                idle_since.elapsed()
            } else {
                Duration::MAX
            };
            // Status and step frames go first: each names an entry already durable.
            let mut batch =
                std::mem::take(&mut *self.shared.lazy.lock().expect("journal lazy lock"));
            let Some(first) = first else {
                if !batch.is_empty() {
                    self.commit(batch, &mut buf);
                }
                if closing {
                    return;
                }
                continue;
            };
            batch.push(first);
            let mut bytes = 0usize;
            while batch.len() < MAX_BATCH_CMDS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if let Cmd::Append(e, _) = &cmd {
                            bytes += e.raw.len();
                        }
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch, &mut buf);
        }
    }

    fn commit(&mut self, batch: Vec<Cmd>, buf: &mut Vec<u8>) {
        buf.clear();
        let mut pending: Vec<Pending> = Vec::new();
        let mut syncs = Vec::new();
        // Status and step frames of this batch: written again by the next commit if
        // this one fails (their changes are already in memory).
        let mut lazy = Vec::new();
        let mut id = self.next_id;
        let mut listeners = Vec::new();
        {
            let mut index = self.shared.index.write().expect("journal index lock");
            for cmd in &batch {
                if let Cmd::Append(e, _) = cmd {
                    listeners.push(index.intern(&e.listener));
                }
            }
        }
        let mut listeners = listeners.into_iter();
        for cmd in batch {
            match cmd {
                Cmd::Append(e, reply) => {
                    let raw_at = frame::encode_entry(
                        buf,
                        &frame::EntryFields {
                            id,
                            received_ms: e.received_ms,
                            status: e.status,
                            listener: &e.listener,
                            peer: &e.peer,
                            message_type: &e.message_type,
                            control_id: &e.control_id,
                            error: e.error.as_deref().unwrap_or(""),
                            raw: &e.raw,
                        },
                    );
                    pending.push(Pending {
                        meta: EntryMeta {
                            id,
                            received_ms: e.received_ms,
                            listener: listeners.next().expect("interned"),
                            peer: Arc::from(e.peer.as_str()),
                            message_type: e.message_type.into_boxed_str(),
                            control_id: e.control_id.into_boxed_str(),
                            status: e.status,
                            error: e.error.map(String::into_boxed_str),
                            size: e.raw.len() as u32,
                            route: None,
                            segment: self.segment,
                            raw_offset: self.len + raw_at as u64,
                        },
                        reply,
                    });
                    id += 1;
                }
                Cmd::Status(sid, status, error, at_ms) => {
                    frame::encode_status(buf, sid, status, at_ms, error.as_deref().unwrap_or(""));
                    lazy.push(Cmd::Status(sid, status, error, at_ms));
                }
                Cmd::Step(sid, step) => {
                    frame::encode_step(
                        buf,
                        sid,
                        step.at_ms,
                        &step.stage,
                        step.detail.as_deref().unwrap_or(""),
                    );
                    lazy.push(Cmd::Step(sid, step));
                }
                Cmd::Sync(reply) => syncs.push(reply),
            }
        }
        let must_sync = !pending.is_empty() || !syncs.is_empty();
        match self.write_out(buf, must_sync) {
            Ok(()) => {
                self.shared.failing.store(false, Ordering::SeqCst);
                self.len += buf.len() as u64;
                self.next_id = id;
                let last = id - 1;
                let replies: Vec<(u64, oneshot::Sender<_>)> = {
                    let mut index = self.shared.index.write().expect("journal index lock");
                    pending
                        .into_iter()
                        .map(|p| {
                            let pid = p.meta.id;
                            index.entries.push(p.meta);
                            (pid, p.reply)
                        })
                        .collect()
                };
                {
                    let mut d = self.shared.durable.lock().expect("journal durable lock");
                    *d = last;
                }
                self.shared.durable_cv.notify_all();
                for (pid, reply) in replies {
                    let _ = reply.send(Ok(pid));
                }
                for s in syncs {
                    let _ = s.send(Ok(()));
                }
                if self.len >= self.options.segment_bytes {
                    if let Err(e) = self.rotate() {
                        tracing::error!(error = %e, "journal could not start a new segment; continuing in the current one");
                    }
                }
            }
            Err(e) => {
                self.shared.failing.store(true, Ordering::SeqCst);
                self.shared.failed_commits.fetch_add(1, Ordering::SeqCst);
                tracing::error!(error = %e, batch = pending.len(), "journal commit failed; NAKing the batch");
                // Cut back to the last durable length so no half-written frame stays.
                if let Err(te) = self.file.set_len(self.len) {
                    tracing::error!(error = %te, "journal could not truncate after a failed write");
                }
                self.prepared = self.len;
                // Ahead of any frame queued since, so they keep their order.
                {
                    let mut queued = self.shared.lazy.lock().expect("journal lazy lock");
                    lazy.append(&mut queued);
                    *queued = lazy;
                }
                let msg = e.to_string();
                for p in pending {
                    let _ = p.reply.send(Err(JournalError::CommitFailed(msg.clone())));
                }
                for s in syncs {
                    let _ = s.send(Err(JournalError::CommitFailed(msg.clone())));
                }
            }
        }
    }

    fn write_out(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        self.file.write_all_at(buf, self.len)?;
        let end = self.len + buf.len() as u64;
        if end > self.prepared || self.prepared - end < ZERO_AHEAD / 4 {
            let target = end + ZERO_AHEAD;
            let zeros = vec![0u8; (target - end) as usize];
            self.prepared = match self.file.write_all_at(&zeros, end) {
                Ok(()) => target,
                // A disk too full for the zeros still takes the frames: the journal goes
                // on growing the file and tries again at the next commit.
                Err(_) => self.prepared.max(end),
            };
        }
        if sync {
            if self.shared.faults.fail_sync.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected fdatasync failure"));
            }
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        let next = self.segment + 1;
        let path = segment_path(&self.shared.dir, next);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.shared.dir)?;
        // The old segment's zeros past its frames are not needed any more.
        if let Err(e) = self.file.set_len(self.len) {
            tracing::warn!(error = %e, "journal could not trim the finished segment's zero tail");
        }
        self.file = file;
        self.segment = next;
        self.len = 0;
        self.prepared = 0;
        Ok(())
    }
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

fn list_segments(dir: &Path) -> Result<Vec<u32>, JournalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u32>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Scans one segment into the index; cuts a torn tail off the last segment. Returns
/// where its frames end: a tail of zeros (written ahead, see [`ZERO_AHEAD`]) is the end
/// of any segment and stays.
fn recover_segment(
    dir: &Path,
    n: u32,
    is_last: bool,
    index: &mut Index,
    trails: &mut std::collections::BTreeMap<u64, Vec<Step>>,
) -> Result<u64, JournalError> {
    let mut push = |id: u64, step: Step| {
        trails.entry(id).or_default().push(step);
        while trails.len() > TRAIL_CAP {
            trails.pop_first();
        }
    };
    let path = segment_path(dir, n);
    let data = std::fs::read(&path).map_err(io_err(&path))?;
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let decoded = frame::decode(rest);
        let f = match decoded {
            Ok(f) => f,
            Err(_) if is_zero_tail(rest) => break,
            Err(frame::FrameError::Truncated) if is_last => break,
            Err(frame::FrameError::Truncated) => {
                return Err(JournalError::Corrupt {
                    path,
                    offset: pos as u64,
                    what: "truncated frame",
                });
            }
            Err(frame::FrameError::Corrupt(what)) => {
                // A damaged frame in the last segment that is followed by nothing valid
                // is a torn write; anywhere else it is damage the operator must see.
                if is_last && !has_valid_frame_after(&data, pos + 1) {
                    break;
                }
                return Err(JournalError::Corrupt {
                    path,
                    offset: pos as u64,
                    what,
                });
            }
        };
        let len = frame::HEADER_LEN + frame::payload_len(rest).expect("decoded");
        match f {
            frame::Frame::Entry {
                id,
                received_ms,
                status,
                listener,
                peer,
                message_type,
                control_id,
                error,
                raw_offset_in_payload,
                raw_len,
            } => {
                if index.entries.is_empty() && index.base == 0 {
                    // The first entry on disk: earlier segments may have been pruned.
                    index.base = id.saturating_sub(1);
                }
                let expected = index.base + index.entries.len() as u64 + 1;
                if id != expected {
                    return Err(JournalError::Corrupt {
                        path,
                        offset: pos as u64,
                        what: "entry ids out of sequence",
                    });
                }
                let listener = index.intern(listener);
                index.entries.push(EntryMeta {
                    id,
                    received_ms,
                    listener,
                    peer: Arc::from(peer),
                    message_type: Box::from(message_type),
                    control_id: Box::from(control_id),
                    status,
                    error: (!error.is_empty()).then(|| Box::from(error)),
                    size: raw_len as u32,
                    route: None,
                    segment: n,
                    raw_offset: (pos + frame::HEADER_LEN + raw_offset_in_payload) as u64,
                });
            }
            frame::Frame::Status {
                id,
                status,
                error,
                at_ms,
            } => {
                if let Some(e) = index.get_mut(id) {
                    e.status = status;
                    e.error = (!error.is_empty()).then(|| Box::from(error));
                    if let Some(at_ms) = at_ms {
                        push(
                            id,
                            Step {
                                stage: status.as_str().to_string(),
                                at_ms,
                                detail: (!error.is_empty()).then(|| error.to_string()),
                            },
                        );
                    }
                }
            }
            frame::Frame::Step {
                id,
                at_ms,
                stage,
                detail,
            } => {
                if index.get_mut(id).is_some() {
                    if stage == "routed" && !detail.is_empty() {
                        let route = index.intern_route(detail);
                        if let Some(e) = index.get_mut(id) {
                            e.route = Some(route);
                        }
                    }
                    push(
                        id,
                        Step {
                            stage: stage.to_string(),
                            at_ms,
                            detail: (!detail.is_empty()).then(|| detail.to_string()),
                        },
                    );
                }
            }
        }
        pos += len;
    }
    if pos < data.len() && !is_zero_tail(&data[pos..]) {
        tracing::warn!(segment = %path.display(), offset = pos, dropped = data.len() - pos, "journal: cutting off a torn write at the end");
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.set_len(pos as u64).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
    }
    Ok(pos as u64)
}

fn is_zero_tail(rest: &[u8]) -> bool {
    rest.iter().all(|b| *b == 0)
}

/// True when some offset at or after `from` starts a valid frame (so the damage is not
/// just a torn tail).
fn has_valid_frame_after(data: &[u8], from: usize) -> bool {
    (from..data.len()).any(|p| frame::decode(&data[p..]).is_ok())
}

#[cfg(test)]
mod tests;
