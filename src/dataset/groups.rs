//! Near-duplicate groups across methods. Each method (`minhash`, the lexical run;
//! `cosine`, the semantic one) stores its own clusters (`store::dataset::cluster_members`);
//! a pair may sit in a cluster of each. A *group* is what those clusters make together:
//! two pairs are in one group when a chain of clusters of the counted methods links them
//! (union-find). Its *anchor* is its lowest pair id, the first of it stored, which is
//! also every cluster's representative when only one method counts.
//!
//! The RAG export keeps one pair per group (`--exclude near-dups`), and the split puts a
//! whole group in one split, so "near-duplicate" means the same thing to both.

use crate::dataset::union_find::UnionFind;
use crate::store::dataset::{COSINE, MINHASH, cluster_members};
use anyhow::Result;
use rusqlite::Connection;
use std::collections::HashMap;

/// The methods that exist, in the order they are named.
pub const METHODS: [&str; 2] = [MINHASH, COSINE];

/// Parses a comma-separated list of methods (`minhash,cosine`); `none` or an empty
/// list counts no method.
pub fn parse_methods(s: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for m in s.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        if m == "none" {
            continue;
        }
        anyhow::ensure!(
            METHODS.contains(&m),
            "unknown near-duplicate method {m:?}: expected minhash, cosine or none"
        );
        if !out.iter().any(|o| o == m) {
            out.push(m.to_string());
        }
    }
    Ok(out)
}

/// The groups of a snapshot: every pair that is in a cluster of a counted method, with
/// its group's anchor. Pairs in no cluster are their own group (and not stored).
#[derive(Debug, Default, Clone)]
pub struct Groups {
    anchor: HashMap<i64, i64>,
    /// Clusters read, per method (for the manifests).
    pub clusters_by_method: Vec<(String, u64)>,
}

impl Groups {
    /// Joins the clusters of `methods` among pairs with `id <= max_pair_id`.
    pub fn load(conn: &Connection, methods: &[String], max_pair_id: i64) -> Result<Groups> {
        // Pair ids to dense indexes for the union-find, in the order they are met.
        let mut index: HashMap<i64, usize> = HashMap::new();
        let mut ids: Vec<i64> = Vec::new();
        let mut links: Vec<(usize, usize)> = Vec::new();
        let mut clusters_by_method = Vec::new();
        for method in methods {
            let members = cluster_members(conn, method)?;
            let mut reps = 0u64;
            for m in members
                .iter()
                .filter(|m| m.pair_id <= max_pair_id && m.representative <= max_pair_id)
            {
                if m.pair_id == m.representative {
                    reps += 1;
                }
                let [a, b] = [m.pair_id, m.representative].map(|id| {
                    *index.entry(id).or_insert_with(|| {
                        ids.push(id);
                        ids.len() - 1
                    })
                });
                links.push((a, b));
            }
            clusters_by_method.push((method.clone(), reps));
        }
        let mut uf = UnionFind::new(ids.len());
        for &(a, b) in &links {
            uf.union(a, b);
        }
        // A group's anchor is its lowest pair id. A group of one (a cluster whose other
        // members are past the snapshot) is no group.
        let mut anchor = HashMap::with_capacity(ids.len());
        for set in uf.sets(0..ids.len()).into_iter().filter(|s| s.len() > 1) {
            let lowest = set
                .iter()
                .map(|&i| ids[i])
                .min()
                .expect("a set has a member");
            anchor.extend(set.iter().map(|&i| (ids[i], lowest)));
        }
        Ok(Groups {
            anchor,
            clusters_by_method,
        })
    }

    /// The anchor of `id`'s group (`id` itself when it is in none).
    pub fn anchor(&self, id: i64) -> i64 {
        self.anchor.get(&id).copied().unwrap_or(id)
    }

    /// Whether `id` is in a group (of two pairs or more).
    pub fn contains(&self, id: i64) -> bool {
        self.anchor.contains_key(&id)
    }

    /// Whether `id` is in a group and is not its anchor: what `--exclude near-dups`
    /// leaves out.
    pub fn is_duplicate(&self, id: i64) -> bool {
        self.anchor(id) != id
    }

    /// Every group of two pairs or more: its anchor and its members (anchor first), by
    /// anchor.
    pub fn by_anchor(&self) -> std::collections::BTreeMap<i64, Vec<i64>> {
        let mut out: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
        for (id, anchor) in &self.anchor {
            out.entry(*anchor).or_default().push(*id);
        }
        for members in out.values_mut() {
            members.sort_unstable();
        }
        out
    }

    /// Pairs in a group (anchors included).
    pub fn members(&self) -> usize {
        self.anchor.len()
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.anchor
            .iter()
            .filter(|(id, anchor)| id == anchor)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dataset::{ClusterMember, begin_run, replace_cluster_members};

    #[test]
    fn clusters_of_two_methods_that_share_a_pair_are_one_group() {
        let conn = crate::store::open_in_memory().unwrap();
        conn.execute(
            "INSERT INTO files (agent, name, source_path, size, status, started_at)
             VALUES ('t', 't', 't', 0, 'integrated', 'now')",
            [],
        )
        .unwrap();
        for i in 1..=8 {
            conn.execute(
                "INSERT INTO pairs (key, question, answer, agent, file_id, created_at)
                 VALUES (?1, 'q', 'a', 't', 1, 'now')",
                [vec![i as u8; 32]],
            )
            .unwrap();
        }
        let run = begin_run(&conn, "near_dups", &serde_json::json!({}), 8, 8, "t").unwrap();
        let m = |pair_id, representative| ClusterMember {
            pair_id,
            representative,
            similarity: 1.0,
        };
        replace_cluster_members(&conn, MINHASH, run, &[m(2, 2), m(5, 2), m(7, 7), m(8, 7)])
            .unwrap();
        replace_cluster_members(&conn, COSINE, run, &[m(3, 3), m(5, 3)]).unwrap();

        let both = Groups::load(&conn, &parse_methods("minhash,cosine").unwrap(), 8).unwrap();
        assert_eq!(both.anchor(5), 2);
        assert_eq!(both.anchor(3), 2, "3 and 2 are linked through 5");
        assert!(both.is_duplicate(3) && !both.is_duplicate(2) && !both.is_duplicate(1));
        assert_eq!((both.groups(), both.members()), (2, 5));

        let lexical = Groups::load(&conn, &parse_methods("minhash").unwrap(), 8).unwrap();
        assert_eq!(lexical.anchor(3), 3);

        let early = Groups::load(&conn, &parse_methods("minhash").unwrap(), 7).unwrap();
        assert_eq!(early.anchor(7), 7, "8 is past the snapshot: 7 is alone");
        assert!(parse_methods("levenshtein").is_err());
        assert!(parse_methods("none").unwrap().is_empty());
    }
}
