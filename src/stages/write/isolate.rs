//! Isolation: when the database rejects a set of rows for their data, find
//! exactly the rows at fault by bisection, and commit the rest.
//!
//! [`isolate`] is given the number of rows and an async "commit this
//! sub-range" operation (retrying transient failures itself, see
//! [`super::retry`]). It commits the whole range; a rejected range is halved
//! and each half committed in turn, down to single rows, which are the ones at
//! fault. With `r` rejected rows among `n`, that takes at most
//! `1 + 2·r·⌈log₂ n⌉` attempts, and a single attempt when nothing is rejected.
//! Every row ends with exactly one [`Fate`] and is committed at most once.

use super::retry::Failure;
use std::future::Future;
use std::ops::Range;

/// What became of one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fate<R, E> {
    /// Committed, with what the commit said about the row.
    Committed(R),
    /// Rejected on its own: the row is at fault.
    Rejected(E),
    /// Given up at shutdown: neither committed nor at fault.
    GaveUp,
}

impl<R, E> Fate<R, E> {
    /// The same fate with the rejection mapped by `f`.
    pub(crate) fn map_rejected<F>(self, f: impl FnOnce(E) -> F) -> Fate<R, F> {
        match self {
            Fate::Committed(r) => Fate::Committed(r),
            Fate::Rejected(e) => Fate::Rejected(f(e)),
            Fate::GaveUp => Fate::GaveUp,
        }
    }
}

/// Commits rows `0..len` through `commit`, which commits a sub-range and
/// returns one result per row of it, bisecting around rejected rows.
pub(crate) async fn isolate<R, E, F, Fut>(len: usize, mut commit: F) -> Vec<Fate<R, E>>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, Failure<E>>>,
{
    let mut fates: Vec<Option<Fate<R, E>>> = (0..len).map(|_| None).collect();
    let mut work: Vec<Range<usize>> = Vec::new();
    if len > 0 {
        work.push(0..len);
    }
    while let Some(range) = work.pop() {
        match commit(range.clone()).await {
            Ok(results) => {
                for (fate, r) in fates[range].iter_mut().zip(results) {
                    *fate = Some(Fate::Committed(r));
                }
            }
            Err(Failure::GaveUp) => fates[range].fill_with(|| Some(Fate::GaveUp)),
            Err(Failure::Rejected(e)) if range.len() == 1 => {
                fates[range.start] = Some(Fate::Rejected(e));
            }
            Err(Failure::Rejected(_)) => {
                let mid = range.start + range.len() / 2;
                // Popped first half first: rows are attempted in order.
                work.push(mid..range.end);
                work.push(range.start..mid);
            }
        }
    }
    // A row without a result (a commit that returned too few) was not
    // committed as far as anyone can tell: given up, hence delivered again.
    fates
        .into_iter()
        .map(|f| f.unwrap_or(Fate::GaveUp))
        .collect()
}

/// Splits `range` of a sequence made of a first part of `at` items and a
/// second part into the range of each part, each relative to its part.
pub(crate) fn split_at(range: Range<usize>, at: usize) -> (Range<usize>, Range<usize>) {
    let first = range.start.min(at)..range.end.min(at);
    let second = range.start.max(at) - at..range.end.max(at) - at;
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Runs `isolate` over `n` rows with the rows in `bad` rejected and, from
    /// attempt `give_up_at` on, every attempt given up. Returns the fates,
    /// how often each row was committed, and the number of attempts.
    fn run(
        n: usize,
        bad: &BTreeSet<usize>,
        give_up_at: usize,
    ) -> (Vec<Fate<usize, usize>>, Vec<usize>, usize) {
        let mut commits = vec![0; n];
        let mut attempts = 0;
        let fates = futures::executor::block_on(isolate(n, |range: Range<usize>| {
            attempts += 1;
            let result = if attempts > give_up_at {
                Err(Failure::GaveUp)
            } else if let Some(&first) = bad.range(range.clone()).next() {
                Err(Failure::Rejected(first))
            } else {
                range.clone().for_each(|i| commits[i] += 1);
                Ok(range.collect())
            };
            async move { result }
        }));
        (fates, commits, attempts)
    }

    fn ceil_log2(n: usize) -> usize {
        n.next_power_of_two().trailing_zeros() as usize
    }

    #[test]
    fn nothing_rejected_takes_one_attempt_and_no_rows_none() {
        let (fates, commits, attempts) = run(5, &BTreeSet::new(), usize::MAX);
        assert_eq!(attempts, 1);
        assert_eq!(commits, [1; 5]);
        assert_eq!(fates, (0..5).map(Fate::Committed).collect::<Vec<_>>());
        assert_eq!(run(0, &BTreeSet::new(), usize::MAX).2, 0);
    }

    #[test]
    fn a_range_given_up_is_given_up_row_by_row() {
        let bad = BTreeSet::from([3]);
        let (fates, commits, _) = run(8, &bad, 1);
        assert_eq!(commits, [0; 8]);
        assert!(fates.iter().all(|f| *f == Fate::GaveUp), "{fates:?}");
    }

    #[test]
    fn split_at_cuts_a_range_into_its_parts() {
        assert_eq!(split_at(0..5, 3), (0..3, 0..2));
        assert_eq!(split_at(1..3, 3), (1..3, 0..0));
        assert_eq!(split_at(3..4, 3), (3..3, 0..1));
        assert_eq!(split_at(0..0, 0), (0..0, 0..0));
    }

    proptest! {
        #[test]
        fn bisection_isolates_exactly_the_rejected_rows(
            n in 0usize..300,
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let bad: BTreeSet<usize> = if n == 0 {
                BTreeSet::new()
            } else {
                picks.iter().map(|p| p.index(n)).collect()
            };
            let (fates, commits, attempts) = run(n, &bad, usize::MAX);
            for (i, fate) in fates.iter().enumerate() {
                if bad.contains(&i) {
                    prop_assert_eq!(fate, &Fate::Rejected(i));
                    prop_assert_eq!(commits[i], 0);
                } else {
                    prop_assert_eq!(fate, &Fate::Committed(i));
                    prop_assert_eq!(commits[i], 1, "row {} committed once", i);
                }
            }
            let bound = usize::from(n > 0) + 2 * bad.len() * ceil_log2(n);
            prop_assert!(attempts <= bound, "{} attempts > {}", attempts, bound);
        }

        #[test]
        fn split_at_partitions_every_range(start in 0usize..50, len in 0usize..50, at in 0usize..100) {
            let range = start..start + len;
            let (a, b) = split_at(range.clone(), at);
            let rebuilt: Vec<usize> = a.clone().chain(b.clone().map(|i| i + at)).collect();
            prop_assert_eq!(rebuilt, range.collect::<Vec<_>>());
            prop_assert!(a.end <= at);
        }
    }
}
