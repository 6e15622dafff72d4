//! The subcommands, wired up. `main` parses the command line and calls these;
//! tests and benches can call them the same way.

use crate::config::{IngestArgs, MigrateArgs, ScanArgs, SetupArgs};
use crate::db;
use crate::pipeline::{AckSummary, BatchPipelineExt, PipelineExt, SettleExt, Shutdown, shutdown};
use crate::stages::batch::{self, BatchConfig};
use crate::stages::decode::Decode;
use crate::stages::dedup::{CommittedOrders, Dedup};
use crate::stages::source::{PubsubSource, SourceConfig};
use crate::stages::write::{PgSink, WriteConfig};
use crate::telemetry::{self, Health};
use anyhow::Context as _;
use std::time::Duration;

/// How often the database is probed for `/readyz` while no batch is being
/// written: a stopped database shows within about a second.
const DB_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the last acks may take to reach Pub/Sub at shutdown.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

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

/// `mini-scan ingest`: runs until SIGTERM/SIGINT, then drains and exits. A
/// second signal gives up on what is not committed yet (it is nacked).
pub async fn ingest(args: IngestArgs) -> anyhow::Result<AckSummary> {
    let shutdown = Shutdown::new();
    {
        let shutdown = shutdown.clone();
        let grace = Duration::from_secs(args.shutdown_grace_secs);
        tokio::spawn(async move {
            shutdown::signal().await;
            shutdown.trigger(grace);
            shutdown::signal().await;
            tracing::warn!("second signal: giving up on uncommitted messages now");
            shutdown.abort();
        });
    }
    ingest_until(args, shutdown).await
}

/// Runs the ingest pipeline until `shutdown` stops it, then drains: the
/// partial batch is committed and acked before this returns. For embedding
/// (benches, tests): the caller decides when to stop.
pub async fn ingest_until(args: IngestArgs, shutdown: Shutdown) -> anyhow::Result<AckSummary> {
    args.validate()?;
    let pg = db::config(&args.db.database_url)?;
    let handle = telemetry::install_metrics()?;
    let health = Health::new();
    let addr = telemetry::serve(args.metrics_addr, handle, health.clone())
        .await
        .with_context(|| {
            format!(
                "cannot serve metrics on --metrics-addr (env MINISCAN_METRICS_ADDR) {}",
                args.metrics_addr
            )
        })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");

    let pool = db::pool(pg, args.db_pool_size as usize);
    spawn_db_probe(pool.clone(), health.clone());

    let pubsub = args.pubsub.config();
    let subscription = pubsub.subscription_path(&args.subscription);
    let client = pubsub
        .subscriber(args.streams as usize)
        .await
        .context("cannot build the Pub/Sub subscriber")?;

    let orders = CommittedOrders::new(args.cache_capacity);
    spawn_cache_gauge(orders.clone());
    let admin = pubsub
        .subscription_admin()
        .await
        .context("cannot build the Pub/Sub admin client")?;
    let source = PubsubSource::new(
        client,
        admin,
        SourceConfig {
            subscription: subscription.clone(),
            streams: args.streams as usize,
            max_outstanding_messages: i64::from(args.max_outstanding_messages),
            max_outstanding_bytes: args.max_outstanding_bytes as i64,
            reopen_initial: Duration::from_millis(100),
            reopen_max: Duration::from_millis(args.retry_max_ms),
        },
        health.clone(),
    );
    let sink = PgSink::new(
        pool,
        orders.clone(),
        health,
        shutdown.clone(),
        WriteConfig {
            partitions: args.write_partitions as usize,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(args.retry_max_ms),
        },
    );
    let batching = BatchConfig {
        max_rows: args.batch_max_rows as usize,
        max_wait: Duration::from_millis(args.batch_max_wait_ms),
    };
    tracing::info!(%subscription, streams = args.streams, batch_max_rows = batching.max_rows,
        batch_max_wait_ms = args.batch_max_wait_ms, "ingesting");

    // The diagram: source → decode → dedup → batch → write → ack.
    let summary = source
        .stream(shutdown.clone())
        .source("source")
        .transform(Decode)
        .transform(Dedup::new(orders))
        .batch(batch::STAGE, batching.max_rows, batching.max_wait)
        .write(sink, args.write_concurrency as usize)
        .ack()
        .await;

    source.flush_acks(ACK_FLUSH_TIMEOUT).await;
    tracing::info!(acked = summary.acked, nacked = summary.nacked, "stopped");
    Ok(summary)
}

fn spawn_db_probe(pool: deadpool_postgres::Pool, health: Health) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DB_PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probe = async {
                let client = pool.get().await.ok()?;
                client.simple_query("SELECT 1").await.ok()
            };
            let up = tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .ok()
                .flatten()
                .is_some();
            health.set_database(up);
        }
    });
}

fn spawn_cache_gauge(orders: CommittedOrders) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            orders.publish_metrics();
        }
    });
}
