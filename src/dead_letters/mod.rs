//! `mini-scan dead-letters`: see, replay and purge the messages the ingester
//! could not store (`dead_letters`, each with its exact payload and reason).
//!
//! * [`stats`](mod@stats): counts by reason, oldest and newest, payload bytes.
//! * [`replay`](mod@replay): each payload through today's decoder; what now decodes is
//!   written through the ingester's own newest-wins upsert and its dead
//!   letter deleted, in one transaction per batch; what still fails stays,
//!   its reason and detail refreshed. Batches are taken by keyset
//!   pagination on `message_id` with `FOR UPDATE SKIP LOCKED`, so ingesters
//!   and another replay may run meanwhile. The pure core that decides each
//!   dead letter's fate is `fate`.
//! * [`purge`](mod@purge): deletes dead letters older than a duration, in batches.
//! * [`report`]: the tables, the JSON, and the metrics file
//!   (`--metrics-file`) these one-shot commands leave for node_exporter.
//!
//! Roles: `replay` and `purge` delete from `dead_letters`, which the ingest
//! role may not (see [`crate::db::grants`]); they run as the schema owner,
//! and say so in one line when the role they run as lacks a privilege
//! ([`check_privileges`]).

mod fate;
pub mod purge;
pub mod replay;
pub mod report;
pub mod stats;

pub use purge::{PurgeOptions, PurgeSummary, purge};
pub use replay::{ReplayOptions, ReplaySummary, replay};
pub use stats::{Stats, stats};

use crate::config::dead_letters::Since;
use postgres_types::Type;
use std::time::SystemTime;
use tokio_postgres::GenericClient;

/// Why a `dead-letters` command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be had.
    #[error("no database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The database failed a statement (or the connection to it broke).
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    /// A batch left a dead letter's fate undecided (a bug): it was rolled back.
    #[error("the replay batch ending at message id {0:?} left a fate undecided; rolled back")]
    Undecided(String),
    /// The role lacks what the command needs.
    #[error(
        "the role \"{role}\" lacks {missing}: run `dead-letters {command}` as the schema owner \
         (the role `mini-scan migrate` runs as)"
    )]
    Privileges {
        /// `replay`, `purge` or `stats`.
        command: &'static str,
        /// The connected role.
        role: String,
        /// E.g. "DELETE on dead_letters, UPDATE on dead_letters".
        missing: String,
    },
}

impl Error {
    /// Worth another attempt at the batch: no connection or no answer, or
    /// the server rolled the transaction back (class 40: deadlock,
    /// serialization failure), lost or refused the connection (08, 53) or
    /// is shutting down or cancelled the statement (57). Anything else (a
    /// missing table or privilege, a bug) would fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Pool(_) => true,
            Error::Db(e) => e
                .code()
                .is_none_or(|c| matches!(c.code().get(..2), Some("40" | "08" | "53" | "57"))),
            Error::Undecided(_) | Error::Privileges { .. } => false,
        }
    }
}

/// Which dead letters a run takes.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these reasons (empty: all).
    pub reasons: Vec<String>,
    /// Only those received at or after this time.
    pub since: Option<SystemTime>,
}

impl Filter {
    /// The reasons as a query parameter: `NULL` for all.
    fn reasons_param(&self) -> Option<&[String]> {
        (!self.reasons.is_empty()).then_some(&self.reasons[..])
    }
}

/// Resolves `--since` to a time, on the database's clock for a duration
/// (the clock that stamped `received_at`).
pub async fn resolve_since(
    client: &impl GenericClient,
    since: Since,
) -> Result<SystemTime, tokio_postgres::Error> {
    match since {
        Since::At(at) => Ok(at),
        Since::Ago(ago) => ago_on_server(client, ago).await,
    }
}

/// `now() - ago` on the database's clock.
pub async fn ago_on_server(
    client: &impl GenericClient,
    ago: std::time::Duration,
) -> Result<SystemTime, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            "SELECT now() - make_interval(secs => $1)",
            &[(&ago.as_secs_f64(), Type::FLOAT8)],
        )
        .await?;
    row.try_get(0)
}

/// Fails with [`Error::Privileges`] unless the connected role has every
/// `(table, privilege)` of `needs`.
pub async fn check_privileges(
    client: &impl GenericClient,
    command: &'static str,
    needs: &[(&str, &str)],
) -> Result<(), Error> {
    let tables: Vec<&str> = needs.iter().map(|n| n.0).collect();
    let privileges: Vec<&str> = needs.iter().map(|n| n.1).collect();
    let rows = client
        .query_typed(
            "SELECT current_user::text, p || ' on ' || t
             FROM unnest($1::text[], $2::text[]) AS x(t, p)
             WHERE NOT has_table_privilege(t, p)",
            &[(&tables, Type::TEXT_ARRAY), (&privileges, Type::TEXT_ARRAY)],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let missing: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    Err(Error::Privileges {
        command,
        role: first.get(0),
        missing: missing.join(", "),
    })
}
