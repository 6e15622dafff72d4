//! Write: commits a batch to PostgreSQL through the [`store`](crate::store)
//! and gives each message its verdict.
//!
//! In: a batch of [`Record`]s. Out: the same messages, each with a
//! [`Written`] verdict for the ack stage. The store lays the batch out (one
//! winner per key, newest wins), this stage splits the winners into disjoint
//! key partitions (`partition`) that commit concurrently, each on its own
//! connection (the batch's dead letters ride with partition 0), and the store
//! concludes: rejected rows become dead letters, every message gets its
//! verdict. See [`crate::store`] for the upsert, the retries and the
//! isolation of rejected rows.
//!
//! # Layout
//!
//! * this module: the [`Sink`], its metrics, and teaching the cache.
//! * `partition`: the split of a batch's winners into disjoint key sets.
//! * `trace`: the batch's `write` span and its links to the messages' traces
//!   (with tracing on).
//! * `tests`: the whole stage over a store with injected failures.
//!
//! Faults (decided by the store):
//! * Any error that is not the data's fault (connection lost, server
//!   restarting, deadlock, a missing table; decided by SQLSTATE class, never
//!   by message text) retries the whole batch with capped exponential
//!   backoff, forever: the pipeline pauses (batches stop flowing, so the
//!   source stops pulling) and resumes by itself when the database returns.
//!   `/readyz` reports the database down meanwhile.
//! * A batch the database rejects for its data (SQLSTATE classes 22, 23, 54)
//!   is bisected until the offending messages are isolated; they become dead
//!   letters (`rejected_by_database`) and the rest commits, so one bad message
//!   never blocks the subscription.
//! * On shutdown, once the grace period is over, a batch still failing is
//!   given up: its messages are nacked and delivered again later.
//!
//! Only after the commit does the dedup cache learn the committed orders.
//!
//! Metrics: `miniscan_messages_total{stage="write",outcome}` (outcomes
//! `stored`, `superseded`, `stale`, `dead_letter`, `nack`),
//! `miniscan_write_duration_seconds`, `miniscan_rows_written_total`,
//! `miniscan_dead_letters_total{reason}`,
//! `miniscan_freshness_lag_seconds{reference="scan"|"publish"}`,
//! `miniscan_errors_total{stage="write",kind="transient"|"rejected"}`.

mod partition;
pub mod trace;

#[cfg(test)]
mod tests;

pub use crate::store::Written;

use super::dedup::CommittedOrders;
use super::{Record, Scan, now_micros};
use crate::model::CachedEntry;
use crate::pipeline::{Acknowledge, Envelope, Outcome, Settle, Settlement, Shutdown, Sink};
use crate::store::{
    BatchStore, Committed, Committer, Isolated, Layout, PgStore, Retry, Step, Verdicts,
};
use crate::telemetry::Health;
use crate::telemetry::names::{self, error_kind, label, outcome, reference, stage};
use crate::telemetry::series::Series;
use crate::traces::MessageContext;
use metrics::{counter, histogram};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

impl Settle for Written {
    type Outcome = Written;

    fn settlement(&self) -> Settlement {
        match self {
            Written::Nack => Settlement::Nack,
            _ => Settlement::Ack,
        }
    }

    fn outcome(&self) -> Written {
        *self
    }
}

impl Outcome for Written {
    const ALL: &'static [Self] = &[
        Written::Stored,
        Written::Superseded,
        Written::Stale,
        Written::DeadLetter,
        Written::Nack,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Written::Stored => outcome::STORED,
            Written::Superseded => outcome::SUPERSEDED,
            Written::Stale => outcome::STALE,
            Written::DeadLetter => outcome::DEAD_LETTER,
            Written::Nack => outcome::NACK,
        }
    }
}

/// Write settings.
#[derive(Clone, Debug)]
pub struct WriteConfig {
    /// Disjoint key partitions a batch is split into, committed concurrently.
    pub partitions: usize,
    /// First retry delay after a transient failure.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// The write stage over a [`BatchStore`].
#[derive(Debug)]
pub struct WriteSink<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for WriteSink<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    committer: Committer<S>,
    partitions: usize,
    orders: CommittedOrders,
    /// The tasks teaching `orders` what committed: owned here, so that
    /// [`WriteSink::close`] can wait for them and none outlives the ingester.
    learning: TaskTracker,
}

