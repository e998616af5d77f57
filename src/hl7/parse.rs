//! Bytes → [`Message`]: input tolerance, MSH-1/MSH-2, MSH-18 character set, segment
//! and field offset tables, and value access.

use std::borrow::Cow;

use super::charset::Charset;
use super::escape::unescape;
use super::path::{FieldPath, Path, Repetition};

/// The message's delimiters, from MSH-1 and MSH-2. All are ASCII punctuation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: Option<char>,
    /// HL7 2.7+ truncation character (fifth character of MSH-2).
    pub truncation: Option<char>,
}

impl Delimiters {
    /// `|^~\&`.
    pub fn standard() -> Delimiters {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: Some('&'),
            truncation: None,
        }
    }

    /// From MSH-1 and the raw MSH-2 text (2 to 5 characters).
    fn from_msh(field: u8, enc: &[u8]) -> Result<Delimiters, ParseError> {
        let shown = || String::from_utf8_lossy(enc).into_owned();
        let ok = |b: u8| b.is_ascii_punctuation() || b == b' ';
        if !(2..=5).contains(&enc.len()) || !enc.iter().all(|&b| ok(b)) || !ok(field) {
            return Err(ParseError::BadEncodingCharacters { value: shown() });
        }
        let mut all = vec![field];
        all.extend_from_slice(enc);
        let distinct = all.iter().enumerate().all(|(i, b)| !all[..i].contains(b));
        if !distinct {
            return Err(ParseError::BadEncodingCharacters { value: shown() });
        }
        let at = |i: usize| enc.get(i).map(|&b| char::from(b));
        Ok(Delimiters {
            field: char::from(field),
            component: char::from(enc[0]),
            repetition: char::from(enc[1]),
            escape: at(2),
            subcomponent: at(3),
            truncation: at(4),
        })
    }
}

/// The MSH fields the engine routes and acknowledges on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-1.
    pub field_sep: char,
    /// MSH-2 exactly as sent (2.7+ may have 5 characters including truncation `#`).
    pub encoding_chars: String,
    /// MSH-3, raw (still escaped), "" when absent.
    pub sending_application: String,
    /// MSH-4, raw.
    pub sending_facility: String,
    /// MSH-5, raw.
    pub receiving_application: String,
    /// MSH-6, raw.
    pub receiving_facility: String,
    /// MSH-9 raw, e.g. "ORU^R01^ORU_R01".
    pub message_type: String,
    /// MSH-9.1 decoded.
    pub message_code: String,
    /// MSH-9.2 decoded.
    pub trigger_event: String,
    /// MSH-9.3 decoded.
    pub message_structure: String,
    /// MSH-10 decoded.
    pub control_id: String,
    /// MSH-11 raw.
    pub processing_id: String,
    /// MSH-12 raw.
    pub version: String,
    /// MSH-15 raw.
    pub accept_ack_type: String,
    /// MSH-16 raw.
    pub application_ack_type: String,
    /// MSH-18 raw, first repetition.
    pub charset: String,
}

impl Header {
    /// Enhanced acknowledgement mode: MSH-15 or MSH-16 is valued.
    pub fn enhanced_mode(&self) -> bool {
        !self.accept_ack_type.is_empty() || !self.application_ack_type.is_empty()
    }

    /// "ORU^R01"; just the message code when the trigger is empty.
    pub fn type_trigger(&self) -> String {
        if self.trigger_event.is_empty() {
            self.message_code.clone()
        } else {
            format!("{}^{}", self.message_code, self.trigger_event)
        }
    }

    /// The delimiters this header declares (standard ones for missing characters).
    pub fn delimiters(&self) -> Delimiters {
        Delimiters::from_msh(
            u8::try_from(self.field_sep).unwrap_or(b'|'),
            self.encoding_chars.as_bytes(),
        )
        .unwrap_or_else(|_| Delimiters::standard())
    }

    /// From the text of an MSH segment whose delimiters are known; `fields[i]` is MSH-(i+1).
    fn from_fields(fields: &[&str], d: &Delimiters, cs: Charset) -> Header {
        let raw = |n: usize| fields.get(n - 1).copied().unwrap_or("").to_string();
        let first_rep = |n: usize| {
            fields
                .get(n - 1)
                .and_then(|f| f.split(d.repetition).next())
                .unwrap_or("")
        };
        let comp = |n: usize, c: usize| {
            let rep = first_rep(n);
            unescape(rep.split(d.component).nth(c - 1).unwrap_or(""), d, cs).into_owned()
        };
        Header {
            field_sep: d.field,
            encoding_chars: raw(2),
            sending_application: raw(3),
            sending_facility: raw(4),
            receiving_application: raw(5),
            receiving_facility: raw(6),
            message_type: raw(9),
            message_code: comp(9, 1),
            trigger_event: comp(9, 2),
            message_structure: comp(9, 3),
            control_id: unescape(first_rep(10), d, cs).into_owned(),
            processing_id: raw(11),
            version: raw(12),
            accept_ack_type: raw(15),
            application_ack_type: raw(16),
            charset: first_rep(18).to_string(),
        }
    }
}

