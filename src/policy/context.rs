//! The authorization context of the request being handled, for checks made
//! from inside a tool body (`#[require_permission]`).
//!
//! [`Guarded`](super::Guarded) runs the inner handler's `call_tool`,
//! `read_resource` and `get_prompt` inside a Tokio task-local scope holding
//! the engine, the principal and the request's arguments. A tool (or the
//! code `#[require_permission]` generates) calls [`require_permission`]
//! without any change to its signature. Outside such a scope (a handler not
//! wrapped in `Guarded`, or work moved to another task with `tokio::spawn`)
//! there is no context and every check **denies**.

use std::future::Future;

use rmcp::ErrorData;
use serde_json::Value;

use super::action::Action;
use super::decision::{Decision, reason};
use super::engine::PolicyEngine;
use super::input::PolicyInput;
use crate::Principal;
#[cfg(test)]
use crate::error::PERMISSION_DENIED;
use crate::error::Rejection;
use crate::scope::advertised;

/// The JSON-RPC error for a denial: a short message that names neither the
/// policy's reasons nor whether the target exists.
pub(crate) fn denial_error(decision: &Decision) -> ErrorData {
    Rejection::Forbidden {
        // Never `offline_access`: not a resource requirement.
        required_scopes: decision
            .required_scopes()
            .iter()
            .filter(|s| advertised(s))
            .cloned()
            .collect(),
    }
    .into()
}

/// What a check inside a request needs: who asks, and which policy answers.
#[derive(Debug, Clone)]
pub(crate) struct AuthzContext {
    pub(crate) engine: PolicyEngine,
    pub(crate) principal: Principal,
    pub(crate) session_id: Option<String>,
    /// The arguments of the tool call or prompt being handled.
    pub(crate) arguments: Option<Value>,
}

tokio::task_local! {
    static CONTEXT: AuthzContext;
}

/// Make the inner handler's future with `make` and run it, both with
/// `context` as the current authorization context: a handler whose method
/// does its work when called (not when polled) does it inside the scope
/// too. The future holds `make`'s captures until its first poll, then the
/// made future in the same place.
pub(crate) fn scope<M, F>(
    context: AuthzContext,
    make: M,
) -> tokio::task::futures::TaskLocalFuture<AuthzContext, Made<M, F>>
where
    M: FnOnce() -> F,
    F: Future,
{
    CONTEXT.scope(context, Made::Make { make: Some(make) })
}

pin_project_lite::pin_project! {
    /// A future made at its first poll; see [`scope`].
    #[project = MadeProj]
    pub(crate) enum Made<M, F> {
        Make { make: Option<M> },
        Run { #[pin] future: F },
    }
}

impl<M, F> Future for Made<M, F>
where
    M: FnOnce() -> F,
    F: Future,
{
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        loop {
            match self.as_mut().project() {
                MadeProj::Make { make } => {
                    // Taken once: the state becomes `Run` right after.
                    let Some(make) = make.take() else {
                        unreachable!("a Made future is made once");
                    };
                    let future = make();
                    self.set(Made::Run { future });
                }
                MadeProj::Run { future } => return future.poll(cx),
            }
        }
    }
}

/// The principal of the request being handled, when inside a
/// [`Guarded`](super::Guarded) handler's tool, resource or prompt handler.
#[cfg(test)]
fn current_principal() -> Option<Principal> {
    CONTEXT.try_with(|c| c.principal.clone()).ok()
}

