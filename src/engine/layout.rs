//! Layout recognition: turns the decoded text of one dropped file into raw
//! question/answer pairs. This module owns the five accepted file layouts, the
//! field aliases, the inheritance of a nested object's top-level fields, per-pair
//! validation, and the wording of every reason a file or a pair is rejected.
//! The layout is recognised from the content alone, never from the file name.
//! `schemas/` describes the same rules as JSON Schema; keep the two in step.

mod fast;

use crate::pair::{Pair, pair_key_with};
use serde_json::error::Category;
use serde_json::{Map, Value};
use std::fmt;

/// Deepest nesting serde_json accepts. Its recursion budget is 128, but the
/// opening bracket that spends the last unit is already refused, so 127 levels
/// parse and the 128th fails; the message quotes what a user can actually send.
const DEPTH_LIMIT: usize = 127;

/// How a dropped file arranges its pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A JSON array of pair objects.
    Flat,
    /// One object holding a `qa_pairs` array, its other fields inherited by every pair.
    Nested,
    /// An array of nested objects (pair objects may be mixed in).
    NestedArray,
    /// One JSON value per non-blank line, each a pair object or a nested object.
    JsonLines,
    /// One pair object.
    Single,
}

impl Layout {
    /// Every layout, in declaration order.
    pub const ALL: [Layout; 5] = [
        Layout::Flat,
        Layout::Nested,
        Layout::NestedArray,
        Layout::JsonLines,
        Layout::Single,
    ];

    /// The stable name stored in the database and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Flat => "flat",
            Layout::Nested => "nested",
            Layout::NestedArray => "nested_array",
            Layout::JsonLines => "jsonl",
            Layout::Single => "single",
        }
    }

    /// The inverse of [`Layout::as_str`]; `None` for any other text.
    pub fn parse(s: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pair as read from a file, before normalisation. Text is kept exactly as
/// given (not trimmed); validation only guarantees it is not blank.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPair {
    /// From `question`, `q` or `prompt`.
    pub question: String,
    /// From `answer`, `a` or `response`.
    pub answer: String,
    /// From `indicator` or `indicator_name`; a number is turned into its text.
    pub indicator: Option<String>,
    /// From `category` or `indicator_category`; a number is turned into its text.
    pub category: Option<String>,
    /// Every field not recognised above, including fields inherited from a nested object's top level
    /// (batch, session, source, ...). Never dropped. Empty map when there are none.
    pub extra: Map<String, Value>,
}

impl RawPair {
    /// The stored form of a raw pair: computes its key and serialises its extra
    /// fields. `scratch` is reused between calls to avoid an allocation per pair.
    pub fn into_pair(self, scratch: &mut String) -> Pair {
        let key = pair_key_with(&self.question, &self.answer, scratch);
        self.with_key(key)
    }

    /// The stored form of a raw pair whose key is already computed (many at once:
    /// [`crate::pair::pair_keys`]).
    pub fn with_key(self, key: crate::pair::PairKey) -> Pair {
        let extra = if self.extra.is_empty() {
            None
        } else {
            // A Map of Values always serialises.
            Some(Value::Object(self.extra).to_string())
        };
        Pair {
            key,
            question: self.question,
            answer: self.answer,
            indicator: self.indicator,
            category: self.category,
            extra,
        }
    }
}

/// A pair that failed validation, kept for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidPair {
    /// 0-based position in the file's pair sequence (see [`parse`] for the numbering).
    pub index: usize,
    /// Why the pair was refused, e.g. `answer is empty (line 7)`. The parenthesised
    /// place is given only when the index alone does not locate the pair.
    pub reason: String,
}

/// What a dropped file holds once its layout is recognised.
#[derive(Debug, PartialEq)]
pub struct ParsedDrop {
    /// The layout recognised from the content.
    pub layout: Layout,
    /// Valid pairs, in file order.
    pub pairs: Vec<RawPair>,
    /// Invalid pairs, in file order.
    pub invalid: Vec<InvalidPair>,
    /// `session` number of the drop if its content says so (top-level "session" of a nested object, or the
    /// "session" field shared by its pairs), as an integer (accept 123 or "123" or "session_123"). None otherwise.
    /// "Shared" means every valid pair that has a `session` gives the same number; pairs without one
    /// are ignored, and a disagreement or an unreadable value gives `None`.
    pub session: Option<i64>,
    /// What was repaired so that the file could be read (see [`Salvage`]).
    pub salvage: Salvage,
}

/// What [`parse`] repaired instead of refusing a file for it. Each repair is counted,
/// and the ledger keeps the counts with the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Salvage {
    /// JSON Lines lines that are not JSON: each is an invalid pair (with its line
    /// number), and the other lines integrate.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lines_unparsed: usize,
    /// Lone surrogate escapes (`"\ud800"`, as Python's `json.dumps` writes them)
    /// replaced by U+FFFD.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub surrogates_replaced: usize,
    /// `NaN`, `Infinity`, `-Infinity` and numbers out of range (`1e400`), kept as
    /// their source text (a string) where they stand.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub numbers_kept_as_text: usize,
    /// NUL and C0 control characters other than tab and newline removed from a
    /// question, answer, indicator or category.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub controls_removed: usize,
    /// Noncharacters U+FDD0 replaced by U+FFFD in a file that needed repairs (the
    /// repair uses U+FDD0 to mark numbers kept as text).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub noncharacters_replaced: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Salvage {
    /// Whether nothing was repaired.
    pub fn is_empty(&self) -> bool {
        *self == Salvage::default()
    }

    /// The counts as a JSON object for the ledger; `None` when nothing was repaired.
    pub fn to_json(&self) -> Option<String> {
        (!self.is_empty()).then(|| serde_json::to_string(self).expect("counts serialise"))
    }

    /// One phrase for a log line or a listing, e.g. `1 line not JSON, 2 lone surrogates
    /// replaced`; `None` when nothing was repaired.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        let mut add = |n: usize, one: &str, many: &str| {
            if n > 0 {
                parts.push(format!("{n} {}", if n == 1 { one } else { many }));
            }
        };
        add(
            self.lines_unparsed,
            "line not JSON (an invalid pair)",
            "lines not JSON (invalid pairs)",
        );
        add(
            self.surrogates_replaced,
            "lone surrogate replaced by U+FFFD",
            "lone surrogates replaced by U+FFFD",
        );
        add(
            self.numbers_kept_as_text,
            "non-finite number kept as text",
            "non-finite numbers kept as text",
        );
        add(
            self.controls_removed,
            "control character removed",
            "control characters removed",
        );
        add(
            self.noncharacters_replaced,
            "U+FDD0 replaced",
            "U+FDD0 replaced",
        );
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    fn add(&mut self, other: &Salvage) {
        self.lines_unparsed += other.lines_unparsed;
        self.surrogates_replaced += other.surrogates_replaced;
        self.numbers_kept_as_text += other.numbers_kept_as_text;
        self.controls_removed += other.controls_removed;
        self.noncharacters_replaced += other.noncharacters_replaced;
    }
}

impl ParsedDrop {
    /// Number of pairs the file holds, valid or not.
    pub fn total(&self) -> usize {
        self.pairs.len() + self.invalid.len()
    }
}

/// Why a whole file is rejected. `Display` gives one complete sentence that says
/// where in the file the problem is, fit for a log line or the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The text has no characters at all.
    #[error("empty file")]
    Empty,
    /// The text holds only whitespace.
    #[error("no JSON value (whitespace only)")]
    WhitespaceOnly,
    /// The text is not JSON (and not JSON Lines).
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Malformed {
        /// 1-based line of the offending character.
        line: usize,
        /// 1-based column of the offending character.
        column: usize,
        /// serde_json's description, without its location suffix.
        message: String,
    },
    /// The text ends in the middle of a value.
    #[error("truncated JSON: the file ends inside a value at line {line}, column {column}")]
    Truncated {
        /// 1-based line where the text ends.
        line: usize,
        /// Column where the text ends.
        column: usize,
    },
    /// Arrays/objects nest deeper than serde_json accepts.
    #[error("JSON nested too deeply at line {line}, column {column} (limit {limit} levels)")]
    TooDeep {
        /// 1-based line where the limit was crossed.
        line: usize,
        /// 1-based column where the limit was crossed.
        column: usize,
        /// The nesting limit.
        limit: usize,
    },
    /// Valid JSON, but not one of the five layouts.
    #[error(
        "unrecognised layout: {found}; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines"
    )]
    Unrecognised {
        /// What was found instead, e.g. `top-level number` or `empty array`.
        found: String,
    },
    /// A `qa_pairs` field that is not an array.
    #[error("`qa_pairs` {location} is {found}, expected an array")]
    QaPairsNotArray {
        /// Where: `at top level`, `in element [2]` or `on line 4`.
        location: String,
        /// The JSON kind found, with its article (`a string`).
        found: &'static str,
    },
    /// The layout was recognised but no pair passed validation.
    #[error("no valid pair: {}", no_valid_text(.invalid))]
    NoValidPair {
        /// The recognised layout.
        layout: Layout,
        /// Every invalid pair (the message quotes the first three).
        invalid: Vec<InvalidPair>,
    },
}

