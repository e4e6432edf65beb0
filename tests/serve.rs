//! The web faucet (`perpetual serve`, `perpetual run --serve`) through the real binary on
//! a free port, over a root with data: every page and endpoint with its content type,
//! the API's JSON against the CLI's `--json`, `/metrics` parsed as Prometheus text, the
//! live feed reaching a client within a second of a commit, the token, escaping, clean
//! 4xx answers, and a clean stop.

mod common;
#[path = "common/faucet.rs"]
mod faucet;

use common::{Env, PATIENCE};
use faucet::{EVIL_NAME, EVIL_NOTE, Faucet, NOW, SKIPPED_NAME, root_with_data};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn active_session(env: &Env) -> String {
    session_of(env, "claude_code")
}

/// The id of `agent`'s (only) session in `root_with_data`.
fn session_of(env: &Env, agent: &str) -> String {
    let list = env
        .run_at(NOW, &["session", "list", "--json"])
        .expect(0)
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["agent"] == agent)
        .unwrap_or_else(|| panic!("a session of {agent}: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The card of `agent` on the faucet page: its `<article>`.
fn card<'a>(page: &'a str, agent: &str) -> &'a str {
    let start = page
        .find(&format!("data-agent=\"{agent}\""))
        .unwrap_or_else(|| panic!("no card for {agent}\n{page}"));
    let end = start + page[start..].find("</article>").unwrap();
    &page[start..end]
}

