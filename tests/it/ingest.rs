//! End-to-end tests of `mini-scan ingest` on the shared PostgreSQL server and this area's Pub/Sub
//! emulator: what ends up in `scan_results` and `dead_letters` for what was published,
//! and that everything published is acknowledged.
//!
//! Every test gets its own database, topic and subscription (see `common`), runs the real binary,
//! and waits on observable state (rows, `/metrics`) with deadlines, never with sleeps.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mini_scan::stages::decode::{MALFORMED, Malformed, Reason};
use mini_scan::telemetry::names::{
    ACKS_TOTAL, DEAD_LETTERS_TOTAL, MESSAGES_TOTAL, label, outcome, stage,
};
use serde_json::json;

use crate::common;
use crate::common::scans::{
    compare_tables, expected_table, generate, poisoned_batch, seeded_rng, unindexable_scan,
};
use crate::common::{Ingester, PubSub, Scan, TestContext, TestDb, wait_until};

/// Processing a few thousand messages takes seconds; the margin is for a busy two-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

const T0: i64 = 1_700_000_000;

/// Waits until the ingester has acknowledged at least `n` messages.
async fn wait_for_acks(ingester: &Ingester, n: u64) {
    wait_until(CONVERGE_TIMEOUT, &format!("{n} acks"), async || {
        ingester.assert_running();
        let acks = ingester.acks().await;
        if acks >= n {
            Ok(())
        } else {
            Err(format!("{ACKS_TOTAL}{{kind=\"ack\"}} = {acks}"))
        }
    })
    .await;
}

/// Publishes `payloads`, runs an ingester with `env` until it has acknowledged all of them, stops
/// it with SIGTERM (exit 0), and checks that nothing is left on the subscription.
async fn ingest(ctx: &TestContext, payloads: &[Vec<u8>], env: &[(&str, &str)]) -> Ingester {
    ctx.publish(payloads).await;
    let ingester = ctx.start_ingester(env).await;
    wait_for_acks(&ingester, payloads.len() as u64).await;
    ingester.stop().await;
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
    ingester
}

/// The harness on its own, without the binary under test: a database, a topic, a subscription,
/// a message published and pulled back byte for byte, a lease handed back.
#[tokio::test]
async fn harness_smoke() {
    let db = TestDb::create_on_shared().await;
    let one: i32 = db
        .client()
        .await
        .query_one("SELECT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);

    let pubsub = PubSub::shared().await;
    let topic = common::random_name("topic");
    let sub = common::random_name("sub");
    pubsub.create_topic(&topic).await;
    pubsub.create_subscription(&sub, &topic).await;
    let payloads = vec![b"hello".to_vec(), vec![0, 255, b'\n', 0xc3]];
    let ids = pubsub.publish(&topic, &payloads).await;
    assert_eq!(ids.len(), 2);

    let got = pubsub.drain(&sub).await;
    // Leased but not acknowledged still counts as left on the subscription.
    assert_eq!(pubsub.unacked(&sub, &topic).await.len(), 2);
    let mut data: Vec<_> = got.iter().map(|m| m.data.clone()).collect();
    data.sort();
    let mut want = payloads.clone();
    want.sort();
    assert_eq!(data, want);
    for m in &got {
        assert!(
            (now_us() - m.publish_time_us).abs() < 60_000_000,
            "publish time {m:?}"
        );
    }

    let ack_ids: Vec<String> = got.iter().map(|m| m.ack_id.clone()).collect();
    pubsub.modify_ack_deadline(&sub, &ack_ids, 0).await;
    let mut again = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "redelivery after a nack",
        async || {
            again.extend(pubsub.pull(&sub, 10).await);
            again.len() >= 2
        },
    )
    .await;
    let ack_ids: Vec<String> = again.iter().map(|m| m.ack_id.clone()).collect();
    pubsub.acknowledge(&sub, &ack_ids[..1]).await;
    let left = pubsub.unacked(&sub, &topic).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].message_id, again[1].message_id);
    pubsub.acknowledge(&sub, &ack_ids[1..]).await;
    assert!(pubsub.unacked(&sub, &topic).await.is_empty());
    assert!(pubsub.drain(&sub).await.is_empty());
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64
}

