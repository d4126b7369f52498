//! Downstream tokens: RFC 8693 token exchange on the caller's behalf, and

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    EndpointNotSet, EndpointSet, ExtraTokenFields, RequestTokenError, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use sha2::{Digest, Sha256};
use tracing::Instrument as _;
use zeroize::Zeroizing;

use super::client::{ClientAuth, default_http_client, send};
use super::dpop::DpopSigner;
use super::inbound::InboundToken;
use crate::breaker::{Attempt, Breaker, BreakerConfig, Upstream};
use crate::cache::{Flight, Limits, SingleFlight, Timestamp, TtlCache};
use crate::error::{ConfigError, Rejection};
use crate::principal::Principal;
use crate::telemetry::trace;
use rmcp::handler::server::common::{AsRequestContext, FromContextPart};

/// RFC 8693 grant type.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an OAuth access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// What to ask for: the downstream `audience`, `resource`s and `scope`s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownstreamRequest {
    audience: Option<String>,
    resources: Vec<String>,
    scopes: Vec<String>,
}

impl DownstreamRequest {
    /// A token for the logical `audience` (RFC 8693 `audience`, the name the
    /// authorization server knows the downstream API by).
    pub fn audience(audience: impl Into<String>) -> Self {
        DownstreamRequest {
            audience: Some(audience.into()),
            ..Self::default()
        }
    }

    /// A token for the downstream API at `resource` (RFC 8707 `resource`, an
    /// absolute URI).
    pub fn resource(resource: impl Into<String>) -> Self {
        DownstreamRequest {
            resources: vec![resource.into()],
            ..Self::default()
        }
    }

    /// Also ask for `resource`. Defaults to none besides the constructor's.
    pub fn and_resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Ask for these scopes (`scope`). Defaults to none: the authorization
    /// server's default for the audience.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self.scopes.sort();
        self.scopes.dedup();
        self
    }

    /// The audience, or else the first resource: what the token is for.
    fn target(&self) -> &str {
        self.audience
            .as_deref()
            .or(self.resources.first().map(String::as_str))
            .unwrap_or("")
    }
}

/// A token obtained for a downstream API. Cheap to clone.
///
/// `Debug` prints `[REDACTED]` for the token; use
/// [`authorization_header`](Self::authorization_header) to call the API and
/// never return the token from a tool.
#[derive(Clone)]
pub struct DownstreamToken {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    access_token: Zeroizing<String>,
    /// The key the token is bound to (RFC 9449), when the authorization
    /// server issued it as `DPoP`.
    dpop: Option<DpopSigner>,
    audience: String,
    scopes: Vec<String>,
    issued_token_type: Option<String>,
    expires_at: Option<SystemTime>,
}

impl fmt::Debug for DownstreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownstreamToken")
            .field("access_token", &"[REDACTED]")
            .field("audience", &self.inner.audience)
            .field("scopes", &self.inner.scopes)
            .field("expires_at", &self.inner.expires_at)
            .finish()
    }
}

impl DownstreamToken {
    /// The access token itself, to put in a downstream request.
    pub fn secret(&self) -> &str {
        &self.inner.access_token
    }

    /// `Bearer <token>`, or `DPoP <token>` for a DPoP-bound token (send
    /// [`dpop_proof`](Self::dpop_proof) with it), marked sensitive so that
    /// HTTP libraries do not log it.
    pub fn authorization_header(&self) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
        let scheme = if self.inner.dpop.is_some() { "DPoP" } else { "Bearer" };
        let value = Zeroizing::new(format!("{scheme} {}", self.secret()));
        let mut header = http::HeaderValue::from_str(&value)?;
        header.set_sensitive(true);
        Ok(header)
    }

    /// Whether the token is bound to this server's DPoP key (the
    /// authorization server answered `token_type` `DPoP`).
    pub fn is_dpop_bound(&self) -> bool {
        self.inner.dpop.is_some()
    }

    /// For a DPoP-bound token, the `DPoP` header of one downstream request
    /// (`method` and `url`; its query and fragment are not part of the
    /// proof), with `ath` for this token and a fresh `jti`: a new proof for
    /// every request. `None` for a bearer token.
    pub fn dpop_proof(&self, method: &http::Method, url: &str) -> Option<http::HeaderValue> {
        let signer = self.inner.dpop.as_ref()?;
        let proof = signer.proof(method.as_str(), url, Some(self.secret()), None);
        http::HeaderValue::from_str(&proof).ok()
    }

    /// What the token was asked for: the requested audience, or else the
    /// first requested resource.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// The scopes granted: the answer's `scope`, or the requested scopes when
    /// the answer has none (RFC 6749 section 5.1).
    pub fn scopes(&self) -> &[String] {
        &self.inner.scopes
    }

    /// The RFC 8693 `issued_token_type`, when the answer has one.
    pub fn issued_token_type(&self) -> Option<&str> {
        self.inner.issued_token_type.as_deref()
    }

    /// When the token expires, from `expires_in`.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.inner.expires_at
    }
}

