//! A development OAuth 2.1 authorization server. **Never use
//! it in production**: it approves every authorization request, without a
//! login, as one configured demo user.
//!
//! [`DevAuthServer`] lets an MCP client that follows the specification's
//! discovery (401 challenge -> RFC 9728 protected resource metadata -> RFC
//! 8414 authorization server metadata -> Client ID Metadata Document or RFC
//! 7591 registration -> PKCE -> token -> call) connect to a guarded server
//! with no setup at all. It serves, on a loopback port only:
//!
//! | path | what |
//! |------|------|
//! | `/.well-known/oauth-authorization-server` | RFC 8414 metadata, with `client_id_metadata_document_supported: true` and `dpop_signing_alg_values_supported` |
//! | `/register` | RFC 7591 dynamic registration of public clients (`token_endpoint_auth_method: none`) |
//! | `/authorize` | authorization code with PKCE **S256 only**, approved at once as the demo user; RFC 9207 `iss` in the redirect |
//! | `/token` | `authorization_code` and `refresh_token` (rotating) grants; DPoP-bound tokens (RFC 9449) for a request with a `DPoP` proof |
//! | `/jwks.json` | the public key that signs the access tokens |
//!
//! Access tokens are RFC 9068 JWTs (`typ: at+jwt`, ES256) with `iss`, `sub`,
//! `aud` (the RFC 8707 `resource`), `exp`, `iat`, `jti`, `client_id`, `scope`,
//! and the demo user's `groups` and `tenant`. The server protects exactly one
//! resource, the URI given to [`DevAuthServer::builder`]; a `resource`
//! parameter naming anything else is refused with `invalid_target`.
//!
//! It refuses what a real authorization server refuses: an unknown client, a
//! redirect URI that is not registered (exact string match), a registration
//! with a redirect URI that is neither `https` nor loopback `http`, a missing
//! or `plain` PKCE challenge, a wrong `code_verifier`, a reused code (which
//! also revokes the refresh tokens issued from it), an expired code, a reused
//! rotated-out refresh token (which revokes its whole family) and a scope it
//! does not support. Clients, codes and refresh tokens live in bounded
//! in-memory stores with expiry; codes and refresh tokens are stored only as
//! SHA-256 hashes. Keys are generated at start and never leave the process.
//!
//! ## DPoP
//!
//! A token request with a `DPoP` header (RFC 9449) gets an access token
//! bound to the proof's key (claim `cnf: {"jkt": <RFC 7638 thumbprint>}`,
//! `"token_type": "DPoP"`), and a refresh token bound to the same key: a
//! refresh without a proof, or with a proof by another key, is refused with
//! `invalid_dpop_proof` (400) and leaves the refresh token unspent. A refresh
//! token issued without a proof stays unbound. The proof must be a compact
//! JWS with `typ: dpop+jwt`, an `alg` from `dpop_signing_alg_values_supported`
//! (`ES256`, `ES384`, `EdDSA`, `RS256`, `PS256`; RSA keys of 2048 bits or
//! more), a `jwk` header with public members only that verifies the
//! signature, `htm: POST`, `htu` equal to the token endpoint (query and
//! fragment ignored), an `iat` within 5 minutes of now and a `jti` not seen
//! before (remembered for 10 minutes); anything else is `invalid_dpop_proof`
//! (400). `ath` is not checked (no access token is presented here), no
//! nonce is demanded (`DPoP-Nonce` is never sent), and `dpop_jkt` at
//! `/authorize` is not supported.
//!
//! ## Client ID Metadata Documents
//!
//! A client without a registration may use the URL of its metadata document
//! as its `client_id` (OAuth Client ID Metadata Document,
//! draft-ietf-oauth-client-id-metadata-document; the MCP specification's
//! preferred way since 2025-11-25; registration stays for older clients).
//! At `/authorize` and `/token` such a `client_id` is fetched and checked:
//!
//! - the URL is `https` with a path, in normal form (no dot segments, no
//!   default port, lowercase scheme and host), without fragment or userinfo;
//!   **for development, `http` on a loopback host (`127.0.0.0/8`, `[::1]`,
//!   `localhost`) is accepted too**, so a client under development can serve
//!   its document from a local port;
//! - the fetch takes at most 5 seconds, follows no redirect, uses no proxy,
//!   reads at most 5 KiB, needs `200 OK` and a JSON media type, and at most 8
//!   run at once (more answer `temporarily_unavailable`);
//! - the document is a JSON object whose `client_id` equals the URL exactly
//!   (string comparison), with a `client_name`, `redirect_uris` that a
//!   registration would accept, `token_endpoint_auth_method` `none` (or
//!   absent), and no `client_secret` or `client_secret_expires_at`;
//! - the request's `redirect_uri` must be one of its `redirect_uris`.
//!
//! Any failure is an `invalid_client` error (400 at `/authorize`, never a
//! redirect; 401 at `/token`); nothing is ever approved on a document that
//! was not fetched and checked. An accepted document is cached for
//! [`DevAuthServerBuilder::client_metadata_cache_ttl`] (or a shorter
//! `Cache-Control: max-age`; not under `no-store`/`no-cache`), in a cache
//! bounded by [`DevAuthServerBuilder::capacity`]. `private_key_jwt` is not
//! supported: only public clients.
//!
//! Server-side request forgery: whoever can reach this server's loopback
//! port can make it send a GET to any `https` URL, or to an `http` URL on
//! loopback, and learn from the error whether it answered with an
//! acceptable document (never the body). The server binds loopback only, so
//! that is a process on the developer's machine, which could fetch those
//! URLs itself; a production authorization server must also refuse
//! documents on private and loopback addresses (resolving names first) and
//! rate-limit fetches per client. Turn the feature off with
//! [`DevAuthServerBuilder::client_id_metadata_documents`]. `https`
//! documents are checked against the platform's roots; to trust a test CA
//! for a document served over `https` on a loopback port, point
//! `SSL_CERT_FILE` at it (as `tests/ts_client.rs` does).
//!
//! No endpoint sends CORS headers, on purpose: with automatic approval, a
//! web page in the developer's browser that could register a client (the
//! registration endpoint demands `application/json`, which needs a CORS
//! preflight) and read the token response could obtain tokens for the demo
//! user. Browser-based clients therefore need a server-side proxy (as the MCP
//! Inspector's proxy mode does).
//!
//! Where this differs from a production server, by design: there is no user
//! interface, consent or login; loopback redirect URIs must match exactly
//! including the port (RFC 8252 section 7.3 lets native apps vary it);
//! private-use URI scheme redirects are refused; confidential clients are not
//! supported; omitting `resource` yields a token for the one protected
//! resource.
//!
//! ```
//! use rmcp_guard_testkit::dev::DevAuthServer;
//! use serde_json::{Value, json};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = DevAuthServer::builder("http://127.0.0.1:8080/mcp")
//!     .subject("alice")
//!     .groups(["admins"])
//!     .start()
//!     .await?;
//!
//! let http = reqwest::Client::new();
//! let metadata: Value = http.get(server.metadata_url()).send().await?.json().await?;
//! assert_eq!(metadata["issuer"], server.issuer());
//! assert_eq!(metadata["code_challenge_methods_supported"], json!(["S256"]));
//!
//! // RFC 7591: a public client registers a loopback redirect URI.
//! let response = http
//!     .post(server.registration_endpoint())
//!     .json(&json!({"redirect_uris": ["http://127.0.0.1:9999/callback"]}))
//!     .send()
//!     .await?;
//! assert_eq!(response.status(), 201);
//!
//! // A redirect URI on another host over plain http is refused.
//! let response = http
//!     .post(server.registration_endpoint())
//!     .json(&json!({"redirect_uris": ["http://attacker.example/callback"]}))
//!     .send()
//!     .await?;
//! assert_eq!(response.status(), 400);
//!
//! // Client ID Metadata Documents are advertised; a document URL that is
//! // plain http on another host is refused before any fetch.
//! assert_eq!(metadata["client_id_metadata_document_supported"], true);
//! let authorize = url::Url::parse_with_params(
//!     &server.authorization_endpoint(),
//!     [
//!         ("client_id", "http://client.example/client.json"),
//!         ("redirect_uri", "http://127.0.0.1:9999/callback"),
//!     ],
//! )?;
//! let response = http.get(authorize).send().await?;
//! assert_eq!(response.status(), 400);
//! let error: Value = response.json().await?;
//! assert_eq!(error["error"], "invalid_client");
//!
//! // A ready-made token for curl users.
//! let token = server.issue_access_token("mcp:tools", std::time::Duration::from_secs(600));
//! assert_eq!(token.split('.').count(), 3);
//! # Ok(())
//! # }
//! ```

