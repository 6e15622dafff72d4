//! The integration-test harness: real PostgreSQL, the real Pub/Sub emulator and the real
//! `mini-scan` binary, never mocks.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`TestContext`], which gives one test its own freshly migrated database
//!   and its own topic and subscription; [`wait_until`]; the binary under test as a command.
//! - [`postgres`]: the PostgreSQL server the test binary shares (a throwaway cluster, or the
//!   server named by `DATABASE_URL`), a dedicated cluster that a test may stop and start, per-test
//!   databases and row queries.
//! - [`pubsub`]: the emulator an area's tests share (started by [`crate::provision`], or the one
//!   named by `PUBSUB_EMULATOR_HOST`) and a small REST client for topics, subscriptions, publish
//!   and pull, and for counting what is unacknowledged (snapshot and seek, which take nothing from
//!   the ingesters).
//! - [`dead_letters`]: dead letters and rows inserted as an older ingester left them, and
//!   `mini-scan dead-letters` as a child process.
//! - [`ingester`]: runs `mini-scan ingest` as a child process, sends it signals, waits for it and
//!   scrapes its `/metrics`.
//! - [`scans`]: builds scan messages (valid and malformed) and computes the table that a set of
//!   published scans must converge to.
//! - [`tls`]: certificates made at test time, and TLS switched on in a dedicated cluster.
//!
//! Servers start on first use: PostgreSQL once for the test binary, the emulator once per area
//! (see [`pubsub`] for why). Every test isolates itself with random database, topic and
//! subscription names, and a test that stops or restarts PostgreSQL does it on a
//! [`DedicatedPostgres`] of its own. When a server cannot be had, the test fails with a message
//! that says what to install or which variable to set: nothing is skipped.

pub mod dead_letters;
pub mod ingester;
pub mod postgres;
pub mod prometheus;
pub mod pubsub;
pub mod scans;
pub mod tls;

use std::collections::BTreeMap;
use std::panic::Location;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use crate::provision::{die_with_parent, free_port, random_name, tail};
pub use ingester::Ingester;
pub use postgres::{DedicatedPostgres, TestDb};
pub use pubsub::PubSub;
pub use scans::{Key, Scan};

/// The Pub/Sub project every test uses.
pub const PROJECT: &str = "test-project";

/// How often [`wait_until`] polls. Short enough that tests finish promptly, long enough that the
/// polling itself is no load on two cores.
const POLL_INTERVAL: Duration = Duration::from_millis(150);

/// One test's world: its own database on the shared (or a dedicated) PostgreSQL server, migrated by
/// the real binary, and its own topic and subscription on the shared emulator.
pub struct TestContext {
    pub db: TestDb,
    pub pubsub: PubSub,
    /// The short topic name (project `test-project`).
    pub topic: String,
    /// The short name of the subscription the ingesters read.
    pub subscription: String,
    /// Logs of the processes this test starts; printed when the test fails.
    scratch: TempDir,
}

impl TestContext {
    /// A context on the PostgreSQL server the test binary shares, with a topic on the emulator of
    /// the calling test's area (see [`pubsub`]).
    #[track_caller]
    pub fn new() -> impl Future<Output = Self> {
        let area = pubsub::area(Location::caller());
        async move {
            let db = TestDb::create_on_shared().await;
            Self::with_db(db, &area).await
        }
    }

    /// A context whose database lives on `pg`, a cluster this test may stop and start.
    #[track_caller]
    pub fn on_dedicated(pg: &DedicatedPostgres) -> impl Future<Output = Self> {
        let area = pubsub::area(Location::caller());
        async move {
            let db = TestDb::create_on(pg.admin_url()).await;
            Self::with_db(db, &area).await
        }
    }

    async fn with_db(db: TestDb, area: &str) -> Self {
        db.migrate().await;
        let pubsub = PubSub::of_area(area);
        let topic = random_name("topic");
        let subscription = random_name("sub");
        pubsub.create_topic(&topic).await;
        pubsub.create_subscription(&subscription, &topic).await;
        let scratch = tempfile::Builder::new()
            .prefix("miniscan-test-")
            .tempdir()
            .expect("create a scratch directory for process logs");
        Self {
            db,
            pubsub,
            topic,
            subscription,
            scratch,
        }
    }

    /// Publishes raw payloads to this test's topic, in order, and returns their message ids.
    pub async fn publish(&self, payloads: &[Vec<u8>]) -> Vec<String> {
        self.pubsub.publish(&self.topic, payloads).await
    }

