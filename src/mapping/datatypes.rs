//! HL7 v2 data types to FHIR R4 data types: XPN → HumanName, XAD → Address,
//! XTN → ContactPoint, CX → Identifier, CWE/CE → CodeableConcept, NM/SN → Quantity.
//!
//! Each function takes one selected piece of a message (a field repetition, or one
//! component when the path names a component) already split into its parts, and builds
//! the FHIR element, leaving out what is absent. Code systems (CWE component 3 and 6) and
//! identifier systems (CX component 4.1) go through the operator's lookup tables
//! `v2_coding_system` and `id_systems`; a code without a table row keeps no system.

use std::borrow::Cow;

use super::eval::Value;
use super::functions::{self, fid};
use super::tables::Table;
use crate::record::Builder;

/// One selected piece seen as parts (components, or subcomponents of a component), each
/// part made of subparts; empty and `""` read as `None`. Text without escapes is split
/// only when a part is asked for and borrows from the message; text with escapes is
/// split and decoded once, up front.
pub struct Parts<'a>(Inner<'a>);

enum Inner<'a> {
    Raw {
        text: &'a str,
        part: Option<char>,
        sub: Option<char>,
        /// Byte offsets of the first [`CUTS`] part separators, found in one pass.
        cuts: [u32; CUTS],
        /// How many of `cuts` are set.
        n: usize,
        /// There are more separators than `cuts` holds (parts past them are searched).
        more: bool,
    },
    Decoded(Vec<Vec<Option<Cow<'a, str>>>>),
}

/// Part separators remembered per piece; XPN, XAD, XTN, CX and CWE have fewer parts.
const CUTS: usize = 24;

impl<'a> Parts<'a> {
    /// `text` (escape-free) split on `part` and each part on `sub`.
    pub fn raw(text: &'a str, part: Option<char>, mut sub: Option<char>) -> Parts<'a> {
        let mut cuts = [0u32; CUTS];
        let mut n = 0;
        let mut more = false;
        // Delimiters are ASCII (see `Delimiters`), so their byte offsets are character
        // boundaries.
        if let Some(b) = part.filter(char::is_ascii).map(|c| c as u8) {
            // The same pass looks for the subpart separator: without one, no part is
            // searched for it again.
            let s = sub.filter(char::is_ascii).map_or(b, |c| c as u8);
            let mut subs = false;
            let mut from = 0;
            while let Some(i) = crate::hl7::find_byte3(text.as_bytes(), from, b, s, s) {
                from = i + 1;
                if text.as_bytes()[i] != b {
                    subs = true;
                    continue;
                }
                if n == CUTS {
                    more = true;
                    break;
                }
                cuts[n] = i as u32;
                n += 1;
            }
            if !subs && !more && s != b {
                sub = None;
            }
        } else if let Some(c) = part {
            more = text.contains(c);
        }
        Parts(Inner::Raw {
            text,
            part,
            sub,
            cuts,
            n,
            more,
        })
    }

    /// Parts already split and decoded.
    pub fn decoded(parts: Vec<Vec<Option<Cow<'a, str>>>>) -> Parts<'a> {
        Parts(Inner::Decoded(parts))
    }

    /// How many parts there are.
    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Raw {
                text,
                part,
                n,
                more,
                ..
            } => match part {
                Some(c) if *more => text.matches(*c).count() + 1,
                _ => n + 1,
            },
            Inner::Decoded(parts) => parts.len(),
        }
    }

