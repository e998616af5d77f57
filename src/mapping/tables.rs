//! Lookup tables: `mappings/tables/<name>.csv` with the header `code,value`.
//!
//! One row per line, `code,value`; the value is everything after the first comma (so
//! URIs and texts may contain commas); either side may be wrapped in double quotes.
//! Blank lines and lines starting with `#` are skipped. Matching is exact first, then
//! case-insensitive.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::Arc;

use crate::diag::Diagnostic;

#[derive(Clone, Debug, Default)]
pub struct Table {
    exact: Rows,
    folded: Rows,
}

type Rows = HashMap<String, String, BuildHasherDefault<Fnv>>;

/// FNV-1a. Table codes are short, and what is stored comes from the operator's files, so
/// a simple hash does; a lookup is on the path of nearly every mapped field.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Table {
    pub fn get(&self, code: &str) -> Option<&str> {
        if let Some(v) = self.exact.get(code) {
            return Some(v);
        }
        let v = if !code.is_ascii() {
            self.folded.get(&code.to_lowercase())
        } else if code.bytes().any(|b| b.is_ascii_uppercase()) {
            // A short ASCII code is lowered in place, without allocating (a miss is
            // common: a code system that no table row names).
            let mut buf = [0u8; 32];
            match buf.get_mut(..code.len()) {
                Some(lower) => {
                    lower.copy_from_slice(code.as_bytes());
                    lower.make_ascii_lowercase();
                    std::str::from_utf8(lower)
                        .ok()
                        .and_then(|l| self.folded.get(l))
                }
                None => self.folded.get(&code.to_ascii_lowercase()),
            }
        } else {
            self.folded.get(code)
        };
        v.map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    /// Parses a table's text; problems go to `diags` with their line and column.
    pub fn parse(file: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Table {
        Table::parse_values(file, text, &[], diags)
    }

    /// [`Table::parse`], with the values a row may hold (none given: any).
    fn parse_values(
        file: &Path,
        text: &str,
        allowed: &[&str],
        diags: &mut Vec<Diagnostic>,
    ) -> Table {
        let mut table = Table::default();
        let mut header_seen = false;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let content = line.trim_end_matches(['\r', '\n']);
            let trimmed = content.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let content = content.strip_prefix('\u{feff}').unwrap_or(content);
            if !header_seen {
                header_seen = true;
                if content.trim() != "code,value" {
                    diags.push(Diagnostic::at_offset(
                        file,
                        text,
                        start,
                        "the first line must be the header \"code,value\"",
                    ));
                }
                continue;
            }
            let (code, value) = match split_row(content) {
                Ok(row) => row,
                Err((at, problem)) => {
                    diags.push(Diagnostic::at_offset(file, text, start + at, problem));
                    continue;
                }
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                let hint = crate::diag::did_you_mean(&value, allowed.iter().copied())
                    .map_or(String::new(), |h| format!(" (did you mean {h:?}?)"));
                diags.push(Diagnostic::at_offset(
                    file,
                    text,
                    start,
                    format!(
                        "{code:?}: {value:?} is not one of {}{hint}",
                        allowed.join(", ")
                    ),
                ));
                continue;
            }
            if table.exact.contains_key(&code) {
                diags.push(Diagnostic::at_offset(
                    file,
                    text,
                    start,
                    format!("duplicate code {code:?}"),
                ));
                continue;
            }
            table
                .folded
                .entry(code.to_lowercase())
                .or_insert_with(|| value.clone());
            table.exact.insert(code, value);
        }
        if !header_seen {
            diags.push(Diagnostic::whole_file(
                file,
                "empty table: expected the header \"code,value\"",
            ));
        }
        table
    }
}

/// The code and value of one row. The code ends at the first comma and the value is the
/// rest of the line (it may hold commas); either may be in double quotes (a quote inside
/// doubled: `"say ""hi"""`), spaces around them ignored. Err holds the byte offset in the
/// line and what is wrong.
fn split_row(line: &str) -> Result<(String, String), (usize, String)> {
    let (code, after) = field(line, 0, true)?;
    if after >= line.len() {
        return Err((
            0,
            "expected \"code,value\" (no comma on this line)".to_string(),
        ));
    }
    let (value, _) = field(line, after + 1, false)?;
    Ok((code, value))
}

