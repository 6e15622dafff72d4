//! A throwaway PostgreSQL cluster.
//!
//! [`Cluster::create`] runs `initdb` in a temporary directory and starts `postgres` itself (not
//! `pg_ctl`, which would detach it) on a free port of 127.0.0.1, TCP only, trusting every local
//! user, as the `postgres` OS user (looked up with `getpwnam`) when we are root, since PostgreSQL
//! refuses to run as root. [`PgOptions`] says which binaries, how durable, and what else to
//! configure:
//!
//! ```ignore
//! // PostgreSQL 18, from the environment: MINISCAN_TEST_PG_BINDIR=/usr/lib/postgresql/18/bin
//! let pg = Cluster::create(PgOptions::for_tests())?;
//! // TLS only (ssl_cert_file and ssl_key_file default to these names in the data directory):
//! let tls = Cluster::create(
//!     PgOptions::for_tests()
//!         .file("server.crt", cert_pem)
//!         .file("server.key", key_pem)
//!         .setting("ssl", "on")
//!         .hba_line("hostnossl all all 0.0.0.0/0 reject"),
//! )?;
//! ```

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tempfile::TempDir;

use super::process::{self, LOG_LINES, RunAs, die_with_parent, signal, spawn_server, wait_exit};
use super::{Error, Purpose, append_log, free_port, tail, temp_dir};

/// Where Debian's PostgreSQL 15 server binaries live; [`Purpose::pg_bindir_var`] overrides it.
pub const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// A cold cluster starts in about a second; the margin is for a machine busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A fast shutdown with a handful of connections takes well under a second.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// An immediate shutdown (SIGQUIT) takes milliseconds; after this, SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often start-up polls `pg_isready`.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How to get PostgreSQL when a cluster cannot be started for `purpose`.
pub fn how_to_get_postgres(purpose: Purpose) -> String {
    format!(
        "install PostgreSQL 15 (`apt-get install postgresql-15`), \
         or set {} to the bin directory of another version (holding `initdb`, `postgres` and \
         `pg_isready`), or set DATABASE_URL to a server on which the {} may create databases",
        purpose.pg_bindir_var(),
        purpose.noun()
    )
}

/// How to build a [`Cluster`]. Start from [`Self::for_tests`] or [`Self::for_benches`], then
/// change what the cluster needs.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Whose environment variables, names and advice apply.
    pub purpose: Purpose,
    /// The directory holding `initdb`, `postgres` and `pg_isready`.
    pub bindir: PathBuf,
    /// Whether `bindir` came from the environment (for failure messages).
    bindir_from_env: bool,
    /// Durable commits (`fsync=on`, `synchronous_commit=on`, `full_page_writes=on`, PostgreSQL's
    /// defaults) or throwaway ones (all three off): several times faster for small transactions,
    /// and a clean shutdown still checkpoints, so a stop and start keeps everything.
    pub fsync: bool,
    /// Extra server settings, `-c name=value`, after (so overriding) the built-in ones.
    pub settings: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines, put before `initdb`'s (`trust` for every local connection):
    /// the first line that matches a connection decides.
    pub hba_lines: Vec<String>,
    /// Files written into the data directory before the first start (mode 0600, owned by the
    /// server's user), e.g. `server.crt` and `server.key`.
    pub files: Vec<(String, Vec<u8>)>,
}

impl PgOptions {
    /// For the tests: throwaway durability; binaries from `MINISCAN_TEST_PG_BINDIR`, else
    /// [`DEFAULT_BINDIR`].
    pub fn for_tests() -> Self {
        Self::new(Purpose::Tests, false)
    }

    /// For the benches: durable commits, so write rates are honest; binaries from
    /// `MINISCAN_BENCH_PG_BINDIR`, else [`DEFAULT_BINDIR`].
    pub fn for_benches() -> Self {
        Self::new(Purpose::Benches, true)
    }