mod cimd;
mod clients;
mod dpop;
mod endpoints;
mod store;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

use crate::{KeyAlg, TestKey};

/// Path of the RFC 8414 metadata.
const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Path of the authorization endpoint.
const AUTHORIZE_PATH: &str = "/authorize";
/// Path of the token endpoint.
const TOKEN_PATH: &str = "/token";
/// Path of the registration endpoint.
const REGISTER_PATH: &str = "/register";
/// Path of the JWK set.
const JWKS_PATH: &str = "/jwks.json";

/// Why a [`DevAuthServer`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// The bind address is not a loopback address.
    #[error("the development authorization server binds loopback addresses only, not {0}")]
    NonLoopbackBind(SocketAddr),
    /// The protected resource URI is not an absolute http(s) URI without a fragment.
    #[error("the protected resource must be an absolute http(s) URI without a fragment: {0}")]
    InvalidResource(String),
    /// A setting has a value the server cannot work with.
    #[error("invalid setting: {0}")]
    InvalidSetting(&'static str),
    /// The signing key could not be generated (the system random source failed).
    #[error("the signing key could not be generated")]
    KeyGeneration,
    /// The listening socket could not be bound.
    #[error("could not bind the development authorization server: {0}")]
    Bind(#[source] std::io::Error),
}

/// A development authorization server on a loopback port; see the
/// [module docs](self).
///
/// The handle is cheap to clone; the server stops when the last clone drops.
#[derive(Clone)]
pub struct DevAuthServer {
    inner: Arc<Inner>,
}

/// Owns the server task; dropping it (with the last handle) stops the server.
struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for DevAuthServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevAuthServer")
            .field("issuer", &self.inner.shared.issuer)
            .field("resource", &self.inner.shared.resource)
            .field("subject", &self.inner.shared.user.subject)
            .finish_non_exhaustive()
    }
}

