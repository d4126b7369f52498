//! The MCP conformance suite's server fixtures, plain or behind the guard.
//!
//! ```text
//! cargo run --example conformance_server              # plain rmcp
//! cargo run --example conformance_server -- --guarded # behind rmcp-guard
//! ```
//!
//! The tools, resources and prompts are the ones the server scenarios of
//! `@modelcontextprotocol/conformance` 0.1.13 (2025-11-25) and 0.2.0-alpha.12
//! (the 2026-07-28 requirement set) call (`npx conformance list --server`):
//! `test_simple_text`, `test_image_content`, `test_sampling`,
//! `test://static-text`, `test://template/{id}/data`, `test_prompt_with_arguments`, ...
//! The 2026 fixtures it lacks (input-required tools, tasks, `x-mcp-header`
//! tools) are listed with the reason in `tests/conformance-2026/baseline.json`.
//!
//! Unguarded, it is rmcp's `StreamableHttpService` with rmcp's default
//! configuration at `/mcp`. Guarded, the same handler sits behind
//! [`ResourceServer::router`] (bearer JWT from an in-process [`TestIssuer`],
//! RFC 9728 metadata, session binding, Host/Origin derived from the resource
//! URI) and, with the `policy` feature, inside [`Guarded`] with a policy that
//! allows everything: the suite tests the protocol, not our authorization.
//!
//! It prints `MCP_URL=<endpoint>` once it listens. Guarded, it also prints
//! `MCP_BEARER_TOKEN=<token>` (valid for an hour, audience = the endpoint), or
//! writes the token to the file named by `CONFORMANCE_TOKEN_FILE` instead.
//! `CONFORMANCE_BIND` sets the listen address (default `127.0.0.1:0`);
//! `CONFORMANCE_MODE=guarded` is the same as `--guarded`. `--guarded-default-policy`
//! (or `CONFORMANCE_MODE=guarded-default-policy`) uses the shipped default policy
//! instead of allow-all.
//!
//! `tests/conformance.rs` runs the suite against both modes and compares.

#![allow(deprecated)] // Logging and sampling are deprecated by SEP-2577, but the 2025 suite tests them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};
use rmcp_guard::oauth::{Issuer, ResourceServer};
use rmcp_guard_testkit::TestIssuer;
use serde_json::{Value, json};

use rmcp_guard::Guard;
use rmcp_guard::policy::{PolicyEngine, RegoVersion};

/// A 1x1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV header with no samples.
const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEARKwAAIhYAQACABAAZGF0YQAAAAA=";

/// The policy of the guarded mode: every decision is allow.
pub const ALLOW_ALL_POLICY: &str = "package mcp.authz\n\nimport rego.v1\n\ndefault allow := true\n";

/// The fixtures. One value per MCP session (the factory makes a new one), so
/// the logging level is per session.
#[derive(Clone, Default)]
pub struct ConformanceServer {
    log_level: Arc<Mutex<Option<LoggingLevel>>>,
}

