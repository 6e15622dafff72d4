//! What the `dead-letters` commands print, and the metrics file they leave.
//!
//! Reports go to stdout: a table for people, or one JSON object (`--json`)
//! for scripts. Logs (progress lines, the summary line) go to stderr.
//!
//! The metrics: these commands are one-shot, so nothing scrapes them while
//! they run. With `--metrics-file PATH` a run replaces PATH (atomically:
//! written beside it, then renamed) with its counts in Prometheus text
//! format, for node_exporter's textfile collector. The counts are gauges of
//! the last run (`miniscan_dead_letters_last_run_messages{command,result}`),
//! with the time it finished and how long it took: a counter that restarts
//! at every run would read as no change whenever two runs count the same.

use super::purge::PurgeSummary;
use super::replay::{Counts, ReplaySummary};
use super::stats::Stats;
use crate::telemetry::names::{self, command, dead_letter_result};
use comfy_table::{CellAlignment, Table, presets};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_header(header.to_vec());
    for i in 1..header.len() {
        if let Some(column) = t.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// `stats` as a table: one line per reason, then the total.
pub fn stats_table(stats: &Stats) -> String {
    let mut t = table(&["reason", "count", "oldest", "newest", "payload bytes"]);
    for g in stats.reasons.iter().chain([&stats.total]) {
        t.add_row(vec![
            g.reason.clone(),
            g.count.to_string(),
            to_seconds(g.oldest.as_deref()),
            to_seconds(g.newest.as_deref()),
            g.payload_bytes.to_string(),
        ]);
    }
    t.to_string()
}

/// An RFC 3339 time without its fraction of a second (tables are for
/// people; the JSON keeps the microseconds), or `-`.
fn to_seconds(time: Option<&str>) -> String {
    match time {
        Some(t) => match (t.find('.'), t.rfind('Z')) {
            (Some(dot), Some(z)) if dot < z => format!("{}{}", &t[..dot], &t[z..]),
            _ => t.to_owned(),
        },
        None => "-".to_owned(),
    }
}

/// `replay` as a table by the reason each dead letter had, the total, and
/// what those still failing fail with now.
pub fn replay_table(summary: &ReplaySummary) -> String {
    let mut t = table(&["reason", "seen", "stored", "superseded", "still failing"]);
    let row = |name: &str, c: &Counts| {
        vec![
            name.to_owned(),
            c.seen.to_string(),
            c.stored.to_string(),
            c.superseded.to_string(),
            c.still_failing.to_string(),
        ]
    };
    for (reason, counts) in &summary.by_reason {
        t.add_row(row(reason, counts));
    }
    t.add_row(row("total", &summary.total));
    let mut out = String::new();
    if summary.dry_run {
        out.push_str("dry run: nothing was written; stored and superseded would be deleted\n");
    }
    out.push_str(&t.to_string());
    if !summary.still_failing_now.is_empty() {
        let mut now = table(&["still failing with", "count"]);
        for (reason, n) in &summary.still_failing_now {
            now.add_row(vec![reason.clone(), n.to_string()]);
        }
        out.push_str("\n\n");
        out.push_str(&now.to_string());
    }
    out
}

/// `purge` as a table by reason.
pub fn purge_table(summary: &PurgeSummary) -> String {
    let mut t = table(&["reason", "purged"]);
    for (reason, n) in &summary.by_reason {
        t.add_row(vec![reason.clone(), n.to_string()]);
    }
    t.add_row(vec!["total".to_owned(), summary.purged.to_string()]);
    let verb = if summary.dry_run {
        "dry run: would purge"
    } else {
        "purged"
    };
    format!(
        "{verb} dead letters received before {}\n{t}",
        summary.received_before
    )
}

/// The metrics of a replay run, in Prometheus text format.
pub fn replay_metrics(summary: &ReplaySummary, finished: SystemTime, took: Duration) -> String {
    render(
        command::REPLAY,
        &[
            (dead_letter_result::REPLAYED, summary.total.replayed()),
            (
                dead_letter_result::STILL_FAILING,
                summary.total.still_failing,
            ),
        ],
        finished,
        took,
    )
}

/// The metrics of a purge run, in Prometheus text format.
pub fn purge_metrics(summary: &PurgeSummary, finished: SystemTime, took: Duration) -> String {
    render(
        command::PURGE,
        &[(dead_letter_result::PURGED, summary.purged)],
        finished,
        took,
    )
}

/// Renders one run's gauges through a recorder of its own (the process has
/// no global one: nothing serves `/metrics` here).
fn render(
    command: &'static str,
    results: &[(&'static str, u64)],
    finished: SystemTime,
    took: Duration,
) -> String {
    use metrics::{Unit, describe_gauge};
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_gauge!(
            names::DEAD_LETTERS_LAST_RUN,
            "Dead letters the last run of a dead-letters command handled, by result."
        );
        describe_gauge!(
            names::DEAD_LETTERS_LAST_RUN_TIMESTAMP,
            Unit::Seconds,
            "When the last run of a dead-letters command finished (Unix time)."
        );
        describe_gauge!(
            names::DEAD_LETTERS_LAST_RUN_DURATION,
            Unit::Seconds,
            "How long the last run of a dead-letters command took."
        );
        for &(result, n) in results {
            names::dead_letters_last_run(command, result).set(n as f64);
        }
        let unix = finished
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        names::dead_letters_last_run_timestamp(command).set(unix.as_secs_f64());
        names::dead_letters_last_run_duration(command).set(took.as_secs_f64());
    });
    handle.render()
}

/// Replaces `path` with `text`: written to a temporary file beside it, then
/// renamed over it, so a collector never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_metrics_are_the_runs_counts() {
        let mut summary = ReplaySummary::default();
        summary.total.stored = 3;
        summary.total.superseded = 2;
        summary.total.still_failing = 4;
        let text = replay_metrics(
            &summary,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            Duration::from_millis(1500),
        );
        for line in [
            "miniscan_dead_letters_last_run_messages{command=\"replay\",result=\"replayed\"} 5",
            "miniscan_dead_letters_last_run_messages{command=\"replay\",result=\"still_failing\"} 4",
            "miniscan_dead_letters_last_run_timestamp_seconds{command=\"replay\"} 1800000000",
            "miniscan_dead_letters_last_run_duration_seconds{command=\"replay\"} 1.5",
            "# TYPE miniscan_dead_letters_last_run_messages gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn tables_show_whole_seconds() {
        assert_eq!(
            to_seconds(Some("2026-11-29T10:18:09.350471Z")),
            "2026-11-29T10:18:09Z"
        );
        assert_eq!(
            to_seconds(Some("2026-11-29T10:18:09Z")),
            "2026-11-29T10:18:09Z"
        );
        assert_eq!(to_seconds(None), "-");
    }

    #[test]
    fn the_metrics_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miniscan.prom");
        write_atomically(&path, "a 1\n").unwrap();
        write_atomically(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
