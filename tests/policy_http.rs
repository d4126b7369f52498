//! Policy enforcement over real HTTP: the RBAC example per group, filtered
//! listings, `#[require_permission]` inside a tool, step-up 403, fail-closed
//! policies, hot reload and the Rego v0 form.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Reply, client, mcp_post};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::policy::{PolicyEngine, RBAC_DATA, RBAC_POLICY};
use rmcp_guard::{Guard, require_permission};
use rmcp_guard_testkit::TestIssuer;
use serde_json::{Value, json};

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

    #[tool(description = "echo")]
    async fn echo(&self) -> String {
        "echo-ran".to_owned()
    }

    #[tool(description = "whoami")]
    async fn whoami(&self) -> String {
        "whoami-ran".to_owned()
    }

    #[tool(description = "templates")]
    async fn get_all_templates(&self) -> String {
        "get_all_templates-ran".to_owned()
    }

    #[tool(description = "deploy")]
    async fn deploy_template(&self, Parameters(args): Parameters<DeployArgs>) -> String {
        format!("deploy_template-ran {} {}", args.template_id, args.device_id)
    }

    #[tool(description = "ticket")]
    async fn create_ticket(&self) -> String {
        "create_ticket-ran".to_owned()
    }

    #[tool(description = "repos")]
    async fn list_repositories(&self) -> String {
        "list_repositories-ran".to_owned()
    }

    /// Open to every caller by the policy; the macro asks for `execute`.
    #[require_permission(resource = "catalyst-center", action = "execute")]
    #[tool(description = "restart a device")]
    async fn restart_device(&self) -> Result<String, ErrorData> {
        Ok("restart_device-ran".to_owned())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

const ALL_TOOLS: [&str; 7] = [
    "echo",
    "whoami",
    "get_all_templates",
    "deploy_template",
    "create_ticket",
    "list_repositories",
    "restart_device",
];

/// The RBAC data of the example, with `restart_device` opened to every
/// caller so only `#[require_permission]` guards it.
fn rbac_data() -> Value {
    let mut data: Value = serde_json::from_str(RBAC_DATA).unwrap();
    data["mcp"]["rbac"]["open_tools"]
        .as_array_mut()
        .unwrap()
        .push(json!("restart_device"));
    data
}

fn rbac(v0: bool) -> PolicyEngine {
    let policy = if v0 {
        rmcp_guard::policy::RBAC_POLICY_V0
    } else {
        RBAC_POLICY
    };
    let version = if v0 {
        rmcp_guard::policy::RegoVersion::V0
    } else {
        rmcp_guard::policy::RegoVersion::V1
    };
    PolicyEngine::builder()
        .module("rbac.rego", policy)
        .rego_version(version)
        .data("rbac.json", rbac_data())
        .build()
        .unwrap()
}

struct Server {
    url: String,
    issuer: TestIssuer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Stateless JSON mode, so each `tools/call` is one POST. `scopes` are
    /// required by the bearer layer for every request.
    async fn start(engine: PolicyEngine, scopes: &[&str]) -> Server {
        let issuer = TestIssuer::start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let rs = ResourceServer::builder(url.clone(), Issuer::discover(issuer.issuer()))
            .required_scopes(scopes.iter().copied())
            .build()
            .unwrap();
        let app = Guard::new(rs).stateless().policy(engine).router(|| Ok(Tools::new()));
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app).await;
        });
        Server { url, issuer, task }
    }

    fn token(&self, groups: &[&str], scope: &str) -> String {
        self.issuer
            .token()
            .subject(format!("user-{}", groups.join("+")))
            .audience(&self.url)
            .scope(scope)
            .claim("groups", json!(groups))
            .sign()
    }

    async fn rpc(&self, token: &str, body: &Value) -> Reply {
        let request = mcp_post(&client(), &self.url, body)
            .bearer_auth(token)
            .header("mcp-protocol-version", "2025-06-18");
        Reply::read(request.send().await.unwrap()).await
    }

    async fn call(&self, token: &str, tool: &str) -> Reply {
        let arguments = if tool == "deploy_template" {
            json!({"template_id": "t1", "device_id": "d1"})
        } else {
            json!({})
        };
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        self.rpc(token, &body).await
    }

    /// Whether the call ran the tool (200 with its marker) or was denied
    /// with the policy's JSON-RPC error (200 with code -32003, no marker).
    async fn allowed(&self, token: &str, tool: &str) -> bool {
        let reply = self.call(token, tool).await;
        assert_eq!(reply.status, 200, "{tool}: {}", reply.body);
        let value: Value = serde_json::from_str(&reply.body).unwrap();
        let marker = format!("{tool}-ran");
        if reply.body.contains(&marker) {
            assert!(value.get("error").is_none(), "{}", reply.body);
            true
        } else {
            assert_eq!(value["error"]["code"], -32003, "{tool}: {}", reply.body);
            assert_eq!(value["error"]["message"], "permission denied", "{}", reply.body);
            false
        }
    }

    async fn listed(&self, token: &str) -> BTreeSet<String> {
        let reply = self
            .rpc(token, &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let value: Value = serde_json::from_str(&reply.body).unwrap();
        value["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", reply.body))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// What each group of the example may call.
fn expected(group: &str) -> BTreeSet<&'static str> {
    let mut allowed: BTreeSet<&str> = ["echo", "whoami"].into();
    match group {
        "admin" => return ALL_TOOLS.into_iter().collect(),
        "network-engineers" => allowed.extend(["get_all_templates", "deploy_template", "restart_device"]),
        "service-desk" => allowed.extend(["get_all_templates", "create_ticket"]),
        "developers" => allowed.extend(["list_repositories"]),
        _ => {}
    }
    allowed
}

