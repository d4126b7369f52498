//! The authenticated caller, as tools and policies see it.
//!
//! [`BearerAuthLayer`](crate::oauth::BearerAuthLayer) inserts a [`Principal`] into the
//! request extensions after it has verified the bearer token. A `Principal`
//! is an rmcp extractor: a tool (or prompt) takes it as a parameter, and a
//! request without one is refused with the one denial error
//! ([`Rejection::Unauthenticated`](crate::Rejection::Unauthenticated)).
//!
//! ```
//! use rmcp::{ErrorData, handler::server::router::tool::ToolRouter, tool, tool_router};
//! use rmcp_guard::Principal;
//!
//! struct Server {
//!     tool_router: ToolRouter<Self>,
//! }
//!
//! #[tool_router]
//! impl Server {
//!     #[tool(description = "Who am I?")]
//!     async fn whoami(&self, caller: Principal) -> Result<String, ErrorData> {
//!         Ok(format!("hello {}", caller.subject()))
//!     }
//! }
//! # let _ = Server { tool_router: Server::tool_router() };
//! ```
//!
//! A `Principal` is cheap to clone (one reference count): the verified-token
//! cache hands out the same value for every request of a session.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmcp::handler::server::common::{AsRequestContext, FromContextPart};
use serde_json::{Map, Value};

use crate::scope::ScopeImplications;

/// The caller behind a verified access token.
///
/// Only the bearer layer (or another validator of this crate) inserts one into
/// a request; [`Principal::unverified`] exists for tests and offline tools such
/// as a permission matrix, and says so in its name.
#[derive(Clone)]
pub struct Principal {
    inner: Arc<Inner>,
}

struct Inner {
    subject: String,
    issuer: String,
    kind: PrincipalKind,
    client_id: Option<String>,
    /// The effective scopes: `granted` and every scope it implies.
    scopes: BTreeSet<String>,
    /// The scopes the token itself grants.
    granted: BTreeSet<String>,
    audiences: Vec<String>,
    expires_at: u64,
    tenant: Option<String>,
    groups: Vec<String>,
    claims: Map<String, Value>,
    /// Read from `claims` when the principal is built: every request checks
    /// them, and a cached principal then answers without searching its
    /// claims.
    confirmation: Confirmation,
    issued_at: Option<u64>,
    /// [`Principal::caller_key`], encoded once.
    caller_key: Arc<[u8]>,
}

/// How a token is bound to a key: its `cnf` claim (RFC 7800), read once when
/// the principal is built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Confirmation {
    /// No `cnf`: a bearer token.
    #[default]
    Unbound,
    /// Bound to the DPoP key with this RFC 7638 thumbprint (`cnf.jkt`,
    /// RFC 9449).
    Dpop(Box<str>),
    /// A `cnf` without a usable `jkt` (an mTLS binding, or malformed): a
    /// binding this server cannot check.
    Unsupported,
}

impl Confirmation {
    fn of(claims: &Map<String, Value>) -> Confirmation {
        match claims.get("cnf") {
            None => Confirmation::Unbound,
            Some(Value::Object(cnf)) => match cnf.get("jkt") {
                Some(Value::String(jkt)) if !jkt.is_empty() => Confirmation::Dpop(jkt.as_str().into()),
                _ => Confirmation::Unsupported,
            },
            Some(_) => Confirmation::Unsupported,
        }
    }
}

impl Principal {
    /// The `sub` claim: who the token speaks for.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The `iss` claim, exactly one of the configured trusted issuers.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The OAuth client the token was issued to (`client_id`, else `azp`).
    pub fn client_id(&self) -> Option<&str> {
        self.inner.client_id.as_deref()
    }

    /// The RFC 7638 thumbprint of the key the token is bound to (its
    /// `cnf.jkt`, RFC 9449), if it is DPoP-bound. A bound token is accepted
    /// only with a proof of possession by that key, so this is also "the
    /// request proved possession of this key".
    pub fn dpop_thumbprint(&self) -> Option<&str> {
        match &self.inner.confirmation {
            Confirmation::Dpop(jkt) => Some(jkt),
            Confirmation::Unbound | Confirmation::Unsupported => None,
        }
    }