/// Why no downstream token was obtained. The text is safe to show a client:
/// it never holds a token or a response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The request carries no validated caller (it did not pass the bearer
    /// layer): the server is wired wrong.
    #[error("request is not authenticated")]
    Unauthenticated,
    /// No [`TokenExchange`] is in the request extensions: the server is wired
    /// without one.
    #[error("token exchange is not configured on this server")]
    NotConfigured,
    /// The authorization server refused, with this OAuth error code
    /// (`invalid_target`, `invalid_grant`, `invalid_scope`...).
    #[error("the authorization server refused the token request ({0})")]
    Refused(String),
    /// The authorization server could not be reached, timed out, answered
    /// 5xx, or refused this server's client credentials.
    #[error("the authorization server is unavailable")]
    Unavailable,
    /// The answer is not a usable bearer token response.
    #[error("the authorization server's answer is unusable")]
    InvalidResponse,
    /// The token endpoint kept failing and its circuit breaker is open: no
    /// request was sent.
    #[error("the authorization server is temporarily unavailable")]
    CircuitOpen {
        /// Seconds until the breaker lets a probe through.
        retry_after_secs: u64,
    },
}

impl ExchangeError {
    /// A stable, machine-readable code for audit events.
    pub fn code(&self) -> &'static str {
        match self {
            ExchangeError::Unauthenticated => "unauthenticated",
            ExchangeError::NotConfigured => "not_configured",
            ExchangeError::Refused(_) => "refused",
            ExchangeError::Unavailable => "unavailable",
            ExchangeError::InvalidResponse => "invalid_response",
            ExchangeError::CircuitOpen { .. } => "circuit_open",
        }
    }
}

impl From<ExchangeError> for Rejection {
    /// A refusal by the authorization server is a denial; the rest is this
    /// server's wiring or the authorization server being unavailable. The
    /// detail stays in the audit event.
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Unauthenticated => Rejection::Unauthenticated,
            ExchangeError::Refused(_) => Rejection::forbidden(),
            ExchangeError::NotConfigured => Rejection::NotConfigured("token exchange"),
            ExchangeError::Unavailable | ExchangeError::InvalidResponse | ExchangeError::CircuitOpen { .. } => {
                Rejection::Unavailable("the authorization server")
            }
        }
    }
}

/// `issued_token_type` (RFC 8693 section 2.2.1) besides oauth2's fields.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct ExchangeFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<String>,
}

impl ExtraTokenFields for ExchangeFields {}

type Answer = StandardTokenResponse<ExchangeFields, BasicTokenType>;

type TokenClient = oauth2::Client<
    BasicErrorResponse,
    Answer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

type CacheKey = [u8; 32];

/// Token exchange and client credentials at one authorization server; see
/// the [type docs](Self). Cheap to clone (one reference count).
///
/// client credentials as the server itself.
///
/// A tool that calls another API must not pass the caller's token on (the
/// MCP specification forbids it: the token was minted for *this* resource,
/// and forwarding it makes every downstream API a confused deputy). Instead
/// the server exchanges the caller's validated token at the authorization
/// server for a token scoped to the downstream audience, authenticating as
/// its own confidential client ([`ClientAuth`](super::ClientAuth)).
///
/// # For tool authors: one parameter, one line
///
/// ```
/// use rmcp::ErrorData;
/// use rmcp_guard::oauth::DownstreamTokens;
///
/// async fn list_tickets(tokens: DownstreamTokens) -> Result<String, ErrorData> {
///     let token = tokens.get("https://tickets.example.com").await?; // a clear MCP error on failure
///     // call the API with `Authorization: {token.authorization_header()}`; never return the token itself
///     Ok(format!("scopes granted: {:?}", token.scopes()))
/// }
/// ```
///
/// [`DownstreamTokens`] (an rmcp extractor: a tool parameter) holds the
/// caller's [`Principal`] and [`InboundToken`] (both inserted by the bearer
/// layer) and the [`TokenExchange`] (put there by the
/// [`GuardedRouter`](crate::Guard), which also asks the bearer layer
/// to keep the inbound token). [`DownstreamTokens::request`] also sets
/// `resource` (RFC 8707) and `scope`.
///
/// # For the server: wiring
///
/// ```
/// use rmcp_guard::oauth::{ClientAuth, TokenExchange};
///
/// # fn main() -> Result<(), rmcp_guard::ConfigError> {
/// let exchange = TokenExchange::builder(
///     "https://idp.example.com/oauth2/token",
///     ClientAuth::client_secret("mcp-server", "s3cret")?, // or client_secret_file
/// )
/// .build()?;
/// // rmcp_guard::GuardedRouter::new(rs).exchange(exchange); in a custom stack:
/// // app.layer(axum::Extension(exchange)) inside BearerAuthLayer::new(rs).keep_inbound_token()
/// let _layer = axum::Extension(exchange);
/// # Ok(()) }
/// ```
///
/// # The request
///
/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
/// `subject_token` (the caller's token), `subject_token_type`
/// (`urn:ietf:params:oauth:token-type:access_token`), `audience` and/or
/// `resource`, `scope`, and `actor_token` / `actor_token_type` when the server
/// is configured with an [`actor_token`](TokenExchangeBuilder::actor_token) of
/// its own (delegation rather than impersonation). `oauth2` has no RFC 8693
/// grant: the request is an `oauth2` [`HttpRequest`](oauth2::HttpRequest) with
/// client authentication done exactly as `oauth2` does it, sent through the same
/// reqwest hook, and the answer is parsed as an `oauth2`
/// `StandardTokenResponse` / `StandardErrorResponse`. Client credentials
/// ([`TokenExchange::client_credentials`]) is `oauth2`'s own request.
///
/// # Guarantees
///
/// - **The inbound token goes to one place**: the configured token endpoint,
///   as `subject_token` in a POST body. [`InboundToken`] has no public way to
///   read it, prints `[REDACTED]`, and is zeroized when the last request
///   holding it ends. Tests assert that no other URL ever sees it.
/// - **Cache**: a downstream token is reused per (caller's token, principal,
///   audience, resources, scopes) until [`refresh_margin`](TokenExchangeBuilder::refresh_margin)
///   (default 30 s) before its `expires_in`, at most
///   [`max_cache_ttl`](TokenExchangeBuilder::max_cache_ttl) (default 5 min), and
///   never past the caller's token's `exp`. A token without `expires_in` is not
///   cached. Keying on the caller's token (not only on the principal) means a
///   downstream token obtained with one inbound token is never handed to a
///   request made with another, narrower one.
/// - **Single flight**: concurrent calls with the same key share one request.
/// - **Fail closed**: a refusal or an unreachable authorization server is an
///   [`ExchangeError`] (an MCP error for the tool), never a fallback to the
///   caller's token.
/// - **Audit**: one event per call on [`audit::TARGET`](crate::audit::TARGET),
///   `event = "token_exchange"`, with the outcome and cache status; never a
///   token.
#[derive(Clone)]
pub struct TokenExchange {
    inner: Arc<Inner>,
}

