//! The last stage: settles every message as the sink decided.

use super::envelope::{Acknowledge, Envelope, Settle, Settlement};
use super::instrument::Tally;
use super::observe::Observer;
use futures::{Stream, StreamExt};
use std::future::{Future, IntoFuture};
use std::pin::Pin;

/// Acks and nacks counted at the end of a pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckSummary {
    /// Messages acked.
    pub acked: u64,
    /// Messages nacked (to be delivered again).
    pub nacked: u64,
}

/// A pipeline's end; await it to run the pipeline to completion.
pub struct Ack<S, M> {
    inner: S,
    stage: &'static str,
    observer: M,
}

impl<S, M> Ack<S, M> {
    pub(crate) fn new(inner: S, stage: &'static str, observer: M) -> Self {
        Self {
            inner,
            stage,
            observer,
        }
    }
}

/// Settles one batch, counting it under `stage` with its [`Settlement`]s as
/// outcomes, and reporting them to [`Observer::settled`]. If the observer
/// asks for spans, inside an `ack` span recording `acked` and `nacked`.
fn settle_batch<T: Settle, A: Acknowledge>(
    batch: Vec<Envelope<T, A>>,
    stage: &'static str,
    observer: &impl Observer,
    summary: &mut AckSummary,
) {
    let span = if observer.spans() {
        tracing::info_span!(
            "ack",
            messages = batch.len(),
            acked = tracing::field::Empty,
            nacked = tracing::field::Empty
        )
    } else {
        tracing::Span::none()
    };
    let _entered = span.enter();
    let mut tally = Tally::new(stage);
    let (mut acked, mut nacked) = (0u64, 0u64);
    for env in batch {
        let settlement = env.payload.settlement();
        match settlement {
            Settlement::Ack => {
                env.ack.ack();
                acked += 1;
            }
            Settlement::Nack => {
                env.ack.nack();
                nacked += 1;
            }
        }
        tally.count(settlement);
    }
    tally.flush_counts(observer);
    for (kind, n) in [(Settlement::Ack, acked), (Settlement::Nack, nacked)] {
        if n > 0 {
            observer.settled(kind, n);
        }
    }
    span.record("acked", acked);
    span.record("nacked", nacked);
    summary.acked += acked;
    summary.nacked += nacked;
}

impl<S, T, A, M> IntoFuture for Ack<S, M>
where
    S: Stream<Item = Vec<Envelope<T, A>>> + Send + 'static,
    T: Settle,
    A: Acknowledge,
    M: Observer,
{
    type Output = AckSummary;
    type IntoFuture = Pin<Box<dyn Future<Output = AckSummary> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let Self {
            inner,
            stage,
            observer,
        } = self;
        Box::pin(async move {
            let mut summary = AckSummary::default();
            let mut inner = std::pin::pin!(inner);
            while let Some(batch) = inner.next().await {
                settle_batch(batch, stage, &observer, &mut summary);
            }
            summary
        })
    }
}
