//! The hostile-drop suite (issue 10): every kind of hostile or malformed inbox entry
//! this project knows of, the generator's 16 bad files among them, each run through
//! `perpetual ingest` and through one running `perpetual watch` (renamed into place,
//! and written in place). For each kind it asserts the exit status, the ledger row
//! (status, reason, pairs new and invalid, what was salvaged), where the entry ends up
//! (byte for byte), and that a canary drop behind it is integrated; at the end, that
//! nothing was lost, stored twice, or left without a ledger entry.
//!
//! One watcher serves all the kinds of a mode (a watcher per kind would cost seconds
//! each on a 2-core CI machine). Run alone: `cargo test --test hostile_suite`.

mod common;

use common::{Env, PATIENCE, Running, wait_until};
use perpetual::generate::{self, BadKind};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The settle period: short where files arrive whole (renamed, or written before
/// `ingest` runs); the documented default where the watcher sees files written in
/// place, since a writer descheduled for longer than it between two writes is, by
/// design, taken to have finished (README, "Writers").
fn settle_ms(mode: Mode) -> u64 {
    if mode == Mode::WatchInPlace { 300 } else { 50 }
}
const MAX_FILE_BYTES: u64 = 200_000;

/// Where an entry ends up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    /// In `processed/`, byte for byte.
    Processed,
    /// In `rejected/`, byte for byte, with `<name>.reason`.
    Rejected,
    /// Left where it is (a `skipped` row says why).
    Stays,
    /// A writer's temporary name or a dotfile: never looked at, no ledger row.
    Ignored,
}

/// Which folder the entry is made in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    /// `inbox/droid/`.
    Agent,
    /// `inbox/` itself.
    Inbox,
    /// `inbox/fresh/`, an agent folder that has no `processed/` or `rejected/` yet.
    Fresh,
}

type Special = Box<dyn Fn(&Path, &Path)>;

/// How the entry is made.
enum Make {
    /// A regular file with these bytes.
    Bytes(Vec<u8>),
    /// A regular file with these bytes, created with mode 000.
    Unreadable(Vec<u8>),
    /// A sparse regular file of this size (no disk used).
    Sparse(u64),
    /// Anything else, made at the given path; the second path is a folder outside the
    /// root holding `secret.json` (a valid drop), `fifo` and `dir/`.
    Special(Special),
}

struct Case {
    kind: &'static str,
    name: OsString,
    place: Place,
    make: Make,
    /// Made in the entry's folder before the entry.
    setup: Option<fn(&Path)>,
    /// Ledger status ("" when ignored).
    status: &'static str,
    /// Part of the ledger's reason ("" when none is expected).
    reason: &'static str,
    /// A key of the ledger's `salvage` object that must be set ("" for none).
    salvage: &'static str,
    fate: Fate,
    new: i64,
    invalid: i64,
}

fn pair(tag: &str) -> String {
    format!(
        r#"{{"question": "What does the {tag} case test?", "answer": "That {tag} is handled."}}"#
    )
}

fn good(tag: &str) -> Vec<u8> {
    format!("[{}]", pair(tag)).into_bytes()
}

fn case(kind: &'static str, name: &str, make: Make) -> Case {
    Case {
        kind,
        name: OsString::from(name),
        place: Place::Agent,
        make,
        setup: None,
        status: "integrated",
        reason: "",
        salvage: "",
        fate: Fate::Processed,
        new: 1,
        invalid: 0,
    }
}

impl Case {
    fn rejected(mut self, reason: &'static str) -> Case {
        (self.status, self.reason, self.fate, self.new) = ("rejected", reason, Fate::Rejected, 0);
        self
    }
    fn skipped(mut self, reason: &'static str) -> Case {
        (self.status, self.reason, self.fate, self.new) = ("skipped", reason, Fate::Stays, 0);
        self
    }
    fn ignored(mut self) -> Case {
        (self.status, self.fate, self.new) = ("", Fate::Ignored, 0);
        self
    }
    fn pairs(mut self, new: i64, invalid: i64) -> Case {
        (self.new, self.invalid) = (new, invalid);
        self
    }
    fn salvaged(mut self, key: &'static str) -> Case {
        self.salvage = key;
        self
    }
    fn in_inbox(mut self) -> Case {
        self.place = Place::Inbox;
        self
    }
    fn named(mut self, name: &[u8]) -> Case {
        self.name = OsStr::from_bytes(name).to_os_string();
        self
    }
}

