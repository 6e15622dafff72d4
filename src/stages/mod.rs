//! The concrete stages of the ingest pipeline, one module each. The types
//! that flow between them are [`crate::model`]'s.
//!
//! ```text
//! source ─▶ decode ─▶ dedup ─▶ batch ─▶ write ─▶ ack
//! Received  Record    Record   Vec<..>  Written  (settled)
//! ```
//!
//! Each stage declares the metric series it emits beside the code that emits
//! them (its `series()`); [`series::all`] collects them for the ingester.
//! [`Metrics`] is the generic pipeline's [`crate::pipeline::Observer`],
//! reporting to the metrics registry.
//!
//! The write stage commits through the [`store`](crate::store), which
//! `dead-letters replay` shares. [`Reason`] ([`crate::model`]) is the one
//! list of why a message is a dead letter, for decode and the store alike.

pub mod ack;
pub mod batch;
pub mod decode;
pub mod dedup;
mod observe;
pub mod series;
pub mod source;
pub mod write;

pub use observe::Metrics;
// The values that flow between the stages live a layer below, in
// `crate::model`, so that the store can use them too; here for the stages'
// own paths (`super::Scan`) and their users'.
#[cfg(test)]
pub(crate) use crate::model::fixtures;
pub use crate::model::{
    DeadLetter, Order, Reason, Received, Record, Scan, ScanKey, micros_to_time, now_micros,
    secs_to_time,
};