#[test]
fn every_page_and_endpoint_answers_with_its_content_type() {
    let env = Env::new();
    root_with_data(&env);
    let session = active_session(&env);
    env.write(
        "outbox/zai/visualizations/category_distribution.svg",
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>"#,
    );
    let f = Faucet::start(&env, &[]);

    for (path, media_type) in [
        ("/", "text/html"),
        ("/tasks", "text/html"),
        ("/tasks?agent=droid", "text/html"),
        ("/tasks/integrate_sessions_101_140", "text/html"),
        ("/sessions", "text/html"),
        (&format!("/sessions/{session}"), "text/html"),
        ("/files", "text/html"),
        ("/files?agent=zai&status=rejected", "text/html"),
        ("/files?status=skipped", "text/html"),
        ("/api/status", "application/json"),
        ("/api/stats", "application/json"),
        ("/api/tasks", "application/json"),
        ("/api/files", "application/json"),
        ("/metrics", "text/plain"),
        ("/charts/growth.svg", "image/svg+xml"),
        ("/charts/zai/category_distribution.svg", "image/svg+xml"),
        ("/static/faucet.css", "text/css"),
        ("/static/faucet.js", "text/javascript"),
    ] {
        f.get(path).expect(200, media_type);
    }

    // The faucet shows each agent, the paused one with its reason, the session's
    // budget bar labelled with its level, the bottleneck, the last files, the charts.
    let page = f.get("/").expect(200, "text/html").body;
    for want in [
        "claude_code",
        "droid",
        "‖ paused",
        "three sessions without progress",
        "⚠ warning", // 160,000 of 200,000 tokens: 80%
        "160,000 / 200,000",
        "embeddings_generation_batch_1", // waits for zai's task: a bottleneck
        "droid_batch_0003_adx.json",
        "✗ rejected",
        "malformed JSON",
        "= duplicate",
        "/charts/zai/category_distribution.svg",
        "<svg",
        "/static/faucet.js",
    ] {
        assert!(page.contains(want), "/ lacks {want:?}\n{page}");
    }
    // One card per agent, each in its state: working with its session's bars, paused
    // with why, and waiting for review after a wrap at the hard-stop level, with its
    // budget's level in words, the refusal, queue, next tasks and idle time.
    let working = card(&page, "claude_code");
    for want in ["▶ working", "⚠ warning", "queue", "next"] {
        assert!(
            working.contains(want),
            "claude_code's card lacks {want:?}\n{working}"
        );
    }
    assert!(card(&page, "zai").contains("‖ paused"));
    let review = card(&page, "droid");
    for want in [
        "⚑ needs review",
        "⚑ review <a href=\"/tasks/droid_batch_4_final_indicators\">",
        "wrapped at the hard_stop level",
        "✖ hard stop", // 920 of 1,000 API calls today: 92%
        "920 / 1,000",
        "✖ new sessions", // refused until the day's calls reset
        "3 ready",
        "<ol class=\"next\">",
        "idle less than a minute",
    ] {
        assert!(
            review.contains(want),
            "droid's card lacks {want:?}\n{review}"
        );
    }
    let session_page = f.get(&format!("/sessions/{session}")).body;
    assert!(session_page.contains("10/40"), "{session_page}");
    // A wrapped session's handoff, rendered from Markdown, its raw HTML shown as text.
    let wrapped = f
        .get(&format!("/sessions/{}", session_of(&env, "droid")))
        .expect(200, "text/html")
        .body;
    for want in [
        "<h1>Session handoff",
        "<h2>Next action</h2>",
        "Resume at <strong>batch 6</strong> &lt;img src=x",
        "<td>5/40 (12.5%)</td>",
    ] {
        assert!(
            wrapped.contains(want),
            "the handoff lacks {want:?}\n{wrapped}"
        );
    }
    assert!(!wrapped.contains("<img src=x"), "{wrapped}");
    // The ledger page filters by agent and status, and shows what the engine skipped.
    let skipped = f.get("/files?status=skipped").body;
    assert!(
        skipped.contains(SKIPPED_NAME) && skipped.contains("– skipped"),
        "{skipped}"
    );
    assert!(!skipped.contains("droid_batch_0003_adx.json"), "{skipped}");
    let rejected = f.get("/files?agent=droid&status=rejected").body;
    assert!(
        rejected.contains("bad_malformed_missing_comma.json")
            && rejected.contains("malformed JSON"),
        "{rejected}"
    );
    for other in [
        "again.json",
        "droid_batch_0000_order_flow.json",
        SKIPPED_NAME,
    ] {
        assert!(!rejected.contains(other), "{other} on {rejected}");
    }
    // The archive with the grade, and the report rendered, its markup shown as text.
    let tasks = f.get("/tasks").body;
    assert!(
        tasks.contains("The archive") && tasks.contains("/tasks/quick_check#report"),
        "{tasks}"
    );
    // The grade the CLI gives, and the queue in its order.
    let listed = env
        .run_at(NOW, &["task", "list", "--all", "--json"])
        .expect(0)
        .json();
    let grade = &listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "quick_check")
        .unwrap()["grade"];
    let shown = format!(
        "<b class=\"grade\">{} ({:.2})</b>",
        grade["letter"].as_str().unwrap(),
        grade["score"].as_f64().unwrap()
    );
    assert!(tasks.contains(&shown), "/tasks lacks {shown}\n{tasks}");
    let queue = &tasks[..tasks.find("The archive").unwrap()];
    for ready in ["integrate_claude_shared", "droid_batch_5_microstructure"] {
        assert!(queue.contains(ready), "the queue lacks {ready}\n{queue}");
    }
    let report = f.get("/tasks/quick_check").expect(200, "text/html").body;
    assert!(
        report.contains("<h1>Task report: quick_check</h1>"),
        "{report}"
    );
    assert!(
        report.contains("a &lt;i&gt;quick&lt;/i&gt; check"),
        "{report}"
    );
    assert!(!report.contains("<i>quick"), "{report}");

    // A workbench chart never runs scripts with the faucet's origin.
    let chart = f.get_with("/charts/zai/category_distribution.svg", &[]);
    assert!(chart.body.contains("<rect"));

    // Clean 4xx: unknown paths, unknown records, malformed queries, other methods.
    f.get("/nope").expect(404, "text/html");
    f.get("/api/nope").expect(404, "application/json");
    f.get("/sessions/session_19990101_000000")
        .expect(404, "text/html");
    f.get("/tasks/no_such_task").expect(404, "text/html");
    f.get("/charts/zai/..%2Fperpetual.toml")
        .expect(404, "text/plain");
    f.get("/charts/zai/missing.svg").expect(404, "text/plain");
    f.get("/api/stats?top=many").expect(400, "text/plain");
    f.get("/api/tasks?all=maybe").expect(400, "text/plain");
    f.get("/api/files?colour=red").expect(400, "text/plain");
    f.get("/files?before=yesterday").expect(400, "text/plain");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = agent
        .post(format!("{}/api/status", f.base))
        .send("")
        .unwrap();
    assert_eq!(post.status().as_u16(), 405, "nothing changes state");
    // A raw request that is not HTTP gets a 400, and the server goes on.
    use std::io::{Read, Write};
    let mut raw = std::net::TcpStream::connect(f.base.trim_start_matches("http://")).unwrap();
    raw.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    f.get("/api/status").expect(200, "application/json");
}

