//! Session binding: an `Mcp-Session-Id` belongs to the principal that
//! created it.
//!
//! rmcp's stateful Streamable HTTP mode hands out a session id on
//! `initialize` and routes later requests by that id alone. A session id is
//! not a credential, but if one leaks (a log, a proxy, a shared machine),
//! whoever holds it could read the session's stream or inject requests into
//! it under their own token. [`SessionBindingLayer`] closes that:
//!
//! - when a response creates a session (it carries `Mcp-Session-Id`), the id
//!   is bound to the caller: issuer, [kind](crate::PrincipalKind), subject and
//!   client id. The same user through another OAuth client, or a client
//!   whose id happens to equal a user's name, is someone else;
//! - a request naming a session bound to someone else is answered **404**
//!   (as the MCP Python SDK does) and never reaches the session; so is a
//!   request naming a session this layer does not know (fail closed: an
//!   unknown binding is never assumed to be yours);
//! - a `DELETE` of another principal's session is refused the same way; a
//!   successful `DELETE` by the owner forgets the binding;
//! - a `GET` or `DELETE` without a session id is refused with **400**: on a
//!   server with sessions it would otherwise reach rmcp's stateless paths
//!   (the resumption replay of MCP 2026-07-28) without any binding.
//!
//! It sits inside [`BearerAuthLayer`](crate::oauth::BearerAuthLayer), so every request
//! on a session is still fully authenticated: an expired token does not ride
//! on the session. Stateless servers (no session ids) pass through untouched.
//! [`Guard`](crate::Guard) installs it (unless stateless).
//!
//! **Bounds.** Each principal holds at most
//! [`max_sessions_per_principal`](SessionBindingLayer::max_sessions_per_principal)
//! live sessions (16 by default). Opening one more closes that same
//! principal's session idle longest, never anyone else's: the binding is
//! forgotten (the session answers 404) and, given the
//! [`session_manager`](SessionBindingLayer::session_manager) (as
//! [`Guard`](crate::Guard) does), rmcp closes the session and frees its
//! memory. We chose eviction over a 429 because a client that lost track of
//! its sessions (a crash, a restart) then keeps working. The whole table is
//! bounded too ([`SessionBindingLayer::new`]); when it is full a new session
//! is refused with **503** and `Retry-After`: no principal's binding is ever
//! evicted to make room for another's. (A table of 1024 sessions or more is
//! sharded, and the bound holds per shard: refusals start a little before
//! the total is reached.)
//!
//! A binding is forgotten after an idle time (by default rmcp's session
//! keep-alive, 300 s), and when the principal opens a session the manager is
//! asked which of its older sessions rmcp still holds, so a session rmcp
//! dropped on its own does not count against its owner. A forgotten binding
//! makes its session answer 404, after which an MCP client starts a new
//! session.
//!
//! **Fleet.** Replicas behind one load balancer share the bindings through
//! a Redis [`SharedStore`] ([`shared`](SessionBindingLayer::shared);
//! [`Guard`](crate::Guard) passes its
//! [`shared_store`](crate::Guard::shared_store)):
//!
//! - a new session is bound in Redis before its `initialize` answer leaves
//!   (one script, one round trip): the owner's SHA-256 (issuer, kind,
//!   subject, client id; no subject is stored in clear) under the session id,
//!   expiring after the idle time plus the
//!   [`refresh_interval`](SessionBindingLayer::refresh_interval);
//! - a request naming a session this replica bound is decided by its own
//!   table (a binding never changes hands, so a local hit is safe) and costs
//!   no round trip, except one refresh per session every 30 s; a session
//!   this replica does not know is looked up in Redis (one round trip):
//!   bound to someone else or unknown, 404 as above. So a session opened on
//!   replica A is refused to every other principal on every replica;
//! - the bound of [`max_sessions_per_principal`](SessionBindingLayer::max_sessions_per_principal)
//!   holds fleet-wide: each principal has one sorted set of its sessions by
//!   last use, and the script that binds a new session evicts the idlest
//!   ones beyond the bound (never the new one) and drops their bindings, so
//!   they answer 404 on every replica. The replica holding an evicted
//!   session closes it in rmcp at once when it is the one that opened the
//!   new session, else at the session's next request (its refresh finds the
//!   binding gone; with the default interval, within 30 s of the eviction);
//! - a `DELETE` by the owner forgets the binding in Redis too; a replica
//!   restart keeps every binding (they live in Redis). A Redis that loses
//!   its data (no persistence) loses the bindings: each session then answers
//!   404 at its next refresh, and its client starts a new one.
//!
//! The binding only guarantees that nobody else can use a session. A
//! 2025-era session itself lives in the memory of the replica that opened
//! it: its owner reaching another replica passes the binding and gets rmcp's
//! own 404 there. So 2025-era clients still need sticky routing (by
//! `Mcp-Session-Id`), or stateless mode ([`Guard::stateless`](crate::Guard::stateless)),
//! where any replica answers any request.
//!
//! Fail closed: when Redis does not answer (50 ms timeout by default, or its
//! breaker is open), a new session is refused with **503** and `Retry-After`
//! (it is closed in rmcp, not served unbound), and so is a request naming a
//! session this replica does not hold; the audit event's reason is the
//! store's (`store_timeout`, `store_unavailable`, `store_circuit_open`). A
//! session this replica bound keeps serving its owner, and only its owner:
//! its binding is the creator's for good, and only its refresh waits for
//! Redis. There is no opt-out: a binding the fleet cannot check is unknown,
//! and an unknown binding is refused (as on one replica).
//!
//! Memory in Redis (measured with `MEMORY USAGE` on Redis 7.0): about 330
//! bytes per live session, the owner's sorted set included, and each
//! principal holds at most its bound of 16; every key expires (idle time
//! plus refresh interval after its last use, 330 s by default).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use rmcp_guard::session::SessionBindingLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! let service = ServiceBuilder::new().layer(SessionBindingLayer::default()).service(service_fn(
//!     |_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     },
//! ));
//! // No principal in the request: the layer is wired wrong, so it refuses.
//! let response = service
//!     .oneshot(http::Request::post("/mcp").header("mcp-session-id", "s1").body(String::new()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 404);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use rmcp::transport::streamable_http_server::session::SessionManager;
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::{Limits, Timestamp, TtlCache};
use crate::principal::{Principal, PrincipalKind};
use crate::store::SharedStore;

