//! `WWW-Authenticate` challenges (RFC 6750 section 3, RFC 9449 section 7.1,
//! MCP 2025-11-25) and the rejection responses that carry them.

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
/// | situation | status | challenge |
/// |---|---|---|
/// | no credentials | 401 | `Bearer resource_metadata="…", scope="…"` (no error code) |
/// | malformed request | 400 | `Bearer error="invalid_request", …` |
/// | bad token | 401 | `Bearer error="invalid_token", error_description="…", resource_metadata="…"` |
/// | missing scope | 403 | `Bearer error="insufficient_scope", scope="<needed>", resource_metadata="…"` |
/// | keys unavailable | 503 | none; `Retry-After` |
/// | upstream's circuit breaker open | 503 | none; `Retry-After`: the breaker's remaining open time |
/// | revocations unknown (stale copy, full table) | 503 | none; `Retry-After` |
/// | bad DPoP proof | 401 | `DPoP error="invalid_dpop_proof", error_description="…", algs="…", …` |
/// | DPoP nonce needed | 401 | `DPoP error="use_dpop_nonce", …`; `DPoP-Nonce: <nonce>` |
/// | DPoP replay set full or unreachable | 503 | none; `Retry-After` |
///
/// When DPoP is on ([`DpopMode`](crate::oauth::DpopMode) `allowed` or
/// `required`), every 401 and 403 carries a `DPoP` challenge with `algs`
/// (RFC 9449 section 7.1) in its own `WWW-Authenticate` field, after the
/// `Bearer` one (none under `required`). An error about the proof or the
/// binding is named on the `DPoP` challenge only; an error about the token
/// itself, on both.
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
    dpop: Option<DpopChallenge>,
}

/// The `DPoP` challenge of a resource that takes DPoP.
#[derive(Debug)]
struct DpopChallenge {
    /// The accepted proof algorithms, space-separated.
    algs: String,
    /// Whether the `Bearer` scheme is still accepted (and challenged).
    bearer: bool,
}

/// Which challenge an error is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum About {
    /// No error: credentials are asked for.
    Nothing,
    /// The token or the request: named on every challenge.
    Token,
    /// The DPoP proof or binding: named on the `DPoP` challenge only.
    Dpop,
}

impl Challenges {
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // built by the resource server
    pub(crate) fn new(metadata_url: String, required_scopes: Vec<String>) -> Self {
        Challenges {
            inner: Arc::new(Inner {
                metadata_url,
                required_scopes,
                dpop: None,
            }),
        }
    }

    /// Add the `DPoP` challenge (`algs`), and keep the `Bearer` one only if
    /// bearer tokens are still accepted.
    #[cfg(feature = "jwt")]
    pub(crate) fn with_dpop(self, algs: &[String], bearer_accepted: bool) -> Self {
        Challenges {
            inner: Arc::new(Inner {
                metadata_url: self.inner.metadata_url.clone(),
                required_scopes: self.inner.required_scopes.clone(),
                dpop: Some(DpopChallenge {
                    algs: algs.join(" "),
                    bearer: bearer_accepted,
                }),
            }),
        }
    }

    /// The scopes every request needs.
    pub fn required_scopes(&self) -> &[String] {
        &self.inner.required_scopes
    }

    /// The first `WWW-Authenticate` value for `error` (the `Bearer` one
    /// when bearer tokens are accepted), or `None` when the answer carries
    /// no challenge (503). [`headers`](Self::headers) has them all.
    pub fn header(&self, error: &AuthError) -> Option<String> {
        self.headers(error).into_iter().next()
    }

    /// Every `WWW-Authenticate` value for `error`, in order (`Bearer`, then
    /// `DPoP`); empty when the answer carries no challenge (503).
    pub fn headers(&self, error: &AuthError) -> Vec<String> {
        let Some(params) = self.params(error) else {
            return Vec::new();
        };
        let about = about(error);
        let mut out = Vec::with_capacity(2);
        let bearer = self.inner.dpop.as_ref().is_none_or(|d| d.bearer);
        if bearer {
            // Without a DPoP challenge (DPoP off), the Bearer one names every error.
            let named = if about == About::Dpop && self.inner.dpop.is_some() {
                self.params(&AuthError::MissingToken).unwrap_or_default()
            } else {
                params.clone()
            };
            out.push(format!("Bearer {}", join(named)));
        }
        if let Some(dpop) = &self.inner.dpop {
            let mut named = params;
            // `algs` after the error (if any), before the rest.
            let at = named.iter().take_while(|(k, _)| k.starts_with("error")).count();
            named.insert(at, ("algs", quote(&dpop.algs)));
            out.push(format!("DPoP {}", join(named)));
        }
        out
    }

