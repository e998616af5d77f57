//! Attribute access on received DICOM datasets: keywords and tags, person names (PN),
//! dates (DA) and times (TM).
//!
//! A received instance is archived as a Part 10 file; what the rest of halong needs from
//! it is a small set of text attributes, [`Attributes`]: every top-level element of the
//! dataset with a textual or numeric VR, decoded with the dataset's character set
//! (ISO_IR 192 and the other Specific Character Sets), keyed by tag. Pixel data, other
//! binary values and sequences are not kept. Knows no other module of halong.

mod attrs;
mod instance;
mod names;
mod scan;

pub use attrs::{extract, extract_bytes, Attributes, ExtractError, MAX_VALUE_CHARS};
pub use instance::{InstanceRef, FORMAT};
pub use names::{parse_attribute, pn_component, tag_text, AttributeRef};
