//! `perpetual run` (the perpetual loop), `assign`, `status`, `agent resume`, `hooks` and
//! `monitor --transcript`, through the real binary. The agent is
//! tests/fixtures/fake_agent.sh, steered by FAKE_* variables (see its header); hook
//! inputs and transcripts are the fixtures in tests/fixtures/ (formats: its README).

mod common;

use common::{Env, wait_until};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A root whose agents run the fake agent, with a fast loop: the budget is looked at
/// every 100 ms and an agent asked to wrap has 2 s before SIGTERM. `extra` is appended
/// to perpetual.toml.
fn loop_env(extra: &str) -> Env {
    let env = Env::new();
    let agent = fixture("fake_agent.sh");
    env.write(
        "perpetual.toml",
        format!(
            r#"
[run]
poll_ms = 100
grace_secs = 2
term_secs = 1
idle_secs = 1
breaker_sessions = 3
backoff_secs = 0

[agents.claude_code]
command = ["sh", "{agent}"]
transcript = "{{root}}/transcripts/{{session}}.jsonl"

{extra}
"#,
            agent = agent.display()
        ),
    );
    env
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

fn prompt_of(env: &Env, session: &str) -> String {
    std::fs::read_to_string(env.path(&format!("fake/prompt_{session}.txt")))
        .unwrap_or_else(|e| panic!("no prompt for {session}: {e}\n{}", env.listing()))
}

/// The loop's promise in one run: the agent is restarted, each new session's prompt
/// (on its stdin) carries the previous session's next action, and when a task completes
/// the agent moves on to its next task.
#[test]
fn the_loop_restarts_the_agent_the_next_prompt_carries_the_handoff_and_a_completed_task_moves_it_on()
 {
    let env = loop_env("");
    env.run(&[
        "task",
        "add",
        "integrate_a",
        "--agent",
        "claude_code",
        "--total",
        "4",
    ])
    .expect(0);
    env.run(&[
        "task",
        "add",
        "integrate_b",
        "--agent",
        "claude_code",
        "--total",
        "1",
    ])
    .expect(0);
    let run = env
        .run_with(
            &["run", "--agent", "claude_code", "--max-sessions", "3"],
            &[("FAKE_STEP", "2")],
        )
        .expect(0);
    let s = env.sessions();
    assert_eq!(s.len(), 3, "{}", run.explain());
    let ids: Vec<&str> = s.iter().map(|x| x["id"].as_str().unwrap()).collect();
    let tasks: Vec<&str> = s.iter().map(|x| x["task_id"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["integrate_a", "integrate_a", "integrate_b"]);
    assert!(s.iter().all(|x| x["status"] == "wrapped"), "{s:?}");

    // The first session ended without wrapping: the loop wrapped it, and its next action
    // is in the second session's prompt, with its progress and checkpoint.
    assert_eq!(
        s[0]["next_action"],
        "Continue integrate_a from 2/4 (50.0%) (last checkpoint: fake agent: units 1-2 done)"
    );
    let second = prompt_of(&env, ids[1]);
    assert!(
        second.contains("Progress: 2/4 (50.0%)")
            && second.contains(
                "Continue integrate_a from 2/4 (50.0%) (last checkpoint: fake agent: units 1-2 done)"
            )
            && second.contains(&format!("handoff_{}.md", ids[0]))
            && second.contains("perpetual session checkpoint")
            && second.contains("perpetual session wrap"),
        "{second}"
    );
    // The prompt on stdin is the one kept beside the database.
    let kept =
        std::fs::read_to_string(env.path(&format!(".perpetual/prompts/{}.md", ids[1]))).unwrap();
    assert_eq!(kept.trim_end(), second.trim_end());

    // The second session completed integrate_a (graded); the third took integrate_b.
    let a = env.task_json("integrate_a");
    assert_eq!(a["status"], "completed");
    assert!(a["grade"]["letter"].is_string(), "{a}");
    assert!(prompt_of(&env, ids[2]).contains("Task: integrate_b (priority 5, new)"));
    assert_eq!(env.task_json("integrate_b")["status"], "completed");

    // The loop read the transcript the fake agent wrote: the session's tokens are its
    // last reply's context (input + cache creation + cache read).
    assert_eq!(s[0]["tokens_used"], 40000);
    let runs = env.count("SELECT COUNT(*) FROM loop_runs WHERE progressed = 1 AND error IS NULL");
    assert_eq!(runs, 3);
}

/// At the wrap threshold the loop writes the wrap request; an agent that honours it
/// finishes its unit, wraps itself and exits, and the loop does not stop it.
#[test]
fn at_the_wrap_threshold_the_loop_asks_the_agent_to_wrap_and_it_wraps_itself() {
    let env = loop_env("");
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "3"])
        .expect(0);
    let run = env
        .run_with(
            &["run", "--once"],
            &[("FAKE_MODE", "linger"), ("FAKE_PEAK", "172000")],
        )
        .expect(0);
    let s = &env.sessions()[0];
    assert_eq!(s["status"], "wrapped", "{}", run.explain());
    assert_eq!(s["next_action"], "fake agent: continue after unit 1");
    assert_eq!(s["level"], "wrap");
    assert_eq!(s["tokens_used"], 172000);
    let row: (Option<String>, Option<String>, i64) = env
        .db()
        .query_row(
            "SELECT wrap_requested_at, stopped_with, exit_code FROM loop_runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(row.0.is_some() && row.1.is_none() && row.2 == 0, "{row:?}");
    assert!(run.stderr().contains("asked"), "{}", run.explain());
    assert!(
        !env.path(&format!(".perpetual/wrap_{}", s["id"].as_str().unwrap()))
            .exists(),
        "the request is removed once the session ended"
    );
}

/// An agent that ignores the wrap request gets SIGTERM after the grace period, and the
/// loop wraps its session for it.
#[test]
fn an_agent_that_ignores_the_wrap_request_is_stopped_after_the_grace_period() {
    let env = loop_env("");
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "3"])
        .expect(0);
    let started = Instant::now();
    let run = env
        .run_with(&["run", "--once"], &[("FAKE_MODE", "ignore")])
        .expect(0);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the grace period is 2 s"
    );
    let s = &env.sessions()[0];
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["status"], "wrapped", "{}", run.explain());
    // 180,000 of 200,000 is the hard stop: the unfinished task is flagged.
    assert_eq!(s["level"], "hard_stop");
    assert!(env.task_json("t")["needs_review"].is_string());
    assert!(
        env.path(&format!("fake/terminated_{id}")).exists(),
        "{}",
        run.explain()
    );
    let stopped: String = env
        .db()
        .query_row("SELECT stopped_with FROM loop_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stopped, "SIGTERM");
}

