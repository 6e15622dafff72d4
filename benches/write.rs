//! Write strategies for the newest-wins upsert, on one fresh PostgreSQL 15
//! cluster with durable commits: `cargo bench --bench write [-- OPTIONS]`.
//!
//! Every strategy gets the same rows (the generator's scans, 20% out of order)
//! in the same batches, collapsed per batch to one row per key, newest wins
//! (`store::newest_per_key`, timed as part of the write path), and starts
//! from an empty table:
//!
//! * `raw_copy`: binary COPY into an unindexed table, one transaction per
//!   batch. No upsert at all: the physical ceiling.
//! * `copy_upsert` (ours): `mini_scan::store::sql::commit` through a
//!   `mini_scan::db::pool` connection: binary COPY into the per-connection
//!   temporary table, then one `INSERT .. SELECT .. ON CONFLICT DO UPDATE`.
//! * `copy_upsert_session`: the same SQL the session-scoped way (before the
//!   pooler-safe path of issue 8): the temporary table created once per
//!   connection, before the clock, and the COPY and the upsert as named
//!   statements cached per connection (`prepare_cached`). Not pooler-safe.
//! * `copy_upsert_session_count`: the same without the upsert's `RETURNING
//!   message_id` (the upsert reports a row count only): the SQL of commit
//!   2e9ce1c, before per-message stored/superseded outcomes.
//! * `unnest_upsert`: one `INSERT .. SELECT FROM UNNEST($1::inet[], ..)`
//!   upsert per batch (what the original Go ingester did).
//! * `row_by_row`: a prepared single-row upsert per row, one transaction per
//!   batch.
//!
//! Then variants of ours (ideas for speed) at the largest batch (for
//! `pg_sink`, the ingester's write stage: 1 partition, 2, the defaults, and
//! the defaults with every scan carrying its dedup-cache entry as the dedup
//! stage hands scans on), and a sweep of batch sizes for ours, UNNEST and raw
//! COPY, drawn in `target/bench/write-throughput.png` (`--plot PATH`;
//! `--plot docs/write-throughput.png` refreshes the docs' figure). Tables go
//! to stdout and to `target/bench/write.{md,csv}`.
//!
//! Options: `--rows N` (default 200000), `--keys N` (default 20000),
//! `--batches 1000,10000`, `--sweep 100,1000,5000,10000,20000` (empty: no
//! sweep), `--no-variants`, `--no-row-by-row`, `--repeat N` (rounds of the
//! variants, reported as the median; default 1), `--full` (the reference
//! run of docs/benchmarks.md: 1M rows over 100k keys, 3 rounds, a 7-point
//! sweep; about 10 minutes), `--only ID,..` (only these strategies:
//! raw_copy, copy_upsert, copy_upsert_session, copy_upsert_session_count,
//! unnest_upsert, row_by_row, pg_sink; e.g. to profile one), `--pooler`
//! (only the pooler-safe path against the session-scoped ones: `copy_upsert`
//! and both `copy_upsert_session` strategies at every batch size, `--repeat`
//! rounds interleaved, no variants or sweep), `--plot PATH`. With no
//! options (as `cargo bench` runs it) it takes about 2 minutes.

#[path = "write/pooler.rs"]
mod pooler;
#[path = "support/mod.rs"]
mod support;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use mini_scan::pipeline::{Envelope, Settle, Settlement, Shutdown, Sink};
use mini_scan::stages::dedup::CommittedOrders;
use mini_scan::stages::write::{PgSink, WriteConfig};
use mini_scan::stages::{Record, Scan, micros_to_time, secs_to_time};
use mini_scan::store::newest_per_key;
use mini_scan::store::sql;
use mini_scan::telemetry::Health;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use support::Postgres;
use tokio_postgres::CopyInSink;

/// The newest-wins conflict clause both hand-written upserts end with.
macro_rules! newest_wins {
    () => {
        "
    ON CONFLICT (ip, port, service) DO UPDATE SET
        last_scanned = EXCLUDED.last_scanned, response = EXCLUDED.response,
        response_raw = EXCLUDED.response_raw, published_at = EXCLUDED.published_at,
        message_id = EXCLUDED.message_id, updated_at = EXCLUDED.updated_at
    WHERE (EXCLUDED.last_scanned, EXCLUDED.published_at, EXCLUDED.message_id)
        > (t.last_scanned, t.published_at, t.message_id)"
    };
}

