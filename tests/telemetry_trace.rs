//! Issue 15, traces, inside the library: a `Guard` served over real HTTP
//! with the OpenTelemetry SDK (an in-memory exporter), the
//! `tracing-opentelemetry` layer and the W3C propagator installed, as an
//! application installs them. One tool call makes one tree of spans under
//! the caller's `traceparent`; `_meta` trace context parents the tool span
//! (MCP 2026-07-28); the JWKS fetch made while authenticating, and the
//! Vault read made by the tool, go out with a `traceparent` of the caller's
//! trace, seen at a local JWKS server and a local stand-in for Vault.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::policy::PolicyEngine;
use rmcp_guard::secrets::{
    CallerCredentials, Credentials, MemoryStore, PathTemplate, SecretStore, VaultAuth, VaultStore,
};
use rmcp_guard::telemetry::trace::spans;
use rmcp_guard_testkit::client::{McpClient, Protocol};
use rmcp_guard_testkit::{TestIssuer, TestServer};
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt as _;

const SCOPE: &str = "mcp:tools";

const POLICY: &str = r#"
package mcp.authz

import rego.v1

default allow := false

allow if "mcp:tools" in input.scopes
"#;

// ---------------------------------------------------------------------------
// What an application installs: the SDK with an exporter, the layer, the
// propagator. Once per test binary (the subscriber is global: the server's
// tasks run on the runtime's threads); each test finds its spans by trace id.

/// Every span exported, in order.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Recorder {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(batch);
        Ok(())
    }
}

impl Recorder {
    fn in_trace(&self, trace: TraceId) -> Vec<SpanData> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .cloned()
            .collect()
    }

    /// The spans of `trace`, once every name in `names` is among them
    /// (spans are exported as they close, which for the request span is
    /// when rmcp's handler task lets go of it).
    async fn wait_for(&self, trace: TraceId, names: &[&str]) -> Vec<SpanData> {
        for _ in 0..100 {
            let spans = self.in_trace(trace);
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let spans = self.in_trace(trace);
        panic!(
            "spans {names:?} not all exported in trace {trace}; got {:?}",
            spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        );
    }
}

fn telemetry() -> &'static Recorder {
    static INSTALLED: OnceLock<(Recorder, SdkTracerProvider)> = OnceLock::new();
    &INSTALLED
        .get_or_init(|| {
            let recorder = Recorder::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(recorder.clone())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("telemetry_trace"));
            let subscriber = tracing_subscriber::registry()
                .with(layer)
                .with(tracing_subscriber::filter::LevelFilter::INFO);
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this binary");
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            (recorder, provider)
        })
        .0
}

// ---------------------------------------------------------------------------
// The server: a tool that reads the caller's credential, behind a `Guard`
// with a policy, trusting an issuer whose JWK set is served by a local
// server that keeps each request's `traceparent`.

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Connect to Catalyst Center with the caller's credential")]
    async fn connect(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let credential = credentials.get("catalyst").await?;
        // (The output guard would remove the credential's values from the result.)
        credential.expose_required("username")?;
        Ok("connected".to_owned())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// The issuer's JWK set, served at `{base}/jwks`; the `traceparent` of
/// every request it got (`None` for a request without one).
struct Jwks {
    url: String,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
    _server: TestServer,
}

impl Jwks {
    async fn start(issuer: &TestIssuer) -> Jwks {
        let set: Value = reqwest::get(issuer.jwks_uri()).await.unwrap().json().await.unwrap();
        let traceparents = Arc::new(Mutex::new(Vec::new()));
        let seen = traceparents.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move |headers: HeaderMap| {
                let traceparent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                seen.lock().unwrap_or_else(PoisonError::into_inner).push(traceparent);
                let set = set.clone();
                async move { axum::Json(set) }
            }),
        );
        let server = TestServer::start(app).await.unwrap();
        Jwks {
            url: server.mcp_url("/jwks"),
            traceparents,
            _server: server,
        }
    }

    fn traceparents(&self) -> Vec<Option<String>> {
        self.traceparents.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Just enough of Vault's HTTP API for a `VaultStore` with a static token
/// (`lookup-self`, one KV v2 secret); the path and `traceparent` of every
/// request it got.
struct FakeVault {
    url: String,
    requests: Seen,
    _server: TestServer,
}

/// Each request's path and `traceparent`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

impl FakeVault {
    async fn start() -> FakeVault {
        let requests = Seen::default();
        let seen = requests.clone();
        let envelope = |data: Value| {
            json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
                   "data": data, "warnings": null, "wrap_info": null, "auth": null})
        };
        let lookup = envelope(json!({
            "accessor": "a", "creation_time": 0, "creation_ttl": 0, "display_name": "root",
            "entity_id": "", "expire_time": null, "explicit_max_ttl": 0, "id": "root",
            "identity_policies": null, "issue_time": null, "meta": null, "num_uses": 0,
            "orphan": true, "path": "auth/token/root", "policies": ["root"], "renewable": false,
            "role": null, "ttl": 0,
        }));
        let secret = envelope(json!({
            "data": {"username": "alice-netops", "password": "pw"},
            "metadata": {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "",
                         "custom_metadata": null, "destroyed": false, "version": 1},
        }));
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
            let traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((uri.path().to_owned(), traceparent));
            let answer = match uri.path() {
                "/v1/auth/token/lookup-self" => Some(lookup.clone()),
                "/v1/secret/data/mcp/alice/catalyst" => Some(secret.clone()),
                _ => None,
            };
            async move {
                match answer {
                    Some(body) => (axum::http::StatusCode::OK, axum::Json(body)),
                    None => (axum::http::StatusCode::NOT_FOUND, axum::Json(json!({"errors": []}))),
                }
            }
        });
        let server = TestServer::start(app).await.unwrap();
        FakeVault {
            url: server.url().to_owned(),
            requests,
            _server: server,
        }
    }

    fn traceparents_of(&self, path: &str) -> Vec<Option<String>> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

