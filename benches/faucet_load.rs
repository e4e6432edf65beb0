//! The web faucet under load while the watcher ingests a burst: requests per second for
//! `/api/status` with 50 concurrent clients (wrk, from Debian's packages), and the
//! burst's pairs per second with and without the server.
//!
//! Starts the real binary (bench profile, i.e. release) on a temporary root holding
//! `--base` generated pairs and the seeds' task plan, runs `perpetual watch`, then, for
//! each of `--rounds` rounds:
//! 1. without the server: `--files` generated files of `--pairs` pairs (all new) renamed
//!    into `inbox/droid/` at once, timed until every pair is queryable (each burst starts
//!    from an empty WAL);
//! 2. with `perpetual serve` running and `wrk -t2 -c50` asking `/api/status` from a
//!    second before the burst until the burst is queryable (wrk is stopped then, so its
//!    requests/s cover exactly the burst): the same burst with new pairs.
//!
//! First, for scale, the same clients for 5 s while the watcher is idle. The load average
//! is printed before each run. Run:
//! `cargo bench --bench faucet_load [-- --rounds 2 --files 2000 --pairs 50 --base 50000]`.
//! Figures and method: BENCHMARKS.md, "Web faucet under load".

use perpetual::generate::{self, GenConfig};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `cargo bench --bench faucet_load -- [OPTIONS]`.
#[derive(clap::Parser)]
struct Options {
    /// Rounds of the burst with clients reading.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Files in each burst.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Pairs in each file of a burst.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Pairs stored before the first round.
    #[arg(long, default_value_t = 50_000)]
    base: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn options() -> Options {
    clap::Parser::parse()
}

fn perpetual(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perpetual"));
    c.arg("--root").arg(root).env_remove("RUST_LOG");
    c
}

/// Starts a long-running command and waits for a line of its stderr holding `ready`;
/// returns that line.
fn start(mut command: Command, ready: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start perpetual");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {ready:?} from perpetual");
        };
        if line.contains(ready) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, line);
        }
    }
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "perpetual exited with {status}");
}

