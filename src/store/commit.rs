//! Committing: the seam to the database ([`BatchStore`], implemented by
//! [`PgStore`]), and the [`Committer`] that commits through it, bisecting
//! out the rows the database rejects.
//!
//! A failed commit carries its typed cause ([`StoreFault::sqlstate`]), from
//! which the retry policy ([`super::retry`]) decides whether to retry; nothing
//! reads error text.
//!
//! Isolation: [`isolate`] is given the number of rows and an async "commit
//! this sub-range" operation (retrying transient failures itself). It commits
//! the whole range; a rejected range is halved and each half committed in
//! turn, down to single rows, which are the ones at fault. With `r` rejected
//! rows among `n`, that takes at most `1 + 2·r·⌈log₂ n⌉` attempts, and a
//! single attempt when nothing is rejected. Every row ends [`Isolated`]
//! exactly once and is committed at most once. The write stage isolates with
//! a transaction per attempt ([`Committer::commit`]); `dead-letters replay`
//! with a savepoint per attempt inside its own transaction
//! ([`upsert_isolating`]).

use super::retry::{Failure, Retry, is_data_sqlstate};
use super::sql;
use super::verdict::{self, LetterCommit, Verdicts, WinnerCommit};
use crate::error::Chain;
use crate::model::{DeadLetter, Reason, Scan};
use std::future::Future;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;

/// A failed commit, as the retry policy needs to see it.
pub trait StoreFault: std::error::Error + Send + Sync + 'static {
    /// The SQLSTATE the database answered with, or `None` when it did not
    /// answer (no connection, I/O error, connection closed).
    fn sqlstate(&self) -> Option<&SqlState>;
    /// The text to store with the dead letter of a row rejected this way.
    fn detail(&self) -> String;
}

/// Where batches are committed.
pub trait BatchStore: Send + Sync + 'static {
    /// Why a commit failed.
    type Error: StoreFault;

    /// Commits `scans` (one per key, sorted by key, newest wins against the
    /// table) and `dead` in one transaction: all of it or nothing. Returns,
    /// for each scan in order, whether its row changed the table (`false`
    /// when the table already held the same or a newer observation).
    fn commit(
        &self,
        scans: &[&Scan],
        dead: &[&DeadLetter],
    ) -> impl Future<Output = Result<Vec<bool>, Self::Error>> + Send;
}

/// An error from one attempt to commit to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// No connection could be had from the pool.
    #[error("no database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The database (or the connection to it) failed the transaction.
    #[error("database error")]
    Db(#[source] tokio_postgres::Error),
}

impl StoreFault for CommitError {
    /// A pool error counts as no answer, even when it wraps a SQLSTATE from
    /// setting up a new connection: the rows were never sent.
    fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            CommitError::Pool(_) => None,
            CommitError::Db(e) => e.code(),
        }
    }

    fn detail(&self) -> String {
        match self {
            CommitError::Db(e) => match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            },
            CommitError::Pool(e) => e.to_string(),
        }
    }
}

/// The PostgreSQL store: a connection from the pool per commit.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: deadpool_postgres::Pool,
    on_transaction: fn(Duration),
}

impl PgStore {
    /// A store committing through `pool` (see [`crate::db::pool`]), which
    /// may connect through a transaction-mode pooler.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Self {
            pool,
            on_transaction: |_| {},
        }
    }

    /// Tells `observe` how long each transaction took, from the connection
    /// being had to the commit (or the failure): the store keeps no metrics,
    /// its caller does.
    pub fn on_transaction(self, observe: fn(Duration)) -> Self {
        Self {
            on_transaction: observe,
            ..self
        }
    }
}

impl BatchStore for PgStore {
    type Error = CommitError;

    async fn commit(
        &self,
        scans: &[&Scan],
        dead: &[&DeadLetter],
    ) -> Result<Vec<bool>, CommitError> {
        let mut client = self.pool.get().await.map_err(CommitError::Pool)?;
        let started = Instant::now();
        let result = sql::commit(&mut client, scans, dead)
            .await
            .map_err(CommitError::Db);
        (self.on_transaction)(started.elapsed());
        result
    }
}

/// What became of one row put to the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolated<R, E> {
    /// Committed, with what the commit said about the row.
    Committed(R),
    /// Rejected on its own: the row is at fault.
    Rejected(E),
    /// Given up at shutdown: neither committed nor at fault.
    GaveUp,
}

