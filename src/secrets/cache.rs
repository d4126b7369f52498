//! The per-path cache in front of a [`SecretStore`](super::SecretStore):
//! TTL (capped by the store's lease), single-flight on a miss, bounded size,
//! and an explicit stale-if-error window.
//!
//! The lock is a `std` mutex held only to read or update the map, never
//! across I/O. A miss spawns the fetch as its own task: it completes (and
//! fills the cache) even when the request that started it is cancelled, and
//! every concurrent caller for the same path awaits that one fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::{Secret, SecretError};

/// How a lookup was answered; the audit event's `cache` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheStatus {
    /// A fresh cached value; the store was not asked.
    Hit,
    /// Not cached: this lookup fetched from the store.
    Miss,
    /// Not cached, but a fetch for the same path was in flight: this lookup
    /// waited for it (single-flight).
    Joined,
    /// The store was unavailable and a value inside the stale-if-error window
    /// was served.
    Stale,
    /// Caching is off (TTL zero): straight to the store.
    Bypass,
    /// The lookup did not reach the cache (refused before, or failed after).
    None,
}

impl CacheStatus {
    /// The audit spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Joined => "joined",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
            CacheStatus::None => "none",
        }
    }
}

/// Cache settings; see [`CredentialsBuilder`](super::CredentialsBuilder).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheConfig {
    pub(crate) ttl: Duration,
    pub(crate) max_entries: usize,
    pub(crate) stale_if_error: Duration,
}

type FetchResult = Result<(Secret, CacheStatus), SecretError>;
type Pending = Shared<BoxFuture<'static, FetchResult>>;

pub(crate) struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    next_id: u64,
}

#[derive(Default)]
struct Slot {
    ready: Option<Entry>,
    pending: Option<(u64, Pending)>,
}

struct Entry {
    secret: Secret,
    fresh_until: Instant,
    stale_until: Instant,
}

impl Cache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        Cache {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The cached value of `path`, or `fetch()`'s, shared with every caller
    /// that asks for `path` while it runs.
    pub(crate) async fn get<F>(&self, path: &str, fetch: F) -> (Result<Secret, SecretError>, CacheStatus)
    where
        F: FnOnce() -> BoxFuture<'static, Result<Secret, SecretError>>,
    {
        if self.inner.config.ttl.is_zero() {
            return (fetch().await, CacheStatus::Bypass);
        }
        let (pending, leader) = {
            let now = Instant::now();
            let mut state = self.inner.lock();
            let slot = state.slots.get(path);
            if let Some(entry) = slot.and_then(|s| s.ready.as_ref())
                && entry.fresh_until > now
            {
                return (Ok(entry.secret.clone()), CacheStatus::Hit);
            }
            match slot.and_then(|s| s.pending.as_ref()) {
                Some((_, p)) => (p.clone(), false),
                None => (self.start(&mut state, path, fetch()), true),
            }
        };
        match pending.await {
            Ok((secret, CacheStatus::Stale)) => (Ok(secret), CacheStatus::Stale),
            Ok((secret, _)) if leader => (Ok(secret), CacheStatus::Miss),
            Ok((secret, _)) => (Ok(secret), CacheStatus::Joined),
            Err(e) if leader => (Err(e), CacheStatus::Miss),
            Err(e) => (Err(e), CacheStatus::Joined),
        }
    }

    fn start(&self, state: &mut State, path: &str, fetch: BoxFuture<'static, Result<Secret, SecretError>>) -> Pending {
        state.next_id += 1;
        let id = state.next_id;
        let inner = Arc::clone(&self.inner);
        let key = path.to_owned();
        let task = tokio::spawn(async move {
            let result = fetch.await;
            inner.complete(&key, id, result)
        });
        let inner = Arc::clone(&self.inner);
        let key = path.to_owned();
        let pending = async move {
            match task.await {
                Ok(r) => r,
                Err(_) => {
                    // The store panicked: forget the slot so the next lookup
                    // tries again, and fail this one closed.
                    inner.forget(&key, id);
                    tracing::error!(path = %key, "secret store task failed");
                    Err(SecretError::Internal)
                }
            }
        }
        .boxed()
        .shared();
        state.slots.entry(path.to_owned()).or_default().pending = Some((id, pending.clone()));
        pending
    }

