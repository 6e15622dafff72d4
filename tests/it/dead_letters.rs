//! `mini-scan dead-letters stats | replay | purge` against real PostgreSQL, run as the real binary.
//!
//! Dead letters are inserted as an older ingester would have left them (e.g. `rejected_by_database`
//! or `unknown_data_version` for scans that decode and fit today), next to rows already in
//! `scan_results`, and the tests check the table newest-wins would give, the dead letters that stay
//! (with today's reasons), the reports and the metrics file.
//!
//! Longer than our usual 400 lines: one file for the three commands, which share the fixtures
//! (`mixed`, `many`) and the oracle (`newest`); the helpers that other areas could use are in
//! [`crate::common::dead_letters`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common;
use crate::common::dead_letters::{
    Letter, Stored, command, insert_letters, insert_rows, letters, newest, run, stored_rows,
};
use crate::common::{Scan, TestDb};
use mini_scan::stages::decode::MALFORMED;
use rand::Rng as _;
use tokio::io::AsyncBufReadExt as _;

const T: i64 = 1_700_000_000;
const P: i64 = T * 1_000_000;

/// A scan as a dead letter stored with `reason`, and the row it makes if it wins.
fn letter(id: &str, reason: &str, scan: &Scan, v1: bool, published_us: i64) -> (Letter, Stored) {
    let payload = if v1 { scan.v1() } else { scan.v2() };
    let row = Stored {
        ip: scan.key().0,
        port: i32::from(scan.port),
        service: scan.service.clone(),
        last_scanned: scan.timestamp,
        response: String::from_utf8(scan.response.clone()).unwrap(),
        published_us,
        message_id: id.to_owned(),
    };
    let detail = match reason {
        "unknown_data_version" => "`data_version` 2 is not 1 or 2",
        _ => "54000: index row size 3016 exceeds btree version 4 maximum 2704",
    };
    (Letter::new(id, reason, detail, payload, published_us), row)
}

/// A v2 scan whose service name is too long for the primary key's btree index (SQLSTATE 54000):
/// random letters do not compress.
fn unindexable() -> Vec<u8> {
    let mut rng = common::scans::seeded_rng("dead-letters unindexable");
    let huge: String = (0..10_000)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    Scan::new("203.0.113.7", 80, &huge, T, "boom").v2()
}

fn row(ip: &str, ts: i64, response: &str, published_us: i64, id: &str) -> Stored {
    Stored {
        ip: ip.to_owned(),
        port: 80,
        service: "HTTP".to_owned(),
        last_scanned: ts,
        response: response.to_owned(),
        published_us,
        message_id: id.to_owned(),
    }
}

/// Every malformed example, stored with a stale reason and detail.
fn malformed() -> Vec<Letter> {
    MALFORMED
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Letter::new(
                &format!("mal-{i:02}"),
                "invalid_json",
                "stale",
                m.data.to_vec(),
                P,
            )
        })
        .collect()
}

/// Asserts each malformed letter is kept with today's reason and detail.
fn assert_refreshed(kept: &BTreeMap<String, (String, String)>) {
    for (i, m) in MALFORMED.iter().enumerate() {
        let (reason, detail) = &kept[&format!("mal-{i:02}")];
        assert_eq!(reason, m.reason.as_str(), "mal-{i:02}");
        assert!(
            detail.contains(m.detail),
            "mal-{i:02}: {detail:?} lacks {:?}",
            m.detail
        );
    }
}

fn kept(letters: Vec<(String, String, String)>) -> BTreeMap<String, (String, String)> {
    letters.into_iter().map(|(id, r, d)| (id, (r, d))).collect()
}

