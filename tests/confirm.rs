//! Confirmation for risky tools, over real HTTP: the policy's `confirm` rule
//! marks `deploy_template`; `Guarded` asks the user through an elicitation
//! form (MCP 2026-07-28 `InputRequiredResult` + sealed `requestState`) and
//! runs the tool only on the retry carrying their "yes". Every refusal is
//! checked against a counter of the deploys that actually ran.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, FormElicitationCapability, Implementation, ProtocolVersion,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RequestContext, RoleClient};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::Principal;
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::policy::{Action, PolicyEngine, PolicyInput};
use rmcp_guard::state::{RequestStateSealer, StateKeys};
use rmcp_guard_testkit::client::{McpClient, McpError, Protocol};
use rmcp_guard_testkit::{TestIssuer, TestServer};
use serde_json::{Value, json};

const POLICY: &str = r#"
package mcp.authz

import rego.v1

default allow := false

allow if "mcp:tools" in input.scopes

confirm if {
	input.action == "tools/call"
	input.resource == "deploy_template"
}
"#;

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
    deployed: Arc<AtomicUsize>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct DeployArgs {
    template_id: String,
    device_id: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[tool_router]
impl Tools {
    #[tool(description = "Deploy a configuration template to a device")]
    async fn deploy_template(&self, Parameters(args): Parameters<DeployArgs>) -> String {
        self.deployed.fetch_add(1, Ordering::SeqCst);
        json!({"deployed": {"template_id": args.template_id, "device_id": args.device_id}}).to_string()
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

struct Server {
    url: String,
    deployed: Arc<AtomicUsize>,
    _server: TestServer,
}

impl Server {
    fn deploys(&self) -> usize {
        self.deployed.load(Ordering::SeqCst)
    }
}

async fn start(issuer: &TestIssuer, stateless: bool, ttl: Duration) -> Server {
    let deployed = Arc::new(AtomicUsize::new(0));
    let counter = deployed.clone();
    let jwks = Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri());
    let server = TestServer::start_with(move |base| {
        let rs = ResourceServer::builder(format!("{base}/mcp"), jwks)
            .required_scopes(["mcp:tools"])
            .build()
            .expect("valid configuration");
        let engine = PolicyEngine::builder()
            .module("confirm.rego", POLICY)
            .build()
            .expect("policy");
        let guard = Guard::new(rs)
            .policy(engine)
            .request_state(RequestStateSealer::new(StateKeys::generate()).ttl(ttl));
        let guard = if stateless { guard.stateless() } else { guard };
        guard.router(move || {
            Ok(Tools {
                tool_router: Tools::tool_router(),
                deployed: counter.clone(),
            })
        })
    })
    .await
    .expect("server");
    Server {
        url: server.mcp_url("/mcp"),
        deployed,
        _server: server,
    }
}

fn token(issuer: &TestIssuer, server: &Server, subject: &str) -> String {
    issuer
        .token()
        .subject(subject)
        .audience(server.url.clone())
        .scope("mcp:tools")
        .sign()
}

async fn client(server: &Server, token: &str, protocol: Protocol, capabilities: Value) -> McpClient {
    McpClient::connect(server.url.clone(), protocol)
        .bearer(token)
        .capabilities(capabilities)
        .await
        .expect("connect")
}

fn elicits() -> Value {
    json!({"elicitation": {"form": {}}})
}

fn deploy_args(device: &str) -> Value {
    json!({"template_id": "t1", "device_id": device})
}

/// The first call: asks, and returns the `requestState`.
async fn ask(client: &McpClient, arguments: Value) -> String {
    let result = client
        .request("tools/call", json!({"name": "deploy_template", "arguments": arguments}))
        .await
        .expect("tools/call");
    assert_eq!(result["resultType"], "input_required", "{result}");
    result["requestState"].as_str().expect("requestState").to_owned()
}

fn answer(action: &str, confirm: Option<bool>) -> Value {
    match confirm {
        Some(c) => json!({"action": action, "content": {"confirm": c}}),
        None => json!({"action": action}),
    }
}

async fn retry(client: &McpClient, arguments: Value, state: &str, answer: Value) -> Result<Value, McpError> {
    client
        .request(
            "tools/call",
            json!({
                "name": "deploy_template",
                "arguments": arguments,
                "requestState": state,
                "inputResponses": {"confirm": answer},
            }),
        )
        .await
}

fn is_error_code(result: &Result<Value, McpError>, code: i32) -> bool {
    matches!(result, Err(e) if e.code() == Some(code))
}

#[tokio::test]
async fn a_client_that_elicits_is_asked_and_its_yes_deploys() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;

    let first = alice
        .request(
            "tools/call",
            json!({"name": "deploy_template", "arguments": deploy_args("d1")}),
        )
        .await
        .unwrap();
    assert_eq!(first["resultType"], "input_required");
    let form = &first["inputRequests"]["confirm"];
    assert_eq!(form["method"], "elicitation/create", "{first}");
    assert_eq!(form["params"]["mode"], "form");
    assert!(form["params"]["message"].as_str().unwrap().contains("deploy_template"));
    let schema = &form["params"]["requestedSchema"];
    assert_eq!(schema["properties"]["confirm"]["type"], "boolean");
    assert_eq!(schema["required"], json!(["confirm"]));
    let state = first["requestState"].as_str().unwrap();
    assert_eq!(server.deploys(), 0, "nothing runs before the user confirms");

    let done = retry(&alice, deploy_args("d1"), state, answer("accept", Some(true)))
        .await
        .unwrap();
    assert_ne!(done["isError"], true, "{done}");
    assert!(
        done["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("\"device_id\":\"d1\"")
    );
    assert_eq!(server.deploys(), 1);

    // A tool the policy does not mark runs at once.
    let echo = alice.call_tool("echo", json!({"text": "hi"})).await.unwrap();
    assert_eq!(echo.content[0].as_text().unwrap().text, "hi");
}

#[tokio::test]
async fn declined_cancelled_or_no_deploys_nothing() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    for no in [
        answer("decline", None),
        answer("cancel", None),
        answer("accept", Some(false)),
        json!({"action": "accept", "content": {"confirm": "yes"}}),
    ] {
        let state = ask(&alice, deploy_args("d1")).await;
        let result = retry(&alice, deploy_args("d1"), &state, no.clone()).await.unwrap();
        assert_eq!(result["isError"], true, "{no}: {result}");
        assert!(result["content"][0]["text"].as_str().unwrap().contains("not confirmed"));
    }
    assert_eq!(server.deploys(), 0);
}

