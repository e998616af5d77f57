//! A fast reader of the top-level text attributes of a Part 10 file held in memory, for
//! the datasets nearly every modality sends: explicit or implicit VR little endian
//! (uncompressed or with encapsulated pixel data), in the default character repertoire,
//! ISO_IR 100 or ISO_IR 192. It walks element headers, decodes only the text values it
//! keeps, steps over sequences, and stops at the pixel data, without building a DICOM
//! object. Anything else (another transfer syntax or character set, a malformed or
//! unusual encoding) returns `None` and the caller uses the general parser, whose
//! results this one reproduces (a test compares the two on every bundled test file).

use dicom_core::{Tag, VR};

use super::attrs::{dictionary_vr, is_string, is_text, keep, Attributes};

/// How the dataset encodes element headers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Explicit,
    Implicit,
}

/// How text of the character-set dependent VRs is decoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// The default repertoire; decoded as ISO 8859-1, its superset, as the general
    /// parser does.
    Latin1,
    Utf8,
}

/// Sequences nested deeper than this are left to the general parser.
const MAX_DEPTH: usize = 16;

const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const CHARSET: (u16, u16) = (0x0008, 0x0005);
const PIXEL_REPRESENTATION: (u16, u16) = (0x0028, 0x0103);
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// The top-level text attributes of `part10` (preamble, `DICM`, file meta, dataset), or
/// `None` when the general parser must read it.
pub(crate) fn attributes(part10: &[u8]) -> Option<Attributes> {
    if part10.get(128..132)? != b"DICM" {
        return None;
    }
    let mut r = Reader {
        bytes: part10,
        at: 132,
    };
    // The file meta group starts with its length (the general parser requires it).
    let first = r.header(Syntax::Explicit)?;
    if first.tag != (0x0002, 0x0000) || first.vr != Some(VR::UL) || first.len != 4 {
        return None;
    }
    let group_len = r.u32()? as usize;
    let meta_end = r.at.checked_add(group_len)?;
    let mut transfer_syntax = None;
    while r.at < meta_end {
        let e = r.header(Syntax::Explicit)?;
        if e.tag.0 != 0x0002 || e.len == UNDEFINED {
            return None;
        }
        let value = r.take(e.len)?;
        if e.tag == (0x0002, 0x0010) {
            transfer_syntax = Some(trim_end(value));
        }
    }
    if r.at != meta_end || r.peek_group() == Some(0x0002) {
        return None;
    }
    // The syntaxes the listener takes whose dataset is explicit VR little endian: the
    // uncompressed one, JPEG, JPEG-LS, JPEG 2000 and RLE (encapsulated pixel data).
    let syntax = match transfer_syntax? {
        b"1.2.840.10008.1.2" => Syntax::Implicit,
        b"1.2.840.10008.1.2.1"
        | b"1.2.840.10008.1.2.4.50"
        | b"1.2.840.10008.1.2.4.51"
        | b"1.2.840.10008.1.2.4.57"
        | b"1.2.840.10008.1.2.4.70"
        | b"1.2.840.10008.1.2.4.80"
        | b"1.2.840.10008.1.2.4.81"
        | b"1.2.840.10008.1.2.4.90"
        | b"1.2.840.10008.1.2.4.91"
        | b"1.2.840.10008.1.2.5" => Syntax::Explicit,
        _ => return None,
    };
    let mut charset = Charset::Latin1;
    // After a non-zero Pixel Representation the general parser reads "US or SS"
    // elements as SS.
    let mut signed = false;
    let mut out = Attributes::new();
    while r.at < part10.len() {
        let e = r.header(syntax)?;
        if e.tag.0 == 0xFFFE {
            return None;
        }
        // The general parser stops at the first element at or past the pixel data.
        if e.tag >= PIXEL_DATA {
            break;
        }
        if e.len == UNDEFINED {
            if e.vr != Some(VR::SQ) {
                // Undefined-length UN (a sequence in implicit VR inside explicit VR) and
                // the like are left to the general parser.
                return None;
            }
            r.skip_sequence(syntax, 0)?;
            continue;
        }
        if e.vr == Some(VR::SQ) {
            let mut inner = Reader {
                bytes: r.take(e.len)?,
                at: 0,
            };
            inner.skip_items(syntax, 0)?;
            continue;
        }
        let value = r.take(e.len)?;
        if e.tag.0 == 0x0002 {
            continue;
        }
        if e.tag == CHARSET {
            charset = match first_value(value) {
                b"" | b"ISO_IR 6" | b"ISO_IR_6" | b"ISO 2022 IR 6" | b"Default" => Charset::Latin1,
                b"ISO_IR 100" | b"ISO_IR_100" | b"ISO 2022 IR 100" => Charset::Latin1,
                b"ISO_IR 192" | b"ISO_IR_192" => Charset::Utf8,
                _ => return None,
            };
            if value.contains(&b'\\') {
                return None;
            }
        }
        let tag = Tag(e.tag.0, e.tag.1);
        if e.tag == PIXEL_REPRESENTATION && e.vr == Some(VR::US) {
            signed = value.get(..2).is_some_and(|v| v != [0, 0]);
        }
        let vr = if signed && is_us_or_ss(tag) {
            Some(VR::SS)
        } else {
            e.vr
        };
        let text = match vr {
            Some(VR::UN) => {
                // Sent as UN: decoded when the dictionary says it is text (as bytes read
                // as UTF-8, like the general path).
                let Some(vr) = dictionary_vr(tag).filter(|vr| is_text(*vr) && is_string(*vr))
                else {
                    continue;
                };
                (vr, String::from_utf8_lossy(value).into_owned())
            }
            Some(vr) if is_text(vr) => (vr, decode(vr, value, charset)?),
            _ => continue,
        };
        keep(&mut out, tag, text.0, &text.1);
    }
    Some(out)
}

