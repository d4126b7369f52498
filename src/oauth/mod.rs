//! The OAuth 2.1 resource server: RFC 9728 metadata, bearer JWT validation
//! with a JWKS key cache, RFC 8707 audience binding and RFC 6750 / MCP
//! challenges; RFC 7662 introspection and RFC 8693 token exchange behind
//! their features.
//!
//! Start from [`ResourceServer::builder`]; everything else here is derived
//! from the [`ResourceServer`] it builds.
//!
//! | file | concept |
//! |---|---|
//! | `resource_server` | [`ResourceServer`]: identity, metadata, challenges; authenticates requests |
//! | `config`, `hosts` | typed configuration: [`TokenRules`], [`KeyRefresh`], [`TokenCacheConfig`], [`HostPolicy`], [`IntrospectionConfig`] |
//! | `issuer` | [`Issuer`]: a trusted authorization server |
//! | `validator` | the token validator: issuers, key caches, verified-token cache, introspection |
//! | `jwt`, `jwks` | JWT checks and the issuer key cache |
//! | `dpop` | DPoP (RFC 9449): [`DpopConfig`], [`DpopMode`], [`DpopNonces`]; proofs, nonces, the binding rules |
//! | `introspection` | RFC 7662, the validator for opaque tokens (feature `introspection`) |
//! | `metadata` | the RFC 9728 document and routes |
//! | `layer` | [`BearerAuthLayer`], tower glue over [`ResourceServer::authenticate`] |
//! | `inbound` | [`InboundToken`], the caller's token kept for exchange |
//! | `client` | this server as an OAuth client: [`ClientAuth`] (features `introspection`, `exchange`) |
//! | `exchange` | RFC 8693 token exchange and client credentials (feature `exchange`) |
//! | `url` | URL rules and derived URLs (a leaf) |
//!
//! Imports flow one way: `layer` -> `resource_server` -> `validator` ->
//! `jwt`/`introspection` -> `jwks`/`cache`/`client` -> `config`/`url`.

mod cache;
#[cfg(any(feature = "introspection", feature = "exchange"))]
mod client;
mod config;
mod dpop;
#[cfg(feature = "exchange")]
mod exchange;
mod hosts;
mod inbound;
#[cfg(feature = "introspection")]
mod introspection;
mod issuer;
mod jwks;
mod jwt;
mod layer;
mod metadata;
mod resource_server;
mod url;
mod validator;

pub use cache::CacheUsage;
#[cfg(any(feature = "introspection", feature = "exchange"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "introspection", feature = "exchange"))))]
pub use client::ClientAuth;
#[cfg(feature = "introspection")]
#[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
pub use config::IntrospectionConfig;
pub use config::{DEFAULT_ALGORITHMS, KeyRefresh, TokenCacheConfig, TokenRules};
#[cfg(feature = "exchange")]
#[cfg_attr(docsrs, doc(cfg(feature = "exchange")))]
pub use dpop::DpopSigner;
pub use dpop::{
    DEFAULT_DPOP_ALGORITHMS, DEFAULT_REPLAY_PER_CALLER, DEFAULT_REPLAY_TOTAL, DpopConfig, DpopMode, DpopNonces,
};
#[cfg(feature = "exchange")]
#[cfg_attr(docsrs, doc(cfg(feature = "exchange")))]
pub use exchange::{
    DownstreamRequest, DownstreamToken, DownstreamTokens, ExchangeError, TokenExchange, TokenExchangeBuilder,
};
pub use hosts::HostPolicy;
pub use inbound::InboundToken;
pub use issuer::Issuer;
pub use jsonwebtoken::Algorithm;
pub use layer::{BearerAuth, BearerAuthLayer, BearerBody, ResponseFuture};
pub use metadata::{ProtectedResourceMetadata, WELL_KNOWN_PATH};
pub use resource_server::{
    DEFAULT_MAX_TOKEN_LIFETIME, DangerousResourceServerBuilder, ResourceServer, ResourceServerBuilder,
};
