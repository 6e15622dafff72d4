//! Batch: groups records for the write stage with `tokio_stream`'s
//! `chunks_timeout` (see [`crate::pipeline::batch`]).
//!
//! In: records. Out: batches of at most `--batch-max-rows` records; a partial
//! batch leaves `--batch-max-wait-ms` after its first record arrived, and the
//! last partial batch leaves when the source stops (graceful shutdown). Acks
//! are untouched.
//!
//! Metrics: `miniscan_messages_total{stage="batch",outcome="out"}`,
//! `miniscan_batch_rows` (reported through [`super::Metrics`]).

use crate::pipeline::BatchOutcome;
use crate::telemetry::names::stage;
use crate::telemetry::series::Series;

/// The series this stage emits, zero-initialised at start-up.
pub(crate) fn series() -> Vec<Series> {
    super::series::messages::<BatchOutcome>(stage::BATCH)
}
