//! Telemetry: spans through the whole stack (always), with W3C trace
//! context taken from requests and sent upstream, and OpenTelemetry metrics
//! for every decision (feature `telemetry`), and the names operators alert
//! on.
//!
//! The spans are [`tracing`] spans: without a subscriber they cost nothing
//! measurable, with the `tracing-opentelemetry` layer they are exported
//! over OTLP (or wherever the application's exporter sends them). See the
//! [`trace`] docs for the span tree, the attributes and the trace context.
//!
//! The crate records through the OpenTelemetry **API** only
//! (`opentelemetry::global::meter("rmcp_guard")`, the global propagator):
//! the application installs the SDK, its exporters (OTLP, Prometheus), the
//! `tracing-opentelemetry` layer and a propagator before it builds the
//! `Guard`; without them, every instrument is a no-op and
//! no trace context is read or sent. Instruments are created at the first
//! record, from the meter provider installed then.
//!
//! | file | concept |
//! |---|---|
//! | `trace` | the spans ([`trace::spans`]), the request-span layer ([`RequestSpanLayer`](trace::RequestSpanLayer)), the tool-span handler ([`ToolSpans`](trace::ToolSpans)), W3C trace context in (headers, MCP `_meta`) and out (upstream requests) |
//! | `metrics` | the instruments, their names and attributes (`names`, feature `telemetry`), fed by the audit events (`audit`) and the upstream calls |
//!
//! A leaf: it imports nothing of the crate; the audit module counts every
//! event it emits here, and the modules that call upstreams open their
//! spans here.
//!
//! Attribute values are identifiers and codes (a verified client id, a
//! subject, a reason code, a tool name), never a token or a secret. Each
//! instrument's attribute sets are bounded by the SDK's cardinality limit
//! (2000 by default; past it, one overflow series), so a caller cannot make
//! the server's memory grow with made-up tool names.

#[cfg(feature = "telemetry")]
mod metrics;
pub mod trace;

#[cfg(feature = "telemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "telemetry")))]
pub use metrics::names;
#[cfg(feature = "telemetry")]
#[allow(unused_imports)] // each is used by the feature that records it
pub(crate) use metrics::{Instruments, Upstream, client, gauge_in_use, instruments, kv, record_cache, record_upstream};
#[cfg(feature = "telemetry")]
pub(crate) use opentelemetry::KeyValue;
