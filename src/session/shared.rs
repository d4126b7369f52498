//! Session bindings and sessions per principal in the fleet's shared store
//! (Redis), beside this replica's own table; see the
//! [module docs](super), "Fleet".
//!
//! Keys (`<prefix>` is the store's key prefix):
//!
//! - `<prefix>session:<session id>`: the SHA-256 of the owner (issuer, kind,
//!   subject, client id, length-prefixed: exact match, no raw subject in
//!   Redis), expiring `ttl` after the binding's last refresh;
//! - `<prefix>sessions:<hex SHA-256 of the owner>`: a sorted set of the
//!   owner's session ids scored by their last refresh (Redis' clock, one
//!   clock for the fleet), expiring `ttl` after its last change. A member
//!   whose score is older than `ttl` has no binding any more and is dropped.
//!
//! The scripts read Redis' `TIME` before writing, which needs scripts
//! replicated by their effects: Redis 5 or later (the default since), or
//! Valkey. They name keys they compute (the evicted bindings), so they run
//! on one Redis node, not a Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::principal::{Principal, PrincipalKind};
#[cfg(feature = "redis")]
use crate::store::RedisStore;
use crate::store::{SharedStore, StoreError};

/// The SHA-256 of an owner: what the shared store keeps and compares.
pub(super) type OwnerDigest = [u8; 32];

/// The digest of the owner `issuer`, `kind`, `subject`, `client_id`; two
/// owners share it only if all four are equal (every field is
/// length-prefixed).
pub(super) fn owner_digest(issuer: &str, kind: PrincipalKind, subject: &str, client_id: Option<&str>) -> OwnerDigest {
    fn field(hash: &mut Sha256, bytes: &[u8]) {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    let mut hash = Sha256::new();
    field(&mut hash, b"rmcp-guard session owner");
    field(&mut hash, issuer.as_bytes());
    field(&mut hash, kind.as_str().as_bytes());
    field(&mut hash, subject.as_bytes());
    match client_id {
        None => hash.update([0]),
        Some(client_id) => {
            hash.update([1]);
            field(&mut hash, client_id.as_bytes());
        }
    }
    hash.finalize().into()
}

/// The digest of `p` as a session owner.
pub(super) fn digest_of(p: &Principal) -> OwnerDigest {
    owner_digest(p.issuer(), p.kind(), p.subject(), p.client_id())
}

/// The shared half of the bindings: none without the `redis` feature.
#[cfg(not(feature = "redis"))]
pub(super) enum Shared {}

#[cfg(not(feature = "redis"))]
impl Shared {
    pub(super) fn from_store(_store: &SharedStore, _ttl: Duration) -> Option<Arc<Shared>> {
        None
    }

    pub(super) async fn bind(&self, _: &OwnerDigest, _: &str, _: usize) -> Result<Vec<String>, StoreError> {
        match *self {}
    }

    pub(super) async fn touch(&self, _: &OwnerDigest, _: &str) -> Result<bool, StoreError> {
        match *self {}
    }

    pub(super) async fn forget(&self, _: &OwnerDigest, _: &str) -> Result<(), StoreError> {
        match *self {}
    }
}

/// The shared half of the bindings, in Redis.
#[cfg(feature = "redis")]
pub(super) struct Shared {
    store: Arc<RedisStore>,
    /// How long a binding lives in Redis after its last refresh.
    ttl: Duration,
}

#[cfg(feature = "redis")]
mod scripts {
    use std::sync::LazyLock;

    use redis::Script;

    /// Bind a new session and bring its owner within its bound.
    /// `KEYS`: the binding, the owner's set. `ARGV`: owner digest, session
    /// id, ttl (ms), the bound, the binding key prefix (`<prefix>session:`).
    /// Answers the ids evicted (idlest first, never the new one); their
    /// bindings are gone.
    const BIND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', now - ttl))
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
local evicted = {}
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, over)) do
    if #evicted < over and id ~= ARGV[2] then
      evicted[#evicted + 1] = id
      redis.call('ZREM', KEYS[2], id)
      local key = ARGV[5] .. id
      if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
    end
  end
end
return evicted
";

    /// Whether the session is bound to the owner; if so, refresh it.
    /// `KEYS`: the binding, the owner's set. `ARGV`: owner digest, session
    /// id, ttl (ms). Answers 1 or 0.
    const TOUCH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
";

    /// Forget the owner's session. `KEYS`: the binding, the owner's set.
    /// `ARGV`: owner digest, session id.
    const FORGET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

    pub(super) static BIND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BIND));
    pub(super) static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TOUCH));
    pub(super) static FORGET_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FORGET));
}

#[cfg(feature = "redis")]
impl Shared {
    /// The shared half in `store`, when it is Redis.
    pub(super) fn from_store(store: &SharedStore, ttl: Duration) -> Option<Arc<Shared>> {
        Some(Arc::new(Shared {
            store: store.redis_store()?.clone(),
            ttl,
        }))
    }

    fn ttl_millis(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    fn keys(&self, owner: &OwnerDigest, session: &str) -> (Vec<u8>, Vec<u8>) {
        (
            self.store.key("session", session.as_bytes()),
            self.store.key("sessions", hex(owner).as_bytes()),
        )
    }

    /// Bind `session`, just created, to `owner`, holding at most `max`
    /// sessions per owner; the ids evicted for it, idlest first.
    pub(super) async fn bind(&self, owner: &OwnerDigest, session: &str, max: usize) -> Result<Vec<String>, StoreError> {
        let (binding, owned) = self.keys(owner, session);
        let mut invocation = scripts::BIND_SCRIPT.prepare_invoke();
        invocation
            .key(binding)
            .key(owned)
            .arg(&owner[..])
            .arg(session)
            .arg(self.ttl_millis())
            .arg(max)
            .arg(self.store.key("session", b""));
        self.store.invoke::<Vec<String>>(invocation).await
    }

    /// Whether `session` is bound to `owner` fleet-wide (and if so, its idle
    /// time starts again).
    pub(super) async fn touch(&self, owner: &OwnerDigest, session: &str) -> Result<bool, StoreError> {
        let (binding, owned) = self.keys(owner, session);
        let mut invocation = scripts::TOUCH_SCRIPT.prepare_invoke();
        invocation
            .key(binding)
            .key(owned)
            .arg(&owner[..])
            .arg(session)
            .arg(self.ttl_millis());
        Ok(self.store.invoke::<i64>(invocation).await? == 1)
    }

    /// Forget `session` of `owner` (closed).
    pub(super) async fn forget(&self, owner: &OwnerDigest, session: &str) -> Result<(), StoreError> {
        let (binding, owned) = self.keys(owner, session);
        let mut invocation = scripts::FORGET_SCRIPT.prepare_invoke();
        invocation.key(binding).key(owned).arg(&owner[..]).arg(session);
        self.store.invoke::<i64>(invocation).await.map(drop)
    }
}

#[cfg(feature = "redis")]
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
