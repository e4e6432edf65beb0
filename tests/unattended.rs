//! Issue 9, "Unattended for 24 hours": one regression test per observation, each
//! through the real binary with the scripted agents of tests/fixtures/agents/ (see
//! their headers). Processes are counted from /proc (`common::session_processes`), never
//! from the database.

mod common;

use common::{Env, KillLeftovers, Sampler, git, session_processes, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn agent(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agents")
        .join(format!("{name}.sh"))
        .display()
        .to_string()
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A root with a fast loop (budgets looked at every 100 ms, 2 s of grace before
/// SIGTERM, 1 s before SIGKILL) and `agents` appended to perpetual.toml. No agent is
/// configured but those in `agents`.
fn root_with(agents: &str) -> (Env, KillLeftovers) {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        format!(
            "[run]\npoll_ms = 100\ngrace_secs = 2\nterm_secs = 1\nidle_secs = 1\n\
             breaker_sessions = 3\nbackoff_secs = 0\n\n{agents}\n"
        ),
    );
    let guard = KillLeftovers(env.root().to_path_buf());
    (env, guard)
}

fn add_tasks(env: &Env, agent: &str, ids: &[&str], total: u64) {
    for id in ids {
        env.run(&[
            "task",
            "add",
            id,
            "--agent",
            agent,
            "--total",
            &total.to_string(),
        ])
        .expect(0);
    }
}

/// A git repository in the root, with an identity for its commits.
fn git_repo(env: &Env) {
    git(env.root(), &["init", "-q"]);
    git(env.root(), &["config", "user.email", "t@example.com"]);
    git(env.root(), &["config", "user.name", "t"]);
}

/// The `commit` step among a wrap's steps (`steps` of `session wrap --json`, or a
/// session's `wrap_steps`).
fn commit_step(steps: &Value) -> Value {
    steps
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["step"] == "commit")
        .unwrap()
        .clone()
}

/// Nothing staged, and no handoff or task report left untracked.
fn assert_outputs_committed(env: &Env) {
    assert_eq!(git(env.root(), &["diff", "--cached", "--name-only"]), "");
    let left = git(
        env.root(),
        &[
            "status",
            "--porcelain",
            "--untracked-files=all",
            "session_handoffs",
            "task_reports",
        ],
    );
    assert_eq!(left, "");
}

fn agent_status(env: &Env, agent: &str) -> Value {
    let run = env.run(&["status", "--json"]).expect(0);
    run.json()["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == agent)
        .unwrap_or_else(|| panic!("no {agent} in status\n{}", run.explain()))
        .clone()
}

/// Observation 1: a slot was freed when the session row said `wrapped`, not when the
/// process exited, so an agent that wraps itself and lingers got a second process on
/// its one slot (5 copies after 9 s), and an agent with `slots = 2` reached 4.
#[test]
fn an_agent_that_lingers_after_its_wrap_never_runs_more_processes_than_its_slots() {
    let lingerer = agent("lingerer");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["env", "LINGER_SECS=2", "sh", "{lingerer}"]

[agents.droid]
command = ["env", "LINGER_SECS=2", "sh", "{lingerer}"]

[agents.droid.budget]
tokens_per_session = 0
slots = 2
"#
    ));
    add_tasks(&env, "claude_code", &["cc_1", "cc_2", "cc_3"], 1);
    add_tasks(&env, "droid", &["dr_1", "dr_2", "dr_3", "dr_4"], 1);
    let sampler = Sampler::start(env.root());
    let run = env.run(&["run", "--max-sessions", "7"]);
    let most = sampler.finish();
    let run = run.expect(0);
    assert_eq!(most.get("claude_code"), Some(&1), "{most:?}");
    assert_eq!(most.get("droid"), Some(&2), "{most:?}");
    let s = env.sessions();
    assert_eq!(s.len(), 7);
    for id in ["cc_1", "cc_2", "cc_3", "dr_1", "dr_2", "dr_3", "dr_4"] {
        assert_eq!(
            env.task_json(id)["status"],
            "completed",
            "{id}\n{}\n{}",
            run.explain(),
            std::fs::read_dir(env.path(".perpetual/logs"))
                .unwrap()
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<String>()
        );
    }
    assert!(session_processes(env.root()).is_empty());
}

/// Observation 2: the loop picked up a task between the wrap's archive and grade steps,
/// so sessions started on tasks already at 4/4. Two slots wrapping at the same moments
/// (one ending wakes the loop while the other is between the steps) and a long history
/// (a wide window) make it likely; no session may start on a task that is complete or
/// completing.
#[test]
fn no_session_starts_on_a_task_that_is_complete_or_completing() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.droid]
command = ["env", "ALIGN_SECS=1", "sh", "{well}"]

[agents.droid.budget]
tokens_per_session = 0
slots = 2
"#
    ));
    // History: 3,000 completed tasks.
    let mut plan = String::new();
    for i in 0..3000 {
        plan.push_str(&format!(
            "[[task]]\nid = \"old_{i}\"\nagent = \"zai\"\ntotal = 1\n"
        ));
    }
    env.write("history.toml", plan);
    env.run(&["task", "import", "history.toml"]).expect(0);
    {
        let db = rusqlite::Connection::open(env.path("perpetual.db")).unwrap();
        db.execute(
            "UPDATE tasks SET status = 'completed', done = 1, finished_at = '2026-01-01T00:00:00Z'",
            [],
        )
        .unwrap();
    }
    add_tasks(&env, "droid", &["a", "b", "c", "d", "e", "f"], 1);
    env.run(&["run", "--max-sessions", "6"]).expect(0);
    let s = env.sessions();
    let on: Vec<&str> = s.iter().map(|x| x["task_id"].as_str().unwrap()).collect();
    let mut sorted = on.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["a", "b", "c", "d", "e", "f"],
        "one session per task"
    );
    for x in &s {
        assert_eq!(x["done_at_start"], 0, "{x}");
    }
}

/// Observation 3: two agents wrapping at once in a git root collided on
/// `.git/index.lock` (118 of 436 commits failed, never retried; handoffs left staged or
/// untracked). Three agents here wrap at the same whole seconds.
#[test]
fn concurrent_wraps_in_a_git_root_all_commit_and_leave_nothing_staged() {
    let well = agent("well_behaved");
    let mut agents = String::new();
    for a in ["a1", "a2", "a3"] {
        agents.push_str(&format!(
            "[agents.{a}]\ncommand = [\"env\", \"ALIGN_SECS=1\", \"sh\", \"{well}\"]\n\n"
        ));
    }
    let (env, _guard) = root_with(&agents);
    git_repo(&env);
    for a in ["a1", "a2", "a3"] {
        add_tasks(&env, a, &[&format!("{a}_x"), &format!("{a}_y")], 1);
    }
    env.run(&["run", "--max-sessions", "6"]).expect(0);
    let s = env.sessions();
    assert_eq!(s.len(), 6);
    for x in &s {
        let commit = commit_step(&x["wrap_steps"]);
        assert_eq!(commit["status"], "done", "{}: {commit}", x["id"]);
    }
    assert_outputs_committed(&env);
}

