//! Where the state every replica must agree on lives: this process's memory
//! (the default, for one replica) or a Redis (or Valkey) server shared by a
//! fleet of replicas behind a load balancer.
//!
//! One [`SharedStore`] value is handed to [`Guard::shared_store`](crate::Guard::shared_store),
//! which gives it to every piece that keeps shared state:
//!
//! | state | in memory | in Redis |
//! |---|---|---|
//! | per-caller (tenant, tool) rates and requests in flight ([`limit`](crate::limit)) | this replica's budgets | one budget per caller across the fleet |
//! | session bindings and sessions per principal ([`session`](crate::session)) | this replica's sessions | a session opened on one replica is refused to another principal on any replica |
//! | single-use request states ([`state`](crate::state)) | this replica's replay set | used once across the fleet |
//! | revocations | this replica | every replica within a second |
//!
//! **Failure semantics.** Every Redis command waits at most
//! [`RedisConfig::timeout`] (50 ms by default), and a breaker
//! ([`BreakerConfig`](crate::breaker::BreakerConfig), here 3 failures, open 1 s doubling to 5 s) answers at
//! once while Redis is down, so no request queues on a dead Redis. What a
//! failed command means is decided by each feature, and by default it
//! *denies*: a request that cannot be counted, checked or recorded is
//! answered 503 with `Retry-After` and an audit event. The connection is
//! re-established in the background with backoff; when Redis answers again
//! the service recovers without a restart.
//!
//! ```
//! use rmcp_guard::store::SharedStore;
//!
//! // One replica: nothing to configure (this is what `Guard` uses by default).
//! let store = SharedStore::memory();
//! assert!(!store.is_shared());
//! ```

#[cfg(feature = "redis")]
mod redis;

use std::fmt;
#[cfg(feature = "redis")]
use std::sync::Arc;

#[cfg(feature = "redis")]
pub(crate) use redis::RedisStore;
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_KEY_PREFIX, DEFAULT_TIMEOUT, RedisConfig};

/// Where shared state lives; see the [module docs](self). Cheap to clone:
/// clones share one connection.
#[derive(Clone, Default)]
pub struct SharedStore {
    #[cfg(feature = "redis")]
    redis: Option<Arc<RedisStore>>,
}

impl SharedStore {
    /// This process's memory: each replica keeps its own state. Defaults to
    /// this.
    pub fn memory() -> SharedStore {
        SharedStore::default()
    }

    /// A Redis (or Valkey) server shared by every replica. The connection is
    /// made lazily and re-made in the background when lost: a replica starts
    /// while Redis is down (and denies what needs Redis until it is back).
    ///
    /// # Errors
    ///
    /// The URL or a setting of `config` is invalid.
    #[cfg(feature = "redis")]
    pub fn redis(config: RedisConfig) -> Result<SharedStore, crate::ConfigError> {
        Ok(SharedStore {
            redis: Some(Arc::new(RedisStore::new(config)?)),
        })
    }

    /// Whether the state is shared with other replicas (Redis).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.redis.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Redis commands sent so far by this process (each is one round trip;
    /// a script is one command). Zero in memory.
    pub fn round_trips(&self) -> u64 {
        #[cfg(feature = "redis")]
        return self.redis.as_ref().map_or(0, |r| r.round_trips());
        #[cfg(not(feature = "redis"))]
        0
    }

    /// The Redis store, when shared.
    #[cfg(feature = "redis")]
    #[allow(dead_code)] // each shared feature reads it
    pub(crate) fn redis_store(&self) -> Option<&Arc<RedisStore>> {
        self.redis.as_ref()
    }
}

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return f.debug_tuple("SharedStore").field(redis).finish();
        }
        f.write_str("SharedStore(memory)")
    }
}

/// Why a command to the shared store failed. Each feature decides what this
/// means for the request (by default: deny with 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No answer within the timeout.
    #[error("the shared store did not answer in time")]
    Timeout,
    /// The connection failed or the server answered with an error.
    #[error("the shared store is unavailable")]
    Unavailable,
    /// The store's breaker is open after repeated failures: not even tried.
    #[error("the shared store is down (breaker open)")]
    CircuitOpen {
        /// When to try again, in whole seconds (at least 1).
        retry_after_secs: u64,
    },
}

impl StoreError {
    /// The `Retry-After` to answer with: the breaker's remaining open time,
    /// else 1 second.
    pub fn retry_after_secs(self) -> u64 {
        match self {
            StoreError::CircuitOpen { retry_after_secs } => retry_after_secs.max(1),
            StoreError::Timeout | StoreError::Unavailable => 1,
        }
    }

    /// The audit reason: `store_timeout`, `store_unavailable` or
    /// `store_circuit_open`.
    pub fn reason(self) -> &'static str {
        match self {
            StoreError::Timeout => "store_timeout",
            StoreError::Unavailable => "store_unavailable",
            StoreError::CircuitOpen { .. } => "store_circuit_open",
        }
    }

    /// HTTP 503 with `Retry-After` and a short JSON-RPC error naming
    /// [`reason`](Self::reason): what a request that needs the store gets
    /// when it fails (fail closed).
    pub fn response(self) -> http::Response<bytes::Bytes> {
        let retry_after = self.retry_after_secs();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32000,"message":"temporarily unavailable","data":{{"error":"{}","retry_after":{retry_after}}}}}}}"#,
            self.reason()
        );
        let mut response = http::Response::new(bytes::Bytes::from(body));
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_the_default_and_not_shared() {
        let store = SharedStore::default();
        assert!(!store.is_shared());
        assert_eq!(store.round_trips(), 0);
        assert_eq!(format!("{store:?}"), "SharedStore(memory)");
    }

    #[test]
    fn a_store_failure_answers_503_with_retry_after() {
        let response = StoreError::CircuitOpen { retry_after_secs: 3 }.response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "3");
        assert!(
            std::str::from_utf8(response.body())
                .unwrap()
                .contains("store_circuit_open")
        );
        assert_eq!(StoreError::Timeout.response().headers()["retry-after"], "1");
    }
}
