//! Evaluating expressions against one message in one context.
//!
//! Context rule: while a resource with `each = "SEG"` is evaluated, the current SEG
//! instance is the context. A path to SEG (without an explicit instance) resolves in
//! that instance; a path to a child segment type (not a group head such as OBR, OBX,
//! PID: typically NTE) resolves to the first one following the context segment before
//! the next group head, and for NTE nowhere else: a segment without notes of its own has
//! none. Otherwise a path resolves to the nearest instance of that type before the
//! context segment, else to the first in the message, but never to a child of a sibling
//! (a segment following another instance of the context's type). Without a context,
//! paths resolve to the first instance. `SEG[n]` always means the n-th in the
//! message. HL7's null marker `""` evaluates as absent in this version.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value as Json;

use super::datatypes::{self, Parts};
use super::expr::{Call, Expr};
use super::functions::{self, fid};
use super::tables::{Table, TableMap};
use crate::hl7::{Message, Path, Repetition};

/// Segments that open a group (a patient, a visit, an order, a result, ...). A path to
/// any other segment type, from a context segment, first looks at the segments that
/// follow the context up to the next group head: that is where its NTE notes are.
fn is_group_head(name: &str) -> bool {
    is_group_head_name(name.as_bytes())
}

/// [`is_group_head`] of a name packed by [`crate::hl7::name_code`].
fn is_group_head_code(code: u32) -> bool {
    is_group_head_name(&code.to_le_bytes()[..3])
}

fn is_group_head_name(name: &[u8]) -> bool {
    // A byte match compiles to a few comparisons, not a string compare per head.
    matches!(
        name,
        b"MSH"
            | b"PID"
            | b"PD1"
            | b"PV1"
            | b"PV2"
            | b"NK1"
            | b"IN1"
            | b"IN2"
            | b"GT1"
            | b"ORC"
            | b"OBR"
            | b"OBX"
            | b"SPM"
            | b"TXA"
            | b"SCH"
            | b"RGS"
            | b"AIS"
            | b"AIG"
            | b"AIL"
            | b"AIP"
            | b"MRG"
            | b"TQ1"
            | b"AL1"
            | b"DG1"
            | b"PR1"
            | b"RXA"
            | b"RXO"
            | b"RXE"
            | b"FT1"
    )
}

/// A group head whose following segments are its own: every group head but those that
/// extend the head before them (PD1 after PID, PV2 after PV1, IN2 after IN1, TQ1 after
/// ORC, OBR or SCH), after which the segments still belong to that earlier head
/// (`PID PD1 NTE`: the patient's note; `IN1 IN2 IN3`: the insurance's IN3).
fn owns_children(name: &str) -> bool {
    is_group_head(name) && !matches!(name.as_bytes(), b"PD1" | b"PV2" | b"IN2" | b"TQ1")
}

/// Segment names packed as [`crate::hl7::name_code`] packs them.
const NTE: u32 = crate::hl7::name_code("NTE");
const ORC: u32 = crate::hl7::name_code("ORC");
const OBR: u32 = crate::hl7::name_code("OBR");
const TQ1: u32 = crate::hl7::name_code("TQ1");
const PID: u32 = crate::hl7::name_code("PID");
const MSH: u32 = crate::hl7::name_code("MSH");

/// The value of an expression. Text borrows from the message or the mapping wherever it
/// can (a field without escapes, a literal, a table value) and is copied only when built.
///
/// The tag is a whole word (`repr(u64)`): with a one-byte tag the compiler moved a value
/// as the tag byte and the 31 bytes after it, in overlapping 16-byte pieces at odd
/// offsets, and reading one back soon after it was written so stalled the processor
/// (a load that spans two earlier stores is not forwarded from them). Values move
/// through every level of the interpreter; the word-sized tag keeps each move to
/// aligned words. The size is the same, 32 bytes. (About 5–8 % of parse + map.)
#[derive(Clone, Debug, PartialEq)]
#[repr(u64)]
pub enum Value<'a> {
    Absent,
    Str(Cow<'a, str>),
    /// A number, kept as its decimal text ("5.10").
    Num(Cow<'a, str>),
    Bool(bool),
    List(Vec<Value<'a>>),
    /// An object: what a data type function built (keys in order).
    Obj(Vec<(&'a str, Value<'a>)>),
    /// A reference, `{"reference": "Type/id"}`: what `ref()` and `refs()` give, the
    /// object without a list of one member to allocate (a result has four or more).
    Ref(&'a str),
    /// A data type function's object, already written as record nodes (fragment `n` of
    /// the resource being made; see [`Scope::eval_set`]). Only a set rule's own value
    /// is one, and it goes only into its record: where the tree must take the value
    /// apart, the set rule is evaluated again into a [`Value::Obj`].
    Frag(u32),
}

impl<'a> Value<'a> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Value::Absent)
    }

    pub fn truthy(&self) -> bool {
        match self {
            Value::Absent => false,
            Value::Bool(b) => *b,
            Value::List(items) => items.iter().any(|v| !v.is_absent()),
            Value::Str(s) => !s.is_empty(),
            Value::Num(_) | Value::Obj(_) | Value::Ref(_) | Value::Frag(_) => true,
        }
    }

    /// Text form; `None` when absent. Lists join their present items with ",".
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Absent => None,
            Value::Str(s) | Value::Num(s) => Some(Cow::Borrowed(s)),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::List(items) => {
                let parts: Vec<Cow<'_, str>> = items.iter().filter_map(Value::text).collect();
                (!parts.is_empty()).then(|| Cow::Owned(parts.join(",")))
            }
            Value::Obj(_) | Value::Ref(_) | Value::Frag(_) => {
                self.to_json().map(|j| Cow::Owned(j.to_string()))
            }
        }
    }

    /// The text, keeping the borrow when there is one.
    fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Value::Str(s) | Value::Num(s) => Some(s),
            other => other.text().map(|t| Cow::Owned(t.into_owned())),
        }
    }

    /// Whether the value puts anything into a resource: not absent, not empty text, not
    /// a list or object of such.
    pub fn present(&self) -> bool {
        match self {
            Value::Absent => false,
            Value::Str(s) => !s.is_empty(),
            Value::Num(_) | Value::Bool(_) => true,
            Value::List(items) => items.iter().any(Value::present),
            Value::Obj(members) => members.iter().any(|(_, v)| v.present()),
            Value::Ref(r) => !r.is_empty(),
            // Made only when something was written.
            Value::Frag(_) => true,
        }
    }

    /// The value as it goes into a resource: lists and objects without their absent or
    /// empty items and members (so that `[i]` after it counts only what is there), a
    /// number that is not a JSON number as text; absent when nothing is left.
    pub fn compacted(self) -> Value<'a> {
        if self.is_compact() {
            return self;
        }
        let v = match self {
            Value::Num(n) if !crate::record::is_json_number(&n) => Value::Str(n),
            Value::List(items) => Value::List(
                items
                    .into_iter()
                    .map(Value::compacted)
                    .filter(Value::present)
                    .collect(),
            ),
            Value::Obj(members) => Value::Obj(
                members
                    .into_iter()
                    .map(|(k, v)| (k, v.compacted()))
                    .filter(|(_, v)| v.present())
                    .collect(),
            ),
            other => other,
        };
        if v.present() {
            v
        } else {
            Value::Absent
        }
    }

    /// Present and as [`Value::compacted`] would leave it (what the data type functions
    /// build is), checked without building anything.
    pub(super) fn is_compact(&self) -> bool {
        match self {
            Value::Absent => false,
            Value::Str(s) => !s.is_empty(),
            Value::Num(n) => crate::record::is_json_number(n),
            Value::Bool(_) => true,
            Value::List(items) => !items.is_empty() && items.iter().all(Value::is_compact),
            Value::Obj(members) => {
                !members.is_empty() && members.iter().all(|(_, v)| v.is_compact())
            }
            Value::Ref(r) => !r.is_empty(),
            Value::Frag(_) => true,
        }
    }

    /// As a `serde_json::Value` (what it puts into a resource); `None` when absent.
    pub fn to_json(&self) -> Option<Json> {
        match self {
            Value::Absent => None,
            Value::Str(s) => (!s.is_empty()).then(|| Json::String(s.to_string())),
            Value::Num(n) => Some(
                n.parse::<serde_json::Number>()
                    .map_or_else(|_| Json::String(n.to_string()), Json::Number),
            ),
            Value::Bool(b) => Some(Json::Bool(*b)),
            Value::List(items) => {
                let out: Vec<Json> = items.iter().filter_map(Value::to_json).collect();
                (!out.is_empty()).then_some(Json::Array(out))
            }
            Value::Obj(members) => {
                let map: serde_json::Map<String, Json> = members
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v.to_json()?)))
                    .collect();
                (!map.is_empty()).then_some(Json::Object(map))
            }
            Value::Ref(r) => (!r.is_empty()).then(|| {
                let mut map = serde_json::Map::new();
                map.insert("reference".to_string(), Json::String(r.to_string()));
                Json::Object(map)
            }),
            // Its content is in the resource's fragments, not here; no expression
            // reads a set rule's value.
            Value::Frag(_) => None,
        }
    }

    /// Whether it is, or holds, an object written ahead ([`Value::Frag`]).
    pub(super) fn written_ahead(&self) -> bool {
        match self {
            Value::Frag(_) => true,
            Value::List(items) => items.iter().any(|v| matches!(v, Value::Frag(_))),
            _ => false,
        }
    }

    /// The value with every reference written out as the object it stands for (for the
    /// tree, which opens and compares objects).
    pub(super) fn expanded(self) -> Value<'a> {
        match self {
            Value::Ref(r) => Value::Obj(vec![("reference", Value::Str(Cow::Borrowed(r)))]),
            Value::List(items) => {
                if items
                    .iter()
                    .any(|v| matches!(v, Value::Ref(_) | Value::List(_)))
                {
                    Value::List(items.into_iter().map(Value::expanded).collect())
                } else {
                    Value::List(items)
                }
            }
            other => other,
        }
    }
}

