//! [`PathTemplate`]: where a principal's credential for a service lives.

use std::fmt;
use std::str::FromStr;

use crate::Principal;

use super::SecretsConfigError;

/// The template used when none is configured.
pub const DEFAULT_TEMPLATE: &str = "mcp/{tenant}/{service}";

/// The longest value accepted for one path segment.
pub(crate) const MAX_SEGMENT_LEN: usize = 128;

/// Why a principal (or a service name) cannot be mapped to a path.
///
/// Names the placeholder, never echoes the offending value (it is
/// attacker-controlled).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// The principal has no value for this placeholder.
    #[error("no {0} value")]
    Missing(String),
    /// The value is not one safe path segment.
    #[error("the {placeholder} value is not a safe path segment ({reason})")]
    Invalid {
        /// Which placeholder.
        placeholder: String,
        /// What is wrong with the value.
        reason: &'static str,
    },
}

/// Where a principal's credential for a service lives.
///
/// A template is a `/`-separated path whose segments are either literals or
/// exactly one placeholder:
///
/// | placeholder      | value                                         |
/// |------------------|-----------------------------------------------|
/// | `{service}`      | the service the tool asks for                 |
/// | `{tenant}`       | [`Principal::tenant`]                         |
/// | `{subject}`      | [`Principal::subject`] (`sub`)                |
/// | `{client_id}`    | [`Principal::client_id`]                      |
/// | `{claim:NAME}`   | the string claim `NAME` of the token          |
///
/// A template must contain `{service}` and at least one placeholder bound to
/// the principal, so that two callers can never share a path by accident.
///
/// Every substituted value must be one safe path segment: 1 to
/// 128 characters out of `A-Z a-z 0-9 - _ . @ + : |`, and not
/// `.` or `..`. Anything else (`/`, `\`, `%`, whitespace, control characters,
/// non-ASCII, an absurd length) is **rejected, never normalized**: normalizing
/// `acme/../globex` would hand one tenant another tenant's path.
///
/// ```
/// use rmcp_guard::Principal;
/// use rmcp_guard::secrets::PathTemplate;
///
/// let t: PathTemplate = "mcp/{tenant}/{service}".parse().unwrap();
/// let acme = Principal::unverified("https://idp", "alice").tenant("acme").build();
/// assert_eq!(t.resolve(&acme, "catalyst-center").unwrap(), "mcp/acme/catalyst-center");
///
/// let evil = Principal::unverified("https://idp", "mallory").tenant("../globex").build();
/// assert!(t.resolve(&evil, "catalyst-center").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Service,
    Tenant,
    Subject,
    ClientId,
    Claim(String),
}

impl PathTemplate {
    /// Parse a template such as `mcp/{tenant}/{service}`.
    pub fn parse(template: &str) -> Result<Self, SecretsConfigError> {
        let bad = |reason| SecretsConfigError::InvalidTemplate {
            template: template.to_owned(),
            reason,
        };
        let mut segments = Vec::new();
        let mut rest = template;
        loop {
            let (seg, tail) = if let Some(inner) = rest.strip_prefix('{') {
                // A placeholder runs to its closing brace, which may be
                // followed only by `/` or the end (claim names may hold `/`).
                let close = inner.find('}').ok_or_else(|| bad("unclosed `{`"))?;
                let name = &inner[..close];
                let after = &inner[close + 1..];
                let seg = match name {
                    "service" => Segment::Service,
                    "tenant" => Segment::Tenant,
                    "subject" => Segment::Subject,
                    "client_id" => Segment::ClientId,
                    _ => match name.strip_prefix("claim:") {
                        Some(c) if !c.is_empty() && !c.contains(['{', '}']) => Segment::Claim(c.to_owned()),
                        _ => {
                            return Err(bad(
                                "unknown placeholder (valid: {service}, {tenant}, {subject}, {client_id}, {claim:NAME})",
                            ));
                        }
                    },
                };
                (seg, after)
            } else {
                let end = rest.find('/').unwrap_or(rest.len());
                let lit = &rest[..end];
                if lit.contains(['{', '}']) {
                    return Err(bad("a placeholder must be a whole path segment"));
                }
                if let Err(reason) = check_segment(lit) {
                    return Err(bad(reason));
                }
                (Segment::Literal(lit.to_owned()), &rest[end..])
            };
            segments.push(seg);
            if tail.is_empty() {
                break;
            }
            rest = tail
                .strip_prefix('/')
                .ok_or_else(|| bad("a placeholder must be a whole path segment"))?;
        }
        if !segments.contains(&Segment::Service) {
            return Err(bad("the template must contain {service}"));
        }
        if !segments.iter().any(|s| {
            matches!(
                s,
                Segment::Tenant | Segment::Subject | Segment::ClientId | Segment::Claim(_)
            )
        }) {
            return Err(bad(
                "the template must be bound to the principal ({tenant}, {subject}, {client_id} or {claim:NAME})",
            ));
        }
        Ok(PathTemplate {
            source: template.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The path of `principal`'s credential for `service`.
    ///
    /// Fails closed when a value is missing or is not one safe segment.
    pub fn resolve(&self, principal: &Principal, service: &str) -> Result<String, ScopeError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            let (name, value): (&str, Option<&str>) = match seg {
                Segment::Literal(l) => {
                    out.push_str(l);
                    continue;
                }
                Segment::Service => ("service", Some(service)),
                Segment::Tenant => ("tenant", principal.tenant()),
                Segment::Subject => ("subject", Some(principal.subject())),
                Segment::ClientId => ("client_id", principal.client_id()),
                Segment::Claim(c) => (
                    c.as_str(),
                    // Only string claims: a number or object is not a name.
                    principal.claims().get(c).and_then(|v| v.as_str()),
                ),
            };
            let value = value.ok_or_else(|| ScopeError::Missing(name.to_owned()))?;
            check_segment(value).map_err(|reason| ScopeError::Invalid {
                placeholder: name.to_owned(),
                reason,
            })?;
            out.push_str(value);
        }
        Ok(out)
    }
}

/// Whether `value` is one safe path segment; see [`PathTemplate`].
pub(crate) fn check_segment(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("empty");
    }
    if value.len() > MAX_SEGMENT_LEN {
        return Err("too long");
    }
    if value == "." || value == ".." {
        return Err("dot segment");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@+:|".contains(&b))
    {
        return Err("disallowed character");
    }
    Ok(())
}

/// Whether every segment of a resolved path is safe (defence in depth for
/// stores that are handed a path directly).
#[cfg_attr(not(feature = "vault"), allow(dead_code))] // used by the Vault backend
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    path.split('/').try_for_each(check_segment)
}

