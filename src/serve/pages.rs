//! The HTML pages: `/` (the faucet; its sections are also what `/events` sends),
//! `/tasks`, `/tasks/<id>`, `/sessions`, `/sessions/<id>`, `/files`, the 404 page, and
//! the page's own stylesheet and script. Templates are askama's, under
//! `src/serve/templates/`; they escape every value they print, so a file name, a reason
//! or a note written by an agent is shown as text, never run. Handoffs and reports are
//! Markdown, rendered with any raw HTML in them shown as text.

use super::view::{
    self, Bar, FaucetPage, FileLine, SessionCard, level_class, level_text, short_time,
};
use super::{App, Failure};
use crate::human::{progress_text, thousands};
use crate::store::ledger::{self, ListFilter};
use crate::store::sessions as store_sessions;
use crate::work::tasks::{self, State as TaskState, TaskView};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Rows per page of `/files`.
const FILES_PER_PAGE: usize = 100;
/// Sessions listed on `/sessions`.
const SESSIONS_LISTED: usize = 200;

#[derive(Template)]
#[template(path = "faucet.html")]
struct FaucetTemplate<'a> {
    page: &'a FaucetPage,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewSection<'a> {
    page: &'a FaucetPage,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsSection<'a> {
    page: &'a FaucetPage,
}

#[derive(Template)]
#[template(path = "bottlenecks.html")]
struct BottlenecksSection<'a> {
    page: &'a FaucetPage,
}

#[derive(Template)]
#[template(path = "charts.html")]
struct ChartsSection<'a> {
    page: &'a FaucetPage,
}

#[derive(Template)]
#[template(path = "recent_files.html")]
struct FilesSection<'a> {
    page: &'a FaucetPage,
}

/// The parts of `/` that change, by element id, each as the inner HTML the page puts in.
#[derive(Debug, Serialize)]
pub(crate) struct Sections {
    overview: String,
    agents: String,
    bottlenecks: String,
    charts: String,
    files: String,
}

/// Renders `/`'s live sections.
pub(crate) fn sections(page: &FaucetPage) -> anyhow::Result<Sections> {
    Ok(Sections {
        overview: OverviewSection { page }.render()?,
        agents: AgentsSection { page }.render()?,
        bottlenecks: BottlenecksSection { page }.render()?,
        charts: ChartsSection { page }.render()?,
        files: FilesSection { page }.render()?,
    })
}

fn html(t: impl Template) -> Result<Response, Failure> {
    Ok(Html(t.render().map_err(anyhow::Error::from)?).into_response())
}

/// `GET /`: the faucet.
pub(crate) async fn faucet(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    let (root, config) = (app.root.clone(), app.config.clone());
    let page = app
        .readers
        .read(move |conn| view::faucet_page(conn, &root, &config))
        .await?;
    html(FaucetTemplate { page: &page })
}

/// A task as a row of `/tasks` and the head of `/tasks/<id>`.
struct TaskLine {
    id: String,
    agent: String,
    kind: &'static str,
    description: String,
    state: &'static str,
    state_text: String,
    priority: i64,
    progress: Option<Bar>,
    progress_text: String,
    grade: String,
    report: bool,
    notes: String,
}

impl TaskLine {
    fn new(v: &TaskView, report: bool) -> TaskLine {
        let t = &v.task;
        let symbol = match v.state {
            TaskState::Ready => "●",
            TaskState::Waiting => "◌",
            TaskState::Blocked => "✖",
            TaskState::InProgress => "▶",
            TaskState::Completed => "✓",
            TaskState::Failed => "✗",
        };
        let mut notes = Vec::new();
        if let Some(why) = &v.why {
            notes.push(why.clone());
        }
        if let Some(r) = &t.needs_review {
            notes.push(format!("⚑ needs review: {r}"));
        }
        if let Some(f) = &t.fail_reason {
            notes.push(format!("failed {}×: {f}", t.failures));
        }
        TaskLine {
            id: t.id.clone(),
            agent: t.agent.clone(),
            kind: t.kind.as_str(),
            description: t.description.clone().unwrap_or_default(),
            state: v.state.as_str(),
            state_text: format!("{symbol} {}", v.state.as_str().replace('_', " ")),
            priority: t.priority,
            progress: Bar::progress("", t.done, t.total),
            progress_text: progress_text(t.done, t.total),
            grade: t
                .grade
                .as_ref()
                .map(|g| format!("{} ({:.2})", g.letter, g.score))
                .unwrap_or_default(),
            report,
            notes: notes.join("; "),
        }
    }
}

