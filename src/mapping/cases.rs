//! Test cases beside the mappings: `mappings/cases/<mapping>/<case>.hl7` (or `.dicom`, a
//! DICOM instance's attributes as JSON) is an input
//! message and `<case>.json` the resources it must map to (a JSON array, compared as
//! JSON values, so formatting and key order do not matter; `meta.source` is the
//! engine's and not compared). `halong test` and
//! `cargo test` run them all.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::{MappingSet, RunContext};

/// One case and what came of it.
#[derive(Debug)]
pub struct CaseResult {
    pub mapping: String,
    pub case: String,
    /// `None` when the output matched; otherwise a readable explanation.
    pub failure: Option<String>,
}

/// The cases directory of a mapping directory.
pub fn cases_dir(mappings_dir: &Path) -> PathBuf {
    mappings_dir.join("cases")
}

/// Runs every case under `dir` (one folder per mapping). A folder named after no
/// mapping, an unreadable file or a case without its expected JSON is a failure.
pub fn run_cases(set: &MappingSet, dir: &Path) -> Vec<CaseResult> {
    let mut out = Vec::new();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    for folder in folders {
        let mapping = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let is_input = |p: &Path| p.extension().is_some_and(|e| e == "hl7" || e == "dicom");
        // An expected output with no input beside it (a renamed or deleted message)
        // would silently test nothing.
        for orphan in files.iter().filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !files
                    .iter()
                    .any(|i| is_input(i) && i.with_extension("json") == **p)
        }) {
            let case = orphan
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(CaseResult {
                mapping: mapping.clone(),
                failure: Some(format!(
                    "{}: no input beside it ({case}.hl7 or {case}.dicom)",
                    orphan.display()
                )),
                case,
            });
        }
        for input in files.iter().filter(|p| is_input(p)) {
            let case = input
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let failure = run_one(set, &mapping, input).err();
            out.push(CaseResult {
                mapping: mapping.clone(),
                case,
                failure,
            });
        }
    }
    out
}

fn run_one(set: &MappingSet, mapping: &str, input: &Path) -> Result<(), String> {
    let m = set.get(mapping).ok_or_else(|| {
        format!("no mapping \"{mapping}\" (the folder name must be a mapping name)")
    })?;
    let raw = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    // `<case>.dicom` holds a DICOM instance's attributes as JSON (tag as eight hex
    // digits → value), the form the journal keeps for every received instance.
    let dicom_input = input.extension().is_some_and(|e| e == "dicom");
    let attrs: Option<crate::dicom::Attributes> = if dicom_input {
        Some(serde_json::from_slice(&raw).map_err(|e| {
            format!(
                "{}: not a JSON object of DICOM attributes: {e}",
                input.display()
            )
        })?)
    } else {
        None
    };
    let msg = match &attrs {
        Some(_) => None,
        None => {
            Some(crate::hl7::parse(&raw).map_err(|e| format!("the input does not parse: {e}"))?)
        }
    };
    let expected_path = input.with_extension("json");
    let text = std::fs::read_to_string(&expected_path).map_err(|e| {
        format!(
            "{}: {e} (write the expected resources there, e.g. from `halong map --mapping {mapping} {}`)",
            expected_path.display(),
            input.display()
        )
    })?;
    let mut expected: Json = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}:{}:{}: {e}",
            expected_path.display(),
            e.line(),
            e.column()
        )
    })?;
    // `meta.source` is the engine's (where a message came from), not the mapping's: an
    // expected file started from `halong map` output may keep it.
    without_source(&mut expected);
    let actual = match (&msg, &attrs) {
        (Some(msg), _) => m.run(msg, &RunContext::default()),
        (None, Some(a)) => m.run_dicom(a, &RunContext::default()),
        (None, None) => unreachable!("one input is always read"),
    }
    .map_err(|e| format!("mapping failed: {e}"))?;
    let mut actual = Json::Array(actual.iter().map(crate::record::Record::to_value).collect());
    without_source(&mut actual);
    let mut diffs = Vec::new();
    diff_resources(&expected, &actual, &mut diffs);
    if diffs.is_empty() {
        Ok(())
    } else {
        let shown = diffs.len().min(20);
        let mut text = diffs[..shown].join("\n");
        if diffs.len() > shown {
            text.push_str(&format!("\n... and {} more", diffs.len() - shown));
        }
        Err(text)
    }
}

