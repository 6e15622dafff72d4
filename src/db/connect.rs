//! The one way to connect, which `migrate`, the pool (`ingest`) and so
//! `/readyz` share, and why a connection failed, on one line.

use super::{CONNECT_TIMEOUT, Config, SslMode, tls};
use crate::error::Chain;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use std::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// A connection could not be made. One line naming `sslmode` and the cause
/// when TLS is why; never the password.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.headline())]
pub struct ConnectError {
    mode: SslMode,
    roots: Option<tls::Roots>,
    /// Set when TLS is why.
    tls: Option<tls::TlsFailure>,
    #[source]
    source: tokio_postgres::Error,
}

impl ConnectError {
    /// Why, when TLS is why.
    pub fn tls_failure(&self) -> Option<&tls::TlsFailure> {
        self.tls.as_ref()
    }

    /// The underlying tokio-postgres error.
    pub fn into_source(self) -> tokio_postgres::Error {
        self.source
    }

    fn headline(&self) -> String {
        let mode = self.mode;
        let roots = self
            .roots
            .as_ref()
            .map_or_else(|| "sslrootcert".to_owned(), ToString::to_string);
        match &self.tls {
            None => "cannot connect to PostgreSQL".to_owned(),
            Some(tls::TlsFailure::UnknownCa) => format!(
                "cannot connect to PostgreSQL with sslmode={mode}: unknown CA: the server's certificate is not signed by a CA in {roots}"
            ),
            Some(tls::TlsFailure::HostMismatch(host)) => format!(
                "cannot connect to PostgreSQL with sslmode={mode}: host name mismatch: the server's certificate is not valid for \"{host}\""
            ),
            Some(tls::TlsFailure::ServerRefusedTls) => format!(
                "cannot connect to PostgreSQL with sslmode={mode}: the server does not support TLS"
            ),
            Some(tls::TlsFailure::Handshake) => {
                format!("cannot connect to PostgreSQL with sslmode={mode}: TLS handshake failed")
            }
        }
    }
}

/// Connects, over TLS as configured, and drives the connection on a task
/// (returned, so the caller can wait for it to end). With `sslmode=prefer`,
/// a failed TLS handshake is retried in plaintext, as libpq does.
pub async fn connect(cfg: &Config) -> Result<(Client, JoinHandle<()>), ConnectError> {
    let Some(tls) = &cfg.tls else {
        return plain(&cfg.pg).await.map_err(|source| ConnectError {
            mode: SslMode::Disable,
            roots: None,
            tls: None,
            source,
        });
    };
    let tracked = tls::Tracked::new(tls.connector.clone());
    let err = match cfg.pg.connect(tracked.clone()).await {
        Ok((client, conn)) => return Ok((client, spawn_connection(conn))),
        Err(e) => e,
    };
    let handshake = tracked.handshake_host();
    if tls.plan.mode == SslMode::Prefer && handshake.is_some() {
        let mut pg = cfg.pg.clone();
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Ok(ok) = plain(&pg).await {
            return Ok(ok);
        }
    }
    Err(ConnectError {
        mode: tls.plan.mode,
        roots: tls.plan.roots.clone(),
        tls: tls::classify(tls.plan.mode, &err, handshake),
        source: err,
    })
}

async fn plain(
    pg: &tokio_postgres::Config,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, conn) = pg.connect(NoTls).await?;
    Ok((client, spawn_connection(conn)))
}

fn spawn_connection<F>(conn: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %Chain(&e), "PostgreSQL connection ended");
        }
    })
}

/// The pool's way to connect: [`connect`], logging why a connection failed
/// once per change of reason (the pool retries every second while the
/// database is down, and each failure also shows in `/readyz`).
struct PoolConnect {
    cfg: Config,
    last_error: Mutex<Option<String>>,
}

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        Box::pin(async move {
            let result = connect(&self.cfg).await;
            let line = result.as_ref().err().map(|e| Chain(e).to_string());
            let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
            if line != *last {
                match &line {
                    Some(line) => tracing::warn!(error = %line, "PostgreSQL is unreachable"),
                    None if last.is_some() => tracing::info!("PostgreSQL is reachable again"),
                    None => {}
                }
                *last = line;
            }
            result.map_err(ConnectError::into_source)
        })
    }
}

/// A pool of at most `size` connections, made by [`connect`]. Connections
/// are made lazily, so the pool builds even while the database is down.
/// A connection holds no session state the write stage relies on (it makes
/// its staging table in each transaction), so the URL may name a
/// transaction-mode pooler.
pub fn pool(cfg: Config, size: usize) -> Pool {
    let manager = Manager::from_connect(
        cfg.pg.clone(),
        PoolConnect {
            cfg,
            last_error: Mutex::new(None),
        },
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
        .build()
        .expect("a runtime and sizes are set, the only ways building can fail")
}
