//! Rego policy: who may call which tool, read which resource, get which prompt.
//!
//! TODO(docs): overview written with the handler.

mod analysis;
mod context;
mod decision;
mod engine;
mod handler;
pub mod input;
mod shipped;
mod source;

pub use context::{PERMISSION_DENIED, current_principal, denial_error, require_permission};
pub use decision::Decision;
pub use engine::{
    DEFAULT_ENTRYPOINT, DEFAULT_MAX_INSTRUCTIONS, DEFAULT_MEMO_CAPACITY, DEFAULT_REASONS_RULE,
    DEFAULT_REQUIRED_SCOPES_RULE, PolicyEngine, PolicyEngineBuilder, RegoVersion,
};
pub use handler::Guarded;
pub use input::{INPUT_VERSION, PolicyInput};
pub use shipped::{DEFAULT_POLICY, RBAC_DATA, RBAC_POLICY, RBAC_POLICY_V0, RBAC_TOOL_SCOPE};
