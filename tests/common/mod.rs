//! The integration-test harness: real PostgreSQL, the real Pub/Sub emulator and the real
//! `mini-scan` binary, never mocks.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`TestContext`], which gives one test its own freshly migrated database
//!   and its own topic and subscription; [`wait_until`]; process plumbing shared by the modules
//!   below (children that die with the test binary, clean-up at exit).
//! - [`postgres`]: the PostgreSQL server shared by a test binary (a throwaway cluster, or the server
//!   named by `DATABASE_URL`), a dedicated cluster that a test may stop and start, per-test
//!   databases and row queries.
//! - [`pubsub`]: the emulator shared by a test binary (started here, or the one named by
//!   `PUBSUB_EMULATOR_HOST`) and a small REST client for topics, subscriptions, publish and pull,
//!   and for counting what is unacknowledged (snapshot and seek, which take nothing from the
//!   ingesters).
//! - [`ingester`]: runs `mini-scan ingest` as a child process, sends it signals, waits for it and
//!   scrapes its `/metrics`.
//! - [`scans`]: builds scan messages (valid and malformed) and computes the table that a set of
//!   published scans must converge to.
//!
//! Servers start once per test binary and are shared by its tests; every test isolates itself with
//! random database, topic and subscription names. When a server cannot be had, the test fails with
//! a message that says what to install or which variable to set: nothing is skipped.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod ingester;
pub mod postgres;
pub mod pubsub;
pub mod scans;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rand::Rng as _;
use tempfile::TempDir;

pub use ingester::Ingester;
pub use postgres::{DedicatedPostgres, TestDb};
pub use pubsub::PubSub;
pub use scans::{Key, Scan};

/// The Pub/Sub project every test uses.
pub const PROJECT: &str = "test-project";

/// How often [`wait_until`] polls. Short enough that tests finish promptly, long enough that the
/// polling itself is no load on two cores.
const POLL_INTERVAL: Duration = Duration::from_millis(150);

/// One test's world: its own database on the shared (or a dedicated) PostgreSQL server, migrated by
/// the real binary, and its own topic and subscription on the shared emulator.
pub struct TestContext {
    pub db: TestDb,
    pub pubsub: PubSub,
    /// The short topic name (project `test-project`).
    pub topic: String,
    /// The short name of the subscription the ingesters read.
    pub subscription: String,
    /// Logs of the processes this test starts; printed when the test fails.
    scratch: TempDir,
}

impl TestContext {
    /// A context on the PostgreSQL server shared by this test binary.
    pub async fn new() -> Self {
        let db = TestDb::create_on_shared().await;
        Self::with_db(db).await
    }

    /// A context whose database lives on `pg`, a cluster this test may stop and start.
    pub async fn on_dedicated(pg: &DedicatedPostgres) -> Self {
        let db = TestDb::create_on(pg.admin_url()).await;
        Self::with_db(db).await
    }

    async fn with_db(db: TestDb) -> Self {
        db.migrate().await;
        let pubsub = PubSub::shared().await;
        let topic = random_name("topic");
        let subscription = random_name("sub");
        pubsub.create_topic(&topic).await;
        pubsub.create_subscription(&subscription, &topic).await;
        let scratch = tempfile::Builder::new()
            .prefix("miniscan-test-")
            .tempdir()
            .expect("create a scratch directory for process logs");
        Self {
            db,
            pubsub,
            topic,
            subscription,
            scratch,
        }
    }

    /// Publishes raw payloads to this test's topic, in order, and returns their message ids.
    pub async fn publish(&self, payloads: &[Vec<u8>]) -> Vec<String> {
        self.pubsub.publish(&self.topic, payloads).await
    }

    /// Creates another subscription on this test's topic, to observe what was published
    /// (message ids, publish times) without taking messages from the ingesters.
    pub async fn tap(&self) -> String {
        let name = random_name("tap");
        self.pubsub.create_subscription(&name, &self.topic).await;
        name
    }

    /// How many messages are not acknowledged on this test's subscription, counting those leased
    /// to an ingester right now. Exact, and takes nothing from the ingesters (see
    /// [`PubSub::unacked`]); meant for the end of a test, once the ingesters have stopped.
    pub async fn remaining_messages(&self) -> usize {
        self.pubsub
            .unacked(&self.subscription, &self.topic)
            .await
            .len()
    }

    /// After killing an ingester: moves this test's unacknowledged messages to a fresh
    /// subscription, which the next ingester reads (see [`PubSub::replace_subscription`] for why).
    pub async fn replace_subscription(&mut self) {
        self.subscription = self
            .pubsub
            .replace_subscription(&self.subscription, &self.topic)
            .await;
    }

