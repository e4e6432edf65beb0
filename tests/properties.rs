//! Property tests (proptest) of the parser: `decode`, `layout` and the pair key never
//! panic, on arbitrary bytes or arbitrary JSON, and generated pairs written in every
//! layout and every encoding parse back to exactly those pairs.
//!
//! `cargo test --test properties` runs 256 cases per property. The long run that
//! RELIABILITY.md records: `PROPTEST_CASES=1000000 cargo test --release --test
//! properties` (in the background, see RELIABILITY.md for the command and figures).

use perpetual::engine::decode::decode;
use perpetual::engine::ingest::{Outcome, parse_bytes};
use perpetual::engine::layout::{self, Layout, RawPair};
use perpetual::pair::{normalise, pair_key, pair_key_with};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use unicode_normalization::UnicodeNormalization;

/// Text a writer may put in a question or an answer: any character but the C0 controls
/// the parser removes (tab and newline stay), not blank.
///
/// Built rather than filtered: a filter's rejections add up over a million cases, and
/// proptest gives up past 65,536 of them.
fn text(chars: impl Strategy<Value = char> + Clone) -> impl Strategy<Value = String> {
    (chars.clone(), proptest::collection::vec(chars, 0..40)).prop_map(|(first, rest)| {
        let first = if first.is_whitespace() { 'x' } else { first };
        std::iter::once(first).chain(rest).collect::<String>()
    })
}

fn any_text_char() -> impl Strategy<Value = char> + Clone {
    // A C0 control other than tab and newline becomes the printable character 0x20 on.
    any::<char>().prop_map(|c| {
        if c < ' ' && c != '\t' && c != '\n' {
            char::from(c as u8 + 0x20)
        } else {
            c
        }
    })
}

/// Western text as people write it, which windows-1252 encodes and a detector
/// recognises: mostly ASCII, an accent or a typographic quote now and then. (Denser
/// accents, a soup like "£’ é öéüé", are ambiguous between windows-1252 and
/// windows-1250 without a declared charset; proptest found that; RELIABILITY.md says
/// so.)
fn western_char() -> impl Strategy<Value = char> + Clone {
    prop_oneof![
        20 => proptest::char::range(' ', '~'),
        1 => prop::sample::select(vec!['é', 'è', 'à', 'ü', 'ö', 'ñ', 'ç', 'ß', '’', '“', '”', '—', '€', '£']),
    ]
}

/// Mostly ASCII (UTF-16 without a byte-order mark is recognised by its zero bytes).
fn mostly_ascii_char() -> impl Strategy<Value = char> + Clone {
    prop_oneof![
        12 => proptest::char::range(' ', '~'),
        1 => any_text_char(),
    ]
}

/// Keys that are none of the recognised aliases nor `qa_pairs`.
fn extra_key() -> impl Strategy<Value = String> {
    // Never a recognised field or `qa_pairs` (built, not filtered: see `text`).
    "x_[a-z_]{0,7}"
}

fn extra_value() -> impl Strategy<Value = Value> {
    extra_value_of(".{0,12}".boxed())
}

