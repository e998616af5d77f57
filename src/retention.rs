//! Retention: what old data goes, when, and in which order.
//!
//! Three keys decide it (`[data]` in `halong.toml`, 0 = keep forever):
//! - `journal_retention_days`: journal segments whose every message is finished and older
//!   than that go (see [`Journal::prune_where`]).
//! - `error_retention_days`: a message in `error` or `unrouted` (settled: nothing more
//!   happens to it unless an operator replays it) counts as finished for retention once
//!   it is older than that. Without it such a message is kept forever, and since the
//!   journal is pruned only from its oldest segment on, so is everything after it: one
//!   malformed message from a device would stop retention for good.
//! - `dicom_retention_days`: archived DICOM files (`<data>/dicom/<study>/<series>/…`,
//!   `failed/…`) last written before that go, then the study and series directories left
//!   empty.
//!
//! Invariants:
//! 1. Nothing not yet stored is pruned. A message is finished when it is `stored`, or
//!    `queued` where records leave through RabbitMQ (`[queue] kind = "amqp"`: the broker
//!    confirmed them and the edge holds nothing more). The one exception is the
//!    operator's choice: `error` and `unrouted` messages older than
//!    `error_retention_days`. An archived file stays while any journal entry naming it
//!    is unfinished (received, routed, mapped, error,
//!    unrouted), so an instance can always be mapped, replayed or inspected until its
//!    records are stored (or its error is older than `error_retention_days`). Files
//!    under `failed/` also go earlier: they are copies of instances the sender was told
//!    were refused (C-STORE failure status), kept for inspection only; they go by age
//!    even while their entry says `error` (the entry itself stays, with its reason and
//!    attributes).
//! 2. A DICOM instance's journal entry never goes before its file: a DICOM entry is
//!    pruned only once it is older than both retention periods, and each pass prunes the
//!    archive first and the journal after (not at all when the archive pass failed). So
//!    every archived file keeps its record in the message browser while it exists, and a
//!    record may outlive its file (it keeps the instance's text attributes, which is what
//!    mapping reads, so it can still be listed and replayed; the image is gone).
//!    Because a file kept forever would keep its entry, and the journal is pruned only
//!    from the oldest segment on, `halong check` refuses `journal_retention_days` without
//!    `dicom_retention_days` when a DICOM listener is configured.
//! 3. A file's age is its modification time: when it was received. The same instance
//!    sent again replaces the file and starts its age anew. A file no entry names (its
//!    entry already pruned, or left by a crash before its C-STORE was answered) goes
//!    by age alone.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::dicom::InstanceRef;
use crate::journal::{EntryMeta, Journal, JournalError, PruneReport, Status};
use crate::listeners::dicom::{Archive, ArchivePruneReport};

const DAY_MS: i64 = 86_400_000;
/// Bytes read from the start of an unfinished DICOM entry to find its archive path; a
/// longer reference (many text attributes) is read whole.
const REFERENCE_HEAD: usize = 64 << 10;

/// The retention settings of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `[data] journal_retention_days`; 0 keeps the journal.
    pub journal_days: u64,
    /// `[data] dicom_retention_days`; 0 keeps archived files.
    pub dicom_days: u64,
    /// `[data] error_retention_days`; 0 keeps `error` and `unrouted` messages (and,
    /// in the journal, everything after them).
    pub error_days: u64,
    /// Records leave through RabbitMQ, so `queued` is finished.
    pub queued_is_done: bool,
}

impl Policy {
    /// True when a pass would prune anything at all.
    pub fn is_active(&self) -> bool {
        self.journal_days > 0 || self.dicom_days > 0
    }

    /// A message whose processing is over (nothing of it is still on its way).
    pub fn is_finished(&self, status: Status) -> bool {
        status == Status::Stored || (self.queued_is_done && status == Status::Queued)
    }

