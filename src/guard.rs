//! [`Guard`]: the whole guarded MCP endpoint, assembled in one call.

use std::sync::Arc;

use rmcp::ServerHandler;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::advertise::{Advertised, CLIENT_CREDENTIALS_EXTENSION};
use crate::oauth::ResourceServer;
use crate::secrets::Credentials;
use crate::session::SessionBindingLayer;
use crate::telemetry::trace::{RequestSpanLayer, ToolSpans};

/// Assembles the guarded MCP endpoint; see the [type docs](Self).
///
/// ```no_run
/// use rmcp_guard::Guard;
/// use rmcp_guard::oauth::{Issuer, ResourceServer};
/// # #[derive(Clone)] struct MyServer;
/// # impl rmcp::ServerHandler for MyServer {}
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
///     .required_scopes(["mcp:tools"])
///     .build()?;
/// let app = Guard::new(rs).router(|| Ok(MyServer));
/// rmcp_guard::serve(tokio::net::TcpListener::bind("0.0.0.0:8080").await?, app).await?;
/// # Ok(()) }
/// ```
///
/// What [`Guard::router`] returns, from the outside in:
///
/// | piece | what it does | when |
/// |---|---|---|
/// | [`RequestSpanLayer`] | the span of each request (`rmcp_guard.request`), its parent the caller's `traceparent` (feature `telemetry`) | always ([`crate::telemetry`]) |
/// | [`EdgeLayer`](crate::edge::EdgeLayer) | one well-formed, allowed `Host` (ports matched exactly), a well-formed `Origin` | always |
/// | RFC 9728 metadata routes | `/.well-known/oauth-protected-resource[/mcp]`, unauthenticated | always |
/// | [`BearerAuthLayer`](crate::oauth::BearerAuthLayer) | authenticates every request to the MCP endpoint (bearer and DPoP, [`DpopConfig`](crate::oauth::DpopConfig)); refuses revoked tokens ([`SharedStore::revocations`](crate::store::SharedStore::revocations)); with a Redis store, DPoP proofs are remembered fleet-wide | always |
/// | [`RequestLimitLayer`](crate::limit::RequestLimitLayer) | per-caller request rate and requests in flight (429); per-tool rates; fleet-wide in Redis with [`Guard::shared_store`] (503 when it fails) | always ([`Guard::limits`]) |
/// | request context | the [`Credentials`] and [`TokenExchange`](crate::oauth::TokenExchange) for the extractors | when configured |
/// | [`SessionBindingLayer`] | a session belongs to the caller that opened it | with sessions |
/// | [`StepUpLayer`](crate::policy::StepUpLayer) | 403 `insufficient_scope` before rmcp when the policy names missing scopes | with a policy |
/// | rmcp's `StreamableHttpService` | `Origin` checks from the resource URI ([`HostPolicy`](crate::oauth::HostPolicy)); its `Host` check is left to the edge, which is stricter | always |
/// | [`Guarded`](crate::policy::Guarded) | every call, read, get and listing decided by the policy; the user's confirmation where the policy asks for it | with a policy |
/// | [`ToolSpans`] | the span of each tool call (`rmcp_guard.tool`), its parent the trace context in the request's `_meta` (feature `telemetry`) | always |
/// | [`OutputGuard`](crate::integrity::OutputGuard) | removes from each tool result the values of the credentials and tokens the call read, and credential-shaped text ([`Guard::output`]) | feature `integrity` |
/// | [`ArgumentGuard`](crate::integrity::ArgumentGuard) | a call's arguments at most 1 MiB and valid against the tool's `inputSchema` ([`Guard::arguments`]) | feature `integrity` |
/// | [`Advertised`] | adds the extensions the resource server supports (client credentials) to `server/discover` and `initialize` | always |
/// | your handler | tools take [`Principal`](crate::Principal), [`CallerCredentials`](crate::secrets::CallerCredentials), [`DownstreamTokens`](crate::oauth::DownstreamTokens) | always |
///
/// Each piece stays public for custom stacks.
#[derive(Debug, Clone)]
#[must_use]
pub struct Guard {
    rs: ResourceServer,
    #[cfg(feature = "policy")]
    policy: Option<crate::policy::PolicyEngine>,
    credentials: Option<Credentials>,
    #[cfg(feature = "exchange")]
    exchange: Option<crate::oauth::TokenExchange>,
    sessions: Option<SessionBindingLayer>,
    http: StreamableHttpServerConfig,
    limits: crate::limit::RequestLimits,
    #[cfg(feature = "policy")]
    request_state: Option<crate::state::RequestStateSealer>,
    store: crate::store::SharedStore,
    /// The pinned definitions: published as an extension, and enforced at
    /// runtime when the flag says so.
    #[cfg(feature = "integrity")]
    definitions: Option<(Arc<crate::integrity::DefinitionsLock>, bool)>,
    #[cfg(feature = "integrity")]
    arguments: crate::integrity::ArgumentLimits,
    #[cfg(feature = "integrity")]
    output: crate::integrity::OutputPolicy,
}