#[tokio::test]
async fn v1_and_v2_of_the_same_response_store_the_same_row() {
    let ctx = TestContext::new().await;
    let text = "HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\nhéllo ☃ 𝄞";
    let v1 = Scan::new("192.0.2.1", 80, "HTTP", T0, text);
    let v2 = Scan::new("192.0.2.2", 80, "HTTP", T0, text);
    // One key observed first as V1, then (newer) as V2.
    let older = Scan::new("192.0.2.3", 443, "HTTP", T0, text);
    let newer = Scan::new("192.0.2.3", 443, "HTTP", T0 + 10, text);
    ingest(&ctx, &[v1.v1(), v2.v2(), older.v1(), newer.v2()], &[]).await;

    let rows = ctx.db.rows().await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for row in &rows {
        assert_eq!(row.response, text, "{row:?}");
        assert_eq!(
            row.response_raw, None,
            "a UTF-8 response needs no raw copy: {row:?}"
        );
        assert_eq!(row.bytes, text.as_bytes());
    }
    assert_eq!(rows[2].ip, "192.0.2.3");
    assert_eq!(rows[2].last_scanned, T0 + 10);
    assert_eq!(ctx.db.count_dead_letters().await, 0);
}

#[tokio::test]
async fn out_of_order_and_duplicate_deliveries_converge_to_the_newest() {
    let ctx = TestContext::new().await;
    let mut rng = seeded_rng("out_of_order");
    let scans = generate(&mut rng, 200, 5);
    let expected = expected_table(&scans);
    let (newest, older): (Vec<&Scan>, Vec<&Scan>) = scans
        .iter()
        .partition(|s| expected[&s.key()].0 == s.timestamp);

    // The newest of every key first, each twice, and stored...
    let ingester = ctx.start_ingester(&[]).await;
    let mut first: Vec<Vec<u8>> = newest.iter().map(|s| s.either_version(&mut rng)).collect();
    first.extend(newest.iter().map(|s| s.v1()));
    ctx.publish(&first).await;
    wait_until(CONVERGE_TIMEOUT, "the newest scans stored", async || {
        ingester.assert_running();
        compare_tables(&ctx.table().await, &expected)
    })
    .await;

    // ...then every older one (some twice) and the newest again: nothing may change.
    let mut second: Vec<Vec<u8>> = older.iter().map(|s| s.either_version(&mut rng)).collect();
    second.extend(older.iter().step_by(3).map(|s| s.v1()));
    second.extend(newest.iter().step_by(2).map(|s| s.either_version(&mut rng)));
    ctx.publish(&second).await;
    wait_for_acks(&ingester, (first.len() + second.len()) as u64).await;
    ingester.stop().await;

    compare_tables(&ctx.table().await, &expected)
        .unwrap_or_else(|diff| panic!("older deliveries changed the table: {diff}"));
    assert_eq!(ctx.db.count_dead_letters().await, 0);
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
}

#[tokio::test]
async fn one_key_many_times_in_one_batch_keeps_the_newest() {
    let ctx = TestContext::new().await;
    let mut rng = seeded_rng("one_batch");
    // Three keys, 200 observations each, plus exact duplicates, all waiting before the ingester
    // starts, and a batch large and patient enough to take them in one go.
    let scans = generate(&mut rng, 3, 200);
    let mut payloads: Vec<Vec<u8>> = scans.iter().map(|s| s.either_version(&mut rng)).collect();
    payloads.extend(scans.iter().step_by(4).map(|s| s.v1()));
    let ingester = ingest(
        &ctx,
        &payloads,
        &[
            ("MINISCAN_BATCH_MAX_ROWS", "10000"),
            ("MINISCAN_BATCH_MAX_WAIT_MS", "2000"),
        ],
    )
    .await;

    compare_tables(&ctx.table().await, &expected_table(&scans))
        .unwrap_or_else(|diff| panic!("{diff}"));
    assert_eq!(ctx.db.count_dead_letters().await, 0);
    let log = ingester.log();
    assert!(
        !log.contains("cannot affect row a second time"),
        "one upsert statement held a key twice:\n{}",
        ingester.log_tail(40)
    );
}

