//! [`VaultStore`]: HashiCorp Vault / OpenBao KV (v2, or v1) through vaultrs,

mod auth;
mod exec;
mod token;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

pub use auth::{KUBERNETES_JWT_FILE, VaultAuth};

use super::secret::Fields;
use super::template::{ScopeError, check_path};
use super::{Secret, SecretError, SecretStore, SecretsConfigError, StoreFuture};
use crate::breaker::{Breaker, BreakerConfig, Upstream};
use crate::telemetry::trace;

/// Which KV secrets engine, at which mount.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kv {
    /// KV version 2 (versioned): reads `<mount>/data/<path>`. A `ttl` key in
    /// the secret's custom metadata (`30s`, `5m`, `1h` or seconds) caps how
    /// long it is cached.
    V2(String),
    /// KV version 1: reads `<mount>/<path>`; its `lease_duration` caps how
    /// long it is cached.
    V1(String),
}

/// What the store knows about its token; never the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenStatus {
    /// The TTL Vault last reported, minus the time since: `None` for a token
    /// that does not expire.
    pub ttl_remaining: Option<Duration>,
    /// Whether the token can be renewed.
    pub renewable: bool,
    /// Successful renewals since start.
    pub renewals: u64,
    /// Successful logins since start (the first one included; 0 for a static
    /// token).
    pub logins: u64,
}

/// A [`SecretStore`] reading Vault (or OpenBao) KV; see the [type docs](Self).
///
/// Not `Clone`: it owns the token-renewal task, which stops when it is
/// dropped. Share it as `Arc<VaultStore>`.
///
/// with our own token lifecycle.
///
/// ```no_run
/// use rmcp_guard::secrets::{Credentials, VaultAuth, VaultStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = VaultStore::builder("https://vault.internal:8200", VaultAuth::approle(
///     "4b1e…-role-id",
///     "/run/secrets/vault-secret-id", // chmod 0400
/// ))
/// .kv2("secret") // the default
/// .build()
/// .await?;
/// let credentials = Credentials::builder(store).build();
/// # Ok(()) }
/// ```
///
/// Vault when the environment names one, demo values otherwise (the
/// `secure_server` example's wiring):
///
/// ```no_run
/// use std::sync::Arc;
/// use rmcp_guard::secrets::{
///     Credentials, DEFAULT_TEMPLATE, MemoryStore, PathTemplate, SecretStore, VaultStoreBuilder,
/// };
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // VAULT_ADDR + (VAULT_TOKEN | VAULT_TOKEN_FILE | VAULT_ROLE_ID + VAULT_SECRET_ID_FILE | ...)
/// let store: Arc<dyn SecretStore> = match VaultStoreBuilder::from_env()? {
///     Some(vault) => Arc::new(vault.build().await?),
///     None => Arc::new(
///         MemoryStore::new()
///             .with("mcp/acme/catalyst-center", [("username", "acme-netops"), ("password", "demo")]),
///     ),
/// };
/// let template = std::env::var("GUARD_SECRET_TEMPLATE").unwrap_or_else(|_| DEFAULT_TEMPLATE.into());
/// let credentials = Credentials::builder(store)
///     .template(PathTemplate::parse(&template)?)
///     .build();
/// // let app = router.layer(credentials.layer());
/// # Ok(()) }
/// ```
///
/// # Token lifecycle
///
/// vaultrs sends whatever token its client holds; renewing and replacing it is
/// ours. A background task, owned by the store and aborted when it is dropped:
///
/// - looks the token up at start (`auth/token/lookup-self`): TTL, renewable;
/// - renews it at about 2/3 of its TTL (`renew-self`);
/// - logs in again (AppRole, Kubernetes, JWT, or re-reads a token file) when
///   renewal fails, when the token nears its max TTL, or when a read is
///   refused and `lookup-self` shows the token itself is dead (revoked). The
///   read is then retried once. A static token cannot be replaced: reads fail
///   closed with [`SecretError::AuthFailed`].
///
/// Logins are single-flight and swap a fresh client in (vaultrs changes a
/// token only through `&mut`); reads in flight finish with the old one.
///
/// # Errors
///
/// Vault's answers map to [`SecretError`] kinds: connection failures, timeouts
/// and 5xx to `Unreachable`, 503 "sealed" to `Sealed`, 403 to
/// `PermissionDenied` (or `AuthFailed` when the token is dead and cannot be
/// replaced), 404 to `NotFound`. Vault's error text goes to `debug` logs of
/// vaultrs only; our errors and logs carry the kind and the path.
///
/// Reads and token lookups are sent through rustify with vaultrs'
/// middleware (so that each carries the caller's W3C trace context, feature
/// `telemetry`) and log nothing of Vault's own; logins and renewals go
/// through vaultrs, which logs every Vault error response at `ERROR` on the
/// `vaultrs` target; the text is Vault's message (e.g. "permission
/// denied"), never a value or a token. Filter it with `vaultrs=off` if it is
/// noise: our own `warn!`/`debug!` and the audit event say the same thing.
///
/// # What is and is not zeroized
///
/// Values are moved out of the parsed response into zeroizing [`Secret`]
/// fields, and our copies of the token and `secret_id` are zeroizing. The HTTP
/// response buffers inside reqwest/vaultrs, and the token string inside
/// vaultrs' client, are not: Rust cannot reach them.
pub struct VaultStore {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    conn: Connector,
    client: RwLock<Arc<VaultClient>>,
    generation: AtomicU64,
    login_lock: tokio::sync::Mutex<()>,
    state: Mutex<token::State>,
    wake: tokio::sync::Notify,
    /// Opened by reads that got no answer, a 5xx or a sealed Vault; see
    /// [`crate::breaker`].
    breaker: Breaker,
}