/// The first of the values (split at `\`), without trailing spaces.
fn first_value(value: &[u8]) -> &[u8] {
    let first = value.split(|b| *b == b'\\').next().unwrap_or_default();
    let end = first
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &first[..end]
}

fn trim_end(value: &[u8]) -> &[u8] {
    let end = value
        .iter()
        .rposition(|b| *b != 0 && *b != b' ')
        .map_or(0, |i| i + 1);
    &value[..end]
}

/// The value as the general parser's `to_str` gives it: single-valued VRs whole,
/// the others split at `\`, each part decoded and stripped of trailing spaces and NULs,
/// joined again with `\`.
fn decode(vr: VR, value: &[u8], charset: Charset) -> Option<String> {
    if let Some(numbers) = numbers(vr, value) {
        return numbers;
    }
    // AE, AS and CS are always in the default repertoire.
    let charset = match vr {
        VR::AE | VR::AS | VR::CS => Charset::Latin1,
        _ => charset,
    };
    let one = |part: &[u8]| -> Option<String> {
        let text = match charset {
            Charset::Latin1 => part.iter().map(|b| char::from(*b)).collect(),
            Charset::Utf8 => std::str::from_utf8(part).ok()?.to_string(),
        };
        Some(text.trim_end_matches([' ', '\0']).to_string())
    };
    if matches!(vr, VR::UT | VR::ST | VR::UR | VR::LT) {
        return one(value);
    }
    let mut out = String::with_capacity(value.len());
    for (i, part) in value.split(|b| *b == b'\\').enumerate() {
        if i > 0 {
            out.push('\\');
        }
        out.push_str(&one(part)?);
    }
    Some(out)
}

/// A binary numeric value as text, as the general parser's `to_str` gives it (each
/// number formatted by Rust's `Display`, joined with `\`); `None` for other VRs, and
/// `Some(None)` for a length that is not a whole number of values.
fn numbers(vr: VR, value: &[u8]) -> Option<Option<String>> {
    fn join<const N: usize, T: std::fmt::Display>(
        value: &[u8],
        read: impl Fn([u8; N]) -> T,
    ) -> Option<String> {
        if !value.len().is_multiple_of(N) {
            return None;
        }
        let mut out = String::new();
        for (i, chunk) in value.chunks_exact(N).enumerate() {
            if i > 0 {
                out.push('\\');
            }
            let bytes: [u8; N] = chunk.try_into().expect("chunks of N bytes");
            out.push_str(&read(bytes).to_string());
        }
        Some(out)
    }
    Some(match vr {
        VR::US => join(value, u16::from_le_bytes),
        VR::SS => join(value, i16::from_le_bytes),
        VR::UL => join(value, u32::from_le_bytes),
        VR::SL => join(value, i32::from_le_bytes),
        VR::UV => join(value, u64::from_le_bytes),
        VR::SV => join(value, i64::from_le_bytes),
        VR::FL => join(value, f32::from_le_bytes),
        VR::FD => join(value, f64::from_le_bytes),
        _ => return None,
    })
}

/// Whether the dictionary gives `tag` "US or SS" (decided by Pixel Representation).
fn is_us_or_ss(tag: Tag) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|entry| entry.vr() == VirtualVr::Xs)
}

