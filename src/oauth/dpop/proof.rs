//! Checking one DPoP proof JWT (RFC 9449 section 4.3), without the replay
//! set (the caller records the proof once everything else passed).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{AuthError, DpopRejection};

/// What a proof established: the key that signed it (its RFC 7638
/// thumbprint) and its identity for the replay set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedProof {
    /// base64url SHA-256 thumbprint of the proof's `jwk`.
    pub(crate) jkt: String,
    /// The first 16 bytes of SHA-256(`jkt` `.` `jti`).
    pub(crate) id: [u8; 16],
    /// The proof's `iat`, Unix seconds.
    pub(crate) iat: u64,
}

/// What a proof is checked against.
pub(crate) struct Expected<'a> {
    /// The request method (`htm`).
    pub(crate) method: &'a str,
    /// The canonical resource URI, normalized as [`normalize_htu`] does.
    pub(crate) htu: &'a str,
    /// SHA-256 of the access token (`ath`).
    pub(crate) token_hash: &'a [u8; 32],
    /// The algorithms accepted.
    pub(crate) algorithms: &'a [Algorithm],
    /// Oldest `iat` accepted, Unix seconds.
    pub(crate) not_before: u64,
    /// Newest `iat` accepted, Unix seconds.
    pub(crate) not_after: u64,
    /// The nonces required, if any.
    pub(crate) nonces: Option<&'a super::DpopNonces>,
}

/// Members of a JWK that only a private key has (RFC 7518 section 6), and
/// `k` (a symmetric key).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The RSA modulus sizes accepted, in bits.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 4096;

fn reject(r: DpopRejection) -> AuthError {
    AuthError::InvalidDpopProof(r)
}

/// `url` as `htu` is compared: parsed (scheme and host lowercased, the
/// default port dropped, dot segments removed); `None` if it is not an
/// absolute http(s) URL or has a query or fragment (RFC 9449 section 4.2:
/// `htu` has neither).
pub(crate) fn normalize_htu(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return None;
    }
    Some(parsed.into())
}

fn decode_json(segment: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| reject(DpopRejection::Malformed))?;
    serde_json::from_slice(&bytes).map_err(|_| reject(DpopRejection::Malformed))
}

/// Check `proof` against `expected`: every rule of RFC 9449 section 4.3
/// except the replay set.
pub(crate) fn verify(proof: &str, expected: &Expected<'_>) -> Result<VerifiedProof, AuthError> {
    let mut segments = proof.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(reject(DpopRejection::Malformed));
    };
    if header.is_empty() || claims.is_empty() {
        return Err(reject(DpopRejection::Malformed));
    }
    let header_json = decode_json(header)?;
    if header_json.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(reject(DpopRejection::WrongType));
    }
    let alg = header_json
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok())
        .filter(|a| expected.algorithms.contains(a))
        .ok_or(reject(DpopRejection::AlgorithmNotAllowed))?;
    if signature.is_empty() {
        return Err(reject(DpopRejection::BadSignature));
    }
    if header_json.contains_key("crit") || header_json.contains_key("b64") {
        return Err(reject(DpopRejection::CriticalHeader));
    }
    let Some(Value::Object(jwk)) = header_json.get("jwk") else {
        return Err(reject(DpopRejection::InvalidKey));
    };
    let (key, jkt) = public_key(jwk, alg)?;
    let message_len = header.len() + 1 + claims.len();
    let message = &proof.as_bytes()[..message_len];
    match jsonwebtoken::crypto::verify(signature, message, &key, alg) {
        Ok(true) => {}
        _ => return Err(reject(DpopRejection::BadSignature)),
    }

    let claims = decode_json(claims)?;
    let string = |name: &str| match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        _ => Err(reject(DpopRejection::MissingClaim)),
    };
    let jti = string("jti")?;
    if jti.len() > 256 {
        return Err(reject(DpopRejection::Malformed));
    }
    if string("htm")? != expected.method {
        return Err(reject(DpopRejection::WrongMethod));
    }
    if normalize_htu(string("htu")?).as_deref() != Some(expected.htu) {
        return Err(reject(DpopRejection::WrongUri));
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    }
    .ok_or(reject(DpopRejection::MissingClaim))?;
    if iat < expected.not_before {
        return Err(reject(DpopRejection::Stale));
    }
    if iat > expected.not_after {
        return Err(reject(DpopRejection::IssuedInFuture));
    }
    let ath = URL_SAFE_NO_PAD.encode(expected.token_hash);
    if claims.get("ath").and_then(Value::as_str) != Some(ath.as_str()) {
        return Err(reject(DpopRejection::WrongAccessTokenHash));
    }
    if let Some(nonces) = expected.nonces {
        let valid = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| nonces.accepts(n));
        if !valid {
            return Err(AuthError::UseDpopNonce {
                nonce: nonces.current(),
            });
        }
    }
    let mut id_input = Sha256::new();
    id_input.update(jkt.as_bytes());
    id_input.update(b".");
    id_input.update(jti.as_bytes());
    let digest = id_input.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    Ok(VerifiedProof { jkt, id, iat })
}

