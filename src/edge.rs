//! [`EdgeLayer`]: the request checks that come before everything else
//! (`Host` and `Origin` as HTTP defines them).
//!
//! [`Guard::router`](crate::Guard::router) installs it outermost, so the
//! metadata routes are covered as well as the MCP endpoint:
//!
//! | request | answer | why |
//! |---|---|---|
//! | more than one `Host`, none (HTTP/1.1), or one that is not `host[:port]` | `400` | RFC 9112 §3.2 |
//! | a `Host` (or the host of an absolute-form target) not allowed | `403` | DNS-rebinding protection, ports matched exactly |
//! | an `Origin` that is not `null` or `scheme://host[:port]` (a path, query, fragment, userinfo), or more than one | `403` | RFC 6454 §7: browsers send nothing else |
//!
//! An allowed host written without a port matches a `Host` without a port
//! or with the default port of the resource URI's scheme, never another
//! port (rmcp's own check lets a port-less entry match any port). Which
//! origins are allowed stays rmcp's check, on the MCP endpoint.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` never gets
//! here as such: hyper reads its body by `Transfer-Encoding` alone, drops
//! `Content-Length`, and closes the connection after the response, as
//! RFC 9112 §6.1 allows; nothing sent after that body on the same
//! connection is read, so it cannot smuggle a second request.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use rmcp_guard::edge::EdgeLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! let service = ServiceBuilder::new()
//!     .layer(EdgeLayer::new(["mcp.example.com"], 443))
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//!     }));
//! let request = |host: &str| http::Request::get("/mcp").header("host", host).body(String::new()).unwrap();
//! let ok = service.clone().oneshot(request("mcp.example.com:443")).await.unwrap();
//! assert_eq!(ok.status(), 200);
//! let other_port = service.oneshot(request("mcp.example.com:8443")).await.unwrap();
//! assert_eq!(other_port.status(), 403);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// Applies [`Edge`] to a service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct EdgeLayer {
    rules: Arc<Rules>,
}

#[derive(Debug)]
struct Rules {
    /// Empty: any host.
    hosts: Vec<HostPort>,
    default_port: u16,
    /// The usual spellings of the allowed hosts (`host:port`, and `host`
    /// for the default port), lowercase: a `Host` equal to one of them
    /// (ASCII case aside) is allowed without being parsed.
    spellings: Vec<String>,
}

/// A host (lowercase, IPv6 without brackets) and its port, if written.
#[derive(Debug, PartialEq, Eq)]
struct HostPort {
    host: String,
    port: Option<u16>,
}

impl HostPort {
    fn new(host: &str, port: Option<u16>) -> Self {
        HostPort {
            host: host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(),
            port,
        }
    }

    /// An allowed entry as configured: `host`, `host:port`, `[v6]:port`,
    /// or a bare IPv6 address.
    fn allowed(entry: &str) -> Self {
        let entry = entry.trim();
        match Authority::try_from(entry) {
            Ok(authority) => HostPort::new(authority.host(), authority.port_u16()),
            Err(_) => HostPort::new(entry, None),
        }
    }
}

impl EdgeLayer {
    /// Accept only a `Host` in `allowed` (`host` or `host:port`, as
    /// [`HostPolicy::hosts`](crate::oauth::HostPolicy::hosts); an empty
    /// list accepts any host). A `host` without a port matches only a
    /// `Host` without a port or with `default_port`, the default port of
    /// the resource URI's scheme (443 for `https`, 80 for `http`).
    pub fn new(allowed: impl IntoIterator<Item = impl AsRef<str>>, default_port: u16) -> Self {
        let hosts = allowed
            .into_iter()
            .map(|h| HostPort::allowed(h.as_ref()))
            .filter(|h| !h.host.is_empty())
            .collect();
        let mut rules = Rules {
            hosts,
            default_port,
            spellings: Vec::new(),
        };
        rules.spellings = rules.spellings();
        EdgeLayer { rules: Arc::new(rules) }
    }
}

