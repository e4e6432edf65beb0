//! The pair: what one question/answer record is once it is ready to store, and its
//! identity. A pair's key is blake3 of its normalised question, a `\n` separator and
//! its normalised answer. Normalising means Unicode NFC, every run of whitespace
//! collapsed to one space, and trimming; letter case is kept. Because normalised text
//! never contains `\n` (it is whitespace), the separator cannot be forged by content.

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// blake3 digest identifying a distinct pair.
pub type PairKey = [u8; 32];

/// A validated pair, ready for the writer.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Identity used for deduplication.
    pub key: PairKey,
    /// The question exactly as first received.
    pub question: String,
    /// The answer exactly as first received.
    pub answer: String,
    /// Indicator name (`indicator` / `indicator_name`), when given.
    pub indicator: Option<String>,
    /// Category (`category` / `indicator_category`), when given.
    pub category: Option<String>,
    /// Unrecognised and inherited fields as a JSON object text, `None` when there are none.
    pub extra: Option<String>,
}

impl Pair {
    /// What the pair costs an agent that reads it, in tokens: characters of question
    /// and answer divided by 4, rounded up (the common rule of thumb for English text).
    pub fn estimated_tokens(&self) -> u64 {
        ((self.question.chars().count() + self.answer.chars().count()) as u64).div_ceil(4)
    }
}

/// Returns `text` normalised: NFC, whitespace runs collapsed to one space, trimmed.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalise_into(text, &mut out);
    out
}

/// Appends the normalised form of `text` to `out`.
pub fn normalise_into(text: &str, out: &mut String) {
    if text.is_ascii() {
        // ASCII is always NFC; only whitespace needs work.
        collapse_ascii(text, out);
        return;
    }
    // Most text is already NFC; the quick check avoids a second pass. Characters below
    // U+0300 are all NFC-stable starters, so only the rest need the table; leaving the
    // starters out can only turn a Yes into a Maybe (then the full pass runs), never the
    // reverse.
    let nfc: std::borrow::Cow<'_, str> =
        match is_nfc_quick(text.chars().filter(|&c| c >= '\u{300}')) {
            IsNormalized::Yes => text.into(),
            _ => text.nfc().collect::<String>().into(),
        };
    for (i, word) in nfc.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
}

/// The whitespace `char::is_whitespace` knows in the ASCII range.
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

fn collapse_ascii(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut first = true;
    while i < bytes.len() {
        while i < bytes.len() && is_ascii_space(bytes[i]) {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !is_ascii_space(bytes[i]) {
            i += 1;
        }
        if start < i {
            if !first {
                out.push(' ');
            }
            first = false;
            out.push_str(&text[start..i]);
        }
    }
}

/// Whether `text` is ASCII with single spaces between words and none at the ends, so
/// that it is its own normal form. Most generated and written text is.
fn is_normal_ascii(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.first() == Some(&b' ') || bytes.last() == Some(&b' ') {
        return false;
    }
    let mut prev_space = false;
    for &b in bytes {
        if b >= 0x80 || (is_ascii_space(b) && (b != b' ' || prev_space)) {
            return false;
        }
        prev_space = b == b' ';
    }
    true
}

/// The key of a question/answer pair.
pub fn pair_key(question: &str, answer: &str) -> PairKey {
    pair_key_with(question, answer, &mut String::new())
}

/// [`pair_key`] with a scratch buffer reused between calls (no allocation per pair
/// once it has grown).
pub fn pair_key_with(question: &str, answer: &str, scratch: &mut String) -> PairKey {
    let mut hasher = blake3::Hasher::new();
    for (i, text) in [question, answer].into_iter().enumerate() {
        if i > 0 {
            hasher.update(b"\n");
        }
        if is_normal_ascii(text) {
            // Already normal: hash in place, no copy.
            hasher.update(text.as_bytes());
        } else {
            scratch.clear();
            normalise_into(text, scratch);
            hasher.update(scratch.as_bytes());
        }
    }
    *hasher.finalize().as_bytes()
}

/// Lower-case hex of a digest, for people and the ledger's text views.
pub fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest
        .iter()
        .fold(String::with_capacity(digest.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_cases() {
        let cases = [
            ("collapses_runs", "  What  is\t\nRSI? ", "What is RSI?"),
            ("keeps_case", "What is RSI?", "What is RSI?"),
            ("nfc_composes", "Cafe\u{301}", "Caf\u{e9}"),
            ("unicode_space", "a\u{a0}\u{2003}b", "a b"),
            ("empty", "   ", ""),
            ("ascii_tabs_and_vt", "\ta\x0bb\x0c c\r\n", "a b c"),
            ("ascii_already_normal", "a b c", "a b c"),
        ];
        for (name, input, want) in cases {
            assert_eq!(normalise(input), want, "case {name}");
        }
    }

    #[test]
    fn key_ignores_whitespace_and_composition_but_not_case() {
        let base = pair_key("What is RSI?", "A momentum oscillator.");
        assert_eq!(
            base,
            pair_key(" What is\u{a0}RSI? ", "A  momentum\noscillator.")
        );
        assert_ne!(base, pair_key("what is rsi?", "A momentum oscillator."));
        assert_eq!(
            pair_key("Caf\u{e9}", "x"),
            pair_key("Cafe\u{301}", "x"),
            "NFC and NFD spellings are one pair"
        );
    }

    #[test]
    fn fast_paths_agree_with_the_definition() {
        // The definition: NFC, split on Unicode whitespace, join with one space.
        let reference = |t: &str| {
            t.nfc()
                .collect::<String>()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let cases = [
            "a b",
            " a b",
            "a  b",
            "a\tb",
            "a\x0bb",
            "\u{85}a\u{2028}b ",
            "x",
            "",
            "  ",
            "Caf\u{e9} au lait",
            "Cafe\u{301}\n\nnoir",
        ];
        for text in cases {
            assert_eq!(normalise(text), reference(text), "{text:?}");
            let mut hasher = blake3::Hasher::new();
            hasher.update(reference(text).as_bytes());
            hasher.update(b"\n");
            hasher.update(b"a");
            assert_eq!(
                pair_key(text, "a"),
                *hasher.finalize().as_bytes(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn separator_cannot_be_forged() {
        // "a b" + "c" and "a" + "b c" must differ even though their concatenations agree.
        assert_ne!(pair_key("a b", "c"), pair_key("a", "b c"));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
