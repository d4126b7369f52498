//! The verified-token cache.
//!
//! Every request of an MCP session carries the same bearer token, so the
//! principal built from it is remembered, keyed by the SHA-256 of the token
//! (the token itself is never stored). An entry lives until the token's `exp`
//! or the configured TTL, whichever comes first, and the cache holds a bounded
//! number of entries in 16 shards so concurrent requests rarely meet on a lock.
//! When a shard is full, expired entries are dropped first, then the least
//! recently used: an attacker with many valid tokens can only evict, never
//! inject. (A [`TtlCache`]; its module documents the rule.)

use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use sha2::{Digest, Sha256};

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

pub(crate) struct TokenCache {
    entries: TtlCache<TokenHash, Principal, PrehashedState>,
    ttl: u64,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        TokenCache {
            entries: TtlCache::with_hasher(Limits::entries(capacity), PrehashedState::default()),
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
        self.entries.insert(hash, principal.clone(), 0, until, now);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
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
        let cache = TokenCache::new(100, Duration::from_secs(60));
        let h = hash_token("t");
        cache.insert(h, &principal(1030), 1000);
        assert!(cache.get(&h, 1029).is_some());
        assert!(cache.get(&h, 1030).is_none());
        let h2 = hash_token("t2");
        cache.insert(h2, &principal(5000), 1000);
        assert!(cache.get(&h2, 1059).is_some());
        assert!(cache.get(&h2, 1060).is_none());
        // Capacity 0 turns the cache off.
        let off = TokenCache::new(0, Duration::from_secs(60));
        off.insert(h, &principal(5000), 1000);
        assert!(off.get(&h, 1001).is_none());
    }

    #[test]
    fn bounded() {
        let cache = TokenCache::new(32, Duration::from_secs(60));
        for i in 0..1000 {
            cache.insert(hash_token(&i.to_string()), &principal(5000), 1000);
        }
        assert!(cache.len() <= 32, "{}", cache.len());
    }
}
