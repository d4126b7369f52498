//! Per-caller request limits: a request rate (GCRA) and requests in flight,
//! keyed by caller (issuer, subject and client id), optionally by tenant,
//! and optionally per tool.
//!
//! [`RequestLimitLayer`] sits right inside the bearer layer, where the
//! [`Principal`] is known, and is installed by [`Guard`](crate::Guard) in
//! every deployment with [`RequestLimits::default`]:
//!
//! | bound | default | over it |
//! |---|---|---|
//! | request rate per caller | [`DEFAULT_RATE`] (20/s), burst [`DEFAULT_BURST`] (40) | HTTP 429, `Retry-After` in whole seconds (rounded up) |
//! | requests in flight per caller | [`DEFAULT_IN_FLIGHT`] (16) | HTTP 429, `Retry-After: 1` |
//! | rate per caller and tool | none; [`RequestLimits::tool`] | JSON-RPC error [`RATE_LIMITED`] (the HTTP exchange succeeded) |
//! | budgets remembered | [`DEFAULT_CAPACITY`] (100 000) | the least recently used budget is forgotten |
//!
//! **Why these defaults.** An MCP client is driven by a model: a tool call
//! follows a model turn of a second or more, and a session opens with a
//! handful of requests (`initialize`, `notifications/initialized`, the
//! listings). Twenty requests a second sustained, forty at once, is ten
//! times what an agent running parallel tool calls needs, and keeps one token
//! from turning the server into its own load generator. Sixteen requests in
//! flight matches the default of sixteen sessions per caller, and is well
//! above the parallel calls an agent makes.
//!
//! **What counts.** Every request that reaches the layer with a principal
//! takes one unit of the rate, refused ones excepted. A request holds its
//! in-flight permit until its response body ends or is dropped: a slow tool
//! counts for as long as it runs, and so does the SSE stream that answers a
//! `POST` (it ends with the answer). A `GET` (the standalone stream that
//! carries server notifications, or a resumption) must find room in flight
//! to be admitted but does not keep its permit: such a stream is idle most
//! of its life, and counting it would let a client's own listening streams
//! starve its calls. It holds a stream permit instead, from a second count
//! with the same bound (sixteen open `GET` streams by default, one per
//! session): the sessions alone do not bound streams, since rmcp keeps up
//! to 33 `GET` streams open per session, and 16 sessions of 33 streams let
//! one token hold every connection the server may accept. Over it, 429 with
//! `too_many_streams`.
//!
//! **Keys.** A caller is issuer + subject + client id, so the same user
//! through a second client has a second budget. With
//! [`RequestLimits::per_tenant`], callers whose token names a tenant share
//! one budget per issuer and tenant (callers without one keep their own).
//! Per-tool budgets are keyed by the same key and the tool name, and only
//! exist for the tools configured, so a client cannot create keys by naming
//! tools.
//!
//! **At the bound.** The budgets live in one table (the crate's `TtlCache`)
//! bounded in entries; a budget idle for an hour is dropped, and when the table is full
//! the least recently used budget is forgotten. Forgetting a key only resets
//! *that* key's budget: its caller starts again with a full burst and no
//! request counted in flight (its requests still in flight release the old
//! counter). One caller's requests never consume another's budget, so a
//! caller can be slowed only by itself; at most, a flood of distinct valid
//! tokens makes other callers' limits more lenient, never stricter.
//!
//! **Limits from a policy.** A [`LimitSource`] (a
//! [`PolicyEngine`](crate::policy::PolicyEngine) is one: rule
//! `data.mcp.authz.limits`) may give a caller other limits, field by field;
//! the answer is kept with the caller's budget for [`DEFAULT_SOURCE_TTL`]
//! (60 s). A source that fails falls back to the configured limits, never to
//! no limit. When the answer changes, the budget's rate starts afresh (its
//! requests in flight stay counted). With [`RequestLimits::per_tenant`], the
//! source is asked for whichever caller of the tenant finds the answer due.
//!
//! **Fleet.** With a Redis store ([`Guard::shared_store`](crate::Guard::shared_store),
//! or [`RequestLimits::shared`] in a custom stack) the budgets live in Redis
//! and every replica sharing it counts against one budget per caller (or
//! tenant, or caller and tool):
//!
//! | key (`<prefix>` is [`RedisConfig::key_prefix`](crate::store::RedisConfig::key_prefix)) | holds | expires |
//! |---|---|---|
//! | `<prefix>limit:rate:{h}` | the GCRA theoretical arrival time, in microseconds of the Redis server's clock | when the burst has come back (at most burst x interval: 2 s at the defaults) |
//! | `<prefix>limit:in_flight:{h}` | a sorted set of permit ids (16 bytes) scored by the expiry of their lease | [`FLEET_LEASE`] after the last admission |
//! | `<prefix>limit:streams:{h}` | the same, for open `GET` streams | likewise |
//!
//! `h` is the hex SHA-256 of the budget's key (issuer, subject and client
//! id; or issuer and tenant; and the tool for a per-tool rate): no subject
//! appears in a key name, and the braces put a budget's keys in one Redis
//! Cluster hash slot. A caller costs Redis well under 2 KB at the defaults
//! (a set holds at most `in_flight` members), and every key expires.
//! One admission is one Lua script (`EVALSHA`): the rate and the in-flight
//! (or stream) count decided atomically, on the server's clock: **at most
//! one round trip on the request path**. A budget whose burst and
//! in-flight bound are each 64 or more (or unset) is shared out: one
//! script takes a replica's share of it, 1/32 of the burst and of the
//! bound (at most 16 rate units and 16 slots), and the replica admits the
//! requests that follow from its share without a round trip. Shares never
//! admit more than the budget: units and slots are taken in Redis before
//! they are used (a slot is a member of the set; units are used within the
//! time the budget takes to earn them back, at most a second). What a
//! share costs is the other way: what a replica holds and does not use is
//! not available to the others until it is used, or goes back after a
//! second without requests of that budget on the replica (a slot starts
//! requests for half its lease at most). A replica holds shares of 16 384
//! budgets at most; past that a budget is counted one request per round
//! trip. The defaults (burst 40, 16 in flight) take one round trip per
//! request, as do streams. When the response body ends or is dropped
//! the permit goes back to the replica's share, or is queued for release; a background task sends the queued
//! releases in batches (one script, `ZREM`s, per batch of up to 256), off
//! the request path. A release that is lost (the queue of 8 192 full, Redis
//! down then, a replica that crashed) leaves the slot to the lease's expiry.
//! A release reaches Redis about a round trip after the body ended: a
//! caller at its bound whose next request follows at once may find the
//! slot still taken (429, `Retry-After: 1`). A permit counts for at most
//! [`FLEET_LEASE`] (5 minutes): a request in flight for longer stops
//! counting fleet-wide; an open `GET` stream renews its lease every half
//! lease while it stays open. A limited tool's call is one more script.
//! Limits from a source are asked and kept per replica as in memory (the
//! table then holds only those answers) and sent with the script. A
//! fleet-wide rate is counted in whole microseconds: at most 1 000 000/s per
//! caller. Give Redis `maxmemory-policy noeviction` (or a `volatile-*`
//! one): a budget evicted is a budget reset.
//!
//! **When Redis fails** (no answer within
//! [`RedisConfig::timeout`](crate::store::RedisConfig::timeout), 50 ms by
//! default, down, or its breaker open) a request that needs it is refused
//! with [`StoreError::response`](crate::store::StoreError::response): HTTP
//! 503 with `Retry-After`, audit event `limit` with outcome `error` and the
//! store's reason (`store_timeout`, `store_unavailable`,
//! `store_circuit_open`); a limited tool's call gets the JSON-RPC error
//! `-32000` with that reason. Nothing else waits on Redis: routes without
//! limits go on, and admissions work again as soon as Redis answers,
//! without a restart. `RequestLimits::default().dangerous().fail_open_on_store_error()`
//! lets such requests through uncounted instead (still audited, outcome
//! `allow`). In memory (the default) nothing of this applies: the budgets
//! are this process's, decided synchronously.
//!
//! **Turning limits off** weakens a default and is spelled
//! `RequestLimits::default().dangerous().unlimited()`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use rmcp_guard::Principal;
//! use rmcp_guard::limit::{Rate, RequestLimitLayer, RequestLimits};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! let limits = RequestLimits::default().rate("2/min".parse().unwrap()).burst(2);
//! let service = ServiceBuilder::new().layer(RequestLimitLayer::new(limits)).service(service_fn(
//!     |_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     },
//! ));
//! let alice = Principal::unverified("https://idp.example", "alice").build();
//! let request = || {
//!     let mut req = http::Request::post("/mcp").body(String::new()).unwrap();
//!     req.extensions_mut().insert(alice.clone());
//!     req
//! };
//! assert_eq!(service.clone().oneshot(request()).await.unwrap().status(), 200);
//! assert_eq!(service.clone().oneshot(request()).await.unwrap().status(), 200);
//! let refused = service.clone().oneshot(request()).await.unwrap();
//! assert_eq!(refused.status(), 429);
//! assert!(refused.headers().contains_key("retry-after"));
//! # }
//! ```

