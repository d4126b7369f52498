//! Rego policy.
