//! Write: commits a batch to PostgreSQL and decides each message's fate.
//!
//! In: a batch of [`Record`]s. Out: the same messages, each with a [`Written`]
//! verdict for the ack stage. The batch is collapsed to one row per key
//! (newest wins, [`merge::newest_per_key`]), sorted by key, binary-COPied into
//! a temporary table and merged with one `INSERT .. ON CONFLICT .. DO UPDATE
//! .. WHERE newer RETURNING message_id`, which names the messages whose rows
//! changed the table; its dead letters go in the same transaction.
//!
//! # Layout
//!
//! Split by responsibility, the way vector splits a sink into sink / service /
//! retry; each part but the SQL is a pure core with its own tests:
//!
//! * `layout`: every message's place: the winner of its key, a loser, stale,
//!   or a dead letter.
//! * `commit`: commits the winners in disjoint key partitions (`partition`),
//!   isolating the rows the database rejects (`isolate`), retrying every
//!   attempt as the policy says (`retry`).
//! * [`store`]: the seam to the database, [`BatchStore`], implemented by
//!   [`PgStore`] with the statements of [`sql`]. The stage's unit tests put a
//!   store with injected failures in its place.
//! * `verdict`: each message's [`Written`], the dead letters by reason, the
//!   winners the dedup cache learns.
//! * `trace`: the batch's `write` span and its links to the messages' traces
//!   (with tracing on).
//! * this module: the [`Sink`], its metrics, and teaching the cache.
//!
//! Faults:
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

mod commit;
pub(crate) mod isolate;
pub(crate) mod layout;
pub mod merge;
mod partition;
pub(crate) mod retry;
pub mod sql;
pub mod store;
pub mod trace;
pub(crate) mod verdict;

#[cfg(test)]
mod tests;

pub use store::{BatchStore, PgStore, StoreFault, WriteError};

use super::dedup::{CachedEntry, CommittedOrders};
use super::{Record, Scan, now_micros};
use crate::pipeline::{Acknowledge, Envelope, Outcome, Settle, Settlement, Shutdown, Sink};
use crate::telemetry::Health;
use crate::telemetry::names::{self, error_kind, label, outcome, reference, stage};
use crate::telemetry::series::Series;
use crate::traces::MessageContext;
use commit::Committer;
use layout::Layout;
use metrics::{counter, histogram};
use retry::Retry;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::Instrument as _;
use verdict::Verdicts;

/// What happened to one message at the write stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Its own row changed the table: it is the newest observation of its key
    /// committed so far.
    Stored,
    /// Committed without changing the table: a newer observation of its key
    /// is committed (in this batch or before), or this very observation was
    /// (a redelivery); or it lost to a newer one in its batch that the
    /// database rejected as a dead letter.
    Superseded,
    /// The dedup cache proved it not newer than what is committed.
    Stale,
    /// Its dead letter is committed.
    DeadLetter,
    /// Given up during shutdown: to be delivered again.
    Nack,
}

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
    orders: CommittedOrders,
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
        Self::with_store(PgStore::new(pool), orders, health, shutdown, config)
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
        let retry = Retry::new(config.retry_initial, config.retry_max, health, shutdown);
        Self {
            inner: Arc::new(Inner {
                committer: Committer::new(store, retry, config.partitions),
                orders,
            }),
        }
    }

    /// Writes a batch: every message with its verdict, and the task teaching
    /// the dedup cache the committed winners (if any).
    async fn settle<A: Acknowledge + MessageContext>(
        &self,
        batch: Vec<Envelope<Record, A>>,
    ) -> (Vec<Envelope<Written, A>>, Option<JoinHandle<()>>) {
        let span = trace::batch_span(&batch);
        let verdicts = {
            let layout = Layout::of(batch.iter().map(|e| &e.payload));
            let committer = &self.inner.committer;
            let (winners, dead) = committer
                .settle(&layout.winners, &layout.dead)
                .instrument(span.clone())
                .await;
            verdict::decide(&layout.slots, &winners, &dead)
        };
        trace::settled(&span, &batch, &verdicts.written);
        record(&verdicts, &batch);
        let mut learned = Vec::new();
        let mut learn = verdicts.learn.into_iter();
        let mut written = verdicts.written.into_iter();
        let settled = batch
            .into_iter()
            .map(|env| {
                if let (Some(true), Record::Scan(s)) = (learn.next(), env.payload) {
                    learned.push((s.cached, s.key, s.order));
                }
                Envelope::new(written.next().unwrap_or(Written::Nack), env.ack)
            })
            .collect();
        let learning = (!learned.is_empty()).then(|| self.learn(learned));
        (settled, learning)
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
        tokio::task::spawn_blocking(move || {
            for (entry, key, order) in learned {
                orders.committed_at(entry, key, order);
            }
        })
    }
}

impl<S: BatchStore, A: Acknowledge + MessageContext> Sink<A> for WriteSink<S> {
    type In = Record;
    type Out = Written;

    fn name(&self) -> &'static str {
        stage::WRITE
    }

    async fn write(&self, batch: Vec<Envelope<Record, A>>) -> Vec<Envelope<Written, A>> {
        self.settle(batch).await.0
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
        counter!(names::DEAD_LETTERS_TOTAL, label::REASON => reason).increment(n);
    }
    let lag = Lag::new(now_micros());
    for (env, &learn) in batch.iter().zip(&verdicts.learn) {
        if let (true, Record::Scan(s)) = (learn, &env.payload) {
            lag.observe(s);
        }
    }
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
