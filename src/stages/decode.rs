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

use super::{DeadLetter, Order, Received, Record, Scan, ScanKey};
use crate::pipeline::Transform;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::net::IpAddr;

/// Why a message is a dead letter. The `as_str` codes are stored in
/// `dead_letters.reason` and used as the `reason` label of
/// `miniscan_dead_letters_total`, so they are a small fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not UTF-8, not JSON, or not a JSON object.
    InvalidJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type (e.g. `"port": "80"` or `80.5`).
    InvalidFieldType,
    /// `ip` is not an IPv4 or IPv6 literal.
    InvalidIp,
    /// `port` is an integer outside 0..=65535.
    PortOutOfRange,
    /// `service` is the empty string.
    EmptyService,
    /// `timestamp` is outside years 1 to 9999.
    TimestampOutOfRange,
    /// `data_version` is an integer other than 1 or 2.
    UnknownDataVersion,
    /// `data` lacks the response field its version requires.
    MissingResponse,
    /// `data.response_bytes_utf8` is not valid base64.
    InvalidBase64,
}

impl Reason {
    /// The snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::MissingField => "missing_field",
            Reason::InvalidFieldType => "invalid_field_type",
            Reason::InvalidIp => "invalid_ip",
            Reason::PortOutOfRange => "port_out_of_range",
            Reason::EmptyService => "empty_service",
            Reason::TimestampOutOfRange => "timestamp_out_of_range",
            Reason::UnknownDataVersion => "unknown_data_version",
            Reason::MissingResponse => "missing_response",
            Reason::InvalidBase64 => "invalid_base64",
        }
    }
}

/// A message that does not decode, with its reason and a readable detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    /// The code.
    pub reason: Reason,
    /// What exactly was wrong (never contains NUL, so it fits a `text` column).
    pub detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    let mut detail = detail.into();
    if detail.contains('\0') {
        detail = detail.replace('\0', "\u{FFFD}");
    }
    Rejection { reason, detail }
}

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

/// The first and last second PostgreSQL's `timestamptz` and every client can
/// agree on without surprises: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
pub const MIN_TIMESTAMP: i64 = -62_135_596_800;
/// See [`MIN_TIMESTAMP`].
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// Base64 as Go's `encoding/json` writes `[]byte` (standard alphabet), but
/// lenient about padding, since other producers omit it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    ip: Option<&'a RawValue>,
    #[serde(borrow, default)]
    port: Option<&'a RawValue>,
    #[serde(borrow, default)]
    service: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireData<'a> {
    #[serde(borrow, default)]
    response_bytes_utf8: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response_str: Option<&'a RawValue>,
}

fn required<'a>(field: Option<&'a RawValue>, name: &str) -> Result<&'a RawValue, Rejection> {
    match field {
        Some(v) if v.get() != "null" => Ok(v),
        _ => Err(reject(
            Reason::MissingField,
            format!("`{name}` is missing or null"),
        )),
    }
}

fn typed<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    name: &str,
    expected: &str,
) -> Result<T, Rejection> {
    serde_json::from_str(raw.get()).map_err(|_| {
        reject(
            Reason::InvalidFieldType,
            format!(
                "`{name}` must be {expected}, got {}",
                truncate(raw.get(), 64)
            ),
        )
    })
}

/// A JSON integer, or `None` for any other number (`80.5`, `8e1`, `1e30`).
fn integer(raw: &RawValue, name: &str) -> Result<IntOrBig, Rejection> {
    let n: serde_json::Number = typed(raw, name, "an integer")?;
    if let Some(i) = n.as_i64() {
        Ok(IntOrBig::Int(i))
    } else if n.is_u64() {
        Ok(IntOrBig::Big)
    } else {
        Err(reject(
            Reason::InvalidFieldType,
            format!(
                "`{name}` must be an integer, got {}",
                truncate(raw.get(), 64)
            ),
        ))
    }
}

