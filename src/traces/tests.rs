use super::*;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())
}

#[test]
fn off_unless_an_endpoint_is_set() {
    assert_eq!(settings(&[]), Ok(None));
    assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
    let disabled = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
        ("OTEL_SDK_DISABLED", "true"),
    ];
    assert_eq!(settings(&disabled), Ok(None));
}

#[test]
fn defaults_are_grpc_parent_based_always_on() {
    let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")])
        .unwrap()
        .unwrap();
    assert_eq!(
        s,
        Settings {
            endpoint: "http://jaeger:4317".into(),
            protocol: Protocol::Grpc,
            service_name: "mini-scan".into(),
            sampler: SamplerKind::AlwaysOn,
            parent_based: true,
        }
    );
}

#[test]
fn http_protobuf_appends_the_traces_path_to_the_generic_endpoint() {
    let s = settings(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ("OTEL_SERVICE_NAME", "ingester-a"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(s.protocol, Protocol::HttpProtobuf);
    assert_eq!(s.sampler, SamplerKind::Ratio(0.01));
    assert!(s.parent_based);
    assert_eq!(s.service_name, "ingester-a");
    let full = settings(&[
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(full.endpoint, "http://c:4318/custom");
}

#[test]
fn a_bad_value_names_its_variable() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
            "OTEL_EXPORTER_OTLP_ENDPOINT=",
        ),
        (
            &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "OTEL_EXPORTER_OTLP_PROTOCOL=",
        ),
        (
            &[endpoint, ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
            "OTEL_TRACES_SAMPLER=",
        ),
        (
            &[
                endpoint,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ],
            "OTEL_TRACES_SAMPLER_ARG=",
        ),
        (
            &[
                endpoint,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "lots"),
            ],
            "OTEL_TRACES_SAMPLER_ARG=",
        ),
    ];
    for (vars, named) in cases {
        let e = settings(vars).expect_err("a bad value");
        assert!(e.starts_with(named), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

fn context(trace: u128, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(7u64),
        flags,
        true,
        TraceState::default(),
    )
}

#[test]
fn the_googclient_attribute_wins_and_garbage_is_ignored() {
    let tp = |t: u128| format!("00-{t:032x}-0000000000000007-01");
    let mut attrs = HashMap::new();
    assert!(extract(&attrs).is_none());
    attrs.insert(TRACEPARENT.to_string(), tp(5));
    assert_eq!(extract(&attrs).unwrap().trace_id(), TraceId::from(5u128));
    attrs.insert(GOOGCLIENT_TRACEPARENT.to_string(), tp(9));
    let cx = extract(&attrs).unwrap();
    assert_eq!(cx.trace_id(), TraceId::from(9u128));
    assert!(cx.is_sampled() && cx.is_remote());
    attrs.insert(
        GOOGCLIENT_TRACEPARENT.to_string(),
        "not a traceparent".into(),
    );
    assert_eq!(extract(&attrs).unwrap().trace_id(), TraceId::from(5u128));
}

#[test]
fn links_are_capped_with_sampled_contexts_first() {
    let contexts: Vec<SpanContext> = (1..=300u128).map(|t| context(t, t % 3 == 0)).collect();
    let links = pick_links(contexts.iter());
    assert_eq!(links.len(), MAX_LINKS_PER_SPAN);
    // 100 sampled ones, all kept, before any unsampled one.
    assert!(links[..100].iter().all(SpanContext::is_sampled));
    assert!(links[100..].iter().all(|c| !c.is_sampled()));
}
