//! The alerting and recording rules (`prometheus/rules/mini-scan.yml`), tested
//! like code:
//!
//! * `promtool check rules` and `promtool test rules` on the unit tests in
//!   `prometheus/tests/` (a firing and a quiet case for every alert, at each
//!   threshold's and `for:`'s edge, and the SLO's burn-rate windows);
//! * every alert has a severity, a `for:`, a summary and description naming
//!   the replica or the service, a runbook section in `docs/alerts.md` that its
//!   `runbook_url` points at, and unit tests that fire it and keep it quiet;
//! * `deploy/kubernetes/base/prometheusrule.yaml` is generated from the rules
//!   file (and regenerated with `MINISCAN_REGENERATE=1`), so the rules live once;
//! * the memory alert's fallback limit is the limit both deployments set;
//! * live: a real Prometheus, with the rules loaded, scrapes a real `mini-scan
//!   ingest` on real PostgreSQL and the emulator. On a healthy run no alert is
//!   pending or firing, every series the rules read exists, and the dashboard's
//!   SLO and dead-letter panels have data; stopping PostgreSQL fires
//!   `MiniScanDatabaseDown` once its production `for:` (2 minutes) has passed,
//!   and starting it again clears the alert.
//!
//! Needs Debian's `prometheus` package (the server and promtool) besides what
//! the shared harness in `tests/it/common` needs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use mini_scan::telemetry::names;
use serde_json::{Value, json};

use crate::common::prometheus::{self, Prometheus};
use crate::common::{DedicatedPostgres, Ingester, Scan, TestContext, wait_until};

/// The one rules file.
const RULES: &str = "prometheus/rules/mini-scan.yml";
/// Its promtool unit tests.
const UNIT_TESTS: &str = "prometheus/tests";
/// The runbooks.
const RUNBOOKS: &str = "docs/alerts.md";
/// The PrometheusRule generated from [`RULES`].
const PROMETHEUS_RULE: &str = "deploy/kubernetes/base/prometheusrule.yaml";
/// The alert the live test fires by stopping PostgreSQL.
const DATABASE_ALERT: &str = "MiniScanDatabaseDown";
/// Series the rules read that only exist in Kubernetes (cAdvisor's), so the
/// live test cannot expect them; the memory alert falls back without them.
const KUBERNETES_ONLY: &[&str] = &["container_spec_memory_limit_bytes"];

/// Scrape and rule evaluation interval of the test's Prometheus.
const INTERVAL: &str = "1s";
/// From the first scrapes to every series and panel query having data.
const SERIES_TIMEOUT: Duration = Duration::from_secs(90);
/// Past the database alert's `for:`: the probe noticing the outage (its
/// interval is 1 s), the scrape and evaluation intervals, a busy machine.
const FIRING_MARGIN: Duration = Duration::from_secs(45);
/// From PostgreSQL back to the alert gone: the probe, a scrape, an evaluation.
const CLEAR_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// promtool and the rules file

fn promtool(args: &[&str]) -> String {
    let out = Command::new(prometheus::tool("promtool"))
        .args(args)
        .current_dir(crate::stack::repo("."))
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`promtool {}` failed:\n{text}",
        args.join(" ")
    );
    text
}

/// The files of `dir` (in the repository) ending in `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(crate::stack::repo(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    found.sort();
    found
}

