//! `perpetual.toml`: everything an operator can set. Every field has a default, so a
//! missing file or a missing section means "the documented defaults"; an unknown key is
//! an error naming the file, because a typo that silently does nothing is worse.

use crate::budget::{AgentThresholds, Budget, Thresholds};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The agents a new root starts with, as named in the seeds.
pub const DEFAULT_AGENTS: [&str; 3] = ["claude_code", "droid", "zai"];

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Target number of distinct pairs; `stats` shows progress toward it.
    pub goal: u64,
    /// The data path.
    pub ingest: IngestConfig,
    /// The live watcher (`perpetual watch`).
    pub watch: WatchConfig,
    /// One entry per agent; each gets `inbox/<name>/` and `outbox/<name>/`.
    pub agents: BTreeMap<String, AgentConfig>,
    /// Budget levels, in percent of any budget.
    pub thresholds: Thresholds,
    /// What `session wrap` does besides the handoff.
    pub wrap: WrapConfig,
    /// The perpetual loop (`perpetual run`).
    pub run: RunConfig,
    /// The task assigner (`perpetual assign`, also run by the loop).
    pub assign: AssignConfig,
    /// The token monitor.
    pub monitor: MonitorConfig,
    /// Who hears about trouble while the loop runs unattended.
    pub notify: NotifyConfig,
    /// The web faucet (`perpetual serve`, `perpetual run --serve`).
    pub serve: ServeConfig,
    /// The quality report's thresholds (`perpetual quality`).
    pub quality: QualityConfig,
    /// Near-duplicate detection (`perpetual near-dups`).
    pub near_dups: NearDupsConfig,
    /// The embeddings round trip (`perpetual export embeddings`, `import embeddings`).
    pub embeddings: EmbeddingsConfig,
    /// Semantic near-duplicates from stored vectors (`perpetual near-dups --cosine`).
    pub cosine: CosineConfig,
}

/// What the embeddings requests ask for (`crate::dataset::embeddings`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// The model the batch job runs; vectors are stored under this name (`import
    /// embeddings --model` overrides it).
    pub model: String,
    /// `task_type` of each request (e.g. `RETRIEVAL_DOCUMENT`); empty: not sent.
    pub task_type: String,
    /// `output_dimensionality` of each request; 0: not sent (the model's default).
    pub output_dimensionality: usize,
    /// Pairs per request batch (`export embeddings --batch-size` overrides it).
    pub batch_size: u64,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        EmbeddingsConfig {
            model: "gemini-embedding-001".into(),
            task_type: "RETRIEVAL_DOCUMENT".into(),
            output_dimensionality: 768,
            batch_size: 10_000,
        }
    }
}

/// Semantic near-duplicate detection (`crate::dataset::cosine`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CosineConfig {
    /// Pairs whose vectors' cosine similarity is at least this are near-duplicates
    /// (`near-dups --cosine T` overrides it).
    pub threshold: f64,
    /// Up to this many vectors every pair is compared (exact); beyond, candidates come
    /// from an HNSW index and are then verified exactly. 50,000: the exact search (all
    /// cores) beats the one-thread index build up to 65,000 to 100,000 vectors
    /// (BENCHMARKS.md, "The deliverables").
    pub exact_max: usize,
    /// HNSW: candidates looked at while building.
    pub ef_construction: usize,
    /// HNSW: candidates looked at per search.
    pub ef_search: usize,
    /// HNSW: nearest neighbours taken per vector as candidates.
    pub neighbours: usize,
    /// A cluster whose members are all at least this similar to its representative (same
    /// indicator) is recommended `drop`.
    pub drop_similarity: f64,
}

impl Default for CosineConfig {
    fn default() -> Self {
        CosineConfig {
            threshold: 0.95,
            exact_max: 50_000,
            ef_construction: 100,
            ef_search: 100,
            neighbours: 10,
            drop_similarity: 0.98,
        }
    }
}

/// Settings of the web faucet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Where `perpetual serve` listens unless `--addr` says otherwise.
    pub addr: std::net::SocketAddr,
    /// The bearer token every request must carry; required to listen on an address
    /// other than loopback (`--token` and `PERPETUAL_TOKEN` override it).
    pub token: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 8700)),
            token: None,
        }
    }
}