/// The API's JSON is the CLI's `--json`, query parameter for flag, at the same moment.
#[test]
fn the_api_answers_the_same_json_as_the_cli() {
    let env = Env::new();
    root_with_data(&env);
    let f = Faucet::start(&env, &[]);
    for (path, cli) in [
        ("/api/status", vec!["status", "--json"]),
        ("/api/stats", vec!["stats", "--json"]),
        ("/api/stats?top=2", vec!["stats", "--json", "--top", "2"]),
        ("/api/tasks", vec!["task", "list", "--json"]),
        (
            "/api/tasks?all=true&agent=droid",
            vec!["task", "list", "--json", "--all", "--agent", "droid"],
        ),
        ("/api/files", vec!["files", "--json"]),
        (
            "/api/files?rejected=1",
            vec!["files", "--json", "--rejected"],
        ),
        (
            "/api/files?agent=zai&status=duplicate",
            vec!["files", "--json", "--agent", "zai", "--status", "duplicate"],
        ),
        (
            "/api/files?skipped=true",
            vec!["files", "--json", "--skipped"],
        ),
    ] {
        let mut served = f.get(path).expect(200, "application/json").json();
        let mut printed = env.run_at(NOW, &cli).expect(0).json();
        // The free disk space is read at each answer: other processes (the other tests)
        // write meanwhile, so it may differ by a megabyte. It must be there, a number.
        for json in [&mut served, &mut printed] {
            if let Some(free) = json.pointer_mut("/loop/free_disk_mb") {
                assert!(free.is_u64(), "{path}: free_disk_mb {free}");
                *free = serde_json::Value::Null;
            }
        }
        assert_eq!(
            served,
            printed,
            "{path} differs from perpetual {}",
            cli.join(" ")
        );
    }
    // Filters filter: the one duplicate file, the one rejected.
    let dup = f.get("/api/files?agent=zai&status=duplicate").json();
    assert_eq!(dup.as_array().unwrap().len(), 1, "{dup}");
    let rejected = f.get("/api/files?rejected=true").json();
    assert_eq!(rejected.as_array().unwrap().len(), 1, "{rejected}");
    let skipped = f.get("/api/files?skipped=true").json();
    assert_eq!(skipped[0]["name"], SKIPPED_NAME, "{skipped}");
    assert_eq!(skipped.as_array().unwrap().len(), 1, "{skipped}");
}

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> &'a prometheus_parse::Sample {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape: {:#?}", scrape.samples))
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{} is not a single value: {other:?}", s.metric),
    }
}

#[test]
fn metrics_parse_as_prometheus_text_with_the_roots_numbers() {
    let env = Env::new();
    root_with_data(&env);
    let session = active_session(&env);
    let stats = env.run_at(NOW, &["stats", "--json"]).expect(0).json();
    let f = Faucet::start(&env, &[]);
    let reply = f.get("/metrics").expect(200, "text/plain");
    assert!(
        reply.content_type.contains("version=0.0.4"),
        "{}",
        reply.content_type
    );
    let lines = reply.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");

    assert_eq!(
        value(sample(&scrape, "perpetual_pairs_total", &[])),
        stats["pairs"].as_f64().unwrap()
    );
    assert_eq!(
        value(sample(
            &scrape,
            "perpetual_files_total",
            &[("status", "rejected")]
        )),
        1.0
    );
    assert_eq!(
        value(sample(
            &scrape,
            "perpetual_files_total",
            &[("status", "duplicate")]
        )),
        1.0
    );
    assert_eq!(
        value(sample(
            &scrape,
            "perpetual_files_total",
            &[("status", "integrated")]
        )),
        stats["files_integrated"].as_f64().unwrap()
    );
    assert_eq!(
        value(sample(
            &scrape,
            "perpetual_files_total",
            &[("status", "skipped")]
        )),
        1.0
    );
    sample(&scrape, "perpetual_pairs_invalid_total", &[]);
    let ratio = value(sample(
        &scrape,
        "perpetual_session_budget_ratio",
        &[
            ("agent", "claude_code"),
            ("session", &session),
            ("kind", "tokens"),
        ],
    ));
    assert!(
        (ratio - 0.8).abs() < 1e-9,
        "160,000 of 200,000 tokens: {ratio}"
    );
    assert_eq!(
        value(sample(
            &scrape,
            "perpetual_agent_paused",
            &[("agent", "zai")]
        )),
        1.0
    );
    assert_eq!(
        value(sample(
            &scrape,
            "perpetual_agent_paused",
            &[("agent", "droid")]
        )),
        0.0
    );
    let status = env.run_at(NOW, &["status", "--json"]).expect(0).json();
    let droid = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "droid")
        .unwrap();
    assert_eq!(
        value(sample(
            &scrape,
            "perpetual_queue_ready",
            &[("agent", "droid")]
        )),
        droid["queue_depth"].as_f64().unwrap()
    );
    // The histogram: every file the ledger finished has a duration.
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "perpetual_ingest_seconds")
        .expect("perpetual_ingest_seconds");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            let files = ["files_integrated", "files_duplicate", "files_rejected"]
                .iter()
                .map(|k| stats[*k].as_f64().unwrap())
                .sum::<f64>();
            assert_eq!(inf.count, files, "{buckets:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].count <= w[1].count),
                "cumulative: {buckets:?}"
            );
        }
        other => panic!("perpetual_ingest_seconds is not a histogram: {other:?}"),
    }
    assert!(
        reply
            .body
            .contains("# TYPE perpetual_ingest_seconds histogram")
    );
    assert!(
        reply.body.contains("perpetual_ingest_seconds_count 8"),
        "{}",
        reply.body
    );

    // OpenMetrics for scrapers that ask for it.
    let om = f.get_with(
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    assert!(om.body.trim_end().ends_with("# EOF"), "{}", om.body);
}

