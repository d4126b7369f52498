//! The Redis (or Valkey) backend: one multiplexed connection re-made in the
//! background with backoff, a timeout on every command and a breaker.

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, ScriptInvocation};

use super::StoreError;
use crate::breaker::{Breaker, BreakerConfig, Upstream};
use crate::error::ConfigError;
use crate::telemetry::trace;

/// The longest a request waits for one Redis command unless configured
/// otherwise: 50 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The prefix of every key unless configured otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "rmcp-guard:";

/// How to reach the Redis (or Valkey) server a fleet shares; see
/// [`SharedStore::redis`](super::SharedStore::redis).
///
/// ```
/// use std::time::Duration;
/// use rmcp_guard::store::{RedisConfig, SharedStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rmcp_guard::ConfigError> {
/// // Inside a Tokio runtime (the connection is kept by a background task).
/// let store = SharedStore::redis(
///     RedisConfig::new("redis://127.0.0.1:6379/0")
///         .key_prefix("mcp-prod:")
///         .timeout(Duration::from_millis(30)),
/// )?;
/// assert!(store.is_shared());
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    url: String,
    timeout: Duration,
    key_prefix: String,
    breaker: BreakerConfig,
}

impl RedisConfig {
    /// The server at `url`: `redis://[user:password@]host:port[/db]`.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            breaker: BreakerConfig::default()
                .failure_threshold(3)
                .cool_down(Duration::from_secs(1))
                .max_cool_down(Duration::from_secs(5)),
        }
    }

    /// The longest one command may take, the connection included (1 ms to
    /// 10 s); past it the command fails with [`StoreError::Timeout`].
    /// Defaults to 50 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The prefix of every key this server writes. Replicas of one MCP
    /// server share it; give each MCP server sharing a Redis its own.
    /// Defaults to `rmcp-guard:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// When the breaker in front of Redis opens. Defaults to 3 failures, open
    /// 1 s doubling up to 5 s (Redis restarts in seconds; the default of the
    /// other upstreams would keep a recovered Redis refused for up to a
    /// minute).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("server", &redacted(&self.url))
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// `url` without its user and password (for `Debug` and audit events).
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A connected (or reconnecting) Redis.
pub(crate) struct RedisStore {
    client: redis::Client,
    /// The connection manager, re-made when a login is refused (see
    /// [`RedisStore::remake_after`]).
    connection: RwLock<Connection>,
    manager: ConnectionManagerConfig,
    timeout: Duration,
    #[allow(dead_code)] // read through `key`
    prefix: Vec<u8>,
    breaker: Breaker,
    round_trips: AtomicU64,
    server: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("server", &self.server)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub(crate) fn new(config: RedisConfig) -> Result<RedisStore, ConfigError> {
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&config.timeout) {
            return Err(ConfigError::OutOfRange {
                what: "redis timeout",
                reason: "between 1 ms and 10 s",
            });
        }
        config.breaker.check()?;
        // The connection manager spawns its reconnect task on the current
        // runtime: outside one it would panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime("the Redis store"));
        }
        let server = redacted(&config.url);
        let client = redis::Client::open(config.url.as_str()).map_err(|_| ConfigError::InvalidUrl {
            what: "redis",
            url: server.clone(),
            reason: "expected redis://[user:password@]host:port[/db]",
        })?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(config.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), manager.clone()).map_err(|_| {
            ConfigError::InvalidUrl {
                what: "redis",
                url: server.clone(),
                reason: "not a connection this build can make",
            }
        })?;
        Ok(RedisStore {
            client,
            connection: RwLock::new(Connection {
                manager: connection,
                made: Instant::now(),
            }),
            manager,
            timeout: config.timeout,
            prefix: config.key_prefix.into_bytes(),
            breaker: Breaker::new(Upstream::Redis, server.clone(), config.breaker),
            round_trips: AtomicU64::new(0),
            server,
        })
    }

    /// The current connection manager (a cheap clone).
    fn connection(&self) -> ConnectionManager {
        read(&self.connection).manager.clone()
    }

    /// Replace the connection manager with a new one, unless it was made
    /// less than `after` ago. redis-rs re-connects after an I/O error only: a
    /// connection whose login was refused once (`WRONGPASS`, `NOPERM`: a
    /// Redis restarted before its ACL users were loaded, a rotated password)
    /// would answer that refusal to every later command, for good.
    fn remake_after(&self, after: Duration) {
        let mut connection = self
            .connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if connection.made.elapsed() < after {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone()) {
            Ok(manager) => {
                tracing::warn!(target: "rmcp_guard::store", server = %self.server, "redis refused the login; connecting anew");
                *connection = Connection {
                    manager,
                    made: Instant::now(),
                };
            }
            Err(error) => {
                tracing::warn!(target: "rmcp_guard::store", server = %self.server, kind = ?error.kind(), "cannot connect anew");
            }
        }
    }

    /// Commands sent so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The per-command timeout.
    #[allow(dead_code)] // read by the revocation subscriber
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The client, for a dedicated connection (pub/sub).
    #[allow(dead_code)] // read by the revocation subscriber
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The key `<prefix><kind>:<id>`.
    #[allow(dead_code)] // each shared feature uses it
    pub(crate) fn key(&self, kind: &str, id: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + kind.len() + 1 + id.len());
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(kind.as_bytes());
        key.push(b':');
        key.extend_from_slice(id);
        key
    }

    /// Send one command; fail within the timeout.
    #[allow(dead_code)] // each shared feature uses some of these
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.guarded(|| {
            let mut connection = self.connection();
            async move { cmd.query_async::<T>(&mut connection).await }
        })
        .await
    }

    /// Run one script (`EVALSHA`, loading it once after a Redis restart);
    /// fail within the timeout.
    #[allow(dead_code)] // each shared feature uses some of these
    pub(crate) async fn invoke<T: FromRedisValue>(&self, script: ScriptInvocation<'_>) -> Result<T, StoreError> {
        let script = &script;
        self.guarded(|| {
            let mut connection = self.connection();
            async move { script.invoke_async::<T>(&mut connection).await }
        })
        .await
    }

    /// Send `command` through the breaker, within the timeout. A command
    /// that failed on a connection found broken (Redis restarted since the
    /// last command) is sent once more on the connection the manager makes
    /// in its place, within the same timeout: otherwise every replica would
    /// answer its first request after a Redis restart with a 503. A resent
    /// write may have run once already; each caller's scripts are written so
    /// that running twice only errs on the side of refusing (a rate counted
    /// twice, a state seen as replayed).
    async fn guarded<T, F>(&self, mut command: impl FnMut() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = self.breaker.admit().map_err(|open| StoreError::CircuitOpen {
            retry_after_secs: open.retry_after_secs(),
        })?;
        let call = trace::Call::start(trace::Fetch::Redis, &self.server);
        let twice = async {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            match command().await {
                Err(error) if error.is_connection_dropped() || error.is_io_error() => {
                    tracing::debug!(target: "rmcp_guard::store", server = %self.server, "redis connection broken; sending once more");
                    self.round_trips.fetch_add(1, Ordering::Relaxed);
                    command().await
                }
                done => done,
            }
        };
        match call.run(tokio::time::timeout(self.timeout, twice)).await {
            Ok(Ok(value)) => {
                call.finish(true);
                attempt.settle(true);
                Ok(value)
            }
            Ok(Err(error)) => {
                // An error the server sent is Redis working (a bug of ours or
                // a full Redis: deny, but do not open the breaker); no answer
                // at all is Redis down.
                let down = error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_unrecoverable_error();
                tracing::warn!(target: "rmcp_guard::store", server = %self.server, kind = ?error.kind(), "redis command failed");
                if refused_login(&error) {
                    self.remake_after(REMAKE_AFTER);
                }
                call.finish(!down);
                attempt.settle(!down);
                Err(StoreError::Unavailable)
            }
            Err(_) => {
                tracing::warn!(target: "rmcp_guard::store", server = %self.server, timeout_ms = self.timeout.as_millis() as u64, "redis command timed out");
                call.finish(false);
                attempt.settle(false);
                Err(StoreError::Timeout)
            }
        }
    }
}

