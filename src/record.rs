//! A record: one FHIR resource as a mapping makes it, in a compact JSON form.
//!
//! All of a record's text (keys and string values, unescaped) sits in one string, and
//! its structure in one vector of fixed-size nodes whose children are contiguous, so a
//! record costs a few allocations however many members it has (a `serde_json::Value`
//! costs one or two per key, value and object). It is written as JSON bytes exactly as
//! `serde_json` writes the same value (members in order, the same escapes), and read
//! through [`Node`] to index it. [`Record::to_value`] gives a `serde_json::Value` where
//! one is wanted (merging, the API, tests).

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// A JSON document whose root is an object.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    text: String,
    nodes: Vec<Slot>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Null,
    False,
    True,
    Str,
    /// Number, kept as its JSON text.
    Num,
    Obj,
    Arr,
}

/// One node. `a..a+b` is the text of a string or number, or `a` the first child and `b`
/// the number of children of an object or array. An object's children carry their key
/// (`key..key+key_len` in the text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    tag: Tag,
    key: u32,
    key_len: u32,
    a: u32,
    b: u32,
}

impl Slot {
    fn new(tag: Tag, a: u32, b: u32) -> Slot {
        Slot {
            tag,
            key: 0,
            key_len: 0,
            a,
            b,
        }
    }
}

