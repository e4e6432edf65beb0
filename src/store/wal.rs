//! The kept WAL file and the page cache.
//!
//! The close keeps a WAL file of 4 to 64 MiB on disk ([`super::close`]) and the next
//! writer writes its frames over it from the start. A frame is a 24-byte header and a
//! page (16,408 bytes with 16 KiB pages), so frames do not line up with the kernel's 4
//! KiB pages: the first and the last page a frame covers are written in part. A page
//! written in part that is not in the page cache is read from the disk first, and the
//! writer waits for it. A kept WAL stays in the cache while it is used, but a kernel may
//! reclaim idle page cache (this VM's DAMON evicts unmapped pages idle for about a
//! minute): the next `ingest` into a root whose WAL was evicted then waited for one
//! disk read per frame, 2.2 to 2.5 times as long as with the WAL cached
//! (BENCHMARKS.md, "End to end", seventeenth sitting).
//!
//! [`zero_evicted_tail`] turns the part of the file that holds no frame SQLite can read
//! into unwritten extents where its pages are not in the cache (`FALLOC_FL_ZERO_RANGE`:
//! the blocks stay allocated, their old bytes are forgotten): a page written in part
//! there is filled with zeros instead of read. Pages still in the cache are left alone,
//! since writing over them is cheaper than over anything else.

use anyhow::{Context, Result};
use rusqlite::Connection;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// The WAL header's magic numbers (little- and big-endian checksums).
const MAGIC: [u32; 2] = [0x377f_0682, 0x377f_0683];
/// The WAL header's length; frames follow it.
const HEADER: u64 = 32;
/// A frame's header, before its page (`store::vfs` reads the commit's size in it).
pub(crate) const FRAME_HEADER: u64 = 24;
/// How many frames the header's salt may validate before [`zero_evicted_tail`] gives
/// up: each frame read can be a disk read. The close starts the WAL over, so a kept WAL
/// has one or two.
const MAX_FRAMES_WALKED: u64 = 64;
/// Pages, spread over the range past the live frames, looked at before the whole range:
/// when all are cached, the WAL is taken as cached.
const SAMPLED_PAGES: usize = 32;

/// Forgets the bytes of the kept WAL file of `conn`'s database that no reader can need
/// and that are not in the page cache; returns how many bytes it forgot. Call it with
/// SQLite's write lock held (inside `BEGIN IMMEDIATE`, before the transaction writes),
/// so that no connection appends a frame meanwhile.
///
/// What counts as needed: every frame from the start whose salt is the header's, the
/// frames SQLite's recovery can read (it also stops at a bad checksum or after the last
/// commit, so this keeps at least as much as SQLite would). Nothing is done when the
/// header is not a WAL header, when more than [`MAX_FRAMES_WALKED`] frames carry its
/// salt, or when the file system cannot zero a range (`EOPNOTSUPP`): the frames are
/// then written over as before.
pub fn zero_evicted_tail(conn: &Connection) -> Result<u64> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(0); // in memory
    };
    let path = format!("{db}-wal");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW) // as SQLite opens it
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot open {path}")),
    };
    let len = file.metadata()?.len();
    let Some(start) = dead_from(&file, len).with_context(|| format!("cannot read {path}"))? else {
        return Ok(0);
    };
    let mapped = Mapped::new(&file, start, len - start)
        .with_context(|| format!("cannot map {path} to see which pages are cached"))?;
    let pages = mapped.pages();
    // A cached WAL (between a watcher's bursts, or an ingest soon after the last) costs
    // a few pages spread over the range; the whole range, a page cache lookup per page
    // (1.4 ms for 98 MB), only when one of them is out.
    let mut all_cached = true;
    for page in (0..pages).step_by(pages.div_ceil(SAMPLED_PAGES).max(1)) {
        if !mapped.resident(page, 1)?[0] {
            all_cached = false;
            break;
        }
    }
    if all_cached {
        return Ok(0);
    }
    let resident = mapped.resident(0, pages)?;
    let mut zeroed = 0;
    for (first, pages) in runs_of_evicted(&resident) {
        let (at, bytes) = (start + first * os_page(), pages * os_page());
        let bytes = bytes.min(len - at);
        // SAFETY: a valid descriptor; the range lies within the file.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                at as libc::off_t,
                bytes as libc::off_t,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(zeroed);
            }
            return Err(e).with_context(|| format!("cannot zero a range of {path}"));
        }
        zeroed += bytes;
    }
    Ok(zeroed)
}

