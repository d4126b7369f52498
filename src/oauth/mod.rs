//! The OAuth 2.1 resource server: RFC 9728 metadata, bearer JWT validation
//! with a JWKS key cache, RFC 8707 audience binding and RFC 6750 / MCP
//! challenges.
//!
//! Start from [`ResourceServer::builder`]; everything else here is derived
//! from the [`ResourceServer`] it builds.
//!
//! | file | concept |
//! |---|---|
//! | [`resource_server`] | the one configuration value and its builder |
//! | [`metadata`] | RFC 9728 protected resource metadata and routes |
//! | [`challenge`] | `WWW-Authenticate` values and rejection responses |
//! | [`jwt`] | token parsing and claim checks |
//! | [`jwks`] | the issuer key cache |
//! | `cache` | the verified-token cache |
//! | [`layer`] | [`BearerAuthLayer`], the tower middleware |
//! | [`introspection`] | RFC 7662 introspection, the validator for opaque tokens (feature `introspection`) |
//! | [`exchange`] | RFC 8693 token exchange and client credentials for downstream calls (feature `introspection`) |
//! | [`client`] | this server as an OAuth client: [`ClientAuth`] (feature `introspection`) |

mod cache;
pub mod challenge;
#[cfg(feature = "introspection")]
#[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
pub mod client;
#[cfg(feature = "introspection")]
#[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
pub mod exchange;
#[cfg(feature = "introspection")]
#[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod layer;
pub mod metadata;
pub mod resource_server;

#[cfg(feature = "introspection")]
pub use client::ClientAuth;
#[cfg(feature = "introspection")]
pub use exchange::{
    DownstreamRequest, DownstreamToken, ExchangeError, InboundToken, TokenExchange, TokenExchangeBuilder,
    downstream_token, downstream_token_with,
};
pub use jsonwebtoken::Algorithm;
pub use layer::{BearerAuth, BearerAuthLayer, ResponseBody, ResponseFuture};
pub use metadata::ProtectedResourceMetadata;
pub use resource_server::{DEFAULT_ALGORITHMS, Issuer, ResourceServer, ResourceServerBuilder};