impl Default for PathTemplate {
    /// [`DEFAULT_TEMPLATE`].
    fn default() -> Self {
        // Invariant: DEFAULT_TEMPLATE parses (pinned by a test).
        Self::parse(DEFAULT_TEMPLATE).expect("the default template parses")
    }
}

impl FromStr for PathTemplate {
    type Err = SecretsConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PathTemplate").field(&self.source).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(tenant: &str) -> Principal {
        Principal::unverified("https://idp.example", "alice")
            .tenant(tenant)
            .build()
    }

    #[test]
    fn default_template_is_tenant_then_service() {
        assert_eq!(PathTemplate::default().as_str(), "mcp/{tenant}/{service}");
        assert_eq!(
            PathTemplate::default().resolve(&p("acme"), "svc").unwrap(),
            "mcp/acme/svc"
        );
    }

    #[test]
    fn escaping_values_are_rejected_never_normalized() {
        let t = PathTemplate::default();
        let long = "a".repeat(MAX_SEGMENT_LEN + 1);
        for evil in [
            "..",
            ".",
            "",
            "acme/../globex",
            "../globex",
            "globex/",
            "acme\\globex",
            "acme\n",
            "acme\0",
            "ac me",
            "%2e%2e",
            "acme?x=1",
            "acme#x",
            "ａcme",
            "*",
            long.as_str(),
        ] {
            let r = t.resolve(&p(evil), "svc");
            assert!(
                matches!(r, Err(ScopeError::Invalid { ref placeholder, .. }) if placeholder == "tenant"),
                "{evil:?} -> {r:?}"
            );
            // The error never echoes the value.
            if let Err(e) = r
                && evil.len() > 2
            {
                assert!(!e.to_string().contains(evil));
            }
        }
        assert!(t.resolve(&p("acme"), "../x").is_err());
        assert!(t.resolve(&p(&"a".repeat(MAX_SEGMENT_LEN)), "svc").is_ok());
    }

    #[test]
    fn missing_tenant_fails_closed() {
        let no_tenant = Principal::unverified("https://idp", "bob").build();
        assert_eq!(
            PathTemplate::default().resolve(&no_tenant, "svc"),
            Err(ScopeError::Missing("tenant".into()))
        );
    }

    #[test]
    fn claim_placeholder_reads_string_claims_only() {
        let t = PathTemplate::parse("kv/{claim:https://x.io/org}/{subject}/{service}").unwrap();
        let mut claims = serde_json::Map::new();
        claims.insert("https://x.io/org".into(), "org1".into());
        let pr = Principal::unverified("i", "alice@example.com").claims(claims).build();
        assert_eq!(t.resolve(&pr, "jira").unwrap(), "kv/org1/alice@example.com/jira");
        let mut claims = serde_json::Map::new();
        claims.insert("https://x.io/org".into(), 7.into());
        let pr = Principal::unverified("i", "a").claims(claims).build();
        assert!(matches!(t.resolve(&pr, "jira"), Err(ScopeError::Missing(_))));
    }

    #[test]
    fn bad_templates_are_config_errors() {
        for bad in [
            "",
            "mcp/{service}",
            "mcp/{tenant}",
            "mcp/{tenant}-x/{service}",
            "mcp/{tenant}{service}",
            "mcp/{nope}/{service}",
            "mcp//{tenant}/{service}",
            "/mcp/{tenant}/{service}",
            "mcp/{tenant}/{service}/",
            "mcp/../{tenant}/{service}",
            "mcp/{tenant/{service}",
            "mcp/{claim:}/{service}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PathTemplate::parse("{tenant}/{service}").is_ok());
        assert!(PathTemplate::parse("a/{client_id}/b/{service}/c").is_ok());
    }
}
