//! Minting access tokens with chosen (or hostile) claims and headers.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::dpop::DpopKey;
use crate::issuer::TestIssuer;
use crate::keys::{KeyAlg, KeyMaterial, TestKey, compact_jws, json_bytes};

/// Lifetime of a token when [`TokenBuilder::expires_in`] is not called.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// How long ago [`TokenBuilder::expired`] puts `exp`.
const EXPIRED_AGO: Duration = Duration::from_secs(3600);

/// Seconds since the Unix epoch, now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Builds one signed JWT access token; start it with [`TestIssuer::token`].
///
/// Defaults: claims `iss` = the issuer, `sub` = `"alice"`, `iat` = now,
/// `exp` = now + 300 s, no `aud`, no `scope`; header `alg` = `RS256`,
/// `typ` = `"at+jwt"` and `kid` = the issuer's current kid for the algorithm;
/// signed with the issuer's current key for the algorithm.
///
/// Every method overrides what came before it: the last call wins.
/// Claims and header parameters set through [`TokenBuilder::claim`] and
/// [`TokenBuilder::header`] are written verbatim, so hostile values (`exp` as
/// a string, `alg: none`, `crit`, `jku`...) are one call away.
#[derive(Clone)]
#[must_use = "a TokenBuilder does nothing until `.sign()` is called"]
pub struct TokenBuilder<'a> {
    issuer: &'a TestIssuer,
    alg: KeyAlg,
    claims: Map<String, Value>,
    header_edits: Vec<(String, Option<Value>)>,
    foreign: Option<TestKey>,
}

impl fmt::Debug for TokenBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBuilder")
            .field("issuer", &self.issuer.issuer())
            .field("alg", &self.alg)
            .field("claims", &self.claims)
            .field("header_edits", &self.header_edits)
            .field("foreign_key", &self.foreign.is_some())
            .finish()
    }
}

impl<'a> TokenBuilder<'a> {
    pub(crate) fn new(issuer: &'a TestIssuer) -> Self {
        let now = now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(issuer.issuer()));
        claims.insert("sub".into(), json!("alice"));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + DEFAULT_LIFETIME.as_secs()));
        TokenBuilder {
            issuer,
            alg: KeyAlg::Rs256,
            claims,
            header_edits: Vec::new(),
            foreign: None,
        }
    }
}

impl TokenBuilder<'_> {
    /// Sets `sub`. Defaults to `"alice"`.
    pub fn subject(self, s: impl Into<String>) -> Self {
        self.claim("sub", Value::String(s.into()))
    }

    /// Sets `aud` to a single string. Defaults to `None` (no `aud` claim).
    pub fn audience(self, aud: impl Into<String>) -> Self {
        self.claim("aud", Value::String(aud.into()))
    }

    /// Sets `aud` to an array of strings. Defaults to `None` (no `aud` claim).
    pub fn audiences<I, S>(self, auds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let auds = auds.into_iter().map(|a| Value::String(a.into())).collect();
        self.claim("aud", Value::Array(auds))
    }

    /// Sets `scope` (space-separated, e.g. `"mcp:tools mcp:admin"`).
    /// Defaults to `None` (no `scope` claim).
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.claim("scope", Value::String(scope.into()))
    }

    /// Sets `client_id` (RFC 9068). Defaults to `None` (no `client_id` claim).
    pub fn client_id(self, id: impl Into<String>) -> Self {
        self.claim("client_id", Value::String(id.into()))
    }

    /// Binds the token to a DPoP key (RFC 9449 section 6.1): claim
    /// `cnf: {"jkt": <the key's thumbprint>}`. Defaults to `None` (no `cnf`
    /// claim: a bearer token).
    pub fn bound_to(self, key: &DpopKey) -> Self {
        self.claim("cnf", json!({"jkt": key.thumbprint()}))
    }

    /// Sets or replaces any claim with any JSON value (`exp` as a string,
    /// `iss` as a number, nested objects...).
    pub fn claim(mut self, name: impl Into<String>, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    /// Removes a claim, e.g. `"exp"`, `"iss"` or `"sub"`.
    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets `exp` to now + `d`. Defaults to `now + 300 s`.
    pub fn expires_in(self, d: Duration) -> Self {
        self.claim("exp", json!(now().saturating_add(d.as_secs())))
    }

    /// Makes the token expired: `exp` one hour ago and `iat` five minutes
    /// before that.
    pub fn expired(self) -> Self {
        let exp = now().saturating_sub(EXPIRED_AGO.as_secs());
        self.claim("exp", json!(exp))
            .claim("iat", json!(exp.saturating_sub(DEFAULT_LIFETIME.as_secs())))
    }

    /// Sets `nbf` to now + `d` (not yet valid). Defaults to `None` (no `nbf` claim).
    pub fn not_before_in(self, d: Duration) -> Self {
        self.claim("nbf", json!(now().saturating_add(d.as_secs())))
    }

    /// Chooses the signing algorithm: the header's `alg`, the default `kid`
    /// and the issuer key used. Defaults to `KeyAlg::Rs256`.
    pub fn algorithm(mut self, alg: KeyAlg) -> Self {
        self.alg = alg;
        self
    }

    /// Sets or replaces a header parameter verbatim (`jku`, `x5u`, `jwk`,
    /// `crit`, `typ`, `kid`, even `alg`). Overriding `alg` changes only what
    /// the header claims; the signature is still made with the builder's
    /// algorithm.
    pub fn header(mut self, name: impl Into<String>, value: Value) -> Self {
        self.header_edits.push((name.into(), Some(value)));
        self
    }

    /// Removes a header parameter, e.g. `"kid"` or `"typ"`.
    pub fn without_header(mut self, name: &str) -> Self {
        self.header_edits.push((name.to_owned(), None));
        self
    }

    /// Signs with a foreign key instead of the issuer's. The header keeps
    /// the issuer's current `kid` (an attacker reusing a real kid) unless
    /// overridden with [`TokenBuilder::header`].
    ///
    /// If the builder's algorithm does not fit the key (e.g. `Es256` with an
    /// RSA key), the key's own algorithm ([`TestKey::alg`]) is used instead,
    /// for the signature, the header `alg` and the default `kid`.
    pub fn signed_with(mut self, key: &TestKey) -> Self {
        self.foreign = Some(key.clone());
        self
    }

    /// The claims as they would be signed now.
    pub fn claims(&self) -> Value {
        Value::Object(self.claims.clone())
    }

    /// Signs and returns the compact JWS (`header.payload.signature`).
    pub fn sign(self) -> String {
        let (key, alg): (Arc<KeyMaterial>, KeyAlg) = match &self.foreign {
            Some(foreign) if foreign.alg().kind() != self.alg.kind() => (Arc::clone(foreign.material()), foreign.alg()),
            Some(foreign) => (Arc::clone(foreign.material()), self.alg),
            None => (self.issuer.current_key(self.alg), self.alg),
        };
        let mut header = Map::new();
        header.insert("alg".into(), json!(alg.name()));
        header.insert("typ".into(), json!("at+jwt"));
        header.insert("kid".into(), json!(self.issuer.kid(alg)));
        for (name, value) in self.header_edits {
            match value {
                Some(value) => header.insert(name, value),
                None => header.remove(&name),
            };
        }
        let header = json_bytes(&Value::Object(header));
        let claims = json_bytes(&Value::Object(self.claims));
        compact_jws(&header, &claims, |input| key.sign(alg, input))
    }
}
