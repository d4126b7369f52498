//! The audit event vocabulary, in one place.
//!
//! Every security decision emits exactly one `tracing` event on the target
//! [`TARGET`] (`rmcp_guard::audit`) at `INFO`. Fields are stable; values are
//! identifiers and reason codes, never a token, a secret or key material.

/// The `tracing` target of every audit event.
pub const TARGET: &str = "rmcp_guard::audit";

// ---- policy decisions (feature `policy`); owned by src/policy/ ----

/// One policy decision: `event = "policy_decision"`, with `subject`,
/// `issuer`, `action`, `resource`, `allowed`, `reason`, `policy_version`,
/// `duration_us` and `cached`.
#[cfg(feature = "policy")]
pub(crate) fn policy_decision(input: &crate::policy::PolicyInput, decision: &crate::policy::Decision) {
    tracing::info!(
        target: TARGET,
        event = "policy_decision",
        subject = input.principal().subject(),
        issuer = input.principal().issuer(),
        action = input.action(),
        resource = input.resource(),
        allowed = decision.allowed(),
        reason = decision.reason().unwrap_or(""),
        policy_version = decision.policy_version(),
        duration_us = decision.duration().as_micros() as u64,
        cached = decision.from_cache(),
    );
}

/// A request denied before any policy ran (no principal, no context):
/// `event = "policy_decision"`, `allowed = false`.
#[cfg(feature = "policy")]
pub(crate) fn policy_denied_unauthenticated(action: &str, resource: &str, reason: &str) {
    tracing::info!(
        target: TARGET,
        event = "policy_decision",
        subject = "",
        issuer = "",
        action,
        resource,
        allowed = false,
        reason,
        policy_version = "",
        duration_us = 0u64,
        cached = false,
    );
}

/// A new policy version is in force: `event = "policy_reload"`.
#[cfg(feature = "policy")]
pub(crate) fn policy_reloaded(previous: &str, version: &str) {
    tracing::info!(
        target: TARGET,
        event = "policy_reload",
        outcome = "applied",
        previous_version = previous,
        policy_version = version,
    );
}

/// A reload was refused and the previous version keeps serving:
/// `event = "policy_reload"` at `ERROR`.
#[cfg(feature = "policy")]
pub(crate) fn policy_reload_failed(current: &str, error: &crate::ConfigError) {
    tracing::error!(
        target: TARGET,
        event = "policy_reload",
        outcome = "rejected",
        policy_version = current,
        error = %error,
    );
}
// ---- end policy ----

// ---- credential access; owned by src/secrets/ ----

/// The `event` field of a credential access (`secrets::credentials`).
///
/// Fields: `subject`, `issuer`, `tenant`, `service`, `template`, `path` (the
/// resolved path, empty when refused before resolution), `outcome` (`ok` or a
/// `SecretError::code`), `cache` (`hit`, `miss`, `joined`, `stale`, `bypass`,
/// `none`). Never a value, a token or a Vault response.
pub const SECRET_ACCESS: &str = "secret_access";

pub(crate) fn secret_access(
    principal: Option<&crate::Principal>,
    service: &str,
    template: &str,
    path: Option<&str>,
    outcome: &str,
    cache: &str,
) {
    tracing::info!(
        target: TARGET,
        event = SECRET_ACCESS,
        subject = principal.map_or("", |p| p.subject()),
        issuer = principal.map_or("", |p| p.issuer()),
        tenant = principal.and_then(|p| p.tenant()).unwrap_or(""),
        service,
        template,
        path = path.unwrap_or(""),
        outcome,
        cache,
    );
}
// ---- end credential access ----

// ---- downstream tokens (feature `introspection`); owned by src/oauth/exchange.rs ----

/// One downstream token request (`oauth::exchange`): `event =
/// "token_exchange"`, with `subject`, `issuer` (empty for client
/// credentials), `grant` (`token_exchange` or `client_credentials`),
/// `audience`, `outcome` (`ok` or an `ExchangeError::code`) and `cache`
/// (`hit`, `miss`, `joined`, `none`). Never a token.
#[cfg(feature = "introspection")]
pub(crate) fn token_exchange(
    principal: Option<&crate::Principal>,
    grant: &str,
    audience: &str,
    outcome: &str,
    cache: &str,
) {
    tracing::info!(
        target: TARGET,
        event = "token_exchange",
        subject = principal.map_or("", |p| p.subject()),
        issuer = principal.map_or("", |p| p.issuer()),
        grant,
        audience,
        outcome,
        cache,
    );
}
// ---- end downstream tokens ----

#[cfg(feature = "jwt")]
use crate::error::AuthError;
#[cfg(feature = "jwt")]
use crate::principal::Principal;

/// A request was authenticated.
#[cfg(feature = "jwt")]
pub(crate) fn authn_accepted(principal: &Principal, cached: bool) {
    tracing::info!(
        target: TARGET,
        event = "authn",
        outcome = "allow",
        reason = "valid_token",
        subject = principal.subject(),
        client_id = principal.client_id(),
        issuer = principal.issuer(),
        tenant = principal.tenant(),
        cached,
    );
}

/// A request was refused by the bearer layer. `subject` and `client_id` are
/// given only when the token's signature verified.
#[cfg(feature = "jwt")]
pub(crate) fn authn_rejected(error: &AuthError, issuer: Option<&str>, subject: Option<&str>, client_id: Option<&str>) {
    tracing::info!(
        target: TARGET,
        event = "authn",
        outcome = "deny",
        reason = error.reason(),
        status = error.status().as_u16(),
        subject,
        client_id,
        issuer,
    );
}

/// A request naming an MCP session was refused by the session-binding layer.
#[cfg(feature = "jwt")]
pub(crate) fn session_refused(subject: Option<String>, reason: &'static str) {
    tracing::info!(target: TARGET, event = "session", outcome = "deny", reason, subject);
}

/// The step-up layer answered 403 `insufficient_scope` before rmcp.
#[cfg(all(feature = "policy", feature = "jwt"))]
pub(crate) fn step_up(principal: &Principal, action: &str, resource: &str, required: &[String]) {
    tracing::info!(
        target: TARGET,
        event = "authz",
        outcome = "deny",
        reason = "insufficient_scope",
        subject = principal.subject(),
        client_id = principal.client_id(),
        issuer = principal.issuer(),
        action,
        resource,
        required_scopes = %required.join(" "),
    );
}
