//! [`Credentials`]: the handle the server configures, and
//! [`CallerCredentials`], the extractor a tool takes.
//!
//! A handle binds a [`SecretStore`] to a [`PathTemplate`], a cache and an
//! optional [`SecretAuthorizer`]. The [`GuardedRouter`](crate::Guard)
//! (or `axum::Extension(credentials)` in a custom stack) puts a clone of it
//! into every HTTP request's extensions; rmcp copies the request's
//! [`http::request::Parts`] into each tool call, where [`CallerCredentials`]
//! finds it next to the [`Principal`] the bearer layer inserted.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rmcp::handler::server::common::{AsRequestContext, FromContextPart};
use tracing::Instrument as _;

use crate::Principal;
use crate::audit::AuditEvent;
use crate::error::Rejection;
use crate::telemetry::trace;

use super::cache::{Cache, CacheConfig, CacheStatus};
use super::{PathTemplate, ReadSecrets, Secret, SecretError, SecretStore};

/// The policy action of a credential read, as an authorizer sees it.
#[cfg_attr(not(feature = "policy"), allow(dead_code))] // read by the policy's `Action::ReadSecret`
pub(crate) const SECRETS_READ: &str = "secrets/read";

/// Decides whether a principal may read its credential for a service
/// (action `secrets/read`, resource = the service name).
///
/// This is the hook for the policy engine: any `Fn(&Principal, &str) -> bool`
/// is one. It runs before the path is resolved and before the cache, so a
/// denial is never served from cache. An authorizer that cannot decide (an
/// evaluation error) must return `false`.
///
/// ```
/// use rmcp_guard::secrets::{Credentials, MemoryStore};
///
/// let creds = Credentials::builder(MemoryStore::new())
///     .authorizer(|p: &rmcp_guard::Principal, service: &str| {
///         service != "prod-db" || p.groups().iter().any(|g| g == "dba")
///     })
///     .build();
/// ```
pub trait SecretAuthorizer: Send + Sync + 'static {
    /// Whether `principal` may read its credential for `service`.
    fn authorize(&self, principal: &Principal, service: &str) -> bool;
}

impl<F> SecretAuthorizer for F
where
    F: Fn(&Principal, &str) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, principal: &Principal, service: &str) -> bool {
        self(principal, service)
    }
}

/// A store, a path template, a cache and an optional authorizer: what
/// [`CallerCredentials`] reads through. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SecretStore>,
    template: PathTemplate,
    cache: Cache,
    authorizer: Option<Arc<dyn SecretAuthorizer>>,
}

impl Credentials {
    /// Start configuring a handle over `store`. Pass an `Arc<S>` to keep a
    /// handle on the store yourself.
    pub fn builder(store: impl SecretStore) -> CredentialsBuilder {
        CredentialsBuilder {
            store: Arc::new(store),
            template: PathTemplate::default(),
            cache: CacheConfig::default(),
            authorizer: None,
        }
    }

    /// `principal`'s credential for `service`: authorize, resolve the path,
    /// then read through the cache. Emits one audit event.
    ///
    /// Runs on a Tokio runtime (a cache miss is fetched in its own task, so
    /// that it completes and fills the cache even if this call is cancelled).
    pub async fn get(&self, principal: &Principal, service: &str) -> Result<Secret, SecretError> {
        let span = trace::secret_span(service);
        let (result, status) = self.read(principal, service).instrument(span.clone()).await;
        let outcome = result.as_ref().map_or_else(SecretError::code, |_| "ok");
        span.record("cache", status.as_str());
        trace::outcome(
            &span,
            outcome,
            result.as_ref().is_err_and(SecretError::is_infrastructure),
        );
        result
    }

    /// [`get`](Self::get), inside its span: the answer and how the cache
    /// gave it.
    async fn read(&self, principal: &Principal, service: &str) -> (Result<Secret, SecretError>, CacheStatus) {
        let inner = &*self.inner;
        let template = inner.template.as_str();
        let denied = inner
            .authorizer
            .as_ref()
            .is_some_and(|authorizer| !authorizer.authorize(principal, service));
        let resolved = if denied {
            Err(SecretError::Denied)
        } else {
            inner.template.resolve(principal, service).map_err(SecretError::from)
        };
        let path = match resolved {
            Ok(path) => path,
            Err(e) => {
                let result = Err(e);
                report(Some(principal), service, template, None, &result, CacheStatus::None);
                return (result, CacheStatus::None);
            }
        };
        let store = Arc::clone(&inner.store);
        let key = path.clone();
        // A miss is fetched in its own task: inside this read's span.
        let (result, status) = inner
            .cache
            .get(&path, move || {
                async move { store.get(&key).await }
                    .instrument(tracing::Span::current())
                    .boxed()
            })
            .await;
        report(Some(principal), service, template, Some(&path), &result, status);
        (result, status)
    }

    /// The path template in use.
    pub fn template(&self) -> &PathTemplate {
        &self.inner.template
    }