#[tokio::test]
async fn a_yes_without_the_state_is_asked_again() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    let result = alice
        .request(
            "tools/call",
            json!({
                "name": "deploy_template",
                "arguments": deploy_args("d1"),
                "inputResponses": {"confirm": answer("accept", Some(true))},
            }),
        )
        .await
        .unwrap();
    assert_eq!(result["resultType"], "input_required", "{result}");
    assert_eq!(server.deploys(), 0);
}

#[tokio::test]
async fn tampered_state_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    let state = ask(&alice, deploy_args("d1")).await;
    // Flip one character near the end (inside the ciphertext or tag).
    let mut bytes = state.into_bytes();
    let i = bytes.len() - 3;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let result = retry(&alice, deploy_args("d1"), &tampered, answer("accept", Some(true))).await;
    assert!(is_error_code(&result, -32602), "{result:?}");
    // Not a state at all.
    let result = retry(&alice, deploy_args("d1"), "yes-please", answer("accept", Some(true))).await;
    assert!(is_error_code(&result, -32602), "{result:?}");
    assert_eq!(server.deploys(), 0);
}

#[tokio::test]
async fn expired_state_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(1)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    let state = ask(&alice, deploy_args("d1")).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let result = retry(&alice, deploy_args("d1"), &state, answer("accept", Some(true))).await;
    assert!(
        matches!(&result, Err(McpError::JsonRpc { code: -32602, data: Some(d), .. }) if d["error"] == "request_state_expired"),
        "{result:?}"
    );
    assert_eq!(server.deploys(), 0);
}

#[tokio::test]
async fn another_callers_state_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    let mallory = client(
        &server,
        &token(&issuer, &server, "mallory"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    let state = ask(&alice, deploy_args("d1")).await;
    let result = retry(&mallory, deploy_args("d1"), &state, answer("accept", Some(true))).await;
    assert!(is_error_code(&result, -32602), "{result:?}");
    assert_eq!(server.deploys(), 0);
    // Alice's own retry still works: a refused open does not burn her state.
    let done = retry(&alice, deploy_args("d1"), &state, answer("accept", Some(true))).await;
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(server.deploys(), 1);
}

#[tokio::test]
async fn state_for_other_arguments_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    // The user confirmed a deploy to d1; the retry asks for d2.
    let state = ask(&alice, deploy_args("d1")).await;
    let result = retry(&alice, deploy_args("d2"), &state, answer("accept", Some(true))).await;
    assert!(is_error_code(&result, -32602), "{result:?}");
    assert_eq!(server.deploys(), 0);
}

