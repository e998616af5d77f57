//! FHIR date search (`birthdate=ge1990`, `date=le2024-03-01`) with date precision.
//!
//! A date or dateTime of any precision stands for the range of every instant that
//! starts with its text: `1990` is all of 1990, `1990-05` all of May. When the
//! parameter and the record both carry a time with a zone, the two ranges are compared
//! as instants (`ge2024-01-02T00:00:00Z` finds `2024-01-02T06:30:00+07:00`); otherwise
//! as text, which compares calendar dates as written (a record's date is the day in its
//! own zone, as the sender wrote it).
//! Following FHIR R4 (search, "date"): `eq` — the record's range lies within the
//! parameter's; `ne` — it does not; `ge`/`le` — it reaches at or after / at or before
//! the parameter's range; `gt`/`lt` — it reaches strictly after / before it.

/// One comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateCmp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

/// A parsed date criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFilter {
    pub cmp: DateCmp,
    pub value: String,
    /// `value` as a range of instants when it has a time with a zone, found once here
    /// rather than for every record compared.
    instants: Option<(i64, i64)>,
}

/// Upper bound of "every text starting with this": above every character used in dates.
const AFTER: char = '\u{7f}';

impl DateFilter {
    /// Parses `[eq|ne|ge|le|gt|lt]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][zone]]]]`; the error
    /// says what is expected.
    pub fn parse(text: &str) -> Result<DateFilter, String> {
        let (cmp, value) = match text.get(..2) {
            Some("eq") => (DateCmp::Eq, &text[2..]),
            Some("ne") => (DateCmp::Ne, &text[2..]),
            Some("ge") => (DateCmp::Ge, &text[2..]),
            Some("le") => (DateCmp::Le, &text[2..]),
            Some("gt") => (DateCmp::Gt, &text[2..]),
            Some("lt") => (DateCmp::Lt, &text[2..]),
            _ => (DateCmp::Eq, text),
        };
        if !is_fhir_date(value) {
            return Err(format!(
                "'{text}' is not a date: expected an optional prefix (eq, ne, ge, le, gt, lt) and YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][zone]"
            ));
        }
        if let Some(problem) = calendar_problem(value) {
            return Err(format!("'{text}' is not a date: {problem}"));
        }
        Ok(DateFilter {
            cmp,
            value: value.to_string(),
            instants: instant_range(value),
        })
    }

    /// Whether a record whose time runs from `lo` to `hi` (`hi` empty: still open)
    /// satisfies the filter.
    pub fn matches(&self, lo: &str, hi: &str) -> bool {
        if let Some((p_lo, p_hi)) = self.instants {
            let record = instant_range(lo).and_then(|from| {
                let to = match hi {
                    "" => (i64::MAX, i64::MAX),
                    // A point (a birth date, an effective time): parsed once.
                    _ if hi == lo => from,
                    _ => instant_range(hi)?,
                };
                Some((from.0, to.1))
            });
            if let Some((r_lo, r_hi)) = record {
                return self.cmp.holds(p_lo, p_hi, r_lo, r_hi);
            }
        }
        let p_lo = self.value.as_str();
        let p_hi = format!("{p_lo}{AFTER}");
        let r_hi: Option<String> = (!hi.is_empty()).then(|| format!("{hi}{AFTER}"));
        let within = lo >= p_lo && r_hi.as_deref().is_some_and(|h| h <= p_hi.as_str());
        match self.cmp {
            DateCmp::Eq => within,
            DateCmp::Ne => !within,
            DateCmp::Ge => r_hi.as_deref().is_none_or(|h| h > p_lo),
            DateCmp::Le => lo < p_hi.as_str(),
            DateCmp::Gt => r_hi.as_deref().is_none_or(|h| h > p_hi.as_str()),
            DateCmp::Lt => lo < p_lo,
        }
    }
}

impl DateCmp {
    /// The comparison on ranges `[p_lo, p_hi)` (the parameter) and `[r_lo, r_hi)` (the
    /// record; `r_hi` = `i64::MAX` when open), the same rules as the text comparison.
    fn holds(self, p_lo: i64, p_hi: i64, r_lo: i64, r_hi: i64) -> bool {
        let open = r_hi == i64::MAX;
        let within = r_lo >= p_lo && !open && r_hi <= p_hi;
        match self {
            DateCmp::Eq => within,
            DateCmp::Ne => !within,
            DateCmp::Ge => r_hi > p_lo,
            DateCmp::Le => r_lo < p_hi,
            DateCmp::Gt => r_hi > p_hi,
            DateCmp::Lt => r_lo < p_lo,
        }
    }
}

