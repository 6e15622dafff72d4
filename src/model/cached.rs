//! A key's entry in the dedup stage's cache of committed orders
//! (`stages::dedup::CommittedOrders`), carried by a [`Scan`](super::Scan)
//! from the dedup stage to the write stage.

use super::Order;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What the cache holds for a key: the newest order committed for it,
/// overwritten in place.
pub(crate) type OrderCell = Arc<Mutex<Order>>;

/// A key's cache entry, as the dedup stage's lookup found it.
///
/// A scan that passes dedup carries the entry its lookup found (if any) to
/// the write stage, which teaches it the committed order through it instead
/// of looking the key up a second time: every committed winner of a cached
/// key saves a moka `get`. Should the cache have evicted the entry meanwhile,
/// the write lands in a cell no one reads, and the cache merely forgets the
/// key, which it may always do.
#[derive(Clone)]
pub struct CachedEntry(OrderCell);

impl std::fmt::Debug for CachedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CachedEntry").field(&*read(&self.0)).finish()
    }
}

impl CachedEntry {
    pub(crate) fn new(cell: OrderCell) -> Self {
        Self(cell)
    }

    /// The cell the entry points at.
    pub(crate) fn cell(&self) -> &OrderCell {
        &self.0
    }

    /// Whether `order` is provably not newer than what the entry holds.
    pub fn is_stale(&self, order: &Order) -> bool {
        *order <= *read(&self.0)
    }
}

/// The order in `cell`. A panic cannot leave an `Order` half written (it is
/// only ever assigned whole), so a poisoned lock still holds a valid one.
pub(crate) fn read(cell: &OrderCell) -> MutexGuard<'_, Order> {
    cell.lock().unwrap_or_else(PoisonError::into_inner)
}