/// Why a message could not be parsed. Messages name positions and segment names, never
/// field contents (they may hold patient data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("no MSH segment at start of message")]
    NoMsh,
    #[error("batch messages (FHS/BHS) are not supported yet")]
    Batch,
    #[error("MSH segment is too short to hold MSH-1 and MSH-2")]
    MshTooShort,
    #[error(
        "MSH-2 encoding characters {value:?} are invalid (want 2 to 5 distinct punctuation characters, e.g. ^~\\&)"
    )]
    BadEncodingCharacters { value: String },
    #[error("unsupported character set {name:?} in MSH-18")]
    UnsupportedCharset { name: String },
    #[error("invalid UTF-8 at byte {offset} (MSH-18 {})", if msh18.is_empty() { "is empty, so UTF-8 is assumed".to_string() } else { format!("says {msh18}") })]
    InvalidUtf8 { offset: usize, msh18: String },
    #[error("byte 0x{byte:02X} at offset {offset} is not ASCII (MSH-18 says ASCII)")]
    NotAscii { offset: usize, byte: u8 },
    #[error("segment {index} has an invalid name {name:?}")]
    InvalidSegmentName { index: usize, name: String },
    #[error("segment {index} ({name}) does not continue with the field separator {sep:?}")]
    MissingFieldSeparator {
        index: usize,
        name: String,
        sep: char,
    },
    #[error("message of {len} bytes is too large (limit 4 GiB)")]
    TooLarge { len: usize },
}

#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    end: u32,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    start: u32,
    end: u32,
    /// The name, packed by [`name_code`].
    code: u32,
    /// Index of its first field in `Message::fields`.
    first_field: u32,
    field_count: u32,
}

/// A parsed message: the decoded text plus offset tables. Owned; `Send + Sync + 'static`.
#[derive(Clone, Debug)]
pub struct Message {
    text: String,
    segments: Vec<Segment>,
    fields: Vec<Span>,
    delimiters: Delimiters,
    charset: Charset,
    header: Header,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Offset of the first MSH byte (after a BOM and leading whitespace), and checks that
/// the message starts with MSH.
fn message_start(raw: &[u8]) -> Result<usize, ParseError> {
    let mut start = if raw.starts_with(BOM) { BOM.len() } else { 0 };
    while raw.get(start).is_some_and(u8::is_ascii_whitespace) {
        start += 1;
    }
    let body = &raw[start..];
    if body.is_empty() {
        return Err(ParseError::Empty);
    }
    if body.starts_with(b"FHS") || body.starts_with(b"BHS") {
        return Err(ParseError::Batch);
    }
    if !body.starts_with(b"MSH") {
        return Err(ParseError::NoMsh);
    }
    Ok(start)
}

/// Delimiters, the raw MSH-18 text and the charset, from the bytes of the MSH line.
fn msh_basics(body: &[u8]) -> Result<(Delimiters, String, Charset), ParseError> {
    let line_end = body
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(body.len());
    let line = &body[..line_end];
    let sep = *line.get(3).ok_or(ParseError::MshTooShort)?;
    let rest = &line[4..];
    let enc_len = rest.iter().position(|&b| b == sep).unwrap_or(rest.len());
    let delims = Delimiters::from_msh(sep, &rest[..enc_len])?;
    // MSH-18 is piece 17 when the line is split on the field separator (piece 0 is "MSH").
    let msh18 = line.split(|&b| b == sep).nth(17).unwrap_or(b"");
    let rep = u8::try_from(delims.repetition).unwrap_or(b'~');
    let msh18 = msh18.split(|&b| b == rep).next().unwrap_or(b"");
    let msh18 = String::from_utf8_lossy(msh18).into_owned();
    let charset = Charset::from_msh18(&msh18)?;
    Ok((delims, msh18, charset))
}

/// Reads only the MSH segment: fast routing and ACK decisions without a full parse.
pub fn read_header(raw: &[u8]) -> Result<Header, ParseError> {
    let start = message_start(raw)?;
    let body = &raw[start..];
    let (delims, msh18, charset) = msh_basics(body)?;
    let line_end = body
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(body.len());
    let line = charset.decode(&body[..line_end], start, &msh18)?;
    let fields = msh_fields(&line, delims.field);
    Ok(Header::from_fields(&fields, &delims, charset))
}

/// MSH fields as slices: index 0 is MSH-1.
fn msh_fields(line: &str, sep: char) -> Vec<&str> {
    let mut fields = vec![line.get(3..3 + sep.len_utf8()).unwrap_or("")];
    fields.extend(line.get(4..).unwrap_or("").split(sep));
    fields
}

/// Parses a whole message. See the module documentation for what is tolerated.
pub fn parse(raw: &[u8]) -> Result<Message, ParseError> {
    let start = message_start(raw)?;
    let body = &raw[start..];
    if body.len() >= u32::MAX as usize {
        return Err(ParseError::TooLarge { len: raw.len() });
    }
    let (delimiters, msh18, charset) = msh_basics(body)?;
    let text = charset.decode(body, start, &msh18)?.into_owned();
    let sep = u8::try_from(delimiters.field).unwrap_or(b'|');
    let bytes = text.as_bytes();
    let mut segments = Vec::with_capacity(16);
    let mut fields = Vec::with_capacity(bytes.len() / 8);
    let mut pos = 0usize;
    while pos < bytes.len() {
        let end = memchr::memchr2(b'\r', b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
        let line = &bytes[pos..end];
        if !line.iter().all(u8::is_ascii_whitespace) {
            let index = segments.len() + 1;
            let name_ok = line.len() >= 3
                && line[0].is_ascii_uppercase()
                && line[1..3]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            if !name_ok {
                let name: String = text[pos..end].chars().take(3).collect();
                return Err(ParseError::InvalidSegmentName { index, name });
            }
            let name = || String::from_utf8_lossy(&line[..3]).into_owned();
            if line.len() > 3 && line[3] != sep {
                return Err(ParseError::MissingFieldSeparator {
                    index,
                    name: name(),
                    sep: delimiters.field,
                });
            }
            let first_field = fields.len();
            if line.len() > 3 {
                let is_msh = index == 1;
                if is_msh {
                    fields.push(Span {
                        start: (pos + 3) as u32,
                        end: (pos + 4) as u32,
                    });
                }
                let mut fstart = pos + 4;
                // Fields are a few bytes long: every separator of the line is found in
                // one pass, eight bytes at a time, rather than a search per field.
                each_byte(&line[4..], sep, |i| {
                    let at = pos + 4 + i;
                    fields.push(Span {
                        start: fstart as u32,
                        end: at as u32,
                    });
                    fstart = at + 1;
                });
                fields.push(Span {
                    start: fstart as u32,
                    end: end as u32,
                });
            }
            segments.push(Segment {
                start: pos as u32,
                end: end as u32,
                code: u32::from_le_bytes([line[0], line[1], line[2], 0]),
                first_field: first_field as u32,
                field_count: (fields.len() - first_field) as u32,
            });
        }
        pos = end + 1;
    }
    let header = {
        let msh = segments
            .first()
            .map_or("", |s| &text[s.start as usize..s.end as usize]);
        Header::from_fields(&msh_fields(msh, delimiters.field), &delimiters, charset)
    };
    Ok(Message {
        text,
        segments,
        fields,
        delimiters,
        charset,
        header,
    })
}

/// A segment name packed into a number, so finding segments by name compares numbers,
/// not strings. A name that is not three bytes long gets a code no segment has.
pub const fn name_code(name: &str) -> u32 {
    match name.as_bytes() {
        [a, b, c] => u32::from_le_bytes([*a, *b, *c, 0]),
        _ => u32::MAX,
    }
}

/// A byte in every byte of a word: `LO * b` repeats `b` eight times.
const LO: u64 = 0x0101_0101_0101_0101;

/// Eight bytes as one word, the first in the lowest bits (so the lowest flagged byte of
/// a test on it is the first in the text).
#[inline]
fn word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&chunk[..8]);
    u64::from_le_bytes(w)
}