const UNNEST: &str = concat!(
    "
    INSERT INTO scan_results AS t
        (ip, port, service, last_scanned, response, response_raw, published_at, message_id, updated_at)
    SELECT ip, port, service, last_scanned, response, response_raw, published_at, message_id, now()
    FROM unnest($1::inet[], $2::int4[], $3::text[], $4::timestamptz[], $5::text[], $6::bytea[],
                $7::timestamptz[], $8::text[])
        AS u(ip, port, service, last_scanned, response, response_raw, published_at, message_id)",
    newest_wins!()
);

const ROW: &str = concat!(
    "
    INSERT INTO scan_results AS t
        (ip, port, service, last_scanned, response, response_raw, published_at, message_id, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())",
    newest_wins!()
);

const RAW_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS bench_raw (
        ip inet NOT NULL, port integer NOT NULL, service text NOT NULL,
        last_scanned timestamptz NOT NULL, response text NOT NULL, response_raw bytea,
        published_at timestamptz NOT NULL, message_id text COLLATE \"C\" NOT NULL)";

const RAW_COPY: &str = "COPY bench_raw (ip, port, service, last_scanned, response, response_raw, \
                        published_at, message_id) FROM STDIN (FORMAT binary)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    RawCopy,
    Ours,
    /// Temp table once per connection, named statements (not pooler-safe).
    Session,
    /// `Session` without `RETURNING` (2e9ce1c's SQL).
    SessionCount,
    Unnest,
    RowByRow,
    /// The ingester's whole write stage: `PgSink` (merge, partitions, commit
    /// through `sql::commit`, teaching the dedup cache).
    Sink,
}

impl Strategy {
    fn label(self) -> &'static str {
        match self {
            Strategy::RawCopy => "raw binary COPY, unindexed table (ceiling)",
            Strategy::Ours => "ours: binary COPY → temp table → one upsert",
            Strategy::Session => {
                "ours, session-scoped: temp table per connection, named statements"
            }
            Strategy::SessionCount => "session-scoped, upsert without RETURNING (2e9ce1c)",
            Strategy::Unnest => "one INSERT .. SELECT FROM UNNEST upsert (Go ingester)",
            Strategy::RowByRow => "row-by-row prepared upsert, 1 tx per batch",
            Strategy::Sink => "the ingester's write stage (PgSink)",
        }
    }
    fn id(self) -> &'static str {
        match self {
            Strategy::RawCopy => "raw_copy",
            Strategy::Ours => "copy_upsert",
            Strategy::Session => "copy_upsert_session",
            Strategy::SessionCount => "copy_upsert_session_count",
            Strategy::Unnest => "unnest_upsert",
            Strategy::RowByRow => "row_by_row",
            Strategy::Sink => "pg_sink",
        }
    }
}

/// How a run is organised beyond the strategy: the ideas measured as variants.
#[derive(Clone, Copy, Debug, Default)]
struct Variant {
    /// Connections with `synchronous_commit=off`.
    async_commit: bool,
    /// Drop rows the committed-order cache proves stale before batching (what
    /// the dedup stage does), teaching it after each commit.
    dedup_cache: bool,
    /// Writers on disjoint key partitions (hash of the key).
    partitions: usize,
    /// Batches in flight on one shared key space (the ingester's
    /// `--write-concurrency`).
    concurrency: usize,
    /// `PgSink` only: every scan carries its key's dedup-cache entry, as the
    /// dedup stage hands scans on in an ingester whose cache holds every key
    /// (its steady state with `--cache-capacity` above the keys), so the
    /// write stage learns through the entry. Without it the sink's scans
    /// carry none and every learn looks its key up: the lookup the ingester
    /// makes in its dedup stage.
    carried: bool,
}

