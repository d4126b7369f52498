//! Errors: [`ConfigError`] for what fails when a configuration is built,
//! [`AuthError`] for why a request was refused at the HTTP layer, and
//! [`Rejection`] for why a tool did not get what it asked for.
//!
//! A `ConfigError` says what to fix and stops the server from starting. An
//! `AuthError` becomes an HTTP response (see [`AuthError::status`]) with an
//! RFC 6750 challenge; its `Display` text is the short, token-free
//! `error_description` a client sees. A `Rejection` becomes one JSON-RPC
//! error: every denial, whoever decided it (policy, secrets, token exchange),
//! has the same code, [`PERMISSION_DENIED`].

use http::StatusCode;

/// A configuration the library refuses to build, with what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL setting could not be parsed or has a part it must not have.
    #[error("{what} is not a valid URL ({reason}): {url}")]
    InvalidUrl {
        /// Which setting.
        what: &'static str,
        /// The offending value.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A URL that must be https is not (loopback http is allowed for development).
    #[error("{what} must be an https URL (http is allowed only for loopback): {url}")]
    InsecureUrl {
        /// Which setting.
        what: &'static str,
        /// The offending URL.
        url: String,
    },
    /// The same issuer was configured twice.
    #[error("issuer {0} is configured twice")]
    DuplicateIssuer(String),
    /// The list of accepted audiences is empty.
    #[error("at least one accepted audience is required (the default is the resource URI)")]
    NoAudience,
    /// The list of allowed algorithms is empty.
    #[error("at least one signature algorithm must be allowed")]
    NoAlgorithms,
    /// An algorithm that cannot be allowed in this position.
    #[error("algorithm {alg} cannot be allowed here: {reason}")]
    AlgorithmNotAllowed {
        /// The algorithm.
        alg: String,
        /// Why.
        reason: &'static str,
    },
    /// A shared secret for HS* tokens is shorter than the algorithm's hash.
    #[error("the shared secret must be at least {min} bytes for {alg}")]
    SharedSecretTooShort {
        /// The algorithm.
        alg: String,
        /// The minimum length in bytes.
        min: usize,
    },
    /// A scope is empty or has characters RFC 6749 forbids (space, `"`, `\`).
    #[error("invalid scope {0:?}: scopes are non-empty and have no spaces, quotes or backslashes")]
    InvalidScope(String),
    /// A numeric or duration setting is out of its allowed range.
    #[error("{what} is out of range: {reason}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// The allowed range.
        reason: &'static str,
    },
    /// A claim name is empty.
    #[error("the {0} claim name must not be empty")]
    EmptyClaimName(&'static str),
    /// The HTTP client for metadata and JWKS fetches could not be built.
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),

    // ---- introspection and token exchange (feature `introspection`) ----
    /// A client secret file could not be read.
    #[error("cannot read the client secret file {path}: {source}")]
    ClientSecretFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// A client id or client secret is empty.
    #[error("the OAuth client {0} must not be empty")]
    EmptyClientCredential(&'static str),
    /// The authorization server's metadata could not be fetched or does not
    /// name the endpoint needed.
    #[error("discovery at {issuer} failed: {reason}")]
    Discovery {
        /// The issuer whose metadata was read.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
    /// More than one issuer is configured for token introspection.
    #[error("at most one introspection issuer can be configured (found {0} and {1})")]
    MultipleIntrospectionIssuers(String, String),
    // ---- end introspection ----
    /// A piece that runs background tasks (the Redis connection) was built
    /// outside a Tokio runtime.
    #[error("{0} must be built inside a Tokio runtime")]
    NoRuntime(&'static str),
    /// A request-state key or key id is unusable (feature `state`): the
    /// wrong length, an empty or odd key id, or a key id used twice.
    #[error("invalid request-state key: {0}")]
    StateKey(&'static str),
    /// A DPoP key for this server (feature `exchange`) is unusable.
    #[error("invalid DPoP key: {0}")]
    DpopKey(&'static str),
    /// The policy does not load (feature `policy`).
    #[cfg(feature = "policy")]
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Why a request was refused.
///
/// Each variant maps to one HTTP status and RFC 6750 error code
/// ([`status`](Self::status), [`error_code`](Self::error_code)) and has a
/// stable [`reason`](Self::reason) code for audit events. The `Display` text
/// never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` credentials: 401 without an error code.
    #[error("bearer token required")]
    MissingToken,
    /// The request is malformed (two Authorization headers, a token in the
    /// query string, an empty bearer value...): 400 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The token is not acceptable: 401 `invalid_token`.
    #[error("{}", .0.description())]
    InvalidToken(TokenRejection),
    /// The token lacks scopes this resource requires: 403 `insufficient_scope`.
    #[error("insufficient scope")]
    InsufficientScope {
        /// Every scope the request needs (the challenge's `scope`).
        required: Vec<String>,
    },
    /// The issuer's keys cannot be fetched and none are cached: 503.
    #[error("token keys are temporarily unavailable")]
    KeysUnavailable,
    /// The introspection endpoint did not answer usably (down, timed out,
    /// refused this server's client credentials, or sent an unreadable
    /// answer): 503, never allow.
    #[error("token introspection is temporarily unavailable")]
    IntrospectionUnavailable,
    /// The upstream this request needs (an issuer's keys, the introspection
    /// endpoint) kept failing and its circuit breaker is open: 503 with
    /// `Retry-After`, answered without waiting on it.
    #[error("{upstream} is temporarily unavailable")]
    CircuitOpen {
        /// What is unavailable (`token keys`, `token introspection`).
        upstream: &'static str,
        /// Seconds until the breaker lets a probe through (`Retry-After`).
        retry_after_secs: u64,
    },
    /// This replica cannot know whether the token is revoked: its copy of
    /// the fleet's revocations is stale (Redis unreachable for more than
    /// [`STALE_AFTER`](crate::revoke::STALE_AFTER)) or its table overflowed.
    /// 503 with `Retry-After`, never allow; see [`revoke`](crate::revoke).
    #[error("revocations are temporarily unavailable")]
    RevocationsUnavailable {
        /// Seconds to wait before trying again (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The `DPoP` proof of the request is missing or not acceptable
    /// (RFC 9449 section 4.3): 401 `invalid_dpop_proof` with the `DPoP`
    /// challenge.
    #[error("{}", .0.description())]
    InvalidDpopProof(DpopRejection),
    /// The proof lacks the server's current nonce, or carries an old one
    /// (RFC 9449 section 8): 401 `use_dpop_nonce`, with the nonce to use in
    /// the `DPoP-Nonce` response header.
    #[error("a fresh DPoP nonce is required")]
    UseDpopNonce {
        /// The nonce the next proof must carry.
        nonce: String,
    },
    /// The proof's `jti` cannot be recorded (the replay set is full for
    /// this caller or in total, or the fleet's store is unreachable), so
    /// whether it is replayed is unknown: 503 with `Retry-After`, never
    /// allow.
    #[error("DPoP proofs cannot be checked for replay right now")]
    DpopReplayUnavailable {
        /// Seconds to wait before trying again (`Retry-After`).
        retry_after_secs: u64,
    },
}

impl AuthError {
    /// The HTTP status of the rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken
            | AuthError::InvalidToken(_)
            | AuthError::InvalidDpopProof(_)
            | AuthError::UseDpopNonce { .. } => StatusCode::UNAUTHORIZED,
            AuthError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            AuthError::KeysUnavailable
            | AuthError::IntrospectionUnavailable
            | AuthError::CircuitOpen { .. }
            | AuthError::RevocationsUnavailable { .. }
            | AuthError::DpopReplayUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The RFC 6750 `error` code, if the challenge carries one.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            AuthError::MissingToken => None,
            AuthError::InvalidRequest(_) => Some("invalid_request"),
            AuthError::InvalidToken(_) => Some("invalid_token"),
            AuthError::InsufficientScope { .. } => Some("insufficient_scope"),
            AuthError::InvalidDpopProof(_) => Some("invalid_dpop_proof"),
            AuthError::UseDpopNonce { .. } => Some("use_dpop_nonce"),
            AuthError::KeysUnavailable
            | AuthError::IntrospectionUnavailable
            | AuthError::CircuitOpen { .. }
            | AuthError::RevocationsUnavailable { .. }
            | AuthError::DpopReplayUnavailable { .. } => Some("temporarily_unavailable"),
        }
    }

    /// A stable, machine-readable reason code for audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidRequest(_) => "invalid_request",
            AuthError::InvalidToken(r) => r.code(),
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::IntrospectionUnavailable => "introspection_unavailable",
            AuthError::CircuitOpen { .. } => "circuit_open",
            AuthError::RevocationsUnavailable { .. } => "revocations_unavailable",
            AuthError::InvalidDpopProof(r) => r.code(),
            AuthError::UseDpopNonce { .. } => "use_dpop_nonce",
            AuthError::DpopReplayUnavailable { .. } => "dpop_replay_unavailable",
        }
    }
}

/// Why a policy does not load (feature `policy`), under [`ConfigError::Policy`]:
/// the server does not start, a reload keeps the previous policy.
#[cfg(feature = "policy")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No Rego module was given to the policy engine.
    #[error("no Rego policy module was loaded")]
    Empty,
    /// A policy file or directory could not be read.
    #[error("cannot read policy source {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The policy files kept changing while they were being read (a
    /// deployment still writing them); try again once it is done.
    #[error("policy sources changed while being read, {attempts} times in a row")]
    Unstable {
        /// How many reads were tried.
        attempts: usize,
    },
    /// A Rego module does not parse or compile (as Rego v1 nor as v0).
    #[error("policy module {module} does not compile: {message}")]
    Compile {
        /// The module's file name or given name.
        module: String,
        /// The compiler's message, with the position.
        message: String,
    },
    /// A data document is not a JSON object, or conflicts with another one.
    #[error("policy data document {document} is invalid: {message}")]
    Data {
        /// The document's file name or given name.
        document: String,
        /// What is wrong with it.
        message: String,
    },
    /// The configured entrypoint rule is declared by no loaded module.
    #[error("policy entrypoint {entrypoint} is not declared by any loaded module")]
    Entrypoint {
        /// The rule path, e.g. `data.mcp.authz.allow`.
        entrypoint: String,
    },
    /// The policy compiled but its smoke evaluation did not yield a boolean.
    #[error("policy failed its smoke evaluation: {message}")]
    Smoke {
        /// What the evaluation returned or why it failed.
        message: String,
    },
    /// A rule read on request (such as the limits rule) failed to evaluate.
    #[error("policy evaluation failed: {message}")]
    Evaluation {
        /// Why it failed.
        message: String,
    },
}

