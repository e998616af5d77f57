//! Access paths into a message: `PID-5`, `PID-5.1`, `PID-3[2].4.1`, `PID-3[*]`,
//! `OBX-5.1.2`, `OBX[2]-5`, the dot form `PID.5.1`, and a bare segment name `PID`.
//!
//! Grammar: `SEG ['[' n ']'] [('-' | '.') FIELD ['[' (n | '*' | n '=' CODE) ']'] ['.' COMP
//! ['.' SUB]]]` where `SEG` is `[A-Z][A-Z0-9]{2}`, `CODE` is `[A-Za-z0-9_-]{1,15}` and
//! every number is 1-based. `OBX[2]` is the second OBX segment; `PID-3[2]` the second
//! repetition of PID-3; `[*]` every repetition; `PID-3[5=MR]` the first repetition whose
//! component 5 is `MR`.

use std::fmt;

/// Which repetitions of a field a path selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repetition {
    /// One repetition, 1-based (`PID-3` is repetition 1).
    Index(usize),
    /// Every repetition (`PID-3[*]`).
    All,
    /// The first repetition whose component `component` is exactly `code`
    /// (`PID-3[5=MR]`: the medical record number, wherever the sender lists it).
    Where { component: usize, code: Code },
}

/// A short code a repetition filter compares with, kept inline so that paths stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Code {
    bytes: [u8; Code::MAX],
    len: u8,
}

impl Code {
    /// The longest code a filter takes.
    pub const MAX: usize = 15;

    /// `None` unless `s` is 1 to [`Code::MAX`] letters, digits, `_` or `-`.
    pub fn new(s: &str) -> Option<Code> {
        let ok = (1..=Code::MAX).contains(&s.len()) && s.bytes().all(Code::allows);
        ok.then(|| {
            let mut bytes = [0; Code::MAX];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Code {
                bytes,
                len: s.len() as u8,
            }
        })
    }

    /// A byte a code may hold.
    fn allows(c: u8) -> bool {
        c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The part of a path below the segment: field, repetition, component, subcomponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPath {
    /// 1-based; for MSH, field 1 is the field separator and field 2 the encoding characters.
    pub field: usize,
    pub repetition: Repetition,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

/// A parsed access path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// Segment name, three ASCII characters.
    pub segment: String,
    /// The name packed by [`super::name_code`], kept beside it so that finding the
    /// segment reads no string.
    pub code: u32,
    /// 1-based segment instance (`OBX[2]`); `None` means "the first" (or the current one
    /// in a mapping context).
    pub instance: Option<usize>,
    /// `None` for a bare segment name (`exists(PID)`).
    pub field: Option<FieldPath>,
}

/// A path that does not parse; `offset` is the byte offset of the problem in the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PathError {
    pub offset: usize,
    pub message: String,
}

impl Path {
    /// Parses the whole of `text` as a path.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let (path, used) = Path::parse_prefix(text)?;
        if used != text.len() {
            return Err(err(
                used,
                format!("unexpected {} after path", describe(&text[used..])),
            ));
        }
        Ok(path)
    }

