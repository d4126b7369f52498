//! The one clock of the caches: [`Timestamp`], milliseconds since the Unix
//! epoch.
//!
//! The deadlines that come from outside are wall-clock times: a token's `exp`
//! (Unix seconds), a downstream token's `expires_at`, and JWT validation
//! itself compares `exp` with the wall clock. Keeping every cache on the same
//! wall clock means a cached verified token expires exactly when a fresh
//! validation would refuse it. The price: a clock stepped back by an
//! administrator lengthens the remaining life of cached entries by the step
//! (as it does for JWT validation); a clock stepped forward expires them early.
//! Durations (TTLs, leases, idle times) are added at the edge with
//! [`Timestamp::saturating_add`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Timestamp(u64);

impl Timestamp {
    /// The end of time; every deadline is before or at it.
    pub(crate) const MAX: Timestamp = Timestamp(u64::MAX);

    /// Now, by the system clock (the epoch if the clock is before 1970).
    pub(crate) fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// The start of second `secs` since the Unix epoch (a JWT `exp` or `iat`).
    #[cfg_attr(not(any(test, feature = "jwt")), allow(dead_code))] // token `exp`
    pub(crate) const fn from_unix_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    /// `millis` milliseconds since the Unix epoch.
    #[cfg_attr(not(any(test, feature = "state")), allow(dead_code))] // sealed request state
    pub(crate) const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) const fn millis(self) -> u64 {
        self.0
    }

    /// `self` plus `duration`, at most the end of time.
    pub(crate) fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_and_durations_meet_on_one_scale() {
        let t = Timestamp::from_unix_secs(1000);
        assert_eq!(
            t.saturating_add(Duration::from_secs(30)),
            Timestamp::from_unix_secs(1030)
        );
        assert!(t.saturating_add(Duration::from_millis(999)) < Timestamp::from_unix_secs(1001));
        assert_eq!(Timestamp::from_unix_secs(u64::MAX), t.saturating_add(Duration::MAX));
        assert!(Timestamp::now() > Timestamp::from_unix_secs(1_700_000_000));
    }
}