/// Asserts that each of `bad` is in `letters` exactly once, with its reason and detail, and that
/// nothing else is.
fn assert_one_dead_letter_each(letters: &[common::postgres::DeadLetter], bad: &[Malformed]) {
    let mut problems = Vec::new();
    for m in bad {
        let shown = String::from_utf8_lossy(m.data);
        let (reason, detail) = (m.reason.as_str(), m.detail);
        let found: Vec<_> = letters.iter().filter(|l| l.payload == m.data).collect();
        match found.as_slice() {
            [one] if one.reason == reason && one.detail.contains(detail) => {}
            [one] => problems.push(format!(
                "{shown}: reason {:?} detail {:?}, want reason {reason:?} with {detail:?} in the detail",
                one.reason, one.detail
            )),
            many => problems.push(format!("{shown}: {} dead letters, want 1", many.len())),
        }
    }
    assert!(
        problems.is_empty(),
        "wrong dead letters:\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(letters.len(), bad.len(), "{letters:#?}");
}

/// Asserts that `miniscan_dead_letters_total` in `metrics` counts `bad` by reason, and that every
/// reason has a series from start-up, at 0 where no message had it.
fn assert_dead_letters_counted(metrics: &str, bad: &[Malformed]) {
    let mut per_reason: BTreeMap<&str, f64> =
        Reason::ALL.iter().map(|r| (r.as_str(), 0.0)).collect();
    for m in bad {
        *per_reason.entry(m.reason.as_str()).or_default() += 1.0;
    }
    for (reason, n) in per_reason {
        let series = format!("{DEAD_LETTERS_TOTAL}{{{}=\"{reason}\"}}", label::REASON);
        let got = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("no series {series}:\n{metrics}"));
        assert_eq!(got.parse::<f64>().ok(), Some(n), "{series}");
    }
}

#[tokio::test]
async fn every_malformed_kind_is_dead_lettered_once_with_its_reason() {
    let ctx = TestContext::new().await;
    // The library's catalogue: several examples of every reason decode gives, each with text its
    // detail must contain.
    let bad = MALFORMED;
    let mut padded = b" \n\t".to_vec();
    padded.extend(Scan::new("198.51.100.4", 80, "HTTP", T0, "whitespace first").v1());
    let good = [
        Scan::new("198.51.100.1", 80, "HTTP", T0, "fine").v1(),
        Scan::new("198.51.100.2", 22, "SSH", T0, "SSH-2.0-OpenSSH").v2(),
        serde_json::to_vec(&json!({
            "ip": "198.51.100.3", "port": 443, "service": "HTTP", "timestamp": T0,
            "data_version": 1, "data": { "response_bytes_utf8": BASE64.encode(b"ok") },
            "extra": { "nested": [1, 2] }, "note": "ignored",
        }))
        .unwrap(),
        padded,
    ];
    let mut payloads: Vec<Vec<u8>> = bad.iter().map(|m| m.data.to_vec()).collect();
    payloads.extend(good.iter().cloned());

    ctx.publish(&payloads).await;
    let ingester = ctx.start_ingester(&[]).await;
    wait_for_acks(&ingester, payloads.len() as u64).await;
    let metrics = ingester.metrics().await;
    ingester.stop().await;
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );

    assert_one_dead_letter_each(&ctx.db.dead_letters().await, bad);
    assert_dead_letters_counted(&metrics, bad);
    let sum =
        |name: &str, labels: &[(&str, &str)]| common::ingester::metric_sum(&metrics, name, labels);
    let n = payloads.len() as f64;
    assert!(
        sum(MESSAGES_TOTAL, &[(label::STAGE, stage::SOURCE)]) >= n,
        "{metrics}"
    );
    assert!(
        sum(MESSAGES_TOTAL, &[(label::STAGE, stage::DECODE)]) >= n,
        "{metrics}"
    );
    assert_eq!(
        sum(ACKS_TOTAL, &[(label::KIND, outcome::NACK)]),
        0.0,
        "a dead letter is recorded and acked, never nacked (that would redeliver it forever)"
    );

    let rows = ctx.db.rows().await;
    let ips: Vec<&str> = rows.iter().map(|r| r.ip.as_str()).collect();
    assert_eq!(
        ips,
        [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4"
        ],
        "{rows:#?}"
    );
}