    /// The parameters of the challenge for `error`, or `None` for no
    /// challenge.
    fn params(&self, error: &AuthError) -> Option<Vec<(&'static str, String)>> {
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
        let mut params: Vec<(&'static str, String)> = Vec::with_capacity(4);
        match error {
            AuthError::KeysUnavailable
            | AuthError::IntrospectionUnavailable
            | AuthError::CircuitOpen { .. }
            | AuthError::RevocationsUnavailable { .. }
            | AuthError::DpopReplayUnavailable { .. } => {
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
            AuthError::InvalidRequest(_)
            | AuthError::InvalidToken(_)
            | AuthError::InvalidDpopProof(_)
            | AuthError::UseDpopNonce { .. } => {
                params.push(("error", quote(error.error_code().unwrap_or("invalid_token"))));
                params.push(("error_description", quote(&error.to_string())));
                params.push(("resource_metadata", metadata));
                if let Some(s) = scope(&self.inner.required_scopes) {
                    params.push(("scope", s));
                }
            }
        }
        Some(params)
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
        for value in self.headers(error) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
        }
        match error {
            AuthError::UseDpopNonce { nonce } => {
                if let Ok(value) = HeaderValue::from_str(nonce) {
                    headers.insert(DPOP_NONCE, value);
                }
            }
            AuthError::DpopReplayUnavailable { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
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

/// The `DPoP-Nonce` response header (RFC 9449 section 8).
pub(crate) const DPOP_NONCE: header::HeaderName = header::HeaderName::from_static("dpop-nonce");

/// Which challenge `error` is about.
fn about(error: &AuthError) -> About {
    use crate::error::TokenRejection;
    match error {
        AuthError::MissingToken => About::Nothing,
        AuthError::InvalidDpopProof(_)
        | AuthError::UseDpopNonce { .. }
        | AuthError::InvalidToken(
            TokenRejection::DpopBound | TokenRejection::NotDpopBound | TokenRejection::DpopKeyMismatch,
        ) => About::Dpop,
        _ => About::Token,
    }
}

fn join(params: Vec<(&'static str, String)>) -> String {
    let joined: Vec<String> = params.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    joined.join(", ")
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

    fn dpop(bearer: bool) -> Challenges {
        rs().with_dpop(&["ES256".into(), "EdDSA".into()], bearer)
    }

    #[test]
    fn dpop_challenges_follow_the_bearer_one() {
        let all = dpop(true).headers(&AuthError::MissingToken);
        assert_eq!(all.len(), 2);
        assert!(all[0].starts_with("Bearer resource_metadata="), "{all:?}");
        assert!(
            all[1].starts_with("DPoP algs=\"ES256 EdDSA\", resource_metadata="),
            "{all:?}"
        );
        assert!(all[1].ends_with("scope=\"mcp:tools\""), "{all:?}");
        let required = dpop(false).headers(&AuthError::MissingToken);
        assert_eq!(required.len(), 1);
        assert!(required[0].starts_with("DPoP algs="), "{required:?}");
    }

    #[test]
    fn a_proof_error_is_named_on_the_dpop_challenge_only() {
        let bad = AuthError::InvalidDpopProof(crate::error::DpopRejection::Replayed);
        let response = dpop(true).reject(&bad);
        assert_eq!(response.status(), 401);
        let values: Vec<&str> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values.len(), 2, "{values:?}");
        assert!(!values[0].contains("error="), "{values:?}");
        assert!(
            values[1].starts_with(
                "DPoP error=\"invalid_dpop_proof\", error_description=\"DPoP proof already used\", algs=\"ES256 EdDSA\""
            ),
            "{values:?}"
        );
        let bound = dpop(true).headers(&TokenRejection::DpopBound.into());
        assert!(!bound[0].contains("error="), "{bound:?}");
        assert!(bound[1].starts_with("DPoP error=\"invalid_token\""), "{bound:?}");
        // A bad token is named on both.
        let expired = dpop(true).headers(&TokenRejection::Expired.into());
        assert!(
            expired.iter().all(|c| c.contains("error=\"invalid_token\"")),
            "{expired:?}"
        );
    }

    #[test]
    fn a_nonce_error_carries_the_nonce() {
        let response = dpop(false).reject(&AuthError::UseDpopNonce { nonce: "n-1".into() });
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["dpop-nonce"], "n-1");
        let c = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(c.starts_with("DPoP error=\"use_dpop_nonce\""), "{c}");
        let busy = dpop(true).reject(&AuthError::DpopReplayUnavailable { retry_after_secs: 1 });
        assert_eq!(busy.status(), 503);
        assert!(busy.headers().get("www-authenticate").is_none());
        assert_eq!(busy.headers()["retry-after"], "1");
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\"");
    }
}