    /// Parses the longest path at the start of `text`, returning it with the number of
    /// bytes used (for expression parsers that continue after it).
    pub fn parse_prefix(text: &str) -> Result<(Path, usize), PathError> {
        let b = text.as_bytes();
        let name_ok = b.len() >= 3
            && b[0].is_ascii_uppercase()
            && b[1..3]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if !name_ok {
            return Err(err(
                0,
                format!("expected a segment name like PID, found {}", describe(text)),
            ));
        }
        if b.get(3).is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(err(
                3,
                "a segment name has exactly three characters".to_string(),
            ));
        }
        let segment = text[..3].to_string();
        let mut pos = 3;
        let mut instance = None;
        if b.get(pos) == Some(&b'[') {
            let (n, after) = number(text, pos + 1, "segment instance")?;
            pos = close_bracket(text, after)?;
            instance = Some(n);
        }
        let mut field = None;
        if matches!(b.get(pos), Some(b'-' | b'.')) && b.get(pos + 1).is_some_and(u8::is_ascii_digit)
        {
            let (f, after) = number(text, pos + 1, "field")?;
            pos = after;
            let mut repetition = Repetition::Index(1);
            if b.get(pos) == Some(&b'[') {
                if b.get(pos + 1) == Some(&b'*') {
                    pos = close_bracket(text, pos + 2)?;
                    repetition = Repetition::All;
                } else {
                    // `[5=MR]` starts with a component number, `[2]` is a repetition.
                    let digits = b[pos + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                    let what = if b.get(pos + 1 + digits) == Some(&b'=') {
                        "component"
                    } else {
                        "repetition"
                    };
                    let (n, after) = number(text, pos + 1, what)?;
                    if b.get(after) == Some(&b'=') {
                        let (code, end) = filter_code(text, after + 1)?;
                        pos = close_bracket(text, end)?;
                        repetition = Repetition::Where { component: n, code };
                    } else {
                        pos = close_bracket(text, after)?;
                        repetition = Repetition::Index(n);
                    }
                }
            }
            let mut component = None;
            let mut subcomponent = None;
            if b.get(pos) == Some(&b'.') {
                let (c, after) = number(text, pos + 1, "component")?;
                component = Some(c);
                pos = after;
                if b.get(pos) == Some(&b'.') {
                    let (s, after) = number(text, pos + 1, "subcomponent")?;
                    subcomponent = Some(s);
                    pos = after;
                }
            }
            field = Some(FieldPath {
                field: f,
                repetition,
                component,
                subcomponent,
            });
        } else if matches!(b.get(pos), Some(b'-')) {
            return Err(err(
                pos + 1,
                format!(
                    "expected a field number, found {}",
                    describe(&text[pos + 1..])
                ),
            ));
        }
        Ok((
            Path {
                code: super::name_code(&segment),
                segment,
                instance,
                field,
            },
            pos,
        ))
    }
}

fn err(offset: usize, message: String) -> PathError {
    PathError { offset, message }
}

fn describe(rest: &str) -> String {
    match rest.chars().next() {
        None => "end of text".to_string(),
        Some(c) => format!("{c:?}"),
    }
}

