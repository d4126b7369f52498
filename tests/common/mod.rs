//! Shared helpers for the integration tests and the load benchmark.
//!
//! - [`GuardedServer`]: the rmcp server of `examples/secure_server.rs` (tools
//!   `whoami` and `echo`) behind [`ResourceServer::router`], on `127.0.0.1:0`.
//! - [`StubServer`]: a loopback HTTP server that answers fixed JSON documents
//!   and counts every request it gets: an attacker's `jku` / `x5u` host, or an
//!   identity provider that only speaks OpenID Connect discovery.
//! - [`Reply`] and the `assert_*` functions: what a rejection must look like
//!   (status, challenge parameters, and never the token echoed back).
//!
//! Everything listens on loopback port 0 and stops when its handle drops.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::oauth::ResourceServerBuilder;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::{Guard, Principal};
use rmcp_guard_testkit::{TestIssuer, TokenBuilder};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The scope every guarded test server requires.
pub const SCOPE: &str = "mcp:tools";

// ---------------------------------------------------------------------------
// The MCP server: the tools of examples/secure_server.rs.

/// Tools `whoami` and `echo`, as in `examples/secure_server.rs`.
#[derive(Clone)]
pub struct Tools {
    tool_router: Arc<ToolRouter<Self>>,
}

/// Arguments of `echo`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[tool_router]
impl Tools {
    /// The tools, sharing one router: a stateless server makes a handler
    /// per request, and building the router (every route and its schema)
    /// each time would cost more than the guard itself.
    pub fn new() -> Self {
        static ROUTER: std::sync::LazyLock<Arc<ToolRouter<Tools>>> =
            std::sync::LazyLock::new(|| Arc::new(Tools::tool_router()));
        Tools {
            tool_router: ROUTER.clone(),
        }
    }

    #[tool(description = "Who is calling: subject, tenant, groups and scopes of the token")]
    async fn whoami(&self, caller: Principal) -> Result<String, ErrorData> {
        Ok(json!({
            "subject": caller.subject(),
            "issuer": caller.issuer(),
            "client_id": caller.client_id(),
            "tenant": caller.tenant(),
            "groups": caller.groups(),
            "scopes": caller.scopes().collect::<Vec<_>>(),
        })
        .to_string())
    }

    #[tool(description = "Echo the text back")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// How the rmcp service is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No sessions, JSON responses: a `tools/call` is one self-contained POST.
    Stateless,
    /// rmcp's defaults (sessions, SSE), as a real client uses them.
    Sessions,
}

fn mcp_service(
    mode: Mode,
    config: StreamableHttpServerConfig,
) -> (
    StreamableHttpService<Tools, LocalSessionManager>,
    Box<dyn FnOnce() + Send>,
) {
    let mut config = config.with_sse_keep_alive(None);
    if mode == Mode::Stateless {
        config = config.with_legacy_session_mode(false).with_json_response(true);
    }
    let token = config.cancellation_token.clone();
    let service = StreamableHttpService::new(|| Ok(Tools::new()), Arc::new(LocalSessionManager::default()), config);
    (service, Box::new(move || token.cancel()))
}

/// A running HTTP server; stops (gracefully, then by abort) when dropped.
struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    cancel_mcp: Option<Box<dyn FnOnce() + Send>>,
    task: JoinHandle<()>,
}

