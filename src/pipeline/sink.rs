//! The write stage machinery: hands batches to a [`Sink`], several in flight.

use super::envelope::{Acknowledge, Envelope, Settle};
use super::instrument::Tally;
use super::observe::Observer;
use futures::{Stream, StreamExt};
use std::future::Future;
use std::time::Instant;

/// Where batches go: typically a database.
///
/// A sink owns its retry policy: it returns only when every envelope has a
/// verdict ([`Settle`]): committed, proven redundant, recorded as a dead letter,
/// or given up on (nack) because the pipeline is shutting down.
pub trait Sink<A: Acknowledge>: Clone + Send + 'static {
    /// What the sink takes.
    type In: Send;
    /// Its verdict on each message.
    type Out: Settle + Send;
    /// The `stage` label of this stage's metrics.
    fn name(&self) -> &'static str;
    /// Writes one batch, returning every envelope with its verdict.
    fn write(
        &self,
        batch: Vec<Envelope<Self::In, A>>,
    ) -> impl Future<Output = Vec<Envelope<Self::Out, A>>> + Send;
}

/// Runs `sink` on every batch with up to `concurrency` batches in flight,
/// yielding results in arrival order. While batches are in flight the input
/// keeps being polled, so the next batch fills while the database works.
pub(crate) fn write<S, K, A, M>(
    input: S,
    sink: K,
    concurrency: usize,
    observer: M,
) -> impl Stream<Item = Vec<Envelope<K::Out, A>>>
where
    S: Stream<Item = Vec<Envelope<K::In, A>>>,
    K: Sink<A>,
    A: Acknowledge,
    M: Observer,
{
    input
        .map(move |batch| {
            let sink = sink.clone();
            let observer = observer.clone();
            async move {
                let started = Instant::now();
                let out = sink.write(batch).await;
                let mut tally = Tally::<<K::Out as Settle>::Outcome>::new(Sink::<A>::name(&sink));
                tally.busy(started.elapsed());
                for env in &out {
                    tally.count(env.payload.outcome());
                }
                tally.flush(false, &observer);
                out
            }
        })
        .buffered(concurrency.max(1))
}
