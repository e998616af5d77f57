//! What the journal keeps for one received instance: a reference to the archived file
//! plus its text attributes and, for a small instance, the Part 10 file itself.
//!
//! Journal entry of a C-STORE (`raw`):
//!
//! ```text
//! raw = json                        a large instance: the file is synced in the archive
//!     | json "\n" part10[n]         a small instance: n = json.inline_bytes
//! ```
//!
//! `json` is an [`InstanceRef`] serialised on one line (JSON text written by serde_json
//! never holds a raw newline), `format` first. `part10` is the whole Part 10 file as
//! archived (preamble, file meta, dataset as received): the pipeline writes the archive
//! file from it, and writes it again when a crash lost or damaged it before it was synced.

use serde::{Deserialize, Serialize};

use super::Attributes;

/// Value of [`InstanceRef::format`]; journal entries starting with
/// [`InstanceRef::PREFIX`] are DICOM instance references.
pub const FORMAT: &str = "halong.dicom.v1";

/// The journal entry of one C-STORE: JSON, `format` first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    pub format: String,
    /// Path of the Part 10 file, relative to `<data>/dicom`.
    pub path: String,
    pub calling_ae: String,
    pub called_ae: String,
    pub transfer_syntax: String,
    pub sop_class: String,
    pub sop_instance: String,
    /// Dataset bytes received (without the file meta).
    pub dataset_bytes: u64,
    /// Length of the Part 10 file carried in the entry after the JSON and a newline;
    /// 0 (absent) when the entry is only a reference to a file already synced.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inline_bytes: u64,
    pub attributes: Attributes,
}

/// A journal entry read back: the reference, and the Part 10 file when it carries one.
pub type Journaled<'a> = (InstanceRef, Option<&'a [u8]>);

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl InstanceRef {
    /// How every serialised `InstanceRef` starts.
    pub const PREFIX: &'static [u8] = b"{\"format\":\"halong.dicom.v1\"";

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an InstanceRef always serialises")
    }

    /// The journal entry for this reference with the Part 10 file carried inline
    /// (sets `inline_bytes`).
    pub fn to_journal_with(&mut self, part10: &[u8]) -> Vec<u8> {
        self.inline_bytes = part10.len() as u64;
        let json = self.to_json();
        let mut raw = Vec::with_capacity(json.len() + 1 + part10.len());
        raw.extend_from_slice(&json);
        raw.push(b'\n');
        raw.extend_from_slice(part10);
        raw
    }

    /// `Some` when `raw` is an instance reference (even a damaged one: then `Err`).
    pub fn from_journal(raw: &[u8]) -> Option<Result<InstanceRef, String>> {
        Self::read_journal(raw).map(|r| r.map(|(reference, _)| reference))
    }

    /// Like [`InstanceRef::from_journal`], with the Part 10 file the entry carries
    /// (`None` for a reference-only entry).
    pub fn read_journal(raw: &[u8]) -> Option<Result<Journaled<'_>, String>> {
        let reference = match Self::from_journal_head(raw, true)? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let rest = split(raw).1;
        let bytes = match (reference.inline_bytes, rest) {
            (0, None) => None,
            (n, Some(b)) if b.len() as u64 == n => Some(b),
            (n, b) => {
                return Some(Err(format!(
                    "the entry declares {n} instance bytes and carries {}",
                    b.map_or(0, <[u8]>::len)
                )))
            }
        };
        Some(Ok((reference, bytes)))
    }

    /// The reference alone, from the first bytes of a journal entry (the instance bytes
    /// that may follow are not needed): `None` when `head` is not an instance
    /// reference, or when it ends before the reference does and `whole` is false (read
    /// more); `Some(Err)` for a damaged reference.
    pub fn from_journal_head(head: &[u8], whole: bool) -> Option<Result<InstanceRef, String>> {
        if !head.starts_with(Self::PREFIX) {
            return None;
        }
        let (json, rest) = split(head);
        if rest.is_none() && !whole {
            return None;
        }
        Some(serde_json::from_slice(json).map_err(|e| e.to_string()))
    }

    /// What to show of a journal entry to a person: for an instance, the JSON reference
    /// without the instance bytes; anything else as it is.
    pub fn printable(raw: &[u8]) -> &[u8] {
        if raw.starts_with(Self::PREFIX) {
            split(raw).0
        } else {
            raw
        }
    }
}

/// The JSON line and what follows its newline.
fn split(raw: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'\n', raw) {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> InstanceRef {
        InstanceRef {
            format: FORMAT.into(),
            path: "1.2/1.2.3/1.2.3.4.dcm".into(),
            calling_ae: "CT1".into(),
            called_ae: "HALONG".into(),
            transfer_syntax: "1.2.840.10008.1.2".into(),
            sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance: "1.2.3.4".into(),
            dataset_bytes: 10,
            inline_bytes: 0,
            attributes: Attributes::new(),
        }
    }

    #[test]
    fn references_are_recognised_by_their_prefix() {
        let r = reference();
        let raw = r.to_json();
        assert!(!raw.windows(12).any(|w| w == b"inline_bytes"));
        assert_eq!(InstanceRef::from_journal(&raw), Some(Ok(r)));
        assert_eq!(InstanceRef::from_journal(b"MSH|^~\\&|"), None);
        assert!(matches!(
            InstanceRef::from_journal(b"{\"format\":\"halong.dicom.v1\", oops"),
            Some(Err(_))
        ));
    }

    #[test]
    fn an_entry_carries_the_instance_after_the_json_line() {
        let mut r = reference();
        // Bytes that include newlines and what looks like JSON.
        let part10: Vec<u8> = b"\n{\"format\":\"x\"}\n\0\x01DICM".repeat(3);
        let raw = r.to_journal_with(&part10);
        assert_eq!(r.inline_bytes, part10.len() as u64);
        let (back, bytes) = InstanceRef::read_journal(&raw).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(bytes, Some(&part10[..]));
        assert_eq!(InstanceRef::printable(&raw), &r.to_json()[..]);
        assert_eq!(InstanceRef::printable(b"MSH|a\rPID|b"), b"MSH|a\rPID|b");

        // A torn or padded entry is refused, not misread.
        for bad in [&raw[..raw.len() - 1], &[&raw[..], b"x"].concat()[..]] {
            let e = InstanceRef::read_journal(bad).unwrap().unwrap_err();
            assert!(e.contains("declares"), "{e}");
        }
    }
}
