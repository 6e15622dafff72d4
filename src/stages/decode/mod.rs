//! Decode: message bytes in, a [`Record`] out (a valid scan, or a dead letter
//! with its reason). Never fails and never drops: every message leaves as one
//! record. Acks are untouched.
//!
//! Metrics: `miniscan_messages_total{stage="decode",outcome="ok"|"dead_letter"}`.
//!
//! A valid message is a JSON object with `ip` (an IPv4 or IPv6 literal),
//! `port` (a JSON integer in 0..=65535), `service` (a non-empty string),
//! `timestamp` (integer Unix seconds, years 1 to 9999), and either
//! `data_version: 1` with `data.response_bytes_utf8` (base64) or
//! `data_version: 2` with `data.response_str`. Unknown fields are ignored.
//!
//! Layout: `rejection.rs` (the error for a message that does not decode, with
//! its [`Reason`]), `wire.rs` (the JSON format, parsed field by field),
//! `malformed.rs` (examples of every reason, shared with `scan` and the
//! integration tests), and here the stage.

mod malformed;
mod rejection;
mod wire;

/// Re-exported from [`crate::stages::Reason`], their one home, for the
/// callers that name decode's reasons.
pub use super::Reason;
pub use malformed::{MALFORMED, Malformed, one_per_reason};
pub use rejection::Rejection;
pub use wire::decode;

use super::{DeadLetter, Order, Received, Record, Scan, ScanKey};
use crate::pipeline::Transform;
use crate::pipeline::outcome::outcome_enum;
use crate::telemetry::names::{outcome, stage};
use crate::telemetry::series::Series;

/// A decoded observation, before it is tied to a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Which row.
    pub key: ScanKey,
    /// The scan's timestamp (Unix seconds).
    pub timestamp: i64,
    /// The response as text.
    pub response: String,
    /// The exact bytes where they differ from `response`.
    pub response_raw: Option<Vec<u8>>,
}

pub use crate::model::{MAX_TIMESTAMP, MIN_TIMESTAMP};

/// Renders response bytes as text: valid UTF-8 without NUL is kept as is;
/// anything else is rendered lossily (invalid sequences and NUL become
/// U+FFFD) and the exact bytes are kept beside it.
pub fn render_bytes(bytes: Vec<u8>) -> (String, Option<Vec<u8>>) {
    match String::from_utf8(bytes) {
        Ok(s) => render_string(s),
        Err(e) => {
            let bytes = e.into_bytes();
            let text = String::from_utf8_lossy(&bytes).replace('\0', "\u{FFFD}");
            (text, Some(bytes))
        }
    }
}

/// Renders a response string: PostgreSQL's `text` cannot hold NUL, so a
/// string with NUL is stored with U+FFFD in its place and its exact bytes
/// beside it.
pub fn render_string(s: String) -> (String, Option<Vec<u8>>) {
    if s.as_bytes().contains(&0) {
        let text = s.replace('\0', "\u{FFFD}");
        (text, Some(s.into_bytes()))
    } else {
        (s, None)
    }
}

outcome_enum! {
    /// The decode stage's outcomes.
    pub enum DecodeOutcome {
        /// A valid scan.
        Ok => outcome::OK,
        /// Malformed: on to the write stage as a dead letter.
        DeadLetter => outcome::DEAD_LETTER,
    }
}

/// The series this stage emits, zero-initialised at start-up. (The dead
/// letters of every [`Reason`] are counted when the write stage commits them:
/// its series.)
pub(crate) fn series() -> Vec<Series> {
    super::series::messages::<DecodeOutcome>(stage::DECODE)
}

/// The decode stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decode;

impl Transform for Decode {
    type In = Received;
    type Out = Record;
    type Outcome = DecodeOutcome;

