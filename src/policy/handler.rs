//! Enforcement: [`Guarded`] wraps any rmcp [`ServerHandler`] and asks the
//! policy before the inner handler runs.

use std::borrow::Cow;

use futures_util::FutureExt as _;
use futures_util::future::Either;
use rmcp::model::*;
use rmcp::service::{MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData, ServerHandler};
use serde_json::Value;

use super::action::Action;
use super::confirm::{Confirmation, Pending, unconfirmable};
use super::context::{self, AuthzContext, denial_error};
use super::decision::{Decision, reason};
use super::engine::PolicyEngine;
use super::input::PolicyInput;
use crate::Principal;
use crate::state::{RequestStateSealer, StateBinding};

/// An rmcp [`ServerHandler`] that asks a [`PolicyEngine`] before `H` runs.
///
/// # Why a handler wrapper covers every path
///
/// rmcp implements its `Service<RoleServer>` once, for every `H:
/// ServerHandler` (`rmcp/src/handler/server.rs`), by matching each decoded
/// `ClientRequest` / `ClientNotification` variant to exactly one
/// `ServerHandler` method. A request reaches a tool only through
/// `call_tool`, a resource only through `read_resource` (and `subscribe`,
/// `listen`, `skills/*`, `resources/directory/read`), a prompt only through
/// `get_prompt`. `Guarded<H>` is itself a `ServerHandler` and implements
/// **every** method of the trait explicitly (none falls back to a default
/// that would bypass the wrapper or hide the inner handler), so:
///
/// * `tools/call`, `resources/read`, `prompts/get`, `resources/subscribe`,
///   `skills/get`, `resources/directory/read` and `completion/complete` (on
///   the prompt or resource it refers to) are decided before the inner
///   handler runs; a denial is a JSON-RPC error ([`PERMISSION_DENIED`](crate::PERMISSION_DENIED),
///   "permission denied"), never a successful tool result.
/// * An allowed `tools/call` then counts against the caller's per-tool
///   rate ([`check_tool`](crate::limit::check_tool)); over it, the JSON-RPC
///   error [`RATE_LIMITED`](crate::limit::RATE_LIMITED).
/// * `tools/list`, `resources/list`, `resources/templates/list`,
///   `prompts/list` and `skills/list` are decided as a listing, then filtered
///   to the items the caller may use (each tool by its `tools/call`
///   decision, each resource by `resources/read` on its URI or URI template,
///   each prompt by `prompts/get`).
/// * Every listing and every read it lets through is marked `cacheScope:
///   "private"` (MCP 2026-07-28): what one caller sees depends on who they
///   are, so a shared cache must never hand it to another (rmcp's macros
///   default to `"public"`).
/// * An allowed `tools/call`, `prompts/get` or `resources/read` that the
///   policy's confirmation rule marks
///   ([`Decision::confirmation_required`](super::Decision::confirmation_required))
///   runs only once the user confirmed it: on MCP 2026-07-28 the answer is
///   an `InputRequiredResult` with an elicitation form and a sealed
///   `requestState` ([`Guarded::request_state`]), and the retry carrying
///   the user's "yes" runs the handler; in a 2025-era session bound to its
///   caller (as [`Guard`](crate::Guard) serves them) a client that declared
///   elicitation is asked inside the session; any other client is refused.
///   Any other request the rule marks is refused (it cannot ask). See the `confirm` flow in the crate's README.
/// * Unknown methods arrive as `CustomRequest` in `on_custom_request` and are
///   decided with `input.action` = the method name and an empty resource; a
///   denied one answers -32601 (HTTP 404), exactly as a method that does not
///   exist, so denials reveal no custom method and the methods MCP 2026-07-28
///   removed answer as it requires;
///   unknown notifications (`on_custom_notification`) likewise, and are
///   dropped when denied (a notification has no answer).
/// * `tasks/*` need an authenticated caller; a task only exists because an
///   allowed `tools/call` created it.
/// * Lifecycle methods (`initialize`, `ping`, `discover`, `logging/setLevel`,
///   `notifications/initialized`, `cancelled`, `progress`,
///   `roots/list_changed`) are forwarded: they reach no tool or data.
/// * JSON-RPC batches: rmcp 3.11's `JsonRpcMessage` has no batch variant, so
///   a batch body fails to decode in the transport and never reaches a
///   handler; each message of a session is dispatched on its own and passes
///   through the methods above. Malformed bodies likewise never reach it.
/// * No principal in the request (the bearer layer is missing or bypassed)
///   denies everything that is decided, with reason `no_principal`.
///
/// The principal is read from the `http::request::Parts` that rmcp's
/// streamable HTTP transport copies into each request's extensions (where
/// the bearer layer put it), or from a `Principal` inserted directly into the
/// rmcp extensions by a custom transport.
///
/// An HTTP layer that reads JSON-RPC bodies could decide too, but it would
/// duplicate rmcp's parser (and its edge cases); this wrapper decides on the
/// values the handler will actually receive. The bearer layer can turn a
/// denial whose `data.error` is `insufficient_scope` into an HTTP 403
/// step-up challenge.
///
/// ```
/// # fn main() -> Result<(), rmcp_guard::ConfigError> {
/// use rmcp::ServerHandler;
/// use rmcp_guard::policy::{Guarded, PolicyEngine};
///
/// #[derive(Clone)]
/// struct MyServer;
/// impl ServerHandler for MyServer {}
///
/// let engine = PolicyEngine::rbac_example()?;
/// let guarded = Guarded::new(MyServer, engine);
/// # let _ = guarded;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Guarded<H> {
    inner: H,
    engine: PolicyEngine,
    request_state: RequestStateSealer,
    /// Served with sessions bound to their callers (`SessionBindingLayer`).
    sessions: bool,
}

