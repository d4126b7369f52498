//! Sender-constrained tokens: DPoP (RFC 9449) at the resource server.
//!
//! A bearer token works for whoever holds it. A DPoP-bound token names a
//! key (`cnf.jkt`, the key's RFC 7638 thumbprint) and is accepted only with
//! `Authorization: DPoP <token>` and a `DPoP` header carrying a fresh proof
//! JWT signed by that key, for this request (method and URI), this token
//! (`ath`), recently (`iat`) and once (`jti`). A token stolen from a log or
//! a proxy is useless without the client's private key.
//!
//! | file | concept |
//! |---|---|
//! | `mod` | [`DpopConfig`], [`DpopMode`]: what this resource server demands; the binding rules |
//! | `proof` | checking one proof JWT (RFC 9449 section 4.3) |
//! | `nonce` | [`DpopNonces`]: server-provided nonces (section 8) |
//! | `signer` | `DpopSigner`: this server's own key, for downstream tokens (feature `exchange`) |
//!
//! What is checked, in order, on every request that presents a token
//! (cached tokens included: the verified-token cache never lets a bound
//! token skip its proof):
//!
//! 1. the scheme: `DPoP` needs a mode other than [`DpopMode::Off`];
//!    [`DpopMode::Required`] refuses `Bearer`;
//! 2. with `DPoP`: exactly one `DPoP` header, at most 8 KiB, holding a
//!    compact JWS with `typ` `dpop+jwt`, an allowed asymmetric `alg`, a
//!    public `jwk` of that algorithm's type (no private member; RSA of at
//!    least 2048 bits), a valid signature, `htm` equal to the request
//!    method, `htu` equal to the canonical resource URI (after
//!    normalization: scheme and host case, default port; no query or
//!    fragment), `iat` within [`proof_max_age`](DpopConfig::proof_max_age)
//!    (plus the leeway for clocks ahead), `ath` equal to the token's
//!    SHA-256, and a nonce when [`nonces`](DpopConfig::nonces) are
//!    required;
//! 3. the token itself (signature, issuer, audience...), as for any token;
//! 4. the binding: a token with `cnf.jkt` is accepted only over `DPoP`
//!    with a proof by that key; a token without `cnf` only as `Bearer`
//!    (and not at all under [`DpopMode::Required`]); a `cnf` of another
//!    kind (mTLS `x5t#S256`) is refused, as this server cannot check it;
//! 5. the proof's `jti` is recorded in the replay set, per caller (one
//!    caller cannot fill another's share), and a proof seen before is
//!    refused. With a Redis [`SharedStore`](crate::store::SharedStore)
//!    given to [`Guard`](crate::Guard), the replicas share it.
//!
//! Every refusal is 401 with a `DPoP` challenge (`error="invalid_dpop_proof"`,
//! `"invalid_token"` or `"use_dpop_nonce"`, and `algs`), beside the
//! `Bearer` challenge when bearer tokens are accepted too.

mod nonce;
mod proof;
#[cfg(feature = "exchange")]
mod signer;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

pub use nonce::DpopNonces;
pub(crate) use proof::{Expected, VerifiedProof, normalize_htu, verify};
#[cfg(feature = "exchange")]
pub use signer::DpopSigner;

use crate::error::{AuthError, ConfigError, TokenRejection};
use crate::principal::{Confirmation, Principal};
use crate::state::{MemoryReplaySet, ReplaySet};

/// The proof algorithms accepted unless configured otherwise: ES256,
/// ES384, EdDSA, PS256, RS256 (asymmetric only; never `none` or HS*).
pub const DEFAULT_DPOP_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::PS256,
    Algorithm::RS256,
];

/// Whether this resource server accepts, demands or ignores DPoP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DpopMode {
    /// The `DPoP` scheme is not understood (a request using it gets the
    /// plain `Bearer` challenge) and not advertised. A DPoP-bound token is
    /// still refused: its binding cannot be checked, so it is never taken
    /// as a bearer token.
    Off,
    /// The default: DPoP-bound tokens must prove possession; tokens without
    /// a binding are still accepted as `Bearer`.
    Allowed,
    /// Every token must be DPoP-bound and presented with a proof; the
    /// metadata says `dpop_bound_access_tokens_required: true`.
    Required,
}

