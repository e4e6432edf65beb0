//! The deliverables at scale, through the real binary: time and peak memory (VmHWM, as
//! each command reports it in `--json`) of `export rag` (JSON Lines and Parquet), `split`
//! (JSON Lines, CSV and Parquet; a first run that places every pair, and a re-run where
//! every pair is placed already), `charts`, and the embeddings round trip: `export
//! embeddings` (every pair, in batches of 10,000), `import embeddings` of a results file
//! for the first EMBED_PAIRS pairs (made by `examples/fake_embeddings`, vectors of
//! EMBED_DIM numbers), the same import again, and `near-dups --cosine 0.95` over them,
//! over a database of N generated pairs.
//!
//! ```sh
//! cargo build --release --bins --examples
//! cargo run --release --example deliverables_scale -- 1000000     # pairs (default 1,000,000)
//! EMBED_PAIRS=100000 EMBED_DIM=256 cargo run --release --example deliverables_scale -- 100000
//! ```
//! EMBED_PAIRS defaults to min(N, 100,000), EMBED_DIM to 256; COSINE_EXACT=1 also runs
//! the exact search over the same vectors and prints the HNSW run's recall. Set SCALE_DIR to keep the
//! database and the outputs (default: a temporary folder, removed at the end), and
//! SCALE_PRUNE=1 to remove each command's files once it is measured (disk); the
//! embeddings rows run only on a root whose pairs are not batched yet. The load average
//! is printed before and after each command: the machine is shared. Figures and method:
//! BENCHMARKS.md.

use perpetual::generate::{self, GenConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PAIRS_PER_FILE: usize = 1_000;
const CHUNK_FILES: usize = 100;

fn main() {
    let pairs: usize = std::env::args()
        .nth(1)
        .map(|a| a.replace('_', "").parse().expect("PAIRS must be a number"))
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var_os("SCALE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let bin = binary();
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    println!("binary {}, root {}", bin.display(), root.display());

    if !root.join("perpetual.db").exists() {
        let t = Instant::now();
        fill(&bin, &root, &base.join("chunk"), pairs);
        println!(
            "database of {pairs} pairs made in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        run(&bin, &root, &["quality", "--json"]);
    }

    // SCALE_PRUNE: each command's files are removed once it is measured, so the disk
    // holds one deliverable at a time (a million pairs' splits in three formats are
    // gigabytes).
    let prune = std::env::var_os("SCALE_PRUNE").is_some();
    println!();
    println!("| command | seconds | peak RSS | written | load before → after |");
    println!("| --- | ---: | ---: | ---: | --- |");
    let row = |name: &str, args: &[&str]| {
        let before = loadavg();
        let t = Instant::now();
        let report = run(&bin, &root, args);
        let seconds = t.elapsed().as_secs_f64();
        let rss = report["peak_rss_kb"].as_u64().unwrap_or(0);
        let written: u64 = report["files"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["bytes"].as_u64()).sum())
            .unwrap_or(0);
        println!(
            "| {name} | {seconds:.1} | {:.0} MB | {:.0} MB | {before} → {} |",
            rss as f64 / 1024.0,
            written as f64 / 1e6,
            loadavg()
        );
        report
    };
    for (name, args) in [
        ("export rag (jsonl)", vec!["export", "rag", "--json"]),
        (
            "export rag (parquet)",
            vec!["export", "rag", "--format", "parquet", "--json"],
        ),
        (
            "export rag --exclude flagged,near-dups (jsonl)",
            vec!["export", "rag", "--exclude", "flagged,near-dups", "--json"],
        ),
        (
            "split, first run (jsonl, csv, parquet)",
            vec!["split", "--json"],
        ),
        ("split, re-run (every pair placed)", vec!["split", "--json"]),
        ("charts", vec!["charts", "--json"]),
    ] {
        let report = row(name, &args);
        if name == "export rag (jsonl)" {
            println!(
                "| ({} distinct pairs in the database) | | | | |",
                report["counts"]["pairs"]
            );
        }
        if prune && name.starts_with("export rag") {
            let _ = std::fs::remove_dir_all(root.join("outbox/zai/rag_export"));
        }
    }
    if prune {
        let _ = std::fs::remove_dir_all(root.join("outbox/zai/splits"));
        let _ = std::fs::remove_dir_all(root.join("outbox/zai/visualizations"));
    }

    // The embeddings round trip.
    let dim: usize = env_number("EMBED_DIM").unwrap_or(256);
    let embed_pairs: usize = env_number("EMBED_PAIRS").unwrap_or(pairs.min(100_000));
    let outbox = root.join("outbox/zai");
    if outbox.join("embeddings_input_batch_1.jsonl").exists() {
        println!("(pairs batched already: the embeddings rows need a fresh SCALE_DIR)");
    } else {
        std::fs::write(
            root.join("perpetual.toml"),
            format!("[embeddings]\noutput_dimensionality = {dim}\n"),
        )
        .unwrap();
        row(
            "export embeddings (every pair, batches of 10,000)",
            &[
                "export",
                "embeddings",
                "--batch-size",
                "10000",
                "--batches",
                "1000000",
                "--json",
            ],
        );
        let results = base.join("results.jsonl");
        let t = Instant::now();
        fake_results(&outbox, embed_pairs.div_ceil(10_000), &results);
        if prune {
            for e in std::fs::read_dir(&outbox).unwrap() {
                let path = e.unwrap().path();
                if path.to_string_lossy().contains("embeddings_input_batch_") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        println!(
            "(results for {embed_pairs} pairs made by fake_embeddings in {:.0} s, {:.0} MB)",
            t.elapsed().as_secs_f64(),
            std::fs::metadata(&results).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
        );
        let results = results.to_str().unwrap();
        let import = format!("import embeddings ({embed_pairs} vectors of {dim})");
        row(&import, &["import", "embeddings", results, "--json"]);
        row(
            "import embeddings again (every vector unchanged)",
            &["import", "embeddings", results, "--json"],
        );
        let report = row(
            "near-dups --cosine 0.95",
            &["near-dups", "--cosine", "0.95", "--json"],
        );
        println!(
            "(cosine: search {}, {} clusters, {} pairs in clusters)",
            report["search"], report["clusters"], report["pairs_in_clusters"]
        );
        if std::env::var_os("COSINE_EXACT").is_some() {
            // Recall of the HNSW candidates: the exact search over the same vectors.
            let csv = outbox.join("near_duplicate_pairs_cosine.csv");
            let approximate = similar_pairs(&csv);
            std::fs::write(
                root.join("perpetual.toml"),
                format!(
                    "[embeddings]\noutput_dimensionality = {dim}\n[cosine]\nexact_max = 100000000\n"
                ),
            )
            .unwrap();
            let report = row(
                "near-dups --cosine 0.95, exact (every pair of vectors)",
                &["near-dups", "--cosine", "0.95", "--json"],
            );
            let exact = similar_pairs(&csv);
            let found = exact.intersection(&approximate).count();
            println!(
                "(exact: search {}, {} clusters; pairs at 0.95 or more: {} exact, {} by HNSW, {} of them in both: recall {:.4})",
                report["search"],
                report["clusters"],
                exact.len(),
                approximate.len(),
                found,
                found as f64 / exact.len().max(1) as f64
            );
        }
    }
    println!();
    let size = std::fs::metadata(root.join("perpetual.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!();
    println!("database {:.0} MB", size as f64 / 1e6);
}

/// The pairs (a, b) of a `near_duplicate_pairs_cosine.csv`.
fn similar_pairs(csv: &Path) -> std::collections::BTreeSet<(i64, i64)> {
    let mut reader = csv::Reader::from_path(csv).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].parse().unwrap(), r[1].parse().unwrap())
        })
        .collect()
}

/// A number from the environment (underscores allowed).
fn env_number(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.replace('_', "").parse().expect("a number"))
}

/// The results of request batches 1..=`batches`, one after the other in `to`, as
/// `examples/fake_embeddings` answers them (built beside this example).
fn fake_results(outbox: &Path, batches: usize, to: &Path) {
    let exe = std::env::current_exe().unwrap();
    let fake = exe.with_file_name("fake_embeddings");
    assert!(
        fake.exists(),
        "build it first: cargo build --release --examples"
    );
    let file = std::fs::File::create(to).unwrap();
    for n in 1..=batches {
        let input = outbox.join(format!("embeddings_input_batch_{n}.jsonl"));
        if !input.exists() {
            break;
        }
        let status = Command::new(&fake)
            .arg(&input)
            .stdout(file.try_clone().unwrap())
            .status()
            .expect("run fake_embeddings");
        assert!(status.success(), "fake_embeddings {}", input.display());
    }
}

/// The release binary next to this example.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let bin = dir.join("perpetual");
    assert!(
        bin.exists(),
        "build it first: cargo build --release ({})",
        bin.display()
    );
    bin
}

