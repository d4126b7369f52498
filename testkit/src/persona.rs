//! Named callers: a subject with groups, a tenant, scopes and extra claims,
//! remembered by the issuer so every test step mints tokens for the same
//! person.
//!
//! ```
//! use rmcp_guard_testkit::TestIssuer;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let issuer = TestIssuer::start().await?;
//! issuer
//!     .persona("alice")
//!     .groups(["editors"])
//!     .tenant("acme")
//!     .scopes(["mcp:tools"]);
//!
//! // Later, anywhere the issuer is reachable: the same alice.
//! let alice = issuer.persona("alice");
//! assert_eq!(alice.current_groups(), ["editors"]);
//! assert_eq!(alice.current_tenant().as_deref(), Some("acme"));
//! let token = alice.token("http://127.0.0.1:8080/mcp");
//! assert_eq!(token.split('.').count(), 3);
//!
//! // The claims the token carries (before signing, for assertions).
//! let claims = alice.builder().audience("http://127.0.0.1:8080/mcp").claims();
//! assert_eq!(claims["sub"], "alice");
//! assert_eq!(claims["groups"], json!(["editors"]));
//! assert_eq!(claims["tenant"], "acme");
//! assert_eq!(claims["scope"], "mcp:tools");
//! assert_eq!(claims["aud"], "http://127.0.0.1:8080/mcp");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use serde_json::Value;

use crate::dpop::DpopKey;
use crate::issuer::TestIssuer;
use crate::token::TokenBuilder;

/// What the issuer remembers about one persona.
#[derive(Debug, Clone, Default)]
struct Settings {
    groups: Option<Vec<String>>,
    tenant: Option<String>,
    scopes: Vec<String>,
    client_id: Option<String>,
    audience: Option<String>,
    claims: BTreeMap<String, Value>,
}

/// The personas of one issuer, by name.
#[derive(Debug, Default)]
pub(crate) struct Personas(Mutex<BTreeMap<String, Settings>>);

impl Personas {
    /// Runs `f` on the settings of `name`, creating them if needed. Never
    /// held across an `.await`.
    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Settings) -> R) -> R {
        // A panic in `f` cannot leave the map half-updated in a way that
        // matters to a test; keep going.
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(map.entry(name.to_owned()).or_default())
    }
}

/// A named caller of a [`TestIssuer`]; start one with [`TestIssuer::persona`].
///
/// The subject (`sub`) is the persona's name. Every setter is remembered by
/// the issuer under that name, so `issuer.persona("alice")` later, even from
/// another clone of the issuer, has the same groups, tenant, scopes, client id,
/// audience and claims. Setters replace what was set before (the last call
/// wins).
///
/// Tokens are minted through [`TokenBuilder`] with the issuer's defaults
/// (RS256, `typ: at+jwt`, `exp` in 300 s) plus:
///
/// | persona setting | claim |
/// |---|---|
/// | name | `sub` |
/// | [`Persona::groups`] | `groups` (a JSON array; absent until set) |
/// | [`Persona::tenant`] | `tenant` (absent until set) |
/// | [`Persona::scopes`] | `scope`, space-separated (absent while empty) |
/// | [`Persona::client_id`] | `client_id` (absent until set) |
/// | [`Persona::audience`] or the argument of [`Persona::token`] | `aud` |
/// | [`Persona::bound_to`] | `cnf: {"jkt": ...}` (absent until set) |
/// | [`Persona::claim`] | written last, verbatim: it can override any of the above |
///
/// `groups` and `tenant` are the claim names rmcp-guard reads by default; for
/// a server configured with other names, set them with [`Persona::claim`].
#[derive(Clone)]
pub struct Persona {
    issuer: TestIssuer,
    name: String,
}

impl fmt::Debug for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.settings();
        f.debug_struct("Persona")
            .field("name", &self.name)
            .field("issuer", &self.issuer.issuer())
            .field("settings", &settings)
            .finish()
    }
}

impl TestIssuer {
    /// The persona called `name` (its subject), with the settings remembered
    /// for it, or none yet; see [`Persona`].
    pub fn persona(&self, name: impl Into<String>) -> Persona {
        let name = name.into();
        // Register the name so `personas()` lists it even before any setter.
        self.personas().with(&name, |_| ());
        Persona {
            issuer: self.clone(),
            name,
        }
    }

