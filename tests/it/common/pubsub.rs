//! The Pub/Sub emulator for the tests, and a small client for its REST API.
//!
//! The emulator a test uses is the one named by `PUBSUB_EMULATOR_HOST` in the test run's
//! environment, if set; otherwise its area's: Google's emulator (or the launcher named by
//! `MINISCAN_TEST_PUBSUB_EMULATOR`), started on a free port by [`crate::provision`] when the area's
//! first test asks for it. The area is the file of the test that asks (`faults` for
//! `tests/it/faults.rs`, found with `#[track_caller]`), so tests need not name it.
//!
//! One emulator per area, as there was one per test binary before the areas became modules of one
//! binary: the emulator slows down as topics and subscriptions pile up in it and stalls when reused
//! for long, and a JVM takes seconds to start. Tests run in the order of their names, so an area's
//! tests run together; when an area starts its emulator, the emulators no test holds any more
//! (areas that are done) are stopped, so a run keeps about two alive rather than one per area.
//! The last ones stop when the test binary exits.
//!
//! What the emulator does that the tests must know: one pull returns at most 100 messages; the
//! messages of one publish request share a publish time (millisecond precision); message ids are
//! a decimal counter shared by all topics; and the streaming pulls of a process that was killed go
//! on taking messages (see [`PubSub::replace_subscription`]).

use std::collections::BTreeMap;
use std::panic::Location;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::PROJECT;
use crate::provision::{self, Emulator, Purpose};

/// Messages per publish request: well under the API's 1000-message and 10 MB limits for the
/// payload sizes the tests use.
const PUBLISH_BATCH: usize = 1000;

/// The running emulators, by area.
static EMULATORS: Mutex<BTreeMap<String, Arc<Emulator>>> = Mutex::new(BTreeMap::new());

/// The area of a test, from the location of its call to a `#[track_caller]` function: the stem of
/// its file (`faults` for `tests/it/faults.rs`).
pub fn area(caller: &Location<'_>) -> String {
    let file = Path::new(caller.file());
    file.file_stem().map_or_else(
        || caller.file().to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    )
}

/// `host:port` of `area`'s emulator, and the handle that keeps it running (none when
/// `PUBSUB_EMULATOR_HOST` names the emulator).
fn area_emulator(area: &str) -> (String, Option<Arc<Emulator>>) {
    if let Ok(host) = std::env::var("PUBSUB_EMULATOR_HOST") {
        return (host, None);
    }
    // After one failed start every later test fails at once, not after its own start timeout.
    static FAILED: OnceLock<String> = OnceLock::new();
    if let Some(failure) = FAILED.get() {
        panic!("{failure}");
    }
    let mut emulators = EMULATORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(emulator) = emulators.get(area) {
        return (emulator.host.clone(), Some(emulator.clone()));
    }
    // Held by the map alone: its area is done (or one of its tests is between two contexts, and
    // its next context gets a fresh emulator, as a new area would).
    emulators.retain(|_, emulator| Arc::strong_count(emulator) > 1);
    static STOP_AT_EXIT: OnceLock<()> = OnceLock::new();
    STOP_AT_EXIT.get_or_init(|| provision::keep_until_exit(StopEmulators));
    // Started under the lock, so that a second test of this area waits for this emulator rather
    // than starting another (tests of areas already running wait too, for a few seconds).
    let emulator = match Emulator::start(Purpose::Tests) {
        Ok(emulator) => Arc::new(emulator),
        Err(e) => panic!("{}", FAILED.get_or_init(|| e.to_string())),
    };
    emulators.insert(area.to_owned(), emulator.clone());
    (emulator.host.clone(), Some(emulator))
}

/// Stops the emulators still running when the test binary exits: statics are never dropped.
struct StopEmulators;

