//! The fixed function library: names, arities, and the pure value functions (dates,
//! numbers, text). Functions that need the message or the run (paths, `ref`, `refs`,
//! `lookup`) are evaluated in `eval`.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::eval::Value;

/// A function of the library and how many arguments it takes.
pub struct FunctionSpec {
    pub name: &'static str,
    pub min: usize,
    /// `None`: no upper limit.
    pub max: Option<usize>,
}

const fn f(name: &'static str, min: usize, max: Option<usize>) -> FunctionSpec {
    FunctionSpec { name, min, max }
}

pub const FUNCTIONS: &[FunctionSpec] = &[
    f("exists", 1, Some(1)),
    f("eq", 2, Some(2)),
    f("in", 2, None),
    f("not", 1, Some(1)),
    f("if", 2, Some(3)),
    f("coalesce", 1, None),
    f("date", 1, Some(1)),
    f("datetime", 1, Some(2)),
    f("decimal", 1, Some(1)),
    f("integer", 1, Some(1)),
    f("trim", 1, Some(1)),
    f("upper", 1, Some(1)),
    f("lower", 1, Some(1)),
    f("concat", 1, None),
    f("split", 2, Some(2)),
    f("join", 2, Some(2)),
    f("lookup", 2, Some(3)),
    f("hash", 1, None),
    f("ref", 1, Some(3)),
    f("refs", 1, Some(1)),
    f("required", 1, Some(2)),
    f("default", 2, Some(2)),
    f("matches", 2, Some(2)),
    f("human_name", 1, Some(1)),
    f("address", 1, Some(1)),
    f("contact_point", 1, Some(1)),
    f("identifier", 1, Some(1)),
    f("codeable_concept", 1, Some(1)),
    f("quantity", 1, Some(2)),
    f("all", 1, Some(3)),
    f("template", 1, None),
    f("base64", 1, Some(1)),
    f("facility", 0, Some(0)),
    f("ed_data", 2, Some(2)),
    f("rank", 1, None),
    f("alike", 1, None),
];

/// Standard base64 with padding (RFC 4648), for FHIR `base64Binary`.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Functions whose arguments must all be HL7 paths (they read the data type's parts).
pub const PATH_ARGUMENT_FUNCTIONS: &[&str] = &[
    "all",
    "human_name",
    "address",
    "contact_point",
    "identifier",
    "codeable_concept",
    "quantity",
];

/// The data of an HL7 ED (encapsulated data) value as standard base64, by its encoding
/// (ED component 4, any case): `Base64` as sent, `Hex` decoded (ASCII white space
/// between digits skipped), `A` (text as it is) encoded. `None` for another encoding,
/// which cannot be converted; an error for `Hex` data that is not pairs of hexadecimal
/// digits.
pub fn ed_data<'a>(data: Cow<'a, str>, encoding: &str) -> Result<Option<Cow<'a, str>>, String> {
    let encoding = trim(encoding);
    if encoding.eq_ignore_ascii_case("base64") {
        return Ok(Some(data));
    }
    if encoding.eq_ignore_ascii_case("a") {
        return Ok(Some(Cow::Owned(base64(data.as_bytes()))));
    }
    if !encoding.eq_ignore_ascii_case("hex") {
        return Ok(None);
    }
    let hex = data.as_bytes();
    if let Some(i) = hex
        .iter()
        .position(|c| !c.is_ascii_hexdigit() && !c.is_ascii_whitespace())
    {
        // Quoted as text, so that the API hides it with the other quoted values.
        let ch: String = data[i..].chars().take(1).collect();
        return Err(format!(
            "the data is not hexadecimal: {ch:?} at character {}",
            data[..i].chars().count() + 1
        ));
    }
    let digits: Vec<u8> = hex
        .iter()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|&c| match c {
            b'0'..=b'9' => c - b'0',
            _ => (c | 0x20) - b'a' + 10,
        })
        .collect();
    if digits.len() % 2 == 1 {
        return Err(format!(
            "the data is not hexadecimal: an odd number of digits ({})",
            digits.len()
        ));
    }
    let bytes: Vec<u8> = digits
        .chunks_exact(2)
        .map(|pair| (pair[0] << 4) | pair[1])
        .collect();
    Ok(Some(Cow::Owned(base64(&bytes))))
}

/// `*` matches any run of characters, `?` one character; the rest literally, ignoring
/// ASCII case (the same rule as route patterns).
pub fn glob(pattern: &str, text: &str) -> bool {
    crate::routes::glob(pattern, text)
}

