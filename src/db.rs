//! The PostgreSQL connection pool and the schema migrations.

use crate::stages::write::sql::CREATE_STAGE_TABLE;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;

/// The schema, applied in order by [`migrate`]. Each file is idempotent.
pub const MIGRATIONS: &[(&str, &str)] =
    &[("0001_schema", include_str!("../migrations/0001_schema.sql"))];

/// How long to wait for a TCP connection to PostgreSQL when the URL does not
/// say: long enough for a busy server, short enough that a dead one is
/// noticed and reported (`/readyz`) promptly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A bad `DATABASE_URL` (its value is never printed: it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("DATABASE_URL is not a valid PostgreSQL connection string")]
pub struct BadUrl(#[source] tokio_postgres::Error);

/// Parses `DATABASE_URL`, filling in a connect timeout and application name.
pub fn config(url: &str) -> Result<tokio_postgres::Config, BadUrl> {
    let mut cfg = tokio_postgres::Config::from_str(url).map_err(BadUrl)?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("mini-scan");
    }
    Ok(cfg)
}

/// A pool of at most `size` connections. Connections are made lazily, so the
/// pool builds even while the database is down; each new connection creates
/// the write stage's temporary staging table once.
pub fn pool(cfg: tokio_postgres::Config, size: usize) -> Pool {
    let manager = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                client
                    .batch_execute(CREATE_STAGE_TABLE)
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .expect("a runtime and sizes are set, the only ways building can fail")
}

/// Applies every migration in one transaction, serialised across replicas by
/// an advisory lock, and records them in `schema_migrations`.
pub async fn migrate(
    cfg: &tokio_postgres::Config,
) -> Result<Vec<&'static str>, tokio_postgres::Error> {
    let (mut client, connection) = cfg.connect(NoTls).await?;
    let conn = tokio::spawn(connection);
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('mini-scan migrate'));
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version text PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        tx.batch_execute(sql).await?;
        let n = tx
            .execute(
                "INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING",
                &[version],
            )
            .await?;
        if n > 0 {
            applied.push(*version);
        }
    }
    tx.commit().await?;
    drop(client);
    let _ = conn.await;
    Ok(applied)
}
