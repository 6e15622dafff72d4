//! `--matrix SPEC [--rounds N] [--feed-rate R]`: consumers compared in one
//! run, interleaved, on one fresh emulator and one PostgreSQL cluster, so that
//! their ratios do not depend on how busy the machine was at another time.
//!
//! SPEC is a comma-separated list of `LABEL=KIND:STREAMS[:OUTSTANDING]`, KIND
//! being `null` (the null consumer, in this process), `hold` (the null
//! consumer holding each message until a batch of `--batch-rows`, or 100 ms'
//! worth, is complete, then acking the batch, as the ingester acks after its
//! commit; in this process), `self` (the `mini-scan` cargo built with this
//! bench) or the path of another `mini-scan` binary (say, a release build of
//! an older commit). Every round runs each item once,
//! in the listed order in even rounds and in reverse in odd ones (A B B A), so
//! a drift of the emulator over the run favours nobody. Each item gets its own
//! topic and subscription, with the same messages published to it, and each
//! `mini-scan ingest` its own fresh database. A live phase's subscription is
//! deleted after it, with whatever the ingester left unacked.
//!
//! Measured per item: msg/s (messages acked over the time from spawn to the last ack) (and the tables holding
//! what they must), × the best null consumer of the same round, the
//! consumer's CPU seconds per 1k messages (`/proc/PID/stat` of the child
//! just before it is stopped, so start-up is included; the null consumer's is
//! this process's CPU clock), its peak RSS, the share of messages its dedup
//! stage called stale (from its metrics: what the cache spared the write
//! stage), and PostgreSQL's and the emulator's cores. With `--feed-rate R`,
//! the messages are published while the item runs, by `mini-scan scan --rate
//! R`, instead of up front (only binaries then), and the table also gives the
//! freshness lag from the ingester's own histogram
//! (`miniscan_freshness_lag_seconds{reference="publish"}`) and how long after
//! the publisher the ingester finished.
//!
//! With `--replay` (backlogs only), each item drains its backlog once and is
//! then measured on a second delivery of the same messages (same ids and
//! orders: its subscription seeked back to a snapshot taken before it
//! started), as after a redelivery storm or an operator's replay. Every
//! replayed message is one the table already holds, so this is where the
//! dedup cache spares the most. The table's figures are then the replay's
//! alone, except two last columns: the first delivery's CPU (from spawn) and
//! stale share.
//! Writes `target/bench/e2e-matrix.md`.

#[path = "matrix_report.rs"]
mod report;

use super::replicas::{acked, ingest_command, scrape_all, spawn_logged, stop};
use super::{Options, PROJECT, counts, feeder, null_or_holding_consumer, publish};
use crate::support::{self, Emulator, Postgres};
use anyhow::{Context as _, bail};
use google_cloud_pubsub::client::SubscriptionAdmin;
use mini_scan::pubsub::PubsubConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One consumer to measure.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    label: String,
    consumer: Consumer,
    streams: u32,
    outstanding: Option<u32>,
}

/// What an item runs.
#[derive(Clone, Debug)]
pub(crate) enum Consumer {
    /// The null consumer, in this process.
    Null,
    /// The null consumer acking per batch, in this process.
    Hold,
    /// `mini-scan ingest` from this binary.
    Binary(PathBuf),
}

/// Parses `LABEL=KIND:STREAMS[:OUTSTANDING],...`.
pub(crate) fn parse(spec: &str) -> anyhow::Result<Vec<Item>> {
    spec.split(',')
        .map(|entry| {
            let bad = || format!("--matrix entry {entry:?}: want LABEL=KIND:STREAMS[:OUTSTANDING]");
            let (label, rest) = entry.split_once('=').with_context(bad)?;
            let mut parts = rest.split(':');
            let kind = parts.next().with_context(bad)?;
            let streams = parts.next().with_context(bad)?.parse().with_context(bad)?;
            let outstanding = parts.next().map(str::parse).transpose().with_context(bad)?;
            let consumer = match kind {
                "null" => Consumer::Null,
                "hold" => Consumer::Hold,
                "self" => Consumer::Binary(PathBuf::from(env!("CARGO_BIN_EXE_mini-scan"))),
                path => Consumer::Binary(PathBuf::from(path)),
            };
            Ok(Item {
                label: label.to_string(),
                consumer,
                streams,
                outstanding,
            })
        })
        .collect()
}

