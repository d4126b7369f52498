//! [`RequestLimitLayer`]: the tower plumbing around the budgets (in memory,
//! or in Redis through [`fleet`](super::fleet)), and [`check_tool`] for the
//! per-tool limits inside the handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "redis")]
use super::fleet::{Fleet, Lease};
use super::table::{Bucket, Counters, Over, Permit, Table, Who};
use super::{CallerLimits, RATE_LIMITED, RequestLimits};
use crate::audit::{AuditEvent, Outcome};
use crate::body::RejectOr;
use crate::cache::Timestamp;
use crate::principal::Principal;

/// The limits and the budgets, shared by every clone of the layer.
struct Shared {
    limits: RequestLimits,
    table: Table,
    /// Whether any limit is on (else every request passes untouched).
    active: bool,
    /// The budgets in Redis, when the limits have a shared store.
    #[cfg(feature = "redis")]
    fleet: Option<Fleet>,
}

impl Shared {
    /// The limits for `principal`: the configured ones, overlaid by the
    /// source's answer when it has one.
    fn limits_for(&self, principal: &Principal) -> CallerLimits {
        let configured = self.limits.caller;
        let Some(source) = &self.limits.source else {
            return configured;
        };
        match source.limits(principal) {
            Ok(Some(limits)) => configured.overlaid(limits),
            Ok(None) => configured,
            Err(error) => {
                tracing::warn!(%error, subject = principal.subject(), "limit source failed; using the configured limits");
                configured
            }
        }
    }

    /// The budget of `key` (made for `principal`'s limits when there is
    /// none), remade when the source's answer is due and has changed.
    fn bucket(&self, principal: &Principal, key: &Who, now: Timestamp) -> Arc<Bucket> {
        let recheck = now.saturating_add(self.limits.source_ttl);
        let bucket = match self.table.get(key, now) {
            Some(bucket) => bucket,
            None => {
                // Asked outside the table's lock: a source may take a while.
                let limits = self.limits_for(principal);
                self.table
                    .bucket(key.clone(), now, || Bucket::new(limits, Counters::default(), recheck))
            }
        };
        if self.limits.source.is_some() && bucket.recheck_at.load(Ordering::Relaxed) <= now.millis() {
            bucket.recheck_at.store(recheck.millis(), Ordering::Relaxed);
            let limits = self.limits_for(principal);
            if limits != bucket.limits {
                // The rate starts afresh; requests in flight stay counted.
                let fresh = Bucket::new(limits, bucket.counters(), recheck);
                self.table.replace(key.clone(), fresh.clone(), now);
                return fresh;
            }
        }
        bucket
    }

    /// Count one request of `principal` against its budget; a `stream`
    /// (a `GET`) needs room in flight but holds a stream permit instead.
    fn admit(&self, principal: &Principal, stream: bool) -> Result<Option<Held>, Over> {
        let now = Timestamp::now();
        let key = Who::of(principal, self.limits.by_tenant);
        let bucket = self.bucket(principal, &key, now);
        bucket.take()?;
        let permit = bucket.enter()?;
        if stream {
            drop(permit);
            return Ok(bucket.open_stream()?.map(Held::Local));
        }
        Ok(permit.map(Held::Local))
    }

    /// The limits of `principal` in a fleet: the configured ones, or the
    /// source's answer kept in the table for its TTL.
    #[cfg(feature = "redis")]
    fn fleet_limits(&self, principal: &Principal, key: &Who) -> CallerLimits {
        if self.limits.source.is_none() {
            return self.limits.caller;
        }
        self.bucket(principal, key, Timestamp::now()).limits
    }

