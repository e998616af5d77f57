//! Wires the stages together; the one module that knows all of them.
//!
//! ```text
//! listeners ──▶ journal ──▶ mapper thread (route + map) ──▶ outbox ──▶ store thread ──▶ store
//! ```
//! The mapper follows the journal's durable watermark from a cursor (the first entry
//! that still needs processing, found again at every start). For DICOM entries that
//! carry their instance, it first makes the archive file match the entry and syncs the
//! archive, once per round (see [`Settle`]), so no entry passes the cursor before its
//! archive file is durable. It marks each batch's entries `mapped` and hands their
//! records to the store thread through the outbox, in memory: the journal is their
//! durable copy. The store thread upserts them into the store's tree and hands each
//! batch to its `store-sync` thread, which makes the store durable, marks the entries
//! `stored` and syncs the journal, while the store thread writes the next batch. A crash
//! anywhere replays work that was not marked `stored` (a restart maps `mapped` entries
//! again); replays are idempotent because record ids are deterministic. These threads
//! run at idle CPU priority by default (`[pipeline] priority`): acknowledging comes
//! first.
//!
//! With `[queue] kind = "amqp"` on an edge (role `edge` or `all`), a publish thread
//! takes the store thread's place:
//!
//! ```text
//! ... mapper ──▶ outbox ──▶ publish thread ──confirms──▶ RabbitMQ
//! ```
//! Statuses on an edge: the mapper marks an entry `mapped` once its records are durable
//! in the outbox, and the publish thread marks it `queued` once the broker confirmed every
//! record, then removes it from the outbox. An edge never marks `stored`: the store is
//! another process. At a restart, `mapped` entries still in the outbox are published
//! from there, not mapped again. While the broker is away, entries wait in the outbox
//! and are sent again in arrival order when it is back.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, PipelinePriority};
use crate::diag::Diagnostic;
use crate::journal::{EntryMeta, Journal, Status};
use crate::listeners::dicom::Settle;
use crate::mapping::{MappingSet, RunContext};
use crate::queue::amqp::publisher::PublishItem;
use crate::queue::amqp::Publisher;
use crate::queue::{Outbox, OutboxEntry};
use crate::routes::RouteSet;
use crate::store::Store;

/// The routes and mappings in force; replaced as a whole on reload.
pub struct Rules {
    pub routes: RouteSet,
    pub mappings: MappingSet,
    /// Each listener's `facility` (halong.toml), by listener name.
    pub facilities: std::collections::BTreeMap<String, String>,
}

impl Rules {
    /// No routes and no mappings: what a `store` process, which maps nothing, holds.
    pub fn none() -> Rules {
        Rules {
            routes: RouteSet::default(),
            mappings: MappingSet::default(),
            facilities: Default::default(),
        }
    }

    /// Loads and cross-checks `routes/` and `mappings/` beside the config; returns every
    /// problem at once.
    pub fn load(config: &Config) -> Result<Rules, Vec<Diagnostic>> {
        let listeners = config.listener_names();
        let mut rules = Rules::load_dirs(
            &config.routes_dir(),
            &config.mappings_dir(),
            Some(&listeners),
        )?;
        rules.facilities = config.facilities();
        Ok(rules)
    }

    /// [`Rules::load`] from the two directories; `listeners` as [`RouteSet::load`]
    /// takes them.
    pub fn load_dirs(
        routes_dir: &std::path::Path,
        mappings_dir: &std::path::Path,
        listeners: Option<&[String]>,
    ) -> Result<Rules, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let mappings = match MappingSet::load(mappings_dir) {
            Ok(m) => Some(m),
            Err(mut e) => {
                problems.append(&mut e);
                None
            }
        };
        let mapping_names: Vec<String> = match &mappings {
            Some(m) => m.names().map(str::to_string).collect(),
            None => mapping_file_stems(mappings_dir),
        };
        let routes = match RouteSet::load(routes_dir, &mapping_names, listeners) {
            Ok(r) => Some(r),
            Err(mut e) => {
                problems.append(&mut e);
                None
            }
        };
        match (routes, mappings) {
            (Some(routes), Some(mappings)) if problems.is_empty() => Ok(Rules {
                routes,
                mappings,
                facilities: Default::default(),
            }),
            _ => Err(problems),
        }
    }
}

impl Rules {
    /// Loads `routes/` and `mappings/` again and, only when the new set has no problem,
    /// swaps it in for `current` in one step; messages being mapped keep the set they
    /// started with. An invalid set is refused with every problem and `current` stays.
    pub fn reload(
        config: &Config,
        current: &RwLock<Arc<Rules>>,
    ) -> Result<Arc<Rules>, Vec<Diagnostic>> {
        let new = Arc::new(Rules::load(config)?);
        *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&new);
        Ok(new)
    }
}

