//! Errors: [`SecretError`] per lookup, [`SecretsConfigError`] at build time.

use std::path::PathBuf;

#[cfg(test)]
use serde_json::json;

use super::template::ScopeError;
use crate::error::Rejection;

/// Why a credential lookup failed.
///
/// The messages are written for the MCP client: they name the kind of failure
/// and never carry a Vault response body, a token or a value. Convert with
/// `?` into an [`rmcp::ErrorData`] in a tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The secret store could not be reached (connection refused, timeout, 5xx).
    #[error("the secret store is unreachable")]
    Unreachable,
    /// The secret store is sealed.
    #[error("the secret store is sealed")]
    Sealed,
    /// The store's own policy refused this path to the server's identity.
    #[error("the secret store denied access to this credential")]
    PermissionDenied,
    /// Nothing is stored at the resolved path.
    #[error("no credential is stored for this service")]
    NotFound,
    /// The server could not authenticate to the store (token invalid or
    /// revoked, and logging in again failed or is not possible).
    #[error("the server could not authenticate to the secret store")]
    AuthFailed,
    /// The authorizer (policy, action `secrets/read`) refused this read.
    #[error("reading this credential is not allowed")]
    Denied,
    /// The caller's identity cannot be mapped to a credential path.
    #[error("the caller cannot be mapped to a credential path: {0}")]
    Scope(#[from] ScopeError),
    /// The request did not pass through the bearer layer.
    #[error("request is not authenticated")]
    Unauthenticated,
    /// No [`Credentials`](super::Credentials) handle in the request: the server
    /// is wired without credentials.
    #[error("credentials are not configured on this server")]
    NotConfigured,
    /// The stored credential lacks a field the tool requires.
    #[error("the stored credential has no `{0}` field")]
    MissingField(String),
    /// The store answered with something that is not a flat map of fields.
    #[error("the secret store returned an unexpected response")]
    Malformed,
    /// The store failed in an unexpected way (a bug; details are logged).
    #[error("the secret store failed unexpectedly")]
    Internal,
    /// The store kept failing and its circuit breaker is open: nothing was
    /// asked of it.
    #[error("the secret store is temporarily unavailable")]
    CircuitOpen {
        /// Seconds until the breaker lets a probe through.
        retry_after_secs: u64,
    },
}

impl SecretError {
    /// A stable, machine-readable code for this kind: the audit `outcome` and
    /// the `reason` in the MCP error's data.
    pub fn code(&self) -> &'static str {
        match self {
            SecretError::Unreachable => "unreachable",
            SecretError::Sealed => "sealed",
            SecretError::PermissionDenied => "permission_denied",
            SecretError::NotFound => "not_found",
            SecretError::AuthFailed => "auth_failed",
            SecretError::Denied => "denied",
            SecretError::Scope(_) => "invalid_scope",
            SecretError::Unauthenticated => "unauthenticated",
            SecretError::NotConfigured => "not_configured",
            SecretError::MissingField(_) => "missing_field",
            SecretError::Malformed => "malformed",
            SecretError::Internal => "internal",
            SecretError::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// Whether the store is unavailable (as opposed to having answered):
    /// only then may a stale cached value be served, within the configured
    /// stale-if-error window.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            SecretError::Unreachable | SecretError::Sealed | SecretError::AuthFailed | SecretError::CircuitOpen { .. }
        )
    }

    /// Whether the failure is the server's infrastructure (logged at `warn`)
    /// rather than an answer about this caller (logged at `debug`).
    pub fn is_infrastructure(&self) -> bool {
        self.is_unavailable()
            || matches!(
                self,
                SecretError::NotConfigured | SecretError::Malformed | SecretError::Internal
            )
    }
}

impl From<SecretError> for Rejection {
    /// Refusals (the authorizer, the store's permission, a claim that cannot
    /// name a path, no caller) are denials; a missing credential or field is
    /// "not found"; everything else is the store being unavailable. The
    /// detail stays in the audit event.
    fn from(e: SecretError) -> Self {
        match e {
            SecretError::Denied | SecretError::PermissionDenied | SecretError::Scope(_) => Rejection::forbidden(),
            SecretError::Unauthenticated => Rejection::Unauthenticated,
            SecretError::NotFound => Rejection::NotFound("credential"),
            SecretError::MissingField(_) => Rejection::NotFound("credential field"),
            SecretError::NotConfigured => Rejection::NotConfigured("credentials"),
            _ => Rejection::Unavailable("the credential store"),
        }
    }
}

impl From<SecretError> for rmcp::ErrorData {
    /// Through [`Rejection`]: the same error for every denial.
    fn from(e: SecretError) -> Self {
        Rejection::from(e).into()
    }
}

/// A secrets configuration the library refuses to build, with what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsConfigError {
    /// The path template does not parse or is not bound to the principal.
    #[error("invalid secret path template {template:?}: {reason}")]
    InvalidTemplate {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A token or secret_id file is readable by group or others (as ssh,
    /// refuse it: `chmod 0400` it).
    #[error("{path} is accessible by group or others (mode {mode:04o}); run `chmod 0400` on it")]
    InsecureFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A credential file cannot be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A credential file or variable is empty.
    #[error("{0} is empty")]
    Empty(String),
    /// A required environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// The Vault address is not a URL, or is plain http to a non-loopback host.
    #[error("invalid Vault address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The Vault HTTP client could not be built (TLS settings).
    #[error("cannot build the Vault client: {0}")]
    Client(String),
    /// Logging in or looking up the token at start failed.
    #[error("cannot start the Vault store: {0}")]
    Connect(SecretError),
    /// The circuit breaker settings are out of range.
    #[error(transparent)]
    Breaker(crate::error::ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_is_the_one_denial_error() {
        let e: rmcp::ErrorData = SecretError::Unreachable.into();
        assert_eq!(e.code, rmcp::model::ErrorCode::INTERNAL_ERROR);
        assert_eq!(e.message, "the credential store is temporarily unavailable");
        for denied in [SecretError::PermissionDenied, SecretError::Denied] {
            let e: rmcp::ErrorData = denied.into();
            assert_eq!(e.code, crate::error::PERMISSION_DENIED);
            assert_eq!(e.data, Some(json!({"error": "forbidden"})));
        }
        let e: rmcp::ErrorData = SecretError::NotFound.into();
        assert_eq!(e.code, rmcp::model::ErrorCode::RESOURCE_NOT_FOUND);
    }

    #[test]
    fn only_unavailability_allows_stale() {
        assert!(SecretError::Unreachable.is_unavailable());
        assert!(SecretError::Sealed.is_unavailable());
        assert!(SecretError::CircuitOpen { retry_after_secs: 1 }.is_unavailable());
        assert!(!SecretError::PermissionDenied.is_unavailable());
        assert!(!SecretError::NotFound.is_unavailable());
    }
}
