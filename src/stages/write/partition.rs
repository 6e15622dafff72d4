//! Partitioning: splits a batch's winners into disjoint sets of keys that are
//! committed concurrently, each in its own transaction on its own connection,
//! and puts the per-row results back in the winners' order.
//!
//! The sets share no key, so their transactions never wait on each other's
//! row locks; each keeps the winners' order (sorted by key), so they cannot
//! deadlock with other replicas either. One PostgreSQL backend runs on one
//! core; several use the machine. A partition is a key's hash modulo the
//! count, stable within a process, which is all that is needed: partitions
//! only keep this process's concurrent transactions on disjoint keys.

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, BuildHasherDefault, Hash};

/// Fewest rows worth a partition of their own: below this, a transaction's
/// fixed cost (round trips, commit) outweighs the parallelism.
pub(crate) const MIN_PARTITION_ROWS: usize = 256;

/// How many partitions `rows` winners are split into, `configured` at most.
pub(crate) fn count(rows: usize, configured: usize) -> usize {
    configured.min(rows / MIN_PARTITION_ROWS).max(1)
}

/// Which of `parts` partitions `key` belongs to.
fn partition_of<K: Hash + ?Sized>(key: &K, parts: usize) -> usize {
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (h % parts as u64) as usize
}

/// The winners of a batch split into partitions: each partition lists its
/// members' positions in the winners, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    parts: Vec<Vec<usize>>,
    rows: usize,
}

impl Plan {
    /// Splits items with `keys` (in order) into up to `configured`
    /// partitions, fewer when there are too few rows (see [`count`]).
    pub(crate) fn new<'k, K: Hash + 'k>(
        keys: impl ExactSizeIterator<Item = &'k K>,
        configured: usize,
    ) -> Self {
        let rows = keys.len();
        let n = count(rows, configured);
        let mut parts = vec![Vec::new(); n];
        for (i, key) in keys.enumerate() {
            let p = if n == 1 { 0 } else { partition_of(key, n) };
            parts[p].push(i);
        }
        Self { parts, rows }
    }

    /// The partitions' members, by position.
    pub(crate) fn parts(&self) -> &[Vec<usize>] {
        &self.parts
    }

    /// The members of every partition, taken from `items` (the items the plan
    /// was made for, in the same order).
    pub(crate) fn gather<T: Copy>(&self, items: &[T]) -> Vec<Vec<T>> {
        self.parts
            .iter()
            .map(|members| members.iter().map(|&i| items[i]).collect())
            .collect()
    }

    /// Puts per-partition results (one per member, in the partition's order)
    /// back in the items' order; an item without a result gets `missing`.
    pub(crate) fn reassemble<T: Clone>(&self, results: Vec<Vec<T>>, missing: T) -> Vec<T> {
        let mut out: Vec<Option<T>> = vec![None; self.rows];
        for (members, part) in self.parts.iter().zip(results) {
            for (&i, result) in members.iter().zip(part) {
                out[i] = Some(result);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| missing.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn small_batches_stay_whole() {
        assert_eq!(count(0, 4), 1);
        assert_eq!(count(MIN_PARTITION_ROWS * 2 - 1, 4), 1);
        assert_eq!(count(MIN_PARTITION_ROWS * 2, 4), 2);
        assert_eq!(count(MIN_PARTITION_ROWS * 100, 4), 4);
        assert_eq!(count(MIN_PARTITION_ROWS * 100, 0), 1);
        let keys: Vec<u32> = (0..10).collect();
        assert_eq!(
            Plan::new(keys.iter(), 8).parts(),
            [(0..10).collect::<Vec<_>>()]
        );
    }

    proptest! {
        #[test]
        fn partitions_are_sorted_disjoint_by_key_and_reassemble_to_the_identity(
            mut keys in proptest::collection::vec(any::<(u16, u8)>(), 0..2000),
            configured in 1usize..6,
        ) {
            keys.sort();
            let refs: Vec<&(u16, u8)> = keys.iter().collect();
            let plan = Plan::new(keys.iter(), configured);
            prop_assert_eq!(plan.parts().len(), count(keys.len(), configured));

            let mut home: BTreeMap<&(u16, u8), usize> = BTreeMap::new();
            for (p, members) in plan.gather(&refs).iter().enumerate() {
                prop_assert!(members.is_sorted(), "partition {} is sorted by key", p);
                for key in members {
                    let first = *home.entry(key).or_insert(p);
                    prop_assert_eq!(first, p, "key {:?} in two partitions", key);
                }
            }

            let positions: Vec<usize> = (0..keys.len()).collect();
            let back = plan.reassemble(plan.gather(&positions), usize::MAX);
            prop_assert_eq!(back, positions);
        }

        #[test]
        fn a_missing_result_is_filled_in(n in 600usize..1200, drop_from in 0usize..2) {
            let keys: Vec<usize> = (0..n).collect();
            let plan = Plan::new(keys.iter(), 2);
            let mut results = plan.gather(&keys);
            let dropped = results[drop_from].pop();
            let back = plan.reassemble(results, usize::MAX);
            prop_assert_eq!(back.iter().filter(|&&r| r == usize::MAX).count(), 1);
            if let Some(d) = dropped {
                prop_assert_eq!(back[d], usize::MAX);
            }
        }
    }
}
