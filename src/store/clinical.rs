//! Searches of a patient's clinical records (Encounter, Observation, DiagnosticReport,
//! ServiceRequest, ImagingStudy, DocumentReference), patient merges (`Patient.link`),
//! and `$everything` in date order.
//!
//! Records are found through the reference index `r/<patient id>\0<Type>/<id>`, so a
//! search costs the number of records of the patient (and of the patients merged into
//! it), not the size of the store. A search without a patient finds its candidates in
//! the code and date keys (`k/`, `t/`, `s/`, `e/`, see [`super::index`]): every code
//! asked for is one key range; dates are bounded as described at [`date_candidates`].
//! The candidates are a superset of the answer; each is read and checked with the same
//! test as before, so the results are those of a scan of every record of the type
//! (which still happens when there is neither a code nor a bounding date).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::record::JsonView;

use super::dates::{instant_range, neighbour_day, DateCmp, DateFilter};
use super::error::StoreError;
use super::index::{
    doc_key, id_at_end, indexable, link_prefix, ref_prefix, typed_from, typed_prefix, CODE, DOC,
    POINT, SPAN_END, SPAN_START,
};
use super::Store;

/// Resource types searchable by patient, date and code.
pub const CLINICAL_TYPES: [&str; 6] = [
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "ServiceRequest",
    "ImagingStudy",
    "DocumentReference",
];

/// Merges are followed at most this deep (a chain of merged-into-merged patients).
const MAX_MERGE_DEPTH: usize = 16;
/// A patient gathers at most this many merged patients.
const MAX_MERGED: usize = 256;

/// Order of a clinical search's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DateOrder {
    /// Oldest first (records without a date last).
    #[default]
    Ascending,
    /// Newest first (`_sort=-date`; records without a date last).
    Descending,
}

/// A token criterion on a code: `system|code`, `|code` (no system) or `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenQuery {
    /// `None`: any system; `Some("")`: no system.
    pub system: Option<String>,
    pub code: String,
}

impl TokenQuery {
    pub fn parse(q: &str) -> TokenQuery {
        match q.split_once('|') {
            Some((s, c)) => TokenQuery {
                system: Some(s.to_string()),
                code: c.to_string(),
            },
            None => TokenQuery {
                system: None,
                code: q.to_string(),
            },
        }
    }

    fn matches_coding(&self, coding: &Value) -> bool {
        let code = coding.get("code").and_then(Value::as_str);
        let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
        code == Some(self.code.as_str()) && self.system.as_deref().is_none_or(|s| s == system)
    }
}

/// A search of one clinical type. Criteria are ANDed; a list means "any of".
#[derive(Debug, Clone, Default)]
pub struct ClinicalQuery {
    pub resource_type: String,
    /// The patient (and every patient merged into it); `None`: every record of the type.
    pub patient: Option<String>,
    /// Every filter must hold for the record's date (`date=ge2024-01&date=lt2024-02`).
    pub dates: Vec<DateFilter>,
    /// Any of these codes.
    pub codes: Vec<TokenQuery>,
    pub order: DateOrder,
}

/// One page of a search plus the number of matches.
#[derive(Debug, Clone)]
pub struct Page {
    pub resources: Vec<Value>,
    /// Every match, not only this page's.
    pub total: usize,
}

