//! The live feed: `/events`, Server-Sent Events that carry `/`'s sections as they change.
//!
//! One thread, whatever the number of clients, holds a read-only connection and asks
//! SQLite every [`TICK`] whether another connection committed (`PRAGMA data_version`,
//! a read of shared memory, no query). On a commit, or every [`REFRESH`] for what moves
//! with the clock (idle times, wall-time budgets, files waiting), and only while
//! somebody listens, it takes the page's snapshot, renders its sections once, and
//! publishes them on a `watch` channel; each client's stream sends the latest. A client
//! that falls behind skips to the newest state instead of queueing old ones, and a drop
//! reaches every open page within a tick, a pause ([`MIN_GAP`]) and a render of its
//! commit.

use super::App;
use super::readers::Readers;
use crate::config::Config;
use crate::root::Root;
use anyhow::Result;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use rusqlite::Connection;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};

/// How often the feed looks for commits.
pub const TICK: Duration = Duration::from_millis(100);
/// How often it renders anyway, for what changes with the clock alone.
pub const REFRESH: Duration = Duration::from_secs(5);
/// The least pause between two renders; after a slow render, twice its time (at most
/// [`MAX_GAP`]), so that during a burst of commits rendering takes about a third of a core.
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// The longest pause between two renders while commits keep coming.
pub const MAX_GAP: Duration = Duration::from_secs(2);

/// One state of `/`, as sent to every client.
#[derive(Debug)]
pub(crate) struct Update {
    /// Rises with every change (the SSE event id).
    pub version: u64,
    /// The event's data: JSON with the sections' HTML.
    pub json: String,
    /// The sections alone, to tell whether anything changed.
    sections: String,
}

/// The event's data.
#[derive(Serialize)]
struct Payload<'a> {
    version: u64,
    /// When the snapshot was taken (UTC, for people).
    at: &'a str,
    /// Distinct pairs, for clients that only want the count.
    pairs: u64,
    /// Element id → its new inner HTML (rendered and escaped by the templates).
    sections: &'a super::pages::Sections,
}

fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

fn render(conn: &Connection, root: &Root, config: &Config, version: u64) -> Result<Update> {
    let page = super::view::faucet_page(conn, root, config)?;
    let sections = super::pages::sections(&page)?;
    let json = serde_json::to_string(&Payload {
        version,
        at: &page.at,
        pairs: page.status.pipeline.pairs,
        sections: &sections,
    })?;
    Ok(Update {
        version,
        json,
        sections: serde_json::to_string(&sections)?,
    })
}

/// Starts the feed's thread; it stops (and every stream ends) once `stop` is set.
pub(crate) fn start(
    root: Root,
    config: Config,
    readers: Readers,
    stop: Arc<AtomicBool>,
) -> Result<(watch::Receiver<Arc<Update>>, JoinHandle<()>)> {
    let conn = readers.open()?;
    let mut seen = data_version(&conn)?;
    let first = render(&conn, &root, &config, 1)?;
    let (tx, rx) = watch::channel(Arc::new(first));
    let thread = std::thread::Builder::new()
        .name("serve-live".into())
        .spawn(move || {
            super::yield_to_the_writer();
            // When the last render ended, and the pause owed before the next one.
            let mut rendered = Instant::now();
            let mut gap = MIN_GAP;
            // A commit not rendered yet; a state nobody has seen rendered.
            let mut pending = false;
            let mut stale = false;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(TICK);
                match data_version(&conn) {
                    Ok(v) => pending |= std::mem::replace(&mut seen, v) != v,
                    Err(e) => {
                        tracing::warn!("serve: cannot look for changes: {e:#}");
                        continue;
                    }
                }
                let due = pending || stale || rendered.elapsed() >= REFRESH;
                // The server keeps one receiver to hand out; more means somebody listens.
                if tx.receiver_count() <= 1 {
                    stale |= due;
                    pending = false;
                    continue;
                }
                if !due || rendered.elapsed() < gap {
                    continue;
                }
                let version = tx.borrow().version + 1;
                let started = Instant::now();
                match render(&conn, &root, &config, version) {
                    Ok(update) => {
                        tx.send_if_modified(|current| {
                            if current.sections == update.sections {
                                return false;
                            }
                            *current = Arc::new(update);
                            true
                        });
                    }
                    Err(e) => tracing::warn!("serve: cannot render the live view: {e:#}"),
                }
                // Renders take about a third of a core, however fast commits come.
                gap = (started.elapsed() * 2).clamp(MIN_GAP, MAX_GAP);
                rendered = Instant::now();
                pending = false;
                stale = false;
            }
            // Dropping the sender ends every client's stream.
        })?;
    Ok((rx, thread))
}

/// `GET /events`: the stream. The first event is the current state.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = WatchStream::new(app.live.clone()).map(|u| {
        Ok(Event::default()
            .event("faucet")
            .id(u.version.to_string())
            .retry(Duration::from_secs(2))
            .data(u.json.as_str()))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
