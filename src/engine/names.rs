//! Names in an inbox: which entries are drops (accepted extensions, writers' temporary
//! names), the one text rendering of any file name or path (lossless, safe for a
//! terminal and a log line), and names that fit the filesystem's length limit.
//!
//! File names on Unix are bytes. The ledger and the logs need text, so a name is
//! rendered ([`render`]): valid UTF-8 stays as it is, except that a backslash becomes
//! `\\` and every byte of a control character (C0, DEL, C1) or of an invalid sequence
//! becomes `\xNN`. [`parse`] inverts it exactly, which is how the ledger's stored paths
//! become paths again. A newline in a name can therefore never forge a log line, nor an
//! escape sequence reach a terminal.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// File extensions of drops, matched without regard to case (`.JSON` is a drop).
pub const EXTENSIONS: [&str; 3] = ["json", "jsonl", "ndjson"];

/// Whether a name belongs to a writer still at work or is hidden: dotfiles and
/// `*.tmp`, `*.part`, `*.partial`, `*~`. These are never read and never reported (a
/// writer's temporary name appears for every drop).
pub fn is_ignored(name: &OsStr) -> bool {
    let b = name.as_bytes();
    let lower = b.to_ascii_lowercase();
    b.first() == Some(&b'.')
        || b.last() == Some(&b'~')
        || [&b".tmp"[..], b".part", b".partial"]
            .iter()
            .any(|s| lower.ends_with(s))
}

/// Whether `path` has one of the [`EXTENSIONS`], in any case.
pub fn has_accepted_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        EXTENSIONS
            .iter()
            .any(|x| e.as_bytes().eq_ignore_ascii_case(x.as_bytes()))
    })
}

/// Why a regular file with another extension is not a drop (the ledger's reason).
pub fn not_a_drop_reason(path: &Path) -> String {
    let ext = match path.extension() {
        Some(e) => format!("extension .{}", render(e)),
        None => "no extension".to_string(),
    };
    format!("not a drop ({ext}; drops are .json, .jsonl or .ndjson): left alone, never read")
}

/// The lossless text rendering of a file name (see the module docs).
pub fn render(name: &OsStr) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    push_byte(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            push_byte(&mut out, b);
        }
    }
    out
}

fn push_byte(out: &mut String, b: u8) {
    use std::fmt::Write;
    let _ = write!(out, "\\x{b:02x}");
}

/// [`render`] of a whole path.
pub fn render_path(path: &Path) -> String {
    render(path.as_os_str())
}

/// The inverse of [`render`]: `\\` is a backslash, `\xNN` the byte NN; anything else is
/// itself (so text written before this rendering existed reads back unchanged).
pub fn parse(text: &str) -> OsString {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b.get(i + 1) == Some(&b'x')
                && let Some(byte) = b
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// [`parse`], as a path.
pub fn parse_path(text: &str) -> PathBuf {
    PathBuf::from(parse(text))
}

/// The longest file name the filesystem of `dir` accepts, in bytes (255 on ext4, XFS,
/// btrfs, tmpfs; asked of the filesystem, 255 when it cannot say).
pub fn name_max(dir: &Path) -> usize {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 255;
    };
    // SAFETY: a valid NUL-terminated path; pathconf only reads it.
    let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
    if n > 0 { n as usize } else { 255 }
}

