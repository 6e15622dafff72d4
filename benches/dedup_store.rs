//! Issue 10: the dedup store per message, moka (what the ingester uses) next
//! to Redis (the original design's shared cache), in one criterion run:
//! `cargo bench --bench dedup_store`.
//!
//! The Redis half needs a Redis server on 127.0.0.1:6379 on this machine (the
//! bench starts none; its server CPU is read from `/proc`). When none
//! answers, the bench says so, skips that half and measures moka alone.
//! Keys go under `miniscan-bench:<random run id>:` and are deleted at the end
//! (a run that panics leaves them: `redis-cli --scan --pattern
//! 'miniscan-bench:*' | xargs -r redis-cli unlink`).
//!
//! * `dedup_store/moka_lookup_hit`, `moka_lookup_miss`, `moka_learn`:
//!   `CommittedOrders::is_stale` on a known and an unknown key, and
//!   `committed` with a newer order.
//! * `dedup_store/redis_rt_lookup`, `redis_rt_learn`: one `GET`, or one
//!   newest-wins `EVALSHA`, per message, each awaited before the next.
//! * `dedup_store/redis_pipe_lookup`, `redis_pipe_learn`: one `MGET`, or one
//!   pipeline of `EVALSHA`s, per batch.
//!
//! (`dedup_store/redis_orders.rs` holds the Redis side.) An iteration is one
//! batch of [`BATCH`] messages; throughput is per message. Unlike
//! `benches/pipeline.rs` these are *wall* times: a round trip is mostly
//! waiting. Everything runs on one current-thread runtime over loopback.
//!
//! Then, outside criterion's timing, each mode does lookup + learn for a fixed
//! number of messages and prints wall time, the client's CPU (this thread: the
//! runtime and the connection's driver task run on it) and the Redis server's
//! CPU (`/proc/PID/stat`, the pid from `INFO server`) per message.
//! `moka_entry` is what the ingester does: the lookup keeps the entry it
//! found, and the learn stores through it (`CommittedOrders::committed_at`).

#[path = "dedup_store/redis_orders.rs"]
mod redis_orders;
#[path = "support/mod.rs"]
mod support;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group};
use mini_scan::stages::dedup::CommittedOrders;
use mini_scan::stages::{Order, ScanKey};
use redis_orders::RedisOrders;
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use support::{key_of, order_of, pid_cpu, thread_cpu};
use tokio::runtime::Runtime;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Keys both stores know; keys `KEYS..2 * KEYS` are never learned (misses).
const KEYS: u32 = 100_000;
/// Messages per iteration: the ingester's default batch (`--batch-max-rows`).
const BATCH: u32 = 1000;
/// The timestamp every key starts at; lookups use it (so they are stale).
const BASE_TS: i64 = 1_700_000_000;

/// A newer timestamp on every call, so that every learn raises the entry.
fn next_ts() -> i64 {
    static ROUND: AtomicI64 = AtomicI64::new(1);
    BASE_TS + ROUND.fetch_add(1, Ordering::Relaxed)
}

/// Batch number `n` of known keys (or of unknown ones, `miss`), at `ts`.
fn batch(n: u64, ts: i64, miss: bool) -> Vec<(ScanKey, Order)> {
    let start = (n * u64::from(BATCH) % u64::from(KEYS)) as u32 + if miss { KEYS } else { 0 };
    (start..start + BATCH)
        .map(|i| (key_of(i), order_of(i, ts)))
        .collect()
}

/// Redis on [`REDIS_URL`], or why not.
fn connect(rt: &Runtime) -> Result<RedisOrders, String> {
    let prefix = format!("miniscan-bench:{:016x}:", rand::random::<u64>());
    rt.block_on(RedisOrders::connect(REDIS_URL, prefix))
        .map_err(|e| {
            format!(
                "no Redis answered on 127.0.0.1:6379 ({e}); to compare, start one on this \
                 machine: `apt-get install redis-server` then `redis-server --daemonize yes`"
            )
        })
}

