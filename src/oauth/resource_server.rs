//! The one configuration value: [`ResourceServer`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header;
use jsonwebtoken::Algorithm;
use tracing::Instrument as _;

use super::cache::{TokenHash, hash_token};
use super::config::{KeyRefresh, TokenCacheConfig, TokenRules};
use super::dpop::{self, DpopConfig, DpopMode, Scheme, VerifiedProof};
use super::hosts::HostPolicy;
use super::issuer::Issuer;
use super::jwt::Failure;
use super::metadata::{self, ProtectedResourceMetadata};
use super::url::{metadata_url_for, normalize_case, parse_identifier, parse_url};
use super::validator::{TokenValidator, ValidatorConfig};
use crate::audit::{AuditEvent, Caller, Outcome};
use crate::challenge::Challenges;
use crate::error::{AuthError, ConfigError, TokenRejection};
use crate::principal::Principal;
use crate::revoke::Revocations;
use crate::scope::{ScopeImplications, advertised, valid_scope};
use crate::state::{ReplayEntry, ReplaySet, StateError};
use crate::telemetry::trace;

/// The OAuth 2.1 resource server configuration; see the [type docs](Self).
///
/// Cheap to clone (one reference count).
///
/// A `ResourceServer` is built once from the canonical resource URI and the
/// trusted issuers. It holds the resource's identity (URI, RFC 9728 metadata,
/// challenges, `Host`/`Origin` policy) and the token validator, and
/// authenticates requests with them; [`BearerAuthLayer`](super::BearerAuthLayer) is tower glue over
/// [`ResourceServer::authenticate`]. The metadata document, the challenges
/// and the layer cannot disagree because they read the same value.
///
/// ```
/// use rmcp_guard::oauth::{Issuer, ResourceServer};
///
/// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
///     .required_scopes(["mcp:tools"])
///     .build()
///     .expect("valid configuration");
/// assert_eq!(rs.resource(), "https://mcp.example.com/mcp");
/// assert_eq!(
///     rs.metadata_url(),
///     "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
/// );
/// ```
///
/// Settings that weaken a default are behind one named step,
/// [`ResourceServerBuilder::dangerous`]: a shared-secret (HS*) issuer, a
/// custom HTTP client, wildcard origins.
#[derive(Clone)]
pub struct ResourceServer {
    inner: Arc<Inner>,
}

struct Inner {
    resource: String,
    resource_path: String,
    metadata_url: String,
    metadata: ProtectedResourceMetadata,
    metadata_json: bytes::Bytes,
    challenges: Challenges,
    max_token_bytes: usize,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    client_credentials: bool,
    max_token_lifetime: Duration,
    leeway: Duration,
    validator: TokenValidator,
    dpop: DpopConfig,
    /// The resource URI as a proof's `htu` must name it (normalized).
    dpop_htu: String,
    dpop_replay: Arc<dyn ReplaySet>,
}

/// The longest `DPoP` header accepted, in bytes.
const MAX_PROOF_BYTES: usize = 8 * 1024;

impl fmt::Debug for ResourceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceServer")
            .field("resource", &self.inner.resource)
            .field("issuers", &self.inner.metadata.authorization_servers)
            .field("required_scopes", &self.inner.challenges.required_scopes())
            .finish_non_exhaustive()
    }
}

/// What the synchronous first look at a request decided.
pub(crate) enum Begin {
    /// A token verified before: the caller, and a copy of the token when it
    /// was asked for (token exchange).
    Accept(Principal, Option<zeroize::Zeroizing<String>>),
    Reject(AuthError),
    /// A new token, or any token with a DPoP proof: finish with
    /// [`ResourceServer::finish`].
    Verify(Pending),
}

/// A request whose credentials need the async path: the token, its hash,
/// the verified DPoP proof if it came with one, and the caller if the
/// token was verified before.
pub(crate) struct Pending {
    pub(crate) token: zeroize::Zeroizing<String>,
    hash: TokenHash,
    proof: Option<VerifiedProof>,
    cached: Option<Principal>,
}

impl Pending {
    /// Whether the token came with a DPoP proof.
    pub(crate) fn is_dpop(&self) -> bool {
        self.proof.is_some()
    }

