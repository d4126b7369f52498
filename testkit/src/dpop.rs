//! DPoP (RFC 9449): a client's proof-of-possession key ([`DpopKey`]), the
//! proofs it signs ([`ProofBuilder`], honest or hostile) and JWK thumbprints
//! (RFC 7638, [`jwk_thumbprint`]).
//!
//! An access token is bound to a key by its `cnf.jkt` claim (the key's
//! thumbprint): [`TokenBuilder::bound_to`](crate::TokenBuilder::bound_to),
//! [`Persona::bound_to`](crate::Persona::bound_to). The client sends it as
//! `Authorization: DPoP <token>` with a fresh proof in the `DPoP` header for
//! each request; [`McpClient`](crate::McpClient) does that once given
//! [`Connect::dpop`](crate::client::Connect::dpop).
//!
//! ```
//! use rmcp_guard_testkit::dpop::{DpopKey, jwk_thumbprint};
//! use rmcp_guard_testkit::TestIssuer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let issuer = TestIssuer::start().await?;
//! let key = DpopKey::es256();
//! let token = issuer.token().audience("http://127.0.0.1:8080/mcp").bound_to(&key).sign();
//!
//! let proof = key
//!     .proof("POST", "http://127.0.0.1:8080/mcp")
//!     .access_token(&token)
//!     .sign();
//! assert_eq!(proof.split('.').count(), 3);
//!
//! // Hostile variants are one call away.
//! let stale = key.proof("POST", "http://127.0.0.1:8080/mcp").issued_at_offset(-3600).sign();
//! let leaking = key
//!     .proof("POST", "http://127.0.0.1:8080/mcp")
//!     .header("jwk", key.private_jwk())
//!     .sign();
//! # let _ = (stale, leaking);
//! assert_eq!(jwk_thumbprint(&key.public_jwk()), Some(key.thumbprint()));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsBigEndian as _, AsDer as _, Pkcs8V1Der};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::keys::{KeyAlg, KeyMaterial, TestKey, b64, compact_jws, json_bytes};

/// The public modulus of a 1024-bit RSA key (public exponent 65537), made
/// once with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024`.
/// Its private key was not kept.
const RSA_1024_N: &str = "yniH62WfNgc1N_j47rXyycAfdlysD6v1Gl2n5Kfw-WcC6aQOIXudj3JNX5ctIzyOdhDcAFnTkeLyncXqnMWBP70UNDjHGdpKbHkNATtrDBNMM-gu1z2TEFpYw9mo04CDcnAuKMLHlJTm0uRAr76N6JDqroDx8exlOekB0OBVejk";

/// The JWK members a thumbprint covers (RFC 7638 section 3.2), in
/// lexicographic order, for a key type; `None` for an unknown `kty`.
fn required_members(kty: &str) -> Option<&'static [&'static str]> {
    match kty {
        "EC" => Some(&["crv", "kty", "x", "y"]),
        "RSA" => Some(&["e", "kty", "n"]),
        "OKP" => Some(&["crv", "kty", "x"]),
        _ => None,
    }
}

/// The RFC 7638 SHA-256 thumbprint of `jwk`, base64url without padding:
/// SHA-256 over the JSON object of the key type's required members (EC:
/// `crv`, `kty`, `x`, `y`; RSA: `e`, `kty`, `n`; OKP: `crv`, `kty`, `x`) in
/// lexicographic order, without whitespace. Other members are ignored.
///
/// `None` when `kty` is not `EC`, `RSA` or `OKP`, or a required member is
/// missing or not a string.
///
/// ```
/// use rmcp_guard_testkit::dpop::jwk_thumbprint;
/// use serde_json::json;
///
/// let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
/// assert!(jwk_thumbprint(&jwk).is_some());
/// assert_eq!(jwk_thumbprint(&json!({"kty": "oct", "k": "c2VjcmV0"})), None);
/// ```
pub fn jwk_thumbprint(jwk: &Value) -> Option<String> {
    let members = required_members(jwk.get("kty")?.as_str()?)?;
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        let value = jwk.get(*name)?.as_str()?;
        // `Value::to_string` of a string is its JSON form, escapes included.
        canonical.push_str(&format!("\"{name}\":{}", Value::from(value)));
    }
    canonical.push('}');
    Some(b64(&Sha256::digest(canonical.as_bytes())))
}

