//! `perpetual task ...`: the task stack, driven through the real binary.

mod common;

use common::Env;
use serde_json::Value;

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

fn next(env: &Env, agent: &str) -> String {
    let run = env
        .run(&["task", "next", "--agent", agent, "--json"])
        .expect(0);
    run.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn priority_one_first_ties_to_the_older_task_and_dependencies_order_the_stack() {
    let env = Env::new();
    env.run(&["task", "add", "a", "--agent", "zai", "--priority", "2"])
        .expect(0);
    env.run(&["task", "add", "b", "--agent", "zai", "--priority", "1"])
        .expect(0);
    env.run(&["task", "add", "c", "--agent", "zai", "--priority", "1"])
        .expect(0);
    let run = env
        .run(&[
            "task",
            "add",
            "d",
            "--agent",
            "zai",
            "--priority",
            "1",
            "--after",
            "a",
        ])
        .expect(0);
    assert!(run.stdout().contains("waiting for a"), "{}", run.explain());
    env.run(&[
        "task",
        "add",
        "other",
        "--agent",
        "droid",
        "--priority",
        "1",
    ])
    .expect(0);

    let list = env
        .run(&["task", "list", "--agent", "zai", "--json"])
        .expect(0);
    assert_eq!(
        ids(&list.json()),
        ["b", "c", "d", "a"],
        "{}",
        list.explain()
    );
    assert_eq!(list.json()[2]["state"], "waiting");
    assert_eq!(list.json()[2]["depends_on"], serde_json::json!(["a"]));

    // b and c (priority 1, older first), then a (d waits for it), then d.
    for want in ["b", "c", "a", "d"] {
        assert_eq!(next(&env, "zai"), want);
        env.run(&["task", "done", want]).expect(0);
    }
    let run = env.run(&["task", "next", "--agent", "zai"]).expect(4);
    assert!(run.stdout().contains("no ready task"), "{}", run.explain());
    assert_eq!(next(&env, "droid"), "other");

    // Completed tasks leave the queue but stay as the archive.
    let list = env
        .run(&["task", "list", "--agent", "zai", "--json"])
        .expect(0);
    assert!(ids(&list.json()).is_empty(), "{}", list.explain());
    let all = env
        .run(&["task", "list", "--agent", "zai", "--all", "--json"])
        .expect(0);
    assert_eq!(ids(&all.json()).len(), 4);
    assert!(
        all.json()
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "completed" && t["grade"]["letter"] == "A"),
        "{}",
        all.explain()
    );
}

