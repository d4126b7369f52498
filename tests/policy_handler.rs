//! `Guarded<H>` over rmcp's streamable HTTP transport: calls decided before
//! the tool runs, listings filtered, in-body checks, no principal denied.
//!
//! A stand-in for the bearer layer inserts an unverified `Principal` built
//! from the `x-test-groups` / `x-test-scopes` headers (none: no principal).
//! The same checks through real tokens live with the bearer layer's tests.
#![cfg(feature = "policy")]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::Request;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::PERMISSION_DENIED;
use rmcp_guard::Principal;
use rmcp_guard::policy::{Action, Guarded, PolicyEngine, RBAC_DATA, require_permission};
use serde_json::{Value, json};

/// Counts tool bodies that ran, to prove a denied call never reached one.
static RAN: AtomicUsize = AtomicUsize::new(0);
/// `deploy_template` and `create_ticket` bodies only (tests run in parallel).
static WROTE: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct DeployArgs {
    template_id: String,
    device_id: String,
}

#[tool_router]
impl Tools {
    fn new() -> Self {
        Tools {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "List templates")]
    async fn get_all_templates(&self) -> String {
        RAN.fetch_add(1, Ordering::SeqCst);
        "[]".into()
    }

    #[tool(description = "Deploy a template")]
    async fn deploy_template(&self, Parameters(a): Parameters<DeployArgs>) -> String {
        WROTE.fetch_add(1, Ordering::SeqCst);
        format!("deployed {} to {}", a.template_id, a.device_id)
    }

    #[tool(description = "Open a ticket")]
    async fn create_ticket(&self) -> String {
        WROTE.fetch_add(1, Ordering::SeqCst);
        "INC0001".into()
    }

    #[tool(description = "List repositories")]
    async fn list_repositories(&self) -> String {
        RAN.fetch_add(1, Ordering::SeqCst);
        "[]".into()
    }

    #[tool(description = "Echo")]
    async fn echo(&self) -> String {
        "echo".into()
    }

    /// Open to everyone with the scope; the body checks github/read itself,
    /// as `#[require_permission]` will.
    #[tool(description = "Peek at GitHub")]
    async fn peek(&self) -> Result<String, ErrorData> {
        require_permission("github", Action::custom("read"), None).await?;
        RAN.fetch_add(1, Ordering::SeqCst);
        Ok("peeked".into())
    }

    /// Spawns the check onto another task: no context there, so it denies.
    #[tool(description = "Check from a spawned task")]
    async fn detached(&self) -> Result<String, ErrorData> {
        tokio::spawn(async { require_permission("github", Action::custom("read"), None).await })
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))??;
        Ok("unreachable".into())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Stand-in for the bearer layer: a principal from test headers.
fn test_principal(mut request: Request) -> Request {
    let header = |name: &str| {
        request.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
    };
    if let Some(groups) = header("x-test-groups") {
        let scopes = header("x-test-scopes").unwrap_or_else(|| vec!["mcp:tools".into()]);
        let principal = Principal::unverified("https://idp.test", "tester")
            .groups(groups)
            .scopes(scopes)
            .build();
        request.extensions_mut().insert(principal);
    }
    request
}

fn engine() -> PolicyEngine {
    let mut data: Value = serde_json::from_str(RBAC_DATA).unwrap();
    data["mcp"]["rbac"]["open_tools"] = json!(["whoami", "echo", "peek", "detached"]);
    PolicyEngine::builder()
        .module("rbac.rego", rmcp_guard::policy::RBAC_POLICY)
        .data("rbac_data.json", data)
        .build()
        .unwrap()
}

