//! A guarded MCP server whose audit events leave as Elastic Common Schema
//! JSON lines, ready for Elasticsearch without an ingest pipeline.
//!
//! ```text
//! cargo run --example audit_json > audit.ndjson
//! GUARD_AUDIT_FILE=/var/log/mcp/audit.ndjson cargo run --example audit_json
//! ```
//!
//! The server is `quickstart`'s (the in-process development authorization
//! server, which approves everyone: development only). Every audit event
//! (target `rmcp_guard::audit`) is written by `audit::EcsJsonLayer` as one
//! ECS document per line: to stdout, or appended to the file named by
//! `GUARD_AUDIT_FILE`. Everything else (the token and curl line printed at
//! start, the other logs) goes to stderr, so stdout stays pure JSON lines.
//! Ship them with Filebeat or Elastic Agent (a `filestream` input with the
//! `ndjson` parser); docs/audit-schema.md lists every field of every event.

use std::fs::OpenOptions;
use std::sync::Mutex;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use rmcp_guard::audit::{EcsJsonLayer, TARGET};
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard::{Guard, Principal};
use rmcp_guard_testkit::dev::DevAuthServer;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

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
        Ok(format!("hello {}", caller.subject()))
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
    // Where the audit lines go: edit here for another sink (a rolling file,
    // `tracing_appender::non_blocking` so a slow disk never slows requests).
    let audit_writer = match std::env::var_os("GUARD_AUDIT_FILE") {
        Some(path) => BoxMakeWriter::new(Mutex::new(OpenOptions::new().create(true).append(true).open(path)?)),
        None => BoxMakeWriter::new(std::io::stdout),
    };
    tracing_subscriber::registry()
        // The audit events, as ECS; `service.name` tells servers apart in one index (edit it).
        .with(EcsJsonLayer::new(audit_writer).service_name("audit-json-example"))
        // Everything else, human-readable, to stderr (RUST_LOG filters it).
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter_fn(|meta| meta.target() != TARGET))
                .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())),
        )
        .init();

    let bind = std::env::var("GUARD_BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let resource = format!("http://{}/mcp", listener.local_addr()?);

    // Development only: approves every request as this user.
    let auth = DevAuthServer::builder(resource.clone())
        .subject("audit-demo-user")
        .scopes_supported(["mcp:tools"])
        .start()
        .await?;
    let rs = ResourceServer::builder(resource.clone(), Issuer::discover(auth.issuer()))
        .required_scopes(["mcp:tools"])
        .build()?;
    rs.warm_up().await?;
    let app = Guard::new(rs).router(|| Ok(Hello::new()));

    // Audit lines on stdout: every human-readable line goes to stderr.
    let token = auth.issue_access_token("mcp:tools", std::time::Duration::from_secs(3600));
    eprintln!("MCP endpoint: {resource} (development authorization server: approves everyone)");
    eprintln!("An accepted request (an `authn` line with outcome success on stdout):");
    eprintln!(
        "  curl -s {resource} -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \
         -H 'Accept: application/json, text/event-stream' \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"0\"}}}}}}'"
    );
    eprintln!("A refused one (an `authn` line with outcome failure, status 401): curl -s {resource}");
    eprintln!("Ctrl-C to stop.");

    rmcp_guard::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