#[test]
fn removing_a_task_others_depend_on_is_refused() {
    let env = Env::new();
    env.run(&["task", "add", "base", "--agent", "zai"])
        .expect(0);
    env.run(&["task", "add", "top", "--agent", "zai", "--after", "base"])
        .expect(0);
    let run = env.run(&["task", "remove", "base"]).expect(1);
    assert!(
        run.stderr().contains("cannot be removed") && run.stderr().contains("top"),
        "{}",
        run.explain()
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tasks"), 2);
    env.run(&["task", "remove", "top"]).expect(0);
    env.run(&["task", "remove", "base"]).expect(0);
    assert_eq!(env.count("SELECT COUNT(*) FROM tasks"), 0);
    // Unknown dependencies and duplicate ids are refused too.
    let run = env
        .run(&["task", "add", "x", "--agent", "zai", "--after", "nowhere"])
        .expect(1);
    assert!(run.stderr().contains("nowhere"), "{}", run.explain());
    env.run(&["task", "add", "x", "--agent", "zai"]).expect(0);
    env.run(&["task", "add", "x", "--agent", "zai"]).expect(1);
    env.run(&["task", "add", "../x", "--agent", "zai"])
        .expect(1);
}

#[test]
fn a_dependent_of_a_failed_task_is_blocked_and_says_why_and_retry_requeues_ahead() {
    let env = Env::new();
    env.run(&["task", "add", "first", "--agent", "zai", "--priority", "1"])
        .expect(0);
    env.run(&["task", "add", "source", "--agent", "zai", "--priority", "1"])
        .expect(0);
    env.run(&["task", "add", "mid", "--agent", "zai", "--after", "source"])
        .expect(0);
    env.run(&["task", "add", "top", "--agent", "zai", "--after", "mid"])
        .expect(0);

    let run = env
        .run(&["task", "fail", "source", "--reason", "archive missing"])
        .expect(0);
    assert!(
        run.stdout().contains("now blocked: mid"),
        "{}",
        run.explain()
    );

    let show = env.run(&["task", "show", "mid", "--json"]).expect(0);
    let j = show.json();
    assert_eq!(j["state"], "blocked", "{}", show.explain());
    assert_eq!(j["blocked_by"], "source");
    assert!(
        j["why"].as_str().unwrap().contains("archive missing"),
        "{}",
        show.explain()
    );
    let top = env.run(&["task", "show", "top", "--json"]).expect(0).json();
    assert_eq!(top["state"], "blocked");
    assert_eq!(
        top["blocked_by"], "source",
        "blocked further down the chain"
    );
    let list = env.run(&["task", "list"]).expect(0);
    assert!(
        list.stdout().contains("blocked: depends on source") && list.stdout().contains("failed"),
        "{}",
        list.explain()
    );

    // A failed task cannot complete, and nothing blocked is offered.
    env.run(&["task", "done", "source"]).expect(1);
    env.run(&["task", "done", "mid"]).expect(1);
    assert_eq!(next(&env, "zai"), "first");

    // Retry puts it ahead of its old place: before `first`, which was older.
    env.run(&["task", "retry", "source"]).expect(0);
    assert_eq!(next(&env, "zai"), "source");
    let mid = env.run(&["task", "show", "mid", "--json"]).expect(0).json();
    assert_eq!(mid["state"], "waiting");
    assert_eq!(mid["failures"], 0);
    let source = env
        .run(&["task", "show", "source", "--json"])
        .expect(0)
        .json();
    assert_eq!(source["failures"], 1);
    assert_eq!(source["fail_reason"], "archive missing");
    env.run(&["task", "retry", "source"]).expect(1);
}

#[test]
fn progress_done_and_the_report() {
    let env = Env::new();
    env.run(&[
        "task",
        "add",
        "t",
        "--agent",
        "claude_code",
        "--total",
        "40",
        "--estimated-tokens",
        "1000",
        "--description",
        "integrate forty sessions",
    ])
    .expect(0);
    let run = env.run(&["task", "progress", "t", "10/40"]).expect(0);
    assert!(run.stdout().contains("10/40 (25.0%)"), "{}", run.explain());
    // A progress that is not DONE/TOTAL with DONE <= TOTAL is bad usage (issue 10).
    env.run(&["task", "progress", "t", "41/40"]).expect(2);
    env.run(&["task", "progress", "t", "12"]).expect(0);
    let j = env.run(&["task", "show", "t", "--json"]).expect(0).json();
    assert_eq!(
        (j["done"].as_u64(), j["total"].as_u64()),
        (Some(12), Some(40))
    );
    assert!((j["percent"].as_f64().unwrap() - 30.0).abs() < 1e-9);

    let run = env.run(&["task", "done", "t"]).expect(0);
    // 12/40 done: quality = 0.3 completeness, so 0.3 + 0.2 + 0.3 × 0.3 + 0.2 = 0.79: C.
    assert!(run.stdout().contains("grade C (0.79)"), "{}", run.explain());
    let report = std::fs::read_to_string(env.path("task_reports/t.md")).unwrap();
    assert!(report.contains("# Task report: t"), "{report}");
    assert!(report.contains("| grade | **C** (0.79) |"), "{report}");
    assert!(report.contains("completeness 12/40"), "{report}");
    let show = env.run(&["task", "show", "t"]).expect(0);
    assert!(
        show.stdout().contains("grade        C (0.79)") && show.stdout().contains("t.md"),
        "{}",
        show.explain()
    );
    // Finished tasks take no more progress and cannot fail.
    env.run(&["task", "progress", "t", "13/40"]).expect(1);
    env.run(&["task", "fail", "t", "--reason", "late"])
        .expect(1);
    env.run(&["task", "show", "nothing"]).expect(1);
}

#[test]
fn grade_uses_failures_sessions_hard_stops_and_tokens() {
    let env = Env::new();
    env.run(&[
        "task",
        "add",
        "g",
        "--agent",
        "claude_code",
        "--total",
        "10",
        "--estimated-tokens",
        "100000",
    ])
    .expect(0);
    // Session 1 wraps at 90% unfinished (a hard stop), then the task fails once.
    env.run_at(
        "2026-03-01T10:00:00Z",
        &["session", "start", "--agent", "claude_code"],
    )
    .expect(0);
    env.run_at(
        "2026-03-01T10:30:00Z",
        &["session", "wrap", "--tokens", "180000"],
    )
    .expect(0);
    env.run(&["task", "fail", "g", "--reason", "bad batch"])
        .expect(0);
    env.run(&["task", "retry", "g"]).expect(0);
    // Session 2 finishes it.
    env.run_at(
        "2026-03-01T11:00:00Z",
        &["session", "start", "--agent", "claude_code"],
    )
    .expect(0);
    let run = env
        .run_at(
            "2026-03-01T11:20:00Z",
            &[
                "session",
                "wrap",
                "--tokens",
                "60000",
                "--progress",
                "10/10",
            ],
        )
        .expect(0);
    assert!(run.stdout().contains("grade F"), "{}", run.explain());
    let g = env.run(&["task", "show", "g", "--json"]).expect(0).json()["grade"].clone();
    // success 1/(1+1); speed 1 expected / 2 used; quality 10/10 × 1 clean of 2;
    // efficiency 100,000 / 240,000.
    let close = |k: &str, want: f64| {
        assert!(
            (g[k].as_f64().unwrap() - want).abs() < 1e-9,
            "{k}: {} vs {want}",
            g[k]
        )
    };
    close("success_rate", 0.5);
    close("speed", 0.5);
    close("quality", 0.5);
    close("efficiency", 100_000.0 / 240_000.0);
    close(
        "score",
        0.3 * 0.5 + 0.2 * 0.5 + 0.3 * 0.5 + 0.2 * (100_000.0 / 240_000.0),
    );
    assert_eq!(g["letter"], "F");
    assert_eq!(g["inputs"]["sessions"], 2);
    assert_eq!(g["inputs"]["clean_sessions"], 1);
    assert_eq!(g["inputs"]["tokens_used"], 240_000);
}

#[test]
fn task_stats_counts_states_completion_tokens_and_grades() {
    let env = Env::new();
    for (id, est) in [("one", "100000"), ("two", "50000"), ("three", "20000")] {
        env.run(&[
            "task",
            "add",
            id,
            "--agent",
            "claude_code",
            "--estimated-tokens",
            est,
            "--total",
            "4",
        ])
        .expect(0);
    }
    env.run(&["task", "add", "four", "--agent", "zai", "--after", "three"])
        .expect(0);
    env.run(&["session", "start", "--agent", "claude_code"])
        .expect(0);
    env.run(&["session", "wrap", "--tokens", "50000", "--progress", "4/4"])
        .expect(0);
    env.run(&["task", "fail", "three", "--reason", "no input"])
        .expect(0);
    let run = env.run(&["task", "stats", "--json"]).expect(0);
    let s = run.json();
    assert_eq!(s["tasks"], 4, "{}", run.explain());
    assert_eq!(s["by_state"]["completed"], 1);
    assert_eq!(s["by_state"]["ready"], 1);
    assert_eq!(s["by_state"]["failed"], 1);
    assert_eq!(s["by_state"]["blocked"], 1);
    assert_eq!(s["completion_rate"], 25.0);
    assert_eq!(s["tokens_estimated"], 170_000);
    assert_eq!(s["tokens_used"], 50_000);
    assert_eq!(s["completed_tokens_estimated"], 100_000);
    assert_eq!(s["completed_tokens_used"], 50_000);
    assert_eq!(s["grades"]["A"], 1);
    assert_eq!(s["grades"]["F"], 0);
    let run = env.run(&["task", "stats"]).expect(0);
    assert!(
        run.stdout().contains("completion  25.0%") && run.stdout().contains("A 1"),
        "{}",
        run.explain()
    );
}

#[test]
fn plan_import_loads_the_seeds_queues_in_one_command() {
    let env = Env::new();
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plan.toml");
    let run = env.run(&["task", "import", plan, "--json"]).expect(0);
    let added = run.json()["added"].as_array().unwrap().len();
    assert_eq!(added, 17, "{}", run.explain());
    for (agent, first) in [
        ("claude_code", "integrate_sessions_101_140"),
        ("droid", "droid_batch_4_final_indicators"),
        ("zai", "zai_quality_validation"),
    ] {
        assert_eq!(next(&env, agent), first);
    }
    let t = env
        .run(&["task", "show", "integrate_sessions_141_187", "--json"])
        .expect(0)
        .json();
    assert_eq!(t["state"], "waiting");
    assert_eq!(
        t["waiting_on"],
        serde_json::json!(["integrate_claude_shared"])
    );
    // Cross-agent: claude_code's embeddings wait for zai's formatting.
    let t = env
        .run(&["task", "show", "embeddings_generation_batch_1", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        t["depends_on"],
        serde_json::json!(["zai_embeddings_formatting"])
    );
    // Importing again adds nothing.
    let run = env.run(&["task", "import", plan, "--json"]).expect(0);
    assert_eq!(run.json()["added"].as_array().unwrap().len(), 0);
    assert_eq!(run.json()["kept"].as_array().unwrap().len(), 17);

    // A plan with a cycle, or an unknown key, adds nothing at all.
    let bad = env.write(
        "bad.toml",
        "[[task]]\nid = \"p\"\nagent = \"zai\"\nafter = [\"q\"]\n\
         [[task]]\nid = \"q\"\nagent = \"zai\"\nafter = [\"p\"]\n",
    );
    let run = env
        .run(&["task", "import", bad.to_str().unwrap()])
        .expect(1);
    assert!(run.stderr().contains("cycle"), "{}", run.explain());
    let typo = env.write(
        "typo.toml",
        "[[task]]\nid = \"p\"\nagent = \"zai\"\npriorty = 1\n",
    );
    let run = env
        .run(&["task", "import", typo.to_str().unwrap()])
        .expect(1);
    assert!(run.stderr().contains("priorty"), "{}", run.explain());
    assert_eq!(env.count("SELECT COUNT(*) FROM tasks"), 17);
}
