//! `/metrics`: the root's numbers for Prometheus, read from the database at each scrape
//! and written by `prometheus-client` in the Prometheus text format (version 0.0.4), or in
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`).
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `perpetual_pairs_total` | counter | distinct pairs stored |
//! | `perpetual_goal_pairs` | gauge | the goal |
//! | `perpetual_files_total{status}` | counter | ledger rows by status |
//! | `perpetual_pairs_invalid_total` | counter | pairs that failed validation in integrated files |
//! | `perpetual_files_waiting{agent}` | gauge | files waiting in the inbox |
//! | `perpetual_ingest_seconds` | histogram | per file: start of reading to its final status |
//! | `perpetual_session_budget_ratio{agent,session,kind}` | gauge | an active session's use of a budget (1 = the limit) |
//! | `perpetual_agent_sessions_active{agent}` | gauge | active sessions |
//! | `perpetual_agent_paused{agent}` | gauge | 1 while the circuit breaker (or a person) paused it |
//! | `perpetual_agent_idle_seconds{agent}` | gauge | seconds since its last activity, 0 while working |
//! | `perpetual_queue_ready{agent}`, `_waiting`, `_blocked` | gauge | its tasks by readiness |
//! | `perpetual_writer_running` | gauge | 1 while a loop or watcher holds the writer lock |

use super::{App, Failure};
use crate::budget::Kind;
use crate::config::Config;
use crate::root::Root;
use crate::store::ledger;
use anyhow::Result;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Upper bounds of `perpetual_ingest_seconds`'s buckets: a lone small drop takes
/// milliseconds; a file in a burst waits for the files before it.
pub const INGEST_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabel {
    agent: String,
    session: String,
    kind: String,
}

/// The ledger's durations as a histogram, encoded as they are read (no observation
/// happens here: the ledger is the record).
#[derive(Debug)]
struct IngestHistogram(ledger::Durations);

impl EncodeMetric for IngestHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder wants each bucket's own count; the ledger gives them cumulative.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|(bound, cumulative)| {
                let own = cumulative - below;
                below = *cumulative;
                (*bound, own)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type GaugeFamily<L> = Family<L, Gauge<f64, AtomicU64>>;

fn gauge_family<L>(registry: &mut Registry, name: &str, help: &str) -> GaugeFamily<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = GaugeFamily::<L>::default();
    registry.register(name, help, f.clone());
    f
}

/// Reads the numbers and fills a registry with them.
pub fn registry(conn: &Connection, root: &Root, config: &Config) -> Result<Registry> {
    let status = crate::run::status::faucet(conn, root, config)?;
    let mut r = Registry::default();
    r.register(
        "perpetual_pairs",
        "Distinct question/answer pairs stored",
        ConstCounter::new(status.pipeline.pairs),
    );
    r.register(
        "perpetual_goal_pairs",
        "Distinct pairs wanted (goal in perpetual.toml)",
        ConstGauge::new(status.pipeline.goal as i64),
    );
    let files = Family::<StatusLabel, Counter>::default();
    r.register(
        "perpetual_files",
        "Files in the ledger, by what became of them",
        files.clone(),
    );
    // The usual statuses are always present, so a rate() over them never starts late.
    for s in ["integrated", "duplicate", "rejected", "partial"] {
        let _ = files.get_or_create(&StatusLabel {
            status: s.to_string(),
        });
    }
    for (s, n) in ledger::count_by_status(conn)? {
        files.get_or_create(&StatusLabel { status: s }).inc_by(n);
    }
    let invalid: i64 = conn.query_row(
        "SELECT COALESCE(SUM(pairs_invalid), 0) FROM files WHERE status = 'integrated'",
        [],
        |row| row.get(0),
    )?;
    r.register(
        "perpetual_pairs_invalid",
        "Pairs that failed validation in integrated files",
        ConstCounter::new(invalid.max(0) as u64),
    );
    let waiting = gauge_family::<AgentLabel>(
        &mut r,
        "perpetual_files_waiting",
        "Files waiting in the agent's inbox",
    );
    r.register(
        "perpetual_ingest_seconds",
        "Seconds per file from the start of reading to its final status in the ledger",
        IngestHistogram(ledger::durations(conn, &INGEST_BUCKETS)?),
    );
    let budget = gauge_family::<BudgetLabel>(
        &mut r,
        "perpetual_session_budget_ratio",
        "An active session's use of one budget: used / limit (1 = the limit)",
    );
    let sessions = gauge_family::<AgentLabel>(
        &mut r,
        "perpetual_agent_sessions_active",
        "Active sessions of the agent",
    );
    let paused = gauge_family::<AgentLabel>(
        &mut r,
        "perpetual_agent_paused",
        "1 while the agent is paused (circuit breaker or by hand)",
    );
    let idle = gauge_family::<AgentLabel>(
        &mut r,
        "perpetual_agent_idle_seconds",
        "Seconds since the agent's last activity (0 while a session runs)",
    );
    let ready = gauge_family::<AgentLabel>(
        &mut r,
        "perpetual_queue_ready",
        "Ready tasks in the agent's queue",
    );
    let waiting_tasks = gauge_family::<AgentLabel>(
        &mut r,
        "perpetual_queue_waiting",
        "Pending tasks of the agent waiting for a dependency",
    );
    let blocked = gauge_family::<AgentLabel>(
        &mut r,
        "perpetual_queue_blocked",
        "Pending tasks of the agent blocked by a failed dependency",
    );
    for a in &status.agents {
        let agent = AgentLabel {
            agent: a.agent.clone(),
        };
        sessions.get_or_create(&agent).set(a.sessions.len() as f64);
        paused
            .get_or_create(&agent)
            .set(if a.paused.is_some() { 1.0 } else { 0.0 });
        if let Some(s) = a.idle_seconds {
            idle.get_or_create(&agent).set(s as f64);
        }
        ready.get_or_create(&agent).set(a.queue_depth as f64);
        waiting_tasks.get_or_create(&agent).set(a.waiting as f64);
        blocked.get_or_create(&agent).set(a.blocked as f64);
        waiting.get_or_create(&agent).set(
            status
                .pipeline
                .files_waiting_by_agent
                .get(&a.agent)
                .copied()
                .unwrap_or(0) as f64,
        );
        for s in crate::store::sessions::active(conn, Some(&a.agent))? {
            let (usage, _) = crate::work::session::level(conn, config, &s)?;
            for u in usage.iter().filter(|u| u.kind != Kind::Slots) {
                budget
                    .get_or_create(&BudgetLabel {
                        agent: a.agent.clone(),
                        session: s.id.clone(),
                        kind: kind_label(u.kind).to_string(),
                    })
                    .set(u.percent / 100.0);
            }
        }
    }
    r.register(
        "perpetual_writer_running",
        "1 while a loop (run) or watcher holds the root's writer lock",
        ConstGauge::new(i64::from(super::view::writer_process(root).is_some())),
    );
    Ok(r)
}

/// A budget kind as a label value (snake case, as in the JSON).
fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Tokens => "tokens",
        Kind::ApiCalls => "api_calls",
        Kind::Slots => "slots",
        Kind::WallTime => "wall_time",
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (root, config) = (app.root.clone(), app.config.clone());
    let (body, content_type) = app
        .readers
        .read(move |conn| {
            let registry = registry(conn, &root, &config)?;
            let mut body = String::new();
            let content_type = if openmetrics {
                prometheus_client::encoding::text::encode(&mut body, &registry)?;
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)?;
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            Ok((body, content_type))
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