fn schema(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn no_arguments() -> JsonObject {
    schema(json!({ "type": "object", "properties": {} }))
}

fn one_string_argument(name: &str, description: &str) -> JsonObject {
    schema(json!({
        "type": "object",
        "properties": { name: { "type": "string", "description": description } },
        "required": [name],
    }))
}

fn text_resource(uri: impl Into<String>, mime_type: &str, text: impl Into<String>) -> ResourceContents {
    ResourceContents::TextResourceContents {
        uri: uri.into(),
        mime_type: Some(mime_type.to_owned()),
        text: text.into(),
        meta: None,
    }
}

fn tools() -> Vec<Tool> {
    let plain = [
        ("test_simple_text", "Returns simple text content"),
        ("test_image_content", "Returns a PNG image"),
        ("test_audio_content", "Returns a WAV clip"),
        ("test_embedded_resource", "Returns an embedded text resource"),
        (
            "test_multiple_content_types",
            "Returns text, image and resource content",
        ),
        ("test_tool_with_logging", "Sends three log notifications while it runs"),
        ("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100"),
        ("test_error_handling", "Always returns a tool error"),
        (
            "test_elicitation_sep1034_defaults",
            "Elicits a form whose fields have defaults (SEP-1034)",
        ),
        (
            "test_elicitation_sep1330_enums",
            "Elicits a form with every enum variant (SEP-1330)",
        ),
        (
            "test_reconnection",
            "Answers after a short pause, for SSE polling tests (SEP-1699)",
        ),
    ];
    let mut tools: Vec<Tool> = plain
        .into_iter()
        .map(|(name, description)| Tool::new(name, description, no_arguments()))
        .collect();
    tools.push(Tool::new(
        "test_sampling",
        "Asks the client's LLM to complete a prompt",
        one_string_argument("prompt", "The prompt to send to the LLM"),
    ));
    tools.push(Tool::new(
        "test_elicitation",
        "Asks the user for a username and an email address",
        one_string_argument("message", "The message to show the user"),
    ));
    tools.push(Tool::new(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features",
        // The 2026 suite's schema (SEP-2106): the 2025 one plus $anchor,
        // allOf/anyOf and if/then/else, all of which must survive listing.
        schema(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "$anchor": "addressDef",
                    "type": "object",
                    "properties": { "street": { "type": "string" }, "city": { "type": "string" } }
                }
            },
            "properties": {
                "name": { "type": "string" },
                "address": { "$ref": "#/$defs/address" },
                "contactMethod": { "type": "string", "enum": ["phone", "email"] },
                "phone": { "type": "string" },
                "email": { "type": "string" }
            },
            "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
            "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
            "then": { "required": ["phone"] },
            "else": { "required": ["email"] },
            "additionalProperties": false
        })),
    ));
    tools
}

fn elicitation_defaults_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "default": "John Doe" },
            "age": { "type": "integer", "default": 30 },
            "score": { "type": "number", "default": 95.5 },
            "status": { "type": "string", "enum": ["active", "inactive", "pending"], "default": "active" },
            "verified": { "type": "boolean", "default": true }
        }
    })
}

fn elicitation_enums_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
            "titledSingle": {
                "type": "string",
                "oneOf": [
                    { "const": "value1", "title": "First Option" },
                    { "const": "value2", "title": "Second Option" },
                    { "const": "value3", "title": "Third Option" }
                ]
            },
            "legacyEnum": {
                "type": "string",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"]
            },
            "untitledMulti": {
                "type": "array",
                "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
            },
            "titledMulti": {
                "type": "array",
                "items": {
                    "anyOf": [
                        { "const": "value1", "title": "First Choice" },
                        { "const": "value2", "title": "Second Choice" },
                        { "const": "value3", "title": "Third Choice" }
                    ]
                }
            }
        }
    })
}

fn string_argument<'a>(arguments: &'a Option<JsonObject>, name: &str) -> Option<&'a str> {
    arguments.as_ref()?.get(name)?.as_str()
}

impl ConformanceServer {
    /// Sends `notifications/message` unless the client asked for a higher level.
    async fn log(&self, context: &RequestContext<RoleServer>, level: LoggingLevel, message: &str) {
        let threshold = *self.log_level.lock().unwrap_or_else(|e| e.into_inner());
        if threshold.is_some_and(|min| (level as u8) < (min as u8)) {
            return;
        }
        let param = LoggingMessageNotificationParam::new(level, json!(message)).with_logger("conformance_server");
        let _ = context.peer.notify_logging_message(param).await;
    }

