//! Migrations that run once.
//!
//! [refinery](https://docs.rs/refinery) applies each migration exactly once,
//! in version order, each in its own transaction together with its row in
//! `refinery_schema_history` (version, name, checksum); re-running is a
//! no-op, and a migration whose SQL changed after it was applied stops
//! everything (`abort_divergent`), as does one applied but unknown to this
//! binary (`abort_missing`). What refinery lacks is serialising concurrent
//! runs (replicas starting together, a retried Kubernetes Job): two runs
//! would both see a migration as pending and both apply it. So the whole run
//! holds a session advisory lock on its connection; a second run waits, then
//! finds nothing to do and exits 0. The lock's key is the one earlier
//! versions took, so an old and a new binary serialise too.
//!
//! Databases migrated by earlier versions (a `schema_migrations(version,
//! applied_at)` table listing `0001_schema`) need no manual step: `V1__schema`
//! is the same SQL and idempotent, so it runs once more and is recorded.
//! The old table is left alone and no longer read.

use super::{Config, ConnectError, connect};
use crate::error::Chain;

/// The schema, in order: (refinery name `V<version>__<name>`, SQL). Never
/// edit one once released: add a new one.
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "V1__schema",
    include_str!("../../migrations/V1__schema.sql"),
)];

/// The lock every `migrate` holds while it runs (the same key as before).
const LOCK: &str = "SELECT pg_advisory_lock(hashtext('mini-scan migrate'))";

/// One migration: its name `V<version>__<name>` and its SQL.
#[derive(Clone, Debug)]
pub struct Migration {
    name: String,
    sql: String,
}

impl Migration {
    /// A migration named `V<version>__<name>` (e.g. `V2__add_index`).
    pub fn new(name: impl Into<String>, sql: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            sql: sql.into(),
        }
    }
}

/// This binary's migrations, for [`migrate_with`] (tests add their own).
pub fn migrations() -> Vec<Migration> {
    MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::new(*name, *sql))
        .collect()
}

/// Why `migrate` failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Taking the lock or talking to the database failed.
    #[error("{0}")]
    Database(&'static str, #[source] tokio_postgres::Error),
    /// An applied migration's SQL differs from this binary's.
    #[error(
        "migration {0} has changed since it was applied (its checksum differs); restore its original SQL and put the change in a new migration"
    )]
    Changed(String),
    /// A migration is recorded as applied but this binary does not have it,
    /// or one older than the newest applied was never applied.
    #[error(
        "migration {0} does not match the applied history (missing from this binary, or older than the newest applied one); is this binary older than the database?"
    )]
    Missing(String),
    /// A migration failed; the message names it and the database's error.
    /// Nothing of that migration was committed.
    #[error("{0}")]
    Apply(String),
    /// Granting the ingest role failed (after the migrations committed).
    #[error(transparent)]
    Grant(#[from] super::GrantError),
    /// Anything else refinery reports (e.g. a badly named migration).
    #[error("{0}")]
    Refinery(String),
}

/// Applies this binary's [`MIGRATIONS`]; returns the names applied now.
pub async fn migrate(cfg: &Config) -> Result<Vec<String>, MigrateError> {
    migrate_with(cfg, &migrations(), None).await
}

/// Applies `migrations` as described in the module docs, then, if
/// `grant_ingest_to` names a role, grants it what ingesting needs
/// ([`super::grants`]), all under the advisory lock. Returns the names of
/// the migrations applied now.
pub async fn migrate_with(
    cfg: &Config,
    migrations: &[Migration],
    grant_ingest_to: Option<&str>,
) -> Result<Vec<String>, MigrateError> {
    let runner = runner(migrations)?;
    let (mut client, conn) = connect(cfg).await?;
    client
        .batch_execute(LOCK)
        .await
        .map_err(|e| MigrateError::Database("cannot take the migration lock", e))?;
    let report = runner.run_async(&mut client).await.map_err(from_refinery)?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(ToString::to_string)
        .collect();
    if let Some(role) = grant_ingest_to {
        super::grants::grant_ingest(&mut client, role).await?;
    }
    // Ending the session releases the lock.
    drop(client);
    let _ = conn.await;
    Ok(applied)
}

fn runner(migrations: &[Migration]) -> Result<refinery::Runner, MigrateError> {
    let parsed = migrations
        .iter()
        .map(|m| refinery::Migration::unapplied(&m.name, &m.sql))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MigrateError::Refinery(e.to_string()))?;
    Ok(refinery::Runner::new(&parsed)
        .set_grouped(false)
        .set_abort_divergent(true)
        .set_abort_missing(true))
}

fn from_refinery(e: refinery::Error) -> MigrateError {
    use refinery::error::Kind;
    match e.kind() {
        Kind::DivergentVersion(applied, _) => MigrateError::Changed(applied.to_string()),
        Kind::MissingVersion(m) => MigrateError::Missing(m.to_string()),
        // refinery's text names the migration ("error applying migration
        // V2__x"); the database error follows.
        Kind::Connection(what, source) => {
            MigrateError::Apply(format!("{what}: {}", Chain(&**source)))
        }
        _ => MigrateError::Refinery(e.to_string()),
    }
}
