//! Request limits over real HTTP: a burst over the rate is answered 429 with
//! `Retry-After` while other callers go on; requests in flight are counted
//! until their SSE answer ends; open `GET` streams are bounded apart; tenant keying; a per-tool rate is a JSON-RPC
//! error; a policy gives a caller its own limits and a broken answer falls
//! back to the configured ones.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Reply, client, mcp_post};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::limit::RequestLimits;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::policy::PolicyEngine;
use rmcp_guard_testkit::{McpClient, Protocol, TestIssuer};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// How long any single wait in these tests may take before it fails.
const BOUND: Duration = Duration::from_secs(10);

/// Holds `slow` calls until the test releases them.
struct Gate {
    entered: AtomicUsize,
    release: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            entered: AtomicUsize::new(0),
            release: Semaphore::new(0),
        }
    }
}

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
    gate: Arc<Gate>,
}

#[tool_router]
impl Tools {
    fn new(gate: Arc<Gate>) -> Self {
        Tools {
            tool_router: Self::tool_router(),
            gate,
        }
    }

    #[tool(description = "echo")]
    async fn echo(&self) -> String {
        "echo-ran".to_owned()
    }

    #[tool(description = "whoami")]
    async fn whoami(&self) -> String {
        "whoami-ran".to_owned()
    }

    #[tool(description = "waits until the test releases it")]
    async fn slow(&self) -> String {
        self.gate.entered.fetch_add(1, Ordering::SeqCst);
        let _ = tokio::time::timeout(BOUND, self.gate.release.acquire()).await;
        "slow-ran".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Every caller may do everything: only the limits refuse.
const ALLOW_ALL: &str = "package mcp.authz\ndefault allow := true\n";

struct Server {
    url: String,
    issuer: TestIssuer,
    gate: Arc<Gate>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(limits: RequestLimits, policy: Option<PolicyEngine>, stateless: bool) -> Server {
        let issuer = TestIssuer::start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let rs = ResourceServer::builder(url.clone(), Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri()))
            .required_scopes(["mcp:tools"])
            .build()
            .unwrap();
        let mut guard = Guard::new(rs).limits(limits);
        if stateless {
            guard = guard.stateless();
        }
        if let Some(policy) = policy {
            guard = guard.policy(policy);
        }
        let gate = Arc::new(Gate::default());
        let tools_gate = gate.clone();
        let app = guard.router(move || Ok(Tools::new(tools_gate.clone())));
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app).await;
        });
        Server {
            url,
            issuer,
            gate,
            task,
        }
    }

    /// A token for `subject` through `client`, in `tenant` if given.
    fn token(&self, subject: &str, client: &str, tenant: Option<&str>) -> String {
        let mut token = self
            .issuer
            .token()
            .subject(subject)
            .client_id(client)
            .audience(&self.url)
            .scope("mcp:tools");
        if let Some(tenant) = tenant {
            token = token.claim("tenant", json!(tenant));
        }
        token.sign()
    }

    /// One stateless `tools/call` of `tool`.
    async fn call(&self, token: &str, tool: &str) -> Reply {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}});
        let request = mcp_post(&client(), &self.url, &body)
            .bearer_auth(token)
            .header("mcp-protocol-version", "2025-06-18");
        Reply::read(tokio::time::timeout(BOUND, request.send()).await.unwrap().unwrap()).await
    }
}

/// The call ran its tool.
fn ran(reply: &Reply, tool: &str) -> bool {
    reply.status == 200 && reply.body.contains(&format!("{tool}-ran"))
}

/// A 429 with a whole-second `Retry-After` within `max` and the JSON-RPC
/// error naming `error`.
fn assert_too_many(reply: &Reply, error: &str, max: u64) {
    assert_eq!(reply.status, 429, "{}", reply.body);
    let retry_after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=max).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], -32029, "{body}");
    assert_eq!(body["error"]["data"]["error"], error, "{body}");
    assert_eq!(body["error"]["data"]["retry_after"], retry_after, "{body}");
}

