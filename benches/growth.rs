//! The write stage as `scan_results` grows: `cargo bench --bench growth [-- OPTIONS]`.
//!
//! One fresh PostgreSQL cluster with durable commits. The table is grown, by
//! `INSERT .. SELECT FROM generate_series` on the server (one observation per
//! key, keys in index order), to each size in turn, at PostgreSQL's default
//! settings. At each size every variant (a set of server settings and a batch
//! size) is measured in turn, in an order that rotates from size to size:
//! its settings are applied with `ALTER SYSTEM` and a restart, `pg_prewarm`
//! reads the index and then the heap into shared buffers (as far as they
//! hold), a `CHECKPOINT` is taken, and the
//! ingester's whole write stage (`PgSink`, at the ingester's defaults unless
//! the variant sets `batch`: 1,000-row batches, 2 in flight, 2 key
//! partitions) writes a steady mix: updates of random existing keys, some new
//! keys, and out-of-order scans (older than the stored row, so superseded).
//!
//! Reported per size and variant: rows/s, p50/p99 batch commit time, WAL
//! bytes per row (`pg_current_wal_lsn()`), PostgreSQL's CPU, blocks read into
//! shared buffers and kB read from disk per row, checkpoints during the
//! window, what the client backends waited on (`pg_stat_activity`, sampled
//! every 50 ms), table and index size, and the share of HOT updates. Tables
//! go to stdout and to `target/bench/growth.{md,csv}`, and rows/s and WAL/row
//! against table size are drawn (`--plot`).
//!
//! Options: `--sizes N,N,..` (default 1000000,10000000: the first knee, in
//! a few minutes; the documented curve adds 50000000), `--measure-rows N`
//! (rows written per size and variant, default 200000), `--variant
//! NAME[:k=v,..]` (repeatable; `k` a server setting, or `batch` for rows per
//! batch; default two variants: `default`, PostgreSQL's own settings, and
//! `recommended`, docs/SCALING.md's, so a plain `cargo bench` shows the
//! curve of each beside the other), `--batch N` (default for every variant:
//! the ingester's), `--new-ratio F` (0.1), `--out-of-order F` (0.2),
//! `--response-bytes N` (64), `--seed N`, `--plot PATH` (default
//! `target/bench/growth.png`; `--plot docs/scaling.png` refreshes the docs'
//! figure), `--windows N` (1).
//!
//! With `--windows N` every variant writes N windows in a row after its
//! checkpoint, with no restart or checkpoint of ours between them, and a
//! second table reports each window's WAL per row and the running average
//! since the checkpoint: how WAL per row falls as the pages that paid their
//! full-page image fill up, i.e. (until PostgreSQL checkpoints on its own,
//! counted per window) the steady state for a checkpoint interval of that
//! many rows. The first table and the plot use each variant's first
//! window only.

#[path = "support/mod.rs"]
mod support;

use futures::StreamExt;
use mini_scan::config::defaults;
use mini_scan::pipeline::{Envelope, Settle, Settlement, Shutdown, Sink};
use mini_scan::stages::dedup::CommittedOrders;
use mini_scan::stages::write::{PgSink, WriteConfig};
use mini_scan::stages::{Order, Record, Scan, ScanKey};
use mini_scan::telemetry::Health;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::Postgres;

/// The timestamp of every loaded row; updates are newer, out-of-order scans older.
const T0: i64 = 1_700_000_000;
const PORTS: [u16; 4] = [22, 80, 443, 8080];
/// Rows per `INSERT .. SELECT` transaction while growing.
const LOAD_CHUNK: u64 = 2_000_000;
/// How often `pg_stat_activity` is sampled during a window.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Server settings and a batch size, measured at every size.
#[derive(Clone)]
struct Variant {
    name: String,
    settings: Vec<(String, String)>,
    batch: usize,
    /// The table layout: `plain` (the migration's table), `ffN` (fillfactor
    /// N) or `hashN` (N hash partitions by ip, each with the migration's
    /// fillfactor).
    table: String,
}

struct Options {
    sizes: Vec<u64>,
    measure_rows: usize,
    variants: Vec<Variant>,
    new_ratio: f64,
    out_of_order: f64,
    response_bytes: usize,
    seed: u64,
    plot: std::path::PathBuf,
    /// Windows written in a row per size and variant, after one checkpoint.
    windows: usize,
}

