//! Bytes to text: owns the decision of which character encoding a dropped file is
//! written in and the conversion to a Rust string.
//!
//! The order of evidence is: a byte-order mark; UTF-16 without a mark (recognised by
//! its zero bytes); valid UTF-8; and only then a guess between corrupt UTF-8 and a
//! legacy single-byte encoding (see [`decode`]). Decoding never fails: bytes that
//! cannot be decoded become U+FFFD and the result says how many there were, so the
//! caller can record it and nothing is silently lost.

use std::borrow::Cow;

use encoding_rs::{DecoderResult, Encoding, UTF_8, UTF_16BE, UTF_16LE, WINDOWS_1252};

/// A file's text together with how it was decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The text without its byte-order mark; borrowed from the input when that is
    /// valid UTF-8.
    pub text: Cow<'a, str>,
    /// The encoding's name as `encoding_rs` spells it ("UTF-8", "UTF-16LE",
    /// "windows-1252", ...), which is also how it is shown to people.
    pub encoding: &'static str,
    /// A byte-order mark was present (and stripped).
    pub bom: bool,
    /// Some bytes could not be decoded and became U+FFFD.
    pub replaced: bool,
    /// How many input bytes were replaced by U+FFFD; zero unless `replaced`.
    pub replaced_bytes: usize,
}

impl Decoded<'_> {
    /// A short description for a ledger column, e.g. `UTF-8`, `UTF-8 (BOM)`,
    /// `windows-1252` or `UTF-8 (lossy: 2 bytes replaced)`.
    pub fn label(&self) -> String {
        let lossy = self.replaced.then(|| {
            let unit = if self.replaced_bytes == 1 {
                "byte"
            } else {
                "bytes"
            };
            format!("lossy: {} {unit} replaced", self.replaced_bytes)
        });
        match (self.bom, lossy) {
            (false, None) => self.encoding.to_string(),
            (true, None) => format!("{} (BOM)", self.encoding),
            (false, Some(lossy)) => format!("{} ({lossy})", self.encoding),
            (true, Some(lossy)) => format!("{} (BOM, {lossy})", self.encoding),
        }
    }
}

/// Decodes a file's bytes to text. Never fails; see the module docs for the order in
/// which encodings are considered.
///
/// When there is no byte-order mark and the bytes are not valid UTF-8, the file is
/// either UTF-8 with a few damaged bytes or text in a legacy encoding. A legacy
/// single-byte file (windows-1252 and friends) writes every non-ASCII character as one
/// high byte, and a high byte followed by the exact continuation bytes UTF-8 demands is
/// rare in real text. So if the valid stretches contain well-formed multi-byte UTF-8
/// characters at least as often as invalid sequences occur, the file is taken to be
/// damaged UTF-8 and decoded lossily; otherwise the high bytes are isolated and the
/// file is handed to chardetng as legacy text.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return utf8(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        return with_encoding(UTF_16LE, rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        return with_encoding(UTF_16BE, rest, true);
    }
    // ASCII-only UTF-16 is also valid UTF-8 (NULs included), so it must be
    // recognised before the UTF-8 check.
    if let Some(encoding) = sniff_utf16(bytes) {
        return with_encoding(encoding, bytes, false);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Decoded {
            text: Cow::Borrowed(text),
            encoding: UTF_8.name(),
            bom: false,
            replaced: false,
            replaced_bytes: 0,
        },
        Err(_) => {
            let scan = Utf8Scan::of(bytes);
            if scan.multibyte_chars > 0 && scan.invalid_sequences <= scan.multibyte_chars {
                lossy_utf8(bytes, false, &scan)
            } else {
                with_encoding(legacy_encoding(bytes), bytes, false)
            }
        }
    }
}

fn utf8(bytes: &[u8], bom: bool) -> Decoded<'_> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Decoded {
            text: Cow::Borrowed(text),
            encoding: UTF_8.name(),
            bom,
            replaced: false,
            replaced_bytes: 0,
        },
        Err(_) => lossy_utf8(bytes, bom, &Utf8Scan::of(bytes)),
    }
}

