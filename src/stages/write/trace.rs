//! The write stage's spans, with tracing on ([`crate::traces`]).
//!
//! One `write` span per batch: `rows` (messages in the batch), `partitions`,
//! and once written `stored`, `superseded`, `stale`, `dead_letters`,
//! `nacked` and `outcome` (`committed`, or `gave_up` when some were nacked).
//! It links to the trace context each message was published in, at most
//! [`crate::traces::MAX_LINKS_PER_SPAN`], sampled ones first; each
//! dead-lettered message adds a `dead_letter` event with its `message_id` and
//! `reason`. Each commit attempt is a child `commit` span (`attempt`, `rows`,
//! `outcome`, `sqlstate` on failure), opened by the store's retry policy.
//!
//! With tracing off, [`batch_span`] is `Span::none()` and nothing here looks
//! at the messages; with it on, neither for a batch span the sampler drops.
//!
//! Public for `benches/pipeline.rs`, which measures this cost.

use super::Written;
use crate::pipeline::{Acknowledge, Envelope};
use crate::stages::{Reason, Record};
use crate::traces::{self, MessageContext};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt as _};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The batch's `write` span, linked to its messages' contexts; `Span::none()`
/// with tracing off.
pub fn batch_span<A: Acknowledge + MessageContext>(batch: &[Envelope<Record, A>]) -> Span {
    if !traces::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!("write", rows = batch.len());
    if !sampled(&span) {
        return span;
    }
    let links = traces::pick_links(batch.iter().filter_map(|e| e.ack.trace_context()));
    span.set_attribute("links", links.len() as i64);
    for cx in links {
        span.add_link(cx);
    }
    span
}

/// Whether the span is exported: at 1% sampling most batch spans are not, and
/// then their links, counts and events are not worth computing.
fn sampled(span: &Span) -> bool {
    span.context().span().span_context().is_sampled()
}

/// Records how many partitions the batch was committed in.
pub fn partitions(parts: usize) {
    if traces::enabled() {
        Span::current().set_attribute("partitions", parts as i64);
    }
}

/// Records each message's verdict on the batch span.
pub fn written<A: Acknowledge + MessageContext>(
    span: &Span,
    batch: &[Envelope<Record, A>],
    written: &[Written],
) {
    if span.is_none() || !sampled(span) {
        return;
    }
    let mut counts = [0i64; 5];
    for (env, w) in batch.iter().zip(written) {
        counts[*w as usize] += 1;
        if *w == Written::DeadLetter {
            dead_letter(span, env);
        }
    }
    let [stored, superseded, stale, dead, nacked] = counts;
    for (key, n) in [
        ("stored", stored),
        ("superseded", superseded),
        ("stale", stale),
        ("dead_letters", dead),
        ("nacked", nacked),
    ] {
        span.set_attribute(key, n);
    }
    if nacked > 0 {
        span.set_attribute("outcome", "gave_up");
        span.set_status(Status::error("some messages were given up and nacked"));
    } else {
        span.set_attribute("outcome", "committed");
    }
}

/// A `dead_letter` event for one message, with its trace id if it had one.
fn dead_letter<A: Acknowledge + MessageContext>(span: &Span, env: &Envelope<Record, A>) {
    let (message_id, reason) = match &env.payload {
        Record::Dead(d) => (d.message_id.clone(), d.reason),
        Record::Scan(s) => (s.order.message_id.to_string(), Reason::RejectedByDatabase),
        Record::Stale => return,
    };
    let mut attributes = vec![
        KeyValue::new("message_id", message_id),
        KeyValue::new("reason", reason.as_str()),
    ];
    if let Some(cx) = env.ack.trace_context() {
        attributes.push(KeyValue::new("message.trace_id", cx.trace_id().to_string()));
    }
    span.add_event("dead_letter", attributes);
}