#[cfg(feature = "redis")]
mod fleet;
mod layer;
mod rate;
#[cfg(feature = "redis")]
mod share;
mod table;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize as _;

#[cfg(feature = "policy")]
pub(crate) use layer::tool_budget;
pub use layer::{RequestLimit, RequestLimitBody, RequestLimitLayer, ResponseFuture, ToolBudget, check_tool};
pub use rate::{Rate, RateParseError};

use crate::principal::Principal;
use crate::store::SharedStore;

/// The request rate per caller unless configured otherwise: 20 per second.
pub const DEFAULT_RATE: Rate = Rate::per_second(NonZeroU32::new(20).unwrap());
/// The burst per caller unless configured otherwise: 40 requests at once.
pub const DEFAULT_BURST: u32 = 40;
/// Requests in flight per caller unless configured otherwise.
pub const DEFAULT_IN_FLIGHT: u32 = 16;
/// How many budgets are remembered unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// How long a [`LimitSource`]'s answer is kept per caller unless configured
/// otherwise.
pub const DEFAULT_SOURCE_TTL: Duration = Duration::from_secs(60);

/// How long a permit held in Redis counts at most (a fleet): a request in
/// flight for longer stops counting fleet-wide (an open `GET` stream renews
/// its lease every half lease while it stays open). The bound of a permit
/// whose release was lost (a replica that crashed, Redis down when the
/// response ended).
pub const FLEET_LEASE: Duration = Duration::from_secs(300);

