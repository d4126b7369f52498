//! The one cache module: every bounded, expiring map and every single-flight
//! in the crate is built from these pieces.
//!
//! | file | concept |
//! |---|---|
//! | `lock` | [`lock`], [`read`], [`write`]: poison-tolerant locking, and why that is sound |
//! | `clock` | [`Timestamp`]: the one clock every deadline is expressed in |
//! | `ttl` | [`TtlCache`]: a sharded map bounded in entries and bytes whose entries expire |
//! | `flight` | [`SingleFlight`]: one computation in flight per key, others wait for it |
//! | `owned` | `OwnedTable`: entries bounded per owner and in total, never evicted for another owner |
//!
//! This is a leaf: it imports nothing else of this crate, so any module may
//! use it. Locks are `std` mutexes held only for a map operation, never
//! across an `.await`.

mod clock;
mod flight;
mod lock;
#[cfg(feature = "state")]
mod owned;
mod ttl;

pub(crate) use clock::Timestamp;
pub(crate) use flight::{Flight, SingleFlight};
// `lock` serves the JWKS cache, the policy engine and the Vault store, all behind features.
#[cfg_attr(
    not(any(feature = "jwt", feature = "policy", feature = "vault")),
    allow(unused_imports)
)]
pub(crate) use lock::{lock, read, write};
#[cfg(feature = "state")]
pub(crate) use owned::{OwnedTable, OwnerFull, Refused};
pub(crate) use ttl::{Limits, TtlCache};