/// The JSON-RPC error code of every denial (policy, credentials, token
/// exchange, a missing caller).
///
/// JSON-RPC leaves -32000..-32099 to implementations; MCP defines no
/// "forbidden" code. The error's `data` is `{"error": "forbidden"}`, or
/// `{"error": "insufficient_scope", "scope": "<space-separated scopes>"}`
/// when the policy said which scopes would grant the request, so a transport
/// layer can answer HTTP 403 with a step-up challenge.
pub const PERMISSION_DENIED: rmcp::model::ErrorCode = rmcp::model::ErrorCode(-32003);

/// Why a tool did not get what it asked for: the caller, a permission, a
/// credential, a downstream token. One type for every extractor and check,
/// turned into one [`rmcp::ErrorData`] with `?`.
///
/// | variant | JSON-RPC error |
/// |---|---|
/// | [`Unauthenticated`](Self::Unauthenticated), [`Forbidden`](Self::Forbidden) | [`PERMISSION_DENIED`] (-32003), "permission denied" |
/// | [`NotFound`](Self::NotFound) | -32002 resource not found |
/// | [`NotConfigured`](Self::NotConfigured), [`Unavailable`](Self::Unavailable) | -32603 internal error |
///
/// The message names neither the policy's reasons nor whether a target
/// exists; audit events carry the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The request carries no authenticated caller: the stack is wired wrong
    /// (no bearer layer in front), or the work left the request's task.
    #[error("permission denied")]
    Unauthenticated,
    /// The policy, the secret store or the authorization server refused.
    #[error("permission denied")]
    Forbidden {
        /// Scopes that would grant the request, when the policy said so
        /// (a client can step up); empty otherwise.
        required_scopes: Vec<String>,
    },
    /// What was asked for does not exist for this caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The capability is not configured on this server.
    #[error("{0} is not configured on this server")]
    NotConfigured(&'static str),
    /// A dependency (Vault, the token endpoint) failed; try again later.
    #[error("{0} is temporarily unavailable")]
    Unavailable(&'static str),
}

impl Rejection {
    /// A refusal with no scope that would grant it.
    pub fn forbidden() -> Self {
        Rejection::Forbidden {
            required_scopes: Vec::new(),
        }
    }
}

impl From<Rejection> for rmcp::ErrorData {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            Rejection::Unauthenticated => rmcp::ErrorData::new(
                PERMISSION_DENIED,
                message,
                Some(serde_json::json!({ "error": "forbidden" })),
            ),
            Rejection::Forbidden { required_scopes } => {
                let data = if required_scopes.is_empty() {
                    serde_json::json!({ "error": "forbidden" })
                } else {
                    serde_json::json!({ "error": "insufficient_scope", "scope": required_scopes.join(" ") })
                };
                rmcp::ErrorData::new(PERMISSION_DENIED, message, Some(data))
            }
            Rejection::NotFound(_) => rmcp::ErrorData::resource_not_found(message, None),
            Rejection::NotConfigured(_) | Rejection::Unavailable(_) => rmcp::ErrorData::internal_error(message, None),
        }
    }
}