    /// [`admit`](Self::admit) in Redis: one round trip; a store error
    /// refuses with 503 (or, with the dangerous fail-open, lets the
    /// request through uncounted), audited either way.
    #[cfg(feature = "redis")]
    async fn admit_fleet(
        self: Arc<Self>,
        principal: Principal,
        key: Who,
        limits: CallerLimits,
        stream: bool,
    ) -> Admission {
        let Some(fleet) = &self.fleet else {
            return Admission::Pass(None);
        };
        match fleet.admit(&key, limits, stream).await {
            Ok(Ok(lease)) => Admission::Pass(lease.map(Held::Fleet)),
            Ok(Err(over)) => {
                audit(&principal, Outcome::Deny, over.reason(), "", over.retry_after_secs());
                Admission::Refuse(too_many(over))
            }
            Err(error) => {
                let outcome = if self.limits.fail_open {
                    Outcome::Allow
                } else {
                    Outcome::Error
                };
                audit(&principal, outcome, error.reason(), "", error.retry_after_secs());
                if self.limits.fail_open {
                    return Admission::Pass(None);
                }
                Admission::Refuse(error.response())
            }
        }
    }
}

/// A permit held by a response body: this replica's counter, or a lease in
/// Redis.
enum Held {
    Local(#[allow(dead_code)] Permit),
    #[cfg(feature = "redis")]
    Fleet(#[allow(dead_code)] Lease),
}

/// What an admission in Redis decided.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
enum Admission {
    /// Call the inner service, holding the permit (if any) until the body ends.
    Pass(Option<Held>),
    /// Answer this (429, or 503 for a store error).
    Refuse(Response<Bytes>),
}

type AdmitFuture = Pin<Box<dyn Future<Output = Admission> + Send>>;

/// Enforces [`RequestLimits`]; see the [module docs](super).
///
/// Cheap to clone: clones share the budgets.
#[derive(Clone)]
pub struct RequestLimitLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RequestLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimitLayer")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl RequestLimitLayer {
    /// A layer enforcing `limits`, with budgets of its own.
    pub fn new(limits: RequestLimits) -> Self {
        let active = limits.caller != CallerLimits::new() || limits.has_tool_limits() || limits.has_source();
        #[cfg(feature = "redis")]
        let fleet = limits.store.redis_store().map(|store| Fleet::new(store.clone()));
        RequestLimitLayer {
            shared: Arc::new(Shared {
                table: Table::new(limits.capacity),
                limits,
                active,
                #[cfg(feature = "redis")]
                fleet,
            }),
        }
    }
}

impl<S> Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The request-limit middleware; see [`RequestLimitLayer`].
#[derive(Clone)]
pub struct RequestLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RequestLimit<S> {
    define_inner_service_accessors!();
}

impl<S> std::fmt::Debug for RequestLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimit").finish_non_exhaustive()
    }
}

/// HTTP 429 with `Retry-After` and a short JSON-RPC error.
fn too_many(over: Over) -> Response<Bytes> {
    let retry_after = over.retry_after_secs();
    let error = match over {
        Over::Rate(_) => "rate_limited",
        Over::InFlight => "too_many_in_flight",
        Over::Streams => "too_many_streams",
    };
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":{},"message":"too many requests","data":{{"error":"{error}","retry_after":{retry_after}}}}}}}"#,
        RATE_LIMITED.0
    );
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

