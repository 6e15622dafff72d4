//! Write: commits a batch to PostgreSQL and decides each message's fate.
//!
//! In: a batch of [`Record`]s. Out: the same messages, each with a [`Written`]
//! verdict for the ack stage. The batch is collapsed to one row per key
//! (newest wins, [`merge::newest_per_key`]), sorted by key, binary-COPied into
//! a temporary table and merged with one `INSERT .. ON CONFLICT .. DO UPDATE
//! .. WHERE newer`; its dead letters go in the same transaction.
//!
//! Faults:
//! * Any error that is not the data's fault (connection lost, server
//!   restarting, deadlock, a missing table; decided by SQLSTATE class, never
//!   by message text) retries the whole batch with
//!   capped exponential backoff, forever: the pipeline pauses (batches stop
//!   flowing, so the source stops pulling) and resumes by itself when the
//!   database returns. `/readyz` reports the database down meanwhile.
//! * A batch the database rejects for its data (SQLSTATE classes 22, 23, 54)
//!   is bisected until the
//!   offending messages are isolated; they become dead letters
//!   (`rejected_by_database`) and the rest commits, so one bad message never
//!   blocks the subscription.
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

pub mod merge;
pub mod sql;

use super::dedup::CommittedOrders;
use super::{DeadLetter, Record, Scan, now_micros};
use crate::error::Chain;
use crate::pipeline::{
    Acknowledge, Backoff, Envelope, Outcome, Settle, Settlement, Shutdown, Sink,
};
use crate::telemetry::Health;
use crate::telemetry::names::outcome;
use metrics::{counter, histogram};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

/// What happened to one message at the write stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Its row is committed (it changed the table).
    Stored,
    /// A newer observation of its key is committed (in this batch or before).
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

/// An error from one attempt to commit a batch.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No connection could be had from the pool.
    #[error("no database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The database (or the connection to it) failed the transaction.
    #[error("database error")]
    Db(#[source] tokio_postgres::Error),
}

impl WriteError {
    /// Whether retrying the same data may succeed. Only errors that are the
    /// data's fault are permanent (see [`is_data_sqlstate`]); anything else —
    /// a lost connection, a server restarting, a deadlock, a missing table or
    /// permission — pauses the pipeline until it is fixed, rather than turning
    /// good messages into dead letters.
    pub fn is_transient(&self) -> bool {
        match self {
            WriteError::Pool(_) => true,
            WriteError::Db(e) => match e.code() {
                // No SQLSTATE: the connection itself failed (I/O, closed).
                None => true,
                Some(code) => !is_data_sqlstate(code),
            },
        }
    }

    /// The message to store with a rejected row's dead letter.
    pub fn detail(&self) -> String {
        match self {
            WriteError::Db(e) => match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            },
            WriteError::Pool(e) => e.to_string(),
        }
    }
}

/// SQLSTATE classes that blame the data: 22 data exception (a value the type
/// rejects), 23 integrity constraint violation (a CHECK), 54 program limit
/// exceeded (a value too large to index or store). Retrying the same rows
/// cannot succeed, so they are isolated and dead-lettered.
pub fn is_data_sqlstate(code: &SqlState) -> bool {
    matches!(&code.code()[..2], "22" | "23" | "54")
}

/// Fewest rows worth a partition of their own: below this, a transaction's
/// fixed cost (round trips, commit) outweighs the parallelism.
const MIN_PARTITION_ROWS: usize = 256;

/// Which of `parts` partitions a key belongs to. Stable within a process,
/// which is all that is needed: partitions only keep this process's
/// concurrent transactions on disjoint keys.
fn partition_of(key: &super::ScanKey, parts: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let h =
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
    (h % parts as u64) as usize
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

/// The PostgreSQL sink.
#[derive(Clone, Debug)]
pub struct PgSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: deadpool_postgres::Pool,
    orders: CommittedOrders,
    health: Health,
    shutdown: Shutdown,
    config: WriteConfig,
}

/// Why a chunk could not be committed.
enum Failure {
    /// The data was rejected (permanent).
    Rejected(WriteError),
    /// Shutdown's grace period ran out while retrying.
    GaveUp,
}

/// One message's fate in the commit loop.
#[derive(Clone, Debug)]
enum Verdict {
    Pending,
    Committed,
    Rejected(String),
    GaveUp,
}

