//! Claude Code hooks: Claude reports to perpetual without anyone typing token counts.
//!
//! `perpetual hooks install` adds to the project's `.claude/settings.json` (merging with
//! what is there) one command hook, `perpetual hooks handle`, for four events; Claude
//! Code runs it with the event as JSON on stdin and reads the answer from stdout (hooks
//! reference: <https://code.claude.com/docs/en/hooks>, "Hook Input" and "Hook Output"):
//!
//! | event | what perpetual does | answer |
//! | --- | --- | --- |
//! | `SessionStart` | reads the session's brief and last handoff | `hookSpecificOutput.additionalContext`: the brief (`crate::run::prompt`) |
//! | `PostToolUse` | reads the context in use from `transcript_path` and records it as the session's tokens | at or past the wrap threshold, or while the loop asks for a wrap: `additionalContext` telling Claude to checkpoint and wrap; nothing below |
//! | `Stop` | the same reading | at or past the wrap threshold, while the session is not wrapped: `{"decision": "block", "reason": ...}`; nothing when `stop_hook_active` is true (Claude already continues because of a Stop hook: blocking again would loop), below the threshold, or once the session is wrapped |
//! | `PreCompact` | records a checkpoint with the tokens and writes an interim handoff (`session_handoffs/handoff_<session>_interim.md`) | nothing |
//!
//! The session is `PERPETUAL_SESSION` (set by `perpetual run`), else `PERPETUAL_AGENT`'s
//! only active session, else the only active session; with none (or several to choose
//! from), every hook answers nothing and Claude carries on as without perpetual.

use crate::config::Config;
use crate::root::Root;
use crate::run::prompt;
use crate::store::sessions::SessionRow;
use crate::work::session::{self, CheckpointInput};
use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The fields of a hook input perpetual reads (the common fields and the event's own;
/// the rest is ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HookInput {
    /// `SessionStart`, `PostToolUse`, `Stop`, `PreCompact`, ...
    pub hook_event_name: String,
    /// Claude Code's own session id (not perpetual's).
    #[serde(default)]
    pub session_id: Option<String>,
    /// The conversation's transcript (JSON Lines).
    #[serde(default)]
    pub transcript_path: Option<String>,
    /// `Stop`: Claude already continues because a Stop hook blocked it.
    #[serde(default)]
    pub stop_hook_active: bool,
    /// `SessionStart`: startup, resume, clear or compact.
    #[serde(default)]
    pub source: Option<String>,
    /// `PreCompact`: manual or auto.
    #[serde(default)]
    pub trigger: Option<String>,
}

/// The events `hooks install` registers, with their matcher (None: the event has none,
/// or every occurrence is wanted).
pub const EVENTS: [(&str, Option<&str>); 4] = [
    ("SessionStart", None),
    ("PostToolUse", Some("*")),
    ("Stop", None),
    ("PreCompact", None),
];