/// Follows `/events` on a thread of its own; each event's data arrives on the channel.
fn follow_events(f: &Faucet) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let url = format!("{}/events", f.base);
    std::thread::spawn(move || {
        let response = ureq::get(&url).call().expect("GET /events");
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ")
                && tx.send(data.to_string()).is_err()
            {
                break;
            }
        }
    });
    rx
}

#[test]
fn a_drop_integrated_while_the_page_is_open_reaches_an_sse_client_within_a_second() {
    let env = Env::new();
    root_with_data(&env);
    let f = Faucet::start(&env, &[]);
    let events = follow_events(&f);
    let first: Value =
        serde_json::from_str(&events.recv_timeout(PATIENCE).expect("the first event")).unwrap();
    let pairs_before = first["pairs"].as_u64().unwrap();
    assert!(
        first["sections"]["agents"]
            .as_str()
            .unwrap()
            .contains("claude_code")
    );

    env.drop_file(
        "droid",
        "late_arrival.json",
        r#"[{"question": "Is this live?", "answer": "Within a second."}]"#,
    );
    env.run_at(NOW, &["ingest"]).expect(0);
    let committed = Instant::now();
    loop {
        let left = Duration::from_secs(1).saturating_sub(committed.elapsed());
        let data = events.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no event with the drop within a second of its commit\n{}",
                f.process.explain()
            )
        });
        let event: Value = serde_json::from_str(&data).unwrap();
        if event["sections"]["files"]
            .as_str()
            .unwrap()
            .contains("late_arrival.json")
        {
            assert_eq!(event["pairs"].as_u64().unwrap(), pairs_before + 1);
            assert!(event["version"].as_u64() > first["version"].as_u64());
            break;
        }
    }
}

/// `serve` beside `watch`: the overview names the watcher, and a drop the watcher
/// integrates reaches the page's live feed within a second of its commit.
#[test]
fn serve_beside_watch_names_the_watcher_and_follows_its_drops() {
    let env = Env::new();
    root_with_data(&env);
    let mut watch = env.spawn(&["watch"]);
    watch.wait_for_log("watching");
    let f = Faucet::start(&env, &[]);
    let page = f.get("/").expect(200, "text/html").body;
    assert!(
        page.contains("▶ watcher running (no loop)")
            && page.contains(&format!("`perpetual watch`, pid {}", watch.pid())),
        "{page}"
    );
    let events = follow_events(&f);
    events.recv_timeout(PATIENCE).expect("the first event");
    env.drop_file(
        "zai",
        "watched.json",
        r#"[{"question": "Seen by the watcher?", "answer": "And by the page."}]"#,
    );
    // The commit's moment: when the ledger, read beside both, first shows the file done.
    let db = env.db();
    let committed = loop {
        let done: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM files WHERE name = 'watched.json' AND status = 'integrated'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if done == 1 {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    loop {
        let left = Duration::from_secs(1).saturating_sub(committed.elapsed());
        let data = events.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no event with the watcher's drop within a second of its commit\n{}\n{}",
                f.process.explain(),
                watch.explain()
            )
        });
        let event: Value = serde_json::from_str(&data).unwrap();
        if event["sections"]["files"]
            .as_str()
            .unwrap()
            .contains("watched.json")
        {
            break;
        }
    }
    watch.stop();
}