    /// Whether the token was verified before (a DPoP request with a cached
    /// token still comes this way, for its proof).
    pub(crate) fn is_cached(&self) -> bool {
        self.cached.is_some()
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl ResourceServer {
    /// Start a configuration for the MCP endpoint at `resource` (its canonical
    /// URI, for example `https://mcp.example.com/mcp`) trusting `issuer`.
    ///
    /// Both are required: a resource server without a resource identity or a
    /// trusted issuer cannot check a token's audience or signature.
    pub fn builder(resource: impl Into<String>, issuer: Issuer) -> ResourceServerBuilder {
        ResourceServerBuilder {
            resource: resource.into(),
            issuers: vec![issuer],
            audiences: None,
            required_scopes: Vec::new(),
            scopes_supported: None,
            implications: Vec::new(),
            rules: TokenRules::default(),
            keys: KeyRefresh::default(),
            breaker: crate::breaker::BreakerConfig::default(),
            cache: TokenCacheConfig::default(),
            hosts: HostPolicy::default(),
            #[cfg(feature = "introspection")]
            introspection: super::config::IntrospectionConfig::default(),
            http_timeout: Duration::from_secs(5),
            resource_name: None,
            resource_documentation: None,
            http_client: None,
            wildcard_origins: false,
            client_credentials: true,
            max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            dpop: DpopConfig::default(),
        }
    }

    /// The canonical resource URI: as configured, with its scheme and host
    /// in lowercase.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// The path of the resource URI (for example `/mcp`), where the MCP
    /// endpoint is served.
    pub fn resource_path(&self) -> &str {
        &self.inner.resource_path
    }

    /// The URL of this resource's RFC 9728 metadata, as sent in the
    /// `resource_metadata` challenge parameter.
    pub fn metadata_url(&self) -> &str {
        &self.inner.metadata_url
    }

    /// The RFC 9728 metadata document.
    pub fn metadata(&self) -> &ProtectedResourceMetadata {
        &self.inner.metadata
    }

    /// The scopes every request must carry.
    pub fn required_scopes(&self) -> &[String] {
        self.inner.challenges.required_scopes()
    }

    /// The trusted issuers (JWT and introspection), in configuration order.
    pub fn issuers(&self) -> impl Iterator<Item = &str> + '_ {
        self.inner.metadata.authorization_servers.iter().map(String::as_str)
    }

    /// The `WWW-Authenticate` challenges and rejection responses of this
    /// resource.
    pub fn challenges(&self) -> &Challenges {
        &self.inner.challenges
    }

    /// The RFC 9728 metadata routes (`/.well-known/oauth-protected-resource`
    /// and the path-suffixed form), to merge into an axum app.
    pub fn metadata_router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        metadata::routes(self.inner.metadata_json.clone(), self.resource_path())
    }

    /// The `Host` values rmcp's DNS-rebinding check accepts for this
    /// resource; see [`HostPolicy`].
    pub fn allowed_hosts(&self) -> &[String] {
        &self.inner.allowed_hosts
    }

    /// The browser `Origin` values accepted when a request carries one; see
    /// [`HostPolicy`].
    pub fn allowed_origins(&self) -> &[String] {
        &self.inner.allowed_origins
    }

    /// rmcp's Streamable HTTP configuration with DNS-rebinding protection
    /// kept on: [`allowed_hosts`](Self::allowed_hosts) and
    /// [`allowed_origins`](Self::allowed_origins) from this resource, so a
    /// server deployed at its public URI does not answer 403 to every request
    /// and a foreign web page cannot drive it. Its request body limit is
    /// rmcp's (`max_request_body_bytes`, 4 MiB: `413` over it).
    pub fn streamable_http_config(&self) -> rmcp::transport::streamable_http_server::StreamableHttpServerConfig {
        rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default()
            .with_allowed_hosts(self.inner.allowed_hosts.iter().cloned())
            .with_allowed_origins(self.inner.allowed_origins.iter().cloned())
    }

    /// What the verified-token cache holds now (entries and estimated bytes),
    /// e.g. for a metrics gauge; bounded by [`TokenCacheConfig`].
    pub fn token_cache_usage(&self) -> super::CacheUsage {
        self.inner.validator.cache_usage()
    }

    /// Whether tokens a client obtained for itself (client credentials,
    /// [`PrincipalKind::Client`](crate::PrincipalKind::Client)) are accepted;
    /// see [`ResourceServerBuilder::accept_client_credentials`].
    pub fn accepts_client_credentials(&self) -> bool {
        self.inner.client_credentials
    }

    /// The longest token lifetime accepted; see
    /// [`ResourceServerBuilder::max_token_lifetime`].
    pub fn max_token_lifetime(&self) -> Duration {
        self.inner.max_token_lifetime
    }

    /// How long a revocation must be kept so that every token it could
    /// match has expired: the longest lifetime plus the leeway.
    pub(crate) fn revocation_retention(&self) -> Duration {
        self.inner.max_token_lifetime + self.inner.leeway
    }

    /// How this resource server treats DPoP; see
    /// [`ResourceServerBuilder::dpop`].
    pub fn dpop(&self) -> &DpopConfig {
        &self.inner.dpop
    }

    /// The `DPoP-Nonce` to send on a response to a request with a DPoP
    /// proof, when nonces are required.
    pub(crate) fn dpop_nonce(&self) -> Option<String> {
        self.inner.dpop.nonces.as_ref().map(super::DpopNonces::current)
    }