/// The JSON-RPC error code of a request refused by a limit: the `error` of a
/// 429 body, and the error of a `tools/call` over its per-tool rate. Its
/// `data` is `{"error": "rate_limited" | "too_many_in_flight" | "too_many_streams", "retry_after":
/// <seconds>}` (and `"tool"` for a per-tool limit).
pub const RATE_LIMITED: rmcp::model::ErrorCode = rmcp::model::ErrorCode(-32029);

/// The limits of one caller. A field that is not set means: no such limit in
/// a configuration, and "keep the configured one" in a [`LimitSource`]'s
/// answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct CallerLimits {
    rate: Option<Rate>,
    burst: Option<NonZeroU32>,
    in_flight: Option<NonZeroU32>,
}

impl CallerLimits {
    /// No field set.
    pub fn new() -> Self {
        CallerLimits::default()
    }

    /// The request rate. Defaults to not set.
    pub fn with_rate(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// How many requests may come at once (0 counts as 1). Defaults to not
    /// set: the rate's count.
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        self
    }

    /// How many requests may be in flight (0 counts as 1). Defaults to not set.
    pub fn with_in_flight(mut self, in_flight: u32) -> Self {
        self.in_flight = Some(NonZeroU32::new(in_flight).unwrap_or(NonZeroU32::MIN));
        self
    }

    /// The request rate, if set.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// The burst, if set.
    pub fn burst(&self) -> Option<u32> {
        self.burst.map(NonZeroU32::get)
    }

    /// The requests in flight, if set.
    pub fn in_flight(&self) -> Option<u32> {
        self.in_flight.map(NonZeroU32::get)
    }

    /// `self` with every field `over` sets replaced; a rate without a burst
    /// comes with its own count as the burst (the configured burst was
    /// chosen for the configured rate).
    fn overlaid(self, over: CallerLimits) -> CallerLimits {
        let burst = match over.rate {
            Some(_) => over.burst,
            None => over.burst.or(self.burst),
        };
        CallerLimits {
            rate: over.rate.or(self.rate),
            burst,
            in_flight: over.in_flight.or(self.in_flight),
        }
    }