impl<R, E> Isolated<R, E> {
    /// The same, with the rejection mapped by `f`.
    fn map_rejected<F>(self, f: impl FnOnce(E) -> F) -> Isolated<R, F> {
        match self {
            Isolated::Committed(r) => Isolated::Committed(r),
            Isolated::Rejected(e) => Isolated::Rejected(f(e)),
            Isolated::GaveUp => Isolated::GaveUp,
        }
    }
}

/// One upserted row: committed (and whether it changed the table), rejected
/// (with the text for its dead letter), or given up.
pub type Upserted = Isolated<bool, String>;

/// What became of a set of winners and of dead letters, each in input order.
#[derive(Debug, Default)]
pub struct Committed {
    /// One per winner.
    pub winners: Vec<Upserted>,
    /// One per dead letter.
    pub dead: Vec<Upserted>,
}

/// Commits batches through a store, as the retry policy says.
#[derive(Debug)]
pub struct Committer<S> {
    store: S,
    retry: Retry,
}

impl<S: BatchStore> Committer<S> {
    /// Commits through `store`, retrying as `retry` says.
    pub fn new(store: S, retry: Retry) -> Self {
        Self { store, retry }
    }

    /// Commits `winners` (one per key, sorted by key) and `dead` in one
    /// transaction, or, when the database rejects some rows for their data,
    /// around them: the rest commits, and the rejected ones are named.
    /// Transient failures are retried until the policy gives up. Disjoint
    /// sets of winners may be committed concurrently.
    pub async fn commit(&self, winners: &[&Scan], dead: &[&DeadLetter]) -> Committed {
        let mut isolated = isolate(winners.len() + dead.len(), |range| {
            let (s, d) = split_at(range.clone(), winners.len());
            let (scans, dead) = (&winners[s], &dead[d]);
            async move {
                let attempt = move || self.store.commit(scans, dead);
                let mut changed = self.retry.run(range.len(), attempt).await?;
                // One flag per scan, then the dead letters' (meaningless).
                changed.resize(range.len(), false);
                Ok::<_, Failure<S::Error>>(changed)
            }
        })
        .await;
        let dead = isolated.split_off(winners.len().min(isolated.len()));
        Committed {
            winners: isolated
                .into_iter()
                .map(|f| f.map_rejected(rejected_row))
                .collect(),
            dead: dead
                .into_iter()
                .map(|f| f.map_rejected(|e| e.detail()))
                .collect(),
        }
    }

    /// Concludes a batch laid out as `layout` once `committed` (its winners
    /// and dead letters, in the layout's order) is: records the winners the
    /// database rejected as dead letters (`rejected_by_database`), then
    /// decides every message's verdict.
    pub async fn conclude(&self, layout: &super::Layout<'_>, committed: Committed) -> Verdicts {
        let winners = self
            .record_rejected(&layout.winners, committed.winners)
            .await;
        let dead: Vec<LetterCommit> = layout
            .dead
            .iter()
            .zip(committed.dead)
            .map(|(d, upserted)| LetterCommit {
                reason: d.reason,
                committed: recorded(d, upserted),
            })
            .collect();
        verdict::decide(&layout.places, &winners, &dead)
    }

    /// The winners' commits, once those the database rejected are recorded
    /// as dead letters (or not, then they are uncommitted).
    async fn record_rejected(
        &self,
        winners: &[&Scan],
        upserted: Vec<Upserted>,
    ) -> Vec<WinnerCommit> {
        let mut commits: Vec<WinnerCommit> = upserted
            .iter()
            .map(|u| WinnerCommit::of(u, false))
            .collect();
        let (at, letters): (Vec<usize>, Vec<DeadLetter>) = winners
            .iter()
            .zip(upserted)
            .enumerate()
            .filter_map(|(w, (s, upserted))| match upserted {
                Isolated::Rejected(detail) => Some((w, rejected_letter(s, detail))),
                _ => None,
            })
            .unzip();
        if letters.is_empty() {
            return commits;
        }
        let refs: Vec<&DeadLetter> = letters.iter().collect();
        let recorded = self.commit(&[], &refs).await.dead;
        for ((w, letter), upserted) in at.into_iter().zip(&letters).zip(recorded) {
            match upserted {
                Isolated::Committed(_) => commits[w] = WinnerCommit::DeadLettered,
                other => tracing::error!(message_id = %letter.message_id, verdict = ?other,
                    "cannot record a rejected message as a dead letter; it will be delivered again"),
            }
        }
        commits
    }
}

/// Logs a winner the database rejects; returns the text for its dead letter.
fn rejected_row<E: StoreFault>(e: E) -> String {
    tracing::warn!(error = %Chain(&e), "the database rejected a message; dead-lettering it");
    e.detail()
}