/// Three sessions in a row without progress pause the agent and flag its task; a paused
/// agent gets no session until `agent resume`. The same error three times trips it too.
#[test]
fn the_circuit_breaker_pauses_an_agent_after_sessions_without_progress_until_resume() {
    let env = loop_env("");
    env.run(&[
        "task",
        "add",
        "stuck",
        "--agent",
        "claude_code",
        "--total",
        "5",
    ])
    .expect(0);
    for _ in 0..3 {
        env.run_with(&["run", "--once"], &[("FAKE_MODE", "stall")])
            .expect(0);
    }
    let a = agent_status(&env, "claude_code");
    let reason = a["paused"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("3 sessions in a row made no progress"),
        "{a}"
    );
    assert_eq!(a["needs_review"][0]["task"], "stuck");
    assert_eq!(env.task_json("stuck")["needs_review"], reason.as_str());
    let run = env.run_with(&["run", "--once"], &[("FAKE_MODE", "stall")]);
    assert_eq!(run.code(), 4, "paused: nothing started\n{}", run.explain());
    assert_eq!(env.sessions().len(), 3);
    let text = env.run(&["status"]).expect(0).stdout();
    assert!(
        text.contains("PAUSED") && text.contains("agent resume claude_code"),
        "{text}"
    );

    let resumed = env.run(&["agent", "resume", "claude_code"]).expect(0);
    assert!(resumed.stdout().contains("resumed claude_code"));
    assert!(agent_status(&env, "claude_code")["paused"].is_null());
    assert!(env.task_json("stuck")["needs_review"].is_null());

    // The breaker counts afresh: the same error three times trips it again.
    for _ in 0..3 {
        env.run_with(&["run", "--once"], &[("FAKE_MODE", "fail")])
            .expect(0);
    }
    let a = agent_status(&env, "claude_code");
    assert_eq!(
        a["paused"]["reason"],
        "circuit breaker: 3 sessions in a row ended with the same error: exit status 3: fake agent: boom",
        "{a}"
    );
    assert_eq!(env.sessions().len(), 6);
}