/// What `response` must hold for `bytes`: invalid UTF-8 and NUL rendered as U+FFFD.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

#[tokio::test]
async fn nul_bytes_and_invalid_utf8_round_trip_byte_for_byte() {
    let ctx = TestContext::new().await;
    let mut rng = seeded_rng("round_trip");
    let mut responses: Vec<Vec<u8>> = vec![
        b"\0".to_vec(),
        b"a\0b\0".to_vec(),
        vec![0xff],
        vec![0xc3],                   // truncated sequence
        vec![0xc0, 0x80],             // overlong NUL
        vec![0xed, 0xa0, 0x80],       // UTF-16 surrogate
        vec![0xf4, 0x90, 0x80, 0x80], // beyond U+10FFFF
        b"caf\xe9 latin-1".to_vec(),
        (0..=255u8).collect(),
        (0..1000)
            .map(|_| rand::Rng::random::<u8>(&mut rng))
            .collect(),
        b"plain ascii".to_vec(),
        "valid ☃ UTF-8".as_bytes().to_vec(),
        Vec::new(),
    ];
    let mut payloads: Vec<Vec<u8>> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| Scan::new("203.0.113.9", 1000 + i as u16, "RAW", T0, r.clone()).v1())
        .collect();
    // A V2 string may hold NUL too (JSON "\u0000").
    responses.push(b"v2\0nul".to_vec());
    payloads.push(
        Scan::new(
            "203.0.113.9",
            1000 + payloads.len() as u16,
            "RAW",
            T0,
            "v2\0nul",
        )
        .v2(),
    );
    ingest(&ctx, &payloads, &[]).await;

    let rows = ctx.db.rows().await;
    assert_eq!(rows.len(), responses.len());
    for (i, want) in responses.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r.port == 1000 + i as i32)
            .unwrap_or_else(|| panic!("no row for response {i} ({want:?})"));
        assert_eq!(&row.bytes, want, "exact bytes of response {i}");
        assert_eq!(row.response, lossy(want), "text rendering of response {i}");
        let needs_raw = std::str::from_utf8(want).is_err() || want.contains(&0);
        assert_eq!(
            row.response_raw.as_ref(),
            needs_raw.then_some(want),
            "response_raw of response {i} ({want:?})"
        );
    }
}

#[tokio::test]
async fn copy_escaping_traps_round_trip_exactly() {
    let ctx = TestContext::new().await;
    let responses = [
        "a\tb\tc",
        "line1\nline2\r\nline3\r",
        "C:\\path\\to\\",
        "\\N",
        "\\\\N",
        "\\.",
        ".\n\\.\n",
        "'single' \"double\" `back`",
        "unicode: é ☃ 𝄞 \u{200b} \u{feff}",
        "\u{7f}\u{1}\u{1b}[0m\u{8}",
        "",
        "NULL",
        "ends with backslash\\",
        "\\t is not a tab, \\n not a newline, \\x41 not A",
        "comma, semicolon; pipe | ",
    ];
    let services = [
        "HTTP",
        "tab\there",
        "new\nline",
        "back\\slash",
        "\\N",
        "quote\"s'",
        "☃ snow",
        "cr\rlf",
        "\\.",
        "NULL",
    ];
    let mut scans = Vec::new();
    for (i, response) in responses.iter().enumerate() {
        let service = services[i % services.len()];
        scans.push(Scan::new(
            "192.0.2.50",
            1000 + i as u16,
            service,
            T0,
            *response,
        ));
        scans.push(Scan::new(
            "192.0.2.50",
            2000 + i as u16,
            service,
            T0,
            *response,
        ));
    }
    for (i, service) in services.iter().enumerate() {
        scans.push(Scan::new("192.0.2.51", 80, service, T0 + i as i64, "svc"));
    }
    let payloads: Vec<Vec<u8>> = scans
        .iter()
        .map(|s| if s.port >= 2000 { s.v2() } else { s.v1() })
        .collect();
    ingest(&ctx, &payloads, &[]).await;

    let rows = ctx.db.rows().await;
    compare_tables(&ctx.table().await, &expected_table(&scans))
        .unwrap_or_else(|diff| panic!("{diff}"));
    for row in &rows {
        let want = scans
            .iter()
            .find(|s| s.key() == row.key())
            .expect("a row for every key");
        assert_eq!(row.response.as_bytes(), want.response, "{row:?}");
        assert_eq!(row.response_raw, None, "{row:?}");
    }
    assert_eq!(ctx.db.count_dead_letters().await, 0);
}

