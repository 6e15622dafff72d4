//! Dedup: drops work the database has provably already done.
//!
//! In: [`Record`]s. Out: the same records, except that a scan whose [`Order`]
//! is not newer than the newest order *committed* for its key becomes
//! [`Record::Stale`], which the write stage acks without touching the database
//! (a redelivery, a duplicate, or an older scan arriving late).
//!
//! The cache ([`CommittedOrders`], a bounded moka cache) learns a key's order
//! only after the transaction that stored it (or a newer one) has committed,
//! so it is always a lower bound of the table. An evicted or missing entry
//! only costs a database round trip: correctness never depends on the cache.
//!
//! Metrics: `miniscan_messages_total{stage="dedup",outcome="pass"|"stale"}`,
//! `miniscan_cache_lookups_total{result="hit"|"miss"}`, and
//! `miniscan_cache_entries` (published by [`CommittedOrders::publish_metrics`]).

use super::{Order, Record, ScanKey};
use crate::model::{CachedEntry, OrderCell, read};
use crate::pipeline::Transform;
use crate::pipeline::outcome::outcome_enum;
use crate::telemetry::names::{self, cache, label, outcome, stage};
use crate::telemetry::series::Series;
use moka::sync::Cache;
use std::sync::{Arc, Mutex};

/// The newest order committed per key, as far as this process knows.
#[derive(Clone)]
pub struct CommittedOrders {
    /// aHash rather than SipHash: hashing the key is a large part of every
    /// lookup and insert, and aHash keeps randomised, DoS-resistant seeds.
    ///
    /// Each entry is a cell that learning overwrites in place: a moka
    /// `insert` over an existing key builds a new entry, retires the old one
    /// and queues the change for the cache's housekeeping, which made it the
    /// dearest step per message (see [`CommittedOrders::committed`]).
    cache: Cache<ScanKey, OrderCell, ahash::RandomState>,
}

/// Up to this many keys, the cache's hash table is allocated whole at start
/// (moka's `initial_capacity`, about 20 bytes per key) instead of doubling as
/// it fills: each doubling rehashes every entry, which shows in the cost per
/// message while the cache fills (measured: docs/decisions/
/// 0005-the-dedup-cache-stays-on.md). A cache that is full already no longer resizes, so this pays at
/// start-up, after every restart. A larger cache still grows from there, so
/// a capacity set far above the key space does not allocate up front for
/// keys it will never see.
const PRESIZED_KEYS: u64 = 1 << 20;

impl std::fmt::Debug for CommittedOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommittedOrders")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl CommittedOrders {
    /// A cache holding at most `capacity` keys (0 disables it).
    pub fn new(capacity: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(capacity)
                .initial_capacity(capacity.min(PRESIZED_KEYS) as usize)
                .build_with_hasher(ahash::RandomState::new()),
        }
    }

    /// Whether `order` is provably not newer than what is committed for `key`.
    pub fn is_stale(&self, key: &ScanKey, order: &Order) -> Option<bool> {
        self.find(key).map(|entry| entry.is_stale(order))
    }

    /// `key`'s entry, if the cache holds one.
    pub fn find(&self, key: &ScanKey) -> Option<CachedEntry> {
        self.cache.get(key).map(CachedEntry::new)
    }

    /// Records that `order` (or something newer) is committed for `key`. Call
    /// only after the commit.
    ///
    /// This overwrites without comparing: a concurrent batch that committed
    /// an older winner for the same key may lower the entry. That is safe,
    /// since the database holds at least what any committed batch wrote, so
    /// every entry stays a lower bound of the table; it only makes the cache
    /// less effective for a moment. Comparing first cost more than it saved
    /// (measured in `benches/write.rs`).
    ///
    /// A key already cached has its cell overwritten in place; only a new key
    /// is inserted. Two learners that both find the key missing both insert,
    /// and the last one stays, which is again a lower bound. Updating in
    /// place costs far less CPU per message than a moka insert
    /// (`benches/dedup_store.rs`; the figures are in
    /// docs/decisions/0005-the-dedup-cache-stays-on.md).
    pub fn committed(&self, key: ScanKey, order: Order) {
        self.committed_at(None, key, order);
    }

    /// [`Self::committed`] for a key whose entry a lookup found already
    /// (`entry`, from [`Self::find`]): the order is stored through it, without
    /// a second lookup. With `None` (the lookup missed, or there was none)
    /// the key is looked up first: it may be cached by now, and inserting
    /// over a cached key costs far more than a lookup.
    pub fn committed_at(&self, entry: Option<CachedEntry>, key: ScanKey, order: Order) {
        match entry.or_else(|| self.find(&key)) {
            Some(entry) => *read(entry.cell()) = order,
            None => self.cache.insert(key, Arc::new(Mutex::new(order))),
        }
    }

    /// Publishes `miniscan_cache_entries`.
    pub fn publish_metrics(&self) {
        self.cache.run_pending_tasks();
        names::cache_entries().set(self.cache.entry_count() as f64);
    }
}

outcome_enum! {
    /// The dedup stage's outcomes.
    pub enum DedupOutcome {
        /// Not provably stale: on to the write stage.
        Pass => outcome::PASS,
        /// Provably not newer than what is committed: [`Record::Stale`].
        Stale => outcome::STALE,
    }
}

/// The series this stage emits, zero-initialised at start-up.
pub(crate) fn series() -> Vec<Series> {
    let mut all = super::series::messages::<DedupOutcome>(stage::DEDUP);
    all.extend(
        [cache::HIT, cache::MISS]
            .map(|result| Series::counter(names::CACHE_LOOKUPS_TOTAL, &[(label::RESULT, result)])),
    );
    all
}

