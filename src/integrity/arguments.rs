//! [`ArgumentGuard`]: a tool call's arguments are bounded in size and valid
//! against the tool's input schema before the tool runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::Either;
use rmcp::ServerHandler;
use rmcp::model::*;
use rmcp::service::{MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext};

use crate::audit::{AuditEvent, Outcome};

type McpError = rmcp::ErrorData;

/// The size bound and schema check of [`ArgumentGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct ArgumentLimits {
    max_bytes: usize,
    schema: bool,
}

/// The default bound of a tool call's arguments: 1 MiB of JSON.
pub const DEFAULT_MAX_ARGUMENT_BYTES: usize = 1024 * 1024;

impl Default for ArgumentLimits {
    /// At most [`DEFAULT_MAX_ARGUMENT_BYTES`], checked against the schema.
    fn default() -> Self {
        ArgumentLimits {
            max_bytes: DEFAULT_MAX_ARGUMENT_BYTES,
            schema: true,
        }
    }
}

impl ArgumentLimits {
    /// The largest arguments accepted, as JSON (1 byte to 4 MiB, rmcp's
    /// request bound). Defaults to [`DEFAULT_MAX_ARGUMENT_BYTES`].
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes.clamp(1, 4 * 1024 * 1024);
        self
    }

    /// Whether arguments are checked against the tool's `inputSchema`.
    /// Defaults to `true`.
    pub fn schema(mut self, check: bool) -> Self {
        self.schema = check;
        self
    }
}

/// How many tools' compiled schemas are kept.
const MAX_VALIDATORS: usize = 1024;

/// An rmcp handler that refuses a `tools/call` whose arguments are larger
/// than [`ArgumentLimits::max_bytes`] or not valid against the tool's
/// `inputSchema` (as the inner handler's
/// [`get_tool`](ServerHandler::get_tool) gives it, as rmcp's tool router
/// does), before the tool runs. The refusal is a tool error (`isError`, as
/// MCP asks for input errors, so the model can correct itself) naming the
/// first invalid place (`/path: message`, at most 200 characters), and an
/// audit event `arguments` (reason `arguments_too_large` or
/// `arguments_invalid`, never the values). Every other method goes to the
/// inner handler unchanged.
///
/// Schemas are compiled once per tool (at most 1024 kept), shared by the
/// guards made with [`around`](Self::around); a `pattern` is
/// matched by the `regex` crate (linear time: a schema's pattern cannot be
/// made to backtrack on a caller's input); a schema that does not compile
/// that way (or names a remote `$ref`) refuses every call of its tool (fail
/// closed), with an error log naming the tool. A tool the inner handler
/// does not describe through `get_tool` gets the size check only.
///
/// [`Guard`](crate::Guard) installs it inside the policy (a caller who may
/// not call a tool learns nothing of its schema) with
/// [`ArgumentLimits::default`]; see [`Guard::arguments`](crate::Guard::arguments).
#[derive(Clone)]
pub struct ArgumentGuard<S> {
    inner: S,
    limits: ArgumentLimits,
    validators: Validators,
}

/// The compiled schemas, by tool name: shared by every handler a server
/// makes (in stateless mode rmcp makes one per request).
pub(crate) type Validators = Arc<Mutex<HashMap<String, Compiled>>>;

/// A tool's compiled schema, with the schema it was compiled from (a tool
/// whose schema changes is compiled again).
#[derive(Clone)]
pub(crate) struct Compiled {
    schema: Arc<JsonObject>,
    validator: Option<Arc<jsonschema::Validator>>,
}

