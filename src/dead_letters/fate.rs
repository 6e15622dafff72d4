//! What replay does with each dead letter of a batch: the pure core.
//!
//! A dead letter is turned back into the message the ingester received
//! ([`Received`]: its exact payload, its message id, and its publish time, the
//! two tie-breakers of newest-wins) and goes through the ingester's own
//! decode stage. The batch is then laid out by the store exactly as the write
//! stage's batches are ([`Layout`]: one winner per key, sorted by key), the
//! winners are upserted (see `replay`), and the store's verdicts
//! ([`Layout::verdicts_in_one_transaction`]) say what became of each message.
//! So a dead letter is replayed as if it had arrived today in a batch with
//! the others.

use crate::pipeline::Transform as _;
use crate::stages::decode::Decode;
use crate::stages::{Reason, Received, Record};
use crate::store::{Isolated, Layout, Place, Upserted, Written};
use bytes::Bytes;

/// One dead letter as stored.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// Its message id (the primary key).
    pub(crate) message_id: String,
    /// The reason it was stored with.
    pub(crate) reason: String,
    /// The exact message data.
    pub(crate) payload: Bytes,
    /// Its publish time in microseconds (the receive time where an old row
    /// has none, which is what the ingester falls back to).
    pub(crate) published_micros: i64,
}

/// The message the ingester received, rebuilt from its dead letter.
pub(crate) fn received(stored: &Stored) -> Received {
    Received {
        data: stored.payload.clone(),
        message_id: stored.message_id.clone(),
        published_micros: stored.published_micros,
    }
}

/// Each dead letter through today's decode stage, as the ingester would.
pub(crate) fn decode(batch: &[Stored]) -> Vec<Record> {
    let mut stage = Decode;
    batch.iter().map(|s| stage.apply(received(s)).0).collect()
}

/// What became of one dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// It decodes and its row changed the table: delete the dead letter.
    Stored,
    /// It decodes, and the table (or its batch) holds a newer observation of
    /// its key: delete the dead letter.
    Superseded,
    /// It still fails: keep it, with this reason and detail.
    StillFailing {
        /// The reason today.
        reason: Reason,
        /// The detail today.
        detail: String,
    },
    /// Not decided (a row was given up): the batch must not commit.
    Undecided,
}

impl Fate {
    /// Whether the dead letter is deleted.
    pub(crate) fn is_replayed(&self) -> bool {
        matches!(self, Fate::Stored | Fate::Superseded)
    }
}