/// Every alerting rule of the rules file.
fn alerts() -> Vec<Value> {
    crate::stack::yaml(RULES)["groups"]
        .as_array()
        .expect("the rules file has groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn alert_name(rule: &Value) -> &str {
    rule["alert"].as_str().expect("an alert has a name")
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tests = files(UNIT_TESTS, ".test.yml");
    assert!(!tests.is_empty(), "no promtool unit tests in {UNIT_TESTS}");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let ran = promtool(&args);
    assert_eq!(
        ran.matches("SUCCESS").count(),
        tests.len(),
        "every unit test file passes:\n{ran}"
    );
}

/// An alert's alert_rule_test cases, from every unit test file: whether each
/// expects it firing.
fn unit_test_cases() -> BTreeMap<String, Vec<bool>> {
    let mut cases: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for file in files(UNIT_TESTS, ".test.yml") {
        let doc = crate::stack::yaml(&file);
        let rule_files = doc["rule_files"].as_array().cloned().unwrap_or_default();
        assert!(
            rule_files.iter().any(|f| f
                .as_str()
                .is_some_and(|f| f.ends_with("rules/mini-scan.yml"))),
            "{file} does not test {RULES}"
        );
        for test in doc["tests"].as_array().into_iter().flatten() {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                let name = case["alertname"].as_str().unwrap_or("?").to_owned();
                let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
                cases.entry(name).or_default().push(fires);
            }
        }
    }
    cases
}