#[tokio::test]
async fn replayed_state_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    let alice = client(
        &server,
        &token(&issuer, &server, "alice"),
        Protocol::V2026_07_28,
        elicits(),
    )
    .await;
    let state = ask(&alice, deploy_args("d1")).await;
    retry(&alice, deploy_args("d1"), &state, answer("accept", Some(true)))
        .await
        .unwrap();
    assert_eq!(server.deploys(), 1);
    let again = retry(&alice, deploy_args("d1"), &state, answer("accept", Some(true))).await;
    assert!(
        matches!(&again, Err(McpError::JsonRpc { data: Some(d), .. }) if d["error"] == "request_state_replayed"),
        "{again:?}"
    );
    assert_eq!(server.deploys(), 1, "one confirmation, one deploy");
}

#[tokio::test]
async fn a_client_without_elicitation_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, true, Duration::from_secs(300)).await;
    for capabilities in [json!({}), json!({"elicitation": {"url": {}}})] {
        let plain = client(
            &server,
            &token(&issuer, &server, "alice"),
            Protocol::V2026_07_28,
            capabilities,
        )
        .await;
        let result = plain
            .request(
                "tools/call",
                json!({"name": "deploy_template", "arguments": deploy_args("d1")}),
            )
            .await;
        assert!(
            matches!(&result, Err(McpError::JsonRpc { code: -32003, message, data: Some(d) })
                if message.contains("confirmation") && message.contains("elicitation") && d["error"] == "confirmation_required"),
            "{result:?}"
        );
    }
    assert_eq!(server.deploys(), 0);
}

#[tokio::test]
async fn a_2025_client_that_cannot_be_asked_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    // In a session without elicitation; served statelessly (no session to
    // ask in) even declaring it.
    for (stateless, capabilities) in [(false, json!({})), (true, elicits())] {
        let server = start(&issuer, stateless, Duration::from_secs(300)).await;
        let old = client(
            &server,
            &token(&issuer, &server, "alice"),
            Protocol::V2025_11_25,
            capabilities,
        )
        .await;
        assert_eq!(old.session_id().is_some(), !stateless);
        let result = old.call_tool("deploy_template", deploy_args("d1")).await;
        assert!(
            matches!(&result, Err(McpError::JsonRpc { code: -32003, message, .. }) if message.contains("confirmation")),
            "{result:?}"
        );
        // Other tools still work for it.
        let echo = old.call_tool("echo", json!({"text": "hi"})).await.unwrap();
        assert_eq!(echo.content[0].as_text().unwrap().text, "hi");
        assert_eq!(server.deploys(), 0);
    }
}

#[tokio::test]
async fn a_2025_session_client_that_elicits_is_asked_in_its_session() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, false, Duration::from_secs(300)).await;
    for (answer, deploys) in [(ElicitationAction::Accept, 1), (ElicitationAction::Cancel, 1)] {
        // `initialize`: a 2025-11-25 session.
        let (asked, version, result) =
            deploy_through_rmcp(&issuer, &server, ClientLifecycleMode::Initialize, answer.clone()).await;
        assert!(version.as_str() < "2026-07-28");
        assert_eq!(asked, 1, "the user was asked once, in the session");
        let text = &result.content[0].as_text().unwrap().text;
        assert_eq!(
            result.is_error == Some(true),
            answer != ElicitationAction::Accept,
            "{text}"
        );
        assert_eq!(server.deploys(), deploys);
    }
}

/// `deploy_template` called by rmcp's own client connected with `lifecycle`,
/// whose user answers with `answer`: how often the user was asked, the
/// protocol version and the result.
async fn deploy_through_rmcp(
    issuer: &TestIssuer,
    server: &Server,
    lifecycle: ClientLifecycleMode,
    answer: ElicitationAction,
) -> (usize, ProtocolVersion, CallToolResult) {
    let asked = Arc::new(AtomicUsize::new(0));
    let user = User {
        answer,
        asked: asked.clone(),
    };
    let config =
        StreamableHttpClientTransportConfig::with_uri(server.url.clone()).auth_header(token(issuer, server, "alice"));
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        user.serve_with_lifecycle(StreamableHttpClientTransport::from_config(config), lifecycle),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let version = client.peer_info().unwrap().protocol_version.clone();
    let params =
        CallToolRequestParams::new("deploy_template").with_arguments(deploy_args("d1").as_object().cloned().unwrap());
    let result = client.call_tool(params).await.expect("tools/call");
    let _ = client.cancel().await;
    (asked.load(Ordering::SeqCst), version, result)
}

