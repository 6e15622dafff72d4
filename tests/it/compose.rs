//! Offline checks of the "run and watch it" stack: `docker-compose.yml`, the
//! `Dockerfile`, `prometheus/prometheus.yml` and the Grafana provisioning and
//! dashboard.
//!
//! There is no Docker engine on our machines, so these tests check what can be
//! checked without one:
//!
//! * the compose file against the Compose Specification schema
//!   (`tests/fixtures/compose-spec.json`, see `compose-spec.md` beside it);
//! * every `mini-scan` flag and env var the compose file passes exists in the
//!   real binary's `--help`;
//! * the image's final stage runs `mini-scan` as a non-root user; the builder
//!   copies what cargo reads, and its dependency layer is replayed in a
//!   temporary directory up to the point where cargo has parsed the manifest
//!   and checked the lock file;
//! * Prometheus's config passes `promtool check config`, and the dashboard's
//!   PromQL parses (`promtool check rules`);
//! * the files agree with each other (ports, service names, datasource uid,
//!   mount paths).
//!
//! `tests/it/observability.rs` then runs every dashboard query against a real
//! Prometheus scraping a real ingester.

use crate::stack;
use crate::stack::{
    PROMETHEUS_HINT, copy_args, dashboard_queries, dockerfile, help_mentions_env,
    help_mentions_flag, is_our_env, json, panels, read, repo, substitute, yaml,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// The image every service built from our Dockerfile uses.
const OUR_IMAGE: &str = "mini-scan:local";

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"]
        .as_object()
        .expect("docker-compose.yml has a `services` mapping")
}

fn str_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a list or a string, got {other}"),
    }
}

/// A service's environment as (name, value) pairs, from either the mapping or
/// the `KEY=VALUE` list form.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.to_owned(), String::new()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn uses_our_image(service: &Value) -> bool {
    service.get("build").is_some() || service["image"].as_str() == Some(OUR_IMAGE)
}

#[test]
fn compose_file_is_valid_against_the_compose_spec() {
    let schema = json("tests/fixtures/compose-spec.json");
    let validator = jsonschema::draft7::new(&schema).expect("the vendored schema compiles");
    let doc = compose();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "docker-compose.yml violates the Compose Specification:\n{}",
        errors.join("\n")
    );
}

