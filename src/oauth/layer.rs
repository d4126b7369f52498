//! [`BearerAuthLayer`]: authenticate every request before it reaches the MCP
//! service.
//!
//! The token is read only from `Authorization: Bearer` (scheme
//! case-insensitive). A request with `access_token` in its query string is
//! refused with 400 whatever else it carries, so a token that leaked into a URL
//! (and so into proxy logs) is never honoured. On success the [`Principal`] is
//! inserted into the request extensions; on failure the request never reaches
//! the inner service and the client gets the status and challenge of
//! [`challenge`](super::challenge).
//!
//! The `Authorization` header is removed from an accepted request, so tools
//! that read `http::request::Parts` never see the caller's token.
//!
//! A token seen before is answered from the verified-token cache without
//! touching the signature (a SHA-256 and a shard lookup); a new one is verified
//! on an async path that may fetch the issuer's keys.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use rmcp_guard::oauth::{Issuer, ResourceServer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
//!     .build()
//!     .unwrap();
//! let service = ServiceBuilder::new().layer(rs.layer()).service(service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//! }));
//! let response = service
//!     .oneshot(http::Request::post("/mcp").body(String::new()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 401);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::ResourceServer;
use super::cache::{TokenHash, hash_token};
use super::jwt::{self, Failure};
use crate::audit;
use crate::error::{AuthError, TokenRejection};
use crate::principal::Principal;

/// Applies [`BearerAuth`] to a service. Build it with
/// [`ResourceServer::layer`].
#[derive(Clone, Debug)]
pub struct BearerAuthLayer {
    rs: ResourceServer,
}

impl BearerAuthLayer {
    /// The layer for this resource server.
    pub fn new(rs: ResourceServer) -> Self {
        BearerAuthLayer { rs }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            rs: self.rs.clone(),
        }
    }
}

/// The bearer-token middleware; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct BearerAuth<S> {
    inner: S,
    rs: ResourceServer,
}

impl<S> BearerAuth<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the synchronous first look at a request decided.
enum Begin {
    Accept(Principal, Inbound),
    Reject(AuthError),
    Verify {
        token: zeroize::Zeroizing<String>,
        hash: TokenHash,
    },
}

/// The caller's token as kept in the request extensions for downstream token
/// exchange (feature `introspection`); nothing otherwise.
#[cfg(feature = "introspection")]
type Inbound = super::exchange::InboundToken;
#[cfg(not(feature = "introspection"))]
type Inbound = NoInbound;

/// Nothing to keep: without token exchange the token is not needed after
/// verification.
#[cfg(not(feature = "introspection"))]
struct NoInbound;

#[cfg(feature = "introspection")]
fn inbound(token: &str) -> Inbound {
    super::exchange::InboundToken::new(token)
}

#[cfg(not(feature = "introspection"))]
fn inbound(_token: &str) -> Inbound {
    NoInbound
}

/// Keep the token in the request for token exchange; without the feature the
/// request carries nothing extra.
#[cfg(feature = "introspection")]
fn keep(extensions: &mut http::Extensions, token: Inbound) {
    extensions.insert(token);
}

#[cfg(not(feature = "introspection"))]
fn keep(_extensions: &mut http::Extensions, _token: Inbound) {}

