//! Regression tests for issue 10, "Every drop accounted for": entries that are not
//! regular files, files over the limit, hostile names, things in the way. Each test is
//! named after the bug it pins and drives the real binary.

mod common;

use common::{Env, PATIENCE, wait_until};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

const GOOD: &str = r#"[{"question": "What is RSI?", "answer": "A momentum oscillator."}]"#;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn status_of(row: &serde_json::Value) -> &str {
    row["status"].as_str().unwrap_or("")
}

fn reason_of(row: &serde_json::Value) -> &str {
    row["reason"].as_str().unwrap_or("")
}

/// `perpetual ingest PATH` on a symlink to /dev/zero read until memory ran out.
#[test]
fn regression_ingest_path_on_a_symlink_to_dev_zero_is_not_followed() {
    let env = Env::new();
    let link = env.path("archive/zero.json");
    symlink("/dev/zero", &link);
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", link.to_str().unwrap()])
        .expect(0);
    assert_eq!(run.json()["files_skipped"], 1, "{}", run.explain());
    let rows = env.ledger_of("zero.json");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(status_of(&rows[0]), "skipped");
    assert!(reason_of(&rows[0]).contains("symbolic link"), "{rows:?}");
}

/// `perpetual ingest PATH` on a FIFO hung forever.
#[test]
fn regression_ingest_path_on_a_fifo_returns_at_once() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("archive")).unwrap();
    let fifo = env.path("archive/pipe.json");
    mkfifo(&fifo);
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", fifo.to_str().unwrap()])
        .expect(0);
    assert_eq!(run.json()["files_skipped"], 1, "{}", run.explain());
    let rows = env.ledger_of("pipe.json");
    assert_eq!(status_of(&rows[0]), "skipped", "{rows:?}");
    assert!(reason_of(&rows[0]).contains("FIFO"), "{rows:?}");
}

/// An over-limit file was hashed to its end (a 1 GiB sparse file took 4.8 s) although
/// the README says "rejected unread".
#[test]
fn regression_an_over_limit_file_is_rejected_unread() {
    let env = Env::new();
    std::fs::write(
        env.path("perpetual.toml"),
        "[ingest]\nmax_file_bytes = 1000\n",
    )
    .unwrap();
    let path = env.path("inbox/droid/huge.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap(); // sparse: costs no disk
    drop(f);
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert_eq!(run.json()["files_rejected"], 1, "{}", run.explain());
    let rows = env.ledger_of("huge.json");
    assert_eq!(status_of(&rows[0]), "rejected", "{rows:?}");
    assert!(reason_of(&rows[0]).contains("over the limit"), "{rows:?}");
    assert!(rows[0]["content_hash"].is_null(), "never hashed: {rows:?}");
    assert_eq!(rows[0]["size"], 1u64 << 30);
    assert!(env.path("inbox/droid/rejected/huge.json").is_file());
}

/// Symlinks, FIFOs, folders named like drops, a symlinked agent folder and files
/// dropped into inbox/ itself were skipped without a word: no log line, no ledger row.
#[test]
fn regression_entries_that_are_not_regular_files_get_one_warning_and_a_ledger_row() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("outside")).unwrap();
    std::fs::write(env.path("outside/secret.json"), GOOD).unwrap();
    let droid = env.path("inbox/droid");
    std::fs::create_dir_all(&droid).unwrap();
    symlink(env.path("outside/secret.json"), &droid.join("outside.json"));
    symlink(env.path("outside"), &droid.join("to_dir.json"));
    symlink("/nonexistent/target.json", &droid.join("dangling.json"));
    symlink("loop.json", &droid.join("loop.json"));
    symlink("/dev/null", &droid.join("device_link.json"));
    mkfifo(&droid.join("fifo.json"));
    std::fs::create_dir_all(droid.join("folder.json")).unwrap();
    symlink(env.path("outside"), &env.path("inbox/linked_agent"));
    std::fs::write(env.path("inbox/stray.json"), GOOD).unwrap();
    std::fs::write(droid.join("good.json"), GOOD).unwrap();

    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    let j = run.json();
    assert_eq!(j["files_integrated"], 1, "{}", run.explain());
    assert_eq!(j["files_skipped"], 9, "{}", run.explain());
    let expect = [
        ("outside.json", "symbolic link"),
        ("to_dir.json", "symbolic link"),
        ("dangling.json", "symbolic link"),
        ("loop.json", "symbolic link"),
        ("device_link.json", "symbolic link"),
        ("fifo.json", "FIFO"),
        ("folder.json", "folder"),
        ("linked_agent", "symbolic link"),
        ("stray.json", "inbox/<agent>/"),
    ];
    let stderr = run.stderr();
    for (name, why) in expect {
        let rows = env.ledger_of(name);
        assert_eq!(rows.len(), 1, "{name}: {rows:?}\n{}", run.explain());
        assert_eq!(status_of(&rows[0]), "skipped", "{name}: {rows:?}");
        assert!(reason_of(&rows[0]).contains(why), "{name}: {rows:?}");
        assert_eq!(
            stderr.lines().filter(|l| l.contains(name)).count(),
            1,
            "one warning naming {name}\n{}",
            run.explain()
        );
        assert!(
            env.path(&format!("inbox/droid/{name}"))
                .symlink_metadata()
                .is_ok()
                || env
                    .path(&format!("inbox/{name}"))
                    .symlink_metadata()
                    .is_ok(),
            "{name} left where it was\n{}",
            run.explain()
        );
    }
    // Nothing followed: the file outside the root was never read.
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), 1);
    let listing = env.run(&["files"]).expect(0).stdout();
    assert!(listing.contains("skipped"), "{listing}");
    let stats = env.run(&["stats", "--json"]).expect(0).json();
    assert_eq!(stats["files_skipped"], 9, "{stats}");

    // The next run says nothing new and adds no rows.
    let before = env.ledger().len();
    let again = env.run_within(PATIENCE, &["ingest", "--now"]).expect(0);
    assert_eq!(env.ledger().len(), before, "{}", again.explain());
    assert!(
        !again.stderr().contains("fifo.json"),
        "no repeated warning\n{}",
        again.explain()
    );
}

