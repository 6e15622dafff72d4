//! What a pipeline reports, and to whom: the caller decides.
//!
//! The stages count their items (see [`super::instrument`]) and hand the
//! counts to an [`Observer`] chosen by whoever builds the pipeline: the
//! service's metrics registry, or `()` (which drops everything) in tests.
//! The pipeline names no metric and no tracing back end itself; the stage
//! names are the caller's too (`Transform::name`, `Sink::name`, and the
//! `stage` arguments of the combinators).
//!
//! An observer is called once per burst or per batch, never per message, so
//! its methods may look series up by name without costing the hot path much.

use super::envelope::Settlement;

/// Receives a pipeline's counts. Cheap to clone: every stage keeps one.
pub trait Observer: Clone + Send + Sync + 'static {
    /// `n` items left `stage` with `outcome` (an [`super::Outcome`]'s string).
    fn count(&self, stage: &'static str, outcome: &'static str, n: u64);
    /// Time `stage` spent working, in seconds: per item (the mean over a
    /// burst) for per-item stages, per batch for batch stages and sinks.
    fn busy(&self, stage: &'static str, seconds: f64);
    /// A batch of `items` left the batching stage `stage`.
    fn batched(&self, stage: &'static str, items: usize);
    /// `n` messages entered the pipeline at a source (they are in flight
    /// until settled).
    fn received(&self, n: u64);
    /// `n` messages were settled as `settlement` (they are no longer in
    /// flight).
    fn settled(&self, settlement: Settlement, n: u64);
    /// Whether the last stage opens a span per batch it settles (with
    /// tracing on). A span costs even when no subscriber records it, so
    /// the default is not to.
    fn spans(&self) -> bool {
        false
    }
}

/// Observes nothing: for tests and benches that measure the bare pipeline.
impl Observer for () {
    fn count(&self, _: &'static str, _: &'static str, _: u64) {}
    fn busy(&self, _: &'static str, _: f64) {}
    fn batched(&self, _: &'static str, _: usize) {}
    fn received(&self, _: u64) {}
    fn settled(&self, _: Settlement, _: u64) {}
}
