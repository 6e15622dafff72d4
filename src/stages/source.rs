//! Source: Pub/Sub streaming pull.
//!
//! Out: one [`Received`] per delivered message, in an envelope with its
//! [`PubsubAck`]. Several streaming-pull streams run side by side (the emulator
//! and the service both cap what one stream delivers), merged into one.
//! Nothing is acked here. With tracing on, each message's trace context is
//! read from its attributes (`googclient_traceparent`, else `traceparent`)
//! into its ack handle ([`PubsubAck`]); with it off, attributes are not read.
//!
//! Memory is bounded by flow control: each stream holds at most
//! `max_outstanding_messages` / `max_outstanding_bytes` unacked messages, so
//! when a later stage stalls (the database is down) the server stops sending
//! and the backlog stays in Pub/Sub.
//!
//! A stream that fails permanently (for example, the subscription does not
//! exist yet) is reopened with capped exponential backoff; `/readyz` reports
//! the subscription down until messages flow again. Transient failures are
//! retried inside the client.
//!
//! Every stream keeps one shutdown token, replaced when the stream is
//! reopened: the tokens held are bounded by the number of streams, however
//! long an outage keeps reopening them ([`PubsubSource::held_tokens`]). A
//! replaced token is kept only until its stream's acks are flushed.
//!
//! Metrics: `miniscan_messages_total{stage="source",outcome="received"}`,
//! `miniscan_inflight_messages` (both through [`super::Metrics`]),
//! `miniscan_errors_total{stage="source",kind="stream"}`.

use super::Received;
use super::ack::PubsubAck;
use crate::pipeline::{Backoff, Envelope, Shutdown, SourceOutcome};
use crate::telemetry::Health;
use crate::telemetry::names::{self, error_kind, stage};
use crate::telemetry::series::Series;
use futures::{FutureExt as _, Stream, StreamExt};
use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownToken};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Source settings.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The subscription's full name.
    pub subscription: String,
    /// Streaming-pull streams to run.
    pub streams: usize,
    /// Unacked messages per stream before the server pauses.
    pub max_outstanding_messages: i64,
    /// Unacked bytes per stream before the server pauses.
    pub max_outstanding_bytes: i64,
    /// First delay before reopening a failed stream.
    pub reopen_initial: Duration,
    /// Longest delay before reopening a failed stream.
    pub reopen_max: Duration,
}

/// The Pub/Sub source.
#[derive(Clone)]
pub struct PubsubSource {
    client: Subscriber,
    /// Probes the subscription after a stream failed, so that `/readyz`
    /// recovers as soon as it exists again, even before a message arrives.
    admin: SubscriptionAdmin,
    config: SourceConfig,
    health: Health,
    /// The streams' shutdown tokens, so that shutdown can wait for their acks
    /// to be sent.
    tokens: Arc<Mutex<Tokens>>,
}

/// The shutdown tokens of a source's streams: one per stream, replaced when
/// the stream is reopened, and the replaced ones whose stream may still be
/// flushing acks (dropped once it is done).
#[derive(Debug, Default)]
struct Tokens {
    live: Vec<Option<ShutdownToken>>,
    retired: Vec<ShutdownToken>,
}

impl Tokens {
    /// Sets stream `index`'s token, retiring the one it replaces.
    fn replace(&mut self, index: usize, token: ShutdownToken) {
        if self.live.len() <= index {
            self.live.resize(index + 1, None);
        }
        if let Some(old) = self.live[index].replace(token) {
            self.retired.push(old);
        }
        self.prune();
    }

    /// Drops retired tokens whose stream has finished shutting down. Their
    /// stream is gone (a dropped stream cancels its token), so polling the
    /// shutdown once only asks whether its last acks are sent.
    fn prune(&mut self) {
        self.retired
            .retain(|t| t.shutdown().now_or_never().is_none());
    }

    fn count(&self) -> usize {
        self.live.iter().flatten().count() + self.retired.len()
    }

    fn take(&mut self) -> Vec<ShutdownToken> {
        let mut all: Vec<ShutdownToken> = self.live.drain(..).flatten().collect();
        all.append(&mut self.retired);
        all
    }
}

impl std::fmt::Debug for PubsubSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubsubSource")
            .field("config", &self.config)
            .finish()
    }
}