impl Guard {
    /// Guard the MCP endpoint of `rs` (served at its resource path).
    pub fn new(rs: ResourceServer) -> Self {
        Guard {
            #[cfg(feature = "policy")]
            policy: None,
            credentials: None,
            #[cfg(feature = "exchange")]
            exchange: None,
            sessions: Some(SessionBindingLayer::default()),
            http: rs.streamable_http_config(),
            limits: crate::limit::RequestLimits::default(),
            #[cfg(feature = "policy")]
            request_state: None,
            store: crate::store::SharedStore::memory(),
            #[cfg(feature = "integrity")]
            definitions: None,
            #[cfg(feature = "integrity")]
            arguments: crate::integrity::ArgumentLimits::default(),
            #[cfg(feature = "integrity")]
            output: crate::integrity::OutputPolicy::default(),
            rs,
        }
    }

    /// How tool arguments are checked before the tool runs (feature
    /// `integrity`, [`ArgumentGuard`](crate::integrity::ArgumentGuard),
    /// inside the policy). Defaults to
    /// [`ArgumentLimits::default`](crate::integrity::ArgumentLimits::default):
    /// at most 1 MiB, valid against the tool's `inputSchema`.
    #[cfg(feature = "integrity")]
    pub fn arguments(mut self, limits: crate::integrity::ArgumentLimits) -> Self {
        self.arguments = limits;
        self
    }

    /// What is removed from tool results before they leave (feature
    /// `integrity`, [`OutputGuard`](crate::integrity::OutputGuard), inside
    /// the policy). Defaults to
    /// [`OutputPolicy::default`](crate::integrity::OutputPolicy::default):
    /// every value of the credentials and downstream tokens the call read,
    /// and the high-confidence credential patterns.
    #[cfg(feature = "integrity")]
    pub fn output(mut self, policy: crate::integrity::OutputPolicy) -> Self {
        self.output = policy;
        self
    }

    /// Publish the digest of the server's pinned definitions (feature
    /// `integrity`): `server/discover` and `initialize` list the extension
    /// [`DEFINITIONS_LOCK_EXTENSION`](crate::integrity::DEFINITIONS_LOCK_EXTENSION)
    /// with `{"sha256": "<hex>"}`, so a client can pin what it was shown.
    /// Verify the definitions against the lock before serving
    /// ([`DefinitionsLock::verify`](crate::integrity::DefinitionsLock::verify)).
    /// Defaults to none.
    #[cfg(feature = "integrity")]
    pub fn definitions_lock(mut self, lock: &crate::integrity::DefinitionsLock) -> Self {
        self.definitions = Some((Arc::new(lock.clone()), false));
        self
    }

    /// [`definitions_lock`](Self::definitions_lock), and enforce it while
    /// serving (feature `integrity`, [`Pinned`](crate::integrity::Pinned),
    /// inside the policy): a tool, prompt or resource template whose
    /// definition is not the pinned one is hidden from its listing and (a
    /// tool or prompt) refused as unknown, however it changed at runtime,
    /// and audited. Defaults to none.
    #[cfg(feature = "integrity")]
    pub fn pin_definitions(mut self, lock: crate::integrity::DefinitionsLock) -> Self {
        self.definitions = Some((Arc::new(lock), true));
        self
    }