/// The fate of every record of `layout` (in batch order), given what became
/// of each of its winners: committed (and whether it changed the table),
/// rejected by the database (with the detail), or given up.
pub(crate) fn fates(layout: &Layout<'_>, winners: &[Upserted]) -> Vec<Fate> {
    // A rejected winner's dead letter, and the batch's own, are refreshed in
    // the same transaction as the upsert.
    let verdicts = layout.verdicts_in_one_transaction(winners);
    verdicts
        .written
        .iter()
        .zip(&layout.places)
        .map(|(written, place)| match (written, *place) {
            (Written::Stored, _) => Fate::Stored,
            (Written::Superseded, _) => Fate::Superseded,
            (Written::DeadLetter, Place::Dead(d)) => Fate::StillFailing {
                reason: layout.dead[d].reason,
                detail: layout.dead[d].detail.clone(),
            },
            (Written::DeadLetter, Place::Winner(w)) => match &winners[w] {
                Isolated::Rejected(detail) => Fate::StillFailing {
                    reason: Reason::RejectedByDatabase,
                    detail: detail.clone(),
                },
                _ => Fate::Undecided,
            },
            _ => Fate::Undecided,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::decode::MALFORMED;
    use proptest::prelude::*;

    fn stored(id: &str, payload: &[u8], published_micros: i64) -> Stored {
        Stored {
            message_id: id.into(),
            reason: "rejected_by_database".into(),
            payload: Bytes::copy_from_slice(payload),
            published_micros,
        }
    }

    fn scan(port: u16, ts: i64, response: &str) -> Vec<u8> {
        format!(
            r#"{{"ip":"192.0.2.1","port":{port},"service":"HTTP","timestamp":{ts},"data_version":2,"data":{{"response_str":"{response}"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_replayed_scan_keeps_its_message_id_and_publish_time_as_tie_breakers() {
        let records = decode(&[stored("m-7", &scan(80, 5, "x"), 1_234_567)]);
        let Record::Scan(s) = &records[0] else {
            panic!("{records:?}");
        };
        assert_eq!(s.order.message_id, "m-7");
        assert_eq!(s.order.published_micros, 1_234_567);
        assert_eq!(s.order.timestamp, 5);
    }

    #[test]
    fn decodable_letters_replay_and_malformed_ones_stay_with_todays_reason() {
        let batch = [
            stored("a", &scan(80, 5, "old"), 0),
            stored("b", MALFORMED[0].data, 0),
            stored("c", &scan(80, 9, "new"), 0),
            stored("d", &scan(81, 1, "other"), 0),
        ];
        let records = decode(&batch);
        let layout = Layout::of(records.iter());
        // Winners sorted by key: port 80 ("c"), port 81 ("d"). The table
        // already had something newer for port 81.
        let fates = fates(
            &layout,
            &[Isolated::Committed(true), Isolated::Committed(false)],
        );
        assert_eq!(fates[0], Fate::Superseded, "lost to c in its batch");
        assert_eq!(
            fates[1],
            Fate::StillFailing {
                reason: MALFORMED[0].reason,
                detail: "not JSON".into()
            }
        );
        assert_eq!(fates[2], Fate::Stored);
        assert_eq!(fates[3], Fate::Superseded);
    }

    #[test]
    fn a_winner_the_database_rejects_stays_and_takes_its_losers_with_it() {
        let batch = [
            stored("a", &scan(80, 5, "old"), 0),
            stored("b", &scan(80, 9, "new"), 0),
        ];
        let records = decode(&batch);
        let layout = Layout::of(records.iter());
        let fates = fates(&layout, &[Isolated::Rejected("54000: too big".into())]);
        assert_eq!(fates[0], Fate::Superseded, "as the ingester decides");
        assert_eq!(
            fates[1],
            Fate::StillFailing {
                reason: Reason::RejectedByDatabase,
                detail: "54000: too big".into()
            }
        );
        let gave_up = super::fates(&layout, &[Isolated::GaveUp]);
        assert!(gave_up.iter().all(|f| *f == Fate::Undecided), "{gave_up:?}");
    }

    proptest! {
        /// Against a brute-force oracle: with every winner committed, a
        /// letter is stored exactly when it is the newest decodable letter
        /// of its key, superseded when another is newer, and still failing
        /// exactly when today's decoder rejects it, with decode's reason.
        #[test]
        fn every_letter_gets_the_fate_an_oracle_gives(
            rows in proptest::collection::vec((0u16..4, 0i64..4, 0i64..3, any::<bool>()), 0..40),
        ) {
            let batch: Vec<Stored> = rows
                .iter()
                .enumerate()
                .map(|(i, &(port, ts, publ, bad))| {
                    let payload = if bad { MALFORMED[i % MALFORMED.len()].data.to_vec() } else { scan(port, ts, "r") };
                    stored(&format!("m{i:02}"), &payload, publ)
                })
                .collect();
            let records = decode(&batch);
            let layout = Layout::of(records.iter());
            let all_committed = vec![Isolated::Committed(true); layout.winners.len()];
            let fates = fates(&layout, &all_committed);
            for (i, &(port, ts, publ, bad)) in rows.iter().enumerate() {
                if bad {
                    let m = MALFORMED[i % MALFORMED.len()];
                    let is_still_failing = matches!(&fates[i], Fate::StillFailing { reason, .. } if *reason == m.reason);
                    prop_assert!(is_still_failing, "{:?}", fates[i]);
                    continue;
                }
                let me = (ts, publ, format!("m{i:02}"));
                let newest = rows.iter().enumerate()
                    .filter(|(_, r)| !r.3 && r.0 == port)
                    .map(|(j, r)| (r.1, r.2, format!("m{j:02}")))
                    .max()
                    .unwrap();
                let want = if newest == me { Fate::Stored } else { Fate::Superseded };
                prop_assert_eq!(&fates[i], &want);
            }
        }
    }
}