impl<S> std::fmt::Debug for ArgumentGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgumentGuard")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S> ArgumentGuard<S> {
    /// Guard `inner`'s tool calls with `limits`.
    pub fn new(inner: S, limits: ArgumentLimits) -> Self {
        ArgumentGuard {
            inner,
            limits,
            validators: Validators::default(),
        }
    }

    /// The same guard (its limits and its compiled schemas) around another
    /// handler: for a server that makes a handler per session or per
    /// request, so that each tool's schema is compiled once.
    pub fn around<T>(&self, inner: T) -> ArgumentGuard<T> {
        ArgumentGuard {
            inner,
            limits: self.limits,
            validators: self.validators.clone(),
        }
    }

    /// The compiled schema of `tool`, compiled now if new or changed.
    fn validator(&self, tool: &Tool) -> Option<Arc<jsonschema::Validator>> {
        let mut validators = crate::cache::lock(&self.validators);
        if let Some(compiled) = validators.get(tool.name.as_ref())
            && (Arc::ptr_eq(&compiled.schema, &tool.input_schema) || compiled.schema == tool.input_schema)
        {
            return compiled.validator.clone();
        }
        let schema = serde_json::Value::Object((*tool.input_schema).clone());
        let validator = jsonschema::options()
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(&schema)
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!(tool = %tool.name, error = %e, "the tool's input schema does not compile: every call is refused");
            })
            .ok();
        if validators.len() >= MAX_VALIDATORS {
            validators.clear();
        }
        validators.insert(
            tool.name.to_string(),
            Compiled {
                schema: tool.input_schema.clone(),
                validator: validator.clone(),
            },
        );
        validator
    }
}

impl<S: ServerHandler> ArgumentGuard<S> {
    /// Why `request` may not reach its tool, if it may not.
    fn refusal(&self, request: &mut CallToolRequestParams) -> Option<(&'static str, String)> {
        // Measured as JSON, without writing it anywhere.
        let bytes = match &request.arguments {
            Some(arguments) => {
                let mut counter = Counter(0);
                serde_json::to_writer(&mut counter, arguments).map_or(usize::MAX, |()| counter.0)
            }
            None => 0,
        };
        if bytes > self.limits.max_bytes {
            return Some((
                "arguments_too_large",
                format!(
                    "arguments too large: {bytes} bytes, at most {} for a tool call",
                    self.limits.max_bytes
                ),
            ));
        }
        if !self.limits.schema {
            return None;
        }
        let tool = self.inner.get_tool(&request.name)?;
        let Some(validator) = self.validator(&tool) else {
            return Some((
                "arguments_invalid",
                "this tool's input schema cannot be checked; the call is refused".to_owned(),
            ));
        };
        // Validated in place (moved into a `Value` and back, not copied);
        // the error is looked for only when the arguments are invalid.
        let given = request.arguments.is_some();
        let arguments = serde_json::Value::Object(request.arguments.take().unwrap_or_default());
        let refused = if validator.is_valid(&arguments) {
            None
        } else {
            validator.iter_errors(&arguments).next().map(|error| {
                let path = error.instance_path.to_string();
                (path, error.to_string())
            })
        };
        if let serde_json::Value::Object(map) = arguments
            && given
        {
            request.arguments = Some(map);
        }
        let (path, error) = refused?;
        let mut message = format!(
            "invalid arguments at {}: {error}",
            if path.is_empty() { "/" } else { &path }
        );
        if message.chars().count() > 200 {
            message = message.chars().take(199).collect::<String>() + "…";
        }
        Some(("arguments_invalid", message))
    }
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn audit(context: &RequestContext<RoleServer>, tool: &str, reason: &str) {
    let principal = super::caller(context);
    AuditEvent::Arguments {
        principal,
        outcome: Outcome::Deny,
        reason,
        resource: tool,
    }
    .emit();
}

#[allow(deprecated)] // every other method goes to the inner handler, the deprecated ones too
impl<S: ServerHandler> ServerHandler for ArgumentGuard<S> {
    // Checked before the inner future is made, which then runs as is: the
    // call's future holds the inner one and nothing else.
    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        let mut request = request;
        if let Some((reason, message)) = self.refusal(&mut request) {
            audit(&context, &request.name, reason);
            return Either::Left(std::future::ready(Ok(CallToolResponse::Complete(
                CallToolResult::error(vec![ContentBlock::text(message)]),
            ))));
        }
        Either::Right(self.inner.call_tool(request, context))
    }

    forward_server_handler!(info);
    forward_server_handler!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let limits = ArgumentLimits::default();
        assert_eq!(limits.max_bytes, DEFAULT_MAX_ARGUMENT_BYTES);
        assert_eq!(DEFAULT_MAX_ARGUMENT_BYTES, 1024 * 1024);
        assert!(limits.schema);
        assert_eq!(ArgumentLimits::default().max_bytes(0).max_bytes, 1);
        assert_eq!(
            ArgumentLimits::default().max_bytes(usize::MAX).max_bytes,
            4 * 1024 * 1024
        );
    }
}