/// Times `run` on a fresh batch per iteration (built, and dropped, outside
/// the clock; moka's learn takes the entries out).
fn time_batches(
    iters: u64,
    mut make: impl FnMut(u64) -> Vec<(ScanKey, Order)>,
    mut run: impl FnMut(&mut Vec<(ScanKey, Order)>),
) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let mut items = make(i);
        let started = Instant::now();
        run(&mut items);
        total += started.elapsed();
        drop(items);
    }
    total
}

fn bench_moka(g: &mut BenchmarkGroup<'_, WallTime>, orders: &CommittedOrders) {
    for (label, miss) in [("moka_lookup_hit", false), ("moka_lookup_miss", true)] {
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                time_batches(
                    iters,
                    |i| batch(i, BASE_TS, miss),
                    |items| {
                        for (k, o) in items.iter() {
                            black_box(orders.is_stale(k, o));
                        }
                    },
                )
            })
        });
    }
    g.bench_function("moka_learn", |b| {
        b.iter_custom(|iters| {
            time_batches(
                iters,
                |i| batch(i, next_ts(), false),
                |items| {
                    for (k, o) in items.drain(..) {
                        orders.committed(k, o);
                    }
                },
            )
        })
    });
}

fn bench_redis_rt(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, store: &mut RedisOrders) {
    g.bench_function("redis_rt_lookup", |b| {
        b.iter_custom(|iters| {
            time_batches(
                iters,
                |i| batch(i, BASE_TS, false),
                |items| {
                    rt.block_on(async {
                        for (k, o) in items.iter() {
                            black_box(store.is_stale(k, o).await.expect("Redis GET"));
                        }
                    })
                },
            )
        })
    });
    g.bench_function("redis_rt_learn", |b| {
        b.iter_custom(|iters| {
            time_batches(
                iters,
                |i| batch(i, next_ts(), false),
                |items| {
                    rt.block_on(async {
                        for (k, o) in items.iter() {
                            store.committed(k, o).await.expect("Redis EVALSHA");
                        }
                    })
                },
            )
        })
    });
}

fn bench_redis_pipe(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, store: &mut RedisOrders) {
    g.bench_function("redis_pipe_lookup", |b| {
        b.iter_custom(|iters| {
            time_batches(
                iters,
                |i| batch(i, BASE_TS, false),
                |items| {
                    black_box(rt.block_on(store.are_stale(items)).expect("Redis MGET"));
                },
            )
        })
    });
    g.bench_function("redis_pipe_learn", |b| {
        b.iter_custom(|iters| {
            time_batches(
                iters,
                |i| batch(i, next_ts(), false),
                |items| {
                    rt.block_on(store.committed_all(items))
                        .expect("Redis EVALSHA pipeline");
                },
            )
        })
    });
}

/// Fails the run unless the Redis store decides as `CommittedOrders` does,
/// except that a learn never lowers an entry (newest wins on the server).
async fn check_semantics(store: &mut RedisOrders) -> redis::RedisResult<()> {
    let key = key_of(2 * KEYS + 1);
    let o = |ts: i64, pubm: i64, id: &str| Order {
        timestamp: ts,
        published_micros: pubm,
        message_id: id.into(),
    };
    assert_eq!(
        store.is_stale(&key, &o(10, 0, "a")).await?,
        None,
        "unknown key"
    );
    store.committed(&key, &o(10, 0, "a")).await?;
    assert_eq!(
        store.is_stale(&key, &o(10, 0, "a")).await?,
        Some(true),
        "a redelivery"
    );
    assert_eq!(
        store.is_stale(&key, &o(9, 9, "z")).await?,
        Some(true),
        "an older scan"
    );
    assert_eq!(
        store.is_stale(&key, &o(10, 0, "b")).await?,
        Some(false),
        "tie: message id"
    );
    assert_eq!(
        store.is_stale(&key, &o(10, 1, "")).await?,
        Some(false),
        "tie: publish time"
    );
    store.committed(&key, &o(-5, 0, "a")).await?;
    assert_eq!(
        store.is_stale(&key, &o(9, 9, "z")).await?,
        Some(true),
        "never lowered"
    );
    // Many orders, ties and negative values included, learned in one
    // pipeline: the entry must end at their maximum under `Order`'s `Ord`.
    let ids = ["", "1", "10", "9", "a", "ab", "é"];
    let orders: Vec<Order> = (0..300i64)
        .map(|i| o(i * 7 % 5 - 2, i * 3 % 4 - 1, ids[(i * 11 % 7) as usize]))
        .collect();
    let key2 = key_of(2 * KEYS + 2);
    let batch: Vec<(ScanKey, Order)> = orders.iter().map(|o| (key2.clone(), o.clone())).collect();
    store.committed_all(&batch).await?;
    let max = orders.iter().max().expect("orders");
    assert_eq!(store.is_stale(&key2, max).await?, Some(true));
    let mut above = max.clone();
    above.message_id = format!("{}\0", above.message_id.as_str()).as_str().into();
    assert_eq!(
        store.is_stale(&key2, &above).await?,
        Some(false),
        "the entry is the maximum"
    );
    Ok(())
}