/// Settings and credentials: what it takes to make a client with a token.
struct Connector {
    config: Config,
    auth: VaultAuth,
}

#[derive(Clone)]
struct Config {
    address: String,
    kv: Kv,
    timeout: Duration,
    namespace: Option<String>,
    ca_certs: Vec<String>,
    breaker: BreakerConfig,
}

impl VaultStore {
    /// Start configuring a store for the Vault at `address` (https, or http
    /// to a loopback address for development).
    pub fn builder(address: impl Into<String>, auth: VaultAuth) -> VaultStoreBuilder {
        VaultStoreBuilder {
            config: Config {
                address: address.into(),
                kv: Kv::V2("secret".into()),
                timeout: Duration::from_secs(5),
                namespace: None,
                ca_certs: Vec::new(),
                breaker: BreakerConfig::default(),
            },
            auth,
        }
    }

    /// What the store knows about its token (for health checks and tests).
    pub fn token_status(&self) -> TokenStatus {
        let s = self.shared.lock_state();
        TokenStatus {
            ttl_remaining: s.ttl.map(|ttl| ttl.saturating_sub(s.obtained.elapsed())),
            renewable: s.renewable,
            renewals: s.renewals,
            logins: s.logins,
        }
    }

    async fn read(&self, path: &str) -> Result<Secret, SecretError> {
        // Defence in depth: a path handed to the store directly is held to
        // the same rule as a resolved template.
        check_path(path).map_err(|reason| ScopeError::Invalid {
            placeholder: "path".into(),
            reason,
        })?;
        // A dead or sealed Vault is answered at once, not waited on (the
        // cache may still serve a stale value: `CircuitOpen` is unavailable).
        let attempt = self.shared.breaker.admit().map_err(|open| SecretError::CircuitOpen {
            retry_after_secs: open.retry_after_secs(),
        })?;
        let result = self.read_through(path).await;
        attempt.settle(!matches!(result, Err(SecretError::Unreachable | SecretError::Sealed)));
        result
    }

    /// One read, logging in again once if Vault refuses the token.
    async fn read_through(&self, path: &str) -> Result<Secret, SecretError> {
        let shared = &self.shared;
        let (client, generation) = shared.current();
        match shared.read_with(&client, path).await {
            Err(Forbidden) => {}
            Ok(r) => return r,
        }
        // 403: is it the path (a Vault policy) or our token?
        if !shared.token_is_dead(&client).await? {
            return Err(SecretError::PermissionDenied);
        }
        if !shared.conn.auth.can_login() {
            tracing::warn!("vault token rejected and cannot be replaced (static token)");
            return Err(SecretError::AuthFailed);
        }
        shared.relogin(generation).await?;
        let (client, _) = shared.current();
        match shared.read_with(&client, path).await {
            Err(Forbidden) => Err(SecretError::PermissionDenied),
            Ok(r) => r,
        }
    }
}

impl SecretStore for VaultStore {
    fn get<'a>(&'a self, path: &'a str) -> StoreFuture<'a> {
        self.read(path).boxed()
    }
}

impl Drop for VaultStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.shared.conn.config.address)
            .field("kv", &self.shared.conn.config.kv)
            .field("auth", &self.shared.conn.auth)
            .field("token", &self.token_status())
            .finish()
    }
}

