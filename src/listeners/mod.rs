//! Network listeners. They know the journal and the protocols, never routes, mapping,
//! queue or store.

pub mod dicom;
pub mod mllp;
