//! Character sets named in MSH-18, and decoding message bytes into UTF-8 text.

use std::borrow::Cow;

use super::parse::ParseError;

/// A character set the parser can decode (HL7 table 0211 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    /// `UNICODE UTF-8`, `UTF-8`, or MSH-18 empty (strict: invalid bytes are an error).
    Utf8,
    /// `8859/1`: true Latin-1, every byte is the code point U+00xx.
    Latin1,
    /// `8859/2`: Central European.
    Latin2,
    /// `8859/15`: Latin-9 (Latin-1 with the euro sign).
    Latin9,
    /// `ASCII`: bytes above 0x7F are an error.
    Ascii,
}

impl Charset {
    /// The character set named by the raw first repetition of MSH-18.
    pub fn from_msh18(value: &str) -> Result<Charset, ParseError> {
        let name = value.trim();
        let upper = name.to_ascii_uppercase();
        match upper.as_str() {
            "" | "UNICODE UTF-8" | "UTF-8" | "UTF8" | "UNICODE UTF8" => Ok(Charset::Utf8),
            "8859/1" => Ok(Charset::Latin1),
            "8859/2" => Ok(Charset::Latin2),
            "8859/15" => Ok(Charset::Latin9),
            "ASCII" => Ok(Charset::Ascii),
            _ => Err(ParseError::UnsupportedCharset {
                name: name.to_string(),
            }),
        }
    }

    /// Decodes `bytes`; `base_offset` is added to byte offsets in errors (so they point
    /// into the caller's original input), `msh18` is quoted in them.
    pub fn decode<'a>(
        self,
        bytes: &'a [u8],
        base_offset: usize,
        msh18: &str,
    ) -> Result<Cow<'a, str>, ParseError> {
        if bytes.is_ascii() {
            // ASCII is valid in every supported charset; `from_utf8` cannot fail here.
            return Ok(Cow::Borrowed(
                std::str::from_utf8(bytes).unwrap_or_default(),
            ));
        }
        match self {
            Charset::Utf8 => {
                std::str::from_utf8(bytes)
                    .map(Cow::Borrowed)
                    .map_err(|e| ParseError::InvalidUtf8 {
                        offset: base_offset + e.valid_up_to(),
                        msh18: msh18.trim().to_string(),
                    })
            }
            Charset::Latin1 => Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())),
            Charset::Latin2 => Ok(encoding_rs::ISO_8859_2.decode_without_bom_handling(bytes).0),
            Charset::Latin9 => Ok(encoding_rs::ISO_8859_15
                .decode_without_bom_handling(bytes)
                .0),
            Charset::Ascii => {
                let pos = bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0);
                Err(ParseError::NotAscii {
                    offset: base_offset + pos,
                    byte: bytes.get(pos).copied().unwrap_or(0),
                })
            }
        }
    }

    /// Decodes the bytes of a `\Xhh..\` escape; `None` when they are not valid in this
    /// character set (the caller then keeps the escape text literally).
    pub fn decode_escaped_bytes(self, bytes: &[u8]) -> Option<String> {
        match self {
            Charset::Utf8 => String::from_utf8(bytes.to_vec()).ok(),
            Charset::Ascii => bytes
                .is_ascii()
                .then(|| bytes.iter().map(|&b| char::from(b)).collect()),
            _ => self.decode(bytes, 0, "").ok().map(Cow::into_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_msh18() {
        let table = [
            ("", Charset::Utf8),
            ("UNICODE UTF-8", Charset::Utf8),
            ("utf-8", Charset::Utf8),
            ("8859/1", Charset::Latin1),
            ("8859/15", Charset::Latin9),
            ("ASCII", Charset::Ascii),
        ];
        for (name, want) in table {
            assert_eq!(Charset::from_msh18(name).ok(), Some(want), "{name}");
        }
        let err = Charset::from_msh18("ISO IR87").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unsupported character set \"ISO IR87\" in MSH-18")
        );
    }

    #[test]
    fn latin1_is_byte_to_code_point() {
        let s = Charset::Latin1.decode(b"Jos\xe9 \x80", 0, "8859/1").ok();
        assert_eq!(s.as_deref(), Some("José \u{80}"));
        let s = Charset::Latin9.decode(b"\xa4", 0, "8859/15").ok();
        assert_eq!(s.as_deref(), Some("€"));
    }

    #[test]
    fn invalid_utf8_names_offset() {
        let e = Charset::Utf8
            .decode(b"abc\xffdef", 10, "UNICODE UTF-8")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid UTF-8 at byte 13 (MSH-18 says UNICODE UTF-8)")
        );
        let e = Charset::Ascii
            .decode(b"ab\xe9", 0, "ASCII")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("byte 0xE9 at offset 2 is not ASCII (MSH-18 says ASCII)")
        );
    }
}
