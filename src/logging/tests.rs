//! Tests of the log formats, the fatal line and the format a broken command line asks for.

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
    let subscriber = subscriber(
        format,
        EnvFilter::new("debug"),
        buffer.clone(),
        terminal,
        None,
    );
    tracing::dispatcher::with_default(&subscriber, log);
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
fn with_tracing_on_json_lines_inside_a_span_carry_its_ids() {
    use opentelemetry::trace::TracerProvider as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("test");
    let buffer = Buffer::default();
    let subscriber = subscriber(
        LogFormat::Json,
        EnvFilter::new("debug"),
        buffer.clone(),
        false,
        Some(tracer),
    );
    tracing::dispatcher::with_default(&subscriber, || {
        tracing::info!("outside");
        let span = tracing::info_span!("write", rows = 2_u64);
        let _entered = span.enter();
        tracing::warn!(trace_id = "mine", "inside");
    });
    let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines = lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    assert!(!lines[0].contains_key("trace_id"), "no span, no ids: {out}");
    let inside = &lines[1];
    let hex = |k: &str, n: usize| {
        let v = inside[k].as_str().unwrap_or_default();
        v.len() == n && v.bytes().all(|b| b.is_ascii_hexdigit())
    };
    assert!(hex("trace_id", 32) && hex("span_id", 16), "{out}");
    assert_eq!(
        inside["field_trace_id"], "mine",
        "a field never hides a key"
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

/// What libpq-style clients (a pooler, the Cloud SQL proxy) report when the
/// server is down: a second line, indented with a tab.
const REFUSED: &str = "connection to server at \"127.0.0.1\", port 5432 failed: \
    Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?";

/// An error whose message and cause span lines, as a database error can.
#[derive(Debug)]
struct Refused(std::io::Error);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REFUSED)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn refused() -> Refused {
    Refused(std::io::Error::other("line one\r\nline two"))
}

#[test]
fn text_lines_stay_one_line_when_a_field_holds_a_multi_line_error() {
    for terminal in [false, true] {
        let out = capture(LogFormat::Text, terminal, || {
            let span = tracing::info_span!("write", cause = %REFUSED);
            let _span = span.enter();
            let e = refused();
            // The ways an error reaches a line: Display (`%`, as the stages
            // log `Chain`), as an error, and in the message itself.
            tracing::warn!(error = %crate::error::Chain(&e), "database unavailable; pausing the pipeline");
            tracing::warn!(
                error = &e as &(dyn std::error::Error + 'static),
                "as an error"
            );
            tracing::warn!("in the message: {e}");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.len(),
            3,
            "terminal {terminal}: one line per event:\n{out}"
        );
        assert!(!out.contains('\t') && !out.contains('\r'), "{out:?}");
        let escaped = "failed: Connection refused\\n\\tIs the server running on that host";
        for line in &lines {
            assert!(line.contains(escaped), "terminal {terminal}: {line}");
        }
        assert!(lines[0].contains("pausing the pipeline"), "{}", lines[0]);
        assert!(lines[1].contains("line one\\r\\nline two"), "{}", lines[1]);
    }
}

#[test]
fn json_lines_keep_a_multi_line_error_exact() {
    let out = capture(LogFormat::Json, false, || {
        let e = refused();
        tracing::warn!(error = %crate::error::Chain(&e), "database unavailable");
    });
    let lines = lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let error = lines[0]["error"].as_str().expect("the error as a string");
    assert!(error.starts_with(REFUSED), "{error}");
}

#[test]
fn one_line_escapes_line_breaks_and_tabs_only() {
    assert_eq!(one_line("a\nb\r\nc\td"), "a\\nb\\r\\nc\\td");
    assert!(matches!(one_line("plain \"text\""), Cow::Borrowed(_)));
}
