//! Spans: one per request through the stack, and the W3C trace context
//! taken from callers and given to upstreams.
//!
//! The spans are [`tracing`] spans at `INFO`, always compiled: with no
//! subscriber listening (or one that filters them out) each is a disabled
//! [`Span`] and nothing else is computed. With the OpenTelemetry layer of
//! `tracing-opentelemetry` installed they are exported as OpenTelemetry
//! spans (the application installs the SDK, its exporter and the layer).
//!
//! | span ([`spans`]) | where | attributes |
//! |---|---|---|
//! | `rmcp_guard.request` | [`RequestSpanLayer`], outermost | `otel.kind` `server`, `http.request.method`, `url.path`, `mcp.method` (the `Mcp-Method` header), `http.response.status_code` |
//! | `rmcp_guard.authenticate` | the bearer layer | `outcome`, `reason`, `cached`, `client_id` |
//! | `rmcp_guard.policy` | the policy's decision for the handler | `action`, `resource`, `outcome`, `reason`, `cached` |
//! | `rmcp_guard.tool` | [`ToolSpans`], each `tools/call` | `mcp.method.name`, `gen_ai.tool.name`, `outcome`, `error.type` |
//! | `rmcp_guard.secret` | a credential read | `service`, `outcome`, `cache` |
//! | `rmcp_guard.exchange` | a token exchange or client credentials grant | `grant`, `target`, `outcome`, `cache` |
//! | `rmcp_guard.discovery`, `.jwks`, `.introspection`, `.token_endpoint`, `.vault.read`, `.vault.lookup`, `.vault.renew`, `.vault.login`, `.redis` | one per call to an upstream | `otel.kind` `client`, `upstream`, `server.address`, `outcome` |
//!
//! Attribute values are identifiers and codes, never a token, a proof, a
//! secret or a client secret; a value a caller chose (a path, a tool name,
//! a resource) is cut to 256 bytes. A failure sets `otel.status_code` to
//! `error`. With feature `telemetry` each upstream call is also measured
//! (the histogram `rmcp_guard.upstream.duration`, with the same `upstream`
//! and `outcome`).
//!
//! # W3C trace context (feature `telemetry`)
//!
//! Through the propagator the application installs
//! (`opentelemetry::global::set_text_map_propagator`, usually
//! `TraceContextPropagator`; without one nothing is read or sent):
//!
//! - **In, HTTP**: the request span's parent is the context of the
//!   request's `traceparent` / `tracestate` headers.
//! - **In, MCP `_meta`**: a `tools/call` whose `params._meta` carries
//!   `traceparent` (with `tracestate`, `baggage`) gets its tool span parented
//!   to that context, as MCP 2026-07-28 reserves these three keys for
//!   OpenTelemetry trace context propagation
//!   (`docs/specification/2026-07-28/basic/index.mdx`, "OpenTelemetry trace
//!   context"; SEP-414): string values in W3C Trace Context and W3C Baggage
//!   form, read at the root of `_meta` without a prefix. The tool span is
//!   then a root span (in logs too) that keeps a link to the HTTP request's
//!   span, so that its trace is sampled or not as the caller's is, whatever
//!   became of the request's own trace. Without them (or when they do not
//!   parse), the tool span's parent is the HTTP request's span.
//! - **Out**: every HTTP request the library makes (JWKS and metadata
//!   discovery, introspection, the token endpoint, Vault reads and token
//!   lookups) carries the `traceparent` / `tracestate` of its upstream span.
//!   Only the span context is sent: baggage a caller sent is never
//!   forwarded to the identity provider or Vault.
//!
//! A context whose `traceparent` is missing or invalid is ignored (the span
//! keeps its local parent). The caller's sampling flag is whatever the
//! application's sampler makes of it (a `ParentBased` sampler follows it: a
//! caller can ask for its requests to be traced).
//!
//! # Head sampling (feature `telemetry`)
//!
//! The request's OpenTelemetry context is current while the guard handles
//! the request (and the tool span's, or the request's, while a tool runs).
//! When that context is a trace the sampler did not sample, the guard opens
//! its steps' spans on [`UNSAMPLED_TARGET`]: leave that target out of the
//! OpenTelemetry layer's filter and a request that is not sampled costs the
//! layer its request span only. Upstream requests in such a trace still
//! carry its `traceparent` (not sampled).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use rmcp::ServerHandler;
use rmcp::model::*;
use rmcp::service::{MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span, info_span};

type McpError = rmcp::ErrorData;

