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
pub fn value(name: &str, input: Option<&Attributes>) -> Option<Value> {
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
            .map_or(Value::Absent, |t| Value::Str(t.to_string())),
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
}
