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

/// Settles one Pub/Sub message. Dropping it unsettled nacks the message.
#[derive(Debug)]
pub struct PubsubAck(pub Handler);

impl Acknowledge for PubsubAck {
    fn ack(self) {
        self.0.ack()
    }

    fn nack(self) {
        self.0.nack()
    }
}