/// Any JSON value but floats (whose text serde_json need not reproduce exactly),
/// with strings from `strings`.
fn extra_value_of(strings: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        strings.prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn raw_pair(
    chars: impl Strategy<Value = char> + Clone + 'static,
) -> impl Strategy<Value = RawPair> {
    let strings = proptest::collection::vec(chars.clone(), 0..12)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .boxed();
    (
        text(chars.clone()),
        text(chars.clone()),
        proptest::option::of(text(chars.clone())),
        proptest::option::of(text(chars)),
        proptest::collection::btree_map(extra_key(), extra_value_of(strings), 0..4),
    )
        .prop_map(|(question, answer, indicator, category, extra)| RawPair {
            question,
            answer,
            indicator,
            category,
            extra: extra.into_iter().collect(),
        })
}

fn pair_object(p: &RawPair) -> Value {
    let mut m = Map::new();
    m.insert("question".into(), json!(p.question));
    m.insert("answer".into(), json!(p.answer));
    if let Some(i) = &p.indicator {
        m.insert("indicator".into(), json!(i));
    }
    if let Some(c) = &p.category {
        m.insert("category".into(), json!(c));
    }
    for (k, v) in &p.extra {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// The pairs written in `layout`, as serde_json writes JSON.
fn serialize(pairs: &[RawPair], layout: Layout) -> String {
    let objects: Vec<Value> = pairs.iter().map(pair_object).collect();
    match layout {
        Layout::Flat => Value::Array(objects).to_string(),
        Layout::Nested => json!({ "qa_pairs": objects }).to_string(),
        Layout::NestedArray => Value::Array(
            objects
                .chunks(2)
                .map(|c| json!({ "qa_pairs": c }))
                .collect(),
        )
        .to_string(),
        Layout::JsonLines => objects.iter().map(|o| format!("{o}\n")).collect(),
        Layout::Single => objects[0].to_string(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Utf8,
    Utf8Bom,
    Utf16LeBom,
    Utf16BeBom,
    Utf16LeBare,
    Windows1252,
}

fn encode(text: &str, encoding: Encoding) -> Vec<u8> {
    let utf16 = |be: bool, bom: bool| {
        let mut out = Vec::new();
        if bom {
            out.extend(if be { [0xFE, 0xFF] } else { [0xFF, 0xFE] });
        }
        for u in text.encode_utf16() {
            out.extend(if be { u.to_be_bytes() } else { u.to_le_bytes() });
        }
        out
    };
    match encoding {
        Encoding::Utf8 => text.as_bytes().to_vec(),
        Encoding::Utf8Bom => [&b"\xEF\xBB\xBF"[..], text.as_bytes()].concat(),
        Encoding::Utf16LeBom => utf16(false, true),
        Encoding::Utf16BeBom => utf16(true, true),
        Encoding::Utf16LeBare => utf16(false, false),
        Encoding::Windows1252 => {
            let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
            assert!(!unmappable, "western text only");
            bytes.into_owned()
        }
    }
}

fn layouts(n: usize) -> Vec<Layout> {
    let mut l = vec![
        Layout::Flat,
        Layout::Nested,
        Layout::NestedArray,
        Layout::JsonLines,
    ];
    if n == 1 {
        l.push(Layout::Single);
    }
    l
}

/// Writes `pairs` in every layout in `encoding` and reads them back through the whole
/// pipeline's first half (decode, parse, keys).
fn round_trip(pairs: &[RawPair], encoding: Encoding) -> Result<(), TestCaseError> {
    for layout in layouts(pairs.len()) {
        let text = serialize(pairs, layout);
        let bytes = encode(&text, encoding);
        let decoded = decode(&bytes);
        let parsed = layout::parse(&decoded.text)
            .map_err(|e| TestCaseError::fail(format!("{encoding:?} {layout:?}: {e}\n{text}")))?;
        if matches!(encoding, Encoding::Windows1252) && decoded.encoding != "windows-1252" {
            // No charset is declared, and these bytes read as well in another encoding
            // (valid UTF-8 by coincidence, UTF-8 with a corrupt byte for "ßß’", or
            // windows-1250 for a soup of accents): the detector's choice, which the
            // ledger's label records. Nothing is lost: every pair is still there, none
            // longer than written.
            prop_assert_eq!(parsed.pairs.len(), pairs.len());
            for (got, want) in parsed.pairs.iter().zip(pairs) {
                prop_assert!(got.question.chars().count() <= want.question.chars().count());
            }
            continue;
        }
        prop_assert!(
            !decoded.replaced,
            "{encoding:?} {layout:?}: nothing replaced"
        );
        let want = if layout == Layout::JsonLines && pairs.len() == 1 {
            Layout::Single
        } else {
            layout
        };
        prop_assert_eq!(parsed.layout, want);
        prop_assert!(parsed.invalid.is_empty(), "{:?}", parsed.invalid);
        prop_assert!(parsed.salvage.is_empty(), "{:?}", parsed.salvage);
        prop_assert_eq!(
            &parsed.pairs,
            &pairs.to_vec(),
            "{:?} {:?}",
            encoding,
            layout
        );
        // And the keys the writer dedups on are the keys of the pairs written.
        match parse_bytes(&bytes) {
            Outcome::Parsed(f) => {
                let keys: Vec<_> = f.pairs.iter().map(|p| p.key).collect();
                let want: Vec<_> = pairs
                    .iter()
                    .map(|p| pair_key(&p.question, &p.answer))
                    .collect();
                prop_assert_eq!(keys, want);
            }
            other => prop_assert!(false, "{encoding:?} {layout:?}: {other:?}"),
        }
    }
    Ok(())
}

proptest! {
    // PROPTEST_CASES sets the number of cases (256 by default); failures are shrunk
    // and printed, not saved (tests/ has no lib.rs to save them beside).
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_and_keeps_valid_utf8(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let d = decode(&bytes);
        if let Ok(s) = std::str::from_utf8(&bytes)
            && !s.starts_with('\u{feff}')
            && !(bytes.len() >= 2 && (bytes[0] == 0) != (bytes[1] == 0))
        {
            prop_assert_eq!(d.text.as_ref(), s);
        }
        let _ = d.label();
    }

    #[test]
    fn the_pipeline_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_bytes(&bytes);
    }

    #[test]
    fn layout_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let _ = layout::parse(&text);
        let _ = layout::peek_session(&text);
    }

    #[test]
    fn layout_never_panics_on_arbitrary_json(value in extra_value(), salt in prop::sample::select(vec!["", "NaN", "\\ud800", "\n{", "1e400", "\u{FDD0}"])) {
        // Arbitrary JSON, sometimes with what the salvage repairs spliced in.
        let text = value.to_string();
        let at = text.len() / 2;
        let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        for t in [text.clone(), format!("{}{salt}{}", &text[..at], &text[at..]), format!("[{text}, {{\"q\": \"x\", \"a\": \"y\", \"v\": {}}}]", if salt.is_empty() { "1" } else { salt })] {
            if let Ok(p) = layout::parse(&t) {
                prop_assert!(!p.pairs.is_empty());
                for pair in &p.pairs {
                    prop_assert!(!pair.question.trim().is_empty() && !pair.answer.trim().is_empty());
                }
            }
        }
    }

    #[test]
    fn pairs_round_trip_in_every_layout_utf8(pairs in proptest::collection::vec(raw_pair(any_text_char()), 1..6)) {
        round_trip(&pairs, Encoding::Utf8)?;
        round_trip(&pairs, Encoding::Utf8Bom)?;
    }

    #[test]
    fn pairs_round_trip_in_every_layout_utf16(pairs in proptest::collection::vec(raw_pair(any_text_char()), 1..6)) {
        round_trip(&pairs, Encoding::Utf16LeBom)?;
        round_trip(&pairs, Encoding::Utf16BeBom)?;
    }

    #[test]
    fn pairs_round_trip_in_every_layout_utf16_without_a_byte_order_mark(pairs in proptest::collection::vec(raw_pair(mostly_ascii_char()), 1..6)) {
        round_trip(&pairs, Encoding::Utf16LeBare)?;
    }

    #[test]
    fn pairs_round_trip_in_every_layout_windows_1252_when_detected(pairs in proptest::collection::vec(raw_pair(western_char()), 1..6)) {
        round_trip(&pairs, Encoding::Windows1252)?;
    }

    #[test]
    fn the_pair_key_is_the_key_of_the_normalised_text(q in ".{0,60}", a in ".{0,60}") {
        let (nq, na) = (normalise(&q), normalise(&a));
        prop_assert_eq!(pair_key(&q, &a), pair_key(&nq, &na));
        prop_assert_eq!(normalise(&nq), nq.clone(), "idempotent");
        // The ASCII fast path and the general one agree with the definition.
        let reference = q.nfc().collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ");
        prop_assert_eq!(&nq, &reference);
        let mut scratch = String::from("left over");
        prop_assert_eq!(pair_key_with(&q, &a, &mut scratch), pair_key(&q, &a));
        // The separator keeps question and answer apart.
        prop_assert!(!nq.contains('\n'));
    }

    #[test]
    fn different_normalised_pairs_have_different_keys(q1 in ".{1,20}", a1 in ".{1,20}", q2 in ".{1,20}", a2 in ".{1,20}") {
        let same = (normalise(&q1), normalise(&a1)) == (normalise(&q2), normalise(&a2));
        prop_assert_eq!(pair_key(&q1, &a1) == pair_key(&q2, &a2), same);
    }
}