/// The span names. Renaming one is a breaking change (dashboards and
/// alerts name them).
pub mod spans {
    /// One HTTP request, outermost (server span).
    pub const REQUEST: &str = "rmcp_guard.request";
    /// The bearer layer authenticating a request.
    pub const AUTHENTICATE: &str = "rmcp_guard.authenticate";
    /// The policy deciding a call, read, get or listing for the handler.
    pub const POLICY: &str = "rmcp_guard.policy";
    /// One `tools/call`, around the tool.
    pub const TOOL: &str = "rmcp_guard.tool";
    /// A credential read (`CallerCredentials::get`, `Credentials::get`).
    pub const SECRET: &str = "rmcp_guard.secret";
    /// A downstream token: RFC 8693 exchange or client credentials.
    pub const EXCHANGE: &str = "rmcp_guard.exchange";
    /// Authorization server metadata discovery for the `jwks_uri`.
    pub const DISCOVERY: &str = "rmcp_guard.discovery";
    /// A JWK set fetch.
    pub const JWKS: &str = "rmcp_guard.jwks";
    /// An RFC 7662 introspection request.
    pub const INTROSPECTION: &str = "rmcp_guard.introspection";
    /// A request to the token endpoint (exchange, client credentials).
    pub const TOKEN_ENDPOINT: &str = "rmcp_guard.token_endpoint";
    /// A Vault KV read.
    pub const VAULT_READ: &str = "rmcp_guard.vault.read";
    /// A Vault `lookup-self` of the store's token.
    pub const VAULT_LOOKUP: &str = "rmcp_guard.vault.lookup";
    /// A Vault `renew-self` of the store's token.
    pub const VAULT_RENEW: &str = "rmcp_guard.vault.renew";
    /// A Vault login (AppRole, Kubernetes, JWT, token file).
    pub const VAULT_LOGIN: &str = "rmcp_guard.vault.login";
    /// One Redis command or script.
    pub const REDIS: &str = "rmcp_guard.redis";
}

/// The longest attribute value taken from a caller (bytes).
const MAX_VALUE_BYTES: usize = 256;

/// `value`, cut to [`MAX_VALUE_BYTES`] at a character boundary.
fn bounded(value: &str) -> &str {
    if value.len() <= MAX_VALUE_BYTES {
        return value;
    }
    let mut end = MAX_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The target of the guard's spans opened in a trace that is not sampled
/// (feature `telemetry`): the same spans, with the same names and fields,
/// for logs; the OpenTelemetry layer need not see them. Give that layer a
/// filter that leaves this target out (as `secure_server` does) and a
/// request whose trace is not sampled costs it one span (the request's, whose
/// sampler decided) instead of one per step.
///
/// ```
/// use rmcp_guard::telemetry::trace::UNSAMPLED_TARGET;
/// use tracing::level_filters::LevelFilter;
/// use tracing_subscriber::filter::Targets;
///
/// // For the OpenTelemetry layer: the guard's spans, but not those.
/// let traced = Targets::new()
///     .with_target("rmcp_guard", LevelFilter::INFO)
///     .with_target(UNSAMPLED_TARGET, LevelFilter::OFF);
/// # drop(traced);
/// ```
///
/// "Not sampled" is read from the OpenTelemetry context current where the
/// span opens: the guard makes the request's context current while it
/// handles the request (and a tool call's while the tool runs), so it is
/// the decision of the sampler on the request's span, which follows the
/// caller's `traceparent` with the usual `ParentBased` sampler. A span with
/// no trace around it (a key refresh in the background) is never on this
/// target: its sampler decides.
pub const UNSAMPLED_TARGET: &str = "rmcp_guard::unsampled";

/// Whether `cx` is in a trace that is not sampled.
#[cfg(feature = "telemetry")]
fn unsampled(cx: &opentelemetry::Context) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    let span = cx.span();
    let context = span.span_context();
    context.is_valid() && !context.is_sampled()
}

/// Whether the current OpenTelemetry context is a trace that is not
/// sampled.
fn unsampled_here() -> bool {
    #[cfg(feature = "telemetry")]
    return opentelemetry::Context::map_current(unsampled);
    #[cfg(not(feature = "telemetry"))]
    false
}

/// `info_span!`, on [`UNSAMPLED_TARGET`] when `$unsampled`.
macro_rules! guard_span {
    ($unsampled:expr; $($span:tt)*) => {
        if $unsampled {
            info_span!(target: UNSAMPLED_TARGET, $($span)*)
        } else {
            info_span!($($span)*)
        }
    };
}

