//! Request state a tool can trust: sealed `requestState` and caller-bound
//! handles (feature `state`).
//!
//! **Sealed request state.** In the multi round-trip flow of MCP
//! 2026-07-28, a tool that needs more input answers `InputRequiredResult`
//! with a `requestState` string, and the client sends that string back,
//! unchanged, on the retry. The client can send anything: the specification
//! calls `requestState` attacker-controlled and requires integrity
//! protection when it influences authorization or business logic. A
//! [`RequestStateSealer`] seals a payload with AES-256-GCM into
//! `v1.<kid>.<base64url(nonce | ciphertext | tag)>`:
//!
//! - **bound** to the caller (issuer, kind, subject, client id), the method,
//!   the name (tool) and a SHA-256 digest of the canonical JSON of the
//!   arguments (a [`StateBinding`], the additional authenticated data): the
//!   state opens for the same caller retrying the same call, and for no one
//!   else;
//! - **confidential**: the payload is encrypted, so the client cannot read
//!   what the server keeps in it;
//! - **short-lived**: it expires after the sealer's TTL (300 s by default);
//! - **single-use** by default: its random 128-bit id is recorded in a
//!   [`ReplaySet`] when it opens, and a second opening is refused;
//! - **rotatable**: the key id travels in the state; [`StateKeys::rotate`]
//!   seals with a new key while the old one still opens for a window.
//!
//! Why not rmcp's own `RequestStateCodec`: it signs with HMAC-SHA256 but
//! does not encrypt (the payload is base64url-readable by the client), has
//! no key ids (rotation breaks every state in flight) and no single use.
//!
//! Every refusal is a [`StateError`], and becomes a JSON-RPC error with `?`:
//! a clear message ("request state expired; start the call again"), never
//! the state or the key id sent, and never which bound field differed (the
//! AEAD cannot tell a tampered state from one sealed for someone else).
//!
//! ```
//! use rmcp::model::JsonObject;
//! use rmcp_guard::Principal;
//! use rmcp_guard::state::{RequestStateSealer, StateBinding, StateError, StateKeys};
//! use serde_json::json;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let sealer = RequestStateSealer::new(StateKeys::generate());
//! let alice = Principal::unverified("https://issuer.example", "alice").build();
//! let arguments: JsonObject = json!({"service": "billing"}).as_object().unwrap().clone();
//!
//! // First call: ask for confirmation, keep what was decided in the state.
//! let binding = StateBinding::tool_call(&alice, "deploy", Some(&arguments));
//! let state = sealer.seal(&binding, &json!({"step": "confirm"}))?;
//!
//! // Retry: the same caller, tool and arguments open it, once.
//! let payload: serde_json::Value = sealer.open(&state, &binding).await?;
//! assert_eq!(payload["step"], "confirm");
//! let again = sealer.open::<serde_json::Value>(&state, &binding).await;
//! assert_eq!(again.unwrap_err(), StateError::Replayed);
//!
//! // Another caller presenting a state sealed for Alice is refused.
//! let state = sealer.seal(&binding, &json!({"step": "confirm"}))?;
//! let mallory = Principal::unverified("https://issuer.example", "mallory").build();
//! let theirs = StateBinding::tool_call(&mallory, "deploy", Some(&arguments));
//! let refused = sealer.open::<serde_json::Value>(&state, &theirs).await.unwrap_err();
//! assert_eq!(refused, StateError::Mismatch);
//! let error: rmcp::ErrorData = refused.into();
//! assert_eq!(error.message, "request state does not match this caller or request");
//! # Ok::<(), StateError>(())
//! # }).unwrap();
//! ```
//!
//! **State handles.** A "stateful tool" returns a handle from one call
//! (`open_cart`) and takes it in the next (`add_item`). [`StateHandles`]
//! mints 256-bit random handles and records their owner; another caller
//! presenting a handle gets the same [`HandleError::Unknown`] as for a
//! handle that never existed.
//!
//! ```
//! use rmcp_guard::Principal;
//! use rmcp_guard::state::{HandleError, StateHandles};
//!
//! let carts = StateHandles::<Vec<String>>::new();
//! let alice = Principal::unverified("https://issuer.example", "alice").build();
//! let bob = Principal::unverified("https://issuer.example", "bob").build();
//! let cart = carts.mint(&alice, Vec::new())?;
//! assert_eq!(carts.get(&alice, &cart)?, Vec::<String>::new());
//! assert_eq!(carts.get(&bob, &cart), Err(HandleError::Unknown));
//! assert_eq!(carts.get(&bob, "made-up"), Err(HandleError::Unknown));
//! # Ok::<(), HandleError>(())
//! ```
//!
//! Keys from [`StateKeys::generate`], replay sets in memory and handles live
//! in one process: a restart or another replica does not open them.
//!
//! **Fleet.** Replicas behind one load balancer need two things to agree on
//! a sealed state: the same keys ([`StateKeys::new`], key material from a
//! secret store, on every replica, rotated together) and one replay set,
//! [`RedisReplaySet`] (feature `redis`), so that a state opened on one
//! replica is refused as replayed on every other. [`Guard`](crate::Guard)
//! with a Redis [`shared_store`](crate::Guard::shared_store) gives the sealer
//! of [`Guard::request_state`](crate::Guard::request_state) the Redis
//! replay set in place of its own in-memory one (a set you chose with
//! [`RequestStateSealer::replay_set`] stays). It cannot share keys it does
//! not have: without `Guard::request_state`, each replica seals with its own
//! generated keys, so a confirmation asked by one replica is refused by the
//! others (fail closed: the user is asked again); `Guard::router` logs a
//! warning for that configuration. [`StateHandles`] stay in one process.

