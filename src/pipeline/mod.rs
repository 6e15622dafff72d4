//! The generic stage machinery. Nothing in here knows about scans, and
//! nothing in here imports anything else of this crate (a test in `lib.rs`
//! enforces it): metric names, stage names and tracing are the caller's,
//! handed in through an [`Observer`].
//!
//! A pipeline is a `futures::Stream` of [`Envelope`]s: a payload travelling
//! together with the handle that acknowledges it. Stages are composed with the
//! combinators of [`PipelineExt`], so that the top level reads like the diagram:
//!
//! ```text
//! source.source(..).transform(decode, ..).transform(dedup, ..)
//!     .batch(..).write(sink, n, ..).ack(..)
//! ```
//!
//! The rules every stage follows:
//!
//! * The ack handle travels with the data and only the last stage ([`ack`])
//!   settles it, as the sink decided ([`Settle`]).
//! * Every stage counts what goes in and out of it by `stage` and `outcome`,
//!   its outcomes a typed [`Outcome`] with one string form each, and reports
//!   the counts to the [`Observer`] its caller chose. Per-item stages count
//!   into a local tally that is flushed to the observer once per burst (when
//!   their input runs dry, or every [`instrument::FLUSH_EVERY`] items), so the
//!   observer is called per batch, not per message.
//! * Shutdown is explicit ([`shutdown`]): the source stops, every later stage
//!   drains what it holds, and the last ack ends the pipeline. Whatever asks
//!   for the shutdown (OS signals, a test) is the caller's.

pub mod ack;
pub mod backoff;
pub mod batch;
pub mod envelope;
pub mod instrument;
pub mod observe;
pub mod outcome;
pub mod shutdown;
pub mod sink;
pub mod transform;

pub use ack::{Ack, AckSummary};
pub use backoff::Backoff;
pub use envelope::{Acknowledge, Envelope, Settle, Settlement};
pub use instrument::Tally;
pub use observe::Observer;
pub use outcome::{BatchOutcome, Outcome, SourceOutcome};
pub use shutdown::Shutdown;
pub use sink::Sink;
pub use transform::Transform;

use futures::Stream;
use std::time::Duration;

/// The combinators that compose a pipeline out of stages.
pub trait PipelineExt<T, A>: Stream<Item = Envelope<T, A>> + Sized {
    /// Applies a per-item [`Transform`] to every payload, counting outcomes
    /// for `observer`.
    fn transform<X, M>(self, stage: X, observer: M) -> transform::TransformStream<Self, X, M>
    where
        X: Transform<In = T>,
        M: Observer,
    {
        transform::TransformStream::new(self, stage, observer)
    }

    /// Groups items into batches of at most `max_items`, emitting a partial
    /// batch once `max_wait` has passed since its first item; counted under
    /// `stage` for `observer`.
    fn batch<M: Observer>(
        self,
        stage: &'static str,
        max_items: usize,
        max_wait: Duration,
        observer: M,
    ) -> batch::BatchStream<Self, Envelope<T, A>, M> {
        batch::BatchStream::new(self, stage, max_items, max_wait, observer)
    }

    /// Counts items leaving a source under `stage` with the outcome
    /// `received`, and reports them to `observer` as in flight.
    fn source<M: Observer>(self, stage: &'static str, observer: M) -> instrument::Counted<Self, M> {
        instrument::Counted::new(self, stage, observer)
    }
}

impl<S, T, A> PipelineExt<T, A> for S where S: Stream<Item = Envelope<T, A>> {}

/// The combinators that apply to a stream of batches.
pub trait BatchPipelineExt<T, A>: Stream<Item = Vec<Envelope<T, A>>> + Sized {
    /// Hands each batch to `sink`, with at most `concurrency` batches in flight,
    /// and yields the settled envelopes in the order the batches arrived;
    /// counted for `observer`.
    fn write<K, M>(
        self,
        sink: K,
        concurrency: usize,
        observer: M,
    ) -> impl Stream<Item = Vec<Envelope<K::Out, A>>>
    where
        K: Sink<A, In = T>,
        A: Acknowledge,
        M: Observer,
    {
        sink::write(self, sink, concurrency, observer)
    }
}

impl<S, T, A> BatchPipelineExt<T, A> for S where S: Stream<Item = Vec<Envelope<T, A>>> {}

/// The last stage: settles every envelope as its payload says.
pub trait SettleExt<T, A>: Stream<Item = Vec<Envelope<T, A>>> + Sized
where
    T: Settle,
    A: Acknowledge,
{
    /// Acks or nacks every envelope, counted under `stage` for `observer`;
    /// the future ends when the stream does.
    fn ack<M: Observer>(self, stage: &'static str, observer: M) -> Ack<Self, M> {
        Ack::new(self, stage, observer)
    }
}

impl<S, T, A> SettleExt<T, A> for S
where
    S: Stream<Item = Vec<Envelope<T, A>>>,
    T: Settle,
    A: Acknowledge,
{
}
