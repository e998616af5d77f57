//! Output paths (`a.b[0].c`, `given[*]`) and setting values into a JSON resource.
//!
//! Indices are 0-based. `[*]` takes a list value: item `i` goes to index `i`, so several
//! keys with `[*]` fed by the same HL7 repetitions stay aligned (`identifier[*].value`,
//! `identifier[*].system`). A single value set to `[*]` goes to index 0. After all
//! fields are set, the record leaves out empty strings, objects and arrays.

use super::eval::Value;
use crate::record::{Builder, Record};

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

/// A resource under construction: the structure its output paths give, with values at
/// the leaves. Object members are found by comparing the mapping's own key strings (no
/// hashing, no key copies); [`Node::into_record`] writes the record once, in the order
/// members were first set, leaving out what is empty.
#[derive(Debug)]
pub enum Node<'a> {
    Empty,
    Leaf(Value<'a>),
    Obj(Vec<(&'a str, Node<'a>)>),
    Arr(Vec<Node<'a>>),
}

impl<'a> Node<'a> {
    /// An object with these members, in this order.
    pub fn object(members: Vec<(&'a str, Node<'a>)>) -> Node<'a> {
        Node::Obj(members)
    }

    /// Sets `value` at `steps`; a `[*]` step stands for index `star`. Err names the
    /// conflict (a place set twice with different values, a key inside an array, ...).
    pub fn set(&mut self, steps: &'a [Step], star: usize, value: Value<'a>) -> Result<(), String> {
        let Some((step, rest)) = steps.split_first() else {
            return match self {
                Node::Empty => {
                    *self = Node::Leaf(value);
                    Ok(())
                }
                // The same value again is no conflict (compared as it goes out).
                Node::Leaf(old)
                    if *old == value || old.clone().compacted() == value.compacted() =>
                {
                    Ok(())
                }
                _ => Err("set twice".to_string()),
            };
        };
        if let Node::Leaf(Value::Obj(_) | Value::List(_)) = self {
            // Inside a value a function built (an Identifier, a HumanName, ...).
            let Node::Leaf(v) = std::mem::replace(self, Node::Empty) else {
                unreachable!("matched above");
            };
            *self = Node::from_value(v);
        }
        match step {
            Step::Key(k) => {
                if let Node::Empty = self {
                    *self = Node::Obj(Vec::new());
                }
                let Node::Obj(members) = self else {
                    return Err(format!("cannot set {k:?} inside a non-object"));
                };
                let at = match members.iter().position(|(name, _)| same_key(name, k)) {
                    Some(at) => at,
                    None => {
                        members.push((k.as_str(), Node::Empty));
                        members.len() - 1
                    }
                };
                members[at].1.set(rest, star, value)
            }
            Step::Index(_) | Step::All => {
                let i = match step {
                    Step::Index(i) => *i,
                    _ => star,
                };
                if let Node::Empty = self {
                    *self = Node::Arr(Vec::new());
                }
                let Node::Arr(items) = self else {
                    return Err(format!("cannot index [{i}] a non-array"));
                };
                if items.len() <= i {
                    items.resize_with(i + 1, || Node::Empty);
                }
                items[i].set(rest, star, value)
            }
        }
    }

    /// A built object or list opened one level, so a path can set inside it. It is
    /// compacted first (absent and empty items dropped, as they are when it goes out),
    /// so that `[i]` counts only what it holds.
    fn from_value(v: Value<'a>) -> Node<'a> {
        match v.compacted() {
            Value::Obj(members) => Node::Obj(
                members
                    .into_iter()
                    .map(|(k, v)| (k, Node::Leaf(v)))
                    .collect(),
            ),
            Value::List(items) => Node::Arr(items.into_iter().map(Node::Leaf).collect()),
            Value::Absent => Node::Empty,
            other => Node::Leaf(other),
        }
    }

    /// The record, without nulls in arrays and without empty objects, arrays and
    /// strings; `None` when nothing is left.
    pub fn into_record(self, b: &mut Builder) -> Option<Record> {
        emit(&self, b);
        b.finish()
    }
}

/// Pushes `node` onto `b` when it holds anything; true when it did.
fn emit(node: &Node<'_>, b: &mut Builder) -> bool {
    match node {
        Node::Empty => false,
        Node::Leaf(v) => emit_value(v, b),
        Node::Obj(members) => b.object(members, emit),
        Node::Arr(items) => b.array(items, emit),
    }
}

fn emit_value(v: &Value<'_>, b: &mut Builder) -> bool {
    match v {
        Value::Absent => false,
        Value::Str(s) if s.is_empty() => false,
        Value::Str(s) => {
            b.string(s);
            true
        }
        Value::Num(n) => {
            b.number(n);
            true
        }
        Value::Bool(x) => {
            b.boolean(*x);
            true
        }
        Value::List(items) => b.array(items, emit_value),
        Value::Obj(members) => b.object(members, emit_value),
    }
}

/// Key equality without a call to `memcmp`: keys are short and most differ in length or
/// in their first bytes, so an inlined loop settles nearly every comparison at once.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
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
        let paths: Vec<Vec<Step>> = [
            "name[0].family",
            "name[0].given[1]",
            "identifier[2].value",
            "name[0].family.x",
            "telecom[*].value",
            "address",
            "address.city",
        ]
        .iter()
        .map(|s| parse_out_path(s).unwrap_or_default())
        .collect();
        let s = |t: &'static str| Value::Str(std::borrow::Cow::Borrowed(t));
        let mut root = Node::object(vec![("resourceType", Node::Leaf(s("Patient")))]);
        assert!(root.set(&paths[0], 0, s("NGUYỄN")).is_ok());
        assert!(root.set(&paths[1], 0, s("Ánh")).is_ok());
        assert!(root.set(&paths[2], 0, s("x")).is_ok());
        assert_eq!(
            root.set(&paths[3], 0, s("y")),
            Err("cannot set \"x\" inside a non-object".into())
        );
        // The same value again is no conflict; another one is.
        assert!(root.set(&paths[0], 0, s("NGUYỄN")).is_ok());
        assert_eq!(root.set(&paths[0], 0, s("LÊ")), Err("set twice".into()));
        assert!(root.set(&paths[4], 1, s("0901")).is_ok());
        // Inside a value a function built.
        let line = Value::Obj(vec![("line", Value::List(vec![s("1"), s("")]))]);
        assert!(root.set(&paths[5], 0, line).is_ok());
        assert!(root.set(&paths[6], 0, s("Huế")).is_ok());
        let out = root.into_record(&mut Builder::new()).map(|r| r.to_value());
        // Members come out in the order they were first set.
        let keys: Vec<&str> = out
            .as_ref()
            .and_then(serde_json::Value::as_object)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            ["resourceType", "name", "identifier", "telecom", "address"]
        );
        assert_eq!(
            out,
            Some(json!({
                "resourceType": "Patient",
                "name": [{"family": "NGUYỄN", "given": ["Ánh"]}],
                "identifier": [{"value": "x"}],
                "telecom": [{"value": "0901"}],
                "address": {"line": ["1"], "city": "Huế"}
            }))
        );
    }
}
