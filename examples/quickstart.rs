//! A guarded MCP server with zero external services.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It starts an in-process development issuer on a loopback port (ephemeral
//! keys, RFC 8414 metadata, JWKS), trusts it, serves the MCP endpoint at
//! `http://127.0.0.1:8080/mcp` with its RFC 9728 metadata, and prints a ready
//! bearer token and a curl line. Set `GUARD_BIND` to listen elsewhere. For a
//! real deployment start from `secure_server.rs` instead.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::testing::TestIssuer;
use rmcp_guard::{Issuer, Principal, ResourceServer};

#[derive(Clone)]
struct Hello {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Hello {
    fn new() -> Self {
        Hello {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Greet the caller by the subject of their token")]
    async fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> Result<String, ErrorData> {
        let caller = Principal::from_parts(&parts)?;
        Ok(format!(
            "hello {} (scopes: {:?})",
            caller.subject(),
            caller.scopes().collect::<Vec<_>>()
        ))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Hello {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let bind = std::env::var("GUARD_BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let resource = format!("http://{}/mcp", listener.local_addr()?);

    // Development only: a token issuer living in this process.
    let issuer = TestIssuer::start().await?;

    // The guard: who may call (the issuer), for what (this resource), with what scope.
    let rs = ResourceServer::builder(resource.clone(), Issuer::discover(issuer.issuer()))
        .required_scopes(["mcp:tools"])
        .resource_name("rmcp-guard quickstart")
        .build()?;
    rs.warm_up().await?;

    let mcp = StreamableHttpService::new(
        || Ok(Hello::new()),
        LocalSessionManager::default().into(),
        rs.streamable_http_config(),
    );
    let app = rs.router(mcp);

    let token = issuer
        .token()
        .subject("quickstart-user")
        .audience(resource.clone())
        .scope("mcp:tools")
        .expires_in(std::time::Duration::from_secs(3600))
        .sign();
    println!("MCP endpoint:      {resource}");
    println!("Resource metadata: {}", rs.metadata_url());
    println!("Bearer token (1 h): {token}");
    println!();
    println!("Try it:");
    println!(
        "  curl -s {resource} -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \
         -H 'Accept: application/json, text/event-stream' \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"0\"}}}}}}'"
    );
    println!("  curl -si {resource}   # no token: 401 with a WWW-Authenticate challenge");
    println!();
    println!("Ctrl-C to stop.");

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
