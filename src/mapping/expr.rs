//! The expression language of mapping files.
//!
//! ```text
//! expr    = path | string | number | "true" | "false" | call | name
//! path    = an hl7::Path, e.g. PID-3[*].4.1, OBX[2]-5, PID
//! string  = "'" { char | "\'" | "\\" | "\n" } "'"
//! number  = ["-"] digits ["." digits]
//! call    = name "(" [expr {"," expr}] ")"
//! name    = [A-Za-z_][A-Za-z0-9_]*     (only as a table name or resource type argument)
//! let     = "$" name                   (an expression of the file's [let] table)
//! ```
//! Every node keeps its byte offset in the expression text, so load errors can point at
//! the exact character.

use crate::hl7::Path;

/// A path not numbered (yet): its reads are not kept.
pub const NO_SLOT: u32 = u32::MAX;

/// Numbers the paths of `e` (through `[let]` names): one number per distinct path,
/// given out by `numbers`, the same for every expression of one mapping.
pub fn number_paths(e: &mut Expr, numbers: &mut std::collections::HashMap<String, u32>) {
    match e {
        Expr::Path { path, slot, .. } => {
            let next = numbers.len() as u32;
            *slot = *numbers.entry(format!("{path:?}")).or_insert(next);
        }
        Expr::Call(c) => c.args.iter_mut().for_each(|a| number_paths(a, numbers)),
        Expr::Let(l) => number_paths(&mut l.expr, numbers),
        Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Name { .. } => {}
    }
}

/// Numbers the `[let]` names used in `e` whose value is one for the whole run (see
/// [`run_constant`]): one number per name, given out by `numbers`, the same for every
/// expression of one mapping.
pub fn number_lets(e: &mut Expr, numbers: &mut std::collections::HashMap<String, u32>) {
    match e {
        Expr::Call(c) => c.args.iter_mut().for_each(|a| number_lets(a, numbers)),
        Expr::Let(l) => {
            number_lets(&mut l.expr, numbers);
            if !l.failed && run_constant(&l.expr) {
                let next = numbers.len() as u32;
                l.slot = *numbers.entry(l.name.clone()).or_insert(next);
            }
        }
        Expr::Path { .. } | Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Name { .. } => {}
    }
}

/// Whether an expression has one value for a whole run, wherever it is evaluated: it
/// reads no segment but the message header (MSH) and calls nothing that depends on the
/// context segment or the resources made (`ref`, `refs`, `all`, `rank`, `alike`).
/// `facility()`, literals, lookups and DICOM attributes are the run's. (A run maps one
/// message; a frame holding a second MSH with no PID between is read with the first
/// header's values.)
pub fn run_constant(e: &Expr) -> bool {
    use super::functions::fid;
    const MSH: u32 = crate::hl7::name_code("MSH");
    match e {
        Expr::Path { path, .. } => path.code == MSH && path.instance.is_none(),
        Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Name { .. } => true,
        Expr::Call(c) => {
            !matches!(
                c.fid,
                fid::REF | fid::REFS | fid::ALL | fid::RANK | fid::ALIKE | fid::UNKNOWN
            ) && c.args.iter().all(run_constant)
        }
        Expr::Let(l) => !l.failed && run_constant(&l.expr),
    }
}

#[derive(Clone, Debug)]
pub enum Expr {
    /// `offset` is kept for diagnostics about paths.
    #[allow(dead_code)]
    Path {
        path: Path,
        offset: usize,
        /// The same number for the same path everywhere in one mapping (numbered at
        /// load, [`number_paths`]): where a resource's reads are kept, so that a path
        /// read again while the resource is made is not looked up again.
        slot: u32,
    },
    Str(String),
    Num(String),
    /// `true` or `false`.
    Bool(bool),
    /// A bare name: a lookup table or a resource type.
    Name {
        name: String,
        offset: usize,
    },
    Call(Box<Call>),
    /// `$name`: an expression of the file's `[let]` table, evaluated where it is used
    /// (a `[let]` that is a bare path is inlined as that path).
    Let(Box<Let>),
}

#[derive(Clone, Debug)]
pub struct Let {
    pub name: String,
    pub expr: Expr,
    /// Whether it calls `ref()` or `refs()` (which `id` and `when` cannot).
    pub uses_ref: bool,
    /// Offset of the `$`.
    pub offset: usize,
    /// Stands in for a `[let]` that has errors (reported where it is defined).
    pub failed: bool,
    /// Numbered at load ([`number_lets`]) when its value is one for the whole run (it
    /// reads the message header only): worked out at its first use and kept. Else
    /// [`NO_SLOT`], and it is worked out wherever it is used.
    pub slot: u32,
}