/// Builds a record bottom-up: push the children of a container, then close it; the
/// root object is closed last. One builder makes any number of records, one after the
/// other: each is copied out at its exact size, and the builder's buffers are kept for
/// the next.
pub(crate) struct Builder {
    rec: Record,
    /// Nodes built whose container is not closed yet.
    pending: Vec<Slot>,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            rec: Record {
                text: String::with_capacity(1024),
                nodes: Vec::with_capacity(64),
            },
            pending: Vec::with_capacity(32),
        }
    }

    fn push_text(&mut self, s: &str) -> (u32, u32) {
        let at = self.rec.text.len() as u32;
        self.rec.text.push_str(s);
        (at, s.len() as u32)
    }

    pub(crate) fn string(&mut self, s: &str) {
        let (a, b) = self.push_text(s);
        self.pending.push(Slot::new(Tag::Str, a, b));
    }

    /// A number; text that is not a JSON number is kept as a string. An exponent is
    /// written as `serde_json` writes it (`1E5` as `1e+5`).
    pub(crate) fn number(&mut self, s: &str) {
        let (tag, (a, b)) = if !is_json_number(s) {
            (Tag::Str, self.push_text(s))
        } else if s.bytes().any(|c| c == b'e' || c == b'E') {
            let n = serde_json::Number::from_str(s).map(|n| n.to_string());
            (Tag::Num, self.push_text(n.as_deref().unwrap_or(s)))
        } else {
            (Tag::Num, self.push_text(s))
        };
        self.pending.push(Slot::new(tag, a, b));
    }

    pub(crate) fn boolean(&mut self, v: bool) {
        let tag = if v { Tag::True } else { Tag::False };
        self.pending.push(Slot::new(tag, 0, 0));
    }

    fn null(&mut self) {
        self.pending.push(Slot::new(Tag::Null, 0, 0));
    }

    /// Names the node pushed last (a member of the object being built).
    pub(crate) fn key(&mut self, k: &str) {
        let (at, len) = self.push_text(k);
        if let Some(last) = self.pending.last_mut() {
            last.key = at;
            last.key_len = len;
        }
    }

    /// Where the children of a container about to be built start.
    pub(crate) fn mark(&self) -> usize {
        self.pending.len()
    }

    /// Closes an object or array over the nodes pushed since `mark`; false (and nothing
    /// pushed) when there are none.
    fn close(&mut self, mark: usize, tag: Tag) -> bool {
        let count = self.pending.len() - mark;
        if count == 0 {
            return false;
        }
        let first = self.rec.nodes.len() as u32;
        self.rec.nodes.extend_from_slice(&self.pending[mark..]);
        self.pending.truncate(mark);
        self.pending.push(Slot::new(tag, first, count as u32));
        true
    }

    pub(crate) fn close_object(&mut self, mark: usize) -> bool {
        self.close(mark, Tag::Obj)
    }

    pub(crate) fn close_array(&mut self, mark: usize) -> bool {
        self.close(mark, Tag::Arr)
    }

    /// An object of the members `put` pushes a node for (it returns whether it did);
    /// false (nothing pushed) when it pushed none.
    pub(crate) fn object<'m, T: 'm>(
        &mut self,
        members: impl IntoIterator<Item = &'m (&'m str, T)>,
        put: impl Fn(&T, &mut Builder) -> bool,
    ) -> bool {
        let mark = self.mark();
        for (k, v) in members {
            if put(v, self) {
                self.key(k);
            }
        }
        self.close_object(mark)
    }

    /// An array of the items `put` pushes a node for; false when none.
    pub(crate) fn array<'m, T: 'm>(
        &mut self,
        items: impl IntoIterator<Item = &'m T>,
        put: impl Fn(&T, &mut Builder) -> bool,
    ) -> bool {
        let mark = self.mark();
        for v in items {
            put(v, self);
        }
        self.close_array(mark)
    }

    /// Where a fragment written next starts (see [`Builder::end_fragment`]).
    pub(crate) fn fragment_start(&self) -> FragmentStart {
        FragmentStart {
            mark: self.pending.len(),
            nodes: self.rec.nodes.len() as u32,
            text: self.rec.text.len() as u32,
        }
    }

    /// The object written since `start` (its members pushed and nothing else), as a
    /// fragment to copy into a record with [`Builder::fragment`]; `None` when it has no
    /// members. The fragment's nodes and text stay in this builder until it is cleared.
    pub(crate) fn end_fragment(&mut self, start: FragmentStart) -> Option<Fragment> {
        if !self.close_object(start.mark) {
            return None;
        }
        let root = self.pending.pop()?;
        Some(Fragment {
            nodes: (start.nodes, self.rec.nodes.len() as u32),
            text: (start.text, self.rec.text.len() as u32),
            root,
        })
    }

    /// Pushes fragment `f` of builder `from` as the next node (a copy of its nodes and
    /// text, their offsets moved to where they land).
    pub(crate) fn fragment(&mut self, from: &Builder, f: &Fragment) {
        let moved = self.copy_below(from, f, f.nodes.1);
        self.pending.push(moved(f.root));
    }

    /// Pushes the members of fragment `f` of builder `from` as the next nodes, as if
    /// they had been pushed one by one (the object is opened: more members may follow
    /// before its container is closed).
    pub(crate) fn fragment_members(&mut self, from: &Builder, f: &Fragment) {
        // An object's members are the last nodes written for it.
        let (first, count) = (f.root.a, f.root.b);
        let moved = self.copy_below(from, f, first);
        let members = &from.rec.nodes[first as usize..(first + count) as usize];
        self.pending.extend(members.iter().map(|&n| moved(n)));
    }

    /// The keys of fragment `f`'s members.
    pub(crate) fn fragment_keys<'s>(&'s self, f: &Fragment) -> impl Iterator<Item = &'s str> {
        let (first, count) = (f.root.a as usize, f.root.b as usize);
        self.rec.nodes[first..first + count]
            .iter()
            .map(|n| self.rec.key_of(n))
    }

    /// Copies fragment `f`'s text and its nodes up to `end` (not those after, which the
    /// caller places); gives the move of a node's offsets from `from` to here.
    fn copy_below(&mut self, from: &Builder, f: &Fragment, end: u32) -> impl Fn(Slot) -> Slot {
        let (text_from, node_from) = (f.text.0, f.nodes.0);
        let text_to = self.rec.text.len() as u32;
        let node_to = self.rec.nodes.len() as u32;
        self.rec
            .text
            .push_str(&from.rec.text[f.text.0 as usize..f.text.1 as usize]);
        let moved = move |mut n: Slot| {
            if n.key_len > 0 {
                n.key = n.key - text_from + text_to;
            }
            match n.tag {
                Tag::Str | Tag::Num => n.a = n.a - text_from + text_to,
                Tag::Obj | Tag::Arr => n.a = n.a - node_from + node_to,
                Tag::Null | Tag::False | Tag::True => {}
            }
            n
        };
        self.rec.nodes.extend(
            from.rec.nodes[node_from as usize..end as usize]
                .iter()
                .map(|&n| moved(n)),
        );
        moved
    }

    /// Forgets everything written (fragments included), keeping the buffers.
    pub(crate) fn clear(&mut self) {
        self.rec.text.clear();
        self.rec.nodes.clear();
        self.pending.clear();
    }

    /// The record whose root is the one node left (an object); `None` if that is not
    /// so. The builder is empty again afterwards.
    pub(crate) fn finish(&mut self) -> Option<Record> {
        let ok = self.pending.len() == 1 && self.pending[0].tag == Tag::Obj;
        if ok {
            self.rec.nodes.push(self.pending[0]);
        }
        let record = ok.then(|| Record {
            text: self.rec.text.as_str().into(),
            nodes: self.rec.nodes.as_slice().into(),
        });
        self.clear();
        record
    }
}