/// One item's figures in one round.
struct Row {
    round: u32,
    label: String,
    rate: f64,
    cpu_per_1k: f64,
    peak_rss_mb: f64,
    pg_cores: f64,
    emulator_cores: f64,
    /// The share of messages the dedup stage called stale (`mini-scan
    /// ingest` only): how much the cache spared the write stage.
    stale: Option<f64>,
    /// Live runs only.
    live: Option<Live>,
    /// `--replay` only: the first delivery's CPU s per 1k messages (from
    /// spawn, as without `--replay`) and its stale share.
    first: Option<(f64, Option<f64>)>,
}

/// A live run's freshness lag and whether the ingester kept up.
#[derive(Clone, Copy)]
struct Live {
    p50: f64,
    p99: f64,
    /// Seconds from the publisher's end to the last ack (or to giving up).
    after: f64,
    /// Messages not yet acked when the phase gave up ([`LIVE_GRACE`] after
    /// the publisher's end); 0 if it kept up.
    behind: u64,
}

/// Runs `rounds` rounds of `items` and writes the table.
pub(crate) async fn run(o: &Options, items: &[Item], rounds: u32) -> anyhow::Result<()> {
    if o.feed_rate.is_some()
        && items
            .iter()
            .any(|i| !matches!(i.consumer, Consumer::Binary(_)))
    {
        bail!("--feed-rate with --matrix runs binaries only, not the null consumer");
    }
    if o.replay && o.feed_rate.is_some() {
        bail!("--replay replays a backlog: it does not go with --feed-rate");
    }
    let pg = Postgres::start().await?;
    let em = tokio::task::block_in_place(Emulator::start)?;
    let cfg = PubsubConfig {
        project: PROJECT.into(),
        emulator_host: Some(em.host.clone()),
    };
    let admin = cfg.subscription_admin().await?;
    let mut rows = Vec::new();
    let mut phase = 0;
    for round in 0..rounds {
        let mut order: Vec<&Item> = items.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for item in order {
            phase += 1;
            let (topic, sub) = (format!("scans-{phase}"), format!("sub-{phase}"));
            cfg.ensure(&topic, &sub, 60).await?;
            let expected = publish(&cfg, &topic, o, o.feed_rate.is_none()).await?;
            let replay = match o.replay {
                true => Some(Replay::take(&admin, &cfg, &sub, phase).await?),
                false => None,
            };
            let mut row = match &item.consumer {
                Consumer::Null | Consumer::Hold => {
                    null_phase(o, &cfg, &sub, item, &pg, &em, replay.as_ref()).await?
                }
                Consumer::Binary(bin) => {
                    let url = pg.fresh_database().await?;
                    let phase = Phase {
                        o,
                        item,
                        bin,
                        url: &url,
                        topic: &topic,
                        sub: &sub,
                        expected: &expected,
                    };
                    ingest_phase(&phase, &pg, &em, replay.as_ref()).await?
                }
            };
            if let Some(r) = replay {
                r.drop_snapshot().await;
            }
            row.round = round + 1;
            // A live phase may leave messages unacked; the emulator slows
            // down under every backlog it holds, so drop them with their
            // subscription before the next phase.
            if o.feed_rate.is_some()
                && let Err(e) = admin
                    .delete_subscription()
                    .set_subscription(cfg.subscription_path(&sub))
                    .send()
                    .await
            {
                eprintln!("cannot delete subscription {sub}: {e}");
            }
            eprintln!(
                "round {} {}: {:.0} msg/s, {:.4} CPU s per 1k msg{}",
                row.round,
                row.label,
                row.rate,
                row.cpu_per_1k,
                row.live.map_or(String::new(), |l| format!(
                    ", lag p50 {:.2} s p99 {:.2} s, {:.1} s after the publisher, {} behind",
                    l.p50, l.p99, l.after, l.behind
                ))
            );
            rows.push(row);
        }
    }
    let s = report::report(o, items, rounds, &rows);
    println!("{s}");
    std::fs::write(support::out_dir().join("e2e-matrix.md"), &s)?;
    Ok(())
}

