//! The integration-test harness: runs the real `perpetual` binary in a fresh temporary
//! root. When an assertion fails it prints the command, the root's file listing, stdout
//! and stderr, so nobody needs to re-run a test to see why.

#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that should take milliseconds: generous, because
/// the machine may be busy. Reaching it is a failure, not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A git command in `dir` with no global or system configuration (a fresh machine's
/// git, whatever this one's configuration); fails the test when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary root and the binary to drive.
pub struct Env {
    pub dir: tempfile::TempDir,
}

/// The outcome of one command.
pub struct Run {
    /// Extra environment, `K=V` each.
    pub env: Vec<String>,
    pub args: Vec<String>,
    pub output: Output,
    pub listing: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Everything a person would want to see when a test fails.
    pub fn explain(&self) -> String {
        format!(
            "command: {}perpetual {}\nstatus: {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- files\n{}",
            self.env.iter().map(|e| format!("{e} ")).collect::<String>(),
            self.args.join(" "),
            self.output.status,
            self.stdout(),
            self.stderr(),
            self.listing
        )
    }
    /// Asserts the exit status.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit status\n{}",
            self.explain()
        );
        self
    }
    /// Parses stdout as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout().trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.explain()))
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A `perpetual` command with this root, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        self.wrapped_command(&[], args)
    }

    /// `perpetual ARGS` started through `wrapper` (a program and its arguments, e.g.
    /// `setpriv ...`; none for the binary itself), with this root, not yet run.
    pub fn wrapped_command(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_perpetual"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_perpetual")),
        };
        cmd.args(args)
            .env("PERPETUAL_ROOT", self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("PERPETUAL_NOW")
            .env_remove("PERPETUAL_SESSION")
            .env_remove("PERPETUAL_AGENT")
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `perpetual ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// Runs a prepared command to completion (`args` are for failure messages).
    pub fn run_command(&self, mut cmd: Command, args: &[&str]) -> Run {
        let output = cmd.output().expect("run perpetual");
        Run {
            env: Vec::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            output,
            listing: self.listing(),
        }
    }

    /// Runs `perpetual ARGS` with extra environment variables (e.g. `PERPETUAL_NOW`).
    pub fn run_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let output = cmd.output().expect("run perpetual");
        Run {
            env: envs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            output,
            listing: self.listing(),
        }
    }

    /// Runs `perpetual ARGS` as if it were `now` (`PERPETUAL_NOW`).
    pub fn run_at(&self, now: &str, args: &[&str]) -> Run {
        self.run_with(args, &[("PERPETUAL_NOW", now)])
    }

    /// Writes a file (creating folders), relative to the root.
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Drops a file into inbox/<agent>/ the documented way: temporary name, then rename.
    pub fn drop_file(&self, agent: &str, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let tmp = self.write(&format!("inbox/{agent}/.{name}.tmp"), bytes);
        let dest = self.path(&format!("inbox/{agent}/{name}"));
        std::fs::rename(tmp, &dest).unwrap();
        dest
    }

    /// Names of the regular files directly inside `rel`, sorted.
    pub fn files_in(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A read-only look at the database, as any SQLite client would have.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.path("perpetual.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open perpetual.db")
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// `task show ID --json`.
    pub fn task_json(&self, id: &str) -> serde_json::Value {
        self.run(&["task", "show", id, "--json"]).expect(0).json()
    }

    /// `session list --json`, oldest first.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let mut list = self
            .run(&["session", "list", "--json"])
            .expect(0)
            .json()
            .as_array()
            .expect("session list --json is an array")
            .clone();
        list.reverse();
        list
    }

    /// Like [`Env::count`], but `None` while the database is missing or busy, for
    /// polling while a writer runs.
    pub fn try_count(&self, sql: &str) -> Option<i64> {
        let db = rusqlite::Connection::open_with_flags(
            self.path("perpetual.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        db.query_row(sql, [], |r| r.get(0)).ok()
    }

    /// Starts `perpetual ARGS` in the background (a watcher); its stderr is collected as
    /// it comes. The process is killed when the handle is dropped.
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_command(self.command(args), args)
    }

    /// [`Env::spawn`] with extra environment variables (e.g. `PERPETUAL_NOW`).
    pub fn spawn_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Running {
        let mut command = self.command(args);
        for (k, v) in envs {
            command.env(k, v);
        }
        self.spawn_command(command, args)
    }

    /// [`Env::spawn`] of a prepared command (`args` are for failure messages).
    pub fn spawn_command(&self, mut cmd: Command, args: &[&str]) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn perpetual");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            stderr,
            reader: Some(reader),
            root: self.root().to_path_buf(),
            status: None,
        }
    }

    /// Every path under the root, for failure messages.
    pub fn listing(&self) -> String {
        let mut out = Vec::new();
        list(self.dir.path(), self.dir.path(), &mut out);
        out.sort();
        out.join("\n")
    }
}

/// A `perpetual` process running in the background.
pub struct Running {
    pub args: Vec<String>,
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    root: PathBuf,
    status: Option<ExitStatus>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything a person would want to see when a test fails.
    pub fn explain(&self) -> String {
        let mut listing = Vec::new();
        list(&self.root, &self.root, &mut listing);
        listing.sort();
        format!(
            "command: perpetual {} (pid {})\nstatus: {:?}\n--- stderr\n{}\n--- files\n{}",
            self.args.join(" "),
            self.child.id(),
            self.status,
            self.stderr(),
            listing.join("\n")
        )
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.stderr().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                panic!("exited before logging {needle:?}\n{}", self.explain());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in stderr after {PATIENCE:?}\n{}",
                self.explain()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal (SIGTERM, SIGINT...).
    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().unwrap());
        }
    }

    /// Waits for the process to exit (at most `timeout`) and returns how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "still running {timeout:?} later\n{}",
                self.explain()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGTERM, then asserts a prompt exit with status 0.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let (status, _) = self.wait_exit(PATIENCE);
        assert_eq!(status.code(), Some(0), "exit status\n{}", self.explain());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` until it holds, failing with `explain()` after [`PATIENCE`]. Tests wait
/// for conditions, never for fixed times.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}\n{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn list(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let rel = format!("{:?}", p.strip_prefix(base).unwrap());
        // Never following links: a hostile test's link may point anywhere.
        let kind = e.file_type().ok();
        if kind.is_some_and(|k| k.is_dir()) {
            out.push(format!("{rel}/"));
            list(base, &p, out);
        } else if kind.is_some_and(|k| k.is_symlink()) {
            let target = std::fs::read_link(&p).unwrap_or_default();
            out.push(format!("{rel} -> {target:?}"));
        } else {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(format!("{rel} ({size} bytes)"));
        }
    }
}

