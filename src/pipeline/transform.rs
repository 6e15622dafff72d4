//! Per-item stages: a plain function on the payload, wrapped in a thin stream.

use super::envelope::Envelope;
use super::instrument::{FLUSH_EVERY, Tally};
use super::observe::Observer;
use super::outcome::Outcome;
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
    /// What it counts each item under.
    type Outcome: Outcome;
    /// The `stage` label of this stage's metrics.
    fn name(&self) -> &'static str;
    /// Transforms one payload, returning it with its outcome.
    fn apply(&mut self, input: Self::In) -> (Self::Out, Self::Outcome);
    /// Called whenever the stage's tally is flushed (end of a burst), for
    /// stages that keep metrics of their own.
    fn flush(&mut self) {}
}

pin_project_lite::pin_project! {
    /// The stream that runs a [`Transform`]; see [`super::PipelineExt::transform`].
    pub struct TransformStream<S, X: Transform, M> {
        #[pin]
        inner: S,
        stage: X,
        tally: Tally<X::Outcome>,
        observer: M,
    }
}

impl<S, X: Transform, M> TransformStream<S, X, M> {
    pub(crate) fn new(inner: S, stage: X, observer: M) -> Self {
        let tally = Tally::new(stage.name());
        Self {
            inner,
            stage,
            tally,
            observer,
        }
    }
}

impl<S, X, A, M> Stream for TransformStream<S, X, M>
where
    S: Stream<Item = Envelope<X::In, A>>,
    X: Transform,
    M: Observer,
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
                    this.tally.flush(true, this.observer);
                    this.stage.flush();
                }
                Poll::Ready(Some(Envelope::new(out, ack)))
            }
            Poll::Ready(None) => {
                this.tally.flush(true, this.observer);
                this.stage.flush();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.tally.pending() > 0 {
                    this.tally.flush(true, this.observer);
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

    crate::pipeline::outcome::outcome_enum! {
        /// Whether the input was even.
        enum Parity {
            /// Even.
            Even => "even",
            /// Odd.
            Odd => "odd",
        }
    }

    struct Double;
    impl Transform for Double {
        type In = u32;
        type Out = u64;
        type Outcome = Parity;
        fn name(&self) -> &'static str {
            "double"
        }
        fn apply(&mut self, input: u32) -> (u64, Parity) {
            let parity = if input.is_multiple_of(2) {
                Parity::Even
            } else {
                Parity::Odd
            };
            (u64::from(input) * 2, parity)
        }
    }

    #[tokio::test]
    async fn transforms_payloads_and_keeps_ack_handles() {
        let input = futures::stream::iter((0..5u32).map(|i| Envelope::new(i, i + 100)));
        let out: Vec<_> = input.transform(Double, ()).collect().await;
        let got: Vec<(u64, u32)> = out.into_iter().map(|e| (e.payload, e.ack)).collect();
        assert_eq!(got, vec![(0, 100), (2, 101), (4, 102), (6, 103), (8, 104)]);
    }
}