/// Observation 4: after a SIGKILL of the loop, the next `perpetual run` wrapped the
/// session without looking at its process and started a second one on the same task.
/// It must follow the live process instead (and ask it to wrap when it stops).
#[test]
fn a_loop_killed_with_kill_9_leaves_a_live_session_the_next_loop_adopts() {
    let fake = fixture("fake_agent.sh");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["env", "FAKE_MODE=linger", "FAKE_PEAK=30000", "sh", "{}"]
transcript = "{{root}}/transcripts/{{session}}.jsonl"
"#,
        fake.display()
    ));
    add_tasks(&env, "claude_code", &["t"], 2);
    let mut first = env.spawn(&["run"]);
    first.wait_for_log("started session_");
    wait_until(
        "the agent to be at work",
        || env.try_count("SELECT COUNT(*) FROM checkpoints") == Some(1),
        || first.explain(),
    );
    first.kill9();
    let orphans = session_processes(env.root());
    assert!(!orphans.is_empty(), "the agent outlives a SIGKILLed loop");

    let sampler = Sampler::start(env.root());
    let mut second = env.spawn(&["run"]);
    second.wait_for_log("waiting");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions"),
        1,
        "no second session on the task\n{}",
        second.explain()
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions WHERE status = 'active'"),
        1,
        "the live session is followed, not wrapped\n{}",
        second.explain()
    );
    assert!(second.stderr().contains("adopt"), "{}", second.explain());
    // Stopping asks it to wrap; it finishes its unit and wraps itself.
    second.stop();
    let most = sampler.finish();
    assert_eq!(most.get("claude_code"), Some(&1), "{most:?}");
    let s = env.sessions();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["status"], "wrapped");
    assert_eq!(s[0]["next_action"], "fake agent: continue after unit 1");
    assert!(session_processes(env.root()).is_empty());
}

/// Observation 4, the hard case: an adopted agent that ignores the wrap request and
/// SIGTERM is killed, and its session wrapped.
#[test]
fn an_adopted_agent_that_ignores_everything_is_killed_and_its_session_wrapped() {
    let ignorer = agent("ignorer");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["env", "IGNORE_TERM=1", "sh", "{ignorer}"]
"#
    ));
    add_tasks(&env, "claude_code", &["t"], 5);
    let mut first = env.spawn(&["run"]);
    wait_until(
        "the agent to be at work",
        || env.try_count("SELECT COUNT(*) FROM checkpoints") == Some(1),
        || first.explain(),
    );
    first.kill9();
    let mut second = env.spawn(&["run", "--max-sessions", "0"]);
    let (status, _) = second.wait_exit(common::PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", second.explain());
    assert!(session_processes(env.root()).is_empty());
    let s = env.sessions();
    assert_eq!(s.len(), 1, "{}", second.explain());
    assert_eq!(s[0]["status"], "wrapped");
    let stopped: String = env
        .db()
        .query_row(
            "SELECT stopped_with FROM loop_runs ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stopped, "SIGKILL", "{}", second.explain());
}

/// Observation 5: when an agent's main process exited, the rest of its process group
/// and what it `setsid`-ed kept running, session after session.
#[test]
fn an_agents_children_with_and_without_setsid_die_with_its_session() {
    let spawner = agent("spawner");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["sh", "{spawner}"]
"#
    ));
    add_tasks(&env, "claude_code", &["t1", "t2"], 1);
    let sampler = Sampler::start(env.root());
    let run = env.run(&["run", "--max-sessions", "2"]);
    let most = sampler.finish();
    let run = run.expect(0);
    assert_eq!(
        session_processes(env.root()),
        [],
        "children left behind\n{}",
        run.explain()
    );
    assert_eq!(most.get("claude_code"), Some(&1), "{most:?}");
    assert_eq!(env.sessions().len(), 2);
    // Its two children (usually both still there when it exits).
    assert!(
        run.stderr().contains("process(es) behind"),
        "{}",
        run.explain()
    );
    assert!(
        env.count("SELECT COALESCE(SUM(remains), 0) FROM loop_runs") >= 2,
        "{}",
        run.explain()
    );
}

/// Observation 6: with a transcript folder, a new session read the previous session's
/// newest `*.jsonl` until its own appeared, started "at 87%" and was wrapped at once.
#[test]
fn a_session_reads_only_its_own_transcript_in_a_transcript_folder() {
    let writer = agent("transcript_writer");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["sh", "{writer}"]
transcript = "{{root}}/transcripts"
"#
    ));
    std::fs::create_dir_all(env.path("transcripts")).unwrap();
    add_tasks(&env, "claude_code", &["t"], 2);
    let run = env.run(&["run", "--max-sessions", "2"]).expect(0);
    let s = env.sessions();
    assert_eq!(s.len(), 2, "{}", run.explain());
    let second = s[1]["id"].as_str().unwrap();
    assert!(
        !env.path(&format!("fake/asked_{second}")).exists(),
        "the second session was asked to wrap at once\n{}",
        run.explain()
    );
    assert_eq!(s[1]["tokens_used"], 20000, "{}", run.explain());
    assert_eq!(env.task_json("t")["status"], "completed");
}

/// Observation 6, the other way: with `{uuid}` in the transcript's name, two sessions
/// of one agent at once each read their own file. The first writes 87.5% of the context
/// and wraps; the second, started beside it, must not be asked to wrap for it.
#[test]
fn two_sessions_of_one_agent_read_only_their_own_uuid_transcripts() {
    let writer = agent("transcript_writer");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["sh", "{writer}"]
transcript = "{{root}}/transcripts/{{uuid}}.jsonl"

[agents.claude_code.budget]
slots = 2
"#
    ));
    add_tasks(&env, "claude_code", &["first"], 1);
    add_tasks(&env, "claude_code", &["later"], 2);
    env.run(&["task", "progress", "later", "1/2"]).expect(0);
    let run = env.run(&["run", "--max-sessions", "2"]).expect(0);
    let s = env.sessions();
    assert_eq!(s.len(), 2, "{}", run.explain());
    let by_task = |t: &str| s.iter().find(|x| x["task_id"] == t).unwrap().clone();
    let (first, later) = (by_task("first"), by_task("later"));
    // They ran at once.
    assert!(
        first["wrapped_at"].as_str().unwrap() >= later["started_at"].as_str().unwrap(),
        "{first}\n{later}"
    );
    assert_eq!(first["tokens_used"], 175000, "{}", run.explain());
    assert_eq!(later["tokens_used"], 20000, "{}", run.explain());
    let id = later["id"].as_str().unwrap();
    assert!(
        !env.path(&format!("fake/asked_{id}")).exists(),
        "asked to wrap for the other session's transcript\n{}",
        run.explain()
    );
    assert_eq!(env.files_in("transcripts").len(), 2, "{}", env.listing());
}

