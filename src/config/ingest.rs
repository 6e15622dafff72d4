//! The settings of `mini-scan ingest`: the flags ([`IngestArgs`]), their
//! [`defaults`], and [`IngestConfig`], the plain validated configuration the
//! `Ingester` is built from.
//!
//! clap checks each value's range; `IngestConfig::try_from(args)` checks the
//! rest once (names, relations between settings, `DATABASE_URL`) and converts
//! to the types the code uses (`Duration`, `usize`, a parsed connection
//! config). Benches and tests skip the command line: they start from
//! [`IngestConfig::new`], which has the same defaults, and change fields.

use super::{BadSetting, DatabaseArgs, PubsubArgs};
use crate::pubsub::PubsubConfig;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

/// The defaults of `mini-scan ingest`, used by both its flags and
/// [`IngestConfig::new`], so the two cannot drift apart.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    /// The subscription `mini-scan setup` creates by default.
    pub const SUBSCRIPTION: &str = "scan-sub";
    /// All interfaces, so that Prometheus can scrape the ingester in a
    /// container.
    pub const METRICS_ADDR: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9000));
    /// Messages per transaction: the batch size the write strategies in
    /// docs/benchmarks.md (write) were measured at.
    pub const BATCH_MAX_ROWS: u32 = 1000;
    /// A trickle of messages is still committed within a tenth of a second.
    pub const BATCH_MAX_WAIT_MS: u64 = 100;
    /// With [`WRITE_PARTITIONS`], the fastest write-stage setting measured on
    /// two cores (docs/benchmarks.md, write).
    pub const WRITE_CONCURRENCY: u32 = 2;
    /// Disjoint key partitions were the one write lever that scaled
    /// (docs/benchmarks.md, write).
    pub const WRITE_PARTITIONS: u32 = 2;
    /// One connection per concurrent transaction: write concurrency × write
    /// partitions.
    pub const DB_POOL_SIZE: u32 = WRITE_CONCURRENCY * WRITE_PARTITIONS;
    /// Several streams side by side, because the emulator and the service
    /// both cap what one stream delivers. More, smaller streams drained a
    /// backlog as fast as the best null consumer where fewer, larger ones
    /// fell behind: the measurements are in
    /// docs/decisions/0004-16-streams-of-500.md
    /// (figures live there, with their commands, rather than here, where
    /// they would go stale).
    pub const STREAMS: u32 = 16;
    /// Per stream; with the streams, bounds the messages held in memory
    /// ([`STREAMS`] times this: the same window as before the streams were
    /// split, see docs/decisions/0004-16-streams-of-500.md).
    pub const MAX_OUTSTANDING_MESSAGES: u32 = 500;
    /// Per stream: 5 MiB, so 16 streams keep the former 80 MiB window.
    pub const MAX_OUTSTANDING_BYTES: u64 = 5 * 1024 * 1024;
    /// About 40 MB of keys at about 200 bytes each.
    pub const CACHE_CAPACITY: u64 = 200_000;
    /// A database back from an outage is written to within 5 s.
    pub const RETRY_MAX_MS: u64 = 5_000;
    /// A subscription created after the ingester started is read within 5 s.
    pub const REOPEN_MAX_MS: u64 = 5_000;
    /// Shorter than docker-compose.yml's `stop_grace_period` (40 s), so the
    /// ingester nacks what it could not commit before it is killed.
    pub const SHUTDOWN_GRACE_SECS: u64 = 30;
}

