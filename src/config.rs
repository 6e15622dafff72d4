//! The command line. Every setting is a flag with an env var; the `///` on
//! each field is its `--help` text, and its default sits next to it.
//! Values are checked at start-up: a bad one stops the program with one line
//! naming the setting ([`one_line_error`]).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;

/// Ingests internet-scan results from Google Cloud Pub/Sub into PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "mini-scan", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: text (coloured only on a terminal, never with
    /// NO_COLOR) or json (one object per line with severity, message,
    /// timestamp and fields, for a log collector).
    #[arg(long, global = true, env = "MINISCAN_LOG_FORMAT", value_enum,
          default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update the database schema (idempotent).
    Migrate(MigrateArgs),
    /// Pull scan results from a subscription and keep the newest per
    /// (ip, port, service) in PostgreSQL.
    Ingest(IngestArgs),
    /// Publish synthetic scan results, like the original scanner (and as a
    /// load generator).
    Scan(ScanArgs),
    /// Create the topic and subscription if they do not exist (idempotent).
    Setup(SetupArgs),
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// Where Pub/Sub is.
#[derive(Debug, Args)]
pub struct PubsubArgs {
    /// Google Cloud project of the topic and subscription.
    #[arg(long, env = "PUBSUB_PROJECT_ID", default_value = "test-project")]
    pub project_id: String,
    /// host:port of a Pub/Sub emulator; when set, connect there with anonymous
    /// credentials instead of to Google Cloud.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub emulator_host: Option<String>,
}

impl PubsubArgs {
    /// The client configuration.
    pub fn config(&self) -> crate::pubsub::PubsubConfig {
        crate::pubsub::PubsubConfig {
            project: self.project_id.clone(),
            emulator_host: self.emulator_host.clone().filter(|h| !h.is_empty()),
        }
    }
}

/// `mini-scan migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub db: DatabaseArgs,
    /// After migrating, grant this existing role exactly what `ingest` needs
    /// (connect, a temporary table, SELECT/INSERT/UPDATE on scan_results,
    /// INSERT on dead_letters); idempotent.
    #[arg(long, env = "MINISCAN_GRANT_INGEST_TO", value_name = "ROLE")]
    pub grant_ingest_to: Option<String>,
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
    #[arg(long, env = "MINISCAN_SUBSCRIPTION", default_value = "scan-sub")]
    pub subscription: String,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "MINISCAN_METRICS_ADDR", default_value = "0.0.0.0:9000")]
    pub metrics_addr: SocketAddr,
    /// Most messages written in one transaction.
    #[arg(long, env = "MINISCAN_BATCH_MAX_ROWS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max_rows: u32,
    /// Longest a message waits for its batch to fill, in milliseconds.
    #[arg(long, env = "MINISCAN_BATCH_MAX_WAIT_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub batch_max_wait_ms: u64,
    /// Batches written concurrently (each on its own connection).
    #[arg(long, env = "MINISCAN_WRITE_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub write_concurrency: u32,
    /// Disjoint key partitions each batch is split into and committed
    /// concurrently (a partition gets at least 256 rows).
    #[arg(long, env = "MINISCAN_WRITE_PARTITIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub write_partitions: u32,
    /// PostgreSQL connections in the pool; at least write concurrency × write
    /// partitions.
    #[arg(long, env = "MINISCAN_DB_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_pool_size: u32,
    /// Streaming-pull streams run side by side.
    #[arg(long, env = "MINISCAN_STREAMS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
    /// Flow control: unacked messages per stream before Pub/Sub pauses.
    #[arg(long, env = "MINISCAN_MAX_OUTSTANDING_MESSAGES", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_outstanding_messages: u32,
    /// Flow control: unacked bytes per stream before Pub/Sub pauses.
    #[arg(long, env = "MINISCAN_MAX_OUTSTANDING_BYTES", default_value_t = 10 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_outstanding_bytes: u64,
    /// Keys the dedup cache remembers (0 disables it). About 200 bytes each.
    #[arg(long, env = "MINISCAN_CACHE_CAPACITY", default_value_t = 200_000)]
    pub cache_capacity: u64,
    /// Longest delay between retries while the database is unreachable, in
    /// milliseconds.
    #[arg(long, env = "MINISCAN_RETRY_MAX_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub retry_max_ms: u64,
    /// On SIGTERM, how long to keep trying to commit what was received before
    /// giving it back to Pub/Sub (nack), in seconds.
    #[arg(long, env = "MINISCAN_SHUTDOWN_GRACE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,
}

