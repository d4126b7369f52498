//! [`Action`]: what a caller asks to do, as the policy sees it in
//! `input.action`.

use std::borrow::Cow;
use std::fmt;

/// What a caller asks to do: an MCP method the guard decides, a credential
/// read, or an action a tool author names with `#[require_permission]`.
///
/// `input.action` is [`as_str`](Self::as_str). The typed value keeps the
/// action apart from the resource at every call site: the two can no longer
/// be swapped by accident.
///
/// ```
/// use rmcp_guard::policy::Action;
///
/// assert_eq!(Action::CallTool.as_str(), "tools/call");
/// assert_eq!(Action::custom("write").as_str(), "write");
/// assert_eq!(Action::method("prompts/get"), Action::GetPrompt);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// `tools/call`.
    CallTool,
    /// `tools/list`.
    ListTools,
    /// `resources/read`.
    ReadResource,
    /// `resources/list`.
    ListResources,
    /// `resources/templates/list`.
    ListResourceTemplates,
    /// `prompts/get`.
    GetPrompt,
    /// `prompts/list`.
    ListPrompts,
    /// `secrets/read`: a tool reading the caller's credential for a service.
    ReadSecret,
    /// Another MCP method, by its name (`completion/complete`, a custom
    /// method...).
    Method(String),
    /// An action named by a tool author (`read`, `write`...).
    Custom(Cow<'static, str>),
}

impl Action {
    /// An action named by a tool author, as `#[require_permission(action =
    /// "write")]` writes it.
    pub fn custom(name: impl Into<Cow<'static, str>>) -> Self {
        Action::Custom(name.into())
    }

    /// The action of the MCP method `name`: its own variant when the guard
    /// knows it, else [`Action::Method`].
    pub fn method(name: &str) -> Self {
        match name {
            "tools/call" => Action::CallTool,
            "tools/list" => Action::ListTools,
            "resources/read" => Action::ReadResource,
            "resources/list" => Action::ListResources,
            "resources/templates/list" => Action::ListResourceTemplates,
            "prompts/get" => Action::GetPrompt,
            "prompts/list" => Action::ListPrompts,
            other => Action::Method(other.to_owned()),
        }
    }

    /// The value of `input.action`.
    pub fn as_str(&self) -> &str {
        match self {
            Action::CallTool => "tools/call",
            Action::ListTools => "tools/list",
            Action::ReadResource => "resources/read",
            Action::ListResources => "resources/list",
            Action::ListResourceTemplates => "resources/templates/list",
            Action::GetPrompt => "prompts/get",
            Action::ListPrompts => "prompts/list",
            Action::ReadSecret => crate::secrets::SECRETS_READ,
            Action::Method(name) => name,
            Action::Custom(name) => name,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_have_their_own_variant() {
        for action in [
            Action::CallTool,
            Action::ListTools,
            Action::ReadResource,
            Action::ListResources,
            Action::ListResourceTemplates,
            Action::GetPrompt,
            Action::ListPrompts,
        ] {
            assert_eq!(Action::method(action.as_str()), action);
        }
        assert_eq!(
            Action::method("completion/complete"),
            Action::Method("completion/complete".into())
        );
        assert_eq!(Action::ReadSecret.as_str(), "secrets/read");
    }
}