mod shared;

use shared::{OwnerDigest, Shared};

/// The header rmcp uses for session ids.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// How many sessions the table holds at most, all principals together:
/// 100 000 (about 5.6 GB of rmcp sessions at ~56 KiB each, were they all
/// live).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How long a binding lives without a request: rmcp's session keep-alive,
/// 300 s.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// How many live sessions one principal holds at most: 16.
pub const DEFAULT_MAX_SESSIONS_PER_PRINCIPAL: usize = 16;

/// How often a session in use refreshes its binding in a shared store: 30 s.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The longest session id looked up in a shared store: longer ones are not
/// ids any session manager here issues (rmcp's are 36-character UUIDs), and
/// are refused without a round trip.
const MAX_SHARED_SESSION_ID_LEN: usize = 256;

/// The `Retry-After` of a 503 when the table is full, in seconds.
const FULL_RETRY_AFTER_SECS: u64 = 30;

/// How long closing an evicted session in rmcp may take before we give up
/// waiting (its handle is dropped either way, which ends the session).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who owns a session: the caller's issuer, kind, subject and client id.
#[derive(PartialEq, Eq, Hash)]
struct Owner {
    issuer: String,
    kind: PrincipalKind,
    subject: String,
    client_id: Option<String>,
}

impl Owner {
    fn of(p: &Principal) -> Owner {
        Owner {
            issuer: p.issuer().to_owned(),
            kind: p.kind(),
            subject: p.subject().to_owned(),
            client_id: p.client_id().map(str::to_owned),
        }
    }

    /// Whether `p` is this owner (compares without allocating).
    fn is(&self, p: &Principal) -> bool {
        self.subject == p.subject()
            && self.issuer == p.issuer()
            && self.kind == p.kind()
            && self.client_id.as_deref() == p.client_id()
    }

    /// What the shared store keeps of this owner.
    fn digest(&self) -> OwnerDigest {
        shared::owner_digest(&self.issuer, self.kind, &self.subject, self.client_id.as_deref())
    }
}

/// A session bound in this replica's table: its owner, and when its binding
/// in the shared store was last refreshed.
#[derive(Clone)]
struct Local {
    owner: Arc<Owner>,
    refreshed: Timestamp,
}

/// What this replica's table says of a session and a caller.
#[derive(Debug, PartialEq, Eq)]
enum Here {
    /// Bound to the caller here; `refresh`: its shared binding is due for a
    /// refresh (this request does it).
    Mine { refresh: bool },
    /// Bound to someone else here.
    Theirs,
    /// Not bound here (maybe on another replica).
    Unknown,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The part of rmcp's session manager the layer uses: which sessions are
/// live, and closing one.
trait Registry: Send + Sync {
    fn live<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Vec<bool>>;
    fn close<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()>;
}

impl<M: SessionManager> Registry for M {
    fn live<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let mut live = Vec::with_capacity(ids.len());
            for id in ids {
                // An error says nothing: count the session (fail safe).
                live.push(self.has_session(&Arc::from(id.as_str())).await.unwrap_or(true));
            }
            live
        })
    }

    fn close<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = self.close_session(&Arc::from(id)).await {
                tracing::debug!(%error, "closing an evicted session");
            }
        })
    }
}

