//! The SQL of the write stage: binary COPY into a temporary staging table,
//! then one newest-wins upsert that returns the rows it changed; dead letters
//! in the same transaction.
//!
//! Pooler-safe: behind a transaction-mode pooler (pgbouncer `pool_mode =
//! transaction`, Supavisor, Neon's pooler) each transaction may run on another
//! server connection, so nothing here outlives a transaction on the
//! connection it ran on. Every transaction creates the staging table if its
//! server connection lacks it, and no named prepared statement survives a
//! commit: the upsert and the dead letters are unnamed statements
//! (`query_typed`/`execute_typed`), and the COPY's statement (COPY needs one)
//! is closed before `COMMIT` is sent.

use crate::stages::{DeadLetter, Scan, micros_to_time, secs_to_time};
use futures::pin_mut;
use postgres_types::Type;
use std::time::SystemTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

/// Run at the start of every transaction: the server connection (which a
/// pooler may hand to this transaction only) keeps the table once made, and
/// `ON COMMIT DELETE ROWS` empties it at every commit (a rollback discards its
/// rows), so the next transaction on that connection, ours or another
/// ingester's, finds it empty. `client_min_messages` hides the "already
/// exists, skipping" notice, for this transaction only. Cheaper than `ON
/// COMMIT DROP`, which would create and drop catalog rows every batch.
pub const CREATE_STAGE_TABLE: &str = "
    SET LOCAL client_min_messages = warning;
    CREATE TEMPORARY TABLE IF NOT EXISTS scan_stage (
        ip inet NOT NULL,
        port integer NOT NULL,
        service text NOT NULL,
        last_scanned timestamptz NOT NULL,
        response text NOT NULL,
        response_raw bytea,
        published_at timestamptz NOT NULL,
        message_id text COLLATE \"C\" NOT NULL
    ) ON COMMIT DELETE ROWS";

/// The staging table's COPY.
pub const COPY: &str = "COPY scan_stage (ip, port, service, last_scanned, response, response_raw, \
                    published_at, message_id) FROM STDIN (FORMAT binary)";

/// The column types of a COPY of scans, in the order [`copy_rows`] writes them.
pub const COPY_TYPES: [Type; 8] = [
    Type::INET,
    Type::INT4,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::BYTEA,
    Type::TIMESTAMPTZ,
    Type::TEXT,
];

/// Newest wins: a row is replaced only by a strictly newer
/// `(last_scanned, published_at, message_id)`, compared as a row (the message
/// id bytewise, by its "C" collation). The staged rows are already one per key
/// and sorted by key, and a sequential scan of the fresh temporary table
/// returns them in that order, so every writer locks keys in the same order.
///
/// `RETURNING message_id` names the staged rows that changed the table (a row
/// the `WHERE` keeps out returns nothing); message ids are unique among the
/// staged rows, so this attributes each change to one message.
pub const UPSERT: &str = "
    INSERT INTO scan_results AS t
        (ip, port, service, last_scanned, response, response_raw, published_at, message_id, updated_at)
    SELECT ip, port, service, last_scanned, response, response_raw, published_at, message_id, now()
    FROM scan_stage
    ON CONFLICT (ip, port, service) DO UPDATE SET
        last_scanned = EXCLUDED.last_scanned,
        response     = EXCLUDED.response,
        response_raw = EXCLUDED.response_raw,
        published_at = EXCLUDED.published_at,
        message_id   = EXCLUDED.message_id,
        updated_at   = EXCLUDED.updated_at
    WHERE (EXCLUDED.last_scanned, EXCLUDED.published_at, EXCLUDED.message_id)
        > (t.last_scanned, t.published_at, t.message_id)
    RETURNING message_id";

/// A redelivered dead letter is already recorded: keep the first.
const DEAD_LETTERS: &str = "
    INSERT INTO dead_letters (message_id, reason, detail, payload, published_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::timestamptz[])
    ON CONFLICT (message_id) DO NOTHING";