/// Thresholds of the quality report (`crate::dataset::quality`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QualityConfig {
    /// `short_answer`: answers with fewer characters than this (after trimming).
    pub min_answer_chars: usize,
    /// `answer_repeats_question`: the answer starts with the whole question, or the
    /// Jaccard similarity of their word sets is at least this.
    pub repeat_similarity: f64,
    /// `boilerplate`: phrases (matched case-insensitively, whitespace collapsed) that mark
    /// a refusal or an "as an AI" answer.
    pub boilerplate: Vec<String>,
    /// `no_sources`: the pair's fields (`pairs.extra`) that name sources; a pair with
    /// none of them non-empty and no URL in its answer is flagged.
    pub source_fields: Vec<String>,
    /// Flags computed but not counted: a pair with only these is not flagged.
    pub ignore: Vec<String>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            min_answer_chars: 40,
            repeat_similarity: 0.8,
            boilerplate: [
                "as an ai",
                "as a language model",
                "as an assistant",
                "i cannot help with",
                "i can't help with",
                "i cannot provide",
                "i can't provide",
                "i am unable to",
                "i'm unable to",
                "i'm sorry, but",
                "i am sorry, but",
                "i do not have access to real-time",
                "i don't have access to real-time",
                "as of my last knowledge update",
                "my knowledge cutoff",
                "i'm not able to provide",
            ]
            .map(String::from)
            .to_vec(),
            source_fields: [
                "sources",
                "source",
                "references",
                "citations",
                "urls",
                "url",
                "links",
            ]
            .map(String::from)
            .to_vec(),
            ignore: Vec::new(),
        }
    }
}

/// Settings of near-duplicate detection (`crate::dataset::near_dups`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NearDupsConfig {
    /// Pairs whose exact Jaccard similarity is at least this are near-duplicates
    /// (`near-dups --threshold` overrides it).
    pub threshold: f64,
    /// Words per shingle.
    pub shingle_words: usize,
    /// LSH bands; with `rows`, the signature has bands × rows MinHash values.
    pub bands: usize,
    /// MinHash values per band.
    pub rows: usize,
    /// A cluster whose members are all at least this similar to its representative, on
    /// the same indicator, is recommended `drop` (keep the representative only).
    pub drop_similarity: f64,
}

impl Default for NearDupsConfig {
    fn default() -> Self {
        NearDupsConfig {
            threshold: 0.8,
            shingle_words: 3,
            bands: 16,
            rows: 8,
            drop_similarity: 0.95,
        }
    }
}

/// `[notify]`: a command the loop runs on events that need a person (an agent paused, a
/// task flagged for review, a session SIGKILLed, a wrap step failed, disk low, no new
/// pairs for `quiet_hours`), with the event as one JSON object on its stdin. Its
/// failures are logged, never fatal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Program and arguments, e.g. `["sh", "-c", "mail -s perpetual ops@example.com"]`.
    pub command: Option<Vec<String>>,
    /// Hours without a new pair after which the `quiet` event is sent (0: never).
    pub quiet_hours: u64,
    /// Seconds the command may run before it is killed.
    pub timeout_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            command: None,
            quiet_hours: 6,
            timeout_secs: 30,
        }
    }
}