impl PgSink {
    /// A sink writing through `pool`, teaching `orders` what it commits.
    pub fn new(
        pool: deadpool_postgres::Pool,
        orders: CommittedOrders,
        health: Health,
        shutdown: Shutdown,
        config: WriteConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                orders,
                health,
                shutdown,
                config,
            }),
        }
    }

    async fn attempt(&self, scans: &[&Scan], dead: &[&DeadLetter]) -> Result<u64, WriteError> {
        let mut client = self.inner.pool.get().await.map_err(WriteError::Pool)?;
        let started = Instant::now();
        let result = sql::commit(&mut client, scans, dead)
            .await
            .map_err(WriteError::Db);
        histogram!("miniscan_write_duration_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// Commits one chunk, retrying transient failures until it commits, is
    /// rejected, or shutdown gives up on it.
    async fn commit_retrying(&self, scans: &[&Scan], dead: &[&DeadLetter]) -> Result<u64, Failure> {
        let c = &self.inner.config;
        let mut backoff = Backoff::new(c.retry_initial, c.retry_max);
        loop {
            match self.attempt(scans, dead).await {
                Ok(changed) => {
                    self.inner.health.set_database(true);
                    return Ok(changed);
                }
                Err(e) if e.is_transient() => {
                    self.inner.health.set_database(false);
                    counter!("miniscan_errors_total", "stage" => "write", "kind" => "transient")
                        .increment(1);
                    if self.inner.shutdown.is_aborted() {
                        tracing::error!(error = %Chain(&e), rows = scans.len() + dead.len(),
                            "giving up on a batch at shutdown; it will be delivered again");
                        return Err(Failure::GaveUp);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %Chain(&e), retry_in_ms = delay.as_millis() as u64,
                        "database unavailable; pausing the pipeline");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.inner.shutdown.aborted() => {}
                    }
                }
                Err(e) => {
                    self.inner.health.set_database(true);
                    counter!("miniscan_errors_total", "stage" => "write", "kind" => "rejected")
                        .increment(1);
                    return Err(Failure::Rejected(e));
                }
            }
        }
    }

    /// Commits `scans` (sorted by key) and `dead`, splitting the scans into
    /// up to `partitions` disjoint sets of keys (by key hash) committed
    /// concurrently, each in its own transaction on its own connection. The
    /// sets share no key, so they never wait on each other's row locks, and
    /// each stays sorted, so they cannot deadlock with other replicas either.
    /// One PostgreSQL backend runs one core; several use the machine.
    async fn commit_partitioned(
        &self,
        scans: &[&Scan],
        dead: &[&DeadLetter],
    ) -> (Vec<Verdict>, u64) {
        let parts = self
            .inner
            .config
            .partitions
            .min(scans.len() / MIN_PARTITION_ROWS)
            .max(1);
        if parts == 1 {
            return self.commit_isolating(scans, dead).await;
        }
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); parts];
        for (i, s) in scans.iter().enumerate() {
            members[partition_of(&s.key, parts)].push(i);
        }
        let runs = members.iter().enumerate().map(|(k, idx)| {
            let rows: Vec<&Scan> = idx.iter().map(|&i| scans[i]).collect();
            // Dead letters ride with the first partition.
            let dead: &[&DeadLetter] = if k == 0 { dead } else { &[] };
            async move { self.commit_isolating(&rows, dead).await }
        });
        let results = futures::future::join_all(runs).await;
        let mut verdicts = vec![Verdict::Pending; scans.len() + dead.len()];
        let mut changed = 0;
        for (idx, (part, c)) in members.iter().zip(results) {
            changed += c;
            for (j, v) in part.into_iter().enumerate() {
                match idx.get(j) {
                    Some(&i) => verdicts[i] = v,
                    None => verdicts[scans.len() + j - idx.len()] = v,
                }
            }
        }
        (verdicts, changed)
    }

    /// Commits `scans` and `dead`, bisecting around rows the database rejects.
    /// Returns each item's verdict (scans first, then dead letters) and the
    /// number of rows changed.
    async fn commit_isolating(&self, scans: &[&Scan], dead: &[&DeadLetter]) -> (Vec<Verdict>, u64) {
        let n = scans.len() + dead.len();
        let mut verdicts = vec![Verdict::Pending; n];
        if n == 0 {
            // Only stale messages: nothing to write.
            return (verdicts, 0);
        }
        let mut changed = 0;
        let mut work: Vec<Range<usize>> = Vec::new();
        work.push(0..n);
        while let Some(range) = work.pop() {
            let s = range.start.min(scans.len())..range.end.min(scans.len());
            let d = range.start.max(scans.len()) - scans.len()
                ..range.end.max(scans.len()) - scans.len();
            match self.commit_retrying(&scans[s], &dead[d]).await {
                Ok(c) => {
                    changed += c;
                    verdicts[range].fill(Verdict::Committed);
                }
                Err(Failure::GaveUp) => verdicts[range].fill(Verdict::GaveUp),
                Err(Failure::Rejected(e)) if range.len() == 1 => {
                    tracing::warn!(error = %Chain(&e), "the database rejected a message; dead-lettering it");
                    verdicts[range.start] = Verdict::Rejected(e.detail());
                }
                Err(Failure::Rejected(_)) => {
                    let mid = range.start + range.len() / 2;
                    // Pop order: the first half first.
                    work.push(mid..range.end);
                    work.push(range.start..mid);
                }
            }
        }
        (verdicts, changed)
    }
}