struct Measured {
    strategy: Strategy,
    variant: &'static str,
    batch: usize,
    rows: usize,
    secs: f64,
    server_cpu: f64,
    client_cpu: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

struct Options {
    rows: usize,
    keys: u64,
    batches: Vec<usize>,
    sweep: Vec<usize>,
    variants: bool,
    row_by_row: bool,
    repeat: usize,
    /// Run only these strategies (ids), e.g. for profiling one.
    only: Vec<String>,
    /// Only the pooler-safe path against the session-scoped ones.
    pooler: bool,
    /// Where the sweep is drawn.
    plot: std::path::PathBuf,
}

impl Options {
    fn wants(&self, s: Strategy) -> bool {
        self.only.is_empty() || self.only.iter().any(|id| id == s.id())
    }
}

fn list(v: &str) -> anyhow::Result<Vec<usize>> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("not a number: {s}"))
        })
        .collect()
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        rows: 200_000,
        keys: 20_000,
        batches: vec![1_000, 10_000],
        sweep: vec![100, 1_000, 5_000, 10_000, 20_000],
        variants: true,
        row_by_row: true,
        repeat: 1,
        only: Vec::new(),
        pooler: false,
        plot: support::out_dir().join("write-throughput.png"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rows" => o.rows = value()?.parse()?,
            "--keys" => o.keys = value()?.parse()?,
            "--batches" => o.batches = list(&value()?)?,
            "--sweep" => o.sweep = list(&value()?)?,
            "--no-variants" => o.variants = false,
            "--no-row-by-row" => o.row_by_row = false,
            "--repeat" => o.repeat = value()?.parse::<usize>()?.max(1),
            "--only" => o.only = value()?.split(',').map(str::to_string).collect(),
            "--pooler" => o.pooler = true,
            "--plot" => o.plot = value()?.into(),
            "--full" => {
                o.rows = 1_000_000;
                o.keys = 100_000;
                o.repeat = 3;
                o.sweep = vec![100, 500, 1_000, 2_000, 5_000, 10_000, 20_000];
            }
            // `cargo bench` passes `--bench`; criterion-style filters are ignored.
            _ => {}
        }
    }
    Ok(o)
}

type Conn = deadpool_postgres::Client;

async fn write_batch(
    strategy: Strategy,
    client: &mut Conn,
    rows: &[&Scan],
) -> Result<(), tokio_postgres::Error> {
    match strategy {
        Strategy::Ours | Strategy::Sink => sql::commit(client, rows, &[]).await.map(drop),
        Strategy::Session | Strategy::SessionCount => {
            pooler::session_commit(strategy, client, rows).await
        }
        Strategy::RawCopy => {
            let tx = client.transaction().await?;
            let stmt = tx.prepare_cached(RAW_COPY).await?;
            let sink: CopyInSink<Bytes> = tx.copy_in(&stmt).await?;
            sql::copy_rows(sink, rows).await?;
            tx.commit().await
        }
        Strategy::Unnest => {
            let ips: Vec<_> = rows.iter().map(|s| s.key.ip).collect();
            let ports: Vec<i32> = rows.iter().map(|s| i32::from(s.key.port)).collect();
            let services: Vec<&str> = rows.iter().map(|s| s.key.service.as_str()).collect();
            let scanned: Vec<_> = rows
                .iter()
                .map(|s| secs_to_time(s.order.timestamp))
                .collect();
            let responses: Vec<&str> = rows.iter().map(|s| s.response.as_str()).collect();
            let raws: Vec<Option<&[u8]>> = rows.iter().map(|s| s.response_raw.as_deref()).collect();
            let published: Vec<_> = rows
                .iter()
                .map(|s| micros_to_time(s.order.published_micros))
                .collect();
            let ids: Vec<&str> = rows.iter().map(|s| s.order.message_id.as_str()).collect();
            let tx = client.transaction().await?;
            let stmt = tx.prepare_cached(UNNEST).await?;
            tx.execute(
                &stmt,
                &[
                    &ips, &ports, &services, &scanned, &responses, &raws, &published, &ids,
                ],
            )
            .await?;
            tx.commit().await
        }
        Strategy::RowByRow => {
            let tx = client.transaction().await?;
            let stmt = tx.prepare_cached(ROW).await?;
            for s in rows {
                let port = i32::from(s.key.port);
                let (ls, pa) = (
                    secs_to_time(s.order.timestamp),
                    micros_to_time(s.order.published_micros),
                );
                let (service, id) = (s.key.service.as_str(), s.order.message_id.as_str());
                tx.execute(
                    &stmt,
                    &[
                        &s.key.ip,
                        &port,
                        &service,
                        &ls,
                        &s.response,
                        &s.response_raw,
                        &pa,
                        &id,
                    ],
                )
                .await?;
            }
            tx.commit().await
        }
    }
}