/// Record how a span ended: its `outcome`, and `otel.status_code` `error`
/// when it failed.
pub(crate) fn outcome(span: &Span, outcome: &str, failed: bool) {
    span.record("outcome", outcome);
    if failed {
        span.record("otel.status_code", "error");
    }
}

// ----- The request span -----

/// Opens the `rmcp_guard.request` span around each request; see the
/// [module docs](self). `Guard` installs it outermost.
///
/// With feature `telemetry` the span's parent is the request's
/// `traceparent` / `tracestate` (through the global propagator), and the
/// span is kept in the request's extensions so that the handler's spans
/// (policy, tool) hang under it even when rmcp runs them in a session's
/// task.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use rmcp_guard::telemetry::trace::RequestSpanLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let service = ServiceBuilder::new().layer(RequestSpanLayer::new()).service(service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::builder().status(204).body(String::new()).unwrap())
/// }));
/// let response = service.oneshot(http::Request::post("/mcp").body(String::new()).unwrap()).await.unwrap();
/// assert_eq!(response.status(), 204);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RequestSpanLayer {
    _private: (),
}

impl RequestSpanLayer {
    /// The layer.
    pub fn new() -> Self {
        RequestSpanLayer::default()
    }
}

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpans { inner }
    }
}

/// The request-span middleware; see [`RequestSpanLayer`].
#[derive(Debug, Clone)]
pub struct RequestSpans<S> {
    inner: S,
}

impl<S> RequestSpans<S> {
    define_inner_service_accessors!();
}

/// The request's span, kept in its extensions (and so in the
/// `http::request::Parts` rmcp gives each handler call), with its
/// OpenTelemetry context (feature `telemetry`, when an OpenTelemetry layer
/// sees it).
/// A span's OpenTelemetry context, when a layer sees the span (feature
/// `telemetry`).
#[cfg(feature = "telemetry")]
type Otel = Option<opentelemetry::Context>;
#[cfg(not(feature = "telemetry"))]
type Otel = ();

#[derive(Clone)]
struct HttpSpan {
    span: Span,
    #[cfg(feature = "telemetry")]
    otel: Option<opentelemetry::Context>,
}

impl HttpSpan {
    /// Whether the request's trace is not sampled: its steps' spans go to
    /// [`UNSAMPLED_TARGET`].
    fn unsampled(&self) -> bool {
        #[cfg(feature = "telemetry")]
        return self.otel.as_ref().is_some_and(unsampled);
        #[cfg(not(feature = "telemetry"))]
        false
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestSpans<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestSpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let span = request_span(&req);
        // The request's OpenTelemetry context (its sampler decides now),
        // current while the inner services handle the request.
        #[cfg(feature = "telemetry")]
        let otel: Otel = w3c::context_of(&span);
        #[cfg(not(feature = "telemetry"))]
        let otel: Otel = ();
        if !span.is_disabled() {
            req.extensions_mut().insert(HttpSpan {
                span: span.clone(),
                #[cfg(feature = "telemetry")]
                otel: otel.clone(),
            });
        }
        // Entered while the inner services are called, so that a span one
        // of them opens in `call` is a child of this one.
        let future = span.in_scope(|| {
            #[cfg(feature = "telemetry")]
            let _current = otel.as_ref().map(|cx| cx.clone().attach());
            self.inner.call(req)
        });
        RequestSpanFuture {
            inner: future,
            span,
            otel,
        }
    }
}

pin_project! {
    /// The response future of [`RequestSpans`]: the inner future, polled
    /// inside the request span, which records the response status.
    pub struct RequestSpanFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        otel: Otel,
    }
}

impl<F> std::fmt::Debug for RequestSpanFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpanFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for RequestSpanFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        #[cfg(feature = "telemetry")]
        let _current = this.otel.as_ref().map(|otel| otel.clone().attach());
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let status = response.status();
            this.span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                this.span.record("otel.status_code", "error");
            }
        }
        Poll::Ready(result)
    }
}