/// CPU seconds a process has used so far (user + system, all its threads).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Files of all-new pairs written under temporary names, ready to be renamed in.
fn stage(inbox: &Path, seed: u64, o: &Options) -> (Vec<(PathBuf, PathBuf)>, usize) {
    let files = generate::generate(&GenConfig {
        seed,
        files: o.files,
        pairs_per_file: o.pairs,
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
    let staged = files
        .iter()
        .map(|f| {
            let tmp = inbox.join(format!(".s{seed}_{}.tmp", f.name));
            std::fs::write(&tmp, &f.bytes).unwrap();
            (tmp, inbox.join(format!("s{seed}_{}", f.name)))
        })
        .collect();
    (staged, keys.len())
}

fn count(db: &rusqlite::Connection) -> i64 {
    db.query_row("SELECT COUNT(*) FROM pairs", [], |r| r.get(0))
        .unwrap_or(0)
}

/// Renames the staged files in and waits until `expect` more pairs are queryable;
/// returns the time from the first rename and the largest size the WAL reached.
fn burst(
    db: &rusqlite::Connection,
    staged: &[(PathBuf, PathBuf)],
    expect: usize,
) -> (Duration, u64) {
    // Every burst starts from an empty WAL, so that no burst pays for the checkpoint of
    // the one before it (SQLite checkpoints every 64 MiB, whichever burst crosses it).
    let path = db.path().unwrap().to_string();
    let rw = rusqlite::Connection::open(&path).unwrap();
    rw.busy_timeout(Duration::from_secs(60)).unwrap();
    rw.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(rw);
    let target = count(db) + expect as i64;
    let start = Instant::now();
    for (tmp, dest) in staged {
        std::fs::rename(tmp, dest).unwrap();
    }
    let deadline = start + Duration::from_secs(600);
    let wal = PathBuf::from(format!("{path}-wal"));
    let mut wal_max = 0;
    while count(db) < target {
        assert!(Instant::now() < deadline, "the burst never finished");
        wal_max = wal_max.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(count(db), target, "exactly the burst's pairs");
    (start.elapsed(), wal_max)
}

fn main() {
    let o = options();
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("faucet_load needs wrk (apt-get install wrk); nothing measured");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The base: the seeds' plan and `--base` pairs, so /api/status has work to do.
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plan.toml");
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(perpetual(root).args(["task", "import"]).arg(&plan));
    let base_files = o.base.div_ceil(100).to_string();
    ok(perpetual(root).args([
        "generate",
        "--files",
        &base_files,
        "--pairs",
        "100",
        "--seed",
        "999",
    ]));
    ok(perpetual(root).arg("ingest").stdout(Stdio::null()));

    let (watch, _) = start(
        {
            let mut c = perpetual(root);
            c.arg("watch");
            c
        },
        "watching",
    );
    let inbox = root.join("inbox/droid");
    let db = rusqlite::Connection::open_with_flags(
        root.join("perpetual.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    println!(
        "faucet under load: {} cores; base {} pairs; bursts of {} files x {} pairs; {} clients on /api/status",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        count(&db),
        o.files,
        o.pairs,
        o.clients
    );
    // For scale: the same clients while the watcher is idle.
    {
        let (server, line) = start(
            {
                let mut c = perpetual(root);
                c.args(["serve", "--addr", "127.0.0.1:0"]);
                c
            },
            "serving the faucet on http://",
        );
        let at = line.find("http://").unwrap();
        let url = format!(
            "{}api/status",
            &line[at..at + line[at..].find(' ').unwrap()]
        );
        let load = loadavg();
        let cpu = cpu_secs(server.id());
        let out = Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{}", o.clients),
                "-d5s",
                "--latency",
                "--timeout",
                "30s",
            ])
            .arg(&url)
            .output()
            .expect("run wrk");
        let serve_cpu = cpu_secs(server.id()) - cpu;
        stop(server);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        println!(
            "watcher idle, 5 s: /api/status: {}; latency {}; {}; serve used {serve_cpu:.2} CPU-s; load {load}",
            line_of(&report, "Requests/sec:"),
            line_of(&report, "50%"),
            line_of(&report, "99%"),
        );
    }
    let mut seed = 1;
    for round in 1..=o.rounds {
        // Without the server.
        let (staged, expect) = stage(&inbox, seed, &o);
        seed += 1;
        let load = loadavg();
        let watch_cpu = cpu_secs(watch.id());
        let (took, wal) = burst(&db, &staged, expect);
        println!(
            "round {round} without server: {:.0} pairs/s ({expect} pairs in {:.2} s; watch used {:.2} CPU-s; WAL up to {} MiB), load {load}",
            expect as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            cpu_secs(watch.id()) - watch_cpu,
            wal >> 20
        );

        // With the server and 50 clients.
        let (staged, expect) = stage(&inbox, seed, &o);
        seed += 1;
        let (server, line) = start(
            {
                let mut c = perpetual(root);
                c.args(["serve", "--addr", "127.0.0.1:0"]);
                c
            },
            "serving the faucet on http://",
        );
        let at = line.find("http://").unwrap();
        let url = format!(
            "{}api/status",
            &line[at..at + line[at..].find(' ').unwrap()]
        );
        let load = loadavg();
        let mut wrk = Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{}", o.clients),
                "-d600s",
                "--latency",
                "--timeout",
                "30s",
            ])
            .arg(&url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wrk");
        std::thread::sleep(Duration::from_secs(1));
        let cpu = [watch.id(), server.id(), wrk.id()].map(cpu_secs);
        let (took, wal) = burst(&db, &staged, expect);
        let used = [watch.id(), server.id(), wrk.id()].map(cpu_secs);
        // SIGINT: wrk stops and prints its summary of exactly this window.
        unsafe { libc::kill(wrk.id() as libc::pid_t, libc::SIGINT) };
        let mut report = String::new();
        wrk.stdout
            .take()
            .unwrap()
            .read_to_string(&mut report)
            .unwrap();
        wrk.wait().unwrap();
        stop(server);
        let line_of = |key: &str| line_of(&report, key);
        println!(
            "round {round} with server:    {:.0} pairs/s ({expect} pairs in {:.2} s; CPU-s: watch {:.2}, serve {:.2}, wrk {:.2}; WAL up to {} MiB), load {load}",
            expect as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            used[0] - cpu[0],
            used[1] - cpu[1],
            used[2] - cpu[2],
            wal >> 20
        );
        println!(
            "  /api/status: {}; latency {}; {}; {}",
            line_of("Requests/sec:"),
            line_of("50%"),
            line_of("99%"),
            line_of("Non-2xx").if_empty("all 2xx")
        );
    }
    stop(watch);
}

/// The line of wrk's report that starts with `key`, spaces squeezed.
fn line_of(report: &str, key: &str) -> String {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

trait IfEmpty {
    fn if_empty(self, other: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, other: &str) -> String {
        if self.is_empty() {
            other.to_string()
        } else {
            self
        }
    }
}