/// Function numbers: the index in [`FUNCTIONS`], fixed when an expression is parsed so
/// evaluation dispatches on a number, not on the name.
pub mod fid {
    pub const EXISTS: u8 = 0;
    pub const EQ: u8 = 1;
    pub const IN: u8 = 2;
    pub const NOT: u8 = 3;
    pub const IF: u8 = 4;
    pub const COALESCE: u8 = 5;
    pub const DATE: u8 = 6;
    pub const DATETIME: u8 = 7;
    pub const DECIMAL: u8 = 8;
    pub const INTEGER: u8 = 9;
    pub const TRIM: u8 = 10;
    pub const UPPER: u8 = 11;
    pub const LOWER: u8 = 12;
    pub const CONCAT: u8 = 13;
    pub const SPLIT: u8 = 14;
    pub const JOIN: u8 = 15;
    pub const LOOKUP: u8 = 16;
    pub const HASH: u8 = 17;
    pub const REF: u8 = 18;
    pub const REFS: u8 = 19;
    pub const REQUIRED: u8 = 20;
    pub const DEFAULT: u8 = 21;
    pub const MATCHES: u8 = 22;
    pub const HUMAN_NAME: u8 = 23;
    pub const ADDRESS: u8 = 24;
    pub const CONTACT_POINT: u8 = 25;
    pub const IDENTIFIER: u8 = 26;
    pub const CODEABLE_CONCEPT: u8 = 27;
    pub const QUANTITY: u8 = 28;
    pub const ALL: u8 = 29;
    pub const TEMPLATE: u8 = 30;
    pub const BASE64: u8 = 31;
    pub const FACILITY: u8 = 32;
    pub const ED_DATA: u8 = 33;
    pub const RANK: u8 = 34;
    pub const ALIKE: u8 = 35;
    /// Not a function of the library (refused by validation before any run).
    pub const UNKNOWN: u8 = u8::MAX;
}

/// The number of function `name`, or [`fid::UNKNOWN`].
pub fn id_of(name: &str) -> u8 {
    FUNCTIONS
        .iter()
        .position(|s| s.name == name)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(fid::UNKNOWN)
}

pub fn spec(name: &str) -> Option<&'static FunctionSpec> {
    FUNCTIONS.iter().find(|s| s.name == name)
}

impl FunctionSpec {
    /// "takes 1 argument", "takes 2 or 3 arguments", "takes at least 1 argument".
    pub fn arity_text(&self) -> String {
        let plural = |n: usize| if n == 1 { "argument" } else { "arguments" };
        match self.max {
            Some(max) if max == self.min => format!("takes {} {}", max, plural(max)),
            Some(max) if max == self.min + 1 => format!("takes {} or {} arguments", self.min, max),
            Some(max) => format!("takes {} to {} arguments", self.min, max),
            None => format!("takes at least {} {}", self.min, plural(self.min)),
        }
    }
}

/// `s.trim()`, without walking characters when `s` starts and ends with a printable
/// ASCII byte (nearly every field value), the case that needs no trimming.
pub fn trim(s: &str) -> &str {
    let plain = |b: Option<&u8>| b.is_some_and(|&b| b > b' ' && b < 0x7F);
    if plain(s.as_bytes().first()) && plain(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The value of a few decimal digits (0 when `s` has anything else, or overflows).
fn num(s: &str) -> u32 {
    s.bytes()
        .try_fold(0u32, |n, b| {
            let d = b.wrapping_sub(b'0');
            (d < 10)
                .then_some(n)?
                .checked_mul(10)?
                .checked_add(d.into())
        })
        .unwrap_or(0)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

/// An HL7 DT/DTM split into checked parts.
struct Dtm<'a> {
    date: &'a str,
    time: &'a str,
    fraction: &'a str,
    zone: &'a str,
}

fn split_dtm(v: &str) -> Option<Dtm<'_>> {
    let (body, zone) = match v.find(['+', '-']) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let (main, fraction) = match body.find('.') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, ""),
    };
    if !digits(main) || !matches!(main.len(), 4 | 6 | 8 | 10 | 12 | 14) {
        return None;
    }
    if !fraction.is_empty() && (main.len() != 14 || !digits(fraction) || fraction.len() > 4) {
        return None;
    }
    if body.ends_with('.') {
        return None;
    }
    if !zone.is_empty() {
        let z = &zone[1..];
        if z.len() != 4 || !digits(z) || num(&z[..2]) > 14 || num(&z[2..]) > 59 {
            return None;
        }
    }
    let (date, time) = main.split_at(main.len().min(8));
    let year = num(&date[..4]);
    if date.len() >= 6 {
        let month = num(&date[4..6]);
        if !(1..=12).contains(&month) {
            return None;
        }
        if date.len() == 8 {
            let day = num(&date[6..8]);
            if day == 0 || day > days_in_month(year, month) {
                return None;
            }
        }
    }
    // Hours, minutes, seconds: as many as given.
    let limits = [23, 59, 59];
    if (0..time.len() / 2).any(|k| num(&time[2 * k..2 * k + 2]) > limits[k]) {
        return None;
    }
    Some(Dtm {
        date,
        time,
        fraction,
        zone,
    })
}