const GROUPS: [&str; 5] = ["admin", "network-engineers", "service-desk", "developers", "visitors"];

async fn check_rbac(server: &Server) {
    for group in GROUPS {
        let token = server.token(&[group], "mcp:tools");
        let mut allowed = BTreeSet::new();
        for tool in ALL_TOOLS {
            if server.allowed(&token, tool).await {
                allowed.insert(tool);
            }
        }
        assert_eq!(allowed, expected(group), "calls of {group}");
        // The listing shows what may be called; restart_device is listed to
        // everyone (the policy opens it) and refused by the macro inside.
        let mut listed_expected: BTreeSet<String> = expected(group).into_iter().map(str::to_owned).collect();
        listed_expected.insert("restart_device".to_owned());
        assert_eq!(server.listed(&token).await, listed_expected, "listing of {group}");
    }
}

#[tokio::test]
async fn rbac_allows_and_denies_per_group_and_filters_listings() {
    let server = Server::start(rbac(false), &["mcp:tools"]).await;
    check_rbac(&server).await;
}

#[tokio::test]
async fn rbac_in_rego_v0_decides_the_same() {
    let server = Server::start(rbac(true), &["mcp:tools"]).await;
    check_rbac(&server).await;
}

#[tokio::test]
async fn require_permission_denies_inside_an_open_tool() {
    let server = Server::start(rbac(false), &["mcp:tools"]).await;
    let desk = server.token(&["service-desk"], "mcp:tools");
    assert!(!server.allowed(&desk, "restart_device").await);
    let neteng = server.token(&["network-engineers"], "mcp:tools");
    assert!(server.allowed(&neteng, "restart_device").await);
}

#[tokio::test]
async fn missing_tool_scope_steps_up_with_403() {
    // No scope required at the bearer layer: the policy asks for it per call.
    let server = Server::start(rbac(false), &[]).await;
    let token = server.token(&["network-engineers"], "openid");
    let reply = server.call(&token, "deploy_template").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    let challenge = reply.challenge().expect("challenge");
    assert_eq!(challenge.get("error"), Some("insufficient_scope"));
    assert_eq!(challenge.get("scope"), Some("mcp:tools"));
    assert!(challenge.get("resource_metadata").is_some());
    assert!(!reply.body.contains("deploy_template-ran"));
    // With the scope, the same caller goes through.
    let token = server.token(&["network-engineers"], "openid mcp:tools");
    assert!(server.allowed(&token, "deploy_template").await);
    // A denial that no scope would fix stays a JSON-RPC error, not a 403.
    let token = server.token(&["developers"], "mcp:tools");
    assert!(!server.allowed(&token, "deploy_template").await);
}

#[tokio::test]
async fn a_policy_that_fails_at_runtime_denies() {
    // Each loads (the engine smoke-evaluates a policy before accepting it)
    // and goes wrong only for a real caller: fail closed at request time.
    for (name, rego) in [
        (
            "non_boolean_for_this_input",
            "package mcp.authz\nimport rego.v1\nallow := input.groups[0] if count(input.groups) > 0\n",
        ),
        (
            "builtin_error",
            "package mcp.authz\nimport rego.v1\nallow if to_number(input.subject) > 0\n",
        ),
        (
            "undefined",
            "package mcp.authz\nimport rego.v1\nallow if input.nothing.here == 1\n",
        ),
    ] {
        let engine = PolicyEngine::builder()
            .module("p.rego", rego)
            .build()
            .unwrap_or_else(|e| panic!("{name} should load: {e}"));
        let server = Server::start(engine, &["mcp:tools"]).await;
        let token = server.token(&["admin"], "mcp:tools");
        assert!(!server.allowed(&token, "echo").await, "{name}");
    }
}

