//! Verdicts: each message's [`Written`] from what became of its batch's
//! winners and dead letters, the dead letters to count by reason, and the
//! winners the dedup cache may learn. A pure function, [`decide`].
//!
//! * A winner is `Stored` if its row changed the table, `Superseded` if it
//!   was committed without changing it (the table held the same or a newer
//!   observation), `DeadLetter` if the database rejected it and its dead
//!   letter is committed, and `Nack` otherwise.
//! * A loser follows its key's winner: `Superseded` once the winner is
//!   committed or recorded as a dead letter, `Nack` if not.
//! * A stale message is `Stale`; a dead letter is `DeadLetter` once committed.
//! * Only committed winners are learned by the cache: what they wrote, or
//!   something newer, is in the table.

use super::commit::{Isolated, Upserted};
use super::layout::{Layout, Place};
use crate::model::Reason;

/// What became of one message of a batch: the write stage's verdict, which
/// the ack stage settles (`Nack` nacks, the rest ack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Its own row changed the table: it is the newest observation of its key
    /// committed so far.
    Stored,
    /// Committed without changing the table: a newer observation of its key
    /// is committed (in this batch or before), or this very observation was
    /// (a redelivery); or it lost to a newer one in its batch that the
    /// database rejected as a dead letter.
    Superseded,
    /// The dedup cache proved it not newer than what is committed.
    Stale,
    /// Its dead letter is committed.
    DeadLetter,
    /// Given up during shutdown: to be delivered again.
    Nack,
}

/// What became of a winner (the newest scan of its key in the batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WinnerCommit {
    /// Committed, and its row changed the table.
    Changed,
    /// Committed; the table already held the same or a newer observation.
    Unchanged,
    /// Rejected by the database; its dead letter is committed.
    DeadLettered,
    /// Nothing about it is committed (given up at shutdown, or its dead
    /// letter could not be recorded): to be delivered again.
    Uncommitted,
}

impl WinnerCommit {
    /// A winner's commit from its upsert; a rejected winner is dead-lettered
    /// if `rejection_recorded`.
    pub(super) fn of(upserted: &Upserted, rejection_recorded: bool) -> Self {
        match upserted {
            Isolated::Committed(true) => WinnerCommit::Changed,
            Isolated::Committed(false) => WinnerCommit::Unchanged,
            Isolated::Rejected(_) if rejection_recorded => WinnerCommit::DeadLettered,
            Isolated::Rejected(_) | Isolated::GaveUp => WinnerCommit::Uncommitted,
        }
    }

    fn is_committed(self) -> bool {
        matches!(self, WinnerCommit::Changed | WinnerCommit::Unchanged)
    }
}

/// What became of one of the batch's dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LetterCommit {
    /// Its reason.
    pub(super) reason: Reason,
    /// Whether it is committed.
    pub(super) committed: bool,
}

/// The outcome of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    /// Every message's verdict, in batch order.
    pub written: Vec<Written>,
    /// Whether the cache learns the message's key and order, in batch order.
    pub learn: Vec<bool>,
    /// Rows of the table changed.
    pub rows_written: u64,
    /// Dead letters committed, by reason.
    pub dead_by_reason: Vec<(Reason, u64)>,
}

impl Layout<'_> {
    /// The verdicts when the upsert of the winners (`upserted`, one per
    /// winner) and every dead letter's record are one transaction, as in
    /// `dead-letters replay`: a rejected winner's dead letter is written with
    /// the upsert, and the batch's own dead letters are already stored. (The
    /// write stage commits a rejected winner's dead letter after the fact,
    /// see [`super::Committer::conclude`].)
    pub fn verdicts_in_one_transaction(&self, upserted: &[Upserted]) -> Verdicts {
        let winners: Vec<WinnerCommit> =
            upserted.iter().map(|u| WinnerCommit::of(u, true)).collect();
        let dead: Vec<LetterCommit> = self
            .dead
            .iter()
            .map(|d| LetterCommit {
                reason: d.reason,
                committed: true,
            })
            .collect();
        decide(&self.places, &winners, &dead)
    }
}

/// The verdicts for a batch laid out as `places`, given the commits of its
/// `winners` and `dead` letters (indexed as the places index them).
pub(super) fn decide(
    places: &[Place],
    winners: &[WinnerCommit],
    dead: &[LetterCommit],
) -> Verdicts {
    let commit = |w: usize| winners.get(w).copied().unwrap_or(WinnerCommit::Uncommitted);
    let written = places
        .iter()
        .map(|place| match *place {
            Place::Winner(w) => match commit(w) {
                WinnerCommit::Changed => Written::Stored,
                WinnerCommit::Unchanged => Written::Superseded,
                WinnerCommit::DeadLettered => Written::DeadLetter,
                WinnerCommit::Uncommitted => Written::Nack,
            },
            Place::Loser(w) if commit(w) != WinnerCommit::Uncommitted => Written::Superseded,
            Place::Stale => Written::Stale,
            Place::Dead(d) if dead.get(d).is_some_and(|d| d.committed) => Written::DeadLetter,
            Place::Loser(_) | Place::Dead(_) | Place::Unmatched => Written::Nack,
        })
        .collect();
    let learn = places
        .iter()
        .map(|place| matches!(*place, Place::Winner(w) if commit(w).is_committed()))
        .collect();
    let rows_written = winners
        .iter()
        .filter(|&&c| c == WinnerCommit::Changed)
        .count() as u64;
    let rejected = winners
        .iter()
        .filter(|&&c| c == WinnerCommit::DeadLettered)
        .map(|_| Reason::RejectedByDatabase);
    let recorded = dead.iter().filter(|d| d.committed).map(|d| d.reason);
    Verdicts {
        written,
        learn,
        rows_written,
        dead_by_reason: count_by_reason(rejected.chain(recorded)),
    }
}

