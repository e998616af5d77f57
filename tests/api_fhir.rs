//! `/fhir` over HTTP against a real engine and record store: every search parameter
//! and modifier, paging with `next` links, `_sort`, `total`, OperationOutcome errors,
//! `$everything` in date order, and patient merges.

mod api_helpers;

use std::time::Duration;

use api_helpers::*;
use serde_json::{json, Value};

fn patient(
    id: &str,
    family: &str,
    given: &[&str],
    gender: &str,
    birth: &str,
    idents: &[(&str, &str)],
) -> Value {
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
        "resourceType": "Patient", "id": id,
        "identifier": identifier,
        "name": [{ "family": family, "given": given, "text": format!("{family} {}", given.join(" ")) }],
        "gender": gender, "birthDate": birth
    })
}

fn seed_patients(engine: &halong::engine::Engine) {
    engine
        .store
        .upsert_batch(&[
            patient(
                "p1",
                "Nguyễn",
                &["Thị", "Ngọc", "Ánh"],
                "female",
                "1990-02-15",
                &[
                    ("urn:oid:cccd", "079190000001"),
                    ("urn:oid:bhyt", "DN4790000000001"),
                ],
            ),
            patient(
                "p2",
                "Nguyễn",
                &["Văn", "Nam"],
                "male",
                "1985-07-04",
                &[("urn:oid:cccd", "079185000002")],
            ),
            patient(
                "p3",
                "Trần",
                &["Ngọc", "Lan"],
                "female",
                "1990-11-30",
                &[("", "555")],
            ),
            patient("p4", "Lê", &["Thanh"], "other", "2001-01-01", &[]),
            patient("p5", "Phạm", &["Nguyên", "Khôi"], "male", "1990-02-20", &[]),
        ])
        .unwrap();
}

fn search(http: std::net::SocketAddr, query: &str) -> Vec<String> {
    let (code, b) = get(http, &format!("/fhir/Patient?{query}"));
    assert_eq!(code, 200, "{query}: {b}");
    assert_eq!(b["resourceType"], "Bundle");
    ids(&b)
}

#[test]
fn patient_search_parameters_and_modifiers() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    seed_patients(&engine);
    let http = engine.http_addr;
    let table: Vec<(String, &[&str])> = vec![
        // name: start of any part, case and accents ignored
        ("name=nguyen".into(), &["p1", "p2", "p5"]),
        (format!("name={}", enc("NGUYỄN THỊ")), &["p1"]),
        ("name=ngoc".into(), &["p1", "p3"]),
        ("name=hoi".into(), &[]),
        // :exact: whole part or whole name, with case and diacritics
        (
            format!("name:exact={}", enc("Nguyễn Thị Ngọc Ánh")),
            &["p1"],
        ),
        (format!("name:exact={}", enc("Nguyễn")), &["p1", "p2"]),
        ("name:exact=Nguyen".into(), &[]),
        (format!("name:exact={}", enc("nguyễn thị ngọc ánh")), &[]),
        // :contains: anywhere inside a part
        ("name:contains=guy".into(), &["p1", "p2", "p5"]),
        ("name:contains=hoi".into(), &["p5"]),
        (format!("name:contains={}", enc("ANH ngo")), &["p1"]),
        // identifier: value, system|value, |value
        ("identifier=079190000001".into(), &["p1"]),
        (
            format!("identifier={}", enc("urn:oid:cccd|079190000001")),
            &["p1"],
        ),
        (
            format!("identifier={}", enc("urn:oid:bhyt|079190000001")),
            &[],
        ),
        (format!("identifier={}", enc("|555")), &["p3"]),
        ("identifier=555".into(), &["p3"]),
        ("identifier=0791".into(), &[]),
        // birthdate with precision and prefixes
        ("birthdate=1990".into(), &["p1", "p3", "p5"]),
        ("birthdate=1990-02".into(), &["p1", "p5"]),
        ("birthdate=1990-02-15".into(), &["p1"]),
        ("birthdate=eq1990-02-15".into(), &["p1"]),
        ("birthdate=ge1990-02-16".into(), &["p3", "p4", "p5"]),
        ("birthdate=le1990-02-15".into(), &["p1", "p2"]),
        ("birthdate=ge1990&birthdate=le1990-06".into(), &["p1", "p5"]),
        ("birthdate=lt1990".into(), &["p2"]),
        ("birthdate=gt1990-12".into(), &["p4"]),
        // gender, and everything combined
        ("gender=female".into(), &["p1", "p3"]),
        ("gender=male&name=nguyen".into(), &["p2", "p5"]),
        (
            "name=ngoc&gender=female&birthdate=1990".into(),
            &["p1", "p3"],
        ),
        ("identifier=079185000002&gender=female".into(), &[]),
    ];
    for (query, want) in &table {
        assert_eq!(search(http, query), *want, "/fhir/Patient?{query}");
    }

    // Errors are OperationOutcomes.
    let bad: [(&str, u16, &str); 9] = [
        ("/fhir/Patient?nam=x", 400, "did you mean 'name'"),
        ("/fhir/Patient?birthdate=15/02/1990", 400, "YYYY-MM-DD"),
        (
            "/fhir/Patient?birthdate=1990-02-30",
            400,
            "'1990-02-30' is not a date: 1990-02 has no day 30",
        ),
        (
            "/fhir/Patient?gender=f",
            400,
            "male, female, other, unknown",
        ),
        ("/fhir/Patient?_count=0", 400, "_count"),
        ("/fhir/Patient?name=a&name:exact=b", 400, "one of name"),
        ("/fhir/Patient/nobody", 404, "Patient/nobody"),
        ("/fhir/Medication?code=x", 404, "cannot be searched"),
        ("/fhir/Patient/nobody/$everything", 404, "Patient/nobody"),
    ];
    for (path, code, text) in bad {
        let (c, b) = get(http, path);
        assert_eq!(c, code, "{path}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome", "{path}");
        let diag = b["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diag.contains(text), "{path}: {diag}");
    }
    let (c, b) = get(http, "/fhir/Patient/p3");
    assert_eq!((c, b["id"].as_str()), (200, Some("p3")));
    rt.block_on(engine.shutdown());
}