#[derive(Template)]
#[template(path = "tasks.html")]
struct TasksTemplate {
    agent: Option<String>,
    agents: Vec<String>,
    queue: Vec<TaskLine>,
    archive: Vec<TaskLine>,
}

/// `/tasks`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TasksQuery {
    agent: Option<String>,
}

/// `GET /tasks[?agent=A]`: the queue in the order it runs, then the archive.
pub(crate) async fn tasks(
    State(app): State<Arc<App>>,
    Query(q): Query<TasksQuery>,
) -> Result<Response, Failure> {
    let agent = q.agent.filter(|a| !a.is_empty());
    let (root, config, wanted) = (app.root.clone(), app.config.clone(), agent.clone());
    let (views, agents) = app
        .readers
        .read(move |conn| {
            Ok((
                tasks::list(conn, wanted.as_deref(), true)?,
                tasks::all_agents(conn, &root, &config)?,
            ))
        })
        .await?;
    let reports = app.root.reports_dir();
    let line = |v: &TaskView| {
        let report =
            v.state == TaskState::Completed && reports.join(format!("{}.md", v.task.id)).is_file();
        TaskLine::new(v, report)
    };
    html(TasksTemplate {
        agent,
        agents,
        queue: views
            .iter()
            .filter(|v| v.state != TaskState::Completed)
            .map(line)
            .collect(),
        archive: views
            .iter()
            .filter(|v| v.state == TaskState::Completed)
            .map(line)
            .collect(),
    })
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskTemplate {
    t: TaskLine,
    facts: Vec<(String, String)>,
    sessions: Vec<(String, String)>,
    report: Option<String>,
}

/// `GET /tasks/<id>`: one task, its sessions and its report.
pub(crate) async fn task(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let wanted = id.clone();
    let found = app
        .readers
        .read(move |conn| {
            if crate::store::tasks::get(conn, &wanted)?.is_none() {
                return Ok(None);
            }
            Ok(Some((
                tasks::view(conn, &wanted)?,
                store_sessions::of_task(conn, &wanted)?,
                crate::store::tasks::dependents(conn, &wanted)?,
            )))
        })
        .await?;
    let Some((v, sessions, dependents)) = found else {
        return not_found_page(format!("There is no task {id}."));
    };
    let report_path = app.root.reports_dir().join(format!("{}.md", v.task.id));
    let report = std::fs::read_to_string(&report_path)
        .ok()
        .map(|md| markdown(&md));
    let t = &v.task;
    let mut facts = vec![
        ("created".to_string(), short_time(&t.created_at)),
        (
            "tokens".to_string(),
            format!(
                "{} used over {} session(s){}",
                thousands(t.tokens_used),
                t.sessions,
                t.estimated_tokens
                    .map(|e| format!(", {} estimated", thousands(e)))
                    .unwrap_or_default()
            ),
        ),
    ];
    if !t.depends_on.is_empty() {
        facts.push(("depends on".to_string(), t.depends_on.join(", ")));
    }
    if !dependents.is_empty() {
        facts.push(("needed by".to_string(), dependents.join(", ")));
    }
    if let Some(s) = &t.started_at {
        facts.push(("started".to_string(), short_time(s)));
    }
    if let Some(s) = &t.finished_at {
        facts.push(("finished".to_string(), short_time(s)));
    }
    if let Some(p) = &t.params {
        facts.push(("params".to_string(), p.to_string()));
    }
    if let Some(g) = &t.grade {
        facts.push((
            "grade terms".to_string(),
            format!(
                "success {:.2}, speed {:.2}, quality {:.2}, efficiency {:.2}",
                g.success_rate, g.speed, g.quality, g.efficiency
            ),
        ));
    }
    html(TaskTemplate {
        t: TaskLine::new(&v, report.is_some()),
        facts,
        sessions: sessions
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    format!(
                        "{}, {} → {}, {} tokens",
                        s.status,
                        short_time(&s.started_at),
                        s.wrapped_at.as_deref().map(short_time).unwrap_or_default(),
                        thousands(s.tokens_used)
                    ),
                )
            })
            .collect(),
        report,
    })
}

