//! The budgets: one GCRA cell and one in-flight counter per key, in a
//! bounded [`TtlCache`].

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use governor::RateLimiter;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};

use super::CallerLimits;
use crate::cache::{Limits, Timestamp, TtlCache};
use crate::principal::{Principal, push_part};

/// A budget is forgotten this long after its last request. Forgetting resets
/// it (see "At the bound" in the module docs); at the default rate its GCRA
/// cell refilled in two seconds, and only a request in flight for longer than
/// this is no longer counted.
pub(crate) const IDLE: Duration = Duration::from_secs(3600);

/// The monotonic clock of every budget: nanoseconds since the first reading
/// in this process. Zero-sized, so a budget holds no clock state.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Clock;

impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        Nanos::from(ORIGIN.get_or_init(Instant::now).elapsed())
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Nanos>>;

/// Whose budget: a caller (issuer, subject, client id), or a tenant shared
/// by its callers (issuer, tenant), and for a per-tool budget the tool.
/// Encoded in one allocation, each part after its length, so no two
/// different keys encode alike and a lookup hashes and compares one slice.
/// A caller's key is the principal's own [`Principal::caller_key`]: taking
/// it copies nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Who(Arc<[u8]>);

impl Who {
    pub(crate) fn of(principal: &Principal, by_tenant: bool) -> Who {
        match principal.tenant() {
            Some(tenant) if by_tenant => {
                let issuer = principal.issuer();
                let mut key = Vec::with_capacity(17 + issuer.len() + tenant.len());
                key.push(b't');
                push_part(&mut key, issuer);
                push_part(&mut key, tenant);
                Who(key.into())
            }
            _ => Who(principal.caller_key().clone()),
        }
    }

    /// The key of this caller's (or tenant's) budget for `tool`.
    pub(crate) fn with_tool(&self, tool: &str) -> Who {
        let mut key = Vec::with_capacity(self.0.len() + 9 + tool.len());
        key.extend_from_slice(&self.0);
        key.push(b'T');
        push_part(&mut key, tool);
        Who(key.into())
    }

    /// The encoded key.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the fleet's keys hash it
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    #[cfg(test)]
    fn is_tenant(&self) -> bool {
        self.0.first() == Some(&b't')
    }
}

/// A key of the table.
pub(crate) type Key = Who;

/// One key's budget.
pub(crate) struct Bucket {
    /// The limits this budget was made for.
    pub(crate) limits: CallerLimits,
    gcra: Option<Gcra>,
    /// Requests holding a permit; shared with the budget that replaces this
    /// one when a policy changes the limits.
    in_flight: Arc<AtomicU32>,
    /// `GET` streams open, bounded by the same number as requests in flight;
    /// shared like `in_flight`.
    streams: Arc<AtomicU32>,
    /// When to ask the policy again (a [`Timestamp`] in milliseconds).
    pub(crate) recheck_at: AtomicU64,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Over {
    /// Over the rate; try again after this long.
    Rate(Duration),
    /// Over the requests in flight.
    InFlight,
    /// Over the `GET` streams open.
    Streams,
}

impl Over {
    /// The audit reason code.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Over::Rate(_) => "rate",
            Over::InFlight => "in_flight",
            Over::Streams => "streams",
        }
    }

    /// `Retry-After`, in whole seconds rounded up, at least 1.
    pub(crate) fn retry_after_secs(self) -> u64 {
        match self {
            Over::Rate(wait) => (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            Over::InFlight | Over::Streams => 1,
        }
    }
}

impl Bucket {
    pub(crate) fn new(limits: CallerLimits, counters: Counters, recheck_at: Timestamp) -> Arc<Bucket> {
        let Counters { in_flight, streams } = counters;
        let gcra = limits.rate.map(|rate| {
            let burst = limits
                .burst
                .unwrap_or_else(|| NonZeroU32::new(rate.count()).unwrap_or(NonZeroU32::MIN));
            Gcra::direct_with_clock(rate.quota(burst), Clock)
        });
        Arc::new(Bucket {
            limits,
            gcra,
            in_flight,
            streams,
            recheck_at: AtomicU64::new(recheck_at.millis()),
        })
    }

    /// The in-flight and stream counters, to hand on to a replacement.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            in_flight: self.in_flight.clone(),
            streams: self.streams.clone(),
        }
    }

    /// Take one request's worth of the rate (a refused request costs nothing).
    pub(crate) fn take(&self) -> Result<(), Over> {
        match &self.gcra {
            None => Ok(()),
            Some(gcra) => gcra.check().map_err(|not_until| {
                let now = governor::clock::Clock::now(&Clock);
                Over::Rate(not_until.wait_time_from(now))
            }),
        }
    }

    /// A permit for one request in flight, if the limit allows one more.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<Option<Permit>, Over> {
        Self::count(&self.in_flight, self.limits.in_flight, Over::InFlight)
    }

    /// A permit for one open `GET` stream, if the limit allows one more
    /// (the in-flight bound: one stream per session by default, while rmcp
    /// keeps up to 33 per session).
    pub(crate) fn open_stream(self: &Arc<Self>) -> Result<Option<Permit>, Over> {
        Self::count(&self.streams, self.limits.in_flight, Over::Streams)
    }

    fn count(counter: &Arc<AtomicU32>, max: Option<NonZeroU32>, over: Over) -> Result<Option<Permit>, Over> {
        let Some(max) = max else {
            return Ok(None);
        };
        let admitted = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max.get()).then_some(n + 1)
        });
        match admitted {
            Ok(_) => Ok(Some(Permit {
                counter: counter.clone(),
            })),
            Err(_) => Err(over),
        }
    }
}

