//! URL rules shared by every configuration check: absolute, https (http only
//! on loopback), no credentials or fragment; and the URLs derived from a
//! resource or an issuer (RFC 9728 metadata, RFC 8414 / OIDC discovery).
//!
//! A leaf: it imports nothing of ours but the error type.

use std::borrow::Cow;

use url::Url;

use crate::error::ConfigError;

/// Parse `value` as an absolute URL that is https, or http on loopback.
pub(crate) fn parse_url(what: &'static str, value: &str) -> Result<Url, ConfigError> {
    let invalid = |url: String, reason| ConfigError::InvalidUrl { what, url, reason };
    let url = Url::parse(value).map_err(|_| invalid(value.to_owned(), "not an absolute URL"))?;
    if url.fragment().is_some() {
        return Err(invalid(value.to_owned(), "it must not have a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // The error is printed and logged: name the URL without its secret.
        let mut shown = url.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        return Err(invalid(shown.into(), "it must not carry credentials"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(ConfigError::InsecureUrl {
            what,
            url: value.to_owned(),
        }),
        _ => Err(invalid(value.to_owned(), "the scheme must be https")),
    }
}

/// [`parse_url`], and no query: an identifier (a resource, an issuer).
pub(crate) fn parse_identifier(what: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = parse_url(what, value)?;
    if url.query().is_some() {
        return Err(ConfigError::InvalidUrl {
            what,
            url: value.to_owned(),
            reason: "an identifier has no query or fragment",
        });
    }
    Ok(url)
}

/// `value` with the scheme and host of an `http`/`https` URI in lowercase
/// (RFC 3986 section 6.2.2.1: both are case-insensitive); everything else,
/// the path included, is kept byte for byte. Not a URL parser's
/// serialization on purpose: that would also add a `/` to an empty path and
/// re-encode the path, and the canonical resource URI `https://mcp.example.com`
/// must stay as it is (MCP: the form without a trailing slash). A value
/// that is not an `http(s)` URI, or whose authority has userinfo, is
/// returned unchanged.
pub(crate) fn normalize_case(value: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = value.split_once("://") else {
        return Cow::Borrowed(value);
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Cow::Borrowed(value);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Cow::Borrowed(value);
    }
    let lower = |s: &str| s.bytes().all(|b| !b.is_ascii_uppercase());
    if lower(scheme) && lower(authority) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(format!(
        "{}://{}{tail}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    ))
}

/// Whether the URL's host is a loopback address or `localhost`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `scheme://host[:port]`, the port only when it is not the default.
fn origin(url: &Url) -> String {
    let mut base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        base.push_str(&format!(":{port}"));
    }
    base
}

/// RFC 9728 section 3.1: insert the well-known path between host and path.
pub(crate) fn metadata_url_for(resource: &Url) -> String {
    let path = resource.path().trim_end_matches('/');
    format!("{}/.well-known/oauth-protected-resource{path}", origin(resource))
}

/// RFC 8414 section 3.1 (well-known inserted before the issuer's path), then
/// OpenID Connect Discovery (appended).
pub(crate) fn discovery_urls(issuer: &Url) -> Vec<String> {
    let origin = origin(issuer);
    let path = issuer.path().trim_end_matches('/');
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}{path}/.well-known/openid-configuration"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_urls_follow_rfc_8414_then_oidc() {
        let url = Url::parse("https://idp.example.com/realms/x").unwrap();
        assert_eq!(
            discovery_urls(&url),
            vec![
                "https://idp.example.com/.well-known/oauth-authorization-server/realms/x".to_owned(),
                "https://idp.example.com/realms/x/.well-known/openid-configuration".to_owned(),
            ]
        );
    }

    #[test]
    fn metadata_url_inserts_the_well_known_path() {
        let url = Url::parse("https://mcp.example.com:8443/mcp/").unwrap();
        assert_eq!(
            metadata_url_for(&url),
            "https://mcp.example.com:8443/.well-known/oauth-protected-resource/mcp"
        );
    }

    #[test]
    fn scheme_and_host_are_lowercased_and_the_rest_kept() {
        for (given, expected) in [
            ("HTTPS://MCP.Example.com/mcp", "https://mcp.example.com/mcp"),
            (
                "HTTPS://MCP.Example.com/MCP/Server",
                "https://mcp.example.com/MCP/Server",
            ),
            ("https://MCP.EXAMPLE.COM", "https://mcp.example.com"),
            ("Http://LOCALHOST:8080/X?Q=A", "http://localhost:8080/X?Q=A"),
            ("https://mcp.example.com/%2F", "https://mcp.example.com/%2F"),
            ("urn:Example:API", "urn:Example:API"),
            ("API://Foo", "API://Foo"),
            ("https://User@Host/x", "https://User@Host/x"),
        ] {
            assert_eq!(normalize_case(given), expected, "{given}");
        }
        assert!(matches!(
            normalize_case("https://mcp.example.com/MCP"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn credentials_in_a_url_are_not_repeated_in_the_error() {
        let err = parse_url("jwks_uri", "https://svc:s3cret-pw@idp.example.com/jwks").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("idp.example.com/jwks"), "{shown}");
    }
}