struct SessionLine {
    id: String,
    agent: String,
    task: String,
    status: String,
    started: String,
    wrapped: String,
    tokens: String,
    level: &'static str,
    level_class: &'static str,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsTemplate {
    rows: Vec<SessionLine>,
    truncated: bool,
}

/// `GET /sessions`: the latest sessions, newest first.
pub(crate) async fn sessions(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    let all = app
        .readers
        .read(|conn| store_sessions::list(conn, None))
        .await?;
    let truncated = all.len() > SESSIONS_LISTED;
    html(SessionsTemplate {
        rows: all
            .iter()
            .take(SESSIONS_LISTED)
            .map(|s| SessionLine {
                id: s.id.clone(),
                agent: s.agent.clone(),
                task: s.task_id.clone().unwrap_or_else(|| "-".to_string()),
                status: s.status.clone(),
                started: short_time(&s.started_at),
                wrapped: s.wrapped_at.as_deref().map(short_time).unwrap_or_default(),
                tokens: thousands(s.tokens_used),
                level: s.level.map(level_text).unwrap_or(""),
                level_class: s.level.map(level_class).unwrap_or(""),
            })
            .collect(),
        truncated,
    })
}

struct CheckpointLine {
    at: String,
    progress: String,
    tokens: String,
    api_calls: String,
    level: &'static str,
    level_class: &'static str,
    note: String,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionTemplate {
    card: SessionCard,
    facts: Vec<(String, String)>,
    checkpoints: Vec<CheckpointLine>,
    handoff: Option<String>,
}

/// `GET /sessions/<id>`: a session's budget, checkpoints and handoff.
pub(crate) async fn session(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let (config, wanted) = (app.config.clone(), id.clone());
    let found = app
        .readers
        .read(move |conn| {
            let Some(s) = store_sessions::get(conn, &wanted)? else {
                return Ok(None);
            };
            let views = tasks::views(conn)?;
            let card = view::session_card(conn, &config, &s, &views)?;
            Ok(Some((
                s.clone(),
                card,
                store_sessions::checkpoints_of(conn, &wanted)?,
            )))
        })
        .await?;
    let Some((s, card, checkpoints)) = found else {
        return not_found_page(format!("There is no session {id}."));
    };
    let mut facts = vec![
        ("agent".to_string(), s.agent.clone()),
        ("status".to_string(), s.status.clone()),
        ("started".to_string(), short_time(&s.started_at)),
    ];
    if let Some(w) = &s.wrapped_at {
        facts.push(("wrapped".to_string(), short_time(w)));
    }
    if let Some(l) = s.level {
        facts.push(("level at the wrap".to_string(), level_text(l).to_string()));
    }
    if let Some(n) = &s.next_action {
        facts.push(("next action".to_string(), n.clone()));
    }
    if let Some(b) = &s.backup_path {
        facts.push(("backup".to_string(), b.clone()));
    }
    if let Some(c) = &s.commit_id {
        facts.push(("commit".to_string(), c.clone()));
    }
    let handoff = handoff_text(&app.root, s.handoff_path.as_deref(), &s.id).map(|md| markdown(&md));
    html(SessionTemplate {
        card,
        facts,
        checkpoints: checkpoints
            .iter()
            .map(|c| CheckpointLine {
                at: short_time(&c.at),
                progress: c
                    .done
                    .map(|d| progress_text(d, c.total))
                    .unwrap_or_default(),
                tokens: c.tokens.map(thousands).unwrap_or_default(),
                api_calls: thousands(c.api_calls),
                level: level_text(c.level),
                level_class: level_class(c.level),
                note: c.note.clone().unwrap_or_default(),
            })
            .collect(),
        handoff,
    })
}

/// The session's handoff document: the one its wrap recorded, else an interim one
/// (written before a compaction). Only files inside `session_handoffs/` are read.
fn handoff_text(root: &crate::root::Root, recorded: Option<&str>, id: &str) -> Option<String> {
    let dir = root.handoffs_dir().canonicalize().ok()?;
    let candidates = [
        recorded.map(|p| root.dir().join(p)),
        Some(dir.join(format!("handoff_{id}.md"))),
        Some(dir.join(format!("handoff_{id}_interim.md"))),
    ];
    candidates.into_iter().flatten().find_map(|p| {
        let p = p.canonicalize().ok()?;
        if p.starts_with(&dir) {
            std::fs::read_to_string(p).ok()
        } else {
            None
        }
    })
}

#[derive(Template)]
#[template(path = "files.html")]
struct FilesTemplate {
    agent: Option<String>,
    status: Option<String>,
    agents: Vec<String>,
    statuses: Vec<(String, u64)>,
    files: Vec<FileLine>,
    older: Option<String>,
    json_url: String,
}

/// `/files`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilesQuery {
    agent: Option<String>,
    status: Option<String>,
    /// Only rows with an id below this (the next page).
    before: Option<i64>,
}

