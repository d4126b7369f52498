//! [`SingleFlight`]: one computation in flight per key; callers that arrive
//! while it runs wait for its result instead of starting their own.
//!
//! Cancellation-safe: when the last caller for a key goes away, the key leaves
//! the map, so abandoned keys never pile up; and no waiter is left hanging.
//! Two ways to run, one per [`SingleFlight`] value:
//!
//! - [`run`](SingleFlight::run): the computation runs inside the leading
//!   caller and may borrow from it. If that caller is cancelled (its request
//!   dropped), one of the waiters takes over and runs its own.
//! - [`run_spawned`](SingleFlight::run_spawned): the computation is spawned as
//!   its own task. It completes (and its side effects, such as filling a cache,
//!   happen) even when every caller goes away, and until it does every caller
//!   for the key awaits it: a key is never computed twice at once.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
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

impl Flight {
    fn led(led: bool) -> Self {
        if led { Flight::Led } else { Flight::Joined }
    }
}

/// One computation in flight per key; see the [module docs](self).
pub(crate) struct SingleFlight<K, V> {
    inflight: Arc<Mutex<Runs<K, V>>>,
}

type Runs<K, V> = HashMap<K, Arc<Slot<V>>>;

/// One key's run: its result once known, and (for
/// [`run_spawned`](SingleFlight::run_spawned)) the task computing it, `None`
/// when that task panicked.
struct Slot<V> {
    value: OnceCell<V>,
    task: OnceLock<Shared<BoxFuture<'static, Option<V>>>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            value: OnceCell::new(),
            task: OnceLock::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    pub(crate) fn new() -> Self {
        SingleFlight {
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Run `work` for `key`, or join the run already in flight.
    #[cfg_attr(not(any(test, feature = "jwt")), allow(dead_code))] // JWKS, introspection, exchange
    pub(crate) async fn run<F, Fut>(&self, key: K, work: F) -> (V, Flight)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let (value, led) = Self::settle(self.join(key), work).await;
        (value, Flight::led(led))
    }

    /// Spawn `work()` for `key` as its own task, or join the one in flight;
    /// `panicked()` is the answer if that task panics. Needs a Tokio runtime.
    pub(crate) async fn run_spawned<F, Fut>(&self, key: K, work: F, panicked: impl FnOnce() -> V) -> (V, Flight)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        let guard = self.join(key);
        let mut led = false;
        let spawn = || {
            led = true;
            let work = work();
            let done = Done {
                inflight: Arc::downgrade(&self.inflight),
                key: guard.key.clone(),
                slot: Arc::downgrade(&guard.slot),
            };
            let task = tokio::spawn(async move {
                let _done = done;
                work.await
            });
            async move { task.await.ok() }.boxed().shared()
        };
        let task = guard.slot.task.get_or_init(spawn).clone();
        // Whoever settles the value (the leader, or a waiter taking over
        // from a cancelled one) awaits the same task.
        let (value, _) = Self::settle(guard, || async move { task.await.unwrap_or_else(panicked) }).await;
        (value, Flight::led(led))
    }

    /// The value of `guard`'s run, computed by `init` if nobody else is;
    /// whether `init` ran. Then leaves the run.
    async fn settle<Fut: Future<Output = V>>(guard: Leave<'_, K, V>, init: impl FnOnce() -> Fut) -> (V, bool) {
        let mut ran = false;
        let value = guard
            .slot
            .value
            .get_or_init(|| {
                ran = true;
                init()
            })
            .await
            .clone();
        drop(guard);
        (value, ran)
    }

    /// This caller's place in the run for `key`, joined or started.
    fn join(&self, key: K) -> Leave<'_, K, V> {
        let slot = lock(&self.inflight).entry(key.clone()).or_default().clone();
        // Removes the entry when the run is over, and also when this caller
        // is cancelled (its request dropped) as the last one waiting: an
        // abandoned, never-initialized slot would otherwise stay forever.
        Leave {
            flight: self,
            key,
            slot,
        }
    }

    /// Forget every run in flight: later callers start afresh instead of
    /// joining them (their current callers still get their results).
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
    slot: Arc<Slot<V>>,
}