    /// Drop every cached value (in-flight fetches complete but are not kept).
    pub(crate) fn clear(&self) {
        self.inner.lock().slots.clear();
    }

    /// How many paths are cached or in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().slots.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections only move values in and out of the map; a
        // panic inside one cannot leave a half-written entry.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, key: &str, id: u64) {
        let mut state = self.lock();
        if let Some(slot) = state.slots.get_mut(key)
            && slot.pending.as_ref().is_some_and(|(p, _)| *p == id)
        {
            state.slots.remove(key);
        }
    }

    fn complete(&self, key: &str, id: u64, result: Result<Secret, SecretError>) -> FetchResult {
        let now = Instant::now();
        let cfg = self.config;
        let mut state = self.lock();
        let slot = match state.slots.get_mut(key) {
            Some(slot) if slot.pending.as_ref().is_some_and(|(p, _)| *p == id) => slot,
            // Cleared while in flight: answer, but keep nothing.
            _ => return result.map(|s| (s, CacheStatus::Miss)),
        };
        slot.pending = None;
        match result {
            Ok(secret) => {
                let ttl = secret.lease().map_or(cfg.ttl, |l| l.min(cfg.ttl));
                if ttl.is_zero() {
                    state.slots.remove(key);
                } else {
                    slot.ready = Some(Entry {
                        secret: secret.clone(),
                        fresh_until: now + ttl,
                        stale_until: now + ttl + cfg.stale_if_error,
                    });
                    evict(&mut state, cfg.max_entries, now);
                }
                Ok((secret, CacheStatus::Miss))
            }
            Err(e) if e.is_unavailable() => match &slot.ready {
                Some(entry) if entry.stale_until > now => Ok((entry.secret.clone(), CacheStatus::Stale)),
                _ => {
                    state.slots.remove(key);
                    Err(e)
                }
            },
            Err(e) => {
                // An answer (not found, permission denied): a revocation takes
                // effect now, whatever was cached.
                state.slots.remove(key);
                Err(e)
            }
        }
    }
}