/// The mixed world of the first tests: rows in the table, dead letters that decode now (older,
/// newer and tied with those rows, two of one key, one without a publish time), ones still
/// malformed and one the database still rejects. Returns the rows newest-wins must give.
async fn mixed(db: &TestDb) -> BTreeMap<common::Key, Stored> {
    let table = vec![
        row("192.0.2.1", T + 20, "table newer", P, "row-a"),
        row("192.0.2.2", T, "table older", P, "row-b"),
        row("192.0.2.3", T + 10, "table tie", P, "m-5"),
    ];
    insert_rows(db, &table).await;
    let scan = |ip: &str, ts: i64, r: &str| Scan::new(ip, 80, "HTTP", ts, r);
    let decodable = [
        letter(
            "dl-a",
            "rejected_by_database",
            &scan("192.0.2.1", T + 10, "older than the table"),
            true,
            P,
        ),
        letter(
            "dl-b",
            "unknown_data_version",
            &scan("192.0.2.2", T + 10, "newer than the table"),
            false,
            P,
        ),
        letter(
            "dl-c",
            "rejected_by_database",
            &scan("192.0.2.4", T, "no row yet"),
            true,
            P,
        ),
        // Same timestamp and publish time as the table's row: the greater message id wins.
        letter(
            "m-9",
            "rejected_by_database",
            &scan("192.0.2.3", T + 10, "tie, greater id"),
            true,
            P,
        ),
        // Same timestamp, published earlier: loses whatever its id.
        letter(
            "zz-tie",
            "rejected_by_database",
            &scan("192.0.2.3", T + 10, "tie, earlier"),
            true,
            P - 1,
        ),
        letter(
            "dl-e1",
            "rejected_by_database",
            &scan("192.0.2.5", T, "e older"),
            true,
            P,
        ),
        letter(
            "dl-e2",
            "rejected_by_database",
            &scan("192.0.2.5", T + 5, "e newer"),
            false,
            P,
        ),
    ];
    let mut all: Vec<Letter> = decodable.iter().map(|(l, _)| l.clone()).collect();
    all.push(Letter::new(
        "dl-poison",
        "rejected_by_database",
        "old detail",
        unindexable(),
        P,
    ));
    all.extend(malformed());
    insert_letters(db, &all).await;
    newest(
        table
            .into_iter()
            .chain(decodable.into_iter().map(|(_, r)| r)),
    )
}

async fn migrated() -> TestDb {
    let db = TestDb::create_on_shared().await;
    db.migrate().await;
    db
}

