//! The input document a policy sees, versioned.

use serde_json::{Map, Value};

use super::action::Action;
use crate::Principal;

/// The version of the input document, the `version` field.
pub const INPUT_VERSION: u32 = 1;

/// The fields of the input document, in their serialized order.
pub(crate) const FIELDS: [&str; 14] = [
    "version",
    "subject",
    "issuer",
    "client_id",
    "tenant",
    "groups",
    "scopes",
    "claims",
    "action",
    "resource",
    "arguments",
    "session_id",
    "kind",
    "dpop",
];

/// One decision's input: who asks to do what on which resource.
///
/// Built from a [`Principal`]; it holds the principal by reference count, so
/// building one does not copy the token's claims. [`to_json`](Self::to_json)
/// gives the document described in the [type docs](Self).
///
/// ```
/// use rmcp_guard::Principal;
/// use rmcp_guard::policy::{Action, PolicyInput};
///
/// let alice = Principal::unverified("https://idp.example", "alice")
///     .groups(["developers"])
///     .build();
/// let input = PolicyInput::new(&alice, "list_repositories", Action::CallTool)
///     .with_arguments(serde_json::json!({ "org": "acme" }));
/// assert_eq!(input.to_json()["groups"][0], "developers");
/// assert_eq!(input.to_json()["version"], 1);
/// ```
///
/// Every decision evaluates the policy with one JSON document as `input`.
/// Its shape is part of this crate's public contract and carries a
/// `version`; a field is only ever added, and a change of meaning bumps
/// [`INPUT_VERSION`].
///
/// ```json
/// {
///   "version": 1,
///   "subject": "alice",
///   "issuer": "https://idp.example.com",
///   "client_id": "claude-desktop",
///   "tenant": "acme",
///   "groups": ["network-engineers"],
///   "scopes": ["mcp:tools"],
///   "claims": { "sub": "alice", "groups": ["network-engineers"], "...": "..." },
///   "action": "tools/call",
///   "resource": "deploy_template",
///   "arguments": { "template_id": "t-1", "device_id": "d-9" },
///   "session_id": "6b0c...",
///   "kind": "user",
///   "dpop": true
/// }
/// ```
///
/// | field        | type              | meaning |
/// |--------------|-------------------|---------|
/// | `version`    | number            | [`INPUT_VERSION`] |
/// | `subject`    | string            | the token's `sub` |
/// | `issuer`     | string            | the token's `iss` (one of the trusted issuers) |
/// | `client_id`  | string or null    | `client_id`, else `azp` |
/// | `tenant`     | string or null    | the configured tenant claim |
/// | `groups`     | array of strings  | the configured groups claim |
/// | `scopes`     | array of strings  | the effective scopes, sorted: those the token grants and those they imply ([`scope_implies`](crate::oauth::ResourceServerBuilder::scope_implies)); the token's own are in `claims` (`scope` / `scp`) |
/// | `claims`     | object            | every claim of the token |
/// | `action`     | string            | the MCP method (`tools/call`, `tools/list`, `resources/read`, `resources/list`, `resources/templates/list`, `prompts/get`, `prompts/list`, a custom method) or the action given to `#[require_permission]` |
/// | `resource`   | string            | the tool or prompt name, the resource URI, `""` for a listing, or the resource given to `#[require_permission]` |
/// | `arguments`  | object or null    | the tool call's or prompt's arguments, as the client sent them |
/// | `session_id` | string or null    | the `Mcp-Session-Id` of the request, when there is one |
/// | `kind`       | string            | `"user"`, or `"client"` for a client acting for itself ([`PrincipalKind`](crate::PrincipalKind)) |
/// | `dpop`       | boolean           | whether the token is DPoP-bound (`cnf.jkt`), and so came with a proof of possession by its key (RFC 9449); a policy can require it for some tools only |
///
/// Everything under `input` comes from the caller's verified token or from
/// the request; `arguments` in particular is whatever the client sent and a
/// policy must treat it as untrusted.
#[derive(Debug, Clone)]
pub struct PolicyInput {
    principal: Principal,
    resource: String,
    action: Action,
    arguments: Option<Value>,
    session_id: Option<String>,
}

impl PolicyInput {
    /// The input for `principal` asking for `action` on `resource` (the
    /// order of `#[require_permission(resource, action)]`).
    pub fn new(principal: &Principal, resource: impl Into<String>, action: Action) -> Self {
        Self {
            principal: principal.clone(),
            resource: resource.into(),
            action,
            arguments: None,
            session_id: None,
        }
    }

    /// Set the arguments. Defaults to `null`.
    pub fn with_arguments(mut self, arguments: Value) -> Self {
        self.arguments = Some(arguments);
        self
    }

    /// Set the MCP session id. Defaults to `null`.
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// The caller.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The action, e.g. [`Action::CallTool`].
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// The resource, e.g. a tool name.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The arguments, if any.
    pub fn arguments(&self) -> Option<&Value> {
        self.arguments.as_ref()
    }

    /// The MCP session id, if any.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The input document, as the policy sees it.
    pub fn to_json(&self) -> Value {
        let mut doc = Map::with_capacity(FIELDS.len());
        for field in FIELDS {
            doc.insert(field.to_owned(), self.field(field));
        }
        Value::Object(doc)
    }

    /// The document with only `fields` (for a policy that provably reads
    /// nothing else).
    pub(crate) fn to_json_fields(&self, fields: &[&str]) -> Value {
        let mut doc = Map::with_capacity(fields.len());
        for field in fields {
            doc.insert((*field).to_owned(), self.field(field));
        }
        Value::Object(doc)
    }

