//! Metrics, and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.
//!
//! The lowest layer of the service's observability: it installs the
//! registry, registers the series it is given ([`series::Series`], declared
//! by each stage beside the code that emits them), and serves the endpoints.
//! It knows no stage and no pipeline. Every metric name, label key and
//! shared label value is spelled once, in [`names`].

pub mod names;
pub mod series;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use names::component;
use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether the ingester's dependencies are up, for `/readyz` and
/// `miniscan_up{component}`.
#[derive(Clone, Debug)]
pub struct Health(Arc<HealthInner>);

#[derive(Debug)]
struct HealthInner {
    database: AtomicBool,
    subscription: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Both up until shown otherwise.
    pub fn new() -> Self {
        names::up(component::DATABASE).set(1.0);
        names::up(component::SUBSCRIPTION).set(1.0);
        Self(Arc::new(HealthInner {
            database: AtomicBool::new(true),
            subscription: AtomicBool::new(true),
        }))
    }

    fn set(flag: &AtomicBool, component: &'static str, up: bool) {
        // Cheap on the hot path: the gauge is touched only on a change.
        if flag.swap(up, Ordering::Relaxed) != up {
            names::up(component).set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!(component, "up again");
            }
        }
    }

    /// Records whether the database answers.
    pub fn set_database(&self, up: bool) {
        Self::set(&self.0.database, component::DATABASE, up);
    }

    /// Records whether the subscription stream works.
    pub fn set_subscription(&self, up: bool) {
        Self::set(&self.0.subscription, component::SUBSCRIPTION, up);
    }

    /// What is down, if anything.
    pub fn down(&self) -> Vec<&'static str> {
        let mut down = Vec::new();
        if !self.0.database.load(Ordering::Relaxed) {
            down.push(component::DATABASE);
        }
        if !self.0.subscription.load(Ordering::Relaxed) {
            down.push(component::SUBSCRIPTION);
        }
        down
    }
}

/// Histogram buckets. Durations span a fast COPY (sub-millisecond) to a
/// stalled batch; lag spans live traffic (tens of milliseconds) to a backlog
/// drained hours later; batch rows span a trickle to the largest batch.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    86400.0,
];
const ROWS_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0,
];

static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the global metrics recorder (once per process; later calls return
/// the same handle and register `known` again, which changes nothing already
/// registered), describes every metric, and registers every series of
/// `known` at 0 ([`series::zero_init`]).
pub fn install_metrics(known: &[series::Series]) -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        series::zero_init(known);
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(names::FRESHNESS_LAG.into()), LAG_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_ROWS.into()), ROWS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(names::STAGE_DURATION.into()),
            DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::WRITE_DURATION.into()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    series::zero_init(known);
    names::build_info(env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(MESSAGES_TOTAL, "Messages through each stage, by outcome.");
    describe_histogram!(
        STAGE_DURATION,
        Unit::Seconds,
        "Work per stage: per message for decode and dedup (mean over a burst), per batch for write."
    );
    describe_histogram!(BATCH_ROWS, "Messages per batch handed to the write stage.");
    describe_histogram!(
        WRITE_DURATION,
        Unit::Seconds,
        "One write transaction (COPY, upsert, dead letters, commit)."
    );
    describe_counter!(CACHE_LOOKUPS_TOTAL, "Dedup cache lookups, by result.");
    describe_gauge!(CACHE_ENTRIES, "Keys held by the dedup cache.");
    describe_gauge!(
        INFLIGHT_MESSAGES,
        "Messages received and not yet acked or nacked."
    );
    describe_counter!(
        ACKS_TOTAL,
        "Messages settled with Pub/Sub, by kind (ack, nack)."
    );
    describe_counter!(DEAD_LETTERS_TOTAL, "Dead letters committed, by reason.");
    describe_histogram!(
        FRESHNESS_LAG,
        Unit::Seconds,
        "Commit time minus the scan's timestamp (reference=scan) or its publish time (reference=publish)."
    );
    describe_counter!(
        ROWS_WRITTEN_TOTAL,
        "Rows of scan_results this replica inserted or updated."
    );
    describe_counter!(ERRORS_TOTAL, "Errors by stage and kind.");
    describe_gauge!(
        UP,
        "Whether a dependency (database, subscription) is reachable."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
}

#[derive(Clone)]
struct Endpoints {
    handle: PrometheusHandle,
    health: Health,
    process: Arc<metrics_process::Collector>,
}

/// How often histograms are folded into buckets: they keep raw samples until
/// then, so this bounds their memory between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// `/metrics`, `/healthz` and `/readyz`, bound to their address but not
/// served yet: [`MetricsServer::run`] serves them until told to stop.
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: Router,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Binds `addr` for `/metrics`, `/healthz` and `/readyz`. Binding is apart
/// from serving so that a taken port fails start-up, and so that the bound
/// address is known (useful with port 0) before anything runs.
pub async fn bind(
    addr: SocketAddr,
    handle: PrometheusHandle,
    health: Health,
) -> std::io::Result<MetricsServer> {
    let process = Arc::new(metrics_process::Collector::default());
    process.describe();
    let state = Endpoints {
        handle: handle.clone(),
        health,
        process,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok(MetricsServer {
        listener,
        addr,
        app,
        handle,
    })
}

impl MetricsServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves, and folds histograms every few seconds, until `stop` is
    /// cancelled; then finishes the requests in progress, closes the port and
    /// returns. Every connection is closed by then: none outlives this.
    pub async fn run(self, stop: CancellationToken) {
        let handle = self.handle;
        let upkeep = async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        };
        let serve = axum::serve(self.listener, self.app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future();
        let (served, _) = tokio::join!(serve, stop.run_until_cancelled(upkeep));
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }
}

async fn metrics_page(State(s): State<Endpoints>) -> String {
    s.process.collect();
    s.handle.render()
}

async fn ready(State(s): State<Endpoints>) -> (StatusCode, String) {
    let down = s.health.down();
    if down.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("down: {}\n", down.join(", ")),
        )
    }
}