/// Where a fragment begins in a [`Builder`].
#[derive(Clone, Copy)]
pub(crate) struct FragmentStart {
    mark: usize,
    nodes: u32,
    text: u32,
}

/// An object written ahead in one [`Builder`] (a data type's value), to be copied into
/// a record built by another where it goes: its descendants' nodes and its text, as
/// ranges of the builder's buffers, and its own node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fragment {
    nodes: (u32, u32),
    text: (u32, u32),
    root: Slot,
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
pub(crate) fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A place in a record: an object, array, string, number, boolean or null.
#[derive(Clone, Copy)]
pub struct Node<'r> {
    rec: &'r Record,
    slot: Slot,
}

impl<'r> Node<'r> {
    fn children(self) -> &'r [Slot] {
        match self.slot.tag {
            Tag::Obj | Tag::Arr => {
                &self.rec.nodes[self.slot.a as usize..(self.slot.a + self.slot.b) as usize]
            }
            _ => &[],
        }
    }

    fn text(self) -> &'r str {
        &self.rec.text[self.slot.a as usize..(self.slot.a + self.slot.b) as usize]
    }

    /// The member `key` of an object.
    pub fn get(self, key: &str) -> Option<Node<'r>> {
        if self.slot.tag != Tag::Obj {
            return None;
        }
        let rec = self.rec;
        // Lengths first: most keys differ in length, and that needs no call to memcmp.
        self.children()
            .iter()
            .find(|s| s.key_len as usize == key.len() && rec.key_of(s) == key)
            .map(|&slot| Node { rec, slot })
    }

    pub fn as_str(self) -> Option<&'r str> {
        (self.slot.tag == Tag::Str).then(|| self.text())
    }

    /// A number's JSON text.
    pub fn as_number(self) -> Option<&'r str> {
        (self.slot.tag == Tag::Num).then(|| self.text())
    }

    pub fn is_object(self) -> bool {
        self.slot.tag == Tag::Obj
    }

    pub fn is_array(self) -> bool {
        self.slot.tag == Tag::Arr
    }

    /// An array's items (nothing for anything else).
    pub fn items(self) -> impl Iterator<Item = Node<'r>> + 'r {
        let rec = self.rec;
        let items = if self.slot.tag == Tag::Arr {
            self.children()
        } else {
            &[]
        };
        items.iter().map(move |&slot| Node { rec, slot })
    }

    /// An object's members, in order (nothing for anything else).
    pub fn members(self) -> impl Iterator<Item = (&'r str, Node<'r>)> + 'r {
        let rec = self.rec;
        let members = if self.slot.tag == Tag::Obj {
            self.children()
        } else {
            &[]
        };
        members
            .iter()
            .map(move |&slot| (rec.key_of(&slot), Node { rec, slot }))
    }

    fn write(self, out: &mut Vec<u8>) {
        match self.slot.tag {
            Tag::Null => out.extend_from_slice(b"null"),
            Tag::False => out.extend_from_slice(b"false"),
            Tag::True => out.extend_from_slice(b"true"),
            Tag::Num => out.extend_from_slice(self.text().as_bytes()),
            Tag::Str => write_string(self.text(), out),
            Tag::Arr => {
                out.push(b'[');
                for (i, item) in self.items().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Tag::Obj => {
                out.push(b'{');
                for (i, (k, v)) in self.members().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(k, out);
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
        }
    }

    fn to_value(self) -> Value {
        match self.slot.tag {
            Tag::Null => Value::Null,
            Tag::False => Value::Bool(false),
            Tag::True => Value::Bool(true),
            Tag::Str => Value::String(self.text().to_string()),
            Tag::Num => serde_json::Number::from_str(self.text())
                .map_or_else(|_| Value::String(self.text().to_string()), Value::Number),
            Tag::Arr => Value::Array(self.items().map(Node::to_value).collect()),
            Tag::Obj => {
                let mut map = serde_json::Map::with_capacity(self.slot.b as usize);
                for (k, v) in self.members() {
                    map.insert(k.to_string(), v.to_value());
                }
                Value::Object(map)
            }
        }
    }
}

/// A JSON string with `serde_json`'s escapes: `\"`, `\\`, the short forms of backspace,
/// tab, line feed, form feed and carriage return, `\u00xx` for the other control
/// characters; everything else as it is.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc = ESCAPE[usize::from(c)];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        start = i + 1;
        if esc == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xF)]);
        } else {
            out.push(b'\\');
            out.push(esc);
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// For each byte: 0 when it is written as it is, else the letter after the backslash
/// (`u` for `\u00xx`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = b'u';
        c += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

impl Record {
    /// The key a member node carries ("" for others).
    fn key_of(&self, s: &Slot) -> &str {
        &self.text[s.key as usize..(s.key + s.key_len) as usize]
    }

    /// The root object.
    pub fn root(&self) -> Node<'_> {
        Node {
            rec: self,
            slot: *self.nodes.last().expect("a record has its root"),
        }
    }

    /// `resourceType`, when it is a string.
    pub fn resource_type(&self) -> Option<&str> {
        self.root().get("resourceType")?.as_str()
    }

    /// `id`, when it is a string.
    pub fn id(&self) -> Option<&str> {
        self.root().get("id")?.as_str()
    }

    /// Appends the record as JSON, byte for byte what `serde_json::to_vec` writes for
    /// [`Record::to_value`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.root().write(out);
    }

    pub fn to_json_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + self.nodes.len() * 6);
        self.write_json(&mut out);
        out
    }

    pub fn to_value(&self) -> Value {
        self.root().to_value()
    }

    /// A record from a JSON object; `None` for anything else.
    pub fn from_value(v: &Value) -> Option<Record> {
        fn put(b: &mut Builder, v: &Value) {
            match v {
                Value::Null => b.null(),
                Value::Bool(x) => b.boolean(*x),
                Value::Number(n) => b.number(&n.to_string()),
                Value::String(s) => b.string(s),
                Value::Array(items) => {
                    let mark = b.mark();
                    items.iter().for_each(|i| put(b, i));
                    if !b.close_array(mark) {
                        b.pending.push(Slot::new(Tag::Arr, 0, 0));
                    }
                }
                Value::Object(map) => {
                    let mark = b.mark();
                    for (k, v) in map {
                        put(b, v);
                        b.key(k);
                    }
                    if !b.close_object(mark) {
                        b.pending.push(Slot::new(Tag::Obj, 0, 0));
                    }
                }
            }
        }
        if !v.is_object() {
            return None;
        }
        let mut b = Builder::new();
        put(&mut b, v);
        b.finish()
    }
}