    /// Part `i` (1-based), its first subpart.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.sub(i, 1)
    }

    /// Subpart `j` of part `i` (both 1-based).
    pub fn sub(&self, i: usize, j: usize) -> Option<&str> {
        match &self.0 {
            Inner::Raw { .. } => self.raw_sub(i, j),
            Inner::Decoded(parts) => parts
                .get(i.checked_sub(1)?)?
                .get(j.checked_sub(1)?)?
                .as_deref(),
        }
    }

    /// Part `i`'s first subpart as text for a resource: borrowed from the message
    /// where it has no escapes.
    pub fn text(&self, i: usize) -> Option<Cow<'a, str>> {
        match &self.0 {
            Inner::Raw { .. } => self.raw_sub(i, 1).map(Cow::Borrowed),
            Inner::Decoded(parts) => parts.get(i.checked_sub(1)?)?.first()?.clone(),
        }
    }

    /// [`Parts::sub`] of escape-free text, borrowing from the message.
    fn raw_sub(&self, i: usize, j: usize) -> Option<&'a str> {
        let Inner::Raw {
            text,
            part,
            sub,
            cuts,
            n,
            more,
        } = &self.0
        else {
            return None;
        };
        let text: &'a str = text;
        let k = i.checked_sub(1)?;
        let p = if k <= *n && !(*more && k == *n) {
            let start = if k == 0 { 0 } else { cuts[k - 1] as usize + 1 };
            let end = if k < *n { cuts[k] as usize } else { text.len() };
            &text[start..end]
        } else if *more {
            crate::hl7::piece(text, *part, i)?
        } else {
            return None;
        };
        let s = crate::hl7::piece(p, *sub, j)?;
        (!s.is_empty() && s != "\"\"").then_some(s)
    }
}

/// An object's members as a data type function builds them.
type Members<'a> = Vec<(&'a str, Value<'a>)>;

/// `v` without surrounding white space; `None` when nothing is left.
fn trimmed(v: Cow<'_, str>) -> Option<Cow<'_, str>> {
    match v {
        Cow::Borrowed(b) => Some(functions::trim(b))
            .filter(|t| !t.is_empty())
            .map(Cow::Borrowed),
        Cow::Owned(o) => {
            let t = functions::trim(&o);
            if t.is_empty() {
                None
            } else if t.len() == o.len() {
                Some(Cow::Owned(o))
            } else {
                Some(Cow::Owned(t.to_string()))
            }
        }
    }
}

/// Where a data type function puts what it builds, member by member in order: a value
/// ([`ValueSink`], for expressions) or a record's nodes ([`crate::record::Builder`],
/// written straight into the resource). The function is written once for both.
pub(crate) trait Sink<'a> {
    /// A text member; nothing when it is absent or blank.
    fn text(&mut self, k: &'a str, v: Option<Cow<'a, str>>);
    /// A list of texts as a member; nothing when there are none.
    fn texts<I: Iterator<Item = Cow<'a, str>>>(&mut self, k: &'a str, items: I);
    /// An object begins: a member (closed by [`Sink::end_member`]) or an item of the
    /// list begun last ([`Sink::end_item`]).
    fn begin(&mut self);
    fn end_member(&mut self, k: &'a str);
    fn begin_list(&mut self);
    fn end_item(&mut self);
    /// The list begun last, as a member; nothing when it has no items.
    fn end_list(&mut self, k: &'a str);
}

/// Builds the value as the functions always have: objects and lists as they are made
/// (an object begun is kept even when nothing was put into it).
#[derive(Default)]
pub(crate) struct ValueSink<'a> {
    members: Members<'a>,
    open: Vec<Open<'a>>,
}

enum Open<'a> {
    Obj(Members<'a>),
    List(Vec<Value<'a>>),
}

impl<'a> ValueSink<'a> {
    fn top(&mut self) -> &mut Members<'a> {
        match self.open.last_mut() {
            Some(Open::Obj(m)) => m,
            _ => &mut self.members,
        }
    }

    /// The object built; `None` when nothing was put into it.
    pub(crate) fn finish(self) -> Option<Value<'a>> {
        (!self.members.is_empty()).then_some(Value::Obj(self.members))
    }
}

impl<'a> Sink<'a> for ValueSink<'a> {
    fn text(&mut self, k: &'a str, v: Option<Cow<'a, str>>) {
        put(self.top(), k, v);
    }

    fn texts<I: Iterator<Item = Cow<'a, str>>>(&mut self, k: &'a str, items: I) {
        let items: Vec<Value<'a>> = items.map(Value::Str).collect();
        if !items.is_empty() {
            self.top().push((k, Value::List(items)));
        }
    }

    fn begin(&mut self) {
        self.open.push(Open::Obj(Members::new()));
    }

    fn end_member(&mut self, k: &'a str) {
        if let Some(Open::Obj(m)) = self.open.pop() {
            self.top().push((k, Value::Obj(m)));
        }
    }

    fn begin_list(&mut self) {
        self.open.push(Open::List(Vec::new()));
    }

    fn end_item(&mut self) {
        if let Some(Open::Obj(m)) = self.open.pop() {
            if let Some(Open::List(items)) = self.open.last_mut() {
                items.push(Value::Obj(m));
            }
        }
    }

    fn end_list(&mut self, k: &'a str) {
        if let Some(Open::List(items)) = self.open.pop() {
            if !items.is_empty() {
                self.top().push((k, Value::List(items)));
            }
        }
    }
}