#[test]
fn every_alert_has_a_severity_a_for_a_runbook_and_unit_tests_both_ways() {
    let runbooks = crate::stack::read(RUNBOOKS);
    let headings: BTreeSet<&str> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let cases = unit_test_cases();
    let alerts = alerts();
    assert!(alerts.len() >= 12, "{} alerts", alerts.len());
    let mut problems = Vec::new();
    for rule in &alerts {
        let name = alert_name(rule);
        let mut problem = |p: String| problems.push(format!("{name}: {p}"));
        match rule["labels"]["severity"].as_str() {
            Some("critical" | "warning") => {}
            other => problem(format!("severity {other:?}, not critical or warning")),
        }
        if rule["for"].as_str().is_none() {
            problem("no `for:`".into());
        }
        let annotations = &rule["annotations"];
        for key in ["summary", "description"] {
            if annotations[key].as_str().is_none_or(str::is_empty) {
                problem(format!("no {key}"));
            }
        }
        // Which replica (instance) or which service (job), and why.
        let description = annotations["description"].as_str().unwrap_or("");
        if !description.contains("$labels.instance")
            && !description.contains("$labels.job")
            && !description.contains("$labels.metric")
            && !description.contains("app_kubernetes_io_name")
        {
            problem("the description names no replica or service".into());
        }
        let anchor = name.to_ascii_lowercase();
        let want = format!("{RUNBOOKS}#{anchor}");
        if annotations["runbook_url"].as_str() != Some(want.as_str()) {
            problem(format!(
                "runbook_url {} is not {want}",
                annotations["runbook_url"]
            ));
        }
        if !headings.contains(name) {
            problem(format!("{RUNBOOKS} has no section `## {name}`"));
        }
        let seen = cases.get(name).cloned().unwrap_or_default();
        if !seen.contains(&true) {
            problem("no unit test expects it firing".into());
        }
        if !seen.contains(&false) {
            problem("no unit test expects it quiet".into());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // And every runbook section is an alert's.
    let names: BTreeSet<&str> = alerts.iter().map(alert_name).collect();
    for heading in headings {
        if heading.starts_with("MiniScan") {
            assert!(
                names.contains(heading),
                "{RUNBOOKS} has a section for {heading}, which is no alert"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The PrometheusRule: generated from the rules file

/// What `deploy/kubernetes/base/prometheusrule.yaml` must hold: a header, the
/// object's metadata, and the rules file (comments and all) indented under
/// `spec:`, where a PrometheusRule keeps the same `groups:`.
fn generated_prometheus_rule() -> String {
    let rules = crate::stack::read(RULES);
    let mut out = String::from(
        "# GENERATED from prometheus/rules/mini-scan.yml by tests/it/alerts.rs: do not\n\
         # edit. Change the rules file, then regenerate this one with\n\
         #   MINISCAN_REGENERATE=1 cargo test --test it -- alerts::prometheus_rule\n\
         #\n\
         # The Prometheus Operator loads it into every Prometheus whose\n\
         # ruleSelector matches its labels (kube-prometheus-stack's default wants\n\
         # `release: <the Helm release>`: add that label in an overlay, or set\n\
         # ruleSelectorNilUsesHelmValues=false).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: mini-scan\n  labels:\n    app.kubernetes.io/component: ingester\n\
         spec:\n",
    );
    for line in rules.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn prometheus_rule_is_generated_from_the_rules_file() {
    let want = generated_prometheus_rule();
    if std::env::var_os("MINISCAN_REGENERATE").is_some() {
        std::fs::write(crate::stack::repo(PROMETHEUS_RULE), &want)
            .unwrap_or_else(|e| panic!("writing {PROMETHEUS_RULE}: {e}"));
    }
    let have = std::fs::read_to_string(crate::stack::repo(PROMETHEUS_RULE)).unwrap_or_default();
    assert!(
        have == want,
        "{PROMETHEUS_RULE} is not generated from {RULES}: \
         MINISCAN_REGENERATE=1 cargo test --test it -- alerts::prometheus_rule"
    );
    // Parsed, its groups are the rules file's, and kustomize includes it.
    let object = crate::stack::yaml(PROMETHEUS_RULE);
    assert_eq!(
        object["spec"]["groups"],
        crate::stack::yaml(RULES)["groups"]
    );
    let kustomization = crate::stack::yaml("deploy/kubernetes/base/kustomization.yaml");
    assert!(
        kustomization["resources"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("prometheusrule.yaml"))),
        "deploy/kubernetes/base/kustomization.yaml does not include prometheusrule.yaml"
    );
}

/// Bytes in a Kubernetes quantity (`384Mi`) or a Compose byte value (`384m`,
/// binary units in both).
fn bytes(quantity: &str) -> u64 {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (n, unit) = quantity.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|e| panic!("{quantity}: {e}"));
    let shift = match unit {
        "" | "b" => 0,
        "Ki" | "k" => 10,
        "Mi" | "m" => 20,
        "Gi" | "g" => 30,
        _ => panic!("unit of {quantity}"),
    };
    n << shift
}

#[test]
fn memory_alert_falls_back_to_the_limit_both_deployments_set() {
    let deployment = crate::stack::yaml("deploy/kubernetes/base/ingester-deployment.yaml");
    let limit =
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            .as_str()
            .expect("the ingester has a memory limit");
    let compose = crate::stack::yaml("docker-compose.yml");
    let compose_limit = compose["services"]["ingester"]["mem_limit"]
        .as_str()
        .expect("compose's ingester has a mem_limit");
    assert_eq!(
        bytes(limit),
        bytes(compose_limit),
        "{limit} vs {compose_limit}"
    );
    let rule = alerts()
        .into_iter()
        .find(|r| alert_name(r) == "MiniScanMemoryNearLimit")
        .expect("a memory alert");
    let expr = rule["expr"].as_str().unwrap_or("");
    assert!(
        expr.contains(&format!(
            "process_resident_memory_bytes / {} ",
            bytes(limit)
        )),
        "the memory alert's fallback is not {limit} ({} bytes):\n{expr}",
        bytes(limit)
    );
}

// ---------------------------------------------------------------------------
// Live: a real Prometheus with the rules, a real ingester

/// The series selectors an expression reads: metric names (and their label
/// matchers), leaving out strings, functions, keywords and label names.
fn selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // A string: skip to its closing quote.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            // Matchers of a selector taken below, or of a bare {..}: skip.
            while i < chars.len() && chars[i] != '}' {
                i += 1;
            }
        } else if is_start(c) && (i == 0 || !is_part(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| **c != ' ').copied();
            let metric = word.starts_with("miniscan_")
                || word.starts_with("process_")
                || word.starts_with("container_")
                || word.contains(':')
                || (word == "up" && next == Some('{'));
            // `by (namespace, job)` and `on (...)` list label names.
            let in_label_list = {
                let before: String = chars[..start].iter().collect();
                let open = before.rfind('(');
                let close = before.rfind(')');
                open.is_some_and(|o| close.is_none_or(|c| c < o))
                    && ["by", "on", "without", "ignoring", "group_left"]
                        .iter()
                        .any(|k| before[..open.unwrap_or(0)].trim_end().ends_with(k))
            };
            if metric && !in_label_list {
                let mut selector = word;
                if chars.get(i) == Some(&'{') {
                    let end = chars[i..]
                        .iter()
                        .position(|c| *c == '}')
                        .map_or(chars.len(), |p| i + p + 1);
                    selector.extend(&chars[i..end]);
                    i = end;
                }
                out.push(selector);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn selectors_finds_what_an_expression_reads() {
    let expr = r#"sum by (namespace, job) (rate(miniscan_x_bucket{reference="publish", le="2.5"}[5m]))
        / on (namespace, pod) group_left () max by (namespace, pod) (container_spec_memory_limit_bytes{container="ingester"} > 0)
        and on () label_replace(absent(up{app_kubernetes_io_name="mini-scan"}), "metric", "miniscan_y", "", "")
        or namespace_job:miniscan_z:ratio_rate5m > (14.4 * 0.01)"#;
    assert_eq!(
        selectors(expr),
        [
            r#"miniscan_x_bucket{reference="publish", le="2.5"}"#,
            r#"container_spec_memory_limit_bytes{container="ingester"}"#,
            r#"up{app_kubernetes_io_name="mini-scan"}"#,
            "namespace_job:miniscan_z:ratio_rate5m",
        ]
    );
}

impl Prometheus {
    /// Prometheus with the repository's `prometheus/prometheus.yml`:
    /// its service discovery replaced by the static `ingester` target, every
    /// interval [`INTERVAL`], the rules loaded from the repository, and one
    /// more job, `textfile`, scraping `textfile` (node_exporter's textfile
    /// collector as the dead-letters commands feed it).
    async fn with_rules(ingester: &str, textfile: &str) -> Self {
        let mut config = crate::stack::yaml("prometheus/prometheus.yml");
        config["global"]["scrape_interval"] = INTERVAL.into();
        config["global"]["evaluation_interval"] = INTERVAL.into();
        assert_eq!(
            config["rule_files"],
            json!(["rules/*.yml"]),
            "prometheus.yml loads the rules next to it"
        );
        config["rule_files"] = json!([crate::stack::repo(RULES).display().to_string()]);
        let jobs = config["scrape_configs"]
            .as_array_mut()
            .expect("prometheus.yml has scrape_configs");
        for job in jobs.iter_mut() {
            let job = job.as_object_mut().expect("a scrape config is a mapping");
            if job.remove("dns_sd_configs").is_some() {
                job.insert("static_configs".into(), json!([{ "targets": [ingester] }]));
            }
        }
        jobs.push(json!({
            "job_name": "textfile",
            "static_configs": [{ "targets": [textfile] }],
        }));
        Self::start(&config).await
    }

    /// How many series match `selector`.
    async fn series(&self, selector: &str) -> Result<usize, String> {
        let data = self.api("/api/v1/series", &[("match[]", selector)]).await?;
        Ok(data.as_array().map_or(0, Vec::len))
    }

    /// Every alert pending or firing.
    async fn alerts(&self) -> Vec<Value> {
        let data = self
            .api("/api/v1/alerts", &[])
            .await
            .unwrap_or_else(|e| panic!("GET /api/v1/alerts: {e}"));
        data["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// The latest `lastEvaluation` of the rule groups, as Prometheus wrote it
    /// (RFC 3339, sortable as text while in the same zone), if all were
    /// evaluated.
    async fn last_evaluations(&self) -> Result<Vec<String>, String> {
        let data = self.api("/api/v1/rules", &[]).await?;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        if groups.len()
            != crate::stack::yaml(RULES)["groups"]
                .as_array()
                .map_or(0, Vec::len)
        {
            return Err(format!("{} rule groups loaded", groups.len()));
        }
        Ok(groups
            .iter()
            .map(|g| g["lastEvaluation"].as_str().unwrap_or("").to_owned())
            .collect())
    }

    /// Returns once every rule group has been evaluated again.
    async fn wait_for_evaluations(&self) {
        let mut before: Option<Vec<String>> = None;
        wait_until(
            SERIES_TIMEOUT,
            "every rule group to be evaluated again",
            async || {
                let now = self.last_evaluations().await?;
                match &before {
                    None => {
                        before = Some(now);
                        Err("first look".to_owned())
                    }
                    Some(b) if b.iter().zip(&now).all(|(b, n)| n > b) => Ok(()),
                    Some(_) => Err(format!("last evaluations {now:?}")),
                }
            },
        )
        .await;
    }
}

/// Serves `text` at `/metrics` on a free port until the test ends, as
/// node_exporter's textfile collector serves the files the dead-letters
/// commands write; returns `host:port`.
async fn serve_textfile(text: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the textfile server");
    let addr = listener.local_addr().expect("its address").to_string();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = text.clone();
            async move { text }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The `--metrics-file` of a real `mini-scan dead-letters replay` and `purge`
/// on `ctx`'s database, concatenated as the textfile collector would serve
/// them.
async fn dead_letter_metrics(ctx: &TestContext) -> String {
    let dir = tempfile::tempdir().expect("a directory for the metrics files");
    let mut text = String::new();
    for (name, args) in [
        ("replay.prom", vec!["replay"]),
        ("purge.prom", vec!["purge", "--older-than=30days"]),
    ] {
        let path = dir.path().join(name);
        let file = format!("--metrics-file={}", path.display());
        let mut args = args;
        args.push(&file);
        crate::common::dead_letters::run(&ctx.db, &args).await;
        text.push_str(&std::fs::read_to_string(&path).expect("the metrics file"));
    }
    text
}

fn describe(alerts: &[Value]) -> String {
    alerts
        .iter()
        .map(|a| {
            format!(
                "\n  {} {} {}",
                a["labels"]["alertname"].as_str().unwrap_or("?"),
                a["state"].as_str().unwrap_or("?"),
                a["labels"]
            )
        })
        .collect()
}

/// The dashboard's queries that only a Prometheus with the rules and the
/// dead-letters commands' gauges answers (tests/it/observability.rs checks the
/// others): the SLO and dead-letter panels.
fn rules_and_textfile_queries() -> Vec<(String, String)> {
    let dashboard = crate::stack::json(crate::stack::DASHBOARD);
    crate::stack::dashboard_queries(&dashboard)
        .into_iter()
        .filter(|(_, expr)| {
            expr.contains("namespace_job:") || expr.contains(names::DEAD_LETTERS_LAST_RUN)
        })
        .map(|(title, expr)| (title, crate::stack::substitute(&expr, "15s")))
        .collect()
}

#[tokio::test]
async fn no_alert_on_a_healthy_run_and_the_database_alert_fires_and_clears() {
    let database_for = alerts()
        .into_iter()
        .find(|r| alert_name(r) == DATABASE_ALERT)
        .and_then(|r| r["for"].as_str().map(str::to_owned))
        .expect("the database alert has a for:");
    assert_eq!(
        database_for, "2m",
        "this test waits out the database alert's for: (keep it short enough)"
    );
    let database_for = Duration::from_secs(120);

    // A dedicated cluster: the test stops it.
    let pg = DedicatedPostgres::start_new().await;
    let ctx = TestContext::on_dedicated(&pg).await;
    let ingester: Ingester = ctx
        .start_ingester(&[("MINISCAN_RETRY_MAX_MS", "300")])
        .await;
    let textfile = serve_textfile(dead_letter_metrics(&ctx).await).await;
    let prometheus = Prometheus::with_rules(&ingester.metrics_addr, &textfile).await;

    // A healthy run: some scans stored, so the histograms exist.
    let scans: Vec<Vec<u8>> = (0..50)
        .map(|i| Scan::new(&format!("192.0.2.{i}"), 443, "HTTP", 1_700_000_000, "ok").v2())
        .collect();
    ctx.publish(&scans).await;
    wait_until(
        SERIES_TIMEOUT,
        "the ingester to ack the scans",
        async || {
            ingester.assert_running();
            let acks = ingester.acks().await;
            if acks >= 50 {
                Ok(())
            } else {
                Err(format!("{acks} acks"))
            }
        },
    )
    .await;

    // Every series the rules read exists (but cAdvisor's).
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for group in crate::stack::yaml(RULES)["groups"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for rule in group["rules"].as_array().into_iter().flatten() {
            wanted.extend(selectors(rule["expr"].as_str().unwrap_or("")));
        }
    }
    wanted.retain(|s| !KUBERNETES_ONLY.iter().any(|k| s.starts_with(k)));
    assert!(
        wanted.contains(r#"miniscan_freshness_lag_seconds_bucket{reference="publish", le="2.5"}"#),
        "{wanted:#?}"
    );
    wait_until(
        SERIES_TIMEOUT,
        "every series the rules read to exist",
        async || {
            let mut missing = Vec::new();
            for selector in &wanted {
                match prometheus.series(selector).await {
                    Ok(0) => missing.push(selector.clone()),
                    Ok(_) => {}
                    Err(e) => missing.push(format!("{selector}: {e}")),
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing: {missing:?}"))
            }
        },
    )
    .await;

    // The SLO and dead-letter panels have data.
    let queries = rules_and_textfile_queries();
    assert!(queries.len() >= 6, "{queries:?}");
    wait_until(
        SERIES_TIMEOUT,
        "the SLO and dead-letter panels to have data",
        async || {
            let mut empty = Vec::new();
            for (title, expr) in &queries {
                match prometheus.query(expr).await {
                    Ok(r) if !r.is_empty() => {}
                    Ok(_) => empty.push(format!("{title}: {expr}")),
                    Err(e) => empty.push(format!("{title}: {expr}: {e}")),
                }
            }
            if empty.is_empty() {
                Ok(())
            } else {
                Err(format!("no data: {empty:#?}"))
            }
        },
    )
    .await;

    // With all of that scraped, one more evaluation of every rule: quiet.
    prometheus.wait_for_evaluations().await;
    let active = prometheus.alerts().await;
    assert!(
        active.is_empty(),
        "alerts pending or firing on a healthy run:{}",
        describe(&active)
    );

    // PostgreSQL down: the alert is pending, then fires once its for: has
    // passed, and not before.
    pg.stop().await;
    let stopped = Instant::now();
    let instance = ingester.metrics_addr.clone();
    let database_alert = async || {
        prometheus.alerts().await.into_iter().find(|a| {
            a["labels"]["alertname"] == DATABASE_ALERT && a["labels"]["instance"] == instance
        })
    };
    let mut pending_at = None;
    wait_until(
        database_for + FIRING_MARGIN,
        "MiniScanDatabaseDown to fire",
        async || {
            ingester.assert_running();
            match database_alert().await {
                Some(a) if a["state"] == "firing" => Ok(()),
                Some(a) => {
                    pending_at.get_or_insert_with(Instant::now);
                    Err(format!("{}", a["state"]))
                }
                None => Err("not active".to_owned()),
            }
        },
    )
    .await;
    let fired_after = stopped.elapsed();
    let pending_at = pending_at.expect("the alert was seen pending before firing");
    assert!(
        pending_at.elapsed() >= database_for - Duration::from_secs(2),
        "fired {:?} after it was seen pending, before its for: of {database_for:?}",
        pending_at.elapsed()
    );
    let alert = database_alert().await.expect("the firing alert");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["component"], "database");
    let description = alert["annotations"]["description"].as_str().unwrap_or("");
    assert!(description.contains(&instance), "{description}");
    eprintln!("{DATABASE_ALERT} fired {fired_after:?} after PostgreSQL stopped");

    // Back: the alert clears.
    pg.start().await;
    wait_until(CLEAR_TIMEOUT, "MiniScanDatabaseDown to clear", async || {
        ingester.assert_running();
        match database_alert().await {
            None => Ok(()),
            Some(a) => Err(format!("{}", a["state"])),
        }
    })
    .await;
    let firing: Vec<Value> = prometheus
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(
        firing.is_empty(),
        "alerts firing after recovery:{}",
        describe(&firing)
    );
    ingester.stop().await;
}