    /// Decide every call, read, get and listing with `engine`, and answer
    /// 403 `insufficient_scope` for a step-up. Defaults to none: every
    /// authenticated caller reaches every tool.
    #[cfg(feature = "policy")]
    #[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
    pub fn policy(mut self, engine: crate::policy::PolicyEngine) -> Self {
        self.policy = Some(engine);
        self
    }

    /// Seal the `requestState` of user confirmations (the policy's
    /// `confirm` rule; see [`Guarded`](crate::policy::Guarded)) with
    /// `sealer`: its keys, TTL and replay set. Give replicas behind one load
    /// balancer the same keys, or a confirmation asked by one is refused by
    /// another; with a Redis [`shared_store`](Self::shared_store), the
    /// sealer's own in-memory replay set is replaced by the fleet's
    /// ([`RedisReplaySet`](crate::state::RedisReplaySet)), so that a state
    /// opens once across replicas. Defaults to one sealer per process
    /// with generated keys (`RequestStateSealer::new(StateKeys::generate())`:
    /// TTL 300 s, single-use), which do not survive a restart or span
    /// replicas (with a Redis store, [`router`](Self::router) logs a warning
    /// for it).
    #[cfg(feature = "policy")]
    #[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
    pub fn request_state(mut self, sealer: crate::state::RequestStateSealer) -> Self {
        self.request_state = Some(sealer);
        self
    }

