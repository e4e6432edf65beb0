//! Disjoint sets over dense indexes, shared by the near-duplicate methods (`near_dups`,
//! `cosine`) and the groups that join their clusters (`groups`).

/// Disjoint sets over the indexes `0..n`, with path halving and union by size.
pub struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    /// `n` sets of one.
    pub fn new(n: usize) -> UnionFind {
        UnionFind {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    /// The root of `x`'s set.
    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] as usize != x {
            let p = self.parent[x] as usize;
            self.parent[x] = self.parent[p];
            x = p;
        }
        x
    }

    /// Joins the sets of `a` and `b`.
    pub fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a as u32;
        self.size[a] += self.size[b];
    }

    /// The sets that `members` fall into, each listed once and in ascending order, the
    /// sets ordered by their smallest member: an order that does not depend on which
    /// member became a root.
    pub fn sets(&mut self, members: impl IntoIterator<Item = usize>) -> Vec<Vec<usize>> {
        let mut by_root: std::collections::HashMap<usize, Vec<usize>> = Default::default();
        for m in members {
            by_root.entry(self.find(m)).or_default().push(m);
        }
        let mut sets: Vec<Vec<usize>> = by_root
            .into_values()
            .map(|mut s| {
                s.sort_unstable();
                s.dedup();
                s
            })
            .collect();
        sets.sort_unstable_by_key(|s| s[0]);
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_join_chains_and_sets_come_in_order_of_their_smallest_member() {
        let mut uf = UnionFind::new(8);
        uf.union(6, 2);
        uf.union(4, 2);
        uf.union(7, 1);
        assert_eq!(uf.find(6), uf.find(4));
        assert_ne!(uf.find(6), uf.find(1));
        assert_eq!(uf.sets([7, 6, 4, 2, 1, 4]), vec![vec![1, 7], vec![2, 4, 6]]);
        assert_eq!(uf.sets([3]), vec![vec![3]]);
    }
}