struct Server {
    url: String,
    jwks: Jwks,
    _server: TestServer,
}

async fn start(issuer: &TestIssuer, stateless: bool) -> Server {
    let store = MemoryStore::new().with("mcp/alice/catalyst", [("username", "alice-netops"), ("password", "pw")]);
    start_with(issuer, stateless, Arc::new(store)).await
}

async fn start_with(issuer: &TestIssuer, stateless: bool, store: Arc<dyn SecretStore>) -> Server {
    let jwks = Jwks::start(issuer).await;
    let keys = Issuer::with_jwks_uri(issuer.issuer(), jwks.url.clone());
    let server = TestServer::start_with(move |base| {
        let rs = ResourceServer::builder(format!("{base}/mcp"), keys)
            .required_scopes([SCOPE])
            .build()
            .expect("valid configuration");
        let engine = PolicyEngine::builder()
            .module("allow.rego", POLICY)
            .build()
            .expect("policy");
        let credentials = Credentials::builder(store)
            .template(PathTemplate::parse("mcp/{subject}/{service}").expect("template"))
            .build();
        let guard = Guard::new(rs).policy(engine).credentials(credentials);
        let guard = if stateless { guard.stateless() } else { guard };
        guard.router(|| {
            Ok(Tools {
                tool_router: Tools::tool_router(),
            })
        })
    })
    .await
    .expect("server");
    Server {
        url: server.mcp_url("/mcp"),
        jwks,
        _server: server,
    }
}

fn token(issuer: &TestIssuer, server: &Server) -> String {
    issuer
        .token()
        .subject("alice")
        .audience(server.url.clone())
        .scope(SCOPE)
        .sign()
}

// ---------------------------------------------------------------------------
// Reading the spans.

/// A fresh W3C trace id and parent span id, unique per call.
fn caller_context() -> (TraceId, SpanId) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let process = u64::from(std::process::id());
    let trace = TraceId::from(u128::from(process) << 64 | u128::from(n) | 0x4bf9_2f35 << 96);
    (trace, SpanId::from(0x00f0_67aa_0ba9_0000 | n))
}

fn traceparent(trace: TraceId, parent: SpanId) -> String {
    format!("00-{trace}-{parent}-01")
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let mut found = spans.iter().filter(|s| s.name == name);
    match (found.next(), found.next()) {
        (Some(span), None) => span,
        (first, _) => panic!(
            "expected one {name} span, found {}",
            if first.is_some() { "several" } else { "none" }
        ),
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn assert_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} is a child of {}",
        child.name,
        parent.name
    );
    assert_eq!(child.span_context.trace_id(), parent.span_context.trace_id());
}

