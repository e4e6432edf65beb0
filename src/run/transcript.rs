//! Claude Code session transcripts: how much of the context window a running session
//! uses, read from the file Claude Code writes as it works.
//!
//! **Where.** Claude Code keeps one transcript per session, JSON Lines, at
//! `~/.claude/projects/<project>/<session-id>.jsonl`; every hook receives its path as
//! `transcript_path` (hooks reference, "Hook Input":
//! <https://code.claude.com/docs/en/hooks>).
//!
//! **What.** Each line is one record with a `type`; an `assistant` record carries the
//! API response in `message`, whose `usage` is the Messages API usage object
//! (`input_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`,
//! `output_tokens`: <https://docs.anthropic.com/en/api/messages>). Anthropic publishes
//! no schema for the transcript lines themselves; the fields read here are the ones the
//! community references of the format agree on (for example the `assistant` entry and
//! its usage object in `docs/claude-cli-jsonl-format.md` of Huntehhh/claude-code-chat,
//! and `notes/transcript-format.md` of DRMacIver/claude-reliability). Everything else on
//! a line is ignored, so new fields do not break the reader.
//!
//! **The context in use** is what the last request sent: `input_tokens +
//! cache_creation_input_tokens + cache_read_input_tokens` of the last assistant record
//! that has a usage. Records of sub-agents (`isSidechain: true`) and the synthetic
//! replies Claude Code writes itself (model `<synthetic>`, all zeros) are skipped: they
//! do not describe the main conversation's context.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The usage of one assistant reply, and what it means for the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextUsage {
    /// Input tokens not read from or written to the cache.
    pub input_tokens: u64,
    /// Input tokens written to the cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the cache.
    pub cache_read_input_tokens: u64,
    /// Tokens of the reply.
    pub output_tokens: u64,
    /// The context in use: the three kinds of input tokens together.
    pub context_tokens: u64,
    /// The model that answered.
    pub model: Option<String>,
    /// The record's timestamp.
    pub timestamp: Option<String>,
    /// The record's line in the file (1-based).
    pub line: u64,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "isSidechain", default)]
    sidechain: bool,
    timestamp: Option<String>,
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    model: Option<String>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// The usage on one transcript line, when it is an assistant record of the main
/// conversation that has one. Lines that are not JSON are skipped (`None`).
pub fn usage_of_line(line: &str, number: u64) -> Option<ContextUsage> {
    // Most lines (tool results, file contents) are large and have no usage: skip them
    // without parsing.
    if !line.contains("\"usage\"") || !line.contains("assistant") {
        return None;
    }
    let r: Record = serde_json::from_str(line).ok()?;
    if r.kind.as_deref() != Some("assistant") || r.sidechain {
        return None;
    }
    let m = r.message?;
    if m.model.as_deref() == Some("<synthetic>") {
        return None;
    }
    let u = m.usage?;
    Some(ContextUsage {
        context_tokens: u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens,
        input_tokens: u.input_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        output_tokens: u.output_tokens,
        model: m.model,
        timestamp: r.timestamp,
        line: number,
    })
}

/// The context in use according to the whole transcript at `path` (None when no
/// assistant record has a usage yet).
pub fn read(path: &Path) -> Result<Option<ContextUsage>> {
    let mut reader = Reader::new(path);
    reader.poll()?;
    // A last line without its newline is complete when the file is read once.
    if !reader.carry.is_empty() {
        let text = String::from_utf8_lossy(&reader.carry).into_owned();
        if let Some(u) = usage_of_line(&text, reader.line + 1) {
            reader.last = Some(u);
        }
    }
    Ok(reader.last)
}

/// Follows a transcript as it grows: each [`Reader::poll`] reads only what was appended
/// since the last one (complete lines), so a long session costs nothing per poll.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    offset: u64,
    line: u64,
    carry: Vec<u8>,
    last: Option<ContextUsage>,
}

impl Reader {
    /// A reader of `path` (which may not exist yet).
    pub fn new(path: &Path) -> Reader {
        Reader {
            path: path.to_path_buf(),
            offset: 0,
            line: 0,
            carry: Vec::new(),
            last: None,
        }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts after what the file holds now: only replies appended later count.
    pub fn skip_to_end(&mut self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            self.offset = m.len();
        }
    }

    /// Reads what was appended and returns the latest usage (None while the file is
    /// missing or has none). A file that shrank was replaced: it is read again from the
    /// start.
    pub fn poll(&mut self) -> Result<Option<&ContextUsage>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self.last.as_ref()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()));
            }
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            *self = Reader::new(&self.path);
        }
        if len == self.offset {
            return Ok(self.last.as_ref());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.take(len - self.offset)
            .read_to_end(&mut fresh)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        self.offset += fresh.len() as u64;
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(&fresh);
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for raw in bytes[..complete].split_inclusive(|&b| b == b'\n') {
            self.line += 1;
            let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            if let Some(u) = usage_of_line(&text, self.line) {
                self.last = Some(u);
            }
        }
        self.carry = bytes[complete..].to_vec();
        Ok(self.last.as_ref())
    }
}

/// Transcripts some [`Follow`] of this process reads: two sessions sharing a folder
/// never read the same file.
static CLAIMED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Follows one session's transcript as the loop knows it: a file, or a folder in which
/// the session's transcript is the first `*.jsonl` to appear that was not there when the
/// session started and that no other session follows, for agents that name their
/// transcript themselves (with several sessions of one agent at once, name it with
/// `{uuid}` instead). A session never reads what another session wrote: files of a
/// folder present at its start are not its own, and a file that exists at its start is
/// read from its end.
#[derive(Debug)]
pub struct Follow {
    target: PathBuf,
    existing: std::collections::HashSet<PathBuf>,
    reader: Option<Reader>,
}