/// The sealer of every `Guarded` given none: one per process, so that a
/// state sealed while answering one request opens on the retry (a stateless
/// server makes a `Guarded` per request).
fn process_sealer() -> RequestStateSealer {
    static SEALER: std::sync::OnceLock<RequestStateSealer> = std::sync::OnceLock::new();
    SEALER
        .get_or_init(|| RequestStateSealer::new(crate::state::StateKeys::generate()))
        .clone()
}

impl<H> Guarded<H> {
    /// Wrap `inner`; every decision is made by `engine`.
    pub fn new(inner: H, engine: PolicyEngine) -> Self {
        Self {
            inner,
            engine,
            request_state: process_sealer(),
            sessions: false,
        }
    }

    /// This handler is served with sessions bound to their callers
    /// ([`SessionBindingLayer`](crate::session::SessionBindingLayer), as
    /// [`Guard`](crate::Guard) sets it up): a 2025-era client of a session
    /// that declared form elicitation is asked to confirm inside the session.
    /// Without it (the default), such clients are refused: a session id not
    /// checked by the binding layer may not be the caller's.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // `Guard` needs `jwt`.
    pub(crate) fn bound_sessions(mut self) -> Self {
        self.sessions = true;
        self
    }

    /// Seal and open the `requestState` of user confirmations with `sealer`
    /// (its keys, TTL and replay set). Give every `Guarded` of a server the
    /// same sealer (it is cheap to clone), and every replica the same keys.
    /// Defaults to one sealer per process with generated keys (TTL 300 s,
    /// single-use): a confirmation asked before a restart, or by another
    /// replica, is refused (the client calls again and the user is asked
    /// again).
    pub fn request_state(mut self, sealer: RequestStateSealer) -> Self {
        self.request_state = sealer;
        self
    }

    /// The wrapped handler.
    pub fn get_ref(&self) -> &H {
        &self.inner
    }

    /// The wrapped handler, mutably.
    pub fn get_mut(&mut self) -> &mut H {
        &mut self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> H {
        self.inner
    }

    /// The policy engine.
    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }
}

/// The authenticated caller of a request and its session.
struct Caller {
    principal: Principal,
    session_id: Option<String>,
}

