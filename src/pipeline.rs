//! Wires the stages together; the one module that knows all of them.
//!
//! ```text
//! listeners ──▶ journal ──▶ mapper thread (route + map) ──▶ outbox ──▶ store thread ──▶ store
//! ```
//! The mapper follows the journal's durable watermark from a cursor (the first entry
//! that still needs processing, found again at every start). It writes each batch's
//! records to the outbox, makes the database durable, and only then marks the entries
//! `queued`. The store thread upserts outbox entries, makes the store durable, marks the
//! entries `stored`, and only then removes them from the outbox. A crash anywhere
//! replays work that was not marked; replays are idempotent because record ids are
//! deterministic.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::diag::Diagnostic;
use crate::journal::{EntryMeta, Journal, Status};
use crate::mapping::{MappingSet, RunContext};
use crate::queue::{Outbox, OutboxEntry};
use crate::routes::RouteSet;
use crate::store::Store;

/// The routes and mappings in force; replaced as a whole on reload.
pub struct Rules {
    pub routes: RouteSet,
    pub mappings: MappingSet,
}

impl Rules {
    /// Loads and cross-checks `routes/` and `mappings/` beside the config; returns every
    /// problem at once.
    pub fn load(config: &Config) -> Result<Rules, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let mappings = match MappingSet::load(&config.mappings_dir()) {
            Ok(m) => Some(m),
            Err(mut e) => {
                problems.append(&mut e);
                None
            }
        };
        let mapping_names: Vec<String> = match &mappings {
            Some(m) => m.names().map(str::to_string).collect(),
            None => mapping_file_stems(&config.mappings_dir()),
        };
        let routes = match RouteSet::load(
            &config.routes_dir(),
            &mapping_names,
            &config.listener_names(),
        ) {
            Ok(r) => Some(r),
            Err(mut e) => {
                problems.append(&mut e);
                None
            }
        };
        match (routes, mappings) {
            (Some(routes), Some(mappings)) if problems.is_empty() => Ok(Rules { routes, mappings }),
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
                    (p.extension()? == "toml")
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
        records: Vec<serde_json::Value>,
    },
    Unrouted(String),
    Failed(String),
}