/// The settings of a [`SessionBindingLayer`].
#[derive(Clone)]
struct Settings {
    capacity: usize,
    idle: Duration,
    per_principal: usize,
    registry: Option<Arc<dyn Registry>>,
    store: SharedStore,
    refresh: Duration,
}

/// The table of session owners, each forgotten `idle` after its last
/// request, and each owner's sessions, oldest first; with a shared store,
/// their fleet-wide bindings too.
struct Bindings {
    sessions: TtlCache<String, Local>,
    owners: TtlCache<Arc<Owner>, Vec<String>>,
    shared: Option<Arc<Shared>>,
    settings: Settings,
}

/// What binding a new session did.
#[derive(Debug, PartialEq, Eq)]
enum Bind {
    /// Bound, within the principal's bound.
    Kept,
    /// Bound; the principal may now hold more than its bound.
    OverBound,
    /// Not bound: the table is full.
    Full,
}

impl Bindings {
    fn new(settings: Settings) -> Bindings {
        let limits = Limits::entries(settings.capacity);
        // A shared binding outlives the local one by up to a refresh
        // interval, never the other way round: a session in use is never
        // found missing in the store only because its refresh was skipped.
        let shared = Shared::from_store(&settings.store, settings.idle.saturating_add(settings.refresh));
        Bindings {
            sessions: TtlCache::new(limits),
            owners: TtlCache::new(limits),
            shared,
            settings,
        }
    }

    /// Whether `p` owns `session` in this replica's table (refreshing its
    /// idle time).
    fn here(&self, session: &str, p: &Principal) -> Here {
        let now = Timestamp::now();
        let until = now.saturating_add(self.settings.idle);
        let every = self.settings.refresh;
        let found = self.sessions.update(session, now, |bound, deadline| {
            bound.owner.is(p).then(|| {
                *deadline = until;
                let refresh = now >= bound.refreshed.saturating_add(every);
                if refresh {
                    bound.refreshed = now;
                }
                (bound.owner.clone(), refresh)
            })
        });
        match found {
            None => Here::Unknown,
            Some(None) => Here::Theirs,
            Some(Some((owner, refresh))) => {
                // The owner's list lives as long as its last session.
                self.owners
                    .update(&*owner, now, |_, deadline| *deadline = (*deadline).max(until));
                Here::Mine { refresh }
            }
        }
    }

    /// Whether `p` owns `session` in this replica's table.
    #[cfg(test)]
    fn owns(&self, session: &str, p: &Principal) -> bool {
        matches!(self.here(session, p), Here::Mine { .. })
    }

    /// Bind `session`, just created, to `owner`.
    fn bind(&self, session: &str, owner: &Arc<Owner>) -> Bind {
        let now = Timestamp::now();
        let until = now.saturating_add(self.settings.idle);
        // A session id the server just issued cannot already belong to
        // someone else; if it somehow does, the new owner is the creator.
        let local = Local {
            owner: owner.clone(),
            refreshed: now,
        };
        if !self.sessions.insert_if_room(session.to_owned(), local, 0, until, now) {
            return Bind::Full;
        }
        let listed = self.owners.update(&**owner, now, |list, deadline| {
            list.push(session.to_owned());
            *deadline = (*deadline).max(until);
            list.len()
        });
        let listed = match listed {
            Some(n) => n,
            None if self
                .owners
                .insert_if_room(owner.clone(), vec![session.to_owned()], 0, until, now) =>
            {
                1
            }
            None => {
                self.sessions.remove(session);
                return Bind::Full;
            }
        };
        if listed > self.settings.per_principal {
            Bind::OverBound
        } else {
            Bind::Kept
        }
    }

