//! The instruments: what is counted and measured, under which names.

use std::sync::LazyLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};

/// The metric names, as OpenTelemetry names them. A Prometheus exporter
/// writes dots as underscores, and adds `_total` to counters and the unit
/// to histograms (`rmcp_guard.policy.duration` in seconds is
/// `rmcp_guard_policy_duration_seconds_bucket`). Renaming one is a breaking
/// change.
pub mod names {
    /// Counter: requests the bearer layer decided, and the step-up and
    /// session refusals after it. Attributes `outcome` (`allow`, `deny`,
    /// `error`), `reason` (`valid_token` or the refusal's reason code),
    /// `status` (the HTTP status of a refusal), `client_id` (verified, or
    /// `unknown`).
    pub const REQUESTS: &str = "rmcp_guard.requests";
    /// Counter: policy decisions. Attributes `outcome`, `action`
    /// (`tools/call`, ...), `client_id`.
    pub const DECISIONS: &str = "rmcp_guard.policy.decisions";
    /// Histogram (seconds): how long a policy decision took. Attribute
    /// `outcome`.
    pub const DECISION_DURATION: &str = "rmcp_guard.policy.duration";
    /// Counter: policy denials by caller and item. Attributes `subject`,
    /// `client_id`, `resource` (the tool, resource or prompt), `action`.
    pub const DENIALS: &str = "rmcp_guard.policy.denials";
    /// Counter: cache lookups. Attributes `cache` (`token`, `key`,
    /// `secret`, `exchange`, `policy`), `result` (`hit`, `miss`, `stale`).
    pub const CACHE: &str = "rmcp_guard.cache.lookups";
    /// Counter: requests refused (or let through on a store failure) by a
    /// limit. Attributes `outcome`, `reason` (`rate`, `in_flight`,
    /// `streams`, `store_timeout`, ...), `client_id`.
    pub const LIMIT_HITS: &str = "rmcp_guard.limit.hits";
    /// Gauge: each upstream's circuit breaker: 0 closed, 1 half open, 2
    /// open. Attributes `upstream`, `endpoint`.
    pub const BREAKER_STATE: &str = "rmcp_guard.breaker.state";
    /// Counter: breaker state changes. Attributes `upstream`, `state`.
    pub const BREAKER_TRANSITIONS: &str = "rmcp_guard.breaker.transitions";
    /// Histogram (seconds): calls to upstreams. Attributes `upstream`
    /// (`jwks`, `introspection`, `token_endpoint`, `vault`,
    /// `vault_renewal`, `redis`), `outcome` (`ok`, `error`).
    pub const UPSTREAM_DURATION: &str = "rmcp_guard.upstream.duration";
    /// Counter: credential reads. Attributes `outcome` (`ok` or a
    /// `SecretError` code), `service`.
    pub const SECRET_READS: &str = "rmcp_guard.secrets.reads";
    /// Counter: token exchanges. Attributes `outcome` (`ok` or an
    /// `ExchangeError` code).
    pub const EXCHANGES: &str = "rmcp_guard.exchange.requests";
    /// Counter: values removed from tool results. Attributes `rule`,
    /// `resource` (the tool).
    pub const REDACTIONS: &str = "rmcp_guard.output.redactions";
    /// Counter: every audit event. Attributes `event`, `outcome` (when the
    /// event has one).
    pub const AUDIT_EVENTS: &str = "rmcp_guard.audit.events";
    /// Gauge: MCP sessions bound to their caller in this replica's table
    /// (`SessionBindingLayer`; idle ones count until they are dropped).
    pub const SESSIONS: &str = "rmcp_guard.sessions.active";
    /// Gauge: open connections of [`serve`](crate::serve).
    pub const CONNECTIONS: &str = "rmcp_guard.connections.active";
}

/// The upstreams whose calls are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each is recorded by the feature that calls it
pub(crate) enum Upstream {
    Jwks,
    Introspection,
    TokenEndpoint,
    Vault,
    VaultRenewal,
    Redis,
}

impl Upstream {
    fn as_str(self) -> &'static str {
        match self {
            Upstream::Jwks => "jwks",
            Upstream::Introspection => "introspection",
            Upstream::TokenEndpoint => "token_endpoint",
            Upstream::Vault => "vault",
            Upstream::VaultRenewal => "vault_renewal",
            Upstream::Redis => "redis",
        }
    }
}