#[tokio::test]
async fn a_burst_over_the_rate_gets_429_while_others_are_served() {
    let limits = RequestLimits::default().rate("3/min".parse().unwrap()).burst(3);
    let server = Server::start(limits, None, true).await;
    let alice = server.token("alice", "desktop", None);
    for _ in 0..3 {
        assert!(ran(&server.call(&alice, "echo").await, "echo"));
    }
    // One a minute comes back: the wait is at most 20 s, rounded up.
    assert_too_many(&server.call(&alice, "echo").await, "rate_limited", 20);
    // A new token for alice is still alice.
    let again = server.token("alice", "desktop", None);
    assert_too_many(&server.call(&again, "echo").await, "rate_limited", 20);

    // Another caller, and alice through another client, have their own budgets.
    let bob = server.token("bob", "desktop", None);
    assert!(ran(&server.call(&bob, "echo").await, "echo"));
    let alice_cli = server.token("alice", "cli", None);
    assert!(ran(&server.call(&alice_cli, "echo").await, "echo"));
}

#[tokio::test]
async fn requests_in_flight_count_until_their_stream_ends() {
    let limits = RequestLimits::default().in_flight(2);
    // With sessions, a `tools/call` is answered by an SSE stream that ends
    // with the result: it counts for as long as the tool runs.
    let server = Arc::new(Server::start(limits, None, false).await);
    let alice = server.token("alice", "desktop", None);
    let connect = |token: String| {
        let url = server.url.clone();
        async move {
            McpClient::connect(url, Protocol::V2025_11_25)
                .bearer(token)
                .send()
                .await
                .unwrap()
        }
    };
    let mcp = Arc::new(connect(alice.clone()).await);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mcp = mcp.clone();
            tokio::spawn(async move { mcp.call_tool("slow", Value::Null).await })
        })
        .collect();
    for _ in 0..1000 {
        if server.gate.entered.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.gate.entered.load(Ordering::SeqCst),
        2,
        "both slow calls are running"
    );

    let third = mcp.call_tool("echo", Value::Null).await.unwrap_err();
    assert_eq!(third.status().map(|s| s.as_u16()), Some(429), "{third}");
    assert_eq!(third.code(), Some(-32029), "{third}");
    // Bob is not slowed by alice.
    let bob = connect(server.token("bob", "desktop", None)).await;
    assert!(bob.call_tool("echo", Value::Null).await.is_ok());

    server.gate.release.add_permits(2);
    for call in slow {
        let result = tokio::time::timeout(BOUND, call).await.unwrap().unwrap().unwrap();
        assert!(format!("{result:?}").contains("slow-ran"));
    }
    // Their streams ended: alice has room again.
    assert!(mcp.call_tool("echo", Value::Null).await.is_ok());
}

/// Review of issue 10: rmcp keeps up to 33 `GET` streams per session, so one
/// token with 16 sessions could hold 528 connections open and leave none for
/// anyone else. Open streams are bounded per caller, apart from calls.
#[tokio::test]
async fn open_get_streams_are_bounded_per_caller_and_leave_calls_alone() {
    let server = Server::start(RequestLimits::default().in_flight(2), None, false).await;
    let open = |token: String| {
        let url = server.url.clone();
        async move {
            let mcp = McpClient::connect(url.clone(), Protocol::V2025_11_25)
                .bearer(token.clone())
                .send()
                .await
                .unwrap();
            let session = mcp.session_id().unwrap().to_owned();
            let stream = move || {
                let request = client()
                    .get(&url)
                    .bearer_auth(&token)
                    .header("accept", "text/event-stream")
                    .header("mcp-session-id", &session)
                    .header("mcp-protocol-version", "2025-11-25");
                async move { tokio::time::timeout(BOUND, request.send()).await.unwrap().unwrap() }
            };
            (mcp, stream)
        }
    };
    let (alice, alice_stream) = open(server.token("alice", "desktop", None)).await;
    let held = [alice_stream().await, alice_stream().await];
    assert!(held.iter().all(|r| r.status() == 200));
    assert_too_many(&Reply::read(alice_stream().await).await, "too_many_streams", 1);
    // Her calls go on, and bob's streams are his own.
    assert!(alice.call_tool("echo", Value::Null).await.is_ok());
    let (_bob, bob_stream) = open(server.token("bob", "desktop", None)).await;
    assert_eq!(bob_stream().await.status(), 200);
}