/// The number of distinct pairs in a set of generated files, computed the way the
/// specification defines a pair's identity.
pub fn distinct_pairs(files: &[perpetual::generate::GeneratedFile]) -> usize {
    let mut keys = std::collections::HashSet::new();
    for f in files {
        for qa in &f.distinct_keys {
            let (q, a) = qa.split_once('\n').expect("question\\nanswer");
            keys.insert(perpetual::pair::pair_key(q, a));
        }
    }
    keys.len()
}

/// After any number of runs, crashed or not: every stored pair's key is either merged
/// (in exactly one entry of the sorted runs, or of `pair_keys`) or in exactly one entry
/// of the key tail (`store::pairs`), never both, and nothing else is in any of them. The tail's
/// blobs are read by SQL alone, so this does not trust the code it checks.
pub fn assert_keys_exact(env: &Env, want: i64) {
    // Each run is a table of its own, listed in pair_key_runs.
    let runs: Vec<i64> = {
        let db = env.db();
        let mut stmt = db.prepare("SELECT run FROM pair_key_runs").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let rows = runs
        .iter()
        .map(|run| format!("SELECT entries FROM pair_key_run_{run}"))
        .chain(["SELECT x'' WHERE 0".to_string()])
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let tail = format!(
        "WITH RECURSIVE e(chunk, i) AS (
            SELECT entries, 0 FROM tail_chunks WHERE length(entries) > 0
            UNION ALL SELECT chunk, i + 40 FROM e WHERE i + 40 < length(chunk)),
        tail(pair_id, key) AS (SELECT i, substr(chunk, i + 9, 32) FROM e),
        rows(entries) AS ({rows}),
        r(chunk, i) AS (
            SELECT entries, 0 FROM rows
            UNION ALL SELECT chunk, i + 40 FROM r WHERE i + 40 < length(chunk)),
        merged(key) AS (SELECT key FROM pair_keys UNION ALL SELECT substr(chunk, i + 9, 32) FROM r)"
    );
    let count = |q: &str| env.count(&format!("{tail} {q}"));
    assert_eq!(
        count("SELECT (SELECT COUNT(*) FROM merged) + (SELECT COUNT(*) FROM tail)"),
        want,
        "as many keys merged and in the tail as pairs"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM (SELECT key FROM merged GROUP BY key HAVING COUNT(*) > 1)"),
        0,
        "no key in the index and a run, or in two runs"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM tail JOIN merged USING (key)"),
        0,
        "no key both in the tail and merged"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM pairs WHERE key NOT IN (SELECT key FROM merged)
             AND key NOT IN (SELECT key FROM tail)"
        ),
        0,
        "every stored pair's key merged or in the tail"
    );
}

