//! Text as the workbench compares it: words, shingles and MinHash signatures.
//!
//! A word is a run of letters and digits of the text in Unicode NFC, lower-cased, so
//! punctuation, case and spacing never make two texts differ. Words are hashed with
//! 64-bit FNV-1a and shingles (runs of `k` consecutive words) with a fixed mixing
//! function, so a signature stored today is still valid after a rebuild: nothing here
//! depends on the standard library's unspecified hasher or on a random seed.

use unicode_normalization::UnicodeNormalization;

/// The seed every MinHash permutation is derived from. Changing it invalidates stored
/// signatures (they record it: `dataset::near_dups::Params`).
pub const MINHASH_SEED: u64 = 0x5045_5250_4554_5541; // "PERPETUA"

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// splitmix64's finaliser: a fixed, well-mixing bijection on 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends the hash of each word of `text` to `out`, in order.
pub fn word_hashes(text: &str, out: &mut Vec<u64>) {
    let mut h = FNV_OFFSET;
    let mut in_word = false;
    let push = |c: char, h: &mut u64, in_word: &mut bool, out: &mut Vec<u64>| {
        if c.is_alphanumeric() {
            for l in c.to_lowercase() {
                let mut buf = [0u8; 4];
                for b in l.encode_utf8(&mut buf).bytes() {
                    *h = (*h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
                }
            }
            *in_word = true;
        } else if *in_word {
            out.push(*h);
            *h = FNV_OFFSET;
            *in_word = false;
        }
    };
    if text.is_ascii() {
        for c in text.chars() {
            push(c, &mut h, &mut in_word, out);
        }
    } else {
        for c in text.nfc() {
            push(c, &mut h, &mut in_word, out);
        }
    }
    if in_word {
        out.push(h);
    }
}

/// The distinct shingles of a word sequence: each run of `k` consecutive words, hashed,
/// sorted. A text shorter than `k` words is one shingle of all its words; an empty text
/// has none.
pub fn shingles(words: &[u64], k: usize) -> Vec<u64> {
    let k = k.max(1);
    let mut out: Vec<u64> = if words.is_empty() {
        Vec::new()
    } else if words.len() <= k {
        vec![shingle(words)]
    } else {
        words.windows(k).map(shingle).collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

fn shingle(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15, |acc, &w| mix64(acc ^ w))
}

/// Exact Jaccard similarity of two sorted, distinct shingle sets (1 when both are empty).
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common as f64 / (a.len() + b.len() - common) as f64
}

/// The seeds of `n` MinHash permutations.
pub fn permutations(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| mix64(MINHASH_SEED.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
        .collect()
}

/// The MinHash signature of a shingle set: for each permutation, the smallest of the
/// shingles' permuted hashes. Two sets agree on a value with probability equal to their
/// Jaccard similarity. An empty set gets `u64::MAX` everywhere. Stored signatures keep
/// the low 16 bits of each value ([`compact`]: b-bit MinHash; two different minima agree
/// by accident once in 65,536).
pub fn signature(shingles: &[u64], perms: &[u64], out: &mut Vec<u64>) {
    out.clear();
    out.resize(perms.len(), u64::MAX);
    for &s in shingles {
        for (slot, &p) in out.iter_mut().zip(perms) {
            let v = mix64(s ^ p);
            if v < *slot {
                *slot = v;
            }
        }
    }
}

/// A signature as stored: the low 16 bits of each value, little-endian.
pub fn compact(signature: &[u64]) -> Vec<u8> {
    signature
        .iter()
        .flat_map(|v| (*v as u16).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(t: &str) -> Vec<u64> {
        let mut v = Vec::new();
        word_hashes(t, &mut v);
        v
    }

    #[test]
    fn case_punctuation_spacing_and_composition_do_not_matter() {
        assert_eq!(words("What is RSI?"), words("what   is rsi"));
        assert_eq!(words("Déjà vu"), words("De\u{301}ja\u{300} VU"));
        assert_eq!(words("it's 14-period").len(), 4);
        assert!(words(" ... ").is_empty());
    }

    #[test]
    fn shingles_and_jaccard() {
        let a = shingles(&words("the quick brown fox jumps"), 3);
        let b = shingles(&words("The quick brown fox leaps"), 3);
        assert_eq!(a.len(), 3);
        assert!((jaccard(&a, &b) - 0.5).abs() < 1e-9, "2 of 4 distinct");
        assert_eq!(shingles(&words("two words"), 3).len(), 1);
        assert_eq!(jaccard(&[], &[]), 1.0);
    }

    #[test]
    fn minhash_agreement_tracks_jaccard() {
        let perms = permutations(256);
        let text: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        let a = shingles(&words(&text.join(" ")), 3);
        let mut changed = text.clone();
        changed[30] = "other".into();
        let b = shingles(&words(&changed.join(" ")), 3);
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        signature(&a, &perms, &mut sa);
        signature(&b, &perms, &mut sb);
        let agree = sa.iter().zip(&sb).filter(|(x, y)| x == y).count() as f64 / 256.0;
        let exact = jaccard(&a, &b);
        assert!((agree - exact).abs() < 0.1, "{agree} vs {exact}");
        // Fixed seed: the same text always gets the same signature.
        let mut again = Vec::new();
        signature(&a, &permutations(256), &mut again);
        assert_eq!(sa, again);
    }
}
