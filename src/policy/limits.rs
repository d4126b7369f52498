//! The policy as a [`LimitSource`]: per-caller request limits from the
//! limits rule (`data.mcp.authz.limits` by default).

use super::engine::PolicyEngine;
use crate::Principal;
use crate::limit::{CallerLimits, LimitSource};

/// Reads [`PolicyEngine::limits`]: an object such as `{"rate": "100/min",
/// "burst": 10, "in_flight": 4}` (every field optional, see
/// [`CallerLimits::from_json`]); undefined keeps the configured limits, and
/// so does an error or a value of the wrong shape (never no limit).
impl LimitSource for PolicyEngine {
    fn limits(&self, principal: &Principal) -> Result<Option<CallerLimits>, Box<dyn std::error::Error + Send + Sync>> {
        match PolicyEngine::limits(self, principal)? {
            None => Ok(None),
            Some(value) => Ok(Some(CallerLimits::from_json(&value)?)),
        }
    }
}