enum IntOrBig {
    Int(i64),
    /// An integer above `i64::MAX`.
    Big,
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Decodes one message's data. A pure function: the core of this stage.
pub fn decode(data: &[u8]) -> Result<Observation, Rejection> {
    let text = std::str::from_utf8(data)
        .map_err(|e| reject(Reason::InvalidJson, format!("not UTF-8: {e}")))?;
    // Serde would also read a struct from a JSON array, positionally.
    if !text.trim_start().starts_with('{') {
        let what = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "not a JSON object"
        } else {
            "not JSON"
        };
        return Err(reject(Reason::InvalidJson, what));
    }
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| {
        let what = if e.is_data() {
            "not a JSON object"
        } else {
            "not JSON"
        };
        reject(Reason::InvalidJson, format!("{what}: {e}"))
    })?;

    let ip_raw = required(wire.ip, "ip")?;
    let ip_str: &str = &typed::<std::borrow::Cow<'_, str>>(ip_raw, "ip", "a string")?;
    let ip: IpAddr = ip_str.parse().map_err(|_| {
        reject(
            Reason::InvalidIp,
            format!(
                "`ip` is not an IPv4 or IPv6 address: {:?}",
                truncate(ip_str, 64)
            ),
        )
    })?;

    let port = match integer(required(wire.port, "port")?, "port")? {
        IntOrBig::Int(p) if (0..=65535).contains(&p) => p as u16,
        IntOrBig::Int(p) => {
            return Err(reject(
                Reason::PortOutOfRange,
                format!("`port` {p} is outside 0..=65535"),
            ));
        }
        IntOrBig::Big => {
            return Err(reject(
                Reason::PortOutOfRange,
                "`port` is outside 0..=65535",
            ));
        }
    };

    let service: String = typed(required(wire.service, "service")?, "service", "a string")?;
    if service.is_empty() {
        return Err(reject(Reason::EmptyService, "`service` is empty"));
    }
    if service.contains('\0') {
        // PostgreSQL text cannot hold NUL; a key must be stored exactly.
        return Err(reject(
            Reason::InvalidFieldType,
            "`service` contains a NUL character",
        ));
    }

    let timestamp = match integer(required(wire.timestamp, "timestamp")?, "timestamp")? {
        IntOrBig::Int(t) if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&t) => t,
        _ => {
            return Err(reject(
                Reason::TimestampOutOfRange,
                format!(
                    "`timestamp` {} is outside years 1 to 9999",
                    truncate(wire.timestamp.map(|r| r.get()).unwrap_or(""), 32)
                ),
            ));
        }
    };

    let version = match integer(required(wire.data_version, "data_version")?, "data_version")? {
        IntOrBig::Int(v) => v,
        IntOrBig::Big => i64::MAX,
    };
    if version != 1 && version != 2 {
        return Err(reject(
            Reason::UnknownDataVersion,
            format!(
                "`data_version` {} is not 1 or 2",
                truncate(wire.data_version.map(|r| r.get()).unwrap_or(""), 32)
            ),
        ));
    }

    let data_raw = required(wire.data, "data")?;
    if !data_raw.get().starts_with('{') {
        return Err(reject(
            Reason::InvalidFieldType,
            format!(
                "`data` must be an object, got {}",
                truncate(data_raw.get(), 64)
            ),
        ));
    }
    let data: WireData<'_> = typed(data_raw, "data", "an object")?;
    let (response, response_raw) = if version == 1 {
        let raw = data
            .response_bytes_utf8
            .filter(|r| r.get() != "null")
            .ok_or_else(|| {
                reject(
                    Reason::MissingResponse,
                    "data_version 1 requires `data.response_bytes_utf8`",
                )
            })?;
        let encoded: std::borrow::Cow<'_, str> =
            typed(raw, "data.response_bytes_utf8", "a base64 string")?;
        let bytes = BASE64.decode(encoded.as_bytes()).map_err(|e| {
            reject(
                Reason::InvalidBase64,
                format!("`data.response_bytes_utf8`: {e}"),
            )
        })?;
        render_bytes(bytes)
    } else {
        let raw = data
            .response_str
            .filter(|r| r.get() != "null")
            .ok_or_else(|| {
                reject(
                    Reason::MissingResponse,
                    "data_version 2 requires `data.response_str`",
                )
            })?;
        let s: String = typed(raw, "data.response_str", "a string")?;
        render_string(s)
    };

    Ok(Observation {
        key: ScanKey { ip, port, service },
        timestamp,
        response,
        response_raw,
    })
}

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

/// The decode stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decode;

impl Transform for Decode {
    type In = Received;
    type Out = Record;

