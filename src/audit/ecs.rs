//! The audit events as Elastic Common Schema documents: [`EcsJsonLayer`]
//! (feature `telemetry`).
//!
//! The `tracing` events on [`TARGET`] stay the one channel; this layer reads
//! them and writes each as one ECS JSON document per line, so they land in
//! Elasticsearch (Filebeat, Elastic Agent, Logstash) without an ingest
//! pipeline. The mapping is the two tables below ([`FIELDS`], [`EVENTS`]);
//! `docs/audit-schema.md` is its reference, and `tests/audit_schema.rs` pins
//! it: renaming or removing a key is a breaking change (CHANGELOG), adding
//! one is not.
//!
//! A leaf: it imports nothing of the crate but [`TARGET`].

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

use super::TARGET;

/// The ECS version the documents follow (`ecs.version`).
pub const ECS_VERSION: &str = "8.11.0";

/// The version of this mapping (`rmcp_guard.audit.schema_version`): raised
/// when a key is renamed or removed, or a value changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Where the fields without an ECS home go, as ECS recommends for custom
/// fields: under one proper name.
const NAMESPACE: &str = "rmcp_guard";

/// `event.category` values we use (ECS 8.11 allowed values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    /// A call of an API: here, an MCP (JSON-RPC) request and what the guard
    /// asked an upstream for it.
    Api,
    /// Credentials presented and verified.
    Authentication,
    /// Settings of the application changed.
    Configuration,
    /// Identity and access management: who may act.
    Iam,
    /// Detections by the guard's integrity checks.
    IntrusionDetection,
    /// Network activity: an upstream's reachability.
    Network,
}

impl Category {
    fn as_str(self) -> &'static str {
        match self {
            Category::Api => "api",
            Category::Authentication => "authentication",
            Category::Configuration => "configuration",
            Category::Iam => "iam",
            Category::IntrusionDetection => "intrusion_detection",
            Category::Network => "network",
        }
    }
}

/// `event.type` values we use (ECS 8.11 allowed values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Access,
    Allowed,
    Change,
    Denied,
    Error,
    Info,
    Start,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Access => "access",
            EventType::Allowed => "allowed",
            EventType::Change => "change",
            EventType::Denied => "denied",
            EventType::Error => "error",
            EventType::Info => "info",
            EventType::Start => "start",
        }
    }
}

/// `event.outcome`: ECS allows only these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EcsOutcome {
    Success,
    Failure,
    Unknown,
}

impl EcsOutcome {
    fn as_str(self) -> &'static str {
        match self {
            EcsOutcome::Success => "success",
            EcsOutcome::Failure => "failure",
            EcsOutcome::Unknown => "unknown",
        }
    }
}

/// How an event's result becomes `event.outcome` and `event.type`.
#[derive(Debug, Clone, Copy)]
enum Outcomes {
    /// The `outcome` field is an [`Outcome`](super::Outcome): `allow` is a
    /// success of type `allow`; `deny` a failure of type `deny`; `error` (the
    /// decision could not be made, so it failed closed, or a store failed) a
    /// failure of types `deny` and `error`.
    Decision { allow: EventType, deny: EventType },
    /// The `outcome` field is `ok` (a success) or an error code (a failure,
    /// the code in `error.code`).
    Result(EventType),
    /// The `step` field: `asked` (type `info`, no outcome: nothing is decided
    /// yet), `granted` (`allowed`, success) or `refused` (`denied`, failure).
    Step,
    /// No result (type `info`, no outcome): a state change worth recording.
    Info,
}

/// One audit event's ECS classification.
#[derive(Debug)]
struct EventSchema {
    /// [`AuditEvent::name`](super::AuditEvent::name): `event.action`.
    action: &'static str,
    category: Category,
    outcomes: Outcomes,
}

const fn event(action: &'static str, category: Category, outcomes: Outcomes) -> EventSchema {
    EventSchema {
        action,
        category,
        outcomes,
    }
}

/// Every audit event's classification; an event missing here still gets
/// its document, without `event.category`, `event.type` nor
/// `event.outcome`.
const EVENTS: &[EventSchema] = {
    use Category::*;
    use EventType::*;
    const API: Outcomes = Outcomes::Decision {
        allow: Allowed,
        deny: Denied,
    };
    &[
        event(
            "authn",
            Authentication,
            Outcomes::Decision {
                allow: Start,
                deny: Start,
            },
        ),
        event("session", Api, API),
        event("authz", Api, API),
        event("policy_decision", Api, API),
        event(
            "policy_reload",
            Configuration,
            Outcomes::Decision {
                allow: Change,
                deny: Change,
            },
        ),
        event("secret_access", Api, Outcomes::Result(Access)),
        event("token_exchange", Api, Outcomes::Result(Access)),
        event("confirmation", Api, Outcomes::Step),
        event("limit", Api, API),
        event("arguments", Api, API),
        event("definitions", IntrusionDetection, API),
        event("output_redacted", IntrusionDetection, API),
        event(
            "revocation",
            Iam,
            Outcomes::Decision {
                allow: Change,
                deny: Change,
            },
        ),
        event("circuit", Network, Outcomes::Info),
    ]
};

