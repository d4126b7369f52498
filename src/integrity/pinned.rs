//! [`Pinned`]: at runtime, only the tools the lock pins, as it pins them.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::ServerHandler;
use rmcp::model::*;
use rmcp::service::{MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext};

use super::DefinitionsLock;
use crate::audit::{AuditEvent, Outcome};

type McpError = rmcp::ErrorData;

/// An rmcp handler that serves only the tools a [`DefinitionsLock`] pins,
/// as it pins them, however the inner handler's definitions change while it
/// runs (a tool router updated at runtime, a rug pull): `tools/list`
/// hides a tool whose definition is not the pinned one, and `tools/call`
/// of such a tool is refused as an unknown tool (JSON-RPC -32602) before it
/// runs. Each is audited (`definitions`, reason `definition_not_pinned`,
/// the tool's name). Every other method goes to the inner handler.
///
/// The check is the definition's digest, computed when it is listed or
/// called: a change is caught at the next listing or call, whether or not
/// the server sends `notifications/tools/list_changed`. Prompts and
/// resource templates are pinned at start-up only
/// ([`DefinitionsLock::verify`]).
///
/// [`Guard::pin_definitions`](crate::Guard::pin_definitions) installs it
/// (inside the policy) and publishes the digest.
#[derive(Clone)]
pub struct Pinned<S> {
    inner: S,
    /// `None`: nothing pinned, every method passes through.
    lock: Option<Arc<DefinitionsLock>>,
}

impl<S> std::fmt::Debug for Pinned<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl<S> Pinned<S> {
    /// Serve `inner`'s tools only as `lock` pins them.
    pub fn new(inner: S, lock: Arc<DefinitionsLock>) -> Self {
        Pinned {
            inner,
            lock: Some(lock),
        }
    }

    /// [`new`](Self::new), or a pass-through without a lock (as `Guard`
    /// installs it when no definitions are pinned).
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // installed by Guard
    pub(crate) fn maybe(inner: S, lock: Option<Arc<DefinitionsLock>>) -> Self {
        Pinned { inner, lock }
    }

    /// Whether `tool` may be served: pinned as it is, or nothing pinned.
    fn serves(&self, tool: &Tool) -> bool {
        self.lock.as_ref().is_none_or(|lock| lock.pins_tool(tool))
    }
}

fn audit(context: &RequestContext<RoleServer>, tool: &str) {
    let principal = super::caller(context);
    AuditEvent::Definitions {
        principal,
        outcome: Outcome::Deny,
        reason: "definition_not_pinned",
        resource: tool,
    }
    .emit();
}

#[allow(deprecated)] // every other method goes to the inner handler, the deprecated ones too
impl<S: ServerHandler> ServerHandler for Pinned<S> {
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        // A tool the handler does not describe cannot be checked: refused.
        let pinned = self.lock.is_none() || self.inner.get_tool(&request.name).is_some_and(|t| self.serves(&t));
        if !pinned {
            audit(&context, &request.name);
            return Err(McpError::invalid_params(
                format!("tool not found: {}", request.name),
                None,
            ));
        }
        self.inner.call_tool(request, context).await
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut result = self.inner.list_tools(request, context.clone()).await?;
        result.tools.retain(|tool| {
            let pinned = self.serves(tool);
            if !pinned {
                audit(&context, &tool.name);
            }
            pinned
        });
        Ok(result)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name).filter(|t| self.serves(t))
    }

    forward_server_handler!(info);
    forward_server_handler!(except_tools);
}
