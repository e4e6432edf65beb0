//! The pair: what one question/answer record is once it is ready to store, and its
//! identity. A pair's key is blake3 of its normalised question, a `\n` separator and
//! its normalised answer. Normalising means Unicode NFC, every run of whitespace
//! collapsed to one space, and trimming; letter case is kept. Because normalised text
//! never contains `\n` (it is whitespace), the separator cannot be forged by content.

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// blake3 digest identifying a distinct pair.
pub type PairKey = [u8; 32];

/// A set of keys, hashed by a keyed mix of their first 8 bytes: a key is a blake3
/// digest, already uniform, so SipHash over all 32 bytes (the default) was 1.5% of the
/// writer's time for nothing. The mix's key is random per process, so that nobody who
/// grinds out keys with chosen bits can crowd one corner of the table. A large set
/// lives on huge pages ([`crate::huge_pages`]): its lookups land anywhere in it.
pub type KeySet = hashbrown::HashSet<PairKey, BuildKeyHasher, crate::huge_pages::HugePages>;

/// Builds the [`KeySet`]'s hasher: a random seed and odd multiplier, per instance.
#[derive(Debug, Clone, Copy)]
pub struct BuildKeyHasher {
    seed: u64,
    multiplier: u64,
}

impl Default for BuildKeyHasher {
    fn default() -> Self {
        use std::hash::BuildHasher;
        // The standard library's own random hash keys, drawn once per process.
        let random = std::collections::hash_map::RandomState::new();
        BuildKeyHasher {
            seed: random.hash_one(1u64),
            multiplier: random.hash_one(2u64) | 1,
        }
    }
}

impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            state: self.seed,
            multiplier: self.multiplier,
        }
    }
}

/// See [`BuildKeyHasher`]. Only for keys: other data written to it is mixed in 8 bytes
/// at a time, correctly but without the point.
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher {
    state: u64,
    multiplier: u64,
}

impl KeyHasher {
    fn mix(&mut self, word: u64) {
        let m = u128::from(word ^ self.state) * u128::from(self.multiplier);
        self.state = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.first_chunk::<8>() {
            // A key's 32 bytes (its length comes through `write_usize`, ignored).
            Some(head) if bytes.len() == 32 => self.mix(u64::from_le_bytes(*head)),
            _ => {
                for chunk in bytes.chunks(8) {
                    let mut word = [0u8; 8];
                    word[..chunk.len()].copy_from_slice(chunk);
                    self.mix(u64::from_le_bytes(word) ^ chunk.len() as u64);
                }
            }
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

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

/// What one pass over a text's bytes found ([`scan`]).
const NON_ASCII: u8 = 1;
/// Whitespace other than single spaces between words (a tab, a newline, two spaces in
/// a row, a space at either end), or a control character.
const IRREGULAR: u8 = 2;

/// One pass over `bytes` that decides most texts without decoding a character: 16
/// bytes at a time with SSE2 (every x86-64 has it), a few instructions per block. Any
/// control character counts as irregular: the definition then decides (the parser has
/// removed them from stored text anyway).
#[cfg(target_arch = "x86_64")]
fn scan(bytes: &[u8]) -> u8 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    let Some((&last, _)) = bytes.split_last() else {
        return 0;
    };
    if bytes[0] == b' ' || last == b' ' {
        return IRREGULAR;
    }
    let mut flags = 0;
    let mut after_space = 0u32; // 1 when the byte before the block is a space
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        // SAFETY: SSE2 is part of x86-64; `block` is 16 readable bytes and loadu has no
        // alignment requirement.
        let (space, low, high) = unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            (
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8))) as u32,
                // Signed: below 0x21 are the spaces, the controls and every byte from
                // 0x80 (negative as i8), which the sign mask tells apart.
                _mm_movemask_epi8(_mm_cmplt_epi8(v, _mm_set1_epi8(0x21))) as u32,
                _mm_movemask_epi8(v) as u32,
            )
        };
        if high != 0 {
            flags |= NON_ASCII;
        }
        let control = low & !space & !high;
        let doubled = space & ((space << 1) | after_space);
        if control | doubled != 0 {
            return flags | IRREGULAR;
        }
        after_space = space >> 15;
    }
    let mut prev_space = after_space != 0;
    for &b in blocks.remainder() {
        if b >= 0x80 {
            flags |= NON_ASCII;
        } else if b < b' ' || (b == b' ' && prev_space) {
            return flags | IRREGULAR;
        }
        prev_space = b == b' ';
    }
    flags
}

