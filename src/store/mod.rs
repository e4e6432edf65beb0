//! Every SQL statement lives under this module: the schema and its migrations, the
//! pragmas, the ledger, the pair writer's statements and the filter over its merged
//! keys (`store::key_filter`), the read-back queries, the task stack and its templates
//! (`store::tasks`), sessions and checkpoints (`store::sessions`), the loop's agents,
//! runs and assigner log (`store::agents`), and consistent backups (`store::backup`), and the dataset workbench's own tables
//! (`store::dataset`; pairs read as documents in `store::documents`, embeddings batches
//! and vectors in `store::embeddings`, split assignments in `store::splits`); other
//! SQLite databases read as sources of pairs (`store::source_db`); the tasks' history
//! and the commands people and agents ran (`store::history`), the daily report's queries
//! and the loop's heartbeats (`store::daily`).
//!
//! One place owns the connection settings so that tests (in memory) and the binary
//! run the same code path: WAL so readers never block the writer, `synchronous =
//! NORMAL` (durable at each checkpoint of the WAL, safe against corruption), foreign
//! keys on, and a busy timeout so a reader and the writer wait instead of failing. The
//! connections `open` and `open_closing` make write their WAL through `store::vfs`,
//! which hands a transaction's frames to the kernel in 64 KiB pieces.

pub mod agents;
pub mod backup;
pub mod daily;
pub mod dataset;
pub mod documents;
pub mod embeddings;
pub mod history;
pub mod key_filter;
pub mod ledger;
pub mod migrations;
pub mod pairs;
pub mod sessions;
pub mod source_db;
pub mod splits;
pub mod stats;
pub mod tasks;
pub mod vfs;
pub mod wal;

use anyhow::{Context, Result};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
/// The connection writes its WAL through [`vfs`], in large writes.
pub fn open(path: &Path) -> Result<Connection> {
    create(path);
    let conn =
        vfs::open(path).with_context(|| format!("cannot open database {}", path.display()))?;
    set_up(&conn, path)?;
    Ok(conn)
}

/// Makes the database at `path` when nothing is there yet: neither the file nor a WAL
/// or a rollback journal of it. SQLite makes a new database in WAL mode with four syncs
/// (the switch to WAL goes through a rollback journal) and then commits the schema's
/// pages into the WAL, which the first writer's close copies again: 6 to 10 ms before a
/// fresh root's first pair. Here SQLite writes the same database (the page size, the
/// migrations, WAL mode) into a file of its own beside `path` with no journal and no
/// syncs; the file is synced once, so that it is on disk before any WAL frame refers to
/// it, and moved to `path` unless something got there first (another process making the
/// same root: then this one's is dropped and `path` opened as it is), and the directory
/// synced. 4 to 8 ms, the sync 0.6 to 4 of them (BENCHMARKS.md, "End to end",
/// fourteenth sitting). A crash before the move leaves only the temporary file
/// (`.NAME.new-XXXXXX`), never a partial database at `path`. Where any of it fails (a
/// file system that can neither rename without replacing nor link, say), SQLite makes
/// the database at `path` as it always did: this only makes it sooner.
fn create(path: &Path) {
    let side = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    if path.as_os_str().is_empty()
        || path.as_os_str() == ":memory:"
        || [path.to_owned(), side("-wal"), side("-journal")]
            .iter()
            .any(|p| p.symlink_metadata().is_ok())
    {
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let made = (|| -> Result<()> {
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}.new-"))
            // SQLite's own mode for a new database (SQLITE_DEFAULT_FILE_PERMISSIONS),
            // which its WAL and shared memory take from it; the umask applies.
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)?
            .into_temp_path();
        let conn = Connection::open(&temp)?;
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
        ))?;
        migrations::migrate(&conn)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        anyhow::ensure!(mode == "wal", "SQLite kept journal mode {mode}");
        conn.close().map_err(|(_, e)| e)?;
        std::fs::File::open(&temp)?.sync_all()?;
        match temp.persist_noclobber(path) {
            // As SQLite does after creating a file it syncs, and as it does, without
            // failing on a file system that cannot sync a directory.
            Ok(()) => {
                if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                    tracing::debug!("cannot sync {}: {e}", dir.display());
                }
            }
            // Made meanwhile by another process: that one is the database.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.error.into()),
        }
        Ok(())
    })();
    if let Err(e) = made {
        tracing::debug!("{}: left to SQLite to make: {e:#}", path.display());
    }
}