fn no_valid_text(invalid: &[InvalidPair]) -> String {
    use fmt::Write;
    // Enough reasons to act on without turning a log line into the ledger.
    const QUOTED: usize = 3;
    let total = invalid.len();
    if total == 0 {
        return "the file holds no pairs".to_owned();
    }
    let mut s = if total == 1 {
        "1 pair, invalid (".to_owned()
    } else {
        format!("{total} pairs, all invalid (")
    };
    for (i, p) in invalid.iter().take(QUOTED).enumerate() {
        let sep = if i > 0 { "; " } else { "" };
        let _ = write!(s, "{sep}pair {}: {}", p.index, p.reason);
    }
    if total > QUOTED {
        let _ = write!(s, "; and {} more", total - QUOTED);
    }
    s.push(')');
    s
}

/// Recognises the layout of `text` and extracts and validates its pairs.
///
/// Layouts are tried on the content: a text that is one JSON value is Flat
/// (array of pairs), NestedArray (array with at least one `qa_pairs` object),
/// Nested (object with `qa_pairs`) or Single (object with a question or answer
/// alias). A text that is not one JSON value but whose first non-blank line is
/// one is JSON Lines; one line holding one pair is therefore Single. A leading
/// byte-order mark is ignored. Wherever a nested object may stand (top level,
/// array element, line), an object with a `qa_pairs` key is nested even if it
/// also has pair fields; inside `qa_pairs` every element is a pair position.
/// An object in a pair position without a question or answer alias, or a
/// non-object there, is an invalid pair, not a rejected file.
///
/// Pair numbering ([`InvalidPair::index`]): pairs are counted from 0 in file
/// order across the whole file. Every element of a pairs array counts, valid or
/// not; a nested object contributes one index per element of its `qa_pairs`
/// (an element of a mixed array, or a line, that is a pair counts as one), so in
/// `[{"qa_pairs":[p,p]},p]` the last pair has index 2. Reasons locate the pair
/// when the index does not: `(line 7)`, `(line 7, qa_pairs[2])`, `(at [3])`,
/// `(at [1].qa_pairs[4])`, all 0-based except line numbers.
///
/// Inheritance: every top-level field of a nested object except `qa_pairs` is
/// given to each of its pairs unless the pair has that key itself. For
/// `indicator` and `category` the pair overrides through any alias (its
/// `indicator_name` overrides a top-level `indicator`). A top-level question or
/// answer alias is never a pair's question or answer; it is inherited as an
/// extra field.
///
/// Aliases: when a pair has two aliases of one field, the earlier alias in the
/// order listed on [`RawPair`] wins and the other goes to `extra`. An
/// `indicator`/`category` value that is neither a string nor a number goes to
/// `extra` under its own key and does not compete, so a later alias may supply
/// the field.
///
/// Salvage, not refusal ([`Salvage`] counts each repair): a JSON Lines line (other
/// than the first) that is not JSON is an invalid pair, `not JSON at column C: ...
/// (line N)`; a lone surrogate escape becomes U+FFFD; `NaN`, `Infinity`,
/// `-Infinity` and numbers beyond f64's range are kept as strings of their source
/// text (a question or answer made of one is still invalid: it is a number); NUL and
/// C0 control characters other than tab and newline are removed from questions,
/// answers, indicators and categories (an answer left blank is invalid).
///
/// # Errors
/// Every [`LayoutError`] variant; see its messages. A file with at least one
/// valid pair is `Ok` even if other pairs are invalid. Line and column numbers
/// in messages are 1-based and count characters.
///
/// A drop that needs nothing but reading goes through simd-json (`layout::fast`); any
/// other, and every error, through serde_json ([`parse_reference`]), which gives the
/// same result.
pub fn parse(text: &str) -> Result<ParsedDrop, LayoutError> {
    parse_with(text, true)
}

/// [`parse`] through serde_json alone: the reference that the simd-json fast path is
/// tested against, and what the prepare bench compares it with.
pub fn parse_reference(text: &str) -> Result<ParsedDrop, LayoutError> {
    parse_with(text, false)
}

/// What the simd-json fast path alone makes of `text`: `None` when it leaves the text
/// to serde_json (errors, invalid pairs, repairs, duplicate keys, deep nesting). For
/// the tests and benches that check it takes realistic drops and agrees with
/// [`parse_reference`].
pub fn parse_fast(text: &str) -> Option<ParsedDrop> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_matches(JSON_WHITESPACE).is_empty() {
        return None;
    }
    fast::parse(text)
}

fn parse_with(text: &str, fast: bool) -> Result<ParsedDrop, LayoutError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.is_empty() {
        return Err(LayoutError::Empty);
    }
    if text.trim_matches(JSON_WHITESPACE).is_empty() {
        return Err(LayoutError::WhitespaceOnly);
    }
    if fast && let Some(parsed) = fast::parse(text) {
        return Ok(parsed);
    }
    let mut out = Collector::default();
    let layout = match serde_json::from_str::<Value>(text) {
        Ok(value) => document(value, &mut out)?,
        Err(e) if is_trailing(&e) => json_lines(text, e, &mut out)?,
        Err(e) => match repair(text) {
            // Lone surrogates or non-finite numbers: salvage them and read it again.
            Some(fixed) => match serde_json::from_str::<Value>(&fixed.text) {
                Ok(value) => {
                    out.salvage.add(&fixed.salvage);
                    out.repaired(|out| document(value, out))?
                }
                // JSON Lines, one of whose lines needed a repair: line by line.
                Err(e) if is_trailing(&e) => json_lines(text, e, &mut out)?,
                Err(e) => return Err(document_error_in(text, &fixed, e)),
            },
            None => return Err(document_error(text, e)),
        },
    };
    if out.pairs.is_empty() {
        return Err(LayoutError::NoValidPair {
            layout,
            invalid: out.invalid,
        });
    }
    let session = out
        .top_session
        .filter(|_| layout == Layout::Nested)
        .or_else(|| shared_session(&out.pairs));
    Ok(ParsedDrop {
        layout,
        pairs: out.pairs,
        invalid: out.invalid,
        session,
        salvage: out.salvage,
    })
}

fn is_trailing(e: &serde_json::Error) -> bool {
    bare_message(e) == "trailing characters"
}

/// The characters JSON treats as whitespace; wider Unicode spaces are content.
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// Handles a text that parsed as one JSON value; returns its layout.
fn document(value: Value, out: &mut Collector) -> Result<Layout, LayoutError> {
    match value {
        Value::Object(map) => {
            if map.contains_key(QA_PAIRS) {
                out.top_session = map.get("session").and_then(session_number);
                nested(map, Origin::Top, out)?;
                Ok(Layout::Nested)
            } else if has_pair_key(&map) {
                out.element(Value::Object(map), &Place::Top);
                Ok(Layout::Single)
            } else {
                Err(LayoutError::Unrecognised {
                    found: "object with neither `qa_pairs` nor a question or answer field"
                        .to_owned(),
                })
            }
        }
        Value::Array(items) => array(items, out),
        other => Err(LayoutError::Unrecognised {
            found: format!("top-level {}", bare_kind(&other)),
        }),
    }
}

fn array(items: Vec<Value>, out: &mut Collector) -> Result<Layout, LayoutError> {
    if items.is_empty() {
        return Err(LayoutError::Unrecognised {
            found: "empty array".to_owned(),
        });
    }
    // One cheap key lookup per element decides the layout before any value is
    // moved, so invalid pairs can be worded for the layout they belong to.
    let any_nested = items.iter().any(is_nested);
    if !any_nested && !items.iter().any(is_pair_object) {
        return Err(LayoutError::Unrecognised {
            found: describe_array(&items),
        });
    }
    out.pairs.reserve(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if !any_nested {
            out.element(item, &Place::Top);
        } else if is_nested(&item) {
            let Value::Object(map) = item else {
                unreachable!("is_nested holds only for objects")
            };
            nested(map, Origin::Element(i), out)?;
        } else {
            out.element(item, &Place::Element(i));
        }
    }
    Ok(if any_nested {
        Layout::NestedArray
    } else {
        Layout::Flat
    })
}

fn describe_array(items: &[Value]) -> String {
    let first = plural_kind(&items[0]);
    if items.iter().all(|v| plural_kind(v) == first) {
        format!("array of {first}")
    } else {
        "array holding no pair object".to_owned()
    }
}

