//! [`OutputGuard`]: a tool's result leaves the server without the secrets
//! the tool read, nor anything shaped like a credential.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use futures_util::FutureExt as _;
use rmcp::ServerHandler;
use rmcp::model::*;
use rmcp::service::{MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext};

use super::redact::{Counts, OutputPolicy, Redactor};
use crate::audit::AuditEvent;
use crate::principal::Principal;
use crate::secrets::ReadSecrets;

type McpError = rmcp::ErrorData;

/// The rule named in the audit event when a whole result is withheld.
const WITHHELD: &str = "withheld";

/// An rmcp handler that removes secrets from every `tools/call` result
/// before it leaves the server.
///
/// - **The values the tool read.** Each call gets a fresh record of the
///   credentials handed out through
///   [`CallerCredentials`](crate::secrets::CallerCredentials) and of the
///   tokens from [`DownstreamTokens`](crate::oauth::DownstreamTokens)
///   during that call; every value of them (but the
///   [public fields](OutputPolicy::public_field)) is replaced by a marker
///   (`[REDACTED:secret_value]`) wherever it appears, as is or encoded
///   (see [`RedactionRule::SecretValue`](super::RedactionRule::SecretValue)).
/// - **Credential patterns**: private keys, JWTs, cloud keys,
///   `Authorization` headers, passwords in URLs; PII when the policy says
///   ([`RedactionRule`](super::RedactionRule)).
///
/// Both apply to the text content, embedded text resources (and the
/// decoded bytes of embedded blobs, for the values), resource links, the
/// structured content (strings and member names), the message and data of
/// an error answer, and the messages of an `InputRequiredResult`. Images
/// and audio are not inspected, nor notifications the tool sends while it
/// runs, nor a task's later result.
///
/// Every rule that removed something is audited (`output_redacted`: the
/// rule, the count and the tool, never the value). A call that read more
/// credentials than can be recorded (256) gets its result withheld
/// (replaced by a tool error), audited with rule `withheld`: fail closed.
///
/// [`Guard`](crate::Guard) installs it inside the policy, with
/// [`OutputPolicy::default`]; see [`Guard::output`](crate::Guard::output).
#[derive(Clone)]
pub struct OutputGuard<S> {
    inner: S,
    policy: Arc<OutputPolicy>,
}

