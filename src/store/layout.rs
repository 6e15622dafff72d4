//! Layout: which message of a batch wins its key, and every message's place.
//!
//! The batch is collapsed to one row per key, newest wins ([`merge`]): its
//! winners, sorted by key. Every message gets a [`Place`]: the winner of its
//! key, a loser to that winner, stale (proven redundant by the dedup cache),
//! or a dead letter. The verdicts ([`super::verdict`]) are read off the
//! places once the winners and dead letters are committed.
//!
//! One row per key is required by `INSERT .. ON CONFLICT DO UPDATE` (it
//! cannot touch a row twice in one statement); sorting by key makes every
//! writer, in this process or another replica, lock rows in the same order,
//! so concurrent batches cannot deadlock.

use crate::model::{DeadLetter, Record, Scan};

/// Where one message of the batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
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
pub struct Layout<'a> {
    /// The newest scan of every key, sorted by key.
    pub winners: Vec<&'a Scan>,
    /// The dead letters, in batch order.
    pub dead: Vec<&'a DeadLetter>,
    /// Every message's place, in batch order.
    pub places: Vec<Place>,
}

impl<'a> Layout<'a> {
    /// Lays out `records` (a batch, in order).
    pub fn of(records: impl Iterator<Item = &'a Record>) -> Self {
        let mut scans: Vec<&Scan> = Vec::new();
        let mut scan_at: Vec<usize> = Vec::new();
        let mut dead: Vec<&DeadLetter> = Vec::new();
        let mut places: Vec<Place> = Vec::new();
        for (i, record) in records.enumerate() {
            places.push(match record {
                Record::Scan(s) => {
                    scans.push(s);
                    scan_at.push(i);
                    Place::Unmatched
                }
                Record::Stale => Place::Stale,
                Record::Dead(d) => {
                    dead.push(d);
                    Place::Dead(dead.len() - 1)
                }
            });
        }
        let merged = merge(&scans);
        let winners: Vec<&Scan> = merged.winners.iter().map(|&j| scans[j]).collect();
        for (j, (&w, &at)) in merged.winner_of.iter().zip(&scan_at).enumerate() {
            places[at] = if merged.winners[w] == j {
                Place::Winner(w)
            } else {
                Place::Loser(w)
            };
        }
        Self {
            winners,
            dead,
            places,
        }
    }
}

/// Returns the indices of the newest scan of every key in `scans`, sorted by
/// key.
pub fn newest_per_key(scans: &[&Scan]) -> Vec<usize> {
    let mut idx = by_key_newest_first(scans);
    // The first of each key run is its newest; drop the rest of the run.
    idx.dedup_by(|later, first| scans[*later].key == scans[*first].key);
    idx
}

/// The indices of `scans`, sorted by key ascending, then order descending:
/// the first of each key run is the key's newest.
fn by_key_newest_first(scans: &[&Scan]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scans.len()).collect();
    idx.sort_unstable_by(|&a, &b| {
        let (a, b) = (scans[a], scans[b]);
        a.key.cmp(&b.key).then_with(|| b.order.cmp(&a.order))
    });
    idx
}

/// A batch of scans collapsed to one per key: see [`merge`].
#[derive(Debug)]
pub struct Merged {
    /// The indices of the newest scan of every key, sorted by key
    /// ([`newest_per_key`]).
    pub winners: Vec<usize>,
    /// For every scan, in input order, the position in `winners` of its
    /// key's winner.
    pub winner_of: Vec<usize>,
}