fn special(f: impl Fn(&Path, &Path) + 'static) -> Make {
    Make::Special(Box::new(f))
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Every kind, in the order they are dropped (later kinds rely on earlier ones: the
/// duplicate, the name collision).
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // The generator's 16 bad files.
    for kind in BadKind::ALL {
        let (name, bytes) = generate::bad_file(kind);
        let c = case("generate::BadKind", &name, Make::Bytes(bytes));
        let c = match kind {
            BadKind::MalformedJson => c.rejected("malformed JSON at line 1"),
            BadKind::TruncatedJson => c.rejected("truncated JSON"),
            BadKind::Empty => c.rejected("empty file"),
            BadKind::WhitespaceOnly => c.rejected("whitespace only"),
            BadKind::NulBytes => c.rejected("contains NUL bytes"),
            BadKind::BinaryJunk => c.rejected("NUL bytes"),
            BadKind::TopLevelNumber => c.rejected("top-level number"),
            BadKind::TopLevelString => c.rejected("top-level string"),
            BadKind::ArrayOfNumbers => c.rejected("array of numbers"),
            BadKind::UnrecognisedLayout => c.rejected("unrecognised layout"),
            BadKind::QaPairsNotArray => c.rejected("`qa_pairs` at top level is a string"),
            BadKind::AllPairsInvalid => c.rejected("no valid pair: 4 pairs"),
            BadKind::EmptyArray => c.rejected("empty array"),
            BadKind::DeepNesting => c.rejected("nested too deeply"),
            BadKind::JsonlBrokenLine => c.pairs(2, 1).salvaged("lines_unparsed"),
            BadKind::AnswerNotString => c.rejected("answer is a number"),
        };
        cases.push(c);
    }
    cases.extend([
        case("a valid drop", "baseline.json", Make::Bytes(good("baseline"))),
        // Links: never followed, whatever they point at.
        case("symlink to /dev/zero", "zero.json", special(|p, _| symlink("/dev/zero", p)))
            .skipped("symbolic link to /dev/zero"),
        case("symlink to /dev/null", "null.json", special(|p, _| symlink("/dev/null", p)))
            .skipped("symbolic link"),
        case(
            "symlink to a valid drop outside the root",
            "outside.json",
            special(|p, o| symlink(o.join("secret.json"), p)),
        )
        .skipped("links are never followed"),
        case("symlink to a folder", "to_dir.json", special(|p, o| symlink(o.join("dir"), p)))
            .skipped("symbolic link"),
        case(
            "dangling symlink",
            "dangling.json",
            special(|p, _| symlink("/nonexistent/nowhere.json", p)),
        )
        .skipped("symbolic link"),
        case(
            "symlink to itself",
            "loop.json",
            special(|p, _| symlink(p.file_name().unwrap(), p)),
        )
        .skipped("symbolic link"),
        case("symlink to a FIFO", "to_fifo.json", special(|p, o| symlink(o.join("fifo"), p)))
            .skipped("symbolic link"),
        case("symlink to /etc/passwd", "passwd.json", special(|p, _| symlink("/etc/passwd", p)))
            .skipped("symbolic link"),
        // Special files: never opened, never block.
        case("FIFO", "fifo.json", special(|p, _| mkfifo(p))).skipped("FIFO"),
        case(
            "Unix socket",
            "socket.json",
            special(|p, _| drop(std::os::unix::net::UnixListener::bind(p).unwrap())),
        )
        .skipped("socket"),
        case(
            "folder named like a drop",
            "folder.json",
            special(|p, _| std::fs::create_dir(p).unwrap()),
        )
        .skipped("a folder"),
        case(
            "folder holding a valid drop",
            "nested_folder",
            special(|p, _| {
                std::fs::create_dir(p).unwrap();
                std::fs::write(p.join("inner.json"), good("inner")).unwrap();
            }),
        )
        .skipped("a folder"),
        case(
            "file readable by nobody",
            "unreadable.json",
            Make::Unreadable(good("unreadable")),
        )
        .skipped("unreadable"),
        // Sizes.
        case("sparse 1 GiB file", "huge.json", Make::Sparse(1 << 30))
            .rejected("over the limit of 200000 bytes"),
        case("one byte over the limit", "over.json", Make::Sparse(MAX_FILE_BYTES + 1))
            .rejected("rejected unread"),
        case("exactly at the limit", "at_limit.json", Make::Bytes(padded(&good("at limit"), MAX_FILE_BYTES))),
        case("a 150 KB answer", "long_answer.json", Make::Bytes(long_answer())),
        case("2,000 pairs (checkpoints inside)", "many.json", Make::Bytes(many(2000)))
            .pairs(2000, 0),
        // Names.
        case("name that is not UTF-8", "", Make::Bytes(good("latin1 name")))
            .named(b"caf\xe9_\xff.json"),
        case(
            "newline and escape sequence in the name",
            "",
            Make::Bytes(good("control name")),
        )
        .named(b"new\nline\x1b[2J.json"),
        case("name of 255 bytes", "", Make::Bytes(good("long name")))
            .named(format!("{}.json", "n".repeat(250)).as_bytes()),
        case("name of 255 bytes, rejected", "", Make::Bytes(b"[{".to_vec()))
            .named(format!("{}.json", "r".repeat(250)).as_bytes())
            .rejected("truncated JSON"),
        case("name of 255 bytes of 2-byte characters", "", Make::Bytes(good("wide name")))
            .named(format!("{}.json", "é".repeat(125)).as_bytes()),
        case("name starting with a dash", "-rf.json", Make::Bytes(good("dash"))),
        case("name with spaces, quotes and unicode", "a \"b\" 'c' ✓.json", Make::Bytes(good("spaces"))),
        case("name with a backslash", "back\\slash.json", Make::Bytes(good("backslash"))),
        // Extensions.
        case("upper-case extension", "UPPER.JSON", Make::Bytes(good("upper"))),
        case("mixed-case .NdJson", "mixed.NdJson", Make::Bytes(pair("ndjson").into_bytes())),
        case(".txt", "notes.txt", Make::Bytes(good("txt"))).skipped("not a drop (extension .txt"),
        case("no extension", "README", Make::Bytes(good("readme"))).skipped("no extension"),
        case(".json.gz", "archive.json.gz", Make::Bytes(good("gz"))).skipped("extension .gz"),
        case("dotfile", ".hidden.json", Make::Bytes(good("hidden"))).ignored(),
        case("writer's temporary name", "writing.json.tmp", Make::Bytes(good("tmp"))).ignored(),
        case("partial download", "x.json.part", Make::Bytes(good("part"))).ignored(),
        // Places.
        case("file in inbox/ itself", "stray.json", Make::Bytes(good("stray")))
            .in_inbox()
            .skipped("drops belong in inbox/<agent>/"),
        case(
            "symlinked agent folder",
            "linked_agent",
            special(|p, o| symlink(o.join("dir"), p)),
        )
        .in_inbox()
        .skipped("symbolic link"),
        case(
            "folder with an invalid agent name",
            "bad agent",
            special(|p, _| {
                std::fs::create_dir(p).unwrap();
                std::fs::write(p.join("x.json"), good("bad agent")).unwrap();
            }),
        )
        .in_inbox()
        .skipped("not an agent name"),
        case("hard link to a file outside the inbox", "hardlink.json", special(|p, o| {
            std::fs::hard_link(o.join("linked.json"), p).unwrap()
        })),
        Case {
            place: Place::Fresh,
            setup: Some(|dir| {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(dir.join("processed"), "in the way").unwrap();
            }),
            ..case(
                "a file in the way of processed/",
                "after_the_way.json",
                Make::Bytes(good("in the way")),
            )
        },
        Case {
            place: Place::Fresh,
            setup: Some(|dir| {
                std::os::unix::fs::symlink("/tmp", dir.join("rejected")).unwrap();
            }),
            ..case(
                "a link in the way of rejected/",
                "rejected_behind_a_link.json",
                Make::Bytes(b"[1, 2".to_vec()),
            )
            .rejected("truncated JSON")
        },
        // Salvage.
        case(
            "lone surrogate",
            "surrogate.json",
            Make::Bytes(br#"[{"q": "Lone \ud800 surrogate?", "a": "Replaced."}]"#.to_vec()),
        )
        .salvaged("surrogates_replaced"),
        case(
            "NaN, Infinity and 1e400 in extra fields",
            "nan.json",
            Make::Bytes(br#"[{"q": "Non-finite?", "a": "Kept as text.", "x": NaN, "y": -Infinity, "z": 1e400}]"#.to_vec()),
        )
        .salvaged("numbers_kept_as_text"),
        case(
            "NaN as a question",
            "nan_question.json",
            Make::Bytes(br#"[{"q": NaN, "a": "No."}, {"q": "Other?", "a": "Kept."}]"#.to_vec()),
        )
        .pairs(1, 1)
        .salvaged("numbers_kept_as_text"),
        case(
            "NUL and escape sequences in text",
            "controls.json",
            Make::Bytes(br#"[{"q": "Bell\u0007 and \u0000NUL?", "a": "Clear\u001b[2J screen."}]"#.to_vec()),
        )
        .salvaged("controls_removed"),
        case(
            "question made only of control characters",
            "only_controls.json",
            Make::Bytes(br#"[{"q": "\u0001\u0002", "a": "x"}, {"q": "Fine?", "a": "Yes."}]"#.to_vec()),
        )
        .pairs(1, 1),
        case(
            "JSON Lines with a cut-off last line",
            "cut.jsonl",
            Make::Bytes(format!("{}\n{}\n{{\"q\": \"Cut", pair("jsonl one"), pair("jsonl two")).into_bytes()),
        )
        .pairs(2, 1)
        .salvaged("lines_unparsed"),
        case(
            "JSON Lines with CRLF",
            "crlf.jsonl",
            Make::Bytes(format!("{}\r\n{}\r\n", pair("crlf one"), pair("crlf two")).into_bytes()),
        )
        .pairs(2, 0),
        case(
            "JSON Lines where every line is broken",
            "all_broken.jsonl",
            Make::Bytes(b"{\"q\": 1}\n{\"q\": \n{oops\n".to_vec()),
        )
        .rejected("no valid pair"),
        // Encodings.
        case("UTF-16LE with BOM", "utf16le.json", Make::Bytes(utf16(&good("utf16le"), false, true))),
        case("UTF-16BE without BOM", "utf16be.json", Make::Bytes(utf16(&good("utf16be"), true, false))),
        case("windows-1252", "cp1252.json", Make::Bytes(cp1252())),
        case("UTF-8 with BOM", "bom.json", Make::Bytes([&b"\xEF\xBB\xBF"[..], &good("bom")].concat())),
        case(
            "UTF-8 with a corrupt byte",
            "corrupt.json",
            Make::Bytes(
                "[{\"q\": \"Caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e, d\u{e9}j\u{e0} vu, na\u{ef}ve?\", \"a\": \"Bad \u{FFFF}"
                    .bytes()
                    .map(|b| if b == 0xEF { 0xFF } else { b })
                    .chain(*b" byte.\"}]")
                    .collect(),
            ),
        ),
        // Content.
        case("trailing garbage", "trailing.json", Make::Bytes([good("trailing"), b" garbage".to_vec()].concat()))
            .rejected("trailing characters"),
        case("qa_pairs null", "qa_null.json", Make::Bytes(br#"{"batch": 1, "qa_pairs": null}"#.to_vec()))
            .rejected("`qa_pairs` at top level is null"),
        case(
            "huge integer and deep extra field",
            "deep_extra.json",
            Make::Bytes(format!(
                r#"[{{"q": "Deep?", "a": "Within the limit.", "n": 123456789012345678901234567890, "d": {}1{}}}]"#,
                "[".repeat(100),
                "]".repeat(100)
            ).into_bytes()),
        ),
        case("a thousand fields", "wide.json", Make::Bytes(wide())),
        case(
            "pair object not in an array",
            "single.json",
            Make::Bytes(pair("single").into_bytes()),
        ),
        // After the baseline: the same bytes again, and the same name again.
        case("same bytes as an earlier drop", "again.json", Make::Bytes(good("baseline")))
            .pairs(0, 0),
        case("same name as an earlier drop", "baseline.json", Make::Bytes(good("baseline, second"))),
    ]);
    // The duplicate's status.
    for c in &mut cases {
        if c.kind == "same bytes as an earlier drop" {
            c.status = "duplicate";
            c.reason = "same bytes as baseline.json";
        }
    }
    cases
}

fn padded(json: &[u8], to: u64) -> Vec<u8> {
    let mut v = json.to_vec();
    v.resize(to as usize, b' ');
    v
}

fn long_answer() -> Vec<u8> {
    format!(
        r#"[{{"q": "Long answer?", "a": "{}"}}]"#,
        "lorem ipsum ".repeat(12_500)
    )
    .into_bytes()
}

fn many(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"q": "Many {i}?", "a": "Answer {i}."}}"#))
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn wide() -> Vec<u8> {
    let fields: Vec<String> = (0..1000).map(|i| format!(r#""f{i}": {i}"#)).collect();
    format!(r#"[{{"q": "Wide?", "a": "Yes.", {}}}]"#, fields.join(", ")).into_bytes()
}

fn utf16(text: &[u8], big_endian: bool, bom: bool) -> Vec<u8> {
    let s = std::str::from_utf8(text).unwrap();
    let mut out = Vec::new();
    if bom {
        out.extend(if big_endian {
            [0xFE, 0xFF]
        } else {
            [0xFF, 0xFE]
        });
    }
    for u in s.encode_utf16() {
        out.extend(if big_endian {
            u.to_be_bytes()
        } else {
            u.to_le_bytes()
        });
    }
    out
}

fn cp1252() -> Vec<u8> {
    let text = "[{\"q\": \"What is \u{201c}d\u{e9}j\u{e0} vu\u{201d} in charts?\", \"a\": \"A pattern seen before \u{2014} costs \u{20ac}2.\"}]";
    let (bytes, _, bad) = encoding_rs::WINDOWS_1252.encode(text);
    assert!(!bad);
    bytes.into_owned()
}

/// How the binary is started: as root, without the power to read what the owner may
/// not (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a mode-000 file is unreadable as it
/// would be for any user; otherwise as is.
fn wrapper() -> Vec<&'static str> {
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            Path::new("/usr/bin/setpriv").exists() || Path::new("/bin/setpriv").exists(),
            "running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
        );
        vec!["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    } else {
        Vec::new()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ingest,
    WatchRenamed,
    WatchInPlace,
}

struct Suite {
    env: Env,
    mode: Mode,
    wrap: Vec<&'static str>,
    outside: PathBuf,
    watcher: Option<Running>,
    pairs: i64,
    made: usize,
}

impl Suite {
    fn new(mode: Mode) -> Suite {
        let env = Env::new();
        std::fs::write(
            env.path("perpetual.toml"),
            format!(
                "[ingest]\nmax_file_bytes = {MAX_FILE_BYTES}\n[watch]\nsettle_ms = {}\nreconcile_secs = 3600\n",
                settle_ms(mode)
            ),
        )
        .unwrap();
        let outside = env.path("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(
            outside.join("secret.json"),
            r#"[{"q": "Outside secret?", "a": "Never read."}]"#,
        )
        .unwrap();
        std::fs::write(outside.join("linked.json"), good("hard link")).unwrap();
        mkfifo(&outside.join("fifo"));
        let mut suite = Suite {
            env,
            mode,
            wrap: wrapper(),
            outside,
            watcher: None,
            pairs: 0,
            made: 0,
        };
        suite.run(&["init"]).expect(0);
        if mode != Mode::Ingest {
            let cmd = suite.env.wrapped_command(&suite.wrap, &["watch"]);
            let mut w = suite.env.spawn_command(cmd, &["watch"]);
            w.wait_for_log("watching");
            suite.watcher = Some(w);
        }
        suite
    }

    fn run(&self, args: &[&str]) -> common::Run {
        self.env
            .run_command(self.env.wrapped_command(&self.wrap, args), args)
    }

    fn explain(&self) -> String {
        match &self.watcher {
            Some(w) => w.explain(),
            None => self.env.listing(),
        }
    }

    fn dir(&self, place: Place) -> PathBuf {
        match place {
            Place::Agent => self.env.path("inbox/droid"),
            Place::Inbox => self.env.path("inbox"),
            Place::Fresh => self.env.path("inbox/fresh"),
        }
    }

    /// Makes the entry: in place, or (renamed) under a dotted temporary name and then
    /// renamed into place. Returns the bytes of a regular file.
    fn make(&mut self, c: &Case, at: &Path) -> Option<Vec<u8>> {
        self.made += 1;
        let renamed = self.mode != Mode::WatchInPlace;
        let build = if renamed {
            at.with_file_name(format!(".t{}", self.made))
        } else {
            at.to_path_buf()
        };
        let bytes = match &c.make {
            Make::Bytes(b) => {
                let mut f = std::fs::File::create(&build).unwrap();
                // In two writes, so a watcher may see half a file.
                let half = b.len() / 2;
                f.write_all(&b[..half]).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
                f.write_all(&b[half..]).unwrap();
                Some(b.clone())
            }
            Make::Unreadable(b) => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o000)
                    .open(&build)
                    .unwrap();
                f.write_all(b).unwrap();
                Some(b.clone())
            }
            Make::Sparse(n) => {
                std::fs::File::create(&build).unwrap().set_len(*n).unwrap();
                None
            }
            Make::Special(f) => {
                f(&build, &self.outside);
                None
            }
        };
        if renamed {
            std::fs::rename(&build, at).unwrap();
        }
        bytes
    }

    fn canary(&self, i: usize) -> String {
        let name = format!("canary_{i:03}.json");
        let tmp = self.env.path(&format!("inbox/droid/.{name}.tmp"));
        std::fs::write(&tmp, format!(r#"[{{"q": "Canary {i}?", "a": "Alive."}}]"#)).unwrap();
        std::fs::rename(&tmp, self.env.path(&format!("inbox/droid/{name}"))).unwrap();
        name
    }

    fn rows_since(&self, id: i64, source: &str) -> Vec<Row> {
        let db = self.env.db();
        let mut stmt = db
            .prepare(
                "SELECT status, reason, pairs_new, pairs_invalid, stored_path, salvage, size
                 FROM files WHERE id > ?1 AND source_path = ?2 ORDER BY id",
            )
            .unwrap();
        stmt.query_map(rusqlite::params![id, source], |r| {
            Ok(Row {
                status: r.get(0)?,
                reason: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                new: r.get(2)?,
                invalid: r.get(3)?,
                stored: r.get(4)?,
                salvage: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                size: r.get(6)?,
            })
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }

    fn last_id(&self) -> i64 {
        self.env
            .try_count("SELECT COALESCE(MAX(id), 0) FROM files")
            .unwrap_or(0)
    }

    fn one(&mut self, i: usize, c: &Case) {
        let what = format!("case {i} ({}: {:?}, {:?})", c.kind, c.name, self.mode);
        if let Some(setup) = c.setup {
            setup(&self.dir(c.place));
        }
        let at = self.dir(c.place).join(&c.name);
        let source = perpetual::engine::names::render_path(&at);
        let before = self.last_id();
        let bytes = self.make(c, &at);
        let canary = match self.mode {
            Mode::Ingest => {
                let canary = self.canary(i);
                let run = self.run(&["ingest", "--json"]);
                let want = if c.fate == Fate::Rejected { 3 } else { 0 };
                assert_eq!(run.code(), want, "{what}: exit status\n{}", run.explain());
                canary
            }
            _ => {
                if c.fate != Fate::Ignored {
                    wait_until(
                        &format!("{what} recorded"),
                        || {
                            let rows = self.rows_since(before, &source);
                            rows.first().is_some_and(|r| {
                                r.status == c.status
                                    && (c.fate == Fate::Stays
                                        || (at.symlink_metadata().is_err()
                                            && r.stored.as_deref().is_some_and(|s| {
                                                perpetual::engine::names::parse_path(s).exists()
                                            })))
                            })
                        },
                        || self.explain(),
                    );
                }
                let canary = self.canary(i);
                let processed = self.env.path(&format!("inbox/droid/processed/{canary}"));
                wait_until(
                    &format!("the canary after {what}"),
                    || processed.is_file(),
                    || self.explain(),
                );
                canary
            }
        };
        // The canary got through.
        assert!(
            self.env
                .path(&format!("inbox/droid/processed/{canary}"))
                .is_file(),
            "{what}: canary\n{}",
            self.explain()
        );
        // The ledger.
        let rows = self.rows_since(before, &source);
        if c.fate == Fate::Ignored {
            assert!(rows.is_empty(), "{what}: never looked at: {rows:?}");
            assert!(at.symlink_metadata().is_ok(), "{what}: left alone");
        } else {
            assert_eq!(
                rows.len(),
                1,
                "{what}: one ledger row: {rows:?}\n{}",
                self.explain()
            );
            let r = &rows[0];
            assert_eq!(r.status, c.status, "{what}: {r:?}\n{}", self.explain());
            assert!(
                r.reason.contains(c.reason),
                "{what}: reason {:?}, wanted {:?}",
                r.reason,
                c.reason
            );
            assert_eq!(
                (r.new, r.invalid),
                (c.new, c.invalid),
                "{what}: pairs {r:?}"
            );
            if !c.salvage.is_empty() {
                assert!(r.salvage.contains(c.salvage), "{what}: salvage {r:?}");
            }
            // Where it ended up.
            match c.fate {
                Fate::Stays => {
                    assert!(r.stored.is_none(), "{what}: {r:?}");
                    assert!(at.symlink_metadata().is_ok(), "{what}: left where it was");
                }
                Fate::Processed | Fate::Rejected => {
                    let stored = perpetual::engine::names::parse_path(r.stored.as_deref().unwrap());
                    let folder = if c.fate == Fate::Processed {
                        "processed"
                    } else {
                        "rejected"
                    };
                    assert_eq!(
                        stored.parent().and_then(|p| p.file_name()),
                        Some(OsStr::new(folder)),
                        "{what}: {stored:?}"
                    );
                    assert!(at.symlink_metadata().is_err(), "{what}: left the inbox");
                    match &bytes {
                        Some(b) => {
                            assert_eq!(&std::fs::read(&stored).unwrap(), b, "{what}: byte for byte")
                        }
                        None => {
                            assert_eq!(std::fs::metadata(&stored).unwrap().len() as i64, r.size)
                        }
                    }
                    if c.fate == Fate::Rejected {
                        let mut reason = stored.clone().into_os_string();
                        reason.push(".reason");
                        let text = std::fs::read_to_string(&reason)
                            .unwrap_or_else(|e| panic!("{what}: {reason:?}: {e}"));
                        assert!(text.contains(c.reason), "{what}: {text}");
                    }
                }
                Fate::Ignored => unreachable!(),
            }
        }
        // Exactly the pairs expected: the case's and the canary's.
        self.pairs += c.new + 1;
        assert_eq!(
            self.env.count("SELECT COUNT(*) FROM pairs"),
            self.pairs,
            "{what}: pairs stored\n{}",
            self.explain()
        );
    }

    /// Nothing lost, nothing twice, nothing without a ledger entry.
    fn finish(mut self, cases: &[Case]) {
        if self.mode == Mode::Ingest {
            // What the last run set aside (the things in the way) is recorded by the next.
            self.run(&["ingest"]).expect(0);
        }
        let env = &self.env;
        let listed = |dir: &Path| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            v.sort();
            v
        };
        let leftovers: Vec<PathBuf> = listed(&env.path("inbox/droid"))
            .into_iter()
            .chain(listed(&env.path("inbox/fresh")))
            .chain(listed(&env.path("inbox")))
            .filter(|p| {
                let name = p.file_name().unwrap().as_bytes();
                !(name.starts_with(b".")
                    || name.ends_with(b".tmp")
                    || name.ends_with(b".part")
                    || name == b"processed"
                    || name == b"rejected"
                    || ["droid", "zai", "claude_code", "fresh"]
                        .iter()
                        .any(|a| p == &env.path(&format!("inbox/{a}"))))
            })
            .collect();
        let skipped_at = |p: &Path| {
            env.db()
                .query_row(
                    "SELECT COUNT(*) FROM files WHERE status = 'skipped' AND source_path = ?1",
                    [perpetual::engine::names::render_path(p)],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
        };
        for p in &leftovers {
            wait_until(
                &format!("{p:?} left in the inbox has a skipped row"),
                || skipped_at(p) == 1,
                || self.explain(),
            );
        }
        assert_eq!(
            env.count("SELECT COUNT(*) FROM files WHERE status = 'partial'"),
            0
        );
        assert_eq!(
            env.count("SELECT COALESCE(SUM(pairs_new), 0) FROM files"),
            self.pairs,
            "every stored pair counted once"
        );
        assert_eq!(
            env.count("SELECT COUNT(DISTINCT key) FROM pairs"),
            self.pairs
        );
        assert_eq!(
            env.count("SELECT COUNT(*) FROM pairs WHERE question = 'Outside secret?'"),
            0,
            "nothing outside the root was read"
        );
        // Every kept file is one ledger row's stored path, and every stored path exists.
        let db = env.db();
        let stored: Vec<String> = db
            .prepare("SELECT stored_path FROM files WHERE stored_path IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for s in &stored {
            assert!(perpetual::engine::names::parse_path(s).exists(), "{s}");
        }
        for folder in [
            "droid/processed",
            "droid/rejected",
            "fresh/processed",
            "fresh/rejected",
        ] {
            for p in listed(&env.path(&format!("inbox/{folder}"))) {
                assert!(
                    p.symlink_metadata().unwrap().is_file(),
                    "{p:?}: only regular files are kept"
                );
                if p.extension() == Some(OsStr::new("reason")) {
                    continue;
                }
                let text = perpetual::engine::names::render_path(&p);
                assert_eq!(
                    stored.iter().filter(|s| **s == text).count(),
                    1,
                    "{text} is one row's stored path"
                );
            }
        }
        let kinds = cases.len();
        eprintln!(
            "{:?}: {kinds} kinds, {} pairs, {} ledger rows, every canary integrated",
            self.mode,
            self.pairs,
            env.count("SELECT COUNT(*) FROM files")
        );
        if let Some(mut w) = self.watcher.take() {
            w.stop();
        }
    }
}

#[derive(Debug)]
struct Row {
    status: String,
    reason: String,
    new: i64,
    invalid: i64,
    stored: Option<String>,
    salvage: String,
    size: i64,
}

fn suite(mode: Mode) {
    let cases = cases();
    assert!(cases.len() >= 60, "{} kinds", cases.len());
    let mut s = Suite::new(mode);
    for (i, c) in cases.iter().enumerate() {
        s.one(i, c);
    }
    s.finish(&cases);
}

#[test]
fn hostile_kinds_through_ingest() {
    suite(Mode::Ingest);
}

#[test]
fn hostile_kinds_renamed_into_place_under_a_running_watcher() {
    suite(Mode::WatchRenamed);
}

#[test]
fn hostile_kinds_written_in_place_under_a_running_watcher() {
    suite(Mode::WatchInPlace);
}

#[test]
fn the_suite_covers_every_kind_of_the_generator_and_of_issue_10() {
    let cases = cases();
    let names: std::collections::HashSet<_> =
        cases.iter().map(|c| (c.kind, c.name.clone())).collect();
    assert_eq!(names.len(), cases.len(), "each kind once");
    assert_eq!(
        cases
            .iter()
            .filter(|c| c.kind == "generate::BadKind")
            .count(),
        BadKind::ALL.len()
    );
    let _ = PATIENCE;
}
