//! The Pub/Sub source through an outage that keeps reopening its streams: the state it holds per
//! stream (a shutdown token each, to flush acks at shutdown) stays bounded by the number of
//! streams however many times they are reopened, and the source recovers when the outage ends.
//!
//! The outage is a subscription that does not exist: the emulator refuses every streaming pull
//! with NOT_FOUND, a permanent error, so the source reopens each stream with backoff, as it would
//! through a long outage of the service. Against the real emulator, with no mocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{PROJECT, PubSub, random_name, wait_until};
use futures::StreamExt;
use mini_scan::pipeline::{Acknowledge, Shutdown};
use mini_scan::pubsub::PubsubConfig;
use mini_scan::stages::source::{PubsubSource, SourceConfig};
use mini_scan::telemetry::Health;
use mini_scan::telemetry::names::{self, error_kind, label, stage};

const STREAMS: usize = 2;
/// Reopens the streams must go through before the count is checked: far more than `STREAMS`,
/// so that a token kept per reopen would show.
const REOPENS: u64 = 40;

/// The value of `miniscan_errors_total{stage="source",kind="stream"}`: one per reopen.
fn stream_errors(rendered: &str) -> u64 {
    let key = format!(
        "{}{{{}=\"{}\",{}=\"{}\"}} ",
        names::ERRORS_TOTAL,
        label::STAGE,
        stage::SOURCE,
        label::KIND,
        error_kind::STREAM
    );
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn reopening_streams_many_times_holds_one_token_per_stream() {
    // The only test in this binary: the global registry counts the reopens.
    let metrics = mini_scan::telemetry::install_metrics(&[]).expect("install the metrics");
    let pubsub = PubSub::shared().await;
    let topic = random_name("topic");
    let subscription = random_name("sub");
    pubsub.create_topic(&topic).await;

    let config = PubsubConfig {
        project: PROJECT.to_owned(),
        emulator_host: Some(pubsub.host.clone()),
    };
    let client = config.subscriber(STREAMS).await.expect("a subscriber");
    let admin = config.subscription_admin().await.expect("an admin client");
    let source = PubsubSource::new(
        client,
        admin,
        SourceConfig {
            subscription: config.subscription_path(&subscription),
            streams: STREAMS,
            max_outstanding_messages: 1000,
            max_outstanding_bytes: 10 << 20,
            reopen_initial: Duration::from_millis(5),
            reopen_max: Duration::from_millis(20),
        },
        Health::new(),
    );
    let shutdown = Shutdown::new();
    let received = Arc::new(AtomicU64::new(0));
    let pulling = tokio::spawn({
        let stream = source.stream(shutdown.clone());
        let received = received.clone();
        async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(envelope) = stream.next().await {
                envelope.ack.ack();
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // The outage: every open fails and is retried.
    wait_until(
        Duration::from_secs(120),
        &format!("{REOPENS} reopens"),
        async || {
            let n = stream_errors(&metrics.render());
            if n >= REOPENS {
                Ok(())
            } else {
                Err(format!("{n} reopens"))
            }
        },
    )
    .await;
    // A replaced stream's token may be held for a moment, until its shutdown is done; never one
    // per reopen.
    wait_until(
        Duration::from_secs(10),
        "one token per stream",
        async || {
            let held = source.held_tokens();
            if held <= STREAMS {
                Ok(())
            } else {
                Err(format!(
                    "{held} tokens held after {} reopens",
                    stream_errors(&metrics.render())
                ))
            }
        },
    )
    .await;

    // The outage ends: the streams recover and deliver.
    pubsub.create_subscription(&subscription, &topic).await;
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
    wait_until(
        Duration::from_secs(120),
        "messages after the outage",
        async || {
            // Published again until something arrives: a message published before the streams
            // are open again is delivered all the same, so this only bounds the wait.
            if received.load(Ordering::Relaxed) == 0 {
                pubsub.publish(&topic, &payloads).await;
                return Err("nothing received yet".into());
            }
            Ok(())
        },
    )
    .await;
    let reopens = stream_errors(&metrics.render());
    assert!(reopens >= REOPENS, "{reopens} reopens");
    let held = source.held_tokens();
    assert!(
        held <= STREAMS,
        "{held} tokens held by {STREAMS} streams after {reopens} reopens"
    );

    shutdown.trigger(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(30), pulling)
        .await
        .expect("the source ends when stopped")
        .expect("the pulling task");
    source.flush_acks(Duration::from_secs(10)).await;
    assert_eq!(source.held_tokens(), 0, "flushing takes every token");
}