/// The counters a budget shares with the one that replaces it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    in_flight: Arc<AtomicU32>,
    streams: Arc<AtomicU32>,
}

/// One request in flight (or one open stream); released when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    counter: Arc<AtomicU32>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every budget, bounded in entries.
pub(crate) struct Table {
    buckets: TtlCache<Key, Arc<Bucket>>,
}

impl Table {
    pub(crate) fn new(capacity: usize) -> Table {
        Table {
            buckets: TtlCache::new(Limits::entries(capacity.max(1))),
        }
    }

    /// The budget for `key`, if there is one; its idle time starts again.
    pub(crate) fn get(&self, key: &Key, now: Timestamp) -> Option<Arc<Bucket>> {
        let deadline = now.saturating_add(IDLE);
        self.buckets.update(key, now, |bucket, until| {
            *until = deadline;
            bucket.clone()
        })
    }

    /// The budget for `key`, made with `make` when there is none.
    pub(crate) fn bucket(&self, key: Key, now: Timestamp, make: impl FnOnce() -> Arc<Bucket>) -> Arc<Bucket> {
        self.buckets
            .get_or_insert_with(key, now.saturating_add(IDLE), now, make)
    }

    /// Replace the budget for `key`.
    pub(crate) fn replace(&self, key: Key, bucket: Arc<Bucket>, now: Timestamp) {
        self.buckets.insert(key, bucket, 0, now.saturating_add(IDLE), now);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Rate;

    fn limits(rate: &str, burst: u32, in_flight: u32) -> CallerLimits {
        CallerLimits {
            rate: Some(rate.parse::<Rate>().unwrap()),
            burst: NonZeroU32::new(burst),
            in_flight: NonZeroU32::new(in_flight),
        }
    }

    #[test]
    fn a_burst_then_a_wait_rounded_up_to_whole_seconds() {
        let bucket = Bucket::new(limits("1/min", 3, 1), Counters::default(), Timestamp::MAX);
        for _ in 0..3 {
            bucket.take().unwrap();
        }
        let over = bucket.take().unwrap_err();
        assert_eq!(over.reason(), "rate");
        assert!((57..=60).contains(&over.retry_after_secs()), "{over:?}");
        assert_eq!(Over::Rate(Duration::from_millis(1)).retry_after_secs(), 1);
        assert_eq!(Over::Rate(Duration::ZERO).retry_after_secs(), 1);
    }

    #[test]
    fn permits_come_back_when_dropped() {
        let bucket = Bucket::new(limits("1000/s", 10, 2), Counters::default(), Timestamp::MAX);
        let a = bucket.enter().unwrap();
        let _b = bucket.enter().unwrap();
        assert_eq!(bucket.enter().unwrap_err(), Over::InFlight);
        drop(a);
        assert!(bucket.enter().unwrap().is_some());
    }

    #[test]
    fn the_table_is_bounded_and_a_key_is_its_own() {
        let table = Table::new(2);
        let now = Timestamp::now();
        let key = |s: &str| Who::of(&Principal::unverified("i", s).build(), false);
        let make = || Bucket::new(limits("1/h", 1, 1), Counters::default(), Timestamp::MAX);
        let alice = table.bucket(key("alice"), now, make);
        alice.take().unwrap();
        // Alice's budget is the one she comes back to; Bob's is another.
        assert!(Arc::ptr_eq(&alice, &table.bucket(key("alice"), now, make)));
        table.bucket(key("bob"), now, make).take().unwrap();
        assert!(alice.take().is_err());
        for i in 0..100 {
            table.bucket(key(&format!("flood-{i}")), now, make);
        }
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn tenant_keying_falls_back_to_the_caller() {
        let with = Principal::unverified("i", "a").tenant("acme").build();
        let without = Principal::unverified("i", "a").build();
        assert!(Who::of(&with, true).is_tenant());
        assert!(!Who::of(&with, false).is_tenant());
        assert!(!Who::of(&without, true).is_tenant());
        // Another token of the same caller (another principal) has the same key.
        assert_eq!(
            Who::of(&Principal::unverified("i", "a").build(), false),
            Who::of(&without, false)
        );
        // The client is part of a caller's key; the tool makes another key.
        let desktop = Principal::unverified("i", "a").client_id("desktop").build();
        assert_ne!(Who::of(&desktop, false), Who::of(&without, false));
        assert_ne!(Who::of(&without, false).with_tool("t"), Who::of(&without, false));
        // Lengths keep the parts apart: ("ab", "c") is not ("a", "bc").
        let ab = Principal::unverified("ab", "c").build();
        let a = Principal::unverified("a", "bc").build();
        assert_ne!(Who::of(&ab, false), Who::of(&a, false));
    }
}