/// Bucket bounds (seconds) of the latency histograms: 50 µs to 10 s.
const LATENCY_BOUNDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The instruments (see [`names`]).
pub(crate) struct Instruments {
    pub(crate) requests: Counter<u64>,
    pub(crate) decisions: Counter<u64>,
    pub(crate) decision_duration: Histogram<f64>,
    pub(crate) denials: Counter<u64>,
    pub(crate) cache: Counter<u64>,
    pub(crate) limit_hits: Counter<u64>,
    pub(crate) breaker_state: Gauge<i64>,
    pub(crate) breaker_transitions: Counter<u64>,
    pub(crate) upstream_duration: Histogram<f64>,
    pub(crate) secret_reads: Counter<u64>,
    pub(crate) exchanges: Counter<u64>,
    pub(crate) redactions: Counter<u64>,
    pub(crate) audit_events: Counter<u64>,
}

/// Created at the first record, from the meter provider installed then.
static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter("rmcp_guard");
    let counter =
        |name: &'static str, description: &'static str| meter.u64_counter(name).with_description(description).build();
    let latency = |name: &'static str, description: &'static str| {
        meter
            .f64_histogram(name)
            .with_description(description)
            .with_unit("s")
            .with_boundaries(LATENCY_BOUNDS.to_vec())
            .build()
    };
    Instruments {
        requests: counter(
            names::REQUESTS,
            "Requests decided by the bearer layer, step-up and session binding",
        ),
        decisions: counter(names::DECISIONS, "Policy decisions"),
        decision_duration: latency(names::DECISION_DURATION, "Time to decide a policy query"),
        denials: counter(names::DENIALS, "Policy denials by caller and item"),
        cache: counter(names::CACHE, "Cache lookups by cache and result"),
        limit_hits: counter(names::LIMIT_HITS, "Requests refused by a limit"),
        breaker_state: meter
            .i64_gauge(names::BREAKER_STATE)
            .with_description("Circuit breaker state: 0 closed, 1 half open, 2 open")
            .build(),
        breaker_transitions: counter(names::BREAKER_TRANSITIONS, "Circuit breaker state changes"),
        upstream_duration: latency(
            names::UPSTREAM_DURATION,
            "Calls to upstreams (JWKS, introspection, token endpoint, Vault, Redis)",
        ),
        secret_reads: counter(names::SECRET_READS, "Credential reads"),
        exchanges: counter(names::EXCHANGES, "Token exchanges"),
        redactions: counter(names::REDACTIONS, "Values removed from tool results"),
        audit_events: counter(names::AUDIT_EVENTS, "Audit events"),
    }
});

/// The instruments, created at the first call.
pub(crate) fn instruments() -> &'static Instruments {
    &INSTRUMENTS
}

/// A string attribute: a word of the vocabulary every request records
/// (outcomes, cache results, `valid_token`) is borrowed, any other value
/// copied (the metric outlives the request). Copying costs an allocation and
/// a free on each request's path.
pub(crate) fn kv(key: &'static str, value: &str) -> KeyValue {
    const WORDS: [&str; 11] = [
        "allow",
        "deny",
        "error",
        "ok",
        "hit",
        "miss",
        "stale",
        "joined",
        "bypass",
        "valid_token",
        "unknown",
    ];
    match WORDS.iter().find(|word| **word == value) {
        Some(word) => KeyValue::new(key, *word),
        None => KeyValue::new(key, value.to_owned()),
    }
}

/// The verified client id, or `unknown`.
pub(crate) fn client(client_id: Option<&str>) -> KeyValue {
    kv("client_id", client_id.unwrap_or("unknown"))
}

/// Record a cache lookup: `cache` (`token`, `key`, `secret`, `exchange`,
/// `policy`) and its `result` (`hit`, `miss`, `stale`).
pub(crate) fn record_cache(cache: &'static str, result: &str) {
    INSTRUMENTS
        .cache
        .add(1, &[KeyValue::new("cache", cache), kv("result", result)]);
}

/// Report `read()` as the gauge `name` at each collection, for as long as
/// it answers (it holds a weak reference to what it counts).
#[cfg_attr(not(feature = "jwt"), allow(dead_code))] // `serve` and `Guard` report with it
pub(crate) fn gauge_in_use(
    name: &'static str,
    description: &'static str,
    read: impl Fn() -> Option<u64> + Send + Sync + 'static,
) {
    let _ = opentelemetry::global::meter("rmcp_guard")
        .u64_observable_gauge(name)
        .with_description(description)
        .with_callback(move |gauge| {
            if let Some(value) = read() {
                gauge.observe(value, &[]);
            }
        })
        .build();
}

/// Record a call to an upstream.
pub(crate) fn record_upstream(upstream: Upstream, ok: bool, elapsed: Duration) {
    INSTRUMENTS.upstream_duration.record(
        elapsed.as_secs_f64(),
        &[
            KeyValue::new("upstream", upstream.as_str()),
            KeyValue::new("outcome", if ok { "ok" } else { "error" }),
        ],
    );
}
