//! [`StepUpLayer`]: answer HTTP 403 `insufficient_scope` when the policy says

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body::Body as HttpBody;
use rmcp::model::ProtocolVersion;
use rmcp::transport::common::http_header::{
    BASE64_HEADER_PREFIX, BASE64_HEADER_SUFFIX, HEADER_MCP_METHOD, HEADER_MCP_NAME, HEADER_MCP_PROTOCOL_VERSION,
};
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::action::Action;
use super::engine::PolicyEngine;
use super::input::PolicyInput;
use crate::challenge::Challenges;
use crate::error::AuthError;
use crate::principal::Principal;
use crate::scope::advertised;

/// Adds the step-up pre-check; see the [type docs](Self).
///
/// a call needs scopes the token does not carry (MCP 2025-11-25 step-up).
///
/// [`Guarded`](super::Guarded) makes every authorization decision, but it
/// runs inside rmcp, after the HTTP status is chosen, so a denial there is a
/// JSON-RPC error. A client can only step up (re-authorize with more scopes)
/// from an HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope",
/// scope="…"`. This layer sits between the bearer layer and rmcp and looks at
/// `tools/call`, `resources/read` and `prompts/get` requests before rmcp does.
///
/// # Where the method and target come from
///
/// - **Headers (MCP 2026-07-28 and later).** When the request's
///   `MCP-Protocol-Version` header is `2026-07-28` or later (compared as
///   rmcp compares it), the method is read from `Mcp-Method` and the tool
///   or prompt name / resource URI from `Mcp-Name` (its
///   `=?base64?…?=` form decoded). The body is not read: it passes on to
///   rmcp as a stream, so the check works for a body of any size. This is
///   sound because rmcp 3.11 checks these headers against the body for
///   exactly those requests, before any handler runs, and answers a
///   missing, duplicate, undecodable or mismatching header with HTTP 400 and
///   JSON-RPC error `-32020` (`validate_standard_headers` in its Streamable
///   HTTP server, in stateless and session modes alike): a request whose
///   headers name another call than its body never reaches a tool. A
///   duplicate or invalid `Mcp-Method`/`Mcp-Name` is passed on untouched for
///   rmcp to refuse. What headers cannot carry is the arguments: when the
///   policy may read `input.arguments` (it names them, or the engine's scan
///   cannot tell), a decision without them could be wrong either way, so
///   such a policy takes the body path below instead; a requirement that
///   depends on arguments too large for it is then still enforced by
///   `Guarded`, as a JSON-RPC error rather than a 403.
/// - **Body (before 2026-07-28).** Without that header (rmcp then treats
///   the request as an older revision and does not check `Mcp-*` headers,
///   so they are not trusted here) or with an older version, the JSON-RPC
///   body is read when it is a `POST` with a `Content-Length` of at most
///   [`StepUpLayer::max_body_bytes`] (default 256 KiB); anything else is
///   passed on untouched and still decided by `Guarded`.
///
/// Then:
///
/// - the policy is evaluated (not audited here: `Guarded` audits the real
///   decision) for the caller, the method and its target;
/// - if it denies **and** names required scopes the token lacks (after
///   [scope implications](crate::oauth::ResourceServerBuilder::scope_implies)),
///   the answer is 403 with one challenge whose `scope=` names every scope
///   the resource requires plus every scope the call requires; the request
///   never reaches rmcp and one audit event records the step-up;
/// - otherwise the request goes on with its body intact.
///
/// The check is an early answer, never the only one: a request this layer
/// lets through is decided again by `Guarded`.
#[derive(Clone, Debug)]
pub struct StepUpLayer {
    challenges: Challenges,
    engine: PolicyEngine,
    max_body_bytes: usize,
}

impl StepUpLayer {
    /// A layer deciding with `engine` and answering with `challenges`
    /// ([`ResourceServer::challenges`](crate::oauth::ResourceServer::challenges)).
    pub fn new(challenges: &Challenges, engine: PolicyEngine) -> Self {
        StepUpLayer {
            challenges: challenges.clone(),
            engine,
            max_body_bytes: 256 * 1024,
        }
    }

    /// The largest body that is read for the pre-check. Defaults to 256 KiB.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

impl<S> Layer<S> for StepUpLayer {
    type Service = StepUp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StepUp {
            inner,
            layer: self.clone(),
        }
    }
}

