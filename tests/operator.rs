//! The operator's controls and reports (issue 15), driven through the real binary:
//! `task edit`, `task review --clear`, thresholds per budget kind, `monitor --slots` and
//! `--api-calls`, recurring tasks and standing duties, `report daily` and the hours
//! without human intervention.

mod common;

use common::{Env, git};
use serde_json::Value;

fn show(env: &Env, id: &str) -> Value {
    env.run(&["task", "show", id, "--json"]).expect(0).json()
}

fn history_details(task: &Value) -> Vec<String> {
    task["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            format!(
                "{} | {} | {}",
                h["actor"].as_str().unwrap(),
                h["action"].as_str().unwrap(),
                h["detail"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn task_edit_changes_every_field_records_who_and_refuses_a_cycle_changing_nothing() {
    let env = Env::new();
    env.run(&["task", "add", "a", "--agent", "zai"]).expect(0);
    env.run(&["task", "add", "b", "--agent", "zai", "--after", "a"])
        .expect(0);
    env.run(&["task", "add", "c", "--agent", "zai", "--after", "b"])
        .expect(0);
    env.run(&["task", "add", "d", "--agent", "zai"]).expect(0);

    // A cycle is refused, and nothing else of the same command is applied.
    let run = env
        .run(&["task", "edit", "a", "--priority", "1", "--after", "c"])
        .expect(1);
    assert!(
        run.stderr().contains("cycle (c → b → a → c)") && run.stderr().contains("nothing changed"),
        "{}",
        run.explain()
    );
    let a = show(&env, "a");
    assert_eq!(
        a["priority"], 5,
        "the priority of the refused edit was not applied"
    );
    assert_eq!(a["depends_on"], serde_json::json!([]));
    assert!(history_details(&a).iter().all(|h| !h.contains("edit")));

    // Every field.
    let run = env
        .run_with(
            &[
                "task",
                "edit",
                "a",
                "--priority",
                "2",
                "--description",
                "Quality pass",
                "--estimated-tokens",
                "50000",
                "--total",
                "40",
                "--json",
            ],
            &[("USER", "ana")],
        )
        .expect(0);
    let edited = run.json();
    let fields: Vec<&str> = edited["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["priority", "description", "estimated_tokens", "total"],
        "{}",
        run.explain()
    );
    let a = show(&env, "a");
    assert_eq!(a["priority"], 2);
    assert_eq!(a["description"], "Quality pass");
    assert_eq!(a["estimated_tokens"], 50000);
    assert_eq!(a["total"], 40);

    // Dependencies: add one and remove one in the same edit.
    env.run(&["task", "edit", "c", "--no-after", "b", "--after", "d"])
        .expect(0);
    assert_eq!(show(&env, "c")["depends_on"], serde_json::json!(["d"]));
    // Removing a dependency the task does not have is refused.
    let run = env.run(&["task", "edit", "c", "--no-after", "b"]).expect(1);
    assert!(
        run.stderr().contains("does not depend on"),
        "{}",
        run.explain()
    );

    // The agent, by automation that is not a person.
    env.run_with(
        &["task", "edit", "b", "--agent", "droid"],
        &[("PERPETUAL_ACTOR", "cron")],
    )
    .expect(0);
    assert_eq!(show(&env, "b")["agent"], "droid");
    let run = env
        .run(&["task", "list", "--agent", "droid", "--json"])
        .expect(0);
    assert_eq!(run.json()[0]["id"], "b", "{}", run.explain());

    // A total below the units done is refused.
    env.run(&["task", "progress", "a", "12/40"]).expect(0);
    let run = env.run(&["task", "edit", "a", "--total", "10"]).expect(1);
    assert!(
        run.stderr().contains("12 unit(s) are done"),
        "{}",
        run.explain()
    );

    // Clearing: an empty description and a 0 estimate.
    env.run(&[
        "task",
        "edit",
        "a",
        "--description",
        "",
        "--estimated-tokens",
        "0",
    ])
    .expect(0);
    let a = show(&env, "a");
    assert!(a["description"].is_null() && a["estimated_tokens"].is_null());

    // Nothing to change is a usage error.
    env.run(&["task", "edit", "a"]).expect(2);

    // Who changed what, and when, in the order it happened.
    let h = history_details(&show(&env, "a"));
    assert_eq!(h.len(), 7, "{h:#?}");
    assert!(
        h[0].starts_with("person") && h[0].ends_with("| add | added to zai's queue at priority 5"),
        "{h:#?}"
    );
    assert_eq!(
        h[1..5],
        [
            "person (ana) | edit | priority 5 → 2",
            "person (ana) | edit | description none → \"Quality pass\"",
            "person (ana) | edit | estimated_tokens none → 50000",
            "person (ana) | edit | total none → 40",
        ],
        "{h:#?}"
    );
    assert!(
        h[5].starts_with("person")
            && h[5].ends_with("| edit | description \"Quality pass\" → none"),
        "{h:#?}"
    );
    assert!(
        h[6].ends_with("| edit | estimated_tokens 50000 → none"),
        "{h:#?}"
    );
    let b = history_details(&show(&env, "b"));
    assert!(
        b.contains(&"cron | edit | agent zai → droid".to_string()),
        "{b:#?}"
    );
    let c = history_details(&show(&env, "c"));
    assert!(
        c.iter().any(|x| x.ends_with("edit | after b → d")),
        "{c:#?}"
    );
    // `task show` prints the history for people too.
    let run = env.run(&["task", "show", "a"]).expect(0);
    assert!(
        run.stdout().contains("person (ana)  edit: priority 5 → 2"),
        "{}",
        run.explain()
    );
}

#[test]
fn task_edit_refuses_an_agent_change_while_a_session_works_on_the_task() {
    let env = Env::new();
    env.run(&["task", "add", "x", "--agent", "zai", "--total", "4"])
        .expect(0);
    env.run(&["session", "start", "--agent", "zai"]).expect(0);
    let run = env
        .run(&["task", "edit", "x", "--agent", "droid"])
        .expect(1);
    assert!(
        run.stderr().contains("works on task x") && run.stderr().contains("wrap it"),
        "{}",
        run.explain()
    );
    assert_eq!(show(&env, "x")["agent"], "zai");
    // Other fields may change while it runs.
    env.run(&["task", "edit", "x", "--priority", "1"]).expect(0);
    env.run(&["session", "wrap", "--agent", "zai", "--progress", "1/4"])
        .expect(0);
    env.run(&["task", "edit", "x", "--agent", "droid"])
        .expect(0);
    assert_eq!(show(&env, "x")["agent"], "droid");
}

#[test]
fn review_clear_removes_the_flag_and_keeps_the_note_in_the_history() {
    let env = Env::new();
    env.run(&[
        "task",
        "add",
        "big",
        "--agent",
        "claude_code",
        "--total",
        "10",
    ])
    .expect(0);
    env.run(&[
        "session",
        "start",
        "--agent",
        "claude_code",
        "--budget",
        "1000",
    ])
    .expect(0);
    // Wrapped past the hard stop, unfinished: flagged for review.
    env.run(&["session", "wrap", "--tokens", "960", "--progress", "3/10"])
        .expect(0);
    let t = show(&env, "big");
    let reason = t["needs_review"].as_str().expect("flagged").to_string();
    assert!(reason.contains("critical"), "{reason}");
    let run = env.run(&["task", "review", "big"]).expect(0);
    assert!(run.stdout().contains("needs review"), "{}", run.explain());

    let run = env
        .run(&[
            "task",
            "review",
            "big",
            "--clear",
            "--note",
            "budget was too small; raised it",
        ])
        .expect(0);
    assert!(
        run.stdout().contains("review flag cleared on big"),
        "{}",
        run.explain()
    );
    let t = show(&env, "big");
    assert!(t["needs_review"].is_null(), "{t:#}");
    let h = history_details(&t);
    let last = h.last().unwrap();
    assert!(
        last.contains("| review_clear | review flag cleared (it said: ")
            && last.contains(&reason)
            && last.ends_with("; note: budget was too small; raised it"),
        "{h:#?}"
    );
    // The listing no longer shows it; clearing twice is an error.
    let run = env.run(&["task", "list"]).expect(0);
    assert!(!run.stdout().contains("needs review"), "{}", run.explain());
    env.run(&["task", "review", "big", "--clear"]).expect(1);
    // --note means nothing without --clear.
    env.run(&["task", "review", "big", "--note", "x"]).expect(2);
}

/// droid with 20 batch-job slots that wrap at 90% (the seeds' batch-job threshold) and
/// zai whose API quota wraps at 80%.
const KIND_THRESHOLDS: &str = r#"
[agents.droid.budget]
tokens_per_session = 0
slots = 20
[agents.droid.thresholds.slots]
wrap = 90.0
hard_stop = 95.0
critical = 100.0

[agents.zai.budget]
tokens_per_session = 0
api_calls_per_day = 1000
[agents.zai.thresholds.api_calls]
warning = 70.0
wrap = 80.0
"#;

#[test]
fn a_per_kind_threshold_changes_the_level_slots_at_90_percent_wrap_at_85_only_warn() {
    let env = Env::new();
    env.write("perpetual.toml", KIND_THRESHOLDS);
    for i in 1..=19 {
        env.run(&["task", "add", &format!("job_{i:02}"), "--agent", "droid"])
            .expect(0);
    }
    // 17 of 20 slots (85%) only warn: an 18th session may start.
    for _ in 0..17 {
        env.run(&["session", "start", "--agent", "droid"]).expect(0);
    }
    let run = env.run(&["status", "--json"]).expect(0);
    let droid = run.json()["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "droid")
        .cloned()
        .unwrap();
    assert_eq!(droid["level"], "warning", "{}", run.explain());
    assert!(droid["over_budget"].is_null(), "{}", run.explain());
    env.run(&["session", "start", "--agent", "droid"]).expect(0);
    // 18 of 20 (90%) is the wrap threshold of slots: the 19th is refused, naming the kind.
    let run = env.run(&["session", "start", "--agent", "droid"]).expect(5);
    assert!(
        run.stdout()
            .contains("budget is at the wrap level: slots 18 / 20 (90.0%, wrap)"),
        "{}",
        run.explain()
    );
    let run = env.run(&["status"]).expect(0);
    assert!(
        run.stdout()
            .contains("level     wrap: slots 18/20, 90%: wrap"),
        "{}",
        run.explain()
    );

    // The same figures through the monitor, with its exit statuses.
    let run = env
        .run(&["monitor", "--slots", "18", "--agent", "droid"])
        .expect(11);
    assert!(
        run.stdout().contains("slots 18/20, 90%: wrap"),
        "{}",
        run.explain()
    );
    let run = env
        .run(&["monitor", "--slots", "17", "--agent", "droid", "--json"])
        .expect(10);
    assert_eq!(run.json()["kind"], "slots");
    assert_eq!(run.json()["level"], "warning");
    assert_eq!(run.json()["wrap_at"], 18);
    env.run(&["monitor", "--slots", "20", "--agent", "droid"])
        .expect(13);
    env.run(&["monitor", "--slots", "3", "--agent", "droid"])
        .expect(0);
    // Without this agent's change, 85% of slots is the shared wrap threshold.
    env.run(&["monitor", "--slots", "17", "--budget", "20"])
        .expect(11);
    // --slots needs an agent or a budget: a usage error.
    env.run(&["monitor", "--slots", "3"]).expect(2);

    // API calls: zai's quota wraps at 80% (the shared 85% is only a warning elsewhere).
    env.run(&["monitor", "--api-calls", "800", "--agent", "zai"])
        .expect(11);
    env.run(&["monitor", "--api-calls", "800", "--agent", "droid"])
        .expect(0);
    env.run(&["task", "add", "z", "--agent", "zai"]).expect(0);
    env.run(&["session", "start", "--agent", "zai"]).expect(0);
    let run = env
        .run(&[
            "session",
            "checkpoint",
            "--agent",
            "zai",
            "--api-calls",
            "810",
        ])
        .expect(0);
    assert!(
        run.stdout()
            .contains("WRAP NOW  level wrap (API calls today 810/1,000, 81%: wrap)"),
        "{}",
        run.explain()
    );
}

const RECURRING_PLAN: &str = r#"
[[template]]
agent = "claude"
kind = "duty"
every = "24h"
id = "claude_monitor_{n}"
description = "Monitor quality, round {n}"

[[template]]
agent = "claude"
kind = "duty"
every = "06:00"
id = "claude_schema_{n}"

[[task]]
id = "standup"
agent = "zai"
every = "24h"

[[template]]
agent = "droid"
id = "droid_batch_{n}"

[[template]]
agent = "droid"
kind = "duty"
every = "24h"
id = "droid_quota_check_{n}"
"#;

fn task_ids(env: &Env, like: &str) -> Vec<String> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT id FROM tasks WHERE id LIKE ?1 ORDER BY created_at, id")
        .unwrap();
    stmt.query_map([like], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn a_recurring_template_adds_one_task_per_period_once_the_previous_one_is_complete() {
    let env = Env::new();
    env.write("plan.toml", RECURRING_PLAN);
    let at = |now: &str, args: &[&str]| env.run_at(now, args);
    at("2026-03-01T10:00:00Z", &["task", "import", "plan.toml"]).expect(0);

    // The first assign makes the first of each recurring template; the recurring task
    // itself is its first occurrence.
    let run = at("2026-03-01T10:00:00Z", &["assign", "--json"]).expect(0);
    let recur: Vec<String> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "recur")
        .map(|e| e["task_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        recur,
        ["claude_monitor_1", "claude_schema_1", "droid_quota_check_1"],
        "{}",
        run.explain()
    );
    assert_eq!(show(&env, "claude_monitor_1")["kind"], "duty");
    assert_eq!(
        show(&env, "claude_monitor_1")["description"],
        "Monitor quality, round 1"
    );
    // Standing duties do not count toward droid's ready tasks: 3 batches besides its duty.
    assert_eq!(task_ids(&env, "droid_batch_%").len(), 3);
    at("2026-03-01T10:00:00Z", &["assign"]).expect(0);
    assert_eq!(task_ids(&env, "claude_%").len(), 2, "nothing twice");

    // A duty takes one session: its wrap completes it, whatever its progress.
    at(
        "2026-03-01T11:00:00Z",
        &[
            "session",
            "start",
            "--agent",
            "claude",
            "--task",
            "claude_monitor_1",
        ],
    )
    .expect(0);
    let run = at(
        "2026-03-01T11:30:00Z",
        &["session", "wrap", "--agent", "claude"],
    )
    .expect(0);
    assert!(run.stdout().contains("completed"), "{}", run.explain());
    assert_eq!(show(&env, "claude_monitor_1")["status"], "completed");
    at("2026-03-01T11:00:00Z", &["task", "done", "standup"]).expect(0);

    // Before the period has passed: nothing. The 06:00 schema check is due, but its
    // previous task is not complete.
    at("2026-03-02T09:59:59Z", &["assign"]).expect(0);
    assert_eq!(task_ids(&env, "claude_monitor_%"), ["claude_monitor_1"]);
    assert_eq!(task_ids(&env, "claude_schema_%"), ["claude_schema_1"]);
    assert_eq!(task_ids(&env, "standup%"), ["standup"]);
    // 24 hours after the last one: exactly one more.
    at("2026-03-02T10:00:00Z", &["assign"]).expect(0);
    at("2026-03-02T10:00:01Z", &["assign"]).expect(0);
    assert_eq!(
        task_ids(&env, "claude_monitor_%"),
        ["claude_monitor_1", "claude_monitor_2"]
    );
    assert_eq!(task_ids(&env, "standup%"), ["standup", "standup_2"]);
    assert_eq!(show(&env, "standup_2")["kind"], "agent");
    // Once the schema check is complete, its next comes at once: 06:00 has passed.
    at("2026-03-02T10:30:00Z", &["task", "done", "claude_schema_1"]).expect(0);
    at("2026-03-02T10:30:00Z", &["assign"]).expect(0);
    assert_eq!(
        task_ids(&env, "claude_schema_%"),
        ["claude_schema_1", "claude_schema_2"]
    );

    // Three periods later, with the previous one still open: nothing; once it completes,
    // one (not three).
    at("2026-03-05T12:00:00Z", &["assign"]).expect(0);
    assert_eq!(task_ids(&env, "claude_monitor_%").len(), 2);
    at(
        "2026-03-05T12:00:00Z",
        &["task", "done", "claude_monitor_2"],
    )
    .expect(0);
    at("2026-03-05T12:00:00Z", &["assign"]).expect(0);
    at("2026-03-05T12:00:00Z", &["assign"]).expect(0);
    assert_eq!(
        task_ids(&env, "claude_monitor_%"),
        ["claude_monitor_1", "claude_monitor_2", "claude_monitor_3"]
    );
    let h = history_details(&show(&env, "claude_monitor_3"));
    assert!(
        h[0].starts_with("assigner | recur | added claude_monitor_3 from recurring template claude_monitor_{n} (every 1d: claude_monitor_2 complete"),
        "{h:#?}"
    );

    // `task templates` says when each is due next.
    let run = at("2026-03-05T12:00:00Z", &["task", "templates", "--json"]).expect(0);
    let monitor = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pattern"] == "claude_monitor_{n}")
        .cloned()
        .unwrap();
    assert_eq!(
        monitor["next_due"],
        "2026-03-06T12:00:00Z",
        "{}",
        run.explain()
    );
    assert_eq!(monitor["last_task"], "claude_monitor_3");

    // An agent on standing duty is never "running dry".
    let run = at("2026-03-05T12:00:00Z", &["status", "--json"]).expect(0);
    let claude = run.json()["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "claude")
        .cloned()
        .unwrap();
    assert_eq!(claude["queue_depth"], 0, "{}", run.explain());
    assert_eq!(claude["queue_healthy"], true, "{}", run.explain());
    assert_eq!(claude["duties_ready"], 2, "{}", run.explain());

    // Bad schedules are refused at import, naming the task.
    env.write(
        "bad.toml",
        "[[task]]\nid = \"x\"\nagent = \"zai\"\nevery = \"sometimes\"\n",
    );
    let run = env.run(&["task", "import", "bad.toml"]).expect(1);
    assert!(
        run.stderr().contains("plan task x") && run.stderr().contains("sometimes"),
        "{}",
        run.explain()
    );
}

/// A root whose claude_code runs tests/fixtures/fake_agent.sh under a fast loop.
fn loop_env() -> Env {
    let env = Env::new();
    let agent =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_agent.sh");
    env.write(
        "perpetual.toml",
        format!(
            r#"
[run]
poll_ms = 100
grace_secs = 2
term_secs = 1
idle_secs = 1

[agents.claude_code]
command = ["sh", "{agent}"]
transcript = "{{root}}/transcripts/{{session}}.jsonl"
"#,
            agent = agent.display()
        ),
    );
    env
}

#[test]
fn the_loop_gives_a_standing_duty_one_session_per_period() {
    let env = loop_env();
    env.write(
        "plan.toml",
        "[[template]]\nagent = \"claude_code\"\nkind = \"duty\"\nevery = \"24h\"\n\
         id = \"review_{n}\"\ntotal = 1\n",
    );
    env.run_at("2026-03-01T00:00:00Z", &["task", "import", "plan.toml"])
        .expect(0);
    // The agent makes no progress, yet its one session completes the duty.
    let stall = [
        ("FAKE_MODE", "stall"),
        ("PERPETUAL_NOW", "2026-03-01T00:00:00Z"),
    ];
    let run = env
        .run_with(&["run", "--once", "--agent", "claude_code"], &stall)
        .expect(0);
    let t = show(&env, "review_1");
    assert_eq!(t["status"], "completed", "{}", run.explain());
    assert_eq!(t["session_list"].as_array().unwrap().len(), 1);
    assert_eq!(t["sessions"], 1, "the count, not shadowed by the list");
    assert_eq!(t["done"], 0);
    // Later the same day: nothing to start.
    env.run_with(
        &["run", "--once", "--agent", "claude_code"],
        &[
            ("FAKE_MODE", "stall"),
            ("PERPETUAL_NOW", "2026-03-01T18:00:00Z"),
        ],
    )
    .expect(4);
    // The next day: the next duty, one session.
    env.run_with(
        &["run", "--once", "--agent", "claude_code"],
        &[
            ("FAKE_MODE", "stall"),
            ("PERPETUAL_NOW", "2026-03-02T00:00:00Z"),
        ],
    )
    .expect(0);
    assert_eq!(show(&env, "review_2")["status"], "completed");
    assert_eq!(env.count("SELECT COUNT(*) FROM sessions"), 2);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM loop_runs WHERE kind = 'duty'"),
        2
    );
}

const NESTED_RSI: &str = r#"{"indicator": "RSI", "category": "momentum", "qa_pairs": [
  {"question": "What does RSI measure?", "answer": "The speed and change of price movements."},
  {"question": "What RSI level signals overbought?", "answer": "Above 70, traditionally."},
  {"question": "Who created RSI?", "answer": "J. Welles Wilder, in 1978."}]}"#;
const FLAT: &str = r#"[{"question": "What is a candle?", "answer": "A price bar with open, high, low and close."},
  {"question": "What is volume?", "answer": "The number of units traded in a period."}]"#;

/// One day of recorded activity, 2026-03-01, then the report of that day: every figure
/// is what the commands below did. Then the figure of hours without human intervention
/// on the next day, reset by a person's command and not by an agent's.
#[test]
fn report_daily_on_a_day_of_recorded_activity_matches_what_happened() {
    let env = Env::new();
    git(env.root(), &["init", "-q"]);
    let person = |now: &str, args: &[&str]| {
        env.run_with(
            args,
            &[
                ("PERPETUAL_NOW", now),
                ("USER", "ana"),
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_CONFIG_NOSYSTEM", "1"),
            ],
        )
    };
    let agent = |now: &str, session: &str, args: &[&str]| {
        env.run_with(
            args,
            &[
                ("PERPETUAL_NOW", now),
                ("PERPETUAL_SESSION", session),
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_CONFIG_NOSYSTEM", "1"),
            ],
        )
    };
    let d = "2026-03-01T";
    person(
        &format!("{d}00:30:00Z"),
        &[
            "task",
            "add",
            "t1",
            "--agent",
            "claude_code",
            "--total",
            "2",
        ],
    )
    .expect(0);
    person(
        &format!("{d}00:30:00Z"),
        &["task", "add", "t2", "--agent", "zai"],
    )
    .expect(0);
    // 01:00: four drops for droid: two good files (5 pairs), a copy of one, a broken one.
    env.drop_file("droid", "rsi.json", NESTED_RSI);
    env.drop_file("droid", "rsi_again.json", NESTED_RSI);
    env.drop_file("droid", "basics.json", FLAT);
    env.drop_file("droid", "broken.json", "{\"question\": ");
    env.run_at(&format!("{d}01:00:00Z"), &["ingest"]).expect(3);
    // claude_code works t1 by hand for two hours and completes it.
    person(
        &format!("{d}02:00:00Z"),
        &["session", "start", "--agent", "claude_code"],
    )
    .expect(0);
    person(
        &format!("{d}03:00:00Z"),
        &[
            "session",
            "checkpoint",
            "--progress",
            "1/2",
            "--tokens",
            "50000",
        ],
    )
    .expect(0);
    person(
        &format!("{d}04:00:00Z"),
        &["session", "wrap", "--tokens", "100000", "--progress", "2/2"],
    )
    .expect(0);
    // t3 wraps past the critical threshold of a 1,000-token session.
    person(
        &format!("{d}09:00:00Z"),
        &[
            "task",
            "add",
            "t3",
            "--agent",
            "claude_code",
            "--total",
            "10",
        ],
    )
    .expect(0);
    person(
        &format!("{d}09:00:00Z"),
        &[
            "session",
            "start",
            "--agent",
            "claude_code",
            "--budget",
            "1000",
        ],
    )
    .expect(0);
    person(
        &format!("{d}09:30:00Z"),
        &["session", "wrap", "--tokens", "960", "--progress", "3/10"],
    )
    .expect(0);
    // zai's session, started by a person; the agent reports and wraps by itself.
    person(
        &format!("{d}10:00:00Z"),
        &["session", "start", "--agent", "zai"],
    )
    .expect(0);
    let zai = "session_20260301_100000";
    agent(
        &format!("{d}12:00:00Z"),
        zai,
        &["session", "checkpoint", "--api-calls", "300"],
    )
    .expect(0);
    agent(&format!("{d}15:00:00Z"), zai, &["session", "wrap"]).expect(0);
    person(
        &format!("{d}23:00:00Z"),
        &["agent", "pause", "droid", "--reason", "quota review"],
    )
    .expect(0);

    let run = person(
        "2026-03-02T09:00:00Z",
        &["report", "daily", "--date", "2026-03-01"],
    )
    .expect(0);
    assert!(
        run.stdout().contains("reports/team_status_2026-03-01.md")
            && run.stdout().contains("performance_metrics/2026-03-01.json"),
        "{}",
        run.explain()
    );
    let text = std::fs::read_to_string(env.path("performance_metrics/2026-03-01.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let explain = || format!("{r:#}\n{}", run.explain());
    assert_eq!(r["complete"], true, "{}", explain());
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("2026-03-01T00:00:00Z"), Some("2026-03-02T00:00:00Z"))
    );
    // Pairs, per agent, category and indicator.
    assert_eq!(r["pairs"]["added"], 5, "{}", explain());
    assert_eq!(r["pairs"]["by_agent"], serde_json::json!({"droid": 5}));
    assert_eq!(
        r["pairs"]["by_category"],
        serde_json::json!({"(none)": 2, "momentum": 3})
    );
    assert_eq!(
        r["pairs"]["by_indicator"],
        serde_json::json!({"(none)": 2, "RSI": 3})
    );
    // Files.
    assert_eq!(
        (
            &r["files"]["integrated"],
            &r["files"]["rejected"],
            &r["files"]["duplicate"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{}",
        explain()
    );
    assert_eq!(r["files"]["error_rate"], 25.0);
    // Tasks: t1 completed (grade A) two hours after its session took it, 3.5 h after it
    // was added.
    assert_eq!(r["tasks"]["completed"], 1);
    assert_eq!(r["tasks"]["added"], 3);
    assert_eq!(r["tasks"]["grades"]["A"], 1);
    assert_eq!(r["tasks"]["avg_completion_seconds"], 7200.0);
    assert_eq!(r["tasks"]["avg_lead_seconds"], 12600.0);
    // Sessions and how they ended.
    assert_eq!(r["sessions"]["started"], 3);
    assert_eq!(r["sessions"]["wrapped"], 3);
    assert_eq!(
        r["sessions"]["wraps_by_level"],
        serde_json::json!({"critical": 1, "healthy": 2})
    );
    assert_eq!(r["sessions"]["sigkills"], 0);
    assert_eq!(r["sessions"]["breaker_trips"], 0);
    assert_eq!(r["sessions"]["manual_pauses"], 1);
    // Tokens: 100,000 + 960 over 5 new pairs.
    assert_eq!(r["tokens"]["used"], 100960);
    assert_eq!(r["tokens"]["per_new_pair"], 20192.0);
    // Agents: busy time from their sessions; zai's API calls against its quota.
    let agent_of = |name: &str| {
        r["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}\n{}", explain()))
    };
    let cc = agent_of("claude_code");
    assert_eq!(cc["busy_seconds"], 9000, "2 h + 30 min\n{}", explain());
    assert!((cc["idle_percent"].as_f64().unwrap() - 89.583).abs() < 0.01);
    assert_eq!(cc["tokens"], 100960);
    assert_eq!(cc["tasks_completed"], 1);
    let z = agent_of("zai");
    assert_eq!(z["busy_seconds"], 5 * 3600);
    assert!((z["idle_percent"].as_f64().unwrap() - 79.167).abs() < 0.01);
    assert_eq!(
        (&z["api_calls"], &z["api_quota"]),
        (&serde_json::json!(300), &serde_json::json!(5000))
    );
    assert_eq!(z["api_percent"], 6.0);
    let droid = agent_of("droid");
    assert_eq!(
        (&droid["idle_percent"], &droid["pairs_added"]),
        (&serde_json::json!(100.0), &serde_json::json!(5))
    );
    // Human intervention: ten commands by a person, two by the agent. The longest
    // stretch without a person is 10:00 to 23:00, although the agent ran commands in it.
    assert_eq!(r["autonomy"]["interventions"], 10, "{}", explain());
    assert_eq!(r["autonomy"]["machine_commands"], 2);
    assert_eq!(r["autonomy"]["hours_without_intervention"], 13.0);
    assert_eq!(r["autonomy"]["hours_since_last_intervention"], 1.0);
    assert_eq!(
        r["autonomy"]["manual"][0]["command"],
        "task add t1 --agent claude_code"
    );
    assert_eq!(r["autonomy"]["manual"][0]["actor"], "person (ana)");
    assert_eq!(r["loop_uptime"]["runs"], 0);

    // The Markdown says the same for people.
    let md = std::fs::read_to_string(env.path("reports/team_status_2026-03-01.md")).unwrap();
    for want in [
        "# Team Status Report - 2026-03-01",
        "| pairs added | 5 (0.2 per hour)",
        "| files | 2 integrated, 1 rejected, 1 duplicate; 0 invalid pairs; error rate 25.0% |",
        "| tasks | 1 completed (A 1), 3 added, 0 failed; average completion time 2 h 00 min",
        "0 circuit-breaker trip(s), 1 pause(s) by hand |",
        "| tokens | 100,960; 20192.0 per new pair |",
        "| hours without human intervention | 13.0 (longest stretch)",
        "- API calls: 300 of 5,000 (6.0% of the daily quota)",
        "| 2026-03-01T23:00:00Z | person (ana) | `agent pause droid` |",
    ] {
        assert!(md.contains(want), "no {want:?} in\n{md}");
    }

    // After midnight the loop writes the previous day's report by itself, and the next
    // wrap commits it.
    std::fs::remove_dir_all(env.path("reports")).unwrap();
    std::fs::remove_dir_all(env.path("performance_metrics")).unwrap();
    env.run(&["agent", "resume", "droid"]).expect(0);
    let run = env
        .run_with(
            &["run", "--once"],
            &[("PERPETUAL_NOW", "2026-03-02T00:05:00Z")],
        )
        .expect(4);
    let again: Value = serde_json::from_str(
        &std::fs::read_to_string(env.path("performance_metrics/2026-03-01.json"))
            .unwrap_or_else(|e| panic!("{e}\n{}", run.explain())),
    )
    .unwrap();
    for k in ["pairs", "files", "tasks", "sessions", "tokens", "agents"] {
        assert_eq!(again[k], r[k], "{k}");
    }
    assert!(env.path("reports/team_status_2026-03-01.md").is_file());
    // Written once: the next round leaves it alone.
    let run = env
        .run_with(
            &["run", "--once"],
            &[("PERPETUAL_NOW", "2026-03-02T00:06:00Z")],
        )
        .expect(4);
    assert!(
        !run.stderr().contains("wrote the report"),
        "{}",
        run.explain()
    );
    person(
        "2026-03-02T01:00:00Z",
        &["session", "start", "--agent", "zai"],
    )
    .expect(0);
    person(
        "2026-03-02T01:10:00Z",
        &["session", "wrap", "--agent", "zai"],
    )
    .expect(0);
    let files = git(env.root(), &["show", "--name-only", "--format=", "HEAD"]);
    assert!(
        files.contains("reports/team_status_2026-03-01.md")
            && files.contains("performance_metrics/2026-03-01.json"),
        "{files}"
    );

    // The next day: 2 h after the person's 01:10 wrap...
    let today = |now: &str| {
        env.run_at(now, &["status", "--json"]).expect(0).json()["today"]["autonomy"].clone()
    };
    let a = today("2026-03-02T03:10:00Z");
    assert_eq!(a["hours_since_last_intervention"], 2.0, "{a:#}");
    // ... an agent's command does not reset it ...
    agent(
        "2026-03-02T04:10:00Z",
        "session_x",
        &["task", "edit", "t2", "--priority", "2"],
    )
    .expect(0);
    let a = today("2026-03-02T05:10:00Z");
    assert_eq!(a["hours_since_last_intervention"], 4.0, "{a:#}");
    // ... a person's does.
    person(
        "2026-03-02T05:10:00Z",
        &["task", "edit", "t2", "--priority", "3"],
    )
    .expect(0);
    let a = today("2026-03-02T05:10:00Z");
    assert_eq!(a["hours_since_last_intervention"], 0.0, "{a:#}");
    let a = today("2026-03-02T06:40:00Z");
    assert_eq!(a["hours_since_last_intervention"], 1.5, "{a:#}");
    assert_eq!(
        a["hours_without_intervention"], 4.0,
        "01:10 to 05:10\n{a:#}"
    );
    let run = env.run_at("2026-03-02T06:40:00Z", &["status"]).expect(0);
    assert!(
        run.stdout().contains("1.5 h since the last manual command"),
        "{}",
        run.explain()
    );
}

/// The loop's one call per round records its heartbeat: the report's uptime is measured
/// from a real `perpetual run`.
#[test]
fn the_loop_uptime_is_measured_from_its_rounds() {
    let env = Env::new();
    env.write("perpetual.toml", "[run]\nidle_secs = 1\n");
    let mut looper = env.spawn(&["run"]);
    common::wait_until(
        "two rounds a second apart",
        || {
            env.try_count("SELECT COUNT(*) FROM loop_heartbeats WHERE last_seen > started_at")
                == Some(1)
        },
        || looper.explain(),
    );
    looper.stop();
    let run = env.run(&["report", "daily", "--json"]).expect(0);
    let up = &run.json()["loop_uptime"];
    assert_eq!(up["runs"], 1, "{}", run.explain());
    assert!(up["seconds"].as_i64().unwrap() >= 1, "{}", run.explain());
}

#[test]
fn a_task_without_an_estimate_gets_the_median_tokens_per_unit_of_its_template_times_its_total() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[assign]\nmin_ready = 1\n[agents.droid.budget]\ntokens_per_session = 200000\n",
    );
    env.write(
        "plan.toml",
        "[[template]]\nagent = \"droid\"\nid = \"batch_{n}\"\ntotal = 100\n",
    );
    env.run(&["task", "import", "plan.toml"]).expect(0);
    env.run(&["assign"]).expect(0);
    assert!(
        show(&env, "batch_1")["estimated_tokens"].is_null(),
        "no history yet"
    );
    // Three batches of 100 units use 20,000, 30,000 and 100,000 tokens: 200, 300 and
    // 1,000 per unit. Each next batch is estimated from those before it.
    for (n, tokens, want) in [
        (1, "20000", 20000),
        (2, "30000", 25000),
        (3, "100000", 30000),
    ] {
        env.run(&["session", "start", "--agent", "droid"]).expect(0);
        env.run(&[
            "session",
            "wrap",
            "--tokens",
            tokens,
            "--progress",
            "100/100",
        ])
        .expect(0);
        let run = env.run(&["assign", "--json"]).expect(0);
        let next = format!("batch_{}", n + 1);
        let t = show(&env, &next);
        assert_eq!(t["estimated_tokens"], want, "{next}\n{}", run.explain());
    }
    let t = show(&env, "batch_4");
    assert_eq!(
        t["estimate_source"],
        "history: median 300 tokens per unit over 3 completed tasks of its template × 100 units"
    );
    let run = env.run(&["task", "show", "batch_4"]).expect(0);
    assert!(
        run.stdout()
            .contains("30,000 estimated (history: median 300 tokens per unit"),
        "{}",
        run.explain()
    );
    // A task of the same agent and kind outside the template: the agent's history.
    env.run(&["task", "add", "side", "--agent", "droid", "--total", "10"])
        .expect(0);
    env.run(&[
        "task",
        "add",
        "given",
        "--agent",
        "droid",
        "--estimated-tokens",
        "7",
    ])
    .expect(0);
    env.run(&["task", "add", "lonely", "--agent", "zai"])
        .expect(0);
    env.run(&["assign"]).expect(0);
    let side = show(&env, "side");
    assert_eq!(side["estimated_tokens"], 3000, "{side:#}");
    assert!(
        side["estimate_source"]
            .as_str()
            .unwrap()
            .contains("over 3 completed agent tasks of droid × 10 units"),
        "{side:#}"
    );
    // A given estimate is kept; an agent without history gets none.
    assert_eq!(show(&env, "given")["estimated_tokens"], 7);
    assert!(show(&env, "given")["estimate_source"].is_null());
    assert!(show(&env, "lonely")["estimated_tokens"].is_null());
    // A person's edit replaces the estimate and its source.
    env.run(&["task", "edit", "side", "--estimated-tokens", "5000"])
        .expect(0);
    assert!(show(&env, "side")["estimate_source"].is_null());
    let h = history_details(&show(&env, "batch_4"));
    assert!(
        h.iter()
            .any(|x| x.starts_with("assigner | estimate | batch_4 estimated at 30,000 tokens")),
        "{h:#?}"
    );
}

/// The report counts what the loop did: a command stopped with SIGTERM, the wrap levels,
/// and the circuit breaker tripping after three sessions without progress.
#[test]
fn report_daily_counts_the_loops_signals_wrap_levels_and_breaker_trips() {
    let env = loop_env();
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "5"])
        .expect(0);
    let now = ("PERPETUAL_NOW", "2026-04-01T10:00:00Z");
    env.run_with(&["run", "--once"], &[("FAKE_MODE", "ignore"), now])
        .expect(0);
    for _ in 0..2 {
        env.run_with(&["run", "--once"], &[("FAKE_MODE", "stall"), now])
            .expect(0);
    }
    let run = env
        .run_with(&["report", "daily", "--json"], &[now])
        .expect(0);
    let s = &run.json()["sessions"];
    assert_eq!(s["started"], 3, "{}", run.explain());
    assert_eq!(s["sigterms"], 1, "{}", run.explain());
    assert_eq!(s["breaker_trips"], 1, "{}", run.explain());
    assert_eq!(s["manual_pauses"], 0, "{}", run.explain());
    assert_eq!(
        s["wraps_by_level"],
        serde_json::json!({"hard_stop": 1, "healthy": 2}),
        "{}",
        run.explain()
    );
    // The agent's own commands (its checkpoints) are not interventions.
    let a = &run.json()["autonomy"];
    assert_eq!(a["interventions"], 0, "{}", run.explain());
    assert!(
        a["machine_commands"].as_u64().unwrap() >= 3,
        "{}",
        run.explain()
    );
}