/// A file's `[let]` names, as far as an expression may use them.
#[derive(Clone, Debug, Default)]
pub struct Lets {
    pub names: std::collections::BTreeMap<String, LetEntry>,
    /// The directory's `shared.toml` could not be read (reported once): an unknown name
    /// may be one of its, so its uses stand in quietly instead of repeating that problem.
    pub shared_unreadable: bool,
}

#[derive(Clone, Debug)]
pub enum LetEntry {
    /// The expression and whether it calls `ref()`.
    Ready(Expr, bool),
    /// It has errors (already reported): its uses are quiet stand-ins.
    Failed,
    /// Defined below the `[let]` being read, which cannot use it.
    Below,
}

#[derive(Clone, Debug)]
pub struct Call {
    pub name: String,
    /// `functions::id_of(name)`, for dispatch.
    pub fid: u8,
    pub args: Vec<Expr>,
    /// Offset of the function name.
    pub offset: usize,
    /// Source text of the whole call, for runtime error messages.
    pub text: String,
    /// For `lookup()`: the table it names, once the mapping is loaded.
    pub table: Option<std::sync::Arc<super::tables::Table>>,
}

/// A syntax error at byte `offset` of the expression text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

/// Parses a whole expression.
#[cfg(test)]
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    parse_with(src, &Lets::default())
}