/// [`scan`] elsewhere: branch-free over 64-byte chunks, which the compiler vectorises.
#[cfg(not(target_arch = "x86_64"))]
fn scan(bytes: &[u8]) -> u8 {
    let Some((&last, _)) = bytes.split_last() else {
        return 0;
    };
    if bytes[0] == b' ' || last == b' ' {
        return IRREGULAR;
    }
    let mut flags = 0;
    let (this, next) = (&bytes[..bytes.len() - 1], &bytes[1..]);
    for (a, b) in this.chunks(64).zip(next.chunks(64)) {
        let mut f = 0u8;
        for (&x, &y) in a.iter().zip(b) {
            f |= u8::from(x >= 0x80) | (u8::from((x < b' ') | ((x == b' ') & (y == b' '))) << 1);
        }
        flags |= f;
        if flags & IRREGULAR != 0 {
            return flags;
        }
    }
    flags | u8::from(last >= 0x80) | (u8::from(last < b' ') << 1)
}

/// The characters of a text from U+0080 up, skipping ASCII eight bytes at a time.
struct NonAscii<'t> {
    text: &'t str,
    at: usize,
}

impl Iterator for NonAscii<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let b = self.text.as_bytes();
        let mut i = self.at;
        while let Some(word) = b.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if word & 0x8080_8080_8080_8080 != 0 {
                break;
            }
            i += 8;
        }
        while i < b.len() && b[i] < 0x80 {
            i += 1;
        }
        // i is a character boundary: ASCII bytes end characters.
        let c = self.text[i..].chars().next()?;
        self.at = i + c.len_utf8();
        Some(c)
    }
}

/// Whether `text` is its own normal form: single spaces between words, none at the
/// ends, no other whitespace, and (beyond ASCII) NFC by the quick check. Most written
/// text is, and is then hashed in place, never copied.
fn is_normal(text: &str) -> bool {
    let flags = scan(text.as_bytes());
    if flags & IRREGULAR != 0 {
        return false;
    }
    if flags & NON_ASCII == 0 {
        return true;
    }
    // Unicode whitespace beyond ASCII (U+0085, U+00A0, U+2000.. ) is irregular too.
    let mut space = false;
    // Characters below U+0300 are NFC-stable starters (see normalise_into).
    let nfc = is_nfc_quick(
        NonAscii { text, at: 0 }
            .inspect(|c| space |= c.is_whitespace())
            .filter(|&c| c >= '\u{300}'),
    );
    // A quick check that stopped early (not Yes) is the slow path anyway.
    nfc == IsNormalized::Yes && !space
}

/// The key of a question/answer pair.
pub fn pair_key(question: &str, answer: &str) -> PairKey {
    pair_key_with(question, answer, &mut String::new())
}

/// [`pair_key`] with a scratch buffer reused between calls (no allocation per pair
/// once it has grown).
pub fn pair_key_with(question: &str, answer: &str, scratch: &mut String) -> PairKey {
    let mut hasher = blake3::Hasher::new();
    key_message(question, answer, scratch, |piece| {
        hasher.update(piece);
    });
    *hasher.finalize().as_bytes()
}

/// The message a pair's key hashes, piece by piece, to `piece`: the normalised
/// question, `\n`, the normalised answer. Text already in normal form is passed as it
/// is, never copied; other text is normalised into `scratch` first.
fn key_message(question: &str, answer: &str, scratch: &mut String, mut piece: impl FnMut(&[u8])) {
    for (i, text) in [question, answer].into_iter().enumerate() {
        if i > 0 {
            piece(b"\n");
        }
        if is_normal(text) {
            piece(text.as_bytes());
        } else {
            scratch.clear();
            normalise_into(text, scratch);
            piece(scratch.as_bytes());
        }
    }
}

/// BLAKE3's initialisation vector (the spec's: the first words of SHA-256's), which
/// [`pair_keys`] hands to the block routines it calls directly. The tests check every
/// key it makes against [`pair_key`].
const BLAKE3_IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];
/// BLAKE3's flags: a chunk's first block, its last, and the root's last.
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const ROOT: u8 = 8;
const CHUNK: usize = blake3::CHUNK_LEN;
const BLOCK: usize = blake3::BLOCK_LEN;
const LANES: usize = blake3::platform::MAX_SIMD_DEGREE;