/// Writes `rows` in `batch`-sized chunks on one connection; with a cache,
/// drops what it proves stale first and teaches it after each commit.
async fn writer(
    strategy: Strategy,
    pool: &deadpool_postgres::Pool,
    rows: &[&Scan],
    batch: usize,
    cache: Option<&CommittedOrders>,
) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    for chunk in rows.chunks(batch) {
        let kept: Vec<&Scan>;
        let chunk: &[&Scan] = match cache {
            // The dedup stage's test, on borrowed scans.
            Some(c) => {
                kept = chunk
                    .iter()
                    .copied()
                    .filter(|s| c.is_stale(&s.key, &s.order) != Some(true))
                    .collect();
                &kept
            }
            None => chunk,
        };
        let winners: Vec<&Scan> = newest_per_key(chunk)
            .into_iter()
            .map(|i| chunk[i])
            .collect();
        write_batch(strategy, &mut client, &winners).await?;
        if let Some(c) = cache {
            for s in &winners {
                c.committed(s.key.clone(), s.order.clone());
            }
        }
    }
    Ok(())
}

async fn reset(pg: &Postgres) -> anyhow::Result<()> {
    let c = pg.connect().await?;
    c.batch_execute("TRUNCATE scan_results, bench_raw").await?;
    // Start every run with no dirty pages to write back (needs superuser;
    // skipped on a DATABASE_URL without it).
    let _ = c.batch_execute("CHECKPOINT").await;
    Ok(())
}

/// Checks an upsert run's table against the newest row per key.
async fn verify(pg: &Postgres, rows: &[Scan], strategy: Strategy) -> anyhow::Result<()> {
    if strategy == Strategy::RawCopy {
        return Ok(());
    }
    let mut newest: HashMap<&mini_scan::stages::ScanKey, &Scan> = HashMap::new();
    for s in rows {
        let e = newest.entry(&s.key).or_insert(s);
        if s.order > e.order {
            *e = s;
        }
    }
    let want_sum: i64 = newest
        .values()
        .map(|s| s.order.message_id.parse::<i64>().unwrap_or(0))
        .sum();
    let c = pg.connect().await?;
    let row = c
        .query_one(
            "SELECT count(*), coalesce(sum(message_id::bigint), 0)::bigint FROM scan_results",
            &[],
        )
        .await?;
    let (count, sum): (i64, i64) = (row.get(0), row.get(1));
    anyhow::ensure!(
        count as usize == newest.len() && sum == want_sum,
        "{}: the table does not hold the newest row per key ({count} rows, want {})",
        strategy.id(),
        newest.len()
    );
    Ok(())
}