/// A valid drop whose name is not UTF-8 was never integrated.
#[test]
fn regression_a_drop_whose_name_is_not_utf8_integrates() {
    let env = Env::new();
    let droid = env.path("inbox/droid");
    std::fs::create_dir_all(&droid).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.json");
    std::fs::write(droid.join(name), GOOD).unwrap();
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    assert_eq!(run.json()["files_integrated"], 1, "{}", run.explain());
    assert!(
        droid.join("processed").join(name).is_file(),
        "{}",
        run.explain()
    );
    let rows = env.ledger_of("caf\\xe9.json");
    assert_eq!(
        rows.len(),
        1,
        "lossless rendering in the ledger: {:?}",
        env.ledger()
    );
    assert_eq!(status_of(&rows[0]), "integrated");
}

/// A name of about 249 bytes or more made `<name>.reason` (or the `.1` collision suffix)
/// longer than 255 bytes: the move failed, the ledger recorded a path that did not exist
/// and the file stayed in the inbox with an error every 30 s.
#[test]
fn regression_a_name_near_the_length_limit_is_moved_under_a_name_that_fits() {
    let env = Env::new();
    let long = format!("{}.json", "x".repeat(250));
    assert_eq!(long.len(), 255);
    // Written in place: `.<name>.tmp` would itself be too long.
    env.write(&format!("inbox/droid/{long}"), "[{\"question\": ");
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert!(env.files_in("inbox/droid").is_empty(), "{}", run.explain());
    let rows = env.ledger_of(&long);
    assert_eq!(rows.len(), 1);
    let stored = rows[0]["stored_path"].as_str().unwrap();
    assert!(Path::new(stored).is_file(), "{stored}\n{}", run.explain());
    let reason = format!("{stored}.reason");
    assert!(Path::new(&reason).is_file(), "{reason}\n{}", run.explain());
    // The same name again: the collision suffix fits too.
    env.write(&format!("inbox/droid/{long}"), "[{\"question\": 1");
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert!(env.files_in("inbox/droid").is_empty(), "{}", run.explain());
    for row in env.ledger_of(&long) {
        let stored = row["stored_path"].as_str().unwrap();
        assert!(Path::new(stored).is_file(), "{stored}\n{}", run.explain());
    }
    assert_eq!(
        env.files_in("inbox/droid/rejected").len(),
        4,
        "{}",
        run.explain()
    );
}

