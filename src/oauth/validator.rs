//! [`TokenValidator`]: from a bearer token to a verified [`Principal`].
//!
//! The validator owns everything that decides whether a token is valid: the
//! claim rules, the trusted issuers and their key caches, the verified-token
//! cache and the introspection validator. It knows nothing of HTTP; the
//! resource server reads the request and turns a refusal into a response.
//!
//! # Which validator sees a token
//!
//! Exactly one, chosen before anything is verified: a JWS-shaped token whose
//! unverified `iss` names one of the JWT issuers is verified locally
//! ([`jwt`](super::jwt)); with an introspection issuer configured, every other
//! token goes there ([`introspection`](super::introspection)). A token
//! refused by one is never retried by the other.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::cache::{TokenCache, TokenHash};
use super::config::{ClaimRules, KeyRefresh, TokenCacheConfig, TokenRules};
use super::issuer::{Issuer, IssuerKeys};
use super::jwks::{KeyCache, KeySource};
use super::jwt::{self, Failure, TrustedIssuer};
use super::url::{discovery_urls, parse_identifier, parse_url};
use crate::cache::Limits;
use crate::error::{AuthError, ConfigError};
use crate::principal::Principal;
use crate::scope::ScopeImplications;

/// Checks tokens; see the [module docs](self).
pub(crate) struct TokenValidator {
    rules: ClaimRules,
    issuers: Vec<TrustedIssuer>,
    cache: TokenCache,
    #[cfg(feature = "introspection")]
    introspection: Option<super::introspection::Introspector>,
}

/// What the validator is built from.
pub(crate) struct ValidatorConfig<'a> {
    pub(crate) issuers: Vec<Issuer>,
    pub(crate) audiences: HashSet<String>,
    pub(crate) implications: ScopeImplications,
    pub(crate) rules: &'a TokenRules,
    pub(crate) keys: KeyRefresh,
    pub(crate) breaker: &'a crate::breaker::BreakerConfig,
    pub(crate) cache: &'a TokenCacheConfig,
    #[cfg(feature = "introspection")]
    pub(crate) introspection: &'a super::config::IntrospectionConfig,
    pub(crate) http: reqwest::Client,
}

impl TokenValidator {
    pub(crate) fn new(config: ValidatorConfig<'_>) -> Result<Self, ConfigError> {
        let mut rules = ClaimRules::new(config.rules, config.audiences)?;
        rules.implications = config.implications;
        config.keys.check()?;
        config.breaker.check()?;
        #[cfg(feature = "introspection")]
        let mut introspection: Option<super::introspection::Introspector> = None;
        let mut seen = HashSet::new();
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for issuer in config.issuers {
            let url = parse_identifier("issuer", &issuer.url)?;
            if !seen.insert(issuer.url.clone()) {
                return Err(ConfigError::DuplicateIssuer(issuer.url));
            }
            let source = match issuer.keys {
                IssuerKeys::Discover => KeySource::Discover {
                    candidates: discovery_urls(&url),
                },
                IssuerKeys::JwksUri(uri) => {
                    parse_url("jwks_uri", &uri)?;
                    KeySource::JwksUri(uri)
                }
                IssuerKeys::SharedSecret { secret, alg } => {
                    let min = match alg {
                        jsonwebtoken::Algorithm::HS256 => 32,
                        jsonwebtoken::Algorithm::HS384 => 48,
                        jsonwebtoken::Algorithm::HS512 => 64,
                        other => {
                            return Err(ConfigError::AlgorithmNotAllowed {
                                alg: format!("{other:?}"),
                                reason: "a shared secret signs only with HS256, HS384 or HS512",
                            });
                        }
                    };
                    if secret.len() < min {
                        return Err(ConfigError::SharedSecretTooShort {
                            alg: format!("{alg:?}"),
                            min,
                        });
                    }
                    KeySource::SharedSecret { secret, alg }
                }
                #[cfg(feature = "introspection")]
                IssuerKeys::Introspection { endpoint, auth } => {
                    if let Some(first) = &introspection {
                        return Err(ConfigError::MultipleIntrospectionIssuers(
                            first.issuer().to_owned(),
                            issuer.url,
                        ));
                    }
                    introspection = Some(super::introspection::Introspector::new(
                        issuer.url,
                        &endpoint,
                        &auth,
                        config.http.clone(),
                        config.introspection,
                        config.breaker.clone(),
                    )?);
                    continue;
                }
            };
            issuers.push(TrustedIssuer {
                keys: KeyCache::new(
                    issuer.url.clone(),
                    source,
                    config.http.clone(),
                    config.keys.clone(),
                    config.breaker.clone(),
                ),
                url: issuer.url,
            });
        }
        Ok(TokenValidator {
            rules,
            issuers,
            cache: TokenCache::new(
                Limits::entries(config.cache.capacity).bytes(config.cache.max_bytes),
                config.cache.ttl,
            ),
            #[cfg(feature = "introspection")]
            introspection,
        })
    }

