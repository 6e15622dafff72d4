//! The subcommands, wired up: `main` parses the command line and calls one of
//! these. The ingester itself lives in [`crate::ingester`]; [`ingest`] adds
//! validation of its flags and signal handling.
//!
//! * `signals`: SIGTERM and SIGINT, and how they stop the ingester.

mod signals;

use crate::config::dead_letters::{PurgeArgs, ReplayArgs, StatsArgs};
use crate::config::{
    DeadLettersArgs, DeadLettersCommand, IngestArgs, IngestConfig, MigrateArgs, ScanArgs,
    ScanConfig, SetupArgs,
};
use crate::db;
use crate::dead_letters::{self as dl, Filter, PurgeOptions, ReplayOptions, report};
use crate::ingester::Ingester;
use crate::pipeline::{AckSummary, Shutdown};
use crate::traces::{self, Tracing};
use anyhow::Context as _;
use signals::Signals;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Logs go to stderr in `format` (see [`crate::logging`]); `RUST_LOG`
/// filters them (default `info`). Spans are exported too when the `OTEL_*`
/// variables say so ([`crate::traces`]); call this inside the Tokio runtime
/// and [`Tracing::shutdown`] what it returns before exiting. An `OTEL_*`
/// value that cannot be used is an error naming it.
pub fn init_logging(format: crate::logging::LogFormat) -> Result<Option<Tracing>, traces::Error> {
    let (tracing, tracer) = match traces::Settings::from_env()? {
        Some(settings) => {
            let (tracing, tracer) = Tracing::start(&settings)?;
            (Some(tracing), Some(tracer))
        }
        None => (None, None),
    };
    crate::logging::init(format, tracer);
    Ok(tracing)
}

/// `mini-scan migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let cfg = db::config(&args.db.database_url)?;
    let grant = args.grant_ingest_to.as_deref();
    let applied = db::migrate_with(&cfg, &db::migrations(), grant)
        .await
        .context("cannot apply the schema")?;
    tracing::info!(?applied, "schema up to date");
    Ok(())
}

/// `mini-scan setup`.
pub async fn setup(args: SetupArgs) -> anyhow::Result<()> {
    args.validate()?;
    let cfg = args.pubsub.config();
    let (topic, sub) = cfg
        .ensure(&args.topic, &args.subscription, args.ack_deadline_secs)
        .await?;
    tracing::info!(
        topic = %cfg.topic_path(&args.topic), created_topic = topic,
        subscription = %cfg.subscription_path(&args.subscription), created_subscription = sub,
        "topic and subscription exist"
    );
    Ok(())
}

/// `mini-scan scan`.
pub async fn scan(args: ScanArgs) -> anyhow::Result<()> {
    let config = ScanConfig::try_from(args)?;
    let out = crate::scan::publish(&config, signals::signal()).await?;
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    tracing::info!(
        published = out.ok,
        failed = out.failed,
        seconds = format!("{secs:.3}"),
        rate = format!("{:.0}", out.ok as f64 / secs),
        "done"
    );
    if out.failed > 0 {
        anyhow::bail!(
            "{} of {} messages failed to publish",
            out.failed,
            out.ok + out.failed
        );
    }
    Ok(())
}

/// `mini-scan ingest`: validates the settings, builds the [`Ingester`] and
/// runs it until SIGTERM/SIGINT, then drains and returns. A second signal
/// gives up on what is not committed yet (it is nacked).
pub async fn ingest(args: IngestArgs) -> anyhow::Result<AckSummary> {
    let config = IngestConfig::try_from(args)?;
    let shutdown = Shutdown::new();
    // Listening now, before the build, so a signal during it drains (there is
    // nothing to drain yet) instead of killing the process.
    let signals = Signals::listen().context("cannot listen for SIGTERM/SIGINT")?;
    let signals = tokio::spawn(signals::stop_on_signals(
        signals,
        shutdown.clone(),
        config.shutdown_grace,
    ));
    let result = match Ingester::build(config).await {
        Ok(ingester) => ingester.run_until_stopped(shutdown).await,
        Err(e) => Err(e),
    };
    signals.abort();
    let _ = signals.await;
    result
}

