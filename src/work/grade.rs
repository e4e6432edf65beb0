//! Grading a completed task with the seeds' formula, and its completion report
//! (`task_reports/<task>.md`).
//!
//! ```text
//! score = 0.3 × success_rate + 0.2 × speed + 0.3 × quality + 0.2 × efficiency
//! ```
//!
//! Every term is in 0..=1 and comes from recorded data only:
//!
//! - **success_rate** = 1 / (1 + failures): each `task fail` before the completion is an
//!   error, the completion is the success (0 failures → 1.0, 1 → 0.5, 2 → 0.33).
//! - **speed** = min(1, expected_sessions / sessions_used): the sessions the estimate
//!   warrants, `ceil(estimated_tokens / (session token budget × wrap threshold))` (at
//!   least 1), against the sessions that actually worked on it. Every extra session is
//!   a wrap, a handoff and a restart. 1 when there is no estimate, no token budget or
//!   no session: without an estimate there is nothing to be slow against.
//! - **quality** = completeness × clean_wraps: completeness = done / total (1 when the
//!   task has no total); clean_wraps = the share of its sessions that did not wrap at or
//!   past the hard-stop threshold (1 when it had no session).
//! - **efficiency** = min(1, estimated_tokens / tokens_used), tokens summed over its
//!   sessions; 1 when there is no estimate or no token was recorded.
//!
//! Letters: A ≥ 0.90, B ≥ 0.80, C ≥ 0.70, D ≥ 0.60, F below.

use crate::budget::{Level, Thresholds};
use crate::human::progress_text;
use crate::human::thousands;
use crate::store::sessions::SessionRow;
use crate::store::tasks::{Grade, GradeInputs as Inputs, TaskRow};

/// The weights of the seeds' formula, in the order success, speed, quality, efficiency.
pub const WEIGHTS: [f64; 4] = [0.3, 0.2, 0.3, 0.2];

/// Gathers the inputs from a task and the sessions that worked on it.
pub fn inputs(task: &TaskRow, sessions: &[SessionRow], thresholds: &Thresholds) -> Inputs {
    let clean_sessions = sessions
        .iter()
        .filter(|s| s.level.is_none_or(|l| l < Level::HardStop))
        .count() as u64;
    let token_budget = sessions
        .iter()
        .map(|s| s.budget.tokens_per_session)
        .max()
        .unwrap_or(0);
    let usable = token_budget as f64 * thresholds.wrap / 100.0;
    let expected_sessions = match task.estimated_tokens {
        Some(est) if est > 0 && usable >= 1.0 => Some(((est as f64 / usable).ceil() as u64).max(1)),
        _ => None,
    };
    Inputs {
        failures: task.failures,
        sessions: sessions.len() as u64,
        clean_sessions,
        expected_sessions,
        done: task.done,
        total: task.total,
        estimated_tokens: task.estimated_tokens,
        tokens_used: sessions.iter().map(|s| s.tokens_used).sum(),
    }
}

/// The seeds' formula.
pub fn grade(inputs: Inputs) -> Grade {
    let success_rate = 1.0 / (1.0 + inputs.failures as f64);
    let speed = match inputs.expected_sessions {
        Some(expected) if inputs.sessions > 0 => {
            (expected as f64 / inputs.sessions as f64).min(1.0)
        }
        _ => 1.0,
    };
    let completeness = match inputs.total {
        Some(total) if total > 0 => (inputs.done as f64 / total as f64).min(1.0),
        _ => 1.0,
    };
    let clean = if inputs.sessions == 0 {
        1.0
    } else {
        inputs.clean_sessions as f64 / inputs.sessions as f64
    };
    let quality = completeness * clean;
    let efficiency = match inputs.estimated_tokens {
        Some(est) if est > 0 && inputs.tokens_used > 0 => {
            (est as f64 / inputs.tokens_used as f64).min(1.0)
        }
        _ => 1.0,
    };
    let terms = [success_rate, speed, quality, efficiency];
    let score: f64 = terms.iter().zip(WEIGHTS).map(|(t, w)| t * w).sum();
    Grade {
        letter: letter(score).to_string(),
        score,
        success_rate,
        speed,
        quality,
        efficiency,
        inputs,
    }
}

/// The letter of a score.
pub fn letter(score: f64) -> &'static str {
    // A hair of tolerance so 0.9 computed as 0.8999999 is still an A.
    let s = score + 1e-9;
    if s >= 0.9 {
        "A"
    } else if s >= 0.8 {
        "B"
    } else if s >= 0.7 {
        "C"
    } else if s >= 0.6 {
        "D"
    } else {
        "F"
    }
}

/// What the completion report shows besides the task and its grade.
#[derive(Debug, Clone)]
pub struct ReportContext<'a> {
    /// The sessions that worked on it, with the pairs each integrated (its own files).
    pub sessions: &'a [(SessionRow, u64)],
    /// Checkpoints recorded for it.
    pub checkpoints: usize,
    /// The thresholds in force.
    pub thresholds: &'a Thresholds,
}

