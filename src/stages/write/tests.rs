//! The write stage without PostgreSQL: the whole sink (the store's layout,
//! isolation, retries and verdicts, the stage's partitions and cache
//! learning) over a [`BatchStore`] that keeps its table in memory and fails
//! as a script says. The same paths run against a real PostgreSQL in
//! `tests/it/ingest.rs`.

use super::*;
use crate::stages::fixtures::{dead_letter, scan};
use crate::stages::{DeadLetter, Order, ScanKey};
use crate::store::Injected;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// What the fake store is told to do.
#[derive(Debug, Default)]
struct Script {
    /// Message ids of scans the database rejects for their data (54000).
    poison: HashSet<String>,
    /// Message ids of dead letters the database rejects for their data.
    poison_dead: HashSet<String>,
    /// Attempts (counted from 1) on which the connection is lost.
    lose_connection_on: HashSet<usize>,
    /// Every attempt loses the connection.
    down: bool,
}

#[derive(Debug, Default)]
struct State {
    script: Script,
    rows: HashMap<ScanKey, Order>,
    dead: HashMap<String, &'static str>,
    attempts: usize,
    /// The keys of every committed transaction, and whether it held dead letters.
    commits: Vec<(Vec<ScanKey>, bool)>,
}

/// An in-memory store: newest wins per key, all or nothing per commit.
#[derive(Clone, Debug, Default)]
struct FakeStore(Arc<Mutex<State>>);

