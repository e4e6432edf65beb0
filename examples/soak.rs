//! The soak harness: `perpetual run` unattended, with misbehaving agents and a loop
//! that keeps getting killed, checked from the outside.
//!
//! ```sh
//! cargo build && cargo run --example soak -- --seconds 180          # what .ci/run does
//! nohup cargo run --release --example soak -- --seconds 7200 > soak.log 2>&1 &
//! ```
//!
//! It makes a root in a git repository with six scripted agents (tests/fixtures/agents/)
//! at once: `well` (well-behaved, two slots) and `twin` (well-behaved) wrapping at the
//! same moments (every 5 s on the wall clock), `linger` (lingers after its wrap),
//! `ignore` (ignores the wrap request and SIGTERM: only SIGKILL ends it), `crash`
//! (dies of SIGSEGV: backoff, then the breaker and its trial sessions), and `spawn`
//! (leaves children behind, with and without `setsid`). Templates keep every queue
//! full; the well-behaved agents drop files into their inbox. Then it runs `perpetual
//! run` for the given duration, kills it at random moments (SIGKILL, or two SIGTERMs)
//! and starts it again, and samples the process table every 100 ms, reading `/proc`
//! itself (never the database) for processes whose environment names a session of
//! this root.
//!
//! It prints, and asserts:
//! - the most sessions with a live process per agent ever seen (≤ its slots);
//! - orphans: processes of a session whose command exited more than `term_secs` + 3 s
//!   earlier while a loop was running, at any time and at each restart (0), and any
//!   process of the root left after the final stop (0), found by its environment and,
//!   needing none, by descent from the harness (a subreaper itself, so nothing any loop
//!   started can leave its tree);
//! - the most processes (not only sessions) per agent and per session at once;
//! - sessions without a handoff (0), wrap steps failed (the commit or any other) and files
//!   left staged (0), sessions started on complete tasks (0), sessions still active after
//!   the stop (0);
//! - disk used by `backups/` and `.perpetual/` (bounded by their configured counts);
//! - the loop's CPU time per idle round at the start and at the end, and its CPU share.
//!
//! Exit status 0 when every assertion holds, 1 otherwise. `--keep` keeps the root
//! (printed) for a look afterwards.

use rusqlite::{Connection, OpenFlags};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const TERM_SECS: u64 = 2;
const GRACE_SECS: u64 = 3;
const BACKUPS_KEPT: u64 = 5;
const LOGS_KEPT: u64 = 40;
/// How long a wrap's git may run before the soak calls it stuck.
const GIT_LIMIT: Duration = Duration::from_secs(120);

/// `cargo run --example soak -- [OPTIONS]`.
#[derive(clap::Parser)]
struct Args {
    /// How long the loop runs.
    #[arg(long, default_value_t = 180, conflicts_with = "minutes")]
    seconds: u64,
    /// The same in minutes.
    #[arg(long)]
    minutes: Option<u64>,
    /// The `perpetual` binary (default: the one beside this example's folder).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The root to run in (default: a temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds between two kills of the loop, drawn at random: MIN-MAX.
    #[arg(long, default_value = "20-50", value_parser = seconds_range)]
    kill_every: (u64, u64),
    /// Seed of the random draws (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the root afterwards.
    #[arg(long)]
    keep: bool,
}

fn seconds_range(v: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = v.split_once('-').ok_or("expected MIN-MAX, e.g. 20-50")?;
    let (lo, hi): (u64, u64) = (
        lo.parse().map_err(|e| format!("{lo}: {e}"))?,
        hi.parse().map_err(|e| format!("{hi}: {e}"))?,
    );
    if lo > hi {
        return Err(format!("{lo} is more than {hi}"));
    }
    Ok((lo, hi))
}

fn args() -> Args {
    let mut a: Args = clap::Parser::parse();
    if let Some(m) = a.minutes {
        a.seconds = 60 * m;
    }
    a
}

/// The `perpetual` binary beside this example's folder: target/<profile>/examples/soak
/// -> target/<profile>/perpetual.
fn default_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("perpetual"))
        .unwrap_or_else(|| PathBuf::from("perpetual"))
}

fn agents_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents")
}