/// `mini-scan ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pubsub: PubsubArgs,
    /// Subscription to pull: a short name or projects/P/subscriptions/S.
    #[arg(long, env = "MINISCAN_SUBSCRIPTION", default_value = defaults::SUBSCRIPTION)]
    pub subscription: String,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "MINISCAN_METRICS_ADDR", default_value_t = defaults::METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Most messages written in one transaction.
    #[arg(long, env = "MINISCAN_BATCH_MAX_ROWS", default_value_t = defaults::BATCH_MAX_ROWS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max_rows: u32,
    /// Longest a message waits for its batch to fill, in milliseconds.
    #[arg(long, env = "MINISCAN_BATCH_MAX_WAIT_MS", default_value_t = defaults::BATCH_MAX_WAIT_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub batch_max_wait_ms: u64,
    /// Batches written concurrently (each on its own connection).
    #[arg(long, env = "MINISCAN_WRITE_CONCURRENCY", default_value_t = defaults::WRITE_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub write_concurrency: u32,
    /// Disjoint key partitions each batch is split into and committed
    /// concurrently (a partition gets at least 256 rows).
    #[arg(long, env = "MINISCAN_WRITE_PARTITIONS", default_value_t = defaults::WRITE_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub write_partitions: u32,
    /// PostgreSQL connections in the pool; at least write concurrency × write
    /// partitions.
    #[arg(long, env = "MINISCAN_DB_POOL_SIZE", default_value_t = defaults::DB_POOL_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_pool_size: u32,
    /// Streaming-pull streams run side by side.
    #[arg(long, env = "MINISCAN_STREAMS", default_value_t = defaults::STREAMS,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
    /// Flow control: unacked messages per stream before Pub/Sub pauses.
    #[arg(long, env = "MINISCAN_MAX_OUTSTANDING_MESSAGES",
          default_value_t = defaults::MAX_OUTSTANDING_MESSAGES,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_outstanding_messages: u32,
    /// Flow control: unacked bytes per stream before Pub/Sub pauses.
    #[arg(long, env = "MINISCAN_MAX_OUTSTANDING_BYTES",
          default_value_t = defaults::MAX_OUTSTANDING_BYTES,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_outstanding_bytes: u64,
    /// Keys the dedup cache remembers (0 disables it). About 200 bytes each.
    #[arg(long, env = "MINISCAN_CACHE_CAPACITY", default_value_t = defaults::CACHE_CAPACITY)]
    pub cache_capacity: u64,
    /// Longest delay between database retries (while the database is
    /// unreachable or a transaction fails transiently), in milliseconds.
    #[arg(long, env = "MINISCAN_RETRY_MAX_MS", default_value_t = defaults::RETRY_MAX_MS,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub retry_max_ms: u64,
    /// Longest delay before reopening a failed streaming pull (for example,
    /// while the subscription does not exist), in milliseconds.
    #[arg(long, env = "MINISCAN_REOPEN_MAX_MS", default_value_t = defaults::REOPEN_MAX_MS,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub reopen_max_ms: u64,
    /// On SIGTERM, how long to keep trying to commit what was received before
    /// giving it back to Pub/Sub (nack), in seconds.
    #[arg(long, env = "MINISCAN_SHUTDOWN_GRACE_SECS", default_value_t = defaults::SHUTDOWN_GRACE_SECS,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,
}

/// Everything the ingester needs, validated: no clap types, units in the
/// types. Each field is the setting of the same name in [`IngestArgs`].
///
/// The fields are public so that benches and tests can start from
/// [`IngestConfig::new`] and change what they need; they then answer for the
/// relations `try_from` checks (`db_pool_size` ≥ `write_concurrency` ×
/// `write_partitions`; every count ≥ 1).
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// The database, parsed from `DATABASE_URL` by [`crate::db::config`]
    /// (its `Debug` hides the password).
    pub database: crate::db::Config,
    /// Where Pub/Sub is.
    pub pubsub: PubsubConfig,
    /// The subscription's full name, `projects/P/subscriptions/S`.
    pub subscription: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; port 0 picks a
    /// free port (`Ingester::metrics_addr`).
    pub metrics_addr: SocketAddr,
    /// Most messages written in one transaction.
    pub batch_max_rows: usize,
    /// Longest a message waits for its batch to fill.
    pub batch_max_wait: Duration,
    /// Batches written concurrently.
    pub write_concurrency: usize,
    /// Disjoint key partitions per batch, committed concurrently.
    pub write_partitions: usize,
    /// PostgreSQL connections in the pool.
    pub db_pool_size: usize,
    /// Streaming-pull streams.
    pub streams: usize,
    /// Unacked messages per stream before Pub/Sub pauses.
    pub max_outstanding_messages: usize,
    /// Unacked bytes per stream before Pub/Sub pauses.
    pub max_outstanding_bytes: usize,
    /// Keys the dedup cache remembers (0 disables it).
    pub cache_capacity: u64,
    /// Longest delay between database retries.
    pub retry_max: Duration,
    /// Longest delay before reopening a failed streaming pull.
    pub reopen_max: Duration,
    /// How long a shutdown keeps trying to commit before nacking.
    pub shutdown_grace: Duration,
}

