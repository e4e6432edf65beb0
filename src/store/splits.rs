//! Split assignments (`crate::dataset::split` decides, this file keeps): a scheme is one
//! set of split parameters (seed, ratios, stratum, which near-duplicate methods keep
//! clusters together); each pair's split under a scheme is written once, the first
//! time the pair is split, and never changed, so a growing database moves no pair.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};

/// The id of the scheme with these parameters (canonical JSON), created when new.
pub fn scheme(conn: &Connection, params_json: &str) -> Result<i64> {
    if let Some(id) = conn
        .query_row(
            "SELECT id FROM split_schemes WHERE params = ?1",
            [params_json],
            |r| r.get(0),
        )
        .optional()?
    {
        return Ok(id);
    }
    conn.execute(
        "INSERT INTO split_schemes (params) VALUES (?1)",
        [params_json],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Every assignment of `scheme` for pairs with `id <= max_pair_id`: (pair id, split),
/// in pair id order.
pub fn assignments(conn: &Connection, scheme: i64, max_pair_id: i64) -> Result<Vec<(i64, u8)>> {
    let mut stmt = conn.prepare(
        "SELECT pair_id, split FROM split_assignments
         WHERE scheme = ?1 AND pair_id <= ?2 ORDER BY pair_id",
    )?;
    let rows = stmt
        .query_map(params![scheme, max_pair_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u8))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Records new assignments of `scheme`. Call inside an open transaction; a pair that
/// already has one is an error (assignments are never changed).
pub fn insert_assignments_raw(
    conn: &Connection,
    scheme: i64,
    assigned: &[(i64, u8)],
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO split_assignments (scheme, pair_id, split) VALUES (?1, ?2, ?3)",
    )?;
    for (id, split) in assigned {
        stmt.execute(params![scheme, id, *split as i64])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_is_written_once() {
        let conn = crate::store::open_in_memory().unwrap();
        conn.execute(
            "INSERT INTO files (agent, name, source_path, size, status, started_at)
             VALUES ('t', 't', 't', 0, 'integrated', 'now')",
            [],
        )
        .unwrap();
        for i in 1..=3 {
            conn.execute(
                "INSERT INTO pairs (key, question, answer, agent, file_id, created_at)
                 VALUES (?1, 'q', 'a', 't', 1, 'now')",
                [vec![i as u8; 32]],
            )
            .unwrap();
        }
        let s = scheme(&conn, r#"{"seed":1}"#).unwrap();
        assert_eq!(scheme(&conn, r#"{"seed":1}"#).unwrap(), s);
        assert_ne!(scheme(&conn, r#"{"seed":2}"#).unwrap(), s);
        insert_assignments_raw(&conn, s, &[(1, 0), (3, 2)]).unwrap();
        assert_eq!(assignments(&conn, s, 3).unwrap(), vec![(1, 0), (3, 2)]);
        assert_eq!(assignments(&conn, s, 2).unwrap(), vec![(1, 0)]);
        assert!(insert_assignments_raw(&conn, s, &[(1, 1)]).is_err());
    }
}