    fn new(purpose: Purpose, fsync: bool) -> Self {
        let from_env = std::env::var_os(purpose.pg_bindir_var());
        Self {
            purpose,
            bindir_from_env: from_env.is_some(),
            bindir: from_env.map_or_else(|| PathBuf::from(DEFAULT_BINDIR), PathBuf::from),
            fsync,
            settings: Vec::new(),
            hba_lines: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Durable (`true`) or throwaway (`false`) commits; see [`Self::fsync`](field@Self::fsync).
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Binaries from `dir` rather than the environment or the default.
    pub fn bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = dir.into();
        self.bindir_from_env = false;
        self
    }

    /// One more server setting, `-c name=value`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// One more `pg_hba.conf` line, matched before `initdb`'s.
    pub fn hba_line(mut self, line: &str) -> Self {
        self.hba_lines.push(line.to_owned());
        self
    }

    /// One more file for the data directory.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_owned(), contents.into()));
        self
    }

    /// Every `-c` setting, in order: later ones override earlier ones.
    fn server_settings(&self) -> Vec<String> {
        let mut all: Vec<String> = [
            "listen_addresses=127.0.0.1",
            // TCP only: the default socket directory may belong to another server.
            "unix_socket_directories=",
            // Several ingesters, each with a pool, plus the tests' own connections.
            "max_connections=300",
        ]
        .map(str::to_owned)
        .into();
        if !self.fsync {
            all.extend(
                [
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                ]
                .map(str::to_owned),
            );
        }
        all.extend(self.settings.iter().map(|(k, v)| format!("{k}={v}")));
        all
    }

    /// Whether `bindir` holds `initdb`, and if not, where PostgreSQL might be.
    fn checked_bindir(&self) -> Result<(), Error> {
        if self.bindir.join("initdb").is_file() {
            return Ok(());
        }
        let var = self.purpose.pg_bindir_var();
        let source = if self.bindir_from_env {
            format!("named by {var}")
        } else {
            format!("{var} is not set")
        };
        let mut message = format!(
            "there is no `initdb` in {} ({source})",
            self.bindir.display()
        );
        let others = installed_bindirs();
        if !others.is_empty() {
            let list: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
            message.push_str(&format!("; this machine has {}", list.join(", ")));
        }
        Err(Error::new(message))
    }
}

/// The bin directories of the PostgreSQL versions Debian installed (`/usr/lib/postgresql/*/bin`).
fn installed_bindirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// One PostgreSQL cluster in a temporary directory: a data directory, a port, and the `postgres`
/// process while running. Dropping it stops the server (immediate shutdown) and removes the
/// directory.
pub struct Cluster {
    options: PgOptions,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    child: Mutex<Option<Child>>,
    /// `None` until start-up succeeded: a failed start keeps its directory and log.
    dir: Option<TempDir>,
}

impl Cluster {
    /// Runs `initdb`, writes the configuration `options` asks for and starts the server; returns
    /// once it accepts connections. Blocks: from async code, call it in `spawn_blocking` or
    /// `block_in_place`. On failure the directory stays, so the log the message names can be read.
    pub fn create(options: PgOptions) -> Result<Self, Error> {
        let fix = how_to_get_postgres(options.purpose);
        let unavailable =
            |e: Error| Error::with_fix(format!("PostgreSQL is not available: {}", e.message), &fix);
        options.checked_bindir().map_err(unavailable)?;
        let dir = temp_dir(options.purpose, "pg").map_err(unavailable)?;
        let mut cluster = Self {
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            port: free_port(),
            run_as: postgres_user().map_err(unavailable)?,
            options,
            child: Mutex::new(None),
            dir: None,
        };
        let started = cluster.init().and_then(|()| cluster.start());
        match started {
            Ok(()) => {
                cluster.dir = Some(dir);
                Ok(cluster)
            }
            Err(e) => {
                let _ = dir.keep();
                Err(unavailable(e))
            }
        }
    }

    /// The URL of the cluster's `postgres` database, as superuser `postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log (and `initdb`'s).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `initdb`, then the extra `pg_hba.conf` lines and files.
    fn init(&self) -> Result<(), Error> {
        let bindir = &self.options.bindir;
        let root = self
            .data
            .parent()
            .expect("the data directory is in the cluster's");
        if let Some(user) = self.run_as {
            chown(root, user)?;
        }
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .stdout(append_log(&self.log)?)
            .stderr(append_log(&self.log)?);
        die_with_parent(&mut initdb, self.run_as);
        let status = initdb.status().map_err(|e| {
            Error::new(format!(
                "cannot run {}: {e}",
                bindir.join("initdb").display()
            ))
        })?;
        if !status.success() {
            return Err(Error::new(format!(
                "initdb failed with {status}; its log ({}) ends with:\n{}",
                self.log.display(),
                tail(&self.log, LOG_LINES)
            )));
        }
        self.configure()
    }

