//! What an operator watches, checked against the real thing.
//!
//! * Every PromQL expression on the Grafana dashboard
//!   (`grafana/dashboards/mini-scan.json`) returns data from a real Prometheus
//!   that scrapes a real `mini-scan ingest`, configured by the repository's
//!   own `prometheus/prometheus.yml` (only the target and the intervals
//!   change). A query that stays empty means a panel that would stay empty: a
//!   renamed metric, a missing label, a histogram exported as a summary.
//! * `/readyz` answers 503 while PostgreSQL is down and 200 once it is back,
//!   while `/healthz` stays 200.
//!
//! Needs Debian's `prometheus` package (the server and promtool) besides what
//! the shared harness in `tests/it/common` needs.

use std::process::Stdio;
use std::time::Duration;

use mini_scan::stages::decode::MALFORMED;
use mini_scan::telemetry::names;
use serde_json::{Value, json};

use crate::common;
use crate::common::prometheus::{Prometheus, http};
use crate::common::{DedicatedPostgres, Ingester, Scan, TestContext, binary_command, wait_until};
use crate::stack;

/// The scrape (and evaluation) interval of the test's Prometheus: short, so
/// the test waits for seconds, not minutes.
const SCRAPE_INTERVAL: &str = "1s";

/// What `$__rate_interval` becomes. Grafana makes it at least four scrape
/// intervals; a wider window tolerates a late scrape on a busy machine.
const RATE_INTERVAL: &str = "15s";

/// Prometheus starts and scrapes the ingester within seconds; the margin is for a busy machine.
const PROMETHEUS_START_TIMEOUT: Duration = Duration::from_secs(60);

/// From the first scrapes to every query having answered: a few rate windows.
const QUERIES_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the ingester may take to notice an outage (its next write fails)
/// and a recovery (the retried write commits; retries are capped at
/// `MINISCAN_RETRY_MAX_MS`).
const OUTAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Retries while the database is down, capped low so recovery is seen quickly.
const RETRY_MAX_MS: &str = "300";

/// The repository's `prometheus/prometheus.yml` with every service discovery
/// replaced by the one static `target`, and every interval by
/// [`SCRAPE_INTERVAL`]. Everything else (job names, relabelling) stays.
fn test_config(target: &str) -> Value {
    let mut config = stack::yaml("prometheus/prometheus.yml");
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL.into();
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL.into();
    let jobs = config["scrape_configs"]
        .as_array_mut()
        .expect("prometheus.yml has scrape_configs");
    let mut rewritten = 0;
    for job in jobs {
        let job = job.as_object_mut().expect("a scrape config is a mapping");
        if job.remove("dns_sd_configs").is_some() {
            job.insert("static_configs".into(), json!([{ "targets": [target] }]));
            rewritten += 1;
        }
        if job.contains_key("scrape_interval") {
            job.insert("scrape_interval".into(), SCRAPE_INTERVAL.into());
        }
    }
    assert!(
        rewritten > 0,
        "prometheus.yml has no dns_sd_configs to point at the test's ingester"
    );
    config
}