/// Where one of our fields lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// This ECS field, the value as is.
    Ecs(&'static str),
    /// The event's result: `event.outcome` and `event.type` (and
    /// `error.code`) by its [`Outcomes`].
    Outcome,
    /// Microseconds, into this ECS field in nanoseconds.
    MicrosAsNanos(&'static str),
}

/// Our fields that have an ECS home, the same in every event. Every other
/// field is `rmcp_guard.<field>`.
const FIELDS: &[(&str, Target)] = &[
    ("event", Target::Ecs("event.action")),
    ("outcome", Target::Outcome),
    ("reason", Target::Ecs("event.reason")),
    ("status", Target::Ecs("http.response.status_code")),
    ("subject", Target::Ecs("user.id")),
    ("tenant", Target::Ecs("organization.id")),
    ("rule", Target::Ecs("rule.name")),
    ("duration_us", Target::MicrosAsNanos("event.duration")),
    ("error", Target::Ecs("error.message")),
];

/// Writes every audit event (target [`TARGET`]) as one ECS JSON document
/// per line to a [`MakeWriter`]; every other event is left to the other
/// layers. Feature `telemetry`.
///
/// ```
/// use std::io::Write;
/// use std::sync::{Arc, Mutex};
///
/// use rmcp_guard::audit::{EcsJsonLayer, TARGET};
/// use tracing_subscriber::prelude::*;
///
/// // In a server: `EcsJsonLayer::new(std::io::stdout)`, or a file, or
/// // `tracing_appender::non_blocking`. Here: a buffer to read back.
/// #[derive(Clone, Default)]
/// struct Buffer(Arc<Mutex<Vec<u8>>>);
/// impl Write for Buffer {
///     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
///         self.0.lock().unwrap().write(b)
///     }
///     fn flush(&mut self) -> std::io::Result<()> {
///         Ok(())
///     }
/// }
///
/// let buffer = Buffer::default();
/// let writer = buffer.clone();
/// let audit = EcsJsonLayer::new(move || writer.clone()).service_name("weather-mcp");
/// tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
///     // What the bearer layer emits for a refused token.
///     tracing::info!(target: TARGET, event = "authn", outcome = "deny", reason = "invalid_token", status = 401u16);
///     tracing::info!("not an audit event: not written");
/// });
///
/// let lines = buffer.0.lock().unwrap().clone();
/// let doc: serde_json::Value = serde_json::from_slice(&lines).unwrap();
/// assert_eq!(doc["event"]["action"], "authn");
/// assert_eq!(doc["event"]["outcome"], "failure");
/// assert_eq!(doc["event"]["reason"], "invalid_token");
/// assert_eq!(doc["http"]["response"]["status_code"], 401);
/// assert_eq!(doc["service"]["name"], "weather-mcp");
/// ```
///
/// Each document is serialized whole, then written with one `write_all`
/// on a writer made for it, so lines from concurrent requests do not
/// interleave with writers that keep a single write whole (stdout, a file
/// opened for append, `tracing_appender::non_blocking`). A write that fails
/// is dropped (a layer cannot return an error): point the writer at
/// something that does not fail, or that reports its own failures.
///
/// Write through a non-blocking writer in production: this layer runs on the
/// request's task, so a slow writer slows requests.
pub struct EcsJsonLayer<W> {
    make_writer: W,
    service_name: Option<String>,
}

impl<W> fmt::Debug for EcsJsonLayer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcsJsonLayer")
            .field("service_name", &self.service_name)
            .finish_non_exhaustive()
    }
}

impl<W> EcsJsonLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    /// Write the documents to `make_writer`: `std::io::stdout`, a
    /// `Mutex<File>`, `tracing_appender::non_blocking`, ...
    pub fn new(make_writer: W) -> Self {
        EcsJsonLayer {
            make_writer,
            service_name: None,
        }
    }
}

