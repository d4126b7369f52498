//! [`TtlCache`]: a map bounded in entries and, optionally, in bytes, whose
//! entries expire at a deadline the caller computes.
//!
//! **The eviction rule**, the same for every cache of the crate: when an
//! insert finds its shard full (in entries or in bytes), entries past their
//! deadline go first, then the least recently used (read or written) until the
//! new entry fits. A flood of new keys can therefore evict, never grow the
//! map; and a key in steady use outlives a burst of one-off keys.
//!
//! **Shards.** A cache of at least 1024 entries is split into 16 shards by
//! key hash, each with its own lock and a sixteenth of the bounds, so
//! concurrent lookups rarely meet on a lock; the bounds and the LRU order then
//! hold per shard. A smaller cache is one shard: its bounds and LRU order are
//! exact.
//!
//! **Cost.** A lookup hashes the key, takes one shard lock and clones the
//! value; it allocates nothing else. An insert into a full shard scans that
//! shard (expired entries are only looked for when one may exist), which is
//! small next to the work that produced the value.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;

use super::clock::Timestamp;
use super::lock::lock;

/// How many shards a large cache has.
const SHARDS: usize = 16;
/// A cache with fewer entries than this per shard is not sharded.
const MIN_PER_SHARD: usize = 64;

/// The bounds of a [`TtlCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    entries: usize,
    bytes: usize,
}

impl Limits {
    /// At most `max` entries (0 caches nothing), with no bound in bytes.
    pub(crate) const fn entries(max: usize) -> Self {
        Limits {
            entries: max,
            bytes: usize::MAX,
        }
    }

    /// Also at most `max` bytes, counted as the weights given to
    /// [`TtlCache::insert`].
    #[cfg_attr(not(any(test, feature = "jwt")), allow(dead_code))] // the verified-token cache
    pub(crate) const fn bytes(self, max: usize) -> Self {
        Limits { bytes: max, ..self }
    }

    /// Shard `i` of `n`'s part: the bounds split so their sum is exact.
    fn part(self, i: usize, n: usize) -> Self {
        let split = |total: usize| {
            if total == usize::MAX {
                total
            } else {
                total / n + usize::from(i < total % n)
            }
        };
        Limits {
            entries: split(self.entries),
            bytes: split(self.bytes),
        }
    }
}

/// A bounded map whose entries expire; see the [module docs](self).
///
/// Values are handed out as clones: keep them cheap to clone (`Arc`-like).
pub(crate) struct TtlCache<K, V, S = RandomState> {
    shards: Box<[Mutex<Shard<K, V, S>>]>,
    hasher: S,
}

struct Shard<K, V, S> {
    map: HashMap<K, Slot<V>, S>,
    limits: Limits,
    /// The sum of the weights in `map`.
    bytes: usize,
    /// The last use stamp handed out; stamps are unique within the shard.
    tick: u64,
    /// No entry expires before this (a lower bound, not always the minimum).
    earliest: Timestamp,
}

struct Slot<V> {
    value: V,
    deadline: Timestamp,
    weight: usize,
    used: u64,
}

