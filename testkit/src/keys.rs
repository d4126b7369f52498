//! Ephemeral signing keys: generation, JWS signing and JWK export.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::error::Unspecified;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaEncoding, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// A JWS signature algorithm the test kit can sign with.
///
/// `Rs256` and `Ps256` use the same RSA 2048 key material; the issuer publishes
/// that key twice, under two distinct `kid`s, once with `"alg": "RS256"` and
/// once with `"alg": "PS256"` (a JWK names one algorithm, and a validator that
/// checks the key's own `alg` must be able to accept both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA 2048 key.
    Rs256,
    /// RSASSA-PSS with SHA-256 (salt length 32), RSA 2048 key.
    Ps256,
    /// ECDSA P-256 with SHA-256 (fixed-length `r || s` signature).
    Es256,
    /// EdDSA with Ed25519.
    EdDsa,
}

impl KeyAlg {
    /// Every algorithm, in the order the issuer publishes its keys.
    pub const ALL: &'static [KeyAlg] = &[KeyAlg::Rs256, KeyAlg::Ps256, KeyAlg::Es256, KeyAlg::EdDsa];

    /// The JOSE `alg` value: `"RS256"`, `"PS256"`, `"ES256"` or `"EdDSA"`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Rs256 => "RS256",
            KeyAlg::Ps256 => "PS256",
            KeyAlg::Es256 => "ES256",
            KeyAlg::EdDsa => "EdDSA",
        }
    }

    /// The kind of key material this algorithm signs with.
    pub(crate) fn kind(self) -> KeyKind {
        match self {
            KeyAlg::Rs256 | KeyAlg::Ps256 => KeyKind::Rsa,
            KeyAlg::Es256 => KeyKind::Ec,
            KeyAlg::EdDsa => KeyKind::Okp,
        }
    }

    /// The algorithms that sign with key material of `kind`.
    pub(crate) fn of_kind(kind: KeyKind) -> &'static [KeyAlg] {
        match kind {
            KeyKind::Rsa => &[KeyAlg::Rs256, KeyAlg::Ps256],
            KeyKind::Ec => &[KeyAlg::Es256],
            KeyKind::Okp => &[KeyAlg::EdDsa],
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of key material (the JWK `kty`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// `kty: RSA`.
    Rsa,
    /// `kty: EC`, curve P-256.
    Ec,
    /// `kty: OKP`, curve Ed25519.
    Okp,
}

/// A private key of one kind.
pub(crate) enum KeyMaterial {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print private material; the public-key thumbprint identifies it.
        write!(f, "KeyMaterial({:?}, {})", self.kind(), self.thumbprint())
    }
}

