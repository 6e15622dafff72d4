//! Traces end to end: `mini-scan scan` and `mini-scan ingest` export spans over
//! OTLP gRPC to a receiver inside this test (a tonic server implementing
//! opentelemetry-proto's `TraceService`); each published message's context
//! crosses Pub/Sub in its attributes and ends up as a link on the `write`
//! span of the batch that wrote it, with the same trace id.
//!
//! `cargo test --test it -- traces:: --nocapture` prints the received spans as a
//! tree (docs/observability.md, "Traces", shows one).

use crate::common;
use crate::common::{TestContext, binary_command, run_to_completion, wait_until};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

/// The OTLP receiver: keeps every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Keeps the spans of one export request.
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().expect("receiver lock");
        for rs in request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }

    /// Serves OTLP gRPC on a free local port; returns its endpoint URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("the OTLP receiver failed");
        });
        format!("http://{addr}")
    }

    /// Serves OTLP protobuf over HTTP (`POST /v1/traces`) on a free local
    /// port; returns its base URL.
    async fn serve_http(&self) -> String {
        use prost::Message as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP/HTTP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let me = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body)
                    .expect("an OTLP protobuf export request");
                me.keep(request);
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }),
        );
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the OTLP/HTTP receiver failed")
        });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().expect("receiver lock").clone()
    }
}

/// An attribute's value as text.
fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(show(value))
}

fn show(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The settings that turn tracing on, sending to `endpoint` as `service`.
fn otel_env(endpoint: &str, service: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_SERVICE_NAME", service.to_owned()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
    ]
}

const MESSAGES: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_is_a_link_on_the_batch_span_that_wrote_it() {
    let receiver = Receiver::default();
    let endpoint = receiver.serve().await;
    let ctx = TestContext::new().await;

    let ingester_env = otel_env(&endpoint, "ingester");
    let mut extra: Vec<(&str, &str)> = ingester_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.push(("MINISCAN_LOG_FORMAT", "json"));
    let ingester = ctx.start_ingester(&extra).await;

    let mut scan = binary_command();
    scan.args(["scan", "--topic", &ctx.topic, "--rate", "0"])
        .args(["--count", &MESSAGES.to_string(), "--seed", "11"])
        .args(["--malformed-ratio", "0.2"])
        .env("PUBSUB_EMULATOR_HOST", &ctx.pubsub.host)
        .env("PUBSUB_PROJECT_ID", common::PROJECT)
        .envs(otel_env(&endpoint, "scanner"));
    run_to_completion(scan, Duration::from_secs(120), "mini-scan scan").await;

    wait_until(Duration::from_secs(60), "every message acked", async || {
        let acked = ingester.acks().await;
        if acked >= u64::from(MESSAGES) {
            Ok(())
        } else {
            Err(format!("{acked} acked"))
        }
    })
    .await;
    // The tracer provider is flushed on exit.
    ingester.stop().await;

    let spans = receiver.spans();
    print_tree(&spans);
    let by = |service: &str, name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|r| r.service == service && r.span.name == name)
            .map(|r| &r.span)
            .collect()
    };
    let publishes = by("scanner", "publish");
    assert_eq!(
        publishes.len(),
        MESSAGES as usize,
        "one publish span per message"
    );
    let writes = by("ingester", "write");
    assert!(!writes.is_empty(), "no write span received");

    // Every publish span's context is a link on a write span, same trace id.
    let links: HashSet<(String, String)> = writes
        .iter()
        .flat_map(|w| &w.links)
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect();
    for p in &publishes {
        let id = (hex(&p.trace_id), hex(&p.span_id));
        assert!(
            links.contains(&id),
            "publish span {id:?} is linked from no write span"
        );
    }
    let rows: i64 = writes
        .iter()
        .map(|w| {
            attr(&w.attributes, "rows")
                .and_then(|r| r.parse::<i64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(rows >= i64::from(MESSAGES), "write spans carry {rows} rows");
    for w in &writes {
        assert_eq!(attr(&w.attributes, "outcome").as_deref(), Some("committed"));
        assert!(attr(&w.attributes, "partitions").is_some(), "{w:?}");
    }

    // Malformed messages were dead-lettered: an event each, with its reason.
    let dead: Vec<String> = writes
        .iter()
        .flat_map(|w| &w.events)
        .filter(|e| e.name == "dead_letter")
        .filter_map(|e| attr(&e.attributes, "reason"))
        .collect();
    let stored_dead = ctx.db.count_dead_letters().await;
    assert_eq!(
        dead.len() as i64,
        stored_dead,
        "one event per dead letter: {dead:?}"
    );
    assert!(stored_dead > 0, "the scan published no malformed message");

    // Each commit attempt is a child of its batch's write span.
    let write_ids: HashSet<Vec<u8>> = writes.iter().map(|w| w.span_id.clone()).collect();
    let commits = by("ingester", "commit");
    assert!(!commits.is_empty());
    for c in &commits {
        assert!(
            write_ids.contains(&c.parent_span_id),
            "an orphan commit span"
        );
        assert_eq!(attr(&c.attributes, "attempt").as_deref(), Some("1"));
        assert_eq!(attr(&c.attributes, "outcome").as_deref(), Some("committed"));
    }
    let acked: i64 = by("ingester", "ack")
        .iter()
        .filter_map(|a| attr(&a.attributes, "acked")?.parse::<i64>().ok())
        .sum();
    assert_eq!(acked, i64::from(MESSAGES), "ack spans count every ack");
}

/// Over `http/protobuf` too: each published message carries its publish
/// span's context in `googclient_traceparent` and `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scanner_exports_over_http_protobuf_and_puts_the_context_in_the_attributes() {
    let receiver = Receiver::default();
    let endpoint = receiver.serve_http().await;
    let ctx = TestContext::new().await;
    let tap = ctx.tap().await;
    let mut env = otel_env(&endpoint, "scanner");
    env[1].1 = "http/protobuf".to_owned();
    let mut scan = binary_command();
    scan.args(["scan", "--topic", &ctx.topic, "--rate", "0", "--count", "5"])
        .env("PUBSUB_EMULATOR_HOST", &ctx.pubsub.host)
        .env("PUBSUB_PROJECT_ID", common::PROJECT)
        .envs(env);
    run_to_completion(scan, Duration::from_secs(120), "mini-scan scan").await;

    let publishes: HashSet<String> = receiver
        .spans()
        .iter()
        .filter(|r| r.service == "scanner" && r.span.name == "publish")
        .map(|r| format!("00-{}-{}-01", hex(&r.span.trace_id), hex(&r.span.span_id)))
        .collect();
    assert_eq!(publishes.len(), 5, "{publishes:?}");
    let pulled = ctx.pubsub.drain(&tap).await;
    assert_eq!(pulled.len(), 5);
    for m in pulled {
        let tp = &m.attributes["traceparent"];
        assert_eq!(&m.attributes["googclient_traceparent"], tp);
        assert!(publishes.contains(tp), "{tp} is no publish span's context");
    }
}

/// A bad `OTEL_*` value stops start-up with one line naming the variable.
#[tokio::test]
async fn a_bad_otel_value_stops_start_up_with_one_line_naming_it() {
    let cases = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
    ];
    for (var, value) in cases {
        let mut cmd = binary_command();
        cmd.args([
            "ingest",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_TRACES_SAMPLER", "traceidratio")
        .env(var, value)
        .stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("mini-scan ingest exits at once")
            .expect("run mini-scan");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("{var}=")),
            "{var}={value}: {stderr}"
        );
    }
}

