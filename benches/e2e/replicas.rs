//! `--replicas 1,2,4`: replica scaling, measured. For each replica count N, on
//! a fresh emulator and a fresh PostgreSQL: the same backlog is published once
//! to a topic with two subscriptions; a null consumer with N × `--streams`
//! streams drains one (the ceiling), then N `mini-scan ingest` processes (the
//! real binary, `--log-format json`, every other setting the bench's) drain the
//! other together, until every message is acked and the tables hold what they
//! must.
//!
//! Sampled every [`SAMPLE`] while the replicas run: each replica's `/metrics`
//! (acks and `miniscan_cache_lookups_total{result}`), and PostgreSQL's lock
//! waits (`pg_stat_activity` backends with `wait_event_type = 'Lock'`,
//! `pg_locks` not granted); `pg_stat_database.deadlocks` is read before and
//! after. Writes `target/bench/e2e-replicas.md`.
//!
//! The ingester binary is the one cargo built with this bench
//! (`target/release/mini-scan` under `cargo bench`); `MINISCAN_BENCH_INGEST_BIN`
//! names another.

use super::{
    INGEST_SUB, NULL_SUB, Options, PROJECT, TOPIC, counts, metric, null_consumer, publish,
};
use crate::support;
use anyhow::{Context as _, bail};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How often the replicas' metrics and PostgreSQL's locks are sampled.
const SAMPLE: Duration = Duration::from_millis(100);

/// One replica count's figures.
struct Row {
    replicas: u32,
    ceiling: f64,
    rate: f64,
    /// Per replica: acked messages, cache hits, cache lookups.
    per_replica: Vec<(f64, f64, f64)>,
    locks: LockSamples,
    deadlocks: i64,
    pg_cores: f64,
}

/// PostgreSQL lock waits seen by the sampler.
#[derive(Default)]
struct LockSamples {
    samples: u64,
    /// Samples with at least one backend waiting on a lock.
    waiting: u64,
    /// The most backends waiting on a lock at once.
    max_waiting: i64,
    /// The most `pg_locks` rows not granted at once.
    max_not_granted: i64,
}

/// Runs every replica count in `replicas` and writes the table.
pub(crate) async fn run(o: &Options, replicas: &[u32]) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &n in replicas {
        let row = one(o, n).await?;
        eprintln!(
            "{n} replica(s): {:.0} msg/s, ceiling {:.0} msg/s",
            row.rate, row.ceiling
        );
        rows.push(row);
    }
    let s = report(o, &rows);
    println!("{s}");
    std::fs::write(support::out_dir().join("e2e-replicas.md"), &s)?;
    Ok(())
}

/// One replica count on fresh servers.
async fn one(o: &Options, n: u32) -> anyhow::Result<Row> {
    let (pg, em, cfg) = super::servers(&[INGEST_SUB, NULL_SUB]).await?;
    let expected = publish(&cfg, TOPIC, o, true).await?;

    let mut wide = o.clone();
    wide.streams = o.streams * n;
    let started = Instant::now();
    null_consumer(&cfg, NULL_SUB, &wide, o.messages).await?;
    let ceiling = o.messages as f64 / started.elapsed().as_secs_f64();

    let db = pg.connect().await?;
    let deadlocks_before = deadlocks(&db).await?;
    let pg_before = pg.pid().map(support::tree_cpu).unwrap_or_default();
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..n {
        children.push(spawn(o, &pg.url, &em.host, i)?);
    }
    let addrs: Vec<SocketAddr> = children.iter().map(|c| c.1).collect();
    let locks = drain(o, n, &db, &expected, &mut children, started).await?;
    let secs = started.elapsed().as_secs_f64();
    let pg_cpu = pg.pid().map(support::tree_cpu).unwrap_or_default() - pg_before;
    let per_replica = scrape_all(&addrs)
        .await
        .iter()
        .map(|p| {
            let hits = metric(p, "miniscan_cache_lookups_total{result=\"hit\"}");
            let misses = metric(p, "miniscan_cache_lookups_total{result=\"miss\"}");
            (acked(p), hits, hits + misses)
        })
        .collect();
    let deadlocks = deadlocks(&db).await? - deadlocks_before;
    for (child, _) in &mut children {
        stop(child).await;
    }
    Ok(Row {
        replicas: n,
        ceiling,
        rate: o.messages as f64 / secs,
        per_replica,
        locks,
        deadlocks,
        pg_cores: pg_cpu.as_secs_f64() / secs,
    })
}

/// Waits until the replicas have acked every message and the tables hold
/// what they must, sampling lock waits meanwhile.
async fn drain(
    o: &Options,
    n: u32,
    db: &tokio_postgres::Client,
    expected: &super::Expected,
    children: &mut [(tokio::process::Child, SocketAddr)],
    started: Instant,
) -> anyhow::Result<LockSamples> {
    let mut locks = LockSamples::default();
    let addrs: Vec<SocketAddr> = children.iter().map(|c| c.1).collect();
    let deadline = started + super::PHASE_TIMEOUT;
    loop {
        tokio::time::sleep(SAMPLE).await;
        sample_locks(db, &mut locks).await?;
        for (child, addr) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("the replica serving {addr} exited early: {status}");
            }
        }
        let acked: f64 = scrape_all(&addrs).await.iter().map(|p| acked(p)).sum();
        let (rows, dead) = counts(db).await?;
        if acked as u64 >= o.messages
            && rows as u64 == expected.keys
            && dead as u64 == expected.dead
        {
            return Ok(locks);
        }
        if Instant::now() > deadline {
            bail!("{n} replicas did not drain the backlog in time");
        }
    }
}