impl Connector {
    fn client_with(&self, token: &str) -> Result<VaultClient, SecretsConfigError> {
        let c = &self.config;
        let mut b = VaultClientSettingsBuilder::default();
        // Explicit, so that neither VAULT_TOKEN nor VAULT_SKIP_VERIFY in the
        // environment changes what this client sends or trusts.
        b.address(&c.address)
            .token(token)
            .verify(true)
            .timeout(Some(c.timeout))
            .ca_certs(c.ca_certs.clone())
            .namespace(c.namespace.clone());
        let settings = b.build().map_err(|e| SecretsConfigError::Client(e.to_string()))?;
        VaultClient::new(settings).map_err(|e| SecretsConfigError::Client(e.to_string()))
    }

    fn client_or_internal(&self, token: &str) -> Result<VaultClient, SecretError> {
        self.client_with(token).map_err(|e| {
            tracing::error!(error = %e, "cannot build the Vault client");
            SecretError::Internal
        })
    }
}

/// A 403 on a read, to be told apart (policy or dead token) by the caller.
struct Forbidden;

impl Shared {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, token::State> {
        // Plain data, updated field by field: consistent even if poisoned.
        crate::cache::lock(&self.state)
    }

    fn current(&self) -> (Arc<VaultClient>, u64) {
        let client = Arc::clone(&crate::cache::read(&self.client));
        (client, self.generation.load(Ordering::Acquire))
    }

    async fn read_with(&self, client: &VaultClient, path: &str) -> Result<Result<Secret, SecretError>, Forbidden> {
        let call = trace::Call::start(trace::Fetch::VaultRead, &self.conn.config.address);
        let outcome = call
            .run(async {
                match &self.conn.config.kv {
                    Kv::V2(mount) => read_kv2(client, mount, path).await,
                    Kv::V1(mount) => read_kv1(client, mount, path).await,
                }
            })
            .await;
        call.finish(answered(&outcome));
        match outcome {
            Err(e) if is_forbidden(&e) => Err(Forbidden),
            Err(e) => Ok(Err(classify(&e))),
            Ok(r) => Ok(r),
        }
    }

    /// Whether Vault refuses our token itself (revoked, expired).
    async fn token_is_dead(&self, client: &VaultClient) -> Result<bool, SecretError> {
        let call = trace::Call::start(trace::Fetch::VaultLookup, &self.conn.config.address);
        let looked_up = call.run(lookup_self(client)).await;
        call.finish(answered(&looked_up));
        match looked_up {
            Ok(_) => Ok(false),
            Err(e) if is_forbidden(&e) => Ok(true),
            Err(e) => Err(classify(&e)),
        }
    }
}

async fn read_kv2(client: &VaultClient, mount: &str, path: &str) -> Result<Result<Secret, SecretError>, ClientError> {
    let endpoint = match vaultrs::api::kv2::requests::ReadSecretRequest::builder()
        .mount(mount)
        .path(path)
        .build()
    {
        Ok(e) => e,
        Err(_) => return Ok(Err(SecretError::Internal)),
    };
    let resp = exec::exec_with_result(client, endpoint).await?;
    if resp.data.is_null() {
        // A deleted or destroyed version.
        return Ok(Err(SecretError::NotFound));
    }
    let Ok(Fields(fields)) = serde_json::from_value::<Fields>(resp.data) else {
        return Ok(Err(SecretError::Malformed));
    };
    let mut secret = Secret::from_map(fields).with_version(resp.metadata.version);
    if let Some(ttl) = resp
        .metadata
        .custom_metadata
        .as_ref()
        .and_then(|m| m.get("ttl"))
        .and_then(|t| parse_ttl(t))
    {
        secret = secret.with_lease(ttl);
    }
    Ok(Ok(secret))
}

async fn read_kv1(client: &VaultClient, mount: &str, path: &str) -> Result<Result<Secret, SecretError>, ClientError> {
    let endpoint = match vaultrs::api::kv1::requests::GetSecretRequest::builder()
        .mount(mount)
        .path(path)
        .build()
    {
        Ok(e) => e,
        Err(_) => return Ok(Err(SecretError::Internal)),
    };
    let resp = exec::exec_with_no_result(client, endpoint).await?;
    let Ok(Fields(fields)) = serde_json::from_value::<Fields>(resp.data) else {
        return Ok(Err(SecretError::Malformed));
    };
    let mut secret = Secret::from_map(fields);
    if let Ok(lease) = u64::try_from(resp.lease_duration)
        && lease > 0
    {
        secret = secret.with_lease(Duration::from_secs(lease));
    }
    Ok(Ok(secret))
}