impl Running {
    fn spawn(listener: TcpListener, app: Router, cancel_mcp: Option<Box<dyn FnOnce() + Send>>) -> Running {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Running {
            shutdown: Some(tx),
            cancel_mcp,
            task,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel_mcp.take() {
            cancel();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// Request limits for the shared test servers and the load benchmark: the
/// limit layer runs (its cost is measured) but never refuses, since these
/// servers send many requests with one token. `tests/limits.rs` tests the
/// limits themselves.
pub fn generous_limits() -> rmcp_guard::limit::RequestLimits {
    rmcp_guard::limit::RequestLimits::default()
        .rate(rmcp_guard::limit::Rate::per_second(std::num::NonZeroU32::MAX))
        .burst(u32::MAX)
        .in_flight(u32::MAX)
}

/// The guarded rmcp server: [`Guard`] around the tools, on `127.0.0.1:0`.
pub struct GuardedServer {
    /// The configuration the server runs with.
    pub rs: ResourceServer,
    /// The MCP endpoint, `http://127.0.0.1:{port}/mcp` (also the resource URI
    /// and the default audience).
    pub url: String,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    _running: Running,
}

impl GuardedServer {
    /// The RFC 9728 metadata URL the challenges point to.
    pub fn metadata_url(&self) -> &str {
        self.rs.metadata_url()
    }
}

/// Start a guarded server trusting `issuer`, requiring [`SCOPE`], with
/// `configure` applied last (it sees the resource URI through the builder's
/// defaults, so audiences default to [`GuardedServer::url`]).
pub async fn start_guarded_with(
    issuer: Issuer,
    mode: Mode,
    configure: impl FnOnce(ResourceServerBuilder) -> ResourceServerBuilder,
) -> GuardedServer {
    let (listener, addr) = bind().await;
    let base = format!("http://{addr}");
    let url = format!("{base}/mcp");
    let builder = ResourceServer::builder(url.clone(), issuer)
        .required_scopes([SCOPE])
        .http_timeout(Duration::from_secs(3));
    let rs = configure(builder).build().expect("valid test configuration");
    let config = rs.streamable_http_config().with_sse_keep_alive(None);
    let cancel = config.cancellation_token.clone();
    let guard = Guard::new(rs.clone()).http_config(config).limits(generous_limits());
    let guard = if mode == Mode::Stateless {
        guard.stateless()
    } else {
        guard
    };
    let app = guard.router(|| Ok(Tools::new()));
    GuardedServer {
        rs,
        url,
        base,
        _running: Running::spawn(listener, app, Some(Box::new(move || cancel.cancel()))),
    }
}

/// A guarded stateless server that also decides every request with `engine`
/// (`Guarded` around the tools, `StepUpLayer` in front of rmcp): the whole
/// stack of `examples/secure_server.rs`.
#[cfg(feature = "policy")]
pub async fn start_guarded_with_policy(issuer: &TestIssuer, engine: rmcp_guard::policy::PolicyEngine) -> GuardedServer {
    let (listener, addr) = bind().await;
    let base = format!("http://{addr}");
    let url = format!("{base}/mcp");
    let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
        .required_scopes([SCOPE])
        .build()
        .expect("valid test configuration");
    let config = rs.streamable_http_config().with_sse_keep_alive(None);
    let cancel = config.cancellation_token.clone();
    let app = Guard::new(rs.clone())
        .http_config(config)
        .limits(generous_limits())
        .stateless()
        .policy(engine)
        .router(|| Ok(Tools::new()));
    GuardedServer {
        rs,
        url,
        base,
        _running: Running::spawn(listener, app, Some(Box::new(move || cancel.cancel()))),
    }
}

/// A guarded stateless server trusting `issuer` through its configured
/// `jwks_uri` (no discovery), with default settings.
pub async fn start_guarded(issuer: &TestIssuer) -> GuardedServer {
    start_guarded_with(
        Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()),
        Mode::Stateless,
        |b| b,
    )
    .await
}

/// The same rmcp server without the guard (for the load benchmark).
pub struct PlainServer {
    /// The MCP endpoint.
    pub url: String,
    _running: Running,
}

/// Start the unguarded rmcp server on `127.0.0.1:0`.
pub async fn start_unguarded(mode: Mode) -> PlainServer {
    let (listener, addr) = bind().await;
    let (mcp, cancel) = mcp_service(
        mode,
        StreamableHttpServerConfig::default().with_allowed_hosts(["127.0.0.1".to_owned(), addr.to_string()]),
    );
    let app = Router::new().route_service("/mcp", mcp);
    PlainServer {
        url: format!("http://{addr}/mcp"),
        _running: Running::spawn(listener, app, Some(cancel)),
    }
}

// ---------------------------------------------------------------------------
// A stub server that counts requests.

struct StubState {
    routes: BTreeMap<String, Value>,
    hits: AtomicUsize,
}

/// A loopback server answering fixed JSON documents at fixed paths (404
/// elsewhere) and counting every request, whatever its path or method.
pub struct StubServer {
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    state: Arc<StubState>,
    _running: Running,
}

impl StubServer {
    /// Start it; `routes` receives the base URL (to write self-referencing
    /// documents) and returns `(path, JSON document)` pairs.
    pub async fn start(routes: impl FnOnce(&str) -> Vec<(String, Value)>) -> StubServer {
        let (listener, addr) = bind().await;
        let base = format!("http://{addr}");
        let state = Arc::new(StubState {
            routes: routes(&base).into_iter().collect(),
            hits: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(stub_handler).with_state(Arc::clone(&state));
        StubServer {
            base,
            state,
            _running: Running::spawn(listener, app, None),
        }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Requests received so far, on any path.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn stub_handler(State(state): State<Arc<StubState>>, uri: Uri) -> axum::response::Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    match state.routes.get(uri.path()) {
        Some(doc) => axum::Json(doc.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

// ---------------------------------------------------------------------------
// Requests and replies.

/// An HTTP client for tests: no proxy, bounded timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

/// A JSON-RPC `tools/call` of `echo`.
pub fn echo_call(text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}})
}

/// A JSON-RPC `tools/call` of `whoami`.
pub fn whoami_call() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}})
}

/// A POST to the MCP endpoint with the headers a Streamable HTTP client sends,
/// without credentials.
pub fn mcp_post(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
}

/// Everything a client saw of a response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("response body");
        Reply { status, headers, body }
    }

