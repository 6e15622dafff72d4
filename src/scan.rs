//! The synthetic scanner: publishes scan results the way the original scanner
//! does (one a second, a random IPv4 in 1.1.1.0/24, port 0..65534, service
//! HTTP/SSH/DNS, "service response: N", V1 or V2 at random), and doubles as a
//! load generator (rate, key space, duplicates, disorder, malformed messages,
//! response size, seed).

use crate::config::ScanConfig;
use crate::stages::decode::one_per_reason;
use base64::Engine as _;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument as _;

const SERVICES: [&str; 3] = ["HTTP", "SSH", "DNS"];
/// Messages remembered for exact repeats.
const RECENT: usize = 1024;
/// With a seed, timestamps come from a virtual clock that starts here and
/// advances one second per this many messages, so the same seed publishes
/// byte-identical messages on every run.
const SEEDED_EPOCH: i64 = 1_700_000_000;
const SEEDED_PER_SECOND: u64 = 1000;

/// What the generator makes: the scanner's validated settings carry one
/// ([`ScanConfig::generator`]); benches build their own.
pub use crate::config::GenConfig;

/// Makes scan messages.
#[derive(Debug)]
pub struct Generator {
    cfg: GenConfig,
    rng: StdRng,
    recent: Vec<Vec<u8>>,
    /// One malformed message of each dead-letter reason decode gives,
    /// published in turn.
    malformed: Vec<&'static [u8]>,
    seq: u64,
}

impl Generator {
    /// A generator; the same config with a seed makes the same messages.
    pub fn new(cfg: GenConfig) -> Self {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            cfg,
            rng,
            recent: Vec::with_capacity(RECENT),
            malformed: one_per_reason().map(|m| m.data).collect(),
            seq: 0,
        }
    }

    fn now(&self) -> i64 {
        match self.cfg.seed {
            Some(_) => SEEDED_EPOCH + (self.seq / SEEDED_PER_SECOND) as i64,
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        }
    }

    /// The next message's data.
    pub fn next_message(&mut self) -> Vec<u8> {
        self.seq += 1;
        let r: f64 = self.rng.random();
        let c = &self.cfg;
        if r < c.duplicate_ratio && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        if r < c.duplicate_ratio + c.malformed_ratio {
            let kind = (self.seq % self.malformed.len() as u64) as usize;
            return self.malformed[kind].to_vec();
        }
        let out_of_order = r < c.duplicate_ratio + c.malformed_ratio + c.out_of_order_ratio;
        let (ip, port, service) = match c.keys {
            Some(k) => {
                let idx = self.rng.random_range(0..k);
                let service = SERVICES[(idx % 3) as usize];
                let port = ((idx / 3) % 65535) as u16;
                let ip = Ipv4Addr::from(0x0101_0100u32.wrapping_add((idx / 3 / 65535) as u32));
                (ip, port, service)
            }
            None => (
                Ipv4Addr::new(1, 1, 1, self.rng.random_range(0..=255)),
                self.rng.random_range(0..65535),
                SERVICES[self.rng.random_range(0..3)],
            ),
        };
        let mut timestamp = self.now();
        if out_of_order {
            timestamp -= self.rng.random_range(1..=3600);
        }
        let response: Vec<u8> = match c.response_bytes {
            None => format!("service response: {}", self.rng.random_range(0..100)).into_bytes(),
            Some(n) => (0..n).map(|_| self.rng.random_range(b'a'..=b'z')).collect(),
        };
        let v1 = self.rng.random_bool(c.v1_ratio);
        let data = if v1 {
            serde_json::json!({ "response_bytes_utf8": base64::engine::general_purpose::STANDARD.encode(&response) })
        } else {
            serde_json::json!({ "response_str": String::from_utf8_lossy(&response) })
        };
        let msg = serde_json::json!({
            "ip": ip.to_string(),
            "port": port,
            "service": service,
            "timestamp": timestamp,
            "data_version": if v1 { 1 } else { 2 },
            "data": data,
        });
        let bytes = msg.to_string().into_bytes();
        if self.recent.len() < RECENT {
            self.recent.push(bytes.clone());
        } else {
            let i = (self.seq as usize) % RECENT;
            self.recent[i] = bytes.clone();
        }
        bytes
    }
}

