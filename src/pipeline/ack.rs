//! The last stage: settles every message as the sink decided.

use super::envelope::{Acknowledge, Envelope, Settle, Settlement};
use super::instrument::{INFLIGHT, Tally};
use futures::{Stream, StreamExt};
use metrics::{counter, gauge};
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

/// Settles one batch, counting it.
pub fn settle_batch<T: Settle, A: Acknowledge>(
    batch: Vec<Envelope<T, A>>,
    summary: &mut AckSummary,
) {
    let mut tally = Tally::new("ack");
    let (mut acked, mut nacked) = (0u64, 0u64);
    for env in batch {
        match env.payload.settlement() {
            Settlement::Ack => {
                env.ack.ack();
                tally.count("ack");
                acked += 1;
            }
            Settlement::Nack => {
                env.ack.nack();
                tally.count("nack");
                nacked += 1;
            }
        }
    }
    tally.flush_counts();
    if acked > 0 {
        counter!("miniscan_acks_total", "kind" => "ack").increment(acked);
    }
    if nacked > 0 {
        counter!("miniscan_acks_total", "kind" => "nack").increment(nacked);
    }
    gauge!(INFLIGHT).decrement((acked + nacked) as f64);
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
