//! [`StateKeys`]: the key ring that seals and opens request state.

use std::fmt;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::ConfigError;
use crate::cache::Timestamp;

/// The length of a key: AES-256.
const KEY_LEN: usize = 32;
/// The longest key id.
pub(super) const MAX_KID_LEN: usize = 64;

/// The keys that seal and open request state: one current key, which seals,
/// and the keys it replaced, each of which still opens until its window
/// closes.
///
/// Each key has an id (`kid`) carried in the sealed state, so a server
/// finds the key without trying them all and can [`rotate`](Self::rotate)
/// keys without breaking the states in flight.
///
/// A key generated at startup ([`generate`](Self::generate)) lives as long as
/// the process: states sealed before a restart, or by another replica, do not
/// open. A fleet needs the same keys on every replica ([`new`](Self::new)
/// with key material from a secret store).
///
/// Key bytes are zeroed when dropped (aws-lc clears its key schedule; the
/// bytes given to [`new`](Self::new) arrive and leave in a [`Zeroizing`]), and
/// `Debug` shows the key ids only.
pub struct StateKeys {
    /// The current key first, then the previous ones, newest first.
    keys: Vec<StateKey>,
}

struct StateKey {
    kid: String,
    key: RandomizedNonceKey,
    /// When this key stops opening; `None` for the current key.
    retired_at: Option<Timestamp>,
}

impl StateKeys {
    /// A ring with one random 256-bit key under a random key id.
    ///
    /// # Panics
    ///
    /// If the operating system's random generator fails: nothing can be
    /// sealed safely then, and this runs at startup.
    pub fn generate() -> StateKeys {
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        let mut kid = [0u8; 9];
        // The system generator does not fail on a working host; a server
        // without randomness must not start.
        aws_lc_rs::rand::fill(key.as_mut_slice()).expect("the system random generator failed");
        aws_lc_rs::rand::fill(&mut kid).expect("the system random generator failed");
        // A 32-byte key and a 12-character base64url kid are valid.
        StateKeys::new(URL_SAFE_NO_PAD.encode(kid), key).expect("a generated key is valid")
    }

    /// A ring with one key: `key` (32 bytes) under the id `kid` (1 to 64
    /// characters of `A-Z a-z 0-9 - _`).
    pub fn new(kid: impl Into<String>, key: Zeroizing<Vec<u8>>) -> Result<StateKeys, ConfigError> {
        Ok(StateKeys {
            keys: vec![StateKey::new(kid.into(), &key)?],
        })
    }

    /// Make `key` under `kid` the current key. The key that was current
    /// still opens states for `previous_valid_for` (set it to at least the
    /// sealer's TTL, so the states sealed just before the rotation can
    /// finish), then is refused like an unknown key. Keys retired earlier
    /// keep their own windows; those already closed are dropped.
    pub fn rotate(
        self,
        kid: impl Into<String>,
        key: Zeroizing<Vec<u8>>,
        previous_valid_for: Duration,
    ) -> Result<StateKeys, ConfigError> {
        self.rotate_at(kid.into(), &key, previous_valid_for, Timestamp::now())
    }

    pub(super) fn rotate_at(
        self,
        kid: String,
        key: &[u8],
        previous_valid_for: Duration,
        now: Timestamp,
    ) -> Result<StateKeys, ConfigError> {
        let new = StateKey::new(kid, key)?;
        if self.keys.iter().any(|key| key.kid == new.kid) {
            return Err(ConfigError::StateKey("a key id can be used only once"));
        }
        let until = now.saturating_add(previous_valid_for);
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        keys.push(new);
        keys.extend(self.keys.into_iter().filter_map(|mut key| {
            let retired_at = key.retired_at.unwrap_or(until);
            key.retired_at = Some(retired_at);
            (retired_at > now).then_some(key)
        }));
        Ok(StateKeys { keys })
    }

    /// The key that seals.
    pub(super) fn current(&self) -> (&str, &RandomizedNonceKey) {
        let current = &self.keys[0]; // a ring always has its current key
        (&current.kid, &current.key)
    }

    /// The key under `kid` if it still opens at `now`.
    pub(super) fn opening(&self, kid: &str, now: Timestamp) -> Option<&RandomizedNonceKey> {
        self.keys
            .iter()
            .find(|key| key.kid == kid)
            .filter(|key| key.retired_at.is_none_or(|at| now < at))
            .map(|key| &key.key)
    }

    /// The key ids, current first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.kid.as_str())
    }
}

impl StateKey {
    fn new(kid: String, key: &[u8]) -> Result<StateKey, ConfigError> {
        if !is_kid(&kid) {
            return Err(ConfigError::StateKey(
                "a key id is 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'",
            ));
        }
        if key.len() != KEY_LEN {
            return Err(ConfigError::StateKey("a key is exactly 32 bytes (AES-256)"));
        }
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| ConfigError::StateKey("aws-lc refused the key"))?;
        Ok(StateKey {
            kid,
            key,
            retired_at: None,
        })
    }
}

/// Whether `kid` is a well-formed key id (it sits between dots in a sealed
/// state, so it has none).
pub(super) fn is_kid(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl fmt::Debug for StateKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateKeys")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