/// The settings and the migrations of [`open`] and [`open_closing`].
fn set_up(conn: &Connection, path: &Path) -> Result<()> {
    configure(conn).with_context(|| format!("cannot configure database {}", path.display()))?;
    migrations::migrate(conn).with_context(|| format!("cannot migrate database {}", path.display()))
}

/// A read-only connection to an existing database, for readers that must never write
/// (the web faucet): WAL lets it read while the writer commits. Fails when the schema is
/// not the one this build writes, so a reader never misreads an older or newer layout
/// (open it once with [`open`] first to migrate).
pub fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open database {} for reading", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    anyhow::ensure!(
        version == migrations::latest(),
        "database {} has schema version {version}, this perpetual reads version {}",
        path.display(),
        migrations::latest()
    );
    Ok(conn)
}

/// An in-memory database with the same settings and schema, for tests and benches.
pub fn open_in_memory() -> Result<Connection> {
    let conn = Connection::open_in_memory()?;
    configure(&conn)?;
    migrations::migrate(&conn)?;
    Ok(conn)
}

/// Syncs the database file (`fdatasync`) through the descriptor `conn`'s SQLite holds,
/// by calling its VFS's `xSync`, as a checkpoint that completes would. A second
/// descriptor of the file, opened and closed beside SQLite, would be wrong: closing any
/// descriptor drops every POSIX lock the process holds on the file, the other
/// connections' included ("How To Corrupt An SQLite Database File", 2.2).
pub fn sync_database_file(conn: &Connection) -> Result<()> {
    use rusqlite::ffi;
    let file = sqlite_file(conn, ffi::SQLITE_FCNTL_FILE_POINTER)?;
    // SAFETY: a non-null `sqlite3_file` from SQLite, whose `pMethods` is null for a file
    // that is not open and otherwise points to its VFS's method table.
    let sync = unsafe { file.as_ref() }
        .and_then(|f| unsafe { f.pMethods.as_ref() })
        .and_then(|m| m.xSync)
        .context("the database file is not open (in memory?)")?;
    // SAFETY: the method of this very file, called as SQLite calls it.
    let rc = unsafe { sync(file, ffi::SQLITE_SYNC_NORMAL | ffi::SQLITE_SYNC_DATAONLY) };
    anyhow::ensure!(
        rc == ffi::SQLITE_OK,
        "cannot sync the database file (SQLite code {rc})"
    );
    Ok(())
}

