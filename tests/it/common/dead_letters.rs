//! For [`crate::dead_letters`]: dead letters and rows written straight into a test database, as an
//! older ingester would have left them, and `mini-scan dead-letters ...` run as a child process.

use std::collections::BTreeMap;
use std::time::Duration;

use super::scans::Key;
use super::{TestDb, binary_command, run_to_completion};

/// One dead letter to insert.
#[derive(Clone, Debug)]
pub struct Letter {
    pub id: String,
    pub reason: String,
    pub detail: String,
    pub payload: Vec<u8>,
    /// Publish time in Unix microseconds; `None` as very old rows may have.
    pub published_us: Option<i64>,
    /// How long before now it was received.
    pub received_ago: Duration,
}

impl Letter {
    pub fn new(id: &str, reason: &str, detail: &str, payload: Vec<u8>, published_us: i64) -> Self {
        Self {
            id: id.to_owned(),
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            payload,
            published_us: Some(published_us),
            received_ago: Duration::ZERO,
        }
    }

    pub fn received_ago(mut self, ago: Duration) -> Self {
        self.received_ago = ago;
        self
    }
}

/// A row of `scan_results` as an ingester would have written it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub ip: String,
    pub port: i32,
    pub service: String,
    pub last_scanned: i64,
    pub response: String,
    pub published_us: i64,
    pub message_id: String,
}

impl Stored {
    pub fn key(&self) -> Key {
        (self.ip.clone(), self.port, self.service.clone())
    }

    /// Newest wins: `(last_scanned, published_at, message_id bytewise)`.
    pub fn order(&self) -> (i64, i64, &[u8]) {
        (
            self.last_scanned,
            self.published_us,
            self.message_id.as_bytes(),
        )
    }
}

const EPOCH_US: &str = "timestamptz 'epoch' + $1::int8 * interval '1 microsecond'";

pub async fn insert_letters(db: &TestDb, letters: &[Letter]) {
    let client = db.client().await;
    let sql = format!(
        "INSERT INTO dead_letters (message_id, reason, detail, payload, published_at, received_at) \
         VALUES ($2, $3, $4, $5, CASE WHEN $1::int8 IS NULL THEN NULL ELSE {EPOCH_US} END, \
                 now() - $6::float8 * interval '1 second')"
    );
    for l in letters {
        client
            .execute(
                &sql,
                &[
                    &l.published_us,
                    &l.id,
                    &l.reason,
                    &l.detail,
                    &l.payload,
                    &l.received_ago.as_secs_f64(),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("inserting dead letter {}: {e}", l.id));
    }
}

pub async fn insert_rows(db: &TestDb, rows: &[Stored]) {
    let client = db.client().await;
    let sql = format!(
        "INSERT INTO scan_results (ip, port, service, last_scanned, response, published_at, message_id) \
         VALUES ($2::text::inet, $3, $4, to_timestamp($5::int8), $6, {EPOCH_US}, $7)"
    );
    for r in rows {
        client
            .execute(
                &sql,
                &[
                    &r.published_us,
                    &r.ip,
                    &r.port,
                    &r.service,
                    &r.last_scanned,
                    &r.response,
                    &r.message_id,
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("inserting row {r:?}: {e}"));
    }
}

/// `scan_results` in [`Stored`] form, by key.
pub async fn stored_rows(db: &TestDb) -> BTreeMap<Key, Stored> {
    db.rows()
        .await
        .into_iter()
        .map(|r| {
            let s = Stored {
                ip: r.ip,
                port: r.port,
                service: r.service,
                last_scanned: r.last_scanned,
                response: r.response,
                published_us: r.published_at_us,
                message_id: r.message_id,
            };
            (s.key(), s)
        })
        .collect()
}

/// Newest wins over `rows`, one per key.
pub fn newest(rows: impl IntoIterator<Item = Stored>) -> BTreeMap<Key, Stored> {
    let mut table: BTreeMap<Key, Stored> = BTreeMap::new();
    for row in rows {
        match table.get(&row.key()) {
            Some(have) if have.order() >= row.order() => {}
            _ => {
                table.insert(row.key(), row);
            }
        }
    }
    table
}

/// `mini-scan dead-letters <args>` on `db`, its output captured.
pub fn command(db: &TestDb, args: &[&str]) -> tokio::process::Command {
    let mut cmd = binary_command();
    cmd.arg("dead-letters")
        .args(args)
        .env("DATABASE_URL", &db.url);
    cmd
}

/// Runs `mini-scan dead-letters <args>` to success; returns stdout as JSON when `--json` is
/// among `args`, else as a string.
pub async fn run(db: &TestDb, args: &[&str]) -> serde_json::Value {
    let out = run_to_completion(
        command(db, args),
        Duration::from_secs(120),
        &format!("mini-scan dead-letters {}", args.join(" ")),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if args.contains(&"--json") {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    } else {
        serde_json::Value::String(stdout)
    }
}

/// `(message_id, reason, detail)` of every dead letter.
pub async fn letters(db: &TestDb) -> Vec<(String, String, String)> {
    db.dead_letters()
        .await
        .into_iter()
        .map(|d| (d.message_id, d.reason, d.detail))
        .collect()
}
