//! Test kit for servers guarded by `rmcp-guard`, all on loopback ports:
//!
//! - [`TestIssuer`]: an in-process token issuer (metadata, JWKS, tokens with
//!   any claims), with named callers ([`Persona`]: `issuer.persona("alice")`);
//! - [`TestServer`]: your axum app served in-process on `127.0.0.1:0`;
//! - [`McpClient`]: an MCP client for Streamable HTTP that speaks both
//!   protocol generations (2025-11-25 sessions, 2026-07-28 stateless) and
//!   reports rejections with their status and challenge ([`client`]);
//! - [`dev`]: a development OAuth 2.1 authorization server;
//! - [`dpop`]: DPoP (RFC 9449) keys and proofs, for sender-constrained
//!   tokens ([`TokenBuilder::bound_to`], [`client::Connect::dpop`]).
//!
//! Use it as a dev-dependency: `rmcp-guard-testkit = "0.1"` under
//! `[dev-dependencies]`.
//!
//! # An integration test of an MCP server
//!
//! ```
//! use rmcp::handler::server::router::tool::ToolRouter;
//! use rmcp::model::{ServerCapabilities, ServerConfig};
//! use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
//! use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
//! use rmcp::{ServerHandler, tool, tool_handler, tool_router};
//! use rmcp_guard_testkit::{McpClient, Protocol, TestIssuer, TestServer};
//!
//! #[derive(Clone)]
//! struct Hello {
//!     tool_router: ToolRouter<Self>,
//! }
//!
//! #[tool_router]
//! impl Hello {
//!     #[tool(description = "Say hello")]
//!     async fn hello(&self) -> String {
//!         "hello".into()
//!     }
//! }
//!
//! #[tool_handler(router = self.tool_router)]
//! impl ServerHandler for Hello {
//!     fn get_info(&self) -> ServerConfig {
//!         ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mcp = StreamableHttpService::new(
//!     || Ok(Hello { tool_router: Hello::tool_router() }),
//!     LocalSessionManager::default().into(),
//!     StreamableHttpServerConfig::default(),
//! );
//! // In a real test: your guarded router, trusting `issuer.issuer()`.
//! let server = TestServer::start(axum::Router::new().nest_service("/mcp", mcp)).await?;
//! let issuer = TestIssuer::start().await?;
//! let token = issuer
//!     .persona("alice")
//!     .groups(["editors"])
//!     .scopes(["mcp:tools"])
//!     .token(server.mcp_url("/mcp"));
//!
//! for protocol in Protocol::ALL {
//!     let client = McpClient::connect(server.mcp_url("/mcp"), protocol)
//!         .bearer(token.clone())
//!         .await?;
//!     assert_eq!(client.list_tools().await?[0].name, "hello");
//!     let result = client.call_tool("hello", serde_json::Value::Null).await?;
//!     assert_eq!(result.content[0].as_text().map(|t| t.text.as_str()), Some("hello"));
//!     client.close().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Tokens
//!
//! [`TestIssuer::start`] binds `127.0.0.1:0`, generates ephemeral keys (RSA
//! 2048, ECDSA P-256, Ed25519), serves RFC 8414 / OpenID Connect metadata and a
//! JWK set, and mints access tokens with whatever claims a test needs. Point
//! the guarded server's trusted issuer at [`TestIssuer::issuer`] and send the
//! token as `Authorization: Bearer ...`.
//!
//! ```
//! use rmcp_guard_testkit::{KeyAlg, TestIssuer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let issuer = TestIssuer::start().await?;
//! let token = issuer
//!     .token()
//!     .audience("http://127.0.0.1:8080/mcp")
//!     .scope("mcp:tools")
//!     .algorithm(KeyAlg::Es256)
//!     .sign();
//! println!("Authorization: Bearer {token}");
//!
//! // The issuer serves the keys a validator needs, and counts the fetches.
//! let response = reqwest::get(issuer.jwks_uri()).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(issuer.jwks_fetches(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Hostile tokens
//!
//! The kit exists as much to attack the validator as to feed it:
//!
//! - [`TokenBuilder::claim`], [`TokenBuilder::without_claim`],
//!   [`TokenBuilder::header`] and [`TokenBuilder::without_header`] write
//!   claims and header parameters verbatim (`exp` as a string, `crit`, `jku`,
//!   `x5u`, `jwk`, a lying `alg`, no `kid`).
//! - [`TestKey`] is a key nobody publishes; [`TokenBuilder::signed_with`]
//!   signs with it while keeping the issuer's `kid`.
//! - [`TestIssuer::sign_raw`] / [`TestIssuer::sign_raw_bytes`] sign exactly
//!   the header you give; [`unsigned_token`] builds `alg: none` style tokens;
//!   [`shared_secret_token`] signs HS256, e.g. with
//!   [`TestIssuer::rsa_public_key_pem`] as the secret (algorithm confusion).
//! - [`TestIssuer::rotate`], [`TestIssuer::publish_extra_jwk`],
//!   [`TestIssuer::set_available`], [`TestIssuer::set_cache_control`],
//!   [`TestIssuer::set_jwks_body`], [`TestIssuer::set_metadata_field`] and
//!   [`TestIssuer::set_delay`] change what the endpoints serve at run time.
//!
//! The issuer listens on loopback only and its keys live only in memory. It
//! is meant for tests and examples, never for production.
//!
//! # What the test kit does not do
//!
//! [`McpClient`] is a test client: it does not answer requests the server
//! sends on a 2025-11-25 stream (sampling, elicitation, roots), open the GET
//! stream, resume streams, or run the OAuth flow itself (mint the token with
//! the issuer, or use rmcp's own client with the `auth` feature for that).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod dev;
pub mod dpop;
mod issuer;
mod keys;
mod persona;
mod server;
mod token;

#[cfg(test)]
mod tests;

pub use client::{McpClient, McpError, Protocol};
pub use dpop::DpopKey;
pub use issuer::TestIssuer;
pub use keys::{KeyAlg, TestKey};
pub use persona::Persona;
pub use server::TestServer;
pub use token::TokenBuilder;

use aws_lc_rs::hmac;
use serde_json::Value;

use keys::{b64, compact_jws, json_bytes};

/// A compact JWS over exactly `header` and `claims`, signed with HMAC-SHA256
/// under `secret` (whatever the header's `alg` says).
///
/// For issuers configured with a shared secret, and for algorithm-confusion
/// attacks that use an RSA public key as the HMAC secret.
pub fn shared_secret_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    compact_jws(&json_bytes(header), &json_bytes(claims), |input| {
        hmac::sign(&key, input).as_ref().to_vec()
    })
}

/// `b64(header).b64(claims).` with an empty signature, as an `alg: none`
/// token is written. The header is used verbatim (try `"none"`, `"None"`,
/// `"NONE"`, `"nOnE"`).
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", b64(&json_bytes(header)), b64(&json_bytes(claims)))
}