/// The request span of `req`, its parent taken from the request's trace
/// context (feature `telemetry`).
fn request_span<B>(req: &Request<B>) -> Span {
    let span = info_span!(
        spans::REQUEST,
        otel.kind = "server",
        http.request.method = method_name(req.method()),
        url.path = bounded(req.uri().path()),
        mcp.method = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(method) = mcp_method(req.headers()) {
        span.record("mcp.method", method);
    }
    #[cfg(feature = "telemetry")]
    w3c::parent_from_headers(&span, req.headers());
    span
}

/// The method as OpenTelemetry's HTTP conventions name it: a standard one,
/// else `_OTHER` (a caller does not choose the attribute's values).
fn method_name(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The request's `Mcp-Method` header (MCP 2026-07-28, Streamable HTTP),
/// when it looks like a method name (rmcp refuses a request whose header
/// and body differ).
fn mcp_method(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get("mcp-method")?.to_str().ok()?;
    let plausible = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
    plausible.then_some(value)
}

/// The request span the HTTP layer kept, from an rmcp request's
/// extensions (where rmcp put the HTTP request's parts).
fn http_span(extensions: &Extensions) -> Option<HttpSpan> {
    // Not even looked up when no subscriber takes `INFO` spans.
    if tracing::Level::INFO > tracing::level_filters::LevelFilter::current() {
        return None;
    }
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<HttpSpan>())
        .filter(|kept| !kept.span.is_disabled())
        .cloned()
}

// ----- The handler's spans -----

/// The span of the policy deciding `action` on `resource`, under the HTTP
/// request's span when the request came through [`RequestSpanLayer`].
#[cfg_attr(not(feature = "policy"), allow(dead_code))] // the policy's
pub(crate) fn policy_span(extensions: &Extensions, action: &str, resource: &str) -> Span {
    macro_rules! policy {
        ($unsampled:expr; $($parent:tt)*) => {
            guard_span!(
                $unsampled;
                $($parent)*
                spans::POLICY,
                action,
                resource = bounded(resource),
                outcome = Empty,
                reason = Empty,
                cached = Empty,
                otel.status_code = Empty,
            )
        };
    }
    match http_span(extensions) {
        Some(http) => policy!(http.unsampled(); parent: &http.span,),
        None => policy!(unsampled_here();),
    }
}

/// Opens the `rmcp_guard.tool` span around each `tools/call` of the inner
/// handler; see the [module docs](self). Every other method goes to the
/// inner handler unchanged. `Guard` installs it inside the
/// policy, around the integrity checks and the tool.
///
/// The span's parent is the trace context of the request's `params._meta`
/// (feature `telemetry`, MCP 2026-07-28: `traceparent`, `tracestate`,
/// `baggage`), else the HTTP request's span ([`RequestSpanLayer`]), else
/// the current span.
///
/// ```
/// use rmcp::ServerHandler;
/// use rmcp_guard::telemetry::trace::ToolSpans;
///
/// #[derive(Clone)]
/// struct MyServer;
/// impl ServerHandler for MyServer {}
///
/// let handler = ToolSpans::new(MyServer);
/// assert!(handler.get_info().capabilities.tools.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct ToolSpans<H> {
    inner: H,
}

impl<H> ToolSpans<H> {
    /// Wrap `inner`.
    pub fn new(inner: H) -> Self {
        ToolSpans { inner }
    }
}

impl<S> ToolSpans<S> {
    define_inner_service_accessors!();
}

/// The span of a `tools/call` of `tool`, and the HTTP request's span.
fn tool_span(tool: &str, context: &RequestContext<RoleServer>) -> (Span, Option<HttpSpan>) {
    macro_rules! tool {
        ($unsampled:expr; $($parent:tt)*) => {
            guard_span!(
                $unsampled;
                $($parent)*
                spans::TOOL,
                mcp.method.name = "tools/call",
                gen_ai.tool.name = bounded(tool),
                outcome = Empty,
                "error.type" = Empty,
                otel.status_code = Empty,
            )
        };
    }
    let http = http_span(&context.extensions);
    // A `_meta` trace context makes the tool span the root of the caller's
    // trace (linked to the request's span): its sampler decides from that
    // context, even when the request's own trace is not sampled.
    #[cfg(feature = "telemetry")]
    if let Some(cx) = w3c::meta_context(&context.meta) {
        let span = tool!(false; parent: None,);
        if !span.is_disabled() {
            w3c::parent_to_meta(&span, cx, http.as_ref().map(|http| &http.span));
        }
        return (span, http);
    }
    let span = match &http {
        Some(http) => tool!(http.unsampled(); parent: &http.span,),
        None => tool!(unsampled_here();),
    };
    (span, http)
}

