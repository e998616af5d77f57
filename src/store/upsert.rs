//! Writing records: validate the batch, diff each record's index entries against its
//! previous version, apply everything as one sled batch.

use std::collections::{BTreeMap, HashMap};

use std::borrow::Cow;

use serde_json::Value;

use super::error::StoreError;
use super::index::{count_key, doc_key, index_entries, validate, validate_record, IndexEntries};
use crate::record::{JsonView, Record};

/// A resource to store: a value, or a record as a mapping made it.
#[derive(Clone, Copy)]
pub enum Given<'v> {
    Value(&'v Value),
    Record(&'v Record),
}

impl<'v> From<&'v Value> for Given<'v> {
    fn from(v: &'v Value) -> Given<'v> {
        Given::Value(v)
    }
}

impl<'v> From<&'v Record> for Given<'v> {
    fn from(r: &'v Record) -> Given<'v> {
        Given::Record(r)
    }
}

/// A resource with its JSON bytes and index entries, where the caller has them.
type Known<'v> = (Given<'v>, Option<&'v [u8]>, Option<&'v IndexEntries>);

/// A resource of a batch after [`fold_studies`]: the one given at a position, or the
/// study merged from several.
enum Folded {
    Given(usize),
    Merged(Value),
}

/// The resource being written.
enum Doc<'a> {
    Value(Cow<'a, Value>),
    Record(&'a Record),
}

impl Doc<'_> {
    fn to_value(&self) -> Cow<'_, Value> {
        match self {
            Doc::Value(v) => Cow::Borrowed(&**v),
            Doc::Record(r) => Cow::Owned(r.to_value()),
        }
    }
}
use super::{decode_count, lock, Store};

/// What one `upsert_batch` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpsertStats {
    /// Records inserted or replaced.
    pub written: usize,
    /// Records whose stored JSON was already byte-identical (nothing written).
    pub unchanged: usize,
    /// Results and reports not written because the store holds them at a later stage
    /// (see [`result_stage`]).
    pub kept: Vec<Kept>,
}

/// A result or report the store kept instead of the version given: the stored one is
/// at a later stage (final) than the given one (preliminary), which came late: a
/// replay of an older message, or a sender's retry that arrived after the final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Position of the given resource in the batch.
    pub position: usize,
    /// `Type/id`.
    pub reference: String,
    /// The stored version's status and the given one's.
    pub stored: String,
    pub given: String,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kept as stored ({}); this message's version ({}) is an earlier stage and was not written",
            self.reference, self.stored, self.given
        )
    }
}

/// Where a result's or report's status stands in its life: registered (1), then
/// preliminary or partial (2), then settled (3: final, and what follows a final:
/// amended, corrected, appended, cancelled, entered-in-error). A version at an earlier
/// stage than the stored one never replaces it, so a preliminary that arrives after
/// its final (replayed, or retried late by the sender) does not undo it. Versions at
/// one stage replace each other, the later arriving winning, as do those of any other
/// type. `None` (no status, `unknown`, a type without this life) takes no part.
pub fn result_stage(resource_type: &str, status: Option<&str>) -> Option<u8> {
    if !matches!(resource_type, "Observation" | "DiagnosticReport") {
        return None;
    }
    match status? {
        "registered" => Some(1),
        "preliminary" | "partial" => Some(2),
        "final" | "amended" | "corrected" | "appended" | "cancelled" | "entered-in-error" => {
            Some(SETTLED)
        }
        _ => None,
    }
}

/// The last stage of [`result_stage`].
const SETTLED: u8 = 3;

/// The top-level `status` of a serialised record, read without building the record.
fn stored_status(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Status {
        status: Option<String>,
    }
    serde_json::from_slice::<Status>(bytes).ok()?.status
}

