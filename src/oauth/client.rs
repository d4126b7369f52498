//! This server as an OAuth client: its credentials ([`ClientAuth`](super::ClientAuth)) and the
//! HTTP hook that carries `oauth2` requests over the crate's one reqwest.
//!
//! Introspection ([`introspection`](super::introspection)) and token exchange
//! ([`exchange`](super::exchange)) authenticate to the authorization server as
//! a confidential client. The secret is given as a value or read from a file
//! (a Kubernetes secret mount, a systemd credential), zeroized on drop and
//! never shown by `Debug`.
//!
//! ```
//! use rmcp_guard::oauth::ClientAuth;
//!
//! # fn main() -> Result<(), rmcp_guard::ConfigError> {
//! let auth = ClientAuth::client_secret("mcp-server", "s3cret-from-the-vault")?;
//! assert!(!format!("{auth:?}").contains("s3cret"));
//! # let dir = std::env::temp_dir().join(format!("rmcp-guard-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("client_secret");
//! # std::fs::write(&path, "from-a-file\n").unwrap();
//! // A trailing newline (as `echo` writes it) is not part of the secret.
//! let from_file = ClientAuth::client_secret_file("mcp-server", &path)?;
//! assert_eq!(from_file.client_id(), "mcp-server");
//! # Ok(()) }
//! ```
//!
//! `oauth2` is used with its default features off (they would bring a second
//! reqwest and `ring`); every request goes through a closure that `oauth2`
//! accepts as its async HTTP client ([`oauth2::AsyncHttpClient`]) and sends it
//! with the crate's reqwest 0.13. Responses are read up to a bound (64 KiB),
//! redirects are never followed, and the client's timeouts apply.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use oauth2::{ClientId, ClientSecret, HttpRequest, HttpResponse};

use crate::error::ConfigError;

/// The largest response body read from an authorization server.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How this server authenticates to the authorization server.
#[derive(Clone)]
pub struct ClientAuth {
    client_id: ClientId,
    secret: Arc<ClientSecret>,
    method: AuthMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthMethod {
    Basic,
    Post,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("client_id", &self.client_id.as_str())
            .field("secret", &"[REDACTED]")
            .field("method", &self.method_name())
            .finish()
    }
}

impl ClientAuth {
    /// A confidential client with a shared secret, sent as HTTP Basic
    /// (`client_secret_basic`, RFC 6749 section 2.3.1).
    ///
    /// Fails when the id or the secret is empty.
    pub fn client_secret(client_id: impl Into<String>, secret: impl Into<String>) -> Result<Self, ConfigError> {
        let client_id = client_id.into();
        let secret = zeroize::Zeroizing::new(secret.into());
        if client_id.is_empty() {
            return Err(ConfigError::EmptyClientCredential("client id"));
        }
        if secret.is_empty() {
            return Err(ConfigError::EmptyClientCredential("client secret"));
        }
        Ok(ClientAuth {
            client_id: ClientId::new(client_id),
            secret: Arc::new(ClientSecret::new(secret.as_str().to_owned())),
            method: AuthMethod::Basic,
        })
    }

    /// Like [`client_secret`](Self::client_secret), with the secret read now
    /// from `path`. Trailing whitespace and newlines are not part of the
    /// secret.
    pub fn client_secret_file(client_id: impl Into<String>, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ClientSecretFile {
            path: path.to_owned(),
            source,
        })?;
        let text = zeroize::Zeroizing::new(text);
        Self::client_secret(client_id, text.trim_end())
    }

    /// Send the credentials as `client_id` and `client_secret` form fields
    /// (`client_secret_post`) instead of HTTP Basic, for providers that only
    /// accept that. Defaults to `client_secret_basic`.
    pub fn secret_in_body(mut self) -> Self {
        self.method = AuthMethod::Post;
        self
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        self.client_id.as_str()
    }

    fn method_name(&self) -> &'static str {
        match self.method {
            AuthMethod::Basic => "client_secret_basic",
            AuthMethod::Post => "client_secret_post",
        }
    }

    pub(crate) fn oauth2_id(&self) -> ClientId {
        self.client_id.clone()
    }

    pub(crate) fn oauth2_secret(&self) -> ClientSecret {
        (*self.secret).clone()
    }

    pub(crate) fn oauth2_auth_type(&self) -> oauth2::AuthType {
        match self.method {
            AuthMethod::Basic => oauth2::AuthType::BasicAuth,
            AuthMethod::Post => oauth2::AuthType::RequestBody,
        }
    }

    /// Authenticate a hand-built form request the way `oauth2` does: Basic
    /// with the form-urlencoded id and secret, or both in the body.
    #[cfg_attr(not(feature = "exchange"), allow(dead_code))] // token exchange's own request
    pub(crate) fn apply(
        &self,
        builder: http::request::Builder,
        form: &mut url::form_urlencoded::Serializer<'_, String>,
    ) -> Result<http::request::Builder, http::Error> {
        use base64::Engine as _;
        match self.method {
            AuthMethod::Basic => {
                let id: String = url::form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect();
                let secret = zeroize::Zeroizing::new(
                    url::form_urlencoded::byte_serialize(self.secret.secret().as_bytes()).collect::<String>(),
                );
                let pair = zeroize::Zeroizing::new(format!("{id}:{}", secret.as_str()));
                let credential = zeroize::Zeroizing::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
                ));
                let mut value = http::HeaderValue::from_str(&credential)?;
                value.set_sensitive(true);
                Ok(builder.header(http::header::AUTHORIZATION, value))
            }
            AuthMethod::Post => {
                form.append_pair("client_id", self.client_id.as_str());
                form.append_pair("client_secret", self.secret.secret());
                Ok(builder)
            }
        }
    }
}

