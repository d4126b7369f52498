//! A bounded in-memory map whose entries expire.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One stored value and the instant it stops being valid.
struct Entry<V> {
    value: V,
    expires: Instant,
}

/// A map with a fixed capacity and a lifetime per entry.
///
/// Expired entries are never returned. When the map is full, inserting first
/// drops every expired entry and then, if it is still full, the entry that
/// expires soonest, so memory stays bounded whatever clients send.
pub(super) struct Store<K, V> {
    map: HashMap<K, Entry<V>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> Store<K, V> {
    /// An empty store holding at most `capacity` entries (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Store {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Inserts `value` under `key` for `ttl`, replacing any previous value.
    pub(super) fn insert(&mut self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.map.retain(|_, entry| entry.expires > now);
            if self.map.len() >= self.capacity {
                let soonest = self
                    .map
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    self.map.remove(&soonest);
                }
            }
        }
        let expires = now.checked_add(ttl).unwrap_or(now);
        self.map.insert(key, Entry { value, expires });
    }

    /// The value under `key`, unless it has expired.
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.map
            .get(key)
            .filter(|entry| entry.expires > Instant::now())
            .map(|entry| &entry.value)
    }

    /// Removes and returns the value under `key`, unless it has expired (an
    /// expired value is removed too, and `None` is returned).
    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        self.map
            .remove(key)
            .filter(|entry| entry.expires > Instant::now())
            .map(|entry| entry.value)
    }

    /// Keeps only the entries for which `keep` returns `true`.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.map.retain(|_, entry| keep(&entry.value));
    }

    /// The number of entries, expired ones included until they are purged.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_never_exceeded() {
        let mut store = Store::new(3);
        for i in 0..100 {
            store.insert(i, i, Duration::from_secs(60 + i));
        }
        assert_eq!(store.len(), 3);
        // The entries that expire soonest were evicted first.
        assert!(store.get(&99).is_some());
        assert!(store.get(&0).is_none());
    }

    #[test]
    fn expired_entries_are_not_returned() {
        let mut store = Store::new(4);
        store.insert("a", 1, Duration::ZERO);
        assert!(store.get(&"a").is_none());
        assert!(store.remove(&"a").is_none());
        store.insert("b", 2, Duration::from_secs(60));
        assert_eq!(store.remove(&"b"), Some(2));
        assert!(store.remove(&"b").is_none(), "removal is single use");
    }
}
