//! PostgreSQL for the tests: the server a test binary shares, a dedicated cluster a test may stop
//! and start, per-test databases, and queries on the tables the ingester writes.
//!
//! The shared server is the one named by `DATABASE_URL` in the test run's environment, if set;
//! otherwise a throwaway cluster in a temporary directory, started once per test binary with
//! `postgres` itself (not `pg_ctl`, which would detach it) so it dies with the binary.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

use super::{Key, RunAs, binary_command, die_with_parent, free_port, random_name, tail};

/// How to get PostgreSQL when the harness cannot start it.
const HOW_TO_GET_POSTGRES: &str = "install PostgreSQL 15 or newer (`apt-get install postgresql-15`), \
     or set MINISCAN_TEST_PG_BINDIR to the directory holding `initdb` and `postgres`, \
     or set DATABASE_URL to a server on which the tests may create databases";

/// A cold cluster starts in about a second; the margin is for a machine busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A fast shutdown with a handful of connections takes well under a second.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The URL of the shared server's `postgres` database, from which test databases are created.
fn shared_admin_url() -> &'static str {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(url);
        }
        let dir = tempfile::Builder::new()
            .prefix("miniscan-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let started = Cluster::init(dir.path()).and_then(|c| c.start().map(|()| c));
        let cluster = match started {
            Ok(cluster) => cluster,
            Err(e) => {
                // Keep the directory, so the log named in the message stays.
                let _ = dir.keep();
                return Err(e);
            }
        };
        let url = cluster.admin_url();
        let pid = cluster.pid().expect("the cluster was just started");
        // SIGQUIT: immediate shutdown, which also ends the backends.
        super::clean_up_at_exit(pid, libc::SIGQUIT, dir.keep());
        // The cluster (and its child handle) lives as long as the process.
        std::mem::forget(cluster);
        Ok(url)
    });
    match shared {
        Ok(url) => url,
        Err(e) => panic!("PostgreSQL is not available: {e}\nTo fix: {HOW_TO_GET_POSTGRES}"),
    }
}

/// A PostgreSQL cluster owned by one test, which may stop and start it (on the same port and data
/// directory) without disturbing the other tests.
pub struct DedicatedPostgres {
    cluster: Arc<Cluster>,
    _dir: TempDir,
}

impl DedicatedPostgres {
    /// Creates and starts a cluster in a new temporary directory on a free port.
    pub async fn start_new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("miniscan-pg-dedicated-")
            .tempdir()
            .expect("create a temporary directory");
        let path = dir.path().to_owned();
        let started = tokio::task::spawn_blocking(move || {
            Cluster::init(&path).and_then(|c| c.start().map(|()| c))
        })
        .await
        .expect("the cluster start-up thread panicked");
        let cluster = match started {
            Ok(cluster) => cluster,
            Err(e) => {
                // Keep the directory, so the log named in the message stays.
                let _ = dir.keep();
                panic!(
                    "a dedicated PostgreSQL cluster is not available: {e}\nTo fix: {HOW_TO_GET_POSTGRES}"
                )
            }
        };
        Self {
            cluster: Arc::new(cluster),
            _dir: dir,
        }
    }

    /// The URL of the cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        self.cluster.admin_url()
    }

    /// Fast shutdown (SIGINT: active transactions are rolled back, clients disconnected); returns
    /// once the server has exited.
    pub async fn stop(&self) {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .expect("the cluster shutdown thread panicked")
            .unwrap_or_else(|e| panic!("stopping the dedicated PostgreSQL failed: {e}"));
    }

    /// Starts the server again on the same port and data directory; returns once it accepts
    /// connections.
    pub async fn start(&self) {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || cluster.start())
            .await
            .expect("the cluster start-up thread panicked")
            .unwrap_or_else(|e| panic!("restarting the dedicated PostgreSQL failed: {e}"));
    }
}

impl Drop for DedicatedPostgres {
    fn drop(&mut self) {
        self.cluster.kill();
    }
}

/// One PostgreSQL cluster: a data directory, a port, and the `postgres` process when running.
struct Cluster {
    bindir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    child: Mutex<Option<Child>>,
}