/// Observation 7: the agent's PATH lacked `perpetual`; `hooks install` wrote a bare
/// `perpetual hooks handle`, which, run from another directory, created a new root there.
#[test]
fn the_agent_and_the_hooks_find_perpetual_and_its_root() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"sh\", \"{well}\"]\n"
    ));
    add_tasks(&env, "claude_code", &["t"], 1);
    // A PATH without perpetual: the agent's script calls plain `perpetual`.
    let run = env
        .run_with(
            &["run", "--max-sessions", "1"],
            &[("PATH", "/usr/bin:/bin")],
        )
        .expect(0);
    assert_eq!(
        env.task_json("t")["status"],
        "completed",
        "{}",
        run.explain()
    );

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_perpetual"))
        .canonicalize()
        .unwrap();
    let installed = env.run(&["hooks", "install", "--json"]).expect(0).json();
    assert_eq!(
        installed["command"],
        format!("{} hooks handle", bin.display()),
        "the absolute path of the running binary"
    );
    let project = tempfile::tempdir().unwrap();
    let other = env
        .run(&[
            "hooks",
            "install",
            "--project",
            project.path().to_str().unwrap(),
            "--json",
        ])
        .expect(0)
        .json();
    let root = env.root().canonicalize().unwrap();
    assert_eq!(
        other["command"],
        format!("{} --root {} hooks handle", bin.display(), root.display())
    );

    let hook = |cwd: &Path, root_env: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_perpetual"));
        cmd.args(["hooks", "handle"])
            .current_dir(cwd)
            .env_remove("PERPETUAL_ROOT")
            .env_remove("PERPETUAL_SESSION")
            .env_remove("PERPETUAL_AGENT")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(r) = root_env {
            cmd.env("PERPETUAL_ROOT", r);
        }
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&std::fs::read(fixture("hooks/session_start.json")).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Outside any root: no answer, nothing created.
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(hook(elsewhere.path(), None), "");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    // From a folder inside the root: it walks up to perpetual.toml and answers.
    add_tasks(&env, "claude_code", &["u"], 1);
    env.run(&["session", "start", "--agent", "claude_code"])
        .expect(0);
    std::fs::create_dir_all(env.path("work/deep")).unwrap();
    let answer = hook(&env.path("work/deep"), None);
    assert!(answer.contains("additionalContext"), "{answer}");
    assert!(answer.contains("Task: u"), "{answer}");
    // PERPETUAL_ROOT wins over the working directory.
    let answer = hook(elsewhere.path(), Some(env.root()));
    assert!(answer.contains("Task: u"), "{answer}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

/// Observation 8: the prompt was written to the agent's stdin while SIGPIPE had its
/// default action; an agent that exits before reading it killed `perpetual run` (141).
#[test]
fn an_agent_that_exits_without_reading_its_prompt_cannot_kill_the_loop() {
    let (env, _guard) = root_with(
        r#"
[agents.claude_code]
command = ["sh", "-c", "exit 0"]
"#,
    );
    // A prompt far larger than a pipe's buffer.
    let description = "x".repeat(400_000);
    env.write(
        "plan.toml",
        format!(
            "[[task]]\nid = \"big\"\nagent = \"claude_code\"\ntotal = 9\ndescription = \"{description}\"\n"
        ),
    );
    env.run(&["task", "import", "plan.toml"]).expect(0);
    let run = env.run(&["run", "--max-sessions", "2"]);
    assert_eq!(run.code(), 0, "{}", run.explain());
    assert_eq!(env.sessions().len(), 2);
}

/// Observation 9: `wall_minutes_per_session = 1` read 0% for 60 s, then 100%: the wrap
/// level was skipped for any budget under 20 minutes.
#[test]
fn a_one_minute_wall_time_budget_reaches_the_wrap_level_at_51_seconds() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[agents.zai.budget]\ntokens_per_session = 0\nwall_minutes_per_session = 1\n",
    );
    env.run(&["task", "add", "t", "--agent", "zai"]).expect(0);
    env.run_at(
        "2026-01-01T00:00:00Z",
        &["session", "start", "--agent", "zai"],
    )
    .expect(0);
    let at = |now: &str| {
        env.run_at(now, &["session", "status", "--agent", "zai", "--json"])
            .expect(0)
            .json()
    };
    let j = at("2026-01-01T00:00:50Z");
    assert_eq!(j["usage"][0]["kind"], "wall_time");
    assert_eq!(
        (
            j["usage"][0]["used"].as_u64(),
            j["usage"][0]["limit"].as_u64()
        ),
        (Some(50), Some(60))
    );
    assert_eq!(j["level"], "warning", "50 s of 60 is 83.3%");
    assert_eq!(
        at("2026-01-01T00:00:51Z")["level"],
        "wrap",
        "51 s of 60 is 85%"
    );
}

/// Observation 10: speed was graded down without an estimate ("1 session expected, 29
/// used" → B), against the rule: speed is 1 without an estimate.
#[test]
fn a_task_without_an_estimate_keeps_full_speed_however_many_sessions_it_took() {
    let env = Env::new();
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "3"])
        .expect(0);
    for n in 1..=3 {
        env.run(&["session", "start", "--agent", "claude_code"])
            .expect(0);
        env.run(&[
            "session",
            "wrap",
            "--agent",
            "claude_code",
            "--progress",
            &format!("{n}/3"),
        ])
        .expect(0);
    }
    let t = env.task_json("t");
    assert_eq!(t["status"], "completed");
    assert_eq!(t["grade"]["speed"], 1.0, "{t}");
    assert_eq!(t["grade"]["letter"], "A", "{t}");
    let report = std::fs::read_to_string(env.path("task_reports/t.md")).unwrap();
    assert!(report.contains("no estimate"), "{report}");
}

fn flat(pairs: &[(&str, &str)]) -> String {
    let items: Vec<Value> = pairs
        .iter()
        .map(|(q, a)| serde_json::json!({"question": q, "answer": a}))
        .collect();
    Value::from(items).to_string()
}

/// Observation 11: "pairs integrated during the session" counted every agent's pairs in
/// the session's time window (a backfill's per-session column summed to 187,898 for
/// 26,100 stored pairs). A session counts the pairs of the files it integrated.
#[test]
fn a_session_counts_only_the_pairs_it_integrated() {
    let env = Env::new();
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "2"])
        .expect(0);
    let start = env
        .run(&["session", "start", "--agent", "claude_code", "--json"])
        .expect(0)
        .json();
    let id = start["session"]["id"].as_str().unwrap().to_string();
    // Another agent's drops, integrated while the session runs: not its pairs.
    env.drop_file("droid", "d.json", flat(&[("Q1?", "A1."), ("Q2?", "A2.")]));
    env.run(&["ingest"]).expect(0);
    // The session's own ingest (PERPETUAL_SESSION names it): its pairs.
    env.drop_file("claude_code", "c.json", flat(&[("Q3?", "A3.")]));
    env.run_with(&["ingest"], &[("PERPETUAL_SESSION", id.as_str())])
        .expect(0);
    let w = env
        .run(&["session", "wrap", "--session", &id, "--json"])
        .expect(0)
        .json();
    assert_eq!(w["pairs_integrated"], 1, "{w}");
    let handoff =
        std::fs::read_to_string(env.path(&format!("session_handoffs/handoff_{id}.md"))).unwrap();
    assert!(
        handoff.contains("- pairs integrated by the session (the files it integrated): 1"),
        "{handoff}"
    );
}

/// Observation 11, the backfill report: its per-session column adds up to the pairs
/// the backfill stored, however its sessions and other agents' ingests interleave.
#[test]
fn a_backfill_reports_per_session_pairs_that_add_up_to_what_it_stored() {
    let env = Env::new();
    let answer = "An answer long enough to cost about a hundred tokens. ".repeat(7);
    for n in 1..=4 {
        let pairs: Vec<(String, String)> = (0..20)
            .map(|i| (format!("Session {n} question {i}?"), answer.clone()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(q, a)| (q.as_str(), a.as_str()))
            .collect();
        env.write(&format!("archive/session_{n}.json"), flat(&refs));
    }
    let archive = env.path("archive");
    let mut runs = 0;
    loop {
        runs += 1;
        let run = env.run(&[
            "backfill",
            archive.to_str().unwrap(),
            "--sessions",
            "1-4",
            "--agent",
            "claude_code",
            "--budget",
            "5000",
        ]);
        // Another agent's drops integrated between the backfill's sessions.
        env.drop_file(
            "droid",
            &format!("d{runs}.json"),
            flat(&[(&format!("D{runs}?"), "Yes.")]),
        );
        env.run(&["ingest"]).expect(0);
        match run.code() {
            75 => assert!(runs < 10, "{}", run.explain()),
            0 => break,
            _ => panic!("{}", run.explain()),
        }
    }
    assert!(runs >= 2, "the budget makes it wrap at least once");
    let report =
        std::fs::read_to_string(env.path("task_reports/backfill_sessions_1_4.md")).unwrap();
    let per_session: i64 = report
        .lines()
        .skip_while(|l| !l.starts_with("## Sessions"))
        .filter(|l| l.starts_with("| session_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells[cells.len() - 2]
                .replace(',', "")
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(per_session, 80, "{report}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs WHERE agent = 'claude_code'"),
        80
    );
}

/// Observation 12: the wrap request's text gave a budget reason when the loop was
/// stopping, and "asking ... to wrap" was logged twice.
#[test]
fn stopping_the_loop_says_why_in_the_wrap_request_and_asks_once() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"env\", \"WORK_SECS=60\", \"sh\", \"{well}\"]\n"
    ));
    add_tasks(&env, "claude_code", &["t"], 3);
    let mut run = env.spawn(&["run"]);
    run.wait_for_log("started session_");
    let id = env.sessions()[0]["id"].as_str().unwrap().to_string();
    run.stop();
    let text = std::fs::read_to_string(env.path(&format!("fake/wrap_request_{id}.txt")))
        .unwrap_or_else(|e| panic!("{e}\n{}", run.explain()));
    assert!(text.contains("the loop is stopping"), "{text}");
    let asked = run
        .stderr()
        .lines()
        .filter(|l| l.contains(&format!("{id} to wrap")))
        .count();
    assert_eq!(asked, 1, "{}", run.explain());
}