    /// `elicitation/create` with a form built from `schema`; the answer as text.
    async fn elicit(&self, context: &RequestContext<RoleServer>, message: &str, schema: Value) -> CallToolResult {
        let requested_schema = match serde_json::from_value(schema) {
            Ok(schema) => schema,
            Err(e) => return CallToolResult::error(vec![ContentBlock::text(format!("bad schema: {e}"))]),
        };
        let request = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: message.to_owned(),
            requested_schema,
        });
        match context.peer.send_request(ServerRequest::ElicitRequest(request)).await {
            Ok(ClientResult::ElicitResult(result)) => {
                let result = serde_json::to_value(&result).unwrap_or_default();
                CallToolResult::success(vec![ContentBlock::text(format!(
                    "Elicitation completed: action={}, content={}",
                    result["action"].as_str().unwrap_or("unknown"),
                    result.get("content").unwrap_or(&Value::Null)
                ))])
            }
            Ok(other) => CallToolResult::error(vec![ContentBlock::text(format!("unexpected answer: {other:?}"))]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("elicitation failed: {e}"))]),
        }
    }

    async fn sample(&self, context: &RequestContext<RoleServer>, prompt: &str) -> CallToolResult {
        let params = CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 100);
        match context.peer.create_message(params).await {
            Ok(result) => {
                let result = serde_json::to_value(&result).unwrap_or_default();
                let text = result
                    .pointer("/content/text")
                    .or_else(|| result.pointer("/content/0/text"))
                    .and_then(Value::as_str)
                    .unwrap_or("(no text)");
                CallToolResult::success(vec![ContentBlock::text(format!("LLM response: {text}"))])
            }
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("sampling failed: {e}"))]),
        }
    }
}

