//! Verdicts: each message's [`Written`] from what became of its batch's
//! winners and dead letters, the dead letters to count by reason, and the
//! winners the dedup cache may learn. A pure function, [`decide`].
//!
//! * A winner is `Stored` if its row changed the table, `Superseded` if it
//!   was committed without changing it (the table held the same or a newer
//!   observation), `DeadLetter` if the database rejected it and its dead
//!   letter is committed, and `Nack` otherwise.
//! * A loser follows its key's winner: `Superseded` once the winner is
//!   settled (committed, or recorded as a dead letter), `Nack` if not.
//! * A stale message is `Stale`; a dead letter is `DeadLetter` once committed.
//! * Only committed winners are learned by the cache: what they wrote, or
//!   something newer, is in the table.

use super::Written;
use super::layout::Slot;

/// The reason of the dead letter of a row the database rejects.
pub(crate) const REJECTED_BY_DATABASE: &str =
    crate::stages::decode::Reason::RejectedByDatabase.as_str();

/// What became of a winner (the newest scan of its key in the batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WinnerFate {
    /// Committed, and its row changed the table.
    Changed,
    /// Committed; the table already held the same or a newer observation.
    Unchanged,
    /// Rejected by the database; its dead letter is committed.
    DeadLettered,
    /// Not committed (given up at shutdown, or its dead letter could not be
    /// recorded): to be delivered again.
    Unsettled,
}

impl WinnerFate {
    fn is_committed(self) -> bool {
        matches!(self, WinnerFate::Changed | WinnerFate::Unchanged)
    }
}

/// What became of one of the batch's dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeadFate {
    /// Its reason.
    pub(crate) reason: &'static str,
    /// Whether it is committed.
    pub(crate) recorded: bool,
}

/// The outcome of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdicts {
    /// Every message's verdict, in batch order.
    pub(crate) written: Vec<Written>,
    /// Whether the cache learns the message's key and order, in batch order.
    pub(crate) learn: Vec<bool>,
    /// Rows of the table changed.
    pub(crate) rows_written: u64,
    /// Dead letters committed, by reason.
    pub(crate) dead_by_reason: Vec<(&'static str, u64)>,
}

/// The verdicts for a batch laid out as `slots`, given the fates of its
/// `winners` and `dead` letters (indexed as the slots index them).
pub(crate) fn decide(slots: &[Slot], winners: &[WinnerFate], dead: &[DeadFate]) -> Verdicts {
    let fate = |w: usize| winners.get(w).copied().unwrap_or(WinnerFate::Unsettled);
    let written = slots
        .iter()
        .map(|slot| match *slot {
            Slot::Winner(w) => match fate(w) {
                WinnerFate::Changed => Written::Stored,
                WinnerFate::Unchanged => Written::Superseded,
                WinnerFate::DeadLettered => Written::DeadLetter,
                WinnerFate::Unsettled => Written::Nack,
            },
            Slot::Loser(w) if fate(w) != WinnerFate::Unsettled => Written::Superseded,
            Slot::Stale => Written::Stale,
            Slot::Dead(d) if dead.get(d).is_some_and(|d| d.recorded) => Written::DeadLetter,
            Slot::Loser(_) | Slot::Dead(_) | Slot::Unmatched => Written::Nack,
        })
        .collect();
    let learn = slots
        .iter()
        .map(|slot| matches!(*slot, Slot::Winner(w) if fate(w).is_committed()))
        .collect();
    let rows_written = winners
        .iter()
        .filter(|&&f| f == WinnerFate::Changed)
        .count() as u64;
    let rejected = winners
        .iter()
        .filter(|&&f| f == WinnerFate::DeadLettered)
        .map(|_| REJECTED_BY_DATABASE);
    let recorded = dead.iter().filter(|d| d.recorded).map(|d| d.reason);
    Verdicts {
        written,
        learn,
        rows_written,
        dead_by_reason: count_by_reason(rejected.chain(recorded)),
    }
}

