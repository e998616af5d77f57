//! Store-level tests against a real sled database in a temporary directory.

use serde_json::{json, Value};
use unicode_normalization::UnicodeNormalization;

use super::*;

/// Opens the store in `dir`. When a test reopens a store it has just dropped, sled's I/O
/// threads can hold the database's file lock for a moment longer, and sled gives no
/// signal when they let go: the open is tried again while the lock is busy, up to 10 s.
fn open(dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match Store::sled_config(dir).open() {
            Ok(db) => break db,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("open sled: {e}"),
        }
    };
    Store::open(db, dir).expect("open store")
}

fn patient(id: &str, family: &str, given: &[&str], idents: &[(&str, &str)]) -> Value {
    let identifier: Vec<Value> = idents
        .iter()
        .map(|(s, v)| {
            if s.is_empty() {
                json!({ "value": v })
            } else {
                json!({ "system": s, "value": v })
            }
        })
        .collect();
    json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": identifier,
        "name": [{ "family": family, "given": given }],
    })
}

fn ids(found: &[Value]) -> Vec<&str> {
    found.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

fn by_name(store: &Store, name: &str) -> Vec<String> {
    let q = PatientQuery {
        name: Some(name.into()),
        ..Default::default()
    };
    ids(&store.search_patients(&q).unwrap())
        .into_iter()
        .map(String::from)
        .collect()
}

fn by_ident(store: &Store, ident: &str) -> Vec<String> {
    let q = PatientQuery {
        identifier: Some(ident.into()),
        ..Default::default()
    };
    ids(&store.search_patients(&q).unwrap())
        .into_iter()
        .map(String::from)
        .collect()
}

#[test]
fn upsert_then_get_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = patient(
        "p1",
        "Nguyễn",
        &["Thị", "Ngọc"],
        &[("urn:oid:1.2.3", "BN001")],
    );
    // parsed from text (not `json!`, which goes through f64) to keep the decimal as sent
    let obs: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "id": "o1", "status": "final",
            "valueQuantity": {"value": 5.10, "unit": "mmol/L"}, "subject": {"reference": "Patient/p1"}}"#,
    )
    .unwrap();
    let stats = store.upsert_batch(&[p.clone(), obs.clone()]).unwrap();
    assert_eq!(
        stats,
        UpsertStats {
            written: 2,
            unchanged: 0,
            kept: Vec::new()
        }
    );
    assert_eq!(store.get("Patient", "p1").unwrap(), Some(p));
    // arbitrary_precision keeps the decimal exactly as sent
    let got = store.get("Observation", "o1").unwrap().unwrap();
    assert_eq!(got, obs);
    assert_eq!(got["valueQuantity"]["value"].to_string(), "5.10");
    assert_eq!(store.get("Patient", "nope").unwrap(), None);
    assert_eq!(store.get("Patient", "bad id").unwrap(), None);
    assert_eq!(store.get("Observation", "p1").unwrap(), None);
    assert_eq!(store.count("Patient").unwrap(), 1);
    assert_eq!(store.count("Observation").unwrap(), 1);
    assert_eq!(store.count("Encounter").unwrap(), 0);
}

/// A lab result (or report) at `status`, with value `v`.
fn result(rt: &str, id: &str, status: &str, v: &str) -> Value {
    json!({"resourceType": rt, "id": id, "status": status, "code": {"text": v},
           "subject": {"reference": "Patient/p1"}})
}

