//! `mini-scan dead-letters purge --older-than DURATION [--reason R]...`:
//! deletes the dead letters received before `now() - DURATION` (the
//! database's clock, taken once at the start, so the run ends), in batches
//! of one transaction each. Rows another transaction holds (a replay) are
//! skipped rather than waited for. `--dry-run` only counts.

use super::{Error, Filter, ago_on_server, check_privileges};
use postgres_types::Type;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How to purge.
#[derive(Clone, Debug)]
pub struct PurgeOptions {
    /// Received longer ago than this.
    pub older_than: Duration,
    /// Only these reasons (empty: all). `since` is not used.
    pub filter: Filter,
    /// Rows deleted per transaction.
    pub batch_size: u32,
    /// Count only.
    pub dry_run: bool,
}

/// What a purge did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PurgeSummary {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Stopped by a signal before the end.
    pub interrupted: bool,
    /// Dead letters received before this time were purged (RFC 3339).
    pub received_before: String,
    /// Deleted (or, dry, to delete).
    pub purged: u64,
    /// The same, by reason.
    pub by_reason: BTreeMap<String, u64>,
}

const DELETE: &str = "
    WITH doomed AS (
        SELECT message_id FROM dead_letters
        WHERE received_at < $1 AND ($2::text[] IS NULL OR reason = ANY($2))
        ORDER BY message_id
        LIMIT $3
        FOR UPDATE SKIP LOCKED)
    DELETE FROM dead_letters AS d USING doomed
    WHERE d.message_id = doomed.message_id
    RETURNING d.reason";

const COUNT: &str = "
    SELECT reason, count(*) FROM dead_letters
    WHERE received_at < $1 AND ($2::text[] IS NULL OR reason = ANY($2))
    GROUP BY reason";

/// Purges until nothing `options` picks is left, or `stop` is cancelled.
pub async fn purge(
    pool: &deadpool_postgres::Pool,
    options: &PurgeOptions,
    stop: &CancellationToken,
) -> Result<PurgeSummary, Error> {
    let client = pool.get().await.map_err(Error::Pool)?;
    let needs: &[(&str, &str)] = if options.dry_run {
        &[("dead_letters", "SELECT")]
    } else {
        &[("dead_letters", "SELECT"), ("dead_letters", "DELETE")]
    };
    check_privileges(&**client, "purge", needs).await?;
    let cutoff = ago_on_server(&**client, options.older_than).await?;
    let mut summary = PurgeSummary {
        dry_run: options.dry_run,
        received_before: rfc3339(cutoff),
        ..PurgeSummary::default()
    };
    let reasons = options.filter.reasons_param();
    if options.dry_run {
        let rows = client
            .query_typed(
                COUNT,
                &[(&cutoff, Type::TIMESTAMPTZ), (&reasons, Type::TEXT_ARRAY)],
            )
            .await?;
        for row in rows {
            count(
                &mut summary,
                row.try_get(0)?,
                row.try_get::<_, i64>(1)? as u64,
            );
        }
        return Ok(summary);
    }
    let limit = i64::from(options.batch_size);
    loop {
        if stop.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        let rows = client
            .query_typed(
                DELETE,
                &[
                    (&cutoff, Type::TIMESTAMPTZ),
                    (&reasons, Type::TEXT_ARRAY),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            count(&mut summary, row.try_get(0)?, 1);
        }
    }
    Ok(summary)
}

fn count(summary: &mut PurgeSummary, reason: String, n: u64) {
    summary.purged += n;
    *summary.by_reason.entry(reason).or_default() += n;
}

/// `SystemTime` as RFC 3339 with microseconds, for reports.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}
