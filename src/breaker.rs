//! Circuit breakers: one per upstream (an issuer's metadata and JWKS, the
//! introspection endpoint, the token endpoint, Vault), so that a dead
//! dependency is answered at once instead of queued on.
//!
//! - **Closed**: every request goes to the upstream; a failure adds one to a
//!   count that any answer resets. At [`BreakerConfig::failure_threshold`]
//!   consecutive failures (default 5) the breaker opens.
//! - **Open**: requests that need the upstream fail at once. The bearer layer
//!   answers 503 with `Retry-After` (the remaining open time, rounded up to a
//!   whole second); a tool gets its usual "temporarily unavailable" error.
//! - **Half-open**: after the cool-down (default 10 s) exactly one request
//!   goes through as a probe; the others still fail fast (`Retry-After: 1`).
//!   The probe's success closes the breaker; its failure opens it again for
//!   twice the previous cool-down, up to [`BreakerConfig::max_cool_down`]
//!   (default 60 s).
//!
//! What counts as a failure: no answer (connection refused or reset, a
//! timeout), a 5xx, an answer that cannot be read. Any other answer, such as
//! a 4xx about a bad token, is the upstream working and resets the count.
//! For metadata and JWKS fetches every failed fetch counts (no answer there
//! is about a token); for the introspection and token endpoints a refusal of
//! this server's client credentials is an answer too.
//! Every change of state is one audit event `circuit`
//! ([`AuditEvent::Circuit`]).
//!
//! Why not a crate: `failsafe` (the best-known one) lets every call through
//! while half-open instead of one probe, cannot say how long it stays open
//! (which `Retry-After` needs) and brings `rand` 0.8 and `parking_lot`; the
//! state machine below is one mutex and a few fields.
//!
//! ```
//! use std::time::Duration;
//! use rmcp_guard::AuthError;
//! use rmcp_guard::breaker::BreakerConfig;
//! use rmcp_guard::oauth::{Issuer, ResourceServer};
//!
//! # fn main() -> Result<(), rmcp_guard::ConfigError> {
//! let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
//!     .breaker(BreakerConfig::default().failure_threshold(3).cool_down(Duration::from_secs(5)))
//!     .build()?;
//! // What a request gets while the breaker of an upstream it needs is open:
//! let open = AuthError::CircuitOpen { upstream: "token keys", retry_after_secs: 4 };
//! let response = rs.challenges().reject(&open);
//! assert_eq!(response.status(), 503);
//! assert_eq!(response.headers()["retry-after"], "4");
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::AuditEvent;
use crate::cache::lock;
use crate::error::ConfigError;

/// When a breaker opens and how long it stays open; one value used for every
/// upstream (set it on the resource server, the token exchange and the Vault
/// store builders).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct BreakerConfig {
    pub(crate) failure_threshold: u32,
    pub(crate) cool_down: Duration,
    pub(crate) max_cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(10),
            max_cool_down: Duration::from_secs(60),
        }
    }
}

impl BreakerConfig {
    /// How many consecutive failures open the breaker (1 to 1000). Defaults
    /// to 5.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures;
        self
    }

    /// How long the breaker stays open before one probe is let through
    /// (at least 100 ms). Defaults to 10 seconds.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// The longest cool-down: each failed probe doubles the cool-down up to
    /// this (at least the cool-down). Defaults to 60 seconds.
    pub fn max_cool_down(mut self, max: Duration) -> Self {
        self.max_cool_down = max;
        self
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.failure_threshold) {
            return Err(ConfigError::OutOfRange {
                what: "breaker failure_threshold",
                reason: "between 1 and 1000",
            });
        }
        if self.cool_down < Duration::from_millis(100) {
            return Err(ConfigError::OutOfRange {
                what: "breaker cool_down",
                reason: "at least 100 ms",
            });
        }
        if self.max_cool_down < self.cool_down {
            return Err(ConfigError::OutOfRange {
                what: "breaker max_cool_down",
                reason: "at least the cool-down",
            });
        }
        Ok(())
    }
}

/// The state of a breaker, as audit events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Requests go to the upstream.
    Closed,
    /// Requests fail at once.
    Open,
    /// One probe is let through; the rest fail at once.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of upstream a breaker guards, as audit events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Upstream {
    /// An issuer's metadata and JWKS.
    Keys,
    /// The RFC 7662 introspection endpoint.
    Introspection,
    /// The token endpoint (token exchange, client credentials).
    TokenEndpoint,
    /// The Vault (or OpenBao) server.
    Vault,
    /// The Redis (or Valkey) server of a fleet.
    Redis,
}