/// The offset of the first byte at or after `from` that is `a`, `b` or `c` (pass one
/// twice to look for two). Eight bytes are tested at a time in a plain `u64` (each byte
/// XORed with the needle, then the zero-byte test), which beats a byte loop on the
/// 10–100 byte fields and components of HL7 without the start-up of a vectorised
/// search.
#[inline]
pub(crate) fn find_byte3(bytes: &[u8], from: usize, a: u8, b: u8, c: u8) -> Option<usize> {
    const HI: u64 = 0x8080_8080_8080_8080;
    let (ma, mb, mc) = (LO * u64::from(a), LO * u64::from(b), LO * u64::from(c));
    let zero = |y: u64| y.wrapping_sub(LO) & !y & HI;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let x = word(chunk);
        // The lowest flagged byte is always a true match (a false flag can only follow
        // a true one, through the borrow).
        let hit = zero(x ^ ma) | zero(x ^ mb) | zero(x ^ mc);
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes
        .get(i..)?
        .iter()
        .position(|&x| x == a || x == b || x == c)
        .map(|k| i + k)
}

/// Calls `f` with the offset of every byte of `bytes` that is `needle`, in order. Eight
/// bytes are tested at a time: each XORed with the needle, then an exact zero-byte test
/// (no false flags, unlike [`find_byte3`]'s), whose flags are taken lowest first.
#[inline]
fn each_byte(bytes: &[u8], needle: u8, mut f: impl FnMut(usize)) {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let m = LO * u64::from(needle);
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let x = word(chunk) ^ m;
        // A byte's top bit ends up set exactly when the byte is zero.
        let mut hit = !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
        while hit != 0 {
            f(base + (hit.trailing_zeros() / 8) as usize);
            hit &= hit - 1;
        }
        base += 8;
    }
    for (k, &b) in chunks.remainder().iter().enumerate() {
        if b == needle {
            f(base + k);
        }
    }
}

/// The `n`th (1-based) piece of `s` split on `sep`; with no separator only piece 1 exists.
pub(crate) fn piece(s: &str, sep: Option<char>, n: usize) -> Option<&str> {
    let Some(c) = sep else {
        return (n == 1).then_some(s);
    };
    let skip = n.checked_sub(1)?;
    if !c.is_ascii() {
        return s.split(c).nth(skip);
    }
    // An ASCII delimiter never occurs inside a multi-byte character, so the byte offsets
    // where it occurs are character boundaries.
    let (b, bytes) = (c as u8, s.as_bytes());
    let mut start = 0;
    let mut at = 0;
    while let Some(i) = find_byte3(bytes, start, b, b, b) {
        if at == skip {
            return Some(&s[start..i]);
        }
        at += 1;
        start = i + 1;
    }
    (at == skip).then(|| &s[start..])
}