impl Store {
    /// Inserts or replaces every resource and updates all indexes, atomically for the
    /// whole batch. Idempotent: a resource whose serialised JSON equals the stored
    /// bytes is counted as unchanged and costs one read. The same `(type, id)` may
    /// appear several times in a batch; the last one wins, except that a result or
    /// report at an earlier stage than the stored one (or the batch's earlier version)
    /// is kept out ([`result_stage`], [`UpsertStats::kept`]).
    ///
    /// Every resource needs string `resourceType` and `id` (a FHIR id,
    /// `[A-Za-z0-9\-.]{1,64}`); otherwise nothing is written and
    /// [`StoreError::InvalidResource`] names the position and the problem.
    pub fn upsert_batch<'v>(
        &self,
        resources: impl IntoIterator<Item = &'v Value>,
    ) -> Result<UpsertStats, StoreError> {
        self.upsert_batch_encoded(resources.into_iter().map(|r| (r, None, None)))
    }

    /// Like [`Store::upsert_batch`], for values or records, with what the caller already
    /// worked out from each, where it has it: its JSON bytes (exactly what
    /// `serde_json::to_vec` of the value, or [`Record::to_json_vec`], gives: the outbox
    /// writes them) and its index entries ([`index_entries_of_record`] of it), so that neither
    /// is made a second time. A resource the store changes before writing it (a merge, a
    /// folded study, a link added) gets both anew. A record becomes a value only where
    /// a merge needs one: studies, and a Patient or Encounter that changed.
    ///
    /// [`index_entries_of_record`]: super::index_entries_of_record
    pub fn upsert_batch_encoded<'v, G: Into<Given<'v>>>(
        &self,
        resources: impl IntoIterator<Item = (G, Option<&'v [u8]>, Option<&'v IndexEntries>)>,
    ) -> Result<UpsertStats, StoreError> {
        let given: Vec<Known<'v>> = resources
            .into_iter()
            .map(|(g, b, i)| (g.into(), b, i))
            .collect();
        let mut named = Vec::with_capacity(given.len());
        for (position, (g, _, _)) in given.iter().enumerate() {
            let n = match *g {
                Given::Value(v) => validate(v),
                Given::Record(r) => validate_record(r),
            }
            .map_err(|problem| StoreError::InvalidResource { position, problem })?;
            named.push(n);
        }
        // Studies are folded and merged as values (and may get a link to their order).
        let values: Vec<Option<Cow<'v, Value>>> = given
            .iter()
            .zip(&named)
            .map(|((g, _, _), (rt, _))| match *g {
                Given::Value(v) => Some(Cow::Borrowed(v)),
                Given::Record(r) if *rt == "ImagingStudy" => Some(Cow::Owned(r.to_value())),
                Given::Record(_) => None,
            })
            .collect();
        let studies: Vec<Option<&Value>> = values
            .iter()
            .zip(&named)
            .map(|(v, (rt, _))| v.as_deref().filter(|_| *rt == "ImagingStudy"))
            .collect();
        let folded = fold_studies(&studies);

        let tree = &self.inner.tree;
        let _writer = lock(&self.inner.write_lock);
        let mut stats = UpsertStats::default();
        let mut batch = sled::Batch::default();
        // Records written earlier in this batch: their "previous version" for later
        // occurrences of the same key is the batch's, not the tree's. `IVec`s share
        // their bytes, so neither a hit here nor a write copies a record.
        let mut pending: HashMap<Vec<u8>, sled::IVec> = HashMap::new();
        let mut new_per_type: BTreeMap<&str, u64> = BTreeMap::new();
        let mut pending_accessions: Vec<Accession> = Vec::new();
        let mut relink: Vec<Accession> = Vec::new();

        for f in &folded {
            // The resource: as a value where there is one, else as the record.
            let (rt, id, doc, known_bytes, known_index) = match f {
                Folded::Given(i) => {
                    let (g, bytes, index) = given[*i];
                    let doc = match (&values[*i], g) {
                        (Some(v), _) => Doc::Value(Cow::Borrowed(&**v)),
                        (None, Given::Record(r)) => Doc::Record(r),
                        (None, Given::Value(v)) => Doc::Value(Cow::Borrowed(v)),
                    };
                    (
                        named[*i].0,
                        named[*i].1,
                        doc,
                        bytes.map(sled::IVec::from),
                        index,
                    )
                }
                Folded::Merged(v) => {
                    let (rt, id) = validate(v).expect("valid records fold into valid records");
                    (rt, id, Doc::Value(Cow::Borrowed(v)), None, None)
                }
            };
            // Serialising a `Value` cannot fail: its map keys are strings.
            let bytes = known_bytes.unwrap_or_else(|| match &doc {
                Doc::Value(v) => sled::IVec::from(
                    serde_json::to_vec(&**v).expect("a serde_json::Value always serialises"),
                ),
                Doc::Record(r) => sled::IVec::from(r.to_json_vec()),
            });
            let key = doc_key(rt, id);
            let previous: Option<sled::IVec> = match pending.get(&key) {
                Some(p) => Some(p.clone()),
                None => tree.get(&key)?,
            };
            if previous.as_deref() == Some(&bytes[..]) {
                stats.unchanged += 1;
                continue;
            }
            if let (Some(p), Folded::Given(position)) = (&previous, f) {
                let given_status = match &doc {
                    Doc::Value(v) => v.get("status").and_then(Value::as_str),
                    Doc::Record(r) => r.root().get("status").and_then(|n| n.as_str()),
                };
                // A settled version replaces whatever is stored: the stored one is read
                // only for an earlier stage.
                if let Some(given_stage) = result_stage(rt, given_status).filter(|&s| s < SETTLED) {
                    let stored = stored_status(p);
                    if result_stage(rt, stored.as_deref()).is_some_and(|s| s > given_stage) {
                        stats.kept.push(Kept {
                            position: *position,
                            reference: format!("{rt}/{id}"),
                            stored: stored.unwrap_or_default(),
                            given: given_status.unwrap_or_default().to_string(),
                        });
                        continue;
                    }
                }
            }
            // The same record from a later message (a patient's Patient and Encounter
            // come again with every result): only `meta.source` differs, so its index
            // entries are the ones it has, and the merge would give the new version.
            // Studies and orders are left to the full path (merging, accession links).
            if !matches!(rt, "ImagingStudy" | "ServiceRequest")
                && previous
                    .as_deref()
                    .is_some_and(|p| differs_only_in_source(p, &bytes))
            {
                batch.insert(key.as_slice(), bytes.clone());
                pending.insert(key, bytes);
                stats.written += 1;
                continue;
            }
            // A previous version that no longer parses cannot tell which entries it
            // had; it is overwritten anyway (readers tolerate stale entries: search
            // skips ids without a record).
            let mut old: Option<Value> = previous
                .as_deref()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok());
            // A study is merged from its old version by value, so its index entries are
            // read first.
            let mut old_study_entries = None;
            let merged = match old.take() {
                Some(o) if rt == "ImagingStudy" => {
                    old_study_entries = Some(index_entries(rt, id, &o));
                    Some(merge_study(o, &doc.to_value()))
                }
                Some(o) => {
                    let m = keeps_absent_elements(rt).then(|| merge_absent(&o, &doc.to_value()));
                    old = Some(o);
                    m
                }
                None => None,
            };
            let (mut doc, mut bytes, mut as_given) = (doc, bytes, true);
            if let Some(m) = merged {
                let b = serde_json::to_vec(&m).expect("a serde_json::Value always serialises");
                if previous.as_deref() == Some(b.as_slice()) {
                    stats.unchanged += 1;
                    continue;
                }
                (doc, bytes, as_given) = (Doc::Value(Cow::Owned(m)), sled::IVec::from(b), false);
            }
            // Orders and studies meet by accession number (see `accession`), when they
            // are of one patient.
            let acc = match &doc {
                Doc::Value(v) => accession(rt, &**v).map(|a| (a, subject_of(&**v))),
                Doc::Record(r) => accession(rt, r.root()).map(|a| (a, subject_of(r.root()))),
            };
            if let Some((acc, subject)) = acc {
                batch.insert(accession_key(&acc, rt, id), &[][..]);
                let this = Accession {
                    number: acc,
                    subject: subject.map(str::to_string),
                    id: id.to_string(),
                };
                if rt == "ServiceRequest" {
                    relink.push(this.clone());
                    pending_accessions.push(this);
                } else if let Doc::Value(value) = &mut doc {
                    // A study (always a value here) without a link to its order gets one.
                    if rt == "ImagingStudy" && value.get("basedOn").is_none() {
                        if let Some(order) = self.order_for(&this, &pending_accessions, &pending)? {
                            let v = value.to_mut();
                            v["basedOn"] = serde_json::json!([{ "reference": format!("ServiceRequest/{order}") }]);
                            bytes = sled::IVec::from(
                                serde_json::to_vec(&*v)
                                    .expect("a serde_json::Value always serialises"),
                            );
                            as_given = false;
                        }
                    }
                }
            }
            let old_entries = match old_study_entries {
                Some(entries) => entries,
                None => old
                    .map(|old| index_entries(rt, id, &old))
                    .unwrap_or_default(),
            };
            let computed;
            let new_entries = match known_index.filter(|_| as_given) {
                // The record as given: its entries as the caller worked them out.
                Some(entries) => entries,
                None => {
                    computed = match &doc {
                        Doc::Value(v) => index_entries(rt, id, &**v),
                        Doc::Record(r) => index_entries(rt, id, r.root()),
                    };
                    &computed
                }
            };
            for k in old_entries.keys() {
                if !new_entries.contains_key(k) {
                    batch.remove(k.as_slice());
                }
            }
            for (k, v) in new_entries {
                if old_entries.get(k) != Some(v) {
                    batch.insert(k.as_slice(), v.as_slice());
                }
            }
            if previous.is_none() {
                *new_per_type.entry(rt).or_default() += 1;
            }
            batch.insert(key.as_slice(), bytes.clone());
            pending.insert(key, bytes);
            stats.written += 1;
        }

        for (rt, added) in new_per_type {
            let k = count_key(rt);
            let now = tree.get(&k)?.map_or(0, |v| decode_count(&v)) + added;
            batch.insert(k, &now.to_be_bytes()[..]);
        }
        if stats.written > 0 {
            tree.apply_batch(batch)?;
        }
        drop(_writer);
        // Studies that arrived before their order: point them at it now.
        let mut studies = Vec::new();
        for acc in relink {
            let prefix = accession_key(&acc.number, "ImagingStudy", "");
            for item in tree.scan_prefix(&prefix) {
                let (k, _) = item?;
                let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                if let Some(v) = tree.get(doc_key("ImagingStudy", &id))? {
                    let mut study: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
                    if study.is_object()
                        && study.get("basedOn").is_none()
                        && accession("ImagingStudy", &study).as_ref() == Some(&acc.number)
                        && self.one_patient(acc.subject.as_deref(), subject_of(&study), &pending)?
                    {
                        study["basedOn"] = serde_json::json!([{ "reference": format!("ServiceRequest/{}", acc.id) }]);
                        studies.push(study);
                    }
                }
            }
        }
        if !studies.is_empty() {
            let more = self.upsert_batch(&studies)?;
            stats.written += more.written;
        }
        Ok(stats)
    }

    /// The ServiceRequest of `study`'s patient with its accession number, in this batch
    /// (`orders`: the orders written so far; `pending`: every record written so far) or
    /// stored.
    fn order_for(
        &self,
        study: &Accession,
        orders: &[Accession],
        pending: &HashMap<Vec<u8>, sled::IVec>,
    ) -> Result<Option<String>, StoreError> {
        for o in orders.iter().filter(|o| o.number == study.number) {
            if self.one_patient(study.subject.as_deref(), o.subject.as_deref(), pending)? {
                return Ok(Some(o.id.clone()));
            }
        }
        let prefix = accession_key(&study.number, "ServiceRequest", "");
        for item in self.inner.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some(v) = self.inner.tree.get(doc_key("ServiceRequest", &id))? else {
                continue;
            };
            let order: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
            // An entry stays when the order's number changes: it must still be its number.
            if accession("ServiceRequest", &order).as_ref() == Some(&study.number)
                && self.one_patient(study.subject.as_deref(), subject_of(&order), pending)?
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Whether `a` and `b` (`Patient/<id>`) are one patient: the same record, or two
    /// records that share an identifier value (a modality that names the hospital
    /// otherwise than the HIS still sends the patient's number). A record without a
    /// patient is nobody's: an accession number alone does not tie it to one.
    fn one_patient(
        &self,
        a: Option<&str>,
        b: Option<&str>,
        pending: &HashMap<Vec<u8>, sled::IVec>,
    ) -> Result<bool, StoreError> {
        let (Some(a), Some(b)) = (a, b) else {
            return Ok(false);
        };
        if a == b {
            return Ok(true);
        }
        let numbers = |reference: &str| -> Result<Vec<String>, StoreError> {
            let Some(id) = reference.strip_prefix("Patient/") else {
                return Ok(Vec::new());
            };
            let key = doc_key("Patient", id);
            let bytes = match pending.get(&key) {
                Some(b) => Some(b.clone()),
                None => self.inner.tree.get(&key)?,
            };
            let patient: Value = bytes
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            Ok(patient["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["value"].as_str())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect())
        };
        let theirs = numbers(b)?;
        Ok(numbers(a)?.iter().any(|n| theirs.contains(n)))
    }
}

/// True when two serialised records are the same but for the text of the first
/// `"meta":{"source":…}` (where the record came from). That byte sequence only occurs as
/// JSON structure: inside a string value its quotes would be escaped.
fn differs_only_in_source(a: &[u8], b: &[u8]) -> bool {
    fn around_source(v: &[u8]) -> Option<(&[u8], &[u8])> {
        const KEY: &[u8] = b"\"meta\":{\"source\":\"";
        let start = memchr::memmem::find(v, KEY)? + KEY.len();
        let mut i = start;
        while i < v.len() {
            match v[i] {
                b'\\' => i += 2,
                b'"' => return Some((&v[..start], &v[i..])),
                _ => i += 1,
            }
        }
        None
    }
    match (around_source(a), around_source(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// An order's or a study's accession number, the patient it is of, and its id. An
/// accession number is only unique in the facility that gave it out: an order and a
/// study meet by it only when they are of one patient (see `one_patient`).
#[derive(Clone, Debug)]
struct Accession {
    number: String,
    /// `Patient/<id>`, when the record names its patient.
    subject: Option<String>,
    id: String,
}

/// The patient a record is of (`subject.reference`).
fn subject_of<'d>(v: impl JsonView<'d>) -> Option<&'d str> {
    v.get("subject")?.get("reference")?.as_str()
}

/// Prefix of accession numbers: `a/<accession>\0<Type>\0<id>`. Entries are only added;
/// a stale one is harmless (the record it names is read before use).
fn accession_key(acc: &str, rt: &str, id: &str) -> Vec<u8> {
    let mut k = b"a/".to_vec();
    k.extend_from_slice(acc.as_bytes());
    k.push(0);
    k.extend_from_slice(rt.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The accession number of an ImagingStudy or ServiceRequest: its identifier typed
/// `ACSN` (v2-0203); for a ServiceRequest without one, its filler order number (`FILL`),
/// which many HIS use as the accession number.
fn accession<'d>(rt: &str, v: impl JsonView<'d>) -> Option<String> {
    if rt != "ImagingStudy" && rt != "ServiceRequest" {
        return None;
    }
    let ids = v.get("identifier")?;
    let typed = |code: &str| {
        ids.items().find_map(|i| {
            let codes = i.get("type")?.get("coding")?;
            codes
                .items()
                .any(|c| c.get("code").and_then(JsonView::as_str) == Some(code))
                .then(|| i.get("value")?.as_str())
                .flatten()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .map(str::to_string)
        })
    };
    typed("ACSN").or_else(|| (rt == "ServiceRequest").then(|| typed("FILL")).flatten())
}

/// The instances of one study arrive as one ImagingStudy record per C-STORE. Those of
/// one batch are merged here first, in memory, and the result takes the place of the
/// last of them: the stored study is then read, merged and rewritten once per batch,
/// not once per instance (the same result: [`merge_study`] keeps first-seen order and
/// lets later values win either way). Other records pass through untouched. Every
/// record has been validated.
fn fold_studies(studies: &[Option<&Value>]) -> Vec<Folded> {
    let study_id = |r: &Value| r["id"].as_str().map(str::to_string);
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut repeated = false;
    for (i, r) in studies.iter().enumerate() {
        if let Some(id) = r.and_then(study_id) {
            repeated |= last.insert(id, i).is_some();
        }
    }
    if !repeated {
        return (0..studies.len()).map(Folded::Given).collect();
    }
    let mut merged: HashMap<String, Value> = HashMap::new();
    let mut out = Vec::with_capacity(studies.len());
    for (i, r) in studies.iter().enumerate() {
        let Some((id, r)) = r.and_then(|r| Some((study_id(r)?, r))) else {
            out.push(Folded::Given(i));
            continue;
        };
        let so_far = merged.remove(&id).map(|acc| merge_study(acc, r));
        if last.get(&id) == Some(&i) {
            out.push(so_far.map_or(Folded::Given(i), Folded::Merged));
        } else {
            merged.insert(id, so_far.unwrap_or_else(|| r.clone()));
        }
    }
    out
}

/// One ImagingStudy from many C-STOREs: the new version's elements win, elements it
/// lacks are kept, series are merged by `uid` and their instances by `uid`, and the
/// counts are recomputed.
fn merge_study(old: Value, new: &Value) -> Value {
    // The old study is taken apart rather than copied: its series and instances move
    // into the result, so a study of thousands of instances costs one pass, not a copy.
    let Value::Object(mut old) = old else {
        return new.clone();
    };
    // A study sent again for another patient (corrected at the modality) is no longer
    // based on the first patient's order; its own is looked up again.
    if new.get("subject").is_some() && old.get("subject") != new.get("subject") {
        old.remove("basedOn");
    }
    let old_series = old.remove("series");
    let mut out = merge_absent_owned(Value::Object(old), new);
    let series = merge_by_uid(old_series, new.get("series"), |o, n| {
        let Value::Object(mut o) = o else {
            return n.clone();
        };
        let old_instances = o.remove("instance");
        let mut s = merge_absent_owned(Value::Object(o), n);
        let inst = merge_by_uid(old_instances, n.get("instance"), merge_absent_owned);
        s["numberOfInstances"] = Value::from(inst.len());
        s["instance"] = Value::Array(inst);
        s
    });
    let instances: usize = series
        .iter()
        .map(|s| {
            s.get("instance")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        })
        .sum();
    if let Some(obj) = out.as_object_mut() {
        obj.insert("numberOfSeries".into(), Value::from(series.len()));
        obj.insert("numberOfInstances".into(), Value::from(instances));
        obj.insert("series".into(), Value::Array(series));
    }
    out
}

/// Union of two arrays of objects keyed by `uid`, in first-seen order; `both` merges an
/// element present in each (the old one given by value). Elements are found by a map of
/// their string uids, so merging into a long array costs what is new.
fn merge_by_uid(
    old: Option<Value>,
    new: Option<&Value>,
    both: impl Fn(Value, &Value) -> Value,
) -> Vec<Value> {
    let mut out: Vec<Value> = match old {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mut at: HashMap<String, usize> = HashMap::with_capacity(out.len());
    for (i, o) in out.iter().enumerate() {
        if let Some(uid) = o.get("uid").and_then(Value::as_str) {
            at.entry(uid.to_string()).or_insert(i);
        }
    }
    for n in new.and_then(Value::as_array).into_iter().flatten() {
        let found = match n.get("uid") {
            None => None,
            Some(Value::String(uid)) => at.get(uid.as_str()).copied(),
            // A uid that is not a string (never written by our mappings) is compared
            // as a value.
            Some(uid) => out.iter().position(|o| o.get("uid") == Some(uid)),
        };
        match found {
            Some(i) => {
                let o = std::mem::take(&mut out[i]);
                out[i] = both(o, n);
            }
            None => {
                if let Some(uid) = n.get("uid").and_then(Value::as_str) {
                    at.entry(uid.to_string()).or_insert(out.len());
                }
                out.push(n.clone());
            }
        }
    }
    out
}

/// Patients and encounters are described, a part at a time, by many kinds of message
/// (a lab result carries a thin PID and PV1; an admission the full ones). In HL7 v2 an
/// element a message does not send means "no news", not "delete", so for these types
/// the stored elements the new version lacks are kept.
fn keeps_absent_elements(resource_type: &str) -> bool {
    matches!(resource_type, "Patient" | "Encounter")
}

/// `new`, plus every top-level element of `old` that `new` lacks, except where `new`
/// already has another type of the same choice element (`deceasedBoolean` vs
/// `deceasedDateTime`).
fn merge_absent(old: &Value, new: &Value) -> Value {
    let (Some(old), Some(new_map)) = (old.as_object(), new.as_object()) else {
        return new.clone();
    };
    let mut out = new_map.clone();
    for (k, v) in old {
        if is_kept(k, new_map) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// Whether the old element `k` stays beside the new version's elements: the new version
/// lacks it, and has no other type of the same choice element.
fn is_kept(k: &str, new: &serde_json::Map<String, Value>) -> bool {
    let choice = || CHOICE_ELEMENTS.iter().find(|c| k.starts_with(**c));
    !new.contains_key(k) && !choice().is_some_and(|c| new.keys().any(|nk| nk.starts_with(*c)))
}

/// [`merge_absent`] taking the old version by value: its kept elements move instead of
/// being copied.
fn merge_absent_owned(old: Value, new: &Value) -> Value {
    let (Value::Object(old), Some(new_map)) = (old, new.as_object()) else {
        return new.clone();
    };
    let mut out = new_map.clone();
    for (k, v) in old {
        if is_kept(&k, new_map) {
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

/// Choice (`[x]`) elements of Patient and Encounter in R4.
const CHOICE_ELEMENTS: &[&str] = &["deceased", "multipleBirth"];

#[cfg(test)]
mod source_tests {
    use super::differs_only_in_source as only_source;

    #[test]
    fn only_the_source_text_may_differ() {
        let a = br#"{"resourceType":"Patient","id":"p","meta":{"source":"mllp:his/1"},"gender":"male"}"#;
        let b = br#"{"resourceType":"Patient","id":"p","meta":{"source":"mllp:his/\"22\""},"gender":"male"}"#;
        let c = br#"{"resourceType":"Patient","id":"p","meta":{"source":"mllp:his/2"},"gender":"female"}"#;
        let d = br#"{"resourceType":"Patient","id":"p","gender":"male"}"#;
        assert!(only_source(a, b) && only_source(b, a));
        assert!(!only_source(a, c), "a change after the source");
        assert!(
            !only_source(a, d) && !only_source(d, d),
            "no source to compare around"
        );
        // A value that merely contains the words is not the source.
        let e = br#"{"id":"p","note":"\"meta\":{\"source\":\"x","meta":{"source":"1"}}"#;
        let f = br#"{"id":"p","note":"\"meta\":{\"source\":\"y","meta":{"source":"1"}}"#;
        assert!(!only_source(e, f));
    }
}

#[cfg(test)]
mod imaging_tests {
    use serde_json::json;

    use super::*;

    fn open(dir: &std::path::Path) -> Store {
        let db = Store::sled_config(dir).open().expect("open sled");
        Store::open(db, dir).expect("open store")
    }

    fn study(series: &str, instance: &str, accession: Option<&str>) -> Value {
        let mut s = json!({
            "resourceType": "ImagingStudy",
            "id": "st1",
            "status": "available",
            "subject": { "reference": "Patient/p1" },
            "identifier": [{ "system": "urn:dicom:uid", "value": "urn:oid:1.2.3" }],
            "numberOfSeries": 1,
            "numberOfInstances": 1,
            "series": [{
                "uid": series,
                "numberOfInstances": 1,
                "instance": [{ "uid": instance, "number": 1 }]
            }]
        });
        if let Some(a) = accession {
            s["identifier"].as_array_mut().unwrap().push(json!({
                "type": { "coding": [{ "code": "ACSN" }] },
                "value": a
            }));
        }
        s
    }

    fn order(id: &str, code: &str, accession: &str) -> Value {
        json!({
            "resourceType": "ServiceRequest",
            "id": id,
            "status": "active",
            "intent": "order",
            "subject": { "reference": "Patient/p1" },
            "identifier": [{ "type": { "coding": [{ "code": code }] }, "value": accession }]
        })
    }

    #[test]
    fn records_are_stored_exactly_as_the_same_values() {
        let patient = |family: &str, source: &str, gender: Option<&str>| {
            let mut p = json!({
                "resourceType": "Patient", "id": "p1",
                "meta": { "source": source },
                "identifier": [{ "system": "urn:cccd", "value": "079" }],
                "name": [{ "family": family, "given": ["Thị", "Lan"] }]
            });
            if let Some(g) = gender {
                p["gender"] = json!(g);
            }
            p
        };
        let obs = |id: &str, source: &str| {
            json!({
                "resourceType": "Observation", "id": id, "status": "final",
                "meta": { "source": source },
                "code": { "coding": [{ "system": "http://loinc.org", "code": "2345-7" }] },
                "effectiveDateTime": "2026-11-20T08:00:00+07:00",
                "valueQuantity": { "value": 5.10, "unit": "mmol/L" },
                "subject": { "reference": "Patient/p1" }
            })
        };
        let batches = [
            vec![patient("Phạm", "a", Some("female")), obs("o1", "a")],
            // The same patient from a later message; a new result.
            vec![patient("Phạm", "b", Some("female")), obs("o2", "b")],
            // Changed (the gender kept by the merge), an order, then its study.
            vec![patient("Võ", "c", None), order("sr1", "ACSN", "ACC-1")],
            vec![
                study("1.1", "1.1.1", Some("ACC-1")),
                study("1.1", "1.1.2", Some("ACC-1")),
            ],
        ];
        let (by_value, by_record) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (by_value, by_record) = (open(by_value.path()), open(by_record.path()));
        for batch in &batches {
            let a = by_value.upsert_batch(batch).unwrap();
            let records: Vec<Record> = batch
                .iter()
                .map(|v| Record::from_value(v).unwrap())
                .collect();
            let bytes: Vec<Vec<u8>> = records.iter().map(Record::to_json_vec).collect();
            let index: Vec<_> = records
                .iter()
                .map(|r| super::super::index_entries_of_record(r).unwrap())
                .collect();
            let given = records
                .iter()
                .zip(&bytes)
                .zip(&index)
                .map(|((r, b), i)| (r, Some(&b[..]), Some(i)));
            let b = by_record.upsert_batch_encoded(given).unwrap();
            assert_eq!(a, b);
        }
        let dump = |s: &Store| -> Vec<(sled::IVec, sled::IVec)> {
            s.inner.tree.iter().map(Result::unwrap).collect()
        };
        let (a, b) = (dump(&by_value), dump(&by_record));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (String::from_utf8_lossy(&x.0), String::from_utf8_lossy(&x.1)),
                (String::from_utf8_lossy(&y.0), String::from_utf8_lossy(&y.1))
            );
        }
        let p = by_record.get("Patient", "p1").unwrap().unwrap();
        assert_eq!(
            (p["gender"].clone(), p["name"][0]["family"].clone()),
            (json!("female"), json!("Võ"))
        );
        let st = by_record.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(st["basedOn"][0]["reference"], "ServiceRequest/sr1");
        assert_eq!(st["numberOfInstances"], 2);
    }

    #[test]
    fn an_invalid_record_is_named_by_its_place_in_the_batch_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let bad = json!({ "resourceType": "Patient" });
        let batch = [
            study("1.2", "1.2.1", None),
            bad,
            study("1.2", "1.2.2", None),
        ];
        let err = store.upsert_batch(&batch).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidResource { position: 1, .. }),
            "{err:?}"
        );
        assert_eq!(store.count("ImagingStudy").unwrap(), 0);
    }

    #[test]
    fn bytes_given_are_used_only_for_records_not_folded() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = study("1.1", "1.1.1", None);
        let b = study("1.2", "1.2.1", None);
        let p = json!({ "resourceType": "Patient", "id": "p1", "gender": "female" });
        let bytes = |v: &Value| serde_json::to_vec(v).unwrap();
        let (ab, bb, pb) = (bytes(&a), bytes(&b), bytes(&p));
        let given = [
            (&a, Some(&ab[..]), None),
            (&b, Some(&bb[..]), None),
            (&p, Some(&pb[..]), None),
        ];
        let stats = store.upsert_batch_encoded(given).unwrap();
        assert_eq!(stats.written, 2);
        // The two instances fold into one study: stored as merged, not as either's bytes.
        let s = store.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(
            (s["numberOfSeries"].clone(), s["numberOfInstances"].clone()),
            (json!(2), json!(2))
        );
        assert_eq!(store.get("Patient", "p1").unwrap(), Some(p));
    }

    #[test]
    fn instances_of_one_study_merge_by_uid_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.upsert_batch(&[study("1.1", "1.1.1", None)]).unwrap();
        store
            .upsert_batch(&[study("1.1", "1.1.2", None), study("1.2", "1.2.1", None)])
            .unwrap();
        // The same instance again changes nothing.
        let again = store.upsert_batch(&[study("1.1", "1.1.1", None)]).unwrap();
        assert_eq!(again.written, 0);
        let s = store.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(s["numberOfSeries"], 2);
        assert_eq!(s["numberOfInstances"], 3);
        assert_eq!(s["series"][0]["uid"], "1.1");
        assert_eq!(s["series"][0]["numberOfInstances"], 2);
        let uids: Vec<&str> = s["series"][0]["instance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["uid"].as_str().unwrap())
            .collect();
        assert_eq!(uids, ["1.1.1", "1.1.2"]);
        assert_eq!(s["series"][1]["numberOfInstances"], 1);
    }

    #[test]
    fn a_batch_of_instances_gives_the_study_one_at_a_time_would() {
        let patient = json!({ "resourceType": "Patient", "id": "p1", "gender": "female" });
        let mut later = study("1.1", "1.1.3", None);
        later["description"] = json!("CT ngực");
        let arrivals = [
            study("1.2", "1.2.1", None),
            patient.clone(),
            study("1.1", "1.1.2", None),
            later,
            study("1.2", "1.2.1", None),
        ];
        let one_by_one = tempfile::tempdir().unwrap();
        let one_by_one = open(one_by_one.path());
        let batched = tempfile::tempdir().unwrap();
        let batched = open(batched.path());
        for store in [&one_by_one, &batched] {
            store.upsert_batch(&[study("1.1", "1.1.1", None)]).unwrap();
        }
        for r in &arrivals {
            one_by_one.upsert_batch([r]).unwrap();
        }
        let stats = batched.upsert_batch(&arrivals).unwrap();
        // The patient and the study, each written once.
        assert_eq!(stats.written, 2);
        let a = one_by_one.get("ImagingStudy", "st1").unwrap().unwrap();
        let b = batched.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(b["numberOfInstances"], 4);
        assert_eq!(b["description"], "CT ngực");
        assert_eq!(batched.get("Patient", "p1").unwrap(), Some(patient));
    }

    #[test]
    fn study_after_its_order_is_based_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .upsert_batch(&[
                order("sr1", "ACSN", "ACC-9"),
                order("sr2", "ACSN", "ACC-10"),
            ])
            .unwrap();
        store
            .upsert_batch(&[study("1.1", "1.1.1", Some("ACC-9"))])
            .unwrap();
        let s = store.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(s["basedOn"], json!([{ "reference": "ServiceRequest/sr1" }]));
    }

    #[test]
    fn order_after_its_study_links_the_study() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .upsert_batch(&[study("1.1", "1.1.1", Some("ACC-7"))])
            .unwrap();
        assert!(store.get("ImagingStudy", "st1").unwrap().unwrap()["basedOn"].is_null());
        // A filler order number stands in for the accession number.
        store
            .upsert_batch(&[order("sr7", "FILL", "ACC-7")])
            .unwrap();
        let s = store.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(s["basedOn"], json!([{ "reference": "ServiceRequest/sr7" }]));
        // Later instances keep the link.
        store
            .upsert_batch(&[study("1.1", "1.1.2", Some("ACC-7"))])
            .unwrap();
        let s = store.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(s["basedOn"], json!([{ "reference": "ServiceRequest/sr7" }]));
        assert_eq!(s["numberOfInstances"], 2);
    }

    /// Accession numbers are only unique in the facility that gives them out: another
    /// patient's order with the same number is never the study's, whichever comes first.
    #[test]
    fn a_study_is_never_based_on_another_patients_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut theirs = order("sr8", "ACSN", "ACC-8");
        theirs["subject"]["reference"] = json!("Patient/p2");
        store.upsert_batch(&[theirs]).unwrap();
        store
            .upsert_batch(&[study("1.1", "1.1.1", Some("ACC-8"))])
            .unwrap();
        assert!(store.get("ImagingStudy", "st1").unwrap().unwrap()["basedOn"].is_null());
        // The study's own order, after it, is.
        store
            .upsert_batch(&[order("sr9", "ACSN", "ACC-8")])
            .unwrap();
        let s = store.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(s["basedOn"], json!([{ "reference": "ServiceRequest/sr9" }]));

        // The other way round: a study waiting for its order, another patient's comes.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .upsert_batch(&[study("1.1", "1.1.1", Some("ACC-8"))])
            .unwrap();
        let mut theirs = order("sr8", "ACSN", "ACC-8");
        theirs["subject"]["reference"] = json!("Patient/p2");
        store.upsert_batch(&[theirs]).unwrap();
        assert!(store.get("ImagingStudy", "st1").unwrap().unwrap()["basedOn"].is_null());
    }

    /// The same patient under two records (a modality that names the hospital otherwise
    /// than the HIS): one patient number in both is one patient. A study of nobody is
    /// based on no order; a study moved to another patient leaves the first one's order;
    /// an order whose accession number changed is no longer found by the old one.
    #[test]
    fn accession_links_follow_the_patient_number_and_the_current_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let patient = |id: &str, numbers: &[&str]| {
            let ids: Vec<Value> = numbers.iter().map(|n| json!({ "value": n })).collect();
            json!({ "resourceType": "Patient", "id": id, "identifier": ids })
        };
        let of = |mut r: Value, p: &str| {
            r["subject"]["reference"] = json!(format!("Patient/{p}"));
            r
        };
        // One batch: the patients, another patient's order first, then the study.
        store
            .upsert_batch(&[
                patient("his", &["BN1", "0791"]),
                patient("ct", &["BN1"]),
                patient("other", &["BN2"]),
                of(order("sr2", "ACSN", "ACC-1"), "other"),
                of(order("sr1", "ACSN", "ACC-1"), "his"),
                of(study("1.1", "1.1.1", Some("ACC-1")), "ct"),
            ])
            .unwrap();
        let based =
            |store: &Store| store.get("ImagingStudy", "st1").unwrap().unwrap()["basedOn"].clone();
        assert_eq!(
            based(&store),
            json!([{ "reference": "ServiceRequest/sr1" }])
        );
        // Sent again for the other patient: their order, not the first one's.
        store
            .upsert_batch(&[of(study("1.1", "1.1.2", Some("ACC-1")), "other")])
            .unwrap();
        assert_eq!(
            based(&store),
            json!([{ "reference": "ServiceRequest/sr2" }])
        );

        // A study without a patient is based on no order.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut nobody = study("1.1", "1.1.1", Some("ACC-1"));
        nobody.as_object_mut().unwrap().remove("subject");
        store
            .upsert_batch(&[order("sr1", "ACSN", "ACC-1"), nobody])
            .unwrap();
        assert!(based(&store).is_null());

        // An order renumbered from ACC-5 to ACC-6 is not ACC-5's order any more.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .upsert_batch(&[order("sr5", "ACSN", "ACC-5")])
            .unwrap();
        store
            .upsert_batch(&[order("sr5", "ACSN", "ACC-6")])
            .unwrap();
        store
            .upsert_batch(&[study("1.1", "1.1.1", Some("ACC-5"))])
            .unwrap();
        assert!(based(&store).is_null());
    }

    #[test]
    fn same_batch_order_and_study_link() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .upsert_batch(&[
                order("sr3", "ACSN", "ACC-3"),
                study("1.1", "1.1.1", Some("ACC-3")),
            ])
            .unwrap();
        let s = store.get("ImagingStudy", "st1").unwrap().unwrap();
        assert_eq!(s["basedOn"], json!([{ "reference": "ServiceRequest/sr3" }]));
    }
}