async fn run(
    pg: &Postgres,
    rows: &[Scan],
    strategy: Strategy,
    batch: usize,
    variant: Variant,
    name: &'static str,
) -> anyhow::Result<Measured> {
    reset(pg).await?;
    let mut cfg = mini_scan::db::config(&pg.url)?;
    if variant.async_commit {
        cfg.options("-c synchronous_commit=off");
    }
    let writers = if strategy == Strategy::Sink {
        variant.partitions.max(1) * variant.concurrency.max(1)
    } else {
        variant.partitions.max(variant.concurrency).max(1)
    };
    let pool = mini_scan::db::pool(cfg, writers);
    // Connect (and, session-scoped, create the temporary tables) before the
    // clock starts.
    {
        let mut held = Vec::new();
        for _ in 0..writers {
            let c = pool.get().await?;
            if matches!(strategy, Strategy::Session | Strategy::SessionCount) {
                c.batch_execute(pooler::SESSION_STAGE_TABLE).await?;
            }
            held.push(c);
        }
    }
    let refs: Vec<&Scan> = rows.iter().collect();
    let cache = variant
        .dedup_cache
        .then(|| CommittedOrders::new(rows.len() as u64));
    let partitions: Vec<Vec<&Scan>> = if variant.partitions > 1 && strategy != Strategy::Sink {
        let mut parts = vec![Vec::new(); variant.partitions];
        for s in &refs {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(&s.key);
            parts[(h % variant.partitions as u64) as usize].push(*s);
        }
        parts
    } else {
        vec![refs.clone()]
    };
    // The real sink's input and cache, built before the clock starts.
    let orders = CommittedOrders::new(200_000);
    if variant.carried {
        // What the dedup stage would have learned from earlier batches: every
        // key, with an order no newer than any of its scans.
        for s in rows {
            let mut oldest = s.order.clone();
            oldest.timestamp = i64::MIN;
            orders.committed(s.key.clone(), oldest);
        }
    }
    let sink_batches: Vec<Vec<Envelope<Record, ()>>> = if strategy == Strategy::Sink {
        rows.chunks(batch)
            .map(|c| {
                c.iter()
                    .map(|s| {
                        let mut s = s.clone();
                        if variant.carried {
                            s.cached = orders.find(&s.key);
                        }
                        Envelope::new(Record::Scan(s), ())
                    })
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let server_before = pg.pid().map(support::tree_cpu);
    let client_before = support::process_cpu();
    let started = Instant::now();
    if strategy == Strategy::Sink {
        let sink = PgSink::new(
            pool.clone(),
            orders,
            Health::new(),
            Shutdown::new(),
            WriteConfig {
                partitions: variant.partitions.max(1),
                retry_initial: Duration::from_millis(50),
                retry_max: Duration::from_secs(1),
            },
        );
        let settled: usize = futures::stream::iter(sink_batches)
            .map(|b| Sink::<()>::write(&sink, b))
            .buffered(variant.concurrency.max(1))
            .map(|out| {
                out.iter()
                    .filter(|e| e.payload.settlement() == Settlement::Ack)
                    .count()
            })
            .fold(0, |a, n| async move { a + n })
            .await;
        anyhow::ensure!(
            settled == rows.len(),
            "the sink acked {settled} of {} rows",
            rows.len()
        );
    } else if variant.concurrency > 1 {
        // Batches of one key space, `concurrency` in flight, each on its own
        // connection (the ingester's write stage).
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(refs.chunks(batch))
            .map(|chunk| {
                let pool = &pool;
                async move {
                    let winners: Vec<&Scan> = newest_per_key(chunk)
                        .into_iter()
                        .map(|i| chunk[i])
                        .collect();
                    let mut client = pool.get().await?;
                    write_batch(strategy, &mut client, &winners).await?;
                    Ok(())
                }
            })
            .buffered(variant.concurrency)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<()>>()?;
    } else {
        let all = futures::future::join_all(
            partitions
                .iter()
                .map(|part| writer(strategy, &pool, part, batch, cache.as_ref())),
        )
        .await;
        all.into_iter().collect::<anyhow::Result<()>>()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let client_cpu = (support::process_cpu() - client_before).as_secs_f64();
    let server_cpu = match (server_before, pg.pid()) {
        (Some(b), Some(pid)) => support::tree_cpu(pid).saturating_sub(b).as_secs_f64(),
        _ => f64::NAN,
    };
    verify(pg, rows, strategy).await?;
    let m = Measured {
        strategy,
        variant: name,
        batch,
        rows: rows.len(),
        secs,
        server_cpu,
        client_cpu,
    };
    eprintln!(
        "  {:<14} {:<22} batch {:>6}: {:>9.0} rows/s ({:.2} s, server {:.2} cores, client {:.2} cores)",
        strategy.id(),
        name,
        batch,
        m.rate(),
        secs,
        server_cpu / secs,
        client_cpu / secs
    );
    Ok(m)
}

fn main() -> anyhow::Result<()> {
    support::block_on(bench(options()?))
}

async fn bench(o: Options) -> anyhow::Result<()> {
    eprintln!(
        "write bench: {} rows over {} keys; machine: {}",
        o.rows,
        o.keys,
        support::machine()
    );
    let pg = Postgres::start().await?;
    pg.connect().await?.batch_execute(RAW_TABLE).await?;
    let version: String = pg
        .connect()
        .await?
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);
    let rows = support::scans(o.rows, o.keys, 0.2, 1);
    let total_started = Instant::now();
    if o.pooler {
        return pooler::run(&o, &pg, &rows, &version).await;
    }

    // 1. The four strategies at each batch size.
    let mut main: Vec<Measured> = Vec::new();
    for &batch in &o.batches {
        for s in [
            Strategy::RawCopy,
            Strategy::Ours,
            Strategy::Unnest,
            Strategy::RowByRow,
        ] {
            if (s == Strategy::RowByRow && !o.row_by_row) || !o.wants(s) {
                continue;
            }
            main.push(run(&pg, &rows, s, batch, Variant::default(), "baseline").await?);
        }
    }

    // 2. Ideas, at the largest batch size, `repeat` rounds interleaved.
    let mut variants: Vec<Measured> = Vec::new();
    if o.variants
        && let Some(&batch) = o.batches.iter().max()
    {
        let base = Variant::default();
        let two = Variant {
            partitions: 2,
            ..base
        };
        let list: [(Strategy, Variant, &'static str); 12] = [
            (Strategy::RawCopy, base, "baseline"),
            (Strategy::Unnest, base, "baseline"),
            (Strategy::Ours, base, "baseline"),
            (
                Strategy::Ours,
                Variant {
                    dedup_cache: true,
                    ..base
                },
                "dedup cache",
            ),
            (
                Strategy::Ours,
                Variant {
                    async_commit: true,
                    ..base
                },
                "synchronous_commit=off",
            ),
            (Strategy::Ours, two, "2 writers, disjoint keys"),
            (
                Strategy::Ours,
                Variant {
                    concurrency: 2,
                    ..base
                },
                "2 in flight, shared keys",
            ),
            (Strategy::Unnest, two, "2 writers, disjoint keys"),
            (Strategy::Sink, base, "1 partition"),
            (Strategy::Sink, two, "2 partitions"),
            (
                Strategy::Sink,
                Variant {
                    concurrency: 2,
                    ..two
                },
                "2 partitions x 2 in flight (default)",
            ),
            (
                Strategy::Sink,
                Variant {
                    concurrency: 2,
                    carried: true,
                    ..two
                },
                "default, entries carried",
            ),
        ];
        for round in 0..o.repeat {
            eprintln!(" variants, round {} of {}", round + 1, o.repeat);
            for (s, v, name) in list.into_iter().filter(|(s, _, _)| o.wants(*s)) {
                variants.push(run(&pg, &rows, s, batch, v, name).await?);
            }
        }
    }

    // 3. The sweep over batch sizes (reusing the measurements above).
    let mut sweep: Vec<Measured> = Vec::new();
    for &batch in &o.sweep {
        for s in [Strategy::RawCopy, Strategy::Ours, Strategy::Unnest] {
            sweep.push(run(&pg, &rows, s, batch, Variant::default(), "baseline").await?);
        }
    }

    let report = render(
        &o,
        &version,
        &main,
        &variants,
        &sweep,
        total_started.elapsed(),
    );
    println!("{report}");
    let dir = support::out_dir();
    std::fs::write(dir.join("write.md"), &report)?;
    std::fs::write(
        dir.join("write.csv"),
        csv(main.iter().chain(&variants).chain(&sweep)),
    )?;
    eprintln!(
        "wrote {} and {}",
        dir.join("write.md").display(),
        dir.join("write.csv").display()
    );
    if !sweep.is_empty() {
        match plot(&o.plot, &sweep, &o) {
            Ok(()) => eprintln!("wrote {}", o.plot.display()),
            Err(e) => eprintln!("no plot: {e:#}"),
        }
    }
    support::summary("write", &summary(&main, &variants));
    Ok(())
}

/// Ours and the whole write stage against UNNEST, at each batch size of the
/// main table and at the variants' batch size (medians over the rounds).
fn summary(main: &[Measured], variants: &[Measured]) -> Vec<String> {
    let median = |s: Strategy, variant: &str| {
        let mut r: Vec<f64> = variants
            .iter()
            .filter(|m| m.strategy == s && m.variant == variant)
            .map(Measured::rate)
            .collect();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied()
    };
    let mut lines = Vec::new();
    for m in main.iter().filter(|m| m.strategy == Strategy::Ours) {
        if let Some(u) = main
            .iter()
            .find(|u| u.strategy == Strategy::Unnest && u.batch == m.batch)
        {
            lines.push(format!(
                "ours (COPY + upsert) {:.2}x UNNEST at {}-row batches",
                m.rate() / u.rate(),
                m.batch
            ));
        }
    }
    if let (Some(sink), Some(unnest)) = (
        median(Strategy::Sink, "2 partitions x 2 in flight (default)"),
        median(Strategy::Unnest, "baseline"),
    ) {
        lines.push(format!(
            "the write stage at its defaults {:.2}x UNNEST at {}-row batches ({sink:.0} rows/s)",
            sink / unnest,
            variants[0].batch
        ));
    }
    lines
}

fn ceiling(all: &[Measured], batch: usize) -> Option<f64> {
    all.iter()
        .find(|m| m.strategy == Strategy::RawCopy && m.batch == batch)
        .map(Measured::rate)
}

fn render(
    o: &Options,
    version: &str,
    main: &[Measured],
    variants: &[Measured],
    sweep: &[Measured],
    took: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Write strategies: {} rows over {} keys (PostgreSQL {version}, fsync=on)\n\nMachine: {}. Bench took {:.0} s.\n",
        o.rows,
        o.keys,
        support::machine(),
        took.as_secs_f64()
    );
    if !main.is_empty() {
        let _ = write!(s, "| strategy |");
        for b in &o.batches {
            let _ = write!(s, " {b}-row batches, rows/s | × ceiling | × UNNEST |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &o.batches {
            let _ = write!(s, "---:|---:|---:|");
        }
        s.push('\n');
        for strategy in [
            Strategy::RawCopy,
            Strategy::Ours,
            Strategy::Unnest,
            Strategy::RowByRow,
        ] {
            if !main.iter().any(|m| m.strategy == strategy) {
                continue;
            }
            let _ = write!(s, "| {} |", strategy.label());
            for &b in &o.batches {
                let m = main.iter().find(|m| m.strategy == strategy && m.batch == b);
                let unnest = main
                    .iter()
                    .find(|m| m.strategy == Strategy::Unnest && m.batch == b);
                match (m, ceiling(main, b)) {
                    (Some(m), Some(c)) => {
                        let _ = write!(s, " {:.0} | {:.2} |", m.rate(), m.rate() / c);
                        let _ = write!(
                            s,
                            " {} |",
                            unnest.map_or("".into(), |u| format!("{:.2}", m.rate() / u.rate()))
                        );
                    }
                    _ => {
                        let _ = write!(s, " | | |");
                    }
                }
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\nCPU while writing (cores busy = CPU seconds / wall seconds):\n"
        );
        let _ = writeln!(
            s,
            "| strategy | batch | PostgreSQL server cores | bench process cores |\n|---|---:|---:|---:|"
        );
        for m in main {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} |",
                m.strategy.id(),
                m.batch,
                m.server_cpu / m.secs,
                m.client_cpu / m.secs
            );
        }
    }
    if !variants.is_empty() {
        let b = variants[0].batch;
        // The median of each (strategy, variant) over the rounds, in list order.
        let mut keys: Vec<(Strategy, &str)> = Vec::new();
        for m in variants {
            if !keys.contains(&(m.strategy, m.variant)) {
                keys.push((m.strategy, m.variant));
            }
        }
        let stats = |st: Strategy, name: &str| {
            let runs: Vec<&Measured> = variants
                .iter()
                .filter(|m| m.strategy == st && m.variant == name)
                .collect();
            let mut r: Vec<f64> = runs.iter().map(|m| m.rate()).collect();
            r.sort_by(f64::total_cmp);
            let server =
                runs.iter().map(|m| m.server_cpu / m.secs).sum::<f64>() / runs.len().max(1) as f64;
            match r.len() {
                0 => (f64::NAN, f64::NAN, f64::NAN, server),
                // Of an even count, the mean of the middle two.
                n => ((r[(n - 1) / 2] + r[n / 2]) / 2.0, r[0], r[n - 1], server),
            }
        };
        let ceil = stats(Strategy::RawCopy, "baseline").0;
        let unnest = stats(Strategy::Unnest, "baseline").0;
        let ours = stats(Strategy::Ours, "baseline").0;
        let _ = writeln!(
            s,
            "\n### Variants at {b}-row batches (same run; median of {} interleaved rounds)\n\n\
             | strategy | variant | rows/s (median) | min – max | × ceiling | × UNNEST | × ours | PostgreSQL cores |\n\
             |---|---|---:|---:|---:|---:|---:|---:|",
            o.repeat
        );
        for (st, name) in keys {
            let (med, lo, hi, server) = stats(st, name);
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} – {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                st.id(),
                name,
                med,
                lo,
                hi,
                med / ceil,
                med / unnest,
                med / ours,
                server
            );
        }
    }
    if !sweep.is_empty() {
        let _ = writeln!(
            s,
            "\n### Batch-size sweep\n\n| batch rows | raw COPY | ours | UNNEST | ours × UNNEST | ours × ceiling |\n|---:|---:|---:|---:|---:|---:|"
        );
        for &b in &o.sweep {
            let get = |st| {
                sweep
                    .iter()
                    .find(|m| m.strategy == st && m.batch == b)
                    .map(Measured::rate)
                    .unwrap_or(f64::NAN)
            };
            let (c, ours, un) = (
                get(Strategy::RawCopy),
                get(Strategy::Ours),
                get(Strategy::Unnest),
            );
            let _ = writeln!(
                s,
                "| {b} | {c:.0} | {ours:.0} | {un:.0} | {:.2} | {:.2} |",
                ours / un,
                ours / c
            );
        }
    }
    s
}

fn csv<'a>(all: impl Iterator<Item = &'a Measured>) -> String {
    let mut s = String::from(
        "strategy,variant,batch_rows,rows,seconds,rows_per_sec,server_cpu_s,client_cpu_s\n",
    );
    for m in all {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.0},{:.3},{:.3}",
            m.strategy.id(),
            m.variant,
            m.batch,
            m.rows,
            m.secs,
            m.rate(),
            m.server_cpu,
            m.client_cpu
        );
    }
    s
}