#[test]
fn patient_pages_follow_next_links_and_total() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    let http = engine.http_addr;
    let many: Vec<Value> = (0..7)
        .map(|i| {
            patient(
                &format!("h{i}"),
                "Hoàng",
                &["Minh", &format!("T{i}")],
                "male",
                "1970-01-01",
                &[],
            )
        })
        .collect();
    engine.store.upsert_batch(&many).unwrap();

    let (_, first) = get(
        http,
        "/fhir/Patient?name=hoang%20minh&_count=3&_total=accurate",
    );
    assert_eq!(first["total"], 7, "_total=accurate counts every match");
    let mut seen = ids(&first);
    assert_eq!(seen.len(), 3);
    let mut next = next_link(&first);
    let mut pages = 1;
    while let Some(link) = next {
        let (code, page) = get(http, &link);
        assert_eq!(code, 200, "{link}");
        assert!(page["total"].is_null(), "later pages do not recount");
        seen.extend(ids(&page));
        next = next_link(&page);
        pages += 1;
        assert!(pages <= 3, "three pages of 3, 3 and 1");
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..7).map(|i| format!("h{i}")).collect();
    assert_eq!(seen, want, "every patient exactly once, in id order");

    // A page that holds the whole answer says its total without being asked.
    let (_, all) = get(http, "/fhir/Patient?name=hoang&_count=10");
    assert_eq!(all["total"], 7);
    assert!(next_link(&all).is_none());
    rt.block_on(engine.shutdown());
}