/// The user every authorization request is approved as.
#[derive(Debug, Clone)]
struct DemoUser {
    subject: String,
    groups: Vec<String>,
    tenant: Option<String>,
}

/// How long each kind of grant lives.
#[derive(Debug, Clone, Copy)]
struct Lifetimes {
    access_token: Duration,
    code: Duration,
    refresh_token: Duration,
    client: Duration,
}

/// State shared by the handle and the HTTP handlers.
struct Shared {
    issuer: String,
    resource: String,
    user: DemoUser,
    scopes_supported: Vec<String>,
    key: TestKey,
    lifetimes: Lifetimes,
    next_family: AtomicU64,
    stores: Mutex<endpoints::Stores>,
    /// Resolves Client ID Metadata Document URLs; `None` when turned off.
    cimd: Option<cimd::Resolver>,
}

impl Shared {
    /// The stores. Never held across an `.await`.
    fn stores(&self) -> MutexGuard<'_, endpoints::Stores> {
        // Every update to the stores is a single map operation, so a panic
        // elsewhere cannot leave them half-updated; keep serving.
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Configures a [`DevAuthServer`]. Start with [`DevAuthServer::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct DevAuthServerBuilder {
    resource: String,
    bind: SocketAddr,
    user: DemoUser,
    scopes_supported: Vec<String>,
    lifetimes: Lifetimes,
    capacity: usize,
    client_metadata: ClientMetadataSettings,
}

/// How Client ID Metadata Documents are resolved.
#[derive(Debug, Clone)]
struct ClientMetadataSettings {
    enabled: bool,
    cache_ttl: Duration,
}

impl DevAuthServer {
    /// Starts a configuration for a server that issues tokens for the
    /// protected resource `resource` (its canonical URI, e.g.
    /// `http://127.0.0.1:8080/mcp`) and for nothing else.
    pub fn builder(resource: impl Into<String>) -> DevAuthServerBuilder {
        DevAuthServerBuilder {
            resource: resource.into(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            user: DemoUser {
                subject: "dev-user".to_owned(),
                groups: vec!["developers".to_owned()],
                tenant: None,
            },
            scopes_supported: vec!["mcp:tools".to_owned()],
            lifetimes: Lifetimes {
                access_token: Duration::from_secs(300),
                code: Duration::from_secs(60),
                refresh_token: Duration::from_secs(8 * 3600),
                client: Duration::from_secs(24 * 3600),
            },
            capacity: 1024,
            client_metadata: ClientMetadataSettings {
                enabled: true,
                cache_ttl: Duration::from_secs(300),
            },
        }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The issuer identifier, `http://127.0.0.1:{port}` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.shared().issuer
    }

    /// The one protected resource this server issues tokens for.
    pub fn resource(&self) -> &str {
        &self.shared().resource
    }

    /// The socket address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The subject (`sub`) of every token this server issues.
    pub fn subject(&self) -> &str {
        &self.shared().user.subject
    }

    /// `{issuer}/.well-known/oauth-authorization-server` (RFC 8414).
    pub fn metadata_url(&self) -> String {
        format!("{}{METADATA_PATH}", self.issuer())
    }

    /// `{issuer}/authorize`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.issuer())
    }

    /// `{issuer}/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}{TOKEN_PATH}", self.issuer())
    }

