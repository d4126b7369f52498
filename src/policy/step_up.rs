//! [`StepUpLayer`]: answer HTTP 403 `insufficient_scope` when the policy says

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::Body as HttpBody;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::action::Action;
use super::engine::PolicyEngine;
use super::input::PolicyInput;
use crate::challenge::Challenges;
use crate::error::AuthError;
use crate::principal::Principal;

/// Adds the step-up pre-check; see the [type docs](Self).
///
/// a call needs scopes the token does not carry (MCP 2025-11-25 step-up).
///
/// [`Guarded`](super::Guarded) makes every authorization decision, but it
/// runs inside rmcp, after the HTTP status is chosen, so a denial there is a
/// JSON-RPC error. A client can only step up (re-authorize with more scopes)
/// from an HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope",
/// scope="…"`. This layer sits between the bearer layer and rmcp and looks at
/// `tools/call`, `resources/read` and `prompts/get` requests before rmcp does:
///
/// - the body is read only when it is a `POST` with a `Content-Length` of at
///   most [`StepUpLayer::max_body_bytes`] (default 256 KiB); anything else is
///   passed on untouched and still decided by `Guarded`;
/// - the policy is evaluated (not audited here: `Guarded` audits the real
///   decision) for the caller, the method and its target;
/// - if it denies **and** names required scopes the token lacks, the answer
///   is 403 with the challenge; the request never reaches rmcp and one audit
///   event records the step-up;
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

/// The method, target and arguments of a JSON-RPC request that can step up.
fn target(body: &[u8]) -> Option<(Action, String, Option<Value>)> {
    let Value::Object(mut message) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let method = match message.get("method")?.as_str()? {
        "tools/call" => Action::CallTool,
        "resources/read" => Action::ReadResource,
        "prompts/get" => Action::GetPrompt,
        _ => return None,
    };
    let Some(Value::Object(mut params)) = message.remove("params") else {
        return None;
    };
    let key = if method == Action::ReadResource { "uri" } else { "name" };
    let name = params.get(key)?.as_str()?.to_owned();
    Some((method, name, params.remove("arguments")))
}

impl StepUpLayer {
    /// The scopes a step-up needs, if the policy denies for lack of them.
    fn missing_scopes(&self, principal: &Principal, body: &[u8]) -> Option<(Vec<String>, String, Action)> {
        let (action, resource, arguments) = target(body)?;
        let mut input = PolicyInput::new(principal, resource.clone(), action.clone());
        if let Some(arguments) = arguments {
            input = input.with_arguments(arguments);
        }
        let decision = self.engine.evaluate(&input);
        if decision.allowed() || decision.required_scopes().iter().all(|s| principal.has_scope(s)) {
            return None;
        }
        // The challenge names everything the new token needs: what the
        // resource always requires plus what this call requires.
        let mut needed: Vec<String> = self.challenges.required_scopes().to_vec();
        for scope in decision.required_scopes() {
            if !needed.contains(scope) {
                needed.push(scope.clone());
            }
        }
        Some((needed, resource, action))
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
        let inspect = req.method() == Method::POST
            && req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|len| len <= self.layer.max_body_bytes);
        let principal = req.extensions().get::<Principal>().cloned();
        let (Some(principal), true) = (principal, inspect) else {
            let future = inner.call(req.map(Body::new));
            return Box::pin(async move { Ok(future.await?.map(StepUpBody::inner)) });
        };
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
            if let Some((required, resource, action)) = layer.missing_scopes(&principal, &bytes) {
                crate::audit::AuditEvent::StepUp {
                    principal: &principal,
                    resource: &resource,
                    action: action.as_str(),
                    required_scopes: &required,
                }
                .emit();
                let response = layer.challenges.reject(&AuthError::InsufficientScope { required });
                return Ok(response.map(StepUpBody::rejection));
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
}
