//! The seam between the write stage and the database.
//!
//! [`BatchStore`] is one operation: commit these winners and these dead
//! letters in one transaction, and say which winners changed the table. The
//! stage's retry, isolation, partitioning and verdicts are written against it;
//! [`PgStore`] implements it with a connection pool and [`super::sql`], and
//! the stage's unit tests put a store with injected failures in its place.
//!
//! A failed commit carries its typed cause ([`StoreFault::sqlstate`]), from
//! which the retry policy decides whether to retry; nothing reads error text.
//!
//! Metrics: `miniscan_write_duration_seconds` (one per [`PgStore`]
//! transaction, from the connection being had to the commit).

use super::sql;
use crate::stages::{DeadLetter, Scan};
use metrics::histogram;
use std::future::Future;
use std::time::Instant;
use tokio_postgres::error::SqlState;

/// A failed commit, as the retry policy needs to see it.
pub trait StoreFault: std::error::Error + Send + Sync + 'static {
    /// The SQLSTATE the database answered with, or `None` when it did not
    /// answer (no connection, I/O error, connection closed).
    fn sqlstate(&self) -> Option<&SqlState>;
    /// The text to store with the dead letter of a row rejected this way.
    fn detail(&self) -> String;
}

/// Where the write stage commits batches.
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
pub enum WriteError {
    /// No connection could be had from the pool.
    #[error("no database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The database (or the connection to it) failed the transaction.
    #[error("database error")]
    Db(#[source] tokio_postgres::Error),
}

impl StoreFault for WriteError {
    /// A pool error counts as no answer, even when it wraps a SQLSTATE from
    /// setting up a new connection: the rows were never sent.
    fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            WriteError::Pool(_) => None,
            WriteError::Db(e) => e.code(),
        }
    }

    fn detail(&self) -> String {
        match self {
            WriteError::Db(e) => match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            },
            WriteError::Pool(e) => e.to_string(),
        }
    }
}

/// The PostgreSQL store: a connection from the pool per commit.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: deadpool_postgres::Pool,
}

impl PgStore {
    /// A store committing through `pool` (see [`crate::db::pool`]), which
    /// may connect through a transaction-mode pooler.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Self { pool }
    }
}

impl BatchStore for PgStore {
    type Error = WriteError;

    async fn commit(&self, scans: &[&Scan], dead: &[&DeadLetter]) -> Result<Vec<bool>, WriteError> {
        let mut client = self.pool.get().await.map_err(WriteError::Pool)?;
        let started = Instant::now();
        let result = sql::commit(&mut client, scans, dead)
            .await
            .map_err(WriteError::Db);
        histogram!(crate::telemetry::names::WRITE_DURATION).record(started.elapsed().as_secs_f64());
        result
    }
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