/// A plain file named `processed` in an agent folder jammed every move of that agent.
#[test]
fn regression_a_file_in_the_way_of_processed_is_moved_aside() {
    let env = Env::new();
    env.write("inbox/droid/processed", "not a folder");
    env.write("inbox/droid/rejected", "not a folder either");
    env.drop_file("droid", "good.json", GOOD);
    env.drop_file("droid", "bad.json", "[");
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert!(
        env.path("inbox/droid/processed/good.json").is_file(),
        "{}",
        run.explain()
    );
    assert!(
        env.path("inbox/droid/rejected/bad.json").is_file(),
        "{}",
        run.explain()
    );
    assert!(run.stderr().contains("moved aside"), "{}", run.explain());
    let aside: Vec<String> = env
        .files_in("inbox/droid")
        .into_iter()
        .filter(|n| n.starts_with("processed") || n.starts_with("rejected"))
        .collect();
    assert_eq!(
        aside.len(),
        2,
        "both kept, renamed: {aside:?}\n{}",
        run.explain()
    );
    for row in env.ledger() {
        if let Some(stored) = row["stored_path"].as_str() {
            assert!(Path::new(stored).exists(), "{row}");
        }
    }
}

/// The watcher followed a symlink to /dev/zero swapped in after the close-write event
/// and grew to 2.1 GB. It must skip the link, say so once, and stay alive.
#[test]
fn regression_watch_skips_a_symlink_to_dev_zero_and_keeps_integrating() {
    let env = Env::new();
    let mut w = env.spawn(&["watch"]);
    w.wait_for_log("watching");
    let droid = env.path("inbox/droid");
    symlink("/dev/zero", &droid.join(".zero.tmp"));
    std::fs::rename(droid.join(".zero.tmp"), droid.join("zero.json")).unwrap();
    mkfifo(&droid.join("fifo.json"));
    env.drop_file("droid", "canary.json", GOOD);
    wait_until(
        "the canary integrated",
        || env.path("inbox/droid/processed/canary.json").is_file(),
        || w.explain(),
    );
    wait_until(
        "both skipped in the ledger",
        || env.try_count("SELECT COUNT(*) FROM files WHERE status = 'skipped'") == Some(2),
        || w.explain(),
    );
    std::thread::sleep(Duration::from_millis(100));
    w.stop();
    assert_eq!(
        w.stderr().matches("zero.json").count(),
        1,
        "{}",
        w.explain()
    );
}