struct Inner {
    client: TokenClient,
    auth: ClientAuth,
    http: reqwest::Client,
    actor: Option<(Zeroizing<String>, String)>,
    /// This server's DPoP key, when the token endpoint takes DPoP proofs.
    dpop: Option<DpopSigner>,
    refresh_margin: Duration,
    max_cache_ttl: Duration,
    cache: TtlCache<CacheKey, DownstreamToken>,
    flight: SingleFlight<CacheKey, Result<DownstreamToken, ExchangeError>>,
    /// The token endpoint's circuit breaker; see [`crate::breaker`].
    breaker: Breaker,
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("token_endpoint", &self.inner.client.token_uri().as_str())
            .field("client", &self.inner.auth)
            .field("actor_token", &self.inner.actor.as_ref().map(|_| "[REDACTED]"))
            .field("dpop", &self.inner.dpop)
            .finish_non_exhaustive()
    }
}

/// Configures a [`TokenExchange`]; from [`TokenExchange::builder`].
#[must_use]
pub struct TokenExchangeBuilder {
    token_endpoint: String,
    auth: ClientAuth,
    actor: Option<(Zeroizing<String>, String)>,
    dpop: Option<DpopSigner>,
    /// The DPoP algorithms the discovered metadata advertises (`None`: not
    /// discovered, the endpoint was given).
    dpop_algorithms: Option<Vec<String>>,
    refresh_margin: Duration,
    max_cache_ttl: Duration,
    cache_capacity: usize,
    http_timeout: Duration,
    http_client: Option<reqwest::Client>,
    breaker: BreakerConfig,
}

impl fmt::Debug for TokenExchangeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchangeBuilder")
            .field("token_endpoint", &self.token_endpoint)
            .field("client", &self.auth)
            .field("refresh_margin", &self.refresh_margin)
            .field("max_cache_ttl", &self.max_cache_ttl)
            .field("cache_capacity", &self.cache_capacity)
            .finish_non_exhaustive()
    }
}

impl TokenExchangeBuilder {
    /// Present `token` (of RFC 8693 type `token_type`, for example
    /// `urn:ietf:params:oauth:token-type:access_token`) as `actor_token` in every exchange, so the
    /// downstream token says the server acts for the caller (delegation).
    /// Defaults to none (impersonation, as most providers implement it).
    pub fn actor_token(mut self, token: impl Into<String>, token_type: impl Into<String>) -> Self {
        self.actor = Some((Zeroizing::new(token.into()), token_type.into()));
        self
    }