/// What a scan run published.
#[derive(Clone, Copy, Debug, Default)]
pub struct Published {
    /// Messages the server accepted.
    pub ok: u64,
    /// Messages that failed to publish.
    pub failed: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Counts the outcomes of publishes and keeps the last error's text.
#[derive(Debug, Default)]
struct Tally {
    out: Published,
    last_error: Option<String>,
}

impl Tally {
    fn record(&mut self, r: Result<String, google_cloud_pubsub::error::PublishError>) {
        match r {
            Ok(_) => self.out.ok += 1,
            Err(e) => {
                self.out.failed += 1;
                self.last_error = Some(e.to_string());
            }
        }
    }
}

/// Most publishes awaiting the server's answer: enough to keep the client's
/// batches full at the fastest rate the scanner is asked for (the load
/// generator's, docs/benchmarks.md), few enough to bound memory.
const MAX_PENDING: usize = 50_000;

/// With tracing on, a `publish` span for one message (it lasts until the
/// server accepts the message) and the message carrying its context in the
/// attributes `googclient_traceparent` and `traceparent`. With it off, the
/// message as it is and no span.
fn traced(
    msg: google_cloud_pubsub::model::Message,
    topic: &str,
) -> (google_cloud_pubsub::model::Message, tracing::Span) {
    use crate::traces::{self, GOOGCLIENT_TRACEPARENT, TRACEPARENT};
    if !traces::enabled() {
        return (msg, tracing::Span::none());
    }
    let span = tracing::info_span!(
        "publish",
        otel.kind = "producer",
        messaging.system = "gcp_pubsub",
        messaging.destination.name = topic,
    );
    match traces::traceparent(&span) {
        Some(tp) => (
            msg.set_attributes([(GOOGCLIENT_TRACEPARENT, tp.clone()), (TRACEPARENT, tp)]),
            span,
        ),
        None => (msg, span),
    }
}

/// Publishes messages until `count` is reached or `stop` resolves.
pub async fn publish(
    args: &ScanConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Published> {
    use anyhow::Context as _;
    let cfg = &args.pubsub;
    let topic = cfg.topic_path(&args.topic);
    let publisher = cfg
        .publisher(&topic, args.publish_batch)
        .await
        .with_context(|| format!("cannot build a publisher for {topic}"))?;
    let mut generator = Generator::new(args.generator.clone());
    let mut pending = FuturesUnordered::new();
    let mut tally = Tally::default();
    let started = tokio::time::Instant::now();
    let mut stop = std::pin::pin!(stop);
    let mut sent: u64 = 0;
    loop {
        if args.count.is_some_and(|c| sent >= c) {
            break;
        }
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / args.rate);
            if due > tokio::time::Instant::now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = &mut stop => break,
                    Some(r) = pending.next(), if !pending.is_empty() => { tally.record(r); continue; }
                }
            }
        } else if futures::poll!(&mut stop).is_ready() {
            break;
        }
        let msg = google_cloud_pubsub::model::Message::new().set_data(generator.next_message());
        let (msg, span) = traced(msg, &topic);
        pending.push(publisher.publish(msg).instrument(span));
        sent += 1;
        while pending.len() >= MAX_PENDING {
            if let Some(r) = pending.next().await {
                tally.record(r);
            }
        }
        if sent.is_multiple_of(10_000) {
            tracing::debug!(sent, "publishing");
        }
    }
    while let Some(r) = pending.next().await {
        tally.record(r);
    }
    let Tally {
        mut out,
        last_error,
    } = tally;
    out.elapsed = started.elapsed();
    if let Some(e) = last_error {
        tracing::error!(failed = out.failed, last_error = %e, "some messages were not published");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::decode::{Reason, decode};

    fn cfg(seed: u64) -> GenConfig {
        GenConfig {
            keys: Some(100),
            v1_ratio: 0.5,
            duplicate_ratio: 0.1,
            out_of_order_ratio: 0.2,
            malformed_ratio: 0.1,
            response_bytes: None,
            seed: Some(seed),
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_messages() {
        let a: Vec<Vec<u8>> = {
            let mut g = Generator::new(cfg(7));
            (0..500).map(|_| g.next_message()).collect()
        };
        let mut g = Generator::new(cfg(7));
        let b: Vec<Vec<u8>> = (0..500).map(|_| g.next_message()).collect();
        assert_eq!(a, b);
        let mut g = Generator::new(cfg(8));
        let c: Vec<Vec<u8>> = (0..500).map(|_| g.next_message()).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn ratios_and_key_space_hold() {
        let mut g = Generator::new(cfg(1));
        let n = 20_000;
        let mut bad = 0;
        let mut keys = std::collections::HashSet::new();
        for _ in 0..n {
            match decode(&g.next_message()) {
                Ok(o) => {
                    keys.insert(o.key);
                }
                Err(_) => bad += 1,
            }
        }
        let bad_ratio = bad as f64 / n as f64;
        assert!(
            (0.08..0.12).contains(&bad_ratio),
            "malformed ratio {bad_ratio}"
        );
        assert!(keys.len() <= 100 && keys.len() > 90, "{} keys", keys.len());
    }

    #[test]
    fn malformed_messages_cycle_through_every_decode_reason() {
        let mut g = Generator::new(GenConfig {
            malformed_ratio: 1.0,
            duplicate_ratio: 0.0,
            ..cfg(5)
        });
        let reasons: std::collections::BTreeSet<&str> = (0..100)
            .map(|_| decode(&g.next_message()).unwrap_err().reason.as_str())
            .collect();
        assert_eq!(reasons.len(), Reason::ALL.len() - 1, "{reasons:?}");
        assert!(!reasons.contains(Reason::RejectedByDatabase.as_str()));
    }

    #[test]
    fn default_messages_look_like_the_original_scanner() {
        let mut g = Generator::new(GenConfig {
            keys: None,
            v1_ratio: 0.5,
            duplicate_ratio: 0.0,
            out_of_order_ratio: 0.0,
            malformed_ratio: 0.0,
            response_bytes: None,
            seed: Some(3),
        });
        for _ in 0..200 {
            let o = decode(&g.next_message()).unwrap();
            let std::net::IpAddr::V4(ip) = o.key.ip else {
                panic!()
            };
            assert_eq!(ip.octets()[..3], [1, 1, 1]);
            assert!(o.key.port < 65535);
            assert!(SERVICES.contains(&o.key.service.as_str()));
            assert!(o.response.starts_with("service response: "));
        }
    }
}