/// Settings of `perpetual run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Milliseconds between looks at a running session's budget (its transcript and
    /// checkpoints).
    pub poll_ms: u64,
    /// Seconds an agent has to checkpoint, wrap and exit once asked to wrap, before
    /// SIGTERM.
    pub grace_secs: u64,
    /// Seconds between SIGTERM and SIGKILL.
    pub term_secs: u64,
    /// Seconds the loop waits when nothing is ready before it looks again (drops wake it
    /// sooner).
    pub idle_secs: u64,
    /// Sessions in a row without progress (or failing with the same error) after which
    /// the agent is paused and its task flagged for review.
    pub breaker_sessions: u64,
    /// Seconds from the breaker's pause to its trial session (half-open); a failed trial
    /// pauses the agent again with the cooldown doubled.
    pub breaker_cooldown_secs: u64,
    /// After a session that ended with an error, the agent's next session waits this
    /// many seconds, doubled for each further failure in a row (0: no backoff).
    pub backoff_secs: u64,
    /// The longest backoff wait.
    pub backoff_max_secs: u64,
    /// Below this much free space (MiB) on the root's filesystem, no session starts.
    pub min_free_disk_mb: u64,
    /// Prompts and command logs kept in `.perpetual/` (the newest of each).
    pub logs_kept: usize,
    /// Prompts and command logs older than this many days are deleted.
    pub logs_max_age_days: u64,
    /// Completed ingest tasks leave the task lists this many seconds after they
    /// finished (their files stay in the ledger: `perpetual files`).
    pub ingest_retention_secs: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            poll_ms: 1000,
            grace_secs: 120,
            term_secs: 10,
            idle_secs: 5,
            breaker_sessions: 3,
            breaker_cooldown_secs: 1800,
            backoff_secs: 5,
            backoff_max_secs: 600,
            min_free_disk_mb: 512,
            logs_kept: 500,
            logs_max_age_days: 14,
            ingest_retention_secs: 86_400,
        }
    }
}

/// Settings of the task assigner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AssignConfig {
    /// Ready tasks each agent with templates keeps (the seeds' "never idle" rule).
    pub min_ready: u64,
    /// Times a failed task is queued again (with a raised priority) before it is left
    /// failed and flagged for review.
    pub retry_limit: u64,
}

impl Default for AssignConfig {
    fn default() -> Self {
        AssignConfig {
            min_ready: 3,
            retry_limit: 3,
        }
    }
}

/// Settings of the token monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// The context window `monitor --transcript` measures a Claude Code transcript against.
    pub context_window: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            context_window: 200_000,
        }
    }
}

/// Settings of `perpetual session wrap`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WrapConfig {
    /// Database backups kept in `backups/`; older ones are deleted.
    pub backups_kept: usize,
    /// Commit the handoff, reports and outputs when the root is inside a git repository.
    pub git_commit: bool,
    /// Seconds between two backups made by wraps; a wrap that completes its task always
    /// makes one (0: a backup at every wrap).
    pub backup_min_interval_secs: u64,
}

impl Default for WrapConfig {
    fn default() -> Self {
        WrapConfig {
            backups_kept: 10,
            git_commit: true,
            backup_min_interval_secs: 600,
        }
    }
}

/// Settings of the ingestion engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Pairs per write transaction; each commit is a checkpoint.
    pub checkpoint_every: usize,
    /// Files larger than this many bytes are rejected without being read.
    pub max_file_bytes: u64,
}

/// Settings of the live watcher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// A file written in place (no rename, no close-after-write event) is read once its
    /// size and modification time have stayed still this many milliseconds. Also how long
    /// a file must have been still before a parse failure rejects it.
    pub settle_ms: u64,
    /// Seconds between full scans of every inbox, the backstop for lost events.
    pub reconcile_secs: u64,
    /// Poll the inbox instead of using filesystem events (NFS and other filesystems
    /// without them); `watch --poll` turns it on too.
    pub poll: bool,
    /// Milliseconds between polls when polling.
    pub poll_interval_ms: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            settle_ms: 300,
            reconcile_secs: 30,
            poll: false,
            poll_interval_ms: 1000,
        }
    }
}

