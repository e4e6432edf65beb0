//! The file ledger (`files` table): one row per file read, saying what became of it.
//!
//! A row starts as `partial` inside the transaction that writes the file's first
//! pairs; `resume_at` and the counts advance with each checkpoint; the row turns
//! `integrated` in the same transaction as the file's last pairs. So after a crash,
//! a `partial` row says exactly which pairs are already in, and nothing is counted
//! twice.

use anyhow::Result;
use rusqlite::{Connection, Row, params};
use serde::Serialize;

/// What became of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Some checkpoints committed, the file is not finished (only after a crash).
    Partial,
    /// All its pairs are in.
    Integrated,
    /// Same bytes as a file integrated before; nothing to add.
    Duplicate,
    /// Could not be integrated; kept byte for byte in `rejected/` with its reason.
    Rejected,
    /// Not read: not a regular file (symlink, FIFO, socket, device, folder), not a drop
    /// (extension, place), or unreadable. Left where it is, with the reason.
    Skipped,
}

impl FileStatus {
    /// The word stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Partial => "partial",
            FileStatus::Integrated => "integrated",
            FileStatus::Duplicate => "duplicate",
            FileStatus::Rejected => "rejected",
            FileStatus::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> FileStatus {
        match s {
            "integrated" => FileStatus::Integrated,
            "duplicate" => FileStatus::Duplicate,
            "rejected" => FileStatus::Rejected,
            "skipped" => FileStatus::Skipped,
            _ => FileStatus::Partial,
        }
    }
}

/// A ledger row as read back.
#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    /// Ledger id.
    pub id: i64,
    /// Whose drop it was.
    pub agent: String,
    /// File name as dropped.
    pub name: String,
    /// Where it was read from.
    pub source_path: String,
    /// Where it was moved to, if it was moved.
    pub stored_path: Option<String>,
    /// blake3 of the bytes, hex.
    pub content_hash: Option<String>,
    /// Size in bytes.
    pub size: i64,
    /// What became of it.
    pub status: FileStatus,
    /// Encoding used to decode it.
    pub encoding: Option<String>,
    /// Whether undecodable bytes were replaced.
    pub replaced: bool,
    /// Recognised layout.
    pub layout: Option<String>,
    /// Session number found in the content.
    pub session: Option<i64>,
    /// Pairs in the file, valid or not.
    pub pairs_seen: i64,
    /// Pairs stored for the first time.
    pub pairs_new: i64,
    /// Valid pairs already stored before.
    pub pairs_duplicate: i64,
    /// Pairs that failed validation.
    pub pairs_invalid: i64,
    /// Valid pairs already written (the checkpoint inside the file).
    pub resume_at: i64,
    /// Each invalid pair's index and reason.
    pub invalid: Vec<InvalidEntry>,
    /// Why it was rejected, or what it duplicates.
    pub reason: Option<String>,
    /// The earlier file with the same bytes.
    pub duplicate_of: Option<i64>,
    /// When reading began.
    pub started_at: String,
    /// When it reached its final status.
    pub finished_at: Option<String>,
    /// What was repaired so that it could integrate (lines that did not parse, lone
    /// surrogates, non-finite numbers, control characters), as a JSON object.
    pub salvage: Option<serde_json::Value>,
    /// Seconds from the start of reading to its final status (files finished before
    /// this was recorded have none).
    pub seconds: Option<f64>,
}