    /// How the token is bound to a key (its `cnf` claim).
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // the DPoP binding check
    pub(crate) fn confirmation(&self) -> &Confirmation {
        &self.inner.confirmation
    }

    /// The caller (issuer, subject, client id) in one slice, for keying
    /// per-caller tables: `c`, then the issuer and the subject, each after
    /// its length ([`push_part`]), then `1` and the client id, or `0`. No
    /// two different callers encode alike. Encoded when the principal is
    /// built, so a request that looks up its caller's budget hashes one
    /// slice and allocates nothing.
    pub(crate) fn caller_key(&self) -> &Arc<[u8]> {
        &self.inner.caller_key
    }

    /// Whether the token speaks for a user or for the client itself; see
    /// [`PrincipalKind`].
    pub fn kind(&self) -> PrincipalKind {
        self.inner.kind
    }

    /// The effective scopes, sorted: those the token grants (`scope`,
    /// space-separated, or `scp`) and every scope they imply under the
    /// resource server's
    /// [`scope_implies`](crate::oauth::ResourceServerBuilder::scope_implies)
    /// settings. The policy sees the same set as `input.scopes`.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.scopes.iter().map(String::as_str)
    }

    /// The scopes the token itself grants, sorted, without implied ones.
    pub fn granted_scopes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.granted.iter().map(String::as_str)
    }

    /// Whether the token grants `scope`, directly or through a scope that
    /// implies it.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.inner.scopes.contains(scope)
    }

    /// The audiences the token was issued for (`aud`).
    pub fn audiences(&self) -> &[String] {
        &self.inner.audiences
    }

    /// When the token expires, in seconds since the Unix epoch (`exp`).
    pub fn expires_at_unix(&self) -> u64 {
        self.inner.expires_at
    }

    /// When the token expires (`exp`), at the latest the end of year 9999.
    pub fn expires_at(&self) -> SystemTime {
        // `exp` is the issuer's number and may be any u64; past what a
        // `SystemTime` can hold, the addition would panic. Year 9999 fits on
        // every platform and is as good as "never" for every use here.
        const LATEST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        UNIX_EPOCH + Duration::from_secs(self.inner.expires_at.min(LATEST))
    }

    /// When the token was issued (`iat`), in whole seconds since the Unix
    /// epoch (a fractional `iat` is rounded down); `None` when the token has
    /// no numeric `iat`. Revocations compare it with their time.
    pub fn issued_at_unix(&self) -> Option<u64> {
        self.inner.issued_at
    }

    /// The token's identifier (`jti`), when it has one.
    pub fn token_id(&self) -> Option<&str> {
        self.inner.claims.get("jti")?.as_str()
    }

    /// The tenant, read from the configured tenant claim.
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// The groups, read from the configured groups claim.
    pub fn groups(&self) -> &[String] {
        &self.inner.groups
    }

    /// Every claim of the token, as JSON.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.inner.claims
    }

    /// A stable identity for the caller across tokens: issuer and subject.
    ///
    /// For keying per-caller data. Sessions are bound more narrowly: to the
    /// [`kind`](Self::kind) and [`client_id`](Self::client_id) too.
    pub fn key(&self) -> (&str, &str) {
        (&self.inner.issuer, &self.inner.subject)
    }

    /// Start building a principal that no token stands behind.
    ///
    /// For tests, permission matrices and other offline tools. The bearer
    /// layer never trusts a principal it did not build itself; do not insert
    /// one into a live request.
    pub fn unverified(issuer: impl Into<String>, subject: impl Into<String>) -> PrincipalBuilder {
        PrincipalBuilder {
            inner: Inner {
                subject: subject.into(),
                issuer: issuer.into(),
                kind: PrincipalKind::User,
                client_id: None,
                scopes: BTreeSet::new(),
                granted: BTreeSet::new(),
                audiences: Vec::new(),
                expires_at: 0,
                tenant: None,
                groups: Vec::new(),
                claims: Map::new(),
                confirmation: Confirmation::Unbound,
                issued_at: None,
                caller_key: Arc::from([].as_slice()),
            },
        }
    }
}