/// Settings of one agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Free text shown in listings.
    pub description: Option<String>,
    /// What one session (and one day) of this agent may use.
    pub budget: Budget,
    /// The command that runs one session of the agent (`perpetual run`): program and
    /// arguments, with `{session}`, `{task}`, `{agent}`, `{root}`, `{prompt_file}`,
    /// `{transcript}`, `{uuid}` and `{project}` replaced (see `crate::run::runloop`).
    pub command: Option<Vec<String>>,
    /// Where the session's token usage can be read: a Claude Code transcript (JSON
    /// Lines), a path with the same placeholders; a folder means its newest `*.jsonl`.
    pub transcript: Option<String>,
    /// This agent's thresholds, where they differ from `[thresholds]`: for every kind of
    /// its budget, or for one (`[agents.droid.thresholds.slots]`).
    #[serde(skip_serializing_if = "AgentThresholds::is_empty")]
    pub thresholds: AgentThresholds,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            checkpoint_every: 500,
            max_file_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            goal: 30_000,
            ingest: IngestConfig::default(),
            watch: WatchConfig::default(),
            agents: DEFAULT_AGENTS
                .iter()
                .map(|a| (a.to_string(), default_agent(a)))
                .collect(),
            thresholds: Thresholds::default(),
            wrap: WrapConfig::default(),
            run: RunConfig::default(),
            assign: AssignConfig::default(),
            monitor: MonitorConfig::default(),
            notify: NotifyConfig::default(),
            serve: ServeConfig::default(),
            quality: QualityConfig::default(),
            near_dups: NearDupsConfig::default(),
            embeddings: EmbeddingsConfig::default(),
            cosine: CosineConfig::default(),
        }
    }
}

/// The seeds' agents as `DEFAULT_TOML` describes them: Claude Code works under a token
/// budget, droid under an API quota and batch-job slots, zai under an API quota and
/// an 8-hour session.
fn default_agent(name: &str) -> AgentConfig {
    let (description, budget) = match name {
        "claude_code" => (
            "Execution specialist: integrates sessions and archives",
            Budget::default(),
        ),
        "droid" => (
            "Research and generation: deep-research Q&A batches",
            Budget {
                tokens_per_session: 0,
                api_calls_per_day: 1000,
                slots: 10,
                wall_minutes_per_session: 0,
            },
        ),
        "zai" => (
            "Worker bee: quality analysis, formatting, exports",
            Budget {
                tokens_per_session: 0,
                api_calls_per_day: 5000,
                slots: 0,
                wall_minutes_per_session: 480,
            },
        ),
        _ => return AgentConfig::default(),
    };
    // The seeds' batch-job pipeline runs at most 90% of its slots (9 of 10 jobs).
    let thresholds = match name {
        "droid" => AgentThresholds {
            slots: crate::budget::ThresholdOverride {
                warning: None,
                wrap: Some(90.0),
                hard_stop: Some(95.0),
                critical: Some(100.0),
            },
            ..AgentThresholds::default()
        },
        _ => AgentThresholds::default(),
    };
    AgentConfig {
        description: Some(description.to_string()),
        budget,
        thresholds,
        ..AgentConfig::default()
    }
}