fn mapping_file_stems(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    crate::mapping::is_mapping_file(&p)
                        .then(|| p.file_stem()?.to_str().map(str::to_string))?
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What processing one journal entry produced.
pub enum Outcome {
    Records {
        route: String,
        records: Vec<crate::record::Record>,
    },
    Unrouted(String),
    /// `route` is the route that took the message, when one did.
    Failed {
        route: Option<String>,
        why: String,
    },
}

/// Parses, routes and maps one message.
pub fn process(rules: &Rules, meta: &EntryMeta, raw: &[u8]) -> Outcome {
    if let Some(reference) = crate::dicom::InstanceRef::from_journal(raw) {
        return process_dicom(rules, meta, reference);
    }
    let msg = match crate::hl7::parse(raw) {
        Ok(m) => m,
        Err(e) => {
            return Outcome::Failed {
                route: None,
                why: format!("cannot parse: {e}"),
            }
        }
    };
    let header = msg.header();
    let Some(route) = rules.routes.find(&meta.listener, header) else {
        return Outcome::Unrouted(format!(
            "no route takes {} from listener \"{}\"",
            display_type(&header.message_type),
            meta.listener
        ));
    };
    run_route(rules, route, meta, |mapping, ctx| mapping.run(&msg, ctx))
}

/// Routes and maps one received DICOM instance. Its journal entry is a reference (the
/// archived file and the instance's attributes), so the archive is not read here.
fn process_dicom(
    rules: &Rules,
    meta: &EntryMeta,
    reference: Result<crate::dicom::InstanceRef, String>,
) -> Outcome {
    let r = match reference {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                route: None,
                why: format!("unreadable DICOM reference: {e}"),
            }
        }
    };
    let modality = r.attributes.modality().unwrap_or("");
    let Some(route) = rules
        .routes
        .find_dicom(&meta.listener, &r.calling_ae, modality)
    else {
        return Outcome::Unrouted(format!(
            "no route takes DICOM^{modality} from calling AE \"{}\" on listener \"{}\"",
            r.calling_ae, meta.listener
        ));
    };
    run_route(rules, route, meta, |mapping, ctx| {
        mapping.run_dicom(&r.attributes, ctx)
    })
}

/// Runs the mapping `route` names on one journal entry; any failure names the route.
fn run_route(
    rules: &Rules,
    route: &crate::routes::Route,
    meta: &EntryMeta,
    run: impl FnOnce(
        &crate::mapping::Mapping,
        &RunContext,
    ) -> Result<Vec<crate::record::Record>, crate::mapping::MapError>,
) -> Outcome {
    let failed = |why: String| Outcome::Failed {
        route: Some(route.name.clone()),
        why,
    };
    let Some(mapping) = rules.mappings.get(&route.mapping) else {
        return failed(format!(
            "route \"{}\" names mapping \"{}\", which is not loaded",
            route.name, route.mapping
        ));
    };
    let ctx = RunContext {
        source: format!("urn:halong:{}:{}", meta.listener, meta.id),
        facility: rules
            .facilities
            .get(&*meta.listener)
            .cloned()
            .unwrap_or_default(),
    };
    match run(mapping, &ctx) {
        Ok(records) => Outcome::Records {
            route: route.name.clone(),
            records,
        },
        Err(e) => failed(format!(
            "route \"{}\", mapping \"{}\": {e}",
            route.name, route.mapping
        )),
    }
}

fn display_type(t: &str) -> String {
    if t.is_empty() {
        "a message without MSH-9".into()
    } else {
        t.to_string()
    }
}

/// Entries the mapper takes per round.
const BATCH: u64 = 512;
/// How long the mapper waits for a batch to fill before taking what there is.
const LINGER: Duration = Duration::from_millis(10);
/// The mapper maps another round (up to [`BATCH`] entries) only while fewer than this
/// many mapped entries wait in memory for the store thread or the publisher, so at most
/// `OUTBOX_ROOM + BATCH` wait, besides the two batches of [`STORE_BATCH`] the store
/// stage holds (a message's records take a few kilobytes to a few tens of kilobytes,
/// and about as much again as JSON bytes).
const OUTBOX_ROOM: usize = 1024;
/// Outbox entries the store thread takes per round.
const STORE_BATCH: usize = 256;
/// How long the store thread gathers more entries for a batch that updates an imaging
/// study (see [`gather_more`]); the delay until its records are searchable.
const STUDY_LINGER: Duration = Duration::from_millis(100);