impl Cluster {
    /// Runs `initdb` in `root/data`, as the `postgres` user when we are root.
    fn init(root: &Path) -> Result<Self, String> {
        let bindir = find_bindir()?;
        let run_as = postgres_user()?;
        if let Some(user) = run_as {
            chown(root, user)?;
        }
        let cluster = Self {
            data: root.join("data"),
            log: root.join("postgres.log"),
            port: free_port(),
            bindir,
            run_as,
            child: Mutex::new(None),
        };
        let mut initdb = Command::new(cluster.bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .stdout(cluster.log_file()?)
            .stderr(cluster.log_file()?);
        die_with_parent(&mut initdb, run_as);
        let status = initdb.status().map_err(|e| {
            format!(
                "cannot run {}: {e}",
                cluster.bindir.join("initdb").display()
            )
        })?;
        if !status.success() {
            return Err(format!(
                "initdb failed with {status}; its log ({}) ends with:\n{}",
                cluster.log.display(),
                tail(&cluster.log, 30)
            ));
        }
        Ok(cluster)
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    fn log_file(&self) -> Result<File, String> {
        File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))
    }

    /// Starts `postgres` and waits until it accepts connections.
    fn start(&self) -> Result<(), String> {
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()]);
        for setting in [
            "listen_addresses=127.0.0.1",
            // TCP only: the default socket directory may belong to another server.
            "unix_socket_directories=",
            // Throwaway data: durability only costs time here. A clean shutdown still
            // checkpoints, so a stop/start keeps everything.
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            // Several ingesters, each with a pool, plus the tests' own connections.
            "max_connections=300",
        ] {
            cmd.args(["-c", setting]);
        }
        cmd.stdin(Stdio::null())
            .stdout(self.log_file()?)
            .stderr(self.log_file()?);
        die_with_parent(&mut cmd, self.run_as);
        let child = super::spawn_long_lived(cmd)
            .map_err(|e| format!("cannot run {}: {e}", self.bindir.join("postgres").display()))?;
        *self.child.lock().unwrap() = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = {
                let mut guard = self.child.lock().unwrap();
                let status = guard.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if status.is_some() {
                    // Reaped: its pid is no longer ours to signal.
                    guard.take();
                }
                status
            };
            if let Some(status) = exited {
                return Err(format!(
                    "postgres exited with {status} during start-up; its log ({}) ends with:\n{}",
                    self.log.display(),
                    tail(&self.log, 30)
                ));
            }
            if self.accepts_connections() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "postgres did not accept connections within {START_TIMEOUT:?}; its log ({}) ends with:\n{}",
                    self.log.display(),
                    tail(&self.log, 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `pg_isready` says 0 only once the server accepts connections (not while it starts up).
    fn accepts_connections(&self) -> bool {
        Command::new(self.bindir.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-t",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Fast shutdown, then waits for the process to exit.
    fn stop(&self) -> Result<(), String> {
        let mut guard = self.child.lock().unwrap();
        let Some(mut child) = guard.take() else {
            return Err("the cluster is not running".to_owned());
        };
        signal(&mut child, libc::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "postgres did not shut down within {STOP_TIMEOUT:?}; its log ({}) ends with:\n{}",
                        self.log.display(),
                        tail(&self.log, 30)
                    ));
                }
            }
        }
    }

    /// Immediate shutdown (SIGQUIT ends the backends too), for clean-up.
    fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            signal(&mut child, libc::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to `child` unless it has exited: once reaped, its pid may be another process's.
fn signal(child: &mut Child, sig: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: a plain syscall on the pid of our child, which has not been reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    }
}

/// The directory with `initdb`, `postgres` and `pg_isready`.
fn find_bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("MINISCAN_TEST_PG_BINDIR") {
        return Ok(dir.into());
    }
    // Debian and Ubuntu install server binaries outside PATH; take the newest version.
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match from_pg_config {
        Some(bin) if bin.join("initdb").exists() => Ok(bin),
        _ => Err(
            "no PostgreSQL server binaries (initdb, postgres) found in /usr/lib/postgresql/*/bin \
                  or via pg_config"
                .to_owned(),
        ),
    }
}

/// PostgreSQL refuses to run as root: when we are root, run it as the `postgres` user.
fn postgres_user() -> Result<Option<RunAs>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated name; the result is read at once, before any other getpw* call.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(
            "running as root, and there is no `postgres` user to run PostgreSQL as".to_owned(),
        );
    }
    // SAFETY: non-null result of getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

fn chown(path: &Path, user: RunAs) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| format!("cannot chown {} to the postgres user: {e}", path.display()))
}