/// Where the bytes no frame SQLite can read begin, rounded up to a kernel page, or
/// `None` when nothing is to be done (see [`zero_evicted_tail`]).
fn dead_from(file: &File, len: u64) -> std::io::Result<Option<u64>> {
    if len < HEADER {
        return Ok(None);
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, 0)?;
    let word = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let page = u64::from(word(8));
    if !MAGIC.contains(&word(0)) || !(512..=65536).contains(&page) || !page.is_power_of_two() {
        return Ok(None);
    }
    let salt = &header[16..24];
    let frame = FRAME_HEADER + page;
    let mut valid = 0;
    loop {
        let at = HEADER + valid * frame;
        if at + frame > len {
            break;
        }
        if valid == MAX_FRAMES_WALKED {
            return Ok(None);
        }
        let mut frame_salt = [0u8; 8];
        file.read_exact_at(&mut frame_salt, at + 8)?;
        if frame_salt != salt {
            break;
        }
        valid += 1;
    }
    let start = (HEADER + valid * frame).div_ceil(os_page()) * os_page();
    Ok((start < len).then_some(start))
}

/// The kernel's page (4 KiB on x86-64): the unit of the page cache, of `mincore` and of a
/// mapping's offset.
fn os_page() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

/// A shared read-only mapping of a range of a file that is never read: only asked
/// which of its pages are in the page cache (`mincore`).
struct Mapped {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps `len` bytes of `file` from `start`, a multiple of [`os_page`].
    fn new(file: &File, start: u64, len: u64) -> std::io::Result<Mapped> {
        let len = len as usize;
        // SAFETY: a shared read-only mapping of a range of an open file, never
        // dereferenced, unmapped when dropped.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { addr, len })
    }

    /// How many kernel pages the range covers.
    fn pages(&self) -> usize {
        self.len.div_ceil(os_page() as usize)
    }

