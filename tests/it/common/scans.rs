//! Scan messages as the scanners publish them, and the table they must converge to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// `(ip as PostgreSQL's host() prints it, port, service)`: the primary key of `scan_results`.
pub type Key = (String, i32, String);

/// The stored table in comparable form: `key -> (last_scanned, exact response bytes)`.
pub type Table = BTreeMap<Key, (i64, Vec<u8>)>;

/// One observation, before it is encoded as a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub ip: String,
    pub port: u16,
    pub service: String,
    pub timestamp: i64,
    pub response: Vec<u8>,
}

impl Scan {
    pub fn new(
        ip: &str,
        port: u16,
        service: &str,
        timestamp: i64,
        response: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            ip: ip.to_owned(),
            port,
            service: service.to_owned(),
            timestamp,
            response: response.into(),
        }
    }

    /// The row key, with the address in canonical form (so `::1` and `0:0:0:0:0:0:0:1` agree).
    pub fn key(&self) -> Key {
        let ip: IpAddr = self
            .ip
            .parse()
            .unwrap_or_else(|e| panic!("test data has an invalid ip {:?}: {e}", self.ip));
        (ip.to_string(), i32::from(self.port), self.service.clone())
    }

    /// `data_version: 1`: the response as base64 of its bytes.
    pub fn v1(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "ip": self.ip,
            "port": self.port,
            "service": self.service,
            "timestamp": self.timestamp,
            "data_version": 1,
            "data": { "response_bytes_utf8": BASE64.encode(&self.response) },
        }))
        .expect("serialise a scan")
    }

    /// `data_version: 2`: the response as a JSON string; only for UTF-8 responses.
    pub fn v2(&self) -> Vec<u8> {
        let response = std::str::from_utf8(&self.response)
            .unwrap_or_else(|_| panic!("a V2 message needs a UTF-8 response: {self:?}"));
        serde_json::to_vec(&json!({
            "ip": self.ip,
            "port": self.port,
            "service": self.service,
            "timestamp": self.timestamp,
            "data_version": 2,
            "data": { "response_str": response },
        }))
        .expect("serialise a scan")
    }

    /// V2 when the response is UTF-8 and a coin says so, V1 otherwise.
    pub fn either_version(&self, rng: &mut StdRng) -> Vec<u8> {
        if std::str::from_utf8(&self.response).is_ok() && rng.random_bool(0.5) {
            self.v2()
        } else {
            self.v1()
        }
    }
}

/// The table `scans` must converge to: per key, the scan with the greatest timestamp. Panics if
/// one key has two different scans with the same timestamp, since then the winner depends on the
/// publish time, which the generated data must not rely on.
pub fn expected_table(scans: &[Scan]) -> Table {
    let mut table: Table = BTreeMap::new();
    for scan in scans {
        match table.get(&scan.key()) {
            Some((ts, bytes)) if *ts == scan.timestamp => assert_eq!(
                bytes,
                &scan.response,
                "test data has two different scans of {:?} at the same timestamp",
                scan.key()
            ),
            Some((ts, _)) if *ts > scan.timestamp => {}
            _ => {
                table.insert(scan.key(), (scan.timestamp, scan.response.clone()));
            }
        }
    }
    table
}

/// `Ok` when `actual` equals `expected`, otherwise a summary of the differences (counts and the
/// first few of each kind) for a failure message.
pub fn compare_tables(actual: &Table, expected: &Table) -> Result<(), String> {
    if actual == expected {
        return Ok(());
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, want)| {
            actual
                .get(k)
                .filter(|got| *got != want)
                .map(|got| (k, got, want))
        })
        .collect();
    let mut out = format!(
        "{} rows, {} expected: {} missing, {} unexpected, {} with the wrong value",
        actual.len(),
        expected.len(),
        missing.len(),
        extra.len(),
        wrong.len()
    );
    for k in missing.iter().take(3) {
        let _ = write!(out, "\n  missing {k:?}");
    }
    for k in extra.iter().take(3) {
        let _ = write!(out, "\n  unexpected {k:?}");
    }
    for (k, got, want) in wrong.iter().take(3) {
        let _ = write!(
            out,
            "\n  {k:?}: got ts {} {:?}, want ts {} {:?}",
            got.0,
            String::from_utf8_lossy(&got.1),
            want.0,
            String::from_utf8_lossy(&want.1)
        );
    }
    Err(out)
}

/// A v2 message whose service name is too long for the primary key's btree index (SQLSTATE
/// 54000): random letters do not compress, so the entry stays far above btree's ~2.7 kB limit.
pub fn unindexable_scan(seed: &str) -> Vec<u8> {
    let mut rng = seeded_rng(seed);
    let huge_service: String = (0..10_000)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    Scan::new("203.0.113.7", 80, &huge_service, 1_700_000_000, "boom").v2()
}

/// One batch's worth of payloads: 40 valid scans of distinct keys with the
/// [`unindexable_scan`] inserted at position 17 (the bisection has to find it
/// in the middle). Returns the payloads and the poison payload.
pub fn poisoned_batch(seed: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let poison = unindexable_scan(seed);
    let mut payloads: Vec<Vec<u8>> = (0..40u16)
        .map(|i| {
            Scan::new(
                "203.0.113.8",
                1000 + i,
                "HTTP",
                1_700_000_000,
                format!("ok {i}"),
            )
            .v1()
        })
        .collect();
    payloads.insert(17, poison.clone());
    (payloads, poison)
}

/// A seeded generator, printing the seed so a failure can be replayed with `MINISCAN_TEST_SEED`.
pub fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("MINISCAN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("{test}: MINISCAN_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// `keys` distinct keys, each observed `per_key` times at distinct timestamps, shuffled. Some
/// responses are not UTF-8 or hold NUL bytes, so the exact-bytes path is exercised too.
pub fn generate(rng: &mut StdRng, keys: usize, per_key: usize) -> Vec<Scan> {
    const SERVICES: [&str; 4] = ["HTTP", "SSH", "DNS", "TLS"];
    const PORTS: [u16; 4] = [22, 80, 443, 8080];
    let mut scans = Vec::with_capacity(keys * per_key);
    for k in 0..keys {
        // Distinct keys: the index spreads over ip, port and service.
        let ip = format!("10.{}.{}.{}", k / 65_536 % 256, k / 256 % 256, k % 256);
        let port = PORTS[k % PORTS.len()];
        let service = SERVICES[(k / PORTS.len()) % SERVICES.len()];
        let mut timestamps: Vec<i64> = (0..per_key as i64 * 10).collect();
        timestamps.shuffle(rng);
        for &offset in &timestamps[..per_key] {
            let timestamp = 1_700_000_000 + offset;
            let mut response = format!("key {k} at {timestamp} ").into_bytes();
            if rng.random_bool(0.1) {
                response.extend_from_slice(&[0xff, 0x00, 0xc3]);
            }
            let filler = *[b'a', b'\t', b'\\', b'\n'].choose(rng).expect("non-empty");
            response.extend(std::iter::repeat_n(filler, rng.random_range(0..20)));
            scans.push(Scan::new(&ip, port, service, timestamp, response));
        }
    }
    scans.shuffle(rng);
    scans
}
