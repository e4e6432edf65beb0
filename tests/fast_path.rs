//! The simd-json fast path of `layout::parse` agrees with the serde_json reference
//! (`layout::parse_reference`) on every text: the same pairs, invalid pairs, layout,
//! session and salvage, or the same error. Checked on arbitrary drop-shaped documents
//! (proptest: every alias, duplicate keys, labels of every JSON type, inherited fields,
//! control characters, numbers serde_json and simd-json could read differently, JSON
//! Lines), on every file the generator writes, and on the generator's bad files; and
//! the fast path takes realistic drops (it is the one that runs).

use perpetual::engine::decode::decode;
use perpetual::engine::layout;
use perpetual::generate::{self, BadKind, DropEncoding, DropLayout, GenConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A JSON text under construction: objects may repeat a key, and `Raw` splices text
/// that no `Value` holds (numbers as written, NaN, escapes).
#[derive(Clone, Debug)]
enum J {
    Leaf(Value),
    Raw(&'static str),
    Obj(Vec<(String, J)>),
    Arr(Vec<J>),
}

fn render(j: &J, out: &mut String) {
    match j {
        J::Leaf(v) => out.push_str(&v.to_string()),
        J::Raw(r) => out.push_str(r),
        J::Obj(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                render(v, out);
            }
            out.push('}');
        }
        J::Arr(items) => {
            out.push_str("[\n  ");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n  ");
                }
                render(v, out);
            }
            out.push_str("\n]");
        }
    }
}

fn text_of(j: &J) -> String {
    let mut s = String::new();
    render(j, &mut s);
    s
}

const ALIASES: [&str; 10] = [
    "question",
    "q",
    "prompt",
    "answer",
    "a",
    "response",
    "category",
    "indicator_category",
    "indicator",
    "indicator_name",
];

/// Numbers as written that the two parsers could read apart, and what the salvage
/// repairs.
const RAW: [&str; 16] = [
    "-0",
    "-0.0",
    "0",
    "123456789.123456789123",
    "0.1000000000000000055511151231257827",
    "2.2250738585072011e-308",
    "5e-324",
    "1e-400",
    "1E2",
    "18446744073709551616",
    "-9223372036854775809",
    "9007199254740993",
    "1e400",
    "NaN",
    "\"\\ud800\"",
    "\"a\\u0001b\\u001b[2J\"",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(ALIASES.to_vec()).prop_map(str::to_string),
        1 => Just("qa_pairs".to_string()),
        1 => Just("session".to_string()),
        3 => "[a-z_]{1,6}",
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => ".{1,24}",
        1 => Just("   ".to_string()),
        1 => Just("a\u{1}b\tc\n\u{7f}".to_string()),
        1 => Just("session_42".to_string()),
        1 => Just("ca\u{301}fe\u{a0}\u{fdd0}".to_string()),
    ]
}

fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        6 => string().prop_map(|s| J::Leaf(json!(s))),
        2 => any::<i64>().prop_map(|n| J::Leaf(json!(n))),
        2 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| J::Leaf(json!(f))),
        1 => any::<bool>().prop_map(|b| J::Leaf(json!(b))),
        1 => Just(J::Leaf(Value::Null)),
        2 => prop::sample::select(RAW.to_vec()).prop_map(J::Raw),
    ]
}

fn value() -> impl Strategy<Value = J> {
    leaf().prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..4).prop_map(J::Obj),
        ]
    })
}

/// Question and answer texts as written that the engine salvages: lone surrogates
/// (U+FFFD), escaped NUL and C0 controls (removed), and text that is only that.
const SALVAGED: [&str; 6] = [
    "\"\\ud800 what is RSI?\"",
    "\"RSI \\udfff\\ud83d\"",
    "\"a\\u0000b\\u0007c\\u001b[2J\"",
    "\"\\u0000\\u0001\"",
    "\"\\ud83d\\ude00 fine\"",
    "\"tab\\tand\\nnewline kept\"",
];

