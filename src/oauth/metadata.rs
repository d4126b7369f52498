//! RFC 9728 OAuth 2.0 Protected Resource Metadata.

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderValue, header};
use serde::{Deserialize, Serialize};

/// The RFC 9728 metadata document of a protected resource.
///
/// The document is built once from the [`ResourceServer`](super::ResourceServer) and served at both
/// `/.well-known/oauth-protected-resource` and the path-suffixed form for the
/// resource path (`/.well-known/oauth-protected-resource/mcp`), which is the
/// URL the `resource_metadata` challenge parameter points to.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use rmcp_guard::oauth::{Issuer, ResourceServer};
/// use tower::ServiceExt;
///
/// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
///     .required_scopes(["mcp:tools"])
///     .build()
///     .unwrap();
/// let response = rs
///     .metadata_router()
///     .oneshot(
///         http::Request::get("/.well-known/oauth-protected-resource/mcp")
///             .body(axum::body::Body::empty())
///             .unwrap(),
///     )
///     .await
///     .unwrap();
/// assert_eq!(response.status(), 200);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProtectedResourceMetadata {
    /// The canonical resource URI.
    pub resource: String,
    /// The trusted authorization servers (issuer identifiers).
    pub authorization_servers: Vec<String>,
    /// Scopes a client may request for this resource.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub scopes_supported: Vec<String>,
    /// How the token may be presented: only `header`.
    pub bearer_methods_supported: Vec<String>,
    /// Signing algorithms for signed resource responses (unused: none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource_signing_alg_values_supported: Option<Vec<String>>,
    /// A human-readable name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource_name: Option<String>,
    /// A URL of human-readable documentation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource_documentation: Option<String>,
    /// The DPoP proof algorithms accepted (RFC 9449 section 5.1); absent
    /// when DPoP is [off](super::DpopMode::Off).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
    /// `true` when every token must be DPoP-bound
    /// ([`DpopMode::Required`](super::DpopMode::Required)); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dpop_bound_access_tokens_required: Option<bool>,
}

/// The well-known path prefix of RFC 9728.
pub const WELL_KNOWN_PATH: &str = "/.well-known/oauth-protected-resource";

/// The metadata routes: `WELL_KNOWN_PATH` and, for a resource with a path,
/// `WELL_KNOWN_PATH` + that path (RFC 9728 section 3.1), both serving `body`.
pub(crate) fn routes<S>(body: bytes::Bytes, resource_path: &str) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let handler = move || {
        let body = body.clone();
        async move {
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600")),
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
                ],
                body,
            )
                .into_response()
        }
    };
    let mut router = Router::new().route(WELL_KNOWN_PATH, get(handler.clone()));
    let path = resource_path.trim_end_matches('/');
    if !path.is_empty() {
        router = router.route(&format!("{WELL_KNOWN_PATH}{path}"), get(handler));
    }
    router
}