/// The `sqlite3_file` SQLite holds for `conn`'s main database: the database file
/// itself (`SQLITE_FCNTL_FILE_POINTER`) or its journal or WAL
/// (`SQLITE_FCNTL_JOURNAL_POINTER`). It lives as long as the connection keeps that file
/// open; it may be null, or a file that is not open (null `pMethods`).
pub(crate) fn sqlite_file(
    conn: &Connection,
    op: std::os::raw::c_int,
) -> Result<*mut rusqlite::ffi::sqlite3_file> {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn.handle()` is a live connection used by this thread only; both ops
    // write one `sqlite3_file` pointer into `file`.
    let rc = unsafe {
        ffi::sqlite3_file_control(conn.handle(), c"main".as_ptr(), op, (&raw mut file).cast())
    };
    anyhow::ensure!(
        rc == ffi::SQLITE_OK,
        "cannot reach the database's file (SQLite code {rc})"
    );
    Ok(file)
}

/// Flushes the WAL to disk, making every committed transaction durable. (A second
/// descriptor of the WAL is safe to close: SQLite's locks are on the database file
/// and the `-shm`, never on the WAL; see [`sync_database_file`] for the database file.)
pub fn sync_wal(conn: &Connection) -> Result<()> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(()); // in memory
    };
    let wal = format!("{db}-wal");
    match std::fs::File::open(&wal) {
        Ok(f) => f.sync_data().with_context(|| format!("cannot sync {wal}")),
        // No WAL: everything is checkpointed into the database file already.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot open {wal}")),
    }
}

/// How many frames at the start of a WAL file (its bytes) its header's salt still
/// validates: what the next open reads back from it. SQLite's WAL format: a 32-byte
/// header, then frames of a 24-byte header and a page, a frame's salt at bytes 8..16
/// of its header. A WAL shorter than its header (SQLite creates it empty at an open)
/// has none.
pub fn wal_frames_to_read_back(wal: &[u8], page_size: usize) -> usize {
    let Some(salt) = wal.get(16..24) else {
        return 0;
    };
    (0..)
        .map(|i| 32 + i * (24 + page_size))
        .take_while(|&at| wal.get(at + 8..at + 16) == Some(salt))
        .count()
}

/// The sizes of WAL file a closing connection leaves on disk ([`close`]): from 4 MiB,
/// where deleting it (2 ms here) starts to cost more than the syncs of keeping it, to
/// the `journal_size_limit` a running writer truncates it back to. Outside, it is
/// deleted as SQLite does: a fresh root's first small run leaves 1.1 MB.
pub const WAL_KEPT_BYTES: std::ops::RangeInclusive<u64> = (4 << 20)..=(64 << 20);

/// How much of a kept WAL may still hold valid frames: above this, [`close`] first makes
/// the WAL start over, so that whoever opens the database next reads back (and copies
/// again) at most this much of it instead of the whole run's frames.
pub const WAL_RECOVER_BYTES: i64 = 1 << 20;

/// Closes `conn`, leaving a WAL file of [`WAL_KEPT_BYTES`] on disk for the next writer
/// to write over, every frame of it copied into the database file.
///
/// SQLite's last connection to close copies the WAL into the database file, syncs it,
/// and then deletes the WAL, which costs in proportion to its size (freeing its pages
/// and blocks): 12 ms for the 40 MB a 20,000-pair `ingest` leaves, a tenth of the run
/// (BENCHMARKS.md, "End to end", tenth sitting), and the next writer then allocates it
/// again. With SQLite's persistent WAL (`SQLITE_FCNTL_PERSIST_WAL`) the close copies
/// and syncs as before and leaves the file. The next connection reads back from it the
/// frames its header's salt still validates, those since the WAL last started over,
/// and copies them again. So when those exceed [`WAL_RECOVER_BYTES`] and every one is
/// copied, one write (the schema version, rewritten as it is) makes the WAL start over
/// first, and the next open reads one frame. The database file alone holds every
/// committed transaction after the close, as before.
///
/// A connection that `committed` nothing closes without a checkpoint
/// (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`): the one frame a kept WAL still validates was
/// copied by the close that kept it, and copying it again cost every reading command
/// (`status`, an `ingest` of an empty inbox) three syncs, 4 to 6 ms. Only after a
/// writer that did not close cleanly, or one that closed while another connection
/// still read an older snapshot, can that leave frames in the WAL and not yet in the
/// database file: on disk (a writer's close syncs the WAL), where the next writer
/// copies them.
///
/// A connection that is not the last to close copies what it can and leaves the rest
/// to the last (SQLite's own rule). Errors are the close's own: a step before it that
/// fails is logged, and the close goes on as SQLite's (copying, and deleting the WAL
/// unless it was already set to stay).
pub fn close(conn: Connection, committed: bool) -> Result<()> {
    if let Some(db) = conn.path().filter(|p| !p.is_empty()) {
        let wal_bytes = std::fs::metadata(format!("{db}-wal")).map_or(0, |m| m.len());
        if WAL_KEPT_BYTES.contains(&wal_bytes) {
            let kept = if committed {
                keep_wal(&conn)
            } else {
                conn.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    true,
                )
                .map(drop)
                .map_err(anyhow::Error::from)
            };
            if let Err(e) = kept {
                tracing::warn!("{db}: keeping the WAL: {e:#}");
            }
        }
    }
    conn.close()
        .map_err(|(_, e)| anyhow::Error::new(e).context("cannot close the database"))
}

