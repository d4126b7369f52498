//! A production-shaped guarded MCP server, configured from the environment.
//!
//! ```text
//! GUARD_ISSUER=https://idp.example.com cargo run --example secure_server
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `GUARD_BIND` | listen address | `127.0.0.1:8080` |
//! | `GUARD_RESOURCE` | canonical resource URI (the MCP endpoint URL) | `http://{GUARD_BIND}/mcp` |
//! | `GUARD_ISSUER` | trusted issuer; its metadata is discovered | required |
//! | `GUARD_JWKS_URI` | skip discovery and read keys here | discovered |
//! | `GUARD_AUDIENCE` | accepted audience | the resource URI |
//! | `GUARD_REQUIRED_SCOPES` | space-separated scopes every call needs | `mcp:tools` |
//! | `GUARD_POLICY` | a `.rego` file, or a directory of `.rego` and data `.json` | the embedded RBAC example |
//! | `GUARD_POLICY_RELOAD_SECS` | reload the policy from disk this often (0: never) | `0` |
//! | `GUARD_GROUPS_CLAIM` | the claim holding the caller's groups | `groups` |
//! | `GUARD_TENANT_CLAIM` | the claim holding the caller's tenant | `tenant` |
//! | `GUARD_INTROSPECTION_URL` | check tokens at this RFC 7662 endpoint of `GUARD_ISSUER` (opaque tokens) instead of as JWTs | unset: JWT |
//! | `GUARD_CLIENT_ID` | this server's OAuth client id (introspection, token exchange) | required with either |
//! | `GUARD_CLIENT_SECRET_FILE` | file holding that client's secret (mode 0400) | required with either |
//! | `GUARD_DOWNSTREAM_AUDIENCE` | audience `call_downstream` exchanges the caller's token for (RFC 8693) | unset: the tool refuses |
//! | `GUARD_TOKEN_ENDPOINT` | token endpoint for the exchange | discovered from `GUARD_ISSUER` |
//! | `VAULT_ADDR` | Vault / OpenBao address: credentials come from there | unset: in-memory demo credentials |
//! | `VAULT_TOKEN` (or `VAULT_TOKEN_FILE`), or `VAULT_ROLE_ID` + `VAULT_SECRET_ID_FILE` | how this server logs in to Vault | one is required with `VAULT_ADDR` |
//! | `VAULT_KV_MOUNT` | the KV v2 mount | `secret` |
//! | `GUARD_SECRET_TEMPLATE` | where a caller's credential for a service lives | `mcp/{tenant}/{service}` |
//! | `GUARD_HEADER_TIMEOUT_SECS` | seconds a client may take to send a request head (and a keep-alive connection may wait for its next one) | `10` |
//! | `GUARD_MAX_SESSIONS_PER_PRINCIPAL` | live MCP sessions one caller may hold; one more closes its idlest | `16` |
//! | `GUARD_RATE_LIMIT` | requests per caller (issuer, subject, client id): `N/s`, `N/min` or `N/h`; the policy's `limits` rule may set others per caller | `20/s`, burst 40, 16 in flight |
//! | `GUARD_STATELESS` | `1`/`true`: serve every request on its own, no sessions, JSON answers (any replica can answer any request); `0`/`false`: sessions for clients before MCP 2026-07-28, bound to their caller (2026-07-28 clients are stateless either way) | `false` |
//! | `GUARD_REQUEST_STATE_TTL_SECS` | seconds a confirmation asked of the user stays valid (its sealed `requestState`) | `300` |
//! | `GUARD_REQUEST_STATE_KEY_FILE` | file holding the key that seals those states: 32 random bytes in base64 (`openssl rand -base64 32`); give every replica the same file | a key generated at start (one replica; lost on restart) |
//! | `GUARD_ALLOWED_HOSTS` | `Host` values answered (`host` or `host:port`, comma-separated): the public name and every name a load balancer or probe sends | the host of `GUARD_RESOURCE` |
//! | `GUARD_ALLOWED_ORIGINS` | browser `Origin` values accepted (`scheme://host[:port]`, comma-separated) | the origin of `GUARD_RESOURCE` |
//! | `GUARD_DPOP` | DPoP (RFC 9449): `off`, `allowed` (bound tokens must come with a proof by their key; bearer tokens still accepted) or `required` (every token DPoP-bound) | `allowed` |
//! | `GUARD_DPOP_NONCE_KEY_FILE` | require server nonces in DPoP proofs, derived from this key (32 bytes in base64); give every replica the same file | unset: no nonces |
//! | `GUARD_TOOLS_LOCK` | refuse to start unless the tool definitions are those pinned in this lock file (`secure_server --write-tools-lock PATH` writes it and exits), and hide and refuse a tool that drifts while serving | unset: not checked (the digest is published either way) |
//! | `GUARD_REDIS_URL` | `redis://[user:password@]host:port[/db]`: rate limits, session bindings, single-use confirmations and revocations shared by every replica ([docs/fleet.md](../docs/fleet.md)) | unset: this process's memory (one replica) |
//! | `GUARD_REDIS_PREFIX` | prefix of every Redis key: replicas of one server share it, two servers sharing a Redis must not | `rmcp-guard:{GUARD_RESOURCE}:` |
//! | `GUARD_REDIS_TIMEOUT_MS` | the longest a request waits for one Redis command (1 to 10000); past it, or while Redis is down, what needs Redis is refused with 503 | `50` |
//! | `GUARD_METRICS_BIND` | serve the metrics in Prometheus text format at `http://{GUARD_METRICS_BIND}/metrics`, a listener of its own (`ip:port`) | unset: no scrape endpoint |
//! | `GUARD_METRICS_TOKEN_FILE` | file holding the bearer token a scrape must send (Prometheus: `authorization: {credentials_file: ...}`); required when `GUARD_METRICS_BIND` is not a loopback address | unset: loopback scrapes need no token |
//! | `GUARD_OTLP_ENDPOINT` | an OTLP/HTTP receiver (`http://collector:4318`): metrics (every 60 s, `OTEL_METRIC_EXPORT_INTERVAL` in ms) and the guard's spans are sent there as protobuf; `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` sample traces (e.g. `parentbased_traceidratio` and `0.1`); `OTEL_SERVICE_NAME` names this server | unset: nothing is sent |
//! | `RUST_LOG` | log filter; audit events are on `rmcp_guard::audit` | `info` |
//!
//! Tools and what the embedded RBAC policy needs for them (groups claim):
//! `whoami`, `echo` (any caller with `mcp:tools`); `get_all_templates`
//! (catalyst-center read: network-engineers, service-desk, admin);
//! `diagnose_connection` (catalyst-center read, as `get_all_templates`: a
//! diagnostic that, like a real buggy tool, writes the credential it read
//! into its text; the guard removes the password before the answer leaves);
//! `deploy_template` (catalyst-center write: network-engineers, admin; the
//! user confirms each call, see below);
//! `create_ticket` (servicenow write: service-desk, admin); `list_repositories`
//! (github read: developers, admin); `revoke` (admin only: the policy's
//! wildcard grant; every other group is refused as for an unknown tool).
//! `tools/list` shows each caller only the tools it may call.
//!
//! `revoke` is the kill switch: `{"subject": "...", "issuer"?: "...",
//! "client_id"?: "..."}` refuses every token issued so far to that subject
//! (and, with `client_id`, every token issued to that OAuth client),
//! optionally only tokens of that issuer, from the next request on (401
//! `invalid_token`, cached tokens too); tokens issued afterwards work. It
//! revokes in the store the guard checks (this process's memory; with a
//! shared Redis, every replica within a second). It answers what was
//! revoked and until when the revocation is kept.
//!
//! The embedded policy also has a `confirm` rule for `deploy_template`: on
//! MCP 2026-07-28 the first call answers an `InputRequiredResult` asking the
//! user (an elicitation form with one boolean `confirm`) and a sealed
//! `requestState`; the retry with the user's "yes" deploys. A 2025-era
//! client with a session that declared elicitation is asked inside its
//! session. Any other client is refused: nothing is deployed unconfirmed. The key sealing the state is
//! generated at start unless `GUARD_REQUEST_STATE_KEY_FILE` names one: with a
//! generated key a confirmation pending across a restart, or answered to
//! another replica, is refused (the client calls again).
//!
//! A fleet (several replicas behind a load balancer) shares its state in
//! Redis (`GUARD_REDIS_URL`) and its sealing key
//! (`GUARD_REQUEST_STATE_KEY_FILE`); see `docs/fleet.md`.
//!
//! The catalyst-center and servicenow tools use the caller's credential for
//! that service, read at `GUARD_SECRET_TEMPLATE` with the caller's tenant
//! (a policy decision too: action `secrets/read`). They show which account they
//! used, never the secret. Seed a Vault (or `bao server -dev`) like this:
//!
//! ```text
//! bao kv put secret/mcp/acme/catalyst-center username=acme-netops password=...
//! bao kv put secret/mcp/acme/servicenow username=acme-itsm password=...
//! ```
//!
//! Bad configuration prints one line and exits with status 2.