/// A question or answer: mostly a plain string, sometimes one the engine salvages.
fn qa_text() -> impl Strategy<Value = J> {
    prop_oneof![
        6 => string().prop_map(|s| J::Leaf(json!(s))),
        1 => prop::sample::select(SALVAGED.to_vec()).prop_map(J::Raw),
    ]
}

/// An object in a pair position: mostly a good pair, sometimes not.
fn pair() -> impl Strategy<Value = J> {
    let good = (
        prop::sample::select(vec!["question", "q", "prompt"]),
        prop::sample::select(vec!["answer", "a", "response"]),
        qa_text(),
        qa_text(),
        prop::collection::vec((key(), value()), 0..4),
    )
        .prop_map(|(qk, ak, q, a, rest)| {
            let mut fields = vec![(qk.to_string(), q), (ak.to_string(), a)];
            fields.extend(rest);
            J::Obj(fields)
        });
    prop_oneof![
        8 => good,
        1 => prop::collection::vec((key(), value()), 0..5).prop_map(J::Obj),
        1 => leaf(),
    ]
}

fn nested() -> impl Strategy<Value = J> {
    (
        prop::collection::vec((key(), value()), 0..4),
        prop::collection::vec(pair(), 0..4),
    )
        .prop_map(|(mut top, pairs)| {
            top.push(("qa_pairs".to_string(), J::Arr(pairs)));
            J::Obj(top)
        })
}

/// A whole drop, in any of the five layouts (and things that are none).
fn document() -> impl Strategy<Value = String> {
    let element = prop_oneof![4 => pair(), 1 => nested()];
    prop_oneof![
        3 => prop::collection::vec(pair(), 0..5).prop_map(|v| text_of(&J::Arr(v))),
        2 => nested().prop_map(|j| text_of(&j)),
        1 => prop::collection::vec(element.clone(), 0..5).prop_map(|v| text_of(&J::Arr(v))),
        1 => pair().prop_map(|j| text_of(&j)),
        2 => prop::collection::vec(element, 1..5).prop_map(|v| {
            v.iter().map(|j| text_of(j).replace('\n', " ")).collect::<Vec<_>>().join("\n")
        }),
        1 => value().prop_map(|j| text_of(&j)),
        // JSON Lines with a line that is not JSON (kept as an invalid line).
        1 => prop::collection::vec(pair(), 1..4).prop_map(|v| {
            let mut lines: Vec<String> = v.iter().map(|j| text_of(j).replace('\n', " ")).collect();
            lines.insert(lines.len() / 2, "{\"question\": \"cut".to_string());
            lines.join("\n")
        }),
    ]
}

