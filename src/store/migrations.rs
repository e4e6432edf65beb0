//! The schema, as an append-only list of migrations. `PRAGMA user_version` records
//! how many have run; opening a database runs the rest in one transaction each.
//! Never edit a migration that has shipped: add a new one.
//!
//! A fresh database does not replay the list: it takes `schema.sql`, what the whole
//! list leaves (every table, index and trigger as SQLite stores it, and the rows the
//! migrations insert), in one transaction. Replaying the 14 migrations there were
//! then, with their table rebuilds and column additions that each re-read the whole
//! schema, took 8 ms of a fresh root's first command; with the script, an empty
//! `ingest` on a fresh root went from 16.0 to 9.9 ms (BENCHMARKS.md, "End to end",
//! eighth sitting). The test `the_fresh_schema_is_what_the_migrations_leave` compares
//! the two; after adding a migration, regenerate the script with
//! `PERPETUAL_WRITE_SCHEMA=1 cargo test --lib the_fresh_schema`.

use anyhow::{Context, Result};
use rusqlite::Connection;

/// Migration `i` (0-based) brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: pairs and the file ledger.
    r#"
    CREATE TABLE files (
        id              INTEGER PRIMARY KEY,
        agent           TEXT NOT NULL,
        name            TEXT NOT NULL,            -- file name as dropped
        source_path     TEXT NOT NULL,            -- absolute path it was read from
        stored_path     TEXT,                     -- where it was moved (processed/ or rejected/), NULL when read in place
        content_hash    BLOB,                     -- blake3 of the bytes; NULL when never read (over the size limit)
        size            INTEGER NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('partial', 'integrated', 'duplicate', 'rejected')),
        encoding        TEXT,
        replaced        INTEGER NOT NULL DEFAULT 0, -- some bytes were undecodable and replaced
        layout          TEXT,
        session         INTEGER,                  -- session number from the content, when it has one
        pairs_seen      INTEGER NOT NULL DEFAULT 0,
        pairs_new       INTEGER NOT NULL DEFAULT 0,
        pairs_duplicate INTEGER NOT NULL DEFAULT 0,
        pairs_invalid   INTEGER NOT NULL DEFAULT 0,
        resume_at       INTEGER NOT NULL DEFAULT 0, -- valid pairs already written (checkpoint inside the file)
        invalid         TEXT,                     -- JSON array of {index, reason}
        reason          TEXT,                     -- why rejected, or what it duplicates
        duplicate_of    INTEGER REFERENCES files(id),
        started_at      TEXT NOT NULL,
        finished_at     TEXT
    );
    CREATE INDEX files_by_hash ON files(content_hash);
    CREATE INDEX files_by_status ON files(status);

    CREATE TABLE pairs (
        id          INTEGER PRIMARY KEY,
        key         BLOB NOT NULL,                 -- blake3(normalised question \n normalised answer); distinct: see pair_keys
        question    TEXT NOT NULL,
        answer      TEXT NOT NULL,
        indicator   TEXT,
        category    TEXT,
        agent       TEXT NOT NULL,
        extra       TEXT,                          -- unrecognised fields, JSON object
        file_id     INTEGER NOT NULL REFERENCES files(id),
        created_at  TEXT NOT NULL
    );
    CREATE INDEX pairs_by_created ON pairs(created_at);

    -- Distinctness (store::pairs explains why it is kept this way): the keys of new
    -- pairs are appended to tail_keys; they are merged in key order into pair_keys
    -- once the tail reaches a quarter of the merged keys (at least 200,000).
    CREATE TABLE pair_keys (
        key     BLOB PRIMARY KEY,
        pair_id INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE tail_keys (
        pair_id INTEGER PRIMARY KEY,                 -- = pairs.id, so appends stay in order
        key     BLOB NOT NULL
    );
    "#,
    // 2: the task stack, sessions and their checkpoints.
    r#"
    CREATE TABLE tasks (
        id               TEXT PRIMARY KEY,          -- e.g. integrate_sessions_101_140; also the report's file name
        agent            TEXT NOT NULL,
        priority         INTEGER NOT NULL,          -- 1 runs first
        position         INTEGER NOT NULL,          -- order inside a priority: lower first (older, or retried)
        description      TEXT,
        status           TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
        done             INTEGER NOT NULL DEFAULT 0, -- progress: units done ...
        total            INTEGER,                   -- ... of this many (NULL: unknown)
        estimated_tokens INTEGER,
        failures         INTEGER NOT NULL DEFAULT 0, -- times it was marked failed
        fail_reason      TEXT,                      -- the last failure's reason
        needs_review     TEXT,                      -- why a person should look (wrapped past the hard stop unfinished)
        grade            TEXT,                      -- letter, set when it completes
        grade_detail     TEXT,                      -- JSON: the four terms, their inputs, the score
        created_at       TEXT NOT NULL,
        started_at       TEXT,
        finished_at      TEXT                       -- completed or failed
    );
    CREATE INDEX tasks_by_queue ON tasks(agent, status, priority, position);

    CREATE TABLE task_deps (
        task_id    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        depends_on TEXT NOT NULL REFERENCES tasks(id),  -- no cascade: removing a task others need is refused
        PRIMARY KEY (task_id, depends_on)
    ) WITHOUT ROWID;
    CREATE INDEX task_deps_by_dependency ON task_deps(depends_on);

    CREATE TABLE sessions (
        id                TEXT PRIMARY KEY,         -- session_20251106_001355, _2, _3 ... within one second
        agent             TEXT NOT NULL,
        task_id           TEXT REFERENCES tasks(id) ON DELETE SET NULL,
        status            TEXT NOT NULL CHECK (status IN ('active', 'wrapped')),
        token_budget      INTEGER NOT NULL,         -- the budget when it started; 0 = no limit
        api_calls_per_day INTEGER NOT NULL,
        slots             INTEGER NOT NULL,
        wall_minutes      INTEGER NOT NULL,
        tokens_used       INTEGER NOT NULL DEFAULT 0, -- as last reported (checkpoint or wrap)
        done_at_start     INTEGER NOT NULL DEFAULT 0, -- the task's progress when the session began
        started_at        TEXT NOT NULL,
        wrapped_at        TEXT,
        level             TEXT,                     -- budget level at the wrap
        next_action       TEXT,                     -- for the next session (the handoff's last section)
        handoff_path      TEXT,
        backup_path       TEXT,
        commit_id         TEXT,
        wrap_steps        TEXT                      -- JSON: each wrap step and what became of it
    );
    CREATE INDEX sessions_by_agent ON sessions(agent, status);
    CREATE INDEX sessions_by_task ON sessions(task_id);

    CREATE TABLE checkpoints (
        id          INTEGER PRIMARY KEY,
        session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        agent       TEXT NOT NULL,
        task_id     TEXT REFERENCES tasks(id) ON DELETE SET NULL,
        at          TEXT NOT NULL,
        done        INTEGER,                        -- progress after it, when given
        total       INTEGER,
        tokens      INTEGER,                        -- the session's tokens so far, when given
        api_calls   INTEGER NOT NULL DEFAULT 0,     -- calls made since the previous checkpoint
        note        TEXT,
        level       TEXT NOT NULL
    );
    CREATE INDEX checkpoints_by_session ON checkpoints(session_id);
    CREATE INDEX checkpoints_by_agent_time ON checkpoints(agent, at);
    CREATE INDEX checkpoints_by_task ON checkpoints(task_id);
    "#,
    // 3: the perpetual loop: task kinds, templates, agents' pause state, the loop's runs,
    // the assigner's log.
    r#"
    ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'
        CHECK (kind IN ('agent', 'ingest', 'backfill'));   -- who runs it: the agent's command, or the loop itself
    ALTER TABLE tasks ADD COLUMN params TEXT;              -- JSON: what a built-in kind needs (backfill: dir, sessions, budget)

    CREATE TABLE task_templates (
        id               INTEGER PRIMARY KEY,
        agent            TEXT NOT NULL,
        pattern          TEXT NOT NULL,             -- task id with {n}, e.g. droid_research_batch_{n}
        description      TEXT,                      -- may contain {n}
        priority         INTEGER NOT NULL,
        estimated_tokens INTEGER,
        total            INTEGER,
        next_n           INTEGER NOT NULL,          -- the {n} of the next task made from it
        UNIQUE (agent, pattern)
    );

    CREATE TABLE agent_state (
        agent        TEXT PRIMARY KEY,
        paused_at    TEXT,                          -- set by the circuit breaker (or `agent pause`)
        pause_reason TEXT,
        paused_task  TEXT,                          -- the task the breaker flagged for review
        run_floor    INTEGER NOT NULL DEFAULT 0     -- the breaker looks only at runs after this id (set at resume)
    ) WITHOUT ROWID;

    CREATE TABLE loop_runs (
        id                INTEGER PRIMARY KEY,
        agent             TEXT NOT NULL,
        task_id           TEXT REFERENCES tasks(id) ON DELETE SET NULL,
        kind              TEXT NOT NULL,            -- the task's kind
        session_id        TEXT REFERENCES sessions(id) ON DELETE SET NULL,
        pid               INTEGER,
        started_at        TEXT NOT NULL,
        ended_at          TEXT,                     -- NULL while it runs (or when the loop died under it)
        exit_code         INTEGER,
        signal            INTEGER,
        wrap_requested_at TEXT,                     -- when the loop asked for a wrap (flag file)
        stopped_with      TEXT,                     -- 'SIGTERM' or 'SIGKILL' when the loop had to stop it
        progressed        INTEGER,                  -- 1 when the task's progress advanced (or it completed)
        error             TEXT                      -- what went wrong, when something did
    );
    CREATE INDEX loop_runs_by_agent ON loop_runs(agent, id);

    CREATE TABLE assign_log (
        id      INTEGER PRIMARY KEY,
        at      TEXT NOT NULL,
        action  TEXT NOT NULL,                      -- ingest, retry, retry_limit, template
        agent   TEXT,
        task_id TEXT,
        detail  TEXT NOT NULL
    );
    "#,
    // The operator's controls (issue 15): every change to a task, who or what made it and
    // when (`task_history`), and the state-changing commands run, each marked as a
    // person's (an intervention) or not (`commands`).
    r#"
    CREATE TABLE task_history (
        id      INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        at      TEXT NOT NULL,
        actor   TEXT NOT NULL,                      -- who or what: person (alice), session <id>, assigner, ...
        action  TEXT NOT NULL,                      -- edit, review_clear, retry, estimate, recur, ...
        detail  TEXT NOT NULL                       -- what changed, e.g. "priority 5 → 2"
    );
    CREATE INDEX task_history_by_task ON task_history(task_id, id);

    CREATE TABLE commands (
        id      INTEGER PRIMARY KEY,
        at      TEXT NOT NULL,
        actor   TEXT NOT NULL,                      -- as in task_history
        manual  INTEGER NOT NULL,                   -- 1: a person ran it by hand (an intervention)
        command TEXT NOT NULL                       -- e.g. "task edit build_x"
    );
    CREATE INDEX commands_by_time ON commands(manual, at);
    "#,
    // Recurring work and standing duties (issue 15). tasks.kind loses its CHECK (the kinds
    // are `TaskKind`'s, checked when a task is added), so a new kind needs no table
    // rebuild: a column's own CHECK goes with it when the column is dropped.
    r#"
    ALTER TABLE tasks RENAME COLUMN kind TO kind_checked;
    ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'; -- agent, ingest, backfill, duty, ...
    UPDATE tasks SET kind = kind_checked;
    ALTER TABLE tasks DROP COLUMN kind_checked;
    ALTER TABLE tasks ADD COLUMN template_id INTEGER
        REFERENCES task_templates(id) ON DELETE SET NULL;  -- the template it was made from

    ALTER TABLE task_templates ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'; -- its tasks' kind (agent or duty)
    ALTER TABLE task_templates ADD COLUMN every TEXT;           -- recurring: "24h", "06:00" (daily, UTC); NULL: tops up queues
    ALTER TABLE task_templates ADD COLUMN last_task TEXT;       -- the latest task made from it
    ALTER TABLE task_templates ADD COLUMN last_added_at TEXT;   -- when
    "#,
    // The daily report (issue 15): the loop's uptime, every pause of an agent (the
    // circuit breaker's trips among them), the reports written.
    r#"
    CREATE TABLE loop_heartbeats (
        id         INTEGER PRIMARY KEY,
        pid        INTEGER NOT NULL,
        started_at TEXT NOT NULL,                   -- when that `perpetual run` process started
        last_seen  TEXT NOT NULL,                   -- its latest round
        UNIQUE (pid, started_at)
    );

    -- Filled by triggers, so whatever pauses an agent (the breaker, `agent pause`) is logged.
    CREATE TABLE agent_pauses (
        id     INTEGER PRIMARY KEY,
        agent  TEXT NOT NULL,
        at     TEXT NOT NULL,
        reason TEXT,
        task   TEXT
    );
    CREATE INDEX agent_pauses_by_time ON agent_pauses(at);
    CREATE TRIGGER agent_paused_first AFTER INSERT ON agent_state
        WHEN NEW.paused_at IS NOT NULL
    BEGIN
        INSERT INTO agent_pauses (agent, at, reason, task)
        VALUES (NEW.agent, NEW.paused_at, NEW.pause_reason, NEW.paused_task);
    END;
    CREATE TRIGGER agent_paused_again AFTER UPDATE OF paused_at ON agent_state
        WHEN NEW.paused_at IS NOT NULL AND OLD.paused_at IS NOT NEW.paused_at
    BEGIN
        INSERT INTO agent_pauses (agent, at, reason, task)
        VALUES (NEW.agent, NEW.paused_at, NEW.pause_reason, NEW.paused_task);
    END;

    CREATE TABLE daily_reports (
        date       TEXT PRIMARY KEY,                -- 2026-03-01 (UTC)
        written_at TEXT NOT NULL,
        complete   INTEGER NOT NULL                 -- 1: written after the day ended
    ) WITHOUT ROWID;
    "#,
    // Token estimates from history (issue 15): where an estimate the assigner set came
    // from; NULL for one a person (or a plan) gave.
    r#"
    ALTER TABLE tasks ADD COLUMN estimate_source TEXT;
    "#,
    // The dataset workbench (issue 11): its run manifest, quality flags, MinHash
    // signatures and near-duplicate cluster membership (store::dataset).
    r#"
    CREATE TABLE dataset_runs (
        id          INTEGER PRIMARY KEY,
        command     TEXT NOT NULL,              -- quality, near_dups, coverage
        params      TEXT NOT NULL,              -- JSON: thresholds, method, plan ...
        max_pair_id INTEGER NOT NULL,           -- the snapshot: pairs with id <= this
        pairs       INTEGER NOT NULL,           -- pairs in the snapshot
        started_at  TEXT NOT NULL,
        finished_at TEXT,                       -- NULL while running (or when it died)
        outputs     TEXT                        -- JSON: [{path, bytes, blake3}]
    );

    CREATE TABLE quality_flags (
        pair_id INTEGER PRIMARY KEY REFERENCES pairs(id),   -- only flagged pairs have a row
        flags   TEXT NOT NULL,                  -- JSON array of flag names, in dataset::quality::Flag order
        score   REAL NOT NULL,                  -- 0..1: 1 minus the flags' weights, at least 0
        run_id  INTEGER NOT NULL REFERENCES dataset_runs(id)
    );

    CREATE TABLE near_dup_signatures (
        pair_id   INTEGER PRIMARY KEY REFERENCES pairs(id),
        signature BLOB NOT NULL                 -- MinHash values, the low 16 bits of each, little-endian
    );

    CREATE TABLE dataset_settings (
        name  TEXT PRIMARY KEY,                 -- e.g. minhash_params: what the stored signatures were made with
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE near_dup_members (
        method         TEXT NOT NULL,           -- minhash (lexical); cosine (embeddings)
        pair_id        INTEGER NOT NULL REFERENCES pairs(id),
        representative INTEGER NOT NULL REFERENCES pairs(id), -- names the cluster: its lowest pair id
        similarity     REAL NOT NULL,           -- to the representative; 1 for the representative itself
        run_id         INTEGER NOT NULL REFERENCES dataset_runs(id),
        PRIMARY KEY (method, pair_id)
    ) WITHOUT ROWID;
    CREATE INDEX near_dup_members_by_cluster ON near_dup_members(method, representative);
    "#,
    // The workbench's coverage gaps (issue 11): the latest coverage report's indicators,
    // so the assigner can hand out the largest gaps ({gap_indicators} in a template).
    r#"
    CREATE TABLE coverage_gaps (
        indicator TEXT PRIMARY KEY,             -- the plan's name
        category  TEXT NOT NULL,
        target    INTEGER NOT NULL,
        pairs     INTEGER NOT NULL,             -- pairs matched to it (name or alias)
        gap       INTEGER NOT NULL,             -- max(0, target - pairs)
        position  INTEGER NOT NULL,             -- its place in the plan
        run_id    INTEGER NOT NULL REFERENCES dataset_runs(id)
    ) WITHOUT ROWID;
    "#,
    // Every entry accounted for (issue 10): the ledger records every inbox entry and what
    // was salvaged. A new
    // status, 'skipped' (not a regular file, not a drop, or unreadable: left where it
    // is, with the reason), needs the CHECK constraint changed, which SQLite does only
    // by rebuilding the table (https://sqlite.org/lang_altertable.html#otheralter);
    // `migrate` turns foreign keys off around it and checks them before the commit.
    // `salvage`: JSON object of what was repaired so the file could integrate (lines
    // that did not parse, lone surrogates, non-finite numbers, control characters).
    r#"
    CREATE TABLE files_new (
        id              INTEGER PRIMARY KEY,
        agent           TEXT NOT NULL,
        name            TEXT NOT NULL,            -- file name as dropped (lossless rendering: engine::names)
        source_path     TEXT NOT NULL,            -- absolute path it was read from (same rendering)
        stored_path     TEXT,                     -- where it was moved (processed/ or rejected/), NULL when read in place or skipped
        content_hash    BLOB,                     -- blake3 of the bytes; NULL when never read (over the size limit, skipped)
        size            INTEGER NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('partial', 'integrated', 'duplicate', 'rejected', 'skipped')),
        encoding        TEXT,
        replaced        INTEGER NOT NULL DEFAULT 0, -- some bytes were undecodable (or lone surrogates) and replaced
        layout          TEXT,
        session         INTEGER,
        pairs_seen      INTEGER NOT NULL DEFAULT 0,
        pairs_new       INTEGER NOT NULL DEFAULT 0,
        pairs_duplicate INTEGER NOT NULL DEFAULT 0,
        pairs_invalid   INTEGER NOT NULL DEFAULT 0,
        resume_at       INTEGER NOT NULL DEFAULT 0,
        invalid         TEXT,
        reason          TEXT,                     -- why rejected or skipped, or what it duplicates
        duplicate_of    INTEGER REFERENCES files(id),
        started_at      TEXT NOT NULL,
        finished_at     TEXT,
        salvage         TEXT                      -- JSON object: what was repaired to integrate it (engine::layout::Salvage)
    );
    INSERT INTO files_new (id, agent, name, source_path, stored_path, content_hash, size, status,
                           encoding, replaced, layout, session, pairs_seen, pairs_new, pairs_duplicate,
                           pairs_invalid, resume_at, invalid, reason, duplicate_of, started_at, finished_at)
        SELECT id, agent, name, source_path, stored_path, content_hash, size, status,
               encoding, replaced, layout, session, pairs_seen, pairs_new, pairs_duplicate,
               pairs_invalid, resume_at, invalid, reason, duplicate_of, started_at, finished_at
        FROM files;
    DROP TABLE files;
    ALTER TABLE files_new RENAME TO files;
    CREATE INDEX files_by_hash ON files(content_hash);
    CREATE INDEX files_by_status ON files(status);
    CREATE INDEX files_by_source ON files(source_path);
    "#,
    // The dataset workbench, part 2 (issue 12): embeddings batches and vectors
    // (store::embeddings), stable split assignments (store::splits).
    r#"
    CREATE TABLE embedding_batches (
        batch         INTEGER PRIMARY KEY,      -- N of embeddings_input_batch_<N>.jsonl
        pairs         INTEGER NOT NULL,
        first_pair_id INTEGER NOT NULL,
        last_pair_id  INTEGER NOT NULL,
        params        TEXT NOT NULL,            -- JSON: model, task_type, output_dimensionality
        created_at    TEXT NOT NULL
    );
    CREATE TABLE embedding_batch_pairs (
        pair_id INTEGER PRIMARY KEY REFERENCES pairs(id),   -- a pair is in at most one batch
        batch   INTEGER NOT NULL REFERENCES embedding_batches(batch)
    );
    CREATE INDEX embedding_batch_pairs_by_batch ON embedding_batch_pairs(batch, pair_id);

    CREATE TABLE embeddings (
        id          INTEGER PRIMARY KEY,
        model       TEXT NOT NULL,              -- e.g. gemini-embedding-001
        pair_id     INTEGER NOT NULL REFERENCES pairs(id),
        dimension   INTEGER NOT NULL,
        vector      BLOB NOT NULL,              -- dimension x f32, little-endian
        imported_at TEXT NOT NULL,
        UNIQUE (model, pair_id)
    );

    CREATE TABLE split_schemes (
        id     INTEGER PRIMARY KEY,
        params TEXT NOT NULL UNIQUE             -- JSON: seed, ratios, stratify, cluster methods
    );
    CREATE TABLE split_assignments (
        scheme  INTEGER NOT NULL REFERENCES split_schemes(id),
        pair_id INTEGER NOT NULL REFERENCES pairs(id),
        split   INTEGER NOT NULL,               -- 0 train, 1 val, 2 test; never changed once set
        PRIMARY KEY (scheme, pair_id)
    ) WITHOUT ROWID;
    "#,
    // The web faucet's ingest histogram (perpetual_ingest_seconds): how long each file
    // took, from the start of reading to its final status.
    r#"
    ALTER TABLE files ADD COLUMN seconds REAL;     -- NULL for files finished before it was recorded
    "#,
    // Unattended operation (issue 9): processes named by pid and start time, the
    // breaker's half-open state and crash backoff, the loop's heartbeat, the session a
    // file was integrated in, wrap commits to retry, the open-task index.
    r#"
    ALTER TABLE loop_runs ADD COLUMN pgid INTEGER;          -- the process group the command leads
    ALTER TABLE loop_runs ADD COLUMN proc_start INTEGER;    -- field 22 of /proc/<pid>/stat: with the pid, names the process exactly
    ALTER TABLE loop_runs ADD COLUMN transcript TEXT;       -- the transcript followed, placeholders replaced
    ALTER TABLE loop_runs ADD COLUMN remains INTEGER;       -- processes left behind when the command exited, which the loop ended
    ALTER TABLE loop_runs ADD COLUMN adopted_at TEXT;       -- when a later loop took over following it

    ALTER TABLE agent_state ADD COLUMN paused_by TEXT;      -- breaker, hand, command (the command cannot start)
    ALTER TABLE agent_state ADD COLUMN cooldown_secs INTEGER; -- the breaker's cooldown before its next trial session
    ALTER TABLE agent_state ADD COLUMN trial_at TEXT;       -- when the breaker half-opens (one trial session)
    ALTER TABLE agent_state ADD COLUMN failures_in_row INTEGER NOT NULL DEFAULT 0; -- sessions that ended with an error, in a row
    ALTER TABLE agent_state ADD COLUMN backoff_until TEXT;  -- no session before this (crash loops back off)

    CREATE TABLE loop_state (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        pid            INTEGER NOT NULL,                    -- the running (or last) perpetual run
        proc_start     INTEGER,                             -- its start time (field 22 of /proc/<pid>/stat)
        started_at     TEXT NOT NULL,
        heartbeat_at   TEXT NOT NULL,                       -- refreshed at every round and wake
        stopped_at     TEXT,                                -- set when it stopped cleanly
        rounds         INTEGER NOT NULL DEFAULT 0,
        idle_rounds    INTEGER NOT NULL DEFAULT 0,          -- rounds that started nothing
        idle_round_us  INTEGER,                             -- CPU time of the last idle round, microseconds
        disk_low       TEXT                                 -- why sessions are refused for disk space, while they are
    );

    ALTER TABLE files ADD COLUMN session_id TEXT;           -- the session whose run integrated it (backfill, ingest inside a session)
    CREATE INDEX files_by_session ON files(session_id);

    ALTER TABLE sessions ADD COLUMN commit_pending INTEGER NOT NULL DEFAULT 0; -- its wrap commit failed: the next wrap commits its outputs

    CREATE INDEX tasks_by_status ON tasks(status, kind, finished_at);
    -- The assigner's estimates read the latest completed tasks of a template, or of an
    -- agent and kind, without scanning the history.
    CREATE INDEX tasks_by_template ON tasks(template_id, status, finished_at);
    CREATE INDEX tasks_by_agent_kind ON tasks(agent, kind, status, finished_at);
    -- Every round asks for the active sessions of all agents.
    CREATE INDEX sessions_by_status ON sessions(status);
    "#,
    // The key tail as one row per commit (issue 14, store::pairs): tail_keys, a row per pair,
    // is merged into pair_keys and dropped; the watermark row says which pairs it covered.
    r#"
    CREATE TABLE tail_chunks (
        last_id INTEGER PRIMARY KEY,                 -- the largest pair id in entries; for the empty watermark row, the last merged id
        entries BLOB NOT NULL                        -- per pair: its id (8 bytes, little-endian), then its key (32 bytes), in id order
    );
    INSERT INTO pair_keys (key, pair_id) SELECT key, pair_id FROM tail_keys ORDER BY key;
    DROP TABLE tail_keys;
    INSERT INTO tail_chunks (last_id, entries) SELECT COALESCE(MAX(id), 0), x'' FROM pairs;
    "#,
    // A Bloom filter over pair_keys (issue 14, store::key_filter), written by every merge;
    // a database that has none gets it from pair_keys when its writer starts.
    r#"
    CREATE TABLE pair_key_filter (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        keys INTEGER NOT NULL,                       -- the merged keys it covers: used only while the writer counts as many
        bits BLOB NOT NULL                           -- 512-bit blocks of 8 little-endian u64 words, a power of two of them
    );
    "#,
    // Sorted runs of merged keys (issue 14, store::pairs): a merge of the tail writes it
    // as a run, a table of its own (pair_key_run_<run>: rows of entries in key order),
    // listed here; pair_keys, where merges inserted the tail key by key, takes no more
    // keys, and its keys join a run at the first fold.
    r#"
    CREATE TABLE pair_key_runs (
        run  INTEGER PRIMARY KEY,                    -- its table is pair_key_run_<run>; numbered upwards as merges write them
        keys INTEGER NOT NULL                        -- the entries in it
    );
    "#,
];

/// What [`MIGRATIONS`] leave in an empty database, as one script ([`dump`] of it).
pub const FRESH_SCHEMA: &str = include_str!("schema.sql");

/// The schema version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Runs every migration the database has not seen.
///
/// Foreign keys are off while migrations run (SQLite's procedure for rebuilding a
/// table other tables refer to: the pragma is a no-op inside a transaction, so it is
/// set around them), and each migration's transaction commits only when
/// `PRAGMA foreign_key_check` finds nothing.
pub fn migrate(conn: &Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    anyhow::ensure!(
        current <= latest(),
        "database schema version {current} is newer than this perpetual understands ({}); upgrade perpetual",
        latest()
    );
    if current == latest() {
        return Ok(());
    }
    let enforced: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    let result = run_from(conn, current);
    if enforced {
        conn.execute_batch("PRAGMA foreign_keys = ON")?;
    }
    result
}

fn run_from(conn: &Connection, current: i64) -> Result<()> {
    let mut done = current as usize;
    if done == 0 {
        // A fresh database takes [`FRESH_SCHEMA`] in one transaction.
        done = transaction_from(conn, 0, MIGRATIONS.len(), || {
            conn.execute_batch(FRESH_SCHEMA)
                .context("creating the schema failed")
        })?;
    }
    replay_from(conn, done)
}

/// Runs the migrations after version `from`, one transaction each, so that each
/// commits or fails on its own.
fn replay_from(conn: &Connection, from: usize) -> Result<()> {
    let mut done = from;
    while done < MIGRATIONS.len() {
        let upto = done + 1;
        done = transaction_from(conn, done, upto, || {
            conn.execute_batch(MIGRATIONS[done])
                .with_context(|| format!("migration {upto} failed"))
                .and_then(|()| {
                    foreign_keys_hold(conn).with_context(|| format!("migration {upto} failed"))
                })
        })?;
    }
    Ok(())
}

/// Runs `apply` and sets the schema version to `upto` in one transaction, which
/// commits only if both succeed; returns the version reached. IMMEDIATE: two processes
/// opening a fresh root must not both migrate, so when the version read inside the
/// transaction is no longer `from` (another process got there first), nothing is
/// applied and that version is returned.
fn transaction_from(
    conn: &Connection,
    from: usize,
    upto: usize,
    apply: impl FnOnce() -> Result<()>,
) -> Result<usize> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if now as usize != from {
        conn.execute_batch("COMMIT")?;
        return Ok(now as usize);
    }
    let applied =
        apply().and_then(|()| Ok(conn.execute_batch(&format!("PRAGMA user_version = {upto}"))?));
    match applied {
        Ok(()) => {
            conn.execute_batch("COMMIT")?;
            Ok(upto)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The schema and the rows of `conn`'s database as a script that makes them again in an
/// empty database: every table, then every index, then every trigger and view, each
/// with its SQL as SQLite stores it, in the order they were made; then each table's
/// rows in storage order, each value written by SQLite's `quote()`. [`FRESH_SCHEMA`]
/// is this of a database that ran every migration.
pub fn dump(conn: &Connection) -> Result<String> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut out = format!(
        "-- The schema of a fresh perpetual database, version {version}: what the {version} migrations in\n\
         -- src/store/migrations.rs leave. Generated, do not edit: after adding a migration, run\n\
         -- PERPETUAL_WRITE_SCHEMA=1 cargo test --lib the_fresh_schema\n"
    );
    let objects: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT type, name, sql FROM sqlite_schema
             WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, rowid",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (_, _, sql) in &objects {
        out.push_str(sql);
        out.push_str(";\n");
    }
    for (kind, table, _) in &objects {
        if kind != "table" {
            continue;
        }
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([table], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let values = columns
            .iter()
            .map(|c| format!("quote(\"{}\")", c.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let name = format!("\"{}\"", table.replace('"', "\"\""));
        let mut rows = conn.prepare(&format!("SELECT {values} FROM {name}"))?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            let values: String = row.get(0)?;
            out.push_str(&format!("INSERT INTO {name} VALUES ({values});\n"));
        }
    }
    Ok(out)
}

/// Fails when a row refers to a row that does not exist (what a rebuild could break).
fn foreign_keys_hold(conn: &Connection) -> Result<()> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
    let mut rows = stmt.query([])?;
    if let Some(r) = rows.next()? {
        let table: String = r.get(0)?;
        let rowid: Option<i64> = r.get(1)?;
        let parent: String = r.get(2)?;
        anyhow::bail!(
            "foreign key broken: {table} row {} refers to a missing {parent} row",
            rowid.map_or("?".to_string(), |r| r.to_string())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_to_latest_and_is_idempotent() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest());
    }

    /// The migration that drops tasks.kind's CHECK keeps every task's kind, and a kind
    /// the old CHECK did not list can then be stored. (Migration 3, shipped, is the one
    /// that added the CHECK: later migrations may land before this one, never before it.)
    #[test]
    fn task_kinds_survive_the_check_removal() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch("PRAGMA user_version = 3").unwrap();
        conn.execute_batch(
            "INSERT INTO tasks (id, agent, priority, position, status, created_at, kind, params)
             VALUES ('b', 'claude_code', 1, 1, 'pending', 't', 'backfill', '{}')",
        )
        .unwrap();
        assert!(
            conn.execute_batch(
                "INSERT INTO tasks (id, agent, priority, position, status, created_at, kind)
                 VALUES ('d', 'claude', 1, 2, 'pending', 't', 'duty')"
            )
            .is_err(),
            "version 3 refuses unknown kinds"
        );
        migrate(&conn).unwrap();
        let kind: String = conn
            .query_row("SELECT kind FROM tasks WHERE id = 'b'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kind, "backfill");
        conn.execute_batch(
            "INSERT INTO tasks (id, agent, priority, position, status, created_at, kind)
             VALUES ('d', 'claude', 1, 2, 'pending', 't', 'duty')",
        )
        .unwrap();
    }

    #[test]
    fn the_ledger_rebuild_keeps_every_row_and_every_reference() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for (i, sql) in MIGRATIONS.iter().enumerate().take(3) {
            conn.execute_batch(sql).unwrap();
            conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO files (id, agent, name, source_path, size, status, started_at)
                 VALUES (1, 'droid', 'a.json', '/i/a.json', 10, 'integrated', 't');
             INSERT INTO files (id, agent, name, source_path, size, status, started_at, duplicate_of)
                 VALUES (2, 'droid', 'b.json', '/i/b.json', 10, 'duplicate', 't', 1);
             INSERT INTO pairs (key, question, answer, agent, file_id, created_at)
                 VALUES (x'00', 'q', 'a', 'droid', 1, 't');",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM files", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
        let fk: bool = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(fk, "foreign keys are enforced again");
        conn.execute(
            "INSERT INTO files (agent, name, source_path, size, status, started_at)
             VALUES ('droid', 'p', '/i/p', 0, 'skipped', 't')",
            [],
        )
        .unwrap();
        // pairs still points at files, and the reference is enforced.
        let bad = conn.execute(
            "INSERT INTO pairs (key, question, answer, agent, file_id, created_at)
             VALUES (x'01', 'q', 'a', 'droid', 99, 't')",
            [],
        );
        assert!(bad.is_err(), "a pair of a missing file is refused");
    }

    #[test]
    fn the_key_tail_moves_into_the_index_and_leaves_its_watermark() {
        let conn = Connection::open_in_memory().unwrap();
        // Up to the 14th migration, the one that turns tail_keys into tail_chunks.
        let before = 13;
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(&format!("PRAGMA user_version = {before}"))
            .unwrap();
        conn.execute_batch(
            "INSERT INTO files (id, agent, name, source_path, size, status, started_at)
                 VALUES (1, 'droid', 'a.json', '/i/a.json', 10, 'integrated', 't');
             INSERT INTO pairs (id, key, question, answer, agent, file_id, created_at) VALUES
                 (1, zeroblob(32), 'q1', 'a', 'droid', 1, 't'),
                 (2, randomblob(32), 'q2', 'a', 'droid', 1, 't'),
                 (3, randomblob(32), 'q3', 'a', 'droid', 1, 't');
             INSERT INTO pair_keys (key, pair_id) SELECT key, id FROM pairs WHERE id = 1;
             INSERT INTO tail_keys (pair_id, key) SELECT id, key FROM pairs WHERE id > 1;",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let merged: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pair_keys JOIN pairs ON pairs.id = pair_id AND pairs.key = pair_keys.key",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(merged, 3, "every key in the index, with its pair");
        let chunks: Vec<(i64, Vec<u8>)> = conn
            .prepare("SELECT last_id, entries FROM tail_chunks")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(chunks, vec![(3, vec![])], "only the watermark");
        let gone: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'tail_keys'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(gone, 0);
    }

    /// A fresh database takes `schema.sql` instead of replaying the migrations: the two
    /// must leave the same schema and the same rows.
    #[test]
    fn the_fresh_schema_is_what_the_migrations_leave() {
        let replayed = Connection::open_in_memory().unwrap();
        replay_from(&replayed, 0).unwrap();
        let want = dump(&replayed).unwrap();
        if std::env::var_os("PERPETUAL_WRITE_SCHEMA").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/schema.sql");
            std::fs::write(path, &want).unwrap();
            eprintln!("wrote {path}: rebuild to take it in");
        }
        assert!(
            FRESH_SCHEMA == want,
            "src/store/schema.sql is not what the migrations leave: run \
             PERPETUAL_WRITE_SCHEMA=1 cargo test --lib the_fresh_schema, then rebuild"
        );
        let fresh = Connection::open_in_memory().unwrap();
        migrate(&fresh).unwrap();
        assert_eq!(dump(&fresh).unwrap(), want, "the script makes what it says");
        // A database made from the script migrates on as a replayed one does.
        assert_eq!(
            fresh
                .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            latest()
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA user_version = 999").unwrap();
        assert!(migrate(&conn).is_err());
    }
}
