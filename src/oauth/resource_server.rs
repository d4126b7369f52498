//! The one configuration value: [`ResourceServer`].
//!
//! A `ResourceServer` is built once from the canonical resource URI and the
//! trusted issuers, and everything else is derived from it: the RFC 9728
//! metadata document, the `WWW-Authenticate` challenges and the
//! [`BearerAuthLayer`]. They cannot disagree because they read the same value.
//!
//! ```
//! use rmcp_guard::oauth::{Issuer, ResourceServer};
//!
//! let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
//!     .required_scopes(["mcp:tools"])
//!     .build()
//!     .expect("valid configuration");
//! assert_eq!(rs.resource(), "https://mcp.example.com/mcp");
//! assert_eq!(
//!     rs.metadata_url(),
//!     "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
//! );
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use url::Url;

use super::cache::TokenCache;
use super::jwks::{KeyCache, KeyCacheSettings, KeySource};
use super::layer::BearerAuthLayer;
use super::metadata::ProtectedResourceMetadata;
use crate::error::ConfigError;

/// A trusted authorization server and where its signing keys come from.
#[derive(Clone)]
pub struct Issuer {
    url: String,
    keys: IssuerKeys,
}

#[derive(Clone)]
enum IssuerKeys {
    Discover,
    JwksUri(String),
    SharedSecret {
        secret: Arc<zeroize::Zeroizing<Vec<u8>>>,
        alg: Algorithm,
    },
    #[cfg(feature = "introspection")]
    Introspection {
        endpoint: String,
        auth: super::ClientAuth,
    },
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            IssuerKeys::Discover => "discover".to_owned(),
            IssuerKeys::JwksUri(u) => format!("jwks_uri={u}"),
            IssuerKeys::SharedSecret { alg, .. } => format!("shared secret ({alg:?}, redacted)"),
            #[cfg(feature = "introspection")]
            IssuerKeys::Introspection { endpoint, auth } => {
                format!("introspection={endpoint} as {}", auth.client_id())
            }
        };
        f.debug_struct("Issuer")
            .field("url", &self.url)
            .field("keys", &keys)
            .finish()
    }
}

impl Issuer {
    /// An issuer whose `jwks_uri` is discovered from its RFC 8414 metadata
    /// (`/.well-known/oauth-authorization-server`), falling back to OpenID
    /// Connect discovery (`/.well-known/openid-configuration`). The metadata's
    /// `issuer` must equal `url` exactly.
    pub fn discover(url: impl Into<String>) -> Self {
        Issuer {
            url: url.into(),
            keys: IssuerKeys::Discover,
        }
    }

    /// An issuer whose key set is at a known `jwks_uri` (no discovery).
    pub fn with_jwks_uri(url: impl Into<String>, jwks_uri: impl Into<String>) -> Self {
        Issuer {
            url: url.into(),
            keys: IssuerKeys::JwksUri(jwks_uri.into()),
        }
    }

    /// An issuer that signs with a shared secret (HS256, HS384 or HS512).
    ///
    /// This is the only way to accept HMAC-signed tokens: anyone who holds the
    /// secret can mint tokens, so the resource server becomes as trusted as the
    /// issuer. The secret must be at least as long as the hash (32, 48 or 64
    /// bytes); `build` refuses a shorter one.
    pub fn with_shared_secret(url: impl Into<String>, secret: impl Into<Vec<u8>>, alg: Algorithm) -> Self {
        Issuer {
            url: url.into(),
            keys: IssuerKeys::SharedSecret {
                secret: Arc::new(zeroize::Zeroizing::new(secret.into())),
                alg,
            },
        }
    }

    /// An issuer whose tokens (typically opaque) are checked by asking its
    /// RFC 7662 introspection endpoint, authenticating as `client`.
    ///
    /// Every token that is not a JWT of another configured issuer goes there;
    /// see [`introspection`](super::introspection) for the rules, the checks
    /// and the caches. At most one introspection issuer can be configured.
    #[cfg(feature = "introspection")]
    #[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
    pub fn introspection(
        url: impl Into<String>,
        introspection_endpoint: impl Into<String>,
        client: super::ClientAuth,
    ) -> Self {
        Issuer {
            url: url.into(),
            keys: IssuerKeys::Introspection {
                endpoint: introspection_endpoint.into(),
                auth: client,
            },
        }
    }