/// The same answer from both paths, errors included.
fn agree(text: &str) -> Result<(), TestCaseError> {
    let fast = layout::parse(text);
    let reference = layout::parse_reference(text);
    match (&fast, &reference) {
        (Ok(f), Ok(r)) => prop_assert_eq!(f, r, "text: {}", text),
        (Err(f), Err(r)) => prop_assert_eq!(f.to_string(), r.to_string(), "text: {}", text),
        _ => prop_assert!(
            false,
            "fast {:?} but reference {:?} for {}",
            fast,
            reference,
            text
        ),
    }
    if let Some(f) = layout::parse_fast(text) {
        prop_assert_eq!(
            Ok(&f),
            reference.as_ref().map_err(|e| e.to_string()),
            "fast path alone: {}",
            text
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_fast_path_agrees_with_the_reference(text in document()) {
        agree(&text)?;
    }
}

#[test]
fn the_fast_path_takes_every_generated_drop_and_agrees() {
    let files = generate::generate(&GenConfig {
        seed: 7,
        files: 60,
        pairs_per_file: 12,
        duplicate_ratio: 0.2,
        layouts: DropLayout::ALL.to_vec(),
        encodings: DropEncoding::ALL.to_vec(),
        answer_chars: Some((800, 2000)),
        ..GenConfig::default()
    });
    for f in &files {
        let decoded = decode(&f.bytes);
        let text = decoded.text.as_ref();
        let fast =
            layout::parse_fast(text).unwrap_or_else(|| panic!("{} left the fast path", f.name));
        let reference = layout::parse_reference(text).unwrap();
        assert_eq!(fast, reference, "{}", f.name);
        assert_eq!(fast.pairs.len(), f.pairs, "{}", f.name);
    }
}

#[test]
fn bad_files_get_the_reference_answer() {
    for kind in BadKind::ALL {
        let (name, bytes) = generate::bad_file(kind);
        let decoded = decode(&bytes);
        let text = decoded.text.as_ref();
        let fast = layout::parse(text).map_err(|e| e.to_string());
        let reference = layout::parse_reference(text).map_err(|e| e.to_string());
        assert_eq!(fast, reference, "{name}");
    }
}

#[test]
fn numbers_read_as_serde_json_reads_them() {
    // Each as an extra field of a good pair, so the fast path takes the file.
    for raw in RAW.iter().take(12) {
        let text =
            format!(r#"[{{"question": "q", "answer": "a", "n": {raw}, "indicator": {raw}}}]"#);
        agree(&text).unwrap();
    }
}

#[test]
fn salvaged_drops_get_the_reference_answer() {
    // Each salvage rule once, in the layouts an agent writes: the fast path must give
    // them to the reference (or agree with it), never read them its own way.
    let cases = [
        // A lone surrogate in the question becomes U+FFFD, counted.
        r#"[{"question": "\ud800 what?", "answer": "an answer"}]"#,
        // NUL and C0 controls removed from the answer, counted; tab and newline kept.
        r#"[{"question": "q", "answer": "a\u0000b\u0007c\td\ne"}]"#,
        // Raw control bytes inside a string (invalid JSON) are salvaged too.
        "[{\"question\": \"q\u{1}\", \"answer\": \"a\"}]",
        // A question that is nothing but controls is empty once cleaned: invalid.
        r#"[{"question": "\u0001", "answer": "a"}, {"question": "q", "answer": "a"}]"#,
        // Non-finite numbers are kept as their source text.
        r#"[{"question": "q", "answer": "a", "score": NaN, "indicator": Infinity}]"#,
        r#"{"session": -Infinity, "qa_pairs": [{"question": "q", "answer": "a", "x": 1e400}]}"#,
        // JSON Lines: an invalid line is reported and the others kept.
        "{\"question\": \"q1\", \"answer\": \"a1\"}\nnot json\n{\"question\": \"q2\", \"answer\": \"a2\"}",
        "{\"question\": \"q1\", \"answer\": \"\\ud800\"}\n{\"question\": \"q2\", \"answer\": \"a2\"}\n",
        // A duplicate key: serde_json keeps the last value in the first one's place.
        r#"[{"question": "first", "answer": "a", "question": "last"}]"#,
        // Deeper than the fast path takes.
        &format!(
            r#"[{{"question": "q", "answer": "a", "deep": {}1{}}}]"#,
            "[".repeat(110),
            "]".repeat(110)
        ),
    ];
    for text in cases {
        agree(text).unwrap();
    }
    // And the rules did apply (so the cases above test what they say).
    let salvage = |t: &str| layout::parse(t).unwrap().salvage;
    assert_eq!(salvage(cases[0]).surrogates_replaced, 1);
    assert!(
        layout::parse(cases[0]).unwrap().pairs[0]
            .question
            .starts_with('\u{fffd}')
    );
    assert_eq!(
        layout::parse(cases[1]).unwrap().pairs[0].answer,
        "abc\td\ne"
    );
    assert_eq!(layout::parse(cases[3]).unwrap().invalid.len(), 1);
    assert_eq!(layout::parse(cases[6]).unwrap().invalid.len(), 1);
    assert_eq!(layout::parse(cases[8]).unwrap().pairs[0].question, "last");
}
