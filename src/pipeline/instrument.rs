//! Per-stage counting, flushed to the [`Observer`] once per burst.
//!
//! Touching a metrics registry (a label lookup and atomic adds) per message
//! would cost more than most stages' own work, so per-item stages count into a
//! [`Tally`], a plain local array, and flush it when their input runs dry (the
//! stream returns `Pending` or ends) or every [`FLUSH_EVERY`] items under load.

use super::observe::Observer;
use super::outcome::{Outcome, SourceOutcome};
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Items after which a busy stage flushes its tally even though its input has
/// not run dry: bounds how stale `/metrics` can be under sustained load
/// (1024 messages is well under a second at any rate we reach) while keeping
/// registry work per message negligible.
pub const FLUSH_EVERY: u64 = 1024;

/// Local counts of one stage's outcomes, flushed to an [`Observer`] in bulk.
#[derive(Debug)]
pub struct Tally<O> {
    stage: &'static str,
    /// One count per value of `O::ALL`, in its order: few outcomes per stage,
    /// so a linear search beats hashing.
    counts: Vec<(O, u64)>,
    items: u64,
    busy: Duration,
}

impl<O: Outcome> Tally<O> {
    /// An empty tally for `stage`.
    pub fn new(stage: &'static str) -> Self {
        Self {
            stage,
            counts: O::ALL.iter().map(|&o| (o, 0)).collect(),
            items: 0,
            busy: Duration::ZERO,
        }
    }

    /// Counts one item with `outcome`.
    #[inline]
    pub fn count(&mut self, outcome: O) {
        self.add(outcome, 1);
    }

    /// Counts `n` items with `outcome`.
    #[inline]
    pub fn add(&mut self, outcome: O, n: u64) {
        self.items += n;
        match self.counts.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, c)) => *c += n,
            // Only if `O::ALL` misses a value; counted all the same.
            None => self.counts.push((outcome, n)),
        }
    }

    /// Adds time spent working.
    #[inline]
    pub fn busy(&mut self, d: Duration) {
        self.busy += d;
    }

    /// Items counted since the last flush.
    pub fn pending(&self) -> u64 {
        self.items
    }

    /// The stage it counts for.
    pub fn stage(&self) -> &'static str {
        self.stage
    }

    /// Hands the counts and the busy time to `observer` and resets them.
    /// `per_item` reports the busy time as a per-item mean; otherwise as one
    /// observation (a batch stage's time for one batch).
    pub fn flush(&mut self, per_item: bool, observer: &impl Observer) {
        if self.items == 0 {
            return;
        }
        let busy = if per_item {
            self.busy.as_secs_f64() / self.items as f64
        } else {
            self.busy.as_secs_f64()
        };
        observer.busy(self.stage, busy);
        self.busy = Duration::ZERO;
        self.flush_counts(observer);
    }

    /// Hands only the counts to `observer` and resets them; returns how many
    /// items they held.
    pub fn flush_counts(&mut self, observer: &impl Observer) -> u64 {
        for (outcome, n) in self.counts.iter_mut() {
            if *n > 0 {
                observer.count(self.stage, outcome.as_str(), *n);
                *n = 0;
            }
        }
        std::mem::take(&mut self.items)
    }
}

pin_project_lite::pin_project! {
    /// Counts the items a source yields (`outcome="received"`) and reports
    /// them as in flight ([`Observer::received`]), a burst at a time.
    #[derive(Debug)]
    pub struct Counted<S, M> {
        #[pin]
        inner: S,
        tally: Tally<SourceOutcome>,
        observer: M,
    }
}

impl<S, M> Counted<S, M> {
    pub(crate) fn new(inner: S, stage: &'static str, observer: M) -> Self {
        Self {
            inner,
            tally: Tally::new(stage),
            observer,
        }
    }
}

fn flush_received(tally: &mut Tally<SourceOutcome>, observer: &impl Observer) {
    let n = tally.flush_counts(observer);
    if n > 0 {
        observer.received(n);
    }
}

impl<S: Stream, M: Observer> Stream for Counted<S, M> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(item)) => {
                this.tally.count(SourceOutcome::Received);
                if this.tally.pending() >= FLUSH_EVERY {
                    flush_received(this.tally, this.observer);
                }
                Poll::Ready(Some(item))
            }
            other => {
                flush_received(this.tally, this.observer);
                other
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
