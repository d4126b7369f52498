//! [`DpopNonces`]: server-provided DPoP nonces (RFC 9449 section 8),
//! stateless and rotating.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ConfigError;

/// Server-provided nonces for DPoP proofs (RFC 9449 section 8): a proof
/// must then carry a `nonce` this server issued recently, so a proof made
/// in advance (by malware that can sign but not reach the server at that
/// moment) is useless.
///
/// A nonce names a time slot and is authenticated with an HMAC-SHA256 key:
/// no state is kept, and replicas that share the key accept each other's
/// nonces. A nonce is accepted during its slot and the next one, so the
/// value rotates every [`rotation`](Self::rotation) and lives at most
/// twice that. A proof without a valid nonce gets 401 `use_dpop_nonce`
/// with the current nonce in `DPoP-Nonce`; every successful DPoP response
/// carries the current nonce too, so clients pick up a rotation without a
/// failed request.
///
/// ```
/// use std::time::Duration;
/// use rmcp_guard::oauth::DpopNonces;
///
/// // One key for the whole fleet (from a secret store), new nonces every minute.
/// let nonces = DpopNonces::with_key([7u8; 32]).rotation(Duration::from_secs(60));
/// let nonce = nonces.current();
/// assert!(nonces.accepts(&nonce));
/// assert!(!nonces.accepts("made-up"));
/// ```
#[derive(Clone)]
pub struct DpopNonces {
    key: Arc<hmac::Key>,
    rotation: Duration,
}

impl fmt::Debug for DpopNonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("DpopNonces")
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

/// Bytes of the HMAC kept in a nonce (128 bits).
const TAG: usize = 16;

impl DpopNonces {
    /// The default rotation period: 5 minutes.
    pub const DEFAULT_ROTATION: Duration = Duration::from_secs(300);

    /// Nonces authenticated with a fresh random key: only this process
    /// accepts them. In a fleet give every replica the same key with
    /// [`with_key`](Self::with_key).
    pub fn generate() -> Result<Self, ConfigError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| ConfigError::StateKey("no randomness for the DPoP nonce key"))?;
        Ok(DpopNonces {
            key: Arc::new(key),
            rotation: Self::DEFAULT_ROTATION,
        })
    }

    /// Nonces authenticated with `key` (32 random bytes, shared by the
    /// replicas of a fleet).
    pub fn with_key(key: [u8; 32]) -> Self {
        let key = zeroize::Zeroizing::new(key);
        DpopNonces {
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &key[..])),
            rotation: Self::DEFAULT_ROTATION,
        }
    }

    /// How often the nonce changes; a nonce is accepted for up to twice
    /// this. At least 10 seconds, at most 1 hour. Defaults to
    /// [`DEFAULT_ROTATION`](Self::DEFAULT_ROTATION) (5 minutes).
    pub fn rotation(mut self, rotation: Duration) -> Self {
        self.rotation = rotation;
        self
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&self.rotation) {
            return Err(ConfigError::OutOfRange {
                what: "DPoP nonce rotation",
                reason: "between 10 seconds and 1 hour",
            });
        }
        Ok(())
    }

    fn slot_now(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        now.as_secs() / self.rotation.as_secs().max(1)
    }

    fn nonce_for(&self, slot: u64) -> String {
        let slot = slot.to_be_bytes();
        let tag = hmac::sign(&self.key, &slot);
        let mut raw = [0u8; 8 + TAG];
        raw[..8].copy_from_slice(&slot);
        raw[8..].copy_from_slice(&tag.as_ref()[..TAG]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce to send now.
    pub fn current(&self) -> String {
        self.nonce_for(self.slot_now())
    }

    /// Whether `nonce` was issued by this key in the current or the
    /// previous slot.
    pub fn accepts(&self, nonce: &str) -> bool {
        let mut raw = [0u8; 8 + TAG];
        match URL_SAFE_NO_PAD.decode_slice(nonce.as_bytes(), &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return false,
        }
        let mut slot = [0u8; 8];
        slot.copy_from_slice(&raw[..8]);
        let issued = u64::from_be_bytes(slot);
        let now = self.slot_now();
        if issued != now && issued.checked_add(1) != Some(now) {
            return false;
        }
        let tag = hmac::sign(&self.key, &slot);
        // Constant-time comparison of the tag.
        aws_lc_rs::constant_time::verify_slices_are_equal(&tag.as_ref()[..TAG], &raw[8..]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_rotate_and_are_bound_to_the_key() {
        let nonces = DpopNonces::with_key([1; 32]);
        let current = nonces.current();
        assert!(nonces.accepts(&current));
        let now = nonces.slot_now();
        assert!(
            nonces.accepts(&nonces.nonce_for(now - 1)),
            "the previous slot is accepted"
        );
        assert!(!nonces.accepts(&nonces.nonce_for(now - 2)), "older slots are not");
        assert!(!nonces.accepts(&nonces.nonce_for(now + 1)), "future slots are not");
        let other = DpopNonces::with_key([2; 32]);
        assert!(!other.accepts(&current), "another key's nonce");
        let mut forged = current.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(!nonces.accepts(std::str::from_utf8(&forged).unwrap()));
        for junk in ["", "x", &"A".repeat(4096), "not base64!"] {
            assert!(!nonces.accepts(junk));
        }
        assert!(format!("{nonces:?}").contains("rotation"));
    }

    #[test]
    fn rotation_is_bounded() {
        assert!(DpopNonces::with_key([0; 32]).check().is_ok());
        for bad in [Duration::from_secs(9), Duration::from_secs(3601)] {
            assert!(DpopNonces::with_key([0; 32]).rotation(bad).check().is_err());
        }
    }
}