/// Prints the ingester's traces (a `write` span and its `commit` children,
/// the `ack` spans) and the scanner's traces its first write span links to.
fn print_tree(spans: &[Received]) {
    let mut traces: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in spans {
        traces.entry(hex(&r.span.trace_id)).or_default().push(r);
    }
    println!("{} spans in {} traces", spans.len(), traces.len());
    let write_traces = spans.iter().filter(|r| r.span.name == "write");
    let ack_traces = spans.iter().filter(|r| r.span.name == "ack");
    let linked = spans
        .iter()
        .filter(|r| r.span.name == "write")
        .flat_map(|w| w.span.links.iter().take(2))
        .filter_map(|l| traces.get(&hex(&l.trace_id))?.first().copied())
        .take(2);
    let mut shown = HashSet::new();
    for r in write_traces.chain(ack_traces.take(1)).chain(linked) {
        let trace = hex(&r.span.trace_id);
        if !shown.insert(trace.clone()) {
            continue;
        }
        let members = &traces[&trace];
        println!("trace {trace}");
        let children: HashMap<Vec<u8>, Vec<&Received>> =
            members.iter().fold(HashMap::new(), |mut m, r| {
                m.entry(r.span.parent_span_id.clone()).or_default().push(r);
                m
            });
        let ids: HashSet<&Vec<u8>> = members.iter().map(|r| &r.span.span_id).collect();
        for root in members
            .iter()
            .filter(|r| !ids.contains(&r.span.parent_span_id))
        {
            print_span(root, &children, 1);
        }
    }
}

/// Attributes the bridge adds to every span, left out of the printout.
const NOISE: &[&str] = &["target", "busy_ns", "idle_ns", "thread.id", "thread.name"];

fn print_span(r: &Received, children: &HashMap<Vec<u8>, Vec<&Received>>, depth: usize) {
    let s = &r.span;
    let ms = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6;
    let attrs: Vec<String> = s
        .attributes
        .iter()
        .filter(|kv| !kv.key.starts_with("code.") && !NOISE.contains(&kv.key.as_str()))
        .filter_map(|kv| Some(format!("{}={}", kv.key, show(kv.value.as_ref()?))))
        .collect();
    println!(
        "{:indent$}{} [{}] span {} {:.2} ms {}",
        "",
        s.name,
        r.service,
        hex(&s.span_id),
        ms,
        attrs.join(" "),
        indent = depth * 2
    );
    for e in &s.events {
        let attrs: Vec<String> = e
            .attributes
            .iter()
            .filter_map(|kv| Some(format!("{}={}", kv.key, show(kv.value.as_ref()?))))
            .collect();
        println!(
            "{:indent$}event {} {}",
            "",
            e.name,
            attrs.join(" "),
            indent = depth * 2 + 2
        );
    }
    let links = s.links.len();
    for l in s.links.iter().take(2) {
        println!(
            "{:indent$}link -> trace {} span {}",
            "",
            hex(&l.trace_id),
            hex(&l.span_id),
            indent = depth * 2 + 2
        );
    }
    if links > 2 {
        println!(
            "{:indent$}… {} more links",
            "",
            links - 2,
            indent = depth * 2 + 2
        );
    }
    for c in children.get(&s.span_id).into_iter().flatten() {
        print_span(c, children, depth + 1);
    }
}