    /// Sender-constrain what this server obtains for DPoP-bound callers: when
    /// the caller's token was DPoP-bound, the exchange request carries a
    /// proof by `signer` (RFC 9449 section 5, `use_dpop_nonce` answered
    /// once), so the authorization server can bind the downstream token to
    /// this server's key instead of issuing a bearer token; a token it
    /// issues as `DPoP` is then used with a fresh proof per downstream call
    /// ([`DownstreamToken::dpop_proof`]). Used only where the authorization
    /// server supports it: with [`TokenExchange::discover`], when its
    /// metadata lists ES256 in `dpop_signing_alg_values_supported`; with
    /// [`TokenExchange::builder`], as you say by calling this. Exchanges for
    /// bearer callers, and client credentials, send no proof. Defaults to
    /// none.
    pub fn dpop(mut self, signer: DpopSigner) -> Self {
        self.dpop = Some(signer);
        self
    }

    /// How long before its expiry a cached downstream token is replaced.
    /// Defaults to 30 seconds.
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// How long a downstream token is reused at most (0 disables the cache).
    /// Defaults to 5 minutes.
    pub fn max_cache_ttl(mut self, ttl: Duration) -> Self {
        self.max_cache_ttl = ttl;
        self
    }

    /// How many downstream tokens are remembered. Defaults to 10 000.
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Timeout of each request to the token endpoint. Defaults to 5 seconds.
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// Use this reqwest client (configure redirects off yourself). Defaults to
    /// a client that never follows redirects, with
    /// [`http_timeout`](Self::http_timeout).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// The token endpoint's circuit breaker: after consecutive failures (no
    /// answer, a timeout, a 5xx, an unreadable answer) requests fail at once
    /// with [`ExchangeError::CircuitOpen`] until a probe succeeds. Defaults to
    /// [`BreakerConfig::default`].
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Check the configuration and build.
    pub fn build(self) -> Result<TokenExchange, ConfigError> {
        super::url::parse_url("token_endpoint", &self.token_endpoint)?;
        let url = TokenUrl::new(self.token_endpoint.clone()).map_err(|_| ConfigError::InvalidUrl {
            what: "token_endpoint",
            url: self.token_endpoint.clone(),
            reason: "not an absolute URL",
        })?;
        if self.refresh_margin > Duration::from_secs(3600) {
            return Err(ConfigError::OutOfRange {
                what: "refresh_margin",
                reason: "at most 1 hour",
            });
        }
        self.breaker.check()?;
        let http = match self.http_client {
            Some(c) => c,
            None => default_http_client(self.http_timeout)?,
        };
        let client = oauth2::Client::new(self.auth.oauth2_id())
            .set_client_secret(self.auth.oauth2_secret())
            .set_auth_type(self.auth.oauth2_auth_type())
            .set_token_uri(url);
        Ok(TokenExchange {
            inner: Arc::new(Inner {
                client,
                auth: self.auth,
                http,
                actor: self.actor,
                dpop: match (self.dpop, &self.dpop_algorithms) {
                    (Some(_), Some(algs)) if !algs.iter().any(|a| a == "ES256") => {
                        tracing::info!(
                            token_endpoint = %self.token_endpoint,
                            "the authorization server does not take ES256 DPoP proofs: downstream tokens are not \
                             sender-constrained"
                        );
                        None
                    }
                    (signer, _) => signer,
                },
                refresh_margin: self.refresh_margin,
                max_cache_ttl: self.max_cache_ttl,
                cache: TtlCache::new(Limits::entries(self.cache_capacity)),
                flight: SingleFlight::new(),
                breaker: Breaker::new(Upstream::TokenEndpoint, self.token_endpoint, self.breaker),
            }),
        })
    }
}

enum Grant<'a> {
    Exchange {
        principal: &'a Principal,
        subject_token: &'a InboundToken,
    },
    ClientCredentials,
}

impl TokenExchange {
    /// Start a configuration for the authorization server's token endpoint,
    /// authenticating as `client`.
    pub fn builder(token_endpoint: impl Into<String>, client: ClientAuth) -> TokenExchangeBuilder {
        TokenExchangeBuilder {
            token_endpoint: token_endpoint.into(),
            auth: client,
            actor: None,
            dpop: None,
            dpop_algorithms: None,
            refresh_margin: Duration::from_secs(30),
            max_cache_ttl: Duration::from_secs(300),
            cache_capacity: 10_000,
            http_timeout: Duration::from_secs(5),
            http_client: None,
            breaker: BreakerConfig::default(),
        }
    }