/// `NAME` or `NAME:k=v,k=v`; `batch` is the client's rows per batch, any
/// other `k` a server setting.
fn variant(spec: &str, batch: usize) -> anyhow::Result<Variant> {
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    anyhow::ensure!(!name.is_empty(), "--variant needs a name: {spec:?}");
    let mut v = Variant {
        name: name.to_owned(),
        settings: Vec::new(),
        batch,
        table: "plain".to_owned(),
    };
    for kv in rest.split(',').filter(|kv| !kv.is_empty()) {
        let (k, val) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--variant {spec:?}: {kv:?} is not name=value"))?;
        anyhow::ensure!(
            k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "--variant {spec:?}: {k:?} is not a setting name"
        );
        if k == "batch" {
            v.batch = val.parse()?;
            anyhow::ensure!(v.batch > 0, "--variant {spec:?}: batch must be > 0");
        } else if k == "table" {
            layout_ddl(val)?;
            v.table = val.to_owned();
        } else {
            v.settings.push((k.to_owned(), val.to_owned()));
        }
    }
    Ok(v)
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        sizes: vec![1_000_000, 10_000_000],
        measure_rows: 200_000,
        variants: Vec::new(),
        new_ratio: 0.1,
        out_of_order: 0.2,
        response_bytes: 64,
        seed: 1,
        plot: support::out_dir().join("growth.png"),
        windows: 1,
    };
    let mut batch = defaults::BATCH_MAX_ROWS as usize;
    let mut specs = Vec::new();
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
            "--batch" => batch = value()?.parse()?,
            "--variant" => specs.push(value()?),
            "--new-ratio" => o.new_ratio = value()?.parse()?,
            "--out-of-order" => o.out_of_order = value()?.parse()?,
            "--response-bytes" => o.response_bytes = value()?.parse()?,
            "--seed" => o.seed = value()?.parse()?,
            "--plot" => o.plot = value()?.into(),
            "--windows" => o.windows = value()?.parse()?,
            other => anyhow::bail!("unknown option {other:?}"),
        }
    }
    if specs.is_empty() {
        specs.push("default".to_owned());
        let recommended: Vec<String> = support::recommended_settings()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        specs.push(format!("recommended:{}", recommended.join(",")));
    }
    o.variants = specs
        .iter()
        .map(|s| variant(s, batch))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(o.sizes.windows(2).all(|w| w[0] < w[1]), "--sizes must grow");
    anyhow::ensure!(
        batch > 0 && o.measure_rows > 0 && o.windows > 0,
        "--batch, --measure-rows and --windows must be > 0"
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

/// Grows `scan_results` from `from` to `to` keys, generated by the server
/// itself (no client in the way): key `k` as [`key`] makes it, at [`T0`].
async fn grow(pg: &Postgres, from: u64, to: u64, response_bytes: usize) -> anyhow::Result<()> {
    let client = pg.connect().await?;
    let mut start = from;
    while start < to {
        let end = (start + LOAD_CHUNK).min(to);
        client
            .execute(
                "INSERT INTO scan_results (ip, port, service, last_scanned, response, \
                 published_at, message_id) \
                 SELECT '10.0.0.0'::inet + (k >> 2), ($3::int4[])[(k & 3) + 1], 'HTTP', \
                        to_timestamp($4), rpad('HTTP/1.1 200 OK key=' || k || ' ', $5, 'x'), \
                        to_timestamp($4), (1000000000000 + k)::text \
                 FROM generate_series($1::int8, $2::int8 - 1) AS k",
                &[
                    &(start as i64),
                    &(end as i64),
                    &PORTS.map(i32::from).to_vec(),
                    &(T0 as f64),
                    &(response_bytes as i32),
                ],
            )
            .await?;
        start = end;
    }
    // Separate statements: VACUUM cannot run in the implicit transaction of
    // a multi-statement query.
    client
        .batch_execute("VACUUM (ANALYZE) scan_results")
        .await?;
    client.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// The statements that create layout `name`'s table as `scan_results_<name>`,
/// beside the migration's `scan_results` (`plain`, which needs none).
fn layout_ddl(name: &str) -> anyhow::Result<Vec<String>> {
    let like = |t: &str| format!("CREATE TABLE {t} (LIKE scan_results INCLUDING ALL)");
    let table = format!("scan_results_{name}");
    if name == "plain" {
        Ok(Vec::new())
    } else if let Some(ff) = name.strip_prefix("ff").and_then(|n| n.parse::<u8>().ok()) {
        anyhow::ensure!(
            (10..=100).contains(&ff),
            "fillfactor {ff} is not in 10..=100"
        );
        Ok(vec![format!("{} WITH (fillfactor = {ff})", like(&table))])
    } else if let Some(n) = name
        .strip_prefix("hash")
        .and_then(|n| n.parse::<u32>().ok())
    {
        anyhow::ensure!(n > 0, "hash0 has no partitions");
        let mut ddl = vec![format!("{} PARTITION BY HASH (ip)", like(&table))];
        ddl.extend((0..n).map(|i| {
            format!(
                "CREATE TABLE {table}_{i} PARTITION OF {table} \
                 FOR VALUES WITH (MODULUS {n}, REMAINDER {i}) WITH (fillfactor = 80)"
            )
        }));
        Ok(ddl)
    } else {
        anyhow::bail!("unknown table layout {name:?} (plain, ffN, hashN)")
    }
}

/// The table layouts of a run; each but the current one (named
/// `scan_results`) is kept as `scan_results_<layout>`.
struct Layouts {
    /// The variants' layouts, each once, in the order variants name them.
    used: Vec<String>,
    current: String,
}

impl Layouts {
    /// Creates the tables of the layouts `variants` use beside the
    /// migration's (`plain`, the current one).
    async fn create(pg: &Postgres, variants: &[Variant]) -> anyhow::Result<Self> {
        let c = pg.connect().await?;
        let mut used: Vec<String> = Vec::new();
        for v in variants {
            if !used.contains(&v.table) {
                for stmt in layout_ddl(&v.table)? {
                    c.batch_execute(&stmt).await?;
                }
                used.push(v.table.clone());
            }
        }
        Ok(Self {
            used,
            current: "plain".to_owned(),
        })
    }

    /// Makes `layout`'s table the one named `scan_results`.
    async fn switch(&mut self, pg: &Postgres, layout: &str) -> anyhow::Result<()> {
        if self.current != layout {
            let (from, to) = (&self.current, layout);
            pg.connect()
                .await?
                .batch_execute(&format!(
                    "BEGIN; ALTER TABLE scan_results RENAME TO scan_results_{from}; \
                     ALTER TABLE scan_results_{to} RENAME TO scan_results; COMMIT"
                ))
                .await?;
            self.current = layout.to_owned();
        }
        Ok(())
    }
}

/// `scan_results` and, for a partitioned layout, its partitions: a
/// `FROM` item `t` with one `relid` per table.
macro_rules! scan_results_tables {
    () => {
        "(SELECT 'scan_results'::regclass AS relid \
          UNION SELECT inhrelid FROM pg_inherits WHERE inhparent = 'scan_results'::regclass) t"
    };
}

/// Makes `settings` the server's (`ALTER SYSTEM`, every other setting reset)
/// and restarts it.
async fn apply(pg: &Postgres, settings: &[(String, String)]) -> anyhow::Result<()> {
    let c = pg.connect().await?;
    c.batch_execute("ALTER SYSTEM RESET ALL").await?;
    for (k, v) in settings {
        c.batch_execute(&format!(
            "ALTER SYSTEM SET {k} = '{}'",
            v.replace('\'', "''")
        ))
        .await?;
    }
    drop(c);
    pg.restart().await
}

/// Reads `scan_results`' indexes, then its heap, into shared buffers
/// (`pg_prewarm`), as a server that has been running a while has them: a
/// restart leaves them empty, which would favour small `shared_buffers`.
async fn prewarm(pg: &Postgres) -> anyhow::Result<()> {
    let c = pg.connect().await?;
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        .await?;
    c.batch_execute(concat!(
        "SELECT pg_prewarm(r.oid) FROM ",
        scan_results_tables!(),
        " JOIN pg_index i ON i.indrelid = t.relid JOIN pg_class r ON r.oid = i.indexrelid \
             WHERE r.relkind = 'i'; \
             SELECT pg_prewarm(r.oid) FROM ",
        scan_results_tables!(),
        " JOIN pg_class r ON r.oid = t.relid WHERE r.relkind = 'r'"
    ))
    .await?;
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
                    message_id: format!("{}", 2_000_000_000_000u64 + *next_id).into(),
                },
                response: response(k, ts, o.response_bytes),
                response_raw: None,
                payload: Default::default(),
                cached: None,
            }
        })
        .collect()
}