/// Both stores learn every known key at [`BASE_TS`].
fn preload(rt: &Runtime, store: Option<&mut RedisOrders>, orders: &CommittedOrders) {
    let mut store = store;
    for n in 0..u64::from(KEYS / BATCH) {
        let items = batch(n, BASE_TS, false);
        if let Some(store) = store.as_deref_mut() {
            rt.block_on(store.committed_all(&items))
                .expect("Redis preload");
        }
        for (k, o) in items {
            orders.committed(k, o);
        }
    }
}

/// Wall time, client CPU and server CPU of lookup + learn for `batches`
/// batches, per message.
struct Cost {
    mode: &'static str,
    messages: u64,
    wall: Duration,
    client: Duration,
    server: Duration,
}

/// Runs `run(lookups, learns)` on `batches` pairs of batches built up front
/// (and dropped after the clock; moka's learn takes the entries out).
fn account(
    mode: &'static str,
    batches: u64,
    server_pid: Option<u32>,
    mut run: impl FnMut(&[(ScanKey, Order)], &mut Vec<(ScanKey, Order)>),
) -> Cost {
    let mut work: Vec<_> = (0..batches)
        .map(|n| (batch(n, BASE_TS, false), batch(n, next_ts(), false)))
        .collect();
    let server_cpu = || {
        server_pid.map_or(Duration::ZERO, |pid| {
            pid_cpu(pid).expect("the Redis server's /proc/PID/stat")
        })
    };
    let (wall, client, server) = (Instant::now(), thread_cpu(), server_cpu());
    for (lookups, learns) in &mut work {
        run(lookups, learns);
    }
    let cost = Cost {
        mode,
        messages: batches * u64::from(BATCH),
        wall: wall.elapsed(),
        client: thread_cpu() - client,
        server: server_cpu() - server,
    };
    drop(work);
    cost
}

fn costs(
    rt: &Runtime,
    store: Option<&mut RedisOrders>,
    orders: &CommittedOrders,
    pid: Option<u32>,
) -> Vec<Cost> {
    let moka = account("moka", 100, pid, |lookups, learns| {
        for (k, o) in lookups {
            black_box(orders.is_stale(k, o));
        }
        for (k, o) in learns.drain(..) {
            orders.committed(k, o);
        }
    });
    // The ingester's way: the lookup keeps the entry it found, and the learn
    // stores through it (`CommittedOrders::committed_at`) without a second get.
    let moka_entry = account("moka_entry", 100, pid, |lookups, learns| {
        let entries: Vec<_> = lookups
            .iter()
            .map(|(k, o)| {
                let entry = orders.find(k);
                black_box(entry.as_ref().map(|e| e.is_stale(o)));
                entry
            })
            .collect();
        for ((k, o), entry) in learns.drain(..).zip(entries) {
            orders.committed_at(entry, k, o);
        }
    });
    let Some(store) = store else {
        return vec![moka, moka_entry];
    };
    let round_trip = account("redis_rt", 20, pid, |lookups, learns| {
        rt.block_on(async {
            for ((k, o), (lk, lo)) in lookups.iter().zip(learns.iter()) {
                black_box(store.is_stale(k, o).await.expect("Redis GET"));
                store.committed(lk, lo).await.expect("Redis EVALSHA");
            }
        })
    });
    let pipelined = account("redis_pipe", 100, pid, |lookups, learns| {
        rt.block_on(async {
            black_box(store.are_stale(lookups).await.expect("Redis MGET"));
            store.committed_all(learns).await.expect("Redis pipeline");
        })
    });
    vec![moka, moka_entry, round_trip, pipelined]
}

