//! Google's Pub/Sub emulator on a free port of 127.0.0.1.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use super::process::{self, spawn_server};
use super::{Error, Purpose, free_port, temp_dir};

/// Where Google's Debian package installs the emulator's launcher; [`Purpose::emulator_var`]
/// overrides it.
pub const DEFAULT_EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// A JVM starts in a few seconds; the margin is for a machine busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How often start-up asks the emulator whether it answers.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How to get the emulator when it cannot be started for `purpose`.
pub fn how_to_get_the_emulator(purpose: Purpose) -> String {
    let running = match purpose {
        Purpose::Tests => ", or set PUBSUB_EMULATOR_HOST (host:port) to a running emulator",
        Purpose::Benches => "",
    };
    format!(
        "install the emulator and Java 17 \
         (`apt-get install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless`), \
         or set {} to its `cloud-pubsub-emulator` script{running}",
        purpose.emulator_var()
    )
}

/// A running emulator, killed (and its directory removed) when dropped.
pub struct Emulator {
    /// `host:port`, the value for `PUBSUB_EMULATOR_HOST`.
    pub host: String,
    child: Child,
    _dir: TempDir,
}

impl Emulator {
    /// Starts the emulator named by [`Purpose::emulator_var`] (else [`DEFAULT_EMULATOR`]) on a
    /// free port and waits until it answers. Blocks. On failure the directory stays, so the log
    /// the message names can be read.
    pub fn start(purpose: Purpose) -> Result<Self, Error> {
        let unavailable = |e: Error| {
            Error::with_fix(
                format!("the Pub/Sub emulator is not available: {}", e.message),
                how_to_get_the_emulator(purpose),
            )
        };
        let script = std::env::var_os(purpose.emulator_var())
            .map_or_else(|| PathBuf::from(DEFAULT_EMULATOR), PathBuf::from);
        if !script.is_file() {
            return Err(unavailable(Error::new(format!(
                "{} does not exist",
                script.display()
            ))));
        }
        let dir = temp_dir(purpose, "pubsub").map_err(unavailable)?;
        let log = dir.path().join("emulator.log");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&script);
        cmd.arg("--host=127.0.0.1").arg(format!("--port={port}"));
        // The script ends in `exec java`: the death signal survives the exec.
        let started = spawn_server(cmd, &log, None).and_then(|mut child| {
            process::wait_ready(
                "the emulator",
                &mut child,
                &log,
                START_TIMEOUT,
                POLL_INTERVAL,
                || http_get_ok(&host),
            )
            .map(|()| child)
        });
        match started {
            Ok(child) => Ok(Self {
                host,
                child,
                _dir: dir,
            }),
            Err(e) => {
                let _ = dir.keep();
                Err(unavailable(e))
            }
        }
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

/// A blocking `GET /` that succeeds when the emulator answers 200 (it says "Ok").
fn http_get_ok(host: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = host.parse().map_err(std::io::Error::other)?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
}