/// Writes `scans` as binary COPY rows with the columns (ip, port, service,
/// last_scanned, response, response_raw, published_at, message_id) typed as
/// [`COPY_TYPES`].
pub async fn copy_rows(
    mut writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    scans: &[&Scan],
) -> Result<(), tokio_postgres::Error> {
    for s in scans {
        let port = i32::from(s.key.port);
        let last_scanned = secs_to_time(s.order.timestamp);
        let published_at = micros_to_time(s.order.published_micros);
        let (service, message_id) = (s.key.service.as_str(), s.order.message_id.as_str());
        writer
            .as_mut()
            .write(&[
                &s.key.ip,
                &port,
                &service,
                &last_scanned,
                &s.response,
                &s.response_raw,
                &published_at,
                &message_id,
            ])
            .await?;
    }
    Ok(())
}

/// Writes `scans` (one per key, sorted by key) and `dead` in one transaction.
/// Returns, for each scan in order, whether its row changed `scan_results`.
pub async fn commit(
    client: &mut tokio_postgres::Client,
    scans: &[&Scan],
    dead: &[&DeadLetter],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut changed = Vec::new();
    if !scans.is_empty() {
        changed = upsert(&tx, scans).await?;
    }
    if !dead.is_empty() {
        insert_dead_letters(&tx, dead).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Upserts `scans` (one per key, sorted by key), newest wins, inside `tx`:
/// stages them in the temporary table and merges them with the upsert.
/// Returns, for each scan in order, whether its row changed `scan_results`.
///
/// The staged rows stay in the staging table until the transaction ends; a
/// caller that upserts again in the same transaction (`dead-letters replay`,
/// which isolates rejected rows under savepoints) empties it first with
/// [`CLEAR_STAGE_TABLE`].
pub async fn upsert(
    tx: &tokio_postgres::Transaction<'_>,
    scans: &[&Scan],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    tx.batch_execute(CREATE_STAGE_TABLE).await?;
    copy_in(tx, scans).await?;
    changed_rows(scans, &tx.query_typed(UPSERT, &[]).await?)
}

/// Empties the staging table within a transaction, so that a second
/// [`upsert`] in it merges only its own rows.
pub const CLEAR_STAGE_TABLE: &str = "DELETE FROM scan_stage";

/// COPYs `scans` into the staging table. COPY takes a prepared (named)
/// statement; it is dropped when this returns, which sends its `Close` ahead
/// of anything the transaction sends next, so it is closed on the server
/// connection that prepared it, before the commit.
async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    scans: &[&Scan],
) -> Result<(), tokio_postgres::Error> {
    let copy = tx.prepare(COPY).await?;
    let sink = tx.copy_in(&copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    copy_rows(writer.as_mut(), scans).await?;
    writer.finish().await?;
    Ok(())
}

/// Which of `scans` the upsert's `returned` message ids name.
pub fn changed_rows(
    scans: &[&Scan],
    returned: &[tokio_postgres::Row],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    // Each staged row returns at most once: all or none returned needs no lookup.
    if returned.len() == scans.len() || returned.is_empty() {
        return Ok(vec![!returned.is_empty(); scans.len()]);
    }
    let ids = returned
        .iter()
        .map(|row| row.try_get::<_, &str>(0))
        .collect::<Result<ahash::AHashSet<&str>, _>>()?;
    Ok(scans
        .iter()
        .map(|s| ids.contains(s.order.message_id.as_str()))
        .collect())
}

async fn insert_dead_letters(
    tx: &tokio_postgres::Transaction<'_>,
    dead: &[&DeadLetter],
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<&str> = dead.iter().map(|d| d.message_id.as_str()).collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason).collect();
    let details: Vec<&str> = dead.iter().map(|d| d.detail.as_str()).collect();
    let payloads: Vec<&[u8]> = dead.iter().map(|d| &d.payload[..]).collect();
    let published: Vec<SystemTime> = dead
        .iter()
        .map(|d| micros_to_time(d.published_micros))
        .collect();
    tx.execute_typed(
        DEAD_LETTERS,
        &[
            (&ids, Type::TEXT_ARRAY),
            (&reasons, Type::TEXT_ARRAY),
            (&details, Type::TEXT_ARRAY),
            (&payloads, Type::BYTEA_ARRAY),
            (&published, Type::TIMESTAMPTZ_ARRAY),
        ],
    )
    .await?;
    Ok(())
}