/// `YYYY-MM-DDThh:mm[:ss[.f…]]` with `Z` or `±hh:mm`: the range of milliseconds since
/// 1970 UTC it stands for at its precision (a minute, a second, a millisecond).
/// `None` for a date without a time, or a time without a zone.
pub fn instant_range(v: &str) -> Option<(i64, i64)> {
    let b = v.as_bytes();
    if b.len() < 17 || !is_fhir_date(&v[..10]) || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = v.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (hour, minute) = (n(11..13)?, n(14..16)?);
    let mut at = 16;
    let (mut second, mut millis, mut step) = (0, 0, 60_000);
    if b.get(at) == Some(&b':') {
        second = n(at + 1..at + 3)?;
        at += 3;
        step = 1_000;
        if b.get(at) == Some(&b'.') {
            let digits = b[at + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 {
                return None;
            }
            let first3 = &v[at + 1..at + 1 + digits.min(3)];
            millis = first3.parse::<i64>().ok()? * 10_i64.pow(3 - first3.len() as u32);
            at += 1 + digits;
            step = 1;
        }
    }
    let offset_minutes = match &v[at..] {
        "Z" => 0,
        z if z.len() == 6 && matches!(b[at], b'+' | b'-') && b[at + 3] == b':' => {
            let m = n(at + 1..at + 3)? * 60 + n(at + 4..at + 6)?;
            if b[at] == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_epoch(calendar_day(v)?);
    let start =
        ((days * 24 + hour) * 60 + minute - offset_minutes) * 60_000 + second * 1_000 + millis;
    Some((start, start + step))
}

/// The calendar day `YYYY-MM-DD` (the first ten characters of `v`), if there is one.
fn calendar_day(v: &str) -> Option<chrono::NaiveDate> {
    let n = |r: std::ops::Range<usize>| v.get(r).and_then(|s| s.parse::<u32>().ok());
    chrono::NaiveDate::from_ymd_opt(i32::try_from(n(0..4)?).ok()?, n(5..7)?, n(8..10)?)
}

/// Days from 1970-01-01 to a calendar day.
fn days_from_epoch(day: chrono::NaiveDate) -> i64 {
    day.signed_duration_since(chrono::NaiveDate::default())
        .num_days()
}

/// The calendar day before or after `YYYY-MM-DD` (`delta` = -1 or 1), as text.
pub fn neighbour_day(date: &str, delta: i64) -> Option<String> {
    let day = calendar_day(date)?.checked_add_signed(chrono::TimeDelta::try_days(delta)?)?;
    Some(day.format("%Y-%m-%d").to_string())
}

/// What makes a value of the date search form no real date or time (a month 13, a
/// 30 February, a minute 61, a time without its minutes, ...); `None` when it is one.
fn calendar_problem(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let num = |r: std::ops::Range<usize>| v.get(r).and_then(|s| s.parse::<u32>().ok());
    if b.len() >= 7 && !(1..=12).contains(&num(5..7)?) {
        return Some(format!("there is no month {}", &v[5..7]));
    }
    if b.len() >= 10 && calendar_day(v).is_none() {
        return Some(format!("{} has no day {}", &v[..7], &v[8..10]));
    }
    if b.len() <= 10 {
        return None;
    }
    // `Thh:mm[:ss[.f…]][Z|±hh:mm]`
    let time = &v[11..];
    let zone_at = time.find(['Z', '+', '-']).unwrap_or(time.len());
    let (clock, zone) = time.split_at(zone_at);
    let parts: Vec<&str> = clock.split(':').collect();
    let two = |s: &str, max: u32| s.len() == 2 && s.parse::<u32>().is_ok_and(|n| n <= max);
    let seconds_ok = |s: &str| {
        let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
        // 60: a leap second, which FHIR's dateTime allows.
        two(whole, 60) && !fraction.is_empty() && fraction.bytes().all(|c| c.is_ascii_digit())
    };
    let clock_ok = match parts.as_slice() {
        [h, m] => two(h, 23) && two(m, 59),
        [h, m, sec] => two(h, 23) && two(m, 59) && seconds_ok(sec),
        _ => false,
    };
    if !clock_ok {
        return Some(format!(
            "'{clock}' is not a time of day (hh:mm or hh:mm:ss, hours up to 23, minutes up to 59, seconds up to 60)"
        ));
    }
    let zone_ok = match zone.as_bytes() {
        [] | [b'Z'] => true,
        [b'+' | b'-', ..] => {
            let (h, m) = zone[1..].split_once(':').unwrap_or(("", ""));
            two(h, 14) && two(m, 59)
        }
        _ => false,
    };
    (!zone_ok).then(|| format!("'{zone}' is not a time zone (Z, +hh:mm or -hh:mm)"))
}

fn is_fhir_date(v: &str) -> bool {
    let b = v.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    match b.len() {
        4 => digits(0..4),
        7 => digits(0..4) && b[4] == b'-' && digits(5..7),
        10 => digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10),
        n if n > 10 => {
            is_fhir_date(&v[..10])
                && b[10] == b'T'
                && v[11..]
                    .bytes()
                    .all(|c| c.is_ascii_digit() || matches!(c, b':' | b'.' | b'+' | b'-' | b'Z'))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> DateFilter {
        DateFilter::parse(s).unwrap()
    }

    #[test]
    fn precision_and_prefixes() {
        // A birth date (a point of day precision).
        let d = ("1990-05-12", "1990-05-12");
        let table = [
            ("1990", true),
            ("1990-05", true),
            ("1990-05-12", true),
            ("1990-06", false),
            ("eq1991", false),
            ("ne1991", true),
            ("ge1990", true),
            ("ge1990-05-12", true),
            ("ge1990-05-13", false),
            ("le1990-05-12", true),
            ("le1990-05-11", false),
            ("le1990", true),
            ("gt1990-05-11", true),
            ("gt1990", false),
            ("lt1990-05-13", true),
            ("lt1990-05-12", false),
        ];
        for (q, want) in table {
            assert_eq!(f(q).matches(d.0, d.1), want, "{q}");
        }
        // A dateTime matches its day.
        assert!(f("2024-01-02").matches("2024-01-02T08:00:00+07:00", "2024-01-02T08:00:00+07:00"));
        // An open period reaches every later date.
        assert!(f("ge2030").matches("2024-01-02", ""));
        assert!(!f("eq2024").matches("2024-01-02", ""));
    }

    #[test]
    fn times_in_other_zones_compare_as_instants() {
        // 06:30 in Hà Nội is 23:30 UTC the day before.
        let r = "2024-01-02T06:30:00+07:00";
        let table = [
            ("ge2024-01-01T23:30:00Z", true),
            ("gt2024-01-01T23:29:59Z", true),
            ("ge2024-01-01T23:30:01Z", false),
            ("lt2024-01-01T23:30:01Z", true),
            ("le2024-01-01T23:29:59Z", false),
            ("eq2024-01-01T23:30Z", true),
            ("eq2024-01-02T06:30+07:00", true),
            ("eq2024-01-02T01:30:00+02:00", true),
            ("ne2024-01-02T06:30:00+07:00", false),
            ("ge2024-01-02T00:00:00Z", false),
            // A parameter without a zone, or a date alone: the calendar as written.
            ("ge2024-01-02", true),
            ("eq2024-01-01", false),
        ];
        for (q, want) in table {
            assert_eq!(f(q).matches(r, r), want, "{q}");
        }
        // An open period reaches every later instant.
        assert!(f("ge2030-01-01T00:00:00Z").matches(r, ""));
        assert!(!f("eq2024-01-02T06:30:00+07:00").matches(r, ""));
        assert_eq!(instant_range("1970-01-01T07:00+07:00"), Some((0, 60_000)));
        assert_eq!(
            instant_range("2000-03-01T00:00:00.25Z").map(|r| r.1 - r.0),
            Some(1)
        );
        assert_eq!(instant_range("2024-01-02"), None);
        assert_eq!(instant_range("2024-01-02T06:30:00"), None);
        assert_eq!(
            neighbour_day("2024-03-01", -1).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(
            neighbour_day("2023-12-31", 1).as_deref(),
            Some("2024-01-01")
        );
    }

    #[test]
    fn bad_dates_are_refused_with_the_expected_form() {
        for bad in [
            "",
            "90",
            "1990-5",
            "2024-01-02 08:00",
            "xx2024",
            "1990-05-12Tab",
        ] {
            let e = DateFilter::parse(bad).unwrap_err();
            assert!(e.contains("YYYY-MM-DD"), "{bad}: {e}");
        }
    }

    #[test]
    fn dates_that_are_not_on_the_calendar_are_refused() {
        let table = [
            ("1990-13", "'1990-13' is not a date: there is no month 13"),
            ("ge2026-00-10", "'ge2026-00-10' is not a date: there is no month 00"),
            ("2026-02-29", "'2026-02-29' is not a date: 2026-02 has no day 29"),
            ("le2025-04-31", "'le2025-04-31' is not a date: 2025-04 has no day 31"),
            (
                "2024-01-02T24:00Z",
                "'2024-01-02T24:00Z' is not a date: '24:00' is not a time of day (hh:mm or hh:mm:ss, hours up to 23, minutes up to 59, seconds up to 60)",
            ),
            (
                "2024-01-02T08",
                "'2024-01-02T08' is not a date: '08' is not a time of day (hh:mm or hh:mm:ss, hours up to 23, minutes up to 59, seconds up to 60)",
            ),
            (
                "2024-01-02T08:00:61",
                "'2024-01-02T08:00:61' is not a date: '08:00:61' is not a time of day (hh:mm or hh:mm:ss, hours up to 23, minutes up to 59, seconds up to 60)",
            ),
            (
                "2024-01-02T08:00+7",
                "'2024-01-02T08:00+7' is not a date: '+7' is not a time zone (Z, +hh:mm or -hh:mm)",
            ),
        ];
        for (q, want) in table {
            assert_eq!(DateFilter::parse(q).unwrap_err(), want);
        }
        for good in [
            "2024-02-29",
            "2000-02-29",
            "1990",
            "1990-12",
            "2024-01-02T08:00",
            "2024-01-02T08:00:59.125Z",
            "2024-01-02T23:59:00-03:30",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(DateFilter::parse(good).is_ok(), "{good}");
        }
        assert_eq!(instant_range("2023-02-29T00:00Z"), None);
        assert_eq!(neighbour_day("2023-02-30", 1), None);
        assert_eq!(
            neighbour_day("2024-02-28", 1).as_deref(),
            Some("2024-02-29")
        );
    }
}