    /// Like [`builder`](Self::builder), with the token endpoint read from the
    /// issuer's RFC 8414 metadata (`/.well-known/oauth-authorization-server`),
    /// else its OpenID Connect discovery document. The document's `issuer`
    /// must equal `issuer` exactly.
    pub async fn discover(issuer: &str, client: ClientAuth) -> Result<TokenExchangeBuilder, ConfigError> {
        let builder = Self::builder(String::new(), client);
        let http = default_http_client(builder.http_timeout)?;
        let (endpoint, metadata) = super::client::discover_endpoint(&http, issuer, "token_endpoint").await?;
        let dpop_algorithms = match metadata.get("dpop_signing_alg_values_supported") {
            Some(serde_json::Value::Array(algs)) => algs.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        Ok(TokenExchangeBuilder {
            token_endpoint: endpoint,
            dpop_algorithms: Some(dpop_algorithms),
            ..builder
        })
    }

    /// Exchange the caller's token for one scoped by `request` (RFC 8693).
    pub async fn exchange(
        &self,
        principal: &Principal,
        subject_token: &InboundToken,
        request: &DownstreamRequest,
    ) -> Result<DownstreamToken, ExchangeError> {
        self.obtain(
            Grant::Exchange {
                principal,
                subject_token,
            },
            request,
        )
        .await
    }

    /// A token for the server itself (client credentials), scoped by
    /// `request`; `audience` and `resource` are sent as extra parameters.
    pub async fn client_credentials(&self, request: &DownstreamRequest) -> Result<DownstreamToken, ExchangeError> {
        self.obtain(Grant::ClientCredentials, request).await
    }

    /// Forget every cached downstream token.
    pub fn clear_cache(&self) {
        self.inner.cache.clear();
    }

    async fn obtain(&self, grant: Grant<'_>, request: &DownstreamRequest) -> Result<DownstreamToken, ExchangeError> {
        let kind = match grant {
            Grant::Exchange { .. } => "token_exchange",
            Grant::ClientCredentials => "client_credentials",
        };
        let span = trace::exchange_span(kind, request.target());
        let (result, cache) = self.obtain_in_span(grant, kind, request).instrument(span.clone()).await;
        span.record("cache", cache);
        match &result {
            Ok(_) => trace::outcome(&span, "ok", false),
            Err(e) => trace::outcome(&span, e.code(), !matches!(e, ExchangeError::Refused(_))),
        }
        result
    }

    /// [`obtain`](Self::obtain), inside its span: the token and how the
    /// cache gave it (`hit`, `miss`, `joined`).
    async fn obtain_in_span(
        &self,
        grant: Grant<'_>,
        kind: &'static str,
        request: &DownstreamRequest,
    ) -> (Result<DownstreamToken, ExchangeError>, &'static str) {
        let key = cache_key(&grant, request);
        let principal = match &grant {
            Grant::Exchange { principal, .. } => Some(*principal),
            Grant::ClientCredentials => None,
        };
        if let Some(token) = self.inner.cache.get(&key, Timestamp::now()) {
            audit(principal, kind, request.target(), "ok", "hit");
            return (Ok(token), "hit");
        }
        let (this, grant) = (self, &grant);
        let (result, flight) = self
            .inner
            .flight
            .run(key, move || async move {
                let (result, principal) = match grant {
                    Grant::Exchange {
                        principal,
                        subject_token,
                    } => (
                        this.request_exchange(principal, subject_token, request).await,
                        Some(*principal),
                    ),
                    Grant::ClientCredentials => (this.request_client_credentials(request).await, None),
                };
                if let Ok(token) = &result {
                    this.remember(key, token, principal);
                }
                result
            })
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        let cache = if flight == Flight::Led { "miss" } else { "joined" };
        audit(principal, kind, request.target(), outcome, cache);
        (result, cache)
    }

    fn remember(&self, key: CacheKey, token: &DownstreamToken, principal: Option<&Principal>) {
        let Some(expires_at) = token.expires_at() else {
            return;
        };
        let system_now = SystemTime::now();
        let mut lifetime = expires_at
            .duration_since(system_now)
            .unwrap_or_default()
            .saturating_sub(self.inner.refresh_margin)
            .min(self.inner.max_cache_ttl);
        if let Some(p) = principal {
            lifetime = lifetime.min(p.expires_at().duration_since(system_now).unwrap_or_default());
        }
        let now = Timestamp::now();
        self.inner
            .cache
            .insert(key, token.clone(), 0, now.saturating_add(lifetime), now);
    }

    async fn request_exchange(
        &self,
        principal: &Principal,
        subject_token: &InboundToken,
        request: &DownstreamRequest,
    ) -> Result<DownstreamToken, ExchangeError> {
        // A DPoP-bound caller gets a downstream token bound to this server's key.
        let signer = self
            .inner
            .dpop
            .as_ref()
            .filter(|_| principal.dpop_thumbprint().is_some());
        let endpoint = self.inner.client.token_uri().as_str();
        let mut nonce: Option<String> = None;
        let attempt = self.admit()?;
        // At most two requests: the second only to answer `use_dpop_nonce`.
        for _ in 0..2 {
            let proof = signer.map(|s| s.proof("POST", endpoint, None, nonce.as_deref()));
            let http_request = self.exchange_request(subject_token, request, proof.as_deref())?;
            let call = trace::Call::start(trace::Fetch::TokenEndpoint, endpoint);
            let sent = call.run(send(self.inner.http.clone(), http_request)).await;
            // A 4xx is the endpoint working (`send` turned a 5xx into an error).
            call.finish(sent.is_ok());
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    attempt.settle(false);
                    tracing::warn!(error = %e, "token exchange request failed");
                    return Err(ExchangeError::Unavailable);
                }
            };
            if response.status() != http::StatusCode::OK {
                let fresh = response
                    .headers()
                    .get("dpop-nonce")
                    .and_then(|v| v.to_str().ok())
                    .filter(|n| !n.is_empty() && n.len() <= 256 && nonce.as_deref() != Some(*n));
                if let (Some(_), Some(fresh), ExchangeError::Refused(code)) =
                    (signer, fresh, refusal(response.status(), response.body()))
                    && code == "use_dpop_nonce"
                {
                    nonce = Some(fresh.to_owned());
                    continue;
                }
                // A 4xx (`send` turned a 5xx into an error): the endpoint works.
                attempt.settle(true);
                return Err(refusal(response.status(), response.body()));
            }
            let answer = serde_json::from_slice::<Answer>(response.body());
            attempt.settle(answer.is_ok());
            return downstream(&answer.map_err(|_| ExchangeError::InvalidResponse)?, request, signer);
        }
        attempt.settle(true);
        Err(ExchangeError::Refused("use_dpop_nonce".to_owned()))
    }

    /// The RFC 8693 request: a form POST to the token endpoint, client
    /// authentication as `oauth2` does it. Built before any `.await` (the
    /// form serializer is not `Send`).
    fn exchange_request(
        &self,
        subject_token: &InboundToken,
        request: &DownstreamRequest,
        dpop_proof: Option<&str>,
    ) -> Result<oauth2::HttpRequest, ExchangeError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", TOKEN_EXCHANGE_GRANT);
        form.append_pair("subject_token", subject_token.expose());
        form.append_pair("subject_token_type", ACCESS_TOKEN_TYPE);
        form.append_pair("requested_token_type", ACCESS_TOKEN_TYPE);
        if let Some(audience) = &request.audience {
            form.append_pair("audience", audience);
        }
        for resource in &request.resources {
            form.append_pair("resource", resource);
        }
        if !request.scopes.is_empty() {
            form.append_pair("scope", &request.scopes.join(" "));
        }
        if let Some((token, token_type)) = &self.inner.actor {
            form.append_pair("actor_token", token);
            form.append_pair("actor_token_type", token_type);
        }
        let builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.inner.client.token_uri().as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        let builder = match dpop_proof {
            Some(proof) => builder.header("dpop", proof),
            None => builder,
        };
        let builder = self
            .inner
            .auth
            .apply(builder, &mut form)
            .map_err(|_| ExchangeError::InvalidResponse)?;
        let body = Zeroizing::new(form.finish());
        builder
            .body(body.as_bytes().to_vec())
            .map_err(|_| ExchangeError::InvalidResponse)
    }

    /// Let a request through the token endpoint's breaker, or fail at once.
    fn admit(&self) -> Result<Attempt<'_>, ExchangeError> {
        self.inner.breaker.admit().map_err(|open| ExchangeError::CircuitOpen {
            retry_after_secs: open.retry_after_secs(),
        })
    }

    async fn request_client_credentials(&self, request: &DownstreamRequest) -> Result<DownstreamToken, ExchangeError> {
        let mut call = self
            .inner
            .client
            .exchange_client_credentials()
            .add_scopes(request.scopes.iter().cloned().map(Scope::new));
        if let Some(audience) = &request.audience {
            call = call.add_extra_param("audience", audience.as_str());
        }
        for resource in &request.resources {
            call = call.add_extra_param("resource", resource.as_str());
        }
        let http = &self.inner.http;
        let attempt = self.admit()?;
        let fetch = trace::Call::start(trace::Fetch::TokenEndpoint, self.inner.client.token_uri().as_str());
        let result = fetch.run(call.request_async(&|r| send(http.clone(), r))).await;
        let answered = matches!(result, Ok(_) | Err(RequestTokenError::ServerResponse(_)));
        fetch.finish(answered);
        attempt.settle(answered);
        match result {
            Ok(answer) => downstream(&answer, request, None),
            Err(RequestTokenError::ServerResponse(e)) => Err(refused_code(e.error().as_ref())),
            Err(RequestTokenError::Request(e)) => {
                tracing::warn!(error = %e, "client credentials request failed");
                Err(ExchangeError::Unavailable)
            }
            Err(RequestTokenError::Parse(..) | RequestTokenError::Other(_)) => Err(ExchangeError::InvalidResponse),
        }
    }
}

