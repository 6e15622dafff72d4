//! End to end: a backlog in a fresh Pub/Sub emulator drained into a fresh
//! PostgreSQL by `mini_scan::ingester::Ingester`, against a null consumer that
//! only pulls and acks: `cargo bench --bench e2e [-- OPTIONS]`.
//!
//! 1. Publishes the backlog once to a topic with two subscriptions, so both
//!    consumers drain identical backlogs (`mini_scan::scan::Generator`: 10%
//!    exact duplicates, 20% out of order, 1% malformed).
//! 2. The null consumer: the ingester's own source (`PubsubSource`, same
//!    streams and flow control) with every message acked on receipt.
//! 3. The ingester, until every message is acked and the tables hold what they
//!    must (one row per key seen, one dead letter per malformed message).
//!
//! Prints both rates and their ratio, the ingester's CPU per 1k messages, its
//! peak RSS (this process only: the emulator and PostgreSQL are separate
//! processes, reported as cores busy), and the freshness lag from the table.
//! Writes `target/bench/e2e.md`.
//!
//! Options: `--messages N` (200000), `--keys N` (100000), `--streams N` and
//! `--max-outstanding N` (per stream; both default to the ingester's), `--batch-rows N` (1000),
//! `--write-concurrency N`, `--write-partitions N` (default: the ingester's),
//! `--no-null` (skip the null consumer), `--feed-rate R` (publish while the
//! ingester runs, at R messages/s, from a separate `mini-scan scan` process,
//! instead of a backlog up front; implies `--no-null`), `--replicas 1,2,4`
//! (replica scaling instead: N `mini-scan ingest` processes per count, see
//! `e2e/replicas.rs`), `--matrix SPEC --rounds N` (consumers interleaved in
//! one run, e.g. two builds A/B or stream counts, see `e2e/matrix.rs`; with
//! `--feed-rate`, live; with `--replay`, each consumer measured on a second
//! delivery of a backlog it has already stored). The emulator slows
//! to ~1k msg/s under a 1M-message backlog, so the memory run feeds:
//! `-- --messages 1000000 --keys 1000000 --feed-rate 8000`.

#[path = "e2e/matrix.rs"]
mod matrix;
#[path = "e2e/replicas.rs"]
mod replicas;
#[path = "support/mod.rs"]
mod support;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use mini_scan::config::IngestConfig;
use mini_scan::ingester::Ingester;
use mini_scan::pipeline::{Acknowledge, Shutdown};
use mini_scan::pubsub::PubsubConfig;
use mini_scan::scan::{GenConfig, Generator};
use mini_scan::stages::source::{PubsubSource, SourceConfig};
use mini_scan::telemetry::Health;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{Emulator, Postgres};

const PROJECT: &str = "bench-project";
const TOPIC: &str = "scans";
const NULL_SUB: &str = "null-consumer";
const INGEST_SUB: &str = "ingester";
/// No phase may take longer: the bench stops by itself.
const PHASE_TIMEOUT: Duration = Duration::from_secs(1200);
/// How often the ingest phase checks for completion.
const POLL: Duration = Duration::from_millis(200);
const SERVICES: [&str; 3] = ["HTTP", "SSH", "DNS"];

#[derive(Clone)]
struct Options {
    messages: u64,
    keys: u64,
    streams: u32,
    max_outstanding: u32,
    batch_rows: u32,
    write_concurrency: Option<u32>,
    write_partitions: Option<u32>,
    null: bool,
    feed_rate: Option<f64>,
    replicas: Option<Vec<u32>>,
    matrix: Option<Vec<matrix::Item>>,
    rounds: u32,
    /// `--matrix` only: measure a replay of the stored backlog.
    replay: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        messages: 200_000,
        keys: 100_000,
        streams: mini_scan::config::defaults::STREAMS,
        max_outstanding: mini_scan::config::defaults::MAX_OUTSTANDING_MESSAGES,
        batch_rows: 1000,
        write_concurrency: None,
        write_partitions: None,
        null: true,
        feed_rate: None,
        replicas: None,
        matrix: None,
        rounds: 3,
        replay: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--messages" => o.messages = value()?.parse()?,
            "--keys" => o.keys = value()?.parse()?,
            "--streams" => o.streams = value()?.parse()?,
            "--max-outstanding" => o.max_outstanding = value()?.parse()?,
            "--batch-rows" => o.batch_rows = value()?.parse()?,
            "--write-concurrency" => o.write_concurrency = Some(value()?.parse()?),
            "--write-partitions" => o.write_partitions = Some(value()?.parse()?),
            "--no-null" => o.null = false,
            "--feed-rate" => {
                o.feed_rate = Some(value()?.parse()?);
                o.null = false;
            }
            "--replicas" => {
                let list = value()?;
                let counts = list.split(',').map(str::parse).collect::<Result<_, _>>();
                o.replicas = Some(counts.with_context(|| format!("--replicas {list}"))?);
            }
            "--matrix" => o.matrix = Some(matrix::parse(&value()?)?),
            "--rounds" => o.rounds = value()?.parse()?,
            "--replay" => o.replay = true,
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    Ok(o)
}

