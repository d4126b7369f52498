//! Typed configuration values taken by
//! [`ResourceServerBuilder`](super::ResourceServerBuilder): each groups the
//! settings of one concern, has a [`Default`] that is the documented safe
//! choice, and checks itself when the resource server is built.
//!
//! | value | concern |
//! |---|---|
//! | [`TokenRules`] | what a valid token looks like: algorithms, leeway, size, `typ`, claim names |
//! | [`KeyRefresh`] | when an issuer's JWKS is fetched again |
//! | [`TokenCacheConfig`] | the verified-token cache |
//! | [`IntrospectionConfig`] | RFC 7662 answers: caching and load on the provider (feature `introspection`) |
//!
//! ```
//! use std::time::Duration;
//! use rmcp_guard::oauth::{Issuer, KeyRefresh, ResourceServer, TokenRules};
//!
//! let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
//!     .token_rules(TokenRules::default().leeway(Duration::from_secs(10)).require_access_token_type())
//!     .key_refresh(KeyRefresh::default().unknown_kid_cooldown(Duration::from_secs(60)))
//!     .build();
//! assert!(rs.is_ok());
//! ```

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::url::normalize_case;
use crate::error::ConfigError;
use crate::scope::ScopeImplications;

/// The algorithms allowed when none are configured: RS256, PS256, ES256, EdDSA.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

/// What a valid token looks like, beyond issuer and audience.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct TokenRules {
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    max_token_bytes: usize,
    require_access_token_type: bool,
    tenant_claim: String,
    groups_claim: String,
}

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules {
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(30),
            max_token_bytes: 8 * 1024,
            require_access_token_type: false,
            tenant_claim: "tenant".to_owned(),
            groups_claim: "groups".to_owned(),
        }
    }
}

impl TokenRules {
    /// The signature algorithms accepted from JWKS-backed issuers; HS* and
    /// `none` are refused (a shared-secret issuer is a
    /// [`dangerous`](super::ResourceServerBuilder::dangerous) setting).
    /// Defaults to [`DEFAULT_ALGORITHMS`]: RS256, PS256, ES256 and EdDSA.
    pub fn algorithms<I: IntoIterator<Item = Algorithm>>(mut self, algorithms: I) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// Clock-skew tolerance for `exp`, `nbf` and `iat`, at most 5 minutes.
    /// Defaults to 30 seconds.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The largest token accepted, in bytes (512 to 65536). Defaults to 8192.
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// Require the RFC 9068 header `typ: at+jwt`, so that no other kind of
    /// JWT (an ID token, a logout token) is ever taken for an access token.
    /// Defaults to off: `at+jwt`, `JWT` and no `typ` are accepted.
    pub fn require_access_token_type(mut self) -> Self {
        self.require_access_token_type = true;
        self
    }

    /// The claim holding the caller's tenant. Defaults to `tenant`.
    pub fn tenant_claim(mut self, claim: impl Into<String>) -> Self {
        self.tenant_claim = claim.into();
        self
    }

    /// The claim holding the caller's groups. Defaults to `groups`.
    pub fn groups_claim(mut self, claim: impl Into<String>) -> Self {
        self.groups_claim = claim.into();
        self
    }

    /// The clock-skew tolerance.
    pub(crate) fn leeway_duration(&self) -> Duration {
        self.leeway
    }

    /// The largest token accepted, in bytes.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_token_bytes
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithms);
        }
        if let Some(alg) = self
            .algorithms
            .iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(ConfigError::AlgorithmNotAllowed {
                alg: format!("{alg:?}"),
                reason: "HMAC algorithms are accepted only from a shared-secret issuer (dangerous())",
            });
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(ConfigError::OutOfRange {
                what: "leeway",
                reason: "at most 5 minutes",
            });
        }
        if !(512..=65536).contains(&self.max_token_bytes) {
            return Err(ConfigError::OutOfRange {
                what: "max_token_bytes",
                reason: "between 512 and 65536",
            });
        }
        if self.tenant_claim.is_empty() {
            return Err(ConfigError::EmptyClaimName("tenant"));
        }
        if self.groups_claim.is_empty() {
            return Err(ConfigError::EmptyClaimName("groups"));
        }
        Ok(())
    }
}

