#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audit;
pub mod error;
pub mod principal;

#[cfg(feature = "jwt")]
pub mod oauth;

#[cfg(feature = "policy")]
pub mod policy;

#[cfg(feature = "jwt")]
pub mod session;

pub mod secrets;

pub use error::{AuthError, ConfigError};
#[cfg(feature = "jwt")]
pub use oauth::{BearerAuthLayer, Issuer, ResourceServer};
pub use principal::Principal;

/// Check the policy before a tool body runs; see [`policy::require_permission`].
#[cfg(feature = "macros")]
pub use rmcp_guard_macros::require_permission;