#[allow(deprecated)] // every other method goes to the inner handler, the deprecated ones too
impl<H: ServerHandler> ServerHandler for ToolSpans<H> {
    // The inner future is made now, inside the span, and mapped: the call's
    // future holds it, the span and the context, not a second copy of the
    // request and its context.
    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        use futures_util::FutureExt as _;
        let (span, http) = tool_span(&request.name, &context);
        // The tool span's OpenTelemetry context (or, when the layer does not
        // see it, the request's) is current while the tool runs: the spans
        // the tool and the guard open in it follow its sampling decision.
        #[cfg(feature = "telemetry")]
        let otel = w3c::context_of(&span).or_else(|| http.and_then(|http| http.otel));
        #[cfg(not(feature = "telemetry"))]
        let _ = http;
        let call = {
            // What the inner handlers check before their futures run is
            // inside the span and its context too.
            let _entered = span.enter();
            #[cfg(feature = "telemetry")]
            let _current = otel.as_ref().map(|cx| cx.clone().attach());
            self.inner.call_tool(request, context).instrument(span.clone())
        };
        #[cfg(feature = "telemetry")]
        let call = {
            use opentelemetry::context::FutureExt as _;
            match otel {
                Some(cx) => futures_util::future::Either::Left(call.with_context(cx)),
                None => futures_util::future::Either::Right(call),
            }
        };
        call.map(move |result| {
            if !span.is_disabled() {
                match &result {
                    Ok(CallToolResponse::Complete(done)) if done.is_error == Some(true) => {
                        span.record("error.type", "tool_error");
                        outcome(&span, "tool_error", true);
                    }
                    Ok(_) => outcome(&span, "ok", false),
                    Err(_) => {
                        span.record("error.type", "jsonrpc_error");
                        outcome(&span, "error", true);
                    }
                }
            }
            result
        })
    }

    forward_server_handler!(info);
    forward_server_handler!();
}

/// The span of the bearer layer authenticating a request.
#[cfg_attr(not(feature = "jwt"), allow(dead_code))] // the bearer layer's
pub(crate) fn authenticate_span() -> Span {
    guard_span!(
        unsampled_here();
        spans::AUTHENTICATE,
        outcome = Empty,
        reason = Empty,
        cached = Empty,
        client_id = Empty,
        otel.status_code = Empty,
    )
}

/// Record an accepted request on its authenticate span.
#[cfg_attr(not(feature = "jwt"), allow(dead_code))]
pub(crate) fn authenticated(span: &Span, client_id: Option<&str>, cached: bool) {
    span.record("reason", "valid_token");
    span.record("cached", cached);
    if let Some(client_id) = client_id {
        span.record("client_id", client_id);
    }
    outcome(span, "allow", false);
}

/// Record a refused request on its authenticate span: `reason` is the
/// refusal's code, `unavailable` whether it was the server's failure.
#[cfg_attr(not(feature = "jwt"), allow(dead_code))]
pub(crate) fn refused(span: &Span, reason: &str, unavailable: bool) {
    span.record("reason", reason);
    outcome(span, if unavailable { "error" } else { "deny" }, unavailable);
}

/// The span of a credential read for `service`.
pub(crate) fn secret_span(service: &str) -> Span {
    guard_span!(
        unsampled_here();
        spans::SECRET,
        service = bounded(service),
        outcome = Empty,
        cache = Empty,
        otel.status_code = Empty,
    )
}

/// The span of a downstream token for `target` (`grant`:
/// `token_exchange`, `client_credentials`).
#[cfg_attr(not(feature = "exchange"), allow(dead_code))]
pub(crate) fn exchange_span(grant: &'static str, target: &str) -> Span {
    guard_span!(
        unsampled_here();
        spans::EXCHANGE,
        grant,
        target = bounded(target),
        outcome = Empty,
        cache = Empty,
        otel.status_code = Empty,
    )
}

// ----- Upstream calls -----

/// An upstream call, as its span names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each is made by the feature that calls it
pub(crate) enum Fetch {
    Discovery,
    Jwks,
    Introspection,
    TokenEndpoint,
    VaultRead,
    VaultLookup,
    VaultRenew,
    VaultLogin,
    Redis,
}