use std::process::ExitCode;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use rmcp_guard::integrity::{DefinitionsLock, OutputPolicy, ScanPolicy};
use rmcp_guard::limit::{Rate, RequestLimits};
use rmcp_guard::oauth::{
    ClientAuth, DownstreamTokens, DpopConfig, DpopMode, DpopNonces, DpopSigner, HostPolicy, Issuer, ResourceServer,
    TokenExchange, TokenRules,
};
use rmcp_guard::policy::PolicyEngine;
use rmcp_guard::revoke::{Revocation, Revocations, RevokeError};
use rmcp_guard::secrets::{
    CallerCredentials, Credentials, DEFAULT_TEMPLATE, MemoryStore, PathTemplate, SecretStore, VaultStoreBuilder,
};
use rmcp_guard::state::{RequestStateSealer, StateKeys};
use rmcp_guard::store::{RedisConfig, SharedStore};
use rmcp_guard::{Guard, Principal, require_permission};

/// The tools of this server. Edit here: every tool is reached only through the
/// bearer layer and the policy; a tool takes what it needs as a parameter:
/// the caller (`Principal`), their credentials (`CallerCredentials`), tokens
/// for downstream APIs (`DownstreamTokens`).
#[derive(Clone)]
struct Tools {
    /// Built once (schemas, name checks) and shared: a stateless server
    /// makes a `Tools` for every request.
    tool_router: Arc<ToolRouter<Self>>,
    /// `GUARD_DOWNSTREAM_AUDIENCE`, for `call_downstream`.
    downstream_audience: Option<String>,
    /// The revocations the guard checks every request against, for `revoke`.
    revocations: Revocations,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct DiagnoseArgs {
    /// The service whose connection to check, e.g. `catalyst-center`.
    service: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct DeployArgs {
    /// The template to deploy.
    template_id: String,
    /// The device to deploy it to.
    device_id: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct RevokeArgs {
    /// The subject (`sub`) whose tokens to revoke.
    subject: String,
    /// Only tokens of this issuer (`iss`); every trusted issuer when absent.
    issuer: Option<String>,
    /// Also revoke every token issued to this OAuth client.
    client_id: Option<String>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct TicketArgs {
    /// One line describing the problem.
    summary: String,
}

#[tool_router]
impl Tools {
    fn new(downstream_audience: Option<String>, revocations: Revocations) -> Self {
        static ROUTER: std::sync::LazyLock<Arc<ToolRouter<Tools>>> =
            std::sync::LazyLock::new(|| Arc::new(Tools::tool_router()));
        Tools {
            tool_router: ROUTER.clone(),
            downstream_audience,
            revocations,
        }
    }

    #[tool(
        description = "Who is calling: subject, tenant, groups and scopes of the token, and the DPoP key it is bound to"
    )]
    async fn whoami(&self, caller: Principal) -> Result<String, ErrorData> {
        Ok(serde_json::json!({
            "subject": caller.subject(),
            "issuer": caller.issuer(),
            "client_id": caller.client_id(),
            "tenant": caller.tenant(),
            "groups": caller.groups(),
            "scopes": caller.scopes().collect::<Vec<_>>(),
            "dpop_jkt": caller.dpop_thumbprint(),
        })
        .to_string())
    }

    #[tool(
        description = "Exchange the caller's token for one scoped to the downstream audience (RFC 8693) \
                          and report the audience and scope obtained, never the token"
    )]
    async fn call_downstream(&self, tokens: DownstreamTokens) -> Result<String, ErrorData> {
        let Some(audience) = self.downstream_audience.as_deref() else {
            return Err(ErrorData::invalid_request(
                "GUARD_DOWNSTREAM_AUDIENCE is not set on this server",
                None,
            ));
        };
        // Never forward the caller's token: exchange it for one minted for `audience`.
        let token = tokens.get(audience).await?;
        // Call the downstream API here with `.header(AUTHORIZATION, token.authorization_header()?)`,
        // and for a DPoP-bound token `.header("dpop", token.dpop_proof(&method, &url))` on each call.
        Ok(serde_json::json!({
            "aud": token.audience(),
            "scope": token.scopes().join(" "),
            "issued_token_type": token.issued_token_type(),
            "dpop_bound": token.is_dpop_bound(),
        })
        .to_string())
    }