    fn name(&self) -> &'static str {
        "decode"
    }

    fn apply(&mut self, msg: Received) -> (Record, &'static str) {
        match decode(&msg.data) {
            Ok(obs) => (
                Record::Scan(Scan {
                    key: obs.key,
                    order: Order {
                        timestamp: obs.timestamp,
                        published_micros: msg.published_micros,
                        message_id: msg.message_id,
                    },
                    response: obs.response,
                    response_raw: obs.response_raw,
                    payload: msg.data,
                }),
                "ok",
            ),
            Err(rejection) => (
                Record::Dead(DeadLetter {
                    message_id: msg.message_id,
                    reason: rejection.reason.as_str(),
                    detail: rejection.detail,
                    payload: msg.data,
                    published_micros: msg.published_micros,
                }),
                "dead_letter",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(json: &str) -> Reason {
        decode(json.as_bytes()).expect_err(json).reason
    }

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
    fn every_malformed_kind_has_its_reason() {
        let ok =
            r#""port":1,"service":"S","timestamp":1,"data_version":2,"data":{"response_str":"x"}"#;
        assert_eq!(reason("not json"), Reason::InvalidJson);
        assert_eq!(reason("[1,2]"), Reason::InvalidJson);
        assert_eq!(reason("{\"ip\":"), Reason::InvalidJson);
        assert_eq!(decode(b"\xff\xfe").unwrap_err().reason, Reason::InvalidJson);
        assert_eq!(reason(&format!("{{{ok}}}")), Reason::MissingField);
        assert_eq!(
            reason(&format!("{{\"ip\":null,{ok}}}")),
            Reason::MissingField
        );
        assert_eq!(
            reason(&format!("{{\"ip\":7,{ok}}}")),
            Reason::InvalidFieldType
        );
        assert_eq!(
            reason(&format!("{{\"ip\":\"1.1.1\",{ok}}}")),
            Reason::InvalidIp
        );
        assert_eq!(
            reason(&format!("{{\"ip\":\"fe80::1%eth0\",{ok}}}")),
            Reason::InvalidIp
        );
        let base = |port: &str, service: &str, ts: &str, v: &str, data: &str| {
            format!(
                r#"{{"ip":"1.2.3.4","port":{port},"service":{service},"timestamp":{ts},"data_version":{v},"data":{data}}}"#
            )
        };
        let d2 = r#"{"response_str":"x"}"#;
        assert_eq!(
            reason(&base("65536", "\"S\"", "1", "2", d2)),
            Reason::PortOutOfRange
        );
        assert_eq!(
            reason(&base("-1", "\"S\"", "1", "2", d2)),
            Reason::PortOutOfRange
        );
        assert_eq!(
            reason(&base("18446744073709551615", "\"S\"", "1", "2", d2)),
            Reason::PortOutOfRange
        );
        assert_eq!(
            reason(&base("\"80\"", "\"S\"", "1", "2", d2)),
            Reason::InvalidFieldType
        );
        assert_eq!(
            reason(&base("80.5", "\"S\"", "1", "2", d2)),
            Reason::InvalidFieldType
        );
        assert_eq!(
            reason(&base("80", "\"\"", "1", "2", d2)),
            Reason::EmptyService
        );
        assert_eq!(
            reason(&base("80", "5", "1", "2", d2)),
            Reason::InvalidFieldType
        );
        assert_eq!(
            reason(&base("80", "\"S\"", "1e3", "2", d2)),
            Reason::InvalidFieldType
        );
        assert_eq!(
            reason(&base("80", "\"S\"", "99999999999999", "2", d2)),
            Reason::TimestampOutOfRange
        );
        assert_eq!(
            reason(&base("80", "\"S\"", "1", "3", d2)),
            Reason::UnknownDataVersion
        );
        assert_eq!(
            reason(&base("80", "\"S\"", "1", "1", d2)),
            Reason::MissingResponse
        );
        assert_eq!(
            reason(&base("80", "\"S\"", "1", "2", "{}")),
            Reason::MissingResponse
        );
        assert_eq!(
            reason(&base("80", "\"S\"", "1", "2", "[]")),
            Reason::InvalidFieldType
        );
        assert_eq!(
            reason(&base(
                "80",
                "\"S\"",
                "1",
                "1",
                r#"{"response_bytes_utf8":"@@@"}"#
            )),
            Reason::InvalidBase64
        );
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