mod binding;
mod handles;
mod keys;
mod replay;
mod sealer;
#[cfg(test)]
mod tests;

pub use binding::StateBinding;
#[cfg(feature = "jwt")]
pub(crate) use binding::owner_key;
pub use handles::StateHandles;
pub use keys::StateKeys;
#[cfg(feature = "redis")]
pub use replay::RedisReplaySet;
pub use replay::{MemoryReplaySet, ReplayEntry, ReplayFuture, ReplaySet};
pub use sealer::RequestStateSealer;

use rmcp::ErrorData;
use serde_json::json;

/// Why a request state was not sealed or opened.
///
/// Into [`rmcp::ErrorData`]: -32602 (invalid params) for a state the client
/// sent that does not open, -32603 (internal error) for a failure on the
/// server's side. The message never names which bound field differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Not a sealed state: the wrong format, or longer than any this server
    /// seals.
    #[error("request state is malformed; start the call again")]
    Malformed,
    /// Sealed with a key this server does not have, or one retired past its
    /// rotation window.
    #[error("request state was sealed with a key this server no longer accepts; start the call again")]
    UnknownKey,
    /// Tampered with, or sealed for another caller, method, name or
    /// arguments.
    #[error("request state does not match this caller or request")]
    Mismatch,
    /// Past its time to live.
    #[error("request state expired; start the call again")]
    Expired,
    /// A single-use state opened before.
    #[error("request state was already used; start the call again")]
    Replayed,
    /// The replay set is full for this caller or in total: the state is not
    /// opened (fail closed).
    #[error("too many request states are in use; try again later")]
    Full,
    /// The replay set could not be reached: the state is not opened.
    #[error("request state cannot be checked right now; try again later")]
    Unavailable,
    /// The payload could not be sealed (not serializable, over 16 KiB, no
    /// randomness) or read back as the type asked for.
    #[error("request state could not be processed")]
    Encode,
}

impl StateError {
    /// A stable, machine-readable code, sent as the error's `data.error`.
    pub fn code(self) -> &'static str {
        match self {
            StateError::Malformed => "request_state_malformed",
            StateError::UnknownKey => "request_state_unknown_key",
            StateError::Mismatch => "request_state_mismatch",
            StateError::Expired => "request_state_expired",
            StateError::Replayed => "request_state_replayed",
            StateError::Full => "request_state_full",
            StateError::Unavailable => "request_state_unavailable",
            StateError::Encode => "request_state_encode",
        }
    }
}

impl From<StateError> for ErrorData {
    fn from(error: StateError) -> Self {
        let data = Some(json!({ "error": error.code() }));
        match error {
            StateError::Malformed
            | StateError::UnknownKey
            | StateError::Mismatch
            | StateError::Expired
            | StateError::Replayed => ErrorData::invalid_params(error.to_string(), data),
            StateError::Full | StateError::Unavailable | StateError::Encode => {
                ErrorData::internal_error(error.to_string(), data)
            }
        }
    }
}

/// Why a [`StateHandles`] lookup or mint failed.
///
/// Into [`rmcp::ErrorData`]: -32602 (invalid params) for
/// [`Unknown`](Self::Unknown), -32603 (internal error) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// No such handle for this caller: never minted, expired, removed, or
    /// another caller's (indistinguishable on purpose).
    #[error("unknown or expired handle")]
    Unknown,
    /// The table is full of live handles; nothing was evicted.
    #[error("too many handles are open; try again later")]
    Full,
    /// The system random generator failed.
    #[error("a handle cannot be minted right now; try again later")]
    Unavailable,
}

impl From<HandleError> for ErrorData {
    fn from(error: HandleError) -> Self {
        match error {
            HandleError::Unknown => {
                ErrorData::invalid_params(error.to_string(), Some(json!({ "error": "unknown_handle" })))
            }
            HandleError::Full | HandleError::Unavailable => ErrorData::internal_error(error.to_string(), None),
        }
    }
}
