//! Scopes over real HTTP: implications (`mcp:admin` implies `mcp:tools`),
//! one challenge naming every required scope, `offline_access` never
//! advertised, an uppercase canonical URI, the headers-first step-up of
//! MCP 2026-07-28, and listings that stay private with the inner `ttlMs`.

mod common;

use common::{Reply, client, mcp_post};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::Guard;
use rmcp_guard::oauth::{Issuer, ResourceServer, ResourceServerBuilder};
use rmcp_guard::policy::PolicyEngine;
use rmcp_guard_testkit::{McpClient, McpError, Protocol, TestIssuer};
use serde_json::{Value, json};

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct DeployArgs {
    text: String,
    #[serde(default)]
    env: Option<String>,
}

#[tool_router]
impl Tools {
    fn new() -> Self {
        Tools {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Deploy")]
    async fn deploy(&self, Parameters(args): Parameters<DeployArgs>) -> String {
        format!("deploy-ran {} {}", args.text.len(), args.env.unwrap_or_default())
    }

    #[tool(description = "Echo")]
    async fn echo(&self) -> String {
        "echo-ran".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// `deploy` needs `mcp:deploy` (and names `offline_access` too, which
/// must never reach a challenge); everything else is open. Never reads
/// `input.arguments`, so a 2026-07-28 request is decided from its headers.
const POLICY: &str = r#"
package mcp.authz
import rego.v1
default allow := false
allow if input.action == "tools/list"
allow if {
    input.action == "tools/call"
    input.resource != "deploy"
}
allow if {
    input.action == "tools/call"
    input.resource == "deploy"
    "mcp:deploy" in input.scopes
}
required_scopes contains s if {
    input.action == "tools/call"
    input.resource == "deploy"
    not "mcp:deploy" in input.scopes
    some s in ["mcp:deploy", "offline_access"]
}
"#;

/// `deploy` to `env: "prod"` needs `mcp:prod`: a requirement only the
/// arguments show.
const ARGUMENT_POLICY: &str = r#"
package mcp.authz
import rego.v1
default allow := false
allow if input.action == "tools/list"
allow if {
    input.action == "tools/call"
    not input.arguments.env == "prod"
}
allow if {
    input.action == "tools/call"
    "mcp:prod" in input.scopes
}
required_scopes contains "mcp:prod" if {
    input.action == "tools/call"
    input.arguments.env == "prod"
    not "mcp:prod" in input.scopes
}
"#;

struct Server {
    url: String,
    base: String,
    issuer: TestIssuer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Stateless; the resource URI is `resource(port)`, served at `path`.
    async fn start_at(
        policy: &str,
        resource: impl FnOnce(u16) -> String,
        configure: impl FnOnce(ResourceServerBuilder) -> ResourceServerBuilder,
        public_listing: bool,
    ) -> (Server, ResourceServer) {
        let issuer = TestIssuer::start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let resource = resource(port);
        let rs = configure(ResourceServer::builder(resource, Issuer::discover(issuer.issuer())))
            .build()
            .unwrap();
        let engine = PolicyEngine::builder().module("p.rego", policy).build().unwrap();
        let guard = Guard::new(rs.clone()).stateless().policy(engine);
        let app = if public_listing {
            guard.router(|| Ok(PublicListing(Tools::new())))
        } else {
            guard.router(|| Ok(Tools::new()))
        };
        let task = tokio::spawn(async move {
            let _ = rmcp_guard::serve(listener, app).await;
        });
        let base = format!("http://127.0.0.1:{port}");
        let url = format!("{base}{}", rs.resource_path());
        (
            Server {
                url,
                base,
                issuer,
                task,
            },
            rs,
        )
    }

    async fn start(policy: &str, configure: impl FnOnce(ResourceServerBuilder) -> ResourceServerBuilder) -> Server {
        Self::start_at(policy, |port| format!("http://127.0.0.1:{port}/mcp"), configure, false)
            .await
            .0
    }

    fn token(&self, scope: &str) -> String {
        self.token_for(&self.url, scope)
    }

    fn token_for(&self, audience: &str, scope: &str) -> String {
        self.issuer
            .token()
            .subject("alice")
            .audience(audience)
            .scope(scope)
            .sign()
    }

    /// A JSON-RPC POST as a 2025-era client sends it (no `Mcp-*` headers).
    async fn post_2025(&self, token: &str, body: &Value) -> Reply {
        let request = mcp_post(&client(), &self.url, body)
            .bearer_auth(token)
            .header("mcp-protocol-version", "2025-11-25");
        Reply::read(request.send().await.unwrap()).await
    }

    /// A 2026-07-28 `tools/call` of `name` with `arguments`, sent with
    /// `Mcp-Method: method_header` and `Mcp-Name: name_header`.
    async fn call_2026(
        &self,
        token: &str,
        name: &str,
        arguments: Value,
        method_header: &str,
        name_header: &str,
    ) -> Reply {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }});
        let request = mcp_post(&client(), &self.url, &body)
            .bearer_auth(token)
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method_header)
            .header("mcp-name", name_header);
        Reply::read(request.send().await.unwrap()).await
    }

