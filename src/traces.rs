//! OpenTelemetry traces, off by default.
//!
//! Switched on by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set to an `http://` or `https://`
//! URL; `OTEL_EXPORTER_OTLP_PROTOCOL` `grpc` (the default here, as Jaeger's and
//! Tempo's port 4317 speak it) or `http/protobuf`; `OTEL_SERVICE_NAME`
//! (default `mini-scan`); `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`,
//! `traceidratio`, `parentbased_always_on` (the default),
//! `parentbased_always_off`, `parentbased_traceidratio`) and
//! `OTEL_TRACES_SAMPLER_ARG` (the ratio, 0..=1, default 1). `OTEL_SDK_DISABLED=true`
//! keeps tracing off. A value that cannot be used stops start-up with one line
//! naming the variable.
//!
//! `tracing` spans of this crate are exported over OTLP by a
//! `tracing-opentelemetry` layer (the logging set-up adds it), so log lines in
//! the json format carry `trace_id` and `span_id`. Trace context crosses
//! Pub/Sub as W3C `traceparent` values in the message attributes
//! [`GOOGCLIENT_TRACEPARENT`] (Google's client libraries) and [`TRACEPARENT`].
//!
//! When tracing is off, [`enabled`] is false and nothing per message is
//! extracted, injected or allocated.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The attribute Google's Pub/Sub client libraries carry trace context in.
pub const GOOGCLIENT_TRACEPARENT: &str = "googclient_traceparent";
/// The plain W3C name, which other producers use.
pub const TRACEPARENT: &str = "traceparent";
/// Most span links on one batch span (sampled messages' contexts first); the
/// rest of a larger batch is not linked. Also the SDK's per-span link limit.
pub const MAX_LINKS_PER_SPAN: usize = 128;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once at start-up).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why tracing cannot start: one line, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `OTEL_*` variable holds a value that cannot be used.
    #[error("{var}={value:?} {problem}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The OTLP exporter cannot be built from the settings.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

fn invalid(var: &'static str, value: impl Into<String>, problem: &'static str) -> Error {
    Error::Invalid {
        var,
        value: value.into(),
        problem,
    }
}

/// Something that can carry the trace context its message was published in:
/// the ack handles that travel with the messages. The write stage links its
/// batch span to these; the generic pipeline never sees them.
pub trait MessageContext {
    /// The context, if tracing is on and the message carried one.
    fn trace_context(&self) -> Option<&SpanContext> {
        None
    }
}

/// The unit ack handle of in-memory sources carries no context.
impl MessageContext for () {}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP protobuf over HTTP.
    HttpProtobuf,
}

/// Which traces are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerKind {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This fraction of trace ids.
    Ratio(f64),
}

/// Tracing settings read from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Where spans go (for `http/protobuf`, the full `/v1/traces` URL).
    pub endpoint: String,
    /// How.
    pub protocol: Protocol,
    /// `service.name`.
    pub service_name: String,
    /// The root sampler.
    pub sampler: SamplerKind,
    /// Whether a remote parent's sampling decision is followed.
    pub parent_based: bool,
}

impl Settings {
    /// The settings from the process environment; `None` when tracing is off.
    pub fn from_env() -> Result<Option<Self>, Error> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// The settings from `get` (a variable's non-empty value).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Error> {
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let signal = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v, true));
        let Some((var, endpoint, full)) = signal.or_else(|| {
            get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|v| ("OTEL_EXPORTER_OTLP_ENDPOINT", v, false))
        }) else {
            return Ok(None);
        };
        let endpoint = endpoint.trim().to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            || endpoint.len() <= "https://".len()
        {
            return Err(invalid(var, endpoint, "is not an http:// or https:// URL"));
        }
        let (pvar, protocol) = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                get("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or("grpc".into()),
            ),
        };
        let protocol = match protocol.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                return Err(invalid(
                    pvar,
                    other,
                    "is not supported (grpc or http/protobuf)",
                ));
            }
        };
        let endpoint = match protocol {
            // The generic endpoint is a base URL for HTTP; the signal's is whole.
            Protocol::HttpProtobuf if !full => {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            }
            _ => endpoint,
        };
        let (sampler, parent_based) = sampler(&get)?;
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "mini-scan".into()),
            sampler,
            parent_based,
        }))
    }
}

