//! The web faucet (`perpetual serve`, `perpetual run --serve`): a read-only web server over
//! a root's database, and the only async code in the crate (axum on tokio, confined to
//! this module; everything it calls below is the same synchronous library the command
//! line uses).
//!
//! What it owns:
//! - the server's life: where it may listen (`check_bind`: loopback, or a token), its
//!   runtime and graceful stop ([`Server`]);
//! - the pages `/`, `/tasks`, `/tasks/<id>`, `/sessions`, `/sessions/<id>`, `/files`
//!   (`pages`, askama templates under `src/serve/templates/`, drop-derived text escaped);
//! - the live feed `/events` (Server-Sent Events; `live`): one thread notices commits
//!   (`PRAGMA data_version`) and renders the page's sections once per change for every
//!   client at once;
//! - the API `/api/status`, `/api/stats`, `/api/tasks`, `/api/files` (`api`): the JSON of
//!   the CLI's `--json`, from the same library functions;
//! - `/metrics` in the Prometheus text format or OpenMetrics (`metrics`);
//! - the charts (`charts`): a live growth chart, and the workbench's SVGs from
//!   `outbox/<agent>/visualizations/`;
//! - who may ask (`auth`): the bearer token in constant time, the Host check against DNS
//!   rebinding, security headers.
//!
//! Reads go through `readers`: read-only SQLite connections (WAL readers) on tokio's
//! blocking pool, a few at a time; `/api/status` is computed once for all who ask at
//! once (`coalesce`), so a crowd of clients costs the writer little: short reads, at nice
//! 10, with gaps that let SQLite restart its WAL.

mod api;
mod auth;
mod charts;
mod coalesce;
mod live;
mod metrics;
mod pages;
mod readers;
mod view;

use crate::config::Config;
use crate::root::Root;
use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;
use readers::Readers;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server listens and who may ask.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address and port; port 0 picks a free one (see [`Server::addr`]).
    pub addr: SocketAddr,
    /// The bearer token every request must carry. Required unless `addr` is loopback.
    pub token: Option<String>,
}

/// Refuses to listen beyond loopback without a token: the pages show every file name,
/// question and budget of the root.
pub fn check_bind(opts: &Options) -> Result<()> {
    if let Some(t) = &opts.token {
        anyhow::ensure!(!t.trim().is_empty(), "the token must not be empty");
    }
    anyhow::ensure!(
        opts.addr.ip().is_loopback() || opts.token.is_some(),
        "listening on {} (not loopback) needs a token: --token, PERPETUAL_TOKEN or serve.token \
         in perpetual.toml; every request must then carry `Authorization: Bearer <token>`",
        opts.addr
    );
    Ok(())
}

/// What every handler shares.
pub(crate) struct App {
    pub root: Root,
    pub config: Config,
    pub readers: Readers,
    pub auth: auth::Auth,
    pub live: tokio::sync::watch::Receiver<Arc<live::Update>>,
    /// `/api/status`, computed once for everyone asking at the same time.
    pub status: coalesce::Coalesce,
}