    /// Fetch every issuer's signing keys now, so the first request does not
    /// wait and a misconfigured issuer is noticed at start-up.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        self.inner.validator.warm_up().await
    }

    /// Authenticate a request (its method, URI and headers: a DPoP proof
    /// names the method) exactly as [`BearerAuthLayer`](super::BearerAuthLayer)
    /// does without revocations, for servers that are not built on tower;
    /// answer a refusal with [`challenges().reject(&error)`](Challenges::reject).
    /// [`authenticate_with`](Self::authenticate_with) checks revocations too.
    pub async fn authenticate(&self, request: &http::request::Parts) -> Result<Principal, AuthError> {
        self.authenticate_inner(request, None).await
    }

    /// [`authenticate`](Self::authenticate), refusing tokens `revocations`
    /// revoked as [`BearerAuthLayer::revocations`](super::BearerAuthLayer::revocations) does.
    pub async fn authenticate_with(
        &self,
        request: &http::request::Parts,
        revocations: &Revocations,
    ) -> Result<Principal, AuthError> {
        self.authenticate_inner(request, Some(revocations)).await
    }

    async fn authenticate_inner(
        &self,
        request: &http::request::Parts,
        revocations: Option<&Revocations>,
    ) -> Result<Principal, AuthError> {
        let span = trace::authenticate_span();
        let begun = span.in_scope(|| self.begin(&request.method, &request.headers, &request.uri, false, revocations));
        let (result, cached) = match begun {
            Begin::Accept(principal, _) => (Ok(principal), true),
            Begin::Reject(error) => (Err(error), false),
            Begin::Verify(pending) => {
                let cached = pending.is_cached();
                let verified = self.finish(pending, revocations, None).instrument(span.clone()).await;
                (verified, cached)
            }
        };
        match &result {
            Ok(principal) => trace::authenticated(&span, principal.client_id(), cached),
            Err(error) => trace::refused(&span, error.reason(), error.status().is_server_error()),
        }
        result
    }

    /// Read the credentials of a request and check its DPoP proof, if any;
    /// answer from the cache when possible (never for a request with a
    /// proof: its `jti` must be recorded). Every refusal is audited here.
    /// The token is copied out of the request only when `keep_token` (or
    /// when it must be verified).
    pub(crate) fn begin(
        &self,
        method: &http::Method,
        headers: &http::HeaderMap,
        uri: &http::Uri,
        keep_token: bool,
        revocations: Option<&Revocations>,
    ) -> Begin {
        let (scheme, token) = match credentials(headers, uri, self.inner.max_token_bytes, self.inner.dpop.mode) {
            Ok(found) => found,
            Err(error) => {
                authn_refused(&error, Caller::default());
                return Begin::Reject(error);
            }
        };
        let hash = hash_token(token);
        let now = now_unix();
        let proof = match scheme {
            Scheme::Bearer => None,
            Scheme::Dpop => match self.check_proof(method, headers, &hash, now) {
                Ok(proof) => Some(proof),
                Err(error) => {
                    authn_refused(&error, Caller::default());
                    return Begin::Reject(error);
                }
            },
        };
        match (proof, self.inner.validator.cached(&hash, now)) {
            (None, Some(principal)) => match self.check_principal(&principal, None, revocations) {
                Ok(()) => {
                    authn_accepted(&principal, true);
                    Begin::Accept(principal, keep_token.then(|| zeroize::Zeroizing::new(token.to_owned())))
                }
                Err(error) => Begin::Reject(error),
            },
            (proof, cached) => Begin::Verify(Pending {
                token: zeroize::Zeroizing::new(token.to_owned()),
                hash,
                proof,
                cached,
            }),
        }
    }

    /// The request's one `DPoP` header, checked (RFC 9449 section 4.3)
    /// against this request and token.
    fn check_proof(
        &self,
        method: &http::Method,
        headers: &http::HeaderMap,
        token_hash: &TokenHash,
        now: u64,
    ) -> Result<VerifiedProof, AuthError> {
        use crate::error::DpopRejection;
        let mut values = headers.get_all("dpop").iter();
        let value = match (values.next(), values.next()) {
            (Some(value), None) => value,
            (Some(_), Some(_)) => return Err(AuthError::InvalidDpopProof(DpopRejection::Multiple)),
            (None, _) => return Err(AuthError::InvalidDpopProof(DpopRejection::Missing)),
        };
        if value.len() > MAX_PROOF_BYTES {
            return Err(AuthError::InvalidDpopProof(DpopRejection::TooLarge));
        }
        let proof = value
            .to_str()
            .map_err(|_| AuthError::InvalidDpopProof(DpopRejection::Malformed))?;
        let config = &self.inner.dpop;
        dpop::verify(
            proof,
            &dpop::Expected {
                method: method.as_str(),
                htu: &self.inner.dpop_htu,
                token_hash,
                algorithms: &config.algorithms,
                not_before: now.saturating_sub(config.proof_max_age.as_secs()),
                not_after: now.saturating_add(config.leeway.as_secs()),
                nonces: config.nonces.as_ref(),
            },
        )
    }

    /// Finish what [`begin`](Self::begin) could not: verify a new token,
    /// check the binding and record the proof's `jti` (in `replay`, else
    /// this server's replay set). Every outcome is audited here.
    pub(crate) async fn finish(
        &self,
        pending: Pending,
        revocations: Option<&Revocations>,
        replay: Option<&dyn ReplaySet>,
    ) -> Result<Principal, AuthError> {
        let Pending {
            token,
            hash,
            proof,
            cached,
        } = pending;
        let from_cache = cached.is_some();
        let principal = match cached {
            Some(principal) => principal,
            None => match self.inner.validator.verify(&token, hash, now_unix()).await {
                Ok(principal) => principal,
                Err(Failure {
                    error,
                    issuer,
                    subject,
                    client_id,
                }) => {
                    let caller = Caller {
                        issuer: issuer.as_deref(),
                        subject: subject.as_deref(),
                        client_id: client_id.as_deref(),
                        tenant: None,
                    };
                    authn_refused(&error, caller);
                    return Err(error);
                }
            },
        };
        self.check_principal(&principal, proof.as_ref(), revocations)?;
        if let Some(proof) = &proof {
            let replay = replay.unwrap_or(&*self.inner.dpop_replay);
            if let Err(error) = self.record_proof(&principal, proof, replay).await {
                authn_refused(&error, Caller::from(&principal));
                return Err(error);
            }
        }
        authn_accepted(&principal, from_cache);
        Ok(principal)
    }

    /// Record the proof's key and `jti` for as long as its `iat` is
    /// accepted (plus the leeway, for replicas whose clocks differ), under
    /// its caller: one caller cannot fill another's share. A full or
    /// unreachable set refuses (503): a replay it cannot rule out is never
    /// let through.
    async fn record_proof(
        &self,
        principal: &Principal,
        proof: &VerifiedProof,
        replay: &dyn ReplaySet,
    ) -> Result<(), AuthError> {
        let config = &self.inner.dpop;
        let until = proof
            .iat
            .saturating_add(config.proof_max_age.as_secs())
            .saturating_add(config.leeway.as_secs())
            .saturating_add(1);
        let entry = ReplayEntry::new(
            dpop::replay_owner(principal),
            proof.id,
            crate::cache::Timestamp::from_unix_secs(until),
        );
        match replay.first_use(entry).await {
            Ok(()) => Ok(()),
            Err(StateError::Replayed) => Err(AuthError::InvalidDpopProof(crate::error::DpopRejection::Replayed)),
            // Past its window by the store's clock (a replica's clock ahead of this one's).
            Err(StateError::Expired) => Err(AuthError::InvalidDpopProof(crate::error::DpopRejection::Stale)),
            Err(_) => Err(AuthError::DpopReplayUnavailable { retry_after_secs: 1 }),
        }
    }

    /// The checks after validation, on every request (cached tokens too):
    /// the DPoP binding, the caller's kind, the token's lifetime, the
    /// revocations, then the required scopes.
    fn check_principal(
        &self,
        principal: &Principal,
        proof: Option<&VerifiedProof>,
        revocations: Option<&Revocations>,
    ) -> Result<(), AuthError> {
        let scheme = if proof.is_some() { Scheme::Dpop } else { Scheme::Bearer };
        let refused = if let Err(error) = dpop::check_binding(principal, self.inner.dpop.mode, scheme, proof) {
            Err(error)
        } else if !self.inner.client_credentials && principal.kind() == crate::PrincipalKind::Client {
            Err(AuthError::from(TokenRejection::ClientCredentials))
        } else if self.lifetime_too_long(principal, now_unix()) {
            Err(AuthError::from(TokenRejection::LifetimeTooLong))
        } else {
            revocations.map_or(Ok(()), |r| r.check(principal))
        };
        if let Err(error) = refused {
            authn_refused(&error, Caller::from(principal));
            return Err(error);
        }
        self.check_scopes(principal)
    }

    /// Whether `exp` is further than the longest accepted lifetime from now
    /// (plus the leeway: `iat` may be that far ahead) or from `iat`.
    fn lifetime_too_long(&self, principal: &Principal, now: u64) -> bool {
        let max = self.inner.max_token_lifetime.as_secs();
        let exp = principal.expires_at_unix();
        exp > now.saturating_add(max).saturating_add(self.inner.leeway.as_secs())
            || principal
                .issued_at_unix()
                .is_some_and(|iat| exp > iat.saturating_add(max))
    }

    fn check_scopes(&self, principal: &Principal) -> Result<(), AuthError> {
        let required = self.required_scopes();
        if required.iter().all(|s| principal.has_scope(s)) {
            return Ok(());
        }
        let error = AuthError::InsufficientScope {
            required: required.to_vec(),
        };
        authn_refused(&error, Caller::from(principal));
        Err(error)
    }

    #[cfg(test)]
    pub(crate) fn validator(&self) -> &TokenValidator {
        &self.inner.validator
    }
}

