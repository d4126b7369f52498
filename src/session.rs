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
//!   is bound to the caller's issuer and subject;
//! - a request naming a session bound to someone else is answered **404**
//!   (as the MCP Python SDK does) and never reaches the session; so is a
//!   request naming a session this layer does not know (fail closed: an
//!   unknown binding is never assumed to be yours);
//! - a `DELETE` of another principal's session is refused the same way; a
//!   successful `DELETE` by the owner forgets the binding.
//!
//! It sits inside [`BearerAuthLayer`](crate::oauth::BearerAuthLayer), so every request
//! on a session is still fully authenticated: an expired token does not ride
//! on the session. Stateless servers (no session ids) pass through untouched.
//! [`Guard`](crate::Guard) installs it (unless stateless).
//!
//! Bindings live in memory, bounded in number (least recently used evicted
//! first) and forgotten after an idle time. A forgotten binding makes its session answer
//! 404, after which an MCP client starts a new session. Several server
//! instances behind one load balancer each know only their own sessions; use
//! sticky routing, or stateless mode.
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
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::{Limits, Timestamp, TtlCache};
use crate::principal::Principal;

/// The header rmcp uses for session ids.
pub const SESSION_HEADER: &str = "mcp-session-id";

type Owner = (String, String);

/// The shared table of session owners, each forgotten `idle` after its last
/// request.
struct Bindings {
    table: TtlCache<String, Owner>,
    capacity: usize,
    idle: Duration,
}

impl Bindings {
    /// Whether `owner` owns `session` (refreshing its idle time).
    fn owns(&self, session: &str, owner: &Owner) -> bool {
        let now = Timestamp::now();
        let owned = self.table.update(session, now, |bound, until| {
            let owned = bound == owner;
            if owned {
                *until = now.saturating_add(self.idle);
            }
            owned
        });
        owned == Some(true)
    }

    fn bind(&self, session: String, owner: Owner) {
        let now = Timestamp::now();
        // A session id the server just issued cannot already belong to
        // someone else; if it somehow does, the new owner is the creator.
        self.table.insert(session, owner, 0, now.saturating_add(self.idle), now);
    }

    fn forget(&self, session: &str) {
        self.table.remove(session);
    }
}

/// Binds MCP sessions to their creators; see the [module docs](self).
#[derive(Clone)]
pub struct SessionBindingLayer {
    bindings: Arc<Bindings>,
}

impl std::fmt::Debug for SessionBindingLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBindingLayer")
            .field("capacity", &self.bindings.capacity)
            .field("idle", &self.bindings.idle)
            .finish_non_exhaustive()
    }
}

impl Default for SessionBindingLayer {
    /// 100 000 sessions, forgotten after 24 hours idle.
    fn default() -> Self {
        SessionBindingLayer::new(100_000, Duration::from_secs(24 * 3600))
    }
}

impl SessionBindingLayer {
    /// A layer remembering at most `capacity` sessions, each forgotten after
    /// `idle` without a request. [`Default`] is 100 000 and 24 hours.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        SessionBindingLayer {
            bindings: Arc::new(Bindings {
                table: TtlCache::new(Limits::entries(capacity.max(1))),
                capacity: capacity.max(1),
                idle,
            }),
        }
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

fn not_found() -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#,
    ));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionBinding<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<SessionBody<ResBody>>;
    type Error = S::Error;
    type Future = SessionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let owner = req
            .extensions()
            .get::<Principal>()
            .map(|p| (p.issuer().to_owned(), p.subject().to_owned()));
        let session = req.headers().get(SESSION_HEADER).map(|v| v.to_str().map(str::to_owned));
        let refused = |reason: &'static str| {
            crate::audit::AuditEvent::Session {
                reason,
                subject: req.extensions().get::<Principal>().map(Principal::subject),
            }
            .emit();
            SessionFuture::Refused {
                response: Some(not_found()),
            }
        };
        let Some(owner) = owner else {
            // No principal: the bearer layer is missing in front. Fail closed.
            return refused("unauthenticated");
        };
        let after = match session {
            None => After::BindCreated(owner),
            Some(Err(_)) => return refused("malformed_session_id"),
            Some(Ok(id)) => {
                if !self.bindings.owns(&id, &owner) {
                    return refused("session_not_owned");
                }
                if req.method() == Method::DELETE {
                    After::ForgetOnSuccess(id)
                } else {
                    After::Nothing
                }
            }
        };
        SessionFuture::Inner {
            future: self.inner.call(req),
            bindings: Some(self.bindings.clone()),
            after: Some(after),
        }
    }
}

enum After {
    Nothing,
    BindCreated(Owner),
    ForgetOnSuccess(String),
}

pin_project! {
    /// The response future of [`SessionBinding`].
    #[project = SessionFutureProj]
    #[allow(missing_docs)] // pin-project-lite takes no attributes on variant fields
    pub enum SessionFuture<F> {
        /// Waiting for the inner service.
        Inner {
            #[pin]
            future: F,
            bindings: Option<Arc<Bindings>>,
            after: Option<After>,
        },
        /// Refused before the inner service.
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F, ResBody, E> Future for SessionFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<SessionBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SessionFutureProj::Inner {
                future,
                bindings,
                after,
            } => {
                let response = ready!(future.poll(cx))?;
                if let (Some(bindings), Some(after)) = (bindings.take(), after.take()) {
                    match after {
                        After::BindCreated(owner) => {
                            if let Some(Ok(id)) = response.headers().get(SESSION_HEADER).map(|v| v.to_str()) {
                                bindings.bind(id.to_owned(), owner);
                            }
                        }
                        After::ForgetOnSuccess(id) if response.status().is_success() => bindings.forget(&id),
                        _ => {}
                    }
                }
                Poll::Ready(Ok(response.map(SessionBody::inner)))
            }
            SessionFutureProj::Refused { response } => {
                let response = response.take().unwrap_or_else(not_found);
                Poll::Ready(Ok(response.map(SessionBody::rejection)))
            }
        }
    }
}

opaque_body! {
    /// The response body of [`SessionBinding`]: the inner service's body, or
    /// the 404 of a refused session.
    pub type SessionBody<B>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> Owner {
        ("https://idp".to_owned(), s.to_owned())
    }

    #[test]
    fn only_the_creator_owns_a_session() {
        let b = SessionBindingLayer::default().bindings;
        b.bind("s1".into(), owner("alice"));
        assert!(b.owns("s1", &owner("alice")));
        assert!(!b.owns("s1", &owner("mallory")));
        assert!(!b.owns("s2", &owner("alice")));
        b.forget("s1");
        assert!(!b.owns("s1", &owner("alice")));
    }

    #[test]
    fn idle_bindings_are_forgotten_and_capacity_is_bounded() {
        let b = SessionBindingLayer::new(2, Duration::ZERO).bindings;
        b.bind("s1".into(), owner("alice"));
        assert!(!b.owns("s1", &owner("alice")));
        let b = SessionBindingLayer::new(2, Duration::from_secs(60)).bindings;
        for i in 0..10 {
            b.bind(format!("s{i}"), owner("alice"));
        }
        assert_eq!(b.table.len(), 2);
        assert!(b.owns("s9", &owner("alice")));
    }
}