/// `ingest` rejected a file that a writer was still writing in place ("truncated
/// JSON"); the writer then finished it inside rejected/, complete and never integrated.
#[test]
fn regression_ingest_leaves_a_file_still_being_written_for_the_next_run() {
    let env = Env::new();
    let path = env.path("inbox/droid/slow.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let body = r#"[{"question": "What is the MVRV ratio?", "answer": "Market value over realised value."}]"#;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&path).unwrap();
            // A chunk every 50 ms (well within the 300 ms settle period) until told to
            // finish, so the file is never still while `ingest` looks.
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                f.write_all(&body.as_bytes()[i % 10..i % 10 + 1]).unwrap();
                f.set_len(0).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            f.set_len(0).unwrap();
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(body.as_bytes()).unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let run = env.run_within(PATIENCE, &["ingest", "--json"]).expect(0);
    let j = run.json();
    assert_eq!(j["files_waiting"], 1, "{}", run.explain());
    assert_eq!(j["files_rejected"], 0, "{}", run.explain());
    assert!(path.is_file(), "left in the inbox\n{}", run.explain());
    assert!(env.ledger_of("slow.json").is_empty(), "{:?}", env.ledger());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let run = env.run_within(PATIENCE, &["ingest", "--json"]).expect(0);
    assert_eq!(run.json()["files_integrated"], 1, "{}", run.explain());
    assert!(env.path("inbox/droid/processed/slow.json").is_file());
}

/// One bad JSON Lines line, a lone surrogate escape (as Python's json.dumps writes
/// it), or NaN / Infinity / 1e400 in an extra field rejected every valid pair of the
/// file.
#[test]
fn regression_one_bad_value_no_longer_rejects_the_whole_file() {
    let env = Env::new();
    env.drop_file(
        "droid",
        "lines.jsonl",
        "{\"q\": \"Q1?\", \"a\": \"A1.\"}\n{\"q\": \"Q2?\", \"a\": \n{\"q\": \"Q3?\", \"a\": \"A3.\"}\n",
    );
    env.drop_file(
        "droid",
        "surrogate.json",
        r#"[{"q": "Lone \ud800 here?", "a": "Yes."}, {"q": "Q5?", "a": "A5."}]"#,
    );
    env.drop_file(
        "droid",
        "nan.json",
        r#"[{"q": "Q6?", "a": "A6.", "score": NaN, "hi": Infinity, "big": 1e400}]"#,
    );
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    let j = run.json();
    assert_eq!(j["files_integrated"], 3, "{}", run.explain());
    assert_eq!(j["pairs_new"], 5, "{}", run.explain());
    assert_eq!(j["pairs_invalid"], 1, "{}", run.explain());
    let lines = &env.ledger_of("lines.jsonl")[0];
    assert_eq!(lines["invalid"][0]["index"], 1, "{lines}");
    assert!(
        lines["invalid"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("(line 2)"),
        "{lines}"
    );
    assert_eq!(lines["salvage"]["lines_unparsed"], 1, "{lines}");
    let sur = &env.ledger_of("surrogate.json")[0];
    assert_eq!(sur["replaced"], true, "{sur}");
    assert_eq!(sur["salvage"]["surrogates_replaced"], 1, "{sur}");
    let nan = &env.ledger_of("nan.json")[0];
    assert_eq!(nan["salvage"]["numbers_kept_as_text"], 3, "{nan}");
    let extra: String = env
        .db()
        .query_row("SELECT extra FROM pairs WHERE question = 'Q6?'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let extra: serde_json::Value = serde_json::from_str(&extra).unwrap();
    assert_eq!(
        extra,
        serde_json::json!({"score": "NaN", "hi": "Infinity", "big": "1e400"})
    );
    let q: String = env
        .db()
        .query_row(
            "SELECT question FROM pairs WHERE answer = 'Yes.'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(q, "Lone \u{FFFD} here?");
    let listing = env.run(&["files"]).expect(0).stdout();
    assert!(listing.contains("salvaged"), "{listing}");
}

/// Escaped NUL and C0 control characters (`\u0000`, `\u001b[2J`) were stored in
/// question and answer text as they were.
#[test]
fn regression_nul_and_control_characters_are_not_stored() {
    let env = Env::new();
    env.drop_file(
        "droid",
        "controls.json",
        r#"[{"q": "Clear\u001b[2J the\u0000 screen?", "a": "No.\u0007 Tabs\tand\nnewlines stay."}]"#,
    );
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    assert_eq!(run.json()["pairs_new"], 1, "{}", run.explain());
    let (q, a): (String, String) = env
        .db()
        .query_row("SELECT question, answer FROM pairs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(q, "Clear[2J the screen?");
    assert_eq!(a, "No. Tabs\tand\nnewlines stay.");
    let row = &env.ledger_of("controls.json")[0];
    assert_eq!(row["salvage"]["controls_removed"], 3, "{row}");
}

/// A newline in a file name forged a log line, and escape sequences in names reached
/// the terminal; log lines kept ANSI colours when stderr was not a terminal; the JSON
/// log's `ms` was a string.
#[test]
fn regression_log_lines_escape_names_carry_no_colour_off_a_terminal_and_ms_is_a_number() {
    let env = Env::new();
    let evil = "evil\nERROR forged line \u{1b}[31m.json";
    env.write(&format!("inbox/droid/{evil}"), GOOD);
    env.write("inbox/droid/plain.json", GOOD.replace("RSI", "MACD"));
    let run = env
        .run_within(PATIENCE, &["-v", "ingest", "--now"])
        .expect(0);
    let stderr = run.stderr();
    assert!(
        !stderr.lines().any(|l| l.starts_with("ERROR forged")),
        "{}",
        run.explain()
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no escape sequence at all\n{stderr:?}"
    );
    assert!(
        stderr.contains("evil\\x0aERROR forged line \\x1b[31m.json"),
        "{stderr}"
    );
    assert!(env.path(&format!("inbox/droid/processed/{evil}")).is_file());

    env.drop_file("droid", "json_log.json", GOOD.replace("RSI", "OBV"));
    let run = env
        .run_within(PATIENCE, &["-v", "--log-format", "json", "ingest", "--now"])
        .expect(0);
    let line = run
        .stderr()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["file"] == "json_log.json")
        .unwrap_or_else(|| panic!("{}", run.explain()));
    assert!(line["fields"]["ms"].is_number(), "{line}");
}

/// Colours only on a terminal, never with NO_COLOR; `status --watch` cleared the
/// screen even when its output was a file.
#[test]
fn regression_colours_and_screen_clearing_only_on_a_terminal() {
    let env = Env::new();
    env.run(&["init"]).expect(0);
    // A terminal, by `script` (util-linux), which runs the command on a pseudo-terminal.
    let bin = env!("CARGO_BIN_EXE_perpetual");
    let on_tty = |no_color: bool| -> String {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec"])
            .arg(format!("{bin} -v ingest --now"))
            .arg("/dev/null")
            .env("PERPETUAL_ROOT", env.root())
            .env_remove("RUST_LOG");
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        let out = cmd.output().expect("script");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    env.drop_file("droid", "a.json", GOOD);
    let coloured = on_tty(false);
    assert!(
        coloured.contains('\u{1b}'),
        "colours on a terminal: {coloured:?}"
    );
    env.drop_file("droid", "b.json", GOOD.replace("RSI", "ADX"));
    let plain = on_tty(true);
    assert!(plain.contains("b.json"), "{plain:?}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR: {plain:?}");

    let mut child = env
        .command(&["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&seen).contains("pairs") {
        assert!(std::time::Instant::now() < deadline, "no view printed");
        let mut buf = [0u8; 4096];
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "status --watch ended");
        seen.extend_from_slice(&buf[..n]);
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        !text.contains('\u{1b}'),
        "no screen clearing into a pipe: {text:?}"
    );
}

/// `.txt`, `.JSON` and names without an extension in an inbox were read and moved,
/// though the README says only `.json`, `.jsonl` and `.ndjson` are drops.
#[test]
fn regression_only_documented_extensions_are_drops_in_any_case() {
    let env = Env::new();
    env.drop_file("droid", "upper.JSON", GOOD);
    env.drop_file("droid", "notes.txt", GOOD.replace("RSI", "CCI"));
    env.drop_file("droid", "README", GOOD.replace("RSI", "ATR"));
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    let j = run.json();
    assert_eq!(j["files_integrated"], 1, "{}", run.explain());
    assert_eq!(j["files_skipped"], 2, "{}", run.explain());
    assert!(env.path("inbox/droid/processed/upper.JSON").is_file());
    assert!(env.path("inbox/droid/notes.txt").is_file(), "left alone");
    assert!(env.path("inbox/droid/README").is_file(), "left alone");
    assert!(reason_of(&env.ledger_of("notes.txt")[0]).contains("not a drop"));
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), 1);
    let again = env
        .run_within(PATIENCE, &["-v", "ingest", "--now"])
        .expect(0);
    assert!(
        !again.stderr().contains("notes.txt"),
        "reported once\n{}",
        again.explain()
    );
    // A path named explicitly is held to the same list.
    let other = env.write("archive/data.txt", GOOD.replace("RSI", "VWAP"));
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", other.to_str().unwrap()])
        .expect(0);
    assert_eq!(run.json()["files_skipped"], 1, "{}", run.explain());
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), 1);
}

/// `backfill` with a budget of 0 (or for an agent whose tokens_per_session is 0, the
/// default for droid and zai) wrapped at once with 0 pairs and exited 75 forever; a
/// range matching no file failed with "total must be at least 1"; `monitor --budget
/// 0` was refused.
#[test]
fn regression_a_token_budget_of_0_is_no_limit_and_an_empty_range_is_nothing_to_do() {
    let env = Env::new();
    env.write(
        "archive/session_101.json",
        r#"{"session": 101, "qa_pairs": [{"q": "Q101?", "a": "A101."}]}"#,
    );
    env.write(
        "archive/session_102.json",
        r#"{"session": 102, "qa_pairs": [{"q": "Q102?", "a": "A102."}]}"#,
    );
    let archive = env.path("archive");
    let dir = archive.to_str().unwrap();
    let run = env
        .run(&[
            "backfill",
            dir,
            "--sessions",
            "101-101",
            "--agent",
            "claude_code",
            "--budget",
            "0",
            "--json",
        ])
        .expect(0);
    let j = run.json();
    assert_eq!(j["pairs_new"], 1, "{}", run.explain());
    assert_eq!(j["completed"], true, "{}", run.explain());
    // droid's tokens_per_session is 0 by default.
    let run = env
        .run(&[
            "backfill",
            dir,
            "--sessions",
            "102-102",
            "--agent",
            "droid",
            "--json",
        ])
        .expect(0);
    assert_eq!(run.json()["pairs_new"], 1, "{}", run.explain());
    let run = env
        .run(&["backfill", dir, "--sessions", "500-600", "--agent", "droid"])
        .expect(0);
    assert!(
        run.stdout().contains("nothing to backfill"),
        "{}",
        run.explain()
    );
    let run = env.run(&["monitor", "150000", "--budget", "0"]).expect(0);
    assert!(run.stdout().contains("no limit"), "{}", run.explain());
    let run = env
        .run(&["monitor", "150000", "--agent", "droid", "--json"])
        .expect(0);
    assert_eq!(run.json()["level"], "healthy", "{}", run.explain());
}

/// A disk-full error named no file: errors name the database (and the drop) and the
/// problem, and nothing is lost. The disk is filled by a file-size limit
/// (RLIMIT_FSIZE), which SQLite sees as a failed write.
#[test]
fn regression_a_write_error_names_the_database_and_loses_nothing() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.run(&["init"]).expect(0);
    let pairs: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"q": "Question {i}?", "a": "Answer {i}, long enough to fill a page or two of the database when stored."}}"#))
        .collect();
    env.drop_file("droid", "big.json", format!("[{}]", pairs.join(",")));
    let db_size = std::fs::metadata(env.path("perpetual.db")).unwrap().len();
    let limit = db_size + 64 * 1024;
    let mut cmd = env.command(&["ingest", "--now"]);
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("perpetual.db"),
        "names the database: {stderr}"
    );
    assert!(stderr.contains("big.json"), "names the file: {stderr}");
    assert!(
        env.path("inbox/droid/big.json").is_file(),
        "still in the inbox"
    );
    // With room again, everything goes in, once.
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        3000,
        "{}",
        run.explain()
    );
    let row = &env.ledger_of("big.json");
    assert_eq!(row.len(), 1, "{row:?}");
    assert_eq!(row[0]["status"], "integrated");
    assert_eq!(
        row[0]["pairs_new"], 3000,
        "the checkpoint before the error counted once"
    );
}