/// The field starting at byte `pos` of `line` and where it ends (at the comma after it,
/// or at the end of the line). An unquoted field ends at a comma only when `to_comma`.
fn field(line: &str, pos: usize, to_comma: bool) -> Result<(String, usize), (usize, String)> {
    let rest = &line[pos..];
    let pos = pos + (rest.len() - rest.trim_start().len());
    if !line[pos..].starts_with('"') {
        let end = match line[pos..].find(',') {
            Some(c) if to_comma => pos + c,
            _ => line.len(),
        };
        return Ok((line[pos..end].trim_end().to_string(), end));
    }
    let mut out = String::new();
    let mut i = pos + 1;
    loop {
        let Some(q) = line[i..].find('"') else {
            return Err((pos, "unclosed quote: end the field with \"".to_string()));
        };
        out.push_str(&line[i..i + q]);
        i += q + 1;
        if line[i..].starts_with('"') {
            out.push('"');
            i += 1;
        } else {
            break;
        }
    }
    let after = line[i..].trim_start();
    let end = line.len() - after.len();
    if after.is_empty() || (to_comma && after.starts_with(',')) {
        Ok((out, end))
    } else {
        Err((end, "unexpected text after the closing quote".to_string()))
    }
}

/// A mapping directory's tables by name. Each is shared: a `lookup()` call holds the
/// table it names from load on ([`super::expr::Call::table`]).
pub type TableMap = BTreeMap<String, Arc<Table>>;

/// Tables whose values are a rule's names, not free text: a value not listed is an
/// error at load, not a rule silently not taken.
const CLOSED: &[(&str, &[&str])] = &[("result_identity", &["set_id", "code"])];

/// Every `*.csv` of `dir`, by file stem. A missing directory is no tables.
pub fn load_dir(dir: &Path, diags: &mut Vec<Diagnostic>) -> TableMap {
    let mut tables = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return tables;
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    paths.sort();
    for path in paths {
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let allowed = CLOSED
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(&[][..], |(_, values)| values);
                let table = Table::parse_values(&path, &text, allowed, diags);
                tables.insert(name, Arc::new(table));
            }
            Err(e) => diags.push(Diagnostic::whole_file(
                &path,
                format!("cannot read table: {e}"),
            )),
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let mut diags = Vec::new();
        let t = Table::parse(
            Path::new("t.csv"),
            "code,value\n# comment\nM,male\n\"F\",\"female\"\nX,a,b\n\"Q,1\", \"say \"\"hi\"\"\" \n",
            &mut diags,
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(t.get("M"), Some("male"));
        assert_eq!(t.get("m"), Some("male"));
        assert_eq!(t.get("F"), Some("female"));
        assert_eq!(t.get("X"), Some("a,b"));
        assert_eq!(t.get("Q,1"), Some("say \"hi\""));
        assert_eq!(t.get("Z"), None);
        // Case-insensitive both ways, whatever the case of the row.
        let t = Table::parse(
            Path::new("t.csv"),
            "code,value\nabn,abnormal\nHH,critical\n",
            &mut diags,
        );
        assert_eq!(t.get("ABN"), Some("abnormal"));
        assert_eq!(t.get("hh"), Some("critical"));
        assert_eq!(t.get("Hh"), Some("critical"));
        assert_eq!(t.get("h"), None);
        // Codes of any length, and beyond ASCII.
        let long = "urn:oid:2.16.840.1.113883.6.1.Extra";
        let t = Table::parse(
            Path::new("t.csv"),
            &format!(
                "code,value\n{long},long\nĐỊNH,vi\n{},exactly 32\n",
                "A".repeat(32)
            ),
            &mut diags,
        );
        assert_eq!(t.get(&long.to_uppercase()), Some("long"));
        assert_eq!(t.get(&long.to_lowercase()), Some("long"));
        assert_eq!(t.get("định"), Some("vi"));
        assert_eq!(t.get("ĐỊnh"), Some("vi"));
        assert_eq!(t.get(&"a".repeat(32)), Some("exactly 32"));
        assert_eq!(t.get(&"A".repeat(33)), None);
        assert_eq!(t.get(&"aA".repeat(16)), Some("exactly 32"));
    }

    #[test]
    fn reports_bad_lines() {
        let mut diags = Vec::new();
        Table::parse(
            Path::new("t.csv"),
            "code,val\nM,male\nbad\nM,again\n\"F,female\nG,\"girl\" x\n",
            &mut diags,
        );
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "t.csv:1:1: the first line must be the header \"code,value\"",
                "t.csv:3:1: expected \"code,value\" (no comma on this line)",
                "t.csv:4:1: duplicate code \"M\"",
                "t.csv:5:1: unclosed quote: end the field with \"",
                "t.csv:6:10: unexpected text after the closing quote",
            ]
        );
    }
}