/// Converts a Pub/Sub message.
pub fn received(m: Message) -> Received {
    let published_micros = m
        .publish_time
        .map(|t| t.seconds() * 1_000_000 + i64::from(t.nanos()) / 1_000)
        .unwrap_or_else(super::now_micros);
    Received {
        data: m.data,
        message_id: m.message_id,
        published_micros,
    }
}

impl PubsubSource {
    /// A source pulling `config.subscription` through `client`.
    pub fn new(
        client: Subscriber,
        admin: SubscriptionAdmin,
        config: SourceConfig,
        health: Health,
    ) -> Self {
        Self {
            client,
            admin,
            config,
            health,
            tokens: Arc::default(),
        }
    }

    /// The merged message stream; it ends when `shutdown` stops the source.
    pub fn stream(
        &self,
        shutdown: Shutdown,
    ) -> impl Stream<Item = Envelope<Received, PubsubAck>> + Send + 'static {
        let streams = (0..self.config.streams.max(1)).map(|i| self.clone().one_stream(i).boxed());
        futures::stream::select_all(streams).take_until(async move { shutdown.stopped().await })
    }

    /// How many streams' shutdown tokens the source holds: at most one per
    /// stream, plus those of replaced streams still flushing their acks. For
    /// tests and operators: it must not grow with the number of reopens.
    pub fn held_tokens(&self) -> usize {
        match self.tokens.lock() {
            Ok(mut tokens) => {
                tokens.prune();
                tokens.count()
            }
            Err(_) => 0,
        }
    }

    /// Opens stream `index` (again), replacing its token.
    fn open(&self, index: usize) -> MessageStream {
        let stream = self
            .client
            .subscribe(self.config.subscription.clone())
            .set_max_outstanding_messages(self.config.max_outstanding_messages)
            .set_max_outstanding_bytes(self.config.max_outstanding_bytes)
            .build();
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.replace(index, stream.shutdown_token());
        }
        stream
    }

    fn one_stream(
        self,
        index: usize,
    ) -> impl Stream<Item = Envelope<Received, PubsubAck>> + Send + 'static {
        let backoff = Backoff::new(self.config.reopen_initial, self.config.reopen_max);
        futures::stream::unfold(
            (self, None::<MessageStream>, backoff),
            move |(src, mut current, mut backoff)| async move {
                loop {
                    let stream = current.get_or_insert_with(|| src.open(index));
                    match stream.next().await {
                        Some(Ok((m, h))) => {
                            src.health.set_subscription(true);
                            backoff.reset();
                            let trace = crate::traces::enabled()
                                .then(|| crate::traces::extract(&m.attributes).map(Box::new))
                                .flatten();
                            return Some((
                                Envelope::new(received(m), PubsubAck::new(h, trace)),
                                (src, current, backoff),
                            ));
                        }
                        Some(Err(e)) => {
                            src.health.set_subscription(false);
                            names::errors(stage::SOURCE, error_kind::STREAM).increment(1);
                            let delay = backoff.next_delay();
                            tracing::warn!(error = %crate::error::Chain(&e),
                            subscription = %src.config.subscription,
                            retry_in_ms = delay.as_millis() as u64, "streaming pull failed; reopening");
                            current = None;
                            tokio::time::sleep(delay).await;
                            let probe = src
                                .admin
                                .get_subscription()
                                .set_subscription(src.config.subscription.clone());
                            let probed =
                                tokio::time::timeout(Duration::from_secs(5), probe.send()).await;
                            if matches!(probed, Ok(Ok(_))) {
                                src.health.set_subscription(true);
                            }
                        }
                        None => return None,
                    }
                }
            },
        )
    }

    /// After the pipeline has settled every message: closes the streams and
    /// waits (up to `timeout`) until their acks have reached Pub/Sub.
    pub async fn flush_acks(&self, timeout: Duration) {
        let tokens: Vec<ShutdownToken> = match self.tokens.lock() {
            Ok(mut t) => t.take(),
            Err(_) => return,
        };
        let all = futures::future::join_all(tokens.iter().map(|t| t.shutdown()));
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(
                "timed out sending the last acks; those messages will be delivered again"
            );
        }
    }
}

/// The series this stage emits, zero-initialised at start-up.
pub(crate) fn series() -> Vec<Series> {
    let mut all = super::series::messages::<SourceOutcome>(stage::SOURCE);
    all.extend(super::series::errors(stage::SOURCE, &[error_kind::STREAM]));
    all
}