/// Observation 13: one ingest task (and one report) per drop flooded `task list` and
/// `task stats`; completed ingest tasks leave the lists after `run.ingest_retention_secs`
/// and stay in `files`.
#[test]
fn completed_ingest_tasks_leave_the_task_lists_after_their_retention_and_stay_in_files() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[run]\nidle_secs = 1\ningest_retention_secs = 0\n",
    );
    // Files waiting together: one ingest task for them all, not one per file.
    for i in 0..3 {
        env.drop_file(
            "droid",
            &format!("b{i}.json"),
            flat(&[(&format!("B{i}?"), "A.")]),
        );
    }
    env.run(&["run", "--once", "--agent", "droid"]).expect(0);
    let all = env
        .run(&["task", "list", "--all", "--json"])
        .expect(0)
        .json();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["kind"], "ingest");
    assert_eq!(all[0]["total"], 3, "{all}");
    for i in 0..3 {
        env.drop_file(
            "droid",
            &format!("d{i}.json"),
            flat(&[(&format!("Q{i}?"), "A.")]),
        );
        env.run(&["run", "--once", "--agent", "droid"]).expect(0);
    }
    env.run(&["run", "--once", "--agent", "droid"]);
    let all = env
        .run(&["task", "list", "--all", "--json"])
        .expect(0)
        .json();
    assert_eq!(all.as_array().unwrap().len(), 0, "{all}");
    let stats = env.run(&["task", "stats", "--json"]).expect(0).json();
    assert_eq!(stats["tasks"], 0, "{stats}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE status = 'integrated'"),
        6
    );
    assert!(!env.path("task_reports").exists() || env.files_in("task_reports").is_empty());
}

/// Observation 14: a full backup at every wrap (~1 GB in 7 minutes). Backups are made at
/// most every `wrap.backup_min_interval_secs`, and always when a task completes.
#[test]
fn backups_are_rate_limited_except_when_a_task_completes() {
    let env = Env::new();
    env.write("perpetual.toml", "[wrap]\nbackup_min_interval_secs = 600\n");
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "3"])
        .expect(0);
    let mut steps = Vec::new();
    for n in 1..=3 {
        env.run(&["session", "start", "--agent", "claude_code"])
            .expect(0);
        let w = env
            .run(&[
                "session",
                "wrap",
                "--agent",
                "claude_code",
                "--progress",
                &format!("{n}/3"),
                "--json",
            ])
            .expect(0)
            .json();
        let backup = w["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "backup")
            .unwrap()
            .clone();
        steps.push(backup);
    }
    assert_eq!(steps[0]["status"], "done", "{steps:?}");
    assert_eq!(steps[1]["status"], "skipped", "{steps:?}");
    assert!(
        steps[1]["detail"]
            .as_str()
            .unwrap()
            .contains("backup_min_interval_secs"),
        "{steps:?}"
    );
    assert_eq!(steps[2]["status"], "done", "the task completed: {steps:?}");
    assert_eq!(env.files_in("backups").len(), 2);
}

/// Observation 14: `.perpetual/` prompts and logs were never pruned.
#[test]
fn prompts_and_logs_of_old_sessions_are_pruned() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"sh\", \"{well}\"]\n"
    ));
    let mut toml = std::fs::read_to_string(env.path("perpetual.toml")).unwrap();
    toml = toml.replace("[run]\n", "[run]\nlogs_kept = 2\n");
    env.write("perpetual.toml", toml);
    add_tasks(&env, "claude_code", &["t"], 5);
    env.run(&["run", "--max-sessions", "5"]).expect(0);
    assert_eq!(env.sessions().len(), 5);
    assert_eq!(env.files_in(".perpetual/prompts").len(), 2);
    assert_eq!(env.files_in(".perpetual/logs").len(), 2);
}

/// Observation 14: below the free-disk floor the loop starts no session, and `status`
/// says so.
#[test]
fn below_the_free_disk_floor_no_session_starts_and_status_says_why() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"sh\", \"{well}\"]\n"
    ));
    let toml = std::fs::read_to_string(env.path("perpetual.toml"))
        .unwrap()
        .replace("[run]\n", "[run]\nmin_free_disk_mb = 1000000000\n");
    env.write("perpetual.toml", toml);
    add_tasks(&env, "claude_code", &["t"], 1);
    let run = env.run(&["run", "--once"]);
    assert_eq!(run.code(), 4, "{}", run.explain());
    assert!(run.stderr().contains("free"), "{}", run.explain());
    assert_eq!(env.sessions().len(), 0);
    let status = env.run(&["status"]).expect(0).stdout();
    assert!(status.contains("DISK LOW"), "{status}");
}

/// Observation 15: read-only commands on a mistyped `--root` silently created it.
#[test]
fn read_only_commands_on_a_missing_root_fail_and_create_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("typo");
    for args in [
        vec!["stats"],
        vec!["files"],
        vec!["status"],
        vec!["task", "list"],
        vec!["task", "stats"],
        vec!["session", "list"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_perpetual"))
            .arg("--root")
            .arg(&missing)
            .args(&args)
            .env_remove("PERPETUAL_ROOT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&missing.display().to_string()) && stderr.contains("init"),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // An existing folder that is not a root is refused too, and left as it was.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_perpetual"))
        .arg("--root")
        .arg(empty.path())
        .arg("stats")
        .env_remove("PERPETUAL_ROOT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

/// Observation 15: `agent pause typo` succeeded for an agent that does not exist.
#[test]
fn pausing_or_resuming_an_unknown_agent_is_an_error() {
    let env = Env::new();
    env.run(&["init"]).expect(0);
    let run = env.run(&["agent", "pause", "clade_code"]).expect(1);
    assert!(run.stderr().contains("clade_code"), "{}", run.explain());
    env.run(&["agent", "resume", "clade_code"]).expect(1);
    env.run(&["agent", "pause", "claude_code"]).expect(0);
    env.run(&["agent", "resume", "claude_code"]).expect(0);
}

/// Observation 15: a missing agent command burned three sessions, backups and handoffs
/// before the breaker stopped it. It pauses the agent at once, with the reason.
#[test]
fn a_missing_agent_command_pauses_the_agent_at_once_without_backup_or_handoff() {
    let (env, _guard) = root_with(
        r#"
[agents.claude_code]
command = ["claude-not-installed-here", "-p"]
"#,
    );
    add_tasks(&env, "claude_code", &["t"], 1);
    let run = env.run(&["run", "--once"]);
    assert_eq!(run.code(), 4, "{}", run.explain());
    let a = agent_status(&env, "claude_code");
    let reason = a["paused"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("claude-not-installed-here") && reason.contains("not found"),
        "{a}"
    );
    assert!(env.files_in("backups").is_empty());
    assert!(env.files_in("session_handoffs").is_empty());
    // A second run starts nothing either.
    assert_eq!(env.run(&["run", "--once"]).code(), 4);
    assert_eq!(env.count("SELECT COUNT(*) FROM sessions"), 0);
}

/// The breaker is a real breaker: after its cooldown a paused agent gets one trial
/// session; a failure pauses it again with the cooldown doubled, a success closes it.
#[test]
fn the_breaker_half_opens_after_its_cooldown_and_doubles_it_on_a_failed_trial() {
    let crasher = agent("crasher");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["env", "CRASH=exit", "sh", "{crasher}"]
"#
    ));
    let toml = std::fs::read_to_string(env.path("perpetual.toml"))
        .unwrap()
        .replace(
            "breaker_sessions = 3",
            "breaker_sessions = 2\nbreaker_cooldown_secs = 1",
        );
    env.write("perpetual.toml", toml);
    add_tasks(&env, "claude_code", &["t"], 3);
    let mut run = env.spawn(&["run"]);
    wait_until(
        "the trial to fail",
        || env.try_count("SELECT COUNT(*) FROM loop_runs WHERE ended_at IS NOT NULL") >= Some(3),
        || run.explain(),
    );
    wait_until(
        "the second pause",
        || agent_status(&env, "claude_code")["paused"]["cooldown_secs"] == 2,
        || run.explain(),
    );
    run.stop();
    assert!(run.stderr().contains("trial"), "{}", run.explain());
    // Paused twice (the breaker, then its failed trial): named once in the summary.
    let summary = run
        .stderr()
        .lines()
        .find(|l| l.contains("run: "))
        .unwrap_or_default()
        .to_string();
    assert_eq!(summary.matches("claude_code").count(), 1, "{summary}");

    // A trial that succeeds closes the breaker.
    let well = agent("well_behaved");
    let toml = std::fs::read_to_string(env.path("perpetual.toml"))
        .unwrap()
        .replace(
            &format!("\"CRASH=exit\", \"sh\", \"{crasher}\""),
            &format!("\"sh\", \"{well}\""),
        );
    env.write("perpetual.toml", toml);
    std::thread::sleep(Duration::from_secs(3));
    env.run(&["run", "--once"]).expect(0);
    assert!(agent_status(&env, "claude_code")["paused"].is_null());
}

