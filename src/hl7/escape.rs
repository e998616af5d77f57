//! HL7 v2 escape sequences (v2.5 §2.7, v2.7 truncation `\P\`), decoded by our own code
//! on raw component text.
//!
//! Decoding rules:
//! - `\F\ \S\ \T\ \R\ \E\` → the message's own field, component, subcomponent,
//!   repetition and escape characters; `\P\` → the truncation character (2.7+), kept
//!   literally when MSH-2 declares none.
//! - `\Xhhhh..\` → those bytes decoded in the message's character set; kept literally
//!   when the hex is malformed or the bytes are invalid in that character set.
//! - `\.br\` → `"\n"`; `\.sp\` → `"\n"` (a line skip).
//! - `\H\`, `\N\` (highlight on/off), `\Zxx\` (locally defined), `\Cxxxx\`, `\Mxxxxxx\`
//!   (ISO 2022 character set switches, which we cannot honour after decoding) and the
//!   other formatting commands (`\.fi\ \.nf\ \.in n\ \.ti n\ \.sk n\ \.ce\`) are removed.
//! - Anything else (an unknown escape, an escape without its closing character) is kept
//!   literally, closing character included.

use std::borrow::Cow;

use super::charset::Charset;
use super::parse::Delimiters;

/// Whether raw HL7 text holds the escape character, i.e. needs [`unescape`]. A byte
/// search (delimiters are ASCII; a false hit only takes the slow path): most fields are
/// a few bytes long, too short for a vectorised search to pay.
pub fn has_escape(raw: &str, d: &Delimiters) -> bool {
    match d.escape {
        Some(e) if e.is_ascii() => {
            let e = e as u8;
            super::parse::find_byte3(raw.as_bytes(), 0, e, e, e).is_some()
        }
        Some(e) => raw.bytes().any(|b| u32::from(b) == u32::from(e)),
        None => false,
    }
}

