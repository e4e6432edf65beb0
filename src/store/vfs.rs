//! A transaction's WAL frames reach the kernel in large writes: a VFS over SQLite's own
//! (`unix`) that gathers the frames a connection writes into its WAL and writes them in
//! pieces of [`PIECE_BYTES`], lined up with the file's offsets, before the commit
//! returns.
//!
//! SQLite writes a WAL frame as two `pwrite`s, its 24-byte header and its page: 16,408
//! bytes with 16 KiB pages, so no frame lines up with the kernel's pages. Into a new
//! file the kernel then allocates the page cache one small folio at a time; written in
//! pieces of 64 KiB that start and end on multiples of 64 KiB, it allocates folios of
//! that size. On this machine (Linux 6.18, ext4) the 39 MB of frames of a 20,000-pair
//! `ingest` took 24 to 33 ms of CPU written as SQLite writes them, and 10 to 13 ms in
//! such pieces, and the `fsync` after them took less too (BENCHMARKS.md, "End to end",
//! eighteenth sitting). The writer thread writes the frames, and it is the run's
//! critical path.
//!
//! What must hold, and how:
//! - **A commit returns only once its frames are in the file.** Another connection
//!   (another process) learns of new frames from the WAL index's header, which
//!   SQLite's commit writes after its frames. The frames gathered are written out when
//!   the page of the commit's last frame is written (the frame whose header carries
//!   the database's size in pages, which no other frame does), so that a failed write
//!   fails that write and with it the commit. As a second guard, whatever the order of
//!   SQLite's writes: the commit writes the index header in two copies with a memory
//!   barrier between them (`xShmBarrier`), a reader uses the header only when the two
//!   agree, and the barrier writes out what the connection's WAL gathered.
//! - **The transaction's writes over its own frames go to the file at once.** A page
//!   spilled from the page cache and changed since is written again in place, and at
//!   the commit, after the commit frame, SQLite rewrites the headers of the frames
//!   from there on with new checksums; after the last of them comes only the barrier.
//!   So a write below the end of what the open transaction has written (reset when
//!   it takes the WAL index's write lock) is not gathered, and its error is its own.
//! - **A file reads as it would without this layer.** Gathered bytes are written out
//!   before any other call on the WAL: a read, its size, a truncation, a sync, a file
//!   control, a close. Writes that do not continue the gathered bytes write them out
//!   first, so the file sees SQLite's writes in their order. Bytes still gathered when
//!   the write lock is released are frames of a transaction rolled back: written out,
//!   their error ignored.
//! - **A killed process loses nothing it would not have lost.** What a `kill -9` finds
//!   gathered belongs to a transaction that has not committed; the recovery of the WAL
//!   drops such frames in any case.
//! - **A failed write is not lost.** The error of a write-out is returned by the call
//!   that made it. Where that call cannot return one (the barrier), the next write,
//!   read, sync or truncation of the WAL returns it, which fails the transaction whose
//!   frames were dropped (a connection's gathered frames are always those of its open
//!   write transaction).
//!
//! Only the WAL gathers. The database file is written a page at a time by
//! checkpoints, and gathering those writes as well (until `SQLITE_FCNTL_CKPT_DONE`)
//! was 4% faster again, but a checkpoint that copies only part of the WAL records the
//! pages as copied right after `CKPT_DONE`, whose result SQLite ignores: a failed
//! write-out there could not stop it.
//!
//! [`open`] opens a connection through the VFS (the writer's, `store::open`); it is
//! registered once per process, not as SQLite's default.

use super::wal::FRAME_HEADER;
use rusqlite::{Connection, OpenFlags, ffi};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// The most a WAL gathers before it writes them out: 1 MiB (63 frames of 16 KiB pages).
pub const GATHER_BYTES: usize = 1 << 20;

/// The largest piece of a write-out. SQLite's `unix` VFS writes at most 128 KiB - 1
/// bytes a call (`seekAndWriteFd`); the pieces end on multiples of 64 KiB.
pub const PIECE_BYTES: usize = 64 << 10;

/// The VFS's name.
pub const NAME: &std::ffi::CStr = c"perpetual-gather";

/// Opens `path` as [`Connection::open`] does (read-write, created if missing), through
/// this VFS when it could be registered.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if install() {
        Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME)
    } else {
        Connection::open(path)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Main,
    Wal,
    Other,
}

