//! Validation, key formats and the index entries a resource implies.
//!
//! Everything here is a pure function of one resource, so the writer can compute the
//! entries of the previous and the new version of a record and apply the difference.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::error::{json_type, InvalidResource};
use super::normalize::tokens;
use crate::record::{JsonView, Record};

/// Prefix of stored resources: `d/<Type>/<id>`.
pub(crate) const DOC: &[u8] = b"d/";
/// Prefix of name tokens: `n/<token>\0<patient id>`.
pub(crate) const NAME: &[u8] = b"n/";
/// Prefix of name token pairs: `p/<token a>\0<token b>\0<patient id>`, `a < b`.
pub(crate) const PAIR: &[u8] = b"p/";
/// Prefix of patients with too many name tokens for pairs: `x/<patient id>`.
pub(crate) const MANY: &[u8] = b"x/";
/// Prefix of identifiers: `i/<value>\0<system>\0<patient id>`.
pub(crate) const IDENT: &[u8] = b"i/";
/// Prefix of patient references: `r/<patient id>\0<Type>/<id>`.
pub(crate) const REF: &[u8] = b"r/";
/// Prefix of patient merges: `l/<surviving patient id>\0<merged patient id>`.
pub(crate) const LINK: &[u8] = b"l/";
/// Prefix of per-type counts: `c/<Type>`.
pub(crate) const COUNT: &[u8] = b"c/";
/// Prefix of clinical codes: `k/<Type>\0<code>\0<system>\0<id>`.
pub(crate) const CODE: &[u8] = b"k/";
/// Prefix of clinical dates that are one point (start = end): `t/<Type>\0<date>\0<id>`.
pub(crate) const POINT: &[u8] = b"t/";
/// Prefix of the starts of clinical dates that span (a period, open or not):
/// `s/<Type>\0<start>\0<id>`.
pub(crate) const SPAN_START: &[u8] = b"s/";
/// Prefix of the ends of spans: `e/<Type>\0<end>\0<id>`, an open end written as
/// [`OPEN_END`].
pub(crate) const SPAN_END: &[u8] = b"e/";
/// The end of an open period in `e/` keys: after every date.
pub(crate) const OPEN_END: &[u8] = b"\x7f";
/// Layout version key.
pub(crate) const LAYOUT_KEY: &[u8] = b"m/layout";
/// The layout version this code writes and reads (2: code and date keys of clinical
/// records; a layout 1 store gains them at open, see `Store::open`).
pub(crate) const LAYOUT_VERSION: &str = "2";
/// The layout before the clinical code and date keys.
pub(crate) const LAYOUT_WITHOUT_CLINICAL_KEYS: &str = "1";

/// Identifier systems and values, codes and code systems longer than this are not
/// indexed (they are kept in the record); it bounds key sizes against hostile input.
const MAX_IDENT_BYTES: usize = 512;

/// Whether a value can be part of an index key: short enough, and without the NUL byte
/// that separates the parts of a key. A search for a value that cannot reads every
/// record of the type instead.
pub(crate) fn indexable(s: &str) -> bool {
    s.len() <= MAX_IDENT_BYTES && !s.contains('\0')
}
/// At most this many distinct name tokens of one patient are indexed.
const MAX_NAME_TOKENS: usize = 64;
/// Pairs are indexed for patients with at most this many distinct name tokens (66
/// pairs); a patient with more gets one `x/` entry instead, which pair searches scan.
pub(crate) const MAX_PAIR_TOKENS: usize = 12;

/// Checks `resourceType` and `id`, returning them.
pub(crate) fn validate(v: &Value) -> Result<(&str, &str), InvalidResource> {
    let obj = v
        .as_object()
        .ok_or_else(|| InvalidResource::NotAnObject(json_type(v)))?;
    let rt = match obj.get("resourceType") {
        None => return Err(InvalidResource::MissingResourceType),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(InvalidResource::ResourceTypeNotString(json_type(other))),
    };
    if !is_type_name(rt) {
        return Err(InvalidResource::BadResourceType(clip(rt)));
    }
    let id = match obj.get("id") {
        None => {
            return Err(InvalidResource::MissingId {
                resource_type: rt.to_owned(),
            })
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(InvalidResource::IdNotString {
                resource_type: rt.to_owned(),
                found: json_type(other),
            })
        }
    };
    check_id(rt, id)
}

