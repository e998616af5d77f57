//! Naming attributes: keywords (`StudyInstanceUID`), tags (`(0020,000D)`), and an
//! optional component for person names (`PatientName.1` is the family name).

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::Tag;
use dicom_dictionary_std::StandardDataDictionary;

/// An attribute named in a mapping: its tag and, for PN values, a component
/// (1 family, 2 given, 3 middle, 4 prefix, 5 suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeRef {
    pub tag: u32,
    pub component: Option<u8>,
}

/// `(gggg,eeee)` in upper-case hex.
pub fn tag_text(tag: u32) -> String {
    format!("({:04X},{:04X})", tag >> 16, tag & 0xFFFF)
}

/// Reads an attribute reference at the start of `text`: a keyword of the standard data
/// dictionary or a tag `(gggg,eeee)`, optionally followed by `.N` (a PN component, 1-5).
/// Returns the reference and the number of bytes it used, `None` when `text` does not
/// start with one (an unknown keyword is not an attribute).
pub fn parse_attribute(text: &str) -> Option<(AttributeRef, usize)> {
    let b = text.as_bytes();
    let (tag, mut used) = if b.first() == Some(&b'(') {
        let hex = |s: &str| -> Option<u16> {
            (s.len() == 4 && s.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(s, 16).ok())
                .flatten()
        };
        if b.len() < 11 || b[5] != b',' || b[10] != b')' {
            return None;
        }
        let g = hex(text.get(1..5)?)?;
        let e = hex(text.get(6..10)?)?;
        ((u32::from(g) << 16) | u32::from(e), 11)
    } else {
        let len = b
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        let word = &text[..len];
        if len == 0 || !word.as_bytes()[0].is_ascii_uppercase() {
            return None;
        }
        let entry = StandardDataDictionary.by_name(word)?;
        let Tag(g, e) = entry.tag_range().inner();
        ((u32::from(g) << 16) | u32::from(e), len)
    };
    let mut component = None;
    if b.get(used) == Some(&b'.') && b.get(used + 1).is_some_and(|c| (b'1'..=b'5').contains(c)) {
        if b.get(used + 2).is_some_and(u8::is_ascii_alphanumeric) {
            return None;
        }
        component = Some(b[used + 1] - b'0');
        used += 2;
    } else if b.get(used) == Some(&b'.') {
        return None;
    }
    Some((AttributeRef { tag, component }, used))
}

/// Component `n` (1-5) of the first value of a person name: `Family^Given^Middle^Prefix^Suffix`;
/// of its alphabetic group only (the ideographic and phonetic groups after `=` are not used).
pub fn pn_component(value: &str, n: u8) -> Option<&str> {
    let first = value.split('\\').next()?;
    let alphabetic = first.split('=').next()?;
    let part = alphabetic
        .split('^')
        .nth(usize::from(n.checked_sub(1)?))?
        .trim();
    (!part.is_empty()).then_some(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_and_tags_name_the_same_attribute() {
        let table = [
            ("StudyInstanceUID", 0x0020_000D, None, 16),
            ("(0020,000D)", 0x0020_000D, None, 11),
            ("(0020,000d)", 0x0020_000D, None, 11),
            ("PatientName.1", 0x0010_0010, Some(1), 13),
            ("(0010,0010).2, x", 0x0010_0010, Some(2), 13),
            ("AccessionNumber)", 0x0008_0050, None, 15),
        ];
        for (text, tag, component, used) in table {
            assert_eq!(
                parse_attribute(text),
                Some((AttributeRef { tag, component }, used)),
                "{text}"
            );
        }
    }

    #[test]
    fn non_attributes_are_refused() {
        for text in [
            "NotAKeyword",
            "patientName",
            "(0020,00ZZ)",
            "(0020000D)",
            "PatientName.7",
            "PatientName.1x",
            "",
        ] {
            assert_eq!(parse_attribute(text), None, "{text}");
        }
    }

    #[test]
    fn person_name_components() {
        let pn = "Nguyễn^Thị Ngọc Anh^^Bà=阮^氏";
        assert_eq!(pn_component(pn, 1), Some("Nguyễn"));
        assert_eq!(pn_component(pn, 2), Some("Thị Ngọc Anh"));
        assert_eq!(pn_component(pn, 3), None);
        assert_eq!(pn_component(pn, 4), Some("Bà"));
        assert_eq!(pn_component(pn, 5), None);
        assert_eq!(pn_component("Doe", 2), None);
        assert_eq!(pn_component("A^B\\C^D", 2), Some("B"));
    }

    #[test]
    fn tag_text_is_upper_hex() {
        assert_eq!(tag_text(0x0020_000D), "(0020,000D)");
    }
}