/// (agent, script, environment, slots)
fn agents() -> Vec<(&'static str, &'static str, &'static str, u64)> {
    vec![
        ("well", "well_behaved", "WORK_SECS=2 ALIGN_SECS=5 DROP=1", 2),
        ("twin", "well_behaved", "WORK_SECS=2 ALIGN_SECS=5 DROP=1", 1),
        ("linger", "lingerer", "WORK_SECS=1 LINGER_SECS=3", 1),
        ("ignore", "ignorer", "IGNORE_TERM=1 PEAK=180000", 1),
        ("crash", "crasher", "WORK_SECS=1 CRASH=segv", 1),
        ("spawn", "spawner", "WORK_SECS=1 CHILD_SECS=3600", 1),
    ]
}

fn setup(root: &Path, bin: &Path) {
    std::fs::create_dir_all(root).unwrap();
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["config", "user.email", "soak@localhost"]);
    git(&["config", "user.name", "soak"]);
    let mut toml = format!(
        "[run]\npoll_ms = 200\ngrace_secs = {GRACE_SECS}\nterm_secs = {TERM_SECS}\nidle_secs = 1\n\
         breaker_sessions = 3\nbreaker_cooldown_secs = 20\nbackoff_secs = 1\nbackoff_max_secs = 8\n\
         logs_kept = {LOGS_KEPT}\ningest_retention_secs = 60\n\n\
         [wrap]\nbackups_kept = {BACKUPS_KEPT}\nbackup_min_interval_secs = 30\n\n\
         [assign]\nmin_ready = 2\n\n[notify]\nquiet_hours = 0\n\n"
    );
    let mut plan = String::new();
    for (name, script, env, slots) in agents() {
        let mut cmd: Vec<String> = vec!["env".into()];
        cmd.extend(env.split_whitespace().map(str::to_string));
        cmd.push("sh".into());
        cmd.push(
            agents_dir()
                .join(format!("{script}.sh"))
                .display()
                .to_string(),
        );
        let quoted: Vec<String> = cmd.iter().map(|c| format!("{c:?}")).collect();
        toml.push_str(&format!(
            "[agents.{name}]\ncommand = [{}]\n\n[agents.{name}.budget]\ntokens_per_session = 200000\nslots = {slots}\n\n",
            quoted.join(", ")
        ));
        plan.push_str(&format!(
            "[[template]]\nagent = \"{name}\"\nid = \"{name}_job_{{n}}\"\ndescription = \"{name} job {{n}}\"\ntotal = 2\nstart = 1\n\n"
        ));
    }
    std::fs::write(root.join("perpetual.toml"), toml).unwrap();
    std::fs::write(root.join("plan.toml"), plan).unwrap();
    let ok = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["task", "import"])
        .arg(root.join("plan.toml"))
        .stdout(Stdio::null())
        .status()
        .expect("perpetual task import")
        .success();
    assert!(ok, "task import");
}

/// One process as /proc shows it.
#[derive(Clone)]
struct P {
    pid: i32,
    pgid: i32,
    sid: i32,
    ppid: i32,
    state: char,
    start: u64,
    utime_stime: u64,
}

fn stat(pid: i32) -> Option<P> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    Some(P {
        pid,
        state: rest[0].chars().next()?,
        ppid: rest[1].parse().ok()?,
        pgid: rest[2].parse().ok()?,
        sid: rest[3].parse().ok()?,
        utime_stime: rest[11].parse::<u64>().ok()? + rest[12].parse::<u64>().ok()?,
        start: rest[19].parse().ok()?,
    })
}

/// A process for a failure message: pid, command name, parent, group, session, state.
fn describe(p: &P) -> String {
    format!(
        "pid {} ({}, ppid {}, pgid {}, sid {}, {})",
        p.pid,
        std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
            .unwrap_or_default()
            .trim(),
        p.ppid,
        p.pgid,
        p.sid,
        p.state
    )
}

/// (root, agent, session, a wrap's git) from a process's environment.
type Env3 = Option<(String, String, String, bool)>;

fn environ(pid: i32) -> Env3 {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let (mut r, mut a, mut s, mut git) = (None, None, None, false);
    for var in bytes.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("PERPETUAL_ROOT=") {
            r = Some(v.to_string());
        } else if let Some(v) = var.strip_prefix("PERPETUAL_AGENT=") {
            a = Some(v.to_string());
        } else if let Some(v) = var.strip_prefix("PERPETUAL_SESSION=") {
            s = Some(v.to_string());
        } else if var.starts_with("PERPETUAL_LOOP_CHILD=") {
            git = true;
        }
    }
    Some((r?, a?, s?, git))
}