/// Crash loops back off exponentially: each failed session doubles the wait before the
/// agent's next one.
#[test]
fn a_crashing_agent_backs_off_exponentially() {
    let crasher = agent("crasher");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["env", "CRASH=segv", "sh", "{crasher}"]
"#
    ));
    let toml = std::fs::read_to_string(env.path("perpetual.toml"))
        .unwrap()
        .replace("breaker_sessions = 3", "breaker_sessions = 10")
        .replace("backoff_secs = 0", "backoff_secs = 1");
    env.write("perpetual.toml", toml);
    add_tasks(&env, "claude_code", &["t"], 3);
    let started = Instant::now();
    let run = env.run(&["run", "--max-sessions", "4"]).expect(0);
    // Waits of 1, 2 and 4 seconds between the four sessions.
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "{:?}\n{}",
        started.elapsed(),
        run.explain()
    );
    assert!(run.stderr().contains("backing off"), "{}", run.explain());
}

/// `[notify] command` hears about trouble: the event as one JSON object on stdin.
#[test]
fn the_notify_command_hears_about_a_paused_agent() {
    let (env, _guard) = root_with(
        r#"
[agents.claude_code]
command = ["claude-not-installed-here"]
"#,
    );
    let log = env.path("notified.jsonl");
    let toml = std::fs::read_to_string(env.path("perpetual.toml")).unwrap()
        + &format!(
            "\n[notify]\ncommand = [\"sh\", \"-c\", \"cat >> '{}'; echo >> '{}'\"]\n",
            log.display(),
            log.display()
        );
    env.write("perpetual.toml", toml);
    add_tasks(&env, "claude_code", &["t"], 1);
    env.run(&["run", "--once"]);
    wait_until("the notification", || log.exists(), || env.listing());
    let text = std::fs::read_to_string(&log).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "agent_paused", "{text}");
    assert_eq!(first["agent"], "claude_code");
    assert!(
        first["reason"].as_str().unwrap().contains("not found"),
        "{text}"
    );
}

/// `status` shows whether a loop runs (pid, since, heartbeat) and one line per live
/// session with its pid.
#[test]
fn status_shows_the_running_loop_and_each_live_session_with_its_pid() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"env\", \"WORK_SECS=60\", \"sh\", \"{well}\"]\n"
    ));
    add_tasks(&env, "claude_code", &["t"], 3);
    let mut run = env.spawn(&["run"]);
    run.wait_for_log("started session_");
    // The loop logs the start when the session's supervisor is on its way; the
    // supervisor records the agent's pid once it has spawned it (CI once read the
    // status in between).
    let status = || env.run(&["status", "--json"]).expect(0).json();
    wait_until(
        "the live session's pid in status",
        || status()["loop"]["sessions"][0]["pid"].is_i64(),
        || format!("{}\n{}", status(), run.explain()),
    );
    let j = status();
    assert_eq!(j["loop"]["running"], true, "{j}");
    assert_eq!(j["loop"]["pid"], run.pid(), "{j}");
    let live = j["loop"]["sessions"].as_array().unwrap();
    assert_eq!(live.len(), 1, "{j}");
    let pid = live[0]["pid"].as_i64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let text = env.run(&["status"]).expect(0).stdout();
    assert!(
        text.contains(&format!("pid {}", run.pid())) && text.contains(&format!("pid {pid}")),
        "{text}"
    );
    run.stop();
    let j = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(j["loop"]["running"], false, "{j}");
}

/// The soak found it: an agent's own `session wrap` killed between its archive and its
/// file steps left a wrapped session without a handoff or a commit. The loop finishes
/// such a wrap when the session's processes are gone (here after a crash of both).
#[test]
fn a_wrap_cut_short_after_its_archive_is_finished_by_the_loop() {
    let fake = fixture("fake_agent.sh");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["env", "FAKE_MODE=linger", "FAKE_PEAK=30000", "sh", "{}"]
transcript = "{{root}}/transcripts/{{session}}.jsonl"
"#,
        fake.display()
    ));
    add_tasks(&env, "claude_code", &["t"], 2);
    let mut first = env.spawn(&["run"]);
    wait_until(
        "the agent to be at work",
        || env.try_count("SELECT COUNT(*) FROM checkpoints") == Some(1),
        || first.explain(),
    );
    first.kill9();
    for p in session_processes(env.root()) {
        unsafe {
            libc::kill(p.pid, libc::SIGKILL);
        }
    }
    // What a `session wrap` killed right after its database step leaves.
    {
        let db = rusqlite::Connection::open(env.path("perpetual.db")).unwrap();
        db.execute(
            "UPDATE sessions SET status = 'wrapped', wrapped_at = started_at, level = 'healthy',
                                 next_action = 'continue from 1/2'",
            [],
        )
        .unwrap();
    }
    let run = env.run(&["run", "--max-sessions", "0"]).expect(0);
    let s = &env.sessions()[0];
    let handoff = s["handoff_path"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}\n{}", run.explain()));
    assert!(env.path(handoff).is_file(), "{}", run.explain());
    assert!(
        s["wrap_steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("did not finish"),
        "{s}"
    );
    assert!(
        run.stderr().contains("in the middle of its own wrap"),
        "{}",
        run.explain()
    );
}

/// The soak found it: a git SIGKILLed mid-commit (with its session, or with the loop)
/// leaves `.git/index.lock` behind, and git never removes it: every later wrap commit
/// failed. A lock older than 30 s is taken for a killed git's and removed.
#[test]
fn a_stale_index_lock_left_by_a_killed_git_does_not_block_wrap_commits() {
    let env = Env::new();
    git_repo(&env);
    env.write(".git/index.lock", "");
    let ok = Command::new("touch")
        .args(["-d", "2 minutes ago"])
        .arg(env.path(".git/index.lock"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "1"])
        .expect(0);
    env.run(&["session", "start", "--agent", "claude_code"])
        .expect(0);
    let w = env
        .run(&["session", "wrap", "--progress", "1/1", "--json"])
        .expect(0)
        .json();
    let commit = commit_step(&w["steps"]);
    assert_eq!(commit["status"], "done", "{w}");
    assert!(!env.path(".git/index.lock").exists());
    assert_eq!(git(env.root(), &["diff", "--cached", "--name-only"]), "");
}

