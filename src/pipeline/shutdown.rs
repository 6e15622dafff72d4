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

/// SIGTERM and SIGINT, caught from the moment [`Signals::listen`] returns.
///
/// Listening installs tokio's handler at once (and for the life of the
/// process), so from then on neither signal kills the process: one that
/// arrives before anything awaits [`Signals::recv`] is kept and returned by
/// it. Listen first, then start what takes time.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening now. Fails only if SIGINT cannot be listened for; a
    /// SIGTERM listener that cannot be had is logged and done without.
    pub fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                })
                .ok();
            let int = signal(SignalKind::interrupt())?;
            Ok(Self { term, int })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next SIGTERM or SIGINT (including one that arrived
    /// since listening started).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(term) => term.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => tracing::info!("SIGTERM received; draining"),
                _ = self.int.recv() => tracing::info!("SIGINT received; draining"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C) after the first poll.
/// Where a signal must not be lost in between, use [`Signals::listen`].
pub async fn signal() {
    match Signals::listen() {
        Ok(mut signals) => signals.recv().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for signals; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
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

    /// A SIGTERM that arrives after `listen` and before anything awaits
    /// `recv` neither kills the process nor is lost.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_signal_before_recv_is_kept() {
        let mut signals = Signals::listen().unwrap();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), signals.recv())
            .await
            .expect("the SIGTERM sent before recv was kept");
    }
}
