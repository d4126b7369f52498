//! [`Pinned`]: at runtime, only the tools, prompts and resource templates
//! the lock pins, as they are pinned.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use futures_util::future::Either;
use rmcp::ServerHandler;
use rmcp::model::*;
use rmcp::service::{MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext};

use super::DefinitionsLock;
use crate::audit::{AuditEvent, Outcome};

type McpError = rmcp::ErrorData;

/// An rmcp handler that serves only the tools, prompts and resource
/// templates a [`DefinitionsLock`] pins, as it pins them, however the inner
/// handler's definitions change while it runs (a router updated at
/// runtime, a rug pull): `tools/list`, `prompts/list` and
/// `resources/templates/list` hide a definition that is not the pinned
/// one, and `tools/call` or `prompts/get` of such a tool or prompt is
/// refused as unknown (JSON-RPC -32602) before it runs. Each is audited
/// (`definitions`, reason `definition_not_pinned`, the tool's or prompt's
/// name or the template's `uriTemplate`). Every other method goes to the
/// inner handler.
///
/// The check is the definition's digest, computed when it is listed,
/// called or got: a change is caught at the next listing, call or get,
/// whether or not the server sends a `list_changed` notification. A tool
/// is looked up with the inner handler's `get_tool`; rmcp has no such
/// accessor for prompts, so `prompts/get` first reads the inner handler's
/// `prompts/list` (every page, up to 100) for the prompt's definition. A
/// tool or prompt the inner handler does not describe is refused.
/// `resources/read` and `completion/complete` are not checked: they go to
/// the inner handler whatever template or prompt they name.
///
/// A tool definition found pinned is remembered (one per pinned tool,
/// shared by the handlers made with [`around`](Self::around)): the same
/// definition seen again is served without computing its digest; any
/// difference is hashed again.
///
/// [`Guard::pin_definitions`](crate::Guard::pin_definitions) installs it
/// (inside the policy) and publishes the digest.
#[derive(Clone)]
pub struct Pinned<S> {
    inner: S,
    /// `None`: nothing pinned, every method passes through.
    pins: Option<Arc<Pins>>,
}

/// The lock, and the tool definitions last found pinned, by name (at most
/// one per tool the lock names).
struct Pins {
    lock: Arc<DefinitionsLock>,
    verified: Mutex<HashMap<String, Tool>>,
}

impl<S> std::fmt::Debug for Pinned<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("lock", &self.pins.as_ref().map(|p| &p.lock))
            .finish_non_exhaustive()
    }
}

impl<S> Pinned<S> {
    /// Serve `inner`'s definitions only as `lock` pins them.
    pub fn new(inner: S, lock: Arc<DefinitionsLock>) -> Self {
        Self::maybe(inner, Some(lock))
    }

    /// [`new`](Self::new), or a pass-through without a lock (as `Guard`
    /// installs it when no definitions are pinned).
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // installed by Guard
    pub(crate) fn maybe(inner: S, lock: Option<Arc<DefinitionsLock>>) -> Self {
        Pinned {
            inner,
            pins: lock.map(|lock| {
                Arc::new(Pins {
                    lock,
                    verified: Mutex::new(HashMap::new()),
                })
            }),
        }
    }

    /// The same pins (the lock and the definitions found pinned) around
    /// another handler: for a server that makes a handler per session or
    /// per request.
    pub fn around<T>(&self, inner: T) -> Pinned<T> {
        Pinned {
            inner,
            pins: self.pins.clone(),
        }
    }

    fn lock(&self) -> Option<&DefinitionsLock> {
        self.pins.as_deref().map(|p| &*p.lock)
    }

    /// Whether `tool` may be served: nothing pinned, or pinned as it is
    /// (the same definition as last found pinned, or its digest agrees).
    fn serves_tool(&self, tool: &Tool) -> bool {
        let Some(pins) = self.pins.as_deref() else {
            return true;
        };
        if crate::cache::lock(&pins.verified)
            .get(tool.name.as_ref())
            .is_some_and(|seen| seen == tool)
        {
            return true;
        }
        let pinned = pins.lock.pins_tool(tool);
        if pinned {
            // Only names the lock pins get here: bounded by the lock.
            crate::cache::lock(&pins.verified).insert(tool.name.to_string(), tool.clone());
        }
        pinned
    }

