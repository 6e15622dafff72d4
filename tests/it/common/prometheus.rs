//! A real Prometheus server for one test (Debian's `prometheus` package), and
//! its HTTP API: the observability and alerts areas both scrape the real
//! ingester with it.

use super::{die_with_parent, free_port, tail, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// How long Prometheus may take to start (it replays an empty WAL first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP client for local servers: no proxy, and a timeout so that a hung
/// server fails the test rather than hanging it.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build an HTTP client")
}

/// `name` (`prometheus` or `promtool`) from PATH, else Debian's /usr/bin;
/// fails naming the package.
pub fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(Path::new("/usr/bin").join(name)).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{name} is not installed: {}", crate::stack::PROMETHEUS_HINT))
}

/// A Prometheus server run for one test; killed when dropped (and by the
/// kernel if the test binary dies first).
pub struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (its configuration file as JSON, which
    /// is YAML) on a free port, and waits until it is ready.
    pub async fn start(config: &Value) -> Self {
        let binary = tool("prometheus");
        let dir = tempfile::Builder::new()
            .prefix("miniscan-prometheus-")
            .tempdir()
            .expect("create a temporary directory for Prometheus");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).expect("write the Prometheus config");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create the Prometheus log");
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file);
        die_with_parent(&mut cmd, None);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: http(),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.base);
        wait_until(
            START_TIMEOUT,
            "Prometheus to be ready",
            async || match prometheus.http.get(&ready).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{}", r.status())),
                Err(e) => Err(e.to_string()),
            },
        )
        .await;
        prometheus
    }

    /// `data` of a GET on the API, or why there is none.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), params)
            .map_err(|e| e.to_string())?;
        let answer: Value = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"].clone())
    }

    /// An instant query's result vector, or why there is none.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Prometheus log ---\n{}", self.log_tail(30));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
