//! [`StateHandles`]: unguessable handles for server-side state, bound to the
//! caller that minted them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::HandleError;
use super::binding::owner_key;
use crate::Principal;
use crate::cache::{OwnedTable, OwnerFull, Refused, Timestamp};

/// The length of a handle: 32 random bytes in base64url without padding.
const HANDLE_LEN: usize = 43;

/// Server-side state for "stateful tools": one call mints a handle for a
/// value, later calls pass the handle back; see the [module docs](super).
///
/// A handle is 256 random bits, so it cannot be guessed, and it is recorded
/// with its owner (issuer, kind, subject and client id of the caller that
/// minted it). Only the owner gets the value back: another caller presenting
/// the handle gets [`HandleError::Unknown`], exactly as for a handle that
/// never existed, and the owner's entry is not touched.
///
/// Bounded: [`per_principal`](Self::per_principal) handles per caller (a
/// caller minting more loses its own least recently used handle) and
/// [`max_handles`](Self::max_handles) in total (then minting fails with
/// [`HandleError::Full`] until handles expire or are removed; no caller's
/// handle is evicted for another's). A handle unused for
/// [`idle_ttl`](Self::idle_ttl) expires.
///
/// Cheap to clone: clones share the table. Handles live in this process:
/// they do not survive a restart nor reach another replica.
pub struct StateHandles<T> {
    table: Arc<OwnedTable<[u8; 32], [u8; 32], T>>,
    per_principal: usize,
    max_handles: usize,
    idle_ttl: Duration,
}

impl<T> Clone for StateHandles<T> {
    fn clone(&self) -> Self {
        StateHandles {
            table: Arc::clone(&self.table),
            per_principal: self.per_principal,
            max_handles: self.max_handles,
            idle_ttl: self.idle_ttl,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> StateHandles<T> {
    /// The default bound per caller.
    pub const DEFAULT_PER_PRINCIPAL: usize = 64;
    /// The default total bound.
    pub const DEFAULT_MAX_HANDLES: usize = 100_000;
    /// The default idle time to live.
    pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(3600);

    /// An empty table with the default bounds.
    pub fn new() -> Self {
        StateHandles {
            table: Arc::new(OwnedTable::new(Self::DEFAULT_MAX_HANDLES, Self::DEFAULT_PER_PRINCIPAL)),
            per_principal: Self::DEFAULT_PER_PRINCIPAL,
            max_handles: Self::DEFAULT_MAX_HANDLES,
            idle_ttl: Self::DEFAULT_IDLE_TTL,
        }
    }

    /// How many live handles one caller may hold; minting one more drops
    /// that caller's least recently used handle. Set it before cloning: it
    /// starts a new, empty table. Defaults to `64`.
    pub fn per_principal(mut self, max: usize) -> Self {
        self.per_principal = max;
        self.table = Arc::new(OwnedTable::new(self.max_handles, max));
        self
    }

    /// How many live handles all callers together may hold; minting fails
    /// with [`HandleError::Full`] past it. Set it before cloning: it starts a
    /// new, empty table. Defaults to `100_000`.
    pub fn max_handles(mut self, max: usize) -> Self {
        self.max_handles = max;
        self.table = Arc::new(OwnedTable::new(max, self.per_principal));
        self
    }

    /// How long a handle lives after its last use (mint or
    /// [`get`](Self::get)). Defaults to `1 h`.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Keep `value` for `owner` under a new handle, and return the handle.
    pub fn mint(&self, owner: &Principal, value: T) -> Result<String, HandleError> {
        self.mint_at(owner, value, Timestamp::now())
    }

    pub(super) fn mint_at(&self, owner: &Principal, value: T, now: Timestamp) -> Result<String, HandleError> {
        let mut handle = [0u8; 32];
        aws_lc_rs::rand::fill(&mut handle).map_err(|_| HandleError::Unavailable)?;
        let deadline = now.saturating_add(self.idle_ttl);
        match self.table.insert(
            &owner_key(owner),
            handle,
            value,
            deadline,
            now,
            OwnerFull::EvictOwnLeastRecentlyUsed,
        ) {
            Ok(()) => Ok(URL_SAFE_NO_PAD.encode(handle)),
            // 256 random bits do not collide; if the generator repeated
            // itself, nothing is kept rather than a value overwritten.
            Err(Refused::Present) => Err(HandleError::Unavailable),
            Err(Refused::Full) => Err(HandleError::Full),
        }
    }

    /// A clone of `owner`'s value under `handle`, and the handle's idle time
    /// starts again. [`HandleError::Unknown`] when there is none: never
    /// minted, expired, removed, or minted by another caller.
    pub fn get(&self, owner: &Principal, handle: &str) -> Result<T, HandleError> {
        self.get_at(owner, handle, Timestamp::now())
    }

    pub(super) fn get_at(&self, owner: &Principal, handle: &str, now: Timestamp) -> Result<T, HandleError> {
        let handle = decode(handle)?;
        self.table
            .get(&owner_key(owner), &handle, now, Some(now.saturating_add(self.idle_ttl)))
            .ok_or(HandleError::Unknown)
    }

    /// Drop `owner`'s handle and return its value; [`HandleError::Unknown`]
    /// as for [`get`](Self::get).
    pub fn remove(&self, owner: &Principal, handle: &str) -> Result<T, HandleError> {
        self.remove_at(owner, handle, Timestamp::now())
    }

    pub(super) fn remove_at(&self, owner: &Principal, handle: &str, now: Timestamp) -> Result<T, HandleError> {
        let handle = decode(handle)?;
        self.table
            .remove(&owner_key(owner), &handle, now)
            .ok_or(HandleError::Unknown)
    }
}

impl<T: Clone + Send + Sync + 'static> Default for StateHandles<T> {
    fn default() -> Self {
        StateHandles::new()
    }
}

impl<T> std::fmt::Debug for StateHandles<T> {
    // Handles are bearer-like values: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHandles")
            .field("handles", &self.table.len())
            .field("per_principal", &self.per_principal)
            .field("max_handles", &self.max_handles)
            .field("idle_ttl", &self.idle_ttl)
            .finish()
    }
}

/// The handle's bytes; any string that is not a handle this table could
/// have minted is [`HandleError::Unknown`] (its length is checked first).
fn decode(handle: &str) -> Result<[u8; 32], HandleError> {
    if handle.len() != HANDLE_LEN {
        return Err(HandleError::Unknown);
    }
    let bytes = URL_SAFE_NO_PAD.decode(handle).map_err(|_| HandleError::Unknown)?;
    bytes.try_into().map_err(|_| HandleError::Unknown)
}