/// Parses, routes and maps one message.
pub fn process(rules: &Rules, meta: &EntryMeta, raw: &[u8]) -> Outcome {
    let msg = match crate::hl7::parse(raw) {
        Ok(m) => m,
        Err(e) => return Outcome::Failed(format!("cannot parse: {e}")),
    };
    let header = msg.header();
    let Some(route) = rules.routes.find(&meta.listener, header) else {
        return Outcome::Unrouted(format!(
            "no route takes {} from listener \"{}\"",
            display_type(&header.message_type),
            meta.listener
        ));
    };
    let Some(mapping) = rules.mappings.get(&route.mapping) else {
        return Outcome::Failed(format!(
            "route \"{}\" names mapping \"{}\", which is not loaded",
            route.name, route.mapping
        ));
    };
    let ctx = RunContext {
        source: format!("urn:halong:{}:{}", meta.listener, meta.id),
    };
    match mapping.run(&msg, &ctx) {
        Ok(records) => Outcome::Records {
            route: route.name.clone(),
            records,
        },
        Err(e) => Outcome::Failed(format!(
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
/// Outbox entries the store thread takes per round.
const STORE_BATCH: usize = 256;

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
    ) -> Pipeline {
        let stop = Arc::new(AtomicBool::new(false));
        let mapper = {
            let (journal, outbox, store, stop) =
                (journal.clone(), outbox.clone(), store.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mapper".into())
                .spawn(move || run_mapper(&journal, &outbox, &store, &rules, &stop))
                .expect("spawn mapper thread")
        };
        let storer = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("store".into())
                .spawn(move || run_store(&journal, &outbox, &store, &stop))
                .expect("spawn store thread")
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

fn run_mapper(
    journal: &Journal,
    outbox: &Outbox,
    store: &Store,
    rules: &RwLock<Arc<Rules>>,
    stop: &AtomicBool,
) {
    let mut cursor = journal.first_unprocessed();
    tracing::info!(cursor, "mapper starts");
    while !stop.load(Ordering::SeqCst) {
        let mut durable = journal.wait_durable_beyond(cursor - 1, Duration::from_millis(200));
        if durable < cursor {
            continue;
        }
        if durable < cursor + BATCH - 1 {
            // Under light load, gather a few milliseconds' worth so the database syncs
            // below stay few and leave the disk to the journal's ACK path.
            durable = journal.wait_durable_beyond(cursor + BATCH - 2, LINGER);
        }
        let end = durable.min(cursor + BATCH - 1);
        let rules = rules.read().expect("rules lock").clone();
        let mut entries = Vec::new();
        let mut statuses = Vec::new();
        for id in cursor..=end {
            let Some(meta) = journal.entry(id) else {
                continue;
            };
            if !meta.status.needs_processing() {
                continue;
            }
            let raw = match journal.read_raw(id) {
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
            match process(&rules, &meta, &raw) {
                Outcome::Records { route, records } => {
                    tracing::debug!(id, %route, records = records.len(), "mapped");
                    entries.push(OutboxEntry {
                        journal_id: id,
                        records,
                    });
                }
                Outcome::Unrouted(why) => {
                    tracing::info!(id, listener = %meta.listener, message_type = %meta.message_type, "unrouted");
                    statuses.push((id, Status::Unrouted, Some(why)));
                }
                Outcome::Failed(why) => {
                    tracing::warn!(id, listener = %meta.listener, message_type = %meta.message_type, "processing failed; kept with status error");
                    statuses.push((id, Status::Error, Some(why)));
                }
            }
        }
        if !entries.is_empty() {
            // The outbox must be durable before `queued` is recorded, or a power cut
            // could leave queued entries with no records anywhere.
            let written = outbox
                .put(&entries)
                .map_err(|e| e.to_string())
                .and_then(|()| store.sync().map_err(|e| e.to_string()));
            if let Err(e) = written {
                tracing::error!(error = %e, "outbox write failed; retrying this batch");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            statuses.extend(entries.iter().map(|e| (e.journal_id, Status::Queued, None)));
        }
        journal.set_statuses(statuses);
        outbox.release(entries);
        cursor = end + 1;
    }
}

fn run_store(journal: &Journal, outbox: &Outbox, store: &Store, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let batch = outbox.take(STORE_BATCH, Duration::from_millis(200));
        if batch.is_empty() {
            continue;
        }
        let mut statuses = Vec::with_capacity(batch.len());
        let all: Vec<serde_json::Value> = batch
            .iter()
            .flat_map(|e| e.records.iter().cloned())
            .collect();
        if store.upsert_batch(&all).is_ok() {
            statuses.extend(batch.iter().map(|e| (e.journal_id, Status::Stored, None)));
        } else {
            // Find the entries at fault; the others still go in.
            for e in &batch {
                match store.upsert_batch(&e.records) {
                    Ok(_) => statuses.push((e.journal_id, Status::Stored, None)),
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
        }
        if let Err(e) = store.sync() {
            tracing::error!(error = %e, "record store sync failed; retrying");
            std::thread::sleep(Duration::from_millis(500));
            outbox.requeue(batch);
            continue;
        }
        let ids: Vec<u64> = batch.iter().map(|e| e.journal_id).collect();
        journal.set_statuses(statuses);
        // `stored` must be on disk before the outbox forgets the entries, or a crash
        // would leave them `queued` with nothing left to store.
        if let Err(e) = journal.sync_blocking() {
            tracing::error!(error = %e, "journal sync failed; storing the batch again");
            std::thread::sleep(Duration::from_millis(500));
            outbox.requeue(batch);
            continue;
        }
        if let Err(e) = outbox.remove(&ids) {
            tracing::error!(error = %e, "outbox cleanup failed; entries will be stored again (idempotent)");
        }
    }
}