/// Why a bearer token was rejected (401 `invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRejection {
    /// Longer than the configured maximum token size.
    TooLarge,
    /// Not three base64url segments, or a segment is not valid JSON.
    Malformed,
    /// Five segments: an encrypted JWT (JWE), which this server does not accept.
    Encrypted,
    /// `alg` is missing, `none`, or not in the allow-list.
    AlgorithmNotAllowed,
    /// The header carries `crit` or `b64`, which this server does not implement.
    CriticalHeader,
    /// `typ` is not an access-token type (or strict mode requires `at+jwt`).
    WrongType,
    /// `iss` is missing or not a trusted issuer.
    UntrustedIssuer,
    /// No key of the issuer matches `kid` and `alg`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is missing.
    MissingExpiry,
    /// The token has expired.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iat` is in the future.
    IssuedInFuture,
    /// `aud` is missing or names no accepted audience.
    WrongAudience,
    /// A registered claim has the wrong type (for example `exp` as a string)
    /// or `sub` is missing.
    InvalidClaim,
    /// The introspection endpoint says the token is not active.
    Inactive,
    /// A token a client obtained for itself (client credentials), and this
    /// server accepts only tokens issued for a user
    /// ([`accept_client_credentials(false)`](crate::oauth::ResourceServerBuilder::accept_client_credentials)).
    ClientCredentials,
    /// A revocation matches the token, and the token was issued at or before
    /// it (or has no `iat`); see [`revoke`](crate::revoke).
    Revoked,
    /// `exp` is further from now (or from `iat`) than the longest lifetime
    /// this server accepts
    /// ([`max_token_lifetime`](crate::oauth::ResourceServerBuilder::max_token_lifetime)).
    LifetimeTooLong,
    /// A DPoP-bound token (`cnf.jkt`) presented without proving possession:
    /// as `Bearer`, or to a server with DPoP [off](crate::oauth::DpopMode::Off).
    DpopBound,
    /// A token without a DPoP binding presented with the `DPoP` scheme, or
    /// to a server that [requires](crate::oauth::DpopMode::Required) bound
    /// tokens.
    NotDpopBound,
    /// The DPoP proof is signed by another key than the one the token is
    /// bound to.
    DpopKeyMismatch,
    /// The token's `cnf` is of a kind this server cannot check (such as an
    /// mTLS certificate thumbprint), or malformed.
    UnsupportedBinding,
}

