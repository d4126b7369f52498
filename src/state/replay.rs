//! [`ReplaySet`]: where single-use request states are remembered, and
//! [`MemoryReplaySet`], the in-process one.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::StateError;
use crate::cache::{OwnedTable, OwnerFull, Refused, Timestamp};

/// The future a [`ReplaySet`] returns.
pub type ReplayFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StateError>> + Send + 'a>>;

/// One opening of a single-use state: whose it is, its id, and until when
/// it must be remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayEntry {
    owner: [u8; 32],
    id: [u8; 16],
    expires_at: Timestamp,
}

impl ReplayEntry {
    pub(super) fn new(owner: [u8; 32], id: [u8; 16], expires_at: Timestamp) -> Self {
        ReplayEntry { owner, id, expires_at }
    }

    /// The caller the state belongs to: SHA-256 of its issuer, kind, subject
    /// and client id. Use it to bound each caller's share.
    pub fn owner(&self) -> &[u8; 32] {
        &self.owner
    }

    /// The state's random 128-bit id, unique per sealing.
    pub fn id(&self) -> &[u8; 16] {
        &self.id
    }

    /// When the state expires; past it the state does not open anyway, so
    /// the entry can be forgotten.
    pub fn expires_at(&self) -> SystemTime {
        // A TTL of `Duration::MAX` saturates the deadline; past what a
        // `SystemTime` holds on this platform, the latest it holds will do.
        let since = Duration::from_millis(self.expires_at.millis());
        UNIX_EPOCH
            .checked_add(since)
            .unwrap_or_else(|| UNIX_EPOCH + Duration::from_secs(i32::MAX as u64))
    }
}

/// Remembers which single-use states were opened.
///
/// [`first_use`](Self::first_use) records an entry and succeeds only the
/// first time it sees the entry's owner and id; check and record are one
/// atomic step. It must be bounded (per owner and in total) and fail closed:
/// when it cannot record, it returns [`StateError::Full`] or
/// [`StateError::Unavailable`], never `Ok`, and it never forgets a live
/// entry to make room (that would let the state be used twice).
///
/// [`MemoryReplaySet`] serves one process; a fleet of replicas needs a
/// shared implementation (for example Redis `SET key 1 NX PXAT expiry`).
pub trait ReplaySet: Send + Sync + 'static {
    /// Record `entry`; [`StateError::Replayed`] if it was recorded before.
    fn first_use(&self, entry: ReplayEntry) -> ReplayFuture<'_>;
}

/// A [`ReplaySet`] in this process's memory, bounded in total and per
/// caller.
///
/// Entries are forgotten when their state expires. When a caller's share
/// is full, its own expired entries make room, else the opening fails with
/// [`StateError::Full`]; when the whole set is full, expired entries make
/// room, else the same. No caller's live entry is ever evicted.
pub struct MemoryReplaySet {
    table: OwnedTable<[u8; 32], [u8; 16], ()>,
}

impl MemoryReplaySet {
    /// The default total bound.
    pub const DEFAULT_TOTAL: usize = 100_000;
    /// The default bound per caller.
    pub const DEFAULT_PER_PRINCIPAL: usize = 1_000;

    /// A set of at most [`DEFAULT_TOTAL`](Self::DEFAULT_TOTAL) entries,
    /// [`DEFAULT_PER_PRINCIPAL`](Self::DEFAULT_PER_PRINCIPAL) per caller.
    pub fn new() -> Self {
        MemoryReplaySet::with_limits(Self::DEFAULT_TOTAL, Self::DEFAULT_PER_PRINCIPAL)
    }

    /// A set of at most `total` entries, `per_principal` of them for one
    /// caller (each a single-use state opened and not yet expired).
    pub fn with_limits(total: usize, per_principal: usize) -> Self {
        MemoryReplaySet {
            table: OwnedTable::new(total, per_principal),
        }
    }

    pub(super) fn first_use_at(&self, entry: &ReplayEntry, now: Timestamp) -> Result<(), StateError> {
        self.table
            .insert(&entry.owner, entry.id, (), entry.expires_at, now, OwnerFull::Refuse)
            .map_err(|refused| match refused {
                Refused::Present => StateError::Replayed,
                Refused::Full if entry.expires_at <= now => StateError::Expired,
                Refused::Full => StateError::Full,
            })
    }
}

impl Default for MemoryReplaySet {
    fn default() -> Self {
        MemoryReplaySet::new()
    }
}

impl std::fmt::Debug for MemoryReplaySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplaySet")
            .field("entries", &self.table.len())
            .finish()
    }
}

impl ReplaySet for MemoryReplaySet {
    fn first_use(&self, entry: ReplayEntry) -> ReplayFuture<'_> {
        let result = self.first_use_at(&entry, Timestamp::now());
        Box::pin(std::future::ready(result))
    }
}