/// One invalid pair, as kept in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct InvalidEntry {
    /// 0-based index in the file's sequence of pairs.
    pub index: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The columns a new ledger row needs.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    /// Whose drop it is.
    pub agent: &'a str,
    /// File name.
    pub name: &'a str,
    /// Where it is read from.
    pub source_path: &'a str,
    /// Where it will be moved (decided before commit so the row is complete).
    pub stored_path: Option<&'a str>,
    /// blake3 of its bytes.
    pub content_hash: Option<&'a [u8; 32]>,
    /// Size in bytes.
    pub size: u64,
    /// Initial status.
    pub status: FileStatus,
    /// Decoder label.
    pub encoding: Option<&'a str>,
    /// Undecodable bytes were replaced.
    pub replaced: bool,
    /// Layout name.
    pub layout: Option<&'a str>,
    /// Session number from the content.
    pub session: Option<i64>,
    /// Pairs in the file, valid or not.
    pub pairs_seen: usize,
    /// Invalid pairs.
    pub invalid: &'a [InvalidEntry],
    /// Rejection reason or duplicate note.
    pub reason: Option<&'a str>,
    /// Earlier file with the same bytes.
    pub duplicate_of: Option<i64>,
    /// What was salvaged, as a JSON object (`None`: nothing).
    pub salvage: Option<&'a str>,
    /// Timestamp.
    pub now: &'a str,
}