#[test]
fn compose_services_pass_only_flags_and_env_vars_mini_scan_knows() {
    let doc = compose();
    let mut ours = 0;
    let mut problems = Vec::new();
    for (name, service) in services(&doc) {
        if !uses_our_image(service) {
            continue;
        }
        ours += 1;
        if service.get("entrypoint").is_some() {
            problems.push(format!(
                "{name}: overrides the image's ENTRYPOINT [\"mini-scan\"]"
            ));
            continue;
        }
        let args = str_list(&service["command"]);
        let Some(subcommand) = args.first() else {
            problems.push(format!("{name}: no command (a mini-scan subcommand)"));
            continue;
        };
        let help = match stack::help(subcommand) {
            Ok(help) => help,
            Err(why) => {
                problems.push(format!("{name}: {why}"));
                continue;
            }
        };
        for arg in &args[1..] {
            if !arg.starts_with("--") {
                continue;
            }
            let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
            if !help_mentions_flag(&help, flag) {
                problems.push(format!(
                    "{name}: passes {flag}, which `mini-scan {subcommand} --help` does not list"
                ));
            }
        }
        for (var, _) in environment(service) {
            if is_our_env(&var) && !help_mentions_env(&help, &var) {
                problems.push(format!(
                    "{name}: sets {var}, which `mini-scan {subcommand} --help` does not list as [env: {var}]"
                ));
            }
        }
    }
    assert!(
        ours >= 4,
        "expected pubsub-init, migrate, scanner and ingester to use {OUR_IMAGE}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The names of the `${NAME...}` interpolations in a compose file.
fn interpolated(text: &str) -> BTreeSet<String> {
    text.split("${")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn compose_variables_are_documented_in_env_example() {
    let compose = read("docker-compose.yml");
    let used = interpolated(&compose);
    let documented: BTreeSet<String> = read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .collect();
    assert_eq!(
        used, documented,
        "the variables docker-compose.yml interpolates and those .env.example documents differ"
    );
    for name in &used {
        assert!(
            compose.contains(&format!("${{{name}:-")),
            "${{{name}}} has no default in docker-compose.yml, so the stack needs a .env to start"
        );
    }
}

#[test]
fn compose_ingester_scales_and_is_scraped_where_it_listens() {
    let doc = compose();
    let ingester = &services(&doc)["ingester"];
    assert!(
        ingester.get("ports").is_none() && ingester.get("container_name").is_none(),
        "the ingester must publish no host port and have no container_name, so \
         `docker compose up --scale ingester=3` works"
    );
    let env = environment(ingester);
    let addr = env
        .iter()
        .find(|(k, _)| k == "MINISCAN_METRICS_ADDR")
        .map(|(_, v)| v.clone())
        .expect("the ingester sets MINISCAN_METRICS_ADDR");
    let (host, port) = addr
        .rsplit_once(':')
        .expect("MINISCAN_METRICS_ADDR is host:port");
    assert_eq!(
        host, "0.0.0.0",
        "the ingester's metrics must listen on all interfaces to be scraped"
    );
    let port: u64 = port.parse().expect("a numeric metrics port");

    let prometheus = yaml("prometheus/prometheus.yml");
    let jobs = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs");
    let scraped = jobs.iter().any(|job| {
        job["dns_sd_configs"].as_array().is_some_and(|sds| {
            sds.iter().any(|sd| {
                sd["port"].as_u64() == Some(port)
                    && sd["type"].as_str() == Some("A")
                    && str_list(&sd["names"]).iter().any(|n| n == "ingester")
            })
        })
    });
    assert!(
        scraped,
        "prometheus/prometheus.yml must discover every ingester replica with a \
         dns_sd_config (names [ingester], type A, port {port})"
    );
}

#[test]
fn compose_grafana_finds_its_provisioning_dashboard_and_datasource() {
    let doc = compose();
    let services = services(&doc);
    let grafana = &services["grafana"];

    // Host path -> container path for every bind mount.
    let mounts: Vec<(String, String)> = str_list(&grafana["volumes"])
        .iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    let to_host = |container_path: &str| -> Option<PathBuf> {
        mounts.iter().find_map(|(host, target)| {
            let rest = container_path.strip_prefix(target.as_str())?;
            let host = host.strip_prefix("./").unwrap_or(host);
            Some(repo(host).join(rest.trim_start_matches('/')))
        })
    };

    let env = environment(grafana);
    let home = &env
        .iter()
        .find(|(k, _)| k == "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .expect("grafana sets GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .1;
    let home_on_host = to_host(home).expect("the home dashboard path is inside a mount");
    assert!(
        home_on_host.is_file(),
        "the home dashboard {home} maps to {}, which does not exist",
        home_on_host.display()
    );
    for (k, v) in [
        ("GF_AUTH_ANONYMOUS_ENABLED", "true"),
        ("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer"),
    ] {
        assert!(
            env.iter().any(|(ek, ev)| ek == k && ev == v),
            "grafana must set {k}={v}"
        );
    }

    let provisioning = to_host("/etc/grafana/provisioning")
        .expect("grafana/provisioning is mounted at /etc/grafana/provisioning");
    assert!(provisioning.is_dir(), "{} missing", provisioning.display());

    let providers = yaml("grafana/provisioning/dashboards/mini-scan.yml");
    for provider in providers["providers"].as_array().expect("providers") {
        let path = provider["options"]["path"].as_str().expect("options.path");
        let on_host = to_host(path).expect("the dashboards provider's path is inside a mount");
        assert!(
            on_host.join("mini-scan.json").is_file(),
            "the provider reads {path} = {}, which lacks mini-scan.json",
            on_host.display()
        );
    }

    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let prometheus = datasources["datasources"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["type"] == "prometheus"))
        .expect("a prometheus datasource is provisioned");
    assert!(
        services.contains_key("prometheus"),
        "no prometheus service to point at"
    );
    assert_eq!(prometheus["url"], "http://prometheus:9090");
    let uid = prometheus["uid"]
        .as_str()
        .expect("the datasource has a fixed uid");
    let dashboard = json(stack::DASHBOARD);
    let default = variable(&dashboard, "datasource")["current"]["value"].clone();
    assert_eq!(
        default, uid,
        "the dashboard's datasource variable should default to the provisioned uid"
    );
}

/// The scanner's and the ingester's `OTEL_*` settings are accepted by
/// mini-scan's own parser and point at the compose service that receives OTLP
/// gRPC there; Grafana's Jaeger datasource reads that service's query port;
/// the write-latency panel links to the ingester's `write` spans in it.
#[test]
fn compose_traces_go_to_jaeger_and_grafana_reads_them() {
    let doc = compose();
    let services = services(&doc);
    let jaeger = services.get("jaeger").expect("a jaeger service");
    let args = str_list(&jaeger["command"]).join(" ");
    let mut names = Vec::new();
    for name in ["scanner", "ingester"] {
        let env: std::collections::HashMap<String, String> =
            environment(&services[name]).into_iter().collect();
        let settings = mini_scan::traces::Settings::from_lookup(|k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: tracing is off"));
        assert_eq!(
            settings.protocol,
            mini_scan::traces::Protocol::Grpc,
            "{name}"
        );
        let host_port = settings.endpoint.trim_start_matches("http://");
        let (host, port) = host_port.split_once(':').expect("host:port");
        assert_eq!(host, "jaeger", "{name} sends spans to another host");
        assert!(
            args.contains(&format!(
                "receivers.otlp.protocols.grpc.endpoint=0.0.0.0:{port}"
            )),
            "jaeger does not listen for OTLP gRPC on {port}: {args}"
        );
        names.push(settings.service_name);
    }
    let datasources = yaml("grafana/provisioning/datasources/jaeger.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"], "jaeger");
    assert_eq!(ds["url"], "http://jaeger:16686");
    assert!(
        str_list(&jaeger["ports"])
            .iter()
            .any(|p| p.ends_with(":16686")),
        "jaeger's UI is not published"
    );
    let dashboard = json(stack::DASHBOARD);
    let latency = panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == "Write latency")
        .expect("a Write latency panel");
    let url = latency["links"][0]["url"].as_str().unwrap_or_default();
    let uid = ds["uid"].as_str().expect("a fixed uid");
    assert!(url.contains(uid), "the panel links elsewhere: {url}");
    assert!(
        url.contains(names[1].as_str()),
        "not the ingester's service: {url}"
    );
}

#[test]
fn dockerfile_final_stage_runs_mini_scan_as_non_root() {
    let instructions = dockerfile();
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM");
    let final_stage = &instructions[last_from..];
    let user = final_stage
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.clone())
        .expect("the final stage sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !matches!(name, "root" | "0" | ""),
        "the final stage runs as {user}: use a non-root user"
    );
    let entrypoint = final_stage
        .iter()
        .rev()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, e)| e.clone())
        .expect("the final stage sets ENTRYPOINT");
    assert_eq!(entrypoint, r#"["mini-scan"]"#);
}

