//! The settings of `mini-scan scan` (the synthetic scanner) and `mini-scan
//! setup`, with the checks clap cannot express.

use super::{BadSetting, PubsubArgs};
use crate::pubsub::PubsubConfig;
use clap::Args;

/// `mini-scan scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pubsub: PubsubArgs,
    /// Topic to publish to: a short name or projects/P/topics/T.
    #[arg(long, env = "MINISCAN_TOPIC", default_value = "scan-topic")]
    pub topic: String,
    /// Messages per second; 0 publishes as fast as possible.
    #[arg(long, env = "MINISCAN_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// Stop after this many messages (default: never).
    #[arg(long, env = "MINISCAN_COUNT")]
    pub count: Option<u64>,
    /// Size of the key space, (ip, port, service) triples drawn from; default
    /// the original scanner's: any IP in 1.1.1.0/24, port 0..65534, 3 services.
    #[arg(long, env = "MINISCAN_KEYS")]
    pub keys: Option<u64>,
    /// Fraction of messages in the V1 format (base64 bytes); the rest are V2.
    #[arg(long, env = "MINISCAN_V1_RATIO", default_value_t = 0.5)]
    pub v1_ratio: f64,
    /// Fraction of messages that repeat an earlier message exactly.
    #[arg(long, env = "MINISCAN_DUPLICATE_RATIO", default_value_t = 0.0)]
    pub duplicate_ratio: f64,
    /// Fraction of messages carrying an older timestamp than the newest
    /// already published for their key.
    #[arg(long, env = "MINISCAN_OUT_OF_ORDER_RATIO", default_value_t = 0.0)]
    pub out_of_order_ratio: f64,
    /// Fraction of messages that are malformed (each kind of dead letter).
    #[arg(long, env = "MINISCAN_MALFORMED_RATIO", default_value_t = 0.0)]
    pub malformed_ratio: f64,
    /// Response size in bytes (default: "service response: N", as the
    /// original scanner).
    #[arg(long, env = "MINISCAN_RESPONSE_BYTES")]
    pub response_bytes: Option<usize>,
    /// Random seed: the same seed publishes the same messages.
    #[arg(long, env = "MINISCAN_SEED")]
    pub seed: Option<u64>,
    /// Messages per publish request.
    #[arg(long, env = "MINISCAN_PUBLISH_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub publish_batch: u32,
}

/// `mini-scan setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pubsub: PubsubArgs,
    /// Topic to create: a short name or projects/P/topics/T.
    #[arg(long, env = "MINISCAN_TOPIC", default_value = "scan-topic")]
    pub topic: String,
    /// Subscription to create: a short name or projects/P/subscriptions/S.
    #[arg(long, env = "MINISCAN_SUBSCRIPTION", default_value = "scan-sub")]
    pub subscription: String,
    /// Ack deadline of a new subscription, in seconds.
    #[arg(long, env = "MINISCAN_ACK_DEADLINE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(i32).range(10..=600))]
    pub ack_deadline_secs: i32,
}

fn ratio(flag: &str, env: &str, v: f64) -> Result<(), BadSetting> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(BadSetting::new(
            flag,
            env,
            format!("{v} is not a fraction between 0 and 1"),
        ))
    }
}

impl ScanArgs {
    /// Checks ranges clap cannot express for floats.
    pub fn validate(&self) -> Result<(), BadSetting> {
        crate::pubsub::validate_name("topics", &self.topic)
            .map_err(|why| BadSetting::new("topic", "MINISCAN_TOPIC", why))?;
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(BadSetting::new(
                "rate",
                "MINISCAN_RATE",
                format!("{} is not a rate >= 0", self.rate),
            ));
        }
        if self.keys == Some(0) {
            return Err(BadSetting::new(
                "keys",
                "MINISCAN_KEYS",
                "the key space cannot be empty",
            ));
        }
        ratio("v1-ratio", "MINISCAN_V1_RATIO", self.v1_ratio)?;
        ratio(
            "duplicate-ratio",
            "MINISCAN_DUPLICATE_RATIO",
            self.duplicate_ratio,
        )?;
        ratio(
            "out-of-order-ratio",
            "MINISCAN_OUT_OF_ORDER_RATIO",
            self.out_of_order_ratio,
        )?;
        ratio(
            "malformed-ratio",
            "MINISCAN_MALFORMED_RATIO",
            self.malformed_ratio,
        )?;
        if self.duplicate_ratio + self.out_of_order_ratio + self.malformed_ratio > 1.0 {
            return Err(BadSetting::new(
                "duplicate-ratio",
                "MINISCAN_DUPLICATE_RATIO",
                "duplicate, out-of-order and malformed ratios add up to more than 1",
            ));
        }
        Ok(())
    }
}

/// What `mini-scan scan` publishes, validated: no clap types, as
/// `IngestConfig` is for the ingester.
#[derive(Clone, Debug)]
pub struct ScanConfig {
    /// Where Pub/Sub is.
    pub pubsub: PubsubConfig,
    /// The topic: a short name or projects/P/topics/T.
    pub topic: String,
    /// Messages per second; 0 publishes as fast as possible.
    pub rate: f64,
    /// Stop after this many messages (None: never).
    pub count: Option<u64>,
    /// Messages per publish request, 1..=1000.
    pub publish_batch: u32,
    /// What the generator makes.
    pub generator: GenConfig,
}

/// What the generator makes.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Key-space size (None: the original scanner's).
    pub keys: Option<u64>,
    /// Fraction in V1 format.
    pub v1_ratio: f64,
    /// Fraction repeating an earlier message exactly.
    pub duplicate_ratio: f64,
    /// Fraction with an older timestamp.
    pub out_of_order_ratio: f64,
    /// Fraction malformed.
    pub malformed_ratio: f64,
    /// Response size (None: "service response: N").
    pub response_bytes: Option<usize>,
    /// Seed (None: random, wall-clock timestamps).
    pub seed: Option<u64>,
}

impl TryFrom<ScanArgs> for ScanConfig {
    type Error = BadSetting;

    fn try_from(a: ScanArgs) -> Result<Self, BadSetting> {
        a.validate()?;
        Ok(Self {
            pubsub: a.pubsub.config(),
            topic: a.topic,
            rate: a.rate,
            count: a.count,
            publish_batch: a.publish_batch,
            generator: GenConfig {
                keys: a.keys,
                v1_ratio: a.v1_ratio,
                duplicate_ratio: a.duplicate_ratio,
                out_of_order_ratio: a.out_of_order_ratio,
                malformed_ratio: a.malformed_ratio,
                response_bytes: a.response_bytes,
                seed: a.seed,
            },
        })
    }
}

impl SetupArgs {
    /// Checks the names.
    pub fn validate(&self) -> Result<(), BadSetting> {
        crate::pubsub::validate_name("topics", &self.topic)
            .map_err(|why| BadSetting::new("topic", "MINISCAN_TOPIC", why))?;
        crate::pubsub::validate_name("subscriptions", &self.subscription)
            .map_err(|why| BadSetting::new("subscription", "MINISCAN_SUBSCRIPTION", why))
    }
}
