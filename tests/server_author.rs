//! A server author's integration test with the test kit, as the README shows it:
//! a guarded server in-process, two personas, both protocol generations.
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::{Guard, PERMISSION_DENIED, Principal, policy::PolicyEngine};
use rmcp_guard_testkit::{McpClient, Protocol, TestIssuer, TestServer};
use serde_json::json;

#[derive(Clone)]
struct Devices {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Devices {
    #[tool(description = "Who is calling")]
    async fn whoami(&self, caller: Principal) -> Result<String, ErrorData> {
        Ok(caller.subject().to_owned())
    }

    #[tool(description = "Deploy a template to a device")]
    async fn deploy_template(&self) -> String {
        "deployed".into()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Devices {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::test]
async fn engineers_deploy_the_service_desk_cannot_strangers_get_401() -> Result<(), Box<dyn std::error::Error>> {
    let issuer = TestIssuer::start().await?;
    let trusted = Issuer::with_jwks_uri(issuer.issuer(), issuer.jwks_uri());
    let server = TestServer::start_with(|base| {
        let rs = ResourceServer::builder(format!("{base}/mcp"), trusted)
            .required_scopes(["mcp:tools"])
            .build();
        let policy = PolicyEngine::rbac_example().expect("the shipped policy");
        Guard::new(rs.expect("valid configuration")).policy(policy).router(|| {
            Ok(Devices {
                tool_router: Devices::tool_router(),
            })
        })
    })
    .await?;
    let mcp = server.mcp_url("/mcp");
    let alice = issuer
        .persona("alice")
        .groups(["network-engineers"])
        .scopes(["mcp:tools"])
        .token(&mcp);
    let bob = issuer
        .persona("bob")
        .groups(["service-desk"])
        .scopes(["mcp:tools"])
        .token(&mcp);

    for protocol in Protocol::ALL {
        let engineer = McpClient::connect(&mcp, protocol).bearer(&alice).await?;
        let me = engineer.call_tool("whoami", json!({})).await?;
        assert_eq!(me.content[0].as_text().map(|t| t.text.as_str()), Some("alice"));
        assert!(engineer.call_tool("deploy_template", json!({})).await.is_ok());

        let desk = McpClient::connect(&mcp, protocol).bearer(&bob).await?;
        let tools: Vec<_> = desk.list_tools().await?.into_iter().map(|t| t.name).collect();
        assert_eq!(tools, ["whoami"], "{protocol:?}: the listing is filtered");
        let refused = desk.call_tool("deploy_template", json!({})).await.unwrap_err();
        assert_eq!(refused.code(), Some(PERMISSION_DENIED.0));

        let stranger = match McpClient::connect(&mcp, protocol).await {
            Ok(client) => client.list_tools().await.unwrap_err(), // 2026-07-28: no handshake
            Err(refused) => refused,
        };
        assert_eq!(stranger.status().map(|s| s.as_u16()), Some(401));
        assert!(
            stranger
                .www_authenticate()
                .is_some_and(|c| c.contains("resource_metadata="))
        );
    }
    Ok(())
}
