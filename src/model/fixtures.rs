//! Values for the unit tests of the stages and the store.

use super::{DeadLetter, Order, Reason, Scan, ScanKey};

/// A scan of key `key` (an address derived from it, port 80, `HTTP`) at `ts`,
/// whose response names its timestamp and message id.
pub(crate) fn scan(key: u16, ts: i64, id: &str) -> Scan {
    let [hi, lo] = key.to_be_bytes();
    Scan {
        key: ScanKey {
            ip: std::net::IpAddr::from([10, 0, hi, lo]),
            port: 80,
            service: "HTTP".into(),
        },
        order: Order {
            timestamp: ts,
            published_micros: 0,
            message_id: id.into(),
        },
        response: format!("{ts}/{id}"),
        response_raw: None,
        payload: Default::default(),
        cached: None,
    }
}

/// A malformed message's dead letter.
pub(crate) fn dead_letter(id: &str) -> DeadLetter {
    DeadLetter {
        message_id: id.into(),
        reason: Reason::InvalidJson,
        detail: "not JSON".into(),
        payload: Default::default(),
        published_micros: 0,
    }
}
