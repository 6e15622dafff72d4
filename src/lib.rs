//! mini-scan: keeps the newest observation of every scanned service, from
//! Google Cloud Pub/Sub, in PostgreSQL.
//!
//! # Layout
//!
//! Layers only look down (a test at the end of this file checks it):
//!
//! * [`pipeline`]: the generic stage machinery (envelopes carrying ack handles,
//!   combinators, per-burst counting, two-phase shutdown). Knows nothing about
//!   scans and imports nothing else of this crate: stage names, metrics and
//!   tracing come from its caller through a [`pipeline::Observer`].
//! * [`error`], [`traces`], [`logging`], [`pubsub`], [`db`], [`telemetry`]:
//!   the lower layers, which import no stage and no pipeline.
//!   [`error`] formats error chains on one line; [`traces`] is OpenTelemetry
//!   (off by default); [`logging`] writes log lines as text or JSON
//!   (`--log-format`); [`pubsub`] builds Pub/Sub clients (emulator aware) and
//!   resource names; [`db`] connects (libpq's TLS parameters), pools,
//!   migrates and grants; [`telemetry`] installs the metrics registry,
//!   registers the series it is given and serves `/metrics`, `/healthz` and
//!   `/readyz`.
//! * [`model`]: the values that flow through the stages and into the store
//!   (a received message, a scan with its key and order, a dead letter and
//!   its reason); below both, so that neither imports the other.
//! * [`stages`]: the concrete stages, one module each: source, decode, dedup,
//!   batch, write, ack; each declares the metric series it emits, and
//!   [`stages::Metrics`] reports the pipeline's counts to the registry.
//! * [`store`]: the newest-wins upsert into PostgreSQL (layout, SQL,
//!   retries, isolation of rejected rows, verdicts), shared by the write
//!   stage and `dead-letters replay`.
//! * [`config`]: the command line (every setting is a flag with an env var)
//!   and the validated settings built from it ([`config::IngestConfig`],
//!   [`config::ScanConfig`]).
//! * [`ingester`]: the ingester, built from an `IngestConfig` then run until a
//!   shutdown; it owns and stops its background tasks.
//! * [`dead_letters`]: `mini-scan dead-letters stats | replay | purge`.
//! * [`scan`]: the synthetic scanner and load generator.
//! * [`app`]: the subcommands (`migrate`, `ingest`, `scan`, `setup`,
//!   `dead-letters`) wired up, with logging set-up and OS signal handling.

#![warn(missing_docs, unreachable_pub)]

pub mod app;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod error;
pub mod ingester;
pub mod logging;
pub mod model;
pub mod pipeline;
pub mod pubsub;
pub mod scan;
pub mod stages;
pub mod store;
pub mod telemetry;
pub mod traces;

/// jemalloc instead of the system allocator, for every binary, test and bench
/// linking this crate (so the e2e bench's null consumer, which runs in the
/// bench process, allocates as the ingester does). Per message the ingester
/// allocates and frees a few dozen blocks of very different sizes (pull
/// responses, decoded rows, batches, COPY buffers, `RETURNING` rows); glibc's
/// malloc spent ~10% of its sampled CPU on them, much of it consolidating
/// free lists (`malloc_consolidate`, `unlink_chunk`). docs/benchmarks.md
/// section 10 has the before/after.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The layering rules of `# Layout`, checked on the source text: every
/// mention of `crate::X` (code, paths in macros, doc links) in a file under
/// `src/X/` or `src/X.rs` is an edge from its top-level module to `X`.
#[cfg(test)]
mod layers {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Modules that only look down: they import no stage, no pipeline and
    /// nothing built on them.
    const LOWER: &[&str] = &["telemetry", "db", "error", "logging", "pubsub", "traces"];
    /// What the lower layers must not reference.
    const HIGHER: &[&str] = &[
        "stages",
        "pipeline",
        "ingester",
        "app",
        "store",
        "dead_letters",
        "model",
    ];

    /// The top-level module of every `.rs` file under `src/` (but `lib.rs`
    /// and `main.rs`), with the text of each file.
    fn sources() -> Vec<(String, String, String)> {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read src/") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        files
            .into_iter()
            .filter_map(|path| {
                let rel = path.strip_prefix(&src).ok()?.to_string_lossy().into_owned();
                let top = rel.split('/').next()?.trim_end_matches(".rs").to_owned();
                if top == "lib" || top == "main" {
                    return None;
                }
                let text = std::fs::read_to_string(&path).expect("read a source file");
                Some((top, rel, text))
            })
            .collect()
    }

    /// Every `crate::X` mentioned in `text`, with its line.
    fn mentions(text: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                let before = rest[..i].chars().next_back();
                let after = &rest[i + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.is_empty()
                {
                    out.push((n + 1, name));
                }
                rest = after;
            }
        }
        out
    }

    /// Module → the other top-level modules it mentions.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (top, _, text) in sources() {
            let deps = graph.entry(top.clone()).or_default();
            for (_, name) in mentions(&text) {
                if name != top {
                    deps.insert(name);
                }
            }
        }
        graph
    }

    #[test]
    fn the_pipeline_names_nothing_of_the_crate_but_itself() {
        let mut offending = Vec::new();
        for (top, rel, text) in sources() {
            if top != "pipeline" {
                continue;
            }
            for (line, name) in mentions(&text) {
                if name != "pipeline" {
                    offending.push(format!("src/{rel}:{line}: crate::{name}"));
                }
            }
        }
        assert!(offending.is_empty(), "{offending:#?}");
        // The check itself finds what it looks for.
        assert_eq!(
            mentions("use crate::telemetry::names; $crate::pipeline::X"),
            [(1, "telemetry".to_owned()), (1, "pipeline".to_owned())]
        );
    }

    #[test]
    fn lower_layers_reference_no_higher_one() {
        let graph = graph();
        for lower in LOWER {
            let deps = graph.get(*lower).expect("a lower layer exists");
            let bad: Vec<&String> = deps
                .iter()
                .filter(|d| HIGHER.contains(&d.as_str()))
                .collect();
            assert!(bad.is_empty(), "{lower} references {bad:?}");
        }
    }

    /// The modules' references form no cycle: each layer only looks down.
    #[test]
    fn no_module_cycle() {
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|p| p == node) {
                let mut cycle = path[i..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node.to_owned());
            for next in graph.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(node.to_owned());
            None
        }
        let graph = graph();
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
                panic!("a cycle: {}\n{graph:#?}", cycle.join(" -> "));
            }
        }
        // The check itself finds a cycle when there is one.
        let mut looped = graph.clone();
        looped
            .entry("telemetry".into())
            .or_default()
            .insert("stages".into());
        let found = looped
            .keys()
            .find_map(|n| visit(n, &looped, &mut Vec::new(), &mut BTreeSet::new()));
        assert!(found.is_some(), "a planted cycle is found");
    }
}