fn audit(principal: &Principal, outcome: Outcome, reason: &str, resource: &str, retry_after_secs: u64) {
    AuditEvent::Limit {
        principal,
        outcome,
        reason,
        resource,
        retry_after_secs,
    }
    .emit();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<RequestLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        // No principal: the bearer layer is not outside this one; whatever
        // decides inside refuses an unauthenticated request.
        let principal = match req.extensions().get::<Principal>() {
            Some(principal) if shared.active => principal.clone(),
            _ => return ResponseFuture::inner(self.inner.call(req), None),
        };
        // A GET's stream holds a stream permit, not an in-flight one (module docs).
        let stream = req.method() == Method::GET;
        #[cfg(feature = "redis")]
        if shared.fleet.is_some() {
            let key = Who::of(&principal, shared.limits.by_tenant);
            let limits = shared.fleet_limits(&principal, &key);
            if shared.limits.has_tool_limits() {
                req.extensions_mut().insert(ToolBudget {
                    shared: shared.clone(),
                    who: key.clone(),
                    principal: principal.clone(),
                });
            }
            if limits.rate.is_none() && limits.in_flight.is_none() {
                return ResponseFuture::inner(self.inner.call(req), None);
            }
            // The ready service goes with the request; a fresh clone stays.
            let clone = self.inner.clone();
            let service = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture {
                state: State::Admitting {
                    admit: Box::pin(shared.clone().admit_fleet(principal, key, limits, stream)),
                    service: Some(service),
                    request: Some(req),
                },
            };
        }
        let permit = match shared.admit(&principal, stream) {
            Ok(permit) => permit,
            Err(over) => {
                audit(&principal, Outcome::Deny, over.reason(), "", over.retry_after_secs());
                return ResponseFuture::refused(too_many(over));
            }
        };
        if shared.limits.has_tool_limits() {
            let who = Who::of(&principal, shared.limits.by_tenant);
            req.extensions_mut().insert(ToolBudget {
                shared: shared.clone(),
                who,
                principal,
            });
        }
        ResponseFuture::inner(self.inner.call(req), permit)
    }
}

pin_project! {
    /// The response future of [`RequestLimit`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // In Redis: the admission, then the ready service gets the request.
        Admitting {
            admit: AdmitFuture,
            service: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        Inner {
            #[pin]
            future: S::Future,
            permit: Option<Held>,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn inner(future: S::Future, permit: Option<Held>) -> Self {
        ResponseFuture {
            state: State::Inner { future, permit },
        }
    }

    fn refused(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<S, ReqBody> std::fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, B> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
{
    type Output = Result<Response<RequestLimitBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting {
                    admit,
                    service,
                    request,
                } => {
                    let next = match (ready!(admit.as_mut().poll(cx)), service.take(), request.take()) {
                        (Admission::Pass(permit), Some(mut service), Some(request)) => State::Inner {
                            future: service.call(request),
                            permit,
                        },
                        (Admission::Refuse(response), _, _) => State::Refused {
                            response: Some(response),
                        },
                        // Polled again after the request was handed on:
                        // cannot happen (the state changes first); refuse,
                        // don't panic.
                        _ => State::Refused { response: None },
                    };
                    this.state.set(next);
                }
                StateProj::Inner { future, permit } => {
                    let response = ready!(future.poll(cx))?;
                    let permit = permit.take();
                    return Poll::Ready(Ok(response.map(|body| RequestLimitBody {
                        inner: RejectOr::Inner { body },
                        permit,
                    })));
                }
                StateProj::Refused { response } => {
                    // Invariant: a future is not polled again after `Ready`; if
                    // it is, it answers an empty 429 rather than panic.
                    let response = response.take().unwrap_or_else(|| too_many(Over::InFlight));
                    return Poll::Ready(Ok(response.map(|body| RequestLimitBody {
                        inner: RejectOr::Rejection { body: Some(body) },
                        permit: None,
                    })));
                }
            }
        }
    }
}

pin_project! {
    /// The response body of [`RequestLimit`]: the inner body, holding the
    /// request's in-flight permit until it ends or is dropped; or a 429's.
    pub struct RequestLimitBody<B> {
        #[pin]
        inner: RejectOr<B>,
        permit: Option<Held>,
    }
}

impl<B> std::fmt::Debug for RequestLimitBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimitBody").finish_non_exhaustive()
    }
}

impl<B> Body for RequestLimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // The end, or a broken stream: the request is over.
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The per-tool budgets of the caller of one request: the limit layer puts
/// it in the request extensions when per-tool limits are configured, and
/// [`check_tool`] finds it there.
#[derive(Clone)]
pub struct ToolBudget {
    shared: Arc<Shared>,
    who: Who,
    principal: Principal,
}

