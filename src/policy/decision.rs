//! The result of one policy evaluation.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Outcome;

/// Why a decision denied without the policy saying so.
pub(crate) mod reason {
    /// The policy raised an error while evaluating.
    pub(crate) const EVAL_ERROR: &str = "policy_error";
    /// The entrypoint was undefined for this input (and has no default).
    pub(crate) const UNDEFINED: &str = "policy_undefined";
    /// The entrypoint evaluated to something other than a boolean.
    pub(crate) const NOT_BOOLEAN: &str = "policy_not_boolean";
    /// The policy's VM allowed but its interpreter did not confirm.
    pub(crate) const NOT_CONFIRMED: &str = "policy_not_confirmed";
    /// The policy denied and gave no reason.
    pub(crate) const DENIED: &str = "denied_by_policy";
    /// The request carried no authenticated principal.
    pub(crate) const NO_PRINCIPAL: &str = "no_principal";
    /// No authorization context was in scope (`require_permission`).
    pub(crate) const NO_CONTEXT: &str = "no_authorization_context";
}

/// What the policy says, shared by memoized decisions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// [`Outcome::Error`] when the policy itself did not yield a boolean
    /// (error, undefined, wrong type) or was not evaluated: never memoized.
    pub(crate) outcome: Outcome,
    pub(crate) reasons: Vec<String>,
    pub(crate) required_scopes: Vec<String>,
    /// An allow the user must confirm first (the confirmation rule).
    pub(crate) confirm: bool,
}

impl Answer {
    /// A denial for want of a decision.
    pub(crate) fn fault(reason: &str) -> Self {
        Self {
            outcome: Outcome::Error,
            reasons: vec![reason.to_owned()],
            required_scopes: Vec::new(),
            confirm: false,
        }
    }
}

/// One authorization decision.
///
/// ```
/// # fn main() -> Result<(), rmcp_guard::ConfigError> {
/// use rmcp_guard::Principal;
/// use rmcp_guard::policy::{Action, PolicyEngine, PolicyInput};
///
/// let engine = PolicyEngine::rbac_example()?;
/// let bob = Principal::unverified("https://idp", "bob").groups(["service-desk"]).scopes(["mcp:tools"]).build();
/// let d = engine.decide(&PolicyInput::new(&bob, "deploy_template", Action::CallTool));
/// assert!(!d.allowed());
/// assert!(d.policy_version().starts_with("sha256:"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Decision {
    pub(crate) answer: Arc<Answer>,
    pub(crate) policy_version: Arc<str>,
    pub(crate) duration: Duration,
    pub(crate) cached: bool,
}

impl Decision {
    /// A denial made without evaluating a policy (no principal, no context).
    pub(crate) fn deny_without_policy(reason: &str) -> Self {
        Self {
            answer: Arc::new(Answer::fault(reason)),
            policy_version: Arc::from(""),
            duration: Duration::ZERO,
            cached: false,
        }
    }

    /// Whether the action is allowed. Anything but a policy's `true` is `false`.
    pub fn allowed(&self) -> bool {
        self.answer.outcome == Outcome::Allow
    }

    /// Allow, deny, or error (the policy did not yield a boolean, or was
    /// not evaluated; this always denies).
    pub fn outcome(&self) -> Outcome {
        self.answer.outcome
    }

    /// The first reason for the decision, if any.
    ///
    /// For a denial this is what the policy's reasons rule gave, or one of
    /// `denied_by_policy`, `policy_error`, `policy_undefined`,
    /// `policy_not_boolean`, `policy_not_confirmed`, `no_principal`,
    /// `no_authorization_context`.
    pub fn reason(&self) -> Option<&str> {
        self.answer.reasons.first().map(String::as_str)
    }

    /// Every reason the policy gave, sorted.
    pub fn reasons(&self) -> &[String] {
        &self.answer.reasons
    }

    /// Scopes that would grant the action, from the policy's
    /// required-scopes rule (for a step-up `insufficient_scope` challenge).
    pub fn required_scopes(&self) -> &[String] {
        &self.answer.required_scopes
    }

    /// Whether the user must confirm this allowed action before it runs:
    /// the policy's confirmation rule
    /// ([`PolicyEngineBuilder::confirm_rule`](super::PolicyEngineBuilder::confirm_rule))
    /// said `true`, failed, or gave something other than a boolean. Always
    /// `false` for a denial. [`Guarded`](super::Guarded) asks the user
    /// through MCP elicitation.
    pub fn confirmation_required(&self) -> bool {
        self.allowed() && self.answer.confirm
    }

    /// The version (content hash) of the policy that decided, e.g.
    /// `sha256:3f2a...`; empty when no policy was evaluated.
    pub fn policy_version(&self) -> &str {
        &self.policy_version
    }

    /// How long the decision took.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Whether the decision was served from the memo of an earlier,
    /// identical (for this policy) input.
    pub fn from_cache(&self) -> bool {
        self.cached
    }
}