#[tokio::test]
async fn ipv6_in_two_spellings_is_one_row() {
    let ctx = TestContext::new().await;
    let scans = [
        Scan::new("::1", 443, "HTTP", T0 + 1, "loopback newer"),
        Scan::new("0:0:0:0:0:0:0:1", 443, "HTTP", T0, "loopback older"),
        Scan::new(
            "2001:0DB8:0000:0000:0000:0000:0000:0001",
            80,
            "HTTP",
            T0 + 5,
            "doc newer",
        ),
        Scan::new("2001:db8::1", 80, "HTTP", T0, "doc older"),
    ];
    let payloads: Vec<Vec<u8>> = scans.iter().map(Scan::v1).collect();
    ingest(&ctx, &payloads, &[]).await;

    let rows = ctx.db.rows().await;
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.ip.as_str(), r.response.as_str()))
        .collect();
    assert_eq!(
        got,
        [("::1", "loopback newer"), ("2001:db8::1", "doc newer")]
    );
}

#[tokio::test]
async fn equal_timestamps_are_broken_by_publish_time_then_message_id() {
    let ctx = TestContext::new().await;
    let tap = ctx.tap().await;
    let by_publish_time = ("192.0.2.77", 443, "HTTP");
    let by_message_id = ("192.0.2.78", 443, "HTTP");
    let scan =
        |key: (&str, u16, &str), response: &str| Scan::new(key.0, key.1, key.2, T0, response).v1();

    // Two publishes of one key at the same scan timestamp, the second at a later publish time...
    ctx.publish(&[scan(by_publish_time, "published first")])
        .await;
    let mut first = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "the first message on the tap",
        async || {
            first.extend(ctx.pubsub.pull(&tap, 10).await);
            !first.is_empty()
        },
    )
    .await;
    let first_us = first[0].publish_time_us;
    wait_until(
        Duration::from_secs(5),
        "the clock to pass the first publish time",
        async || now_us() > first_us + 5_000,
    )
    .await;
    ctx.publish(&[scan(by_publish_time, "published second")])
        .await;
    // ...and two of another key in one request, which share a publish time.
    ctx.publish(&[scan(by_message_id, "pair a"), scan(by_message_id, "pair b")])
        .await;

    // Take all four, so the ingester gets each only when it is handed back.
    let mut held = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "the four messages leased to the test",
        async || {
            held.extend(ctx.pubsub.pull(&ctx.subscription, 10).await);
            held.len() >= 4
        },
    )
    .await;
    let held_ids: Vec<String> = held.iter().map(|m| m.ack_id.clone()).collect();
    ctx.pubsub
        .modify_ack_deadline(&ctx.subscription, &held_ids, 600)
        .await;
    assert_eq!(held.len(), 4, "{held:?}");

    // The winner of each key: latest publish time, then greatest message id (bytewise).
    let key_of = |m: &common::pubsub::Received| -> &str {
        let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        if v["ip"] == by_publish_time.0 {
            "time"
        } else {
            "id"
        }
    };
    let winner = |k: &str| {
        held.iter()
            .filter(|m| key_of(m) == k)
            .max_by(|a, b| {
                (a.publish_time_us, a.message_id.as_bytes())
                    .cmp(&(b.publish_time_us, b.message_id.as_bytes()))
            })
            .unwrap()
            .clone()
    };
    let (time_winner, id_winner) = (winner("time"), winner("id"));
    let time_loser = held
        .iter()
        .find(|m| key_of(m) == "time" && m.message_id != time_winner.message_id)
        .unwrap();
    assert!(
        time_winner.publish_time_us > time_loser.publish_time_us,
        "precondition: the two publishes got distinct publish times: {held:?}"
    );

    // The winners first: once they are stored, the losers arrive and must not replace them.
    let ingester = ctx.start_ingester(&[]).await;
    ctx.pubsub
        .modify_ack_deadline(
            &ctx.subscription,
            &[time_winner.ack_id.clone(), id_winner.ack_id.clone()],
            0,
        )
        .await;
    wait_for_acks(&ingester, 2).await;
    let losers: Vec<String> = held
        .iter()
        .filter(|m| m.message_id != time_winner.message_id && m.message_id != id_winner.message_id)
        .map(|m| m.ack_id.clone())
        .collect();
    ctx.pubsub
        .modify_ack_deadline(&ctx.subscription, &losers, 0)
        .await;
    wait_for_acks(&ingester, 4).await;
    ingester.stop().await;
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );

    let rows = ctx.db.rows().await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for (row, winner) in rows.iter().zip([&time_winner, &id_winner]) {
        let want: serde_json::Value = serde_json::from_slice(&winner.data).unwrap();
        let want_response = BASE64
            .decode(want["data"]["response_bytes_utf8"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            row.bytes, want_response,
            "the winner by (publish time, message id): {row:?} {held:?}"
        );
        assert_eq!(row.message_id, winner.message_id, "{row:?}");
        assert_eq!(row.published_at_us, winner.publish_time_us, "{row:?}");
    }
}