    /// One field of the document by name; `null` for an unknown name.
    pub(crate) fn field(&self, name: &str) -> Value {
        let p = &self.principal;
        let opt = |v: Option<&str>| v.map_or(Value::Null, |s| Value::String(s.to_owned()));
        match name {
            "version" => Value::from(INPUT_VERSION),
            "subject" => Value::String(p.subject().to_owned()),
            "issuer" => Value::String(p.issuer().to_owned()),
            "client_id" => opt(p.client_id()),
            "tenant" => opt(p.tenant()),
            "groups" => p.groups().iter().map(|g| Value::String(g.clone())).collect(),
            "scopes" => p.scopes().map(|s| Value::String(s.to_owned())).collect(),
            "claims" => Value::Object(p.claims().clone()),
            "action" => Value::String(self.action.as_str().to_owned()),
            "resource" => Value::String(self.resource.clone()),
            "arguments" => self.arguments.clone().unwrap_or(Value::Null),
            "session_id" => opt(self.session_id.as_deref()),
            "kind" => Value::String(p.kind().as_str().to_owned()),
            "dpop" => Value::Bool(p.dpop_thumbprint().is_some()),
            _ => Value::Null,
        }
    }

    /// Append an unambiguous encoding of one field to a memo key.
    ///
    /// Strings are written as JSON strings (quoted, escaped), so no two
    /// different values share an encoding.
    pub(crate) fn write_key_field(&self, name: &str, key: &mut Vec<u8>) {
        fn string(s: &str, key: &mut Vec<u8>) {
            // Writing a &str to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *key, s);
        }
        fn opt(s: Option<&str>, key: &mut Vec<u8>) {
            match s {
                Some(s) => string(s, key),
                None => key.extend_from_slice(b"null"),
            }
        }
        fn list<'a>(items: impl Iterator<Item = &'a str>, key: &mut Vec<u8>) {
            key.push(b'[');
            for item in items {
                string(item, key);
                key.push(b',');
            }
            key.push(b']');
        }
        let p = &self.principal;
        key.extend_from_slice(name.as_bytes());
        key.push(b'=');
        match name {
            "version" => key.extend_from_slice(INPUT_VERSION.to_string().as_bytes()),
            "subject" => string(p.subject(), key),
            "issuer" => string(p.issuer(), key),
            "client_id" => opt(p.client_id(), key),
            "tenant" => opt(p.tenant(), key),
            "groups" => list(p.groups().iter().map(String::as_str), key),
            "scopes" => list(p.scopes(), key),
            "action" => string(self.action.as_str(), key),
            "resource" => string(&self.resource, key),
            "session_id" => opt(self.session_id.as_deref(), key),
            "kind" => string(p.kind().as_str(), key),
            "dpop" => key.push(if p.dpop_thumbprint().is_some() { b'1' } else { b'0' }),
            // claims and arguments: the full JSON value. serde_json writes an
            // object's keys in the map's order, so equal maps built in a
            // different order at worst miss the cache, never collide.
            other => {
                let _ = serde_json::to_writer(&mut *key, &self.field(other));
            }
        }
        key.push(b';');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal::unverified("https://idp", "alice")
            .groups(["a", "b"])
            .scopes(["mcp:tools"])
            .tenant("acme")
            .build()
    }

    #[test]
    fn document_has_every_documented_field() {
        let doc = PolicyInput::new(&alice(), "echo", Action::CallTool).to_json();
        let obj = doc.as_object().unwrap();
        assert_eq!(obj.len(), FIELDS.len());
        assert_eq!(doc["version"], INPUT_VERSION);
        assert_eq!(doc["subject"], "alice");
        assert_eq!(doc["tenant"], "acme");
        assert_eq!(doc["groups"], serde_json::json!(["a", "b"]));
        assert_eq!(doc["scopes"], serde_json::json!(["mcp:tools"]));
        assert_eq!(doc["arguments"], Value::Null);
        assert_eq!(doc["session_id"], Value::Null);
        assert_eq!(doc["client_id"], Value::Null);
        assert_eq!(doc["kind"], "user");
        assert_eq!(doc["dpop"], false);
        let mut cnf = Map::new();
        cnf.insert(
            "cnf".into(),
            serde_json::json!({"jkt": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"}),
        );
        let bound = Principal::unverified("https://idp", "alice").claims(cnf).build();
        assert_eq!(
            PolicyInput::new(&bound, "echo", Action::CallTool).to_json()["dpop"],
            true
        );
        let robot = Principal::unverified("https://idp", "bot")
            .client_id("bot")
            .kind(crate::PrincipalKind::Client)
            .build();
        assert_eq!(
            PolicyInput::new(&robot, "echo", Action::CallTool).to_json()["kind"],
            "client"
        );
    }

    #[test]
    fn key_encoding_separates_lists_from_joined_strings() {
        let one = Principal::unverified("i", "s").groups(["a,b"]).build();
        let two = Principal::unverified("i", "s").groups(["a", "b"]).build();
        let (mut k1, mut k2) = (Vec::new(), Vec::new());
        PolicyInput::new(&one, "y", Action::custom("x")).write_key_field("groups", &mut k1);
        PolicyInput::new(&two, "y", Action::custom("x")).write_key_field("groups", &mut k2);
        assert_ne!(k1, k2);
    }
}