fn clinical_records() -> Vec<Value> {
    let loinc = |code: &str| json!({ "coding": [{ "system": "http://loinc.org", "code": code }] });
    let subj = |p: &str| json!({ "reference": format!("Patient/{p}") });
    vec![
        json!({"resourceType": "Encounter", "id": "e1", "subject": subj("p1"), "status": "finished",
               "type": [{"coding": [{"code": "IMP"}]}], "period": {"start": "2024-01-05T08:00:00+07:00", "end": "2024-01-09T10:00:00+07:00"}}),
        json!({"resourceType": "Encounter", "id": "e2", "subject": subj("p1"), "status": "in-progress",
               "period": {"start": "2024-03-10T07:00:00+07:00"}}),
        json!({"resourceType": "Observation", "id": "o1", "subject": subj("p1"), "status": "final",
               "code": loinc("2345-7"), "effectiveDateTime": "2024-01-06T09:00:00+07:00"}),
        json!({"resourceType": "Observation", "id": "o2", "subject": subj("p1"), "status": "final",
               "code": loinc("2345-7"), "effectiveDateTime": "2024-03-11T10:00:00+07:00"}),
        json!({"resourceType": "Observation", "id": "o3", "subject": subj("p1"), "status": "final",
               "code": loinc("4548-4"), "effectiveDateTime": "2024-02-01"}),
        json!({"resourceType": "Observation", "id": "o4", "subject": subj("p2"), "status": "final",
               "code": loinc("2345-7"), "effectiveDateTime": "2024-01-06T09:00:00+07:00"}),
        json!({"resourceType": "DiagnosticReport", "id": "d1", "subject": subj("p1"), "status": "final",
               "code": loinc("24331-1"), "effectiveDateTime": "2024-01-06", "result": [{"reference": "Observation/o1"}]}),
        json!({"resourceType": "ServiceRequest", "id": "s1", "subject": subj("p1"), "status": "active", "intent": "order",
               "code": loinc("2345-7"), "authoredOn": "2024-01-05"}),
        json!({"resourceType": "ImagingStudy", "id": "i1", "subject": subj("p1"), "status": "available",
               "started": "2024-02-15T14:00:00+07:00",
               "series": [{"uid": "1.2.3", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}}]}),
        json!({"resourceType": "DocumentReference", "id": "doc1", "subject": subj("p1"), "status": "current",
               "type": loinc("18842-5"), "date": "2024-03-12T00:00:00+07:00"}),
    ]
}

fn bundle_ids(http: std::net::SocketAddr, path: &str) -> (Vec<String>, Value) {
    let (code, b) = get(http, path);
    assert_eq!(code, 200, "{path}: {b}");
    (ids(&b), b["total"].clone())
}

#[test]
fn clinical_search_by_patient_date_code_sort_and_paging() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    seed_patients(&engine);
    engine.store.upsert_batch(&clinical_records()).unwrap();
    let http = engine.http_addr;
    let table: Vec<(&str, &[&str])> = vec![
        ("/fhir/Observation?patient=p1", &["o1", "o3", "o2"]),
        ("/fhir/Observation?subject=Patient/p1", &["o1", "o3", "o2"]),
        (
            "/fhir/Observation?patient=Patient/p1&_sort=-date",
            &["o2", "o3", "o1"],
        ),
        (
            "/fhir/Observation?patient=p1&_sort=date",
            &["o1", "o3", "o2"],
        ),
        (
            "/fhir/Observation?patient=p1&code=http://loinc.org%7C2345-7",
            &["o1", "o2"],
        ),
        ("/fhir/Observation?patient=p1&code=2345-7", &["o1", "o2"]),
        ("/fhir/Observation?patient=p1&code=other%7C2345-7", &[]),
        ("/fhir/Observation?patient=p1&code=%7C2345-7", &[]),
        (
            "/fhir/Observation?patient=p1&code=2345-7,4548-4",
            &["o1", "o3", "o2"],
        ),
        (
            "/fhir/Observation?patient=p1&date=ge2024-02&date=lt2024-03-11",
            &["o3"],
        ),
        ("/fhir/Observation?patient=p1&date=2024-01", &["o1"]),
        ("/fhir/Observation?patient=p1&date=2024-03-11", &["o2"]),
        ("/fhir/Observation?patient=p1&date=gt2024-02-01", &["o2"]),
        ("/fhir/Observation?code=2345-7", &["o1", "o4", "o2"]),
        ("/fhir/Observation?patient=p2", &["o4"]),
        ("/fhir/Observation?patient=p4", &[]),
        ("/fhir/Encounter?patient=p1", &["e1", "e2"]),
        ("/fhir/Encounter?patient=p1&date=le2024-02", &["e1"]),
        ("/fhir/Encounter?patient=p1&date=2024-01-07", &[]),
        ("/fhir/Encounter?patient=p1&date=ge2030", &["e2"]),
        ("/fhir/Encounter?patient=p1&code=IMP", &["e1"]),
        ("/fhir/DiagnosticReport?patient=p1", &["d1"]),
        (
            "/fhir/DiagnosticReport?patient=p1&code=24331-1&date=2024-01-06",
            &["d1"],
        ),
        ("/fhir/ServiceRequest?subject=p1&code=2345-7", &["s1"]),
        ("/fhir/ServiceRequest?patient=p1&date=2024-02", &[]),
        ("/fhir/ImagingStudy?patient=p1&code=CT", &["i1"]),
        ("/fhir/ImagingStudy?patient=p1&date=2024-02-15", &["i1"]),
        ("/fhir/DocumentReference?patient=p1&date=2024-03", &["doc1"]),
        (
            "/fhir/DocumentReference?patient=p1&code=http://loinc.org%7C18842-5",
            &["doc1"],
        ),
    ];
    for (path, want) in &table {
        let (got, total) = bundle_ids(http, path);
        assert_eq!(got, *want, "{path}");
        assert_eq!(total, want.len(), "{path}: total");
    }

    // Paging: _count with next links; total is every match.
    let (_, page1) = get(http, "/fhir/Observation?patient=p1&_count=2");
    assert_eq!(ids(&page1), ["o1", "o3"]);
    assert_eq!(page1["total"], 3);
    let next = next_link(&page1).expect("a next link");
    assert!(
        next.contains("_offset=2") && next.contains("patient=p1"),
        "{next}"
    );
    let (_, page2) = get(http, &next);
    assert_eq!(ids(&page2), ["o2"]);
    assert!(
        next_link(&page2).is_none(),
        "the last page has no next link"
    );

    let bad: [(&str, &str); 5] = [
        ("/fhir/Observation?patinet=p1", "did you mean 'patient'"),
        ("/fhir/Observation?patient=p1&date=2024-13x", "not a date"),
        ("/fhir/Observation?patient=p1&_sort=code", "date or -date"),
        ("/fhir/Observation?patient=p1&subject=p1", "not both"),
        (
            "/fhir/Encounter?patient=Practitioner/x",
            "not a patient reference",
        ),
    ];
    for (path, text) in bad {
        let (c, b) = get(http, path);
        assert_eq!(c, 400, "{path}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome");
        let diag = b["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diag.contains(text), "{path}: {diag}");
    }
    rt.block_on(engine.shutdown());
}