    /// Bring `owner` back within its bound after it opened `newest`: drop
    /// what rmcp no longer holds or was forgotten, then close the sessions
    /// idle longest (never `newest`).
    async fn enforce(&self, owner: &Owner, newest: &str) {
        let Some(listed) = self.owners.get(owner, Timestamp::now()) else {
            return;
        };
        let live = match &self.settings.registry {
            Some(registry) => registry.live(&listed).await,
            None => vec![true; listed.len()],
        };
        let now = Timestamp::now();
        let mut kept = Vec::with_capacity(listed.len());
        let mut dropped = Vec::new();
        for (id, live) in listed.into_iter().zip(live) {
            let deadline = self
                .sessions
                .update(&id, now, |bound, deadline| {
                    (*bound.owner == *owner).then_some(*deadline)
                })
                .flatten();
            match deadline {
                Some(deadline) if live => kept.push((id != newest, deadline, id)),
                // Gone in rmcp: forget the binding. Forgotten here but maybe
                // live in rmcp (idle): close it there.
                _ => dropped.push((live, id)),
            }
        }
        // Idle longest first; the newest last.
        kept.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let excess = kept.len().saturating_sub(self.settings.per_principal);
        dropped.extend(kept.drain(..excess).map(|(_, _, id)| (true, id)));
        if dropped.is_empty() {
            return;
        }
        self.owners.update(owner, now, |list, deadline| {
            list.retain(|id| !dropped.iter().any(|(_, gone)| gone == id));
            if list.is_empty() {
                // Nothing left: let the owner's entry expire at once.
                *deadline = now;
            }
        });
        for (live, id) in &dropped {
            if self
                .sessions
                .get(id.as_str(), now)
                .is_some_and(|bound| *bound.owner == *owner)
            {
                self.sessions.remove(id.as_str());
            }
            if *live {
                self.close(id).await;
            }
        }
        // Beyond the bound here is beyond it in the fleet: the shared
        // bindings go too (the store's own eviction covers the common case).
        if let Some(shared) = &self.shared {
            let digest = owner.digest();
            for (_, id) in &dropped {
                if let Err(error) = shared.forget(&digest, id).await {
                    tracing::debug!(
                        reason = error.reason(),
                        "forgetting an evicted session in the shared store"
                    );
                }
            }
        }
    }

    /// Close `session` in rmcp (when the layer knows the session manager).
    async fn close(&self, session: &str) {
        if let Some(registry) = &self.settings.registry {
            tracing::debug!("closing a session in rmcp");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, registry.close(session)).await;
        }
    }

    /// Sessions of `owner` the shared store evicted for its bound: those
    /// held here are forgotten and closed (the others are closed by their
    /// replica at their next refresh).
    async fn evicted(&self, owner: &Owner, ids: &[String]) {
        for id in ids {
            let here = self
                .sessions
                .get(id.as_str(), Timestamp::now())
                .is_some_and(|bound| *bound.owner == *owner);
            if here {
                self.forget(id);
                self.close(id).await;
            }
        }
    }

    /// Forget `session` (closed by its owner) in this replica's table.
    fn forget(&self, session: &str) {
        if let Some(Local { owner, .. }) = self.sessions.remove(session) {
            let now = Timestamp::now();
            self.owners.update(&*owner, now, |list, deadline| {
                list.retain(|id| id != session);
                if list.is_empty() {
                    // Nothing left: let the owner's entry expire at once (an
                    // empty list must not hold a place in a full table).
                    *deadline = now;
                }
            });
        }
    }
}

/// Binds MCP sessions to their creators; see the [module docs](self).
///
/// Configure it before serving: each builder step starts with an empty
/// table.
#[derive(Clone)]
pub struct SessionBindingLayer {
    bindings: Arc<Bindings>,
}

impl std::fmt::Debug for SessionBindingLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings = &self.bindings.settings;
        f.debug_struct("SessionBindingLayer")
            .field("capacity", &settings.capacity)
            .field("idle", &settings.idle)
            .field("max_sessions_per_principal", &settings.per_principal)
            .field("session_manager", &settings.registry.is_some())
            .field("store", &settings.store)
            .field("refresh_interval", &settings.refresh)
            .finish_non_exhaustive()
    }
}

impl Default for SessionBindingLayer {
    /// [`DEFAULT_CAPACITY`] sessions, each forgotten after [`DEFAULT_IDLE`]
    /// without a request, at most [`DEFAULT_MAX_SESSIONS_PER_PRINCIPAL`] per
    /// principal, and no session manager.
    fn default() -> Self {
        SessionBindingLayer::new(DEFAULT_CAPACITY, DEFAULT_IDLE)
    }
}