/// Read access to JSON, the same for a [`Record`]'s nodes and a `serde_json::Value`, so
/// that what indexes a record reads either.
pub trait JsonView<'d>: Copy + 'd {
    /// The member `key` of an object.
    fn get(self, key: &str) -> Option<Self>;
    fn as_str(self) -> Option<&'d str>;
    fn is_object(self) -> bool;
    /// An array's items; nothing for anything else.
    fn items(self) -> impl Iterator<Item = Self> + 'd;
    /// An object's members in order; nothing for anything else.
    fn members(self) -> impl Iterator<Item = (&'d str, Self)> + 'd;

    /// Every string that is the member `key` of an object anywhere in this value
    /// (itself included), in no particular order.
    fn strings_named(self, key: &str, out: &mut Vec<&'d str>) {
        walk_strings_named(self, key, out);
    }
}

/// [`JsonView::strings_named`] by walking the tree.
fn walk_strings_named<'d, J: JsonView<'d>>(v: J, key: &str, out: &mut Vec<&'d str>) {
    for (k, child) in v.members() {
        if k != key {
            child.strings_named(key, out);
        } else if let Some(s) = child.as_str() {
            out.push(s);
        }
    }
    for item in v.items() {
        item.strings_named(key, out);
    }
}

impl<'d> JsonView<'d> for Node<'d> {
    fn get(self, key: &str) -> Option<Self> {
        Node::get(self, key)
    }
    fn as_str(self) -> Option<&'d str> {
        Node::as_str(self)
    }
    fn is_object(self) -> bool {
        Node::is_object(self)
    }
    fn items(self) -> impl Iterator<Item = Self> + 'd {
        Node::items(self)
    }
    fn members(self) -> impl Iterator<Item = (&'d str, Self)> + 'd {
        Node::members(self)
    }

    /// For the whole record, one pass over its nodes (they are all below the root).
    fn strings_named(self, key: &str, out: &mut Vec<&'d str>) {
        let rec = self.rec;
        if rec.nodes.last() != Some(&self.slot) {
            // Below the root: a subtree's nodes are not marked, so walk it.
            return walk_strings_named(self, key, out);
        }
        for &slot in &rec.nodes {
            if slot.tag == Tag::Str
                && slot.key_len as usize == key.len()
                && rec.key_of(&slot) == key
            {
                out.push(Node { rec, slot }.text());
            }
        }
    }
}

