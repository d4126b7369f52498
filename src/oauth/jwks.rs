//! The issuer key cache: prebuilt [`DecodingKey`]s per `kid`, fetched from
//! the issuer's JWKS.
//!
//! - **Reads never wait on I/O.** Keys live in an immutable snapshot behind an
//!   `RwLock<Arc<_>>` that is held only to clone the `Arc`.
//! - **Single flight.** Every fetch (initial, scheduled, unknown `kid`) goes
//!   through one `SingleFlight`: whoever arrives while a fetch runs waits for
//!   its result, and a fetch that finds a newer snapshot than its caller saw
//!   uses it instead of fetching again.
//! - **Unknown `kid` refetch is rate-limited** (default once per 30 s): a flood
//!   of forged `kid`s costs the identity provider at most one request per
//!   cooldown.
//! - **Periodic refresh** after `Cache-Control: max-age` clamped to bounds (or
//!   the default interval), done in the background while requests keep using
//!   the current keys.
//! - **Last good keys are kept** when a refresh fails; a failed fetch is not
//!   retried before a back-off (default 5 s).
//! - **Bad keys are skipped, not fatal**: an encryption key, an unknown `kty`
//!   or curve, a symmetric key, an RSA key under 2048 bits or a key that
//!   jsonwebtoken cannot load is left out and the rest of the set is used.
//! - The token's `jku`, `x5u`, `jwk` and `x5c` headers are never read: keys
//!   come only from the configured or discovered `jwks_uri`.
//! - **A circuit breaker per issuer** ([`crate::breaker`]) counts failed
//!   metadata and JWKS fetches (any failure: nothing there is an answer about
//!   a token); once open, a request that needs a fetch is answered 503 with
//!   the breaker's `Retry-After` at once. Tokens whose keys are cached never
//!   need a fetch and keep working.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::config::KeyRefresh;
use crate::breaker::{Breaker, BreakerConfig, Open, Upstream};
use crate::cache::{SingleFlight, lock};
use crate::error::AuthError;
use crate::telemetry::trace;

/// Where an issuer's keys come from.
pub(crate) enum KeySource {
    /// RFC 8414 / OIDC metadata URLs to try in order.
    Discover { candidates: Vec<String> },
    /// A configured `jwks_uri`.
    JwksUri(String),
    /// One HMAC secret (HS*), never fetched.
    SharedSecret {
        secret: Arc<zeroize::Zeroizing<Vec<u8>>>,
        alg: Algorithm,
    },
}

/// The largest metadata or JWKS document read (256 KiB).
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The kind of public key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