    fn configure(&self) -> Result<(), Error> {
        let io = |what: &str, path: &Path, e: std::io::Error| {
            Error::new(format!("cannot {what} {}: {e}", path.display()))
        };
        if !self.options.hba_lines.is_empty() {
            let hba = self.data.join("pg_hba.conf");
            let initdbs = std::fs::read_to_string(&hba).map_err(|e| io("read", &hba, e))?;
            let ours = self.options.hba_lines.join("\n");
            std::fs::write(&hba, format!("{ours}\n{initdbs}")).map_err(|e| io("write", &hba, e))?;
        }
        for (name, contents) in &self.options.files {
            let path = self.data.join(name);
            std::fs::write(&path, contents).map_err(|e| io("write", &path, e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("chmod", &path, e))?;
            if let Some(user) = self.run_as {
                chown(&path, user)?;
            }
        }
        Ok(())
    }

    /// Starts `postgres` (again, after [`Self::stop`]: same port and data directory) and waits
    /// until it accepts connections. Blocks.
    pub fn start(&self) -> Result<(), Error> {
        let mut guard = self.lock_child();
        if guard.is_some() {
            return Err(Error::new("the cluster is already running"));
        }
        let mut cmd = Command::new(self.options.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()]);
        for setting in self.options.server_settings() {
            cmd.arg("-c").arg(setting);
        }
        let mut child = spawn_server(cmd, &self.log, self.run_as)?;
        process::wait_ready(
            "postgres",
            &mut child,
            &self.log,
            START_TIMEOUT,
            POLL_INTERVAL,
            || self.accepts_connections(),
        )?;
        *guard = Some(child);
        Ok(())
    }

    /// `pg_isready` says 0 only once the server accepts connections (not while it starts up).
    fn accepts_connections(&self) -> bool {
        Command::new(self.options.bindir.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-t", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Fast shutdown (SIGINT: active transactions are rolled back, clients disconnected); returns
    /// once the server has exited. Blocks.
    pub fn stop(&self) -> Result<(), Error> {
        let Some(mut child) = self.lock_child().take() else {
            return Err(Error::new("the cluster is not running"));
        };
        signal(&mut child, libc::SIGINT);
        if wait_exit(&mut child, STOP_TIMEOUT) {
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(Error::new(format!(
            "postgres did not shut down within {STOP_TIMEOUT:?}; its log ({}) ends with:\n{}",
            self.log.display(),
            self.log_tail(LOG_LINES)
        )))
    }
}

impl Drop for Cluster {
    /// Immediate shutdown (SIGQUIT ends the backends too), then SIGKILL if that hangs.
    fn drop(&mut self) {
        if let Some(mut child) = self.lock_child().take() {
            signal(&mut child, libc::SIGQUIT);
            wait_exit(&mut child, KILL_TIMEOUT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// When we are root, the `postgres` user to run PostgreSQL as (it refuses to run as root).
pub(crate) fn postgres_user() -> Result<Option<RunAs>, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated name; the result is read at once, before any other getpw* call.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(Error::new(
            "running as root, and there is no `postgres` user to run PostgreSQL as",
        ));
    }
    // SAFETY: non-null result of getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

fn chown(path: &Path, user: RunAs) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
        Error::new(format!(
            "cannot chown {} to the postgres user: {e}",
            path.display()
        ))
    })
}

// Paths, not imports: bench binaries compile this module with `cfg(test)` but no test harness.
#[cfg(test)]
mod tests {
    #[test]
    fn extra_settings_come_after_and_so_override_the_built_in_ones() {
        let settings = super::PgOptions::for_tests()
            .setting("max_connections", "20")
            .server_settings();
        let position = |s: &str| settings.iter().position(|x| x == s);
        assert!(position("fsync=off").is_some(), "{settings:?}");
        assert!(position("max_connections=300") < position("max_connections=20"));
        let durable = super::PgOptions::for_tests().fsync(true).server_settings();
        assert!(
            !durable.iter().any(|s| s.starts_with("fsync")),
            "{durable:?}"
        );
    }
}
