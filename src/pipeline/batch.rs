//! The batching stage: `tokio_stream`'s `chunks_timeout`, counted.

use super::instrument::Tally;
use super::observe::Observer;
use super::outcome::BatchOutcome;
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_stream::StreamExt as _;
use tokio_stream::adapters::ChunksTimeout;

pin_project_lite::pin_project! {
    /// Groups items into batches of at most `max_items`; a partial batch leaves
    /// once `max_wait` has passed since its first item, and whatever is pending
    /// leaves when the input ends (so shutdown flushes the partial batch).
    pub struct BatchStream<S: Stream<Item = T>, T, M> {
        #[pin]
        inner: ChunksTimeout<S>,
        tally: Tally<BatchOutcome>,
        observer: M,
    }
}

impl<S: Stream<Item = T>, T, M> BatchStream<S, T, M> {
    pub(crate) fn new(
        inner: S,
        stage: &'static str,
        max_items: usize,
        max_wait: Duration,
        observer: M,
    ) -> Self {
        Self {
            inner: inner.chunks_timeout(max_items.max(1), max_wait),
            tally: Tally::new(stage),
            observer,
        }
    }
}

impl<S: Stream<Item = T>, T, M: Observer> Stream for BatchStream<S, T, M> {
    type Item = Vec<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<T>>> {
        let this = self.project();
        let polled = this.inner.poll_next(cx);
        if let Poll::Ready(Some(batch)) = &polled {
            this.tally.add(BatchOutcome::Out, batch.len() as u64);
            this.tally.flush_counts(this.observer);
            this.observer.batched(this.tally.stage(), batch.len());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::{Envelope, PipelineExt};
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn flushes_full_batches_then_the_partial_one_when_the_input_ends() {
        let input = futures::stream::iter((0..7u32).map(|i| Envelope::new(i, ())));
        let sizes: Vec<usize> = input
            .batch("batch", 3, Duration::from_secs(3600), ())
            .map(|b| b.len())
            .collect()
            .await;
        assert_eq!(sizes, vec![3, 3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_after_max_wait() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut batches = tokio_stream::wrappers::ReceiverStream::new(rx)
            .batch("batch", 100, Duration::from_millis(50), ())
            .boxed();
        tx.send(Envelope::new(1u32, ())).await.unwrap();
        tx.send(Envelope::new(2u32, ())).await.unwrap();
        let started = tokio::time::Instant::now();
        let first = batches.next().await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(tx);
        assert!(batches.next().await.is_none());
    }
}