/// Decide whether the current caller may perform `action` on `resource`,
/// and emit one audit event.
///
/// This is what `#[require_permission(resource = "...", action = "...")]`
/// calls before the tool body. The policy sees `input.action = action`,
/// `input.resource = resource` and `input.arguments = arguments`, or, when
/// `arguments` is `None`, the arguments of the tool call being handled.
///
/// # Errors
///
/// A JSON-RPC error with code [`PERMISSION_DENIED`](crate::PERMISSION_DENIED) when the policy denies,
/// and also when there is no authorization context (fail closed): the
/// handler is not wrapped in [`Guarded`](super::Guarded), or the check runs
/// in a task spawned away from the request.
pub async fn require_permission(resource: &str, action: Action, arguments: Option<&Value>) -> Result<(), ErrorData> {
    let decision = CONTEXT.try_with(|c| {
        let mut input = PolicyInput::new(&c.principal, resource, action.clone());
        if let Some(args) = arguments.or(c.arguments.as_ref()) {
            input = input.with_arguments(args.clone());
        }
        if let Some(session) = &c.session_id {
            input = input.with_session_id(session.clone());
        }
        c.engine.decide(&input)
    });
    match decision {
        // A check inside a tool cannot ask the user: refused.
        Ok(d) if d.confirmation_required() => CONTEXT
            .try_with(|c| super::confirm::unconfirmable(&c.principal, &action, resource))
            .map_or_else(|_| Err(denial_error(&d)), Err),
        Ok(d) if d.allowed() => Ok(()),
        Ok(d) => Err(denial_error(&d)),
        Err(_) => {
            crate::audit::AuditEvent::PolicyDecision {
                principal: None,
                resource,
                action: action.as_str(),
                outcome: crate::audit::Outcome::Error,
                reason: reason::NO_CONTEXT,
                policy_version: "",
                duration_us: 0,
                cached: false,
            }
            .emit();
            Err(denial_error(&Decision::deny_without_policy(reason::NO_CONTEXT)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_context_denies() {
        let err = require_permission("github", Action::custom("read"), None)
            .await
            .unwrap_err();
        assert_eq!(err.code, PERMISSION_DENIED);
        assert!(current_principal().is_none());
    }

    /// `Guarded` makes the inner handler's future inside the scope: a
    /// handler method that works when called (a tool with a synchronous
    /// body checking a permission) finds the context as one that works when
    /// polled does. A future made before entering the scope would not.
    #[tokio::test]
    async fn scope_makes_and_runs_the_future_inside_the_scope() {
        let engine = PolicyEngine::builder()
            .module("p.rego", "package mcp.authz\nallow := false")
            .build()
            .unwrap();
        let ctx = || AuthzContext {
            engine: engine.clone(),
            principal: Principal::unverified("i", "alice").build(),
            session_id: None,
            arguments: None,
        };
        let subject = || current_principal().map(|p| p.subject().to_owned());
        let make = || {
            let when_made = subject();
            async move { (when_made, subject()) }
        };
        let alice = Some("alice".to_owned());
        assert_eq!(scope(ctx(), make).await, (alice.clone(), alice.clone()));
        assert_eq!(CONTEXT.scope(ctx(), make()).await, (None, alice));
    }

    #[tokio::test]
    async fn context_decides_with_the_call_arguments() {
        let engine = PolicyEngine::builder()
            .module(
                "p.rego",
                "package mcp.authz\nallow if { input.action == \"write\"; input.arguments.n < 10 }",
            )
            .build()
            .unwrap();
        let who = Principal::unverified("i", "alice").build();
        let ctx = |n: i64| AuthzContext {
            engine: engine.clone(),
            principal: who.clone(),
            session_id: None,
            arguments: Some(serde_json::json!({ "n": n })),
        };
        let ok = CONTEXT
            .scope(ctx(1), async {
                assert_eq!(current_principal().unwrap().subject(), "alice");
                require_permission("x", Action::custom("write"), None).await
            })
            .await;
        assert!(ok.is_ok());
        let denied = CONTEXT
            .scope(ctx(50), require_permission("x", Action::custom("write"), None))
            .await;
        assert_eq!(denied.unwrap_err().code, PERMISSION_DENIED);
        let explicit = serde_json::json!({ "n": 2 });
        let ok = CONTEXT
            .scope(
                ctx(50),
                require_permission("x", Action::custom("write"), Some(&explicit)),
            )
            .await;
        assert!(ok.is_ok());
    }

    #[test]
    fn denial_error_names_scopes_only() {
        let engine = PolicyEngine::default_policy("mcp:tools").unwrap();
        let who = Principal::unverified("i", "s").build();
        let d = engine.evaluate(&PolicyInput::new(&who, "secret_tool", Action::CallTool));
        let e = denial_error(&d);
        assert_eq!(e.message, "permission denied");
        let data = e.data.unwrap();
        assert_eq!(data["error"], "insufficient_scope");
        assert_eq!(data["scope"], "mcp:tools");
        assert!(!data.to_string().contains("secret_tool"));
    }

    #[test]
    fn denial_error_never_names_offline_access() {
        let engine = PolicyEngine::builder()
            .module(
                "p.rego",
                "package mcp.authz\nimport rego.v1\ndefault allow := false\nrequired_scopes contains s if some s in [\"offline_access\", \"mcp:deploy\"]\n",
            )
            .build()
            .unwrap();
        let who = Principal::unverified("i", "s").build();
        let d = engine.evaluate(&PolicyInput::new(&who, "deploy", Action::CallTool));
        let data = denial_error(&d).data.unwrap();
        assert_eq!(data["scope"], "mcp:deploy", "{data}");
    }
}