impl<K: Hash + Eq, V> TtlCache<K, V> {
    /// An empty cache within `limits`.
    pub(crate) fn new(limits: Limits) -> Self {
        TtlCache::with_hasher(limits, RandomState::new())
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Clone> TtlCache<K, V, S> {
    /// An empty cache within `limits`, hashing keys with `hasher`.
    pub(crate) fn with_hasher(limits: Limits, hasher: S) -> Self {
        let n = if limits.entries >= SHARDS * MIN_PER_SHARD {
            SHARDS
        } else {
            1
        };
        let shards = (0..n)
            .map(|i| {
                Mutex::new(Shard {
                    map: HashMap::with_hasher(hasher.clone()),
                    limits: limits.part(i, n),
                    bytes: 0,
                    tick: 0,
                    earliest: Timestamp::MAX,
                })
            })
            .collect();
        TtlCache { shards, hasher }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<Shard<K, V, S>> {
        if self.shards.len() == 1 {
            return &self.shards[0];
        }
        // Bits 32..36: the shard's map uses the low bits for its buckets and
        // the top seven as tags, so keys of one shard still spread there.
        let index = (self.hasher.hash_one(key) >> 32) as usize % self.shards.len();
        &self.shards[index]
    }

    /// A clone of the value for `key` if its deadline is after `now`; an
    /// entry found expired is dropped. Counts as a use.
    pub(crate) fn get<Q>(&self, key: &Q, now: Timestamp) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.update(key, now, |value, _| value.clone())
    }

    /// Call `f` with the live entry for `key`: its value and deadline, both of
    /// which it may change (the weight stays). `None` if there is no entry
    /// or it expired (then it is dropped). Counts as a use.
    #[cfg_attr(not(any(test, feature = "jwt")), allow(dead_code))] // session bindings
    pub(crate) fn update<Q, R>(&self, key: &Q, now: Timestamp, f: impl FnOnce(&mut V, &mut Timestamp) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = lock(self.shard(key));
        let shard = &mut *shard;
        let slot = shard.map.get_mut(key)?;
        if slot.deadline <= now {
            shard.remove(key);
            return None;
        }
        shard.tick += 1;
        slot.used = shard.tick;
        let result = f(&mut slot.value, &mut slot.deadline);
        shard.earliest = shard.earliest.min(slot.deadline);
        Some(result)
    }

    /// Keep `value` for `key` until `deadline`, replacing any previous value.
    /// `weight` is what the entry counts against a bound in bytes (give 0
    /// when the cache has none). Makes room by the eviction rule of the
    /// [module docs](self).
    ///
    /// Returns whether the value is kept. It is not, and any previous value
    /// for `key` is dropped too, when `deadline` is not after `now`, the
    /// cache holds no entries, or `weight` exceeds a shard's byte bound.
    pub(crate) fn insert(&self, key: K, value: V, weight: usize, deadline: Timestamp, now: Timestamp) -> bool {
        let mut shard = lock(self.shard(&key));
        shard.remove(&key);
        if deadline <= now || shard.limits.entries == 0 || weight > shard.limits.bytes {
            return false;
        }
        shard.make_room(weight, now);
        shard.put(key, value, weight, deadline);
        true
    }

    /// Like [`insert`](Self::insert), but never evicts a live entry: only
    /// expired ones make room. Returns `false` (keeping nothing, and leaving
    /// any previous value for `key` in place) when the shard is still full.
    /// For tables whose entries belong to different callers, where evicting
    /// one caller's entry for another's would be a denial of service.
    #[cfg_attr(not(any(test, feature = "jwt")), allow(dead_code))] // session bindings
    pub(crate) fn insert_if_room(&self, key: K, value: V, weight: usize, deadline: Timestamp, now: Timestamp) -> bool {
        let mut shard = lock(self.shard(&key));
        if deadline <= now || weight > shard.limits.bytes {
            return false;
        }
        let full = |shard: &Shard<K, V, S>| {
            let previous = shard.map.get(&key).map(|slot| slot.weight);
            let replaced = usize::from(previous.is_some());
            let previous = previous.unwrap_or(0);
            shard.map.len() - replaced >= shard.limits.entries
                || (shard.bytes - previous).saturating_add(weight) > shard.limits.bytes
        };
        if full(&shard) {
            shard.drop_expired(now);
            if full(&shard) {
                return false;
            }
        }
        shard.remove(&key);
        shard.put(key, value, weight, deadline);
        true
    }

    /// The live value for `key`, its deadline moved to `deadline`; or, when
    /// there is none, `make()` kept until `deadline` (weight 0) and returned.
    /// One lock for both, so two callers racing on a new key get the same
    /// value. Counts as a use. The value is returned even when the cache
    /// holds no entries.
    pub(crate) fn get_or_insert_with(&self, key: K, deadline: Timestamp, now: Timestamp, make: impl FnOnce() -> V) -> V
    where
        V: Clone,
    {
        let mut shard = lock(self.shard(&key));
        let shard = &mut *shard;
        shard.tick += 1;
        let used = shard.tick;
        if let Some(slot) = shard.map.get_mut(&key)
            && slot.deadline > now
        {
            slot.used = used;
            slot.deadline = deadline;
            shard.earliest = shard.earliest.min(deadline);
            return slot.value.clone();
        }
        shard.remove(&key);
        let value = make();
        if deadline <= now || shard.limits.entries == 0 {
            return value;
        }
        shard.make_room(0, now);
        shard.earliest = shard.earliest.min(deadline);
        shard.map.insert(
            key,
            Slot {
                value: value.clone(),
                deadline,
                weight: 0,
                used,
            },
        );
        value
    }

    /// Drop the entry for `key`, returning its value (expired or not).
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        lock(self.shard(key)).remove(key)
    }

    /// Keep only the entries for which `keep` is true.
    #[cfg_attr(not(test), allow(dead_code))] // part of the map's vocabulary; no cache needs it yet
    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            let mut freed = 0;
            shard.map.retain(|key, slot| {
                let kept = keep(key, &slot.value);
                if !kept {
                    freed += slot.weight;
                }
                kept
            });
            shard.bytes -= freed;
        }
    }

    /// Drop every entry.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.map.clear();
            shard.bytes = 0;
            shard.earliest = Timestamp::MAX;
        }
    }

    /// How many entries are held, counting expired ones not yet dropped.
    #[cfg_attr(not(test), allow(dead_code))] // tests of the caches built on it
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).map.len()).sum()
    }

    /// How many entries are held and the sum of their weights.
    #[cfg_attr(not(any(test, feature = "jwt")), allow(dead_code))] // the verified-token cache
    pub(crate) fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(entries, bytes), shard| {
            let shard = lock(shard);
            (entries + shard.map.len(), bytes + shard.bytes)
        })
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> Shard<K, V, S> {
    /// Keep `value` for `key` until `deadline`, as the most recently used
    /// entry; room has been made.
    fn put(&mut self, key: K, value: V, weight: usize, deadline: Timestamp) {
        self.tick += 1;
        self.bytes += weight;
        self.earliest = self.earliest.min(deadline);
        let used = self.tick;
        self.map.insert(
            key,
            Slot {
                value,
                deadline,
                weight,
                used,
            },
        );
    }

    fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.map.remove(key)?;
        self.bytes -= slot.weight;
        Some(slot.value)
    }

    fn is_full(&self, weight: usize) -> bool {
        self.map.len() >= self.limits.entries || self.bytes.saturating_add(weight) > self.limits.bytes
    }

    /// Drop the entries past their deadline (a scan, only when one may be).
    fn drop_expired(&mut self, now: Timestamp) {
        if self.earliest > now {
            return;
        }
        let mut earliest = Timestamp::MAX;
        let mut freed = 0;
        self.map.retain(|_, slot| {
            if slot.deadline > now {
                earliest = earliest.min(slot.deadline);
                true
            } else {
                freed += slot.weight;
                false
            }
        });
        self.bytes -= freed;
        self.earliest = earliest;
    }

    /// Evict until an entry of `weight` fits: expired entries first, then
    /// the least recently used.
    fn make_room(&mut self, weight: usize, now: Timestamp) {
        if !self.is_full(weight) {
            return;
        }
        self.drop_expired(now);
        while self.is_full(weight) {
            let Some(oldest) = self.map.values().map(|slot| slot.used).min() else {
                break;
            };
            // Use stamps are unique in a shard: this drops exactly one entry.
            let mut freed = 0;
            self.map.retain(|_, slot| {
                if slot.used == oldest {
                    freed = slot.weight;
                    false
                } else {
                    true
                }
            });
            self.bytes -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(secs)
    }

    #[test]
    fn a_value_is_served_until_its_deadline_and_not_at_it() {
        let cache = TtlCache::new(Limits::entries(10));
        assert!(cache.insert("k", 1, 0, at(1030), at(1000)));
        assert_eq!(cache.get("k", at(1029)), Some(1));
        assert_eq!(cache.get("k", at(1030)), None);
        // Found expired: dropped.
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn insert_if_room_never_evicts_a_live_entry() {
        let cache = TtlCache::new(Limits::entries(2));
        assert!(cache.insert_if_room("a", 1, 0, at(2000), at(1000)));
        assert!(cache.insert_if_room("b", 2, 0, at(1500), at(1000)));
        assert!(
            !cache.insert_if_room("c", 3, 0, at(2000), at(1000)),
            "full of live entries"
        );
        assert_eq!(cache.get("a", at(1000)), Some(1));
        assert_eq!(cache.get("b", at(1000)), Some(2));
        assert!(
            cache.insert_if_room("a", 4, 0, at(2000), at(1000)),
            "replacing needs no room"
        );
        assert_eq!(cache.get("a", at(1000)), Some(4));
        // Once "b" expired, it makes room.
        assert!(cache.insert_if_room("c", 3, 0, at(2000), at(1600)));
        assert_eq!(cache.get("c", at(1600)), Some(3));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn an_insert_that_is_refused_also_drops_the_previous_value() {
        let cache = TtlCache::new(Limits::entries(10).bytes(100));
        cache.insert("k", 1, 0, at(2000), at(1000));
        assert!(!cache.insert("k", 2, 0, at(1000), at(1000)), "deadline not after now");
        assert_eq!(cache.get("k", at(1000)), None);
        cache.insert("k", 1, 0, at(2000), at(1000));
        assert!(!cache.insert("k", 2, 101, at(2000), at(1000)), "heavier than the bound");
        assert_eq!(cache.get("k", at(1000)), None);
    }

    #[test]
    fn zero_entries_caches_nothing() {
        let cache = TtlCache::new(Limits::entries(0));
        assert!(!cache.insert(1, 1, 0, at(2000), at(1000)));
        assert_eq!(cache.get(&1, at(1000)), None);
    }

    #[test]
    fn the_entry_bound_holds_small_and_sharded() {
        for max in [1, 3, 1000, 5000] {
            let cache = TtlCache::new(Limits::entries(max));
            for i in 0..3 * max {
                cache.insert(i, i, 0, at(2000), at(1000));
            }
            assert!(cache.len() <= max, "{} > {max}", cache.len());
        }
        // Unsharded, the bound is exact.
        let cache = TtlCache::new(Limits::entries(3));
        for i in 0..10 {
            cache.insert(i, i, 0, at(2000), at(1000));
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn the_byte_bound_holds_and_replacing_does_not_count_twice() {
        let cache = TtlCache::new(Limits::entries(100).bytes(100));
        for i in 0..10 {
            cache.insert(i, i, 30, at(2000), at(1000));
        }
        assert_eq!(cache.len(), 3, "3 x 30 bytes fit in 100");
        assert_eq!(cache.get(&9, at(1000)), Some(9));
        for _ in 0..10 {
            cache.insert(9, 9, 30, at(2000), at(1000));
        }
        assert_eq!(cache.len(), 3);
        // One heavy entry pushes out as many as it needs.
        cache.insert(100, 100, 90, at(2000), at(1000));
        assert_eq!(cache.len(), 1);
        cache.remove(&100);
        cache.insert(1, 1, 100, at(2000), at(1000));
        assert_eq!(cache.get(&1, at(1000)), Some(1));
    }

    #[test]
    fn expired_entries_are_evicted_before_the_least_recently_used() {
        let cache = TtlCache::new(Limits::entries(3));
        cache.insert("old but live", 1, 0, at(5000), at(1000));
        cache.insert("expires", 2, 0, at(1010), at(1000));
        cache.insert("recent", 3, 0, at(5000), at(1000));
        cache.insert("new", 4, 0, at(5000), at(1020));
        assert_eq!(cache.get("old but live", at(1020)), Some(1));
        assert_eq!(cache.get("recent", at(1020)), Some(3));
        assert_eq!(cache.get("new", at(1020)), Some(4));
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted_and_a_read_counts_as_use() {
        let cache = TtlCache::new(Limits::entries(3));
        for key in ["a", "b", "c"] {
            cache.insert(key, key, 0, at(5000), at(1000));
        }
        // "a" is the oldest insert, but read since: "b" goes.
        assert!(cache.get("a", at(1000)).is_some());
        cache.insert("d", "d", 0, at(5000), at(1000));
        assert_eq!(cache.get("b", at(1000)), None);
        for key in ["a", "c", "d"] {
            assert!(cache.get(key, at(1000)).is_some(), "{key}");
        }
        // Now "a" is the least recently used.
        cache.insert("e", "e", 0, at(5000), at(1000));
        assert_eq!(cache.get("a", at(1000)), None);
    }

    #[test]
    fn get_or_insert_with_makes_once_and_stays_bounded() {
        let cache = TtlCache::new(Limits::entries(2));
        assert_eq!(cache.get_or_insert_with("a", at(1010), at(1000), || 1), 1);
        // A live entry is returned (and its deadline moved), not remade.
        assert_eq!(cache.get_or_insert_with("a", at(1020), at(1005), || 2), 1);
        assert_eq!(cache.get("a", at(1015)), Some(1));
        // An expired one is remade.
        assert_eq!(cache.get_or_insert_with("a", at(1030), at(1020), || 3), 3);
        cache.get_or_insert_with("b", at(1030), at(1020), || 4);
        cache.get_or_insert_with("c", at(1030), at(1020), || 5);
        assert_eq!(cache.len(), 2);
        let none = TtlCache::new(Limits::entries(0));
        assert_eq!(none.get_or_insert_with("a", at(1010), at(1000), || 6), 6);
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn update_changes_value_and_deadline_of_a_live_entry_only() {
        let cache = TtlCache::new(Limits::entries(10));
        cache.insert("k", 1, 0, at(1010), at(1000));
        let extended = cache.update("k", at(1005), |value, deadline| {
            *value += 1;
            *deadline = at(1005).saturating_add(Duration::from_secs(10));
        });
        assert_eq!(extended, Some(()));
        assert_eq!(cache.get("k", at(1014)), Some(2));
        assert_eq!(cache.update("k", at(1015), |_, _| ()), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn large_caches_are_sharded_and_their_bounds_sum_exactly() {
        let small = TtlCache::<u32, u32>::new(Limits::entries(SHARDS * MIN_PER_SHARD - 1));
        assert_eq!(small.shards.len(), 1);
        let large = TtlCache::<u32, u32>::new(Limits::entries(10_001).bytes(1_000_007));
        assert_eq!(large.shards.len(), SHARDS);
        let parts: Vec<Limits> = large.shards.iter().map(|s| lock(s).limits).collect();
        assert_eq!(parts.iter().map(|l| l.entries).sum::<usize>(), 10_001);
        assert_eq!(parts.iter().map(|l| l.bytes).sum::<usize>(), 1_000_007);
        // Keys spread over every shard.
        for i in 0..10_000 {
            large.insert(i, i, 0, at(2000), at(1000));
        }
        for shard in large.shards.iter() {
            let len = lock(shard).map.len();
            assert!((400..=700).contains(&len), "{len}");
        }
    }

    #[test]
    fn remove_retain_and_clear_keep_the_byte_count() {
        let cache = TtlCache::new(Limits::entries(10).bytes(40));
        for i in 0..4 {
            cache.insert(i, i, 10, at(2000), at(1000));
        }
        assert_eq!(cache.remove(&0), Some(0));
        cache.retain(|key, _| *key != 1);
        assert_eq!(cache.len(), 2);
        // 20 bytes free again: two more fit without evicting 2 and 3.
        cache.insert(10, 10, 10, at(2000), at(1000));
        cache.insert(11, 11, 10, at(2000), at(1000));
        assert_eq!(cache.len(), 4);
        cache.clear();
        assert_eq!(cache.len(), 0);
        cache.insert(20, 20, 40, at(2000), at(1000));
        assert_eq!(cache.get(&20, at(1000)), Some(20));
    }
}