/// A non-200 answer: the OAuth error code of a 4xx, else unavailable.
fn refusal(status: http::StatusCode, body: &[u8]) -> ExchangeError {
    if status.is_server_error() {
        return ExchangeError::Unavailable;
    }
    match serde_json::from_slice::<BasicErrorResponse>(body) {
        Ok(e) => refused_code(e.error().as_ref()),
        Err(_) => ExchangeError::InvalidResponse,
    }
}

fn refused_code(code: &str) -> ExchangeError {
    if code == "invalid_client" || code == "unauthorized_client" {
        tracing::error!(
            error = code,
            "the token endpoint refused this server's client credentials"
        );
        return ExchangeError::Unavailable;
    }
    // The code is the provider's; pass on only a well-formed one.
    let safe = !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    ExchangeError::Refused(if safe { code.to_owned() } else { "unknown".to_owned() })
}

/// The token of a 200 answer: a bearer token, or (when the request carried
/// a proof by `signer`) a DPoP-bound one.
fn downstream(
    answer: &Answer,
    request: &DownstreamRequest,
    signer: Option<&DpopSigner>,
) -> Result<DownstreamToken, ExchangeError> {
    let dpop = match answer.token_type() {
        BasicTokenType::Bearer => None,
        BasicTokenType::Extension(t) if t.eq_ignore_ascii_case("dpop") && signer.is_some() => signer.cloned(),
        _ => return Err(ExchangeError::InvalidResponse),
    };
    if answer.access_token().secret().is_empty() {
        return Err(ExchangeError::InvalidResponse);
    }
    let scopes = match answer.scopes() {
        Some(s) => s.iter().map(|s| s.as_str().to_owned()).collect(),
        None => request.scopes.clone(),
    };
    Ok(DownstreamToken {
        inner: Arc::new(TokenInner {
            access_token: Zeroizing::new(answer.access_token().secret().clone()),
            dpop,
            audience: request.target().to_owned(),
            scopes,
            issued_token_type: answer.extra_fields().issued_token_type.clone(),
            // A lifetime past what `SystemTime` holds is nonsense: treat it
            // as unknown (not cached) rather than panic on the addition.
            expires_at: answer.expires_in().and_then(|d| SystemTime::now().checked_add(d)),
        }),
    })
}

