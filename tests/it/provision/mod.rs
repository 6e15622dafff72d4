//! Throwaway servers for the integration tests and the benchmarks: a PostgreSQL cluster and
//! Google's Pub/Sub emulator, each a child process on a free port that dies with the process that
//! started it.
//!
//! A module of the test binary (`tests/it/main.rs`), used by [`crate::common`], and included by
//! `benches/support` with `#[path = "../../tests/it/provision/mod.rs"]`: so it names only its own
//! submodules (`super::`), never the rest of either crate.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`Purpose`] (tests or benches: which environment variables and
//!   defaults apply), [`Error`] (what failed and how to fix it), free ports, log tails, names.
//! - [`postgres`]: [`Cluster`] (`initdb`, then `postgres` as the `postgres` OS user when we are
//!   root) configured by [`PgOptions`] (fsync, bin directory, extra `-c` settings, extra
//!   `pg_hba.conf` lines, files in the data directory), stop and start.
//! - [`database`]: on any server, databases with random names ([`create_database`]) and a
//!   one-line report of each server's version.
//! - [`emulator`]: [`Emulator`], started on a free port.
//! - [`pgbouncer`]: [`PgBouncer`], a transaction-mode pooler in front of a cluster.
//! - [`process`]: children that die with this process (`PR_SET_PDEATHSIG`), run as another user,
//!   readiness with a deadline, and servers kept until the process exits.
//!
//! Every start-up failure is an [`Error`] whose message names what is missing and how to get it;
//! callers panic with it (tests) or return it (benches): nothing is skipped.
#![allow(dead_code)] // The tests and each bench binary use different parts.

pub mod database;
pub mod emulator;
pub mod pgbouncer;
pub mod postgres;
pub mod process;

use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpListener;
use std::path::Path;

use rand::Rng as _;

// The tests and each bench binary use different parts of what is re-exported here.
#[allow(unused_imports)]
pub use {
    database::{Database, connect, create_database, with_dbname},
    emulator::Emulator,
    pgbouncer::PgBouncer,
    postgres::{Cluster, PgOptions},
    process::{RunAs, die_with_parent, keep_until_exit},
};

/// Who provisions: the environment variables, defaults and advice differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Integration tests: `MINISCAN_TEST_*` variables, fast throwaway durability.
    Tests,
    /// Benchmarks: `MINISCAN_BENCH_*` variables, durable commits.
    Benches,
}

impl Purpose {
    /// The environment variable naming PostgreSQL's bin directory.
    pub fn pg_bindir_var(self) -> &'static str {
        match self {
            Self::Tests => "MINISCAN_TEST_PG_BINDIR",
            Self::Benches => "MINISCAN_BENCH_PG_BINDIR",
        }
    }

    /// The environment variable naming the emulator's launcher script.
    pub fn emulator_var(self) -> &'static str {
        match self {
            Self::Tests => "MINISCAN_TEST_PUBSUB_EMULATOR",
            Self::Benches => "MINISCAN_BENCH_PUBSUB_EMULATOR",
        }
    }

    /// The plural noun for messages ("the tests may create databases").
    fn noun(self) -> &'static str {
        match self {
            Self::Tests => "tests",
            Self::Benches => "benches",
        }
    }

    /// Prefix of temporary directories and database names.
    fn prefix(self) -> &'static str {
        match self {
            Self::Tests => "miniscan-test",
            Self::Benches => "miniscan-bench",
        }
    }
}

/// A provisioning failure: what went wrong (with the server log's tail when there is one) and,
/// when something is missing, how to get it.
#[derive(Debug)]
pub struct Error {
    /// What failed, and why.
    pub message: String,
    /// What to install or set, when the failure means something is missing.
    pub fix: Option<String>,
}

impl Error {
    /// A failure that installing or configuring nothing would fix.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            fix: None,
        }
    }

    /// A failure that `fix` says how to repair.
    pub fn with_fix(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\nTo fix: {fix}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// A name no other test (or earlier run) uses: `prefix` and 16 random hex digits. Pub/Sub and
/// PostgreSQL both accept it unquoted.
pub fn random_name(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{n:016x}")
}

/// The last `lines` lines of a log file, indented, for failure messages.
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

/// `path` opened for appending (created if missing): a child's stdout or stderr.
pub fn append_log(path: &Path) -> Result<File, Error> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))
}

/// A new temporary directory named after `purpose` and `what` (e.g. `miniscan-test-pg-XXXX`).
fn temp_dir(purpose: Purpose, what: &str) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(&format!("{}-{what}-", purpose.prefix()))
        .tempdir()
        .map_err(|e| Error::new(format!("cannot create a temporary directory: {e}")))
}
