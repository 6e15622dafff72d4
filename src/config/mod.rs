//! The command line, and the plain configuration `ingest` is validated into.
//!
//! Every setting is a flag with an env var; the `///` on each field is its
//! `--help` text, and its default sits next to it. Values are checked at
//! start-up: a bad one stops the program with one line naming the setting
//! ([`one_line_error`] for what clap rejects, [`BadSetting`] for the rest).
//!
//! * this file: the subcommands, the settings they share, [`BadSetting`].
//! * [`ingest`]: [`IngestArgs`] (the flags), its [`defaults`] and
//!   [`IngestConfig`], the validated settings the `Ingester`
//!   is built from (benches and tests construct it directly).
//! * [`scan`]: [`ScanArgs`] (validated into [`ScanConfig`]) and [`SetupArgs`].
//! * [`dead_letters`]: [`DeadLettersArgs`], `stats`, `replay` and `purge`.

pub mod dead_letters;
pub mod ingest;
pub mod scan;

pub use dead_letters::{DeadLettersArgs, DeadLettersCommand};
pub use ingest::{IngestArgs, IngestConfig, defaults};
pub use scan::{GenConfig, ScanArgs, ScanConfig, SetupArgs};

use clap::{Args, Parser, Subcommand};

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
    /// See, replay and purge the messages that could not be stored (run as
    /// the schema owner: the ingest role may not delete them).
    DeadLetters(DeadLettersArgs),
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
    // Name the env var next to the flag it belongs to: the global flags and
    // every subcommand's.
    let cmd = Cli::command();
    let args = cmd.get_arguments().chain(all_arguments(&cmd));
    for arg in args {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let flag = format!("--{long} <");
        if let Some(at) = msg.find(&flag) {
            if let Some(end) = msg[at..].find('>') {
                let span = at..at + end + 1;
                msg.replace_range(span, &format!("--{long} (env {})", env.to_string_lossy()));
            }
            return msg;
        }
    }
    msg
}

/// The arguments of every subcommand, nested ones (`dead-letters replay`)
/// included.
fn all_arguments(cmd: &clap::Command) -> Vec<&clap::Arg> {
    let mut args: Vec<&clap::Arg> = Vec::new();
    for sub in cmd.get_subcommands() {
        args.extend(sub.get_arguments());
        args.extend(all_arguments(sub));
    }
    args
}

#[cfg(test)]
mod reference_tests;

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
    fn a_bad_global_flag_names_its_env_too() {
        let err = Cli::try_parse_from([
            "mini-scan",
            "--log-format",
            "yaml",
            "migrate",
            "--database-url",
            "postgres://x",
        ])
        .unwrap_err();
        let line = one_line_error(&err);
        assert!(
            line.contains("--log-format (env MINISCAN_LOG_FORMAT)"),
            "{line}"
        );
    }
}