    /// `{issuer}/register` (RFC 7591).
    pub fn registration_endpoint(&self) -> String {
        format!("{}{REGISTER_PATH}", self.issuer())
    }

    /// `{issuer}/jwks.json`.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.issuer())
    }

    /// The JWK set as served at [`DevAuthServer::jwks_uri`].
    pub fn jwks(&self) -> Value {
        endpoints::jwks_document(self.shared())
    }

    /// The number of registered clients (expired registrations included until
    /// they are purged).
    pub fn registered_clients(&self) -> usize {
        self.shared().stores().clients.len()
    }

    /// Mints an access token for the demo user and this server's resource,
    /// without any flow, e.g. to print for curl users. `scope` is written
    /// verbatim (space-separated); `client_id` is `rmcp-guard-dev`.
    pub fn issue_access_token(&self, scope: &str, lifetime: Duration) -> String {
        let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
        endpoints::sign_access_token(self.shared(), "rmcp-guard-dev", &scopes, lifetime, None)
    }

    /// Like [`DevAuthServer::issue_access_token`], for another caller than
    /// the demo user: `subject`, with `groups` (claim `groups`, absent when
    /// empty) and `tenant` (claim `tenant`), e.g. to try a policy as several
    /// people.
    pub fn issue_access_token_as<I, S>(
        &self,
        subject: &str,
        groups: I,
        tenant: Option<&str>,
        scope: &str,
        lifetime: Duration,
    ) -> String
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let user = DemoUser {
            subject: subject.to_owned(),
            groups: groups.into_iter().map(Into::into).collect(),
            tenant: tenant.map(str::to_owned),
        };
        let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
        endpoints::sign_access_token_as(self.shared(), &user, "rmcp-guard-dev", &scopes, lifetime, None)
    }
}