/// The default port of `uri`'s scheme: 80 for `http`, else 443 (a resource
/// URI is `https`, or `http` on loopback).
#[cfg(feature = "jwt")]
pub(crate) fn default_port_of(uri: &str) -> u16 {
    match uri.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => 80,
        _ => 443,
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The edge middleware; see [`EdgeLayer`].
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> Edge<S> {
    define_inner_service_accessors!();
}

impl Rules {
    /// The spellings of the allowed hosts a `Host` header usually carries;
    /// only those the full parse accepts and allows, so that the shortcut
    /// never lets through what the parse would refuse.
    fn spellings(&self) -> Vec<String> {
        let mut spellings: Vec<String> = Vec::new();
        for allowed in &self.hosts {
            let host = match allowed.host.contains(':') {
                true => format!("[{}]", allowed.host),
                false => allowed.host.clone(),
            };
            let port = allowed.port.unwrap_or(self.default_port);
            let with_port = format!("{host}:{port}");
            let forms = [Some(with_port), (port == self.default_port).then_some(host)];
            for form in forms.into_iter().flatten() {
                if parse_host(&form).is_some_and(|parsed| self.host_allowed(&parsed)) && !spellings.contains(&form) {
                    spellings.push(form);
                }
            }
        }
        spellings
    }

    /// `None` to let the request through, or the refusal.
    fn check<B>(&self, request: &Request<B>) -> Option<(StatusCode, &'static str)> {
        if let Some(refusal) = self.check_host(request) {
            return Some(refusal);
        }
        // An absolute-form target names the host that counts (RFC 9112
        // §3.2.2); rmcp reads `Host`, so both must be allowed.
        if let Some(target) = request.uri().authority() {
            match parse_host(target.as_str()) {
                None => return Some((StatusCode::BAD_REQUEST, "invalid request target")),
                Some(target) if !self.hosts.is_empty() && !self.host_allowed(&target) => {
                    return Some((StatusCode::FORBIDDEN, "request target host is not allowed"));
                }
                Some(_) => {}
            }
        }
        match one(request.headers(), &header::ORIGIN) {
            One::None => None,
            One::Many => Some((StatusCode::FORBIDDEN, "more than one Origin header")),
            One::Value(value) => match value.to_str().ok().is_some_and(origin_is_well_formed) {
                true => None,
                false => Some((StatusCode::FORBIDDEN, "invalid Origin header")),
            },
        }
    }

    /// The `Host` header: exactly one, well formed, allowed.
    fn check_host<B>(&self, request: &Request<B>) -> Option<(StatusCode, &'static str)> {
        let host = match one(request.headers(), &header::HOST) {
            One::Many => return Some((StatusCode::BAD_REQUEST, "more than one Host header")),
            One::Value(value)
                if self
                    .spellings
                    .iter()
                    .any(|spelling| spelling.as_bytes().eq_ignore_ascii_case(value.as_bytes())) =>
            {
                return None;
            }
            One::Value(value) => match value.to_str().ok().and_then(parse_host) {
                Some(host) => Some(host),
                None => return Some((StatusCode::BAD_REQUEST, "invalid Host header")),
            },
            One::None if request.version() == Version::HTTP_11 => {
                return Some((StatusCode::BAD_REQUEST, "missing Host header"));
            }
            // HTTP/2 names the host in the URI; HTTP/1.0 may name none.
            One::None => request.uri().authority().map(|a| HostPort::new(a.host(), a.port_u16())),
        };
        if !self.hosts.is_empty() && !host.is_some_and(|host| self.host_allowed(&host)) {
            return Some((StatusCode::FORBIDDEN, "Host header is not allowed"));
        }
        None
    }

    fn host_allowed(&self, host: &HostPort) -> bool {
        let port = host.port.unwrap_or(self.default_port);
        self.hosts
            .iter()
            .any(|allowed| allowed.host == host.host && allowed.port.unwrap_or(self.default_port) == port)
    }
}

enum One<'a> {
    None,
    Value(&'a http::HeaderValue),
    Many,
}

fn one<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> One<'a> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => One::None,
        (Some(value), None) => One::Value(value),
        (Some(_), Some(_)) => One::Many,
    }
}