    /// The issuer identifier, as it must appear in `iss`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The algorithms allowed when none are configured: RS256, PS256, ES256, EdDSA.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

/// The OAuth 2.1 resource server configuration; see the [module docs](self).
///
/// Cheap to clone (one reference count).
#[derive(Clone)]
pub struct ResourceServer {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for ResourceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceServer")
            .field("resource", &self.shared.resource)
            .field("issuers", &self.shared.metadata.authorization_servers)
            .field("audiences", &self.shared.audiences)
            .field("algorithms", &self.shared.algorithms)
            .field("required_scopes", &self.shared.required_scopes)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) resource: String,
    pub(crate) resource_path: String,
    pub(crate) metadata_url: String,
    pub(crate) metadata: ProtectedResourceMetadata,
    pub(crate) metadata_json: bytes::Bytes,
    pub(crate) issuers: Vec<TrustedIssuer>,
    pub(crate) audiences: HashSet<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) required_scopes: Vec<String>,
    pub(crate) leeway: u64,
    pub(crate) max_token_bytes: usize,
    pub(crate) tenant_claim: String,
    pub(crate) groups_claim: String,
    pub(crate) require_access_token_type: bool,
    pub(crate) cache: TokenCache,
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) allowed_origins: Vec<String>,
    #[cfg(feature = "introspection")]
    pub(crate) introspection: Option<super::introspection::Introspector>,
}

pub(crate) struct TrustedIssuer {
    pub(crate) url: String,
    pub(crate) keys: KeyCache,
}

/// Builds a [`ResourceServer`]. Start with [`ResourceServer::builder`].
#[derive(Debug)]
#[must_use]
pub struct ResourceServerBuilder {
    resource: String,
    issuers: Vec<Issuer>,
    audiences: Option<Vec<String>>,
    algorithms: Vec<Algorithm>,
    required_scopes: Vec<String>,
    scopes_supported: Option<Vec<String>>,
    leeway: Duration,
    max_token_bytes: usize,
    tenant_claim: String,
    groups_claim: String,
    require_access_token_type: bool,
    resource_name: Option<String>,
    resource_documentation: Option<String>,
    token_cache_capacity: usize,
    token_cache_ttl: Duration,
    keys: KeyCacheSettings,
    http_timeout: Duration,
    http_client: Option<reqwest::Client>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    #[cfg(feature = "introspection")]
    introspection_cache_ttl: Duration,
    #[cfg(feature = "introspection")]
    introspection_negative_cache_ttl: Duration,
    #[cfg(feature = "introspection")]
    introspection_max_in_flight: usize,
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
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            required_scopes: Vec::new(),
            scopes_supported: None,
            leeway: Duration::from_secs(30),
            max_token_bytes: 8 * 1024,
            tenant_claim: "tenant".to_owned(),
            groups_claim: "groups".to_owned(),
            require_access_token_type: false,
            resource_name: None,
            resource_documentation: None,
            token_cache_capacity: 10_000,
            token_cache_ttl: Duration::from_secs(300),
            keys: KeyCacheSettings::default(),
            http_timeout: Duration::from_secs(5),
            http_client: None,
            allowed_hosts: None,
            allowed_origins: None,
            #[cfg(feature = "introspection")]
            introspection_cache_ttl: super::introspection::DEFAULT_CACHE_TTL,
            #[cfg(feature = "introspection")]
            introspection_negative_cache_ttl: super::introspection::DEFAULT_NEGATIVE_CACHE_TTL,
            #[cfg(feature = "introspection")]
            introspection_max_in_flight: super::introspection::DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// The canonical resource URI.
    pub fn resource(&self) -> &str {
        &self.shared.resource
    }

    /// The path of the resource URI (for example `/mcp`), where the MCP
    /// endpoint is served.
    pub fn resource_path(&self) -> &str {
        &self.shared.resource_path
    }

    /// The URL of this resource's RFC 9728 metadata, as sent in the
    /// `resource_metadata` challenge parameter.
    pub fn metadata_url(&self) -> &str {
        &self.shared.metadata_url
    }

