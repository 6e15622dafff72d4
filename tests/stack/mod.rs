//! Reading the "run and watch it" stack's files (`docker-compose.yml`,
//! `prometheus/prometheus.yml`, the Grafana dashboard), shared by
//! `tests/compose.rs` and `tests/observability.rs`.
#![allow(dead_code)] // Each test binary uses a different part.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The dashboard every query check reads.
pub const DASHBOARD: &str = "grafana/dashboards/mini-scan.json";

/// What to install when `promtool` or `prometheus` is missing.
pub const PROMETHEUS_HINT: &str = "install Debian's `prometheus` package \
     (`apt-get install -y prometheus`), which provides /usr/bin/prometheus and promtool";

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A repository file's text.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A YAML file as JSON values, with merge keys (`<<: *anchor`) applied as
/// Compose applies them.
pub fn yaml(path: &str) -> Value {
    let mut doc: serde_norway::Value =
        serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("merge keys in {path}: {e}"));
    serde_json::to_value(doc).unwrap_or_else(|e| panic!("{path} as JSON: {e}"))
}

/// A JSON file.
pub fn json(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Every panel that is not a row, including those nested in collapsed rows.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                walk(&panel["panels"], out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every (panel title, PromQL) on the dashboard, in panel order.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_owned())))
        })
        .collect()
}

/// A dashboard query with Grafana's variables replaced by values Prometheus
/// accepts: `$__rate_interval` by `rate_interval`, the replica selection by
/// "all replicas".
pub fn substitute(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
}