/// `--replay`: a snapshot of a phase's subscription, taken after its backlog
/// was published and before its consumer starts, to deliver the backlog again.
struct Replay<'a> {
    admin: &'a SubscriptionAdmin,
    subscription: String,
    snapshot: String,
}

/// How long a replay waits after the first delivery's last ack before it
/// seeks, so that no ack still on its way lands on the second delivery.
const ACKS_SETTLE: Duration = Duration::from_secs(2);

/// How often a replaying ingester's `/metrics` is read for its acked count: a
/// scrape costs it about 0.8 ms of CPU, so not every [`super::POLL`].
const REPLAY_POLL: Duration = Duration::from_secs(1);

impl<'a> Replay<'a> {
    async fn take(
        admin: &'a SubscriptionAdmin,
        cfg: &PubsubConfig,
        sub: &str,
        phase: u32,
    ) -> anyhow::Result<Self> {
        let r = Self {
            admin,
            subscription: cfg.subscription_path(sub),
            snapshot: format!("projects/{PROJECT}/snapshots/replay-{phase}"),
        };
        r.admin
            .create_snapshot()
            .set_name(&r.snapshot)
            .set_subscription(&r.subscription)
            .send()
            .await
            .with_context(|| format!("cannot snapshot {}", r.subscription))?;
        Ok(r)
    }

    /// Makes every message of the backlog deliverable again (after
    /// [`ACKS_SETTLE`] since the first delivery's last ack).
    async fn seek(&self) -> anyhow::Result<()> {
        self.admin
            .seek()
            .set_subscription(&self.subscription)
            .set_snapshot(&self.snapshot)
            .send()
            .await
            .with_context(|| format!("cannot seek {} to its snapshot", self.subscription))?;
        Ok(())
    }

    /// The emulator keeps a snapshot's messages: dropped after its phase.
    async fn drop_snapshot(self) {
        let r = self.admin.delete_snapshot().set_snapshot(&self.snapshot);
        if let Err(e) = r.send().await {
            eprintln!("cannot delete snapshot {}: {e}", self.snapshot);
        }
    }
}

/// The null (or holding) consumer on `sub`, in this process; with `replay`,
/// measured on the backlog's second delivery.
async fn null_phase(
    o: &Options,
    cfg: &PubsubConfig,
    sub: &str,
    item: &Item,
    pg: &Postgres,
    em: &Emulator,
    replay: Option<&Replay<'_>>,
) -> anyhow::Result<Row> {
    let mut opts = o.clone();
    opts.streams = item.streams;
    opts.max_outstanding = item.outstanding.unwrap_or(o.max_outstanding);
    let hold = matches!(item.consumer, Consumer::Hold)
        .then(|| (o.batch_rows as usize, Duration::from_millis(100)));
    // With a replay, one consumer takes both deliveries (a second one would
    // find the messages the seek brought back still leased to the first
    // one's streams); the measurement starts at the seek.
    let acked = AtomicU64::new(0);
    let total = o.messages * if replay.is_some() { 2 } else { 1 };
    let first_cpu0 = support::process_cpu();
    let consume = null_or_holding_consumer(cfg, sub, &opts, total, hold, &acked);
    let start = async {
        if replay.is_some() {
            while acked.load(Ordering::Relaxed) < o.messages {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(ACKS_SETTLE).await;
        }
        let from = (
            server_cpu(pg),
            support::tree_cpu(em.pid()),
            support::process_cpu(),
            Instant::now(),
        );
        if let Some(r) = replay {
            r.seek().await?;
        }
        anyhow::Ok(from)
    };
    let ((), (pg0, em0, cpu0, started)) = tokio::try_join!(consume, start)?;
    let first = replay.map(|_| (per_1k(cpu0 - first_cpu0, o.messages), None));
    let (cpu, secs) = (
        support::process_cpu() - cpu0,
        started.elapsed().as_secs_f64(),
    );
    Ok(Row {
        round: 0,
        label: item.label.clone(),
        rate: o.messages as f64 / secs,
        cpu_per_1k: per_1k(cpu, o.messages),
        peak_rss_mb: 0.0,
        pg_cores: (server_cpu(pg) - pg0).as_secs_f64() / secs,
        emulator_cores: (support::tree_cpu(em.pid()) - em0).as_secs_f64() / secs,
        stale: None,
        live: None,
        first,
    })
}

/// CPU seconds per 1k messages.
fn per_1k(cpu: Duration, messages: u64) -> f64 {
    cpu.as_secs_f64() / (messages.max(1) as f64 / 1000.0)
}

fn server_cpu(pg: &Postgres) -> Duration {
    pg.pid().map(support::tree_cpu).unwrap_or_default()
}

/// What an ingest phase runs on.
struct Phase<'a> {
    o: &'a Options,
    item: &'a Item,
    bin: &'a PathBuf,
    url: &'a str,
    topic: &'a str,
    sub: &'a str,
    expected: &'a super::Expected,
}