#[test]
fn a_result_at_an_earlier_stage_never_replaces_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let text = |rt: &str, id: &str| store.get(rt, id).unwrap().unwrap()["code"]["text"].clone();
    // Stages move forward: registered, preliminary, final, corrected; each replaces.
    for (status, v) in [
        ("registered", "r"),
        ("preliminary", "p"),
        ("final", "f"),
        ("corrected", "c"),
    ] {
        let stats = store
            .upsert_batch(&[result("Observation", "o1", status, v)])
            .unwrap();
        assert_eq!((stats.written, stats.kept.len()), (1, 0), "{status}");
        assert_eq!(text("Observation", "o1"), v);
    }
    // A preliminary that comes after (a replay, a late retry) is kept out, and said so,
    // while the rest of its batch is written.
    let late = [
        result("Observation", "o2", "final", "other"),
        result("Observation", "o1", "preliminary", "p"),
        result("DiagnosticReport", "d1", "partial", "d"),
    ];
    let stats = store.upsert_batch(&late).unwrap();
    assert_eq!(stats.written, 2);
    assert_eq!(
        stats.kept,
        [Kept {
            position: 1,
            reference: "Observation/o1".into(),
            stored: "corrected".into(),
            given: "preliminary".into(),
        }]
    );
    assert_eq!(text("Observation", "o1"), "c");
    assert_eq!(
        stats.kept[0].to_string(),
        "Observation/o1 kept as stored (corrected); this message's version (preliminary) is an earlier stage and was not written"
    );
    // Each settled status holds against the earlier stages, and a registered version
    // does not undo a preliminary or partial one either.
    for (settled, late) in [
        ("amended", "partial"),
        ("cancelled", "preliminary"),
        ("entered-in-error", "registered"),
        ("appended", "preliminary"),
    ] {
        let id = format!("s-{settled}");
        store
            .upsert_batch(&[result("DiagnosticReport", &id, settled, "s")])
            .unwrap();
        let stats = store
            .upsert_batch(&[result("DiagnosticReport", &id, late, "l")])
            .unwrap();
        assert_eq!(
            (stats.written, stats.kept.len()),
            (0, 1),
            "{settled} over {late}"
        );
        assert_eq!(text("DiagnosticReport", &id), "s");
    }
    for open in ["preliminary", "partial"] {
        store
            .upsert_batch(&[result("DiagnosticReport", "r1", open, "o")])
            .unwrap();
        let stats = store
            .upsert_batch(&[result("DiagnosticReport", "r1", "registered", "r")])
            .unwrap();
        assert_eq!(
            (stats.written, stats.kept.len()),
            (0, 1),
            "registered over {open}"
        );
        assert_eq!(text("DiagnosticReport", "r1"), "o");
    }
    // Reports alike.
    store
        .upsert_batch(&[result("DiagnosticReport", "d1", "final", "d2")])
        .unwrap();
    let stats = store
        .upsert_batch(&[result("DiagnosticReport", "d1", "registered", "d3")])
        .unwrap();
    assert_eq!((stats.written, stats.kept.len()), (0, 1));
    assert_eq!(text("DiagnosticReport", "d1"), "d2");
    // One stage: the later arriving wins (a final resent as final with a new value, a
    // correction of a correction).
    store
        .upsert_batch(&[result("Observation", "o1", "final", "f2")])
        .unwrap();
    assert_eq!(text("Observation", "o1"), "f2");
    // Without a known status, or of another type, there is no stage: later wins.
    store
        .upsert_batch(&[result("Observation", "o1", "unknown", "u")])
        .unwrap();
    assert_eq!(text("Observation", "o1"), "u");
    store
        .upsert_batch(&[result("Observation", "o1", "preliminary", "p2")])
        .unwrap();
    assert_eq!(text("Observation", "o1"), "p2");
    store
        .upsert_batch(&[result("ServiceRequest", "s1", "completed", "a")])
        .unwrap();
    let stats = store
        .upsert_batch(&[result("ServiceRequest", "s1", "active", "b")])
        .unwrap();
    assert_eq!((stats.written, stats.kept.len()), (1, 0));
    // Within one batch the earlier version in the batch is the stored one.
    let stats = store
        .upsert_batch(&[
            result("Observation", "o3", "final", "f"),
            result("Observation", "o3", "preliminary", "p"),
        ])
        .unwrap();
    assert_eq!((stats.written, stats.kept.len()), (1, 1));
    assert_eq!(text("Observation", "o3"), "f");
}

#[test]
fn re_upsert_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch = vec![
        patient("p1", "Trần", &["Văn", "An"], &[("s", "1")]),
        patient("p2", "Lê", &["Thị", "Bình"], &[("s", "2")]),
    ];
    assert_eq!(
        store.upsert_batch(&batch).unwrap(),
        UpsertStats {
            written: 2,
            unchanged: 0,
            kept: Vec::new()
        }
    );
    assert_eq!(
        store.upsert_batch(&batch).unwrap(),
        UpsertStats {
            written: 0,
            unchanged: 2,
            kept: Vec::new()
        }
    );
    assert_eq!(store.count("Patient").unwrap(), 2);
    // a changed record is written, the count does not move
    let changed = patient("p1", "Trần", &["Văn", "Anh"], &[("s", "1")]);
    assert_eq!(
        store.upsert_batch(&[changed, batch[1].clone()]).unwrap(),
        UpsertStats {
            written: 1,
            unchanged: 1,
            kept: Vec::new()
        }
    );
    assert_eq!(store.count("Patient").unwrap(), 2);
    assert_eq!(by_name(&store, "tran"), ["p1"]);
    // the same record twice in one batch: last wins, counted once
    let a = patient("p3", "Phạm", &["A"], &[]);
    let b = patient("p3", "Phạm", &["B"], &[]);
    assert_eq!(
        store.upsert_batch(&[a, b.clone()]).unwrap(),
        UpsertStats {
            written: 2,
            unchanged: 0,
            kept: Vec::new()
        }
    );
    assert_eq!(store.count("Patient").unwrap(), 3);
    assert_eq!(store.get("Patient", "p3").unwrap(), Some(b));
    assert!(by_name(&store, "pham a").is_empty());
    assert_eq!(by_name(&store, "pham b"), ["p3"]);
}

#[test]
fn name_search_is_accent_case_and_form_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .upsert_batch(&[
            patient("p1", "Nguyễn", &["Thị", "Ngọc"], &[]),
            patient("p2", "Đặng", &["Văn", "Đức"], &[]),
            patient("p3", "Nguyễn", &["Văn", "Nam"], &[]),
            patient("p4", "Trương", &["Thị", "Ngân"], &[]),
            // stored in NFD: the index must not care
            patient(
                "p5",
                &"Huỳnh".nfd().collect::<String>(),
                &["Thị", "Ánh"],
                &[],
            ),
        ])
        .unwrap();
    let nfd = |s: &str| s.nfd().collect::<String>();
    let table: Vec<(String, &[&str])> = vec![
        ("nguyen thi ngoc".into(), &["p1"]),
        ("Nguyễn Thị Ngọc".into(), &["p1"]),
        (nfd("Nguyễn Thị Ngọc"), &["p1"]),
        ("NGUYEN".into(), &["p1", "p3"]),
        ("ngọc".into(), &["p1"]),
        (nfd("ngọc"), &["p1"]),
        ("thi ng".into(), &["p1", "p4"]),
        ("ng".into(), &["p1", "p3", "p4"]),
        ("dang".into(), &["p2"]),
        ("Đặng đức".into(), &["p2"]),
        ("ĐẶNG".into(), &["p2"]),
        ("duc dang".into(), &["p2"]),
        ("van".into(), &["p2", "p3"]),
        ("huynh anh".into(), &["p5"]),
        ("Huỳnh".into(), &["p5"]),
        ("nguyen x".into(), &[]),
        ("ngocx".into(), &[]),
        ("tran".into(), &[]),
    ];
    for (query, want) in table {
        assert_eq!(by_name(&store, &query), want, "name={query:?}");
    }
    // limit caps, in id order
    let q = PatientQuery {
        name: Some("thi".into()),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(ids(&store.search_patients(&q).unwrap()), ["p1", "p4"]);
    // no criteria: every patient, id order
    assert_eq!(
        ids(&store.search_patients(&PatientQuery::default()).unwrap()).len(),
        5
    );
}

