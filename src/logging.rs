//! Log lines on stderr, in one of two formats (`--log-format`, env
//! `MINISCAN_LOG_FORMAT`):
//!
//! * `text` (the default): tracing's human-readable lines, coloured only when
//!   stderr is a terminal and `NO_COLOR` is unset or empty. A file, a pipe or
//!   a cluster's log agent never sees ANSI escapes.
//! * `json`: one JSON object per line, with the fields Google Cloud Logging
//!   and other collectors map: `timestamp` (RFC 3339, UTC), `severity`
//!   (`DEBUG`, `INFO`, `WARNING`, `ERROR`: Cloud Logging's names), `message`,
//!   `target` (the module), the event's own fields at the top level, and
//!   `spans`, the enclosing spans from the root, each with its `name` and
//!   fields. Cloud Logging's agent lifts `severity`, `timestamp` and `message`
//!   out of the line and keeps the rest as `jsonPayload`.
//!
//! `RUST_LOG` filters both (default `info`, with `tokio_postgres` at `warn`).

use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
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
const RESERVED: &[&str] = &["timestamp", "severity", "message", "target", "spans"];

/// Installs the global subscriber writing to stderr (a no-op if one is
/// already installed, as in tests that run several subcommands).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let terminal = std::io::stderr().is_terminal();
    let _ = subscriber(format, filter, std::io::stderr, terminal).try_init();
}

/// The subscriber for `format`, writing to `writer`. With `terminal` false
/// text lines carry no colour; with it true, colour follows tracing's default,
/// which honours `NO_COLOR`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    terminal: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text if terminal => Box::new(builder.finish()),
        LogFormat::Text => Box::new(builder.with_ansi(false).finish()),
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .finish(),
        ),
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

/// Formats each event as one JSON object on one line.
struct JsonLines;

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
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `MakeWriter` collecting everything written into one buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, terminal: bool, log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, EnvFilter::new("debug"), buffer.clone(), terminal);
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().expect("buffer lock").clone();
        String::from_utf8(bytes).expect("utf-8 log output")
    }

    fn lines(text: &str) -> Vec<Map<String, Value>> {
        text.lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(Value::Object(map)) => map,
                other => panic!("not a JSON object: {line} ({other:?})"),
            })
            .collect()
    }

    #[test]
    fn json_lines_carry_cloud_logging_fields_event_fields_and_spans() {
        let out = capture(LogFormat::Json, false, || {
            let outer = tracing::info_span!("ingest", subscription = "scan-sub");
            let _outer = outer.enter();
            let inner = tracing::info_span!("batch", rows = 3_u64);
            let _inner = inner.enter();
            tracing::warn!(
                acked = 5_u64,
                ok = true,
                severity = "mine",
                "a \"quoted\"\nmessage"
            );
        });
        let lines = lines(&out);
        assert_eq!(lines.len(), 1, "{out}");
        let line = &lines[0];
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "a \"quoted\"\nmessage");
        assert_eq!(line["acked"], 5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["field_severity"], "mine", "a field never hides a key");
        assert_eq!(line["target"], module_path!());
        let timestamp = line["timestamp"].as_str().expect("a timestamp string");
        assert!(
            timestamp.len() >= 20 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
            "not RFC 3339 UTC: {timestamp}"
        );
        assert_eq!(
            line["spans"],
            serde_json::json!([
                {"name": "ingest", "subscription": "scan-sub"},
                {"name": "batch", "rows": 3},
            ])
        );
    }

    #[test]
    fn every_level_maps_to_a_cloud_logging_severity() {
        let out = capture(LogFormat::Json, false, || {
            tracing::trace!("t");
            tracing::debug!("d");
            tracing::info!("i");
            tracing::warn!("w");
            tracing::error!("e");
        });
        let severities: Vec<Value> = lines(&out)
            .into_iter()
            .map(|l| l["severity"].clone())
            .collect();
        // The filter is `debug`: the trace line is dropped.
        assert_eq!(severities, ["DEBUG", "INFO", "WARNING", "ERROR"]);
        assert!(lines(&out).iter().all(|l| !l.contains_key("spans")));
    }

    #[test]
    fn text_has_no_ansi_escapes_unless_on_a_terminal() {
        let log = || tracing::info!(component = "database", "up again");
        let plain = capture(LogFormat::Text, false, log);
        assert!(plain.contains("up again"), "{plain}");
        assert!(
            !plain.contains('\u{1b}'),
            "ANSI escape off a terminal: {plain:?}"
        );
        let json = capture(LogFormat::Json, true, log);
        assert!(!json.contains('\u{1b}'), "ANSI escape in JSON: {json:?}");
    }

    #[test]
    fn the_fatal_line_is_one_line_in_either_format() {
        let error =
            "cannot apply the schema: db error: ERROR: boom\nDETAIL:  a detail\n  HINT: a hint\n";
        let text = fatal_line(LogFormat::Text, error);
        assert_eq!(
            text,
            "mini-scan: cannot apply the schema: db error: ERROR: boom DETAIL:  a detail HINT: a hint"
        );
        let json = fatal_line(LogFormat::Json, error);
        assert!(!json.contains('\n'), "{json}");
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["severity"], "ERROR");
        assert_eq!(value["message"], text.as_str());
        assert!(
            value["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{json}"
        );
    }

    #[test]
    fn the_requested_format_is_read_from_a_command_line_that_may_not_parse() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            requested_format(args(&["ingest", "--bogus"]), None),
            LogFormat::Text
        );
        assert_eq!(
            requested_format(args(&["ingest"]), Some("json")),
            LogFormat::Json
        );
        assert_eq!(
            requested_format(args(&["--log-format", "json", "ingest", "--bogus"]), None),
            LogFormat::Json
        );
        assert_eq!(
            requested_format(args(&["ingest", "--log-format=text"]), Some("json")),
            LogFormat::Text,
            "the flag wins over the variable"
        );
        assert_eq!(
            requested_format(args(&["--log-format", "yaml"]), Some("json")),
            LogFormat::Json,
            "an invalid flag value falls back to the variable"
        );
    }
}