impl std::fmt::Debug for ToolBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolBudget").finish_non_exhaustive()
    }
}

impl ToolBudget {
    /// Count one call of `tool`; over its rate, the JSON-RPC error
    /// [`RATE_LIMITED`] (and one audit event). A tool without a limit
    /// passes and keeps no state. With a shared store the count is kept in
    /// Redis (one round trip); when Redis fails, the call is refused with a
    /// JSON-RPC error (code `-32000`, `data.error` the store's reason) unless
    /// the limits [fail open](super::DangerousRequestLimits::fail_open_on_store_error).
    ///
    /// # Errors
    ///
    /// Over the tool's rate, or the shared store failed.
    pub async fn check(&self, tool: &str) -> Result<(), rmcp::ErrorData> {
        let Some(rate) = self.shared.limits.tools.get(tool) else {
            return Ok(());
        };
        let key = self.who.with_tool(tool);
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.shared.fleet {
            return match fleet.take(&key, *rate).await {
                Ok(taken) => taken.map_err(|over| self.over(over, tool)),
                Err(error) => {
                    let fail_open = self.shared.limits.fail_open;
                    let outcome = if fail_open { Outcome::Allow } else { Outcome::Error };
                    audit(&self.principal, outcome, error.reason(), tool, error.retry_after_secs());
                    if fail_open {
                        return Ok(());
                    }
                    Err(rmcp::ErrorData::new(
                        rmcp::model::ErrorCode(-32000),
                        "temporarily unavailable",
                        Some(serde_json::json!({
                            "error": error.reason(),
                            "tool": tool,
                            "retry_after": error.retry_after_secs(),
                        })),
                    ))
                }
            };
        }
        let now = Timestamp::now();
        let bucket = self.shared.table.bucket(key, now, || {
            Bucket::new(
                CallerLimits::new().with_rate(*rate),
                Counters::default(),
                Timestamp::MAX,
            )
        });
        bucket.take().map_err(|over| self.over(over, tool))
    }

    /// Audit `over` and answer [`RATE_LIMITED`].
    fn over(&self, over: Over, tool: &str) -> rmcp::ErrorData {
        audit(
            &self.principal,
            Outcome::Deny,
            over.reason(),
            tool,
            over.retry_after_secs(),
        );
        rmcp::ErrorData::new(
            RATE_LIMITED,
            "rate limited",
            Some(serde_json::json!({
                "error": "rate_limited",
                "tool": tool,
                "retry_after": over.retry_after_secs(),
            })),
        )
    }
}

/// Count one call of `tool` against the caller's per-tool budget, found in
/// the request `extensions` (those of rmcp's request context: the HTTP
/// request's, which rmcp copies there, or a [`ToolBudget`] inserted
/// directly). Without one (no per-tool limits, or no limit layer) the call
/// passes. [`Guarded`](crate::policy::Guarded) calls this for every allowed
/// `tools/call`; a handler without a policy calls it at the top of its
/// `call_tool`: `check_tool(&context.extensions, &request.name).await?`.
/// Async since the count may be kept in Redis (a fleet); in memory it
/// answers at once.
///
/// # Errors
///
/// The JSON-RPC error [`RATE_LIMITED`] over the tool's rate; a JSON-RPC
/// error `-32000` when the shared store failed (see [`ToolBudget::check`]).
pub async fn check_tool(extensions: &rmcp::model::Extensions, tool: &str) -> Result<(), rmcp::ErrorData> {
    match tool_budget(extensions) {
        Some(budget) => budget.check(tool).await,
        None => Ok(()),
    }
}