/// SQLite's file handle as this VFS lays it out, in the `szOsFile` bytes SQLite
/// allocates: these fields, then the `unix` VFS's own file (`real`).
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    kind: Kind,
    /// The database's name as SQLite passes it (the database file's own name, or the
    /// one its WAL's name leads back to): the key of [`wals`].
    db_name: usize,
    /// The bytes gathered, to be written at `start` (a WAL's only).
    gathered: Vec<u8>,
    start: i64,
    /// The last frame header written was a commit frame's: its page ends the commit.
    commit_page_next: bool,
    /// The end of what the open write transaction has written into the WAL (gathered
    /// or not): a write below it rewrites one of the transaction's own frames.
    transaction_end: i64,
    /// Write-outs that only the barrier made (none while SQLite writes as it does):
    /// their errors could not be returned by the call that made them.
    barrier_write_outs: u64,
    /// The error of a write-out no call could return yet (`SQLITE_OK` if none).
    failed: c_int,
}

/// Where the `unix` VFS's file starts in a handle: after [`File`], 8-aligned.
const REAL_AT: usize = (std::mem::size_of::<File>() + 7) & !7;

impl File {
    fn methods(&self) -> Option<&ffi::sqlite3_io_methods> {
        // SAFETY: `real` points into the same allocation as `self`; its `pMethods` is
        // null or the unix VFS's static method table.
        unsafe { (*self.real).pMethods.as_ref() }
    }

    /// Writes out what is gathered, in pieces that end where the file's offset is a
    /// multiple of [`PIECE_BYTES`]. The error is the first failed piece's.
    fn write_out(&mut self) -> c_int {
        if self.gathered.is_empty() {
            return ffi::SQLITE_OK;
        }
        let Some(write) = self.methods().and_then(|m| m.xWrite) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut at = self.start;
        let mut rest = &self.gathered[..];
        let mut rc = ffi::SQLITE_OK;
        while !rest.is_empty() && rc == ffi::SQLITE_OK {
            let room = PIECE_BYTES - (at as usize % PIECE_BYTES);
            let (piece, after) = rest.split_at(room.min(rest.len()));
            // SAFETY: the unix VFS's write on its open file, with a buffer that lives
            // through the call.
            rc = unsafe { write(self.real, piece.as_ptr().cast(), piece.len() as c_int, at) };
            at += piece.len() as i64;
            rest = after;
        }
        self.gathered.clear();
        rc
    }

    /// [`Self::write_out`] where the caller cannot return the error: it is kept for the
    /// file's next write, read, sync or truncation.
    fn write_out_keeping(&mut self) {
        let rc = self.write_out();
        if rc != ffi::SQLITE_OK && self.failed == ffi::SQLITE_OK {
            self.failed = rc;
        }
    }

    /// Writes out what is gathered; the error of this or of an earlier write-out.
    fn settle(&mut self) -> c_int {
        let rc = self.write_out();
        let kept = std::mem::replace(&mut self.failed, ffi::SQLITE_OK);
        if kept != ffi::SQLITE_OK { kept } else { rc }
    }

    /// Gathers a write to the WAL, writing out first what it does not continue.
    fn gather(&mut self, bytes: &[u8], offset: i64) -> c_int {
        let continues = !self.gathered.is_empty()
            && self.start + self.gathered.len() as i64 == offset
            && self.gathered.len() + bytes.len() <= GATHER_BYTES;
        if !continues {
            let rc = self.settle();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            if self.gathered.capacity() == 0 {
                self.gathered.reserve_exact(GATHER_BYTES);
            }
            self.start = offset;
        }
        self.gathered.extend_from_slice(bytes);
        if bytes.len() as u64 == FRAME_HEADER {
            // A frame header: bytes 4..8 hold the database's size in pages after the
            // commit in a commit's last frame, and 0 in every other frame.
            self.commit_page_next = bytes[4..8] != [0; 4];
            ffi::SQLITE_OK
        } else if std::mem::take(&mut self.commit_page_next) {
            self.write_out()
        } else {
            ffi::SQLITE_OK
        }
    }
}

struct Registered {
    vfs: ffi::sqlite3_vfs,
    real: *mut ffi::sqlite3_vfs,
}
// SAFETY: written once in `install`, then only read; SQLite shares a VFS between all
// threads by design.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Option<Box<Registered>>> = OnceLock::new();

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    REGISTERED
        .get()
        .and_then(|r| r.as_ref())
        .map_or(std::ptr::null_mut(), |r| r.real)
}