#[test]
fn dockerfile_builder_copies_what_cargo_needs() {
    let instructions = dockerfile();
    let builds: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (op, args))| op == "RUN" && args.contains("cargo build"))
        .map(|(i, _)| i)
        .collect();
    let (Some(&first_build), Some(&last_build)) = (builds.first(), builds.last()) else {
        panic!("no RUN ... cargo build in the Dockerfile");
    };
    let copied_before = |at: usize| -> BTreeSet<String> {
        instructions[..at]
            .iter()
            .filter(|(op, args)| op == "COPY" && !args.contains("--from"))
            .flat_map(|(_, args)| copy_args(args).0)
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect()
    };

    // The manifest must parse in the dependency layer: cargo rejects one whose
    // explicitly declared targets ([[bench]] and the like) are missing.
    let manifest = read("Cargo.toml");
    let mut for_manifest = vec!["Cargo.toml", "Cargo.lock"];
    for (section, dir) in [
        ("[[bench]]", "benches"),
        ("[[example]]", "examples"),
        ("[[test]]", "tests"),
    ] {
        if manifest.contains(section) {
            for_manifest.push(dir);
        }
    }
    if repo("build.rs").exists() {
        for_manifest.push("build.rs");
    }
    // The release build also reads the sources and the migrations
    // (include_str!).
    let for_build = [for_manifest.clone(), vec!["src", "migrations"]].concat();

    let early = copied_before(first_build);
    let late = copied_before(last_build);
    let mut problems = Vec::new();
    for needed in &for_manifest {
        if !early.contains(*needed) {
            problems.push(format!(
                "{needed} is not copied before the first `cargo build` (copied: {early:?})"
            ));
        }
    }
    for needed in &for_build {
        if !late.contains(*needed) {
            problems.push(format!(
                "{needed} is not copied before the release build (copied: {late:?})"
            ));
        }
    }
    for entry in read(".dockerignore").lines().map(str::trim) {
        let entry = entry.trim_end_matches('/');
        if for_build.contains(&entry) {
            problems.push(format!(
                ".dockerignore excludes {entry}, which the build needs"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Replays the dependency layer in a temporary directory, as `docker build`
/// would run it first, without a Docker engine: its COPYs, the placeholder
/// sources its first `cargo build` step creates, and then that build with
/// `--bin` set to a name that does not exist. Cargo parses the manifest and
/// checks the lock file (`--locked`) before it selects targets, so "no bin
/// target named ..." proves both are fine without compiling anything.
#[test]
fn dockerfile_dependency_layer_parses_with_the_locked_manifest() {
    const PROBE: &str = "__manifest_probe__";
    let instructions = dockerfile();
    let first_build = instructions
        .iter()
        .position(|(op, args)| op == "RUN" && args.contains("cargo build"))
        .expect("a RUN ... cargo build");
    let from = instructions[..first_build]
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM before the build");
    let dir = tempfile::tempdir().expect("a temp dir");
    for (op, args) in &instructions[from + 1..first_build] {
        match op.as_str() {
            "COPY" => {
                let (sources, dest) = copy_args(args);
                let status = Command::new("cp")
                    .arg("-R")
                    .args(sources.iter().map(|s| repo(s)))
                    .arg(dest)
                    .current_dir(dir.path())
                    .status()
                    .expect("running cp");
                assert!(status.success(), "replaying COPY {args} failed");
            }
            "WORKDIR" | "ENV" | "ARG" => {}
            // Build tools for the image (make, for jemalloc); what cargo
            // parses does not depend on them.
            "RUN" if args.trim_start().starts_with("apt-get") => {}
            other => panic!("the dependency layer has a {other} this test cannot replay"),
        }
    }
    // The steps of the RUN before its `cargo build` make the placeholders.
    let script = &instructions[first_build].1;
    let steps: Vec<&str> = script.split("&&").map(str::trim).collect();
    let build = steps
        .iter()
        .position(|s| s.starts_with("cargo build"))
        .unwrap_or_else(|| panic!("expected `... && cargo build ...` in: {script}"));
    if build > 0 {
        let setup = steps[..build].join(" && ");
        let status = Command::new("sh")
            .args(["-c", &setup])
            .current_dir(dir.path())
            .status()
            .expect("running sh");
        assert!(status.success(), "replaying `{setup}` failed");
    }
    let args: Vec<&str> = steps[build].split_whitespace().skip(1).collect();
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .args(["--offline", "--bin", PROBE])
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .current_dir(dir.path())
        .output()
        .expect("running cargo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("no bin target named `{PROBE}`")),
        "`{}` in the Dockerfile's dependency layer would fail:\n{stderr}",
        steps[build]
    );
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("the dashboard has no `{name}` variable"))
}

#[test]
fn dashboard_uses_its_variables_everywhere() {
    let dashboard = json(stack::DASHBOARD);

    let datasource = variable(&dashboard, "datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let instance = variable(&dashboard, "instance");
    let definition = instance["definition"]
        .as_str()
        .or_else(|| instance["query"]["query"].as_str())
        .or_else(|| instance["query"].as_str())
        .unwrap_or_default();
    assert_eq!(definition, "label_values(miniscan_build_info, instance)");
    assert_eq!(
        instance["multi"], true,
        "the replica variable is multi-value"
    );
    assert_eq!(
        instance["includeAll"], true,
        "the replica variable includes All"
    );
    assert_eq!(instance["datasource"]["uid"], "${datasource}");

    let mut problems = Vec::new();
    let panels = panels(&dashboard);
    assert!(!panels.is_empty(), "the dashboard has no panels");
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "panel {title:?}: datasource is not ${{datasource}}"
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no queries"));
        }
        for target in &targets {
            if !target["datasource"].is_null() && target["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "panel {title:?}: a query's datasource is not ${{datasource}}"
                ));
            }
        }
    }
    for (title, expr) in dashboard_queries(&dashboard) {
        // Service-wide by design: the SLO's recording rules (summed per
        // namespace and job, with no instance) and the gauges the one-shot
        // dead-letters commands write (scraped from node_exporter, whose
        // instance is no replica). tests/it/alerts.rs checks they have data.
        if expr.contains("namespace_job:") || expr.contains("miniscan_dead_letters_last_run_") {
            continue;
        }
        if !expr.contains(r#"instance=~"$instance""#) {
            problems.push(format!(
                "panel {title:?}: {expr} does not filter on instance=~\"$instance\""
            ));
        }
        let calls_range_fn = ["rate(", "increase("].iter().any(|f| expr.contains(f));
        for range in range_selectors(&expr) {
            if calls_range_fn && range != "$__rate_interval" {
                problems.push(format!(
                    "panel {title:?}: {expr} uses [{range}] instead of [$__rate_interval]"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The contents of every `[...]` in a PromQL expression.
fn range_selectors(expr: &str) -> Vec<&str> {
    expr.split('[')
        .skip(1)
        .filter_map(|s| s.split_once(']').map(|(r, _)| r))
        .collect()
}

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool not found: {PROMETHEUS_HINT}"
    );
    Command::new("promtool")
}

#[test]
fn prometheus_config_passes_promtool() {
    let output = promtool()
        .args(["check", "config"])
        .arg(repo("prometheus/prometheus.yml"))
        .output()
        .expect("running promtool");
    assert!(
        output.status.success(),
        "promtool check config prometheus/prometheus.yml failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn dashboard_promql_parses() {
    let dashboard = json(stack::DASHBOARD);
    // One recording rule per query: `promtool check rules` parses each one.
    let rules: Vec<Value> = dashboard_queries(&dashboard)
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            serde_json::json!({
                "record": format!("dashboard:query_{i}"),
                "expr": substitute(expr, "15s"),
            })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().expect("a temp dir");
    // JSON is YAML, which is what promtool reads.
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, file.to_string()).expect("writing the rules file");
    let output = promtool()
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("running promtool");
    assert!(
        output.status.success(),
        "the dashboard's PromQL does not parse:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