/// The caller of the request being handled; refused with
/// [`Rejection::Unauthenticated`](crate::Rejection::Unauthenticated) when the
/// request did not pass the bearer layer (the server is wired wrong: fail
/// closed).
impl<C: AsRequestContext> FromContextPart<C> for Principal {
    fn from_context_part(context: &mut C) -> Result<Self, rmcp::ErrorData> {
        crate::extract::extension::<Principal, C>(context)
            .ok_or_else(|| crate::error::Rejection::Unauthenticated.into())
    }
}

impl fmt::Debug for Principal {
    // Claims can be large and may hold personal data: show the identity only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.inner.subject)
            .field("issuer", &self.inner.issuer)
            .field("kind", &self.inner.kind)
            .field("client_id", &self.inner.client_id)
            .field("scopes", &self.inner.scopes)
            .field("tenant", &self.inner.tenant)
            .field("groups", &self.inner.groups)
            .field("expires_at", &self.inner.expires_at)
            .finish_non_exhaustive()
    }
}

/// Who a token speaks for: a user, or an OAuth client acting for itself.
///
/// A token from the client credentials grant has no resource owner; its
/// subject is the client. The validators tell the two apart:
///
/// - a JWT whose `sub` equals its `client_id` (or `azp`) is a client's
///   (RFC 9068 section 2.2: for a grant without a resource owner, `sub` names
///   the client);
/// - an introspection answer without `sub` (the subject then falls back to
///   the `client_id`), or whose `sub` equals its `client_id`, is a client's;
/// - every other token is a user's.
///
/// A client called `alice` and a user called `alice` are then two callers:
/// sessions are bound to the kind too, and a policy sees it as
/// `input.kind` (`"user"` or `"client"`).
///
/// ```
/// use rmcp_guard::{Principal, PrincipalKind};
///
/// let alice = Principal::unverified("https://idp", "alice").build();
/// assert_eq!(alice.kind(), PrincipalKind::User);
/// let robot = Principal::unverified("https://idp", "ci-bot")
///     .client_id("ci-bot")
///     .kind(PrincipalKind::Client)
///     .build();
/// assert_eq!(robot.kind().as_str(), "client");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PrincipalKind {
    /// A token issued to a client acting for a user (the resource owner).
    User,
    /// A token a client obtained for itself (client credentials): no user.
    Client,
}

impl PrincipalKind {
    /// `"user"` or `"client"`, as the policy input names it.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Client => "client",
        }
    }

    /// The kind of a token with this subject and client id: a client's when
    /// they are equal (RFC 9068 section 2.2), a user's otherwise.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // the token validators
    pub(crate) fn of(subject: &str, client_id: Option<&str>) -> Self {
        if client_id == Some(subject) {
            PrincipalKind::Client
        } else {
            PrincipalKind::User
        }
    }
}

/// Append `text` to a key after its length (8 bytes, little-endian), so that
/// no two different sequences of parts encode alike.
pub(crate) fn push_part(key: &mut Vec<u8>, text: &str) {
    key.extend_from_slice(&(text.len() as u64).to_le_bytes());
    key.extend_from_slice(text.as_bytes());
}

/// [`Principal::caller_key`] of `inner`.
fn encode_caller(inner: &Inner) -> Arc<[u8]> {
    let client = inner.client_id.as_deref();
    let mut key = Vec::with_capacity(26 + inner.issuer.len() + inner.subject.len() + client.map_or(0, str::len));
    key.push(b'c');
    push_part(&mut key, &inner.issuer);
    push_part(&mut key, &inner.subject);
    match client {
        Some(client) => {
            key.push(1);
            push_part(&mut key, client);
        }
        None => key.push(0),
    }
    key.into()
}