fn caller(extensions: &Extensions) -> Option<Caller> {
    let parts = extensions.get::<http::request::Parts>();
    let principal = parts
        .and_then(|p| p.extensions.get::<Principal>())
        .or_else(|| extensions.get::<Principal>())?
        .clone();
    let session_id = parts
        .and_then(|p| p.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some(Caller { principal, session_id })
}

/// A method outside the protocol that the caller may not use does not exist
/// for them: a denial (audited as one) answers like an unknown method,
/// JSON-RPC -32601, which rmcp's transport sends as HTTP 404. So a denial
/// reveals no custom method a server has, and the methods MCP 2026-07-28
/// removed (`initialize`, `logging/setLevel`, `resources/subscribe`, ...)
/// answer as that revision requires whatever the policy says of them. Any
/// other error (a confirmation it cannot ask for) is kept.
fn hidden_method(denied: ErrorData, method: &str) -> ErrorData {
    if denied.code == crate::PERMISSION_DENIED {
        ErrorData::new(rmcp::model::ErrorCode::METHOD_NOT_FOUND, method.to_owned(), None)
    } else {
        denied
    }
}

fn no_principal(action: &Action, resource: &str) -> ErrorData {
    crate::audit::AuditEvent::PolicyDecision {
        principal: None,
        resource,
        action: action.as_str(),
        outcome: crate::audit::Outcome::Error,
        reason: reason::NO_PRINCIPAL,
        policy_version: "",
        duration_us: 0,
        cached: false,
    }
    .emit();
    denial_error(&Decision::deny_without_policy(reason::NO_PRINCIPAL))
}

fn input(caller: &Caller, action: &Action, resource: &str, arguments: Option<&Value>) -> PolicyInput {
    let mut input = PolicyInput::new(&caller.principal, resource, action.clone());
    if let Some(arguments) = arguments {
        input = input.with_arguments(arguments.clone());
    }
    if let Some(session) = &caller.session_id {
        input = input.with_session_id(session.clone());
    }
    input
}

impl<H> Guarded<H> {
    /// Decide (with an audit event); on allow, the context for the handler.
    /// An allow the policy wants confirmed is refused: this request cannot
    /// ask the user (see [`Self::authorize_confirmable`]).
    fn authorize(
        &self,
        extensions: &Extensions,
        action: Action,
        resource: &str,
        arguments: Option<Value>,
    ) -> Result<AuthzContext, ErrorData> {
        let (ctx, confirm) = self.authorize_confirmable(extensions, &action, resource, arguments)?;
        if confirm {
            return Err(unconfirmable(&ctx.principal, &action, resource));
        }
        Ok(ctx)
    }

    /// Decide (with an audit event); on allow, the context for the handler
    /// and whether the user must confirm first.
    fn authorize_confirmable(
        &self,
        extensions: &Extensions,
        action: &Action,
        resource: &str,
        arguments: Option<Value>,
    ) -> Result<(AuthzContext, bool), ErrorData> {
        let span = crate::telemetry::trace::policy_span(extensions, action.as_str(), resource);
        let _entered = span.enter(); // synchronous to the end of this function
        let Some(caller) = caller(extensions) else {
            crate::telemetry::trace::outcome(&span, "error", true);
            span.record("reason", reason::NO_PRINCIPAL);
            return Err(no_principal(action, resource));
        };
        let decision = self
            .engine
            .decide(&input(&caller, action, resource, arguments.as_ref()));
        if !span.is_disabled() {
            let outcome = decision.outcome();
            span.record("reason", decision.reason().unwrap_or(""));
            span.record("cached", decision.from_cache());
            crate::telemetry::trace::outcome(&span, outcome.as_str(), outcome == crate::audit::Outcome::Error);
        }
        if !decision.allowed() {
            return Err(denial_error(&decision));
        }
        let ctx = AuthzContext {
            engine: self.engine.clone(),
            principal: caller.principal,
            session_id: caller.session_id,
            arguments,
        };
        Ok((ctx, decision.confirmation_required()))
    }

    /// Decide a listing (audited); on allow, a per-item filter (not audited
    /// per item: one event per listing).
    fn lister(
        &self,
        extensions: &Extensions,
        list_action: Action,
        item_action: Action,
    ) -> Result<impl Fn(&str) -> bool + '_, ErrorData> {
        let ctx = self.authorize(extensions, list_action, "", None)?;
        let caller = Caller {
            principal: ctx.principal,
            session_id: ctx.session_id,
        };
        Ok(move |resource: &str| {
            self.engine
                .evaluate(&input(&caller, &item_action, resource, None))
                .allowed()
        })
    }
}

