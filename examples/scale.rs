//! Scale run through the real binary: ingest rate on an empty database and with a
//! large archive already stored, re-run cost, and peak memory (max RSS) of each run.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example scale -- 1000000      # pairs in the big archive (default 1,000,000)
//! cargo run --release --example scale -- 1000000 --probes 5   # probes of each kind (default 3)
//! ```
//! Set SCALE_DIR to keep the generated archives and databases (default: a temporary
//! folder, removed at the end). Figures and method: BENCHMARKS.md.

use perpetual::generate::{self, DropLayout, GenConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PAIRS_PER_FILE: usize = 500;
// Long enough that each probe includes a merge of its new keys into the index
// (store::pairs::MERGE_MIN is 200,000), so a merge's cost is in both rates.
const PROBE_PAIRS: usize = 300_000;
const CHUNK_FILES: usize = 100;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut pairs = 1_000_000;
    let mut probes = 3;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--probes" => {
                probes = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .expect("--probes takes a number of probes (1 or more)")
            }
            n => pairs = n.replace('_', "").parse().expect("PAIRS must be a number"),
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var_os("SCALE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let bin = binary();
    println!("binary {}", bin.display());

    let big = base.join("archive_big");
    let probe_empty = base.join("probe_empty");
    // One archive of fresh pairs per probe into the big root: each must be new there.
    let probes_full: Vec<PathBuf> = (0..probes)
        .map(|i| match i {
            0 => base.join("probe_full"),
            i => base.join(format!("probe_full_{i}")),
        })
        .collect();
    let t = Instant::now();
    write_archive(&big, pairs, 0, true);
    write_archive(&probe_empty, PROBE_PAIRS, 10_000_000_000, false);
    for (i, dir) in probes_full.iter().enumerate() {
        write_archive(
            dir,
            PROBE_PAIRS,
            20_000_000_000 + i as u64 * 1_000_000_000,
            false,
        );
    }
    println!(
        "generated {pairs} + {} x {PROBE_PAIRS} pairs in {:.1} s",
        probes + 1,
        t.elapsed().as_secs_f64()
    );

    let full_root = base.join("root_full");
    let r_big = ingest(&bin, &full_root, &big);
    // The probes alternate, one into a fresh root, one into the big root (a million
    // stored, then 300,000 more after each probe), so that the machine's drift from
    // one minute to the next falls on both sides; the ratio is of their medians.
    let (mut r_empty, mut r_full) = (Vec::new(), Vec::new());
    for (i, probe) in probes_full.iter().enumerate() {
        let empty_root = base.join(format!("root_empty_{i}"));
        r_empty.push(ingest(&bin, &empty_root, &probe_empty));
        let _ = std::fs::remove_dir_all(&empty_root);
        r_full.push(ingest(&bin, &full_root, probe));
    }
    let r_rerun = ingest(&bin, &full_root, &big);
    let backfill_args = [
        "backfill",
        big.to_str().unwrap(),
        "--budget",
        "1000000000000",
        "--json",
    ];
    let r_backfill = measure(&bin, &base.join("root_backfill"), &backfill_args);
    let r_backfill_again = measure(&bin, &base.join("root_backfill"), &backfill_args);

    println!();
    println!("| run | pairs stored before | pairs new | seconds | pairs/s | peak RSS |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut rows: Vec<(String, usize, &Measured)> =
        vec![("big archive, empty database".into(), 0, &r_big)];
    for (i, (e, f)) in r_empty.iter().zip(&r_full).enumerate() {
        rows.push((
            format!("300k fresh pairs, empty database ({})", i + 1),
            0,
            e,
        ));
        rows.push((
            format!("300k fresh pairs, big archive stored ({})", i + 1),
            pairs + i * PROBE_PAIRS,
            f,
        ));
    }
    rows.push((
        "big archive again (re-run)".into(),
        pairs + probes * PROBE_PAIRS,
        &r_rerun,
    ));
    rows.push((
        "big archive as `backfill` (sessions, budget, wrap)".into(),
        0,
        &r_backfill,
    ));
    rows.push((
        "`backfill` again (finished task)".into(),
        pairs,
        &r_backfill_again,
    ));
    for (name, before, r) in rows {
        println!(
            "| {name} | {before} | {} | {:.2} | {:.0} | {:.0} MB |",
            r.pairs_new,
            r.seconds,
            r.pairs_new as f64 / r.seconds,
            r.max_rss_kb as f64 / 1024.0
        );
    }
    let rate = |r: &Measured| r.pairs_new as f64 / r.seconds;
    let (empty, full) = (
        median(r_empty.iter().map(rate).collect()),
        median(r_full.iter().map(rate).collect()),
    );
    println!();
    println!(
        "rate with {pairs} or more stored / rate on empty database, medians of {probes} probes each: {:.0} / {:.0} pairs/s = {:.0}%",
        full,
        empty,
        full / empty * 100.0
    );
    println!(
        "peak RSS: {:.0} MB for {PROBE_PAIRS} pairs, {:.0} MB for {pairs} pairs",
        r_empty[0].max_rss_kb as f64 / 1024.0,
        r_big.max_rss_kb as f64 / 1024.0
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
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

/// Writes `pairs` fresh pairs in files of 500, in chunks so generation memory stays small;
/// with `sessions`, as session exports session_1.json, session_2.json, ...
fn write_archive(dir: &Path, pairs: usize, first_id: u64, sessions: bool) {
    let files = pairs.div_ceil(PAIRS_PER_FILE);
    let mut written = 0;
    let mut chunk = 0;
    while written < files {
        let n = CHUNK_FILES.min(files - written);
        let generated = generate::generate(&GenConfig {
            seed: first_id + chunk as u64,
            files: n,
            pairs_per_file: PAIRS_PER_FILE,
            layouts: vec![
                DropLayout::Flat,
                DropLayout::Nested,
                DropLayout::JsonLines,
                DropLayout::NestedArray,
            ],
            first_pair_id: first_id + (written * PAIRS_PER_FILE) as u64,
            session_start: sessions.then_some(written as u32 + 1),
            ..GenConfig::default()
        });
        generate::write_files(&dir.join(format!("chunk_{chunk:04}")), &generated).unwrap();
        written += n;
        chunk += 1;
    }
}

struct Measured {
    pairs_new: u64,
    seconds: f64,
    max_rss_kb: i64,
}

fn ingest(bin: &Path, root: &Path, archive: &Path) -> Measured {
    measure(
        bin,
        root,
        &[
            "ingest",
            "--agent",
            "bench",
            "--json",
            archive.to_str().unwrap(),
        ],
    )
}

/// Runs `perpetual --root ROOT ARGS` (which prints JSON with `pairs_new` and `seconds`)
/// and measures its peak RSS.
// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn measure(bin: &Path, root: &Path, args: &[&str]) -> Measured {
    // Each run starts with the disk quiet: the big archive's ingest leaves a gigabyte of
    // pages to write back, which the probe after it would otherwise compete with. The
    // figures still move with what ran before the probe (BENCHMARKS.md, ninth sitting).
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    // wait4 instead of Child::wait: it also returns the child's own peak RSS.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let code = libc::WEXITSTATUS(status);
    assert!(
        code == 0 || code == 3,
        "perpetual {args:?} exited {code}: {out}"
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("--json output");
    Measured {
        pairs_new: report["pairs_new"].as_u64().unwrap(),
        seconds: report["seconds"].as_f64().unwrap(),
        // VmHWM as the child reports it: wait4's ru_maxrss would include this process's
        // own memory, which Linux carries into the child's high-water mark at exec.
        max_rss_kb: report["peak_rss_kb"].as_i64().unwrap_or(usage.ru_maxrss),
    }
}
