//! Telemetry (feature `telemetry`): OpenTelemetry metrics for every
//! decision, and the names operators alert on.
//!
//! The crate records through the OpenTelemetry **API** only
//! (`opentelemetry::global::meter("rmcp_guard")`): the application installs
//! the SDK and its exporters (OTLP, Prometheus) before it builds the
//! [`Guard`](crate::Guard); without one, every instrument is a no-op.
//! Instruments are created at the first record, from the meter provider
//! installed then.
//!
//! | file | concept |
//! |---|---|
//! | `metrics` | the instruments, their names and attributes ([`names`]), fed by the audit events (`audit`) and the upstream calls |
//!
//! A leaf: it imports nothing of the crate; the audit module counts every
//! event it emits here.
//!
//! Attribute values are identifiers and codes (a verified client id, a
//! subject, a reason code, a tool name), never a token or a secret. Each
//! instrument's attribute sets are bounded by the SDK's cardinality limit
//! (2000 by default; past it, one overflow series), so a caller cannot make
//! the server's memory grow with made-up tool names.

mod metrics;

pub use metrics::names;
#[allow(unused_imports)] // each is used by the feature that records it
pub(crate) use metrics::{Instruments, Upstream, client, instruments, kv, record_cache, record_upstream};
pub(crate) use opentelemetry::KeyValue;
