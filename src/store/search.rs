//! Patient search (name, identifier) and `$everything`.
//!
//! Name search scans index ranges whose keys end in the patient id: for one query
//! token, the `n/<t>\0` range of every indexed token `t` it is a prefix of; for
//! several, the `p/<a>\0<b>\0` ranges of the most selective pair of query tokens. The
//! ranges are merged in id order, each candidate is checked against the token list
//! stored in the index value, and the scan stops once `limit` patients matched. Only
//! those patients' records are read.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use serde_json::Value;

use super::dates::DateFilter;
use super::error::StoreError;
use super::index::{
    doc_key, ident_key_patient, ident_prefix, name_prefix_bytes, name_token_range, name_tokens,
    pair_first_end, pair_prefix, pair_range, pair_second_prefix, ref_prefix, split_name_key,
    token_at, DOC, MANY, PAIR,
};
use super::normalize::tokens;
use super::Store;

/// Default (and meaning of 0) for [`PatientQuery::limit`].
pub const DEFAULT_LIMIT: usize = 100;

/// Pair ranges are probed for at most this many of the longest query tokens.
const PAIR_PROBE_TOKENS: usize = 4;
/// A probe counts at most this many entries of a pair's ranges.
const PAIR_PROBE_CAP: usize = 256;
/// A pair whose prefixes extend to more distinct indexed pairs than this is not used
/// (its prefixes are short, so its answer is dense and a token scan finds it fast).
const MAX_PAIR_RANGES: usize = 64;

/// How `name` matches (FHIR string search modifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameMatch {
    /// Every query token starts some name token (case- and accent-insensitive).
    #[default]
    Prefix,
    /// `:contains`: every query token occurs inside some name token (case- and
    /// accent-insensitive).
    Contains,
    /// `:exact`: the query equals a whole name part (`family`, a `given`, `text`) or
    /// the name written "family given…" or "given… family", with case and diacritics.
    Exact,
}

/// A patient search. Empty or absent criteria do not restrict; given criteria are
/// ANDed. Results are ordered by patient id.
#[derive(Debug, Clone, Default)]
pub struct PatientQuery {
    /// FHIR string search on the names; see [`NameMatch`].
    pub name: Option<String>,
    pub name_match: NameMatch,
    /// `system|value`, `|value` (no system) or `value` (any system); exact match.
    pub identifier: Option<String>,
    /// Every filter must hold for `birthDate`.
    pub birthdate: Vec<DateFilter>,
    /// `male`, `female`, `other` or `unknown`.
    pub gender: Option<String>,
    /// Only patients whose id sorts after this one (the paging cursor).
    pub after: Option<String>,
    /// Maximum number of patients returned; 0 means [`DEFAULT_LIMIT`].
    pub limit: usize,
}

impl PatientQuery {
    /// The checks that need the record itself (everything but the index's tokens).
    fn record_matches(&self, p: &Value) -> bool {
        if let Some(g) = &self.gender {
            if p.get("gender").and_then(Value::as_str) != Some(g.as_str()) {
                return false;
            }
        }
        if !self.birthdate.is_empty() {
            let Some(d) = p.get("birthDate").and_then(Value::as_str) else {
                return false;
            };
            if !self.birthdate.iter().all(|f| f.matches(d, d)) {
                return false;
            }
        }
        if self.name_match == NameMatch::Exact {
            if let Some(q) = &self.name {
                if !exact_name_forms(p).iter().any(|f| f == q) {
                    return false;
                }
            }
        }
        true
    }
}

/// The strings `name:exact` compares with.
fn exact_name_forms(p: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for name in p
        .get("name")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let family = name.get("family").and_then(Value::as_str);
        let given: Vec<&str> = name
            .get("given")
            .and_then(Value::as_array)
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.extend(family.map(str::to_string));
        out.extend(given.iter().map(|g| g.to_string()));
        out.extend(name.get("text").and_then(Value::as_str).map(str::to_string));
        if let Some(f) = family {
            if !given.is_empty() {
                out.push(format!("{f} {}", given.join(" ")));
                out.push(format!("{} {f}", given.join(" ")));
            }
        }
    }
    out
}