impl SessionBindingLayer {
    /// A layer remembering at most `capacity` sessions (all principals
    /// together; at least 1), each forgotten after `idle` without a request.
    /// Defaults to [`DEFAULT_CAPACITY`] and [`DEFAULT_IDLE`] (rmcp's session
    /// keep-alive; keep `idle` no longer than yours, so that a binding does
    /// not outlive its session).
    pub fn new(capacity: usize, idle: Duration) -> Self {
        SessionBindingLayer {
            bindings: Arc::new(Bindings::new(Settings {
                capacity: capacity.max(1),
                idle,
                per_principal: DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
                registry: None,
                store: SharedStore::memory(),
                refresh: DEFAULT_REFRESH_INTERVAL,
            })),
        }
    }

    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.bindings.settings.clone();
        change(&mut settings);
        SessionBindingLayer {
            bindings: Arc::new(Bindings::new(settings)),
        }
    }

    /// At most `max` live sessions per principal (at least 1): opening one
    /// more closes that principal's session idle longest. Defaults to
    /// [`DEFAULT_MAX_SESSIONS_PER_PRINCIPAL`] (16).
    pub fn max_sessions_per_principal(self, max: usize) -> Self {
        self.with(|s| s.per_principal = max.max(1))
    }

    /// The rmcp session manager behind this layer, so that a session closed
    /// for its principal's bound is closed in rmcp too (its memory freed), and
    /// a session rmcp dropped on its own no longer counts. [`Guard`](crate::Guard)
    /// passes its own. Defaults to none: an evicted session is only
    /// forgotten (it answers 404) and lives in rmcp until its keep-alive.
    pub fn session_manager<M: SessionManager>(self, manager: Arc<M>) -> Self {
        self.with(|s| s.registry = Some(manager))
    }

    /// Keep the bindings and each principal's sessions in `store` as well,
    /// shared by a fleet of replicas (module docs, "Fleet"): a session
    /// opened on one replica is refused to another principal on every
    /// replica, and the per-principal bound holds fleet-wide. A memory store
    /// changes nothing. [`Guard`](crate::Guard) passes its
    /// [`shared_store`](crate::Guard::shared_store). Defaults to
    /// [`SharedStore::memory`]: this replica only.
    pub fn shared(self, store: SharedStore) -> Self {
        self.with(|s| s.store = store)
    }

    /// How often a session in use refreshes its binding in the shared
    /// store (one round trip), and so how soon a replica notices that the
    /// fleet evicted one of its sessions. Between refreshes, requests on a
    /// session this replica bound cost no round trip. The shared binding
    /// lives `idle` plus this interval. Defaults to
    /// [`DEFAULT_REFRESH_INTERVAL`] (30 s).
    pub fn refresh_interval(self, every: Duration) -> Self {
        self.with(|s| s.refresh = every)
    }
}

impl SessionBindingLayer {
    /// Report the sessions this layer's table holds as the gauge
    /// `rmcp_guard.sessions.active`, while the table lives.
    #[cfg(feature = "telemetry")]
    pub(crate) fn report_in_use(&self) {
        let bindings = Arc::downgrade(&self.bindings);
        crate::telemetry::gauge_in_use(
            crate::telemetry::names::SESSIONS,
            "MCP sessions bound to their caller in this replica",
            move || bindings.upgrade().map(|b| b.sessions.len() as u64),
        );
    }
}

impl<S> Layer<S> for SessionBindingLayer {
    type Service = SessionBinding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionBinding {
            inner,
            bindings: self.bindings.clone(),
        }
    }
}

/// The session-binding middleware; see the [module docs](self).
#[derive(Clone)]
pub struct SessionBinding<S> {
    inner: S,
    bindings: Arc<Bindings>,
}

impl<S> SessionBinding<S> {
    define_inner_service_accessors!();
}

impl<S> std::fmt::Debug for SessionBinding<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBinding").finish_non_exhaustive()
    }
}

fn json_error(status: StatusCode, body: &'static [u8]) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn not_found() -> Response<Bytes> {
    json_error(
        StatusCode::NOT_FOUND,
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#,
    )
}

fn session_required() -> Response<Bytes> {
    json_error(
        StatusCode::BAD_REQUEST,
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Mcp-Session-Id header is required"}}"#,
    )
}

fn table_full() -> Response<Bytes> {
    let mut response = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Too many sessions, retry later"}}"#,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(FULL_RETRY_AFTER_SECS));
    response
}