    /// A token verified before and still valid at `now`.
    pub(crate) fn cache_usage(&self) -> super::cache::CacheUsage {
        self.cache.usage()
    }

    pub(crate) fn cached(&self, hash: &TokenHash, now: u64) -> Option<Principal> {
        self.cache.get(hash, now)
    }

    /// Verify a token the cache did not know; a valid principal is in the
    /// cache afterwards.
    pub(crate) async fn verify(&self, token: &str, hash: TokenHash, now: u64) -> Result<Principal, Failure> {
        #[cfg(feature = "introspection")]
        if let Some(introspector) = &self.introspection
            && !self.is_jwt_issuer_token(token)
        {
            return introspector.verify(&self.rules, &self.cache, token, hash, now).await;
        }
        let principal = jwt::verify(&self.rules, &self.issuers, token, now).await?;
        self.cache.insert(hash, &principal, now);
        Ok(principal)
    }

    /// Fetch every JWT issuer's signing keys now.
    pub(crate) async fn warm_up(&self) -> Result<(), AuthError> {
        for issuer in &self.issuers {
            issuer.keys.ensure_loaded().await?;
        }
        Ok(())
    }

    /// Whether `token` goes to the JWT path: a JWS whose unverified `iss` is
    /// one of the JWT issuers. Nothing here is trusted; it only picks the
    /// validator.
    #[cfg_attr(not(feature = "introspection"), allow(dead_code))]
    fn is_jwt_issuer_token(&self, token: &str) -> bool {
        if self.issuers.is_empty() || token.bytes().filter(|b| *b == b'.').count() != 2 {
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
            Some(Value::String(iss)) => self.issuers.iter().any(|i| i.url == *iss),
            _ => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn audiences(&self) -> &HashSet<String> {
        &self.rules.audiences
    }
}

#[cfg(all(test, feature = "introspection"))]
mod tests {
    use super::*;
    use crate::oauth::{ClientAuth, Issuer, ResourceServer};

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
        let validator = rs.validator();
        assert!(validator.introspection.is_some());
        assert!(validator.is_jwt_issuer_token(&jws(&serde_json::json!({"iss": "https://jwt.example.com"}))));
        for token in [
            jws(&serde_json::json!({"iss": "https://opaque.example.com"})),
            jws(&serde_json::json!({"iss": "https://jwt.example.com/"})),
            jws(&serde_json::json!({"sub": "x"})),
            jws(&serde_json::json!(["https://jwt.example.com"])),
            "opaque-token-value".to_owned(),
            "a.b.c".to_owned(),
            "a.b.c.d.e".to_owned(),
        ] {
            assert!(!validator.is_jwt_issuer_token(&token), "{token}");
        }
        // The introspection issuer is advertised like any other.
        assert_eq!(
            rs.issuers().collect::<Vec<_>>(),
            ["https://jwt.example.com", "https://opaque.example.com"]
        );
    }
}
