//! CPU cost of the per-message work, with criterion: `cargo bench --bench pipeline`.
//!
//! * `decode/v1`, `decode/v2`: [`decode`] of one message of each format.
//! * `dedup/*`: one [`Dedup`] lookup: a key the cache knows (the scan is newer,
//!   or stale) and a key it does not; `dedup/learn_newer`: the write stage
//!   teaching the cache a newer committed order (`CommittedOrders::committed`).
//! * `pipeline/overhead`: an in-memory source of pre-built envelopes through
//!   `source → decode → dedup → batch → null sink → ack`, the same combinators
//!   as `Ingester::run_until_stopped` (`src/ingester/mod.rs`), on a
//!   current-thread runtime. `overhead_no_cache` is the same with a
//!   zero-capacity dedup cache.
//! * `tracing/off`, `tracing/on_1pct`: the same pipeline under the production
//!   log subscriber (json, `info`, into a sink), with tracing off, and on at
//!   1% sampling (`traceidratio` 0.01, a null exporter): each message carries
//!   a `googclient_traceparent` (1% of them sampled) that is read into its
//!   ack handle as the Pub/Sub source does, and the sink is a null sink with
//!   the write stage's real batch span, links and counts
//!   (`stages::write::trace`). `off` must match `pipeline/overhead`.
//!
//! Every figure is CPU time of the benchmarking thread (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time, so other work on the machine inflates it less; throughput is
//! per message (`Throughput::Elements`).

#[path = "support/mod.rs"]
mod support;

use criterion::{Criterion, Throughput, criterion_group};
use mini_scan::logging::{self, LogFormat};
use mini_scan::pipeline::{
    Acknowledge, BatchPipelineExt, Envelope, PipelineExt, SettleExt, Sink, Transform,
};
use mini_scan::scan::{GenConfig, Generator};
use mini_scan::stages::decode::{Decode, decode};
use mini_scan::stages::dedup::{CommittedOrders, Dedup};
use mini_scan::stages::write::Written;
use mini_scan::stages::write::trace;
use mini_scan::stages::{Metrics, Received, Record, Scan};
use mini_scan::store::{self, merge};
use mini_scan::telemetry::names::stage;
use mini_scan::traces::{self, MessageContext};
use opentelemetry::trace::SpanContext;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SpanData, SpanExporter};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::thread_cpu;
use tracing_subscriber::EnvFilter;

/// An ack handle that counts acks and nacks.
#[derive(Debug)]
struct RecordingAck(Arc<AtomicU64>);

impl Acknowledge for RecordingAck {
    fn ack(self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn nack(self) {
        self.0.fetch_add(1 << 32, Ordering::Relaxed);
    }
}

/// A sink that settles every record without I/O, as the real one would.
#[derive(Clone, Copy, Debug)]
struct NullSink;

impl<A: Acknowledge> Sink<A> for NullSink {
    type In = Record;
    type Out = Written;

    fn name(&self) -> &'static str {
        stage::WRITE
    }

    fn write(
        &self,
        batch: Vec<Envelope<Record, A>>,
    ) -> impl Future<Output = Vec<Envelope<Written, A>>> + Send {
        let out = batch
            .into_iter()
            .map(|env| {
                env.map(|r| match r {
                    Record::Scan(_) => Written::Stored,
                    Record::Stale => Written::Stale,
                    Record::Dead(_) => Written::DeadLetter,
                })
            })
            .collect();
        std::future::ready(out)
    }
}

/// The e2e bench's mix: 100k keys, 10% duplicates, 20% out of order, 1% malformed.
fn messages(n: usize) -> Vec<Received> {
    let mut generator = Generator::new(GenConfig {
        keys: Some(100_000),
        v1_ratio: 0.5,
        duplicate_ratio: 0.1,
        out_of_order_ratio: 0.2,
        malformed_ratio: 0.01,
        response_bytes: None,
        seed: Some(42),
    });
    (0..n)
        .map(|i| Received {
            data: generator.next_message().into(),
            message_id: format!("{}", 10_000_000_000u64 + i as u64),
            published_micros: 1_700_000_000_000_000 + i as i64,
        })
        .collect()
}