/// Removes `meta.source` from every resource of a list, and `meta` when nothing else
/// is left in it.
fn without_source(list: &mut Json) {
    let Json::Array(items) = list else {
        return;
    };
    for item in items {
        let Json::Object(o) = item else {
            continue;
        };
        let empty = match o.get_mut("meta") {
            Some(Json::Object(meta)) => {
                meta.remove("source");
                meta.is_empty()
            }
            _ => false,
        };
        if empty {
            o.remove("meta");
        }
    }
}

/// `Type/id` of each resource of a list, when every item has both.
fn resource_keys(list: &[Json]) -> Option<Vec<String>> {
    list.iter()
        .map(|r| {
            Some(format!(
                "{}/{}",
                r["resourceType"].as_str()?,
                r["id"].as_str()?
            ))
        })
        .collect()
}

/// [`diff`] of two resource lists. When they hold the same resources in another order,
/// that is said once and each resource is compared with its namesake, instead of every
/// field of every misplaced resource.
pub fn diff_resources(expected: &Json, actual: &Json, out: &mut Vec<String>) {
    if let (Json::Array(e), Json::Array(a)) = (expected, actual) {
        if let (Some(ek), Some(ak)) = (resource_keys(e), resource_keys(a)) {
            let (mut es, mut as_) = (ek.clone(), ak.clone());
            es.sort();
            as_.sort();
            if ek != ak && es == as_ {
                out.push(format!(
                    "order: the same resources in another order: expected {}; got {}",
                    ek.join(", "),
                    ak.join(", ")
                ));
                let mut used = vec![false; a.len()];
                for (i, ev) in e.iter().enumerate() {
                    let j = (0..a.len()).find(|&j| !used[j] && ak[j] == ek[i]);
                    if let Some(j) = j {
                        used[j] = true;
                        diff(&format!("/{i} ({})", ek[i]), ev, &a[j], out);
                    }
                }
                return;
            }
        }
    }
    diff("", expected, actual, out);
}

/// Differences as `path: expected X, got Y` lines (JSON pointer paths).
pub fn diff(at: &str, expected: &Json, actual: &Json, out: &mut Vec<String>) {
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{at}/{k}");
                match a.get(k) {
                    Some(av) => diff(&p, ev, av, out),
                    None => out.push(format!("- {p}: expected {ev}, missing")),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    out.push(format!("+ {at}/{k}: unexpected {av}"));
                }
            }
        }
        (Json::Array(e), Json::Array(a)) => {
            for i in 0..e.len().max(a.len()) {
                let p = format!("{at}/{i}");
                match (e.get(i), a.get(i)) {
                    (Some(ev), Some(av)) => diff(&p, ev, av, out),
                    (Some(ev), None) => out.push(format!("- {p}: expected {ev}, missing")),
                    (None, Some(av)) => out.push(format!("+ {p}: unexpected {av}")),
                    (None, None) => {}
                }
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(format!("~ {at}: expected {e}, got {a}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_in_another_order_are_said_once_and_compared_by_id() {
        let p = json!({"resourceType": "Patient", "id": "p", "gender": "female"});
        let e = json!({"resourceType": "Encounter", "id": "e", "status": "finished"});
        let e2 = json!({"resourceType": "Encounter", "id": "e", "status": "planned"});
        let mut out = Vec::new();
        diff_resources(&json!([p, e]), &json!([e2, p]), &mut out);
        assert_eq!(
            out,
            [
                "order: the same resources in another order: expected Patient/p, Encounter/e; got Encounter/e, Patient/p",
                "~ /1 (Encounter/e)/status: expected \"finished\", got \"planned\"",
            ]
        );
        // Other resources, or the same order: field by field.
        let mut out = Vec::new();
        diff_resources(&json!([p]), &json!([e]), &mut out);
        assert_eq!(
            out[0],
            "~ /0/resourceType: expected \"Patient\", got \"Encounter\""
        );
    }

    #[test]
    fn diff_names_each_difference() {
        let mut out = Vec::new();
        diff(
            "",
            &json!([{"a": 1, "b": [1, 2], "c": "x"}]),
            &json!([{"a": 2, "b": [1], "d": true, "c": "x"}]),
            &mut out,
        );
        assert_eq!(
            out,
            [
                "~ /0/a: expected 1, got 2",
                "- /0/b/1: expected 2, missing",
                "+ /0/d: unexpected true",
            ]
        );
    }
}
