//! `--pooler` of the write bench: the pooler-safe write path (`copy_upsert`,
//! `sql::commit`) against the session-scoped path it replaced, with and
//! without the upsert's `RETURNING`.

use super::{Conn, Measured, Options, Strategy, Variant};
use crate::support::{self, Postgres};
use bytes::Bytes;
use mini_scan::stages::Scan;
use mini_scan::store::sql;
use std::fmt::Write as _;
use tokio_postgres::CopyInSink;

/// The staging table as the session-scoped path made it: once per connection.
pub(crate) const SESSION_STAGE_TABLE: &str = "
    CREATE TEMPORARY TABLE IF NOT EXISTS scan_stage (
        ip inet NOT NULL, port integer NOT NULL, service text NOT NULL,
        last_scanned timestamptz NOT NULL, response text NOT NULL, response_raw bytea,
        published_at timestamptz NOT NULL, message_id text COLLATE \"C\" NOT NULL
    ) ON COMMIT DELETE ROWS";

/// The upsert without `RETURNING`.
fn upsert_count() -> &'static str {
    let upsert = sql::UPSERT.trim_end();
    upsert
        .strip_suffix("RETURNING message_id")
        .unwrap_or(upsert)
}

/// The session-scoped write: the connection's temporary table (made before
/// the clock), the COPY and the upsert as cached named statements.
pub(crate) async fn session_commit(
    strategy: Strategy,
    client: &mut Conn,
    rows: &[&Scan],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let copy = tx.prepare_cached(sql::COPY).await?;
    let sink: CopyInSink<Bytes> = tx.copy_in(&copy).await?;
    sql::copy_rows(sink, rows).await?;
    if strategy == Strategy::Session {
        let upsert = tx.prepare_cached(sql::UPSERT).await?;
        let returned = tx.query(&upsert, &[]).await?;
        sql::changed_rows(rows, &returned)?;
    } else {
        let upsert = tx.prepare_cached(upsert_count()).await?;
        tx.execute(&upsert, &[]).await?;
    }
    tx.commit().await
}

/// `--pooler`: the pooler-safe write path (`copy_upsert`) against the
/// session-scoped one, with and without `RETURNING`, at every batch size,
/// `repeat` rounds interleaved (the order reversed every other round).
pub(crate) async fn run(
    o: &Options,
    pg: &Postgres,
    rows: &[Scan],
    version: &str,
) -> anyhow::Result<()> {
    let mut strategies = [Strategy::Ours, Strategy::Session, Strategy::SessionCount];
    let mut all: Vec<Measured> = Vec::new();
    for round in 0..o.repeat {
        eprintln!(
            " pooler-safe vs session-scoped, round {} of {}",
            round + 1,
            o.repeat
        );
        for &batch in &o.batches {
            for s in strategies {
                all.push(super::run(pg, rows, s, batch, Variant::default(), "baseline").await?);
            }
        }
        strategies.reverse();
    }
    let mut r = String::new();
    let _ = writeln!(
        r,
        "## Pooler-safe against session-scoped write path: {} rows over {} keys, PostgreSQL {version}\n\n\
         Machine: {}. Median of {} interleaved rounds; × pooler-safe is the ratio of the medians.\n\n\
         | strategy | batch | rows/s | min – max | × pooler-safe | PostgreSQL cores | bench process cores |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        o.rows,
        o.keys,
        support::machine(),
        o.repeat
    );
    let median = |s: Strategy, batch: usize, f: &dyn Fn(&Measured) -> f64| {
        let mut v: Vec<f64> = all
            .iter()
            .filter(|m| m.strategy == s && m.batch == batch)
            .map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    for &batch in &o.batches {
        let ours = median(Strategy::Ours, batch, &Measured::rate).1;
        for s in [Strategy::Ours, Strategy::Session, Strategy::SessionCount] {
            let (lo, mid, hi) = median(s, batch, &Measured::rate);
            let server = median(s, batch, &|m| m.server_cpu / m.secs).1;
            let client = median(s, batch, &|m| m.client_cpu / m.secs).1;
            let _ = writeln!(
                r,
                "| `{}` | {batch} | {mid:.0} | {lo:.0} – {hi:.0} | {:.3} | {server:.2} | {client:.2} |",
                s.id(),
                mid / ours
            );
        }
    }
    let _ = writeln!(r, "\nTook {:.0} s.", total(all.iter()));
    println!("{r}");
    std::fs::write(support::out_dir().join("write-pooler.md"), &r)?;
    Ok(())
}

fn total<'a>(all: impl Iterator<Item = &'a Measured>) -> f64 {
    all.map(|m| m.secs).sum()
}
