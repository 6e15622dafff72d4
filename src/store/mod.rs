//! The store: newest-wins upserts of scans into `scan_results`, with dead
//! letters, as a capability that two features use: the ingester's write stage
//! (`stages::write`) and `dead-letters replay` (`dead_letters::replay`). It
//! imports neither: both look down on it.
//!
//! In: a batch of [`Record`](crate::model::Record)s (scans, stale messages,
//! dead letters). Out: every message's [`Written`] verdict, in batch order,
//! with the counts a caller reports ([`Verdicts`]). Following one batch:
//!
//! 1. [`Layout::of`] collapses the batch to one winner per key (the newest,
//!    [`Order`](crate::model::Order) decides), sorted by key, and gives every
//!    message its [`Place`]: winner, loser to its key's winner, stale, or dead
//!    letter.
//! 2. [`Committer::commit`] commits a set of winners and dead letters through
//!    a [`BatchStore`] ([`PgStore`]: binary COPY into a temporary table, then
//!    one `INSERT .. ON CONFLICT .. DO UPDATE .. WHERE newer RETURNING`, see
//!    [`sql`]), retrying transient failures as the [`Retry`] policy says and
//!    bisecting out the rows the database rejects for their data. What
//!    became of each row is [`Isolated`]. Disjoint sets of winners may be
//!    committed concurrently (the write stage partitions by key).
//! 3. [`Committer::conclude`] records the rejected winners as dead letters
//!    (`rejected_by_database`) and returns the [`Verdicts`].
//!
//! `dead-letters replay` upserts inside its own transaction instead
//! ([`upsert_isolating`], a savepoint per attempt, no retry) and reads the
//! verdicts off [`Layout::verdicts_in_one_transaction`].
//!
//! Guarantees:
//! * A row is replaced only by a strictly newer observation of its key, so
//!   order of arrival, redelivery and replicas do not matter.
//! * Every writer locks keys in key order: concurrent batches, here or in
//!   other replicas, cannot deadlock.
//! * A message is `Stored`, `Superseded` or `DeadLetter` only once what it
//!   says is committed; otherwise it is `Nack` (delivered again). Only
//!   committed winners are marked for the dedup cache to learn
//!   ([`Verdicts::learn`]).
//! * Transient failures (no answer, or any SQLSTATE outside classes 22, 23,
//!   54: a lost connection, a deadlock, a missing table) are retried with
//!   capped backoff until shutdown is aborted; a rejection for the data is
//!   never retried, and one bad row never blocks the others.
//!
//! The store keeps no metrics: it reports each transaction's duration
//! ([`PgStore::on_transaction`]) and each failed attempt
//! ([`Retry::on_failure`]) to its owner, which counts them. It keeps the
//! database's health (`/readyz`) and, with tracing on, opens a `commit` span
//! per attempt.
//!
//! # Layout
//!
//! * `layout`: which message wins its key, and every message's place.
//! * `commit`: the [`BatchStore`] seam, [`PgStore`], the [`Committer`], and
//!   bisection of rejected rows.
//! * `retry`: the SQLSTATE classification and the retry policy.
//! * `verdict`: every message's [`Written`] from what was committed.
//! * [`sql`]: the statements.

mod commit;
mod layout;
mod retry;
pub mod sql;
mod verdict;

pub use commit::{
    BatchStore, CommitError, Committed, Committer, Isolated, PgStore, StoreFault, Upserted,
    upsert_isolating,
};
pub use layout::{Layout, Merged, Place, merge, newest_per_key};
pub use retry::{Retry, Step};
pub use verdict::{Verdicts, Written};

#[cfg(test)]
pub(crate) use commit::Injected;