#[test]
fn name_tokens_come_from_every_name_part() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = json!({"resourceType": "Patient", "id": "p1", "name": [
        {"use": "official", "family": "Lý", "given": ["Thừa"], "prefix": ["Bác sĩ"], "suffix": ["Jr"]},
        {"use": "nickname", "text": "Bé Na"}
    ]});
    store.upsert_batch(&[p]).unwrap();
    for q in ["ly thua", "bac si", "jr", "be na", "na ly"] {
        assert_eq!(by_name(&store, q), ["p1"], "name={q:?}");
    }
}

#[test]
fn identifier_search_forms() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .upsert_batch(&[
            patient(
                "p1",
                "A",
                &[],
                &[("urn:oid:1.1", "123"), ("urn:oid:9", "CMND-77")],
            ),
            patient("p2", "B", &[], &[("urn:oid:2.2", "123")]),
            patient("p3", "C", &[], &[("", "123")]),
            patient("p4", "D", &[], &[("urn:oid:1.1", "1234")]),
        ])
        .unwrap();
    assert_eq!(by_ident(&store, "123"), ["p1", "p2", "p3"]);
    assert_eq!(by_ident(&store, "urn:oid:1.1|123"), ["p1"]);
    assert_eq!(by_ident(&store, "urn:oid:2.2|123"), ["p2"]);
    assert_eq!(by_ident(&store, "|123"), ["p3"]);
    assert_eq!(by_ident(&store, "CMND-77"), ["p1"]);
    assert!(
        by_ident(&store, "12").is_empty(),
        "identifiers match exactly, not by prefix"
    );
    assert!(by_ident(&store, "urn:oid:1|123").is_empty());
    // identifier AND name
    let q = PatientQuery {
        name: Some("b".into()),
        identifier: Some("123".into()),
        ..Default::default()
    };
    assert_eq!(ids(&store.search_patients(&q).unwrap()), ["p2"]);
    let q = PatientQuery {
        name: Some("zz".into()),
        identifier: Some("123".into()),
        ..Default::default()
    };
    assert!(store.search_patients(&q).unwrap().is_empty());
}

#[test]
fn name_and_identifier_changes_remove_old_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .upsert_batch(&[patient("p1", "Phạm", &["Thị", "Lan"], &[("s", "old")])])
        .unwrap();
    assert_eq!(by_name(&store, "lan"), ["p1"]);
    // ADT^A08: the patient is renamed and the identifier corrected
    store
        .upsert_batch(&[patient("p1", "Võ", &["Thị", "Lan", "Anh"], &[("s", "new")])])
        .unwrap();
    assert!(
        by_name(&store, "pham").is_empty(),
        "old family name must stop matching"
    );
    assert_eq!(by_name(&store, "vo lan anh"), ["p1"]);
    assert_eq!(by_name(&store, "thi"), ["p1"]);
    assert!(by_ident(&store, "s|old").is_empty());
    assert_eq!(by_ident(&store, "s|new"), ["p1"]);
    assert_eq!(store.count("Patient").unwrap(), 1);
    // no index key of the old name remains
    let stale: Vec<_> = store
        .inner
        .tree
        .scan_prefix(b"n/pham")
        .chain(store.inner.tree.scan_prefix(b"i/old"))
        .collect();
    assert!(stale.is_empty());
}

fn encounter(id: &str, pid: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": "finished",
        "subject": {"reference": format!("Patient/{pid}")}})
}

fn observation(id: &str, pid: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "subject": {"reference": format!("Patient/{pid}")},
        "encounter": {"reference": "Encounter/e1"}})
}

#[test]
fn everything_returns_the_patient_and_what_references_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .upsert_batch(&[
            observation("o2", "p1"),
            patient("p1", "Nguyễn", &["An"], &[]),
            patient("p2", "Lê", &["Bình"], &[]),
            encounter("e1", "p1"),
            observation("o1", "p1"),
            observation("o3", "p2"),
            json!({"resourceType": "FamilyMemberHistory", "id": "f1", "status": "completed",
                "patient": {"reference": "Patient/p1"}, "relationship": {"text": "mother"}}),
            json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true,
                "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p2"}}]}),
        ])
        .unwrap();
    let all = store.everything("p1").unwrap().unwrap();
    let keys: Vec<String> = all
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            "Patient/p1",
            "Encounter/e1",
            "FamilyMemberHistory/f1",
            "Group/g1",
            "Observation/o1",
            "Observation/o2"
        ]
    );
    let p2: Vec<_> = store
        .everything("p2")
        .unwrap()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(p2, [json!("p2"), json!("g1"), json!("o3")]);
    assert_eq!(store.everything("p9").unwrap(), None);
    assert_eq!(store.everything("bad id").unwrap(), None);
}

