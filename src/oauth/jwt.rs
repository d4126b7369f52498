//! Bearer JWT validation (RFC 9068 access tokens, RFC 8725 best practices).
//!
//! The token is parsed here, not by a general-purpose JWT decoder, so that
//! every check is explicit and has its own reason code:
//!
//! 1. exactly three non-empty base64url segments (five: a JWE, refused);
//! 2. header: `alg` named exactly as in the allow-list (`none`, `None`, HS* for
//!    a JWKS issuer... are refused), no `crit` or `b64`, an access-token `typ`;
//!    `jku`, `x5u`, `jwk` and `x5c` are ignored, never fetched or trusted;
//! 3. `iss` is exactly one of the trusted issuers, which selects the keys;
//! 4. the signature verifies with that issuer's key for `kid`, whose type and
//!    own `alg` fit the token's `alg` (see [`jwks`](super::jwks));
//! 5. claims: `exp` required and numeric, `nbf` and `iat` numeric when present,
//!    all with leeway; `aud` names an accepted audience (RFC 8707: a token
//!    minted for another resource is refused); `sub` is a non-empty string.

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::config::ClaimRules;
use super::jwks::KeyCache;
use crate::error::{AuthError, TokenRejection};
use crate::principal::{Principal, PrincipalKind};

/// A JWT issuer and its key cache.
pub(crate) struct TrustedIssuer {
    pub(crate) url: String,
    pub(crate) keys: KeyCache,
}

/// A refused token, with what is known of the caller for the audit event.
/// `subject` and `client_id` are set only once the signature has verified.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: AuthError,
    pub(crate) issuer: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) client_id: Option<String>,
}

impl From<TokenRejection> for Failure {
    fn from(r: TokenRejection) -> Self {
        Failure {
            error: r.into(),
            issuer: None,
            subject: None,
            client_id: None,
        }
    }
}

impl From<AuthError> for Failure {
    fn from(error: AuthError) -> Self {
        Failure {
            error,
            issuer: None,
            subject: None,
            client_id: None,
        }
    }
}

fn decode_json(segment: &str) -> Result<Map<String, Value>, TokenRejection> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| TokenRejection::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenRejection::Malformed)
}

/// Verify `token` (already checked against the size limit) at time `now`
/// (seconds since the Unix epoch).
pub(crate) async fn verify(
    rules: &ClaimRules,
    issuers: &[TrustedIssuer],
    token: &str,
    now: u64,
) -> Result<Principal, Failure> {
    let dots = token.bytes().filter(|b| *b == b'.').count();
    if dots == 4 {
        return Err(TokenRejection::Encrypted.into());
    }
    if dots != 2 {
        return Err(TokenRejection::Malformed.into());
    }
    let mut segments = token.splitn(3, '.');
    let (Some(h), Some(p), Some(s)) = (segments.next(), segments.next(), segments.next()) else {
        return Err(TokenRejection::Malformed.into());
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenRejection::Malformed.into());
    }
    let header = decode_json(h)?;
    let claims = decode_json(p)?;

    let alg = match header.get("alg") {
        Some(Value::String(name)) => Algorithm::from_str(name).map_err(|_| TokenRejection::AlgorithmNotAllowed)?,
        _ => return Err(TokenRejection::AlgorithmNotAllowed.into()),
    };
    if header.contains_key("crit") || header.contains_key("b64") {
        return Err(TokenRejection::CriticalHeader.into());
    }
    check_type(header.get("typ"), rules.require_access_token_type)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(TokenRejection::Malformed.into()),
    };

    let issuer = select_issuer(issuers, &claims)?;
    let with_issuer = |error: AuthError| Failure {
        error,
        issuer: Some(issuer.url.clone()),
        subject: None,
        client_id: None,
    };
    let allowed = match issuer.keys.shared_secret_alg() {
        Some(secret_alg) => alg == secret_alg,
        None => rules.algorithms.contains(&alg),
    };
    if !allowed {
        return Err(with_issuer(TokenRejection::AlgorithmNotAllowed.into()));
    }
    let key = issuer.keys.key_for(kid, alg).await.map_err(with_issuer)?;
    let message_len = h.len() + 1 + p.len();
    let verified = jsonwebtoken::crypto::verify(s, &token.as_bytes()[..message_len], &key.key, alg).unwrap_or(false);
    if !verified {
        return Err(with_issuer(TokenRejection::BadSignature.into()));
    }

    // The signature holds: from here on the claims are the issuer's word.
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(with_issuer(TokenRejection::InvalidClaim.into())),
    };
    let client_id = string_claim(&claims, "client_id").or_else(|| string_claim(&claims, "azp"));
    let fail = |r: TokenRejection| Failure {
        error: r.into(),
        issuer: Some(issuer.url.clone()),
        subject: Some(subject.clone()),
        client_id: client_id.clone(),
    };
    let check =
        check_times(&claims, now, rules.leeway).and_then(|exp| check_audience(rules, &claims).map(|aud| (exp, aud)));
    let (exp, audiences) = check.map_err(fail)?;

    // RFC 9068 section 2.2: without a resource owner, `sub` names the client.
    let azp = string_claim(&claims, "azp");
    let kind = match PrincipalKind::of(&subject, client_id.as_deref()) {
        PrincipalKind::User => PrincipalKind::of(&subject, azp.as_deref()),
        client => client,
    };
    let mut builder = Principal::unverified(issuer.url.clone(), subject)
        .kind(kind)
        .scopes(scopes(&claims))
        .implied_by(&rules.implications)
        .audiences(audiences)
        .expires_at_unix(exp)
        .groups(groups(claims.get(&rules.groups_claim)));
    if let Some(client_id) = client_id {
        builder = builder.client_id(client_id);
    }
    if let Some(tenant) = string_claim(&claims, &rules.tenant_claim) {
        builder = builder.tenant(tenant);
    }
    Ok(builder.claims(claims).build())
}

