//! What the server knows about a public client, and the checks its metadata
//! must pass, whether it arrives by RFC 7591 registration or in a Client ID
//! Metadata Document.

use serde_json::{Map, Value};
use url::{Host, Url};

/// Most redirect URIs one client may have.
const MAX_REDIRECT_URIS: usize = 8;
/// Longest redirect URI (or client id URL) accepted, in bytes.
pub(super) const MAX_URI_BYTES: usize = 2048;
/// Longest client name kept, in characters.
const MAX_CLIENT_NAME_CHARS: usize = 200;
/// The grant types clients may register and use.
pub(super) const GRANT_TYPES: [&str; 2] = ["authorization_code", "refresh_token"];

/// A public client: registered, or described by its metadata document.
#[derive(Debug, Clone)]
pub(super) struct Client {
    pub(super) redirect_uris: Vec<String>,
    pub(super) refresh_tokens: bool,
}

/// Client metadata that passed every check.
#[derive(Debug)]
pub(super) struct ClientMetadata {
    pub(super) client: Client,
    pub(super) grant_types: Vec<String>,
    pub(super) name: Option<String>,
}

/// Why client metadata was refused; RFC 7591 names the two kinds apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MetadataError {
    /// A redirect URI is missing or not acceptable (`invalid_redirect_uri`).
    RedirectUri(&'static str),
    /// Any other field (`invalid_client_metadata`).
    Metadata(&'static str),
}

impl MetadataError {
    pub(super) fn description(self) -> &'static str {
        match self {
            MetadataError::RedirectUri(d) | MetadataError::Metadata(d) => d,
        }
    }
}

/// `https` with a host, or `http` on a loopback host (`127.0.0.0/8`, `::1`,
/// `localhost`).
pub(super) fn is_https_or_loopback_http(url: &Url) -> bool {
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(Host::Ipv6(ip))) => ip.is_loopback(),
        ("http", Some(Host::Domain(domain))) => domain.eq_ignore_ascii_case("localhost"),
        _ => false,
    }
}

/// `https` anywhere, or `http` on a loopback host; no fragment, no userinfo.
pub(super) fn is_acceptable_redirect_uri(uri: &str) -> bool {
    if uri.len() > MAX_URI_BYTES {
        return false;
    }
    let Ok(url) = Url::parse(uri) else {
        return false;
    };
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    is_https_or_loopback_http(&url)
}

/// Checks client metadata (RFC 7591 section 2): redirect URIs, a public
/// client (`token_endpoint_auth_method` `none`), grant and response types,
/// and the name.
pub(super) fn parse_metadata(metadata: &Map<String, Value>) -> Result<ClientMetadata, MetadataError> {
    let invalid = MetadataError::Metadata;
    let Some(Value::Array(uris)) = metadata.get("redirect_uris") else {
        return Err(MetadataError::RedirectUri("redirect_uris is required"));
    };
    if uris.is_empty() || uris.len() > MAX_REDIRECT_URIS {
        return Err(MetadataError::RedirectUri("between 1 and 8 redirect_uris are required"));
    }
    let mut redirect_uris = Vec::with_capacity(uris.len());
    for uri in uris {
        match uri.as_str() {
            Some(uri) if is_acceptable_redirect_uri(uri) => redirect_uris.push(uri.to_owned()),
            _ => {
                return Err(MetadataError::RedirectUri(
                    "redirect URIs must be https, or http on a loopback host, without a fragment",
                ));
            }
        }
    }

    match metadata.get("token_endpoint_auth_method") {
        None => {}
        Some(method) if method == "none" => {}
        Some(_) => {
            return Err(invalid(
                "only public clients (token_endpoint_auth_method none) are supported",
            ));
        }
    }
    let grant_types: Vec<String> = match metadata.get("grant_types") {
        None => vec!["authorization_code".to_owned()],
        Some(Value::Array(types)) => {
            let mut out = Vec::new();
            for t in types {
                match t.as_str() {
                    Some(t) if GRANT_TYPES.contains(&t) => out.push(t.to_owned()),
                    _ => {
                        return Err(invalid(
                            "grant_types may hold only authorization_code and refresh_token",
                        ));
                    }
                }
            }
            out
        }
        Some(_) => return Err(invalid("grant_types must be an array")),
    };
    if !grant_types.iter().any(|t| t == "authorization_code") {
        return Err(invalid("grant_types must include authorization_code"));
    }
    match metadata.get("response_types") {
        None => {}
        Some(Value::Array(types)) if types.iter().all(|t| t == "code") && !types.is_empty() => {}
        Some(_) => return Err(invalid("response_types may hold only code")),
    }
    let name = match metadata.get("client_name") {
        None => None,
        Some(Value::String(name)) => Some(name.chars().take(MAX_CLIENT_NAME_CHARS).collect::<String>()),
        Some(_) => return Err(invalid("client_name must be a string")),
    };
    let refresh_tokens = grant_types.iter().any(|t| t == "refresh_token");
    Ok(ClientMetadata {
        client: Client {
            redirect_uris,
            refresh_tokens,
        },
        grant_types,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redirect_uris() {
        assert!(is_acceptable_redirect_uri("http://127.0.0.1:8765/callback"));
        assert!(is_acceptable_redirect_uri("http://[::1]/cb"));
        assert!(is_acceptable_redirect_uri("http://localhost:1234/cb"));
        assert!(is_acceptable_redirect_uri("https://app.example.com/cb"));
        assert!(!is_acceptable_redirect_uri("http://app.example.com/cb"));
        assert!(!is_acceptable_redirect_uri("http://127.0.0.1/cb#frag"));
        assert!(!is_acceptable_redirect_uri("http://user@127.0.0.1/cb"));
        assert!(!is_acceptable_redirect_uri("javascript:alert(1)"));
        assert!(!is_acceptable_redirect_uri("com.example.app:/cb"));
        assert!(!is_acceptable_redirect_uri("not a uri"));
    }

    #[test]
    fn metadata_rules() {
        let ok = |v: Value| parse_metadata(v.as_object().unwrap());
        let m = ok(json!({"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["authorization_code", "refresh_token"], "client_name": "x"})).unwrap();
        assert!(m.client.refresh_tokens);
        assert_eq!(m.name.as_deref(), Some("x"));
        assert!(matches!(ok(json!({})), Err(MetadataError::RedirectUri(_))));
        assert!(matches!(
            ok(json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "client_secret_basic"})),
            Err(MetadataError::Metadata(_))
        ));
        assert!(matches!(
            ok(json!({"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["refresh_token"]})),
            Err(MetadataError::Metadata(_))
        ));
    }
}