/// Why the HTTP hook failed. Its text names the kind of failure, never a
/// request or response body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HttpError(String);

/// The async HTTP client handed to `oauth2`: one request through `client`,
/// carrying the current span's W3C trace context (feature `telemetry`),
/// the response body read up to [`MAX_RESPONSE_BYTES`]. A 5xx answer is an
/// error, like a connection failure.
pub(crate) async fn send(client: reqwest::Client, request: HttpRequest) -> Result<HttpResponse, HttpError> {
    let mut request = reqwest::Request::try_from(request).map_err(|e| HttpError(format!("bad request: {e}")))?;
    // The trace context of the caller's span (introspection, token endpoint).
    crate::telemetry::trace::inject(request.headers_mut());
    let mut response = client.execute(request).await.map_err(|e| {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        HttpError(kind.to_owned())
    })?;
    // A 5xx is the server failing, whatever its body says: `oauth2` would
    // parse a JSON error body (`server_error`, `temporarily_unavailable`)
    // as a refusal of the request, and a refused token is a 401 the client
    // acts on. Report it as a failed request instead (503, not cached).
    if response.status().is_server_error() {
        return Err(HttpError(format!("server error ({})", response.status())));
    }
    let mut builder = http::Response::builder().status(response.status());
    if let Some(content_type) = response.headers().get(http::header::CONTENT_TYPE) {
        builder = builder.header(http::header::CONTENT_TYPE, content_type.clone());
    }
    // A token endpoint's DPoP nonce (RFC 9449 section 8).
    if let Some(nonce) = response.headers().get("dpop-nonce") {
        builder = builder.header("dpop-nonce", nonce.clone());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| HttpError("reading the response failed".to_owned()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError("response too large".to_owned()));
        }
        body.extend_from_slice(&chunk);
    }
    builder.body(body).map_err(|e| HttpError(format!("bad response: {e}")))
}

/// Read `field` (an endpoint URL, such as `token_endpoint`) from the
/// issuer's RFC 8414 metadata, else its OpenID Connect discovery document.
/// The document's `issuer` must equal `issuer` exactly, and the endpoint must
/// be https (or loopback http).
#[cfg_attr(not(feature = "exchange"), allow(dead_code))] // TokenExchange::discover
pub(crate) async fn discover_endpoint(
    http: &reqwest::Client,
    issuer: &str,
    field: &'static str,
) -> Result<(String, serde_json::Map<String, serde_json::Value>), ConfigError> {
    let fail = |reason: String| ConfigError::Discovery {
        issuer: issuer.to_owned(),
        reason,
    };
    let url = super::url::parse_url("issuer", issuer)?;
    let mut last = String::from("no metadata document");
    for candidate in super::url::discovery_urls(&url) {
        let request = http::Request::get(candidate.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| fail(e.to_string()))?;
        let response = match send(http.clone(), request).await {
            Ok(r) if r.status() == http::StatusCode::OK => r,
            Ok(r) => {
                last = format!("{candidate} answered {}", r.status());
                continue;
            }
            Err(e) => {
                last = format!("{candidate}: {e}");
                continue;
            }
        };
        let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice(response.body()) else {
            last = format!("{candidate} is not a JSON object");
            continue;
        };
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
            return Err(fail(format!("{candidate} names another issuer")));
        }
        let Some(endpoint) = doc.get(field).and_then(|v| v.as_str()) else {
            return Err(fail(format!("{candidate} has no {field}")));
        };
        super::url::parse_url(field, endpoint)?;
        return Ok((endpoint.to_owned(), doc.clone()));
    }
    Err(fail(last))
}

/// The default HTTP client: no redirects, bounded time, our user agent.
#[cfg_attr(not(feature = "exchange"), allow(dead_code))] // TokenExchange's client
pub(crate) fn default_http_client(timeout: std::time::Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("rmcp-guard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::HttpClient(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_credentials_are_refused() {
        assert!(matches!(
            ClientAuth::client_secret("", "x"),
            Err(ConfigError::EmptyClientCredential("client id"))
        ));
        assert!(matches!(
            ClientAuth::client_secret("id", ""),
            Err(ConfigError::EmptyClientCredential("client secret"))
        ));
        assert!(matches!(
            ClientAuth::client_secret_file("id", "/nonexistent/rmcp-guard/secret"),
            Err(ConfigError::ClientSecretFile { .. })
        ));
    }

    #[test]
    fn default_method_is_basic_and_secret_is_redacted() {
        let auth = ClientAuth::client_secret("id", "very-secret-value").unwrap();
        assert_eq!(auth.method, AuthMethod::Basic);
        let shown = format!("{auth:?}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("client_secret_basic"), "{shown}");
        assert_eq!(auth.secret_in_body().method, AuthMethod::Post);
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        let auth = ClientAuth::client_secret("a b", "p:w").unwrap();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        let request = auth
            .apply(http::Request::builder(), &mut form)
            .unwrap()
            .body(())
            .unwrap();
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("a+b:p%3Aw");
        assert_eq!(request.headers()["authorization"], format!("Basic {expected}").as_str());
        assert!(form.finish().is_empty());
    }
}
