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
/// the leaves, in one vector of nodes that is reused from resource to resource (children
/// are linked, so nothing is allocated per object or array). Object members are found by
/// comparing the mapping's own key strings (no hashing, no key copies); array items are
/// kept in index order. [`Tree::to_record`] writes the record once, members in the
/// order they were first set, leaving out what is empty.
///
/// A rule whose shape is laid out at load writes its records without a tree
/// ([`super::plan`]); the tree builds the others, and any resource in which two paths
/// meet (it merges them, or names the conflict). It is what the plan's output is
/// defined by.
#[derive(Debug)]
pub struct Tree<'a> {
    nodes: Vec<TreeNode<'a>>,
    /// The root's members by the rule's numbering of top-level elements
    /// ([`super::file::SetRule::root`]); `NONE` until set.
    roots: Vec<u32>,
    /// The nodes [`Tree::put_text`] has made are those below this one.
    put_end: u32,
}

#[derive(Debug)]
struct TreeNode<'a> {
    kind: Kind<'a>,
    /// The member name, in an object.
    key: &'a str,
    /// The index, in an array.
    index: u32,
    first: u32,
    last: u32,
    next: u32,
}

#[derive(Debug)]
enum Kind<'a> {
    Empty,
    Leaf(Value<'a>),
    Obj,
    Arr,
}

/// No node (the end of a child list).
const NONE: u32 = u32::MAX;

/// The root object.
const ROOT: u32 = 0;