    /// Give tools their callers' credentials
    /// ([`CallerCredentials`](crate::secrets::CallerCredentials)). Defaults
    /// to none.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Give tools downstream tokens exchanged from the caller's
    /// ([`DownstreamTokens`](crate::oauth::DownstreamTokens)); the bearer
    /// layer then keeps the caller's token, redacted, for the exchange.
    /// Defaults to none.
    #[cfg(feature = "exchange")]
    #[cfg_attr(docsrs, doc(cfg(feature = "exchange")))]
    pub fn exchange(mut self, exchange: crate::oauth::TokenExchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// Bind sessions with `layer` (its capacity, idle time and sessions per
    /// principal); the guard gives it its rmcp session manager. Defaults to
    /// [`SessionBindingLayer::default`].
    pub fn session_binding(mut self, layer: SessionBindingLayer) -> Self {
        self.sessions = Some(layer);
        self
    }

    /// Serve without sessions: every request stands alone (the only mode of
    /// MCP 2026-07-28; older clients are served statelessly too) and
    /// answers are JSON where the handler allows. Any replica can answer any
    /// request: the mode to pick for a new deployment and for more than one
    /// replica (README, "Stateless or sessions?"). Defaults to sessions for
    /// clients before 2026-07-28, bound to their callers; 2026-07-28 requests
    /// are stateless, with JSON answers, in both modes.
    pub fn stateless(mut self) -> Self {
        self.sessions = None;
        self
    }

    /// rmcp's Streamable HTTP settings: keep-alive, request body limit, the
    /// cancellation token that ends open streams on shutdown. Defaults to
    /// [`ResourceServer::streamable_http_config`], whose `Host`/`Origin`
    /// checks come from the resource URI; keep them when you replace it.
    /// The allowed hosts are checked by the edge in front of rmcp
    /// ([`EdgeLayer`](crate::edge::EdgeLayer)), the allowed origins by rmcp.
    pub fn http_config(mut self, config: StreamableHttpServerConfig) -> Self {
        self.http = config;
        self
    }

    /// Per-caller request limits ([`crate::limit`]); with a policy, its
    /// limits rule may give a caller others. Turning them off is
    /// `RequestLimits::default().dangerous().unlimited()`. Defaults to
    /// [`RequestLimits::default`](crate::limit::RequestLimits::default):
    /// 20 requests a second (burst 40) and 16 in flight per caller.
    pub fn limits(mut self, limits: crate::limit::RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Where the state replicas must agree on lives ([`crate::store`]): the
    /// request limits, the session bindings, the single-use request states
    /// and the revocations all use `store`. Defaults to
    /// [`SharedStore::memory`](crate::store::SharedStore::memory): one
    /// replica.
    pub fn shared_store(mut self, store: crate::store::SharedStore) -> Self {
        self.store = store;
        self
    }

    /// The axum router: the metadata routes and the guarded MCP endpoint at
    /// the resource path, serving handlers made by `factory` (one per
    /// session, or per request when stateless).
    pub fn router<H, F>(self, factory: F) -> axum::Router
    where
        H: ServerHandler + Send + 'static,
        F: Fn() -> Result<H, std::io::Error> + Send + Sync + 'static,
    {
        // Answers are JSON where the handler allows (it falls back to SSE
        // when the handler sends a notification or request first): for every
        // MCP 2026-07-28 request, which is stateless in both modes, and when
        // stateless for every request. 2025-era sessions keep their streams.
        let mut config = self.http.with_json_response(true);
        if self.sessions.is_none() {
            config = config.with_legacy_session_mode(false);
        }
        let edge = crate::edge::EdgeLayer::new(&config.allowed_hosts, crate::edge::default_port_of(self.rs.resource()));
        // The edge checks `Host` against these hosts before rmcp, and more
        // strictly (one header, the port, an absolute-form target): rmcp's
        // own check would repeat it, parsing every allowed host again on
        // every request. Its `Origin` check stays.
        config.allowed_hosts.clear();
        // One session manager, shared with the binding layer so that it can
        // close a principal's sessions beyond its bound.
        let stateful = self.sessions.map(|layer| {
            let manager = Arc::new(LocalSessionManager::default());
            (
                layer.session_manager(manager.clone()).shared(self.store.clone()),
                manager,
            )
        });
        #[cfg(feature = "telemetry")]
        if let Some((layer, _)) = &stateful {
            layer.report_in_use();
        }
        #[cfg(feature = "policy")]
        let policy = self
            .policy
            .clone()
            .map(|p| Arc::new(p) as Arc<dyn crate::limit::LimitSource>);
        #[cfg(not(feature = "policy"))]
        let policy = None;
        let limits = self.limits.with_policy(policy).with_store(&self.store);
        #[allow(unused_mut)]
        let mut extensions = supported_extensions(&self.rs);
        #[cfg(feature = "integrity")]
        if let Some((lock, _)) = &self.definitions {
            let mut settings = rmcp::model::JsonObject::new();
            settings.insert("sha256".to_owned(), serde_json::Value::String(lock.digest().to_owned()));
            extensions.insert(crate::integrity::DEFINITIONS_LOCK_EXTENSION.to_owned(), settings);
        }
        let extensions = Arc::new(extensions);
        #[cfg(feature = "integrity")]
        let arguments = (
            // One guard, its compiled schemas shared by every handler made.
            crate::integrity::ArgumentGuard::new((), self.arguments),
            crate::integrity::OutputGuard::new((), self.output.clone()),
            // One set of pins, the definitions found pinned shared too.
            crate::integrity::Pinned::maybe(
                (),
                self.definitions
                    .clone()
                    .filter(|(_, enforce)| *enforce)
                    .map(|(lock, _)| lock),
            ),
        );
        #[cfg(not(feature = "integrity"))]
        let arguments = NoChecks;
        #[allow(unused_mut)]
        let mut bearer = crate::oauth::BearerAuthLayer::new(self.rs.clone()).revocations(self.store.revocations());
        #[cfg(feature = "redis")]
        if self.rs.dpop().mode() != crate::oauth::DpopMode::Off
            && self.rs.dpop().replay.is_none()
            && let Some(replay) = crate::state::RedisReplaySet::new(&self.store)
        {
            // DPoP proofs used on one replica are refused on every other.
            let replay = replay.max_per_principal(crate::oauth::DEFAULT_REPLAY_PER_CALLER);
            bearer = bearer.dpop_replay_set(Arc::new(replay));
        }
        #[cfg(feature = "exchange")]
        if self.exchange.is_some() {
            bearer = bearer.keep_inbound_token();
        }
        let stack = Stack {
            path: self.rs.resource_path().to_owned(),
            edge,
            bearer,
            limits: limits.layer(),
            context: RequestContext {
                credentials: self.credentials,
                #[cfg(feature = "exchange")]
                exchange: self.exchange,
            },
            metadata: self.rs.metadata_router(),
        };
        #[cfg(feature = "policy")]
        match self.policy.clone() {
            Some(engine) => {
                let step_up = crate::policy::StepUpLayer::new(self.rs.challenges(), engine.clone());
                let sealer = fleet_sealer(self.request_state.clone(), &self.store);
                let bound = stateful.is_some();
                let factory = move || {
                    factory().map(|h| {
                        let mut guarded = crate::policy::Guarded::new(checked(h, arguments.clone()), engine.clone());
                        if let Some(sealer) = &sealer {
                            guarded = guarded.request_state(sealer.clone());
                        }
                        if bound {
                            guarded = guarded.bound_sessions();
                        }
                        Advertised::with_extensions(guarded, extensions.clone())
                    })
                };
                mcp_router(stack, factory, stateful, config, Some(step_up))
            }
            None => {
                let factory = move || {
                    factory().map(|h| Advertised::with_extensions(checked(h, arguments.clone()), extensions.clone()))
                };
                mcp_router(stack, factory, stateful, config, None)
            }
        }
        #[cfg(not(feature = "policy"))]
        {
            let factory = move || {
                factory().map(|h| Advertised::with_extensions(checked(h, arguments.clone()), extensions.clone()))
            };
            mcp_router(stack, factory, stateful, config, None)
        }
    }
}

/// The sealer of confirmations in a fleet: with a Redis store, the sealer's
/// own in-memory replay set becomes the fleet's ([`RedisReplaySet`](crate::state::RedisReplaySet)),
/// so that a state opens once across replicas. Without a configured sealer
/// each replica seals with its own generated keys: a confirmation asked by
/// one replica is refused by the others (fail closed, the user is asked
/// again), which is logged once here.
#[cfg(feature = "policy")]
fn fleet_sealer(
    sealer: Option<crate::state::RequestStateSealer>,
    store: &crate::store::SharedStore,
) -> Option<crate::state::RequestStateSealer> {
    #[cfg(feature = "redis")]
    if let Some(replay) = crate::state::RedisReplaySet::new(store) {
        if sealer.is_none() {
            tracing::warn!(
                "Guard: shared store without Guard::request_state: each replica seals confirmations with its own \
                 generated keys, so a confirmation asked by one replica is refused by another; configure the \
                 same StateKeys on every replica"
            );
        }
        return sealer.map(|s| s.shared_replay_set(Arc::new(replay)));
    }
    let _ = store;
    sealer
}

/// The handler with a span around each tool call, its tools served only as
/// pinned, its results without secrets and its arguments checked (feature
/// `integrity`).
#[cfg(feature = "integrity")]
type Checked<H> =
    ToolSpans<crate::integrity::Pinned<crate::integrity::OutputGuard<crate::integrity::ArgumentGuard<H>>>>;
#[cfg(not(feature = "integrity"))]
type Checked<H> = ToolSpans<H>;

#[cfg(feature = "integrity")]
fn checked<H>(
    handler: H,
    (arguments, output, pinned): (
        crate::integrity::ArgumentGuard<()>,
        crate::integrity::OutputGuard<()>,
        crate::integrity::Pinned<()>,
    ),
) -> Checked<H> {
    ToolSpans::new(pinned.around(output.around(arguments.around(handler))))
}

/// Without the `integrity` feature: nothing to check.
#[cfg(not(feature = "integrity"))]
#[derive(Clone)]
struct NoChecks;

#[cfg(not(feature = "integrity"))]
fn checked<H>(handler: H, _: NoChecks) -> Checked<H> {
    ToolSpans::new(handler)
}

/// The MCP extensions `rs` supports, for [`Advertised`]: client credentials
/// when it accepts them.
fn supported_extensions(rs: &ResourceServer) -> rmcp::model::ExtensionCapabilities {
    let mut extensions = rmcp::model::ExtensionCapabilities::new();
    if rs.accepts_client_credentials() {
        extensions.insert(CLIENT_CREDENTIALS_EXTENSION.to_owned(), rmcp::model::JsonObject::new());
    }
    extensions
}

#[cfg(feature = "policy")]
type StepUp = crate::policy::StepUpLayer;
#[cfg(not(feature = "policy"))]
type StepUp = std::convert::Infallible;

/// rmcp's Streamable HTTP service, with sessions (bound to their callers
/// by the layer in `stateful`) or without, behind the step-up layer when
/// there is one, inside `stack`.
fn mcp_router<H, F>(
    stack: Stack,
    factory: F,
    stateful: Option<(SessionBindingLayer, Arc<LocalSessionManager>)>,
    config: StreamableHttpServerConfig,
    step_up: Option<StepUp>,
) -> axum::Router
where
    H: ServerHandler + Send + 'static,
    F: Fn() -> Result<H, std::io::Error> + Send + Sync + 'static,
{
    use tower_layer::Layer as _;
    match (stateful, step_up) {
        (Some((sessions, manager)), None) => stack.router(sessions.layer(Rmcp::new(factory, manager, config))),
        (None, None) => stack.router(Rmcp::new(factory, Arc::new(NeverSessionManager::default()), config)),
        #[cfg(feature = "policy")]
        (Some((sessions, manager)), Some(step_up)) => {
            stack.router(sessions.layer(step_up.layer(Rmcp::new(factory, manager, config))))
        }
        #[cfg(feature = "policy")]
        (None, Some(step_up)) => {
            stack.router(step_up.layer(Rmcp::new(factory, Arc::new(NeverSessionManager::default()), config)))
        }
        #[cfg(not(feature = "policy"))]
        (_, Some(never)) => match never {},
    }
}

/// rmcp's Streamable HTTP service, shared: each request is handled by
/// [`StreamableHttpService::handle`] on the one service. Called as a tower
/// service it clones itself, its whole configuration with every allowed
/// host and origin, and axum clones a route's service for each request too.
struct Rmcp<S, M>(Arc<StreamableHttpService<S, M>>);

impl<S, M> Rmcp<S, M>
where
    S: ServerHandler + Send + 'static,
    M: rmcp::transport::streamable_http_server::session::SessionManager,
{
    fn new(
        factory: impl Fn() -> Result<S, std::io::Error> + Send + Sync + 'static,
        manager: Arc<M>,
        config: StreamableHttpServerConfig,
    ) -> Self {
        Rmcp(Arc::new(StreamableHttpService::new(factory, manager, config)))
    }
}

impl<S, M> Clone for Rmcp<S, M> {
    fn clone(&self) -> Self {
        Rmcp(self.0.clone())
    }
}

impl<S, M, B> tower_service::Service<http::Request<B>> for Rmcp<S, M>
where
    S: ServerHandler + Send + 'static,
    M: rmcp::transport::streamable_http_server::session::SessionManager,
    B: http_body::Body + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(service.handle(request).await) })
    }
}

