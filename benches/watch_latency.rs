//! Drop-to-queryable latency and burst throughput of `perpetual watch`, end to end.
//!
//! Starts the real binary (built with the bench profile, i.e. release) on a temporary
//! root, then:
//! 1. latency: drops `--drops` single-pair files one at a time, each written as
//!    `.name.tmp` and renamed into `inbox/droid/`, and polls the database read-only (as
//!    any SQLite client would) until that pair is in `pairs`. The clock starts just
//!    before the rename. Prints p50/p90/p99/max.
//! 2. burst: writes `--burst` files of `--burst-pairs` pairs under temporary names, renames
//!    them all into place as fast as possible, and times until every pair is queryable:
//!    files/s and pairs/s.
//! 3. shutdown: SIGTERM, and the time until the process has exited.
//! 4. burst against one-shot, in one sitting: `--runs` times, alternately, the same burst
//!    files renamed into a fresh watcher's inbox (timed from the first rename to the last
//!    pair queryable) and `perpetual ingest --now` of the same files waiting in a fresh
//!    root's inbox (timed from spawn to exit, and its own `seconds`). Prints the medians
//!    and the watcher's rate as a share of the one-shot's.
//!
//! Run: `cargo bench --bench watch_latency [-- --drops 300 --burst 1000 --burst-pairs 20 --runs 5]`.
//! Figures and method: BENCHMARKS.md, "Watcher".