fn traceparent_header(value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("traceparent"),
        HeaderValue::from_str(value).unwrap(),
    )
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tool_call_is_one_tree_under_the_callers_traceparent() {
    let recorder = telemetry();
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true).await;
    let (trace, caller_span) = caller_context();
    let (name, value) = traceparent_header(&traceparent(trace, caller_span));
    let client = McpClient::connect(server.url.clone(), Protocol::V2026_07_28)
        .bearer(token(&issuer, &server))
        .header(name, value)
        .await
        .unwrap();

    let result = client.request("tools/call", json!({"name": "connect"})).await.unwrap();
    assert_eq!(result["content"][0]["text"], "connected");

    let spans = recorder
        .wait_for(
            trace,
            &[
                spans::REQUEST,
                spans::AUTHENTICATE,
                spans::JWKS,
                spans::POLICY,
                spans::TOOL,
                spans::SECRET,
            ],
        )
        .await;

    // The request span continues the caller's trace.
    let request = one(&spans, spans::REQUEST);
    assert_eq!(request.parent_span_id, caller_span);
    assert!(request.parent_span_is_remote);
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(attribute(request, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attribute(request, "url.path").as_deref(), Some("/mcp"));
    assert_eq!(attribute(request, "mcp.method").as_deref(), Some("tools/call"));
    assert_eq!(attribute(request, "http.response.status_code").as_deref(), Some("200"));

    // request -> authenticate -> jwks (the first token: its keys fetched).
    let authenticate = one(&spans, spans::AUTHENTICATE);
    assert_child(authenticate, request);
    assert_eq!(attribute(authenticate, "outcome").as_deref(), Some("allow"));
    assert_eq!(attribute(authenticate, "cached").as_deref(), Some("false"));
    let jwks = one(&spans, spans::JWKS);
    assert_child(jwks, authenticate);
    assert_eq!(jwks.span_kind, SpanKind::Client);
    assert_eq!(attribute(jwks, "upstream").as_deref(), Some("jwks"));
    assert_eq!(attribute(jwks, "outcome").as_deref(), Some("ok"));

    // request -> policy; request -> tool -> secret.
    let policy = one(&spans, spans::POLICY);
    assert_child(policy, request);
    assert_eq!(attribute(policy, "action").as_deref(), Some("tools/call"));
    assert_eq!(attribute(policy, "resource").as_deref(), Some("connect"));
    assert_eq!(attribute(policy, "outcome").as_deref(), Some("allow"));
    let tool = one(&spans, spans::TOOL);
    assert_child(tool, request);
    assert_eq!(attribute(tool, "gen_ai.tool.name").as_deref(), Some("connect"));
    assert_eq!(attribute(tool, "mcp.method.name").as_deref(), Some("tools/call"));
    assert_eq!(attribute(tool, "outcome").as_deref(), Some("ok"));
    let secret = one(&spans, spans::SECRET);
    assert_child(secret, tool);
    assert_eq!(attribute(secret, "service").as_deref(), Some("catalyst"));
    assert_eq!(attribute(secret, "outcome").as_deref(), Some("ok"));
    assert_eq!(attribute(secret, "cache").as_deref(), Some("miss"));

    // The JWKS request went out in the caller's trace, from the jwks span.
    assert_eq!(
        server.jwks.traceparents(),
        [Some(traceparent(trace, jwks.span_context.span_id()))]
    );

    // No attribute of any span holds the token.
    let token = token(&issuer, &server);
    let signature = token.rsplit('.').next().unwrap();
    for span in &spans {
        for kv in &span.attributes {
            assert!(!kv.value.to_string().contains(signature), "{}: {}", span.name, kv.key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_trace_context_parents_the_tool_span() {
    let recorder = telemetry();
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true).await;
    let (http_trace, http_parent) = caller_context();
    let (meta_trace, meta_parent) = caller_context();
    let (name, value) = traceparent_header(&traceparent(http_trace, http_parent));
    let client = McpClient::connect(server.url.clone(), Protocol::V2026_07_28)
        .bearer(token(&issuer, &server))
        .header(name, value)
        .await
        .unwrap();

    // MCP 2026-07-28: `traceparent` / `tracestate` at the root of `_meta`.
    let params = json!({
        "name": "connect",
        "_meta": {
            "traceparent": traceparent(meta_trace, meta_parent),
            "tracestate": "congo=t61rcWkgMzE",
        },
    });
    let result = client.request("tools/call", params).await.unwrap();
    assert_eq!(result["content"][0]["text"], "connected");

    let http = recorder.wait_for(http_trace, &[spans::REQUEST, spans::POLICY]).await;
    let request = one(&http, spans::REQUEST);
    assert!(
        http.iter().all(|s| s.name != spans::TOOL),
        "the tool span left the HTTP trace"
    );

    let mcp = recorder.wait_for(meta_trace, &[spans::TOOL, spans::SECRET]).await;
    let tool = one(&mcp, spans::TOOL);
    assert_eq!(tool.parent_span_id, meta_parent);
    assert!(tool.parent_span_is_remote);
    assert_eq!(tool.span_context.trace_state().header(), "congo=t61rcWkgMzE");
    // Still linked to the HTTP request it came in.
    let links: Vec<_> = tool.links.iter().map(|l| l.span_context.clone()).collect();
    assert_eq!(links, std::slice::from_ref(&request.span_context));
    // What the tool does stays under the tool span.
    assert_child(one(&mcp, spans::SECRET), tool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_hangs_under_its_own_request_not_the_handshake() {
    let recorder = telemetry();
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, false).await;
    let bearer = format!("Bearer {}", token(&issuer, &server));
    let http = reqwest::Client::new();
    let post = |body: Value, traceparent: String, session: Option<String>| {
        let mut request = http
            .post(&server.url)
            .header("authorization", &bearer)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("traceparent", traceparent)
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.send()
    };

    let (open_trace, open_parent) = caller_context();
    let opened = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "telemetry_trace", "version": "1"},
        }}),
        traceparent(open_trace, open_parent),
        None,
    )
    .await
    .unwrap();
    assert!(opened.status().is_success(), "{}", opened.status());
    let session = opened.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(opened.text().await);
    let initialized = post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        traceparent(open_trace, open_parent),
        Some(session.clone()),
    )
    .await
    .unwrap();
    assert!(initialized.status().is_success());

    let (call_trace, call_parent) = caller_context();
    let called = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "connect"}}),
        traceparent(call_trace, call_parent),
        Some(session),
    )
    .await
    .unwrap();
    assert!(called.status().is_success());
    let text = called.text().await.unwrap();
    assert!(text.contains("connected"), "{text}");

    // The session's handler runs in a task rmcp spawned at `initialize`,
    // yet the call's spans belong to the call's own request.
    let spans = recorder
        .wait_for(call_trace, &[spans::REQUEST, spans::POLICY, spans::TOOL, spans::SECRET])
        .await;
    let request = one(&spans, spans::REQUEST);
    assert_eq!(request.parent_span_id, call_parent);
    assert_child(one(&spans, spans::POLICY), request);
    let tool = one(&spans, spans::TOOL);
    assert_child(tool, request);
    assert_child(one(&spans, spans::SECRET), tool);
    let handshake: HashMap<_, _> = recorder
        .in_trace(open_trace)
        .into_iter()
        .map(|s| (s.name.to_string(), s))
        .collect();
    assert!(
        !handshake.contains_key(spans::TOOL),
        "the tool call was put in the handshake's trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace_and_is_not_forwarded() {
    let recorder = telemetry();
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true).await;
    let bogus = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let (name, value) = traceparent_header(bogus);
    let client = McpClient::connect(server.url.clone(), Protocol::V2026_07_28)
        .bearer(token(&issuer, &server))
        .header(name, value)
        .await
        .unwrap();
    client.request("tools/call", json!({"name": "connect"})).await.unwrap();

    let sent = server.jwks.traceparents();
    assert_eq!(sent.len(), 1);
    let sent = sent[0].clone().expect("the fetch carries the server's own trace");
    assert_ne!(sent, bogus);
    let trace = TraceId::from_hex(sent.split('-').nth(1).unwrap()).unwrap();
    let spans = recorder.wait_for(trace, &[spans::REQUEST, spans::JWKS]).await;
    let request = one(&spans, spans::REQUEST);
    assert_eq!(request.parent_span_id, SpanId::INVALID, "a root span");
    assert_eq!(
        sent,
        traceparent(trace, one(&spans, spans::JWKS).span_context.span_id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_read_of_a_tool_goes_out_in_the_callers_trace() {
    let recorder = telemetry();
    let issuer = TestIssuer::start().await.unwrap();
    let vault = FakeVault::start().await;
    let store = VaultStore::builder(vault.url.clone(), VaultAuth::token("root"))
        .build()
        .await
        .expect("the store looks its token up");
    let server = start_with(&issuer, true, Arc::new(store)).await;
    let (trace, caller_span) = caller_context();
    let (name, value) = traceparent_header(&traceparent(trace, caller_span));
    let client = McpClient::connect(server.url.clone(), Protocol::V2026_07_28)
        .bearer(token(&issuer, &server))
        .header(name, value)
        .await
        .unwrap();
    let result = client.request("tools/call", json!({"name": "connect"})).await.unwrap();
    assert_eq!(result["content"][0]["text"], "connected");

    let spans = recorder
        .wait_for(trace, &[spans::TOOL, spans::SECRET, spans::VAULT_READ])
        .await;
    let read = one(&spans, spans::VAULT_READ);
    assert_child(read, one(&spans, spans::SECRET));
    assert_eq!(read.span_kind, SpanKind::Client);
    assert_eq!(attribute(read, "upstream").as_deref(), Some("vault"));
    assert_eq!(attribute(read, "outcome").as_deref(), Some("ok"));
    assert_eq!(
        vault.traceparents_of("/v1/secret/data/mcp/alice/catalyst"),
        [Some(traceparent(trace, read.span_context.span_id()))]
    );
    // The token lookup at build time was in no caller's trace: its own.
    let lookups = vault.traceparents_of("/v1/auth/token/lookup-self");
    assert_eq!(lookups.len(), 1);
    assert!(!lookups[0].as_deref().unwrap_or_default().contains(&trace.to_string()));
}