fn put<'a>(m: &mut Members<'a>, k: &'a str, v: Option<Cow<'a, str>>) {
    if let Some(v) = v.and_then(trimmed) {
        m.push((k, Value::Str(v)));
    }
}

fn done(m: Members<'_>) -> Option<Value<'_>> {
    (!m.is_empty()).then_some(Value::Obj(m))
}

/// Writes straight into a record: what [`crate::mapping::output::emit_value`] writes for
/// the value a [`ValueSink`] builds (empty objects and lists left out).
pub(crate) struct BuilderSink<'b> {
    pub(crate) b: &'b mut Builder,
    /// Where each object or list begun starts (the functions nest three deep at most).
    marks: [usize; 4],
    depth: usize,
}

impl<'b> BuilderSink<'b> {
    pub(crate) fn new(b: &'b mut Builder) -> BuilderSink<'b> {
        BuilderSink {
            b,
            marks: [0; 4],
            depth: 0,
        }
    }

    fn open(&mut self) {
        self.marks[self.depth] = self.b.mark();
        self.depth += 1;
    }

    fn close(&mut self) -> usize {
        self.depth -= 1;
        self.marks[self.depth]
    }
}

impl<'a> Sink<'a> for BuilderSink<'_> {
    fn text(&mut self, k: &'a str, v: Option<Cow<'a, str>>) {
        if let Some(v) = v.and_then(trimmed) {
            self.b.string(&v);
            self.b.key(k);
        }
    }

    fn texts<I: Iterator<Item = Cow<'a, str>>>(&mut self, k: &'a str, items: I) {
        let mark = self.b.mark();
        for item in items.filter(|t| !t.is_empty()) {
            self.b.string(&item);
        }
        if self.b.close_array(mark) {
            self.b.key(k);
        }
    }

    fn begin(&mut self) {
        self.open();
    }

    fn end_member(&mut self, k: &'a str) {
        let mark = self.close();
        if self.b.close_object(mark) {
            self.b.key(k);
        }
    }

    fn begin_list(&mut self) {
        self.open();
    }

    fn end_item(&mut self) {
        let mark = self.close();
        self.b.close_object(mark);
    }

    fn end_list(&mut self, k: &'a str) {
        let mark = self.close();
        if self.b.close_array(mark) {
            self.b.key(k);
        }
    }
}

/// The data type functions that build an object from one piece, by number.
pub(crate) const OBJECT_FUNCTIONS: [u8; 5] = [
    fid::HUMAN_NAME,
    fid::ADDRESS,
    fid::CONTACT_POINT,
    fid::IDENTIFIER,
    fid::CODEABLE_CONCEPT,
];

/// Data type function `f` (one of [`OBJECT_FUNCTIONS`]) of piece `p`, into `s`.
pub(crate) fn write<'a>(f: u8, p: &Parts<'a>, t: &Tables<'a>, s: &mut impl Sink<'a>) {
    match f {
        fid::HUMAN_NAME => human_name(p, t, s),
        fid::ADDRESS => address(p, t, s),
        fid::CONTACT_POINT => contact_point(p, t, s),
        fid::IDENTIFIER => identifier(p, t, s),
        _ => codeable_concept(p, t, s),
    }
}

/// Data type function `f` of piece `p` as a value; `None` when it builds nothing.
pub(crate) fn build<'a>(f: u8, p: &Parts<'a>, t: &Tables<'a>) -> Option<Value<'a>> {
    let mut sink = ValueSink::default();
    write(f, p, t, &mut sink);
    sink.finish()
}

