//! `perpetual session ...` and `perpetual monitor`, driven through the real binary.
//! Time is set with `PERPETUAL_NOW`, so durations and the daily reset are exact.

mod common;

use common::{Env, git};
use std::path::Path;

fn integrity(path: &Path) -> String {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open backup");
    db.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

const NO_GIT_CONFIG: [(&str, &str); 2] = [
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
];

/// Seed 002, "Perpetual Mining Pattern - Test Results": session_20251106_001355 on
/// integrate_sessions_101_140, checkpoints at 1/40 and 10/40, a wrap at 143,000 of
/// 200,000 tokens (71.5%) after 6 minutes with a backup, a handoff and a commit in the
/// seeds' form; then the next start resumes at 10/40 with the handoff's next action.
#[test]
fn seeds_test_run_start_two_checkpoints_wrap_at_143000_then_resume_at_10_of_40() {
    let env = Env::new();
    git(env.root(), &["init", "-q"]);
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plan.toml");
    env.run(&["task", "import", plan]).expect(0);
    // Something of the user's already staged: the wrap must not commit it.
    env.write("notes.txt", "mine\n");
    git(env.root(), &["add", "notes.txt"]);
    let at = |now: &str, args: &[&str]| {
        let mut envs = vec![("PERPETUAL_NOW", now)];
        envs.extend(NO_GIT_CONFIG);
        env.run_with(args, &envs)
    };

    let run = at(
        "2025-11-06T00:13:55Z",
        &["session", "start", "--agent", "claude_code"],
    )
    .expect(0);
    let out = run.stdout();
    assert!(
        out.contains("session   session_20251106_001355 (claude_code)")
            && out.contains("task      integrate_sessions_101_140 (priority 1), new")
            && out.contains("progress  0/40 (0.0%)")
            && out.contains("tokens 0 / 200,000"),
        "{}",
        run.explain()
    );

    let run = at(
        "2025-11-06T00:15:10Z",
        &[
            "session",
            "checkpoint",
            "--progress",
            "1/40",
            "--tokens",
            "15000",
            "--note",
            "Database status checked",
        ],
    )
    .expect(0);
    assert!(
        run.stdout()
            .contains("checkpoint 1 of session_20251106_001355"),
        "{}",
        run.explain()
    );
    let run = at(
        "2025-11-06T00:18:40Z",
        &[
            "session",
            "checkpoint",
            "--progress",
            "10/40",
            "--tokens",
            "42000",
            "--note",
            "Droid inbox checked: 29 files, all already integrated",
        ],
    )
    .expect(0);
    assert!(
        run.stdout()
            .contains("checkpoint 2 of session_20251106_001355")
            && run.stdout().contains("10/40 (25.0%)")
            && run.stdout().contains("healthy: keep working"),
        "{}",
        run.explain()
    );
    env.write(
        "outbox/claude_code/integration_summary.json",
        "{\"pairs\": 0}\n",
    );

    let run = at(
        "2025-11-06T00:19:50Z",
        &[
            "session",
            "wrap",
            "--tokens",
            "143000",
            "--next",
            "Continue integration from session 111",
            "--json",
        ],
    )
    .expect(0);
    let w = run.json();
    assert_eq!(w["level"], "healthy", "{}", run.explain());
    assert_eq!(w["duration_seconds"], 355);
    assert_eq!(w["checkpoints"], 2);
    assert_eq!(w["usage"][0]["percent"], 71.5);
    let steps: Vec<(String, String)> = w["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for step in ["progress", "archive", "backup", "handoff", "commit"] {
        assert!(
            steps.contains(&(step.to_string(), "done".to_string())),
            "{step} not done: {steps:?}\n{}",
            run.explain()
        );
    }

    // The commit: the seeds' message, only the outputs.
    let message = git(env.root(), &["log", "-1", "--format=%B"]);
    assert_eq!(
        message.trim_end(),
        "Session Wrap: integrate_sessions_101_140\n\
         \n\
         Token usage: 71.5% of budget\n\
         Duration: 6 minutes\n\
         \n\
         Progress: 10/40\n\
         Checkpoints: 2\n\
         \n\
         Session: session_20251106_001355\n\
         Started: 2025-11-06T00:13:55Z"
    );
    assert_eq!(
        w["commit"].as_str().unwrap(),
        git(env.root(), &["rev-parse", "HEAD"]).trim()
    );
    let mut files: Vec<String> = git(env.root(), &["show", "--name-only", "--format=", "HEAD"])
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "outbox/claude_code/integration_summary.json",
            "session_handoffs/handoff_session_20251106_001355.md"
        ]
    );
    assert_eq!(
        git(env.root(), &["log", "-1", "--format=%an <%ae>"]).trim(),
        "perpetual <perpetual@localhost>",
        "identity fallback"
    );
    assert_eq!(
        git(env.root(), &["diff", "--cached", "--name-only"]).trim(),
        "notes.txt",
        "the user's staged file stays staged, uncommitted"
    );

    // The handoff.
    let handoff =
        std::fs::read_to_string(env.path("session_handoffs/handoff_session_20251106_001355.md"))
            .unwrap();
    for want in [
        "# Session handoff: session_20251106_001355",
        "| task | integrate_sessions_101_140 (priority 1) |",
        "| progress | 10/40 (25.0%) (was 0 at the start) |",
        "| duration | 6 minutes |",
        "| tokens | 143,000 / 200,000 (71.5%, healthy) |",
        "## Checkpoints (2)",
        "| 1 | 2025-11-06T00:15:10Z | 1/40 (2.5%) | 15,000 |",
        "Droid inbox checked: 29 files, all already integrated",
        "- pairs integrated by the session (the files it integrated): 0",
        "## Next action\n\nContinue integration from session 111",
    ] {
        assert!(handoff.contains(want), "missing {want:?} in\n{handoff}");
    }

    // The backup.
    let backups = env.files_in("backups");
    assert_eq!(
        backups,
        ["perpetual_20251106_001950_session_20251106_001355.db"]
    );
    assert_eq!(integrity(&env.path("backups").join(&backups[0])), "ok");

    // The session is archived; the task keeps its progress.
    let list = env.run(&["session", "list", "--json"]).expect(0).json();
    assert_eq!(list[0]["status"], "wrapped");
    assert_eq!(list[0]["tokens_used"], 143_000);
    let status = env.run(&["session", "status"]).expect(4);
    assert!(
        status.stdout().contains("no active session"),
        "{}",
        status.explain()
    );

    // The next start resumes from the handoff.
    let run = at(
        "2025-11-06T00:25:00Z",
        &["session", "start", "--agent", "claude_code", "--json"],
    )
    .expect(0);
    let b = run.json();
    assert_eq!(b["outcome"], "started", "{}", run.explain());
    assert_eq!(b["session"]["id"], "session_20251106_002500");
    assert_eq!(b["resumed"], true);
    assert_eq!(b["task"]["id"], "integrate_sessions_101_140");
    assert_eq!(
        (b["task"]["done"].as_u64(), b["task"]["total"].as_u64()),
        (Some(10), Some(40))
    );
    assert_eq!(
        b["previous"]["next_action"],
        "Continue integration from session 111"
    );
    assert_eq!(
        b["previous"]["handoff_path"],
        "session_handoffs/handoff_session_20251106_001355.md"
    );
    assert_eq!(
        b["last_checkpoint"]["note"],
        "Droid inbox checked: 29 files, all already integrated"
    );
    let run = env.run(&["session", "status"]).expect(0);
    assert!(
        run.stdout()
            .contains("integrate_sessions_101_140: 10/40 (25.0%)"),
        "{}",
        run.explain()
    );
    // The human brief says the same.
    env.run(&["session", "wrap"]).expect(0);
    let run = at(
        "2025-11-06T00:30:00Z",
        &["session", "start", "--agent", "claude_code"],
    )
    .expect(0);
    assert!(
        run.stdout().contains("resumed") && run.stdout().contains("progress  10/40 (25.0%)"),
        "{}",
        run.explain()
    );
}