#[test]
fn re_pointed_record_leaves_the_old_patient() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .upsert_batch(&[
            patient("p1", "A", &[], &[]),
            patient("p2", "B", &[], &[]),
            observation("o1", "p1"),
        ])
        .unwrap();
    assert_eq!(store.everything("p1").unwrap().unwrap().len(), 2);
    // the result was filed against the wrong patient and corrected
    store.upsert_batch(&[observation("o1", "p2")]).unwrap();
    assert_eq!(store.everything("p1").unwrap().unwrap().len(), 1);
    let p2 = store.everything("p2").unwrap().unwrap();
    assert_eq!(ids(&p2), ["p2", "o1"]);
    // a reference removed altogether
    store
        .upsert_batch(&[json!({"resourceType": "Observation", "id": "o1", "status": "final"})])
        .unwrap();
    assert_eq!(store.everything("p2").unwrap().unwrap().len(), 1);
    assert_eq!(store.count("Observation").unwrap(), 1);
}

#[test]
fn invalid_resources_refuse_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let good = patient("p1", "A", &[], &[]);
    let table: Vec<(Value, &str)> = vec![
        (json!("text"), "invalid resource at position 1 of the batch: not a JSON object but a string"),
        (json!({"id": "x"}), "invalid resource at position 1 of the batch: missing \"resourceType\""),
        (
            json!({"resourceType": "Patient"}),
            "invalid resource at position 1 of the batch: Patient: missing \"id\"",
        ),
        (
            json!({"resourceType": "Patient", "id": 5}),
            "invalid resource at position 1 of the batch: Patient: \"id\" is a number, not a string",
        ),
        (
            json!({"resourceType": "Patient", "id": "a/b"}),
            "invalid resource at position 1 of the batch: Patient: \"id\" \"a/b\" is not a FHIR id ([A-Za-z0-9\\-.]{1,64})",
        ),
        (
            json!({"resourceType": "patient", "id": "x"}),
            "invalid resource at position 1 of the batch: \"resourceType\" \"patient\" is not a FHIR type name ([A-Z][A-Za-z]{0,63})",
        ),
    ];
    for (bad, message) in table {
        let err = store
            .upsert_batch(&[good.clone(), bad.clone()])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidResource { position: 1, .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), message, "for {bad}");
    }
    assert_eq!(
        store.get("Patient", "p1").unwrap(),
        None,
        "nothing of a refused batch is written"
    );
    assert_eq!(store.count("Patient").unwrap(), 0);
}

/// After a failed fdatasync the kernel may have dropped what it could not write, so a
/// later sync that succeeds proves nothing: the store stays failed until it is opened
/// again, and the records written meanwhile are not reported durable.
#[test]
fn a_failed_sync_is_not_forgotten_until_the_store_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .upsert_batch(&[patient("p1", "Đỗ", &["Minh"], &[])])
            .unwrap();
        store.faults().fail_sync(true);
        assert!(matches!(store.sync(), Err(StoreError::Sync { .. })));
        store.faults().fail_sync(false);
        let again = store.sync().unwrap_err();
        assert!(matches!(again, StoreError::SyncFailedBefore { .. }));
        assert!(again.to_string().contains("only a restart"), "{again}");
        assert!(store.is_failing());
    }
    let store = open(dir.path());
    assert!(!store.is_failing());
    store.sync().unwrap();
}

#[test]
fn synced_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .upsert_batch(&[
                patient("p1", "Đỗ", &["Minh"], &[("s", "9")]),
                encounter("e1", "p1"),
            ])
            .unwrap();
        store.sync().unwrap();
        // concurrent syncs take turns
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || s.sync())
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }
    let store = open(dir.path());
    assert_eq!(
        store.get("Patient", "p1").unwrap().unwrap()["name"][0]["family"],
        "Đỗ"
    );
    assert_eq!(by_name(&store, "do minh"), ["p1"]);
    assert_eq!(by_ident(&store, "s|9"), ["p1"]);
    assert_eq!(store.everything("p1").unwrap().unwrap().len(), 2);
    assert_eq!(store.count("Patient").unwrap(), 1);
    assert_eq!(store.count("Encounter").unwrap(), 1);
}

#[test]
fn open_refuses_an_unknown_layout() {
    let dir = tempfile::tempdir().unwrap();
    let db = Store::sled_config(dir.path()).open().unwrap();
    db.open_tree(TREE)
        .unwrap()
        .insert(b"m/layout", b"99")
        .unwrap();
    let err = Store::open(db, dir.path()).err().expect("must refuse");
    assert!(
        matches!(err, StoreError::UnsupportedLayout { .. }),
        "{err:?}"
    );
}

#[test]
fn store_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Store>();
}

#[test]
fn searches_run_while_a_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .upsert_batch(&[patient("p0", "Nguyễn", &["Ngọc"], &[])])
        .unwrap();
    let writer = {
        let s = store.clone();
        std::thread::spawn(move || {
            for i in 1..50 {
                s.upsert_batch(&[patient(&format!("p{i}"), "Nguyễn", &["Ngọc"], &[])])
                    .unwrap();
            }
        })
    };
    for _ in 0..50 {
        let found = by_name(&store, "nguyen ngoc");
        assert!(!found.is_empty());
    }
    writer.join().unwrap();
    assert_eq!(by_name(&store, "nguyen ngoc").len(), 50);
}

