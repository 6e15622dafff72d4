//! The settings of `mini-scan dead-letters stats | replay | purge`.
//!
//! Settings that an operator keeps from run to run (batch size, progress
//! interval, metrics file) are a flag and an env var like every other
//! setting; what picks the dead letters of one run (`--reason`, `--since`,
//! `--older-than`, `--dry-run`, `--json`) is a flag only, so that a variable
//! left in the environment never widens or narrows a purge by surprise.

use super::DatabaseArgs;
use crate::model::Reason;
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// `mini-scan dead-letters`.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// What to do with them.
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

/// The `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Counts by reason, oldest and newest, payload bytes.
    Stats(StatsArgs),
    /// Run the stored payloads through today's decoder and write what now
    /// decodes (newest wins); what still fails stays, its reason refreshed.
    Replay(ReplayArgs),
    /// Delete dead letters older than a duration.
    Purge(PurgeArgs),
}

/// `mini-scan dead-letters stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub db: DatabaseArgs,
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `replay` and `purge` share.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub db: DatabaseArgs,
    /// Only dead letters with this reason (repeat for several; default all).
    #[arg(long = "reason", value_name = "REASON", value_parser = reasons())]
    pub reasons: Vec<String>,
    /// Dead letters per transaction: each batch commits (or, with
    /// --dry-run, rolls back) on its own, so an interrupted run keeps what
    /// it did and a re-run goes on from there.
    #[arg(long, env = "MINISCAN_DEAD_LETTERS_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Report what would happen, writing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the run's counts to this file in Prometheus text format
    /// (replaced atomically), for node_exporter's textfile collector.
    #[arg(
        long,
        env = "MINISCAN_METRICS_FILE",
        value_name = "PATH",
        conflicts_with = "dry_run"
    )]
    pub metrics_file: Option<PathBuf>,
}

/// `mini-scan dead-letters replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// Only dead letters received since T: an RFC 3339 time
    /// (2026-11-29T10:00:00Z) or a duration before now (2h, 7days).
    #[arg(long, value_name = "T", value_parser = parse_since)]
    pub since: Option<Since>,
    /// A progress line at most this often on long runs (0: after every batch).
    #[arg(long, env = "MINISCAN_PROGRESS_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub progress_secs: u64,
}

/// `mini-scan dead-letters purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// Delete dead letters received longer ago than this (30days, 12h, 1w).
    #[arg(long, value_name = "DURATION", required = true)]
    pub older_than: humantime::Duration,
}

/// A lower bound on when a dead letter was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// At this time.
    At(SystemTime),
    /// This long before now (the database's clock, which stamped them).
    Ago(Duration),
}

/// `--since`: an RFC 3339 time, or a duration before now.
pub fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(s) {
        return Ok(Since::At(at));
    }
    humantime::parse_duration(s).map(Since::Ago).map_err(|_| {
        "expected an RFC 3339 time (2026-11-29T10:00:00Z) or a duration before now (2h, 7days)"
            .to_owned()
    })
}

/// The reason codes `--reason` accepts: [`Reason::ALL`].
fn reasons() -> PossibleValuesParser {
    PossibleValuesParser::new(Reason::ALL.iter().map(|r| r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command, one_line_error};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["mini-scan", "dead-letters"];
        argv.extend(args);
        argv.extend(["--database-url", "postgres://x"]);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        assert_eq!(parse_since("2h"), Ok(Since::Ago(Duration::from_secs(7200))));
        assert_eq!(
            parse_since("2026-11-29T10:00:00Z"),
            Ok(Since::At(
                humantime::parse_rfc3339("2026-11-29T10:00:00Z").unwrap()
            ))
        );
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn replay_parses_repeated_reasons_and_defaults() {
        let cli = parse(&[
            "replay",
            "--reason",
            "invalid_json",
            "--reason",
            "rejected_by_database",
            "--since",
            "1d",
        ])
        .unwrap();
        let Command::DeadLetters(DeadLettersArgs {
            command: DeadLettersCommand::Replay(args),
        }) = cli.command
        else {
            panic!("not replay: {cli:?}");
        };
        assert_eq!(args.run.reasons, ["invalid_json", "rejected_by_database"]);
        assert_eq!(args.since, Some(Since::Ago(Duration::from_secs(86_400))));
        assert_eq!(args.run.batch_size, 500);
        assert!(!args.run.dry_run);
    }

    #[test]
    fn bad_flags_stop_with_one_line_naming_them() {
        let line = |args: &[&str]| one_line_error(&parse(args).unwrap_err());
        let unknown = line(&["replay", "--reason", "bogus"]);
        assert!(
            unknown.contains("bogus") && unknown.contains("invalid_json"),
            "{unknown}"
        );
        let batch = line(&["purge", "--older-than", "1d", "--batch-size", "0"]);
        assert!(
            batch.contains("--batch-size (env MINISCAN_DEAD_LETTERS_BATCH_SIZE)"),
            "{batch}"
        );
        let older = line(&["purge", "--older-than", "soon"]);
        assert!(older.contains("--older-than"), "{older}");
        let missing = line(&["purge"]);
        assert!(missing.contains("--older-than"), "{missing}");
        let both = line(&["replay", "--dry-run", "--metrics-file", "/tmp/x.prom"]);
        assert!(both.contains("--dry-run"), "{both}");
        for l in [unknown, batch, older, missing, both] {
            assert!(!l.contains('\n'), "{l}");
        }
    }
}
