//! DICOM input paths for the mapping language.
//!
//! In a mapping run on a received DICOM instance, an attribute is named by its keyword
//! (`StudyInstanceUID`) or its tag (`(0020,000D)`), optionally with a person-name
//! component (`PatientName.1` family, `.2` given, `.3` middle, `.4` prefix, `.5`
//! suffix). It evaluates to the attribute's text, absent when the instance lacks it or
//! the input is an HL7 message. Such a reference is an `Expr::Name` whose text parses
//! with [`crate::dicom::parse_attribute`]; the three hooks are [`attribute_len`] (the
//! expression parser), [`is_attribute`] (the checker) and [`value`] (the evaluator).

use std::sync::LazyLock;

use super::eval::Value;
use crate::dicom::{parse_attribute, pn_component, Attributes};
use crate::hl7::Message;

/// Length of the attribute reference at the start of `text`, if there is one.
pub fn attribute_len(text: &str) -> Option<usize> {
    parse_attribute(text).map(|(_, used)| used)
}

/// The whole of `name` is an attribute reference.
pub fn is_attribute(name: &str) -> bool {
    attribute_len(name) == Some(name.len())
}

/// The value of attribute reference `name` in `input`; `None` when `name` is not one.
pub fn value<'a>(name: &str, input: Option<&'a Attributes>) -> Option<Value<'a>> {
    let (r, used) = parse_attribute(name)?;
    if used != name.len() {
        return None;
    }
    let Some(text) = input.and_then(|a| a.get(r.tag)) else {
        return Some(Value::Absent);
    };
    let text = match r.component {
        Some(n) => pn_component(text, n),
        None => Some(text.trim()),
    };
    Some(
        text.filter(|t| !t.is_empty())
            .map_or(Value::Absent, |t| Value::Str(std::borrow::Cow::Borrowed(t))),
    )
}

