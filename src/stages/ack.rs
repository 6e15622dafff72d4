//! Ack: the last stage. Acks every message whose effect is committed (stored,
//! superseded, stale, or dead-lettered) and nacks those the write stage gave
//! up on during shutdown, so that Pub/Sub delivers them again.
//!
//! The settling itself is generic ([`crate::pipeline::ack`]); this module holds
//! the Pub/Sub ack handle and the stage's series.
//!
//! Metrics: `miniscan_messages_total{stage="ack",outcome="ack"|"nack"}`,
//! `miniscan_acks_total{kind}`, and `miniscan_inflight_messages` falls
//! (reported through [`super::Metrics`]).

use crate::pipeline::{Acknowledge, Settlement};
use crate::telemetry::names::{self, label, stage};
use crate::telemetry::series::Series;
use crate::traces::MessageContext;
use google_cloud_pubsub::subscriber::handler::Handler;
use opentelemetry::trace::SpanContext;

/// Settles one Pub/Sub message. Dropping it unsettled nacks the message.
///
/// It also carries the message's trace context, when tracing is on and the
/// publisher sent one: the handle travels untouched from the source to the
/// last stage, so the write stage can link its batch span to the messages'
/// traces without any stage in between knowing. Boxed, so that it costs one
/// word per message when tracing is off.
#[derive(Debug)]
pub struct PubsubAck {
    handler: Handler,
    trace: Option<Box<SpanContext>>,
}

impl PubsubAck {
    /// The handle for a message, with its trace context if any.
    pub fn new(handler: Handler, trace: Option<Box<SpanContext>>) -> Self {
        Self { handler, trace }
    }
}

impl Acknowledge for PubsubAck {
    fn ack(self) {
        self.handler.ack()
    }

    fn nack(self) {
        self.handler.nack()
    }
}

impl MessageContext for PubsubAck {
    fn trace_context(&self) -> Option<&SpanContext> {
        self.trace.as_deref()
    }
}

/// The series this stage emits, zero-initialised at start-up.
pub(crate) fn series() -> Vec<Series> {
    let mut all = super::series::messages::<Settlement>(stage::ACK);
    all.extend(
        Settlement::ALL
            .iter()
            .map(|s| Series::counter(names::ACKS_TOTAL, &[(label::KIND, s.as_str())])),
    );
    all
}