    #[tool(description = "Echo the text back")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }

    // The policy already decided `tools/call` for each tool below before it
    // runs; `#[require_permission]` is the fine-grained check a tool author
    // adds in one line (here the same grant, stated next to the code it
    // protects).

    #[require_permission(resource = "catalyst-center", action = "read")]
    #[tool(description = "List the configuration templates of Catalyst Center")]
    async fn get_all_templates(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
        // The caller's own Catalyst Center credential (their tenant's), from Vault.
        let credential = credentials.get("catalyst-center").await?;
        Ok(serde_json::json!({
            "connected_as": credential.expose_required("username")?,
            "templates": ["branch-router-baseline", "access-switch-vlan"],
        })
        .to_string())
    }

    // A tool with the bug real diagnostics have: it puts the credential it
    // used into its text. The guard's output check removes the values the
    // call read (here the password) before the answer leaves; `username` is
    // declared public below (`OutputPolicy::public_field`), so it stays.
    #[require_permission(resource = "catalyst-center", action = "read")]
    #[tool(description = "Check the connection to a service and report what was tried")]
    async fn diagnose_connection(
        &self,
        credentials: CallerCredentials,
        Parameters(args): Parameters<DiagnoseArgs>,
    ) -> Result<String, ErrorData> {
        let credential = credentials.get(&args.service).await?;
        let user = credential.expose_required("username")?;
        let password = credential.expose_required("password")?;
        let tenant = credentials.principal().tenant().unwrap_or("default");
        Ok(format!(
            "tried https://{user}:{password}@{service}.{tenant}.internal/api: connection timed out after 5 s \
             (login {user} / {password})",
            service = args.service,
        ))
    }

    #[require_permission(resource = "catalyst-center", action = "write")]
    #[tool(description = "Deploy a configuration template to a device")]
    async fn deploy_template(
        &self,
        credentials: CallerCredentials,
        Parameters(args): Parameters<DeployArgs>,
    ) -> Result<String, ErrorData> {
        let credential = credentials.get("catalyst-center").await?;
        Ok(serde_json::json!({
            "connected_as": credential.expose_required("username")?,
            "deployed": {"template_id": args.template_id, "device_id": args.device_id},
        })
        .to_string())
    }

    #[require_permission(resource = "servicenow", action = "write")]
    #[tool(description = "Open a ServiceNow ticket")]
    async fn create_ticket(
        &self,
        credentials: CallerCredentials,
        Parameters(args): Parameters<TicketArgs>,
    ) -> Result<String, ErrorData> {
        let credential = credentials.get("servicenow").await?;
        Ok(serde_json::json!({
            "connected_as": credential.expose_required("username")?,
            "ticket": {"summary": args.summary, "state": "new"},
        })
        .to_string())
    }