/// Parses a whole expression that may use the `[let]` expressions `lets`.
pub fn parse_with(src: &str, lets: &Lets) -> Result<Expr, ExprError> {
    let mut p = Parser {
        src,
        pos: 0,
        depth: 0,
        lets,
    };
    p.ws();
    let e = p.expr()?;
    p.ws();
    if p.pos < src.len() {
        return Err(p.err(format!("unexpected {} after expression", p.found())));
    }
    Ok(e)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
    lets: &'a Lets,
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether `s` is a name of the grammar (what may follow `$`).
pub fn is_name(s: &str) -> bool {
    s.bytes().next().is_some_and(is_word_start) && s.bytes().all(is_word)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn found(&self) -> String {
        match self.src[self.pos..].chars().next() {
            None => "end of expression".to_string(),
            Some(c) => format!("{c:?}"),
        }
    }

    fn err(&self, message: String) -> ExprError {
        ExprError {
            offset: self.pos,
            message,
        }
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(self.err("expression is nested too deeply".to_string()));
        }
        let e = self.primary();
        self.depth -= 1;
        e
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        if let Some(used) = super::dicom::attribute_len(&self.src[start..]) {
            // A DICOM attribute: `StudyInstanceUID`, `(0020,000D)`, `PatientName.1`.
            if !self.src[start + used..].starts_with(|c: char| c == '(' || is_word(c as u8)) {
                self.pos = start + used;
                return Ok(Expr::Name {
                    name: self.src[start..start + used].to_string(),
                    offset: start,
                });
            }
        }
        match self.peek() {
            Some(b'$') => self.named(),
            Some(b'\'') => self.string(),
            Some(c) if c.is_ascii_digit() || c == b'-' => self.number(),
            Some(c) if is_word_start(c) => {
                let len = self.src[start..]
                    .bytes()
                    .take_while(|&c| is_word(c))
                    .count();
                let word = &self.src[start..start + len];
                self.pos = start + len;
                self.ws();
                if self.peek() == Some(b'(') {
                    self.pos += 1;
                    return self.call(word, start);
                }
                self.pos = start + len;
                let b = word.as_bytes();
                let segment_like = len == 3
                    && b[0].is_ascii_uppercase()
                    && b[1..]
                        .iter()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
                if segment_like {
                    let (path, used) =
                        Path::parse_prefix(&self.src[start..]).map_err(|e| ExprError {
                            offset: start + e.offset,
                            message: e.message,
                        })?;
                    self.pos = start + used;
                    if self.peek().is_some_and(is_word) {
                        return Err(self.err(format!("unexpected {} after path", self.found())));
                    }
                    Ok(Expr::Path {
                        path,
                        offset: start,
                        slot: NO_SLOT,
                    })
                } else if word == "true" || word == "false" {
                    Ok(Expr::Bool(word == "true"))
                } else if len == 3
                    && matches!(self.peek(), Some(b'-' | b'.' | b'['))
                    && word.bytes().all(|c| c.is_ascii_alphanumeric())
                {
                    // `pid-3`: a path with its segment in lower case.
                    Err(ExprError {
                        offset: start,
                        message: format!(
                            "segment names are upper case: write {}",
                            word.to_ascii_uppercase()
                        ),
                    })
                } else {
                    Ok(Expr::Name {
                        name: word.to_string(),
                        offset: start,
                    })
                }
            }
            _ => Err(self.err(format!(
                "expected a path, a 'string', a number or a function call, found {}",
                self.found()
            ))),
        }
    }

    /// `$name`, a `[let]` expression.
    fn named(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        let len = self.src[start + 1..]
            .bytes()
            .take_while(|&c| is_word(c))
            .count();
        let name = &self.src[start + 1..start + 1 + len];
        self.pos = start + 1 + len;
        let err = |message: String| ExprError {
            offset: start,
            message,
        };
        let hint = || {
            crate::diag::did_you_mean(name, self.lets.names.keys().map(String::as_str)).map_or_else(
                || " (define it under [let] above its first use, or in shared.toml)".to_string(),
                |h| format!(" (did you mean ${h}?)"),
            )
        };
        let let_of = |expr: &Expr, uses_ref: bool, failed: bool| {
            Expr::Let(Box::new(Let {
                name: name.to_string(),
                expr: expr.clone(),
                uses_ref,
                offset: start,
                failed,
                slot: NO_SLOT,
            }))
        };
        match self.lets.names.get(name) {
            _ if name.is_empty() => Err(err("expected a name after '$'".to_string())),
            None if self.lets.shared_unreadable => Ok(let_of(&Expr::Str(String::new()), false, true)),
            None => Err(err(format!("unknown name ${name}{}", hint()))),
            Some(LetEntry::Below) => Err(err(format!(
                "${name} is not defined above this point: a [let] may use only the names defined above it"
            ))),
            Some(LetEntry::Failed) => Ok(let_of(&Expr::Str(String::new()), false, true)),
            Some(LetEntry::Ready(Expr::Path { path, .. }, _)) => Ok(Expr::Path {
                path: path.clone(),
                offset: start,
                slot: NO_SLOT,
            }),
            Some(LetEntry::Ready(expr, uses_ref)) => Ok(let_of(expr, *uses_ref, false)),
        }
    }

    fn string(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.src[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' => {
                    self.pos += i + 1;
                    return Ok(Expr::Str(out));
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('\'' | '\\'))) => out.push(e),
                    Some((_, 'n')) => out.push('\n'),
                    Some((j, e)) => {
                        return Err(ExprError {
                            offset: self.pos + j,
                            message: format!(
                                "unknown escape \\{e} in string (only \\', \\\\ and \\n)"
                            ),
                        })
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(ExprError {
            offset: start,
            message: "unterminated string".to_string(),
        })
    }

    fn number(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits = |p: &mut Self| {
            let n = p.src[p.pos..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            p.pos += n;
            n
        };
        if digits(self) == 0 {
            return Err(self.err(format!("expected a digit, found {}", self.found())));
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.err(format!(
                    "expected a digit after '.', found {}",
                    self.found()
                )));
            }
        }
        if self.peek().is_some_and(is_word) {
            return Err(self.err(format!("unexpected {} in number", self.found())));
        }
        Ok(Expr::Num(self.src[start..self.pos].to_string()))
    }

    fn call(&mut self, name: &str, start: usize) -> Result<Expr, ExprError> {
        let mut args = Vec::new();
        self.ws();
        if self.peek() == Some(b')') {
            self.pos += 1;
        } else {
            loop {
                self.ws();
                if name == "template" && self.peek() == Some(b'\'') {
                    let at = self.pos + 1;
                    let Expr::Str(text) = self.string()? else {
                        unreachable!("string() returns Expr::Str")
                    };
                    args.extend(template_parts(&text, at, self.depth, self.lets)?);
                } else {
                    args.push(self.expr()?);
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => {
                        return Err(self.err(format!("expected ',' or ')', found {}", self.found())))
                    }
                }
            }
        }
        Ok(Expr::Call(Box::new(Call {
            name: name.to_string(),
            fid: super::functions::id_of(name),
            args,
            offset: start,
            text: self.src[start..self.pos].to_string(),
            table: None,
        })))
    }
}

