//! Procedural macros for [rmcp-guard](https://docs.rs/rmcp-guard). Use them
//! through the `rmcp_guard` re-exports, not this crate directly.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod require_permission;

use proc_macro::TokenStream;

/// Check the policy before a tool body runs.
///
/// ```text
/// #[tool(description = "Deploy a template to a device")]
/// #[require_permission(resource = "catalyst-center", action = "write")]
/// async fn deploy_template(&self, Parameters(args): Parameters<DeployArgs>) -> Result<String, ErrorData> {
///     // reached only when the policy allows `write` on `catalyst-center` for this caller
/// }
/// ```
///
/// The method's signature is left as it is, so rmcp's `#[tool_router]` sees
/// the tool unchanged. Before the body, the generated code calls
/// `rmcp_guard::policy::require_permission(resource, action, None)`, which
/// evaluates the policy for the request's principal with the tool call's
/// arguments, and returns its error (converted with `?`) on a denial.
///
/// The method must be `async` and return a `Result` whose error type
/// converts from `rmcp::ErrorData`. Both keys are required, once each.
#[proc_macro_attribute]
pub fn require_permission(attr: TokenStream, item: TokenStream) -> TokenStream {
    require_permission::expand(attr.into(), item.into()).into()
}