/// Decodes the escape sequences of raw HL7 text. Borrowed when `raw` holds no escape
/// character.
pub fn unescape<'a>(raw: &'a str, d: &Delimiters, charset: Charset) -> Cow<'a, str> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(raw);
    };
    if !has_escape(raw, d) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            // Unterminated: keep the rest as it is.
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        let body = &after[..end];
        if !decode_one(body, d, charset, &mut out) {
            out.push(esc);
            out.push_str(body);
            out.push(esc);
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends the decoding of one escape body (the text between the escape characters);
/// false when it is unknown and must be kept literally.
fn decode_one(body: &str, d: &Delimiters, charset: Charset, out: &mut String) -> bool {
    match body {
        "F" => out.push(d.field),
        "S" => out.push(d.component),
        "R" => out.push(d.repetition),
        "T" => match d.subcomponent {
            Some(c) => out.push(c),
            None => return false,
        },
        "E" => match d.escape {
            Some(c) => out.push(c),
            None => return false,
        },
        "P" => match d.truncation {
            Some(c) => out.push(c),
            None => return false,
        },
        "H" | "N" | ".fi" | ".nf" | ".ce" => {}
        ".br" => out.push('\n'),
        _ => {
            let mut chars = body.chars();
            match chars.next() {
                Some('X') => {
                    match hex_bytes(&body[1..]).and_then(|b| charset.decode_escaped_bytes(&b)) {
                        Some(text) => out.push_str(&text),
                        None => return false,
                    }
                }
                Some('Z' | 'C' | 'M')
                    if body.len() > 1 && body[1..].bytes().all(|b| b.is_ascii_alphanumeric()) => {}
                Some('.') => {
                    let cmd = &body[1..];
                    let (name, arg) = cmd.split_at(
                        cmd.find(|c: char| !c.is_ascii_alphabetic())
                            .unwrap_or(cmd.len()),
                    );
                    let arg = arg.trim();
                    let arg_ok = arg.is_empty()
                        || arg
                            .trim_start_matches(['+', '-'])
                            .bytes()
                            .all(|b| b.is_ascii_digit());
                    match name {
                        "sp" if arg_ok => out.push('\n'),
                        "in" | "ti" | "sk" if arg_ok => {}
                        _ => return false,
                    }
                }
                _ => return false,
            }
        }
    }
    true
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Escapes text for use inside an HL7 field: the escape character first, then the
/// delimiters; line breaks become `\.br\` (a CR LF pair is one break).
pub fn escape(text: &str, d: &Delimiters) -> String {
    let esc = d.escape.unwrap_or('\\');
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    let seq = |out: &mut String, code: &str| {
        out.push(esc);
        out.push_str(code);
        out.push(esc);
    };
    while let Some(c) = chars.next() {
        if c == esc {
            seq(&mut out, "E");
        } else if c == d.field {
            seq(&mut out, "F");
        } else if c == d.component {
            seq(&mut out, "S");
        } else if c == d.repetition {
            seq(&mut out, "R");
        } else if Some(c) == d.subcomponent {
            seq(&mut out, "T");
        } else if Some(c) == d.truncation {
            seq(&mut out, "P");
        } else if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            seq(&mut out, ".br");
        } else if c == '\n' {
            seq(&mut out, ".br");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_delims() -> Delimiters {
        Delimiters::standard()
    }

    #[test]
    fn decodes_each_escape() {
        let d = Delimiters {
            truncation: Some('#'),
            ..std_delims()
        };
        let table = [
            (r"A\F\B", "A|B"),
            (r"A\S\B", "A^B"),
            (r"A\T\B", "A&B"),
            (r"A\R\B", "A~B"),
            (r"A\E\B", r"A\B"),
            (r"A\P\B", "A#B"),
            (r"line1\.br\line2", "line1\nline2"),
            (r"x\.sp\y", "x\ny"),
            (r"x\.sp 2\y", "x\ny"),
            (r"\H\bold\N\ text", "bold text"),
            (r"a\Zfoo\b", "ab"),
            (r"a\C2842\b", "ab"),
            (r"a\.in +4\b", "ab"),
            (r"\X41\\X42\", "AB"),
            (r"Nguy\XE1BB85\n", "Nguyễn"),
            (r"bad \XE1BB\ hex", r"bad \XE1BB\ hex"),
            (r"odd \X4\ hex", r"odd \X4\ hex"),
            (r"unknown \Q\ kept", r"unknown \Q\ kept"),
            (r"unterminated \F", r"unterminated \F"),
            (r"\", r"\"),
            ("Nguyễn Thị Ngọc Ánh", "Nguyễn Thị Ngọc Ánh"),
            (r"Müller\T\Söhne \E\ Grüße", r"Müller&Söhne \ Grüße"),
            (r"Ánh\S\Ngọc", "Ánh^Ngọc"),
        ];
        for (raw, want) in table {
            assert_eq!(unescape(raw, &d, Charset::Utf8), want, "{raw}");
        }
    }

    #[test]
    fn no_escape_char_borrows() {
        assert!(matches!(
            unescape("Nguyễn", &std_delims(), Charset::Utf8),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn hex_in_latin1_message() {
        assert_eq!(
            unescape(r"Ren\XE9\", &std_delims(), Charset::Latin1),
            "René"
        );
    }

    #[test]
    fn no_truncation_char_keeps_p() {
        assert_eq!(unescape(r"a\P\b", &std_delims(), Charset::Utf8), r"a\P\b");
    }

    #[test]
    fn custom_delimiters() {
        let d = Delimiters {
            field: '#',
            component: '$',
            repetition: '*',
            escape: Some('!'),
            subcomponent: Some('@'),
            truncation: None,
        };
        assert_eq!(unescape("a!F!b!S!c!E!", &d, Charset::Utf8), "a#b$c!");
        assert_eq!(escape("a#b$c!d*e@", &d), "a!F!b!S!c!E!d!R!e!T!");
    }

    #[test]
    fn escape_round_trips() {
        let d = std_delims();
        let table = [
            "plain",
            "a|b^c~d\\e&f",
            "Nguyễn Thị | Ánh",
            "two\nlines",
            "crlf\r\nend",
        ];
        for text in table {
            let esc = escape(text, &d);
            assert!(!esc.contains(['|', '^', '~', '&', '\r', '\n']), "{esc}");
            assert_eq!(
                unescape(&esc, &d, Charset::Utf8),
                text.replace("\r\n", "\n"),
                "{text}"
            );
        }
        assert_eq!(escape("a|b^c", &d), r"a\F\b\S\c");
    }
}
