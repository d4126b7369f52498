//! [`ReplaySet`]: where single-use request states are remembered;
//! [`MemoryReplaySet`], the in-process one, and [`RedisReplaySet`], the one a
//! fleet of replicas shares (feature `redis`).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::StateError;
use crate::cache::{OwnedTable, OwnerFull, Refused, Timestamp};

/// The future a [`ReplaySet`] returns.
pub type ReplayFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StateError>> + Send + 'a>>;

/// One opening of a single-use state: whose it is, its id, and until when
/// it must be remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayEntry {
    owner: [u8; 32],
    id: [u8; 16],
    expires_at: Timestamp,
}

impl ReplayEntry {
    pub(crate) fn new(owner: [u8; 32], id: [u8; 16], expires_at: Timestamp) -> Self {
        ReplayEntry { owner, id, expires_at }
    }

    /// The caller the state belongs to: SHA-256 of its issuer, kind, subject
    /// and client id. Use it to bound each caller's share.
    pub fn owner(&self) -> &[u8; 32] {
        &self.owner
    }

    /// The state's random 128-bit id, unique per sealing.
    pub fn id(&self) -> &[u8; 16] {
        &self.id
    }

    /// When the state expires; past it the state does not open anyway, so
    /// the entry can be forgotten.
    pub fn expires_at(&self) -> SystemTime {
        // A TTL of `Duration::MAX` saturates the deadline; past what a
        // `SystemTime` holds on this platform, the latest it holds will do.
        let since = Duration::from_millis(self.expires_at.millis());
        UNIX_EPOCH
            .checked_add(since)
            .unwrap_or_else(|| UNIX_EPOCH + Duration::from_secs(i32::MAX as u64))
    }
}

/// Remembers which single-use states were opened.
///
/// [`first_use`](Self::first_use) records an entry and succeeds only the
/// first time it sees the entry's owner and id; check and record are one
/// atomic step. It must be bounded (per owner and in total) and fail closed:
/// when it cannot record, it returns [`StateError::Full`] or
/// [`StateError::Unavailable`], never `Ok`, and it never forgets a live
/// entry to make room (that would let the state be used twice).
///
/// [`MemoryReplaySet`] serves one process; a fleet of replicas needs a
/// shared implementation: [`RedisReplaySet`] (feature `redis`), which
/// [`Guard`](crate::Guard) installs when its
/// [`shared_store`](crate::Guard::shared_store) is Redis.
pub trait ReplaySet: Send + Sync + 'static {
    /// Record `entry`; [`StateError::Replayed`] if it was recorded before.
    fn first_use(&self, entry: ReplayEntry) -> ReplayFuture<'_>;
}

/// A [`ReplaySet`] in this process's memory, bounded in total and per
/// caller.
///
/// Entries are forgotten when their state expires. When a caller's share
/// is full, its own expired entries make room, else the opening fails with
/// [`StateError::Full`]; when the whole set is full, expired entries make
/// room, else the same. No caller's live entry is ever evicted.
pub struct MemoryReplaySet {
    table: OwnedTable<[u8; 32], [u8; 16], ()>,
}

impl MemoryReplaySet {
    /// The default total bound.
    pub const DEFAULT_TOTAL: usize = 100_000;
    /// The default bound per caller.
    pub const DEFAULT_PER_PRINCIPAL: usize = 1_000;

    /// A set of at most [`DEFAULT_TOTAL`](Self::DEFAULT_TOTAL) entries,
    /// [`DEFAULT_PER_PRINCIPAL`](Self::DEFAULT_PER_PRINCIPAL) per caller.
    pub fn new() -> Self {
        MemoryReplaySet::with_limits(Self::DEFAULT_TOTAL, Self::DEFAULT_PER_PRINCIPAL)
    }

    /// A set of at most `total` entries, `per_principal` of them for one
    /// caller (each a single-use state opened and not yet expired).
    pub fn with_limits(total: usize, per_principal: usize) -> Self {
        MemoryReplaySet {
            table: OwnedTable::new(total, per_principal),
        }
    }

    pub(super) fn first_use_at(&self, entry: &ReplayEntry, now: Timestamp) -> Result<(), StateError> {
        self.table
            .insert(&entry.owner, entry.id, (), entry.expires_at, now, OwnerFull::Refuse)
            .map_err(|refused| match refused {
                Refused::Present => StateError::Replayed,
                Refused::Full if entry.expires_at <= now => StateError::Expired,
                Refused::Full => StateError::Full,
            })
    }
}

impl Default for MemoryReplaySet {
    fn default() -> Self {
        MemoryReplaySet::new()
    }
}

impl std::fmt::Debug for MemoryReplaySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplaySet")
            .field("entries", &self.table.len())
            .finish()
    }
}

impl ReplaySet for MemoryReplaySet {
    fn first_use(&self, entry: ReplayEntry) -> ReplayFuture<'_> {
        let result = self.first_use_at(&entry, Timestamp::now());
        Box::pin(std::future::ready(result))
    }
}

#[cfg(feature = "redis")]
pub use self::redis::RedisReplaySet;

#[cfg(feature = "redis")]
mod redis {
    use std::sync::{Arc, LazyLock};
    use std::time::Duration;

    use ::redis::Script;

    use super::{ReplayEntry, ReplayFuture, ReplaySet};
    use crate::cache::Timestamp;
    use crate::state::StateError;
    use crate::store::{RedisStore, SharedStore};

    /// How long past its state's expiry an entry is kept: replicas' clocks
    /// may differ by this much, and a replica whose clock is behind still
    /// opens a state the others see as expired.
    const CLOCK_SKEW: Duration = Duration::from_secs(60);

