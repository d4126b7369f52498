//! DPoP proofs at the token endpoint (RFC 9449 section 4.3): checked here,
//! and the thumbprint of the key they prove possession of handed back.
//!
//! Everything a client sends is untrusted: every check answers an error
//! description instead of panicking.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use url::Url;

use crate::dpop::jwk_thumbprint;

/// The proof algorithms accepted (`dpop_signing_alg_values_supported`):
/// asymmetric only.
pub(super) const SIGNING_ALGS: [&str; 5] = ["ES256", "ES384", "EdDSA", "RS256", "PS256"];

/// How far `iat` may be from now, either way, in seconds.
pub(super) const MAX_SKEW_SECS: u64 = 300;

/// Largest `DPoP` header accepted (an RSA 8192 proof is under 3 KiB).
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// JWK members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A proof that passed every check.
#[derive(Debug)]
pub(super) struct Proof {
    /// RFC 7638 thumbprint of the proof's key.
    pub(super) jkt: String,
    /// The proof's `jti`, for replay detection.
    pub(super) jti: String,
}

/// Checks the request's `DPoP` header, if any, as a proof for `POST
/// token_endpoint` at `now` (Unix seconds): `Ok(None)` without one.
pub(super) fn check(headers: &HeaderMap, token_endpoint: &str, now: u64) -> Result<Option<Proof>, &'static str> {
    let mut values = headers.get_all("dpop").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one DPoP header");
    }
    let proof = value.to_str().map_err(|_| "the DPoP header is not ASCII")?;
    if proof.len() > MAX_PROOF_BYTES {
        return Err("the DPoP proof is too large");
    }
    verify(proof, token_endpoint, now).map(Some)
}

fn decode_json(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn verify(proof: &str, token_endpoint: &str, now: u64) -> Result<Proof, &'static str> {
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the DPoP proof is not a compact JWS");
    };
    let header = decode_json(header_b64).ok_or("the DPoP proof header is not a base64url JSON object")?;
    let claims = decode_json(claims_b64).ok_or("the DPoP proof claims are not a base64url JSON object")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| "the DPoP proof signature is not base64url")?;

    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err("the DPoP proof typ must be dpop+jwt");
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .filter(|alg| SIGNING_ALGS.contains(alg))
        .ok_or("the DPoP proof alg is not a supported asymmetric algorithm")?;
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err("the DPoP proof header has no jwk");
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err("the DPoP proof jwk contains private key material");
    }
    let signing_input = &proof[..header_b64.len() + 1 + claims_b64.len()];
    verify_signature(alg, jwk, signing_input.as_bytes(), &signature)?;

    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|jti| !jti.is_empty() && jti.len() <= 256)
        .ok_or("the DPoP proof needs a jti")?;
    if claims.get("htm").and_then(Value::as_str) != Some("POST") {
        return Err("the DPoP proof htm must be POST");
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or("the DPoP proof needs an htu")?;
    if without_query(htu).is_none() || without_query(htu) != without_query(token_endpoint) {
        return Err("the DPoP proof htu is not the token endpoint");
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or("the DPoP proof needs a numeric iat")?;
    if iat.abs_diff(now) > MAX_SKEW_SECS {
        return Err("the DPoP proof iat is more than 5 minutes from now");
    }
    let jkt = jwk_thumbprint(&Value::Object(jwk.clone())).ok_or("the DPoP proof jwk is not a valid public key")?;
    Ok(Proof {
        jkt,
        jti: jti.to_owned(),
    })
}

/// `url` parsed, without query and fragment (RFC 9449 section 4.3 item 9).
fn without_query(url: &str) -> Option<Url> {
    let mut url = Url::parse(url).ok()?;
    url.set_query(None);
    url.set_fragment(None);
    Some(url)
}

/// A base64url member of the JWK, decoded.
fn member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, &'static str> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        .ok_or("the DPoP proof jwk is missing a member or it is not base64url")
}