impl Config {
    /// Reads `path`, or returns the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Config::parse(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Parses the text of a configuration file and checks its values.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.ingest.checkpoint_every > 0,
            "ingest.checkpoint_every must be at least 1"
        );
        anyhow::ensure!(
            self.ingest.max_file_bytes > 0,
            "ingest.max_file_bytes must be at least 1"
        );
        anyhow::ensure!(
            self.watch.reconcile_secs > 0,
            "watch.reconcile_secs must be at least 1"
        );
        anyhow::ensure!(
            self.watch.poll_interval_ms >= 10,
            "watch.poll_interval_ms must be at least 10"
        );
        for (name, agent) in &self.agents {
            crate::root::check_agent_name(name)?;
            if let Some(c) = &agent.command {
                anyhow::ensure!(
                    c.first().is_some_and(|p| !p.trim().is_empty()),
                    "agents.{name}.command must name a program: command = [\"program\", \"arg\", ...]"
                );
            }
        }
        let r = &self.run;
        anyhow::ensure!(r.poll_ms >= 10, "run.poll_ms must be at least 10");
        anyhow::ensure!(r.idle_secs >= 1, "run.idle_secs must be at least 1");
        anyhow::ensure!(
            r.breaker_sessions >= 1,
            "run.breaker_sessions must be at least 1"
        );
        anyhow::ensure!(
            r.breaker_cooldown_secs >= 1,
            "run.breaker_cooldown_secs must be at least 1"
        );
        anyhow::ensure!(r.logs_kept >= 1, "run.logs_kept must be at least 1");
        if let Some(c) = &self.notify.command {
            anyhow::ensure!(
                c.first().is_some_and(|p| !p.trim().is_empty()),
                "notify.command must name a program: command = [\"program\", \"arg\", ...]"
            );
        }
        anyhow::ensure!(
            self.notify.timeout_secs >= 1,
            "notify.timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.monitor.context_window > 0,
            "monitor.context_window must be at least 1"
        );
        self.thresholds.validate()?;
        for name in self.agents.keys() {
            self.thresholds_of(name)
                .validate()
                .with_context(|| format!("[agents.{name}.thresholds]"))?;
        }
        anyhow::ensure!(
            self.wrap.backups_kept > 0,
            "wrap.backups_kept must be at least 1"
        );
        anyhow::ensure!(
            self.serve
                .token
                .as_ref()
                .is_none_or(|t| !t.trim().is_empty()),
            "serve.token must not be empty (remove the key for no token)"
        );
        let q = &self.quality;
        anyhow::ensure!(
            (0.0..=1.0).contains(&q.repeat_similarity),
            "quality.repeat_similarity must be between 0 and 1"
        );
        let n = &self.near_dups;
        anyhow::ensure!(
            n.threshold > 0.0 && n.threshold <= 1.0,
            "near_dups.threshold must be above 0 and at most 1"
        );
        anyhow::ensure!(
            (1..=16).contains(&n.shingle_words),
            "near_dups.shingle_words must be between 1 and 16"
        );
        anyhow::ensure!(
            n.bands >= 1 && n.rows >= 1 && n.bands * n.rows <= 1024,
            "near_dups.bands and near_dups.rows must be at least 1, with bands × rows at most 1024"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&n.drop_similarity),
            "near_dups.drop_similarity must be between 0 and 1"
        );
        let e = &self.embeddings;
        anyhow::ensure!(
            !e.model.trim().is_empty(),
            "embeddings.model must name a model"
        );
        anyhow::ensure!(
            e.batch_size >= 1,
            "embeddings.batch_size must be at least 1"
        );
        let c = &self.cosine;
        anyhow::ensure!(
            c.threshold > 0.0 && c.threshold <= 1.0,
            "cosine.threshold must be above 0 and at most 1"
        );
        anyhow::ensure!(
            c.ef_construction >= 1 && c.ef_search >= 1 && c.neighbours >= 1,
            "cosine.ef_construction, cosine.ef_search and cosine.neighbours must be at least 1"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&c.drop_similarity),
            "cosine.drop_similarity must be between 0 and 1"
        );
        Ok(())
    }

    /// The thresholds `agent` works under: `[thresholds]` with its
    /// `[agents.<name>.thresholds]` applied (`budget::Thresholds::with`).
    pub fn thresholds_of(&self, agent: &str) -> Thresholds {
        match self.agents.get(agent) {
            Some(a) => self.thresholds.with(&a.thresholds),
            None => self.thresholds,
        }
    }

    /// The budget of `agent`: its `[agents.<name>.budget]`, or the default budget
    /// (200,000 tokens per session, no other limit) for an agent not configured.
    pub fn budget_of(&self, agent: &str) -> Budget {
        self.agents.get(agent).map(|a| a.budget).unwrap_or_default()
    }
}

/// The file `perpetual init` writes: the defaults, each explained.
pub const DEFAULT_TOML: &str = r#"# perpetual.toml: configuration of one perpetual root.
# Every key is optional; removing one restores its default.

# Distinct pairs wanted; `perpetual stats` shows progress toward it.
goal = 30000

[ingest]
# Pairs per write transaction. Each commit is a checkpoint: a crash loses at most
# the uncommitted batch, and a restart resumes after the last checkpoint.
checkpoint_every = 500
# Files larger than this are rejected unread (64 MiB).
max_file_bytes = 67108864

