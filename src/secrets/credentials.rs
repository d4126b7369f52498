//! [`Credentials`]: the handle tools reach through the request, and
//! [`credentials`], the one-line accessor.
//!
//! A handle binds a [`SecretStore`] to a [`PathTemplate`], a cache and an
//! optional [`SecretAuthorizer`]. [`CredentialsLayer`] puts a clone of it
//! into every HTTP request's extensions; rmcp copies the request's
//! [`http::request::Parts`] into each tool call, where [`credentials`] finds
//! it next to the [`Principal`] the bearer layer inserted.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;

use crate::Principal;
use crate::audit;

use super::cache::{Cache, CacheConfig, CacheStatus};
use super::{PathTemplate, Secret, SecretError, SecretStore};

/// The policy action of a credential read, as an authorizer sees it.
pub const SECRETS_READ: &str = "secrets/read";

/// Decides whether a principal may read its credential for a service
/// (action [`SECRETS_READ`], resource = the service name).
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
/// [`credentials`] uses. Cheap to clone (one reference count).
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
        let inner = &*self.inner;
        let template = inner.template.as_str();
        if let Some(authorizer) = &inner.authorizer
            && !authorizer.authorize(principal, service)
        {
            let e = SecretError::Denied;
            report(
                Some(principal),
                service,
                template,
                None,
                &Err(e.clone()),
                CacheStatus::None,
            );
            return Err(e);
        }
        let path = match inner.template.resolve(principal, service) {
            Ok(path) => path,
            Err(e) => {
                let e = SecretError::from(e);
                report(
                    Some(principal),
                    service,
                    template,
                    None,
                    &Err(e.clone()),
                    CacheStatus::None,
                );
                return Err(e);
            }
        };
        let store = Arc::clone(&inner.store);
        let key = path.clone();
        let (result, status) = inner
            .cache
            .get(&path, move || async move { store.get(&key).await }.boxed())
            .await;
        report(Some(principal), service, template, Some(&path), &result, status);
        result
    }

    /// The handle attached to this request by [`CredentialsLayer`].
    pub fn from_parts(parts: &http::request::Parts) -> Result<&Credentials, SecretError> {
        parts.extensions.get::<Credentials>().ok_or(SecretError::NotConfigured)
    }

    /// A layer that attaches this handle to every request.
    pub fn layer(&self) -> CredentialsLayer {
        CredentialsLayer::new(self.clone())
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

/// `principal`'s credential for `service`, from the request: the one line a
/// tool needs.
///
/// Takes the [`Principal`] (bearer layer) and the [`Credentials`]
/// ([`CredentialsLayer`]) from `parts`, and fails closed when either is
/// missing. `?` turns the error into a clear [`rmcp::ErrorData`].
///
/// ```
/// use rmcp::handler::server::tool::Extension;
/// use rmcp_guard::secrets::credentials;
///
/// async fn get_all_templates(
///     Extension(parts): Extension<http::request::Parts>,
/// ) -> Result<String, rmcp::ErrorData> {
///     let cred = credentials(&parts, "catalyst-center").await?;
///     let user = cred.expose_required("username")?;
///     let _password = cred.expose_required("password")?; // log in downstream with it
///     Ok(format!("connected to Catalyst Center as {user}"))
/// }
/// ```
pub async fn credentials(parts: &http::request::Parts, service: &str) -> Result<Secret, SecretError> {
    let principal = parts.extensions.get::<Principal>();
    let creds = parts.extensions.get::<Credentials>();
    match (principal, creds) {
        (Some(principal), Some(creds)) => creds.get(principal, service).await,
        (principal, creds) => {
            let e = if principal.is_none() {
                SecretError::Unauthenticated
            } else {
                SecretError::NotConfigured
            };
            let template = creds.map_or("-", |c| c.template().as_str());
            report(principal, service, template, None, &Err(e.clone()), CacheStatus::None);
            Err(e)
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
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    audit::secret_access(principal, service, template, path, outcome, cache.as_str());
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

    /// For how long after expiry a cached value may still be served while
    /// the store is *unavailable* (unreachable, sealed, our token rejected).
    /// Never when the store answers "not found" or "permission denied".
    /// Zero means fail closed as soon as the value expires.
    ///
    /// Defaults to `0s`.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.cache.stale_if_error = window;
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

/// Attaches a [`Credentials`] handle to every request's extensions.
///
/// rmcp copies the HTTP request's [`http::request::Parts`] into each tool
/// call, where [`credentials`] finds the handle next to the [`Principal`].
///
/// ```
/// use rmcp_guard::Principal;
/// use rmcp_guard::secrets::{Credentials, CredentialsLayer, MemoryStore, credentials};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new().with("mcp/acme/ticketing", [("token", "t0k")]);
/// let creds = Credentials::builder(store).build();
///
/// // Stand-in for the rmcp service: what a tool does with the request parts.
/// let svc = CredentialsLayer::new(creds).layer(service_fn(|req: http::Request<()>| async move {
///     let (parts, _) = req.into_parts();
///     let secret = credentials(&parts, "ticketing").await?;
///     let status = if secret.expose("token").is_some() { 200 } else { 500 };
///     Ok::<_, rmcp::ErrorData>(http::Response::builder().status(status).body(()).unwrap())
/// }));
///
/// // Stand-in for the bearer layer: a verified caller of tenant `acme`.
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Principal::unverified("https://idp", "alice").tenant("acme").build());
/// assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
/// # });
/// ```
///
/// Put it anywhere around the rmcp `StreamableHttpService` (inside or outside
/// the bearer layer). `axum::Extension(credentials)` does the same job.
#[derive(Clone, Debug)]
pub struct CredentialsLayer {
    credentials: Credentials,
}

impl CredentialsLayer {
    /// A layer that attaches `credentials`.
    pub fn new(credentials: Credentials) -> Self {
        CredentialsLayer { credentials }
    }
}

impl<S> tower_layer::Layer<S> for CredentialsLayer {
    type Service = CredentialsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CredentialsService {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// The service of [`CredentialsLayer`].
#[derive(Clone, Debug)]
pub struct CredentialsService<S> {
    inner: S,
    credentials: Credentials,
}

impl<S> CredentialsService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for CredentialsService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.credentials.clone());
        self.inner.call(req)
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
    async fn accessor_fails_closed_without_principal_or_handle() {
        let (parts, _) = http::Request::new(()).into_parts();
        assert_eq!(
            credentials(&parts, "cc").await.unwrap_err(),
            SecretError::Unauthenticated
        );
        let mut req = http::Request::new(());
        req.extensions_mut().insert(acme());
        let (parts, _) = req.into_parts();
        assert_eq!(credentials(&parts, "cc").await.unwrap_err(), SecretError::NotConfigured);
    }

    #[tokio::test]
    async fn layer_works_on_an_axum_router() {
        use tower::ServiceExt;
        async fn tool(parts: http::request::Parts) -> Result<String, rmcp::ErrorData> {
            let s = credentials(&parts, "cc").await?;
            Ok(s.expose_required("username")?.to_owned())
        }
        let creds = Credentials::builder(store()).build();
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(|parts: http::request::Parts| async move {
                    match tool(parts).await {
                        Ok(user) => (http::StatusCode::OK, user),
                        Err(e) => (http::StatusCode::FORBIDDEN, e.message.into_owned()),
                    }
                }),
            )
            .layer(creds.layer());
        let mut req = http::Request::new(axum::body::Body::empty());
        req.extensions_mut().insert(acme());
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let resp = app
            .oneshot(http::Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::FORBIDDEN);
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
