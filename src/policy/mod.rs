//! Rego policy: who may call which tool, read which resource, get which prompt.
//!
//! Three pieces, used in this order:
//!
//! 1. [`PolicyEngine`] loads Rego modules (files, directories or strings, in
//!    Rego v1 or v0 syntax) and JSON data documents, compiles them once to
//!    regorus' RVM, and decides [`PolicyInput`]s. A module that does not
//!    compile, an undeclared entrypoint or a failing smoke evaluation is a
//!    [`ConfigError`](crate::ConfigError): the server does not start.
//!    At request time anything but `true` from the entrypoint (an error, an
//!    undefined or non-boolean value, an exceeded instruction budget)
//!    **denies**, with a reason in the audit event.
//! 2. [`Guarded`] wraps your rmcp `ServerHandler`: every `tools/call`,
//!    `resources/read` and `prompts/get` is decided before your handler runs,
//!    and every listing is filtered to what the caller may use. See
//!    [`handler`](Guarded#why-a-handler-wrapper-covers-every-path) for why no
//!    path goes around it.
//! 3. [`require_permission`] (what `#[require_permission]` expands to) checks
//!    a `(resource, action)` from inside a tool body, with the request's
//!    principal and arguments, without changing the tool's signature.
//!
//! ```
//! # fn main() -> Result<(), rmcp_guard::ConfigError> {
//! use rmcp_guard::Principal;
//! use rmcp_guard::policy::{Action, PolicyEngine, PolicyInput};
//!
//! // The example RBAC policy: groups claim -> roles -> (resource, action).
//! let engine = PolicyEngine::rbac_example()?;
//! let alice = Principal::unverified("https://idp.example", "alice")
//!     .groups(["network-engineers"])
//!     .scopes(["mcp:tools"])
//!     .build();
//!
//! let deploy = engine.decide(&PolicyInput::new(&alice, "deploy_template", Action::CallTool));
//! assert!(deploy.allowed());
//!
//! let ticket = engine.decide(&PolicyInput::new(&alice, "create_ticket", Action::CallTool));
//! assert!(!ticket.allowed());
//! assert_eq!(ticket.reason(), Some("no_role_grants_access"));
//! # Ok(()) }
//! ```
//!
//! # Writing a policy
//!
//! The entrypoint (default `data.mcp.authz.allow`) must be a boolean rule;
//! give it `default allow := false`. Two optional rules explain a denial:
//! `reasons` (a set of short codes, for the audit log; never sent to the
//! client) and `required_scopes` (a set of scopes that would grant the
//! request; sent to the client for a step-up). The input document is
//! described in [`PolicyInput`]. [`DEFAULT_POLICY`] and [`RBAC_POLICY`] /
//! [`RBAC_POLICY_V0`] with [`RBAC_DATA`] are complete examples.
//!
//! A third optional rule, `confirm` ([`PolicyEngineBuilder::confirm_rule`]),
//! marks allowed actions the user must confirm first
//! ([`Decision::confirmation_required`]): [`Guarded`] then asks through MCP
//! elicitation before a `tools/call`, `prompts/get` or `resources/read`
//! runs, and refuses anything else it marks (a `#[require_permission]`
//! check or a secret read cannot ask). No tool code is needed:
//!
//! ```rego
//! confirm if {
//!     input.action == "tools/call"
//!     input.resource in {"deploy_template", "delete_device"}
//! }
//! ```
//!
//! # Performance
//!
//! Each thread keeps its own compiled VM per policy version, so decisions
//! take no lock; a reload is noticed through one atomic load. When the
//! policy provably reads neither `input.arguments` nor `input` as a whole,
//! decisions are memoized per thread, keyed by exactly the input fields the
//! policy reads, bounded ([`PolicyEngineBuilder::memo_capacity`]), and
//! discarded with the policy version. `benches/policy.rs` measures both paths.
//!
//! # Reloading
//!
//! [`PolicyEngine::reload`] (or [`PolicyEngine::spawn_reload_every`]) reads
//! the files again; a changed policy is compiled and smoke-evaluated before
//! it is swapped in. A bad policy is refused, the previous one keeps
//! serving, and an `ERROR` event `policy_reload` is emitted on the audit
//! target. Every [`Decision`] names the policy version (content hash) that
//! made it.
//!
//! # Audit
//!
//! [`PolicyEngine::decide`] emits exactly one `policy_decision` event on
//! [`audit::TARGET`](crate::audit::TARGET): `subject`, `issuer`, `action`,
//! `resource`, `allowed`, `reason`, `policy_version`, `duration_us`,
//! `cached`. A listing is one decision (the `*/list` action); the per-item
//! filter decisions are not logged one by one.
//! A confirmation the policy asks for adds one `confirmation` event per
//! step (`asked`, `granted`, `refused` with its reason).

mod action;
mod analysis;
mod confirm;
mod context;
mod decision;
mod engine;
mod handler;
mod input;
mod limits;
mod shipped;
mod source;
mod step_up;

pub use action::Action;
pub use context::require_permission;
pub use decision::Decision;
pub use engine::{PolicyEngine, PolicyEngineBuilder, RegoVersion};
pub use handler::Guarded;
pub use input::{INPUT_VERSION, PolicyInput};
pub use shipped::{DEFAULT_POLICY, RBAC_DATA, RBAC_POLICY, RBAC_POLICY_V0, RBAC_TOOL_SCOPE};
pub use step_up::{StepUp, StepUpBody, StepUpLayer};

/// Secret reads are policy decisions too: `Credentials::builder(store)
/// .authorizer(engine.clone())` asks the policy for action
/// [`secrets/read`](Action::ReadSecret) on the service before any
/// secret is looked up.
impl crate::secrets::SecretAuthorizer for PolicyEngine {
    fn authorize(&self, principal: &crate::Principal, service: &str) -> bool {
        let decision = self.decide(&PolicyInput::new(principal, service, Action::ReadSecret));
        // A secret read cannot ask the user: one the policy wants confirmed is refused.
        decision.allowed() && !decision.confirmation_required()
    }
}