impl<'d> JsonView<'d> for &'d Value {
    fn get(self, key: &str) -> Option<Self> {
        Value::get(self, key)
    }
    fn as_str(self) -> Option<&'d str> {
        Value::as_str(self)
    }
    fn is_object(self) -> bool {
        Value::is_object(self)
    }
    fn items(self) -> impl Iterator<Item = Self> + 'd {
        self.as_array().into_iter().flatten()
    }
    fn members(self) -> impl Iterator<Item = (&'d str, Self)> + 'd {
        self.as_object()
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

/// Each record as a `serde_json::Value`.
pub fn to_values(records: &[Record]) -> Vec<Value> {
    records.iter().map(Record::to_value).collect()
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_json_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        // Parsed from text, so that the numbers keep their digits ("5.10").
        let text = r#"{
            "resourceType": "Observation",
            "id": "o-1",
            "valueQuantity": {"value": 5.10, "unit": "mmol/L"},
            "flags": [true, false, null],
            "note": [{"text": "dòng 1\ndòng 2\t\"trích\" \\ \u0001\u001f\u007f/"}],
            "empty": {},
            "none": [],
            "n": [-0.5, 12, 1e5, 3E-2]
        }"#;
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let v = sample();
        let r = Record::from_value(&v).expect("an object");
        assert_eq!(
            String::from_utf8(r.to_json_vec()).ok(),
            serde_json::to_string(&v).ok()
        );
        assert_eq!(r.to_value(), v);
        // Every ASCII character and some beyond, one per string.
        let all: Vec<Value> = (0u32..0x80)
            .chain([0xA0, 0x1EA1, 0x1F600])
            .filter_map(char::from_u32)
            .map(|c| Value::String(format!("a{c}b")))
            .collect();
        let v = json!({ "all": all });
        let r = Record::from_value(&v).expect("an object");
        assert_eq!(
            String::from_utf8(r.to_json_vec()).ok(),
            serde_json::to_string(&v).ok()
        );
    }

    #[test]
    fn reads_members_items_and_text() {
        let r = Record::from_value(&sample()).expect("an object");
        assert_eq!(r.resource_type(), Some("Observation"));
        assert_eq!(r.id(), Some("o-1"));
        let q = r.root().get("valueQuantity").expect("present");
        assert!(q.is_object());
        assert_eq!(q.get("value").and_then(Node::as_number), Some("5.10"));
        assert_eq!(q.get("unit").and_then(Node::as_str), Some("mmol/L"));
        assert!(q.get("value").and_then(Node::as_str).is_none());
        assert!(r.root().get("missing").is_none());
        let flags: Vec<bool> = r
            .root()
            .get("flags")
            .into_iter()
            .flat_map(Node::items)
            .map(|n| n.slot.tag == Tag::True)
            .collect();
        assert_eq!(flags, [true, false, false]);
        let keys: Vec<&str> = r.root().members().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "resourceType",
                "id",
                "valueQuantity",
                "flags",
                "note",
                "empty",
                "none",
                "n"
            ]
        );
        assert!(r.root().get("none").is_some_and(Node::is_array));
        assert_eq!(r.root().get("none").map(|n| n.items().count()), Some(0));
        assert!(Record::from_value(&json!([1])).is_none());
    }

    #[test]
    fn one_builder_makes_records_one_after_the_other() {
        let mut b = Builder::new();
        let one = |b: &mut Builder, id: &str| {
            let mark = b.mark();
            b.string("Patient");
            b.key("resourceType");
            b.string(id);
            b.key("id");
            assert!(b.close_object(mark));
            b.finish().expect("an object")
        };
        let (x, y) = (one(&mut b, "a"), one(&mut b, "bb"));
        assert_eq!(x.to_json_vec(), br#"{"resourceType":"Patient","id":"a"}"#);
        assert_eq!(y.to_json_vec(), br#"{"resourceType":"Patient","id":"bb"}"#);
        // Nothing left over for the next: a bare string is not a record.
        b.string("x");
        assert!(b.finish().is_none());
        assert_eq!(one(&mut b, "c").id(), Some("c"));
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for ok in ["0", "-0", "5.10", "12", "1e5", "3E-2", "-0.5", "7e+1"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "007", ".5", "5.", "1e", "+1", "0x1", "NaN", "1 ", "1.2.3",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
        let mut b = Builder::new();
        b.number("007");
        b.key("a");
        b.number("7.50");
        b.key("b");
        b.number("1E5");
        b.key("c");
        let mark = 0;
        assert!(b.close_object(mark));
        let r = b.finish().expect("an object");
        assert_eq!(r.to_json_vec(), br#"{"a":"007","b":7.50,"c":1e+5}"#);
        assert_eq!(
            serde_json::to_vec(&r.to_value()).ok(),
            Some(r.to_json_vec())
        );
    }
}
