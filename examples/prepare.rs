//! The prepare stage alone, on one thread: what each file costs the engine between its
//! bytes and its keyed pairs (blake3 of the bytes, decode, layout, keys:
//! `ingest::parse_bytes`), beside the bare parse (serde_json into a `Value`, blake3 of
//! question and answer). The corpus is the e2e bench's (`benches/e2e.rs`): answers of
//! 800 to 2,000 characters, flat and nested files of 100 pairs, 20% duplicates, made
//! in memory by the generator, so the figures leave the disk out.
//!
//! Run: `cargo run --release --example prepare -- [--pairs 20000] [--runs 5]`.
//! Under callgrind (instruction counts do not care about the machine's load):
//! `valgrind --tool=callgrind target/release/examples/prepare --pairs 2000 --runs 1 --only prepare`.

use perpetual::engine::ingest::{self, Outcome};
use perpetual::engine::{decode, layout};
use perpetual::generate::{self, DropLayout, GenConfig};
use serde_json::Value;
use std::time::Instant;

/// CPU time of this thread, in milliseconds: unlike the wall clock, it does not count
/// the time other processes hold the core, so it is steady on a loaded machine.
fn cpu_ms() -> f64 {
    perpetual::clock::thread_cpu().as_secs_f64() * 1e3
}

/// `cargo run --release --example prepare -- [OPTIONS]`.
#[derive(clap::Parser)]
struct Args {
    /// Pairs in the corpus (files of 100).
    #[arg(long, default_value_t = 20_000)]
    pairs: usize,
    /// Runs of each stage.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// One stage only: bare, serde, prepare, or steps (each step of the prepare stage).
    #[arg(long)]
    only: Option<String>,
}

fn main() {
    let Args { pairs, runs, only } = clap::Parser::parse();
    let files = generate::generate(&GenConfig {
        seed: 14,
        files: pairs.div_ceil(100),
        pairs_per_file: 100,
        duplicate_ratio: 0.2,
        layouts: vec![DropLayout::Flat, DropLayout::Nested],
        answer_chars: Some((800, 2000)),
        ..GenConfig::default()
    });
    let bytes: usize = files.iter().map(|f| f.bytes.len()).sum();
    println!(
        "{} files, {pairs} pairs, {:.1} MB; load average {}",
        files.len(),
        bytes as f64 / 1e6,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let want =
        |what: &str| only.as_deref().is_none_or(|o| o == what) && only.as_deref() != Some("steps");
    for run in 1..=runs {
        let mut line = format!("run {run}:");
        if want("bare") {
            let (start, cpu) = (Instant::now(), cpu_ms());
            let mut check = 0u8;
            for f in &files {
                let v: Value = serde_json::from_slice(&f.bytes).unwrap();
                let items = match &v {
                    Value::Array(items) => items,
                    Value::Object(o) => o["qa_pairs"].as_array().unwrap(),
                    _ => unreachable!(),
                };
                for item in items {
                    let o = item.as_object().unwrap();
                    let get = |names: [&str; 3]| {
                        names
                            .iter()
                            .find_map(|n| o.get(*n).and_then(Value::as_str))
                            .unwrap()
                    };
                    let mut h = blake3::Hasher::new();
                    h.update(get(["question", "q", "prompt"]).as_bytes());
                    h.update(b"\n");
                    h.update(get(["answer", "a", "response"]).as_bytes());
                    check ^= h.finalize().as_bytes()[0];
                }
            }
            std::hint::black_box(check);
            line += &format!(
                "  bare parse {:.1} ms (cpu {:.1} ms)",
                start.elapsed().as_secs_f64() * 1e3,
                cpu_ms() - cpu
            );
        }
        if want("serde") {
            // The same steps as parse_bytes, with the serde_json reference parser.
            let (start, cpu) = (Instant::now(), cpu_ms());
            let mut n = 0;
            let mut scratch = String::new();
            for f in &files {
                std::hint::black_box(blake3::hash(&f.bytes));
                let decoded = decode::decode(&f.bytes);
                assert!(!decoded.text.contains('\0'));
                let parsed = layout::parse_reference(&decoded.text).unwrap();
                for raw in parsed.pairs {
                    std::hint::black_box(raw.into_pair(&mut scratch));
                    n += 1;
                }
            }
            assert_eq!(n, pairs);
            line += &format!(
                "  prepare (serde_json) {:.1} ms (cpu {:.1} ms)",
                start.elapsed().as_secs_f64() * 1e3,
                cpu_ms() - cpu
            );
        }
        if only.as_deref() == Some("steps") {
            // Each step of the prepare stage over every file, apart (CPU ms).
            let mut t = [0.0f64; 7];
            let mut n = 0;
            for f in &files {
                let c = cpu_ms();
                std::hint::black_box(blake3::hash(&f.bytes));
                let c1 = cpu_ms();
                let decoded = decode::decode(&f.bytes);
                let c2 = cpu_ms();
                assert!(!decoded.text.contains('\0'));
                let c3 = cpu_ms();
                let parsed = layout::parse(&decoded.text).unwrap();
                let c4 = cpu_ms();
                let cb = cpu_ms();
                for p in &parsed.pairs {
                    let mut h = blake3::Hasher::new();
                    h.update(p.question.as_bytes());
                    h.update(b"\n");
                    h.update(p.answer.as_bytes());
                    std::hint::black_box(h.finalize());
                }
                t[6] += cpu_ms() - cb;
                let c4 = c4 + (cpu_ms() - cb);
                let mut scratch = String::new();
                let keyed: Vec<_> = parsed
                    .pairs
                    .into_iter()
                    .map(|r| r.into_pair(&mut scratch))
                    .collect();
                let c5 = cpu_ms();
                n += keyed.len();
                drop(keyed);
                let c6 = cpu_ms();
                for (i, d) in [c1 - c, c2 - c1, c3 - c2, c4 - c3, c5 - c4, c6 - c5]
                    .into_iter()
                    .enumerate()
                {
                    t[i] += d;
                }
            }
            assert_eq!(n, pairs);
            line += &format!(
                "  file hash {:.1}, decode {:.1}, NUL {:.1}, layout {:.1}, keys+extra {:.1} (of which blake3 alone {:.1}), drop {:.1} (cpu ms)",
                t[0], t[1], t[2], t[3], t[4], t[6], t[5]
            );
        }
        if want("prepare") {
            let (start, cpu) = (Instant::now(), cpu_ms());
            let mut n = 0;
            for f in &files {
                std::hint::black_box(blake3::hash(&f.bytes));
                match ingest::parse_bytes(&f.bytes) {
                    Outcome::Parsed(p) => n += p.pairs.len(),
                    other => panic!("{}: {other:?}", f.name),
                }
            }
            assert_eq!(n, pairs);
            line += &format!(
                "  prepare (simd-json) {:.1} ms (cpu {:.1} ms)",
                start.elapsed().as_secs_f64() * 1e3,
                cpu_ms() - cpu
            );
        }
        println!("{line}");
    }
}