/// A resource instance found in the first pass.
#[derive(Clone, Debug)]
pub struct Instance {
    pub rule: usize,
    /// Context segment index (`each`), `None` for a resource without `each`.
    pub seg: Option<usize>,
    /// `Type/id`, what `ref` and `refs` point with; the type and the id are its parts.
    pub reference: String,
    /// Where the type ends in `reference`.
    type_len: usize,
    /// The n-th resource of its type in this run (1-based).
    pub ordinal: usize,
    /// The n-th segment of the rule's `each` type (1-based).
    pub each_index: usize,
}

impl Instance {
    pub fn new(
        rule: usize,
        resource_type: &str,
        seg: Option<usize>,
        id: String,
        ordinal: usize,
        each_index: usize,
    ) -> Instance {
        // The id's own buffer when it has room for the type before it (a hash leaves
        // room), so that a resource's id is not allocated twice.
        let mut reference = id;
        reference.reserve(resource_type.len() + 1);
        reference.insert(0, '/');
        reference.insert_str(0, resource_type);
        Instance {
            rule,
            seg,
            reference,
            type_len: resource_type.len(),
            ordinal,
            each_index,
        }
    }

    pub fn resource_type(&self) -> &str {
        &self.reference[..self.type_len]
    }

    pub fn id(&self) -> &str {
        &self.reference[self.type_len + 1..]
    }
}

/// "Observation #3 (OBX 3)", naming a resource instance in errors.
pub fn label(rule: &super::file::Rule, ordinal: usize, each_index: usize) -> String {
    match &rule.each {
        Some(seg) => format!("{} #{ordinal} ({seg} {each_index})", rule.resource_type),
        None => format!("{} #{ordinal}", rule.resource_type),
    }
}

/// Where an expression is evaluated.
pub struct Scope<'a> {
    pub msg: &'a Message,
    /// Context segment index.
    pub seg: Option<usize>,
    pub instances: &'a [Instance],
    /// The DICOM instance, when the input is one (see `mapping::dicom`).
    pub dicom: Option<&'a crate::dicom::Attributes>,
    /// Records what is read, for the loss report; `None` in the engine.
    pub trace: Option<&'a Trace>,
    /// The tables the data type functions read, looked up once per run.
    pub dt: &'a datatypes::Tables<'a>,
    /// What `facility()` gives ([`super::RunContext::facility`]).
    pub facility: &'a str,
    /// The context's patient group, worked out when first needed (see
    /// [`Scope::same_patient`]).
    pub patient: std::cell::OnceCell<Option<PatientSpan>>,
    /// Segments paths have resolved to in this scope.
    pub resolved: Resolved,
    /// What `ref(T)` found in this scope (a result asks for its order four times).
    pub nearest: Nearest<'a>,
    /// The pieces the resource being made has read, when this scope is that
    /// resource's (not a scope of `all()` or of a group's other segment).
    pub reads: Option<&'a Reads<'a>>,
    /// What the run has worked out for all its scopes.
    pub run: RunMemo<'a>,
}

/// What one run keeps for all its scopes.
#[derive(Clone, Copy)]
pub struct RunMemo<'a> {
    /// What `rank()` and `alike()` have worked out.
    pub ranks: &'a Ranks,
    /// The values of the run's constant `[let]` names, once worked out.
    pub constants: &'a Constants<'a>,
    /// What `ref(Type, KEY, VALUE)` has worked out.
    pub finds: &'a Finds,
}

/// The keys of `ref(Type, KEY, VALUE)` in one run: for each call (by address), the
/// instances of its type by their key, each list in the order they are made. Every
/// instance's key is read once, the first time the call is made, so that a message of
/// many results that each look for one costs a pass, not a pass each.
#[derive(Default)]
pub struct Finds(std::cell::RefCell<Vec<(usize, ByKey)>>);

/// Instances (their indexes) by key, each list in the order they are made.
type ByKey = std::collections::HashMap<String, Vec<usize>>;

/// The value of each `[let]` name numbered as one for the whole run
/// ([`super::expr::number_lets`]; `$sender`, read for every id), once worked out.
pub struct Constants<'a>(std::cell::RefCell<Vec<Option<Value<'a>>>>);

impl<'a> Constants<'a> {
    pub fn new(slots: usize) -> Constants<'a> {
        Constants(std::cell::RefCell::new(vec![None; slots]))
    }
}

/// The answers of `rank()` in one run: for each call (by address), the rank of each
/// segment by its index (0: not worked out). A call works out the rank of every
/// segment of its group at once, so an order's results cost one pass, not one each.
#[derive(Default)]
pub struct Ranks(std::cell::RefCell<Vec<(usize, Vec<u32>)>>);

impl Ranks {
    fn get(&self, call: usize, seg: usize) -> Option<u32> {
        let ranks = self.0.borrow();
        let (_, by_seg) = ranks.iter().find(|(c, _)| *c == call)?;
        by_seg.get(seg).copied().filter(|&r| r != 0)
    }