    /// Check and record in one step. `KEYS[1]`: the owner's set (state id ->
    /// expiry, Unix ms). `ARGV`: id, expiry, now (ms, this replica's clock),
    /// grace (ms), the owner's bound. Answers 1 (recorded), 0 (seen before),
    /// -1 (the owner's share is full), -2 (expired).
    const FIRST_USE: &str = r"
local key = KEYS[1]
local expires = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
if redis.call('ZSCORE', key, ARGV[1]) then return 0 end
if expires <= now then return -2 end
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', now - grace))
if redis.call('ZCARD', key) >= tonumber(ARGV[5]) then return -1 end
redis.call('ZADD', key, expires, ARGV[1])
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', key, string.format('%.0f', tonumber(last[2]) + grace))
return 1
";

    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FIRST_USE));

    /// A [`ReplaySet`] in Redis (or Valkey), shared by every replica of a
    /// fleet: a state opened on one replica is refused as
    /// [`Replayed`](StateError::Replayed) on all of them.
    ///
    /// Each caller has one sorted set, `<prefix>replay:<hex SHA-256 of the
    /// caller>`, of the ids of the states it opened, scored by their expiry.
    /// One script per opening (one round trip) checks the id, drops the
    /// caller's entries expired for more than a minute (the clock skew
    /// tolerated between replicas), refuses with [`Full`](StateError::Full)
    /// when the caller already holds its bound of live entries (no entry is
    /// evicted to make room), and records the id; the set expires a minute
    /// after its last state does. Memory (`MEMORY USAGE`, Redis 7.0): about
    /// 30 bytes per entry while a caller holds at most 128 (Redis' compact
    /// encoding), about 120 beyond, plus about 120 bytes per caller with
    /// live entries: at most about 120 KB for a caller at the default bound.
    ///
    /// Fail closed: when Redis does not answer within its timeout, is down or
    /// errs, the state is not opened ([`Unavailable`](StateError::Unavailable)).
    ///
    /// Every replica must seal with the same [`StateKeys`](crate::state::StateKeys)
    /// (from a secret store, never [`StateKeys::generate`](crate::state::StateKeys::generate)),
    /// or a state sealed by one does not open on another.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use rmcp_guard::state::{RedisReplaySet, RequestStateSealer, StateKeys};
    /// use rmcp_guard::store::{RedisConfig, SharedStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), rmcp_guard::ConfigError> {
    /// let store = SharedStore::redis(RedisConfig::new("redis://127.0.0.1:6379/0"))?;
    /// let replay = RedisReplaySet::new(&store).expect("a Redis store");
    /// # let keys = StateKeys::generate(); // in a fleet: the same keys on every replica
    /// let sealer = RequestStateSealer::new(keys).replay_set(Arc::new(replay));
    /// # let _ = sealer;
    /// assert!(RedisReplaySet::new(&SharedStore::memory()).is_none());
    /// # Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct RedisReplaySet {
        store: Arc<RedisStore>,
        per_principal: usize,
    }

    impl RedisReplaySet {
        /// The default bound per caller: live single-use states it opened.
        pub const DEFAULT_PER_PRINCIPAL: usize = super::MemoryReplaySet::DEFAULT_PER_PRINCIPAL;

        /// The replay set in `store`; `None` when `store` is not Redis.
        /// Each caller holds at most
        /// [`DEFAULT_PER_PRINCIPAL`](Self::DEFAULT_PER_PRINCIPAL) entries.
        pub fn new(store: &SharedStore) -> Option<RedisReplaySet> {
            Some(RedisReplaySet {
                store: store.redis_store()?.clone(),
                per_principal: Self::DEFAULT_PER_PRINCIPAL,
            })
        }

        /// At most `max` entries per caller (at least 1): single-use states
        /// opened and not yet expired (plus the clock-skew minute). Defaults
        /// to [`DEFAULT_PER_PRINCIPAL`](Self::DEFAULT_PER_PRINCIPAL) (1000).
        pub fn max_per_principal(mut self, max: usize) -> Self {
            self.per_principal = max.max(1);
            self
        }

        async fn first_use_now(&self, entry: ReplayEntry) -> Result<(), StateError> {
            let now = Timestamp::now();
            if entry.expires_at <= now {
                return Err(StateError::Expired);
            }
            let key = self.store.key("replay", hex(entry.owner()).as_bytes());
            let mut invocation = SCRIPT.prepare_invoke();
            invocation
                .key(key)
                .arg(&entry.id()[..])
                .arg(entry.expires_at.millis())
                .arg(now.millis())
                .arg(CLOCK_SKEW.as_millis() as u64)
                .arg(self.per_principal);
            match self.store.invoke::<i64>(invocation).await {
                Ok(1) => Ok(()),
                Ok(0) => Err(StateError::Replayed),
                Ok(-1) => Err(StateError::Full),
                Ok(-2) => Err(StateError::Expired),
                // Not an answer this script gives: deny.
                Ok(_) => Err(StateError::Unavailable),
                // The store has logged why (timeout, down, breaker open).
                Err(_) => Err(StateError::Unavailable),
            }
        }
    }

    impl ReplaySet for RedisReplaySet {
        fn first_use(&self, entry: ReplayEntry) -> ReplayFuture<'_> {
            Box::pin(self.first_use_now(entry))
        }
    }

    impl std::fmt::Debug for RedisReplaySet {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisReplaySet")
                .field("store", &self.store)
                .field("max_per_principal", &self.per_principal)
                .finish()
        }
    }

    fn hex(bytes: &[u8]) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}
