use super::*;

fn header(msh9: &str) -> Header {
    crate::hl7::read_header(
        format!("MSH|^~\\&|LIS|H1|EMR|H1|20240101||{msh9}|C1|P|2.5\r").as_bytes(),
    )
    .unwrap()
}

fn load(text: &str) -> Result<RouteSet, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lab.toml"), text).unwrap();
    let mappings = vec!["oru_r01".to_string(), "adt".to_string()];
    let listeners = vec!["lab".to_string(), "his".to_string()];
    RouteSet::load(dir.path(), &mappings, Some(&listeners)).map_err(|ds| {
        ds.iter()
            .map(|d| {
                d.to_string()
                    .replace(&format!("{}/", dir.path().display()), "")
            })
            .collect()
    })
}

#[test]
fn patterns_match_type_trigger_and_structure() {
    let p = MessagePattern::parse("ORU^R01").unwrap();
    assert!(p.matches(&header("ORU^R01^ORU_R01")));
    assert!(p.matches(&header("oru^r01")));
    assert!(!p.matches(&header("ORU^R30")));
    assert!(MessagePattern::parse("ADT^*")
        .unwrap()
        .matches(&header("ADT^A08")));
    assert!(MessagePattern::parse("*")
        .unwrap()
        .matches(&header("SIU^S12")));
    assert!(!MessagePattern::parse("ORU^R01^OUL_R22")
        .unwrap()
        .matches(&header("ORU^R01^ORU_R01")));
    assert_eq!(
        MessagePattern::parse("ORU R01").unwrap_err(),
        "message pattern \"ORU R01\": part 1 \"ORU R01\" must be letters, digits, _ or *"
    );
    // Patterns that could never match MSH-9 are refused, with what was likely meant.
    for (text, problem) in [
        ("ORU_R01", "message pattern \"ORU_R01\": \"ORU_R01\" is a message structure; write \"ORU^R01\" (TYPE^TRIGGER), or \"ORU^R01^ORU_R01\""),
        ("ADT^A0*", "message pattern \"ADT^A0*\": \"A0*\" mixes * with text; * stands for a whole part (\"ADT^*\")"),
        ("ORUX^R01", "message pattern \"ORUX^R01\": \"ORUX\" does not fit: the message type is 3 characters (\"ORU\", \"ADT\")"),
        ("ORU^R1", "message pattern \"ORU^R1\": \"R1\" does not fit: the trigger event is 3 characters (\"R01\", \"A08\")"),
        ("ORU^R01^ORUR01", "message pattern \"ORU^R01^ORUR01\": \"ORUR01\" does not fit: the message structure is like \"ORU_R01\""),
    ] {
        assert_eq!(MessagePattern::parse(text).unwrap_err(), problem);
    }
    assert!(MessagePattern::parse("ACK^*^ACK").is_ok());
    for dicom in ["DICOM^*", "DICOM^CT", "dicom^IVUS", "*^CT", "*^R01^ORU_R01"] {
        assert!(MessagePattern::parse(dicom).is_ok(), "{dicom}");
    }
    assert!(MessagePattern::parse("DICOM^CT^X").is_err());
}

#[test]
fn first_match_wins_and_listeners_filter() {
    let routes = load(
        r#"
[[route]]
name = "lab-results"
from = ["lab"]
message = ["ORU^R01"]
mapping = "oru_r01"

[[route]]
name = "adt-any"
message = ["ADT^*"]
mapping = "adt"

[[route]]
name = "shadowed"
message = ["ADT^A01"]
mapping = "adt"
"#,
    )
    .unwrap();
    assert_eq!(
        routes.find("lab", &header("ORU^R01")).unwrap().name,
        "lab-results"
    );
    assert!(routes.find("his", &header("ORU^R01")).is_none());
    assert_eq!(
        routes.find("his", &header("ADT^A01")).unwrap().name,
        "adt-any"
    );
    assert!(routes.find("lab", &header("SIU^S12")).is_none());
}

#[test]
fn errors_name_position_and_suggest() {
    let errors = load(
        r#"[[route]]
name = "lab-results"
from = ["labb"]
message = ["ORU^R01", "ORU R01"]
mapping = "oru_r1"
colour = "red"
"#,
    )
    .unwrap_err();
    assert_eq!(errors, vec!["lab.toml:6:1: unknown key `colour`; expected one of `name`, `description`, `from`, `message`, `sending_application`, `sending_facility`, `processing_id`, `mapping`, `calling_ae`"]);

    let errors = load(
        r#"[[route]]
name = "lab-results"
from = ["labb"]
message = ["ORU^R01", "ORU R01"]
mapping = "oru_r1"

[[route]]
name = "lab-results"
message = ["ADT^A01"]
mapping = "nothing_like_it"
"#,
    )
    .unwrap_err();
    assert_eq!(
        errors,
        vec![
            "lab.toml:5:11: unknown mapping \"oru_r1\" (did you mean \"oru_r01\"?)",
            "lab.toml:3:9: unknown listener \"labb\" (did you mean \"lab\"?)",
            "lab.toml:4:23: message pattern \"ORU R01\": part 1 \"ORU R01\" must be letters, digits, _ or *",
            "lab.toml:8:8: duplicate route name \"lab-results\" (first defined in lab.toml)",
            "lab.toml:10:11: unknown mapping \"nothing_like_it\" (no mappings/nothing_like_it.toml)",
        ]
    );
}

fn header_from(msh3: &str, msh4: &str, msh11: &str) -> Header {
    crate::hl7::read_header(
        format!("MSH|^~\\&|{msh3}|{msh4}|EMR|H1|20240101||ORU^R01|C1|{msh11}|2.5\r").as_bytes(),
    )
    .unwrap()
}

#[test]
fn routes_match_sending_application_facility_and_processing_id() {
    let routes = load(
        r#"
[[route]]
name = "training"
message = ["ORU^R01"]
processing_id = ["T", "D"]
mapping = "oru_r01"

[[route]]
name = "lis-bvdk"
message = ["ORU^*"]
sending_application = ["LIS*"]
sending_facility = ["BVDK_?INH"]
mapping = "oru_r01"

[[route]]
name = "rest"
message = ["*"]
mapping = "adt"
"#,
    )
    .unwrap();
    let name = |h: &Header| routes.find("lab", h).map(|r| r.name.clone());
    assert_eq!(
        name(&header_from("LIS", "BVDK_TINH", "T")).as_deref(),
        Some("training")
    );
    assert_eq!(
        name(&header_from("lis2^1.2.3^ISO", "bvdk_tinh^9.9^ISO", "P")).as_deref(),
        Some("lis-bvdk")
    );
    assert_eq!(
        name(&header_from("HIS", "BVDK_TINH", "P")).as_deref(),
        Some("rest")
    );
    assert_eq!(
        name(&header_from("LIS", "BVDK_HUYEN", "P")).as_deref(),
        Some("rest")
    );
    assert!(glob("*", ""));
    assert!(glob("a*c", "abbbc"));
    assert!(!glob("a?c", "ac"));
}

#[test]
fn empty_header_patterns_are_errors() {
    let e = load(
        r#"
[[route]]
name = "x"
message = ["ORU^R01"]
sending_facility = [" "]
mapping = "oru_r01"
"#,
    )
    .unwrap_err();
    assert_eq!(
        e,
        ["lab.toml:5:21: empty sending_facility pattern; write e.g. \"LIS\" or \"LIS*\""]
    );
}
