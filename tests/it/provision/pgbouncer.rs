//! A throwaway pgbouncer in transaction mode (`pool_mode = transaction`) in front of a
//! [`super::Cluster`]: on a free port of 127.0.0.1, `auth_type = trust` (user `postgres` in its
//! userlist), every database passed through (`* = host=127.0.0.1 port=..`), run as the
//! `postgres` OS user when we are root (pgbouncer refuses root), dying with this process.
//!
//! Binary: `MINISCAN_TEST_PGBOUNCER`, else `/usr/sbin/pgbouncer` (Debian's `pgbouncer` package,
//! 1.18: no protocol-level prepared statements, so what passes through it relies on none).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use super::postgres::postgres_user;
use super::process::{self, LOG_LINES, spawn_server};
use super::{Error, Purpose, free_port, tail, temp_dir};

/// Debian's pgbouncer.
pub const DEFAULT_PGBOUNCER: &str = "/usr/sbin/pgbouncer";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running pgbouncer. Dropping it kills it (SIGKILL) and removes its directory.
pub struct PgBouncer {
    port: u16,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts pgbouncer in transaction mode in front of the server on 127.0.0.1:`server_port`,
    /// with at most `pool_size` server connections per database and user; returns once it
    /// accepts TCP connections. Blocks.
    pub fn start(server_port: u16, pool_size: u32) -> Result<Self, Error> {
        let run_as = postgres_user()?;
        let binary = std::env::var_os("MINISCAN_TEST_PGBOUNCER")
            .map_or_else(|| PathBuf::from(DEFAULT_PGBOUNCER), PathBuf::from);
        if !binary.exists() {
            return Err(Error::with_fix(
                format!(
                    "pgbouncer is not available: {} is missing",
                    binary.display()
                ),
                "apt-get install pgbouncer, or set MINISCAN_TEST_PGBOUNCER to its binary",
            ));
        }
        let dir = temp_dir(Purpose::Tests, "pgbouncer")?;
        let port = free_port();
        let config = dir.path().join("pgbouncer.ini");
        let userlist = dir.path().join("userlist.txt");
        write(&userlist, "\"postgres\" \"\"\n")?;
        write(&config, &ini(port, server_port, pool_size, &userlist))?;
        if let Some(user) = run_as {
            for path in [dir.path(), &config, &userlist] {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                    .map_err(|e| Error::new(format!("cannot chown {}: {e}", path.display())))?;
            }
        }
        let log = dir.path().join("pgbouncer.log");
        let mut cmd = Command::new(&binary);
        cmd.arg(&config);
        let mut child = spawn_server(cmd, &log, run_as)?;
        let addr = format!("127.0.0.1:{port}");
        process::wait_ready(
            "pgbouncer",
            &mut child,
            &log,
            START_TIMEOUT,
            Duration::from_millis(50),
            || TcpStream::connect(&addr).is_ok(),
        )?;
        Ok(Self {
            port,
            log,
            child: Mutex::new(Some(child)),
            _dir: dir,
        })
    }

    /// The URL of `dbname` through this pgbouncer, as `postgres`, without TLS (it has none).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_LINES)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let taken = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = taken {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ini(port: u16, server_port: u16, pool_size: u32, userlist: &Path) -> String {
    format!(
        "[databases]\n\
         * = host=127.0.0.1 port={server_port}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {}\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_client_conn = 500\n\
         ignore_startup_parameters = extra_float_digits\n\
         admin_users = postgres\n",
        userlist.display()
    )
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}