/// The completion report, Markdown.
pub fn report(task: &TaskRow, grade: &Grade, ctx: &ReportContext<'_>) -> String {
    let i = &grade.inputs;
    let mut md = String::new();
    md.push_str(&format!("# Task report: {}\n\n", task.id));
    md.push_str("| | |\n| --- | --- |\n");
    md.push_str(&format!("| agent | {} |\n", task.agent));
    md.push_str(&format!("| priority | {} |\n", task.priority));
    if let Some(d) = &task.description {
        md.push_str(&format!("| description | {} |\n", one_line(d)));
    }
    md.push_str(&format!(
        "| grade | **{}** ({:.2}) |\n",
        grade.letter, grade.score
    ));
    md.push_str(&format!(
        "| progress | {} |\n",
        progress_text(task.done, task.total)
    ));
    md.push_str(&format!(
        "| started | {} |\n",
        task.started_at.as_deref().unwrap_or("-")
    ));
    md.push_str(&format!(
        "| completed | {} |\n",
        task.finished_at.as_deref().unwrap_or("-")
    ));
    md.push_str(&format!("| sessions | {} |\n", i.sessions));
    md.push_str(&format!(
        "| checkpoints | {} |\n| tokens used | {} |\n| tokens estimated | {} |\n",
        ctx.checkpoints,
        thousands(i.tokens_used),
        i.estimated_tokens.map_or("-".to_string(), thousands)
    ));
    md.push_str(&format!("| failures | {} |\n", i.failures));
    if let Some(r) = &task.needs_review {
        md.push_str(&format!("| needs review | {} |\n", one_line(r)));
    }
    if !task.depends_on.is_empty() {
        md.push_str(&format!("| ran after | {} |\n", task.depends_on.join(", ")));
    }

    md.push_str("\n## Grade\n\n");
    md.push_str("score = 0.3 × success rate + 0.2 × speed + 0.3 × quality + 0.2 × efficiency\n\n");
    md.push_str("| term | weight | value | from |\n| --- | --- | --- | --- |\n");
    md.push_str(&format!(
        "| success rate | 0.3 | {:.2} | 1 / (1 + {} failures) |\n",
        grade.success_rate, i.failures
    ));
    md.push_str(&format!(
        "| speed | 0.2 | {:.2} | {} |\n",
        grade.speed,
        match i.expected_sessions {
            Some(e) => format!(
                "{e} session(s) expected from the estimate, {} used",
                i.sessions
            ),
            None => format!(
                "no estimate (or no token budget): 1 whatever the sessions ({} used)",
                i.sessions
            ),
        }
    ));
    let completeness = match i.total {
        Some(t) => format!("completeness {}/{}", i.done, t),
        None => "completeness 1 (no total)".to_string(),
    };
    md.push_str(&format!(
        "| quality | 0.3 | {:.2} | {completeness} × clean wraps {}/{} (below the {}% hard stop) |\n",
        grade.quality, i.clean_sessions, i.sessions, ctx.thresholds.hard_stop
    ));
    let efficiency = match i.estimated_tokens {
        Some(e) if e > 0 && i.tokens_used > 0 => format!(
            "estimate {} / used {} tokens",
            thousands(e),
            thousands(i.tokens_used)
        ),
        _ => "no estimate or no tokens recorded".to_string(),
    };
    md.push_str(&format!(
        "| efficiency | 0.2 | {:.2} | {efficiency} |\n",
        grade.efficiency
    ));
    md.push_str(&format!(
        "| **score** | | **{:.2}** | **{}** (A ≥ 0.90, B ≥ 0.80, C ≥ 0.70, D ≥ 0.60, else F) |\n",
        grade.score, grade.letter
    ));

    if !ctx.sessions.is_empty() {
        md.push_str("\n## Sessions\n\n");
        md.push_str("| session | started | wrapped | tokens | level | pairs integrated |\n");
        md.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for (s, pairs) in ctx.sessions {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                s.id,
                s.started_at,
                s.wrapped_at.as_deref().unwrap_or("(active)"),
                thousands(s.tokens_used),
                s.level.map_or("-", Level::as_str),
                thousands(*pairs)
            ));
        }
    }
    md
}

/// Text for one Markdown table cell.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            failures: 0,
            sessions: 1,
            clean_sessions: 1,
            expected_sessions: Some(1),
            done: 40,
            total: Some(40),
            estimated_tokens: Some(100_000),
            tokens_used: 100_000,
        }
    }

    #[test]
    fn formula_cases() {
        let cases = [
            ("perfect", inputs(), 1.0, "A"),
            (
                "one failure halves success",
                Inputs {
                    failures: 1,
                    ..inputs()
                },
                1.0 - 0.3 * 0.5,
                "B",
            ),
            (
                "two sessions where one was expected",
                Inputs {
                    sessions: 2,
                    clean_sessions: 2,
                    ..inputs()
                },
                1.0 - 0.2 * 0.5,
                "A",
            ),
            (
                "twice the estimate",
                Inputs {
                    tokens_used: 200_000,
                    ..inputs()
                },
                1.0 - 0.2 * 0.5,
                "A",
            ),
            (
                "half done, one hard stop of two sessions",
                Inputs {
                    done: 20,
                    sessions: 2,
                    clean_sessions: 1,
                    expected_sessions: Some(2),
                    ..inputs()
                },
                0.3 + 0.2 + 0.3 * 0.25 + 0.2,
                "C",
            ),
            (
                "no estimate: speed 1 however many sessions",
                Inputs {
                    sessions: 29,
                    clean_sessions: 29,
                    expected_sessions: None,
                    estimated_tokens: None,
                    ..inputs()
                },
                1.0,
                "A",
            ),
            (
                "no estimate, no total, no session",
                Inputs {
                    sessions: 0,
                    clean_sessions: 0,
                    total: None,
                    estimated_tokens: None,
                    tokens_used: 0,
                    ..inputs()
                },
                1.0,
                "A",
            ),
        ];
        for (name, i, score, letter) in cases {
            let g = grade(i);
            assert!((g.score - score).abs() < 1e-9, "{name}: {}", g.score);
            assert_eq!(g.letter, letter, "{name}");
        }
    }

    #[test]
    fn letters() {
        for (s, l) in [
            (0.95, "A"),
            (0.9, "A"),
            (0.85, "B"),
            (0.7, "C"),
            (0.6, "D"),
            (0.59, "F"),
        ] {
            assert_eq!(letter(s), l, "{s}");
        }
    }
}