impl<W> EcsJsonLayer<W> {
    /// Name this server in every document (`service.name`), to tell servers
    /// apart in one index. Defaults to none (no `service.name`).
    #[must_use]
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into()).filter(|n| !n.is_empty());
        self
    }
}

impl<S, W> Layer<S> for EcsJsonLayer<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    // Not `enabled`: returning false there would hide the event from every
    // other layer too.
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let doc = document(
            *meta.level(),
            &fields.0,
            self.service_name.as_deref(),
            SystemTime::now(),
        );
        // Serializing a map of strings, numbers and booleans cannot fail.
        let Ok(mut line) = serde_json::to_vec(&doc) else {
            return;
        };
        line.push(b'\n');
        let _ = self.make_writer.make_writer_for(meta).write_all(&line);
    }
}

/// One field's value, as `tracing` recorded it.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl FieldValue {
    fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(s) => Some(s),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            FieldValue::Str(s) => Value::from(s.as_str()),
            FieldValue::U64(n) => Value::from(*n),
            FieldValue::I64(n) => Value::from(*n),
            FieldValue::F64(n) => Value::from(*n),
            FieldValue::Bool(b) => Value::from(*b),
        }
    }
}

/// The fields of one event, in order.
#[derive(Default)]
struct Fields(Vec<(&'static str, FieldValue)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), FieldValue::Str(value.to_owned())));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name(), FieldValue::U64(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name(), FieldValue::I64(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.push((field.name(), FieldValue::F64(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name(), FieldValue::Bool(value)));
    }
    // `%value` fields arrive here: their `Debug` is their `Display`.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((field.name(), FieldValue::Str(format!("{value:?}"))));
    }
}

/// The ECS document of one audit event.
fn document(
    level: Level,
    fields: &[(&'static str, FieldValue)],
    service: Option<&str>,
    now: SystemTime,
) -> Map<String, Value> {
    let mut doc = Map::new();
    insert(&mut doc, "@timestamp", Value::from(rfc3339_millis(now)));
    insert(&mut doc, "ecs.version", Value::from(ECS_VERSION));
    insert(&mut doc, "event.kind", Value::from("event"));
    insert(&mut doc, "log.level", Value::from(level.as_str().to_ascii_lowercase()));
    insert(&mut doc, "rmcp_guard.audit.schema_version", Value::from(SCHEMA_VERSION));
    if let Some(service) = service {
        insert(&mut doc, "service.name", Value::from(service));
    }

    let get = |name: &str| fields.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v.as_str());
    let schema = get("event").and_then(|action| EVENTS.iter().find(|e| e.action == action));
    let mut outcome_is_mapped = false;
    if let Some(schema) = schema {
        insert(&mut doc, "event.category", Value::from(vec![schema.category.as_str()]));
        let result = match schema.outcomes {
            Outcomes::Decision { allow, deny } => {
                outcome_is_mapped = true;
                match get("outcome") {
                    Some("allow") => Classified::new(Some(EcsOutcome::Success), &[allow]),
                    Some("deny") => Classified::new(Some(EcsOutcome::Failure), &[deny]),
                    Some("error") => Classified::new(Some(EcsOutcome::Failure), &[deny, EventType::Error]),
                    // Not an `Outcome`: say so, and keep the value.
                    Some(_) => {
                        outcome_is_mapped = false;
                        Classified::new(Some(EcsOutcome::Unknown), &[EventType::Info])
                    }
                    None => Classified::new(None, &[EventType::Info]),
                }
            }
            Outcomes::Result(kind) => {
                outcome_is_mapped = true;
                match get("outcome") {
                    Some("ok") => Classified::new(Some(EcsOutcome::Success), &[kind]),
                    Some(code) => Classified {
                        error_code: Some(code),
                        ..Classified::new(Some(EcsOutcome::Failure), &[kind])
                    },
                    None => Classified::new(None, &[kind]),
                }
            }
            Outcomes::Step => match get("step") {
                Some("asked") => Classified::new(None, &[EventType::Info]),
                Some("granted") => Classified::new(Some(EcsOutcome::Success), &[EventType::Allowed]),
                Some("refused") => Classified::new(Some(EcsOutcome::Failure), &[EventType::Denied]),
                Some(_) => Classified::new(Some(EcsOutcome::Unknown), &[EventType::Info]),
                None => Classified::new(None, &[EventType::Info]),
            },
            Outcomes::Info => Classified::new(None, &[EventType::Info]),
        };
        let types: Vec<&str> = result.types.iter().map(|t| t.as_str()).collect();
        insert(&mut doc, "event.type", Value::from(types));
        if let Some(outcome) = result.outcome {
            insert(&mut doc, "event.outcome", Value::from(outcome.as_str()));
        }
        if let Some(code) = result.error_code.filter(|c| !c.is_empty()) {
            insert(&mut doc, "error.code", Value::from(code));
        }
    }

    for (name, value) in fields {
        // An empty string is an absent value.
        if value.as_str() == Some("") {
            continue;
        }
        match (FIELDS.iter().find(|(n, _)| n == name).map(|(_, t)| *t), value) {
            (Some(Target::Ecs(path)), _) => insert(&mut doc, path, value.to_json()),
            (Some(Target::MicrosAsNanos(path)), FieldValue::U64(us)) => {
                insert(&mut doc, path, Value::from(us.saturating_mul(1000)));
            }
            (Some(Target::Outcome), _) if outcome_is_mapped => {}
            // A field without an ECS home, or a value its home does not take.
            _ => insert(&mut doc, &custom_key(name), value.to_json()),
        }
    }
    doc
}

/// `event.outcome`, `event.type` and `error.code` of one event.
struct Classified<'a> {
    outcome: Option<EcsOutcome>,
    types: Vec<EventType>,
    error_code: Option<&'a str>,
}