/// The keys of many pairs, each equal to [`pair_key`] of its question and answer, in
/// order.
///
/// BLAKE3 hashes a message in chunks of 1 KiB, each block of 64 bytes after the one
/// before, so one pair's key is a serial chain of about 25 compressions and SIMD had
/// nothing to do side by side: the keys were a third of the prepare stage. Blocks of
/// *different* messages, though, can be compressed side by side, one message per SIMD
/// lane (16 with AVX-512), by the routine BLAKE3 uses for the chunks of one long input.
/// So the messages of up to 2 KiB (one or two chunks: most pairs, with answers of 800
/// to 2,000 characters) are sorted by length and taken 16 at a time:
/// - a first chunk of two is a whole chunk: the 16 are compressed side by side;
/// - a last chunk (the second of two, or the only one) has the blocks of the shortest
///   of the 16 but its last compressed side by side, and the rest lane by lane;
/// - two chunks' chaining values are joined as the root of BLAKE3's tree
///   ([`blake3::hazmat::merge_subtrees_root`]).
///
/// Shorter and longer messages are hashed one by one. 20,000 messages of 850 to 2,150
/// bytes: 26 ms of hashing become 12, and the prepare stage of 20,000 generated pairs
/// takes 64 ms instead of 84 (BENCHMARKS.md, sixteenth sitting).
///
/// The block routines are `blake3::platform::Platform`'s `hash_many` and
/// `compress_in_place`, which the crate exports for its benchmarks and marks unstable:
/// a release that changes them fails to build here, and
/// `keys_hashed_side_by_side_are_the_keys_of_the_definition` and the property
/// `the_fast_key_is_the_key_of_the_definition` check the keys against the crate's
/// public hash at every message length up to past two chunks, and on random text.
pub fn pair_keys<'t, I>(pairs: I) -> Vec<PairKey>
where
    I: IntoIterator<Item = (&'t str, &'t str)>,
    I::IntoIter: Clone,
{
    let platform = blake3::platform::Platform::detect();
    let pairs = pairs.into_iter();
    // Every message, one after the other in one buffer (normalising seldom changes a
    // text's length: room for the texts as given is room enough, nearly always).
    let room = pairs.clone().map(|(q, a)| q.len() + 1 + a.len()).sum();
    let mut bytes: Vec<u8> = Vec::with_capacity(room);
    let mut spans: Vec<std::ops::Range<usize>> = Vec::with_capacity(pairs.size_hint().0);
    let mut scratch = String::new();
    for (question, answer) in pairs {
        let start = bytes.len();
        key_message(question, answer, &mut scratch, |piece| {
            bytes.extend_from_slice(piece)
        });
        spans.push(start..bytes.len());
    }
    let message = |i: usize| &bytes[spans[i].clone()];
    let mut keys = vec![PairKey::default(); spans.len()];
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for (i, span) in spans.iter().enumerate() {
        match span.len() {
            n if n > BLOCK && n <= CHUNK => one.push(i),
            n if n > CHUNK && n <= 2 * CHUNK => two.push(i),
            _ => keys[i] = *blake3::hash(message(i)).as_bytes(),
        }
    }
    // Of similar lengths side by side, the lanes share the most blocks.
    one.sort_unstable_by_key(|&i| spans[i].len());
    two.sort_unstable_by_key(|&i| spans[i].len());
    let mut out = [PairKey::default(); LANES];
    for group in one.chunks(LANES) {
        let chunks: Vec<&[u8]> = group.iter().map(|&i| message(i)).collect();
        last_chunks(&platform, &chunks, 0, ROOT, &mut out);
        for (&i, key) in group.iter().zip(&out) {
            keys[i] = *key;
        }
    }
    for group in two.chunks(LANES) {
        let firsts: Vec<&[u8; CHUNK]> = group
            .iter()
            .map(|&i| message(i).first_chunk::<CHUNK>().expect("two chunks"))
            .collect();
        let mut lefts = [0u8; blake3::OUT_LEN * LANES];
        platform.hash_many(
            &firsts,
            &BLAKE3_IV,
            0,
            blake3::IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut lefts[..blake3::OUT_LEN * group.len()],
        );
        let seconds: Vec<&[u8]> = group.iter().map(|&i| &message(i)[CHUNK..]).collect();
        last_chunks(&platform, &seconds, 1, 0, &mut out);
        for ((&i, left), right) in group
            .iter()
            .zip(lefts.chunks_exact(blake3::OUT_LEN))
            .zip(&out)
        {
            let left = left.try_into().expect("32 bytes");
            keys[i] = *blake3::hazmat::merge_subtrees_root(left, right, blake3::hazmat::Mode::Hash)
                .as_bytes();
        }
    }
    keys
}

