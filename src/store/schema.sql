-- The schema of a fresh perpetual database, version 16: what the 16 migrations in
-- src/store/migrations.rs leave. Generated, do not edit: after adding a migration, run
-- PERPETUAL_WRITE_SCHEMA=1 cargo test --lib the_fresh_schema
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
CREATE TABLE pair_keys (
        key     BLOB PRIMARY KEY,
        pair_id INTEGER NOT NULL
    ) WITHOUT ROWID;
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
    , params TEXT, kind TEXT NOT NULL DEFAULT 'agent', template_id INTEGER
        REFERENCES task_templates(id) ON DELETE SET NULL, estimate_source TEXT);
CREATE TABLE task_deps (
        task_id    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        depends_on TEXT NOT NULL REFERENCES tasks(id),  -- no cascade: removing a task others need is refused
        PRIMARY KEY (task_id, depends_on)
    ) WITHOUT ROWID;
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
    , commit_pending INTEGER NOT NULL DEFAULT 0);
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
CREATE TABLE task_templates (
        id               INTEGER PRIMARY KEY,
        agent            TEXT NOT NULL,
        pattern          TEXT NOT NULL,             -- task id with {n}, e.g. droid_research_batch_{n}
        description      TEXT,                      -- may contain {n}
        priority         INTEGER NOT NULL,
        estimated_tokens INTEGER,
        total            INTEGER,
        next_n           INTEGER NOT NULL, kind TEXT NOT NULL DEFAULT 'agent', every TEXT, last_task TEXT, last_added_at TEXT,          -- the {n} of the next task made from it
        UNIQUE (agent, pattern)
    );
CREATE TABLE agent_state (
        agent        TEXT PRIMARY KEY,
        paused_at    TEXT,                          -- set by the circuit breaker (or `agent pause`)
        pause_reason TEXT,
        paused_task  TEXT,                          -- the task the breaker flagged for review
        run_floor    INTEGER NOT NULL DEFAULT 0     -- the breaker looks only at runs after this id (set at resume)
    , paused_by TEXT, cooldown_secs INTEGER, trial_at TEXT, failures_in_row INTEGER NOT NULL DEFAULT 0, backoff_until TEXT) WITHOUT ROWID;
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
    , pgid INTEGER, proc_start INTEGER, transcript TEXT, remains INTEGER, adopted_at TEXT);
CREATE TABLE assign_log (
        id      INTEGER PRIMARY KEY,
        at      TEXT NOT NULL,
        action  TEXT NOT NULL,                      -- ingest, retry, retry_limit, template
        agent   TEXT,
        task_id TEXT,
        detail  TEXT NOT NULL
    );
CREATE TABLE task_history (
        id      INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        at      TEXT NOT NULL,
        actor   TEXT NOT NULL,                      -- who or what: person (alice), session <id>, assigner, ...
        action  TEXT NOT NULL,                      -- edit, review_clear, retry, estimate, recur, ...
        detail  TEXT NOT NULL                       -- what changed, e.g. "priority 5 → 2"
    );
CREATE TABLE commands (
        id      INTEGER PRIMARY KEY,
        at      TEXT NOT NULL,
        actor   TEXT NOT NULL,                      -- as in task_history
        manual  INTEGER NOT NULL,                   -- 1: a person ran it by hand (an intervention)
        command TEXT NOT NULL                       -- e.g. "task edit build_x"
    );
CREATE TABLE loop_heartbeats (
        id         INTEGER PRIMARY KEY,
        pid        INTEGER NOT NULL,
        started_at TEXT NOT NULL,                   -- when that `perpetual run` process started
        last_seen  TEXT NOT NULL,                   -- its latest round
        UNIQUE (pid, started_at)
    );
CREATE TABLE agent_pauses (
        id     INTEGER PRIMARY KEY,
        agent  TEXT NOT NULL,
        at     TEXT NOT NULL,
        reason TEXT,
        task   TEXT
    );
CREATE TABLE daily_reports (
        date       TEXT PRIMARY KEY,                -- 2026-03-01 (UTC)
        written_at TEXT NOT NULL,
        complete   INTEGER NOT NULL                 -- 1: written after the day ended
    ) WITHOUT ROWID;
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
CREATE TABLE coverage_gaps (
        indicator TEXT PRIMARY KEY,             -- the plan's name
        category  TEXT NOT NULL,
        target    INTEGER NOT NULL,
        pairs     INTEGER NOT NULL,             -- pairs matched to it (name or alias)
        gap       INTEGER NOT NULL,             -- max(0, target - pairs)
        position  INTEGER NOT NULL,             -- its place in the plan
        run_id    INTEGER NOT NULL REFERENCES dataset_runs(id)
    ) WITHOUT ROWID;
CREATE TABLE "files" (
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
    , seconds REAL, session_id TEXT);
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
CREATE TABLE tail_chunks (
        last_id INTEGER PRIMARY KEY,                 -- the largest pair id in entries; for the empty watermark row, the last merged id
        entries BLOB NOT NULL                        -- per pair: its id (8 bytes, little-endian), then its key (32 bytes), in id order
    );
CREATE TABLE pair_key_filter (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        keys INTEGER NOT NULL,                       -- the merged keys it covers: used only while the writer counts as many
        bits BLOB NOT NULL                           -- 512-bit blocks of 8 little-endian u64 words, a power of two of them
    );
CREATE TABLE pair_key_runs (
        run  INTEGER PRIMARY KEY,                    -- its table is pair_key_run_<run>; numbered upwards as merges write them
        keys INTEGER NOT NULL                        -- the entries in it
    );
CREATE INDEX pairs_by_created ON pairs(created_at);
CREATE INDEX tasks_by_queue ON tasks(agent, status, priority, position);
CREATE INDEX task_deps_by_dependency ON task_deps(depends_on);
CREATE INDEX sessions_by_agent ON sessions(agent, status);
CREATE INDEX sessions_by_task ON sessions(task_id);
CREATE INDEX checkpoints_by_session ON checkpoints(session_id);
CREATE INDEX checkpoints_by_agent_time ON checkpoints(agent, at);
CREATE INDEX checkpoints_by_task ON checkpoints(task_id);
CREATE INDEX loop_runs_by_agent ON loop_runs(agent, id);
CREATE INDEX task_history_by_task ON task_history(task_id, id);
CREATE INDEX commands_by_time ON commands(manual, at);
CREATE INDEX agent_pauses_by_time ON agent_pauses(at);
CREATE INDEX near_dup_members_by_cluster ON near_dup_members(method, representative);
CREATE INDEX files_by_hash ON files(content_hash);
CREATE INDEX files_by_status ON files(status);
CREATE INDEX files_by_source ON files(source_path);
CREATE INDEX embedding_batch_pairs_by_batch ON embedding_batch_pairs(batch, pair_id);
CREATE INDEX files_by_session ON files(session_id);
CREATE INDEX tasks_by_status ON tasks(status, kind, finished_at);
CREATE INDEX tasks_by_template ON tasks(template_id, status, finished_at);
CREATE INDEX tasks_by_agent_kind ON tasks(agent, kind, status, finished_at);
CREATE INDEX sessions_by_status ON sessions(status);
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
INSERT INTO "tail_chunks" VALUES (0,X'');
