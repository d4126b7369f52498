//! RFC 7662 token introspection: the validator for opaque access tokens (and
//! for providers where revocation must take effect at once).
//!
//! An introspection issuer is configured like any other, with
//! [`Issuer::introspection`]: the server asks the provider's introspection
//! endpoint about each new token, authenticating as a confidential client
//! ([`ClientAuth`]). The answer becomes the same [`Principal`] the JWT path
//! builds, behind the same [`BearerAuthLayer`](super::BearerAuthLayer), with
//! the same challenges.
//!
//! ```
//! use rmcp_guard::oauth::{ClientAuth, Issuer, ResourceServer};
//!
//! # fn main() -> Result<(), rmcp_guard::ConfigError> {
//! let rs = ResourceServer::builder(
//!     "https://mcp.example.com/mcp",
//!     Issuer::introspection(
//!         "https://idp.example.com",
//!         "https://idp.example.com/oauth2/introspect",
//!         ClientAuth::client_secret("mcp-server", "s3cret")?, // or client_secret_file
//!     ),
//! )
//! .required_scopes(["mcp:tools"])
//! .build()?;
//! assert_eq!(rs.issuers().collect::<Vec<_>>(), ["https://idp.example.com"]);
//! # Ok(()) }
//! ```
//!
//! # Which validator sees a token
//!
//! Exactly one, chosen before anything is verified: a JWS-shaped token (three
//! base64url segments whose payload is a JSON object) whose `iss` names one of
//! the **JWT issuers** is verified locally; every other token goes to the
//! introspection issuer. A token refused by one validator is never retried by
//! the other. At most one introspection issuer can be configured
//! ([`ConfigError::MultipleIntrospectionIssuers`]):
//! an opaque token carries no issuer, so with two there would be no sound
//! way to choose. Without an introspection issuer, every token takes the JWT
//! path, exactly as before.
//!
//! # What is checked
//!
//! After the provider's answer, the same rules as the JWT path, each with the
//! same rejection (401 `invalid_token`, or 403 `insufficient_scope`):
//!
//! | answer | rejection |
//! |---|---|
//! | `active: false`, or a 4xx other than a client-authentication error | `inactive_token` |
//! | `iss` present and not the configured issuer | `untrusted_issuer` |
//! | `token_type` not `Bearer`, or a `cnf` (sender-constrained, e.g. DPoP or mTLS) | `wrong_token_type` |
//! | no `exp` (this server never accepts a token it cannot bound) | `missing_exp` |
//! | `exp`, `nbf`, `iat` out of range (with the configured leeway) | `expired`, `not_yet_valid`, `issued_in_future` |
//! | `aud` missing or naming no accepted audience (RFC 8707) | `wrong_audience` |
//! | neither `sub` nor `client_id` | `invalid_claim` |
//! | a required scope missing from `scope` | 403 `insufficient_scope` |
//!
//! The subject is `sub`, or `client_id` for a client-credentials token that
//! has no `sub` (as RFC 9068 prescribes for JWTs). Tenant and groups come from
//! the configured claim names; every member of the answer is in
//! [`Principal::claims`].
//!
//! # Caching and load on the provider
//!
//! - An accepted answer is cached in the verified-token cache, at most
//!   [`introspection_cache_ttl`](super::ResourceServerBuilder::introspection_cache_ttl)
//!   (default 60 s) and never past `exp`: revocation at the provider takes
//!   effect within that time.
//! - A refused answer is cached for
//!   [`introspection_negative_cache_ttl`](super::ResourceServerBuilder::introspection_negative_cache_ttl)
//!   (default 10 s), bounded in size, so a flood of one bad token is not a
//!   flood at the provider.
//! - One request is in flight per token: concurrent requests with the same new
//!   token wait for the one answer. Requests for distinct new tokens are
//!   bounded too: at most
//!   [`introspection_max_in_flight`](super::ResourceServerBuilder::introspection_max_in_flight)
//!   (default 32) at once; the others wait their turn.
//!
//! # Provider down
//!
//! A timeout, a connection failure, a 5xx, an unreadable answer, or the
//! provider refusing this server's client credentials (`invalid_client`)
//! answers 503 ([`AuthError::IntrospectionUnavailable`], audit reason
//! `introspection_unavailable`), never allow, and is not cached. Tokens cached
//! before keep working until their cache entry ends.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse, BasicTokenResponse};
use oauth2::{
    AccessToken, EndpointNotSet, EndpointSet, ExtraTokenFields, IntrospectionUrl, RequestTokenError,
    StandardRevocableToken, StandardTokenIntrospectionResponse, TokenIntrospectionResponse,
};
use serde_json::{Map, Value};