    /// Read limits from JSON such as `{"rate": "100/min", "burst": 10,
    /// "in_flight": 4}`; every field is optional, any other field, a rate
    /// that does not parse or a count below 1 is an error.
    ///
    /// ```
    /// use rmcp_guard::limit::CallerLimits;
    ///
    /// let limits = CallerLimits::from_json(&serde_json::json!({"rate": "100/min", "in_flight": 4}))?;
    /// assert_eq!(limits.rate().map(|r| r.to_string()).as_deref(), Some("100/min"));
    /// assert_eq!(limits.in_flight(), Some(4));
    /// assert!(CallerLimits::from_json(&serde_json::json!({"in_flight": 0})).is_err());
    /// # Ok::<(), String>(())
    /// ```
    ///
    /// # Errors
    ///
    /// What is wrong, in one line.
    pub fn from_json(value: &serde_json::Value) -> Result<CallerLimits, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            rate: Option<Rate>,
            burst: Option<NonZeroU32>,
            in_flight: Option<NonZeroU32>,
        }
        let wire = Wire::deserialize(value).map_err(|e| format!("limits: {e}"))?;
        Ok(CallerLimits {
            rate: wire.rate,
            burst: wire.burst,
            in_flight: wire.in_flight,
        })
    }
}

/// Where per-caller limits come from besides the configuration: a policy,
/// a directory of plans. Asked once per caller per
/// [`source_ttl`](RequestLimits::source_ttl), on the request path: answer
/// from memory.
pub trait LimitSource: Send + Sync + 'static {
    /// Limits for `principal`, each field it sets replacing the configured
    /// one; `Ok(None)` keeps the configured limits. An error keeps them too
    /// (and is logged): a failing source never lifts a limit.
    ///
    /// # Errors
    ///
    /// When the source cannot answer.
    fn limits(&self, principal: &Principal) -> Result<Option<CallerLimits>, Box<dyn std::error::Error + Send + Sync>>;
}

/// The configuration of [`RequestLimitLayer`]; see the [module docs](self).
///
/// ```
/// use rmcp_guard::limit::{Rate, RequestLimits};
///
/// let limits = RequestLimits::default()
///     .rate("300/min".parse()?)
///     .in_flight(8)
///     .per_tenant()
///     .tool("deploy_template", "10/h".parse()?);
/// # let _ = limits;
/// # Ok::<(), rmcp_guard::limit::RateParseError>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct RequestLimits {
    caller: CallerLimits,
    by_tenant: bool,
    tools: HashMap<Box<str>, Rate>,
    capacity: usize,
    source_ttl: Duration,
    source: Option<Arc<dyn LimitSource>>,
    store: SharedStore,
    fail_open: bool,
}

impl fmt::Debug for RequestLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLimits")
            .field("caller", &self.caller)
            .field("by_tenant", &self.by_tenant)
            .field("tools", &self.tools)
            .field("capacity", &self.capacity)
            .field("source_ttl", &self.source_ttl)
            .field("source", &self.source.is_some())
            .field("store", &self.store)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl Default for RequestLimits {
    /// [`DEFAULT_RATE`] with a burst of [`DEFAULT_BURST`],
    /// [`DEFAULT_IN_FLIGHT`] in flight, per caller, no per-tool limit,
    /// [`DEFAULT_CAPACITY`] budgets, no source, in this process's memory.
    fn default() -> Self {
        RequestLimits {
            caller: CallerLimits::new()
                .with_rate(DEFAULT_RATE)
                .with_burst(DEFAULT_BURST)
                .with_in_flight(DEFAULT_IN_FLIGHT),
            by_tenant: false,
            tools: HashMap::new(),
            capacity: DEFAULT_CAPACITY,
            source_ttl: DEFAULT_SOURCE_TTL,
            source: None,
            store: SharedStore::memory(),
            fail_open: false,
        }
    }
}