/// Generates `pairs` pairs in chunks of files and ingests each chunk in place, so disk
/// and memory hold one chunk at a time.
fn fill(bin: &Path, root: &Path, chunk_dir: &Path, pairs: usize) {
    let files = pairs.div_ceil(PAIRS_PER_FILE);
    let mut written = 0;
    let mut chunk = 0u64;
    while written < files {
        let n = CHUNK_FILES.min(files - written);
        let generated = generate::generate(&GenConfig {
            seed: chunk,
            files: n,
            pairs_per_file: PAIRS_PER_FILE,
            first_pair_id: (written * PAIRS_PER_FILE) as u64,
            // N pairs means N distinct pairs: no copies of earlier pairs (the default
            // copies a share), and no single-pair files (the default cycles through
            // them too, one file in five, which left 800,200 pairs of a "million").
            duplicate_ratio: 0.0,
            layouts: vec![
                generate::DropLayout::Flat,
                generate::DropLayout::Nested,
                generate::DropLayout::JsonLines,
            ],
            ..GenConfig::default()
        });
        let _ = std::fs::remove_dir_all(chunk_dir);
        generate::write_files(chunk_dir, &generated).unwrap();
        run(
            bin,
            root,
            &[
                "ingest",
                chunk_dir.to_str().unwrap(),
                "--agent",
                "droid",
                "--json",
            ],
        );
        written += n;
        chunk += 1;
    }
    let _ = std::fs::remove_dir_all(chunk_dir);
}

/// Runs `perpetual --root ROOT ARGS`, which must succeed; its `--json` report.
fn run(bin: &Path, root: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run perpetual");
    assert!(
        out.status.success(),
        "perpetual {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().next().unwrap_or("?").to_string())
        .unwrap_or_else(|_| "?".into())
}