/// The public JWK of a 1024-bit RSA key (`kty`, `n`, `e`), too weak for any
/// DPoP verifier to accept. No private key exists for it here: put it in a
/// proof's `jwk` header ([`ProofBuilder::header`]) while the proof is signed
/// with another key, to test that a server refuses weak keys (aws-lc cannot
/// sign with an RSA key under 2048 bits).
pub fn rsa_1024_public_jwk() -> Value {
    json!({"kty": "RSA", "n": RSA_1024_N, "e": "AQAB"})
}

/// Seconds since the Unix epoch, now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 16 random bytes, base64url: a proof's `jti`.
fn random_jti() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // The system random source failed: still unique, from a counter and
        // the clock (a proof's `jti` needs uniqueness, not secrecy).
        let seed = format!("{}-{:?}", FALLBACK.fetch_add(1, Ordering::Relaxed), SystemTime::now());
        bytes.copy_from_slice(&Sha256::digest(seed.as_bytes())[..16]);
    }
    b64(&bytes)
}

/// `ath`: base64url(SHA-256(access token)), no padding.
pub(crate) fn access_token_hash(token: &str) -> String {
    b64(&Sha256::digest(token.as_bytes()))
}

/// A DPoP client's key pair; see the [module docs](self).
///
/// Cheap to clone (one reference count). `Debug` shows the algorithm and
/// the thumbprint, never private material.
#[derive(Clone)]
pub struct DpopKey {
    key: TestKey,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.key.alg())
            .field("jkt", &self.thumbprint())
            .finish()
    }
}

impl DpopKey {
    /// Generates a fresh key pair for `alg` (RSA keys are 2048 bits).
    ///
    /// # Panics
    ///
    /// If aws-lc cannot generate a key (its random source failed), which a
    /// test cannot recover from anyway.
    pub fn generate(alg: KeyAlg) -> DpopKey {
        DpopKey {
            key: TestKey::generate(alg),
        }
    }

    /// Generates a fresh ES256 (P-256) key pair, the usual DPoP choice.
    ///
    /// # Panics
    ///
    /// As [`DpopKey::generate`].
    pub fn es256() -> DpopKey {
        DpopKey::generate(KeyAlg::Es256)
    }

    /// The algorithm this key signs proofs with (the proof header's `alg`).
    pub fn alg(&self) -> KeyAlg {
        self.key.alg()
    }

    /// The public JWK with only the members that define the key (EC: `kty`,
    /// `crv`, `x`, `y`; RSA: `kty`, `n`, `e`; OKP: `kty`, `crv`, `x`), as a
    /// proof's `jwk` header carries it.
    pub fn public_jwk(&self) -> Value {
        let full = self.key.public_jwk();
        let kty = full.get("kty").and_then(Value::as_str).unwrap_or_default();
        let members = required_members(kty).unwrap_or_default();
        let jwk: Map<String, Value> = members
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), full.get(*name)?.clone())))
            .collect();
        Value::Object(jwk)
    }

    /// The public JWK plus the private members (EC: `d`; OKP: `d`, the seed;
    /// RSA: `d`, `p`, `q`, `dp`, `dq`, `qi`), to craft a proof whose `jwk`
    /// header leaks the private key, which a verifier must refuse.
    pub fn private_jwk(&self) -> Value {
        let mut jwk = self.public_jwk();
        let private: Vec<(&str, Vec<u8>)> = match &**self.key.material() {
            KeyMaterial::Ec(k) => k
                .private_key()
                .as_be_bytes()
                .map(|d| vec![("d", d.as_ref().to_vec())])
                .unwrap_or_default(),
            KeyMaterial::Ed(k) => k
                .seed()
                .and_then(|seed| seed.as_be_bytes())
                .map(|d| vec![("d", d.as_ref().to_vec())])
                .unwrap_or_default(),
            KeyMaterial::Rsa(k) => {
                let der: Result<Pkcs8V1Der<'static>, _> = k.as_der();
                der.ok()
                    .and_then(|der| rsa_private_members(der.as_ref()))
                    .unwrap_or_default()
            }
        };
        if let Value::Object(map) = &mut jwk {
            for (name, bytes) in private {
                map.insert(name.to_owned(), json!(b64(&bytes)));
            }
        }
        jwk
    }

    /// The RFC 7638 thumbprint of [`DpopKey::public_jwk`]: the `jkt` an
    /// access token bound to this key carries in `cnf`.
    pub fn thumbprint(&self) -> String {
        // Invariant: `public_jwk` always has the required members of its kty.
        jwk_thumbprint(&self.public_jwk()).unwrap_or_default()
    }

    /// Starts a proof for a request with HTTP `method` (`htm`) to `url`
    /// (`htu`, used verbatim: leave out the query and fragment).
    pub fn proof(&self, method: &str, url: &str) -> ProofBuilder {
        let mut claims = Map::new();
        claims.insert("jti".into(), json!(random_jti()));
        claims.insert("htm".into(), json!(method));
        claims.insert("htu".into(), json!(url));
        claims.insert("iat".into(), json!(now()));
        ProofBuilder {
            key: self.clone(),
            signer: None,
            claims,
            header_edits: Vec::new(),
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        self.key.material().sign(self.key.alg(), input)
    }
}