fn object(arguments: Option<JsonObject>) -> Option<Value> {
    arguments.map(Value::Object)
}

impl<H: ServerHandler> Guarded<H> {
    /// An allowed `tools/call` with a per-tool budget to count against or a
    /// confirmation to ask for.
    async fn call_counted(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
        ctx: AuthzContext,
        confirm: bool,
    ) -> Result<CallToolResponse, ErrorData> {
        // An allowed call counts against the caller's per-tool rate, if any.
        crate::limit::check_tool(&context.extensions, &request.name).await?;
        if confirm {
            let pending = Pending {
                principal: &ctx.principal,
                action: &Action::CallTool,
                name: &request.name,
                binding: StateBinding::tool_call(&ctx.principal, &request.name, request.arguments.as_ref()),
                in_session: self.sessions && ctx.session_id.is_some(),
            };
            let (state, responses) = (request.request_state.take(), request.input_responses.take());
            match pending.confirm(&self.request_state, state, responses, &context).await? {
                Confirmation::Granted => {}
                Confirmation::Ask(ask) => return Ok(CallToolResponse::InputRequired(*ask)),
                Confirmation::Refused => {
                    return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                        ContentBlock::text(pending.refused_message()),
                    ])));
                }
            }
        }
        context::scope(ctx, move || self.inner.call_tool(request, context)).await
    }

    /// An allowed `prompts/get` the policy wants confirmed.
    async fn get_prompt_confirmed(
        &self,
        mut request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
        ctx: AuthzContext,
    ) -> Result<GetPromptResponse, ErrorData> {
        let pending = Pending {
            principal: &ctx.principal,
            action: &Action::GetPrompt,
            name: &request.name,
            binding: StateBinding::new(&ctx.principal, "prompts/get", &request.name, ctx.arguments.as_ref()),
            in_session: self.sessions && ctx.session_id.is_some(),
        };
        let (state, responses) = (request.request_state.take(), request.input_responses.take());
        match pending.confirm(&self.request_state, state, responses, &context).await? {
            Confirmation::Granted => {}
            Confirmation::Ask(ask) => return Ok(GetPromptResponse::InputRequired(*ask)),
            Confirmation::Refused => return Err(pending.refused_error()),
        }
        context::scope(ctx, move || self.inner.get_prompt(request, context)).await
    }

    /// An allowed `resources/read` the policy wants confirmed.
    async fn read_resource_confirmed(
        &self,
        mut request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
        ctx: AuthzContext,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let pending = Pending {
            principal: &ctx.principal,
            action: &Action::ReadResource,
            name: &request.uri,
            binding: StateBinding::new(&ctx.principal, "resources/read", &request.uri, None),
            in_session: self.sessions && ctx.session_id.is_some(),
        };
        let (state, responses) = (request.request_state.take(), request.input_responses.take());
        match pending.confirm(&self.request_state, state, responses, &context).await? {
            Confirmation::Granted => {}
            Confirmation::Ask(ask) => return Ok(ReadResourceResponse::InputRequired(*ask)),
            Confirmation::Refused => return Err(pending.refused_error()),
        }
        private_read(context::scope(ctx, move || self.inner.read_resource(request, context)).await)
    }
}

/// A read's result is the caller's own: never cached for others.
fn private_read(response: Result<ReadResourceResponse, ErrorData>) -> Result<ReadResourceResponse, ErrorData> {
    Ok(match response? {
        ReadResourceResponse::Complete(mut result) => {
            result.cache_scope = Some(CacheScope::Private);
            ReadResourceResponse::Complete(result)
        }
        other => other,
    })
}