impl Upstream {
    /// `jwks`, `introspection`, `token_endpoint`, `vault` or `redis`.
    pub fn as_str(self) -> &'static str {
        match self {
            Upstream::Keys => "jwks",
            Upstream::Introspection => "introspection",
            Upstream::TokenEndpoint => "token_endpoint",
            Upstream::Vault => "vault",
            Upstream::Redis => "redis",
        }
    }
}

/// The breaker is open: how long until a probe may go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Open {
    retry_after: Duration,
}

impl Open {
    /// The `Retry-After` value: whole seconds, rounded up, at least 1.
    pub(crate) fn retry_after_secs(self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// One upstream's breaker.
pub(crate) struct Breaker {
    upstream: Upstream,
    /// The issuer, endpoint or address (for audit events; never a secret).
    target: String,
    config: BreakerConfig,
    state: Mutex<State>,
}

struct State {
    circuit: CircuitState,
    failures: u32,
    open_until: Instant,
    cool_down: Duration,
    probing: bool,
}

/// A state change, emitted after the lock is released.
struct Transition {
    from: CircuitState,
    to: CircuitState,
    failures: u32,
    retry_after: Option<Open>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("upstream", &self.upstream)
            .field("target", &self.target)
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    /// A closed breaker; `config` was checked by the builder.
    pub(crate) fn new(upstream: Upstream, target: impl Into<String>, config: BreakerConfig) -> Self {
        let cool_down = config.cool_down;
        Breaker {
            upstream,
            target: target.into(),
            config,
            state: Mutex::new(State {
                circuit: CircuitState::Closed,
                failures: 0,
                open_until: Instant::now(),
                cool_down,
                probing: false,
            }),
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> CircuitState {
        lock(&self.state).circuit
    }

    /// Would a request be let through now? Like [`admit`](Self::admit)
    /// without taking the probe slot: for a caller that checks before doing
    /// other work (waiting for a fetch in flight) and admits later.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // the JWKS cache checks before it waits
    pub(crate) fn check(&self) -> Result<(), Open> {
        let now = Instant::now();
        let s = lock(&self.state);
        match s.circuit {
            CircuitState::Open if now < s.open_until => Err(Open {
                retry_after: s.open_until - now,
            }),
            CircuitState::HalfOpen if s.probing => Err(Open {
                retry_after: Duration::from_secs(1),
            }),
            _ => Ok(()),
        }
    }

    /// May a request go to the upstream now? The attempt must be settled
    /// with [`Attempt::settle`]; dropped unsettled
    /// (a cancelled request), it counts as neither and frees the probe slot.
    pub(crate) fn admit(&self) -> Result<Attempt<'_>, Open> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<Attempt<'_>, Open> {
        let mut s = lock(&self.state);
        let transition = match s.circuit {
            CircuitState::Closed => return Ok(self.attempt(false)),
            CircuitState::Open if now < s.open_until => {
                return Err(Open {
                    retry_after: s.open_until - now,
                });
            }
            CircuitState::HalfOpen if s.probing => {
                return Err(Open {
                    retry_after: Duration::from_secs(1),
                });
            }
            CircuitState::HalfOpen => None,
            CircuitState::Open => {
                s.circuit = CircuitState::HalfOpen;
                Some(Transition {
                    from: CircuitState::Open,
                    to: CircuitState::HalfOpen,
                    failures: s.failures,
                    retry_after: None,
                })
            }
        };
        s.probing = true;
        drop(s);
        if let Some(t) = transition {
            self.emit(&t);
        }
        Ok(self.attempt(true))
    }

    fn attempt(&self, probe: bool) -> Attempt<'_> {
        Attempt {
            breaker: self,
            probe,
            settled: false,
        }
    }

    fn settle(&self, probe: bool, ok: bool, now: Instant) {
        let mut s = lock(&self.state);
        let transition = match (s.circuit, probe, ok) {
            (CircuitState::Closed, _, true) => {
                s.failures = 0;
                None
            }
            (CircuitState::Closed, _, false) => {
                s.failures = s.failures.saturating_add(1);
                (s.failures >= self.config.failure_threshold).then(|| {
                    s.circuit = CircuitState::Open;
                    s.cool_down = self.config.cool_down;
                    s.open_until = now + s.cool_down;
                    Transition {
                        from: CircuitState::Closed,
                        to: CircuitState::Open,
                        failures: s.failures,
                        retry_after: Some(Open {
                            retry_after: s.cool_down,
                        }),
                    }
                })
            }
            (CircuitState::HalfOpen, true, true) => {
                let failures = s.failures;
                s.circuit = CircuitState::Closed;
                s.failures = 0;
                s.probing = false;
                s.cool_down = self.config.cool_down;
                Some(Transition {
                    from: CircuitState::HalfOpen,
                    to: CircuitState::Closed,
                    failures,
                    retry_after: None,
                })
            }
            (CircuitState::HalfOpen, true, false) => {
                s.circuit = CircuitState::Open;
                s.failures = s.failures.saturating_add(1);
                s.probing = false;
                s.cool_down = (s.cool_down * 2).min(self.config.max_cool_down);
                s.open_until = now + s.cool_down;
                Some(Transition {
                    from: CircuitState::HalfOpen,
                    to: CircuitState::Open,
                    failures: s.failures,
                    retry_after: Some(Open {
                        retry_after: s.cool_down,
                    }),
                })
            }
            // A request admitted while closed that ends after the breaker
            // opened: the probe decides, not it.
            _ => None,
        };
        drop(s);
        if let Some(t) = transition {
            self.emit(&t);
        }
    }

    fn release_probe(&self) {
        lock(&self.state).probing = false;
    }

    fn emit(&self, t: &Transition) {
        AuditEvent::Circuit {
            upstream: self.upstream.as_str(),
            endpoint: &self.target,
            state: t.to.as_str(),
            previous: t.from.as_str(),
            failures: t.failures,
            retry_after: t.retry_after.map(Open::retry_after_secs),
        }
        .emit();
    }
}

/// A request let through to the upstream; see [`Breaker::admit`].
pub(crate) struct Attempt<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Attempt<'_> {
    /// Settle the attempt: `ok` when the upstream answered (whatever it said
    /// about the request), not when it gave no usable answer (no answer, a
    /// timeout, a 5xx, an unreadable body).
    pub(crate) fn settle(self, ok: bool) {
        self.settle_at(ok, Instant::now());
    }

    fn settle_at(mut self, ok: bool, now: Instant) {
        self.settled = true;
        self.breaker.settle(self.probe, ok, now);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Breaker {
        Breaker::new(
            Upstream::Introspection,
            "http://127.0.0.1:9/introspect",
            BreakerConfig::default().failure_threshold(threshold),
        )
    }

    fn fail(b: &Breaker, now: Instant) {
        b.admit_at(now).unwrap().settle_at(false, now);
    }

    #[test]
    fn defaults_are_pinned() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_threshold, 5);
        assert_eq!(c.cool_down, Duration::from_secs(10));
        assert_eq!(c.max_cool_down, Duration::from_secs(60));
        assert!(c.check().is_ok());
        assert!(BreakerConfig::default().failure_threshold(0).check().is_err());
        assert!(BreakerConfig::default().cool_down(Duration::ZERO).check().is_err());
        assert!(
            BreakerConfig::default()
                .max_cool_down(Duration::from_secs(1))
                .check()
                .is_err()
        );
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3);
        let t0 = Instant::now();
        fail(&b, t0);
        fail(&b, t0);
        // An answer resets the count.
        b.admit_at(t0).unwrap().settle(true);
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&b, t0);
        assert_eq!(b.state(), CircuitState::Open);
        let open = b.admit_at(t0 + Duration::from_millis(500)).err().unwrap();
        assert_eq!(open.retry_after_secs(), 10, "9.5 s rounds up");
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let b = breaker(1);
        let t0 = Instant::now();
        fail(&b, t0);
        let later = t0 + Duration::from_secs(10);
        let probe = b.admit_at(later).unwrap();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit_at(later).err().unwrap().retry_after_secs(), 1);
        // A cancelled probe frees the slot for the next request.
        drop(probe);
        let probe = b.admit_at(later).unwrap();
        probe.settle(true);
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.admit_at(later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_with_a_longer_cool_down() {
        let b = breaker(1);
        let t0 = Instant::now();
        fail(&b, t0);
        let t1 = t0 + Duration::from_secs(10);
        fail(&b, t1);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit_at(t1).err().unwrap().retry_after_secs(), 20);
        // Doubling stops at the maximum.
        let t2 = t1 + Duration::from_secs(20);
        fail(&b, t2);
        let t3 = t2 + Duration::from_secs(40);
        fail(&b, t3);
        assert_eq!(b.admit_at(t3).err().unwrap().retry_after_secs(), 60);
    }

    #[test]
    fn a_late_answer_does_not_decide_for_the_probe() {
        let b = breaker(1);
        let t0 = Instant::now();
        let slow = b.admit_at(t0).unwrap();
        fail(&b, t0);
        // The slow request admitted while closed answers after the breaker opened.
        slow.settle(true);
        assert_eq!(b.state(), CircuitState::Open);
    }
}
