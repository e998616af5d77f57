//! FHIR date search (`birthdate=ge1990`, `date=le2024-03-01`) with date precision.
//!
//! A date or dateTime of any precision stands for the range of every instant that
//! starts with its text: `1990` is all of 1990, `1990-05` all of May. Ranges are
//! compared as text, which orders ISO 8601 correctly as long as both sides use the same
//! time zone (halong's mappings write the sender's local time, so they do).
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
        Ok(DateFilter {
            cmp,
            value: value.to_string(),
        })
    }

    /// Whether a record whose time runs from `lo` to `hi` (`hi` empty: still open)
    /// satisfies the filter.
    pub fn matches(&self, lo: &str, hi: &str) -> bool {
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
}
