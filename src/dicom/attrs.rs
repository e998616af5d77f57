//! The text attributes of one instance.

use std::collections::BTreeMap;
use std::path::Path;

use dicom_core::header::Header;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};

/// Values longer than this (in characters) are not kept; they are never identifiers.
pub const MAX_VALUE_CHARS: usize = 1024;

/// Top-level text attributes of a dataset, by tag. Serialised as a JSON object whose
/// keys are eight hex digits (`"0020000D"`). Values are as decoded from the dataset (DA and TM normalised, see `normalise`),
/// without padding; multiple values are separated by `\`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(BTreeMap<u32, String>);

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// A tag as its eight hex digits, written without an allocation.
        struct Hex(u32);
        impl Serialize for Hex {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
                let mut buf = [0u8; 8];
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = DIGITS[((self.0 >> (28 - 4 * i)) & 0xF) as usize];
                }
                s.serialize_str(std::str::from_utf8(&buf).expect("hex digits are ASCII"))
            }
        }
        serializer.collect_map(self.0.iter().map(|(tag, value)| (Hex(*tag), value)))
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A key of eight hex digits, read without an allocation.
        struct Key(u32);
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
                struct KeyVisitor;
                impl serde::de::Visitor<'_> for KeyVisitor {
                    type Value = Key;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a tag of eight hex digits")
                    }
                    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                        (key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit()))
                            .then(|| u32::from_str_radix(key, 16).ok())
                            .flatten()
                            .map(Key)
                            .ok_or_else(|| {
                                E::custom(format!(
                                    "attribute key {key:?} is not a tag of eight hex digits"
                                ))
                            })
                    }
                }
                d.deserialize_str(KeyVisitor)
            }
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Attributes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of attribute values keyed by eight hex digits")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Attributes, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((Key(tag), value)) = map.next_entry::<Key, String>()? {
                    out.insert(tag, value);
                }
                Ok(Attributes(out))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Why a received dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("cannot parse the dataset: {0}")]
    Parse(String),
}

impl Attributes {
    pub fn new() -> Attributes {
        Attributes::default()
    }

    pub fn get(&self, tag: u32) -> Option<&str> {
        self.0
            .get(&tag)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn insert(&mut self, tag: u32, value: impl Into<String>) {
        self.0.insert(tag, value.into());
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn study_uid(&self) -> Option<&str> {
        self.get(tag_u32(tags::STUDY_INSTANCE_UID))
    }
    pub fn series_uid(&self) -> Option<&str> {
        self.get(tag_u32(tags::SERIES_INSTANCE_UID))
    }
    pub fn sop_instance_uid(&self) -> Option<&str> {
        self.get(tag_u32(tags::SOP_INSTANCE_UID))
    }
    pub fn sop_class_uid(&self) -> Option<&str> {
        self.get(tag_u32(tags::SOP_CLASS_UID))
    }
    pub fn modality(&self) -> Option<&str> {
        self.get(tag_u32(tags::MODALITY))
    }
}

pub(crate) fn tag_u32(t: Tag) -> u32 {
    (u32::from(t.0) << 16) | u32::from(t.1)
}

/// VRs whose values are kept as text.
pub(crate) fn is_text(vr: VR) -> bool {
    use VR::*;
    matches!(
        vr,
        AE | AS
            | CS
            | DA
            | DS
            | DT
            | IS
            | LO
            | LT
            | PN
            | SH
            | ST
            | TM
            | UC
            | UI
            | UR
            | UT
            | US
            | SS
            | UL
            | SL
            | FL
            | FD
            | UV
            | SV
    )
}

/// Reads the text attributes of a Part 10 file, stopping before the pixel data (so a
/// large instance costs only its header).
pub fn extract(path: &Path) -> Result<Attributes, ExtractError> {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| ExtractError::Parse(e.to_string()))?;
    Ok(attributes_of(&obj))
}

/// [`extract`] for a Part 10 file held in memory (preamble, file meta, dataset).
pub fn extract_bytes(part10: &[u8]) -> Result<Attributes, ExtractError> {
    match super::scan::attributes(part10) {
        Some(attributes) => Ok(attributes),
        None => read_general(part10),
    }
}

/// [`extract_bytes`] with dicom-rs's parser, for every dataset the fast reader leaves.
pub(crate) fn read_general(part10: &[u8]) -> Result<Attributes, ExtractError> {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(part10)
        .map_err(|e| ExtractError::Parse(e.to_string()))?;
    Ok(attributes_of(&obj))
}

fn attributes_of(obj: &dicom_object::DefaultDicomObject) -> Attributes {
    let mut out = Attributes::new();
    for el in obj.iter() {
        let tag = el.tag();
        if tag.0 == 0x0002 {
            continue;
        }
        let (vr, text) = if el.vr() == VR::UN {
            // Sent as UN (unknown VR): decode it when the dictionary says it is text.
            let Some(vr) = dictionary_vr(tag).filter(|vr| is_text(*vr) && is_string(*vr)) else {
                continue;
            };
            let Ok(bytes) = el.to_bytes() else { continue };
            (vr, String::from_utf8_lossy(&bytes).into_owned())
        } else if is_text(el.vr()) {
            let Ok(text) = el.to_str() else { continue };
            (el.vr(), text.into_owned())
        } else {
            continue;
        };
        keep(&mut out, tag, vr, &text);
    }
    out
}

/// Adds one decoded text value: without surrounding padding, DA and TM normalised;
/// values longer than [`MAX_VALUE_CHARS`] are left out.
pub(crate) fn keep(out: &mut Attributes, tag: Tag, vr: VR, text: &str) {
    let text = text.trim_end_matches(['\0', ' ']).trim_start();
    if text.len() > MAX_VALUE_CHARS && text.chars().count() > MAX_VALUE_CHARS {
        return;
    }
    out.insert(tag_u32(tag), normalise(vr, text));
}

pub(crate) fn is_string(vr: VR) -> bool {
    !matches!(
        vr,
        VR::US | VR::SS | VR::UL | VR::SL | VR::FL | VR::FD | VR::UV | VR::SV
    )
}

pub(crate) fn dictionary_vr(tag: Tag) -> Option<VR> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    match dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)?
        .vr()
    {
        VirtualVr::Exact(vr) => Some(vr),
        _ => None,
    }
}