/// [`validate`] of a record.
pub(crate) fn validate_record(r: &Record) -> Result<(&str, &str), InvalidResource> {
    match (r.resource_type(), r.id()) {
        (Some(rt), Some(id)) if is_type_name(rt) => check_id(rt, id),
        // The problem, as the same resource as a value shows it.
        _ => Err(validate(&r.to_value())
            .err()
            .unwrap_or(InvalidResource::MissingResourceType)),
    }
}

fn check_id<'v>(rt: &'v str, id: &'v str) -> Result<(&'v str, &'v str), InvalidResource> {
    if !is_fhir_id(id) {
        return Err(InvalidResource::BadId {
            resource_type: rt.to_owned(),
            id: clip(id),
        });
    }
    Ok((rt, id))
}

/// Cuts a refused value to a readable length for the error message.
fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(MAX).collect();
        c.push('…');
        c
    }
}

/// FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// FHIR resource type name: an ASCII letter word starting upper case, at most 64 long.
/// (Keeps `/` and NUL out of keys.)
pub(crate) fn is_type_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.as_bytes()[0].is_ascii_uppercase()
        && s.bytes().all(|b| b.is_ascii_alphabetic())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(crate) fn doc_key(rt: &str, id: &str) -> Vec<u8> {
    cat(&[DOC, rt.as_bytes(), b"/", id.as_bytes()])
}

pub(crate) fn count_key(rt: &str) -> Vec<u8> {
    cat(&[COUNT, rt.as_bytes()])
}

/// `n/<token>` — every key of patients having a token that starts with `token`
/// begins with this.
pub(crate) fn name_prefix_bytes(token: &[u8]) -> Vec<u8> {
    cat(&[NAME, token])
}

/// `n/<token>\0` and `n/<token>\x01`: the key range of exactly this token.
pub(crate) fn name_token_range(token: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (cat(&[NAME, token, b"\0"]), cat(&[NAME, token, b"\x01"]))
}

/// Splits `n/<token>\0<id>` into token and patient id.
pub(crate) fn split_name_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = key.strip_prefix(NAME)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    Some((&rest[..nul], &rest[nul + 1..]))
}

/// `p/<a>` — every pair key whose first token starts with `a` begins with this.
pub(crate) fn pair_prefix(a: &[u8]) -> Vec<u8> {
    cat(&[PAIR, a])
}

/// `p/<a>\0<b>` — every key of pair `(a, b')` with `b'` starting with `b`.
pub(crate) fn pair_second_prefix(a: &[u8], b: &[u8]) -> Vec<u8> {
    cat(&[PAIR, a, b"\0", b])
}

/// `p/<a>\x01`: the first key after every pair whose first token is exactly `a`.
pub(crate) fn pair_first_end(a: &[u8]) -> Vec<u8> {
    cat(&[PAIR, a, b"\x01"])
}

/// `p/<a>\0<b>\0` and `p/<a>\0<b>\x01`: the key range of exactly this pair.
pub(crate) fn pair_range(a: &[u8], b: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (
        cat(&[PAIR, a, b"\0", b, b"\0"]),
        cat(&[PAIR, a, b"\0", b, b"\x01"]),
    )
}

/// The text between `skip` and the next NUL of `key`.
pub(crate) fn token_at(key: &[u8], skip: usize) -> Option<&[u8]> {
    let rest = key.get(skip..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..nul])
}

/// `i/<value>\0` or, with a system, `i/<value>\0<system>\0`.
pub(crate) fn ident_prefix(value: &str, system: Option<&str>) -> Vec<u8> {
    match system {
        None => cat(&[IDENT, value.as_bytes(), b"\0"]),
        Some(s) => cat(&[IDENT, value.as_bytes(), b"\0", s.as_bytes(), b"\0"]),
    }
}

