//! Committing a batch's winners and dead letters through a [`BatchStore`].
//!
//! The winners are split into disjoint key partitions ([`partition`]) that
//! commit concurrently; the batch's dead letters ride with partition 0. Each
//! partition commits with its rejected rows isolated ([`isolate`]), every
//! attempt retried as the policy says ([`Retry`]). Winners the database
//! rejected then become dead letters of their own (`rejected_by_database`),
//! committed the same way. What comes out is each winner's and each dead
//! letter's fate, from which [`super::verdict`] decides the messages'.

use super::isolate::{Fate, isolate, split_at};
use super::partition::Plan;
use super::retry::{Failure, Retry};
use super::store::{BatchStore, StoreFault};
use super::verdict::{DeadFate, REJECTED_BY_DATABASE, WinnerFate};
use crate::error::Chain;
use crate::stages::{DeadLetter, Scan};

/// One row's fate: committed (and whether it changed the table), rejected
/// (with the text for its dead letter), or given up.
pub(crate) type Outcome = Fate<bool, String>;

/// The fates of a set of winners and of dead letters, each in input order.
#[derive(Debug)]
struct Committed {
    winners: Vec<Outcome>,
    dead: Vec<Outcome>,
}

/// Commits batches through a store.
#[derive(Debug)]
pub(crate) struct Committer<S> {
    store: S,
    retry: Retry,
    partitions: usize,
}

impl<S: BatchStore> Committer<S> {
    /// Commits through `store` in up to `partitions` partitions.
    pub(crate) fn new(store: S, retry: Retry, partitions: usize) -> Self {
        Self {
            store,
            retry,
            partitions,
        }
    }

    /// Commits `winners` (one per key, sorted by key) and `dead`, and records
    /// the winners the database rejects as dead letters.
    pub(crate) async fn settle(
        &self,
        winners: &[&Scan],
        dead: &[&DeadLetter],
    ) -> (Vec<WinnerFate>, Vec<DeadFate>) {
        let committed = self.commit_partitioned(winners, dead).await;
        let winner_fates = self.record_rejected(winners, committed.winners).await;
        let dead_fates = dead
            .iter()
            .zip(committed.dead)
            .map(|(d, outcome)| DeadFate {
                reason: d.reason,
                recorded: recorded(d, outcome),
            })
            .collect();
        (winner_fates, dead_fates)
    }

    /// Commits each partition of `winners` concurrently, on its own
    /// connection; `dead` rides with partition 0.
    async fn commit_partitioned(&self, winners: &[&Scan], dead: &[&DeadLetter]) -> Committed {
        let plan = Plan::new(winners.iter().map(|s| &s.key), self.partitions);
        super::trace::partitions(plan.parts().len());
        let runs = plan
            .gather(winners)
            .into_iter()
            .enumerate()
            .map(|(p, rows)| {
                let dead = if p == 0 { dead } else { &[] };
                async move { self.commit_isolating(&rows, dead).await }
            });
        let mut parts = Vec::with_capacity(plan.parts().len());
        let mut dead_outcomes = Vec::new();
        for (p, committed) in futures::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            if p == 0 {
                dead_outcomes = committed.dead;
            }
            parts.push(committed.winners);
        }
        Committed {
            winners: plan.reassemble(parts, Fate::GaveUp),
            dead: dead_outcomes,
        }
    }

    /// Commits `scans` and `dead` in one transaction, or around the rows the
    /// database rejects.
    async fn commit_isolating(&self, scans: &[&Scan], dead: &[&DeadLetter]) -> Committed {
        let mut fates = isolate(scans.len() + dead.len(), |range| {
            let (s, d) = split_at(range.clone(), scans.len());
            let (scans, dead) = (&scans[s], &dead[d]);
            async move {
                let attempt = move || self.store.commit(scans, dead);
                let mut changed = self.retry.run(range.len(), attempt).await?;
                // One flag per scan, then the dead letters' (meaningless).
                changed.resize(range.len(), false);
                Ok::<_, Failure<S::Error>>(changed)
            }
        })
        .await;
        let dead_fates = fates.split_off(scans.len().min(fates.len()));
        Committed {
            winners: fates
                .into_iter()
                .map(|f| f.map_rejected(rejected_row))
                .collect(),
            dead: dead_fates
                .into_iter()
                .map(|f| f.map_rejected(|e| e.detail()))
                .collect(),
        }
    }

    /// The winners' fates, once those the database rejected are recorded as
    /// dead letters (or not, then they are unsettled).
    async fn record_rejected(&self, winners: &[&Scan], outcomes: Vec<Outcome>) -> Vec<WinnerFate> {
        let mut fates: Vec<WinnerFate> = outcomes
            .iter()
            .map(|o| match o {
                Fate::Committed(true) => WinnerFate::Changed,
                Fate::Committed(false) => WinnerFate::Unchanged,
                Fate::Rejected(_) | Fate::GaveUp => WinnerFate::Unsettled,
            })
            .collect();
        let (at, letters): (Vec<usize>, Vec<DeadLetter>) = winners
            .iter()
            .zip(outcomes)
            .enumerate()
            .filter_map(|(w, (s, outcome))| match outcome {
                Fate::Rejected(detail) => Some((w, rejected_letter(s, detail))),
                _ => None,
            })
            .unzip();
        if letters.is_empty() {
            return fates;
        }
        let refs: Vec<&DeadLetter> = letters.iter().collect();
        let recorded = self.commit_isolating(&[], &refs).await.dead;
        for ((w, letter), outcome) in at.into_iter().zip(&letters).zip(recorded) {
            match outcome {
                Fate::Committed(_) => fates[w] = WinnerFate::DeadLettered,
                other => tracing::error!(message_id = %letter.message_id, verdict = ?other,
                    "cannot record a rejected message as a dead letter; it will be delivered again"),
            }
        }
        fates
    }
}

/// Logs a winner the database rejects; returns the text for its dead letter.
fn rejected_row<E: StoreFault>(e: E) -> String {
    tracing::warn!(error = %Chain(&e), "the database rejected a message; dead-lettering it");
    e.detail()
}

/// The dead letter of a scan the database rejected.
fn rejected_letter(s: &Scan, detail: String) -> DeadLetter {
    DeadLetter {
        message_id: s.order.message_id.to_string(),
        reason: REJECTED_BY_DATABASE,
        detail,
        payload: s.payload.clone(),
        published_micros: s.order.published_micros,
    }
}

/// Whether a dead letter of the batch is committed.
fn recorded(d: &DeadLetter, outcome: Outcome) -> bool {
    match outcome {
        Fate::Committed(_) => true,
        Fate::Rejected(detail) => {
            tracing::error!(message_id = %d.message_id, %detail,
                "the database rejected a dead letter; it will be delivered again");
            false
        }
        Fate::GaveUp => false,
    }
}