struct Server {
    url: String,
    _task: tokio::task::JoinHandle<()>,
}

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(["127.0.0.1".to_owned(), addr.to_string()])
        .with_sse_keep_alive(None)
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let engine = engine();
    let service = StreamableHttpService::new(
        move || Ok(Guarded::new(Tools::new(), engine.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = Router::new()
        .route_service("/mcp", service)
        .layer(tower::util::MapRequestLayer::new(test_principal));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        url: format!("http://{addr}/mcp"),
        _task: task,
    }
}

async fn rpc(server: &Server, groups: Option<&str>, scopes: Option<&str>, body: Value) -> Value {
    let mut request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(&server.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(groups) = groups {
        request = request.header("x-test-groups", groups);
    }
    if let Some(scopes) = scopes {
        request = request.header("x-test-scopes", scopes);
    }
    let response = request.send().await.unwrap();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn call(tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

fn list() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
}

fn tool_names(reply: &Value) -> Vec<String> {
    let mut names: Vec<String> = reply["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn denied(reply: &Value) -> bool {
    reply["error"]["code"] == PERMISSION_DENIED.0 && reply.get("result").is_none()
}

#[tokio::test]
async fn listings_are_filtered_per_group() {
    let server = start().await;
    let open = ["detached", "echo", "peek"];
    let cases: [(&str, &[&str]); 4] = [
        ("network-engineers", &["deploy_template", "get_all_templates"]),
        ("service-desk", &["create_ticket", "get_all_templates"]),
        ("developers", &["list_repositories"]),
        ("", &[]),
    ];
    for (group, extra) in cases {
        let mut want: Vec<String> = open.iter().chain(extra).map(|s| (*s).to_owned()).collect();
        want.sort();
        let reply = rpc(&server, Some(group), None, list()).await;
        assert_eq!(tool_names(&reply), want, "{group}");
    }
    let admin = rpc(&server, Some("admin"), None, list()).await;
    assert_eq!(tool_names(&admin).len(), 7);
}

#[tokio::test]
async fn denied_calls_never_reach_the_tool() {
    let server = start().await;
    let deploy = call("deploy_template", json!({"template_id": "t", "device_id": "d"}));
    let before = WROTE.load(Ordering::SeqCst);
    let reply = rpc(&server, Some("service-desk"), None, deploy.clone()).await;
    assert!(denied(&reply), "{reply}");
    assert_eq!(reply["error"]["message"], "permission denied");
    assert_eq!(reply["error"]["data"]["error"], "forbidden");
    assert!(!reply.to_string().contains("no_role"), "reasons are not sent: {reply}");
    let reply = rpc(&server, Some("developers"), None, call("create_ticket", json!({}))).await;
    assert!(denied(&reply), "{reply}");
    // Unknown tools are denied the same way (existence is not revealed).
    let reply = rpc(&server, Some("developers"), None, call("no_such_tool", json!({}))).await;
    assert!(denied(&reply), "{reply}");
    assert_eq!(WROTE.load(Ordering::SeqCst), before);

    let reply = rpc(&server, Some("network-engineers"), None, deploy).await;
    assert_eq!(reply["result"]["content"][0]["text"], "deployed t to d", "{reply}");
}

#[tokio::test]
async fn missing_scope_is_named_for_step_up() {
    let server = start().await;
    let reply = rpc(&server, Some("admin"), Some("openid"), call("echo", json!({}))).await;
    assert!(denied(&reply), "{reply}");
    assert_eq!(reply["error"]["data"]["error"], "insufficient_scope");
    assert_eq!(reply["error"]["data"]["scope"], "mcp:tools");
}

#[tokio::test]
async fn no_principal_is_denied_everywhere() {
    let server = start().await;
    for body in [list(), call("echo", json!({})), call("get_all_templates", json!({}))] {
        let reply = rpc(&server, None, None, body).await;
        assert!(denied(&reply), "{reply}");
    }
}

#[tokio::test]
async fn checks_inside_a_tool_use_the_request_principal() {
    let server = start().await;
    let reply = rpc(&server, Some("developers"), None, call("peek", json!({}))).await;
    assert_eq!(reply["result"]["content"][0]["text"], "peeked", "{reply}");
    let reply = rpc(&server, Some("network-engineers"), None, call("peek", json!({}))).await;
    assert!(denied(&reply), "{reply}");
    // Off the request's task there is no context: fail closed.
    let reply = rpc(&server, Some("admin"), None, call("detached", json!({}))).await;
    assert!(denied(&reply), "{reply}");
}