    /// The parsed first `WWW-Authenticate` challenge, if any: `Bearer`
    /// (then the `DPoP` one when DPoP is on, see
    /// [`dpop_challenge`](Self::dpop_challenge); nothing else).
    pub fn challenge(&self) -> Option<Challenge> {
        let all = self.challenges();
        assert!(all.len() <= 2, "at most two challenges: {all:?}");
        if let Some(second) = all.get(1) {
            assert_eq!(second.scheme, "DPoP", "the second challenge is DPoP's: {all:?}");
        }
        all.into_iter().next()
    }

    /// Every `WWW-Authenticate` challenge, in order.
    pub fn challenges(&self) -> Vec<Challenge> {
        self.headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| Challenge::parse(v.to_str().expect("ASCII challenge")))
            .collect()
    }

    /// The `DPoP` challenge, if any.
    pub fn dpop_challenge(&self) -> Option<Challenge> {
        self.challenges().into_iter().find(|c| c.scheme == "DPoP")
    }

    /// The `text` of the first content block of a JSON-RPC tool result.
    pub fn tool_text(&self) -> String {
        let v: Value = serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("JSON-RPC body: {}", self.body));
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("tool result text in {v}"))
            .to_owned()
    }
}

/// POST a `tools/call` of `echo` with `Authorization: Bearer {token}`.
pub async fn call_echo(url: &str, token: &str, text: &str) -> Reply {
    let response = mcp_post(&client(), url, &echo_call(text))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("request to the guarded server");
    Reply::read(response).await
}

/// A parsed `Bearer k="v", k2="v2"` challenge.
#[derive(Debug)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parse one challenge (auth-params with quoted-string or token values).
    pub fn parse(value: &str) -> Challenge {
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let mut params = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
                chars.next();
            }
            let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
            if name.is_empty() {
                break;
            }
            assert_eq!(chars.next(), Some('='), "auth-param {name} without a value in {value}");
            let mut v = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => v.extend(chars.next()),
                        Some('"') => break,
                        Some(c) => v.push(c),
                        None => panic!("unterminated quoted-string in {value}"),
                    }
                }
            } else {
                v.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
            }
            let previous = params.insert(name.trim().to_owned(), v.trim().to_owned());
            assert!(previous.is_none(), "duplicate auth-param in {value}");
        }
        Challenge {
            scheme: scheme.to_owned(),
            params,
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

// ---------------------------------------------------------------------------
// Assertions.

/// No response header and no byte of the body contains `token` (nor any of
/// its segments long enough to be recognisable).
pub fn assert_token_not_echoed(reply: &Reply, token: &str) {
    let mut needles: Vec<&str> = vec![token];
    needles.extend(token.split('.').filter(|s| s.len() >= 16));
    for needle in needles {
        if needle.is_empty() {
            continue;
        }
        assert!(
            !reply.body.contains(needle),
            "the response body echoes the token: {}",
            reply.body
        );
        for (name, value) in &reply.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains(needle), "header {name} echoes the token: {value}");
        }
    }
}