#[test]
fn patients_with_many_name_tokens_are_found_without_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let given: Vec<String> = (0..20).map(|i| format!("Tên{i}")).collect();
    let given: Vec<&str> = given.iter().map(String::as_str).collect();
    store
        .upsert_batch(&[
            patient("p1", "Nguyễn", &given, &[]),
            patient("p2", "Nguyễn", &["Tên1", "Tên19"], &[]),
        ])
        .unwrap();
    assert_eq!(by_name(&store, "ten1 ten19"), ["p1", "p2"]);
    assert_eq!(by_name(&store, "nguyen ten7"), ["p1"]);
}

#[test]
fn short_prefixes_with_many_pairs_fall_back_to_a_token_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch: Vec<Value> = (0..80)
        .map(|i| {
            patient(
                &format!("p{i:02}"),
                &format!("Ba{i}"),
                &[&format!("Xa{i}")],
                &[],
            )
        })
        .collect();
    store.upsert_batch(&batch).unwrap();
    assert_eq!(by_name(&store, "ba xa").len(), 80);
    assert_eq!(
        by_name(&store, "ba7 xa7"),
        ["p07", "p70", "p71", "p72", "p73", "p74", "p75", "p76", "p77", "p78", "p79"]
    );
}

/// Every planned search (token scan, pair scan, fallback, limit) must return exactly
/// what a brute-force filter over all patients returns.
#[test]
fn name_search_agrees_with_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let syllables = [
        "Nguyễn", "Ngô", "Ngọc", "Nga", "Thị", "Thanh", "Thảo", "Văn", "Vân", "Đức", "Đào", "Anh",
        "An", "Ánh",
    ];
    let mut seed: u64 = 0x1234_5678;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let mut all = Vec::new();
    for i in 0..400 {
        let family = syllables[next(syllables.len())];
        let given: Vec<&str> = (0..1 + next(3))
            .map(|_| syllables[next(syllables.len())])
            .collect();
        all.push(patient(&format!("p{i:03}"), family, &given, &[]));
    }
    store.upsert_batch(&all).unwrap();
    // rename a tenth of them, so stale entries would show
    let renamed: Vec<Value> = (0..40)
        .map(|i| {
            patient(
                &format!("p{:03}", i * 10),
                syllables[next(syllables.len())],
                &[syllables[next(syllables.len())]],
                &[],
            )
        })
        .collect();
    store.upsert_batch(&renamed).unwrap();
    let current: Vec<Value> = (0..400)
        .map(|i| store.get("Patient", &format!("p{i:03}")).unwrap().unwrap())
        .collect();
    let prefixes = [
        "n", "ng", "ngu", "nguyen", "ngo", "ngoc", "t", "th", "thi", "thanh", "v", "van", "d",
        "duc", "dao", "a", "an", "anh", "z",
    ];
    for _ in 0..300 {
        let k = 1 + next(3);
        let q: Vec<&str> = (0..k).map(|_| prefixes[next(prefixes.len())]).collect();
        let query = q.join(" ");
        let want: Vec<&str> = current
            .iter()
            .filter(|p| {
                let have = index::name_tokens(*p);
                q.iter().all(|t| have.iter().any(|h| h.starts_with(t)))
            })
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        for limit in [0, 7] {
            let got = store
                .search_patients(&PatientQuery {
                    name: Some(query.clone()),
                    limit,
                    ..Default::default()
                })
                .unwrap();
            let cap = if limit == 0 { 100 } else { limit };
            assert_eq!(
                ids(&got),
                want[..want.len().min(cap)],
                "name={query:?} limit={limit}"
            );
        }
    }
}

#[test]
fn patients_and_encounters_keep_elements_a_later_message_does_not_send() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let full = json!({
        "resourceType": "Patient", "id": "p1",
        "name": [{"family": "Nguyễn", "given": ["Ánh"]}],
        "address": [{"city": "Hồ Chí Minh"}],
        "deceasedBoolean": false
    });
    store.upsert_batch(&[full]).unwrap();
    // A lab result's thin PID: no address; a deceased time replaces the boolean.
    let thin = json!({
        "resourceType": "Patient", "id": "p1",
        "name": [{"family": "Nguyễn", "given": ["Ánh"]}],
        "deceasedDateTime": "2026-11-20T10:00:00+07:00"
    });
    store.upsert_batch(&[thin]).unwrap();
    let p = store.get("Patient", "p1").unwrap().unwrap();
    assert_eq!(p["address"][0]["city"], "Hồ Chí Minh");
    assert_eq!(p["deceasedDateTime"], "2026-11-20T10:00:00+07:00");
    assert!(
        p.get("deceasedBoolean").is_none(),
        "one choice type only: {p}"
    );
    // Re-sending the thin version changes nothing more.
    let again = json!({
        "resourceType": "Patient", "id": "p1",
        "name": [{"family": "Nguyễn", "given": ["Ánh"]}],
        "deceasedDateTime": "2026-11-20T10:00:00+07:00"
    });
    assert_eq!(store.upsert_batch(&[again]).unwrap().unchanged, 1);

    // Observations are replaced whole: a corrected result is authoritative.
    store.upsert_batch(&[json!({"resourceType": "Observation", "id": "o1", "valueString": "a", "note": [{"text": "x"}]})]).unwrap();
    store
        .upsert_batch(&[json!({"resourceType": "Observation", "id": "o1", "valueString": "b"})])
        .unwrap();
    let o = store.get("Observation", "o1").unwrap().unwrap();
    assert!(o.get("note").is_none());
}

