//! Opening and reading a drop: the one place where the engine touches a file's bytes.
//!
//! A path is first looked at without following it (`lstat`): anything but a regular
//! file (symbolic link, FIFO, socket, device, folder) is described, never opened. A
//! regular file is opened once, with `O_NOFOLLOW | O_NONBLOCK`, and judged again on
//! `fstat` of that descriptor, so a link or a FIFO swapped in between the look and the
//! open is refused too, and nothing can make the open block. Its size comes from that
//! `fstat`: a file over the limit is refused unread; otherwise at most `limit + 1`
//! bytes are read ([`read_bounded`]), so a file that grows while it is read cannot
//! make memory grow with it.

use crate::engine::names;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

/// What opening a path found.
#[derive(Debug)]
pub enum Opened {
    /// A regular file, open for reading.
    File(OpenFile),
    /// Not a regular file, or not readable: never read. The reason, for the ledger.
    Refused(String),
    /// Nothing at that path any more (moved or deleted since it was listed).
    Gone,
    /// An error that may pass (I/O): try again later.
    Failed(io::Error),
}

/// A regular file open for reading, with what `fstat` said when it was opened.
#[derive(Debug)]
pub struct OpenFile {
    /// The descriptor every byte is read from.
    pub file: File,
    /// Size in bytes, from `fstat`.
    pub size: u64,
    /// Modification time, from `fstat`.
    pub modified: Option<SystemTime>,
    /// Which file it is (device, inode), from `fstat`: a move checks that the name
    /// still means this file, not one swapped in after the read.
    pub identity: Identity,
}

/// (device, inode) of a file.
pub type Identity = (u64, u64);

/// The identity of whatever is at `path` now, not following links.
pub fn identity_at(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// What a directory entry is, in the words of a ledger reason: `None` for a regular
/// file. `path` is only used to name a symbolic link's target.
pub fn describe(meta: &Metadata, path: &Path) -> Option<String> {
    let t = meta.file_type();
    let what = if t.is_file() {
        return None;
    } else if t.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| format!(" to {}", names::render_path(&t)))
            .unwrap_or_default();
        return Some(format!("a symbolic link{target}: links are never followed"));
    } else if t.is_dir() {
        "a folder, not a file"
    } else if t.is_fifo() {
        "a FIFO (named pipe), not a regular file"
    } else if t.is_socket() {
        "a socket, not a regular file"
    } else if t.is_char_device() {
        "a character device, not a regular file"
    } else if t.is_block_device() {
        "a block device, not a regular file"
    } else {
        "not a regular file"
    };
    Some(format!("{what}: never read"))
}

/// Opens `path` if, and only if, it is a regular file (see the module docs).
pub fn open(path: &Path) -> Opened {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Opened::Gone,
        Err(e) => return Opened::Failed(e),
    };
    if let Some(why) = describe(&meta, path) {
        return Opened::Refused(why);
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            return match e.raw_os_error() {
                // A link swapped in after the look above.
                Some(libc::ELOOP) => Opened::Refused(
                    "a symbolic link (it replaced the file): links are never followed".to_string(),
                ),
                // A socket swapped in.
                Some(libc::ENXIO) => {
                    Opened::Refused("a socket, not a regular file: never read".to_string())
                }
                Some(libc::EACCES | libc::EPERM) => {
                    Opened::Refused(format!("unreadable ({e}): never read"))
                }
                _ if e.kind() == io::ErrorKind::NotFound => Opened::Gone,
                _ => Opened::Failed(e),
            };
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Opened::Failed(e),
    };
    if let Some(why) = describe(&meta, path) {
        // Swapped in between the look and the open (a FIFO, a device): the open could
        // not block (O_NONBLOCK), and nothing is read from it.
        return Opened::Refused(why);
    }
    use std::os::unix::fs::MetadataExt;
    Opened::File(OpenFile {
        size: meta.len(),
        modified: meta.modified().ok(),
        identity: (meta.dev(), meta.ino()),
        file,
    })
}

/// Reads the whole file if it holds at most `limit` bytes; `Ok(None)` when it holds
/// more (it grew past the limit after `fstat`). Never reads more than `limit + 1`
/// bytes, never allocates more than `min(size_hint, limit) + 1`.
pub fn read_bounded(file: &mut File, size_hint: u64, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let capacity = size_hint.min(limit).saturating_add(1);
    let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(usize::MAX));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Whether `path` is a regular file that begins like an SQLite database (an inbox may
/// hold databases, whatever their names: `engine::import_db`). Opened as any drop is.
pub fn is_database(path: &Path) -> bool {
    match open(path) {
        Opened::File(mut f) => {
            let mut head = [0u8; 16];
            f.file.read_exact(&mut head).is_ok() && crate::store::source_db::has_header(&head)
        }
        _ => false,
    }
}

/// The reason for a file over the limit, with its size from `fstat`.
pub fn over_limit_reason(size: u64, limit: u64) -> String {
    format!(
        "file is {size} bytes, over the limit of {limit} bytes (ingest.max_file_bytes); rejected unread"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symbolic_link_is_refused_even_to_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.json");
        std::fs::write(&target, "[]").unwrap();
        let link = dir.path().join("l.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        match open(&link) {
            Opened::Refused(why) => assert!(why.contains("symbolic link"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(open(&target), Opened::File(_)));
        assert!(matches!(open(&dir.path().join("none")), Opened::Gone));
    }

    #[test]
    fn a_device_is_never_opened_and_dev_zero_is_never_read() {
        match open(Path::new("/dev/zero")) {
            Opened::Refused(why) => assert!(why.contains("character device"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Even given a descriptor of an endless file, the read stops at the bound.
        let mut zero = File::open("/dev/zero").unwrap();
        assert_eq!(read_bounded(&mut zero, 0, 1000).unwrap(), None);
    }

    #[test]
    fn the_bound_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(read_bounded(&mut f, 100, 100).unwrap().unwrap().len(), 100);
        let mut f = File::open(&p).unwrap();
        assert_eq!(read_bounded(&mut f, 100, 99).unwrap(), None);
    }
}