fn audit(reason: &'static str, principal: Option<&Principal>) {
    crate::audit::AuditEvent::Session {
        reason,
        subject: principal.map(Principal::subject),
    }
    .emit();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionBinding<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<SessionBody<ResBody>>;
    type Error = S::Error;
    type Future = SessionFuture<S::Future, S, Request<ReqBody>, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let principal = req.extensions().get::<Principal>();
        let refused = |reason: &'static str, response: Response<Bytes>| {
            audit(reason, principal);
            SessionFuture::Refused {
                response: Some(response),
            }
        };
        let Some(principal) = principal else {
            // No principal: the bearer layer is missing in front. Fail closed.
            return refused("unauthenticated", not_found());
        };
        let mut check = None;
        let after = match req.headers().get(SESSION_HEADER).map(HeaderValue::to_str) {
            // A GET or DELETE names the session it is about; without one it
            // would reach rmcp's stateless paths (resumption replay) unbound.
            None if req.method() == Method::GET || req.method() == Method::DELETE => {
                return refused("session_id_required", session_required());
            }
            None => After::BindCreated(principal.clone()),
            Some(Err(_)) => return refused("malformed_session_id", not_found()),
            Some(Ok(id)) => {
                match (self.bindings.here(id, principal), &self.bindings.shared) {
                    (Here::Mine { refresh: false }, _) | (Here::Mine { refresh: true }, None) => {}
                    (Here::Mine { refresh: true }, Some(_)) => {
                        check = Some(checked(self.bindings.clone(), principal.clone(), id, true));
                    }
                    (Here::Theirs, _) | (Here::Unknown, None) => return refused("session_not_owned", not_found()),
                    (Here::Unknown, Some(_)) if id.len() > MAX_SHARED_SESSION_ID_LEN => {
                        return refused("session_not_owned", not_found());
                    }
                    (Here::Unknown, Some(_)) => {
                        check = Some(checked(self.bindings.clone(), principal.clone(), id, false));
                    }
                }
                if req.method() == Method::DELETE {
                    After::ForgetOnSuccess(id.to_owned(), shared::digest_of(principal))
                } else {
                    After::Nothing
                }
            }
        };
        match check {
            None => SessionFuture::Inner {
                future: self.inner.call(req),
                bindings: Some(self.bindings.clone()),
                after: Some(after),
            },
            Some(check) => {
                // The ready service goes with the request; this one takes
                // its place (tower's rule for calling after an await).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                SessionFuture::Checking {
                    check,
                    pending: Some((inner, req)),
                    bindings: Some(self.bindings.clone()),
                    after: Some(after),
                }
            }
        }
    }
}

enum After {
    Nothing,
    BindCreated(Principal),
    ForgetOnSuccess(String, OwnerDigest),
}

/// The check of a session against the shared store before the request goes
/// on: `None` to go on, or the refusal.
type Check = BoxFuture<'static, Option<Response<Bytes>>>;

/// Ask the shared store whether `principal` owns `session` (and refresh it).
/// `local`: this replica bound it to `principal`; then a store that does not
/// answer lets the request on (the local binding is the creator's and never
/// changes hands), and a store that no longer knows the binding means the
/// fleet evicted the session: it is closed here too.
fn checked(bindings: Arc<Bindings>, principal: Principal, session: &str, local: bool) -> Check {
    let session = session.to_owned();
    Box::pin(async move {
        let shared = bindings.shared.as_ref()?;
        match shared.touch(&shared::digest_of(&principal), &session).await {
            Ok(true) => None,
            Ok(false) if local => {
                audit("session_evicted", Some(&principal));
                bindings.forget(&session);
                bindings.close(&session).await;
                Some(not_found())
            }
            Ok(false) => {
                audit("session_not_owned", Some(&principal));
                Some(not_found())
            }
            Err(error) if local => {
                tracing::debug!(
                    reason = error.reason(),
                    "session refresh skipped; the local binding holds"
                );
                None
            }
            Err(error) => {
                audit(error.reason(), Some(&principal));
                Some(error.response())
            }
        }
    })
}

/// The work after a new session was bound, or an owner closed one: bring
/// the owner within bounds, record or forget the binding in the shared
/// store; a response replacing the inner one when the session could not be
/// bound (it is closed then).
type Settle = BoxFuture<'static, Option<Response<Bytes>>>;

fn settle(bindings: Arc<Bindings>, principal: Principal, session: &str) -> Option<Settle> {
    let owner = Arc::new(Owner::of(&principal));
    let session = session.to_owned();
    let bound = bindings.bind(&session, &owner);
    if bound == Bind::Full {
        audit("session_table_full", Some(&principal));
        return Some(Box::pin(async move {
            bindings.close(&session).await;
            Some(table_full())
        }));
    }
    let shared = bindings.shared.clone();
    if shared.is_none() && bound == Bind::Kept {
        return None;
    }
    Some(Box::pin(async move {
        if let Some(shared) = shared {
            let max = bindings.settings.per_principal;
            match shared.bind(&owner.digest(), &session, max).await {
                Ok(evicted) => bindings.evicted(&owner, &evicted).await,
                Err(error) => {
                    // Not bound fleet-wide: the session does not start.
                    audit(error.reason(), Some(&principal));
                    bindings.forget(&session);
                    bindings.close(&session).await;
                    return Some(error.response());
                }
            }
        }
        if bound == Bind::OverBound {
            bindings.enforce(&owner, &session).await;
        }
        None
    }))
}

/// Forget `session`, closed by its owner, here and in the shared store.
fn forgotten(bindings: Arc<Bindings>, session: String, owner: OwnerDigest) -> Option<Settle> {
    bindings.forget(&session);
    let shared = bindings.shared.clone()?;
    Some(Box::pin(async move {
        // The session is closed either way; its binding expires on its own.
        if let Err(error) = shared.forget(&owner, &session).await {
            tracing::warn!(
                reason = error.reason(),
                "a closed session stays bound in the shared store until it expires"
            );
        }
        None
    }))
}