#[tokio::test]
async fn callers_of_one_tenant_share_a_budget_when_keyed_by_tenant() {
    let limits = RequestLimits::default()
        .rate("2/min".parse().unwrap())
        .burst(2)
        .per_tenant();
    let server = Server::start(limits, None, true).await;
    let alice = server.token("alice", "desktop", Some("acme"));
    let bob = server.token("bob", "desktop", Some("acme"));
    assert!(ran(&server.call(&alice, "echo").await, "echo"));
    assert!(ran(&server.call(&bob, "echo").await, "echo"));
    assert_too_many(&server.call(&alice, "echo").await, "rate_limited", 30);
    assert_too_many(&server.call(&bob, "echo").await, "rate_limited", 30);
    // Another tenant, and a caller without one, are not touched.
    let carol = server.token("carol", "desktop", Some("globex"));
    assert!(ran(&server.call(&carol, "echo").await, "echo"));
    let dave = server.token("dave", "desktop", None);
    assert!(ran(&server.call(&dave, "echo").await, "echo"));
}

#[tokio::test]
async fn a_per_tool_rate_is_a_json_rpc_error_for_both_protocols() {
    let limits = RequestLimits::default().tool("echo", "1/h".parse().unwrap());
    let policy = PolicyEngine::builder().module("allow.rego", ALLOW_ALL).build().unwrap();
    let server = Server::start(limits, Some(policy), false).await;
    for (i, protocol) in Protocol::ALL.into_iter().enumerate() {
        let token = server.token(&format!("user-{i}"), "desktop", None);
        let mcp = McpClient::connect(server.url.clone(), protocol)
            .bearer(token)
            .send()
            .await
            .unwrap();
        assert!(mcp.call_tool("echo", Value::Null).await.is_ok(), "{protocol}");
        let error = mcp.call_tool("echo", Value::Null).await.unwrap_err();
        assert_eq!(
            error.status(),
            None,
            "{protocol}: an answer, not an HTTP refusal: {error}"
        );
        assert_eq!(error.code(), Some(-32029), "{protocol}: {error}");
        match &error {
            rmcp_guard_testkit::McpError::JsonRpc { data: Some(data), .. } => {
                assert_eq!(data["tool"], "echo", "{protocol}");
                assert!(data["retry_after"].as_u64().unwrap() >= 1, "{protocol}");
            }
            other => panic!("{protocol}: {other}"),
        }
        // Other tools are not limited.
        assert!(mcp.call_tool("whoami", Value::Null).await.is_ok(), "{protocol}");
    }
}

#[tokio::test]
async fn a_policy_gives_callers_their_limits_and_never_lifts_them() {
    let policy = PolicyEngine::builder()
        .module(
            "limits.rego",
            r#"
            package mcp.authz
            default allow := true
            limits := {"rate": "2/min"} if input.subject == "tight"
            limits := {"rate": "fast"} if input.subject == "broken"
            limits := {"in_flight": 0} if input.subject == "zero"
            "#,
        )
        .build()
        .unwrap();
    let limits = RequestLimits::default().rate("4/min".parse().unwrap()).burst(4);
    let server = Server::start(limits, Some(policy), true).await;

    // The policy's rate (burst = its count, 2) replaces the configured one.
    let tight = server.token("tight", "desktop", None);
    for _ in 0..2 {
        assert!(ran(&server.call(&tight, "echo").await, "echo"));
    }
    assert_too_many(&server.call(&tight, "echo").await, "rate_limited", 30);

    // Answers the limits cannot use fall back to the configured 4, not to none.
    for subject in ["broken", "zero", "plain"] {
        let token = server.token(subject, "desktop", None);
        for _ in 0..4 {
            assert!(ran(&server.call(&token, "echo").await, "echo"), "{subject}");
        }
        assert_too_many(&server.call(&token, "echo").await, "rate_limited", 15);
    }
}

#[tokio::test]
async fn limits_can_be_turned_off_only_explicitly() {
    let off = RequestLimits::default()
        .rate("1/h".parse().unwrap())
        .burst(1)
        .dangerous()
        .unlimited();
    let server = Server::start(off, None, true).await;
    let alice = server.token("alice", "desktop", None);
    for _ in 0..5 {
        assert!(ran(&server.call(&alice, "echo").await, "echo"));
    }
}
