//! A rule's output shape, worked out once at load.
//!
//! The shape of every resource a rule makes is known before any message comes: which
//! objects and arrays its output paths name, and where each path's value goes. A run
//! then only evaluates each path's value and writes the record by walking that shape,
//! without building a tree of its own per resource.
//!
//! The record is the one [`super::output::Tree`] gives from the same values, byte for
//! byte: object members in the order they would first have been set (the order of the
//! first set rule that puts anything below each), array items in index order, `[*]`
//! item `i` from item `i` of each list, a value a later path sets inside (`name[*]`,
//! then `name[0].text`) opened, and nothing empty. Where two paths meet in a way this
//! walk does not settle (the same place set by two, a value that is not an object set
//! inside), it says so ([`Meet`]) and the run builds that resource in the tree, which
//! either merges them or gives the mapping error. A rule whose paths cannot be laid
//! out at all (an element both object and array, the same path twice, a path inside
//! `meta`, which the engine fills) has no plan and always uses the tree.

use super::eval::Value;
use super::output::{emit_value, Step};
use crate::record::{Builder, Fragment};

#[derive(Clone, Debug)]
pub struct Plan {
    /// Node 0 is the resource (the root object).
    nodes: Vec<Node>,
    /// More than 64 set rules: which are present is a list, not the bits of a word.
    wide: bool,
}

#[derive(Clone, Debug)]
struct Node {
    /// The member name, in an object.
    key: String,
    /// The index, as a fixed-index item of an array.
    index: usize,
    /// The set rule whose value goes here, if one does.
    value: Option<u32>,
    kind: Kind,
    /// The set rules whose paths run through or end at this node, ascending.
    sets: Vec<u32>,
    /// The same as bits (set rule `s` is bit `s`), when the plan is not wide: the
    /// first present one below a node is one instruction.
    mask: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// No path goes further.
    Leaf,
    Obj(Vec<u32>),
    /// Items at fixed indices, in index order, and the shape of every `[*]` item.
    Arr {
        star: Option<u32>,
        fixed: Vec<u32>,
    },
}

/// Two paths meet in a resource in a way the plan does not write: the tree does.
#[derive(Debug, PartialEq)]
pub struct Meet;

/// What a run keeps from resource to resource while writing them (so that writing one
/// allocates nothing once the first few are written).
#[derive(Default)]
pub struct Scratch {
    order: Vec<(u32, u32)>,
    /// Of a wide plan (see [`Emit::bits`]).
    present: Vec<bool>,
}

/// The values being written, whether each puts anything into the resource, and room
/// for ordering members.
struct Emit<'v, 'a> {
    values: &'v [Value<'a>],
    /// Which values put anything into the resource: bit `s` for set rule `s`, or, in
    /// a wide plan, `present[s]`.
    bits: u64,
    present: &'v [bool],
    order: &'v mut Vec<(u32, u32)>,
    ahead: Ahead<'v>,
}

/// Objects written ahead ([`Value::Frag`] `n` is `fragments[n]` of `side`).
#[derive(Clone, Copy)]
pub struct Ahead<'v> {
    pub side: &'v Builder,
    pub fragments: &'v [Fragment],
}

impl<'v> Ahead<'v> {
    fn fragment(&self, n: u32) -> Option<&'v Fragment> {
        self.fragments.get(n as usize)
    }
}

/// Pushes value `v` (see [`emit_value`]), copying the objects written ahead; true
/// when it pushed a node.
fn put(v: &Value<'_>, b: &mut Builder, ahead: Ahead<'_>) -> bool {
    match v {
        Value::Frag(n) => match ahead.fragment(*n) {
            Some(f) => {
                b.fragment(ahead.side, f);
                true
            }
            None => false,
        },
        Value::List(items) if v.written_ahead() => {
            let mark = b.mark();
            for item in items {
                put(item, b, ahead);
            }
            b.close_array(mark)
        }
        v => emit_value(v, b),
    }
}