/// The VR the general parser gives an implicit VR element: the dictionary's, with
/// "US or SS" read as US and "OB or OW" as OW; OW for overlay data.
fn implicit_vr(tag: Tag) -> Option<VR> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if tag.0 >> 8 == 0x60 && tag.1 == 0x3000 {
        return Some(VR::OW);
    }
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|entry| entry.vr().relaxed())
}

struct Header {
    tag: (u16, u16),
    /// `None` for implicit VR elements the dictionary does not know (read as UN by the
    /// general parser, and skipped).
    vr: Option<VR>,
    len: u32,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes.get(self.at..self.at + 2)?;
        self.at += 2;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn peek_group(&self) -> Option<u16> {
        let b = self.bytes.get(self.at..self.at + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn take(&mut self, len: u32) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len as usize)?;
        let b = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(b)
    }

    fn header(&mut self, syntax: Syntax) -> Option<Header> {
        let tag = (self.u16()?, self.u16()?);
        if tag.0 == 0xFFFE {
            // Item and delimitation headers have no VR in either syntax.
            return Some(Header {
                tag,
                vr: None,
                len: self.u32()?,
            });
        }
        match syntax {
            Syntax::Explicit => {
                let code = self.bytes.get(self.at..self.at + 2)?;
                let vr = VR::from_binary([code[0], code[1]])?;
                self.at += 2;
                let long = matches!(
                    vr,
                    VR::OB
                        | VR::OD
                        | VR::OF
                        | VR::OL
                        | VR::OV
                        | VR::OW
                        | VR::SQ
                        | VR::SV
                        | VR::UC
                        | VR::UN
                        | VR::UR
                        | VR::UT
                        | VR::UV
                );
                let len = if long {
                    self.u16()?;
                    self.u32()?
                } else {
                    u32::from(self.u16()?)
                };
                Some(Header {
                    tag,
                    vr: Some(vr),
                    len,
                })
            }
            Syntax::Implicit => {
                let len = self.u32()?;
                let vr = implicit_vr(Tag(tag.0, tag.1));
                // An undefined length in implicit VR is a sequence whatever the tag.
                let vr = if len == UNDEFINED { Some(VR::SQ) } else { vr };
                Some(Header { tag, vr, len })
            }
        }
    }

    /// Steps over the items of an undefined-length sequence and its delimiter.
    fn skip_sequence(&mut self, syntax: Syntax, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        loop {
            let h = self.header(syntax)?;
            match h.tag {
                SEQUENCE_END => return Some(()),
                ITEM => self.skip_item(syntax, h.len, depth)?,
                _ => return None,
            }
        }
    }

    /// Steps over the items of a defined-length sequence (its whole value is `self`).
    fn skip_items(&mut self, syntax: Syntax, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        while self.at < self.bytes.len() {
            let h = self.header(syntax)?;
            match h.tag {
                ITEM => self.skip_item(syntax, h.len, depth)?,
                _ => return None,
            }
        }
        Some(())
    }

    fn skip_item(&mut self, syntax: Syntax, len: u32, depth: usize) -> Option<()> {
        if len == UNDEFINED {
            loop {
                let e = self.header(syntax)?;
                if e.tag == ITEM_END {
                    return Some(());
                }
                self.skip_element(syntax, e, depth)?;
            }
        }
        let mut inner = Reader {
            bytes: self.take(len)?,
            at: 0,
        };
        while inner.at < inner.bytes.len() {
            let e = inner.header(syntax)?;
            inner.skip_element(syntax, e, depth)?;
        }
        Some(())
    }