impl DpopMode {
    /// `off`, `allowed` or `required` (as `GUARD_DPOP` takes it).
    pub fn as_str(self) -> &'static str {
        match self {
            DpopMode::Off => "off",
            DpopMode::Allowed => "allowed",
            DpopMode::Required => "required",
        }
    }
}

impl std::str::FromStr for DpopMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(DpopMode::Off),
            "allowed" => Ok(DpopMode::Allowed),
            "required" => Ok(DpopMode::Required),
            _ => Err(ConfigError::OutOfRange {
                what: "DPoP mode",
                reason: "one of off, allowed, required",
            }),
        }
    }
}

/// How this resource server treats DPoP; given to
/// [`ResourceServerBuilder::dpop`](super::ResourceServerBuilder::dpop).
///
/// ```
/// use std::time::Duration;
/// use rmcp_guard::oauth::{DpopConfig, DpopNonces, Issuer, ResourceServer};
///
/// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
///     .dpop(
///         DpopConfig::required()
///             .proof_max_age(Duration::from_secs(60))
///             .nonces(DpopNonces::with_key([7u8; 32])),
///     )
///     .build()
///     .unwrap();
/// assert_eq!(rs.metadata().dpop_bound_access_tokens_required, Some(true));
/// ```
#[derive(Clone)]
#[must_use]
pub struct DpopConfig {
    pub(crate) mode: DpopMode,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) proof_max_age: Duration,
    pub(crate) leeway: Duration,
    pub(crate) nonces: Option<DpopNonces>,
    pub(crate) replay: Option<Arc<dyn ReplaySet>>,
}

impl std::fmt::Debug for DpopConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopConfig")
            .field("mode", &self.mode)
            .field("algorithms", &self.algorithms)
            .field("proof_max_age", &self.proof_max_age)
            .field("leeway", &self.leeway)
            .field("nonces", &self.nonces)
            .field("shared_replay_set", &self.replay.is_some())
            .finish()
    }
}

impl PartialEq for DpopConfig {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.algorithms == other.algorithms
            && self.proof_max_age == other.proof_max_age
            && self.leeway == other.leeway
            && self.nonces.is_some() == other.nonces.is_some()
            && self.replay.is_some() == other.replay.is_some()
    }
}

impl Default for DpopConfig {
    fn default() -> Self {
        DpopConfig::allowed()
    }
}

/// The default bound of the in-memory replay set: proofs remembered in
/// total.
pub const DEFAULT_REPLAY_TOTAL: usize = 500_000;
/// The default bound of the in-memory replay set per caller.
pub const DEFAULT_REPLAY_PER_CALLER: usize = 50_000;

impl DpopConfig {
    fn with_mode(mode: DpopMode) -> Self {
        DpopConfig {
            mode,
            algorithms: DEFAULT_DPOP_ALGORITHMS.to_vec(),
            proof_max_age: Duration::from_secs(120),
            leeway: Duration::from_secs(5),
            nonces: None,
            replay: None,
        }
    }

    /// [`DpopMode::Off`].
    pub fn off() -> Self {
        DpopConfig::with_mode(DpopMode::Off)
    }

    /// [`DpopMode::Allowed`], the default.
    pub fn allowed() -> Self {
        DpopConfig::with_mode(DpopMode::Allowed)
    }

    /// [`DpopMode::Required`].
    pub fn required() -> Self {
        DpopConfig::with_mode(DpopMode::Required)
    }

    /// The mode.
    pub fn mode(&self) -> DpopMode {
        self.mode
    }

