//! Writing records: validate the batch, diff each record's index entries against its
//! previous version, apply everything as one sled batch.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::error::StoreError;
use super::index::{count_key, doc_key, index_entries, validate};
use super::{decode_count, lock, Store};

/// What one `upsert_batch` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertStats {
    /// Records inserted or replaced.
    pub written: usize,
    /// Records whose stored JSON was already byte-identical (nothing written).
    pub unchanged: usize,
}

impl Store {
    /// Inserts or replaces every resource and updates all indexes, atomically for the
    /// whole batch. Idempotent: a resource whose serialised JSON equals the stored
    /// bytes is counted as unchanged and costs one read. The same `(type, id)` may
    /// appear several times in a batch; the last one wins.
    ///
    /// Every resource needs string `resourceType` and `id` (a FHIR id,
    /// `[A-Za-z0-9\-.]{1,64}`); otherwise nothing is written and
    /// [`StoreError::InvalidResource`] names the position and the problem.
    pub fn upsert_batch(&self, resources: &[Value]) -> Result<UpsertStats, StoreError> {
        let mut prepared = Vec::with_capacity(resources.len());
        for (position, r) in resources.iter().enumerate() {
            let (rt, id) =
                validate(r).map_err(|problem| StoreError::InvalidResource { position, problem })?;
            // Serialising a `Value` cannot fail: its map keys are strings.
            let bytes = serde_json::to_vec(r).expect("a serde_json::Value always serialises");
            prepared.push((rt, id, r, bytes));
        }

        let tree = &self.inner.tree;
        let _writer = lock(&self.inner.write_lock);
        let mut stats = UpsertStats::default();
        let mut batch = sled::Batch::default();
        // Records written earlier in this batch: their "previous version" for later
        // occurrences of the same key is the batch's, not the tree's.
        let mut pending: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut new_per_type: BTreeMap<&str, u64> = BTreeMap::new();

        for (rt, id, value, bytes) in prepared {
            let key = doc_key(rt, id);
            let previous: Option<Vec<u8>> = match pending.get(&key) {
                Some(p) => Some(p.clone()),
                None => tree.get(&key)?.map(|v| v.to_vec()),
            };
            if previous.as_deref() == Some(bytes.as_slice()) {
                stats.unchanged += 1;
                continue;
            }
            // A previous version that no longer parses cannot tell which entries it
            // had; it is overwritten anyway (readers tolerate stale entries: search
            // skips ids without a record).
            let old: Option<Value> = previous
                .as_deref()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok());
            let merged = old
                .as_ref()
                .filter(|_| keeps_absent_elements(rt))
                .map(|o| merge_absent(o, value));
            let (value, bytes) = match merged {
                Some(m) => {
                    let b = serde_json::to_vec(&m).expect("a serde_json::Value always serialises");
                    if previous.as_deref() == Some(b.as_slice()) {
                        stats.unchanged += 1;
                        continue;
                    }
                    (std::borrow::Cow::Owned(m), b)
                }
                None => (std::borrow::Cow::Borrowed(value), bytes),
            };
            let old_entries = old
                .map(|old| index_entries(rt, id, &old))
                .unwrap_or_default();
            let new_entries = index_entries(rt, id, &value);
            for k in old_entries.keys() {
                if !new_entries.contains_key(k) {
                    batch.remove(k.as_slice());
                }
            }
            for (k, v) in new_entries {
                if old_entries.get(&k) != Some(&v) {
                    batch.insert(k, v);
                }
            }
            if previous.is_none() {
                *new_per_type.entry(rt).or_default() += 1;
            }
            batch.insert(key.as_slice(), bytes.as_slice());
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
        Ok(stats)
    }
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
        if out.contains_key(k) {
            continue;
        }
        let choice = CHOICE_ELEMENTS.iter().find(|c| k.starts_with(**c));
        if choice.is_some_and(|c| new_map.keys().any(|nk| nk.starts_with(*c))) {
            continue;
        }
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

/// Choice (`[x]`) elements of Patient and Encounter in R4.
const CHOICE_ELEMENTS: &[&str] = &["deceased", "multipleBirth"];