/// The start of each entry's date, for order checks (the patient has none).
fn entry_dates(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| halong::store::record_date_range(&e["resource"]).map(|(lo, _)| lo))
        .collect()
}

#[test]
fn everything_is_in_date_order_and_paged() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    seed_patients(&engine);
    engine.store.upsert_batch(&clinical_records()).unwrap();
    let http = engine.http_addr;

    let (_, all) = get(http, "/fhir/Patient/p1/$everything");
    assert_eq!(all["total"], 10, "the patient and its nine records");
    assert_eq!(
        ids(&all),
        ["p1", "s1", "e1", "d1", "o1", "o3", "i1", "e2", "o2", "doc1"]
    );
    let dates = entry_dates(&all);
    assert!(
        dates.windows(2).all(|w| w[0] <= w[1]),
        "date order: {dates:?}"
    );

    let mut paged = Vec::new();
    let mut link = Some("/fhir/Patient/p1/$everything?_count=4".to_string());
    while let Some(l) = link {
        let (code, page) = get(http, &l);
        assert_eq!(code, 200);
        assert_eq!(page["total"], 10);
        assert!(ids(&page).len() <= 4);
        paged.extend(ids(&page));
        link = next_link(&page);
    }
    assert_eq!(paged, ids(&all), "pages add up to the whole history");
    rt.block_on(engine.shutdown());
}