[watch]
# `perpetual watch` reads a file renamed into place at once (the convention: write
# `.name.tmp`, then rename), and one written in place as soon as the platform reports
# close-after-write (Linux). Otherwise a file is read once its size and modification
# time have stayed still this long; a file that fails to parse is rejected only after
# it has been still this long too, so a slow writer is never rejected as truncated.
settle_ms = 300
# Seconds between full scans of every inbox: the backstop for lost events.
reconcile_secs = 30
# Poll instead of filesystem events (NFS, some network and FUSE filesystems);
# `perpetual watch --poll` does the same.
poll = false
# Milliseconds between polls when polling.
poll_interval_ms = 1000

# Budget levels, in percent of any budget (tokens, API calls, slots, wall time).
# `perpetual monitor` and every session checkpoint report the level reached.
# One kind may have its own levels, [thresholds.<kind>] with kind = tokens, api_calls,
# slots or wall_time (unset levels are the ones below), and one agent too,
# [agents.<name>.thresholds] and [agents.<name>.thresholds.<kind>]. A level is looked up
# in the agent's kind, the agent's, the kind's, then here. Levels must still rise.
[thresholds]
warning = 75.0    # look for a wrap point
wrap = 85.0       # wrap now: finish the current unit, then `perpetual session wrap`
hard_stop = 90.0  # wrap immediately; a task left unfinished is flagged "needs review"
critical = 95.0   # emergency wrap; the state may be incomplete

[wrap]
# Consistent database backups (SQLite online backup) kept in backups/; older ones are deleted.
backups_kept = 10
# Commit the handoff, task reports and the agent's outbox when the root is inside a
# git repository (the database is never committed). Commits of wraps running at once
# are serialised; one that fails is retried with the next wrap.
git_commit = true
# Seconds between two backups made by wraps (a wrap that completes its task always
# makes one); 0 makes one at every wrap.
backup_min_interval_secs = 600

[run]
# `perpetual run`, the perpetual loop. It looks at a running session's budget (its
# transcript and checkpoints) every poll_ms. At the wrap threshold it asks the agent to
# wrap (the file .perpetual/wrap_<session> appears; the Claude Code hooks say so too),
# gives it grace_secs to checkpoint, wrap and exit, then sends SIGTERM, and SIGKILL
# term_secs later.
poll_ms = 1000
grace_secs = 120
term_secs = 10
# With nothing ready, the loop waits for a drop or this many seconds, then looks again.
idle_secs = 5
# After this many sessions in a row without progress (or failing with the same error),
# the agent is paused and its task flagged "needs review". After breaker_cooldown_secs
# it gets one trial session: success closes the breaker, failure pauses it again with
# the cooldown doubled. `perpetual agent resume` lets it run at any time.
breaker_sessions = 3
breaker_cooldown_secs = 1800
# A session that ended with an error delays the agent's next one by backoff_secs,
# doubled for each further failure in a row, at most backoff_max_secs.
backoff_secs = 5
backoff_max_secs = 600
# Below this much free disk space (MiB) no session starts; `status` says so.
min_free_disk_mb = 512
# .perpetual/prompts/ and .perpetual/logs/: the newest logs_kept of each are kept, none
# older than logs_max_age_days.
logs_kept = 500
logs_max_age_days = 14
# Completed ingest tasks (one per round with drops) leave `task list --all` and
# `task stats` this long after they finished; their files stay in `perpetual files`.
ingest_retention_secs = 86400

[assign]
# The task assigner (`perpetual assign`, also run by the loop). Agents whose plan has
# [[template]]s keep at least min_ready ready tasks (the seeds' "never idle" rule).
min_ready = 3
# A failed task is queued again, one priority higher, at most this many times.
retry_limit = 3

[monitor]
# `perpetual monitor --transcript`: the context window a Claude Code transcript is
# measured against (input + cache creation + cache read tokens of the last reply).
context_window = 200000

[notify]
# A command `perpetual run` starts on events that need a person, with the event as one
# JSON object on stdin ({"event": ..., "at": ..., "agent": ..., "task": ..., "reason": ...}):
# agent_paused, task_needs_review, session_killed, wrap_step_failed, disk_low, quiet.
# Its failures are logged, never fatal. For example:
#   command = ["sh", "-c", "mail -s 'perpetual' ops@example.com"]
# Hours without a new pair before the `quiet` event (0: never).
quiet_hours = 6
# Seconds the command may run before it is killed.
timeout_secs = 30