    /// The proof algorithms accepted and advertised
    /// (`dpop_signing_alg_values_supported`); asymmetric only. Defaults to
    /// [`DEFAULT_DPOP_ALGORITHMS`].
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// How old a proof's `iat` may be; it is also how long a `jti` is
    /// remembered. 10 seconds to 10 minutes. Defaults to 2 minutes.
    pub fn proof_max_age(mut self, age: Duration) -> Self {
        self.proof_max_age = age;
        self
    }

    /// How far ahead of this server's clock a proof's `iat` may be (and
    /// how much older than `proof_max_age`). At most 1 minute. Defaults to
    /// 5 seconds.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Require server-provided nonces in proofs. Defaults to none.
    pub fn nonces(mut self, nonces: DpopNonces) -> Self {
        self.nonces = Some(nonces);
        self
    }

    /// Where proofs' `jti`s are remembered. Defaults to an in-memory set of
    /// at most [`DEFAULT_REPLAY_TOTAL`] proofs, [`DEFAULT_REPLAY_PER_CALLER`]
    /// per caller; [`Guard::shared_store`](crate::Guard::shared_store) with
    /// Redis replaces it with the fleet's
    /// ([`RedisReplaySet`](crate::state::RedisReplaySet)).
    pub fn replay_set(mut self, replay: Arc<dyn ReplaySet>) -> Self {
        self.replay = Some(replay);
        self
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.mode != DpopMode::Off && self.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithms);
        }
        if let Some(alg) = self
            .algorithms
            .iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(ConfigError::AlgorithmNotAllowed {
                alg: format!("{alg:?}"),
                reason: "a DPoP proof is signed with the client's private key: asymmetric algorithms only",
            });
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(600)).contains(&self.proof_max_age) {
            return Err(ConfigError::OutOfRange {
                what: "DPoP proof_max_age",
                reason: "between 10 seconds and 10 minutes",
            });
        }
        if self.leeway > Duration::from_secs(60) {
            return Err(ConfigError::OutOfRange {
                what: "DPoP leeway",
                reason: "at most 1 minute",
            });
        }
        if let Some(nonces) = &self.nonces {
            nonces.check()?;
        }
        Ok(())
    }

    /// The replay set in force: the configured one, else a new in-memory set.
    pub(crate) fn replay_set_or_default(&self) -> Arc<dyn ReplaySet> {
        self.replay.clone().unwrap_or_else(|| {
            Arc::new(MemoryReplaySet::with_limits(
                DEFAULT_REPLAY_TOTAL,
                DEFAULT_REPLAY_PER_CALLER,
            ))
        })
    }

    /// The `algs` of the `DPoP` challenge and the metadata.
    pub(crate) fn algorithm_names(&self) -> Vec<String> {
        self.algorithms.iter().map(|a| format!("{a:?}")).collect()
    }
}

/// How the token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Bearer,
    Dpop,
}

/// The DPoP binding of a token: `cnf.jkt`. `Err` for a `cnf` this server
/// cannot check (another confirmation method, or malformed).
pub(crate) fn binding(principal: &Principal) -> Result<Option<&str>, TokenRejection> {
    match principal.confirmation() {
        Confirmation::Unbound => Ok(None),
        Confirmation::Dpop(jkt) => Ok(Some(jkt)),
        Confirmation::Unsupported => Err(TokenRejection::UnsupportedBinding),
    }
}

/// The owner under which a caller's proofs are remembered in the replay
/// set: its own key space, apart from its sealed request states.
pub(crate) fn replay_owner(principal: &Principal) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"rmcp-guard dpop replay\0");
    hasher.update(crate::state::owner_key(principal));
    hasher.finalize().into()
}