fn one_of_version(v: u8) -> Vec<u8> {
    let mut generator = Generator::new(GenConfig {
        keys: Some(100_000),
        v1_ratio: if v == 1 { 1.0 } else { 0.0 },
        duplicate_ratio: 0.0,
        out_of_order_ratio: 0.0,
        malformed_ratio: 0.0,
        response_bytes: None,
        seed: Some(7),
    });
    generator.next_message()
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for v in [1u8, 2] {
        let msg = one_of_version(v);
        decode(&msg).expect("a valid message");
        g.bench_function(format!("v{v}"), |b| {
            b.iter_custom(|iters| {
                let started = thread_cpu();
                for _ in 0..iters {
                    black_box(decode(black_box(&msg)).ok());
                }
                thread_cpu() - started
            })
        });
    }
    g.finish();
}

fn scan_of(i: u32, timestamp: i64) -> Scan {
    Scan {
        key: support::key_of(i),
        order: support::order_of(i, timestamp),
        response: "service response: 42".into(),
        response_raw: None,
        payload: Default::default(),
        cached: None,
    }
}

/// Thread CPU time of RING lookups per iteration (the records are cloned
/// outside the clock; a stale scan is dropped inside `apply`, as in production),
/// and of RING cache updates (`learn_newer`).
fn bench_dedup(c: &mut Criterion) {
    const KEYS: u32 = 100_000;
    const RING: usize = 4096;
    let orders = CommittedOrders::new(200_000);
    for i in 0..KEYS {
        let s = scan_of(i, 1_700_000_000);
        orders.committed(s.key, s.order);
    }
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(RING as u64));
    let cases = [("hit_newer", 1, 0), ("hit_stale", -1, 0), ("miss", 1, KEYS)];
    for (label, delta, offset) in cases {
        let records: Vec<Record> = (0..RING as u32)
            .map(|i| {
                Record::Scan(scan_of(
                    i * (KEYS / RING as u32) + offset,
                    1_700_000_000 + delta,
                ))
            })
            .collect();
        let mut dedup = Dedup::new(orders.clone());
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = records.clone();
                    let started = thread_cpu();
                    for r in batch {
                        black_box(dedup.apply(r));
                    }
                    total += thread_cpu() - started;
                }
                total
            })
        });
    }
    // What the write stage does for every committed winner: teach the cache
    // a newer order (a get, then an insert).
    let mut round = 0i64;
    g.bench_function("learn_newer", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let scans: Vec<Scan> = (0..RING as u32)
                    .map(|i| scan_of(i * (KEYS / RING as u32), 1_700_000_000 + 10 + round))
                    .collect();
                let started = thread_cpu();
                for s in scans {
                    orders.committed(s.key, s.order);
                }
                total += thread_cpu() - started;
            }
            total
        })
    });
    g.finish();
}

/// Thread CPU time of laying out a 10k-row batch (the write stage's batch
/// at `--batch-max-rows 10000`): collapsing it to one winner per key and
/// placing every scan against its key's winner. `sort_then_search` is how the
/// layout did it before (sort, then a binary search per scan); `one_pass`
/// reads every scan's winner off the sort (`store::merge`).
fn bench_merge(c: &mut Criterion) {
    const ROWS: u32 = 10_000;
    // Keys drawn from 100k, as the write bench's batches are: ~5% repeats.
    let mut x = 42u64;
    let scans: Vec<Scan> = (0..ROWS)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            scan_of((x >> 33) as u32 % 100_000, 1_700_000_000 + i64::from(i % 7))
        })
        .collect();
    let refs: Vec<&Scan> = scans.iter().collect();
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Elements(u64::from(ROWS)));
    g.bench_function("sort_then_search", |b| {
        b.iter_custom(|iters| {
            let started = thread_cpu();
            for _ in 0..iters {
                let winner_of = store::newest_per_key(black_box(&refs));
                let winners: Vec<&Scan> = winner_of.iter().map(|&j| refs[j]).collect();
                let places: Vec<(usize, bool)> = refs
                    .iter()
                    .enumerate()
                    .filter_map(|(j, s)| {
                        let w = winners.binary_search_by(|p| p.key.cmp(&s.key)).ok()?;
                        Some((w, winner_of[w] == j))
                    })
                    .collect();
                black_box((winners, places));
            }
            thread_cpu() - started
        })
    });
    g.bench_function("one_pass", |b| {
        b.iter_custom(|iters| {
            let started = thread_cpu();
            for _ in 0..iters {
                let merged = merge(black_box(&refs));
                let winners: Vec<&Scan> = merged.winners.iter().map(|&j| refs[j]).collect();
                let places: Vec<(usize, bool)> = merged
                    .winner_of
                    .iter()
                    .enumerate()
                    .map(|(j, &w)| (w, merged.winners[w] == j))
                    .collect();
                black_box((winners, places));
            }
            thread_cpu() - started
        })
    });
    g.finish();
}