impl Drop for StopEmulators {
    fn drop(&mut self) {
        EMULATORS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// One message taken from a subscription by [`PubSub::pull`].
#[derive(Clone, Debug)]
pub struct Received {
    pub ack_id: String,
    pub message_id: String,
    /// The publish time in Unix microseconds (the emulator has millisecond precision).
    pub publish_time_us: i64,
    pub data: Vec<u8>,
    /// The message's attributes.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// A REST client for the emulator, on project `test-project`.
#[derive(Clone)]
pub struct PubSub {
    /// `host:port`, the value for `PUBSUB_EMULATOR_HOST`.
    pub host: String,
    http: reqwest::Client,
    base: String,
    /// Keeps the area's emulator running while a client for it exists.
    _emulator: Option<Arc<Emulator>>,
}

impl PubSub {
    /// The client for the emulator of the calling test's area (started on first use).
    #[track_caller]
    pub fn shared() -> impl Future<Output = Self> {
        let area = area(Location::caller());
        async move { Self::of_area(&area) }
    }

    /// The client for `area`'s emulator (started on first use, which blocks for seconds).
    pub fn of_area(area: &str) -> Self {
        let (host, emulator) = area_emulator(area);
        Self {
            base: format!("http://{host}/v1/projects/{PROJECT}"),
            host,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("build an HTTP client"),
            _emulator: emulator,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let status = response.status();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the response failed: {e}"));
        assert!(
            status.is_success(),
            "{method} {url} answered {status}: {text}"
        );
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url} answered with invalid JSON ({e}): {text}"))
    }

    /// A topic that retains its messages for an hour, so that a snapshot of a subscription can be
    /// replayed into a new one (see [`Self::unacked`] and [`Self::replace_subscription`]).
    pub async fn create_topic(&self, topic: &str) {
        self.call(
            reqwest::Method::PUT,
            &format!("topics/{topic}"),
            Some(json!({ "messageRetentionDuration": "3600s" })),
        )
        .await;
    }

    /// A pull subscription with the shortest ack deadline (10 s), so that messages a killed
    /// ingester held come back soon.
    pub async fn create_subscription(&self, subscription: &str, topic: &str) {
        let body = json!({
            "topic": format!("projects/{PROJECT}/topics/{topic}"),
            "ackDeadlineSeconds": 10,
        });
        self.call(
            reqwest::Method::PUT,
            &format!("subscriptions/{subscription}"),
            Some(body),
        )
        .await;
    }

    /// Publishes `payloads` in order, [`PUBLISH_BATCH`] per request, and returns their message
    /// ids. Messages of one request share a publish time.
    pub async fn publish(&self, topic: &str, payloads: &[Vec<u8>]) -> Vec<String> {
        let mut ids = Vec::with_capacity(payloads.len());
        for chunk in payloads.chunks(PUBLISH_BATCH) {
            let messages: Vec<Value> = chunk
                .iter()
                .map(|p| json!({ "data": BASE64.encode(p) }))
                .collect();
            let answer = self
                .call(
                    reqwest::Method::POST,
                    &format!("topics/{topic}:publish"),
                    Some(json!({ "messages": messages })),
                )
                .await;
            let got = answer["messageIds"]
                .as_array()
                .unwrap_or_else(|| panic!("publish answered without messageIds: {answer}"));
            assert_eq!(got.len(), chunk.len(), "publish answered {answer}");
            ids.extend(
                got.iter()
                    .map(|id| id.as_str().expect("a string id").to_owned()),
            );
        }
        ids
    }

    /// One pull of at most `max` messages, returning at once when none is available. What it
    /// returns is leased to the caller for the ack deadline.
    pub async fn pull(&self, subscription: &str, max: usize) -> Vec<Received> {
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("subscriptions/{subscription}:pull"),
                Some(json!({ "maxMessages": max, "returnImmediately": true })),
            )
            .await;
        let Some(received) = answer.get("receivedMessages").and_then(Value::as_array) else {
            return Vec::new();
        };
        received
            .iter()
            .map(|r| {
                let message = &r["message"];
                let field = |name: &str| {
                    message[name]
                        .as_str()
                        .unwrap_or_else(|| panic!("pulled message without {name}: {r}"))
                };
                Received {
                    ack_id: r["ackId"]
                        .as_str()
                        .expect("pulled message without ackId")
                        .to_owned(),
                    message_id: field("messageId").to_owned(),
                    publish_time_us: parse_rfc3339_us(field("publishTime")),
                    data: BASE64
                        .decode(message["data"].as_str().unwrap_or(""))
                        .expect("the emulator sent invalid base64"),
                    attributes: message["attributes"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect(),
                }
            })
            .collect()
    }

    /// Pulls until a pull comes back empty, and returns everything pulled (leased, not acked).
    pub async fn drain(&self, subscription: &str) -> Vec<Received> {
        let mut all = Vec::new();
        loop {
            let got = self.pull(subscription, 1000).await;
            if got.is_empty() {
                return all;
            }
            all.extend(got);
        }
    }

    /// Sets the ack deadline of leased messages; 0 hands them back for redelivery at once.
    pub async fn modify_ack_deadline(&self, subscription: &str, ack_ids: &[String], seconds: u32) {
        self.call(
            reqwest::Method::POST,
            &format!("subscriptions/{subscription}:modifyAckDeadline"),
            Some(json!({ "ackIds": ack_ids, "ackDeadlineSeconds": seconds })),
        )
        .await;
    }

    /// Every message `subscription` has not had acknowledged, including those leased to a consumer
    /// right now, without taking them from it: a snapshot of its ack state, replayed into a
    /// fresh audit subscription that is drained and deleted.
    pub async fn unacked(&self, subscription: &str, topic: &str) -> Vec<Received> {
        let audit = self
            .replay_into_new_subscription(subscription, topic, "audit")
            .await;
        let unacked = self.drain(&audit).await;
        self.delete(&format!("subscriptions/{audit}")).await;
        unacked
    }

    /// Replaces `subscription` by a new one (returned) holding exactly its unacknowledged
    /// messages, deliverable at once, and deletes it.
    ///
    /// This is how a test restarts after killing an ingester. The emulator keeps serving the
    /// streaming pulls of a killed process: they go on taking messages as their leases expire, so
    /// a restarted ingester on the same subscription gets them back only by chance, minutes later
    /// (the real service redelivers them all once their deadlines pass). What was acknowledged
    /// stays acknowledged, so a message acked before its row was committed is still lost.
    pub async fn replace_subscription(&self, subscription: &str, topic: &str) -> String {
        let replacement = self
            .replay_into_new_subscription(subscription, topic, "sub")
            .await;
        self.delete(&format!("subscriptions/{subscription}")).await;
        replacement
    }

    /// A snapshot of `subscription`'s ack state, and a new subscription seeked to it. Needs the
    /// topic's message retention (see [`Self::create_topic`]): without it the new subscription
    /// would not hold the messages published before it existed.
    async fn replay_into_new_subscription(
        &self,
        subscription: &str,
        topic: &str,
        prefix: &str,
    ) -> String {
        let snapshot = super::random_name("snap");
        self.call(
            reqwest::Method::PUT,
            &format!("snapshots/{snapshot}"),
            Some(json!({ "subscription": format!("projects/{PROJECT}/subscriptions/{subscription}") })),
        )
        .await;
        let replacement = super::random_name(prefix);
        self.create_subscription(&replacement, topic).await;
        self.call(
            reqwest::Method::POST,
            &format!("subscriptions/{replacement}:seek"),
            Some(json!({ "snapshot": format!("projects/{PROJECT}/snapshots/{snapshot}") })),
        )
        .await;
        self.delete(&format!("snapshots/{snapshot}")).await;
        replacement
    }

    async fn delete(&self, path: &str) {
        self.call(reqwest::Method::DELETE, path, None).await;
    }

    pub async fn acknowledge(&self, subscription: &str, ack_ids: &[String]) {
        self.call(
            reqwest::Method::POST,
            &format!("subscriptions/{subscription}:acknowledge"),
            Some(json!({ "ackIds": ack_ids })),
        )
        .await;
    }
}

/// Parses the emulator's `2026-11-27T20:30:38.567Z` (UTC, optional fraction) into Unix
/// microseconds.
fn parse_rfc3339_us(text: &str) -> i64 {
    let fail = || -> ! { panic!("unexpected publishTime format: {text}") };
    let text = text.strip_suffix('Z').unwrap_or_else(|| fail());
    let (date, time) = text.split_once('T').unwrap_or_else(|| fail());
    let num = |s: &str| s.parse::<i64>().unwrap_or_else(|_| fail());
    let mut d = date.split('-').map(num);
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(num);
    let (hh, mm, ss) = (t.next().unwrap(), t.next().unwrap(), t.next().unwrap());
    let micros = format!("{frac:0<6}")[..6]
        .parse::<i64>()
        .unwrap_or_else(|_| fail());
    let seconds = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss;
    seconds * 1_000_000 + micros
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339_us;

    #[test]
    fn parses_publish_times() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z"), 0);
        assert_eq!(
            parse_rfc3339_us("2023-11-14T22:13:20.5Z"),
            1_700_000_000_500_000
        );
        assert_eq!(
            parse_rfc3339_us("2026-11-27T20:30:38.567Z"),
            1_795_811_438_567_000
        );
    }
}