impl RequestLimits {
    /// The request rate per caller ([`DEFAULT_RATE`]); the burst stays as
    /// configured. Defaults to `20/s`.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.caller.rate = Some(rate);
        self
    }

    /// How many requests a caller may send at once ([`DEFAULT_BURST`]; 0
    /// counts as 1). Defaults to `40`.
    pub fn burst(mut self, burst: u32) -> Self {
        self.caller = self.caller.with_burst(burst);
        self
    }

    /// How many requests a caller may have in flight ([`DEFAULT_IN_FLIGHT`];
    /// 0 counts as 1), and, counted apart, how many `GET` streams it may
    /// keep open. Defaults to `16`.
    pub fn in_flight(mut self, in_flight: u32) -> Self {
        self.caller = self.caller.with_in_flight(in_flight);
        self
    }

    /// Callers whose token names a tenant share one budget per issuer and
    /// tenant. Defaults to one budget per caller.
    pub fn per_tenant(mut self) -> Self {
        self.by_tenant = true;
        self
    }

    /// Limit calls of `tool` to `rate` per caller (or tenant), with a burst
    /// of the rate's count; a call over it is answered with the JSON-RPC
    /// error [`RATE_LIMITED`]. Enforced by [`check_tool`], which
    /// [`Guarded`](crate::policy::Guarded) calls (so a [`Guard`](crate::Guard)
    /// with a policy); a handler without one calls it itself. Defaults to
    /// no per-tool limit.
    pub fn tool(mut self, tool: impl Into<String>, rate: Rate) -> Self {
        self.tools.insert(tool.into().into_boxed_str(), rate);
        self
    }

    /// How many budgets (callers, tenants, caller-and-tool pairs) are
    /// remembered ([`DEFAULT_CAPACITY`]); see "At the bound" in the
    /// [module docs](self). Defaults to `100000`.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Ask `source` for each caller's limits. Defaults to none;
    /// [`Guard`](crate::Guard) sets its policy.
    pub fn source(mut self, source: impl LimitSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Whether a source is set.
    pub fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// How long a source's answer is kept per caller
    /// ([`DEFAULT_SOURCE_TTL`]). Defaults to `60s`.
    pub fn source_ttl(mut self, ttl: Duration) -> Self {
        self.source_ttl = ttl;
        self
    }

    /// Keep the budgets in `store`: with a Redis store, every replica
    /// sharing it counts against one budget per caller (see "Fleet" in the
    /// [module docs](self)); a memory store keeps them in this process.
    /// [`Guard`](crate::Guard) passes its
    /// [`shared_store`](crate::Guard::shared_store) unless one is set here.
    /// Defaults to `SharedStore::memory()`.
    pub fn shared(mut self, store: SharedStore) -> Self {
        self.store = store;
        self
    }

    /// Whether the budgets are shared with other replicas (a Redis store).
    pub fn is_shared(&self) -> bool {
        self.store.is_shared()
    }

    /// As [`Guard`](crate::Guard) assembles them: its store, unless a
    /// shared one is set.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // `Guard` needs `jwt`
    pub(crate) fn with_store(self, store: &SharedStore) -> Self {
        if self.is_shared() {
            return self;
        }
        self.shared(store.clone())
    }

    /// The configured limits of every caller.
    pub fn caller_limits(&self) -> CallerLimits {
        self.caller
    }

    /// Whether per-tool limits are configured.
    pub fn has_tool_limits(&self) -> bool {
        !self.tools.is_empty()
    }

    /// As [`Guard`](crate::Guard) assembles them: `policy` (whose wrapper
    /// checks the per-tool limits) becomes the source unless one is set or
    /// every limit is off; per-tool limits without a policy are not checked
    /// by the guard, which says so.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // `Guard` needs `jwt`
    pub(crate) fn with_policy(mut self, policy: Option<Arc<dyn LimitSource>>) -> Self {
        match policy {
            Some(policy) if self.source.is_none() && self.caller != CallerLimits::new() => {
                self.source = Some(policy);
            }
            Some(_) => {}
            None if self.has_tool_limits() => {
                tracing::warn!("per-tool limits need a policy (or rmcp_guard::limit::check_tool in the handler)");
            }
            None => {}
        }
        self
    }

    /// Settings that weaken a default, named so a reviewer sees them.
    pub fn dangerous(self) -> DangerousRequestLimits {
        DangerousRequestLimits { limits: self }
    }

    /// The layer enforcing these limits.
    pub fn layer(self) -> RequestLimitLayer {
        RequestLimitLayer::new(self)
    }
}