    async fn client_2026(&self, token: String) -> McpClient {
        McpClient::connect(&self.url, Protocol::V2026_07_28)
            .bearer(token)
            .send()
            .await
            .unwrap()
    }
}

/// The `scope=` of the `insufficient_scope` challenge of a 403: the
/// `Bearer` one, and the `DPoP` one (DPoP is on by default) names the same.
fn step_up_scope(reply: &Reply) -> String {
    assert_eq!(reply.status, 403, "{}", reply.body);
    let challenge = reply.challenge().expect("challenge");
    assert_eq!(challenge.scheme, "Bearer");
    assert_eq!(challenge.get("error"), Some("insufficient_scope"));
    let scope = challenge.get("scope").expect("scope").to_owned();
    let dpop = reply.dpop_challenge().expect("the DPoP challenge");
    assert_eq!(dpop.get("error"), Some("insufficient_scope"));
    assert_eq!(dpop.get("scope"), Some(scope.as_str()));
    scope
}

/// Larger than the 256 KiB the body path reads.
fn big_text() -> String {
    "x".repeat(300 * 1024)
}

// ---------------------------------------------------------------------------
// Implications.

#[tokio::test]
async fn an_implied_scope_passes_the_bearer_check_and_the_step_up() {
    let server = Server::start(POLICY, |b| {
        b.required_scopes(["mcp:tools"])
            .scope_implies("mcp:admin", ["mcp:ops"])
            .scope_implies("mcp:ops", ["mcp:tools", "mcp:deploy"])
    })
    .await;
    // mcp:admin -> mcp:ops -> mcp:tools + mcp:deploy (transitive).
    let admin = server.token("mcp:admin");
    let client = server.client_2026(admin.clone()).await;
    let result = client.call_tool("deploy", json!({"text": "hi"})).await.unwrap();
    let text = serde_json::to_string(&result).unwrap();
    assert!(text.contains("deploy-ran"), "{text}");
    let reply = server.post_2025(&admin, &deploy_call("hi")).await;
    assert!(reply.body.contains("deploy-ran"), "{}", reply.body);
    // mcp:ops alone implies both too; a scope implying nothing does not.
    let reply = server.post_2025(&server.token("mcp:ops"), &deploy_call("hi")).await;
    assert!(reply.body.contains("deploy-ran"), "{}", reply.body);
    let reply = server.post_2025(&server.token("mcp:other"), &deploy_call("hi")).await;
    assert_eq!(step_up_scope(&reply), "mcp:tools");
    // mcp:tools alone passes the bearer layer and is stepped up for deploy.
    let reply = server.post_2025(&server.token("mcp:tools"), &deploy_call("hi")).await;
    assert_eq!(step_up_scope(&reply), "mcp:tools mcp:deploy");
}

fn deploy_call(text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "deploy", "arguments": {"text": text}}})
}

#[test]
fn an_empty_scope_name_in_an_implication_is_refused() {
    for (scope, implied) in [
        ("", vec!["mcp:tools"]),
        ("mcp:admin", vec![""]),
        ("mcp:admin", vec!["a b"]),
    ] {
        let err = ResourceServer::builder(
            "https://mcp.example.com/mcp",
            Issuer::discover("https://idp.example.com"),
        )
        .scope_implies(scope, implied)
        .build()
        .unwrap_err();
        assert!(matches!(err, rmcp_guard::ConfigError::InvalidScope(_)), "{err}");
    }
}

// ---------------------------------------------------------------------------
// One challenge naming every required scope.