    /// The names of every persona this issuer has seen, sorted.
    pub fn persona_names(&self) -> Vec<String> {
        let map = self.personas().0.lock().unwrap_or_else(PoisonError::into_inner);
        map.keys().cloned().collect()
    }
}

impl Persona {
    fn settings(&self) -> Settings {
        self.issuer.personas().with(&self.name, |s| s.clone())
    }

    fn update(self, f: impl FnOnce(&mut Settings)) -> Self {
        self.issuer.personas().with(&self.name, f);
        self
    }

    /// The persona's name, which is also its subject (`sub`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the groups (claim `groups`). Defaults to none (no `groups` claim).
    pub fn groups<I, S>(self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let groups: Vec<String> = groups.into_iter().map(Into::into).collect();
        self.update(|s| s.groups = Some(groups))
    }

    /// Sets the tenant (claim `tenant`). Defaults to none (no `tenant` claim).
    pub fn tenant(self, tenant: impl Into<String>) -> Self {
        let tenant = tenant.into();
        self.update(|s| s.tenant = Some(tenant))
    }

    /// Sets the scopes (claim `scope`, space-separated). Defaults to none (no
    /// `scope` claim).
    pub fn scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.update(|s| s.scopes = scopes)
    }

    /// Sets the OAuth client the persona calls through (claim `client_id`).
    /// Defaults to none (no `client_id` claim).
    pub fn client_id(self, client_id: impl Into<String>) -> Self {
        let client_id = client_id.into();
        self.update(|s| s.client_id = Some(client_id))
    }

    /// Sets the audience [`Persona::sign`] and [`Persona::builder`] use
    /// (claim `aud`). Defaults to none (no `aud` claim).
    pub fn audience(self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.update(|s| s.audience = Some(audience))
    }

    /// Sets any claim, written verbatim after all the others (so it can
    /// override them). Defaults to no extra claims.
    pub fn claim(self, name: impl Into<String>, value: Value) -> Self {
        let name = name.into();
        self.update(|s| {
            s.claims.insert(name, value);
        })
    }

    /// Binds the persona's tokens from now on to a DPoP key (RFC 9449
    /// section 6.1): claim `cnf: {"jkt": <the key's thumbprint>}`, kept like
    /// any [`Persona::claim`] (so it can be replaced, e.g. by another key).
    /// Defaults to none (no `cnf` claim: bearer tokens).
    pub fn bound_to(self, key: &DpopKey) -> Self {
        self.claim("cnf", serde_json::json!({"jkt": key.thumbprint()}))
    }

    /// The remembered groups (empty when none were set).
    pub fn current_groups(&self) -> Vec<String> {
        self.settings().groups.unwrap_or_default()
    }

    /// The remembered tenant.
    pub fn current_tenant(&self) -> Option<String> {
        self.settings().tenant
    }

    /// The remembered scopes.
    pub fn current_scopes(&self) -> Vec<String> {
        self.settings().scopes
    }

    /// A [`TokenBuilder`] preloaded with the persona's claims, to change
    /// anything else (expiry, algorithm, a hostile header) before `.sign()`.
    pub fn builder(&self) -> TokenBuilder<'_> {
        let s = self.settings();
        let mut builder = self.issuer.token().subject(self.name.clone());
        if let Some(audience) = s.audience {
            builder = builder.audience(audience);
        }
        if !s.scopes.is_empty() {
            builder = builder.scope(s.scopes.join(" "));
        }
        if let Some(client_id) = s.client_id {
            builder = builder.client_id(client_id);
        }
        if let Some(groups) = s.groups {
            builder = builder.claim("groups", Value::from(groups));
        }
        if let Some(tenant) = s.tenant {
            builder = builder.claim("tenant", Value::String(tenant));
        }
        for (name, value) in s.claims {
            builder = builder.claim(name, value);
        }
        builder
    }

    /// A signed access token for `audience` (the protected resource, e.g.
    /// the MCP endpoint URL).
    pub fn token(&self, audience: impl Into<String>) -> String {
        self.builder().audience(audience).sign()
    }

    /// A signed access token for the remembered [`Persona::audience`] (no
    /// `aud` claim if none was set).
    pub fn sign(&self) -> String {
        self.builder().sign()
    }
}