impl<'a> Tree<'a> {
    pub fn new() -> Tree<'a> {
        let mut t = Tree {
            nodes: Vec::with_capacity(128),
            roots: Vec::new(),
            put_end: 0,
        };
        t.reset();
        t
    }

    /// Empty again: a root object without members.
    pub fn reset(&mut self) {
        self.nodes.clear();
        self.nodes.push(TreeNode::new(Kind::Obj, "", 0));
        self.roots.clear();
        self.put_end = 1;
    }

    /// Empty again, for a resource whose output paths name `roots` distinct top-level
    /// elements (see [`Tree::set_at`]).
    pub fn start(&mut self, roots: usize) {
        self.reset();
        self.roots.resize(roots, NONE);
    }

    /// The root's member `k`, top-level element number `slot` of the rule: found
    /// without a search once set. Before that, only a member the engine put
    /// ([`Tree::put_text`], before any output path) can be there already, and those are
    /// the root's first members.
    fn root_member(&mut self, k: &'a str, slot: usize) -> u32 {
        let known = self.roots.get(slot).copied().unwrap_or(NONE);
        if known != NONE {
            return known;
        }
        let mut c = self.nodes[ROOT as usize].first;
        while c < self.put_end && !same_key(self.nodes[c as usize].key, k) {
            c = self.nodes[c as usize].next;
        }
        let m = if c < self.put_end {
            c
        } else {
            self.append(ROOT, TreeNode::new(Kind::Empty, k, 0))
        };
        if let Some(s) = self.roots.get_mut(slot) {
            *s = m;
        }
        m
    }

    fn at(&mut self, n: u32) -> &mut TreeNode<'a> {
        &mut self.nodes[n as usize]
    }

    /// Appends a child to the end of `parent`'s children.
    fn append(&mut self, parent: u32, node: TreeNode<'a>) -> u32 {
        let id = self.nodes.len() as u32;
        self.nodes.push(node);
        let last = self.at(parent).last;
        if last == NONE {
            self.at(parent).first = id;
        } else {
            self.at(last).next = id;
        }
        self.at(parent).last = id;
        id
    }

    /// A text member of the root (`resourceType`, `id`) or, with `within`, of the root's
    /// object member `within` (`meta.source`), set before any output path.
    pub fn put_text(&mut self, within: Option<&'a str>, key: &'a str, text: &'a str) {
        let parent = match within {
            Some(name) => {
                let p = self.member(ROOT, name);
                if let Kind::Empty = self.at(p).kind {
                    self.at(p).kind = Kind::Obj;
                }
                p
            }
            None => ROOT,
        };
        let leaf = Kind::Leaf(Value::Str(std::borrow::Cow::Borrowed(text)));
        self.append(parent, TreeNode::new(leaf, key, 0));
        self.put_end = self.nodes.len() as u32;
    }

    /// The member `k` of object node `obj`, added (empty) when there is none.
    fn member(&mut self, obj: u32, k: &'a str) -> u32 {
        let mut c = self.nodes[obj as usize].first;
        while c != NONE {
            let n = &self.nodes[c as usize];
            if same_key(n.key, k) {
                return c;
            }
            c = n.next;
        }
        self.append(obj, TreeNode::new(Kind::Empty, k, 0))
    }

    /// Item `i` of array node `arr`, added (empty) in index order when there is none.
    fn item(&mut self, arr: u32, i: u32) -> u32 {
        let mut prev = NONE;
        let mut c = self.nodes[arr as usize].first;
        while c != NONE {
            let n = &self.nodes[c as usize];
            if n.index == i {
                return c;
            }
            if n.index > i {
                break;
            }
            prev = c;
            c = n.next;
        }
        if c == NONE {
            return self.append(arr, TreeNode::new(Kind::Empty, "", i));
        }
        let id = self.nodes.len() as u32;
        let mut node = TreeNode::new(Kind::Empty, "", i);
        node.next = c;
        self.nodes.push(node);
        if prev == NONE {
            self.at(arr).first = id;
        } else {
            self.at(prev).next = id;
        }
        id
    }

    /// Sets `value` at `steps`; a `[*]` step stands for index `star`. Err names the
    /// conflict (a place set twice with different values, a key inside an array, ...).
    #[cfg(test)]
    pub fn set(&mut self, steps: &'a [Step], star: usize, value: Value<'a>) -> Result<(), String> {
        self.set_at(steps, None, star, value)
    }

    /// [`Tree::set`] of a path whose first element is top-level element number `root`
    /// of its rule, on a tree made ready with [`Tree::start`] (`None`: found by name).
    pub fn set_at(
        &mut self,
        steps: &'a [Step],
        root: Option<usize>,
        star: usize,
        value: Value<'a>,
    ) -> Result<(), String> {
        let value = value.expanded();
        let mut at = ROOT;
        for (n, step) in steps.iter().enumerate() {
            if let Kind::Leaf(Value::Obj(_) | Value::List(_)) = self.at(at).kind {
                // Inside a value a function built (an Identifier, a HumanName, ...).
                self.open(at);
            }
            at = match step {
                Step::Key(k) => {
                    match self.at(at).kind {
                        Kind::Empty => self.at(at).kind = Kind::Obj,
                        Kind::Obj => {}
                        _ => return Err(format!("cannot set {k:?} inside a non-object")),
                    }
                    match root {
                        Some(slot) if n == 0 && slot < self.roots.len() => {
                            self.root_member(k, slot)
                        }
                        _ => self.member(at, k),
                    }
                }
                Step::Index(_) | Step::All => {
                    let i = match step {
                        Step::Index(i) => *i,
                        _ => star,
                    };
                    match self.at(at).kind {
                        Kind::Empty => self.at(at).kind = Kind::Arr,
                        Kind::Arr => {}
                        _ => return Err(format!("cannot index [{i}] a non-array")),
                    }
                    self.item(at, i as u32)
                }
            };
        }
        let node = self.at(at);
        match &node.kind {
            Kind::Empty => {
                node.kind = Kind::Leaf(value);
                Ok(())
            }
            // The same value again is no conflict (compared as it goes out).
            Kind::Leaf(old) if *old == value || old.clone().compacted() == value.compacted() => {
                Ok(())
            }
            _ => Err("set twice".to_string()),
        }
    }

    /// A built object or list opened one level, so a path can set inside it. It is
    /// compacted first (absent and empty items dropped, as they are when it goes out),
    /// so that `[i]` counts only what it holds.
    fn open(&mut self, at: u32) {
        let Kind::Leaf(v) = std::mem::replace(&mut self.at(at).kind, Kind::Empty) else {
            return;
        };
        match v.compacted() {
            Value::Obj(members) => {
                self.at(at).kind = Kind::Obj;
                for (k, v) in members {
                    self.append(at, TreeNode::new(Kind::Leaf(v), k, 0));
                }
            }
            Value::List(items) => {
                self.at(at).kind = Kind::Arr;
                for (i, v) in items.into_iter().enumerate() {
                    self.append(at, TreeNode::new(Kind::Leaf(v), "", i as u32));
                }
            }
            Value::Absent => {}
            other => self.at(at).kind = Kind::Leaf(other),
        }
    }

    /// The record, without nulls in arrays and without empty objects, arrays and
    /// strings; `None` when nothing is left.
    pub fn to_record(&self, b: &mut Builder) -> Option<Record> {
        self.emit(ROOT, b);
        b.finish()
    }

    /// Pushes node `n` onto `b` when it holds anything; true when it did.
    fn emit(&self, n: u32, b: &mut Builder) -> bool {
        let node = &self.nodes[n as usize];
        let container = |b: &mut Builder, keyed: bool| {
            let mark = b.mark();
            let mut c = node.first;
            while c != NONE {
                let child = &self.nodes[c as usize];
                if self.emit(c, b) && keyed {
                    b.key(child.key);
                }
                c = child.next;
            }
            mark
        };
        match &node.kind {
            Kind::Empty => false,
            Kind::Leaf(v) => emit_value(v, b),
            Kind::Obj => {
                let mark = container(b, true);
                b.close_object(mark)
            }
            Kind::Arr => {
                let mark = container(b, false);
                b.close_array(mark)
            }
        }
    }
}

