//! [`Secret`]: a credential as a small map of named fields, redacted and
//! zeroized.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use zeroize::Zeroizing;

use super::SecretError;

/// What `Debug`, `Display` and `Serialize` print instead of a value.
pub const REDACTED: &str = "[REDACTED]";

/// A credential read from a [`SecretStore`](super::SecretStore): named fields
/// such as `username` and `password`.
///
/// - `Debug`, `Display` and `Serialize` print the field *names* at most, never
///   a value (`[REDACTED]`), so a `Secret` that ends up in a log line, an error
///   or a tool response leaks nothing.
/// - The values are zeroized when the last clone is dropped. Cloning is one
///   reference count: the cache and the tool share one copy.
/// - Reading a value is an explicit, greppable call: [`Secret::expose`].
///
/// ```
/// use rmcp_guard::secrets::Secret;
///
/// let secret = Secret::new([("username", "svc-acme"), ("password", "hunter2")]);
/// assert_eq!(secret.expose("username"), Some("svc-acme"));
/// assert!(!format!("{secret:?} {secret}").contains("hunter2"));
/// ```
#[derive(Clone)]
pub struct Secret {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    // `Zeroizing` wipes each value's heap buffer on drop.
    fields: BTreeMap<String, Zeroizing<String>>,
    lease: Option<Duration>,
    version: Option<u64>,
}

impl Secret {
    /// A secret with these fields.
    pub fn new<I, K, V>(fields: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_map(
            fields
                .into_iter()
                .map(|(k, v)| (k.into(), Zeroizing::new(v.into())))
                .collect(),
        )
    }

    pub(crate) fn from_map(fields: BTreeMap<String, Zeroizing<String>>) -> Self {
        Secret {
            inner: Arc::new(Inner {
                fields,
                lease: None,
                version: None,
            }),
        }
    }

    /// Say how long the store allows this value to be cached (a Vault lease
    /// or a `ttl` custom metadata key). The cache keeps it no longer than this,
    /// nor than its own TTL; without a lease the cache TTL alone applies.
    ///
    /// Defaults to none.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        Arc::make_mut(&mut self.inner).lease = Some(lease);
        self
    }

    /// Record the store's version of this value (KV v2 metadata).
    ///
    /// Defaults to none.
    pub fn with_version(mut self, version: u64) -> Self {
        Arc::make_mut(&mut self.inner).version = Some(version);
        self
    }

    /// The value of one field.
    ///
    /// This is the one way to read a value. Do not return it from a tool, log
    /// it or put it in an error: use it to connect to the downstream system.
    pub fn expose(&self, field: &str) -> Option<&str> {
        self.inner.fields.get(field).map(|v| v.as_str())
    }

    /// The value of a field that must be there, or
    /// [`SecretError::MissingField`] (which names the field, not a value).
    pub fn expose_required(&self, field: &str) -> Result<&str, SecretError> {
        self.expose(field)
            .ok_or_else(|| SecretError::MissingField(field.to_owned()))
    }

    /// Whether the secret has this field.
    pub fn contains(&self, field: &str) -> bool {
        self.inner.fields.contains_key(field)
    }

    /// The field names, sorted. Names are not secret; values are.
    pub fn field_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.fields.keys().map(String::as_str)
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.inner.fields.len()
    }

    /// Whether there is no field at all.
    pub fn is_empty(&self) -> bool {
        self.inner.fields.is_empty()
    }

    /// How long the store allows this value to be cached, when it said so.
    pub fn lease(&self) -> Option<Duration> {
        self.inner.lease
    }

    /// The store's version of this value, when it has one (KV v2).
    pub fn version(&self) -> Option<u64> {
        self.inner.version
    }

    /// Every field and its value, for the output guard that removes the
    /// values from a tool's result.
    #[cfg_attr(not(feature = "integrity"), allow(dead_code))]
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.inner.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether both hold the same fields and values (one shared copy, or
    /// two reads of one credential).
    pub(crate) fn same_values(&self, other: &Secret) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner.fields == other.inner.fields
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("fields", &self.inner.fields.keys().collect::<Vec<_>>())
            .field("values", &format_args!("{REDACTED}"))
            .field("version", &self.inner.version)
            .finish()
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    /// Serializes as the string `"[REDACTED]"`: a secret never reaches JSON.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Deserializes a JSON object of fields into zeroizing strings, moving each
/// string out of the parsed document instead of copying it. Scalars (numbers,
/// booleans) become their JSON text; nested objects, arrays and null are
/// refused (a credential is a flat map).
#[cfg_attr(not(feature = "vault"), allow(dead_code))] // read by the Vault backend
pub(crate) struct Fields(pub(crate) BTreeMap<String, Zeroizing<String>>);

#[cfg_attr(not(feature = "vault"), allow(dead_code))]
struct FieldValue(Zeroizing<String>);

impl<'de> serde::Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FieldValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue, E> {
                Ok(FieldValue(Zeroizing::new(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue(Zeroizing::new(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue, E> {
                Ok(FieldValue(Zeroizing::new(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue, E> {
                Ok(FieldValue(Zeroizing::new(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldValue, E> {
                Ok(FieldValue(Zeroizing::new(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FieldValue, E> {
                Ok(FieldValue(Zeroizing::new(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a flat object of credential fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, FieldValue(v))) = map.next_entry::<String, FieldValue>()? {
                    out.insert(k, v);
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_never_show_a_value() {
        let s = Secret::new([("username", "svc-acme"), ("password", "hunter2")]);
        let all = format!("{s:?} {s} {s:#?} {}", serde_json::to_string(&s).unwrap());
        assert!(!all.contains("hunter2"), "{all}");
        assert!(!all.contains("svc-acme"), "{all}");
        assert!(all.contains(REDACTED));
        assert_eq!(serde_json::to_value(&s).unwrap(), REDACTED);
    }

    #[test]
    fn expose_is_the_only_way_in() {
        let s = Secret::new([("password", "hunter2")]);
        assert_eq!(s.expose("password"), Some("hunter2"));
        assert_eq!(s.expose("nope"), None);
        assert!(matches!(
            s.expose_required("nope"),
            Err(SecretError::MissingField(f)) if f == "nope"
        ));
        assert_eq!(s.field_names().collect::<Vec<_>>(), ["password"]);
    }

    #[test]
    fn lease_and_version_default_to_none() {
        let s = Secret::new([("a", "b")]);
        assert_eq!(s.lease(), None);
        assert_eq!(s.version(), None);
        let s = s.with_lease(Duration::from_secs(3)).with_version(7);
        assert_eq!(s.lease(), Some(Duration::from_secs(3)));
        assert_eq!(s.version(), Some(7));
    }

    #[test]
    fn fields_accept_scalars_and_refuse_nesting() {
        let v = serde_json::json!({"user": "u", "port": 22, "tls": true});
        let Fields(f) = serde_json::from_value(v).unwrap();
        assert_eq!(f["port"].as_str(), "22");
        assert_eq!(f["tls"].as_str(), "true");
        assert!(serde_json::from_value::<Fields>(serde_json::json!({"a": {"b": 1}})).is_err());
        assert!(serde_json::from_value::<Fields>(serde_json::json!({"a": null})).is_err());
        assert!(serde_json::from_value::<Fields>(serde_json::json!(["a"])).is_err());
    }
}
