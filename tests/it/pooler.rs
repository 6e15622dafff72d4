//! `mini-scan ingest` behind a transaction-mode pooler: Debian's pgbouncer (1.18, no
//! protocol-level prepared statements) with `pool_mode = transaction` in front of a dedicated
//! cluster, the ingesters' `DATABASE_URL` pointing at pgbouncer. Each transaction may run on
//! another server connection, which breaks per-connection state (statements cached by name, a
//! temporary table made when the connection was): the write path must keep none.
//!
//! Each test gets its own cluster and pgbouncer; the schema is applied directly on the cluster
//! (`migrate` holds a session-level advisory lock, which a transaction-mode pooler cannot keep).

use std::time::Duration;

use crate::common;
use crate::common::scans::{compare_tables, expected_table, generate, poisoned_batch, seeded_rng};
use crate::common::{DedicatedPostgres, Ingester, Scan, TestContext, wait_until};
use crate::provision::PgBouncer;

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
const T0: i64 = 1_700_000_000;

/// A test's world with a pgbouncer of `pool_size` server connections in front of its cluster.
struct Pooled {
    ctx: TestContext,
    bouncer: PgBouncer,
    pg: DedicatedPostgres,
    pool_size: u32,
}

impl Pooled {
    async fn start(pool_size: u32) -> Self {
        let pg = DedicatedPostgres::start_new().await;
        let ctx = TestContext::on_dedicated(&pg).await;
        let port = pg.cluster().port();
        let bouncer = tokio::task::spawn_blocking(move || PgBouncer::start(port, pool_size))
            .await
            .expect("the thread starting pgbouncer")
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            ctx,
            bouncer,
            pg,
            pool_size,
        }
    }

    /// An ingester whose `DATABASE_URL` is this test's database through pgbouncer.
    async fn ingester(&self, extra: &[(&str, &str)]) -> Ingester {
        let url = self.bouncer.url(&self.ctx.db.name);
        let mut env = vec![
            ("DATABASE_URL", url.as_str()),
            ("MINISCAN_DB_POOL_SIZE", "4"),
        ];
        env.extend_from_slice(extra);
        self.ctx.start_ingester(&env).await
    }

    /// Server connections to this test's database: pgbouncer's, at most its pool size, and at
    /// least one (so the traffic did go through it).
    async fn assert_server_connections_within_the_pool(&self) {
        let admin = common::postgres::connect(&self.pg.admin_url())
            .await
            .expect("connect to the dedicated cluster");
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&self.ctx.db.name],
            )
            .await
            .expect("count server connections")
            .get(0);
        assert!(
            (1..=i64::from(self.pool_size)).contains(&n),
            "{n} server connections to the database, pgbouncer's pool is {}; its log:\n{}",
            self.pool_size,
            self.bouncer.log_tail()
        );
    }
}

async fn wait_for_acks(ingesters: &[&Ingester], n: u64) {
    wait_until(CONVERGE_TIMEOUT, &format!("{n} acks"), async || {
        let mut acks = 0;
        for i in ingesters {
            i.assert_running();
            acks += i.acks().await;
        }
        if acks >= n {
            Ok(())
        } else {
            Err(format!("{acks} acks"))
        }
    })
    .await;
}

/// Many batches (small ones, so many transactions) through pgbouncer converge to the newest per
/// key; every message is acknowledged.
#[tokio::test]
async fn ingest_through_a_transaction_mode_pooler_converges() {
    let world = Pooled::start(2).await;
    let mut rng = seeded_rng("pooler ingest");
    let scans = generate(&mut rng, 300, 3);
    let payloads: Vec<Vec<u8>> = scans.iter().map(|s| s.either_version(&mut rng)).collect();
    world.ctx.publish(&payloads).await;
    let ingester = world.ingester(&[("MINISCAN_BATCH_MAX_ROWS", "50")]).await;
    wait_for_acks(&[&ingester], payloads.len() as u64).await;
    ingester.stop().await;
    assert_eq!(world.ctx.remaining_messages().await, 0);
    compare_tables(&world.ctx.table().await, &expected_table(&scans))
        .unwrap_or_else(|e| panic!("{e}\ningester log:\n{}", ingester.log_tail(40)));
    world.assert_server_connections_within_the_pool().await;
}

/// Malformed messages become dead letters through pgbouncer, next to stored rows.
#[tokio::test]
async fn dead_letters_are_written_through_a_transaction_mode_pooler() {
    let world = Pooled::start(2).await;
    let mut payloads: Vec<Vec<u8>> = (0..20u16)
        .map(|i| Scan::new("203.0.113.8", 1000 + i, "HTTP", T0, format!("ok {i}")).v1())
        .collect();
    payloads.push(b"not json at all".to_vec());
    payloads.push(b"[1, 2, 3]".to_vec());
    world.ctx.publish(&payloads).await;
    let ingester = world.ingester(&[]).await;
    wait_for_acks(&[&ingester], payloads.len() as u64).await;
    ingester.stop().await;
    assert_eq!(world.ctx.db.count_rows().await, 20);
    let dead = world.ctx.db.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert!(dead.iter().all(|d| d.reason == "invalid_json"), "{dead:#?}");
    world.assert_server_connections_within_the_pool().await;
}

/// A row the database rejects (an index entry too large) is bisected out through pgbouncer: the
/// failed transactions roll back on their server connection, the rest of the batch commits.
#[tokio::test]
async fn a_rejected_row_is_isolated_through_a_transaction_mode_pooler() {
    let world = Pooled::start(2).await;
    let (payloads, poison) = poisoned_batch("pooler poison");
    world.ctx.publish(&payloads).await;
    let ingester = world
        .ingester(&[
            ("MINISCAN_BATCH_MAX_ROWS", "1000"),
            ("MINISCAN_BATCH_MAX_WAIT_MS", "2000"),
        ])
        .await;
    wait_for_acks(&[&ingester], payloads.len() as u64).await;
    ingester.stop().await;
    assert_eq!(world.ctx.db.count_rows().await, 40);
    world
        .ctx
        .db
        .assert_only_dead_letter_is_rejected(&poison)
        .await;
}

/// Three ingesters (four connections each) share one pgbouncer pool of two server connections:
/// their transactions interleave on the same server connections, and the table converges to
/// exactly the newest per key.
#[tokio::test]
async fn three_ingesters_sharing_a_small_pool_converge_to_the_exact_table() {
    let world = Pooled::start(2).await;
    let mut rng = seeded_rng("pooler three ingesters");
    let scans = generate(&mut rng, 500, 4);
    let payloads: Vec<Vec<u8>> = scans.iter().map(|s| s.either_version(&mut rng)).collect();
    world.ctx.publish(&payloads).await;
    let batch = [("MINISCAN_BATCH_MAX_ROWS", "40")];
    let a = world.ingester(&batch).await;
    let b = world.ingester(&batch).await;
    let c = world.ingester(&batch).await;
    wait_for_acks(&[&a, &b, &c], payloads.len() as u64).await;
    for i in [&a, &b, &c] {
        i.stop().await;
    }
    assert_eq!(world.ctx.remaining_messages().await, 0);
    compare_tables(&world.ctx.table().await, &expected_table(&scans)).unwrap_or_else(|e| {
        panic!(
            "{e}\ningester logs:\n{}\n{}\n{}",
            a.log_tail(20),
            b.log_tail(20),
            c.log_tail(20)
        )
    });
    world.assert_server_connections_within_the_pool().await;
}
