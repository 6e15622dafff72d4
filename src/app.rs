//! The subcommands, wired up: `main` parses the command line and calls one of
//! these. The ingester itself lives in [`crate::ingester`]; [`ingest`] adds
//! validation of its flags and signal handling.

use crate::config::{IngestArgs, IngestConfig, MigrateArgs, ScanArgs, SetupArgs};
use crate::db;
use crate::ingester::Ingester;
use crate::pipeline::shutdown::{self, Signals};
use crate::pipeline::{AckSummary, Shutdown};
use anyhow::Context as _;
use std::time::Duration;

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
    args.validate()?;
    let out = crate::scan::publish(&args, shutdown::signal()).await?;
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
    let signals = tokio::spawn(stop_on_signals(
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

/// The first signal stops the source and, after `grace`, gives up retrying;
/// the second gives up at once.
async fn stop_on_signals(mut signals: Signals, shutdown: Shutdown, grace: Duration) {
    signals.recv().await;
    shutdown.trigger(grace);
    signals.recv().await;
    tracing::warn!("second signal: giving up on uncommitted messages now");
    shutdown.abort();
}