    // Admin only: the embedded policy grants it through the admin role's
    // wildcard; no other role names it.
    #[require_permission(resource = "revocations", action = "write")]
    #[tool(
        description = "Admin: revoke every token issued so far to a subject (and, with client_id, to that OAuth \
                          client), optionally only tokens of one issuer; later tokens work"
    )]
    async fn revoke(&self, caller: Principal, Parameters(args): Parameters<RevokeArgs>) -> Result<String, ErrorData> {
        let mut wanted = vec![Revocation::subject(args.subject)];
        if let Some(client_id) = args.client_id {
            wanted.push(Revocation::client(client_id));
        }
        let mut revoked = Vec::with_capacity(wanted.len());
        for mut revocation in wanted {
            if let Some(issuer) = &args.issuer {
                revocation = revocation.issuer(issuer.clone());
            }
            let done = self
                .revocations
                .revoke(revocation.requested_by(caller.subject()))
                .await
                .map_err(|e| match e {
                    RevokeError::Invalid(why) => ErrorData::invalid_params(why, None),
                    other => ErrorData::internal_error(other.to_string(), None),
                })?;
            revoked.push(serde_json::json!({
                "kind": done.revocation.kind().as_str(),
                "value": done.revocation.value(),
                "issuer": done.revocation.issuer_scope(),
                "revoked_at": done.revoked_at,
                "kept_until": done.expires_at,
            }));
        }
        Ok(serde_json::json!({ "revoked": revoked }).to_string())
    }

    #[require_permission(resource = "github", action = "read")]
    #[tool(description = "List the GitHub repositories")]
    async fn list_repositories(&self) -> Result<String, ErrorData> {
        Ok(serde_json::json!(["rmcp-guard", "network-automation"]).to_string())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Added to the embedded RBAC policy: deploying changes a device, so the
/// user confirms every deploy (no tool code: `Guarded` asks). Edit the set
/// to confirm other tools.
const CONFIRM_POLICY: &str = r#"
package mcp.authz

import rego.v1

confirm if {
	input.action == "tools/call"
	input.resource in {"deploy_template"}
}
"#;

/// Everything read from the environment, checked before anything starts.
struct Settings {
    bind: String,
    resource_server: ResourceServer,
    policy: PolicyEngine,
    policy_reload: Option<std::time::Duration>,
    header_timeout: std::time::Duration,
    downstream_audience: Option<String>,
    exchange: Option<TokenExchange>,
    secret_store: Arc<dyn SecretStore>,
    secret_template: PathTemplate,
    max_sessions_per_principal: usize,
    limits: RequestLimits,
    stateless: bool,
    request_state_ttl: std::time::Duration,
    state_keys: StateKeys,
    store: SharedStore,
    definitions: DefinitionsLock,
    /// `GUARD_TOOLS_LOCK` is set: the definitions are enforced while serving too.
    pinned: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `GUARD_CLIENT_ID` and the secret in `GUARD_CLIENT_SECRET_FILE`.
fn client_auth(needed_by: &str) -> Result<ClientAuth, String> {
    let id = env("GUARD_CLIENT_ID").ok_or_else(|| format!("GUARD_CLIENT_ID is required with {needed_by}"))?;
    let file = env("GUARD_CLIENT_SECRET_FILE")
        .ok_or_else(|| format!("GUARD_CLIENT_SECRET_FILE is required with {needed_by}"))?;
    ClientAuth::client_secret_file(id, file).map_err(|e| format!("configuration error: {e}"))
}

/// A comma-separated list (blanks around items ignored), `None` when unset.
fn env_list(name: &str) -> Option<Vec<String>> {
    env(name).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// The key sealing confirmations (`requestState`): `GUARD_REQUEST_STATE_KEY_FILE`,
/// else one generated for this process. Its id is derived from the key, so
/// replicas given the same file agree on it and a new key gets a new id.
fn state_keys() -> Result<StateKeys, String> {
    use base64::Engine;
    use sha2::Digest;

    let Some(key) = key_file("GUARD_REQUEST_STATE_KEY_FILE")? else {
        return Ok(StateKeys::generate());
    };
    let digest = sha2::Sha256::new_with_prefix(b"rmcp-guard request-state key id\0")
        .chain_update(key.as_slice())
        .finalize();
    let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9]);
    StateKeys::new(kid, zeroize::Zeroizing::new(key.to_vec())).map_err(|e| format!("GUARD_REQUEST_STATE_KEY_FILE: {e}"))
}

/// The 32-byte key in the file named by `var` (base64), if `var` is set.
fn key_file(var: &str) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, String> {
    use base64::Engine;
    use zeroize::Zeroizing;

    let Some(path) = env(var) else {
        return Ok(None);
    };
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| format!("{var}: cannot read {path}: {e}"))?);
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim()))
        .map(Zeroizing::new)
        .ok()
        .and_then(|key| <[u8; 32]>::try_from(key.as_slice()).ok())
        .ok_or(format!(
            "{var} must hold 32 bytes in base64 (`openssl rand -base64 32`)"
        ))?;
    Ok(Some(Zeroizing::new(key)))
}

/// DPoP: `GUARD_DPOP` (default `allowed`) and `GUARD_DPOP_NONCE_KEY_FILE`.
fn dpop_config() -> Result<DpopConfig, String> {
    let mode: DpopMode = match env("GUARD_DPOP") {
        None => DpopMode::Allowed,
        Some(mode) => mode
            .parse()
            .map_err(|_| format!("GUARD_DPOP must be off, allowed or required: {mode}"))?,
    };
    let mut config = match mode {
        DpopMode::Off => DpopConfig::off(),
        DpopMode::Required => DpopConfig::required(),
        _ => DpopConfig::allowed(),
    };
    if let Some(key) = key_file("GUARD_DPOP_NONCE_KEY_FILE")? {
        config = config.nonces(DpopNonces::with_key(*key));
    }
    Ok(config)
}