/// Builds a [`Principal`]; see [`Principal::unverified`].
#[derive(Debug)]
pub struct PrincipalBuilder {
    inner: Inner,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl PrincipalBuilder {
    /// Set the client id. Defaults to none.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.inner.client_id = Some(client_id.into());
        self
    }

    /// Set the kind of caller. Defaults to [`PrincipalKind::User`].
    pub fn kind(mut self, kind: PrincipalKind) -> Self {
        self.inner.kind = kind;
        self
    }

    /// Set the granted scopes (no implications: the effective scopes are
    /// these). Defaults to none.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.inner.granted = scopes.into_iter().map(Into::into).collect();
        self.inner.scopes = self.inner.granted.clone();
        self
    }

    /// Expand the granted scopes with `implications` (once per token, by
    /// the validators, before the principal is cached).
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // the token validators
    pub(crate) fn implied_by(mut self, implications: &ScopeImplications) -> Self {
        if !implications.is_empty() {
            self.inner.scopes = implications.expand(&self.inner.granted);
        }
        self
    }

    /// Set the audiences. Defaults to none.
    pub fn audiences(mut self, audiences: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.inner.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Set the expiry in seconds since the Unix epoch. Defaults to `0`.
    pub fn expires_at_unix(mut self, exp: u64) -> Self {
        self.inner.expires_at = exp;
        self
    }

    /// Set the tenant. Defaults to none.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.inner.tenant = Some(tenant.into());
        self
    }

    /// Set the groups. Defaults to none.
    pub fn groups(mut self, groups: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.inner.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Set all claims. Defaults to an empty object.
    pub fn claims(mut self, claims: Map<String, Value>) -> Self {
        self.inner.claims = claims;
        self
    }

    /// Finish.
    pub fn build(mut self) -> Principal {
        let claims = &self.inner.claims;
        self.inner.confirmation = Confirmation::of(claims);
        // Negative or absurd values saturate; a NaN cannot come from JSON.
        self.inner.issued_at = claims
            .get("iat")
            .and_then(Value::as_f64)
            .map(|iat| iat.max(0.0).floor() as u64);
        self.inner.caller_key = encode_caller(&self.inner);
        Principal {
            inner: Arc::new(self.inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iat_and_jti_come_from_the_claims() {
        let with = |claims: serde_json::Value| {
            Principal::unverified("i", "s")
                .claims(claims.as_object().cloned().unwrap_or_default())
                .build()
        };
        let p = with(serde_json::json!({"iat": 1_700_000_000.9, "jti": "t-1"}));
        assert_eq!(p.issued_at_unix(), Some(1_700_000_000));
        assert_eq!(p.token_id(), Some("t-1"));
        let odd = with(serde_json::json!({"iat": "yesterday", "jti": 7}));
        assert_eq!((odd.issued_at_unix(), odd.token_id()), (None, None));
        assert_eq!(with(serde_json::json!({"iat": -5})).issued_at_unix(), Some(0));
        assert_eq!(with(serde_json::json!({"iat": 1e300})).issued_at_unix(), Some(u64::MAX));
    }

    #[test]
    fn a_far_future_exp_does_not_panic() {
        // `exp` is the issuer's number: jwt.rs accepts any finite value and
        // saturates it into u64 (1e300 -> u64::MAX).
        for exp in [u64::MAX, i64::MAX as u64, 10_000_000_000_000_000_000] {
            let p = Principal::unverified("https://idp", "alice")
                .expires_at_unix(exp)
                .build();
            assert!(p.expires_at() > SystemTime::now() + Duration::from_secs(3600 * 24 * 365 * 1000));
        }
        let p = Principal::unverified("https://idp", "alice")
            .expires_at_unix(1_700_000_000)
            .build();
        assert_eq!(p.expires_at(), UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    }
}