fn authn_accepted(principal: &Principal, cached: bool) {
    AuditEvent::Authn {
        outcome: Outcome::Allow,
        reason: "valid_token",
        status: None,
        caller: Caller::from(principal),
        cached,
    }
    .emit();
}

fn authn_refused(error: &AuthError, caller: Caller<'_>) {
    let status = error.status();
    AuditEvent::Authn {
        outcome: if status.is_server_error() {
            Outcome::Error
        } else {
            Outcome::Deny
        },
        reason: error.reason(),
        status: Some(status.as_u16()),
        caller,
        cached: false,
    }
    .emit();
}

/// The access token of a request and how it was presented: only from
/// `Authorization: Bearer`, or `Authorization: DPoP` unless DPoP is off
/// (schemes case-insensitive), never from the query string.
fn credentials<'h>(
    headers: &'h http::HeaderMap,
    uri: &http::Uri,
    max_bytes: usize,
    mode: DpopMode,
) -> Result<(Scheme, &'h str), AuthError> {
    if uri
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.split('=').next() == Some("access_token")))
    {
        return Err(AuthError::InvalidRequest(
            "access tokens are not accepted in the query string; use the Authorization header",
        ));
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::MissingToken);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidRequest("more than one Authorization header"));
    }
    let Some(value) = header_text(value) else {
        return Err(AuthError::InvalidRequest("malformed Authorization header"));
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") && mode != DpopMode::Off {
        Scheme::Dpop
    } else {
        // Another scheme is not credentials this server takes: challenge for them.
        return Err(AuthError::MissingToken);
    };
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::InvalidRequest("empty bearer token"));
    }
    if token.len() > max_bytes {
        return Err(TokenRejection::TooLarge.into());
    }
    if token.contains(' ') {
        return Err(TokenRejection::Malformed.into());
    }
    Ok((scheme, token))
}