/// The layers in front of every MCP request, and the routes beside it.
///
/// The MCP endpoint is one service, its layers nested directly (one route,
/// one boxed service): layered route by route, each layer would box the
/// service, its future and the response body again on every request.
struct Stack {
    path: String,
    edge: crate::edge::EdgeLayer,
    bearer: crate::oauth::BearerAuthLayer,
    limits: crate::limit::RequestLimitLayer,
    context: RequestContext,
    /// The RFC 9728 metadata routes.
    metadata: axum::Router,
}

impl Stack {
    /// The router: `service` at the resource path behind every layer, the
    /// metadata routes (and the fallback) behind the request span and the
    /// edge only.
    fn router<S, B>(self, service: S) -> axum::Router
    where
        S: tower_service::Service<
                http::Request<axum::body::Body>,
                Response = http::Response<B>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        use tower_layer::Layer as _;
        let endpoint = RequestSpanLayer::new().layer(
            self.edge
                .layer(self.bearer.layer(self.limits.layer(self.context.layer(service)))),
        );
        self.metadata
            .layer(self.edge)
            .layer(RequestSpanLayer::new())
            .route_service(&self.path, endpoint)
    }
}

/// What the extractors find in each MCP request's extensions: the
/// [`Credentials`] and [`TokenExchange`](crate::oauth::TokenExchange), when
/// configured.
#[derive(Clone)]
struct RequestContext {
    credentials: Option<Credentials>,
    #[cfg(feature = "exchange")]
    exchange: Option<crate::oauth::TokenExchange>,
}