#[test]
fn a_server_beyond_loopback_needs_its_token_and_answers_401_without_it() {
    let env = Env::new();
    root_with_data(&env);
    // Refused outright without a token.
    let refused = env.run(&["serve", "--addr", "0.0.0.0:0"]).expect(1);
    assert!(
        refused.stderr().contains("needs a token"),
        "{}",
        refused.explain()
    );

    // 0.0.0.0 is every address of the machine; the test talks to it on 127.0.0.1.
    let f = Faucet::start_with(
        &env,
        &["--addr", "0.0.0.0:0"],
        &[("PERPETUAL_TOKEN", "correct-horse-battery-staple")],
    );
    for (case, headers) in [
        ("no header", vec![]),
        (
            "wrong token",
            vec![("authorization", "Bearer correct-horse")],
        ),
        (
            "longer token",
            vec![("authorization", "Bearer correct-horse-battery-staple!")],
        ),
        (
            "other scheme",
            vec![("authorization", "Token correct-horse-battery-staple")],
        ),
    ] {
        for path in ["/", "/api/status", "/metrics", "/events", "/nope"] {
            let reply = f.get_with(path, &headers);
            assert_eq!(reply.status, 401, "{case} {path}: {}", reply.body);
            assert!(
                reply
                    .www_authenticate
                    .iter()
                    .any(|w| w.starts_with("Basic")),
                "a browser is asked for the token: {:?}",
                reply.www_authenticate
            );
            assert!(!reply.body.contains("claude_code"), "{case} {path}");
        }
    }
    f.get_with(
        "/api/status",
        &[("authorization", "Bearer correct-horse-battery-staple")],
    )
    .expect(200, "application/json");
    // What a browser sends once the operator typed the token as the password.
    f.get_with(
        "/",
        &[(
            "authorization",
            "Basic b3BlcmF0b3I6Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==",
        )],
    )
    .expect(200, "text/html");

    // The token by flag, and both the address and the token from perpetual.toml.
    let flagged = Faucet::start_with(&env, &["--addr", "0.0.0.0:0", "--token", "by-flag"], &[]);
    flagged.get("/api/status").expect(401, "text/plain");
    flagged
        .get_with("/api/status", &[("authorization", "Bearer by-flag")])
        .expect(200, "application/json");
    let toml = std::fs::read_to_string(env.path("perpetual.toml")).unwrap();
    let configured = toml.replacen(
        "addr = \"127.0.0.1:8700\"",
        "addr = \"0.0.0.0:0\"\ntoken = \"from-the-config\"",
        1,
    );
    assert_ne!(configured, toml, "init writes serve.addr");
    env.write("perpetual.toml", &configured);
    let by_config = Faucet::spawn(&env, &["serve"], &[]);
    assert!(
        by_config.process.stderr().contains("http://0.0.0.0:"),
        "{}",
        by_config.process.explain()
    );
    by_config.get("/metrics").expect(401, "text/plain");
    by_config
        .get_with("/metrics", &[("authorization", "Bearer from-the-config")])
        .expect(200, "text/plain");
    env.write("perpetual.toml", &toml);

    // Without a token, a loopback server answers only requests for a local name, so a
    // page elsewhere cannot read it through DNS rebinding.
    let local = Faucet::start_with(&env, &[], &[]);
    local.get("/api/status").expect(200, "application/json");
    local
        .get_with("/api/status", &[("host", "attacker.example:8700")])
        .expect(421, "text/plain");
}

#[test]
fn a_file_name_holding_script_is_shown_escaped() {
    let env = Env::new();
    root_with_data(&env);
    let session = active_session(&env);
    let f = Faucet::start(&env, &[]);
    let escaped_name = "evil&lt;script&gt;alert(1)&lt;b&gt;.json";
    // askama writes `<` as `&#60;`; either entity is escaped.
    let entities = |html: &str| html.replace("&#60;", "&lt;").replace("&#62;", "&gt;");
    for path in ["/", "/files", "/files?agent=zai"] {
        let page = entities(&f.get(path).expect(200, "text/html").body);
        assert!(
            page.contains(escaped_name),
            "{path} lacks the escaped name\n{page}"
        );
        assert!(
            !page.contains("<script>alert"),
            "{path} carries the markup\n{page}"
        );
        assert!(!page.contains("<b>.json"), "{path}");
    }
    let page = entities(&f.get(&format!("/sessions/{session}")).body);
    assert!(
        page.contains("&lt;script&gt;alert(2)&lt;/script&gt; halfway"),
        "{page}"
    );
    assert!(!page.contains(EVIL_NOTE), "{page}");
    // The live feed carries the same escaped HTML.
    let events = follow_events(&f);
    let first = events.recv_timeout(PATIENCE).unwrap();
    let event: Value = serde_json::from_str(&first).unwrap();
    let files = entities(event["sections"]["files"].as_str().unwrap());
    assert!(files.contains(escaped_name), "{files}");
    assert!(!files.contains(EVIL_NAME), "{files}");
    // The JSON API keeps the name as it is: JSON is not HTML.
    let api = f.get("/api/files?agent=zai").json();
    assert!(
        api.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == EVIL_NAME),
        "{api}"
    );
}