/// [`newest_per_key`], and for every scan the winner of its key, read off the
/// same sort: the scans of a key are adjacent in it, so no key is looked up.
pub fn merge(scans: &[&Scan]) -> Merged {
    let idx = by_key_newest_first(scans);
    let mut winners: Vec<usize> = Vec::new();
    let mut winner_of = vec![0; scans.len()];
    for j in idx {
        // The last winner is the first of the current key run.
        if winners.last().is_none_or(|&w| scans[w].key != scans[j].key) {
            winners.push(j);
        }
        winner_of[j] = winners.len() - 1;
    }
    Merged { winners, winner_of }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{dead_letter, scan};
    use crate::model::{Order, ScanKey};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn scan_of(ip: u8, port: u16, svc: &str, ts: i64, pubt: i64, id: &str) -> Scan {
        Scan {
            key: ScanKey {
                ip: std::net::IpAddr::from([10, 0, 0, ip]),
                port,
                service: svc.into(),
            },
            order: Order {
                timestamp: ts,
                published_micros: pubt,
                message_id: id.into(),
            },
            response: format!("{ts}/{pubt}/{id}"),
            response_raw: None,
            payload: Default::default(),
            cached: None,
        }
    }

    #[test]
    fn keeps_the_newest_of_each_key_sorted_by_key() {
        let rows = [
            scan_of(2, 80, "HTTP", 5, 0, "a"),
            scan_of(1, 80, "HTTP", 7, 0, "b"),
            scan_of(2, 80, "HTTP", 9, 0, "c"),
            scan_of(2, 80, "HTTP", 9, 1, "d"),
            scan_of(2, 80, "SSH", 1, 0, "e"),
        ];
        let refs: Vec<&Scan> = rows.iter().collect();
        let winners: Vec<&str> = newest_per_key(&refs)
            .into_iter()
            .map(|i| rows[i].order.message_id.as_str())
            .collect();
        assert_eq!(winners, ["b", "d", "e"]);
    }

    proptest! {
        #[test]
        fn matches_a_brute_force_max_per_key(
            rows in proptest::collection::vec(
                (0u8..4, 0u16..3, prop::sample::select(vec!["A", "B"]), 0i64..5, 0i64..3, "[a-c]{1,2}"),
                0..64,
            )
        ) {
            let scans: Vec<Scan> = rows
                .iter()
                .map(|(ip, port, svc, ts, p, id)| scan_of(*ip, *port, svc, *ts, *p, id))
                .collect();
            let refs: Vec<&Scan> = scans.iter().collect();
            let got: Vec<(ScanKey, Order)> = newest_per_key(&refs)
                .into_iter()
                .map(|i| (scans[i].key.clone(), scans[i].order.clone()))
                .collect();
            let mut want: BTreeMap<ScanKey, Order> = BTreeMap::new();
            for s in &scans {
                let e = want.entry(s.key.clone()).or_insert_with(|| s.order.clone());
                if s.order > *e {
                    *e = s.order.clone();
                }
            }
            let want: Vec<(ScanKey, Order)> = want.into_iter().collect();
            prop_assert_eq!(got, want);
            // Every scan points at its key's winner.
            let merged = merge(&refs);
            for (s, &w) in scans.iter().zip(&merged.winner_of) {
                let winner = &scans[merged.winners[w]];
                prop_assert_eq!(&winner.key, &s.key);
                prop_assert!(winner.order >= s.order);
            }
        }

        #[test]
        fn the_winner_does_not_depend_on_arrival_order(
            rows in proptest::collection::vec((0u8..3, 0i64..4, 0i64..3, "[a-c]"), 1..32),
            seed in any::<u64>(),
        ) {
            let scans: Vec<Scan> = rows.iter().map(|(ip, ts, p, id)| scan_of(*ip, 1, "S", *ts, *p, id)).collect();
            let mut shuffled = scans.clone();
            // A deterministic shuffle driven by the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let pick = |v: &[Scan]| -> Vec<Order> {
                let refs: Vec<&Scan> = v.iter().collect();
                newest_per_key(&refs).into_iter().map(|i| v[i].order.clone()).collect()
            };
            prop_assert_eq!(pick(&scans), pick(&shuffled));
        }
    }

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
        use Place::*;
        assert_eq!(
            layout.places,
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
            for (record, place) in batch.iter().zip(&layout.places) {
                match (record, *place) {
                    (Record::Scan(s), Place::Winner(w)) => {
                        seen[w] += 1;
                        prop_assert_eq!(&layout.winners[w].order, &s.order);
                    }
                    (Record::Scan(s), Place::Loser(w)) => {
                        prop_assert_eq!(&layout.winners[w].key, &s.key);
                        prop_assert!(layout.winners[w].order > s.order);
                    }
                    (Record::Stale, Place::Stale) => {}
                    (Record::Dead(d), Place::Dead(k)) => {
                        prop_assert_eq!(k, dead);
                        prop_assert_eq!(&layout.dead[k].message_id, &d.message_id);
                        dead += 1;
                    }
                    (record, place) => prop_assert!(false, "{:?} in {:?}", record, place),
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "each winner is one message");
        }
    }
}
