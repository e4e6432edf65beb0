//! The dataset workbench at scale, through the real binary: `import-db` against `ingest`
//! of the same pairs, the quality report, and near-duplicate detection with its recall
//! and precision on planted near-duplicates, each with its time and peak memory.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example workbench -- 100000     # pairs (default 100,000)
//! cargo run --release --example workbench -- 1000000
//! ```
//! WORKBENCH_DIR keeps the generated files and databases (default: a temporary folder,
//! removed at the end). Figures and method: BENCHMARKS.md, "Dataset workbench".
//!
//! The set: generated pairs (`perpetual::generate`: distinct pairs that share an
//! indicator and much of their wording), plus a planted near-duplicate for 5% of them,
//! each made by one of `generate::Variation` (a word changed, punctuation, casing, a
//! clause reordered). The same pairs are written as drops (for `ingest`) and as one
//! SQLite database in the seeds' production layout (for `import-db`).

use perpetual::generate::{self, DropLayout, GenConfig, TextPair};
use perpetual::pair::{PairKey, pair_key};
use perpetual::store::source_db::{self, LegacyRow};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const PAIRS_PER_FILE: usize = 500;
const CHUNK_FILES: usize = 20;
const PLANT_RATIO: f64 = 0.05;

fn main() {
    let pairs: usize = std::env::args()
        .nth(1)
        .map(|a| a.replace('_', "").parse().expect("PAIRS must be a number"))
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var_os("WORKBENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let bin = binary();
    println!("binary {}", bin.display());
    println!("load average before: {}", loadavg());

    let drops = base.join("drops");
    let db = base.join("source.db");
    let t = std::time::Instant::now();
    let truth = write_set(&drops, &db, pairs);
    println!(
        "generated {pairs} pairs + {} planted near-duplicates in {:.1} s",
        truth.len(),
        t.elapsed().as_secs_f64()
    );

    let ingest_root = base.join("root_ingest");
    let import_root = base.join("root_import");
    let r_ingest = measure(
        &bin,
        &ingest_root,
        &[
            "ingest",
            "--agent",
            "bench",
            "--json",
            drops.to_str().unwrap(),
        ],
    );
    let r_import = measure(
        &bin,
        &import_root,
        &[
            "import-db",
            db.to_str().unwrap(),
            "--agent",
            "bench",
            "--json",
        ],
    );
    let out = base.join("deliverables");
    let out = out.to_str().unwrap();
    let r_quality = measure(&bin, &import_root, &["quality", "--out", out, "--json"]);
    let r_near = measure(&bin, &import_root, &["near-dups", "--out", out, "--json"]);
    let r_near_again = measure(&bin, &import_root, &["near-dups", "--out", out, "--json"]);
    println!("load average after: {}", loadavg());

    let (recall, precision, found, verified) =
        score(&import_root, &base.join("deliverables"), &truth);

    println!();
    println!("| run | pairs | seconds | pairs/s | peak RSS | notes |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    let row = |name: &str, r: &serde_json::Value, seconds: f64, rss: u64, notes: String| {
        let n = r["pairs_seen"]
            .as_u64()
            .or(r["pairs"].as_u64())
            .unwrap_or(0);
        println!(
            "| {name} | {n} | {seconds:.2} | {:.0} | {:.0} MB | {notes} |",
            n as f64 / seconds,
            rss as f64 / 1024.0
        );
    };
    for (name, m) in [
        ("ingest (drops, in place)", &r_ingest),
        ("import-db (same pairs)", &r_import),
        ("quality", &r_quality),
        ("near-dups (first run)", &r_near),
        ("near-dups again (signatures stored)", &r_near_again),
    ] {
        let notes = match name {
            n if n.starts_with("near-dups") => format!(
                "{} signatures made, {} candidates, {} verified pairs, {} clusters",
                m.json["signatures_made"],
                m.json["candidates"],
                m.json["near_duplicate_pairs"],
                m.json["clusters"]
            ),
            "quality" => format!("{} flagged", m.json["flagged"]),
            _ => format!("{} new", m.json["pairs_new"]),
        };
        row(name, &m.json, m.seconds, m.rss_kb, notes);
    }
    println!();
    println!(
        "import-db / ingest rate: {:.0}%",
        100.0 * (r_import.json["pairs_seen"].as_f64().unwrap() / r_import.seconds)
            / (r_ingest.json["pairs_seen"].as_f64().unwrap() / r_ingest.seconds)
    );
    println!(
        "near-dups: recall {:.4} ({found} of {} planted pairs clustered together), precision {:.4} ({verified} verified pairs)",
        recall,
        truth.len(),
        precision
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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

/// Writes `pairs` generated pairs and the planted near-duplicates, as drops under
/// `drops` and as rows of the database `db`, in chunks; returns the planted pairs'
/// keys (original, variant).
fn write_set(drops: &Path, db: &Path, pairs: usize) -> Vec<(PairKey, PairKey)> {
    let _ = std::fs::remove_file(db);
    let files = pairs.div_ceil(PAIRS_PER_FILE);
    let mut truth = Vec::new();
    let mut written = 0;
    let mut chunk = 0u64;
    while written < files {
        let n = CHUNK_FILES.min(files - written);
        let mut generated = generate::generate(&GenConfig {
            seed: 1000 + chunk,
            files: n,
            pairs_per_file: PAIRS_PER_FILE,
            layouts: vec![DropLayout::Flat, DropLayout::Nested, DropLayout::JsonLines],
            first_pair_id: (written * PAIRS_PER_FILE) as u64,
            ..GenConfig::default()
        });
        let good: Vec<TextPair> = generated
            .iter()
            .flat_map(|f| match perpetual::engine::ingest::parse_bytes(&f.bytes) {
                perpetual::engine::ingest::Outcome::Parsed(p) => p
                    .pairs
                    .into_iter()
                    .map(|p| TextPair {
                        question: p.question,
                        answer: p.answer,
                        indicator: p.indicator,
                        category: p.category,
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        let planted = generate::plant_near_duplicates(&good, PLANT_RATIO, chunk);
        for p in &planted {
            let o = &good[p.original];
            truth.push((
                pair_key(&o.question, &o.answer),
                pair_key(&p.variant.question, &p.variant.answer),
            ));
        }
        let variants: Vec<TextPair> = planted.iter().map(|p| p.variant.clone()).collect();
        generated.push(generate::text_pairs_drop(
            &format!("near_duplicates_{chunk:04}.json"),
            &variants,
        ));
        generate::write_files(&drops.join(format!("chunk_{chunk:04}")), &generated).unwrap();
        let rows: Vec<LegacyRow> = good
            .iter()
            .chain(&variants)
            .map(|p| LegacyRow {
                question: p.question.clone(),
                answer: p.answer.clone(),
                indicator: p.indicator.clone(),
                category: p.category.clone(),
                sources: None,
            })
            .collect();
        source_db::append_legacy(db, &rows).unwrap();
        written += n;
        chunk += 1;
    }
    truth
}

/// Recall: planted pairs whose two ends share a cluster. Precision: verified pairs
/// (`near_duplicate_pairs.csv`) that are planted pairs.
fn score(root: &Path, out: &Path, truth: &[(PairKey, PairKey)]) -> (f64, f64, usize, usize) {
    let conn = rusqlite::Connection::open_with_flags(
        root.join("perpetual.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut id_of: HashMap<PairKey, i64> = HashMap::new();
    let mut key_of: HashMap<i64, PairKey> = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT id, key FROM pairs").unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let id: i64 = r.get(0).unwrap();
            let key: Vec<u8> = r.get(1).unwrap();
            let key = PairKey::try_from(key.as_slice()).unwrap();
            id_of.insert(key, id);
            key_of.insert(id, key);
        }
    }
    let mut rep: HashMap<i64, i64> = HashMap::new();
    {
        let mut stmt = conn
            .prepare(
                "SELECT pair_id, representative FROM near_dup_members WHERE method = 'minhash'",
            )
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            rep.insert(r.get(0).unwrap(), r.get(1).unwrap());
        }
    }
    let planted: HashSet<(PairKey, PairKey)> =
        truth.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
    let found = truth
        .iter()
        .filter(|(a, b)| {
            let (Some(x), Some(y)) = (id_of.get(a), id_of.get(b)) else {
                return false;
            };
            matches!((rep.get(x), rep.get(y)), (Some(p), Some(q)) if p == q)
        })
        .count();
    let csv = std::fs::read_to_string(out.join("near_duplicate_pairs.csv")).unwrap();
    let mut verified = 0;
    let mut correct = 0;
    for line in csv.lines().skip(1) {
        let mut f = line.split(',');
        let a: i64 = f.next().unwrap().parse().unwrap();
        let b: i64 = f.next().unwrap().parse().unwrap();
        verified += 1;
        if planted.contains(&(key_of[&a], key_of[&b])) {
            correct += 1;
        }
    }
    (
        found as f64 / truth.len().max(1) as f64,
        correct as f64 / verified.max(1) as f64,
        found,
        verified,
    )
}

struct Measured {
    json: serde_json::Value,
    seconds: f64,
    rss_kb: u64,
}

/// Runs `perpetual --root ROOT ARGS` (which prints JSON with `seconds` and
/// `peak_rss_kb`); the wall time is measured from outside too, and the larger is kept.
fn measure(bin: &Path, root: &Path, args: &[&str]) -> Measured {
    let t = std::time::Instant::now();
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let code = out.status.code().unwrap_or(-1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        code == 0 || code == 3,
        "perpetual {args:?} exited {code}: {text}"
    );
    let json: serde_json::Value = serde_json::from_str(text.trim()).expect("--json output");
    Measured {
        seconds: wall,
        rss_kb: json["peak_rss_kb"].as_u64().unwrap_or(0),
        json,
    }
}