/// Lowers the calling thread's CPU priority to nice 10. Every thread of the server runs
/// so (its runtime's workers, the blocking pool where the reads run, the live feed), so on
/// a busy machine the kernel gives the CPU to the writer first and a crowd of readers
/// slows ingestion as little as possible. Linux keeps a nice value per thread, which is
/// what makes this right inside `perpetual run --serve` too: the loop's threads keep
/// theirs. Elsewhere it does nothing.
pub(crate) fn yield_to_the_writer() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its arguments; `who` 0 is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// A running server. Dropping it stops it (as [`Server::stop`] does).
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Server {
    /// Binds `opts.addr` and serves `root` from threads of its own; returns once it
    /// listens. The database is opened (and migrated) once here; every read after that
    /// is read-only.
    pub fn start(root: &Root, config: &Config, opts: &Options) -> Result<Server> {
        check_bind(opts)?;
        // Create the layout and bring the schema up to date, as every command does, so
        // the read-only connections find the schema they expect.
        root.ensure_layout(config)?;
        drop(crate::store::open(&root.db_path())?);
        let listener = std::net::TcpListener::bind(opts.addr)
            .with_context(|| format!("cannot listen on {}", opts.addr))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let readers = Readers::new(root.db_path(), 4);
        let stop_live = Arc::new(AtomicBool::new(false));
        let (live_rx, live_thread) = live::start(
            root.clone(),
            config.clone(),
            readers.clone(),
            stop_live.clone(),
        )?;
        let app = Arc::new(App {
            root: root.clone(),
            config: config.clone(),
            readers,
            auth: auth::Auth::new(opts.token.as_deref(), addr),
            live: live_rx,
            status: coalesce::Coalesce::default(),
        });
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(16)
            .thread_name("serve")
            .on_thread_start(yield_to_the_writer)
            .enable_all()
            .build()
            .context("cannot start the server's runtime")?;
        let thread = std::thread::Builder::new()
            .name("serve".into())
            .spawn(move || -> Result<()> {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, router(app))
                        .with_graceful_shutdown(async move {
                            let _ = shutdown_rx.await;
                            // Ending the live feed ends every open event stream, which
                            // lets the graceful shutdown finish.
                            stop_live.store(true, Ordering::SeqCst);
                        })
                        .await
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
                let _ = live_thread.join();
                served.context("the server failed")
            })
            .context("cannot start the server thread")?;
        Ok(Server {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Where it listens (with the port chosen when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the server to stop: open event streams end, requests in flight finish.
    pub fn request_stop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }

    /// Waits until the server has stopped (after [`Server::request_stop`], or an error).
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the server thread panicked"))?,
            None => Ok(()),
        }
    }

    /// Stops the server and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.request_stop();
        self.wait()
    }

    /// A handle that can ask this server to stop from another thread (a signal handler).
    pub fn stopper(&mut self) -> Stopper {
        Stopper {
            shutdown: Arc::new(std::sync::Mutex::new(self.shutdown.take())),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks a [`Server`] to stop, from any thread.
#[derive(Clone)]
pub struct Stopper {
    shutdown: Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

impl Stopper {
    /// Asks the server to stop (once; later calls do nothing).
    pub fn stop(&self) {
        if let Some(s) = self.shutdown.lock().ok().and_then(|mut s| s.take()) {
            let _ = s.send(());
        }
    }
}

/// Every route. Anything else is a 404; every method but GET and HEAD a 405.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::faucet))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/sessions", get(pages::sessions))
        .route("/sessions/{id}", get(pages::session))
        .route("/files", get(pages::files))
        .route("/events", get(live::events))
        .route("/api/status", get(api::status))
        .route("/api/stats", get(api::stats))
        .route("/api/tasks", get(api::tasks))
        .route("/api/files", get(api::files))
        .route("/metrics", get(metrics::metrics))
        .route("/charts/growth.svg", get(charts::growth))
        .route("/charts/{agent}/{file}", get(charts::workbench))
        .route("/static/faucet.css", get(pages::css))
        .route("/static/faucet.js", get(pages::js))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::guard,
        ))
        .with_state(app)
}

/// Errors a handler answers with: a clean 4xx for what the client got wrong, 500 for
/// what went wrong here (logged).
#[derive(Debug)]
pub(crate) enum Failure {
    /// 400 with the reason.
    BadRequest(String),
    /// 404 with what was not found.
    NotFound(String),
    /// 500; the cause is logged, the client gets a short message.
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Internal(e)
    }
}

impl axum::response::IntoResponse for Failure {
    fn into_response(self) -> axum::response::Response {
        use axum::http::StatusCode;
        let (status, text) = match self {
            Failure::BadRequest(t) => (StatusCode::BAD_REQUEST, t),
            Failure::NotFound(t) => (StatusCode::NOT_FOUND, t),
            Failure::Internal(e) => {
                tracing::error!("serve: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error: {e:#}"),
                )
            }
        };
        (status, [("cache-control", "no-store")], text).into_response()
    }
}
