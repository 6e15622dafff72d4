//! The write stage as `scan_results` grows: `cargo bench --bench growth [-- OPTIONS]`.
//!
//! One fresh PostgreSQL cluster with durable commits and default checkpoint
//! settings. The table is grown, by binary COPY straight into `scan_results`
//! (one observation per key, keys in index order), to each size in turn; at
//! each size the ingester's whole write stage (`PgSink`, at the ingester's
//! defaults: 1,000-row batches, 2 in flight, 2 key partitions) writes a steady
//! mix: updates of random existing keys, some new keys, and out-of-order
//! scans (older than the stored row, so superseded). Reported per size:
//! rows/s, p50/p99 batch commit time, WAL bytes per row (from
//! `pg_current_wal_lsn()`), PostgreSQL's CPU, table and index size, and the
//! share of HOT updates (`pg_stat_user_tables`). Tables go to stdout and to
//! `target/bench/growth.{md,csv}`.
//!
//! Options: `--sizes 1000000,10000000,50000000`, `--measure-rows N` (rows
//! written at each size, default 300000), `--batch N` (default 1000),
//! `--new-ratio F` (default 0.1), `--out-of-order F` (default 0.2),
//! `--response-bytes N` (default 64), `--set name=value` (a server setting,
//! repeatable, e.g. `--set wal_compression=lz4`), `--seed N`.

#[path = "support/mod.rs"]
mod support;

use futures::{StreamExt, pin_mut};
use mini_scan::config::defaults;
use mini_scan::pipeline::{Envelope, Settle, Settlement, Shutdown, Sink};
use mini_scan::stages::dedup::CommittedOrders;
use mini_scan::stages::write::{PgSink, WriteConfig};
use mini_scan::stages::{Order, Record, Scan, ScanKey, micros_to_time, secs_to_time};
use mini_scan::telemetry::Health;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use support::Postgres;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// The timestamp of every loaded row; updates are newer, out-of-order scans older.
const T0: i64 = 1_700_000_000;
const PORTS: [u16; 4] = [22, 80, 443, 8080];
/// Rows per COPY transaction while growing.
const LOAD_CHUNK: u64 = 500_000;

struct Options {
    sizes: Vec<u64>,
    measure_rows: usize,
    batch: usize,
    new_ratio: f64,
    out_of_order: f64,
    response_bytes: usize,
    settings: Vec<(String, String)>,
    seed: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        sizes: vec![1_000_000, 10_000_000, 50_000_000],
        measure_rows: 300_000,
        batch: defaults::BATCH_MAX_ROWS as usize,
        new_ratio: 0.1,
        out_of_order: 0.2,
        response_bytes: 64,
        settings: Vec::new(),
        seed: 1,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--sizes" => {
                o.sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--measure-rows" => o.measure_rows = value()?.parse()?,
            "--batch" => o.batch = value()?.parse()?,
            "--new-ratio" => o.new_ratio = value()?.parse()?,
            "--out-of-order" => o.out_of_order = value()?.parse()?,
            "--response-bytes" => o.response_bytes = value()?.parse()?,
            "--seed" => o.seed = value()?.parse()?,
            "--set" => {
                let v = value()?;
                let (name, val) = v
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--set takes name=value, not {v:?}"))?;
                o.settings.push((name.to_owned(), val.to_owned()));
            }
            other => anyhow::bail!("unknown option {other:?}"),
        }
    }
    anyhow::ensure!(o.sizes.windows(2).all(|w| w[0] < w[1]), "--sizes must grow");
    anyhow::ensure!(
        o.batch > 0 && o.measure_rows > 0,
        "--batch and --measure-rows must be > 0"
    );
    Ok(o)
}

/// Key number `k`: an IPv4 address in 10.0.0.0/8 and one of four ports,
/// so keys in number order are in primary-key order.
fn key(k: u64) -> ScanKey {
    ScanKey {
        ip: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (k >> 2) as u32)),
        port: PORTS[(k & 3) as usize],
        service: "HTTP".into(),
    }
}

fn response(k: u64, ts: i64, bytes: usize) -> String {
    let mut r = format!("HTTP/1.1 200 OK key={k} ts={ts} ");
    while r.len() < bytes {
        r.push('x');
    }
    r
}

