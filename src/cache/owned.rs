//! [`OwnedTable`]: entries that belong to an owner (a caller), bounded per
//! owner and in total, expiring at a deadline, where one owner's entries are
//! never evicted to make room for another's.
//!
//! [`TtlCache`](super::TtlCache) is a cache: when full it evicts the least
//! recently used entry, whoever it belongs to, and its bounds are per shard.
//! That is right for verified tokens (a miss costs a re-validation) and wrong
//! for tables whose entries are promises to a caller: a replay set that
//! forgot an entry would let a one-time value be used twice, and a handle
//! table that dropped Alice's handle to make room for Mallory's would let
//! Mallory break Alice's work. So this table
//!
//! - keeps every owner within its own share: when an owner's share is full,
//!   its own expired entries go first, then either its own least recently
//!   used entry ([`OwnerFull::EvictOwnLeastRecentlyUsed`]) or nothing
//!   ([`OwnerFull::Refuse`]);
//! - keeps the total bound exact: when the table is full, expired entries
//!   (anyone's: they are dead) make room, else the insert is refused;
//! - inserts only a key that is not there yet, in the same lock as the check
//!   (a replay set needs "first use" to be one step).
//!
//! One lock for the table, held for a map operation only. Each owner's
//! entries are indexed by deadline, so expired entries are dropped from the
//! front, each once (an insert costs O(log n) however full the share is;
//! it never scans a share of live entries); an insert into a full table
//! looks at the other owners only when one of their entries may be dead.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

use super::clock::Timestamp;
use super::lock::lock;

/// What an insert does when the owner's share is full of live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnerFull {
    /// Drop the owner's own least recently used entry.
    EvictOwnLeastRecentlyUsed,
    /// Refuse the insert.
    Refuse,
}

/// Why an insert kept nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The owner already has a live entry under this key.
    Present,
    /// The owner's share (with [`OwnerFull::Refuse`]) or the table is full of
    /// live entries, or the deadline is not after now.
    Full,
}

/// A table of entries bounded per owner and in total; see the
/// [module docs](self).
pub(crate) struct OwnedTable<O, K, V> {
    inner: Mutex<Inner<O, K, V>>,
    total: usize,
    per_owner: usize,
}

struct Inner<O, K, V> {
    owners: HashMap<O, Share<K, V>>,
    /// Entries in all owners' shares.
    len: usize,
    /// The last stamp handed out (ids and uses); stamps are unique in the table.
    tick: u64,
    /// No entry expires before this (a lower bound, not always the minimum).
    earliest: Timestamp,
}

/// One owner's entries, and the same entries by deadline.
struct Share<K, V> {
    slots: HashMap<K, Slot<V>>,
    /// `(deadline, id)` of every slot: the first expires first.
    expiry: BTreeMap<(Timestamp, u64), K>,
}

impl<K, V> Default for Share<K, V> {
    fn default() -> Self {
        Share {
            slots: HashMap::new(),
            expiry: BTreeMap::new(),
        }
    }
}

struct Slot<V> {
    value: V,
    deadline: Timestamp,
    /// Fixed at insert: the slot's place in `expiry`.
    id: u64,
    /// The last use (for [`OwnerFull::EvictOwnLeastRecentlyUsed`]).
    used: u64,
}

impl<K: Hash + Eq + Clone, V> Share<K, V> {
    /// Drop every entry whose deadline is at or before `now`; how many.
    fn drop_expired(&mut self, now: Timestamp) -> usize {
        let mut dropped = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.slots.remove(&key);
            dropped += 1;
        }
        dropped
    }

    /// Remove the slot under `key` (and its place by deadline).
    fn take(&mut self, key: &K) -> Option<Slot<V>> {
        let slot = self.slots.remove(key)?;
        self.expiry.remove(&(slot.deadline, slot.id));
        Some(slot)
    }

    /// The deadline of the first entry to expire.
    fn earliest(&self) -> Option<Timestamp> {
        self.expiry.keys().next().map(|(deadline, _)| *deadline)
    }
}

impl<O: Hash + Eq + Clone, K: Hash + Eq + Clone, V> OwnedTable<O, K, V> {
    /// An empty table of at most `total` entries, at most `per_owner` of them
    /// for one owner.
    pub(crate) fn new(total: usize, per_owner: usize) -> Self {
        OwnedTable {
            inner: Mutex::new(Inner {
                owners: HashMap::new(),
                len: 0,
                tick: 0,
                earliest: Timestamp::MAX,
            }),
            total,
            per_owner,
        }
    }