    /// Keep in `items` only the definitions the lock pins as they are, and
    /// audit each other one by `resource` (its name or `uriTemplate`).
    fn retain_pinned<T>(
        &self,
        items: &mut Vec<T>,
        context: &RequestContext<RoleServer>,
        pins: impl Fn(&DefinitionsLock, &T) -> bool,
        resource: impl Fn(&T) -> &str,
    ) {
        let Some(lock) = self.lock() else {
            return;
        };
        items.retain(|item| {
            let pinned = pins(lock, item);
            if !pinned {
                audit(context, resource(item));
            }
            pinned
        });
    }
}

/// How many pages of the inner handler's `prompts/list` a `prompts/get`
/// reads to find the prompt: a handler whose cursors never end cannot hold
/// a request.
const MAX_PROMPT_PAGES: usize = 100;

impl<S: ServerHandler> Pinned<S> {
    /// The definition of the prompt `name` as the inner handler lists it
    /// now, if it does (rmcp's `ServerHandler` describes prompts only in
    /// their listing).
    async fn listed_prompt(
        &self,
        name: &str,
        context: &RequestContext<RoleServer>,
    ) -> Result<Option<Prompt>, McpError> {
        let mut request = None;
        for _ in 0..MAX_PROMPT_PAGES {
            let page = self.inner.list_prompts(request, context.clone()).await?;
            if let Some(prompt) = page.prompts.into_iter().find(|p| p.name == name) {
                return Ok(Some(prompt));
            }
            let Some(cursor) = page.next_cursor else {
                return Ok(None);
            };
            request = Some(PaginatedRequestParams::default().with_cursor(Some(cursor)));
        }
        Ok(None)
    }
}

fn audit(context: &RequestContext<RoleServer>, resource: &str) {
    let principal = super::caller(context);
    AuditEvent::Definitions {
        principal,
        outcome: Outcome::Deny,
        reason: "definition_not_pinned",
        resource,
    }
    .emit();
}

#[allow(deprecated)] // every other method goes to the inner handler, the deprecated ones too
impl<S: ServerHandler> ServerHandler for Pinned<S> {
    // Checked before the inner future is made, which then runs as is.
    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        // A tool the handler does not describe cannot be checked: refused.
        let pinned = self.pins.is_none() || self.inner.get_tool(&request.name).is_some_and(|t| self.serves_tool(&t));
        if !pinned {
            audit(&context, &request.name);
            return Either::Left(std::future::ready(Err(McpError::invalid_params(
                format!("tool not found: {}", request.name),
                None,
            ))));
        }
        Either::Right(self.inner.call_tool(request, context))
    }

    fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.list_tools(request, context.clone()).map(move |result| {
            let mut result = result?;
            if self.pins.is_some() {
                result.tools.retain(|tool| {
                    let pinned = self.serves_tool(tool);
                    if !pinned {
                        audit(&context, &tool.name);
                    }
                    pinned
                });
            }
            Ok(result)
        })
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name).filter(|t| self.serves_tool(t))
    }

    // Without pins the inner future runs as is; with them the check (which
    // lists the prompts) is boxed.
    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<GetPromptResponse, McpError>> + MaybeSendFuture + '_ {
        match self.lock() {
            None => Either::Left(self.inner.get_prompt(request, context)),
            Some(lock) => Either::Right(Box::pin(async move {
                // A prompt the handler does not list cannot be checked: refused.
                let listed = self.listed_prompt(&request.name, &context).await?;
                if !listed.is_some_and(|p| lock.pins_prompt(&p)) {
                    audit(&context, &request.name);
                    return Err(McpError::invalid_params(
                        format!("prompt not found: {}", request.name),
                        None,
                    ));
                }
                self.inner.get_prompt(request, context).await
            })),
        }
    }

    fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListPromptsResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.list_prompts(request, context.clone()).map(move |result| {
            let mut result = result?;
            self.retain_pinned(&mut result.prompts, &context, DefinitionsLock::pins_prompt, |p| &p.name);
            Ok(result)
        })
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let mut result = self.inner.list_resource_templates(request, context.clone()).await?;
        self.retain_pinned(
            &mut result.resource_templates,
            &context,
            DefinitionsLock::pins_resource_template,
            |t| &t.uri_template,
        );
        Ok(result)
    }

    forward_server_handler!(info);
    forward_server_handler!(except_definitions);
}