#[tokio::test]
async fn scan_command_output_is_ingested() {
    let ctx = TestContext::new().await;
    let count = 200;
    ctx.run_scan(1000, count).await;
    let ingester = ctx.start_ingester(&[]).await;
    wait_for_acks(&ingester, u64::from(count)).await;
    ingester.stop().await;
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );

    let rows = ctx.db.count_rows().await;
    assert!(
        rows > 0 && rows <= i64::from(count),
        "{rows} rows for {count} scans"
    );
    assert_eq!(
        ctx.db.count_dead_letters().await,
        0,
        "the scanner's own messages are valid"
    );
}

/// A row PostgreSQL refuses for its data (here: a service name too long for the primary key's
/// btree index, SQLSTATE 54000) must not block its batch or the subscription: the batch is
/// bisected, the offending message becomes a `rejected_by_database` dead letter with its exact
/// payload, and every other message of the batch is stored.
#[tokio::test]
async fn a_row_the_database_rejects_is_isolated_and_the_rest_of_its_batch_commits() {
    let ctx = TestContext::new().await;
    let (payloads, poison) = poisoned_batch("poison");
    // One batch: everything arrives before it may leave.
    ingest(
        &ctx,
        &payloads,
        &[
            ("MINISCAN_BATCH_MAX_ROWS", "1000"),
            ("MINISCAN_BATCH_MAX_WAIT_MS", "2000"),
        ],
    )
    .await;

    assert_eq!(
        ctx.db.count_rows().await,
        40,
        "the good rows of the batch are stored"
    );
    ctx.db.assert_only_dead_letter_is_rejected(&poison).await;
}