#[test]
fn session_ids_are_unique_when_two_start_in_the_same_second() {
    let env = Env::new();
    for id in ["one", "two"] {
        env.run(&["task", "add", id, "--agent", "claude_code"])
            .expect(0);
    }
    env.run(&["task", "add", "three", "--agent", "zai"])
        .expect(0);
    let now = "2026-02-03T04:05:06Z";
    let a = env
        .run_at(
            now,
            &["session", "start", "--agent", "claude_code", "--json"],
        )
        .expect(0)
        .json();
    let b = env
        .run_at(
            now,
            &["session", "start", "--agent", "claude_code", "--json"],
        )
        .expect(0)
        .json();
    let c = env
        .run_at(now, &["session", "start", "--agent", "zai", "--json"])
        .expect(0)
        .json();
    assert_eq!(a["session"]["id"], "session_20260203_040506");
    assert_eq!(b["session"]["id"], "session_20260203_040506_2");
    assert_eq!(c["session"]["id"], "session_20260203_040506_3");
    // The second session of claude_code took the next task, not the busy one.
    assert_eq!(a["task"]["id"], "one");
    assert_eq!(b["task"]["id"], "two");
    // Nothing left for claude_code: exit 4, and the busy tasks say why.
    let run = env
        .run_at(now, &["session", "start", "--agent", "claude_code"])
        .expect(4);
    assert!(
        run.stdout()
            .contains("in progress in another active session"),
        "{}",
        run.explain()
    );
}