impl DevAuthServerBuilder {
    /// The address to listen on; it must be a loopback address (`start`
    /// refuses any other). Defaults to `127.0.0.1:0` (a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The demo user's subject (`sub`). Defaults to `"dev-user"`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.user.subject = subject.into();
        self
    }

    /// The demo user's groups (the `groups` claim; omitted when empty).
    /// Defaults to `["developers"]`.
    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.user.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// The demo user's tenant (the `tenant` claim). Defaults to `None` (no
    /// `tenant` claim).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.user.tenant = Some(tenant.into());
        self
    }

    /// The scopes clients may request (`scopes_supported`); any other scope is
    /// refused with `invalid_scope`. Defaults to `["mcp:tools"]`.
    pub fn scopes_supported<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes_supported = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Lifetime of access tokens (`exp - iat`). Defaults to 300 seconds.
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetimes.access_token = lifetime;
        self
    }

    /// Lifetime of authorization codes. Defaults to 60 seconds.
    pub fn code_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetimes.code = lifetime;
        self
    }

    /// Lifetime of refresh tokens, renewed at each rotation. Defaults to 8 hours.
    pub fn refresh_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetimes.refresh_token = lifetime;
        self
    }

    /// Lifetime of a client registration. Defaults to 24 hours.
    pub fn client_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetimes.client = lifetime;
        self
    }

    /// The most entries each store (clients, codes, refresh tokens, and the
    /// tombstones of used ones) holds; when full, the entry that expires
    /// soonest is dropped. Defaults to `1024`.
    pub fn capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// Whether a `client_id` that is a URL is resolved as an OAuth Client ID
    /// Metadata Document (and `client_id_metadata_document_supported` is
    /// advertised). Registration (RFC 7591) works either way. Defaults to
    /// `true`.
    pub fn client_id_metadata_documents(mut self, enabled: bool) -> Self {
        self.client_metadata.enabled = enabled;
        self
    }

    /// The longest a fetched client metadata document is kept; a shorter
    /// `Cache-Control: max-age` wins, and `no-store` or `no-cache` keeps it
    /// not at all. Defaults to 300 seconds.
    pub fn client_metadata_cache_ttl(mut self, ttl: Duration) -> Self {
        self.client_metadata.cache_ttl = ttl;
        self
    }

    /// Checks the configuration, generates the signing key, binds and starts
    /// serving on the current tokio runtime. Logs a warning that the server is
    /// for development only.
    ///
    /// # Errors
    ///
    /// [`DevError::NonLoopbackBind`] for a non-loopback address,
    /// [`DevError::InvalidResource`], [`DevError::InvalidSetting`] (no scope,
    /// a scope with whitespace, a zero lifetime or capacity, a zero client
    /// metadata cache lifetime, or no TLS backend for document fetches),
    /// [`DevError::KeyGeneration`] or [`DevError::Bind`].
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start(self) -> Result<DevAuthServer, DevError> {
        if !self.bind.ip().is_loopback() {
            return Err(DevError::NonLoopbackBind(self.bind));
        }
        let resource_ok = Url::parse(&self.resource)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.fragment().is_none())
            .unwrap_or(false);
        if !resource_ok {
            return Err(DevError::InvalidResource(self.resource));
        }
        if self.scopes_supported.is_empty() {
            return Err(DevError::InvalidSetting("scopes_supported must not be empty"));
        }
        if self
            .scopes_supported
            .iter()
            .any(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(DevError::InvalidSetting(
                "a scope must be non-empty and contain no whitespace",
            ));
        }
        let l = self.lifetimes;
        if [l.access_token, l.code, l.refresh_token, l.client]
            .iter()
            .any(Duration::is_zero)
        {
            return Err(DevError::InvalidSetting("lifetimes must be greater than zero"));
        }
        if self.capacity == 0 {
            return Err(DevError::InvalidSetting("capacity must be greater than zero"));
        }
        if self.client_metadata.cache_ttl.is_zero() {
            return Err(DevError::InvalidSetting(
                "the client metadata cache lifetime must be greater than zero",
            ));
        }
        let cimd = if self.client_metadata.enabled {
            Some(cimd::Resolver::new(self.capacity, self.client_metadata.cache_ttl).map_err(DevError::InvalidSetting)?)
        } else {
            None
        };
        let key = TestKey::try_generate(KeyAlg::Es256).map_err(|_| DevError::KeyGeneration)?;

        let listener = TcpListener::bind(self.bind).await.map_err(DevError::Bind)?;
        let addr = listener.local_addr().map_err(DevError::Bind)?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            resource: self.resource,
            user: self.user,
            scopes_supported: self.scopes_supported,
            key,
            lifetimes: self.lifetimes,
            next_family: AtomicU64::new(1),
            stores: Mutex::new(endpoints::Stores::new(self.capacity)),
            cimd,
        });
        let app = endpoints::router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "development authorization server stopped");
            }
        });
        tracing::warn!(
            issuer = %shared.issuer,
            resource = %shared.resource,
            subject = %shared.user.subject,
            "DEVELOPMENT AUTHORIZATION SERVER: approves every authorization request automatically, \
             without login or consent, as the demo user. For local development only; never expose or deploy it."
        );
        Ok(DevAuthServer {
            inner: Arc::new(Inner { shared, addr, task }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(token: &str) -> Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).expect("a JWS");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn tokens_for_other_callers_carry_their_claims() {
        let server = DevAuthServer::builder("http://127.0.0.1:8080/mcp")
            .subject("demo")
            .groups(["developers"])
            .start()
            .await
            .unwrap();
        let token = server.issue_access_token_as(
            "alice",
            ["admin", "editors"],
            Some("acme"),
            "mcp:tools",
            Duration::from_secs(60),
        );
        let c = claims(&token);
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["groups"], serde_json::json!(["admin", "editors"]));
        assert_eq!(c["tenant"], "acme");
        assert_eq!(c["scope"], "mcp:tools");
        assert_eq!(c["aud"], "http://127.0.0.1:8080/mcp");
        assert_eq!(c["iss"], server.issuer());

        let c = claims(&server.issue_access_token_as("bob", Vec::<String>::new(), None, "", Duration::from_secs(60)));
        assert_eq!(c["sub"], "bob");
        assert!(c.get("groups").is_none() && c.get("tenant").is_none() && c.get("scope").is_none());
        // The demo user is unchanged.
        assert_eq!(
            claims(&server.issue_access_token("mcp:tools", Duration::from_secs(60)))["sub"],
            "demo"
        );
    }

    #[tokio::test]
    async fn non_loopback_bind_is_refused() {
        let err = DevAuthServer::builder("http://127.0.0.1:8080/mcp")
            .bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, DevError::NonLoopbackBind(_)), "{err}");
        let err = DevAuthServer::builder("http://127.0.0.1:8080/mcp")
            .bind("192.0.2.1:0".parse().unwrap())
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, DevError::NonLoopbackBind(_)), "{err}");
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        let err = DevAuthServer::builder("not a url").start().await.unwrap_err();
        assert!(matches!(err, DevError::InvalidResource(_)));
        let err = DevAuthServer::builder("http://127.0.0.1/mcp#frag")
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, DevError::InvalidResource(_)));
        let err = DevAuthServer::builder("http://127.0.0.1/mcp")
            .scopes_supported(["a b"])
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, DevError::InvalidSetting(_)));
        let err = DevAuthServer::builder("http://127.0.0.1/mcp")
            .code_lifetime(Duration::ZERO)
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, DevError::InvalidSetting(_)));
    }

    #[test]
    fn defaults() {
        let b = DevAuthServer::builder("http://127.0.0.1:8080/mcp");
        assert_eq!(b.bind, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        assert_eq!(b.user.subject, "dev-user");
        assert_eq!(b.user.groups, ["developers"]);
        assert_eq!(b.user.tenant, None);
        assert_eq!(b.scopes_supported, ["mcp:tools"]);
        assert_eq!(b.lifetimes.access_token, Duration::from_secs(300));
        assert_eq!(b.lifetimes.code, Duration::from_secs(60));
        assert_eq!(b.lifetimes.refresh_token, Duration::from_secs(8 * 3600));
        assert_eq!(b.lifetimes.client, Duration::from_secs(24 * 3600));
        assert_eq!(b.capacity, 1024);
        assert!(b.client_metadata.enabled);
        assert_eq!(b.client_metadata.cache_ttl, Duration::from_secs(300));
    }
}
