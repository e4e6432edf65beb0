//! The pair: what one question/answer record is once it is ready to store, and its
//! identity. A pair's key is blake3 of its normalised question, a `\n` separator and
//! its normalised answer. Normalising means Unicode NFC, every run of whitespace
//! collapsed to one space, and trimming; letter case is kept. Because normalised text
//! never contains `\n` (it is whitespace), the separator cannot be forged by content.

use crate::layout::RawPair;
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
    /// Builds the stored form of a raw pair: computes its key and serialises its extra
    /// fields. `scratch` is reused between calls to avoid an allocation per pair.
    pub fn from_raw(raw: RawPair, scratch: &mut String) -> Pair {
        let key = pair_key_with(&raw.question, &raw.answer, scratch);
        let extra = if raw.extra.is_empty() {
            None
        } else {
            // A Map of Values always serialises.
            Some(serde_json::Value::Object(raw.extra).to_string())
        };
        Pair {
            key,
            question: raw.question,
            answer: raw.answer,
            indicator: raw.indicator,
            category: raw.category,
            extra,
        }
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
    // Most text is already NFC (all ASCII is); the quick check avoids a second pass.
    let nfc: std::borrow::Cow<'_, str> = match is_nfc_quick(text.chars()) {
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

/// The key of a question/answer pair.
pub fn pair_key(question: &str, answer: &str) -> PairKey {
    pair_key_with(question, answer, &mut String::new())
}

fn pair_key_with(question: &str, answer: &str, scratch: &mut String) -> PairKey {
    scratch.clear();
    normalise_into(question, scratch);
    scratch.push('\n');
    normalise_into(answer, scratch);
    *blake3::hash(scratch.as_bytes()).as_bytes()
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
    fn separator_cannot_be_forged() {
        // "a b" + "c" and "a" + "b c" must differ even though their concatenations agree.
        assert_ne!(pair_key("a b", "c"), pair_key("a", "b c"));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
