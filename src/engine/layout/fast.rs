//! The fast path of [`super::parse`]: simd-json's tape instead of serde_json's `Value`
//! tree, for the drops that need nothing but reading.
//!
//! simd-json finds the structure of a document with vector instructions and leaves it
//! as a flat tape of nodes whose strings point into the input; the pairs are built
//! straight from it, so a question or an answer is copied once (into its `RawPair`)
//! and no map is built for an object whose fields are all recognised. serde_json with
//! its `Value` tree remains the reference: this path gives up (`None`) on anything
//! that is not plainly good (a parse error, an invalid pair, a duplicate key, a
//! repair, deep nesting, a number it cannot represent exactly as serde_json would)
//! and [`super::parse`] then runs the reference path, which says what is wrong with
//! its line and column. Whatever it returns equals what the reference returns for the
//! same text (`tests/fast_path.rs` checks it on arbitrary documents).

use super::{
    ALIASES, Collector, Field, Inherited, KeySet, Layout, PAIR_KEYS, ParsedDrop, QA_PAIRS, RawPair,
    alias_id, is_label, shared_session,
};
use serde_json::{Map, Number, Value};
use simd_json::{Buffers, Node, StaticNode};
use std::cell::RefCell;

/// Deepest nesting taken here: deeper documents go to serde_json, whose limit (127)
/// decides. Kept well below it, so simd-json never accepts what serde_json refuses.
const MAX_DEPTH: usize = 100;

/// Inputs up to this size keep their buffers on the thread for the next file; a
/// larger one gets its own, freed after it, so that one big drop does not pin its
/// size in memory for good.
const KEEP_BUFFERS: usize = 8 << 20;

struct Scratch {
    input: Vec<u8>,
    buffers: Buffers,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: Vec::new(),
        buffers: Buffers::with_max_depth(0, MAX_DEPTH),
    });
}

/// `text` read through the fast path, or `None` when the reference path must decide.
/// `text` has no byte-order mark and holds more than whitespace.
pub(super) fn parse(text: &str) -> Option<ParsedDrop> {
    let mut out = Collector::default();
    let layout = match with_tape(text, |nodes| document(nodes, &mut out)) {
        Some(layout) => layout?,
        // Not one JSON value: JSON Lines when each non-blank line is one.
        None => json_lines(text, &mut out)?,
    };
    if out.pairs.is_empty() {
        return None;
    }
    let session = out
        .top_session
        .filter(|_| layout == Layout::Nested)
        .or_else(|| shared_session(&out.pairs));
    Some(ParsedDrop {
        layout,
        pairs: out.pairs,
        invalid: out.invalid,
        session,
        salvage: out.salvage,
    })
}