/// The patient id at the end of an identifier key, given the `i/<value>\0` prefix
/// it was found under.
pub(crate) fn ident_key_patient(key: &[u8], value_prefix_len: usize) -> Option<&[u8]> {
    let rest = key.get(value_prefix_len..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    Some(&rest[nul + 1..])
}

/// `r/<patient id>\0`.
pub(crate) fn ref_prefix(patient_id: &str) -> Vec<u8> {
    cat(&[REF, patient_id.as_bytes(), b"\0"])
}

/// `l/<patient id>\0`: every patient merged into this one.
pub(crate) fn link_prefix(patient_id: &str) -> Vec<u8> {
    cat(&[LINK, patient_id.as_bytes(), b"\0"])
}

/// `(survivor, merged)` pairs a Patient's `link` implies: `replaced-by` other (this one
/// was merged into it) and `replaces` other (it was merged into this one).
pub(crate) fn merge_links<'d>(id: &str, v: impl JsonView<'d>) -> Vec<(String, String)> {
    let Some(links) = v.get("link") else {
        return Vec::new();
    };
    links
        .items()
        .filter_map(|l| {
            let other = l
                .get("other")?
                .get("reference")?
                .as_str()
                .and_then(patient_ref_id)?;
            if other == id {
                return None;
            }
            match l.get("type")?.as_str()? {
                "replaced-by" => Some((other.to_owned(), id.to_owned())),
                "replaces" => Some((id.to_owned(), other.to_owned())),
                _ => None,
            }
        })
        .collect()
}

/// `<prefix><Type>\0<text>\0`: the keys of one type with exactly this text (a code, a
/// date) at the front.
pub(crate) fn typed_prefix(prefix: &[u8], rt: &str, text: &[u8]) -> Vec<u8> {
    cat(&[prefix, rt.as_bytes(), b"\0", text, b"\0"])
}

/// `<prefix><Type>\0<text>`: where keys with text from `text` on start.
pub(crate) fn typed_from(prefix: &[u8], rt: &str, text: &[u8]) -> Vec<u8> {
    cat(&[prefix, rt.as_bytes(), b"\0", text])
}

/// The record id at the end of a code or date key (after its last NUL; ids have none).
pub(crate) fn id_at_end(key: &[u8]) -> &[u8] {
    key.iter()
        .rposition(|&b| b == 0)
        .map_or(key, |nul| &key[nul + 1..])
}

/// The code and date keys of a clinical record ([`super::CLINICAL_TYPES`]): one `k/`
/// per coding with a code, and its date as a point (`t/`) or a span (`s/` and `e/`).
pub(crate) fn clinical_entries<'d>(
    rt: &str,
    id: &str,
    v: impl JsonView<'d>,
    out: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) {
    if !super::CLINICAL_TYPES.contains(&rt) {
        return;
    }
    let id = id.as_bytes();
    for coding in super::clinical::record_codings(v) {
        let Some(code) = coding
            .get("code")
            .and_then(JsonView::as_str)
            .filter(|c| indexable(c))
        else {
            continue;
        };
        // A system that cannot be in a key is left out of it: searches by the code alone
        // still find the record, and every candidate is checked against the record.
        let system = coding
            .get("system")
            .and_then(JsonView::as_str)
            .filter(|s| indexable(s))
            .unwrap_or("");
        out.insert(
            cat(&[
                &typed_prefix(CODE, rt, code.as_bytes()),
                system.as_bytes(),
                b"\0",
                id,
            ]),
            Vec::new(),
        );
    }
    if let Some((lo, hi)) = super::clinical::record_date_range(v) {
        if lo == hi {
            out.insert(
                cat(&[&typed_prefix(POINT, rt, lo.as_bytes()), id]),
                Vec::new(),
            );
        } else {
            let end = if hi.is_empty() {
                OPEN_END
            } else {
                hi.as_bytes()
            };
            out.insert(
                cat(&[&typed_prefix(SPAN_START, rt, lo.as_bytes()), id]),
                Vec::new(),
            );
            out.insert(cat(&[&typed_prefix(SPAN_END, rt, end), id]), Vec::new());
        }
    }
}

/// A record's index entries: key → value.
pub type IndexEntries = BTreeMap<Vec<u8>, Vec<u8>>;

/// The index entries of a record, worked out where it is made (the mapper) so that the
/// store's writer need not; `None` for a record the store would refuse.
pub fn index_entries_of_record(r: &Record) -> Option<IndexEntries> {
    let (rt, id) = validate_record(r).ok()?;
    Some(index_entries(rt, id, r.root()))
}