    /// Keep `value` under `owner` and `key` until `deadline`, unless the owner
    /// already has a live entry for `key`. Makes room by the rules of the
    /// [module docs](self).
    pub(crate) fn insert(
        &self,
        owner: &O,
        key: K,
        value: V,
        deadline: Timestamp,
        now: Timestamp,
        when_full: OwnerFull,
    ) -> Result<(), Refused> {
        if deadline <= now || self.per_owner == 0 || self.total == 0 {
            return Err(Refused::Full);
        }
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let share = inner.owners.entry(owner.clone()).or_default();
        // The owner's own expired entries go first (from the front of its index).
        inner.len -= share.drop_expired(now);
        let outcome = if share.slots.contains_key(&key) {
            Err(Refused::Present)
        } else if share.slots.len() >= self.per_owner {
            match when_full {
                OwnerFull::Refuse => Err(Refused::Full),
                OwnerFull::EvictOwnLeastRecentlyUsed => {
                    let oldest = share
                        .slots
                        .iter()
                        .min_by_key(|(_, slot)| slot.used)
                        .map(|(key, _)| key.clone());
                    if let Some(oldest) = oldest {
                        share.take(&oldest);
                        inner.len -= 1;
                    }
                    Ok(())
                }
            }
        } else {
            Ok(())
        };
        let outcome = outcome.and_then(|()| {
            if inner.len < self.total {
                return Ok(());
            }
            // Full: only dead entries (anyone's) may make room; the owners
            // are looked at only when one of their entries may be dead.
            if inner.earliest <= now {
                let mut earliest = Timestamp::MAX;
                for share in inner.owners.values_mut() {
                    inner.len -= share.drop_expired(now);
                    earliest = earliest.min(share.earliest().unwrap_or(Timestamp::MAX));
                }
                inner.earliest = earliest;
            }
            if inner.len < self.total {
                Ok(())
            } else {
                Err(Refused::Full)
            }
        });
        if outcome.is_ok() {
            inner.tick += 1;
            let id = inner.tick;
            inner.len += 1;
            inner.earliest = inner.earliest.min(deadline);
            let share = inner.owners.entry(owner.clone()).or_default();
            share.expiry.insert((deadline, id), key.clone());
            share.slots.insert(
                key,
                Slot {
                    value,
                    deadline,
                    id,
                    used: id,
                },
            );
        }
        inner.owners.retain(|_, share| !share.slots.is_empty());
        outcome
    }

    /// A clone of `owner`'s live value for `key`, counted as a use; its
    /// deadline moves to `extend_to` when given. An entry found expired is
    /// dropped. Another owner's entry under the same key is not looked at.
    pub(crate) fn get(&self, owner: &O, key: &K, now: Timestamp, extend_to: Option<Timestamp>) -> Option<V>
    where
        V: Clone,
    {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let share = inner.owners.get_mut(owner)?;
        let slot = share.slots.get(key)?;
        if slot.deadline <= now {
            share.take(key);
            inner.len -= 1;
            if share.slots.is_empty() {
                inner.owners.remove(owner);
            }
            return None;
        }
        inner.tick += 1;
        let used = inner.tick;
        let (old, id) = (slot.deadline, slot.id);
        if let Some(deadline) = extend_to {
            share.expiry.remove(&(old, id));
            share.expiry.insert((deadline, id), key.clone());
            inner.earliest = inner.earliest.min(deadline);
        }
        let slot = share.slots.get_mut(key)?;
        slot.used = used;
        if let Some(deadline) = extend_to {
            slot.deadline = deadline;
        }
        Some(slot.value.clone())
    }

