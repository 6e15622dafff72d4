//! `mini-scan ingest` as a child process: start it, wait until it is ready, signal it, wait for
//! its exit, read its log and scrape its `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{binary_command, free_port, tail};

/// Start-up is connecting to PostgreSQL and the emulator; the margin is for a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a SIGTERM may take: flushing one partial batch and acking it, within the ingester's
/// own grace period (`MINISCAN_SHUTDOWN_GRACE_SECS`, 30 s by default) plus a margin.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(45);

/// A running (or exited) `mini-scan ingest`.
pub struct Ingester {
    pid: u32,
    /// `127.0.0.1:PORT` of `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: String,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
    /// Set once the process has exited and been reaped.
    exit: watch::Receiver<Option<ExitStatus>>,
    http: reqwest::Client,
}

impl Ingester {
    /// Runs `mini-scan ingest` with exactly the `env` settings (plus a free metrics port) and
    /// waits until `/readyz` answers 200.
    pub(crate) async fn start(scratch: &Path, env: &[(String, String)]) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log_path = scratch.join(format!("ingester-{n}.log"));
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let log = || {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()))
        };

        let mut cmd = binary_command();
        cmd.arg("ingest")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("MINISCAN_METRICS_ADDR", &metrics_addr)
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", super::binary_path()));
        let pid = child.id().expect("a just-spawned child has a pid");
        let (tx, exit) = watch::channel(None);
        // The child is owned by this task; if the test ends first, the runtime drops the task and
        // `kill_on_drop` ends the process.
        tokio::spawn(async move {
            let status = child.wait().await.expect("waiting for the ingester failed");
            let _ = tx.send(Some(status));
        });

        let ingester = Self {
            pid,
            metrics_addr,
            log_path,
            exit,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("build an HTTP client"),
        };
        ingester.wait_ready().await;
        ingester
    }

    /// Polls `/readyz` until it answers 200; fails with the log if the process exits first.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.metrics_addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.assert_running();
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return,
                Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "the ingester was not ready within {READY_TIMEOUT:?} (last answer from {url}: {last}); \
                 its log ends with:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Fails the test, with the log, if the process has exited.
    pub fn assert_running(&self) {
        if let Some(status) = self.exit_status() {
            panic!(
                "the ingester (pid {}) exited unexpectedly with {status}; its log ends with:\n{}",
                self.pid,
                self.log_tail(40)
            );
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // Not once reaped: the pid could then belong to another process.
        if self.exit_status().is_none() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        }
    }

    /// SIGTERM: the ingester should stop pulling, commit and ack its partial batch, and exit 0.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL: a crash, with whatever was in flight.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Waits for the process to exit; fails the test if it does not within `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let mut exit = self.exit.clone();
        match tokio::time::timeout(timeout, exit.wait_for(Option::is_some)).await {
            Ok(Ok(status)) => status.expect("wait_for returned a set value"),
            Ok(Err(_)) => panic!("the task waiting for the ingester died"),
            Err(_) => panic!(
                "the ingester (pid {}) did not exit within {timeout:?}; its log ends with:\n{}",
                self.pid,
                self.log_tail(40)
            ),
        }
    }

    /// SIGTERM, then asserts that the process exits 0 within [`SHUTDOWN_TIMEOUT`].
    pub async fn stop(&self) {
        self.terminate();
        self.wait_clean_exit().await;
    }

    /// Asserts that the process exits 0 within [`SHUTDOWN_TIMEOUT`] (after a SIGTERM sent
    /// earlier: a second one might mean "quit now" to it).
    pub async fn wait_clean_exit(&self) {
        let status = self.wait_exit(SHUTDOWN_TIMEOUT).await;
        assert!(
            status.success(),
            "the ingester exited with {status} after SIGTERM (expected 0); its log ends with:\n{}",
            self.log_tail(40)
        );
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        assert!(
            response.status().is_success(),
            "GET {url} answered {}",
            response.status()
        );
        response
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: reading the body failed: {e}"))
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 when there is none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// `miniscan_acks_total{kind="ack"}`: messages acknowledged so far.
    pub async fn acks(&self) -> u64 {
        self.metric("miniscan_acks_total", &[("kind", "ack")]).await as u64
    }
}

impl Drop for Ingester {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of the ingester (pid {}, {}) ---\n{}",
                self.pid,
                self.log_path.display(),
                self.log_tail(60)
            );
        }
        self.kill();
    }
}

/// Sums the samples of metric `name` in Prometheus text whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_sample)
        .filter(|(n, l, _)| {
            *n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, value)| value)
        .sum()
}

/// One sample of a metric: its name, its labels and its value.
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// `name{k="v",...} value [timestamp]` into its parts.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let mut value = String::new();
                    let (_, '"') = chars.next()? else { return None };
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn sums_matching_samples() {
        let text = "# TYPE miniscan_messages_total counter\n\
                    miniscan_messages_total{stage=\"decode\",outcome=\"ok\"} 7\n\
                    miniscan_messages_total{stage=\"decode\",outcome=\"dead_letter\"} 2\n\
                    miniscan_messages_total{stage=\"write\",outcome=\"ok\"} 5\n\
                    miniscan_acks_total{kind=\"ack\"} 9 1700000000\n\
                    miniscan_up 1\n";
        assert_eq!(
            metric_sum(text, "miniscan_messages_total", &[("stage", "decode")]),
            9.0
        );
        assert_eq!(metric_sum(text, "miniscan_messages_total", &[]), 14.0);
        assert_eq!(
            metric_sum(text, "miniscan_acks_total", &[("kind", "ack")]),
            9.0
        );
        assert_eq!(
            metric_sum(text, "miniscan_acks_total", &[("kind", "nack")]),
            0.0
        );
        assert_eq!(metric_sum(text, "miniscan_up", &[]), 1.0);
    }
}
