//! Scope hierarchies: which scopes a granted scope implies (`mcp:admin`
//! implies `mcp:tools`), closed transitively once at build time, and the
//! scopes that are never a resource requirement (`offline_access`).
//!
//! A leaf: it imports nothing of ours but the error type. The resource
//! server builder collects the implications
//! ([`ResourceServerBuilder::scope_implies`](crate::oauth::ResourceServerBuilder::scope_implies));
//! the token validators expand a token's scopes with them once, when the
//! [`Principal`](crate::Principal) is built (and cached with the token), so
//! every sufficiency check ([`Principal::has_scope`](crate::Principal::has_scope),
//! the bearer layer's required scopes, the step-up pre-check, the policy's
//! `input.scopes`) sees the same effective set.
//!
//! ```
//! use rmcp_guard::oauth::{Issuer, ResourceServer};
//!
//! let rs = ResourceServer::builder("https://mcp.example.com/mcp", Issuer::discover("https://idp.example.com"))
//!     .required_scopes(["mcp:tools"])
//!     .scope_implies("mcp:admin", ["mcp:tools", "mcp:read"])
//!     .build();
//! assert!(rs.is_ok());
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::error::ConfigError;

/// The OAuth scope that asks an authorization server for a refresh token
/// (OpenID Connect Core section 11). It is never a requirement of the
/// resource, so it is never advertised in `scopes_supported` nor named in a
/// challenge (MCP 2026-07-28, "Refresh Tokens").
pub(crate) const OFFLINE_ACCESS: &str = "offline_access";

/// Whether `scope` may appear in metadata and challenges.
pub(crate) fn advertised(scope: &str) -> bool {
    scope != OFFLINE_ACCESS
}

/// Configured implications, closed transitively: for each scope, every
/// scope it implies directly or through others (cycles are fine: the
/// closure of a cycle is all of its members).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ScopeImplications {
    closure: BTreeMap<String, BTreeSet<String>>,
}

impl ScopeImplications {
    /// Close `direct` (scope -> scopes it implies) transitively; every name
    /// must be an RFC 6749 scope-token.
    pub(crate) fn new(direct: &[(String, Vec<String>)]) -> Result<Self, ConfigError> {
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (scope, implied) in direct {
            for name in std::iter::once(scope).chain(implied) {
                if !valid_scope(name) {
                    return Err(ConfigError::InvalidScope(name.clone()));
                }
            }
            edges
                .entry(scope.as_str())
                .or_default()
                .extend(implied.iter().map(String::as_str));
        }
        let mut closure = BTreeMap::new();
        for &start in edges.keys() {
            let mut seen: BTreeSet<String> = BTreeSet::new();
            let mut todo: Vec<&str> = edges[start].iter().copied().collect();
            while let Some(next) = todo.pop() {
                if next != start && seen.insert(next.to_owned()) {
                    todo.extend(edges.get(next).into_iter().flatten().copied());
                }
            }
            if !seen.is_empty() {
                closure.insert(start.to_owned(), seen);
            }
        }
        Ok(ScopeImplications { closure })
    }

    /// Whether no implication is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.closure.is_empty()
    }

    /// The effective scopes of a token granting `granted`: `granted` and
    /// everything it implies.
    pub(crate) fn expand(&self, granted: &BTreeSet<String>) -> BTreeSet<String> {
        let mut effective = granted.clone();
        for scope in granted {
            if let Some(implied) = self.closure.get(scope) {
                effective.extend(implied.iter().cloned());
            }
        }
        effective
    }
}

/// RFC 6749 scope-token: one or more NQCHAR (%x21 / %x23-5B / %x5D-7E).
pub(crate) fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn direct(items: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        items
            .iter()
            .map(|(s, i)| ((*s).to_owned(), i.iter().map(|x| (*x).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn implications_are_transitive() {
        let i = ScopeImplications::new(&direct(&[("admin", &["tools"]), ("tools", &["read"])])).unwrap();
        assert_eq!(i.expand(&set(&["admin"])), set(&["admin", "tools", "read"]));
        assert_eq!(i.expand(&set(&["tools"])), set(&["tools", "read"]));
        assert_eq!(i.expand(&set(&["read"])), set(&["read"]));
        assert_eq!(i.expand(&set(&[])), set(&[]));
    }

    #[test]
    fn cycles_close_to_all_members() {
        let i = ScopeImplications::new(&direct(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])])).unwrap();
        assert_eq!(i.expand(&set(&["b"])), set(&["a", "b", "c"]));
        let self_loop = ScopeImplications::new(&direct(&[("a", &["a"])])).unwrap();
        assert_eq!(self_loop.expand(&set(&["a"])), set(&["a"]));
        assert!(self_loop.is_empty());
    }

    #[test]
    fn repeated_calls_accumulate() {
        let i = ScopeImplications::new(&direct(&[("admin", &["tools"]), ("admin", &["read"])])).unwrap();
        assert_eq!(i.expand(&set(&["admin"])), set(&["admin", "tools", "read"]));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            direct(&[("", &["x"])]),
            direct(&[("x", &[""])]),
            direct(&[("x", &["a b"])]),
        ] {
            assert!(matches!(
                ScopeImplications::new(&bad),
                Err(ConfigError::InvalidScope(_))
            ));
        }
    }

    #[test]
    fn offline_access_is_never_advertised() {
        assert!(!advertised("offline_access"));
        assert!(advertised("mcp:tools"));
    }
}
