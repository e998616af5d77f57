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
use super::functions;
use super::tables::Table;

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
    pub fn raw(text: &'a str, part: Option<char>, sub: Option<char>) -> Parts<'a> {
        let mut cuts = [0u32; CUTS];
        let mut n = 0;
        let mut more = false;
        // Delimiters are ASCII (see `Delimiters`), so their byte offsets are character
        // boundaries.
        if let Some(b) = part.filter(char::is_ascii).map(|c| c as u8) {
            let mut from = 0;
            while let Some(i) = crate::hl7::find_byte3(text.as_bytes(), from, b, b, b) {
                if n == CUTS {
                    more = true;
                    break;
                }
                cuts[n] = i as u32;
                n += 1;
                from = i + 1;
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

fn put<'a>(m: &mut Members<'a>, k: &'a str, v: Option<Cow<'a, str>>) {
    if let Some(v) = v.and_then(trimmed) {
        m.push((k, Value::Str(v)));
    }
}

fn done(m: Members<'_>) -> Option<Value<'_>> {
    (!m.is_empty()).then_some(Value::Obj(m))
}

/// Texts as a list member; nothing when there are none.
fn list<'a>(m: &mut Members<'a>, k: &'a str, items: impl Iterator<Item = Cow<'a, str>>) {
    let items: Vec<Value<'a>> = items.map(Value::Str).collect();
    if !items.is_empty() {
        m.push((k, Value::List(items)));
    }
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
pub fn human_name<'a>(p: &Parts<'a>, t: &Tables<'a>) -> Option<Value<'a>> {
    let mut m = Members::with_capacity(5);
    put(&mut m, "use", look(t.name_use, p.get(7)));
    put(&mut m, "family", p.text(1));
    list(
        &mut m,
        "given",
        [p.text(2), p.text(3)].into_iter().flatten(),
    );
    list(
        &mut m,
        "prefix",
        [p.text(5), p.text(6)].into_iter().flatten(),
    );
    list(&mut m, "suffix", p.text(4).into_iter());
    done(m)
}

/// XAD → Address: line (1.1, 2), city (3), state (4), postalCode (5), country (6),
/// use (7), district (9).
pub fn address<'a>(p: &Parts<'a>, t: &Tables<'a>) -> Option<Value<'a>> {
    let mut m = Members::with_capacity(7);
    put(&mut m, "use", look(t.address_use, p.get(7)));
    list(
        &mut m,
        "line",
        [p.text(1), p.text(2)]
            .into_iter()
            .flatten()
            .filter_map(trimmed),
    );
    put(&mut m, "city", p.text(3));
    put(&mut m, "district", p.text(9));
    put(&mut m, "state", p.text(4));
    put(&mut m, "postalCode", p.text(5));
    put(&mut m, "country", p.text(6));
    done(m)
}

/// XTN → ContactPoint: system from component 3 (equipment type), value from 4 (e-mail)
/// or 12 (unformatted), else 1, else built from 5-7 (country, area, local number; any of
/// area and local) and 8 (extension); use from component 2.
pub fn contact_point<'a>(p: &Parts<'a>, t: &Tables<'a>) -> Option<Value<'a>> {
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
    let value = value?;
    let mut m = Members::with_capacity(3);
    put(&mut m, "system", system.or(Some(Cow::Borrowed("phone"))));
    put(&mut m, "value", Some(value));
    put(&mut m, "use", look(t.telecom_use, p.get(2)));
    done(m)
}

/// CX → Identifier: value (1), system from the assigning authority (4.1 through
/// `id_systems`, else 4.2 as an OID), type (5).
pub fn identifier<'a>(p: &Parts<'a>, t: &Tables<'a>) -> Option<Value<'a>> {
    let value = p.text(1)?;
    let mut m = Members::with_capacity(3);
    let system = look(t.id_systems, p.sub(4, 1)).or_else(|| match (p.sub(4, 2), p.sub(4, 3)) {
        (Some(oid), Some("ISO")) => Some(Cow::Owned(format!("urn:oid:{oid}"))),
        _ => None,
    });
    if let Some(code) = p.text(5) {
        let mut coding = Members::with_capacity(2);
        put(
            &mut coding,
            "system",
            Some(Cow::Borrowed(
                "http://terminology.hl7.org/CodeSystem/v2-0203",
            )),
        );
        put(&mut coding, "code", Some(code));
        m.push((
            "type",
            Value::Obj(vec![("coding", Value::List(vec![Value::Obj(coding)]))]),
        ));
    }
    put(&mut m, "system", system);
    put(&mut m, "value", Some(value));
    done(m)
}

/// CWE/CE → CodeableConcept: codings from components 1-3 and 4-6 (systems through
/// `v2_coding_system`), text from 9, else the first display.
pub fn codeable_concept<'a>(p: &Parts<'a>, t: &Tables<'a>) -> Option<Value<'a>> {
    let mut codings = Vec::new();
    for base in [1, 4] {
        let Some(code) = p.text(base) else {
            continue;
        };
        let mut c = Members::with_capacity(3);
        put(&mut c, "system", look(t.coding_system, p.get(base + 2)));
        put(&mut c, "code", Some(code));
        put(&mut c, "display", p.text(base + 1));
        codings.push(Value::Obj(c));
    }
    let mut m = Members::with_capacity(2);
    if !codings.is_empty() {
        m.push(("coding", Value::List(codings)));
    }
    let text = p
        .text(9)
        .or_else(|| p.get(1).is_none().then(|| p.text(2)).flatten());
    put(&mut m, "text", text);
    done(m)
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
}
