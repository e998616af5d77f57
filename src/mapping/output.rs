//! Output paths (`a.b[0].c`, `given[*]`) and setting values into a JSON resource.
//!
//! Indices are 0-based. `[*]` takes a list value: item `i` goes to index `i`, so several
//! keys with `[*]` fed by the same HL7 repetitions stay aligned (`identifier[*].value`,
//! `identifier[*].system`). A single value set to `[*]` goes to index 0. After all
//! fields are set, `compact` removes nulls from arrays and drops empty objects/arrays.

use serde_json::{Map, Value as Json};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    All,
}

/// A syntax error at byte `offset` of the output path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutPathError {
    pub offset: usize,
    pub message: String,
}

pub fn parse_out_path(s: &str) -> Result<Vec<Step>, OutPathError> {
    let b = s.as_bytes();
    let mut steps = Vec::new();
    let mut pos = 0;
    let err = |offset: usize, message: String| OutPathError { offset, message };
    let found = |pos: usize| match s[pos.min(s.len())..].chars().next() {
        None => "end of path".to_string(),
        Some(c) => format!("{c:?}"),
    };
    loop {
        let len = s[pos..]
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
            .count();
        if len == 0 || !b[pos].is_ascii_alphabetic() {
            return Err(err(
                pos,
                format!("expected an element name, found {}", found(pos)),
            ));
        }
        steps.push(Step::Key(s[pos..pos + len].to_string()));
        pos += len;
        while b.get(pos) == Some(&b'[') {
            pos += 1;
            if b.get(pos) == Some(&b'*') {
                pos += 1;
                steps.push(Step::All);
            } else {
                let n = s[pos..].bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return Err(err(
                        pos,
                        format!("expected an index or '*', found {}", found(pos)),
                    ));
                }
                let i: usize = s[pos..pos + n]
                    .parse()
                    .map_err(|_| err(pos, "index is too large".to_string()))?;
                if i > 1000 {
                    return Err(err(pos, format!("index {i} is too large")));
                }
                steps.push(Step::Index(i));
                pos += n;
            }
            if b.get(pos) != Some(&b']') {
                return Err(err(pos, format!("expected ']', found {}", found(pos))));
            }
            pos += 1;
        }
        match b.get(pos) {
            None => break,
            Some(b'.') => pos += 1,
            Some(_) => {
                return Err(err(
                    pos,
                    format!("unexpected {} in output path", found(pos)),
                ))
            }
        }
    }
    if steps.iter().filter(|s| **s == Step::All).count() > 1 {
        let at = s.rfind("[*]").unwrap_or(0);
        return Err(err(at, "only one [*] per output path".to_string()));
    }
    Ok(steps)
}

/// Sets `value` at `steps` (which hold no `All`) under `root`. Err names the conflict.
pub fn set(root: &mut Map<String, Json>, steps: &[Step], value: Json) -> Result<(), String> {
    let Some((Step::Key(first), rest)) = steps.split_first() else {
        return Err("output path must start with an element name".to_string());
    };
    set_in(slot_of(root, first), rest, value)
}

fn set_in(slot: &mut Json, steps: &[Step], value: Json) -> Result<(), String> {
    let Some((step, rest)) = steps.split_first() else {
        if !slot.is_null() && !rest_is_same(slot, &value) {
            return Err("set twice".to_string());
        }
        *slot = value;
        return Ok(());
    };
    match step {
        Step::Key(k) => {
            if slot.is_null() {
                *slot = Json::Object(Map::new());
            }
            let Json::Object(map) = slot else {
                return Err(format!("cannot set {k:?} inside a non-object"));
            };
            set_in(slot_of(map, k), rest, value)
        }
        Step::Index(i) => {
            if slot.is_null() {
                *slot = Json::Array(Vec::new());
            }
            let Json::Array(items) = slot else {
                return Err(format!("cannot index [{i}] a non-array"));
            };
            if items.len() <= *i {
                items.resize(*i + 1, Json::Null);
            }
            set_in(&mut items[*i], rest, value)
        }
        Step::All => Err("[*] must be resolved before setting".to_string()),
    }
}

/// The member `k` of `map`, created as null when missing; the key is copied only then.
fn slot_of<'m>(map: &'m mut Map<String, Json>, k: &str) -> &'m mut Json {
    if !map.contains_key(k) {
        map.insert(k.to_string(), Json::Null);
    }
    map.get_mut(k).expect("just inserted")
}

fn rest_is_same(a: &Json, b: &Json) -> bool {
    a == b
}

/// Removes nulls from arrays and drops empty objects and arrays; true when `v` ends up
/// empty (or null).
pub fn compact(v: &mut Json) -> bool {
    match v {
        Json::Null => true,
        Json::Object(map) => {
            map.retain(|_, child| !compact(child));
            map.is_empty()
        }
        Json::Array(items) => {
            items.retain_mut(|child| !compact(child));
            items.is_empty()
        }
        Json::String(s) => s.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_paths() {
        let p = parse_out_path("name[0].given[*]").ok();
        let want = vec![
            Step::Key("name".into()),
            Step::Index(0),
            Step::Key("given".into()),
            Step::All,
        ];
        assert_eq!(p, Some(want));
        let table = [
            ("name[", 5, "expected an index or '*', found end of path"),
            ("name[0", 6, "expected ']', found end of path"),
            ("a..b", 2, "expected an element name, found '.'"),
            ("a-b", 1, "unexpected '-' in output path"),
            ("a[*].b[*]", 6, "only one [*] per output path"),
        ];
        for (s, offset, msg) in table {
            assert_eq!(
                parse_out_path(s).err(),
                Some(OutPathError {
                    offset,
                    message: msg.into()
                }),
                "{s}"
            );
        }
    }

    #[test]
    fn sets_and_compacts() {
        let mut root = Map::new();
        let path = |s: &str| parse_out_path(s).unwrap_or_default();
        assert!(set(&mut root, &path("name[0].family"), json!("NGUYỄN")).is_ok());
        assert!(set(&mut root, &path("name[0].given[1]"), json!("Ánh")).is_ok());
        assert!(set(&mut root, &path("identifier[2].value"), json!("x")).is_ok());
        assert!(set(&mut root, &path("name[0].family.x"), json!("y")).is_err());
        let mut v = Json::Object(root);
        compact(&mut v);
        assert_eq!(
            v,
            json!({"name": [{"family": "NGUYỄN", "given": ["Ánh"]}], "identifier": [{"value": "x"}]})
        );
    }
}