/// The verification key of a proof's `jwk` header for `alg`, and its RFC
/// 7638 thumbprint. Public keys only; RSA of 2048 to 4096 bits; the key
/// type and curve must be those of `alg`.
fn public_key(jwk: &Map<String, Value>, alg: Algorithm) -> Result<(DecodingKey, String), AuthError> {
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(reject(DpopRejection::PrivateKey));
    }
    let member = |name: &str| match jwk.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        _ => Err(reject(DpopRejection::InvalidKey)),
    };
    let kty = member("kty")?;
    // RFC 7638 section 3.2: the required members, in lexicographic order,
    // no whitespace; strings JSON-escaped.
    let q = |s: &str| Value::String(s.to_owned()).to_string();
    let invalid = || reject(DpopRejection::InvalidKey);
    let (key, canonical) = match (kty, alg) {
        ("RSA", Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
        | ("RSA", Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512) => {
            let (n, e) = (member("n")?, member("e")?);
            let modulus = URL_SAFE_NO_PAD.decode(n).map_err(|_| invalid())?;
            let bits = bit_length(&modulus);
            if bits < RSA_MIN_BITS {
                return Err(reject(DpopRejection::WeakKey));
            }
            if bits > RSA_MAX_BITS {
                return Err(invalid());
            }
            let key = DecodingKey::from_rsa_components(n, e).map_err(|_| invalid())?;
            (key, format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, q(e), q(n)))
        }
        ("EC", Algorithm::ES256 | Algorithm::ES384) => {
            let (crv, x, y) = (member("crv")?, member("x")?, member("y")?);
            let size = match (crv, alg) {
                ("P-256", Algorithm::ES256) => 32,
                ("P-384", Algorithm::ES384) => 48,
                _ => return Err(invalid()),
            };
            let coordinate = |c: &str| URL_SAFE_NO_PAD.decode(c).ok().filter(|b| b.len() == size);
            if coordinate(x).is_none() || coordinate(y).is_none() {
                return Err(invalid());
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| invalid())?;
            (
                key,
                format!(r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#, q(crv), q(x), q(y)),
            )
        }
        ("OKP", Algorithm::EdDSA) => {
            let (crv, x) = (member("crv")?, member("x")?);
            if crv != "Ed25519" || URL_SAFE_NO_PAD.decode(x).map_or(true, |b| b.len() != 32) {
                return Err(invalid());
            }
            let key = DecodingKey::from_ed_components(x).map_err(|_| invalid())?;
            (key, format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, q(crv), q(x)))
        }
        _ => return Err(invalid()),
    };
    let jkt = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    Ok((key, jkt))
}

/// The number of significant bits of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    let Some(first) = bytes.iter().position(|b| *b != 0) else {
        return 0;
    };
    (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7638_thumbprint_example() {
        // RFC 7638 section 3.1.
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        let (_, jkt) = public_key(&jwk, Algorithm::RS256).unwrap();
        assert_eq!(jkt, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn keys_are_checked_before_any_signature() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let small = obj(serde_json::json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"}));
        assert!(matches!(
            public_key(&small, Algorithm::RS256),
            Err(AuthError::InvalidDpopProof(DpopRejection::WeakKey))
        ));
        let private = obj(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "d": "AAAA"}),
        );
        assert!(matches!(
            public_key(&private, Algorithm::EdDSA),
            Err(AuthError::InvalidDpopProof(DpopRejection::PrivateKey))
        ));
        let oct = obj(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}));
        assert!(matches!(
            public_key(&oct, Algorithm::ES256),
            Err(AuthError::InvalidDpopProof(DpopRejection::PrivateKey))
        ));
        let ed = obj(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])}));
        assert!(
            matches!(
                public_key(&ed, Algorithm::ES256),
                Err(AuthError::InvalidDpopProof(DpopRejection::InvalidKey))
            ),
            "a key of another type than alg's"
        );
        assert!(public_key(&ed, Algorithm::EdDSA).is_ok());
    }

    #[test]
    fn htu_normalization() {
        assert_eq!(
            normalize_htu("HTTPS://MCP.Example.COM:443/mcp").as_deref(),
            Some("https://mcp.example.com/mcp")
        );
        assert_eq!(
            normalize_htu("http://127.0.0.1:80/a/../mcp").as_deref(),
            Some("http://127.0.0.1/mcp")
        );
        assert_eq!(normalize_htu("https://mcp.example.com/mcp?x=1"), None);
        assert_eq!(normalize_htu("https://mcp.example.com/mcp#f"), None);
        assert_eq!(normalize_htu("https://u:p@mcp.example.com/mcp"), None);
        assert_eq!(normalize_htu("/mcp"), None);
        assert_eq!(normalize_htu("ftp://x/mcp"), None);
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0, 1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[0, 0x7f, 0xff]), 15);
    }
}
