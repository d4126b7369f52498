//! Two small building blocks shared by introspection and token exchange: a
//! bounded map whose entries expire ([`TtlMap`]) and one request in flight per
//! key ([`SingleFlight`]).
//!
//! Locks are `std` mutexes held only for a map operation, never across an
//! `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OnceCell;

/// A bounded map whose entries are dropped at their deadline. When full,
/// expired entries go first, then an arbitrary one: a flood of new keys can
/// evict, never grow the map.
pub(crate) struct TtlMap<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        TtlMap {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The value for `key` if its deadline is after `now`.
    pub(crate) fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((value, until)) if *until > now => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remember `value` until `until` (nothing when that is not after `now`
    /// or the capacity is 0).
    pub(crate) fn insert(&self, key: K, value: V, until: Instant, now: Instant) {
        if self.capacity == 0 || until <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, u)| *u > now);
            if entries.len() >= self.capacity
                && let Some(victim) = entries.keys().next().cloned()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(key, (value, until));
    }

    /// Forget every entry.
    pub(crate) fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// One computation in flight per key; callers that arrive while it runs wait
/// for its result instead of starting their own. If the caller running it is
/// cancelled, one of the waiters takes over.
pub(crate) struct SingleFlight<K, V> {
    inflight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    pub(crate) fn new() -> Self {
        SingleFlight {
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Run `work` for `key`, or join the run already in flight.
    pub(crate) async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(key.clone()).or_default().clone()
        };
        // Removes the entry when the run is over, and also when this caller
        // is cancelled (its request dropped) as the last one waiting: an
        // abandoned, never-initialized cell would otherwise stay forever.
        let guard = Leave {
            flight: self,
            key,
            cell,
        };
        let value = guard.cell.get_or_init(work).await.clone();
        drop(guard);
        value
    }
}

/// A caller of [`SingleFlight::run`] leaving, normally or cancelled. (The
/// bounds are on the struct because `Drop` needs them and may not add its own.)
struct Leave<'a, K: Hash + Eq, V> {
    flight: &'a SingleFlight<K, V>,
    key: K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Hash + Eq, V> Drop for Leave<'_, K, V> {
    fn drop(&mut self) {
        let mut inflight = self.flight.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Every clone of the cell is made or dropped under this lock, so the
        // count is exact: 2 means the map's and ours, nobody else is waiting.
        let cell = std::mem::take(&mut self.cell);
        let ours = inflight.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &cell));
        if ours && (cell.initialized() || Arc::strong_count(&cell) == 2) {
            inflight.remove(&self.key);
        }
        drop(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn ttl_map_expires_and_is_bounded() {
        let map = TtlMap::new(4);
        let now = Instant::now();
        map.insert(1, "a", now + Duration::from_secs(10), now);
        assert_eq!(map.get(&1, now), Some("a"));
        assert_eq!(map.get(&1, now + Duration::from_secs(10)), None);
        for i in 0..100 {
            map.insert(i, "x", now + Duration::from_secs(10), now);
        }
        assert!(map.len() <= 4);
        map.insert(7, "past", now, now);
        assert_ne!(map.get(&7, now), Some("past"));
    }

    #[tokio::test]
    async fn single_flight_runs_once() {
        let flight = Arc::new(SingleFlight::<u8, usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let flight = flight.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                flight
                    .run(1, || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 1);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Done: the next run starts afresh.
        assert_eq!(flight.run(1, || async { 42 }).await, 42);
    }

    #[tokio::test]
    async fn a_cancelled_run_leaves_nothing_behind() {
        // A caller that goes away (client disconnect, timeout) before its run
        // finishes must not leave its key in the map: distinct keys would
        // otherwise pile up without bound.
        let flight = SingleFlight::<u32, u32>::new();
        for key in 0..100 {
            let run = flight.run(key, std::future::pending::<u32>);
            assert!(tokio::time::timeout(Duration::from_millis(1), run).await.is_err());
        }
        assert_eq!(flight.inflight.lock().unwrap().len(), 0);
        // A waiter that is cancelled while another caller still runs the
        // work does not remove the entry from under it.
        let flight = Arc::new(SingleFlight::<u8, u8>::new());
        let leader = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run(1, || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let waiter = flight.run(1, || async { 8 });
        assert!(tokio::time::timeout(Duration::from_millis(1), waiter).await.is_err());
        assert_eq!(flight.inflight.lock().unwrap().len(), 1);
        assert_eq!(leader.await.unwrap(), 7);
        assert_eq!(flight.inflight.lock().unwrap().len(), 0);
    }
}