/// A connection that closes through [`close`] when it goes out of scope, knowing
/// whether it committed anything: the one every command of the CLI opens
/// ([`open_closing`]).
pub struct ClosingConnection {
    conn: Option<Connection>,
    committed: Arc<AtomicBool>,
}

/// [`open`], for a connection that closes through [`close`] when dropped. A commit
/// hook, set before the migrations run, records whether the connection commits
/// anything.
pub fn open_closing(path: &Path) -> Result<ClosingConnection> {
    create(path);
    let conn =
        vfs::open(path).with_context(|| format!("cannot open database {}", path.display()))?;
    let committed = Arc::new(AtomicBool::new(false));
    let seen = committed.clone();
    conn.commit_hook(Some(move || {
        seen.store(true, Ordering::Relaxed);
        false // let the commit go on
    }));
    set_up(&conn, path)?;
    Ok(ClosingConnection {
        conn: Some(conn),
        committed,
    })
}

impl std::ops::Deref for ClosingConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("open until dropped")
    }
}

impl std::ops::DerefMut for ClosingConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("open until dropped")
    }
}

impl Drop for ClosingConnection {
    fn drop(&mut self) {
        let committed = self.committed.load(Ordering::Relaxed);
        if let Some(conn) = self.conn.take()
            && let Err(e) = close(conn, committed)
        {
            tracing::warn!("{e:#}");
        }
    }
}

/// [`close`]'s preparation: persistent WAL, no truncation at the close, the WAL
/// started over when it holds more than [`WAL_RECOVER_BYTES`] of frames, all copied,
/// and synced.
fn keep_wal(conn: &Connection) -> Result<()> {
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: a live connection used by this thread only; SQLITE_FCNTL_PERSIST_WAL
    // reads and writes the int it is given, which outlives the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    };
    anyhow::ensure!(
        rc == rusqlite::ffi::SQLITE_OK,
        "cannot keep the WAL (SQLite code {rc})"
    );
    // A non-negative limit would have the close truncate the kept WAL to nothing.
    conn.execute_batch("PRAGMA journal_size_limit = -1")?;
    let (busy, frames, copied): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    if busy == 0 && frames == copied && frames * page > WAL_RECOVER_BYTES {
        // Any write starts the WAL over once every frame is copied (unless a reader
        // still reads an older snapshot: then it appends, and the next open reads
        // more). IMMEDIATE, so that no other process changes the version between the
        // read and the write.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let rewritten = conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .and_then(|v| conn.execute_batch(&format!("PRAGMA user_version = {v}; COMMIT")));
        if rewritten.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        rewritten?;
    }
    // A checkpoint syncs the WAL before it copies, so every frame copied is on disk.
    // Frames a reader's snapshot kept from being copied may not be, and the last to
    // close may be a connection that committed nothing, which does not checkpoint.
    if busy != 0 || frames != copied {
        sync_wal(conn)?;
    }
    Ok(())
}

/// The page size of a database perpetual creates (SQLite's default is 4 KiB). A pair
/// is about 1.4 KB: with 4 KiB pages the writer appended one WAL frame (two `pwrite`s,
/// a checksum, a page-cache slot) per 2.5 pairs; with 16 KiB pages `ingest` into a
/// fresh root took 11 to 15% less wall clock and 4 to 19% less CPU (BENCHMARKS.md,
/// "End to end", sixth sitting). A database created before keeps its own page size: SQLite changes it only
/// by a `VACUUM` outside WAL mode.
pub const PAGE_SIZE: u32 = 16384;