/// Grows `scan_results` from `from` to `to` keys by binary COPY.
async fn grow(pg: &Postgres, from: u64, to: u64, response_bytes: usize) -> anyhow::Result<()> {
    let mut client = pg.connect().await?;
    let types = [
        Type::INET,
        Type::INT4,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::BYTEA,
        Type::TIMESTAMPTZ,
        Type::TEXT,
    ];
    let mut start = from;
    while start < to {
        let end = (start + LOAD_CHUNK).min(to);
        let tx = client.transaction().await?;
        let sink = tx
            .copy_in(
                "COPY scan_results (ip, port, service, last_scanned, response, response_raw, \
                 published_at, message_id) FROM STDIN BINARY",
            )
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for k in start..end {
            let key = key(k);
            let id = format!("{}", 1_000_000_000_000u64 + k);
            writer
                .as_mut()
                .write(&[
                    &key.ip,
                    &i32::from(key.port),
                    &key.service,
                    &secs_to_time(T0),
                    &response(k, T0, response_bytes),
                    &None::<Vec<u8>>,
                    &micros_to_time(T0 * 1_000_000),
                    &id,
                ])
                .await?;
        }
        writer.finish().await?;
        tx.commit().await?;
        start = end;
    }
    // Separate statements: VACUUM cannot run in the implicit transaction of
    // a multi-statement query.
    client.batch_execute("VACUUM (ANALYZE) scan_results").await?;
    client.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// The steady mix written at one size: `rows` scans, in arrival order.
fn mix(
    o: &Options,
    size: u64,
    next_new: &mut u64,
    next_id: &mut u64,
    rng: &mut StdRng,
) -> Vec<Scan> {
    (0..o.measure_rows)
        .map(|_| {
            let (k, ts) = if rng.random_bool(o.new_ratio) {
                *next_new += 1;
                (*next_new - 1, T0 + 1)
            } else if rng.random_bool(o.out_of_order) {
                (rng.random_range(0..size), T0 - 1)
            } else {
                (rng.random_range(0..size), T0 + 1 + *next_id as i64)
            };
            *next_id += 1;
            Scan {
                key: key(k),
                order: Order {
                    timestamp: ts,
                    published_micros: T0 * 1_000_000 + *next_id as i64,
                    message_id: format!("{}", 2_000_000_000_000u64 + *next_id),
                },
                response: response(k, ts, o.response_bytes),
                response_raw: None,
                payload: Default::default(),
            }
        })
        .collect()
}

/// What one size measured.
struct Point {
    size: u64,
    rows: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    wal_per_row: f64,
    server_cores: f64,
    table_bytes: i64,
    index_bytes: i64,
    hot_share: f64,
    load_secs: f64,
}

struct Counters {
    wal: String,
    updates: i64,
    hot: i64,
}

async fn counters(pg: &Postgres) -> anyhow::Result<Counters> {
    let c = pg.connect().await?;
    let row = c
        .query_one(
            "SELECT pg_current_wal_lsn()::text, n_tup_upd, n_tup_hot_upd \
             FROM pg_stat_user_tables WHERE relname = 'scan_results'",
            &[],
        )
        .await?;
    Ok(Counters {
        wal: row.get(0),
        updates: row.get(1),
        hot: row.get(2),
    })
}

/// Writes `scans` through a fresh `PgSink` at the ingester's defaults.
async fn measure(
    pg: &Postgres,
    o: &Options,
    size: u64,
    scans: Vec<Scan>,
    load_secs: f64,
) -> anyhow::Result<Point> {
    let rows = scans.len();
    let batches: Vec<Vec<Envelope<Record, ()>>> = scans
        .chunks(o.batch)
        .map(|c| {
            c.iter()
                .map(|s| Envelope::new(Record::Scan(s.clone()), ()))
                .collect()
        })
        .collect();
    drop(scans);
    let partitions = defaults::WRITE_PARTITIONS as usize;
    let concurrency = defaults::WRITE_CONCURRENCY as usize;
    let pool = mini_scan::db::pool(mini_scan::db::config(&pg.url)?, partitions * concurrency);
    {
        let mut held = Vec::new();
        for _ in 0..partitions * concurrency {
            held.push(pool.get().await?);
        }
    }
    let before = counters(pg).await?;
    let server_before = pg.pid().map(support::tree_cpu);
    let started = Instant::now();
    let sink = PgSink::new(
        pool.clone(),
        CommittedOrders::new(defaults::CACHE_CAPACITY),
        Health::new(),
        Shutdown::new(),
        WriteConfig {
            partitions,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(1),
        },
    );
    let results: Vec<(usize, Duration)> = futures::stream::iter(batches)
        .map(|b| {
            let sink = &sink;
            async move {
                let t = Instant::now();
                let out = Sink::<()>::write(sink, b).await;
                let acked = out
                    .iter()
                    .filter(|e| e.payload.settlement() == Settlement::Ack)
                    .count();
                (acked, t.elapsed())
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let server_cpu = match (server_before, pg.pid()) {
        (Some(b), Some(pid)) => support::tree_cpu(pid).saturating_sub(b).as_secs_f64(),
        _ => f64::NAN,
    };
    let acked: usize = results.iter().map(|r| r.0).sum();
    anyhow::ensure!(acked == rows, "the sink acked {acked} of {rows} rows");
    // Closing the connections flushes their table statistics.
    drop(sink);
    pool.close();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = counters(pg).await?;
    let c = pg.connect().await?;
    let wal: f64 = c
        .query_one(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::float8",
            &[&after.wal, &before.wal],
        )
        .await?
        .get(0);
    let sizes = c
        .query_one(
            "SELECT pg_table_size('scan_results'), pg_indexes_size('scan_results')",
            &[],
        )
        .await?;
    let mut times: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let updates = (after.updates - before.updates).max(1);
    Ok(Point {
        size,
        rows,
        secs,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        wal_per_row: wal / rows as f64,
        server_cores: server_cpu / secs,
        table_bytes: sizes.get(0),
        index_bytes: sizes.get(1),
        hot_share: (after.hot - before.hot) as f64 / updates as f64,
        load_secs,
    })
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(o))
}

async fn bench(o: Options) -> anyhow::Result<()> {
    eprintln!(
        "growth bench: sizes {:?}, {} rows measured at each; machine: {}",
        o.sizes,
        o.measure_rows,
        support::machine()
    );
    let pg = Postgres::start_with(&o.settings).await?;
    let version: String = pg
        .connect()
        .await?
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);
    let mut rng = StdRng::seed_from_u64(o.seed);
    // Keys 0..next_new exist: the loaded ones and the new keys written since.
    let mut next_new = 0u64;
    let mut next_id = 0u64;
    let mut points = Vec::new();
    for &size in &o.sizes {
        let t = Instant::now();
        if next_new < size {
            eprintln!("  growing to {size} keys");
            grow(&pg, next_new, size, o.response_bytes).await?;
            next_new = size;
        }
        let load_secs = t.elapsed().as_secs_f64();
        let scans = mix(&o, size, &mut next_new, &mut next_id, &mut rng);
        let p = measure(&pg, &o, size, scans, load_secs).await?;
        eprintln!(
            "  {:>11} keys: {:>8.0} rows/s, batch p50 {:.1} ms p99 {:.1} ms, {:.0} WAL B/row, \
             server {:.2} cores, HOT {:.0}%",
            p.size,
            p.rows as f64 / p.secs,
            p.p50_ms,
            p.p99_ms,
            p.wal_per_row,
            p.server_cores,
            p.hot_share * 100.0
        );
        points.push(p);
    }
    report(&o, &version, &points)
}

fn report(o: &Options, version: &str, points: &[Point]) -> anyhow::Result<()> {
    let gib = |b: i64| b as f64 / (1u64 << 30) as f64;
    let first = points.first().map_or(1.0, |p| p.rows as f64 / p.secs);
    let mut md = format!(
        "PostgreSQL {version}; {} rows written per size in {}-row batches ({:.0}% new keys, \
         {:.0}% out of order); settings: {:?}\n\n\
         | keys | rows/s | vs first | batch p50 ms | batch p99 ms | WAL B/row | PG cores | table GiB | index GiB | HOT | grow s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        o.measure_rows,
        o.batch,
        o.new_ratio * 100.0,
        o.out_of_order * 100.0,
        o.settings
    );
    let mut csv = String::from(
        "keys,rows_per_s,p50_ms,p99_ms,wal_bytes_per_row,pg_cores,table_bytes,index_bytes,hot_share,grow_s\n",
    );
    for p in points {
        let rate = p.rows as f64 / p.secs;
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2}× | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.0} |",
            p.size,
            rate,
            rate / first,
            p.p50_ms,
            p.p99_ms,
            p.wal_per_row,
            p.server_cores,
            gib(p.table_bytes),
            gib(p.index_bytes),
            p.hot_share * 100.0,
            p.load_secs
        );
        let _ = writeln!(
            csv,
            "{},{rate:.0},{:.2},{:.2},{:.1},{:.3},{},{},{:.4},{:.1}",
            p.size,
            p.p50_ms,
            p.p99_ms,
            p.wal_per_row,
            p.server_cores,
            p.table_bytes,
            p.index_bytes,
            p.hot_share,
            p.load_secs
        );
    }
    println!("{md}");
    let dir = support::out_dir();
    std::fs::write(dir.join("growth.md"), &md)?;
    std::fs::write(dir.join("growth.csv"), &csv)?;
    Ok(())
}