/// The dead letter of a scan the database rejected.
fn rejected_letter(s: &Scan, detail: String) -> DeadLetter {
    DeadLetter {
        message_id: s.order.message_id.to_string(),
        reason: Reason::RejectedByDatabase,
        detail,
        payload: s.payload.clone(),
        published_micros: s.order.published_micros,
    }
}

/// Whether a dead letter of the batch is committed.
fn recorded(d: &DeadLetter, upserted: Upserted) -> bool {
    match upserted {
        Isolated::Committed(_) => true,
        Isolated::Rejected(detail) => {
            tracing::error!(message_id = %d.message_id, %detail,
                "the database rejected a dead letter; it will be delivered again");
            false
        }
        Isolated::GaveUp => false,
    }
}

/// Upserts `winners` (one per key, sorted by key) inside `tx`, bisecting
/// around the rows the database rejects for their data, each attempt under a
/// savepoint so that a rejected attempt leaves the transaction usable. Any
/// other failure fails the whole call (the caller decides whether to retry
/// the transaction). Used by `dead-letters replay`, which deletes the dead
/// letters it replays in the same transaction.
pub async fn upsert_isolating(
    tx: &Transaction<'_>,
    winners: &[&Scan],
) -> Result<Vec<Upserted>, tokio_postgres::Error> {
    let transient: Mutex<Option<tokio_postgres::Error>> = Mutex::new(None);
    let isolated = isolate(winners.len(), |range| {
        let rows = &winners[range];
        let transient = &transient;
        async move {
            match upsert_under_savepoint(tx, rows).await {
                Ok(changed) => Ok(changed),
                Err(e) if e.code().is_some_and(is_data_sqlstate) => {
                    Err(Failure::Rejected(CommitError::Db(e).detail()))
                }
                Err(e) => {
                    transient.lock().expect("not poisoned").get_or_insert(e);
                    Err(Failure::GaveUp)
                }
            }
        }
    })
    .await;
    match transient.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(isolated),
    }
}

/// One attempt at upserting `rows`, under a savepoint: all of them, or none
/// (and the transaction still usable).
async fn upsert_under_savepoint(
    tx: &Transaction<'_>,
    rows: &[&Scan],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    tx.batch_execute("SAVEPOINT replay_attempt").await?;
    let result = async {
        let changed = sql::upsert(tx, rows).await?;
        tx.batch_execute(sql::CLEAR_STAGE_TABLE).await?;
        tx.batch_execute("RELEASE SAVEPOINT replay_attempt").await?;
        Ok(changed)
    }
    .await;
    if result.is_err() {
        // If this fails too, the connection is gone and the error above says why.
        let _ = tx
            .batch_execute("ROLLBACK TO SAVEPOINT replay_attempt; RELEASE SAVEPOINT replay_attempt")
            .await;
    }
    result
}

/// Commits rows `0..len` through `commit`, which commits a sub-range and
/// returns one result per row of it, bisecting around rejected rows.
async fn isolate<R, E, F, Fut>(len: usize, mut commit: F) -> Vec<Isolated<R, E>>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, Failure<E>>>,
{
    let mut isolated: Vec<Option<Isolated<R, E>>> = (0..len).map(|_| None).collect();
    let mut work: Vec<Range<usize>> = Vec::new();
    if len > 0 {
        work.push(0..len);
    }
    while let Some(range) = work.pop() {
        match commit(range.clone()).await {
            Ok(results) => {
                for (row, r) in isolated[range].iter_mut().zip(results) {
                    *row = Some(Isolated::Committed(r));
                }
            }
            Err(Failure::GaveUp) => isolated[range].fill_with(|| Some(Isolated::GaveUp)),
            Err(Failure::Rejected(e)) if range.len() == 1 => {
                isolated[range.start] = Some(Isolated::Rejected(e));
            }
            Err(Failure::Rejected(_)) => {
                let mid = range.start + range.len() / 2;
                // Popped first half first: rows are attempted in order.
                work.push(mid..range.end);
                work.push(range.start..mid);
            }
        }
    }
    // A row without a result (a commit that returned too few) was not
    // committed as far as anyone can tell: given up, hence delivered again.
    isolated
        .into_iter()
        .map(|f| f.unwrap_or(Isolated::GaveUp))
        .collect()
}

/// Splits `range` of a sequence made of a first part of `at` items and a
/// second part into the range of each part, each relative to its part.
fn split_at(range: Range<usize>, at: usize) -> (Range<usize>, Range<usize>) {
    let first = range.start.min(at)..range.end.min(at);
    let second = range.start.max(at) - at..range.end.max(at) - at;
    (first, second)
}