    /// Drop `owner`'s entry for `key`, returning its value if it was live.
    pub(crate) fn remove(&self, owner: &O, key: &K, now: Timestamp) -> Option<V> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let share = inner.owners.get_mut(owner)?;
        let slot = share.take(key)?;
        inner.len -= 1;
        if share.slots.is_empty() {
            inner.owners.remove(owner);
        }
        (slot.deadline > now).then_some(slot.value)
    }

    /// How many entries are held, counting expired ones not yet dropped.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(secs)
    }

    #[test]
    fn a_key_is_inserted_once_per_owner_and_owners_do_not_see_each_other() {
        let table = OwnedTable::new(10, 10);
        assert_eq!(
            table.insert(&"a", 1, "x", at(2000), at(1000), OwnerFull::Refuse),
            Ok(())
        );
        assert_eq!(
            table.insert(&"a", 1, "y", at(2000), at(1000), OwnerFull::Refuse),
            Err(Refused::Present)
        );
        assert_eq!(table.get(&"b", &1, at(1000), None), None);
        assert_eq!(table.remove(&"b", &1, at(1000)), None);
        assert_eq!(table.get(&"a", &1, at(1000), None), Some("x"));
        // Expired, the key may be used again.
        assert_eq!(
            table.insert(&"a", 1, "z", at(3000), at(2000), OwnerFull::Refuse),
            Ok(())
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_full_share_refuses_or_evicts_only_its_own_least_recently_used() {
        let table = OwnedTable::new(100, 2);
        table.insert(&"a", 1, 1, at(2000), at(1000), OwnerFull::Refuse).unwrap();
        table.insert(&"a", 2, 2, at(2000), at(1000), OwnerFull::Refuse).unwrap();
        table
            .insert(&"b", 1, 10, at(2000), at(1000), OwnerFull::Refuse)
            .unwrap();
        assert_eq!(
            table.insert(&"a", 3, 3, at(2000), at(1000), OwnerFull::Refuse),
            Err(Refused::Full)
        );
        // 1 is read: 2 is the least recently used.
        table.get(&"a", &1, at(1000), None);
        table
            .insert(&"a", 3, 3, at(2000), at(1000), OwnerFull::EvictOwnLeastRecentlyUsed)
            .unwrap();
        assert_eq!(table.get(&"a", &2, at(1000), None), None);
        assert_eq!(table.get(&"a", &1, at(1000), None), Some(1));
        assert_eq!(table.get(&"b", &1, at(1000), None), Some(10));
        // Once expired, the share has room again.
        table.insert(&"a", 4, 4, at(3000), at(2000), OwnerFull::Refuse).unwrap();
    }

    #[test]
    fn a_full_table_drops_the_dead_and_never_the_live() {
        let table = OwnedTable::new(2, 5);
        table.insert(&"a", 1, 1, at(1500), at(1000), OwnerFull::Refuse).unwrap();
        table.insert(&"b", 1, 1, at(2000), at(1000), OwnerFull::Refuse).unwrap();
        assert_eq!(
            table.insert(&"c", 1, 1, at(2000), at(1000), OwnerFull::EvictOwnLeastRecentlyUsed),
            Err(Refused::Full)
        );
        assert_eq!(table.len(), 2);
        // "a"'s entry is dead at 1600: it makes room.
        table.insert(&"c", 1, 1, at(2000), at(1600), OwnerFull::Refuse).unwrap();
        assert_eq!(table.get(&"b", &1, at(1600), None), Some(1));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn expired_entries_leave_from_the_front_as_time_passes() {
        // A share of 50,000 live entries, renewed as they expire: every
        // insert drops only what expired (no scan of the live ones).
        let table = OwnedTable::new(100_000, 50_000);
        for i in 0..50_000u64 {
            table
                .insert(&"a", i, (), at(2000 + i), at(1000), OwnerFull::Refuse)
                .unwrap();
        }
        assert_eq!(
            table.insert(&"a", 50_000, (), at(9000), at(1000), OwnerFull::Refuse),
            Err(Refused::Full)
        );
        // At 2000 + 9, ten entries (0..=9) are dead: ten more fit, not eleven.
        for i in 0..10u64 {
            table
                .insert(&"a", 100_000 + i, (), at(9000), at(2009), OwnerFull::Refuse)
                .unwrap();
        }
        assert_eq!(
            table.insert(&"a", 200_000, (), at(9000), at(2009), OwnerFull::Refuse),
            Err(Refused::Full)
        );
        assert_eq!(table.len(), 50_000);
        // A dead key may be used again; a live one not.
        assert_eq!(table.get(&"a", &5, at(2009), None), None);
        assert_eq!(
            table.insert(&"a", 10, (), at(9000), at(2009), OwnerFull::Refuse),
            Err(Refused::Present)
        );
    }

    #[test]
    fn get_extends_the_deadline_and_drops_the_expired() {
        let table = OwnedTable::new(10, 10);
        table.insert(&"a", 1, 1, at(1010), at(1000), OwnerFull::Refuse).unwrap();
        assert_eq!(table.get(&"a", &1, at(1005), Some(at(1020))), Some(1));
        assert_eq!(table.get(&"a", &1, at(1015), None), Some(1));
        assert_eq!(table.get(&"a", &1, at(1020), None), None);
        assert_eq!(table.len(), 0);
        table.insert(&"a", 1, 1, at(1010), at(1000), OwnerFull::Refuse).unwrap();
        assert_eq!(table.remove(&"a", &1, at(1010)), None, "expired: not handed out");
        assert_eq!(table.len(), 0);
    }
}