/// An rmcp client whose user answers every elicitation with `answer`.
#[derive(Clone)]
struct User {
    answer: ElicitationAction,
    asked: Arc<AtomicUsize>,
}

impl ClientHandler for User {
    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        assert!(matches!(request, ElicitRequestParams::FormElicitationParams { .. }));
        Ok(ElicitResult::new(self.answer.clone()).with_content(json!({"confirm": true})))
    }

    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        capabilities.elicitation = Some(ElicitationCapability::new().with_form(FormElicitationCapability::new()));
        ClientConfig::new(capabilities, Implementation::new("confirm-test", "1.0.0"))
    }
}

#[tokio::test]
async fn rmcp_client_confirms_end_to_end() {
    let issuer = TestIssuer::start().await.unwrap();
    let server = start(&issuer, false, Duration::from_secs(300)).await;
    for (answer, deploys) in [(ElicitationAction::Accept, 1), (ElicitationAction::Decline, 1)] {
        // MCP 2026-07-28 (`server/discover`, per-request `_meta`): `serve`
        // alone would open a 2025-11-25 session, which cannot confirm.
        let lifecycle = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        };
        let (asked, _, result) = deploy_through_rmcp(&issuer, &server, lifecycle, answer.clone()).await;
        assert_eq!(asked, 1, "the user was asked once");
        let text = &result.content[0].as_text().unwrap().text;
        if answer == ElicitationAction::Accept {
            assert_ne!(result.is_error, Some(true), "{text}");
            assert!(text.contains("\"deployed\""), "{text}");
        } else {
            assert_eq!(result.is_error, Some(true), "{text}");
            assert!(text.contains("not confirmed"), "{text}");
        }
        assert_eq!(server.deploys(), deploys);
    }
}

#[test]
fn the_confirm_rule_fails_closed() {
    let engine = |rule: &str| {
        PolicyEngine::builder()
            .module(
                "p.rego",
                format!("package mcp.authz\nimport rego.v1\ndefault allow := false\nallow if input.subject != \"nobody\"\n{rule}\n"),
            )
            .build()
            .expect("policy")
    };
    let alice = Principal::unverified("https://idp", "alice").build();
    let decide = |engine: &PolicyEngine, tool: &str| {
        engine.decide(&PolicyInput::new(&alice, tool, Action::CallTool).with_arguments(json!({"n": "x"})))
    };
    // `true` requires, `false`/undefined do not.
    let e = engine(r#"confirm if input.resource == "deploy""#);
    assert!(decide(&e, "deploy").confirmation_required());
    assert!(!decide(&e, "echo").confirmation_required());
    // A value that is not a boolean requires confirmation.
    let e = engine(r#"confirm := "maybe" if input.resource == "deploy""#);
    assert!(decide(&e, "deploy").confirmation_required());
    // An error inside the rule body (a number given to `startswith`)
    // requires confirmation rather than reading as "no".
    let e = engine(r#"confirm if startswith(to_number("1"), "x")"#);
    assert!(decide(&e, "echo").confirmation_required());
    // No rule: nothing to confirm; a denial never needs confirmation.
    assert!(!decide(&engine(""), "deploy").confirmation_required());
    let nobody = Principal::unverified("https://idp", "nobody").build();
    let e = engine("confirm := true");
    assert!(
        !e.decide(&PolicyInput::new(&nobody, "deploy", Action::CallTool))
            .confirmation_required()
    );
    // Another name for the rule, or none.
    let e = PolicyEngine::builder()
        .module(
            "p.rego",
            "package mcp.authz\nimport rego.v1\nallow := true\nask := true\nconfirm := true\n",
        )
        .confirm_rule(Some("data.mcp.authz.ask"))
        .build()
        .unwrap();
    assert!(decide(&e, "x").confirmation_required());
    let e = PolicyEngine::builder()
        .module(
            "p.rego",
            "package mcp.authz\nimport rego.v1\nallow := true\nconfirm := true\n",
        )
        .confirm_rule(None)
        .build()
        .unwrap();
    assert!(!decide(&e, "x").confirmation_required());
}
