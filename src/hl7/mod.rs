//! HL7 v2 messages: parsing, typed access paths, escape handling and ACK building.
//!
//! Layout:
//! - `parse`   — bytes → [`Message`]: one owned UTF-8 `String` plus compact offset tables
//!   (segments and fields); repetitions, components and subcomponents are split lazily on
//!   access, so parsing allocates no per-field strings.
//! - `charset` — MSH-18 character sets (UTF-8, ISO 8859-1/-2/-15, ASCII).
//! - `escape`  — our own escape decoder (`\F\`, `\Xhh\`, `\.br\`, ...) and its inverse.
//! - `path`    — access paths such as `PID-3[2].4.1`, `OBX[2]-5`, `PID-3[*]`.
//! - `ack`     — ACK/NAK messages (original and enhanced acknowledgement modes).
//! - `segments` — the segment names HL7 v2 defines, for spotting a misspelled one.
//!
//! Values handed out are borrowed slices of the raw (still escaped) text, decoded into a
//! `Cow<str>` only when asked; a value without an escape character is never copied.
//! Input is untrusted: nothing here panics on bad bytes, every problem is a [`ParseError`].
//! This module knows no other module of the crate but `diag` and logs nothing.

mod ack;
mod charset;
mod escape;
mod parse;
mod path;
mod segments;

pub use ack::{
    build_ack, build_ack_without_header, table_0357_description, AckCode, AckError, Outcome,
};
pub use charset::Charset;
pub use escape::{escape, has_escape, unescape};
pub(crate) use parse::find_byte3;
pub(crate) use parse::piece;
pub use parse::{name_code, parse, read_header, Delimiters, Header, Message, ParseError};
pub use path::{FieldPath, Path, PathError, Repetition};
pub use segments::{is_known_segment, segment_hint};
