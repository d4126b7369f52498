//! OAuth Client ID Metadata Documents
//! (draft-ietf-oauth-client-id-metadata-document): a `client_id` that is a
//! URL names a JSON document, served by the client, that describes it.
//!
//! The server fetches the document when it first meets the URL at
//! `/authorize` or `/token`, and keeps the client it describes in a bounded
//! cache. The fetch is bounded: [`FETCH_TIMEOUT`] for the whole exchange, at
//! most [`MAX_DOCUMENT_BYTES`], no redirects, no proxy, at most
//! [`MAX_FETCHES_IN_FLIGHT`] at once. Only `https` URLs, and, because this is
//! a development server, `http` URLs on a loopback host, are fetched (see the
//! module docs of [`super`] for what that means for server-side request
//! forgery).
//!
//! Where this differs from the library's caches, on purpose for a
//! development server: no single-flight (two requests for one uncached URL
//! fetch it twice, within the in-flight bound), the fetch bound refuses
//! rather than queues, and a full cache drops the entry that expires
//! soonest, which costs its client one more fetch and nothing else. Refusals
//! are never cached, so a fixed document works at the next attempt.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use tokio::sync::Semaphore;
use url::Url;

use super::clients::{Client, MAX_URI_BYTES, is_https_or_loopback_http, parse_metadata};
use super::store::Store;

/// Largest document accepted (the draft suggests 5 kilobytes).
pub(super) const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
/// Bound on one fetch, from connecting to the last byte of the body.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most document fetches running at once; more are refused, not queued.
pub(super) const MAX_FETCHES_IN_FLIGHT: usize = 8;
/// Fields a document must not carry: there is no way to share a secret with
/// a client that was never registered.
const SECRET_FIELDS: [&str; 2] = ["client_secret", "client_secret_expires_at"];

/// Why a metadata document client was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The URL, its document or the client it describes is not acceptable
    /// (`invalid_client`); the text says why.
    Client(&'static str),
    /// Too many fetches are running (`temporarily_unavailable`).
    Busy,
}

/// Whether `client_id` is meant as a metadata document URL. Registered
/// client ids are base64url and never contain a `:`.
pub(super) fn is_document_url(client_id: &str) -> bool {
    Url::parse(client_id).is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
}

/// The URL rules of the draft (section 3): `https` (or loopback `http`
/// here), a path other than `/`, no fragment, no userinfo, no dot segments
/// and written in its normal form, so that the string a client sends and
/// the URL fetched are the same.
pub(super) fn check_url(client_id: &str) -> Result<Url, Refusal> {
    if client_id.len() > MAX_URI_BYTES {
        return Err(Refusal::Client("the client_id URL is too long"));
    }
    let Ok(url) = Url::parse(client_id) else {
        return Err(Refusal::Client("the client_id is not a URL"));
    };
    if !is_https_or_loopback_http(&url) {
        return Err(Refusal::Client(
            "a client_id URL must be https (or http on a loopback host, for development)",
        ));
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Client("a client_id URL must not have a fragment or userinfo"));
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err(Refusal::Client("a client_id URL must have a path"));
    }
    if url.as_str() != client_id {
        return Err(Refusal::Client(
            "a client_id URL must be in normal form, without dot segments",
        ));
    }
    Ok(url)
}

/// Fetches and caches metadata documents.
pub(super) struct Resolver {
    http: reqwest::Client,
    cache: Mutex<Store<String, Client>>,
    max_ttl: Duration,
    fetches: Semaphore,
}

impl Resolver {
    /// A resolver trusting the platform's roots, caching up to `capacity`
    /// clients for at most `max_ttl` each.
    pub(super) fn new(capacity: usize, max_ttl: Duration) -> Result<Self, &'static str> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(FETCH_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("rmcp-guard-testkit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| "the client metadata HTTP client could not be built")?;
        Ok(Resolver {
            http,
            cache: Mutex::new(Store::new(capacity)),
            max_ttl,
            fetches: Semaphore::new(MAX_FETCHES_IN_FLIGHT),
        })
    }

    /// The client that `client_id` (a URL) describes: from the cache, or
    /// fetched and checked.
    pub(super) async fn resolve(&self, client_id: &str) -> Result<Client, Refusal> {
        let url = check_url(client_id)?;
        if let Some(client) = self.cache().get(&client_id.to_owned()) {
            return Ok(client.clone());
        }
        let Ok(_permit) = self.fetches.try_acquire() else {
            return Err(Refusal::Busy);
        };
        let (client, ttl) = self.fetch(url, client_id).await?;
        if !ttl.is_zero() {
            self.cache().insert(client_id.to_owned(), client.clone(), ttl);
        }
        Ok(client)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Store<String, Client>> {
        // Every update is one map operation: a panic elsewhere cannot leave
        // the cache half-updated.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn fetch(&self, url: Url, client_id: &str) -> Result<(Client, Duration), Refusal> {
        let unreachable = Refusal::Client("the client metadata document could not be fetched");
        let mut response = self
            .http
            .get(url)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| {
                tracing::debug!(error = %err, "client metadata document fetch failed");
                unreachable
            })?;
        if response.status() != StatusCode::OK {
            return Err(Refusal::Client(
                "the client metadata document URL did not answer 200 OK (redirects are not followed)",
            ));
        }
        if !is_json(response.headers()) {
            return Err(Refusal::Client(
                "the client metadata document must be served as application/json",
            ));
        }
        let too_large = Refusal::Client("the client metadata document is larger than 5 KiB");
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large);
        }
        let ttl = cache_ttl(response.headers(), self.max_ttl);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| unreachable)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        let client = check_document(&body, client_id)?;
        Ok((client, ttl))
    }
}

