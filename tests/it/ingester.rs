//! The ingester as a library, the way benches and embedders use it: an `IngestConfig` built in
//! code (no command line), `Ingester::build`, then `run_until_stopped` until a `Shutdown` fires.
//! Runs against the real PostgreSQL and Pub/Sub emulator of `common`, and checks that nothing the
//! ingester started outlives the run.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mini_scan::config::IngestConfig;
use mini_scan::ingester::Ingester;
use mini_scan::pipeline::Shutdown;
use mini_scan::pubsub::PubsubConfig;

use crate::common::ingester::metric_sum;
use crate::common::scans::{compare_tables, expected_table, generate, seeded_rng};
use crate::common::{PROJECT, Scan, TestContext, wait_until};

/// A few hundred messages on a debug build; the margin is for a busy two-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Draining one partial batch and sending the last acks.
const STOP_TIMEOUT: Duration = Duration::from_secs(45);
/// Closed connections leave `pg_stat_activity` within moments of the client going away.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The defaults, pointed at this test's database and subscription, serving on a free port.
fn config(ctx: &TestContext) -> IngestConfig {
    let database = mini_scan::db::config(&ctx.db.url).expect("the test database URL parses");
    let pubsub = PubsubConfig {
        project: PROJECT.to_owned(),
        emulator_host: Some(ctx.pubsub.host.clone()),
    };
    let mut config = IngestConfig::new(database, pubsub);
    config.subscription = config.pubsub.subscription_path(&ctx.subscription);
    config.metrics_addr = (Ipv4Addr::LOCALHOST, 0).into();
    config.streams = 2;
    config
}

async fn get(http: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let response = http
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The ingester's own connections to this test's database (`db::config` names them `mini-scan`).
async fn ingester_connections(ctx: &TestContext) -> i64 {
    ctx.db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'mini-scan'",
            &[],
        )
        .await
        .expect("query pg_stat_activity")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_code_it_ingests_drains_and_leaves_nothing_running() {
    let ctx = TestContext::new().await;
    let ingester = Ingester::build(config(&ctx))
        .await
        .expect("build the ingester");
    let addr = ingester.metrics_addr();
    assert_ne!(addr.port(), 0, "the bound address, not the requested one");

    let shutdown = Shutdown::new();
    let run = tokio::spawn(ingester.run_until_stopped(shutdown.clone()));

    let mut rng = seeded_rng("built_in_code_it_ingests_drains_and_leaves_nothing_running");
    let scans: Vec<Scan> = generate(&mut rng, 50, 3);
    let payloads: Vec<Vec<u8>> = scans.iter().map(|s| s.either_version(&mut rng)).collect();
    ctx.publish(&payloads).await;

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build an HTTP client");
    let n = payloads.len() as f64;
    wait_until(CONVERGE_TIMEOUT, "every message acked", async || {
        assert!(!run.is_finished(), "the ingester stopped by itself");
        let (_, page) = get(&http, addr, "/metrics").await;
        let acks = metric_sum(&page, "miniscan_acks_total", &[("kind", "ack")]);
        if acks >= n {
            Ok(())
        } else {
            Err(format!("{acks} acks"))
        }
    })
    .await;
    compare_tables(&ctx.table().await, &expected_table(&scans)).expect("the newest scan per key");
    assert_eq!(get(&http, addr, "/readyz").await.0, 200);
    assert!(ingester_connections(&ctx).await > 0, "the pool is in use");

    shutdown.trigger(Duration::from_secs(10));
    let summary = tokio::time::timeout(STOP_TIMEOUT, run)
        .await
        .expect("run_until_stopped returns after the shutdown")
        .expect("the ingester task did not panic")
        .expect("the ingester ran without error");
    assert!(summary.acked >= payloads.len() as u64, "{summary:?}");
    assert_eq!(summary.nacked, 0, "{summary:?}");
    assert_eq!(ctx.remaining_messages().await, 0, "messages left unacked");

    // The metrics server has stopped and closed its port...
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the metrics port still accepts connections after run_until_stopped: {refused:?}"
    );
    // ...and the database probe no longer holds the pool: every connection goes away.
    wait_until(
        DISCONNECT_TIMEOUT,
        "the ingester's connections to close",
        async || match ingester_connections(&ctx).await {
            0 => Ok(()),
            n => Err(format!("{n} connections named mini-scan")),
        },
    )
    .await;
}

/// Needs no server: binding comes before anything connects.
#[tokio::test]
async fn a_taken_metrics_port_fails_the_build_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let database = mini_scan::db::config("postgres://nobody@127.0.0.1:1/none").unwrap();
    let pubsub = PubsubConfig {
        project: PROJECT.to_owned(),
        emulator_host: Some("127.0.0.1:1".to_owned()),
    };
    let mut config = IngestConfig::new(database, pubsub);
    config.metrics_addr = taken.local_addr().expect("a bound address");
    let err = Ingester::build(config)
        .await
        .expect_err("the port is taken");
    let line = format!("{err:#}");
    assert!(
        line.contains("--metrics-addr (env MINISCAN_METRICS_ADDR)"),
        "{line}"
    );
}