/// In a start-up race the loser's message said "another process" instead of naming
/// the holder (the winner had locked the file but not written its name yet).
#[test]
fn regression_the_lock_message_names_the_holder_before_it_described_itself() {
    let env = Env::new();
    env.run(&["init"]).expect(0);
    let held = std::fs::File::create(env.path("perpetual.lock")).unwrap();
    held.try_lock().unwrap();
    let run = env.run(&["ingest"]).expect(1);
    assert!(
        run.stderr()
            .contains(&format!("pid {}", std::process::id())),
        "{}",
        run.explain()
    );
}

/// Usage errors of `task add` without an id and `task progress ID abc` exited 1.
#[test]
fn regression_usage_errors_exit_2() {
    let env = Env::new();
    let run = env.run(&["task", "add", "--agent", "droid"]).expect(2);
    assert!(run.stderr().contains("needs an id"), "{}", run.explain());
    env.run(&["task", "add", "t1", "--agent", "droid"])
        .expect(0);
    let run = env.run(&["task", "progress", "t1", "abc"]).expect(2);
    assert!(run.stderr().contains("DONE/TOTAL"), "{}", run.explain());
    env.run(&["task", "progress", "t1", "1/2"]).expect(0);
    env.run(&["task", "add", "t2", "--agent", "droid", "--sessions", "1-2"])
        .expect(2);
}