/// The PostgreSQL sink.
pub type PgSink = WriteSink<PgStore>;

impl PgSink {
    /// A sink writing through `pool`, teaching `orders` what it commits.
    pub fn new(
        pool: deadpool_postgres::Pool,
        orders: CommittedOrders,
        health: Health,
        shutdown: Shutdown,
        config: WriteConfig,
    ) -> Self {
        let store = PgStore::new(pool).on_transaction(record_transaction);
        Self::with_store(store, orders, health, shutdown, config)
    }
}

impl<S: BatchStore> WriteSink<S> {
    /// A sink writing to `store`, teaching `orders` what it commits, keeping
    /// `health` up to date and giving up once `shutdown` is aborted.
    pub fn with_store(
        store: S,
        orders: CommittedOrders,
        health: Health,
        shutdown: Shutdown,
        config: WriteConfig,
    ) -> Self {
        let retry = Retry::new(config.retry_initial, config.retry_max, health, shutdown)
            .on_failure(count_failure);
        Self {
            inner: Arc::new(Inner {
                committer: Committer::new(store, retry),
                partitions: config.partitions,
                orders,
                learning: TaskTracker::new(),
            }),
        }
    }

    /// Writes a batch: every message with its verdict, and the task teaching
    /// the dedup cache the committed winners (if any).
    async fn write_batch<A: Acknowledge + MessageContext>(
        &self,
        batch: Vec<Envelope<Record, A>>,
    ) -> (Vec<Envelope<Written, A>>, Option<JoinHandle<()>>) {
        let span = trace::batch_span(&batch);
        let layout = Layout::of(batch.iter().map(|e| &e.payload));
        let verdicts = async {
            let committed = self.commit(&layout).await;
            self.inner.committer.conclude(&layout, committed).await
        }
        .instrument(span.clone())
        .await;
        trace::written(&span, &batch, &verdicts.written);
        record(&verdicts, &batch);
        let mut learned = Vec::new();
        let mut learn = verdicts.learn.into_iter();
        let mut written = verdicts.written.into_iter();
        let out = batch
            .into_iter()
            .map(|env| {
                if let (Some(true), Record::Scan(s)) = (learn.next(), env.payload) {
                    learned.push((s.cached, s.key, s.order));
                }
                Envelope::new(written.next().unwrap_or(Written::Nack), env.ack)
            })
            .collect();
        let learning = (!learned.is_empty()).then(|| self.learn(learned));
        (out, learning)
    }

    /// Commits the winners of `layout` in disjoint key partitions,
    /// concurrently, each on its own connection; the dead letters ride with
    /// partition 0.
    async fn commit(&self, layout: &Layout<'_>) -> Committed {
        let (committer, winners) = (&self.inner.committer, &layout.winners);
        let plan = partition::Plan::new(winners.iter().map(|s| &s.key), self.inner.partitions);
        trace::partitions(plan.parts().len());
        let runs = plan
            .gather(winners)
            .into_iter()
            .enumerate()
            .map(|(p, rows)| {
                let dead = if p == 0 { &layout.dead[..] } else { &[] };
                async move { committer.commit(&rows, dead).await }
            });
        let mut parts = Vec::with_capacity(plan.parts().len());
        let mut dead = Vec::new();
        for (p, committed) in futures::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            if p == 0 {
                dead = committed.dead;
            }
            parts.push(committed.winners);
        }
        Committed {
            winners: plan.reassemble(parts, Isolated::GaveUp),
            dead,
        }
    }

    /// Teaches the dedup cache the committed winners' orders, moved out of
    /// the batch rather than cloned, on a blocking-pool thread: a cache insert
    /// costs about a microsecond, which would otherwise delay every ack of the
    /// batch (measured in `benches/write.rs`). Learning late is harmless; the
    /// cache is a lower bound of the table either way. A winner whose key the
    /// dedup stage found cached is stored through that entry, with no second
    /// lookup.
    fn learn(&self, learned: Vec<Learned>) -> JoinHandle<()> {
        let orders = self.inner.orders.clone();
        self.inner.learning.spawn_blocking(move || {
            for (entry, key, order) in learned {
                orders.committed_at(entry, key, order);
            }
        })
    }

    /// Waits for every task teaching the dedup cache to finish; call once the
    /// pipeline has ended (no more batches). Batches written after this are
    /// still taught, and a later `close` waits for them too.
    pub async fn close(&self) {
        let learning = &self.inner.learning;
        learning.close();
        learning.wait().await;
        learning.reopen();
    }

    /// Cache-teaching tasks still running.
    pub fn learning_tasks(&self) -> usize {
        self.inner.learning.len()
    }
}