/// The body of a rejection: short JSON `{"error", "error_description"}`.
fn assert_rejection_body(reply: &Reply, error: &str) {
    let body: Value =
        serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("rejection body is JSON: {}", reply.body));
    assert_eq!(body["error"], error, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    assert!(reply.body.len() < 512, "a short body: {}", reply.body);
}

/// 401 `invalid_token` with `error_description`, `resource_metadata` and
/// `scope`, and nothing of the token in the response.
pub fn assert_invalid_token(reply: &Reply, server: &GuardedServer, token: &str, description: &str) {
    assert_eq!(reply.status, 401, "{reply:?}");
    let challenge = reply.challenge().expect("a WWW-Authenticate challenge");
    assert_eq!(challenge.scheme, "Bearer");
    assert_eq!(challenge.get("error"), Some("invalid_token"), "{challenge:?}");
    assert_eq!(challenge.get("error_description"), Some(description), "{challenge:?}");
    assert_eq!(
        challenge.get("resource_metadata"),
        Some(server.metadata_url()),
        "{challenge:?}"
    );
    assert_eq!(challenge.get("scope"), Some(SCOPE), "{challenge:?}");
    assert_rejection_body(reply, "invalid_token");
    assert_token_not_echoed(reply, token);
}

/// 400 `invalid_request` with `resource_metadata`, and nothing of the token.
pub fn assert_invalid_request(reply: &Reply, server: &GuardedServer, token: &str) {
    assert_eq!(reply.status, 400, "{reply:?}");
    let challenge = reply.challenge().expect("a WWW-Authenticate challenge");
    assert_eq!(challenge.scheme, "Bearer");
    assert_eq!(challenge.get("error"), Some("invalid_request"), "{challenge:?}");
    assert_eq!(
        challenge.get("resource_metadata"),
        Some(server.metadata_url()),
        "{challenge:?}"
    );
    assert_rejection_body(reply, "invalid_request");
    assert_token_not_echoed(reply, token);
}

/// 503 with `Retry-After`, no challenge, and nothing of the token.
pub fn assert_unavailable(reply: &Reply, token: &str) {
    assert_eq!(reply.status, 503, "{reply:?}");
    let retry_after = reply.headers.get("retry-after").expect("Retry-After on 503");
    assert!(
        retry_after.to_str().unwrap().parse::<u64>().is_ok(),
        "Retry-After is delta-seconds: {retry_after:?}"
    );
    assert!(reply.headers.get("www-authenticate").is_none(), "no challenge on 503");
    assert_token_not_echoed(reply, token);
}

/// The tool answered: 200 and the echoed text.
pub fn assert_echoed(reply: &Reply, text: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.tool_text(), text, "{reply:?}");
}

/// A token for `server` with the required scope, ready to be customised.
pub fn token_for<'a>(issuer: &'a TestIssuer, server: &GuardedServer) -> TokenBuilder<'a> {
    issuer.token().audience(server.url.clone()).scope(SCOPE)
}

/// A claim that makes each token unique, so the verified-token cache never
/// answers for it.
pub fn unique(builder: TokenBuilder<'_>) -> TokenBuilder<'_> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    builder.claim("jti", json!(format!("t-{}", NEXT.fetch_add(1, Ordering::SeqCst))))
}
