//! Ack: the last stage. Acks every message whose effect is committed (stored,
//! superseded, stale, or dead-lettered) and nacks those the write stage gave
//! up on during shutdown, so that Pub/Sub delivers them again.
//!
//! The settling itself is generic ([`crate::pipeline::ack`]); this module holds
//! the Pub/Sub ack handle.
//!
//! Metrics: `miniscan_messages_total{stage="ack",outcome="ack"|"nack"}`,
//! `miniscan_acks_total{kind}`, and `miniscan_inflight_messages` falls.

use crate::pipeline::Acknowledge;
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

    fn trace_context(&self) -> Option<&SpanContext> {
        self.trace.as_deref()
    }
}