/// `mini-scan scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pubsub: PubsubArgs,
    /// Topic to publish to: a short name or projects/P/topics/T.
    #[arg(long, env = "MINISCAN_TOPIC", default_value = "scan-topic")]
    pub topic: String,
    /// Messages per second; 0 publishes as fast as possible.
    #[arg(long, env = "MINISCAN_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// Stop after this many messages (default: never).
    #[arg(long, env = "MINISCAN_COUNT")]
    pub count: Option<u64>,
    /// Size of the key space, (ip, port, service) triples drawn from; default
    /// the original scanner's: any IP in 1.1.1.0/24, port 0..65534, 3 services.
    #[arg(long, env = "MINISCAN_KEYS")]
    pub keys: Option<u64>,
    /// Fraction of messages in the V1 format (base64 bytes); the rest are V2.
    #[arg(long, env = "MINISCAN_V1_RATIO", default_value_t = 0.5)]
    pub v1_ratio: f64,
    /// Fraction of messages that repeat an earlier message exactly.
    #[arg(long, env = "MINISCAN_DUPLICATE_RATIO", default_value_t = 0.0)]
    pub duplicate_ratio: f64,
    /// Fraction of messages carrying an older timestamp than the newest
    /// already published for their key.
    #[arg(long, env = "MINISCAN_OUT_OF_ORDER_RATIO", default_value_t = 0.0)]
    pub out_of_order_ratio: f64,
    /// Fraction of messages that are malformed (each kind of dead letter).
    #[arg(long, env = "MINISCAN_MALFORMED_RATIO", default_value_t = 0.0)]
    pub malformed_ratio: f64,
    /// Response size in bytes (default: "service response: N", as the
    /// original scanner).
    #[arg(long, env = "MINISCAN_RESPONSE_BYTES")]
    pub response_bytes: Option<usize>,
    /// Random seed: the same seed publishes the same messages.
    #[arg(long, env = "MINISCAN_SEED")]
    pub seed: Option<u64>,
    /// Messages per publish request.
    #[arg(long, env = "MINISCAN_PUBLISH_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub publish_batch: u32,
}

/// `mini-scan setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pubsub: PubsubArgs,
    /// Topic to create: a short name or projects/P/topics/T.
    #[arg(long, env = "MINISCAN_TOPIC", default_value = "scan-topic")]
    pub topic: String,
    /// Subscription to create: a short name or projects/P/subscriptions/S.
    #[arg(long, env = "MINISCAN_SUBSCRIPTION", default_value = "scan-sub")]
    pub subscription: String,
    /// Ack deadline of a new subscription, in seconds.
    #[arg(long, env = "MINISCAN_ACK_DEADLINE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(i32).range(10..=600))]
    pub ack_deadline_secs: i32,
}

/// A setting's value is wrong: names the setting (flag and env var) and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {why}")]
pub struct BadSetting {
    /// `--flag (env NAME)`.
    pub setting: String,
    /// What is wrong.
    pub why: String,
}

impl BadSetting {
    fn new(flag: &str, env: &str, why: impl Into<String>) -> Self {
        Self {
            setting: format!("--{flag} (env {env})"),
            why: why.into(),
        }
    }
}

fn ratio(flag: &str, env: &str, v: f64) -> Result<(), BadSetting> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(BadSetting::new(
            flag,
            env,
            format!("{v} is not a fraction between 0 and 1"),
        ))
    }
}

impl IngestArgs {
    /// Checks what clap cannot: relations between settings, names.
    pub fn validate(&self) -> Result<(), BadSetting> {
        crate::pubsub::validate_name("subscriptions", &self.subscription)
            .map_err(|why| BadSetting::new("subscription", "MINISCAN_SUBSCRIPTION", why))?;
        let needed = self.write_concurrency * self.write_partitions;
        if self.db_pool_size < needed {
            return Err(BadSetting::new(
                "db-pool-size",
                "MINISCAN_DB_POOL_SIZE",
                format!(
                    "{} is less than write concurrency × write partitions ({needed}); each concurrent transaction needs a connection",
                    self.db_pool_size
                ),
            ));
        }
        Ok(())
    }
}

