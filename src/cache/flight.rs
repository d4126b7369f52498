//! [`SingleFlight`]: one computation in flight per key; callers that arrive
//! while it runs wait for its result instead of starting their own.
//!
//! Cancellation-safe: if the caller running the computation is cancelled (its
//! request dropped), one of the waiters takes over and runs its own; when the
//! last caller for a key goes away, the key leaves the map, so abandoned keys
//! never pile up.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::lock::lock;

/// How a caller of [`SingleFlight::run`] got its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flight {
    /// It ran the computation.
    Led,
    /// It waited for a computation another caller ran.
    Joined,
}

/// One computation in flight per key; see the [module docs](self).
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
    pub(crate) async fn run<F, Fut>(&self, key: K, work: F) -> (V, Flight)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = lock(&self.inflight).entry(key.clone()).or_default().clone();
        // Removes the entry when the run is over, and also when this caller
        // is cancelled (its request dropped) as the last one waiting: an
        // abandoned, never-initialized cell would otherwise stay forever.
        let guard = Leave {
            flight: self,
            key,
            cell,
        };
        let mut led = false;
        let value = guard
            .cell
            .get_or_init(|| {
                led = true;
                work()
            })
            .await
            .clone();
        drop(guard);
        (value, if led { Flight::Led } else { Flight::Joined })
    }

    /// Forget every run in flight: later callers start afresh instead of
    /// joining them (their current callers still get their results).
    #[cfg_attr(not(test), allow(dead_code))] // secret cache; compiled in every build, used by this one later
    pub(crate) fn clear(&self) {
        lock(&self.inflight).clear();
    }

    /// How many keys are in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inflight).len()
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
        let mut inflight = lock(&self.flight.inflight);
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

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_only_one_leads() {
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
        let mut led = 0;
        for task in tasks {
            let (value, how) = task.await.unwrap();
            assert_eq!(value, 1);
            led += usize::from(how == Flight::Led);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(led, 1);
        // Done: the next run starts afresh.
        assert_eq!(flight.run(1, || async { 42 }).await, (42, Flight::Led));
        assert_eq!(flight.len(), 0);
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
        assert_eq!(flight.len(), 0);
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
        assert_eq!(flight.len(), 1);
        assert_eq!(leader.await.unwrap(), (7, Flight::Led));
        assert_eq!(flight.len(), 0);
    }

    #[tokio::test]
    async fn a_waiter_takes_over_from_a_cancelled_leader() {
        let flight = Arc::new(SingleFlight::<u8, u8>::new());
        let leader = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run(1, std::future::pending::<u8>).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let waiter = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run(1, || async { 9 }).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        leader.abort();
        let answer = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(answer.expect("the waiter is not left hanging").unwrap(), (9, Flight::Led));
        assert_eq!(flight.len(), 0);
    }

    #[tokio::test]
    async fn clear_lets_later_callers_start_afresh() {
        let flight = Arc::new(SingleFlight::<u8, u8>::new());
        let first = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run(1, || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        flight.clear();
        assert_eq!(flight.run(1, || async { 2 }).await, (2, Flight::Led));
        assert_eq!(first.await.unwrap(), (1, Flight::Led));
        assert_eq!(flight.len(), 0);
    }
}