impl FakeStore {
    fn new(script: Script) -> Self {
        Self(Arc::new(Mutex::new(State {
            script,
            ..State::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("no test panicked holding the lock")
    }
}

impl BatchStore for FakeStore {
    type Error = Injected;

    async fn commit(&self, scans: &[&Scan], dead: &[&DeadLetter]) -> Result<Vec<bool>, Injected> {
        let mut st = self.state();
        st.attempts += 1;
        let s = &st.script;
        if s.down || s.lose_connection_on.contains(&st.attempts) {
            return Err(Injected::connection_lost());
        }
        let poisoned = scans
            .iter()
            .any(|r| s.poison.contains(r.order.message_id.as_str()))
            || dead.iter().any(|d| s.poison_dead.contains(&d.message_id));
        if poisoned {
            return Err(Injected::too_large());
        }
        let changed = scans
            .iter()
            .map(|r| match st.rows.get(&r.key) {
                Some(held) if *held >= r.order => false,
                _ => {
                    st.rows.insert(r.key.clone(), r.order.clone());
                    true
                }
            })
            .collect();
        for d in dead {
            st.dead
                .entry(d.message_id.clone())
                .or_insert(d.reason.as_str());
        }
        let keys = scans.iter().map(|r| r.key.clone()).collect();
        st.commits.push((keys, !dead.is_empty()));
        Ok(changed)
    }
}

struct Stage {
    sink: WriteSink<FakeStore>,
    store: FakeStore,
    orders: CommittedOrders,
    health: Health,
    shutdown: Shutdown,
}

impl Stage {
    fn new(script: Script, partitions: usize) -> Self {
        let store = FakeStore::new(script);
        let (orders, health, shutdown) =
            (CommittedOrders::new(10_000), Health::new(), Shutdown::new());
        let config = WriteConfig {
            partitions,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
        };
        let sink = WriteSink::with_store(
            store.clone(),
            orders.clone(),
            health.clone(),
            shutdown.clone(),
            config,
        );
        Self {
            sink,
            store,
            orders,
            health,
            shutdown,
        }
    }

    /// Writes `records` as one batch; returns the verdicts once the cache
    /// has learned what it learns.
    async fn write(&self, records: &[Record]) -> Vec<Written> {
        let batch = records
            .iter()
            .map(|r| Envelope::new(r.clone(), ()))
            .collect();
        let (written, learning) = self.sink.write_batch(batch).await;
        if let Some(task) = learning {
            task.await.expect("learning does not panic");
        }
        written.into_iter().map(|e| e.payload).collect()
    }

    /// Whether the cache knows `s`'s key at `s`'s order or newer.
    fn learned(&self, s: &Scan) -> bool {
        self.orders.is_stale(&s.key, &s.order) == Some(true)
    }
}

/// `n` keys, one scan each at time 10, ids `k0`, `k1`, ...
fn winners(n: u16) -> Vec<Scan> {
    (0..n).map(|k| scan(k, 10, &format!("k{k}"))).collect()
}

fn records(scans: &[Scan]) -> Vec<Record> {
    scans.iter().cloned().map(Record::Scan).collect()
}

#[test]
fn verdicts_settle_as_documented() {
    assert_eq!(Written::Nack.settlement(), Settlement::Nack);
    for w in [
        Written::Stored,
        Written::Superseded,
        Written::Stale,
        Written::DeadLetter,
    ] {
        assert_eq!(w.settlement(), Settlement::Ack, "{w:?}");
    }
}

/// Stored and Superseded are per message: the winner whose row changed the
/// table is stored, the one the table already outranks is superseded,
/// whatever their positions.
#[tokio::test(start_paused = true)]
async fn each_message_is_stored_or_superseded_by_what_its_row_did() {
    let stage = Stage::new(Script::default(), 1);
    let newer = scan(0, 20, "held");
    stage
        .store
        .state()
        .rows
        .insert(newer.key.clone(), newer.order);
    let batch = [
        Record::Scan(scan(1, 5, "old1")),
        Record::Scan(scan(0, 10, "behind")),
        Record::Stale,
        Record::Scan(scan(1, 7, "new1")),
        Record::Dead(dead_letter("bad")),
    ];
    use Written::*;
    assert_eq!(
        stage.write(&batch).await,
        [Superseded, Superseded, Stale, Stored, DeadLetter]
    );
    let st = stage.store.state();
    assert_eq!(st.attempts, 1);
    assert_eq!(st.dead.get("bad"), Some(&"invalid_json"));
    drop(st);
    // Committed winners are learned, changed or not; a loser is not.
    assert!(stage.learned(&scan(1, 7, "new1")));
    assert!(stage.learned(&scan(0, 10, "behind")));
    assert_eq!(
        stage
            .orders
            .is_stale(&scan(2, 1, "x").key, &scan(2, 1, "x").order),
        None
    );
}

/// A row the database rejects, at position 100 of partition 1 of 2: bisected
/// out of its partition and dead-lettered, while partition 0 (with the
/// batch's dead letter) commits in one attempt.
#[tokio::test(start_paused = true)]
async fn a_rejected_row_of_one_partition_is_isolated_and_the_rest_commits() {
    let scans = winners(700);
    let plan = partition::Plan::new(scans.iter().map(|s| &s.key), 2);
    let mut partition_of: HashMap<&ScanKey, usize> = HashMap::new();
    for (p, members) in plan.parts().iter().enumerate() {
        partition_of.extend(members.iter().map(|&i| (&scans[i].key, p)));
    }
    let poison_at = plan.parts()[1][100];
    let poison = &scans[poison_at];
    let script = Script {
        poison: HashSet::from([poison.order.message_id.to_string()]),
        ..Script::default()
    };
    let stage = Stage::new(script, 2);
    let loser = scan(poison_at as u16, 1, "older");
    let mut batch = records(&scans);
    batch.push(Record::Dead(dead_letter("bad")));
    batch.push(Record::Scan(loser.clone()));
    let written = stage.write(&batch).await;

    for (record, w) in batch.iter().zip(&written) {
        let want = match record {
            Record::Scan(s) if s.order == poison.order => Written::DeadLetter,
            Record::Scan(s) if s.order == loser.order => Written::Superseded,
            Record::Scan(_) => Written::Stored,
            _ => Written::DeadLetter,
        };
        assert_eq!(*w, want, "{record:?}");
    }
    let st = stage.store.state();
    assert_eq!(
        st.dead[poison.order.message_id.as_str()],
        "rejected_by_database"
    );
    assert_eq!(st.dead["bad"], "invalid_json");
    assert_eq!(st.rows.len(), 699);
    // Partition 0 once, partition 1 bisected (one rejected row among about
    // 350: at most 1 + 2 * 9 attempts), then the rejected row's dead letter.
    assert!(st.attempts <= 1 + 19 + 1, "{} attempts", st.attempts);
    for (keys, with_dead) in &st.commits {
        let parts: HashSet<usize> = keys.iter().map(|k| partition_of[k]).collect();
        assert!(parts.len() <= 1, "a commit spans partitions {parts:?}");
        assert!(!with_dead || keys.is_empty() || parts.contains(&0));
    }
    drop(st);
    assert!(!stage.learned(poison));
    assert!(
        scans
            .iter()
            .filter(|s| s.order != poison.order)
            .all(|s| stage.learned(s))
    );
}

/// A lost connection on attempt 2 (the second partition's first attempt) is
/// retried after a backoff, and the whole batch is stored.
#[tokio::test(start_paused = true)]
async fn a_lost_connection_is_retried_and_the_batch_commits() {
    let script = Script {
        lose_connection_on: HashSet::from([2]),
        ..Script::default()
    };
    let stage = Stage::new(script, 2);
    let scans = winners(600);
    let started = tokio::time::Instant::now();
    let written = stage.write(&records(&scans)).await;
    assert!(written.iter().all(|w| *w == Written::Stored), "{written:?}");
    assert_eq!(stage.store.state().attempts, 3);
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(stage.health.down().is_empty(), "up again after the retry");
    assert!(scans.iter().all(|s| stage.learned(s)));
}

/// The database down across the end of the grace period: retried until
/// shutdown is aborted, then every message that needed the database is
/// nacked, the stale one still acked, and the cache learns nothing.
#[tokio::test(start_paused = true)]
async fn an_outage_across_shutdown_abort_nacks_and_teaches_nothing() {
    let script = Script {
        down: true,
        ..Script::default()
    };
    let stage = Stage::new(script, 2);
    stage.shutdown.trigger(Duration::from_secs(5));
    let scans = winners(600);
    let mut batch = records(&scans);
    batch.push(Record::Stale);
    batch.push(Record::Dead(dead_letter("bad")));
    batch.push(Record::Scan(scan(3, 1, "older")));
    let written = stage.write(&batch).await;
    let (stale, rest) = written.split_at(600).1.split_first().expect("a stale one");
    assert_eq!(*stale, Written::Stale);
    assert!(
        written[..600]
            .iter()
            .chain(rest)
            .all(|w| *w == Written::Nack)
    );
    assert!(stage.store.state().attempts >= 4);
    assert_eq!(stage.health.down(), ["database"]);
    assert!(
        scans
            .iter()
            .all(|s| stage.orders.is_stale(&s.key, &s.order).is_none())
    );
}

/// A dead letter the database refuses cannot be acked; nor can a rejected
/// row whose own dead letter is refused, nor its key's loser.
#[tokio::test(start_paused = true)]
async fn a_dead_letter_the_database_refuses_is_nacked() {
    let script = Script {
        poison: HashSet::from(["k1".to_owned()]),
        poison_dead: HashSet::from(["bad".to_owned(), "k1".to_owned()]),
        ..Script::default()
    };
    let stage = Stage::new(script, 1);
    let mut batch = records(&winners(3));
    batch.push(Record::Dead(dead_letter("bad")));
    batch.push(Record::Scan(scan(1, 1, "older")));
    use Written::*;
    assert_eq!(
        stage.write(&batch).await,
        [Stored, Nack, Stored, Nack, Nack]
    );
    assert!(!stage.learned(&scan(1, 10, "k1")));
    assert!(stage.store.state().dead.is_empty());
}

/// The tasks teaching the cache belong to the sink: `close` waits for every
/// one of them, so none outlives the ingester that owns the sink.
#[tokio::test]
async fn close_waits_for_every_learning_task() {
    let stage = Stage::new(Script::default(), 2);
    let scans = winners(50);
    let batch = records(&scans)
        .into_iter()
        .map(|r| Envelope::new(r, ()))
        .collect();
    // The handle is dropped, as the pipeline's `Sink::write` drops it.
    let (written, _) = stage.sink.write_batch(batch).await;
    assert!(written.iter().all(|e| e.payload == Written::Stored));
    stage.sink.close().await;
    assert_eq!(stage.sink.learning_tasks(), 0);
    assert!(scans.iter().all(|s| stage.learned(s)));
}
