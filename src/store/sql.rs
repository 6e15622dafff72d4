//! The store's SQL: binary COPY into a temporary staging table, then one
//! newest-wins upsert that returns the rows it changed; dead letters in the
//! same transaction.
//!
//! Public for the benches (`benches/write.rs` compares it with other ways of
//! writing); the ingester and `dead-letters replay` reach it only through the
//! store's surface.
//!
//! Pooler-safe: behind a transaction-mode pooler (pgbouncer `pool_mode =
//! transaction`, Supavisor, Neon's pooler) each transaction may run on another
//! server connection, so nothing here outlives a transaction on the
//! connection it ran on. Every transaction creates the staging table if its
//! server connection lacks it, and no named prepared statement survives a
//! commit: the upsert and the dead letters are unnamed statements
//! (`query_typed`/`execute_typed`), and the COPY's statement (COPY needs one)
//! is closed before `COMMIT` is sent.

use crate::model::{DeadLetter, Scan, micros_to_time};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, SinkExt, pin_mut};
use postgres_types::Type;
use std::time::SystemTime;

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

/// The column types of a COPY of scans, in the order [`encode_rows`] writes them.
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

/// How much encoded COPY data goes to the connection at a time.
///
/// tokio-postgres's `BinaryCopyInWriter` hands the connection task 4 KiB at a
/// time through a one-slot channel, so a batch of 1,000 scans took ~40 task
/// hand-offs (each a wake-up, often across threads) and an allocation each.
/// Chunks this size make a batch one or two hand-offs and keep the encoded
/// copy of a large batch bounded (the batch itself is already in memory).
pub const COPY_CHUNK: usize = 256 * 1024;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Appends rows of `scans` to `buf` in PostgreSQL's binary COPY format, with
/// the columns of [`COPY`] (ip, port, service, last_scanned, response,
/// response_raw, published_at, message_id) typed as [`COPY_TYPES`] and each
/// field encoded by `postgres-protocol` as `postgres-types` would, until `buf`
/// holds [`COPY_CHUNK`] bytes or the scans run out. Returns how many scans it
/// appended (at least one, unless `scans` is empty).
///
/// The stream starts with [`COPY_HEADER`] and ends with [`COPY_TRAILER`].
pub fn encode_rows(scans: &[&Scan], buf: &mut BytesMut) -> usize {
    use postgres_protocol::types as wire;
    let mut n = 0;
    for s in scans {
        buf.put_i16(COPY_TYPES.len() as i16);
        field(buf, |b| {
            let bits = if s.key.ip.is_ipv4() { 32 } else { 128 };
            wire::inet_to_sql(s.key.ip, bits, b)
        });
        field(buf, |b| wire::int4_to_sql(i32::from(s.key.port), b));
        field(buf, |b| wire::text_to_sql(&s.key.service, b));
        field(buf, |b| {
            wire::timestamp_to_sql(pg_micros_of_secs(s.order.timestamp), b)
        });
        field(buf, |b| wire::text_to_sql(&s.response, b));
        match &s.response_raw {
            Some(raw) => field(buf, |b| wire::bytea_to_sql(raw, b)),
            None => buf.put_i32(-1),
        }
        field(buf, |b| {
            let micros = s.order.published_micros.saturating_sub(PG_EPOCH_MICROS);
            wire::timestamp_to_sql(micros, b)
        });
        field(buf, |b| wire::text_to_sql(&s.order.message_id, b));
        n += 1;
        if buf.len() >= COPY_CHUNK {
            break;
        }
    }
    n
}