impl<S> std::fmt::Debug for OutputGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputGuard")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S> OutputGuard<S> {
    /// Remove what `policy` says from `inner`'s tool results.
    pub fn new(inner: S, policy: OutputPolicy) -> Self {
        OutputGuard {
            inner,
            policy: Arc::new(policy),
        }
    }

    /// The same guard around another handler (one per session or request).
    pub fn around<T>(&self, inner: T) -> OutputGuard<T> {
        OutputGuard {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Remove what `redactor` removes from a tool's result.
fn redact_result(redactor: &mut Redactor<'_>, result: &mut CallToolResult) {
    for block in &mut result.content {
        redact_content(redactor, block);
    }
    if let Some(structured) = &mut result.structured_content {
        redact_value(redactor, structured);
    }
}

fn redact_content(redactor: &mut Redactor<'_>, block: &mut ContentBlock) {
    match block {
        ContentBlock::Text(text) => {
            redactor.redact(&mut text.text);
        }
        ContentBlock::Resource(embedded) => match &mut embedded.resource {
            ResourceContents::TextResourceContents { uri, text, .. } => {
                redactor.redact(uri);
                redactor.redact(text);
            }
            ResourceContents::BlobResourceContents { uri, blob, .. } => {
                redactor.redact(uri);
                redact_blob(redactor, blob);
            }
            other => redact_as_json(redactor, other),
        },
        // Binary media: not inspected (documented).
        ContentBlock::Image(_) | ContentBlock::Audio(_) => {}
        other => redact_as_json(redactor, other),
    }
}

/// An embedded blob: the values are removed from its decoded bytes; a blob
/// that is not base64 is treated as text.
fn redact_blob(redactor: &mut Redactor<'_>, blob: &mut String) {
    let engine = &base64::engine::general_purpose::STANDARD;
    match engine.decode(blob.as_bytes()) {
        Ok(mut bytes) => {
            if redactor.redact_bytes(&mut bytes) {
                *blob = engine.encode(&bytes);
            }
            zeroize::Zeroize::zeroize(&mut bytes);
        }
        Err(_) => {
            redactor.redact(blob);
        }
    }
}

/// A part of the result with no dedicated walk (a resource link, a content
/// kind newer than this crate): through its JSON form.
fn redact_as_json<T>(redactor: &mut Redactor<'_>, part: &mut T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let Ok(mut json) = serde_json::to_value(&*part) else {
        return;
    };
    let before = redactor.counts;
    redact_value(redactor, &mut json);
    if redactor.counts != before {
        match serde_json::from_value(json) {
            Ok(redacted) => *part = redacted,
            Err(e) => tracing::error!(error = %e, "output guard: a redacted part does not read back"),
        }
    }
}

/// Every string of a JSON value, member names included.
fn redact_value(redactor: &mut Redactor<'_>, value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => {
            redactor.redact(text);
        }
        serde_json::Value::Array(items) => {
            for item in items {
                redact_value(redactor, item);
            }
        }
        serde_json::Value::Object(map) => {
            let renamed: Vec<(String, String)> = map
                .keys()
                .filter_map(|key| {
                    let mut name = key.clone();
                    redactor.redact(&mut name).then(|| (key.clone(), name))
                })
                .collect();
            for (old, new) in renamed {
                if let Some(v) = map.remove(&old) {
                    map.insert(new, v);
                }
            }
            for item in map.values_mut() {
                redact_value(redactor, item);
            }
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

fn redact_error(redactor: &mut Redactor<'_>, error: &mut McpError) {
    let mut message = error.message.to_string();
    if redactor.redact(&mut message) {
        error.message = Cow::Owned(message);
    }
    if let Some(data) = &mut error.data {
        redact_value(redactor, data);
    }
}

fn audit(principal: Option<&Principal>, tool: &str, counts: &Counts) {
    for (rule, count) in counts.iter() {
        AuditEvent::OutputRedacted {
            principal,
            rule: rule.as_str(),
            count,
            resource: tool,
        }
        .emit();
    }
}

/// The answer in place of a result that could not be checked.
fn withheld(principal: Option<&Principal>, tool: &str) -> Result<CallToolResponse, McpError> {
    tracing::error!(
        tool,
        "output guard: the result is withheld (the credentials this call read could not all be recorded)"
    );
    AuditEvent::OutputRedacted {
        principal,
        rule: WITHHELD,
        count: 1,
        resource: tool,
    }
    .emit();
    Ok(CallToolResponse::Complete(CallToolResult::error(vec![
        ContentBlock::text("the tool's result was withheld: it could not be checked for secrets"),
    ])))
}

#[allow(deprecated)] // every other method goes to the inner handler, the deprecated ones too
impl<S: ServerHandler> ServerHandler for OutputGuard<S> {
    // The inner future is made now and mapped: the call's future holds it
    // and the few values the redaction needs, not a second copy of the
    // request and its context.
    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        let mut context = context;
        let read = ReadSecrets::default();
        context.extensions.insert(read.clone());
        let principal = super::caller(&context).cloned();
        let tool = request.name.clone();
        self.inner.call_tool(request, context).map(move |mut outcome| {
            let Some(secrets) = read.secrets() else {
                return withheld(principal.as_ref(), &tool);
            };
            let mut redactor = Redactor::new(&self.policy, &secrets);
            match &mut outcome {
                Ok(CallToolResponse::Complete(result)) => redact_result(&mut redactor, result),
                Ok(CallToolResponse::InputRequired(input)) => {
                    if let Some(requests) = &mut input.input_requests {
                        redact_as_json(&mut redactor, requests);
                    }
                }
                Ok(_) => {}
                Err(error) => redact_error(&mut redactor, error),
            }
            audit(principal.as_ref(), &tool, &redactor.counts);
            outcome
        })
    }

    forward_server_handler!(info);
    forward_server_handler!();
}