#[tokio::test]
async fn a_403_names_every_required_scope_in_one_challenge() {
    let server = Server::start(POLICY, |b| b.required_scopes(["mcp:tools", "mcp:read"])).await;
    // Bearer layer: both missing, or one missing: both named.
    for scope in ["openid", "mcp:read", "mcp:tools"] {
        let reply = server.post_2025(&server.token(scope), &deploy_call("hi")).await;
        assert_eq!(step_up_scope(&reply), "mcp:tools mcp:read", "{scope}");
    }
    // Step-up: the resource's scopes and the call's, in one challenge.
    let reply = server
        .post_2025(&server.token("mcp:tools mcp:read"), &deploy_call("hi"))
        .await;
    assert_eq!(step_up_scope(&reply), "mcp:tools mcp:read mcp:deploy");
    assert!(!reply.body.contains("deploy-ran"));
}

// ---------------------------------------------------------------------------
// offline_access.

#[tokio::test]
async fn offline_access_is_never_advertised_nor_in_a_challenge() {
    let (server, rs) = Server::start_at(
        POLICY,
        |port| format!("http://127.0.0.1:{port}/mcp"),
        |b| {
            b.required_scopes(["mcp:tools", "offline_access"]).scopes_supported([
                "mcp:tools",
                "offline_access",
                "mcp:deploy",
            ])
        },
        false,
    )
    .await;
    assert_eq!(rs.required_scopes(), ["mcp:tools"]);
    let metadata: Value = client()
        .get(rs.metadata_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["scopes_supported"],
        json!(["mcp:tools", "mcp:deploy"]),
        "{metadata}"
    );
    // No token: the 401 challenge.
    let reply = Reply::read(
        mcp_post(&client(), &server.url, &deploy_call("hi"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 401);
    let challenge = reply.challenge().unwrap();
    assert_eq!(challenge.get("scope"), Some("mcp:tools"));
    // A token without offline_access is not refused for lacking it.
    let reply = server
        .post_2025(&server.token("mcp:tools mcp:deploy"), &deploy_call("hi"))
        .await;
    assert!(reply.body.contains("deploy-ran"), "{}", reply.body);
    // The policy names offline_access for deploy: not in the step-up.
    let reply = server.post_2025(&server.token("mcp:tools"), &deploy_call("hi")).await;
    assert_eq!(step_up_scope(&reply), "mcp:tools mcp:deploy");
    assert!(!format!("{:?}", reply.headers).contains("offline_access"));
}

// ---------------------------------------------------------------------------
// Uppercase scheme and host in the canonical URI.

#[tokio::test]
async fn an_uppercase_canonical_uri_is_normalized() {
    let (server, rs) = Server::start_at(
        POLICY,
        |port| format!("HTTP://LocalHost:{port}/Mcp"),
        |b| b.required_scopes(["mcp:tools"]),
        false,
    )
    .await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let normalized = format!("http://localhost:{port}/Mcp");
    assert_eq!(rs.resource(), normalized);
    assert_eq!(rs.resource_path(), "/Mcp");
    assert_eq!(
        rs.metadata_url(),
        format!("http://localhost:{port}/.well-known/oauth-protected-resource/Mcp")
    );
    let metadata: Value = client()
        .get(format!("{}/.well-known/oauth-protected-resource/Mcp", server.base))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], normalized, "{metadata}");
    let call = |aud: &str| {
        let token = server.token_for(aud, "mcp:tools");
        let request = mcp_post(
            &client(),
            &server.url,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "echo", "arguments": {}}}),
        )
        .header("host", format!("localhost:{port}"))
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(token);
        async move { Reply::read(request.send().await.unwrap()).await }
    };
    // The normalized audience, and the same URI spelled in uppercase.
    for aud in [normalized.clone(), format!("HTTP://LOCALHOST:{port}/Mcp")] {
        let reply = call(&aud).await;
        assert!(
            reply.body.contains("echo-ran"),
            "{aud}: {} {}",
            reply.status,
            reply.body
        );
    }
    // The path keeps its case: another path is another resource.
    let reply = call(&format!("http://localhost:{port}/mcp")).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
}

// ---------------------------------------------------------------------------
// Headers first (2026-07-28).