/// Verifies `signature` over `input` with the public key `jwk` under `alg`;
/// the key's type and curve must be the algorithm's.
fn verify_signature(alg: &str, jwk: &Map<String, Value>, input: &[u8], signature: &[u8]) -> Result<(), &'static str> {
    let kty = jwk.get("kty").and_then(Value::as_str);
    let crv = jwk.get("crv").and_then(Value::as_str);
    let mismatch = "the DPoP proof jwk does not fit its alg";
    let bad_signature = "the DPoP proof signature does not verify";
    match alg {
        "ES256" | "ES384" => {
            let (curve, size, algorithm): (_, _, &'static signature::EcdsaVerificationAlgorithm) = if alg == "ES256" {
                ("P-256", 32, &signature::ECDSA_P256_SHA256_FIXED)
            } else {
                ("P-384", 48, &signature::ECDSA_P384_SHA384_FIXED)
            };
            if kty != Some("EC") || crv != Some(curve) {
                return Err(mismatch);
            }
            let (x, y) = (member(jwk, "x")?, member(jwk, "y")?);
            if x.len() != size || y.len() != size {
                return Err("the DPoP proof jwk coordinates have the wrong length");
            }
            let point = [&[0x04][..], &x, &y].concat();
            UnparsedPublicKey::new(algorithm, point)
                .verify(input, signature)
                .map_err(|_| bad_signature)
        }
        "EdDSA" => {
            if kty != Some("OKP") || crv != Some("Ed25519") {
                return Err(mismatch);
            }
            let x = member(jwk, "x")?;
            UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(input, signature)
                .map_err(|_| bad_signature)
        }
        "RS256" | "PS256" => {
            if kty != Some("RSA") {
                return Err(mismatch);
            }
            let key = RsaPublicKeyComponents {
                n: member(jwk, "n")?,
                e: member(jwk, "e")?,
            };
            let params = if alg == "RS256" {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else {
                &signature::RSA_PSS_2048_8192_SHA256
            };
            // Also refuses keys under 2048 bits.
            key.verify(params, input, signature).map_err(|_| bad_signature)
        }
        _ => Err("the DPoP proof alg is not a supported asymmetric algorithm"),
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::dpop::{DpopKey, rsa_1024_public_jwk};
    use crate::keys::{b64, compact_jws, json_bytes};

    const ENDPOINT: &str = "http://127.0.0.1:9/token";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn headers(proof: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append("dpop", HeaderValue::from_str(proof).unwrap());
        h
    }

    fn check_one(proof: &str) -> Result<Option<Proof>, &'static str> {
        check(&headers(proof), ENDPOINT, now())
    }

    #[test]
    fn every_kit_algorithm_is_accepted() {
        for &alg in crate::KeyAlg::ALL {
            let key = DpopKey::generate(alg);
            let proof = check_one(&key.proof("POST", ENDPOINT).sign()).unwrap().unwrap();
            assert_eq!(proof.jkt, key.thumbprint(), "{alg}");
        }
        // The query of htu is ignored.
        let key = DpopKey::es256();
        assert!(check_one(&key.proof("POST", "http://127.0.0.1:9/token?x=1").sign()).is_ok());
    }

    #[test]
    fn es384_is_accepted() {
        let pair = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-384", "x": b64(&point[1..49]), "y": b64(&point[49..])});
        let header = json!({"typ": "dpop+jwt", "alg": "ES384", "jwk": jwk});
        let claims = json!({"jti": "j", "htm": "POST", "htu": ENDPOINT, "iat": now()});
        let proof = compact_jws(&json_bytes(&header), &json_bytes(&claims), |input| {
            pair.sign(&SystemRandom::new(), input).unwrap().as_ref().to_vec()
        });
        assert_eq!(check_one(&proof).unwrap().unwrap().jkt, jwk_thumbprint(&jwk).unwrap());
    }

    #[test]
    fn bad_proofs_are_refused() {
        let key = DpopKey::es256();
        let other = DpopKey::es256();
        let proof = || key.proof("POST", ENDPOINT);
        let cases = [
            ("no typ", proof().without_header("typ").sign()),
            ("typ jwt", proof().header("typ", json!("JWT")).sign()),
            ("hs256", proof().sign_hs256(b"secret")),
            ("none", proof().unsigned()),
            ("private jwk", proof().header("jwk", key.private_jwk()).sign()),
            ("no jwk", proof().without_header("jwk").sign()),
            ("other signer", proof().signed_with(&other).sign()),
            (
                "weak rsa",
                proof()
                    .header("jwk", rsa_1024_public_jwk())
                    .header("alg", json!("RS256"))
                    .sign(),
            ),
            ("htm GET", key.proof("GET", ENDPOINT).sign()),
            ("other htu", key.proof("POST", "http://127.0.0.1:9/other").sign()),
            ("stale", proof().issued_at_offset(-301).sign()),
            ("future", proof().issued_at_offset(301).sign()),
            ("iat string", proof().claim("iat", json!("1")).sign()),
            ("no jti", proof().without_claim("jti").sign()),
            ("garbage", "a.b.c".to_owned()),
        ];
        for (name, proof) in cases {
            assert!(check_one(&proof).is_err(), "{name} was accepted");
        }
        let rsa = DpopKey::generate(crate::KeyAlg::Rs256);
        assert!(check_one(&rsa.proof("POST", ENDPOINT).header("jwk", key.public_jwk()).sign()).is_err());
        assert!(check(&HeaderMap::new(), ENDPOINT, now()).unwrap().is_none());
        let mut two = headers(&proof().sign());
        two.append("dpop", HeaderValue::from_str(&proof().sign()).unwrap());
        assert!(check(&two, ENDPOINT, now()).is_err());
    }
}
