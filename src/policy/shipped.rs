//! The policies that ship with the crate, embedded in the binary.

use super::engine::{PolicyEngine, PolicyEngineBuilder, RegoVersion};
use crate::ConfigError;
use crate::error::PolicyError;

/// The default policy (Rego v1): authenticated callers may list; calling a
/// tool, reading a resource or getting a prompt requires the tool scope
/// given in `data.mcp.config.tool_scope`. The file is `policies/default.rego`
/// in the repository:
///
#[doc = concat!("```rego\n", include_str!("../../policies/default.rego"), "```")]
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.rego");

/// The example RBAC policy in Rego v1 (groups claim; roles in [`RBAC_DATA`]),
/// `policies/rbac.rego` in the repository; copy it as a start for your own:
///
#[doc = concat!("```rego\n", include_str!("../../policies/rbac.rego"), "```")]
pub const RBAC_POLICY: &str = include_str!("../../policies/rbac.rego");

/// The example RBAC policy in Rego v0, with the same decisions as [`RBAC_POLICY`].
pub const RBAC_POLICY_V0: &str = include_str!("../../policies/rbac_v0.rego");

/// The example RBAC data document: roles, tool mapping, tool scope
/// (`mcp:tools`), `policies/rbac_data.json` in the repository:
///
#[doc = concat!("```json\n", include_str!("../../policies/rbac_data.json"), "```")]
pub const RBAC_DATA: &str = include_str!("../../policies/rbac_data.json");

/// The tool scope of the example RBAC data.
pub const RBAC_TOOL_SCOPE: &str = "mcp:tools";

fn rbac_data() -> Result<serde_json::Value, PolicyError> {
    serde_json::from_str(RBAC_DATA).map_err(|e| PolicyError::Data {
        document: "rbac_data.json".to_owned(),
        message: e.to_string(),
    })
}

impl PolicyEngine {
    /// A builder with the [default policy](DEFAULT_POLICY) requiring `tool_scope`.
    pub fn default_policy_builder(tool_scope: &str) -> PolicyEngineBuilder {
        PolicyEngine::builder()
            .module("default.rego", DEFAULT_POLICY)
            .rego_version(RegoVersion::V1)
            .data(
                "tool_scope",
                serde_json::json!({ "mcp": { "config": { "tool_scope": tool_scope } } }),
            )
    }

    /// The [default policy](DEFAULT_POLICY) requiring `tool_scope`.
    ///
    /// # Errors
    ///
    /// None in practice (the policy is tested); a [`ConfigError`] otherwise.
    pub fn default_policy(tool_scope: &str) -> Result<Self, ConfigError> {
        Self::default_policy_builder(tool_scope).build()
    }

    /// A builder with the [example RBAC policy](RBAC_POLICY) and its data.
    ///
    /// # Errors
    ///
    /// None in practice (the data is tested); a [`ConfigError`] otherwise.
    pub fn rbac_example_builder() -> Result<PolicyEngineBuilder, ConfigError> {
        Ok(PolicyEngine::builder()
            .module("rbac.rego", RBAC_POLICY)
            .rego_version(RegoVersion::V1)
            .data("rbac_data.json", rbac_data()?))
    }

    /// The [example RBAC policy](RBAC_POLICY) with its data.
    ///
    /// # Errors
    ///
    /// None in practice (the policy is tested); a [`ConfigError`] otherwise.
    pub fn rbac_example() -> Result<Self, ConfigError> {
        Self::rbac_example_builder()?.build()
    }

    /// The [example RBAC policy in Rego v0](RBAC_POLICY_V0) with its data.
    ///
    /// # Errors
    ///
    /// None in practice (the policy is tested); a [`ConfigError`] otherwise.
    pub fn rbac_example_v0() -> Result<Self, ConfigError> {
        PolicyEngine::builder()
            .module("rbac_v0.rego", RBAC_POLICY_V0)
            .rego_version(RegoVersion::V0)
            .data("rbac_data.json", rbac_data()?)
            .build()
    }
}
