//! Helpers written once for every middleware (as tower-http's `macros.rs`):
//! the inner-service accessors and opaque response bodies.

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose inner service
/// is the field `inner: S`.
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwrap the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// A public, opaque response body type wrapping
/// [`RejectOr`](crate::body::RejectOr): the inner service's body, or a
/// middleware's own short rejection. Each middleware names its own, so no
/// body type is shared across layers and none exposes its variants.
macro_rules! opaque_body {
    ($(#[$m:meta])* pub type $name:ident<$param:ident>;) => {
        pin_project_lite::pin_project! {
            $(#[$m])*
            pub struct $name<$param> {
                #[pin]
                inner: $crate::body::RejectOr<$param>,
            }
        }

        impl<$param> $name<$param> {
            /// The inner service's body, unchanged.
            pub(crate) fn inner(body: $param) -> Self {
                $name {
                    inner: $crate::body::RejectOr::Inner { body },
                }
            }

            /// A rejection's short body.
            pub(crate) fn rejection(body: bytes::Bytes) -> Self {
                $name {
                    inner: $crate::body::RejectOr::Rejection { body: Some(body) },
                }
            }
        }

        impl<$param> std::fmt::Debug for $name<$param> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl<$param> http_body::Body for $name<$param>
        where
            $param: http_body::Body<Data = bytes::Bytes>,
        {
            type Data = bytes::Bytes;
            type Error = $param::Error;

            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
                self.project().inner.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> http_body::SizeHint {
                self.inner.size_hint()
            }
        }
    };
}

/// The methods of an rmcp `ServerHandler` wrapper that go to its `inner`
/// handler unchanged: all but `initialize`, `negotiate_initialize`,
/// `discover`, `get_info` and `call_tool`, which each wrapper writes (the
/// places where wrappers differ); `(except_tools)` leaves out `list_tools`
/// and `get_tool` too, `(except_definitions)` also `get_prompt`,
/// `list_prompts` and `list_resource_templates`. Expands inside
/// `impl<S: ServerHandler> ServerHandler for Wrapper<S>`, with `McpError`
/// and `rmcp::model::*` in scope.
macro_rules! forward_server_handler {
    () => {
        fn list_tools(
            &self,
            request: Option<PaginatedRequestParams>,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<ListToolsResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.list_tools(request, context)
        }

        fn get_tool(&self, name: &str) -> Option<Tool> {
            self.inner.get_tool(name)
        }

        forward_server_handler!(except_tools);
    };
    // `initialize`, `negotiate_initialize`, `discover` and `get_info`
    // unchanged too, for a wrapper that changes none of them.
    (info) => {
        fn initialize(
            &self,
            request: InitializeRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<InitializeResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.initialize(request, context)
        }

        fn negotiate_initialize(&self, request: &InitializeRequestParams) -> Result<InitializeResult, McpError> {
            self.inner.negotiate_initialize(request)
        }

        fn discover(
            &self,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<DiscoverResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.discover(context)
        }

        fn get_info(&self) -> ServerConfig {
            self.inner.get_info()
        }
    };
    // Without `list_tools` and `get_tool`, for a wrapper that writes them.
    (except_tools) => {
        fn get_prompt(
            &self,
            request: GetPromptRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<GetPromptResponse, McpError>> + MaybeSendFuture + '_ {
            self.inner.get_prompt(request, context)
        }

        fn list_prompts(
            &self,
            request: Option<PaginatedRequestParams>,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<ListPromptsResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.list_prompts(request, context)
        }

        fn list_resource_templates(
            &self,
            request: Option<PaginatedRequestParams>,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<ListResourceTemplatesResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.list_resource_templates(request, context)
        }

        forward_server_handler!(except_definitions);
    };
    // Without `list_tools`, `get_tool`, `get_prompt`, `list_prompts` and
    // `list_resource_templates`, for a wrapper that writes them (`Pinned`).
    (except_definitions) => {
        fn ping(
            &self,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
            self.inner.ping(context)
        }

        fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
            self.inner.supported_protocol_versions()
        }

        fn complete(
            &self,
            request: CompleteRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<CompleteResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.complete(request, context)
        }

        fn set_level(
            &self,
            request: SetLevelRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
            self.inner.set_level(request, context)
        }

        fn list_resources(
            &self,
            request: Option<PaginatedRequestParams>,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<ListResourcesResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.list_resources(request, context)
        }

        fn read_resource(
            &self,
            request: ReadResourceRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<ReadResourceResponse, McpError>> + MaybeSendFuture + '_ {
            self.inner.read_resource(request, context)
        }

        fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
            self.inner.accepted_subscription_filter(requested)
        }

        fn listen(
            &self,
            context: SubscriptionContext,
        ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
            self.inner.listen(context)
        }

        fn subscribe(
            &self,
            request: SubscribeRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
            self.inner.subscribe(request, context)
        }

        fn unsubscribe(
            &self,
            request: UnsubscribeRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
            self.inner.unsubscribe(request, context)
        }

        fn on_custom_request(
            &self,
            request: CustomRequest,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<CustomResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.on_custom_request(request, context)
        }

        fn on_cancelled(
            &self,
            notification: CancelledNotificationParam,
            context: NotificationContext<RoleServer>,
        ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
            self.inner.on_cancelled(notification, context)
        }

        fn on_progress(
            &self,
            notification: ProgressNotificationParam,
            context: NotificationContext<RoleServer>,
        ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
            self.inner.on_progress(notification, context)
        }

        fn on_initialized(
            &self,
            context: NotificationContext<RoleServer>,
        ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
            self.inner.on_initialized(context)
        }

        fn on_roots_list_changed(
            &self,
            context: NotificationContext<RoleServer>,
        ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
            self.inner.on_roots_list_changed(context)
        }

        fn on_custom_notification(
            &self,
            notification: CustomNotification,
            context: NotificationContext<RoleServer>,
        ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
            self.inner.on_custom_notification(notification, context)
        }

        fn get_task(
            &self,
            request: GetTaskParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<GetTaskResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.get_task(request, context)
        }

        fn update_task(
            &self,
            request: UpdateTaskParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
            self.inner.update_task(request, context)
        }

        fn cancel_task(
            &self,
            request: CancelTaskParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
            self.inner.cancel_task(request, context)
        }

        fn list_skills(
            &self,
            request: Option<PaginatedRequestParams>,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<ListSkillsResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.list_skills(request, context)
        }

        fn get_skill(
            &self,
            request: GetSkillRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<GetSkillResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.get_skill(request, context)
        }

        fn read_resource_directory(
            &self,
            request: ReadResourceDirectoryRequestParams,
            context: RequestContext<RoleServer>,
        ) -> impl Future<Output = Result<ReadResourceDirectoryResult, McpError>> + MaybeSendFuture + '_ {
            self.inner.read_resource_directory(request, context)
        }
    };
}