/// The HL7 message a DICOM run sees: none (every HL7 path is absent).
pub fn no_message() -> &'static Message {
    static EMPTY: LazyLock<Message> =
        LazyLock::new(|| crate::hl7::parse(b"MSH|^~\\&|").expect("a bare MSH segment parses"));
    &EMPTY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_evaluate_against_the_instance() {
        let mut a = Attributes::new();
        a.insert(0x0010_0010, "Nguyễn^Thị Ngọc Anh");
        a.insert(0x0008_0060, "CT ");
        assert_eq!(
            value("PatientName.1", Some(&a)),
            Some(Value::Str("Nguyễn".into()))
        );
        assert_eq!(
            value("(0010,0010).2", Some(&a)),
            Some(Value::Str("Thị Ngọc Anh".into()))
        );
        assert_eq!(value("Modality", Some(&a)), Some(Value::Str("CT".into())));
        assert_eq!(value("AccessionNumber", Some(&a)), Some(Value::Absent));
        assert_eq!(value("Modality", None), Some(Value::Absent));
        assert_eq!(value("v2_gender", Some(&a)), None);
        assert!(is_attribute("(0008,0060)"));
        assert!(!is_attribute("Modality x"));
    }

    fn shipped() -> super::super::MappingSet {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"));
        super::super::MappingSet::load(dir).expect("shipped mappings load")
    }

    #[test]
    fn imaging_study_mapping_makes_patient_and_study() {
        let mut a = Attributes::new();
        for (tag, v) in [
            (0x0008_0016, "1.2.840.10008.5.1.4.1.1.2"),
            (0x0008_0018, "1.2.3.4.1.1"),
            (0x0008_0020, "20261120"),
            (0x0008_0030, "081500.1234"),
            (0x0008_0050, "ACC-0001"),
            (0x0008_0060, "CT"),
            (0x0008_1030, "CT sọ não"),
            (0x0010_0010, "Nguyễn^Thị Ngọc Anh"),
            (0x0010_0020, "079190000001"),
            (0x0010_0021, "CCCD"),
            (0x0010_0030, "19900101"),
            (0x0010_0040, "F"),
            (0x0018_0015, "HEAD"),
            (0x0020_000D, "1.2.3.4"),
            (0x0020_000E, "1.2.3.4.1"),
            (0x0020_0011, "2"),
            (0x0020_0013, "7"),
        ] {
            a.insert(tag, v);
        }
        let set = shipped();
        let m = set.get("imaging_study").expect("imaging_study mapping");
        let ctx = super::super::RunContext {
            source: "urn:halong:pacs:9".into(),
            ..Default::default()
        };
        let out = crate::record::to_values(&m.run_dicom(&a, &ctx).expect("maps"));
        assert_eq!(out.len(), 2);
        let (p, s) = (&out[0], &out[1]);
        assert_eq!(p["resourceType"], "Patient");
        // The same id the HL7 mappings give this patient: hash(PID-3.4.1, PID-3.1).
        assert_eq!(
            p["id"],
            crate::mapping::functions::hash(&["CCCD", "079190000001"])
        );
        assert_eq!(p["name"][0]["family"], "Nguyễn");
        assert_eq!(p["name"][0]["given"][0], "Thị Ngọc Anh");
        assert_eq!(p["name"][0]["text"], "Nguyễn Thị Ngọc Anh");
        assert_eq!(p["gender"], "female");
        assert_eq!(p["birthDate"], "1990-01-01");
        assert_eq!(s["resourceType"], "ImagingStudy");
        assert_eq!(s["id"], crate::mapping::functions::hash(&["1.2.3.4"]));
        assert_eq!(s["meta"]["source"], "urn:halong:pacs:9");
        assert_eq!(s["identifier"][0]["value"], "urn:oid:1.2.3.4");
        assert_eq!(s["identifier"][1]["type"]["coding"][0]["code"], "ACSN");
        assert_eq!(s["identifier"][1]["value"], "ACC-0001");
        assert_eq!(s["modality"][0]["code"], "CT");
        assert_eq!(s["started"], "2026-11-20T08:15:00.1234+07:00");
        assert_eq!(s["description"], "CT sọ não");
        assert_eq!(
            s["subject"]["reference"],
            format!("Patient/{}", p["id"].as_str().unwrap())
        );
        assert_eq!(s["numberOfSeries"], 1);
        assert_eq!(s["numberOfInstances"], 1);
        let series = &s["series"][0];
        assert_eq!(series["uid"], "1.2.3.4.1");
        assert_eq!(series["number"], 2);
        assert_eq!(series["bodySite"]["display"], "HEAD");
        assert_eq!(series["instance"][0]["uid"], "1.2.3.4.1.1");
        assert_eq!(series["instance"][0]["number"], 7);
        assert_eq!(
            series["instance"][0]["sopClass"]["code"],
            "urn:oid:1.2.840.10008.5.1.4.1.1.2"
        );
    }

    /// Without an Issuer of Patient ID, the modality's institution stands for the facility
    /// (through tables/dicom_institutions.csv): its images land in the patient the HIS of
    /// that facility registered without an assigning authority, and not in another
    /// facility's patient with the same number.
    #[test]
    fn without_an_issuer_the_institution_names_the_facility() {
        let set = shipped();
        let adt = crate::hl7::parse(
            "MSH|^~\\&|HIS|BVDK_TINH|HALONG|SO_Y_TE|20261126080000||ADT^A04^ADT_A01|A1|P|2.5\r\
PID|1||BN000777^^^^MR||Trần^Văn Nam\r"
                .as_bytes(),
        )
        .unwrap();
        let his = crate::record::to_values(
            &set.get("adt")
                .unwrap()
                .run(&adt, &Default::default())
                .unwrap(),
        );
        assert_eq!(his[0]["resourceType"], "Patient");
        let patient_of = |institution: &str| {
            let mut a = Attributes::new();
            a.insert(0x0010_0020, "BN000777");
            a.insert(0x0008_0080, institution);
            a.insert(0x0020_000D, "1.2.3");
            let out = set
                .get("imaging_study")
                .unwrap()
                .run_dicom(&a, &Default::default());
            crate::record::to_values(&out.expect("maps"))[0]["id"].clone()
        };
        assert_eq!(patient_of("Bệnh viện Đa khoa tỉnh"), his[0]["id"]);
        assert_ne!(patient_of("Trung tâm Y tế huyện"), his[0]["id"]);
        assert_ne!(patient_of("Phòng khám Hòa Bình"), his[0]["id"]);
        assert_ne!(
            patient_of("Phòng khám Hòa Bình"),
            patient_of("Trung tâm Y tế huyện")
        );
        // An unknown institution, or none, received on a listener with a `facility`:
        // that facility.
        let via_listener = |institution: Option<&str>| {
            let mut a = Attributes::new();
            a.insert(0x0010_0020, "BN000777");
            if let Some(i) = institution {
                a.insert(0x0008_0080, i);
            }
            a.insert(0x0020_000D, "1.2.3");
            let ctx = crate::mapping::RunContext {
                facility: "BVDK_TINH".into(),
                ..Default::default()
            };
            let out = set.get("imaging_study").unwrap().run_dicom(&a, &ctx);
            crate::record::to_values(&out.expect("maps"))[0]["id"].clone()
        };
        assert_eq!(via_listener(None), his[0]["id"]);
        assert_eq!(via_listener(Some("Phòng chụp 2")), his[0]["id"]);
        // The table still names another facility's institution.
        assert_ne!(via_listener(Some("Trung tâm Y tế huyện")), his[0]["id"]);
        // With neither, the table's `*` row names the site's facility.
        let dir = tempfile::tempdir().unwrap();
        let shipped_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        std::fs::create_dir(dir.path().join("tables")).unwrap();
        for e in std::fs::read_dir(shipped_dir.join("tables")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join("tables").join(p.file_name().unwrap())).unwrap();
        }
        std::fs::copy(
            shipped_dir.join("imaging_study.toml"),
            dir.path().join("imaging_study.toml"),
        )
        .unwrap();
        let table = dir.path().join("tables/dicom_institutions.csv");
        let text = std::fs::read_to_string(&table).unwrap() + "*,BVDK_TINH\n";
        std::fs::write(&table, text).unwrap();
        let site = crate::mapping::MappingSet::load(dir.path()).unwrap();
        let mut a = Attributes::new();
        a.insert(0x0010_0020, "BN000777");
        a.insert(0x0020_000D, "1.2.3");
        let out = site
            .get("imaging_study")
            .unwrap()
            .run_dicom(&a, &Default::default());
        assert_eq!(
            crate::record::to_values(&out.unwrap())[0]["id"],
            his[0]["id"]
        );
    }

    #[test]
    fn a_study_without_patient_id_or_date_still_maps() {
        let mut a = Attributes::new();
        a.insert(0x0020_000D, "1.2.3");
        a.insert(0x0020_000E, "1.2.3.1");
        a.insert(0x0008_0018, "1.2.3.1.1");
        let set = shipped();
        let out = set
            .get("imaging_study")
            .unwrap()
            .run_dicom(&a, &Default::default())
            .map(|r| crate::record::to_values(&r))
            .expect("maps");
        assert_eq!(out.len(), 1, "no Patient without PatientID");
        assert!(out[0].get("started").is_none());
        assert!(out[0].get("subject").is_none());
    }
}
