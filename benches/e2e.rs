//! `perpetual ingest PATH` end to end, against the physical limit of this machine.
//!
//! For each corpus size (20,000 and 200,000 pairs by default) it writes a corpus with
//! the real binary (`perpetual generate`: answers of 800 to 2,000 characters, flat and
//! nested files of 100 pairs, 20% of the pairs copied from earlier files), then, in one
//! sitting, `--runs` times in turn:
//!
//! 1. **bare parse**: a minimal program on one thread: read each file, parse it with
//!    serde_json into a `Value`, find each pair's question and answer (the generator's
//!    aliases), blake3 of question, `\n`, answer. No decoding, no normalisation, no
//!    ledger.
//! 2. **bare insert**: the rows the engine stores (its own keys, each distinct pair once,
//!    parsed before the clock starts), as (key, question, answer) into a fresh database
//!    file: the engine's page size (`store::PAGE_SIZE`), WAL, `synchronous = NORMAL`,
//!    one prepared statement, one transaction, timed
//!    from the open through the close (whose checkpoint makes it durable).
//! 3. **ingest**: the release binary, `perpetual --root FRESH ingest CORPUS --json`,
//!    timed from spawn to exit (the pairs are durable when it exits: the WAL is synced
//!    before it returns). Its `pairs_new` is checked against the corpus.
//!
//! Each of the three starts with the disk quiet: a `sync` and 200 ms ([`quiet_disk`]),
//! since the corpus just written and the previous run's root, deleted, leave the kernel
//! writing back and discarding while the next stage runs, which slowed whichever stage
//! came next by up to half (BENCHMARKS.md, ninth sitting).
//!
//! It prints the medians and the ratio max(bare parse, bare insert) / ingest: on two
//! cores parsing and inserting can overlap, so the larger of the two is the limit.
//! Also printed: the engine's prepare stage alone on one thread (`parse_bytes` plus the
//! blake3 of the bytes), and the time `ingest` spends outside its own `seconds`.
//!
//! Then the time outside the work: `perpetual ingest` on an existing root with an empty
//! inbox, and with one small file (one pair) waiting, `--small-runs` times each.
//!
//! With `E2E_PHASES=1` each bare insert also prints its three phases (the inserts, the
//! commit with its checkpoint, the close that deletes the WAL) on stderr.
//!
//! Run: `cargo bench --bench e2e [-- --pairs 20000,200000 --runs 5 --small-runs 20]`.
//! Figures and method: BENCHMARKS.md, "End to end".

