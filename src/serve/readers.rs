//! Read-only database connections for the handlers: a few WAL readers kept open and
//! lent one at a time on tokio's blocking pool. A semaphore bounds how many reads run at
//! once, so a crowd of clients queues here (cheaply, as futures) instead of as threads
//! and connections competing with the writer for two cores.

use anyhow::{Context, Result};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// The pool (cheap to clone: one shared inside).
#[derive(Clone)]
pub(crate) struct Readers {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    /// At most `size` reads at once over the database at `path`.
    pub fn new(path: PathBuf, size: usize) -> Readers {
        Readers {
            inner: Arc::new(Inner {
                path,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(size),
            }),
        }
    }

    /// A new read-only connection of its own (for the live feed's thread).
    pub fn open(&self) -> Result<Connection> {
        crate::store::open_reader(&self.inner.path)
    }

    /// Runs `f` on a read-only connection, off the async threads. Each statement reads
    /// its own snapshot, as the CLI's do: no read transaction spans a whole page, since
    /// an open snapshot keeps SQLite from restarting the WAL.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .context("the server is stopping")?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                Some(c) => c,
                None => crate::store::open_reader(&inner.path)?,
            };
            let out = f(&conn);
            // A connection that failed is dropped rather than lent again.
            if out.is_ok()
                && let Ok(mut idle) = inner.idle.lock()
            {
                idle.push(conn);
            }
            out
        })
        .await
        .context("a read was cancelled")?
    }
}