/// A 1-based number starting at `pos`.
fn number(text: &str, pos: usize, what: &str) -> Result<(usize, usize), PathError> {
    let digits = text[pos.min(text.len())..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 {
        return Err(err(
            pos,
            format!(
                "expected a {what} number, found {}",
                describe(text.get(pos..).unwrap_or(""))
            ),
        ));
    }
    let n: usize = text[pos..pos + digits]
        .parse()
        .map_err(|_| err(pos, format!("{what} number is too large")))?;
    if n == 0 {
        return Err(err(pos, format!("{what} numbers start at 1")));
    }
    if n > 100_000 {
        return Err(err(pos, format!("{what} number {n} is too large")));
    }
    Ok((n, pos + digits))
}

/// The code of a repetition filter (`MR` in `PID-3[5=MR]`) starting at `pos`, and
/// where it ends.
fn filter_code(text: &str, pos: usize) -> Result<(Code, usize), PathError> {
    let rest = text.get(pos..).unwrap_or("");
    let len = rest.bytes().take_while(|&c| Code::allows(c)).count();
    if len == 0 {
        return Err(err(
            pos,
            format!(
                "expected the code the component must have (PID-3[5=MR]), found {}",
                describe(rest)
            ),
        ));
    }
    match Code::new(&rest[..len]) {
        Some(code) => Ok((code, pos + len)),
        None => Err(err(
            pos,
            format!(
                "a repetition filter's code has at most {} characters",
                Code::MAX
            ),
        )),
    }
}

fn close_bracket(text: &str, pos: usize) -> Result<usize, PathError> {
    if text.as_bytes().get(pos) == Some(&b']') {
        Ok(pos + 1)
    } else {
        Err(err(
            pos,
            format!(
                "expected ']', found {}",
                describe(text.get(pos..).unwrap_or(""))
            ),
        ))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segment)?;
        if let Some(i) = self.instance {
            write!(f, "[{i}]")?;
        }
        if let Some(fp) = &self.field {
            write!(f, "-{}", fp.field)?;
            match fp.repetition {
                Repetition::Index(1) => {}
                Repetition::Index(n) => write!(f, "[{n}]")?,
                Repetition::All => f.write_str("[*]")?,
                Repetition::Where { component, code } => {
                    write!(f, "[{component}={}]", code.as_str())?
                }
            }
            if let Some(c) = fp.component {
                write!(f, ".{c}")?;
            }
            if let Some(s) = fp.subcomponent {
                write!(f, ".{s}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_paths() {
        let table = [
            ("PID", "PID"),
            ("PID-5", "PID-5"),
            ("PID-5.1", "PID-5.1"),
            ("PID-3[2].4.1", "PID-3[2].4.1"),
            ("PID-3[*]", "PID-3[*]"),
            ("OBX-5.1.2", "OBX-5.1.2"),
            ("OBX[2]-5", "OBX[2]-5"),
            ("PID.5.1", "PID-5.1"),
            ("MSH-9.2", "MSH-9.2"),
            ("ZP1-2", "ZP1-2"),
            ("PID-3[5=MR].4.1", "PID-3[5=MR].4.1"),
            ("PID-3[5=PPN]", "PID-3[5=PPN]"),
        ];
        for (text, shown) in table {
            let p = Path::parse(text).map(|p| p.to_string());
            assert_eq!(p.as_deref(), Ok(shown), "{text}");
        }
        let p = Path::parse("PID-3[2].4.1").ok();
        let want = FieldPath {
            field: 3,
            repetition: Repetition::Index(2),
            component: Some(4),
            subcomponent: Some(1),
        };
        assert_eq!(p.and_then(|p| p.field), Some(want));
    }

    #[test]
    fn errors_carry_offsets() {
        let table = [
            ("pid-5", 0, "expected a segment name like PID, found 'p'"),
            ("PIDX-5", 3, "a segment name has exactly three characters"),
            ("PID-", 4, "expected a field number, found end of text"),
            ("PID-x", 4, "expected a field number, found 'x'"),
            ("PID-0", 4, "field numbers start at 1"),
            (
                "PID-3[",
                6,
                "expected a repetition number, found end of text",
            ),
            ("PID-3[2", 7, "expected ']', found end of text"),
            (
                "PID-3.",
                6,
                "expected a component number, found end of text",
            ),
            ("PID-3.1.x", 8, "expected a subcomponent number, found 'x'"),
            ("PID-3.1.2.3", 9, "unexpected '.' after path"),
            ("OBX[0]-5", 4, "segment instance numbers start at 1"),
            (
                "PID-3[5=]",
                8,
                "expected the code the component must have (PID-3[5=MR]), found ']'",
            ),
            (
                "PID-3[5='MR']",
                8,
                "expected the code the component must have (PID-3[5=MR]), found '\\''",
            ),
            (
                "PID-3[5=ABCDEFGHIJKLMNOP]",
                8,
                "a repetition filter's code has at most 15 characters",
            ),
            ("PID-3[5=MR", 10, "expected ']', found end of text"),
            ("PID-3[0=MR]", 6, "component numbers start at 1"),
        ];
        for (text, offset, msg) in table {
            let e = Path::parse(text).err();
            assert_eq!(
                e,
                Some(PathError {
                    offset,
                    message: msg.to_string()
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn prefix_stops_at_delimiters() {
        let r = Path::parse_prefix("PID-3.1, 'x')")
            .ok()
            .map(|(p, n)| (p.to_string(), n));
        assert_eq!(r, Some(("PID-3.1".to_string(), 7)));
    }
}