/// Tables the data type functions read, when the mapping directory has them.
pub struct Tables<'a> {
    pub coding_system: Option<&'a Table>,
    pub id_systems: Option<&'a Table>,
    pub name_use: Option<&'a Table>,
    pub address_use: Option<&'a Table>,
    pub telecom_use: Option<&'a Table>,
    pub telecom_system: Option<&'a Table>,
}

fn look<'t>(t: Option<&'t Table>, code: Option<&str>) -> Option<Cow<'t, str>> {
    t?.get(functions::trim(code?)).map(Cow::Borrowed)
}

/// The system of UCUM units.
const UCUM: &str = "http://unitsofmeasure.org";

/// XPN → HumanName: family (1.1), given (2, 3), suffix (4), prefix (5, 6), use (7).
fn human_name<'a>(p: &Parts<'a>, t: &Tables<'a>, s: &mut impl Sink<'a>) {
    s.text("use", look(t.name_use, p.get(7)));
    s.text("family", p.text(1));
    s.texts("given", [p.text(2), p.text(3)].into_iter().flatten());
    s.texts("prefix", [p.text(5), p.text(6)].into_iter().flatten());
    s.texts("suffix", p.text(4).into_iter());
}

/// XAD → Address: line (1.1, 2), city (3), state (4), postalCode (5), country (6),
/// use (7), district (9).
fn address<'a>(p: &Parts<'a>, t: &Tables<'a>, s: &mut impl Sink<'a>) {
    s.text("use", look(t.address_use, p.get(7)));
    s.texts(
        "line",
        [p.text(1), p.text(2)]
            .into_iter()
            .flatten()
            .filter_map(trimmed),
    );
    s.text("city", p.text(3));
    s.text("district", p.text(9));
    s.text("state", p.text(4));
    s.text("postalCode", p.text(5));
    s.text("country", p.text(6));
}

/// XTN → ContactPoint: system from component 3 (equipment type), value from 4 (e-mail)
/// or 12 (unformatted), else 1, else built from 5-7 (country, area, local number; any of
/// area and local) and 8 (extension); use from component 2.
fn contact_point<'a>(p: &Parts<'a>, t: &Tables<'a>, s: &mut impl Sink<'a>) {
    let equipment = p.get(3);
    let system = look(t.telecom_system, equipment);
    let value = if system.as_deref() == Some("email") || equipment == Some("Internet") {
        p.text(4).or(p.text(1))
    } else {
        p.text(12).or(p.text(1)).or_else(|| {
            // +country area local ext. extension, from whichever parts are sent.
            let mut parts = Vec::new();
            if let Some(c) = p.get(5) {
                parts.push(format!("+{}", c.trim_start_matches('+')));
            }
            parts.extend(
                [p.get(6), p.get(7)]
                    .into_iter()
                    .flatten()
                    .map(str::to_string),
            );
            if parts.len() == usize::from(p.get(5).is_some()) {
                return None;
            }
            if let Some(x) = p.get(8) {
                parts.push(format!("ext. {x}"));
            }
            Some(Cow::Owned(parts.join(" ")))
        })
    };
    let Some(value) = value else {
        return;
    };
    s.text("system", system.or(Some(Cow::Borrowed("phone"))));
    s.text("value", Some(value));
    s.text("use", look(t.telecom_use, p.get(2)));
}

/// CX → Identifier: value (1), system from the assigning authority (4.1 through
/// `id_systems`, else 4.2 as an OID), type (5).
fn identifier<'a>(p: &Parts<'a>, t: &Tables<'a>, s: &mut impl Sink<'a>) {
    let Some(value) = p.text(1) else {
        return;
    };
    let system = look(t.id_systems, p.sub(4, 1)).or_else(|| match (p.sub(4, 2), p.sub(4, 3)) {
        (Some(oid), Some("ISO")) => Some(Cow::Owned(format!("urn:oid:{oid}"))),
        _ => None,
    });
    if let Some(code) = p.text(5) {
        s.begin();
        s.begin_list();
        s.begin();
        s.text(
            "system",
            Some(Cow::Borrowed(
                "http://terminology.hl7.org/CodeSystem/v2-0203",
            )),
        );
        s.text("code", Some(code));
        s.end_item();
        s.end_list("coding");
        s.end_member("type");
    }
    s.text("system", system);
    s.text("value", Some(value));
}

