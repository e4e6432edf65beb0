//! Helpers for the web faucet's tests (tests/serve.rs, tests/browser.rs): a root with
//! data of every kind, `perpetual serve` started on a free port, and an HTTP client.

#![allow(dead_code)]

use crate::common::{Env, Running};
use std::time::Duration;

/// The time every command of a faucet test runs at (`PERPETUAL_NOW`), so the JSON of
/// the server and of the CLI can be compared field for field.
pub const NOW: &str = "2026-03-01T12:00:00Z";

/// A file name that tries to be markup.
pub const EVIL_NAME: &str = "evil<script>alert(1)<b>.json";
/// An inbox entry that is not a drop (skipped).
pub const SKIPPED_NAME: &str = "notes.txt";
/// A wrapped session's next action (in its handoff), Markdown with raw HTML.
pub const EVIL_NEXT: &str = "Resume at **batch 6** <img src=x onerror=alert(4)>";
/// A checkpoint note that tries to be markup.
pub const EVIL_NOTE: &str = "<script>alert(2)</script> halfway";

/// A root with what the faucet shows: integrated, duplicate, rejected and skipped files
/// (one named like markup), the seeds' task plan, a session wrapped at the hard-stop
/// level with its handoff (its task needs review), an active session at 80% of its
/// tokens with a checkpoint, a paused agent, and a completed task with its report.
pub fn root_with_data(env: &Env) {
    let at = |args: &[&str]| env.run_at(NOW, args);
    at(&["init"]).expect(0);
    let drops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/drops");
    for e in std::fs::read_dir(drops).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        env.drop_file("droid", &name, std::fs::read(&p).unwrap());
    }
    // The same bytes again under another name: a duplicate file.
    env.drop_file(
        "zai",
        "again.json",
        std::fs::read(env.path("inbox/droid/droid_batch_0003_adx.json")).unwrap(),
    );
    env.drop_file(
        "zai",
        EVIL_NAME,
        r#"[{"question": "What does <img src=x onerror=alert(3)> do?", "answer": "Nothing here."}]"#,
    );
    // Not a drop: skipped (issue 10), left where it is, with its reason in the ledger.
    env.drop_file("droid", SKIPPED_NAME, "notes, not pairs");
    at(&["ingest"]).expect(3);
    let plan = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plan.toml");
    at(&["task", "import", plan.to_str().unwrap()]).expect(0);
    // droid's session wrapped at the hard-stop level: its task needs review, and the
    // session has a handoff (whose next action tries to be markup).
    at(&["session", "start", "--agent", "droid"]).expect(0);
    at(&[
        "session",
        "checkpoint",
        "--agent",
        "droid",
        "--progress",
        "5/40",
        "--api-calls",
        "920",
    ])
    .expect(0);
    at(&["session", "wrap", "--agent", "droid", "--next", EVIL_NEXT]).expect(0);
    at(&["session", "start", "--agent", "claude_code"]).expect(0);
    at(&[
        "session",
        "checkpoint",
        "--agent",
        "claude_code",
        "--progress",
        "10/40",
        "--tokens",
        "160000",
        "--note",
        EVIL_NOTE,
    ])
    .expect(0);
    at(&[
        "agent",
        "pause",
        "zai",
        "--reason",
        "three sessions without progress",
    ])
    .expect(0);
    // A completed task, graded, with its report (whose description tries to be markup).
    at(&[
        "task",
        "add",
        "quick_check",
        "--agent",
        "droid",
        "--total",
        "1",
        "--description",
        "a <i>quick</i> check",
    ])
    .expect(0);
    at(&["task", "done", "quick_check"]).expect(0);
}

/// `perpetual ARGS` started in the background, once it says where it listens.
pub struct Faucet {
    pub process: Running,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Faucet {
    /// Starts `perpetual serve --addr 127.0.0.1:0 EXTRA` at [`NOW`].
    pub fn start(env: &Env, extra: &[&str]) -> Faucet {
        Faucet::start_with(env, extra, &[("PERPETUAL_NOW", NOW)])
    }

    /// Starts `perpetual serve EXTRA` (with `--addr 127.0.0.1:0` unless EXTRA has an
    /// --addr) with extra environment.
    pub fn start_with(env: &Env, extra: &[&str], envs: &[(&str, &str)]) -> Faucet {
        let mut args = vec!["serve"];
        if !extra.contains(&"--addr") {
            args.extend(["--addr", "127.0.0.1:0"]);
        }
        args.extend(extra);
        Faucet::spawn(env, &args, envs)
    }

    /// Starts any command that serves the faucet (`serve`, `run --serve`).
    pub fn spawn(env: &Env, args: &[&str], envs: &[(&str, &str)]) -> Faucet {
        let mut process = env.spawn_with(args, envs);
        process.wait_for_log("serving the faucet on http://");
        let log = process.stderr();
        let at = log.find("serving the faucet on http://").unwrap()
            + "serving the faucet on http://".len();
        let addr = &log[at..at + log[at..].find('/').unwrap()];
        let port = addr.rsplit(':').next().unwrap();
        Faucet {
            process,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `GET path` with extra headers.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut request = agent.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = request
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.process.explain()));
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let content_type = header("content-type");
        let www_authenticate: Vec<String> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        Reply {
            path: path.to_string(),
            status: response.status().as_u16(),
            content_type,
            www_authenticate,
            body: response
                .body_mut()
                .with_config()
                .limit(64 * 1024 * 1024)
                .read_to_string()
                .unwrap(),
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.get_with(path, &[])
    }
}

/// One answer.
#[derive(Debug)]
pub struct Reply {
    pub path: String,
    pub status: u16,
    pub content_type: String,
    pub www_authenticate: Vec<String>,
    pub body: String,
}

impl Reply {
    /// Asserts the status and the content type's media type (before any `;`).
    pub fn expect(self, status: u16, media_type: &str) -> Reply {
        assert_eq!(
            self.status, status,
            "status of {}\n{}",
            self.path, self.body
        );
        assert_eq!(
            self.content_type.split(';').next().unwrap().trim(),
            media_type,
            "content type of {} ({})",
            self.path,
            self.content_type
        );
        self
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.path, self.body))
    }
}

/// A day of history before [`NOW`]: generated drops integrated every two hours, so the
/// growth chart has a shape (for the browser test's screenshots).
pub fn history(env: &Env) {
    let now = chrono::DateTime::parse_from_rfc3339(NOW).unwrap();
    for i in 0..11u32 {
        let at = (now - chrono::Duration::hours(22 - 2 * i64::from(i)))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let out = format!("generated/history_{i}");
        let pairs = (60 + 17 * i).to_string();
        env.run_at(
            &at,
            &[
                "generate",
                "--out",
                &out,
                "--agent",
                "droid",
                "--files",
                "2",
                "--pairs",
                &pairs,
                "--seed",
                &i.to_string(),
            ],
        )
        .expect(0);
        // Generated into a folder of its own, then moved into the inbox.
        std::fs::create_dir_all(env.path("inbox/droid")).unwrap();
        for name in env.files_in(&out) {
            std::fs::rename(
                env.path(&format!("{out}/{name}")),
                env.path(&format!("inbox/droid/h{i}_{name}")),
            )
            .unwrap();
        }
        let ingest = env.run_at(&at, &["ingest"]);
        assert!(
            ingest.code() == 0 || ingest.code() == 3,
            "{}",
            ingest.explain()
        );
    }
}