use perpetual::engine::ingest::{self, Outcome};
use perpetual::pair::PairKey;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cargo bench --bench e2e -- [OPTIONS]`.
#[derive(clap::Parser)]
struct Options {
    /// Corpus sizes in pairs, comma-separated.
    #[arg(long = "pairs", value_delimiter = ',', default_values_t = [20_000, 200_000])]
    sizes: Vec<usize>,
    /// Runs of the three stages per corpus (the medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs of `ingest` on an empty inbox and on one small file.
    #[arg(long, default_value_t = 20)]
    small_runs: usize,
    /// Pairs in each generated file.
    #[arg(long, default_value_t = 100)]
    pairs_per_file: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn options() -> Options {
    clap::Parser::parse()
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_perpetual")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// `perpetual generate` into `dir`.
fn generate(dir: &Path, pairs: usize, per_file: usize, seed: u64) {
    let files = pairs.div_ceil(per_file);
    let status = Command::new(binary())
        .args(["generate", "--out"])
        .arg(dir)
        .args(["--files", &files.to_string()])
        .args(["--pairs", &per_file.to_string()])
        .args(["--duplicates", "0.2", "--layouts", "flat,nested"])
        .args(["--answer-chars", "800-2000", "--seed", &seed.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("cannot run perpetual generate");
    assert!(status.success(), "perpetual generate failed");
}

const QUESTION: [&str; 3] = ["question", "q", "prompt"];
const ANSWER: [&str; 3] = ["answer", "a", "response"];

fn field<'v>(obj: &'v serde_json::Map<String, Value>, names: &[&str]) -> Option<&'v str> {
    names
        .iter()
        .find_map(|n| obj.get(*n).and_then(Value::as_str))
}

/// The bare parse of one file: serde_json into a `Value`, blake3 of every pair.
/// Returns the number of pairs (and folds the keys into `check` so that nothing is
/// optimised away).
fn bare_parse_file(bytes: &[u8], check: &mut u8) -> usize {
    let value: Value = serde_json::from_slice(bytes).expect("the corpus is JSON");
    let mut n = 0;
    let mut pair = |item: &Value| {
        let Some(obj) = item.as_object() else { return };
        let (Some(q), Some(a)) = (field(obj, &QUESTION), field(obj, &ANSWER)) else {
            return;
        };
        let mut h = blake3::Hasher::new();
        h.update(q.as_bytes());
        h.update(b"\n");
        h.update(a.as_bytes());
        *check ^= h.finalize().as_bytes()[0];
        n += 1;
    };
    let nested = |obj: &serde_json::Map<String, Value>, pair: &mut dyn FnMut(&Value)| {
        if let Some(Value::Array(items)) = obj.get("qa_pairs") {
            items.iter().for_each(pair);
        }
    };
    match &value {
        Value::Array(items) => {
            for item in items {
                match item.as_object() {
                    Some(obj) if obj.contains_key("qa_pairs") => nested(obj, &mut pair),
                    _ => pair(item),
                }
            }
        }
        Value::Object(obj) => nested(obj, &mut pair),
        _ => {}
    }
    n
}

/// Waits for the disk to be quiet before a measured stage: everything written is on
/// the disk (`sync`), and 200 ms more for what the kernel does after (discards of
/// deleted files).
fn quiet_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(200));
}

/// Reads every file of the corpus once, untimed, so that each stage that reads it
/// finds it in the page cache: a kernel that reclaims idle page cache (DAMON's
/// `pageout` on the machine of BENCHMARKS.md, sixteenth sitting) otherwise left parts
/// of a 337 MB corpus on disk between one stage and the next, and the stage that
/// found them there paid the reads.
fn warm(files: &[PathBuf]) {
    for f in files {
        std::hint::black_box(std::fs::read(f).unwrap());
    }
}

/// Seconds for the bare parse of every file, and the pairs it found.
fn bare_parse(files: &[PathBuf]) -> (f64, usize) {
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut check = 0u8;
    let mut pairs = 0;
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        pairs += bare_parse_file(&bytes, &mut check);
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(check);
    last_cpu(cpu_seconds() - cpu);
    (seconds, pairs)
}

/// CPU time of this thread (user and system), in seconds: what a stage costs whatever
/// the other processes take of the cores.
fn cpu_seconds() -> f64 {
    perpetual::clock::thread_cpu().as_secs_f64()
}

/// CPU time (user and system) of the children that have exited, in seconds.
fn children_cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage is a valid one to fill.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

thread_local! {
    static LAST_CPU: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// Records (or, with a negative value, reads) the CPU seconds of the last bare stage.
fn last_cpu(set: f64) -> f64 {
    LAST_CPU.with(|c| {
        if set >= 0.0 {
            c.set(set);
        }
        c.get()
    })
}

/// Seconds for the engine's prepare stage on one thread: read, blake3 of the bytes,
/// decode, layout, keys (`ingest::parse_bytes`).
fn prepare_alone(files: &[PathBuf]) -> f64 {
    let start = Instant::now();
    let mut pairs = 0;
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        std::hint::black_box(blake3::hash(&bytes));
        match ingest::parse_bytes(&bytes) {
            Outcome::Parsed(p) => pairs += p.pairs.len(),
            other => panic!("{}: {other:?}", f.display()),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(pairs);
    seconds
}

/// The rows the engine stores for the corpus: its own keys, each distinct pair once.
fn distinct_rows(files: &[PathBuf]) -> Vec<(PairKey, String, String)> {
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        let Outcome::Parsed(p) = ingest::parse_bytes(&bytes) else {
            panic!("{} does not parse", f.display());
        };
        for pair in p.pairs {
            if seen.insert(pair.key) {
                rows.push((pair.key, pair.question, pair.answer));
            }
        }
    }
    rows
}

/// Seconds for the bare insert of `rows` into a fresh database at `db`.
fn bare_insert(db: &Path, rows: &[(PairKey, String, String)]) -> f64 {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let start = Instant::now();
    let cpu = cpu_seconds();
    let conn = rusqlite::Connection::open(db).unwrap();
    // The engine's page size: a limit measured with SQLite's default 4 KiB pages would
    // be slower than the engine's own writer, and flatter its ratio.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {};",
        perpetual::store::PAGE_SIZE
    ))
    .unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE pairs (id INTEGER PRIMARY KEY, key BLOB NOT NULL,
                             question TEXT NOT NULL, answer TEXT NOT NULL);
         BEGIN;",
    )
    .unwrap();
    {
        let mut stmt = conn
            .prepare("INSERT INTO pairs (key, question, answer) VALUES (?1, ?2, ?3)")
            .unwrap();
        for (key, q, a) in rows {
            stmt.execute(rusqlite::params![&key[..], q, a]).unwrap();
        }
    }
    let inserted = start.elapsed();
    conn.execute_batch("COMMIT").unwrap();
    let committed = start.elapsed();
    conn.close().map_err(|(_, e)| e).unwrap();
    if std::env::var_os("E2E_PHASES").is_some() {
        eprintln!(
            "PHASES bare insert: inserts {inserted:?}, commit {:?}, close {:?}",
            committed - inserted,
            start.elapsed() - committed
        );
    }
    last_cpu(cpu_seconds() - cpu);
    start.elapsed().as_secs_f64()
}

/// What `ingest --json` reports, and the wall time from spawn to exit.
struct Ingested {
    wall: f64,
    /// User and system CPU of the process, all threads.
    cpu: f64,
    seconds: f64,
    pairs_new: u64,
    exit: i32,
}

fn ingest_run(root: &Path, args: &[&str]) -> Ingested {
    let start = Instant::now();
    let cpu = children_cpu_seconds();
    let out = Command::new(binary())
        .arg("--root")
        .arg(root)
        .arg("ingest")
        .args(args)
        .arg("--json")
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .output()
        .expect("cannot run perpetual ingest");
    let wall = start.elapsed().as_secs_f64();
    let cpu = children_cpu_seconds() - cpu;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ingest --json printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    Ingested {
        wall,
        cpu,
        seconds: report["seconds"].as_f64().unwrap_or(f64::NAN),
        pairs_new: report["pairs_new"].as_u64().unwrap_or(0),
        exit: out.status.code().unwrap_or(-1),
    }
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

fn corpus(options: &Options, base: &Path, size: usize) {
    let dir = base.join(format!("corpus_{size}"));
    // The folder's name is the agent the pairs are recorded under.
    let drops = dir.join("droid");
    let started = Instant::now();
    generate(&drops, size, options.pairs_per_file, 14);
    let files = list(&drops);
    let rows = distinct_rows(&files);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    println!(
        "\n== {size} pairs: {} files, {:.1} MB, {} distinct pairs (generated and parsed in {:.1} s)",
        files.len(),
        bytes as f64 / 1e6,
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    // Files younger than watch.settle_ms (300 ms) would make ingest wait for stillness.
    std::thread::sleep(Duration::from_millis(400));

    let (mut parse, mut insert, mut wall, mut seconds, mut prepare) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut parse_cpu, mut insert_cpu, mut ingest_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let db = dir.join("bare.db");
    println!("load average at start: {}", loadavg());
    println!(
        "{:>4}  {:>11}  {:>11}  {:>11}  {:>11}  {:>11}  {:>7}  load",
        "run", "bare parse", "bare insert", "ingest", "(its secs)", "prepare", "ratio"
    );
    for run in 1..=options.runs {
        quiet_disk();
        warm(&files);
        let (p, found) = bare_parse(&files);
        assert_eq!(found, size, "the bare parse found every pair");
        parse_cpu.push(last_cpu(-1.0));
        quiet_disk();
        let i = bare_insert(&db, &rows);
        insert_cpu.push(last_cpu(-1.0));
        let root = dir.join(format!("root_{run}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        quiet_disk();
        warm(&files);
        let r = ingest_run(&root, &[drops.to_str().unwrap()]);
        assert_eq!(r.exit, 0, "ingest exited {}", r.exit);
        assert_eq!(
            r.pairs_new,
            rows.len() as u64,
            "ingest stored every distinct pair"
        );
        let _ = std::fs::remove_dir_all(&root);
        ingest_cpu.push(r.cpu);
        warm(&files);
        let pr = prepare_alone(&files);
        println!(
            "{run:>4}  {:>11}  {:>11}  {:>11}  {:>11}  {:>11}  {:>6.0}%  {}",
            ms(p),
            ms(i),
            ms(r.wall),
            ms(r.seconds),
            ms(pr),
            100.0 * p.max(i) / r.wall,
            loadavg()
        );
        parse.push(p);
        insert.push(i);
        wall.push(r.wall);
        seconds.push(r.seconds);
        prepare.push(pr);
    }
    let _ = std::fs::remove_file(&db);
    let (p, i, w, s, pr) = (
        median(&parse),
        median(&insert),
        median(&wall),
        median(&seconds),
        median(&prepare),
    );
    println!(
        "median  bare parse {}  bare insert {}  ingest {} (its own seconds {}, outside them {})  prepare alone {}",
        ms(p),
        ms(i),
        ms(w),
        ms(s),
        ms(w - s),
        ms(pr)
    );
    println!(
        "RATIO {size} pairs: max(bare parse, bare insert) / ingest = {} / {} = {:.0}%  (ingest {:.0} pairs/s; load average at end: {})",
        ms(p.max(i)),
        ms(w),
        100.0 * p.max(i) / w,
        size as f64 / w,
        loadavg()
    );
    // On a machine whose cores other sessions keep busy, the kernel shares CPU time
    // between sessions (autogroup), not threads: a two-thread pipeline then gets no more
    // CPU than a one-thread bare stage and its wall clock follows its total CPU time.
    // These figures do not depend on the load.
    let (pc, ic, gc) = (median(&parse_cpu), median(&insert_cpu), median(&ingest_cpu));
    println!(
        "CPU {size} pairs: bare parse {}  bare insert {}  ingest {} (all threads, spawn to exit); (bare parse + bare insert) / ingest = {:.0}%",
        ms(pc),
        ms(ic),
        ms(gc),
        100.0 * (pc + ic) / gc
    );
}

/// `perpetual ingest` with nothing to do, and with one small file, on a root whose
/// database exists (the usual case: an agent's drop, a cron job).
fn outside_the_work(options: &Options, base: &Path) {
    let root = base.join("small_root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let status = Command::new(binary())
        .arg("--root")
        .arg(&root)
        .arg("init")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let inbox = root.join("inbox").join("droid");
    println!(
        "\n== time outside the work: {} runs each (load average at start: {})",
        options.small_runs,
        loadavg()
    );
    let mut empty = Vec::new();
    let mut one = Vec::new();
    for run in 0..options.small_runs {
        let r = ingest_run(&root, &[]);
        assert_eq!(r.exit, 0);
        empty.push(r.wall);
        // One pair, written under a temporary name and renamed, like an agent does; its
        // modification time set back so that ingest does not wait for a writer.
        let text = format!(
            "[{{\"question\": \"What is small file {run}?\", \"answer\": \"The start-up and shutdown cost of one drop, run {run}.\"}}]\n"
        );
        let tmp = inbox.join(format!(".small_{run}.json.tmp"));
        std::fs::write(&tmp, text).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::rename(&tmp, inbox.join(format!("small_{run}.json"))).unwrap();
        let r = ingest_run(&root, &[]);
        assert_eq!((r.exit, r.pairs_new), (0, 1), "the small file integrated");
        one.push(r.wall);
    }
    println!(
        "SMALL empty inbox: median {} (min {}, max {})",
        ms(median(&empty)),
        ms(empty.iter().copied().fold(f64::MAX, f64::min)),
        ms(empty.iter().copied().fold(0.0, f64::max))
    );
    println!(
        "SMALL one small file: median {} (min {}, max {}); load average at end: {}",
        ms(median(&one)),
        ms(one.iter().copied().fold(f64::MAX, f64::min)),
        ms(one.iter().copied().fold(0.0, f64::max)),
        loadavg()
    );
}

fn main() {
    let options = options();
    let base = tempfile::Builder::new()
        .prefix("perpetual-e2e-")
        .tempdir_in(std::env::var_os("E2E_DIR").map_or_else(std::env::temp_dir, PathBuf::from))
        .unwrap();
    println!(
        "perpetual e2e: {} ({} cores); runs {}, median reported",
        binary(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        options.runs
    );
    for &size in &options.sizes {
        corpus(&options, base.path(), size);
        let _ = std::fs::remove_dir_all(base.path().join(format!("corpus_{size}")));
    }
    if options.small_runs > 0 {
        outside_the_work(&options, base.path());
    }
}