/// The dedup stage.
#[derive(Debug)]
pub struct Dedup {
    orders: CommittedOrders,
    hits: u64,
    misses: u64,
}

impl Dedup {
    /// A dedup stage over `orders`, shared with the write stage that fills it.
    pub fn new(orders: CommittedOrders) -> Self {
        Self {
            orders,
            hits: 0,
            misses: 0,
        }
    }

    fn flush_lookups(&mut self) {
        for (result, n) in [(cache::HIT, self.hits), (cache::MISS, self.misses)] {
            if n > 0 {
                names::cache_lookups(result).increment(n);
            }
        }
        self.hits = 0;
        self.misses = 0;
    }
}

impl Transform for Dedup {
    type In = Record;
    type Out = Record;
    type Outcome = DedupOutcome;

    fn name(&self) -> &'static str {
        stage::DEDUP
    }

    fn apply(&mut self, record: Record) -> (Record, DedupOutcome) {
        let Record::Scan(mut scan) = record else {
            return (record, DedupOutcome::Pass);
        };
        match self.orders.find(&scan.key) {
            Some(entry) => {
                self.hits += 1;
                if entry.is_stale(&scan.order) {
                    return (Record::Stale, DedupOutcome::Stale);
                }
                scan.cached = Some(entry);
            }
            None => self.misses += 1,
        }
        (Record::Scan(scan), DedupOutcome::Pass)
    }

    /// Cache counters ride on the stage's bursts: flushed in bulk.
    fn flush(&mut self) {
        self.flush_lookups();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DedupOutcome::{Pass, Stale};

    /// A scan of one fixed key at `ts`.
    fn scan(ts: i64, id: &str) -> Record {
        Record::Scan(crate::stages::fixtures::scan(0, ts, id))
    }

    #[test]
    fn only_what_is_committed_makes_later_scans_stale() {
        let orders = CommittedOrders::new(100);
        let mut dedup = Dedup::new(orders.clone());
        // Nothing committed yet: everything passes, even repeats.
        assert_eq!(dedup.apply(scan(10, "a")).1, Pass);
        assert_eq!(dedup.apply(scan(10, "a")).1, Pass);
        let Record::Scan(s) = scan(10, "a") else {
            unreachable!()
        };
        orders.committed(s.key, s.order);
        assert_eq!(dedup.apply(scan(10, "a")).1, Stale, "a redelivery");
        assert_eq!(dedup.apply(scan(9, "z")).1, Stale, "an older scan");
        assert_eq!(
            dedup.apply(scan(10, "b")).1,
            Pass,
            "a tie broken by message id"
        );
        assert_eq!(dedup.apply(scan(11, "a")).1, Pass, "a newer scan");
        // A concurrent batch's older winner may lower what is known: still a
        // lower bound, so nothing newer than the table is ever called stale.
        let Record::Scan(old) = scan(5, "a") else {
            unreachable!()
        };
        orders.committed(old.key, old.order);
        assert_eq!(dedup.apply(scan(9, "z")).1, Pass);
        assert_eq!(dedup.apply(scan(5, "a")).1, Stale);
    }

    #[test]
    fn a_zero_capacity_cache_passes_everything() {
        let orders = CommittedOrders::new(0);
        let mut dedup = Dedup::new(orders.clone());
        let Record::Scan(s) = scan(10, "a") else {
            unreachable!()
        };
        orders.committed(s.key, s.order);
        orders.publish_metrics();
        assert_eq!(dedup.apply(scan(10, "a")).1, Pass);
    }

    #[test]
    fn learning_a_cached_key_again_overwrites_its_one_entry() {
        let orders = CommittedOrders::new(100);
        let mut dedup = Dedup::new(orders.clone());
        for (ts, id) in [(10, "a"), (12, "b"), (11, "c")] {
            let Record::Scan(s) = scan(ts, id) else {
                unreachable!()
            };
            orders.committed(s.key, s.order);
        }
        orders.cache.run_pending_tasks();
        assert_eq!(orders.cache.entry_count(), 1);
        // The last learned (11, "c") is what the entry holds.
        assert_eq!(dedup.apply(scan(11, "c")).1, Stale);
        assert_eq!(dedup.apply(scan(11, "d")).1, Pass);
        assert_eq!(dedup.apply(scan(12, "b")).1, Pass);
    }

    #[test]
    fn a_passing_scan_carries_its_entry_and_learning_through_it_stores_the_order() {
        let orders = CommittedOrders::new(100);
        let mut dedup = Dedup::new(orders.clone());
        let (Record::Scan(first), Pass) = dedup.apply(scan(10, "a")) else {
            panic!("a first scan passes")
        };
        assert!(first.cached.is_none(), "a miss carries no entry");
        orders.committed_at(first.cached, first.key, first.order);

        let (Record::Scan(newer), Pass) = dedup.apply(scan(11, "b")) else {
            panic!("a newer scan passes")
        };
        let entry = newer.cached.clone().expect("a hit carries its entry");
        let key = newer.key.clone();
        orders.committed_at(newer.cached, newer.key, newer.order);
        orders.cache.run_pending_tasks();
        assert_eq!(orders.cache.entry_count(), 1);
        assert_eq!(dedup.apply(scan(11, "b")).1, Stale, "learned in place");
        assert_eq!(dedup.apply(scan(12, "c")).1, Pass);

        // The cache evicted the entry between lookup and learn: what is
        // learned through it is lost, so the key is unknown, never stale.
        orders.cache.invalidate(&key);
        let Record::Scan(late) = scan(20, "z") else {
            unreachable!()
        };
        orders.committed_at(Some(entry), late.key, late.order);
        assert_eq!(dedup.apply(scan(11, "b")).1, Pass);
    }
}