    /// The RFC 9728 metadata document.
    pub fn metadata(&self) -> &ProtectedResourceMetadata {
        &self.shared.metadata
    }

    /// The scopes every request must carry.
    pub fn required_scopes(&self) -> &[String] {
        &self.shared.required_scopes
    }

    /// The trusted issuers (JWT and introspection), in configuration order.
    pub fn issuers(&self) -> impl Iterator<Item = &str> + '_ {
        self.shared.metadata.authorization_servers.iter().map(String::as_str)
    }

    /// The tower layer that authenticates every request with this
    /// configuration.
    pub fn layer(&self) -> BearerAuthLayer {
        BearerAuthLayer::new(self.clone())
    }

    /// The `Host` values rmcp's DNS-rebinding check accepts for this
    /// resource. Defaults to the resource URI's host (any port) and
    /// `host:port`; for a loopback resource also `localhost`, `127.0.0.1` and
    /// `::1`. Override with
    /// [`ResourceServerBuilder::allowed_hosts`].
    pub fn allowed_hosts(&self) -> &[String] {
        &self.shared.allowed_hosts
    }

    /// The browser `Origin` values accepted when a request carries one.
    /// Defaults to the resource URI's origin (`scheme://host:port`); a
    /// request from any other origin is refused by rmcp with 403. Override
    /// with [`ResourceServerBuilder::allowed_origins`].
    pub fn allowed_origins(&self) -> &[String] {
        &self.shared.allowed_origins
    }

    /// rmcp's Streamable HTTP configuration with DNS-rebinding protection
    /// kept on: [`allowed_hosts`](Self::allowed_hosts) and
    /// [`allowed_origins`](Self::allowed_origins) from this resource, so a
    /// server deployed at its public URI does not answer 403 to every request
    /// and a foreign web page cannot drive it.
    pub fn streamable_http_config(&self) -> rmcp::transport::streamable_http_server::StreamableHttpServerConfig {
        rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default()
            .with_allowed_hosts(self.shared.allowed_hosts.iter().cloned())
            .with_allowed_origins(self.shared.allowed_origins.iter().cloned())
    }

    /// Fetch every issuer's signing keys now, so the first request does not
    /// wait and a misconfigured issuer is noticed at start-up.
    pub async fn warm_up(&self) -> Result<(), crate::error::AuthError> {
        for issuer in &self.shared.issuers {
            issuer.keys.ensure_loaded().await?;
        }
        Ok(())
    }
}

impl ResourceServerBuilder {
    /// Trust one more issuer. Defaults to only the issuer given to
    /// [`ResourceServer::builder`].
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Accept tokens whose `aud` contains any of `audiences` (RFC 8707).
    /// Defaults to the resource URI alone.
    pub fn audiences<I, S>(mut self, audiences: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.audiences = Some(audiences.into_iter().map(Into::into).collect());
        self
    }

    /// The signature algorithms accepted from JWKS-backed issuers. HS* and
    /// `none` are refused here (use [`Issuer::with_shared_secret`] for HS*).
    /// Defaults to RS256, PS256, ES256 and EdDSA.
    pub fn algorithms<I: IntoIterator<Item = Algorithm>>(mut self, algorithms: I) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// Scopes every request must carry; a token without them gets 403
    /// `insufficient_scope`. Defaults to none.
    pub fn required_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The `scopes_supported` advertised in the metadata. Defaults to the
    /// required scopes.
    pub fn scopes_supported<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes_supported = Some(scopes.into_iter().map(Into::into).collect());
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

    /// Require the RFC 9068 header `typ: at+jwt`, so that no other kind of
    /// JWT (an ID token, a logout token) is ever taken for an access token.
    /// Defaults to off: `at+jwt`, `JWT` and no `typ` are accepted.
    pub fn require_access_token_type(mut self) -> Self {
        self.require_access_token_type = true;
        self
    }