impl TokenRejection {
    /// A stable, machine-readable reason code.
    pub fn code(self) -> &'static str {
        match self {
            TokenRejection::TooLarge => "token_too_large",
            TokenRejection::Malformed => "malformed_token",
            TokenRejection::Encrypted => "encrypted_token",
            TokenRejection::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenRejection::CriticalHeader => "critical_header",
            TokenRejection::WrongType => "wrong_token_type",
            TokenRejection::UntrustedIssuer => "untrusted_issuer",
            TokenRejection::UnknownKey => "unknown_key",
            TokenRejection::BadSignature => "bad_signature",
            TokenRejection::MissingExpiry => "missing_exp",
            TokenRejection::Expired => "expired",
            TokenRejection::NotYetValid => "not_yet_valid",
            TokenRejection::IssuedInFuture => "issued_in_future",
            TokenRejection::WrongAudience => "wrong_audience",
            TokenRejection::InvalidClaim => "invalid_claim",
            TokenRejection::Inactive => "inactive_token",
            TokenRejection::ClientCredentials => "client_credentials_not_accepted",
            TokenRejection::Revoked => "revoked",
            TokenRejection::LifetimeTooLong => "lifetime_too_long",
            TokenRejection::DpopBound => "dpop_bound_token",
            TokenRejection::NotDpopBound => "not_dpop_bound",
            TokenRejection::DpopKeyMismatch => "dpop_key_mismatch",
            TokenRejection::UnsupportedBinding => "unsupported_confirmation",
        }
    }

    /// The short text sent as `error_description`.
    pub fn description(self) -> &'static str {
        match self {
            TokenRejection::TooLarge => "token too large",
            TokenRejection::Malformed => "malformed token",
            TokenRejection::Encrypted => "encrypted tokens are not accepted",
            TokenRejection::AlgorithmNotAllowed => "token algorithm not allowed",
            TokenRejection::CriticalHeader => "unsupported critical header",
            TokenRejection::WrongType => "not an access token",
            TokenRejection::UntrustedIssuer => "untrusted issuer",
            TokenRejection::UnknownKey => "unknown signing key",
            TokenRejection::BadSignature => "invalid signature",
            TokenRejection::MissingExpiry => "token has no expiry",
            TokenRejection::Expired => "token expired",
            TokenRejection::NotYetValid => "token not yet valid",
            TokenRejection::IssuedInFuture => "token issued in the future",
            TokenRejection::WrongAudience => "token not issued for this resource",
            TokenRejection::InvalidClaim => "invalid token claims",
            TokenRejection::Inactive => "token is not active",
            TokenRejection::ClientCredentials => "tokens of clients acting for themselves are not accepted",
            TokenRejection::Revoked => "token revoked",
            TokenRejection::LifetimeTooLong => "token lifetime too long",
            TokenRejection::DpopBound => "DPoP-bound token: present it with the DPoP scheme and a proof",
            TokenRejection::NotDpopBound => "a DPoP-bound token is required",
            TokenRejection::DpopKeyMismatch => "the DPoP proof is not signed by the token's key",
            TokenRejection::UnsupportedBinding => "unsupported token confirmation method",
        }
    }
}

