//! A guarded MCP server with zero external services.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It starts the in-process development authorization server
//! ([`rmcp_guard_testkit::dev`]: loopback only, ephemeral keys, RFC 8414
//! metadata, client ID metadata documents and dynamic client registration,
//! PKCE, automatic approval as a demo user), trusts it, and serves the MCP
//! endpoint at `http://127.0.0.1:8080/mcp` with its RFC 9728 metadata. An MCP
//! client that follows the specification's discovery (401 -> protected
//! resource metadata -> authorization server metadata -> client ID metadata
//! document or registration -> PKCE -> token) connects with no setup. For
//! curl users it also prints a ready bearer token and a curl line.
//!
//! To try a policy as several people, mint tokens for named personas (each
//! `--persona` starts one; the `--groups` and `--tenant` after it are its):
//!
//! ```text
//! cargo run --example quickstart -- --persona alice --groups admin,editors --tenant acme --persona bob
//! ```
//!
//! Set `GUARD_BIND` to listen elsewhere (the authorization server always takes
//! a free loopback port). For a real deployment start from `secure_server.rs`
//! instead: the development server approves everyone.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::oauth::{Issuer, ResourceServer, TokenRules};
use rmcp_guard::{Guard, Principal};
use rmcp_guard_testkit::dev::DevAuthServer;

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
    async fn whoami(&self, caller: Principal) -> Result<String, ErrorData> {
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

/// A caller named on the command line: subject, groups, tenant.
#[derive(Debug, Default)]
struct Persona {
    name: String,
    groups: Vec<String>,
    tenant: Option<String>,
}

/// `--persona NAME [--groups a,b] [--tenant T]`, repeated.
fn personas_from_args() -> Result<Vec<Persona>, String> {
    let mut personas: Vec<Persona> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match (flag.as_str(), personas.last_mut()) {
            ("--persona", _) => personas.push(Persona {
                name: value,
                ..Persona::default()
            }),
            ("--groups", Some(p)) => p.groups = value.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect(),
            ("--tenant", Some(p)) => p.tenant = Some(value),
            ("--groups" | "--tenant", None) => return Err(format!("{flag} must follow a --persona NAME")),
            _ => {
                return Err(format!(
                    "unknown argument {flag} (expected --persona, --groups, --tenant)"
                ));
            }
        }
    }
    Ok(personas)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let personas = personas_from_args()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let bind = std::env::var("GUARD_BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let resource = format!("http://{}/mcp", listener.local_addr()?);

    // Development only: an authorization server living in this process that
    // approves every request as the demo user. Edit the user here.
    let auth = DevAuthServer::builder(resource.clone())
        .subject("quickstart-user")
        .groups(["developers"])
        .scopes_supported(["mcp:tools"])
        .start()
        .await?;

    // The guard: who may call (the issuer), for what (this resource), with what scope.
    let rs = ResourceServer::builder(resource.clone(), Issuer::discover(auth.issuer()))
        .required_scopes(["mcp:tools"])
        .token_rules(TokenRules::default().require_access_token_type())
        .resource_name("rmcp-guard quickstart")
        .build()?;
    rs.warm_up().await?;

    // Metadata, bearer authentication, session binding, rmcp, your tools.
    let app = Guard::new(rs.clone()).router(|| Ok(Hello::new()));

    let token = auth.issue_access_token("mcp:tools", std::time::Duration::from_secs(3600));
    println!("MCP endpoint:         {resource}");
    println!("Resource metadata:    {}", rs.metadata_url());
    println!(
        "Authorization server: {} (development only: approves everyone)",
        auth.issuer()
    );
    println!();
    println!("MCP clients that support OAuth discovery connect to {resource} with no setup.");
    println!("Bearer token (1 h): {token}");
    for p in &personas {
        let token = auth.issue_access_token_as(
            &p.name,
            &p.groups,
            p.tenant.as_deref(),
            "mcp:tools",
            std::time::Duration::from_secs(3600),
        );
        println!(
            "Bearer token for {} (groups [{}], tenant {}; 1 h): {token}",
            p.name,
            p.groups.join(","),
            p.tenant.as_deref().unwrap_or("none")
        );
    }
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

    rmcp_guard::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