/// `lookup-self` of the client's token, with the trace context.
async fn lookup_self(client: &VaultClient) -> Result<vaultrs::api::token::responses::LookupTokenResponse, ClientError> {
    exec::exec_with_result(client, vaultrs::api::token::requests::LookupTokenSelfRequest {}).await
}

/// Whether Vault gave an answer (a refusal is one), for the upstream span
/// and metric: not when it gave none, a 5xx or "sealed".
fn answered<T>(result: &Result<T, ClientError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => !matches!(classify(e), SecretError::Unreachable | SecretError::Sealed),
    }
}

/// `30s`, `5m`, `1h`, `2d` or plain seconds.
fn parse_ttl(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The HTTP status of a Vault error, and whether its text says "sealed".
fn status_of(e: &ClientError) -> Option<(u16, bool)> {
    match e {
        ClientError::APIError { code, errors } => Some((*code, errors.iter().any(|m| m.contains("sealed")))),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, content },
        } => Some((*code, content.as_deref().is_some_and(|c| c.contains("sealed")))),
        _ => None,
    }
}

fn is_forbidden(e: &ClientError) -> bool {
    matches!(status_of(e), Some((401 | 403, _)))
}

/// The kind of a failed read or lookup.
fn classify(e: &ClientError) -> SecretError {
    use rustify::errors::ClientError as Http;
    match status_of(e) {
        Some((503, true)) => SecretError::Sealed,
        Some((401 | 403, _)) => SecretError::PermissionDenied,
        Some((404, _)) => SecretError::NotFound,
        Some((412 | 429, _)) => SecretError::Unreachable,
        Some((code, _)) if code >= 500 => SecretError::Unreachable,
        Some(_) => SecretError::Malformed,
        None => match e {
            ClientError::RestClientError {
                source: Http::RequestError { .. } | Http::ResponseError { .. },
            } => SecretError::Unreachable,
            ClientError::ResponseEmptyError
            | ClientError::ResponseDataEmptyError
            | ClientError::JsonParseError { .. }
            | ClientError::RestClientError { .. } => SecretError::Malformed,
            _ => SecretError::Internal,
        },
    }
}

/// The kind of a failed login: a refusal is `AuthFailed`.
fn classify_login(e: &ClientError) -> SecretError {
    match classify(e) {
        SecretError::PermissionDenied | SecretError::NotFound | SecretError::Malformed => SecretError::AuthFailed,
        other => other,
    }
}

/// Configures a [`VaultStore`]; from [`VaultStore::builder`].
#[must_use]
pub struct VaultStoreBuilder {
    config: Config,
    auth: VaultAuth,
}