/// The `n`th name a file may take in a folder: `name` itself for 0, else
/// `<stem>.<n><ext>` (two drops may share a name). When that is longer than `max`
/// bytes, the stem is shortened and `~` and eight hex digits of the name's blake3 are
/// added, so that long names stay distinct and recognisable.
pub fn numbered(name: &OsStr, n: usize, max: usize) -> OsString {
    let bytes = name.as_bytes();
    // A long "extension" is part of the name, not something to keep whole.
    let (stem, ext) = match bytes.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 && bytes.len() - i <= 16 => (&bytes[..i], &bytes[i..]),
        _ => (bytes, &b""[..]),
    };
    let counter = if n == 0 {
        String::new()
    } else {
        format!(".{n}")
    };
    let whole = stem.len() + counter.len() + ext.len();
    let mut out = Vec::with_capacity(whole.min(max));
    if whole <= max {
        out.extend_from_slice(stem);
    } else {
        let tag = format!("~{}", &blake3::hash(bytes).to_hex()[..8]);
        let room = max.saturating_sub(tag.len() + counter.len() + ext.len());
        let mut cut = room.min(stem.len());
        // Never split a UTF-8 character: back off over continuation bytes.
        while cut > 0 && cut < stem.len() && (stem[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        out.extend_from_slice(&stem[..cut]);
        out.extend_from_slice(tag.as_bytes());
    }
    out.extend_from_slice(counter.as_bytes());
    out.extend_from_slice(ext);
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(b: &[u8]) -> &OsStr {
        OsStr::from_bytes(b)
    }

    #[test]
    fn rendering_is_lossless_and_printable() {
        for name in [
            &b"plain.json"[..],
            b"caf\xe9.json",
            b"new\nline.json",
            b"esc\x1b[2J.json",
            b"back\\slash\\x41.json",
            b"\xc2\x85c1.json",
            "日本語.json".as_bytes(),
            b"\\",
            b"\\x",
            b"\xff\xfe",
        ] {
            let text = render(os(name));
            assert!(
                !text.chars().any(|c| c.is_control()),
                "{text:?} has no control character"
            );
            assert_eq!(parse(&text).as_bytes(), name, "{text}");
        }
        assert_eq!(render(os(b"caf\xe9.json")), "caf\\xe9.json");
        assert_eq!(render(os(b"a\nb")), "a\\x0ab");
        assert_eq!(render(os("日本語.json".as_bytes())), "日本語.json");
    }

    #[test]
    fn names_fit_the_limit_and_stay_distinct() {
        let long = format!("{}.json", "x".repeat(250));
        assert_eq!(numbered(OsStr::new(&long), 0, 255).len(), 255);
        for n in [0, 1, 12, 1000] {
            for max in [248, 255] {
                let fitted = numbered(OsStr::new(&long), n, max);
                assert!(fitted.len() <= max, "{n} {max}: {}", fitted.len());
                assert!(fitted.as_bytes().ends_with(b".json"));
            }
        }
        assert_ne!(
            numbered(OsStr::new(&long), 1, 248),
            numbered(OsStr::new(&long), 2, 248)
        );
        let other = format!("{}y.json", "x".repeat(249));
        assert_ne!(
            numbered(OsStr::new(&long), 0, 100),
            numbered(OsStr::new(&other), 0, 100)
        );
        assert_eq!(numbered(OsStr::new("a.json"), 0, 255), "a.json");
        assert_eq!(numbered(OsStr::new("a.json"), 2, 255), "a.2.json");
        assert_eq!(numbered(OsStr::new("noext"), 1, 255), "noext.1");
        // Multi-byte characters are never cut in half.
        let wide = format!("{}.json", "é".repeat(200));
        let fitted = numbered(OsStr::new(&wide), 3, 100);
        assert!(fitted.to_str().is_some(), "still UTF-8");
        assert!(fitted.len() <= 100);
    }

    #[test]
    fn extensions_match_in_any_case() {
        for yes in ["a.json", "a.JSON", "a.Jsonl", "a.NDJSON"] {
            assert!(has_accepted_extension(Path::new(yes)), "{yes}");
        }
        for no in ["a.txt", "a", "json", "a.json.gz", ".json"] {
            assert!(!has_accepted_extension(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn writers_temporary_names_are_ignored() {
        for yes in [".x.json", "x.tmp", "x.json.PART", "x.partial", "x~"] {
            assert!(is_ignored(OsStr::new(yes)), "{yes}");
        }
        for no in ["x.json", "x.txt", "tmp.json"] {
            assert!(!is_ignored(OsStr::new(no)), "{no}");
        }
    }
}
