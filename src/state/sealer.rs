//! [`RequestStateSealer`]: seal a payload into a `requestState` string and
//! open it again.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::binding::owner_key;
use super::keys::{MAX_KID_LEN, is_kid};
use super::replay::{MemoryReplaySet, ReplayEntry, ReplaySet};
use super::{StateBinding, StateError, StateKeys};
use crate::cache::Timestamp;

/// The format version, the first part of every sealed state.
const VERSION: &str = "v1";
/// The AES-GCM tag.
const TAG_LEN: usize = 16;
/// Expiry (Unix milliseconds, 8 bytes) and id (16 bytes) before the payload.
const HEADER_LEN: usize = 8 + 16;
/// The largest payload, as JSON.
pub(super) const MAX_PAYLOAD_LEN: usize = 16 * 1024;
/// The longest sealed state accepted: anything longer is refused before it
/// is decoded.
pub(super) const MAX_SEALED_LEN: usize =
    VERSION.len() + 1 + MAX_KID_LEN + 1 + (NONCE_LEN + HEADER_LEN + MAX_PAYLOAD_LEN + TAG_LEN).div_ceil(3) * 4;

/// Seals a payload into an opaque `requestState` string bound to the caller
/// and the request, and opens it on the retry; see the
/// [module docs](super).
///
/// Cheap to clone: the keys and the replay set are shared.
#[derive(Clone)]
pub struct RequestStateSealer {
    keys: Arc<StateKeys>,
    ttl: Duration,
    replay: Option<Arc<dyn ReplaySet>>,
    /// The replay set is this sealer's own [`MemoryReplaySet`], not one
    /// chosen by the user.
    own_replay: bool,
}

impl RequestStateSealer {
    /// A sealer with `keys`, whose states expire after 300 s and open once
    /// (remembered in a [`MemoryReplaySet`] with its default bounds).
    pub fn new(keys: StateKeys) -> Self {
        RequestStateSealer {
            keys: Arc::new(keys),
            ttl: Duration::from_secs(300),
            replay: Some(Arc::new(MemoryReplaySet::new())),
            own_replay: true,
        }
    }

    /// How long a sealed state opens. Keep it short: the time a user needs
    /// to answer the question the state waits on. Defaults to `300 s`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Where single-use states are remembered, and make states single-use
    /// again after [`multi_use`](Self::multi_use). A fleet of replicas needs
    /// one set shared by all. Defaults to a [`MemoryReplaySet`] of this
    /// sealer.
    pub fn replay_set(mut self, set: Arc<dyn ReplaySet>) -> Self {
        self.replay = Some(set);
        self.own_replay = false;
        self
    }

    /// Use `set` (the fleet's) in place of this sealer's own in-memory
    /// replay set; a set the user chose, or [`multi_use`](Self::multi_use),
    /// stays as it is.
    #[cfg_attr(not(all(feature = "redis", feature = "jwt")), allow(dead_code))] // `Guard` with a Redis store
    pub(crate) fn shared_replay_set(mut self, set: Arc<dyn ReplaySet>) -> Self {
        if self.own_replay && self.replay.is_some() {
            self.replay = Some(set);
            self.own_replay = false;
        }
        self
    }

    /// Let a state open any number of times until it expires (for a state
    /// that only carries data, where a replay within the binding does no
    /// harm). Defaults to `false`: single use.
    pub fn multi_use(mut self) -> Self {
        self.replay = None;
        self.own_replay = false;
        self
    }

    /// The keys of this sealer.
    pub fn keys(&self) -> &StateKeys {
        &self.keys
    }

    /// Seal `payload` (as JSON, at most 16 KiB) under `binding` with the
    /// current key: `v1.<kid>.<base64url(nonce | ciphertext | tag)>`.
    ///
    /// The payload is encrypted, not only signed: the client cannot read it.
    pub fn seal<T: Serialize>(&self, binding: &StateBinding<'_>, payload: &T) -> Result<String, StateError> {
        self.seal_at(binding, payload, Timestamp::now())
    }

