//! Layout: where each message of a batch stands in what is written.
//!
//! The batch is collapsed to one row per key, newest wins
//! ([`merge::merge`]): its winners, sorted by key. Every message
//! gets a [`Slot`]: the winner of its key, a loser to that winner, stale
//! (proven redundant by the dedup cache), or a dead letter. The verdicts
//! ([`super::verdict`]) are read off the slots once the winners and dead
//! letters are committed.

use super::merge;
use crate::stages::{DeadLetter, Record, Scan};

/// Where one message of the batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// It is the winner at this position of [`Layout::winners`].
    Winner(usize),
    /// A newer observation of its key is the winner at this position.
    Loser(usize),
    /// The dedup cache proved it redundant: nothing to write.
    Stale,
    /// Its dead letter is at this position of [`Layout::dead`].
    Dead(usize),
    /// A scan whose key has no winner. Cannot happen (every key has one); it
    /// is nacked, the safe default.
    Unmatched,
}

/// A batch laid out for writing, borrowing its records.
#[derive(Debug)]
pub(crate) struct Layout<'a> {
    /// The newest scan of every key, sorted by key.
    pub(crate) winners: Vec<&'a Scan>,
    /// The dead letters, in batch order.
    pub(crate) dead: Vec<&'a DeadLetter>,
    /// Every message's slot, in batch order.
    pub(crate) slots: Vec<Slot>,
}

impl<'a> Layout<'a> {
    /// Lays out `records` (a batch, in order).
    pub(crate) fn of(records: impl Iterator<Item = &'a Record>) -> Self {
        let mut scans: Vec<&Scan> = Vec::new();
        let mut scan_at: Vec<usize> = Vec::new();
        let mut dead: Vec<&DeadLetter> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        for (i, record) in records.enumerate() {
            slots.push(match record {
                Record::Scan(s) => {
                    scans.push(s);
                    scan_at.push(i);
                    Slot::Unmatched
                }
                Record::Stale => Slot::Stale,
                Record::Dead(d) => {
                    dead.push(d);
                    Slot::Dead(dead.len() - 1)
                }
            });
        }
        let merged = merge::merge(&scans);
        let winners: Vec<&Scan> = merged.winners.iter().map(|&j| scans[j]).collect();
        for (j, (&w, &at)) in merged.winner_of.iter().zip(&scan_at).enumerate() {
            slots[at] = if merged.winners[w] == j {
                Slot::Winner(w)
            } else {
                Slot::Loser(w)
            };
        }
        Self {
            winners,
            dead,
            slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::fixtures::{dead_letter, scan};
    use proptest::prelude::*;

    #[test]
    fn every_message_has_its_place() {
        let batch = [
            Record::Scan(scan(1, 5, "a")),
            Record::Stale,
            Record::Scan(scan(2, 1, "b")),
            Record::Dead(dead_letter("c")),
            Record::Scan(scan(1, 7, "d")),
        ];
        let layout = Layout::of(batch.iter());
        let ids: Vec<&str> = layout
            .winners
            .iter()
            .map(|s| s.order.message_id.as_str())
            .collect();
        assert_eq!(ids, ["d", "b"]);
        assert_eq!(layout.dead[0].message_id, "c");
        use Slot::*;
        assert_eq!(
            layout.slots,
            [Loser(0), Stale, Winner(1), Dead(0), Winner(0)]
        );
    }

    proptest! {
        #[test]
        fn losers_point_at_a_newer_winner_of_their_key(
            rows in proptest::collection::vec((0u16..6, 0i64..4, 0u8..3), 0..60),
        ) {
            let batch: Vec<Record> = rows
                .iter()
                .enumerate()
                .map(|(i, &(key, ts, kind))| match kind {
                    0 => Record::Stale,
                    1 => Record::Dead(dead_letter(&format!("m{i}"))),
                    _ => Record::Scan(scan(key, ts, &format!("m{i}"))),
                })
                .collect();
            let layout = Layout::of(batch.iter());
            let mut seen = vec![0; layout.winners.len()];
            let mut dead = 0;
            for (record, slot) in batch.iter().zip(&layout.slots) {
                match (record, *slot) {
                    (Record::Scan(s), Slot::Winner(w)) => {
                        seen[w] += 1;
                        prop_assert_eq!(&layout.winners[w].order, &s.order);
                    }
                    (Record::Scan(s), Slot::Loser(w)) => {
                        prop_assert_eq!(&layout.winners[w].key, &s.key);
                        prop_assert!(layout.winners[w].order > s.order);
                    }
                    (Record::Stale, Slot::Stale) => {}
                    (Record::Dead(d), Slot::Dead(k)) => {
                        prop_assert_eq!(k, dead);
                        prop_assert_eq!(&layout.dead[k].message_id, &d.message_id);
                        dead += 1;
                    }
                    (record, slot) => prop_assert!(false, "{:?} in {:?}", record, slot),
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "each winner is one message");
        }
    }
}