/// An API-call budget refuses new sessions once today's calls reach the wrap threshold
/// and starts them again after 00:00 UTC.
#[test]
fn an_api_calls_budget_refuses_sessions_until_the_utc_day_boundary() {
    let agent = fixture("fake_agent.sh");
    let env = loop_env(&format!(
        r#"
[agents.droid]
command = ["sh", "{}"]
transcript = "{{root}}/transcripts/{{session}}.jsonl"

[agents.droid.budget]
tokens_per_session = 0
api_calls_per_day = 10
"#,
        agent.display()
    ));
    env.run(&["task", "add", "batch", "--agent", "droid", "--total", "10"])
        .expect(0);
    let at = |now: &str| {
        env.run_with(
            &["run", "--once", "--agent", "droid"],
            &[("PERPETUAL_NOW", now), ("FAKE_API_CALLS", "9")],
        )
    };
    at("2026-01-01T23:50:00Z").expect(0);
    assert_eq!(env.sessions().len(), 1);

    // 9 of 10 calls today: 90%, past the wrap threshold.
    let run = at("2026-01-01T23:59:00Z");
    assert_eq!(run.code(), 4, "{}", run.explain());
    assert!(
        run.stderr()
            .contains("droid is over budget (API calls today 9 / 10, 90.0%)")
            && run.stderr().contains("resets at 2026-01-02T00:00:00Z"),
        "{}",
        run.explain()
    );
    let status = env
        .run_at("2026-01-01T23:59:00Z", &["status", "--json"])
        .expect(0)
        .json();
    let droid = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "droid")
        .unwrap()
        .clone();
    assert_eq!(droid["over_budget"]["resets_at"], "2026-01-02T00:00:00Z");
    assert_eq!(droid["budget"][0]["used"], 9);

    // A new UTC day: the count starts again.
    at("2026-01-02T00:00:30Z").expect(0);
    let s = env.sessions();
    assert_eq!(s.len(), 2);
    assert_eq!(s[1]["started_at"], "2026-01-02T00:00:30Z");
    assert_eq!(env.task_json("batch")["done"], 2);
}

