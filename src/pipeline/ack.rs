//! The last stage: settles every message as the sink decided.

use super::envelope::{Acknowledge, Envelope, Settle, Settlement};
use super::instrument::Tally;
use crate::telemetry::names;
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
pub struct Ack<S> {
    inner: S,
}

impl<S> Ack<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// Settles one batch, counting it under the stage `ack` and in
/// `miniscan_acks_total{kind}` (both labelled by [`Settlement`]). With tracing
/// on, inside an `ack` span recording `acked` and `nacked`.
fn settle_batch<T: Settle, A: Acknowledge>(batch: Vec<Envelope<T, A>>, summary: &mut AckSummary) {
    let span = if crate::traces::enabled() {
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
    let mut tally = Tally::new(names::stage::ACK);
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
    tally.flush_counts();
    for (kind, n) in [(Settlement::Ack, acked), (Settlement::Nack, nacked)] {
        if n > 0 {
            names::acks(kind).increment(n);
        }
    }
    names::inflight_messages().decrement((acked + nacked) as f64);
    span.record("acked", acked);
    span.record("nacked", nacked);
    summary.acked += acked;
    summary.nacked += nacked;
}

impl<S, T, A> IntoFuture for Ack<S>
where
    S: Stream<Item = Vec<Envelope<T, A>>> + Send + 'static,
    T: Settle,
    A: Acknowledge,
{
    type Output = AckSummary;
    type IntoFuture = Pin<Box<dyn Future<Output = AckSummary> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let inner = self.inner;
        Box::pin(async move {
            let mut summary = AckSummary::default();
            let mut inner = std::pin::pin!(inner);
            while let Some(batch) = inner.next().await {
                settle_batch(batch, &mut summary);
            }
            summary
        })
    }
}