pin_project! {
    /// The response future of [`SessionBinding`].
    #[project = SessionFutureProj]
    #[allow(missing_docs)] // pin-project-lite takes no attributes on variant fields
    pub enum SessionFuture<F, S, Q, B> {
        /// Checking the session in the shared store; the inner service and
        /// the request wait.
        Checking {
            check: Check,
            pending: Option<(S, Q)>,
            bindings: Option<Arc<Bindings>>,
            after: Option<After>,
        },
        /// Waiting for the inner service.
        Inner {
            #[pin]
            future: F,
            bindings: Option<Arc<Bindings>>,
            after: Option<After>,
        },
        /// A new session is being bound, or a closed one forgotten.
        Settling {
            settle: Settle,
            response: Option<Response<B>>,
        },
        /// Refused before the inner service.
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F, S, Q, ResBody, E> Future for SessionFuture<F, S, Q, ResBody>
where
    S: Service<Q, Future = F>,
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<SessionBody<ResBody>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                SessionFutureProj::Checking {
                    check,
                    pending,
                    bindings,
                    after,
                } => {
                    let refusal = ready!(check.as_mut().poll(cx));
                    let next = match (refusal, pending.take()) {
                        (None, Some((mut inner, req))) => SessionFuture::Inner {
                            future: inner.call(req),
                            bindings: bindings.take(),
                            after: after.take(),
                        },
                        (refusal, _) => SessionFuture::Refused { response: refusal },
                    };
                    self.set(next);
                }
                SessionFutureProj::Inner {
                    future,
                    bindings,
                    after,
                } => {
                    let response = ready!(future.poll(cx))?;
                    let mut settling = None;
                    if let (Some(bindings), Some(after)) = (bindings.take(), after.take()) {
                        match after {
                            After::BindCreated(principal) => {
                                if let Some(Ok(id)) = response.headers().get(SESSION_HEADER).map(|v| v.to_str()) {
                                    settling = settle(bindings, principal, id);
                                }
                            }
                            After::ForgetOnSuccess(id, owner) if response.status().is_success() => {
                                settling = forgotten(bindings, id, owner);
                            }
                            _ => {}
                        }
                    }
                    match settling {
                        None => return Poll::Ready(Ok(response.map(SessionBody::inner))),
                        Some(settle) => self.set(SessionFuture::Settling {
                            settle,
                            response: Some(response),
                        }),
                    }
                }
                SessionFutureProj::Settling { settle, response } => {
                    let replaced = ready!(settle.as_mut().poll(cx));
                    let response = match (replaced, response.take()) {
                        (None, Some(response)) => response.map(SessionBody::inner),
                        (Some(refusal), _) => refusal.map(SessionBody::rejection),
                        // Polled after completion: cannot happen; answer, don't panic.
                        (None, None) => not_found().map(SessionBody::rejection),
                    };
                    return Poll::Ready(Ok(response));
                }
                SessionFutureProj::Refused { response } => {
                    let response = response.take().unwrap_or_else(not_found);
                    return Poll::Ready(Ok(response.map(SessionBody::rejection)));
                }
            }
        }
    }
}