/// The third 2-hour soak: 3 wrap commits failed with "cannot lock ref 'HEAD': Unable to
/// create '.git/HEAD.lock': File exists": the auto gc an earlier commit had detached was
/// expiring reflogs. Here `HEAD.lock` is held (fresh, so not a killed git's) for 1.5 s
/// by "another git", and the wrap's commit waits it out instead of failing at once.
#[test]
fn a_head_lock_held_by_another_git_a_moment_does_not_fail_the_wrap_commit() {
    let env = Env::new();
    git_repo(&env);
    env.write("seed.txt", "x");
    git(env.root(), &["add", "seed.txt"]);
    git(env.root(), &["commit", "-q", "-m", "seed"]);
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "1"])
        .expect(0);
    env.run(&["session", "start", "--agent", "claude_code"])
        .expect(0);
    let lock = env.path(".git/HEAD.lock");
    env.write(".git/HEAD.lock", "");
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::remove_file(lock).unwrap();
    });
    let w = env
        .run(&["session", "wrap", "--progress", "1/1", "--json"])
        .expect(0)
        .json();
    releaser.join().unwrap();
    let commit = commit_step(&w["steps"]);
    assert_eq!(commit["status"], "done", "{w}");
    let log = git(env.root(), &["log", "--format=%s"]);
    assert_eq!(log.lines().count(), 2, "{log}");
    assert_eq!(git(env.root(), &["diff", "--cached", "--name-only"]), "");
}

/// The 2-hour soak: a session SIGKILLed in the middle of its own wrap took the git it was
/// running with it (the git was in the agent's process group and among its
/// descendants), leaving `.git/index.lock` behind, and 11 wrap commits failed on it. A
/// git that perpetual runs is never signalled with a session: here the session's wrap
/// is SIGTERMed (ignored) and SIGKILLed 3 s after the wrap request while its git waits
/// 6 s before committing, and the git still finishes.
#[test]
fn a_git_commit_under_way_in_a_sessions_own_wrap_outlives_the_sessions_sigkill() {
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"env\", \"SLOW_GIT_SECS=6\", \"sh\", \"{}\"]\n",
        agent("slow_git_wrapper")
    ));
    git_repo(&env);
    add_tasks(&env, "claude_code", &["job"], 2);
    let run = env.run(&["run", "--max-sessions", "1"]).expect(0);
    let s = env.sessions();
    assert_eq!(s.len(), 1, "{}", run.explain());
    // The loop had to end the session while its own wrap ran (grace 2 s, term 1 s).
    let log = run.stderr();
    assert!(log.contains("SIGKILL"), "{}", run.explain());
    // The git it was running finished all the same, a moment later.
    wait_until(
        "the wrap's git to finish (it is killed with the session without the fix)",
        || {
            std::fs::read_dir(env.path("fake"))
                .unwrap()
                .flatten()
                .any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("git_commit_done_")
                })
        },
        || run.explain(),
    );
    wait_until(
        "no index.lock",
        || !env.path(".git/index.lock").exists(),
        || run.explain(),
    );
    assert_eq!(git(env.root(), &["diff", "--cached", "--name-only"]), "");
    let handoff = format!(
        "session_handoffs/handoff_{}.md",
        s[0]["id"].as_str().unwrap()
    );
    assert!(
        git(env.root(), &["log", "--name-only", "--format="]).contains(&handoff),
        "{handoff} not committed\n{}",
        run.explain()
    );
}

/// Observation 14: the loop's log was never rotated. `run --log-dir` writes one file a
/// day and keeps the newest `--log-files`.
#[test]
fn the_loop_log_goes_to_daily_files_and_old_ones_are_deleted() {
    let env = Env::new();
    env.run(&["init"]).expect(0);
    for day in 1..=9 {
        let name = format!("loop-logs/run.2026-01-0{day}.log");
        env.write(&name, "an old day\n");
        let ok = Command::new("touch")
            .args(["-d", &format!("2026-01-0{day}")])
            .arg(env.path(&name))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let run = env.run(&[
        "run",
        "--once",
        "--log-dir",
        "loop-logs",
        "--log-files",
        "3",
    ]);
    assert_eq!(run.code(), 4, "{}", run.explain());
    assert_eq!(run.stderr(), "", "the log went to the file");
    let files = env.files_in("loop-logs");
    assert_eq!(files.len(), 3, "{files:?}");
    let today = files.last().unwrap();
    assert!(
        today.starts_with("run.") && today.ends_with(".log"),
        "{files:?}"
    );
    let text = std::fs::read_to_string(env.path(&format!("loop-logs/{today}"))).unwrap();
    assert!(text.contains("run: 0 session(s) started"), "{text}");
    assert!(!text.contains('\x1b'), "no terminal colours in a file");
}

/// Found running the soak with a copy of the binary under another name: the agents'
/// `perpetual` was not the loop's (not found). `.perpetual/bin/perpetual`, first on the
/// agent's PATH, links to the running binary whatever its name.
#[test]
fn the_agents_perpetual_is_the_running_binary_whatever_its_name() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"sh\", \"{well}\"]\n"
    ));
    add_tasks(&env, "claude_code", &["t"], 1);
    let elsewhere = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let renamed = elsewhere.path().join("perpetual-1.2.3");
    // A hard link: a copy would be open for writing a moment, and a test forking on
    // another thread meanwhile would make its exec fail with "text file busy".
    if std::fs::hard_link(env!("CARGO_BIN_EXE_perpetual"), &renamed).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_perpetual"), &renamed).unwrap();
    }
    let run = || {
        Command::new(&renamed)
            .args(["run", "--max-sessions", "1"])
            .env("PERPETUAL_ROOT", env.root())
            .env("PATH", "/usr/bin:/bin")
            .env_remove("PERPETUAL_SESSION")
            .output()
    };
    let out = run()
        .or_else(|e| {
            // A copy still held open for writing by a forked test process.
            assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}");
            std::thread::sleep(Duration::from_millis(500));
            run()
        })
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.task_json("t")["status"],
        "completed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_link(env.path(".perpetual/bin/perpetual")).unwrap(),
        renamed
    );
}

/// Appends a `[notify]` command to perpetual.toml that appends each event to a file
/// (one JSON object a line); returns the file.
fn notify_to_file(env: &Env) -> PathBuf {
    let log = env.path("notified.jsonl");
    let toml = std::fs::read_to_string(env.path("perpetual.toml")).unwrap()
        + &format!(
            "\n[notify]\ncommand = [\"sh\", \"-c\", \"cat >> '{}'; echo >> '{}'\"]\n",
            log.display(),
            log.display()
        );
    env.write("perpetual.toml", toml);
    log
}