impl<'a> TreeNode<'a> {
    fn new(kind: Kind<'a>, key: &'a str, index: u32) -> TreeNode<'a> {
        TreeNode {
            kind,
            key,
            index,
            first: NONE,
            last: NONE,
            next: NONE,
        }
    }
}

pub(super) fn emit_value(v: &Value<'_>, b: &mut Builder) -> bool {
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
        Value::Ref("") => false,
        // Copied from where it was written by the plan's walk (`plan::put`); nothing
        // else gets one.
        Value::Frag(_) => false,
        Value::Ref(r) => {
            let mark = b.mark();
            b.string(r);
            b.key("reference");
            b.close_object(mark)
        }
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
        let mut root = Tree::new();
        root.put_text(None, "resourceType", "Patient");
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
        let out = root.to_record(&mut Builder::new()).map(|r| r.to_value());
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

    #[test]
    fn members_found_by_their_rules_numbering_come_out_as_members_found_by_name() {
        let keys = [
            "name[0].family",
            "meta.profile[0]",
            "gender",
            "name[0].given[0]",
            "identifier[*].value",
            "gender",
        ];
        // Top-level elements numbered in the order they first appear, as a rule does.
        let slots = [0, 1, 2, 0, 3, 2];
        let paths: Vec<Vec<Step>> = keys
            .iter()
            .map(|s| parse_out_path(s).unwrap_or_default())
            .collect();
        let s = |t: &'static str| Value::Str(std::borrow::Cow::Borrowed(t));
        let values = [
            s("Lê"),
            s("urn:p"),
            s("female"),
            s("Thị"),
            s("x"),
            s("male"),
        ];
        let build = |numbered: bool| {
            let mut tree = Tree::new();
            tree.start(4);
            tree.put_text(None, "resourceType", "Patient");
            tree.put_text(Some("meta"), "source", "urn:s");
            let outcomes: Vec<Result<(), String>> = paths
                .iter()
                .zip(slots)
                .zip(values.clone())
                .map(|((p, slot), v)| tree.set_at(p, numbered.then_some(slot), 0, v))
                .collect();
            let record = tree.to_record(&mut Builder::new()).map(|r| r.to_json_vec());
            (outcomes, record)
        };
        let (by_name, by_number) = (build(false), build(true));
        assert_eq!(by_number, by_name);
        // The engine's `meta` is the one the path sets into, and a second value for one
        // element is still a conflict.
        let (outcomes, record) = by_number;
        assert_eq!(outcomes[5], Err("set twice".into()));
        let out: Option<serde_json::Value> = record.and_then(|r| serde_json::from_slice(&r).ok());
        assert_eq!(
            out,
            Some(json!({
                "resourceType": "Patient",
                "meta": {"source": "urn:s", "profile": ["urn:p"]},
                "name": [{"family": "Lê", "given": ["Thị"]}],
                "gender": "female",
                "identifier": [{"value": "x"}]
            }))
        );
    }

    #[test]
    fn array_items_come_out_in_index_order_whatever_order_they_were_set_in() {
        let path = |p: &str| parse_out_path(p).unwrap_or_default();
        let (a3, a1, star, a1x, whole) = (
            path("a[3]"),
            path("a[1]"),
            path("a[*]"),
            path("a[1].x"),
            path("a"),
        );
        let s = |t: &'static str| Value::Str(std::borrow::Cow::Borrowed(t));
        let mut tree = Tree::new();
        assert!(tree.set(&a3, 0, s("three")).is_ok());
        assert!(tree.set(&a1, 0, s("one")).is_ok());
        assert!(tree.set(&star, 0, s("zero")).is_ok());
        assert!(tree.set(&star, 2, s("two")).is_ok());
        // A leaf cannot take a member; a container cannot take a value.
        assert_eq!(
            tree.set(&a1x, 0, s("x")),
            Err("cannot set \"x\" inside a non-object".into())
        );
        assert_eq!(tree.set(&whole, 0, s("a")), Err("set twice".into()));
        let out = tree.to_record(&mut Builder::new()).map(|r| r.to_value());
        assert_eq!(out, Some(json!({"a": ["zero", "one", "two", "three"]})));
        // Reset, the tree is empty again and takes another resource.
        tree.reset();
        tree.put_text(None, "resourceType", "Basic");
        tree.put_text(Some("meta"), "source", "urn:x");
        let list = Value::List(vec![Value::Absent, s("b"), s("c")]);
        assert!(tree.set(&whole, 0, list).is_ok());
        // Inside a built list, [1] counts only what the list holds.
        assert_eq!(tree.set(&a1, 0, s("c")), Ok(()));
        assert_eq!(tree.set(&a1, 0, s("d")), Err("set twice".into()));
        let out = tree.to_record(&mut Builder::new()).map(|r| r.to_value());
        assert_eq!(
            out,
            Some(json!({"resourceType": "Basic", "meta": {"source": "urn:x"}, "a": ["b", "c"]}))
        );
    }
}