impl<A: Acknowledge> Sink<A> for PgSink {
    type In = Record;
    type Out = Written;

    fn name(&self) -> &'static str {
        "write"
    }

    fn write(
        &self,
        batch: Vec<Envelope<Record, A>>,
    ) -> impl Future<Output = Vec<Envelope<Written, A>>> + Send {
        write_records(self, batch)
    }
}

/// Settles a batch of records against the database.
async fn write_records<A: Acknowledge>(
    sink: &PgSink,
    batch: Vec<Envelope<Record, A>>,
) -> Vec<Envelope<Written, A>> {
    let mut verdicts = vec![Written::Nack; batch.len()];
    let mut scan_pos: Vec<usize> = Vec::new();
    let mut scans: Vec<&Scan> = Vec::new();
    let mut dead_pos: Vec<usize> = Vec::new();
    let mut dead: Vec<&DeadLetter> = Vec::new();
    for (i, env) in batch.iter().enumerate() {
        match &env.payload {
            Record::Scan(s) => {
                scan_pos.push(i);
                scans.push(s);
            }
            Record::Stale => verdicts[i] = Written::Stale,
            Record::Dead(d) => {
                dead_pos.push(i);
                dead.push(d);
            }
        }
    }

    // One row per key, sorted by key: `winners` indexes `scans`.
    let winners = merge::newest_per_key(&scans);
    let winner_scans: Vec<&Scan> = winners.iter().map(|&j| scans[j]).collect();
    let (results, changed) = sink.commit_partitioned(&winner_scans, &dead).await;
    let (winner_results, dead_results) = results.split_at(winner_scans.len());

    // Rows the database rejected become dead letters of their own.
    let mut rejected: Vec<DeadLetter> = Vec::new();
    let mut rejected_of: Vec<usize> = Vec::new();
    for (w, verdict) in winner_results.iter().enumerate() {
        if let Verdict::Rejected(detail) = verdict {
            let s = winner_scans[w];
            rejected.push(DeadLetter {
                message_id: s.order.message_id.clone(),
                reason: "rejected_by_database",
                detail: detail.clone(),
                payload: s.payload.clone(),
                published_micros: s.order.published_micros,
            });
            rejected_of.push(w);
        }
    }
    let mut rejected_ok = vec![false; rejected.len()];
    if !rejected.is_empty() {
        let refs: Vec<&DeadLetter> = rejected.iter().collect();
        let (res, _) = sink.commit_isolating(&[], &refs).await;
        for (k, v) in res.iter().enumerate() {
            match v {
                Verdict::Committed => rejected_ok[k] = true,
                other => tracing::error!(message_id = %rejected[k].message_id, verdict = ?other,
                    "cannot record a rejected message as a dead letter; it will be delivered again"),
            }
        }
    }

    // The winners' fates, then everyone's.
    let lag = Lag::new(now_micros());
    let mut winner_fate = vec![Written::Nack; winner_scans.len()];
    // Batch positions of committed winners: the dedup cache learns them below.
    let mut learn = vec![false; verdicts.len()];
    let mut stored_left = changed;
    for (w, v) in winner_results.iter().enumerate() {
        winner_fate[w] = match v {
            Verdict::Committed => {
                let s = winner_scans[w];
                learn[scan_pos[winners[w]]] = true;
                lag.observe(s);
                // Exactly `changed` winners changed the table; which ones is
                // not reported back, and only the counts are observable.
                if stored_left > 0 {
                    stored_left -= 1;
                    Written::Stored
                } else {
                    Written::Superseded
                }
            }
            Verdict::Rejected(_) | Verdict::GaveUp | Verdict::Pending => Written::Nack,
        };
    }
    // Dead letters by reason, counted here and written to the registry once
    // per reason per batch, not once per message.
    let mut dead_by_reason: Vec<(&'static str, u64)> = Vec::new();
    let mut count_dead =
        |reason: &'static str| match dead_by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => dead_by_reason.push((reason, 1)),
        };
    for (k, &w) in rejected_of.iter().enumerate() {
        if rejected_ok[k] {
            winner_fate[w] = Written::DeadLetter;
            count_dead("rejected_by_database");
        }
    }
    if changed > 0 {
        counter!("miniscan_rows_written_total").increment(changed);
    }
    // Every scan follows its key's winner: the winner is stored or newer than
    // what is stored, so a loser is superseded once its winner is settled.
    for (j, s) in scans.iter().enumerate() {
        let Ok(rank) = winner_scans.binary_search_by(|probe| probe.key.cmp(&s.key)) else {
            continue; // unreachable: every key has a winner; Nack is the safe default
        };
        verdicts[scan_pos[j]] = match winner_fate[rank] {
            fate if winners[rank] == j => fate,
            Written::Nack => Written::Nack,
            _ => Written::Superseded,
        };
    }
    for (k, v) in dead_results.iter().enumerate() {
        let d = dead[k];
        verdicts[dead_pos[k]] = match v {
            Verdict::Committed => {
                count_dead(d.reason);
                Written::DeadLetter
            }
            Verdict::Rejected(detail) => {
                tracing::error!(message_id = %d.message_id, %detail,
                    "the database rejected a dead letter; it will be delivered again");
                Written::Nack
            }
            _ => Written::Nack,
        };
    }

    for (reason, n) in dead_by_reason {
        counter!("miniscan_dead_letters_total", "reason" => reason).increment(n);
    }

    // Now that the batch is committed, the dedup cache learns its winners'
    // orders, moved out of the batch rather than cloned, on a blocking-pool
    // thread: a cache insert costs about a microsecond, which would otherwise
    // delay every ack of the batch (measured in `benches/write.rs`). Learning
    // late is harmless; the cache is a lower bound of the table either way.
    let mut learned = Vec::new();
    let settled = batch
        .into_iter()
        .zip(verdicts)
        .zip(learn)
        .map(|((env, v), learn)| {
            if let (true, Record::Scan(s)) = (learn, env.payload) {
                learned.push((s.key, s.order));
            }
            Envelope::new(v, env.ack)
        })
        .collect();
    if !learned.is_empty() {
        let orders = sink.inner.orders.clone();
        tokio::task::spawn_blocking(move || {
            for (key, order) in learned {
                orders.committed(key, order);
            }
        });
    }
    settled
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
            scan: histogram!("miniscan_freshness_lag_seconds", "reference" => "scan"),
            publish: histogram!("miniscan_freshness_lag_seconds", "reference" => "publish"),
        }
    }

    fn observe(&self, s: &Scan) {
        let scan_lag = (self.committed_at as f64 / 1e6) - s.order.timestamp as f64;
        let publish_lag = (self.committed_at - s.order.published_micros) as f64 / 1e6;
        self.scan.record(scan_lag.max(0.0));
        self.publish.record(publish_lag.max(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_permanent() {
        assert!(is_data_sqlstate(&SqlState::INVALID_TEXT_REPRESENTATION));
        assert!(is_data_sqlstate(&SqlState::CHECK_VIOLATION));
        assert!(is_data_sqlstate(&SqlState::PROGRAM_LIMIT_EXCEEDED));
        assert!(!is_data_sqlstate(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(!is_data_sqlstate(&SqlState::ADMIN_SHUTDOWN));
        assert!(!is_data_sqlstate(&SqlState::UNDEFINED_TABLE));
        assert!(!is_data_sqlstate(&SqlState::CONNECTION_FAILURE));
    }

    #[test]
    fn verdicts_settle_as_documented() {
        assert_eq!(Written::Nack.settlement(), Settlement::Nack);
        for w in [
            Written::Stored,
            Written::Superseded,
            Written::Stale,
            Written::DeadLetter,
        ] {
            assert_eq!(w.settlement(), Settlement::Ack, "{w:?}");
        }
    }
}