/// The open WALs, by the name of their database (see [`File::db_name`]): how a database
/// file's `xShmBarrier` finds the WAL of its own connection.
fn wals() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    static WALS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    WALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers the VFS (not as SQLite's default), once per process. Returns whether it is
/// registered: it is not when SQLite has no `unix` VFS to build on.
fn install() -> bool {
    REGISTERED
        .get_or_init(|| {
            // SAFETY: callable at any time; it initialises SQLite if needed.
            let real = unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) };
            // SAFETY: a VFS SQLite returned lives as long as the process.
            let r = unsafe { real.as_ref() }?;
            let mut registered = Box::new(Registered {
                vfs: ffi::sqlite3_vfs {
                    iVersion: r.iVersion.min(3),
                    szOsFile: (REAL_AT + r.szOsFile as usize) as c_int,
                    mxPathname: r.mxPathname,
                    pNext: std::ptr::null_mut(),
                    zName: NAME.as_ptr(),
                    pAppData: std::ptr::null_mut(),
                    xOpen: Some(x_open),
                    xDelete: r.xDelete.and(Some(x_delete)),
                    xAccess: r.xAccess.and(Some(x_access)),
                    xFullPathname: r.xFullPathname.and(Some(x_full_pathname)),
                    xDlOpen: r.xDlOpen.and(Some(x_dl_open)),
                    xDlError: r.xDlError.and(Some(x_dl_error)),
                    xDlSym: r.xDlSym.and(Some(x_dl_sym)),
                    xDlClose: r.xDlClose.and(Some(x_dl_close)),
                    xRandomness: r.xRandomness.and(Some(x_randomness)),
                    xSleep: r.xSleep.and(Some(x_sleep)),
                    xCurrentTime: r.xCurrentTime.and(Some(x_current_time)),
                    xGetLastError: r.xGetLastError.and(Some(x_get_last_error)),
                    xCurrentTimeInt64: r.xCurrentTimeInt64.and(Some(x_current_time_int64)),
                    // SQLite's test harness overrides system calls; nothing here does.
                    xSetSystemCall: None,
                    xGetSystemCall: None,
                    xNextSystemCall: None,
                },
                real,
            });
            // SAFETY: the box lives in the static for the rest of the process, so the
            // pointer SQLite keeps stays valid; makeDflt 0: not the default.
            let rc = unsafe { ffi::sqlite3_vfs_register(&raw mut registered.vfs, 0) };
            (rc == ffi::SQLITE_OK).then_some(registered)
        })
        .is_some()
}

/// The handle SQLite passes, as this VFS's [`File`].
///
/// # Safety
/// `file` must be a handle this VFS's `xOpen` opened and SQLite has not closed.
unsafe fn file<'a>(file: *mut ffi::sqlite3_file) -> &'a mut File {
    // SAFETY: the caller's promise; SQLite calls a file's methods from one thread at a
    // time (a connection is not shared while in use).
    unsafe { &mut *file.cast::<File>() }
}

/// Calls the unix VFS's method `$m` on `$f`'s real file with the arguments that
/// follow, or returns `$none` where the unix VFS has no such method.
macro_rules! forward {
    ($f:expr, $m:ident, $none:expr $(, $arg:expr)*) => {
        match $f.methods().and_then(|m| m.$m) {
            // SAFETY: the unix VFS's method on its own open file, with SQLite's arguments.
            Some(method) => unsafe { method($f.real $(, $arg)*) },
            None => $none,
        }
    };
}