    /// How long an accepted introspection answer is reused at most; never
    /// past the token's `exp` nor [`token_cache_ttl`](Self::token_cache_ttl).
    /// Revocation at the provider takes effect within this time; 0 asks the
    /// provider on every request. Defaults to 60 seconds.
    #[cfg(feature = "introspection")]
    #[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
    pub fn introspection_cache_ttl(mut self, ttl: Duration) -> Self {
        self.introspection_cache_ttl = ttl;
        self
    }

    /// How long a refused introspection answer (`active: false`, wrong
    /// audience, expired...) is reused, so that a flood of one bad token is
    /// not a flood at the provider; at most 5 minutes, 0 disables. Defaults
    /// to 10 seconds.
    #[cfg(feature = "introspection")]
    #[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
    pub fn introspection_negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.introspection_negative_cache_ttl = ttl;
        self
    }

    /// How many introspection requests may be in flight at once (1 to
    /// 1024); requests for further new tokens wait their turn, so a flood of
    /// distinct forged tokens cannot become a flood at the provider. Defaults
    /// to 32.
    #[cfg(feature = "introspection")]
    #[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
    pub fn introspection_max_in_flight(mut self, requests: usize) -> Self {
        self.introspection_max_in_flight = requests;
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

    /// How many verified tokens are remembered (0 disables the cache).
    /// Defaults to 10 000.
    pub fn token_cache_capacity(mut self, entries: usize) -> Self {
        self.token_cache_capacity = entries;
        self
    }

    /// How long a verified token is remembered at most; never past its `exp`.
    /// Defaults to 5 minutes.
    pub fn token_cache_ttl(mut self, ttl: Duration) -> Self {
        self.token_cache_ttl = ttl;
        self
    }

    /// How often signing keys are refreshed when the JWKS response has no
    /// `Cache-Control: max-age`. Defaults to 5 minutes.
    pub fn key_refresh_interval(mut self, interval: Duration) -> Self {
        self.keys.default_refresh = interval;
        self
    }

    /// Bounds applied to a JWKS `Cache-Control: max-age`. Defaults to
    /// 1 minute and 24 hours.
    pub fn key_refresh_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.keys.min_refresh = min;
        self.keys.max_refresh = max;
        self
    }

    /// The least time between two fetches caused by an unknown `kid`, so a
    /// flood of forged `kid`s cannot turn this server against the identity
    /// provider. Defaults to 30 seconds.
    pub fn unknown_kid_cooldown(mut self, cooldown: Duration) -> Self {
        self.keys.unknown_kid_cooldown = cooldown;
        self
    }

    /// The least time between two fetches after a failed one. Defaults to
    /// 5 seconds.
    pub fn key_retry_after_failure(mut self, backoff: Duration) -> Self {
        self.keys.retry_after_failure = backoff;
        self
    }

    /// Timeout of a metadata or JWKS fetch. Defaults to 5 seconds.
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// Use this HTTP client for metadata and JWKS fetches (for a private CA or
    /// a proxy). It should not follow redirects. Defaults to a client with
    /// rustls, no redirects and [`http_timeout`](Self::http_timeout).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// The `Host` values the MCP endpoint answers to (`host` or `host:port`).
    /// Defaults to the resource URI's host; see
    /// [`ResourceServer::allowed_hosts`].
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// The browser origins allowed to call the MCP endpoint
    /// (`scheme://host:port`, `:*` for any port). Defaults to the resource
    /// URI's origin; see [`ResourceServer::allowed_origins`].
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Check the configuration and build the resource server.
    pub fn build(self) -> Result<ResourceServer, ConfigError> {
        let resource_url = parse_url("resource", &self.resource)?;
        if resource_url.query().is_some() {
            return Err(ConfigError::InvalidUrl {
                what: "resource",
                url: self.resource,
                reason: "it must not have a query",
            });
        }
        let resource_path = match resource_url.path() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        let metadata_url = metadata_url_for(&resource_url);
        let allowed_hosts = self.allowed_hosts.unwrap_or_else(|| hosts_for(&resource_url));
        let allowed_origins = self.allowed_origins.unwrap_or_else(|| origins_for(&resource_url));
        if allowed_hosts.is_empty() {
            return Err(ConfigError::OutOfRange {
                what: "allowed_hosts",
                reason: "at least one host (an empty list would disable DNS-rebinding protection)",
            });
        }

        let audiences: HashSet<String> = match self.audiences {
            Some(a) => a.into_iter().collect(),
            None => HashSet::from([self.resource.clone()]),
        };
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(ConfigError::NoAudience);
        }

        if self.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithms);
        }
        for alg in &self.algorithms {
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(ConfigError::AlgorithmNotAllowed {
                    alg: format!("{alg:?}"),
                    reason: "HMAC algorithms are accepted only from Issuer::with_shared_secret",
                });
            }
        }

        for scope in self
            .required_scopes
            .iter()
            .chain(self.scopes_supported.iter().flatten())
        {
            if !valid_scope(scope) {
                return Err(ConfigError::InvalidScope(scope.clone()));
            }
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
        self.keys.check()?;
        if let Some(doc) = &self.resource_documentation {
            parse_url("resource_documentation", doc)?;
        }

        let client = match self.http_client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(self.http_timeout)
                .connect_timeout(self.http_timeout)
                .user_agent(concat!("rmcp-guard/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ConfigError::HttpClient(e.to_string()))?,
        };

        #[cfg(feature = "introspection")]
        if self.introspection_negative_cache_ttl > Duration::from_secs(300) {
            return Err(ConfigError::OutOfRange {
                what: "introspection_negative_cache_ttl",
                reason: "at most 5 minutes",
            });
        }
        #[cfg(feature = "introspection")]
        if !(1..=1024).contains(&self.introspection_max_in_flight) {
            return Err(ConfigError::OutOfRange {
                what: "introspection_max_in_flight",
                reason: "between 1 and 1024",
            });
        }
        #[cfg(feature = "introspection")]
        let mut introspection: Option<super::introspection::Introspector> = None;
        let mut seen = HashSet::new();
        let mut all_issuers = Vec::with_capacity(self.issuers.len());
        let mut issuers = Vec::with_capacity(self.issuers.len());
        for issuer in self.issuers {
            let url = parse_url("issuer", &issuer.url)?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(ConfigError::InvalidUrl {
                    what: "issuer",
                    url: issuer.url,
                    reason: "an issuer has no query or fragment",
                });
            }
            if !seen.insert(issuer.url.clone()) {
                return Err(ConfigError::DuplicateIssuer(issuer.url));
            }
            all_issuers.push(issuer.url.clone());
            let source = match issuer.keys {
                IssuerKeys::Discover => KeySource::Discover {
                    candidates: discovery_urls(&url),
                },
                IssuerKeys::JwksUri(uri) => {
                    parse_url("jwks_uri", &uri)?;
                    KeySource::JwksUri(uri)
                }
                IssuerKeys::SharedSecret { secret, alg } => {
                    let min = match alg {
                        Algorithm::HS256 => 32,
                        Algorithm::HS384 => 48,
                        Algorithm::HS512 => 64,
                        other => {
                            return Err(ConfigError::AlgorithmNotAllowed {
                                alg: format!("{other:?}"),
                                reason: "a shared secret signs only with HS256, HS384 or HS512",
                            });
                        }
                    };
                    if secret.len() < min {
                        return Err(ConfigError::SharedSecretTooShort {
                            alg: format!("{alg:?}"),
                            min,
                        });
                    }
                    KeySource::SharedSecret { secret, alg }
                }
                #[cfg(feature = "introspection")]
                IssuerKeys::Introspection { endpoint, auth } => {
                    if let Some(first) = &introspection {
                        return Err(ConfigError::MultipleIntrospectionIssuers(
                            first.issuer().to_owned(),
                            issuer.url,
                        ));
                    }
                    introspection = Some(super::introspection::Introspector::new(
                        issuer.url,
                        &endpoint,
                        &auth,
                        client.clone(),
                        self.introspection_cache_ttl,
                        self.introspection_negative_cache_ttl,
                        self.introspection_max_in_flight,
                    )?);
                    continue;
                }
            };
            issuers.push(TrustedIssuer {
                keys: KeyCache::new(issuer.url.clone(), source, client.clone(), self.keys.clone()),
                url: issuer.url,
            });
        }

        let metadata = ProtectedResourceMetadata {
            resource: self.resource.clone(),
            authorization_servers: all_issuers,
            scopes_supported: self.scopes_supported.unwrap_or_else(|| self.required_scopes.clone()),
            bearer_methods_supported: vec!["header".to_owned()],
            resource_signing_alg_values_supported: None,
            resource_name: self.resource_name,
            resource_documentation: self.resource_documentation,
        };
        let metadata_json =
            bytes::Bytes::from(serde_json::to_vec(&metadata).map_err(|e| ConfigError::HttpClient(e.to_string()))?);

        Ok(ResourceServer {
            shared: Arc::new(Shared {
                resource: self.resource,
                resource_path,
                metadata_url,
                metadata,
                metadata_json,
                issuers,
                audiences,
                algorithms: self.algorithms,
                required_scopes: self.required_scopes,
                leeway: self.leeway.as_secs(),
                max_token_bytes: self.max_token_bytes,
                tenant_claim: self.tenant_claim,
                groups_claim: self.groups_claim,
                require_access_token_type: self.require_access_token_type,
                cache: TokenCache::new(self.token_cache_capacity, self.token_cache_ttl),
                allowed_hosts,
                allowed_origins,
                #[cfg(feature = "introspection")]
                introspection,
            }),
        })
    }
}