impl<S: BatchStore, A: Acknowledge + MessageContext> Sink<A> for WriteSink<S> {
    type In = Record;
    type Out = Written;

    fn name(&self) -> &'static str {
        stage::WRITE
    }

    async fn write(&self, batch: Vec<Envelope<Record, A>>) -> Vec<Envelope<Written, A>> {
        self.write_batch(batch).await.0
    }
}

/// A committed winner to teach the dedup cache: the entry the dedup stage
/// found for its key (if any), the key, and the order.
type Learned = (Option<CachedEntry>, super::ScanKey, super::Order);

/// Counts a batch's rows written and dead letters, and the freshness lag of
/// its committed winners.
fn record<A>(verdicts: &Verdicts, batch: &[Envelope<Record, A>]) {
    if verdicts.rows_written > 0 {
        counter!(names::ROWS_WRITTEN_TOTAL).increment(verdicts.rows_written);
    }
    for &(reason, n) in &verdicts.dead_by_reason {
        counter!(names::DEAD_LETTERS_TOTAL, label::REASON => reason.as_str()).increment(n);
    }
    let lag = Lag::new(now_micros());
    for (env, &learn) in batch.iter().zip(&verdicts.learn) {
        if let (true, Record::Scan(s)) = (learn, &env.payload) {
            lag.observe(s);
        }
    }
}

/// Counts a failed commit attempt: `rejected` when the data is at fault
/// (the rows are isolated), `transient` otherwise (retried or given up).
fn count_failure(step: Step) {
    let kind = if step == Step::Reject {
        error_kind::REJECTED
    } else {
        error_kind::TRANSIENT
    };
    counter!(names::ERRORS_TOTAL, label::STAGE => stage::WRITE, label::KIND => kind).increment(1);
}

/// Records one write transaction's duration, from the connection being had
/// to the commit.
fn record_transaction(took: Duration) {
    histogram!(names::WRITE_DURATION).record(took.as_secs_f64());
}

/// Freshness-lag histograms, looked up once per batch rather than per row.
struct Lag {
    committed_at: i64,
    scan: metrics::Histogram,
    publish: metrics::Histogram,
}

impl Lag {
    fn new(committed_at: i64) -> Self {
        Self {
            committed_at,
            scan: histogram!(names::FRESHNESS_LAG, label::REFERENCE => reference::SCAN),
            publish: histogram!(names::FRESHNESS_LAG, label::REFERENCE => reference::PUBLISH),
        }
    }

    fn observe(&self, s: &Scan) {
        let scan_lag = (self.committed_at as f64 / 1e6) - s.order.timestamp as f64;
        let publish_lag = (self.committed_at - s.order.published_micros) as f64 / 1e6;
        self.scan.record(scan_lag.max(0.0));
        self.publish.record(publish_lag.max(0.0));
    }
}

/// The series this stage emits, zero-initialised at start-up: its outcomes,
/// its errors, the dead letters it commits (by decode's reasons and its own),
/// the rows it writes.
pub(crate) fn series() -> Vec<Series> {
    let mut all = super::series::messages::<Written>(stage::WRITE);
    all.extend(super::series::errors(
        stage::WRITE,
        &[error_kind::TRANSIENT, error_kind::REJECTED],
    ));
    all.extend(
        super::decode::Reason::ALL
            .iter()
            .map(|r| Series::counter(names::DEAD_LETTERS_TOTAL, &[(label::REASON, r.as_str())])),
    );
    all.push(Series::counter(names::ROWS_WRITTEN_TOTAL, &[]));
    all
}