/// The claim rules in force, as the JWT and introspection validators read
/// them: [`TokenRules`] with the accepted audiences.
#[derive(Debug)]
pub(crate) struct ClaimRules {
    pub(crate) audiences: HashSet<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) leeway: u64,
    pub(crate) require_access_token_type: bool,
    pub(crate) tenant_claim: String,
    pub(crate) groups_claim: String,
    /// How a token's scopes expand (`scope_implies`); none by default.
    pub(crate) implications: ScopeImplications,
}

impl ClaimRules {
    /// Whether a token's `aud` value names an accepted audience: exactly,
    /// or after lowercasing the scheme and host of an `http(s)` URI (RFC
    /// 3986 section 6.2.2.1: `HTTPS://MCP.Example.com/mcp` is
    /// `https://mcp.example.com/mcp`; the path keeps its case).
    pub(crate) fn accepts_audience(&self, audience: &str) -> bool {
        self.audiences.contains(audience) || self.audiences.contains(normalize_case(audience).as_ref())
    }

    /// Check `rules` and `audiences` and combine them.
    pub(crate) fn new(rules: &TokenRules, audiences: HashSet<String>) -> Result<Self, ConfigError> {
        rules.check()?;
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(ConfigError::NoAudience);
        }
        Ok(ClaimRules {
            audiences,
            algorithms: rules.algorithms.clone(),
            leeway: rules.leeway.as_secs(),
            require_access_token_type: rules.require_access_token_type,
            tenant_claim: rules.tenant_claim.clone(),
            groups_claim: rules.groups_claim.clone(),
            implications: ScopeImplications::default(),
        })
    }
}

/// When an issuer's signing keys are fetched again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct KeyRefresh {
    pub(crate) interval: Duration,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    pub(crate) unknown_kid_cooldown: Duration,
    pub(crate) retry_after_failure: Duration,
}

impl Default for KeyRefresh {
    fn default() -> Self {
        KeyRefresh {
            interval: Duration::from_secs(300),
            min: Duration::from_secs(60),
            max: Duration::from_secs(24 * 3600),
            unknown_kid_cooldown: Duration::from_secs(30),
            retry_after_failure: Duration::from_secs(5),
        }
    }
}

impl KeyRefresh {
    /// How often keys are refreshed when the JWKS response has no
    /// `Cache-Control: max-age`. Defaults to 5 minutes.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Bounds applied to a JWKS `Cache-Control: max-age`. Defaults to
    /// 1 minute and 24 hours.
    pub fn bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// The least time between two fetches caused by an unknown `kid`, so a
    /// flood of forged `kid`s cannot turn this server against the identity
    /// provider. Defaults to 30 seconds.
    pub fn unknown_kid_cooldown(mut self, cooldown: Duration) -> Self {
        self.unknown_kid_cooldown = cooldown;
        self
    }

    /// The least time between two fetches after a failed one. Defaults to
    /// 5 seconds.
    pub fn retry_after_failure(mut self, backoff: Duration) -> Self {
        self.retry_after_failure = backoff;
        self
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.min > self.max {
            return Err(ConfigError::OutOfRange {
                what: "key refresh bounds",
                reason: "the minimum must not exceed the maximum",
            });
        }
        if self.interval.is_zero() || self.max.is_zero() {
            return Err(ConfigError::OutOfRange {
                what: "key refresh interval",
                reason: "must be positive",
            });
        }
        Ok(())
    }
}

/// The verified-token cache: a token seen before is answered without
/// verifying its signature again, never past its `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct TokenCacheConfig {
    pub(crate) capacity: usize,
    pub(crate) max_bytes: usize,
    pub(crate) ttl: Duration,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        TokenCacheConfig {
            capacity: 10_000,
            max_bytes: 32 * 1024 * 1024,
            ttl: Duration::from_secs(300),
        }
    }
}

