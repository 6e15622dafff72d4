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

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The shutdown signal shared by a pipeline's stages.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abort: CancellationToken,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the source to stop; once `grace` has passed, asks sinks to give up.
    pub fn trigger(&self, grace: Duration) {
        if self.stop.is_cancelled() {
            return;
        }
        self.stop.cancel();
        let abort = self.abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            abort.cancel();
        });
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

    /// Resolves when sinks should give up retrying.
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Whether sinks should give up retrying.
    pub fn is_aborted(&self) -> bool {
        self.abort.is_cancelled()
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
}