    /// Whether each of `count` pages from page `first` is in the page cache.
    fn resident(&self, first: usize, count: usize) -> std::io::Result<Vec<bool>> {
        let page = os_page() as usize;
        let len = (count * page).min(self.len - first * page);
        let mut vec = vec![0u8; count];
        // SAFETY: the range lies within the live mapping; `vec` holds a byte per page.
        let rc = unsafe { libc::mincore(self.addr.byte_add(first * page), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(vec.iter().map(|b| b & 1 == 1).collect())
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `new`, not used after.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The runs of pages not in the cache: (first page, pages).
fn runs_of_evicted(resident: &[bool]) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < resident.len() {
        if resident[i] {
            i += 1;
            continue;
        }
        let first = i;
        while i < resident.len() && !resident[i] {
            i += 1;
        }
        runs.push((first as u64, (i - first) as u64));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn runs_of_evicted_pages() {
        assert_eq!(runs_of_evicted(&[]), vec![]);
        assert_eq!(runs_of_evicted(&[true, true]), vec![]);
        assert_eq!(runs_of_evicted(&[false]), vec![(0, 1)]);
        assert_eq!(
            runs_of_evicted(&[false, false, true, false, true, true, false, false]),
            vec![(0, 2), (3, 1), (6, 2)]
        );
    }

    /// Drops the file's pages from the page cache, as a kernel reclaiming idle cache
    /// does (the pages must be clean: synced first).
    fn evict(path: &Path) {
        let f = File::open(path).unwrap();
        f.sync_all().unwrap();
        // SAFETY: a valid descriptor.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    fn resident(path: &Path) -> usize {
        let f = File::open(path).unwrap();
        let mapped = Mapped::new(&f, 0, f.metadata().unwrap().len()).unwrap();
        mapped
            .resident(0, mapped.pages())
            .unwrap()
            .iter()
            .filter(|r| **r)
            .count()
    }

    /// [`zero_evicted_tail`] under the write lock, as `Writer::begin` calls it.
    fn zeroed_as_a_writer_would(conn: &Connection) -> u64 {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let zeroed = zero_evicted_tail(conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        zeroed
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
            .unwrap()
    }

    /// A database whose WAL holds the frames of `live` rows that SQLite has not copied
    /// into the database file (its close does not checkpoint), written over the first
    /// frames of `stale` rows from before a restart (the rest of those stay in the file
    /// under the old salt). A row is a 4,000-byte blob, a transaction of its own.
    fn wal_with(dir: &Path, stale: usize, live: usize) -> std::path::PathBuf {
        let db = dir.join("w.db");
        let conn = super::super::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = -1;
             CREATE TABLE blobs (b BLOB);",
        )
        .unwrap();
        let put = |n: usize| {
            for _ in 0..n {
                conn.execute("INSERT INTO blobs VALUES (randomblob(4000))", [])
                    .unwrap();
            }
        };
        put(stale);
        // Copied, and the next commit starts the WAL over: the stale frames stay in the
        // file under the old salt.
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        put(live);
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        conn.close().unwrap();
        db
    }

    #[test]
    fn an_evicted_tail_is_zeroed_and_every_committed_frame_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_with(dir.path(), 200, 3);
        let wal = dir.path().join("w.db-wal");
        let before = std::fs::read(&wal).unwrap();
        let page = u32::from_be_bytes(before[8..12].try_into().unwrap()) as usize;
        let live = crate::store::wal_frames_to_read_back(&before, page);
        assert!(live >= 3, "{live} live frames");
        let os = os_page() as usize;
        let kept = (32 + live * (24 + page)).div_ceil(os) * os;
        assert!(
            before.len() > kept + 100 * page,
            "stale frames after the live ones"
        );
        let f = File::open(&wal).unwrap();
        assert_eq!(
            dead_from(&f, before.len() as u64).unwrap(),
            Some(kept as u64)
        );

        let conn = Connection::open(&db).unwrap();
        // Opening reads the live frames back; the kernel then evicts the whole file.
        assert_eq!(rows(&conn), 203);
        evict(&wal);
        assert_eq!(resident(&wal), 0);
        let zeroed = zeroed_as_a_writer_would(&conn);
        let after = std::fs::read(&wal).unwrap();
        assert_eq!(after.len(), before.len(), "the file keeps its size");
        assert_eq!(after[..kept], before[..kept], "every live frame as it was");
        // Reading the live frames' headers brought their pages back: those stay; the
        // rest is forgotten, a whole page at a time.
        let dead = (before.len() - kept) as u64;
        assert!(zeroed >= dead / 2 && zeroed <= dead, "{zeroed} of {dead}");
        let mut forgotten = 0;
        for (a, b) in after[kept..].chunks(os).zip(before[kept..].chunks(os)) {
            if a != b {
                assert!(a.iter().all(|x| *x == 0), "a page is zeroed whole or kept");
                forgotten += a.len() as u64;
            }
        }
        assert!(forgotten >= dead / 2 && forgotten <= zeroed);
        // The rows of the live frames are there, through SQLite and after a write.
        assert_eq!(rows(&conn), 203);
        conn.execute("INSERT INTO blobs VALUES (randomblob(4000))", [])
            .unwrap();
        drop(conn);
        let conn = Connection::open(&db).unwrap();
        assert_eq!(rows(&conn), 204);
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn pages_in_the_cache_are_left_to_be_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_with(dir.path(), 200, 1);
        let wal = dir.path().join("w.db-wal");
        let before = std::fs::read(&wal).unwrap(); // and in the cache now
        let os = os_page() as usize;
        assert!(resident(&wal) * os >= before.len() - os);
        let conn = Connection::open(&db).unwrap();
        assert_eq!(zeroed_as_a_writer_would(&conn), 0);
        assert_eq!(std::fs::read(&wal).unwrap(), before);
    }

    #[test]
    fn a_wal_of_many_live_frames_or_none_at_all_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        // More live frames than are walked: nothing is touched, even evicted.
        let db = wal_with(dir.path(), 400, 100);
        let wal = dir.path().join("w.db-wal");
        let before = std::fs::read(&wal).unwrap();
        let conn = Connection::open(&db).unwrap();
        assert_eq!(rows(&conn), 500);
        evict(&wal);
        assert_eq!(zeroed_as_a_writer_would(&conn), 0);
        assert_eq!(std::fs::read(&wal).unwrap(), before);
        assert_eq!(rows(&conn), 500);
        // No WAL file, or one shorter than its header, or not a WAL: nothing to do.
        let other = dir.path().join("o.db");
        let conn = Connection::open(&other).unwrap();
        assert_eq!(zero_evicted_tail(&conn).unwrap(), 0);
        std::fs::write(dir.path().join("o.db-wal"), [7u8; 20]).unwrap();
        assert_eq!(zero_evicted_tail(&conn).unwrap(), 0);
        std::fs::write(dir.path().join("o.db-wal"), vec![7u8; 100_000]).unwrap();
        evict(&dir.path().join("o.db-wal"));
        assert_eq!(zero_evicted_tail(&conn).unwrap(), 0);
        assert_eq!(
            std::fs::read(dir.path().join("o.db-wal")).unwrap(),
            vec![7u8; 100_000]
        );
    }
}