/// The answer to one hook input: the JSON to print on stdout, or None (print nothing,
/// exit 0: Claude carries on).
pub fn answer(
    conn: &mut Connection,
    root: &Root,
    config: &Config,
    input: &HookInput,
) -> Result<Option<Value>> {
    if input.hook_event_name == "Stop" && input.stop_hook_active {
        // Claude is already continuing because a Stop hook blocked: let it stop.
        return Ok(None);
    }
    let Some(s) = current_session(conn)? else {
        return Ok(None);
    };
    match input.hook_event_name.as_str() {
        "SessionStart" => {
            let brief = prompt::brief_of(conn, config, &s.id)?;
            let text = prompt::render(root, config, &brief);
            Ok(Some(json!({
                "hookSpecificOutput": {
                    "hookEventName": "SessionStart",
                    "additionalContext": text,
                }
            })))
        }
        "PostToolUse" => {
            let s = record_tokens(conn, &s, input)?;
            Ok(wrap_message(conn, root, config, &s)?.map(|text| {
                json!({
                    "hookSpecificOutput": {
                        "hookEventName": "PostToolUse",
                        "additionalContext": text,
                    }
                })
            }))
        }
        "Stop" => {
            let s = record_tokens(conn, &s, input)?;
            Ok(wrap_message(conn, root, config, &s)?
                .map(|reason| json!({"decision": "block", "reason": reason})))
        }
        "PreCompact" => {
            let tokens = transcript_tokens(input)?;
            session::checkpoint(
                conn,
                config,
                &s.id,
                &CheckpointInput {
                    tokens,
                    note: Some(format!(
                        "before a compaction ({})",
                        input.trigger.as_deref().unwrap_or("auto")
                    )),
                    ..CheckpointInput::default()
                },
            )?;
            session::interim_handoff(conn, root, config, &s.id)?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// The active session the hooks act on, if any.
fn current_session(conn: &Connection) -> Result<Option<SessionRow>> {
    let agent = std::env::var("PERPETUAL_AGENT")
        .ok()
        .filter(|a| !a.trim().is_empty());
    let from_env = std::env::var(session::SESSION_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty());
    if let Some(id) = from_env {
        // A session named by the loop that is gone or wrapped: nothing to report to.
        return Ok(crate::store::sessions::get(conn, id.trim())?.filter(SessionRow::is_active));
    }
    // Else the agent's, or the root's, only active session; with several, the hook cannot
    // tell which Claude is (the loop always sets PERPETUAL_SESSION).
    let mut active = crate::store::sessions::active(conn, agent.as_deref())?;
    Ok((active.len() == 1).then(|| active.remove(0)))
}

/// The context in use according to the input's transcript, when it names one that has
/// a reply with a usage.
fn transcript_tokens(input: &HookInput) -> Result<Option<u64>> {
    let Some(path) = input.transcript_path.as_deref().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let path = expand_home(path);
    if !path.is_file() {
        return Ok(None);
    }
    Ok(crate::run::transcript::read(&path)?.map(|u| u.context_tokens))
}

/// Records the transcript's context as the session's tokens; returns the session as it
/// is now.
fn record_tokens(conn: &Connection, s: &SessionRow, input: &HookInput) -> Result<SessionRow> {
    if let Some(t) = transcript_tokens(input)? {
        crate::store::sessions::set_tokens(conn, &s.id, t)?;
    }
    session::get(conn, &s.id)
}

/// What to tell Claude when the session must wrap: at or past the wrap threshold, or
/// while `perpetual run` asks for a wrap (its flag file exists).
fn wrap_message(
    conn: &Connection,
    root: &Root,
    config: &Config,
    s: &SessionRow,
) -> Result<Option<String>> {
    let (usage, level) = session::level(conn, config, s)?;
    if let Ok(text) = std::fs::read_to_string(root.wrap_flag(&s.id))
        && !text.trim().is_empty()
    {
        // The loop's request says why (the budget, or the loop stopping).
        Ok(Some(text.trim().to_string()))
    } else if level.must_wrap() {
        Ok(Some(prompt::wrap_request(&s.id, &usage)))
    } else {
        Ok(None)
    }
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// What `hooks install` did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The settings file.
    pub settings: PathBuf,
    /// The hook command.
    pub command: String,
    /// Events the command was added to.
    pub added: Vec<String>,
    /// Events that already had it.
    pub kept: Vec<String>,
}

/// Adds the hook `command` to [`EVENTS`] in the settings file at `path` (created when
/// missing), keeping every other setting and hook; an event that already runs the same
/// command is left alone, so installing twice changes nothing.
pub fn install(path: &Path, command: &str) -> Result<InstallReport> {
    let mut settings: Value = match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => json!({}),
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON; fix it first", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let root = settings
        .as_object_mut()
        .with_context(|| format!("{} must hold a JSON object", path.display()))?;
    let hooks = root
        .entry("hooks")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .with_context(|| format!("\"hooks\" in {} must be an object", path.display()))?;
    let mut report = InstallReport {
        settings: path.to_path_buf(),
        command: command.to_string(),
        added: Vec::new(),
        kept: Vec::new(),
    };
    for (event, matcher) in EVENTS {
        let groups = hooks
            .entry(event)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .with_context(|| format!("hooks.{event} in {} must be an array", path.display()))?;
        let present = groups.iter().any(|g| {
            g["hooks"]
                .as_array()
                .is_some_and(|hs| hs.iter().any(|h| h["command"] == command))
        });
        if present {
            report.kept.push(event.to_string());
            continue;
        }
        let mut group = serde_json::Map::new();
        if let Some(m) = matcher {
            group.insert("matcher".into(), json!(m));
        }
        group.insert(
            "hooks".into(),
            json!([{"type": "command", "command": command}]),
        );
        groups.push(Value::Object(group));
        report.added.push(event.to_string());
    }
    let mut text = serde_json::to_string_pretty(&settings)?;
    text.push('\n');
    crate::root::write_document(path, &text)?;
    Ok(report)
}

/// The hook command for a project: `perpetual hooks handle`, with `--root` when the
/// project is not the root (`bin` names the perpetual program).
pub fn command_for(bin: &str, project: &Path, root: &Root) -> String {
    let same = project.canonicalize().is_ok_and(|p| p == root.dir());
    if same {
        format!("{} hooks handle", shell_word(bin))
    } else {
        format!(
            "{} --root {} hooks handle",
            shell_word(bin),
            shell_word(&root.dir().display().to_string())
        )
    }
}

/// `word` as one shell word (quoted when it needs to be).
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_merges_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".claude/settings.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"permissions": {"allow": ["Bash(ls:*)"]},
                "hooks": {"PostToolUse": [{"matcher": "Write", "hooks": [{"type": "command", "command": "fmt.sh"}]}]}}"#,
        )
        .unwrap();
        let r = install(&path, "perpetual hooks handle").unwrap();
        assert_eq!(r.added.len(), 4);
        let again = install(&path, "perpetual hooks handle").unwrap();
        assert!(again.added.is_empty() && again.kept.len() == 4);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["permissions"]["allow"][0], "Bash(ls:*)");
        let post = v["hooks"]["PostToolUse"].as_array().unwrap();
        assert_eq!(post.len(), 2, "the user's hook is kept: {post:?}");
        assert_eq!(post[0]["hooks"][0]["command"], "fmt.sh");
        assert_eq!(post[1]["matcher"], "*");
        assert!(v["hooks"]["Stop"][0].get("matcher").is_none());
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("/usr/bin/perpetual"), "/usr/bin/perpetual");
        assert_eq!(shell_word("/my dir/it's"), r"'/my dir/it'\''s'");
    }
}
