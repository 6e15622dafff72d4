//! Reading the "run and watch it" stack's files (`docker-compose.yml`,
//! `prometheus/prometheus.yml`, the Grafana dashboard, the `Dockerfile`) and
//! asking the real binary's `--help` what it accepts; for the areas
//! [`crate::compose`], [`crate::observability`] and [`crate::kubernetes`].

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

/// Env var prefixes and names that belong to mini-scan's own configuration,
/// and so must be declared by its clap config.
pub const OUR_ENV_PREFIXES: &[&str] = &["MINISCAN_", "PUBSUB_"];
/// Env vars outside those prefixes that are mini-scan's own.
pub const OUR_ENV_NAMES: &[&str] = &["DATABASE_URL"];

/// The binary under test; `option_env!` so this file compiles (and its other
/// checks run) before the crate has a binary target.
pub fn binary() -> &'static str {
    option_env!("CARGO_BIN_EXE_mini-scan")
        .unwrap_or_else(|| panic!("the crate has no `mini-scan` binary target (src/main.rs) yet"))
}

/// Whether an env var belongs to mini-scan (and so must be in its `--help`).
pub fn is_our_env(name: &str) -> bool {
    OUR_ENV_NAMES.contains(&name) || OUR_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether `--flag` appears in `help` as a whole flag (not as a prefix of a
/// longer one).
pub fn help_mentions_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let next = help[at + flag.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Whether clap's `[env: NAME=...]` (or `[env: NAME]`) appears for `var`.
pub fn help_mentions_env(help: &str, var: &str) -> bool {
    help.contains(&format!("[env: {var}=")) || help.contains(&format!("[env: {var}]"))
}

/// The Dockerfile's instructions as (OPCODE, arguments), with comments dropped
/// and continuation lines joined.
pub fn dockerfile() -> Vec<(String, String)> {
    read("Dockerfile")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ")
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (op, rest) = l.split_once(char::is_whitespace)?;
            Some((op.to_ascii_uppercase(), rest.trim().to_owned()))
        })
        .collect()
}

/// A COPY's (sources, destination), without its `--flags`.
pub fn copy_args(args: &str) -> (Vec<String>, String) {
    let mut args: Vec<String> = args
        .split_whitespace()
        .filter(|a| !a.starts_with("--"))
        .map(str::to_owned)
        .collect();
    let dest = args.pop().unwrap_or_default();
    (args, dest)
}

/// `mini-scan <subcommand> --help`, run with a clean environment so the help
/// shows no values from this machine's env (`[env: DATABASE_URL=...]` would
/// print a password); the error says why it failed. A subcommand of a
/// subcommand is given with a space: `"dead-letters purge"`.
pub fn help(subcommand: &str) -> Result<String, String> {
    let output = std::process::Command::new(binary())
        .args(subcommand.split_whitespace())
        .arg("--help")
        .env_clear()
        .output()
        .map_err(|e| format!("running mini-scan {subcommand} --help: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`mini-scan {subcommand} --help` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