#[tokio::test]
async fn reload_swaps_a_good_policy_and_keeps_it_over_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("rmcp-guard-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.rego");
    std::fs::write(&file, "package mcp.authz\nimport rego.v1\ndefault allow := false\n").unwrap();
    let engine = PolicyEngine::from_path(&file).unwrap();
    let first = engine.version();
    let server = Server::start(engine.clone(), &["mcp:tools"]).await;
    let token = server.token(&["visitors"], "mcp:tools");
    assert!(!server.allowed(&token, "echo").await);

    std::fs::write(&file, "package mcp.authz\nimport rego.v1\ndefault allow := true\n").unwrap();
    let second = engine.reload().expect("a good policy reloads");
    assert_ne!(first, second);
    assert!(server.allowed(&token, "echo").await);

    std::fs::write(&file, "package mcp.authz\nallow := {{{ this is not rego\n").unwrap();
    assert!(engine.reload().is_err(), "a bad policy is refused");
    assert_eq!(engine.version(), second, "the good policy keeps serving");
    assert!(server.allowed(&token, "echo").await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_batch_never_runs_a_denied_call() {
    let server = Server::start(rbac(false), &["mcp:tools"]).await;
    let token = server.token(&["developers"], "mcp:tools");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_repositories", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "deploy_template", "arguments": {"template_id": "t", "device_id": "d"}}},
    ]);
    let reply = server.rpc(&token, &batch).await;
    // rmcp 3.11 does not accept JSON-RPC batches: the whole body is refused,
    // so neither call runs; above all the denied one does not.
    assert!(!reply.body.contains("deploy_template-ran"), "{}", reply.body);
    assert!(
        reply.status >= 400 || reply.body.contains("error"),
        "{} {}",
        reply.status,
        reply.body
    );
    // And each call sent on its own is decided on its own.
    assert!(server.allowed(&token, "list_repositories").await);
    assert!(!server.allowed(&token, "deploy_template").await);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Issue 10, finding 1: a builtin error under `not` used to make the rule
/// undefined, so `not blocked` held and a token whose `email` was not a
/// string was allowed. Every shape but a string now denies.
#[tokio::test]
async fn a_claim_of_the_wrong_type_cannot_open_a_not_rule() {
    let rego = r#"package mcp.authz
import rego.v1
default allow := false
blocked if endswith(input.claims.email, "@contractor.example")
allow if {
    input.claims.email
    not blocked
}
"#;
    let engine = PolicyEngine::builder().module("p.rego", rego).build().unwrap();
    let server = Server::start(engine, &["mcp:tools"]).await;
    let token = |email: Value| {
        server
            .issuer
            .token()
            .subject("someone")
            .audience(&server.url)
            .scope("mcp:tools")
            .claim("email", email)
            .sign()
    };
    assert!(server.allowed(&token(json!("ann@staff.example")), "echo").await);
    assert!(!server.allowed(&token(json!("bob@contractor.example")), "echo").await);
    for confused in [
        json!(["bob@contractor.example"]),
        json!({"address": "bob@contractor.example"}),
        json!(42),
        json!(true),
    ] {
        assert!(
            !server.allowed(&token(confused.clone()), "echo").await,
            "email = {confused}"
        );
    }
}

/// Issue 10, finding 4: what a listing shows depends on the caller, so a
/// shared cache must never hand one caller's list to another.
#[tokio::test]
async fn filtered_listings_are_private_to_the_caller() {
    use rmcp_guard_testkit::{McpClient, Protocol};
    let server = Server::start(rbac(false), &["mcp:tools"]).await;
    for group in ["developers", "admin"] {
        let client = McpClient::connect(&server.url, Protocol::V2026_07_28)
            .bearer(server.token(&[group], "mcp:tools"))
            .send()
            .await
            .unwrap();
        let listing = client.request("tools/list", Value::Null).await.unwrap();
        assert_eq!(listing["cacheScope"], "private", "{group}: {listing}");
        assert!(listing["tools"].as_array().is_some_and(|t| !t.is_empty()), "{listing}");
    }
}

/// A method outside the protocol that the policy denies answers exactly as
/// one that does not exist (JSON-RPC -32601, HTTP 404): a denial reveals no
/// custom method, and the methods MCP 2026-07-28 removed answer as it
/// requires. Found by the 2026-07-28 conformance run with the default policy.
#[tokio::test]
async fn a_denied_custom_method_answers_like_an_unknown_one() {
    use rmcp_guard_testkit::{McpClient, Protocol};
    let allow_all = PolicyEngine::builder()
        .module("allow.rego", "package mcp.authz\ndefault allow := true\n")
        .build()
        .unwrap();
    let denying = Server::start(rbac(false), &["mcp:tools"]).await;
    let allowing = Server::start(allow_all, &["mcp:tools"]).await;
    for method in ["acme/export", "logging/setLevel", "resources/subscribe", "tasks/list"] {
        let mut answers = Vec::new();
        for server in [&denying, &allowing] {
            let client = McpClient::connect(&server.url, Protocol::V2026_07_28)
                .bearer(server.token(&["developers"], "mcp:tools"))
                .send()
                .await
                .unwrap();
            let error = client.request(method, json!({})).await.unwrap_err();
            answers.push((error.status().map(|s| s.as_u16()), error.code()));
        }
        assert_eq!(answers[0], (Some(404), Some(-32601)), "{method} denied");
        assert_eq!(answers[0], answers[1], "{method}: denied and unknown look the same");
    }
}