/// `mini-scan ingest` as replica `i`, its metrics on a free local port.
fn spawn(
    o: &Options,
    url: &str,
    host: &str,
    i: u32,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let bin = std::env::var_os("MINISCAN_BENCH_INGEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_mini-scan").into());
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cmd = ingest_command(&bin, o, url, host, INGEST_SUB, addr);
    cmd.args(["--log-format", "json"])
        .args(["--streams", &o.streams.to_string()])
        .args(["--max-outstanding-messages", &o.max_outstanding.to_string()]);
    Ok((spawn_logged(cmd, &format!("e2e-replica-{i}.log"))?, addr))
}

/// `mini-scan ingest` from `bin` with no inherited `MINISCAN_*` setting, on
/// `host`'s emulator, `url` and `sub`, its metrics on `addr`, with the batch
/// and write settings of `o` (only flags every version since the bench's
/// baseline knows).
pub(crate) fn ingest_command(
    bin: &std::ffi::OsStr,
    o: &Options,
    url: &str,
    host: &str,
    sub: &str,
    addr: SocketAddr,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MINISCAN_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["ingest", "--database-url", url])
        .args(["--project-id", PROJECT, "--emulator-host", host])
        .args(["--subscription", sub])
        .args(["--metrics-addr", &addr.to_string()])
        .args(["--batch-max-rows", &o.batch_rows.to_string()]);
    if let Some(n) = o.write_concurrency {
        cmd.args(["--write-concurrency", &n.to_string()]);
    }
    if let Some(n) = o.write_partitions {
        cmd.args(["--write-partitions", &n.to_string()]);
    }
    cmd
}

/// Starts `cmd` with its output in `log` under target/bench, killed on drop.
pub(crate) fn spawn_logged(
    mut cmd: tokio::process::Command,
    log: &str,
) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::File::create(support::out_dir().join(log))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("cannot run {:?}", cmd.as_std().get_program()))
}

/// SIGTERM (the ingester's graceful stop), then SIGKILL after 15 s.
pub(crate) async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Every replica's `/metrics` page; an empty page for one not answering yet.
pub(crate) async fn scrape_all(addrs: &[SocketAddr]) -> Vec<String> {
    let mut pages = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let page = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        pages.push(page);
    }
    pages
}

pub(crate) fn acked(page: &str) -> f64 {
    metric(page, "miniscan_acks_total{kind=\"ack\"}")
}

async fn deadlocks(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let row = db
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

async fn sample_locks(db: &tokio_postgres::Client, s: &mut LockSamples) -> anyhow::Result<()> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'),
                    (SELECT count(*) FROM pg_locks WHERE NOT granted)",
            &[],
        )
        .await?;
    let (waiting, not_granted): (i64, i64) = (row.get(0), row.get(1));
    s.samples += 1;
    s.waiting += u64::from(waiting > 0);
    s.max_waiting = s.max_waiting.max(waiting);
    s.max_not_granted = s.max_not_granted.max(not_granted);
    Ok(())
}

/// The markdown table.
fn report(o: &Options, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Replica scaling: {} messages over {} keys per replica count\n\n\
         Machine: {}. Each replica: `mini-scan ingest --streams {} --max-outstanding-messages {} \
         --batch-max-rows {}`, other settings at their defaults; fresh emulator and PostgreSQL \
         per replica count. Ceiling: a null consumer with replicas × {} streams.\n",
        o.messages,
        o.keys,
        support::machine(),
        o.streams,
        o.max_outstanding,
        o.batch_rows,
        o.streams,
    );
    let _ = writeln!(
        s,
        "| replicas | msg/s (all replicas) | ceiling msg/s | × ceiling | messages acked per replica | \
         dedup-cache hit rate per replica | lock-wait samples | most backends waiting | \
         most locks not granted | deadlocks | PostgreSQL cores |\n\
         |---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let acked: Vec<String> = r
            .per_replica
            .iter()
            .map(|p| format!("{:.0}", p.0))
            .collect();
        let hits: Vec<String> = r
            .per_replica
            .iter()
            .map(|&(_, h, l)| format!("{:.1}%", 100.0 * h / l.max(1.0)))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} | {} | {} | {}/{} | {} | {} | {} | {:.2} |",
            r.replicas,
            r.rate,
            r.ceiling,
            r.rate / r.ceiling,
            acked.join(" / "),
            hits.join(" / "),
            r.locks.waiting,
            r.locks.samples,
            r.locks.max_waiting,
            r.locks.max_not_granted,
            r.deadlocks,
            r.pg_cores,
        );
    }
    s
}