/// After a crash and a restart: every generated file has exactly one ledger row, integrated,
/// and the ledger's per-file counts add up to `want` distinct pairs.
pub fn assert_ledger_exact(env: &Env, files: &[perpetual::generate::GeneratedFile], want: i64) {
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE status = 'integrated'"),
        files.len() as i64
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files"),
        files.len() as i64,
        "no file counted twice"
    );
    // The ledger's per-file counts add up to the table.
    assert_eq!(env.count("SELECT SUM(pairs_new) FROM files"), want);
    assert_eq!(
        env.count("SELECT SUM(pairs_new + pairs_duplicate + pairs_invalid) FROM files"),
        files.iter().map(|f| f.pairs as i64).sum::<i64>()
    );
}

/// A process started for a session of some root, as `/proc` shows it (never the
/// database): the session's command and everything it started inherit these variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionProcess {
    pub pid: i32,
    pub agent: String,
    pub session: String,
}

/// The live processes (zombies excluded: their environment is gone) whose environment
/// has `PERPETUAL_ROOT=root` and a `PERPETUAL_SESSION`, read from `/proc`.
pub fn session_processes(root: &Path) -> Vec<SessionProcess> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let want = root.display().to_string();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let (mut r, mut a, mut s) = (None, None, None);
        for var in bytes.split(|&b| b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(v) = var.strip_prefix("PERPETUAL_ROOT=") {
                r = Some(v.to_string());
            } else if let Some(v) = var.strip_prefix("PERPETUAL_AGENT=") {
                a = Some(v.to_string());
            } else if let Some(v) = var.strip_prefix("PERPETUAL_SESSION=") {
                s = Some(v.to_string());
            }
        }
        if let (Some(r), Some(agent), Some(session)) = (r, a, s)
            && r == want
        {
            out.push(SessionProcess {
                pid,
                agent,
                session,
            });
        }
    }
    out
}

/// Kills every process [`session_processes`] finds for the root when dropped, so a
/// failing test does not leave agents (and their children) running.
pub struct KillLeftovers(pub PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for p in session_processes(&self.0) {
            unsafe {
                libc::kill(p.pid, libc::SIGKILL);
            }
        }
    }
}

/// Samples [`session_processes`] every 20 ms on a thread until [`Sampler::finish`]:
/// the most sessions with a live process each agent ever had at once.
pub struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<std::collections::BTreeMap<String, usize>>>,
}

impl Sampler {
    pub fn start(root: &Path) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let root = root.to_path_buf();
        let handle = std::thread::spawn(move || {
            let mut most: std::collections::BTreeMap<String, usize> = Default::default();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let mut now: std::collections::BTreeMap<
                    String,
                    std::collections::BTreeSet<String>,
                > = Default::default();
                for p in session_processes(&root) {
                    now.entry(p.agent).or_default().insert(p.session);
                }
                for (agent, sessions) in now {
                    let m = most.entry(agent).or_default();
                    *m = (*m).max(sessions.len());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; the most sessions with live processes seen at once, by agent.
    pub fn finish(mut self) -> std::collections::BTreeMap<String, usize> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Env {
    /// Runs `perpetual ARGS` but gives up after `timeout`: the process is killed and the
    /// test fails with everything it printed so far (a hang is a failure, not a wait).
    pub fn run_within(&self, timeout: Duration, args: &[&str]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn perpetual");
        let start = Instant::now();
        let killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                break true;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let output = child.wait_with_output().expect("wait for perpetual");
        let run = Run {
            env: Vec::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            output,
            listing: self.listing(),
        };
        assert!(
            !killed,
            "still running after {timeout:?}, killed\n{}",
            run.explain()
        );
        run
    }

    /// The ledger as `perpetual files --json` shows it.
    pub fn ledger(&self) -> Vec<serde_json::Value> {
        let run = self.run(&["files", "--json"]).expect(0);
        run.json().as_array().cloned().unwrap_or_default()
    }

    /// The ledger rows whose name is `name`.
    pub fn ledger_of(&self, name: &str) -> Vec<serde_json::Value> {
        self.ledger()
            .into_iter()
            .filter(|r| r["name"] == name)
            .collect()
    }
}