/// The events the notify command received, in order.
fn notified(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Observation 3, the retry: a wrap commit that failed (here git's own pre-commit hook
/// refuses it) left its handoff staged and was never tried again. Nothing stays staged,
/// and the next wrap commits the outputs of the failed one with its own.
#[test]
fn a_failed_wrap_commit_leaves_nothing_staged_and_the_next_wrap_commits_its_outputs() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"sh\", \"{well}\"]\n"
    ));
    git_repo(&env);
    let refuse = env.path("refuse-commits");
    env.write(
        ".git/hooks/pre-commit",
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'refused by the hook' >&2; exit 1; fi\n",
            refuse.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        env.path(".git/hooks/pre-commit"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let log = notify_to_file(&env);
    add_tasks(&env, "claude_code", &["t1", "t2"], 1);

    std::fs::write(&refuse, "").unwrap();
    env.run(&["run", "--max-sessions", "1"]);
    let s = env.sessions();
    assert_eq!(s.len(), 1);
    let commit = commit_step(&s[0]["wrap_steps"]);
    assert_eq!(commit["status"], "failed", "{commit}");
    assert!(
        commit["detail"].as_str().unwrap().contains("next wrap"),
        "{commit}"
    );
    assert_eq!(git(env.root(), &["diff", "--cached", "--name-only"]), "");
    let first_handoff = s[0]["handoff_path"].as_str().unwrap().to_string();
    wait_until(
        "the operator to hear of the failed step",
        || {
            notified(&log)
                .iter()
                .any(|e| e["event"] == "wrap_step_failed")
        },
        || env.listing(),
    );
    let event = notified(&log)
        .into_iter()
        .find(|e| e["event"] == "wrap_step_failed")
        .unwrap();
    assert_eq!(event["session"], s[0]["id"], "{event}");
    assert!(
        event["reason"].as_str().unwrap().contains("commit"),
        "{event}"
    );

    std::fs::remove_file(&refuse).unwrap();
    env.run(&["run", "--max-sessions", "1"]).expect(0);
    let s = env.sessions();
    assert_eq!(s.len(), 2);
    let commit = commit_step(&s[1]["wrap_steps"]);
    assert_eq!(commit["status"], "done", "{commit}");
    assert!(
        commit["detail"]
            .as_str()
            .unwrap()
            .contains(s[0]["id"].as_str().unwrap()),
        "names the session whose outputs it commits too: {commit}"
    );
    let tracked = git(env.root(), &["ls-files", "session_handoffs"]);
    assert!(tracked.contains(&first_handoff), "{tracked}");
    assert_outputs_committed(&env);
}

/// Observation 4, the other way a loop dies: a second SIGTERM makes `perpetual run` exit
/// at once (status 1), leaving its agent running. The next loop follows that process
/// instead of starting a second session on its task.
#[test]
fn a_loop_stopped_with_two_sigterms_leaves_a_live_session_the_next_loop_adopts() {
    let ignorer = agent("ignorer");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"env\", \"IGNORE_TERM=1\", \"sh\", \"{ignorer}\"]\n"
    ));
    let log = notify_to_file(&env);
    add_tasks(&env, "claude_code", &["t"], 5);
    let mut first = env.spawn(&["run"]);
    wait_until(
        "the agent to be at work",
        || env.try_count("SELECT COUNT(*) FROM checkpoints") == Some(1),
        || first.explain(),
    );
    first.signal(libc::SIGTERM);
    // Two signals before the loop has seen the first are one signal (POSIX does not
    // queue them): wait until it has.
    first.wait_for_log("signal again to exit at once");
    first.signal(libc::SIGTERM);
    let (status, _) = first.wait_exit(common::PATIENCE);
    assert_eq!(status.code(), Some(1), "{}", first.explain());
    let left = session_processes(env.root());
    assert!(!left.is_empty(), "the agent outlives the loop");

    let sampler = Sampler::start(env.root());
    let mut second = env.spawn(&["run"]);
    second.wait_for_log("adopt");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions"),
        1,
        "no second session on the task\n{}",
        second.explain()
    );
    // It ignores every request: the second loop's stop ends it with SIGKILL.
    second.stop();
    let most = sampler.finish();
    assert_eq!(most.get("claude_code"), Some(&1), "{most:?}");
    assert!(session_processes(env.root()).is_empty());
    let s = env.sessions();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["status"], "wrapped");
    // The operator hears that it had to be SIGKILLed.
    let killed: Vec<Value> = notified(&log)
        .into_iter()
        .filter(|e| e["event"] == "session_killed")
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!(killed[0]["session"], s[0]["id"]);
}

/// Observation 15, the other half: a command that exists but cannot be executed is
/// reported as such, pauses the agent at once, and costs no backup or handoff.
#[test]
fn an_agent_command_that_is_not_executable_pauses_the_agent_at_once() {
    let (env, _guard) = root_with(
        r#"
[agents.claude_code]
command = ["./agent.sh"]
"#,
    );
    env.write("agent.sh", "#!/bin/sh\nexit 0\n");
    add_tasks(&env, "claude_code", &["t"], 1);
    let run = env.run(&["run", "--once"]);
    assert_eq!(run.code(), 4, "{}", run.explain());
    let a = agent_status(&env, "claude_code");
    let reason = a["paused"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("./agent.sh") && reason.contains("not an executable"),
        "{a}"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM sessions"), 0);
    assert!(env.files_in("backups").is_empty());
    assert!(env.files_in("session_handoffs").is_empty());
}

/// Operators hear about trouble, and a notify command that fails is logged, never
/// fatal: here the disk is "low" (a floor no disk reaches) and the command exits 3.
#[test]
fn a_failing_notify_command_is_logged_and_the_loop_goes_on() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"sh\", \"{well}\"]\n"
    ));
    let log = env.path("notified.jsonl");
    let toml = std::fs::read_to_string(env.path("perpetual.toml"))
        .unwrap()
        .replace("[run]\n", "[run]\nmin_free_disk_mb = 1000000000\n")
        + &format!(
            "\n[notify]\ncommand = [\"sh\", \"-c\", \"cat >> '{}'; echo >> '{}'; exit 3\"]\n",
            log.display(),
            log.display()
        );
    env.write("perpetual.toml", toml);
    add_tasks(&env, "claude_code", &["t"], 1);
    let run = env.run(&["run", "--once"]);
    assert_eq!(run.code(), 4, "{}", run.explain());
    assert!(
        run.stderr().contains("the notify command") && run.stderr().contains("failed"),
        "{}",
        run.explain()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "disk_low", "{text}");
    assert!(first["reason"].as_str().unwrap().contains("free"), "{text}");
}

/// The systemd unit in examples/ gives the loop longer to stop than it can take with
/// the default settings: grace_secs for the wrap, then term_secs to SIGKILL.
#[test]
fn the_systemd_unit_waits_longer_than_the_loop_takes_to_stop() {
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/perpetual.service"),
    )
    .unwrap();
    let timeout: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec in the unit")
        .trim()
        .parse()
        .unwrap();
    let run = perpetual::config::Config::default().run;
    assert!(
        timeout > run.grace_secs + run.term_secs,
        "TimeoutStopSec={timeout} but grace_secs + term_secs = {}",
        run.grace_secs + run.term_secs
    );
    assert!(unit.contains("KillMode=mixed"), "SIGTERM to the loop alone");
    assert!(unit.contains("Restart=always"));
}

/// Observation 5, the hardest child: one that `setsid`s away and clears its
/// environment, started just before its agent exits (before any look of the loop's at
/// the process table could see it as the agent's child). It is found by descent (the
/// loop is its subreaper) and ends with the session.
#[test]
fn a_child_that_setsids_and_clears_its_environment_dies_with_its_session() {
    let (env, _guard) = root_with(
        r#"
[agents.claude_code]
command = ["sh", "-c", "setsid env -i sleep 300 & echo $! > \"$PERPETUAL_ROOT/child.pid\"; exit 0"]
"#,
    );
    add_tasks(&env, "claude_code", &["t"], 1);
    let run = env.run(&["run", "--max-sessions", "1"]);
    let pid: i32 = std::fs::read_to_string(env.path("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .is_some_and(|s| !s.contains(") Z"))
    };
    let was_alive = alive();
    if was_alive {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert!(
        !was_alive,
        "the child {pid} outlived its session\n{}",
        run.explain()
    );
    assert!(
        run.stderr().contains("process(es) behind"),
        "{}",
        run.explain()
    );
}

/// The same child while another agent's session runs: nothing says which of the two
/// it belongs to, so both count it and neither kills it while the other may still own
/// it; it ends once the other session has ended, before the loop stops.
#[test]
fn a_stray_that_another_running_session_may_own_is_not_killed_until_that_session_ends() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.long]
command = ["env", "WORK_SECS=5", "sh", "{well}"]