    /// Creates another subscription on this test's topic, to observe what was published
    /// (message ids, publish times) without taking messages from the ingesters.
    pub async fn tap(&self) -> String {
        let name = random_name("tap");
        self.pubsub.create_subscription(&name, &self.topic).await;
        name
    }

    /// How many messages are not acknowledged on this test's subscription, counting those leased
    /// to an ingester right now. Exact, and takes nothing from the ingesters (see
    /// [`PubSub::unacked`]); meant for the end of a test, once the ingesters have stopped.
    pub async fn remaining_messages(&self) -> usize {
        self.pubsub
            .unacked(&self.subscription, &self.topic)
            .await
            .len()
    }

    /// After killing an ingester: moves this test's unacknowledged messages to a fresh
    /// subscription, which the next ingester reads (see [`PubSub::replace_subscription`] for why).
    pub async fn replace_subscription(&mut self) {
        self.subscription = self
            .pubsub
            .replace_subscription(&self.subscription, &self.topic)
            .await;
    }

    /// Starts `mini-scan ingest` on this test's database and subscription, with `extra` settings
    /// (e.g. `MINISCAN_BATCH_MAX_ROWS`), and waits until it reports ready.
    pub async fn start_ingester(&self, extra: &[(&str, &str)]) -> Ingester {
        let mut env = vec![
            ("DATABASE_URL".to_owned(), self.db.url.clone()),
            ("PUBSUB_EMULATOR_HOST".to_owned(), self.pubsub.host.clone()),
            ("PUBSUB_PROJECT_ID".to_owned(), PROJECT.to_owned()),
            (
                "MINISCAN_SUBSCRIPTION".to_owned(),
                self.subscription.clone(),
            ),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Ingester::start(self.scratch.path(), &env).await
    }

    /// Runs `mini-scan scan --topic <this test's topic> --rate R --count N` to completion.
    pub async fn run_scan(&self, rate: u32, count: u32) -> std::process::Output {
        let mut cmd = binary_command();
        cmd.args(["scan", "--topic", &self.topic])
            .args(["--rate", &rate.to_string(), "--count", &count.to_string()])
            .env("PUBSUB_EMULATOR_HOST", &self.pubsub.host)
            .env("PUBSUB_PROJECT_ID", PROJECT)
            .env("MINISCAN_TOPIC", &self.topic);
        run_to_completion(cmd, Duration::from_secs(120), "mini-scan scan").await
    }

    /// The stored table as `key -> (last_scanned, exact response bytes)`.
    pub async fn table(&self) -> BTreeMap<Key, (i64, Vec<u8>)> {
        self.db.table().await
    }
}

/// The path of the binary under test. `option_env!` rather than `env!` so that the harness itself
/// compiles (and its smoke tests run) before the crate has a binary target.
pub fn binary_path() -> &'static str {
    option_env!("CARGO_BIN_EXE_mini-scan").unwrap_or_else(|| {
        panic!(
            "the crate has no `mini-scan` binary target (src/main.rs) yet: \
             the end-to-end tests run the real binary"
        )
    })
}

/// A command for the binary under test, with an environment free of settings inherited from the
/// developer's shell that could point it at another server, and that dies with the test binary.
pub fn binary_command() -> tokio::process::Command {
    let mut cmd = Command::new(binary_path());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("MINISCAN_")
            || key.starts_with("PUBSUB_")
            || key.starts_with("GOOGLE_")
            || key.starts_with("PG")
            || key.starts_with("OTEL_")
            || key == "DATABASE_URL"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    die_with_parent(&mut cmd, None);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `cmd` with its output captured, fails the test if it does not exit 0 within `timeout`.
pub async fn run_to_completion(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    what: &str,
) -> std::process::Output {
    cmd.stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`{what}` did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    assert!(
        output.status.success(),
        "`{what}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

/// What a [`wait_until`] condition reports: `true`/`Ok(())` when met, otherwise `false` or a
/// description of the current state for the failure message.
pub trait Condition {
    fn into_result(self) -> Result<(), String>;
}

impl Condition for bool {
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    }
}

impl Condition for Result<(), String> {
    fn into_result(self) -> Result<(), String> {
        self
    }
}

/// Polls `check` until it holds, and fails the test with `what` and the last observed state if it
/// does not hold within `timeout`. The services are real and reached over the network, so polling
/// with a deadline is the synchronisation; never a bare sleep.
pub async fn wait_until<C: Condition>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> C,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await.into_result() {
            Ok(()) => return,
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