/// The token has done its work: remove it from the request, so that no tool
/// reading `http::request::Parts` (and no handler logging its headers) can
/// see, log or forward the caller's bearer token. Token exchange keeps its
/// own redacted copy (`InboundToken`).
fn accepted(headers: &mut http::HeaderMap) {
    headers.remove(header::AUTHORIZATION);
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl ResourceServer {
    /// Read the credentials of a request; answer from the cache when possible.
    fn begin(&self, headers: &http::HeaderMap, uri: &http::Uri) -> Begin {
        if uri
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair.split('=').next() == Some("access_token")))
        {
            return Begin::Reject(AuthError::InvalidRequest(
                "access tokens are not accepted in the query string; use the Authorization header",
            ));
        }
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Begin::Reject(AuthError::MissingToken);
        };
        if values.next().is_some() {
            return Begin::Reject(AuthError::InvalidRequest("more than one Authorization header"));
        }
        let Ok(value) = value.to_str() else {
            return Begin::Reject(AuthError::InvalidRequest("malformed Authorization header"));
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            // Another scheme is not bearer credentials: challenge for them.
            return Begin::Reject(AuthError::MissingToken);
        }
        let token = rest.trim_matches(' ');
        if token.is_empty() {
            return Begin::Reject(AuthError::InvalidRequest("empty bearer token"));
        }
        if token.len() > self.shared.max_token_bytes {
            return Begin::Reject(TokenRejection::TooLarge.into());
        }
        if token.contains(' ') {
            return Begin::Reject(TokenRejection::Malformed.into());
        }
        let hash = hash_token(token);
        match self.shared.cache.get(&hash, now_unix()) {
            Some(principal) => match self.check_scopes(&principal) {
                Ok(()) => {
                    audit::authn_accepted(&principal, true);
                    Begin::Accept(principal, inbound(token))
                }
                Err(error) => {
                    audit::authn_rejected(
                        &error,
                        Some(principal.issuer()),
                        Some(principal.subject()),
                        principal.client_id(),
                    );
                    Begin::Reject(error)
                }
            },
            None => Begin::Verify {
                token: zeroize::Zeroizing::new(token.to_owned()),
                hash,
            },
        }
    }

    fn check_scopes(&self, principal: &Principal) -> Result<(), AuthError> {
        let required = &self.shared.required_scopes;
        if required.iter().all(|s| principal.has_scope(s)) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope {
                required: required.clone(),
            })
        }
    }

    /// Verify a token the cache did not know; remember it when valid.
    async fn finish(&self, token: &str, hash: TokenHash) -> Result<Principal, AuthError> {
        let now = now_unix();
        let result = self.validate(token, hash, now).await;
        let principal = match result {
            Ok(principal) => principal,
            Err(Failure {
                error,
                issuer,
                subject,
                client_id,
            }) => {
                audit::authn_rejected(&error, issuer.as_deref(), subject.as_deref(), client_id.as_deref());
                return Err(error);
            }
        };
        if let Err(error) = self.check_scopes(&principal) {
            audit::authn_rejected(
                &error,
                Some(principal.issuer()),
                Some(principal.subject()),
                principal.client_id(),
            );
            return Err(error);
        }
        audit::authn_accepted(&principal, false);
        Ok(principal)
    }

    /// The one validator for this token (see
    /// [`introspection`](super::introspection) for the rule); a valid
    /// principal is in the verified-token cache afterwards.
    async fn validate(&self, token: &str, hash: TokenHash, now: u64) -> Result<Principal, Failure> {
        #[cfg(feature = "introspection")]
        if let Some(introspector) = &self.shared.introspection
            && !super::introspection::is_jwt_issuer_token(&self.shared, token)
        {
            return introspector.verify(&self.shared, token, hash, now).await;
        }
        let principal = jwt::verify(&self.shared, token, now).await?;
        self.shared.cache.insert(hash, &principal, now);
        Ok(principal)
    }

    /// Authenticate a request's headers exactly as [`BearerAuthLayer`] does,
    /// for servers that are not built on tower.
    pub async fn authenticate(&self, headers: &http::HeaderMap, uri: &http::Uri) -> Result<Principal, AuthError> {
        match self.begin(headers, uri) {
            Begin::Accept(principal, _) => Ok(principal),
            Begin::Reject(error) => {
                if !matches!(error, AuthError::InsufficientScope { .. }) {
                    audit::authn_rejected(&error, None, None, None);
                }
                Err(error)
            }
            Begin::Verify { token, hash } => self.finish(&token, hash).await,
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BearerAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let state = match self.rs.begin(req.headers(), req.uri()) {
            Begin::Accept(principal, token) => {
                accepted(req.headers_mut());
                req.extensions_mut().insert(principal);
                keep(req.extensions_mut(), token);
                State::Inner {
                    future: self.inner.call(req),
                }
            }
            Begin::Reject(error) => {
                if !matches!(error, AuthError::InsufficientScope { .. }) {
                    audit::authn_rejected(&error, None, None, None);
                }
                State::Rejected {
                    response: Some(self.rs.reject(&error)),
                }
            }
            Begin::Verify { token, hash } => {
                // Dropped with the request if the token is refused.
                keep(req.extensions_mut(), inbound(&token));
                // The ready service goes with the request; a fresh clone stays.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let rs = self.rs.clone();
                State::Verifying {
                    verify: Box::pin(async move { rs.finish(&token, hash).await }),
                    service: Some(service),
                    request: Some(req),
                }
            }
        };
        ResponseFuture {
            state,
            rs: self.rs.clone(),
        }
    }
}

type VerifyFuture = Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send>>;

pin_project! {
    /// The response future of [`BearerAuth`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        rs: ResourceServer,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Verifying {
            verify: VerifyFuture,
            service: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
        Rejected {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Verifying {
                    verify,
                    service,
                    request,
                } => {
                    let verified = ready!(verify.as_mut().poll(cx));
                    let next = match (verified, service.take(), request.take()) {
                        (Ok(principal), Some(mut service), Some(mut request)) => {
                            accepted(request.headers_mut());
                            request.extensions_mut().insert(principal);
                            State::Inner {
                                future: service.call(request),
                            }
                        }
                        (Err(error), _, _) => State::Rejected {
                            response: Some(this.rs.reject(&error)),
                        },
                        // Polled again after the request was handed on: cannot
                        // happen (the state changes first); answer, don't panic.
                        _ => State::Rejected {
                            response: Some(this.rs.reject(&AuthError::KeysUnavailable)),
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(|body| ResponseBody::Inner { body })));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .unwrap_or_else(|| this.rs.reject(&AuthError::KeysUnavailable));
                    return Poll::Ready(Ok(response.map(|body| ResponseBody::Rejection { body: Some(body) })));
                }
            }
        }
    }
}

pin_project! {
    /// The response body of [`BearerAuth`]: the inner service's body, or a
    /// rejection's short JSON (`body` in each variant).
    #[project = BodyProj]
    #[allow(missing_docs)] // pin-project-lite takes no attributes on variant fields
    pub enum ResponseBody<B> {
        /// The inner service answered.
        Inner {
            #[pin]
            body: B,
        },
        /// The request was refused.
        Rejection {
            body: Option<Bytes>,
        },
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Rejection { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Inner { body } => body.is_end_stream(),
            ResponseBody::Rejection { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Inner { body } => body.size_hint(),
            ResponseBody::Rejection { body } => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