/// Every index entry (key → value) the resource implies. The resource's own `d/` key
/// and the counts are not included.
pub(crate) fn index_entries<'d>(rt: &str, id: &str, v: impl JsonView<'d>) -> IndexEntries {
    let mut out = BTreeMap::new();
    clinical_entries(rt, id, v, &mut out);
    if rt == "Patient" {
        let toks = name_tokens(v);
        let list = toks
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        for t in &toks {
            out.insert(
                cat(&[NAME, t.as_bytes(), b"\0", id.as_bytes()]),
                list.as_bytes().to_vec(),
            );
        }
        if toks.len() <= MAX_PAIR_TOKENS {
            // BTreeSet iterates in order, so `a < b` for every pair.
            for (i, a) in toks.iter().enumerate() {
                for b in toks.iter().skip(i + 1) {
                    out.insert(
                        cat(&[
                            PAIR,
                            a.as_bytes(),
                            b"\0",
                            b.as_bytes(),
                            b"\0",
                            id.as_bytes(),
                        ]),
                        list.as_bytes().to_vec(),
                    );
                }
            }
        } else {
            out.insert(cat(&[MANY, id.as_bytes()]), list.as_bytes().to_vec());
        }
        for (survivor, merged) in merge_links(id, v) {
            out.insert(
                cat(&[LINK, survivor.as_bytes(), b"\0", merged.as_bytes()]),
                Vec::new(),
            );
        }
        for (system, value) in identifiers(v) {
            out.insert(
                cat(&[
                    IDENT,
                    value.as_bytes(),
                    b"\0",
                    system.as_bytes(),
                    b"\0",
                    id.as_bytes(),
                ]),
                Vec::new(),
            );
        }
    }
    let mut refs = BTreeSet::new();
    patient_refs(v, &mut refs);
    for pid in refs {
        if rt == "Patient" && pid == id {
            continue; // the patient is first in its own $everything anyway
        }
        out.insert(
            cat(&[
                REF,
                pid.as_bytes(),
                b"\0",
                rt.as_bytes(),
                b"/",
                id.as_bytes(),
            ]),
            Vec::new(),
        );
    }
    out
}

/// The distinct search tokens of every `name[*]` of a Patient: `family`, each
/// `given`, `prefix`, `suffix`, and `text`.
pub(crate) fn name_tokens<'d>(v: impl JsonView<'d>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(names) = v.get("name") else {
        return out;
    };
    let mut add = |s: &str| {
        for t in tokens(s) {
            if out.len() < MAX_NAME_TOKENS {
                out.insert(t);
            }
        }
    };
    for name in names.items() {
        for field in ["family", "text"] {
            if let Some(s) = name.get(field).and_then(JsonView::as_str) {
                add(s);
            }
        }
        for field in ["given", "prefix", "suffix"] {
            if let Some(list) = name.get(field) {
                for s in list.items().filter_map(JsonView::as_str) {
                    add(s);
                }
            }
        }
    }
    out
}