#[tokio::test]
async fn a_2026_call_larger_than_the_body_limit_still_steps_up() {
    let server = Server::start(POLICY, |b| b.required_scopes(["mcp:tools"])).await;
    // The testkit client: Mcp-Method / Mcp-Name headers, a 300 KiB body.
    let client = server.client_2026(server.token("mcp:tools")).await;
    let err = client
        .call_tool("deploy", json!({"text": big_text()}))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403), "{err}");
    let challenge = common::Challenge::parse(err.www_authenticate().unwrap());
    assert_eq!(challenge.get("error"), Some("insufficient_scope"));
    assert_eq!(challenge.get("scope"), Some("mcp:tools mcp:deploy"));
    // With the scope the same large body streams through to the tool intact.
    let client = server.client_2026(server.token("mcp:tools mcp:deploy")).await;
    let result = client.call_tool("deploy", json!({"text": big_text()})).await.unwrap();
    let text = serde_json::to_string(&result).unwrap();
    assert!(text.contains(&format!("deploy-ran {}", 300 * 1024)), "{text}");
    // The 2025 body path reads at most 256 KiB: a larger call is decided by
    // Guarded, a JSON-RPC error, not a 403.
    let reply = server
        .post_2025(&server.token("mcp:tools"), &deploy_call(&big_text()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(value["error"]["code"], -32003, "{}", reply.body);
}

#[tokio::test]
async fn a_base64_mcp_name_naming_a_step_up_tool_steps_up() {
    let server = Server::start(POLICY, |b| b.required_scopes(["mcp:tools"])).await;
    let token = server.token("mcp:tools");
    // "deploy" in the sentinel form, as a client may always send it, with
    // a body too large for the body path: only the decoded header can tell.
    let reply = server
        .call_2026(
            &token,
            "deploy",
            json!({"text": big_text()}),
            "tools/call",
            "=?base64?ZGVwbG95?=",
        )
        .await;
    assert_eq!(step_up_scope(&reply), "mcp:tools mcp:deploy");
    // The plain form of an open tool goes through.
    let reply = server.call_2026(&token, "echo", json!({}), "tools/call", "echo").await;
    assert!(reply.body.contains("echo-ran"), "{} {}", reply.status, reply.body);
}

#[tokio::test]
async fn headers_that_lie_about_the_body_are_refused_by_rmcp() {
    let server = Server::start(POLICY, |b| b.required_scopes(["mcp:tools"])).await;
    let token = server.token("mcp:tools");
    // The headers name the open tool, the body the guarded one: the
    // step-up lets it pass and rmcp refuses it before any handler.
    let reply = server
        .call_2026(&token, "deploy", json!({"text": "hi"}), "tools/call", "echo")
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(value["error"]["code"], -32020, "{}", reply.body);
    assert!(!reply.body.contains("deploy-ran"));
    // Two Mcp-Name headers (one naming the guarded tool): passed on, 400.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "deploy", "arguments": {"text": "hi"},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }
    }});
    let request = mcp_post(&client(), &server.url, &body)
        .bearer_auth(&token)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "deploy")
        .header("mcp-name", "echo");
    let reply = Reply::read(request.send().await.unwrap()).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(!reply.body.contains("deploy-ran"));
    // Undecodable sentinel, and a header naming another method: the same.
    for (method, name) in [("tools/call", "=?base64?!!!?="), ("tools/list", "deploy")] {
        let reply = server
            .call_2026(&token, "deploy", json!({"text": "hi"}), method, name)
            .await;
        assert_eq!(reply.status, 400, "{method} {name}: {}", reply.body);
        assert!(!reply.body.contains("deploy-ran"));
    }
}

#[tokio::test]
async fn a_2025_request_still_steps_up_through_its_body() {
    let server = Server::start(POLICY, |b| b.required_scopes(["mcp:tools"])).await;
    let reply = server.post_2025(&server.token("mcp:tools"), &deploy_call("hi")).await;
    assert_eq!(step_up_scope(&reply), "mcp:tools mcp:deploy");
    // Mcp-* headers without a 2026-07-28 version are not trusted: rmcp does
    // not check them then, so they cannot open (or close) a call.
    let request = mcp_post(&client(), &server.url, &deploy_call("hi"))
        .bearer_auth(server.token("mcp:tools"))
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo");
    let reply = Reply::read(request.send().await.unwrap()).await;
    assert_eq!(step_up_scope(&reply), "mcp:tools mcp:deploy");
    // Without MCP-Protocol-Version (rmcp assumes 2025-03-26): the body too.
    let request = mcp_post(&client(), &server.url, &deploy_call("hi"))
        .bearer_auth(server.token("mcp:tools"))
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo");
    let reply = Reply::read(request.send().await.unwrap()).await;
    assert_eq!(step_up_scope(&reply), "mcp:tools mcp:deploy");
}