#[test]
fn sigterm_stops_the_server_promptly_even_with_a_live_client() {
    let env = Env::new();
    env.run(&["init"]).expect(0);
    let mut f = Faucet::start(&env, &[]);
    let events = follow_events(&f);
    events.recv_timeout(PATIENCE).expect("the first event");
    f.process.signal(libc::SIGTERM);
    let (status, took) = f.process.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", f.process.explain());
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}\n{}",
        f.process.explain()
    );
}

#[test]
fn run_serve_starts_the_faucet_in_the_loops_process() {
    let env = Env::new();
    env.write("perpetual.toml", "[run]\nidle_secs = 1\n");
    let mut f = Faucet::spawn(&env, &["run", "--serve", "127.0.0.1:0"], &[]);
    let status = f.get("/api/status").expect(200, "application/json").json();
    assert!(status["agents"].is_array(), "{status}");
    let page = f.get("/").expect(200, "text/html").body;
    assert!(page.contains("▶ loop running"), "{page}");
    assert!(
        page.contains(&format!("pid {}", f.process.pid())),
        "the loop is this process\n{page}"
    );
    // Its heartbeat: the loop records each round, the overview says when the last was.
    common::wait_until(
        "the loop's last round on the overview",
        || {
            let page = f.get("/").body;
            page.contains(", last round ") && page.contains("(less than a minute ago)")
        },
        || f.process.explain(),
    );
    let metrics = f.get("/metrics").body;
    assert!(metrics.contains("perpetual_writer_running 1"), "{metrics}");
    // The loop integrates a drop; the faucet in its process sees it.
    env.drop_file(
        "droid",
        "seen.json",
        r#"[{"question": "Q?", "answer": "A."}]"#,
    );
    common::wait_until(
        "the loop's faucet to count the drop",
        || f.get("/api/stats").json()["pairs"] == 1,
        || f.process.explain(),
    );
    f.process.stop();
}

/// With no `--addr` and no `serve.addr`, the faucet listens on 127.0.0.1:8700. The port
/// is fixed, so on a shared machine it may be taken: then the refusal names the same
/// address, which shows the default as well.
#[test]
fn serve_listens_on_loopback_port_8700_by_default() {
    let env = Env::new();
    env.run(&["init"]).expect(0);
    env.write("perpetual.toml", "[run]\nidle_secs = 1\n");
    let mut serve = env.spawn(&["serve"]);
    common::wait_until(
        "serve to listen on 127.0.0.1:8700 or to say it cannot",
        || serve.stderr().contains("127.0.0.1:8700"),
        || serve.explain(),
    );
    let log = serve.stderr();
    assert!(
        log.contains("serving the faucet on http://127.0.0.1:8700/")
            || log.to_lowercase().contains("in use"),
        "{}",
        serve.explain()
    );
    serve.stop();
}

#[test]
fn the_charts_the_workbench_wrote_are_linked_on_the_page_and_served_as_written() {
    let env = Env::new();
    root_with_data(&env);
    // The real workbench command (issue 12), into zai's outbox as a task would.
    env.run_at(NOW, &["charts", "--agent", "zai", "--json"])
        .expect(0);
    let dir = env.path("outbox/zai/visualizations");
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    written.sort();
    assert!(
        written.len() >= 3,
        "the workbench wrote its charts: {written:?}"
    );
    let f = Faucet::start(&env, &[]);
    let page = f.get("/").expect(200, "text/html").body;
    for name in &written {
        let url = format!("/charts/zai/{name}");
        assert!(page.contains(&url), "the page links {url}\n{page}");
        let served = f.get(&url).expect(200, "image/svg+xml").body;
        assert_eq!(
            served,
            std::fs::read_to_string(dir.join(name)).unwrap(),
            "{url} is the file the workbench wrote"
        );
    }
}