opaque_body! {
    /// The response body of [`SessionBinding`]: the inner service's body, or
    /// the short JSON of a refused session.
    pub type SessionBody<B>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal::unverified("https://idp", "alice").client_id("app").build()
    }

    fn owner(p: &Principal) -> Arc<Owner> {
        Arc::new(Owner::of(p))
    }

    #[test]
    fn defaults_are_pinned() {
        let layer = SessionBindingLayer::default();
        let s = &layer.bindings.settings;
        assert_eq!(s.capacity, 100_000);
        assert_eq!(s.idle, Duration::from_secs(300));
        assert_eq!(s.per_principal, 16);
        assert!(s.registry.is_none());
        assert!(!s.store.is_shared() && layer.bindings.shared.is_none());
        assert_eq!(s.refresh, Duration::from_secs(30));
        assert_eq!(
            DEFAULT_IDLE,
            rmcp::transport::streamable_http_server::session::local::SessionConfig::DEFAULT_KEEP_ALIVE,
            "a binding lives as long as rmcp keeps an idle session"
        );
        let layer = layer.max_sessions_per_principal(0);
        assert_eq!(layer.bindings.settings.per_principal, 1);
    }

    #[test]
    fn only_the_creator_owns_a_session() {
        let b = SessionBindingLayer::default().bindings;
        let alice = alice();
        b.bind("s1", &owner(&alice));
        assert!(b.owns("s1", &alice));
        let mallory = Principal::unverified("https://idp", "mallory").client_id("app").build();
        assert!(!b.owns("s1", &mallory));
        // The same user through another client is someone else.
        let other_app = Principal::unverified("https://idp", "alice").client_id("other").build();
        assert!(!b.owns("s1", &other_app));
        // So is a client named like the user.
        let client = Principal::unverified("https://idp", "alice")
            .client_id("app")
            .kind(PrincipalKind::Client)
            .build();
        assert!(!b.owns("s1", &client));
        assert!(!b.owns("s2", &alice));
        b.forget("s1");
        assert!(!b.owns("s1", &alice));
        assert!(
            b.owners.get(&*owner(&alice), Timestamp::now()).is_none(),
            "no empty list is kept"
        );
    }

    #[test]
    fn the_local_table_says_mine_theirs_or_unknown_and_when_to_refresh() {
        let b = SessionBindingLayer::default()
            .refresh_interval(Duration::from_secs(3600))
            .bindings;
        let alice = alice();
        b.bind("s1", &owner(&alice));
        assert_eq!(b.here("s1", &alice), Here::Mine { refresh: false });
        let mallory = Principal::unverified("https://idp", "mallory").client_id("app").build();
        assert_eq!(b.here("s1", &mallory), Here::Theirs);
        assert_eq!(b.here("s2", &alice), Here::Unknown);
        // Refresh due at every request with a zero interval.
        let b = SessionBindingLayer::default().refresh_interval(Duration::ZERO).bindings;
        b.bind("s1", &owner(&alice));
        assert_eq!(b.here("s1", &alice), Here::Mine { refresh: true });
        assert_eq!(b.here("s1", &alice), Here::Mine { refresh: true });
    }

    #[test]
    fn owner_digests_differ_in_every_field() {
        let base = shared::owner_digest("https://idp", PrincipalKind::User, "alice", Some("app"));
        assert_eq!(base, Owner::of(&alice()).digest());
        assert_ne!(
            base,
            shared::owner_digest("https://idp2", PrincipalKind::User, "alice", Some("app"))
        );
        assert_ne!(
            base,
            shared::owner_digest("https://idp", PrincipalKind::Client, "alice", Some("app"))
        );
        assert_ne!(
            base,
            shared::owner_digest("https://idp", PrincipalKind::User, "alicf", Some("app"))
        );
        assert_ne!(
            base,
            shared::owner_digest("https://idp", PrincipalKind::User, "alice", None)
        );
        assert_ne!(
            base,
            shared::owner_digest("https://idp", PrincipalKind::User, "alice", Some(""))
        );
        // Field boundaries are not ambiguous.
        assert_ne!(
            shared::owner_digest("a", PrincipalKind::User, "bc", None),
            shared::owner_digest("ab", PrincipalKind::User, "c", None)
        );
    }

    #[test]
    fn idle_bindings_are_forgotten_and_a_full_table_refuses() {
        let b = SessionBindingLayer::new(2, Duration::ZERO).bindings;
        assert_eq!(b.bind("s1", &owner(&alice())), Bind::Full, "deadline not after now");
        assert!(!b.owns("s1", &alice()));
        let b = SessionBindingLayer::new(2, Duration::from_secs(60)).bindings;
        let bob = Principal::unverified("https://idp", "bob").build();
        assert_eq!(b.bind("s1", &owner(&bob)), Bind::Kept);
        for i in 2..10 {
            b.bind(&format!("s{i}"), &owner(&alice()));
        }
        assert_eq!(b.sessions.len(), 2);
        // Bob's session was never evicted for Alice's.
        assert!(b.owns("s1", &bob));
        assert!(b.owns("s2", &alice()));
    }

    #[tokio::test]
    async fn a_principal_beyond_its_bound_loses_its_own_oldest_sessions() {
        let b = SessionBindingLayer::default().max_sessions_per_principal(2).bindings;
        let bob = Principal::unverified("https://idp", "bob").build();
        b.bind("bob", &owner(&bob));
        let alice = alice();
        for i in 0..5 {
            let id = format!("a{i}");
            if b.bind(&id, &owner(&alice)) == Bind::OverBound {
                b.enforce(&owner(&alice), &id).await;
            }
        }
        for gone in ["a0", "a1", "a2"] {
            assert!(!b.owns(gone, &alice), "{gone}");
        }
        assert!(b.owns("a3", &alice));
        assert!(b.owns("a4", &alice));
        assert!(b.owns("bob", &bob));
        assert_eq!(b.owners.get(&*owner(&alice), Timestamp::now()).unwrap().len(), 2);
    }
}
