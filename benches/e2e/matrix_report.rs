//! The `--matrix` report: the freshness-lag quantiles read from an
//! ingester's `/metrics`, and the markdown tables.

use super::{Consumer, Item, Options, Row};
use crate::support;
use std::fmt::Write as _;

/// The cumulative buckets `(le, count)` of the publish-time freshness lag.
pub(super) fn lag_buckets(page: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = page
        .lines()
        .filter(|l| l.starts_with("miniscan_freshness_lag_seconds_bucket{"))
        .filter(|l| l.contains("reference=\"publish\""))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside a
/// bucket as Prometheus's `histogram_quantile` does.
pub(super) fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let width = count - prev.1;
            let into = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * into;
        }
        prev = (le, count);
    }
    prev.0
}

/// The markdown tables: every phase, then each item's median over rounds.
pub(super) fn report(o: &Options, items: &[Item], rounds: u32, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Interleaved consumers: {} messages over {} keys per phase, {rounds} rounds\n\n\
         Machine: {}. One emulator and one PostgreSQL for the whole run; each phase its own topic, \
         subscription and database. {}\n",
        o.messages,
        o.keys,
        support::machine(),
        match o.feed_rate {
            Some(r) => format!("Published while ingesting, at {r} msg/s."),
            None if o.replay => "Backlog published before each phase and drained once; the \
                                 figures are its second delivery (`--replay`: the subscription \
                                 seeked back to a snapshot), every message one the table holds, \
                                 except the last columns: the first delivery's."
                .into(),
            None => "Backlog published before each phase.".into(),
        }
    );
    let best_null = |round: u32| {
        rows.iter()
            .filter(|r| r.round == round && is_null(items, &r.label))
            .map(|r| r.rate)
            .fold(f64::NAN, f64::max)
    };
    let (first_head, first_rule) = match o.replay {
        true => (" 1st delivery: CPU s / 1k msg | 1st: stale |", "---:|---:|"),
        false => ("", ""),
    };
    let _ = writeln!(
        s,
        "| round | consumer | msg/s | × best null | CPU s / 1k msg | peak RSS MB | PostgreSQL cores | emulator cores | stale (cache) | lag p50 s | lag p99 s | done after publisher s | not acked then |{first_head}\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{first_rule}"
    );
    for r in rows {
        let (p50, p99, after, behind) = r.live.map_or(Default::default(), |l| {
            (
                format!("{:.2}", l.p50),
                format!("{:.2}", l.p99),
                format!("{:.1}", l.after),
                l.behind.to_string(),
            )
        });
        let share = |f: Option<f64>| f.map_or(String::new(), |f| format!("{:.1}%", f * 100.0));
        let stale = share(r.stale);
        let first = r.first.map_or(String::new(), |(cpu, stale)| {
            format!(" {cpu:.4} | {} |", share(stale))
        });
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.4} | {:.1} | {:.2} | {:.2} | {stale} | {p50} | {p99} | {after} | {behind} |{first}",
            r.round,
            r.label,
            r.rate,
            r.rate / best_null(r.round),
            r.cpu_per_1k,
            r.peak_rss_mb,
            r.pg_cores,
            r.emulator_cores,
        );
    }
    let (first_head, first_rule) = match o.replay {
        true => (" 1st delivery: median CPU s / 1k msg |", "---:|"),
        false => ("", ""),
    };
    let _ = writeln!(
        s,
        "\n| consumer | settings | median msg/s | min – max | median × best null | median CPU s / 1k msg | min – max |{first_head}\n\
         |---|---|---:|---:|---:|---:|---:|{first_rule}"
    );
    for item in items {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.label == item.label).collect();
        let rate = stats(mine.iter().map(|r| r.rate));
        let ratio = stats(mine.iter().map(|r| r.rate / best_null(r.round)));
        let cpu = stats(mine.iter().map(|r| r.cpu_per_1k));
        let first = match o.replay {
            true => format!(
                " {:.4} |",
                stats(mine.iter().filter_map(|r| r.first).map(|f| f.0)).1
            ),
            false => String::new(),
        };
        let _ = writeln!(
            s,
            "| {} | {} streams × {} outstanding | {:.0} | {:.0} – {:.0} | {:.2} | {:.4} | {:.4} – {:.4} |{first}",
            item.label,
            item.streams,
            item.outstanding.map_or("default".into(), |n| n.to_string()),
            rate.1,
            rate.0,
            rate.2,
            ratio.1,
            cpu.1,
            cpu.0,
            cpu.2,
        );
    }
    s
}

fn is_null(items: &[Item], label: &str) -> bool {
    items
        .iter()
        .any(|i| i.label == label && matches!(i.consumer, Consumer::Null))
}

/// Minimum, median (the mean of the middle two of an even count), maximum.
fn stats(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}