/// The settings of [`RequestLimits::dangerous`]: each lifts a bound.
#[derive(Debug)]
#[must_use]
pub struct DangerousRequestLimits {
    limits: RequestLimits,
}

impl DangerousRequestLimits {
    /// No rate limit per caller: one token can send as fast as the
    /// connection carries.
    pub fn no_rate(mut self) -> RequestLimits {
        self.limits.caller.rate = None;
        self.limits
    }

    /// No limit of requests in flight per caller: one token can hold as many
    /// slow calls open as the server has memory for.
    pub fn no_in_flight(mut self) -> RequestLimits {
        self.limits.caller.in_flight = None;
        self.limits
    }

    /// When the shared store fails (Redis down, slow or its breaker open),
    /// let requests and tool calls through uncounted instead of refusing
    /// them with 503 (a JSON-RPC error for a tool call); each is still
    /// audited (`limit`, outcome `allow`, the store's reason). While Redis
    /// is down nothing bounds a caller.
    pub fn fail_open_on_store_error(mut self) -> RequestLimits {
        self.limits.fail_open = true;
        self.limits
    }

    /// No limit at all: no rate, nothing in flight, no per-tool limit, no
    /// source (a policy cannot put them back). For a server behind a gateway
    /// that enforces its own.
    pub fn unlimited(self) -> RequestLimits {
        RequestLimits {
            caller: CallerLimits::new(),
            tools: HashMap::new(),
            source: None,
            ..self.limits
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let limits = RequestLimits::default();
        let caller = limits.caller_limits();
        assert_eq!(caller.rate().map(|r| r.to_string()).as_deref(), Some("20/s"));
        assert_eq!(caller.burst(), Some(40));
        assert_eq!(caller.in_flight(), Some(16));
        assert_eq!(DEFAULT_RATE.to_string(), "20/s");
        assert_eq!((DEFAULT_BURST, DEFAULT_IN_FLIGHT), (40, 16));
        assert_eq!(limits.capacity, 100_000);
        assert_eq!(limits.source_ttl, Duration::from_secs(60));
        assert!(!limits.by_tenant && !limits.has_tool_limits() && !limits.has_source());
        assert_eq!(RATE_LIMITED.0, -32029);
        assert!(!limits.is_shared() && !limits.fail_open, "memory, fail closed");
        assert_eq!(FLEET_LEASE, Duration::from_secs(300));
    }

    #[test]
    fn only_the_dangerous_step_lifts_a_limit() {
        let off = RequestLimits::default().tool("t", DEFAULT_RATE).dangerous().unlimited();
        assert_eq!(off.caller_limits(), CallerLimits::new());
        assert!(!off.has_tool_limits());
        let no_rate = RequestLimits::default().dangerous().no_rate().caller_limits();
        assert_eq!((no_rate.rate(), no_rate.in_flight()), (None, Some(16)));
        let no_in_flight = RequestLimits::default().dangerous().no_in_flight().caller_limits();
        assert!(no_in_flight.rate().is_some() && no_in_flight.in_flight().is_none());
        let open = RequestLimits::default().dangerous().fail_open_on_store_error();
        assert!(open.fail_open && open.caller_limits() == RequestLimits::default().caller_limits());
    }

    #[test]
    fn a_source_overrides_field_by_field() {
        let configured = RequestLimits::default().caller_limits();
        let from_policy = CallerLimits::from_json(&serde_json::json!({"in_flight": 2})).unwrap();
        let merged = configured.overlaid(from_policy);
        assert_eq!((merged.in_flight(), merged.burst()), (Some(2), Some(40)));
        let rate_only = CallerLimits::from_json(&serde_json::json!({"rate": "6/min"})).unwrap();
        assert_eq!(configured.overlaid(rate_only).burst(), None, "the rate's own count");
        for bad in [
            serde_json::json!({"rate": "fast"}),
            serde_json::json!({"in_flight": -1}),
            serde_json::json!({"unlimited": true}),
            serde_json::json!("100/min"),
        ] {
            assert!(CallerLimits::from_json(&bad).is_err(), "{bad}");
        }
    }
}