/// The step-up middleware; see [`StepUpLayer`].
#[derive(Clone, Debug)]
pub struct StepUp<S> {
    inner: S,
    layer: StepUpLayer,
}

impl<S> StepUp<S> {
    define_inner_service_accessors!();
}

/// The action of a method that can step up.
fn action_of(method: &str) -> Option<Action> {
    match method {
        "tools/call" => Some(Action::CallTool),
        "resources/read" => Some(Action::ReadResource),
        "prompts/get" => Some(Action::GetPrompt),
        _ => None,
    }
}

/// The method, target and arguments of a JSON-RPC request that can step up.
fn target(body: &[u8]) -> Option<(Action, String, Option<Value>)> {
    let Value::Object(mut message) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let method = action_of(message.get("method")?.as_str()?)?;
    let Some(Value::Object(mut params)) = message.remove("params") else {
        return None;
    };
    let key = if method == Action::ReadResource { "uri" } else { "name" };
    let name = params.get(key)?.as_str()?.to_owned();
    Some((method, name, params.remove("arguments")))
}

/// Whether rmcp checks the `Mcp-*` headers of this request against its
/// body: exactly when `MCP-Protocol-Version` is at least 2026-07-28, the
/// same (string) comparison on the same (first) header value rmcp makes.
fn headers_are_checked(headers: &HeaderMap) -> bool {
    headers
        .get(HEADER_MCP_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|version| version >= ProtocolVersion::STANDARD_HEADERS.as_str())
}

/// The sole value of a header, if it is there exactly once and readable.
fn sole<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

/// The method and target named by `Mcp-Method` / `Mcp-Name`, when they
/// name a method that can step up; `None` for any other method and for a
/// missing, duplicate or undecodable header (rmcp refuses those with 400).
fn header_target(headers: &HeaderMap) -> Option<(Action, String)> {
    use base64::Engine as _;
    let action = action_of(sole(headers, HEADER_MCP_METHOD)?)?;
    let raw = sole(headers, HEADER_MCP_NAME)?;
    let name = match raw
        .strip_prefix(BASE64_HEADER_PREFIX)
        .and_then(|inner| inner.strip_suffix(BASE64_HEADER_SUFFIX))
    {
        Some(encoded) => String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()?,
        None => raw.to_owned(),
    };
    Some((action, name))
}

impl StepUpLayer {
    /// The scopes a step-up needs, if the policy denies for lack of them.
    fn missing_scopes(
        &self,
        principal: &Principal,
        action: Action,
        resource: String,
        arguments: Option<Value>,
    ) -> Option<(Vec<String>, String, Action)> {
        let mut input = PolicyInput::new(principal, resource.clone(), action.clone());
        if let Some(arguments) = arguments {
            input = input.with_arguments(arguments);
        }
        let decision = self.engine.evaluate(&input);
        // `offline_access` is no resource requirement: a new token could
        // not fix its absence, and no challenge names it.
        let required = || decision.required_scopes().iter().filter(|s| advertised(s));
        if decision.allowed() || required().all(|s| principal.has_scope(s)) {
            return None;
        }
        // The challenge names everything the new token needs: what the
        // resource always requires plus what this call requires.
        let mut needed: Vec<String> = self.challenges.required_scopes().to_vec();
        for scope in required() {
            if !needed.contains(scope) {
                needed.push(scope.clone());
            }
        }
        Some((needed, resource, action))
    }

