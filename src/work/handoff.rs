//! The handoff document (`session_handoffs/handoff_<session>.md`): what the next
//! session needs to carry on, generated at the wrap from the database. The next
//! `session start` reads the same facts from the database (progress, last checkpoint,
//! next action); the document is for people and for agents that read files.

use crate::budget::{Level, Thresholds, Usage};
use crate::human::progress_text;
use crate::human::thousands;
use crate::store::sessions::{CheckpointRow, SessionRow};
use crate::store::stats::Stats;
use crate::store::tasks::Grade;
use crate::store::tasks::TaskRow;
use crate::work::grade::one_line;

/// Everything the handoff shows.
#[derive(Debug, Clone)]
pub struct Handoff<'a> {
    /// The wrapped session.
    pub session: &'a SessionRow,
    /// Its task, as it stands after the wrap (None if it was removed).
    pub task: Option<&'a TaskRow>,
    /// The session's checkpoints.
    pub checkpoints: &'a [CheckpointRow],
    /// Budget usage at the wrap.
    pub usage: &'a [Usage],
    /// Level at the wrap.
    pub level: Level,
    /// The thresholds in force.
    pub thresholds: &'a Thresholds,
    /// Seconds from start to wrap.
    pub duration_seconds: i64,
    /// Pairs first stored during the session.
    pub pairs_integrated: u64,
    /// Database totals at the wrap.
    pub totals: &'a Stats,
    /// The backup made at the wrap, relative to the root.
    pub backup: Option<&'a str>,
    /// The grade, when the wrap completed the task.
    pub grade: Option<&'a Grade>,
    /// Why the task needs review, when it does.
    pub needs_review: Option<&'a str>,
    /// What the next session should do.
    pub next_action: &'a str,
}

/// The document, Markdown.
pub fn render(h: &Handoff<'_>) -> String {
    let s = h.session;
    let mut md = format!("# Session handoff: {}\n\n", s.id);
    md.push_str("| | |\n| --- | --- |\n");
    md.push_str(&format!("| agent | {} |\n", s.agent));
    match h.task {
        Some(t) => {
            md.push_str(&format!("| task | {} (priority {}) |\n", t.id, t.priority));
            if let Some(d) = &t.description {
                md.push_str(&format!("| description | {} |\n", one_line(d)));
            }
            md.push_str(&format!(
                "| progress | {} (was {} at the start) |\n",
                progress_text(t.done, t.total),
                s.done_at_start
            ));
            let status = match h.grade {
                Some(g) => format!("completed, grade {} ({:.2})", g.letter, g.score),
                None => t.status.as_str().replace('_', " "),
            };
            md.push_str(&format!("| task status | {status} |\n"));
        }
        None => md.push_str("| task | (removed) |\n"),
    }
    if let Some(r) = h.needs_review {
        md.push_str(&format!("| needs review | {} |\n", one_line(r)));
    }
    md.push_str(&format!("| started | {} |\n", s.started_at));
    md.push_str(&format!(
        "| wrapped | {} |\n",
        s.wrapped_at.as_deref().unwrap_or("-")
    ));
    md.push_str(&format!(
        "| duration | {} |\n",
        crate::clock::human_duration(h.duration_seconds)
    ));
    md.push_str(&format!(
        "| budget level | {} (warning {}%, wrap {}%, hard stop {}%, critical {}%) |\n",
        h.level.as_str(),
        h.thresholds.warning,
        h.thresholds.wrap,
        h.thresholds.hard_stop,
        h.thresholds.critical
    ));
    for u in h.usage {
        md.push_str(&format!("| {} | {} |\n", u.kind.label(), u.amount()));
    }
    if !h
        .usage
        .iter()
        .any(|u| u.kind == crate::budget::Kind::Tokens)
    {
        md.push_str(&format!(
            "| tokens | {} (no token budget) |\n",
            thousands(s.tokens_used)
        ));
    }
    if let Some(b) = h.backup {
        md.push_str(&format!("| backup | {b} |\n"));
    }

    md.push_str(&format!("\n## Checkpoints ({})\n\n", h.checkpoints.len()));
    if h.checkpoints.is_empty() {
        md.push_str("None recorded.\n");
    } else {
        md.push_str("| # | at | progress | tokens | API calls | level | note |\n");
        md.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
        for (i, c) in h.checkpoints.iter().enumerate() {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                i + 1,
                c.at,
                c.done
                    .map_or("-".to_string(), |d| progress_text(d, c.total)),
                c.tokens.map_or("-".to_string(), thousands),
                c.api_calls,
                c.level.as_str(),
                c.note.as_deref().map(one_line).unwrap_or_default()
            ));
        }
    }

    let t = h.totals;
    md.push_str("\n## Database\n\n");
    md.push_str(&format!(
        "- pairs integrated by the session (the files it integrated): {}\n",
        thousands(h.pairs_integrated)
    ));
    md.push_str(&format!(
        "- distinct pairs: {} / {} ({:.1}%)\n",
        thousands(t.pairs),
        thousands(t.goal),
        t.goal_percent
    ));
    md.push_str(&format!(
        "- files: {} integrated, {} rejected, {} duplicate\n",
        thousands(t.files_integrated),
        thousands(t.files_rejected),
        thousands(t.files_duplicate)
    ));

    md.push_str("\n## Next action\n\n");
    md.push_str(h.next_action.trim());
    md.push('\n');
    md
}