fn hook(env: &Env, fixture_name: &str, transcript: Option<&str>, envs: &[(&str, &str)]) -> String {
    let mut input: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("hooks/{fixture_name}"))).unwrap(),
    )
    .unwrap();
    if let Some(t) = transcript {
        input["transcript_path"] =
            Value::from(fixture(&format!("transcripts/{t}")).display().to_string());
    }
    let mut cmd = env.command(&["hooks", "handle"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "hooks handle < {fixture_name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The hooks answer Claude Code's recorded inputs: nothing below the wrap threshold; at
/// or past it, the wrap instructions after a tool use and a blocked Stop, except when
/// stop_hook_active says Claude already continues because of a Stop hook, or once the
/// session is wrapped.
#[test]
fn hooks_answer_recorded_hook_inputs_below_and_above_the_wrap_threshold() {
    let env = Env::new();
    env.run(&["task", "add", "t", "--agent", "claude_code", "--total", "4"])
        .expect(0);
    let start = env
        .run(&["session", "start", "--agent", "claude_code", "--json"])
        .expect(0)
        .json();
    let session = start["session"]["id"].as_str().unwrap().to_string();
    let envs = [("PERPETUAL_SESSION", session.as_str())];

    let brief: Value =
        serde_json::from_str(&hook(&env, "session_start.json", None, &envs)).unwrap();
    assert_eq!(brief["hookSpecificOutput"]["hookEventName"], "SessionStart");
    let context = brief["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(
        context.contains("Task: t (priority 5, new)") && context.contains("Progress: 0/4"),
        "{context}"
    );

    // Below: 99,204 of 200,000 tokens. Nothing to say; the tokens are recorded.
    assert_eq!(
        hook(&env, "post_tool_use.json", Some("below_wrap.jsonl"), &envs),
        ""
    );
    assert_eq!(hook(&env, "stop.json", Some("below_wrap.jsonl"), &envs), "");
    let tokens = env.count("SELECT tokens_used FROM sessions");
    assert_eq!(tokens, 99_204);

    // Above: 173,051 (86.5%), the synthetic and sub-agent replies after it not counted.
    let post: Value = serde_json::from_str(&hook(
        &env,
        "post_tool_use.json",
        Some("above_wrap.jsonl"),
        &envs,
    ))
    .unwrap();
    assert_eq!(post["hookSpecificOutput"]["hookEventName"], "PostToolUse");
    let told = post["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(
        told.contains("tokens 86.5% (wrap)") && told.contains("perpetual session wrap"),
        "{told}"
    );
    let stop: Value =
        serde_json::from_str(&hook(&env, "stop.json", Some("above_wrap.jsonl"), &envs)).unwrap();
    assert_eq!(stop["decision"], "block");
    assert!(
        stop["reason"]
            .as_str()
            .unwrap()
            .contains("perpetual session checkpoint")
    );
    // Claude already continues because of this hook: let it stop, never loop.
    assert_eq!(
        hook(
            &env,
            "stop_hook_active.json",
            Some("above_wrap.jsonl"),
            &envs
        ),
        ""
    );

    // Before a compaction: a checkpoint and an interim handoff.
    assert_eq!(hook(&env, "pre_compact.json", None, &envs), "");
    let note: String = env
        .db()
        .query_row(
            "SELECT note FROM checkpoints ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(note, "before a compaction (auto)");
    assert!(
        env.path(&format!("session_handoffs/handoff_{session}_interim.md"))
            .is_file()
    );

    // Once wrapped, Claude may stop.
    env.run(&["session", "wrap", "--session", &session])
        .expect(0);
    assert_eq!(hook(&env, "stop.json", Some("above_wrap.jsonl"), &envs), "");

    // hooks install registers the handler for the four events, once.
    let installed = env.run(&["hooks", "install", "--json"]).expect(0).json();
    assert_eq!(installed["added"].as_array().unwrap().len(), 4);
    let again = env.run(&["hooks", "install", "--json"]).expect(0).json();
    assert_eq!(again["kept"].as_array().unwrap().len(), 4);
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path(".claude/settings.json")).unwrap())
            .unwrap();
    // The absolute path of the binary that installed them (Claude Code's PATH may not
    // have it).
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_perpetual"))
        .canonicalize()
        .unwrap();
    for event in ["SessionStart", "PostToolUse", "Stop", "PreCompact"] {
        assert_eq!(
            settings["hooks"][event][0]["hooks"][0]["command"],
            format!("{} hooks handle", bin.display()),
            "{settings}"
        );
        assert_eq!(settings["hooks"][event].as_array().unwrap().len(), 1);
    }
}

/// `monitor --transcript` measures the last reply's context against the window.
#[test]
fn monitor_reads_the_context_in_use_from_a_claude_code_transcript() {
    let env = Env::new();
    let below = fixture("transcripts/below_wrap.jsonl");
    let above = fixture("transcripts/above_wrap.jsonl");
    let run = env
        .run(&["monitor", "--transcript", below.to_str().unwrap(), "--json"])
        .expect(0);
    let m = run.json();
    assert_eq!(
        (m["used"].as_u64(), m["budget"].as_u64()),
        (Some(99_204), Some(200_000))
    );
    assert_eq!(m["reply"]["line"], 5);
    let run = env
        .run(&["monitor", "--transcript", above.to_str().unwrap()])
        .expect(11);
    assert!(
        run.stdout().contains("173,051 / 200,000 (86.5%)"),
        "{}",
        run.explain()
    );
    // A larger window from the configuration: healthy.
    env.write("perpetual.toml", "[monitor]\ncontext_window = 1000000\n");
    env.run(&["monitor", "--transcript", above.to_str().unwrap()])
        .expect(0);
}

fn flat(pairs: &[(&str, &str)]) -> String {
    let items: Vec<Value> = pairs
        .iter()
        .map(|(q, a)| serde_json::json!({"question": q, "answer": a}))
        .collect();
    Value::from(items).to_string()
}

/// The assigner: drops waiting get an ingest task, which the loop runs itself; failed
/// tasks come back one priority higher until the retry limit; templated queues are kept
/// at three ready tasks. Everything it does is in `status`.
#[test]
fn assign_makes_ingest_tasks_retries_failures_and_keeps_templated_queues_full() {
    let env = loop_env("[assign]\nretry_limit = 1\n");
    env.drop_file(
        "droid",
        "batch_1.json",
        flat(&[("What is RSI?", "A momentum oscillator.")]),
    );
    let done = env.run(&["assign", "--json"]).expect(0).json();
    let ingest = done
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "ingest")
        .unwrap_or_else(|| panic!("{done}"))
        .clone();
    let id = ingest["task_id"].as_str().unwrap().to_string();
    assert_eq!(env.task_json(&id)["kind"], "ingest");
    // droid has no command: the loop still runs its built-in tasks.
    env.run(&["run", "--once", "--agent", "droid"]).expect(0);
    assert_eq!(env.task_json(&id)["status"], "completed");
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), 1);
    assert_eq!(env.files_in("inbox/droid/processed"), ["batch_1.json"]);

    env.run(&["task", "add", "flaky", "--agent", "zai"])
        .expect(0);
    env.run(&["task", "fail", "flaky", "--reason", "timeout"])
        .expect(0);
    let done = env.run(&["assign", "--json"]).expect(0).json();
    assert_eq!(done[0]["action"], "retry", "{done}");
    let t = env.task_json("flaky");
    assert_eq!(
        (t["status"].as_str(), t["priority"].as_i64()),
        (Some("pending"), Some(4))
    );
    env.run(&["task", "fail", "flaky", "--reason", "timeout again"])
        .expect(0);
    let done = env.run(&["assign", "--json"]).expect(0).json();
    assert_eq!(done[0]["action"], "retry_limit", "{done}");
    assert_eq!(env.task_json("flaky")["status"], "failed");
    assert!(env.task_json("flaky")["needs_review"].is_string());

    env.write(
        "plan.toml",
        "[[template]]\nagent = \"zai\"\nid = \"zai_quality_batch_{n}\"\n\
         description = \"Quality batch {n}\"\nstart = 7\n",
    );
    env.run(&["task", "import", "plan.toml"]).expect(0);
    env.run(&["task", "add", "zai_manual", "--agent", "zai"])
        .expect(0);
    let done = env.run(&["assign", "--json"]).expect(0).json();
    let made: Vec<&str> = done
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "template")
        .map(|e| e["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(made, ["zai_quality_batch_7", "zai_quality_batch_8"]);
    assert_eq!(
        env.task_json("zai_quality_batch_8")["description"],
        "Quality batch 8"
    );
    let zai = agent_status(&env, "zai");
    assert_eq!(
        (zai["queue_depth"].as_u64(), zai["queue_healthy"].as_bool()),
        (Some(3), Some(true))
    );
    let again = env.run(&["assign", "--json"]).expect(0).json();
    assert_eq!(again.as_array().unwrap().len(), 0, "{again}");
    let log = env.run(&["status", "--json"]).expect(0).json()["assigner"].clone();
    assert_eq!(log[0]["task_id"], "zai_quality_batch_8");
}

/// A backfill task (kind backfill, params dir and range) runs inside the loop through
/// `backfill::run_task`, in a session of its agent, and completes.
#[test]
fn a_backfill_task_runs_inside_the_loop() {
    let env = Env::new();
    env.write(
        "archive/session_1.json",
        flat(&[("Q1?", "A1."), ("Q2?", "A2.")]),
    );
    env.write("archive/session_2.json", flat(&[("Q3?", "A3.")]));
    let archive = env.path("archive");
    let add = env
        .run(&[
            "task",
            "add",
            "--kind",
            "backfill",
            "--dir",
            archive.to_str().unwrap(),
            "--sessions",
            "1-2",
            "--agent",
            "claude_code",
        ])
        .expect(0);
    assert!(
        add.stdout().contains("added backfill_sessions_1_2"),
        "{}",
        add.explain()
    );
    let t = env.task_json("backfill_sessions_1_2");
    assert_eq!(t["kind"], "backfill");
    assert_eq!(t["params"]["sessions"], "1-2");
    // claude_code has no command here: the loop runs the built-in task only.
    let run = env.run(&["run", "--once"]).expect(0);
    let t = env.task_json("backfill_sessions_1_2");
    assert_eq!(t["status"], "completed", "{}", run.explain());
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), 3);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions WHERE status = 'wrapped'"),
        1
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM loop_runs WHERE kind = 'backfill' AND session_id IS NOT NULL"
        ),
        1
    );
}