/// The private members of an RSA key, from its PKCS#8 v1 DER: `d`, `p`, `q`,
/// `dp`, `dq`, `qi`, each without leading zero octets.
fn rsa_private_members(pkcs8: &[u8]) -> Option<Vec<(&'static str, Vec<u8>)>> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;
    // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING }
    let (SEQUENCE, info, _) = der(pkcs8)? else { return None };
    let (INTEGER, _, rest) = der(info)? else { return None };
    let (SEQUENCE, _, rest) = der(rest)? else { return None };
    let (OCTET_STRING, key, _) = der(rest)? else {
        return None;
    };
    // RSAPrivateKey ::= SEQUENCE { version, n, e, d, p, q, dp, dq, qi }
    let (SEQUENCE, mut fields, _) = der(key)? else {
        return None;
    };
    let mut integers = Vec::new();
    while !fields.is_empty() && integers.len() < 9 {
        let (INTEGER, value, rest) = der(fields)? else {
            return None;
        };
        let first = value.iter().position(|&b| b != 0).unwrap_or(value.len());
        integers.push(value[first..].to_vec());
        fields = rest;
    }
    let names = ["d", "p", "q", "dp", "dq", "qi"];
    (integers.len() == 9).then(|| names.into_iter().zip(integers.into_iter().skip(3)).collect())
}