/// `application/json` or `application/<something>+json`, parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || (v.starts_with("application/") && v.ends_with("+json")))
}

/// How long to keep a document: `max-age` up to `max_ttl`; not at all under
/// `no-store` or `no-cache`; `max_ttl` when the response says nothing.
fn cache_ttl(headers: &HeaderMap, max_ttl: Duration) -> Duration {
    let mut ttl = max_ttl;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            return Duration::ZERO;
        };
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if directive == "no-store" || directive == "no-cache" {
                return Duration::ZERO;
            }
            if let Some(seconds) = directive.strip_prefix("max-age=") {
                let Ok(seconds) = seconds.trim_matches('"').parse::<u64>() else {
                    return Duration::ZERO;
                };
                ttl = ttl.min(Duration::from_secs(seconds));
            }
        }
    }
    ttl
}

/// The document's rules (draft section 4): a JSON object whose `client_id`
/// is the URL exactly, with a `client_name`, no secret, and metadata a
/// registration would have been accepted with.
fn check_document(body: &[u8], client_id: &str) -> Result<Client, Refusal> {
    let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(body) else {
        return Err(Refusal::Client("the client metadata document is not a JSON object"));
    };
    if document.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err(Refusal::Client(
            "the client_id in the metadata document is not the document's URL",
        ));
    }
    if SECRET_FIELDS.iter().any(|field| document.contains_key(*field)) {
        return Err(Refusal::Client(
            "a client metadata document must not carry a client secret",
        ));
    }
    if !document.get("client_name").is_some_and(Value::is_string) {
        return Err(Refusal::Client("the client metadata document has no client_name"));
    }
    match parse_metadata(&document) {
        Ok(metadata) => Ok(metadata.client),
        Err(err) => Err(Refusal::Client(err.description())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn url_rules() {
        assert!(check_url("https://app.example.com/client.json").is_ok());
        assert!(check_url("http://127.0.0.1:8000/client.json").is_ok());
        assert!(check_url("http://localhost/c").is_ok());
        let refused = [
            "http://app.example.com/client.json",
            "https://app.example.com/",
            "https://app.example.com",
            "https://app.example.com/a/../client.json",
            "https://app.example.com/./client.json",
            "https://user@app.example.com/client.json",
            "https://app.example.com/client.json#x",
            "HTTPS://app.example.com/client.json",
            "https://app.example.com:443/client.json",
            "ftp://app.example.com/client.json",
        ];
        for url in refused {
            assert!(check_url(url).is_err(), "{url}");
        }
        assert!(is_document_url("https://app.example.com/client.json"));
        assert!(!is_document_url("q8Y3mZ0vX1c2b3n4m5A6s7d8f9g0h1j2k3l4z5x6c7v"));
    }

    #[test]
    fn document_rules() {
        let url = "https://app.example.com/client.json";
        let doc = |v: Value| check_document(v.to_string().as_bytes(), url);
        let good = json!({"client_id": url, "client_name": "App", "redirect_uris": ["http://127.0.0.1:3000/cb"]});
        assert!(doc(good.clone()).is_ok());
        let mut wrong = good.clone();
        wrong["client_id"] = json!("https://app.example.com/other.json");
        assert!(doc(wrong).is_err());
        let mut secret = good.clone();
        secret["client_secret"] = json!("s");
        assert!(doc(secret).is_err());
        let mut basic = good.clone();
        basic["token_endpoint_auth_method"] = json!("client_secret_basic");
        assert!(doc(basic).is_err());
        let mut nameless = good.clone();
        nameless.as_object_mut().unwrap().remove("client_name");
        assert!(doc(nameless).is_err());
        assert!(check_document(b"[1]", url).is_err());
    }

    #[test]
    fn cache_headers() {
        let max = Duration::from_secs(300);
        let headers = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
            h
        };
        assert_eq!(cache_ttl(&HeaderMap::new(), max), max);
        assert_eq!(cache_ttl(&headers("public, max-age=60"), max), Duration::from_secs(60));
        assert_eq!(cache_ttl(&headers("max-age=86400"), max), max);
        assert_eq!(cache_ttl(&headers("no-store"), max), Duration::ZERO);
        assert_eq!(cache_ttl(&headers("max-age=x"), max), Duration::ZERO);
    }
}