/// Where the state every replica must agree on lives: `GUARD_REDIS_URL`
/// (with `GUARD_REDIS_PREFIX`, `GUARD_REDIS_TIMEOUT_MS`), else this
/// process's memory. `resource` is the canonical resource URI: the default
/// key prefix names it, so replicas of one server share their keys and two
/// servers sharing a Redis never do.
fn shared_store(resource: &str) -> Result<SharedStore, String> {
    let Some(url) = env("GUARD_REDIS_URL") else {
        for name in ["GUARD_REDIS_PREFIX", "GUARD_REDIS_TIMEOUT_MS"] {
            if env(name).is_some() {
                return Err(format!("{name} needs GUARD_REDIS_URL"));
            }
        }
        return Ok(SharedStore::memory());
    };
    let prefix = env("GUARD_REDIS_PREFIX").unwrap_or_else(|| format!("rmcp-guard:{resource}:"));
    let mut config = RedisConfig::new(url).key_prefix(prefix);
    if let Some(ms) = env("GUARD_REDIS_TIMEOUT_MS") {
        match ms.parse::<u64>() {
            Ok(n @ 1..=10_000) => config = config.timeout(std::time::Duration::from_millis(n)),
            _ => return Err(format!("GUARD_REDIS_TIMEOUT_MS is not a number from 1 to 10000: {ms}")),
        }
    }
    // The error names the server without its password.
    SharedStore::redis(config).map_err(|e| format!("GUARD_REDIS_URL: {e}"))
}

/// The lock of the definitions this server lists.
fn definitions_lock() -> DefinitionsLock {
    DefinitionsLock::new(&Tools::tool_router().list_all(), &[], &[])
}