/// Parses `text` line by line. `whole` is the error from parsing the text as one
/// value; it is the answer when the first line is not a value either.
fn json_lines(
    text: &str,
    whole: serde_json::Error,
    out: &mut Collector,
) -> Result<Layout, LayoutError> {
    let mut first = true;
    let mut any_object = false;
    // Splitting on '\n' keeps line numbers exact; a '\r' before it is JSON
    // whitespace, so CRLF files need no special case.
    for (i, line) in text.split('\n').enumerate() {
        if line.trim_matches(JSON_WHITESPACE).is_empty() {
            continue;
        }
        let number = i + 1;
        let (value, fixed) = match serde_json::from_str::<Value>(line) {
            Ok(v) => (v, None),
            Err(e) => match repair(line).map(|f| (serde_json::from_str::<Value>(&f.text), f)) {
                Some((Ok(v), f)) => (v, Some(f)),
                _ if first => return Err(document_error(text, whole)),
                Some((Err(e), f)) => {
                    out.unparsed_line(number, line_column_in(line, &f, &e), line_message(&e));
                    continue;
                }
                None => {
                    let (_, column) = position(line, &e);
                    out.unparsed_line(number, column, line_message(&e));
                    continue;
                }
            },
        };
        first = false;
        let repaired = fixed.is_some();
        if let Some(f) = fixed {
            out.salvage.add(&f.salvage);
        }
        let take = |out: &mut Collector| -> Result<(), LayoutError> {
            if is_nested(&value) {
                any_object = true;
                let Value::Object(map) = value else {
                    unreachable!("is_nested holds only for objects")
                };
                nested(map, Origin::Line(number), out)
            } else {
                any_object |= is_pair_object(&value);
                out.element(value, &Place::Line(number));
                Ok(())
            }
        };
        if repaired {
            out.repaired(take)?;
        } else {
            take(out)?;
        }
    }
    if !any_object {
        return Err(LayoutError::Unrecognised {
            found: "JSON Lines holding no pair object".to_owned(),
        });
    }
    Ok(Layout::JsonLines)
}

fn document_error(text: &str, e: serde_json::Error) -> LayoutError {
    let (line, column) = position(text, &e);
    let message = bare_message(&e);
    if e.classify() == Category::Eof {
        LayoutError::Truncated { line, column }
    } else if message == "recursion limit exceeded" {
        LayoutError::TooDeep {
            line,
            column,
            limit: DEPTH_LIMIT,
        }
    } else {
        LayoutError::Malformed {
            line,
            column,
            message,
        }
    }
}

/// [`document_error`] for an error in a repaired text, located in the original.
fn document_error_in(text: &str, fixed: &Repaired, e: serde_json::Error) -> LayoutError {
    let mut err = document_error(&fixed.text, e);
    if let LayoutError::Malformed { line, column, .. } | LayoutError::TooDeep { line, column, .. } =
        &mut err
    {
        let (l, c) = map_back(text, fixed, *line, *column);
        (*line, *column) = (l, c);
    }
    if let LayoutError::Truncated { line, column } = &mut err {
        // The end of the text: the same in both, but columns count characters.
        let content = text.trim_end_matches(JSON_WHITESPACE);
        *line = content.bytes().filter(|&b| b == b'\n').count() + 1;
        let start = content.rfind('\n').map_or(0, |i| i + 1);
        *column = content[start..].chars().count();
    }
    err
}

/// The character column, in `line`, of an error found in its repaired form.
fn line_column_in(line: &str, fixed: &Repaired, e: &serde_json::Error) -> usize {
    let (_, column) = position(&fixed.text, e);
    map_back(line, fixed, 1, column).1
}

/// A (line, character column) in a repaired text, as a (line, character column) in
/// the original: repairs never add a line, only characters within one.
fn map_back(original: &str, fixed: &Repaired, line: usize, column: usize) -> (usize, usize) {
    let start = fixed
        .text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    let line_text = fixed.text[start..].split('\n').next().unwrap_or("");
    let byte_in_line: usize = line_text
        .chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    let at = fixed
        .original_offset(start + byte_in_line)
        .min(original.len());
    let at = (0..=at)
        .rev()
        .find(|&i| original.is_char_boundary(i))
        .unwrap_or(0);
    let before = &original[..at];
    let l = before.matches('\n').count() + 1;
    let c = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    (l, c)
}

fn line_message(e: &serde_json::Error) -> String {
    let message = bare_message(e);
    if e.classify() == Category::Eof {
        format!("the line ends inside a value ({message})")
    } else if message == "recursion limit exceeded" {
        format!("nested too deeply (limit {DEPTH_LIMIT} levels)")
    } else {
        message
    }
}

/// Where `e` happened in `text`, as 1-based line and character column.
/// serde_json counts columns in bytes, and for an early end it points past the
/// final newline (column 0); people want the character where the text stops.
fn position(text: &str, e: &serde_json::Error) -> (usize, usize) {
    if e.classify() == Category::Eof {
        let content = text.trim_end_matches(JSON_WHITESPACE);
        let line = content.bytes().filter(|&b| b == b'\n').count() + 1;
        let start = content.rfind('\n').map_or(0, |i| i + 1);
        return (line, content[start..].chars().count());
    }
    let column = match text.split('\n').nth(e.line().saturating_sub(1)) {
        Some(l) => l
            .char_indices()
            .take_while(|&(i, _)| i < e.column())
            .count(),
        None => e.column(),
    };
    (e.line(), column)
}

/// serde_json's message without the " at line L column C" it appends, because
/// our messages place the location themselves.
fn bare_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&suffix) {
        Some(bare) => bare.to_owned(),
        None => full,
    }
}

const QA_PAIRS: &str = "qa_pairs";

/// Where a nested object sits in the file.
#[derive(Clone, Copy)]
enum Origin {
    Top,
    Element(usize),
    Line(usize),
}

/// Where a pair sits, for the reason text of an invalid pair.
enum Place {
    /// The pair index alone locates it.
    Top,
    Element(usize),
    ElementPair(usize, usize),
    Line(usize),
    LinePair(usize, usize),
}

impl Place {
    fn in_qa_pairs(origin: Origin, k: usize) -> Place {
        match origin {
            Origin::Top => Place::Top,
            Origin::Element(i) => Place::ElementPair(i, k),
            Origin::Line(n) => Place::LinePair(n, k),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Top => Ok(()),
            Place::Element(i) => write!(f, " (at [{i}])"),
            Place::ElementPair(i, k) => write!(f, " (at [{i}].qa_pairs[{k}])"),
            Place::Line(n) => write!(f, " (line {n})"),
            Place::LinePair(n, k) => write!(f, " (line {n}, qa_pairs[{k}])"),
        }
    }
}

fn nested(
    mut map: Map<String, Value>,
    origin: Origin,
    out: &mut Collector,
) -> Result<(), LayoutError> {
    // shift_remove, not remove: remove swaps the last field into the hole and
    // the inherited fields would lose their file order.
    let items = match map.shift_remove(QA_PAIRS) {
        Some(Value::Array(items)) => items,
        other => {
            return Err(LayoutError::QaPairsNotArray {
                location: match origin {
                    Origin::Top => "at top level".to_owned(),
                    Origin::Element(i) => format!("in element [{i}]"),
                    Origin::Line(n) => format!("on line {n}"),
                },
                found: kind(other.as_ref().unwrap_or(&Value::Null)),
            });
        }
    };
    let inherited = Inherited::from_top(map, out);
    out.pairs.reserve(items.len());
    for (k, item) in items.into_iter().enumerate() {
        let place = Place::in_qa_pairs(origin, k);
        match item {
            Value::Object(m) => match pair(m, out) {
                Ok((mut p, keys)) => {
                    inherited.apply(&mut p, keys);
                    out.pairs.push(p);
                }
                Err(reason) => out.reject(reason, &place),
            },
            other => out.element(other, &place),
        }
    }
    Ok(())
}

#[derive(Default)]
struct Collector {
    pairs: Vec<RawPair>,
    invalid: Vec<InvalidPair>,
    top_session: Option<i64>,
    salvage: Salvage,
    /// The value being taken was repaired: strings that start with [`MARK`] are
    /// numbers kept as text.
    marked: bool,
}

impl Collector {
    /// Takes one value in a pair position (never a nested object).
    fn element(&mut self, value: Value, place: &Place) {
        match value {
            Value::Object(map) => match pair(map, self) {
                Ok((p, _)) => self.pairs.push(p),
                Err(reason) => self.reject(reason, place),
            },
            other => self.reject(format!("expected an object, found {}", kind(&other)), place),
        }
    }

    /// Runs `take` over a repaired value: its marked strings are read as numbers where
    /// a question or answer must be a string, and become plain text everywhere else.
    fn repaired<T>(
        &mut self,
        take: impl FnOnce(&mut Collector) -> Result<T, LayoutError>,
    ) -> Result<T, LayoutError> {
        let before = self.pairs.len();
        self.marked = true;
        let result = take(self);
        self.marked = false;
        for p in &mut self.pairs[before..] {
            for label in [&mut p.indicator, &mut p.category].into_iter().flatten() {
                unmark_str(label);
            }
            for v in p.extra.values_mut() {
                unmark(v);
            }
        }
        result
    }

    /// A JSON Lines line that is not JSON: an invalid pair, the file goes on.
    fn unparsed_line(&mut self, line: usize, column: usize, message: String) {
        self.salvage.lines_unparsed += 1;
        self.reject(
            format!("not JSON at column {column}: {message}"),
            &Place::Line(line),
        );
    }

    /// Removes NUL and C0 control characters other than tab and newline from text that
    /// will be stored, counting them.
    fn clean(&mut self, s: &mut String) {
        let removed = strip_controls(s);
        self.salvage.controls_removed += removed;
    }