#[test]
fn merges_follow_links_both_ways_stop_on_cycles_and_are_removed_with_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let link = |id: &str, other: &str, kind: &str| {
        let mut p = patient(id, "Võ", &["An"], &[]);
        p["link"] = json!([{ "other": { "reference": format!("Patient/{other}") }, "type": kind }]);
        p
    };
    // b and c were merged into a (one says replaced-by, the other is named by a's
    // replaces); d into b; and a cycle a <-> e must not loop.
    let mut a = patient("a", "Võ", &["An"], &[]);
    a["link"] = json!([
        { "other": { "reference": "Patient/c" }, "type": "replaces" },
        { "other": { "reference": "Patient/e" }, "type": "replaced-by" }
    ]);
    store
        .upsert_batch(&[
            a,
            link("b", "a", "replaced-by"),
            link("d", "b", "replaced-by"),
            link("e", "a", "replaced-by"),
            link("f", "a", "seealso"),
        ])
        .unwrap();
    let mut family = store.merged_family("a").unwrap();
    assert_eq!(family.remove(0), "a", "the patient itself first");
    family.sort();
    assert_eq!(family, ["b", "c", "d", "e"]);
    assert_eq!(store.merged_family("d").unwrap(), ["d"]);
    let mut e_family = store.merged_family("e").unwrap();
    e_family.sort();
    assert_eq!(e_family, ["a", "b", "c", "d", "e"], "a cycle ends");

    // A link removed (unmerge): the records part again. Patients keep absent elements,
    // so the link is replaced by another kind rather than dropped.
    store.upsert_batch(&[link("b", "a", "seealso")]).unwrap();
    let mut family = store.merged_family("a").unwrap();
    family.sort();
    assert_eq!(family, ["a", "c", "e"]);
}

/// Observations and Encounters with every shape of date (day, month, dateTime points,
/// closed, open and inverted periods, none) and codes with and without a system.
fn clinical_records(next: &mut impl FnMut(usize) -> usize, n: usize, round: usize) -> Vec<Value> {
    let dates = [
        "2024",
        "2024-05",
        "2024-05-12",
        "2024-05-12T08:30:00+07:00",
        "2024-06-01",
        "2023-12-31",
        "2025-01-02T00:00:00+07:00",
        "2024-05-30",
    ];
    let codes = [
        ("http://loinc.org", "2345-7"),
        ("http://loinc.org", "718-7"),
        ("", "2345-7"),
        ("local", "GLU"),
    ];
    (0..n)
        .map(|i| {
            let pick = |next: &mut dyn FnMut(usize) -> usize| dates[next(dates.len())].to_string();
            let (system, code) = codes[next(codes.len())];
            let mut coding = json!({ "code": code });
            if !system.is_empty() {
                coding["system"] = json!(system);
            }
            let id = format!("r{i:03}");
            let subject = json!({ "reference": format!("Patient/p{}", i % 7) });
            if i % 3 == 0 {
                let mut period = serde_json::Map::new();
                match next(4) {
                    0 => {
                        period.insert("start".into(), json!(pick(next)));
                    }
                    1 => {
                        period.insert("start".into(), json!(pick(next)));
                        period.insert("end".into(), json!(pick(next)));
                    }
                    2 => {
                        period.insert("end".into(), json!(pick(next)));
                    }
                    _ => {}
                }
                json!({"resourceType": "Encounter", "id": id, "subject": subject,
                       "type": [{ "coding": [coding] }], "period": period, "round": round})
            } else {
                let mut o = json!({"resourceType": "Observation", "id": id, "subject": subject,
                                   "code": { "coding": [coding] }, "round": round});
                match next(3) {
                    0 => o["effectiveDateTime"] = json!(pick(next)),
                    1 => o["effectivePeriod"] = json!({"start": pick(next), "end": pick(next)}),
                    _ => {}
                }
                o
            }
        })
        .collect()
}

#[test]
fn clinical_search_without_a_patient_agrees_with_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut seed: u64 = 0x5eed_1234;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    store
        .upsert_batch(&clinical_records(&mut next, 300, 0))
        .unwrap();
    // Write them all again with other dates and codes: stale keys would show.
    store
        .upsert_batch(&clinical_records(&mut next, 300, 1))
        .unwrap();
    let values = [
        "2024",
        "2024-05",
        "2024-05-12",
        "2024-05-12T08:30",
        "2024-05-12T08:30:00+07:00",
        "2023",
        "2025-01",
        "2024-06-01",
        "2024-05-3",
    ];
    let prefixes = ["", "eq", "ne", "ge", "le", "gt", "lt"];
    let code_queries = [
        "2345-7",
        "http://loinc.org|2345-7",
        "|2345-7",
        "718-7",
        "local|GLU",
        "nope",
    ];
    let check = |q: &ClinicalQuery| {
        for (offset, count) in [(0, 1000), (3, 5)] {
            let by_keys = store.search_clinical(q, offset, count).unwrap();
            let by_scan = store.search_clinical_by_scan(q, offset, count).unwrap();
            assert_eq!(by_keys.total, by_scan.total, "{q:?}");
            assert_eq!(ids(&by_keys.resources), ids(&by_scan.resources), "{q:?}");
        }
    };
    let mut nonempty = 0;
    for _ in 0..400 {
        let mut q = ClinicalQuery {
            resource_type: ["Observation", "Encounter"][next(2)].into(),
            order: [DateOrder::Ascending, DateOrder::Descending][next(2)],
            ..Default::default()
        };
        for _ in 0..next(3) {
            let text = format!(
                "{}{}",
                prefixes[next(prefixes.len())],
                values[next(values.len())]
            );
            if let Ok(f) = DateFilter::parse(&text) {
                q.dates.push(f);
            }
        }
        for _ in 0..next(3) {
            q.codes
                .push(TokenQuery::parse(code_queries[next(code_queries.len())]));
        }
        check(&q);
        if store.search_clinical(&q, 0, 1).unwrap().total > 0 {
            nonempty += 1;
        }
    }
    assert!(nonempty > 100, "the queries find something: {nonempty}");
}