/// SHA-256 over the grant, the caller and the request, each field
/// length-prefixed so that no two requests share a key.
fn cache_key(grant: &Grant<'_>, request: &DownstreamRequest) -> CacheKey {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    match grant {
        Grant::Exchange {
            principal,
            subject_token,
        } => {
            field(b"exchange");
            field(principal.issuer().as_bytes());
            field(principal.subject().as_bytes());
            field(&Sha256::digest(subject_token.expose().as_bytes()));
        }
        Grant::ClientCredentials => field(b"client_credentials"),
    }
    field(request.audience.as_deref().unwrap_or("").as_bytes());
    field(&(request.resources.len() as u64).to_le_bytes());
    for r in &request.resources {
        field(r.as_bytes());
    }
    field(request.scopes.join(" ").as_bytes());
    h.finalize().into()
}

fn audit(principal: Option<&Principal>, grant: &str, audience: &str, outcome: &str, cache: &str) {
    crate::audit::AuditEvent::TokenExchange {
        principal,
        grant,
        audience,
        outcome,
        cache,
    }
    .emit();
}

/// Downstream tokens for the caller, as a tool parameter: an rmcp extractor
/// holding the request's [`Principal`], its [`InboundToken`] and the
/// server's [`TokenExchange`]. See [`TokenExchange`].
///
/// Extraction fails closed with the one denial error when the request has no
/// caller (or no kept token), and with "not configured" when the server has
/// no token exchange.
#[derive(Clone, Debug)]
pub struct DownstreamTokens {
    principal: Principal,
    token: InboundToken,
    exchange: TokenExchange,
    /// Where the tokens handed out are recorded, when an output guard
    /// watches this call.
    read: Option<crate::secrets::ReadSecrets>,
}

impl DownstreamTokens {
    /// A token for `audience`, obtained by exchanging the caller's token.
    pub async fn get(&self, audience: &str) -> Result<DownstreamToken, Rejection> {
        self.request(&DownstreamRequest::audience(audience)).await
    }

    /// A token for `request` (audience, RFC 8707 resources, scopes).
    ///
    /// When the server has an output guard ([`OutputGuard`](crate::integrity::OutputGuard),
    /// installed by `Guard`), the token is removed from this call's result,
    /// should the tool put it there.
    pub async fn request(&self, request: &DownstreamRequest) -> Result<DownstreamToken, Rejection> {
        let token = self
            .exchange
            .exchange(&self.principal, &self.token, request)
            .await
            .map_err(Rejection::from)?;
        if let Some(read) = &self.read {
            read.record(&crate::secrets::Secret::new([("access_token", token.secret())]));
        }
        Ok(token)
    }
}