fn fhir_date(date: &str) -> String {
    // Room for a full dateTime with fraction and zone, which `datetime` appends.
    let mut out = String::with_capacity(32);
    out.push_str(&date[..4]);
    if date.len() >= 6 {
        out.push('-');
        out.push_str(&date[4..6]);
    }
    if date.len() >= 8 {
        out.push('-');
        out.push_str(&date[6..8]);
    }
    out
}

/// HL7 DT/DTM → FHIR date, keeping the precision given (time and zone dropped).
pub fn date(v: &str) -> Result<String, String> {
    let d = split_dtm(trim(v)).ok_or_else(|| format!("{v:?} is not a valid HL7 date"))?;
    Ok(fhir_date(d.date))
}

/// HL7 DTM → FHIR dateTime. Dates alone keep their precision; a time is completed to
/// seconds and needs a zone: the value's own, else `default_zone` (`+07:00` or `+0700`).
pub fn datetime(v: &str, default_zone: Option<&str>) -> Result<String, String> {
    let d = split_dtm(trim(v)).ok_or_else(|| format!("{v:?} is not a valid HL7 date/time"))?;
    let mut out = fhir_date(d.date);
    if d.time.is_empty() {
        return Ok(out);
    }
    if d.date.len() < 8 {
        return Err(format!("{v:?} has a time but no day"));
    }
    // The value's own zone ("+0700", checked by `split_dtm`) gets its colon below; a
    // default zone is already written as FHIR wants it once normalised.
    let default = if !d.zone.is_empty() {
        None
    } else {
        match default_zone.map(|z| (z, is_fhir_zone(z))) {
            // Already in the form FHIR wants: no copy.
            Some((z, true)) => Some(Cow::Borrowed(z)),
            Some((z, false)) if normalise_zone(z).is_some() => {
                Some(Cow::Owned(normalise_zone(z).unwrap_or_default()))
            }
            Some(_) => {
                return Err(format!(
                    "default zone {:?} is not like +07:00",
                    default_zone.unwrap_or("")
                ))
            }
            None => {
                return Err(format!(
                    "{v:?} has a time but no zone; give a default zone, e.g. datetime(x, '+07:00')"
                ))
            }
        }
    };
    let part = |i: usize| d.time.get(i..i + 2).unwrap_or("00");
    for (sep, i) in [('T', 0), (':', 2), (':', 4)] {
        out.push(sep);
        out.push_str(part(i));
    }
    if !d.fraction.is_empty() {
        out.push('.');
        out.push_str(d.fraction);
    }
    match default {
        Some(zone) => out.push_str(&zone),
        None => {
            out.push_str(&d.zone[..3]);
            out.push(':');
            out.push_str(&d.zone[3..]);
        }
    }
    Ok(out)
}

/// True for a zone already written as FHIR wants it: "+07:00".
fn is_fhir_zone(z: &str) -> bool {
    let b = z.as_bytes();
    b.len() == 6
        && matches!(b[0], b'+' | b'-')
        && b[3] == b':'
        && digits(&z[1..3])
        && digits(&z[4..6])
        && num(&z[1..3]) <= 14
        && num(&z[4..6]) <= 59
}

/// "+07:00" or "+0700" → "+07:00".
pub fn normalise_zone(z: &str) -> Option<String> {
    let z = z.trim();
    let sign = z.get(..1).filter(|s| *s == "+" || *s == "-")?;
    let rest = z[1..].replace(':', "");
    (rest.len() == 4 && digits(&rest) && num(&rest[..2]) <= 14 && num(&rest[2..]) <= 59)
        .then(|| format!("{sign}{}:{}", &rest[..2], &rest[2..]))
}

