//! `mini-scan dead-letters stats`: counts by reason, oldest and newest
//! (by when they were received), total payload bytes.

use super::Error;
use super::check_privileges;
use super::purge::rfc3339;
use serde::Serialize;
use std::time::SystemTime;

/// One group of dead letters (a reason, or all of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The reason, or `total`.
    pub reason: String,
    /// How many.
    pub count: u64,
    /// When the oldest was received (RFC 3339), if any.
    pub oldest: Option<String>,
    /// When the newest was received (RFC 3339), if any.
    pub newest: Option<String>,
    /// Their payloads' bytes.
    pub payload_bytes: u64,
}

/// The dead letters at a glance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// By reason, in reason order.
    pub reasons: Vec<Group>,
    /// All of them.
    pub total: Group,
}

const BY_REASON: &str = "
    SELECT reason, count(*), min(received_at), max(received_at),
           coalesce(sum(octet_length(payload)), 0)::int8
    FROM dead_letters
    GROUP BY ROLLUP (reason)
    ORDER BY reason NULLS LAST";

/// Reads the statistics (one scan of `dead_letters`).
pub async fn stats(client: &tokio_postgres::Client) -> Result<Stats, Error> {
    check_privileges(client, "stats", &[("dead_letters", "SELECT")]).await?;
    let rows = client.query_typed(BY_REASON, &[]).await?;
    let mut stats = Stats {
        total: Group {
            reason: "total".into(),
            ..Group::default()
        },
        ..Stats::default()
    };
    for row in rows {
        let reason: Option<String> = row.try_get(0)?;
        let group = Group {
            reason: reason.clone().unwrap_or_else(|| "total".into()),
            count: row.try_get::<_, i64>(1)? as u64,
            oldest: row.try_get::<_, Option<SystemTime>>(2)?.map(rfc3339),
            newest: row.try_get::<_, Option<SystemTime>>(3)?.map(rfc3339),
            payload_bytes: row.try_get::<_, i64>(4)? as u64,
        };
        match reason {
            Some(_) => stats.reasons.push(group),
            None => stats.total = group,
        }
    }
    Ok(stats)
}