async fn settings() -> Result<Settings, String> {
    // What this server tells the model about its tools is checked before it
    // serves: a poisoned definition (hidden instructions, local secrets,
    // rules for other tools...) refuses to start (rmcp_guard::integrity).
    let warnings = ScanPolicy::default()
        .check(&Tools::tool_router().list_all())
        .map_err(|refused| refused.to_string())?;
    for finding in warnings {
        tracing::warn!(tool = %finding.tool, rule = %finding.rule, "tool definition finding");
    }
    // Against rug pulls: the definitions served are the ones reviewed and pinned.
    let definitions = definitions_lock();
    let pinned = env("GUARD_TOOLS_LOCK").is_some();
    if let Some(path) = env("GUARD_TOOLS_LOCK") {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("GUARD_TOOLS_LOCK: cannot read {path}: {e}"))?;
        let pinned = DefinitionsLock::parse(&text).map_err(|e| format!("GUARD_TOOLS_LOCK: {path}: {e}"))?;
        pinned.verify(&definitions).map_err(|e| {
            format!("GUARD_TOOLS_LOCK: {e} (review them, then `secure_server --write-tools-lock {path}`)")
        })?;
    }
    let bind = env("GUARD_BIND").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    bind.parse::<std::net::SocketAddr>()
        .map_err(|_| format!("GUARD_BIND is not a socket address: {bind}"))?;
    let max_sessions_per_principal = match env("GUARD_MAX_SESSIONS_PER_PRINCIPAL") {
        None => rmcp_guard::session::DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "GUARD_MAX_SESSIONS_PER_PRINCIPAL is not a positive number: {n}"
                ));
            }
        },
    };
    let resource = env("GUARD_RESOURCE").unwrap_or_else(|| format!("http://{bind}/mcp"));
    let issuer_url = env("GUARD_ISSUER").ok_or("GUARD_ISSUER is required: the URL of the trusted issuer")?;
    let issuer = match (env("GUARD_INTROSPECTION_URL"), env("GUARD_JWKS_URI")) {
        (Some(endpoint), _) => {
            Issuer::introspection(issuer_url.clone(), endpoint, client_auth("GUARD_INTROSPECTION_URL")?)
        }
        (None, Some(jwks)) => Issuer::with_jwks_uri(issuer_url.clone(), jwks),
        (None, None) => Issuer::discover(issuer_url.clone()),
    };
    let downstream_audience = env("GUARD_DOWNSTREAM_AUDIENCE");
    let exchange = match &downstream_audience {
        None => None,
        Some(_) => {
            let client = client_auth("GUARD_DOWNSTREAM_AUDIENCE")?;
            let builder = match env("GUARD_TOKEN_ENDPOINT") {
                Some(endpoint) => TokenExchange::builder(endpoint, client),
                None => TokenExchange::discover(&issuer_url, client)
                    .await
                    .map_err(|e| format!("{e} (or set GUARD_TOKEN_ENDPOINT)"))?,
            };
            // A DPoP-bound caller's exchange proves this server's own key, where the
            // authorization server takes DPoP: the downstream token is bound to it.
            let signer = DpopSigner::generate().map_err(|e| format!("configuration error: {e}"))?;
            Some(
                builder
                    .dpop(signer)
                    .build()
                    .map_err(|e| format!("configuration error: {e}"))?,
            )
        }
    };
    let scopes = env("GUARD_REQUIRED_SCOPES").unwrap_or_else(|| "mcp:tools".to_owned());
    let mut builder = ResourceServer::builder(resource.clone(), issuer)
        .required_scopes(scopes.split_whitespace())
        .token_rules(
            TokenRules::default()
                .groups_claim(env("GUARD_GROUPS_CLAIM").unwrap_or_else(|| "groups".to_owned()))
                .tenant_claim(env("GUARD_TENANT_CLAIM").unwrap_or_else(|| "tenant".to_owned())),
        )
        .resource_name("rmcp-guard secure_server example")
        .dpop(dpop_config()?);
    if let Some(audience) = env("GUARD_AUDIENCE") {
        builder = builder.audiences([audience]);
    }
    // Behind a load balancer: the names it (and its health checks) send.
    let mut hosts = HostPolicy::default();
    if let Some(allowed) = env_list("GUARD_ALLOWED_HOSTS") {
        hosts = hosts.hosts(allowed);
    }
    if let Some(allowed) = env_list("GUARD_ALLOWED_ORIGINS") {
        hosts = hosts.origins(allowed);
    }
    builder = builder.hosts(hosts);
    let resource_server = builder.build().map_err(|e| format!("configuration error: {e}"))?;
    let policy = match env("GUARD_POLICY") {
        Some(path) => PolicyEngine::from_path(&path),
        None => PolicyEngine::rbac_example_builder().and_then(|b| b.module("confirm.rego", CONFIRM_POLICY).build()),
    }
    .map_err(|e| format!("policy error: {e}"))?;
    let policy_reload = match env("GUARD_POLICY_RELOAD_SECS") {
        None => None,
        Some(secs) => match secs.parse::<u64>() {
            Ok(0) => None,
            Ok(n) => Some(std::time::Duration::from_secs(n)),
            Err(_) => return Err(format!("GUARD_POLICY_RELOAD_SECS is not a number: {secs}")),
        },
    };
    let header_timeout = match env("GUARD_HEADER_TIMEOUT_SECS") {
        None => std::time::Duration::from_secs(10),
        Some(secs) => match secs.parse::<u64>() {
            Ok(n) if n > 0 => std::time::Duration::from_secs(n),
            _ => return Err(format!("GUARD_HEADER_TIMEOUT_SECS is not a positive number: {secs}")),
        },
    };
    let secret_store: Arc<dyn SecretStore> = match VaultStoreBuilder::from_env().map_err(|e| format!("vault: {e}"))? {
        Some(vault) => Arc::new(vault.build().await.map_err(|e| format!("vault: {e}"))?),
        // No Vault configured: demo credentials in memory, for two tenants.
        None => Arc::new(
            MemoryStore::new()
                .with(
                    "mcp/acme/catalyst-center",
                    [("username", "acme-netops"), ("password", "demo-1")],
                )
                .with(
                    "mcp/acme/servicenow",
                    [("username", "acme-itsm"), ("password", "demo-2")],
                )
                .with(
                    "mcp/globex/catalyst-center",
                    [("username", "globex-netops"), ("password", "demo-3")],
                )
                .with(
                    "mcp/globex/servicenow",
                    [("username", "globex-itsm"), ("password", "demo-4")],
                ),
        ),
    };
    let secret_template = PathTemplate::parse(&env("GUARD_SECRET_TEMPLATE").unwrap_or_else(|| DEFAULT_TEMPLATE.into()))
        .map_err(|e| format!("GUARD_SECRET_TEMPLATE: {e}"))?;
    let mut limits = RequestLimits::default();
    if let Some(rate) = env("GUARD_RATE_LIMIT") {
        let rate: Rate = rate.parse().map_err(|e| format!("GUARD_RATE_LIMIT: {e}"))?;
        // A burst of the rate's count: `100/min` allows 100 at once.
        limits = limits.rate(rate).burst(rate.count());
    }
    let stateless = match env("GUARD_STATELESS").as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => return Err(format!("GUARD_STATELESS is not 1, true, 0 or false: {other}")),
    };
    let request_state_ttl = match env("GUARD_REQUEST_STATE_TTL_SECS") {
        None => std::time::Duration::from_secs(300),
        Some(secs) => match secs.parse::<u64>() {
            Ok(n) if n > 0 => std::time::Duration::from_secs(n),
            _ => return Err(format!("GUARD_REQUEST_STATE_TTL_SECS is not a positive number: {secs}")),
        },
    };
    let state_keys = state_keys()?;
    let store = shared_store(&resource)?;
    Ok(Settings {
        state_keys,
        store,
        stateless,
        request_state_ttl,
        bind,
        resource_server,
        policy,
        policy_reload,
        header_timeout,
        downstream_audience,
        exchange,
        secret_store,
        secret_template,
        max_sessions_per_principal,
        limits,
        definitions,
        pinned,
    })
}