    /// Drop every cached value: the next lookups go to the store.
    pub fn clear_cache(&self) {
        self.inner.cache.clear();
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("template", &self.inner.template)
            .field("cache", self.inner.cache.config())
            .field("authorizer", &self.inner.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

/// The caller's credentials, as a tool parameter: an rmcp extractor holding
/// the request's [`Principal`] and the server's [`Credentials`].
///
/// Extraction fails closed with the one denial error when the request has
/// no caller, and with "not configured" when the server has no credentials.
///
/// ```
/// use rmcp::{ErrorData, handler::server::router::tool::ToolRouter, tool, tool_router};
/// use rmcp_guard::secrets::CallerCredentials;
///
/// struct Server {
///     tool_router: ToolRouter<Self>,
/// }
///
/// #[tool_router]
/// impl Server {
///     #[tool(description = "List the device templates")]
///     async fn get_all_templates(&self, credentials: CallerCredentials) -> Result<String, ErrorData> {
///         let cred = credentials.get("catalyst-center").await?; // mcp/{tenant}/catalyst-center
///         let user = cred.expose_required("username")?;
///         let _password = cred.expose_required("password")?; // log in downstream with it
///         Ok(format!("connected to Catalyst Center as {user}"))
///     }
/// }
/// # let _ = Server { tool_router: Server::tool_router() };
/// ```
#[derive(Clone, Debug)]
pub struct CallerCredentials {
    principal: Principal,
    credentials: Credentials,
    /// Where the values handed out are recorded, when an output guard
    /// watches this call.
    read: Option<ReadSecrets>,
}

impl CallerCredentials {
    /// The caller's credential for `service`: authorized, resolved from the
    /// caller's claims, read through the cache; one audit event.
    ///
    /// When the server has an output guard ([`OutputGuard`], installed by
    /// `Guard`), every value of the credential is removed from this call's
    /// result, should the tool put it there.
    ///
    /// [`OutputGuard`]: crate::integrity::OutputGuard
    pub async fn get(&self, service: &str) -> Result<Secret, Rejection> {
        let secret = self
            .credentials
            .get(&self.principal, service)
            .await
            .map_err(Rejection::from)?;
        if let Some(read) = &self.read {
            read.record(&secret);
        }
        Ok(secret)
    }

    /// Whose credentials these are.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

impl<C: AsRequestContext> FromContextPart<C> for CallerCredentials {
    fn from_context_part(context: &mut C) -> Result<Self, rmcp::ErrorData> {
        let principal = crate::extract::extension::<Principal, C>(context);
        let credentials = crate::extract::extension::<Credentials, C>(context);
        match (principal, credentials) {
            (Some(principal), Some(credentials)) => Ok(CallerCredentials {
                principal,
                credentials,
                read: crate::extract::extension::<ReadSecrets, C>(context),
            }),
            (principal, credentials) => {
                let e = if principal.is_none() {
                    SecretError::Unauthenticated
                } else {
                    SecretError::NotConfigured
                };
                let template = credentials.as_ref().map_or("-", |c| c.template().as_str());
                report(
                    principal.as_ref(),
                    "",
                    template,
                    None,
                    &Err(e.clone()),
                    CacheStatus::None,
                );
                Err(Rejection::from(e).into())
            }
        }
    }
}

fn report(
    principal: Option<&Principal>,
    service: &str,
    template: &str,
    path: Option<&str>,
    result: &Result<Secret, SecretError>,
    cache: CacheStatus,
) {
    AuditEvent::SecretAccess {
        principal,
        service,
        template,
        path,
        outcome: result.as_ref().map_or_else(SecretError::code, |_| "ok"),
        cache: cache.as_str(),
    }
    .emit();
    if let Err(e) = result {
        let path = path.unwrap_or("-");
        if e.is_infrastructure() {
            tracing::warn!(service, path, error = %e, "credential lookup failed");
        } else {
            tracing::debug!(service, path, error = %e, "credential lookup refused");
        }
    }
}

/// Configures [`Credentials`]; from [`Credentials::builder`].
#[must_use]
pub struct CredentialsBuilder {
    store: Arc<dyn SecretStore>,
    template: PathTemplate,
    cache: CacheConfig,
    authorizer: Option<Arc<dyn SecretAuthorizer>>,
}

impl CredentialsBuilder {
    /// Where a principal's credential for a service lives.
    ///
    /// Defaults to `mcp/{tenant}/{service}`.
    pub fn template(mut self, template: PathTemplate) -> Self {
        self.template = template;
        self
    }

    /// How long a value is cached (capped by the store's lease, when it gives
    /// one). `Duration::ZERO` turns caching off.
    ///
    /// Defaults to `60s`.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache.ttl = ttl;
        self
    }

    /// How many paths are cached at most (`0` counts as `1`).
    ///
    /// Defaults to `1024`.
    pub fn max_entries(mut self, max: usize) -> Self {
        self.cache.max_entries = max.max(1);
        self
    }

    /// Ask `authorizer` before every read; see [`SecretAuthorizer`].
    ///
    /// Without one, every authenticated principal may read the credentials
    /// under its own resolved path (the template is the isolation).
    ///
    /// Defaults to none.
    pub fn authorizer(mut self, authorizer: impl SecretAuthorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Settings that weaken a default, named so a reviewer sees them.
    /// Everything after this step is dangerous.
    pub fn dangerous(self) -> DangerousCredentialsBuilder {
        DangerousCredentialsBuilder { builder: self }
    }

    /// Finish.
    pub fn build(self) -> Credentials {
        Credentials {
            inner: Arc::new(Inner {
                store: self.store,
                template: self.template,
                cache: Cache::new(self.cache),
                authorizer: self.authorizer,
            }),
        }
    }
}

impl fmt::Debug for CredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsBuilder")
            .field("template", &self.template)
            .field("cache", &self.cache)
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

/// The settings of [`CredentialsBuilder::dangerous`].
#[must_use]
#[derive(Debug)]
pub struct DangerousCredentialsBuilder {
    builder: CredentialsBuilder,
}

impl DangerousCredentialsBuilder {
    /// For how long after expiry a cached value may still be served while
    /// the store is *unavailable* (unreachable, sealed, our token rejected):
    /// a credential revoked in Vault keeps working that long. Never when the
    /// store answers "not found" or "permission denied".
    ///
    /// Defaults to `0s`: fail closed as soon as the value expires.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.builder.cache.stale_if_error = window;
        self
    }

    /// Finish.
    pub fn build(self) -> Credentials {
        self.builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::MemoryStore;

    fn acme() -> Principal {
        Principal::unverified("https://idp", "alice").tenant("acme").build()
    }

    fn globex() -> Principal {
        Principal::unverified("https://idp", "bob").tenant("globex").build()
    }

    fn store() -> Arc<MemoryStore> {
        Arc::new(
            MemoryStore::new()
                .with("mcp/acme/cc", [("username", "acme-user")])
                .with("mcp/globex/cc", [("username", "globex-user")]),
        )
    }

    #[tokio::test]
    async fn tenants_see_their_own_credential_only() {
        let creds = Credentials::builder(store()).build();
        let a = creds.get(&acme(), "cc").await.unwrap();
        let g = creds.get(&globex(), "cc").await.unwrap();
        assert_eq!(a.expose("username"), Some("acme-user"));
        assert_eq!(g.expose("username"), Some("globex-user"));
    }

    #[tokio::test]
    async fn cache_hits_do_not_reach_the_store() {
        let s = store();
        let creds = Credentials::builder(Arc::clone(&s)).build();
        for _ in 0..5 {
            creds.get(&acme(), "cc").await.unwrap();
        }
        assert_eq!(s.reads(), 1);
        creds.clear_cache();
        creds.get(&acme(), "cc").await.unwrap();
        assert_eq!(s.reads(), 2);
    }

    #[tokio::test]
    async fn authorizer_denies_before_the_store() {
        let s = store();
        let creds = Credentials::builder(Arc::clone(&s))
            .authorizer(|p: &Principal, svc: &str| p.tenant() == Some("globex") && svc == "cc")
            .build();
        assert_eq!(creds.get(&acme(), "cc").await.unwrap_err(), SecretError::Denied);
        assert!(creds.get(&globex(), "cc").await.is_ok());
        assert_eq!(s.reads(), 1);
    }

    #[tokio::test]
    async fn escape_attempt_never_reaches_the_store() {
        let s = store();
        let creds = Credentials::builder(Arc::clone(&s)).build();
        let evil = Principal::unverified("i", "m").tenant("acme/../globex").build();
        assert!(matches!(creds.get(&evil, "cc").await, Err(SecretError::Scope(_))));
        assert!(matches!(
            creds.get(&acme(), "../globex/cc").await,
            Err(SecretError::Scope(_))
        ));
        assert_eq!(s.reads(), 0);
    }

    #[tokio::test]
    async fn caller_credentials_read_the_callers_own_path() {
        let read = ReadSecrets::default();
        let creds = CallerCredentials {
            principal: acme(),
            credentials: Credentials::builder(store()).build(),
            read: Some(read.clone()),
        };
        let secret = creds.get("cc").await.unwrap();
        assert_eq!(secret.expose("username"), Some("acme-user"));
        assert_eq!(creds.get("nope").await.unwrap_err(), Rejection::NotFound("credential"));
        // What was handed out is recorded for the output guard; a refusal is not.
        let recorded = read.secrets().unwrap();
        assert_eq!(recorded.len(), 1);
        assert!(recorded[0].same_values(&secret));
    }

    #[test]
    fn builder_defaults_are_pinned() {
        let b = Credentials::builder(MemoryStore::new());
        assert_eq!(b.template.as_str(), "mcp/{tenant}/{service}");
        assert_eq!(b.cache.ttl, Duration::from_secs(60));
        assert_eq!(b.cache.max_entries, 1024);
        assert_eq!(b.cache.stale_if_error, Duration::ZERO);
        assert!(b.authorizer.is_none());
    }
}