    /// Starts `mini-scan ingest` on this test's database and subscription, with `extra` settings
    /// (e.g. `MINISCAN_BATCH_MAX_ROWS`), and waits until it reports ready.
    pub async fn start_ingester(&self, extra: &[(&str, &str)]) -> Ingester {
        let mut env = vec![
            ("DATABASE_URL".to_owned(), self.db.url.clone()),
            ("PUBSUB_EMULATOR_HOST".to_owned(), self.pubsub.host.clone()),
            ("PUBSUB_PROJECT_ID".to_owned(), PROJECT.to_owned()),
            (
                "MINISCAN_SUBSCRIPTION".to_owned(),
                self.subscription.clone(),
            ),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Ingester::start(self.scratch.path(), &env).await
    }

    /// Runs `mini-scan scan --topic <this test's topic> --rate R --count N` to completion.
    pub async fn run_scan(&self, rate: u32, count: u32) -> std::process::Output {
        let mut cmd = binary_command();
        cmd.args(["scan", "--topic", &self.topic])
            .args(["--rate", &rate.to_string(), "--count", &count.to_string()])
            .env("PUBSUB_EMULATOR_HOST", &self.pubsub.host)
            .env("PUBSUB_PROJECT_ID", PROJECT)
            .env("MINISCAN_TOPIC", &self.topic);
        run_to_completion(cmd, Duration::from_secs(120), "mini-scan scan").await
    }

    /// The stored table as `key -> (last_scanned, exact response bytes)`.
    pub async fn table(&self) -> BTreeMap<Key, (i64, Vec<u8>)> {
        self.db.table().await
    }
}

/// The path of the binary under test. `option_env!` rather than `env!` so that the harness itself
/// compiles (and its smoke tests run) before the crate has a binary target.
pub fn binary_path() -> &'static str {
    option_env!("CARGO_BIN_EXE_mini-scan").unwrap_or_else(|| {
        panic!(
            "the crate has no `mini-scan` binary target (src/main.rs) yet: \
             the end-to-end tests run the real binary"
        )
    })
}

/// A command for the binary under test, with an environment free of settings inherited from the
/// developer's shell that could point it at another server, and that dies with the test binary.
pub fn binary_command() -> tokio::process::Command {
    let mut cmd = Command::new(binary_path());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("MINISCAN_")
            || key.starts_with("PUBSUB_")
            || key.starts_with("GOOGLE_")
            || key.starts_with("PG")
            || key == "DATABASE_URL"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    die_with_parent(&mut cmd, None);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `cmd` with its output captured, fails the test if it does not exit 0 within `timeout`.
pub async fn run_to_completion(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    what: &str,
) -> std::process::Output {
    cmd.stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`{what}` did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    assert!(
        output.status.success(),
        "`{what}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

/// What a [`wait_until`] condition reports: `true`/`Ok(())` when met, otherwise `false` or a
/// description of the current state for the failure message.
pub trait Condition {
    fn into_result(self) -> Result<(), String>;
}

impl Condition for bool {
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    }
}

impl Condition for Result<(), String> {
    fn into_result(self) -> Result<(), String> {
        self
    }
}

/// Polls `check` until it holds, and fails the test with `what` and the last observed state if it
/// does not hold within `timeout`. The services are real and reached over the network, so polling
/// with a deadline is the synchronisation; never a bare sleep.
pub async fn wait_until<C: Condition>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> C,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await.into_result() {
            Ok(()) => return,
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`wait_until`], for a blocking check run on the calling thread (used while starting
/// servers, outside any async runtime).
fn wait_blocking(
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
            Ok(false) => return Err(format!("not ready within {timeout:?}")),
            Err(e) => return Err(e),
        }
    }
}

/// A name no other test (or earlier run) uses: `prefix` and 16 random hex digits. Pub/Sub and
/// PostgreSQL both accept it unquoted.
pub fn random_name(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{n:016x}")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &all[all.len().saturating_sub(lines)..] {
        let _ = writeln!(out, "    {line}");
    }
    out
}

/// A user to run a child as: PostgreSQL refuses to run as root.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunAs {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Makes the child get SIGKILL when the thread that spawned it dies, so no server outlives the test
/// binary even when it is killed. Changing credentials clears the death signal, so it is set after
/// `setuid`.
pub(crate) fn die_with_parent(cmd: &mut Command, run_as: Option<RunAs>) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (setgroups, setgid, setuid, prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(user) = run_as
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(user.gid) != 0
                    || libc::setuid(user.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would send the signal.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns a server that must live as long as the test binary. The death signal fires when the
/// *thread* that forked the child exits, and every test runs on a thread that exits when the test
/// ends, so long-lived children are forked by one thread that never exits.
pub(crate) fn spawn_long_lived(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the server-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("the server-spawner thread is gone");
    reply_rx.recv().expect("the server-spawner thread is gone")
}

/// A server started for the whole test binary: at exit it is stopped with `signal` and its
/// directory removed (statics are never dropped, so `Drop` cannot do it).
struct ExitCleanup {
    pid: libc::pid_t,
    signal: libc::c_int,
    dir: PathBuf,
}

static AT_EXIT: Mutex<Vec<ExitCleanup>> = Mutex::new(Vec::new());

/// Registers a server to stop, and a directory to remove, when the test binary exits.
pub(crate) fn clean_up_at_exit(pid: u32, signal: libc::c_int, dir: PathBuf) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        let rc = unsafe { libc::atexit(run_exit_cleanups) };
        assert_eq!(rc, 0, "atexit failed");
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ExitCleanup {
            pid: pid as libc::pid_t,
            signal,
            dir,
        });
}

extern "C" fn run_exit_cleanups() {
    let cleanups = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for c in &cleanups {
        // SAFETY: plain syscalls on a pid this process spawned and has not reaped.
        unsafe { libc::kill(c.pid, c.signal) };
    }
    for c in &cleanups {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut status = 0;
            // SAFETY: as above.
            let rc = unsafe { libc::waitpid(c.pid, &mut status, libc::WNOHANG) };
            if rc != 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&c.dir);
    }
}