[agents.stray]
command = ["sh", "-c", "sleep 1; setsid env -i sleep 300 & echo $! > \"$PERPETUAL_ROOT/child.pid\"; exit 0"]
"#
    ));
    add_tasks(&env, "long", &["l"], 1);
    add_tasks(&env, "stray", &["s"], 1);
    let mut run = env.spawn(&["run", "--max-sessions", "2"]);
    let pid_file = env.path("child.pid");
    wait_until("the stray", || pid_file.exists(), || run.explain());
    std::thread::sleep(Duration::from_millis(300));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .is_some_and(|s| !s.contains(") Z"))
    };
    std::thread::sleep(Duration::from_millis(1500));
    let long_running =
        env.count("SELECT COUNT(*) FROM sessions WHERE agent = 'long' AND status = 'active'") == 1;
    let alive_while_long_runs = alive();
    let (status, _) = run.wait_exit(common::PATIENCE);
    let alive_at_the_end = alive();
    if alive_at_the_end {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert_eq!(status.code(), Some(0), "{}", run.explain());
    assert!(
        long_running,
        "the test needs the long session still running\n{}",
        run.explain()
    );
    assert!(
        alive_while_long_runs,
        "killed while another session may own it\n{}",
        run.explain()
    );
    assert!(
        !alive_at_the_end,
        "the stray {pid} outlived both sessions\n{}",
        run.explain()
    );
}

/// What the loop's own commands leave behind is no session's: a notify command that
/// hands its work to a `setsid` child (a mailer, say) is not cut short when a session
/// ends, although the loop, a subreaper, adopts that child.
#[test]
fn a_notify_commands_detached_child_is_not_taken_for_a_sessions_stray() {
    let well = agent("well_behaved");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.missing]
command = ["not-installed-here"]

[agents.well]
command = ["env", "WORK_SECS=2", "sh", "{well}"]
"#
    ));
    let pid_file = env.path("notify_child.pid");
    let toml = std::fs::read_to_string(env.path("perpetual.toml")).unwrap()
        + &format!(
            "\n[notify]\ncommand = [\"sh\", \"-c\", \"cat > /dev/null; setsid sleep 60 & echo $! > '{}'\"]\n",
            pid_file.display()
        );
    env.write("perpetual.toml", toml);
    add_tasks(&env, "missing", &["m"], 1);
    add_tasks(&env, "well", &["w"], 1);
    let run = env.run(&["run", "--max-sessions", "1"]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|_| panic!("no notification\n{}", run.explain()))
        .trim()
        .parse()
        .unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_some_and(|s| !s.contains(") Z"));
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    assert_eq!(run.code(), 0, "{}", run.explain());
    assert_eq!(env.task_json("w")["status"], "completed");
    assert!(
        alive,
        "the notify command's child was killed\n{}",
        run.explain()
    );
}

/// Operators hear about trouble: a session stopped past the hard stop with its task
/// unfinished flags the task for review, and the notify command hears it.
#[test]
fn the_notify_command_hears_about_a_task_that_needs_review() {
    let ignorer = agent("ignorer");
    let (env, _guard) = root_with(&format!(
        "[agents.claude_code]\ncommand = [\"env\", \"PEAK=190000\", \"sh\", \"{ignorer}\"]\n"
    ));
    let log = notify_to_file(&env);
    add_tasks(&env, "claude_code", &["t"], 5);
    let run = env.run(&["run", "--max-sessions", "1"]).expect(0);
    let flagged = env.task_json("t");
    assert!(
        flagged["needs_review"].is_string(),
        "{flagged}\n{}",
        run.explain()
    );
    let events = notified(&log);
    let review: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "task_needs_review")
        .collect();
    assert_eq!(review.len(), 1, "{events:?}\n{}", run.explain());
    assert_eq!(review[0]["task"], "t");
    assert_eq!(review[0]["agent"], "claude_code");
}

/// Operators hear about trouble: no new pair for `notify.quiet_hours` is an event
/// (once, until pairs come again).
#[test]
fn the_notify_command_hears_when_no_pair_came_for_the_quiet_hours() {
    let (env, _guard) = root_with("");
    let log = notify_to_file(&env);
    let toml = std::fs::read_to_string(env.path("perpetual.toml"))
        .unwrap()
        .replace("[notify]\n", "[notify]\nquiet_hours = 6\n");
    env.write("perpetual.toml", toml);
    env.drop_file("droid", "a.json", flat(&[("Q?", "A.")]));
    env.run_at("2026-03-01T00:00:00Z", &["ingest"]).expect(0);
    env.run_at("2026-03-01T05:59:00Z", &["run", "--once"]);
    assert!(
        notified(&log).iter().all(|e| e["event"] != "quiet"),
        "{:?}",
        notified(&log)
    );
    let run = env.run_at("2026-03-01T06:01:00Z", &["run", "--once"]);
    let quiet: Vec<Value> = notified(&log)
        .into_iter()
        .filter(|e| e["event"] == "quiet")
        .collect();
    assert_eq!(quiet.len(), 1, "{quiet:?}\n{}", run.explain());
    assert!(
        quiet[0]["reason"]
            .as_str()
            .unwrap()
            .contains("2026-03-01T00:00:00"),
        "{quiet:?}"
    );
}

/// The 70-minute soak found it: a loop SIGKILLed after committing a session's row but
/// before recording its run left the session `active` with no run, which no later loop
/// adopted; with one slot the agent never got another session. The debug-build
/// failpoint `PERPETUAL_FAILPOINT=run:after_session_start` kills the loop exactly there.
#[test]
fn a_loop_killed_between_a_sessions_start_and_its_run_leaves_no_session_stuck_active() {
    use std::os::unix::process::ExitStatusExt;
    let fake = fixture("fake_agent.sh");
    let (env, _guard) = root_with(&format!(
        r#"
[agents.claude_code]
command = ["sh", "{}"]
transcript = "{{root}}/transcripts/{{session}}.jsonl"

[agents.claude_code.budget]
slots = 1
"#,
        fake.display()
    ));
    add_tasks(&env, "claude_code", &["t"], 2);
    // A session a person starts has no run: no loop adopts or wraps it.
    add_tasks(&env, "droid", &["by_hand"], 2);
    let by_hand = env
        .run(&["session", "start", "--agent", "droid", "--json"])
        .expect(0)
        .json();
    assert!(by_hand.get("run_id").is_none(), "{by_hand}");
    let by_hand = by_hand["session"]["id"].as_str().unwrap().to_string();
    let killed = env.run_with(
        &["run"],
        &[("PERPETUAL_FAILPOINT", "run:after_session_start")],
    );
    assert_eq!(
        killed.output.status.signal(),
        Some(libc::SIGKILL),
        "the failpoint kills the loop\n{}",
        killed.explain()
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM sessions WHERE status = 'active' AND agent = 'claude_code'"
        ),
        1,
        "{}",
        killed.explain()
    );
    assert!(
        !env.path("fake").exists(),
        "no agent ran\n{}",
        killed.explain()
    );

    let run = env
        .run_within(Duration::from_secs(60), &["run", "--max-sessions", "1"])
        .expect(0);
    let (s, mine): (Vec<Value>, Vec<Value>) = env
        .sessions()
        .into_iter()
        .partition(|x| x["agent"] == "claude_code");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["id"], by_hand.as_str());
    assert_eq!(mine[0]["status"], "active", "{}", run.explain());
    assert_eq!(
        env.count(&format!(
            "SELECT COUNT(*) FROM loop_runs WHERE session_id = '{by_hand}'"
        )),
        0
    );
    assert_eq!(s.len(), 2, "{}", run.explain());
    assert_eq!(s[0]["status"], "wrapped", "{}", run.explain());
    assert_eq!(s[1]["status"], "wrapped", "{}", run.explain());
    assert_eq!(s[1]["task_id"], "t");
    assert_eq!(env.task_json("t")["done"], 1, "{}", run.explain());
    assert!(
        run.stderr().contains("its command never started"),
        "{}",
        run.explain()
    );
    assert!(session_processes(env.root()).is_empty());
}
