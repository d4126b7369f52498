//! [`StateBinding`]: what a sealed state is bound to (the caller and the
//! request), and its canonical encoding.

use rmcp::model::JsonObject;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Principal;

/// What a sealed state is bound to: the caller (issuer, kind, subject,
/// client id), the request (method and name) and a SHA-256 digest of the
/// request's arguments.
///
/// A state opens only under the binding it was sealed under: another caller,
/// another tool, or other arguments get
/// [`StateError::Mismatch`](super::StateError::Mismatch).
///
/// Arguments are digested in a canonical form (object keys sorted, no
/// whitespace), so a client that sends the same arguments with its keys in
/// another order still matches. No arguments are the same as an empty
/// object.
#[derive(Clone, Copy)]
pub struct StateBinding<'a> {
    principal: &'a Principal,
    method: &'a str,
    name: &'a str,
    arguments: Arguments<'a>,
}

#[derive(Clone, Copy)]
enum Arguments<'a> {
    Object(Option<&'a JsonObject>),
    Value(Option<&'a Value>),
}

impl<'a> StateBinding<'a> {
    /// The binding of a `tools/call` of `tool` with `arguments` by
    /// `principal` (the request's `params.name` and `params.arguments`).
    pub fn tool_call(principal: &'a Principal, tool: &'a str, arguments: Option<&'a JsonObject>) -> Self {
        StateBinding {
            principal,
            method: "tools/call",
            name: tool,
            arguments: Arguments::Object(arguments),
        }
    }

    /// The binding of any request: `method` (such as `prompts/get`), the
    /// `name` (or URI) it addresses, and its arguments.
    pub fn new(principal: &'a Principal, method: &'a str, name: &'a str, arguments: Option<&'a Value>) -> Self {
        StateBinding {
            principal,
            method,
            name,
            arguments: Arguments::Value(arguments),
        }
    }

    /// The caller this binding names.
    pub fn principal(&self) -> &'a Principal {
        self.principal
    }

    /// SHA-256 of the canonical JSON of the arguments.
    fn arguments_digest(&self) -> [u8; 32] {
        let mut json = Vec::new();
        match self.arguments {
            Arguments::Object(Some(object)) => write_object(object, &mut json),
            Arguments::Value(Some(value)) => write_canonical(value, &mut json),
            Arguments::Object(None) | Arguments::Value(None) => json.extend_from_slice(b"{}"),
        }
        Sha256::digest(&json).into()
    }

    /// The additional authenticated data of a state sealed under `kid`:
    /// every field length-prefixed, so no two bindings encode alike.
    pub(super) fn aad(&self, version: &str, kid: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        field(&mut out, b"rmcp-guard request state");
        field(&mut out, version.as_bytes());
        field(&mut out, kid.as_bytes());
        write_principal(self.principal, &mut out);
        field(&mut out, self.method.as_bytes());
        field(&mut out, self.name.as_bytes());
        field(&mut out, &self.arguments_digest());
        out
    }
}

/// A fixed-size key for the caller: SHA-256 of issuer, kind, subject and
/// client id. Two principals share it only if all four are equal.
pub(crate) fn owner_key(principal: &Principal) -> [u8; 32] {
    let mut out = Vec::with_capacity(96);
    field(&mut out, b"rmcp-guard state owner");
    write_principal(principal, &mut out);
    Sha256::digest(&out).into()
}

fn write_principal(principal: &Principal, out: &mut Vec<u8>) {
    field(out, principal.issuer().as_bytes());
    field(out, principal.kind().as_str().as_bytes());
    field(out, principal.subject().as_bytes());
    match principal.client_id() {
        None => out.push(0),
        Some(client_id) => {
            out.push(1);
            field(out, client_id.as_bytes());
        }
    }
}

/// `bytes`, preceded by its length (8 bytes, big-endian).
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// `value` as JSON with object keys sorted by their UTF-8 bytes and no
/// whitespace, whatever order the map keeps (serde_json's `preserve_order`
/// feature, which another crate may turn on, keeps insertion order).
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(object) => write_object(object, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_object(object: &JsonObject, out: &mut Vec<u8>) {
    let mut entries: Vec<(&String, &Value)> = object.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_canonical(value, out);
    }
    out.push(b'}');
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a JSON scalar into a Vec cannot fail; should it ever, a byte
    // that valid JSON never holds keeps the digest from matching a valid
    // encoding.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.push(0xff);
    }
}

fn write_string(string: &str, out: &mut Vec<u8>) {
    // As in `write_scalar`.
    if serde_json::to_writer(&mut *out, string).is_err() {
        out.push(0xff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(value: &Value) -> String {
        let mut out = Vec::new();
        write_canonical(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let value = json!({"b": [{"z": 1, "a": "x"}], "a": null, "é": true, "A": 1.5});
        assert_eq!(
            canonical(&value),
            r#"{"A":1.5,"a":null,"b":[{"a":"x","z":1}],"é":true}"#
        );
    }

    #[test]
    fn no_arguments_digest_like_an_empty_object() {
        let alice = Principal::unverified("https://issuer", "alice").build();
        let empty = JsonObject::new();
        let none = StateBinding::tool_call(&alice, "t", None);
        let some = StateBinding::tool_call(&alice, "t", Some(&empty));
        assert_eq!(none.arguments_digest(), some.arguments_digest());
        let value = json!({});
        assert_eq!(
            StateBinding::new(&alice, "tools/call", "t", Some(&value)).aad("v1", "k"),
            some.aad("v1", "k")
        );
    }

    #[test]
    fn every_field_of_the_caller_changes_the_owner_key() {
        use crate::PrincipalKind;
        let base = owner_key(&Principal::unverified("i", "s").client_id("c").build());
        for other in [
            Principal::unverified("i2", "s").client_id("c").build(),
            Principal::unverified("i", "s2").client_id("c").build(),
            Principal::unverified("i", "s").client_id("c2").build(),
            Principal::unverified("i", "s").build(),
            Principal::unverified("i", "s").client_id("").build(),
            Principal::unverified("i", "s")
                .client_id("c")
                .kind(PrincipalKind::Client)
                .build(),
            // Shifting bytes between fields does not collide.
            Principal::unverified("is", "").client_id("c").build(),
        ] {
            assert_ne!(owner_key(&other), base, "{other:?}");
        }
    }
}