/// Prints [`costs`], after the Redis server's CPU when idle for comparison,
/// and returns the summary's lines.
fn report_costs(
    rt: &Runtime,
    store: Option<&mut RedisOrders>,
    orders: &CommittedOrders,
) -> Vec<String> {
    let mut store = store;
    let pid = store.as_deref_mut().map(|store| {
        let pid = rt
            .block_on(store.server_pid())
            .expect("Redis INFO")
            .unwrap_or_else(|| {
                panic!("Redis on 127.0.0.1:6379 reported no process_id: CPU cannot be measured")
            });
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert!(
            comm.starts_with("redis-server"),
            "Redis pid {pid} is not a redis-server on this machine ({comm:?}): run Redis here, not in a container"
        );
        let idle = pid_cpu(pid).expect("/proc/PID/stat");
        std::thread::sleep(Duration::from_secs(2));
        let idle = pid_cpu(pid).expect("/proc/PID/stat") - idle;
        println!(
            "\nRedis server (pid {pid}) CPU while idle: {:.1} ms/s",
            idle.as_secs_f64() * 500.0
        );
        pid
    });
    println!(
        "| mode | messages | wall µs/msg | client CPU µs/msg | server CPU µs/msg | client+server µs/msg |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let us = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n as f64;
    let costs = costs(rt, store, orders, pid);
    for c in &costs {
        let n = c.messages;
        println!(
            "| {} | {n} | {:.2} | {:.2} | {:.2} | {:.2} |",
            c.mode,
            us(c.wall, n),
            us(c.client, n),
            us(c.server, n),
            us(c.client + c.server, n)
        );
    }
    let total = |mode: &str| {
        costs
            .iter()
            .find(|c| c.mode == mode)
            .map(|c| us(c.client + c.server, c.messages))
    };
    let mut lines = Vec::new();
    if let Some(entry) = total("moka_entry") {
        lines.push(format!(
            "moka lookup + learn {entry:.2} us CPU per message (as the ingester does it)"
        ));
        for (mode, what) in [
            ("redis_pipe", "Redis pipelined"),
            ("redis_rt", "Redis, a round trip per message,"),
        ] {
            if let Some(r) = total(mode) {
                lines.push(format!(
                    "{what} {:.1}x moka (client + server CPU)",
                    r / entry
                ));
            }
        }
    }
    lines
}

/// The summary's lines, from inside criterion's target function to `main`.
static SUMMARY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn dedup_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut store = match connect(&rt) {
        Ok(store) => Some(store),
        Err(why) => {
            let line = format!("skipped the Redis half: {why}");
            eprintln!("dedup_store: {line}");
            SUMMARY.lock().expect("summary").push(line);
            None
        }
    };
    if let Some(store) = store.as_mut() {
        rt.block_on(check_semantics(store))
            .expect("Redis semantics check");
    }
    let orders = CommittedOrders::new(200_000);
    preload(&rt, store.as_mut(), &orders);
    let mut g = c.benchmark_group("dedup_store");
    g.throughput(Throughput::Elements(BATCH.into()));
    g.sample_size(10);
    bench_moka(&mut g, &orders);
    if let Some(store) = store.as_mut() {
        bench_redis_rt(&mut g, &rt, store);
        bench_redis_pipe(&mut g, &rt, store);
    }
    g.finish();
    let lines = report_costs(&rt, store.as_mut(), &orders);
    SUMMARY.lock().expect("summary").extend(lines);
    if let Some(store) = store.as_mut() {
        let deleted = rt.block_on(store.delete_all()).expect("Redis cleanup");
        println!("deleted this run's {deleted} Redis keys");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = dedup_store
}
/// `criterion_main!`, then the summary.
fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let lines = std::mem::take(&mut *SUMMARY.lock().expect("summary"));
    support::summary("dedup_store", &lines);
}