use super::cache::{PrehashedState, TokenHash};
use super::client::{ClientAuth, HttpError, send};
use super::jwt::Failure;
use super::resource_server::Shared;
use crate::cache::{Limits, SingleFlight, Timestamp, TtlCache};
use crate::error::{AuthError, ConfigError, TokenRejection};
use crate::principal::Principal;

#[cfg(doc)]
use super::Issuer;

/// Every member of the answer that `oauth2` does not model itself.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub(crate) struct OtherMembers {
    #[serde(flatten)]
    members: Map<String, Value>,
}

impl ExtraTokenFields for OtherMembers {}

type Answer = StandardTokenIntrospectionResponse<OtherMembers, oauth2::basic::BasicTokenType>;

type IntrospectionClient = oauth2::Client<
    BasicErrorResponse,
    BasicTokenResponse,
    Answer,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
>;

/// Default upper bound on how long an accepted answer is reused.
pub(crate) const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default time a refused answer is reused.
pub(crate) const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// Default bound on introspection requests in flight at once.
pub(crate) const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// Bound on remembered refusals.
const NEGATIVE_CAPACITY: usize = 10_000;

/// A refusal, with what the provider said of the caller (for audit).
#[derive(Clone, Debug)]
struct Refusal {
    error: AuthError,
    subject: Option<String>,
    client_id: Option<String>,
}

impl From<TokenRejection> for Refusal {
    fn from(r: TokenRejection) -> Self {
        Refusal {
            error: r.into(),
            subject: None,
            client_id: None,
        }
    }
}

/// The introspection validator of one issuer.
pub(crate) struct Introspector {
    issuer: String,
    client: IntrospectionClient,
    http: reqwest::Client,
    cache_ttl: Duration,
    negative_ttl: Duration,
    negative: TtlCache<TokenHash, Refusal, PrehashedState>,
    flight: SingleFlight<TokenHash, Result<Principal, Refusal>>,
    permits: tokio::sync::Semaphore,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer)
            .field("endpoint", &self.client.introspection_url().as_str())
            .finish_non_exhaustive()
    }
}

impl Introspector {
    pub(crate) fn new(
        issuer: String,
        endpoint: &str,
        auth: &ClientAuth,
        http: reqwest::Client,
        cache_ttl: Duration,
        negative_ttl: Duration,
        max_in_flight: usize,
    ) -> Result<Self, ConfigError> {
        super::resource_server::parse_url("introspection_endpoint", endpoint)?;
        let url = IntrospectionUrl::new(endpoint.to_owned()).map_err(|_| ConfigError::InvalidUrl {
            what: "introspection_endpoint",
            url: endpoint.to_owned(),
            reason: "not an absolute URL",
        })?;
        let client = oauth2::Client::new(auth.oauth2_id())
            .set_client_secret(auth.oauth2_secret())
            .set_auth_type(auth.oauth2_auth_type())
            .set_introspection_url(url);
        Ok(Introspector {
            issuer,
            client,
            http,
            cache_ttl,
            negative_ttl,
            negative: TtlCache::with_hasher(Limits::entries(NEGATIVE_CAPACITY), PrehashedState::default()),
            flight: SingleFlight::new(),
            permits: tokio::sync::Semaphore::new(max_in_flight),
        })
    }

