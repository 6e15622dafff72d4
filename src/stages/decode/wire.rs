//! The wire format: parsing one message's JSON into an [`Observation`], one
//! field at a time, in a fixed order (the first fault found decides the
//! reason).

use super::Reason;
use super::rejection::{Rejection, reject};
use super::{MAX_TIMESTAMP, MIN_TIMESTAMP, Observation, render_bytes, render_string};
use crate::stages::ScanKey;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use compact_str::CompactString;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::net::IpAddr;

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

/// Decodes one message's data. A pure function: the core of this stage.
pub fn decode(data: &[u8]) -> Result<Observation, Rejection> {
    let text = std::str::from_utf8(data)
        .map_err(|e| reject(Reason::InvalidJson, format!("not UTF-8: {e}")))?;
    let wire = object(text)?;
    let ip = ip(required(wire.ip, "ip")?)?;
    let port = port(required(wire.port, "port")?)?;
    let service = service(required(wire.service, "service")?)?;
    let timestamp = timestamp(required(wire.timestamp, "timestamp")?)?;
    let version = data_version(required(wire.data_version, "data_version")?)?;
    let (response, response_raw) = response(required(wire.data, "data")?, version)?;
    Ok(Observation {
        key: ScanKey { ip, port, service },
        timestamp,
        response,
        response_raw,
    })
}

/// The top-level object, its fields still raw.
fn object(text: &str) -> Result<Wire<'_>, Rejection> {
    // Serde would also read a struct from a JSON array, positionally.
    if !text.trim_start().starts_with('{') {
        let what = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "not a JSON object"
        } else {
            "not JSON"
        };
        return Err(reject(Reason::InvalidJson, what));
    }
    serde_json::from_str(text).map_err(|e| {
        let what = if e.is_data() {
            "not a JSON object"
        } else {
            "not JSON"
        };
        reject(Reason::InvalidJson, format!("{what}: {e}"))
    })
}

fn ip(raw: &RawValue) -> Result<IpAddr, Rejection> {
    let text = string(raw, "ip", "a string")?;
    text.parse().map_err(|_| {
        reject(
            Reason::InvalidIp,
            format!(
                "`ip` is not an IPv4 or IPv6 address: {:?}",
                truncate(&text, 64)
            ),
        )
    })
}

fn port(raw: &RawValue) -> Result<u16, Rejection> {
    match integer(raw, "port")? {
        IntOrBig::Int(p) if (0..=65535).contains(&p) => Ok(p as u16),
        IntOrBig::Int(p) => Err(reject(
            Reason::PortOutOfRange,
            format!("`port` {p} is outside 0..=65535"),
        )),
        IntOrBig::Big => Err(reject(
            Reason::PortOutOfRange,
            "`port` is outside 0..=65535",
        )),
    }
}

fn service(raw: &RawValue) -> Result<CompactString, Rejection> {
    let service = string(raw, "service", "a string")?;
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
    Ok(CompactString::from(service))
}

fn timestamp(raw: &RawValue) -> Result<i64, Rejection> {
    match integer(raw, "timestamp")? {
        IntOrBig::Int(t) if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&t) => Ok(t),
        _ => Err(reject(
            Reason::TimestampOutOfRange,
            format!(
                "`timestamp` {} is outside years 1 to 9999",
                truncate(raw.get(), 32)
            ),
        )),
    }
}

/// 1 or 2.
fn data_version(raw: &RawValue) -> Result<i64, Rejection> {
    let version = match integer(raw, "data_version")? {
        IntOrBig::Int(v) => v,
        IntOrBig::Big => i64::MAX,
    };
    if version != 1 && version != 2 {
        return Err(reject(
            Reason::UnknownDataVersion,
            format!("`data_version` {} is not 1 or 2", truncate(raw.get(), 32)),
        ));
    }
    Ok(version)
}

/// The response `data` holds for `version`, rendered as text (and its exact
/// bytes where they differ).
fn response(raw: &RawValue, version: i64) -> Result<(String, Option<Vec<u8>>), Rejection> {
    if !raw.get().starts_with('{') {
        return Err(reject(
            Reason::InvalidFieldType,
            format!("`data` must be an object, got {}", truncate(raw.get(), 64)),
        ));
    }
    let data: WireData<'_> = typed(raw, "data", "an object")?;
    if version == 1 {
        let raw = response_field(data.response_bytes_utf8, version, "response_bytes_utf8")?;
        let encoded = string(raw, "data.response_bytes_utf8", "a base64 string")?;
        let bytes = BASE64.decode(encoded.as_bytes()).map_err(|e| {
            reject(
                Reason::InvalidBase64,
                format!("`data.response_bytes_utf8`: {e}"),
            )
        })?;
        Ok(render_bytes(bytes))
    } else {
        let raw = response_field(data.response_str, version, "response_str")?;
        let s: String = typed(raw, "data.response_str", "a string")?;
        Ok(render_string(s))
    }
}

fn response_field<'a>(
    field: Option<&'a RawValue>,
    version: i64,
    name: &str,
) -> Result<&'a RawValue, Rejection> {
    field.filter(|r| r.get() != "null").ok_or_else(|| {
        reject(
            Reason::MissingResponse,
            format!("data_version {version} requires `data.{name}`"),
        )
    })
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

/// A JSON string, borrowed from the message when it has no escapes (serde's
/// `Cow<str>` always allocates), owned when it has.
fn string<'a>(raw: &'a RawValue, name: &str, expected: &str) -> Result<Cow<'a, str>, Rejection> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(text) => Ok(Cow::Borrowed(text)),
        Err(_) => typed::<String>(raw, name, expected).map(Cow::Owned),
    }
}

enum IntOrBig {
    Int(i64),
    /// An integer above `i64::MAX`.
    Big,
}

/// A JSON integer; any other number (`80.5`, `8e1`, `1e30`) is the wrong type.
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

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