/// Why a `DPoP` proof was refused (401 `invalid_dpop_proof`, RFC 9449
/// section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopRejection {
    /// The `DPoP` scheme was used without a `DPoP` header.
    Missing,
    /// More than one `DPoP` header.
    Multiple,
    /// The proof is longer than 8 KiB.
    TooLarge,
    /// Not a compact JWS of three base64url segments with JSON header and
    /// claims, or a claim of the wrong type.
    Malformed,
    /// `typ` is not `dpop+jwt`.
    WrongType,
    /// `alg` is missing, `none`, symmetric or not in the allow-list.
    AlgorithmNotAllowed,
    /// The header carries `crit` or `b64`.
    CriticalHeader,
    /// The `jwk` header is missing, not a key of `alg`'s type, or invalid.
    InvalidKey,
    /// The `jwk` header carries private key material.
    PrivateKey,
    /// The `jwk` is an RSA key shorter than 2048 bits.
    WeakKey,
    /// The signature does not verify with the `jwk`.
    BadSignature,
    /// `jti`, `htm`, `htu` or `iat` is missing, or `ath` is.
    MissingClaim,
    /// `htm` is not the request's method.
    WrongMethod,
    /// `htu` is not this resource's URI.
    WrongUri,
    /// `iat` is older than the accepted proof age.
    Stale,
    /// `iat` is in the future (beyond the leeway).
    IssuedInFuture,
    /// `ath` is not the SHA-256 of the presented token.
    WrongAccessTokenHash,
    /// The proof (its key and `jti`) was used before.
    Replayed,
}