    /// The issuer identifier.
    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verify a token the verified-token cache did not know: from the
    /// negative cache, by joining a request in flight, or by asking the
    /// provider. Accepted answers go into the verified-token cache here.
    pub(crate) async fn verify(
        &self,
        shared: &Shared,
        token: &str,
        hash: TokenHash,
        now: u64,
    ) -> Result<Principal, Failure> {
        let result = match self.negative.get(&hash, Timestamp::now()) {
            Some(refusal) => Err(refusal),
            None => {
                self.flight
                    .run(hash, || async {
                        // Another flight may have finished just before this one began.
                        if let Some(principal) = shared.cache.get(&hash, now) {
                            return Ok(principal);
                        }
                        let result = self.ask(shared, token, now).await;
                        match &result {
                            Ok(principal) => shared.cache.insert_for(hash, principal, now, self.cache_ttl),
                            Err(refusal) if matches!(refusal.error, AuthError::InvalidToken(_)) => {
                                let at = Timestamp::now();
                                let until = at.saturating_add(self.negative_ttl);
                                self.negative.insert(hash, refusal.clone(), 0, until, at);
                            }
                            Err(_) => {}
                        }
                        result
                    })
                    .await
                    .0
            }
        };
        result.map_err(|r| Failure {
            error: r.error,
            issuer: Some(self.issuer.clone()),
            subject: r.subject,
            client_id: r.client_id,
        })
    }

    /// One introspection request and the checks on its answer.
    async fn ask(&self, shared: &Shared, token: &str, now: u64) -> Result<Principal, Refusal> {
        // Distinct new tokens are not merged by the single flight: bound them.
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(Refusal {
                error: AuthError::IntrospectionUnavailable,
                subject: None,
                client_id: None,
            });
        };
        let token = AccessToken::new(token.to_owned());
        let http = &self.http;
        let answer = self
            .client
            .introspect(&token)
            .set_token_type_hint("access_token")
            .request_async(&|request| send(http.clone(), request))
            .await;
        match answer {
            Ok(answer) => self.check(shared, &answer, now),
            Err(error) => Err(self.failed(error)),
        }
    }

    fn failed(&self, error: RequestTokenError<HttpError, BasicErrorResponse>) -> Refusal {
        let unavailable = Refusal {
            error: AuthError::IntrospectionUnavailable,
            subject: None,
            client_id: None,
        };
        match error {
            RequestTokenError::ServerResponse(response) => match response.error() {
                BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => {
                    tracing::error!(
                        issuer = %self.issuer,
                        error = response.error().as_ref(),
                        "the introspection endpoint refused this server's client credentials"
                    );
                    unavailable
                }
                other => {
                    tracing::debug!(issuer = %self.issuer, error = other.as_ref(), "introspection refused the token");
                    TokenRejection::Inactive.into()
                }
            },
            RequestTokenError::Request(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "introspection request failed");
                unavailable
            }
            RequestTokenError::Parse(..) => {
                // The body is not logged: it is the provider's, and may hold claims.
                tracing::warn!(issuer = %self.issuer, "introspection answer is not valid RFC 7662 JSON");
                unavailable
            }
            RequestTokenError::Other(reason) => {
                tracing::warn!(issuer = %self.issuer, reason = %reason, "introspection answer is unusable");
                unavailable
            }
        }
    }

    fn check(&self, shared: &Shared, answer: &Answer, now: u64) -> Result<Principal, Refusal> {
        if !answer.active() {
            return Err(TokenRejection::Inactive.into());
        }
        let client_id = answer
            .client_id()
            .map(|c| c.as_str().to_owned())
            .filter(|c| !c.is_empty());
        let subject = answer
            .sub()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or_else(|| client_id.clone());
        let fail = |r: TokenRejection| Refusal {
            error: r.into(),
            subject: subject.clone(),
            client_id: client_id.clone(),
        };
        if answer.iss().is_some_and(|iss| iss != self.issuer) {
            return Err(fail(TokenRejection::UntrustedIssuer));
        }
        let members = &answer.extra_fields().members;
        let bearer = answer
            .token_type()
            .is_none_or(|t| matches!(t, oauth2::basic::BasicTokenType::Bearer));
        if !bearer || members.contains_key("cnf") {
            return Err(fail(TokenRejection::WrongType));
        }
        let leeway = shared.leeway as i64;
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let exp = answer
            .exp()
            .map(|t| t.timestamp())
            .ok_or_else(|| fail(TokenRejection::MissingExpiry))?;
        if exp.saturating_add(leeway) <= now_i {
            return Err(fail(TokenRejection::Expired));
        }
        if answer
            .nbf()
            .is_some_and(|t| t.timestamp().saturating_sub(leeway) > now_i)
        {
            return Err(fail(TokenRejection::NotYetValid));
        }
        if answer
            .iat()
            .is_some_and(|t| t.timestamp().saturating_sub(leeway) > now_i)
        {
            return Err(fail(TokenRejection::IssuedInFuture));
        }
        let audiences = answer.aud().cloned().unwrap_or_default();
        if !audiences.iter().any(|a| shared.audiences.contains(a)) {
            return Err(fail(TokenRejection::WrongAudience));
        }
        let Some(subject) = subject.clone() else {
            return Err(fail(TokenRejection::InvalidClaim));
        };

        let mut claims = match serde_json::to_value(answer) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        claims.remove("active");
        let scopes: Vec<String> = answer
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str().to_owned()).collect())
            .unwrap_or_default();
        let groups = match members.get(&shared.groups_claim) {
            Some(Value::String(g)) => vec![g.clone()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut builder = Principal::unverified(self.issuer.clone(), subject)
            .scopes(scopes)
            .audiences(audiences)
            .expires_at_unix(u64::try_from(exp).unwrap_or(0))
            .groups(groups);
        if let Some(client_id) = client_id {
            builder = builder.client_id(client_id);
        }
        if let Some(Value::String(tenant)) = members.get(&shared.tenant_claim)
            && !tenant.is_empty()
        {
            builder = builder.tenant(tenant.clone());
        }
        Ok(builder.claims(claims).build())
    }
}