impl Settings {
    /// The SDK's sampler for these settings.
    pub fn sampler(&self) -> Sampler {
        let root = match self.sampler {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
fn sampler(get: &impl Fn(&str) -> Option<String>) -> Result<(SamplerKind, bool), Error> {
    let name = get("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
    let ratio = || -> Result<SamplerKind, Error> {
        match get("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(SamplerKind::Ratio(1.0)),
            Some(arg) => match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(SamplerKind::Ratio(r)),
                _ => Err(invalid(
                    "OTEL_TRACES_SAMPLER_ARG",
                    arg,
                    "is not a ratio between 0 and 1",
                )),
            },
        }
    };
    Ok(match name.trim() {
        "always_on" => (SamplerKind::AlwaysOn, false),
        "always_off" => (SamplerKind::AlwaysOff, false),
        "traceidratio" => (ratio()?, false),
        "parentbased_always_on" => (SamplerKind::AlwaysOn, true),
        "parentbased_always_off" => (SamplerKind::AlwaysOff, true),
        "parentbased_traceidratio" => (ratio()?, true),
        other => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                other,
                "is not supported (always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off, parentbased_traceidratio)",
            ));
        }
    })
}

/// The running exporter; [`Tracing::shutdown`] flushes what is buffered.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Starts exporting as `settings` say (inside a Tokio runtime, for gRPC)
    /// and turns [`enabled`] on. Returns the tracer for the `tracing` layer.
    pub fn start(settings: &Settings) -> Result<(Self, SdkTracer), Error> {
        let exporter = otlp(settings)?;
        Ok(Self::with_exporter(
            exporter,
            settings.sampler(),
            &settings.service_name,
        ))
    }

    /// Starts exporting to `exporter` (batched, on the SDK's own thread),
    /// sampling as `sampler` says, and turns [`enabled`] on. [`Tracing::start`]
    /// passes the OTLP exporter; `benches/pipeline.rs` a null one.
    pub fn with_exporter(
        exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static,
        sampler: Sampler,
        service_name: &str,
    ) -> (Self, SdkTracer) {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_max_links_per_span(MAX_LINKS_PER_SPAN as u32)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("mini-scan");
        ENABLED.store(true, Ordering::Relaxed);
        (Self { provider }, tracer)
    }

    /// Exports what is buffered and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("mini-scan: cannot flush traces: {e}");
        }
    }
}

/// The OTLP exporter `settings` ask for.
fn otlp(settings: &Settings) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let timeout = Duration::from_secs(10);
    match settings.protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(timeout)
            .build(),
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(timeout)
            .build(),
    }
    .map_err(Error::Exporter)
}

/// The W3C `traceparent` of `span` (a `tracing` span), if it is recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(1);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The trace context in a message's attributes (`googclient_traceparent`
/// first, then `traceparent`), if any is valid.
pub fn extract(attributes: &HashMap<String, String>) -> Option<SpanContext> {
    struct One<'a>(Option<&'a String>);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == TRACEPARENT).then_some(self.0?.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT]
        }
    }
    let propagator = TraceContextPropagator::new();
    [GOOGCLIENT_TRACEPARENT, TRACEPARENT]
        .into_iter()
        .filter_map(|k| attributes.get(k))
        .map(|v| {
            let cx = propagator.extract(&One(Some(v)));
            cx.span().span_context().clone()
        })
        .find(SpanContext::is_valid)
}

/// Up to [`MAX_LINKS_PER_SPAN`] contexts for a batch span's links, sampled
/// ones first.
pub fn pick_links<'a>(contexts: impl Iterator<Item = &'a SpanContext>) -> Vec<SpanContext> {
    let mut all: Vec<&SpanContext> = contexts.collect();
    all.sort_by_key(|c| !c.is_sampled());
    all.into_iter().take(MAX_LINKS_PER_SPAN).cloned().collect()
}

#[cfg(test)]
mod tests;