#[test]
fn clinical_keys_follow_updates_and_are_added_to_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let q = |code: &str, date: &str| ClinicalQuery {
        resource_type: "Observation".into(),
        codes: vec![TokenQuery::parse(code)],
        dates: vec![DateFilter::parse(date).unwrap()],
        ..Default::default()
    };
    let obs = |code: &str, date: &str| {
        json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
               "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "effectiveDateTime": date})
    };
    {
        let store = open(dir.path());
        store.upsert_batch(&[obs("2345-7", "2024-05-12")]).unwrap();
        assert_eq!(
            store
                .search_clinical(&q("2345-7", "2024-05"), 0, 10)
                .unwrap()
                .total,
            1
        );
        // A corrected result: other code and date. The old keys go.
        store.upsert_batch(&[obs("718-7", "2024-06-01")]).unwrap();
        assert_eq!(
            store
                .search_clinical(&q("2345-7", "ge2000"), 0, 10)
                .unwrap()
                .total,
            0
        );
        assert_eq!(
            store
                .search_clinical(&q("718-7", "2024-05"), 0, 10)
                .unwrap()
                .total,
            0
        );
        assert_eq!(
            store
                .search_clinical(&q("718-7", "ge2024-06"), 0, 10)
                .unwrap()
                .total,
            1
        );
        // A layout 1 store: written before these keys existed.
        let tree = &store.inner.tree;
        for prefix in [
            index::CODE,
            index::POINT,
            index::SPAN_START,
            index::SPAN_END,
        ] {
            for k in tree.scan_prefix(prefix).keys() {
                tree.remove(k.unwrap()).unwrap();
            }
        }
        tree.insert(
            index::LAYOUT_KEY,
            index::LAYOUT_WITHOUT_CLINICAL_KEYS.as_bytes(),
        )
        .unwrap();
        assert_eq!(
            store
                .search_clinical(&q("718-7", "ge2024-06"), 0, 10)
                .unwrap()
                .total,
            0
        );
        store.sync().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        store
            .search_clinical(&q("718-7", "ge2024-06"), 0, 10)
            .unwrap()
            .total,
        1
    );
    assert_eq!(
        store
            .inner
            .tree
            .get(index::LAYOUT_KEY)
            .unwrap()
            .unwrap()
            .as_ref(),
        index::LAYOUT_VERSION.as_bytes()
    );
}

#[test]
fn times_in_another_zone_are_found_by_instant_without_a_patient() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let obs = |id: &str, date: &str| {
        json!({"resourceType": "Observation", "id": id, "subject": {"reference": "Patient/p1"},
               "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
               "effectiveDateTime": date})
    };
    let enc = json!({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"},
                     "period": {"start": "2024-01-02T06:00:00+07:00", "end": "2024-01-02T06:45:00+07:00"}});
    // 06:30 in Hà Nội is 23:30 UTC the day before; 2024-01-03 01:00 is still 2 January in UTC.
    store
        .upsert_batch(&[
            obs("early", "2024-01-02T06:30:00+07:00"),
            obs("late", "2024-01-03T01:00:00+07:00"),
            enc,
        ])
        .unwrap();
    let found = |rt: &str, dates: &[&str]| -> Vec<String> {
        let q = ClinicalQuery {
            resource_type: rt.into(),
            dates: dates
                .iter()
                .map(|d| DateFilter::parse(d).unwrap())
                .collect(),
            ..Default::default()
        };
        let page = store.search_clinical(&q, 0, 10).unwrap();
        let by_scan = store.search_clinical_by_scan(&q, 0, 10).unwrap();
        let ids: Vec<String> = page
            .resources
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(page.total, by_scan.total, "{dates:?}");
        ids
    };
    assert_eq!(
        found(
            "Observation",
            &["ge2024-01-01T23:30:00Z", "lt2024-01-02T00:00:00Z"]
        ),
        ["early"]
    );
    assert_eq!(
        found(
            "Observation",
            &["ge2024-01-02T00:00:00Z", "le2024-01-02T23:59:59Z"]
        ),
        ["late"]
    );
    assert_eq!(found("Observation", &["eq2024-01-02T18:00Z"]), ["late"]);
    assert_eq!(
        found("Observation", &["eq2024-01-02T18:01Z"]),
        Vec::<String>::new()
    );
    assert_eq!(found("Observation", &["eq2024-01-02T18:00:00Z"]), ["late"]);
    // A period reaches an instant in another zone.
    assert_eq!(found("Encounter", &["ge2024-01-01T23:40:00Z"]), ["e1"]);
    assert_eq!(
        found("Encounter", &["ge2024-01-01T23:46:00Z"]),
        Vec::<String>::new()
    );
    assert_eq!(found("Encounter", &["le2024-01-01T23:00:00Z"]), ["e1"]);
    assert_eq!(
        found("Encounter", &["lt2024-01-01T23:00:00Z"]),
        Vec::<String>::new()
    );
}

