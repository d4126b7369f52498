//! [`BearerAuthLayer`]: authenticate every request before it reaches the MCP

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;

use super::inbound::InboundToken;
use super::resource_server::{Begin, ResourceServer};
use crate::body::RejectOr;
use crate::error::AuthError;
use crate::principal::Principal;
use crate::revoke::Revocations;
use crate::state::ReplaySet;
use crate::telemetry::trace;

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
/// An event stream (`text/event-stream`: a `GET` stream or a `POST` answered
/// as SSE) ends when the caller's token expires: a stream is authorized by the
/// token it was opened with, and must not outlive it. The client reconnects
/// with a fresh token. JSON answers are not touched. The stream ends at the
/// token's `exp` itself: a token accepted within the clock-skew leeway after
/// it gets a stream that ends at once (the client's next request after the
/// leeway is refused with 401, and it refreshes).
///
/// `Authorization: DPoP <token>` with a `DPoP` proof header is read too,
/// unless DPoP is [off](super::DpopMode::Off); see [`super::DpopConfig`].
///
/// The `Authorization` and `DPoP` headers are removed from an accepted
/// request, so tools that read `http::request::Parts` never see the
/// caller's token or proof. With
/// [`BearerAuthLayer::keep_inbound_token`] (for token exchange) a redacted,
/// zeroizing [`InboundToken`] is kept in its place.
///
/// The decision is [`ResourceServer::authenticate_with`]'s (with the
/// [`revocations`](BearerAuthLayer::revocations) given); this file is only
/// the tower plumbing around it.
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
#[derive(Clone)]
pub struct BearerAuthLayer {
    rs: ResourceServer,
    keep_inbound_token: bool,
    revocations: Option<Revocations>,
    dpop_replay: Option<Arc<dyn ReplaySet>>,
}

impl std::fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("rs", &self.rs)
            .field("keep_inbound_token", &self.keep_inbound_token)
            .field("revocations", &self.revocations)
            .field("shared_dpop_replay_set", &self.dpop_replay.is_some())
            .finish()
    }
}

impl BearerAuthLayer {
    /// The layer for this resource server.
    pub fn new(rs: ResourceServer) -> Self {
        BearerAuthLayer {
            rs,
            keep_inbound_token: false,
            revocations: None,
            dpop_replay: None,
        }
    }

    /// Remember DPoP proofs in `replay` instead of the resource server's
    /// set ([`DpopConfig::replay_set`](super::DpopConfig::replay_set)):
    /// [`Guard`](crate::Guard) passes the fleet's
    /// ([`RedisReplaySet`](crate::state::RedisReplaySet)) when its store is
    /// Redis, so that a proof used on one replica is refused on every other.
    pub fn dpop_replay_set(mut self, replay: Arc<dyn ReplaySet>) -> Self {
        self.dpop_replay = Some(replay);
        self
    }