fn lossy_utf8<'a>(bytes: &'a [u8], bom: bool, scan: &Utf8Scan) -> Decoded<'a> {
    Decoded {
        text: String::from_utf8_lossy(bytes),
        encoding: UTF_8.name(),
        bom,
        replaced: scan.invalid_bytes > 0,
        replaced_bytes: scan.invalid_bytes,
    }
}

/// What invalid UTF-8 looks like: the evidence [`decode`] weighs.
struct Utf8Scan {
    /// Well-formed characters of two to four bytes.
    multibyte_chars: usize,
    /// Maximal invalid subsequences; each becomes one U+FFFD in a lossy decode.
    invalid_sequences: usize,
    /// Bytes inside those subsequences.
    invalid_bytes: usize,
}

impl Utf8Scan {
    fn of(bytes: &[u8]) -> Utf8Scan {
        // In valid UTF-8 every byte >= 0xC0 starts a multi-byte character.
        let leads = |valid: &[u8]| valid.iter().filter(|&&b| b >= 0xC0).count();
        let mut scan = Utf8Scan {
            multibyte_chars: 0,
            invalid_sequences: 0,
            invalid_bytes: 0,
        };
        let mut rest = bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(_) => {
                    scan.multibyte_chars += leads(rest);
                    return scan;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    scan.multibyte_chars += leads(&rest[..valid]);
                    // `None` means the input ends inside a sequence.
                    let bad = e.error_len().unwrap_or(rest.len() - valid);
                    scan.invalid_sequences += 1;
                    scan.invalid_bytes += bad;
                    rest = &rest[valid + bad..];
                }
            }
        }
    }
}

/// Recognises UTF-16 written without a byte-order mark, as some Windows tools do.
///
/// JSON starts with ASCII, so UTF-16 puts a zero byte at index 1 (LE) or 0 (BE) while
/// UTF-8 and legacy text never start with NUL; that two-byte test keeps this off the
/// hot path. Only then are the zero bytes of a prefix counted: text that is mostly
/// ASCII has a zero in one parity of nearly every code unit and almost none in the other.
fn sniff_utf16(bytes: &[u8]) -> Option<&'static Encoding> {
    let [first, second, ..] = bytes else {
        return None;
    };
    if (*first == 0) == (*second == 0) {
        return None;
    }
    let sample = &bytes[..bytes.len().min(4096) & !1];
    let units = sample.len() / 2;
    let zeros_at = |parity: usize| {
        sample
            .iter()
            .skip(parity)
            .step_by(2)
            .filter(|&&b| b == 0)
            .count()
    };
    let (even, odd) = (zeros_at(0), zeros_at(1));
    let mostly = |n: usize| n * 2 >= units;
    let hardly = |n: usize| n * 8 <= units;
    if mostly(odd) && hardly(even) {
        Some(UTF_16LE)
    } else if mostly(even) && hardly(odd) {
        Some(UTF_16BE)
    } else {
        None
    }
}

/// Below this many non-ASCII bytes chardetng has too little to go on and its guess
/// jumps between unrelated scripts (two curly quotes alone come out as IBM866).
const MIN_LEGACY_EVIDENCE: usize = 16;

/// Picks the legacy encoding of text that is not UTF-8.
///
/// Falls back to windows-1252 — what Windows tools write English text in, and what
/// the agents feeding this project have produced — whenever chardetng's guess is not
/// well founded: too few non-ASCII bytes, a guess it does not itself trust, or a guess
/// that reads some bytes as C1 control characters (which no real text contains, while
/// windows-1252 reads those bytes as quotes, dashes and the euro sign).
fn legacy_encoding(bytes: &[u8]) -> &'static Encoding {
    let non_ascii = bytes.iter().filter(|b| !b.is_ascii()).count();
    if non_ascii < MIN_LEGACY_EVIDENCE {
        return WINDOWS_1252;
    }
    let mut detector = chardetng::EncodingDetector::new();
    detector.feed(bytes, true);
    let (guess, confident) = detector.guess_assess(None, false);
    if !confident || guess == WINDOWS_1252 {
        return WINDOWS_1252;
    }
    let (text, _) = guess.decode_without_bom_handling(bytes);
    if text.chars().any(|c| ('\u{80}'..='\u{9F}').contains(&c)) {
        return WINDOWS_1252;
    }
    guess
}

