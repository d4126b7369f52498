//! The verified-token cache.
//!
//! Every request of an MCP session carries the same bearer token, so the
//! principal built from it is remembered, keyed by the SHA-256 of the token
//! (the token itself is never stored). An entry lives until the token's `exp`
//! or the configured TTL, whichever comes first, and the cache is bounded in
//! entries and in bytes (each principal weighed by [`weight`]: a token's
//! claims take far more room as a JSON map than on the wire), in 16 shards so
//! concurrent requests rarely meet on a lock.
//! When a shard is full, expired entries are dropped first, then the least
//! recently used: an attacker with many valid tokens can only evict, never
//! inject. (A [`TtlCache`]; its module documents the rule.)

use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use sha2::{Digest, Sha256};

use serde_json::Value;

use crate::cache::{Limits, Timestamp, TtlCache};
use crate::principal::Principal;

/// The SHA-256 of a token.
pub(crate) type TokenHash = [u8; 32];

pub(crate) fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The key is already a cryptographic hash: use 8 of its bytes as is.
#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
}

/// Hashes [`TokenHash`] keys with [`PrehashedHasher`].
pub(crate) type PrehashedState = BuildHasherDefault<PrehashedHasher>;

/// What the verified-token cache holds now; from
/// [`ResourceServer::token_cache_usage`](super::ResourceServer::token_cache_usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheUsage {
    /// Principals remembered (expired ones not yet dropped included).
    pub entries: usize,
    /// Their estimated heap size in bytes, as bounded by
    /// [`TokenCacheConfig::max_bytes`](super::TokenCacheConfig::max_bytes).
    pub bytes: usize,
}

pub(crate) struct TokenCache {
    entries: TtlCache<TokenHash, Principal, PrehashedState>,
    ttl: u64,
}

impl TokenCache {
    pub(crate) fn new(limits: Limits, ttl: Duration) -> Self {
        TokenCache {
            entries: TtlCache::with_hasher(limits, PrehashedState::default()),
            ttl: ttl.as_secs(),
        }
    }

    /// The principal for this token, if it was verified and is still valid at `now`.
    pub(crate) fn get(&self, hash: &TokenHash, now: u64) -> Option<Principal> {
        self.entries.get(hash, Timestamp::from_unix_secs(now))
    }

    /// Remember a verified principal until its `exp` or the TTL.
    pub(crate) fn insert(&self, hash: TokenHash, principal: &Principal, now: u64) {
        self.insert_for(hash, principal, now, Duration::MAX);
    }

    /// Like [`insert`](Self::insert), for at most `max_ttl` (a validator with
    /// a shorter bound of its own, such as introspection).
    pub(crate) fn insert_for(&self, hash: TokenHash, principal: &Principal, now: u64, max_ttl: Duration) {
        let ttl = self.ttl.min(max_ttl.as_secs());
        let valid_until = principal.expires_at_unix().min(now.saturating_add(ttl));
        let (until, now) = (Timestamp::from_unix_secs(valid_until), Timestamp::from_unix_secs(now));
        self.entries
            .insert(hash, principal.clone(), weight(principal), until, now);
    }

    pub(crate) fn usage(&self) -> CacheUsage {
        let (entries, bytes) = self.entries.usage();
        CacheUsage { entries, bytes }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Per heap allocation: the allocator's header and rounding, roughly.
const ALLOCATION: usize = 16;
/// Per map entry: the key `String` and a B-tree slot, beyond the key's bytes.
const MAP_ENTRY: usize = std::mem::size_of::<String>() + std::mem::size_of::<Value>() + 16;

/// An estimate of the heap a principal holds, in bytes: its strings, its
/// claims (every map entry, array slot and string), and the fixed parts. It
/// errs high; it only has to grow with what a token makes the server keep.
pub(crate) fn weight(principal: &Principal) -> usize {
    let string = |s: &str| s.len() + ALLOCATION;
    let strings = |it: &mut dyn Iterator<Item = &str>| it.map(string).sum::<usize>();
    let fixed = 256 + std::mem::size_of::<TokenHash>();
    fixed
        + string(principal.subject())
        + string(principal.issuer())
        + principal.client_id().map_or(0, string)
        + principal.tenant().map_or(0, string)
        + strings(&mut principal.scopes())
        + strings(&mut principal.granted_scopes())
        + strings(&mut principal.audiences().iter().map(String::as_str))
        + strings(&mut principal.groups().iter().map(String::as_str))
        + principal
            .claims()
            .iter()
            .map(|(k, v)| MAP_ENTRY + string(k) + json_weight(v))
            .sum::<usize>()
}

/// The heap below a JSON value (its own slot is counted by its parent).
fn json_weight(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.len() + ALLOCATION,
        Value::Array(items) => {
            ALLOCATION + items.len() * std::mem::size_of::<Value>() + items.iter().map(json_weight).sum::<usize>()
        }
        Value::Object(map) => {
            ALLOCATION
                + map
                    .iter()
                    .map(|(k, v)| MAP_ENTRY + k.len() + ALLOCATION + json_weight(v))
                    .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(exp: u64) -> Principal {
        Principal::unverified("https://idp", "alice")
            .expires_at_unix(exp)
            .build()
    }

    #[test]
    fn never_past_exp_or_ttl() {
        let cache = TokenCache::new(Limits::entries(100), Duration::from_secs(60));
        let h = hash_token("t");
        cache.insert(h, &principal(1030), 1000);
        assert!(cache.get(&h, 1029).is_some());
        assert!(cache.get(&h, 1030).is_none());
        let h2 = hash_token("t2");
        cache.insert(h2, &principal(5000), 1000);
        assert!(cache.get(&h2, 1059).is_some());
        assert!(cache.get(&h2, 1060).is_none());
        // Capacity 0 turns the cache off.
        let off = TokenCache::new(Limits::entries(0), Duration::from_secs(60));
        off.insert(h, &principal(5000), 1000);
        assert!(off.get(&h, 1001).is_none());
    }

    #[test]
    fn bounded() {
        let cache = TokenCache::new(Limits::entries(32), Duration::from_secs(60));
        for i in 0..1000 {
            cache.insert(hash_token(&i.to_string()), &principal(5000), 1000);
        }
        assert!(cache.len() <= 32, "{}", cache.len());
    }

    /// Issue 10, finding 6: 500 claims of ~15 bytes each (a 7.7 KB token)
    /// used to be held in full 10 000 times over; the byte bound keeps the
    /// total below the limit whatever the entry count allows.
    #[test]
    fn bounded_in_bytes_by_what_the_claims_take_in_memory() {
        let fat = |i: usize| {
            let claims = (0..500)
                .map(|c| (format!("claim_{c:03}"), Value::String(format!("value-{c:05}"))))
                .collect();
            Principal::unverified("https://idp", format!("user-{i}"))
                .expires_at_unix(5000)
                .claims(claims)
                .build()
        };
        let one = weight(&fat(0));
        assert!(one > 500 * 80, "a 500-claim principal weighs {one} bytes");
        let limit = 4 * 1024 * 1024;
        let cache = TokenCache::new(Limits::entries(10_000).bytes(limit), Duration::from_secs(60));
        for i in 0..1000 {
            cache.insert(hash_token(&i.to_string()), &fat(i), 1000);
        }
        let held = cache.len();
        assert!(held * one <= limit, "{held} principals of {one} bytes exceed {limit}");
        assert!(held >= limit / one / 2, "the bound should still hold some: {held}");
        // The newest is cached, the oldest evicted.
        assert!(cache.get(&hash_token("999"), 1001).is_some());
        assert!(cache.get(&hash_token("0"), 1001).is_none());
    }
}
