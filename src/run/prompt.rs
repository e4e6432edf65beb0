//! What an agent's session starts with: the task, its progress, the last checkpoint, the
//! last handoff, the budget, and how to report. `perpetual run` gives it to the agent's
//! command on stdin (and keeps it in `.perpetual/prompts/<session>.md`); the Claude Code
//! `SessionStart` hook adds the same text to Claude's context.

use crate::budget;
use crate::config::Config;
use crate::human::progress_text;
use crate::root::Root;
use crate::store::sessions as store;
use crate::work::session::{self, Brief};
use crate::work::tasks;
use anyhow::Result;
use rusqlite::Connection;

/// Documents read into a prompt are cut at this many bytes.
const MAX_HANDOFF_BYTES: usize = 16 * 1024;

/// The brief of a session that already started (what [`session::start`] returned then,
/// as it stands now).
pub fn brief_of(conn: &Connection, config: &Config, session_id: &str) -> Result<Brief> {
    let s = session::get(conn, session_id)?;
    let task_id = s
        .task_id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("session {} has no task (it was removed)", s.id))?;
    let task = tasks::view(conn, &task_id)?;
    let previous = store::of_task(conn, &task_id)?
        .into_iter()
        .filter(|p| p.id != s.id && !p.is_active())
        .max_by(|a, b| a.wrapped_at.cmp(&b.wrapped_at).then(a.id.cmp(&b.id)));
    let (usage, level) = session::level(conn, config, &s)?;
    Ok(Brief {
        resumed: s.done_at_start > 0 || previous.is_some(),
        last_checkpoint: store::last_checkpoint_of_task(conn, &task_id)?,
        previous,
        slots: session::slots_usage(
            conn,
            &s.agent,
            &config.budget_of(&s.agent),
            &config.thresholds_of(&s.agent),
        )?,
        level,
        usage,
        thresholds: config.thresholds_of(&s.agent),
        task,
        session: s,
        // The prompt does not name the run.
        run_id: None,
    })
}