    fn put(&self, call: usize, segments: usize, seg: usize, rank: u32) {
        let mut ranks = self.0.borrow_mut();
        let i = match ranks.iter().position(|(c, _)| *c == call) {
            Some(i) => i,
            None => {
                ranks.push((call, vec![0; segments]));
                ranks.len() - 1
            }
        };
        ranks[i].1[seg] = rank;
    }
}

/// A field's text as mappings read it: unescaped; empty and HL7's null (`""`) are none.
#[inline(always)]
fn text_of<'a>(msg: &'a Message, raw: &'a str) -> Option<Cow<'a, str>> {
    if raw.is_empty() || raw == "\"\"" {
        None
    } else {
        Some(msg.unescape(raw))
    }
}

/// A rank as a value: the small ones are not formatted.
fn rank_value<'a>(rank: u32) -> Value<'a> {
    const SMALL: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get((rank as usize).wrapping_sub(1)) {
        Some(text) => Value::Num(Cow::Borrowed(text)),
        None => Value::Num(Cow::Owned(rank.to_string())),
    }
}

/// How high a segment stands in the groups `rank()` counts within: the message (MSH),
/// a patient (PID), an order (ORC, OBR); every other segment stands below them.
fn group_level(code: u32) -> u8 {
    match code {
        MSH => 0,
        PID => 1,
        ORC | OBR => 2,
        _ => 3,
    }
}

/// The raw pieces one resource's paths have read, by the path's number
/// ([`super::expr::number_paths`]), kept while the resource is made: in
/// `if(exists(PID-5.2), concat(' ', PID-5.2))` the field is looked up once, and so is
/// `OBX-2` that four rules of a result test. About two in five reads repeat one before.
pub struct Reads<'a> {
    /// The resource being made; a kept piece of an earlier one is stale.
    round: Cell<u32>,
    kept: Box<[Cell<Kept<'a>>]>,
}

/// The round a piece was read in, and the piece (`None`: the path selects nothing).
type Kept<'a> = (u32, Option<&'a str>);

impl<'a> Reads<'a> {
    pub fn new(paths: usize) -> Reads<'a> {
        Reads {
            round: Cell::new(1),
            kept: (0..paths).map(|_| Cell::new((0, None))).collect(),
        }
    }

    /// Forgets what was read: the next resource is made.
    pub fn next_resource(&self) {
        self.round.set(self.round.get().wrapping_add(1).max(1));
    }

    /// The piece path `slot` read for this resource (`Some(None)`: none), if it did.
    fn get(&self, slot: u32) -> Option<Option<&'a str>> {
        let (round, raw) = self.kept.get(slot as usize)?.get();
        (round == self.round.get()).then_some(raw)
    }

    fn put(&self, slot: u32, raw: Option<&'a str>) {
        if let Some(k) = self.kept.get(slot as usize) {
            k.set((self.round.get(), raw));
        }
    }
}

/// A few answers of [`Scope::nearest`] (type → instance), kept for the scope's
/// lifetime; once full, further types are worked out every time.
#[derive(Default)]
pub struct Nearest<'a>(std::cell::Cell<[Option<Found<'a>>; 4]>);

/// A type and the instance of it `ref()` points to, if any.
type Found<'a> = (&'a str, Option<&'a Instance>);

/// A few (segment name and instance → segment) answers of [`Scope::resolve`], kept
/// for the scope's lifetime, each in the slot its key hashes to (a clash replaces the
/// older answer, which is only worked out again).
#[derive(Default)]
pub struct Resolved {
    /// Key (name code, and instance + 1 in the top byte; 0 = unused, since no segment
    /// name packs to 0) and segment + 1 (0 = none).
    slots: [std::cell::Cell<(u32, u32)>; 16],
}

impl Resolved {
    fn slot(&self, key: u32) -> &std::cell::Cell<(u32, u32)> {
        let h = key.wrapping_mul(0x9E37_79B1) >> 28;
        &self.slots[h as usize % self.slots.len()]
    }

    fn get(&self, key: u32) -> Option<Option<usize>> {
        let (k, v) = self.slot(key).get();
        (k == key).then(|| v.checked_sub(1).map(|v| v as usize))
    }

    fn put(&self, key: u32, seg: Option<usize>) {
        let v = seg.map_or(0, |s| s as u32 + 1);
        self.slot(key).set((key, v));
    }
}

/// Where one patient's segments lie in a message that carries several (an ORU with a
/// PATIENT_RESULT group per patient): from the first PID, the context's patient runs
/// from its PID up to the next PID.
#[derive(Clone, Copy, Debug)]
pub struct PatientSpan {
    first_pid: usize,
    start: usize,
    end: usize,
}

/// MSH fields the engine itself reads, whatever the mapping does: the delimiters (1, 2),
/// for routing the sending application and facility (3, 4), the message type (9) and the
/// processing id (11), for the acknowledgement the receiving application and facility
/// (5, 6), the control id (10), the version (12) and the acknowledgement types (15, 16),
/// and the character set (18). They are not data a mapping leaves behind.
const ENGINE_READS_MSH: [usize; 13] = [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 15, 16, 18];

/// The (segment index, field) pairs a run read; field 0 is the bare segment.
#[derive(Default)]
pub struct Trace {
    read: std::cell::RefCell<std::collections::HashSet<(usize, usize)>>,
}

impl Trace {
    fn note(&self, seg: usize, field: usize) {
        self.read.borrow_mut().insert((seg, field));
    }

    /// "PID-10", "NK1 (whole segment)", ... for every non-empty field not read, in
    /// message order; the MSH fields the engine reads itself are left out. A repeated segment
    /// is named with its instance: "OBX[3]-18". `exists(PID)` reads no field of PID.
    pub fn unread(&self, msg: &Message) -> Vec<String> {
        let read = self.read.borrow();
        let mut out = Vec::new();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for seg in 0..msg.segment_count() {
            let name = msg.segment_name(seg);
            let n = seen.entry(name).or_insert(0);
            *n += 1;
            let label = if msg.segments(name).nth(1).is_some() {
                format!("{name}[{n}]")
            } else {
                name.to_string()
            };
            let any_read = read.iter().any(|&(s, _)| s == seg);
            if !any_read {
                let has_data = (1..=msg.field_count(seg))
                    .any(|f| msg.field_raw(seg, f).is_some_and(|r| !r.is_empty()));
                if has_data && seg != 0 {
                    out.push(format!("{label} (whole segment)"));
                    continue;
                }
            }
            for f in 1..=msg.field_count(seg) {
                if seg == 0 && ENGINE_READS_MSH.contains(&f) {
                    continue;
                }
                let has = msg
                    .field_raw(seg, f)
                    .is_some_and(|r| !r.is_empty() && r != "\"\"");
                if has && !read.contains(&(seg, f)) {
                    out.push(format!("{label}-{f}"));
                }
            }
        }
        out
    }
}

fn map1<'a>(
    v: Value<'a>,
    f: &mut impl FnMut(Cow<'a, str>) -> Result<Value<'a>, String>,
) -> Result<Value<'a>, String> {
    match v {
        Value::Absent => Ok(Value::Absent),
        Value::List(items) => {
            let out = items
                .into_iter()
                .map(|i| map1(i, f))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if out.iter().all(Value::is_absent) {
                Value::Absent
            } else {
                Value::List(out)
            })
        }
        other => match other.into_text() {
            Some(t) => f(t),
            None => Ok(Value::Absent),
        },
    }
}