/// [`forward!`] once what `$f` gathered is written out; the error of that write-out
/// (or of an earlier one no call could return) instead if there is one.
macro_rules! forward_written {
    ($f:expr, $m:ident, $none:expr $(, $arg:expr)*) => {
        match $f.settle() {
            ffi::SQLITE_OK => forward!($f, $m, $none $(, $arg)*),
            rc => rc,
        }
    };
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    handle: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs();
    let kind = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        Kind::Main
    } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
        Kind::Wal
    } else {
        Kind::Other
    };
    let db_name = match kind {
        Kind::Main => name as usize,
        // SAFETY: SQLite opens a WAL with a name from its pager, which
        // sqlite3_filename_database leads back to the database's.
        Kind::Wal if !name.is_null() => unsafe { ffi::sqlite3_filename_database(name) as usize },
        _ => 0,
    };
    // SAFETY: SQLite allocated `szOsFile` bytes at `handle`, 8-aligned: room for a
    // `File` and, at REAL_AT, the unix VFS's file.
    unsafe {
        let real = handle.cast::<u8>().add(REAL_AT).cast::<ffi::sqlite3_file>();
        (*real).pMethods = std::ptr::null();
        let f = handle.cast::<File>();
        f.write(File {
            base: ffi::sqlite3_file {
                pMethods: std::ptr::null(),
            },
            real,
            kind,
            db_name,
            gathered: Vec::new(),
            start: 0,
            commit_page_next: false,
            transaction_end: 0,
            barrier_write_outs: 0,
            failed: ffi::SQLITE_OK,
        });
        let rc = match real_vfs.as_ref().and_then(|v| v.xOpen) {
            Some(open) => open(real_vfs, name, real, flags, out_flags),
            None => ffi::SQLITE_CANTOPEN,
        };
        if (*real).pMethods.is_null() {
            // Not open: SQLite will not call xClose.
            std::ptr::drop_in_place(f);
            (*handle).pMethods = std::ptr::null();
            return if rc == ffi::SQLITE_OK {
                ffi::SQLITE_CANTOPEN
            } else {
                rc
            };
        }
        (*handle).pMethods = &METHODS;
        if kind == Kind::Wal && db_name != 0 {
            let mut wals = wals();
            wals.retain(|&(db, _)| db != db_name);
            wals.push((db_name, f as usize));
        }
        rc
    }
}

unsafe extern "C" fn x_close(handle: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file it opened, once.
    let f = unsafe { file(handle) };
    let written = f.settle();
    if f.kind == Kind::Wal {
        wals().retain(|&(_, w)| w != handle as usize);
    }
    let rc = forward!(f, xClose, ffi::SQLITE_OK);
    // SAFETY: the `File` written by x_open, dropped once; SQLite frees the memory.
    unsafe {
        std::ptr::drop_in_place(handle.cast::<File>());
        (*handle).pMethods = std::ptr::null();
    }
    if written != ffi::SQLITE_OK {
        written
    } else {
        rc
    }
}

unsafe extern "C" fn x_read(
    handle: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward_written!(f, xRead, ffi::SQLITE_IOERR_READ, buf, amount, offset)
}

unsafe extern "C" fn x_write(
    handle: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    let size = usize::try_from(amount).unwrap_or(0);
    let rewrite = f.kind == Kind::Wal && offset < f.transaction_end;
    if f.kind == Kind::Wal {
        f.transaction_end = f.transaction_end.max(offset + i64::from(amount));
    }
    // A rewrite of one of the transaction's own frames (a page it wrote before, spilled
    // from the page cache, or the frame headers whose checksums SQLite recomputes at
    // the commit, after the commit frame) goes to the file at once, so that its error
    // is returned by this call: after the last of them comes only the barrier.
    if f.kind != Kind::Wal || rewrite || size >= GATHER_BYTES {
        return forward_written!(f, xWrite, ffi::SQLITE_IOERR_WRITE, buf, amount, offset);
    }
    // SAFETY: SQLite passes `amount` readable bytes at `buf`.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), size) };
    f.gather(bytes, offset)
}

unsafe extern "C" fn x_truncate(handle: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward_written!(f, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size)
}

unsafe extern "C" fn x_sync(handle: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward_written!(f, xSync, ffi::SQLITE_IOERR_FSYNC, flags)
}

unsafe extern "C" fn x_file_size(handle: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward_written!(f, xFileSize, ffi::SQLITE_IOERR_FSTAT, size)
}

unsafe extern "C" fn x_lock(handle: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(f, xLock, ffi::SQLITE_IOERR_LOCK, level)
}

unsafe extern "C" fn x_unlock(handle: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(f, xUnlock, ffi::SQLITE_IOERR_UNLOCK, level)
}

unsafe extern "C" fn x_check_reserved_lock(
    handle: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(
        f,
        xCheckReservedLock,
        ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
        out
    )
}