/// Decodes with an `encoding_rs` encoding, counting the bytes it had to replace.
fn with_encoding(encoding: &'static Encoding, bytes: &[u8], bom: bool) -> Decoded<'static> {
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut text = String::new();
    let mut rest = bytes;
    let mut replaced_bytes = 0;
    loop {
        // The decoder writes only into spare capacity, so reserve its worst case.
        let room = decoder
            .max_utf8_buffer_length_without_replacement(rest.len())
            .expect("a slice length times a small factor fits in usize");
        text.reserve(room);
        let (result, read) = decoder.decode_to_string_without_replacement(rest, &mut text, true);
        rest = &rest[read..];
        match result {
            DecoderResult::InputEmpty => break,
            DecoderResult::OutputFull => {}
            DecoderResult::Malformed(len, _) => {
                replaced_bytes += usize::from(len);
                text.push('\u{FFFD}');
            }
        }
    }
    Decoded {
        text: Cow::Owned(text),
        encoding: encoding.name(),
        bom,
        replaced: replaced_bytes > 0,
        replaced_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str, big_endian: bool, bom: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let units = bom.then_some(0xFEFF).into_iter().chain(text.encode_utf16());
        for unit in units {
            if big_endian {
                out.extend_from_slice(&unit.to_be_bytes());
            } else {
                out.extend_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }

    struct Case {
        name: &'static str,
        input: Vec<u8>,
        text: &'static str,
        encoding: &'static str,
        bom: bool,
        replaced_bytes: usize,
        borrowed: bool,
        label: &'static str,
    }

    fn cases() -> Vec<Case> {
        let json =
            r#"[{"question": "Qu’est-ce que le RSI ?", "answer": "Über 70 — “overbought”, 5 €"}]"#;
        vec![
            Case {
                name: "utf8_plain",
                input: json.as_bytes().to_vec(),
                text: json,
                encoding: "UTF-8",
                bom: false,
                replaced_bytes: 0,
                borrowed: true,
                label: "UTF-8",
            },
            Case {
                name: "utf8_bom",
                input: [b"\xEF\xBB\xBF".as_slice(), json.as_bytes()].concat(),
                text: json,
                encoding: "UTF-8",
                bom: true,
                replaced_bytes: 0,
                borrowed: true,
                label: "UTF-8 (BOM)",
            },
            Case {
                name: "utf8_bom_then_malformed",
                input: b"\xEF\xBB\xBF{\"a\": \"x\xFFy\"}".to_vec(),
                text: "{\"a\": \"x\u{FFFD}y\"}",
                encoding: "UTF-8",
                bom: true,
                replaced_bytes: 1,
                borrowed: false,
                label: "UTF-8 (BOM, lossy: 1 byte replaced)",
            },
            Case {
                name: "utf16le_bom",
                input: utf16(json, false, true),
                text: json,
                encoding: "UTF-16LE",
                bom: true,
                replaced_bytes: 0,
                borrowed: false,
                label: "UTF-16LE (BOM)",
            },
            Case {
                name: "utf16be_bom",
                input: utf16(json, true, true),
                text: json,
                encoding: "UTF-16BE",
                bom: true,
                replaced_bytes: 0,
                borrowed: false,
                label: "UTF-16BE (BOM)",
            },
            Case {
                name: "utf16le_bom_odd_length",
                input: [utf16("[1]", false, true), vec![0x41]].concat(),
                text: "[1]\u{FFFD}",
                encoding: "UTF-16LE",
                bom: true,
                replaced_bytes: 1,
                borrowed: false,
                label: "UTF-16LE (BOM, lossy: 1 byte replaced)",
            },
            Case {
                name: "utf16le_no_bom",
                input: utf16(json, false, false),
                text: json,
                encoding: "UTF-16LE",
                bom: false,
                replaced_bytes: 0,
                borrowed: false,
                label: "UTF-16LE",
            },
            Case {
                name: "utf16be_no_bom",
                input: utf16(json, true, false),
                text: json,
                encoding: "UTF-16BE",
                bom: false,
                replaced_bytes: 0,
                borrowed: false,
                label: "UTF-16BE",
            },
            Case {
                name: "windows1252_quotes_accents_euro",
                input: b"[{\"question\": \"What\x92s the RSI \x93overbought\x94 level?\", \
                         \"answer\": \"Caf\xe9 \xfcber \x91x\x92 \x96 70 \x97 5\x80\"}]"
                    .to_vec(),
                text: "[{\"question\": \"What’s the RSI “overbought” level?\", \
                       \"answer\": \"Café über ‘x’ – 70 — 5€\"}]",
                encoding: "windows-1252",
                bom: false,
                replaced_bytes: 0,
                borrowed: false,
                label: "windows-1252",
            },
            Case {
                // chardetng alone calls this IBM866.
                name: "windows1252_short_curly_quotes",
                input: b"\x93\x94".to_vec(),
                text: "“”",
                encoding: "windows-1252",
                bom: false,
                replaced_bytes: 0,
                borrowed: false,
                label: "windows-1252",
            },
            Case {
                name: "windows1252_with_accidental_utf8_pair",
                // "Ã©" is a valid UTF-8 sequence by accident; the isolated bytes outvote it.
                input: b"\xc3\xa9 \x93a\x94 caf\xe9 na\xefve".to_vec(),
                text: "Ã© “a” café naïve",
                encoding: "windows-1252",
                bom: false,
                replaced_bytes: 0,
                borrowed: false,
                label: "windows-1252",
            },
            Case {
                // No well-formed multi-byte character to vouch for UTF-8.
                name: "isolated_high_byte_in_ascii",
                input: b"{\"a\": \"x\xFFy\"}".to_vec(),
                text: "{\"a\": \"x\u{FF}y\"}",
                encoding: "windows-1252",
                bom: false,
                replaced_bytes: 0,
                borrowed: false,
                label: "windows-1252",
            },
            Case {
                name: "utf8_corrupt_two_bytes",
                input: [
                    "{\"answer\": \"Bollinger — “bands” café ".as_bytes(),
                    b"\xff\xfe",
                    " €5\"}".as_bytes(),
                ]
                .concat(),
                text: "{\"answer\": \"Bollinger — “bands” café \u{FFFD}\u{FFFD} €5\"}",
                encoding: "UTF-8",
                bom: false,
                replaced_bytes: 2,
                borrowed: false,
                label: "UTF-8 (lossy: 2 bytes replaced)",
            },
            Case {
                name: "utf8_truncated_sequence",
                input: ["é “x” ".as_bytes(), &"€".as_bytes()[..2], b" y".as_slice()].concat(),
                text: "é “x” \u{FFFD} y",
                encoding: "UTF-8",
                bom: false,
                replaced_bytes: 2,
                borrowed: false,
                label: "UTF-8 (lossy: 2 bytes replaced)",
            },
            Case {
                name: "empty",
                input: Vec::new(),
                text: "",
                encoding: "UTF-8",
                bom: false,
                replaced_bytes: 0,
                borrowed: true,
                label: "UTF-8",
            },
            Case {
                name: "bom_only",
                input: b"\xEF\xBB\xBF".to_vec(),
                text: "",
                encoding: "UTF-8",
                bom: true,
                replaced_bytes: 0,
                borrowed: true,
                label: "UTF-8 (BOM)",
            },
            Case {
                // Not UTF-16: both parities are zero.
                name: "nul_bytes",
                input: b"\0\0\0\0".to_vec(),
                text: "\0\0\0\0",
                encoding: "UTF-8",
                bom: false,
                replaced_bytes: 0,
                borrowed: true,
                label: "UTF-8",
            },
        ]
    }

    #[test]
    fn decode_cases() {
        for case in cases() {
            let got = decode(&case.input);
            let name = case.name;
            assert_eq!(got.text, case.text, "case {name}: text");
            assert_eq!(got.encoding, case.encoding, "case {name}: encoding");
            assert_eq!(got.bom, case.bom, "case {name}: bom");
            assert_eq!(
                got.replaced,
                case.replaced_bytes > 0,
                "case {name}: replaced"
            );
            assert_eq!(
                got.replaced_bytes, case.replaced_bytes,
                "case {name}: count"
            );
            assert_eq!(
                matches!(got.text, Cow::Borrowed(_)),
                case.borrowed,
                "case {name}: borrowed"
            );
            assert_eq!(got.label(), case.label, "case {name}: label");
        }
    }

    #[test]
    fn windows1252_every_printable_high_byte_round_trips() {
        // Each printable windows-1252 character, isolated between ASCII as a legacy
        // editor would write it, must come back as itself.
        let mut bytes = b"{\"answer\": \"".to_vec();
        let mut want = String::from("{\"answer\": \"");
        for b in 0x80..=0xFFu8 {
            let byte = [b];
            let (c, _) = WINDOWS_1252.decode_without_bom_handling(&byte);
            if c.chars().all(|c| !c.is_control()) {
                bytes.extend_from_slice(&[b, b' ']);
                want.push_str(&c);
                want.push(' ');
            }
        }
        bytes.extend_from_slice(b"\"}");
        want.push_str("\"}");
        let got = decode(&bytes);
        assert_eq!(got.encoding, "windows-1252");
        assert_eq!(got.text, want);
        assert!(!got.replaced);
    }

    /// The seeds lost grayscale_holdings_qa_pairs.json to a UTF-8 decode error: an
    /// agent had written it in windows-1252. Long enough to go through chardetng.
    #[test]
    fn grayscale_holdings_windows1252_file_decodes() {
        let text = r#"[
  {"question": "What are Grayscale’s holdings worth?", "answer": "Grayscale’s trusts hold roughly 620,000 BTC — about €25 billion — and the “discount to NAV” tracks sentiment."},
  {"question": "Why did GBTC trade at a discount?", "answer": "Redemptions were closed, so arbitrageurs couldn’t close the gap; the discount reached 49 % in Dec 2022 – a record."},
  {"question": "Is the premium a sentiment gauge?", "answer": "Yes: a premium signals “greed”, a discount signals fear. Analysts at a Zürich café called it ‘the naïve trade’."}
]"#;
        let (bytes, _, unmappable) = WINDOWS_1252.encode(text);
        assert!(!unmappable);
        assert!(bytes.iter().filter(|b| !b.is_ascii()).count() >= MIN_LEGACY_EVIDENCE);
        assert!(std::str::from_utf8(&bytes).is_err());
        let got = decode(&bytes);
        assert_eq!(got.label(), "windows-1252");
        assert_eq!(got.text, text);
    }

    #[test]
    fn long_legacy_text_still_uses_chardetng() {
        // Enough Cyrillic evidence that chardetng, not the fallback, decides.
        let text = "Индекс относительной силы показывает перекупленность рынка.";
        let (bytes, _, unmappable) = encoding_rs::WINDOWS_1251.encode(text);
        assert!(!unmappable);
        let got = decode(&bytes);
        assert_eq!(got.encoding, "windows-1251");
        assert_eq!(got.text, text);
    }
}