/// The generator's key index of a decoded key (see `mini_scan::scan`).
fn key_index(key: &mini_scan::stages::ScanKey) -> Option<u64> {
    let std::net::IpAddr::V4(ip) = key.ip else {
        return None;
    };
    let s = SERVICES.iter().position(|s| *s == key.service)? as u64;
    let hi = u64::from(u32::from(ip).checked_sub(0x0101_0100)?);
    Some((hi * 65_535 + u64::from(key.port)) * 3 + s)
}

/// What the tables must hold once the backlog is drained.
#[derive(Debug, Default)]
struct Expected {
    keys: u64,
    dead: u64,
}

/// The generated messages' seed; `mini-scan scan --seed` with the same
/// settings publishes the same messages.
const SEED: u64 = 2024;

/// Generates `o.messages` messages, publishing them unless `publish` is
/// false; returns what they must yield.
async fn publish(
    cfg: &PubsubConfig,
    topic: &str,
    o: &Options,
    publish: bool,
) -> anyhow::Result<Expected> {
    let publisher = cfg.publisher(&cfg.topic_path(topic), 1000).await?;
    let mut generator = Generator::new(GenConfig {
        keys: Some(o.keys),
        v1_ratio: 0.5,
        duplicate_ratio: 0.1,
        out_of_order_ratio: 0.2,
        malformed_ratio: 0.01,
        response_bytes: None,
        seed: Some(SEED),
    });
    // A bitset of keys seen: 125 kB for a million keys, so it barely moves
    // the peak RSS measured later.
    let mut seen = vec![0u64; o.keys.div_ceil(64) as usize];
    let mut expected = Expected::default();
    let mut pending = FuturesUnordered::new();
    let mut failed = 0u64;
    for _ in 0..o.messages {
        let data = generator.next_message();
        match mini_scan::stages::decode::decode(&data) {
            Ok(obs) => {
                let i = key_index(&obs.key).context("a key outside the generator's space")?;
                let (w, b) = ((i / 64) as usize, i % 64);
                if seen[w] & (1 << b) == 0 {
                    seen[w] |= 1 << b;
                    expected.keys += 1;
                }
            }
            Err(_) => expected.dead += 1,
        }
        if !publish {
            continue;
        }
        pending.push(publisher.publish(google_cloud_pubsub::model::Message::new().set_data(data)));
        while pending.len() >= 20_000 {
            if let Some(Err(_)) = pending.next().await {
                failed += 1;
            }
        }
    }
    while let Some(r) = pending.next().await {
        if r.is_err() {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} messages failed to publish");
    }
    Ok(expected)
}

/// CPU seconds of this process, PostgreSQL (with its backends) and the emulator.
#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    me: Duration,
    pg: Duration,
    emulator: Duration,
}

impl Cpu {
    fn now(pg: &Postgres, em: &Emulator) -> Self {
        Self {
            at: Instant::now(),
            me: support::process_cpu(),
            pg: pg.pid().map(support::tree_cpu).unwrap_or_default(),
            emulator: support::tree_cpu(em.pid()),
        }
    }
}

struct Phase {
    name: &'static str,
    messages: u64,
    secs: f64,
    me: f64,
    pg: f64,
    emulator: f64,
}

impl Phase {
    fn between(name: &'static str, messages: u64, a: Cpu, b: Cpu) -> Self {
        Self {
            name,
            messages,
            secs: (b.at - a.at).as_secs_f64(),
            me: (b.me - a.me).as_secs_f64(),
            pg: (b.pg - a.pg).as_secs_f64(),
            emulator: (b.emulator - a.emulator).as_secs_f64(),
        }
    }
    fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }
}