impl DpopRejection {
    /// A stable, machine-readable reason code.
    pub fn code(self) -> &'static str {
        match self {
            DpopRejection::Missing => "dpop_proof_missing",
            DpopRejection::Multiple => "dpop_proof_multiple",
            DpopRejection::TooLarge => "dpop_proof_too_large",
            DpopRejection::Malformed => "dpop_proof_malformed",
            DpopRejection::WrongType => "dpop_proof_wrong_type",
            DpopRejection::AlgorithmNotAllowed => "dpop_algorithm_not_allowed",
            DpopRejection::CriticalHeader => "dpop_critical_header",
            DpopRejection::InvalidKey => "dpop_invalid_key",
            DpopRejection::PrivateKey => "dpop_private_key",
            DpopRejection::WeakKey => "dpop_weak_key",
            DpopRejection::BadSignature => "dpop_bad_signature",
            DpopRejection::MissingClaim => "dpop_missing_claim",
            DpopRejection::WrongMethod => "dpop_wrong_method",
            DpopRejection::WrongUri => "dpop_wrong_uri",
            DpopRejection::Stale => "dpop_proof_stale",
            DpopRejection::IssuedInFuture => "dpop_issued_in_future",
            DpopRejection::WrongAccessTokenHash => "dpop_wrong_ath",
            DpopRejection::Replayed => "dpop_proof_replayed",
        }
    }

    /// The short text sent as `error_description`.
    pub fn description(self) -> &'static str {
        match self {
            DpopRejection::Missing => "DPoP proof required",
            DpopRejection::Multiple => "more than one DPoP header",
            DpopRejection::TooLarge => "DPoP proof too large",
            DpopRejection::Malformed => "malformed DPoP proof",
            DpopRejection::WrongType => "DPoP proof typ must be dpop+jwt",
            DpopRejection::AlgorithmNotAllowed => "DPoP proof algorithm not allowed",
            DpopRejection::CriticalHeader => "unsupported critical header in DPoP proof",
            DpopRejection::InvalidKey => "invalid DPoP proof key",
            DpopRejection::PrivateKey => "DPoP proof key must be a public key",
            DpopRejection::WeakKey => "DPoP proof key too weak",
            DpopRejection::BadSignature => "invalid DPoP proof signature",
            DpopRejection::MissingClaim => "DPoP proof lacks a required claim",
            DpopRejection::WrongMethod => "DPoP proof htm does not match the request method",
            DpopRejection::WrongUri => "DPoP proof htu does not match this resource",
            DpopRejection::Stale => "DPoP proof too old",
            DpopRejection::IssuedInFuture => "DPoP proof issued in the future",
            DpopRejection::WrongAccessTokenHash => "DPoP proof ath does not match the access token",
            DpopRejection::Replayed => "DPoP proof already used",
        }
    }
}

impl From<TokenRejection> for AuthError {
    fn from(r: TokenRejection) -> Self {
        AuthError::InvalidToken(r)
    }
}
