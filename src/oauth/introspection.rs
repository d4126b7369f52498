//! RFC 7662 token introspection: the validator for opaque access tokens (and

use std::fmt;
use std::time::Duration;

use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse, BasicTokenResponse};
use oauth2::{
    AccessToken, EndpointNotSet, EndpointSet, ExtraTokenFields, IntrospectionUrl, RequestTokenError,
    StandardRevocableToken, StandardTokenIntrospectionResponse, TokenIntrospectionResponse,
};
use serde_json::{Map, Value};

use super::cache::{PrehashedState, TokenCache, TokenHash};
use super::client::{ClientAuth, HttpError, send};
use super::config::{ClaimRules, IntrospectionConfig};
use super::jwt::Failure;
use crate::breaker::{Breaker, BreakerConfig, Upstream};
use crate::cache::{Limits, SingleFlight, Timestamp, TtlCache};
use crate::error::{AuthError, ConfigError, TokenRejection};
use crate::principal::{Principal, PrincipalKind};
use crate::telemetry::trace;

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
    /// Opened by requests that got no usable answer; see [`crate::breaker`].
    breaker: Breaker,
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
        config: &IntrospectionConfig,
        breaker: BreakerConfig,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        super::url::parse_url("introspection_endpoint", endpoint)?;
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
            cache_ttl: config.cache_ttl,
            negative_ttl: config.negative_cache_ttl,
            negative: TtlCache::with_hasher(Limits::entries(NEGATIVE_CAPACITY), PrehashedState::default()),
            flight: SingleFlight::new(),
            permits: tokio::sync::Semaphore::new(config.max_in_flight),
            breaker: Breaker::new(Upstream::Introspection, endpoint, breaker),
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
        rules: &ClaimRules,
        cache: &TokenCache,
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
                        if let Some(principal) = cache.get(&hash, now) {
                            return Ok(principal);
                        }
                        let result = self.ask(rules, token, now).await;
                        match &result {
                            Ok(principal) => cache.insert_for(hash, principal, now, self.cache_ttl),
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
    async fn ask(&self, rules: &ClaimRules, token: &str, now: u64) -> Result<Principal, Refusal> {
        // A dead endpoint is answered at once, not waited on.
        let attempt = self.breaker.admit().map_err(|open| Refusal {
            error: AuthError::CircuitOpen {
                upstream: "token introspection",
                retry_after_secs: open.retry_after_secs(),
            },
            subject: None,
            client_id: None,
        })?;
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
        let call = trace::Call::start(trace::Fetch::Introspection, self.client.introspection_url().as_str());
        let answer = call
            .run(
                self.client
                    .introspect(&token)
                    .set_token_type_hint("access_token")
                    .request_async(&|request| send(http.clone(), request)),
            )
            .await;
        // Any answer, a refusal too, is the endpoint working; no answer, a
        // 5xx (`send` makes it a request error) or an unreadable one is not.
        let answered = matches!(answer, Ok(_) | Err(RequestTokenError::ServerResponse(_)));
        call.finish(answered);
        attempt.settle(answered);
        match answer {
            Ok(answer) => self.check(rules, &answer, now),
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

    fn check(&self, rules: &ClaimRules, answer: &Answer, now: u64) -> Result<Principal, Refusal> {
        if !answer.active() {
            return Err(TokenRejection::Inactive.into());
        }
        let client_id = answer
            .client_id()
            .map(|c| c.as_str().to_owned())
            .filter(|c| !c.is_empty());
        let user = answer.sub().filter(|s| !s.is_empty()).map(str::to_owned);
        // No `sub`: the token is the client's own (client credentials), and
        // its subject is the client id; a `sub` equal to the client id too.
        let kind = match &user {
            Some(sub) => PrincipalKind::of(sub, client_id.as_deref()),
            None => PrincipalKind::Client,
        };
        let subject = user.or_else(|| client_id.clone());
        let fail = |r: TokenRejection| Refusal {
            error: r.into(),
            subject: subject.clone(),
            client_id: client_id.clone(),
        };
        if answer.iss().is_some_and(|iss| iss != self.issuer) {
            return Err(fail(TokenRejection::UntrustedIssuer));
        }
        let members = &answer.extra_fields().members;
        // A bearer token, or a DPoP-bound one (RFC 9449 section 6.2:
        // `token_type` DPoP with `cnf.jkt`); the binding itself is checked
        // against the request's proof like a JWT's `cnf`.
        let known_type = match answer.token_type() {
            None | Some(oauth2::basic::BasicTokenType::Bearer) => true,
            Some(oauth2::basic::BasicTokenType::Extension(t)) => {
                t.eq_ignore_ascii_case("dpop") && members.contains_key("cnf")
            }
            Some(_) => false,
        };
        if !known_type {
            return Err(fail(TokenRejection::WrongType));
        }
        let leeway = rules.leeway as i64;
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
        if !audiences.iter().any(|a| rules.accepts_audience(a)) {
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
        let groups = match members.get(&rules.groups_claim) {
            Some(Value::String(g)) => vec![g.clone()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut builder = Principal::unverified(self.issuer.clone(), subject)
            .kind(kind)
            .scopes(scopes)
            .implied_by(&rules.implications)
            .audiences(audiences)
            .expires_at_unix(u64::try_from(exp).unwrap_or(0))
            .groups(groups);
        if let Some(client_id) = client_id {
            builder = builder.client_id(client_id);
        }
        if let Some(Value::String(tenant)) = members.get(&rules.tenant_claim)
            && !tenant.is_empty()
        {
            builder = builder.tenant(tenant.clone());
        }
        Ok(builder.claims(claims).build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_cache_ttl_is_bounded() {
        let config = IntrospectionConfig::default().negative_cache_ttl(Duration::from_secs(301));
        assert!(matches!(config.check(), Err(ConfigError::OutOfRange { .. })));
        let config = IntrospectionConfig::default().max_in_flight(0);
        assert!(matches!(config.check(), Err(ConfigError::OutOfRange { .. })));
    }
}
