//! OS signals: what stops the binary. The pipeline's [`Shutdown`] knows
//! nothing of them; [`stop_on_signals`] translates one to the other.

use crate::pipeline::Shutdown;
use std::time::Duration;

/// SIGTERM and SIGINT, caught from the moment [`Signals::listen`] returns.
///
/// Listening installs tokio's handler at once (and for the life of the
/// process), so from then on neither signal kills the process: one that
/// arrives before anything awaits [`Signals::recv`] is kept and returned by
/// it. Listen first, then start what takes time.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening now. Fails only if SIGINT cannot be listened for; a
    /// SIGTERM listener that cannot be had is logged and done without.
    pub(crate) fn listen() -> std::io::Result<Self> {
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
    pub(crate) async fn recv(&mut self) {
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
pub(crate) async fn signal() {
    match Signals::listen() {
        Ok(mut signals) => signals.recv().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for signals; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The first signal stops the source and, after `grace`, gives up retrying;
/// the second gives up at once.
pub(super) async fn stop_on_signals(mut signals: Signals, shutdown: Shutdown, grace: Duration) {
    signals.recv().await;
    shutdown.trigger(grace);
    signals.recv().await;
    tracing::warn!("second signal: giving up on uncommitted messages now");
    shutdown.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

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