/// Inserts a ledger row; returns its id. Final statuses get `finished_at = now`.
pub fn insert(conn: &Connection, f: &NewFile<'_>) -> Result<i64> {
    let invalid = if f.invalid.is_empty() {
        None
    } else {
        Some(serde_json::to_string(f.invalid)?)
    };
    let finished = (f.status != FileStatus::Partial).then_some(f.now);
    conn.prepare_cached(
        "INSERT INTO files (agent, name, source_path, stored_path, content_hash, size, status,
                            encoding, replaced, layout, session, pairs_seen, pairs_invalid, invalid,
                            reason, duplicate_of, started_at, finished_at, salvage)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?
    .execute(params![
        f.agent,
        f.name,
        f.source_path,
        f.stored_path,
        f.content_hash.map(|h| &h[..]),
        f.size as i64,
        f.status.as_str(),
        f.encoding,
        f.replaced,
        f.layout,
        f.session,
        f.pairs_seen as i64,
        f.invalid.len() as i64,
        invalid,
        f.reason,
        f.duplicate_of,
        f.now,
        finished,
        f.salvage,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Records a checkpoint inside a file: how many valid pairs are written and the counts so far.
pub fn checkpoint(conn: &Connection, id: i64, resume_at: usize, new: u64, dup: u64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE files SET resume_at = ?2, pairs_new = ?3, pairs_duplicate = ?4 WHERE id = ?1",
    )?
    .execute(params![id, resume_at as i64, new as i64, dup as i64])?;
    Ok(())
}

/// Records a checkpoint of a source read row by row (a table of an imported database):
/// the last source rowid read (`resume_at`), rows read, pairs new and duplicate, and the
/// invalid rows so far, in the transaction of the pairs they cover.
pub fn record_source_progress(
    conn: &Connection,
    id: i64,
    last_rowid: i64,
    seen: u64,
    new: u64,
    dup: u64,
    invalid: &[InvalidEntry],
) -> Result<()> {
    let invalid_json = if invalid.is_empty() {
        None
    } else {
        Some(serde_json::to_string(invalid)?)
    };
    conn.prepare_cached(
        "UPDATE files SET resume_at = ?2, pairs_seen = ?3, pairs_new = ?4, pairs_duplicate = ?5,
                          pairs_invalid = ?6, invalid = ?7 WHERE id = ?1",
    )?
    .execute(params![
        id,
        last_rowid,
        seen as i64,
        new as i64,
        dup as i64,
        invalid.len() as i64,
        invalid_json
    ])?;
    Ok(())
}

/// Marks a file integrated with its final counts.
pub fn finish(
    conn: &Connection,
    id: i64,
    resume_at: usize,
    new: u64,
    dup: u64,
    now: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE files SET status = 'integrated', resume_at = ?2, pairs_new = ?3,
                          pairs_duplicate = ?4, finished_at = ?5 WHERE id = ?1",
    )?
    .execute(params![id, resume_at as i64, new as i64, dup as i64, now])?;
    Ok(())
}

/// Whether the ledger already says that the entry at `source_path` was skipped for
/// `reason`: then it is neither recorded nor reported again.
pub fn skipped_before(conn: &Connection, source_path: &str, reason: &str) -> Result<bool> {
    let found = conn
        .prepare_cached(
            "SELECT 1 FROM files WHERE source_path = ?1 AND status = 'skipped' AND reason = ?2
             LIMIT 1",
        )?
        .exists(params![source_path, reason])?;
    Ok(found)
}

/// Where a finished file really is, when a move did not happen as recorded: the
/// ledger never keeps a stored path that does not exist.
pub fn set_stored_path(conn: &Connection, id: i64, stored_path: Option<&str>) -> Result<()> {
    conn.prepare_cached("UPDATE files SET stored_path = ?2 WHERE id = ?1")?
        .execute(params![id, stored_path])?;
    Ok(())
}

/// Finished rows whose recorded stored path is `path` (the move of a file that a
/// crash or an error interrupted).
pub fn by_stored_path(conn: &Connection, path: &str) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM files WHERE stored_path = ?1")?;
    let ids = stmt
        .query_map([path], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

/// Rejections of files too large to be read (no content hash), read from
/// `source_path` with this size, newest first: what recognises such a file again.
pub fn unhashed_rejections(
    conn: &Connection,
    source_path: &str,
    size: u64,
) -> Result<Vec<FileRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM files
         WHERE source_path = ?1 AND size = ?2 AND content_hash IS NULL AND status = 'rejected'
         ORDER BY id DESC"
    ))?;
    let rows = stmt
        .query_map(params![source_path, size as i64], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The ledger's knowledge of some bytes: every row with this content hash.
pub fn by_hash(conn: &Connection, hash: &[u8; 32]) -> Result<Vec<FileRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM files WHERE content_hash = ?1 ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([&hash[..]], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Hashes of every file the ledger has finished with (integrated, duplicate, rejected),
/// with the paths they were read from. Workers use it to skip parsing known bytes.
pub fn finished_hashes(conn: &Connection) -> Result<Vec<([u8; 32], String)>> {
    let mut stmt = conn.prepare(
        "SELECT content_hash, source_path FROM files
         WHERE content_hash IS NOT NULL AND status != 'partial'",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let h: Vec<u8> = r.get(0)?;
            Ok((h, r.get::<_, String>(1)?))
        })?
        .filter_map(|r| match r {
            Ok((h, p)) => <[u8; 32]>::try_from(h.as_slice()).ok().map(|h| Ok((h, p))),
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Source path → (content hash, session) of each finished ledger row read from it.
pub type FinishedByPath = std::collections::HashMap<String, Vec<([u8; 32], Option<i64>)>>;

/// What the ledger finished, by the path a file was read from: its content hash and
/// session number. A backfill uses it to plan without parsing finished files.
pub fn finished_by_path(conn: &Connection) -> Result<FinishedByPath> {
    let mut stmt = conn.prepare(
        "SELECT source_path, content_hash, session FROM files
         WHERE content_hash IS NOT NULL AND status != 'partial'",
    )?;
    let mut map = FinishedByPath::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let hash: Vec<u8> = r.get(1)?;
        if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
            map.entry(r.get(0)?).or_default().push((hash, r.get(2)?));
        }
    }
    Ok(map)
}

/// What the ledger finished without reading the bytes.
#[derive(Debug, Default)]
pub struct Unread {
    /// (source path, reason) of each `skipped` row.
    pub skipped: std::collections::HashSet<(String, String)>,
    /// (source path, size) of each rejection of a file over the limit.
    pub over_limit: std::collections::HashSet<(String, i64)>,
}

/// [`Unread`]: a backfill's plan uses it to know those entries are done.
pub fn unread_by_path(conn: &Connection) -> Result<Unread> {
    let mut unread = Unread::default();
    let mut stmt = conn.prepare(
        "SELECT status, source_path, COALESCE(reason, ''), size FROM files
         WHERE status = 'skipped' OR (status = 'rejected' AND content_hash IS NULL)",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let status: String = r.get(0)?;
        if status == "skipped" {
            unread.skipped.insert((r.get(1)?, r.get(2)?));
        } else {
            unread.over_limit.insert((r.get(1)?, r.get(3)?));
        }
    }
    Ok(unread)
}

/// Which rows `list` and `page` return.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only rejected files.
    pub rejected_only: bool,
    /// Only skipped entries (with `rejected_only`: both).
    pub skipped_only: bool,
    /// Only this agent's files.
    pub agent: Option<String>,
    /// Only files with this status, any word the ledger may hold (`integrated`,
    /// `rejected`, ...), so a status added later filters without a change here.
    pub status: Option<String>,
}

impl ListFilter {
    /// The `WHERE` clause and its parameters.
    fn sql(&self) -> (String, Vec<String>) {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        match (self.rejected_only, self.skipped_only) {
            (true, true) => clauses.push("status IN ('rejected', 'skipped')".to_string()),
            (true, false) => clauses.push("status = 'rejected'".to_string()),
            (false, true) => clauses.push("status = 'skipped'".to_string()),
            (false, false) => {}
        }
        if let Some(a) = &self.agent {
            params.push(a.clone());
            clauses.push(format!("agent = ?{}", params.len()));
        }
        if let Some(s) = &self.status {
            params.push(s.clone());
            clauses.push(format!("status = ?{}", params.len()));
        }
        let sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        (sql, params)
    }
}

/// The ledger, oldest first (`perpetual files`).
pub fn list(conn: &Connection, filter: &ListFilter) -> Result<Vec<FileRow>> {
    let (filter_sql, params) = filter.sql();
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM files {filter_sql} ORDER BY id"
    ))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One page of the ledger, newest first: at most `limit` rows with an id below `before`