/// One DER element: `(tag, contents, rest)`; `None` if malformed.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len, rest) = rest.split_at(n);
        (len.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Builds one DPoP proof JWT; start it with [`DpopKey::proof`].
///
/// Defaults: header `typ` = `"dpop+jwt"`, `alg` = the signing key's
/// algorithm, `jwk` = [`DpopKey::public_jwk`]; claims `jti` = 16 random
/// bytes (base64url), `htm` and `htu` as given, `iat` = now; no `ath`, no
/// `nonce`; signed with the key itself.
///
/// Every method overrides what came before it: the last call wins. Claims
/// and header parameters set through [`ProofBuilder::claim`] and
/// [`ProofBuilder::header`] are written verbatim.
#[derive(Clone, Debug)]
#[must_use = "a ProofBuilder does nothing until `.sign()` is called"]
pub struct ProofBuilder {
    key: DpopKey,
    signer: Option<DpopKey>,
    claims: Map<String, Value>,
    header_edits: Vec<(String, Option<Value>)>,
}

impl ProofBuilder {
    /// Sets `ath`, the hash of the access token the proof accompanies
    /// (base64url SHA-256, no padding). Defaults to no `ath` claim (as at a
    /// token endpoint).
    pub fn access_token(self, token: &str) -> Self {
        self.claim("ath", json!(access_token_hash(token)))
    }

    /// Sets `nonce`, a value the server handed out in `DPoP-Nonce`. Defaults
    /// to no `nonce` claim.
    pub fn nonce(self, nonce: impl Into<String>) -> Self {
        self.claim("nonce", Value::String(nonce.into()))
    }

    /// Sets `iat` to `secs` since the Unix epoch. Defaults to now.
    pub fn iat(self, secs: u64) -> Self {
        self.claim("iat", json!(secs))
    }

    /// Sets `iat` to now plus `secs` (negative: in the past), for stale or
    /// future proofs. Defaults to an offset of 0.
    pub fn issued_at_offset(self, secs: i64) -> Self {
        self.iat(now().saturating_add_signed(secs))
    }

    /// Sets `jti`, e.g. to replay one. Defaults to 16 random bytes.
    pub fn jti(self, jti: impl Into<String>) -> Self {
        self.claim("jti", Value::String(jti.into()))
    }

    /// Sets or replaces any claim with any JSON value.
    pub fn claim(mut self, name: impl Into<String>, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    /// Removes a claim, e.g. `"jti"`, `"htm"` or `"iat"`.
    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets or replaces a header parameter verbatim (`typ`, `jwk` with
    /// private members or another key, even `alg`: the signature is still
    /// made with the signing key's algorithm).
    pub fn header(mut self, name: impl Into<String>, value: Value) -> Self {
        self.header_edits.push((name.into(), Some(value)));
        self
    }

    /// Removes a header parameter, e.g. `"jwk"` or `"typ"`.
    pub fn without_header(mut self, name: &str) -> Self {
        self.header_edits.push((name.to_owned(), None));
        self
    }

    /// Signs with `key` while the `jwk` header still names the builder's key
    /// (a proof that does not match its key); the header's `alg` becomes
    /// `key`'s. Defaults to signing with the builder's key.
    pub fn signed_with(mut self, key: &DpopKey) -> Self {
        self.signer = Some(key.clone());
        self
    }

    /// The claims as they would be signed now.
    pub fn claims(&self) -> Value {
        Value::Object(self.claims.clone())
    }

    fn header_with_alg(&self, alg: &str) -> Vec<u8> {
        let mut header = Map::new();
        header.insert("typ".into(), json!("dpop+jwt"));
        header.insert("alg".into(), json!(alg));
        header.insert("jwk".into(), self.key.public_jwk());
        for (name, value) in &self.header_edits {
            match value {
                Some(value) => header.insert(name.clone(), value.clone()),
                None => header.remove(name),
            };
        }
        json_bytes(&Value::Object(header))
    }

    /// Signs and returns the compact JWS (`header.payload.signature`).
    pub fn sign(self) -> String {
        let signer = self.signer.as_ref().unwrap_or(&self.key);
        let header = self.header_with_alg(signer.alg().name());
        let claims = json_bytes(&Value::Object(self.claims.clone()));
        compact_jws(&header, &claims, |input| signer.sign(input))
    }

    /// Signs with HMAC-SHA256 under `secret`, header `alg: HS256`: a
    /// symmetric proof, which a verifier must refuse.
    pub fn sign_hs256(self, secret: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let header = self.header_with_alg("HS256");
        let claims = json_bytes(&Value::Object(self.claims));
        compact_jws(&header, &claims, |input| hmac::sign(&key, input).as_ref().to_vec())
    }

    /// `b64(header).b64(claims).` with `alg: none` and an empty signature.
    pub fn unsigned(self) -> String {
        let header = self.header_with_alg("none");
        format!("{}.{}.", b64(&header), b64(&json_bytes(&Value::Object(self.claims))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7638_section_3_1_example() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn thumbprints_need_every_required_member() {
        assert_eq!(jwk_thumbprint(&json!({"kty": "EC", "crv": "P-256", "x": "a"})), None);
        assert_eq!(jwk_thumbprint(&json!({"kty": "RSA", "n": "a", "e": 3})), None);
        assert_eq!(jwk_thumbprint(&json!({"n": "a", "e": "AQAB"})), None);
        assert!(jwk_thumbprint(&rsa_1024_public_jwk()).is_some());
    }

    #[test]
    fn der_reader_refuses_truncated_input() {
        assert_eq!(der(&[0x30, 0x03, 0x02, 0x01]), None);
        assert_eq!(der(&[0x30, 0x80]), None);
        assert_eq!(der(&[0x02, 0x01, 0x05, 0xff]), Some((0x02, &[0x05][..], &[0xff][..])));
        assert_eq!(rsa_private_members(&[0x30, 0x00]), None);
    }
}