/// The per-tool budget [`check_tool`] counts against, if the request has one.
pub(crate) fn tool_budget(extensions: &rmcp::model::Extensions) -> Option<&ToolBudget> {
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<ToolBudget>())
        .or_else(|| extensions.get::<ToolBudget>())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn service() -> RequestLimit<impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone>
    {
        let limits = RequestLimits::default().in_flight(1);
        RequestLimitLayer::new(limits).layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"answer"))))
        }))
    }

    fn request(method: Method, who: &str) -> Request<()> {
        let mut req = Request::builder().method(method).uri("/mcp").body(()).unwrap();
        req.extensions_mut()
            .insert(Principal::unverified("https://idp", who).build());
        req
    }

    #[tokio::test]
    async fn a_post_holds_its_permit_until_its_body_ends_a_get_holds_a_stream_permit() {
        let service = service();
        let held = service.clone().oneshot(request(Method::POST, "alice")).await.unwrap();
        assert_eq!(held.status(), 200);
        let refused = service.clone().oneshot(request(Method::POST, "alice")).await.unwrap();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        // Someone else is not affected.
        let bob = service.clone().oneshot(request(Method::POST, "bob")).await.unwrap();
        assert_eq!(bob.status(), 200);
        // The body read to its end releases the permit.
        let body = http_body_util::BodyExt::collect(held.into_body()).await.unwrap();
        assert_eq!(body.to_bytes(), "answer");
        let next = service.clone().oneshot(request(Method::POST, "alice")).await.unwrap();
        assert_eq!(next.status(), 200);
        drop(next);

        // A GET stream holds a stream permit, not an in-flight one: calls go
        // on, but open streams are bounded too (rmcp keeps 33 per session).
        let stream = service.clone().oneshot(request(Method::GET, "carol")).await.unwrap();
        assert_eq!(stream.status(), 200);
        let call = service.clone().oneshot(request(Method::POST, "carol")).await.unwrap();
        assert_eq!(call.status(), 200);
        drop(call);
        let second = service.clone().oneshot(request(Method::GET, "carol")).await.unwrap();
        assert_eq!(second.status(), 429);
        drop(stream);
        let again = service.clone().oneshot(request(Method::GET, "carol")).await.unwrap();
        assert_eq!(again.status(), 200);
    }

    /// Redis that refuses connections (port 1 on loopback): every admission
    /// fails; fail closed is 503 with `Retry-After`, the dangerous fail-open
    /// serves. A caller without limits needs no Redis at all.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_dead_store_refuses_with_503_unless_failing_open() {
        use crate::store::{RedisConfig, SharedStore};
        let dead = || SharedStore::redis(RedisConfig::new("redis://127.0.0.1:1")).unwrap();
        let ok =
            || service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) });
        let closed = RequestLimitLayer::new(RequestLimits::default().shared(dead())).layer(ok());
        for _ in 0..5 {
            let response = closed.clone().oneshot(request(Method::POST, "alice")).await.unwrap();
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        }
        let open = RequestLimits::default()
            .shared(dead())
            .dangerous()
            .fail_open_on_store_error();
        let open = RequestLimitLayer::new(open).layer(ok());
        for _ in 0..5 {
            let response = open.clone().oneshot(request(Method::POST, "alice")).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        let none = RequestLimits::default()
            .dangerous()
            .no_rate()
            .dangerous()
            .no_in_flight();
        let none = RequestLimitLayer::new(none.shared(dead())).layer(ok());
        assert_eq!(
            none.oneshot(request(Method::POST, "alice")).await.unwrap().status(),
            200
        );
    }

    #[tokio::test]
    async fn without_a_principal_or_with_limits_off_requests_pass() {
        let off = RequestLimitLayer::new(RequestLimits::default().in_flight(1).dangerous().unlimited()).layer(
            service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }),
        );
        let mut held = Vec::new();
        for _ in 0..3 {
            let response = off.clone().oneshot(request(Method::POST, "alice")).await.unwrap();
            assert_eq!(response.status(), 200);
            held.push(response);
        }
        let anonymous = Request::post("/mcp").body(()).unwrap();
        assert_eq!(service().oneshot(anonymous).await.unwrap().status(), 200);
    }
}