/// Repetition `rep`, component `comp` and subcomponent `sub` (1-based; `None` takes the
/// whole) of a raw field, in one pass that ends where the piece ends. The same as
/// splitting on each delimiter in turn with [`piece`]; without `comp`, component
/// separators are data and `sub` splits the whole repetition.
fn select<'a>(
    field: &'a str,
    d: &Delimiters,
    rep: usize,
    comp: Option<usize>,
    sub: Option<usize>,
) -> Option<&'a str> {
    let (want_c, want_s) = (comp.unwrap_or(0), sub.unwrap_or(0));
    if rep == 0 || comp == Some(0) || sub == Some(0) {
        return None;
    }
    if !(d.repetition.is_ascii() && d.component.is_ascii()) {
        let r = piece(field, Some(d.repetition), rep)?;
        let c = comp.map_or(Some(r), |c| piece(r, Some(d.component), c))?;
        return sub.map_or(Some(c), |s| piece(c, d.subcomponent, s));
    }
    let (rb, cb) = (d.repetition as u8, d.component as u8);
    let bytes = field.as_bytes();
    if rep == 1 && want_s == 0 {
        // The usual path (`PID-5`, `OBX-3.1`): only the first repetition's component
        // delimiters count.
        let (stop, mut start, mut c) = (if want_c == 0 { rb } else { cb }, 0, 1);
        loop {
            let Some(i) = find_byte3(bytes, start, rb, stop, stop) else {
                return (want_c == 0 || c == want_c).then(|| &field[start..]);
            };
            if want_c == 0 || c == want_c {
                return Some(&field[start..i]);
            }
            if bytes[i] == rb {
                return None;
            }
            c += 1;
            start = i + 1;
        }
    }
    let sb = d.subcomponent.filter(char::is_ascii).map(|c| c as u8);
    // What to stop at: a delimiter that does not count (components when none is asked
    // for, subcomponents likewise) is data and stands in as the repetition delimiter.
    let stop_c = if want_c != 0 { cb } else { rb };
    let stop_s = sb.filter(|_| want_s != 0).unwrap_or(rb);
    let inside = |r: usize, c: usize, s: usize| {
        r == rep && (want_c == 0 || c == want_c) && (want_s == 0 || s == want_s)
    };
    let (mut r, mut c, mut s) = (1, 1, 1);
    let mut start = inside(r, c, s).then_some(0);
    let mut from = 0;
    while let Some(i) = find_byte3(bytes, from, rb, stop_c, stop_s) {
        from = i + 1;
        let b = bytes[i];
        if b == rb {
            r += 1;
            c = 1;
            s = 1;
        } else if b == stop_c {
            c += 1;
            s = 1;
        } else {
            s += 1;
        }
        if let Some(st) = start {
            return Some(&field[st..i]);
        }
        if r > rep || (r == rep && want_c != 0 && c > want_c) {
            return None;
        }
        if inside(r, c, s) {
            start = Some(i + 1);
        }
    }
    start.map(|st| &field[st..])
}

impl Message {
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// The whole decoded message, from "MSH" on (a BOM and leading whitespace removed).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Name of segment `i` (0-based); "" when out of range.
    pub fn segment_name(&self, i: usize) -> &str {
        self.segments
            .get(i)
            .map_or("", |s| &self.text[s.start as usize..s.start as usize + 3])
    }

    /// Raw text of segment `i`, without its terminator.
    pub fn segment_text(&self, i: usize) -> &str {
        self.segments
            .get(i)
            .map_or("", |s| &self.text[s.start as usize..s.end as usize])
    }

    /// The name of segment `i` packed by [`name_code`]; `u32::MAX` when out of range.
    pub fn segment_code(&self, i: usize) -> u32 {
        self.segments.get(i).map_or(u32::MAX, |s| s.code)
    }