/// Whether `token` goes to the JWT path: a JWS whose unverified `iss` is one
/// of the JWT issuers. Nothing here is trusted; it only picks the validator.
pub(crate) fn is_jwt_issuer_token(shared: &Shared, token: &str) -> bool {
    if shared.issuers.is_empty() || token.bytes().filter(|b| *b == b'.').count() != 2 {
        return false;
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload)) = (segments.next(), segments.next()) else {
        return false;
    };
    if header.is_empty() || payload.is_empty() {
        return false;
    }
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(&bytes) else {
        return false;
    };
    match claims.get("iss") {
        Some(Value::String(iss)) => shared.issuers.iter().any(|i| i.url == *iss),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::{Issuer, ResourceServer};

    fn jws(payload: &Value) -> String {
        let p = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("eyJhbGciOiJSUzI1NiJ9.{p}.c2ln")
    }

    #[test]
    fn only_a_jws_of_a_jwt_issuer_takes_the_jwt_path() {
        let rs = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::with_jwks_uri("https://jwt.example.com", "https://jwt.example.com/jwks"),
        )
        .issuer(Issuer::introspection(
            "https://opaque.example.com",
            "https://opaque.example.com/introspect",
            ClientAuth::client_secret("id", "secret").unwrap(),
        ))
        .build()
        .unwrap();
        let shared = &rs.shared;
        assert!(shared.introspection.is_some());
        assert!(is_jwt_issuer_token(
            shared,
            &jws(&serde_json::json!({"iss": "https://jwt.example.com"}))
        ));
        for token in [
            jws(&serde_json::json!({"iss": "https://opaque.example.com"})),
            jws(&serde_json::json!({"iss": "https://jwt.example.com/"})),
            jws(&serde_json::json!({"sub": "x"})),
            jws(&serde_json::json!(["https://jwt.example.com"])),
            "opaque-token-value".to_owned(),
            "a.b.c".to_owned(),
            "a.b.c.d.e".to_owned(),
        ] {
            assert!(!is_jwt_issuer_token(shared, &token), "{token}");
        }
        // The introspection issuer is advertised like any other.
        assert_eq!(
            rs.issuers().collect::<Vec<_>>(),
            ["https://jwt.example.com", "https://opaque.example.com"]
        );
    }

    #[test]
    fn negative_cache_ttl_is_bounded() {
        let err = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::introspection(
                "https://opaque.example.com",
                "https://opaque.example.com/introspect",
                ClientAuth::client_secret("id", "secret").unwrap(),
            ),
        )
        .introspection_negative_cache_ttl(Duration::from_secs(301))
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::OutOfRange { .. }), "{err}");
    }
}