#[cfg_attr(not(any(feature = "jwt", feature = "vault", feature = "redis")), allow(dead_code))]
impl Fetch {
    /// The `upstream` attribute: the value the upstream duration metric
    /// gives it.
    fn upstream(self) -> &'static str {
        match self {
            Fetch::Discovery | Fetch::Jwks => "jwks",
            Fetch::Introspection => "introspection",
            Fetch::TokenEndpoint => "token_endpoint",
            Fetch::VaultRead | Fetch::VaultLookup => "vault",
            Fetch::VaultRenew | Fetch::VaultLogin => "vault_renewal",
            Fetch::Redis => "redis",
        }
    }

    #[cfg(feature = "telemetry")]
    fn metric(self) -> super::metrics::Upstream {
        use super::metrics::Upstream;
        match self {
            Fetch::Discovery | Fetch::Jwks => Upstream::Jwks,
            Fetch::Introspection => Upstream::Introspection,
            Fetch::TokenEndpoint => Upstream::TokenEndpoint,
            Fetch::VaultRead | Fetch::VaultLookup => Upstream::Vault,
            Fetch::VaultRenew | Fetch::VaultLogin => Upstream::VaultRenewal,
            Fetch::Redis => Upstream::Redis,
        }
    }

    fn span(self) -> Span {
        let unsampled = unsampled_here();
        macro_rules! client {
            ($name:expr) => {
                guard_span!(
                    unsampled;
                    $name,
                    otel.kind = "client",
                    upstream = self.upstream(),
                    server.address = Empty,
                    outcome = Empty,
                    otel.status_code = Empty,
                )
            };
        }
        match self {
            Fetch::Discovery => client!(spans::DISCOVERY),
            Fetch::Jwks => client!(spans::JWKS),
            Fetch::Introspection => client!(spans::INTROSPECTION),
            Fetch::TokenEndpoint => client!(spans::TOKEN_ENDPOINT),
            Fetch::VaultRead => client!(spans::VAULT_READ),
            Fetch::VaultLookup => client!(spans::VAULT_LOOKUP),
            Fetch::VaultRenew => client!(spans::VAULT_RENEW),
            Fetch::VaultLogin => client!(spans::VAULT_LOGIN),
            Fetch::Redis => client!(spans::REDIS),
        }
    }
}

/// One call to an upstream: its span (a child of the current one) and,
/// with feature `telemetry`, its duration. Run the call's future in
/// [`Call::run`] (an HTTP request made there carries the span's
/// trace context: [`inject`]), then [`Call::finish`] it. A call dropped
/// unfinished (cancelled) records no outcome and no duration.
#[must_use]
#[cfg_attr(not(any(feature = "jwt", feature = "vault", feature = "redis")), allow(dead_code))]
pub(crate) struct Call {
    span: Span,
    #[cfg(feature = "telemetry")]
    fetch: Fetch,
    #[cfg(feature = "telemetry")]
    started: std::time::Instant,
}

#[cfg_attr(not(any(feature = "jwt", feature = "vault", feature = "redis")), allow(dead_code))]
impl Call {
    /// Start a call of kind `fetch` to `server` (a URL or a host; only its
    /// host and port are recorded).
    pub(crate) fn start(fetch: Fetch, server: &str) -> Call {
        let span = fetch.span();
        if !span.is_disabled() {
            span.record("server.address", server_address(server).as_str());
        }
        Call {
            span,
            #[cfg(feature = "telemetry")]
            fetch,
            #[cfg(feature = "telemetry")]
            started: std::time::Instant::now(),
        }
    }

    /// `future`, run inside the call's span.
    pub(crate) fn run<F: Future>(&self, future: F) -> Instrumented<F> {
        future.instrument(self.span.clone())
    }

    /// The call ended: `ok` when the upstream gave a usable answer (a
    /// refusal is one), not when it gave none, a 5xx or an unreadable one.
    pub(crate) fn finish(self, ok: bool) {
        outcome(&self.span, if ok { "ok" } else { "error" }, !ok);
        #[cfg(feature = "telemetry")]
        super::metrics::record_upstream(self.fetch.metric(), ok, self.started.elapsed());
    }
}

/// The host (and port) of `server`, a URL or already a host; never the
/// URL's credentials, path or query.
#[cfg_attr(not(any(feature = "jwt", feature = "vault", feature = "redis")), allow(dead_code))]
fn server_address(server: &str) -> String {
    if let Ok(url) = url::Url::parse(server)
        && let Some(host) = url.host_str()
    {
        return match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
    }
    bounded(server.rsplit('@').next().unwrap_or_default()).to_owned()
}

/// Add the current span's W3C trace context (`traceparent`, `tracestate`)
/// to an outgoing request's headers through the global propagator (feature
/// `telemetry`; without it, or without a valid span context, nothing).
#[cfg_attr(not(feature = "jwt"), allow(dead_code))]
pub(crate) fn inject(headers: &mut http::HeaderMap) {
    inject_from(&Span::current(), headers);
}

