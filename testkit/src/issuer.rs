//! The in-process issuer: key state, the loopback HTTP server and its handle.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::keys::{KeyAlg, KeyKind, KeyMaterial, compact_jws, json_bytes};
use crate::persona::Personas;
use crate::token::TokenBuilder;

/// Path of the RFC 8414 authorization server metadata.
const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Path of the OpenID Connect discovery document.
const OIDC_METADATA_PATH: &str = "/.well-known/openid-configuration";
/// Path of the JWK set.
const JWKS_PATH: &str = "/jwks.json";

/// An OAuth 2.1 / OpenID Connect issuer on a loopback port, for tests.
///
/// [`TestIssuer::start`] binds `127.0.0.1:0`, generates one ephemeral key per
/// kind (RSA 2048, ECDSA P-256, Ed25519) and serves:
///
/// | path | answer |
/// |------|--------|
/// | `/.well-known/oauth-authorization-server` | RFC 8414 metadata |
/// | `/.well-known/openid-configuration` | the same document (OIDC discovery) |
/// | `/jwks.json` | `{"keys": [...]}`: current keys, retired keys still published, extras |
/// | anything else | 404, counted by [`TestIssuer::other_requests`] |
///
/// The metadata names `authorization_endpoint` and `token_endpoint` (RFC 8414
/// requires them) but those paths answer 404: mint tokens with
/// [`TestIssuer::token`] instead.
///
/// The handle is cheap to clone; the server stops when the last clone drops.
/// The server runs on the tokio runtime that called `start`: on a
/// current-thread runtime (plain `#[tokio::test]`) reach it with an async
/// client, never a blocking one.
///
/// To prove that a validator never fetches a `jku` / `x5u` URL, point the
/// header at a second `TestIssuer` (the attacker) and assert its counters
/// stay at zero, or at a path of this one and check
/// [`TestIssuer::other_requests`].
/// Requests are counted with atomics, so tests can prove caching and refresh
/// behaviour ([`TestIssuer::jwks_fetches`], [`TestIssuer::metadata_fetches`]).
#[derive(Clone)]
pub struct TestIssuer {
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
        // Aborting the accept loop also drops the watch receiver that every
        // connection task observes, so open keep-alive connections shut down.
        self.task.abort();
    }
}

/// State shared between the handle and the HTTP handlers.
struct Shared {
    issuer: String,
    available: AtomicBool,
    jwks_fetches: AtomicUsize,
    metadata_fetches: AtomicUsize,
    other_requests: AtomicUsize,
    state: Mutex<KeyState>,
    personas: Personas,
}

/// Everything that changes at run time. Never locked across an `.await`.
struct KeyState {
    rsa: Arc<KeyMaterial>,
    ec: Arc<KeyMaterial>,
    ed: Arc<KeyMaterial>,
    /// Keys rotated out but still published, oldest first.
    retired: Vec<(KeyAlg, Arc<KeyMaterial>)>,
    extra: Vec<Value>,
    cache_control: Option<HeaderValue>,
    jwks_body: Option<String>,
    metadata_fields: BTreeMap<String, Option<Value>>,
    delay: Duration,
}

impl KeyState {
    fn current(&self, kind: KeyKind) -> &Arc<KeyMaterial> {
        match kind {
            KeyKind::Rsa => &self.rsa,
            KeyKind::Ec => &self.ec,
            KeyKind::Okp => &self.ed,
        }
    }

    fn current_mut(&mut self, kind: KeyKind) -> &mut Arc<KeyMaterial> {
        match kind {
            KeyKind::Rsa => &mut self.rsa,
            KeyKind::Ec => &mut self.ec,
            KeyKind::Okp => &mut self.ed,
        }
    }

    fn jwks(&self) -> Value {
        let current = KeyAlg::ALL.iter().map(|&alg| {
            let key = self.current(alg.kind());
            key.public_jwk(&key.kid(alg), alg)
        });
        let retired = self
            .retired
            .iter()
            .map(|(alg, key)| key.public_jwk(&key.kid(*alg), *alg));
        let keys: Vec<Value> = current.chain(retired).chain(self.extra.iter().cloned()).collect();
        json!({ "keys": keys })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, KeyState> {
        // A panic while holding the lock cannot leave `KeyState` half-updated
        // in a way that matters to a test; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn metadata(&self) -> Value {
        let iss = &self.issuer;
        let algs: Vec<&str> = KeyAlg::ALL.iter().map(|a| a.name()).collect();
        let mut doc = json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}{JWKS_PATH}"),
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
            "scopes_supported": ["openid", "mcp:tools"],
        });
        if let Value::Object(map) = &mut doc {
            for (name, value) in &self.lock().metadata_fields {
                match value {
                    Some(v) => map.insert(name.clone(), v.clone()),
                    None => map.remove(name),
                };
            }
        }
        doc
    }
}

impl fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestIssuer")
            .field("issuer", &self.inner.shared.issuer)
            .finish_non_exhaustive()
    }
}