[serve]
# `perpetual serve` (and `perpetual run --serve ADDR`): the web faucet, read-only.
# It listens on loopback unless told otherwise; any other address needs a token,
# which every request must then carry (`Authorization: Bearer <token>`).
addr = "127.0.0.1:8700"
# token = "a long random string"

[quality]
# `perpetual quality`: the flags' thresholds (README, "The dataset workbench").
# short_answer: answers shorter than this many characters (trimmed).
min_answer_chars = 40
# answer_repeats_question: the answer starts with the whole question, or their word
# sets are at least this similar (Jaccard).
repeat_similarity = 0.8
# boilerplate: refusals and "as an AI" phrases, matched case-insensitively.
boilerplate = [
    "as an ai", "as a language model", "as an assistant", "i cannot help with",
    "i can't help with", "i cannot provide", "i can't provide", "i am unable to",
    "i'm unable to", "i'm sorry, but", "i am sorry, but",
    "i do not have access to real-time", "i don't have access to real-time",
    "as of my last knowledge update", "my knowledge cutoff", "i'm not able to provide",
]
# no_sources: the pair's own fields that name sources; a pair with none of them and no
# URL in its answer is flagged.
source_fields = ["sources", "source", "references", "citations", "urls", "url", "links"]
# Flags still counted in the report but that do not make a pair "flagged" (left out
# of exports), e.g. ignore = ["no_sources"].
ignore = []

[near_dups]
# `perpetual near-dups`: pairs whose exact Jaccard similarity (word shingles of the
# normalised, lower-cased question and answer) is at least threshold are clustered.
threshold = 0.8
shingle_words = 3
# MinHash signature of bands × rows values; LSH compares pairs that agree on a band.
bands = 16
rows = 8
# A cluster whose members are all this similar to its representative (same indicator)
# is recommended "drop"; see the README for the rule.
drop_similarity = 0.95

[embeddings]
# `perpetual export embeddings`: request batches for the Gemini batch embeddings API
# (README, "Exports, embeddings, splits and charts"). The model is also the name the
# imported vectors are stored under.
model = "gemini-embedding-001"
# task_type and output_dimensionality of each request ("" and 0: not sent).
task_type = "RETRIEVAL_DOCUMENT"
output_dimensionality = 768
batch_size = 10000

[cosine]
# `perpetual near-dups --cosine`: pairs whose stored vectors have a cosine similarity of
# at least threshold are semantic near-duplicates.
threshold = 0.95
# Up to exact_max vectors, every pair is compared (in parallel); beyond, an HNSW index
# proposes `neighbours` candidates per vector (ef_construction / ef_search: its search
# breadth), and each is verified exactly. The index is built on one thread, so exact
# search is the faster one up to 65,000 to 100,000 vectors (BENCHMARKS.md).
exact_max = 50000
ef_construction = 100
ef_search = 100
neighbours = 10
# A cluster whose members are all this similar to its representative (same indicator)
# is recommended "drop".
drop_similarity = 0.98

# One table per agent. Each gets inbox/<name>/ (drops) and outbox/<name>/ (deliverables).
# A folder created under inbox/ is an agent too, even when it is not listed here; it
# gets the default budget (200,000 tokens per session, no other limit).
#
# [agents.<name>.budget]: what one session (and one day) of the agent may use; 0 = no limit.
#   tokens_per_session        tokens one session may use (`session start --budget` overrides)
#   api_calls_per_day         API calls per UTC day over all its sessions; resets at 00:00 UTC
#   slots                     sessions it may run at once (batch-job slots)
#   wall_minutes_per_session  minutes one session may run
#
# command: what `perpetual run` starts for one session of the agent, as program and
# arguments. The prompt (task, progress, last handoff, how to report) comes on stdin
# and in {prompt_file}; PERPETUAL_ROOT, PERPETUAL_SESSION, PERPETUAL_TASK and
# PERPETUAL_AGENT are set. Placeholders: {session} {task} {agent} {root} {prompt_file}
# {transcript} {uuid} (a fresh UUID per session) {project} (the root as Claude Code
# names its folder under ~/.claude/projects/). An agent without a command only gets
# the loop's built-in tasks (ingest, backfill); its own tasks wait for a person.
# transcript: where the session's token usage can be read while it runs: a Claude Code
# transcript (JSON Lines), same placeholders, `~` for the home folder; a folder means
# its newest *.jsonl. For example:
#   command = ["claude", "-p", "--session-id", "{uuid}", "--permission-mode", "acceptEdits"]
#   transcript = "~/.claude/projects/{project}/{uuid}.jsonl"
[agents.claude_code]
description = "Execution specialist: integrates sessions and archives"

