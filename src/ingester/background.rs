//! The ingester's background tasks, and the set that owns them.
//!
//! A task is an `async` function of a [`CancellationToken`] that returns soon
//! after the token is cancelled. [`Background::stop`] cancels the token and
//! waits for every task to return, aborting (and still awaiting) any that has
//! not within its timeout; dropping a [`Background`] aborts its tasks. Either
//! way, no task outlives the ingester that spawned it.

use crate::stages::dedup::CommittedOrders;
use crate::telemetry::Health;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the database is probed for `/readyz` while no batch is being
/// written: a stopped database shows within about a second.
const DB_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take before the database counts as down: longer
/// than a round trip to a busy server, shorter than the probe interval twice.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `miniscan_cache_entries` is refreshed: as often as a scrape
/// might come, with no measurable cost.
const CACHE_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Tasks that run beside the pipeline until [`Background::stop`].
#[derive(Debug, Default)]
pub(crate) struct Background {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Background {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Runs `task(token)`; the task must return once the token is cancelled.
    pub(crate) fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.stop.clone()));
    }

    /// Tells every task to stop and waits until they have: those still
    /// running after `timeout` are aborted, and awaited too. Returns how many
    /// had to be aborted.
    pub(crate) async fn stop(mut self, timeout: Duration) -> usize {
        self.stop.cancel();
        let tasks = &mut self.tasks;
        let drained = tokio::time::timeout(timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_ok() {
            return 0;
        }
        let stuck = self.tasks.len();
        tracing::warn!(
            stuck,
            "background tasks did not stop in time; aborting them"
        );
        self.tasks.shutdown().await;
        stuck
    }
}

/// Probes the database every second for `/readyz`, until `stop`.
pub(crate) async fn probe_database(
    pool: deadpool_postgres::Pool,
    health: Health,
    stop: CancellationToken,
) {
    let probing = async {
        let mut tick = tokio::time::interval(DB_PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probe = async {
                let client = pool.get().await.ok()?;
                client.simple_query("SELECT 1").await.ok()
            };
            let up = tokio::time::timeout(DB_PROBE_TIMEOUT, probe)
                .await
                .ok()
                .flatten()
                .is_some();
            health.set_database(up);
        }
    };
    stop.run_until_cancelled(probing).await;
}

/// Publishes `miniscan_cache_entries` every second, until `stop`.
pub(crate) async fn publish_cache_entries(orders: CommittedOrders, stop: CancellationToken) {
    let publishing = async {
        let mut tick = tokio::time::interval(CACHE_GAUGE_INTERVAL);
        loop {
            tick.tick().await;
            orders.publish_metrics();
        }
    };
    stop.run_until_cancelled(publishing).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A task holding `held` until cancelled (or forever, if `stubborn`).
    fn task(
        held: Arc<()>,
        stubborn: bool,
    ) -> impl FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move |stop| {
            Box::pin(async move {
                let _held = held;
                if stubborn {
                    std::future::pending::<()>().await;
                }
                stop.cancelled().await;
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_every_task_to_return() {
        let held = Arc::new(());
        let mut bg = Background::new();
        for _ in 0..3 {
            bg.spawn(task(held.clone(), false));
        }
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&held), 4);
        assert_eq!(bg.stop(Duration::from_secs(5)).await, 0);
        assert_eq!(Arc::strong_count(&held), 1, "a task outlived stop()");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_stop_is_aborted_after_the_timeout() {
        let held = Arc::new(());
        let mut bg = Background::new();
        bg.spawn(task(held.clone(), false));
        bg.spawn(task(held.clone(), true));
        let started = tokio::time::Instant::now();
        assert_eq!(bg.stop(Duration::from_secs(5)).await, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(Arc::strong_count(&held), 1, "a task outlived stop()");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_set_aborts_its_tasks() {
        let held = Arc::new(());
        let mut bg = Background::new();
        bg.spawn(task(held.clone(), true));
        tokio::task::yield_now().await;
        drop(bg);
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&held), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_gauge_stops_when_told() {
        let mut bg = Background::new();
        bg.spawn(|stop| publish_cache_entries(CommittedOrders::new(10), stop));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(bg.stop(Duration::from_secs(1)).await, 0);
    }
}
