//! `mini-scan dead-letters replay`: stored payloads through today's decoder,
//! what now decodes written newest-wins, its dead letter deleted in the same
//! transaction.
//!
//! One batch is one transaction:
//!
//! 1. take up to `batch_size` dead letters after the last message id seen
//!    (keyset pagination), `FOR UPDATE SKIP LOCKED`: a batch another replay
//!    holds is skipped (that replay takes care of it), and ingesters, which only
//!    insert dead letters, never wait on one;
//! 2. decide their fates (`fate`) and upsert the winners through the
//!    ingester's own store ([`upsert_isolating`]), each attempt under a
//!    savepoint so that rows the database rejects for their data (SQLSTATE
//!    classes 22, 23, 54) are bisected out exactly as the write stage's are;
//! 3. delete the dead letters that were replayed, refresh the reason and
//!    detail of those that still fail, and commit.
//!
//! Killed at any point, a batch either committed whole or left no trace, so
//! a re-run converges. A transient failure (connection lost, deadlock,
//! [`Error::is_transient`]) is retried a few times, then the run stops with
//! the error; any other stops it at once. `--dry-run` runs
//! every batch the same way without taking locks on `dead_letters`, and
//! rolls it back.

use super::fate::{self, Fate, Stored};
use super::{Error, Filter, check_privileges};
use crate::error::Chain;
use crate::pipeline::Backoff;
use crate::store::{Layout, upsert_isolating};
use postgres_types::Type;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;

/// Attempts per batch before a transient failure stops the run: a one-shot
/// command should report a database that stays down, not wait for it.
const ATTEMPTS: u32 = 5;
/// Waits between attempts start here and double up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// See [`RETRY_INITIAL`].
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a replay needs: the privileges the ingest role lacks (UPDATE and
/// DELETE on `dead_letters`) and what the upsert needs.
const PRIVILEGES: &[(&str, &str)] = &[
    ("dead_letters", "SELECT"),
    ("dead_letters", "UPDATE"),
    ("dead_letters", "DELETE"),
    ("scan_results", "SELECT"),
    ("scan_results", "INSERT"),
    ("scan_results", "UPDATE"),
];

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Which dead letters.
    pub filter: Filter,
    /// Dead letters per transaction.
    pub batch_size: u32,
    /// Roll every batch back.
    pub dry_run: bool,
    /// A progress line at most this often (zero: after every batch).
    pub progress_every: Duration,
}

/// Counts for one group of dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Dead letters looked at.
    pub seen: u64,
    /// Replayed, and their rows changed the table.
    pub stored: u64,
    /// Replayed; the table (or their batch) held a newer observation.
    pub superseded: u64,
    /// Still failing; kept.
    pub still_failing: u64,
}

impl Counts {
    /// Stored or superseded: their dead letters are deleted.
    pub fn replayed(&self) -> u64 {
        self.stored + self.superseded
    }

    fn add(&mut self, fate: &Fate) {
        self.seen += 1;
        match fate {
            Fate::Stored => self.stored += 1,
            Fate::Superseded => self.superseded += 1,
            Fate::StillFailing { .. } | Fate::Undecided => self.still_failing += 1,
        }
    }
}

/// What a replay did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplaySummary {
    /// Nothing was written.
    pub dry_run: bool,
    /// Stopped by a signal before the end (re-run to go on).
    pub interrupted: bool,
    /// Transactions committed (or rolled back, dry).
    pub batches: u64,
    /// Every dead letter looked at.
    pub total: Counts,
    /// By the reason each dead letter had before the run.
    pub by_reason: BTreeMap<String, Counts>,
    /// Those still failing, by the reason they fail with now.
    pub still_failing_now: BTreeMap<String, u64>,
}

impl ReplaySummary {
    fn add(&mut self, old_reason: &str, fate: &Fate) {
        self.total.add(fate);
        self.by_reason
            .entry(old_reason.to_owned())
            .or_default()
            .add(fate);
        if let Fate::StillFailing { reason, .. } = fate {
            *self
                .still_failing_now
                .entry(reason.as_str().to_owned())
                .or_default() += 1;
        }
    }
}

/// Replays the dead letters `options` picks, batch by batch, until none is
/// left or `stop` is cancelled (checked between batches).
pub async fn replay(
    pool: &deadpool_postgres::Pool,
    options: &ReplayOptions,
    stop: &CancellationToken,
) -> Result<ReplaySummary, Error> {
    let client = pool.get().await.map_err(Error::Pool)?;
    check_privileges(&**client, "replay", PRIVILEGES).await?;
    drop(client);
    let mut summary = ReplaySummary {
        dry_run: options.dry_run,
        ..ReplaySummary::default()
    };
    let (started, mut last_line) = (Instant::now(), Instant::now());
    let mut after: Option<String> = None;
    loop {
        if stop.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        let Some(batch) = with_retries(pool, options, after.as_deref()).await? else {
            break;
        };
        after = batch.last_id.clone();
        summary.batches += 1;
        for (old_reason, fate) in &batch.fates {
            summary.add(old_reason, fate);
        }
        if last_line.elapsed() >= options.progress_every {
            last_line = Instant::now();
            progress(&summary, started.elapsed());
        }
    }
    Ok(summary)
}

