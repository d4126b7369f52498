//! The per-path cache in front of a [`SecretStore`](super::SecretStore):
//! TTL (capped by the store's lease), single-flight on a miss, bounded size,
//! and an explicit stale-if-error window.
//!
//! Values live in a [`TtlCache`] (full: past the stale window first, then the
//! least recently used) until the end of their stale window; a value is fresh
//! until its TTL. A miss spawns the fetch as its own task
//! ([`SingleFlight::run_spawned`]): it completes (and fills the cache) even
//! when the request that started it is cancelled, and every concurrent caller
//! for the same path awaits that one fetch. No lock is held across I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Secret, SecretError};
use crate::cache::{Flight, Limits, SingleFlight, Timestamp, TtlCache};

/// How a lookup was answered; the audit event's `cache` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum CacheStatus {
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
    pub(crate) fn as_str(self) -> &'static str {
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

pub(crate) struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    /// Each value until the end of its stale window.
    entries: TtlCache<String, Entry>,
    flight: SingleFlight<String, FetchResult>,
    /// Bumped by [`Cache::clear`]: a fetch started before keeps nothing.
    generation: AtomicU64,
}

#[derive(Clone)]
struct Entry {
    secret: Secret,
    fresh_until: Timestamp,
}

impl Cache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        Cache {
            inner: Arc::new(Inner {
                config,
                entries: TtlCache::new(Limits::entries(config.max_entries)),
                flight: SingleFlight::new(),
                generation: AtomicU64::new(0),
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
        if let Some(secret) = self.inner.fresh(path) {
            return (Ok(secret), CacheStatus::Hit);
        }
        let inner = Arc::clone(&self.inner);
        let key = path.to_owned();
        let work = move || -> BoxFuture<'static, FetchResult> {
            // Another fetch may have filled the cache just before this one began.
            if let Some(secret) = inner.fresh(&key) {
                return Box::pin(std::future::ready(Ok((secret, CacheStatus::Hit))));
            }
            let generation = inner.generation.load(Ordering::Acquire);
            let fetching = fetch();
            Box::pin(async move {
                let result = fetching.await;
                inner.complete(&key, generation, result)
            })
        };
        let panicked = || {
            // The store panicked: nothing is kept, the next lookup tries again,
            // and this one fails closed.
            tracing::error!(path = %path, "secret store task failed");
            Err(SecretError::Internal)
        };
        let (result, flight) = self.inner.flight.run_spawned(path.to_owned(), work, panicked).await;
        match (result, flight) {
            (Ok((secret, status @ (CacheStatus::Stale | CacheStatus::Hit))), _) => (Ok(secret), status),
            (Ok((secret, _)), Flight::Led) => (Ok(secret), CacheStatus::Miss),
            (Ok((secret, _)), Flight::Joined) => (Ok(secret), CacheStatus::Joined),
            (Err(e), Flight::Led) => (Err(e), CacheStatus::Miss),
            (Err(e), Flight::Joined) => (Err(e), CacheStatus::Joined),
        }
    }

    /// Drop every cached value (in-flight fetches complete but are not kept,
    /// and later lookups do not join them).
    pub(crate) fn clear(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.flight.clear();
        self.inner.entries.clear();
    }

    /// How many paths are cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.entries.len()
    }
}

impl Inner {
    /// The value of `key` if cached and fresh.
    fn fresh(&self, key: &str) -> Option<Secret> {
        let now = Timestamp::now();
        self.entries
            .get(key, now)
            .filter(|entry| entry.fresh_until > now)
            .map(|entry| entry.secret)
    }

    fn complete(&self, key: &str, generation: u64, result: Result<Secret, SecretError>) -> FetchResult {
        let now = Timestamp::now();
        let cfg = self.config;
        if self.generation.load(Ordering::Acquire) != generation {
            // Cleared while in flight: answer, but keep nothing.
            return result.map(|s| (s, CacheStatus::Miss));
        }
        match result {
            Ok(secret) => {
                let ttl = secret.lease().map_or(cfg.ttl, |l| l.min(cfg.ttl));
                if ttl.is_zero() {
                    self.entries.remove(key);
                } else {
                    let fresh_until = now.saturating_add(ttl);
                    let entry = Entry {
                        secret: secret.clone(),
                        fresh_until,
                    };
                    let stale_until = fresh_until.saturating_add(cfg.stale_if_error);
                    self.entries.insert(key.to_owned(), entry, 0, stale_until, now);
                    if self.generation.load(Ordering::Acquire) != generation {
                        // Cleared between the check above and the insert.
                        self.entries.remove(key);
                    }
                }
                Ok((secret, CacheStatus::Miss))
            }
            Err(e) if e.is_unavailable() => match self.entries.get(key, now) {
                Some(entry) => Ok((entry.secret, CacheStatus::Stale)),
                None => Err(e),
            },
            Err(e) => {
                // An answer (not found, permission denied): a revocation takes
                // effect now, whatever was cached.
                self.entries.remove(key);
                Err(e)
            }
        }
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
    use futures_util::FutureExt;
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

    /// Cache a value with a 30 ms TTL, let it expire, then read it while the
    /// store is unreachable.
    async fn expired_while_unreachable(
        stale_ms: u64,
    ) -> (Cache, Arc<AtomicUsize>, (Result<Secret, SecretError>, CacheStatus)) {
        let c = cache(30, 10, stale_ms);
        let calls = Arc::new(AtomicUsize::new(0));
        let (first, _) = c.get("a", counting(&calls, Ok(secret()), Duration::ZERO)).await;
        assert!(first.is_ok());
        tokio::time::sleep(Duration::from_millis(40)).await;
        let read = c
            .get("a", counting(&calls, Err(SecretError::Unreachable), Duration::ZERO))
            .await;
        (c, calls, read)
    }

    #[tokio::test]
    async fn expiry_fails_closed_without_stale_window() {
        let (_, _, (r, s)) = expired_while_unreachable(0).await;
        assert_eq!(r.unwrap_err(), SecretError::Unreachable);
        assert_eq!(s, CacheStatus::Miss);
    }

    #[tokio::test]
    async fn stale_window_serves_only_when_unavailable() {
        let (c, calls, (r, s)) = expired_while_unreachable(10_000).await;
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
