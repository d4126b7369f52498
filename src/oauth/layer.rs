//! [`BearerAuthLayer`]: authenticate every request before it reaches the MCP

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::inbound::InboundToken;
use super::resource_server::{Begin, ResourceServer};
use crate::error::AuthError;
use crate::principal::Principal;

/// Applies [`BearerAuth`] to a service. Build it with
/// [`BearerAuthLayer::new`].
///
/// service.
///
/// The token is read only from `Authorization: Bearer` (scheme
/// case-insensitive). A request with `access_token` in its query string is
/// refused with 400 whatever else it carries, so a token that leaked into a URL
/// (and so into proxy logs) is never honoured. On success the [`Principal`] is
/// inserted into the request extensions; on failure the request never reaches
/// the inner service and the client gets the status and challenge of
/// [`Challenges`](crate::Challenges).
///
/// The `Authorization` header is removed from an accepted request, so tools
/// that read `http::request::Parts` never see the caller's token. With
/// [`BearerAuthLayer::keep_inbound_token`] (for token exchange) a redacted,
/// zeroizing [`InboundToken`] is kept in its place.
///
/// The decision is [`ResourceServer::authenticate`]'s; this file is only the
/// tower plumbing around it.
///
/// A token seen before is answered from the verified-token cache without
/// touching the signature (a SHA-256 and a shard lookup); a new one is verified
/// on an async path that may fetch the issuer's keys.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use rmcp_guard::oauth::{BearerAuthLayer, Issuer, ResourceServer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
///     .build()
///     .unwrap();
/// let service = ServiceBuilder::new().layer(BearerAuthLayer::new(rs)).service(service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
/// }));
/// let response = service
///     .oneshot(http::Request::post("/mcp").body(String::new()).unwrap())
///     .await
///     .unwrap();
/// assert_eq!(response.status(), 401);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BearerAuthLayer {
    rs: ResourceServer,
    keep_inbound_token: bool,
}

impl BearerAuthLayer {
    /// The layer for this resource server.
    pub fn new(rs: ResourceServer) -> Self {
        BearerAuthLayer {
            rs,
            keep_inbound_token: false,
        }
    }

    /// Keep the caller's verified token in the request as a redacted
    /// [`InboundToken`], for token exchange. Defaults to off: nothing of the
    /// token outlives its verification.
    pub fn keep_inbound_token(mut self) -> Self {
        self.keep_inbound_token = true;
        self
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The bearer-token middleware; see [`BearerAuthLayer`].
#[derive(Clone, Debug)]
pub struct BearerAuth<S> {
    inner: S,
    layer: BearerAuthLayer,
}

impl<S> BearerAuth<S> {
    define_inner_service_accessors!();
}

/// The token has done its work: remove it from the request, so that no tool
/// reading `http::request::Parts` (and no handler logging its headers) can
/// see, log or forward the caller's bearer token.
fn accept<B>(request: &mut Request<B>, principal: Principal, token: Option<InboundToken>) {
    request.headers_mut().remove(header::AUTHORIZATION);
    request.extensions_mut().insert(principal);
    if let Some(token) = token {
        request.extensions_mut().insert(token);
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BearerAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<BearerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let keep = self.layer.keep_inbound_token;
        let state = match self.layer.rs.begin(req.headers(), req.uri(), keep) {
            Begin::Accept(principal, token) => {
                accept(&mut req, principal, token.map(InboundToken::new));
                State::Inner {
                    future: self.inner.call(req),
                }
            }
            Begin::Reject(error) => State::Rejected {
                response: Some(self.layer.rs.challenges().reject(&error)),
            },
            Begin::Verify { token, hash } => {
                // The ready service goes with the request; a fresh clone stays.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let rs = self.layer.rs.clone();
                State::Verifying {
                    verify: Box::pin(async move {
                        let principal = rs.finish(&token, hash).await?;
                        Ok((principal, keep.then(|| InboundToken::new(token))))
                    }),
                    service: Some(service),
                    request: Some(req),
                }
            }
        };
        ResponseFuture {
            state,
            rs: self.layer.rs.clone(),
        }
    }
}

type VerifyFuture = Pin<Box<dyn Future<Output = Result<(Principal, Option<InboundToken>), AuthError>> + Send>>;

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
    type Output = Result<Response<BearerBody<ResBody>>, S::Error>;

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
                        (Ok((principal, token)), Some(mut service), Some(mut request)) => {
                            accept(&mut request, principal, token);
                            State::Inner {
                                future: service.call(request),
                            }
                        }
                        (Err(error), _, _) => State::Rejected {
                            response: Some(this.rs.challenges().reject(&error)),
                        },
                        // Polled again after the request was handed on: cannot
                        // happen (the state changes first); answer, don't panic.
                        _ => State::Rejected {
                            response: Some(this.rs.challenges().reject(&AuthError::KeysUnavailable)),
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(BearerBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .unwrap_or_else(|| this.rs.challenges().reject(&AuthError::KeysUnavailable));
                    return Poll::Ready(Ok(response.map(BearerBody::rejection)));
                }
            }
        }
    }
}

opaque_body! {
    /// The response body of [`BearerAuth`]: the inner service's body, or a
    /// rejection's short JSON.
    pub type BearerBody<B>;
}