    /// Indices (0-based, in message order) of every segment named `name`.
    pub fn segments(&self, name: &str) -> impl Iterator<Item = usize> + '_ {
        self.segments_coded(name_code(name))
    }

    /// Indices (0-based, in message order) of every segment whose name has this code.
    pub fn segments_coded(&self, code: u32) -> impl Iterator<Item = usize> + '_ {
        self.segments
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.code == code)
            .map(|(i, _)| i)
    }

    /// Index of the `instance`th (1-based) segment named `name`.
    pub fn segment_index(&self, name: &str, instance: usize) -> Option<usize> {
        self.segments(name).nth(instance.checked_sub(1)?)
    }

    /// Number of fields of segment `seg` (for MSH, counting MSH-1 and MSH-2).
    pub fn field_count(&self, seg: usize) -> usize {
        self.segments.get(seg).map_or(0, |s| s.field_count as usize)
    }

    /// Raw text of field `field` (1-based) of segment `seg`; `None` when absent,
    /// `Some("")` when present but empty.
    pub fn field_raw(&self, seg: usize, field: usize) -> Option<&str> {
        let s = self.segments.get(seg)?;
        if field == 0 || field > s.field_count as usize {
            return None;
        }
        let span = self.fields.get(s.first_field as usize + field - 1)?;
        self.text.get(span.start as usize..span.end as usize)
    }

    /// Number of repetitions of a field (0 when absent; 1 for an empty field).
    pub fn repetition_count(&self, seg: usize, field: usize) -> usize {
        match self.field_raw(seg, field) {
            None => 0,
            Some(_) if self.is_msh_special(seg, field) => 1,
            Some(f) => f.split(self.delimiters.repetition).count(),
        }
    }

    fn is_msh_special(&self, seg: usize, field: usize) -> bool {
        seg == 0 && field <= 2
    }

    /// Raw text of the first selected piece: `None` when absent, `Some("")` when present
    /// but empty, `Some("\"\"")` for HL7's null marker.
    pub fn raw_in(&self, seg: usize, fp: &FieldPath) -> Option<&str> {
        let mut first = None;
        self.for_each_raw(seg, fp, |s| {
            if first.is_none() {
                first = Some(s)
            }
        });
        first
    }

    /// Calls `f` with the raw text of every selected piece (one per selected repetition);
    /// absent pieces are left out, empty ones given as "".
    pub fn for_each_raw<'a>(&'a self, seg: usize, fp: &FieldPath, mut f: impl FnMut(&'a str)) {
        let Some(field) = self.field_raw(seg, fp.field) else {
            return;
        };
        if self.is_msh_special(seg, fp.field) {
            // MSH-1 and MSH-2 hold delimiters: never split or decoded.
            let first = |o: Option<usize>| o.is_none_or(|n| n == 1);
            let rep_ok = matches!(fp.repetition, Repetition::Index(1) | Repetition::All);
            if rep_ok && first(fp.component) && first(fp.subcomponent) {
                f(field);
            }
            return;
        }
        let d = &self.delimiters;
        let pick = |rep: &'a str| -> Option<&'a str> {
            let comp = match fp.component {
                Some(c) => piece(rep, Some(d.component), c)?,
                None => rep,
            };
            match fp.subcomponent {
                Some(s) => piece(comp, d.subcomponent, s),
                None => Some(comp),
            }
        };
        match fp.repetition {
            Repetition::Index(n) => {
                if let Some(v) = select(field, d, n, fp.component, fp.subcomponent) {
                    f(v)
                }
            }
            Repetition::Where { component, code } => {
                let wanted =
                    |rep: &&'a str| piece(rep, Some(d.component), component) == Some(code.as_str());
                if let Some(v) = field.split(d.repetition).find(wanted).and_then(pick) {
                    f(v)
                }
            }
            Repetition::All => {
                let mut each = |rep: &'a str| {
                    if let Some(v) = pick(rep) {
                        f(v)
                    }
                };
                if !d.repetition.is_ascii() {
                    field.split(d.repetition).for_each(each);
                    return;
                }
                // Fields are short: a plain loop beats the vectorised search `split`
                // starts for every piece. An ASCII delimiter falls on char boundaries.
                let rb = d.repetition as u8;
                let mut start = 0;
                for (i, &b) in field.as_bytes().iter().enumerate() {
                    if b == rb {
                        each(&field[start..i]);
                        start = i + 1;
                    }
                }
                each(&field[start..]);
            }
        }
    }

    /// Decoded value of the first selected piece; `None` when absent or empty.
    pub fn value_in(&self, seg: usize, fp: &FieldPath) -> Option<Cow<'_, str>> {
        let raw = self.raw_in(seg, fp)?;
        self.decode(seg, fp.field, raw)
    }

    /// Decoded values of every selected piece (all repetitions for `[*]`); empty ones
    /// are left out.
    pub fn values_in(&self, seg: usize, fp: &FieldPath) -> Vec<Cow<'_, str>> {
        let mut out = Vec::new();
        self.for_each_raw(seg, fp, |raw| {
            if let Some(v) = self.decode(seg, fp.field, raw) {
                out.push(v)
            }
        });
        out
    }

    fn decode<'a>(&'a self, seg: usize, field: usize, raw: &'a str) -> Option<Cow<'a, str>> {
        if raw.is_empty() {
            return None;
        }
        if self.is_msh_special(seg, field) {
            return Some(Cow::Borrowed(raw));
        }
        Some(unescape(raw, &self.delimiters, self.charset))
    }

    /// Decodes raw text taken from this message (escapes, in its charset).
    pub fn unescape<'a>(&self, raw: &'a str) -> Cow<'a, str> {
        unescape(raw, &self.delimiters, self.charset)
    }

    /// The segment a path names on its own: `path.instance` (1-based), else the first.
    pub fn segment_for(&self, path: &Path) -> Option<usize> {
        self.segment_index(&path.segment, path.instance.unwrap_or(1))
    }

    /// First match of `path`, decoded; `None` when absent or empty. A bare segment name
    /// yields the raw segment text.
    pub fn get(&self, path: &Path) -> Option<Cow<'_, str>> {
        let seg = self.segment_for(path)?;
        match &path.field {
            None => Some(Cow::Borrowed(self.segment_text(seg))),
            Some(fp) => self.value_in(seg, fp),
        }
    }

    /// Every match of `path` (all repetitions for `[*]`), decoded, empty ones left out.
    pub fn get_all(&self, path: &Path) -> Vec<Cow<'_, str>> {
        let Some(seg) = self.segment_for(path) else {
            return Vec::new();
        };
        match &path.field {
            None => vec![Cow::Borrowed(self.segment_text(seg))],
            Some(fp) => self.values_in(seg, fp),
        }
    }

    /// Raw first match: `None` when absent, `Some("")` when present but empty.
    pub fn raw(&self, path: &Path) -> Option<&str> {
        let seg = self.segment_for(path)?;
        match &path.field {
            None => Some(self.segment_text(seg)),
            Some(fp) => self.raw_in(seg, fp),
        }
    }

    /// True when the raw value is exactly `""`, HL7's "delete this value" null.
    pub fn is_null_marker(&self, path: &Path) -> bool {
        self.raw(path) == Some("\"\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_name_codes() {
        let table: [(&str, Option<char>, usize, Option<&str>); 10] = [
            ("a^b^c", Some('^'), 1, Some("a")),
            ("a^b^c", Some('^'), 2, Some("b")),
            ("a^b^c", Some('^'), 3, Some("c")),
            ("a^b^c", Some('^'), 4, None),
            ("a^b^c", Some('^'), 0, None),
            ("^^Đức", Some('^'), 3, Some("Đức")),
            ("^^", Some('^'), 2, Some("")),
            ("", Some('^'), 1, Some("")),
            ("a&b", None, 1, Some("a&b")),
            ("a&b", None, 2, None),
        ];
        for (s, sep, n, want) in table {
            assert_eq!(piece(s, sep, n), want, "{s:?} {sep:?} {n}");
        }
        let m = msg("MSH|^~\\&|A|B\rPID|1\rOBX|1\rOBX|2\r");
        assert_eq!(m.segments("OBX").collect::<Vec<_>>(), [2, 3]);
        assert_eq!(m.segment_code(1), name_code("PID"));
        assert_eq!(m.segment_code(9), u32::MAX);
        assert_eq!(m.segments("OB").count(), 0, "not a three-letter name");
        assert_eq!(m.segments("OBXX").count(), 0);
    }

    #[test]
    fn finds_every_separator_eight_bytes_at_a_time_as_a_byte_loop_would() {
        // Needles at every position, next to each other, at chunk edges, beside bytes
        // one bit away (a borrow-based test would flag those) and multi-byte text.
        let mut lines: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"|".to_vec(),
            b"||||||||||||||||||".to_vec(),
            b"a|}|\x7c|\xfc|\xfd|^~\\&|".to_vec(),
            "Đặng|Văn|Đức||".as_bytes().to_vec(),
        ];
        // Any needle, the high and the zero byte too, each beside the bytes one bit away.
        for needle in [b'|', 0x00, 0x80, 0xFF] {
            for len in 0..20 {
                for at in 0..len {
                    let mut l = vec![b'}'; len];
                    l[at] = needle;
                    lines.push(l.clone());
                    for near in [needle ^ 0x80, needle ^ 0x01] {
                        if at > 0 {
                            l[at - 1] = near;
                        }
                        if at + 1 < len {
                            l[at + 1] = near;
                        }
                        lines.push(l.clone());
                    }
                }
            }
        }
        for line in &lines {
            for needle in [b'|', 0x00, 0x80, 0xFF] {
                let mut got = Vec::new();
                each_byte(line, needle, |i| got.push(i));
                let want: Vec<usize> = (0..line.len()).filter(|&i| line[i] == needle).collect();
                assert_eq!(got, want, "{needle:#x} in {line:?}");
            }
        }
    }

    #[test]
    fn finds_delimiters_eight_bytes_at_a_time_as_a_byte_loop_would() {
        // Every position of every needle, in texts long and short enough to put it in a
        // whole eight-byte word, across a word boundary and in the tail, next to bytes
        // one above and below the needle (where a subtraction borrows) and to UTF-8.
        let naive =
            |b: &[u8], from: usize, n: [u8; 3]| (from..b.len()).find(|&i| n.contains(&b[i]));
        let fill = "a]_}{%'[Đ|^~&\\";
        for len in 0..40 {
            let base: Vec<u8> = fill.bytes().cycle().take(len).collect();
            for needles in [[b'^', b'~', b'&'], [b'^', b'^', b'^'], [b'|', b'|', b'\\']] {
                let clean: Vec<u8> = base
                    .iter()
                    .map(|b| if needles.contains(b) { b'.' } else { *b })
                    .collect();
                for at in 0..len {
                    for &n in &needles {
                        let mut text = clean.clone();
                        text[at] = n;
                        // A second match after the first must not be taken for it.
                        if let Some(x) = text.get_mut(at + 3) {
                            *x = needles[2];
                        }
                        for from in [0, 1, 7, 8, 9] {
                            let (a, b, c) = (needles[0], needles[1], needles[2]);
                            assert_eq!(
                                find_byte3(&text, from, a, b, c),
                                naive(&text, from, needles),
                                "{text:?} from {from} for {needles:?}"
                            );
                        }
                    }
                }
                assert_eq!(
                    find_byte3(&clean, 0, needles[0], needles[1], needles[2]),
                    None
                );
            }
        }
        assert_eq!(
            find_byte3(b"abc", 5, b'a', b'b', b'c'),
            None,
            "past the end"
        );
    }

    #[test]
    fn one_pass_selection_agrees_with_splitting_in_turn() {
        let d = Delimiters::standard();
        let fields = [
            "",
            "a",
            "a^b^c",
            "a&x&y^b~c^d&e~~f",
            "^^&&^~^&",
            "Nguyễn&Văn^Đức~Trần^^Bình",
            "~",
            // Delimiters at the ends of eight-byte words and across them.
            "abcdefg^hijklmno^pq~rstuvwx&y^z",
            "abcdefgh~ijklmn^o&pqrstuvw^x",
            "0123456^^89abcde~~f^g&&h",
        ];
        for f in fields {
            for rep in 0..=4 {
                for comp in [None, Some(0), Some(1), Some(2), Some(3), Some(4)] {
                    for sub in [None, Some(0), Some(1), Some(2), Some(3)] {
                        let want = piece(f, Some('~'), rep)
                            .and_then(|r| comp.map_or(Some(r), |c| piece(r, Some('^'), c)))
                            .and_then(|c| sub.map_or(Some(c), |s| piece(c, Some('&'), s)));
                        assert_eq!(
                            select(f, &d, rep, comp, sub),
                            want,
                            "{f:?} {rep} {comp:?} {sub:?}"
                        );
                    }
                }
            }
        }
    }

    fn p(s: &str) -> Path {
        match Path::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("bad test path {s}: {e}"),
        }
    }

    fn msg(raw: &str) -> Message {
        match parse(raw.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn get(m: &Message, path: &str) -> Option<String> {
        m.get(&p(path)).map(Cow::into_owned)
    }

    const ADT: &str = "MSH|^~\\&|HIS|BV_BACHMAI|HALONG|LAB|20240131083000+0700||ADT^A01^ADT_A01|MSG0001|P|2.5|||AL|NE||UNICODE UTF-8\r\
        EVN|A01|20240131083000\r\
        PID|1||12345^^^BV^MR~079123456789^^^CCCD^NI||NGUYỄN^Thị Ngọc^Ánh||19850412|F|||12 Phố Huế^^Hà Nội^^100000^VN\r\
        PV1|1|I|W1^R2^B3\r";

    #[test]
    fn separator_styles() {
        let table = [
            ("cr", ADT.to_string()),
            ("lf", ADT.replace('\r', "\n")),
            ("crlf", ADT.replace('\r', "\r\n")),
            (
                "mixed",
                ADT.replacen('\r', "\n", 1).replacen('\r', "\r\n", 1),
            ),
            ("blank lines", ADT.replace('\r', "\r\n\r\n")),
            ("bom", format!("\u{feff}{ADT}")),
            ("leading whitespace", format!("\r\n  \n{ADT}")),
            ("no final terminator", ADT.trim_end().to_string()),
            ("trailing blank lines", format!("{ADT}\n\n  \n")),
        ];
        for (name, text) in table {
            let m = msg(&text);
            assert_eq!(m.segment_count(), 4, "{name}");
            assert_eq!(m.segment_name(3), "PV1", "{name}");
            assert_eq!(get(&m, "PV1-2").as_deref(), Some("I"), "{name}");
            assert_eq!(get(&m, "PID-5.1").as_deref(), Some("NGUYỄN"), "{name}");
        }
    }

    #[test]
    fn header_fields() {
        let h = msg(ADT).header().clone();
        assert_eq!(h.field_sep, '|');
        assert_eq!(h.encoding_chars, "^~\\&");
        assert_eq!(h.sending_application, "HIS");
        assert_eq!(h.sending_facility, "BV_BACHMAI");
        assert_eq!(h.receiving_application, "HALONG");
        assert_eq!(h.receiving_facility, "LAB");
        assert_eq!(h.message_type, "ADT^A01^ADT_A01");
        assert_eq!(
            (h.message_code.as_str(), h.trigger_event.as_str()),
            ("ADT", "A01")
        );
        assert_eq!(h.message_structure, "ADT_A01");
        assert_eq!(h.control_id, "MSG0001");
        assert_eq!((h.processing_id.as_str(), h.version.as_str()), ("P", "2.5"));
        assert_eq!(
            (h.accept_ack_type.as_str(), h.application_ack_type.as_str()),
            ("AL", "NE")
        );
        assert_eq!(h.charset, "UNICODE UTF-8");
        assert!(h.enhanced_mode());
        assert_eq!(h.type_trigger(), "ADT^A01");
        let fast = read_header(ADT.as_bytes()).ok();
        assert_eq!(fast, Some(h));
    }

    #[test]
    fn access_paths() {
        let m = msg(ADT);
        let table = [
            ("MSH-1", Some("|")),
            ("MSH-2", Some("^~\\&")),
            ("MSH-3", Some("HIS")),
            ("MSH-9.2", Some("A01")),
            ("MSH-10", Some("MSG0001")),
            ("PID-3", Some("12345^^^BV^MR")),
            ("PID-3.1", Some("12345")),
            ("PID-3[2].1", Some("079123456789")),
            ("PID-3[2].4", Some("CCCD")),
            ("PID-3[2].4.1", Some("CCCD")),
            ("PID-3[3].1", None),
            ("PID-5.2", Some("Thị Ngọc")),
            ("PID-5.3", Some("Ánh")),
            ("PID-5.9", None),
            ("PID-4", None),
            ("PID-99", None),
            ("PID-11.3", Some("Hà Nội")),
            ("ZZZ-1", None),
            ("PID.8", Some("F")),
        ];
        for (path, want) in table {
            assert_eq!(get(&m, path).as_deref(), want, "{path}");
        }
        let all: Vec<String> = m
            .get_all(&p("PID-3[*].1"))
            .into_iter()
            .map(Cow::into_owned)
            .collect();
        assert_eq!(all, ["12345", "079123456789"]);
        assert_eq!(m.repetition_count(2, 3), 2);
        assert_eq!(m.field_count(0), 18);
        assert_eq!(m.segments("PID").collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn empty_absent_and_null() {
        let m = msg("MSH|^~\\&|A\rPID|1||\"\"|x^^z\r");
        assert_eq!(m.raw(&p("PID-2")), Some(""));
        assert_eq!(m.raw(&p("PID-7")), None);
        assert_eq!(m.get(&p("PID-2")), None);
        assert!(m.is_null_marker(&p("PID-3")));
        assert!(!m.is_null_marker(&p("PID-4")));
        assert_eq!(m.raw(&p("PID-4.2")), Some(""));
        assert_eq!(m.raw(&p("PID-4.4")), None);
        assert_eq!(get(&m, "PID-4.3").as_deref(), Some("z"));
    }

    #[test]
    fn segment_instances_and_subcomponents() {
        let m = msg("MSH|^~\\&|A\rOBR|1\rOBX|1|NM|a&b&c^d\rOBX|2|ST|x\rOBX|3|ST|y\r");
        assert_eq!(get(&m, "OBX[2]-3").as_deref(), Some("x"));
        assert_eq!(get(&m, "OBX[3]-1").as_deref(), Some("3"));
        assert_eq!(get(&m, "OBX[4]-1"), None);
        assert_eq!(get(&m, "OBX-3.1.2").as_deref(), Some("b"));
        assert_eq!(get(&m, "OBX-3.1.4"), None);
        assert_eq!(get(&m, "OBX-3.2.1").as_deref(), Some("d"));
        assert_eq!(get(&m, "OBX").as_deref(), Some("OBX|1|NM|a&b&c^d"));
    }

    #[test]
    fn custom_delimiters_and_truncation() {
        let m = msg("MSH#$*!@%#A#B\rPID#1##a$b*c$d@e#x!F!y\r");
        assert_eq!(m.header().encoding_chars, "$*!@%");
        assert_eq!(m.delimiters().truncation, Some('%'));
        assert_eq!(get(&m, "MSH-1").as_deref(), Some("#"));
        assert_eq!(get(&m, "MSH-3").as_deref(), Some("A"));
        assert_eq!(get(&m, "PID-3.2").as_deref(), Some("b"));
        assert_eq!(get(&m, "PID-3[2].2.2").as_deref(), Some("e"));
        assert_eq!(get(&m, "PID-4").as_deref(), Some("x#y"));
        let m = msg("MSH|^~\\&#|A|B|C|D|||ORU^R01|1|P|2.7\r");
        assert_eq!(m.header().encoding_chars, "^~\\&#");
        assert_eq!(m.header().sending_application, "A");
        assert_eq!(m.header().trigger_event, "R01");
        assert_eq!(m.header().version, "2.7");
    }

    #[test]
    fn escapes_in_values() {
        let m = msg("MSH|^~\\&|A\rNTE|1||a\\T\\b\\.br\\Nguy\\XE1BB85\\n\\F\\\r");
        assert_eq!(get(&m, "NTE-3").as_deref(), Some("a&b\nNguyễn|"));
    }

    #[test]
    fn latin1_message() {
        let mut raw =
            b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||8859/1\rPID|1||||M\xfcller^Ren\xe9\r".to_vec();
        let m = parse(&raw).ok();
        let name = m.as_ref().and_then(|m| get(m, "PID-5.2"));
        assert_eq!(name.as_deref(), Some("René"));
        assert_eq!(
            m.and_then(|m| get(&m, "PID-5.1")).as_deref(),
            Some("Müller")
        );
        raw.extend_from_slice(b"NTE|1||\\XE9\\\r");
        assert_eq!(
            parse(&raw).ok().and_then(|m| get(&m, "NTE-3")).as_deref(),
            Some("é")
        );
    }

    #[test]
    fn very_long_field() {
        let long = "x".repeat(1_000_000);
        let m = msg(&format!("MSH|^~\\&|A\rOBX|1|ED|{long}^end\r"));
        assert_eq!(get(&m, "OBX-3.2").as_deref(), Some("end"));
        assert_eq!(get(&m, "OBX-3.1").map(|s| s.len()), Some(1_000_000));
    }

    #[test]
    fn msh_only() {
        let m = msg("MSH|^~\\&|A|B");
        assert_eq!(m.segment_count(), 1);
        assert_eq!(m.header().sending_facility, "B");
        assert_eq!(m.header().control_id, "");
        let m = msg("MSH|^~\\&");
        assert_eq!(m.header().encoding_chars, "^~\\&");
    }

    #[test]
    fn malformed_input_is_an_error() {
        let bad_utf8 =
            b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||\xff\r".to_vec();
        let table: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", b"".to_vec(), "empty message"),
            ("whitespace only", b" \r\n ".to_vec(), "empty message"),
            ("bom only", BOM.to_vec(), "empty message"),
            ("no msh", b"PID|1\r".to_vec(), "no MSH segment at start of message"),
            (
                "batch",
                b"FHS|^~\\&\rBHS|^~\\&\r".to_vec(),
                "batch messages (FHS/BHS) are not supported yet",
            ),
            (
                "msh too short",
                b"MSH".to_vec(),
                "MSH segment is too short to hold MSH-1 and MSH-2",
            ),
            (
                "bad encoding chars",
                b"MSH|^|A".to_vec(),
                "MSH-2 encoding characters \"^\" are invalid (want 2 to 5 distinct punctuation characters, e.g. ^~\\&)",
            ),
            (
                "invalid utf8",
                bad_utf8,
                "invalid UTF-8 at byte 58 (MSH-18 says UNICODE UTF-8)",
            ),
            (
                "invalid utf8 no msh18",
                b"MSH|^~\\&|\xc3(\r".to_vec(),
                "invalid UTF-8 at byte 9 (MSH-18 is empty, so UTF-8 is assumed)",
            ),
            (
                "unsupported charset",
                b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||ISO IR87\r".to_vec(),
                "unsupported character set \"ISO IR87\" in MSH-18",
            ),
            (
                "garbage line",
                b"MSH|^~\\&|A\rPID|1\rO B|x\r".to_vec(),
                "segment 3 has an invalid name \"O B\"",
            ),
            (
                "trailing garbage",
                b"MSH|^~\\&|A\rPID|1\r\x1c".to_vec(),
                "segment 3 has an invalid name \"\\u{1c}\"",
            ),
            (
                "lowercase",
                b"MSH|^~\\&|A\rpid|1\r".to_vec(),
                "segment 2 has an invalid name \"pid\"",
            ),
            (
                "no separator",
                b"MSH|^~\\&|A\rPIDX|1\r".to_vec(),
                "segment 2 (PID) does not continue with the field separator '|'",
            ),
        ];
        for (name, raw, want) in table {
            let e = parse(&raw).err().map(|e| e.to_string());
            assert_eq!(e.as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn vietnamese_text_untouched() {
        let m = msg(ADT);
        assert_eq!(get(&m, "PID-5").as_deref(), Some("NGUYỄN^Thị Ngọc^Ánh"));
        assert!(matches!(m.get(&p("PID-5.2")), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn message_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static>() {}
        assert_bounds::<Message>();
    }

    #[test]
    fn corpus_messages_parse() {
        // The corpus lies beside the repository (as on CI); without it the test fails
        // rather than passing without reading a message.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/fhir-converter/messages");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the corpus lies beside the repository)",
                dir.display()
            )
        });
        let mut total = 0;
        let mut failures = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "hl7") {
                continue;
            }
            total += 1;
            let raw = std::fs::read(&path).unwrap_or_default();
            match parse(&raw) {
                Ok(m) => assert!(m.segment_count() >= 1),
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
        println!("corpus: {total} messages, {} failed", failures.len());
        assert!(total > 100, "only {total} messages in {}", dir.display());
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
