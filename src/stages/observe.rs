//! The ingest pipeline's [`Observer`]: the generic pipeline's counts, as the
//! service's metrics (and its `ack` spans, with tracing on).
//!
//! Metrics: `miniscan_messages_total{stage,outcome}`,
//! `miniscan_stage_duration_seconds{stage}`, `miniscan_batch_rows`,
//! `miniscan_inflight_messages`, `miniscan_acks_total{kind}`.

use crate::pipeline::{Observer, Settlement};
use crate::telemetry::names;

/// Reports to the global metrics registry (a no-op until one is installed,
/// as the `metrics` crate does). Called once per burst or batch, so looking
/// the series up by name each time costs little.
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics;

impl Observer for Metrics {
    fn count(&self, stage: &'static str, outcome: &'static str, n: u64) {
        names::messages(stage, outcome).increment(n);
    }

    fn busy(&self, stage: &'static str, seconds: f64) {
        names::stage_duration(stage).record(seconds);
    }

    fn batched(&self, _stage: &'static str, items: usize) {
        names::batch_rows().record(items as f64);
    }

    fn received(&self, n: u64) {
        names::inflight_messages().increment(n as f64);
    }

    fn settled(&self, settlement: Settlement, n: u64) {
        names::acks(settlement.as_str()).increment(n);
        names::inflight_messages().decrement(n as f64);
    }

    fn spans(&self) -> bool {
        crate::traces::enabled()
    }
}