/// A `Host` value: `host[:port]`, no userinfo.
fn parse_host(value: &str) -> Option<HostPort> {
    if value.is_empty() || value.contains('@') {
        return None;
    }
    let authority = Authority::try_from(value).ok()?;
    let host = authority.host();
    // Without userinfo the value starts with the host; what follows is
    // nothing or `:` and a port number.
    let port = match value.get(host.len()..)? {
        "" => None,
        rest => {
            let digits = rest.strip_prefix(':')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse::<u16>().ok()?)
        }
    };
    if host.is_empty() || !value.starts_with(host) {
        return None;
    }
    Some(HostPort::new(host, port))
}

/// `null`, or `scheme://host[:port]` and nothing more (RFC 6454 §6.2).
fn origin_is_well_formed(value: &str) -> bool {
    if value == "null" {
        return true;
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let rest_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '[' | ']'));
    scheme_ok && rest_ok && parse_host(rest).is_some()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Edge<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<EdgeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.rules.check(&request) {
            None => ResponseFuture {
                state: State::Inner {
                    future: self.inner.call(request),
                },
            },
            Some((status, reason)) => {
                tracing::debug!(%status, reason, "request refused at the edge");
                ResponseFuture {
                    state: State::Refused {
                        response: Some(refusal(status, reason)),
                    },
                }
            }
        }
    }
}

fn refusal(status: StatusCode, reason: &'static str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(reason.as_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project! {
    /// The response future of [`Edge`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner {
            #[pin]
            future: F,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<EdgeBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(EdgeBody::inner)))
            }
            StateProj::Refused { response } => {
                // Taken once: a future is not polled after it is ready.
                let response = response
                    .take()
                    .unwrap_or_else(|| refusal(StatusCode::BAD_REQUEST, "request refused"));
                Poll::Ready(Ok(response.map(EdgeBody::rejection)))
            }
        }
    }
}