impl Classified<'_> {
    fn new(outcome: Option<EcsOutcome>, types: &[EventType]) -> Self {
        Classified {
            outcome,
            types: types.to_vec(),
            error_code: None,
        }
    }
}

/// `rmcp_guard.<field>`, the field's name made an ECS name (lower case,
/// digits and `_`); never the reserved `rmcp_guard.audit`.
fn custom_key(name: &str) -> String {
    let mut key: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if key == "audit" {
        key.push('_');
    }
    format!("{NAMESPACE}.{key}")
}

/// Put `value` at the dotted `path` of `doc`, making the objects on the way;
/// a path whose prefix holds a value is written beside it, flat (never
/// dropped).
fn insert(doc: &mut Map<String, Value>, path: &str, value: Value) {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    match rest {
        None => {
            doc.insert(head.to_owned(), value);
        }
        Some(rest) => match doc.entry(head.to_owned()).or_insert_with(|| Value::Object(Map::new())) {
            Value::Object(inner) => insert(inner, rest, value),
            _ => {
                doc.insert(path.to_owned(), value);
            }
        },
    }
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-01-31T23:59:59.123Z`.
fn rfc3339_millis(time: SystemTime) -> String {
    // Before 1970 only with a broken clock: print the epoch.
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn s(v: &str) -> FieldValue {
        FieldValue::Str(v.to_owned())
    }

    fn doc(level: Level, fields: &[(&'static str, FieldValue)]) -> Value {
        Value::Object(document(
            level,
            fields,
            None,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        ))
    }

    #[test]
    fn service_name_defaults_to_none() {
        let layer = EcsJsonLayer::new(std::io::sink);
        assert_eq!(layer.service_name, None);
        assert_eq!(layer.service_name("").service_name, None, "an empty name is no name");
        let named = EcsJsonLayer::new(std::io::sink).service_name("weather-mcp");
        assert_eq!(named.service_name.as_deref(), Some("weather-mcp"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
        // A leap day, and the last second of a year.
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(1_767_225_599)),
            "2025-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn a_denied_decision_is_a_failure_and_an_error_is_a_failure_of_type_error() {
        let base = [
            ("event", s("policy_decision")),
            ("subject", s("alice")),
            ("reason", s("not_in_group")),
            ("duration_us", FieldValue::U64(42)),
            ("allowed", FieldValue::Bool(false)),
        ];
        let mut deny = base.to_vec();
        deny.push(("outcome", s("deny")));
        let d = doc(Level::INFO, &deny);
        assert_eq!(d["event"]["outcome"], "failure");
        assert_eq!(d["event"]["type"], serde_json::json!(["denied"]));
        assert_eq!(d["event"]["category"], serde_json::json!(["api"]));
        assert_eq!(d["event"]["duration"], 42_000);
        assert_eq!(d["user"]["id"], "alice");
        assert_eq!(d["rmcp_guard"]["allowed"], false);
        assert!(d["rmcp_guard"].get("outcome").is_none(), "{d}");

        let mut error = base.to_vec();
        error.push(("outcome", s("error")));
        let e = doc(Level::INFO, &error);
        assert_eq!(e["event"]["outcome"], "failure");
        assert_eq!(e["event"]["type"], serde_json::json!(["denied", "error"]));

        let mut allow = base.to_vec();
        allow.push(("outcome", s("allow")));
        assert_eq!(doc(Level::INFO, &allow)["event"]["outcome"], "success");
    }

    #[test]
    fn an_error_code_result_is_a_failure_with_its_code() {
        let d = doc(
            Level::INFO,
            &[
                ("event", s("secret_access")),
                ("outcome", s("not_found")),
                ("service", s("github")),
            ],
        );
        assert_eq!(d["event"]["outcome"], "failure");
        assert_eq!(d["error"]["code"], "not_found");
        assert_eq!(d["rmcp_guard"]["service"], "github");
        assert!(d.get("service").is_none(), "our `service` is not ECS service.name: {d}");
    }

    #[test]
    fn unknown_events_and_fields_are_kept_under_the_namespace() {
        let d = doc(
            Level::WARN,
            &[
                ("event", s("new_event")),
                ("outcome", s("allow")),
                ("subject", s("bob")),
                ("brand.new", FieldValue::I64(-1)),
                ("audit", s("x")),
                ("empty", s("")),
            ],
        );
        assert_eq!(d["event"]["action"], "new_event");
        assert!(
            d["event"].get("category").is_none() && d["event"].get("outcome").is_none(),
            "{d}"
        );
        assert_eq!(d["rmcp_guard"]["outcome"], "allow");
        assert_eq!(d["user"]["id"], "bob");
        assert_eq!(d["rmcp_guard"]["brand_new"], -1);
        assert_eq!(d["rmcp_guard"]["audit_"], "x");
        assert_eq!(d["rmcp_guard"]["audit"]["schema_version"], SCHEMA_VERSION);
        assert!(d["rmcp_guard"].get("empty").is_none(), "an empty value is absent: {d}");
        assert_eq!(d["log"]["level"], "warn");
    }

    #[test]
    fn an_unexpected_outcome_is_unknown_and_kept() {
        let d = doc(Level::INFO, &[("event", s("limit")), ("outcome", s("maybe"))]);
        assert_eq!(d["event"]["outcome"], "unknown");
        assert_eq!(d["rmcp_guard"]["outcome"], "maybe");
    }

    #[test]
    fn confirmation_steps() {
        let step = |v: &str| doc(Level::INFO, &[("event", s("confirmation")), ("step", s(v))]);
        assert!(step("asked")["event"].get("outcome").is_none());
        assert_eq!(step("asked")["event"]["type"], serde_json::json!(["info"]));
        assert_eq!(step("granted")["event"]["outcome"], "success");
        assert_eq!(step("refused")["event"]["outcome"], "failure");
        assert_eq!(step("refused")["rmcp_guard"]["step"], "refused");
    }

    #[test]
    fn the_tables_are_consistent() {
        // Every ECS value is one ECS 8.11 allows, and no key is a prefix of another.
        let mut keys: Vec<&str> = FIELDS
            .iter()
            .filter_map(|(_, t)| match t {
                Target::Ecs(p) | Target::MicrosAsNanos(p) => Some(*p),
                Target::Outcome => None,
            })
            .chain([
                "@timestamp",
                "ecs.version",
                "event.kind",
                "event.category",
                "event.type",
                "event.outcome",
                "error.code",
                "log.level",
                "service.name",
                "rmcp_guard.audit.schema_version",
            ])
            .collect();
        keys.sort_unstable();
        for pair in keys.windows(2) {
            assert!(
                pair[0] != pair[1] && !pair[1].starts_with(&format!("{}.", pair[0])),
                "{pair:?}"
            );
        }
        let mut actions: Vec<&str> = EVENTS.iter().map(|e| e.action).collect();
        actions.sort_unstable();
        actions.dedup();
        assert_eq!(actions.len(), EVENTS.len(), "one schema per event");
    }

    #[test]
    fn every_event_has_a_schema_and_a_section_in_the_reference() {
        let reference = include_str!("../../docs/audit-schema.md");
        for name in crate::audit::tests::every_event_name() {
            assert!(EVENTS.iter().any(|e| e.action == name), "{name}: add it to EVENTS");
            assert!(
                reference.contains(&format!("### `{name}`")),
                "{name}: document it in docs/audit-schema.md"
            );
        }
        for (field, target) in FIELDS {
            if let Target::Ecs(path) | Target::MicrosAsNanos(path) = target {
                assert!(
                    reference.contains(&format!("`{path}`")),
                    "{field} -> {path}: docs/audit-schema.md"
                );
            }
        }
        assert!(reference.contains(&format!("`ecs.version`: `{ECS_VERSION}`")));
        assert!(reference.contains(&format!("Schema version: **{SCHEMA_VERSION}**")));
    }
}
