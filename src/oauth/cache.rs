//! The verified-token cache.
//!
//! Every request of an MCP session carries the same bearer token, so the
//! principal built from it is remembered, keyed by the SHA-256 of the token
//! (the token itself is never stored). An entry lives until the token's `exp`
//! or the configured TTL, whichever comes first, and the cache holds a bounded
//! number of entries in 16 shards so concurrent requests rarely meet on a lock.
//! When a shard is full, expired entries are dropped first, then an arbitrary
//! one: an attacker with many valid tokens can only evict, never inject.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::principal::Principal;

const SHARDS: usize = 16;

/// The SHA-256 of a token.
pub(crate) type TokenHash = [u8; 32];

pub(crate) fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The key is already a cryptographic hash: use 8 of its bytes as is.
#[derive(Default)]
struct PrehashedHasher(u64);

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

struct Entry {
    principal: Principal,
    valid_until: u64,
}

type Shard = HashMap<TokenHash, Entry, BuildHasherDefault<PrehashedHasher>>;

pub(crate) struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    ttl: u64,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            ttl: ttl.as_secs(),
        }
    }

    fn shard(&self, hash: &TokenHash) -> &Mutex<Shard> {
        &self.shards[hash[31] as usize % SHARDS]
    }

    /// The principal for this token, if it was verified and is still valid at `now`.
    pub(crate) fn get(&self, hash: &TokenHash, now: u64) -> Option<Principal> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(hash).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get(hash) {
            Some(entry) if entry.valid_until > now => Some(entry.principal.clone()),
            Some(_) => {
                shard.remove(hash);
                None
            }
            None => None,
        }
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
        if self.per_shard == 0 || valid_until <= now {
            return;
        }
        let mut shard = self.shard(&hash).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            shard.retain(|_, e| e.valid_until > now);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(
            hash,
            Entry {
                principal: principal.clone(),
                valid_until,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
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
    }

    #[test]
    fn bounded() {
        let cache = TokenCache::new(32, Duration::from_secs(60));
        for i in 0..1000 {
            cache.insert(hash_token(&i.to_string()), &principal(5000), 1000);
        }
        assert!(cache.len() <= 32, "{}", cache.len());
    }

    #[test]
    fn zero_capacity_disables() {
        let cache = TokenCache::new(0, Duration::from_secs(60));
        let h = hash_token("t");
        cache.insert(h, &principal(5000), 1000);
        assert!(cache.get(&h, 1001).is_none());
    }
}
