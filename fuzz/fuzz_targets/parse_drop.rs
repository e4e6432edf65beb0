//! The first half of the pipeline on arbitrary bytes: decode, layout recognition,
//! salvage, validation, keys. It must never panic; whatever it accepts must hold only
//! pairs with a question and an answer that are not blank.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perpetual::engine::ingest::{Outcome, parse_bytes};

fuzz_target!(|data: &[u8]| {
    if let Outcome::Parsed(file) = parse_bytes(data) {
        assert!(!file.pairs.is_empty());
        for p in &file.pairs {
            assert!(!p.question.trim().is_empty() && !p.answer.trim().is_empty());
            assert_eq!(p.key, perpetual::pair::pair_key(&p.question, &p.answer));
        }
    }
});