impl Plan {
    /// The plan of the rule whose set rules have these output paths, in order; `None`
    /// when they cannot be laid out (see the module's text).
    pub fn new<'s>(paths: impl IntoIterator<Item = &'s [Step]>) -> Option<Plan> {
        let mut plan = Plan {
            nodes: vec![Node::new(String::new(), 0, Kind::Obj(Vec::new()))],
            wide: false,
        };
        for (s, steps) in paths.into_iter().enumerate() {
            let s = u32::try_from(s).ok()?;
            if matches!(steps.first(), Some(Step::Key(k)) if k == "meta") {
                return None;
            }
            let mut at = 0;
            for step in steps {
                plan.nodes[at].sets.push(s);
                at = plan.child(at, step)?;
            }
            let node = &mut plan.nodes[at];
            // A node with a value may also have members (the value is opened at run
            // time); a node set twice, or set where array items are indexed, means no
            // plan.
            if node.value.is_some() || matches!(node.kind, Kind::Arr { .. }) {
                return None;
            }
            node.value = Some(s);
            node.sets.push(s);
        }
        plan.wide = plan.nodes[0].sets.last().is_some_and(|&s| s >= 64);
        if !plan.wide {
            for node in &mut plan.nodes {
                node.mask = node.sets.iter().fold(0, |m, &s| m | 1 << s);
            }
        }
        Some(plan)
    }

    /// The node `step` leads to from `at`, made when new; `None` when `at` is not what
    /// the step needs.
    fn child(&mut self, at: usize, step: &Step) -> Option<usize> {
        let next = self.nodes.len() as u32;
        let has_value = self.nodes[at].value.is_some();
        let mut kind = std::mem::replace(&mut self.nodes[at].kind, Kind::Leaf);
        let found = match (&mut kind, step) {
            (kind @ Kind::Leaf, Step::Key(_)) => {
                *kind = Kind::Obj(vec![next]);
                None
            }
            (kind @ Kind::Leaf, Step::Index(_)) if !has_value => {
                *kind = Kind::Arr {
                    star: None,
                    fixed: vec![next],
                };
                None
            }
            (kind @ Kind::Leaf, Step::All) if !has_value => {
                *kind = Kind::Arr {
                    star: Some(next),
                    fixed: Vec::new(),
                };
                None
            }
            (Kind::Obj(children), Step::Key(k)) => {
                match children.iter().find(|&&c| self.nodes[c as usize].key == *k) {
                    Some(&c) => Some(c),
                    None => {
                        children.push(next);
                        None
                    }
                }
            }
            (Kind::Arr { star, .. }, Step::All) => match star {
                Some(c) => Some(*c),
                None => {
                    *star = Some(next);
                    None
                }
            },
            (Kind::Arr { fixed, .. }, Step::Index(i)) => {
                let pos = fixed.partition_point(|&c| self.nodes[c as usize].index < *i);
                match fixed.get(pos) {
                    Some(&c) if self.nodes[c as usize].index == *i => Some(c),
                    _ => {
                        fixed.insert(pos, next);
                        None
                    }
                }
            }
            _ => {
                self.nodes[at].kind = kind;
                return None;
            }
        };
        self.nodes[at].kind = kind;
        if let Some(c) = found {
            return Some(c as usize);
        }
        let (key, index) = match step {
            Step::Key(k) => (k.clone(), 0),
            Step::Index(i) => (String::new(), *i),
            Step::All => (String::new(), 0),
        };
        self.nodes.push(Node::new(key, index, Kind::Leaf));
        Some(next as usize)
    }

    /// Pushes the resource's members onto `b`, each keyed, from the values of the
    /// rule's set rules (`values[n]` of rule `n`); the caller has pushed the members
    /// the engine sets, and closes the object. On `Err`, what was pushed is to be
    /// thrown away.
    pub fn members(
        &self,
        values: &[Value<'_>],
        ahead: Ahead<'_>,
        scratch: &mut Scratch,
        b: &mut Builder,
    ) -> Result<(), Meet> {
        scratch.present.clear();
        let mut bits = 0;
        if self.wide {
            scratch.present.extend(values.iter().map(Value::present));
        } else {
            for (s, v) in values.iter().enumerate() {
                bits |= u64::from(v.present()) << s;
            }
        }
        scratch.order.clear();
        let mut e = Emit {
            values,
            bits,
            present: &scratch.present,
            order: &mut scratch.order,
            ahead,
        };
        self.object(0, None, &mut e, b)
    }

    /// The set rule whose value goes to node `n`, and that value at this place: the
    /// whole value, or below a `[*]` (`star`) the value's item; `None` when nothing
    /// would be set.
    fn own<'v, 'a>(
        &self,
        n: u32,
        star: Option<usize>,
        e: &Emit<'v, 'a>,
    ) -> Option<(u32, &'v Value<'a>)> {
        let s = self.nodes[n as usize].value?;
        let v = match star {
            None => self.present(s, e).then_some(&e.values[s as usize]),
            Some(i) => item(&e.values[s as usize], i),
        };
        v.map(|v| (s, v))
    }

    /// Whether set rule `s`'s value puts anything into the resource.
    fn present(&self, s: u32, e: &Emit<'_, '_>) -> bool {
        if self.wide {
            e.present[s as usize]
        } else {
            e.bits >> s & 1 == 1
        }
    }

    /// The first set rule that puts anything at or below node `n` at this place.
    fn first(&self, n: u32, star: Option<usize>, e: &Emit<'_, '_>) -> Option<u32> {
        let node = &self.nodes[n as usize];
        if self.wide {
            return node.sets.iter().copied().find(|&s| match star {
                None => e.present[s as usize],
                Some(i) => item(&e.values[s as usize], i).is_some(),
            });
        }
        // Only a present value has a present item.
        let mut m = node.mask & e.bits;
        while m != 0 {
            let s = m.trailing_zeros();
            match star {
                None => return Some(s),
                Some(i) if item(&e.values[s as usize], i).is_some() => return Some(s),
                Some(_) => m &= m - 1,
            }
        }
        None
    }

    /// Pushes node `n` when it holds anything; true when it did.
    fn emit(
        &self,
        n: u32,
        star: Option<usize>,
        e: &mut Emit<'_, '_>,
        b: &mut Builder,
    ) -> Result<bool, Meet> {
        let own = self.own(n, star, e);
        match &self.nodes[n as usize].kind {
            Kind::Leaf => Ok(own.is_some_and(|(_, v)| put(v, b, e.ahead))),
            Kind::Obj(children) => match own {
                None => {
                    let mark = b.mark();
                    self.object(n, star, e, b)?;
                    Ok(b.close_object(mark))
                }
                Some((s, v)) => {
                    let below = children
                        .iter()
                        .filter_map(|&c| self.first(c, star, e))
                        .min();
                    match below {
                        None => Ok(put(v, b, e.ahead)),
                        Some(below) => self.opened(v, s, below, n, star, e, b),
                    }
                }
            },
            Kind::Arr { star: each, fixed } => {
                let items = each.map_or(0, |c| {
                    self.nodes[c as usize]
                        .sets
                        .iter()
                        .map(|&s| match &e.values[s as usize] {
                            Value::List(items) => items.len(),
                            _ => usize::from(self.present(s, e)),
                        })
                        .max()
                        .unwrap_or(0)
                });
                let mark = b.mark();
                let mut f = 0;
                if let Some(c) = *each {
                    for i in 0..items {
                        while let Some(&c) = fixed.get(f).filter(|&&c| self.index(c) < i) {
                            self.emit(c, star, e, b)?;
                            f += 1;
                        }
                        match fixed.get(f).filter(|&&c| self.index(c) == i) {
                            Some(&at) => {
                                f += 1;
                                self.same_index(c, i, at, star, e, b)?;
                            }
                            None => {
                                self.emit(c, Some(i), e, b)?;
                            }
                        }
                    }
                }
                for &c in &fixed[f..] {
                    self.emit(c, star, e, b)?;
                }
                Ok(b.close_array(mark))
            }
        }
    }

    fn index(&self, n: u32) -> usize {
        self.nodes[n as usize].index
    }

    /// `[*]` item `i` (node `each`) and the fixed item of the same index (node `at`):
    /// whichever holds anything, or, when both do, the `[*]` item's object opened with
    /// the fixed item's members after its own.
    fn same_index(
        &self,
        each: u32,
        i: usize,
        at: u32,
        star: Option<usize>,
        e: &mut Emit<'_, '_>,
        b: &mut Builder,
    ) -> Result<bool, Meet> {
        let Some(below) = self.first(at, star, e) else {
            return self.emit(each, Some(i), e, b);
        };
        if self.first(each, Some(i), e).is_none() {
            return self.emit(at, star, e, b);
        }
        if self.own(at, star, e).is_some() {
            // Two values for one item.
            return Err(Meet);
        }
        match (self.own(each, Some(i), e), &self.nodes[each as usize].kind) {
            (Some((s, v)), Kind::Leaf) => self.opened(v, s, below, at, star, e, b),
            _ => Err(Meet),
        }
    }

    /// A built object (`v`, set by set rule `s`) with members object node `n` adds
    /// (the first of them set by set rule `below`): the tree opens the value when a
    /// path first goes inside it, and appends the members after the value's own.
    #[allow(clippy::too_many_arguments)]
    fn opened(
        &self,
        v: &Value<'_>,
        s: u32,
        below: u32,
        n: u32,
        star: Option<usize>,
        e: &mut Emit<'_, '_>,
        b: &mut Builder,
    ) -> Result<bool, Meet> {
        // The tree compacts the value as it opens it: a value the data type functions
        // built is compact already; another goes to the tree.
        if s >= below || !v.is_compact() {
            return Err(Meet);
        }
        let one;
        let (members, fragment) = match v {
            Value::Obj(members) => (members.as_slice(), None),
            Value::Ref(r) => {
                one = [("reference", Value::Str(std::borrow::Cow::Borrowed(*r)))];
                (&one[..], None)
            }
            Value::Frag(f) => (&[][..], Some(e.ahead.fragment(*f).ok_or(Meet)?)),
            _ => return Err(Meet),
        };
        let Kind::Obj(children) = &self.nodes[n as usize].kind else {
            return Err(Meet);
        };
        for &c in children {
            let key = self.nodes[c as usize].key.as_str();
            let taken = match fragment {
                Some(f) => e.ahead.side.fragment_keys(f).any(|k| k == key),
                None => members.iter().any(|(k, m)| *k == key && m.present()),
            };
            if taken && self.first(c, star, e).is_some() {
                return Err(Meet);
            }
        }
        let mark = b.mark();
        if let Some(f) = fragment {
            b.fragment_members(e.ahead.side, f);
        }
        for (k, m) in members {
            if emit_value(m, b) {
                b.key(k);
            }
        }
        self.object(n, star, e, b)?;
        Ok(b.close_object(mark))
    }

    /// Pushes the members of object node `n`, keyed, in the order of the first set
    /// rule that puts anything below each (members nothing is put below are left out).
    fn object(
        &self,
        n: u32,
        star: Option<usize>,
        e: &mut Emit<'_, '_>,
        b: &mut Builder,
    ) -> Result<(), Meet> {
        let Kind::Obj(children) = &self.nodes[n as usize].kind else {
            return Ok(());
        };
        let start = e.order.len();
        for &c in children {
            if let Some(first) = self.first(c, star, e) {
                e.order.push((first, c));
            }
        }
        // Members are listed in the order their paths first appear, which is nearly
        // always the order they are first set in.
        if !e.order[start..].is_sorted() {
            e.order[start..].sort_unstable();
        }
        for j in start..e.order.len() {
            let c = e.order[j].1;
            if self.emit(c, star, e, b)? {
                b.key(&self.nodes[c as usize].key);
            }
        }
        e.order.truncate(start);
        Ok(())
    }
}

