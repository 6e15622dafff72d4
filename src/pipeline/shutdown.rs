//! Graceful shutdown.
//!
//! Two phases, each a [`CancellationToken`]:
//!
//! 1. `stop`: the source stops pulling. Every later stage drains what it holds:
//!    the batch stage flushes its partial batch, the sink commits it, the ack
//!    stage acks it, and the pipeline ends by itself.
//! 2. `abort`: the drain is taking too long (the database is unreachable): sinks
//!    give up retrying and return their batches as nacks, so the broker
//!    delivers them again. Nothing is lost either way.
//!
//! The abort after a grace period is a deadline that [`Shutdown::aborted`]
//! and [`Shutdown::is_aborted`] compare the clock with, not a timer task:
//! nothing is left running when the pipeline is gone. What triggers the
//! shutdown (OS signals in the binary, a test) is the caller's business.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The shutdown signal shared by a pipeline's stages.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    /// Cancelled by [`Shutdown::abort`]: give up at once.
    abort: CancellationToken,
    /// When [`Shutdown::trigger`]'s grace period ends; set once, before
    /// `stop` is cancelled.
    deadline: Arc<OnceLock<Instant>>,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the source to stop; once `grace` has passed, asks sinks to give up.
    /// Only the first call (or [`Shutdown::abort`]) counts.
    pub fn trigger(&self, grace: Duration) {
        if self.stop.is_cancelled() {
            return;
        }
        let _ = self.deadline.set(Instant::now() + grace);
        self.stop.cancel();
    }

    /// Gives up at once: sinks stop retrying.
    pub fn abort(&self) {
        self.stop.cancel();
        self.abort.cancel();
    }

    /// Resolves when the source should stop.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// Whether the source should stop.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when sinks should give up retrying: at once after
    /// [`Shutdown::abort`], or when the grace period of
    /// [`Shutdown::trigger`] ends.
    pub async fn aborted(&self) {
        let graced = async {
            self.stop.cancelled().await;
            match self.deadline.get() {
                Some(&deadline) => tokio::time::sleep_until(deadline).await,
                // Stopped by `abort`, which cancels `abort` as well.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.abort.cancelled() => {}
            _ = graced => {}
        }
    }

    /// Whether sinks should give up retrying.
    pub fn is_aborted(&self) -> bool {
        self.abort.is_cancelled() || self.deadline.get().is_some_and(|&d| Instant::now() >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn abort_follows_stop_after_the_grace_period() {
        let s = Shutdown::new();
        assert!(!s.is_stopped() && !s.is_aborted());
        s.trigger(Duration::from_secs(30));
        assert!(s.is_stopped());
        assert!(!s.is_aborted());
        tokio::time::advance(Duration::from_secs(29)).await;
        tokio::task::yield_now().await;
        assert!(!s.is_aborted());
        tokio::time::advance(Duration::from_secs(2)).await;
        s.aborted().await;
        assert!(s.is_aborted());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_at_the_deadline_or_at_once_on_abort() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move {
                s.aborted().await;
                Instant::now()
            }
        });
        tokio::task::yield_now().await;
        let triggered = Instant::now();
        s.trigger(Duration::from_secs(30));
        s.trigger(Duration::from_secs(1)); // only the first counts
        let woke = waiter.await.unwrap();
        assert_eq!(woke - triggered, Duration::from_secs(30));

        let s = Shutdown::new();
        s.abort();
        assert!(s.is_stopped() && s.is_aborted());
        tokio::time::timeout(Duration::from_millis(1), s.aborted())
            .await
            .expect("abort wakes waiters at once");
    }
}