    /// The 403 answer, audited.
    fn step_up<B>(
        &self,
        principal: &Principal,
        (required, resource, action): (Vec<String>, String, Action),
    ) -> Response<StepUpBody<B>> {
        crate::audit::AuditEvent::StepUp {
            principal,
            resource: &resource,
            action: action.as_str(),
            required_scopes: &required,
        }
        .emit();
        let response = self.challenges.reject(&AuthError::InsufficientScope { required });
        response.map(StepUpBody::rejection)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StepUp<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<axum::BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<StepUpBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let principal = req.extensions().get::<Principal>().cloned();
        let (Some(principal), true) = (principal, req.method() == Method::POST) else {
            let future = inner.call(req.map(Body::new));
            return Box::pin(async move { Ok(future.await?.map(StepUpBody::inner)) });
        };
        // 2026-07-28: the headers name the call (rmcp holds them to the
        // body); the body streams through unread.
        if headers_are_checked(req.headers()) && !self.layer.engine.may_read_arguments() {
            let denied = header_target(req.headers())
                .and_then(|(action, name)| self.layer.missing_scopes(&principal, action, name, None));
            if let Some(denied) = denied {
                let response = self.layer.step_up(&principal, denied);
                return Box::pin(async move { Ok(response) });
            }
            let future = inner.call(req.map(Body::new));
            return Box::pin(async move { Ok(future.await?.map(StepUpBody::inner)) });
        }
        let inspect = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|len| len <= self.layer.max_body_bytes);
        if !inspect {
            let future = inner.call(req.map(Body::new));
            return Box::pin(async move { Ok(future.await?.map(StepUpBody::inner)) });
        }
        let layer = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // Content-Length was checked; a body that lies about it fails here.
            let limited = http_body_util::Limited::new(body, layer.max_body_bytes);
            let bytes = match http_body_util::BodyExt::collect(limited).await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let response = layer
                        .challenges
                        .reject(&AuthError::InvalidRequest("unreadable request body"));
                    return Ok(response.map(StepUpBody::rejection));
                }
            };
            let denied = target(&bytes)
                .and_then(|(action, name, arguments)| layer.missing_scopes(&principal, action, name, arguments));
            if let Some(denied) = denied {
                return Ok(layer.step_up(&principal, denied));
            }
            let response = inner.call(Request::from_parts(parts, Body::from(bytes))).await?;
            Ok(response.map(StepUpBody::inner))
        })
    }
}

opaque_body! {
    /// The response body of [`StepUp`]: the inner service's body, or the 403
    /// step-up challenge.
    pub type StepUpBody<B>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_stepping_up_methods() {
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy","arguments":{"a":1}}}"#;
        let (action, name, args) = target(call).unwrap();
        assert_eq!((action, name.as_str()), (Action::CallTool, "deploy"));
        assert_eq!(args, Some(serde_json::json!({"a": 1})));
        let read = br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#;
        assert_eq!(target(read).unwrap().1, "file:///x");
        assert!(target(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).is_none());
        assert!(target(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call"}]"#).is_none());
        assert!(target(b"not json").is_none());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn headers_are_trusted_from_2026_07_28_on() {
        assert!(headers_are_checked(&headers(&[("MCP-Protocol-Version", "2026-07-28")])));
        assert!(headers_are_checked(&headers(&[("mcp-protocol-version", "2027-01-01")])));
        assert!(!headers_are_checked(&headers(&[(
            "MCP-Protocol-Version",
            "2025-11-25"
        )])));
        assert!(!headers_are_checked(&headers(&[])));
    }

    #[test]
    fn targets_from_headers() {
        let t = header_target(&headers(&[("Mcp-Method", "tools/call"), ("Mcp-Name", "deploy")]));
        assert_eq!(t, Some((Action::CallTool, "deploy".to_owned())));
        // "café" as rmcp's client sends a non-ASCII name.
        let t = header_target(&headers(&[
            ("Mcp-Method", "prompts/get"),
            ("Mcp-Name", "=?base64?Y2Fmw6k=?="),
        ]));
        assert_eq!(t, Some((Action::GetPrompt, "café".to_owned())));
        let t = header_target(&headers(&[("Mcp-Method", "resources/read"), ("Mcp-Name", "file:///x")]));
        assert_eq!(t, Some((Action::ReadResource, "file:///x".to_owned())));
        for pass_through in [
            headers(&[("Mcp-Method", "tools/list")]),
            headers(&[("Mcp-Method", "tools/call")]),
            headers(&[("Mcp-Name", "deploy")]),
            headers(&[("Mcp-Method", "tools/call"), ("Mcp-Name", "a"), ("Mcp-Name", "b")]),
            headers(&[
                ("Mcp-Method", "tools/call"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "a"),
            ]),
            headers(&[("Mcp-Method", "tools/call"), ("Mcp-Name", "=?base64?!!!?=")]),
        ] {
            assert_eq!(header_target(&pass_through), None, "{pass_through:?}");
        }
    }
}