/// `(system, value)` of every `identifier[*]` with a string value; a missing system is
/// the empty string. Values or systems containing NUL, or too long, are not indexed.
pub(crate) fn identifiers<'d>(v: impl JsonView<'d>) -> Vec<(String, String)> {
    let Some(list) = v.get("identifier") else {
        return Vec::new();
    };
    list.items()
        .filter_map(|ident| {
            let value = ident.get("value")?.as_str()?;
            let system = ident.get("system").and_then(JsonView::as_str).unwrap_or("");
            (!value.is_empty() && indexable(value) && indexable(system))
                .then(|| (system.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Collects the ids of every relative `"reference": "Patient/<id>"` anywhere in `v`
/// (an optional `/_history/<version>` suffix is ignored). Absolute URLs point at other
/// servers and are not followed.
pub(crate) fn patient_refs<'d>(v: impl JsonView<'d>, out: &mut BTreeSet<String>) {
    let mut refs = Vec::new();
    v.strings_named("reference", &mut refs);
    for id in refs.into_iter().filter_map(patient_ref_id) {
        out.insert(id.to_owned());
    }
}

fn patient_ref_id(r: &str) -> Option<&str> {
    let rest = r.strip_prefix("Patient/")?;
    let id = match rest.split_once('/') {
        Some((id, hist)) if hist.starts_with("_history/") => id,
        Some(_) => return None,
        None => rest,
    };
    is_fhir_id(id).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_names_the_problem() {
        type Want = Result<(&'static str, &'static str), InvalidResource>;
        let table: Vec<(Value, Want)> = vec![
            (
                json!({"resourceType": "Patient", "id": "p-1.a"}),
                Ok(("Patient", "p-1.a")),
            ),
            (json!([1]), Err(InvalidResource::NotAnObject("an array"))),
            (
                json!({"id": "x"}),
                Err(InvalidResource::MissingResourceType),
            ),
            (
                json!({"resourceType": 7, "id": "x"}),
                Err(InvalidResource::ResourceTypeNotString("a number")),
            ),
            (
                json!({"resourceType": "Pat/ient", "id": "x"}),
                Err(InvalidResource::BadResourceType("Pat/ient".into())),
            ),
            (
                json!({"resourceType": "Patient"}),
                Err(InvalidResource::MissingId {
                    resource_type: "Patient".into(),
                }),
            ),
            (
                json!({"resourceType": "Patient", "id": 12}),
                Err(InvalidResource::IdNotString {
                    resource_type: "Patient".into(),
                    found: "a number",
                }),
            ),
            (
                json!({"resourceType": "Patient", "id": "a b"}),
                Err(InvalidResource::BadId {
                    resource_type: "Patient".into(),
                    id: "a b".into(),
                }),
            ),
            (
                json!({"resourceType": "Patient", "id": ""}),
                Err(InvalidResource::BadId {
                    resource_type: "Patient".into(),
                    id: "".into(),
                }),
            ),
            (
                json!({"resourceType": "Patient", "id": "x".repeat(65)}),
                Err(InvalidResource::BadId {
                    resource_type: "Patient".into(),
                    id: "x".repeat(65),
                }),
            ),
        ];
        for (input, want) in table {
            assert_eq!(validate(&input), want, "validate({input})");
        }
        assert!(validate(&json!({"resourceType": "Patient", "id": "x".repeat(64)})).is_ok());
    }

    #[test]
    fn patient_references_found_anywhere() {
        let v = json!({
            "resourceType": "Observation", "id": "o1",
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/d1"}, {"reference": "Patient/p2/_history/3"}],
            "extension": [{"valueReference": {"reference": "Patient/p3"}}],
            "note": [{"text": "reference Patient/p9"}],
            "focus": [{"reference": "http://other/fhir/Patient/p4"}, {"reference": "Patient/bad id"}]
        });
        let mut got = BTreeSet::new();
        patient_refs(&v, &mut got);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["p1", "p2", "p3"]);
        // The same from the record, whose nodes are read in one pass, and from one of
        // its members.
        let r = Record::from_value(&v).unwrap();
        let mut got = BTreeSet::new();
        patient_refs(r.root(), &mut got);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["p1", "p2", "p3"]);
        let mut got = BTreeSet::new();
        patient_refs(r.root().get("performer").unwrap(), &mut got);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["p2"]);
    }

    #[test]
    fn name_keys_round_trip() {
        let v = json!({"resourceType": "Patient", "id": "p1",
            "name": [{"family": "Nguyễn", "given": ["Thị", "Ngọc"], "text": "Nguyễn Thị Ngọc"}]});
        let e = index_entries("Patient", "p1", &v);
        let key = cat(&[NAME, b"ngoc\0p1"]);
        assert_eq!(
            e.get(&key).map(Vec::as_slice),
            Some(&b"ngoc nguyen thi"[..])
        );
        assert_eq!(split_name_key(&key), Some((&b"ngoc"[..], &b"p1"[..])));
        let pair = cat(&[PAIR, b"nguyen\0thi\0p1"]);
        assert_eq!(
            e.get(&pair).map(Vec::as_slice),
            Some(&b"ngoc nguyen thi"[..])
        );
        assert_eq!(e.len(), 3 + 3, "three tokens, three pairs");
    }

    #[test]
    fn many_tokens_get_one_overflow_entry_instead_of_pairs() {
        let given: Vec<String> = (0..=MAX_PAIR_TOKENS).map(|i| format!("g{i}")).collect();
        let v = json!({"resourceType": "Patient", "id": "p1", "name": [{"given": given}]});
        let e = index_entries("Patient", "p1", &v);
        assert!(e.keys().all(|k| !k.starts_with(PAIR)));
        assert!(e.contains_key(&cat(&[MANY, b"p1"])));
        assert_eq!(e.len(), MAX_PAIR_TOKENS + 2);
    }
}