/// Process CPU time (user + system) in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// With nothing ready the loop blocks (no CPU) and still integrates drops as they land;
/// SIGTERM asks the running session to wrap and the loop exits 0 once it has.
#[test]
fn the_loop_waits_without_spinning_integrates_drops_and_stops_cleanly_on_sigterm() {
    let env = loop_env("");
    let mut run = env.spawn(&["run"]);
    run.wait_for_log("waiting");
    let before = cpu_ticks(run.pid());
    std::thread::sleep(Duration::from_millis(1500));
    if let (Some(a), Some(b)) = (before, cpu_ticks(run.pid())) {
        assert!(
            b - a < 30,
            "the idle loop used {} ticks in 1.5 s\n{}",
            b - a,
            run.explain()
        );
    }

    env.drop_file("droid", "late.json", flat(&[("Late?", "Yes.")]));
    wait_until(
        "the drop to be integrated",
        || env.try_count("SELECT COUNT(*) FROM pairs") == Some(1),
        || run.explain(),
    );

    run.stop();

    // A session that waits for the wrap request (its budget is healthy).
    env.run(&[
        "task",
        "add",
        "long",
        "--agent",
        "claude_code",
        "--total",
        "2",
    ])
    .expect(0);
    // The harness's spawn takes no extra environment: the command sets the fake's mode.
    env.write(
        "perpetual.toml",
        std::fs::read_to_string(env.path("perpetual.toml"))
            .unwrap()
            .replace(
                "command = [\"sh\",",
                "command = [\"env\", \"FAKE_MODE=linger\", \"FAKE_PEAK=30000\", \"sh\",",
            ),
    );
    let mut run = env.spawn(&["run"]);
    run.wait_for_log("started session_");
    wait_until(
        "the fake agent to be at work",
        || env.try_count("SELECT COUNT(*) FROM checkpoints") == Some(1),
        || run.explain(),
    );
    run.stop();
    let all = env.sessions();
    assert_eq!(all.len(), 1, "{}", run.explain());
    let s = &all[0];
    assert_eq!(s["status"], "wrapped", "{}", run.explain());
    assert_eq!(s["next_action"], "fake agent: continue after unit 1");
    assert!(
        run.stderr().contains("the loop is stopping"),
        "{}",
        run.explain()
    );
}