/// A parsed identifier criterion.
#[derive(Debug, PartialEq, Eq)]
struct IdentQuery<'a> {
    /// `None`: any system; `Some("")`: no system.
    system: Option<&'a str>,
    value: &'a str,
}

fn parse_identifier(q: &str) -> IdentQuery<'_> {
    match q.split_once('|') {
        Some((system, value)) => IdentQuery {
            system: Some(system),
            value,
        },
        None => IdentQuery {
            system: None,
            value: q,
        },
    }
}

impl Store {
    /// Patients matching `q`, ordered by id, at most `q.limit` (0: 100).
    ///
    /// With a name, candidates come from the name index (cost follows the answer);
    /// with an identifier, from the identifier index; with neither, every patient after
    /// the cursor is checked.
    pub fn search_patients(&self, q: &PatientQuery) -> Result<Vec<Value>, StoreError> {
        let limit = if q.limit == 0 { DEFAULT_LIMIT } else { q.limit };
        let mut query_tokens = q.name.as_deref().map(tokens).unwrap_or_default();
        query_tokens.sort();
        query_tokens.dedup();
        let ident = q
            .identifier
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_identifier);
        let after = q.after.as_deref().map(str::as_bytes);

        if let Some(ident) = ident {
            return self.search_by_identifier(&ident, &query_tokens, q, limit);
        }
        if query_tokens.is_empty() {
            return self.scan_patients(q, limit);
        }
        let mut merged = match q.name_match {
            NameMatch::Contains => {
                let longest = query_tokens
                    .iter()
                    .max_by_key(|t| t.len())
                    .expect("at least one token");
                self.token_ranges_where(b"", after, |t| contains(t, longest.as_bytes()))?
            }
            NameMatch::Prefix | NameMatch::Exact => self.name_plan(&query_tokens, after)?,
        };
        let wanted: Vec<&[u8]> = query_tokens.iter().map(|t| t.as_bytes()).collect();
        let mut out = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        while out.len() < limit {
            let Some((id, list)) = merged.next()? else {
                break;
            };
            if last.as_ref() == Some(&id) {
                continue; // the same patient reached through two ranges
            }
            let have: Vec<&[u8]> = list.split(|&b| b == b' ').collect();
            let ok = match q.name_match {
                NameMatch::Contains => wanted.iter().all(|w| have.iter().any(|t| contains(t, w))),
                _ => wanted.iter().all(|w| have.iter().any(|t| t.starts_with(w))),
            };
            last = Some(id.clone());
            if !ok {
                continue;
            }
            let id = String::from_utf8_lossy(&id);
            if let Some(p) = self.get_key(&doc_key("Patient", &id))? {
                if q.record_matches(&p) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Chooses the index ranges a name search scans: a superset of the answer,
    /// ordered by patient id.
    ///
    /// A query token that is a prefix of another query token adds no constraint for
    /// choosing ranges (the longer one implies it). With one token left, its `n/`
    /// ranges are scanned: every candidate matches that token, so dense answers stop
    /// early at the limit. With two or more, the candidate pairs' `p/` ranges are
    /// probed and the one with the fewest entries (counted up to
    /// [`PAIR_PROBE_CAP`]) is scanned, together with the `x/` patients that have no
    /// pairs. Vietnamese names draw on few syllables, so every single token is common
    /// and only pairs keep "nguyen thi ngoc" proportional to its answer.
    fn name_plan(&self, query: &[String], after: Option<&[u8]>) -> Result<Merged, StoreError> {
        let mut drive: Vec<&str> = query
            .iter()
            .filter(|q| !query.iter().any(|o| o != *q && o.starts_with(q.as_str())))
            .map(String::as_str)
            .collect();
        drive.sort_by_key(|t| std::cmp::Reverse(t.len()));
        drive.truncate(PAIR_PROBE_TOKENS);
        if drive.len() >= 2 {
            let mut best: Option<(usize, &str, &str)> = None;
            for (i, a) in drive.iter().enumerate() {
                for b in drive.iter().skip(i + 1) {
                    // Neither is a prefix of the other, so every token extending the
                    // smaller sorts before every token extending the larger.
                    let (a, b) = if a < b { (*a, *b) } else { (*b, *a) };
                    let Some(ranges) = self.pair_ranges(a, b, after)? else {
                        continue; // too many distinct pairs: short prefixes
                    };
                    let mut probe = Merged::new(ranges)?;
                    let mut n = 0;
                    while n < PAIR_PROBE_CAP && probe.next()?.is_some() {
                        n += 1;
                    }
                    if best.is_none_or(|(m, _, _)| n < m) {
                        best = Some((n, a, b));
                    }
                }
            }
            if let Some((_, a, b)) = best {
                // A concurrent writer may have added pairs since the probe; if that
                // pushed them over the bound, the token scan below is still correct.
                if let Some(mut ranges) = self.pair_ranges(a, b, after)? {
                    let many_end = [MANY[0], MANY[1] + 1];
                    ranges.push((
                        self.inner
                            .tree
                            .range(seek(MANY.to_vec(), after)..many_end.to_vec()),
                        MANY.len(),
                    ));
                    return Merged::new(ranges);
                }
            }
        }
        let longest = query
            .iter()
            .max_by_key(|t| t.len())
            .expect("caller passes at least one token");
        self.token_ranges_where(longest.as_bytes(), after, |_| true)
    }

    /// One range `n/<t>\0*` for every indexed token `t` starting with `prefix` for
    /// which `keep(t)` holds; each range starts after the patient id `after`.
    fn token_ranges_where(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Merged, StoreError> {
        let tree = &self.inner.tree;
        let base = name_prefix_bytes(prefix);
        let mut ranges = Vec::new();
        let mut from = base.clone();
        // Skip from one distinct token to the next: one seek per token, however many
        // patients carry it.
        while let Some(entry) = tree.range(from.as_slice()..).next() {
            let (key, _) = entry?;
            if !key.starts_with(&base) {
                break;
            }
            let Some((token, _)) = split_name_key(&key) else {
                break; // not a well-formed name key: stop rather than loop
            };
            let (start, end) = name_token_range(token);
            let skip = start.len();
            if keep(token) {
                ranges.push((tree.range(seek(start, after)..end.clone()), skip));
            }
            from = end;
        }
        Merged::new(ranges)
    }

    /// One range `p/<a'>\0<b'>\0*` for every indexed pair with `a'` starting with `a`
    /// and `b'` with `b`; `None` if there are more than [`MAX_PAIR_RANGES`].
    fn pair_ranges(
        &self,
        a: &str,
        b: &str,
        after: Option<&[u8]>,
    ) -> Result<Option<Vec<(sled::Iter, usize)>>, StoreError> {
        let tree = &self.inner.tree;
        let base_a = pair_prefix(a.as_bytes());
        let mut ranges = Vec::new();
        let mut from_a = base_a.clone();
        while let Some(entry) = tree.range(from_a.as_slice()..).next() {
            let (key, _) = entry?;
            if !key.starts_with(&base_a) {
                break;
            }
            let Some(first) = token_at(&key, PAIR.len()) else {
                break;
            };
            let base_b = pair_second_prefix(first, b.as_bytes());
            let skip_b = PAIR.len() + first.len() + 1;
            let mut from_b = base_b.clone();
            while let Some(entry) = tree.range(from_b.as_slice()..).next() {
                let (key_b, _) = entry?;
                if !key_b.starts_with(&base_b) {
                    break;
                }
                let Some(second) = token_at(&key_b, skip_b) else {
                    break;
                };
                let (start, end) = pair_range(first, second);
                let skip = start.len();
                ranges.push((tree.range(seek(start, after)..end.clone()), skip));
                if ranges.len() > MAX_PAIR_RANGES {
                    return Ok(None);
                }
                from_b = end;
            }
            from_a = pair_first_end(first);
        }
        Ok(Some(ranges))
    }

    fn search_by_identifier(
        &self,
        ident: &IdentQuery<'_>,
        query_tokens: &[String],
        q: &PatientQuery,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let value_prefix_len = ident_prefix(ident.value, None).len();
        let prefix = ident_prefix(ident.value, ident.system);
        let mut ids = BTreeSet::new();
        for entry in self.inner.tree.scan_prefix(&prefix) {
            let (key, _) = entry?;
            if let Some(id) = ident_key_patient(&key, value_prefix_len) {
                if q.after.as_deref().is_none_or(|a| id > a.as_bytes()) {
                    ids.insert(id.to_vec());
                }
            }
        }
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= limit {
                break;
            }
            let id = String::from_utf8_lossy(&id);
            let Some(p) = self.get_key(&doc_key("Patient", &id))? else {
                continue;
            };
            if !query_tokens.is_empty() {
                let have = name_tokens(&p);
                let all = query_tokens.iter().all(|t| {
                    have.iter().any(|h| match q.name_match {
                        NameMatch::Contains => h.contains(t.as_str()),
                        _ => h.starts_with(t.as_str()),
                    })
                });
                if !all {
                    continue;
                }
            }
            if q.record_matches(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Every patient after the cursor, checked one by one (no name or identifier given).
    fn scan_patients(&self, q: &PatientQuery, limit: usize) -> Result<Vec<Value>, StoreError> {
        let prefix = doc_key("Patient", "");
        let start = match &q.after {
            Some(a) => seek(prefix.clone(), Some(a.as_bytes())),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for entry in self.inner.tree.range(start..) {
            let (key, bytes) = entry?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let p = super::parse_record(&key, &bytes)?;
            if q.record_matches(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The patient, then every stored resource that references it (ordered by type
    /// and id). `None` when the patient does not exist.
    pub fn everything(&self, patient_id: &str) -> Result<Option<Vec<Value>>, StoreError> {
        let Some(patient) = self.get("Patient", patient_id)? else {
            return Ok(None);
        };
        let mut out = vec![patient];
        let prefix = ref_prefix(patient_id);
        for entry in self.inner.tree.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let mut doc = DOC.to_vec();
            doc.extend_from_slice(&key[prefix.len()..]);
            if let Some(r) = self.get_key(&doc)? {
                out.push(r);
            }
        }
        Ok(Some(out))
    }
}

/// The first key after `start<after>`: where a range of keys `start<patient id>`
/// resumes after the patient `after`.
fn seek(mut start: Vec<u8>, after: Option<&[u8]>) -> Vec<u8> {
    if let Some(a) = after {
        start.extend_from_slice(a);
        start.push(0);
    }
    start
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// K-way merge, by patient id, of index ranges whose keys end in the patient id
/// (after a per-range prefix length) and whose values are token lists.
struct Merged {
    ranges: Vec<(sled::Iter, usize)>,
    /// Smallest pending `(patient id, range index)` first.
    heads: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    /// The index value (token list) of each range's pending head.
    values: Vec<sled::IVec>,
}

impl Merged {
    fn new(ranges: Vec<(sled::Iter, usize)>) -> Result<Merged, StoreError> {
        let mut m = Merged {
            values: vec![sled::IVec::default(); ranges.len()],
            heads: BinaryHeap::with_capacity(ranges.len()),
            ranges,
        };
        for i in 0..m.ranges.len() {
            m.advance(i)?;
        }
        Ok(m)
    }

    fn advance(&mut self, i: usize) -> Result<(), StoreError> {
        let (iter, skip) = &mut self.ranges[i];
        if let Some(entry) = iter.next() {
            let (key, value) = entry?;
            if let Some(id) = key.get(*skip..) {
                self.heads.push(Reverse((id.to_vec(), i)));
                self.values[i] = value;
            }
        }
        Ok(())
    }

    /// The next `(patient id, token list)` in id order.
    fn next(&mut self) -> Result<Option<(Vec<u8>, sled::IVec)>, StoreError> {
        let Some(Reverse((id, i))) = self.heads.pop() else {
            return Ok(None);
        };
        let value = std::mem::take(&mut self.values[i]);
        self.advance(i)?;
        Ok(Some((id, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_query_forms() {
        assert_eq!(
            parse_identifier("urn:oid:1.2|123"),
            IdentQuery {
                system: Some("urn:oid:1.2"),
                value: "123"
            }
        );
        assert_eq!(
            parse_identifier("|123"),
            IdentQuery {
                system: Some(""),
                value: "123"
            }
        );
        assert_eq!(
            parse_identifier("123"),
            IdentQuery {
                system: None,
                value: "123"
            }
        );
        assert_eq!(
            parse_identifier("s|a|b"),
            IdentQuery {
                system: Some("s"),
                value: "a|b"
            }
        );
    }
}