    /// Steps over one element inside an item.
    fn skip_element(&mut self, syntax: Syntax, e: Header, depth: usize) -> Option<()> {
        // A character set or a pixel representation inside an item changes how the
        // general parser decodes what follows; leave such datasets to it.
        if e.tag == CHARSET || e.tag == PIXEL_REPRESENTATION || e.tag.0 == 0xFFFE {
            return None;
        }
        if e.len == UNDEFINED {
            if e.vr != Some(VR::SQ) {
                return None;
            }
            return self.skip_sequence(syntax, depth + 1);
        }
        let value = self.take(e.len)?;
        if e.vr == Some(VR::SQ) {
            let mut inner = Reader {
                bytes: value,
                at: 0,
            };
            inner.skip_items(syntax, depth + 1)?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every DICOM file bundled with pydicom (installed by the test command), its
    /// character set examples included: where the
    /// fast reader answers, the general parser reads the file too and gives the same
    /// attributes; and the fast reader answers for the common kinds.
    #[test]
    fn reads_what_the_general_parser_reads_on_every_bundled_file() {
        let listed = std::process::Command::new("python3")
            .args([
                "-c",
                "from pydicom.data import get_testdata_files, get_charset_files\n\
                 for f in get_testdata_files() + get_charset_files(): print(f)",
            ])
            .output()
            .expect("python3 runs");
        assert!(
            listed.status.success(),
            "pydicom is needed (the test command installs it): {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let files: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert!(files.len() > 50, "pydicom lists its test files");
        let mut fast = Vec::new();
        for f in &files {
            let Ok(bytes) = std::fs::read(f) else {
                continue; // a directory of DICOMDIR examples
            };
            let Some(quick) = attributes(&bytes) else {
                continue;
            };
            let general = super::super::attrs::read_general(&bytes)
                .unwrap_or_else(|e| panic!("{f}: read by the fast reader only: {e}"));
            assert_eq!(quick, general, "{f}");
            fast.push(f.rsplit('/').next().unwrap().to_string());
        }
        for common in [
            "CT_small.dcm",
            "MR_small.dcm",
            "MR_small_implicit.dcm",
            "JPEG2000.dcm",
            "rtplan.dcm",
            "chrX1.dcm",
            "chrFren.dcm",
        ] {
            assert!(fast.contains(&common.to_string()), "{common} not read fast");
        }
        assert!(
            fast.len() >= 120,
            "only {} files read fast: {fast:?}",
            fast.len()
        );
    }

    /// A Part 10 file: file meta with its group length and `ts`, then explicit VR
    /// little endian elements (tag, VR, value) with 2-byte lengths.
    /// Tag, VR and value of one element.
    type Element<'a> = ((u16, u16), &'a [u8; 2], &'a [u8]);

    fn part10(ts: &str, elements: &[Element<'_>]) -> Vec<u8> {
        let element = |out: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], value: &[u8]| {
            out.extend_from_slice(&tag.0.to_le_bytes());
            out.extend_from_slice(&tag.1.to_le_bytes());
            out.extend_from_slice(vr);
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value);
        };
        let mut ts = ts.as_bytes().to_vec();
        if ts.len() % 2 == 1 {
            ts.push(0);
        }
        let mut meta = Vec::new();
        element(&mut meta, (0x0002, 0x0010), b"UI", &ts);
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        element(
            &mut out,
            (0x0002, 0x0000),
            b"UL",
            &(meta.len() as u32).to_le_bytes(),
        );
        out.extend_from_slice(&meta);
        for (tag, vr, value) in elements {
            element(&mut out, *tag, vr, value);
        }
        out
    }

    fn same_as_general(bytes: &[u8]) -> Attributes {
        let quick = attributes(bytes).expect("read by the fast reader");
        let general = super::super::attrs::read_general(bytes).unwrap();
        assert_eq!(quick, general);
        quick
    }

    #[test]
    fn stops_at_the_pixel_data_or_what_would_follow_it() {
        let bytes = part10(
            "1.2.840.10008.1.2.1",
            &[
                ((0x0008, 0x0060), b"CS", b"SR"),
                ((0x7FE1, 0x0010), b"LO", b"VENDOR"),
            ],
        );
        let a = same_as_general(&bytes);
        assert_eq!(a.modality(), Some("SR"));
        assert_eq!(a.get(0x7FE1_0010), None);
    }

    #[test]
    fn signed_pixel_data_makes_us_or_ss_elements_signed() {
        let bytes = part10(
            "1.2.840.10008.1.2.1",
            &[
                ((0x0028, 0x0103), b"US", &1u16.to_le_bytes()),
                // Pixel Padding Value, "US or SS", sent as US: -2000 for signed data.
                ((0x0028, 0x0120), b"US", &(-2000i16).to_le_bytes()),
            ],
        );
        assert_eq!(same_as_general(&bytes).get(0x0028_0120), Some("-2000"));
    }

    #[test]
    fn deflated_and_unknown_syntaxes_go_to_the_general_parser() {
        for ts in [
            "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.95",
            "1.2.3.4",
        ] {
            assert!(attributes(&part10(ts, &[])).is_none(), "{ts}");
        }
    }

    #[test]
    fn leaves_what_it_does_not_handle_to_the_general_parser() {
        let mut part10 = vec![0u8; 128];
        part10.extend_from_slice(b"DICM");
        // (0002,0010) Transfer Syntax UID: explicit VR big endian.
        let ts = b"1.2.840.10008.1.2.2\0";
        part10.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        part10.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        part10.extend_from_slice(ts);
        assert!(attributes(&part10).is_none(), "big endian");
        assert!(attributes(&part10[..100]).is_none(), "no preamble");
        let mut truncated = part10.clone();
        truncated.truncate(part10.len() - 3);
        assert!(attributes(&truncated).is_none(), "value past the end");
    }
}
