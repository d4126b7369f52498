//! [`DpopSigner`]: this server's own DPoP key, for the tokens it obtains
//! downstream (feature `exchange`).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::ConfigError;

/// This server's own DPoP key (ES256), for the downstream tokens it asks
/// for: the token request carries a proof by it, so the authorization
/// server binds the token to it, and every downstream call proves
/// possession with a fresh proof
/// ([`DownstreamToken::dpop_proof`](super::super::DownstreamToken::dpop_proof)).
///
/// The private key never leaves the value: `Debug` shows the key's RFC 7638
/// thumbprint only. Cheap to clone.
///
/// ```
/// use rmcp_guard::oauth::DpopSigner;
///
/// let signer = DpopSigner::generate().unwrap();
/// assert_eq!(signer.thumbprint().len(), 43);
/// let proof = signer.proof("POST", "https://as.example.com/token", None, None);
/// assert_eq!(proof.split('.').count(), 3);
/// ```
#[derive(Clone)]
pub struct DpopSigner {
    inner: Arc<Inner>,
}

struct Inner {
    key: EcdsaKeyPair,
    /// The protected header, base64url, ready to sign.
    header: String,
    thumbprint: String,
}

impl fmt::Debug for DpopSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopSigner")
            .field("alg", &"ES256")
            .field("thumbprint", &self.inner.thumbprint)
            .finish()
    }
}

impl DpopSigner {
    /// A new P-256 key from the system's randomness. Keep it for the life of
    /// the process: tokens bound to it are useless without it.
    pub fn generate() -> Result<Self, ConfigError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| ConfigError::DpopKey("no randomness to generate a key"))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A P-256 key from its PKCS#8 (DER) encoding, e.g. one every replica
    /// shares.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ConfigError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| ConfigError::DpopKey("not a P-256 private key in PKCS#8"))?;
        // The public key is the uncompressed point: 0x04 || x || y.
        let point = key.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(ConfigError::DpopKey("unexpected public key encoding"));
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        // RFC 7638: the required members in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let header = serde_json::json!({
            "typ": "dpop+jwt",
            "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-256", "x": x, "y": y},
        });
        Ok(DpopSigner {
            inner: Arc::new(Inner {
                key,
                header: URL_SAFE_NO_PAD.encode(header.to_string()),
                thumbprint,
            }),
        })
    }

    /// The key's RFC 7638 thumbprint: the `cnf.jkt` of tokens bound to it.
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// A proof for one request (`htm` `method`, `htu` `url` without its
    /// query and fragment), with `ath` for `access_token` and the server's
    /// `nonce` when given; a fresh random `jti`, `iat` now.
    pub fn proof(&self, method: &str, url: &str, access_token: Option<&str>, nonce: Option<&str>) -> String {
        let htu = url.split(['?', '#']).next().unwrap_or(url);
        let rng = SystemRandom::new();
        let mut jti = [0u8; 16];
        // A jti from the clock and a counter if the system has no randomness
        // (the proof is then still unique per process).
        if aws_lc_rs::rand::SecureRandom::fill(&rng, &mut jti).is_err() {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            jti[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
            jti[8..].copy_from_slice(&now_unix().to_le_bytes());
        }
        let mut claims = serde_json::json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": method,
            "htu": htu,
            "iat": now_unix(),
        });
        if let Some(token) = access_token {
            claims["ath"] = serde_json::Value::String(URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = serde_json::Value::String(nonce.to_owned());
        }
        let message = format!("{}.{}", self.inner.header, URL_SAFE_NO_PAD.encode(claims.to_string()));
        // ECDSA signing needs randomness too; without it no proof can be
        // made, and the request goes without one (the server refuses it).
        let signature = self
            .inner
            .key
            .sign(&rng, message.as_bytes())
            .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{message}.{signature}")
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::dpop::{DEFAULT_DPOP_ALGORITHMS, Expected, verify};

    #[test]
    fn its_proofs_pass_our_own_verification() {
        let signer = DpopSigner::generate().unwrap();
        let token = "downstream-token";
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let proof = signer.proof(
            "GET",
            "https://api.example.com/v1/items?page=2",
            Some(token),
            Some("n1"),
        );
        let now = now_unix();
        let verified = verify(
            &proof,
            &Expected {
                method: "GET",
                htu: "https://api.example.com/v1/items",
                token_hash: &hash,
                algorithms: &DEFAULT_DPOP_ALGORITHMS,
                not_before: now - 60,
                not_after: now + 5,
                nonces: None,
            },
        )
        .unwrap();
        assert_eq!(verified.jkt, signer.thumbprint());
        let shown = format!("{signer:?}");
        assert!(
            shown.contains(signer.thumbprint()) && !shown.contains("\"d\""),
            "{shown}"
        );
        assert!(DpopSigner::from_pkcs8(b"not a key").is_err());
    }
}