/// Runs `take` over the tape of `text`; `None` when simd-json does not parse it.
fn with_tape<T>(text: &str, take: impl FnOnce(&[Node<'_>]) -> T) -> Option<T> {
    let run = |scratch: &mut Scratch| {
        scratch.input.clear();
        scratch.input.extend_from_slice(text.as_bytes());
        let tape =
            simd_json::to_tape_with_buffers(&mut scratch.input, &mut scratch.buffers).ok()?;
        Some(take(&tape.0))
    };
    if text.len() > KEEP_BUFFERS {
        return run(&mut Scratch {
            input: Vec::new(),
            buffers: Buffers::with_max_depth(text.len(), MAX_DEPTH),
        });
    }
    SCRATCH.with(|s| run(&mut s.borrow_mut()))
}

/// The index just past the value at `i`.
fn skip(nodes: &[Node<'_>], i: usize) -> usize {
    match nodes[i] {
        Node::Object { count, .. } | Node::Array { count, .. } => i + 1 + count,
        _ => i + 1,
    }
}

/// The (key, value index) entries of the object at `i`, in order.
fn entries<'n, 'i>(nodes: &'n [Node<'i>], i: usize) -> impl Iterator<Item = (&'i str, usize)> + 'n {
    let len = match nodes[i] {
        Node::Object { len, .. } => len,
        _ => 0,
    };
    let mut at = i + 1;
    (0..len).map(move |_| {
        let key = match nodes[at] {
            Node::String(k) => k,
            // A key is always a string on the tape.
            _ => "",
        };
        let value = at + 1;
        at = skip(nodes, value);
        (key, value)
    })
}

/// The element indices of the array at `i`, in order.
fn elements<'n>(nodes: &'n [Node<'_>], i: usize) -> impl Iterator<Item = usize> + 'n {
    let len = match nodes[i] {
        Node::Array { len, .. } => len,
        _ => 0,
    };
    let mut at = i + 1;
    (0..len).map(move |_| {
        let element = at;
        at = skip(nodes, element);
        element
    })
}

fn is_object(nodes: &[Node<'_>], i: usize) -> bool {
    matches!(nodes[i], Node::Object { .. })
}

/// An object with a `qa_pairs` key ([`super::is_nested`]).
fn is_nested(nodes: &[Node<'_>], i: usize) -> bool {
    is_object(nodes, i) && entries(nodes, i).any(|(k, _)| k == QA_PAIRS)
}

/// [`super::document`] on the tape.
fn document(nodes: &[Node<'_>], out: &mut Collector) -> Option<Layout> {
    match nodes.first()? {
        Node::Object { .. } => {
            if is_nested(nodes, 0) {
                nested(nodes, 0, out)?;
                Some(Layout::Nested)
            } else {
                let (p, _) = pair(nodes, 0, out)?;
                out.pairs.push(p);
                Some(Layout::Single)
            }
        }
        Node::Array { len, .. } => {
            let any_nested = elements(nodes, 0).any(|e| is_nested(nodes, e));
            out.pairs.reserve(*len);
            for e in elements(nodes, 0) {
                if any_nested && is_nested(nodes, e) {
                    nested(nodes, e, out)?;
                } else {
                    let (p, _) = pair(nodes, e, out)?;
                    out.pairs.push(p);
                }
            }
            Some(if any_nested {
                Layout::NestedArray
            } else {
                Layout::Flat
            })
        }
        _ => None,
    }
}

/// [`super::json_lines`] on tapes, one per line.
fn json_lines(text: &str, out: &mut Collector) -> Option<Layout> {
    let mut lines = 0;
    for line in text.split('\n') {
        if line.trim_matches(super::JSON_WHITESPACE).is_empty() {
            continue;
        }
        lines += 1;
        with_tape(line, |nodes| {
            if is_nested(nodes, 0) {
                nested(nodes, 0, out)
            } else {
                let (p, _) = pair(nodes, 0, out)?;
                out.pairs.push(p);
                Some(())
            }
        })??;
    }
    // One value alone parsed as a document, so this text is not JSON Lines.
    (lines > 1).then_some(Layout::JsonLines)
}

/// [`super::nested`] for the object at `i`: its top-level fields are inherited by the
/// pairs of its `qa_pairs`.
fn nested(nodes: &[Node<'_>], i: usize, out: &mut Collector) -> Option<()> {
    let mut items = None;
    let mut top = Map::new();
    for (key, v) in entries(nodes, i) {
        if key == QA_PAIRS {
            if items.replace(v).is_some() {
                return None; // twice: serde_json keeps the last, in the first's place
            }
        } else if top.insert(key.to_owned(), value(nodes, v)?).is_some() {
            return None;
        }
    }
    let items = items?;
    if !matches!(nodes[items], Node::Array { .. }) {
        return None;
    }
    if let Some(session) = top.get("session") {
        out.top_session = super::session_number(session);
    }
    let inherited = Inherited::from_top(top, out);
    if let Node::Array { len, .. } = nodes[items] {
        out.pairs.reserve(len);
    }
    for e in elements(nodes, items) {
        let (mut p, keys) = pair(nodes, e, out)?;
        inherited.apply(&mut p, keys);
        out.pairs.push(p);
    }
    Some(())
}

/// [`super::split`] and [`super::pair`] for the value at `i`: a valid pair and the
/// recognised keys it had, or `None` for anything else (an invalid pair is worded by
/// the reference path).
fn pair(nodes: &[Node<'_>], i: usize, out: &mut Collector) -> Option<(RawPair, KeySet)> {
    if !is_object(nodes, i) {
        return None;
    }
    let mut best = [usize::MAX; 4];
    let mut at = [0usize; 4];
    let mut keys: KeySet = 0;
    for (key, v) in entries(nodes, i) {
        let Some(id) = alias_id(key) else { continue };
        if keys & 1 << id != 0 {
            return None; // a duplicate key
        }
        keys |= 1 << id;
        let field = ALIASES[id].1;
        let usable =
            !is_label(field) || matches!(nodes[v], Node::String(_)) || is_number(&nodes[v]);
        if usable && id < best[field as usize] {
            best[field as usize] = id;
            at[field as usize] = v;
        }
    }
    if keys & PAIR_KEYS == 0 {
        return None;
    }
    let slot = |field: Field| (best[field as usize] != usize::MAX).then(|| at[field as usize]);
    let question = text(nodes, slot(Field::Question)?, out)?;
    let answer = text(nodes, slot(Field::Answer)?, out)?;
    let indicator = match slot(Field::Indicator) {
        Some(v) => Some(label(nodes, v, out)?),
        None => None,
    };
    let category = match slot(Field::Category) {
        Some(v) => Some(label(nodes, v, out)?),
        None => None,
    };
    let mut extra = Map::new();
    for (key, v) in entries(nodes, i) {
        if alias_id(key).is_some_and(|id| best[ALIASES[id].1 as usize] == id) {
            continue;
        }
        if extra.insert(key.to_owned(), value(nodes, v)?).is_some() {
            return None;
        }
    }
    Some((
        RawPair {
            question,
            answer,
            indicator,
            category,
            extra,
        },
        keys,
    ))
}

/// [`super::text`]: a question or answer that is a string, not blank once cleaned.
fn text(nodes: &[Node<'_>], i: usize, out: &mut Collector) -> Option<String> {
    let Node::String(s) = nodes[i] else {
        return None;
    };
    let mut s = s.to_owned();
    out.clean(&mut s);
    (!s.trim().is_empty()).then_some(s)
}

/// [`super::label`]: a string, or a number's text.
fn label(nodes: &[Node<'_>], i: usize, out: &mut Collector) -> Option<String> {
    let mut s = match nodes[i] {
        Node::String(s) => s.to_owned(),
        Node::Static(n) => Value::Number(number(n)?).to_string(),
        _ => return None,
    };
    out.clean(&mut s);
    Some(s)
}

fn is_number(node: &Node<'_>) -> bool {
    matches!(
        node,
        Node::Static(StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_))
    )
}

/// The number serde_json would make of the same text. simd-json reads `-0` as the
/// integer 0 (serde_json: the float -0.0, kept apart from `0`, which simd-json reads as
/// an unsigned 0); both round floats correctly (serde_json with `float_roundtrip`).
fn number(node: StaticNode) -> Option<Number> {
    match node {
        StaticNode::I64(0) => Number::from_f64(-0.0),
        StaticNode::I64(n) => Some(n.into()),
        StaticNode::U64(n) => Some(n.into()),
        StaticNode::F64(f) => Number::from_f64(f),
        _ => None,
    }
}

/// The `Value` of the node at `i` (an extra or inherited field), as serde_json would
/// have built it.
fn value(nodes: &[Node<'_>], i: usize) -> Option<Value> {
    Some(match nodes[i] {
        Node::String(s) => Value::String(s.to_owned()),
        Node::Static(StaticNode::Null) => Value::Null,
        Node::Static(StaticNode::Bool(b)) => Value::Bool(b),
        Node::Static(n) => Value::Number(number(n)?),
        Node::Array { len, .. } => {
            let mut items = Vec::with_capacity(len);
            for e in elements(nodes, i) {
                items.push(value(nodes, e)?);
            }
            Value::Array(items)
        }
        Node::Object { .. } => {
            let mut map = Map::new();
            for (k, v) in entries(nodes, i) {
                if map.insert(k.to_owned(), value(nodes, v)?).is_some() {
                    return None;
                }
            }
            Value::Object(map)
        }
    })
}
