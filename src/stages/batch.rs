//! Batch: groups records for the write stage with `tokio_stream`'s
//! `chunks_timeout` (see [`crate::pipeline::batch`]).
//!
//! In: records. Out: batches of at most `max_rows` records; a partial batch
//! leaves `max_wait` after its first record arrived, and the last partial batch
//! leaves when the source stops (graceful shutdown). Acks are untouched.
//!
//! Metrics: `miniscan_messages_total{stage="batch",outcome="out"}`,
//! `miniscan_batch_rows`.

use std::time::Duration;

/// Batch settings.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Most records in one batch.
    pub max_rows: usize,
    /// Longest a record waits for its batch to fill.
    pub max_wait: Duration,
}

/// The stage label (kept for callers that predate
/// [`crate::telemetry::names::stage`]).
pub const STAGE: &str = crate::telemetry::names::stage::BATCH;