    pub(super) fn seal_at<T: Serialize>(
        &self,
        binding: &StateBinding<'_>,
        payload: &T,
        now: Timestamp,
    ) -> Result<String, StateError> {
        let json = Zeroizing::new(serde_json::to_vec(payload).map_err(|_| StateError::Encode)?);
        if json.len() > MAX_PAYLOAD_LEN {
            return Err(StateError::Encode);
        }
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| StateError::Encode)?;
        let expires_at = now.saturating_add(self.ttl);
        let mut buffer = Zeroizing::new(Vec::with_capacity(HEADER_LEN + json.len() + TAG_LEN));
        buffer.extend_from_slice(&expires_at.millis().to_be_bytes());
        buffer.extend_from_slice(&id);
        buffer.extend_from_slice(&json);
        let (kid, key) = self.keys.current();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(binding.aad(VERSION, kid)), &mut *buffer)
            .map_err(|_| StateError::Encode)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + buffer.len());
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&buffer);
        Ok(format!("{VERSION}.{kid}.{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// Open a state sealed by [`seal`](Self::seal), under the binding of the
    /// request that presents it; the payload, or why not:
    ///
    /// - [`Malformed`](StateError::Malformed): not a sealed state (or longer
    ///   than any this sealer makes);
    /// - [`UnknownKey`](StateError::UnknownKey): sealed with a key this
    ///   sealer does not have, or one retired past its window;
    /// - [`Mismatch`](StateError::Mismatch): tampered with, or sealed for
    ///   another caller, method, name or arguments (the AEAD cannot tell
    ///   which, and neither does the error);
    /// - [`Expired`](StateError::Expired): past its TTL;
    /// - [`Replayed`](StateError::Replayed): a single-use state opened
    ///   before; [`Full`](StateError::Full) or
    ///   [`Unavailable`](StateError::Unavailable) when the replay set cannot
    ///   record it (fail closed).
    pub async fn open<T: DeserializeOwned>(&self, sealed: &str, binding: &StateBinding<'_>) -> Result<T, StateError> {
        let result = self.open_checked(sealed, binding).await;
        // The reason only: never the state, its key id or the payload.
        match result {
            Err(error @ (StateError::Full | StateError::Unavailable | StateError::Encode)) => {
                tracing::warn!(reason = error.code(), "request state not opened");
            }
            Err(error) => tracing::debug!(reason = error.code(), "request state refused"),
            Ok(_) => {}
        }
        result
    }

    async fn open_checked<T: DeserializeOwned>(
        &self,
        sealed: &str,
        binding: &StateBinding<'_>,
    ) -> Result<T, StateError> {
        let (payload, entry) = self.open_at(sealed, binding, Timestamp::now())?;
        if let Some(replay) = &self.replay {
            replay.first_use(entry).await?;
        }
        Ok(payload)
    }

    /// Everything [`open`](Self::open) checks but single use.
    pub(super) fn open_at<T: DeserializeOwned>(
        &self,
        sealed: &str,
        binding: &StateBinding<'_>,
        now: Timestamp,
    ) -> Result<(T, ReplayEntry), StateError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(StateError::Malformed);
        }
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(StateError::Malformed);
        };
        if !is_kid(kid) {
            return Err(StateError::Malformed);
        }
        let key = self.keys.opening(kid, now).ok_or(StateError::UnknownKey)?;
        let mut bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|_| StateError::Malformed)?);
        if bytes.len() < NONCE_LEN + HEADER_LEN + TAG_LEN {
            return Err(StateError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StateError::Malformed)?;
        let plaintext = key
            .open_in_place(nonce, Aad::from(binding.aad(VERSION, kid)), ciphertext)
            .map_err(|_| StateError::Mismatch)?;
        // Authenticated from here on: written by this server for this binding.
        let (header, json) = plaintext.split_at(HEADER_LEN);
        let (expires_at, id) = header.split_at(8);
        let expires_at = Timestamp::from_millis(u64::from_be_bytes(
            expires_at.try_into().map_err(|_| StateError::Malformed)?,
        ));
        if expires_at <= now {
            return Err(StateError::Expired);
        }
        let id: [u8; 16] = id.try_into().map_err(|_| StateError::Malformed)?;
        // A payload this server sealed that does not read back as `T`: the
        // tool seals and opens different types (a bug on our side).
        let payload = serde_json::from_slice(json).map_err(|_| StateError::Encode)?;
        Ok((
            payload,
            ReplayEntry::new(owner_key(binding.principal()), id, expires_at),
        ))
    }
}

impl std::fmt::Debug for RequestStateSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStateSealer")
            .field("keys", &self.keys)
            .field("ttl", &self.ttl)
            .field("single_use", &self.replay.is_some())
            .finish()
    }
}