#[test]
fn which_session_a_command_means() {
    let env = Env::new();
    env.run(&["task", "add", "c1", "--agent", "claude_code"])
        .expect(0);
    env.run(&["task", "add", "z1", "--agent", "zai"]).expect(0);
    let run = env.run(&["session", "checkpoint", "--note", "x"]).expect(1);
    assert!(
        run.stderr().contains("no active session"),
        "{}",
        run.explain()
    );
    let c = env
        .run_at(
            "2026-01-01T10:00:00Z",
            &["session", "start", "--agent", "claude_code", "--json"],
        )
        .expect(0)
        .json()["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // One active session: it is the current one.
    env.run(&["session", "checkpoint", "--progress", "1"])
        .expect(0);
    let z = env
        .run_at(
            "2026-01-01T10:00:01Z",
            &["session", "start", "--agent", "zai", "--json"],
        )
        .expect(0)
        .json()["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Two: an error that names both.
    let run = env
        .run(&["session", "checkpoint", "--progress", "2"])
        .expect(1);
    assert!(
        run.stderr().contains(&c)
            && run.stderr().contains(&z)
            && run.stderr().contains("--session"),
        "{}",
        run.explain()
    );
    // --agent, PERPETUAL_SESSION and --session each choose.
    let j = env
        .run(&["session", "checkpoint", "--agent", "zai", "--json"])
        .expect(0)
        .json();
    assert_eq!(j["session_id"], z.as_str());
    let j = env
        .run_with(
            &["session", "checkpoint", "--json"],
            &[("PERPETUAL_SESSION", &c)],
        )
        .expect(0)
        .json();
    assert_eq!(j["session_id"], c.as_str());
    assert_eq!(j["number"], 2);
    let j = env
        .run(&["session", "status", "--session", &z, "--json"])
        .expect(0)
        .json();
    assert_eq!(j["session"]["agent"], "zai");
    assert_eq!(j["checkpoints"].as_array().unwrap().len(), 1);
    env.run(&["session", "wrap", "--session", &z]).expect(0);
    // A wrapped session takes no more checkpoints and cannot wrap again.
    env.run(&["session", "checkpoint", "--session", &z])
        .expect(1);
    env.run(&["session", "wrap", "--session", &z]).expect(1);
    let list = env.run(&["session", "list", "--json"]).expect(0).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let list = env.run(&["session", "list"]).expect(0);
    assert!(
        list.stdout().contains(&c) && list.stdout().contains("wrapped"),
        "{}",
        list.explain()
    );
}

#[test]
fn checkpoint_at_the_wrap_threshold_says_wrap_now() {
    let env = Env::new();
    env.run(&["task", "add", "t", "--agent", "claude_code"])
        .expect(0);
    env.run(&[
        "session",
        "start",
        "--agent",
        "claude_code",
        "--budget",
        "100000",
    ])
    .expect(0);
    let run = env
        .run(&["session", "checkpoint", "--tokens", "75000", "--json"])
        .expect(0);
    assert_eq!(run.json()["level"], "warning", "{}", run.explain());
    assert_eq!(run.json()["wrap_now"], false);
    let run = env
        .run(&["session", "checkpoint", "--tokens", "85000"])
        .expect(0);
    assert!(
        run.stdout().contains("WRAP NOW") && run.stdout().contains("perpetual session wrap"),
        "{}",
        run.explain()
    );
    let j = env.run(&["session", "status", "--json"]).expect(0).json();
    assert_eq!(j["level"], "wrap");
    assert_eq!(
        j["usage"][0]["limit"], 100_000,
        "--budget overrides the agent's"
    );
}

#[test]
fn wrap_past_the_hard_stop_with_the_task_unfinished_flags_it_for_review() {
    let env = Env::new();
    env.run(&[
        "task",
        "add",
        "big",
        "--agent",
        "claude_code",
        "--total",
        "40",
    ])
    .expect(0);
    env.run(&[
        "task",
        "add",
        "small",
        "--agent",
        "claude_code",
        "--total",
        "2",
    ])
    .expect(0);
    env.run(&["session", "start", "--agent", "claude_code"])
        .expect(0);
    let run = env
        .run(&[
            "session",
            "wrap",
            "--tokens",
            "181000",
            "--progress",
            "12/40",
        ])
        .expect(0);
    assert!(
        run.stdout().contains("hard_stop") && run.stdout().contains("REVIEW"),
        "{}",
        run.explain()
    );
    let t = env.run(&["task", "show", "big", "--json"]).expect(0).json();
    let reason = t["needs_review"].as_str().unwrap();
    assert!(
        reason.contains("hard_stop") && reason.contains("12/40"),
        "{reason}"
    );
    assert_eq!(t["status"], "in_progress");
    let list = env.run(&["task", "list"]).expect(0);
    assert!(list.stdout().contains("needs review"), "{}", list.explain());
    // The next session resumes it and shows the flag.
    let run = env
        .run(&["session", "start", "--agent", "claude_code"])
        .expect(0);
    assert!(
        run.stdout().contains("big") && run.stdout().contains("needs review"),
        "{}",
        run.explain()
    );
    env.run(&["session", "wrap", "--tokens", "1000"]).expect(0);

    // Past the hard stop with the task finished: completed, not flagged.
    env.run(&[
        "session",
        "start",
        "--agent",
        "claude_code",
        "--task",
        "small",
    ])
    .expect(0);
    let w = env
        .run(&[
            "session",
            "wrap",
            "--tokens",
            "195000",
            "--progress",
            "2/2",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(w["level"], "critical");
    assert!(w["needs_review"].is_null());
    assert_eq!(w["completed"]["task"], "small");
    let t = env
        .run(&["task", "show", "small", "--json"])
        .expect(0)
        .json();
    assert!(t["needs_review"].is_null());
    assert_eq!(t["status"], "completed");
}

#[test]
fn the_api_call_budget_resets_at_midnight_utc() {
    let env = Env::new();
    // droid's default budget: 1,000 API calls a day.
    for id in ["b1", "b2", "b3"] {
        env.run(&["task", "add", id, "--agent", "droid"]).expect(0);
    }
    env.run_at(
        "2026-01-01T23:50:00Z",
        &["session", "start", "--agent", "droid"],
    )
    .expect(0);
    let run = env
        .run_at(
            "2026-01-01T23:55:00Z",
            &["session", "checkpoint", "--api-calls", "900", "--json"],
        )
        .expect(0);
    let j = run.json();
    assert_eq!(j["level"], "hard_stop", "{}", run.explain());
    assert_eq!(j["usage"][0]["kind"], "api_calls");
    assert_eq!(j["usage"][0]["used"], 900);
    assert_eq!(j["wrap_now"], true);
    env.run_at("2026-01-01T23:56:00Z", &["session", "wrap"])
        .expect(0);

    // The same day: refused, with the reset time.
    let run = env
        .run_at(
            "2026-01-01T23:59:59Z",
            &["session", "start", "--agent", "droid"],
        )
        .expect(5);
    assert!(
        run.stdout().contains("API calls today 900 / 1,000")
            && run.stdout().contains("resets at 2026-01-02T00:00:00Z"),
        "{}",
        run.explain()
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions"),
        1,
        "no session started"
    );

    // After 00:00 UTC the count starts again.
    let run = env
        .run_at(
            "2026-01-02T00:00:00Z",
            &["session", "start", "--agent", "droid", "--json"],
        )
        .expect(0);
    let j = run.json();
    assert_eq!(j["usage"][0]["kind"], "api_calls", "{}", run.explain());
    assert_eq!(j["usage"][0]["used"], 0);
    assert_eq!(j["level"], "healthy");
    let j = env
        .run_at(
            "2026-01-02T08:00:00Z",
            &["session", "checkpoint", "--api-calls", "100", "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(j["usage"][0]["used"], 100);
    assert_eq!(j["level"], "healthy");
}

#[test]
fn slots_and_wall_time_budgets() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[agents.droid.budget]\ntokens_per_session = 0\nslots = 2\n\
         [agents.zai.budget]\ntokens_per_session = 0\nwall_minutes_per_session = 480\n",
    );
    for id in ["j1", "j2", "j3"] {
        env.run(&["task", "add", id, "--agent", "droid"]).expect(0);
    }
    env.run(&["session", "start", "--agent", "droid"]).expect(0);
    let run = env.run(&["session", "start", "--agent", "droid"]).expect(0);
    assert!(run.stdout().contains("slots 2 / 2"), "{}", run.explain());
    let run = env.run(&["session", "start", "--agent", "droid"]).expect(5);
    assert!(
        run.stdout().contains("slots 2 / 2") && run.stdout().contains("free a slot"),
        "{}",
        run.explain()
    );

    env.run(&["task", "add", "long", "--agent", "zai"])
        .expect(0);
    env.run_at(
        "2026-01-01T00:00:00Z",
        &["session", "start", "--agent", "zai"],
    )
    .expect(0);
    let j = env
        .run_at(
            "2026-01-01T07:00:00Z",
            &["session", "status", "--agent", "zai", "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(j["usage"][0]["kind"], "wall_time");
    assert_eq!(j["usage"][0]["used"], 420 * 60);
    assert_eq!(j["level"], "wrap", "7 h of 8 is 87.5%");
}

#[test]
fn wrap_with_full_progress_completes_grades_and_the_next_start_takes_the_next_task() {
    let env = Env::new();
    env.run(&[
        "task",
        "add",
        "first",
        "--agent",
        "claude_code",
        "--priority",
        "1",
        "--total",
        "3",
        "--estimated-tokens",
        "50000",
    ])
    .expect(0);
    env.run(&[
        "task",
        "add",
        "second",
        "--agent",
        "claude_code",
        "--after",
        "first",
    ])
    .expect(0);
    env.run(&["session", "start", "--agent", "claude_code"])
        .expect(0);
    let w = env
        .run(&[
            "session",
            "wrap",
            "--tokens",
            "40000",
            "--progress",
            "3/3",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(w["completed"]["grade"]["letter"], "A");
    assert!(w["next_action"].as_str().unwrap().contains("second"), "{w}");
    assert!(env.path("task_reports/first.md").is_file());
    let handoff = std::fs::read_to_string(env.path(w["handoff"].as_str().unwrap())).unwrap();
    assert!(handoff.contains("completed, grade A"), "{handoff}");
    let j = env
        .run(&["session", "start", "--agent", "claude_code", "--json"])
        .expect(0)
        .json();
    assert_eq!(j["task"]["id"], "second");
    assert_eq!(j["resumed"], false);
}

#[test]
fn a_wrap_step_that_cannot_run_does_not_stop_the_others() {
    let env = Env::new();
    env.run(&["task", "add", "t", "--agent", "zai"]).expect(0);
    env.run(&["session", "start", "--agent", "zai"]).expect(0);
    // backups/ is a file: the backup step cannot run. No git repository either.
    env.write("backups", "not a folder");
    let run = env.run(&["session", "wrap", "--json"]).expect(6);
    let j = run.json();
    let status = |step: &str| {
        j["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step)
            .map(|s| s["status"].as_str().unwrap().to_string())
    };
    assert_eq!(
        status("backup").as_deref(),
        Some("failed"),
        "{}",
        run.explain()
    );
    assert_eq!(status("handoff").as_deref(), Some("done"));
    assert_eq!(status("commit").as_deref(), Some("skipped"));
    assert_eq!(status("archive").as_deref(), Some("done"));
    assert_eq!(j["session"]["status"], "wrapped");
    assert!(j["session"]["handoff_path"].is_string());
}

#[test]
fn backups_rotate_keeping_the_last_k() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[wrap]\nbackups_kept = 2\nbackup_min_interval_secs = 0\n",
    );
    env.run(&["task", "add", "t", "--agent", "zai"]).expect(0);
    for minute in ["01", "02", "03"] {
        env.run_at(
            &format!("2026-01-01T10:{minute}:00Z"),
            &["session", "start", "--agent", "zai"],
        )
        .expect(0);
        env.run_at(&format!("2026-01-01T10:{minute}:30Z"), &["session", "wrap"])
            .expect(0);
    }
    assert_eq!(
        env.files_in("backups"),
        [
            "perpetual_20260101_100230_session_20260101_100200.db",
            "perpetual_20260101_100330_session_20260101_100300.db"
        ]
    );
}

#[test]
fn the_backup_opens_cleanly_while_an_ingest_writes() {
    let env = Env::new();
    // Small checkpoints so the writer commits often.
    env.write(
        "perpetual.toml",
        "[ingest]\ncheckpoint_every = 50\n[wrap]\nbackup_min_interval_secs = 0\n",
    );
    use perpetual::generate::{DropLayout, GenConfig, generate};
    let files = generate(&GenConfig {
        seed: 11,
        files: 120,
        pairs_per_file: 400,
        layouts: vec![DropLayout::Nested, DropLayout::Flat],
        ..GenConfig::default()
    });
    for i in 0..50 {
        env.run(&["task", "add", &format!("t{i}"), "--agent", "claude_code"])
            .expect(0);
    }
    // The watcher writes while drops keep coming, so the writer is at work during the
    // wraps however fast the build is (a one-shot `ingest` of a fixed set of drops
    // finished before the first wrap in a release build).
    let mut watch = env.spawn(&["watch"]);
    watch.wait_for_log("watching");
    let mut waiting = files.iter();
    let mut during = 0;
    let mut wraps = 0;
    while during < 3 {
        assert!(
            wraps < 50,
            "no wrap in {wraps} while the watcher wrote; {during} so far"
        );
        for f in waiting.by_ref().take(4) {
            env.drop_file("droid", &f.name, &f.bytes);
        }
        let pairs_before = env.count("SELECT COUNT(*) FROM pairs");
        env.run(&["session", "start", "--agent", "claude_code"])
            .expect(0);
        let w = env.run(&["session", "wrap", "--json"]).expect(0).json();
        wraps += 1;
        let backup = env.path(w["backup"].as_str().expect("a backup"));
        assert_eq!(integrity(&backup), "ok", "backup {wraps}");
        let pairs_after = env.count("SELECT COUNT(*) FROM pairs");
        // Pairs were committed both before and after this wrap began: it ran while the
        // watcher was writing.
        if pairs_before > 0 && pairs_after > pairs_before {
            during += 1;
            let db = rusqlite::Connection::open_with_flags(
                &backup,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let (pairs, sessions): (i64, i64) = db
                .query_row(
                    "SELECT (SELECT COUNT(*) FROM pairs), (SELECT COUNT(*) FROM sessions)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert!(pairs >= pairs_before, "the backup is a recent snapshot");
            assert!(
                pairs <= pairs_after,
                "the backup holds only committed pairs"
            );
            assert_eq!(sessions as usize, wraps, "it holds the wrapped session");
        }
    }
    for f in waiting {
        env.drop_file("droid", &f.name, &f.bytes);
    }
    let want = common::distinct_pairs(&files);
    common::wait_until(
        "every drop to be integrated",
        || env.count("SELECT COUNT(*) FROM pairs") as usize == want,
        || watch.explain(),
    );
    watch.stop();
    eprintln!("{wraps} wraps, {during} of them while the watcher was writing");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs") as usize,
        want,
        "the ingest lost nothing to the backups"
    );
}

#[test]
fn monitor_levels_and_exit_statuses() {
    let env = Env::new();
    for (used, level, code) in [
        ("0", "healthy", 0),
        ("143000", "healthy", 0),
        ("150000", "warning", 10),
        ("170000", "wrap", 11),
        ("180000", "hard_stop", 12),
        ("190000", "critical", 13),
        ("250000", "critical", 13),
    ] {
        let run = env.run(&["monitor", used, "--json"]).expect(code);
        let j = run.json();
        assert_eq!(j["level"], level, "{used}\n{}", run.explain());
        assert_eq!(j["budget"], 200_000);
    }
    let run = env.run(&["monitor", "143000"]).expect(0);
    assert!(
        run.stdout().contains("143,000 / 200,000 (71.5%)")
            && run.stdout().contains("█")
            && run.stdout().contains("keep working")
            && run.stdout().contains("wrap 170,000 (85%)"),
        "{}",
        run.explain()
    );
    let run = env.run(&["monitor", "850", "--budget", "1000"]).expect(11);
    assert!(run.stdout().contains("wrap now"), "{}", run.explain());
    assert!(
        !env.path("perpetual.db").exists(),
        "monitor touches no database"
    );
    // Thresholds come from perpetual.toml.
    env.write(
        "perpetual.toml",
        "[thresholds]\nwarning = 50\nwrap = 60\nhard_stop = 70\ncritical = 80\n",
    );
    env.run(&["monitor", "120000"]).expect(11);
    env.write("perpetual.toml", "[thresholds]\nwrap = 99\n");
    env.run(&["monitor", "1"]).expect(1);
    // A bad PERPETUAL_NOW is an error, not a silent fallback to the real clock.
    env.write("perpetual.toml", "");
    env.run_at("yesterday", &["monitor", "1"]).expect(1);
}