impl IngestConfig {
    /// The configuration `mini-scan ingest` has when only the database and
    /// Pub/Sub are given: every other setting at its default.
    pub fn new(database: crate::db::Config, pubsub: PubsubConfig) -> Self {
        use defaults as d;
        let subscription = pubsub.subscription_path(d::SUBSCRIPTION);
        Self {
            database,
            pubsub,
            subscription,
            metrics_addr: d::METRICS_ADDR,
            batch_max_rows: d::BATCH_MAX_ROWS as usize,
            batch_max_wait: Duration::from_millis(d::BATCH_MAX_WAIT_MS),
            write_concurrency: d::WRITE_CONCURRENCY as usize,
            write_partitions: d::WRITE_PARTITIONS as usize,
            db_pool_size: d::DB_POOL_SIZE as usize,
            streams: d::STREAMS as usize,
            max_outstanding_messages: d::MAX_OUTSTANDING_MESSAGES as usize,
            max_outstanding_bytes: d::MAX_OUTSTANDING_BYTES as usize,
            cache_capacity: d::CACHE_CAPACITY,
            retry_max: Duration::from_millis(d::RETRY_MAX_MS),
            reopen_max: Duration::from_millis(d::REOPEN_MAX_MS),
            shutdown_grace: Duration::from_secs(d::SHUTDOWN_GRACE_SECS),
        }
    }
}

impl TryFrom<IngestArgs> for IngestConfig {
    type Error = BadSetting;