    fn reject(&mut self, mut reason: String, place: &Place) {
        use fmt::Write;
        let _ = write!(reason, "{place}");
        self.invalid.push(InvalidPair {
            index: self.pairs.len() + self.invalid.len(),
            reason,
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Question = 0,
    Answer = 1,
    Category = 2,
    Indicator = 3,
}

/// Recognised keys in alias order: within one field, a lower id wins.
const ALIASES: [(&str, Field); 10] = [
    ("question", Field::Question),
    ("q", Field::Question),
    ("prompt", Field::Question),
    ("answer", Field::Answer),
    ("a", Field::Answer),
    ("response", Field::Answer),
    ("category", Field::Category),
    ("indicator_category", Field::Category),
    ("indicator", Field::Indicator),
    ("indicator_name", Field::Indicator),
];

/// Bit set over alias ids: which recognised keys an object had.
type KeySet = u16;

fn alias_id(key: &str) -> Option<usize> {
    // A match compiles to length-then-bytes comparisons, cheaper than a table scan.
    Some(match key {
        "question" => 0,
        "q" => 1,
        "prompt" => 2,
        "answer" => 3,
        "a" => 4,
        "response" => 5,
        "category" => 6,
        "indicator_category" => 7,
        "indicator" => 8,
        "indicator_name" => 9,
        _ => return None,
    })
}

const fn field_mask(field: Field) -> KeySet {
    let mut mask = 0;
    let mut id = 0;
    while id < ALIASES.len() {
        if ALIASES[id].1 as u8 == field as u8 {
            mask |= 1 << id;
        }
        id += 1;
    }
    mask
}

const PAIR_KEYS: KeySet = field_mask(Field::Question) | field_mask(Field::Answer);

fn has_pair_key(map: &Map<String, Value>) -> bool {
    map.keys()
        .any(|k| alias_id(k).is_some_and(|id| PAIR_KEYS & 1 << id != 0))
}

fn is_nested(value: &Value) -> bool {
    // Objects are small; comparing keys beats hashing one.
    matches!(value, Value::Object(m) if m.keys().any(|k| k == QA_PAIRS))
}

fn is_pair_object(value: &Value) -> bool {
    matches!(value, Value::Object(m) if has_pair_key(m))
}

/// An object's fields sorted into the four recognised slots and the rest.
struct Fields {
    /// Winning (alias id, value) per [`Field`].
    slots: [Option<(usize, Value)>; 4],
    extra: Map<String, Value>,
    keys: KeySet,
}

fn is_label(field: Field) -> bool {
    matches!(field, Field::Category | Field::Indicator)
}

/// Sorts `map` in place: the object's own map becomes `extra`, so a pair costs
/// no new map and its unknown fields keep their order.
fn split(mut map: Map<String, Value>) -> Fields {
    // Winners are chosen before anything moves, so losers simply stay put.
    let mut best = [usize::MAX; 4];
    let mut keys: KeySet = 0;
    for (key, value) in &map {
        let Some(id) = alias_id(key) else { continue };
        keys |= 1 << id;
        let field = ALIASES[id].1;
        let usable = !is_label(field) || matches!(value, Value::String(_) | Value::Number(_));
        if usable && id < best[field as usize] {
            best[field as usize] = id;
        }
    }
    let mut slots: [Option<(usize, Value)>; 4] = Default::default();
    if keys != 0 {
        map.retain(|key, value| match alias_id(key) {
            Some(id) if best[ALIASES[id].1 as usize] == id => {
                slots[ALIASES[id].1 as usize] = Some((id, value.take()));
                false
            }
            _ => true,
        });
    }
    Fields {
        slots,
        extra: map,
        keys,
    }
}

/// Validates one object in a pair position; on success also returns which
/// recognised keys it had.
fn pair(map: Map<String, Value>, out: &mut Collector) -> Result<(RawPair, KeySet), String> {
    let Fields {
        slots: [question, answer, category, indicator],
        extra,
        keys,
    } = split(map);
    if keys & PAIR_KEYS == 0 {
        return Err("no question or answer field".to_owned());
    }
    match (text("question", question, out), text("answer", answer, out)) {
        (Ok(question), Ok(answer)) => Ok((
            RawPair {
                question,
                answer,
                indicator: indicator.map(|l| label(l, out)),
                category: category.map(|l| label(l, out)),
                extra,
            },
            keys,
        )),
        (Err(q), Err(a)) => Err(format!("{q} and {a}")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn text(name: &str, slot: Option<(usize, Value)>, out: &mut Collector) -> Result<String, String> {
    match slot {
        None => Err(format!("{name} is missing")),
        Some((_, Value::String(s))) if out.marked && s.starts_with(MARK) => Err(format!(
            "{name} is a number ({}), expected a string",
            &s[MARK.len_utf8()..]
        )),
        Some((_, Value::String(mut s))) => {
            out.clean(&mut s);
            if s.trim().is_empty() {
                Err(format!("{name} is empty"))
            } else {
                Ok(s)
            }
        }
        Some((_, other)) => Err(format!("{name} is {}, expected a string", kind(&other))),
    }
}

/// A label slot holds only strings and numbers (see [`split`]).
fn label((_, value): (usize, Value), out: &mut Collector) -> String {
    let mut s = match value {
        Value::String(s) => s,
        other => other.to_string(),
    };
    out.clean(&mut s);
    s
}

/// Removes NUL and C0 controls other than tab and newline; returns how many.
fn strip_controls(s: &mut String) -> usize {
    let unwanted = |c: char| c < ' ' && c != '\t' && c != '\n';
    // Branch-free over 64-byte chunks, so it vectorises: this runs over every stored
    // text, and almost never finds anything.
    let control = |b: u8| (b < b' ') & (b != b'\t') & (b != b'\n');
    if !s
        .as_bytes()
        .chunks(64)
        .any(|chunk| chunk.iter().fold(false, |any, &b| any | control(b)))
    {
        return 0;
    }
    let before = s.chars().count();
    s.retain(|c| !unwanted(c));
    before - s.chars().count()
}

/// Marks a number that the repair turned into a string, so that a question or answer
/// made of it stays invalid. A noncharacter, reserved by Unicode for internal use; the
/// repair replaces any that the file itself holds (see [`repair`]).
const MARK: char = '\u{FDD0}';

fn unmark_str(s: &mut String) {
    if s.starts_with(MARK) {
        s.drain(..MARK.len_utf8());
    }
}

fn unmark(v: &mut Value) {
    match v {
        Value::String(s) => unmark_str(s),
        Value::Array(items) => items.iter_mut().for_each(unmark),
        Value::Object(map) => map.values_mut().for_each(unmark),
        _ => {}
    }
}

/// A text the repair changed, and where it inserted bytes.
struct Repaired {
    text: String,
    salvage: Salvage,
    /// (offset in `text` just after an insertion, bytes inserted so far): maps an
    /// offset in `text` back to the original.
    inserted: Vec<(usize, usize)>,
}

impl Repaired {
    fn original_offset(&self, at: usize) -> usize {
        let before = self.inserted.partition_point(|&(end, _)| end <= at);
        let shift = if before == 0 {
            0
        } else {
            self.inserted[before - 1].1
        };
        at.saturating_sub(shift)
    }
}

/// Salvages what serde_json refuses but a writer meant: lone surrogate escapes become
/// `\ufffd` (same length, so positions hold), and `NaN`, `Infinity`, `-Infinity` and
/// numbers beyond f64's range outside strings become strings of their source text,
/// marked with [`MARK`]. `None` when there was nothing to repair.
fn repair(text: &str) -> Option<Repaired> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut salvage = Salvage::default();
    let mut inserted = Vec::new();
    let mut shift = 0;
    let mut i = 0;
    let mut last = 0; // bytes before `last` are copied already
    let mut in_string = false;
    let word_end = |j: usize| j >= b.len() || !(b[j].is_ascii_alphanumeric() || b[j] == b'_');
    while i < b.len() {
        if in_string {
            match b[i] {
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                b'\\' if b.get(i + 1) == Some(&b'u') => {
                    let code = |at: usize| {
                        b.get(at..at + 4)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u16::from_str_radix(h, 16).ok())
                    };
                    match code(i + 2) {
                        Some(0xD800..=0xDBFF)
                            if b.get(i + 6) == Some(&b'\\')
                                && b.get(i + 7) == Some(&b'u')
                                && matches!(code(i + 8), Some(0xDC00..=0xDFFF)) =>
                        {
                            i += 12;
                        }
                        Some(c @ (0xD800..=0xDFFF | 0xFDD0)) => {
                            out.push_str(&text[last..i]);
                            out.push_str("\\ufffd");
                            if c == 0xFDD0 {
                                salvage.noncharacters_replaced += 1;
                            } else {
                                salvage.surrogates_replaced += 1;
                            }
                            i += 6;
                            last = i;
                        }
                        _ => i += 2,
                    }
                }
                b'\\' => i += 2,
                // U+FDD0 written as is: EF B7 90.
                0xEF if b.get(i + 1..i + 3) == Some(&[0xB7, 0x90]) => {
                    out.push_str(&text[last..i]);
                    out.push('\u{FFFD}');
                    salvage.noncharacters_replaced += 1;
                    i += 3;
                    last = i;
                }
                _ => i += 1,
            }
            continue;
        }
        let token_end = match b[i] {
            b'"' => {
                in_string = true;
                i += 1;
                continue;
            }
            b'N' if b[i..].starts_with(b"NaN") && word_end(i + 3) => Some(i + 3),
            b'I' if b[i..].starts_with(b"Infinity") && word_end(i + 8) => Some(i + 8),
            b'-' if b[i + 1..].starts_with(b"Infinity") && word_end(i + 9) => Some(i + 9),
            b'-' | b'0'..=b'9' => {
                let mut j = i + 1;
                while j < b.len() && matches!(b[j], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    j += 1;
                }
                if text[i..j].parse::<f64>().is_ok_and(|v| v.is_infinite()) {
                    Some(j)
                } else {
                    i = j;
                    continue;
                }
            }
            _ => None,
        };
        match token_end {
            Some(end) => {
                out.push_str(&text[last..i]);
                out.push('"');
                out.push(MARK);
                shift += 1 + MARK.len_utf8();
                inserted.push((out.len(), shift));
                out.push_str(&text[i..end]);
                out.push('"');
                shift += 1;
                inserted.push((out.len(), shift));
                salvage.numbers_kept_as_text += 1;
                i = end;
                last = i;
            }
            None => i += 1,
        }
    }
    if salvage.is_empty() {
        return None;
    }
    out.push_str(&text[last..]);
    Some(Repaired {
        text: out,
        salvage,
        inserted,
    })
}

/// A nested object's top-level fields, ready to be given to each of its pairs.
struct Inherited {
    category: Option<String>,
    indicator: Option<String>,
    /// (key, value, alias id if the key is a recognised alias)
    extra: Vec<(String, Value, Option<usize>)>,
}

impl Inherited {
    fn from_top(map: Map<String, Value>, out: &mut Collector) -> Inherited {
        let Fields {
            slots: [question, answer, category, indicator],
            extra,
            ..
        } = split(map);
        let mut inherited = Inherited {
            category: category.map(|l| label(l, out)),
            indicator: indicator.map(|l| label(l, out)),
            extra: extra
                .into_iter()
                .map(|(k, v)| {
                    let id = alias_id(&k);
                    (k, v, id)
                })
                .collect(),
        };
        // A top-level question/answer describes the batch, not each pair.
        for (id, v) in [question, answer].into_iter().flatten() {
            inherited
                .extra
                .push((ALIASES[id].0.to_owned(), v, Some(id)));
        }
        inherited
    }

    /// Gives `pair` every inherited field it does not set itself; `keys` are the
    /// recognised keys the pair object had.
    fn apply(&self, pair: &mut RawPair, keys: KeySet) {
        let sets = |field: Field| keys & field_mask(field) != 0;
        if !sets(Field::Category) && pair.category.is_none() {
            pair.category.clone_from(&self.category);
        }
        if !sets(Field::Indicator) && pair.indicator.is_none() {
            pair.indicator.clone_from(&self.indicator);
        }
        for (key, value, id) in &self.extra {
            let overridden = match *id {
                Some(id) => {
                    let field = ALIASES[id].1;
                    keys & 1 << id != 0 || (is_label(field) && sets(field))
                }
                None => pair.extra.contains_key(key),
            };
            if !overridden {
                pair.extra.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The session all valid pairs that name one agree on; `None` when none names
/// one, when they disagree, or when one is not a session number.
fn shared_session(pairs: &[RawPair]) -> Option<i64> {
    let mut found = None;
    for p in pairs {
        if let Some(v) = p.extra.get("session") {
            let n = session_number(v)?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

/// Reads `123`, `"123"`, `"session_123"`, `"Session-123"` or `"session 123"`.
pub fn session_number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            let digits = match s.get(..7) {
                Some(head) if head.eq_ignore_ascii_case("session") => {
                    s[7..].trim_start_matches(['_', '-', ' ', '#', ':'])
                }
                _ => s,
            };
            digits.parse().ok()
        }
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bare_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn plural_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nulls",
        Value::Bool(_) => "booleans",
        Value::Number(_) => "numbers",
        Value::String(_) => "strings",
        Value::Array(_) => "arrays",
        Value::Object(_) => "objects without a question or answer field",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (question, answer, indicator, category, extra as JSON text)
    type Expected = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );

    struct Ok {
        name: &'static str,
        text: &'static str,
        layout: Layout,
        pairs: &'static [Expected],
        invalid: &'static [(usize, &'static str)],
        session: Option<i64>,
    }

    const OK_CASES: &[Ok] = &[
        Ok {
            name: "flat, canonical names",
            text: r#"[{"question":"Q1","answer":"A1"},{"question":"Q2","answer":"A2","indicator":"I","category":"C"}]"#,
            layout: Layout::Flat,
            pairs: &[
                ("Q1", "A1", None, None, "{}"),
                ("Q2", "A2", Some("I"), Some("C"), "{}"),
            ],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "flat, short aliases",
            text: r#"[{"q":"Q","a":"A"}]"#,
            layout: Layout::Flat,
            pairs: &[("Q", "A", None, None, "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "flat, long aliases",
            text: r#"[{"prompt":"Q","response":"A","indicator_name":"I","indicator_category":"C"}]"#,
            layout: Layout::Flat,
            pairs: &[("Q", "A", Some("I"), Some("C"), "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "numeric labels become text",
            text: r#"[{"q":"Q","a":"A","indicator":7,"category":1.5}]"#,
            layout: Layout::Flat,
            pairs: &[("Q", "A", Some("7"), Some("1.5"), "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "non-text labels go to extra and let a later alias supply",
            text: r#"[{"q":"Q","a":"A","indicator":null,"indicator_name":"N","category":["x"]}]"#,
            layout: Layout::Flat,
            pairs: &[(
                "Q",
                "A",
                Some("N"),
                None,
                r#"{"indicator":null,"category":["x"]}"#,
            )],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "two aliases of one field: first alias wins, others kept",
            text: r#"[{"prompt":"P","question":"Q","a":"A1","answer":"A0","response":"R","indicator_name":"IN","indicator":"I","indicator_category":"IC","category":"C"}]"#,
            layout: Layout::Flat,
            pairs: &[(
                "Q",
                "A0",
                Some("I"),
                Some("C"),
                r#"{"prompt":"P","a":"A1","response":"R","indicator_name":"IN","indicator_category":"IC"}"#,
            )],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "unknown fields kept in order",
            text: r#"[{"source":"s","q":"Q","tags":["t"],"a":"A","n":1,"meta":{"k":true}}]"#,
            layout: Layout::Flat,
            pairs: &[(
                "Q",
                "A",
                None,
                None,
                r#"{"source":"s","tags":["t"],"n":1,"meta":{"k":true}}"#,
            )],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "text kept untrimmed",
            text: r#"[{"q":"  Q  ","a":"A\n"}]"#,
            layout: Layout::Flat,
            pairs: &[("  Q  ", "A\n", None, None, "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "flat, mixed valid and invalid",
            text: r#"[{"q":"a"},{"a":"b"},{"q":"x","a":"  "},{"q":1,"a":"y"},{"foo":1},"s",{"q":null,"a":""},{"q":"ok","a":"ok"},[1]]"#,
            layout: Layout::Flat,
            pairs: &[("ok", "ok", None, None, "{}")],
            invalid: &[
                (0, "answer is missing"),
                (1, "question is missing"),
                (2, "answer is empty"),
                (3, "question is a number, expected a string"),
                (4, "no question or answer field"),
                (5, "expected an object, found a string"),
                (6, "question is null, expected a string and answer is empty"),
                (8, "expected an object, found an array"),
            ],
            session: None,
        },
        Ok {
            name: "nested, inheritance and override",
            text: r#"{"batch":7,"indicator":"Top","category":"TC","session":"session_42","source":"gen",
                "qa_pairs":[{"q":"Q1","a":"A1"},{"q":"Q2","a":"A2","indicator_name":"Own","source":"mine"}]}"#,
            layout: Layout::Nested,
            pairs: &[
                (
                    "Q1",
                    "A1",
                    Some("Top"),
                    Some("TC"),
                    r#"{"batch":7,"session":"session_42","source":"gen"}"#,
                ),
                (
                    "Q2",
                    "A2",
                    Some("Own"),
                    Some("TC"),
                    r#"{"source":"mine","batch":7,"session":"session_42"}"#,
                ),
            ],
            invalid: &[],
            session: Some(42),
        },
        Ok {
            name: "nested, top-level alias losers are inherited and overridable",
            text: r#"{"indicator":"I","indicator_name":"IN","qa_pairs":[{"q":"Q1","a":"A1"},{"q":"Q2","a":"A2","indicator":"P"}]}"#,
            layout: Layout::Nested,
            pairs: &[
                ("Q1", "A1", Some("I"), None, r#"{"indicator_name":"IN"}"#),
                ("Q2", "A2", Some("P"), None, "{}"),
            ],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "nested, non-text top-level label inherited as extra unless overridden",
            text: r#"{"indicator":{"id":1},"qa_pairs":[{"q":"Q1","a":"A1"},{"q":"Q2","a":"A2","indicator_name":"X"}]}"#,
            layout: Layout::Nested,
            pairs: &[
                ("Q1", "A1", None, None, r#"{"indicator":{"id":1}}"#),
                ("Q2", "A2", Some("X"), None, "{}"),
            ],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "nested, top-level question alias is an extra field",
            text: r#"{"prompt":"write pairs","qa_pairs":[{"question":"Q","answer":"A"},{"prompt":"Q2","answer":"A2"}]}"#,
            layout: Layout::Nested,
            pairs: &[
                ("Q", "A", None, None, r#"{"prompt":"write pairs"}"#),
                ("Q2", "A2", None, None, "{}"),
            ],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "nested, invalid pairs numbered by qa_pairs position",
            text: r#"{"session":123,"qa_pairs":[{"q":"Q","a":"A"},7,{"q":"Q","a":5},{"x":1}]}"#,
            layout: Layout::Nested,
            pairs: &[("Q", "A", None, None, r#"{"session":123}"#)],
            invalid: &[
                (1, "expected an object, found a number"),
                (2, "answer is a number, expected a string"),
                (3, "no question or answer field"),
            ],
            session: Some(123),
        },
        Ok {
            name: "nested, top-level session wins over pairs",
            text: r#"{"session":"9","qa_pairs":[{"q":"Q","a":"A","session":10}]}"#,
            layout: Layout::Nested,
            pairs: &[("Q", "A", None, None, r#"{"session":10}"#)],
            invalid: &[],
            session: Some(9),
        },
        Ok {
            name: "nested array, each object inherits its own fields",
            text: r#"[{"batch":1,"qa_pairs":[{"q":"a","a":"b"},{"q":"","a":"d"}]},{"batch":2,"qa_pairs":[{"q":"e","a":"f"}]}]"#,
            layout: Layout::NestedArray,
            pairs: &[
                ("a", "b", None, None, r#"{"batch":1}"#),
                ("e", "f", None, None, r#"{"batch":2}"#),
            ],
            invalid: &[(1, "question is empty (at [0].qa_pairs[1])")],
            session: None,
        },
        Ok {
            name: "nested array mixed with pair objects",
            text: r#"[{"q":"a","a":"b"},{"session":3,"qa_pairs":[{"q":"c","a":"d"},{"q":"x"}]},5,{"y":1}]"#,
            layout: Layout::NestedArray,
            pairs: &[
                ("a", "b", None, None, "{}"),
                ("c", "d", None, None, r#"{"session":3}"#),
            ],
            invalid: &[
                (2, "answer is missing (at [1].qa_pairs[1])"),
                (3, "expected an object, found a number (at [2])"),
                (4, "no question or answer field (at [3])"),
            ],
            session: Some(3),
        },
        Ok {
            name: "nested array, sessions disagree",
            text: r#"[{"session":1,"qa_pairs":[{"q":"a","a":"b"}]},{"session":2,"qa_pairs":[{"q":"c","a":"d"}]}]"#,
            layout: Layout::NestedArray,
            pairs: &[
                ("a", "b", None, None, r#"{"session":1}"#),
                ("c", "d", None, None, r#"{"session":2}"#),
            ],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "json lines, shared session",
            text: "{\"q\":\"a\",\"a\":\"b\",\"session\":5}\n{\"q\":\"c\",\"a\":\"d\",\"session\":\"Session-5\"}\n",
            layout: Layout::JsonLines,
            pairs: &[
                ("a", "b", None, None, r#"{"session":5}"#),
                ("c", "d", None, None, r#"{"session":"Session-5"}"#),
            ],
            invalid: &[],
            session: Some(5),
        },
        Ok {
            name: "json lines, CRLF",
            text: "{\"q\":\"a\",\"a\":\"b\"}\r\n{\"prompt\":\"c\",\"response\":\"d\"}\r\n",
            layout: Layout::JsonLines,
            pairs: &[("a", "b", None, None, "{}"), ("c", "d", None, None, "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "json lines, blank lines keep line numbers",
            text: "\n{\"q\":\"a\",\"a\":\"b\"}\n\n  \t\n{\"q\":\"c\"}\r\n\n7\n{\"q\":\"e\",\"a\":\"f\"}\n\n",
            layout: Layout::JsonLines,
            pairs: &[("a", "b", None, None, "{}"), ("e", "f", None, None, "{}")],
            invalid: &[
                (1, "answer is missing (line 5)"),
                (2, "expected an object, found a number (line 7)"),
            ],
            session: None,
        },
        Ok {
            name: "json lines with a nested line",
            text: "{\"q\":\"a\",\"a\":\"b\"}\n{\"category\":\"C\",\"qa_pairs\":[{\"q\":\"c\",\"a\":\"d\"},{\"a\":\"x\"}]}\n{\"z\":0}",
            layout: Layout::JsonLines,
            pairs: &[
                ("a", "b", None, None, "{}"),
                ("c", "d", None, Some("C"), "{}"),
            ],
            invalid: &[
                (2, "question is missing (line 2, qa_pairs[1])"),
                (3, "no question or answer field (line 3)"),
            ],
            session: None,
        },
        Ok {
            name: "single pair object",
            text: r#"{"question":"Q","answer":"A","model":"m","session":"session_77"}"#,
            layout: Layout::Single,
            pairs: &[(
                "Q",
                "A",
                None,
                None,
                r#"{"model":"m","session":"session_77"}"#,
            )],
            invalid: &[],
            session: Some(77),
        },
        Ok {
            name: "one JSON line is single, not json lines",
            text: "{\"q\":\"Q\",\"a\":\"A\"}\n\n",
            layout: Layout::Single,
            pairs: &[("Q", "A", None, None, "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "pretty-printed single",
            text: "{\n  \"q\": \"Q\",\n  \"a\": \"A\"\n}\n",
            layout: Layout::Single,
            pairs: &[("Q", "A", None, None, "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "pair object with only one alias counts as a pair",
            text: r#"[{"q":"Q","a":"A"},{"answer":"lonely"}]"#,
            layout: Layout::Flat,
            pairs: &[("Q", "A", None, None, "{}")],
            invalid: &[(1, "question is missing")],
            session: None,
        },
        Ok {
            name: "byte-order mark ignored",
            text: "\u{feff}[{\"q\":\"Q\",\"a\":\"A\"}]",
            layout: Layout::Flat,
            pairs: &[("Q", "A", None, None, "{}")],
            invalid: &[],
            session: None,
        },
        Ok {
            name: "unparseable session gives none",
            text: r#"[{"q":"Q","a":"A","session":"morning"}]"#,
            layout: Layout::Flat,
            pairs: &[("Q", "A", None, None, r#"{"session":"morning"}"#)],
            invalid: &[],
            session: None,
        },
    ];

    fn expected_pair(e: &Expected) -> RawPair {
        let (question, answer, indicator, category, extra) = *e;
        let Value::Object(extra) = serde_json::from_str(extra).unwrap() else {
            panic!("extra must be an object")
        };
        RawPair {
            question: question.to_owned(),
            answer: answer.to_owned(),
            indicator: indicator.map(str::to_owned),
            category: category.map(str::to_owned),
            extra,
        }
    }

    #[test]
    fn accepted_files() {
        for case in OK_CASES {
            let drop = parse(case.text).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(drop.layout, case.layout, "{}", case.name);
            let want: Vec<RawPair> = case.pairs.iter().map(expected_pair).collect();
            assert_eq!(drop.pairs, want, "{}", case.name);
            // Order of extra matters: it is what the pipeline stores.
            for (got, want) in drop.pairs.iter().zip(&want) {
                let got: Vec<_> = got.extra.keys().collect();
                let want: Vec<_> = want.extra.keys().collect();
                assert_eq!(got, want, "{}: extra order", case.name);
            }
            let invalid: Vec<_> = drop
                .invalid
                .iter()
                .map(|p| (p.index, p.reason.as_str()))
                .collect();
            assert_eq!(invalid, case.invalid, "{}", case.name);
            assert_eq!(drop.session, case.session, "{}", case.name);
            assert_eq!(
                drop.total(),
                case.pairs.len() + case.invalid.len(),
                "{}",
                case.name
            );
        }
    }

    const REJECTED: &[(&str, &str, &str)] = &[
        ("empty", "", "empty file"),
        (
            "whitespace",
            " \r\n\t \n",
            "no JSON value (whitespace only)",
        ),
        (
            "malformed",
            r#"{"q": "a" "a": "b"}"#,
            "malformed JSON at line 1, column 11: expected `,` or `}`",
        ),
        (
            "malformed on a later line",
            "[\n  {\"q\": \"a\",\n   \"a\": x}\n]",
            "malformed JSON at line 3, column 9: expected value",
        ),
        (
            "truncated",
            "[{\"q\":\"a\",\"a\":\"b\"},\n{\"q\":",
            "truncated JSON: the file ends inside a value at line 2, column 5",
        ),
        (
            "truncated before trailing blank lines",
            "[{\"q\":\"a\",\"a\":\"b\"},\n  {\"q\":\"é\"\r\n\n\n",
            "truncated JSON: the file ends inside a value at line 2, column 10",
        ),
        (
            "columns count characters, not bytes",
            "[\n{\"q\": \"ééé\" x}]",
            "malformed JSON at line 2, column 13: expected `,` or `}`",
        ),
        (
            "top-level number",
            "42",
            "unrecognised layout: top-level number; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "top-level string",
            r#""hello""#,
            "unrecognised layout: top-level string; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "top-level boolean",
            "true",
            "unrecognised layout: top-level boolean; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "top-level null",
            "null",
            "unrecognised layout: top-level null; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "array of numbers",
            "[1, 2, 3]",
            "unrecognised layout: array of numbers; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "array of field-less objects",
            r#"[{"x":1},{"y":2}]"#,
            "unrecognised layout: array of objects without a question or answer field; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "array of mixed values",
            r#"[1, "a", {"x":1}]"#,
            "unrecognised layout: array holding no pair object; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "empty array",
            "[]",
            "unrecognised layout: empty array; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "object without qa_pairs or pair fields",
            r#"{"title":"x","items":[]}"#,
            "unrecognised layout: object with neither `qa_pairs` nor a question or answer field; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "json lines of numbers",
            "1\n2\n",
            "unrecognised layout: JSON Lines holding no pair object; expected an array of pairs, an object with `qa_pairs`, a pair object, or JSON Lines",
        ),
        (
            "qa_pairs not an array",
            r#"{"qa_pairs":"x"}"#,
            "`qa_pairs` at top level is a string, expected an array",
        ),
        (
            "qa_pairs not an array in a nested array",
            r#"[{"qa_pairs":[{"q":"a","a":"b"}]},{"qa_pairs":{}}]"#,
            "`qa_pairs` in element [1] is an object, expected an array",
        ),
        (
            "qa_pairs not an array in json lines",
            "{\"q\":\"a\",\"a\":\"b\"}\n{\"qa_pairs\":null}\n",
            "`qa_pairs` on line 2 is null, expected an array",
        ),
        (
            "concatenated pretty-printed objects are not json lines",
            "{\n\"q\":\"a\",\"a\":\"b\"\n}\n{\"q\":\"c\",\"a\":\"d\"}\n",
            "malformed JSON at line 4, column 1: trailing characters",
        ),
        (
            "no valid pair",
            r#"[{"q":"a"},{"a":"b"},{"x":1},{"q":"c"}]"#,
            "no valid pair: 4 pairs, all invalid (pair 0: answer is missing; pair 1: question is missing; pair 2: no question or answer field; and 1 more)",
        ),
        (
            "single invalid pair",
            r#"{"q":"a","a":""}"#,
            "no valid pair: 1 pair, invalid (pair 0: answer is empty)",
        ),
        (
            "no valid pair in json lines",
            "{\"q\":\"a\"}\n{\"a\":\"b\"}\n",
            "no valid pair: 2 pairs, all invalid (pair 0: answer is missing (line 1); pair 1: question is missing (line 2))",
        ),
        (
            "empty qa_pairs",
            r#"{"batch":1,"qa_pairs":[]}"#,
            "no valid pair: the file holds no pairs",
        ),
        ("byte-order mark alone", "\u{feff}", "empty file"),
    ];

    /// A JSON Lines line that is not JSON used to reject the whole file; now it is an
    /// invalid pair with its line and column, and the other lines integrate.
    const JSONL_SALVAGED: &[(&str, &str, usize, usize, &str)] = &[
        (
            "json lines, malformed line",
            "{\"q\":\"a\",\"a\":\"b\"}\n{\"q\":\"c\",\"a\":\"d\"}\n\n\n{\"q\": oops}\n",
            2,
            2,
            "not JSON at column 7: expected value (line 5)",
        ),
        (
            "json lines, column counts characters",
            "{\"q\":\"a\",\"a\":\"b\"}\n{\"q\":\"ü\",\"a\" \"d\"}\n",
            1,
            1,
            "not JSON at column 14: expected `:` (line 2)",
        ),
        (
            "json lines, line ends inside a value",
            "{\"q\":\"a\",\"a\":\"b\"}\r\n{\"q\":\"c\"",
            1,
            1,
            "not JSON at column 8: the line ends inside a value (EOF while parsing an object) (line 2)",
        ),
        (
            "json lines, two values on one line",
            "{\"q\":\"a\",\"a\":\"b\"}\n{\"q\":\"c\",\"a\":\"d\"} {\"q\":\"e\",\"a\":\"f\"}\n",
            1,
            1,
            "not JSON at column 19: trailing characters (line 2)",
        ),
        (
            "json lines, line nested too deeply",
            concat!(
                "{\"q\":\"a\",\"a\":\"b\"}\n",
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                "[[[[[[[[[[]]]\n"
            ),
            1,
            1,
            "not JSON at column 128: nested too deeply (limit 127 levels) (line 2)",
        ),
        (
            "json lines, a broken line between good ones",
            "{\"q\":\"a\",\"a\":\"b\"}\n{\"q\": \"x\", \"a\": \n{\"q\":\"c\",\"a\":\"d\"}\n",
            2,
            1,
            "not JSON at column 15: the line ends inside a value (EOF while parsing a value) (line 2)",
        ),
    ];

    #[test]
    fn json_lines_lines_that_are_not_json_become_invalid_pairs() {
        for (name, text, pairs, index, reason) in JSONL_SALVAGED {
            let drop = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(drop.layout, Layout::JsonLines, "{name}");
            assert_eq!(drop.pairs.len(), *pairs, "{name}");
            let invalid: Vec<_> = drop
                .invalid
                .iter()
                .map(|p| (p.index, p.reason.as_str()))
                .collect();
            assert_eq!(invalid, [(*index, *reason)], "{name}");
            assert_eq!(drop.salvage.lines_unparsed, 1, "{name}");
        }
    }

    #[test]
    fn rejected_files() {
        for (name, text, message) in REJECTED {
            match parse(text) {
                Ok(drop) => panic!("{name}: accepted as {:?}", drop.layout),
                Err(e) => assert_eq!(e.to_string(), *message, "{name}"),
            }
        }
    }

    #[test]
    fn no_valid_pair_keeps_every_reason_and_the_layout() {
        let err = parse(r#"{"qa_pairs":[{"q":1},{"q":2},{"q":3},{"q":4}]}"#).unwrap_err();
        let LayoutError::NoValidPair { layout, invalid } = err else {
            panic!("wrong error: {err}")
        };
        assert_eq!(layout, Layout::Nested);
        assert_eq!(invalid.len(), 4);
        assert_eq!(invalid[3].index, 3);
    }

    #[test]
    fn deep_nesting_is_a_clean_error() {
        const LEVELS: usize = 100_000;
        // The column is that of the bracket opening level 128.
        let cases = [
            ("arrays", "[".repeat(LEVELS), 128),
            ("objects", "{\"a\":".repeat(LEVELS), 127 * 5 + 1),
            (
                "closed arrays",
                "[".repeat(LEVELS) + &"]".repeat(LEVELS),
                128,
            ),
            (
                "deep pair value",
                format!("{{\"q\":\"Q\",\"a\":{}", "[".repeat(LEVELS)),
                140,
            ),
        ];
        for (name, text, column) in cases {
            let err = parse(&text).unwrap_err();
            assert!(
                matches!(
                    err,
                    LayoutError::TooDeep {
                        line: 1,
                        limit: 127,
                        ..
                    }
                ),
                "{name}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!("JSON nested too deeply at line 1, column {column} (limit 127 levels)"),
                "{name}"
            );
        }
    }

    #[test]
    fn depth_limit_is_exact() {
        let nest = |levels: usize| {
            let inner = "[".repeat(levels - 2) + &"]".repeat(levels - 2);
            format!(r#"[{{"q":"Q","a":"A","deep":{inner}}}]"#)
        };
        let drop = parse(&nest(DEPTH_LIMIT)).unwrap();
        assert_eq!(drop.pairs.len(), 1);
        let err = parse(&nest(DEPTH_LIMIT + 1)).unwrap_err();
        assert!(matches!(err, LayoutError::TooDeep { .. }), "{err}");
    }

    #[test]
    fn layout_names_round_trip() {
        let names: Vec<_> = Layout::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(names, ["flat", "nested", "nested_array", "jsonl", "single"]);
        for layout in Layout::ALL {
            assert_eq!(Layout::parse(layout.as_str()), Some(layout));
            assert_eq!(layout.to_string(), layout.as_str());
        }
        assert_eq!(Layout::parse("Flat"), None);
        assert_eq!(Layout::parse(""), None);
    }

    #[test]
    fn alias_lookup_matches_alias_table() {
        for (id, (key, _)) in ALIASES.iter().enumerate() {
            assert_eq!(alias_id(key), Some(id), "{key}");
        }
        assert_eq!(alias_id("Question"), None);
        assert_eq!(alias_id("qa_pairs"), None);
    }

    #[test]
    fn session_forms() {
        let cases = [
            (json!(123), Some(123)),
            (json!("123"), Some(123)),
            (json!(" 123 "), Some(123)),
            (json!("session_123"), Some(123)),
            (json!("SESSION-123"), Some(123)),
            (json!("session 123"), Some(123)),
            (json!("session#123"), Some(123)),
            (json!("session"), None),
            (json!("sess_123"), None),
            (json!("123abc"), None),
            (json!(1.5), None),
            (json!(null), None),
            (json!([1]), None),
            (json!("séssion_1"), None),
        ];
        for (value, want) in cases {
            assert_eq!(session_number(&value), want, "{value}");
        }
    }

    /// Keeps `schemas/` and this module in step: every example a schema shows must
    /// be read as that schema's layout, with no invalid pair.
    #[test]
    fn schema_examples_parse_as_their_layout() {
        let schemas = [
            (include_str!("../../schemas/flat.schema.json"), Layout::Flat),
            (
                include_str!("../../schemas/nested.schema.json"),
                Layout::Nested,
            ),
            (
                include_str!("../../schemas/nested_array.schema.json"),
                Layout::NestedArray,
            ),
            (
                include_str!("../../schemas/single.schema.json"),
                Layout::Single,
            ),
            (
                include_str!("../../schemas/pair.schema.json"),
                Layout::Single,
            ),
            (
                include_str!("../../schemas/jsonl_line.schema.json"),
                Layout::JsonLines,
            ),
        ];
        for (schema, layout) in schemas {
            let schema: Value = serde_json::from_str(schema).unwrap();
            let title = schema["title"].as_str().unwrap();
            let examples = schema["examples"].as_array().unwrap();
            assert!(!examples.is_empty(), "{title}");
            let texts: Vec<String> = if layout == Layout::JsonLines {
                let lines: Vec<String> = examples.iter().map(Value::to_string).collect();
                vec![lines.join("\n"), lines.join("\r\n") + "\r\n"]
            } else {
                examples
                    .iter()
                    .flat_map(|e| [e.to_string(), serde_json::to_string_pretty(e).unwrap()])
                    .collect()
            };
            for text in texts {
                let drop = parse(&text).unwrap_or_else(|e| panic!("{title}: {e}"));
                assert_eq!(drop.layout, layout, "{title}: {text}");
                assert_eq!(drop.invalid, [], "{title}: {text}");
            }
        }
    }

    #[test]
    fn inherited_values_are_independent_copies() {
        let drop =
            parse(r#"{"meta":{"k":[1,2]},"qa_pairs":[{"q":"a","a":"b"},{"q":"c","a":"d"}]}"#)
                .unwrap();
        assert_eq!(drop.pairs[0].extra, drop.pairs[1].extra);
        assert_eq!(drop.pairs[0].extra["meta"], json!({"k":[1,2]}));
    }
}

/// The fields [`peek_session`] looks at; serde skips everything else without building it.
#[derive(serde::Deserialize)]
struct PeekObject {
    #[serde(default)]
    session: Option<Value>,
    #[serde(default)]
    qa_pairs: Option<Vec<PeekObject>>,
}

impl PeekObject {
    fn session(&self) -> Option<i64> {
        self.session.as_ref().and_then(session_number).or_else(|| {
            self.qa_pairs
                .iter()
                .flatten()
                .find_map(|p| p.session.as_ref().and_then(session_number))
        })
    }
}

/// The session number a drop's content declares, found without building its pairs (a
/// backfill plans its work with it before reading anything for real): a nested
/// object's top-level `session`, else the first pair's. Agrees with
/// [`ParsedDrop::session`] on every file whose pairs agree with each other.
pub fn peek_session(text: &str) -> Option<i64> {
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with('[') {
        let items: Vec<PeekObject> = serde_json::from_str(text).ok()?;
        return items.iter().find_map(PeekObject::session);
    }
    match serde_json::from_str::<PeekObject>(text) {
        Ok(object) => object.session(),
        // JSON Lines: the first line speaks for the file.
        Err(_) => serde_json::from_str::<PeekObject>(text.lines().next()?)
            .ok()?
            .session(),
    }
}

#[cfg(test)]
mod peek_tests {
    use super::*;

    #[test]
    fn peek_agrees_with_parse() {
        let cases = [
            (
                "nested_top",
                r#"{"session": 123, "qa_pairs": [{"question": "q", "answer": "a"}]}"#,
                Some(123),
            ),
            (
                "nested_string",
                r#"{"session": "session_7", "qa_pairs": [{"q": "q", "a": "a"}]}"#,
                Some(7),
            ),
            (
                "flat_pairs",
                r#"[{"question": "q", "answer": "a", "session": 150}]"#,
                Some(150),
            ),
            (
                "nested_array",
                r#"[{"session": 9, "qa_pairs": [{"q": "x", "a": "y"}]}]"#,
                Some(9),
            ),
            (
                "jsonl",
                "{\"q\": \"x\", \"a\": \"y\", \"session\": 11}\n{\"q\": \"z\", \"a\": \"w\", \"session\": 11}\n",
                Some(11),
            ),
            ("none", r#"[{"question": "q", "answer": "a"}]"#, None),
            ("broken", r#"{"session": 5, "qa_pairs": ["#, None),
        ];
        for (name, text, want) in cases {
            assert_eq!(peek_session(text), want, "{name}");
            if let Ok(parsed) = parse(text) {
                assert_eq!(parsed.session, want, "{name}: parse and peek agree");
            }
        }
    }
}

#[cfg(test)]
mod salvage_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lone_surrogate_becomes_a_replacement_character() {
        for text in [
            r#"[{"q": "a\ud800b", "a": "x"}, {"q": "lone low \udc00", "a": "y"}]"#,
            "{\"q\": \"a\\ud800b\", \"a\": \"x\"}\n{\"q\": \"lone low \\udc00\", \"a\": \"y\"}\n",
        ] {
            let drop = parse(text).unwrap();
            assert_eq!(drop.pairs[0].question, "a\u{FFFD}b");
            assert_eq!(drop.pairs[1].question, "lone low \u{FFFD}");
            assert_eq!(drop.salvage.surrogates_replaced, 2);
        }
        // A proper pair is left alone.
        let drop = parse(r#"[{"q": "\ud83d\ude00", "a": "x"}]"#).unwrap();
        assert_eq!(drop.pairs[0].question, "😀");
        assert!(drop.salvage.is_empty());
    }

    #[test]
    fn non_finite_numbers_are_kept_as_their_source_text() {
        let text = r#"[{"q": "Q", "a": "A", "score": NaN, "hi": Infinity, "lo": -Infinity,
                       "big": 1e400, "list": [1, NaN], "ok": 1.5, "s": "NaN in a string"},
                      {"q": NaN, "a": "A2"},
                      {"q": "Q3", "a": "A3", "indicator": 1e999}]"#;
        let drop = parse(text).unwrap();
        assert_eq!(drop.pairs.len(), 2);
        let extra = &drop.pairs[0].extra;
        assert_eq!(extra["score"], json!("NaN"));
        assert_eq!(extra["hi"], json!("Infinity"));
        assert_eq!(extra["lo"], json!("-Infinity"));
        assert_eq!(extra["big"], json!("1e400"));
        assert_eq!(extra["list"], json!([1, "NaN"]));
        assert_eq!(extra["ok"], json!(1.5));
        assert_eq!(extra["s"], json!("NaN in a string"));
        assert_eq!(drop.pairs[1].indicator.as_deref(), Some("1e999"));
        assert_eq!(drop.invalid.len(), 1);
        assert_eq!(
            drop.invalid[0].reason,
            "question is a number (NaN), expected a string"
        );
        assert_eq!(drop.salvage.numbers_kept_as_text, 7);
    }

    #[test]
    fn a_literal_fdd0_in_a_repaired_file_cannot_pass_for_a_number() {
        let text = "[{\"q\": \"\u{FDD0}NaN\", \"a\": \"x\", \"n\": NaN}]";
        let drop = parse(text).unwrap();
        assert_eq!(drop.pairs[0].question, "\u{FFFD}NaN");
        assert_eq!(drop.salvage.noncharacters_replaced, 1);
        // Without a repair the file is read as written.
        let drop = parse("[{\"q\": \"\u{FDD0}x\", \"a\": \"x\"}]").unwrap();
        assert_eq!(drop.pairs[0].question, "\u{FDD0}x");
    }

    #[test]
    fn control_characters_are_removed_and_counted() {
        let drop = parse(
            r#"[{"q": "a\u0000b\u001b[2Jc", "a": "tab\tand\nnewline stay\r", "category": "x\u0007"},
               {"q": "\u0000\u0001", "a": "only controls"}]"#,
        )
        .unwrap();
        assert_eq!(drop.pairs[0].question, "ab[2Jc");
        assert_eq!(drop.pairs[0].answer, "tab\tand\nnewline stay");
        assert_eq!(drop.pairs[0].category.as_deref(), Some("x"));
        assert_eq!(drop.invalid[0].reason, "question is empty");
        assert_eq!(drop.salvage.controls_removed, 6);
    }

    #[test]
    fn an_error_after_a_repair_is_located_in_the_original_text() {
        let err = parse("[{\"q\": NaN, \"a\": \"x\"} {\"q\": 1}]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed JSON at line 1, column 23: expected `,` or `]`"
        );
        let err = parse("[{\"q\": NaN, \"a\": \"x\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated JSON: the file ends inside a value at line 1, column 20"
        );
    }
}