impl TokenCacheConfig {
    /// How many verified tokens are remembered (0 disables the cache).
    /// Defaults to 10 000.
    pub fn capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// How much memory the remembered principals may take, in bytes (an
    /// estimate of their heap size: claims, strings, map and array nodes).
    /// A token's claims weigh far more in memory than on the wire (a 7.7 KB
    /// token with 500 claims is ~80 KB as a JSON map), so a bound in
    /// entries alone let 10 000 such tokens hold ~800 MB. Past the bound the
    /// least recently used principals are dropped first (they are verified
    /// again on their next request). The cache is split in 16 shards once it
    /// may hold 1024 entries or more, each with 1/16 of the bound; a
    /// principal heavier than its shard's share is never cached. Defaults to
    /// 32 MiB.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How long a verified token is remembered at most; never past its
    /// `exp`. Defaults to 5 minutes.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// How RFC 7662 answers are reused, and how hard the provider is asked.
///
/// for providers where revocation must take effect at once).
///
/// An introspection issuer is configured like any other, with
/// [`Issuer::introspection`](super::Issuer::introspection): the server asks the provider's introspection
/// endpoint about each new token, authenticating as a confidential client
/// ([`ClientAuth`](super::ClientAuth)). The answer becomes the same [`Principal`](crate::Principal) the JWT path
/// builds, behind the same [`BearerAuthLayer`](super::BearerAuthLayer), with
/// the same challenges.
///
/// ```
/// use rmcp_guard::oauth::{ClientAuth, Issuer, ResourceServer};
///
/// # fn main() -> Result<(), rmcp_guard::ConfigError> {
/// let rs = ResourceServer::builder(
///     "https://mcp.example.com/mcp",
///     Issuer::introspection(
///         "https://idp.example.com",
///         "https://idp.example.com/oauth2/introspect",
///         ClientAuth::client_secret("mcp-server", "s3cret")?, // or client_secret_file
///     ),
/// )
/// .required_scopes(["mcp:tools"])
/// .build()?;
/// assert_eq!(rs.issuers().collect::<Vec<_>>(), ["https://idp.example.com"]);
/// # Ok(()) }
/// ```
///
/// # Which validator sees a token
///
/// Exactly one, chosen before anything is verified: a JWS-shaped token (three
/// base64url segments whose payload is a JSON object) whose `iss` names one of
/// the **JWT issuers** is verified locally; every other token goes to the
/// introspection issuer. A token refused by one validator is never retried by
/// the other. At most one introspection issuer can be configured
/// ([`ConfigError::MultipleIntrospectionIssuers`]):
/// an opaque token carries no issuer, so with two there would be no sound
/// way to choose. Without an introspection issuer, every token takes the JWT
/// path, exactly as before.
///
/// # What is checked
///
/// After the provider's answer, the same rules as the JWT path, each with the
/// same rejection (401 `invalid_token`, or 403 `insufficient_scope`):
///
/// | answer | rejection |
/// |---|---|
/// | `active: false`, or a 4xx other than a client-authentication error | `inactive_token` |
/// | `iss` present and not the configured issuer | `untrusted_issuer` |
/// | `token_type` not `Bearer`, or a `cnf` (sender-constrained, e.g. DPoP or mTLS) | `wrong_token_type` |
/// | no `exp` (this server never accepts a token it cannot bound) | `missing_exp` |
/// | `exp`, `nbf`, `iat` out of range (with the configured leeway) | `expired`, `not_yet_valid`, `issued_in_future` |
/// | `aud` missing or naming no accepted audience (RFC 8707) | `wrong_audience` |
/// | neither `sub` nor `client_id` | `invalid_claim` |
/// | a required scope missing from `scope` | 403 `insufficient_scope` |
///
/// The subject is `sub`, or `client_id` for a client-credentials token that
/// has no `sub` (as RFC 9068 prescribes for JWTs). Tenant and groups come from
/// the configured claim names; every member of the answer is in
/// [`Principal::claims`](crate::Principal::claims).
///
/// # Caching and load on the provider
///
/// - An accepted answer is cached in the verified-token cache, at most
///   [`IntrospectionConfig::cache_ttl`]
///   (default 60 s) and never past `exp`: revocation at the provider takes
///   effect within that time.
/// - A refused answer is cached for
///   [`IntrospectionConfig::negative_cache_ttl`]
///   (default 10 s), bounded in size, so a flood of one bad token is not a
///   flood at the provider.
/// - One request is in flight per token: concurrent requests with the same new
///   token wait for the one answer. Requests for distinct new tokens are
///   bounded too: at most
///   [`IntrospectionConfig::max_in_flight`]
///   (default 32) at once; the others wait their turn.
///
/// # Provider down
///
/// A timeout, a connection failure, a 5xx, an unreadable answer, or the
/// provider refusing this server's client credentials (`invalid_client`)
/// answers 503 ([`AuthError::IntrospectionUnavailable`](crate::AuthError::IntrospectionUnavailable), audit reason
/// `introspection_unavailable`), never allow, and is not cached. Tokens cached
/// before keep working until their cache entry ends. After consecutive
/// failures the endpoint's circuit breaker opens
/// ([`ResourceServerBuilder::breaker`](super::ResourceServerBuilder::breaker)):
/// new tokens are then answered 503 with `Retry-After` at once (audit reason
/// `circuit_open`) until a probe succeeds.
#[cfg(feature = "introspection")]
#[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct IntrospectionConfig {
    pub(crate) cache_ttl: Duration,
    pub(crate) negative_cache_ttl: Duration,
    pub(crate) max_in_flight: usize,
}

