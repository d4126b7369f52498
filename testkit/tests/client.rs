//! `McpClient` against a plain rmcp 3.11 server, in both protocol
//! generations, against a stateful server (sessions, SSE answers) and a
//! stateless one (JSON answers); personas' tokens carry their claims.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard_testkit::{McpClient, McpError, Protocol, TestIssuer, TestServer};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);

/// One tool, `echo`, whose `text` is mirrored into `Mcp-Param-Text` in
/// 2026-07-28 (the server checks the header against the body).
#[derive(Clone)]
struct Echo {
    tool_router: ToolRouter<Self>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    #[schemars(extend("x-mcp-header" = "Text"))]
    text: String,
}

#[tool_router]
impl Echo {
    fn new() -> Self {
        Echo {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Echo the text, and the Authorization header seen")]
    async fn echo(
        &self,
        Parameters(args): Parameters<EchoArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> String {
        let auth = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        json!({"text": args.text, "authorization": auth}).to_string()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// `LocalSessionManager`, sessions for 2025-11-25, SSE answers.
    Stateful,
    /// No sessions, JSON answers.
    Stateless,
}

async fn start(mode: Mode) -> TestServer {
    let config = match mode {
        Mode::Stateful => StreamableHttpServerConfig::default(),
        Mode::Stateless => StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true),
    }
    .with_sse_keep_alive(None);
    let service = StreamableHttpService::new(|| Ok(Echo::new()), Arc::new(LocalSessionManager::default()), config);
    TestServer::start(Router::new().nest_service("/mcp", service))
        .await
        .expect("bind 127.0.0.1:0")
}

fn text_of(result: &rmcp::model::CallToolResult) -> Value {
    let text = result.content[0].as_text().expect("text content").text.clone();
    serde_json::from_str(&text).expect("the tool answers JSON")
}

async fn list_and_call(mode: Mode, protocol: Protocol) {
    let server = start(mode).await;
    let client = tokio::time::timeout(
        TIMEOUT,
        McpClient::connect(server.mcp_url("/mcp"), protocol).bearer("opaque-token"),
    )
    .await
    .expect("connect does not hang")
    .unwrap_or_else(|e| panic!("{mode:?} {protocol}: connect: {e}"));

    match (mode, protocol) {
        (Mode::Stateful, Protocol::V2025_11_25) => assert!(client.session_id().is_some(), "a session was opened"),
        _ => assert!(client.session_id().is_none(), "{mode:?} {protocol}: no session"),
    }
    if protocol == Protocol::V2025_11_25 {
        assert_eq!(client.protocol_version(), "2025-11-25");
        assert!(client.initialize_result().is_some());
    }

    let tools = client
        .list_tools()
        .await
        .unwrap_or_else(|e| panic!("{mode:?} {protocol}: list: {e}"));
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "echo");

    // Non-ASCII text: the Mcp-Param-Text header is base64-wrapped.
    for text in ["hello", "héllo wörld"] {
        let result = client
            .call_tool("echo", json!({"text": text}))
            .await
            .unwrap_or_else(|e| panic!("{mode:?} {protocol}: call: {e}"));
        assert_ne!(result.is_error, Some(true));
        let answer = text_of(&result);
        assert_eq!(answer["text"], text);
        assert_eq!(answer["authorization"], "Bearer opaque-token");
    }

    // A JSON-RPC error: unknown tool.
    let err = client.call_tool("nope", json!({})).await.unwrap_err();
    assert!(
        matches!(err, McpError::JsonRpc { .. } | McpError::Http { .. }),
        "{mode:?} {protocol}: {err}"
    );
    assert!(err.code().is_some(), "{mode:?} {protocol}: {err}");

    // Any other request through `request`: `ping` until 2025-11-25,
    // `server/discover` from 2026-07-28 on (which removed `ping`).
    match protocol {
        Protocol::V2025_11_25 => {
            let pong = client.request("ping", Value::Null).await;
            assert_eq!(pong.ok(), Some(json!({})), "{mode:?} {protocol}: ping");
        }
        _ => {
            let err = client.request("ping", Value::Null).await.unwrap_err();
            assert_eq!(
                err.status(),
                Some(http::StatusCode::NOT_FOUND),
                "{mode:?} {protocol}: {err}"
            );
            assert_eq!(err.code(), Some(-32601), "{mode:?} {protocol}: method not found");
            let discovered = client
                .discover()
                .await
                .unwrap_or_else(|e| panic!("{mode:?} {protocol}: discover: {e}"));
            assert!(
                discovered.supported_versions.iter().any(|v| v.as_str() == "2026-07-28"),
                "{:?}",
                discovered.supported_versions
            );
            assert!(discovered.capabilities.tools.is_some());
        }
    }

    client.close().await.expect("close");
}

#[tokio::test]
async fn stateful_server_2025_11_25_uses_a_session() {
    list_and_call(Mode::Stateful, Protocol::V2025_11_25).await;
}

#[tokio::test]
async fn stateful_server_2026_07_28_is_served_statelessly() {
    list_and_call(Mode::Stateful, Protocol::V2026_07_28).await;
}

#[tokio::test]
async fn stateless_server_2025_11_25() {
    list_and_call(Mode::Stateless, Protocol::V2025_11_25).await;
}

#[tokio::test]
async fn stateless_server_2026_07_28() {
    list_and_call(Mode::Stateless, Protocol::V2026_07_28).await;
}

#[tokio::test]
async fn closed_session_is_gone() {
    let server = start(Mode::Stateful).await;
    let client = McpClient::connect(server.mcp_url("/mcp"), Protocol::V2025_11_25)
        .await
        .expect("connect");
    let session = client.session_id().expect("session").to_owned();
    client.close().await.expect("close");

    // The same session id, reused by hand, is refused.
    let response = reqwest::Client::new()
        .post(server.mcp_url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn non_2xx_answers_keep_status_and_challenge() {
    let app = Router::new().route(
        "/mcp",
        axum::routing::post(|| async {
            (
                http::StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
                "no",
            )
        }),
    );
    let server = TestServer::start(app).await.expect("bind");
    for protocol in Protocol::ALL {
        let err = match McpClient::connect(server.mcp_url("/mcp"), protocol).await {
            Err(err) => err,
            Ok(client) => client.list_tools().await.unwrap_err(),
        };
        assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED), "{protocol}");
        assert_eq!(
            err.www_authenticate(),
            Some(r#"Bearer error="invalid_token""#),
            "{protocol}"
        );
    }
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWS has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON claims")
}

#[tokio::test]
async fn personas_tokens_carry_their_claims() {
    let issuer = TestIssuer::start().await.expect("issuer");
    issuer
        .persona("alice")
        .groups(["editors"])
        .tenant("acme")
        .scopes(["mcp:tools"])
        .client_id("cli")
        .claim("department", json!("R&D"));
    issuer
        .persona("bob")
        .groups(["viewers"])
        .audience("http://127.0.0.1:1/mcp");

    // Remembered: a later call (even through a clone) sees the same alice.
    let again = issuer.clone().persona("alice");
    assert_eq!(again.current_groups(), ["editors"]);
    assert_eq!(again.current_tenant().as_deref(), Some("acme"));
    assert_eq!(again.current_scopes(), ["mcp:tools"]);

    let claims = payload(&again.token("http://127.0.0.1:8080/mcp"));
    assert_eq!(claims["iss"], issuer.issuer());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "http://127.0.0.1:8080/mcp");
    assert_eq!(claims["groups"], json!(["editors"]));
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["scope"], "mcp:tools");
    assert_eq!(claims["client_id"], "cli");
    assert_eq!(claims["department"], "R&D");

    let bob = payload(&issuer.persona("bob").sign());
    assert_eq!(bob["sub"], "bob");
    assert_eq!(bob["aud"], "http://127.0.0.1:1/mcp");
    assert_eq!(bob["groups"], json!(["viewers"]));
    assert!(bob.get("tenant").is_none() && bob.get("scope").is_none() && bob.get("client_id").is_none());

    // A setter replaces; the last call wins.
    issuer.persona("alice").groups(["admins", "editors"]);
    assert_eq!(
        payload(&issuer.persona("alice").sign())["groups"],
        json!(["admins", "editors"])
    );

    // The builder keeps everything else adjustable.
    let expired = payload(&issuer.persona("alice").builder().expired().sign());
    assert_eq!(expired["tenant"], "acme");
    assert_eq!(issuer.persona_names(), ["alice", "bob"]);
}

#[tokio::test]
async fn the_bearer_reaches_the_tool_in_both_generations() {
    let issuer = TestIssuer::start().await.expect("issuer");
    let server = start(Mode::Stateless).await;
    let token = issuer
        .persona("carol")
        .scopes(["mcp:tools"])
        .token(server.mcp_url("/mcp"));
    for protocol in Protocol::ALL {
        let client = McpClient::connect(server.mcp_url("/mcp"), protocol)
            .bearer(token.clone())
            .await
            .expect("connect");
        let result = client.call_tool("echo", json!({"text": "hi"})).await.expect("call");
        assert_eq!(text_of(&result)["authorization"], format!("Bearer {token}"));
    }
}