/// The binary COPY header: signature, flags, no header extension.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer: a field count of -1.
pub const COPY_TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// Appends one field: its length, then what `encode` writes.
fn field(buf: &mut BytesMut, encode: impl FnOnce(&mut BytesMut)) {
    let at = buf.len();
    buf.put_i32(0);
    encode(buf);
    // A field over 2 GiB cannot come from a Pub/Sub message (at most 10 MB);
    // should one appear, -2 is a length the server rejects as the data's
    // fault (SQLSTATE 22P04), so the row is dead-lettered.
    let len = i32::try_from(buf.len() - at - 4).unwrap_or(-2);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A scan's timestamp, seconds since the Unix epoch (decode keeps it within
/// years 1 to 9999), as microseconds since PostgreSQL's epoch.
fn pg_micros_of_secs(secs: i64) -> i64 {
    secs.saturating_mul(1_000_000)
        .saturating_sub(PG_EPOCH_MICROS)
}

/// COPYs `scans` through `sink` (a `COPY ..` [`COPY`] `FROM STDIN` begun on
/// the transaction, or anything else that takes the bytes) in chunks of about
/// [`COPY_CHUNK`], then closes it, which for tokio-postgres's `CopyInSink`
/// finishes the COPY.
pub async fn copy_rows<S: Sink<Bytes>>(sink: S, scans: &[&Scan]) -> Result<(), S::Error> {
    pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + COPY_CHUNK / 4);
    buf.put_slice(COPY_HEADER);
    let mut sent = 0;
    loop {
        sent += encode_rows(&scans[sent..], &mut buf);
        if sent == scans.len() {
            break;
        }
        sink.send(buf.split().freeze()).await?;
    }
    buf.put_slice(COPY_TRAILER);
    sink.send(buf.freeze()).await?;
    sink.close().await
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
/// caller that upserts again in the same transaction (as
/// [`super::upsert_isolating`] does, under savepoints) empties it first with
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
    let sink: tokio_postgres::CopyInSink<Bytes> = tx.copy_in(&copy).await?;
    copy_rows(sink, scans).await
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
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::scan;
    use crate::model::secs_to_time;
    use crate::model::{MAX_TIMESTAMP, MIN_TIMESTAMP};
    use postgres_types::{IsNull, ToSql};

    /// The COPY stream `BinaryCopyInWriter` would send for `scans`: each
    /// field through `postgres-types`' `ToSql`, checked against its type.
    fn reference(scans: &[&Scan]) -> Vec<u8> {
        let mut buf = BytesMut::from(COPY_HEADER);
        for s in scans {
            let port = i32::from(s.key.port);
            let last_scanned = secs_to_time(s.order.timestamp);
            let published_at = micros_to_time(s.order.published_micros);
            let (service, id) = (s.key.service.as_str(), s.order.message_id.as_str());
            let values: [&(dyn ToSql + Sync); 8] = [
                &s.key.ip,
                &port,
                &service,
                &last_scanned,
                &s.response,
                &s.response_raw,
                &published_at,
                &id,
            ];
            buf.put_i16(8);
            for (value, ty) in values.into_iter().zip(&COPY_TYPES) {
                let at = buf.len();
                buf.put_i32(0);
                let len = match value.to_sql_checked(ty, &mut buf).unwrap() {
                    IsNull::Yes => -1,
                    IsNull::No => (buf.len() - at - 4) as i32,
                };
                buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        buf.put_slice(COPY_TRAILER);
        buf.to_vec()
    }

    /// The chunks [`copy_rows`] sends for `scans`.
    fn sent(scans: &[&Scan]) -> Vec<Bytes> {
        let mut chunks: Vec<Bytes> = Vec::new();
        futures::executor::block_on(copy_rows(&mut chunks, scans)).unwrap();
        chunks
    }

    fn edge_cases() -> Vec<Scan> {
        let mut v4 = scan(7, 1_700_000_000, "12345678901234567");
        v4.response_raw = Some(vec![0, 0xff, b'\\', b'\n']);
        v4.order.published_micros = 1_700_000_000_123_456;
        let mut v6 = scan(8, MIN_TIMESTAMP, "x");
        v6.key.ip = "2001:db8::1".parse().unwrap();
        v6.key.service = "a service name longer than 24 bytes, é".into();
        v6.order.published_micros = -1;
        v6.response = String::new();
        let mut last = scan(9, MAX_TIMESTAMP, "");
        last.response_raw = Some(Vec::new());
        vec![v4, v6, last, scan(10, 0, "epoch"), scan(11, -1, "before")]
    }

    #[test]
    fn rows_are_encoded_as_postgres_types_encodes_them() {
        let rows = edge_cases();
        let refs: Vec<&Scan> = rows.iter().collect();
        let chunks = sent(&refs);
        assert_eq!(chunks.len(), 1, "a small batch is one chunk");
        assert_eq!(chunks[0][..], reference(&refs)[..]);
        assert_eq!(sent(&[])[0][..], reference(&[])[..], "no rows");
    }

    #[test]
    fn a_large_batch_goes_out_in_chunks_of_about_copy_chunk() {
        let big = "r".repeat(COPY_CHUNK / 3);
        let rows: Vec<Scan> = (0..40)
            .map(|i| {
                let mut s = scan(i, 1_700_000_000 + i64::from(i), &format!("id{i}"));
                if i % 7 == 0 {
                    s.response = big.clone();
                }
                s
            })
            .chain(edge_cases())
            .collect();
        let refs: Vec<&Scan> = rows.iter().collect();
        let chunks = sent(&refs);
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= COPY_CHUNK, "an early chunk of {} bytes", c.len());
            assert!(
                c.len() < COPY_CHUNK + big.len() + 200,
                "a chunk of {} bytes",
                c.len()
            );
        }
        assert_eq!(chunks.concat(), reference(&refs));
    }
}