[agents.claude_code.budget]
tokens_per_session = 200000
api_calls_per_day = 0
slots = 0
wall_minutes_per_session = 0

[agents.droid]
description = "Research and generation: deep-research Q&A batches"

[agents.droid.budget]
tokens_per_session = 0
api_calls_per_day = 1000    # OpenRouter quota
slots = 10                  # Gemini batch jobs at once
wall_minutes_per_session = 0

# The seeds' batch-job pipeline wraps at 90% of its slots (9 of 10 jobs running); its
# API quota wraps at the shared 85%.
[agents.droid.thresholds.slots]
wrap = 90.0
hard_stop = 95.0
critical = 100.0

[agents.zai]
description = "Worker bee: quality analysis, formatting, exports"

[agents.zai.budget]
tokens_per_session = 0
api_calls_per_day = 5000    # Z.AI quota
slots = 0
wall_minutes_per_session = 480  # 8-hour sessions
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_matches_defaults() {
        let parsed = Config::parse(DEFAULT_TOML).unwrap();
        let defaults = Config::default();
        assert_eq!(parsed, defaults);
    }

    #[test]
    fn budgets_and_thresholds() {
        let c = Config::parse(
            "[thresholds]\nwarning = 50\nwrap = 60\nhard_stop = 70\ncritical = 80\n\
             [agents.droid.budget]\napi_calls_per_day = 10\n",
        )
        .unwrap();
        assert_eq!(c.thresholds.wrap, 60.0);
        assert_eq!(c.budget_of("droid").api_calls_per_day, 10);
        // Unset keys of a budget table take the default budget's values.
        assert_eq!(c.budget_of("droid").tokens_per_session, 200_000);
        assert_eq!(c.budget_of("nobody"), Budget::default());
        assert!(Config::parse("[thresholds]\nwrap = 99\n").is_err());
        assert!(Config::parse("[wrap]\nbackups_kept = 0\n").is_err());
        assert!(Config::parse("[agents.droid.budget]\ntokens = 5\n").is_err());
        assert!(Config::parse("[agents.x]\ncommand = []\n").is_err());
        let c = Config::parse("[agents.x]\ncommand = [\"sh\", \"a.sh\"]\n").unwrap();
        assert_eq!(c.agents["x"].command.as_deref().unwrap(), ["sh", "a.sh"]);
    }

    #[test]
    fn thresholds_per_agent_and_kind() {
        let c = Config::default();
        let droid = c.thresholds_of("droid");
        assert_eq!(droid.of(crate::budget::Kind::Slots).wrap, 90.0);
        assert_eq!(droid.of(crate::budget::Kind::ApiCalls).wrap, 85.0);
        assert_eq!(c.thresholds_of("nobody"), Thresholds::default());
        let err = Config::parse("[agents.zai.thresholds.api_calls]\nwrap = 92\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("[agents.zai.thresholds]"),
            "{err:#}"
        );
        assert!(Config::parse("[agents.zai.thresholds]\nslot = { wrap = 90 }\n").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("[ingest]\ncheckpoint_evry = 5\n").unwrap_err();
        assert!(format!("{err:#}").contains("checkpoint_evry"), "{err:#}");
    }

    #[test]
    fn zero_checkpoint_is_refused() {
        assert!(Config::parse("[ingest]\ncheckpoint_every = 0\n").is_err());
    }
}