    /// An `error` or `unrouted` message kept for longer than `error_retention_days`:
    /// retention treats it as finished (its file and its journal entry may go).
    fn is_given_up(&self, e: &EntryMeta, now_ms: i64) -> bool {
        self.error_days > 0
            && matches!(e.status, Status::Error | Status::Unrouted)
            && e.received_ms < now_ms - self.error_days as i64 * DAY_MS
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub archive: ArchivePruneReport,
    pub journal: PruneReport,
    /// Of the journal entries removed, how many were `error` or `unrouted` (gone by
    /// `error_retention_days`, never stored): the engine logs them.
    pub given_up: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("DICOM archive retention failed in {path}: {source}; the journal is not pruned until it succeeds")]
    Archive {
        path: String,
        source: std::io::Error,
    },
    #[error("journal retention failed: {0}")]
    Journal(#[from] JournalError),
    #[error("DICOM archive retention skipped: journal entry {id} cannot be read ({why}), so the file it may still need is unknown; nothing is pruned until it can be read")]
    Unreadable { id: u64, why: String },
}

/// True for the journal entry of a DICOM instance.
pub fn is_dicom(e: &EntryMeta) -> bool {
    e.message_type.starts_with("DICOM^")
}

/// Paths (relative to the archive root) that journal entries still need. An unfinished
/// DICOM entry that cannot be read fails the pass: its file might be one of them.
fn held_paths(
    journal: &Journal,
    policy: &Policy,
    now_ms: i64,
) -> Result<HashSet<String>, RetentionError> {
    let mut held = HashSet::new();
    for s in 1..=7u8 {
        let Some(status) = Status::from_u8(s) else {
            continue;
        };
        if policy.is_finished(status) {
            continue;
        }
        for id in journal.ids_with_status(status) {
            let Some(meta) = journal.entry(id) else {
                continue;
            };
            if !is_dicom(&meta) || policy.is_given_up(&meta, now_ms) {
                continue;
            }
            let unreadable = |why: String| RetentionError::Unreadable { id, why };
            // Only the reference is needed, not the instance bytes an entry may carry
            // (up to 1 MiB each, for every unfinished instance, every hour).
            let head = journal
                .read_raw_head(id, REFERENCE_HEAD)
                .map_err(|e| unreadable(e.to_string()))?;
            let whole = head.len() == meta.size as usize;
            let found = match InstanceRef::from_journal_head(&head, whole) {
                None if !whole && head.starts_with(InstanceRef::PREFIX) => {
                    let raw = journal
                        .read_raw(id)
                        .map_err(|e| unreadable(e.to_string()))?;
                    InstanceRef::from_journal_head(&raw, true)
                }
                found => found,
            };
            match found {
                Some(Ok(r)) => {
                    let refused_copy =
                        r.path.starts_with("failed/") && meta.status == Status::Error;
                    if !r.path.is_empty() && !refused_copy {
                        held.insert(r.path);
                    }
                }
                Some(Err(why)) => return Err(unreadable(why)),
                None => {}
            }
        }
    }
    Ok(held)
}

/// One retention pass at `now`: the archive first, then the journal (invariant 2).
/// Blocking: run it on a blocking thread.
pub fn run_once(
    journal: &Journal,
    archive: Option<&Archive>,
    policy: &Policy,
    now: SystemTime,
) -> Result<Report, RetentionError> {
    let mut report = Report::default();
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if let (Some(archive), true) = (archive, policy.dicom_days > 0) {
        let cutoff = now
            .checked_sub(Duration::from_secs(policy.dicom_days * 86_400))
            .unwrap_or(UNIX_EPOCH);
        let held = held_paths(journal, policy, now_ms)?;
        report.archive = archive
            .prune(cutoff, &|rel| held.contains(rel))
            .map_err(|source| RetentionError::Archive {
                path: archive.root().display().to_string(),
                source,
            })?;
    }
    if policy.journal_days > 0 {
        let journal_cutoff = now_ms - policy.journal_days as i64 * DAY_MS;
        let dicom_cutoff = (policy.dicom_days > 0).then(|| {
            // Never later than the archive's cutoff, so the file went first.
            now_ms - policy.dicom_days as i64 * DAY_MS
        });
        let given_up: Vec<u64> = if policy.error_days > 0 {
            [Status::Error, Status::Unrouted]
                .into_iter()
                .flat_map(|st| journal.ids_with_status(st))
                .collect()
        } else {
            Vec::new()
        };
        report.journal = journal.prune_where(|e| {
            (policy.is_finished(e.status) || policy.is_given_up(e, now_ms))
                && e.received_ms < journal_cutoff
                && (!is_dicom(e) || dicom_cutoff.is_some_and(|c| e.received_ms < c))
        })?;
        // Ids below the first one kept are gone; an entry still in error then was
        // removed as given up (the pass holds no lock between the two steps, but an
        // entry that went from error to stored meanwhile is only miscounted, not lost).
        report.given_up = given_up
            .iter()
            .filter(|&&id| id < report.journal.first_kept)
            .count() as u64;
    }
    Ok(report)
}