fn name_arg(e: &Expr) -> &str {
    match e {
        Expr::Name { name, .. } | Expr::Str(name) => name,
        _ => "",
    }
}

impl<'a> Scope<'a> {
    /// The segment a path resolves to under the context rule. A resource's fields read
    /// a few segments many times over (PID, the OBR of an OBX): each is worked out once
    /// per scope.
    pub fn resolve(&self, path: &Path) -> Option<usize> {
        let want = path.code;
        let key = match path.instance {
            None => Some(want),
            Some(n) if n < 255 => Some(want | ((n as u32 + 1) << 24)),
            Some(_) => None,
        };
        let Some(key) = key else {
            return self.resolve_uncached(path, want);
        };
        if let Some(found) = self.resolved.get(key) {
            return found;
        }
        let found = self.resolve_uncached(path, want);
        self.resolved.put(key, found);
        found
    }

    fn resolve_uncached(&self, path: &Path, want: u32) -> Option<usize> {
        if let Some(n) = path.instance {
            return self.msg.segments_coded(want).nth(n.checked_sub(1)?);
        }
        let first = || self.msg.segments_coded(want).next();
        let Some(cur) = self.seg else {
            return first();
        };
        let here = self.msg.segment_code(cur);
        if here == want {
            return Some(cur);
        }
        // An order's ORC and TQ1 belong to that order alone: never another order's,
        // before or after (see `order_segment`).
        if want == ORC || want == TQ1 {
            let obr = if here == OBR {
                Some(cur)
            } else {
                (0..cur)
                    .rev()
                    .find(|&i| self.msg.segment_code(i) == OBR)
                    .filter(|&i| self.same_patient(i))
            };
            if let Some(obr) = obr {
                return self.order_segment(obr, want);
            }
        }
        let child_type = !is_group_head_code(path.code);
        // A child of the context segment (NTE after an OBX or OBR, ...): the first
        // instance among the segments that follow it, up to the next group head.
        if child_type {
            if let Some(i) = self
                .children(cur)
                .find(|&i| self.msg.segment_code(i) == want)
            {
                return Some(i);
            }
            // Notes belong to the segment they follow: a segment without its own has
            // none, never another segment's.
            if want == NTE {
                return None;
            }
        }
        // Else the nearest before (the context's parent, its patient, ...), or the first;
        // never a child of a sibling (another segment of the context's type).
        let mine = |&i: &usize| {
            self.same_patient(i)
                && !(child_type
                    && self
                        .owner(i)
                        .is_some_and(|h| h != cur && self.msg.segment_code(h) == here))
        };
        (0..cur)
            .rev()
            .filter(|&i| self.msg.segment_code(i) == want)
            .find(mine)
            .or_else(|| first().filter(mine))
    }

    /// Whether segment `i` may be read from the current context as far as patients go:
    /// in a message with several patients, a segment of another patient's group never
    /// is (what comes before the first PID is the message's and always may be).
    fn same_patient(&self, i: usize) -> bool {
        let span = self.patient.get_or_init(|| {
            let cur = self.seg?;
            let mut pids = self.msg.segments_coded(PID);
            let first_pid = pids.next()?;
            // One PID (the usual message): nothing to tell apart, found without scanning on.
            let second = pids.next()?;
            if cur < first_pid {
                return None;
            }
            let (mut start, mut end) = (first_pid, usize::MAX);
            for p in std::iter::once(second).chain(pids) {
                if p <= cur {
                    start = p;
                } else {
                    end = p;
                    break;
                }
            }
            Some(PatientSpan {
                first_pid,
                start,
                end,
            })
        });
        span.is_none_or(|p| i < p.first_pid || (p.start <= i && i < p.end))
    }

    /// The ORC or TQ1 (`want`) of the order whose OBR is `obr`. The order's ORC comes
    /// before its OBR and after the previous OBR (TQ1 and the like may sit between);
    /// its TQ1 lies from its ORC (else its OBR) up to the next ORC or OBR: before the OBR
    /// in ORM and OML, after it in ORU. `None` when the order has none.
    fn order_segment(&self, obr: usize, want: u32) -> Option<usize> {
        let code = |i: usize| self.msg.segment_code(i);
        let orc = (0..obr)
            .rev()
            .take_while(|&i| code(i) != OBR)
            .find(|&i| code(i) == ORC);
        if want == ORC {
            return orc;
        }
        let start = orc.unwrap_or(obr);
        let end = (obr + 1..self.msg.segment_count())
            .find(|&i| code(i) == ORC || code(i) == OBR)
            .unwrap_or(self.msg.segment_count());
        (start..end).find(|&i| code(i) == want)
    }

    /// The segments `all(path)` reads: in a context, the instances of a child segment
    /// type that belong to the context segment (the NTEs after an OBX, up to the next
    /// group head); otherwise every instance in the message.
    fn instances_of(&self, path: &Path) -> Vec<usize> {
        let want = path.code;
        match self.seg {
            Some(cur) if path.instance.is_none() && !is_group_head_code(path.code) => self
                .children(cur)
                .filter(|&i| self.msg.segment_code(i) == want)
                .collect(),
            _ => self
                .msg
                .segments_coded(want)
                .filter(|&i| self.same_patient(i))
                .collect(),
        }
    }

    /// The segments that belong to segment `cur`: those after it, up to the next one of
    /// its type or the next group head that owns its children.
    fn children(&self, cur: usize) -> impl Iterator<Item = usize> + use<'_, 'a> {
        let here = self.msg.segment_code(cur);
        (cur + 1..self.msg.segment_count()).take_while(move |&i| {
            self.msg.segment_code(i) != here && !owns_children(self.msg.segment_name(i))
        })
    }

    /// Segment `seg` as a person counts it: its name and which of that name it is
    /// (`OBX 3`).
    fn segment_label(&self, seg: usize) -> String {
        let code = self.msg.segment_code(seg);
        let nth = (0..=seg)
            .filter(|&i| self.msg.segment_code(i) == code)
            .count();
        format!("{} {nth}", self.msg.segment_name(seg))
    }

