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
//! One lock for the table, held for a map operation only; an insert into a
//! full table scans for expired entries only when one may exist.

use std::collections::HashMap;
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
    owners: HashMap<O, HashMap<K, Slot<V>>>,
    /// Entries in all owners' maps, expired ones not yet dropped included.
    len: usize,
    /// The last use stamp handed out; stamps are unique in the table.
    tick: u64,
    /// No entry expires before this (a lower bound, not always the minimum).
    earliest: Timestamp,
}

struct Slot<V> {
    value: V,
    deadline: Timestamp,
    used: u64,
}

impl<O: Hash + Eq + Clone, K: Hash + Eq, V> OwnedTable<O, K, V> {
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
        let mut len = inner.len;
        let mut earliest = inner.earliest;
        let entries = inner.owners.entry(owner.clone()).or_default();
        // The owner's own expired entries go first (a scan of one share).
        let before = entries.len();
        entries.retain(|_, slot| slot.deadline > now);
        len -= before - entries.len();
        let outcome = if entries.contains_key(&key) {
            Err(Refused::Present)
        } else if entries.len() >= self.per_owner {
            match when_full {
                OwnerFull::Refuse => Err(Refused::Full),
                OwnerFull::EvictOwnLeastRecentlyUsed => {
                    let oldest = entries
                        .iter()
                        .min_by_key(|(_, slot)| slot.used)
                        .map(|(_, slot)| slot.used);
                    // Use stamps are unique: this drops exactly one entry.
                    entries.retain(|_, slot| Some(slot.used) != oldest);
                    len -= 1;
                    Ok(())
                }
            }
        } else {
            Ok(())
        };
        let outcome = outcome.and_then(|()| {
            if len < self.total {
                return Ok(());
            }
            // Full: only dead entries (anyone's) may make room.
            if earliest <= now {
                let mut new_earliest = Timestamp::MAX;
                for entries in inner.owners.values_mut() {
                    let before = entries.len();
                    entries.retain(|_, slot| {
                        let live = slot.deadline > now;
                        if live {
                            new_earliest = new_earliest.min(slot.deadline);
                        }
                        live
                    });
                    len -= before - entries.len();
                }
                inner.owners.retain(|_, entries| !entries.is_empty());
                earliest = new_earliest;
            }
            if len < self.total { Ok(()) } else { Err(Refused::Full) }
        });
        if outcome.is_ok() {
            inner.tick += 1;
            let used = inner.tick;
            earliest = earliest.min(deadline);
            len += 1;
            inner
                .owners
                .entry(owner.clone())
                .or_default()
                .insert(key, Slot { value, deadline, used });
        } else if inner.owners.get(owner).is_some_and(HashMap::is_empty) {
            inner.owners.remove(owner);
        }
        inner.len = len;
        inner.earliest = earliest;
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
        let entries = inner.owners.get_mut(owner)?;
        let slot = entries.get_mut(key)?;
        if slot.deadline <= now {
            entries.remove(key);
            inner.len -= 1;
            if entries.is_empty() {
                inner.owners.remove(owner);
            }
            return None;
        }
        inner.tick += 1;
        slot.used = inner.tick;
        if let Some(deadline) = extend_to {
            slot.deadline = deadline;
            inner.earliest = inner.earliest.min(deadline);
        }
        Some(slot.value.clone())
    }

    /// Drop `owner`'s entry for `key`, returning its value if it was live.
    pub(crate) fn remove(&self, owner: &O, key: &K, now: Timestamp) -> Option<V> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let entries = inner.owners.get_mut(owner)?;
        let slot = entries.remove(key)?;
        inner.len -= 1;
        if entries.is_empty() {
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
