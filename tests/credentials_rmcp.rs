//! The `CallerCredentials` extractor inside a real rmcp tool call over
//! Streamable HTTP: the server's handle and the principal reach the tool
//! through the request parts rmcp copies, and each tenant gets its own
//! credential.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolRequestParams, ServerCapabilities, ServerConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use rmcp_guard::Principal;
use rmcp_guard::secrets::{CallerCredentials, Credentials, MemoryStore};

const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    fn new() -> Self {
        Tools {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Connect to Catalyst Center with the caller's credential")]
    async fn connect(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        let cred = credentials.get("catalyst-center").await?;
        let user = cred.expose_required("username")?;
        let _password = cred.expose_required("password")?;
        Ok(format!("connected as {user}"))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Starts the server; the stand-in for the bearer layer takes the tenant
/// from `Authorization: Bearer <tenant>` (test only: no verification).
async fn serve() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = MemoryStore::new()
        .with(
            "mcp/acme/catalyst-center",
            [("username", "acme-netops"), ("password", "pw-acme")],
        )
        .with(
            "mcp/globex/catalyst-center",
            [("username", "globex-netops"), ("password", "pw-globex")],
        );
    let creds = Credentials::builder(store).build();
    let mcp = StreamableHttpService::new(
        || Ok(Tools::new()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_allowed_hosts(["127.0.0.1".to_owned(), addr.to_string()]),
    );
    let fake_bearer = tower::util::MapRequestLayer::new(|mut req: http::Request<axum::body::Body>| {
        let tenant = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        if let Some(tenant) = tenant {
            let p = Principal::unverified("https://idp.test", format!("user@{tenant}"))
                .tenant(tenant)
                .build();
            req.extensions_mut().insert(p);
        }
        req
    });
    let app = axum::Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::Extension(creds))
        .layer(fake_bearer);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/mcp"), task)
}

async fn call(url: &str, tenant: &str) -> Result<String, ErrorData> {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(tenant.to_owned());
    let client = tokio::time::timeout(TIMEOUT, ().serve(StreamableHttpClientTransport::from_config(config)))
        .await
        .expect("handshake does not hang")
        .expect("handshake");
    let result = tokio::time::timeout(TIMEOUT, client.call_tool(CallToolRequestParams::new("connect")))
        .await
        .expect("call does not hang");
    let _ = client.cancel().await;
    match result {
        Ok(r) => Ok(r.content[0].as_text().expect("text").text.clone()),
        Err(rmcp::ServiceError::McpError(e)) => Err(e),
        Err(e) => panic!("transport error: {e}"),
    }
}

#[tokio::test]
async fn each_tenant_connects_with_its_own_credential_through_rmcp() {
    let (url, server) = serve().await;
    assert_eq!(call(&url, "acme").await.unwrap(), "connected as acme-netops");
    assert_eq!(call(&url, "globex").await.unwrap(), "connected as globex-netops");

    let err = call(&url, "initech").await.unwrap_err();
    assert_eq!(err.code, rmcp::model::ErrorCode::RESOURCE_NOT_FOUND);
    assert_eq!(err.message, "credential not found");

    // A tenant claim that would escape its prefix is a denial, with the one
    // denial code every refusal has.
    let err = call(&url, "..").await.unwrap_err();
    assert_eq!(err.code, rmcp_guard::PERMISSION_DENIED);
    assert_eq!(err.message, "permission denied");
    assert!(!format!("{err:?}").contains("pw-"));
    server.abort();
}