    /// Refuse tokens `revocations` revoked (401 `invalid_token`), on every
    /// request, cached tokens included; 503 while this replica cannot know
    /// ([`crate::revoke`]). The revocations are kept at least as long as
    /// this resource server's longest token lifetime plus its leeway.
    /// [`Guard`](crate::Guard) passes its store's. Defaults to none.
    pub fn revocations(mut self, revocations: Revocations) -> Self {
        revocations.retain_for(self.rs.revocation_retention());
        // Start syncing from Redis now (inside a runtime), so that a replica
        // is usually fresh before its first request arrives.
        let _ = revocations.is_fresh();
        self.revocations = Some(revocations);
        self
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
    request.headers_mut().remove(DPOP);
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
        let revocations = self.layer.revocations.as_ref();
        let mut nonce = None;
        let span = trace::authenticate_span();
        let begun = span.in_scope(|| {
            self.layer
                .rs
                .begin(req.method(), req.headers(), req.uri(), keep, revocations)
        });
        let state = match begun {
            Begin::Accept(principal, token) => {
                trace::authenticated(&span, principal.client_id(), true);
                let expires_at = principal.expires_at();
                accept(&mut req, principal, token.map(InboundToken::new));
                State::Inner {
                    future: self.inner.call(req),
                    expires_at,
                }
            }
            Begin::Reject(error) => {
                trace::refused(&span, error.reason(), error.status().is_server_error());
                State::Rejected {
                    response: Some(self.layer.rs.challenges().reject(&error)),
                }
            }
            Begin::Verify(pending) => {
                // The ready service goes with the request; a fresh clone stays.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let rs = self.layer.rs.clone();
                let revocations = self.layer.revocations.clone();
                let replay = self.layer.dpop_replay.clone();
                if pending.is_dpop() {
                    nonce = rs.dpop_nonce();
                }
                let verifying = span.clone();
                let cached = pending.is_cached();
                State::Verifying {
                    verify: Box::pin(
                        async move {
                            let token = keep.then(|| pending.token.clone());
                            let verified = rs.finish(pending, revocations.as_ref(), replay.as_deref()).await;
                            match &verified {
                                Ok(principal) => trace::authenticated(&verifying, principal.client_id(), cached),
                                Err(error) => {
                                    trace::refused(&verifying, error.reason(), error.status().is_server_error())
                                }
                            }
                            Ok((verified?, token.map(InboundToken::new)))
                        }
                        .instrument(span),
                    ),
                    service: Some(service),
                    request: Some(req),
                }
            }
        };
        ResponseFuture {
            state,
            rs: self.layer.rs.clone(),
            nonce,
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
        // The `DPoP-Nonce` to send with the answer to a DPoP request.
        nonce: Option<String>,
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
            expires_at: SystemTime,
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
                            let expires_at = principal.expires_at();
                            accept(&mut request, principal, token);
                            State::Inner {
                                future: service.call(request),
                                expires_at,
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
                StateProj::Inner { future, expires_at } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(nonce) = this.nonce.take().and_then(|n| http::HeaderValue::from_str(&n).ok()) {
                        response.headers_mut().insert(crate::challenge::DPOP_NONCE, nonce);
                    }
                    let expires_at = *expires_at;
                    if is_event_stream(&response) {
                        return Poll::Ready(Ok(response.map(|body| BearerBody::until(body, expires_at))));
                    }
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

/// The `DPoP` proof header (RFC 9449 section 4.1).
const DPOP: header::HeaderName = header::HeaderName::from_static("dpop");

/// Whether `response` is an event stream (`text/event-stream`).
fn is_event_stream<B>(response: &Response<B>) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.as_bytes().get(..SSE.len()))
        .is_some_and(|essence| essence.eq_ignore_ascii_case(SSE))
}

/// A token valid for longer than this gets no timer (a tokio timer that far
/// out is clamped anyway); its stream ends with the connection.
const LONGEST_TIMER: Duration = Duration::from_secs(366 * 24 * 3600);

pin_project! {
    /// The response body of [`BearerAuth`]: the inner service's body, or a
    /// rejection's short JSON. An event stream ends when the caller's token
    /// expires.
    pub struct BearerBody<B> {
        #[pin]
        inner: RejectOr<B>,
        expiry: Option<Pin<Box<tokio::time::Sleep>>>,
        expired: bool,
    }
}

impl<B> BearerBody<B> {
    /// The inner service's body, unchanged.
    pub(crate) fn inner(body: B) -> Self {
        BearerBody {
            inner: RejectOr::Inner { body },
            expiry: None,
            expired: false,
        }
    }

    /// A rejection's short body.
    pub(crate) fn rejection(body: Bytes) -> Self {
        BearerBody {
            inner: RejectOr::Rejection { body: Some(body) },
            expiry: None,
            expired: false,
        }
    }

    /// The inner service's body, ended at `expires_at`.
    fn until(body: B, expires_at: SystemTime) -> Self {
        let left = expires_at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        BearerBody {
            inner: RejectOr::Inner { body },
            expiry: (!left.is_zero() && left <= LONGEST_TIMER).then(|| Box::pin(tokio::time::sleep(left))),
            expired: left.is_zero(),
        }
    }
}

impl<B> std::fmt::Debug for BearerBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerBody")
            .field("expires", &self.expiry.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for BearerBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        if let Some(expiry) = this.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            // The token that authorized this stream has expired: end it.
            *this.expired = true;
            *this.expiry = None;
            return Poll::Ready(None);
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.expiry.is_some() {
            // It may end early.
            let mut hint = http_body::SizeHint::new();
            if let Some(upper) = self.inner.size_hint().upper() {
                hint.set_upper(upper);
            }
            return hint;
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn with_type(content_type: &str) -> Response<()> {
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        response
    }

    #[test]
    fn only_event_streams_get_a_timer() {
        assert!(is_event_stream(&with_type("text/event-stream")));
        assert!(is_event_stream(&with_type("Text/Event-Stream; charset=utf-8")));
        assert!(!is_event_stream(&with_type("application/json")));
        assert!(!is_event_stream(&Response::new(())));
    }

    #[tokio::test]
    async fn a_stream_past_its_token_ends_and_a_far_one_gets_no_timer() {
        let body = http_body_util::Full::new(Bytes::from_static(b"data: x\n\n"));
        let past = SystemTime::now() - Duration::from_secs(1);
        let collected = BearerBody::until(body.clone(), past).collect().await.unwrap();
        assert!(collected.to_bytes().is_empty());
        let far = SystemTime::now() + Duration::from_secs(400 * 24 * 3600);
        let ended = BearerBody::until(body.clone(), far);
        assert!(ended.expiry.is_none());
        assert_eq!(ended.collect().await.unwrap().to_bytes(), "data: x\n\n");
        let soon = SystemTime::now() + Duration::from_secs(60);
        let open = BearerBody::until(body, soon);
        assert_eq!(open.collect().await.unwrap().to_bytes(), "data: x\n\n");
    }
}