/// The header's text when it is all visible ASCII, spaces and tabs (what
/// `HeaderValue::to_str` accepts), checked in one branch-free pass over a
/// value as long as a token.
fn header_text(value: &http::HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    let visible = bytes
        .iter()
        .fold(true, |ok, &b| ok & ((b' '..=b'~').contains(&b) | (b == b'\t')));
    if !visible {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Builds a [`ResourceServer`]. Start with [`ResourceServer::builder`].
#[derive(Debug)]
#[must_use]
pub struct ResourceServerBuilder {
    resource: String,
    issuers: Vec<Issuer>,
    audiences: Option<Vec<String>>,
    required_scopes: Vec<String>,
    scopes_supported: Option<Vec<String>>,
    implications: Vec<(String, Vec<String>)>,
    rules: TokenRules,
    keys: KeyRefresh,
    breaker: crate::breaker::BreakerConfig,
    cache: TokenCacheConfig,
    hosts: HostPolicy,
    #[cfg(feature = "introspection")]
    introspection: super::config::IntrospectionConfig,
    http_timeout: Duration,
    resource_name: Option<String>,
    resource_documentation: Option<String>,
    http_client: Option<reqwest::Client>,
    wildcard_origins: bool,
    client_credentials: bool,
    max_token_lifetime: Duration,
    dpop: DpopConfig,
}

/// The longest token lifetime accepted unless configured otherwise: 24 hours.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl ResourceServerBuilder {
    /// The longest token lifetime accepted: a token whose `exp` is further
    /// than this from its `iat`, or from now (plus the leeway), is refused
    /// with 401 `invalid_token`
    /// ([`TokenRejection::LifetimeTooLong`](crate::TokenRejection::LifetimeTooLong)).
    /// It bounds how long a [revocation](crate::revoke) must be kept (this
    /// plus the leeway), 1 minute to 366 days. Defaults to 24 hours
    /// ([`DEFAULT_MAX_TOKEN_LIFETIME`]).
    pub fn max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_token_lifetime = lifetime;
        self
    }

    /// Accept tokens a client obtained for itself (the client credentials
    /// grant: a caller of kind [`PrincipalKind::Client`](crate::PrincipalKind::Client),
    /// no user), and say so: [`Guard`](crate::Guard) advertises the MCP
    /// extension [`io.modelcontextprotocol/oauth-client-credentials`](crate::advertise::CLIENT_CREDENTIALS_EXTENSION)
    /// in `server/discover` and `initialize`. With `false`, such a token is
    /// refused with 401 `invalid_token`
    /// ([`TokenRejection::ClientCredentials`](crate::TokenRejection::ClientCredentials))
    /// and the extension is not advertised. Defaults to `true`.
    pub fn accept_client_credentials(mut self, accept: bool) -> Self {
        self.client_credentials = accept;
        self
    }

    /// How DPoP-bound tokens (RFC 9449) are treated: [`DpopMode::Allowed`]
    /// by default (bound tokens must come with a proof by their key;
    /// bearer tokens are still accepted), [`DpopMode::Required`] or
    /// [`DpopMode::Off`]; see [`DpopConfig`] for the proof rules, the
    /// replay set and server nonces. The metadata and the challenges follow.
    pub fn dpop(mut self, dpop: DpopConfig) -> Self {
        self.dpop = dpop;
        self
    }

    /// Trust one more issuer. Defaults to only the issuer given to
    /// [`ResourceServer::builder`].
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Accept tokens whose `aud` contains any of `audiences` (RFC 8707).
    /// Defaults to the resource URI alone.
    pub fn audiences(mut self, audiences: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.audiences = Some(audiences.into_iter().map(Into::into).collect());
        self
    }

    /// Scopes every request must carry; a token without them (directly or
    /// through [`scope_implies`](Self::scope_implies)) gets 403
    /// `insufficient_scope` naming all of them. `offline_access` asks for a
    /// refresh token and is not a resource requirement: it is dropped here
    /// (never required, never advertised, never in a challenge). Defaults
    /// to none.
    pub fn required_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The `scopes_supported` advertised in the metadata, without
    /// `offline_access` (MCP 2026-07-28: a protected resource should not
    /// advertise it). Defaults to the required scopes.
    pub fn scopes_supported(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes_supported = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// A token granting `scope` also has every scope in `implied`, and
    /// what those imply in turn (transitive; cycles are fine). Sufficiency
    /// is decided on these effective scopes everywhere: the required
    /// scopes here, [`Principal::has_scope`](crate::Principal::has_scope),
    /// the step-up pre-check and the policy's `input.scopes`. They are
    /// computed once per token, when it is verified, and cached with it.
    /// Calls add up: `.scope_implies("a", ["b"]).scope_implies("a", ["c"])`
    /// is `a` implies `b` and `c`. An empty or otherwise invalid scope name
    /// is a [`ConfigError::InvalidScope`] at build. Defaults to no
    /// implications.
    ///
    /// ```
    /// use rmcp_guard::oauth::{Issuer, ResourceServer};
    ///
    /// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
    ///     .required_scopes(["mcp:tools"])
    ///     .scope_implies("mcp:admin", ["mcp:tools", "mcp:read"])
    ///     .build();
    /// assert!(rs.is_ok());
    /// ```
    pub fn scope_implies(
        mut self,
        scope: impl Into<String>,
        implied: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.implications
            .push((scope.into(), implied.into_iter().map(Into::into).collect()));
        self
    }

    /// What a valid token looks like. Defaults to [`TokenRules::default`].
    pub fn token_rules(mut self, rules: TokenRules) -> Self {
        self.rules = rules;
        self
    }

    /// When issuers' keys are fetched again. Defaults to
    /// [`KeyRefresh::default`].
    pub fn key_refresh(mut self, keys: KeyRefresh) -> Self {
        self.keys = keys;
        self
    }

    /// The circuit breaker of each issuer's metadata and JWKS fetches and of
    /// the introspection endpoint (one breaker per upstream, all with these
    /// settings). Defaults to [`BreakerConfig::default`](crate::breaker::BreakerConfig::default):
    /// open after 5 consecutive failures, for 10 seconds, doubling up to 60.
    pub fn breaker(mut self, breaker: crate::breaker::BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// The verified-token cache. Defaults to [`TokenCacheConfig::default`].
    pub fn token_cache(mut self, cache: TokenCacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// The `Host` and `Origin` values the MCP endpoint answers to. Defaults
    /// to values derived from the resource URI ([`HostPolicy::default`]).
    pub fn hosts(mut self, hosts: HostPolicy) -> Self {
        self.hosts = hosts;
        self
    }

    /// How introspection answers are cached and bounded. Defaults to
    /// [`IntrospectionConfig::default`](super::IntrospectionConfig::default).
    #[cfg(feature = "introspection")]
    #[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
    pub fn introspection(mut self, config: super::config::IntrospectionConfig) -> Self {
        self.introspection = config;
        self
    }

    /// Timeout of a metadata, JWKS or introspection request. Defaults to
    /// 5 seconds.
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// A human-readable `resource_name` for the metadata. Defaults to none.
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// A `resource_documentation` URL for the metadata. Defaults to none.
    pub fn resource_documentation(mut self, url: impl Into<String>) -> Self {
        self.resource_documentation = Some(url.into());
        self
    }

    /// Settings that weaken a default, named so a reviewer sees them (as
    /// rustls' `dangerous()`). Everything after this step is dangerous.
    pub fn dangerous(self) -> DangerousResourceServerBuilder {
        DangerousResourceServerBuilder { builder: self }
    }

    /// Check the configuration and build the resource server.
    ///
    /// The resource URI is kept as given except that its scheme and host
    /// are lowercased (RFC 3986 section 6.2.2.1):
    /// `HTTPS://MCP.Example.com/mcp` builds the resource
    /// `https://mcp.example.com/mcp`, which the metadata advertises and the
    /// audience check accepts.
    pub fn build(mut self) -> Result<ResourceServer, ConfigError> {
        if !(Duration::from_secs(60)..=Duration::from_secs(366 * 24 * 3600)).contains(&self.max_token_lifetime) {
            return Err(ConfigError::OutOfRange {
                what: "max_token_lifetime",
                reason: "between 1 minute and 366 days",
            });
        }
        let leeway = self.rules.leeway_duration();
        self.dpop.check()?;
        self.resource = normalize_case(&self.resource).into_owned();
        let resource_url = parse_identifier("resource", &self.resource)?;
        let dpop_htu = dpop::normalize_htu(&self.resource).ok_or_else(|| ConfigError::InvalidUrl {
            what: "resource",
            url: self.resource.clone(),
            reason: "a DPoP proof's htu cannot name it (query or userinfo)",
        })?;
        let resource_path = match resource_url.path() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        let metadata_url = metadata_url_for(&resource_url);
        let (allowed_hosts, allowed_origins) = self.hosts.resolve(&resource_url, self.wildcard_origins)?;
        let audiences: HashSet<String> = match self.audiences {
            Some(a) => a.iter().map(|a| normalize_case(a).into_owned()).collect(),
            None => HashSet::from([self.resource.clone()]),
        };
        for scope in self
            .required_scopes
            .iter()
            .chain(self.scopes_supported.iter().flatten())
        {
            if !valid_scope(scope) {
                return Err(ConfigError::InvalidScope(scope.clone()));
            }
        }
        let implications = ScopeImplications::new(&self.implications)?;
        self.required_scopes.retain(|s| advertised(s));
        let scopes_supported = self
            .scopes_supported
            .unwrap_or_else(|| self.required_scopes.clone())
            .into_iter()
            .filter(|s| advertised(s))
            .collect();
        if let Some(doc) = &self.resource_documentation {
            parse_url("resource_documentation", doc)?;
        }
        let http = match self.http_client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(self.http_timeout)
                .connect_timeout(self.http_timeout)
                .user_agent(concat!("rmcp-guard/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ConfigError::HttpClient(e.to_string()))?,
        };
        let authorization_servers = self.issuers.iter().map(|i| i.url.clone()).collect();
        let validator = TokenValidator::new(ValidatorConfig {
            issuers: self.issuers,
            audiences,
            implications,
            rules: &self.rules,
            keys: self.keys,
            breaker: &self.breaker,
            cache: &self.cache,
            #[cfg(feature = "introspection")]
            introspection: &self.introspection,
            http,
        })?;

        let metadata = ProtectedResourceMetadata {
            resource: self.resource.clone(),
            authorization_servers,
            scopes_supported,
            bearer_methods_supported: vec!["header".to_owned()],
            resource_signing_alg_values_supported: None,
            resource_name: self.resource_name,
            resource_documentation: self.resource_documentation,
            dpop_signing_alg_values_supported: (self.dpop.mode != DpopMode::Off).then(|| self.dpop.algorithm_names()),
            dpop_bound_access_tokens_required: (self.dpop.mode == DpopMode::Required).then_some(true),
        };
        let metadata_json =
            bytes::Bytes::from(serde_json::to_vec(&metadata).map_err(|e| ConfigError::HttpClient(e.to_string()))?);

        let mut challenges = Challenges::new(metadata_url.clone(), self.required_scopes);
        if self.dpop.mode != DpopMode::Off {
            challenges = challenges.with_dpop(&self.dpop.algorithm_names(), self.dpop.mode == DpopMode::Allowed);
        }
        Ok(ResourceServer {
            inner: Arc::new(Inner {
                resource: self.resource,
                resource_path,
                challenges,
                metadata_url,
                metadata,
                metadata_json,
                max_token_bytes: self.rules.max_bytes(),
                allowed_hosts,
                allowed_origins,
                client_credentials: self.client_credentials,
                max_token_lifetime: self.max_token_lifetime,
                leeway,
                validator,
                dpop_replay: self.dpop.replay_set_or_default(),
                dpop: self.dpop,
                dpop_htu,
            }),
        })
    }
}

/// The settings of [`ResourceServerBuilder::dangerous`]: each weakens a
/// default, and each is named for what it gives up.
#[derive(Debug)]
#[must_use]
pub struct DangerousResourceServerBuilder {
    builder: ResourceServerBuilder,
}

impl DangerousResourceServerBuilder {
    /// Trust an issuer that signs with a shared secret (HS256, HS384 or
    /// HS512). Anyone who holds the secret can mint tokens, so this server
    /// becomes as trusted as the issuer. The secret must be at least as long
    /// as the hash (32, 48 or 64 bytes).
    pub fn shared_secret_issuer(mut self, url: impl Into<String>, secret: impl Into<Vec<u8>>, alg: Algorithm) -> Self {
        self.builder
            .issuers
            .push(Issuer::shared_secret(url.into(), secret.into(), alg));
        self
    }

    /// Use this HTTP client for metadata, JWKS and introspection requests
    /// (a private CA, a proxy). It must not follow redirects and should time
    /// out; the built-in client (rustls, no redirects,
    /// [`http_timeout`](ResourceServerBuilder::http_timeout)) is replaced
    /// whole.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.builder.http_client = Some(client);
        self
    }

    /// Accept `:*` (any port) and `null` in
    /// [`HostPolicy::origins`]: pages you do not control could then drive
    /// the server from a browser.
    pub fn wildcard_origins(mut self) -> Self {
        self.builder.wildcard_origins = true;
        self
    }

    /// Check the configuration and build the resource server.
    pub fn build(self) -> Result<ResourceServer, ConfigError> {
        self.builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ResourceServerBuilder {
        ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::discover("https://idp.example.com"),
        )
    }

    #[test]
    fn defaults_are_pinned() {
        let b = builder();
        assert_eq!(b.rules, TokenRules::default());
        assert_eq!(b.keys, KeyRefresh::default());
        assert_eq!(b.breaker, crate::breaker::BreakerConfig::default());
        assert_eq!(b.cache, TokenCacheConfig::default());
        assert_eq!(b.hosts, HostPolicy::default());
        assert_eq!(b.http_timeout, Duration::from_secs(5));
        assert!(b.http_client.is_none());
        assert!(!b.wildcard_origins);
        assert!(b.implications.is_empty());
        assert_eq!(b.max_token_lifetime, Duration::from_secs(24 * 3600));
        let rs = b.build().unwrap();
        assert_eq!(rs.max_token_lifetime(), DEFAULT_MAX_TOKEN_LIFETIME);
        assert_eq!(rs.revocation_retention(), Duration::from_secs(24 * 3600 + 30));
        assert_eq!(
            rs.validator().audiences(),
            &HashSet::from(["https://mcp.example.com/mcp".to_owned()])
        );
        assert!(rs.required_scopes().is_empty());
    }

    #[test]
    fn the_request_body_limit_is_rmcps_4_mib() {
        let rs = builder().build().unwrap();
        assert_eq!(rs.streamable_http_config().max_request_body_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn plain_http_is_refused_except_loopback() {
        for (resource, issuer, refused) in [
            (
                "http://mcp.example.com/mcp",
                "https://idp.example.com",
                Some("resource"),
            ),
            ("https://mcp.example.com/mcp", "http://idp.example.com", Some("issuer")),
            ("http://127.0.0.1:8080/mcp", "http://localhost:9000", None),
            ("http://[::1]:8080/mcp", "https://idp.example.com", None),
        ] {
            match (
                ResourceServer::builder(resource, Issuer::discover(issuer)).build(),
                refused,
            ) {
                (Err(ConfigError::InsecureUrl { what, .. }), Some(setting)) => assert_eq!(what, setting),
                (Ok(_), None) => {}
                (other, _) => panic!("{resource} {issuer}: {other:?}"),
            }
        }
    }

    #[test]
    fn hmac_only_through_a_dangerous_shared_secret() {
        let err = builder()
            .token_rules(TokenRules::default().algorithms([Algorithm::HS256]))
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::AlgorithmNotAllowed { .. }), "{err}");
        let err = builder()
            .dangerous()
            .shared_secret_issuer("https://hs.example.com", b"short".to_vec(), Algorithm::HS256)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::SharedSecretTooShort { min: 32, .. }),
            "{err}"
        );
        let err = builder()
            .dangerous()
            .shared_secret_issuer("https://hs.example.com", vec![7u8; 64], Algorithm::RS256)
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::AlgorithmNotAllowed { .. }), "{err}");
        builder()
            .dangerous()
            .shared_secret_issuer("https://hs.example.com", vec![7u8; 32], Algorithm::HS256)
            .build()
            .unwrap();
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            builder().audiences(Vec::<String>::new()).build(),
            Err(ConfigError::NoAudience)
        ));
        assert!(matches!(
            builder().required_scopes(["a b"]).build(),
            Err(ConfigError::InvalidScope(_))
        ));
        assert!(matches!(
            builder().required_scopes(["a\"b"]).build(),
            Err(ConfigError::InvalidScope(_))
        ));
        assert!(matches!(
            builder().issuer(Issuer::discover("https://idp.example.com")).build(),
            Err(ConfigError::DuplicateIssuer(_))
        ));
        assert!(matches!(
            ResourceServer::builder(
                "https://mcp.example.com/mcp#x",
                Issuer::discover("https://idp.example.com")
            )
            .build(),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            ResourceServer::builder("not a url", Issuer::discover("https://idp.example.com")).build(),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            builder()
                .hosts(HostPolicy::default().origins(["https://x.example:*"]))
                .build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        builder()
            .hosts(HostPolicy::default().origins(["https://x.example:*"]))
            .dangerous()
            .wildcard_origins()
            .build()
            .unwrap();
    }

    #[test]
    fn header_text_accepts_what_to_str_accepts() {
        for byte in 0..=u8::MAX {
            let bytes = [b'a', byte, b'b'];
            let Ok(value) = http::HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            assert_eq!(header_text(&value), value.to_str().ok(), "byte {byte:#04x}");
        }
        let long = http::HeaderValue::from_str(&format!("Bearer {}", "x".repeat(4000))).unwrap();
        assert_eq!(header_text(&long), long.to_str().ok());
    }

    #[test]
    fn credentials_in_a_jwks_uri_are_not_repeated_in_the_error() {
        let err = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::with_jwks_uri("https://idp.example.com", "https://svc:s3cret-pw@idp.example.com/jwks"),
        )
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidUrl { what: "jwks_uri", .. }), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }

    #[test]
    fn tokens_living_longer_than_the_bound_are_refused() {
        let rs = builder().max_token_lifetime(Duration::from_secs(3600)).build().unwrap();
        let now = 1_000_000;
        let token = |iat: Option<u64>, exp: u64| {
            let mut claims = serde_json::Map::new();
            if let Some(iat) = iat {
                claims.insert("iat".into(), serde_json::json!(iat));
            }
            Principal::unverified("https://idp.example.com", "alice")
                .expires_at_unix(exp)
                .claims(claims)
                .build()
        };
        assert!(!rs.lifetime_too_long(&token(Some(now), now + 3600), now));
        assert!(rs.lifetime_too_long(&token(Some(now), now + 3601), now));
        // Issued long ago: judged by iat, not by what is left.
        assert!(rs.lifetime_too_long(&token(Some(now - 7200), now + 60), now));
        // No iat: by what is left, with the leeway.
        assert!(!rs.lifetime_too_long(&token(None, now + 3630), now));
        assert!(rs.lifetime_too_long(&token(None, now + 3631), now));
        for bad in [Duration::from_secs(59), Duration::from_secs(367 * 24 * 3600)] {
            assert!(matches!(
                builder().max_token_lifetime(bad).build(),
                Err(ConfigError::OutOfRange {
                    what: "max_token_lifetime",
                    ..
                })
            ));
        }
    }

    #[test]
    fn urls_are_derived() {
        let rs = builder().build().unwrap();
        assert_eq!(
            rs.metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(rs.resource_path(), "/mcp");
        assert_eq!(rs.allowed_hosts(), ["mcp.example.com", "mcp.example.com:443"]);
    }
}
