//! What the benchmarks share: a throwaway PostgreSQL cluster, a fresh Pub/Sub
//! emulator, CPU clocks and peak-memory readings.
//!
//! The servers come from [`provision`] (`tests/it/provision/`, shared with
//! the tests), with bench settings: PostgreSQL with durable commits (`fsync=on`,
//! `synchronous_commit=on`; the tests turn both off, which would overstate
//! every write rate), binaries from `MINISCAN_BENCH_PG_BINDIR` (default
//! PostgreSQL 15), and a fresh emulator per run (it slows down as topics and
//! subscriptions pile up; `MINISCAN_BENCH_PUBSUB_EMULATOR` names another
//! launcher). Both servers are children that get SIGKILL when the bench
//! process dies, and are stopped when their handle drops. Our own cluster runs
//! with the settings docs/SCALING.md recommends ([`recommended_settings`]),
//! except where a bench sets its own (growth).
//!
//! Each bench ends by recording a few ratios with [`summary`]; the last bench
//! of one `cargo bench` run prints them all.
#![allow(dead_code)] // Each bench binary uses a different part.

#[path = "../../tests/it/provision/mod.rs"]
pub mod provision;

use anyhow::Context as _;
use provision::{Cluster, PgOptions, Purpose};
use std::path::PathBuf;
use std::time::Duration;

/// A PostgreSQL server for one bench run: a throwaway cluster, or the server
/// named by `DATABASE_URL`; either way the bench gets a database of its own,
/// with a random name and the schema applied.
pub struct Postgres {
    /// Connection URL of the bench database.
    pub url: String,
    /// The server's superuser URL, for more databases.
    admin_url: String,
    /// Our own cluster, stopped on drop; `None` on `DATABASE_URL`'s server.
    cluster: Option<Cluster>,
}

impl Postgres {
    /// Starts a fresh cluster with durable commits and the
    /// [`recommended_settings`], or uses `DATABASE_URL`; creates the bench
    /// database and applies the schema with `mini_scan::db::migrate`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&recommended_settings()).await
    }

    /// [`Self::start`] with extra server settings (`-c name=value`) for our
    /// own cluster; on `DATABASE_URL`'s server they are not applied.
    pub async fn start_with(settings: &[(String, String)]) -> anyhow::Result<Self> {
        let (admin_url, cluster) = match std::env::var("DATABASE_URL") {
            Ok(url) => (url, None),
            Err(_) => {
                let mut options = PgOptions::for_benches();
                options.settings.extend(settings.iter().cloned());
                let cluster = tokio::task::block_in_place(|| Cluster::create(options))?;
                (cluster.admin_url(), Some(cluster))
            }
        };
        let url = database(&admin_url).await?;
        Ok(Self {
            url,
            admin_url,
            cluster,
        })
    }

    /// Another fresh database on the same server, with the schema applied;
    /// returns its URL.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        database(&self.admin_url).await
    }

    /// The server's pid, when it is our child (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.cluster.as_ref().and_then(Cluster::pid)
    }

    /// Stops our cluster (fast shutdown, which checkpoints) and starts it
    /// again with the same data directory: settings made with `ALTER SYSTEM`
    /// take effect, and shared buffers start empty.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let cluster = self
            .cluster
            .as_ref()
            .context("a restart needs the bench's own cluster (DATABASE_URL is set)")?;
        tokio::task::block_in_place(|| cluster.stop().and_then(|()| cluster.start()))?;
        Ok(())
    }

    /// A plain connection (its driver task is spawned).
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(provision::connect(&self.url).await?)
    }
}

/// Runs a database bench on a two-worker multi-threaded runtime (one per
/// core here; `block_in_place` in [`Postgres::start`] needs more than one).
pub fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

/// Creates a database with a random name on `admin_url`'s server and applies
/// the schema with `mini_scan::db::migrate`; returns its URL.
async fn database(admin_url: &str) -> anyhow::Result<String> {
    let url = provision::create_database(admin_url, Purpose::Benches)
        .await?
        .url;
    let cfg = mini_scan::db::config(&url)?;
    mini_scan::db::migrate(&cfg)
        .await
        .context("cannot apply the schema")?;
    Ok(url)
}

/// A fresh Pub/Sub emulator, killed when the handle drops.
pub struct Emulator(provision::Emulator);

impl Emulator {
    /// Starts Google's emulator on a free port and waits until it answers.
    /// Blocks.
    pub fn start() -> anyhow::Result<Self> {
        Ok(Self(provision::Emulator::start(Purpose::Benches)?))
    }
}

impl std::ops::Deref for Emulator {
    type Target = provision::Emulator;