#[test]
fn codes_too_long_for_a_key_are_kept_out_of_the_index_and_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long = "9".repeat(600);
    let obs = |id: &str, system: &str, code: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
               "code": {"coding": [{"system": system, "code": code}]}})
    };
    store
        .upsert_batch(&[
            obs("long-code", "http://loinc.org", &long),
            obs("long-system", &format!("urn:x:{long}"), "2345-7"),
            obs("nul", "http://loinc.org", "a\0b"),
            obs("plain", "http://loinc.org", "2345-7"),
        ])
        .unwrap();
    // No key holds a value past the limit.
    let longest = store
        .inner
        .tree
        .iter()
        .keys()
        .flatten()
        .map(|k| k.len())
        .max();
    assert!(longest.is_some_and(|n| n < 600), "{longest:?}");
    let found = |token: &str| -> Vec<String> {
        let q = ClinicalQuery {
            resource_type: "Observation".into(),
            codes: vec![TokenQuery::parse(token)],
            ..Default::default()
        };
        let page = store.search_clinical(&q, 0, 10).unwrap();
        let by_scan = store.search_clinical_by_scan(&q, 0, 10).unwrap();
        let ids = |p: &Page| -> Vec<String> {
            let mut v: Vec<String> = p
                .resources
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(&page), ids(&by_scan), "{token:?}");
        ids(&page)
    };
    assert_eq!(found(&long), ["long-code"]);
    assert_eq!(found(&format!("http://loinc.org|{long}")), ["long-code"]);
    assert_eq!(found("2345-7"), ["long-system", "plain"]);
    assert_eq!(found(&format!("urn:x:{long}|2345-7")), ["long-system"]);
    assert_eq!(found("http://loinc.org|2345-7"), ["plain"]);
    assert!(found("|2345-7").is_empty());
    assert_eq!(found("a\0b"), ["nul"]);
}

#[test]
fn a_record_again_from_a_later_message_keeps_its_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let from = |mut r: Value, source: &str| {
        r["meta"] = json!({ "source": source });
        r
    };
    let p = patient("p1", "Trần", &["Văn", "An"], &[("s", "1")]);
    let e = encounter("e1", "p1");
    store
        .upsert_batch(&[from(p.clone(), "mllp:lab/1"), from(e.clone(), "mllp:lab/1")])
        .unwrap();
    // The next result repeats both; only where they came from changes (with a quote
    // escaped in it, which must not end the comparison early).
    let again = [
        from(p.clone(), "mllp:lab/\"2\""),
        from(e.clone(), "mllp:lab/\"2\""),
    ];
    assert_eq!(
        store.upsert_batch(&again).unwrap(),
        UpsertStats {
            written: 2,
            unchanged: 0,
            kept: Vec::new()
        }
    );
    assert_eq!(store.get("Patient", "p1").unwrap(), Some(again[0].clone()));
    assert_eq!(store.count("Patient").unwrap(), 1);
    assert_eq!(by_name(&store, "tran van"), ["p1"]);
    assert_eq!(by_ident(&store, "s|1"), ["p1"]);
    let everything = store.everything("p1").unwrap().unwrap();
    assert_eq!(ids(&everything), ["p1", "e1"]);
    // A change beside the source still updates the index.
    let renamed = from(
        patient("p1", "Lê", &["Văn", "An"], &[("s", "1")]),
        "mllp:lab/3",
    );
    store.upsert_batch(&[renamed]).unwrap();
    assert!(by_name(&store, "tran").is_empty());
    assert_eq!(by_name(&store, "le van"), ["p1"]);
}

/// Index entries a caller worked out are taken for a record written as given, and
/// worked out anew for a record the store changes first (a merge with the stored one).
#[test]
fn given_index_entries_are_used_only_for_records_written_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = patient("p1", "Nguyễn", &["Thị", "Ngọc"], &[]);
    let record = crate::record::Record::from_value(&first).unwrap();
    let mut entries = super::index_entries_of_record(&record).unwrap();
    assert!(!entries.is_empty());
    // A key only the given entries have shows which entries were written.
    entries.insert(b"x/given".to_vec(), Vec::new());
    store
        .upsert_batch_encoded([(&first, None, Some(&entries))])
        .unwrap();
    assert_eq!(by_name(&store, "ngoc"), ["p1"]);
    assert!(store.inner.tree.get(b"x/given").unwrap().is_some());

    // A later version is merged with the stored one (a Patient keeps the elements the
    // new version lacks), so what is written is not what was given: the store works
    // out its entries itself. The given ones here are deliberately empty.
    let mut second = patient("p1", "Trần", &["Văn"], &[]);
    second["gender"] = json!("male");
    let nothing = super::IndexEntries::new();
    store
        .upsert_batch_encoded([(&second, None, Some(&nothing))])
        .unwrap();
    assert_eq!(by_name(&store, "tran van"), ["p1"]);
    assert!(by_name(&store, "ngoc").is_empty());
}