/// A failure to inject in tests: an answer with a SQLSTATE, or none.
#[cfg(test)]
#[derive(Clone, Debug, thiserror::Error)]
#[error("injected fault {0:?}")]
pub(crate) struct Injected(pub(crate) Option<SqlState>);

#[cfg(test)]
impl Injected {
    /// The connection is lost.
    pub(crate) fn connection_lost() -> Self {
        Self(None)
    }

    /// A value too large to index (SQLSTATE 54000): the data's fault.
    pub(crate) fn too_large() -> Self {
        Self(Some(SqlState::PROGRAM_LIMIT_EXCEEDED))
    }
}

#[cfg(test)]
impl StoreFault for Injected {
    fn sqlstate(&self) -> Option<&SqlState> {
        self.0.as_ref()
    }

    fn detail(&self) -> String {
        match &self.0 {
            Some(code) => format!("{}: injected", code.code()),
            None => "injected: no answer".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Runs `isolate` over `n` rows with the rows in `bad` rejected and, from
    /// attempt `give_up_at` on, every attempt given up. Returns what became of
    /// each row, how often each was committed, and the number of attempts.
    fn run(
        n: usize,
        bad: &BTreeSet<usize>,
        give_up_at: usize,
    ) -> (Vec<Isolated<usize, usize>>, Vec<usize>, usize) {
        let mut commits = vec![0; n];
        let mut attempts = 0;
        let rows = futures::executor::block_on(isolate(n, |range: Range<usize>| {
            attempts += 1;
            let result = if attempts > give_up_at {
                Err(Failure::GaveUp)
            } else if let Some(&first) = bad.range(range.clone()).next() {
                Err(Failure::Rejected(first))
            } else {
                range.clone().for_each(|i| commits[i] += 1);
                Ok(range.collect())
            };
            async move { result }
        }));
        (rows, commits, attempts)
    }

    fn ceil_log2(n: usize) -> usize {
        n.next_power_of_two().trailing_zeros() as usize
    }

    #[test]
    fn nothing_rejected_takes_one_attempt_and_no_rows_none() {
        let (rows, commits, attempts) = run(5, &BTreeSet::new(), usize::MAX);
        assert_eq!(attempts, 1);
        assert_eq!(commits, [1; 5]);
        assert_eq!(rows, (0..5).map(Isolated::Committed).collect::<Vec<_>>());
        assert_eq!(run(0, &BTreeSet::new(), usize::MAX).2, 0);
    }

    #[test]
    fn a_range_given_up_is_given_up_row_by_row() {
        let bad = BTreeSet::from([3]);
        let (rows, commits, _) = run(8, &bad, 1);
        assert_eq!(commits, [0; 8]);
        assert!(rows.iter().all(|f| *f == Isolated::GaveUp), "{rows:?}");
    }

    #[test]
    fn split_at_cuts_a_range_into_its_parts() {
        assert_eq!(split_at(0..5, 3), (0..3, 0..2));
        assert_eq!(split_at(1..3, 3), (1..3, 0..0));
        assert_eq!(split_at(3..4, 3), (3..3, 0..1));
        assert_eq!(split_at(0..0, 0), (0..0, 0..0));
    }

    proptest! {
        #[test]
        fn bisection_isolates_exactly_the_rejected_rows(
            n in 0usize..300,
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let bad: BTreeSet<usize> = if n == 0 {
                BTreeSet::new()
            } else {
                picks.iter().map(|p| p.index(n)).collect()
            };
            let (rows, commits, attempts) = run(n, &bad, usize::MAX);
            for (i, row) in rows.iter().enumerate() {
                if bad.contains(&i) {
                    prop_assert_eq!(row, &Isolated::Rejected(i));
                    prop_assert_eq!(commits[i], 0);
                } else {
                    prop_assert_eq!(row, &Isolated::Committed(i));
                    prop_assert_eq!(commits[i], 1, "row {} committed once", i);
                }
            }
            let bound = usize::from(n > 0) + 2 * bad.len() * ceil_log2(n);
            prop_assert!(attempts <= bound, "{} attempts > {}", attempts, bound);
        }

        #[test]
        fn split_at_partitions_every_range(start in 0usize..50, len in 0usize..50, at in 0usize..100) {
            let range = start..start + len;
            let (a, b) = split_at(range.clone(), at);
            let rebuilt: Vec<usize> = a.clone().chain(b.clone().map(|i| i + at)).collect();
            prop_assert_eq!(rebuilt, range.collect::<Vec<_>>());
            prop_assert!(a.end <= at);
        }
    }
}
