//! What the journal keeps for one received instance: a reference to the archived file
//! plus its text attributes, not the instance itself (which may be gigabytes).

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
    pub attributes: Attributes,
}

impl InstanceRef {
    /// How every serialised `InstanceRef` starts.
    pub const PREFIX: &'static [u8] = b"{\"format\":\"halong.dicom.v1\"";

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an InstanceRef always serialises")
    }

    /// `Some` when `raw` is an instance reference (even a damaged one: then `Err`).
    pub fn from_journal(raw: &[u8]) -> Option<Result<InstanceRef, String>> {
        raw.starts_with(Self::PREFIX)
            .then(|| serde_json::from_slice(raw).map_err(|e| e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_recognised_by_their_prefix() {
        let r = InstanceRef {
            format: FORMAT.into(),
            path: "1.2/1.2.3/1.2.3.4.dcm".into(),
            calling_ae: "CT1".into(),
            called_ae: "HALONG".into(),
            transfer_syntax: "1.2.840.10008.1.2".into(),
            sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance: "1.2.3.4".into(),
            dataset_bytes: 10,
            attributes: Attributes::new(),
        };
        let raw = r.to_json();
        assert_eq!(InstanceRef::from_journal(&raw), Some(Ok(r)));
        assert_eq!(InstanceRef::from_journal(b"MSH|^~\\&|"), None);
        assert!(matches!(
            InstanceRef::from_journal(b"{\"format\":\"halong.dicom.v1\", oops"),
            Some(Err(_))
        ));
    }
}