/// A rejected row in a batch large enough to be split into key partitions (more than 1000
/// distinct keys in one batch, two partitions): the poison message still becomes the one
/// `rejected_by_database` dead letter, every other message is stored, each counted once per
/// message under its own outcome, and the subscription drains.
#[tokio::test]
async fn a_rejected_row_in_a_partitioned_batch_is_isolated_and_every_other_message_is_stored() {
    use common::ingester::metric_sum;
    const KEYS: u16 = 1100;
    let ctx = TestContext::new().await;
    let poison = unindexable_scan("partitioned poison");
    let mut payloads: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| Scan::new("203.0.113.9", 1000 + i, "HTTP", T0, format!("ok {i}")).v1())
        .collect();
    payloads.insert(517, poison.clone());
    let total = payloads.len();
    ctx.publish(&payloads).await;
    // One batch of everything: it leaves once full, long before the wait is over.
    let ingester = ctx
        .start_ingester(&[
            ("MINISCAN_WRITE_PARTITIONS", "2"),
            ("MINISCAN_BATCH_MAX_ROWS", &total.to_string()),
            ("MINISCAN_BATCH_MAX_WAIT_MS", "10000"),
        ])
        .await;
    wait_for_acks(&ingester, total as u64).await;

    let text = ingester.metrics().await;
    assert_eq!(
        write_outcome(&text, "stored"),
        f64::from(KEYS),
        "on an empty table, every distinct key's message changes it once"
    );
    assert_eq!(write_outcome(&text, "dead_letter"), 1.0);
    assert_eq!(write_outcome(&text, "nack"), 0.0);
    assert_eq!(
        metric_sum(
            &text,
            "miniscan_dead_letters_total",
            &[("reason", "rejected_by_database")]
        ),
        1.0
    );
    // The partitioned path was taken: a batch of more than 1000 messages, all distinct keys.
    assert!(
        text.contains("miniscan_batch_rows_bucket{le=\"1000\"}"),
        "{text}"
    );
    let batches = metric_sum(&text, "miniscan_batch_rows_count", &[]);
    let up_to_1000 = metric_sum(&text, "miniscan_batch_rows_bucket", &[("le", "1000")]);
    assert!(
        batches > up_to_1000,
        "no batch over 1000 rows ({batches} batches)"
    );

    ingester.stop().await;
    assert_eq!(
        ctx.remaining_messages().await,
        0,
        "messages left unacknowledged"
    );
    assert_eq!(ctx.db.count_rows().await, i64::from(KEYS));
    ctx.db.assert_only_dead_letter_is_rejected(&poison).await;
}

/// `stored` and `superseded` are per message: with the dedup cache off, a second round in which
/// half the keys get a newer scan and half an older one stores exactly the newer half and
/// supersedes the older half (the upsert reports which rows it changed).
#[tokio::test]
async fn a_batch_of_newer_and_older_scans_is_counted_stored_and_superseded_per_message() {
    const KEYS: u16 = 200;
    let ctx = TestContext::new().await;
    let round = |shift: &dyn Fn(u16) -> i64| -> Vec<Vec<u8>> {
        (0..KEYS)
            .map(|i| Scan::new("203.0.113.10", 2000 + i, "HTTP", shift(i), format!("r {i}")).v1())
            .collect()
    };
    let ingester = ctx
        .start_ingester(&[
            ("MINISCAN_CACHE_CAPACITY", "0"),
            ("MINISCAN_BATCH_MAX_ROWS", &KEYS.to_string()),
            ("MINISCAN_BATCH_MAX_WAIT_MS", "2000"),
        ])
        .await;
    ctx.publish(&round(&|_| T0)).await;
    wait_for_acks(&ingester, u64::from(KEYS)).await;
    // Even keys newer, odd keys older: changed and unchanged rows interleave in the upsert.
    ctx.publish(&round(&|i| if i % 2 == 0 { T0 + 10 } else { T0 - 10 }))
        .await;
    wait_for_acks(&ingester, 2 * u64::from(KEYS)).await;

    let text = ingester.metrics().await;
    assert_eq!(write_outcome(&text, "stored"), f64::from(KEYS + KEYS / 2));
    assert_eq!(write_outcome(&text, "superseded"), f64::from(KEYS / 2));
    assert_eq!(write_outcome(&text, "stale"), 0.0, "the cache is off");
    ingester.stop().await;
    assert_eq!(ctx.remaining_messages().await, 0);
    let table = ctx.table().await;
    assert_eq!(table.len(), usize::from(KEYS));
    let newer = table.values().filter(|(ts, _)| *ts == T0 + 10).count();
    assert_eq!(newer, usize::from(KEYS / 2));
}

/// `miniscan_messages_total{stage="write",outcome}` on a `/metrics` page.
fn write_outcome(text: &str, outcome: &str) -> f64 {
    common::ingester::metric_sum(
        text,
        "miniscan_messages_total",
        &[("stage", "write"), ("outcome", outcome)],
    )
}