/// RFC 9068 section 2.1: `at+jwt`; plain `JWT` and no `typ` are common and
/// accepted unless strict mode is on. Anything else is some other kind of JWT.
fn check_type(typ: Option<&Value>, strict: bool) -> Result<(), TokenRejection> {
    let typ = match typ {
        None => None,
        Some(Value::String(t)) => Some(t.to_ascii_lowercase()),
        Some(_) => return Err(TokenRejection::WrongType),
    };
    let ok = match typ.as_deref() {
        Some("at+jwt" | "application/at+jwt") => true,
        None | Some("jwt" | "application/jwt") => !strict,
        Some(_) => false,
    };
    if ok { Ok(()) } else { Err(TokenRejection::WrongType) }
}

fn select_issuer<'a>(
    issuers: &'a [TrustedIssuer],
    claims: &Map<String, Value>,
) -> Result<&'a TrustedIssuer, TokenRejection> {
    let Some(Value::String(iss)) = claims.get("iss") else {
        return Err(TokenRejection::UntrustedIssuer);
    };
    issuers
        .iter()
        .find(|i| i.url == *iss)
        .ok_or(TokenRejection::UntrustedIssuer)
}

/// A NumericDate claim: absent, or a finite JSON number.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, TokenRejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or(TokenRejection::InvalidClaim),
        Some(_) => Err(TokenRejection::InvalidClaim),
    }
}

/// Returns `exp` in whole seconds.
fn check_times(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<u64, TokenRejection> {
    let now = now as f64;
    let leeway = leeway as f64;
    let exp = numeric_date(claims, "exp")?.ok_or(TokenRejection::MissingExpiry)?;
    if exp + leeway <= now {
        return Err(TokenRejection::Expired);
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| nbf - leeway > now) {
        return Err(TokenRejection::NotYetValid);
    }
    if numeric_date(claims, "iat")?.is_some_and(|iat| iat - leeway > now) {
        return Err(TokenRejection::IssuedInFuture);
    }
    Ok(exp.max(0.0).floor() as u64)
}

fn check_audience(rules: &ClaimRules, claims: &Map<String, Value>) -> Result<Vec<String>, TokenRejection> {
    let audiences = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(a) => out.push(a.clone()),
                    _ => return Err(TokenRejection::InvalidClaim),
                }
            }
            out
        }
        None => return Err(TokenRejection::WrongAudience),
        Some(_) => return Err(TokenRejection::InvalidClaim),
    };
    if audiences.iter().any(|a| rules.accepts_audience(a)) {
        Ok(audiences)
    } else {
        Err(TokenRejection::WrongAudience)
    }
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// `scope` (RFC 9068, space-separated) and `scp` (array, or a space-separated
/// string as some providers send it), merged.
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned)),
            _ => {}
        }
    }
    out
}

/// Groups: an array of strings (non-strings skipped) or a single string.
fn groups(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(g)) => vec![g.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn exp_must_be_a_number() {
        assert_eq!(
            check_times(&claims(json!({"exp": "9999999999"})), 100, 0),
            Err(TokenRejection::InvalidClaim)
        );
        assert_eq!(
            check_times(&claims(json!({})), 100, 0),
            Err(TokenRejection::MissingExpiry)
        );
        assert_eq!(
            check_times(&claims(json!({"exp": 99})), 100, 0),
            Err(TokenRejection::Expired)
        );
        assert_eq!(check_times(&claims(json!({"exp": 99})), 100, 5), Ok(99));
        assert_eq!(check_times(&claims(json!({"exp": 200.5})), 100, 0), Ok(200));
    }

    #[test]
    fn nbf_and_iat_with_leeway() {
        let c = claims(json!({"exp": 1000, "nbf": 130}));
        assert_eq!(check_times(&c, 100, 30), Ok(1000));
        assert_eq!(check_times(&c, 100, 29), Err(TokenRejection::NotYetValid));
        let c = claims(json!({"exp": 1000, "iat": 200}));
        assert_eq!(check_times(&c, 100, 30), Err(TokenRejection::IssuedInFuture));
        let c = claims(json!({"exp": 1000, "nbf": "soon"}));
        assert_eq!(check_times(&c, 100, 30), Err(TokenRejection::InvalidClaim));
    }

    #[test]
    fn token_types() {
        assert!(check_type(None, false).is_ok());
        assert!(check_type(Some(&json!("JWT")), false).is_ok());
        assert!(check_type(Some(&json!("at+JWT")), true).is_ok());
        assert!(check_type(Some(&json!("application/at+jwt")), true).is_ok());
        assert_eq!(check_type(None, true), Err(TokenRejection::WrongType));
        assert_eq!(check_type(Some(&json!("JWT")), true), Err(TokenRejection::WrongType));
        assert_eq!(
            check_type(Some(&json!("logout+jwt")), false),
            Err(TokenRejection::WrongType)
        );
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        assert_eq!(scopes(&claims(json!({"scope": "a  b"}))), vec!["a", "b"]);
        assert_eq!(scopes(&claims(json!({"scp": ["a", 1, "c"]}))), vec!["a", "c"]);
        assert_eq!(scopes(&claims(json!({"scp": "x y"}))), vec!["x", "y"]);
    }
}
