//! Per-item stages: a plain function on the payload, wrapped in a thin stream.

use super::envelope::Envelope;
use super::instrument::{FLUSH_EVERY, Tally};
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A synchronous, per-item stage (decode, dedup, ...).
///
/// The core is [`Transform::apply`], a plain function that is easy to test;
/// [`TransformStream`] runs it on every payload, leaves the ack handle alone,
/// and counts each item under the outcome `apply` returns.
pub trait Transform {
    /// What the stage takes.
    type In;
    /// What the stage yields.
    type Out;
    /// The `stage` label of this stage's metrics.
    fn name(&self) -> &'static str;
    /// Transforms one payload, returning it with its outcome label.
    fn apply(&mut self, input: Self::In) -> (Self::Out, &'static str);
    /// Called whenever the stage's tally is flushed (end of a burst), for
    /// stages that keep metrics of their own.
    fn flush(&mut self) {}
}

pin_project_lite::pin_project! {
    /// The stream that runs a [`Transform`]; see [`super::PipelineExt::transform`].
    pub struct TransformStream<S, X> {
        #[pin]
        inner: S,
        stage: X,
        tally: Tally,
    }
}

impl<S, X: Transform> TransformStream<S, X> {
    pub(crate) fn new(inner: S, stage: X) -> Self {
        let tally = Tally::new(stage.name());
        Self {
            inner,
            stage,
            tally,
        }
    }
}

impl<S, X, A> Stream for TransformStream<S, X>
where
    S: Stream<Item = Envelope<X::In, A>>,
    X: Transform,
{
    type Item = Envelope<X::Out, A>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(env)) => {
                let started = Instant::now();
                let Envelope { payload, ack } = env;
                let (out, outcome) = this.stage.apply(payload);
                this.tally.busy(started.elapsed());
                this.tally.count(outcome);
                if this.tally.pending() >= FLUSH_EVERY {
                    this.tally.flush(true);
                    this.stage.flush();
                }
                Poll::Ready(Some(Envelope::new(out, ack)))
            }
            Poll::Ready(None) => {
                this.tally.flush(true);
                this.stage.flush();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.tally.pending() > 0 {
                    this.tally.flush(true);
                    this.stage.flush();
                }
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineExt;
    use futures::StreamExt;

    struct Double;
    impl Transform for Double {
        type In = u32;
        type Out = u64;
        fn name(&self) -> &'static str {
            "double"
        }
        fn apply(&mut self, input: u32) -> (u64, &'static str) {
            (
                u64::from(input) * 2,
                if input.is_multiple_of(2) {
                    "even"
                } else {
                    "odd"
                },
            )
        }
    }

    #[tokio::test]
    async fn transforms_payloads_and_keeps_ack_handles() {
        let input = futures::stream::iter((0..5u32).map(|i| Envelope::new(i, i + 100)));
        let out: Vec<_> = input.transform(Double).collect().await;
        let got: Vec<(u64, u32)> = out.into_iter().map(|e| (e.payload, e.ack)).collect();
        assert_eq!(got, vec![(0, 100), (2, 101), (4, 102), (6, 103), (8, 104)]);
    }
}
