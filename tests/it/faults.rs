//! Fault tests of `mini-scan ingest`: signals, crashes, a database restart and competing
//! replicas. Each ends by checking that the table is exactly the newest scan of every key that was
//! published, and that nothing is left unacknowledged.
//!
//! An area apart from [`crate::ingest`], with its own emulator (see [`crate::common::pubsub`]), so
//! that the heavier traffic here does not slow those tests down.

use std::time::Duration;

use crate::common;
use crate::common::scans::{Table, compare_tables, expected_table, generate, seeded_rng};
use crate::common::{DedicatedPostgres, Ingester, Scan, TestContext, TestDb, wait_until};

/// Tens of thousands of messages on a debug build, on two cores, possibly after an ack deadline
/// runs out (a crashed ingester's leases).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until the table is `expected`, failing early if an ingester dies.
async fn wait_converged(ctx: &TestContext, ingesters: &[&Ingester], expected: &Table) {
    wait_until(CONVERGE_TIMEOUT, "the table to converge", async || {
        for ingester in ingesters {
            ingester.assert_running();
        }
        compare_tables(&ctx.table().await, expected)
    })
    .await;
}

/// Waits until the ingesters together have acknowledged at least `n` messages.
async fn wait_for_acks(ingesters: &[&Ingester], n: u64) {
    wait_until(CONVERGE_TIMEOUT, &format!("{n} acks"), async || {
        let mut acks = 0;
        for ingester in ingesters {
            ingester.assert_running();
            acks += ingester.acks().await;
        }
        if acks >= n {
            Ok(())
        } else {
            Err(format!("{acks} acks"))
        }
    })
    .await;
}

fn encode(scans: &[Scan], rng: &mut rand::rngs::StdRng) -> Vec<Vec<u8>> {
    scans.iter().map(|s| s.either_version(rng)).collect()
}

/// The dedicated cluster keeps its data across a stop and a start on the same port.
#[tokio::test]
async fn dedicated_postgres_stops_and_starts() {
    let pg = DedicatedPostgres::start_new().await;
    let db = TestDb::create_on(pg.admin_url()).await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    pg.stop().await;
    assert!(
        common::postgres::connect(&db.url).await.is_err(),
        "connected to a stopped server"
    );
    pg.start().await;
    let x: i32 = db
        .client()
        .await
        .query_one("SELECT x FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
}

#[tokio::test]
async fn sigterm_mid_batch_commits_the_partial_batch() {
    let ctx = TestContext::new().await;
    let mut rng = seeded_rng("sigterm");
    let scans = generate(&mut rng, 300, 1);
    ctx.publish(&encode(&scans, &mut rng)).await;
    // A batch that neither fills up nor times out during the test.
    let ingester = ctx
        .start_ingester(&[
            ("MINISCAN_BATCH_MAX_ROWS", "100000"),
            ("MINISCAN_BATCH_MAX_WAIT_MS", "60000"),
        ])
        .await;
    wait_until(
        Duration::from_secs(60),
        "all messages received",
        async || {
            ingester.assert_running();
            let received = ingester
                .metric("miniscan_messages_total", &[("stage", "source")])
                .await;
            if received >= scans.len() as f64 {
                Ok(())
            } else {
                Err(format!(
                    "miniscan_messages_total{{stage=\"source\"}} = {received}"
                ))
            }
        },
    )
    .await;
    assert_eq!(
        ctx.db.count_rows().await,
        0,
        "precondition: the batch is still pending (max wait 60 s)"
    );

    ingester.stop().await;
    compare_tables(&ctx.table().await, &expected_table(&scans))
        .unwrap_or_else(|diff| panic!("after SIGTERM: {diff}"));
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
}

#[tokio::test]
async fn kill_9_mid_stream_then_restart_converges() {
    let mut ctx = TestContext::new().await;
    let mut rng = seeded_rng("kill_9");
    let scans = generate(&mut rng, 2000, 10);
    let expected = expected_table(&scans);
    let payloads = encode(&scans, &mut rng);
    ctx.publish(&payloads).await;

    let settings = [
        ("MINISCAN_BATCH_MAX_ROWS", "500"),
        ("MINISCAN_BATCH_MAX_WAIT_MS", "50"),
    ];
    let first = ctx.start_ingester(&settings).await;
    wait_until(Duration::from_secs(60), "some rows stored", async || {
        first.assert_running();
        ctx.db.count_rows().await > 0
    })
    .await;
    let acked_before_kill = first.acks().await;
    first.kill();
    let status = first.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "SIGKILL, yet {status}");
    eprintln!(
        "killed after {acked_before_kill} of {} acks, {} rows",
        payloads.len(),
        ctx.db.count_rows().await
    );

    ctx.replace_subscription().await;
    let second = ctx.start_ingester(&settings).await;
    wait_converged(&ctx, &[&second], &expected).await;
    second.stop().await;
    assert_eq!(ctx.db.count_dead_letters().await, 0);
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
}

#[tokio::test]
async fn postgres_restart_mid_stream_converges_without_restarting_the_ingester() {
    let pg = DedicatedPostgres::start_new().await;
    let ctx = TestContext::on_dedicated(&pg).await;
    let mut rng = seeded_rng("pg_restart");
    let scans = generate(&mut rng, 500, 10);
    let expected = expected_table(&scans);
    let payloads = encode(&scans, &mut rng);
    let (before, during) = payloads.split_at(payloads.len() / 2);

    ctx.publish(before).await;
    let ingester = ctx
        .start_ingester(&[("MINISCAN_BATCH_MAX_ROWS", "200")])
        .await;
    wait_until(Duration::from_secs(60), "some rows stored", async || {
        ingester.assert_running();
        ctx.db.count_rows().await > 0
    })
    .await;

    pg.stop().await;
    ctx.publish(during).await;
    ingester.assert_running();
    pg.start().await;

    wait_converged(&ctx, &[&ingester], &expected).await;
    wait_for_acks(&[&ingester], payloads.len() as u64).await;
    ingester.stop().await;
    assert_eq!(
        ctx.db.count_dead_letters().await,
        0,
        "a database outage must not turn messages into dead letters"
    );
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
}

#[tokio::test]
async fn three_ingesters_on_one_subscription_converge_without_deadlock() {
    let ctx = TestContext::new().await;
    let mut rng = seeded_rng("three_ingesters");
    // Few keys, many observations each: the replicas write the same rows all the time.
    let scans = generate(&mut rng, 40, 150);
    let expected = expected_table(&scans);
    let payloads = encode(&scans, &mut rng);
    ctx.publish(&payloads).await;

    let settings = [
        ("MINISCAN_BATCH_MAX_ROWS", "100"),
        ("MINISCAN_BATCH_MAX_WAIT_MS", "20"),
    ];
    let a = ctx.start_ingester(&settings).await;
    let b = ctx.start_ingester(&settings).await;
    let c = ctx.start_ingester(&settings).await;
    let all = [&a, &b, &c];
    wait_for_acks(&all, payloads.len() as u64).await;
    wait_converged(&ctx, &all, &expected).await;
    for ingester in all {
        ingester.terminate();
    }
    for ingester in all {
        ingester.wait_clean_exit().await;
        let log = ingester.log().to_lowercase();
        assert!(
            !log.contains("deadlock"),
            "an ingester logged a deadlock:\n{}",
            ingester.log_tail(40)
        );
    }
    assert_eq!(ctx.db.count_dead_letters().await, 0);
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
}