impl<K: Hash + Eq, V> Drop for Leave<'_, K, V> {
    fn drop(&mut self) {
        let mut inflight = lock(&self.flight.inflight);
        // Every clone of the slot is made or dropped under this lock, so the
        // count is exact: 2 means the map's and ours, nobody else is waiting.
        // A spawned task still running keeps the entry: it removes it itself.
        let slot = std::mem::take(&mut self.slot);
        let ours = inflight.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, &slot));
        let abandoned = Arc::strong_count(&slot) == 2 && slot.task.get().is_none();
        if ours && (slot.value.initialized() || abandoned) {
            inflight.remove(&self.key);
        }
        drop(slot);
    }
}

/// A spawned computation ending (or panicking): its key leaves the map, so
/// later callers start afresh. Holds no strong reference to the slot.
struct Done<K: Hash + Eq, V> {
    inflight: Weak<Mutex<Runs<K, V>>>,
    key: K,
    slot: Weak<Slot<V>>,
}

impl<K: Hash + Eq, V> Drop for Done<K, V> {
    fn drop(&mut self) {
        let Some(inflight) = self.inflight.upgrade() else {
            return;
        };
        let mut inflight = lock(&inflight);
        if inflight
            .get(&self.key)
            .is_some_and(|s| Arc::as_ptr(s) == self.slot.as_ptr())
        {
            inflight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A caller, as a task, whose computation of `value` takes 50 ms.
    fn slow_leader(flight: &Arc<SingleFlight<u8, u8>>, key: u8, value: u8) -> tokio::task::JoinHandle<(u8, Flight)> {
        let flight = flight.clone();
        tokio::spawn(async move {
            let work = || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                value
            };
            flight.run(key, work).await
        })
    }

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
        let leader = slow_leader(&flight, 1, 7);
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
        assert_eq!(
            answer.expect("the waiter is not left hanging").unwrap(),
            (9, Flight::Led)
        );
        assert_eq!(flight.len(), 0);
    }

    #[tokio::test]
    async fn a_spawned_run_outlives_its_callers_and_is_never_run_twice() {
        let flight = Arc::new(SingleFlight::<u8, usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let work = |runs: Arc<AtomicUsize>| {
            move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                runs.fetch_add(1, Ordering::SeqCst) + 1
            }
        };
        let leader = {
            let (flight, work) = (flight.clone(), work(runs.clone()));
            tokio::spawn(async move { flight.run_spawned(1, work, || 0).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let waiter = {
            let (flight, work) = (flight.clone(), work(runs.clone()));
            tokio::spawn(async move { flight.run_spawned(1, work, || 0).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The leader goes away: the waiter gets the same task's answer.
        leader.abort();
        assert_eq!(waiter.await.unwrap(), (1, Flight::Joined));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flight.len(), 0);
        // With every caller gone, the task still runs, and a caller that
        // comes meanwhile joins it.
        let run = flight.run_spawned(2, work(runs.clone()), || 0);
        assert!(tokio::time::timeout(Duration::from_millis(5), run).await.is_err());
        assert_eq!(flight.len(), 1);
        assert_eq!(
            flight.run_spawned(2, work(runs.clone()), || 0).await,
            (2, Flight::Joined)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(flight.len(), 0);
        // Once done, nobody joins it: its key is gone even with no caller left.
        let run = flight.run_spawned(3, work(runs.clone()), || 0);
        assert!(tokio::time::timeout(Duration::from_millis(5), run).await.is_err());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(flight.len(), 0);
    }

    #[tokio::test]
    async fn a_panicking_spawned_run_answers_with_the_fallback() {
        let flight = SingleFlight::<u8, u8>::new();
        let work = || async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            panic!("the work fails")
        };
        assert_eq!(flight.run_spawned(1, work, || 99).await, (99, Flight::Led));
        assert_eq!(flight.len(), 0);
    }

    #[tokio::test]
    async fn clear_lets_later_callers_start_afresh() {
        let flight = Arc::new(SingleFlight::<u8, u8>::new());
        let first = slow_leader(&flight, 1, 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        flight.clear();
        assert_eq!(flight.run(1, || async { 2 }).await, (2, Flight::Led));
        assert_eq!(first.await.unwrap(), (1, Flight::Led));
        assert_eq!(flight.len(), 0);
    }
}