/// What one variant measured at one size.
struct Point {
    variant: String,
    size: u64,
    /// Which of the windows written in a row after the variant's checkpoint
    /// (0: the first).
    window: usize,
    batch: usize,
    rows: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    wal_per_row: f64,
    server_cores: f64,
    reads_per_row: f64,
    disk_kb_per_row: f64,
    checkpoints: i64,
    waits: Vec<(String, f64)>,
    table_bytes: i64,
    index_bytes: i64,
    hot_share: f64,
    grow_secs: f64,
}

impl Point {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

/// Cumulative server counters, read before and after a window.
struct Counters {
    wal: String,
    updates: i64,
    hot: i64,
    blocks_read: i64,
    checkpoints: i64,
    /// kB read from block devices, machine-wide (`/proc/vmstat` pgpgin).
    disk_kb: i64,
}

async fn counters(pg: &Postgres) -> anyhow::Result<Counters> {
    let c = pg.connect().await?;
    let row = c
        .query_one(
            concat!(
                "SELECT pg_current_wal_lsn()::text, sum(n_tup_upd)::int8, \
                        sum(n_tup_hot_upd)::int8, \
                        sum(coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0))::int8 \
                 FROM ",
                scan_results_tables!(),
                " JOIN pg_stat_user_tables s ON s.relid = t.relid \
                 JOIN pg_statio_user_tables io ON io.relid = t.relid"
            ),
            &[],
        )
        .await?;
    // PostgreSQL 17 moved the checkpoint counters to pg_stat_checkpointer.
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let checkpoints = if version >= 170_000 {
        "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
    } else {
        "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
    };
    let checkpoints: i64 = c.query_one(checkpoints, &[]).await?.get(0);
    Ok(Counters {
        wal: row.get(0),
        updates: row.get(1),
        hot: row.get(2),
        blocks_read: row.get(3),
        checkpoints,
        disk_kb: vmstat("pgpgin").unwrap_or(0),
    })
}

fn vmstat(field: &str) -> Option<i64> {
    std::fs::read_to_string("/proc/vmstat")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// Samples what the client backends are doing until `stop` is set: the
/// share of samples per wait event (`CPU` when not waiting).
async fn sample_waits(pg: &Postgres, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<(String, f64)>> {
    let c = pg.connect().await?;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for row in c
            .query(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') \
                 FROM pg_stat_activity WHERE state = 'active' \
                   AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?
        {
            *seen.entry(row.get(0)).or_default() += 1;
            total += 1;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let mut waits: Vec<(String, f64)> = seen
        .into_iter()
        .map(|(k, n)| (k, n as f64 / total.max(1) as f64))
        .collect();
    waits.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(waits)
}

/// Writes `scans` through a fresh `PgSink` at the ingester's defaults, in
/// `batch`-row batches; returns each batch's acked rows and time, and the
/// server's CPU seconds.
async fn write_all(
    pg: &Postgres,
    batch: usize,
    scans: Vec<Scan>,
) -> anyhow::Result<(Vec<(usize, Duration)>, f64)> {
    let batches: Vec<Vec<Envelope<Record, ()>>> = scans
        .chunks(batch)
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
    let server_before = pg.pid().map(support::tree_cpu);
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
    let server_cpu = match (server_before, pg.pid()) {
        (Some(b), Some(pid)) => support::tree_cpu(pid).saturating_sub(b).as_secs_f64(),
        _ => f64::NAN,
    };
    // Closing the connections flushes their table statistics.
    drop(sink);
    pool.close();
    Ok((results, server_cpu))
}

/// One window: `scans` written by `v` at `size` keys, with the counters
/// around it.
async fn measure(
    pg: &Postgres,
    v: &Variant,
    size: u64,
    window: usize,
    scans: Vec<Scan>,
    grow_secs: f64,
) -> anyhow::Result<Point> {
    let rows = scans.len();
    let before = counters(pg).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_waits(pg, stop.clone());
    let started = Instant::now();
    let written = async {
        let r = write_all(pg, v.batch, scans).await;
        stop.store(true, Ordering::Relaxed);
        r
    };
    let (written, waits) = futures::future::join(written, sampler).await;
    let ((results, server_cpu), waits) = (written?, waits?);
    let secs = started.elapsed().as_secs_f64();
    let acked: usize = results.iter().map(|r| r.0).sum();
    anyhow::ensure!(acked == rows, "the sink acked {acked} of {rows} rows");
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
            concat!(
                "SELECT sum(pg_table_size(relid))::int8, sum(pg_indexes_size(relid))::int8 FROM ",
                scan_results_tables!()
            ),
            &[],
        )
        .await?;
    let mut times: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let per_row = |d: i64| d as f64 / rows as f64;
    Ok(Point {
        variant: v.name.clone(),
        size,
        window,
        batch: v.batch,
        rows,
        secs,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        wal_per_row: wal / rows as f64,
        server_cores: server_cpu / secs,
        reads_per_row: per_row(after.blocks_read - before.blocks_read),
        disk_kb_per_row: per_row(after.disk_kb - before.disk_kb),
        checkpoints: after.checkpoints - before.checkpoints,
        waits,
        table_bytes: sizes.get(0),
        index_bytes: sizes.get(1),
        hot_share: (after.hot - before.hot) as f64 / (after.updates - before.updates).max(1) as f64,
        grow_secs,
    })
}

fn main() -> anyhow::Result<()> {
    support::block_on(bench(options()?))
}

async fn bench(o: Options) -> anyhow::Result<()> {
    eprintln!(
        "growth bench: sizes {:?}, variants {:?}, {} rows per window; machine: {}",
        o.sizes,
        o.variants.iter().map(|v| &v.name).collect::<Vec<_>>(),
        o.measure_rows,
        support::machine()
    );
    // PostgreSQL's own settings: each variant applies its own with ALTER
    // SYSTEM, which `-c` settings on the command line would override.
    let pg = Postgres::start_with(&[]).await?;
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
    let mut layouts = Layouts::create(&pg, &o.variants).await?;
    for (i, &size) in o.sizes.iter().enumerate() {
        let t = Instant::now();
        if next_new < size {
            apply(&pg, &[]).await?;
            for table in &layouts.used.clone() {
                eprintln!("  growing {table} to {size} keys (default settings)");
                layouts.switch(&pg, table).await?;
                grow(&pg, next_new, size, o.response_bytes).await?;
            }
            next_new = size;
        }
        let grow_secs = t.elapsed().as_secs_f64();
        let n = o.variants.len();
        for v in (0..n).map(|j| &o.variants[(i + j) % n]) {
            layouts.switch(&pg, &v.table).await?;
            apply(&pg, &v.settings).await?;
            prewarm(&pg).await?;
            pg.connect().await?.batch_execute("CHECKPOINT").await?;
            // Let the backends of those connections exit: a busy backend that
            // exits mid-window would take its CPU time out of the count.
            tokio::time::sleep(Duration::from_secs(2)).await;
            for window in 0..o.windows {
                let scans = mix(&o, size, &mut next_new, &mut next_id, &mut rng);
                let p = measure(&pg, v, size, window, scans, grow_secs).await?;
                progress(&p);
                points.push(p);
            }
        }
    }
    report(&o, &version, &points)?;
    match plot(&o.plot, &o, &points) {
        Ok(()) => eprintln!("wrote {}", o.plot.display()),
        Err(e) => eprintln!("no plot: {e:#}"),
    }
    support::summary("growth", &summary(&o, &points));
    Ok(())
}

/// Each variant's rate at the largest size against its own at the smallest,
/// and against the first variant's at the same size.
fn summary(o: &Options, points: &[Point]) -> Vec<String> {
    let first = |v: &str, size: u64| {
        points
            .iter()
            .find(|p| p.variant == v && p.size == size && p.window == 0)
            .map(Point::rate)
    };
    let (Some(&small), Some(&large)) = (o.sizes.first(), o.sizes.last()) else {
        return Vec::new();
    };
    let base = &o.variants[0].name;
    o.variants
        .iter()
        .filter_map(|v| {
            let (at_small, at_large) = (first(&v.name, small)?, first(&v.name, large)?);
            let vs_base = match first(base, large) {
                Some(b) if &v.name != base => {
                    format!(", {:.2}x {base} at {large} keys", at_large / b)
                }
                _ => String::new(),
            };
            Some(format!(
                "{:<12} {:>7.0} rows/s at {large} keys: {:.2}x its rate at {small}{vs_base}",
                v.name,
                at_large,
                at_large / at_small
            ))
        })
        .collect()
}

/// One line on stderr per window.
fn progress(p: &Point) {
    eprintln!(
        "  {:>11} keys, {:<12} window {} {:>8.0} rows/s, p50 {:.1} ms p99 {:.1} ms, \
         {:.0} WAL B/row, {:.2} PG cores, {:.2} reads/row, {:.2} disk kB/row, \
         {} checkpoints, waits {}",
        p.size,
        p.variant,
        p.window,
        p.rate(),
        p.p50_ms,
        p.p99_ms,
        p.wal_per_row,
        p.server_cores,
        p.reads_per_row,
        p.disk_kb_per_row,
        p.checkpoints,
        waits(&p.waits, 3)
    );
}

/// The `top` most frequent wait events, as `event share%`.
fn waits(w: &[(String, f64)], top: usize) -> String {
    w.iter()
        .take(top)
        .map(|(k, s)| format!("{k} {:.0}%", s * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each variant's first window after its checkpoint: what the first table and
/// the plot compare across sizes and variants.
fn first_windows(points: &[Point]) -> Vec<&Point> {
    points.iter().filter(|p| p.window == 0).collect()
}

fn report(o: &Options, version: &str, points: &[Point]) -> anyhow::Result<()> {
    let gib = |b: i64| b as f64 / (1u64 << 30) as f64;
    let firsts = first_windows(points);
    let first = |variant: &str, size: u64| {
        firsts
            .iter()
            .copied()
            .find(|p| p.variant == variant && p.size == size)
    };
    let rate_of = |variant: &str, size: u64| first(variant, size).map_or(f64::NAN, Point::rate);
    let mut md = format!(
        "PostgreSQL {version}; {} rows per window ({:.0}% new keys, {:.0}% out of order); \
         variants:\n\n",
        o.measure_rows,
        o.new_ratio * 100.0,
        o.out_of_order * 100.0,
    );
    for v in &o.variants {
        let _ = writeln!(
            md,
            "- `{}`: batch {}, settings {:?}",
            v.name, v.batch, v.settings
        );
    }
    md.push_str(
        "\n| keys | variant | rows/s | vs first size | vs first variant | batch p50 ms | \
         batch p99 ms | WAL B/row | PG cores | buffer reads/row | disk kB/row | checkpoints | \
         HOT | client backends |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut csv = String::from(
        "variant,keys,batch,rows_per_s,p50_ms,p99_ms,wal_bytes_per_row,pg_cores,\
         buffer_reads_per_row,disk_kb_per_row,checkpoints,hot_share,table_bytes,index_bytes,grow_s\n",
    );
    for &size in &o.sizes {
        for v in &o.variants {
            let Some(p) = first(&v.name, size) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.2}× | {:.2}× | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} | \
                 {:.2} | {} | {:.0}% | {} |",
                p.size,
                p.variant,
                p.rate(),
                p.rate() / rate_of(&p.variant, o.sizes[0]),
                p.rate() / rate_of(&o.variants[0].name, size),
                p.p50_ms,
                p.p99_ms,
                p.wal_per_row,
                p.server_cores,
                p.reads_per_row,
                p.disk_kb_per_row,
                p.checkpoints,
                p.hot_share * 100.0,
                waits(&p.waits, 3)
            );
            let _ = writeln!(
                csv,
                "{},{},{},{:.0},{:.2},{:.2},{:.1},{:.3},{:.3},{:.3},{},{:.4},{},{},{:.1}",
                p.variant,
                p.size,
                p.batch,
                p.rate(),
                p.p50_ms,
                p.p99_ms,
                p.wal_per_row,
                p.server_cores,
                p.reads_per_row,
                p.disk_kb_per_row,
                p.checkpoints,
                p.hot_share,
                p.table_bytes,
                p.index_bytes,
                p.grow_secs
            );
        }
    }
    if o.windows > 1 {
        windows_table(&mut md, &mut csv, o, points);
    }
    md.push_str("\n| keys | table GiB | index GiB | grow s |\n|---|---|---|---|\n");
    for &size in &o.sizes {
        if let Some(p) = points.iter().find(|p| p.size == size) {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | {:.0} |",
                size,
                gib(p.table_bytes),
                gib(p.index_bytes),
                p.grow_secs
            );
        }
    }
    println!("{md}");
    let dir = support::out_dir();
    std::fs::write(dir.join("growth.md"), &md)?;
    std::fs::write(dir.join("growth.csv"), &csv)?;
    Ok(())
}

/// Each window written in a row after a variant's checkpoint: its own WAL per
/// row and the average since the checkpoint, which (until PostgreSQL takes a
/// checkpoint of its own) is the steady state for a checkpoint interval of that
/// many rows. Appends to `md`, and to `csv` as
/// `window,...` rows.
fn windows_table(md: &mut String, csv: &mut String, o: &Options, points: &[Point]) {
    md.push_str(
        "\n| keys | variant | rows since our CHECKPOINT | rows/s | batch p99 ms | WAL B/row | \
         WAL B/row since then | WAL GiB since then | checkpoints in window | HOT | \
         PG cores |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    csv.push_str(
        "\nwindow,variant,keys,rows_since_our_checkpoint,rows_per_s,p99_ms,wal_bytes_per_row,\
         wal_bytes_per_row_since_then,checkpoints,hot_share,pg_cores\n",
    );
    for &size in &o.sizes {
        for v in &o.variants {
            let (mut rows, mut wal) = (0usize, 0.0);
            for p in points
                .iter()
                .filter(|p| p.variant == v.name && p.size == size)
            {
                let since = rows;
                rows += p.rows;
                wal += p.wal_per_row * p.rows as f64;
                let average = wal / rows as f64;
                let _ = writeln!(
                    md,
                    "| {} | {} | {}-{} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} | {} | {:.0}% | {:.2} |",
                    p.size,
                    p.variant,
                    since,
                    rows,
                    p.rate(),
                    p.p99_ms,
                    p.wal_per_row,
                    average,
                    wal / (1u64 << 30) as f64,
                    p.checkpoints,
                    p.hot_share * 100.0,
                    p.server_cores
                );
                let _ = writeln!(
                    csv,
                    "{},{},{},{},{:.0},{:.2},{:.1},{:.1},{},{:.4},{:.3}",
                    p.window,
                    p.variant,
                    p.size,
                    since,
                    p.rate(),
                    p.p99_ms,
                    p.wal_per_row,
                    average,
                    p.checkpoints,
                    p.hot_share,
                    p.server_cores
                );
            }
        }
    }
}

/// What a panel of the plot draws for a point.
type Metric = fn(&Point) -> f64;

/// Rows/s (left) and WAL bytes per row (right) against keys, one line per
/// variant.
fn plot(path: &std::path::Path, o: &Options, points: &[Point]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    support::plot_font()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let points = first_windows(points);
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let (lo, hi) = (
        o.sizes[0] as f64 * 0.8,
        o.sizes[o.sizes.len() - 1] as f64 * 1.25,
    );
    let panels: [(&str, Metric); 2] = [
        ("thousand rows per second", |p| p.rate() / 1e3),
        ("WAL bytes per row", |p| p.wal_per_row),
    ];
    for (n, (area, (y_desc, value))) in [&left, &right].into_iter().zip(panels).enumerate() {
        let top = points.iter().map(|p| value(p)).fold(0.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(y_desc, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("keys in scan_results (log scale)")
            .x_label_formatter(&|x| {
                let m = x / 1e6;
                let round = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
                    .iter()
                    .any(|r| (m - r).abs() < r * 0.01);
                if round {
                    format!("{m:.0}M")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, v) in o.variants.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.variant == v.name)
                .map(|p| (p.size as f64, value(p)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(v.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        if n > 0 {
            continue; // one legend: the colours are the same on both panels
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
