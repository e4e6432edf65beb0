//! `perpetual.toml`: everything an operator can set. Every field has a default, so a
//! missing file or a missing section means "the documented defaults"; an unknown key is
//! an error naming the file, because a typo that silently does nothing is worse.

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
                .map(|a| (a.to_string(), AgentConfig::default()))
                .collect(),
        }
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
        for name in self.agents.keys() {
            crate::root::check_agent_name(name)?;
        }
        Ok(())
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

# One table per agent. Each gets inbox/<name>/ (drops) and outbox/<name>/ (deliverables).
# A folder created under inbox/ is an agent too, even when it is not listed here.
[agents.claude_code]
description = "Execution specialist: integrates sessions and archives"

[agents.droid]
description = "Research and generation: deep-research Q&A batches"

[agents.zai]
description = "Worker bee: quality analysis, formatting, exports"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_matches_defaults() {
        let parsed = Config::parse(DEFAULT_TOML).unwrap();
        let defaults = Config::default();
        assert_eq!(parsed.goal, defaults.goal);
        assert_eq!(parsed.ingest, defaults.ingest);
        assert_eq!(parsed.watch, defaults.watch);
        assert_eq!(
            parsed.agents.keys().collect::<Vec<_>>(),
            defaults.agents.keys().collect::<Vec<_>>()
        );
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