use perpetual::generate::{self, GenConfig};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `cargo bench --bench watch_latency -- [OPTIONS]`.
#[derive(clap::Parser)]
struct Options {
    /// Single drops timed one at a time.
    #[arg(long, default_value_t = 300)]
    drops: usize,
    /// Files in the burst.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Pairs in each file of the burst.
    #[arg(long, default_value_t = 20)]
    burst_pairs: usize,
    /// Runs of the burst, alternating the watcher and the one-shot ingest.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Microseconds between two polls of the database while a burst drains. Each poll
    /// is a read transaction and a `COUNT(*)`, on the same two cores as the watcher;
    /// the lone drops are polled every 100 µs.
    #[arg(long, default_value_t = 1000)]
    burst_poll_us: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn options() -> Options {
    clap::Parser::parse()
}

/// The watcher, and its stderr lines as they come.
fn start(root: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_perpetual"))
        .args(["--root", root.to_str().unwrap(), "watch"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start perpetual watch");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the watcher did not start");
        if line.contains("watching") {
            break;
        }
    }
    (child, rx)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wait_for<T>(what: &str, poll: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(poll);
    }
}

fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut child, _logs) = start(root);
    let inbox = root.join("inbox/droid");
    let db = rusqlite::Connection::open_with_flags(
        root.join("perpetual.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut present = db.prepare("SELECT 1 FROM pairs WHERE key = ?1").unwrap();
    let nonce = std::process::id();

    // 1. Latency of lone drops.
    let mut latencies = Vec::with_capacity(o.drops);
    for i in 0..o.drops {
        let question = format!("Latency probe {nonce}-{i}: what does the watcher do?");
        let answer = format!("It integrates drop {i} within milliseconds.");
        let key = perpetual::pair::pair_key(&question, &answer);
        let body = serde_json::json!([{ "question": question, "answer": answer }]).to_string();
        let tmp = inbox.join(format!(".probe_{i}.json.tmp"));
        std::fs::write(&tmp, body).unwrap();
        let start = Instant::now();
        std::fs::rename(&tmp, inbox.join(format!("probe_{i}.json"))).unwrap();
        wait_for("a probe pair", Duration::from_micros(100), || {
            present.exists([&key[..]]).ok().filter(|&found| found)
        });
        latencies.push(start.elapsed());
        // Let the watcher go idle again, so that every drop arrives alone.
        std::thread::sleep(Duration::from_millis(5));
    }
    latencies.sort();

    // 2. A burst of files renamed into place at once.
    let files = generate::generate(&GenConfig {
        seed: u64::from(nonce),
        files: o.burst,
        pairs_per_file: o.burst_pairs,
        duplicate_ratio: 0.0,
        layouts: vec![],
        encodings: vec![],
        bad_files: 0,
        session_start: None,
        ..GenConfig::default()
    });
    let mut keys = std::collections::HashSet::new();
    for f in &files {
        for qa in &f.distinct_keys {
            let (q, a) = qa.split_once('\n').unwrap();
            keys.insert(perpetual::pair::pair_key(q, a));
        }
    }
    let count = |db: &rusqlite::Connection| -> i64 {
        db.query_row("SELECT COUNT(*) FROM pairs", [], |r| r.get(0))
            .unwrap_or(0)
    };
    let before = count(&db);
    let target = before + keys.len() as i64;
    let poll = Duration::from_micros(o.burst_poll_us);
    let (renamed, burst) = burst_into(&inbox, &files, poll, || count(&db) >= target);
    assert_eq!(count(&db), target, "exactly the burst's distinct pairs");

    // 3. Shutdown.
    let asked = Instant::now();
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let shutdown = asked.elapsed();
    assert!(status.success(), "watch exited with {status}");

    println!(
        "perpetual watch, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "drop-to-queryable latency, {} lone single-pair drops (rename into inbox/ -> pair readable):",
        latencies.len()
    );
    println!(
        "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "burst: {} files ({} pairs, {} distinct; the generator's layout mix, up to {} a file) renamed in {:.1} ms, all queryable after {:.0} ms",
        files.len(),
        files.iter().map(|f| f.pairs).sum::<usize>(),
        keys.len(),
        o.burst_pairs,
        ms(renamed),
        ms(burst)
    );
    println!(
        "  {:.0} files/s, {:.0} pairs/s",
        files.len() as f64 / burst.as_secs_f64(),
        keys.len() as f64 / burst.as_secs_f64()
    );
    println!("shutdown: SIGTERM -> exit 0 in {:.1} ms", ms(shutdown));

    // 4. The same burst into fresh watchers against one-shot ingests, alternately.
    let distinct = keys.len() as i64;
    let (mut watched, mut oneshot_wall, mut oneshot_secs) = (vec![], vec![], vec![]);
    for run in 1..=o.runs {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, _logs) = start(dir.path());
        let db = rusqlite::Connection::open_with_flags(
            dir.path().join("perpetual.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let (_, took) = burst_into(&dir.path().join("inbox/droid"), &files, poll, || {
            count(&db) >= distinct
        });
        assert_eq!(count(&db), distinct);
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
        watched.push(ms(took));

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let init = Command::new(env!("CARGO_BIN_EXE_perpetual"))
            .args(["--root", root, "init"])
            .output()
            .unwrap();
        assert!(init.status.success());
        for f in &files {
            std::fs::write(dir.path().join("inbox/droid").join(&f.name), &f.bytes).unwrap();
        }
        let spawned = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_perpetual"))
            .args(["--root", root, "ingest", "--now", "--json"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let wall = spawned.elapsed();
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["pairs_new"].as_i64(), Some(distinct));
        oneshot_wall.push(ms(wall));
        oneshot_secs.push(report["seconds"].as_f64().unwrap() * 1000.0);
        println!(
            "  run {run}: watcher burst {:.0} ms, one-shot ingest {:.0} ms wall ({:.0} ms its own seconds); load {}",
            watched[run - 1],
            oneshot_wall[run - 1],
            oneshot_secs[run - 1],
            loadavg()
        );
    }
    let (w, ow, os) = (
        median(&mut watched),
        median(&mut oneshot_wall),
        median(&mut oneshot_secs),
    );
    println!(
        "BURST {} files, {distinct} distinct pairs, medians of {} runs: watcher {w:.0} ms, one-shot {ow:.0} ms wall ({os:.0} ms its own seconds); watcher rate / one-shot rate = {:.0}% against the wall clock, {:.0}% against its own seconds (target 90%)",
        files.len(),
        o.runs,
        100.0 * ow / w,
        100.0 * os / w
    );
}

/// Writes `files` under temporary names in `inbox`, renames them all into place, and
/// waits until `done`, asked every `poll`: (time to rename them all, time until done),
/// both from the first rename.
fn burst_into(
    inbox: &Path,
    files: &[generate::GeneratedFile],
    poll: Duration,
    mut done: impl FnMut() -> bool,
) -> (Duration, Duration) {
    let staged: Vec<_> = files
        .iter()
        .map(|f| {
            let tmp = inbox.join(format!(".{}.tmp", f.name));
            std::fs::write(&tmp, &f.bytes).unwrap();
            (tmp, inbox.join(&f.name))
        })
        .collect();
    let start = Instant::now();
    for (tmp, dest) in &staged {
        std::fs::rename(tmp, dest).unwrap();
    }
    let renamed = start.elapsed();
    wait_for("the burst", poll, || done().then_some(()));
    (renamed, start.elapsed())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