unsafe extern "C" fn x_file_control(
    handle: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    f.write_out_keeping();
    forward!(f, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
}

unsafe extern "C" fn x_sector_size(handle: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(f, xSectorSize, 4096)
}

unsafe extern "C" fn x_device_characteristics(handle: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(f, xDeviceCharacteristics, 0)
}

unsafe extern "C" fn x_shm_map(
    handle: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(
        f,
        xShmMap,
        ffi::SQLITE_IOERR_SHMMAP,
        page,
        size,
        extend,
        out
    )
}

unsafe extern "C" fn x_shm_lock(
    handle: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    // The WAL index's lock 0 is the write lock (SQLite's WAL format). Released, the
    // write transaction has ended: a commit wrote out its frames, so what is still
    // gathered are frames of a transaction rolled back, which nothing reads. They go
    // to the file all the same (SQLite wrote them), and their error matters to no one.
    if offset == 0
        && flags == ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE
        && let Some(wal) = wal_of(f)
        && wal.write_out() != ffi::SQLITE_OK
    {
        tracing::debug!("writing out the frames of a transaction rolled back failed");
    }
    let rc = forward!(f, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags);
    // Taken, a write transaction begins, and has written nothing yet.
    if rc == ffi::SQLITE_OK
        && offset == 0
        && flags == ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE
        && let Some(wal) = wal_of(f)
    {
        wal.transaction_end = 0;
    }
    rc
}

/// The WAL of `f`'s connection, `f` being its database file: for use within the call
/// SQLite made on `f` (the connection's thread), not beyond it.
fn wal_of<'a>(f: &File) -> Option<&'a mut File> {
    if f.kind != Kind::Main || f.db_name == 0 {
        return None;
    }
    let wal = wals()
        .iter()
        .find(|&&(db, _)| db == f.db_name)
        .map(|&(_, w)| w as *mut ffi::sqlite3_file)?;
    // SAFETY: a WAL this VFS opened and has not closed (x_close takes it out of the
    // list), of the same connection as `f`, which this thread is using now.
    Some(unsafe { file(wal) })
}

unsafe extern "C" fn x_shm_barrier(handle: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    if let Some(wal) = wal_of(f)
        && !wal.gathered.is_empty()
    {
        wal.barrier_write_outs += 1;
        wal.write_out_keeping();
    }
    forward!(f, xShmBarrier, ());
}

unsafe extern "C" fn x_shm_unmap(handle: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(f, xShmUnmap, ffi::SQLITE_OK, delete)
}

unsafe extern "C" fn x_fetch(
    handle: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    // No mapping (SQLite then reads): what SQLite expects of a VFS that has none.
    let none = || {
        // SAFETY: SQLite passes a pointer to fill.
        unsafe { *out = std::ptr::null_mut() };
        ffi::SQLITE_OK
    };
    forward_written!(f, xFetch, none(), offset, amount, out)
}

unsafe extern "C" fn x_unfetch(
    handle: *mut ffi::sqlite3_file,
    offset: i64,
    p: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls the methods of files this VFS opened.
    let f = unsafe { file(handle) };
    forward!(f, xUnfetch, ffi::SQLITE_OK, offset, p)
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};

/// The VFS's own methods besides `xOpen`: the unix VFS's, called with the unix VFS.
macro_rules! vfs_method {
    ($name:ident, $m:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $none:expr) => {
        unsafe extern "C" fn $name(_vfs: *mut ffi::sqlite3_vfs, $($arg: $ty),*) -> $ret {
            let real = real_vfs();
            // SAFETY: the unix VFS lives as long as the process; its method is called
            // as SQLite would call it.
            match unsafe { real.as_ref() }.and_then(|r| r.$m) {
                Some(method) => unsafe { method(real, $($arg),*) },
                None => $none,
            }
        }
    };
}

type DlSym = Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)>;