/// Pulls and acks on receipt through the ingester's own source, until `n`
/// messages of subscription `sub` are acked.
async fn null_consumer(cfg: &PubsubConfig, sub: &str, o: &Options, n: u64) -> anyhow::Result<()> {
    null_or_holding_consumer(cfg, sub, o, n, None, &AtomicU64::new(0)).await
}

/// The null consumer, or with `hold` = `(rows, wait)` one that holds every
/// message until a batch of `rows` (or `wait`'s worth) is complete and then
/// acks the batch, as the ingester does after its commit, with no decode,
/// dedup or write in between: what holding messages costs the Pub/Sub client.
/// Counts what it acks in `acked`, until `n`.
async fn null_or_holding_consumer(
    cfg: &PubsubConfig,
    sub: &str,
    o: &Options,
    n: u64,
    hold: Option<(usize, Duration)>,
    acked: &AtomicU64,
) -> anyhow::Result<()> {
    let client = cfg.subscriber(o.streams as usize).await?;
    let admin = cfg.subscription_admin().await?;
    let source = PubsubSource::new(
        client,
        admin,
        SourceConfig {
            subscription: cfg.subscription_path(sub),
            streams: o.streams as usize,
            max_outstanding_messages: i64::from(o.max_outstanding),
            max_outstanding_bytes: 10 * 1024 * 1024,
            reopen_initial: Duration::from_millis(100),
            reopen_max: Duration::from_secs(5),
        },
        Health::new(),
    );
    let shutdown = Shutdown::new();
    let stream = source.stream(shutdown.clone());
    let drained = async {
        match hold {
            None => {
                let mut stream = std::pin::pin!(stream);
                while let Some(env) = stream.next().await {
                    env.ack.ack();
                    if acked.fetch_add(1, Ordering::Relaxed) + 1 >= n {
                        break;
                    }
                }
            }
            Some((rows, wait)) => {
                let mut batches =
                    std::pin::pin!(tokio_stream::StreamExt::chunks_timeout(stream, rows, wait));
                while let Some(batch) = batches.next().await {
                    let k = batch.len() as u64;
                    for env in batch {
                        env.ack.ack();
                    }
                    if acked.fetch_add(k, Ordering::Relaxed) + k >= n {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(PHASE_TIMEOUT, drained)
        .await
        .context("the null consumer did not drain the backlog in time")?;
    shutdown.trigger(Duration::from_secs(1));
    source.flush_acks(Duration::from_secs(10)).await;
    Ok(())
}

/// `mini-scan scan` publishing the bench's messages to `topic` at `rate` per
/// second.
fn feeder(
    host: &str,
    topic: &str,
    o: &Options,
    rate: f64,
) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mini-scan"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MINISCAN_") {
            cmd.env_remove(key);
        }
    }
    cmd.args([
        "scan",
        "--project-id",
        PROJECT,
        "--emulator-host",
        host,
        "--topic",
        topic,
    ])
    .args([
        "--rate",
        &rate.to_string(),
        "--count",
        &o.messages.to_string(),
    ])
    .args(["--keys", &o.keys.to_string(), "--seed", &SEED.to_string()])
    .args(["--v1-ratio", "0.5", "--duplicate-ratio", "0.1"])
    .args(["--out-of-order-ratio", "0.2", "--malformed-ratio", "0.01"])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true);
    cmd.spawn().context("cannot run mini-scan scan")
}

fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn counts(db: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM scan_results), (SELECT count(*) FROM dead_letters)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The ingester's settings as the flags that would give them.
fn settings(c: &IngestConfig) -> String {
    format!(
        "--streams {} --max-outstanding-messages {} --batch-max-rows {} \
         --write-concurrency {} --write-partitions {} --db-pool-size {}",
        c.streams,
        c.max_outstanding_messages,
        c.batch_max_rows,
        c.write_concurrency,
        c.write_partitions,
        c.db_pool_size
    )
}

/// A fresh PostgreSQL and emulator, with [`TOPIC`] and each of `subs` on it.
async fn servers(subs: &[&str]) -> anyhow::Result<(Postgres, Emulator, PubsubConfig)> {
    let pg = Postgres::start().await?;
    let em = tokio::task::block_in_place(Emulator::start)?;
    let cfg = PubsubConfig {
        project: PROJECT.into(),
        emulator_host: Some(em.host.clone()),
    };
    for sub in subs {
        cfg.ensure(TOPIC, sub, 60).await?;
    }
    Ok((pg, em, cfg))
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    // The ingester's own runtime shape: a multi-threaded runtime on every core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(o))
}

async fn bench(o: Options) -> anyhow::Result<()> {
    eprintln!(
        "e2e bench: {} messages over {} keys, {} streams x {} outstanding; machine: {}",
        o.messages,
        o.keys,
        o.streams,
        o.max_outstanding,
        support::machine()
    );
    if let Some(counts) = &o.replicas {
        return replicas::run(&o, counts).await;
    }
    if let Some(items) = &o.matrix {
        return matrix::run(&o, items, o.rounds).await;
    }
    let subs: &[&str] = if o.null {
        &[INGEST_SUB, NULL_SUB]
    } else {
        &[INGEST_SUB]
    };
    let (pg, em, cfg) = servers(subs).await?;

    let started = Instant::now();
    let expected = publish(&cfg, TOPIC, &o, o.feed_rate.is_none()).await?;
    let publish_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "generated (and, without --feed-rate, published) {} messages in {publish_secs:.1} s ({:.0}/s); expecting {} rows and {} dead letters",
        o.messages,
        o.messages as f64 / publish_secs,
        expected.keys,
        expected.dead
    );

    let mut phases = Vec::new();
    if o.null {
        let a = Cpu::now(&pg, &em);
        null_consumer(&cfg, NULL_SUB, &o, o.messages).await?;
        let p = Phase::between(
            "null consumer (pull + ack on receipt)",
            o.messages,
            a,
            Cpu::now(&pg, &em),
        );
        eprintln!("null consumer: {:.0} msg/s", p.rate());
        phases.push(p);
    }

    // The ingester: its defaults, with the bench's options.
    let mut config = IngestConfig::new(mini_scan::db::config(&pg.url)?, cfg.clone());
    config.subscription = cfg.subscription_path(INGEST_SUB);
    config.metrics_addr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    config.streams = o.streams as usize;
    config.max_outstanding_messages = o.max_outstanding as usize;
    config.batch_max_rows = o.batch_rows as usize;
    if let Some(n) = o.write_concurrency {
        config.write_concurrency = n as usize;
    }
    if let Some(n) = o.write_partitions {
        config.write_partitions = n as usize;
    }
    config.db_pool_size = config
        .db_pool_size
        .max(config.write_concurrency * config.write_partitions);
    let settings = settings(&config);
    let handle = mini_scan::telemetry::install_metrics(&mini_scan::stages::series::all())?;
    let db = pg.connect().await?;
    let rss_reset = support::reset_peak_rss();
    let rss_before = support::status_kb("VmRSS").unwrap_or(0);
    let shutdown = Shutdown::new();
    let a = Cpu::now(&pg, &em);
    let mut ingester = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            Ingester::build(config)
                .await?
                .run_until_stopped(shutdown)
                .await
        }
    });
    // With --feed-rate, the same messages are published while the ingester
    // runs, by `mini-scan scan` in a process of its own (its memory and CPU
    // are not the ingester's).
    let _feeder = match o.feed_rate {
        Some(rate) => Some(feeder(&em.host, TOPIC, &o, rate)?),
        None => None,
    };
    let done = async {
        loop {
            tokio::time::sleep(POLL).await;
            let acked = metric(&handle.render(), "miniscan_acks_total{kind=\"ack\"}") as u64;
            let (rows, dead) = counts(&db).await?;
            if acked >= o.messages && rows as u64 == expected.keys && dead as u64 == expected.dead {
                return Ok::<_, anyhow::Error>(());
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(PHASE_TIMEOUT, done) => {
            r.context("the ingester did not drain the backlog in time")??;
        }
        r = &mut ingester => {
            let summary = r?.context("the ingester failed")?;
            bail!("the ingester stopped before draining the backlog: {summary:?}");
        }
    }
    let b = Cpu::now(&pg, &em);
    let peak_rss_kb = support::status_kb("VmHWM").unwrap_or(0);
    shutdown.trigger(Duration::from_secs(10));
    let summary = ingester.await??;
    let ingest = Phase::between(
        if o.feed_rate.is_some() {
            "ingester, fed live by `mini-scan scan` (decode, dedup, COPY + upsert, ack after commit)"
        } else {
            "ingester (decode, dedup, COPY + upsert, ack after commit)"
        },
        o.messages,
        a,
        b,
    );
    eprintln!("ingester: {:.0} msg/s, {:?}", ingest.rate(), summary);

    let lag = db
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - published_at))::float8,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - published_at))::float8
             FROM scan_results",
            &[],
        )
        .await?;
    let (p50, p99): (f64, f64) = (lag.get(0), lag.get(1));
    let page = handle.render();
    let stale = metric(
        &page,
        "miniscan_messages_total{stage=\"write\",outcome=\"stale\"}",
    );
    let stored = metric(
        &page,
        "miniscan_messages_total{stage=\"write\",outcome=\"stored\"}",
    );
    let superseded = metric(
        &page,
        "miniscan_messages_total{stage=\"write\",outcome=\"superseded\"}",
    );
    let nacked = summary.nacked;
    phases.push(ingest);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "## End to end: {} messages over {} keys (10% duplicates, 20% out of order, 1% malformed)\n\n\
         Machine: {}. {} streams x {} outstanding messages, {}-row batches, ingester settings `{}`. {}\n",
        o.messages,
        o.keys,
        support::machine(),
        o.streams,
        o.max_outstanding,
        o.batch_rows,
        settings,
        match o.feed_rate {
            Some(rate) => format!("Published while ingesting, at {rate} msg/s."),
            None =>
                format!("Backlog published in {publish_secs:.1} s, before the consumers started."),
        },
    );
    let _ = writeln!(
        s,
        "| phase | msg/s | × null | bench process CPU s per 1k msg | bench process cores | PostgreSQL cores | emulator cores |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    let null_rate = phases
        .iter()
        .find(|p| p.name.starts_with("null"))
        .map(Phase::rate);
    for p in &phases {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.4} | {:.2} | {:.2} | {:.2} |",
            p.name,
            p.rate(),
            null_rate.map_or("".into(), |n| format!("{:.2}", p.rate() / n)),
            p.me / (p.messages as f64 / 1000.0),
            p.me / p.secs,
            p.pg / p.secs,
            p.emulator / p.secs
        );
    }
    let ing = phases.last().expect("the ingest phase");
    let null = phases.iter().find(|p| p.name.starts_with("null"));
    let _ = writeln!(s);
    if let Some(n) = null {
        let _ = writeln!(
            s,
            "- Ingester CPU beyond the null consumer: {:.4} CPU s per 1k messages.",
            (ing.me - n.me) / (ing.messages as f64 / 1000.0)
        );
    }
    let _ = writeln!(
        s,
        "- Ingester peak RSS (VmHWM of this process{}): {:.1} MB (RSS {:.1} MB when the phase began).",
        if rss_reset {
            ", reset before the ingest phase"
        } else {
            ""
        },
        peak_rss_kb as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "- Freshness lag (`updated_at - published_at` over the {} stored rows): p50 {p50:.2} s, p99 {p99:.2} s.{}",
        expected.keys,
        if o.feed_rate.is_some() {
            ""
        } else {
            " The backlog was published before the ingester started, so this is mostly time spent waiting in it."
        }
    );
    let _ = writeln!(
        s,
        "- Write outcomes: {stored:.0} stored, {superseded:.0} superseded in their batch, {stale:.0} stale (dedup cache), \
         {} dead letters; {} acked, {nacked} nacked.",
        expected.dead, summary.acked
    );
    println!("{s}");
    let file = if o.null { "e2e.md" } else { "e2e-memory.md" };
    std::fs::write(support::out_dir().join(file), &s)?;
    let per_msg = |p: &Phase| p.me * 1e6 / p.messages as f64;
    let mut summary = vec![format!(
        "ingester {:.0} msg/s{}",
        ing.rate(),
        null.map_or(String::new(), |n| format!(
            ", {:.2}x the null consumer",
            ing.rate() / n.rate()
        ))
    )];
    summary.push(format!(
        "ingester CPU {:.1} us per message{}",
        per_msg(ing),
        null.map_or(String::new(), |n| format!(
            ", {:.1} beyond the null consumer",
            per_msg(ing) - per_msg(n)
        ))
    ));
    summary.push(format!(
        "ingester peak RSS {:.1} MB",
        peak_rss_kb as f64 / 1024.0
    ));
    support::summary("e2e", &summary);
    Ok(())
}