fn bench_pipeline(c: &mut Criterion) {
    /// Messages per iteration: ten 1k-message batches.
    const N: usize = 10_000;
    // Counters and histograms cost what they cost in production.
    let _ = mini_scan::telemetry::install_metrics(&mini_scan::stages::series::all());
    let msgs = messages(N);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let acks = Arc::new(AtomicU64::new(0));
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(30);
    for (label, cache) in [("overhead", 200_000u64), ("overhead_no_cache", 0)] {
        let orders = CommittedOrders::new(cache);
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let envs: Vec<Envelope<Received, RecordingAck>> = msgs
                        .iter()
                        .map(|m| Envelope::new(m.clone(), RecordingAck(acks.clone())))
                        .collect();
                    let before = acks.load(Ordering::Relaxed);
                    let dedup = Dedup::new(orders.clone());
                    let started = thread_cpu();
                    let summary = rt.block_on(async move {
                        futures::stream::iter(envs)
                            .source(stage::SOURCE, Metrics)
                            .transform(Decode, Metrics)
                            .transform(dedup, Metrics)
                            .batch(stage::BATCH, 1000, Duration::from_millis(100), Metrics)
                            .write(NullSink, 2, Metrics)
                            .ack(stage::ACK, Metrics)
                            .await
                    });
                    total += thread_cpu() - started;
                    assert_eq!(summary.acked, N as u64);
                    assert_eq!(
                        acks.load(Ordering::Relaxed) - before,
                        N as u64,
                        "every message acked once"
                    );
                }
                total
            })
        });
    }
    g.finish();
}

/// An ack handle that counts acks and carries the message's trace context,
/// as `PubsubAck` does.
#[derive(Debug)]
struct TracedAck(Arc<AtomicU64>, Option<Box<SpanContext>>);

impl Acknowledge for TracedAck {
    fn ack(self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn nack(self) {
        self.0.fetch_add(1 << 32, Ordering::Relaxed);
    }
}

impl MessageContext for TracedAck {
    fn trace_context(&self) -> Option<&SpanContext> {
        self.1.as_deref()
    }
}

/// [`NullSink`] inside the write stage's batch span.
#[derive(Clone, Copy, Debug)]
struct TracedNullSink;

impl<A: Acknowledge + MessageContext> Sink<A> for TracedNullSink {
    type In = Record;
    type Out = Written;

    fn name(&self) -> &'static str {
        stage::WRITE
    }

    async fn write(&self, batch: Vec<Envelope<Record, A>>) -> Vec<Envelope<Written, A>> {
        let span = trace::batch_span(&batch);
        let written: Vec<Written> = batch
            .iter()
            .map(|env| match env.payload {
                Record::Scan(_) => Written::Stored,
                Record::Stale => Written::Stale,
                Record::Dead(_) => Written::DeadLetter,
            })
            .collect();
        trace::written(&span, &batch, &written);
        batch
            .into_iter()
            .zip(written)
            .map(|(env, w)| env.map(|_| w))
            .collect()
    }
}

/// Discards spans.
#[derive(Debug)]
struct NullExporter;

impl SpanExporter for NullExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

/// Each message's attributes: a `googclient_traceparent`, 1 in 100 sampled.
fn attributes(n: usize) -> Vec<HashMap<String, String>> {
    (0..n)
        .map(|i| {
            let flags = if i % 100 == 0 { "01" } else { "00" };
            let tp = format!("00-{:032x}-{:016x}-{flags}", i + 1, i + 1);
            HashMap::from([(traces::GOOGCLIENT_TRACEPARENT.to_owned(), tp)])
        })
        .collect()
}