impl Store {
    /// `patient_id` and every patient merged into it: patients whose `link` says
    /// `replaced-by` it, or that it `replaces`, followed transitively. The patient itself
    /// comes first; the list is bounded.
    pub fn merged_family(&self, patient_id: &str) -> Result<Vec<String>, StoreError> {
        let mut out = vec![patient_id.to_string()];
        let mut seen: BTreeSet<String> = out.iter().cloned().collect();
        let mut frontier = out.clone();
        for _ in 0..MAX_MERGE_DEPTH {
            let mut next = Vec::new();
            for pid in &frontier {
                let prefix = link_prefix(pid);
                for entry in self.inner.tree.scan_prefix(&prefix) {
                    let (key, _) = entry?;
                    let merged = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    if out.len() < MAX_MERGED && seen.insert(merged.clone()) {
                        out.push(merged.clone());
                        next.push(merged);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        Ok(out)
    }

    /// The `Type/id` keys of every record referencing any patient of `family`.
    fn referencing(&self, family: &[String]) -> Result<BTreeSet<String>, StoreError> {
        let mut keys = BTreeSet::new();
        for pid in family {
            let prefix = ref_prefix(pid);
            for entry in self.inner.tree.scan_prefix(&prefix) {
                let (key, _) = entry?;
                keys.insert(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
            }
        }
        Ok(keys)
    }

    /// Records of one clinical type matching `q`, sorted by date, `count` from `offset`.
    pub fn search_clinical(
        &self,
        q: &ClinicalQuery,
        offset: usize,
        count: usize,
    ) -> Result<Page, StoreError> {
        self.search_clinical_with(q, offset, count, true)
    }

    /// [`Store::search_clinical`] reading every record of the type instead of the code
    /// and date keys (the reference the indexed search must agree with).
    #[cfg(test)]
    pub(crate) fn search_clinical_by_scan(
        &self,
        q: &ClinicalQuery,
        offset: usize,
        count: usize,
    ) -> Result<Page, StoreError> {
        self.search_clinical_with(q, offset, count, false)
    }

    fn search_clinical_with(
        &self,
        q: &ClinicalQuery,
        offset: usize,
        count: usize,
        use_keys: bool,
    ) -> Result<Page, StoreError> {
        let mut found: Vec<Value> = Vec::new();
        let accept = |r: &Value, family: Option<&[String]>| -> bool {
            if let Some(family) = family {
                if !subject_in(r, family) {
                    return false;
                }
            }
            if !q.dates.is_empty() {
                let Some(range) = record_date_range(r) else {
                    return false;
                };
                if !q.dates.iter().all(|f| f.matches(&range.0, &range.1)) {
                    return false;
                }
            }
            if !q.codes.is_empty() {
                let codings = record_codings(r);
                if !q
                    .codes
                    .iter()
                    .any(|t| codings.iter().any(|c| t.matches_coding(c)))
                {
                    return false;
                }
            }
            true
        };
        match &q.patient {
            Some(pid) => {
                let family = self.merged_family(pid)?;
                let wanted = format!("{}/", q.resource_type);
                for key in self.referencing(&family)? {
                    if !key.starts_with(&wanted) {
                        continue;
                    }
                    let mut doc = DOC.to_vec();
                    doc.extend_from_slice(key.as_bytes());
                    if let Some(r) = self.get_key(&doc)? {
                        if accept(&r, Some(&family)) {
                            found.push(r);
                        }
                    }
                }
            }
            None => match if use_keys { self.candidates(q)? } else { None } {
                Some(ids) => {
                    for id in ids {
                        if let Some(r) = self.get_key(&doc_key(&q.resource_type, &id))? {
                            if accept(&r, None) {
                                found.push(r);
                            }
                        }
                    }
                }
                None => {
                    let prefix = doc_key(&q.resource_type, "");
                    for entry in self.inner.tree.scan_prefix(&prefix) {
                        let (key, bytes) = entry?;
                        let r = super::parse_record(&key, &bytes)?;
                        if accept(&r, None) {
                            found.push(r);
                        }
                    }
                }
            },
        }
        sort_by_date(&mut found, q.order);
        Ok(paginate(found, offset, count))
    }

    /// Ids of the records of the type that may match `q` (without a patient), from the
    /// code and date keys; `None` when no criterion narrows the search.
    fn candidates(&self, q: &ClinicalQuery) -> Result<Option<BTreeSet<String>>, StoreError> {
        let rt = q.resource_type.as_str();
        let mut out: Option<BTreeSet<String>> = None;
        // A code or system that cannot be in a key is found by reading the records.
        let keyed =
            |t: &TokenQuery| indexable(&t.code) && t.system.as_deref().is_none_or(indexable);
        if !q.codes.is_empty() && q.codes.iter().all(keyed) {
            let mut ids = BTreeSet::new();
            for t in &q.codes {
                let mut prefix = typed_prefix(CODE, rt, t.code.as_bytes());
                if let Some(system) = &t.system {
                    prefix.extend_from_slice(system.as_bytes());
                    prefix.push(0);
                }
                self.ids_in(self.inner.tree.scan_prefix(&prefix), &mut ids)?;
            }
            out = Some(ids);
        }
        if let Some(dated) = self.date_candidates(rt, &q.dates)? {
            out = Some(match out {
                Some(coded) => coded.intersection(&dated).cloned().collect(),
                None => dated,
            });
        }
        Ok(out)
    }

    /// Ids of the records of type `rt` whose date may satisfy every filter; `None` when
    /// the filters bound nothing (none, or only `ne`).
    ///
    /// A point date `d` (start = end) satisfies `eq X` only within `[X, X~]` (`X~`: every
    /// text starting with X), `le X` only at or below `X~`, `lt X` only below `X`, and
    /// `ge X`/`gt X` only at or above `X` or when `d` is a beginning of `X` (`2024` reaches
    /// past `2024-05`): one range of `t/` keys, plus an exact look-up per beginning.
    /// A span satisfies `ge X`/`gt X` only when it ends at or after `X`, is open, or its
    /// end is a beginning of `X`: a range of `e/` keys (open ends sort last). Without
    /// `ge`/`gt`, its start must be at or above every `eq X` and below every `le`/`lt`
    /// bound: a range of `s/` keys.
    fn date_candidates(
        &self,
        rt: &str,
        dates: &[DateFilter],
    ) -> Result<Option<BTreeSet<String>>, StoreError> {
        const AFTER: &str = "\u{7f}";
        if dates.iter().all(|f| f.cmp == DateCmp::Ne) {
            return Ok(None);
        }
        let max = |a: Option<String>, b: String| Some(a.map_or(b.clone(), |a| a.max(b)));
        let min = |a: Option<String>, b: String| Some(a.map_or(b.clone(), |a| a.min(b)));
        // Bounds on a point's date, and on a span's start.
        let (mut lower, mut upper): (Option<String>, Option<String>) = (None, None);
        let (mut span_lower, mut span_upper): (Option<String>, Option<String>) = (None, None);
        // The largest `ge`/`gt` value: a span must reach it.
        let mut reach: Option<String> = None;
        for f in dates {
            // `v`: the lowest text a match can start with; `v_hi`, `v_below`: the bounds
            // for `le`/`eq` and for `lt`. A time with a zone is compared as an instant
            // (see `dates`), and a record written in another zone may carry the day
            // before or after: such a value widens the key ranges by a day each way.
            let (v, v_hi, v_below) = match (instant_range(&f.value), f.value.get(..10)) {
                (Some(_), Some(day)) => {
                    let after = neighbour_day(day, 1).unwrap_or_else(|| day.to_string());
                    let after = format!("{after}{AFTER}");
                    (
                        neighbour_day(day, -1).unwrap_or_default(),
                        after.clone(),
                        after,
                    )
                }
                _ => (
                    f.value.clone(),
                    format!("{}{AFTER}", f.value),
                    f.value.clone(),
                ),
            };
            match f.cmp {
                DateCmp::Eq => {
                    lower = max(lower, v.clone());
                    upper = min(upper, v_hi);
                    span_lower = max(span_lower, v);
                }
                DateCmp::Le => {
                    upper = min(upper, v_hi.clone());
                    span_upper = min(span_upper, v_hi);
                }
                DateCmp::Lt => {
                    upper = min(upper, v_below.clone());
                    span_upper = min(span_upper, v_below);
                }
                DateCmp::Ge | DateCmp::Gt => {
                    lower = max(lower, v.clone());
                    reach = max(reach, v);
                }
                DateCmp::Ne => {}
            }
        }
        let mut ids = BTreeSet::new();
        let tree = &self.inner.tree;
        // Points.
        let from = typed_from(POINT, rt, lower.as_deref().unwrap_or("").as_bytes());
        let to = match &upper {
            Some(u) => typed_from(POINT, rt, format!("{u}\u{1}").as_bytes()),
            None => typed_from(POINT, rt, b"\xff"),
        };
        if from < to {
            self.ids_in(tree.range(from..to), &mut ids)?;
        }
        for f in dates {
            if matches!(f.cmp, DateCmp::Ge | DateCmp::Gt) {
                for n in 1..f.value.len() {
                    let prefix = typed_prefix(POINT, rt, &f.value.as_bytes()[..n]);
                    self.ids_in(tree.scan_prefix(&prefix), &mut ids)?;
                }
            }
        }
        // Spans.
        match &reach {
            Some(x) => {
                let from = typed_from(SPAN_END, rt, x.as_bytes());
                let to = typed_from(SPAN_END, rt, b"\xff");
                self.ids_in(tree.range(from..to), &mut ids)?;
                for n in 1..x.len() {
                    let prefix = typed_prefix(SPAN_END, rt, &x.as_bytes()[..n]);
                    self.ids_in(tree.scan_prefix(&prefix), &mut ids)?;
                }
            }
            None => {
                let from = typed_from(
                    SPAN_START,
                    rt,
                    span_lower.as_deref().unwrap_or("").as_bytes(),
                );
                let to = match &span_upper {
                    Some(u) => typed_from(SPAN_START, rt, format!("{u}\u{1}").as_bytes()),
                    None => typed_from(SPAN_START, rt, b"\xff"),
                };
                if from < to {
                    self.ids_in(tree.range(from..to), &mut ids)?;
                }
            }
        }
        Ok(Some(ids))
    }

    /// Adds the record ids at the end of the keys of `iter`.
    fn ids_in(
        &self,
        iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        ids: &mut BTreeSet<String>,
    ) -> Result<(), StoreError> {
        for entry in iter {
            let (key, _) = entry?;
            ids.insert(String::from_utf8_lossy(id_at_end(&key)).into_owned());
        }
        Ok(())
    }

    /// The patient, the patients merged into it, and every record referencing any of
    /// them, in date order (the patients first), `count` from `offset`. `None` when the
    /// patient does not exist.
    pub fn everything_page(
        &self,
        patient_id: &str,
        offset: usize,
        count: usize,
    ) -> Result<Option<Page>, StoreError> {
        let Some(patient) = self.get("Patient", patient_id)? else {
            return Ok(None);
        };
        let family = self.merged_family(patient_id)?;
        let mut patients = vec![patient];
        for pid in family.iter().skip(1) {
            if let Some(p) = self.get("Patient", pid)? {
                patients.push(p);
            }
        }
        let mut records = Vec::new();
        for key in self.referencing(&family)? {
            if key.starts_with("Patient/") {
                continue; // merged patients are already listed
            }
            let mut doc = DOC.to_vec();
            doc.extend_from_slice(key.as_bytes());
            if let Some(r) = self.get_key(&doc)? {
                records.push(r);
            }
        }
        sort_by_date(&mut records, DateOrder::Ascending);
        patients.extend(records);
        Ok(Some(paginate(patients, offset, count)))
    }
}

fn paginate(all: Vec<Value>, offset: usize, count: usize) -> Page {
    let total = all.len();
    let resources = all.into_iter().skip(offset).take(count).collect();
    Page { resources, total }
}

/// Sorts by the start of the record's date, then type and id (stable across calls);
/// records without a date come last in either order.
fn sort_by_date(records: &mut [Value], order: DateOrder) {
    let key = |r: &Value| {
        let date = record_date_range(r).map(|(lo, _)| lo);
        let rt = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
        let id = r.get("id").and_then(Value::as_str).unwrap_or("");
        (date, format!("{rt}/{id}"))
    };
    records.sort_by(|a, b| {
        let (da, ia) = key(a);
        let (db, ib) = key(b);
        let by_date = match (da, db) {
            (Some(x), Some(y)) => match order {
                DateOrder::Ascending => x.cmp(&y),
                DateOrder::Descending => y.cmp(&x),
            },
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_date.then(ia.cmp(&ib))
    });
}

/// Whether the record's `subject` (or `patient`) references one of `family`.
fn subject_in(r: &Value, family: &[String]) -> bool {
    ["subject", "patient"].iter().any(|field| {
        r.get(*field)
            .and_then(|s| s.get("reference"))
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("Patient/"))
            .is_some_and(|id| family.iter().any(|f| f == id))
    })
}

/// The clinically relevant time of a record as `(start, end)` strings (FHIR date or
/// dateTime text; `end` empty when open). Per type: Encounter `period`, Observation and
/// DiagnosticReport `effective[x]` (else `issued`), ServiceRequest `occurrence[x]` (else
/// `authoredOn`), ImagingStudy `started`, DocumentReference `date`.
pub fn record_date_range<'d>(r: impl JsonView<'d>) -> Option<(String, String)> {
    let s = |v: Option<_>| v.and_then(JsonView::as_str).map(str::to_string);
    let period = |p: Option<_>| -> Option<(String, String)> {
        let p = p?;
        let start = s(JsonView::get(p, "start"));
        let end = s(JsonView::get(p, "end"));
        match (start, end) {
            (Some(a), Some(b)) => Some((a, b)),
            (Some(a), None) => Some((a, String::new())),
            (None, Some(b)) => Some((b.clone(), b)),
            (None, None) => None,
        }
    };
    let point = |v: Option<String>| v.map(|d| (d.clone(), d));
    let rt = r
        .get("resourceType")
        .and_then(JsonView::as_str)
        .unwrap_or("");
    match rt {
        "Encounter" => period(r.get("period")),
        "Observation" | "DiagnosticReport" => point(s(r.get("effectiveDateTime")))
            .or_else(|| point(s(r.get("effectiveInstant"))))
            .or_else(|| period(r.get("effectivePeriod")))
            .or_else(|| point(s(r.get("issued")))),
        "ServiceRequest" => point(s(r.get("occurrenceDateTime")))
            .or_else(|| period(r.get("occurrencePeriod")))
            .or_else(|| point(s(r.get("authoredOn")))),
        "ImagingStudy" => point(s(r.get("started"))),
        "DocumentReference" => point(s(r.get("date"))),
        _ => point(s(r.get("date"))).or_else(|| period(r.get("period"))),
    }
}

/// The codings a `code` search looks at: `code` (Observation, DiagnosticReport,
/// ServiceRequest), `type` (Encounter, DocumentReference), `procedureCode` and
/// `series.modality` (ImagingStudy).
pub(crate) fn record_codings<'d, J: JsonView<'d>>(r: J) -> Vec<J> {
    let mut out = Vec::new();
    let concept = |c: J, out: &mut Vec<J>| {
        if let Some(list) = c.get("coding") {
            out.extend(list.items());
        }
    };
    for field in ["code", "type", "procedureCode"] {
        match r.get(field) {
            Some(c) if c.is_object() => concept(c, &mut out),
            Some(list) => list.items().for_each(|c| concept(c, &mut out)),
            None => {}
        }
    }
    if let Some(series) = r.get("series") {
        for s in series.items() {
            if let Some(m) = s.get("modality") {
                out.push(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_forms() {
        let t = TokenQuery::parse("http://loinc.org|718-7");
        assert!(t.matches_coding(&json!({"system": "http://loinc.org", "code": "718-7"})));
        assert!(!t.matches_coding(&json!({"system": "other", "code": "718-7"})));
        let t = TokenQuery::parse("718-7");
        assert!(t.matches_coding(&json!({"system": "other", "code": "718-7"})));
        let t = TokenQuery::parse("|718-7");
        assert!(t.matches_coding(&json!({"code": "718-7"})));
        assert!(!t.matches_coding(&json!({"system": "s", "code": "718-7"})));
    }

    #[test]
    fn dates_per_type() {
        let e =
            json!({"resourceType": "Encounter", "period": {"start": "2024-01-02T08:00:00+07:00"}});
        assert_eq!(
            record_date_range(&e),
            Some(("2024-01-02T08:00:00+07:00".into(), String::new()))
        );
        let o = json!({"resourceType": "Observation", "issued": "2024-03-01"});
        assert_eq!(
            record_date_range(&o),
            Some(("2024-03-01".into(), "2024-03-01".into()))
        );
        let i = json!({"resourceType": "ImagingStudy"});
        assert_eq!(record_date_range(&i), None);
    }
}