impl Node {
    fn new(key: String, index: usize, kind: Kind) -> Node {
        Node {
            key,
            index,
            value: None,
            kind,
            sets: Vec::new(),
            mask: 0,
        }
    }
}

/// Item `i` of a value set at a `[*]` path: of a list, its item `i`; a single value
/// is item 0. `None` when that item puts nothing into the resource.
fn item<'v, 'a>(v: &'v Value<'a>, i: usize) -> Option<&'v Value<'a>> {
    match v {
        Value::List(items) => items.get(i).filter(|v| v.present()),
        v => (i == 0 && v.present()).then_some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::output::{parse_out_path, Tree};
    use std::borrow::Cow;

    /// What the plan writes from these paths and values (`None`: no plan; `Err`: the
    /// tree writes it), and what the tree makes of them (`Err` for a mapping error).
    type Both = (Option<Result<String, Meet>>, Result<String, String>);

    fn both(paths: &[&str], values: &[Value<'static>]) -> Both {
        let steps: Vec<Vec<Step>> = paths.iter().map(|p| parse_out_path(p).unwrap()).collect();
        let plan = Plan::new(steps.iter().map(Vec::as_slice));
        let mut tree = Tree::new();
        tree.put_text(None, "resourceType", "Observation");
        tree.put_text(None, "id", "x");
        let mut b = Builder::new();
        let from_tree = steps
            .iter()
            .zip(values)
            .try_for_each(|(s, v)| super::super::set_value_at(&mut tree, s, None, v.clone()))
            .map(|()| {
                let r = tree.to_record(&mut b).unwrap();
                String::from_utf8(r.to_json_vec()).unwrap()
            });
        let from_plan = plan.map(|plan| {
            let mark = b.mark();
            b.string("Observation");
            b.key("resourceType");
            b.string("x");
            b.key("id");
            let side = Builder::new();
            let ahead = Ahead {
                side: &side,
                fragments: &[],
            };
            let r = plan.members(values, ahead, &mut Scratch::default(), &mut b);
            b.close_object(mark);
            let record = b.finish().unwrap();
            r.map(|()| String::from_utf8(record.to_json_vec()).unwrap())
        });
        (from_plan, from_tree)
    }

    fn s(t: &'static str) -> Value<'static> {
        if t.is_empty() {
            Value::Absent
        } else {
            Value::Str(Cow::Borrowed(t))
        }
    }

    fn list(items: &[&'static str]) -> Value<'static> {
        Value::List(items.iter().map(|t| s(t)).collect())
    }

    fn obj(members: &[(&'static str, &'static str)]) -> Value<'static> {
        Value::Obj(members.iter().map(|(k, v)| (*k, s(v))).collect())
    }

    fn objs(items: &[&[(&'static str, &'static str)]]) -> Value<'static> {
        Value::List(items.iter().map(|m| obj(m)).collect())
    }

    #[test]
    fn paths_that_cannot_be_laid_out_have_no_plan() {
        let none = |paths: &[&str]| {
            let steps: Vec<Vec<Step>> = paths.iter().map(|p| parse_out_path(p).unwrap()).collect();
            Plan::new(steps.iter().map(Vec::as_slice)).is_none()
        };
        assert!(none(&["a.b", "a[0]"]));
        assert!(none(&["a[0]", "a.b"]));
        assert!(none(&["a[*]", "a.b"]));
        assert!(none(&["status", "status"]));
        assert!(none(&["a[*]", "a[*]"]));
        assert!(none(&["a", "a[0]"]));
        assert!(none(&["a", "a[*]"]));
        assert!(none(&["a[0]", "a"]));
        assert!(none(&["meta.tag[0].code"]));
        assert!(!none(&["a[0].x", "a[1].x"]));
        assert!(!none(&["code", "code.text"]));
        assert!(!none(&["code.text", "code"]));
        assert!(!none(&[
            "name[*]",
            "name[0].text",
            "name[9].given[0]",
            "name[10]"
        ]));
        assert!(!none(&["a[*].x", "a[*].y", "b.c[2]", "b.c[0]", "b.d"]));
    }

    /// Each case: paths, values, and whether the plan writes it itself (else the paths
    /// meet and the tree does).
    #[test]
    fn writes_what_the_tree_writes() {
        let cases: Vec<(&[&str], Vec<Value<'static>>, bool)> = vec![
            (&["status", "code.text"], vec![s("final"), s("CBC")], true),
            // A member whose first path gives nothing comes where its first value is.
            (&["a.x", "b", "a.y"], vec![s(""), s("1"), s("2")], true),
            (&["a.x", "b", "a.y"], vec![s("0"), s("1"), s("2")], true),
            (&["a.x", "b", "a.y"], vec![s(""), s("1"), s("")], true),
            // Fixed indices come out in index order, not in the order they are set.
            (
                &["c[2].v", "c[0].v", "c[1].v"],
                vec![s("two"), s("zero"), s("")],
                true,
            ),
            // `[*]` items stay aligned by index; absent items leave no gap.
            (
                &["i[*].coding[0].system", "i[*].coding[0].code"],
                vec![list(&["s0", "", "s2"]), list(&["c0", "c1", ""])],
                true,
            ),
            (
                &["i[*].x", "i[*].y"],
                vec![list(&["", "x1"]), list(&["y0", "y1"])],
                true,
            ),
            // Within a `[*]` item, members in the order first set for that item.
            (
                &["i[*].x", "i[*].y"],
                vec![list(&["", "x1"]), list(&["y0", ""])],
                true,
            ),
            // A single value at `[*]` is item 0.
            (&["given[*]", "family"], vec![s("An"), s("Nguyễn")], true),
            (&["given[*]"], vec![list(&["", ""])], true),
            (
                &["n[0].given[*]", "n[0].family"],
                vec![list(&["Văn", "An"]), s("Lê")],
                true,
            ),
            // `[*]` items and fixed items in one array, by index.
            (
                &["ident[*]", "ident[2]", "ident[0].value"],
                vec![list(&["a", "", "", "d"]), s("c"), s("")],
                true,
            ),
            (
                &["ident[*]", "ident[1]"],
                vec![list(&["a", "b"]), s("c")],
                false,
            ),
            (
                &["ident[*]", "ident[1]"],
                vec![list(&["a", ""]), s("c")],
                true,
            ),
            (
                &["ident[1]", "ident[*]"],
                vec![s("c"), list(&["a", "b", "x"])],
                false,
            ),
            // A built value opened by a later path: its members, then the path's.
            (
                &["name[*]", "name[0].text", "name[9].use", "name[10]"],
                vec![
                    objs(&[&[("family", "Lê")], &[("family", "Trần")]]),
                    s("Lê Văn"),
                    s("nickname"),
                    obj(&[("family", "alias")]),
                ],
                true,
            ),
            (
                &["name[*]", "name[0].text"],
                vec![objs(&[&[("x", "")], &[("family", "Trần")]]), s("T")],
                true,
            ),
            (
                &["code", "code.text"],
                vec![obj(&[("coding", "c")]), s("t")],
                true,
            ),
            // A value the tree would compact as it opens it goes to the tree.
            (
                &["code", "code.text"],
                vec![obj(&[("coding", "c"), ("x", "")]), s("t")],
                false,
            ),
            (
                &["code", "code.text"],
                vec![
                    Value::Obj(vec![("x", Value::Num(Cow::Borrowed("")))]),
                    s("t"),
                ],
                false,
            ),
            (
                &["code", "code.text"],
                vec![obj(&[("text", "c")]), s("t")],
                false,
            ),
            (
                &["code", "code.text"],
                vec![obj(&[("text", "t")]), s("t")],
                false,
            ),
            (&["code", "code.text"], vec![s("plain"), s("t")], false),
            (&["code", "code.text"], vec![s("plain"), s("")], true),
            (
                &["code.text", "code"],
                vec![s("t"), obj(&[("coding", "c")])],
                false,
            ),
            (
                &["code.text", "code"],
                vec![s(""), obj(&[("coding", "c")])],
                true,
            ),
            // Lists and built objects at a plain path go out as they are.
            (
                &["note", "code"],
                vec![
                    list(&["a", "", "b"]),
                    Value::Obj(vec![("text", s("")), ("coding", list(&["", ""]))]),
                ],
                true,
            ),
            (
                &["value", "flag", "n"],
                vec![
                    Value::Num(Cow::Borrowed("5.10")),
                    Value::Bool(false),
                    Value::Num(Cow::Borrowed("1E5")),
                ],
                true,
            ),
            (&["x.y.z"], vec![Value::Absent], true),
        ];
        for (paths, values, by_plan) in &cases {
            let (plan, tree) = both(paths, values);
            match plan {
                Some(Ok(plan)) => {
                    assert!(by_plan, "{paths:?} {values:?}: expected the paths to meet");
                    assert_eq!(Ok(plan), tree, "{paths:?} {values:?}");
                }
                Some(Err(Meet)) => assert!(!by_plan, "{paths:?} {values:?}: met"),
                None => panic!("{paths:?}: no plan"),
            }
        }
    }

    /// Every combination of present and absent values over paths that share objects,
    /// fixed items, `[*]` items and an opened value, in several orders: where the plan
    /// writes a record, it is the tree's; where the tree gives an error, the plan hands
    /// the resource to it.
    #[test]
    fn agrees_with_the_tree_on_every_presence_pattern() {
        let paths = [
            "a.x",
            "b[1].v",
            "c[*].p",
            "a.y.z",
            "b[0].v",
            "d",
            "c[*].q.r",
            "b[1].w",
            "n[*]",
            "n[0].text",
            "n[3]",
        ];
        let present = [
            s("ax"),
            s("b1v"),
            list(&["p0", "", "p2"]),
            s("ayz"),
            s("b0v"),
            Value::Num(Cow::Borrowed("4")),
            list(&["", "q1", "q2", "q3"]),
            s("b1w"),
            objs(&[&[("family", "Lê")], &[], &[("given", "An")], &[("x", "y")]]),
            s("Lê An"),
            obj(&[("family", "alias")]),
        ];
        let orders: [[usize; 11]; 3] = [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
            [3, 0, 8, 6, 2, 5, 1, 10, 7, 9, 4],
        ];
        let (mut written, mut met) = (0, 0);
        for order in &orders {
            let ps: Vec<&str> = order.iter().map(|&i| paths[i]).collect();
            for mask in 0u32..1 << paths.len() {
                let values: Vec<Value<'static>> = order
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| {
                        if mask & (1 << k) != 0 {
                            present[i].clone()
                        } else {
                            Value::Absent
                        }
                    })
                    .collect();
                match both(&ps, &values) {
                    (Some(Ok(plan)), tree) => {
                        assert_eq!(Ok(plan), tree, "{ps:?} mask {mask:b}");
                        written += 1;
                    }
                    (Some(Err(Meet)), _) => met += 1,
                    (None, _) => panic!("{ps:?}: no plan"),
                }
            }
        }
        // The plan writes most patterns itself; `n[*]` item 3 and `n[3]` both set
        // (a quarter of the patterns) meet, and so does `n[0].text` before `n[*]`.
        assert!(written > met, "{written} written, {met} met");
        assert!(met > 0);
    }

    /// A rule of more than 64 set rules keeps which are present in a list, not in a
    /// word's bits: the same paths after 60 others write what the tree does, on every
    /// presence pattern of the paths that share objects (and half the others present).
    #[test]
    fn a_wide_plan_agrees_with_the_tree() {
        let shared = ["a.x", "c[*].p", "a.y.z", "n[*]", "n[0].text", "c[*].q"];
        let values = [
            s("ax"),
            list(&["p0", "", "p2"]),
            s("ayz"),
            objs(&[&[("family", "Lê")], &[("given", "An")]]),
            s("Lê An"),
            list(&["", "q1"]),
        ];
        let pads: Vec<String> = (0..60).map(|i| format!("pad{i}.v")).collect();
        let mut paths: Vec<&str> = pads.iter().map(String::as_str).collect();
        paths.extend(shared);
        let steps: Vec<Vec<Step>> = paths.iter().map(|p| parse_out_path(p).unwrap()).collect();
        assert!(Plan::new(steps.iter().map(Vec::as_slice)).unwrap().wide);
        let mut written = 0;
        for mask in 0u32..1 << shared.len() {
            let mut all: Vec<Value<'static>> = (0..60)
                .map(|i| if i % 2 == 0 { s("p") } else { Value::Absent })
                .collect();
            all.extend(values.iter().enumerate().map(|(k, v)| {
                if mask & (1 << k) != 0 {
                    v.clone()
                } else {
                    Value::Absent
                }
            }));
            match both(&paths, &all) {
                (Some(Ok(plan)), tree) => {
                    assert_eq!(Ok(plan), tree, "mask {mask:b}");
                    written += 1;
                }
                (Some(Err(Meet)), _) => {}
                (None, _) => panic!("no plan"),
            }
        }
        assert!(written > 32, "{written}");
    }

    /// Random output paths (a few keys, indices and `[*]`, up to three steps) with
    /// random values (absent, text, lists, built objects): wherever the plan writes a
    /// record it is the tree's, and wherever the tree gives a mapping error the plan
    /// hands the resource to the tree.
    #[test]
    fn agrees_with_the_tree_on_random_paths_and_values() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const KEYS: [&str; 4] = ["a", "b", "text", "value"];
        const TEXTS: [&str; 4] = ["", "x", "y", "Lê"];
        let (mut written, mut met, mut laid_out) = (0, 0, 0);
        for _ in 0..20_000 {
            let mut paths = Vec::new();
            for _ in 0..1 + next(5) {
                let mut p = KEYS[next(4) as usize].to_string();
                let mut star = false;
                for _ in 0..next(3) {
                    match next(4) {
                        0 if !star => {
                            p.push_str("[*]");
                            star = true;
                        }
                        1 => p.push_str(&format!("[{}]", next(3))),
                        _ => p.push_str(&format!(".{}", KEYS[next(4) as usize])),
                    }
                }
                paths.push(p);
            }
            // Text, numbers (one empty, one not JSON's), a boolean, and mostly compact
            // built objects, as the data type functions make them.
            fn leaf(next: &mut dyn FnMut(u64) -> u64) -> Value<'static> {
                match next(8) {
                    0 => Value::Num(Cow::Borrowed(["1", "", "1E5", "x"][next(4) as usize])),
                    1 => Value::Bool(next(2) == 0),
                    _ => s(TEXTS[next(4) as usize]),
                }
            }
            fn object(next: &mut dyn FnMut(u64) -> u64) -> Value<'static> {
                let members = (0..next(3)).map(|_| (KEYS[next(4) as usize], leaf(next)));
                let v = Value::Obj(members.collect());
                if next(4) == 0 {
                    v
                } else {
                    v.compacted()
                }
            }
            let value = |next: &mut dyn FnMut(u64) -> u64| -> Value<'static> {
                match next(6) {
                    0 => Value::Absent,
                    1 | 2 => leaf(next),
                    3 => Value::List((0..next(4)).map(|_| leaf(next)).collect()),
                    4 => Value::List((0..next(4)).map(|_| object(next)).collect()),
                    _ => object(next),
                }
            };
            let values: Vec<Value<'static>> = paths.iter().map(|_| value(&mut next)).collect();
            let ps: Vec<&str> = paths.iter().map(String::as_str).collect();
            match both(&ps, &values) {
                (Some(Ok(plan)), tree) => {
                    assert_eq!(Ok(plan), tree, "{ps:?} {values:?}");
                    written += 1;
                    laid_out += 1;
                }
                (Some(Err(Meet)), _) => {
                    met += 1;
                    laid_out += 1;
                }
                (None, _) => {}
            }
        }
        assert!(
            laid_out > 10_000 && written > 5 * met,
            "{laid_out} {written} {met}"
        );
    }
}