/// `template('{PID-5.1} {PID-5.2}')`: literal text and `{expression}` placeholders,
/// as alternating arguments (literal, expression, literal, ...). `{{` and `}}` are
/// literal braces. `at` is the offset of the text's first character (for errors).
fn template_parts(
    text: &str,
    at: usize,
    depth: usize,
    lets: &Lets,
) -> Result<Vec<Expr>, ExprError> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    let mut pos = 0;
    while let Some(i) = rest.find(['{', '}']) {
        let c = rest.as_bytes()[i];
        lit.push_str(&rest[..i]);
        if rest[i + 1..].starts_with(char::from(c)) {
            lit.push(char::from(c));
            pos += i + 2;
            rest = &rest[i + 2..];
            continue;
        }
        if c == b'}' {
            return Err(ExprError {
                offset: at + pos + i,
                message: "unmatched '}' in template (write }} for a brace)".to_string(),
            });
        }
        let Some(end) = rest[i + 1..].find('}') else {
            return Err(ExprError {
                offset: at + pos + i,
                message: "unclosed '{' in template".to_string(),
            });
        };
        let inner = &rest[i + 1..i + 1 + end];
        let mut p = Parser {
            src: inner,
            pos: 0,
            depth,
            lets,
        };
        p.ws();
        let e = p.expr().and_then(|e| {
            p.ws();
            if p.pos < inner.len() {
                Err(p.err(format!("unexpected {} in template placeholder", p.found())))
            } else {
                Ok(e)
            }
        });
        let e = e.map_err(|e| ExprError {
            offset: at + pos + i + 1 + e.offset,
            message: e.message,
        })?;
        out.push(Expr::Str(std::mem::take(&mut lit)));
        out.push(e);
        pos += i + 2 + end;
        rest = &rest[i + 2 + end..];
    }
    lit.push_str(rest);
    out.push(Expr::Str(lit));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(e: &Expr) -> String {
        match e {
            Expr::Path { path, .. } => format!("path:{path}"),
            Expr::Str(s) => format!("str:{s}"),
            Expr::Num(n) => format!("num:{n}"),
            Expr::Name { name, .. } => format!("name:{name}"),
            Expr::Bool(b) => format!("bool:{b}"),
            Expr::Call(c) => format!(
                "{}({})",
                c.name,
                c.args.iter().map(shape).collect::<Vec<_>>().join(",")
            ),
            Expr::Let(l) => format!("${}={}", l.name, shape(&l.expr)),
        }
    }

    #[test]
    fn parses_expressions() {
        let table = [
            ("PID-3.1", "path:PID-3.1"),
            ("  PID-3[*].4.1 ", "path:PID-3[*].4.1"),
            ("'it\\'s'", "str:it's"),
            ("-5.10", "num:-5.10"),
            (
                "hash(PID-3.4.1, PID-3.1)",
                "hash(path:PID-3.4.1,path:PID-3.1)",
            ),
            (
                "lookup(v2_gender, PID-8, 'unknown')",
                "lookup(name:v2_gender,path:PID-8,str:unknown)",
            ),
            (
                "if(eq(OBX-2, 'NM'), decimal(OBX-5))",
                "if(eq(path:OBX-2,str:NM),decimal(path:OBX-5))",
            ),
            ("exists(PID)", "exists(path:PID)"),
            ("ref(Patient)", "ref(name:Patient)"),
            ("concat()", "concat()"),
            ("OBX[2]-5", "path:OBX[2]-5"),
            (
                "template('Dr. {AIP-3.2} {upper(AIP-3.3)}{{x}}')",
                "template(str:Dr. ,path:AIP-3.2,str: ,upper(path:AIP-3.3),str:{x})",
            ),
        ];
        for (src, want) in table {
            let got = parse(src).map(|e| shape(&e));
            assert_eq!(got.as_deref(), Ok(want), "{src}");
        }
    }

    #[test]
    fn syntax_errors_point_at_the_char() {
        let table = [
            (
                "hash(PID-3.1",
                12,
                "expected ',' or ')', found end of expression",
            ),
            ("date(PID-x)", 9, "expected a field number, found 'x'"),
            ("'open", 0, "unterminated string"),
            ("PID-3 PID-4", 6, "unexpected 'P' after expression"),
            ("rxa-15", 0, "segment names are upper case: write RXA"),
            (
                "if(exists(Pid.3), 'x')",
                10,
                "segment names are upper case: write PID",
            ),
            (
                "eq(PID-8,,)",
                9,
                "expected a path, a 'string', a number or a function call, found ','",
            ),
            ("1.x", 2, "expected a digit after '.', found 'x'"),
            (
                "",
                0,
                "expected a path, a 'string', a number or a function call, found end of expression",
            ),
            ("PID-3.1x", 7, "unexpected 'x' after path"),
            (
                "template('a {PID-x}')",
                17,
                "expected a field number, found 'x'",
            ),
            ("template('a {PID-5')", 12, "unclosed '{' in template"),
            (
                "template('a } b')",
                12,
                "unmatched '}' in template (write }} for a brace)",
            ),
        ];
        for (src, offset, msg) in table {
            let e = parse(src).err();
            assert_eq!(
                e,
                Some(ExprError {
                    offset,
                    message: msg.to_string()
                }),
                "{src}"
            );
        }
    }
}