fn bench_tracing(c: &mut Criterion) {
    const N: usize = 10_000;
    let _ = mini_scan::telemetry::install_metrics(&mini_scan::stages::series::all());
    let msgs = messages(N);
    let attrs = attributes(N);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let acks = Arc::new(AtomicU64::new(0));
    let orders = CommittedOrders::new(200_000);
    let mut g = c.benchmark_group("tracing");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(30);
    for label in ["off", "on_1pct"] {
        let on = label != "off";
        let (tracing, tracer) = if on {
            let sampler = Sampler::TraceIdRatioBased(0.01);
            let (t, tracer) = traces::Tracing::with_exporter(NullExporter, sampler, "bench");
            (Some(t), Some(tracer))
        } else {
            (None, None)
        };
        let filter = EnvFilter::new("info");
        let dispatch = logging::subscriber(LogFormat::Json, filter, std::io::sink, false, tracer);
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch: Vec<_> = msgs.iter().cloned().zip(attrs.iter().cloned()).collect();
                    let acks = acks.clone();
                    let dedup = Dedup::new(orders.clone());
                    let started = thread_cpu();
                    let summary = tracing::dispatcher::with_default(&dispatch, || {
                        rt.block_on(async move {
                            // What the Pub/Sub source does per message.
                            let envs = batch.into_iter().map(move |(m, a)| {
                                let trace = traces::enabled()
                                    .then(|| traces::extract(&a).map(Box::new))
                                    .flatten();
                                Envelope::new(m, TracedAck(acks.clone(), trace))
                            });
                            futures::stream::iter(envs)
                                .source(stage::SOURCE, Metrics)
                                .transform(Decode, Metrics)
                                .transform(dedup, Metrics)
                                .batch(stage::BATCH, 1000, Duration::from_millis(100), Metrics)
                                .write(TracedNullSink, 2, Metrics)
                                .ack(stage::ACK, Metrics)
                                .await
                        })
                    });
                    total += thread_cpu() - started;
                    assert_eq!(summary.acked, N as u64);
                }
                total
            })
        });
        if let Some(t) = tracing {
            t.shutdown();
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench_decode, bench_dedup, bench_merge, bench_pipeline, bench_tracing
}
/// `criterion_main!`, then a summary of this run's figures.
fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    support::summary("pipeline", &summary(started));
}

/// CPU per message of `group/function`, from the estimate criterion wrote in
/// this run (none if it ran before `since`, e.g. filtered out).
fn per_message_ns(group: &str, function: &str, since: std::time::SystemTime) -> Option<f64> {
    let dir = support::out_dir()
        .parent()?
        .join("criterion")
        .join(group)
        .join(function)
        .join("new");
    let read = |file: &str| -> Option<serde_json::Value> {
        let path = dir.join(file);
        if std::fs::metadata(&path).ok()?.modified().ok()? < since {
            return None;
        }
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    };
    let ns = read("estimates.json")?["median"]["point_estimate"].as_f64()?;
    let elements = read("benchmark.json")?["throughput"]["Elements"]
        .as_f64()
        .unwrap_or(1.0);
    Some(ns / elements)
}

fn summary(since: std::time::SystemTime) -> Vec<String> {
    let get = |g: &str, f: &str| per_message_ns(g, f, since);
    let mut lines = Vec::new();
    if let Some(p) = get("pipeline", "overhead") {
        lines.push(format!(
            "pipeline CPU {:.2} us per message (target <= 2){}",
            p / 1000.0,
            get("pipeline", "overhead_no_cache").map_or(String::new(), |n| format!(
                "; with the dedup cache off, {:.2}x that",
                n / p
            ))
        ));
    }
    if let (Some(on), Some(off)) = (get("tracing", "on_1pct"), get("tracing", "off")) {
        lines.push(format!("tracing on at 1% {:.2}x off", on / off));
    }
    if let (Some(v1), Some(v2)) = (get("decode", "v1"), get("decode", "v2")) {
        lines.push(format!(
            "decode {v1:.0} ns (V1), {v2:.0} ns (V2) per message"
        ));
    }
    lines
}