/// An agent never runs more sessions at once than its slot budget allows.
#[test]
fn an_agent_never_runs_more_sessions_at_once_than_its_slots() {
    let agent = fixture("fake_agent.sh");
    let env = loop_env(&format!(
        r#"
[agents.droid]
command = ["env", "FAKE_MODE=linger", "FAKE_PEAK=1000", "sh", "{}"]
transcript = "{{root}}/transcripts/{{session}}.jsonl"

[agents.droid.budget]
tokens_per_session = 0
slots = 2
"#,
        agent.display()
    ));
    for t in ["job_1", "job_2", "job_3"] {
        env.run(&["task", "add", t, "--agent", "droid", "--total", "1"])
            .expect(0);
    }
    let mut run = env.spawn(&["run", "--agent", "droid"]);
    let active = "SELECT COUNT(*) FROM sessions WHERE status = 'active'";
    wait_until(
        "two sessions to run",
        || env.try_count(active) == Some(2),
        || run.explain(),
    );
    run.wait_for_log("waiting");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.try_count(active), Some(2), "{}", run.explain());
    let a = agent_status(&env, "droid");
    assert_eq!(a["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(a["over_budget"]["usage"]["kind"], "slots", "{a}");
    // Stopping asks both to wrap; they finish their unit and wrap themselves.
    run.stop();
    assert_eq!(env.count(active), 0);
    assert_eq!(env.count("SELECT COUNT(*) FROM sessions"), 2);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM tasks WHERE status = 'completed'"),
        2
    );
}