#[test]
fn merged_patient_records_show_under_the_survivor() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    seed_patients(&engine);
    engine.store.upsert_batch(&clinical_records()).unwrap();
    let http = engine.http_addr;
    // p9 was registered twice; an A40 merged it into p1.
    let mut p9 = patient(
        "p9",
        "Nguyễn",
        &["Thị", "Ánh"],
        "female",
        "1990-02-15",
        &[("urn:oid:bhyt", "OLD-9")],
    );
    p9["active"] = json!(false);
    p9["link"] = json!([{ "other": { "reference": "Patient/p1" }, "type": "replaced-by" }]);
    let o9 = json!({"resourceType": "Observation", "id": "o9", "subject": {"reference": "Patient/p9"},
        "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "effectiveDateTime": "2023-12-01T08:00:00+07:00"});
    let e9 = json!({"resourceType": "Encounter", "id": "e9", "subject": {"reference": "Patient/p9"},
        "status": "finished", "period": {"start": "2023-11-30"}});
    engine.store.upsert_batch(&[p9, o9, e9]).unwrap();

    let (got, total) = bundle_ids(http, "/fhir/Observation?patient=p1");
    assert_eq!(
        got,
        ["o9", "o1", "o3", "o2"],
        "the survivor's search includes the merged patient's records"
    );
    assert_eq!(total, 4);
    let (got, _) = bundle_ids(http, "/fhir/Observation?patient=p1&code=2345-7&date=lt2024");
    assert_eq!(got, ["o9"]);
    let (got, _) = bundle_ids(http, "/fhir/Observation?patient=p9");
    assert_eq!(
        got,
        ["o9"],
        "the merged patient does not gather the survivor's records"
    );

    let (_, all) = get(http, "/fhir/Patient/p1/$everything");
    let got = ids(&all);
    assert_eq!(
        &got[..2],
        ["p1", "p9"],
        "the survivor, then the merged patient"
    );
    assert_eq!(
        &got[2..4],
        ["e9", "o9"],
        "the merged patient's records in date order"
    );
    assert_eq!(all["total"], 13);
    let (_, merged) = get(http, "/fhir/Patient/p9");
    assert_eq!(merged["link"][0]["other"]["reference"], "Patient/p1");

    // The survivor may carry the link instead ("replaces"): same result.
    let mut p5 = engine.store.get("Patient", "p5").unwrap().unwrap();
    p5["link"] = json!([{ "other": { "reference": "Patient/p4" }, "type": "replaces" }]);
    let o4b = json!({"resourceType": "Observation", "id": "o4b", "subject": {"reference": "Patient/p4"},
        "status": "final", "code": {"coding": [{"code": "x"}]}, "effectiveDateTime": "2024-05-01"});
    engine.store.upsert_batch(&[p5, o4b]).unwrap();
    let (got, _) = bundle_ids(http, "/fhir/Observation?patient=p5");
    assert_eq!(got, ["o4b"]);
    rt.block_on(engine.shutdown());
}

#[test]
fn hl7_messages_become_searchable_clinical_records() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    let his = engine.listener_addr("his").unwrap();
    let lab = engine.listener_addr("lab").unwrap();
    assert_eq!(
        msa_code(&mllp_send(his, &sample("adt_a01_nguyen_thi_ngoc_anh.hl7"))),
        "CA"
    );
    assert_eq!(
        msa_code(&mllp_send(
            lab,
            &sample("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7")
        )),
        "AA"
    );
    for id in [1, 2] {
        assert_eq!(
            engine.journal.wait_settled(id, Duration::from_secs(30)),
            Some(halong::journal::Status::Stored)
        );
    }
    let (_, found) = get(engine.http_addr, "/fhir/Patient?identifier=079190000001");
    let pid = ids(&found).pop().expect("the patient");
    let (obs, total) = bundle_ids(
        engine.http_addr,
        &format!("/fhir/Observation?patient={pid}"),
    );
    assert_eq!(total, obs.len());
    assert!(obs.len() >= 4, "the CBC's observations: {obs:?}");
    let (reports, _) = bundle_ids(
        engine.http_addr,
        &format!("/fhir/DiagnosticReport?subject=Patient/{pid}"),
    );
    assert_eq!(reports.len(), 1);
    let (enc_ids, _) = bundle_ids(
        engine.http_addr,
        &format!("/fhir/Encounter?patient={pid}&date=ge2026-11&date=lt2026-12"),
    );
    assert_eq!(
        enc_ids.len(),
        1,
        "the admission's encounter (still open), by month"
    );
    rt.block_on(engine.shutdown());
}