impl<S> tower_layer::Layer<S> for RequestContext {
    type Service = WithContext<S>;

    fn layer(&self, inner: S) -> WithContext<S> {
        WithContext {
            context: self.clone(),
            inner,
        }
    }
}

/// The service of [`RequestContext`].
#[derive(Clone)]
struct WithContext<S> {
    context: RequestContext,
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for WithContext<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        if let Some(credentials) = &self.context.credentials {
            request.extensions_mut().insert(credentials.clone());
        }
        #[cfg(feature = "exchange")]
        if let Some(exchange) = &self.context.exchange {
            request.extensions_mut().insert(exchange.clone());
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::ServerHandler;

    #[derive(Clone)]
    struct Handler;
    impl ServerHandler for Handler {}

    /// The size of what `f` returns.
    fn returned<A, B, C, R, F: Fn(A, B, C) -> R>(_: &F) -> usize {
        std::mem::size_of::<R>()
    }

    /// The sizes of the futures of `X`'s `tools/call` and of its largest
    /// request method (rmcp's task for a request holds room for the
    /// largest).
    fn futures<X: ServerHandler + 'static>() -> (usize, usize) {
        let call = returned(&|h: &'static X, r, c| h.call_tool(r, c));
        let largest = [
            call,
            returned(&|h: &'static X, r, c| h.list_tools(r, c)),
            returned(&|h: &'static X, r, c| h.read_resource(r, c)),
            returned(&|h: &'static X, r, c| h.get_prompt(r, c)),
            returned(&|h: &'static X, r, c| h.list_resources(r, c)),
            returned(&|h: &'static X, r, c| h.list_prompts(r, c)),
            returned(&|h: &'static X, r, c| h.complete(r, c)),
            returned(&|h: &'static X, _: (), c| h.discover(c)),
        ]
        .into_iter()
        .max()
        .unwrap_or_default();
        (call, largest)
    }

    /// Each wrapper makes its inner handler's future in the method itself
    /// and keeps only what it needs after it, not a second copy of the
    /// request and its context; `Guarded` boxes its rare paths (a per-tool
    /// budget, a confirmation). rmcp copies a request's future when it
    /// spawns its task. Before: a `tools/call` through the chain was 2.4 KiB
    /// over the handler's own (3.2 KiB with `Guarded`).
    #[test]
    fn the_guards_handlers_keep_request_futures_small() {
        type Chain = Advertised<Checked<Handler>>;
        let (handler_call, handler_largest) = futures::<Handler>();
        let (call, largest) = futures::<Chain>();
        assert!(
            call <= handler_call + 256,
            "tools/call: {call} bytes, the handler's {handler_call}"
        );
        assert!(
            largest <= handler_largest + 256,
            "largest: {largest} bytes, the handler's {handler_largest}"
        );
        #[cfg(feature = "policy")]
        {
            let (call, largest) = futures::<Advertised<crate::policy::Guarded<Checked<Handler>>>>();
            assert!(
                call <= handler_call + 512,
                "tools/call: {call} bytes, the handler's {handler_call}"
            );
            assert!(
                largest <= handler_largest + 640,
                "largest: {largest} bytes, the handler's {handler_largest}"
            );
        }
    }
}