/// Bring the map back to `max` entries: first what is past its stale window,
/// then the values closest to expiry. In-flight fetches are never evicted.
fn evict(state: &mut State, max: usize, now: Instant) {
    if state.slots.len() <= max {
        return;
    }
    state
        .slots
        .retain(|_, s| s.pending.is_some() || s.ready.as_ref().is_some_and(|e| e.stale_until > now));
    if state.slots.len() <= max {
        return;
    }
    let mut ready: Vec<(Instant, String)> = state
        .slots
        .iter()
        .filter(|(_, s)| s.pending.is_none())
        .filter_map(|(k, s)| s.ready.as_ref().map(|e| (e.fresh_until, k.clone())))
        .collect();
    ready.sort_unstable();
    let excess = state.slots.len() - max;
    for (_, key) in ready.into_iter().take(excess) {
        state.slots.remove(&key);
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            max_entries: 1024,
            stale_if_error: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(
        calls: &Arc<AtomicUsize>,
        result: Result<Secret, SecretError>,
        delay: Duration,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Secret, SecretError>> + use<> {
        let calls = Arc::clone(calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                result
            }
            .boxed()
        }
    }

    fn secret() -> Secret {
        Secret::new([("password", "p")])
    }

    fn cache(ttl: u64, max: usize, stale: u64) -> Cache {
        Cache::new(CacheConfig {
            ttl: Duration::from_millis(ttl),
            max_entries: max,
            stale_if_error: Duration::from_millis(stale),
        })
    }

    #[test]
    fn defaults_are_pinned() {
        let d = CacheConfig::default();
        assert_eq!(d.ttl, Duration::from_secs(60));
        assert_eq!(d.max_entries, 1024);
        assert_eq!(d.stale_if_error, Duration::ZERO);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let c = Arc::new(cache(10_000, 10, 0));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = Arc::clone(&c);
            let f = counting(&calls, Ok(secret()), Duration::from_millis(50));
            tasks.push(tokio::spawn(async move { c.get("a", f).await.1 }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(statuses.iter().filter(|s| **s == CacheStatus::Miss).count(), 1);
        let (r, s) = c
            .get("a", counting(&calls, Err(SecretError::Internal), Duration::ZERO))
            .await;
        assert!(r.is_ok());
        assert_eq!(s, CacheStatus::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expiry_fails_closed_without_stale_window() {
        let c = cache(30, 10, 0);
        let calls = Arc::new(AtomicUsize::new(0));
        assert!(
            c.get("a", counting(&calls, Ok(secret()), Duration::ZERO))
                .await
                .0
                .is_ok()
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (r, s) = c
            .get("a", counting(&calls, Err(SecretError::Unreachable), Duration::ZERO))
            .await;
        assert_eq!(r.unwrap_err(), SecretError::Unreachable);
        assert_eq!(s, CacheStatus::Miss);
    }

    #[tokio::test]
    async fn stale_window_serves_only_when_unavailable() {
        let c = cache(30, 10, 10_000);
        let calls = Arc::new(AtomicUsize::new(0));
        assert!(
            c.get("a", counting(&calls, Ok(secret()), Duration::ZERO))
                .await
                .0
                .is_ok()
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (r, s) = c
            .get("a", counting(&calls, Err(SecretError::Unreachable), Duration::ZERO))
            .await;
        assert!(r.is_ok());
        assert_eq!(s, CacheStatus::Stale);
        // An answer (revocation) is never papered over by a stale value.
        let (r, _) = c
            .get(
                "a",
                counting(&calls, Err(SecretError::PermissionDenied), Duration::ZERO),
            )
            .await;
        assert_eq!(r.unwrap_err(), SecretError::PermissionDenied);
        let (r, _) = c
            .get("a", counting(&calls, Err(SecretError::Unreachable), Duration::ZERO))
            .await;
        assert_eq!(r.unwrap_err(), SecretError::Unreachable);
    }

    #[tokio::test]
    async fn lease_caps_the_ttl() {
        let c = cache(60_000, 10, 0);
        let calls = Arc::new(AtomicUsize::new(0));
        let s = secret().with_lease(Duration::from_millis(20));
        c.get("a", counting(&calls, Ok(s), Duration::ZERO)).await.0.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (_, st) = c.get("a", counting(&calls, Ok(secret()), Duration::ZERO)).await;
        assert_eq!(st, CacheStatus::Miss);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn size_is_bounded() {
        let c = cache(60_000, 3, 0);
        let calls = Arc::new(AtomicUsize::new(0));
        for i in 0..10 {
            c.get(&format!("p{i}"), counting(&calls, Ok(secret()), Duration::ZERO))
                .await
                .0
                .unwrap();
        }
        assert_eq!(c.len(), 3);
    }

    #[tokio::test]
    async fn ttl_zero_bypasses() {
        let c = cache(0, 3, 0);
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (_, s) = c.get("a", counting(&calls, Ok(secret()), Duration::ZERO)).await;
            assert_eq!(s, CacheStatus::Bypass);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(c.len(), 0);
    }

    #[tokio::test]
    async fn cancelled_leader_still_fills_the_cache() {
        let c = cache(60_000, 3, 0);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = counting(&calls, Ok(secret()), Duration::from_millis(30));
        let _ = tokio::time::timeout(Duration::from_millis(5), c.get("a", f)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, s) = c.get("a", counting(&calls, Ok(secret()), Duration::ZERO)).await;
        assert_eq!(s, CacheStatus::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
