//! What the listener accepts: Verification and every standard Storage SOP class, in
//! the transfer syntaxes devices send. Datasets are stored as received; none is decoded.

use super::storage_classes::STORAGE_SOP_CLASSES;

/// Verification SOP Class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Transfer syntaxes accepted, in our order of preference for a context that proposes
/// several.
pub const TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.1",    // explicit VR little endian
    "1.2.840.10008.1.2",      // implicit VR little endian
    "1.2.840.10008.1.2.2",    // explicit VR big endian (retired, still sent)
    "1.2.840.10008.1.2.1.99", // deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50", // JPEG baseline
    "1.2.840.10008.1.2.4.51", // JPEG extended
    "1.2.840.10008.1.2.4.57", // JPEG lossless
    "1.2.840.10008.1.2.4.70", // JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.5",    // RLE lossless
];

/// A standard Storage SOP class (storage commitment and media directory excluded).
pub fn is_storage(uid: &str) -> bool {
    let uid = uid.trim_end_matches('\0');
    STORAGE_SOP_CLASSES.contains(&uid)
}

/// Verification and every storage SOP class.
pub fn abstract_syntaxes() -> Vec<&'static str> {
    let mut out = vec![VERIFICATION];
    out.extend_from_slice(STORAGE_SOP_CLASSES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_in_and_others_out() {
        for uid in [
            "1.2.840.10008.5.1.4.1.1.2",     // CT Image
            "1.2.840.10008.5.1.4.1.1.4",     // MR Image
            "1.2.840.10008.5.1.4.1.1.88.11", // Basic Text SR
            "1.2.840.10008.5.1.4.1.1.481.1", // RT Image
            "1.2.840.10008.5.1.4.1.1.2\0",
        ] {
            assert!(is_storage(uid), "{uid}");
        }
        for uid in [
            "1.2.840.10008.1.20.1",        // Storage Commitment Push Model
            "1.2.840.10008.1.3.10",        // Media Storage Directory
            "1.2.840.10008.5.1.4.31",      // Modality Worklist FIND
            "1.2.840.10008.5.1.4.1.2.2.1", // Study Root FIND
            VERIFICATION,
        ] {
            assert!(!is_storage(uid), "{uid}");
        }
        let all = abstract_syntaxes();
        assert!(all.len() > 100, "{}", all.len());
        assert_eq!(all[0], VERIFICATION);
    }
}