/// Whether a result vector holds a real number: a rate over an idle window or
/// a quantile of no observations is NaN, which a panel shows as nothing.
fn has_finite_sample(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

async fn status(http: &reqwest::Client, ingester: &Ingester, path: &str) -> Result<u16, String> {
    http.get(format!("http://{}{path}", ingester.metrics_addr))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// The library's catalogue of malformed messages, published raw, so the dead-letter panels have
/// data for every reason decode gives.
fn malformed() -> Vec<Vec<u8>> {
    MALFORMED.iter().map(|m| m.data.to_vec()).collect()
}

/// Asserts that a healthy ingester's `miniscan_errors_total` has a series at 0 for every known
/// `{stage, kind}`, as Prometheus sees it: the errors panel shows 0, not "No data".
async fn assert_errors_are_zero_initialised(prometheus: &Prometheus) {
    let result = prometheus
        .query(names::ERRORS_TOTAL)
        .await
        .unwrap_or_else(|e| panic!("querying {}: {e}", names::ERRORS_TOTAL));
    let series: Vec<(&str, &str, &str)> = result
        .iter()
        .map(|s| {
            let label = |key: &str| s["metric"][key].as_str().unwrap_or("");
            let value = s["value"][1].as_str().unwrap_or("");
            (label(names::label::STAGE), label(names::label::KIND), value)
        })
        .collect();
    for &(stage, kind) in names::ERRORS {
        assert!(
            series.contains(&(stage, kind, "0")),
            "a healthy ingester has no {}{{stage=\"{stage}\",kind=\"{kind}\"}} at 0: {series:?}",
            names::ERRORS_TOTAL
        );
    }
}

/// Runs docker-compose.yml's healthcheck of the ingester (a bash script, as
/// the runtime image has no curl) against `ingester`; true if it passes.
async fn compose_healthcheck_passes(ingester: &Ingester) -> bool {
    let compose = stack::yaml("docker-compose.yml");
    let test = compose["services"]["ingester"]["healthcheck"]["test"]
        .as_array()
        .expect("the ingester has a healthcheck in exec form");
    let argv: Vec<&str> = test.iter().filter_map(Value::as_str).collect();
    assert_eq!(argv.first(), Some(&"CMD"), "healthcheck {argv:?}");
    let (_, port) = ingester
        .metrics_addr
        .rsplit_once(':')
        .expect("a host:port metrics address");
    let argv: Vec<String> = argv[1..]
        .iter()
        .map(|a| a.replace("127.0.0.1/9000", &format!("127.0.0.1/{port}")))
        .collect();
    let run = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the healthcheck hung")
        .unwrap_or_else(|e| panic!("cannot run the healthcheck {argv:?}: {e}"));
    output.status.success()
}

/// Waits until `/readyz` answers `want`, checking that `/healthz` stays 200.
async fn wait_ready_status(http: &reqwest::Client, ingester: &Ingester, want: u16, what: &str) {
    wait_until(OUTAGE_TIMEOUT, what, async || {
        ingester.assert_running();
        let healthz = status(http, ingester, "/healthz").await?;
        if healthz != 200 {
            return Err(format!("/healthz answered {healthz}; it must stay 200"));
        }
        match status(http, ingester, "/readyz").await? {
            got if got == want => Ok(()),
            got => Err(format!("/readyz answered {got}")),
        }
    })
    .await;
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard = stack::json(stack::DASHBOARD);
    let queries: Vec<(String, String)> = stack::dashboard_queries(&dashboard)
        .into_iter()
        // The SLO panels read recording rules and the dead-letter panels the
        // one-shot commands' gauges: tests/it/alerts.rs, whose Prometheus has the
        // rules and a textfile target, checks those.
        .filter(|(_, expr)| {
            !expr.contains("namespace_job:") && !expr.contains("miniscan_dead_letters_last_run_")
        })
        .map(|(title, expr)| {
            let promql = stack::substitute(&expr, RATE_INTERVAL);
            (title, promql)
        })
        .collect();
    assert!(!queries.is_empty(), "the dashboard has no queries");

    // A dedicated cluster: the test stops it to fill the error and health
    // panels.
    let pg = DedicatedPostgres::start_new().await;
    let ctx = TestContext::on_dedicated(&pg).await;
    let ingester = ctx
        .start_ingester(&[("MINISCAN_RETRY_MAX_MS", RETRY_MAX_MS)])
        .await;
    let prometheus = Prometheus::start(&test_config(&ingester.metrics_addr)).await;
    wait_until(
        PROMETHEUS_START_TIMEOUT,
        "Prometheus to scrape the ingester",
        async || match prometheus.query(r#"up{job="ingester"} == 1"#).await {
            Ok(result) if !result.is_empty() => Ok(()),
            Ok(_) => Err("the ingester target is not up".to_owned()),
            Err(e) => Err(e),
        },
    )
    .await;
    assert_errors_are_zero_initialised(&prometheus).await;

    // Traffic for the whole test, paced so that every rate window has some:
    // a small key space and repeats (cache hits, stale scans), late scans,
    // and malformed messages (dead letters). Killed when the test ends.
    ctx.publish(&malformed()).await;
    let mut scanner = binary_command();
    scanner
        .args([
            "scan", "--topic", &ctx.topic, "--rate", "200", "--count", "40000",
        ])
        .args(["--keys", "500", "--seed", "1"])
        .args(["--duplicate-ratio", "0.1", "--out-of-order-ratio", "0.1"])
        .env("PUBSUB_EMULATOR_HOST", &ctx.pubsub.host)
        .env("PUBSUB_PROJECT_ID", common::PROJECT)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _scanner = scanner.spawn().expect("run mini-scan scan");
    wait_until(QUERIES_TIMEOUT, "the ingester to ack traffic", async || {
        ingester.assert_running();
        let acks = ingester.acks().await;
        if acks >= 500 {
            Ok(())
        } else {
            Err(format!("{acks} acks"))
        }
    })
    .await;

    // An outage, for miniscan_up, miniscan_errors_total and the retry path.
    // The probe may report it before a write fails; the errors panel needs a
    // failed write, which the running scanner soon causes.
    let http = http();
    pg.stop().await;
    wait_ready_status(&http, &ingester, 503, "/readyz to report the outage").await;
    wait_until(
        OUTAGE_TIMEOUT,
        "a write to fail during the outage",
        async || {
            ingester.assert_running();
            let errors = ingester
                .metric(
                    names::ERRORS_TOTAL,
                    &[(names::label::STAGE, names::stage::WRITE)],
                )
                .await;
            if errors > 0.0 {
                Ok(())
            } else {
                Err("no write errors yet".to_owned())
            }
        },
    )
    .await;
    pg.start().await;
    wait_ready_status(&http, &ingester, 200, "/readyz to report recovery").await;

    // Each query must return a finite sample at least once; rates need two
    // scrapes inside the window, so poll rather than ask once.
    let mut answered = vec![false; queries.len()];
    let mut last = vec![String::new(); queries.len()];
    wait_until(
        QUERIES_TIMEOUT,
        "every dashboard query to return data",
        async || {
            ingester.assert_running();
            for (i, (_, promql)) in queries.iter().enumerate() {
                if answered[i] {
                    continue;
                }
                match prometheus.query(promql).await {
                    Ok(result) if has_finite_sample(&result) => answered[i] = true,
                    Ok(result) if result.is_empty() => last[i] = "no series".to_owned(),
                    Ok(result) => last[i] = format!("{} series, all NaN or infinite", result.len()),
                    Err(e) => last[i] = e,
                }
            }
            let missing: Vec<String> = queries
                .iter()
                .zip(&answered)
                .zip(&last)
                .filter(|((_, ok), _)| !**ok)
                .map(|(((title, promql), _), last)| {
                    format!("\n  panel {title:?}: {promql} ({last})")
                })
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} queries without data:{}",
                    missing.len(),
                    missing.concat()
                ))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn readyz_is_503_while_postgres_is_down_and_200_when_it_is_back() {
    let pg = DedicatedPostgres::start_new().await;
    let ctx = TestContext::on_dedicated(&pg).await;
    let ingester = ctx
        .start_ingester(&[("MINISCAN_RETRY_MAX_MS", RETRY_MAX_MS)])
        .await;
    let http = http();
    let database_up = async || {
        ingester
            .metric(
                names::UP,
                &[(names::label::COMPONENT, names::component::DATABASE)],
            )
            .await
    };
    assert_eq!(status(&http, &ingester, "/readyz").await, Ok(200));
    assert_eq!(database_up().await, 1.0);
    assert!(
        compose_healthcheck_passes(&ingester).await,
        "docker-compose.yml's ingester healthcheck fails against a ready ingester"
    );

    // Idle: nothing to write, so only the ingester's own probe can notice.
    pg.stop().await;
    wait_ready_status(
        &http,
        &ingester,
        503,
        "/readyz to answer 503 while PostgreSQL is down",
    )
    .await;
    assert_eq!(
        database_up().await,
        0.0,
        "miniscan_up{{component=\"database\"}}"
    );
    assert!(
        !compose_healthcheck_passes(&ingester).await,
        "docker-compose.yml's ingester healthcheck passes while /readyz answers 503"
    );
    // A scan that arrives during the outage waits for the database.
    let scan = Scan::new("192.0.2.7", 443, "HTTP", 1_700_000_000, "during the outage");
    ctx.publish(&[scan.v2()]).await;

    pg.start().await;
    wait_ready_status(
        &http,
        &ingester,
        200,
        "/readyz to answer 200 once PostgreSQL is back",
    )
    .await;
    wait_until(
        OUTAGE_TIMEOUT,
        "the scan sent during the outage to be stored",
        async || {
            let rows = ctx.db.count_rows().await;
            if rows == 1 {
                Ok(())
            } else {
                Err(format!("{rows} rows"))
            }
        },
    )
    .await;
    assert_eq!(
        database_up().await,
        1.0,
        "miniscan_up{{component=\"database\"}}"
    );
    ingester.stop().await;
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
}