fn plot(path: &std::path::Path, sweep: &[Measured], o: &Options) -> anyhow::Result<()> {
    use plotters::prelude::*;
    support::plot_font()?;
    let (lo, hi) = (
        *o.sweep.iter().min().unwrap_or(&100) as f64,
        *o.sweep.iter().max().unwrap_or(&20_000) as f64,
    );
    let top = sweep.iter().map(|m| m.rate() / 1000.0).fold(0.0, f64::max) * 1.1;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Newest-wins write throughput, {} rows over {} keys (PostgreSQL, fsync=on)",
                o.rows, o.keys
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("rows per batch (log scale)")
        .y_desc("thousand rows per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let series = [
        (
            Strategy::RawCopy,
            RGBColor(150, 150, 150),
            "raw binary COPY,  no index  (ceiling)",
        ),
        (
            Strategy::Ours,
            RGBColor(31, 119, 180),
            "ours:  COPY → temp table → upsert",
        ),
        (
            Strategy::Unnest,
            RGBColor(214, 39, 40),
            "INSERT ..  SELECT  FROM  UNNEST  upsert",
        ),
    ];
    for (st, color, name) in series {
        let pts: Vec<(f64, f64)> = o
            .sweep
            .iter()
            .filter_map(|&b| sweep.iter().find(|m| m.strategy == st && m.batch == b))
            .map(|m| (m.batch as f64, m.rate() / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
