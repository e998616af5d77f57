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

use super::error::StoreError;
use super::index::{
    doc_key, ident_key_patient, ident_prefix, name_prefix, name_token_range, name_tokens,
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

/// A patient search. Empty or absent criteria do not restrict; given criteria are
/// ANDed. Results are ordered by patient id.
#[derive(Debug, Clone, Default)]
pub struct PatientQuery {
    /// FHIR string search on the names, case- and accent-insensitive: every query
    /// token must be a prefix of some name token of the patient.
    pub name: Option<String>,
    /// `system|value`, `|value` (no system) or `value` (any system); exact match.
    pub identifier: Option<String>,
    /// Maximum number of patients returned; 0 means [`DEFAULT_LIMIT`].
    pub limit: usize,
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

        let ids: Vec<Vec<u8>> = match (ident, query_tokens.is_empty()) {
            (Some(ident), _) => {
                return self.search_by_identifier(&ident, &query_tokens, limit);
            }
            (None, false) => self.ids_by_name(&query_tokens, limit)?,
            (None, true) => return self.first_patients(limit),
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id = String::from_utf8_lossy(&id);
            if let Some(p) = self.get_key(&doc_key("Patient", &id))? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Ids (in id order, at most `limit`) of patients having, for every query token,
    /// a name token it is a prefix of.
    fn ids_by_name(&self, query: &[String], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut merged = self.name_plan(query)?;
        let wanted: Vec<&[u8]> = query.iter().map(|t| t.as_bytes()).collect();
        let mut out: Vec<Vec<u8>> = Vec::new();
        while out.len() < limit {
            let Some((id, list)) = merged.next()? else {
                break;
            };
            if out.last() == Some(&id) {
                continue; // the same patient reached through two ranges
            }
            let have: Vec<&[u8]> = list.split(|&b| b == b' ').collect();
            if wanted.iter().all(|q| have.iter().any(|t| t.starts_with(q))) {
                out.push(id);
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
    fn name_plan(&self, query: &[String]) -> Result<Merged, StoreError> {
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
                    let Some(ranges) = self.pair_ranges(a, b)? else {
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
                if let Some(mut ranges) = self.pair_ranges(a, b)? {
                    ranges.push((self.inner.tree.scan_prefix(MANY), MANY.len()));
                    return Merged::new(ranges);
                }
            }
        }
        let longest = query
            .iter()
            .max_by_key(|t| t.len())
            .expect("caller passes at least one token");
        self.token_ranges(longest)
    }

    /// One range `n/<t>\0*` for every indexed token `t` starting with `prefix`.
    fn token_ranges(&self, prefix: &str) -> Result<Merged, StoreError> {
        let tree = &self.inner.tree;
        let base = name_prefix(prefix);
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
            ranges.push((tree.range(start..end.clone()), skip));
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
                ranges.push((tree.range(start..end.clone()), skip));
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
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let value_prefix_len = ident_prefix(ident.value, None).len();
        let prefix = ident_prefix(ident.value, ident.system);
        let mut ids = BTreeSet::new();
        for entry in self.inner.tree.scan_prefix(&prefix) {
            let (key, _) = entry?;
            if let Some(id) = ident_key_patient(&key, value_prefix_len) {
                ids.insert(id.to_vec());
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
                let all = query_tokens
                    .iter()
                    .all(|q| have.iter().any(|t| t.starts_with(q.as_str())));
                if !all {
                    continue;
                }
            }
            out.push(p);
        }
        Ok(out)
    }

    fn first_patients(&self, limit: usize) -> Result<Vec<Value>, StoreError> {
        let prefix = doc_key("Patient", "");
        let mut out = Vec::new();
        for entry in self.inner.tree.scan_prefix(&prefix).take(limit) {
            let (key, bytes) = entry?;
            out.push(super::parse_record(&key, &bytes)?);
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
