//! Tests of the mapping engine and of the shipped mappings.

use serde_json::{json, Value as Json};

use super::*;
use crate::hl7;

fn msg(text: &str) -> Message {
    match hl7::parse(text.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("test message does not parse: {e}"),
    }
}

fn shipped() -> MappingSet {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"));
    match MappingSet::load(dir) {
        Ok(s) => s,
        Err(d) => panic!("shipped mappings do not load:\n{}", crate::diag::render(&d)),
    }
}

/// The shipped mappings with one table's text replaced (as an operator edits it).
fn shipped_with_table(name: &str, text: &str) -> MappingSet {
    let dir = shipped_dir_with_table(name, text);
    MappingSet::load(dir.path()).unwrap_or_else(|d| panic!("{}", crate::diag::render(&d)))
}

/// A copy of the shipped mapping directory with one table's text replaced.
fn shipped_dir_with_table(name: &str, text: &str) -> tempfile::TempDir {
    let from = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"));
    let to = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let copy = |sub: &str, ext: &str| {
        std::fs::create_dir_all(to.path().join(sub)).unwrap_or_else(|e| panic!("{e}"));
        for entry in std::fs::read_dir(from.join(sub)).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.extension().is_some_and(|x| x == ext) {
                let target = to
                    .path()
                    .join(sub)
                    .join(path.file_name().unwrap_or_default());
                std::fs::copy(&path, target).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    };
    copy("", "toml");
    copy("tables", "csv");
    let table = to.path().join("tables").join(format!("{name}.csv"));
    std::fs::write(table, text).unwrap_or_else(|e| panic!("{e}"));
    to
}

/// A mapping directory holding `name.toml` and the given tables.
fn dir_with(toml_text: &str, tables: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let write = |p: std::path::PathBuf, t: &str| {
        std::fs::write(&p, t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    write(dir.path().join("m.toml"), toml_text);
    std::fs::create_dir(dir.path().join("tables")).unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in tables {
        write(dir.path().join("tables").join(format!("{name}.csv")), text);
    }
    dir
}

/// The mappings of a directory made by [`dir_with`], which must load.
fn load_set(dir: &tempfile::TempDir) -> MappingSet {
    MappingSet::load(dir.path()).unwrap_or_else(|d| panic!("{}", crate::diag::render(&d)))
}

fn run_inline(toml_text: &str, message: &str) -> Result<Vec<Json>, MapError> {
    let dir = dir_with(
        toml_text,
        &[("v2_gender", "code,value\nM,male\nF,female\n")],
    );
    let set = load_set(&dir);
    let m = set.get("m").unwrap_or_else(|| panic!("no mapping m"));
    m.run(
        &msg(message),
        &RunContext {
            source: "test".to_string(),
            ..Default::default()
        },
    )
    .map(|r| crate::record::to_values(&r))
}

fn load_errors(toml_text: &str) -> Vec<String> {
    let dir = dir_with(toml_text, &[("v2_gender", "code,value\nM,male\n")]);
    match MappingSet::load(dir.path()) {
        Ok(_) => Vec::new(),
        Err(d) => d
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect(),
    }
}

const ADT_VI: &str = "MSH|^~\\&|HIS|BVBM|HALONG|HALONG|20240131083000+0700||ADT^A01^ADT_A01|MSG0001|P|2.5||||||UNICODE UTF-8\r\
EVN|A01|20240131083000+0700\r\
PID|1||079123456789^^^CCCD^NI~HS4010123456789^^^BHYT^HC||NGUYỄN^Thị Ngọc^Ánh||19850412|F|||12 Phố Huế^^Hà Nội^^100000^VN||0912345678\r\
PV1|1|I|NOI1^P203^G02||||||||||||||||VN2024-0001|||||||||||||||||||||||||20240131080000+0700\r";

#[test]
fn shipped_mappings_load() {
    let set = shipped();
    let names: Vec<&str> = set.names().collect();
    assert_eq!(
        names,
        [
            "adt",
            "adt_a40",
            "imaging_study",
            "mdm_t02",
            "orders",
            "oru_r01",
            "siu_s12"
        ]
    );
}

/// Every `lookup()` call of `m`'s expressions: (bound to a table, the table's size).
fn lookups(m: &Mapping) -> Vec<(bool, usize)> {
    use super::expr::Expr;
    fn walk(e: &Expr, out: &mut Vec<(bool, usize)>) {
        match e {
            Expr::Call(c) => {
                if c.fid == functions::fid::LOOKUP {
                    out.push((c.table.is_some(), c.table.as_ref().map_or(0, |t| t.len())));
                }
                c.args.iter().for_each(|a| walk(a, out));
            }
            Expr::Let(l) => walk(&l.expr, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for r in &m.rules {
        walk(&r.id, &mut out);
        r.when.iter().for_each(|w| walk(w, &mut out));
        r.sets.iter().for_each(|s| walk(&s.expr, &mut out));
    }
    out
}

#[test]
fn every_lookup_holds_its_table_from_load_on() {
    // Through a [let], with the table named in quotes, and directly.
    let text = r#"
[let]
sex = "lookup(v2_gender, PID-8)"
[[resource]]
type = "Patient"
id = "'p'"
[resource.set]
"gender" = "$sex"
"extension[0].valueCode" = "lookup('v2_gender', PID-8, 'unknown')"
"#;
    let dir = dir_with(text, &[("v2_gender", "code,value\nM,male\nF,female\n")]);
    let set = load_set(&dir);
    let m = set.get("m").unwrap_or_else(|| panic!("no mapping m"));
    assert_eq!(lookups(m), [(true, 2), (true, 2)]);
    let out = run_inline(text, "MSH|^~\\&|A\rPID|1|||||||F\r").expect("maps");
    assert_eq!(out[0]["gender"], "female");
    assert_eq!(out[0]["extension"][0]["valueCode"], "female");
    // Every lookup of the shipped mappings (their [let]s and shared.toml's included).
    let shipped = shipped();
    let mut all = 0;
    for name in shipped.names() {
        let m = shipped.get(name).unwrap_or_else(|| panic!("{name}"));
        let found = lookups(m);
        assert!(found.iter().all(|&(bound, _)| bound), "{name}: {found:?}");
        all += found.len();
    }
    assert!(all > 50, "{all} lookups in the shipped mappings");
}

#[test]
fn adt_a01_vietnamese_patient_and_encounter() {
    let set = shipped();
    let m = set.get("adt").unwrap_or_else(|| panic!("no adt"));
    let out = m.run(
        &msg(ADT_VI),
        &RunContext {
            source: "mllp:his/42".to_string(),
            ..Default::default()
        },
    );
    let out = crate::record::to_values(&out.unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(out.len(), 2);
    let p = &out[0];
    assert_eq!(p["resourceType"], "Patient");
    assert_eq!(p["meta"]["source"], "mllp:his/42");
    assert_eq!(p["identifier"][0]["value"], "079123456789");
    assert_eq!(
        p["identifier"][0]["system"],
        "https://moh.gov.vn/fhir/sid/cccd"
    );
    assert_eq!(p["identifier"][0]["type"]["coding"][0]["code"], "NI");
    assert_eq!(
        p["identifier"][1]["system"],
        "https://moh.gov.vn/fhir/sid/bhyt"
    );
    assert_eq!(p["name"][0]["family"], "NGUYỄN");
    assert_eq!(
        p["name"][0]["given"],
        serde_json::json!(["Thị Ngọc", "Ánh"])
    );
    assert_eq!(p["name"][0]["text"], "NGUYỄN Thị Ngọc Ánh");
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1985-04-12");
    assert_eq!(p["address"][0]["city"], "Hà Nội");
    assert_eq!(p["telecom"][0]["value"], "0912345678");
    let id = p["id"].as_str().unwrap_or("");
    assert_eq!(
        id,
        functions::hash(&["CCCD".to_string(), "079123456789".to_string()])
    );
    let e = &out[1];
    assert_eq!(e["resourceType"], "Encounter");
    assert_eq!(e["status"], "in-progress");
    assert_eq!(e["class"]["code"], "IMP");
    assert_eq!(e["period"]["start"], "2024-01-31T08:00:00+07:00");
    assert_eq!(e["location"][0]["location"]["display"], "NOI1 P203 G02");
    assert_eq!(e["subject"]["reference"], format!("Patient/{id}"));
}

const ORU: &str = "MSH|^~\\&|LIS|LAB|HALONG|BVBM|20240131090000+0700||ORU^R01^ORU_R01|LAB42|P|2.5.1\r\
PID|1||12345^^^BV^MR||TRẦN^Văn^Bình||19700101|M\r\
OBR|1|ORD1|FIL1|24331-1^Lipid panel^LN|||20240131073000+0700|||||||||||||||20240131085959+0700|||F\r\
OBX|1|NM|2093-3^Cholesterol^LN||5.10|mmol/L^millimole per liter^UCUM|3.0-5.0|H|||F|||20240131080000+0700\r\
OBX|2|ST|8251-1^Note^LN||Mẫu máu đục||||||F\r\
OBX|3|CWE|600-7^Culture^LN||27268008^Salmonella^SCT^^^^^^Salmonella species||||||P\r";

/// What a shipped mapping makes of `message`, as values.
fn run_shipped(m: &Mapping, message: &str) -> Vec<Json> {
    m.run(&msg(message), &RunContext::default())
        .map(|r| crate::record::to_values(&r))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The resources of type `t`.
fn of_type<'j>(out: &'j [Json], t: &str) -> Vec<&'j Json> {
    out.iter().filter(|r| r["resourceType"] == t).collect()
}

#[test]
fn oru_r01_files_each_patients_results_under_that_patient_and_never_shares_ids() {
    let set = shipped();
    let m = set.get("oru_r01").unwrap_or_else(|| panic!("no oru_r01"));
    // Two patients, each with a visit without number and an order whose numbers are
    // only in ORC; both orders have an OBX 1 for glucose and an SPM 1 without number.
    let message = "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|M1|P|2.5\r\
PID|1||P1^^^BV^MR||One^Patient\rPV1|1|O\rORC|RE|PLA1|FIL1\rOBR|1|||GLU^Glucose\r\
OBX|1|NM|GLU^Glucose||5.1|mmol/L\rSPM|1|||BLD\r\
PID|1||P2^^^BV^MR||Two^Patient\rPV1|1|O\rORC|RE|PLA2|FIL2\rOBR|1|||GLU^Glucose\r\
OBX|1|NM|GLU^Glucose||15.9|mmol/L\rSPM|1|||BLD\r";
    let out = run_shipped(m, message);
    let of = |t: &str| of_type(&out, t);
    let patients = of("Patient");
    assert_eq!(patients.len(), 2);
    let patient_ref = |i: usize| format!("Patient/{}", patients[i]["id"].as_str().unwrap_or(""));
    let subjects = |t: &str| -> Vec<String> {
        of(t)
            .iter()
            .map(|r| r["subject"]["reference"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let both = vec![patient_ref(0), patient_ref(1)];
    for t in [
        "Encounter",
        "ServiceRequest",
        "DiagnosticReport",
        "Observation",
        "Specimen",
    ] {
        assert_eq!(subjects(t), both, "{t}");
    }
    for t in ["Encounter", "Observation", "Specimen"] {
        let ids: std::collections::BTreeSet<&str> =
            of(t).iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids.len(), 2, "{t} ids must differ");
    }
    assert_eq!(of("Observation")[1]["valueQuantity"]["value"], 15.9);

    // The second patient has no visit and a patient-level OBX before its order: nothing
    // of it points at the first patient's visit or order, and the first patient's report
    // holds only its own result.
    let message = "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|M4|P|2.5\r\
PID|1||P1^^^BV^MR\rPV1|1|O||||||||||||||||V1\rORC|RE|PLA1|FIL1\rOBR|1|PLA1|FIL1|GLU|||20240131080000+0700\r\
OBX|1|NM|GLU||5.1\r\
PID|1||P2^^^BV^MR\rOBX|1|NM|8867-4^Heart rate^LN||72|/min\r\
ORC|RE|PLA2|FIL2\rOBR|1|PLA2|FIL2|GLU\rOBX|1|NM|GLU||15.9\r";
    let out = run_shipped(m, message);
    let of = |t: &str| of_type(&out, t);
    let obs = of("Observation");
    assert_eq!(obs.len(), 3);
    for o in &obs[1..] {
        assert!(o.get("encounter").is_none(), "{o}");
    }
    assert!(obs[1].get("basedOn").is_none(), "{}", obs[1]);
    assert!(obs[1].get("effectiveDateTime").is_none(), "{}", obs[1]);
    let reports = of("DiagnosticReport");
    assert_eq!(reports[0]["result"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        reports[0]["result"][0]["reference"],
        format!("Observation/{}", obs[0]["id"].as_str().unwrap_or(""))
    );
    for r in &of("ServiceRequest")[1..] {
        assert!(r.get("encounter").is_none(), "{r}");
    }

    // An OBR without an ORC of its own takes none: not the next order's, not the
    // previous one's.
    let message = "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|M2|P|2.5\rPID|1||P1^^^BV^MR\r\
OBR|1|PLA1|FIL1|A^One\rORC|RE|PLA2|FIL2||CM\rOBR|2|||B^Two\rOBR|3|PLA3|FIL3|C^Three\r";
    let out = m
        .run(&msg(message), &RunContext::default())
        .map(|r| crate::record::to_values(&r))
        .unwrap_or_else(|e| panic!("{e}"));
    let numbers: Vec<Vec<&str>> = out
        .iter()
        .filter(|r| r["resourceType"] == "ServiceRequest")
        .map(|r| {
            r["identifier"].as_array().map_or(Vec::new(), |ids| {
                ids.iter().filter_map(|i| i["value"].as_str()).collect()
            })
        })
        .collect();
    assert_eq!(
        numbers,
        [
            vec!["PLA1", "FIL1"],
            vec!["PLA2", "FIL2"],
            vec!["PLA3", "FIL3"]
        ]
    );
}

/// The ids of resources of `t`, in output order.
fn ids_of(out: &[Json], t: &str) -> Vec<String> {
    of_type(out, t)
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Record ids decide what the store keeps as one record: what differs must never share
/// one (or one overwrites the other), what is one thing must get one from every message
/// that tells of it (or it splits).
#[test]
fn ids_never_join_different_things_and_join_one_thing_across_messages() {
    let set = shipped();
    let run = |mapping: &str, message: &str| {
        let m = set.get(mapping).unwrap_or_else(|| panic!("no {mapping}"));
        run_shipped(m, message)
    };
    let order_types = ["ServiceRequest", "DiagnosticReport", "Observation"];

    // Two patients in one ORU, each with an order without numbers.
    let out = run(
        "oru_r01",
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|M1|P|2.5\r\
PID|1||P1^^^BV^MR\rOBR|1|||GLU\rOBX|1|NM|GLU||2.1\r\
PID|2||P2^^^BV^MR\rOBR|1|||GLU\rOBX|1|NM|GLU||5.0\r",
    );
    for t in order_types {
        let ids = ids_of(&out, t);
        assert!(ids.len() == 2 && ids[0] != ids[1], "{t}: {ids:?}");
    }

    // Orders without numbers in two placer groups: results and specimens apart.
    let out = run(
        "oru_r01",
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|M2|P|2.5\rPID|1||P1^^^BV^MR\r\
ORC|RE|||NHOM-A\rOBR|1|||CHOL\rOBX|1|NM|CHOL||4.1\rSPM|1|||BLD\r\
ORC|RE|||NHOM-B\rOBR|1|||CHOL\rOBX|1|NM|CHOL||7.9\rSPM|1|||BLD\r",
    );
    for t in [
        "ServiceRequest",
        "DiagnosticReport",
        "Observation",
        "Specimen",
    ] {
        let ids = ids_of(&out, t);
        assert!(ids.len() == 2 && ids[0] != ids[1], "{t}: {ids:?}");
    }

    // One order's placer number is another's filler number: two orders.
    let placer = run(
        "oru_r01",
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|K1|P|2.5\rPID|1||P1^^^BV^MR\r\
OBR|1|12345||GLU\rOBX|1|NM|GLU||2.2\r",
    );
    let filler = run(
        "oru_r01",
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|K2|P|2.5\rPID|1||P2^^^BV^MR\r\
OBR|1||12345|GLU\rOBX|1|NM|GLU||5.5\r",
    );
    for t in order_types {
        assert_ne!(ids_of(&placer, t), ids_of(&filler, t), "{t}");
    }

    // The order a HIS placed (its second OBR) is the order the laboratory reports on
    // (its only OBR), and MSH-4 as a code with its universal id is the same facility.
    let placed = run(
        "orders",
        "MSH|^~\\&|HIS|BV|||20240131||ORM^O01|O1|P|2.5\rPID|1||P1^^^BV^MR\r\
ORC|NW|PL1\rOBR|1|PL1||CBC\rORC|NW|PL2\rOBR|2|PL2||HBA1C\r",
    );
    let reported = run(
        "oru_r01",
        "MSH|^~\\&|LIS|BV^2.16.704.1^ISO|||20240131||ORU^R01|R1|P|2.5\rPID|1||P1^^^BV^MR\r\
OBR|1|PL2|F9|HBA1C\rOBX|1|NM|HBA1C||6.1\r",
    );
    assert_eq!(
        ids_of(&placed, "ServiceRequest")[1],
        ids_of(&reported, "ServiceRequest")[0]
    );
    assert_eq!(ids_of(&placed, "Patient"), ids_of(&reported, "Patient"));

    // A merge without assigning authorities links the two patients' own records.
    let registered = |number: &str| {
        ids_of(
            &run(
                "adt",
                &format!("MSH|^~\\&|HIS|BV|||20240131||ADT^A04|A{number}|P|2.5\rPID|1||{number}\r"),
            ),
            "Patient",
        )
    };
    let merge = run(
        "adt_a40",
        "MSH|^~\\&|HIS|BV|||20240131||ADT^A40|A3|P|2.5\rPID|1||BN7\rMRG|BN9\r",
    );
    let (survivor, merged) = (registered("BN7"), registered("BN9"));
    assert_eq!(
        ids_of(&merge, "Patient"),
        [survivor[0].clone(), merged[0].clone()]
    );
    let links: Vec<&Json> = of_type(&merge, "Patient")
        .iter()
        .map(|p| &p["link"][0]["other"]["reference"])
        .collect();
    assert_eq!(
        links,
        [
            &json!(format!("Patient/{}", merged[0])),
            &json!(format!("Patient/{}", survivor[0]))
        ]
    );

    // An admission and its discharge without a visit number: one visit, by the patient
    // and the admission time; two admissions of the patient stay two.
    let visit = |control: &str, event: &str, admitted: &str| {
        let out = run(
            "adt",
            &format!(
                "MSH|^~\\&|HIS|BV|||20240131||ADT^{event}|{control}|P|2.5\rPID|1||BN7^^^BV^MR\r\
PV1|1|I|NOI^1|||||||||||||||||||||||||||||||||||||||||{admitted}\r"
            ),
        );
        (
            ids_of(&out, "Encounter"),
            of_type(&out, "Encounter")[0]["status"].clone(),
        )
    };
    let (admitted, status) = visit("V1", "A01", "202401300800");
    assert_eq!(status, "in-progress");
    // The same instant written with seconds and a zone.
    let (discharged, status) = visit("V2", "A03", "20240130080000+0700");
    assert_eq!((discharged, status), (admitted.clone(), json!("finished")));
    assert_ne!(visit("V3", "A01", "202402150900").0, admitted);
    // A day without a time does not tell two visits of that day apart: no key of it.
    assert_ne!(
        visit("V4", "A01", "20240130").0,
        visit("V5", "A01", "20240130").0
    );

    // A working diagnosis confirmed in a later message is one Condition, now confirmed.
    let diagnosis = |control: &str, kind: &str| {
        let out = run(
            "adt",
            &format!(
                "MSH|^~\\&|HIS|BV|||20240131||ADT^A08|{control}|P|2.5\rPID|1||BN7^^^BV^MR\r\
PV1|1|I|NOI^1||||||||||||||||VN1\rDG1|1||E11.9^Type 2 diabetes^I10||20240130|{kind}\r"
            ),
        );
        let c = of_type(&out, "Condition")[0];
        (
            c["id"].clone(),
            c["verificationStatus"]["coding"][0]["code"].clone(),
        )
    };
    let (working, status) = diagnosis("G1", "W");
    assert_eq!(status, "provisional");
    assert_eq!(diagnosis("G2", "F"), (working, json!("confirmed")));

    // A weight taken once and sent again with the next update is one Observation; a
    // weight without the time it was taken is one per message.
    let weight = |control: &str, taken: &str| {
        ids_of(
            &run(
                "adt",
                &format!(
                    "MSH|^~\\&|HIS|BV|||20240131||ADT^A08|{control}|P|2.5\rPID|1||BN7^^^BV^MR\r\
OBX|1|NM|29463-7^Body weight^LN||62|kg|||||F|||{taken}\r"
                ),
            ),
            "Observation",
        )
    };
    assert_eq!(weight("W1", "202401300800"), weight("W2", "202401300800"));
    assert_ne!(weight("W3", ""), weight("W4", ""));

    // Father and mother of one family name, without set IDs, are two contacts; the same
    // two listed the other way round in the next update are the same two records.
    let contacts = |control: &str, first: &str, second: &str| {
        let out = run(
            "adt",
            &format!(
                "MSH|^~\\&|HIS|BV|||20240131||ADT^A08|{control}|P|2.5\rPID|1||BN7^^^BV^MR\r\
NK1|{first}\rNK1|{second}\r"
            ),
        );
        let mut people: Vec<(String, Json)> = of_type(&out, "RelatedPerson")
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or("").to_string(),
                    r["name"][0]["given"].clone(),
                )
            })
            .collect();
        people.sort_by(|a, b| a.0.cmp(&b.0));
        people
    };
    let (father, mother) = ("|Nguyễn^Văn Bình|FTH^Father", "|Nguyễn^Thị Lan|MTH^Mother");
    let once = contacts("N1", father, mother);
    assert_ne!(once[0].0, once[1].0);
    let numbered = contacts("N2", &format!("1{father}"), &format!("2{mother}"));
    let reordered = contacts("N3", &format!("1{mother}"), &format!("2{father}"));
    assert_eq!(numbered, reordered);

    // Two documents written for one order, without document numbers: two documents.
    let document = |control: &str, kind: &str| {
        ids_of(
            &run(
                "mdm_t02",
                &format!(
                    "MSH|^~\\&|HIS|BV|||20240131||MDM^T02|{control}|P|2.5\rPID|1||P1^^^BV^MR\r\
TXA|1|{kind}|TX|||||||||||PL7001\rOBX|1|TX|X||text\r"
                ),
            ),
            "DocumentReference",
        )
    };
    assert_ne!(document("D1", "OP"), document("D2", "CN"));
}

/// A feed that lists the citizen ID before the medical record number reaches the same
/// patient, visit and order records as one that lists the record number first; a merge
/// names the merged patient by its record number too.
#[test]
fn the_record_number_names_the_patient_wherever_the_sender_lists_it() {
    let set = shipped();
    let run = |mapping: &str, message: String| {
        let m = set.get(mapping).unwrap_or_else(|| panic!("no {mapping}"));
        run_shipped(m, &message)
    };
    let (mr, cccd) = ("BN000888^^^BVDK^MR", "079190000888^^^CCCD^NI");
    let admit = |pid3: &str| {
        format!(
            "MSH|^~\\&|HIS|BVDK|||20240131||ADT^A01|A1|P|2.5\rPID|1||{pid3}||Trần^Bình\r\
PV1|1|I|NOI1||||||||||||||||||||||||||||||||||||||||||20240131080000+0700\r\
OBX|1|NM|29463-7^Weight^LN||61|kg|||||F|||20240131\r"
        )
    };
    let first = run("adt", admit(&format!("{mr}~{cccd}")));
    let second = run("adt", admit(&format!("{cccd}~{mr}")));
    for t in ["Patient", "Encounter", "Observation"] {
        let a = ids_of(&first, t);
        assert!(a.len() == 1 && a == ids_of(&second, t), "{t}");
    }
    // Without a record number, the first repetition as before.
    let plain = run("adt", admit(cccd));
    let cccd_first = run("adt", admit(&format!("{cccd}~079190000999^^^BHYT^HC")));
    assert_eq!(ids_of(&plain, "Patient"), ids_of(&cccd_first, "Patient"));
    assert_ne!(ids_of(&plain, "Patient"), ids_of(&first, "Patient"));

    let result = |pid3: &str| {
        run(
            "oru_r01",
            format!(
                "MSH|^~\\&|LIS|BVDK|||20240131||ORU^R01|L1|P|2.5\rPID|1||{pid3}\r\
OBR|1|||GLU\rOBX|1|NM|GLU||5.1\r"
            ),
        )
    };
    let (a, b) = (
        result(&format!("{mr}~{cccd}")),
        result(&format!("{cccd}~{mr}")),
    );
    assert_eq!(ids_of(&a, "Patient"), ids_of(&first, "Patient"));
    for t in [
        "Patient",
        "ServiceRequest",
        "DiagnosticReport",
        "Observation",
    ] {
        assert_eq!(ids_of(&a, t), ids_of(&b, t), "{t}");
    }

    let merge = run(
        "adt_a40",
        format!(
            "MSH|^~\\&|HIS|BVDK|||20240131||ADT^A40|G1|P|2.5\rPID|1||{mr}\r\
MRG|079190000777^^^CCCD^NI~BN000777^^^BVDK^MR\r"
        ),
    );
    let merged = run("adt", admit("BN000777^^^BVDK^MR"));
    let merged_id = ids_of(&merged, "Patient");
    let patients = of_type(&merge, "Patient");
    assert_eq!(patients.len(), 2);
    assert_eq!(
        patients[0]["link"][0]["other"]["reference"],
        json!(format!("Patient/{}", merged_id[0]))
    );
    assert_eq!(patients[1]["id"], json!(merged_id[0]));
}

/// A sender that leaves MSH-4 empty belongs to its listener's `facility`: two such
/// hospitals' patient BN0001 are two patients, and MSH-4, when sent, still decides.
#[test]
fn an_empty_sending_facility_is_the_listeners() {
    let set = shipped();
    let adt = set.get("adt").expect("adt");
    let patient = |msh4: &str, facility: &str| {
        let m = msg(&format!(
            "MSH|^~\\&|HIS|{msh4}|||20240131||ADT^A04|X1|P|2.5\rPID|1||BN0001^^^^MR||Lê^An\r"
        ));
        let ctx = RunContext {
            facility: facility.to_string(),
            ..Default::default()
        };
        let out = crate::record::to_values(&adt.run(&m, &ctx).unwrap_or_else(|e| panic!("{e}")));
        out[0]["id"].clone()
    };
    assert_ne!(patient("", "TTYT_HUYEN"), patient("", "BVDK_TINH"));
    assert_eq!(patient("", "BVDK_TINH"), patient("BVDK_TINH", ""));
    assert_eq!(patient("BVDK_TINH", "TTYT_HUYEN"), patient("BVDK_TINH", ""));
    assert_eq!(
        patient("", "BVDK_TINH"),
        json!(functions::hash(&["BVDK_TINH", "BN0001"]))
    );
}

const CBC_ORIGINAL: &str = "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|C1|P|2.5.1\rPID|1||P1^^^BV^MR\r\
ORC|RE|ORD1\rOBR|1|ORD1||GLU^Glucose^L\rOBX|1|NM|GLU^Glucose^L||5.1||||||F\r\
ORC|RE|ORD2\rOBR|2|ORD2||CBC^Blood count^L\rOBX|1|NM|HGB^Hemoglobin^L||131||||||F\r\
OBX|2|NM|WBC^Leukocytes^L||7.2||||||F\rOBX|3|NM|PLT^Platelets^L||250||||||F\r\
OBX|4|ST|CMT^Comment^L||hemolysed||||||F\rOBX|5|ST|CMT^Comment^L||repeat||||||F\r\
SPM|1|||BLD^Blood\r";

/// One result and comment corrected in a later message, alone, with the set IDs they
/// had (`renumbered` false) or numbered from 1.
fn cbc_correction(renumbered: bool) -> String {
    let (obr, wbc, cmt) = if renumbered { (1, 1, 2) } else { (2, 2, 4) };
    format!(
        "MSH|^~\\&|LIS|BV|||20240201||ORU^R01|C2|P|2.5.1\rPID|1||P1^^^BV^MR\r\
ORC|RE|ORD2\rOBR|{obr}|ORD2||CBC^Blood count^L\rOBX|{wbc}|NM|WBC^Leukocytes^L||8.2||||||C\r\
OBX|{cmt}|ST|CMT^Comment^L||hemolysed||||||C\rSPM|1|||BLD^Blood\r"
    )
}

/// The id of the one resource of type `t` with code `code`.
fn id_of_code(out: &[Json], t: &str, code: &str) -> String {
    let found: Vec<&Json> = of_type(out, t)
        .into_iter()
        .filter(|r| r["code"]["coding"][0]["code"] == code)
        .collect();
    assert_eq!(found.len(), 1, "{t} {code}: {found:?}");
    found[0]["id"].as_str().expect("id").to_string()
}

/// By default a result is known by its set IDs (and its order's): a correction that
/// keeps them, as HL7 asks, replaces the result it corrects; one sent alone and
/// renumbered is kept beside it, never in another's place.
#[test]
fn a_correction_with_the_set_ids_it_corrects_replaces_the_result() {
    let set = shipped();
    let oru = set.get("oru_r01").expect("oru_r01");
    let original = run_shipped(oru, CBC_ORIGINAL);
    let kept = run_shipped(oru, &cbc_correction(false));
    for (t, code) in [("Observation", "WBC"), ("DiagnosticReport", "CBC")] {
        assert_eq!(id_of_code(&kept, t, code), id_of_code(&original, t, code));
    }
    let comments: Vec<String> = ids_of(&original, "Observation")
        .into_iter()
        .filter(|id| *id == id_of_code(&kept, "Observation", "CMT"))
        .collect();
    assert_eq!(comments.len(), 1, "the first comment, by its set ID");
    assert_eq!(ids_of(&kept, "Specimen"), ids_of(&original, "Specimen"));
    let renumbered = run_shipped(oru, &cbc_correction(true));
    let before = ids_of(&original, "Observation");
    for id in ids_of(&renumbered, "Observation") {
        assert!(!before.contains(&id), "{id} took another result's place");
    }
}

/// A sender listed as `code` in tables/result_identity.csv renumbers what it corrects:
/// its results are known by code and sub-ID, so a correction sent alone and numbered
/// `OBR|1|`, `OBX|1|` replaces the result it corrects (and its report and specimen keep
/// theirs). Look-alikes in one message keep their set IDs and places: one of them
/// resent alone sits beside them, never in another's place; the whole order resent
/// replaces each.
#[test]
fn a_code_senders_correction_sent_alone_and_renumbered_replaces_the_result() {
    let set = shipped_with_table("result_identity", "code,value\nBV,code\n");
    let oru = set.get("oru_r01").expect("oru_r01");
    let original = run_shipped(oru, CBC_ORIGINAL);
    let correction = run_shipped(oru, &cbc_correction(true));
    for (t, code) in [("Observation", "WBC"), ("DiagnosticReport", "CBC")] {
        assert_eq!(
            id_of_code(&correction, t, code),
            id_of_code(&original, t, code)
        );
    }
    assert_eq!(
        ids_of(&correction, "Specimen"),
        ids_of(&original, "Specimen")
    );
    // A specimen without a number beside a numbered one is no look-alike of it: resent
    // alone and renumbered, it keeps its id.
    let two_specimens = |spm: &str| {
        let text = format!(
            "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|S1|P|2.5.1\rPID|1||P1^^^BV^MR\r\
ORC|RE|ORD4\rOBR|1|ORD4||GLU^Glucose^L\rOBX|1|NM|GLU^Glucose^L||5.1||||||F\r{spm}"
        );
        let out = run_shipped(oru, &text);
        of_type(&out, "Specimen")
            .into_iter()
            .filter(|r| r["identifier"][0]["value"].is_null())
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    let unnumbered = two_specimens("SPM|1|S77^LIS||SER^Serum\rSPM|2|||BLD^Blood\r");
    assert_eq!(unnumbered.len(), 1);
    assert_eq!(two_specimens("SPM|1|||BLD^Blood\r"), unnumbered);
    // Other senders keep the set IDs.
    let shipped = shipped();
    let by_set_id = run_shipped(shipped.get("oru_r01").expect("oru_r01"), CBC_ORIGINAL);
    assert_ne!(
        id_of_code(&by_set_id, "Observation", "WBC"),
        id_of_code(&original, "Observation", "WBC")
    );
    let comments: Vec<&Json> = of_type(&original, "Observation")
        .into_iter()
        .filter(|r| r["code"]["coding"][0]["code"] == "CMT")
        .collect();
    assert_eq!(comments.len(), 2);
    assert_ne!(comments[0]["id"], comments[1]["id"]);
    let resent = id_of_code(&correction, "Observation", "CMT");
    assert!(comments.iter().all(|c| c["id"] != resent.as_str()));
    let again = run_shipped(
        oru,
        "MSH|^~\\&|LIS|BV|||20240201||ORU^R01|C4|P|2.5.1\rPID|1||P1^^^BV^MR\r\
ORC|RE|ORD2\rOBR|2|ORD2||CBC^Blood count^L\rOBX|4|ST|CMT^Comment^L||hemolysed||||||C\r\
OBX|5|ST|CMT^Comment^L||repeat||||||C\r",
    );
    assert_eq!(
        ids_of(&again, "Observation"),
        comments
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
    );
    // Two orders of one key and code in one message (microbiology isolates under one
    // accession number) are two; the second resent alone, renumbered, replaces neither.
    let twice = run_shipped(
        oru,
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|C3|P|2.5.1\rPID|1||P1^^^BV^MR\r\
ORC|RE|ORD3\rOBR|1|ORD3|ACC3|600-7^Culture^LN\rOBX|1|ST|600-7^Organism^LN||E. coli\r\
ORC|RE|ORD3\rOBR|2|ORD3|ACC3|600-7^Culture^LN\rOBX|1|ST|600-7^Organism^LN||Klebsiella\r",
    );
    let alone = run_shipped(
        oru,
        "MSH|^~\\&|LIS|BV|||20240201||ORU^R01|C5|P|2.5.1\rPID|1||P1^^^BV^MR\r\
ORC|RE|ORD3\rOBR|1|ORD3|ACC3|600-7^Culture^LN\rOBX|1|ST|600-7^Organism^LN||K. pneumoniae\r",
    );
    for t in ["DiagnosticReport", "Observation"] {
        let ids = ids_of(&twice, t);
        assert!(ids.len() == 2 && ids[0] != ids[1], "{t}: {ids:?}");
        let resent = ids_of(&alone, t);
        assert!(
            resent.len() == 1 && !ids.contains(&resent[0]),
            "{t}: {resent:?}"
        );
    }
}

/// A sender's rule in tables/result_identity.csv is one of its two names: a misspelt
/// one is an error at load, not a rule silently not taken.
#[test]
fn a_result_identity_rule_that_is_not_one_is_a_load_error() {
    let dir = shipped_dir_with_table("result_identity", "code,value\nBV,code\nLAB,Code\n");
    let errors: Vec<String> = match MappingSet::load(dir.path()) {
        Ok(_) => panic!("a rule named Code was taken"),
        Err(d) => d
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect(),
    };
    assert_eq!(
        errors,
        ["3:1: \"LAB\": \"Code\" is not one of set_id, code (did you mean \"code\"?)"]
    );
}

/// The corpus holds one laboratory's complete blood count twice: LAB-ORU-1 with most
/// results preliminary, LAB-ORU-2 final, its orders and their results sent in another
/// order (other set IDs). Known by their set IDs, eight final results sit beside their
/// preliminary versions; with the sender listed as `code`, every final result and
/// report has the id of the one it completes.
#[test]
fn a_code_senders_later_report_replaces_its_earlier_results_whatever_their_set_ids() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/fhir-converter/messages");
    let ctx = RunContext {
        facility: "LAB".to_string(),
        ..Default::default()
    };
    let ids = |set: &MappingSet, name: &str, t: &str| -> std::collections::BTreeSet<String> {
        let path = corpus.join(name);
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let m = hl7::parse(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = set.get("oru_r01").expect("oru_r01").run(&m, &ctx);
        let out = crate::record::to_values(&out.unwrap_or_else(|e| panic!("{name}: {e}")));
        ids_of(&out, t).into_iter().collect()
    };
    let by_code = shipped_with_table("result_identity", "code,value\nLAB,code\n");
    let by_set_id = shipped();
    for t in ["Observation", "DiagnosticReport"] {
        let first = ids(&by_code, "LAB-ORU-1.hl7", t);
        assert!(!first.is_empty(), "{t}: none");
        assert_eq!(first, ids(&by_code, "LAB-ORU-2.hl7", t), "{t}");
    }
    let (first, last) = (
        ids(&by_set_id, "LAB-ORU-1.hl7", "Observation"),
        ids(&by_set_id, "LAB-ORU-2.hl7", "Observation"),
    );
    assert_eq!((first.len(), first.intersection(&last).count()), (10, 2));
}

/// A `[let]` name that reads only the message header (and the run's facility, tables,
/// literals) has one value for the run and is worked out once; one that reads another
/// segment, uses such a name or depends on the resources made is worked out where it
/// is used, with its own context.
#[test]
fn a_let_of_the_header_alone_is_worked_out_once_per_run() {
    let text = r#"
[let]
sent = "concat(MSH-10, '/', lookup(v2_gender, MSH-9.1, 'none'), '/', facility())"
family = "PID-5.1"
both = "concat($sent, ' ', $family)"
patient = "ref(Patient)"
[[resource]]
type = "Patient"
each = "PID"
id = "hash($sent, PID-3.1)"
[resource.set]
"name[0].family" = "$both"
"name[0].text" = "$sent"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash($sent, $family, OBX-1)"
[resource.set]
"valueString" = "$both"
"subject" = "$patient"
"#;
    let dir = dir_with(text, &[("v2_gender", "code,value\nORU,lab\n")]);
    let set = load_set(&dir);
    let m = set.get("m").unwrap_or_else(|| panic!("no mapping m"));
    assert_eq!(m.constants, 1, "only $sent");
    let out = m
        .run(
            &msg(
                "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|K1|P|2.5\rPID|1||P1||NGUYEN\rOBX|1||A||1\r\
PID|2||P2||TRAN\rOBX|1||A||2\r",
            ),
            &RunContext {
                facility: "F".to_string(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let out = crate::record::to_values(&out);
    let texts: Vec<(&str, &str)> = out
        .iter()
        .map(|r| {
            let t = r["name"][0]["family"]
                .as_str()
                .or(r["valueString"].as_str())
                .unwrap_or("-");
            (r["resourceType"].as_str().unwrap_or("-"), t)
        })
        .collect();
    assert_eq!(
        texts,
        [
            ("Patient", "K1/lab/F NGUYEN"),
            ("Patient", "K1/lab/F TRAN"),
            ("Observation", "K1/lab/F NGUYEN"),
            ("Observation", "K1/lab/F TRAN"),
        ]
    );
    assert_eq!(out[0]["name"][0]["text"], "K1/lab/F");
    assert_eq!(
        out[3]["subject"]["reference"],
        format!("Patient/{}", out[1]["id"].as_str().unwrap_or("-"))
    );
    // The same with the loss report, which reads everything where it is used.
    let (traced, _) = m.run_with_loss_report(
        &msg(
            "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|K1|P|2.5\rPID|1||P1||NGUYEN\rOBX|1||A||1\r\
PID|2||P2||TRAN\rOBX|1||A||2\r",
        ),
        &RunContext {
            facility: "F".to_string(),
            ..Default::default()
        },
    );
    assert_eq!(
        crate::record::to_values(&traced.unwrap_or_else(|e| panic!("{e}"))),
        out
    );
}

/// `rank(SEGMENT, KEY, ...)`: the place of a segment among those of its group with the
/// same keys, and `alike(...)` how many those are, the segment named from the context
/// (an OBX's own, its OBR); absent without that segment; its first argument must be a
/// segment name; a key that fails is said of its own segment.
#[test]
fn rank_counts_a_segments_place_among_its_groups_with_the_same_keys() {
    let mapping = "[[resource]]\ntype = \"Observation\"\neach = \"OBX\"\n\
        id = \"hash(OBR-2, OBX-1)\"\n[resource.set]\n\
        \"valueString\" = \"concat(rank(OBR, OBR-4), '/', rank(OBX, OBX-3), '/', rank(OBX, OBX-3, OBX-4), '/', rank(PID), ' ', alike(OBX, OBX-3), '/', alike(OBR, OBR-4), '/', alike(PID))\"\n";
    let out = run_inline(
        mapping,
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|R1|P|2.5\rPID|1||P1\r\
OBR|1|A||X\rOBX|1||C||1\rOBX|2||D||2\rOBX|3||C|1|3\rNTE|1||n\rOBX|4||C|1|4\r\
OBR|2|B||Y\rOBX|1||C||5\rOBR|3|C||X\rOBX|1||C||6\r\
PID|2||P2\rOBR|1|D||X\rOBX|1||C||7\r",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let values: Vec<&str> = out
        .iter()
        .map(|r| r["valueString"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        values,
        [
            "1/1/1/1 3/2/2", // order A: C, D, C-1, C-1
            "1/1/1/1 1/2/2",
            "1/2/1/1 3/2/2",
            "1/3/2/1 3/2/2",
            "1/1/1/1 1/1/2", // order B (Y)
            "2/1/1/1 1/2/2", // order C: the patient's second X
            "1/1/1/2 1/1/2", // the second patient's first X
        ]
    );
    // Without the segment: absent.
    let out = run_inline(
        "[[resource]]\ntype = \"Patient\"\nid = \"'p'\"\n[resource.set]\n\"gender\" = \"default(rank(OBR, OBR-4), 'none')\"\n",
        "MSH|^~\\&|LIS|BV|||20240131||ADT^A01|R2|P|2.5\rPID|1||P1\r",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(out[0]["gender"], "none");
    assert_eq!(
        load_errors(
            "[[resource]]\ntype = \"Patient\"\nid = \"hash(rank(OBX-3, OBX-4))\"\n"
        ),
        ["3:12: the first argument of rank() must be a segment name, e.g. rank(OBX, OBX-3.1, OBX-4)"]
    );
    assert_eq!(
        load_errors("[[resource]]\ntype = \"Patient\"\nid = \"hash(rank(OBZ, OBX-4))\"\n"),
        ["3:17: unknown segment \"OBZ\" (did you mean \"OBR\"?); a site-defined segment starts with Z"]
    );
    assert_eq!(
        load_errors("[[resource]]\ntype = \"Patient\"\nid = \"hash(alike('OBX'))\"\n"),
        ["3:12: the first argument of alike() must be a segment name, e.g. alike(OBX, OBX-3.1, OBX-4)"]
    );
    // A key that fails is said of the segment whose key it is, whichever asks first.
    let e = run_inline(
        "[[resource]]\ntype = \"Observation\"\neach = \"OBX\"\nid = \"hash(OBX-1)\"\n\
         [resource.set]\n\"valueString\" = \"rank(OBX, required(OBX-4, 'no sub-ID'))\"\n",
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|R3|P|2.5\rPID|1||P1\rOBR|1|A||X\r\
OBX|1||C|1|1\rOBX|2||C|2|2\rOBX|3||C||3\r",
    )
    .err()
    .unwrap_or_else(|| panic!("a key without its value was accepted"));
    assert_eq!(
        (e.resource.as_str(), e.field.as_str(), e.message.as_str()),
        (
            "Observation #1 (OBX 1)",
            "valueString",
            "rank(OBX, required(OBX-4, 'no sub-ID')): the keys of OBX 3: required(OBX-4, 'no sub-ID'): no sub-ID"
        )
    );
}

/// Two results that the id rule cannot tell apart (one code, no set IDs) are a mapping
/// error naming both, not one record silently replacing the other (result rules are
/// `unique`); the same record twice (a parent order named by two orders) is no
/// conflict, and rules that are not `unique` keep "the later replaces the earlier".
#[test]
fn two_different_records_under_one_id_are_an_error() {
    let set = shipped();
    let oru = set.get("oru_r01").expect("oru_r01");
    let micro = msg(
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|V1|P|2.5\rPID|1||P1^^^BV^MR\r\
OBR|1|ORD9||600-7^Culture^LN\rOBX||ST|600-7^Bacteria identified^LN||E. coli\r\
OBX||ST|600-7^Bacteria identified^LN||Klebsiella pneumoniae\r",
    );
    let e = oru.run(&micro, &RunContext::default()).err();
    let e = e.unwrap_or_else(|| panic!("two results under one id were accepted"));
    assert_eq!(e.resource, "Observation #2 (OBX 2)");
    assert_eq!(e.field, "id");
    assert!(
        e.message.starts_with("Observation #1 (OBX 1) has the same id (")
            && e.message.ends_with(
                ") and other content: the id rule does not tell them apart, and the store would keep only one"
            ),
        "{}",
        e.message
    );
    // With sub-IDs (OBX-4), two results.
    let numbered = msg(
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|V2|P|2.5\rPID|1||P1^^^BV^MR\r\
OBR|1|ORD9||600-7^Culture^LN\rOBX||ST|600-7^Bacteria identified^LN|1|E. coli\r\
OBX||ST|600-7^Bacteria identified^LN|2|Klebsiella pneumoniae\r",
    );
    let out = crate::record::to_values(&oru.run(&numbered, &RunContext::default()).unwrap());
    assert_eq!(of_type(&out, "Observation").len(), 2);
    // A working diagnosis and the final one, one code, in one message: one Condition,
    // the later (its rule is not `unique`).
    let adt = set.get("adt").expect("adt");
    let diagnoses = msg(
        "MSH|^~\\&|HIS|BV|||20240131||ADT^A03|V4|P|2.5\rPID|1||P1^^^BV^MR\r\
PV1|1|I|||||||||||||||||VN1\rDG1|1||J18.9^Pneumonia^I10||||W\rDG1|2||J18.9^Pneumonia^I10||||F\r",
    );
    let out = crate::record::to_values(&adt.run(&diagnoses, &RunContext::default()).unwrap());
    assert_eq!(of_type(&out, "Condition").len(), 2);
    // One parent order named by two orders: the same record twice.
    let parent = msg(
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|V3|P|2.5\rPID|1||P1^^^BV^MR\r\
ORC|RE|A1||||||PARENT1\rOBR|1|A1||GLU\rORC|RE|A2||||||PARENT1\rOBR|2|A2||NA\r",
    );
    let out = crate::record::to_values(&oru.run(&parent, &RunContext::default()).unwrap());
    let parents: Vec<&Json> = of_type(&out, "ServiceRequest")
        .into_iter()
        .filter(|r| r["identifier"][0]["value"] == "PARENT1")
        .collect();
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0], parents[1]);
}

/// An appointment names every practitioner and place it books, not the first of each.
#[test]
fn siu_appointment_names_every_practitioner_and_location() {
    let set = shipped();
    let m = set.get("siu_s12").unwrap_or_else(|| panic!("no siu_s12"));
    let out = run_shipped(
        m,
        "MSH|^~\\&|HIS|BV|||20261125||SIU^S12|S1|P|2.5\rSCH|APT9|||||||||||||||||||||||||Booked\r\
PID|1||BN9^^^BV^MR\rRGS|1\rAIS|1||FU^Follow-up\r\
AIP|1||D003^Ngô^Bảo Anh|SUR^Surgeon\rAIP|2||D004^Lê^Minh|ANE^Anaesthetist\r\
AIL|1||PT^05\rAIL|2||HOI^01^2\r",
    );
    let appointment = of_type(&out, "Appointment")[0];
    let actors: Vec<(&str, &str)> =
        appointment["participant"]
            .as_array()
            .map_or(Vec::new(), |ps| {
                ps.iter()
                    .map(|p| {
                        let a = &p["actor"];
                        (
                            a["display"]
                                .as_str()
                                .or(a["reference"].as_str())
                                .unwrap_or(""),
                            a["identifier"]["value"].as_str().unwrap_or(""),
                        )
                    })
                    .collect()
            });
    let patient = format!("Patient/{}", ids_of(&out, "Patient")[0]);
    assert_eq!(
        actors,
        [
            (patient.as_str(), ""),
            ("Ngô Bảo Anh", "D003"),
            ("Lê Minh", "D004"),
            ("PT 05", ""),
            ("HOI 01 2", "")
        ]
    );
    assert_eq!(
        appointment["participant"][2]["type"][0]["coding"][0]["code"],
        "ANE"
    );
}

#[test]
fn an_orders_timing_is_its_own_before_or_after_its_obr() {
    let set = shipped();
    let priorities = |mapping: &str, message: &str| -> Vec<Option<String>> {
        let m = set.get(mapping).unwrap_or_else(|| panic!("no {mapping}"));
        m.run(&msg(message), &RunContext::default())
            .map(|r| crate::record::to_values(&r))
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .filter(|r| r["resourceType"] == "ServiceRequest")
            .map(|r| r["priority"].as_str().map(str::to_string))
            .collect()
    };
    // ORM: TQ1 between ORC and OBR; the second order has none.
    let orm = "MSH|^~\\&|HIS|BV|||20240131||ORM^O01|M1|P|2.5\rPID|1||P1^^^BV^MR\r\
ORC|NW|PLA1\rTQ1|1||||||20240131090000+0700||S\rOBR|1|PLA1||A^One\r\
ORC|NW|PLA2\rOBR|2|PLA2||B^Two\r";
    assert_eq!(priorities("orders", orm), [Some("stat".to_string()), None]);
    // ORU: TQ1 after its OBR; the first order has none.
    let oru = "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|M2|P|2.5\rPID|1||P1^^^BV^MR\r\
ORC|RE|PLA1|FIL1\rOBR|1|PLA1|FIL1|A^One\rOBX|1|NM|X||1\r\
ORC|RE|PLA2|FIL2\rOBR|2|PLA2|FIL2|B^Two\rTQ1|1||||||||A\rOBX|1|NM|X||2\r";
    assert_eq!(priorities("oru_r01", oru), [None, Some("asap".to_string())]);
}

#[test]
fn a_patient_level_result_before_any_order_belongs_to_no_order() {
    let set = shipped();
    let m = set.get("oru_r01").unwrap_or_else(|| panic!("no oru_r01"));
    let message = "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|M3|P|2.5\rPID|1||P1^^^BV^MR\r\
OBX|1|NM|8867-4^Heart rate^LN||72|/min\r\
ORC|RE|PLA1|FIL1\rOBR|1|PLA1|FIL1|GLU^Glucose|||20240131080000+0700\rOBX|1|NM|GLU||5.1\r";
    let out = m
        .run(&msg(message), &RunContext::default())
        .map(|r| crate::record::to_values(&r))
        .unwrap_or_else(|e| panic!("{e}"));
    let obs: Vec<&serde_json::Value> = out
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .collect();
    assert_eq!(obs.len(), 2);
    assert!(obs[0].get("basedOn").is_none(), "{}", obs[0]);
    assert!(obs[0].get("effectiveDateTime").is_none(), "{}", obs[0]);
    assert!(
        obs[0].get("category").is_none(),
        "not a laboratory result: {}",
        obs[0]
    );
    assert!(obs[1].get("basedOn").is_some(), "{}", obs[1]);
    assert_eq!(obs[1]["category"][0]["coding"][0]["code"], "laboratory");
    assert_eq!(obs[1]["effectiveDateTime"], "2024-01-31T08:00:00+07:00");
}

#[test]
fn oru_r01_report_and_observations() {
    let set = shipped();
    let m = set.get("oru_r01").unwrap_or_else(|| panic!("no oru_r01"));
    let out = m
        .run(&msg(ORU), &RunContext::default())
        .map(|r| crate::record::to_values(&r))
        .unwrap_or_else(|e| panic!("{e}"));
    let types: Vec<&str> = out
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "Patient",
            "ServiceRequest",
            "DiagnosticReport",
            "Observation",
            "Observation",
            "Observation"
        ]
    );
    let dr = &out[2];
    assert_eq!(dr["status"], "final");
    assert_eq!(dr["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(dr["effectiveDateTime"], "2024-01-31T07:30:00+07:00");
    assert_eq!(dr["issued"], "2024-01-31T08:59:59+07:00");
    let refs: Vec<String> = out[3..]
        .iter()
        .map(|o| format!("Observation/{}", o["id"].as_str().unwrap_or("")))
        .collect();
    let got: Vec<String> = dr["result"].as_array().map_or(Vec::new(), |a| {
        a.iter()
            .map(|r| r["reference"].as_str().unwrap_or("").to_string())
            .collect()
    });
    assert_eq!(got, refs);
    let nm = &out[3];
    assert_eq!(
        serde_json::to_string(&nm["valueQuantity"]["value"])
            .ok()
            .as_deref(),
        Some("5.10")
    );
    assert_eq!(nm["valueQuantity"]["unit"], "millimole per liter");
    assert_eq!(nm["valueQuantity"]["code"], "mmol/L");
    assert_eq!(nm["valueQuantity"]["system"], "http://unitsofmeasure.org");
    assert_eq!(nm["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(nm["referenceRange"][0]["text"], "3.0-5.0");
    assert_eq!(nm["effectiveDateTime"], "2024-01-31T08:00:00+07:00");
    assert_eq!(nm["status"], "final");
    assert_eq!(
        nm["subject"]["reference"],
        format!("Patient/{}", out[0]["id"].as_str().unwrap_or(""))
    );
    assert!(
        nm.get("encounter").is_none(),
        "no PV1, so no Encounter to refer to"
    );
    let st = &out[4];
    assert_eq!(st["valueString"], "Mẫu máu đục");
    assert_eq!(
        st["effectiveDateTime"], "2024-01-31T07:30:00+07:00",
        "falls back to OBR-7"
    );
    let cwe = &out[5];
    assert_eq!(cwe["status"], "preliminary");
    assert_eq!(cwe["valueCodeableConcept"]["coding"][0]["code"], "27268008");
    assert_eq!(
        cwe["valueCodeableConcept"]["coding"][0]["system"],
        "http://snomed.info/sct"
    );
    assert_eq!(cwe["valueCodeableConcept"]["text"], "Salmonella species");
    assert!(cwe.get("valueQuantity").is_none() && cwe.get("valueString").is_none());
}

const GROUPS: &str = "MSH|^~\\&|LIS|LAB|||20240131||ORU^R01|G1|P|2.5\r\
PID|1||P1\r\
OBR|1||F1|A\r\
OBX|1|NM|x||1\r\
OBX|2|NM|y||2\r\
OBR|2||F2|B\r\
OBX|1|NM|z||3\r";

const GROUP_MAPPING: &str = r#"
[[resource]]
type = "DiagnosticReport"
each = "OBR"
id = "hash(OBR-3)"
[resource.set]
"code.text" = "OBR-4"
"result[*]" = "refs(Observation)"

[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBR-3, OBX-1)"
[resource.set]
"code.text" = "concat(OBR-4, '/', OBX-3)"
"derivedFrom[0]" = "ref(DiagnosticReport)"
"subject.display" = "PID-3"
"#;

#[test]
fn each_uses_nearest_preceding_context_and_refs_group() {
    let out = run_inline(GROUP_MAPPING, GROUPS).unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<&str> = out
        .iter()
        .map(|r| r["code"]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts, ["A", "B", "A/x", "A/y", "B/z"]);
    let id = |i: usize| out[i]["id"].as_str().unwrap_or("").to_string();
    let refs = |i: usize| -> Vec<String> {
        out[i]["result"].as_array().map_or(Vec::new(), |a| {
            a.iter()
                .map(|r| r["reference"].as_str().unwrap_or("").to_string())
                .collect()
        })
    };
    assert_eq!(
        refs(0),
        [
            format!("Observation/{}", id(2)),
            format!("Observation/{}", id(3))
        ]
    );
    assert_eq!(refs(1), [format!("Observation/{}", id(4))]);
    assert_eq!(
        out[4]["derivedFrom"][0]["reference"],
        format!("DiagnosticReport/{}", id(1))
    );
    assert_eq!(out[2]["subject"]["display"], "P1");
}

#[test]
fn a_segment_without_its_own_note_has_none_not_a_neighbours() {
    let mapping = r#"
[[resource]]
type = "DiagnosticReport"
each = "OBR"
id = "hash(OBR-1)"
[resource.set]
"conclusion" = "NTE-3"

[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"note[0].text" = "NTE-3"
"method.text" = "ZXX-1"
"code.text" = "EVN-1"
"#;
    // OBX 1 has a note and a site segment, OBX 2 has neither, OBX 3 has a note; the
    // order has no note of its own.
    let message = "MSH|^~\\&|LIS\rEVN|R01\rOBR|1\rOBX|1\rNTE|1||hemolysed\rZXX|m1\rOBX|2\rOBX|3\rNTE|1||repeat\r";
    let out = run_inline(mapping, message).unwrap_or_else(|e| panic!("{e}"));
    let field = |i: usize, a: &str, b: &str| out[i][a][b].as_str().map(str::to_string);
    let note = |i: usize| out[i]["note"][0]["text"].as_str().map(str::to_string);
    assert_eq!(out[0]["conclusion"], serde_json::Value::Null, "{}", out[0]);
    assert_eq!(note(1).as_deref(), Some("hemolysed"));
    assert_eq!(note(2), None, "{}", out[2]);
    assert_eq!(note(3).as_deref(), Some("repeat"));
    // Another child segment: only its own segment's, not a sibling's.
    assert_eq!(field(1, "method", "text").as_deref(), Some("m1"));
    assert_eq!(field(2, "method", "text"), None, "{}", out[2]);
    // A message-level segment before the context is still found.
    assert_eq!(field(2, "code", "text").as_deref(), Some("R01"));

    // A segment that extends its head (IN2 after IN1, TQ1 after SCH) does not end the
    // head's group: what follows it is still the head's.
    let mapping = r#"
[[resource]]
type = "Coverage"
each = "IN1"
id = "hash(IN1-1)"
[resource.set]
"subscriberId" = "IN3-1"
"network" = "NTE-3"
"#;
    let message =
        "MSH|^~\\&|HIS\rPID|1\rIN1|1\rIN2|x\rIN3|a\rNTE|1||n1\rIN1|2\rIN2|y\rIN1|3\rIN2|z\rIN3|c\r";
    let out = run_inline(mapping, message).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(Option<&str>, Option<&str>)> = out
        .iter()
        .map(|r| (r["subscriberId"].as_str(), r["network"].as_str()))
        .collect();
    assert_eq!(
        got,
        [(Some("a"), Some("n1")), (None, None), (Some("c"), None)]
    );
}

#[test]
fn all_reads_every_note_of_the_current_segment_and_only_those() {
    let mapping = r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"note[*].text" = "all(NTE-3)"

[[resource]]
type = "DiagnosticReport"
id = "'r'"
[resource.set]
"conclusion" = "join(all(NTE-3), ' | ')"
"#;
    let message = "MSH|^~\\&|LIS\rOBR|1\rNTE|1||order note\rOBX|1\rNTE|1||line one\rNTE|2||line two\rOBX|2\rOBX|3\rNTE|1||three\r";
    let out = run_inline(mapping, message).unwrap_or_else(|e| panic!("{e}"));
    let notes = |i: usize| -> Vec<&str> {
        out[i]["note"].as_array().map_or(Vec::new(), |n| {
            n.iter().filter_map(|x| x["text"].as_str()).collect()
        })
    };
    assert_eq!(notes(0), ["line one", "line two"]);
    assert!(notes(1).is_empty(), "{}", out[1]);
    assert_eq!(notes(2), ["three"]);
    // Without a context, every NTE of the message.
    assert_eq!(
        out[3]["conclusion"],
        "order note | line one | line two | three"
    );
}

#[test]
fn when_skips_and_ref_is_absent_when_nothing_was_produced() {
    let mapping = r#"
[[resource]]
type = "Encounter"
when = "exists(PV1)"
id = "'enc'"

[[resource]]
type = "Patient"
id = "'p1'"
[resource.set]
"link[0].other" = "ref(Encounter)"
"active" = "not(exists(PV1))"
"#;
    let out = run_inline(mapping, "MSH|^~\\&|A\rPID|1\r").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out,
        [
            serde_json::json!({"resourceType": "Patient", "id": "p1", "meta": {"source": "test"}, "active": true})
        ]
    );
}

#[test]
fn a_reference_is_the_object_it_stands_for_on_every_path() {
    // A reference is carried without building its object; written out plainly, opened
    // by a later path, inside a list and as text, it is `{"reference": "Type/id"}` as
    // before, whether the plan writes the record or the tree does.
    let resources = r#"
[[resource]]
type = "Patient"
id = "'p1'"

[[resource]]
type = "Encounter"
each = "PV1"
id = "hash(PV1-19)"
"#;
    let observation = |sets: &str| {
        format!("{resources}\n[[resource]]\ntype = \"Observation\"\nid = \"'o1'\"\n[resource.set]\n{sets}")
    };
    let planned = observation(
        r#"
"subject" = "ref(Patient)"
"subject.display" = "PID-5.1"
"encounter" = "ref(Encounter)"
"focus[*]" = "refs(Encounter)"
"focus[1].display" = "PV1-19"
"note[0].text" = "concat('see ', ref(Patient))"
"#,
    );
    let message = "MSH|^~\\&|A\rPID|1||P1||NGUYEN^AN\rPV1|1|I|||||||||||||||||V1\rPV1|1|I|||||||||||||||||V2\r";
    let dir = dir_with(&planned, &[]);
    let set = load_set(&dir);
    let rules = &set.get("m").unwrap().rules;
    assert!(rules[2].plan.is_some(), "the plan writes this one");
    let out = run_inline(&planned, message).unwrap_or_else(|e| panic!("{e}"));
    let enc: Vec<String> = ids_of(&out, "Encounter")
        .iter()
        .map(|id| format!("Encounter/{id}"))
        .collect();
    assert_eq!(enc.len(), 2);
    let want = json!({"resourceType": "Observation", "id": "o1", "meta": {"source": "test"},
        "subject": {"reference": "Patient/p1", "display": "NGUYEN"},
        "encounter": {"reference": enc[0]},
        "focus": [{"reference": enc[0]}, {"reference": enc[1], "display": "V1"}],
        "note": [{"text": "see {\"reference\":\"Patient/p1\"}"}]});
    assert_eq!(out[3], want);
    // The same paths with two that meet at run time (one place set twice to the same
    // reference): the walk hands the resource to the tree, which writes the same record
    // with derivedFrom; and a whole list of references, opened by a later path (a rule
    // without a plan), in the tree.
    let met = format!(
        "{planned}\"derivedFrom[0]\" = \"ref(Patient)\"\n\"derivedFrom[0].reference\" = \"'Patient/p1'\"\n"
    );
    let out = run_inline(&met, message).unwrap_or_else(|e| panic!("{e}"));
    let mut with_derived = want.clone();
    with_derived["derivedFrom"] = json!([{"reference": "Patient/p1"}]);
    assert_eq!(out[3], with_derived);
    let whole_list = observation(
        r#"
"focus" = "refs(Encounter)"
"focus[1].display" = "PV1-19"
"#,
    );
    let dir = dir_with(&whole_list, &[]);
    assert!(load_set(&dir).get("m").unwrap().rules[2].plan.is_none());
    let out = run_inline(&whole_list, message).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out[3]["focus"],
        json!([{"reference": enc[0]}, {"reference": enc[1], "display": "V1"}])
    );
    // The same place set to another reference: the tree names the conflict.
    let conflict = met.replace("'Patient/p1'", "'Patient/p2'");
    let err = run_inline(&conflict, message).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        ("derivedFrom[0].reference", "set twice")
    );
}

#[test]
fn an_index_after_a_list_counts_only_what_the_list_holds() {
    // The first PID-3 repetition is empty: the list of identifiers holds one, and
    // `identifier[0]` is that one; setting the same list again is no conflict.
    let mapping = r#"
[[resource]]
type = "Patient"
id = "'p1'"
[resource.set]
"identifier" = "identifier(PID-3[*])"
"identifier[0].use" = "'official'"
"name" = "human_name(PID-5[*])"
"name[0].use" = "'usual'"
"#;
    let out = run_inline(mapping, "MSH|^~\\&|A\rPID|1||~12345^^^H||~~Lê^Văn\r")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out[0]["identifier"],
        serde_json::json!([{"value": "12345", "use": "official"}])
    );
    assert_eq!(
        out[0]["name"],
        serde_json::json!([{"family": "Lê", "given": ["Văn"], "use": "usual"}])
    );
}

/// `PID-3[5=MR]` takes the first repetition whose component 5 is MR; `$name` is a
/// `[let]` expression, read in the context it is used in.
#[test]
fn repetition_filters_and_let_expressions() {
    let mapping = "[let]\nnumber = \"coalesce(PID-3[5=MR].1, PID-3.1)\"\n\
                   tag = \"concat('#', $number)\"\n\
                   [[resource]]\ntype = \"Patient\"\nid = \"hash($number)\"\n\
                   [resource.set]\n\"identifier[0].value\" = \"$tag\"\n\
                   \"identifier[1].value\" = \"PID-3[5=NI].4.1\"\n\
                   \"identifier[2].value\" = \"PID-3[5=PPN].1\"\n\
                   [[resource]]\ntype = \"Observation\"\neach = \"OBX\"\nid = \"hash($number, OBX-1)\"\n\
                   [resource.set]\n\"note[0].text\" = \"$tag\"\n\"subject\" = \"ref(Patient)\"\n";
    let out = run_inline(
        mapping,
        "MSH|^~\\&|A|B|||20240131||ADT^A01|1|P|2.5\rPID|1||079^^^CCCD^NI~BN7^^^BV^MR\r\
OBX|1|NM|X||1\rOBX|2|NM|Y||2\r",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0]["identifier"][0]["value"], json!("#BN7"));
    assert_eq!(out[0]["identifier"][1]["value"], json!("CCCD"));
    assert_eq!(out[0]["identifier"].as_array().map(Vec::len), Some(2));
    assert_eq!(out[0]["id"], json!(functions::hash(&["BN7"])));
    assert_eq!(out[2]["note"][0]["text"], json!("#BN7"));
    let out = run_inline(
        mapping,
        "MSH|^~\\&|A|B|||20240131||ADT^A01|1|P|2.5\rPID|1||079^^^CCCD^NI\r",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0]["identifier"][0]["value"], json!("#079"));
}

#[test]
fn ref_answers_each_type_however_many_one_resource_asks_for() {
    // Each type asked for twice, six types: more than a scope keeps answers for.
    let types = [
        "Patient",
        "Encounter",
        "Specimen",
        "Device",
        "Location",
        "Group",
    ];
    let mut mapping = String::new();
    for t in types {
        mapping.push_str(&format!(
            "[[resource]]\ntype = \"{t}\"\nid = \"'{t}1'\"\n\n"
        ));
    }
    mapping.push_str("[[resource]]\ntype = \"Basic\"\nid = \"'b'\"\n[resource.set]\n");
    for (i, t) in types.iter().chain(types.iter()).enumerate() {
        mapping.push_str(&format!(
            "\"extension[{i}].valueReference\" = \"ref({t})\"\n"
        ));
    }
    let out = run_inline(&mapping, "MSH|^~\\&|A\rPID|1||P1\r").unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<&str> = out[6]["extension"]
        .as_array()
        .expect("extension")
        .iter()
        .map(|e| {
            e["valueReference"]["reference"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    let want: Vec<String> = types
        .iter()
        .chain(types.iter())
        .map(|t| format!("{t}/{t}1"))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn functions_table() {
    let message = "MSH|^~\\&|A||||||ADT^A01|C1|P|2.5\r\
PID|1||ID1^^^AUTH||Doe^John Paul^Q||20240131083000+0700|X|||\"\"|| a b \r";
    let table = [
        ("lookup(v2_gender, PID-8, 'unknown')", Some("\"unknown\"")),
        ("lookup(v2_gender, PID-8)", None),
        ("lookup(v2_gender, 'm')", Some("\"male\"")),
        ("lookup(v2_gender, PID-99, 'unknown')", None),
        ("date(PID-7)", Some("\"2024-01-31\"")),
        ("datetime(PID-7)", Some("\"2024-01-31T08:30:00+07:00\"")),
        ("decimal('5.10')", Some("5.10")),
        ("integer('042')", Some("42")),
        ("split(PID-5.2, ' ')", Some("[\"John\",\"Paul\"]")),
        ("join(split(PID-5.2, ' '), '+')", Some("\"John+Paul\"")),
        ("concat(PID-5.1, PID-99, '-', PID-5.3)", Some("\"Doe-Q\"")),
        ("coalesce(PID-99, PID-5.3)", Some("\"Q\"")),
        ("trim(PID-13)", Some("\"a b\"")),
        ("upper(PID-5.1)", Some("\"DOE\"")),
        ("lower(PID-5.1)", Some("\"doe\"")),
        ("eq(PID-5.1, 'Doe')", Some("true")),
        ("in(PID-8, 'M', 'X')", Some("true")),
        ("if(eq(PID-8, 'M'), 'man', 'other')", Some("\"other\"")),
        ("if(eq(PID-8, 'M'), 'man')", None),
        ("exists(PID-11)", Some("false")),
        ("exists(PID-3.4)", Some("true")),
        ("exists(PV1)", Some("false")),
        ("PID-11", None),
        ("PID-4", None),
        ("hash(PID-98, PID-99)", None),
        ("hash('a')", Some("\"ca978112ca1bbdcafac231b39a23dc4d\"")),
    ];
    for (expr, want) in table {
        let mapping = format!(
            "[[resource]]\ntype = \"Basic\"\nid = \"'b'\"\n[resource.set]\n\"x\" = \"{}\"\n",
            expr.replace('"', "\\\"")
        );
        let out = run_inline(&mapping, message).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let got = out[0]
            .get("x")
            .map(|v| serde_json::to_string(v).unwrap_or_default());
        assert_eq!(got.as_deref(), want, "{expr}");
    }
}

#[test]
fn runtime_errors_name_resource_field_and_value() {
    let mapping = r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"valueQuantity.value" = "if(eq(OBX-2, 'NM'), decimal(OBX-5))"
"#;
    let message = "MSH|^~\\&|A\rOBX|1|NM|x||1\rOBX|2|ST|x||a\rOBX|3|NM|x||12,5\r";
    let e = run_inline(mapping, message).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some(
            "Observation #3 (OBX 3) valueQuantity.value: decimal(OBX-5): \"12,5\" is not a decimal"
        )
    );

    let dates = r#"
[[resource]]
type = "Patient"
id = "'p'"
[resource.set]
"birthDate" = "date(PID-7)"
"#;
    let e = run_inline(dates, "MSH|^~\\&|A\rPID|1||||||20241301\r")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("Patient #1 birthDate: date(PID-7): \"20241301\" is not a valid HL7 date")
    );

    let ids = "[[resource]]\ntype = \"Patient\"\nid = \"hash(PID-3.4.1, PID-3.1)\"\n";
    let e = run_inline(ids, "MSH|^~\\&|A\rPID|1\r")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("Patient #1 id: the id expression gave no value")
    );

    // An id FHIR would refuse is an error, not a record; the id's own characters
    // (letters, digits, '-', '.') and up to 64 of them pass.
    let raw = "[[resource]]\ntype = \"Patient\"\nid = \"PID-3.1\"\n";
    for bad in ["BN 1", "BN_1", "BN/1", "Đức", &"9".repeat(65)] {
        let e = run_inline(raw, &format!("MSH|^~\\&|A\rPID|1||{bad}\r"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e,
            Some(format!(
                "Patient #1 id: {bad:?} is not a valid FHIR id (A-Z a-z 0-9 - . and at most 64)"
            )),
            "{bad}"
        );
    }
    for good in ["BN-1.a", "Z9", &"9".repeat(64)] {
        let out = run_inline(raw, &format!("MSH|^~\\&|A\rPID|1||{good}\r")).expect(good);
        assert_eq!(out[0]["id"], good);
    }

    let zone =
        "[[resource]]\ntype = \"Encounter\"\nid = \"'e'\"\n[resource.set]\n\"period.start\" = \"datetime(PV1-3)\"\n";
    let e = run_inline(zone, "MSH|^~\\&|A\rPV1|1|I|20240131083000\r")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("Encounter #1 period.start: datetime(PV1-3): \"20240131083000\" has a time but no zone; give a default zone, e.g. datetime(x, '+07:00')")
    );
}

#[test]
fn load_errors_point_at_file_line_column() {
    let text = r#"description = "bad"

[[resource]]
type = "Patient"
id = "hash(PID-3.1)"
[resource.set]
"birthDate" = "dat(PID-7)"
"gender" = "lookup(v2_gendr, PID-8)"
"name[0].family" = "PID-5.x"
"name[0.given" = "PID-5.2"
"active" = "exists(PID, PID)"
"link[0].other" = "ref(Encounter)"
"telecom[0].value" = "PID-13 'x'"

[[resource]]
type = "Patinet"
id = "'x'"
colour = "red"
"#;
    let errors = load_errors(text);
    assert_eq!(
        errors,
        [
            "7:16: unknown function \"dat\" (did you mean \"date\"?)",
            "8:20: unknown table \"v2_gendr\" (did you mean \"v2_gender\"?) (tables are mappings/tables/<name>.csv)",
            "9:27: expected a component number, found 'x'",
            "10:8: bad output path: expected ']', found '.'",
            "11:13: exists() takes 1 argument, got 2",
            "12:24: ref() to \"Encounter\", which this mapping does not produce",
            "13:30: unexpected '\\'' after expression",
            "16:8: unknown resource type \"Patinet\" (did you mean \"Patient\"?)",
            "18:1: unknown key \"colour\"",
        ]
    );
    let dir = dir_with(text, &[]);
    let full = MappingSet::load(dir.path()).err().map(|d| d[0].to_string());
    let want = format!(
        "{}:7:16: unknown function \"dat\" (did you mean \"date\"?)",
        dir.path().join("m.toml").display()
    );
    assert_eq!(full, Some(want));
}

/// `[let]` problems: each reported once, where it is, with the names a misspelt use
/// most likely meant.
#[test]
fn let_errors_point_at_the_definition_or_the_use() {
    let text = r#"[let]
number = "coalesce(PID-3[5=MR].1, PID-3.1)"
broken = "dat(PID-7)"
subject = "ref(Patient)"
later = "$afterwards"
"bad name" = "PID-5"
afterwards = "PID-8"

[[resource]]
type = "Patient"
id = "hash($nubmer)"
[resource.set]
"birthDate" = "$broken"
"gender" = "$afterwards"
"name[0].family" = "PID-3[5=].1"
"identifier[0]" = "identifier($broken)"

[[resource]]
type = "Observation"
unique = "yes"
id = "hash($number, $subject)"
[resource.set]
"subject" = "$subject"
"#;
    assert_eq!(
        load_errors(text),
        [
            "3:11: unknown function \"dat\" (did you mean \"date\"?)",
            "5:10: $afterwards is not defined above this point: a [let] may use only the names defined above it",
            "6:1: a [let] name is letters, digits and _, starting with a letter: \"bad name\"",
            "11:12: unknown name $nubmer (did you mean $number?)",
            "15:29: expected the code the component must have (PID-3[5=MR]), found ']'",
            "20:10: unique must be true or false (a TOML boolean, without quotes)",
            "21:21: $subject calls ref() or refs(), which cannot be used in id or when (ids are computed before references)",
        ]
    );
}

/// `shared.toml` names what every mapping of the directory may use; it is no mapping,
/// it holds no resources, and a mapping cannot define one of its names again.
#[test]
fn shared_let_names_serve_every_mapping() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"))
    };
    std::fs::create_dir(dir.path().join("tables")).unwrap_or_else(|e| panic!("{e}"));
    write(
        "shared.toml",
        "[let]\nnumber = \"coalesce(PID-3[5=MR].1, PID-3.1)\"\nkey = \"hash(MSH-4.1, $number)\"\n",
    );
    let mapping = "[[resource]]\ntype = \"Patient\"\nid = \"$key\"\n[resource.set]\n\"identifier[0].value\" = \"$number\"\n";
    write("a.toml", mapping);
    write("b.toml", mapping);
    let set = load_set(&dir);
    assert_eq!(set.names().collect::<Vec<_>>(), ["a", "b"]);
    let m = msg("MSH|^~\\&|A|BV|||20240131||ADT^A01|1|P|2.5\rPID|1||079^^^CCCD^NI~BN7^^^BV^MR\r");
    for name in ["a", "b"] {
        let out = crate::record::to_values(
            &set.get(name)
                .unwrap()
                .run(&m, &RunContext::default())
                .unwrap(),
        );
        assert_eq!(out[0]["id"], json!(functions::hash(&["BV", "BN7"])));
        assert_eq!(out[0]["identifier"][0]["value"], json!("BN7"));
    }

    write(
        "shared.toml",
        "[let]\nnumber = \"PID-3.1\"\nbroken = \"dat(PID-7)\"\n\n[[resource]]\ntype = \"Patient\"\nid = \"'x'\"\n",
    );
    write("a.toml", "[let]\nnumber = \"PID-2\"\n\n[[resource]]\ntype = \"Patient\"\nid = \"hash($number)\"\n[resource.set]\n\"birthDate\" = \"$broken\"\n");
    std::fs::remove_file(dir.path().join("b.toml")).unwrap_or_else(|e| panic!("{e}"));
    let errors: Vec<String> = MappingSet::load(dir.path())
        .err()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let file = d
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{file}:{}:{}: {}", d.line, d.column, d.message)
        })
        .collect();
    assert_eq!(
        errors,
        [
            "a.toml:2:1: $number is defined in shared.toml already; give this one another name",
            "shared.toml:3:11: unknown function \"dat\" (did you mean \"date\"?)",
            "shared.toml:5:3: shared.toml holds only [let] names that every mapping may use; resources go in a mapping file",
        ]
    );

    // A shared.toml that does not parse is one problem, not one per use of its names.
    write("shared.toml", "[let]\nnumber = \"PID-3.1\n");
    write("a.toml", mapping);
    let errors = MappingSet::load(dir.path()).err().unwrap_or_default();
    assert_eq!(errors.len(), 1, "{}", crate::diag::render(&errors));
    assert!(
        errors[0].to_string().contains("shared.toml:2:"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_misspelled_type_is_one_problem_not_one_per_reference_to_it() {
    let refs = "[[resource]]\ntype = \"Encounter\"\nid = \"'e'\"\n[resource.set]\n\"subject\" = \"ref(Patient)\"\n\"partOf\" = \"ref(Encounter)\"\n";
    // The type it most likely meant is taken as produced.
    let errors = load_errors(&format!(
        "[[resource]]\ntype = \"Patinet\"\nid = \"'p'\"\n\n{refs}"
    ));
    assert_eq!(
        errors,
        ["2:8: unknown resource type \"Patinet\" (did you mean \"Patient\"?)"]
    );
    // Nothing likely: no reference is reported until the type is fixed.
    let errors = load_errors(&format!(
        "[[resource]]\ntype = \"Qqqqqq\"\nid = \"'p'\"\n\n{refs}"
    ));
    assert_eq!(errors, ["2:8: unknown resource type \"Qqqqqq\""]);
    // With every type known, a reference to one not produced is reported.
    let errors = load_errors(refs);
    assert_eq!(
        errors,
        ["5:18: ref() to \"Patient\", which this mapping does not produce"]
    );
}

#[test]
fn toml_syntax_and_structure_errors() {
    let errors = load_errors("[[resource]]\ntype = \"Patient\"\nid = \n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("3:") && errors[0].contains("TOML syntax"),
        "{errors:?}"
    );
    let errors = load_errors(
        "[[resource]]\ntype = \"Patient\"\nid = \"'p'\"\n[resource.set]\n\"active\" = \"eq(PID-8, \"F\")\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("5:")
            && errors[0].ends_with("; inside an expression, write text in single quotes: 'CP'"),
        "{errors:?}"
    );
    let errors = load_errors("[[resorce]]\ntype = \"Patient\"\n");
    assert_eq!(
        errors,
        ["1:3: unknown key \"resorce\" (did you mean \"resource\"?)"]
    );
    let errors = load_errors("[[resource]]\ntype = \"Patient\"\nid = \"ref(Patient)\"\n");
    assert_eq!(
        errors,
        ["3:7: ref() cannot be used in id or when (ids are computed before references)"]
    );
    let errors = load_errors("[[resource]]\ntype = \"Patient\"\neach = \"obx\"\nid = \"'x'\"\n");
    assert_eq!(
        errors,
        ["3:8: each must be a segment name like \"OBX\", found \"obx\""]
    );
}

#[test]
fn loss_report_names_unread_fields_and_segments() {
    let toml_text = r#"
[[resource]]
type = "Patient"
when = "exists(PID)"
id = "hash(PID-3.1)"
[resource.set]
"gender" = "lookup(v2_gender, PID-8)"
"birthDate" = "if(exists(PID-8), date(PID-7), date(PID-29))"

[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"valueString" = "OBX-5"
"#;
    let dir = dir_with(toml_text, &[("v2_gender", "code,value\nM,male\n")]);
    let set = load_set(&dir);
    let m = set.get("m").unwrap_or_else(|| panic!("no m"));
    let message = "MSH|^~\\&|LIS|LAB|||20240131||ORU^R01|1|P|2.5\r\
PID|1||42^^^BV||TRẦN^Bình||19700101|M|||||||||||||||||||||20240101\r\
EVN|A01\r\
OBX|1|ST|x||a\r\
OBX|2|ST|y||b|mg\r";
    let (out, unread) = m.run_with_loss_report(&msg(message), &RunContext::default());
    assert_eq!(out.map(|r| r.len()).ok(), Some(3));
    assert_eq!(
        unread,
        [
            "MSH-7",
            "PID-1",
            "PID-5",
            "PID-29",
            "EVN (whole segment)",
            "OBX[1]-2",
            "OBX[1]-3",
            "OBX[2]-2",
            "OBX[2]-3",
            "OBX[2]-6",
        ]
    );
}

#[test]
fn templates_required_default_matches_and_data_types() {
    let toml_text = r#"
[[resource]]
type = "Patient"
id = "required(PID-3.1, 'no patient id in PID-3')"
[resource.set]
"name[*]" = "human_name(PID-5[*])"
"name[0].text" = "template('{PID-5.1.1}, {PID-5.2} ({PID-8})')"
"address[*]" = "address(PID-11[*])"
"telecom[*]" = "contact_point(PID-13[*])"
"identifier[*]" = "identifier(PID-3[*])"
"maritalStatus" = "codeable_concept(PID-16)"
"gender" = "default(lookup(v2_gender, PID-8), 'unknown')"
"active" = "matches(PID-3.1, 'BN*')"
"extension[0].valueString" = "template('never {PID-99}')"
"#;
    let out = run_inline(
        toml_text,
        "MSH|^~\\&|HIS|BV|||20240131||ADT^A01|1|P|2.5\r\
PID|1||BN7^^^BV^MR~079^^^&1.2.3&ISO^NI||TRẦN^Văn^Bình^Jr^Dr^^L~TRAN^Van||19700101|X|||12 Lê Lợi^P2^Huế^TTH^530000^VN^H||^PRN^PH^^84^905000001~^NET^Internet^binh@example.vn|||M^Married^HL70002\r",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = &out[0];
    assert_eq!(
        p["name"],
        serde_json::json!([
            {"family": "TRẦN", "given": ["Văn", "Bình"], "suffix": ["Jr"], "prefix": ["Dr"], "text": "TRẦN, Văn (X)"},
            {"family": "TRAN", "given": ["Van"]}
        ])
    );
    assert_eq!(
        p["address"][0],
        serde_json::json!({"line": ["12 Lê Lợi", "P2"], "city": "Huế", "state": "TTH", "postalCode": "530000", "country": "VN"})
    );
    assert_eq!(p["telecom"][0]["value"], "+84 905000001");
    assert_eq!(p["telecom"][0]["system"], "phone");
    assert_eq!(p["telecom"][1]["value"], "binh@example.vn");
    assert_eq!(p["identifier"][0]["value"], "BN7");
    assert_eq!(p["identifier"][0]["type"]["coding"][0]["code"], "MR");
    assert_eq!(p["identifier"][1]["system"], "urn:oid:1.2.3");
    assert_eq!(p["maritalStatus"]["coding"][0]["code"], "M");
    assert_eq!(p["gender"], "unknown");
    assert_eq!(p["active"], true);
    assert!(
        p.get("extension").is_none(),
        "a template with only absent placeholders is absent"
    );

    let err = run_inline(
        toml_text,
        "MSH|^~\\&|HIS|BV|||20240131||ADT^A01|1|P|2.5\rPID|1||\r",
    )
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("Patient #1 id: required(PID-3.1, 'no patient id in PID-3'): no patient id in PID-3")
    );
}

#[test]
fn quantities_from_nm_and_sn() {
    let toml_text = r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"valueQuantity" = "quantity(OBX-5, OBX-6)"
"#;
    let out = run_inline(
        toml_text,
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|1|P|2.5\r\
OBX|1|NM|x||5.10|mmol/L^millimole per liter^UCUM\r\
OBX|2|SN|x||<^0.5|mg/L\r\
OBX|3|SN|x||^1^:^128\r\
OBX|4|NM|x||12,5\r",
    )
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        out.as_deref(),
        Some("Observation #4 (OBX 4) valueQuantity: quantity(OBX-5, OBX-6): \"12,5\" is not a decimal")
    );
    let out = run_inline(
        toml_text,
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|1|P|2.5\r\
OBX|1|NM|x||5.10|mmol/L^millimole per liter^UCUM\r\
OBX|2|SN|x||<^0.5|mg/L\r\
OBX|3|SN|x||^1^:^128\r\
OBX|4|NM|x||2|ML^milliliter^ISO+\r\
OBX|5|NM|x||90|MGDL^^L^mg/dL^milligram per deciliter^UCUM\r",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A local code with its UCUM alternate: the alternate.
    assert_eq!(
        out[4]["valueQuantity"],
        serde_json::json!({"value": 90, "unit": "MGDL", "system": "http://unitsofmeasure.org", "code": "mg/dL"})
    );
    // Units in another coding system than UCUM, which no table names: the unit's text,
    // and no UCUM code claimed.
    assert_eq!(
        out[3]["valueQuantity"],
        serde_json::json!({"value": 2, "unit": "milliliter"})
    );
    assert_eq!(
        out[1]["valueQuantity"]["system"], "http://unitsofmeasure.org",
        "units that name no system are read as UCUM"
    );
    assert_eq!(
        serde_json::to_string(&out[0]["valueQuantity"])
            .ok()
            .as_deref(),
        Some(
            r#"{"value":5.10,"unit":"millimole per liter","system":"http://unitsofmeasure.org","code":"mmol/L"}"#
        )
    );
    assert_eq!(out[1]["valueQuantity"]["comparator"], "<");
    assert_eq!(out[1]["valueQuantity"]["unit"], "mg/L");
    assert!(
        out[2].get("valueQuantity").is_none(),
        "a ratio is not a quantity"
    );
}

#[test]
fn escapes_empty_and_null_fields() {
    let toml_text = r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"valueString" = "OBX-5"
"note[0].text" = "if(exists(OBX-6), 'units present', 'units absent')"
"code.text" = "coalesce(OBX-3.2, OBX-3.1, 'no code')"
"effectiveDateTime" = "datetime(OBX-14)"
"#;
    let out = run_inline(
        toml_text,
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|1|P|2.5\r\
OBX|1|ST|A^Na\\S\\K||5 \\T\\ 6 \\F\\ 7\\.br\\tám|\"\"|||||F|||20240131083000.12+0700\r\
OBX|2|ST|||||||||F\r",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0]["valueString"], "5 & 6 | 7\ntám");
    assert_eq!(
        out[0]["code"]["text"], "Na^K",
        "an escaped ^ is data, not a separator"
    );
    assert_eq!(
        out[0]["note"][0]["text"], "units absent",
        "\"\" is HL7's null: absent"
    );
    assert_eq!(out[0]["effectiveDateTime"], "2024-01-31T08:30:00.12+07:00");
    assert!(
        out[1].get("valueString").is_none(),
        "an empty field is absent"
    );
    assert_eq!(out[1]["code"]["text"], "no code");
    assert!(out[1].get("effectiveDateTime").is_none());

    // A time without a zone and no default zone is an error naming resource and field.
    let err = run_inline(
        toml_text,
        "MSH|^~\\&|LIS|BV|||20240131||ORU^R01|1|P|2.5\rOBX|1|ST|A||x||||||F|||202401310830\r",
    )
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("Observation #1 (OBX 1) effectiveDateTime: datetime(OBX-14): \"202401310830\" has a time but no zone; give a default zone, e.g. datetime(x, '+07:00')")
    );
}

/// The shipped mappings' output paths never meet, so every rule writes its records from
/// its plan; a rule that falls back to the tree is named.
#[test]
fn every_shipped_rule_has_a_plan() {
    let set = shipped();
    let mut without = Vec::new();
    for name in set.names() {
        for rule in &set.get(name).unwrap().rules {
            if rule.plan.is_none() {
                without.push(format!("{name}: {}", rule.resource_type));
            }
        }
    }
    assert!(without.is_empty(), "{without:?}");
}

/// A resource whose paths meet at run time is built as the tree builds it (merged, or a
/// mapping error naming the field), one whose paths cannot be laid out at all too, and
/// a resource after either is written from its own values.
#[test]
fn resources_whose_paths_meet_come_out_as_the_tree_makes_them() {
    let toml_text = r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"code" = "codeable_concept(OBX-3)"
# The same text the data type function gives: merged, no conflict.
"code.text" = "OBX-3.2"
"identifier[*]" = "identifier(OBX-21[*])"
# Where OBX-21 repeats, a second value for item 1: a conflict.
"identifier[1].value" = "OBX-18"
"status" = "'final'"
"effectiveDateTime" = "datetime(OBX-14, '+07:00')"

[[resource]]
type = "Patient"
id = "'p1'"
[resource.set]
# Inside meta, which the engine fills: never laid out ahead.
"meta.tag[0].code" = "'t'"
"gender" = "lookup(v2_gender, PID-8)"

[[resource]]
type = "Observation"
id = "'last'"
[resource.set]
"status" = "'preliminary'"
"code.text" = "PID-8"
"#;
    let dir = dir_with(toml_text, &[("v2_gender", "code,value\nM,male\n")]);
    let set = load_set(&dir);
    let rules = &set.get("m").unwrap().rules;
    let planned: Vec<bool> = rules.iter().map(|r| r.plan.is_some()).collect();
    assert_eq!(planned, [true, false, true]);
    let obx_at = |f14: &str, f18: &str, f21: &str| {
        let mut f = vec![""; 22];
        f[..6].copy_from_slice(&["OBX", "1", "ST", "1-8^Glucose^LN", "", "x"]);
        (f[11], f[14], f[18], f[21]) = ("F", f14, f18, f21);
        format!(
            "MSH|^~\\&|A|B|||20240131||ORU^R01|1|P|2.5\rPID|1||P1||N^A||19800101|M\r{}\r",
            f.join("|")
        )
    };
    let obx = |f18: &str, f21: &str| obx_at("", f18, f21);
    let ok = obx("L2", "E1");
    let out = run_inline(toml_text, &ok).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        out[0],
        json!({"resourceType": "Observation", "id": out[0]["id"], "meta": {"source": "test"},
            "code": {"coding": [{"code": "1-8", "display": "Glucose"}], "text": "Glucose"},
            "identifier": [{"value": "E1"}, {"value": "L2"}], "status": "final"})
    );
    assert_eq!(
        out[1],
        json!({"resourceType": "Patient", "id": "p1",
            "meta": {"source": "test", "tag": [{"code": "t"}]}, "gender": "male"})
    );
    assert_eq!(
        out[2],
        json!({"resourceType": "Observation", "id": "last", "meta": {"source": "test"},
            "status": "preliminary", "code": {"text": "M"}})
    );
    let clash = obx("L2", "E1~E2");
    let e = run_inline(toml_text, &clash).err();
    let e = e.unwrap_or_else(|| panic!("two values for identifier[1].value were accepted"));
    assert_eq!(
        (e.resource.as_str(), e.field.as_str(), e.message.as_str()),
        ("Observation #1 (OBX 1)", "identifier[1].value", "set twice")
    );
    // The record the tree merged has its members in the order they were first set.
    let keys: Vec<&String> = out[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["resourceType", "id", "meta", "code", "identifier", "status"]
    );
    // A conflict before a value that cannot be worked out is the error, as it is when
    // each value is set as it is made; without the conflict, the value's error.
    let e = run_inline(toml_text, &obx_at("2024-01-31", "L2", "E1~E2")).err();
    let e = e.unwrap_or_else(|| panic!("two values for identifier[1].value were accepted"));
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("identifier[1].value", "set twice")
    );
    let e = run_inline(toml_text, &obx_at("2024-01-31", "L2", "E1")).err();
    let e = e.unwrap_or_else(|| panic!("an invalid OBX-14 was accepted"));
    assert_eq!(e.field, "effectiveDateTime");
}

/// A path read again while one resource is made gives what it gave the first time
/// (kept, not looked up again), and the next resource reads its own segment: the same
/// paths in every OBX, in the resource's scope, in `all()` and in a group's other
/// segments, with and without the loss report (which reads every path itself).
#[test]
fn a_path_read_again_is_the_same_and_the_next_resource_reads_its_own() {
    let text = r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1, OBX-3.1)"
[resource.set]
"code.text" = "OBX-3.2"
"code.coding[0].code" = "OBX-3.1"
"code.coding[0].display" = "if(exists(OBX-3.2), concat(OBX-3.2, ' (', OBX-3.1, ')'))"
"valueString" = "if(eq(OBX-2, 'ST'), OBX-5)"
"valueQuantity.value" = "if(eq(OBX-2, 'NM'), decimal(OBX-5))"
"note[*].text" = "all(concat(NTE-3, '/', OBX-3.1))"
"method.text" = "concat(OBR-4.1, ':', OBX-3.1, ':', OBR-4.1)"
"#;
    let message = "MSH|^~\\&|A|B|||20240131||ORU^R01|1|P|2.5\rPID|1||P1\r\
OBR|1|||CBC\r\
OBX|1|NM|HGB^Hemoglobin||13.5\rNTE|1||n1\rNTE|2||n2\r\
OBX|2|ST|COM^Comment||ok\r\
OBR|2|||LIP\r\
OBX|1|NM|CHOL||5.1\rNTE|1||n3\r";
    let expected = json!([
        {"code": {"text": "Hemoglobin", "coding": [{"code": "HGB", "display": "Hemoglobin (HGB)"}]},
         "valueQuantity": {"value": 13.5},
         "note": [{"text": "n1/HGB"}, {"text": "n2/HGB"}],
         "method": {"text": "CBC:HGB:CBC"}},
        {"code": {"text": "Comment", "coding": [{"code": "COM", "display": "Comment (COM)"}]},
         "valueString": "ok",
         "method": {"text": "CBC:COM:CBC"}},
        {"code": {"coding": [{"code": "CHOL"}]},
         "valueQuantity": {"value": 5.1},
         "note": [{"text": "n3/CHOL"}],
         "method": {"text": "LIP:CHOL:LIP"}}
    ]);
    let strip = |out: Vec<Json>| -> Vec<Json> {
        out.into_iter()
            .map(|mut r| {
                let o = r.as_object_mut().expect("object");
                for k in ["resourceType", "id", "meta"] {
                    o.remove(k);
                }
                r
            })
            .collect()
    };
    let out = run_inline(text, message).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(Json::Array(strip(out)), expected);
    let dir = dir_with(text, &[]);
    let set = load_set(&dir);
    let (traced, unread) = set
        .get("m")
        .expect("m")
        .run_with_loss_report(&msg(message), &RunContext::default());
    let traced = traced.unwrap_or_else(|e| panic!("{e:?}"));
    let traced: Vec<Json> = traced.iter().map(|r| r.to_value()).collect();
    assert_eq!(Json::Array(strip(traced)), expected);
    assert!(!unread.iter().any(|u| u.starts_with("OBX")), "{unread:?}");
}

/// A value is four words, its tag one of them (see [`eval::Value`]).
#[test]
fn a_value_is_four_aligned_words() {
    assert_eq!(std::mem::size_of::<Value>(), 32);
    assert_eq!(std::mem::align_of::<Value>(), 8);
}

/// `all(PATH, CONDITION)`: the path in the segments where the condition holds, each
/// read with its segment as the context; the condition is checked like any expression.
#[test]
fn all_keeps_the_segments_its_condition_holds_for() {
    let text = r#"
[[resource]]
type = "Observation"
id = "'o'"
[resource.set]
"note[*].text" = "all(OBX-5, not(in(OBX-2, 'ED', 'RP')))"
"component[*].valueString" = "all(OBX-5.5, eq(OBX-2, 'ED'))"
"component[*].code.text" = "all(OBX-3.2, eq(OBX-2, 'ED'))"
# With a default: one value for every kept segment; none where no segment is kept.
"component[*].code.coding[0].code" = "all(OBX-3.2, eq(OBX-2, 'ED'), 'untitled')"
"category[*].text" = "all(OBX-3.2, eq(OBX-2, 'RP'), 'untitled')"
"method.text" = "join(all(NTE-3, exists(NTE-4)), ' ')"
# A note's condition reads the OBX the note belongs to.
"bodySite.text" = "join(all(NTE-3, eq(OBX-3.2, 'Image')), ' ')"
# An expression in every instance: a choice per segment, aligned with the other lists.
"code.coding[*].code" = "all(if(eq(OBX-2, 'ED'), OBX-5.3, OBX-5))"
"code.coding[*].display" = "all(if(eq(OBX-2, 'ED'), upper(OBX-3.2)), exists(OBX-1), '-')"
"code.text" = "join(all(concat(NTE-1, ':', NTE-3), exists(NTE-4)), ' ')"
"#;
    let message = "MSH|^~\\&|A|B|||20240131||MDM^T02|1|P|2.5\rPID|1||P1\r\
OBX|1|TX|X^Line||First line.\r\
OBX|2|ED|PDF^Report||^AP^PDF^Base64^JVBERi0xLjQ=\r\
NTE|1||kept|C\rNTE|2||left out\r\
OBX|3|TX|X^Line||Last line.\r\
OBX|4|ED|IMG^Image||^IM^JPEG^Base64^/9j/4AAQ\r\
NTE|1||about the last line\r\
OBX|5|ED|||^AP^PDF^Base64^JVBERi0xLjU=\r";
    let out = run_inline(text, message).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        out[0]["note"],
        json!([{"text": "First line."}, {"text": "Last line."}])
    );
    // One item per segment kept, absent where the path is empty: lists stay aligned.
    assert_eq!(
        out[0]["component"],
        json!([
            {"valueString": "JVBERi0xLjQ=", "code": {"text": "Report", "coding": [{"code": "Report"}]}},
            {"valueString": "/9j/4AAQ", "code": {"text": "Image", "coding": [{"code": "Image"}]}},
            {"valueString": "JVBERi0xLjU=", "code": {"coding": [{"code": "untitled"}]}}
        ])
    );
    assert_eq!(out[0].get("category"), None);
    assert_eq!(out[0]["method"], json!({"text": "kept"}));
    assert_eq!(out[0]["bodySite"], json!({"text": "about the last line"}));
    assert_eq!(
        out[0]["code"],
        json!({
            "coding": [
                {"code": "First line.", "display": "-"},
                {"code": "PDF", "display": "REPORT"},
                {"code": "Last line.", "display": "-"},
                {"code": "JPEG", "display": "IMAGE"},
                {"code": "PDF", "display": "-"}
            ],
            "text": "1:kept"
        })
    );
    let errors = load_errors(
        r#"
[[resource]]
type = "Observation"
id = "'o'"
[resource.set]
"note[0].text" = "all('OBX-5')"
"note[1].text" = "all(OBX-5, OBX-2, 'x', 'y')"
"note[2].text" = "all(OBX-5, eq(OBX-2, datetme(OBX-14)))"
"note[3].text" = "all(concat('x', 'y'))"
"note[4].text" = "all(lower(OBX-5), OBX-2, 'x', 'y')"
"#,
    );
    assert_eq!(
        errors,
        [
            "6:19: the first argument of all() must read an HL7 field: a path, e.g. all(NTE-3), or an expression whose first path names the segment to go through, e.g. all(if(eq(OBX-2, 'ED'), OBX-5.5, OBX-5))",
            "7:19: all() takes 1 to 3 arguments, got 4",
            "8:40: unknown function \"datetme\" (did you mean \"datetime\"?)",
            "9:19: the first argument of all() must read an HL7 field: a path, e.g. all(NTE-3), or an expression whose first path names the segment to go through, e.g. all(if(eq(OBX-2, 'ED'), OBX-5.5, OBX-5))",
            "10:19: all() takes 1 to 3 arguments, got 4",
        ]
    );
}

/// A result or order OBX that is a file (ED) becomes a report with the file as its
/// presented form, in base64 whatever the encoding it came in; one that points to a
/// file (RP), a report with its address.
#[test]
fn an_ed_result_keeps_its_file_in_each_encoding() {
    let set = shipped();
    let b64 = |t: &str| crate::mapping::functions::base64(t.as_bytes());
    for (mapping, head) in [
        ("oru_r01", "MSH|^~\\&|LIS|BV|||20261127||ORU^R01|R1|P|2.5\rPID|1||P1^^^BV^MR\rOBR|1|O1||X^Xray\r"),
        ("orders", "MSH|^~\\&|HIS|BV|||20261127||ORM^O01|O1|P|2.5\rPID|1||P1^^^BV^MR\rORC|NW|O1\rOBR|1|O1||X^Xray\r"),
    ] {
        let m = set.get(mapping).expect(mapping);
        let message = format!(
            "{head}OBX|1|ED|R^Report||HIS^AP^PDF^Hex^255044460A\r\
OBX|2|ED|R^Report||HIS^TEXT^RTF^A^{{\\E\\rtf1 x}}\r\
OBX|3|ED|R^Report||HIS^AP^PDF^Base64^JVBERg==\r\
OBX|4|ED|R^Report||HIS^TEXT^^A^hello\r\
OBX|5|ED|R^Report||HIS^AP^^hex^00FF\r\
OBX|6|ED|R^Report||HIS^AP^PDF^UU^begin\r\
OBX|7|RP|R^Report||http://pacs/r/7^PACS^AP^PDF\r\
OBX|8|RP|R^Report||http://pacs/r/8^^image^jpeg\r\
OBX|9|RP|R^Report||http://pacs/r/9^^IM^MRXS\r\
OBX|10|ED|R^Report||HIS^IM^MRXS^Base64^AAAA\r\
OBX|11|ED|R^Report||HIS^^MRXS^Base64^AAAA\r\
OBX|12|RP|R^Report||http://pacs/r/12^^^MRXS\r"
        );
        let out = run_shipped(m, &message);
        let forms: Vec<&Json> = of_type(&out, "DiagnosticReport")
            .iter()
            .filter_map(|r| r.get("presentedForm"))
            .collect();
        assert_eq!(
            forms,
            [
                &json!([{"contentType": "application/pdf", "data": b64("%PDF\n")}]),
                &json!([{"contentType": "application/rtf", "data": b64("{\\rtf1 x}")}]),
                &json!([{"contentType": "application/pdf", "data": "JVBERg=="}]),
                // Without a subtype: text for A, else bytes of no known type.
                &json!([{"contentType": "text/plain", "data": b64("hello")}]),
                &json!([{"contentType": "application/octet-stream", "data": "AP8="}]),
                // An encoding that cannot be converted: the type, no data.
                &json!([{"contentType": "application/pdf"}]),
                // A pointer: its address; its type by subtype from the table (a
                // standard AP^PDF too), else type/subtype as sent.
                &json!([{"url": "http://pacs/r/7", "contentType": "application/pdf"}]),
                &json!([{"url": "http://pacs/r/8", "contentType": "image/jpeg"}]),
                &json!([{"url": "http://pacs/r/9", "contentType": "image/MRXS"}]),
                // A subtype the table does not list: type/subtype, the type by HL7
                // table 0191 (IM → image); without a type, bytes of no known type, and
                // a pointer without one has none.
                &json!([{"contentType": "image/mrxs", "data": "AAAA"}]),
                &json!([{"contentType": "application/octet-stream", "data": "AAAA"}]),
                &json!([{"url": "http://pacs/r/12"}]),
            ],
            "{mapping}"
        );
    }
}

/// A report made of one document OBX takes that OBX's status (OBX-11, HL7 table 0085),
/// not an order's (OBR-25, table 0123, where `A` means partial): an amended pathology
/// report is amended, so that the store lets it replace the final. `R` (entered, not
/// verified: it has values) is preliminary.
#[test]
fn a_document_report_takes_its_status_by_the_results_table() {
    let set = shipped();
    for (mapping, head) in [
        ("oru_r01", "MSH|^~\\&|LIS|BV|||20261127||ORU^R01|R1|P|2.5\rPID|1||P1^^^BV^MR\rOBR|1|O1||X^Xray\r"),
        ("orders", "MSH|^~\\&|HIS|BV|||20261127||ORM^O01|O1|P|2.5\rPID|1||P1^^^BV^MR\rORC|NW|O1\rOBR|1|O1||X^Xray\r"),
        ("mdm_t02", "MSH|^~\\&|HIS|BV|||20261127||MDM^T02|M1|P|2.5\rPID|1||P1^^^BV^MR\rTXA|1|CN|TX|||||||||D1\r"),
    ] {
        let m = set.get(mapping).expect(mapping);
        let mut message = head.to_string();
        let codes = ["F", "A", "C", "R", "P", "W", "S"];
        for (i, code) in codes.iter().enumerate() {
            message.push_str(&format!(
                "OBX|{}|RP|R{i}^Report||http://pacs/r/{i}^^AP^PDF||||||{code}\r",
                i + 1
            ));
        }
        let out = run_shipped(m, &message);
        let statuses: Vec<&Json> = of_type(&out, "DiagnosticReport")
            .iter()
            .filter(|r| r.get("presentedForm").is_some())
            .map(|r| &r["status"])
            .collect();
        assert_eq!(
            statuses,
            ["final", "amended", "corrected", "preliminary", "preliminary", "entered-in-error", "preliminary"],
            "{mapping}"
        );
    }
}

/// An MDM document: every file (OBX-2 ED in Base64 or Hex, or text of a named subtype)
/// and every pointer to one (RP) is an attachment of its own with its content type, in
/// order; the text lines, the data of text without a subtype and anything in an
/// encoding halong cannot convert are one text attachment after them, however many
/// files there are.
#[test]
fn an_mdm_documents_files_are_attachments_of_their_own() {
    let set = shipped();
    let mdm = set.get("mdm_t02").expect("mdm_t02");
    let head = "MSH|^~\\&|HIS|BV|||20261127||MDM^T02|D1|P|2.5\rPID|1||P1^^^BV^MR\r\
TXA|1|DS|AP|20261127||||||||DOC9||||AU\r";
    let message = format!(
        "{head}OBX|1|TX|N^Tóm tắt||Ổn định.\r\
OBX|2|ED|18842-5^Discharge summary^LN||HIS^AP^PDF^Base64^JVBERi0xLjQ=\r\
OBX|3|ED|P^Page||HIS^IM^JPEG^BASE64^/9j/4AAQ\r\
OBX|4|ED|X^Hex||HIS^AP^PDF^Hex^4142\r\
OBX|5|ED|||HIS^image^webp^Base64^UklGRg==\r\
OBX|6|ED|H^Letter||HIS^TEXT^HTML^a^<p>A\\T\\B</p>\r\
OBX|7|ED|U^Old||HIS^AP^PDF^UU^begin\r\
OBX|8|ED|E^Empty||HIS^AP^PDF^Base64^\r\
OBX|9|ED|B^Bytes||HIS^AP^^ Hex ^00FF\r\
OBX|10|ED|T^Plain||HIS^TEXT^PLAIN^A^plain text\r\
OBX|11|ED|N^Note||HIS^TEXT^^A^a note\r\
OBX|12|RP|R^Scan||http://pacs/doc/7^PACS^AP^PDF\r\
OBX|13|RP|S^Slide||http://x/y\\T\\z^^IM^MRXS\r"
    );
    let out = run_shipped(mdm, &message);
    let doc = of_type(&out, "DocumentReference")[0];
    // Hex is decoded ("AB") and plain text (A, its escapes decoded) encoded; an
    // encoding halong cannot convert stays in the text as it was sent.
    let b64 = |t: &str| crate::mapping::functions::base64(t.as_bytes());
    assert_eq!(
        doc["content"],
        json!([
            {"attachment": {"contentType": "application/pdf", "title": "Discharge summary", "data": "JVBERi0xLjQ="}},
            {"attachment": {"contentType": "image/jpeg", "title": "Page", "data": "/9j/4AAQ"}},
            {"attachment": {"contentType": "application/pdf", "title": "Hex", "data": "QUI="}},
            {"attachment": {"contentType": "application/octet-stream", "data": "UklGRg=="}},
            {"attachment": {"contentType": "text/html", "title": "Letter", "data": b64("<p>A&B</p>")}},
            // A file with no data keeps its place: the next one's data stays its own.
            {"attachment": {"contentType": "application/pdf", "title": "Empty"}},
            // No subtype: bytes of no known type.
            {"attachment": {"contentType": "application/octet-stream", "title": "Bytes", "data": "AP8="}},
            {"attachment": {"contentType": "text/plain", "title": "Plain", "data": b64("plain text")}},
            // A pointer: its address, its type by subtype from the table, else as sent.
            {"attachment": {"contentType": "application/pdf", "title": "Scan", "url": "http://pacs/doc/7"}},
            {"attachment": {"contentType": "image/MRXS", "title": "Slide", "url": "http://x/y&z"}},
            // Text without a subtype is text: its data (OBX-5.5), not the whole value.
            {"attachment": {"contentType": "text/plain", "title": "Tóm tắt",
                "data": b64("Ổn định.\nHIS^AP^PDF^UU^begin\na note")}}
        ])
    );
    // The reports of the files: their types from the same table, their data whatever
    // the case of the encoding; an unknown subtype as the sender names it; no data in
    // an encoding that cannot be converted.
    let forms: Vec<&Json> = of_type(&out, "DiagnosticReport")
        .iter()
        .map(|r| &r["presentedForm"][0])
        .collect();
    assert_eq!(
        forms,
        [
            &json!({"contentType": "application/pdf", "data": "JVBERi0xLjQ="}),
            &json!({"contentType": "image/jpeg", "data": "/9j/4AAQ"}),
            &json!({"contentType": "application/pdf", "data": "QUI="}),
            &json!({"contentType": "image/webp", "data": "UklGRg=="}),
            &json!({"contentType": "text/html", "data": b64("<p>A&B</p>")}),
            &json!({"contentType": "application/pdf"}),
            &json!({"contentType": "application/pdf"}),
            &json!({"contentType": "application/octet-stream", "data": "AP8="}),
            &json!({"contentType": "text/plain", "data": b64("plain text")}),
            &json!({"contentType": "text/plain", "data": b64("a note")}),
            &json!({"url": "http://pacs/doc/7", "contentType": "application/pdf"}),
            &json!({"url": "http://x/y&z", "contentType": "image/MRXS"}),
        ]
    );
    // Hex that is not hex is a mapping error naming the field and the place.
    let bad = message.replace("Hex^4142", "HEX^41G2");
    let err = mdm
        .run(&msg(&bad), &RunContext::default())
        .expect_err("bad hex");
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        (
            "content[*].attachment.data",
            "ed_data(OBX-5.5, OBX-5.4): the data is not hexadecimal: \"G\" at character 3"
        )
    );
    // The character is part of the document: the API's summary hides it.
    assert!(crate::telemetry::redact_values(&err.message)
        .ends_with("the data is not hexadecimal: \"…\" at character 3"));
    // Text without a subtype and without data adds no text: no empty text attachment.
    let out = run_shipped(
        mdm,
        &format!(
            "{head}OBX|1|ED|N^Note||HIS^TEXT^^A^\rOBX|2|RP|R^Scan||http://pacs/doc/8^PACS^AP^PDF\r"
        ),
    );
    assert_eq!(
        of_type(&out, "DocumentReference")[0]["content"],
        json!([{"attachment": {"contentType": "application/pdf", "title": "Scan", "url": "http://pacs/doc/8"}}])
    );
    // More files than any fixed index: the text still comes last, nothing clashes.
    let pages: String = (1..=25)
        .map(|i| format!("OBX|{i}|ED|P^Page {i}||HIS^IM^JPEG^Base64^/9j/{i:02}\r"))
        .collect();
    let out = run_shipped(mdm, &format!("{head}{pages}OBX|26|TX|N^Note||Hết.\r"));
    let content = &of_type(&out, "DocumentReference")[0]["content"];
    let content = content.as_array().expect("content");
    assert_eq!(content.len(), 26);
    assert_eq!(content[24]["attachment"]["data"], "/9j/25");
    assert_eq!(content[25]["attachment"]["contentType"], "text/plain");
    // The first OBX is a file: the text has no title of another OBX's.
    let out = run_shipped(
        mdm,
        &format!(
            "{head}{}OBX|26|TX|N^Note||Hết.\r",
            &pages[..pages.find("\r").unwrap() + 1]
        ),
    );
    let content = &of_type(&out, "DocumentReference")[0]["content"];
    assert_eq!(content[1]["attachment"].get("title"), None);
}

/// A culture: placer and filler number, isolates (sub-ID, organism code).
type Culture<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A microbiology report: blood cultures (placer and filler number, isolates as
/// OBX-4 sub-ID and organism code, all with OBX-3 600-7), then susceptibility panels,
/// each with its ORC-8, OBR-26 (the isolate's code ^ sub-ID) and OBR-29 (the culture's
/// placer ^ filler number), and two results (R, S).
fn micro(cultures: &[Culture<'_>], panels: &[(&str, &str, &str)]) -> String {
    let mut s = "MSH|^~\\&|LIS|BVDK_TINH|HALONG|SO_Y_TE|20261127100000+0700||ORU^R01^ORU_R01|MIC1|P|2.5.1\r\
PID|1||BN000555^^^BVDK_TINH^MR||Trần^Văn^Bình||19700101|M\r"
        .to_string();
    let obr = |n: usize, placer: &str, filler: &str, code: &str, tail: &str| {
        format!(
            "ORC|RE|{placer}|{filler}\rOBR|{n}|{placer}|{filler}|{code}|||20261126080000+0700|||||||||||||||20261127095000+0700|||F{tail}\r"
        )
    };
    let mut n = 0;
    for (placer, filler, isolates) in cultures {
        n += 1;
        s.push_str(&obr(n, placer, filler, "600-7^Cấy máu^LN", ""));
        for (k, (sub, organism)) in isolates.iter().enumerate() {
            s.push_str(&format!(
                "OBX|{}|CWE|600-7^Vi khuẩn định danh^LN|{sub}|{organism}^^SCT||||||F\r",
                k + 1
            ));
        }
    }
    for (orc8, obr26, obr29) in panels {
        n += 1;
        let order = obr(
            n,
            &format!("SUS00{n}"),
            &format!("LABS00{n}"),
            "29576-6^Kháng sinh đồ^LN",
            &format!("|600-7&Vi khuẩn định danh&LN^{obr26}|||{obr29}"),
        );
        s.push_str(&order.replacen('\r', &format!("|||||{orc8}\r"), 1));
        s.push_str("OBX|1|ST|18864-9^Ampicillin^LN||R||||||F\rOBX|2|ST|18993-6^Ciprofloxacin^LN||S||||||F\r");
    }
    s
}

/// For each susceptibility panel of `message` (in order), the isolate both its results
/// point at (`derivedFrom`), by organism code; `-` for none.
fn isolates_of_panels(message: &str) -> Vec<String> {
    let set = shipped();
    let out = run_shipped(set.get("oru_r01").expect("oru_r01"), message);
    let observations = of_type(&out, "Observation");
    let organism = |reference: &Json| {
        observations
            .iter()
            .find(|o| {
                Some(format!("Observation/{}", o["id"].as_str().unwrap())).as_deref()
                    == reference.as_str()
            })
            .map_or("?".to_string(), |o| {
                o["valueCodeableConcept"]["coding"][0]["code"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
    };
    for o in observations
        .iter()
        .filter(|o| o.get("valueCodeableConcept").is_some())
    {
        assert_eq!(
            o.get("derivedFrom"),
            None,
            "an isolate comes from no other result"
        );
    }
    let results: Vec<&&Json> = observations
        .iter()
        .filter(|o| o.get("valueString").is_some())
        .collect();
    results
        .chunks(2)
        .map(|pair| {
            let [r, s] = pair else {
                panic!("two results per panel")
            };
            assert_eq!(
                (r["valueString"].as_str(), s["valueString"].as_str()),
                (Some("R"), Some("S"))
            );
            assert_eq!(r.get("derivedFrom"), s.get("derivedFrom"));
            r.get("derivedFrom")
                .map_or("-".to_string(), |d| organism(&d[0]["reference"]))
        })
        .collect()
}

/// Each susceptibility result says which isolate it was tested on (`derivedFrom`), so
/// that two organisms' panels in one report are not mixed up: the isolate named by code
/// and sub-ID (OBR-26) under the culture named by placer or filler number (OBR-29, else
/// ORC-8); by code and sub-ID alone only when no culture is named; none when the named
/// isolate is not in the message.
#[test]
fn a_susceptibility_result_points_at_the_isolate_it_was_tested_on() {
    let coli_and_aureus: &[(&str, &str)] = &[("1", "112283007"), ("2", "3092008")];
    // One culture, two isolates: every way of naming the culture, and none.
    for named in ["CUL001^LABC001", "^LABC001", "CUL001", ""] {
        let m = micro(
            &[("CUL001", "LABC001", coli_and_aureus)],
            &[("", "1", named), ("", "2", named)],
        );
        assert_eq!(
            isolates_of_panels(&m),
            ["112283007", "3092008"],
            "OBR-29 {named:?}"
        );
    }
    // Two cultures whose first isolates share code and sub-ID: the culture decides, by
    // placer number, by filler number, or in ORC-8.
    let klebsiella: &[(&str, &str)] = &[("1", "56415008")];
    let cultures = [
        ("CUL001", "LABC001", coli_and_aureus),
        ("CUL002", "LABC002", klebsiella),
    ];
    let m = micro(
        &cultures,
        &[
            ("", "1", "CUL002^LABC002"),
            ("", "1", "CUL002"),
            ("", "1", "^LABC001"),
            ("CUL002^LABC002", "1", ""),
            ("", "1", "CUL009^LABC009"),
        ],
    );
    // A culture not in the message: none, though an isolate 600-7/1 is.
    assert_eq!(
        isolates_of_panels(&m),
        ["56415008", "56415008", "112283007", "56415008", "-"]
    );
    // The isolates not in this message: none, and no error.
    let m = micro(
        &[("CUL001", "LABC001", &[])],
        &[("", "1", "CUL001^LABC001"), ("", "2", "")],
    );
    assert_eq!(isolates_of_panels(&m), ["-", "-"]);
}

#[test]
fn ref_with_a_key_is_checked_at_load() {
    let errors = load_errors(
        r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"derivedFrom[0]" = "ref(Observation, OBX-3.1)"
"hasMember[0]" = "ref(Observatio, OBX-3.1, OBR-26.1.1)"
"focus[0]" = "ref(Observation, OBX-3.1, datetme(OBX-14))"
"#,
    );
    assert_eq!(
        errors,
        [
            "7:21: ref() takes 1 argument or 3, got 2: ref(Observation) for the nearest Observation, or ref(Observation, key, value) for the one whose key is the value, e.g. ref(Observation, concat(OBX-3.1, '|', OBX-4), concat(OBR-26.1.1, '|', OBR-26.2))",
            "8:23: ref() to \"Observatio\", which this mapping does not produce (did you mean \"Observation\"?)",
            "9:41: unknown function \"datetme\" (did you mean \"datetime\"?)",
        ]
    );
}

/// With a key, as without, ref() cannot make an id or a condition: ids are worked out
/// before the resources they would point at.
#[test]
fn ref_with_a_key_is_not_for_ids_or_conditions() {
    let errors = load_errors(
        r#"
[let]
isolate = "ref(Observation, OBX-3.1, OBR-26.1.1)"

[[resource]]
type = "Observation"
each = "OBX"
id = "hash(ref(Observation, OBX-3.1, OBR-26.1.1))"
when = "exists($isolate)"
"#,
    );
    assert_eq!(
        errors,
        [
            "8:12: ref() cannot be used in id or when (ids are computed before references)",
            "9:16: $isolate calls ref() or refs(), which cannot be used in id or when (ids are computed before references)",
        ]
    );
}

/// A key that fails names the segment whose key it is; one that reads nothing there
/// matches nothing.
#[test]
fn ref_with_a_key_reads_each_candidate_in_its_own_segment() {
    let text = r#"
[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-1)"
[resource.set]
"hasMember[0]" = "ref(Observation, integer(OBX-5), OBX-6)"
"#;
    let ok = "MSH|^~\\&|A|B|||20240131||ORU^R01|1|P|2.5\rPID|1||P1\r\
OBX|1|NM|A||10|2\rOBX|2|NM|B||2|10\rOBX|3|NM|C||7|8\r";
    let out = run_inline(text, ok).unwrap_or_else(|e| panic!("{e:?}"));
    let members: Vec<&Json> = out
        .iter()
        .map(|o| &o["hasMember"][0]["reference"])
        .collect();
    let id = |i: usize| json!(format!("Observation/{}", out[i]["id"].as_str().unwrap()));
    assert_eq!(members, [&id(1), &id(0), &Json::Null]);
    // The first result looks for 99: every other result's key is read, the third's fails.
    let bad = ok
        .replace("OBX|1|NM|A||10|2", "OBX|1|NM|A||10|99")
        .replace("OBX|3|NM|C||7|8", "OBX|3|NM|C||seven|8");
    let err = run_inline(text, &bad).unwrap_err();
    assert_eq!(err.resource, "Observation #1 (OBX 1)");
    assert!(
        err.message
            .starts_with("ref(Observation, integer(OBX-5), OBX-6): the key of OBX 3: "),
        "{}",
        err.message
    );
}
