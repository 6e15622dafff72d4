//! Log lines on stderr, in one of two formats (`--log-format`, env
//! `MINISCAN_LOG_FORMAT`):
//!
//! * `text` (the default): tracing's human-readable lines, coloured only when
//!   stderr is a terminal and `NO_COLOR` is unset or empty. A file, a pipe or
//!   a cluster's log agent never sees ANSI escapes. One event is one line: a
//!   line break or tab inside a field (a PostgreSQL error's second line, say)
//!   is written as `\n`, `\r` or `\t`.
//! * `json`: one JSON object per line, with the fields Google Cloud Logging
//!   and other collectors map: `timestamp` (RFC 3339, UTC), `severity`
//!   (`DEBUG`, `INFO`, `WARNING`, `ERROR`: Cloud Logging's names), `message`,
//!   `target` (the module), the event's own fields at the top level, and
//!   `spans`, the enclosing spans from the root, each with its `name` and
//!   fields. Cloud Logging's agent lifts `severity`, `timestamp` and `message`
//!   out of the line and keeps the rest as `jsonPayload`.
//!
//! `RUST_LOG` filters both (default `info`, with `tokio_postgres` at `warn`).
//!
//! With tracing on ([`crate::traces`]), this crate's spans are also exported
//! through a `tracing-opentelemetry` layer, and json lines inside a recorded
//! span carry its `trace_id` and `span_id` (the names Cloud Logging and
//! Grafana's log-to-trace links look for).

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::trace::SdkTracer;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::{Dispatch, WeakDispatch};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::field::{RecordFields, VisitOutput as _};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultVisitor, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal, never with `NO_COLOR`.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `severity`, `message`, fields,
    /// spans) for a log collector such as Cloud Logging's.
    Json,
}

/// The filter when `RUST_LOG` is unset or invalid.
const DEFAULT_FILTER: &str = "info,tokio_postgres=warn";

/// Keys the JSON format sets itself; an event field with one of these names
/// is written as `field_<name>` instead of overwriting it.
const RESERVED: &[&str] = &[
    "timestamp",
    "severity",
    "message",
    "target",
    "spans",
    "trace_id",
    "span_id",
];

/// Installs the global subscriber writing to stderr (a no-op if one is
/// already installed, as in tests that run several subcommands). With
/// `tracer`, this crate's spans are exported through it as well.
pub fn init(format: LogFormat, tracer: Option<SdkTracer>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let terminal = std::io::stderr().is_terminal();
    let _ = subscriber(format, filter, std::io::stderr, terminal, tracer).try_init();
}

/// The layer exporting this crate's spans (info and above, whatever
/// `RUST_LOG` lets through) to `tracer`, if any.
fn otel<S>(tracer: Option<SdkTracer>) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let only_ours = Targets::new().with_target("mini_scan", Level::INFO);
    tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_filter(only_ours)
    })
}

/// The subscriber for `format`, writing to `writer`. With `terminal` false
/// text lines carry no colour; with it true, colour follows tracing's default,
/// which honours `NO_COLOR`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    terminal: bool,
    tracer: Option<SdkTracer>,
) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // A `Dispatch` of the concrete type (not a boxed subscriber), so that
    // `DispatchCell` learns the dispatch the JSON format asks for trace ids.
    let cell = DispatchCell::default();
    let json = JsonLines {
        dispatch: tracer.is_some().then(|| cell.0.clone()),
    };
    let registry = tracing_subscriber::registry().with(filter).with(cell);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text if terminal => {
            let text = fmt.fmt_fields(OneLineFields);
            Dispatch::new(registry.with(text).with(otel(tracer)))
        }
        LogFormat::Text => {
            let text = fmt.fmt_fields(OneLineFields).with_ansi(false);
            Dispatch::new(registry.with(text).with(otel(tracer)))
        }
        LogFormat::Json => Dispatch::new(
            registry
                .with(
                    fmt.with_ansi(false)
                        .fmt_fields(JsonFields::new())
                        .event_format(json),
                )
                .with(otel(tracer)),
        ),
    }
}