/// A session's process: (agent, session, the process), or the git of a wrap that the
/// session ran (`PERPETUAL_LOOP_CHILD`): perpetual's own commit, in a process group of
/// its own, which the loop leaves to finish after the session ends (`run::procs`), so
/// it holds no slot and is no orphan; it is watched apart, and must end.
struct SessionProc {
    agent: String,
    session: String,
    p: P,
    wrap_git: bool,
}

struct Sampler {
    root: String,
    /// A process's environment by (pid, start), with when it was first read. Between
    /// its fork and its exec a session's command still has the loop's environment (no
    /// session in it): an environment naming no session is read again for a process's
    /// first two seconds, and only then taken as final.
    env_cache: HashMap<(i32, u64), (Env3, Instant)>,
}

impl Sampler {
    /// The live processes of the root's sessions.
    fn sample(&mut self) -> Vec<SessionProc> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Some(p) = stat(pid) else { continue };
            if p.state == 'Z' || p.state == 'X' {
                continue;
            }
            seen.insert((pid, p.start));
            let entry = self
                .env_cache
                .entry((pid, p.start))
                .or_insert_with(|| (environ(pid), Instant::now()));
            if entry.0.is_none() && entry.1.elapsed() < Duration::from_secs(2) {
                entry.0 = environ(pid);
            }
            let env = entry.0.clone();
            if let Some((r, agent, session, wrap_git)) = env
                && r == self.root
            {
                out.push(SessionProc {
                    agent,
                    session,
                    p,
                    wrap_git,
                });
            }
        }
        self.env_cache.retain(|k, _| seen.contains(k));
        out
    }
}

/// Reaps the harness's own zombie children (orphans of a killed loop it adopted as a
/// subreaper), never the loop itself.
fn reap(except: i32) {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == except {
            continue;
        }
        if let Some(p) = stat(pid)
            && p.ppid == me
            && p.state == 'Z'
        {
            let mut st = 0;
            unsafe {
                libc::waitpid(pid, &mut st, libc::WNOHANG);
            }
        }
    }
}

/// Every live process below this one in the process tree, found by parent pid alone
/// (no environment, no database). The harness is a child subreaper, so whatever any
/// loop started and left behind stays below it: after the final stop this must be
/// empty.
fn descendants() -> Vec<P> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<P> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect();
    let mut below: HashSet<i32> = HashSet::from([me]);
    // Parents before children is not guaranteed by pid order: repeat until stable.
    loop {
        let before = below.len();
        for p in &all {
            if below.contains(&p.ppid) {
                below.insert(p.pid);
            }
        }
        if below.len() == before {
            break;
        }
    }
    all.into_iter()
        .filter(|p| p.pid != me && below.contains(&p.pid) && p.state != 'Z' && p.state != 'X')
        .collect()
}

/// Files and bytes under `dir`; hidden files (a backup being written) count in the
/// bytes only.
fn dir_usage(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                if !e.file_name().to_string_lossy().starts_with('.') {
                    files += 1;
                }
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

fn start_loop(bin: &Path, root: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin)
        .arg("--root")
        .arg(root)
        .arg("run")
        .env_remove("PERPETUAL_ROOT")
        .env_remove("PERPETUAL_SESSION")
        .env("RUST_LOG", "perpetual=info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start perpetual run")
}

