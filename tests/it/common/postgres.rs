//! PostgreSQL for the tests: the server the test binary shares, a dedicated cluster a test may stop
//! and start, per-test databases, and queries on the tables the ingester writes.
//!
//! The shared server is the one named by `DATABASE_URL` in the test run's environment, if set;
//! otherwise a throwaway [`Cluster`] (see [`crate::provision`]: PostgreSQL 15, or the bin directory
//! named by `MINISCAN_TEST_PG_BINDIR`), started once for the test binary and stopped when it exits.
//! Each server's version is printed once, to stderr.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_postgres::Client;

use super::{Key, binary_command};
use crate::provision::{self, Cluster, PgOptions, Purpose};

pub use crate::provision::connect;

/// The URL of the shared server's `postgres` database, from which test databases are created.
fn shared_admin_url() -> &'static str {
    static SHARED: OnceLock<Result<String, provision::Error>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(url);
        }
        let cluster = Cluster::create(PgOptions::for_tests())?;
        let url = cluster.admin_url();
        provision::keep_until_exit(cluster);
        Ok(url)
    });
    match shared {
        Ok(url) => url,
        Err(e) => panic!("{e}"),
    }
}

/// A PostgreSQL cluster owned by one test, which may stop and start it (on the same port and data
/// directory) without disturbing the other tests. Dropping it stops the server.
pub struct DedicatedPostgres {
    cluster: Arc<Cluster>,
}

impl DedicatedPostgres {
    /// Creates and starts a cluster for the tests in a new temporary directory on a free port.
    pub async fn start_new() -> Self {
        Self::start_with(PgOptions::for_tests()).await
    }

    /// Creates and starts a cluster configured by `options` (e.g. TLS, another version).
    pub async fn start_with(options: PgOptions) -> Self {
        let cluster = Self::blocking(
            move || Cluster::create(options),
            "start a dedicated cluster",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        Self {
            cluster: Arc::new(cluster),
        }
    }

    /// The URL of the cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        self.cluster.admin_url()
    }

    /// The cluster itself (its port, data directory, log).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Fast shutdown (SIGINT: active transactions are rolled back, clients disconnected); returns
    /// once the server has exited.
    pub async fn stop(&self) {
        let cluster = self.cluster.clone();
        Self::blocking(move || cluster.stop(), "stop the dedicated cluster")
            .await
            .unwrap_or_else(|e| panic!("stopping the dedicated PostgreSQL failed: {e}"));
    }

    /// Starts the server again on the same port and data directory; returns once it accepts
    /// connections.
    pub async fn start(&self) {
        let cluster = self.cluster.clone();
        Self::blocking(move || cluster.start(), "restart the dedicated cluster")
            .await
            .unwrap_or_else(|e| panic!("restarting the dedicated PostgreSQL failed: {e}"));
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static, what: &str) -> T {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| panic!("the thread to {what} failed: {e}"))
    }
}

/// One test's database: created with a random name, migrated by `mini-scan migrate`.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

/// One row of `scan_results`, with the columns the tests compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `host(ip)`: the canonical text of the address.
    pub ip: String,
    pub port: i32,
    pub service: String,
    /// Unix seconds.
    pub last_scanned: i64,
    pub response: String,
    pub response_raw: Option<Vec<u8>>,
    /// `coalesce(response_raw, convert_to(response, 'UTF8'))`: the exact response bytes.
    pub bytes: Vec<u8>,
    /// Unix microseconds.
    pub published_at_us: i64,
    pub message_id: String,
}

impl Row {
    pub fn key(&self) -> Key {
        (self.ip.clone(), self.port, self.service.clone())
    }
}

/// One row of `dead_letters`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub message_id: String,
    pub reason: String,
    pub detail: String,
    pub payload: Vec<u8>,
}

impl TestDb {
    /// A new database on the shared server.
    pub async fn create_on_shared() -> Self {
        Self::create_on(shared_admin_url().to_owned()).await
    }

    /// A new database on the server whose `postgres` database is at `admin_url`.
    pub async fn create_on(admin_url: String) -> Self {
        let db = provision::create_database(&admin_url, Purpose::Tests)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            name: db.name,
            url: db.url,
        }
    }

    /// Applies the schema the way an operator does: `mini-scan migrate`.
    pub async fn migrate(&self) {
        let mut cmd = binary_command();
        cmd.arg("migrate").env("DATABASE_URL", &self.url);
        super::run_to_completion(cmd, Duration::from_secs(60), "mini-scan migrate").await;
    }

    pub async fn client(&self) -> Client {
        connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test database {}: {e}", self.name))
    }

    /// Every row of `scan_results`, ordered by key.
    pub async fn rows(&self) -> Vec<Row> {
        let client = self.client().await;
        let rows = client
            .query(
                "SELECT host(ip), port, service, \
                        extract(epoch FROM last_scanned)::bigint, \
                        response, response_raw, \
                        coalesce(response_raw, convert_to(response, 'UTF8')), \
                        (extract(epoch FROM published_at) * 1000000)::bigint, \
                        message_id \
                 FROM scan_results ORDER BY ip, port, service",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("querying scan_results failed: {e}"));
        rows.iter()
            .map(|r| Row {
                ip: r.get(0),
                port: r.get(1),
                service: r.get(2),
                last_scanned: r.get(3),
                response: r.get(4),
                response_raw: r.get(5),
                bytes: r.get(6),
                published_at_us: r.get(7),
                message_id: r.get(8),
            })
            .collect()
    }

    /// The stored table as `key -> (last_scanned, exact response bytes)`, the form
    /// [`super::scans::expected_table`] computes.
    pub async fn table(&self) -> BTreeMap<Key, (i64, Vec<u8>)> {
        self.rows()
            .await
            .into_iter()
            .map(|r| (r.key(), (r.last_scanned, r.bytes)))
            .collect()
    }

    pub async fn count_rows(&self) -> i64 {
        self.count("SELECT count(*) FROM scan_results").await
    }

    pub async fn count_dead_letters(&self) -> i64 {
        self.count("SELECT count(*) FROM dead_letters").await
    }

    async fn count(&self, sql: &str) -> i64 {
        let client = self.client().await;
        client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
            .get(0)
    }

    /// Asserts that `dead_letters` holds exactly one row: `payload`, rejected by the database
    /// with SQLSTATE 54000 (see [`super::scans::unindexable_scan`]).
    pub async fn assert_only_dead_letter_is_rejected(&self, payload: &[u8]) {
        let dead = self.dead_letters().await;
        assert_eq!(dead.len(), 1, "{dead:#?}");
        assert_eq!(dead[0].reason, "rejected_by_database");
        assert!(dead[0].detail.starts_with("54000"), "{}", dead[0].detail);
        assert_eq!(
            dead[0].payload, payload,
            "the dead letter keeps the exact payload"
        );
    }

    /// Every row of `dead_letters`, ordered by message id.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let client = self.client().await;
        client
            .query(
                "SELECT message_id, reason, detail, payload FROM dead_letters ORDER BY message_id",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("querying dead_letters failed: {e}"))
            .iter()
            .map(|r| DeadLetter {
                message_id: r.get(0),
                reason: r.get(1),
                detail: r.get(2),
                payload: r.get(3),
            })
            .collect()
    }
}
