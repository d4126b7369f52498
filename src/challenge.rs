//! `WWW-Authenticate` challenges (RFC 6750 section 3, MCP 2025-11-25) and the

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::error::AuthError;
use crate::scope::advertised;

/// The challenges of one resource: its metadata URL and the scopes every
/// request needs. Built by the resource server
/// ([`ResourceServer::challenges`](crate::oauth::ResourceServer::challenges)); cheap
/// to clone.
///
/// rejection responses that carry them.
///
/// | situation | status | challenge |
/// |---|---|---|
/// | no credentials | 401 | `Bearer resource_metadata="…", scope="…"` (no error code) |
/// | malformed request | 400 | `Bearer error="invalid_request", …` |
/// | bad token | 401 | `Bearer error="invalid_token", error_description="…", resource_metadata="…"` |
/// | missing scope | 403 | `Bearer error="insufficient_scope", scope="<needed>", resource_metadata="…"` |
/// | keys unavailable | 503 | none; `Retry-After` |
/// | upstream's circuit breaker open | 503 | none; `Retry-After`: the breaker's remaining open time |
/// | revocations unknown (stale copy, full table) | 503 | none; `Retry-After` |
///
/// The body is a short JSON object `{"error": …, "error_description": …}`.
/// Nothing in a rejection is copied from the request, so a token can never
/// be echoed.
///
/// ```
/// use rmcp_guard::AuthError;
/// use rmcp_guard::oauth::{Issuer, ResourceServer};
///
/// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
///     .required_scopes(["mcp:tools"])
///     .build()
///     .unwrap();
/// let response = rs.challenges().reject(&AuthError::MissingToken);
/// assert_eq!(response.status(), 401);
/// assert_eq!(
///     response.headers()["www-authenticate"],
///     r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", scope="mcp:tools""#
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Challenges {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    metadata_url: String,
    required_scopes: Vec<String>,
}

impl Challenges {
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // built by the resource server
    pub(crate) fn new(metadata_url: String, required_scopes: Vec<String>) -> Self {
        Challenges {
            inner: Arc::new(Inner {
                metadata_url,
                required_scopes,
            }),
        }
    }

    /// The scopes every request needs.
    pub fn required_scopes(&self) -> &[String] {
        &self.inner.required_scopes
    }

    /// The `WWW-Authenticate` value for `error`, or `None` when the answer
    /// carries no challenge (503).
    pub fn header(&self, error: &AuthError) -> Option<String> {
        let metadata = quote(&self.inner.metadata_url);
        // One `scope=` naming every scope needed, deduplicated, in order,
        // never `offline_access` (not a resource requirement).
        let scope = |scopes: &[String]| {
            let mut named: Vec<&str> = Vec::with_capacity(scopes.len());
            for s in scopes.iter().map(String::as_str).filter(|s| advertised(s)) {
                if !named.contains(&s) {
                    named.push(s);
                }
            }
            (!named.is_empty()).then(|| quote(&named.join(" ")))
        };
        let mut params: Vec<(&str, String)> = Vec::with_capacity(4);
        match error {
            AuthError::KeysUnavailable
            | AuthError::IntrospectionUnavailable
            | AuthError::CircuitOpen { .. }
            | AuthError::RevocationsUnavailable { .. } => {
                return None;
            }
            AuthError::MissingToken => {
                params.push(("resource_metadata", metadata));
                if let Some(s) = scope(&self.inner.required_scopes) {
                    params.push(("scope", s));
                }
            }
            AuthError::InsufficientScope { required } => {
                params.push(("error", quote("insufficient_scope")));
                if let Some(s) = scope(required) {
                    params.push(("scope", s));
                }
                params.push(("resource_metadata", metadata));
                params.push(("error_description", quote(&error.to_string())));
            }
            AuthError::InvalidRequest(_) | AuthError::InvalidToken(_) => {
                params.push(("error", quote(error.error_code().unwrap_or("invalid_token"))));
                params.push(("error_description", quote(&error.to_string())));
                params.push(("resource_metadata", metadata));
                if let Some(s) = scope(&self.inner.required_scopes) {
                    params.push(("scope", s));
                }
            }
        }
        let joined: Vec<String> = params.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        Some(format!("Bearer {}", joined.join(", ")))
    }

    /// The whole rejection: status, challenge, `Cache-Control: no-store`,
    /// `Retry-After` for a 503, and a short JSON body.
    pub fn reject(&self, error: &AuthError) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": error.error_code().unwrap_or("unauthorized"),
            "error_description": error.to_string(),
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = error.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(value) = self.header(error).and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        match error {
            AuthError::KeysUnavailable | AuthError::IntrospectionUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            AuthError::CircuitOpen { retry_after_secs, .. }
            | AuthError::RevocationsUnavailable { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TokenRejection;

    fn rs() -> Challenges {
        Challenges::new(
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp".into(),
            vec!["mcp:tools".into()],
        )
    }

    #[test]
    fn invalid_token_challenge() {
        let c = rs().header(&TokenRejection::Expired.into()).unwrap();
        assert_eq!(
            c,
            "Bearer error=\"invalid_token\", error_description=\"token expired\", \
             resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:tools\""
        );
    }

    #[test]
    fn insufficient_scope_challenge_names_the_needed_scopes() {
        let err = AuthError::InsufficientScope {
            required: vec!["mcp:tools".into(), "admin".into()],
        };
        let response = rs().reject(&err);
        assert_eq!(response.status(), 403);
        let c = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            c.starts_with("Bearer error=\"insufficient_scope\", scope=\"mcp:tools admin\""),
            "{c}"
        );
        assert!(c.contains("resource_metadata="), "{c}");
    }

    #[test]
    fn offline_access_is_never_in_a_challenge() {
        let err = AuthError::InsufficientScope {
            required: vec![
                "mcp:tools".into(),
                "offline_access".into(),
                "mcp:admin".into(),
                "mcp:tools".into(),
            ],
        };
        let c = rs().header(&err).unwrap();
        assert!(c.contains("scope=\"mcp:tools mcp:admin\""), "{c}");
        assert!(!c.contains("offline_access"), "{c}");
        let only = AuthError::InsufficientScope {
            required: vec!["offline_access".into()],
        };
        assert!(!rs().header(&only).unwrap().contains("scope="));
    }

    #[test]
    fn unavailable_has_no_challenge() {
        let response = rs().reject(&AuthError::KeysUnavailable);
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("www-authenticate").is_none());
        assert_eq!(response.headers()["retry-after"], "5");
        let open = AuthError::CircuitOpen {
            upstream: "token introspection",
            retry_after_secs: 7,
        };
        let response = rs().reject(&open);
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("www-authenticate").is_none());
        assert_eq!(response.headers()["retry-after"], "7");
        let stale = rs().reject(&AuthError::RevocationsUnavailable { retry_after_secs: 1 });
        assert_eq!(stale.status(), 503);
        assert!(stale.headers().get("www-authenticate").is_none());
        assert_eq!(stale.headers()["retry-after"], "1");
    }

    #[test]
    fn a_revoked_token_gets_invalid_token() {
        let response = rs().reject(&TokenRejection::Revoked.into());
        assert_eq!(response.status(), 401);
        let c = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            c.starts_with("Bearer error=\"invalid_token\", error_description=\"token revoked\""),
            "{c}"
        );
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\"");
    }
}