/// The WAL's size at which a writer's commit copies it into the database file.
pub const WAL_AUTOCHECKPOINT_BYTES: i64 = 64 << 20;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // The writer caches its ledger's, the tail's and each key run's statements
    // (`store::pairs::run_lookup_sql`): more than rusqlite's 16 would evict one another.
    conn.set_prepared_statement_cache_capacity(64);
    // Before anything creates the file's first page (journal_mode does); a no-op on an
    // existing database, which keeps the page size it was created with.
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE};"))?;
    // journal_mode returns a row, so it cannot go through execute_batch.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         -- 64 MiB of page cache: lookups of merged keys (store::pairs) land on
         -- random pages, which should stay in memory as the table grows.
         PRAGMA cache_size = -65536;
         -- The WAL is truncated back to 64 MiB after a checkpoint.
         PRAGMA journal_size_limit = 67108864;",
    )?;
    // Checkpoint the WAL every 64 MiB of pages instead of 1,000 pages: small
    // transactions rewrite the same index pages, and a rarer checkpoint copies each page
    // once. Measured: 2.3x the writer's speed at 500-pair transactions (BENCHMARKS.md).
    set_wal_autocheckpoint(conn, WAL_AUTOCHECKPOINT_BYTES)
}

/// Sets `wal_autocheckpoint` to `bytes` of WAL (the pragma counts pages).
pub fn set_wal_autocheckpoint(conn: &Connection, bytes: i64) -> rusqlite::Result<()> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {};", bytes / page))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_frames(wal: &Path, page: usize) -> usize {
        wal_frames_to_read_back(&std::fs::read(wal).unwrap(), page)
    }

    fn write_rows(conn: &Connection, rows: usize) {
        conn.execute_batch("CREATE TABLE IF NOT EXISTS blobs (b BLOB); BEGIN;")
            .unwrap();
        for _ in 0..rows {
            conn.execute("INSERT INTO blobs VALUES (randomblob(4000))", [])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_closing_writer_keeps_a_mid_sized_wal_copied_and_started_over_and_a_reader_leaves_it_alone()
    {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("perpetual.db");
        let wal = dir.path().join("perpetual.db-wal");
        let page = PAGE_SIZE as usize;
        // 8 MB of rows in one transaction: a WAL of about 8 MB, in WAL_KEPT_BYTES.
        let conn = open_closing(&db).unwrap();
        write_rows(&conn, 2000);
        let frames = std::fs::metadata(&wal).unwrap().len() as usize / (24 + page);
        assert!(frames * page > WAL_RECOVER_BYTES as usize);
        drop(conn);
        let len = std::fs::metadata(&wal).expect("the WAL is kept").len();
        assert!(WAL_KEPT_BYTES.contains(&len), "{len}");
        assert_eq!(
            valid_frames(&wal, page),
            1,
            "started over: one frame to read back"
        );
        // The database file alone holds every row.
        let alone = dir.path().join("alone.db");
        std::fs::copy(&db, &alone).unwrap();
        let rows: i64 = Connection::open(&alone)
            .unwrap()
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2000);
        // A connection that commits nothing writes neither file at its close.
        let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let before = (modified(&db), modified(&wal));
        let reader = open_closing(&db).unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        drop(reader);
        assert_eq!((modified(&db), modified(&wal)), before);
        // The next writer writes over the kept WAL, and closes as the first did.
        let conn = open_closing(&db).unwrap();
        write_rows(&conn, 2000);
        drop(conn);
        assert_eq!(valid_frames(&wal, page), 1);
        let rows: i64 = Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 4000);
    }

    /// A schema object: its type, name and definition.
    type Object = (String, String, Option<String>);

    /// Each schema object, and the database's journal mode, page size and version, as
    /// SQLite reports them.
    fn layout(conn: &Connection) -> (Vec<Object>, String, i64, i64) {
        let objects = conn
            .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY type, name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mode = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let page = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let version = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        (objects, mode, page, version)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_new_database_is_made_beside_and_moved_in_as_sqlite_would_have_made_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("perpetual.db");
        let made = open(&db).unwrap();
        assert_eq!(
            names(dir.path()),
            ["perpetual.db", "perpetual.db-shm", "perpetual.db-wal"],
            "no temporary file left"
        );
        // The schema is in the database file itself, not in the WAL as SQLite's own
        // making leaves it (below).
        let page = PAGE_SIZE as usize;
        let wal = dir.path().join("perpetual.db-wal");
        assert_eq!(valid_frames(&wal, page), 0);
        assert!(std::fs::metadata(&db).unwrap().len() > 50 * page as u64);
        // SQLite's own way: a database file that exists, empty, is made by the pragmas
        // and the migrations on the connection itself.
        let own = dir.path().join("own.db");
        std::fs::File::create(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o644)).unwrap();
        let theirs = open(&own).unwrap();
        assert!(valid_frames(&dir.path().join("own.db-wal"), page) > 50);
        let (objects, mode, page, version) = layout(&made);
        assert!(objects.len() > 50, "{objects:?}");
        assert_eq!(
            (mode.as_str(), page, version),
            ("wal", i64::from(PAGE_SIZE), migrations::latest())
        );
        assert_eq!((objects, mode, page, version), layout(&theirs));
        let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_of(&db), mode_of(&own));
        // It takes writes, and they are in the file after the close.
        made.execute_batch("INSERT INTO dataset_settings (name, value) VALUES ('probe', 'x')")
            .unwrap();
        drop(made);
        let again = open(&db).unwrap();
        let value: String = again
            .query_row(
                "SELECT value FROM dataset_settings WHERE name = 'probe'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(value, "x");
    }

    #[test]
    fn a_wal_or_journal_without_its_database_leaves_the_making_to_sqlite() {
        for side in ["-wal", "-journal"] {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("perpetual.db");
            let stale = dir.path().join(format!("perpetual.db{side}"));
            std::fs::write(&stale, b"left by someone").unwrap();
            create(&db);
            assert!(!db.exists(), "{side}: nothing made beside it");
            assert_eq!(names(dir.path()), [format!("perpetual.db{side}")]);
        }
    }

    #[test]
    fn a_database_that_cannot_be_made_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("missing").join("perpetual.db");
        let e = open(&db).expect_err("no folder to make it in");
        assert_eq!(
            format!("{e}"),
            format!("cannot open database {}", db.display())
        );
        assert!(names(dir.path()).is_empty(), "nothing left behind");
    }

    #[test]
    fn openers_making_one_new_database_at_once_all_open_the_same_one() {
        // Threads here; the move that never replaces is the same between processes.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("perpetual.db");
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for i in 0..8 {
                let (db, start) = (&db, &start);
                s.spawn(move || {
                    start.wait();
                    let conn = open(db).unwrap();
                    conn.execute(
                        "INSERT INTO dataset_settings (name, value) VALUES (?1, 'x')",
                        [format!("opener {i}")],
                    )
                    .unwrap();
                });
            }
        });
        let conn = open(&db).unwrap();
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM dataset_settings WHERE name LIKE 'opener %'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 8, "every opener wrote into the one database");
        drop(conn);
        // The last close deletes the WAL; the temporary files that lost are gone.
        assert_eq!(names(dir.path()), ["perpetual.db"]);
    }

    #[test]
    fn a_closing_writer_deletes_a_small_wal_and_a_large_one() {
        for (rows, kept) in [(100, false), (17_000, false)] {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("perpetual.db");
            let conn = open_closing(&db).unwrap();
            // The writer's own autocheckpoint would copy and restart the WAL at 64 MiB.
            set_wal_autocheckpoint(&conn, 1 << 30).unwrap();
            write_rows(&conn, rows);
            drop(conn);
            assert_eq!(
                dir.path().join("perpetual.db-wal").exists(),
                kept,
                "{rows} rows"
            );
        }
    }
}