/// The chaining values (with `root`: the hashes) of up to [`LANES`] chunks, each the
/// last of its message (so it may be short, never empty), all at place `counter` in
/// their messages: their blocks but the last, as far as every chunk has them, side by
/// side; the rest chunk by chunk.
fn last_chunks(
    platform: &blake3::platform::Platform,
    chunks: &[&[u8]],
    counter: u64,
    root: u8,
    out: &mut [PairKey; LANES],
) {
    let blocks = |c: &[u8]| c.len().div_ceil(BLOCK);
    let shared = chunks.iter().map(|c| blocks(c) - 1).min().unwrap_or(0);
    let mut states = [0u8; blake3::OUT_LEN * LANES];
    // `hash_many` takes blocks of one length known when compiling.
    macro_rules! side_by_side {
        ($($n:literal)*) => {
            match shared {
                0 => {}
                $($n => {
                    let inputs: Vec<&[u8; $n * BLOCK]> = chunks
                        .iter()
                        .map(|c| c.first_chunk::<{ $n * BLOCK }>().expect("checked above"))
                        .collect();
                    platform.hash_many(
                        &inputs,
                        &BLAKE3_IV,
                        counter,
                        blake3::IncrementCounter::No,
                        0,
                        CHUNK_START,
                        0,
                        &mut states[..blake3::OUT_LEN * chunks.len()],
                    );
                })*
                _ => unreachable!("a chunk has at most {} blocks", CHUNK / BLOCK),
            }
        };
    }
    side_by_side!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    for ((chunk, state), out) in chunks
        .iter()
        .zip(states.chunks_exact(blake3::OUT_LEN))
        .zip(out.iter_mut())
    {
        let mut cv: [u32; 8] = if shared == 0 {
            BLAKE3_IV
        } else {
            std::array::from_fn(|w| {
                u32::from_le_bytes(state[4 * w..4 * w + 4].try_into().expect("4"))
            })
        };
        let last = blocks(chunk) - 1;
        for b in shared..=last {
            let part = &chunk[b * BLOCK..chunk.len().min((b + 1) * BLOCK)];
            let mut block = [0u8; BLOCK];
            block[..part.len()].copy_from_slice(part);
            let flags =
                if b == 0 { CHUNK_START } else { 0 } | if b == last { CHUNK_END | root } else { 0 };
            platform.compress_in_place(&mut cv, &block, part.len() as u8, counter, flags);
        }
        for (w, word) in cv.iter().enumerate() {
            out[4 * w..4 * w + 4].copy_from_slice(&word.to_le_bytes());
        }
    }
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
    fn a_key_set_hashes_a_key_by_its_first_bytes_and_keeps_keys_apart() {
        use std::hash::BuildHasher;
        let a = pair_key("q", "a");
        let b = pair_key("q", "b");
        // Two keys that share their first 8 bytes hash alike, and are still two keys.
        let mut c = b;
        c[..8].copy_from_slice(&a[..8]);
        let hasher = BuildKeyHasher::default();
        assert_eq!(hasher.hash_one(a), hasher.hash_one(c));
        assert_ne!(hasher.hash_one(a), hasher.hash_one(b));
        let mut set = KeySet::default();
        assert!(set.insert(a) && set.insert(b) && set.insert(c));
        assert!(!set.insert(a));
        assert_eq!(set.len(), 3);
        // Keyed: another hasher (another process) places the same key elsewhere.
        assert_ne!(
            hasher.hash_one(a),
            BuildKeyHasher::default().hash_one(a),
            "a 1 in 2^64 chance of failing"
        );
        assert_ne!(hasher.hash_one("other data"), hasher.hash_one("other date"));
    }

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
        let words = "word ".repeat(40);
        let long_a = format!("{words}end");
        let long_b = format!("{words} end"); // two spaces at byte 200
        let long_c = format!("{words}\u{e9}\tend"); // a tab after a non-ASCII letter
        let long_d = format!("{words}Cafe\u{301}");
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
            // Beyond ASCII: irregular spaces the byte scan cannot see, and long texts
            // whose trouble sits past the first chunk of the scan.
            "na\u{ef}ve \u{2014} d\u{e9}j\u{e0} vu",
            "\u{20ac}5\u{a0}000",
            "x\u{85}",
            "\u{3000}x",
            "a\u{2028}b",
            "\u{1F4C8} \u{2248}1.2\u{3c3}",
            "\u{e9}\u{301}",
            "e\u{301}\u{327}",
            &long_a,
            &long_b,
            &long_c,
            &long_d,
        ];
        for text in cases {
            assert_eq!(normalise(text), reference(text), "{text:?}");
            if is_normal(text) {
                assert_eq!(reference(text), text, "taken as normal: {text:?}");
            }
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
    fn written_text_takes_the_fast_path() {
        let words = "word ".repeat(40);
        for text in [
            "What is RSI?",
            "na\u{ef}ve \u{2014} d\u{e9}j\u{e0} vu \u{20ac}5",
            &format!("{words}\u{201c}quoted\u{201d}"),
            "",
        ] {
            assert!(is_normal(text), "{text:?}");
        }
        for text in [
            " a",
            "a ",
            "a  b",
            "a\tb",
            "a\u{a0}b",
            "Cafe\u{301}",
            &format!("{words}\n"),
        ] {
            assert!(!is_normal(text), "{text:?}");
        }
    }

    #[test]
    fn the_scan_is_exact_for_ascii_at_every_place_in_a_block() {
        let reference = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        for len in 0..50 {
            for at in 0..len {
                for odd in ["  ", "\t", "\n", " \r", "\u{b}", "\u{c}"] {
                    let mut t: String = (0..len)
                        .map(|i| if i % 5 == 4 { ' ' } else { 'w' })
                        .collect();
                    t.replace_range(at..at + 1, odd);
                    assert_eq!(is_normal(&t), reference(&t) == t, "{t:?}");
                    assert_eq!(normalise(&t), reference(&t), "{t:?}");
                }
                let mut t: String = "a".repeat(len);
                t.insert(at, '\u{e9}');
                assert!(is_normal(&t), "{t:?}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, failure_persistence: None, ..Default::default() })]

        /// The byte scan and the quick check only ever skip work: a text they call
        /// normal is its own normal form, and the key is the key of the definition,
        /// on text made of what trips them (runs of spaces at block edges, ASCII and
        /// Unicode whitespace, controls, letters below and above U+0300, combining
        /// marks in and out of order, decomposed letters, astral characters).
        #[test]
        fn the_fast_key_is_the_key_of_the_definition(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "w", "word", " ", "  ", "\t", "\n", "\r", "\u{b}", "\u{1}", "\u{7f}",
                "\u{e9}", "e\u{301}", "\u{301}", "\u{327}", "\u{a0}", "\u{85}", "\u{2003}",
                "\u{3000}", "\u{2014}", "\u{201c}", "\u{fffd}", "\u{1f4c8}", "\u{212b}",
                "\u{340}", "\u{ac00}", "\u{1100}\u{1161}", "0123456789abcdef",
            ]), 0..40),
            answer in ".{0,20}",
        ) {
            let text: String = parts.concat();
            let reference = |t: &str| t.nfc().collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ");
            if is_normal(&text) {
                proptest::prop_assert_eq!(reference(&text), text.clone());
            }
            proptest::prop_assert_eq!(normalise(&text), reference(&text));
            let mut hasher = blake3::Hasher::new();
            hasher.update(reference(&text).as_bytes());
            hasher.update(b"\n");
            hasher.update(reference(&answer).as_bytes());
            proptest::prop_assert_eq!(pair_key(&text, &answer), *hasher.finalize().as_bytes());
            // And side by side, in a batch long enough to take the SIMD path.
            let long = text.repeat(1 + 1100 / (text.len() + 1));
            let batch = [(text.as_str(), answer.as_str()), (long.as_str(), answer.as_str()), (answer.as_str(), long.as_str())];
            let keys = pair_keys(batch);
            proptest::prop_assert_eq!(keys, batch.map(|(q, a)| pair_key(q, a)).to_vec());
        }
    }

    #[test]
    fn keys_hashed_side_by_side_are_the_keys_of_the_definition() {
        // Messages of every length up to past two chunks (the separator included),
        // so at every block and chunk edge, in batches that fill the lanes, stop one
        // short and spill one over, with text that needs normalising among them.
        let mut pairs: Vec<(String, String)> = Vec::new();
        for total in (0..2100).chain([3000, 5000]) {
            let question = "q".repeat(total.min(17));
            let rest = total.saturating_sub(question.len() + 1);
            let answer: String = (0..rest)
                .map(|i| if i % 9 == 8 { ' ' } else { 'a' })
                .collect();
            pairs.push((question, answer));
        }
        pairs.push((
            "  spaced\tout  ".into(),
            format!("e\u{301}{}", "x ".repeat(600)),
        ));
        for batch in [0, 1, 15, 16, 17, 33, pairs.len()] {
            let these = &pairs[..batch];
            let keys = pair_keys(these.iter().map(|(q, a)| (q.as_str(), a.as_str())));
            let want: Vec<PairKey> = these.iter().map(|(q, a)| pair_key(q, a)).collect();
            assert_eq!(keys, want, "batch of {batch}");
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