/// HL7 NM → JSON number text, keeping the digits given ("5.10" stays "5.10").
pub fn decimal(v: &str) -> Result<String, String> {
    decimal_text(Cow::Borrowed(v)).map(Cow::into_owned)
}

/// [`decimal`] of text that may be borrowed: text already written as it would come out
/// (`6.2`, `-0.5`, `140`, most results) is given back as it is, without a copy.
pub fn decimal_text(v: Cow<'_, str>) -> Result<Cow<'_, str>, String> {
    let t = trim(&v);
    let (neg, signed, body) = match t.as_bytes().first() {
        Some(b'-') => (true, true, &t[1..]),
        Some(b'+') => (false, true, &t[1..]),
        _ => (false, false, t),
    };
    let (int, frac) = match body.find('.') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let int_ok = int.is_empty() || digits(int);
    let frac_ok = frac.is_none_or(|f| f.is_empty() || digits(f));
    if !int_ok || !frac_ok || (int.is_empty() && frac.is_none_or(str::is_empty)) {
        return Err(format!("{:?} is not a decimal", &*v));
    }
    let int = match int.trim_start_matches('0') {
        "" => "0",
        rest => rest,
    };
    let frac = frac.filter(|f| !f.is_empty());
    let zero = int == "0" && frac.is_none_or(|f| f.bytes().all(|b| b == b'0'));
    let neg = neg && !zero;
    // The text comes out as it came in when nothing above changed it.
    let same = signed == neg
        && int.len() + frac.map_or(0, |f| f.len() + 1) == body.len()
        && t.len() == v.len();
    if same {
        return Ok(v);
    }
    let mut out = String::with_capacity(t.len() + 1);
    if neg {
        out.push('-');
    }
    out.push_str(int);
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    Ok(Cow::Owned(out))
}

/// An integer (optional sign, digits) → JSON number text.
pub fn integer(v: &str) -> Result<String, String> {
    let t = trim(v);
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    if !digits(body) {
        return Err(format!("{v:?} is not an integer"));
    }
    decimal(t)
}

/// Lowercase hex SHA-256 of the parts joined with U+001F, first 32 characters (what
/// `hash()` gives; the engine feeds a [`Hasher`] instead).
#[cfg(test)]
pub fn hash<S: AsRef<str>>(parts: &[S]) -> String {
    let mut h = Hasher::default();
    for p in parts {
        h.part(p.as_ref());
    }
    h.finish()
}

/// [`hash`] fed one part at a time, as an expression's arguments are evaluated.
#[derive(Default)]
pub struct Hasher {
    h: Sha256,
    started: bool,
}

impl Hasher {
    pub fn part(&mut self, p: &str) {
        if self.started {
            self.h.update([0x1f]);
        }
        self.started = true;
        self.h.update(p.as_bytes());
    }

    pub fn finish(self) -> String {
        let digest = self.h.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        for (pair, b) in hex.chunks_exact_mut(2).zip(&digest[..16]) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        // Room for a resource type and "/" before it: an id becomes its reference in
        // the same buffer.
        let mut out = String::with_capacity(64);
        out.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
        out
    }
}

/// `split(x, sep)`: non-empty pieces.
pub fn split(v: &str, sep: &str) -> Value<'static> {
    let pieces: Vec<Value> = if sep.is_empty() {
        vec![Value::Str(v.to_string().into())]
    } else {
        v.split(sep)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::Str(s.to_string().into()))
            .collect()
    };
    if pieces.is_empty() {
        Value::Absent
    } else {
        Value::List(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_keep_precision() {
        let table = [
            ("2024", "2024"),
            ("202401", "2024-01"),
            ("20240131", "2024-01-31"),
            ("20240131083000+0700", "2024-01-31"),
            ("20240229", "2024-02-29"),
        ];
        for (v, want) in table {
            assert_eq!(date(v).as_deref(), Ok(want), "{v}");
        }
        for bad in [
            "20241301",
            "20230229",
            "2024013",
            "abcd",
            "20240131083000+07",
            "",
            "20240132",
        ] {
            assert_eq!(
                date(bad),
                Err(format!("{bad:?} is not a valid HL7 date")),
                "{bad}"
            );
        }
    }

    #[test]
    fn datetimes_keep_precision_and_zone() {
        let table = [
            ("20240131083000+0700", None, "2024-01-31T08:30:00+07:00"),
            ("202401310830-0500", None, "2024-01-31T08:30:00-05:00"),
            ("2024013108", Some("+07:00"), "2024-01-31T08:00:00+07:00"),
            (
                "20240131083000.1234+0000",
                None,
                "2024-01-31T08:30:00.1234+00:00",
            ),
            ("20240131083000", Some("+0700"), "2024-01-31T08:30:00+07:00"),
            ("20240131", None, "2024-01-31"),
            ("202401", None, "2024-01"),
        ];
        for (v, zone, want) in table {
            assert_eq!(datetime(v, zone).as_deref(), Ok(want), "{v}");
        }
        assert_eq!(
            datetime("20240131083000", None),
            Err(
                "\"20240131083000\" has a time but no zone; give a default zone, e.g. datetime(x, '+07:00')"
                    .to_string()
            )
        );
        assert_eq!(
            datetime("20240131250000+0700", None),
            Err("\"20240131250000+0700\" is not a valid HL7 date/time".to_string())
        );
        assert!(datetime("20240131", Some("bad")).is_ok());
        assert!(datetime("2024013108", Some("bad")).is_err());
        // Each part of the time against its own limit; the zone's hours and minutes too.
        for bad in [
            "2024013124",
            "202401312360",
            "20240131235960",
            "20240131083000+1500",
            "20240131083000+0760",
            "20240131083000+07a0",
        ] {
            assert!(datetime(bad, Some("+07:00")).is_err(), "{bad}");
        }
        assert_eq!(
            datetime("20240131235959-1400", None).as_deref(),
            Ok("2024-01-31T23:59:59-14:00")
        );
        assert_eq!(
            datetime("20240131083000.12-0000", Some("+07:00")).as_deref(),
            Ok("2024-01-31T08:30:00.12-00:00")
        );
    }

    #[test]
    fn trim_is_str_trim() {
        for s in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "\ta\r",
            "ab c",
            "Đức",
            " Đức ",
            "\u{a0}x",
            "x\u{a0}",
            "\u{85}",
            "x\u{7f}",
            "\u{7f}",
            "\u{b}x\u{c}",
            "\u{1f}x",
            "x\u{20}",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn decimals_keep_text() {
        let table = [
            ("5.10", "5.10"),
            ("+3", "3"),
            (" 007.50 ", "7.50"),
            (".5", "0.5"),
            ("-0.0", "0.0"),
            ("-2.", "-2"),
            ("12", "12"),
        ];
        for (v, want) in table {
            assert_eq!(decimal(v).as_deref(), Ok(want), "{v}");
        }
        for bad in ["12,5", "", ".", "1e5", "abc", "--1"] {
            assert_eq!(
                decimal(bad),
                Err(format!("{bad:?} is not a decimal")),
                "{bad}"
            );
        }
        assert_eq!(integer("42").as_deref(), Ok("42"));
        assert!(integer("4.2").is_err());
        // Text already as it comes out is given back, not copied; anything else is new.
        for v in ["5.10", "12", "0", "0.5", "-2", "-0.5", "10.000"] {
            assert!(
                matches!(decimal_text(Cow::Borrowed(v)), Ok(Cow::Borrowed(t)) if t == v),
                "{v}"
            );
        }
        for (v, want) in [
            ("+3", "3"),
            ("007", "7"),
            (" 1", "1"),
            ("-0", "0"),
            ("-0.00", "0.00"),
            ("2.", "2"),
            (".5", "0.5"),
            ("00.5", "0.5"),
            ("0.", "0"),
            ("-00", "0"),
        ] {
            let got = decimal_text(Cow::Borrowed(v));
            assert!(
                matches!(&got, Ok(Cow::Owned(t)) if t == want),
                "{v}: {got:?}"
            );
            assert_eq!(decimal(v).as_deref(), Ok(want), "{v}");
        }
    }

    /// `decimal` as it was first written (text built piece by piece, then negative zero
    /// fixed), against which the version that keeps canonical text borrowed is checked.
    fn decimal_reference(v: &str) -> Result<String, String> {
        let t = v.trim();
        let (neg, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int, frac) = match body.find('.') {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let int_ok = int.is_empty() || digits(int);
        let frac_ok = frac.is_none_or(|f| f.is_empty() || digits(f));
        if !int_ok || !frac_ok || (int.is_empty() && frac.is_none_or(str::is_empty)) {
            return Err(format!("{v:?} is not a decimal"));
        }
        let int = int.trim_start_matches('0');
        let mut out = String::new();
        if neg {
            out.push('-');
        }
        out.push_str(if int.is_empty() { "0" } else { int });
        if let Some(f) = frac.filter(|f| !f.is_empty()) {
            out.push('.');
            out.push_str(f);
        }
        if out == "-0" || out.starts_with("-0.") && out[3..].bytes().all(|b| b == b'0') {
            out.remove(0);
        }
        Ok(out)
    }

    #[test]
    fn decimal_text_is_the_reference_on_every_short_input() {
        const PIECES: [&str; 9] = ["0", "1", "9", ".", "-", "+", " ", "\u{a0}", "x"];
        let mut checked = 0;
        let mut input = Vec::new();
        fn walk(input: &mut Vec<&'static str>, checked: &mut usize) {
            let v: String = input.concat();
            let want = decimal_reference(&v);
            let got = decimal_text(Cow::Borrowed(&v));
            assert_eq!(
                got.as_deref().map_err(String::as_str),
                want.as_deref().map_err(String::as_str),
                "{v:?}"
            );
            // Owned text (an unescaped field) gives the same.
            let owned = decimal_text(Cow::Owned(v.clone())).map(Cow::into_owned);
            assert_eq!(owned, want, "{v:?}");
            *checked += 1;
            if input.len() < 5 {
                for p in PIECES {
                    input.push(p);
                    walk(input, checked);
                    input.pop();
                }
            }
        }
        walk(&mut input, &mut checked);
        assert_eq!(checked, (0..=5).map(|n| 9usize.pow(n)).sum::<usize>());
    }

    #[test]
    fn ed_data_by_encoding() {
        let ed = |data: &str, enc: &str| {
            ed_data(Cow::Borrowed(data), enc).map(|d| d.map(Cow::into_owned))
        };
        // "%PDF" in each encoding the function converts, in any case.
        for (data, enc) in [
            ("JVBERg==", "Base64"),
            ("JVBERg==", "BASE64"),
            ("25504446", "Hex"),
            ("25504446", " hex "),
            ("%PDF", "A"),
            ("%PDF", "a"),
        ] {
            assert_eq!(
                ed(data, enc),
                Ok(Some("JVBERg==".to_string())),
                "{data} {enc}"
            );
        }
        assert_eq!(ed("2550444a", "HEX"), ed("2550444A", "Hex"));
        assert_eq!(ed("ff00Ab", "hex"), Ok(Some(base64(&[0xff, 0x00, 0xab]))));
        // White space between digits, as in a hex dump, is skipped.
        assert_eq!(ed(" 2550 4446\t", "Hex"), Ok(Some("JVBERg==".to_string())));
        assert_eq!(ed("", "Hex"), Ok(Some(String::new())));
        // Text is encoded as UTF-8, escapes already decoded by the path.
        assert_eq!(ed("Ổn", "A"), Ok(Some(base64("Ổn".as_bytes()))));
        // An encoding that cannot be converted gives nothing (the mapping decides).
        for enc in ["", "UU", "Base64x"] {
            assert_eq!(ed("data", enc), Ok(None), "{enc}");
        }
        assert_eq!(
            ed("255", "Hex"),
            Err("the data is not hexadecimal: an odd number of digits (3)".to_string())
        );
        assert_eq!(
            ed("2550 446", "Hex"),
            Err("the data is not hexadecimal: an odd number of digits (7)".to_string())
        );
        assert_eq!(
            ed("2550-4446", "Hex"),
            Err("the data is not hexadecimal: \"-\" at character 5".to_string())
        );
        assert_eq!(
            ed("25Ổ446", "Hex"),
            Err("the data is not hexadecimal: \"Ổ\" at character 3".to_string())
        );
    }

    #[test]
    fn hash_is_stable() {
        let h = hash(&["BV".to_string(), "12345".to_string()]);
        assert_eq!(h.len(), 32);
        assert_eq!(h, hash(&["BV".to_string(), "12345".to_string()]));
        assert_ne!(h, hash(&["BV1".to_string(), "2345".to_string()]));
        // Pinned: ids must not change between releases.
        assert_eq!(hash(&["a".to_string()]), "ca978112ca1bbdcafac231b39a23dc4d");
    }

    #[test]
    fn arity_texts() {
        let t = |n: &str| spec(n).map(FunctionSpec::arity_text);
        assert_eq!(t("date").as_deref(), Some("takes 1 argument"));
        assert_eq!(t("if").as_deref(), Some("takes 2 or 3 arguments"));
        assert_eq!(t("concat").as_deref(), Some("takes at least 1 argument"));
        assert_eq!(t("in").as_deref(), Some("takes at least 2 arguments"));
    }
}