/// [`inject`] with `span`'s trace context: for a request sent where
/// another crate's spans are current (rustify's, for Vault), which the
/// application may not export.
#[cfg_attr(not(any(feature = "jwt", feature = "vault")), allow(dead_code))]
pub(crate) fn inject_from(span: &Span, headers: &mut http::HeaderMap) {
    #[cfg(feature = "telemetry")]
    w3c::inject(span, headers);
    #[cfg(not(feature = "telemetry"))]
    let _ = (span, headers);
}

/// The headers [`inject`] adds, for a request builder.
#[allow(dead_code)] // used by the features that fetch with a builder
pub(crate) fn headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    inject(&mut headers);
    headers
}

/// W3C trace context through the global propagator (feature `telemetry`).
#[cfg(feature = "telemetry")]
mod w3c {
    use opentelemetry::propagation::{Extractor, Injector};
    use opentelemetry::trace::TraceContextExt as _;
    use rmcp::model::MetaObject;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    /// The keys MCP 2026-07-28 reserves in `_meta` for trace context.
    const META_KEYS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

    struct Headers<'a>(&'a http::HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    /// A request's `params._meta`, seen through its three trace-context
    /// keys only (string values; anything else is absent).
    struct Meta<'a>(&'a MetaObject);

    impl Extractor for Meta<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0.get_traceparent(),
                "tracestate" => self.0.get_tracestate(),
                "baggage" => self.0.get_baggage(),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            META_KEYS.into_iter().filter(|key| self.get(key).is_some()).collect()
        }
    }

    struct HeadersMut<'a>(&'a mut http::HeaderMap);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            // A propagator's key or value that is not a valid header is
            // left out rather than sent broken.
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }

    /// The context `extractor` carries, if it names a valid remote span.
    fn extract(extractor: &dyn Extractor) -> Option<opentelemetry::Context> {
        let cx = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(extractor));
        cx.span().span_context().is_valid().then_some(cx)
    }

    /// Parent `span` (not started yet) to the request's trace context.
    pub(super) fn parent_from_headers(span: &Span, headers: &http::HeaderMap) {
        if let Some(cx) = extract(&Headers(headers)) {
            // Fails only without the OpenTelemetry layer: nothing to parent.
            let _ = span.set_parent(cx);
        }
    }

    /// The trace context of the request's `_meta`, if it names a valid
    /// remote span.
    pub(super) fn meta_context(meta: &MetaObject) -> Option<opentelemetry::Context> {
        meta.get_traceparent()?;
        extract(&Meta(meta))
    }

    /// Parent `span` (not started yet) to `cx`, the trace context of the
    /// request's `_meta`, linked to the HTTP request's span `http`.
    pub(super) fn parent_to_meta(span: &Span, cx: opentelemetry::Context, http: Option<&Span>) {
        if let Some(http) = http {
            let request = http.context().span().span_context().clone();
            if request.is_valid() && request != *cx.span().span_context() {
                span.add_link(request);
            }
        }
        let _ = span.set_parent(cx);
    }

    /// `span`'s OpenTelemetry context, when an OpenTelemetry layer sees
    /// the span (starting it: its sampler decides now).
    pub(super) fn context_of(span: &Span) -> Option<opentelemetry::Context> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        cx.span().span_context().is_valid().then_some(cx)
    }

    /// Write `span`'s trace context, and only it (no baggage), into
    /// `headers`; for a span the OpenTelemetry layer does not see (in a
    /// trace that is not sampled), the current context's.
    pub(super) fn inject(span: &Span, headers: &mut http::HeaderMap) {
        if span.is_disabled() {
            return;
        }
        let mut span_context = span.context().span().span_context().clone();
        if !span_context.is_valid() {
            span_context = opentelemetry::Context::map_current(|cx| cx.span().span_context().clone());
        }
        if !span_context.is_valid() {
            return;
        }
        let cx = opentelemetry::Context::new().with_remote_span_context(span_context);
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&cx, &mut HeadersMut(headers));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Head sampling: under a request whose trace is not sampled, the
    /// guard's spans open on [`UNSAMPLED_TARGET`] (and an upstream request
    /// still carries the trace, unsampled); under a sampled one, on their
    /// module's target.
    #[cfg(feature = "telemetry")]
    mod unsampled {
        use std::sync::{Arc, Mutex, PoisonError};

        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        use opentelemetry_sdk::trace::SdkTracerProvider;
        use tower::{ServiceExt as _, service_fn};
        use tracing::subscriber::with_default;
        use tracing_subscriber::layer::SubscriberExt as _;

        use super::*;

        /// The name and target of every span opened.
        #[derive(Clone, Default)]
        struct Opened(Arc<Mutex<Vec<(&'static str, &'static str)>>>);

        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Opened {
            fn on_new_span(
                &self,
                attrs: &tracing::span::Attributes<'_>,
                _id: &tracing::span::Id,
                _ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let meta = attrs.metadata();
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((meta.name(), meta.target()));
            }
        }

        /// One request with `traceparent` through [`RequestSpanLayer`]; the
        /// inner service authenticates, reads a secret and calls an
        /// upstream. The spans opened, and the upstream's `traceparent`.
        fn request(traceparent: &str) -> (Vec<(&'static str, &'static str)>, Option<String>) {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            let provider = SdkTracerProvider::builder().build();
            let opened = Opened::default();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
                .with(opened.clone());
            let upstream = with_default(subscriber, || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                let service = RequestSpanLayer::new().layer(service_fn(|_req: Request<()>| async {
                    let _authenticate = authenticate_span();
                    let secret = secret_span("catalyst");
                    let call = Call::start(Fetch::VaultRead, "http://127.0.0.1:8200");
                    let mut headers = http::HeaderMap::new();
                    call.run(async { inject(&mut headers) }).await;
                    call.finish(true);
                    drop(secret);
                    Ok::<_, std::convert::Infallible>(Response::new(headers))
                }));
                let request = Request::post("/mcp")
                    .header("traceparent", traceparent)
                    .body(())
                    .expect("request");
                let response = runtime.block_on(service.oneshot(request)).expect("response");
                response
                    .into_body()
                    .get("traceparent")
                    .map(|v| v.to_str().expect("ascii").to_owned())
            });
            let opened = opened.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
            (opened, upstream)
        }

        const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

        #[test]
        fn steps_of_an_unsampled_trace_open_on_the_unsampled_target() {
            let (opened, upstream) = request(&format!("00-{TRACE}-b7ad6b7169203331-00"));
            let target = |name: &str| opened.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
            // The request's span goes to the layer: its sampler decided.
            assert_eq!(
                target(spans::REQUEST),
                Some(module_path!().trim_end_matches("::tests::unsampled"))
            );
            for step in [spans::AUTHENTICATE, spans::SECRET, spans::VAULT_READ] {
                assert_eq!(target(step), Some(UNSAMPLED_TARGET), "{step}");
            }
            // The upstream still hears of the trace, as not sampled.
            let upstream = upstream.expect("a traceparent upstream");
            assert!(upstream.starts_with(&format!("00-{TRACE}-")), "{upstream}");
            assert!(upstream.ends_with("-00"), "{upstream}");
        }

        #[test]
        fn steps_of_a_sampled_trace_open_on_their_module() {
            let (opened, upstream) = request(&format!("00-{TRACE}-b7ad6b7169203331-01"));
            assert_eq!(opened.len(), 4, "{opened:?}");
            assert!(
                opened.iter().all(|(_, target)| *target != UNSAMPLED_TARGET),
                "{opened:?}"
            );
            let upstream = upstream.expect("a traceparent upstream");
            assert!(upstream.starts_with(&format!("00-{TRACE}-")), "{upstream}");
            assert!(upstream.ends_with("-01"), "{upstream}");
        }
    }

    #[test]
    fn caller_values_are_bounded_at_a_char_boundary() {
        assert_eq!(bounded("tools/call"), "tools/call");
        let long = "é".repeat(200);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_VALUE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn only_plausible_mcp_methods_are_recorded() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(mcp_method(&headers), None);
        headers.insert("mcp-method", "tools/call".parse().unwrap());
        assert_eq!(mcp_method(&headers), Some("tools/call"));
        headers.insert("mcp-method", "tools/call; drop".parse().unwrap());
        assert_eq!(mcp_method(&headers), None);
        headers.insert("mcp-method", "x".repeat(65).parse().unwrap());
        assert_eq!(mcp_method(&headers), None);
    }

    #[test]
    fn server_address_is_host_and_port_only() {
        assert_eq!(server_address("https://idp.example.com/jwks?x=1"), "idp.example.com");
        assert_eq!(server_address("redis://user:pw@10.0.0.1:6379/0"), "10.0.0.1:6379");
        assert_eq!(server_address("http://127.0.0.1:8200"), "127.0.0.1:8200");
        assert_eq!(server_address("cache.internal:6379"), "cache.internal:6379");
    }

    #[test]
    fn unusual_methods_are_other() {
        assert_eq!(method_name(&http::Method::POST), "POST");
        assert_eq!(method_name(&http::Method::from_bytes(b"BREW").unwrap()), "_OTHER");
    }
}