/// CWE/CE → CodeableConcept: codings from components 1-3 and 4-6 (systems through
/// `v2_coding_system`), text from 9, else the first display.
fn codeable_concept<'a>(p: &Parts<'a>, t: &Tables<'a>, s: &mut impl Sink<'a>) {
    s.begin_list();
    for base in [1, 4] {
        let Some(code) = p.text(base) else {
            continue;
        };
        s.begin();
        s.text("system", look(t.coding_system, p.get(base + 2)));
        s.text("code", Some(code));
        s.text("display", p.text(base + 1));
        s.end_item();
    }
    s.end_list("coding");
    let text = p
        .text(9)
        .or_else(|| p.get(1).is_none().then(|| p.text(2)).flatten());
    s.text("text", text);
}

/// A number (NM) or structured numeric (SN: comparator^num1^separator^num2) with units
/// (a CWE: code 1, text 2) → Quantity. A ratio or range SN (num2 present) is not a
/// quantity: `None` (map it with `valueString` or `valueRange`).
pub fn quantity<'a>(
    value: &Parts<'a>,
    units: Option<&Parts<'a>>,
    t: &Tables<'a>,
) -> Result<Option<Value<'a>>, String> {
    let (comparator, number) = if value.len() >= 2 {
        if value.get(4).is_some() {
            return Ok(None);
        }
        (value.text(1), value.text(2))
    } else {
        (None, value.text(1))
    };
    let Some(number) = number else {
        return Ok(None);
    };
    let n = super::functions::decimal_text(number)?;
    let mut m = Members::with_capacity(5);
    m.push(("value", Value::Num(n)));
    if let Some(c) = comparator.filter(|c| matches!(&**c, "<" | ">" | "<=" | ">=")) {
        put(&mut m, "comparator", Some(c));
    }
    if let Some(u) = units {
        let code = u.text(1);
        put(&mut m, "unit", u.text(2).or_else(|| code.clone()));
        // The units' coding system (component 3): UCUM when they name none or UCUM;
        // else the alternate code (4) when its system (6) is UCUM; else component 3
        // through the coding-system table, and without a system no code.
        let ucum = |s: Option<&str>| s.is_some_and(|s| s.trim().eq_ignore_ascii_case("UCUM"));
        let (system, code) = match u.get(3) {
            None => (Some(Cow::Borrowed(UCUM)), code),
            s if ucum(s) => (Some(Cow::Borrowed(UCUM)), code),
            _ if ucum(u.get(6)) && u.get(4).is_some() => (Some(Cow::Borrowed(UCUM)), u.text(4)),
            named => (look(t.coding_system, named), code),
        };
        if let (Some(system), Some(code)) = (system, code) {
            put(&mut m, "system", Some(system));
            put(&mut m, "code", Some(code));
        }
    }
    Ok(done(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Parts::decoded` holds for escape-free `text`: split on `part`, then `sub`.
    fn eager<'a>(text: &'a str, part: Option<char>, sub: Option<char>) -> Parts<'a> {
        let split = |t: &'a str, c: Option<char>| -> Vec<&'a str> {
            match c {
                Some(c) => t.split(c).collect(),
                None => vec![t],
            }
        };
        let opt = |s: &'a str| (!s.is_empty() && s != "\"\"").then_some(Cow::Borrowed(s));
        Parts::decoded(
            split(text, part)
                .into_iter()
                .map(|p| split(p, sub).into_iter().map(opt).collect())
                .collect(),
        )
    }

    #[test]
    fn split_when_asked_agrees_with_split_up_front() {
        let long: String = (1..=30)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join("^");
        let texts = [
            "",
            "x",
            "Nguyễn&Thị^Ngọc^^Đ&\"\"&3^\"\"",
            "^^^^",
            "a&b&c",
            long.as_str(),
        ];
        for text in texts {
            for (part, sub) in [(Some('^'), Some('&')), (Some('&'), None), (None, None)] {
                let (lazy, want) = (Parts::raw(text, part, sub), eager(text, part, sub));
                assert_eq!(lazy.len(), want.len(), "{text:?} {part:?}");
                for i in 0..=32 {
                    for j in 0..=4 {
                        assert_eq!(lazy.sub(i, j), want.sub(i, j), "{text:?} {part:?} {i}.{j}");
                    }
                }
            }
        }
    }

    /// Every data type function writes into a record (`BuilderSink`, a fragment then
    /// copied, or its members opened) exactly what writing the value it builds
    /// (`ValueSink`) puts there, and writes nothing exactly when that value puts
    /// nothing; over 20,000 random pieces with blanks, `""`, spaces, repeats of the
    /// separators and codes the tables know.
    #[test]
    fn written_ahead_is_the_value_written() {
        use crate::mapping::output::emit_value;
        let table = |text: &str| {
            let mut diags = Vec::new();
            let t = Table::parse(std::path::Path::new("t.csv"), text, &mut diags);
            assert!(diags.is_empty());
            t
        };
        let systems = table("code,value\nLN,http://loinc.org\nAUTH,urn:auth\n");
        let uses = table("code,value\nH,home\nL,official\nPRN,home\nNET,email\n");
        let t = Tables {
            coding_system: Some(&systems),
            id_systems: Some(&systems),
            name_use: Some(&uses),
            address_use: Some(&uses),
            telecom_use: Some(&uses),
            telecom_system: Some(&uses),
        };
        let words = [
            "", "", "a", " ", "  b ", "\"\"", "LN", "AUTH", "H", "L", "NET", "ISO", "Ổ", "1.2.3",
            "^", "&", "Internet",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut side, mut out) = (Builder::new(), Builder::new());
        let mut written = 0;
        // Written as a member after others (so the copy lands past the start of the
        // record's text and nodes), whole or opened with a member of its own after.
        let record = |b: &mut Builder, put: &mut dyn FnMut(&mut Builder) -> bool, open: bool| {
            let mark = b.mark();
            let inner = b.mark();
            b.string("v");
            b.key("k");
            b.close_object(inner);
            b.key("before");
            if open {
                let mark = b.mark();
                put(b);
                b.string("after");
                b.key("zz");
                b.close_object(mark);
                b.key("x");
            } else if put(b) {
                b.key("x");
            }
            b.close_object(mark);
            b.finish().expect("a record")
        };
        for round in 0..20_000 {
            let text: String = (0..next(14))
                .map(|_| words[next(words.len() as u64) as usize])
                .collect();
            let (part, sub) = if round % 3 == 0 {
                (Some('&'), None)
            } else {
                (Some('^'), Some('&'))
            };
            // Fragments pile up in the side builder over a round, so each lands at
            // offsets of its own there too.
            side.clear();
            for p in [Parts::raw(&text, part, sub), eager(&text, part, sub)] {
                for f in OBJECT_FUNCTIONS {
                    let value = build(f, &p, &t);
                    let start = side.fragment_start();
                    write(f, &p, &t, &mut BuilderSink::new(&mut side));
                    let fragment = side.end_fragment(start);
                    let want = record(
                        &mut out,
                        &mut |b| value.as_ref().is_some_and(|v| emit_value(v, b)),
                        false,
                    );
                    let got = record(
                        &mut out,
                        &mut |b| match &fragment {
                            Some(fr) => {
                                b.fragment(&side, fr);
                                true
                            }
                            None => false,
                        },
                        false,
                    );
                    // The same nodes and text, not only the same JSON.
                    assert_eq!(got, want, "{f} {text:?}");
                    if let (Some(Value::Obj(members)), Some(fr)) = (&value, &fragment) {
                        let want = record(
                            &mut out,
                            &mut |b| {
                                for (k, m) in members {
                                    if emit_value(m, b) {
                                        b.key(k);
                                    }
                                }
                                true
                            },
                            true,
                        );
                        let got = record(
                            &mut out,
                            &mut |b| {
                                b.fragment_members(&side, fr);
                                true
                            },
                            true,
                        );
                        assert_eq!(got, want, "opened {f} {text:?}");
                        let keys: Vec<&str> = side.fragment_keys(fr).collect();
                        let present: Vec<&str> = members
                            .iter()
                            .filter(|(_, m)| m.present())
                            .map(|(k, _)| *k)
                            .collect();
                        assert_eq!(keys, present, "{f} {text:?}");
                        written += 1;
                    }
                }
            }
        }
        assert!(written > 40_000, "{written}");
    }
}