fn idle_round_us(root: &Path) -> Option<u64> {
    let db =
        Connection::open_with_flags(root.join("perpetual.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    db.query_row(
        "SELECT idle_round_us FROM loop_state WHERE id = 1",
        [],
        |r| r.get::<_, Option<i64>>(0),
    )
    .ok()
    .flatten()
    .map(|n| n as u64)
}

fn median(v: &mut [u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

fn main() -> ExitCode {
    let mut a = args();
    let seed = *a.seed.get_or_insert_with(|| fastrand::u64(..));
    fastrand::seed(seed);
    let bin = a.bin.take().unwrap_or_else(default_bin);
    if !bin.is_file() {
        eprintln!(
            "soak: no perpetual binary at {} (cargo build first, or --bin PATH)",
            bin.display()
        );
        return ExitCode::from(2);
    }
    let tmp = tempfile::Builder::new()
        .prefix("perpetual-soak-")
        .tempdir()
        .unwrap();
    let root = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    setup(&root, &bin);
    let root = root.canonicalize().unwrap();
    let log = root.join("loop.log");
    // Orphans of a killed loop become this process's children, where they can be seen
    // and reaped (not init's).
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    println!(
        "soak: {} s in {} (seed {}, bin {}), loop killed every {}-{} s",
        a.seconds,
        root.display(),
        seed,
        bin.display(),
        a.kill_every.0,
        a.kill_every.1
    );
    let slots: HashMap<&str, u64> = agents().iter().map(|(n, _, _, s)| (*n, *s)).collect();
    let mut sampler = Sampler {
        root: root.display().to_string(),
        env_cache: HashMap::new(),
    };
    let threshold = Duration::from_secs(TERM_SECS + 3);

    let started = Instant::now();
    let end = started + Duration::from_secs(a.seconds);
    let mut child = start_loop(&bin, &root, &log);
    let mut loop_up_since = Instant::now();
    let mut next_kill =
        Instant::now() + Duration::from_secs(fastrand::u64(a.kill_every.0..=a.kill_every.1));
    let mut restart_checks: Vec<Instant> = Vec::new();
    let mut most: BTreeMap<String, usize> = BTreeMap::new();
    // The most live processes (not sessions) one agent had at once, and one session.
    let mut most_procs: BTreeMap<String, usize> = BTreeMap::new();
    let mut most_in_session = 0usize;
    let mut leader_seen: HashMap<String, Instant> = HashMap::new();
    let mut orphans_max = 0usize;
    let mut orphans_at_restarts: Vec<usize> = Vec::new();
    let mut kills = 0u32;
    let mut loop_exits = Vec::new();
    let mut samples = 0u64;
    let (mut backups_max, mut state_max) = ((0u64, 0u64), (0u64, 0u64));
    let mut idle_first = Vec::new();
    let mut idle_last = Vec::new();
    let mut loop_cpu_ticks = 0u64;
    let mut last_cpu: Option<(i32, u64)> = None;
    let mut next_disk = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let (mut gits_most, mut git_longest) = (0usize, Duration::ZERO);
    let mut git_seen: HashMap<(i32, u64), Instant> = HashMap::new();
    let mut git_reported: HashSet<(i32, u64)> = HashSet::new();
    // No chaos in the last moments: the final stop must meet a loop that has had time
    // to adopt what the last one left (a kill at the very end left its sessions to a
    // loop that was still starting when the final SIGTERM came).
    let quiet_end = end - Duration::from_secs(GRACE_SECS + TERM_SECS + 10);

    while Instant::now() < end {
        let tick = Instant::now();
        // Chaos: kill the loop, start it again.
        if tick >= next_kill && tick < quiet_end {
            kills += 1;
            let pid = child.id() as i32;
            let how = if fastrand::bool() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                "SIGKILL"
            } else {
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
                std::thread::sleep(Duration::from_millis(fastrand::u64(50..500)));
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
                "two SIGTERMs"
            };
            let status = child.wait().unwrap();
            println!(
                "  {:>5.0} s  loop killed ({how}): {status}",
                started.elapsed().as_secs_f64()
            );
            if let Some((p, t)) = last_cpu.take()
                && p == pid
            {
                loop_cpu_ticks += t;
            }
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..2000)));
            child = start_loop(&bin, &root, &log);
            loop_up_since = Instant::now();
            restart_checks.push(loop_up_since + threshold + Duration::from_millis(500));
            next_kill = Instant::now()
                + Duration::from_secs(fastrand::u64(a.kill_every.0..=a.kill_every.1));
        }
        if let Some(status) = child.try_wait().unwrap() {
            loop_exits.push(format!("{status}"));
            failures.push(format!(
                "the loop exited by itself ({status}) at {:.0} s; see {}",
                started.elapsed().as_secs_f64(),
                log.display()
            ));
            child = start_loop(&bin, &root, &log);
            loop_up_since = Instant::now();
        }
        reap(child.id() as i32);

        let (gits, procs): (Vec<SessionProc>, Vec<SessionProc>) =
            sampler.sample().into_iter().partition(|sp| sp.wrap_git);
        samples += 1;
        let now = Instant::now();
        // Wraps' gits: how many at once, and none may run for long.
        gits_most = gits_most.max(gits.len());
        let mut gits_alive = HashSet::new();
        for g in &gits {
            let first = *git_seen.entry((g.p.pid, g.p.start)).or_insert(now);
            gits_alive.insert((g.p.pid, g.p.start));
            let age = now.duration_since(first);
            git_longest = git_longest.max(age);
            if age > GIT_LIMIT && git_reported.insert((g.p.pid, g.p.start)) {
                failures.push(format!(
                    "a wrap's git of {} ran for more than {} s: {}",
                    g.session,
                    GIT_LIMIT.as_secs(),
                    describe(&g.p)
                ));
            }
        }
        git_seen.retain(|k, _| gits_alive.contains(k));
        let mut by_agent: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        let mut sessions_seen: HashMap<&str, Vec<&P>> = HashMap::new();
        for sp in &procs {
            by_agent
                .entry(sp.agent.as_str())
                .or_default()
                .insert(sp.session.as_str());
            sessions_seen
                .entry(sp.session.as_str())
                .or_default()
                .push(&sp.p);
        }
        let mut procs_by_agent: HashMap<&str, usize> = HashMap::new();
        for sp in &procs {
            *procs_by_agent.entry(sp.agent.as_str()).or_default() += 1;
        }
        for (agent, n) in procs_by_agent {
            let m = most_procs.entry(agent.to_string()).or_default();
            *m = (*m).max(n);
        }
        most_in_session =
            most_in_session.max(sessions_seen.values().map(Vec::len).max().unwrap_or(0));
        for (agent, sessions) in &by_agent {
            let m = most.entry(agent.to_string()).or_default();
            *m = (*m).max(sessions.len());
            let allowed = slots.get(agent).copied().unwrap_or(1).max(1) as usize;
            if sessions.len() > allowed {
                failures.push(format!(
                    "{agent} had {} sessions with live processes at {:.1} s (slots {allowed}): {}",
                    sessions.len(),
                    started.elapsed().as_secs_f64(),
                    sessions
                        .iter()
                        .map(|s| format!(
                            "{s}: {}",
                            sessions_seen[s]
                                .iter()
                                .map(|p| describe(p))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        // The leader of a session: leads its own process group inside the loop's kernel
        // session (a `setsid` child leads a kernel session of its own).
        let mut orphans = 0;
        for (session, ps) in &sessions_seen {
            let first = *leader_seen.entry(session.to_string()).or_insert(now);
            if ps.iter().any(|p| p.pid == p.pgid && p.sid != p.pid) {
                leader_seen.insert(session.to_string(), now);
                continue;
            }
            let gone_since = first.max(loop_up_since);
            if now.duration_since(gone_since) > threshold {
                orphans += ps.len();
                failures.push(format!(
                    "orphans at {:.1} s: {session}'s command gone {:.1} s ago (a loop up for {:.1} s), left {}",
                    started.elapsed().as_secs_f64(),
                    now.duration_since(first).as_secs_f64(),
                    now.duration_since(loop_up_since).as_secs_f64(),
                    ps.iter()
                        .map(|p| describe(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        orphans_max = orphans_max.max(orphans);
        restart_checks.retain(|t| {
            if now >= *t {
                orphans_at_restarts.push(orphans);
                false
            } else {
                true
            }
        });
        // The loop's CPU time.
        if let Some(p) = stat(child.id() as i32) {
            last_cpu = Some((p.pid, p.utime_stime));
        }
        if now >= next_disk {
            next_disk = now + Duration::from_secs(5);
            let b = dir_usage(&root.join("backups"));
            let s = dir_usage(&root.join(".perpetual"));
            backups_max = (backups_max.0.max(b.0), backups_max.1.max(b.1));
            state_max = (state_max.0.max(s.0), state_max.1.max(s.1));
            if let Some(us) = idle_round_us(&root) {
                if started.elapsed() < Duration::from_secs(a.seconds / 4 + 30)
                    && idle_first.len() < 12
                {
                    idle_first.push(us);
                }
                idle_last.push(us);
                if idle_last.len() > 12 {
                    idle_last.remove(0);
                }
            }
        }
        let spent = tick.elapsed();
        if spent < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(100) - spent);
        }
    }

    // The final stop: one SIGTERM, and the loop must end every session and exit 0.
    let pid = child.id() as i32;
    if let Some(p) = stat(pid) {
        loop_cpu_ticks += p.utime_stime;
    }
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let stop_started = Instant::now();
    let stop_limit = Duration::from_secs(GRACE_SECS + TERM_SECS + 60);
    let final_status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if stop_started.elapsed() > stop_limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stop_secs = stop_started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    reap(-1);
    let left = sampler.sample();
    // The same by descent alone: nothing any loop started is still below the harness.
    let left_below = descendants();
    if !left_below.is_empty() {
        failures.push(format!(
            "{} process(es) below the harness after the final stop: {}",
            left_below.len(),
            left_below
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for p in &left_below {
            unsafe {
                libc::kill(p.pid, libc::SIGKILL);
            }
        }
    }
    match final_status {
        Some(st) if st.success() => {}
        other => failures.push(format!("the final stop: {other:?} after {stop_secs:.1} s")),
    }
    if !left.is_empty() {
        failures.push(format!(
            "{} process(es) left after the final stop: {:?}",
            left.len(),
            left.iter()
                .map(|s| format!("{} {} pid {}", s.agent, s.session, s.p.pid))
                .collect::<Vec<_>>()
        ));
        for s in &left {
            unsafe {
                libc::kill(s.p.pid, libc::SIGKILL);
            }
        }
    }

    // What the root shows afterwards.
    let db =
        Connection::open_with_flags(root.join("perpetual.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let sessions = count("SELECT COUNT(*) FROM sessions");
    let active = count("SELECT COUNT(*) FROM sessions WHERE status = 'active'");
    let not_started = count(
        "SELECT COUNT(*) FROM sessions WHERE handoff_path IS NULL AND wrap_steps LIKE '%archived without running%'",
    );
    let mut no_handoff = 0;
    let mut stmt = db
        .prepare("SELECT id, handoff_path, wrap_steps FROM sessions WHERE status = 'wrapped'")
        .unwrap();
    let rows: Vec<(String, Option<String>, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (mut commits_failed, mut other_steps_failed) = (0, 0);
    for (id, handoff, steps) in &rows {
        let steps = steps.as_deref().unwrap_or("");
        if steps.contains("archived without running") {
            continue;
        }
        if handoff.as_ref().is_none_or(|h| !root.join(h).is_file()) {
            no_handoff += 1;
            failures.push(format!("{id} has no handoff"));
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(steps) {
            for st in v.as_array().into_iter().flatten() {
                if st["status"] != "failed" {
                    continue;
                }
                if st["step"] == "commit" {
                    commits_failed += 1;
                } else {
                    other_steps_failed += 1;
                }
                failures.push(format!("{id}: {} failed: {}", st["step"], st["detail"]));
            }
        }
    }
    let on_complete = count(
        "SELECT COUNT(*) FROM sessions s JOIN tasks t ON t.id = s.task_id
         WHERE (t.total IS NOT NULL AND s.done_at_start >= t.total)
            OR (t.status = 'completed' AND t.finished_at < s.started_at)",
    );
    let commit_pending = count("SELECT COUNT(*) FROM sessions WHERE commit_pending = 1");
    let adopted = count("SELECT COUNT(*) FROM loop_runs WHERE adopted_at IS NOT NULL");
    let killed = count("SELECT COUNT(*) FROM loop_runs WHERE stopped_with = 'SIGKILL'");
    let remains = count("SELECT COALESCE(SUM(remains), 0) FROM loop_runs");
    let tasks_done = count("SELECT COUNT(*) FROM tasks WHERE status = 'completed'");
    let pairs = count("SELECT COUNT(*) FROM pairs");
    let staged = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["diff", "--cached", "--name-only"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    let untracked = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args([
            "status",
            "--porcelain",
            "--untracked-files=all",
            "session_handoffs",
            "task_reports",
            "outbox",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    let commits = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-list", "--count", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let backups_now = dir_usage(&root.join("backups"));
    let state_now = dir_usage(&root.join(".perpetual"));
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_share = loop_cpu_ticks as f64 / ticks / started.elapsed().as_secs_f64() * 100.0;
    let idle_start = median(&mut idle_first);
    let idle_end = median(&mut idle_last);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    if staged > 0 {
        failures.push(format!("{staged} file(s) left staged"));
    }
    if active > 0 {
        failures.push(format!("{active} session(s) still active after the stop"));
    }
    if on_complete > 0 {
        failures.push(format!(
            "{on_complete} session(s) started on complete tasks"
        ));
    }
    if backups_max.0 > BACKUPS_KEPT + 1 {
        failures.push(format!(
            "{} files in backups/ (kept {BACKUPS_KEPT})",
            backups_max.0
        ));
    }
    // Prompts and logs: the kept ones, plus the live sessions' (at most 8 at once).
    if state_max.0 > 2 * (LOGS_KEPT + 8) + 8 {
        failures.push(format!("{} files in .perpetual/", state_max.0));
    }
    let o_restarts = orphans_at_restarts.iter().sum::<usize>();

    let mb = |b: u64| b as f64 / 1_048_576.0;
    println!();
    println!(
        "soak figures ({} s, {} samples every 100 ms, seed {})",
        a.seconds, samples, seed
    );
    println!(
        "  sessions                              {sessions} ({not_started} could not start), {tasks_done} tasks completed, {pairs} pairs, {commits} commits"
    );
    println!(
        "  loop restarts                         {kills} (SIGKILL or two SIGTERMs); sessions adopted {adopted}; exits by itself {}",
        loop_exits.len()
    );
    for (agent, n) in &most {
        println!(
            "  most live sessions, {agent:<7}          {n} (slots {}; most processes at once {})",
            slots.get(agent.as_str()).copied().unwrap_or(1).max(1),
            most_procs.get(agent).copied().unwrap_or(0)
        );
    }
    println!("  most processes of one session at once {most_in_session}");
    println!("  orphans: most at any time            {orphans_max}");
    println!(
        "  orphans after the restarts            {o_restarts} (over {} checks)",
        orphans_at_restarts.len()
    );
    println!(
        "  orphans after the final stop          {} by environment, {} by descent (stop took {stop_secs:.1} s)",
        left.len(),
        left_below.len()
    );
    println!("  processes the loop ended as remains   {remains}; sessions SIGKILLed {killed}");
    println!("  sessions without a handoff            {no_handoff}");
    println!(
        "  wrap commits failed                   {commits_failed} (pending retry at the end: {commit_pending})"
    );
    println!("  other wrap steps failed               {other_steps_failed}");
    println!(
        "  wraps' gits after their session        most {gits_most} at once, longest seen {:.1} s (limit {} s)",
        git_longest.as_secs_f64(),
        GIT_LIMIT.as_secs()
    );
    println!("  files left staged / untracked outputs {staged} / {untracked}");
    println!("  sessions started on complete tasks    {on_complete}");
    println!("  sessions active after the stop        {active}");
    println!(
        "  backups/                              max {} files, {:.1} MiB; at the end {} files, {:.1} MiB",
        backups_max.0,
        mb(backups_max.1),
        backups_now.0,
        mb(backups_now.1)
    );
    println!(
        "  .perpetual/                           max {} files, {:.1} MiB; at the end {} files, {:.1} MiB",
        state_max.0,
        mb(state_max.1),
        state_now.0,
        mb(state_now.1)
    );
    println!(
        "  CPU per idle round (median)           {} at the start, {} at the end",
        idle_start.map_or("-".into(), |u| format!("{u} µs")),
        idle_end.map_or("-".into(), |u| format!("{u} µs"))
    );
    println!("  loop CPU share                        {cpu_share:.1}% of one core");
    println!("  load average at the end               {}", loadavg.trim());
    if a.keep || !failures.is_empty() {
        println!("  root kept at                          {}", root.display());
        std::mem::forget(tmp);
    }
    let _ = std::io::stdout().flush();
    if failures.is_empty() {
        println!("SOAK PASSED");
        ExitCode::SUCCESS
    } else {
        println!("SOAK FAILED:");
        let mut shown = HashSet::new();
        for f in failures
            .iter()
            .filter(|f| shown.insert(f.as_str()))
            .take(40)
        {
            println!("  - {f}");
        }
        ExitCode::from(1)
    }
}