#[tokio::test]
async fn a_policy_that_reads_arguments_is_decided_from_the_2026_body() {
    let server = Server::start(ARGUMENT_POLICY, |b| b.required_scopes(["mcp:tools"])).await;
    let client = server.client_2026(server.token("mcp:tools")).await;
    let err = client
        .call_tool("deploy", json!({"text": "hi", "env": "prod"}))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403), "{err}");
    let challenge = common::Challenge::parse(err.www_authenticate().unwrap());
    assert_eq!(challenge.get("scope"), Some("mcp:tools mcp:prod"));
    let result = client
        .call_tool("deploy", json!({"text": "hi", "env": "dev"}))
        .await
        .unwrap();
    assert!(serde_json::to_string(&result).unwrap().contains("deploy-ran"));
    // Too large for the body path: Guarded decides, a JSON-RPC error.
    let err = client
        .call_tool("deploy", json!({"text": big_text(), "env": "prod"}))
        .await
        .unwrap_err();
    assert!(matches!(err, McpError::JsonRpc { code: -32003, .. }), "{err}");
}

// ---------------------------------------------------------------------------
// Listings: private, with the inner ttlMs.

/// [`Tools`] whose listing says it may be shared by anyone for 12 345 ms.
struct PublicListing(Tools);

impl ServerHandler for PublicListing {
    fn get_info(&self) -> ServerConfig {
        self.0.get_info()
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let result = self.0.list_tools(request, context).await?;
        Ok(result.with_cache_scope(CacheScope::Public).with_ttl_ms(12_345))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.0.call_tool(request, context).await
    }
}

#[tokio::test]
async fn a_public_listing_arrives_private_with_its_ttl() {
    let (server, _rs) = Server::start_at(
        POLICY,
        |port| format!("http://127.0.0.1:{port}/mcp"),
        |b| b.required_scopes(["mcp:tools"]),
        true,
    )
    .await;
    let client = server.client_2026(server.token("mcp:tools")).await;
    let listing = client.request("tools/list", json!({})).await.unwrap();
    assert_eq!(listing["cacheScope"], "private", "{listing}");
    assert_eq!(listing["ttlMs"], 12_345, "{listing}");
    // Filtered for this caller (no `mcp:deploy`): only `echo`.
    let names: Vec<&str> = listing["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["echo"], "{listing}");
}

// ---------------------------------------------------------------------------
// rmcp's own client (its newest protocol version, Mcp-* headers and all).

#[tokio::test]
async fn rmcp_client_gets_the_step_up_for_a_large_call() {
    use rmcp::model::ProtocolVersion;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::{ClientLifecycleMode, ClientServiceExt as _};

    let server = Server::start(POLICY, |b| b.required_scopes(["mcp:tools"])).await;
    let connect = |scope: &str| {
        let config = StreamableHttpClientTransportConfig::with_uri(server.url.clone()).auth_header(server.token(scope));
        let lifecycle = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        };
        ().serve_with_lifecycle(StreamableHttpClientTransport::from_config(config), lifecycle)
    };
    let arguments = json!({"text": big_text()}).as_object().unwrap().clone();
    let client = connect("mcp:tools").await.expect("connects");
    let error = client
        .call_tool(CallToolRequestParams::new("deploy").with_arguments(arguments.clone()))
        .await
        .expect_err("stepped up");
    let shown = format!("{error:?}");
    assert!(shown.contains("insufficient_scope"), "{shown}");
    assert!(shown.contains("mcp:tools mcp:deploy"), "{shown}");
    let client = connect("mcp:tools mcp:deploy").await.expect("connects");
    let result = client
        .call_tool(CallToolRequestParams::new("deploy").with_arguments(arguments))
        .await
        .expect("allowed");
    let text = &result.content[0].as_text().expect("text").text;
    assert_eq!(text, &format!("deploy-ran {} ", 300 * 1024));
}
