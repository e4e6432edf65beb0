//! The JSON API: the same JSON as the CLI's `--json`, from the same library functions,
//! so there is one shape everywhere. Query parameters mirror the CLI's flags:
//!
//! | endpoint | the CLI |
//! | --- | --- |
//! | `/api/status` | `perpetual status --json` |
//! | `/api/stats[?top=N]` | `perpetual stats --json [--top N]` |
//! | `/api/tasks[?agent=A][&all=true]` | `perpetual task list --json [--agent A] [--all]` |
//! | `/api/files[?rejected=true][&agent=A][&status=S]` | `perpetual files --json [--rejected] [--agent A] [--status S]` |
//!
//! An unknown parameter or a malformed value is a 400 that names it.

use super::{App, Failure};
use crate::store::ledger::{self, ListFilter};
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

/// A flag given as `?all`, `?all=true`, `?all=1` (or `false`, `0`).
fn flag(name: &str, value: Option<&str>) -> Result<bool, Failure> {
    match value.map(str::trim) {
        None => Ok(false),
        Some("" | "1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(Failure::BadRequest(format!(
            "{name}={other:?}: expected true or false\n"
        ))),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    Json(value).into_response()
}

/// `GET /api/status`: `perpetual status --json`. Clients asking at the same time share
/// one computation (`coalesce`), each answer taken after its request arrived.
pub(crate) async fn status(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    let body = app
        .status
        .get(|| async {
            let (root, config) = (app.root.clone(), app.config.clone());
            let view = app
                .readers
                .read(move |conn| crate::run::status::faucet(conn, &root, &config))
                .await?;
            Ok(axum::body::Bytes::from(serde_json::to_vec(&view)?))
        })
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `/api/stats`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    top: Option<usize>,
}

/// `GET /api/stats[?top=N]`: `perpetual stats --json [--top N]`.
pub(crate) async fn stats(
    State(app): State<Arc<App>>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, Failure> {
    let goal = app.config.goal;
    let top = q.top.unwrap_or(crate::store::stats::DEFAULT_TOP);
    let stats = app
        .readers
        .read(move |conn| crate::store::stats::stats(conn, goal, top))
        .await?;
    Ok(json(&stats))
}

/// `/api/tasks`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TasksQuery {
    agent: Option<String>,
    all: Option<String>,
}

/// `GET /api/tasks[?agent=A][&all=true]`: `perpetual task list --json [--agent A] [--all]`.
pub(crate) async fn tasks(
    State(app): State<Arc<App>>,
    Query(q): Query<TasksQuery>,
) -> Result<Response, Failure> {
    let all = flag("all", q.all.as_deref())?;
    let agent = q.agent;
    let list = app
        .readers
        .read(move |conn| crate::work::tasks::list(conn, agent.as_deref(), all))
        .await?;
    Ok(json(&list))
}

/// `/api/files`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilesQuery {
    rejected: Option<String>,
    skipped: Option<String>,
    agent: Option<String>,
    status: Option<String>,
}

/// `GET /api/files[?rejected=true][&skipped=true][&agent=A][&status=S]`: `perpetual files
/// --json ...`.
pub(crate) async fn files(
    State(app): State<Arc<App>>,
    Query(q): Query<FilesQuery>,
) -> Result<Response, Failure> {
    let filter = ListFilter {
        rejected_only: flag("rejected", q.rejected.as_deref())?,
        skipped_only: flag("skipped", q.skipped.as_deref())?,
        agent: q.agent,
        status: q.status,
    };
    let rows = app
        .readers
        .read(move |conn| ledger::list(conn, &filter))
        .await?;
    Ok(json(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert!(!flag("all", None).unwrap());
        for yes in ["", "1", "true", "yes", "on"] {
            assert!(flag("all", Some(yes)).unwrap(), "{yes}");
        }
        for no in ["0", "false", "no", "off"] {
            assert!(!flag("all", Some(no)).unwrap(), "{no}");
        }
        assert!(flag("all", Some("maybe")).is_err());
    }
}
