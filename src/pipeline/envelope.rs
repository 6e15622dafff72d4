//! The unit that flows through a pipeline: a payload and its ack handle.

use super::outcome::outcome_enum;

/// Something that settles one delivered message with its broker.
///
/// Implementations must be cheap and must not block: the ack stage calls them
/// for every message of a batch in a row.
///
/// A handle may carry more about its message than how to settle it (the
/// Pub/Sub handle carries the message's trace context): the pipeline passes
/// it through untouched, so only the stage that asks for it, through the
/// concrete type's own traits, needs to know.
pub trait Acknowledge: Send + 'static {
    /// The message's effect is durable; the broker may forget it.
    fn ack(self);
    /// The message was not handled; the broker should deliver it again.
    fn nack(self);
}

/// A payload travelling together with the handle that acknowledges it.
///
/// Stages transform the payload and never touch the handle, so a message can
/// only be settled by the last stage, after its effect is committed.
#[derive(Debug)]
pub struct Envelope<T, A> {
    /// What the stages work on.
    pub payload: T,
    /// How the message is settled once the pipeline is done with it.
    pub ack: A,
}

impl<T, A> Envelope<T, A> {
    /// Wraps a payload with its ack handle.
    pub fn new(payload: T, ack: A) -> Self {
        Self { payload, ack }
    }

    /// Replaces the payload, keeping the ack handle.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U, A> {
        Envelope {
            payload: f(self.payload),
            ack: self.ack,
        }
    }
}

outcome_enum! {
    /// How the last stage must settle a message. Also the ack stage's outcome
    /// (and what [`super::Observer::settled`] is told).
    pub enum Settlement {
        /// Its effect is committed (or it is proven redundant): ack it.
        Ack => "ack",
        /// It was not handled (for example, shut down while the database was
        /// unreachable): nack it so that it is delivered again.
        Nack => "nack",
    }
}

/// A sink's verdict on one message: how to settle it, and the outcome it is
/// counted under.
pub trait Settle {
    /// The sink's outcomes.
    type Outcome: super::Outcome;
    /// Ack or nack.
    fn settlement(&self) -> Settlement;
    /// The outcome this message is counted under at the sink's stage.
    fn outcome(&self) -> Self::Outcome;
}

/// An ack handle that does nothing, for in-memory sources in tests and benches.
impl Acknowledge for () {
    fn ack(self) {}
    fn nack(self) {}
}