/// Whether a token presented with `scheme` (and, over `DPoP`, a verified
/// `proof`) may be used under `mode`.
pub(crate) fn check_binding(
    principal: &Principal,
    mode: DpopMode,
    scheme: Scheme,
    proof: Option<&VerifiedProof>,
) -> Result<(), AuthError> {
    let bound = binding(principal)?;
    match (bound, scheme, proof) {
        (Some(jkt), Scheme::Dpop, Some(proof)) if mode != DpopMode::Off => {
            if proof.jkt == jkt {
                Ok(())
            } else {
                Err(TokenRejection::DpopKeyMismatch.into())
            }
        }
        (Some(_), _, _) => Err(TokenRejection::DpopBound.into()),
        (None, Scheme::Bearer, _) if mode != DpopMode::Required => Ok(()),
        (None, _, _) => Err(TokenRejection::NotDpopBound.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn principal(cnf: Option<Value>) -> Principal {
        let mut claims = serde_json::Map::new();
        if let Some(cnf) = cnf {
            claims.insert("cnf".into(), cnf);
        }
        Principal::unverified("https://idp.example.com", "alice")
            .claims(claims)
            .build()
    }

    fn proof(jkt: &str) -> VerifiedProof {
        VerifiedProof {
            jkt: jkt.into(),
            id: [0; 16],
            iat: 0,
        }
    }

    #[test]
    fn defaults_are_pinned() {
        let c = DpopConfig::default();
        assert_eq!(c.mode(), DpopMode::Allowed);
        assert_eq!(c.algorithms, DEFAULT_DPOP_ALGORITHMS.to_vec());
        assert_eq!(c.proof_max_age, Duration::from_secs(120));
        assert_eq!(c.leeway, Duration::from_secs(5));
        assert!(c.nonces.is_none() && c.replay.is_none());
        assert!(c.check().is_ok());
        assert_eq!(DpopNonces::DEFAULT_ROTATION, Duration::from_secs(300));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            DpopConfig::allowed().algorithms([Algorithm::HS256]).check(),
            Err(ConfigError::AlgorithmNotAllowed { .. })
        ));
        assert!(matches!(
            DpopConfig::required().algorithms([]).check(),
            Err(ConfigError::NoAlgorithms)
        ));
        for age in [Duration::from_secs(9), Duration::from_secs(601)] {
            assert!(DpopConfig::allowed().proof_max_age(age).check().is_err());
        }
        assert!(DpopConfig::allowed().leeway(Duration::from_secs(61)).check().is_err());
        assert_eq!("required".parse::<DpopMode>().unwrap(), DpopMode::Required);
        assert!("REQUIRED".parse::<DpopMode>().is_err());
    }

    #[test]
    fn binding_rules() {
        use DpopMode::*;
        use Scheme::*;
        let unbound = principal(None);
        let bound = principal(Some(serde_json::json!({"jkt": "k1"})));
        let mtls = principal(Some(serde_json::json!({"x5t#S256": "abc"})));
        let p1 = proof("k1");
        let p2 = proof("k2");
        let code = |r: Result<(), AuthError>| r.err().map(|e| e.reason());
        assert_eq!(code(check_binding(&unbound, Allowed, Bearer, None)), None);
        assert_eq!(code(check_binding(&unbound, Off, Bearer, None)), None);
        assert_eq!(
            code(check_binding(&unbound, Required, Bearer, None)),
            Some("not_dpop_bound")
        );
        assert_eq!(
            code(check_binding(&unbound, Allowed, Dpop, Some(&p1))),
            Some("not_dpop_bound")
        );
        assert_eq!(code(check_binding(&bound, Allowed, Dpop, Some(&p1))), None);
        assert_eq!(code(check_binding(&bound, Required, Dpop, Some(&p1))), None);
        assert_eq!(
            code(check_binding(&bound, Allowed, Dpop, Some(&p2))),
            Some("dpop_key_mismatch")
        );
        for mode in [Off, Allowed, Required] {
            assert_eq!(
                code(check_binding(&bound, mode, Bearer, None)),
                Some("dpop_bound_token")
            );
            assert_eq!(
                code(check_binding(&mtls, mode, Bearer, None)),
                Some("unsupported_confirmation")
            );
        }
        assert_eq!(
            code(check_binding(&bound, Off, Dpop, Some(&p1))),
            Some("dpop_bound_token")
        );
    }
}
