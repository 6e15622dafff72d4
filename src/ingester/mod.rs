//! The ingester: `mini-scan ingest` as a library, built then run, as
//! zero2prod builds its `Application`.
//!
//! [`Ingester::build`] does what can fail at start-up: it installs the
//! metrics recorder, binds `/metrics`, `/healthz` and `/readyz` (the bound
//! address is [`Ingester::metrics_addr`], useful with port 0), and makes the
//! connection pool, the Pub/Sub clients, the source and the dedup cache.
//! [`Ingester::run_until_stopped`] runs the pipeline until a [`Shutdown`]
//! stops it, drains it (the partial batch is committed and acked), sends the
//! last acks, and then stops every background task it owns (the metrics
//! server and its upkeep, the database probe, the cache gauge) and waits for
//! them: nothing it started outlives it.
//!
//! `main` reaches this through `app::ingest`, which adds signal handling;
//! benches and tests build an [`IngestConfig`] and call it directly.
//!
//! * `background`: the background tasks and the set that owns them.

mod background;

use crate::config::IngestConfig;
use crate::db;
use crate::pipeline::{AckSummary, BatchPipelineExt, PipelineExt, SettleExt, Shutdown};
use crate::stages::decode::Decode;
use crate::stages::dedup::{CommittedOrders, Dedup};
use crate::stages::source::{PubsubSource, SourceConfig};
use crate::stages::write::{PgSink, WriteConfig};
use crate::stages::{self, Metrics};
use crate::telemetry::names::stage;
use crate::telemetry::{self, Health};
use anyhow::Context as _;
use background::Background;
use std::net::SocketAddr;
use std::time::Duration;

/// How long the last acks may take to reach Pub/Sub at shutdown.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long background tasks may take to stop before they are aborted: the
/// metrics server finishes the scrape in progress, which takes milliseconds.
const BACKGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// First delay before reopening a failed streaming pull.
const REOPEN_INITIAL: Duration = Duration::from_millis(100);
/// First delay before retrying a transient database failure.
const RETRY_INITIAL: Duration = Duration::from_millis(50);

/// A built ingester, ready to run.
#[derive(Debug)]
pub struct Ingester {
    config: IngestConfig,
    metrics_addr: SocketAddr,
    health: Health,
    pool: deadpool_postgres::Pool,
    orders: CommittedOrders,
    source: PubsubSource,
    background: Background,
}

impl Ingester {
    /// Builds everything the pipeline needs and starts the background tasks.
    /// Nothing is pulled until [`run_until_stopped`](Self::run_until_stopped).
    /// Dropping the ingester instead aborts its background tasks.
    pub async fn build(config: IngestConfig) -> anyhow::Result<Self> {
        let handle = telemetry::install_metrics(&stages::series::all())?;
        let health = Health::new();
        let mut background = Background::new();
        let server = telemetry::bind(config.metrics_addr, handle, health.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot serve metrics on --metrics-addr (env MINISCAN_METRICS_ADDR) {}",
                    config.metrics_addr
                )
            })?;
        let metrics_addr = server.addr();
        background.spawn(|stop| server.run(stop));
        tracing::info!(%metrics_addr, "serving /metrics, /healthz and /readyz");

        let pool = db::pool(config.database.clone(), config.db_pool_size);
        background.spawn({
            let (pool, health) = (pool.clone(), health.clone());
            move |stop| background::probe_database(pool, health, stop)
        });
        let orders = CommittedOrders::new(config.cache_capacity);
        background.spawn({
            let orders = orders.clone();
            move |stop| background::publish_cache_entries(orders, stop)
        });
        let source = source(&config, health.clone()).await?;
        Ok(Self {
            config,
            metrics_addr,
            health,
            pool,
            orders,
            source,
            background,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Runs source → decode → dedup → batch → write → ack until `shutdown`
    /// stops the source, then drains: the partial batch is committed and
    /// acked (or, once `shutdown` aborts, nacked) before this returns, the
    /// acks have been sent, the dedup cache has learned what committed, and
    /// every background task has stopped.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<AckSummary> {
        let c = &self.config;
        // Made here rather than in `build`: the sink gives up retrying when
        // this run's shutdown aborts.
        let sink = PgSink::new(
            self.pool.clone(),
            self.orders.clone(),
            self.health.clone(),
            shutdown.clone(),
            WriteConfig {
                partitions: c.write_partitions,
                retry_initial: RETRY_INITIAL,
                retry_max: c.retry_max,
            },
        );
        tracing::info!(subscription = %c.subscription, streams = c.streams,
            batch_max_rows = c.batch_max_rows,
            batch_max_wait_ms = c.batch_max_wait.as_millis() as u64, "ingesting");

        // The diagram: source → decode → dedup → batch → write → ack.
        let m = Metrics;
        let summary = self
            .source
            .stream(shutdown)
            .source(stage::SOURCE, m)
            .transform(Decode, m)
            .transform(Dedup::new(self.orders.clone()), m)
            .batch(stage::BATCH, c.batch_max_rows, c.batch_max_wait, m)
            .write(sink.clone(), c.write_concurrency, m)
            .ack(stage::ACK, m)
            .await;

        // The acks are not waiting on this: the cache learns off their path.
        sink.close().await;
        self.source.flush_acks(ACK_FLUSH_TIMEOUT).await;
        self.background.stop(BACKGROUND_STOP_TIMEOUT).await;
        tracing::info!(acked = summary.acked, nacked = summary.nacked, "stopped");
        Ok(summary)
    }
}

/// The Pub/Sub source of `config.subscription`.
async fn source(config: &IngestConfig, health: Health) -> anyhow::Result<PubsubSource> {
    let client = config
        .pubsub
        .subscriber(config.streams)
        .await
        .context("cannot build the Pub/Sub subscriber")?;
    let admin = config
        .pubsub
        .subscription_admin()
        .await
        .context("cannot build the Pub/Sub admin client")?;
    Ok(PubsubSource::new(
        client,
        admin,
        SourceConfig {
            subscription: config.subscription.clone(),
            streams: config.streams,
            max_outstanding_messages: saturating_i64(config.max_outstanding_messages),
            max_outstanding_bytes: saturating_i64(config.max_outstanding_bytes),
            reopen_initial: REOPEN_INITIAL,
            reopen_max: config.reopen_max,
        },
        health,
    ))
}

/// The Pub/Sub client counts in `i64`.
fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
