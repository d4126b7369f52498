#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
#[allow(unused_macros)] // the smallest build has no middleware
mod macros;

pub mod advertise;
pub mod audit;
mod body;
#[cfg(any(feature = "jwt", feature = "vault", feature = "redis"))]
pub mod breaker;
mod cache;
#[cfg(any(feature = "jwt", feature = "policy"))]
mod challenge;
#[cfg(any(feature = "jwt", feature = "policy"))]
pub mod edge;
mod error;
mod extract;
pub mod limit;
mod principal;
#[cfg_attr(not(feature = "jwt"), allow(dead_code))] // read by the resource server
mod scope;

#[cfg(feature = "jwt")]
pub mod oauth;

#[cfg(feature = "jwt")]
pub mod session;

#[cfg(feature = "integrity")]
pub mod integrity;
#[cfg(feature = "policy")]
pub mod policy;
// Spans always; metrics and W3C trace context with feature `telemetry`.
pub mod telemetry;

pub mod secrets;

pub mod store;

pub mod revoke;

#[cfg(feature = "state")]
pub mod state;

#[cfg(feature = "jwt")]
mod guard;
#[cfg(feature = "jwt")]
mod serve;

#[cfg(any(feature = "jwt", feature = "policy"))]
pub use challenge::Challenges;
#[cfg(feature = "policy")]
pub use error::PolicyError;
pub use error::{AuthError, ConfigError, DpopRejection, PERMISSION_DENIED, Rejection, TokenRejection};
#[cfg(feature = "jwt")]
pub use guard::Guard;
pub use principal::{Principal, PrincipalBuilder, PrincipalKind};
#[cfg(feature = "jwt")]
pub use serve::{Serve, serve};

/// Check the policy before a tool body runs; see [`policy::require_permission`].
#[cfg(feature = "macros")]
pub use rmcp_guard_macros::require_permission;