/// `mini-scan dead-letters stats | replay | purge`.
pub async fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<()> {
    match args.command {
        DeadLettersCommand::Stats(args) => dead_letters_stats(args).await,
        DeadLettersCommand::Replay(args) => dead_letters_replay(args).await,
        DeadLettersCommand::Purge(args) => dead_letters_purge(args).await,
    }
}

async fn dead_letters_stats(args: StatsArgs) -> anyhow::Result<()> {
    let pool = db::pool(db::config(&args.db.database_url)?, 1);
    let client = pool.get().await.map_err(dl::Error::Pool)?;
    let stats = dl::stats(&client)
        .await
        .context("cannot read the dead letters")?;
    print(args.json, &stats, || report::stats_table(&stats))
}

async fn dead_letters_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let run = args.run;
    let pool = db::pool(db::config(&run.db.database_url)?, 1);
    let since = match args.since {
        Some(since) => {
            let client = pool.get().await.map_err(dl::Error::Pool)?;
            Some(dl::resolve_since(&**client, since).await?)
        }
        None => None,
    };
    let options = ReplayOptions {
        filter: Filter {
            reasons: run.reasons,
            since,
        },
        batch_size: run.batch_size,
        dry_run: run.dry_run,
        progress_every: Duration::from_secs(args.progress_secs),
    };
    let started = Instant::now();
    let summary = until_signal(|stop| async move { dl::replay(&pool, &options, &stop).await })
        .await?
        .context("cannot replay the dead letters")?;
    let t = &summary.total;
    tracing::info!(
        replayed = t.replayed(),
        stored = t.stored,
        superseded = t.superseded,
        still_failing = t.still_failing,
        batches = summary.batches,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        dry_run = summary.dry_run,
        "dead letters replayed"
    );
    print(run.json, &summary, || report::replay_table(&summary))?;
    metrics_file(run.metrics_file.as_deref(), || {
        report::replay_metrics(&summary, SystemTime::now(), started.elapsed())
    })?;
    if summary.interrupted {
        anyhow::bail!(
            "interrupted after {} batches (each committed whole); run it again to go on",
            summary.batches
        );
    }
    Ok(())
}

/// Writes the run's metrics to `--metrics-file`, if one was given, replacing
/// the file whole.
fn metrics_file(
    path: Option<&std::path::Path>,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        report::write_atomically(path, &text())
            .with_context(|| format!("cannot write --metrics-file {}", path.display()))?;
    }
    Ok(())
}

async fn dead_letters_purge(args: PurgeArgs) -> anyhow::Result<()> {
    let run = args.run;
    let pool = db::pool(db::config(&run.db.database_url)?, 1);
    let options = PurgeOptions {
        older_than: args.older_than.into(),
        filter: Filter {
            reasons: run.reasons,
            since: None,
        },
        batch_size: run.batch_size,
        dry_run: run.dry_run,
    };
    let started = Instant::now();
    let summary = until_signal(|stop| async move { dl::purge(&pool, &options, &stop).await })
        .await?
        .context("cannot purge the dead letters")?;
    tracing::info!(
        purged = summary.purged,
        received_before = %summary.received_before,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        dry_run = summary.dry_run,
        "dead letters purged"
    );
    print(run.json, &summary, || report::purge_table(&summary))?;
    metrics_file(run.metrics_file.as_deref(), || {
        report::purge_metrics(&summary, SystemTime::now(), started.elapsed())
    })?;
    if summary.interrupted {
        anyhow::bail!("interrupted; run it again to go on");
    }
    Ok(())
}

/// Runs `work` with a token that SIGTERM/SIGINT cancels: the work stops
/// between two transactions.
async fn until_signal<T, F, Fut>(work: F) -> anyhow::Result<T>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut signals = Signals::listen().context("cannot listen for SIGTERM/SIGINT")?;
    let stop = CancellationToken::new();
    let listener = tokio::spawn({
        let stop = stop.clone();
        async move {
            signals.recv().await;
            tracing::info!("signal received: stopping after the batch in flight");
            stop.cancel();
        }
    });
    let out = work(stop).await;
    listener.abort();
    Ok(out)
}

/// Prints a report on stdout: JSON for scripts, or the table.
fn print(
    json: bool,
    value: &impl serde::Serialize,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string_pretty(value)?
    } else {
        table()
    };
    println!("{text}");
    Ok(())
}