fn progress(summary: &ReplaySummary, elapsed: Duration) {
    let t = &summary.total;
    tracing::info!(
        batches = summary.batches,
        seen = t.seen,
        replayed = t.replayed(),
        still_failing = t.still_failing,
        per_second = format!("{:.0}", t.seen as f64 / elapsed.as_secs_f64().max(1e-9)),
        dry_run = summary.dry_run,
        "replaying dead letters"
    );
}

/// One batch's result: each dead letter's old reason and fate, and the last
/// message id taken (the next batch starts after it).
struct Batch {
    fates: Vec<(String, Fate)>,
    last_id: Option<String>,
}

/// Runs one batch, retrying transient failures a few times.
async fn with_retries(
    pool: &deadpool_postgres::Pool,
    options: &ReplayOptions,
    after: Option<&str>,
) -> Result<Option<Batch>, Error> {
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
    let mut attempt = 1;
    loop {
        let result = match pool.get().await {
            Ok(mut client) => one_batch(&mut client, options, after).await,
            Err(e) => Err(Error::Pool(e)),
        };
        match result {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %Chain(&e), "replay batch failed; retrying");
            }
            other => return other,
        }
        attempt += 1;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The next batch after `after`, locked unless dry: the rows another replay
/// holds are skipped, not waited for.
const SELECT: &str = "
    SELECT message_id, reason, payload,
           (extract(epoch FROM coalesce(published_at, received_at)) * 1000000)::int8
    FROM dead_letters
    WHERE ($1::text IS NULL OR message_id > $1)
      AND ($2::text[] IS NULL OR reason = ANY($2))
      AND ($3::timestamptz IS NULL OR received_at >= $3)
    ORDER BY message_id
    LIMIT $4";

const DELETE: &str = "DELETE FROM dead_letters WHERE message_id = ANY($1)";

/// Today's reason and detail for those that still fail (`received_at` is
/// kept: purging goes by when a message first failed).
const REFRESH: &str = "
    UPDATE dead_letters AS d SET reason = u.reason, detail = u.detail
    FROM unnest($1::text[], $2::text[], $3::text[]) AS u(message_id, reason, detail)
    WHERE d.message_id = u.message_id";

/// One batch in one transaction; `None` when nothing is left.
async fn one_batch(
    client: &mut tokio_postgres::Client,
    options: &ReplayOptions,
    after: Option<&str>,
) -> Result<Option<Batch>, Error> {
    let tx = client.transaction().await?;
    let batch = take(&tx, options, after).await?;
    let Some(last) = batch.last() else {
        return Ok(None);
    };
    let last_id = Some(last.message_id.clone());
    let records = fate::decode(&batch);
    let layout = Layout::of(records.iter());
    let upserted = upsert_isolating(&tx, &layout.winners).await?;
    let fates = fate::fates(&layout, &upserted);
    if fates.contains(&Fate::Undecided) {
        // Cannot happen once every winner is committed or rejected; the
        // transaction rolls back rather than lose a dead letter.
        return Err(Error::Undecided(last.message_id.clone()));
    }
    if !options.dry_run {
        delete_and_refresh(&tx, &batch, &fates).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    let fates = batch.into_iter().map(|s| s.reason).zip(fates).collect();
    Ok(Some(Batch { fates, last_id }))
}

/// Takes the batch (locked, unless dry).
async fn take(
    tx: &Transaction<'_>,
    options: &ReplayOptions,
    after: Option<&str>,
) -> Result<Vec<Stored>, tokio_postgres::Error> {
    let sql = if options.dry_run {
        SELECT.to_owned()
    } else {
        format!("{SELECT} FOR UPDATE SKIP LOCKED")
    };
    let limit = i64::from(options.batch_size);
    let rows = tx
        .query_typed(
            &sql,
            &[
                (&after, Type::TEXT),
                (&options.filter.reasons_param(), Type::TEXT_ARRAY),
                (&options.filter.since, Type::TIMESTAMPTZ),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Stored {
                message_id: r.try_get(0)?,
                reason: r.try_get(1)?,
                payload: bytes::Bytes::from(r.try_get::<_, Vec<u8>>(2)?),
                published_micros: r.try_get(3)?,
            })
        })
        .collect()
}

/// Deletes the replayed dead letters and refreshes those still failing.
async fn delete_and_refresh(
    tx: &Transaction<'_>,
    batch: &[Stored],
    fates: &[Fate],
) -> Result<(), tokio_postgres::Error> {
    let replayed: Vec<&str> = batch
        .iter()
        .zip(fates)
        .filter(|(_, f)| f.is_replayed())
        .map(|(s, _)| s.message_id.as_str())
        .collect();
    let (mut ids, mut reasons, mut details) = (Vec::new(), Vec::new(), Vec::new());
    for (s, f) in batch.iter().zip(fates) {
        if let Fate::StillFailing { reason, detail } = f {
            ids.push(s.message_id.as_str());
            reasons.push(reason.as_str());
            details.push(detail.as_str());
        }
    }
    if !replayed.is_empty() {
        tx.execute_typed(DELETE, &[(&replayed, Type::TEXT_ARRAY)])
            .await?;
    }
    if !ids.is_empty() {
        tx.execute_typed(
            REFRESH,
            &[
                (&ids, Type::TEXT_ARRAY),
                (&reasons, Type::TEXT_ARRAY),
                (&details, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    }
    Ok(())
}