#[cfg(feature = "introspection")]
impl Default for IntrospectionConfig {
    fn default() -> Self {
        IntrospectionConfig {
            cache_ttl: Duration::from_secs(60),
            negative_cache_ttl: Duration::from_secs(10),
            max_in_flight: 32,
        }
    }
}

#[cfg(feature = "introspection")]
impl IntrospectionConfig {
    /// How long an accepted answer is reused at most; never past the token's
    /// `exp` nor the token cache's TTL. Revocation at the provider takes
    /// effect within this time; 0 asks the provider on every request.
    /// Defaults to 60 seconds.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long a refused answer (`active: false`, wrong audience,
    /// expired...) is reused, so that a flood of one bad token is not a flood
    /// at the provider; at most 5 minutes, 0 disables. Defaults to 10 seconds.
    pub fn negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.negative_cache_ttl = ttl;
        self
    }

    /// How many introspection requests may be in flight at once (1 to
    /// 1024); requests for further new tokens wait their turn, so a flood of
    /// distinct forged tokens cannot become a flood at the provider. Defaults
    /// to 32.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.negative_cache_ttl > Duration::from_secs(300) {
            return Err(ConfigError::OutOfRange {
                what: "introspection negative_cache_ttl",
                reason: "at most 5 minutes",
            });
        }
        if !(1..=1024).contains(&self.max_in_flight) {
            return Err(ConfigError::OutOfRange {
                what: "introspection max_in_flight",
                reason: "between 1 and 1024",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let rules = TokenRules::default();
        assert_eq!(rules.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(rules.leeway, Duration::from_secs(30));
        assert_eq!(rules.max_token_bytes, 8192);
        assert!(!rules.require_access_token_type);
        assert_eq!(rules.tenant_claim, "tenant");
        assert_eq!(rules.groups_claim, "groups");
        let keys = KeyRefresh::default();
        assert_eq!(keys.interval, Duration::from_secs(300));
        assert_eq!(
            (keys.min, keys.max),
            (Duration::from_secs(60), Duration::from_secs(86_400))
        );
        assert_eq!(keys.unknown_kid_cooldown, Duration::from_secs(30));
        assert_eq!(keys.retry_after_failure, Duration::from_secs(5));
        let cache = TokenCacheConfig::default();
        assert_eq!((cache.capacity, cache.ttl), (10_000, Duration::from_secs(300)));
        assert_eq!(cache.max_bytes, 32 * 1024 * 1024);
        #[cfg(feature = "introspection")]
        {
            let i = IntrospectionConfig::default();
            assert_eq!(i.cache_ttl, Duration::from_secs(60));
            assert_eq!(i.negative_cache_ttl, Duration::from_secs(10));
            assert_eq!(i.max_in_flight, 32);
        }
    }

    fn aud() -> HashSet<String> {
        HashSet::from(["https://mcp.example.com/mcp".to_owned()])
    }

    #[test]
    fn bad_rules_are_refused() {
        let check = |r: TokenRules| ClaimRules::new(&r, aud()).map(|_| ());
        assert!(matches!(
            check(TokenRules::default().algorithms([])),
            Err(ConfigError::NoAlgorithms)
        ));
        assert!(matches!(
            check(TokenRules::default().algorithms([Algorithm::HS256])),
            Err(ConfigError::AlgorithmNotAllowed { .. })
        ));
        assert!(matches!(
            check(TokenRules::default().leeway(Duration::from_secs(301))),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            check(TokenRules::default().max_token_bytes(100)),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            check(TokenRules::default().tenant_claim("")),
            Err(ConfigError::EmptyClaimName(_))
        ));
        assert!(matches!(
            ClaimRules::new(&TokenRules::default(), HashSet::new()),
            Err(ConfigError::NoAudience)
        ));
        assert!(matches!(
            KeyRefresh::default()
                .bounds(Duration::from_secs(10), Duration::from_secs(5))
                .check(),
            Err(ConfigError::OutOfRange { .. })
        ));
    }
}