/// The watcher's peak memory (VmHWM, KiB).
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A link to /dev/zero renamed over a drop right after it was closed made the watcher
/// read /dev/zero (it grew to 2.1 GB in 3 of 40 tries). Forty tries now: each ends
/// with the file integrated (the watcher won the race) or the link skipped, and the
/// watcher's peak memory stays small.
#[test]
fn regression_a_link_to_dev_zero_swapped_in_after_the_close_is_never_read() {
    let env = Env::new();
    std::fs::write(env.path("perpetual.toml"), "[watch]\nsettle_ms = 20\n").unwrap();
    let mut w = env.spawn(&["watch"]);
    w.wait_for_log("watching");
    let droid = env.path("inbox/droid");
    for i in 0..40 {
        let name = format!("swap_{i:02}.json");
        std::fs::write(
            droid.join(&name),
            format!(r#"[{{"q": "Swap {i}?", "a": "Raced."}}]"#),
        )
        .unwrap();
        let link = droid.join(format!(".link_{i}"));
        symlink("/dev/zero", &link);
        std::fs::rename(&link, droid.join(&name)).unwrap();
    }
    wait_until(
        "every try settled",
        || {
            (0..40).all(|i| {
                let source = droid.join(format!("swap_{i:02}.json"));
                env.try_count(&format!(
                    "SELECT COUNT(*) FROM files WHERE source_path = '{}' AND status = 'skipped'",
                    source.display()
                )) == Some(1)
                    || env
                        .path(&format!("inbox/droid/processed/swap_{i:02}.json"))
                        .is_file()
            })
        },
        || w.explain(),
    );
    let peak = peak_rss_kb(w.pid());
    assert!(
        peak > 0 && peak < 200_000,
        "peak RSS {peak} KiB\n{}",
        w.explain()
    );
    // A file read just before the link replaced it is not moved: the move would have
    // carried the link into processed/ (it did, once, in this very test).
    let processed = std::fs::read_dir(env.path("inbox/droid/processed"));
    for e in processed.into_iter().flatten() {
        let e = e.unwrap();
        assert!(
            e.file_type().unwrap().is_file(),
            "{:?} in processed/ is not a regular file\n{}",
            e.path(),
            w.explain()
        );
    }
    env.drop_file("droid", "canary.json", GOOD);
    wait_until(
        "the canary",
        || env.path("inbox/droid/processed/canary.json").is_file(),
        || w.explain(),
    );
    w.stop();
}

/// A backfill over an archive holding a link and a FIFO named like session exports:
/// neither is followed or read, each gets its `skipped` row once, and the task still
/// completes (a skipped entry is done), also when the run is repeated.
#[test]
fn a_backfill_skips_links_and_fifos_in_the_archive_and_still_completes() {
    let env = Env::new();
    env.write(
        "archive/session_4.json",
        r#"{"session": 4, "qa_pairs": [{"q": "Q4?", "a": "A4."}]}"#,
    );
    symlink("/dev/zero", &env.path("archive/session_5.json"));
    mkfifo(&env.path("archive/session_6.json"));
    let dir = env.path("archive");
    let args = [
        "backfill",
        dir.to_str().unwrap(),
        "--sessions",
        "4-6",
        "--agent",
        "claude_code",
        "--json",
    ];
    let run = env.run_within(PATIENCE, &args).expect(0);
    let j = run.json();
    assert_eq!(j["completed"], true, "{}", run.explain());
    assert_eq!(j["pairs_new"], 1, "{}", run.explain());
    let again = env.run_within(PATIENCE, &args).expect(0);
    assert_eq!(again.json()["completed"], true, "{}", again.explain());
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE status = 'skipped'"),
        2,
        "{}",
        again.explain()
    );
}

/// A dangling link in place of a configured agent's folder made every command fail
/// ("cannot create inbox/droid"): now it is one `skipped` row, and the rest works.
#[test]
fn a_dangling_link_in_place_of_an_agent_folder_breaks_no_command() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("inbox")).unwrap();
    symlink("/nonexistent/droid", &env.path("inbox/droid"));
    env.drop_file("zai", "good.json", GOOD);
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    let j = run.json();
    assert_eq!(j["files_integrated"], 1, "{}", run.explain());
    assert_eq!(j["files_skipped"], 1, "{}", run.explain());
    env.run(&["stats"]).expect(0);
    assert!(reason_of(&env.ledger_of("droid")[0]).contains("symbolic link"));
}