vfs_method!(x_delete, xDelete, (name: *const c_char, sync: c_int) -> c_int, ffi::SQLITE_IOERR_DELETE);
vfs_method!(x_access, xAccess, (name: *const c_char, flags: c_int, out: *mut c_int) -> c_int, ffi::SQLITE_IOERR_ACCESS);
vfs_method!(x_full_pathname, xFullPathname, (name: *const c_char, n: c_int, out: *mut c_char) -> c_int, ffi::SQLITE_CANTOPEN);
vfs_method!(x_dl_open, xDlOpen, (name: *const c_char) -> *mut c_void, std::ptr::null_mut());
vfs_method!(x_dl_error, xDlError, (n: c_int, out: *mut c_char) -> (), ());
vfs_method!(x_dl_sym, xDlSym, (handle: *mut c_void, symbol: *const c_char) -> DlSym, None);
vfs_method!(x_dl_close, xDlClose, (handle: *mut c_void) -> (), ());
vfs_method!(x_randomness, xRandomness, (n: c_int, out: *mut c_char) -> c_int, 0);
vfs_method!(x_sleep, xSleep, (micros: c_int) -> c_int, 0);
vfs_method!(x_current_time, xCurrentTime, (out: *mut f64) -> c_int, ffi::SQLITE_ERROR);
vfs_method!(x_get_last_error, xGetLastError, (n: c_int, out: *mut c_char) -> c_int, 0);
vfs_method!(x_current_time_int64, xCurrentTimeInt64, (out: *mut i64) -> c_int, ffi::SQLITE_ERROR);

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;
    use std::path::PathBuf;

    /// A connection through this VFS, set up as the engine's writer is in what matters
    /// here: 16 KiB pages, WAL, `synchronous = NORMAL`, one table of blobs.
    fn writer(db: &Path) -> Connection {
        let conn = open(db).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL);",
        )
        .unwrap();
        conn
    }

    /// A connection through SQLite's own VFS.
    fn plain(db: &Path) -> Connection {
        Connection::open_with_flags_and_vfs(db, OpenFlags::default(), c"unix").unwrap()
    }

    /// `len` bytes that depend on `seed` and on where they are.
    fn blob(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Every row of `blobs`, hashed, as `conn` reads them.
    fn digest(conn: &Connection) -> (i64, [u8; 32]) {
        let mut hasher = blake3::Hasher::new();
        let mut stmt = conn.prepare("SELECT id, b FROM blobs ORDER BY id").unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut n = 0;
        while let Some(row) = rows.next().unwrap() {
            hasher.update(&row.get::<_, i64>(0).unwrap().to_le_bytes());
            hasher.update(row.get_ref(1).unwrap().as_blob().unwrap());
            n += 1;
        }
        (n, *hasher.finalize().as_bytes())
    }

    fn wal_of(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push("-wal");
        PathBuf::from(name)
    }

    #[test]
    fn every_commit_is_in_the_file_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let conn = writer(&db);
        let reader = plain(&db);
        let mut id = 0;
        for round in 0..12u64 {
            // From a few rows to ~2 MB (more than GATHER_BYTES) in one commit.
            let rows = 1 + round * round * 5;
            conn.execute_batch("BEGIN").unwrap();
            for _ in 0..rows {
                id += 1;
                conn.execute(
                    "INSERT INTO blobs (id, b) VALUES (?1, ?2)",
                    params![id, blob(id as u64, 3000)],
                )
                .unwrap();
            }
            conn.execute_batch("COMMIT").unwrap();
            // The reader reads the new frames from the file, through its own descriptor.
            assert_eq!(digest(&reader), digest(&conn), "after round {round}");
        }
        let check: String = reader
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// Write system calls this thread has made (`/proc/thread-self/io`).
    fn writes_so_far() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The write system calls one transaction of 2.4 MB makes, and the WAL frames it
    /// appends.
    fn writes_of_a_transaction(conn: &Connection, db: &Path) -> (u64, u64) {
        let frames = || {
            // A WAL truncated by a checkpoint has not even its header.
            std::fs::metadata(wal_of(db))
                .unwrap()
                .len()
                .saturating_sub(32)
                / (24 + 16384)
        };
        let (before, frames_before) = (writes_so_far(), frames());
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..800u64 {
            conn.execute("INSERT INTO blobs (b) VALUES (?1)", [blob(i, 3000)])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
        (writes_so_far() - before, frames() - frames_before)
    }

    #[test]
    fn a_transaction_s_frames_reach_the_kernel_in_large_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (dir.path().join("g.db"), dir.path().join("u.db"));
        let conn = writer(&ours);
        let (gathered, frames) = writes_of_a_transaction(&conn, &ours);
        // Again once the WAL starts over, below where the first transaction wrote.
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let (again, frames_again) = writes_of_a_transaction(&conn, &ours);
        assert_eq!((again, frames_again), (gathered, frames));
        let unix = plain(&theirs);
        unix.execute_batch(
            "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL);",
        )
        .unwrap();
        let (one_by_one, unix_frames) = writes_of_a_transaction(&unix, &theirs);
        assert!(
            frames > 100 && unix_frames == frames,
            "{frames} and {unix_frames} frames"
        );
        // SQLite alone: a header and a page per frame.
        assert!(
            one_by_one >= 2 * frames,
            "{one_by_one} writes for {frames} frames"
        );
        // Gathered: one per 64 KiB, and a piece at each end of a write-out.
        let bytes = frames * (24 + 16384);
        let most = bytes / PIECE_BYTES as u64 + 2 * (bytes / GATHER_BYTES as u64 + 1) + 2;
        assert!(
            gathered <= most,
            "{gathered} writes for {frames} frames ({most} at most)"
        );
    }

    #[test]
    fn a_connection_s_barrier_writes_out_what_its_wal_gathered() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let conn = writer(&db);
        conn.execute("INSERT INTO blobs (b) VALUES (x'00')", [])
            .unwrap();
        let pointer = |op: c_int| {
            let file = crate::store::sqlite_file(&conn, op).unwrap();
            assert!(!file.is_null());
            file
        };
        let (main, wal) = (
            pointer(ffi::SQLITE_FCNTL_FILE_POINTER),
            pointer(ffi::SQLITE_FCNTL_JOURNAL_POINTER),
        );
        let size = || std::fs::metadata(wal_of(&db)).unwrap().len();
        let end = size() as i64;
        // A frame that is no commit's, past the last: gathered, not yet in the file. (Its
        // salt is not the WAL's, so nothing ever reads it back.)
        let header = [
            0, 0, 0, 2, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let page = [7u8; 16384];
        // SAFETY: the WAL SQLite holds open for `conn`, and its own methods.
        unsafe {
            let write = (*(*wal).pMethods).xWrite.unwrap();
            assert_eq!(write(wal, header.as_ptr().cast(), 24, end), ffi::SQLITE_OK);
            assert_eq!(
                write(wal, page.as_ptr().cast(), 16384, end + 24),
                ffi::SQLITE_OK
            );
        }
        assert_eq!(
            size(),
            end as u64,
            "a frame that is no commit's stays gathered"
        );
        // SAFETY: the database file SQLite holds open for `conn`, and its own method.
        unsafe { (*(*main).pMethods).xShmBarrier.unwrap()(main) };
        assert_eq!(size(), end as u64 + 24 + 16384, "the barrier wrote it out");
        assert_eq!(wal_file(&conn).barrier_write_outs, 1);
        // The connection goes on writing over it.
        conn.execute("INSERT INTO blobs (b) VALUES (x'01')", [])
            .unwrap();
        let check: String = plain(&db)
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// The WAL `conn` holds open, as this VFS's file.
    fn wal_file(conn: &Connection) -> &File {
        let wal = crate::store::sqlite_file(conn, ffi::SQLITE_FCNTL_JOURNAL_POINTER).unwrap();
        // SAFETY: the WAL of a connection opened through this VFS is one of its files,
        // open as long as the connection is.
        unsafe { &*wal.cast::<File>() }
    }

    #[test]
    fn frames_a_transaction_writes_again_go_to_the_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let conn = writer(&db);
        // A page cache of 8 pages: the transaction writes frames before its commit, and
        // its updates write some of them again, in place.
        conn.execute_batch("PRAGMA cache_size = 8").unwrap();
        let reader = plain(&db);
        for round in 0..3u64 {
            conn.execute_batch("BEGIN").unwrap();
            for i in 0..300 {
                conn.execute(
                    "INSERT INTO blobs (b) VALUES (?1)",
                    [blob(round * 1000 + i, 3000)],
                )
                .unwrap();
            }
            conn.execute(
                "UPDATE blobs SET b = ?1 WHERE id % 15 = ?2",
                params![blob(round, 2500), round as i64],
            )
            .unwrap();
            conn.execute_batch("COMMIT").unwrap();
            assert_eq!(digest(&reader), digest(&conn), "after round {round}");
        }
        // Every byte went to the file where its error could be returned: none was left
        // for the barrier.
        assert_eq!(wal_file(&conn).barrier_write_outs, 0);
    }

    const CHILD_DIR: &str = "PERPETUAL_VFS_TEST_DIR";

    /// Run by [`a_failed_write_fails_its_commit_and_leaves_the_database_as_it_was`] in a
    /// process of its own, since a file size limit is the whole process's.
    #[test]
    #[ignore = "a child process of a_failed_write_fails_its_commit_and_leaves_the_database_as_it_was"]
    fn commit_past_the_file_size_limit() {
        let dir = PathBuf::from(std::env::var_os(CHILD_DIR).expect("run by its parent test"));
        let db = dir.join("t.db");
        let conn = writer(&db);
        for i in 0..4u64 {
            conn.execute("INSERT INTO blobs (b) VALUES (?1)", [blob(i, 3000)])
                .unwrap();
        }
        let wal = std::fs::metadata(wal_of(&db)).unwrap().len();
        // SAFETY: plain libc calls: writes past the limit fail with EFBIG instead of
        // killing the process with SIGXFSZ.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut limit: libc::rlimit = std::mem::zeroed();
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
            limit.rlim_cur = wal + 200_000;
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        // About 40 frames, under GATHER_BYTES: all of them written out with the commit's.
        conn.execute_batch("BEGIN").unwrap();
        for i in 10..50u64 {
            conn.execute("INSERT INTO blobs (b) VALUES (?1)", [blob(i, 12_000)])
                .unwrap();
        }
        let committed = conn.execute_batch("COMMIT");
        println!("the commit past the limit: {committed:?}");
        assert!(
            committed.is_err(),
            "a commit whose frames did not fit returned Ok"
        );
    }

    #[test]
    fn a_failed_write_fails_its_commit_and_leaves_the_database_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::vfs::tests::commit_past_the_file_size_limit",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("1 passed"), "{said}");
        let conn = plain(&dir.path().join("t.db"));
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let rows: Vec<Vec<u8>> = conn
            .prepare("SELECT b FROM blobs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows, (0..4).map(|i| blob(i, 3000)).collect::<Vec<_>>());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, usize),
        Update(usize, u64, usize),
        Delete(usize),
    }

    #[derive(Debug, Clone)]
    struct Transaction {
        ops: Vec<Op>,
        commit: bool,
        /// After it: 0 nothing, 1 a passive checkpoint, 2 a truncating one, 3 reopen.
        after: u8,
    }

    fn transaction() -> impl proptest::strategy::Strategy<Value = Transaction> {
        use proptest::prelude::*;
        let op = prop_oneof![
            6 => (any::<u64>(), 1usize..40_000).prop_map(|(s, l)| Op::Insert(s, l)),
            2 => (any::<usize>(), any::<u64>(), 1usize..20_000).prop_map(|(k, s, l)| Op::Update(k, s, l)),
            1 => any::<usize>().prop_map(Op::Delete),
        ];
        (
            proptest::collection::vec(op, 1..60),
            proptest::bool::weighted(0.85),
            0u8..4,
        )
            .prop_map(|(ops, commit, after)| Transaction { ops, commit, after })
    }

    fn apply(conn: &Connection, t: &Transaction) {
        conn.execute_batch("BEGIN").unwrap();
        for op in &t.ops {
            let ids: Vec<i64> = conn
                .prepare("SELECT id FROM blobs ORDER BY id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            match *op {
                Op::Insert(seed, len) => {
                    conn.execute("INSERT INTO blobs (b) VALUES (?1)", [blob(seed, len)])
                        .unwrap();
                }
                Op::Update(k, seed, len) if !ids.is_empty() => {
                    conn.execute(
                        "UPDATE blobs SET b = ?2 WHERE id = ?1",
                        params![ids[k % ids.len()], blob(seed, len)],
                    )
                    .unwrap();
                }
                Op::Delete(k) if !ids.is_empty() => {
                    conn.execute("DELETE FROM blobs WHERE id = ?1", [ids[k % ids.len()]])
                        .unwrap();
                }
                _ => {}
            }
        }
        conn.execute_batch(if t.commit { "COMMIT" } else { "ROLLBACK" })
            .unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

        /// Through this VFS, with a page cache small enough that transactions spill
        /// frames into the WAL before they commit, the database holds what SQLite alone
        /// makes of the same transactions, and a reader through SQLite's own VFS sees
        /// each commit.
        #[test]
        fn transactions_through_the_vfs_store_what_sqlite_alone_stores(
            transactions in proptest::collection::vec(transaction(), 1..8)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (ours, theirs) = (dir.path().join("ours.db"), dir.path().join("theirs.db"));
            let set_up = |conn: Connection| {
                conn.execute_batch("PRAGMA cache_size = 8; PRAGMA wal_autocheckpoint = 50;").unwrap();
                conn
            };
            let mut gathering = set_up(writer(&ours));
            let unix = set_up(plain(&theirs));
            unix.execute_batch(
                "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                 CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL);",
            ).unwrap();
            let reader = plain(&ours);
            for t in &transactions {
                apply(&gathering, t);
                apply(&unix, t);
                proptest::prop_assert_eq!(digest(&gathering), digest(&unix));
                proptest::prop_assert_eq!(digest(&reader), digest(&unix));
                proptest::prop_assert_eq!(wal_file(&gathering).barrier_write_outs, 0);
                match t.after {
                    1 => { gathering.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap(); }
                    2 => { gathering.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap(); }
                    3 => {
                        drop(gathering);
                        gathering = set_up(writer(&ours));
                    }
                    _ => {}
                }
            }
            drop(gathering);
            drop(reader);
            let reopened = plain(&ours);
            let check: String = reopened.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            proptest::prop_assert_eq!(check, "ok");
            proptest::prop_assert_eq!(digest(&reopened), digest(&unix));
        }
    }
}