    /// The emulator's `host` and `pid()`.
    fn deref(&self) -> &provision::Emulator {
        &self.0
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (every thread).
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) of another process, from `/proc/PID/stat`.
pub fn pid_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// CPU time of a process and all its descendants that are alive now (a
/// PostgreSQL server's backends are its children).
pub fn tree_cpu(pid: u32) -> Duration {
    let mut total = pid_cpu(pid).unwrap_or_default();
    for child in children_of(pid) {
        total += tree_cpu(child);
    }
    total
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// A `/proc/self/status` field in kB (`VmHWM`, `VmRSS`).
pub fn status_kb(field: &str) -> Option<u64> {
    proc_status_kb("self", field)
}

/// A `/proc/PID/status` field in kB, `pid` a number or `self`.
pub fn proc_status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets `VmHWM` to the current RSS (Linux 4.0+: write 5 to clear_refs).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `nproc`, the CPU model and memory, for the report header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kb = mem_total_kb().unwrap_or(0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{cores} cores, {cpu}, {:.1} GiB memory",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}

/// DejaVu Sans from Debian's `fonts-dejavu-core`, read at run time so that
/// the benches build without it.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers [`FONT`] as plotters' "sans-serif" (once per process).
pub fn plot_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let font = std::fs::read(FONT)
        .with_context(|| format!("cannot read {FONT} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let _ = DONE.set(());
    Ok(())
}

/// Key number `i` of the criterion benches (`pipeline`, `dedup_store`):
/// 1,000 ports per address, three services.
pub fn key_of(i: u32) -> mini_scan::stages::ScanKey {
    mini_scan::stages::ScanKey {
        ip: std::net::IpAddr::from((0x0101_0100u32 + i / 1000).to_be_bytes()),
        port: (i % 1000) as u16,
        service: ["HTTP", "SSH", "DNS"][(i % 3) as usize].into(),
    }
}

/// The order of message number `i` of the criterion benches, at `timestamp`.
pub fn order_of(i: u32, timestamp: i64) -> mini_scan::stages::Order {
    mini_scan::stages::Order {
        timestamp,
        published_micros: 1_700_000_000_000_000,
        message_id: format!("{}", 10_000_000_000u64 + u64::from(i)).into(),
    }
}

/// The machine's memory in kB (`MemTotal`, the first line of /proc/meminfo).
fn mem_total_kb() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    })
}

/// The PostgreSQL settings docs/SCALING.md recommends for a large
/// `scan_results`: compressed full-page images, checkpoints minutes apart,
/// and a quarter of the machine's memory as shared buffers.
pub fn recommended_settings() -> Vec<(String, String)> {
    let mem_kb = mem_total_kb().unwrap_or(4 << 20);
    [
        ("wal_compression", "lz4".to_owned()),
        ("max_wal_size", "16GB".to_owned()),
        ("checkpoint_timeout", "30min".to_owned()),
        (
            "shared_buffers",
            format!("{}MB", (mem_kb / 4 / 1024).max(128)),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The benches `cargo bench` runs, each of which records a summary.
const BENCHES: [&str; 5] = ["dedup_store", "e2e", "growth", "pipeline", "write"];

/// Records `bench`'s summary lines for this run in
/// `target/bench/summary/<bench>.txt` and prints them. When every bench of
/// the same `cargo bench` (the same parent process) has recorded its lines,
/// prints them all together and writes `target/bench/summary.md`: so the
/// last bench to finish ends the run with the whole summary, whatever the
/// order cargo runs them in.
pub fn summary(bench: &str, lines: &[String]) {
    let dir = out_dir().join("summary");
    let _ = std::fs::create_dir_all(&dir);
    let run = format!("run {}", std::os::unix::process::parent_id());
    let mut text = format!("{run}\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let _ = std::fs::write(dir.join(format!("{bench}.txt")), &text);
    let mut all = Vec::new();
    for b in BENCHES {
        let Ok(t) = std::fs::read_to_string(dir.join(format!("{b}.txt"))) else {
            break;
        };
        let mut t = t.lines();
        if t.next() != Some(run.as_str()) {
            break;
        }
        all.push((b, t.map(str::to_owned).collect::<Vec<_>>()));
    }
    let mut out = String::new();
    let shown: Vec<(&str, Vec<String>)> = if all.len() == BENCHES.len() {
        out.push_str("\n== cargo bench: summary (docs/benchmarks.md explains each figure) ==\n");
        all
    } else {
        out.push_str(&format!("\n== {bench}: summary ==\n"));
        vec![(bench, lines.to_vec())]
    };
    for (b, ls) in &shown {
        for l in ls {
            out.push_str(&format!("{b:<12} {l}\n"));
        }
    }
    println!("{out}");
    if shown.len() == BENCHES.len() {
        let _ = std::fs::write(out_dir().join("summary.md"), &out);
    }
}

/// `target/bench/`, created.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let dir = target.join("bench");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Messages as the generator makes them, decoded into scans with synthetic
/// message ids and publish times (one microsecond apart), in arrival order.
pub fn scans(rows: usize, keys: u64, out_of_order: f64, seed: u64) -> Vec<mini_scan::stages::Scan> {
    use mini_scan::scan::{GenConfig, Generator};
    use mini_scan::stages::{Order, Scan};
    let mut generator = Generator::new(GenConfig {
        keys: Some(keys),
        v1_ratio: 0.5,
        duplicate_ratio: 0.0,
        out_of_order_ratio: out_of_order,
        malformed_ratio: 0.0,
        response_bytes: None,
        seed: Some(seed),
    });
    let base = 1_700_000_000_000_000i64;
    (0..rows)
        .map(|i| {
            let data = generator.next_message();
            let obs = mini_scan::stages::decode::decode(&data)
                .expect("the generator makes valid scans here");
            Scan {
                key: obs.key,
                order: Order {
                    timestamp: obs.timestamp,
                    published_micros: base + i as i64,
                    message_id: format!("{}", 10_000_000_000u64 + i as u64).into(),
                },
                response: obs.response,
                response_raw: obs.response_raw,
                payload: data.into(),
                cached: None,
            }
        })
        .collect()
}