#[allow(deprecated)] // `subscribe`/`unsubscribe` are legacy but still routed.
impl<H: ServerHandler> ServerHandler for Guarded<H> {
    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.inner.ping(context).await
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        self.inner.initialize(request, context).await
    }

    fn negotiate_initialize(&self, request: &InitializeRequestParams) -> Result<InitializeResult, ErrorData> {
        self.inner.negotiate_initialize(request)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }

    async fn discover(&self, context: RequestContext<RoleServer>) -> Result<DiscoverResult, ErrorData> {
        self.inner.discover(context).await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        // Completing an argument of a prompt or resource needs the right to use it.
        let (action, resource) = match &request.r#ref {
            Reference::Prompt(p) => (Action::GetPrompt, p.name.clone()),
            Reference::Resource(r) => (Action::ReadResource, r.uri.clone()),
            #[allow(unreachable_patterns)] // `Reference` is non-exhaustive.
            _ => (Action::method("completion/complete"), String::new()),
        };
        self.authorize(&context.extensions, action, &resource, None)?;
        self.inner.complete(request, context).await
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.inner.set_level(request, context).await
    }

    // As `call_tool`: the common read returns the inner future, made now;
    // a confirmation to ask for is boxed.
    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<GetPromptResponse, ErrorData>> + MaybeSendFuture + '_ {
        let (ctx, confirm) = match self.authorize_confirmable(
            &context.extensions,
            &Action::GetPrompt,
            &request.name,
            object(request.arguments.clone()),
        ) {
            Ok(decided) => decided,
            Err(error) => return Either::Left(std::future::ready(Err(error))),
        };
        if !confirm {
            return Either::Right(Either::Left(context::scope(ctx, move || {
                self.inner.get_prompt(request, context)
            })));
        }
        Either::Right(Either::Right(Box::pin(
            self.get_prompt_confirmed(request, context, ctx),
        )))
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let may = self.lister(&context.extensions, Action::ListPrompts, Action::GetPrompt)?;
        let mut result = self.inner.list_prompts(request, context).await?;
        result.prompts.retain(|p| may(&p.name));
        Ok(result.with_cache_scope(CacheScope::Private))
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let may = self.lister(&context.extensions, Action::ListResources, Action::ReadResource)?;
        let mut result = self.inner.list_resources(request, context).await?;
        result.resources.retain(|r| may(&r.uri));
        Ok(result.with_cache_scope(CacheScope::Private))
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let may = self.lister(&context.extensions, Action::ListResourceTemplates, Action::ReadResource)?;
        let mut result = self.inner.list_resource_templates(request, context).await?;
        result.resource_templates.retain(|t| may(&t.uri_template));
        Ok(result.with_cache_scope(CacheScope::Private))
    }

    // As `call_tool`: the common read returns the inner future, made now
    // (its result marked private); a confirmation to ask for is boxed.
    fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ReadResourceResponse, ErrorData>> + MaybeSendFuture + '_ {
        let (ctx, confirm) =
            match self.authorize_confirmable(&context.extensions, &Action::ReadResource, &request.uri, None) {
                Ok(decided) => decided,
                Err(error) => return Either::Left(std::future::ready(Err(error))),
            };
        if !confirm {
            let read = context::scope(ctx, move || self.inner.read_resource(request, context));
            return Either::Right(Either::Left(read.map(private_read)));
        }
        Either::Right(Either::Right(Box::pin(
            self.read_resource_confirmed(request, context, ctx),
        )))
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        self.inner.accepted_subscription_filter(requested)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        // Notifications about a resource need the right to read it.
        let extensions = &context.request_context().extensions;
        let uris = context
            .accepted()
            .resource_subscriptions
            .iter()
            .flatten()
            .chain(context.requested().resource_subscriptions.iter().flatten());
        let mut checked = false;
        for uri in uris {
            self.authorize(extensions, Action::ReadResource, uri, None)?;
            checked = true;
        }
        if !checked && caller(extensions).is_none() {
            return Err(no_principal(&Action::method("subscriptions/listen"), ""));
        }
        self.inner.listen(context).await
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.authorize(&context.extensions, Action::ReadResource, &request.uri, None)?;
        self.inner.subscribe(request, context).await
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.inner.unsubscribe(request, context).await
    }

    // The common call (allowed, no per-tool budget, nothing to confirm)
    // returns the inner future in the authorization scope, made now; the
    // rest is boxed. So the call's future holds the inner one, not a second
    // copy of the request and its context plus the confirmation's state.
    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, ErrorData>> + MaybeSendFuture + '_ {
        let (ctx, confirm) = match self.authorize_confirmable(
            &context.extensions,
            &Action::CallTool,
            &request.name,
            object(request.arguments.clone()),
        ) {
            Ok(decided) => decided,
            Err(error) => return Either::Left(std::future::ready(Err(error))),
        };
        if !confirm && crate::limit::tool_budget(&context.extensions).is_none() {
            return Either::Right(Either::Left(context::scope(ctx, move || {
                self.inner.call_tool(request, context)
            })));
        }
        Either::Right(Either::Right(Box::pin(
            self.call_counted(request, context, ctx, confirm),
        )))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let may = self.lister(&context.extensions, Action::ListTools, Action::CallTool)?;
        let mut result = self.inner.list_tools(request, context).await?;
        result.tools.retain(|t| may(&t.name));
        Ok(result.with_cache_scope(CacheScope::Private))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let ctx = self
            .authorize(
                &context.extensions,
                Action::method(&request.method),
                "",
                request.params.clone(),
            )
            .map_err(|denied| hidden_method(denied, &request.method))?;
        context::scope(ctx, move || self.inner.on_custom_request(request, context)).await
    }

    async fn on_cancelled(&self, notification: CancelledNotificationParam, context: NotificationContext<RoleServer>) {
        self.inner.on_cancelled(notification, context).await
    }

    async fn on_progress(&self, notification: ProgressNotificationParam, context: NotificationContext<RoleServer>) {
        self.inner.on_progress(notification, context).await
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_initialized(context).await
    }

    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_roots_list_changed(context).await
    }

    async fn on_custom_notification(&self, notification: CustomNotification, context: NotificationContext<RoleServer>) {
        // A notification has no answer: when denied it is dropped (the
        // decision is audited).
        if let Ok(ctx) = self.authorize(
            &context.extensions,
            Action::method(&notification.method),
            "",
            notification.params.clone(),
        ) {
            context::scope(ctx, move || self.inner.on_custom_notification(notification, context)).await
        }
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        if caller(&context.extensions).is_none() {
            return Err(no_principal(&Action::method("tasks/get"), ""));
        }
        self.inner.get_task(request, context).await
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if caller(&context.extensions).is_none() {
            return Err(no_principal(&Action::method("tasks/update"), ""));
        }
        self.inner.update_task(request, context).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if caller(&context.extensions).is_none() {
            return Err(no_principal(&Action::method("tasks/cancel"), ""));
        }
        self.inner.cancel_task(request, context).await
    }

    async fn list_skills(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListSkillsResult, ErrorData> {
        let may = self.lister(&context.extensions, Action::method("skills/list"), Action::ReadResource)?;
        let mut result = self.inner.list_skills(request, context).await?;
        result.skills.retain(|s| may(&s.uri));
        Ok(result.with_cache_scope(CacheScope::Private))
    }

    async fn get_skill(
        &self,
        request: GetSkillRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetSkillResult, ErrorData> {
        let ctx = self.authorize(&context.extensions, Action::ReadResource, &request.uri, None)?;
        let mut result = context::scope(ctx, move || self.inner.get_skill(request, context)).await?;
        result.cache_scope = Some(CacheScope::Private);
        Ok(result)
    }

    async fn read_resource_directory(
        &self,
        request: ReadResourceDirectoryRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceDirectoryResult, ErrorData> {
        let ctx = self.authorize(&context.extensions, Action::ReadResource, &request.uri, None)?;
        let caller = Caller {
            principal: ctx.principal.clone(),
            session_id: ctx.session_id.clone(),
        };
        let mut result = context::scope(ctx, move || self.inner.read_resource_directory(request, context)).await?;
        result.resources.retain(|r| {
            self.engine
                .evaluate(&input(&caller, &Action::ReadResource, &r.uri, None))
                .allowed()
        });
        Ok(result.with_cache_scope(CacheScope::Private))
    }
}