opaque_body! {
    /// The response body of [`Edge`]: the inner service's body, or a
    /// refusal's short text.
    pub type EdgeBody<B>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(hosts: &[&str], default_port: u16) -> EdgeLayer {
        EdgeLayer::new(hosts, default_port)
    }

    fn request(hosts: &[&str], origin: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/mcp");
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(()).unwrap()
    }

    fn status(layer: &EdgeLayer, request: &Request<()>) -> u16 {
        layer.rules.check(request).map_or(200, |(status, _)| status.as_u16())
    }

    #[test]
    fn a_host_without_a_port_matches_only_the_default_port() {
        let layer = rules(&["mcp.example.com"], 443);
        for (host, expected) in [
            ("mcp.example.com", 200),
            ("MCP.example.com:443", 200),
            ("mcp.example.com:8443", 403),
            ("mcp.example.com:80", 403),
            ("other.example.com", 403),
        ] {
            assert_eq!(status(&layer, &request(&[host], None)), expected, "{host}");
        }
    }

    #[test]
    fn a_host_with_a_port_matches_that_port() {
        let layer = rules(&["127.0.0.1:8080", "[::1]:8080", "::1"], 80);
        for (host, expected) in [
            ("127.0.0.1:8080", 200),
            ("127.0.0.1", 403),
            ("127.0.0.1:8081", 403),
            ("[::1]:8080", 200),
            ("[::1]", 200),
            ("[::1]:9", 403),
        ] {
            assert_eq!(status(&layer, &request(&[host], None)), expected, "{host}");
        }
    }

    #[test]
    fn the_spelling_shortcut_decides_as_the_parse_does() {
        let configs: [(&[&str], u16); 4] = [
            (&["127.0.0.1:8080", "[::1]:8080", "::1"], 80),
            (&["MCP.example.com"], 443),
            (&["mcp.example.com:443", "a.example:8443"], 443),
            (&["not a host", "a@b", "x:y:z"], 443),
        ];
        let hosts = [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "[::1]:80",
            "::1",
            "mcp.example.com",
            "MCP.EXAMPLE.COM:443",
            "mcp.example.com:443",
            "mcp.example.com:0443",
            "a.example:8443",
            "a.example",
            "not a host",
            "not a host:443",
            "a@b",
            "x:y:z",
            "",
        ];
        for (allowed, default_port) in configs {
            let layer = rules(allowed, default_port);
            let mut parsed = Rules {
                hosts: allowed
                    .iter()
                    .map(|h| HostPort::allowed(h))
                    .filter(|h| !h.host.is_empty())
                    .collect(),
                default_port,
                spellings: Vec::new(),
            };
            assert!(parsed.spellings.is_empty());
            for host in hosts {
                let request = request(&[host], None);
                assert_eq!(
                    layer.rules.check(&request),
                    parsed.check(&request),
                    "{host:?} against {allowed:?}"
                );
            }
            parsed.spellings = parsed.spellings();
            assert_eq!(parsed.spellings, layer.rules.spellings);
        }
        assert_eq!(
            rules(&["127.0.0.1:8080", "[::1]:8080", "::1", "MCP.example.com"], 80)
                .rules
                .spellings,
            [
                "127.0.0.1:8080",
                "[::1]:8080",
                "[::1]:80",
                "[::1]",
                "mcp.example.com:80",
                "mcp.example.com"
            ]
        );
    }

    #[test]
    fn host_headers_follow_rfc_9112() {
        let layer = rules(&["a.example"], 443);
        assert_eq!(status(&layer, &request(&["a.example", "a.example"], None)), 400);
        assert_eq!(status(&layer, &request(&[], None)), 400);
        for bad in ["", "u@a.example", "a.example:x", "a.example/x"] {
            assert_eq!(status(&layer, &request(&[bad], None)), 400, "{bad:?}");
        }
        // An absolute-form target must name an allowed host too.
        let absolute = |target: &str| Request::get(target).header(header::HOST, "a.example").body(()).unwrap();
        assert_eq!(status(&layer, &absolute("https://a.example/mcp")), 200);
        assert_eq!(status(&layer, &absolute("https://evil.example/mcp")), 403);
        assert_eq!(status(&layer, &absolute("https://u@a.example/mcp")), 400);
        // An empty allow-list accepts any (well-formed) host.
        assert_eq!(status(&rules(&[], 443), &request(&["b.example:1"], None)), 200);
    }

    #[test]
    fn an_origin_is_scheme_host_and_port_only() {
        let layer = rules(&[], 443);
        for good in [
            "https://a.example",
            "http://a.example:8080",
            "http://[::1]:3000",
            "null",
        ] {
            assert_eq!(status(&layer, &request(&["x"], Some(good))), 200, "{good}");
        }
        for bad in [
            "https://a.example/",
            "https://a.example/x",
            "https://a.example?q",
            "https://a.example#f",
            "https://u@a.example",
            "https://u:p@a.example",
            "https://a.example:x",
            "a.example",
            "://a.example",
            "https://",
            "NULL",
            "https://a.example, https://b.example",
        ] {
            assert_eq!(status(&layer, &request(&["x"], Some(bad))), 403, "{bad}");
        }
        let two = Request::get("/")
            .header(header::HOST, "x")
            .header(header::ORIGIN, "https://a.example")
            .header(header::ORIGIN, "https://a.example")
            .body(())
            .unwrap();
        assert_eq!(status(&layer, &two), 403);
    }
}