/// Dates and times in the forms the mapping functions read: DA without the dots of the
/// old `YYYY.MM.DD` form, TM without the colons of `HH:MM:SS` and with at most four
/// fractional digits (HL7's precision; DICOM allows six).
fn normalise(vr: VR, text: &str) -> String {
    match vr {
        VR::DA => text.replace('.', ""),
        VR::TM => text
            .split('\\')
            .map(|t| {
                let t = t.replace(':', "");
                match t.split_once('.') {
                    Some((hms, frac)) => {
                        let frac: String = frac.chars().take(4).collect();
                        if frac.is_empty() {
                            hms.to_string()
                        } else {
                            format!("{hms}.{frac}")
                        }
                    }
                    None => t,
                }
            })
            .collect::<Vec<_>>()
            .join("\\"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_normalised() {
        let table = [
            (VR::DA, "1997.04.24", "19970424"),
            (VR::DA, "20261120", "20261120"),
            (VR::TM, "14:04:38", "140438"),
            (VR::TM, "132645.921000", "132645.9210"),
            (VR::TM, "0815", "0815"),
            (VR::TM, "101010.\\1030", "101010\\1030"),
            (VR::LO, "a.b:c", "a.b:c"),
        ];
        for (vr, input, want) in table {
            assert_eq!(normalise(vr, input), want, "{input}");
        }
    }

    #[test]
    fn attributes_round_trip_as_hex_keys() {
        let mut a = Attributes::new();
        a.insert(0x0020_000D, "1.2.3");
        a.insert(0x0010_0010, "");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"00100010":"","0020000D":"1.2.3"}"#);
        let back: Attributes = serde_json::from_str(&json).unwrap();
        assert_eq!(back.study_uid(), Some("1.2.3"));
        assert_eq!(back.get(0x0010_0010), None, "empty values read as absent");
        assert_eq!(back, a);
        let from_value: Attributes =
            serde_json::from_value(serde_json::json!({"7FE00010": "x"})).unwrap();
        assert_eq!(from_value.get(0x7FE0_0010), Some("x"));
        for bad in [
            r#"{"0020000":"x"}"#,
            r#"{"0020000G":"x"}"#,
            r#"{"PatientName":"x"}"#,
            r#"{"+0020000":"x"}"#,
        ] {
            let e = serde_json::from_str::<Attributes>(bad).unwrap_err();
            assert!(
                e.to_string().contains("not a tag of eight hex digits"),
                "{bad}: {e}"
            );
        }
    }
}
