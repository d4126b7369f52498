//! The audit event vocabulary, in one place.
//!
//! Every security decision emits exactly one `tracing` event on the target
//! [`TARGET`] (`rmcp_guard::audit`) at `INFO`. Fields are stable; values are
//! identifiers and reason codes, never a token, a secret or key material.

/// The `tracing` target of every audit event.
pub const TARGET: &str = "rmcp_guard::audit";