impl KeyMaterial {
    /// Generates a fresh key of `kind` (RSA keys are 2048 bits).
    pub(crate) fn generate(kind: KeyKind) -> Result<Self, Unspecified> {
        Ok(match kind {
            KeyKind::Rsa => KeyMaterial::Rsa(RsaKeyPair::generate(KeySize::Rsa2048)?),
            KeyKind::Ec => KeyMaterial::Ec(EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)?),
            KeyKind::Okp => KeyMaterial::Ed(Ed25519KeyPair::generate()?),
        })
    }

    /// The kind of this key.
    pub(crate) fn kind(&self) -> KeyKind {
        match self {
            KeyMaterial::Rsa(_) => KeyKind::Rsa,
            KeyMaterial::Ec(_) => KeyKind::Ec,
            KeyMaterial::Ed(_) => KeyKind::Okp,
        }
    }

    /// `requested` if this key can sign with it, otherwise this key's default
    /// algorithm (RS256, ES256 or EdDSA).
    pub(crate) fn effective_alg(&self, requested: KeyAlg) -> KeyAlg {
        if requested.kind() == self.kind() {
            requested
        } else {
            KeyAlg::of_kind(self.kind())[0]
        }
    }

    /// The public key bytes: PKCS#1 `RSAPublicKey` DER, the uncompressed EC
    /// point, or the 32-byte Ed25519 key.
    fn public_bytes(&self) -> &[u8] {
        match self {
            KeyMaterial::Rsa(k) => k.public_key().as_ref(),
            KeyMaterial::Ec(k) => k.public_key().as_ref(),
            KeyMaterial::Ed(k) => k.public_key().as_ref(),
        }
    }

    /// First 8 bytes of SHA-256 over the public key, as hex.
    fn thumbprint(&self) -> String {
        let digest = Sha256::digest(self.public_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `kid` this key has when used with `alg`: `"{alg}-{thumbprint}"`,
    /// e.g. `rs256-1f2e3d4c5b6a7988`.
    pub(crate) fn kid(&self, alg: KeyAlg) -> String {
        format!("{}-{}", alg.name().to_ascii_lowercase(), self.thumbprint())
    }

    /// Signs `msg` with `alg` (see [`KeyMaterial::effective_alg`] when the
    /// algorithm does not fit the key).
    pub(crate) fn sign(&self, alg: KeyAlg, msg: &[u8]) -> Vec<u8> {
        let alg = self.effective_alg(alg);
        match self {
            KeyMaterial::Rsa(k) => {
                let padding: &'static dyn RsaEncoding = if alg == KeyAlg::Ps256 {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; k.public_modulus_len()];
                // Invariant: the key was generated by aws-lc (2048 bits, valid),
                // the digest is SHA-256 and the buffer is exactly the modulus
                // length; aws-lc only fails on malformed keys or wrong sizes.
                k.sign(padding, &SystemRandom::new(), msg, &mut sig)
                    .expect("RSA signing with a generated 2048-bit key cannot fail");
                sig
            }
            KeyMaterial::Ec(k) => {
                // Invariant: a generated P-256 key with its own algorithm;
                // aws-lc only fails on malformed keys.
                k.sign(&SystemRandom::new(), msg)
                    .expect("ECDSA signing with a generated P-256 key cannot fail")
                    .as_ref()
                    .to_vec()
            }
            KeyMaterial::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// The public JWK for this key used with `alg`, under `kid`, with
    /// `"use": "sig"`.
    pub(crate) fn public_jwk(&self, kid: &str, alg: KeyAlg) -> Value {
        let alg = self.effective_alg(alg);
        match self {
            KeyMaterial::Rsa(k) => {
                let public = k.public_key();
                json!({
                    "kty": "RSA",
                    "kid": kid,
                    "use": "sig",
                    "alg": alg.name(),
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            KeyMaterial::Ec(k) => {
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = k.public_key().as_ref();
                let coords = point.get(1..).unwrap_or_default();
                let (x, y) = coords.split_at(coords.len() / 2);
                json!({
                    "kty": "EC",
                    "kid": kid,
                    "use": "sig",
                    "alg": alg.name(),
                    "crv": "P-256",
                    "x": b64(x),
                    "y": b64(y),
                })
            }
            KeyMaterial::Ed(k) => json!({
                "kty": "OKP",
                "kid": kid,
                "use": "sig",
                "alg": alg.name(),
                "crv": "Ed25519",
                "x": b64(k.public_key().as_ref()),
            }),
        }
    }

    /// The X.509 `SubjectPublicKeyInfo` DER of an RSA key, `None` for other kinds.
    pub(crate) fn rsa_spki_der(&self) -> Option<Vec<u8>> {
        match self {
            KeyMaterial::Rsa(k) => k
                .public_key()
                .as_der()
                .ok()
                .map(|der| AsRef::<[u8]>::as_ref(&*der).to_vec()),
            KeyMaterial::Ec(_) | KeyMaterial::Ed(_) => None,
        }
    }
}

/// Base64url without padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS: `b64(header).b64(payload).b64(sign(signing_input))`.
pub(crate) fn compact_jws(header: &[u8], payload: &[u8], sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let mut out = b64(header);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let signature = sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut out);
    out
}

/// The serialization of a JSON value, exactly as `serde_json` writes it.
pub(crate) fn json_bytes(value: &Value) -> Vec<u8> {
    // `Display` for `Value` is infallible (map keys are always strings).
    value.to_string().into_bytes()
}

/// A standalone signing key that no [`TestIssuer`](super::TestIssuer) publishes.
///
/// Use it to forge tokens: an attacker's key that reuses the issuer's `kid`
/// ([`TokenBuilder::signed_with`](super::TokenBuilder::signed_with)), a key
/// embedded in a `jwk` header ([`TestKey::public_jwk`]), or a JWKS served from
/// an attacker URL. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct TestKey {
    alg: KeyAlg,
    key: Arc<KeyMaterial>,
}

impl fmt::Debug for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid())
            .finish()
    }
}

impl TestKey {
    /// Generates a fresh key for `alg` (RSA keys are 2048 bits).
    ///
    /// # Panics
    ///
    /// If aws-lc cannot generate a key (its random source failed), which a
    /// test cannot recover from anyway.
    pub fn generate(alg: KeyAlg) -> TestKey {
        // Invariant: key generation only fails when the system RNG fails.
        TestKey::try_generate(alg).expect("aws-lc key generation failed")
    }

    /// Like [`TestKey::generate`], but reports a failed random source as an
    /// error instead of panicking (for servers that must not panic, such as
    /// the development authorization server).
    pub(crate) fn try_generate(alg: KeyAlg) -> Result<TestKey, Unspecified> {
        Ok(TestKey {
            alg,
            key: Arc::new(KeyMaterial::generate(alg.kind())?),
        })
    }

    /// The algorithm this key signs with by default.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// This key's own `kid` (`"{alg}-{thumbprint}"`). No issuer publishes it.
    pub fn kid(&self) -> String {
        self.key.kid(self.alg)
    }

    /// The public JWK of this key (with [`TestKey::kid`], `use: sig` and `alg`),
    /// e.g. to embed in a `jwk` header or serve from an attacker's JWKS.
    pub fn public_jwk(&self) -> Value {
        self.key.public_jwk(&self.kid(), self.alg)
    }

    /// The X.509 `SubjectPublicKeyInfo` DER of this key if it is an RSA key.
    pub fn rsa_public_key_der(&self) -> Option<Vec<u8>> {
        self.key.rsa_spki_der()
    }

    /// A compact JWS over exactly `header` and `claims`, signed with this key
    /// using [`TestKey::alg`]; the header's own `alg` is not consulted.
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        compact_jws(&json_bytes(header), &json_bytes(claims), |input| {
            self.key.sign(self.alg, input)
        })
    }

    pub(crate) fn material(&self) -> &Arc<KeyMaterial> {
        &self.key
    }
}