/// RFC 6749 scope-token: one or more NQCHAR (%x21 / %x23-5B / %x5D-7E).
fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// Parse `value` as an absolute URL that is https, or http on loopback.
pub(crate) fn parse_url(what: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|_| ConfigError::InvalidUrl {
        what,
        url: value.to_owned(),
        reason: "not an absolute URL",
    })?;
    if url.fragment().is_some() {
        return Err(ConfigError::InvalidUrl {
            what,
            url: value.to_owned(),
            reason: "it must not have a fragment",
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        // The error is printed and logged: name the URL without its secret.
        let mut shown = url.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        return Err(ConfigError::InvalidUrl {
            what,
            url: shown.into(),
            reason: "it must not carry credentials",
        });
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(ConfigError::InsecureUrl {
            what,
            url: value.to_owned(),
        }),
        _ => Err(ConfigError::InvalidUrl {
            what,
            url: value.to_owned(),
            reason: "the scheme must be https",
        }),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn hosts_for(resource: &Url) -> Vec<String> {
    let mut hosts = Vec::new();
    if let Some(host) = resource.host_str() {
        hosts.push(host.to_owned());
        if let Some(port) = resource.port_or_known_default() {
            hosts.push(format!("{host}:{port}"));
        }
    }
    if is_loopback(resource) {
        for alias in ["localhost", "127.0.0.1", "::1"] {
            if !hosts.iter().any(|h| h == alias) {
                hosts.push(alias.to_owned());
            }
        }
    }
    hosts
}

fn origins_for(resource: &Url) -> Vec<String> {
    let host = resource.host_str().unwrap_or_default();
    match resource.port_or_known_default() {
        Some(port) => vec![format!("{}://{host}:{port}", resource.scheme())],
        None => vec![format!("{}://{host}", resource.scheme())],
    }
}

/// RFC 9728 section 3.1: insert the well-known path between host and path.
fn metadata_url_for(resource: &Url) -> String {
    let mut base = format!("{}://{}", resource.scheme(), resource.host_str().unwrap_or_default());
    if let Some(port) = resource.port() {
        base.push_str(&format!(":{port}"));
    }
    let path = resource.path().trim_end_matches('/');
    format!("{base}/.well-known/oauth-protected-resource{path}")
}

/// RFC 8414 section 3.1 (well-known inserted before the issuer's path), then
/// OpenID Connect Discovery (appended).
pub(crate) fn discovery_urls(issuer: &Url) -> Vec<String> {
    let mut origin = format!("{}://{}", issuer.scheme(), issuer.host_str().unwrap_or_default());
    if let Some(port) = issuer.port() {
        origin.push_str(&format!(":{port}"));
    }
    let path = issuer.path().trim_end_matches('/');
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}{path}/.well-known/openid-configuration"),
    ]
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
        assert_eq!(b.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(b.leeway, Duration::from_secs(30));
        assert_eq!(b.max_token_bytes, 8192);
        assert_eq!(b.tenant_claim, "tenant");
        assert_eq!(b.groups_claim, "groups");
        assert!(!b.require_access_token_type);
        assert_eq!(b.token_cache_capacity, 10_000);
        assert_eq!(b.token_cache_ttl, Duration::from_secs(300));
        assert_eq!(b.http_timeout, Duration::from_secs(5));
        assert_eq!(b.keys.unknown_kid_cooldown, Duration::from_secs(30));
        #[cfg(feature = "introspection")]
        {
            assert_eq!(b.introspection_cache_ttl, Duration::from_secs(60));
            assert_eq!(b.introspection_negative_cache_ttl, Duration::from_secs(10));
            assert_eq!(b.introspection_max_in_flight, 32);
        }
        let rs = b.build().unwrap();
        assert_eq!(
            rs.shared.audiences,
            HashSet::from(["https://mcp.example.com/mcp".to_owned()])
        );
        assert!(rs.required_scopes().is_empty());
    }

    #[test]
    fn non_https_resource_is_refused_except_loopback() {
        let err = ResourceServer::builder(
            "http://mcp.example.com/mcp",
            Issuer::discover("https://idp.example.com"),
        )
        .build()
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::InsecureUrl { what: "resource", .. }),
            "{err}"
        );
        ResourceServer::builder("http://127.0.0.1:8080/mcp", Issuer::discover("http://localhost:9000"))
            .build()
            .unwrap();
        ResourceServer::builder("http://[::1]:8080/mcp", Issuer::discover("https://idp.example.com"))
            .build()
            .unwrap();
    }

    #[test]
    fn http_issuer_is_refused() {
        let err = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::discover("http://idp.example.com"),
        )
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::InsecureUrl { what: "issuer", .. }), "{err}");
    }

    #[test]
    fn hmac_only_through_shared_secret() {
        let err = builder().algorithms([Algorithm::HS256]).build().unwrap_err();
        assert!(matches!(err, ConfigError::AlgorithmNotAllowed { .. }), "{err}");
        let err = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::with_shared_secret("https://idp.example.com", b"short".to_vec(), Algorithm::HS256),
        )
        .build()
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::SharedSecretTooShort { min: 32, .. }),
            "{err}"
        );
        let err = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::with_shared_secret("https://idp.example.com", vec![7u8; 64], Algorithm::RS256),
        )
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::AlgorithmNotAllowed { .. }), "{err}");
    }

    #[test]
    fn shared_secret_is_not_in_debug() {
        let issuer = Issuer::with_shared_secret(
            "https://idp.example.com",
            b"super-secret-value-0123456789abcdef".to_vec(),
            Algorithm::HS256,
        );
        let shown = format!("{issuer:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            builder().audiences(Vec::<String>::new()).build(),
            Err(ConfigError::NoAudience)
        ));
        assert!(matches!(
            builder().algorithms([]).build(),
            Err(ConfigError::NoAlgorithms)
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
            builder().leeway(Duration::from_secs(301)).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            builder().max_token_bytes(100).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            builder().tenant_claim("").build(),
            Err(ConfigError::EmptyClaimName(_))
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
    }

    #[test]
    fn credentials_in_a_url_are_not_repeated_in_the_error() {
        let err = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::with_jwks_uri("https://idp.example.com", "https://svc:s3cret-pw@idp.example.com/jwks"),
        )
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidUrl { what: "jwks_uri", .. }), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("idp.example.com/jwks"), "{shown}");
    }

    #[test]
    fn urls_are_derived() {
        let rs = builder().build().unwrap();
        assert_eq!(
            rs.metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(rs.resource_path(), "/mcp");
        assert_eq!(
            rs.allowed_hosts(),
            vec!["mcp.example.com".to_owned(), "mcp.example.com:443".to_owned()]
        );
        let url = Url::parse("https://idp.example.com/realms/x").unwrap();
        assert_eq!(
            discovery_urls(&url),
            vec![
                "https://idp.example.com/.well-known/oauth-authorization-server/realms/x".to_owned(),
                "https://idp.example.com/realms/x/.well-known/openid-configuration".to_owned(),
            ]
        );
    }
}