/// (all when `None`). The web faucet pages through a ledger of any size with it.
pub fn page(
    conn: &Connection,
    filter: &ListFilter,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<FileRow>> {
    let (filter_sql, mut params) = filter.sql();
    params.push(before.unwrap_or(i64::MAX).to_string());
    let before_sql = format!(
        "{} id < CAST(?{} AS INTEGER)",
        if filter_sql.is_empty() {
            "WHERE"
        } else {
            " AND"
        },
        params.len()
    );
    params.push(limit.min(i64::MAX as usize).to_string());
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM files {filter_sql}{before_sql} ORDER BY id DESC
         LIMIT CAST(?{} AS INTEGER)",
        params.len()
    ))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Files by status, every status the ledger holds, in name order.
pub fn count_by_status(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM files GROUP BY status ORDER BY 1")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The agents that have rows in the ledger, in name order.
pub fn agents(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT agent FROM files ORDER BY 1")?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Records how long a file took, in seconds, from the start of reading to the moment its
/// row reached its final status (the commit follows in the same transaction).
pub fn set_seconds(conn: &Connection, id: i64, seconds: f64) -> Result<()> {
    conn.prepare_cached("UPDATE files SET seconds = ?2 WHERE id = ?1")?
        .execute(params![id, seconds])?;
    Ok(())
}

/// Per-file ingest durations as a cumulative histogram over `bounds` (seconds, rising):
/// how many files took at most each bound, the count and the sum, over the files
/// with a recorded duration.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    /// (upper bound, files at or below it), one per bound.
    pub buckets: Vec<(f64, u64)>,
    /// Files with a duration.
    pub count: u64,
    /// Their durations added up.
    pub sum: f64,
}

/// The ledger's per-file durations against `bounds` (see [`Durations`]), in one scan.
pub fn durations(conn: &Connection, bounds: &[f64]) -> Result<Durations> {
    let sums: String = (1..=bounds.len())
        .map(|i| format!(", COALESCE(SUM(seconds <= ?{i}), 0)"))
        .collect();
    conn.query_row(
        &format!(
            "SELECT COUNT(seconds), COALESCE(SUM(seconds), 0.0){sums}
             FROM files WHERE seconds IS NOT NULL"
        ),
        rusqlite::params_from_iter(bounds),
        |r| {
            let mut buckets = Vec::with_capacity(bounds.len());
            for (i, b) in bounds.iter().enumerate() {
                buckets.push((*b, r.get::<_, i64>(i + 2)? as u64));
            }
            Ok(Durations {
                buckets,
                count: r.get::<_, i64>(0)? as u64,
                sum: r.get(1)?,
            })
        },
    )
    .map_err(Into::into)
}

const COLUMNS: &str =
    "id, agent, name, source_path, stored_path, content_hash, size, status, encoding,
    replaced, layout, session, pairs_seen, pairs_new, pairs_duplicate, pairs_invalid, resume_at,
    invalid, reason, duplicate_of, started_at, finished_at, salvage, seconds";

fn from_row(r: &Row<'_>) -> rusqlite::Result<FileRow> {
    let hash: Option<Vec<u8>> = r.get(5)?;
    let status: String = r.get(7)?;
    let invalid: Option<String> = r.get(17)?;
    Ok(FileRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        name: r.get(2)?,
        source_path: r.get(3)?,
        stored_path: r.get(4)?,
        content_hash: hash.map(|h| crate::pair::hex(&h)),
        size: r.get(6)?,
        status: FileStatus::parse(&status),
        encoding: r.get(8)?,
        replaced: r.get(9)?,
        layout: r.get(10)?,
        session: r.get(11)?,
        pairs_seen: r.get(12)?,
        pairs_new: r.get(13)?,
        pairs_duplicate: r.get(14)?,
        pairs_invalid: r.get(15)?,
        resume_at: r.get(16)?,
        invalid: invalid
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        reason: r.get(18)?,
        duplicate_of: r.get(19)?,
        started_at: r.get(20)?,
        finished_at: r.get(21)?,
        salvage: r
            .get::<_, Option<String>>(22)?
            .and_then(|s| serde_json::from_str(&s).ok()),
        seconds: r.get(23)?,
    })
}

