//! The values that flow through the stages and into the store: a message as
//! delivered ([`Received`]), a valid observation ([`Scan`], keyed by
//! [`ScanKey`] and ranked by [`Order`]), a dead letter with its [`Reason`],
//! and what decode hands on ([`Record`]).
//!
//! A layer of its own, below both the stages and the store: the stages make
//! these values and the store writes them, so neither has to import the
//! other's internals (it imports neither).

mod cached;
#[cfg(test)]
pub(crate) mod fixtures;
mod reason;

pub use cached::CachedEntry;
pub(crate) use cached::{OrderCell, read};
pub use reason::Reason;

use bytes::Bytes;
use compact_str::CompactString;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One message as the source delivers it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The exact message data.
    pub data: Bytes,
    /// The broker's id for the message (unique per topic).
    pub message_id: String,
    /// When the broker accepted the message, in microseconds since the epoch.
    pub published_micros: i64,
}

/// The identity of a scanned service: one row of `scan_results`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScanKey {
    /// The address, as PostgreSQL's `inet` would hold it (two spellings of
    /// one address parse to the same value).
    pub ip: IpAddr,
    /// The port, 0..=65535.
    pub port: u16,
    /// The service name, non-empty. Inline up to 24 bytes (service names are
    /// short), so decoding a key does not allocate for it.
    pub service: CompactString,
}

/// The total order in which observations of one key supersede each other.
///
/// The scan's own timestamp decides; on a tie the later Pub/Sub publish time
/// wins, then the bytewise greater message id. All three are fixed when the
/// message is published, so every replica, delivery order and duplication
/// agrees on the winner. PostgreSQL applies the same rule: the upsert compares
/// `(last_scanned, published_at, message_id COLLATE "C")` as a row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order {
    /// The scan's timestamp, in seconds since the epoch.
    pub timestamp: i64,
    /// The publish time, in microseconds since the epoch.
    pub published_micros: i64,
    /// The message id. Inline up to 24 bytes (Pub/Sub's ids are short decimal
    /// strings; longer ones go to the heap): the dedup cache clones the
    /// committed `Order` on every hit, which then does not allocate.
    pub message_id: CompactString,
}

/// A valid observation, ready to be written.
#[derive(Clone, Debug)]
pub struct Scan {
    /// Which row.
    pub key: ScanKey,
    /// Where it stands among the key's observations.
    pub order: Order,
    /// The response as text (lossy where the bytes are not clean UTF-8).
    pub response: String,
    /// The exact bytes, where they differ from `response`.
    pub response_raw: Option<Vec<u8>>,
    /// The original message data, kept to dead-letter it should the database
    /// reject the row.
    pub payload: Bytes,
    /// The dedup cache's entry for the key, if the dedup stage's lookup found
    /// one: the write stage learns the committed order through it.
    pub cached: Option<CachedEntry>,
}

/// A message that cannot be stored, with why.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The broker's message id (the dead letter's primary key).
    pub message_id: String,
    /// Why (stored as its `as_str` code).
    pub reason: Reason,
    /// A human-readable explanation.
    pub detail: String,
    /// The exact message data.
    pub payload: Bytes,
    /// The publish time, in microseconds since the epoch.
    pub published_micros: i64,
}

/// What flows from decode to the write stage.
#[derive(Clone, Debug)]
pub enum Record {
    /// A valid observation to write.
    Scan(Scan),
    /// A valid observation that the dedup cache proves is not newer than what
    /// is already committed: acked without a write.
    Stale,
    /// A message to record as a dead letter.
    Dead(DeadLetter),
}

/// Converts microseconds since the epoch to a `SystemTime`.
pub fn micros_to_time(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

/// Converts seconds since the epoch to a `SystemTime`.
pub fn secs_to_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The first and last second PostgreSQL's `timestamptz` and every client can
/// agree on without surprises: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
/// Decode accepts a scan's timestamp only in this range.
pub const MIN_TIMESTAMP: i64 = -62_135_596_800;
/// See [`MIN_TIMESTAMP`].
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;