/// Outbox entries the publish thread sends per round (each holds a message's records).
const PUBLISH_BATCH: usize = 256;

/// Where the outbox drains to.
pub enum Sink {
    /// The local record store (embedded queue).
    Store,
    /// RabbitMQ; the publisher's futures run on this runtime.
    Publish(Box<Publisher>, tokio::runtime::Handle),
}

/// The running processing stages.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    pub fn start(
        journal: Journal,
        outbox: Arc<Outbox>,
        store: Store,
        rules: Arc<RwLock<Arc<Rules>>>,
        sink: Sink,
        settle: Settle,
        priority: PipelinePriority,
    ) -> Pipeline {
        let stop = Arc::new(AtomicBool::new(false));
        let local_store = matches!(sink, Sink::Store);
        let mapper = {
            let (journal, outbox, store, stop) =
                (journal.clone(), outbox.clone(), store.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mapper".into())
                .spawn(move || {
                    set_priority(priority);
                    run_mapper(
                        &journal,
                        &outbox,
                        &store,
                        &rules,
                        settle,
                        local_store,
                        &stop,
                    )
                })
                .expect("spawn mapper thread")
        };
        let storer = {
            let stop = stop.clone();
            match sink {
                Sink::Store => std::thread::Builder::new()
                    .name("store".into())
                    .spawn(move || run_store(&journal, &outbox, &store, &stop, priority))
                    .expect("spawn store thread"),
                Sink::Publish(publisher, handle) => std::thread::Builder::new()
                    .name("publish".into())
                    .spawn(move || {
                        set_priority(priority);
                        run_publish(&journal, &outbox, publisher, &handle, &stop)
                    })
                    .expect("spawn publish thread"),
            }
        };
        Pipeline {
            stop,
            threads: vec![mapper, storer],
        }
    }

    /// Stops both threads after their current batch.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Gives the calling thread the pipeline's CPU priority (see [`PipelinePriority`]).
/// Threads it starts do not inherit it (a thread of tokio's blocking pool started from
/// the publish thread goes on to serve the listeners); each pipeline thread calls this
/// itself. Where the system refuses, the thread runs at normal priority and the engine
/// says so.
fn set_priority(priority: PipelinePriority) {
    if priority == PipelinePriority::Normal {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        let policy = libc::SCHED_IDLE | libc::SCHED_RESET_ON_FORK;
        // SAFETY: plain system call on the calling thread (pid 0) with a valid pointer.
        if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot lower the pipeline's CPU priority; it runs at normal priority"
            );
        }
        // SCHED_IDLE also puts a thread's disk I/O in the idle class where the I/O
        // scheduler has classes (mq-deadline, BFQ), and there the record store's and the
        // outbox's syncs would wait up to seconds behind the journal's. They keep the
        // normal best-effort class: only the CPU yields.
        const IOPRIO_WHO_PROCESS: libc::c_int = 1;
        // SAFETY: plain system call on the calling thread (who = 0), no pointers.
        if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IO_BEST_EFFORT) }
            != 0
        {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot keep the pipeline's disk I/O at normal priority"
            );
        }
    }
}

/// The default I/O priority of a thread at normal CPU priority: class best-effort (2,
/// shifted by 13), level 4.
#[cfg(target_os = "linux")]
pub const IO_BEST_EFFORT: libc::c_int = (2 << 13) | 4;