/// A connection manager and when it was made.
struct Connection {
    manager: ConnectionManager,
    made: Instant,
}

/// A refused login is retried with a new connection at most this often.
const REMAKE_AFTER: Duration = Duration::from_secs(1);

fn read(lock: &RwLock<Connection>) -> std::sync::RwLockReadGuard<'_, Connection> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `error` says the server refused this connection's login.
fn refused_login(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed || matches!(error.code(), Some("WRONGPASS" | "NOPERM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_debug() {
        let config = RedisConfig::new("redis://admin:hunter2@redis.internal:6379/0");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("admin"), "{debug}");
        assert!(debug.contains("redis.internal:6379"));
    }

    #[test]
    fn outside_a_runtime_the_store_is_a_config_error_not_a_panic() {
        assert!(matches!(
            RedisStore::new(RedisConfig::new("redis://127.0.0.1:1")),
            Err(ConfigError::NoRuntime(_))
        ));
    }

    #[tokio::test]
    async fn settings_are_checked_and_defaults_documented() {
        assert!(matches!(
            RedisStore::new(RedisConfig::new("redis://127.0.0.1:1").timeout(Duration::ZERO)),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            RedisStore::new(RedisConfig::new("not a url")),
            Err(ConfigError::InvalidUrl { .. })
        ));
        let config = RedisConfig::new("redis://127.0.0.1:1");
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(config.key_prefix, "rmcp-guard:");
        let store = RedisStore::new(config).unwrap();
        assert_eq!(store.key("rate", b"abc"), b"rmcp-guard:rate:abc");
    }

    #[tokio::test]
    async fn a_dead_redis_fails_within_the_timeout_then_opens_the_breaker() {
        // Port 1 on loopback: nothing listens, connections are refused.
        let store = RedisStore::new(RedisConfig::new("redis://127.0.0.1:1")).unwrap();
        let mut errors = Vec::new();
        for _ in 0..5 {
            errors.push(store.query::<String>(&redis::cmd("PING")).await.unwrap_err());
        }
        assert!(
            matches!(errors.last(), Some(StoreError::CircuitOpen { .. })),
            "{errors:?}"
        );
        assert_eq!(store.round_trips(), 3, "an open breaker sends nothing");
    }
}