/// Connects to `url`, driving the connection on the current runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database name replaced by `dbname`; handles both the URL and the
/// `key=value` forms of connection strings.
fn with_dbname(url: &str, dbname: &str) -> String {
    let Some(scheme_end) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .map(|rest| url.len() - rest.len())
    else {
        // key=value: a later key overrides an earlier one.
        return format!("{url} dbname={dbname}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{dbname}{query}", &base[..authority_end])
}

/// One test's database: created with a random name, migrated by `mini-scan migrate`.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

/// One row of `scan_results`, with the columns the tests compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `host(ip)`: the canonical text of the address.
    pub ip: String,
    pub port: i32,
    pub service: String,
    /// Unix seconds.
    pub last_scanned: i64,
    pub response: String,
    pub response_raw: Option<Vec<u8>>,
    /// `coalesce(response_raw, convert_to(response, 'UTF8'))`: the exact response bytes.
    pub bytes: Vec<u8>,
    /// Unix microseconds.
    pub published_at_us: i64,
    pub message_id: String,
}

impl Row {
    pub fn key(&self) -> Key {
        (self.ip.clone(), self.port, self.service.clone())
    }
}

/// One row of `dead_letters`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub message_id: String,
    pub reason: String,
    pub detail: String,
    pub payload: Vec<u8>,
}

impl TestDb {
    /// A new database on the shared server.
    pub async fn create_on_shared() -> Self {
        Self::create_on(shared_admin_url().to_owned()).await
    }

    /// A new database on the server whose `postgres` database is at `admin_url`.
    pub async fn create_on(admin_url: String) -> Self {
        let admin = connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {admin_url}: {e}\nTo fix: {HOW_TO_GET_POSTGRES}"
            )
        });
        let name = random_name("miniscan_test");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url} failed: {e}"));
        Self {
            url: with_dbname(&admin_url, &name),
            name,
        }
    }

    /// Applies the schema the way an operator does: `mini-scan migrate`.
    pub async fn migrate(&self) {
        let mut cmd = binary_command();
        cmd.arg("migrate").env("DATABASE_URL", &self.url);
        super::run_to_completion(cmd, Duration::from_secs(60), "mini-scan migrate").await;
    }

    pub async fn client(&self) -> Client {
        connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test database {}: {e}", self.name))
    }

    /// Every row of `scan_results`, ordered by key.
    pub async fn rows(&self) -> Vec<Row> {
        let client = self.client().await;
        let rows = client
            .query(
                "SELECT host(ip), port, service, \
                        extract(epoch FROM last_scanned)::bigint, \
                        response, response_raw, \
                        coalesce(response_raw, convert_to(response, 'UTF8')), \
                        (extract(epoch FROM published_at) * 1000000)::bigint, \
                        message_id \
                 FROM scan_results ORDER BY ip, port, service",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("querying scan_results failed: {e}"));
        rows.iter()
            .map(|r| Row {
                ip: r.get(0),
                port: r.get(1),
                service: r.get(2),
                last_scanned: r.get(3),
                response: r.get(4),
                response_raw: r.get(5),
                bytes: r.get(6),
                published_at_us: r.get(7),
                message_id: r.get(8),
            })
            .collect()
    }

    /// The stored table as `key -> (last_scanned, exact response bytes)`, the form
    /// [`super::scans::expected_table`] computes.
    pub async fn table(&self) -> BTreeMap<Key, (i64, Vec<u8>)> {
        self.rows()
            .await
            .into_iter()
            .map(|r| (r.key(), (r.last_scanned, r.bytes)))
            .collect()
    }

    pub async fn count_rows(&self) -> i64 {
        self.count("SELECT count(*) FROM scan_results").await
    }

    pub async fn count_dead_letters(&self) -> i64 {
        self.count("SELECT count(*) FROM dead_letters").await
    }

    async fn count(&self, sql: &str) -> i64 {
        let client = self.client().await;
        client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
            .get(0)
    }

    /// Every row of `dead_letters`, ordered by message id.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let client = self.client().await;
        client
            .query(
                "SELECT message_id, reason, detail, payload FROM dead_letters ORDER BY message_id",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("querying dead_letters failed: {e}"))
            .iter()
            .map(|r| DeadLetter {
                message_id: r.get(0),
                reason: r.get(1),
                detail: r.get(2),
                payload: r.get(3),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn replaces_the_database_in_every_form() {
        assert_eq!(
            with_dbname("postgres://u@h:5/old", "new"),
            "postgres://u@h:5/new"
        );
        assert_eq!(
            with_dbname("postgresql://u@h", "new"),
            "postgresql://u@h/new"
        );
        assert_eq!(
            with_dbname("postgres://u:p@h:5/old?sslmode=disable", "new"),
            "postgres://u:p@h:5/new?sslmode=disable"
        );
        assert_eq!(
            with_dbname("host=h user=u", "new"),
            "host=h user=u dbname=new"
        );
    }
}