/// Ctrl-C, or SIGTERM (what a container runtime sends to stop a replica):
/// requests in flight finish (at most 10 s), then the process exits.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    // `--write-tools-lock PATH`: pin the reviewed definitions and exit.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [flag, path] if flag == "--write-tools-lock" => {
            return match std::fs::write(path, definitions_lock().to_json()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("secure_server: cannot write {path}: {e}");
                    ExitCode::from(2)
                }
            };
        }
        _ => {
            eprintln!("usage: secure_server [--write-tools-lock PATH] (configured from GUARD_* variables)");
            return ExitCode::from(2);
        }
    }
    // Telemetry first: the guard's instruments are created at their first
    // record, from the meter provider installed then. Dropped on every way
    // out of `main`, it flushes what is left to export.
    let telemetry = match telemetry::Telemetry::from_env().await {
        Ok(t) => t,
        Err(message) => {
            eprintln!("secure_server: {message}");
            return ExitCode::from(2);
        }
    };
    {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let logs = tracing_subscriber::fmt::layer()
            .with_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
        tracing_subscriber::registry()
            .with(logs)
            .with(telemetry.spans_layer())
            .init();
    }
    let settings = match settings().await {
        Ok(s) => s,
        Err(message) => {
            eprintln!("secure_server: {message}");
            return ExitCode::from(2);
        }
    };
    let rs = settings.resource_server;
    if let Err(e) = rs.warm_up().await {
        // Not fatal: the issuer may come up later; requests get 503 until then.
        tracing::warn!("signing keys not available yet: {e}");
    }

    let policy = settings.policy;
    let _reloader = settings.policy_reload.map(|every| policy.spawn_reload_every(every));
    // Every credential read is a policy decision too (action `secrets/read`,
    // resource = the service).
    let credentials = Credentials::builder(settings.secret_store)
        .template(settings.secret_template)
        .authorizer(policy.clone())
        .build();
    // Metadata, bearer auth, session binding, step-up 403, rmcp, the policy
    // on every call, read and listing (and the user's confirmation where it
    // asks for one), then the tools.
    // Where the state replicas share lives (limits, sessions, confirmations,
    // revocations): this process's memory, or the Redis every replica
    // shares (`GUARD_REDIS_URL`). `revoke` revokes in the same store the
    // guard checks.
    let revocations = settings.store.revocations();
    let mut guard = Guard::new(rs.clone())
        .shared_store(settings.store)
        .policy(policy.clone())
        .credentials(credentials)
        // Tool results leave without the credential values the call read
        // (the default); account names may be shown.
        .output(OutputPolicy::default().public_field("username"))
        .limits(settings.limits)
        // Replicas seal with the same key (`GUARD_REQUEST_STATE_KEY_FILE`).
        .request_state(RequestStateSealer::new(settings.state_keys).ttl(settings.request_state_ttl));
    // The digest is published either way; with `GUARD_TOOLS_LOCK` a tool
    // whose definition drifts while serving is hidden and refused too.
    guard = if settings.pinned {
        guard.pin_definitions(settings.definitions)
    } else {
        guard.definitions_lock(&settings.definitions)
    };
    guard = if settings.stateless {
        guard.stateless()
    } else {
        guard.session_binding(
            rmcp_guard::session::SessionBindingLayer::default()
                .max_sessions_per_principal(settings.max_sessions_per_principal),
        )
    };
    if let Some(exchange) = settings.exchange {
        guard = guard.exchange(exchange);
    }
    let audience = settings.downstream_audience.clone();
    let app = guard.router(move || Ok(Tools::new(audience.clone(), revocations.clone())));

    let listener = match tokio::net::TcpListener::bind(&settings.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("secure_server: cannot listen on {}: {e}", settings.bind);
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        resource = rs.resource(),
        metadata = rs.metadata_url(),
        policy = %policy.version(),
        "serving"
    );
    if let Err(e) = rmcp_guard::serve(listener, app)
        .header_read_timeout(settings.header_timeout)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        eprintln!("secure_server: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Metrics and traces: the OpenTelemetry SDK the guard records through,
/// installed before anything records. With neither `GUARD_METRICS_BIND` nor
/// `GUARD_OTLP_ENDPOINT` no SDK is installed and the guard's instruments are
/// no-ops.
mod telemetry {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use rmcp_guard::telemetry::trace::UNSAMPLED_TARGET;
    use sha2::{Digest, Sha256};
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    use super::env;

    /// Whose spans are exported: the guard's span tree (`rmcp_guard.request`
    /// and what runs under it) and this program's. Not rmcp's own spans, nor
    /// the HTTP stack's, nor the exporters' (no telemetry about sending
    /// telemetry): each exported span costs CPU on every request.
    const TRACED: [&str; 2] = ["rmcp_guard", "secure_server"];

    /// The installed providers; dropping it flushes and shuts them down.
    pub(crate) struct Telemetry {
        meters: Option<SdkMeterProvider>,
        tracer: Option<SdkTracerProvider>,
    }

    impl Telemetry {
        /// Read `GUARD_METRICS_BIND`, `GUARD_METRICS_TOKEN_FILE` and
        /// `GUARD_OTLP_ENDPOINT`, install the global providers and the W3C
        /// `traceparent` propagator, and start serving `/metrics`.
        pub(crate) async fn from_env() -> Result<Telemetry, String> {
            let scrape = scrape_settings()?;
            let otlp = match env("GUARD_OTLP_ENDPOINT") {
                None => None,
                Some(endpoint) => match url::Url::parse(&endpoint) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => {
                        Some(endpoint.trim_end_matches('/').to_owned())
                    }
                    _ => return Err(format!("GUARD_OTLP_ENDPOINT is not an http(s) URL: {endpoint}")),
                },
            };
            // The caller's trace continues through the guard, and on to the
            // upstreams it calls.
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            if scrape.is_none() && otlp.is_none() {
                return Ok(Telemetry {
                    meters: None,
                    tracer: None,
                });
            }
            let mut resource = Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name("rmcp-guard-secure-server");
            }
            let resource = resource.build();
            let mut meters = SdkMeterProvider::builder().with_resource(resource.clone());
            let mut tracer = None;
            if let Some((addr, token)) = scrape {
                let registry = prometheus::Registry::new();
                let exporter = opentelemetry_prometheus::exporter()
                    .with_registry(registry.clone())
                    .build()
                    .map_err(|e| format!("GUARD_METRICS_BIND: {e}"))?;
                meters = meters.with_reader(exporter);
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("GUARD_METRICS_BIND: cannot listen on {addr}: {e}"))?;
                let app = axum::Router::new()
                    .route("/metrics", axum::routing::get(metrics))
                    .with_state(Arc::new(Scrape { registry, token }));
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!("metrics endpoint stopped: {e}");
                    }
                });
            }
            if let Some(base) = otlp {
                let failed = |e: opentelemetry_otlp::ExporterBuildError| format!("GUARD_OTLP_ENDPOINT: {e}");
                let metrics = MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/metrics"))
                    .build()
                    .map_err(failed)?;
                meters = meters.with_reader(PeriodicReader::builder(metrics).build());
                let spans = SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/traces"))
                    .build()
                    .map_err(failed)?;
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(spans)
                    .with_resource(resource)
                    .build();
                opentelemetry::global::set_tracer_provider(provider.clone());
                tracer = Some(provider);
            }
            let meters = meters.build();
            opentelemetry::global::set_meter_provider(meters.clone());
            Ok(Telemetry {
                meters: Some(meters),
                tracer,
            })
        }

        /// The layer sending the guard's `tracing` spans over OTLP (with
        /// `GUARD_OTLP_ENDPOINT`). Its filter is its own: `RUST_LOG` sets
        /// what is logged, not what is traced ([`TRACED`] at INFO). The
        /// standard `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` choose
        /// the sampler (default: every trace, a caller's sampled flag
        /// honoured).
        pub(crate) fn spans_layer<S>(&self) -> Option<impl Layer<S> + use<S>>
        where
            S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        {
            let tracer = self.tracer.as_ref()?.tracer("secure_server");
            // The guard's spans and this server's, except those of traces
            // the sampler did not sample (the guard opens them on
            // `UNSAMPLED_TARGET`: they are for the logs only).
            let targets = tracing_subscriber::filter::Targets::new()
                .with_targets(TRACED.map(|target| (target, tracing::level_filters::LevelFilter::INFO)))
                .with_target(UNSAMPLED_TARGET, tracing::level_filters::LevelFilter::OFF);
            // Spans only: an audit event is a log line (and a metric), not
            // a span event a second time.
            let filter = tracing_subscriber::filter::FilterExt::and(
                targets,
                tracing_subscriber::filter::filter_fn(|meta| meta.is_span()),
            );
            // No source locations, thread names or busy/idle times on each
            // span: attributes nobody reads, paid on every span.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false);
            Some(layer.with_filter(filter))
        }
    }

    impl Drop for Telemetry {
        fn drop(&mut self) {
            // The last batch of spans and the last metrics are sent now.
            if let Some(tracer) = self.tracer.take()
                && let Err(e) = tracer.shutdown()
            {
                eprintln!("secure_server: flushing spans: {e}");
            }
            if let Some(meters) = self.meters.take()
                && let Err(e) = meters.shutdown()
            {
                eprintln!("secure_server: flushing metrics: {e}");
            }
        }
    }

    /// SHA-256 of the bearer token a scrape must send.
    type TokenDigest = [u8; 32];

    /// `GUARD_METRICS_BIND` and the digest of the token in
    /// `GUARD_METRICS_TOKEN_FILE`. A scrape endpoint on an address other
    /// machines reach is never left without a token.
    fn scrape_settings() -> Result<Option<(SocketAddr, Option<TokenDigest>)>, String> {
        let Some(bind) = env("GUARD_METRICS_BIND") else {
            if env("GUARD_METRICS_TOKEN_FILE").is_some() {
                return Err("GUARD_METRICS_TOKEN_FILE needs GUARD_METRICS_BIND".to_owned());
            }
            return Ok(None);
        };
        let addr: SocketAddr = bind
            .parse()
            .map_err(|_| format!("GUARD_METRICS_BIND is not a socket address (ip:port): {bind}"))?;
        let token = match env("GUARD_METRICS_TOKEN_FILE") {
            Some(path) => {
                let text = zeroize::Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .map_err(|e| format!("GUARD_METRICS_TOKEN_FILE: cannot read {path}: {e}"))?,
                );
                let token = text.trim();
                if token.len() < 16 {
                    return Err(
                        "GUARD_METRICS_TOKEN_FILE must hold a token of 16 characters or more (`openssl rand -hex 32`)"
                            .to_owned(),
                    );
                }
                Some(Sha256::digest(token.as_bytes()).into())
            }
            None if addr.ip().is_loopback() => None,
            None => {
                return Err(format!(
                    "GUARD_METRICS_BIND {addr} is not a loopback address: set GUARD_METRICS_TOKEN_FILE \
                     (the bearer token the scraper sends)"
                ));
            }
        };
        Ok(Some((addr, token)))
    }

    struct Scrape {
        registry: prometheus::Registry,
        token: Option<TokenDigest>,
    }

    /// `GET /metrics`: the Prometheus text format.
    async fn metrics(axum::extract::State(scrape): axum::extract::State<Arc<Scrape>>, headers: HeaderMap) -> Response {
        if let Some(expected) = scrape.token {
            let sent = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // Digests compared, so the comparison's time says nothing of the token.
            if sent.map(|t| TokenDigest::from(Sha256::digest(t.trim().as_bytes()))) != Some(expected) {
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")]).into_response();
            }
        }
        let mut body = String::new();
        match prometheus::TextEncoder::new().encode_utf8(&scrape.registry.gather(), &mut body) {
            Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
            Err(e) => {
                tracing::error!("cannot encode the metrics: {e}");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}