impl Follow {
    /// Follows `target` (a file or a folder, which may not exist yet) for a session
    /// starting now.
    pub fn new(target: &Path) -> Follow {
        let existing = match std::fs::read_dir(target) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => Default::default(),
        };
        let mut f = Follow {
            target: target.to_path_buf(),
            existing,
            reader: None,
        };
        if target.is_file() {
            // A file already there holds earlier replies, not this session's.
            let mut r = Reader::new(target);
            r.skip_to_end();
            f.reader = Some(r);
        }
        f
    }

    /// Follows `file` again from its start, for a session that was already running
    /// (a loop adopting what a dead one left).
    pub fn resume(target: &Path, file: Option<&Path>) -> Follow {
        let mut f = Follow::new(target);
        if let Some(file) = file {
            f.claim(file);
            f.reader = Some(Reader::new(file));
        }
        f
    }

    /// The transcript file followed so far, if one was found.
    pub fn file(&self) -> Option<&Path> {
        self.reader.as_ref().map(Reader::path)
    }

    /// The latest usage (see [`Reader::poll`]).
    pub fn poll(&mut self) -> Result<Option<&ContextUsage>> {
        if self.target.is_dir() {
            // Its own file, once found, stays its own.
            if self.reader.is_none()
                && let Some(file) = self.newest_new()?
            {
                self.claim(&file);
                self.reader = Some(Reader::new(&file));
            }
        } else if self.reader.is_none() {
            self.reader = Some(Reader::new(&self.target));
        }
        match self.reader.as_mut() {
            Some(r) => r.poll(),
            None => Ok(None),
        }
    }

    fn claim(&mut self, file: &Path) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = self.reader.as_ref().map(Reader::path) {
            claimed.retain(|c| c != old);
        }
        claimed.push(file.to_path_buf());
    }

    /// The most recently modified `*.jsonl` of the folder that was not there at the
    /// start and that no other session follows.
    fn newest_new(&self) -> Result<Option<PathBuf>> {
        let claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
        let dir = &self.target;
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "jsonl")
                || self.existing.contains(&path)
                || claimed.contains(&path)
            {
                continue;
            }
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if best.as_ref().is_none_or(|(t, _)| modified > *t) {
                best = Some((modified, path));
            }
        }
        Ok(best.map(|(_, p)| p))
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some(file) = self.reader.as_ref().map(Reader::path) {
            CLAIMED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| c != file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn assistant(input: u64, creation: u64, read: u64) -> String {
        format!(
            r#"{{"type":"assistant","isSidechain":false,"timestamp":"2026-01-01T00:00:00.000Z","message":{{"model":"claude-sonnet-4-5-20250929","role":"assistant","content":[{{"type":"text","text":"ok"}}],"usage":{{"input_tokens":{input},"cache_creation_input_tokens":{creation},"cache_read_input_tokens":{read},"output_tokens":7}}}}}}"#
        )
    }

    #[test]
    fn the_last_main_assistant_usage_counts() {
        let lines = [
            r#"{"type":"user","message":{"role":"user","content":"hi"}}"#.to_string(),
            assistant(10, 1000, 5000),
            // A sub-agent's reply and a synthetic one do not describe the main context.
            assistant(1, 1, 1).replace(r#""isSidechain":false"#, r#""isSidechain":true"#),
            assistant(0, 0, 0).replace("claude-sonnet-4-5-20250929", "<synthetic>"),
            "not json at all, \"usage\" assistant".to_string(),
        ];
        let u = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| usage_of_line(l, i as u64 + 1))
            .next_back()
            .unwrap();
        assert_eq!((u.context_tokens, u.output_tokens, u.line), (6010, 7, 2));
    }

    #[test]
    fn the_reader_follows_appends_and_waits_for_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut r = Reader::new(&path);
        assert!(r.poll().unwrap().is_none(), "missing file");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "{}", assistant(1, 2, 3)).unwrap();
        assert_eq!(r.poll().unwrap().unwrap().context_tokens, 6);
        let half = assistant(100, 0, 0);
        let (a, b) = half.split_at(40);
        write!(f, "{a}").unwrap();
        assert_eq!(r.poll().unwrap().unwrap().context_tokens, 6, "half a line");
        writeln!(f, "{b}").unwrap();
        let u = r.poll().unwrap().unwrap();
        assert_eq!((u.context_tokens, u.line), (100, 2));
        // Replaced by a shorter file: read again from the start.
        std::fs::write(&path, format!("{}\n", assistant(5, 0, 0))).unwrap();
        let u = r.poll().unwrap().unwrap();
        assert_eq!((u.context_tokens, u.line), (5, 1));
        assert_eq!(read(&path).unwrap().unwrap().context_tokens, 5);

        // A folder: only a transcript created after the start is the session's.
        let mut follow = Follow::new(dir.path());
        assert!(
            follow.poll().unwrap().is_none(),
            "transcripts already there are another session's"
        );
        let mine = dir.path().join("mine.jsonl");
        std::fs::write(&mine, format!("{}\n", assistant(7, 0, 0))).unwrap();
        assert_eq!(follow.poll().unwrap().unwrap().context_tokens, 7);
        // A second session in the same folder does not take the first one's file.
        let mut other = Follow::new(dir.path());
        std::fs::write(
            dir.path().join("late.jsonl"),
            format!("{}\n", assistant(9, 0, 0)),
        )
        .unwrap();
        assert_eq!(other.poll().unwrap().unwrap().context_tokens, 9);
        assert_eq!(follow.poll().unwrap().unwrap().context_tokens, 7);
        // A file that exists at the start is read from its end.
        let mut again = Follow::new(&mine);
        assert!(again.poll().unwrap().is_none());
    }
}