impl<C: AsRequestContext> FromContextPart<C> for DownstreamTokens {
    fn from_context_part(context: &mut C) -> Result<Self, rmcp::ErrorData> {
        let principal = crate::extract::extension::<Principal, C>(context);
        let token = crate::extract::extension::<InboundToken, C>(context);
        let exchange = crate::extract::extension::<TokenExchange, C>(context);
        match (principal, token, exchange) {
            (Some(principal), Some(token), Some(exchange)) => Ok(DownstreamTokens {
                principal,
                token,
                exchange,
                read: crate::extract::extension::<crate::secrets::ReadSecrets, C>(context),
            }),
            (principal, _, _) => {
                // A caller without a kept token or exchange: the stack is wired
                // without token exchange.
                let e = if principal.is_some() {
                    ExchangeError::NotConfigured
                } else {
                    ExchangeError::Unauthenticated
                };
                audit(principal.as_ref(), "token_exchange", "", e.code(), "none");
                Err(Rejection::from(e).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let b = TokenExchange::builder(
            "https://idp.example.com/token",
            ClientAuth::client_secret("id", "secret").unwrap(),
        );
        assert_eq!(b.refresh_margin, Duration::from_secs(30));
        assert_eq!(b.max_cache_ttl, Duration::from_secs(300));
        assert_eq!(b.cache_capacity, 10_000);
        assert_eq!(b.http_timeout, Duration::from_secs(5));
        assert!(b.actor.is_none());
        assert_eq!(b.breaker, BreakerConfig::default());
        b.build().unwrap();
    }

    #[test]
    fn insecure_token_endpoint_is_refused() {
        let err = TokenExchange::builder(
            "http://idp.example.com/token",
            ClientAuth::client_secret("id", "secret").unwrap(),
        )
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::InsecureUrl { .. }), "{err}");
    }

    #[test]
    fn tokens_are_redacted() {
        let inbound = InboundToken::new(Zeroizing::new("inbound-secret-token".to_owned()));
        assert!(!format!("{inbound:?}").contains("inbound-secret"));
        let t = DownstreamToken {
            inner: Arc::new(TokenInner {
                access_token: Zeroizing::new("downstream-secret".into()),
                dpop: None,
                audience: "a".into(),
                scopes: vec![],
                issued_token_type: None,
                expires_at: None,
            }),
        };
        assert!(!format!("{t:?}").contains("downstream-secret"));
        assert!(t.authorization_header().unwrap().is_sensitive());
    }

    #[test]
    fn cache_keys_differ_by_token_and_request() {
        let p = Principal::unverified("https://idp", "alice").build();
        let (a, b) = (
            InboundToken::new(Zeroizing::new("a".to_owned())),
            InboundToken::new(Zeroizing::new("b".to_owned())),
        );
        let ga = Grant::Exchange {
            principal: &p,
            subject_token: &a,
        };
        let gb = Grant::Exchange {
            principal: &p,
            subject_token: &b,
        };
        let r = DownstreamRequest::audience("x");
        assert_ne!(cache_key(&ga, &r), cache_key(&gb, &r));
        assert_ne!(cache_key(&ga, &r), cache_key(&ga, &r.clone().scopes(["s"])));
        assert_ne!(cache_key(&ga, &r), cache_key(&Grant::ClientCredentials, &r));
        assert_eq!(
            cache_key(&ga, &r.clone().scopes(["b", "a"])),
            cache_key(&ga, &r.scopes(["a", "b"]))
        );
    }

    /// Tool futures run on multi-threaded runtimes: they must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(
        x: &TokenExchange,
        p: &Principal,
        t: &InboundToken,
        r: &DownstreamRequest,
        d: &DownstreamTokens,
    ) {
        fn send<T: Send>(_: T) {}
        send(x.exchange(p, t, r));
        send(x.client_credentials(r));
        send(d.get("a"));
    }

    #[test]
    fn a_huge_expires_in_does_not_panic() {
        // `expires_in` is the authorization server's number (any u64).
        let answer: Answer = serde_json::from_value(serde_json::json!({
            "access_token": "downstream",
            "token_type": "Bearer",
            "expires_in": u64::MAX,
        }))
        .unwrap();
        let token = downstream(&answer, &DownstreamRequest::audience("x"), None).unwrap();
        // Unknown, so never cached.
        assert_eq!(token.expires_at(), None);
    }

    #[test]
    fn a_dpop_token_is_taken_only_after_sending_a_proof() {
        let answer: Answer = serde_json::from_value(serde_json::json!({
            "access_token": "downstream",
            "token_type": "DPoP",
            "expires_in": 60,
        }))
        .unwrap();
        let request = DownstreamRequest::audience("x");
        assert_eq!(
            downstream(&answer, &request, None).unwrap_err(),
            ExchangeError::InvalidResponse
        );
        let signer = DpopSigner::generate().unwrap();
        let token = downstream(&answer, &request, Some(&signer)).unwrap();
        assert!(token.is_dpop_bound());
        assert_eq!(token.authorization_header().unwrap(), "DPoP downstream");
        assert!(
            token
                .dpop_proof(&http::Method::GET, "https://api.example.com/x")
                .is_some()
        );
    }

    #[test]
    fn provider_error_codes_are_sanitized() {
        assert_eq!(
            refused_code("invalid_target"),
            ExchangeError::Refused("invalid_target".into())
        );
        assert_eq!(refused_code("<script>"), ExchangeError::Refused("unknown".into()));
        assert_eq!(refused_code("invalid_client"), ExchangeError::Unavailable);
    }
}