/// Keeps the dispatch it is registered in, for [`JsonLines`]: inside an event,
/// the current dispatcher cannot be looked up again.
#[derive(Clone, Default)]
struct DispatchCell(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> tracing_subscriber::Layer<S> for DispatchCell {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

/// The text format's fields: tracing's own ([`DefaultVisitor`], with its
/// colours on a terminal), each value with its line breaks and tabs escaped
/// ([`one_line`]), so that an event stays one line. `?` values and plain
/// strings are escaped by `Debug` already; this catches `%` values, errors
/// and the message.
struct OneLineFields;

impl<'writer> FormatFields<'writer> for OneLineFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = OneLineVisitor(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }
}

/// `text` with `\n`, `\r` and `\t` in place of a line feed, a carriage
/// return and a tab; borrowed when there is none.
fn one_line(text: &str) -> Cow<'_, str> {
    if !text.contains(['\n', '\r', '\t']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Hands each field to tracing's visitor with [`one_line`] applied.
struct OneLineVisitor<'writer>(DefaultVisitor<'writer>);

impl Visit for OneLineVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.record_f64(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.record_i64(field, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.record_u64(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.record_bool(field, value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.record_str(field, value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // As tracing writes an error with causes, each part escaped.
        let mut text = one_line(&value.to_string()).into_owned();
        let sources: Vec<String> = std::iter::successors(value.source(), |e| e.source())
            .map(|e| one_line(&e.to_string()).into_owned())
            .collect();
        if !sources.is_empty() {
            text = format!("{text} {}.sources=[{}]", field.name(), sources.join(", "));
        }
        self.0.record_debug(field, &format_args!("{text}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.0
            .record_debug(field, &format_args!("{}", one_line(&text)));
    }
}

/// Cloud Logging's severity for a tracing level.
/// The last line of a failed run, for stderr: `mini-scan: <error>` in the
/// text format, one JSON object with severity `ERROR` in the json format (so a
/// log collector parses it like every other line). Line breaks inside the
/// error, such as a database's DETAIL and HINT lines, are folded into spaces:
/// it is always one line. Written directly, not through the subscriber, so
/// `RUST_LOG` cannot hide it.
pub fn fatal_line(format: LogFormat, error: &str) -> String {
    let error = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match format {
        LogFormat::Text => format!("mini-scan: {error}"),
        LogFormat::Json => {
            let mut timestamp = String::new();
            let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
            serde_json::json!({
                "timestamp": timestamp,
                "severity": "ERROR",
                "message": format!("mini-scan: {error}"),
                "target": "mini_scan",
            })
            .to_string()
        }
    }
}

/// The log format asked for on a command line that may not parse: the last
/// `--log-format` among `args` (`--log-format json` or `--log-format=json`),
/// else `env` (the value of `MINISCAN_LOG_FORMAT`), else text. Lets a
/// command-line error be reported in the format the operator asked for.
pub fn requested_format<I: IntoIterator<Item = String>>(args: I, env: Option<&str>) -> LogFormat {
    let parse = |v: &str| <LogFormat as clap::ValueEnum>::from_str(v, true).ok();
    let mut found = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--log-format" {
            found = args.next().as_deref().and_then(parse).or(found);
        } else if let Some(v) = arg.strip_prefix("--log-format=") {
            found = parse(v).or(found);
        }
    }
    found.or_else(|| env.and_then(parse)).unwrap_or_default()
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Formats each event as one JSON object on one line; with tracing on (a
/// `dispatch` to ask), the ids of the innermost exported span around it too.
struct JsonLines {
    dispatch: Option<Arc<OnceLock<WeakDispatch>>>,
}

impl JsonLines {
    /// The innermost exported span around the event, as (`trace_id`,
    /// `span_id`) in hex.
    fn trace_ids<S>(&self, ctx: &FmtContext<'_, S, JsonFields>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let dispatch = self.dispatch.as_ref()?.get()?.upgrade()?;
        ctx.event_scope()?.find_map(|span| {
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let otel = cx.span();
            let sc = otel.span_context();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        })
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let mut fields = fields.0;

        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let message = fields.remove("message").unwrap_or(Value::Null);
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert("message".into(), message);
        line.insert("target".into(), meta.target().into());
        for (key, value) in fields {
            let key = if RESERVED.contains(&key.as_str()) {
                format!("field_{key}")
            } else {
                key
            };
            line.insert(key, value);
        }
        if let Some((trace_id, span_id)) = self.trace_ids(ctx) {
            line.insert("trace_id".into(), trace_id.into());
            line.insert("span_id".into(), span_id.into());
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut entry = Map::new();
                    entry.insert("name".into(), span.name().into());
                    let extensions = span.extensions();
                    if let Some(recorded) = extensions.get::<FormattedFields<JsonFields>>()
                        && let Ok(Value::Object(span_fields)) =
                            serde_json::from_str::<Value>(&recorded.fields)
                    {
                        entry.extend(span_fields);
                    }
                    Value::Object(entry)
                })
                .collect();
            line.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields as JSON values: numbers and booleans stay typed, errors
/// and `Debug` values become strings.
#[derive(Default)]
struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests;