/// The laboratory corrects a result it had sent (a new message, new control id, the
/// result's status C): the corrected value replaces the first in the patient's record,
/// never sits beside it as a second result a clinician could read.
#[test]
fn a_corrected_result_replaces_the_first() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    let lab = engine.listener_addr("lab").unwrap();
    let first = String::from_utf8(sample("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7")).unwrap();
    let corrected = first
        .replace("|LAB0001|P|", "|LAB0001C|P|")
        .replace("20261120102500+0700|||F", "20261120113000+0700|||C")
        .replace(
            "||11.2|10*3/uL|4.0-10.0|H|||F|",
            "||9.8|10*3/uL|4.0-10.0|N|||C|",
        );
    assert_ne!(corrected, first);
    for (id, msg) in [(1, &first), (2, &corrected)] {
        assert_eq!(msa_code(&mllp_send(lab, msg.as_bytes())), "AA");
        assert_eq!(
            engine.journal.wait_settled(id, Duration::from_secs(30)),
            Some(halong::journal::Status::Stored)
        );
    }
    let (_, found) = get(engine.http_addr, "/fhir/Patient?identifier=079190000001");
    let pid = ids(&found).pop().expect("the patient");
    let (_, bundle) = get(
        engine.http_addr,
        &format!("/fhir/Observation?patient={pid}&_count=100"),
    );
    let results: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let codes: Vec<&Value> = results
        .iter()
        .map(|r| &r["code"]["coding"][0]["code"])
        .collect();
    assert_eq!(results.len(), 4, "one result per OBX: {codes:?}");
    let wbc: Vec<&&Value> = results
        .iter()
        .filter(|r| r["code"]["coding"][0]["code"] == "6690-2")
        .collect();
    assert_eq!(wbc.len(), 1, "the white cell count once");
    assert_eq!(wbc[0]["valueQuantity"]["value"], json!(9.8));
    assert_eq!(wbc[0]["status"], "corrected");
    let (_, reports) = get(
        engine.http_addr,
        &format!("/fhir/DiagnosticReport?subject=Patient/{pid}"),
    );
    let reports = ids(&reports);
    assert_eq!(reports.len(), 1);
    let (_, report) = get(
        engine.http_addr,
        &format!("/fhir/DiagnosticReport/{}", reports[0]),
    );
    assert_eq!(report["status"], "corrected");
    rt.block_on(engine.shutdown());
}

/// Two hospitals number their patients independently. Without an assigning authority
/// (PID-3.4), a number is the sending facility's (MSH-4): the same number from two
/// hospitals is two patients, from one hospital one.
#[test]
fn a_patient_number_without_authority_belongs_to_its_facility() {
    let rt = runtime();
    let site = Site::new("", "");
    let engine = rt.block_on(site.start());
    let his = engine.listener_addr("his").unwrap();
    let adt = |facility: &str, control: &str, family: &str, given: &str| {
        format!(
            "MSH|^~\\&|HIS|{facility}|HALONG|SO_Y_TE|20261126080000+0700||ADT^A04^ADT_A01|{control}|P|2.5\r\
EVN|A04|20261126080000+0700\r\
PID|1||BN004321^^^^MR||{family}^{given}||19800101|M\r\
PV1|1|O|KB^01\r"
        )
    };
    let messages = [
        adt("BVDK_TINH", "A1", "Trần", "Văn Nam"),
        adt("TTYT_HUYEN", "B1", "Lê", "Thị Hoa"),
        adt("BVDK_TINH", "A2", "Trần", "Văn Nam"),
    ];
    for (id, msg) in (1..).zip(&messages) {
        let code = msa_code(&mllp_send(his, msg.as_bytes()));
        assert!(code == "AA" || code == "CA", "{code}");
        assert_eq!(
            engine.journal.wait_settled(id, Duration::from_secs(30)),
            Some(halong::journal::Status::Stored)
        );
    }
    let (_, found) = get(engine.http_addr, "/fhir/Patient?identifier=BN004321");
    let mut names: Vec<String> = found["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["name"][0]["family"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["Lê", "Trần"]);
    rt.block_on(engine.shutdown());
}

/// A sender that leaves MSH-4 empty belongs to the facility its listener is given: the
/// Patient's id is the one `hash(facility, number)` gives, as for a sender that names it.
#[test]
fn an_empty_sending_facility_is_the_listeners() {
    use sha2::Digest;
    let rt = runtime();
    let site = Site::new("", "facility = \"TTYT_HUYEN\"");
    let engine = rt.block_on(site.start());
    let his = engine.listener_addr("his").unwrap();
    let msg = "MSH|^~\\&|HIS||HALONG|SO_Y_TE|20261126080000+0700||ADT^A04^ADT_A01|E1|P|2.5\r\
PID|1||BN004322^^^^MR||Phạm^Thu||19800101|F\r";
    let code = msa_code(&mllp_send(his, msg.as_bytes()));
    assert!(code == "AA" || code == "CA", "{code}");
    assert_eq!(
        engine.journal.wait_settled(1, Duration::from_secs(30)),
        Some(halong::journal::Status::Stored)
    );
    let digest = sha2::Sha256::digest("TTYT_HUYEN\u{1f}BN004322".as_bytes());
    let id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let (status, patient) = get(engine.http_addr, &format!("/fhir/Patient/{id}"));
    assert_eq!(status, 200, "{patient}");
    assert_eq!(patient["name"][0]["family"], "Phạm");
    rt.block_on(engine.shutdown());
}