/// The prompt: Markdown, one `Progress: DONE/TOTAL` line a script can read.
pub fn render(root: &Root, config: &Config, b: &Brief) -> String {
    let s = &b.session;
    let t = &b.task.task;
    let mut p = format!("# perpetual session {} ({})\n\n", s.id, s.agent);
    p.push_str(
        "You are working for perpetual, which keeps a database of question/answer pairs \
         growing. This session works on one task under a budget; report progress as you go \
         and wrap before the budget runs out. The next session resumes from what you record.\n",
    );

    p.push_str("\n## Task\n\n");
    p.push_str(&format!(
        "Task: {} (priority {}, {})\n",
        t.id,
        t.priority,
        if b.resumed { "resumed" } else { "new" }
    ));
    if let Some(d) = &t.description {
        p.push_str(&format!("Description: {d}\n"));
    }
    p.push_str(&format!("Progress: {}\n", progress_text(t.done, t.total)));
    if let Some(r) = &t.needs_review {
        p.push_str(&format!("Needs review: {r}\n"));
    }
    if let Some(c) = &b.last_checkpoint {
        p.push_str(&format!("Last checkpoint: {}\n", c.summary()));
    }
    if let Some(prev) = &b.previous
        && let Some(n) = &prev.next_action
    {
        p.push_str(&format!(
            "Next action (from {}, wrapped {}): {n}\n",
            prev.id,
            prev.wrapped_at.as_deref().unwrap_or("-")
        ));
    }

    let interim = root
        .handoffs_dir()
        .join(format!("handoff_{}_interim.md", s.id));
    let handoff = if interim.is_file() {
        Some(interim)
    } else {
        b.previous
            .as_ref()
            .and_then(|prev| prev.handoff_path.as_ref())
            .map(|h| root.dir().join(h))
    };
    if let Some(path) = handoff
        && let Ok(text) = std::fs::read_to_string(&path)
    {
        let rel = path.strip_prefix(root.dir()).unwrap_or(&path);
        p.push_str(&format!("\n## Last handoff ({})\n\n", rel.display()));
        p.push_str(cut(&text, MAX_HANDOFF_BYTES).trim_end());
        p.push('\n');
    }

    p.push_str("\n## Budget\n\n");
    for u in &b.usage {
        p.push_str(&format!("- {}: {}\n", u.kind.label(), u.amount()));
    }
    if let Some(u) = &b.slots {
        p.push_str(&format!(
            "- slots: {} / {} ({:.1}%)\n",
            u.used, u.limit, u.percent
        ));
    }
    if b.usage.is_empty() {
        p.push_str("- no limits\n");
    }
    let th = &b.thresholds;
    let binding = budget::binding(&b.usage)
        .filter(|u| u.level > budget::Level::Healthy)
        .map(|u| format!(", set by {}", u.headline()))
        .unwrap_or_default();
    p.push_str(&format!(
        "Level now: {}{binding} ({}).",
        b.level.as_str(),
        b.level.action(),
    ));
    let mut kinds: Vec<budget::Kind> = b.usage.iter().map(|u| u.kind).collect();
    kinds.extend(b.slots.map(|u| u.kind));
    if kinds.is_empty() {
        kinds.push(budget::Kind::Tokens);
    }
    let at = |f: fn(&budget::Thresholds) -> f64| {
        kinds
            .iter()
            .map(|k| format!("{}% of {}", budget::short_percent(f(&th.of(*k))), k.label()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    p.push_str(&format!(
        " Wrap at {}; wrap immediately at {}.\n",
        at(|t| t.wrap),
        at(|t| t.hard_stop)
    ));

    let flag = root.wrap_flag(&s.id);
    let flag = flag.strip_prefix(root.dir()).unwrap_or(&flag);
    p.push_str("\n## How to report\n\n");
    p.push_str(&format!(
        "PERPETUAL_SESSION={} is set, so these commands act on this session:\n\n",
        s.id
    ));
    p.push_str(
        "- After each unit of work: `perpetual session checkpoint --progress DONE/TOTAL \
         --tokens N --note \"what was done\"` (`--tokens`: the session's total so far; add \
         `--api-calls N` for the API calls made since the last checkpoint). It prints the \
         budget level; WRAP NOW means wrap.\n",
    );
    p.push_str(
        "- To finish: `perpetual session wrap --progress DONE/TOTAL --next \"what the next \
         session should do first\"`, then exit. Full progress (DONE = TOTAL) completes and \
         grades the task.\n",
    );
    p.push_str(&format!(
        "- When `{}` exists, perpetual asks you to wrap now: finish the current unit, \
         checkpoint, wrap and exit. It stops the session {} seconds later.\n",
        flag.display(),
        config.run.grace_secs
    ));
    p
}

/// What to tell an agent at or past the wrap threshold (hooks and the loop's log).
pub fn wrap_request(session: &str, usage: &[budget::Usage]) -> String {
    let worst: Vec<String> = usage
        .iter()
        .filter(|u| u.level.must_wrap())
        .map(|u| {
            format!(
                "{} {:.1}% ({})",
                u.kind.label(),
                u.percent,
                u.level.as_str()
            )
        })
        .collect();
    format!(
        "perpetual: session {session} is at the wrap threshold{}. Finish the current unit, \
         then record it and wrap: `perpetual session checkpoint --progress DONE/TOTAL --tokens N \
         --note \"...\"` and `perpetual session wrap --progress DONE/TOTAL --next \"what the next \
         session should do first\"`.",
        if worst.is_empty() {
            " (perpetual asked for a wrap)".to_string()
        } else {
            format!(": {}", worst.join(", "))
        }
    )
}

/// What to tell an agent that must wrap for a reason other than its budget (the loop is
/// stopping): the reason, then the same instructions as [`wrap_request`].
pub fn wrap_request_because(session: &str, reason: &str) -> String {
    format!(
        "perpetual: session {session} must wrap now: {reason}. Finish the current unit, \
         then record it and wrap: `perpetual session checkpoint --progress DONE/TOTAL --tokens N \
         --note \"...\"` and `perpetual session wrap --progress DONE/TOTAL --next \"what the next \
         session should do first\"`."
    )
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