impl VaultStoreBuilder {
    /// A builder from the environment, or `None` when `VAULT_ADDR` is unset:
    /// `VAULT_ADDR`, the auth method of [`VaultAuth::from_env`],
    /// `VAULT_KV_MOUNT` (KV v2 mount, default `secret`), `VAULT_NAMESPACE`,
    /// `VAULT_CACERT`.
    pub fn from_env() -> Result<Option<Self>, SecretsConfigError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(address) = var("VAULT_ADDR") else {
            return Ok(None);
        };
        let mut b = VaultStore::builder(address, VaultAuth::from_env()?);
        if let Some(mount) = var("VAULT_KV_MOUNT") {
            b = b.kv2(mount);
        }
        if let Some(ns) = var("VAULT_NAMESPACE") {
            b = b.namespace(ns);
        }
        if let Some(ca) = var("VAULT_CACERT") {
            b = b.ca_cert(ca);
        }
        Ok(Some(b))
    }

    /// Read KV version 2 at `mount`.
    ///
    /// Defaults to `kv2("secret")`.
    pub fn kv2(mut self, mount: impl Into<String>) -> Self {
        self.config.kv = Kv::V2(mount.into());
        self
    }

    /// Read KV version 1 at `mount` instead.
    ///
    /// Defaults to KV v2 at `secret`.
    pub fn kv1(mut self, mount: impl Into<String>) -> Self {
        self.config.kv = Kv::V1(mount.into());
        self
    }

    /// Timeout of each Vault request.
    ///
    /// Defaults to `5s`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The Vault server's circuit breaker: after consecutive reads that got
    /// no answer, a timeout, a 5xx or "sealed", reads fail at once with
    /// [`SecretError::CircuitOpen`] (a cached value inside its stale-if-error
    /// window is still served) until a probe succeeds. Defaults to
    /// [`BreakerConfig::default`].
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.config.breaker = breaker;
        self
    }

    /// Vault Enterprise / OpenBao namespace.
    ///
    /// Defaults to none.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = Some(namespace.into());
        self
    }

    /// Trust this PEM CA bundle for the Vault server (in addition to the
    /// system roots).
    ///
    /// Defaults to none.
    pub fn ca_cert(mut self, path: impl Into<String>) -> Self {
        self.config.ca_certs.push(path.into());
        self
    }

    /// Check the settings and files, obtain and look up the token, and start
    /// the renewal task. Needs a Tokio runtime.
    pub async fn build(self) -> Result<VaultStore, SecretsConfigError> {
        check_address(&self.config.address)?;
        self.config.breaker.check().map_err(SecretsConfigError::Breaker)?;
        self.auth.check_files()?;
        let conn = Connector {
            config: self.config,
            auth: self.auth,
        };
        // Fail here on an unusable client configuration (CA file, ...).
        conn.client_with("")?;
        let (client, lookup) = conn.fresh().await.map_err(SecretsConfigError::Connect)?;
        let logins = u64::from(conn.auth.can_login());
        let breaker = Breaker::new(
            Upstream::Vault,
            conn.config.address.clone(),
            conn.config.breaker.clone(),
        );
        let shared = Arc::new(Shared {
            conn,
            client: RwLock::new(Arc::new(client)),
            generation: AtomicU64::new(0),
            login_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(token::State::from_lookup(&lookup, logins)),
            wake: tokio::sync::Notify::new(),
            breaker,
        });
        let task = tokio::spawn(token::run(Arc::clone(&shared)));
        Ok(VaultStore { shared, task })
    }
}

impl fmt::Debug for VaultStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStoreBuilder")
            .field("address", &self.config.address)
            .field("kv", &self.config.kv)
            .field("timeout", &self.config.timeout)
            .field("namespace", &self.config.namespace)
            .field("auth", &self.auth)
            .finish()
    }
}

/// https, or http to a loopback host.
fn check_address(address: &str) -> Result<(), SecretsConfigError> {
    let bad = |reason| SecretsConfigError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    let url = url::Url::parse(address).map_err(|_| bad("not a URL"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(bad("must be https (http is allowed only for loopback)"))
            }
        }
        _ => Err(bad("must be https (http is allowed only for loopback)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_must_be_https_unless_loopback() {
        assert!(check_address("https://vault.example:8200").is_ok());
        assert!(check_address("http://127.0.0.1:8200").is_ok());
        assert!(check_address("http://[::1]:8200").is_ok());
        assert!(check_address("http://localhost:8200").is_ok());
        assert!(check_address("http://vault.example:8200").is_err());
        assert!(check_address("ftp://127.0.0.1").is_err());
        assert!(check_address("not a url").is_err());
    }

    #[test]
    fn builder_defaults_are_pinned() {
        let b = VaultStore::builder("https://v", VaultAuth::token("t"));
        assert_eq!(b.config.kv, Kv::V2("secret".into()));
        assert_eq!(b.config.timeout, Duration::from_secs(5));
        assert_eq!(b.config.namespace, None);
        assert!(b.config.ca_certs.is_empty());
        assert_eq!(b.config.breaker, BreakerConfig::default());
        assert!(!format!("{b:?}").contains("\"t\""));
    }

    #[test]
    fn ttl_metadata_parses() {
        assert_eq!(parse_ttl("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_ttl("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_ttl("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_ttl("soon"), None);
        assert_eq!(parse_ttl("5w"), None);
    }

    #[test]
    fn vault_statuses_map_to_kinds() {
        let api = |code, msg: &str| ClientError::APIError {
            code,
            errors: vec![msg.into()],
        };
        assert_eq!(classify(&api(503, "Vault is sealed")), SecretError::Sealed);
        assert_eq!(classify(&api(503, "standby")), SecretError::Unreachable);
        assert_eq!(classify(&api(403, "permission denied")), SecretError::PermissionDenied);
        assert_eq!(classify(&api(404, "")), SecretError::NotFound);
        assert_eq!(classify(&api(500, "")), SecretError::Unreachable);
        assert_eq!(classify_login(&api(400, "invalid secret id")), SecretError::AuthFailed);
    }
}