/// One verification key, ready to use.
pub(crate) struct VerifyKey {
    kid: Option<String>,
    alg: Option<Algorithm>,
    kind: KeyKind,
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`: the key type
    /// must fit the algorithm, and a key that names its own `alg` only
    /// verifies that one.
    fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        use Algorithm::*;
        matches!(
            (self.kind, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
                | (KeyKind::Hmac, HS256 | HS384 | HS512)
        )
    }
}

#[derive(Default)]
struct Snapshot {
    by_kid: HashMap<String, Vec<Arc<VerifyKey>>>,
    all: Vec<Arc<VerifyKey>>,
    /// 0 until the first successful fetch.
    generation: u64,
    refresh_at: Option<Instant>,
    /// A shared secret verifies tokens whatever `kid` they name.
    any_kid: bool,
}

impl Snapshot {
    fn new(keys: Vec<VerifyKey>, generation: u64, refresh_at: Option<Instant>, any_kid: bool) -> Self {
        let all: Vec<Arc<VerifyKey>> = keys.into_iter().map(Arc::new).collect();
        let mut by_kid: HashMap<String, Vec<Arc<VerifyKey>>> = HashMap::new();
        for key in &all {
            if let Some(kid) = &key.kid {
                by_kid.entry(kid.clone()).or_default().push(key.clone());
            }
        }
        Snapshot {
            by_kid,
            all,
            generation,
            refresh_at,
            any_kid,
        }
    }

    /// The key for `kid` and `alg`. A token without `kid` is matched only when
    /// exactly one key fits `alg`: never guess between keys.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        if let Some(kid) = kid {
            if let Some(key) = self
                .by_kid
                .get(kid)
                .and_then(|keys| keys.iter().find(|k| k.accepts(alg)))
            {
                return Some(key.clone());
            }
            if !self.any_kid {
                return None;
            }
        }
        let mut fitting = self.all.iter().filter(|k| k.accepts(alg));
        match (fitting.next(), fitting.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }
}

/// One issuer's keys; cheap to clone.
#[derive(Clone)]
pub(crate) struct KeyCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    issuer: String,
    source: KeySource,
    client: reqwest::Client,
    settings: KeyRefresh,
    /// Failed fetches open it; see the module docs.
    breaker: Breaker,
    snapshot: RwLock<Arc<Snapshot>>,
    /// One fetch at a time; the others wait for its result.
    flight: SingleFlight<(), Result<(), AuthError>>,
    /// The discovered `jwks_uri`, once known.
    jwks_uri: Mutex<Option<String>>,
    background: AtomicBool,
    /// Milliseconds since `epoch` (+1, 0 = never) of the last unknown-`kid`
    /// fetch and of the last failed fetch.
    last_unknown_kid_fetch: AtomicU64,
    last_failure: AtomicU64,
    epoch: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Initial,
    Scheduled,
    UnknownKid,
}

impl KeyCache {
    pub(crate) fn new(
        issuer: String,
        source: KeySource,
        client: reqwest::Client,
        settings: KeyRefresh,
        breaker: BreakerConfig,
    ) -> Self {
        let snapshot = match &source {
            KeySource::SharedSecret { secret, alg } => Snapshot::new(
                vec![VerifyKey {
                    kid: None,
                    alg: Some(*alg),
                    kind: KeyKind::Hmac,
                    key: DecodingKey::from_secret(secret),
                }],
                1,
                None,
                true,
            ),
            _ => Snapshot::default(),
        };
        KeyCache {
            inner: Arc::new(CacheInner {
                breaker: Breaker::new(Upstream::Keys, issuer.clone(), breaker),
                issuer,
                source,
                client,
                settings,
                snapshot: RwLock::new(Arc::new(snapshot)),
                flight: SingleFlight::new(),
                jwks_uri: Mutex::new(None),
                background: AtomicBool::new(false),
                last_unknown_kid_fetch: AtomicU64::new(0),
                last_failure: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// Whether this issuer signs with a shared secret (HS*).
    pub(crate) fn is_shared_secret(&self) -> bool {
        matches!(self.inner.source, KeySource::SharedSecret { .. })
    }

    /// The shared secret's algorithm, if this issuer has one.
    pub(crate) fn shared_secret_alg(&self) -> Option<Algorithm> {
        match &self.inner.source {
            KeySource::SharedSecret { alg, .. } => Some(*alg),
            _ => None,
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        // A writer only swaps an Arc; a poisoned lock still holds a whole snapshot.
        crate::cache::read(&self.inner.snapshot).clone()
    }

    fn store(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        *crate::cache::write(&self.inner.snapshot) = snapshot;
    }

    fn millis_since_epoch(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64 + 1
    }

    fn within(&self, stamp: &AtomicU64, window: Duration) -> bool {
        let at = stamp.load(Ordering::Acquire);
        at != 0 && self.millis_since_epoch().saturating_sub(at) < window.as_millis() as u64
    }

    /// Make sure keys have been fetched once.
    pub(crate) async fn ensure_loaded(&self) -> Result<(), AuthError> {
        let snapshot = self.snapshot();
        if snapshot.generation == 0 {
            self.refresh(Trigger::Initial, 0).await?;
        }
        Ok(())
    }

    /// The key that verifies a token with this `kid` and `alg`.
    pub(crate) async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyKey>, AuthError> {
        let mut snapshot = self.snapshot();
        let loaded = snapshot.generation != 0;
        if !loaded {
            record_lookup(false);
            self.refresh(Trigger::Initial, 0).await?;
            snapshot = self.snapshot();
        } else if snapshot.refresh_at.is_some_and(|at| Instant::now() >= at) {
            self.refresh_in_background(snapshot.generation);
        }
        let found = snapshot.find(kid, alg);
        if loaded {
            record_lookup(found.is_some());
        }
        if let Some(key) = found {
            return Ok(key);
        }
        if self.is_shared_secret() {
            return Err(crate::error::TokenRejection::UnknownKey.into());
        }
        if self.within(
            &self.inner.last_unknown_kid_fetch,
            self.inner.settings.unknown_kid_cooldown,
        ) {
            return Err(self.unknown_kid_error());
        }
        self.refresh(Trigger::UnknownKid, snapshot.generation).await?;
        self.snapshot()
            .find(kid, alg)
            .ok_or_else(|| crate::error::TokenRejection::UnknownKey.into())
    }

    /// Why a `kid` missing from the cache is refused while no refetch is
    /// allowed: unknown (401) if the last fetch worked, but unavailable (503)
    /// if it failed, since the key may be one the issuer rotated in and we
    /// could not fetch.
    fn unknown_kid_error(&self) -> AuthError {
        if self.inner.last_failure.load(Ordering::Acquire) != 0 {
            AuthError::KeysUnavailable
        } else {
            crate::error::TokenRejection::UnknownKey.into()
        }
    }

    fn refresh_in_background(&self, seen: u64) {
        if self.within(&self.inner.last_failure, self.inner.settings.retry_after_failure) {
            return;
        }
        if self.inner.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.background.store(false, Ordering::Release);
            return;
        };
        let cache = self.clone();
        runtime.spawn(async move {
            // A failure is logged inside; the current keys stay in use.
            let _ = cache.refresh(Trigger::Scheduled, seen).await;
            cache.inner.background.store(false, Ordering::Release);
        });
    }

    /// Fetch the key set once, or wait for the fetch in flight.
    async fn refresh(&self, trigger: Trigger, seen: u64) -> Result<(), AuthError> {
        self.inner.breaker.check().map_err(circuit_open)?;
        if self.within(&self.inner.last_failure, self.inner.settings.retry_after_failure) {
            return Err(AuthError::KeysUnavailable);
        }
        self.inner.flight.run((), || self.fetch_once(trigger, seen)).await.0
    }

    /// The one fetch in flight, unless someone else fetched since `seen`.
    async fn fetch_once(&self, trigger: Trigger, seen: u64) -> Result<(), AuthError> {
        if self.snapshot().generation != seen {
            return Ok(());
        }
        if self.within(&self.inner.last_failure, self.inner.settings.retry_after_failure) {
            return Err(AuthError::KeysUnavailable);
        }
        if trigger == Trigger::UnknownKid {
            if self.within(
                &self.inner.last_unknown_kid_fetch,
                self.inner.settings.unknown_kid_cooldown,
            ) {
                return Err(self.unknown_kid_error());
            }
            self.inner
                .last_unknown_kid_fetch
                .store(self.millis_since_epoch(), Ordering::Release);
        }
        let attempt = self.inner.breaker.admit().map_err(circuit_open)?;
        // Never held across the fetch: copied out, written back.
        let mut jwks_uri = lock(&self.inner.jwks_uri).clone();
        let fetched = self.fetch(&mut jwks_uri).await;
        *lock(&self.inner.jwks_uri) = jwks_uri;
        attempt.settle(fetched.is_ok());
        match fetched {
            Ok((keys, max_age)) => {
                let s = &self.inner.settings;
                let ttl = max_age.map_or(s.interval, |age| age.clamp(s.min, s.max));
                tracing::debug!(issuer = %self.inner.issuer, keys = keys.len(), ?ttl, "signing keys fetched");
                self.store(Snapshot::new(keys, seen + 1, Some(Instant::now() + ttl), false));
                self.inner.last_failure.store(0, Ordering::Release);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(issuer = %self.inner.issuer, %error, "fetching signing keys failed; keeping the last good keys");
                self.inner
                    .last_failure
                    .store(self.millis_since_epoch(), Ordering::Release);
                // Discover again next time: the metadata may have moved.
                if matches!(self.inner.source, KeySource::Discover { .. }) {
                    *lock(&self.inner.jwks_uri) = None;
                }
                Err(AuthError::KeysUnavailable)
            }
        }
    }

    async fn fetch(&self, jwks_uri: &mut Option<String>) -> Result<(Vec<VerifyKey>, Option<Duration>), FetchError> {
        let uri = match (&self.inner.source, jwks_uri.as_ref()) {
            (KeySource::JwksUri(uri), _) => uri.clone(),
            (KeySource::Discover { .. }, Some(uri)) => uri.clone(),
            (KeySource::Discover { candidates }, None) => {
                let call = trace::Call::start(trace::Fetch::Discovery, &self.inner.issuer);
                let discovered = call.run(self.discover(candidates)).await;
                call.finish(discovered.is_ok());
                let uri = discovered?;
                *jwks_uri = Some(uri.clone());
                uri
            }
            (KeySource::SharedSecret { .. }, _) => return Err(FetchError("a shared secret is never fetched".into())),
        };
        let call = trace::Call::start(trace::Fetch::Jwks, &uri);
        let fetched = call
            .run(async {
                let (body, cache_control) = get_limited(&self.inner.client, &uri, MAX_DOCUMENT_BYTES).await?;
                let keys = parse_jwks(&body, &self.inner.issuer)?;
                Ok((keys, cache_control.as_deref().and_then(max_age)))
            })
            .await;
        call.finish(fetched.is_ok());
        fetched
    }

    async fn discover(&self, candidates: &[String]) -> Result<String, FetchError> {
        #[derive(Deserialize)]
        struct Metadata {
            issuer: String,
            jwks_uri: Option<String>,
        }
        let mut last = FetchError("no discovery URL".into());
        for url in candidates {
            let body = match get_limited(&self.inner.client, url, MAX_DOCUMENT_BYTES).await {
                Ok((body, _)) => body,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let metadata: Metadata = match serde_json::from_slice(&body) {
                Ok(m) => m,
                Err(_) => {
                    last = FetchError(format!("{url}: not an authorization server metadata document"));
                    continue;
                }
            };
            // RFC 8414 section 3.3: the issuer in the document must be the one asked for.
            if metadata.issuer != self.inner.issuer {
                last = FetchError(format!("{url}: metadata names issuer {:?}", metadata.issuer));
                continue;
            }
            let Some(jwks_uri) = metadata.jwks_uri else {
                last = FetchError(format!("{url}: metadata has no jwks_uri"));
                continue;
            };
            // An unusable jwks_uri in one document: try the next one.
            if let Err(e) = super::url::parse_url("jwks_uri", &jwks_uri) {
                last = FetchError(format!("{url}: {e}"));
                continue;
            }
            return Ok(jwks_uri);
        }
        Err(last)
    }
}

/// The answer while the issuer's breaker is open.
fn circuit_open(open: Open) -> AuthError {
    AuthError::CircuitOpen {
        upstream: "token keys",
        retry_after_secs: open.retry_after_secs(),
    }
}

/// Why a fetch failed; logged, never sent to a client.
#[derive(Debug)]
struct FetchError(String);

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Count a key lookup in the `key` cache metric (feature `telemetry`):
/// found in the keys held, or not (fetched, or refused as unknown).
fn record_lookup(hit: bool) {
    #[cfg(feature = "telemetry")]
    crate::telemetry::record_cache("key", if hit { "hit" } else { "miss" });
    #[cfg(not(feature = "telemetry"))]
    let _ = hit;
}

/// GET `url` with the current span's trace context, refusing non-2xx
/// answers and bodies over `limit` bytes.
async fn get_limited(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<(Vec<u8>, Option<String>), FetchError> {
    let mut response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .headers(trace::headers())
        .send()
        .await
        .map_err(|e| FetchError(format!("{url}: {}", without_url(&e))))?;
    if !response.status().is_success() {
        return Err(FetchError(format!("{url}: HTTP {}", response.status())));
    }
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err(FetchError(format!("{url}: document larger than {limit} bytes")));
    }
    let cache_control = response
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError(format!("{url}: {}", without_url(&e))))?
    {
        if body.len() + chunk.len() > limit {
            return Err(FetchError(format!("{url}: document larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, cache_control))
}

fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
    }
    text
}

/// `max-age` from a `Cache-Control` value; `no-store`/`no-cache` count as 0
/// (then clamped to the minimum refresh interval).
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some((name, value)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            age = value
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// Parse a JWK set, keeping every usable signing key and skipping the rest.
fn parse_jwks(body: &[u8], issuer: &str) -> Result<Vec<VerifyKey>, FetchError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(|_| FetchError("not a JWK set".into()))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for raw in set.keys {
        match to_key(raw) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::debug!(issuer, why, "skipped a key of the JWK set"),
        }
    }
    Ok(keys)
}

fn to_key(raw: serde_json::Value) -> Result<VerifyKey, &'static str> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|_| "not a JWK this library understands")?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signing key (use)"),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("not a verification key (key_ops)");
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(Algorithm::from_str(&a.to_string()).map_err(|_| "not a signature algorithm")?),
    };
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_err(|_| "RSA modulus is not base64url")?;
            let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
            let significant = &n[first..];
            // `significant` is empty or starts with a non-zero byte.
            let bits = significant
                .first()
                .map_or(0, |b| significant.len() * 8 - b.leading_zeros() as usize);
            if bits < 2048 {
                return Err("RSA key shorter than 2048 bits");
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err("unsupported elliptic curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return Err("unsupported OKP curve"),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never taken from a JWK set"),
        _ => return Err("unsupported key type"),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key parameters do not load")?;
    let key = VerifyKey {
        kid: jwk.common.key_id,
        alg,
        kind,
        key,
    };
    if key.alg.is_some_and(|a| !key.accepts(a)) {
        return Err("the key's alg does not fit its type");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const N_2048: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": N_2048, "e": "AQAB"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": N_2048, "e": "AQAB"},
            {"kty": "foo", "kid": "weird"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "RS256", "x": "x", "y": "y"},
            {"kty": "RSA", "kid": "good", "use": "sig", "alg": "RS256", "n": N_2048, "e": "AQAB"},
            {"kty": "RSA", "use": "sig", "n": N_2048, "e": "AQAB"},
        ]});
        let keys = parse_jwks(set.to_string().as_bytes(), "https://idp").unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone()).collect();
        assert_eq!(kids, vec![Some("good".to_owned()), None]);
    }

    #[test]
    fn empty_or_zero_rsa_modulus_is_skipped_not_a_panic() {
        // `n` empty or all zero bytes has no significant bits: it must count
        // as 0 bits (refused as short), not underflow.
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "empty", "n": "", "e": "AQAB"},
            {"kty": "RSA", "kid": "zero", "n": "AAAA", "e": "AQAB"},
            {"kty": "RSA", "kid": "good", "n": N_2048, "e": "AQAB"},
        ]});
        let keys = parse_jwks(set.to_string().as_bytes(), "https://idp").unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone()).collect();
        assert_eq!(kids, vec![Some("good".to_owned())]);
    }

    #[test]
    fn key_alg_binds_the_token_alg() {
        let keys = parse_jwks(
            json!({"keys": [{"kty": "RSA", "kid": "k", "alg": "RS256", "n": N_2048, "e": "AQAB"}]})
                .to_string()
                .as_bytes(),
            "i",
        )
        .unwrap();
        let snap = Snapshot::new(keys, 1, None, false);
        assert!(snap.find(Some("k"), Algorithm::RS256).is_some());
        assert!(snap.find(Some("k"), Algorithm::PS256).is_none());
        assert!(snap.find(Some("k"), Algorithm::ES256).is_none());
        assert!(snap.find(Some("other"), Algorithm::RS256).is_none());
        // Without a kid, the only fitting key is used.
        assert!(snap.find(None, Algorithm::RS256).is_some());
    }

    #[test]
    fn kidless_token_is_not_matched_between_two_keys() {
        let key = json!({"kty": "RSA", "n": N_2048, "e": "AQAB"});
        let keys = parse_jwks(json!({"keys": [key.clone(), key]}).to_string().as_bytes(), "i").unwrap();
        let snap = Snapshot::new(keys, 1, None, false);
        assert!(snap.find(None, Algorithm::RS256).is_none());
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