/// How long after the publisher's end a live phase waits for the ingester to
/// catch up before it counts it as fallen behind.
const LIVE_GRACE: Duration = Duration::from_secs(20);

/// Where an ingest phase's measurement starts or ends.
struct Mark {
    at: Instant,
    /// The ingester's CPU time.
    cpu: Duration,
    pg: Duration,
    em: Duration,
    acked: u64,
    /// Messages its dedup stage called stale.
    stale: f64,
}

/// `mini-scan ingest` from `p.bin` on `p.sub`, until it has acked every
/// message and the tables hold what they must (live: or until [`LIVE_GRACE`]
/// after the publisher's end); with `replay`, then measured again on the
/// backlog's second delivery, until it has acked it all.
async fn ingest_phase(
    p: &Phase<'_>,
    pg: &Postgres,
    em: &Emulator,
    replay: Option<&Replay<'_>>,
) -> anyhow::Result<Row> {
    let o = p.o;
    let (pg0, em0) = (server_cpu(pg), support::tree_cpu(em.pid()));
    let started = Instant::now();
    let (mut child, addr) = spawn(p, &em.host)?;
    let pid = child.id().context("the ingester has no pid")?;
    let mut perf = profiler(pid, &p.item.label)?;
    let mut feeder = match o.feed_rate {
        Some(rate) => Some(feeder(&em.host, p.topic, o, rate)?),
        None => None,
    };
    let db = support::provision::connect(p.url).await?;
    let mut published_at = None;
    let deadline = started + super::PHASE_TIMEOUT;
    let (page, done, _) = loop {
        tokio::time::sleep(super::POLL).await;
        if let Some(status) = child.try_wait()? {
            bail!("{} exited early: {status}", p.item.label);
        }
        if let Some(f) = feeder.as_mut()
            && published_at.is_none()
            && let Some(status) = f.try_wait()?
        {
            if !status.success() {
                bail!("mini-scan scan failed: {status}");
            }
            published_at = Some(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{} did not drain the backlog in time", p.item.label);
        }
        let (rows, dead) = counts(&db).await?;
        let stored = rows as u64 == p.expected.keys && dead as u64 == p.expected.dead;
        // A scrape costs the ingester about 0.8 ms of CPU (its `/metrics`
        // page rendered, a connection accepted): every poll of a 20-s drain,
        // ~0.4 us per message charged to the consumer under test. A backlog
        // phase therefore scrapes only once its tables are complete (the last
        // acks follow their commit within milliseconds); a live phase, which
        // needs the acked count to tell whether it keeps up, every poll.
        if !stored && o.feed_rate.is_none() {
            continue;
        }
        let page = scrape_all(&[addr]).await.remove(0);
        let n = acked(&page) as u64;
        if n >= o.messages && stored {
            break (page, Instant::now(), n);
        }
        // Live: one that has not caught up soon after the publisher stopped
        // did not keep up; what it has not acked is its backlog.
        if published_at.is_some_and(|t: Instant| t.elapsed() > LIVE_GRACE) {
            break (page, Instant::now(), n);
        }
    };
    let mark = |at, page: &str| Mark {
        at,
        cpu: support::pid_cpu(pid).unwrap_or_default(),
        pg: server_cpu(pg),
        em: support::tree_cpu(em.pid()),
        acked: acked(page) as u64,
        stale: stale(page),
    };
    let (from, to) = match replay {
        None => {
            let from = Mark {
                at: started,
                cpu: Duration::ZERO,
                pg: pg0,
                em: em0,
                acked: 0,
                stale: 0.0,
            };
            (from, mark(done, &page))
        }
        Some(r) => {
            tokio::time::sleep(ACKS_SETTLE).await;
            let page = scrape_all(&[addr]).await.remove(0);
            let from = mark(Instant::now(), &page);
            r.seek().await?;
            let deadline = from.at + super::PHASE_TIMEOUT;
            let to = loop {
                tokio::time::sleep(REPLAY_POLL).await;
                if let Some(status) = child.try_wait()? {
                    bail!("{} exited early in the replay: {status}", p.item.label);
                }
                if Instant::now() > deadline {
                    bail!("{} did not drain the replay in time", p.item.label);
                }
                let page = scrape_all(&[addr]).await.remove(0);
                if acked(&page) as u64 >= from.acked + o.messages {
                    break mark(Instant::now(), &page);
                }
            };
            // A replay holds nothing newer: the tables must not change.
            let (rows, dead) = counts(&db).await?;
            if rows as u64 != p.expected.keys || dead as u64 != p.expected.dead {
                bail!(
                    "{}: the replay changed the tables ({rows} rows, {dead} dead letters)",
                    p.item.label
                );
            }
            (from, to)
        }
    };
    let secs = (to.at - from.at).as_secs_f64();
    let n = to.acked - from.acked;
    let first = replay.map(|_| {
        let share = from.stale / from.acked.max(1) as f64;
        (per_1k(from.cpu, from.acked), Some(share))
    });
    let peak_kb = support::proc_status_kb(&pid.to_string(), "VmHWM").unwrap_or(0);
    if let Some(perf) = perf.as_mut() {
        stop(perf).await;
    }
    stop(&mut child).await;
    let live = o.feed_rate.map(|_| {
        let lag = report::lag_buckets(&page);
        Live {
            p50: report::quantile(&lag, 0.5),
            p99: report::quantile(&lag, 0.99),
            // The publisher is seen done at most one poll late; 0 if it was
            // not seen done before the last ack.
            after: published_at.map_or(0.0, |t| (done - t).as_secs_f64()),
            behind: o.messages.saturating_sub(n),
        }
    });
    Ok(Row {
        round: 0,
        label: p.item.label.clone(),
        rate: n as f64 / secs,
        cpu_per_1k: per_1k(to.cpu - from.cpu, n),
        peak_rss_mb: peak_kb as f64 / 1024.0,
        pg_cores: (to.pg - from.pg).as_secs_f64() / secs,
        emulator_cores: (to.em - from.em).as_secs_f64() / secs,
        stale: Some((to.stale - from.stale) / n.max(1) as f64),
        live,
        first,
    })
}

/// How many messages the dedup stage called stale, by the ingester's metrics
/// `page` (labels in the order `telemetry::names::messages` gives them).
fn stale(page: &str) -> f64 {
    super::metric(
        page,
        r#"miniscan_messages_total{stage="dedup",outcome="stale"}"#,
    )
}

/// `mini-scan ingest` for phase `p`, its metrics on a free local port. Only
/// flags every version since the bench's baseline knows.
fn spawn(p: &Phase<'_>, host: &str) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cmd = ingest_command(p.bin.as_os_str(), p.o, p.url, host, p.sub, addr);
    cmd.args(["--streams", &p.item.streams.to_string()]);
    if let Some(n) = p.item.outstanding {
        cmd.args(["--max-outstanding-messages", &n.to_string()]);
    }
    let log = format!("e2e-matrix-{}.log", p.item.label);
    Ok((spawn_logged(cmd, &log)?, addr))
}

/// With `MINISCAN_BENCH_PERF` set (to `perf record` options, e.g. `-F 999`),
/// `perf record -e cpu-clock` attached to `pid`, writing
/// `target/bench/perf-LABEL-PID.data`; stopped (SIGTERM) before the
/// ingester. The ingester's CPU figures then include the sampling interrupts.
fn profiler(pid: u32, label: &str) -> anyhow::Result<Option<tokio::process::Child>> {
    let Some(opts) = std::env::var_os("MINISCAN_BENCH_PERF") else {
        return Ok(None);
    };
    let out = support::out_dir().join(format!("perf-{label}-{pid}.data"));
    let child = tokio::process::Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-p", &pid.to_string(), "-o"])
        .arg(&out)
        .args(opts.to_string_lossy().split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run perf record")?;
    Ok(Some(child))
}
