//! [`HostPolicy`]: the `Host` and `Origin` values the MCP endpoint answers to.

use url::Url;

use super::url::is_loopback;
use crate::error::ConfigError;

/// Which `Host` and `Origin` values are accepted; see the [type docs](Self).
///
/// rmcp refuses (403) a request whose `Host` is not allowed or whose `Origin`
/// is present and not allowed: DNS-rebinding protection. Its own defaults are
/// loopback names only, so a server deployed at its public URI would refuse
/// everything; here both lists are derived from the resource URI instead.
///
/// ```
/// use rmcp_guard::oauth::{HostPolicy, Issuer, ResourceServer};
///
/// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
///     .hosts(HostPolicy::default().hosts(["mcp.example.com", "mcp.internal:8080"]))
///     .build()
///     .unwrap();
/// assert_eq!(rs.allowed_hosts(), ["mcp.example.com", "mcp.internal:8080"]);
/// assert_eq!(rs.allowed_origins(), ["https://mcp.example.com:443"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct HostPolicy {
    hosts: Option<Vec<String>>,
    origins: Option<Vec<String>>,
}

impl HostPolicy {
    /// The `Host` values accepted (`host` or `host:port`). A `host` without
    /// a port matches a `Host` without a port or with the default port of
    /// the resource URI's scheme, no other port. Defaults to the resource
    /// URI's `host:port` (and `host` alone when that port is its scheme's
    /// default), plus `localhost`, `127.0.0.1` and `::1` likewise for a
    /// loopback resource. An empty
    /// list is refused: it would turn the protection off.
    pub fn hosts(mut self, hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// The browser origins accepted (`scheme://host:port`; an `http` or
    /// `https` origin written without a port means its default port, and
    /// is kept with it written out). Defaults to the resource URI's origin. Wildcard ports (`:*`) and the `null` origin are
    /// refused here; [`dangerous`](super::ResourceServerBuilder::dangerous)
    /// allows them.
    pub fn origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// The lists in force for `resource`, checked.
    pub(crate) fn resolve(&self, resource: &Url, wildcards: bool) -> Result<(Vec<String>, Vec<String>), ConfigError> {
        let hosts = self.hosts.clone().unwrap_or_else(|| hosts_for(resource));
        if hosts.is_empty() || hosts.iter().any(|h| h.trim().is_empty()) {
            return Err(ConfigError::OutOfRange {
                what: "allowed hosts",
                reason: "at least one non-empty host (an empty list would disable DNS-rebinding protection)",
            });
        }
        let origins = self.origins.clone().unwrap_or_else(|| origins_for(resource));
        for origin in &origins {
            let wild = origin.ends_with(":*") || origin.trim() == "null";
            if wild && !wildcards {
                return Err(ConfigError::OutOfRange {
                    what: "allowed origins",
                    reason: "`:*` and `null` accept pages you do not control; allow them with dangerous().wildcard_origins()",
                });
            }
            let bare = origin.strip_suffix(":*").unwrap_or(origin);
            let parsed = Url::parse(bare).ok();
            let plain = parsed.as_ref().is_some_and(|u| {
                u.username().is_empty() && u.password().is_none() && matches!(u.path(), "" | "/") && u.query().is_none()
            });
            if !(plain || origin.trim() == "null") {
                return Err(ConfigError::InvalidUrl {
                    what: "allowed origin",
                    url: origin.clone(),
                    reason: "an origin is scheme://host[:port], nothing more",
                });
            }
        }
        let origins = origins.iter().map(|origin| with_default_port(origin)).collect();
        Ok((hosts, origins))
    }
}

/// `scheme://host` as `scheme://host:port` with the scheme's default port,
/// so that rmcp matches it on that port only (it lets a port-less entry
/// match any port). Other values unchanged.
fn with_default_port(origin: &str) -> String {
    if origin.ends_with(":*") {
        return origin.to_owned();
    }
    match Url::parse(origin) {
        Ok(url) if url.port().is_none() => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
            _ => origin.to_owned(),
        },
        _ => origin.to_owned(),
    }
}