    /// The same scope with segment `seg` as its context (`None`: the message's first
    /// instances, as for a resource made without `each`).
    fn at(&self, seg: Option<usize>) -> Scope<'a> {
        Scope {
            seg,
            patient: std::cell::OnceCell::new(),
            resolved: Resolved::default(),
            nearest: Nearest::default(),
            // What this segment's paths read is not the resource's.
            reads: None,
            ..*self
        }
    }

    /// The group head a segment follows: the nearest group head at or before it that
    /// is not an extension of the one before it.
    fn owner(&self, i: usize) -> Option<usize> {
        (0..=i)
            .rev()
            .find(|&h| owns_children(self.msg.segment_name(h)))
    }

    /// The value of path `path`, numbered `slot` in its mapping.
    fn path_value(&self, path: &Path, slot: u32) -> Value<'a> {
        if let (Some(reads), Some(fp)) = (self.reads, &path.field) {
            if !matches!(fp.repetition, Repetition::All) {
                let raw = reads.get(slot).unwrap_or_else(|| {
                    let raw = self.resolve(path).and_then(|seg| self.msg.raw_in(seg, fp));
                    reads.put(slot, raw);
                    raw
                });
                return match raw {
                    None | Some("" | "\"\"") => Value::Absent,
                    Some(raw) => Value::Str(self.msg.unescape(raw)),
                };
            }
        }
        let Some(seg) = self.resolve(path) else {
            return Value::Absent;
        };
        if let Some(t) = self.trace {
            t.note(seg, path.field.map_or(0, |f| f.field));
        }
        let Some(fp) = &path.field else {
            return Value::Str(Cow::Borrowed(self.msg.segment_text(seg)));
        };
        let msg: &'a Message = self.msg;
        let decode = |raw: &'a str| {
            if raw.is_empty() || raw == "\"\"" {
                Value::Absent
            } else {
                Value::Str(msg.unescape(raw))
            }
        };
        match fp.repetition {
            Repetition::All => {
                let mut items: Vec<Value> = Vec::new();
                msg.for_each_raw(seg, fp, |raw| items.push(decode(raw)));
                if items.iter().all(Value::is_absent) {
                    Value::Absent
                } else {
                    Value::List(items)
                }
            }
            Repetition::Index(_) | Repetition::Where { .. } => {
                msg.raw_in(seg, fp).map_or(Value::Absent, decode)
            }
        }
    }

    pub fn eval(&self, e: &'a Expr) -> Result<Value<'a>, String> {
        match e {
            Expr::Path { path, slot, .. } => Ok(self.path_value(path, *slot)),
            Expr::Str(s) => Ok(if s.is_empty() {
                Value::Absent
            } else {
                Value::Str(Cow::Borrowed(s))
            }),
            Expr::Num(n) => Ok(Value::Num(Cow::Borrowed(n))),
            Expr::Bool(b) => Ok(Value::Bool(*b)),
            Expr::Name { name, .. } => Ok(super::dicom::value(name, self.dicom)
                .unwrap_or_else(|| Value::Str(Cow::Borrowed(name)))),
            Expr::Call(c) => self.call(c),
            Expr::Let(l) if l.slot == super::expr::NO_SLOT => self.eval(&l.expr),
            Expr::Let(l) => self.constant(l),
        }
    }

    /// A `[let]` name whose value is one for the whole run: worked out once (an error
    /// is not kept: every use reports it).
    #[inline(never)]
    fn constant(&self, l: &'a super::expr::Let) -> Result<Value<'a>, String> {
        let slot = l.slot as usize;
        if let Some(Some(v)) = self.run.constants.0.borrow().get(slot) {
            return Ok(v.clone());
        }
        let v = self.eval(&l.expr)?;
        if let Some(kept) = self.run.constants.0.borrow_mut().get_mut(slot) {
            *kept = Some(v.clone());
        }
        Ok(v)
    }

    /// Argument `i` of a call, absent when there is none.
    fn arg(&self, c: &'a Call, i: usize) -> Result<Value<'a>, String> {
        match c.args.get(i) {
            Some(e) => self.eval(e),
            None => Ok(Value::Absent),
        }
    }

    /// A function call. The small, frequent functions are worked out here; every other
    /// one in a function of its own, so that this one, entered for every call, stays
    /// small in code and in stack (an interpreter's dispatch is where its time goes).
    fn call(&self, c: &'a Call) -> Result<Value<'a>, String> {
        match c.fid {
            fid::EXISTS => Ok(Value::Bool(self.arg(c, 0)?.truthy())),
            fid::NOT => Ok(Value::Bool(!self.arg(c, 0)?.truthy())),
            fid::EQ => {
                let (a, b) = (self.arg(c, 0)?, self.arg(c, 1)?);
                Ok(Value::Bool(a.into_text() == b.into_text()))
            }
            fid::IN => self.call_in(c),
            fid::IF => {
                if self.arg(c, 0)?.truthy() {
                    self.arg(c, 1)
                } else {
                    self.arg(c, 2)
                }
            }
            fid::COALESCE => {
                for e in &c.args {
                    let v = self.eval(e)?;
                    if !v.is_absent() {
                        return Ok(v);
                    }
                }
                Ok(Value::Absent)
            }
            fid::DEFAULT => {
                let v = self.arg(c, 0)?;
                if v.is_absent() {
                    self.arg(c, 1)
                } else {
                    Ok(v)
                }
            }
            fid::FACILITY => Ok(if self.facility.is_empty() {
                Value::Absent
            } else {
                Value::Str(Cow::Borrowed(self.facility))
            }),
            fid::DATE
            | fid::DATETIME
            | fid::DECIMAL
            | fid::INTEGER
            | fid::TRIM
            | fid::UPPER
            | fid::LOWER
            | fid::BASE64 => self.call_text(c),
            fid::CONCAT | fid::TEMPLATE => self.call_concat(c),
            fid::LOOKUP => self.call_lookup(c),
            fid::HASH => self.call_hash(c),
            fid::REF if c.args.len() == 3 => self.call_ref_where(c),
            fid::REF | fid::REFS => Ok(self.call_ref(c)),
            fid::HUMAN_NAME
            | fid::ADDRESS
            | fid::CONTACT_POINT
            | fid::IDENTIFIER
            | fid::CODEABLE_CONCEPT => self.call_datatype(c),
            fid::QUANTITY => self.call_quantity(c),
            fid::RANK | fid::ALIKE => self.call_rank(c),
            _ => self.call_rare(c),
        }
    }

    #[inline(never)]
    fn call_in(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let Some(x) = self.arg(c, 0)?.into_text() else {
            return Ok(Value::Bool(false));
        };
        for a in c.args.iter().skip(1) {
            // A literal is compared as it is (an empty one is absent: no match).
            let hit = match a {
                Expr::Str(s) => !s.is_empty() && **s == *x,
                e => self.eval(e)?.into_text().as_deref() == Some(&*x),
            };
            if hit {
                return Ok(Value::Bool(true));
            }
        }
        Ok(Value::Bool(false))
    }

    /// The functions of one text: dates, numbers, trimming and case, base64.
    #[inline(never)]
    fn call_text(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let fail = |msg: String| failed(c, msg);
        match c.fid {
            fid::DATE => map1(self.arg(c, 0)?, &mut |t| {
                functions::date(&t).map(owned).map_err(fail)
            }),
            fid::DATETIME => {
                let zone = self.arg(c, 1)?.into_text();
                map1(self.arg(c, 0)?, &mut |t| {
                    functions::datetime(&t, zone.as_deref())
                        .map(owned)
                        .map_err(fail)
                })
            }
            fid::DECIMAL => map1(self.arg(c, 0)?, &mut |t| {
                functions::decimal_text(t).map(Value::Num).map_err(fail)
            }),
            fid::INTEGER => map1(self.arg(c, 0)?, &mut |t| {
                functions::integer(&t)
                    .map(|n| Value::Num(Cow::Owned(n)))
                    .map_err(fail)
            }),
            fid::BASE64 => map1(self.arg(c, 0)?, &mut |t| {
                Ok(owned(functions::base64(t.as_bytes())))
            }),
            _ => map1(self.arg(c, 0)?, &mut |t| {
                let t: Cow<'a, str> = match (c.fid, t) {
                    (fid::UPPER, t) => Cow::Owned(t.trim().to_uppercase()),
                    (fid::LOWER, t) => Cow::Owned(t.trim().to_lowercase()),
                    (_, Cow::Borrowed(b)) => Cow::Borrowed(functions::trim(b)),
                    (_, Cow::Owned(o)) => Cow::Owned(o.trim().to_string()),
                };
                Ok(if t.is_empty() {
                    Value::Absent
                } else {
                    Value::Str(t)
                })
            }),
        }
    }

    /// `concat(a, b, ...)`, and `template`'s literal, placeholder, literal, ...: absent
    /// when every placeholder is.
    #[inline(never)]
    fn call_concat(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let mut out = String::with_capacity(32);
        let mut any = false;
        let template = c.fid == fid::TEMPLATE;
        for (i, a) in c.args.iter().enumerate() {
            if template && i % 2 == 0 {
                if let Expr::Str(t) = a {
                    out.push_str(t);
                }
            } else if let Some(t) = self.eval(a)?.into_text() {
                out.push_str(&t);
                any = true;
            }
        }
        let present = if template {
            any
        } else {
            any && !out.trim().is_empty()
        };
        Ok(if present { owned(out) } else { Value::Absent })
    }

    #[inline(never)]
    fn call_lookup(&self, c: &'a Call) -> Result<Value<'a>, String> {
        // Bound at load (`file::bind_tables`), where an unknown table is an error.
        let Some(table) = &c.table else {
            let name = c.args.first().map_or("", name_arg);
            return Err(failed(c, format!("unknown table {name:?}")));
        };
        let default = self.arg(c, 2)?;
        map1(self.arg(c, 1)?, &mut |t| {
            Ok(match table.get(functions::trim(&t)) {
                Some(v) => Value::Str(Cow::Borrowed(v)),
                None => default.clone(),
            })
        })
    }

    #[inline(never)]
    fn call_hash(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let mut h = functions::Hasher::default();
        let mut any = false;
        for e in &c.args {
            let t = self.eval(e)?.into_text();
            any |= t.is_some();
            h.part(t.as_deref().unwrap_or_default());
        }
        Ok(if any {
            owned(h.finish())
        } else {
            Value::Absent
        })
    }

    /// `rank(SEGMENT, KEY, ...)` and `alike(SEGMENT, KEY, ...)`. The context's SEGMENT
    /// (the context segment itself, or the one a path of that name reads from it, such
    /// as an OBX's OBR) is compared with the segments of its type in its group (an order
    /// for an OBX, a patient for an OBR, see [`group_level`]) by its KEYs, read with
    /// each segment as the context. `rank` gives its place among those alike (1 for
    /// the first, 2 for the next), `alike` how many are alike, itself included (1: no
    /// other). An id that holds a result's set ID only when another result of its order
    /// is alike stays the same when a correction resends the result alone, renumbered.
    #[inline(never)]
    fn call_rank(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let Some(Expr::Path { path, .. }) = c.args.first() else {
            return Err(failed(c, "the first argument must be a segment".into()));
        };
        let Some(target) = self.resolve(path) else {
            return Ok(Value::Absent);
        };
        let call = std::ptr::from_ref(c) as usize;
        if let Some(n) = self.run.ranks.get(call, target) {
            return Ok(rank_value(n));
        }
        let msg = self.msg;
        let segments = msg.segment_count();
        let code = msg.segment_code(target);
        let level = group_level(code);
        let above = |i: &usize| group_level(msg.segment_code(*i)) < level;
        let start = (0..target).rev().find(above).map_or(0, |i| i + 1);
        let end = (target + 1..segments).find(above).unwrap_or(segments);
        let group: Vec<usize> = (start..end)
            .filter(|&i| msg.segment_code(i) == code)
            .collect();
        // The keys of the group's segments, one after the other.
        let width = c.args.len() - 1;
        let mut keys: Vec<Option<Cow<'a, str>>> = Vec::with_capacity(group.len() * width);
        for &seg in &group {
            let mut at = None;
            for k in &c.args[1..] {
                // A field of the segment itself (OBX-3.1 of an OBX) is read straight
                // from it; any other key in a scope of that segment.
                let key = match k {
                    Expr::Path {
                        path:
                            Path {
                                code: want,
                                instance: None,
                                field: Some(fp),
                                ..
                            },
                        ..
                    } if *want == code
                        && fp.repetition != Repetition::All
                        && self.trace.is_none() =>
                    {
                        msg.raw_in(seg, fp).and_then(|raw| text_of(msg, raw))
                    }
                    k => match at.get_or_insert_with(|| self.at(Some(seg))).eval(k) {
                        Ok(v) => v.into_text(),
                        // Said of the segment whose key it is, not of the one asking.
                        Err(e) if seg != target => {
                            return Err(failed(
                                c,
                                format!("the keys of {}: {e}", self.segment_label(seg)),
                            ));
                        }
                        Err(e) => return Err(e),
                    },
                };
                keys.push(key);
            }
        }
        // The group sorted by keys (stable: those alike stay in the order sent), then
        // each run of those alike.
        let key = |i: usize| &keys[i * width..(i + 1) * width];
        let mut order: Vec<usize> = (0..group.len()).collect();
        order.sort_by(|&a, &b| key(a).cmp(key(b)));
        for run in order.chunk_by(|&a, &b| key(a) == key(b)) {
            for (place, &i) in run.iter().enumerate() {
                let n = if c.fid == fid::ALIKE {
                    run.len()
                } else {
                    place + 1
                };
                self.run.ranks.put(call, segments, group[i], n as u32);
            }
        }
        Ok(self
            .run
            .ranks
            .get(call, target)
            .map_or(Value::Absent, rank_value))
    }

    /// `ref(Type)` and `refs(Type)`.
    #[inline(never)]
    fn call_ref(&self, c: &'a Call) -> Value<'a> {
        let t = c.args.first().map_or("", name_arg);
        if c.fid == fid::REF {
            return self.nearest(t).map_or(Value::Absent, reference);
        }
        let items: Vec<Value> = self.in_group(t).map(reference).collect();
        if items.is_empty() {
            Value::Absent
        } else {
            Value::List(items)
        }
    }

    /// `ref(Type, KEY, VALUE)`: the first resource of that type, of the current patient
    /// and not made from the current segment (before or after it), whose KEY, read with
    /// the segment it was made from as the context, is VALUE, read here. A
    /// susceptibility result finds the isolate it was tested on (OBR-26 names the
    /// isolate's OBX-3 and OBX-4, OBR-29 its order). Absent when VALUE is absent or none
    /// has it. Every instance's KEY is read at the call's first use ([`Finds`]), so a
    /// KEY that fails fails the first resource that asks.
    #[inline(never)]
    fn call_ref_where(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let Some(want) = self.arg(c, 2)?.into_text() else {
            return Ok(Value::Absent);
        };
        let call = std::ptr::from_ref(c) as usize;
        if !self.run.finds.0.borrow().iter().any(|(k, _)| *k == call) {
            let keys = self.keys_of(c)?;
            self.run.finds.0.borrow_mut().push((call, keys));
        }
        let finds = self.run.finds.0.borrow();
        let found = finds
            .iter()
            .find(|(k, _)| *k == call)
            .and_then(|(_, keys)| keys.get(&*want))
            .into_iter()
            .flatten()
            .map(|&i| &self.instances[i])
            // Never the resource being made (a resource made without `each` never
            // finds one made without `each`), nor another patient's.
            .find(|inst| inst.seg != self.seg && inst.seg.is_none_or(|s| self.same_patient(s)));
        Ok(found.map_or(Value::Absent, reference))
    }

    /// The key of every instance of `ref(Type, KEY, VALUE)`'s type, read with the
    /// segment it was made from as the context: the instances by key.
    fn keys_of(&self, c: &'a Call) -> Result<ByKey, String> {
        let t = c.args.first().map_or("", name_arg);
        let mut keys = ByKey::new();
        for (i, inst) in self.instances.iter().enumerate() {
            if inst.resource_type() != t {
                continue;
            }
            // Said of the segment whose key it is (a resource made without `each` reads
            // the message's first instances, as here).
            let key = self
                .at(inst.seg)
                .eval(&c.args[1])
                .map_err(|e| match inst.seg {
                    Some(s) => failed(c, format!("the key of {}: {e}", self.segment_label(s))),
                    None => e,
                })?;
            if let Some(k) = key.into_text() {
                keys.entry(k.into_owned()).or_default().push(i);
            }
        }
        Ok(keys)
    }

    /// The data type functions: HumanName, Address, ContactPoint, Identifier,
    /// CodeableConcept from an HL7 path.
    #[inline(never)]
    fn call_datatype(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let Some(Expr::Path { path, .. }) = c.args.first() else {
            return Err(failed(c, "the argument must be an HL7 path".into()));
        };
        Ok(self.each_value(path, |p| {
            datatypes::build(c.fid, p, self.dt).unwrap_or(Value::Absent)
        }))
    }

    /// `f` of the piece `path` selects, or with `[*]` the list of `f` of each.
    fn each_value(&self, path: &Path, mut f: impl FnMut(&Parts<'a>) -> Value<'a>) -> Value<'a> {
        if !is_all(path) {
            let mut one = Value::Absent;
            self.each_part(path, |p| one = f(&p));
            return one;
        }
        let mut items = Vec::new();
        self.each_part(path, |p| items.push(f(&p)));
        collect(items, true)
    }

    /// A set rule's value, as [`Scope::eval`] gives it, except that a data type
    /// function's objects (the whole expression: `codeable_concept(OBX-3)`,
    /// `identifier(PID-3[*])`) are written ahead as record nodes into `side`, each
    /// a [`Value::Frag`] numbered in `frags`: no lists built, walked and dropped.
    pub(super) fn eval_set(
        &self,
        e: &'a Expr,
        side: &mut crate::record::Builder,
        frags: &mut Vec<crate::record::Fragment>,
    ) -> Result<Value<'a>, String> {
        let Expr::Call(c) = e else {
            return self.eval(e);
        };
        let (Some(Expr::Path { path, .. }), true) =
            (c.args.first(), datatypes::OBJECT_FUNCTIONS.contains(&c.fid))
        else {
            return self.eval(e);
        };
        Ok(self.each_value(path, |p| {
            let start = side.fragment_start();
            datatypes::write(c.fid, p, self.dt, &mut datatypes::BuilderSink::new(side));
            match side.end_fragment(start) {
                Some(f) => {
                    frags.push(f);
                    Value::Frag((frags.len() - 1) as u32)
                }
                None => Value::Absent,
            }
        }))
    }

    #[inline(never)]
    fn call_quantity(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let Some(Expr::Path { path, .. }) = c.args.first() else {
            return Err(failed(c, "the first argument must be an HL7 path".into()));
        };
        let units = match c.args.get(1) {
            Some(Expr::Path { path, .. }) => {
                let mut first = None;
                self.each_part(path, |p| {
                    first.get_or_insert(p);
                });
                first
            }
            Some(_) => return Err(failed(c, "the second argument must be an HL7 path".into())),
            None => None,
        };
        let all = is_all(path);
        // Without `[*]` one value, kept without a list.
        let mut items = Vec::new();
        let mut one = None;
        let mut failure = None;
        self.each_part(path, |p| {
            if failure.is_none() {
                match datatypes::quantity(&p, units.as_ref(), self.dt) {
                    Ok(q) if all => items.push(q.unwrap_or(Value::Absent)),
                    Ok(q) => {
                        one.get_or_insert(q.unwrap_or(Value::Absent));
                    }
                    Err(e) => failure = Some(e),
                }
            }
        });
        if let Some(e) = failure {
            return Err(failed(c, e));
        }
        Ok(match one {
            Some(v) => v,
            None => collect(items, all),
        })
    }

    /// The functions few fields call: split, join, required, matches, all.
    #[inline(never)]
    fn call_rare(&self, c: &'a Call) -> Result<Value<'a>, String> {
        let arg = |i: usize| self.arg(c, i);
        match c.fid {
            fid::SPLIT => {
                let sep = arg(1)?.into_text().unwrap_or_default();
                match arg(0)? {
                    Value::List(items) => {
                        let mut out = Vec::new();
                        for item in items.iter().filter_map(Value::text) {
                            if let Value::List(p) = functions::split(&item, &sep) {
                                out.extend(p);
                            }
                        }
                        Ok(if out.is_empty() {
                            Value::Absent
                        } else {
                            Value::List(out)
                        })
                    }
                    v => Ok(v
                        .text()
                        .map_or(Value::Absent, |t| functions::split(&t, &sep))),
                }
            }
            fid::JOIN => {
                let sep = arg(1)?.into_text().unwrap_or_default();
                let v = arg(0)?;
                let parts: Vec<Cow<'_, str>> = match &v {
                    Value::List(items) => items.iter().filter_map(Value::text).collect(),
                    v => v.text().into_iter().collect(),
                };
                Ok(if parts.is_empty() {
                    Value::Absent
                } else {
                    owned(parts.join(&*sep))
                })
            }
            fid::REQUIRED => {
                let v = arg(0)?;
                if v.is_absent() {
                    let why = arg(1)?.text().map_or_else(
                        || "a required value is missing".to_string(),
                        Cow::into_owned,
                    );
                    return Err(failed(c, why));
                }
                Ok(v)
            }
            fid::MATCHES => {
                let pat = arg(1)?.into_text().unwrap_or_default();
                Ok(Value::Bool(
                    arg(0)?
                        .into_text()
                        .is_some_and(|t| functions::glob(&pat, &t)),
                ))
            }
            fid::ED_DATA => {
                // Lists (`all(...)` of several ED values) are taken item by item.
                let one = |d: Value<'a>, e: Option<&Value<'a>>| -> Result<Value<'a>, String> {
                    let (Some(d), Some(e)) = (d.into_text(), e.and_then(Value::text)) else {
                        return Ok(Value::Absent);
                    };
                    functions::ed_data(d, &e)
                        .map(|v| v.map_or(Value::Absent, Value::Str))
                        .map_err(|m| failed(c, m))
                };
                match (arg(0)?, arg(1)?) {
                    (Value::List(data), encoding) => {
                        let items = data
                            .into_iter()
                            .enumerate()
                            .map(|(i, d)| match &encoding {
                                Value::List(e) => one(d, e.get(i)),
                                e => one(d, Some(e)),
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(collect(items, true))
                    }
                    (d, Value::List(e)) => one(d, e.first()),
                    (d, e) => one(d, Some(&e)),
                }
            }
            fid::ALL => {
                // `all(PATH)`, or `all(EXPR)`: an expression evaluated in every instance
                // of the segment its first path names (it has one: checked at load),
                // its other paths read with that instance as the context.
                let Some(first) = c.args.first() else {
                    return Err(failed(c, "the first argument must be an HL7 path".into()));
                };
                let Some(path) = first_path(first) else {
                    return Err(failed(c, "the first argument reads no HL7 path".into()));
                };
                // `all(PATH, CONDITION, DEFAULT)`: an instance whose path is empty
                // gives DEFAULT, so that a list of one value per instance has one
                // everywhere (a content type for every file, say).
                let default = arg(2)?;
                let mut items = Vec::new();
                for seg in self.instances_of(path) {
                    let at = self.at(Some(seg));
                    // `all(PATH, CONDITION)`: only the segments where the condition,
                    // read with that segment as the context, holds.
                    if let Some(condition) = c.args.get(1) {
                        if !at.eval(condition)?.truthy() {
                            continue;
                        }
                    }
                    let start = items.len();
                    let v = match first {
                        Expr::Path { .. } => at.path_value(path, super::expr::NO_SLOT),
                        e => at.eval(e)?,
                    };
                    match v {
                        Value::List(mut l) => items.append(&mut l),
                        v => items.push(v),
                    }
                    if !default.is_absent() {
                        for item in &mut items[start..] {
                            if item.is_absent() {
                                *item = default.clone();
                            }
                        }
                    }
                }
                Ok(collect(items, true))
            }
            _ => Err(failed(c, format!("unknown function {:?}", c.name))),
        }
    }

    /// Calls `f` with every piece a path selects (one per selected repetition), split
    /// into parts: components with their subcomponents, or, when the path names a
    /// component, its subcomponents.
    fn each_part(&self, path: &crate::hl7::Path, mut f: impl FnMut(Parts<'a>)) {
        let Some(seg) = self.resolve(path) else {
            return;
        };
        let Some(fp) = &path.field else {
            return;
        };
        if let Some(t) = self.trace {
            t.note(seg, fp.field);
        }
        let d = *self.msg.delimiters();
        let msg: &'a Message = self.msg;
        let decode = |raw: &'a str| text_of(msg, raw);
        let split_sub = |raw: &'a str| -> Vec<Option<Cow<'a, str>>> {
            match d.subcomponent {
                Some(sc) => raw.split(sc).map(decode).collect(),
                None => vec![decode(raw)],
            }
        };
        let (part, sub) = if fp.subcomponent.is_some() {
            (None, None)
        } else if fp.component.is_some() {
            (d.subcomponent, None)
        } else {
            (Some(d.component), d.subcomponent)
        };
        let one = |raw: &'a str| {
            if !crate::hl7::has_escape(raw, &d) {
                return Parts::raw(raw, part, sub);
            }
            Parts::decoded(if fp.subcomponent.is_some() {
                vec![vec![decode(raw)]]
            } else if fp.component.is_some() {
                split_sub(raw).into_iter().map(|s| vec![s]).collect()
            } else {
                raw.split(d.component).map(split_sub).collect()
            })
        };
        match fp.repetition {
            Repetition::All => msg.for_each_raw(seg, fp, |raw| f(one(raw))),
            Repetition::Index(_) | Repetition::Where { .. } => {
                if let Some(raw) = msg.raw_in(seg, fp) {
                    f(one(raw))
                }
            }
        }
    }

    /// The instance of `t` whose context segment is nearest before or at the current
    /// context, else the first one made without `each`. Without a context, the first
    /// one. An instance whose segment comes after the context is never taken: a result
    /// before any order belongs to no order.
    fn nearest(&self, t: &'a str) -> Option<&'a Instance> {
        let mut known = self.nearest.0.get();
        for &(k, found) in known.iter().flatten() {
            if k == t {
                return found;
            }
        }
        let found = self.nearest_uncached(t);
        if let Some(free) = known.iter_mut().find(|e| e.is_none()) {
            *free = Some((t, found));
            self.nearest.0.set(known);
        }
        found
    }

    fn nearest_uncached(&self, t: &str) -> Option<&'a Instance> {
        let instances: &'a [Instance] = self.instances;
        let of_type = || instances.iter().filter(move |i| i.resource_type() == t);
        let Some(cur) = self.seg else {
            return of_type().next();
        };
        of_type()
            .filter(|i| i.seg.is_some_and(|s| s <= cur && self.same_patient(s)))
            .max_by_key(|i| i.seg.unwrap_or(0))
            .or_else(|| of_type().find(|i| i.seg.is_none()))
    }

    /// Instances of `t` whose context segment lies in the current context's group: from
    /// the context segment up to the next segment with the same name. Without a context,
    /// every instance of `t`.
    fn in_group<'s>(&'s self, t: &'s str) -> impl Iterator<Item = &'a Instance> + 's {
        let instances: &'a [Instance] = self.instances;
        let range = self.seg.map(|cur| {
            let name = self.msg.segment_code(cur);
            let end = (cur + 1..self.msg.segment_count())
                .find(|&i| self.msg.segment_code(i) == name || !self.same_patient(i));
            (cur, end.unwrap_or(usize::MAX))
        });
        instances.iter().filter(move |i| {
            i.resource_type() == t
                && match (range, i.seg) {
                    (None, _) => true,
                    (Some((start, end)), Some(s)) => s >= start && s < end,
                    (Some(_), None) => false,
                }
        })
    }
}

/// The tables the data type functions use, picked from a mapping directory's tables
/// once, at load.
#[derive(Clone, Debug, Default)]
pub struct DatatypeTables {
    coding_system: Option<Arc<Table>>,
    id_systems: Option<Arc<Table>>,
    name_use: Option<Arc<Table>>,
    address_use: Option<Arc<Table>>,
    telecom_use: Option<Arc<Table>>,
    telecom_system: Option<Arc<Table>>,
}

impl DatatypeTables {
    pub fn pick(tables: &TableMap) -> DatatypeTables {
        let t = |n: &str| tables.get(n).cloned();
        DatatypeTables {
            coding_system: t("v2_coding_system"),
            id_systems: t("id_systems"),
            name_use: t("v2_name_use"),
            address_use: t("v2_address_use"),
            telecom_use: t("v2_telecom_use"),
            telecom_system: t("v2_telecom_system"),
        }
    }

    /// What the data type functions read.
    pub fn get(&self) -> datatypes::Tables<'_> {
        datatypes::Tables {
            coding_system: self.coding_system.as_deref(),
            id_systems: self.id_systems.as_deref(),
            name_use: self.name_use.as_deref(),
            address_use: self.address_use.as_deref(),
            telecom_use: self.telecom_use.as_deref(),
            telecom_system: self.telecom_system.as_deref(),
        }
    }
}

/// The first HL7 path an expression reads (in the order it is written, through
/// `[let]` names): the segment `all(EXPR)` goes through.
pub(super) fn first_path(e: &Expr) -> Option<&Path> {
    match e {
        Expr::Path { path, .. } => Some(path),
        Expr::Call(c) => c.args.iter().find_map(first_path),
        Expr::Let(l) => first_path(&l.expr),
        Expr::Str(_) | Expr::Num(_) | Expr::Bool(_) | Expr::Name { .. } => None,
    }
}

fn is_all(path: &crate::hl7::Path) -> bool {
    path.field
        .is_some_and(|f| f.repetition == crate::hl7::Repetition::All)
}

/// A list for `[*]` paths (absent when every item is), else the first item.
fn collect(items: Vec<Value<'_>>, all: bool) -> Value<'_> {
    if all {
        if items.iter().all(Value::is_absent) {
            Value::Absent
        } else {
            Value::List(items)
        }
    } else {
        items.into_iter().next().unwrap_or(Value::Absent)
    }
}

/// A run-time error of call `c`, led by its text.
#[cold]
fn failed(c: &Call, msg: String) -> String {
    format!("{}: {msg}", c.text)
}

fn owned<'a>(s: String) -> Value<'a> {
    Value::Str(Cow::Owned(s))
}

fn reference(i: &Instance) -> Value<'_> {
    Value::Ref(&i.reference)
}