/// `GET /files[?agent=A][&status=S][&before=ID]`: the ledger, newest first, a page at a
/// time; any status word filters, including ones this page does not know.
pub(crate) async fn files(
    State(app): State<Arc<App>>,
    Query(q): Query<FilesQuery>,
) -> Result<Response, Failure> {
    let filter = ListFilter {
        agent: q.agent.filter(|a| !a.is_empty()),
        status: q.status.filter(|s| !s.is_empty()),
        ..ListFilter::default()
    };
    let f = filter.clone();
    let before = q.before;
    let (rows, agents, statuses) = app
        .readers
        .read(move |conn| {
            Ok((
                ledger::page(conn, &f, before, FILES_PER_PAGE)?,
                ledger::agents(conn)?,
                ledger::count_by_status(conn)?,
            ))
        })
        .await?;
    let query = |extra: Option<String>| {
        let mut parts = Vec::new();
        if let Some(a) = &filter.agent {
            parts.push(format!("agent={}", urlencoding(a)));
        }
        if let Some(s) = &filter.status {
            parts.push(format!("status={}", urlencoding(s)));
        }
        parts.extend(extra);
        parts.join("&")
    };
    let older = (rows.len() == FILES_PER_PAGE)
        .then(|| {
            rows.last()
                .map(|r| format!("/files?{}", query(Some(format!("before={}", r.id)))))
        })
        .flatten();
    html(FilesTemplate {
        json_url: format!("/api/files?{}", query(None)),
        agent: filter.agent,
        status: filter.status,
        agents,
        statuses,
        files: rows.iter().map(FileLine::new).collect(),
        older,
    })
}

/// Percent-encodes a query value (everything but unreserved characters).
fn urlencoding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Template)]
#[template(path = "not_found.html")]
struct NotFoundTemplate {
    message: String,
}

fn not_found_page(message: String) -> Result<Response, Failure> {
    let body = NotFoundTemplate { message }
        .render()
        .map_err(anyhow::Error::from)?;
    Ok((StatusCode::NOT_FOUND, Html(body)).into_response())
}

/// Any path outside the routes: 404, as JSON under `/api/`, as a page elsewhere.
pub(crate) async fn not_found(uri: Uri) -> Result<Response, Failure> {
    let path = uri.path().to_string();
    if path.starts_with("/api/") {
        return Ok((
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": format!("no such endpoint: {path}") })),
        )
            .into_response());
    }
    not_found_page(format!("Nothing here: {path}"))
}

/// Markdown (a handoff, a report) as HTML; raw HTML inside it is shown as text.
pub(crate) fn markdown(md: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, html::push_html};
    let parser = Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(
        |e| match e {
            Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
            other => other,
        },
    );
    let mut out = String::new();
    push_html(&mut out, parser);
    out
}

/// `GET /static/faucet.css`.
pub(crate) async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/faucet.css"),
    )
        .into_response()
}

/// `GET /static/faucet.js`: follows `/events` and swaps the sections in.
pub(crate) async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/faucet.js"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_shows_raw_html_as_text() {
        let html = markdown("# Handoff\n\nnote: <script>alert(1)</script> and <b>bold</b>\n");
        assert!(html.contains("<h1>Handoff</h1>"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencoding("claude_code"), "claude_code");
        assert_eq!(urlencoding("a b&c=<"), "a%20b%26c%3D%3C");
    }
}