impl TestIssuer {
    /// Generates fresh keys, binds `127.0.0.1:0` and starts serving on the
    /// current tokio runtime.
    ///
    /// # Errors
    ///
    /// If the port cannot be bound, or (as [`std::io::ErrorKind::Other`]) if
    /// key generation fails.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start() -> std::io::Result<TestIssuer> {
        let keygen = |kind| {
            KeyMaterial::generate(kind)
                .map(Arc::new)
                .map_err(|_| std::io::Error::other("test issuer: key generation failed"))
        };
        let state = KeyState {
            rsa: keygen(KeyKind::Rsa)?,
            ec: keygen(KeyKind::Ec)?,
            ed: keygen(KeyKind::Okp)?,
            retired: Vec::new(),
            extra: Vec::new(),
            cache_control: None,
            jwks_body: None,
            metadata_fields: BTreeMap::new(),
            delay: Duration::ZERO,
        };

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            available: AtomicBool::new(true),
            jwks_fetches: AtomicUsize::new(0),
            metadata_fetches: AtomicUsize::new(0),
            other_requests: AtomicUsize::new(0),
            state: Mutex::new(state),
            personas: Personas::default(),
        });

        let app = Router::new()
            .route(OAUTH_METADATA_PATH, get(metadata_handler))
            .route(OIDC_METADATA_PATH, get(metadata_handler))
            .route(JWKS_PATH, get(jwks_handler))
            .fallback(fallback_handler)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::debug!(error = %err, "test issuer server stopped");
            }
        });
        tracing::debug!(issuer = %shared.issuer, "test issuer listening");

        Ok(TestIssuer {
            inner: Arc::new(Inner { shared, addr, task }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The personas this issuer remembers (see [`TestIssuer::persona`]).
    pub(crate) fn personas(&self) -> &Personas {
        &self.shared().personas
    }

    /// The issuer identifier, `http://127.0.0.1:{port}` (no trailing slash);
    /// the `iss` of every minted token.
    pub fn issuer(&self) -> &str {
        &self.shared().issuer
    }

    /// The socket address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `{issuer}/jwks.json`.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.issuer())
    }

    /// `{issuer}/.well-known/oauth-authorization-server` (RFC 8414).
    pub fn oauth_metadata_url(&self) -> String {
        format!("{}{OAUTH_METADATA_PATH}", self.issuer())
    }

    /// `{issuer}/.well-known/openid-configuration` (OpenID Connect discovery).
    pub fn openid_configuration_url(&self) -> String {
        format!("{}{OIDC_METADATA_PATH}", self.issuer())
    }

    /// Starts a token with this issuer's defaults; see [`TokenBuilder`].
    pub fn token(&self) -> TokenBuilder<'_> {
        TokenBuilder::new(self)
    }

    /// A compact JWS over exactly `header` and `claims` as `serde_json` writes
    /// them, signed with this issuer's current key for `key`.
    ///
    /// The header is not inspected: it may name another `alg` (`"none"`,
    /// `"HS256"`), a foreign `kid`, `jku`, `crit`... The signature is always
    /// made with `key`'s algorithm.
    pub fn sign_raw(&self, header: &Value, claims: &Value, key: KeyAlg) -> String {
        self.sign_raw_bytes(&json_bytes(header), &json_bytes(claims), key)
    }

    /// Like [`TestIssuer::sign_raw`] over arbitrary bytes (duplicate JSON
    /// members, invalid UTF-8, non-JSON payloads...).
    pub fn sign_raw_bytes(&self, header: &[u8], payload: &[u8], key: KeyAlg) -> String {
        let material = self.current_key(key);
        compact_jws(header, payload, |input| material.sign(key, input))
    }

    /// The current key material for `alg` (cloned out of the lock).
    pub(crate) fn current_key(&self, alg: KeyAlg) -> Arc<KeyMaterial> {
        Arc::clone(self.shared().lock().current(alg.kind()))
    }

    /// X.509 `SubjectPublicKeyInfo` DER of the current RSA key (the one behind
    /// both RS256 and PS256), e.g. as the HMAC secret of an algorithm
    /// confusion attack.
    pub fn rsa_public_key_der(&self) -> Vec<u8> {
        // Invariant: the RSA slot always holds an RSA key, and encoding a
        // valid generated key as SPKI cannot fail.
        self.current_key(KeyAlg::Rs256)
            .rsa_spki_der()
            .expect("the RSA slot holds a valid RSA key")
    }

    /// PEM (`-----BEGIN PUBLIC KEY-----`) of [`TestIssuer::rsa_public_key_der`],
    /// with `\n` line endings, 64 columns and a final newline.
    pub fn rsa_public_key_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.rsa_public_key_der());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        // Base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The `kid` of the current key for `alg`, e.g. `rs256-1f2e3d4c5b6a7988`.
    ///
    /// RS256 and PS256 share the RSA key but have distinct kids
    /// (`rs256-…` / `ps256-…`, same thumbprint).
    pub fn kid(&self, alg: KeyAlg) -> String {
        self.current_key(alg).kid(alg)
    }

    /// Replaces the key of `alg`'s kind with a fresh one and returns the new
    /// kid for `alg`.
    ///
    /// Rotating `Rs256` or `Ps256` rotates the shared RSA key, so both kids
    /// change. With `keep_old` the replaced key stays in the JWKS (as a
    /// retired key); without it, the replaced key and every older retired key
    /// of that kind are unpublished.
    ///
    /// # Panics
    ///
    /// If aws-lc cannot generate a key (its random source failed).
    pub fn rotate(&self, alg: KeyAlg, keep_old: bool) -> String {
        let kind = alg.kind();
        // Generate outside the lock: RSA generation takes tens of milliseconds.
        // Invariant: key generation only fails when the system RNG fails.
        let fresh = Arc::new(KeyMaterial::generate(kind).expect("aws-lc key generation failed"));
        let kid = fresh.kid(alg);
        let mut state = self.shared().lock();
        let old = std::mem::replace(state.current_mut(kind), fresh);
        if keep_old {
            for &a in KeyAlg::of_kind(kind) {
                state.retired.push((a, Arc::clone(&old)));
            }
        } else {
            state.retired.retain(|(a, _)| a.kind() != kind);
        }
        kid
    }

    /// Appends a raw JWK object to the published set, after the issuer's own
    /// keys. Nothing is checked: publish keys of unknown `kty`, `use: enc`,
    /// keys without `kid`, duplicates, non-objects...
    pub fn publish_extra_jwk(&self, jwk: Value) {
        self.shared().lock().extra.push(jwk);
    }

    /// Removes every JWK added with [`TestIssuer::publish_extra_jwk`].
    pub fn clear_extra_jwks(&self) {
        self.shared().lock().extra.clear();
    }

    /// The JWK set as it is served now (ignoring [`TestIssuer::set_jwks_body`]).
    pub fn jwks(&self) -> Value {
        self.shared().lock().jwks()
    }

    /// Whether the metadata and JWKS endpoints answer; `false` makes both
    /// answer `503 Service Unavailable` (requests are still counted).
    /// Defaults to `true`.
    pub fn set_available(&self, up: bool) {
        self.shared().available.store(up, Ordering::SeqCst);
    }

    /// The `Cache-Control` header of the JWKS response; `None` sends none.
    /// Defaults to `None`.
    ///
    /// # Panics
    ///
    /// If `value` is not a valid HTTP header value (e.g. contains a newline).
    pub fn set_cache_control(&self, value: Option<&str>) {
        let value = value.map(|v| {
            HeaderValue::from_str(v).unwrap_or_else(|_| panic!("set_cache_control: {v:?} is not a valid header value"))
        });
        self.shared().lock().cache_control = value;
    }

    /// Replaces the JWKS response body verbatim (still `200` with
    /// `Content-Type: application/json`), e.g. garbage or a set with no keys;
    /// `None` serves the real set. Defaults to `None`.
    pub fn set_jwks_body(&self, body: Option<String>) {
        self.shared().lock().jwks_body = body;
    }

    /// Overrides one member of the metadata documents: `Some(value)` sets it
    /// (e.g. a wrong `issuer`, an attacker `jwks_uri`), `None` removes it.
    /// Defaults to `{}` (no overrides: the built-in document).
    pub fn set_metadata_field(&self, name: impl Into<String>, value: Option<Value>) {
        self.shared().lock().metadata_fields.insert(name.into(), value);
    }

    /// Delay before the metadata and JWKS endpoints answer (to hold fetches
    /// in flight, e.g. to prove single-flight refresh). Defaults to
    /// `Duration::ZERO`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared().lock().delay = delay;
    }

    /// Requests received on `/jwks.json`, including those answered 503.
    pub fn jwks_fetches(&self) -> usize {
        self.shared().jwks_fetches.load(Ordering::SeqCst)
    }

    /// Requests received on both metadata endpoints together, including those
    /// answered 503.
    pub fn metadata_fetches(&self) -> usize {
        self.shared().metadata_fetches.load(Ordering::SeqCst)
    }

    /// Requests received on any other path (answered 404), e.g. an attacker
    /// `jku` pointed at this server.
    pub fn other_requests(&self) -> usize {
        self.shared().other_requests.load(Ordering::SeqCst)
    }
}

/// `503` with a short JSON body.
fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"temporarily_unavailable"}"#,
    )
        .into_response()
}

/// Waits for the configured delay; the lock is released before sleeping.
async fn apply_delay(shared: &Shared) {
    let delay = shared.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

async fn metadata_handler(State(shared): State<Arc<Shared>>) -> Response {
    shared.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    apply_delay(&shared).await;
    if !shared.available.load(Ordering::SeqCst) {
        return unavailable();
    }
    axum::Json(shared.metadata()).into_response()
}

async fn jwks_handler(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    apply_delay(&shared).await;
    if !shared.available.load(Ordering::SeqCst) {
        return unavailable();
    }
    let (body, cache_control) = {
        let state = shared.lock();
        let body = match &state.jwks_body {
            Some(body) => body.clone(),
            None => state.jwks().to_string(),
        };
        (body, state.cache_control.clone())
    };
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(value) = cache_control {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

async fn fallback_handler(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.other_requests.fetch_add(1, Ordering::SeqCst);
    StatusCode::NOT_FOUND
}