    fn name(&self) -> &'static str {
        stage::DECODE
    }

    fn apply(&mut self, msg: Received) -> (Record, DecodeOutcome) {
        match decode(&msg.data) {
            Ok(obs) => (
                Record::Scan(Scan {
                    key: obs.key,
                    order: Order {
                        timestamp: obs.timestamp,
                        published_micros: msg.published_micros,
                        message_id: msg.message_id.into(),
                    },
                    response: obs.response,
                    response_raw: obs.response_raw,
                    payload: msg.data,
                    cached: None,
                }),
                DecodeOutcome::Ok,
            ),
            Err(rejection) => (
                Record::Dead(DeadLetter {
                    message_id: msg.message_id,
                    reason: rejection.reason,
                    detail: rejection.detail,
                    payload: msg.data,
                    published_micros: msg.published_micros,
                }),
                DecodeOutcome::DeadLetter,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;

    #[test]
    fn v1_and_v2_of_the_same_response_decode_alike() {
        let v1 = decode(br#"{"ip":"1.1.1.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"c2VydmljZSByZXNwb25zZTogNDI="}}"#).unwrap();
        let v2 = decode(br#"{"ip":"1.1.1.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":{"response_str":"service response: 42"}}"#).unwrap();
        assert_eq!(v1, v2);
        assert_eq!(v1.response, "service response: 42");
        assert_eq!(v1.response_raw, None);
    }

    #[test]
    fn extra_fields_are_ignored_and_ipv6_spellings_agree() {
        let a = decode(br#"{"ip":"::1","port":1,"service":"S","timestamp":1,"data_version":2,"data":{"response_str":"x","more":1},"extra":[1,2]}"#).unwrap();
        let b = decode(br#"{"ip":"0:0:0:0:0:0:0:1","port":1,"service":"S","timestamp":1,"data_version":2,"data":{"response_str":"x"}}"#).unwrap();
        assert_eq!(a.key, b.key);
    }

    #[test]
    fn nul_and_invalid_utf8_keep_their_exact_bytes() {
        let (text, raw) = render_bytes(b"a\0b\xffc".to_vec());
        assert_eq!(text, "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(raw.as_deref(), Some(&b"a\0b\xffc"[..]));
        let (text, raw) = render_string("tab\there\n\\N".to_string());
        assert_eq!(text, "tab\there\n\\N");
        assert_eq!(raw, None);
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let obs = decode(br#"{"ip":"1.2.3.4","port":1,"service":"S","timestamp":1,"data_version":1,"data":{"response_bytes_utf8":"YWI"}}"#).unwrap();
        assert_eq!(obs.response, "ab");
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip_through_v1(bytes in proptest::collection::vec(any::<u8>(), 0..256),
                                          port in 0u16..=65535, ts in MIN_TIMESTAMP..=MAX_TIMESTAMP) {
            let msg = serde_json::json!({
                "ip": "2001:db8::1", "port": port, "service": "svc", "timestamp": ts,
                "data_version": 1,
                "data": {"response_bytes_utf8": base64::engine::general_purpose::STANDARD.encode(&bytes)},
            });
            let obs = decode(msg.to_string().as_bytes()).unwrap();
            let exact = obs.response_raw.clone().unwrap_or_else(|| obs.response.clone().into_bytes());
            prop_assert_eq!(exact, bytes);
            prop_assert!(!obs.response.contains('\0'));
            prop_assert_eq!(obs.key.port, port);
            prop_assert_eq!(obs.timestamp, ts);
        }

        #[test]
        fn any_string_round_trips_through_v2(s in ".*") {
            let msg = serde_json::json!({
                "ip": "1.2.3.4", "port": 80, "service": "svc", "timestamp": 1,
                "data_version": 2, "data": {"response_str": s},
            });
            let obs = decode(msg.to_string().as_bytes()).unwrap();
            let exact = obs.response_raw.clone().unwrap_or_else(|| obs.response.clone().into_bytes());
            prop_assert_eq!(exact, s.as_bytes().to_vec());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
