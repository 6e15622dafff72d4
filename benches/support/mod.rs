//! What the benchmarks share: a throwaway PostgreSQL cluster, a fresh Pub/Sub
//! emulator, CPU clocks and peak-memory readings.
//!
//! The servers are started here rather than through `tests/common`: the test
//! harness runs PostgreSQL with `fsync=off` and `synchronous_commit=off`, which
//! would overstate every write rate, and benches want a fresh emulator per run
//! (it slows down as topics and subscriptions pile up). Both servers are
//! children that get SIGKILL when the bench process dies (`PR_SET_PDEATHSIG`),
//! and are stopped when their handle drops.
#![allow(dead_code)] // Each bench binary uses a different part.

use anyhow::{Context as _, bail};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's PostgreSQL 15 server binaries live (override with
/// `MINISCAN_BENCH_PG_BINDIR`).
const PG_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// Google's emulator launcher (override with `MINISCAN_BENCH_PUBSUB_EMULATOR`).
const EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";
/// A cold cluster starts in a second and a JVM in a few; the margin is for a
/// machine busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The `postgres` user of Debian's package: initdb and postgres refuse root.
const PG_UID: libc::uid_t = 101;
const PG_GID: libc::gid_t = 104;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Makes `cmd`'s child run as `run_as` (uid, gid) and get SIGKILL when the
/// spawning thread dies. Changing credentials clears the death signal, so it
/// is set after `setuid`.
fn die_with_parent(cmd: &mut Command, run_as: Option<(libc::uid_t, libc::gid_t)>) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs between fork and exec and calls only async-signal-safe
    // functions (setgroups, setgid, setuid, prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = run_as
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A PostgreSQL server for one bench run: a throwaway cluster, or the server
/// named by `DATABASE_URL` (a database with a random name is created on it).
pub struct Postgres {
    /// Connection URL of the bench database.
    pub url: String,
    /// Whether the server is our own child (then its pid is known).
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Postgres {
    /// Starts a fresh cluster with durable commits (`fsync=on`, the default
    /// `synchronous_commit=on`), or uses `DATABASE_URL`; then applies the
    /// schema with `mini_scan::db::migrate`.
    pub async fn start() -> anyhow::Result<Self> {
        let pg = match std::env::var("DATABASE_URL") {
            Ok(admin) => {
                let name = format!("miniscan_bench_{:08x}", rand::random::<u32>());
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .context("cannot connect to DATABASE_URL")?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await?;
                let mut cfg: tokio_postgres::Config = admin.parse()?;
                cfg.dbname(&name);
                let url = config_to_url(&cfg);
                Self {
                    url,
                    child: None,
                    dir: None,
                }
            }
            Err(_) => tokio::task::block_in_place(Self::start_cluster)?,
        };
        let cfg = mini_scan::db::config(&pg.url)?;
        mini_scan::db::migrate(&cfg)
            .await
            .context("cannot apply the schema")?;
        Ok(pg)
    }

    fn start_cluster() -> anyhow::Result<Self> {
        let bindir = std::env::var_os("MINISCAN_BENCH_PG_BINDIR")
            .map_or_else(|| PathBuf::from(PG_BINDIR), PathBuf::from);
        let dir = tempfile::Builder::new()
            .prefix("miniscan-bench-pg-")
            .tempdir()?;
        let root = dir.path().to_owned();
        // SAFETY: geteuid has no preconditions.
        let run_as = (unsafe { libc::geteuid() } == 0).then_some((PG_UID, PG_GID));
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        }
        let data = root.join("data");
        let log = root.join("postgres.log");
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut initdb, run_as);
        let out = initdb.output().with_context(|| {
            format!(
                "cannot run {}/initdb (install postgresql-15)",
                bindir.display()
            )
        })?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port();
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&root)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "max_connections=100",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?);
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
        }
        die_with_parent(&mut cmd, run_as);
        let mut child = cmd.spawn().context("cannot start postgres")?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("postgres exited with {status}:\n{}", tail(&log));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Accepting TCP is not accepting queries: try one.
                let ok = std::process::Command::new(bindir.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(true);
                if ok {
                    break;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "postgres did not start within {START_TIMEOUT:?}:\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            url,
            child: Some(child),
            dir: Some(dir),
        })
    }

    /// The server's pid, when it is our child (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A plain connection (its driver task is spawned).
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SIGQUIT: immediate shutdown, which also ends the backends.
            // SAFETY: a plain syscall on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let _ = child.wait();
        }
        drop(self.dir.take());
    }
}

fn config_to_url(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let pass = cfg
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = cfg.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{pass}@{host}:{port}/{db}")
}

/// A fresh Pub/Sub emulator, killed when the handle drops.
pub struct Emulator {
    /// `host:port`, the value for `PUBSUB_EMULATOR_HOST`.
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// Starts Google's emulator on a free port and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let script = std::env::var_os("MINISCAN_BENCH_PUBSUB_EMULATOR")
            .map_or_else(|| PathBuf::from(EMULATOR), PathBuf::from);
        let dir = tempfile::Builder::new()
            .prefix("miniscan-bench-pubsub-")
            .tempdir()?;
        let log = dir.path().join("emulator.log");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&script);
        cmd.arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?);
        die_with_parent(&mut cmd, None);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "cannot run {} (install the Pub/Sub emulator and Java 17)",
                script.display()
            )
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("the emulator exited with {status}:\n{}", tail(&log));
            }
            if http_ok(&host) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "the emulator did not answer within {START_TIMEOUT:?}:\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Self {
            host,
            child,
            _dir: dir,
        })
    }

    /// The JVM's pid (the launcher script `exec`s java).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_ok(host: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(
            &host.parse().map_err(std::io::Error::other)?,
            Duration::from_secs(1),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
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
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
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
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{cores} cores, {cpu}, {:.1} GiB memory",
        mem_kb as f64 / 1024.0 / 1024.0
    )
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
                    message_id: format!("{}", 10_000_000_000u64 + i as u64),
                },
                response: obs.response,
                response_raw: obs.response_raw,
                payload: data.into(),
            }
        })
        .collect()
}