impl ServerHandler for ConformanceServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .enable_logging()
                .enable_completions()
                .build(),
        )
        .with_server_info(Implementation::new(
            "rmcp-guard-conformance-server",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let result = match request.name.as_ref() {
            "test_simple_text" => {
                CallToolResult::success(vec![ContentBlock::text("This is a simple text response for testing.")])
            }
            "test_image_content" => CallToolResult::success(vec![ContentBlock::image(PNG, "image/png")]),
            "test_audio_content" => CallToolResult::success(vec![ContentBlock::audio(WAV, "audio/wav")]),
            "test_embedded_resource" => CallToolResult::success(vec![ContentBlock::resource(text_resource(
                "test://embedded-resource",
                "text/plain",
                "This is an embedded resource content.",
            ))]),
            "test_multiple_content_types" => CallToolResult::success(vec![
                ContentBlock::text("Multiple content types test:"),
                ContentBlock::image(PNG, "image/png"),
                ContentBlock::resource(text_resource(
                    "test://mixed-content-resource",
                    "application/json",
                    r#"{"test":"data","value":123}"#,
                )),
            ]),
            "test_tool_with_logging" => {
                self.log(&context, LoggingLevel::Info, "Tool execution started").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(&context, LoggingLevel::Info, "Tool processing data").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(&context, LoggingLevel::Info, "Tool execution completed").await;
                CallToolResult::success(vec![ContentBlock::text("Logging test completed")])
            }
            "test_tool_with_progress" => {
                let token = context.meta.get_progress_token();
                for (i, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(token) = &token {
                        let param = ProgressNotificationParam::new(token.clone(), progress).with_total(100.0);
                        let _ = context.peer.notify_progress(param).await;
                    }
                }
                CallToolResult::success(vec![ContentBlock::text("Progress test completed")])
            }
            "test_error_handling" => CallToolResult::error(vec![ContentBlock::text(
                "This tool intentionally returns an error for testing",
            )]),
            "test_sampling" => {
                let prompt = string_argument(&request.arguments, "prompt").unwrap_or("Hello");
                self.sample(&context, prompt).await
            }
            "test_elicitation" => {
                let message =
                    string_argument(&request.arguments, "message").unwrap_or("Please provide your information");
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "username": { "type": "string", "description": "User's response" },
                        "email": { "type": "string", "description": "User's email address" }
                    },
                    "required": ["username", "email"]
                });
                self.elicit(&context, message, schema).await
            }
            "test_elicitation_sep1034_defaults" => {
                self.elicit(&context, "Please review these values", elicitation_defaults_schema())
                    .await
            }
            "test_elicitation_sep1330_enums" => {
                self.elicit(&context, "Please choose", elicitation_enums_schema()).await
            }
            "json_schema_2020_12_tool" => {
                let name = string_argument(&request.arguments, "name").unwrap_or("world");
                CallToolResult::success(vec![ContentBlock::text(format!("Hello, {name}!"))])
            }
            "test_reconnection" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                CallToolResult::success(vec![ContentBlock::text("Reconnection test completed")])
            }
            other => return Err(ErrorData::invalid_params(format!("unknown tool: {other}"), None)),
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("test://static-text", "Static text")
                .with_description("A static text resource")
                .with_mime_type("text/plain"),
            Resource::new("test://static-binary", "Static binary")
                .with_description("A static PNG resource")
                .with_mime_type("image/png"),
            Resource::new("test://watched-resource", "Watched resource")
                .with_description("A resource clients may subscribe to")
                .with_mime_type("text/plain"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("test://template/{id}/data", "Template data")
                .with_description("Data for an id, substituted into the URI")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => {
                text_resource(uri, "text/plain", "This is the content of the static text resource.")
            }
            "test://watched-resource" => text_resource(uri, "text/plain", "Watched resource content."),
            "test://static-binary" => ResourceContents::BlobResourceContents {
                uri: uri.to_owned(),
                mime_type: Some("image/png".to_owned()),
                blob: PNG.to_owned(),
                meta: None,
            },
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|s| s.strip_suffix("/data"))
            {
                Some(id) if !id.is_empty() && !id.contains('/') => text_resource(
                    uri,
                    "application/json",
                    json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string(),
                ),
                _ => {
                    return Err(ErrorData::resource_not_found(
                        format!("no resource {uri}"),
                        Some(json!({ "uri": uri })),
                    ));
                }
            },
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        // The fixtures never change, so there is nothing to notify about.
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let argument = |name: &str, description: &str| {
            PromptArgument::new(name)
                .with_description(description)
                .with_required(true)
        };
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new("test_simple_prompt", Some("A prompt without arguments"), None),
            Prompt::new(
                "test_prompt_with_arguments",
                Some("A prompt that substitutes two arguments"),
                Some(vec![
                    argument("arg1", "First test argument"),
                    argument("arg2", "Second test argument"),
                ]),
            ),
            Prompt::new(
                "test_prompt_with_embedded_resource",
                Some("A prompt that embeds a resource"),
                Some(vec![argument("resourceUri", "URI of the resource to embed")]),
            ),
            Prompt::new("test_prompt_with_image", Some("A prompt with an image"), None),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let messages = match request.name.as_str() {
            "test_simple_prompt" => vec![PromptMessage::new_text(
                Role::User,
                "This is a simple prompt for testing.",
            )],
            "test_prompt_with_arguments" => {
                let arg1 = string_argument(&request.arguments, "arg1").unwrap_or_default();
                let arg2 = string_argument(&request.arguments, "arg2").unwrap_or_default();
                vec![PromptMessage::new_text(
                    Role::User,
                    format!("Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"),
                )]
            }
            "test_prompt_with_embedded_resource" => {
                let uri = string_argument(&request.arguments, "resourceUri").unwrap_or("test://example-resource");
                vec![
                    PromptMessage::new(
                        Role::User,
                        ContentBlock::resource(text_resource(
                            uri,
                            "text/plain",
                            "Embedded resource content for testing.",
                        )),
                    ),
                    PromptMessage::new_text(Role::User, "Please process the embedded resource above."),
                ]
            }
            "test_prompt_with_image" => vec![
                PromptMessage::new(Role::User, ContentBlock::image(PNG, "image/png")),
                PromptMessage::new_text(Role::User, "Please analyze the image above."),
            ],
            other => return Err(ErrorData::invalid_params(format!("unknown prompt: {other}"), None)),
        };
        Ok(GetPromptResult::new(messages).into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let candidates: &[&str] = match (&request.r#ref, request.argument.name.as_str()) {
            (Reference::Prompt(_), "arg1" | "arg2") => &["paris", "park", "party", "test", "testValue1"],
            (Reference::Resource(_), "id") => &["1", "2", "3", "123"],
            _ => &[],
        };
        let values = candidates
            .iter()
            .filter(|v| v.starts_with(request.argument.value.as_str()))
            .map(|v| (*v).to_owned())
            .collect();
        let info = CompletionInfo::new(values).map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.log_level.lock().unwrap_or_else(|e| e.into_inner()) = Some(request.level);
        Ok(())
    }
}

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// rmcp's `StreamableHttpService` with its default configuration.
    Unguarded,
    /// The same handler behind `Guard` (and the allow-all policy).
    Guarded,
    /// As `Guarded`, with the shipped default policy (`PolicyEngine::default_policy`)
    /// instead of allow-all; the token carries its tool scope, `mcp:tools`.
    GuardedDefaultPolicy,
}