#[tokio::test]
async fn replay_writes_what_decodes_now_newest_wins_and_keeps_what_still_fails() {
    let db = migrated().await;
    let want = mixed(&db).await;
    let metrics = tempfile::tempdir().unwrap();
    let prom = metrics.path().join("replay.prom");
    let report = run(
        &db,
        &[
            "replay",
            "--json",
            "--batch-size",
            "3",
            "--metrics-file",
            prom.to_str().unwrap(),
        ],
    )
    .await;

    assert_eq!(
        stored_rows(&db).await,
        want,
        "newest wins, ties by publish time then message id"
    );
    let still = MALFORMED.len() as u64 + 1;
    let total = &report["total"];
    assert_eq!(total["seen"], 7 + still);
    assert_eq!(
        total["stored"].as_u64().unwrap() + total["superseded"].as_u64().unwrap(),
        7
    );
    assert!(
        total["superseded"].as_u64().unwrap() >= 2,
        "dl-a and zz-tie lose: {report}"
    );
    assert_eq!(total["still_failing"], still);
    assert_eq!(report["by_reason"]["unknown_data_version"]["stored"], 1);
    assert_eq!(report["still_failing_now"]["rejected_by_database"], 1);

    let kept = kept(letters(&db).await);
    assert_eq!(kept.len() as u64, still, "{kept:#?}");
    assert_refreshed(&kept);
    let (reason, detail) = &kept["dl-poison"];
    assert_eq!(reason, "rejected_by_database");
    assert!(detail.starts_with("54000"), "{detail}");

    let text = std::fs::read_to_string(&prom).unwrap();
    for line in [
        "miniscan_dead_letters_last_run_messages{command=\"replay\",result=\"replayed\"} 7"
            .to_owned(),
        format!(
            "miniscan_dead_letters_last_run_messages{{command=\"replay\",result=\"still_failing\"}} {still}"
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    // Again: nothing left to replay, nothing changes.
    let again = run(&db, &["replay", "--json"]).await;
    assert_eq!(again["total"]["seen"], still);
    assert_eq!(again["total"]["still_failing"], still);
    assert_eq!(stored_rows(&db).await, want);
    assert_eq!(kept.len(), letters(&db).await.len());
}

#[tokio::test]
async fn a_dead_letter_without_a_publish_time_replays_with_its_receive_time() {
    let db = migrated().await;
    let (mut l, _) = letter(
        "old-row",
        "rejected_by_database",
        &Scan::new("192.0.2.9", 22, "SSH", T, "x"),
        true,
        P,
    );
    l.published_us = None;
    insert_letters(&db, &[l]).await;
    let client = db.client().await;
    let received: i64 = client
        .query_one(
            "SELECT (extract(epoch FROM received_at) * 1000000)::int8 FROM dead_letters",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    run(&db, &["replay"]).await;
    let rows = stored_rows(&db).await;
    let row = rows.values().next().expect("replayed");
    assert_eq!(
        (row.published_us, row.message_id.as_str()),
        (received, "old-row")
    );
}

#[tokio::test]
async fn dry_run_changes_nothing_and_predicts_the_run() {
    let db = migrated().await;
    mixed(&db).await;
    let (rows, dead) = (stored_rows(&db).await, letters(&db).await);
    let dry = run(
        &db,
        &["replay", "--dry-run", "--json", "--batch-size", "100"],
    )
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(stored_rows(&db).await, rows);
    assert_eq!(
        letters(&db).await,
        dead,
        "not even the reasons are refreshed"
    );
    let real = run(&db, &["replay", "--json", "--batch-size", "100"]).await;
    assert_eq!(
        dry["total"], real["total"],
        "one batch: the dry run says exactly what happens"
    );
    assert_eq!(dry["still_failing_now"], real["still_failing_now"]);
    let text = run(&db, &["replay", "--dry-run"]).await;
    assert!(
        text.as_str()
            .unwrap()
            .starts_with("dry run: nothing was written"),
        "{text}"
    );
}

/// `keys` keys, each with `per_key` dead letters of random timestamps, and a row for every other
/// key; plus the malformed examples. Returns the letters that decode (as rows) and the table rows.
async fn many(db: &TestDb, keys: u16, per_key: usize) -> (Vec<Stored>, Vec<Stored>) {
    let mut rng = common::scans::seeded_rng("dead-letters-many");
    let (mut letters, mut decodable) = (malformed(), Vec::new());
    for k in 0..keys {
        let ip = format!("198.51.100.{}", k % 250);
        for i in 0..per_key {
            let s = Scan::new(
                &ip,
                1000 + k,
                "HTTP",
                T + rng.random_range(0..50),
                format!("k{k} i{i}"),
            );
            let (l, r) = letter(
                &format!("k{k:03}-{i}"),
                "rejected_by_database",
                &s,
                true,
                P + rng.random_range(0..3),
            );
            letters.push(l);
            decodable.push(r);
        }
    }
    let table: Vec<Stored> = (0..keys)
        .step_by(2)
        .map(|k| Stored {
            port: i32::from(1000 + k),
            ..row(
                &format!("198.51.100.{}", k % 250),
                T + 25,
                "table",
                P,
                "row",
            )
        })
        .collect();
    insert_rows(db, &table).await;
    insert_letters(db, &letters).await;
    (decodable, table)
}

/// Starts a replay of one dead letter per batch with a progress line after each, and returns once
/// the first line is out (a batch is committed), with the rest of stderr collected meanwhile.
async fn replay_until_progress(
    db: &TestDb,
    extra: &[&str],
) -> (tokio::process::Child, tokio::task::JoinHandle<Vec<String>>) {
    let mut args = vec!["replay", "--batch-size", "1", "--progress-secs", "0"];
    args.extend(extra);
    let mut cmd = command(db, &args);
    cmd.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("replaying dead letters") {
            break;
        }
    }
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    (child, rest)
}

#[tokio::test]
async fn sigint_stops_a_replay_between_batches_and_says_so_in_one_line() {
    let db = migrated().await;
    let (decodable, table) = many(&db, 60, 4).await;
    let (child, stderr) = replay_until_progress(&db, &["--json"]).await;
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: signalling a child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = child.wait_with_output().await.unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr:#?}");
    let last = stderr.last().unwrap();
    assert!(
        last.starts_with("mini-scan: interrupted after"),
        "{stderr:#?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["interrupted"], true);
    let left = letters(&db).await.len() as u64;
    let replayed = report["total"]["stored"].as_u64().unwrap()
        + report["total"]["superseded"].as_u64().unwrap();
    assert_eq!(
        left,
        (decodable.len() + MALFORMED.len()) as u64 - replayed,
        "the report counts what was committed"
    );
    assert!(replayed < decodable.len() as u64, "stopped before the end");

    run(&db, &["replay"]).await;
    assert_eq!(
        stored_rows(&db).await,
        newest(table.into_iter().chain(decodable))
    );
}

#[tokio::test]
async fn a_killed_replay_leaves_every_batch_whole_and_a_rerun_converges() {
    let db = migrated().await;
    let (decodable, table) = many(&db, 60, 4).await;
    let (mut child, _stderr) = replay_until_progress(&db, &[]).await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed before the end: {status}");

    // Whatever was done is whole: a letter is gone exactly when its scan took part in newest-wins.
    let left: BTreeSet<String> = letters(&db).await.into_iter().map(|l| l.0).collect();
    let replayed: Vec<Stored> = decodable
        .iter()
        .filter(|r| !left.contains(&r.message_id))
        .cloned()
        .collect();
    eprintln!(
        "replayed before the kill: {} of {}",
        replayed.len(),
        decodable.len()
    );
    assert!(
        replayed.len() < decodable.len(),
        "the kill came before the end"
    );
    assert_eq!(
        stored_rows(&db).await,
        newest(table.iter().cloned().chain(replayed))
    );

    let report = run(&db, &["replay", "--json", "--batch-size", "7"]).await;
    assert_eq!(report["total"]["still_failing"], MALFORMED.len());
    assert_eq!(
        stored_rows(&db).await,
        newest(table.into_iter().chain(decodable))
    );
    assert_refreshed(&kept(letters(&db).await));
}

#[tokio::test]
async fn two_replays_at_once_replay_each_letter_once() {
    let db = migrated().await;
    let (decodable, table) = many(&db, 50, 4).await;
    let args = ["replay", "--json", "--batch-size", "1"];
    let (a, b) = tokio::join!(run(&db, &args), run(&db, &args));
    let replayed = |r: &serde_json::Value| {
        r["total"]["stored"].as_u64().unwrap() + r["total"]["superseded"].as_u64().unwrap()
    };
    assert_eq!(
        replayed(&a) + replayed(&b),
        decodable.len() as u64,
        "{a}\n{b}"
    );
    assert_eq!(
        stored_rows(&db).await,
        newest(table.into_iter().chain(decodable))
    );
    let kept = kept(letters(&db).await);
    assert_eq!(kept.len(), MALFORMED.len());
    assert_refreshed(&kept);
}

#[tokio::test]
async fn letters_another_transaction_holds_are_skipped_then_replayed() {
    let db = migrated().await;
    let (decodable, table) = many(&db, 10, 2).await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM dead_letters WHERE message_id IN ('k003-0', 'k007-1') FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let first = run(&db, &["replay", "--json", "--batch-size", "4"]).await;
    assert_eq!(
        first["total"]["seen"],
        (decodable.len() - 2 + MALFORMED.len()) as u64
    );
    let left: Vec<String> = letters(&db)
        .await
        .into_iter()
        .map(|l| l.0)
        .filter(|id| id.starts_with('k'))
        .collect();
    assert_eq!(left, ["k003-0", "k007-1"]);
    tx.rollback().await.unwrap();
    run(&db, &["replay"]).await;
    assert_eq!(
        stored_rows(&db).await,
        newest(table.into_iter().chain(decodable))
    );
}

#[tokio::test]
async fn replay_takes_only_the_reasons_and_times_asked() {
    let db = migrated().await;
    let scan = |port| Scan::new("192.0.2.7", port, "HTTP", T, "x");
    let (a, _) = letter("a", "unknown_data_version", &scan(1), false, P);
    let (b, _) = letter("b", "rejected_by_database", &scan(2), true, P);
    let (c, _) = letter("c", "rejected_by_database", &scan(3), true, P);
    insert_letters(&db, &[a, b, c.received_ago(Duration::from_secs(7200))]).await;
    let r = run(
        &db,
        &[
            "replay",
            "--json",
            "--reason",
            "rejected_by_database",
            "--since",
            "1h",
        ],
    )
    .await;
    assert_eq!(r["total"]["stored"], 1);
    let left: Vec<String> = letters(&db).await.into_iter().map(|l| l.0).collect();
    assert_eq!(left, ["a", "c"]);
}

#[tokio::test]
async fn purge_deletes_only_what_is_old_enough_and_of_the_reason() {
    let db = migrated().await;
    let day = Duration::from_secs(86_400);
    let l = |id: &str, reason: &str, ago: Duration| {
        Letter::new(id, reason, "d", b"x".to_vec(), P).received_ago(ago)
    };
    insert_letters(
        &db,
        &[
            l("old-json", "invalid_json", 40 * day),
            l("old-db", "rejected_by_database", 40 * day),
            l("mid-json", "invalid_json", 10 * day),
            l("mid-db", "rejected_by_database", 10 * day),
            l("new-json", "invalid_json", Duration::from_secs(3600)),
        ],
    )
    .await;
    let ids = async || {
        letters(&db)
            .await
            .into_iter()
            .map(|l| l.0)
            .collect::<Vec<_>>()
    };

    let dry = run(
        &db,
        &["purge", "--older-than", "30days", "--dry-run", "--json"],
    )
    .await;
    assert_eq!(dry["purged"], 2);
    assert_eq!(ids().await.len(), 5, "a dry run deletes nothing");

    let metrics = tempfile::tempdir().unwrap();
    let prom = metrics.path().join("purge.prom");
    let r = run(
        &db,
        &[
            "purge",
            "--older-than",
            "30days",
            "--batch-size",
            "1",
            "--json",
            "--metrics-file",
            prom.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r["purged"], 2);
    assert_eq!(
        r["by_reason"],
        serde_json::json!({"invalid_json": 1, "rejected_by_database": 1})
    );
    assert_eq!(ids().await, ["mid-db", "mid-json", "new-json"]);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains(
            "miniscan_dead_letters_last_run_messages{command=\"purge\",result=\"purged\"} 2"
        ),
        "{text}"
    );

    let r = run(
        &db,
        &[
            "purge",
            "--older-than",
            "7d",
            "--reason",
            "invalid_json",
            "--json",
        ],
    )
    .await;
    assert_eq!(r["purged"], 1);
    assert_eq!(ids().await, ["mid-db", "new-json"]);
}

#[tokio::test]
async fn stats_counts_by_reason_with_ages_and_bytes() {
    let db = migrated().await;
    let empty = run(&db, &["stats", "--json"]).await;
    assert_eq!(empty["total"]["count"], 0);
    assert_eq!(empty["reasons"], serde_json::json!([]));

    let l = |id: &str, reason: &str, bytes: usize, hours: u64| {
        Letter::new(id, reason, "d", vec![b'x'; bytes], P)
            .received_ago(Duration::from_secs(hours * 3600))
    };
    insert_letters(
        &db,
        &[
            l("a", "invalid_json", 10, 2),
            l("b", "invalid_json", 5, 1),
            l("c", "rejected_by_database", 100, 3),
        ],
    )
    .await;
    let s = run(&db, &["stats", "--json"]).await;
    let reasons = s["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 2);
    assert_eq!(
        (
            &reasons[0]["reason"],
            &reasons[0]["count"],
            &reasons[0]["payload_bytes"]
        ),
        (&"invalid_json".into(), &2.into(), &15.into())
    );
    assert!(reasons[0]["oldest"].as_str().unwrap() < reasons[0]["newest"].as_str().unwrap());
    assert_eq!(
        (&reasons[1]["count"], &reasons[1]["payload_bytes"]),
        (&1.into(), &100.into())
    );
    assert_eq!(
        (&s["total"]["count"], &s["total"]["payload_bytes"]),
        (&3.into(), &115.into())
    );
    assert_eq!(s["total"]["oldest"], reasons[1]["oldest"]);
    assert_eq!(s["total"]["newest"], reasons[0]["newest"]);

    let table = run(&db, &["stats"]).await;
    let table = table.as_str().unwrap();
    assert!(
        table.lines().next().unwrap().contains("payload bytes"),
        "{table}"
    );
    let total = table
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap();
    assert!(total.split_whitespace().any(|w| w == "115"), "{table}");
}

#[tokio::test]
async fn the_ingest_role_is_told_in_one_line_to_use_the_owner() {
    let db = migrated().await;
    let role = common::random_name("ingest");
    db.client()
        .await
        .batch_execute(&format!("CREATE ROLE {role}"))
        .await
        .unwrap();
    let mut grant = common::binary_command();
    grant
        .args(["migrate", "--grant-ingest-to", &role])
        .env("DATABASE_URL", &db.url);
    common::run_to_completion(grant, Duration::from_secs(60), "migrate --grant-ingest-to").await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let as_ingest = format!("{}{sep}options=-c%20role%3D{role}", db.url);
    for args in [&["replay"][..], &["purge", "--older-than", "1d"]] {
        let mut cmd = command(&db, args);
        cmd.env("DATABASE_URL", &as_ingest);
        let out = cmd.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            last.starts_with("mini-scan: ") && last.contains("DELETE on dead_letters"),
            "{stderr}"
        );
        assert!(
            last.contains("schema owner") && last.contains(&role),
            "{stderr}"
        );
    }
    let _ = db
        .client()
        .await
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
}

#[tokio::test]
async fn a_replay_while_an_ingester_writes_the_same_keys_converges_to_newest_wins() {
    use rand::seq::SliceRandom as _;
    let ctx = common::TestContext::new().await;
    let mut rng = common::scans::seeded_rng("dead-letters-with-ingester");
    let (mut dead, mut published, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..50u16 {
        // Eight distinct timestamps per key, four replayed and four published, in a random split.
        let mut ts: Vec<i64> = (0..100).collect();
        ts.shuffle(&mut rng);
        for (i, &t) in ts[..8].iter().enumerate() {
            let scan = Scan::new(
                "198.51.100.77",
                2000 + k,
                "HTTP",
                T + t,
                format!("k{k} t{t}"),
            );
            if i < 4 {
                let id = format!("old-{k:02}-{i}");
                dead.push(letter(&id, "rejected_by_database", &scan, true, P).0);
            } else {
                published.push(scan.either_version(&mut rng));
            }
            all.push(scan);
        }
    }
    published.shuffle(&mut rng);
    insert_letters(&ctx.db, &dead).await;
    let ingester = ctx
        .start_ingester(&[("MINISCAN_BATCH_MAX_ROWS", "20")])
        .await;
    let (_, report) = tokio::join!(
        ctx.publish(&published),
        run(&ctx.db, &["replay", "--json", "--batch-size", "5"])
    );
    assert_eq!(report["total"]["seen"], dead.len());
    common::wait_until(
        Duration::from_secs(60),
        "every published scan acked",
        async || {
            ingester.assert_running();
            ingester.acks().await >= published.len() as u64
        },
    )
    .await;
    ingester.stop().await;
    let expected = common::scans::expected_table(&all);
    common::scans::compare_tables(&ctx.table().await, &expected).unwrap();
    assert_eq!(ctx.db.count_dead_letters().await, 0);
}