impl ScanArgs {
    /// Checks ranges clap cannot express for floats.
    pub fn validate(&self) -> Result<(), BadSetting> {
        crate::pubsub::validate_name("topics", &self.topic)
            .map_err(|why| BadSetting::new("topic", "MINISCAN_TOPIC", why))?;
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(BadSetting::new(
                "rate",
                "MINISCAN_RATE",
                format!("{} is not a rate >= 0", self.rate),
            ));
        }
        if self.keys == Some(0) {
            return Err(BadSetting::new(
                "keys",
                "MINISCAN_KEYS",
                "the key space cannot be empty",
            ));
        }
        ratio("v1-ratio", "MINISCAN_V1_RATIO", self.v1_ratio)?;
        ratio(
            "duplicate-ratio",
            "MINISCAN_DUPLICATE_RATIO",
            self.duplicate_ratio,
        )?;
        ratio(
            "out-of-order-ratio",
            "MINISCAN_OUT_OF_ORDER_RATIO",
            self.out_of_order_ratio,
        )?;
        ratio(
            "malformed-ratio",
            "MINISCAN_MALFORMED_RATIO",
            self.malformed_ratio,
        )?;
        if self.duplicate_ratio + self.out_of_order_ratio + self.malformed_ratio > 1.0 {
            return Err(BadSetting::new(
                "duplicate-ratio",
                "MINISCAN_DUPLICATE_RATIO",
                "duplicate, out-of-order and malformed ratios add up to more than 1",
            ));
        }
        Ok(())
    }
}

impl SetupArgs {
    /// Checks the names.
    pub fn validate(&self) -> Result<(), BadSetting> {
        crate::pubsub::validate_name("topics", &self.topic)
            .map_err(|why| BadSetting::new("topic", "MINISCAN_TOPIC", why))?;
        crate::pubsub::validate_name("subscriptions", &self.subscription)
            .map_err(|why| BadSetting::new("subscription", "MINISCAN_SUBSCRIPTION", why))
    }
}

/// Renders a clap error as one line, naming the env var of the setting where
/// it has one: "invalid value '0' for --batch-max-rows (env
/// MINISCAN_BATCH_MAX_ROWS): 0 is not in 1..=100000".
pub fn one_line_error(err: &clap::Error) -> String {
    use clap::CommandFactory;
    let text = err.to_string();
    let mut parts: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.trim_start_matches("error: ").to_string());
        }
    }
    let mut msg = parts.join(" ");
    // Name the env var next to the flag it belongs to.
    let cmd = Cli::command();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
                let flag = format!("--{long} <");
                if let Some(at) = msg.find(&flag) {
                    if let Some(end) = msg[at..].find('>') {
                        let span = at..at + end + 1;
                        msg.replace_range(
                            span,
                            &format!("--{long} (env {})", env.to_string_lossy()),
                        );
                    }
                    return msg;
                }
            }
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_bad_value_is_one_line_naming_flag_and_env() {
        let err = Cli::try_parse_from([
            "mini-scan",
            "ingest",
            "--database-url",
            "postgres://x",
            "--batch-max-rows",
            "0",
        ])
        .unwrap_err();
        let line = one_line_error(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("--batch-max-rows (env MINISCAN_BATCH_MAX_ROWS)"),
            "{line}"
        );
    }

    #[test]
    fn pool_smaller_than_concurrency_is_rejected() {
        let cli = Cli::try_parse_from([
            "mini-scan",
            "ingest",
            "--database-url",
            "postgres://x",
            "--write-concurrency",
            "4",
            "--db-pool-size",
            "2",
        ])
        .unwrap();
        let Command::Ingest(args) = cli.command else {
            panic!()
        };
        let err = args.validate().unwrap_err().to_string();
        assert!(err.contains("MINISCAN_DB_POOL_SIZE"), "{err}");
    }
}