/// A server that is listening; stops when dropped.
pub struct Running {
    /// The MCP endpoint.
    pub url: String,
    /// A bearer token for `url` (guarded mode only).
    pub token: Option<String>,
    serve: tokio::task::JoinHandle<()>,
    _issuer: Option<TestIssuer>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Listen on `bind` and serve the fixtures in `mode`.
pub async fn start(mode: Mode, bind: &str) -> Result<Running, BoxError> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    let (app, token, issuer) = match mode {
        Mode::Unguarded => {
            let mcp = StreamableHttpService::new(
                || Ok(ConformanceServer::default()),
                LocalSessionManager::default().into(),
                StreamableHttpServerConfig::default(),
            );
            (axum::Router::new().route_service("/mcp", mcp), None, None)
        }
        _guarded => {
            let issuer = TestIssuer::start().await?;
            let rs = ResourceServer::builder(url.clone(), Issuer::discover(issuer.issuer()))
                .resource_name("rmcp-guard conformance server")
                .build()?;
            rs.warm_up().await?;
            let engine = match mode {
                Mode::GuardedDefaultPolicy => PolicyEngine::default_policy("mcp:tools")?,
                _ => PolicyEngine::builder()
                    .module("allow_all.rego", ALLOW_ALL_POLICY)
                    .rego_version(RegoVersion::V1)
                    .build()?,
            };
            // One token drives the whole suite, so the request limits run
            // but never refuse (tests/limits.rs tests them).
            let limits = rmcp_guard::limit::RequestLimits::default()
                .rate(rmcp_guard::limit::Rate::per_second(std::num::NonZeroU32::MAX))
                .burst(u32::MAX)
                .in_flight(u32::MAX);
            let app = Guard::new(rs)
                .policy(engine)
                .limits(limits)
                .router(|| Ok(ConformanceServer::default()));
            let token = issuer
                .token()
                .subject("conformance-suite")
                .audience(url.clone())
                .scope("mcp:tools")
                .expires_in(Duration::from_secs(3600))
                .sign();
            (app, Some(token), Some(issuer))
        }
    };
    let serve = tokio::spawn(async move {
        if let Err(e) = rmcp_guard::serve(listener, app).await {
            eprintln!("conformance_server: {e}");
        }
    });
    Ok(Running {
        url,
        token,
        serve,
        _issuer: issuer,
    })
}

#[allow(dead_code)] // Unused when tests/conformance.rs includes this file as a module.
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let flag = std::env::args().skip(1).find(|a| a.starts_with("--guarded"));
    let mode = match flag.or_else(|| std::env::var("CONFORMANCE_MODE").ok()).as_deref() {
        None | Some("unguarded") => Mode::Unguarded,
        Some("--guarded" | "guarded") => Mode::Guarded,
        Some("--guarded-default-policy" | "guarded-default-policy") => Mode::GuardedDefaultPolicy,
        Some(other) => return Err(format!("unknown mode {other:?}").into()),
    };
    let bind = std::env::var("CONFORMANCE_BIND").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let running = start(mode, &bind).await?;
    println!("MCP_URL={}", running.url);
    if let Some(token) = &running.token {
        match std::env::var_os("CONFORMANCE_TOKEN_FILE") {
            Some(path) => std::fs::write(path, token)?,
            None => println!("MCP_BEARER_TOKEN={token}"),
        }
    }
    tokio::signal::ctrl_c().await?;
    drop(running);
    Ok(())
}
