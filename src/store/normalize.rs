//! Text normalisation for string search (FHIR string matching, adapted for Vietnamese).
//!
//! One function decides what "the same text" means for both sides of a search: the
//! names written into the index and the query a clinician types. Both go through
//! [`normalize`], so a query matches whatever form (NFC, NFD, tone marks or not, any
//! case) the record or the query happened to use.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Longest token kept, in bytes. Longer tokens are cut (at a character boundary) on
/// both the index and the query side, so prefix matching still holds, and index keys
/// stay bounded whatever a source system puts into a name.
pub const MAX_TOKEN_BYTES: usize = 64;

/// Normalises text for searching: lowercase, Unicode NFD, combining marks dropped,
/// `đ`/`Đ` mapped to `d` (a letter of its own, not a `d` with a mark), every run of
/// characters that is not a letter or digit turned into one space, no leading or
/// trailing space.
///
/// `normalize("Nguyễn Thị Ngọc")` is `"nguyen thi ngoc"`; `normalize("ĐẶNG-văn")` is
/// `"dang van"`.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    // Lowercase before decomposing: some lowercase mappings (`İ` → `i` + U+0307)
    // produce combining marks, which the decomposition step then drops.
    for c in s.chars().flat_map(char::to_lowercase).nfd() {
        if is_combining_mark(c) {
            continue;
        }
        let c = match c {
            'đ' => 'd',
            // `Đ` is already lowercased above; kept for clarity should the order change.
            'Đ' => 'd',
            c => c,
        };
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        } else {
            pending_space = true;
        }
    }
    out
}

/// The search tokens of `s`: [`normalize`]d, split on the spaces, each cut to
/// [`MAX_TOKEN_BYTES`]. Tokens are never empty and contain only letters and digits.
pub fn tokens(s: &str) -> Vec<String> {
    normalize(s)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| truncate(t).to_owned())
        .collect()
}

fn truncate(t: &str) -> &str {
    if t.len() <= MAX_TOKEN_BYTES {
        return t;
    }
    let mut end = MAX_TOKEN_BYTES;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    &t[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_normalization::UnicodeNormalization;

    #[test]
    fn vietnamese_names_lose_marks_and_case() {
        let table = [
            ("Nguyễn Thị Ngọc", "nguyen thi ngoc"),
            ("Đặng Văn Đức", "dang van duc"),
            ("đỗ", "do"),
            ("TRẦN   HƯNG-ĐẠO", "tran hung dao"),
            ("Phạm Ư Ơ", "pham u o"),
            ("  Lê, Thị. ", "le thi"),
            ("O'Brien", "o brien"),
            ("İstanbul", "istanbul"),
            ("Bùi 2nd", "bui 2nd"),
            ("", ""),
            ("---", ""),
        ];
        for (input, want) in table {
            assert_eq!(normalize(input), want, "normalize({input:?})");
        }
    }

    #[test]
    fn nfc_and_nfd_inputs_normalise_alike() {
        for s in ["Nguyễn Thị Ngọc", "Đặng Hữu Phước", "Huỳnh Thị Ánh Tuyết"] {
            let nfc: String = s.nfc().collect();
            let nfd: String = s.nfd().collect();
            assert_ne!(nfc, nfd, "test input should differ between NFC and NFD");
            assert_eq!(normalize(&nfc), normalize(&nfd));
        }
    }

    #[test]
    fn tokens_split_and_truncate() {
        assert_eq!(tokens("Nguyễn Thị Ngọc"), ["nguyen", "thi", "ngoc"]);
        assert!(tokens(" ,. ").is_empty());
        let long = "á".repeat(100);
        let t = tokens(&long);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0], "a".repeat(MAX_TOKEN_BYTES));
        let wide = "中".repeat(40); // 3 bytes each: cut on a character boundary
        let t = tokens(&wide);
        assert_eq!(t[0].len(), 63);
    }
}