    /// Checks what clap cannot (the subscription's name, the pool against
    /// the concurrency, `DATABASE_URL`) and converts. The first bad setting
    /// is the error, one line naming its flag and env var.
    fn try_from(a: IngestArgs) -> Result<Self, BadSetting> {
        crate::pubsub::validate_name("subscriptions", &a.subscription)
            .map_err(|why| BadSetting::new("subscription", "MINISCAN_SUBSCRIPTION", why))?;
        let needed = a.write_concurrency * a.write_partitions;
        if a.db_pool_size < needed {
            return Err(BadSetting::new(
                "db-pool-size",
                "MINISCAN_DB_POOL_SIZE",
                format!(
                    "{} is less than write concurrency × write partitions ({needed}); each concurrent transaction needs a connection",
                    a.db_pool_size
                ),
            ));
        }
        // The value is never shown: it may hold a password.
        let database = crate::db::config(&a.db.database_url).map_err(|e| {
            let cause = std::error::Error::source(&e).map(crate::error::Chain);
            BadSetting::new(
                "database-url",
                "DATABASE_URL",
                match cause {
                    Some(cause) => format!("not a PostgreSQL connection string ({cause})"),
                    None => "not a PostgreSQL connection string".to_owned(),
                },
            )
        })?;
        let pubsub = a.pubsub.config();
        Ok(Self {
            subscription: pubsub.subscription_path(&a.subscription),
            pubsub,
            database,
            metrics_addr: a.metrics_addr,
            batch_max_rows: a.batch_max_rows as usize,
            batch_max_wait: Duration::from_millis(a.batch_max_wait_ms),
            write_concurrency: a.write_concurrency as usize,
            write_partitions: a.write_partitions as usize,
            db_pool_size: a.db_pool_size as usize,
            streams: a.streams as usize,
            max_outstanding_messages: a.max_outstanding_messages as usize,
            max_outstanding_bytes: usize::try_from(a.max_outstanding_bytes).unwrap_or(usize::MAX),
            cache_capacity: a.cache_capacity,
            retry_max: Duration::from_millis(a.retry_max_ms),
            reopen_max: Duration::from_millis(a.reopen_max_ms),
            shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::{CommandFactory, FromArgMatches};

    /// Holds a password, which no error may repeat.
    const URL: &str = "postgres://scanner:hunter2@db.example:5432/scans";

    /// `mini-scan ingest --database-url URL <extra>`, ignoring the env vars
    /// of whoever runs the tests.
    fn parse(extra: &[&str]) -> Result<IngestArgs, clap::Error> {
        let cmd = Cli::command().mut_subcommand("ingest", |c| c.mut_args(|a| a.env(None)));
        let mut argv = vec!["mini-scan", "ingest", "--database-url", URL];
        argv.extend(extra);
        let matches = cmd.try_get_matches_from(argv)?;
        let (_, sub) = matches.subcommand().expect("a subcommand");
        IngestArgs::from_arg_matches(sub)
    }

    fn config(extra: &[&str]) -> Result<IngestConfig, BadSetting> {
        IngestConfig::try_from(parse(extra).expect("clap accepts it"))
    }

    /// The error as the user sees it, checked to be one line naming `flag`
    /// and `env` and never the database password.
    fn rejected(extra: &[&str], flag: &str, env: &str) -> String {
        let line = config(extra).expect_err("rejected").to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
        let prefix = format!("invalid --{flag} (env {env}): ");
        assert!(line.starts_with(&prefix), "{line}");
        line
    }

    #[test]
    fn new_has_the_command_lines_defaults() {
        let args = parse(&[]).unwrap();
        let pubsub = args.pubsub.config();
        let parsed = IngestConfig::try_from(args).unwrap();
        let new = IngestConfig::new(crate::db::config(URL).unwrap(), pubsub);
        assert_eq!(format!("{new:?}"), format!("{parsed:?}"));
        assert_eq!(
            new.subscription,
            "projects/test-project/subscriptions/scan-sub"
        );
        assert_eq!(new.metrics_addr.to_string(), "0.0.0.0:9000");
    }

    #[test]
    fn every_flag_reaches_its_field_in_its_unit() {
        let c = config(&[
            "--project-id=p9",
            "--subscription=sub-a",
            "--metrics-addr=127.0.0.1:0",
            "--batch-max-rows=7",
            "--batch-max-wait-ms=250",
            "--write-concurrency=3",
            "--write-partitions=4",
            "--db-pool-size=12",
            "--streams=5",
            "--max-outstanding-messages=11",
            "--max-outstanding-bytes=4096",
            "--cache-capacity=0",
            "--retry-max-ms=700",
            "--reopen-max-ms=900",
            "--shutdown-grace-secs=7",
        ])
        .unwrap();
        assert_eq!(c.subscription, "projects/p9/subscriptions/sub-a");
        assert_eq!(c.pubsub.project, "p9");
        assert_eq!(c.metrics_addr.port(), 0);
        assert_eq!(
            (c.batch_max_rows, c.batch_max_wait),
            (7, Duration::from_millis(250))
        );
        assert_eq!(
            (c.write_concurrency, c.write_partitions, c.db_pool_size),
            (3, 4, 12)
        );
        assert_eq!((c.streams, c.max_outstanding_messages), (5, 11));
        assert_eq!((c.max_outstanding_bytes, c.cache_capacity), (4096, 0));
        // Two settings, two meanings: the database retry and the stream reopen.
        assert_eq!(c.retry_max, Duration::from_millis(700));
        assert_eq!(c.reopen_max, Duration::from_millis(900));
        assert_eq!(c.shutdown_grace, Duration::from_secs(7));
        assert_eq!(c.database.get_dbname(), Some("scans"));
    }

    #[test]
    fn a_pool_smaller_than_the_concurrent_transactions_is_rejected() {
        let line = rejected(
            &["--write-concurrency=4", "--db-pool-size=2"],
            "db-pool-size",
            "MINISCAN_DB_POOL_SIZE",
        );
        assert!(line.contains("(8)"), "{line}");
        // The default pool (4) is too small for 3 partitions × 2 in flight.
        rejected(
            &["--write-partitions=3"],
            "db-pool-size",
            "MINISCAN_DB_POOL_SIZE",
        );
        assert!(config(&["--write-partitions=3", "--db-pool-size=6"]).is_ok());
    }

    #[test]
    fn a_bad_subscription_name_is_rejected() {
        for name in ["ab", "projects/p/topics/t", "a/b"] {
            rejected(
                &["--subscription", name],
                "subscription",
                "MINISCAN_SUBSCRIPTION",
            );
        }
    }

    #[test]
    fn a_bad_database_url_is_rejected_without_repeating_it() {
        let mut args = parse(&[]).unwrap();
        args.db.database_url = "postgres://scanner:hunter2@db.example:port/scans".into();
        let line = IngestConfig::try_from(args).unwrap_err().to_string();
        assert!(!line.contains('\n') && !line.contains("hunter2"), "{line}");
        assert!(
            line.starts_with("invalid --database-url (env DATABASE_URL): "),
            "{line}"
        );
    }
}