fn hosts_for(resource: &Url) -> Vec<String> {
    // A port-less entry means the scheme's default port: only offered when
    // the resource is there, else `Host: 127.0.0.1:80` would be accepted by
    // a server on `127.0.0.1:8080`.
    let default_port = resource.port().is_none();
    let mut hosts = Vec::new();
    if let Some(host) = resource.host_str() {
        if default_port {
            hosts.push(host.to_owned());
        }
        if let Some(port) = resource.port_or_known_default() {
            hosts.push(format!("{host}:{port}"));
        }
    }
    if is_loopback(resource) {
        let port = resource.port_or_known_default();
        for (alias, with_port) in [("localhost", "localhost"), ("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")] {
            let bare = default_port.then(|| alias.to_owned());
            let aliases = bare.into_iter().chain(port.map(|p| format!("{with_port}:{p}")));
            for alias in aliases {
                if !hosts.contains(&alias) {
                    hosts.push(alias);
                }
            }
        }
    }
    hosts
}

fn origins_for(resource: &Url) -> Vec<String> {
    let host = resource.host_str().unwrap_or_default();
    match resource.port_or_known_default() {
        Some(port) => vec![format!("{}://{host}:{port}", resource.scheme())],
        None => vec![format!("{}://{host}", resource.scheme())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource() -> Url {
        Url::parse("https://mcp.example.com/mcp").unwrap()
    }

    #[test]
    fn defaults_are_derived_from_the_resource() {
        let (hosts, origins) = HostPolicy::default().resolve(&resource(), false).unwrap();
        assert_eq!(hosts, ["mcp.example.com", "mcp.example.com:443"]);
        assert_eq!(origins, ["https://mcp.example.com:443"]);
        let loopback = Url::parse("http://127.0.0.1:8080/mcp").unwrap();
        let (hosts, _) = HostPolicy::default().resolve(&loopback, false).unwrap();
        assert_eq!(
            hosts,
            ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"],
            "a server on 8080 does not answer to `Host: 127.0.0.1` (port 80)"
        );
        let loopback = Url::parse("http://localhost/mcp").unwrap();
        let (hosts, _) = HostPolicy::default().resolve(&loopback, false).unwrap();
        assert_eq!(
            hosts,
            [
                "localhost",
                "localhost:80",
                "127.0.0.1",
                "127.0.0.1:80",
                "::1",
                "[::1]:80"
            ]
        );
    }

    #[test]
    fn an_origin_without_a_port_gets_its_default_port() {
        let policy =
            HostPolicy::default().origins(["https://App.example", "http://b.example", "https://c.example:8443"]);
        let (_, origins) = policy.resolve(&resource(), false).unwrap();
        assert_eq!(
            origins,
            [
                "https://app.example:443",
                "http://b.example:80",
                "https://c.example:8443"
            ]
        );
    }

    #[test]
    fn empty_hosts_are_refused() {
        let err = HostPolicy::default()
            .hosts(Vec::<String>::new())
            .resolve(&resource(), false);
        assert!(matches!(err, Err(ConfigError::OutOfRange { .. })));
    }

    #[test]
    fn wildcard_origins_need_the_dangerous_step() {
        let policy = HostPolicy::default().origins(["http://localhost:*"]);
        assert!(matches!(
            policy.resolve(&resource(), false),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(policy.resolve(&resource(), true).is_ok());
        let null = HostPolicy::default().origins(["null"]);
        assert!(null.resolve(&resource(), false).is_err());
    }

    #[test]
    fn origins_with_a_path_or_credentials_are_refused() {
        for origin in [
            "https://a.example/x",
            "https://u:p@a.example",
            "https://a.example?q",
            "nonsense",
        ] {
            let policy = HostPolicy::default().origins([origin]);
            assert!(
                matches!(policy.resolve(&resource(), true), Err(ConfigError::InvalidUrl { .. })),
                "{origin}"
            );
        }
    }
}
