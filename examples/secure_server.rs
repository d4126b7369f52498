//! A production-shaped guarded MCP server, configured from the environment.
//!
//! ```text
//! GUARD_ISSUER=https://idp.example.com cargo run --example secure_server
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `GUARD_BIND` | listen address | `127.0.0.1:8080` |
//! | `GUARD_RESOURCE` | canonical resource URI (the MCP endpoint URL) | `http://{GUARD_BIND}/mcp` |
//! | `GUARD_ISSUER` | trusted issuer; its metadata is discovered | required |
//! | `GUARD_JWKS_URI` | skip discovery and read keys here | discovered |
//! | `GUARD_AUDIENCE` | accepted audience | the resource URI |
//! | `GUARD_REQUIRED_SCOPES` | space-separated scopes every call needs | `mcp:tools` |
//! | `RUST_LOG` | log filter; audit events are on `rmcp_guard::audit` | `info` |
//!
//! Bad configuration prints one line and exits with status 2.

use std::process::ExitCode;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::{Issuer, Principal, ResourceServer};

/// The tools of this server. Edit here: every tool is reached only through the
/// bearer layer, and reads its caller with `Principal::from_parts`.
#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[tool_router]
impl Tools {
    fn new() -> Self {
        Tools {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Who is calling: subject, tenant, groups and scopes of the token")]
    async fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> Result<String, ErrorData> {
        let caller = Principal::from_parts(&parts)?;
        Ok(serde_json::json!({
            "subject": caller.subject(),
            "issuer": caller.issuer(),
            "client_id": caller.client_id(),
            "tenant": caller.tenant(),
            "groups": caller.groups(),
            "scopes": caller.scopes().collect::<Vec<_>>(),
        })
        .to_string())
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

/// Everything read from the environment, checked before anything starts.
struct Settings {
    bind: String,
    resource_server: ResourceServer,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn settings() -> Result<Settings, String> {
    let bind = env("GUARD_BIND").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    bind.parse::<std::net::SocketAddr>()
        .map_err(|_| format!("GUARD_BIND is not a socket address: {bind}"))?;
    let resource = env("GUARD_RESOURCE").unwrap_or_else(|| format!("http://{bind}/mcp"));
    let issuer_url = env("GUARD_ISSUER").ok_or("GUARD_ISSUER is required: the URL of the trusted issuer")?;
    let issuer = match env("GUARD_JWKS_URI") {
        Some(jwks) => Issuer::with_jwks_uri(issuer_url, jwks),
        None => Issuer::discover(issuer_url),
    };
    let scopes = env("GUARD_REQUIRED_SCOPES").unwrap_or_else(|| "mcp:tools".to_owned());
    let mut builder = ResourceServer::builder(resource.clone(), issuer)
        .required_scopes(scopes.split_whitespace())
        .resource_name("rmcp-guard secure_server example");
    if let Some(audience) = env("GUARD_AUDIENCE") {
        builder = builder.audiences([audience]);
    }
    let resource_server = builder.build().map_err(|e| format!("configuration error: {e}"))?;
    Ok(Settings { bind, resource_server })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let settings = match settings() {
        Ok(s) => s,
        Err(message) => {
            eprintln!("secure_server: {message}");
            return ExitCode::from(2);
        }
    };
    let rs = settings.resource_server;
    if let Err(e) = rs.warm_up().await {
        // Not fatal: the issuer may come up later; requests get 503 until then.
        tracing::warn!("signing keys not available yet: {e}");
    }

    let mcp = StreamableHttpService::new(
        || Ok(Tools::new()),
        LocalSessionManager::default().into(),
        rs.streamable_http_config(),
    );
    let app = rs.router(mcp);

    let listener = match tokio::net::TcpListener::bind(&settings.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("secure_server: cannot listen on {}: {e}", settings.bind);
            return ExitCode::from(2);
        }
    };
    tracing::info!(resource = rs.resource(), metadata = rs.metadata_url(), "serving");
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    {
        eprintln!("secure_server: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