fn run_mapper(
    journal: &Journal,
    outbox: &Outbox,
    store: &Store,
    rules: &RwLock<Arc<Rules>>,
    mut settle: Settle,
    local_store: bool,
    stop: &AtomicBool,
) {
    let mut cursor = journal.first_unprocessed();
    tracing::info!(cursor, "mapper starts");
    let mut aside = SetAside::default();
    while !stop.load(Ordering::SeqCst) {
        // When the consumer falls behind, the unmapped backlog stays in the journal
        // (durable, replayed from the cursor) rather than in memory.
        if !outbox.wait_for_room(OUTBOX_ROOM, Duration::from_millis(200)) {
            continue;
        }
        let mut durable = journal.wait_durable_beyond(cursor - 1, Duration::from_millis(200));
        let retry = aside.is_due();
        if durable < cursor && !retry {
            continue;
        }
        if durable >= cursor && durable < cursor + BATCH - 1 {
            // Under light load, gather a few milliseconds' worth so the database syncs
            // below stay few and leave the disk to the journal's ACK path.
            durable = journal.wait_durable_beyond(cursor + BATCH - 2, LINGER);
        }
        let end = if durable >= cursor {
            durable.min(cursor + BATCH - 1)
        } else {
            cursor - 1
        };
        let rules = rules.read().expect("rules lock").clone();
        let retrying = if retry { aside.take() } else { Vec::new() };
        let mut ids: Vec<u64> = retrying
            .iter()
            .copied()
            .chain(cursor..=end)
            .filter(|id| {
                journal.entry(*id).is_some_and(|meta| {
                    // Records found in the outbox at start go from there, not mapped
                    // again: an edge's entry waiting for the broker (perhaps without
                    // its `mapped`, lost when the process was killed: status changes
                    // are written with the journal's next commit), or a replayed one.
                    meta.status.needs_processing() && !outbox.was_reloaded(*id)
                })
            })
            .collect();
        // After a failed round the entries it set aside are also in the range again.
        ids.sort_unstable();
        ids.dedup();
        let mut read = std::collections::HashMap::new();
        let unusable = match settle_archive(journal, &mut ids, &mut settle, &mut read) {
            Ok(settled) => {
                aside.add(settled.set_aside, settled.error);
                settle.set_failing(aside.failing.is_some());
                settled.unusable
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot make DICOM archive files durable; nothing of this batch is marked processed until they are (check free space and the disk under the data directory's dicom/); retrying");
                aside.put_back(retrying);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let (mut entries, mut statuses) = map_entries(journal, &rules, &ids, read);
        statuses.extend(unusable);
        if local_store {
            // On their way to the local record store in memory: the journal is their
            // durable copy (`mapped` is mapped again after a crash).
            Outbox::encode(&mut entries);
        } else if !entries.is_empty() {
            // Bound for the broker, which may be away for hours: the outbox's tree
            // keeps them, durable before `mapped` is recorded, so they are not mapped
            // again (perhaps by changed rules) once they wait there.
            let written = outbox
                .put(&mut entries)
                .map_err(|e| e.to_string())
                .and_then(|()| store.sync().map_err(|e| e.to_string()));
            if let Err(e) = written {
                tracing::error!(error = %e, "outbox write failed; retrying this batch");
                aside.put_back(retrying);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        }
        statuses.extend(entries.iter().map(|e| (e.journal_id, Status::Mapped, None)));
        journal.set_statuses(statuses);
        if local_store {
            // For the local record store: its writer is the busiest thread, so each
            // record's index entries are worked out here.
            for e in &mut entries {
                e.index = e
                    .records
                    .iter()
                    .map(crate::store::index_entries_of_record)
                    .collect();
            }
        }
        outbox.release(entries);
        cursor = end + 1;
    }
}

/// How often DICOM entries set aside (their archive file could not be written) are
/// tried again.
const ARCHIVE_RETRY: Duration = Duration::from_millis(500);
/// While archive files cannot be written, the error is logged again this often.
const ARCHIVE_REPORT: Duration = Duration::from_secs(60);

/// DICOM entries whose archive file could not be written (a full or failing disk). They
/// stay `received` and are tried again every [`ARCHIVE_RETRY`], while everything else,
/// HL7 messages included, goes on; a restart finds them again from the journal.
#[derive(Default)]
struct SetAside {
    ids: Vec<u64>,
    retry_at: Option<std::time::Instant>,
    /// Since when archive writes fail, and when that was last logged.
    failing: Option<(std::time::Instant, std::time::Instant)>,
}

impl SetAside {
    fn is_due(&self) -> bool {
        !self.ids.is_empty() && self.retry_at.is_none_or(|t| std::time::Instant::now() >= t)
    }

    /// The oldest entries set aside, at most a round's worth (each is read again).
    fn take(&mut self) -> Vec<u64> {
        let n = self.ids.len().min(BATCH as usize);
        self.ids.drain(..n).collect()
    }

    /// Entries of a round that did not complete: tried again at the next one.
    fn put_back(&mut self, ids: Vec<u64>) {
        self.ids.extend(ids);
        self.ids.sort_unstable();
        self.ids.dedup();
        self.retry_at = None;
    }

    /// The outcome of a round's archive writes.
    fn add(&mut self, ids: Vec<u64>, error: Option<std::io::Error>) {
        let now = std::time::Instant::now();
        match (error, self.failing) {
            (Some(e), None) => {
                tracing::error!(error = %e, entries = ids.len(), "cannot write DICOM archive files (check free space and the disk under the data directory's dicom/); those instances wait, the rest goes on; retrying");
                self.failing = Some((now, now));
            }
            (Some(e), Some((since, logged))) if now - logged >= ARCHIVE_REPORT => {
                tracing::error!(error = %e, waiting = self.ids.len() + ids.len(), failing_for_secs = (now - since).as_secs(), "DICOM archive files still cannot be written; retrying");
                self.failing = Some((since, now));
            }
            (None, Some(_)) if self.ids.is_empty() => {
                tracing::info!("DICOM archive files can be written again; the instances that waited are processed");
                self.failing = None;
            }
            _ => {}
        }
        if !ids.is_empty() {
            self.put_back(ids);
            self.retry_at = Some(now + ARCHIVE_RETRY);
        }
    }
}

/// What [`settle_archive`] did with a round's entries.
struct Settled {
    /// Entries whose archive path cannot be used: status `error` with the reason.
    unusable: Vec<StatusChange>,
    /// Entries whose file could not be written (the disk): to be tried again.
    set_aside: Vec<u64>,
    /// The first such write error.
    error: Option<std::io::Error>,
}

/// How many bytes of journal entries [`settle_archive`] keeps for mapping per round.
const KEEP_READ_BYTES: usize = 64 << 20;

/// For every DICOM entry among `ids` that carries its instance: writes its archive file
/// from the entry's bytes (or rewrites it when a crash damaged it), then syncs the
/// archive once for all of them. An entry whose archive path cannot be used (not a safe
/// path, or a file or directory in the way) is taken out of `ids` and returned with
/// status `error` and the reason; one whose file cannot be written (a full or failing
/// disk) is taken out to be tried again. Neither holds up the others. A failed sync of
/// the archive fails the whole round, to be retried. The entries read are left in
/// `read`, up to [`KEEP_READ_BYTES`], so mapping does not read them again.
fn settle_archive(
    journal: &Journal,
    ids: &mut Vec<u64>,
    settle: &mut Settle,
    read: &mut std::collections::HashMap<u64, Vec<u8>>,
) -> std::io::Result<Settled> {
    settle.reset();
    let mut unusable = Vec::new();
    let mut set_aside = Vec::new();
    let mut error = None;
    let mut kept = 0;
    for &id in ids.iter() {
        let is_dicom = journal
            .entry(id)
            .is_some_and(|m| m.message_type.starts_with("DICOM^"));
        if !is_dicom {
            continue;
        }
        // An unreadable entry fails again, with its reason, when it is mapped.
        let Ok(raw) = journal.read_raw(id) else {
            continue;
        };
        if let Some(Ok((reference, Some(part10)))) = crate::dicom::InstanceRef::read_journal(&raw) {
            match settle.ensure(&reference.path, part10) {
                Err(e) if is_entry_specific(&e) => {
                    unusable.push((
                        id,
                        Status::Error,
                        Some(format!(
                            "cannot write the archive file {}: {e}",
                            reference.path
                        )),
                    ));
                }
                Err(e) => {
                    set_aside.push(id);
                    error.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
        // Kept for mapping while the round's kept entries stay small; the others are
        // read again there (a DICOM entry can hold up to a MiB of image).
        if kept + raw.len() <= KEEP_READ_BYTES {
            kept += raw.len();
            read.insert(id, raw);
        }
    }
    ids.retain(|id| !unusable.iter().any(|(u, _, _)| u == id) && !set_aside.contains(id));
    if settle.is_pending() {
        let rebuilt = settle.rebuilt;
        settle.sync()?;
        if rebuilt > 0 {
            tracing::warn!(
                files = rebuilt,
                "DICOM archive files damaged by a crash were rewritten from the journal"
            );
        }
    }
    Ok(Settled {
        unusable,
        set_aside,
        error,
    })
}

/// Whether an archive write failed because of this entry's path rather than the disk.
fn is_entry_specific(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), InvalidData | NotADirectory | IsADirectory)
}

/// A journal status change: id, status, error.
type StatusChange = (u64, Status, Option<String>);

/// Routes and maps entries `ids`: the records of those that mapped, and the final
/// statuses of those that did not. Routes are recorded in the journal.
/// `read` holds entries already read from the journal.
fn map_entries(
    journal: &Journal,
    rules: &Rules,
    ids: &[u64],
    mut read: std::collections::HashMap<u64, Vec<u8>>,
) -> (Vec<OutboxEntry>, Vec<StatusChange>) {
    let mut entries = Vec::new();
    let mut statuses = Vec::new();
    for &id in ids {
        let Some(meta) = journal.entry(id) else {
            continue;
        };
        let raw = match read.remove(&id).map_or_else(|| journal.read_raw(id), Ok) {
            Ok(r) => r,
            Err(e) => {
                statuses.push((
                    id,
                    Status::Error,
                    Some(format!("cannot read from journal: {e}")),
                ));
                continue;
            }
        };
        match process(rules, &meta, &raw) {
            Outcome::Records { route, records } => {
                tracing::debug!(id, %route, records = records.len(), "mapped");
                crate::telemetry::route_mapped(&route);
                journal.set_route(id, &route);
                entries.push(OutboxEntry::new(id, route, records));
            }
            Outcome::Unrouted(why) => {
                tracing::info!(id, listener = %meta.listener, message_type = %meta.message_type, "unrouted");
                crate::telemetry::route_failed("");
                statuses.push((id, Status::Unrouted, Some(why)));
            }
            Outcome::Failed { route, why } => {
                tracing::warn!(id, listener = %meta.listener, message_type = %meta.message_type, "processing failed; kept with status error");
                crate::telemetry::route_failed(route.as_deref().unwrap_or(""));
                if let Some(route) = &route {
                    journal.set_route(id, route);
                }
                statuses.push((id, Status::Error, Some(why)));
            }
        }
    }
    (entries, statuses)
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the outbox could not be written: {0}")]
    Outbox(String),
}

/// What a replay did with one journal entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub id: u64,
    /// `mapped` (records on their way to the store or the broker), `error`, `unrouted`,
    /// or `skipped` (unknown id, or still being processed for the first time).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs entries again with the rules in force now (after an operator fixed a route or
/// mapping). Entries that still wait for their first processing are skipped. Records go
/// through the outbox to the store thread like any others, so [`Journal::wait_settled`]
/// tells when they are stored; every step shows in the entry's trail.
pub fn replay(
    journal: &Journal,
    outbox: &Outbox,
    store: &Store,
    rules: &Rules,
    ids: &[u64],
) -> Result<Vec<Replayed>, ReplayError> {
    let mut report = Vec::new();
    let mut runnable = Vec::new();
    for &id in ids {
        match journal.entry(id) {
            Some(meta) if !meta.status.needs_processing() => {
                journal.add_step(
                    id,
                    "replay",
                    Some("run again with the current routes and mappings".into()),
                );
                runnable.push(id);
            }
            _ => report.push(Replayed {
                id,
                outcome: "skipped",
                error: None,
            }),
        }
    }
    let (mut entries, mut statuses) = map_entries(journal, rules, &runnable, Default::default());
    if !entries.is_empty() {
        outbox
            .put(&mut entries)
            .map_err(|e| ReplayError::Outbox(e.to_string()))?;
        store
            .sync()
            .map_err(|e| ReplayError::Outbox(e.to_string()))?;
        statuses.extend(entries.iter().map(|e| (e.journal_id, Status::Mapped, None)));
    }
    for (id, st, err) in &statuses {
        report.push(Replayed {
            id: *id,
            outcome: st.as_str(),
            error: err.clone(),
        });
    }
    journal.set_statuses(statuses);
    outbox.release(entries);
    report.sort_by_key(|r| r.id);
    Ok(report)
}

/// Adds entries put within [`STUDY_LINGER`] to a batch that updates an imaging study.
/// Each C-STORE makes its own version of the study; the store merges a batch's versions
/// in memory and then reads, merges and rewrites the stored study once. A modality
/// sending over one association gives the pipeline a few instances per round, and the
/// stored study grows with every instance, so rewriting it per round would cost time
/// proportional to the study's size per few instances; gathering for a moment makes
/// that once per many.
fn gather_more(outbox: &Outbox, batch: &mut Vec<OutboxEntry>) {
    let until = std::time::Instant::now() + STUDY_LINGER;
    while batch.len() < STORE_BATCH {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let more = outbox.take(STORE_BATCH - batch.len(), left);
        if more.is_empty() {
            break;
        }
        batch.extend(more);
    }
}

/// A batch whose records are in the store's tree but not yet on disk, with the status
/// each entry gets once they are.
struct Written {
    batch: Vec<OutboxEntry>,
    statuses: Vec<StatusChange>,
}

/// The store sink in two threads: this one writes a batch's records into the store's
/// tree, `store-sync` then makes them durable, marks the entries and lets the outbox
/// forget them, while this one writes the next batch. The hand-off is a rendezvous, so
/// at most two batches are written and not yet durable; a status is never set before
/// the store's sync that covers the batch.
fn run_store(
    journal: &Journal,
    outbox: &Outbox,
    store: &Store,
    stop: &AtomicBool,
    priority: PipelinePriority,
) {
    set_priority(priority);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Written>(0);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn_scoped(scope, || {
                set_priority(priority);
                finish_written(journal, outbox, store, stop, rx)
            })
            .expect("spawn store-sync thread");
        while !stop.load(Ordering::SeqCst) {
            let mut batch = outbox.take(STORE_BATCH, Duration::from_millis(200));
            if batch.is_empty() {
                continue;
            }
            if batch.len() < STORE_BATCH && batch.iter().any(OutboxEntry::has_imaging_study) {
                gather_more(outbox, &mut batch);
            }
            let statuses = write_batch(journal, store, &batch);
            if tx.send(Written { batch, statuses }).is_err() {
                // The sync thread stopped (shutdown, or a failed store sync): what it
                // did not finish stays `mapped` and is stored at the next start.
                break;
            }
        }
        drop(tx);
    });
}

/// Upserts a batch's records; the status of each entry (an entry whose records the
/// store refuses is marked `error`, the others still go in). A result the store keeps
/// at a later stage than the entry's version (a preliminary after its final) is a step
/// `kept` in that entry's trail.
fn write_batch(journal: &Journal, store: &Store, batch: &[OutboxEntry]) -> Vec<StatusChange> {
    // Borrowed, not cloned: the entries stay whole for the fallback below.
    if let Ok(stats) = store.upsert_batch_encoded(batch.iter().flat_map(OutboxEntry::for_store)) {
        crate::telemetry::store_writes(stats.written);
        note_kept(journal, batch, &stats.kept);
        return batch
            .iter()
            .map(|e| (e.journal_id, Status::Stored, None))
            .collect();
    }
    let mut statuses = Vec::with_capacity(batch.len());
    for e in batch {
        match store.upsert_batch_encoded(e.for_store()) {
            Ok(stats) => {
                crate::telemetry::store_writes(stats.written);
                note_kept(journal, std::slice::from_ref(e), &stats.kept);
                statuses.push((e.journal_id, Status::Stored, None));
            }
            Err(err) => {
                tracing::warn!(
                    id = e.journal_id,
                    "record store refused the records; kept with status error"
                );
                statuses.push((
                    e.journal_id,
                    Status::Error,
                    Some(format!("record store refused the records: {err}")),
                ));
            }
        }
    }
    statuses
}

/// Records, in the trail of the entry each came from, the results the store kept
/// instead of the entry's version (`kept`: positions over `batch`'s records in order).
fn note_kept(journal: &Journal, batch: &[OutboxEntry], kept: &[crate::store::Kept]) {
    let sizes = batch.iter().map(|e| (e.journal_id, e.records.len()));
    for (id, k) in owners(sizes, kept) {
        crate::telemetry::store_kept(Some(id), k);
        journal.add_step(id, "kept", Some(k.to_string()));
    }
}

/// The entry each of `kept` came from: `sizes` gives each entry's id and number of
/// records, in the order their records were given to the store; `kept` is in that
/// order too.
fn owners(
    sizes: impl Iterator<Item = (u64, usize)>,
    kept: &[crate::store::Kept],
) -> Vec<(u64, &crate::store::Kept)> {
    let mut out = Vec::with_capacity(kept.len());
    let mut kept = kept.iter().peekable();
    let mut start = 0;
    for (id, n) in sizes {
        while let Some(k) = kept.next_if(|k| k.position < start + n) {
            out.push((id, k));
        }
        start += n;
    }
    out
}

/// The `store-sync` thread: for each written batch, in order, the store's sync, then
/// the statuses and the journal's sync, then the outbox's removal. A failed journal
/// sync is tried again every 500 ms, holding up the writer. A failed store sync stops
/// the store stage: the store cannot vouch for those records any more (see
/// [`Store::sync`]), `/ready` says so and `halong serve` stops, so that the service
/// manager's restart maps them again. At shutdown it finishes the batches it is handed
/// and stops retrying: unfinished entries stay `mapped`, and the next start stores them
/// (from the outbox's tree where it kept them, else by mapping them again).
fn finish_written(
    journal: &Journal,
    outbox: &Outbox,
    store: &Store,
    stop: &AtomicBool,
    written: std::sync::mpsc::Receiver<Written>,
) {
    for Written { batch, statuses } in written {
        if let Err(e) = store.sync() {
            tracing::error!(error = %e, "the record store could not make records durable; storing stops here (messages are still acknowledged and kept in the journal) and a restart stores them");
            return;
        }
        for (id, status, _) in &statuses {
            if *status == Status::Stored {
                if let Some(meta) = journal.entry(*id) {
                    crate::telemetry::end_to_end(meta.received_ms);
                }
            }
        }
        // `stored` must be on disk before the outbox forgets the entries it keeps (found
        // at open, or replayed), or a crash would leave them `mapped` with nothing left
        // to store.
        journal.set_statuses(statuses);
        if !sync_journal(journal, stop) {
            return;
        }
        if let Err(e) = outbox.remove(&batch) {
            tracing::error!(error = %e, "outbox cleanup failed; entries will be stored again (idempotent)");
        }
    }
}

/// Sleeps `d`, waking early when the pipeline stops.
fn pause(stop: &AtomicBool, d: Duration) {
    let until = std::time::Instant::now() + d;
    while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}

/// Syncs the journal, trying again every 500 ms while its commits fail (a failed commit
/// keeps its status frames for the next one, so only the sync needs repeating); false
/// when the pipeline stopped first.
fn sync_journal(journal: &Journal, stop: &AtomicBool) -> bool {
    while let Err(e) = journal.sync_blocking() {
        tracing::error!(error = %e, "journal sync failed; retrying");
        pause(stop, Duration::from_millis(500));
        if stop.load(Ordering::SeqCst) {
            return false;
        }
    }
    true
}

/// The edge's sink: outbox entries to RabbitMQ, released only on confirm.
fn run_publish(
    journal: &Journal,
    outbox: &Outbox,
    mut publisher: Box<Publisher>,
    handle: &tokio::runtime::Handle,
    stop: &AtomicBool,
) {
    let _runtime = handle.enter();
    let pause = |d: Duration| pause(stop, d);
    'publish: while !stop.load(Ordering::SeqCst) {
        let batch = outbox.take(PUBLISH_BATCH, Duration::from_millis(200));
        if batch.is_empty() {
            // Idle: notice a lost connection and reconnect, so /ready tells the truth.
            publisher.check();
            if !publisher.is_connected() {
                if let Err(e) = handle.block_on(publisher.ensure_connected()) {
                    let wait = publisher.next_backoff();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot reach the broker; messages are still acknowledged and wait in the outbox");
                    pause(wait);
                }
            }
            continue;
        }
        let listeners: Vec<Arc<str>> = batch
            .iter()
            .map(|e| {
                journal
                    .entry(e.journal_id)
                    .map_or_else(|| Arc::from(""), |m| m.listener)
            })
            .collect();
        let items: Vec<PublishItem<'_>> = batch
            .iter()
            .zip(&listeners)
            .map(|(e, l)| PublishItem {
                journal_id: e.journal_id,
                route: &e.route,
                listener: l,
                records: &e.records,
                encoded: &e.encoded,
            })
            .collect();
        let confirmed = match handle.block_on(publisher.publish(&items)) {
            Ok(c) => c,
            Err(e) => {
                let wait = publisher.next_backoff();
                tracing::warn!(error = %e, entries = batch.len(), retry_in_ms = wait.as_millis() as u64, "publish failed; the records stay in the outbox");
                outbox.requeue(batch);
                pause(wait);
                continue;
            }
        };
        drop(items);
        let (done, again): (Vec<_>, Vec<_>) =
            batch.into_iter().zip(confirmed).partition(|(_, ok)| *ok);
        let done: Vec<OutboxEntry> = done.into_iter().map(|(e, _)| e).collect();
        let again: Vec<OutboxEntry> = again.into_iter().map(|(e, _)| e).collect();
        if !done.is_empty() {
            journal.set_statuses(
                done.iter()
                    .map(|e| (e.journal_id, Status::Queued, None))
                    .collect(),
            );
            // `queued` must be on disk before the outbox forgets the entries, or a crash
            // would leave them `mapped` with no records anywhere on this edge. Only the
            // sync is tried again: the broker has the records already. Stopped
            // meanwhile, the entries stay in the outbox's tree and are published again
            // after the restart (idempotent).
            if !sync_journal(journal, stop) {
                break 'publish;
            }
            if let Err(e) = outbox.remove(&done) {
                tracing::error!(error = %e, "outbox cleanup failed; entries will be published again (idempotent)");
            }
        }
        if !again.is_empty() {
            outbox.requeue(again);
            pause(publisher.next_backoff());
        }
    }
    handle.block_on(publisher.close());
}

#[cfg(test)]
mod kept_tests {
    use crate::store::Kept;

    fn kept(position: usize) -> Kept {
        Kept {
            position,
            reference: format!("Observation/{position}"),
            stored: "final".into(),
            given: "preliminary".into(),
        }
    }

    #[test]
    fn each_kept_result_is_told_to_the_message_it_came_from() {
        // Three messages of 5, 0 and 3 records, then one of 2.
        let sizes = [(10, 5), (11, 0), (12, 3), (13, 2)];
        let k = [kept(0), kept(4), kept(5), kept(7), kept(9)];
        let found: Vec<(u64, usize)> = super::owners(sizes.into_iter(), &k)
            .into_iter()
            .map(|(id, k)| (id, k.position))
            .collect();
        assert_eq!(found, [(10, 0), (10, 4), (12, 5), (12, 7), (13, 9)]);
        assert!(super::owners(sizes.into_iter(), &[]).is_empty());
    }
}