/// Counts `reasons`, once per reason, in order of first appearance.
fn count_by_reason(reasons: impl Iterator<Item = Reason>) -> Vec<(Reason, u64)> {
    let mut counts: Vec<(Reason, u64)> = Vec::new();
    for reason in reasons {
        match counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((reason, 1)),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_COMMITS: [WinnerCommit; 4] = [
        WinnerCommit::Changed,
        WinnerCommit::Unchanged,
        WinnerCommit::DeadLettered,
        WinnerCommit::Uncommitted,
    ];

    #[test]
    fn a_batch_of_every_kind() {
        use Place::{Dead, Loser, Winner};
        let places = [
            Winner(0),
            Loser(0),
            Winner(1),
            Loser(1),
            Place::Stale,
            Dead(0),
        ];
        let winners = [WinnerCommit::Changed, WinnerCommit::Uncommitted];
        let dead = [LetterCommit {
            reason: Reason::InvalidJson,
            committed: true,
        }];
        let v = decide(&places, &winners, &dead);
        use Written::{DeadLetter, Nack, Stored, Superseded};
        assert_eq!(
            v.written,
            [Stored, Superseded, Nack, Nack, Written::Stale, DeadLetter]
        );
        assert_eq!(v.learn, [true, false, false, false, false, false]);
        assert_eq!(v.rows_written, 1);
        assert_eq!(v.dead_by_reason, [(Reason::InvalidJson, 1)]);
    }

    /// A batch: winners with their commits, and per message a place (each winner
    /// exactly once, losers, stale messages and dead letters), shuffled.
    fn batch() -> impl Strategy<Value = (Vec<Place>, Vec<WinnerCommit>, Vec<LetterCommit>)> {
        let winners = proptest::collection::vec(prop::sample::select(&ALL_COMMITS[..]), 0..8);
        let dead = proptest::collection::vec(
            (
                prop::sample::select(vec![Reason::InvalidJson, Reason::InvalidIp]),
                any::<bool>(),
            ),
            0..5,
        );
        (winners, dead, 0usize..10, 0usize..4, any::<u64>())
            .prop_flat_map(|(winners, dead, losers, stale, seed)| {
                let n = winners.len();
                let loser_of = proptest::collection::vec(0..n.max(1), losers);
                (Just((winners, dead, stale, seed)), loser_of)
            })
            .prop_map(|((winners, dead, stale, seed), loser_of)| {
                let mut places: Vec<Place> = (0..winners.len()).map(Place::Winner).collect();
                if !winners.is_empty() {
                    places.extend(loser_of.into_iter().map(Place::Loser));
                }
                places.extend(std::iter::repeat_n(Place::Stale, stale));
                places.extend((0..dead.len()).map(Place::Dead));
                shuffle(&mut places, seed);
                let dead = dead
                    .into_iter()
                    .map(|(reason, committed)| LetterCommit { reason, committed })
                    .collect();
                (places, winners, dead)
            })
    }

    fn shuffle<T>(v: &mut [T], mut s: u64) {
        for i in (1..v.len()).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.swap(i, (s >> 33) as usize % (i + 1));
        }
    }

    proptest! {
        #[test]
        fn every_message_gets_the_verdict_its_winner_or_letter_says(
            (places, winners, dead) in batch()
        ) {
            let v = decide(&places, &winners, &dead);
            prop_assert_eq!(v.written.len(), places.len());
            prop_assert_eq!(v.learn.len(), places.len());
            for ((place, written), learn) in places.iter().zip(&v.written).zip(&v.learn) {
                match *place {
                    Place::Winner(w) | Place::Loser(w) => {
                        let committed = matches!(winners[w], WinnerCommit::Changed | WinnerCommit::Unchanged);
                        let concluded = winners[w] != WinnerCommit::Uncommitted;
                        // A nack never comes with a committed winner.
                        prop_assert_eq!(*written == Written::Nack, !concluded);
                        prop_assert_eq!(*learn, committed && matches!(place, Place::Winner(_)));
                        if let Place::Loser(_) = place {
                            prop_assert_eq!(*written == Written::Superseded, concluded);
                        } else {
                            prop_assert_eq!(*written == Written::Stored, winners[w] == WinnerCommit::Changed);
                        }
                    }
                    Place::Stale => prop_assert_eq!(*written, Written::Stale),
                    Place::Dead(d) => prop_assert_eq!(*written == Written::DeadLetter, dead[d].committed),
                    Place::Unmatched => prop_assert!(false),
                }
            }
            let stored = v.written.iter().filter(|w| **w == Written::Stored).count() as u64;
            prop_assert_eq!(v.rows_written, stored);
            let dead_letters = v.written.iter().filter(|w| **w == Written::DeadLetter).count() as u64;
            prop_assert_eq!(v.dead_by_reason.iter().map(|(_, n)| n).sum::<u64>(), dead_letters);
        }
    }
}