/// Counts `reasons`, once per reason, in order of first appearance.
fn count_by_reason(reasons: impl Iterator<Item = &'static str>) -> Vec<(&'static str, u64)> {
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
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

    const ALL_FATES: [WinnerFate; 4] = [
        WinnerFate::Changed,
        WinnerFate::Unchanged,
        WinnerFate::DeadLettered,
        WinnerFate::Unsettled,
    ];

    #[test]
    fn a_batch_of_every_kind() {
        use Slot::{Dead, Loser, Winner};
        let slots = [
            Winner(0),
            Loser(0),
            Winner(1),
            Loser(1),
            Slot::Stale,
            Dead(0),
        ];
        let winners = [WinnerFate::Changed, WinnerFate::Unsettled];
        let dead = [DeadFate {
            reason: "invalid_json",
            recorded: true,
        }];
        let v = decide(&slots, &winners, &dead);
        use Written::{DeadLetter, Nack, Stored, Superseded};
        assert_eq!(
            v.written,
            [Stored, Superseded, Nack, Nack, Written::Stale, DeadLetter]
        );
        assert_eq!(v.learn, [true, false, false, false, false, false]);
        assert_eq!(v.rows_written, 1);
        assert_eq!(v.dead_by_reason, [("invalid_json", 1)]);
    }

    /// A batch: winners with fates, and per message a slot (each winner
    /// exactly once, losers, stale messages and dead letters), shuffled.
    fn batch() -> impl Strategy<Value = (Vec<Slot>, Vec<WinnerFate>, Vec<DeadFate>)> {
        let winners = proptest::collection::vec(prop::sample::select(&ALL_FATES[..]), 0..8);
        let dead = proptest::collection::vec(
            (
                prop::sample::select(vec!["invalid_json", "bad_ip"]),
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
                let mut slots: Vec<Slot> = (0..winners.len()).map(Slot::Winner).collect();
                if !winners.is_empty() {
                    slots.extend(loser_of.into_iter().map(Slot::Loser));
                }
                slots.extend(std::iter::repeat_n(Slot::Stale, stale));
                slots.extend((0..dead.len()).map(Slot::Dead));
                shuffle(&mut slots, seed);
                let dead = dead
                    .into_iter()
                    .map(|(reason, recorded)| DeadFate { reason, recorded })
                    .collect();
                (slots, winners, dead)
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
            (slots, winners, dead) in batch()
        ) {
            let v = decide(&slots, &winners, &dead);
            prop_assert_eq!(v.written.len(), slots.len());
            prop_assert_eq!(v.learn.len(), slots.len());
            for ((slot, written), learn) in slots.iter().zip(&v.written).zip(&v.learn) {
                match *slot {
                    Slot::Winner(w) | Slot::Loser(w) => {
                        let committed = matches!(winners[w], WinnerFate::Changed | WinnerFate::Unchanged);
                        let settled = winners[w] != WinnerFate::Unsettled;
                        // A nack never comes with a committed winner.
                        prop_assert_eq!(*written == Written::Nack, !settled);
                        prop_assert_eq!(*learn, committed && matches!(slot, Slot::Winner(_)));
                        if let Slot::Loser(_) = slot {
                            prop_assert_eq!(*written == Written::Superseded, settled);
                        } else {
                            prop_assert_eq!(*written == Written::Stored, winners[w] == WinnerFate::Changed);
                        }
                    }
                    Slot::Stale => prop_assert_eq!(*written, Written::Stale),
                    Slot::Dead(d) => prop_assert_eq!(*written == Written::DeadLetter, dead[d].recorded),
                    Slot::Unmatched => prop_assert!(false),
                }
            }
            let stored = v.written.iter().filter(|w| **w == Written::Stored).count() as u64;
            prop_assert_eq!(v.rows_written, stored);
            let dead_letters = v.written.iter().filter(|w| **w == Written::DeadLetter).count() as u64;
            prop_assert_eq!(v.dead_by_reason.iter().map(|(_, n)| n).sum::<u64>(), dead_letters);
        }
    }
}