/// Pairs stored for the first time by the files a session integrated (its backfill, or
/// an ingest run inside it): exactly its own, whatever other agents did meanwhile.
pub fn pairs_of_session(conn: &Connection, session: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(SUM(pairs_new), 0) FROM files WHERE session_id = ?1")?
        .query_row([session], |r| r.get::<_, i64>(0))? as u64)
}

/// Where the ledger stands before a run that tags its files: the highest row id (0
/// when empty) and the rows left partial (files a run may resume and finish).
pub fn mark(conn: &Connection) -> Result<(i64, Vec<i64>)> {
    let max = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM files", [], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached("SELECT id FROM files WHERE status = 'partial'")?;
    let partial = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok((max, partial))
}

/// Tags with `session` the ledger rows a run wrote, given [`mark`] from before it: rows
/// added since, and rows that were partial and are finished now. The caller holds the
/// writer lock, so no other run wrote meanwhile.
pub fn tag_session(conn: &Connection, session: &str, before: &(i64, Vec<i64>)) -> Result<u64> {
    let mut n = conn.execute(
        "UPDATE files SET session_id = ?1 WHERE session_id IS NULL AND id > ?2",
        params![session, before.0],
    )? as u64;
    let mut resumed = conn.prepare_cached(
        "UPDATE files SET session_id = ?1
         WHERE id = ?2 AND session_id IS NULL AND status <> 'partial'",
    )?;
    for id in &before.1 {
        n += resumed.execute(params![session, id])? as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        conn: &Connection,
        agent: &str,
        name: &str,
        status: FileStatus,
        seconds: Option<f64>,
    ) -> i64 {
        let id = insert(
            conn,
            &NewFile {
                agent,
                name,
                source_path: name,
                stored_path: None,
                content_hash: None,
                size: 1,
                status,
                encoding: None,
                replaced: false,
                layout: None,
                session: None,
                pairs_seen: 0,
                invalid: &[],
                reason: None,
                duplicate_of: None,
                salvage: None,
                now: "2026-01-01T00:00:00Z",
            },
        )
        .unwrap();
        if let Some(s) = seconds {
            set_seconds(conn, id, s).unwrap();
        }
        id
    }

    #[test]
    fn filters_pages_and_statuses() {
        let conn = crate::store::open_in_memory().unwrap();
        row(
            &conn,
            "droid",
            "a.json",
            FileStatus::Integrated,
            Some(0.002),
        );
        row(&conn, "zai", "b.json", FileStatus::Rejected, Some(0.02));
        row(&conn, "droid", "c.json", FileStatus::Rejected, Some(3.0));
        row(&conn, "droid", "d.json", FileStatus::Duplicate, None);
        let names = |rows: Vec<FileRow>| rows.into_iter().map(|r| r.name).collect::<Vec<_>>();
        let by = |agent: Option<&str>, status: Option<&str>| ListFilter {
            agent: agent.map(str::to_string),
            status: status.map(str::to_string),
            ..ListFilter::default()
        };
        for (case, filter, want) in [
            (
                "everything",
                ListFilter::default(),
                vec!["a.json", "b.json", "c.json", "d.json"],
            ),
            (
                "rejected only",
                ListFilter {
                    rejected_only: true,
                    ..ListFilter::default()
                },
                vec!["b.json", "c.json"],
            ),
            (
                "one agent",
                by(Some("droid"), None),
                vec!["a.json", "c.json", "d.json"],
            ),
            (
                "agent and status",
                by(Some("droid"), Some("rejected")),
                vec!["c.json"],
            ),
            ("a status no row has", by(None, Some("skipped")), vec![]),
        ] {
            assert_eq!(names(list(&conn, &filter).unwrap()), want, "{case}");
        }
        // Newest first, a page at a time.
        let first = page(&conn, &ListFilter::default(), None, 3).unwrap();
        assert_eq!(names(first.clone()), ["d.json", "c.json", "b.json"]);
        let next = page(&conn, &ListFilter::default(), Some(first[2].id), 3).unwrap();
        assert_eq!(names(next), ["a.json"]);
        assert_eq!(
            names(page(&conn, &by(Some("droid"), None), None, 2).unwrap()),
            ["d.json", "c.json"]
        );
        assert_eq!(
            count_by_status(&conn).unwrap(),
            [
                ("duplicate".to_string(), 1),
                ("integrated".to_string(), 1),
                ("rejected".to_string(), 2)
            ]
        );
        assert_eq!(agents(&conn).unwrap(), ["droid", "zai"]);
    }

    #[test]
    fn durations_are_cumulative_over_the_files_that_have_one() {
        let conn = crate::store::open_in_memory().unwrap();
        for (i, s) in [0.002, 0.02, 0.03, 3.0].into_iter().enumerate() {
            row(
                &conn,
                "droid",
                &format!("{i}.json"),
                FileStatus::Integrated,
                Some(s),
            );
        }
        row(&conn, "droid", "old.json", FileStatus::Integrated, None);
        let d = durations(&conn, &[0.01, 0.05, 1.0]).unwrap();
        assert_eq!(d.buckets, [(0.01, 1), (0.05, 3), (1.0, 3)]);
        assert_eq!(d.count, 4);
        assert!((d.sum - 3.052).abs() < 1e-9, "{}", d.sum);
        let empty = durations(&crate::store::open_in_memory().unwrap(), &[1.0]).unwrap();
        assert_eq!(
            (empty.buckets, empty.count, empty.sum),
            (vec![(1.0, 0)], 0, 0.0)
        );
    }
}
