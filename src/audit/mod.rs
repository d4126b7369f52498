//! The audit event vocabulary, in one place.
//!
//! Every security decision emits exactly one [`AuditEvent`] as a `tracing`
//! event on the target [`TARGET`] (`rmcp_guard::audit`) at `INFO` (a refused
//! policy reload at `ERROR`). Its `event` field is [`AuditEvent::name`]; the
//! other fields are stable, and hold identifiers and reason codes, never a
//! token, a secret or key material.
//!
//! | `event` | fields |
//! |---|---|
//! | `authn` | `outcome`, `reason`, `status` (refusals), `subject`, `client_id`, `issuer`, `tenant`, `cached` |
//! | `session` | `outcome` (`deny`), `reason`, `subject` |
//! | `authz` | `outcome` (`deny`), `reason` (`insufficient_scope`), `subject`, `client_id`, `issuer`, `resource`, `action`, `required_scopes` |
//! | `policy_decision` | `subject`, `issuer`, `resource`, `action`, `outcome`, `allowed`, `reason`, `policy_version`, `duration_us`, `cached` |
//! | `policy_reload` | `outcome` (`allow`: applied, `error`: refused), `previous_version`, `policy_version`, `error` |
//! | `secret_access` | `subject`, `issuer`, `tenant`, `service`, `template`, `path`, `outcome` (`ok` or a `SecretError` code), `cache` |
//! | `token_exchange` | `subject`, `issuer`, `grant`, `audience`, `outcome` (`ok` or an `ExchangeError` code), `cache` |
//! | `confirmation` | `step` (`asked`, `granted`, `refused`), `reason` (why refused: `declined`, `no_elicitation`, `unconfirmable`, or a request-state error code such as `request_state_expired`), `subject`, `client_id`, `issuer`, `resource`, `action` |
//! | `limit` | `outcome` (`deny`; `error` when the shared store failed; `allow` when it failed and the limits fail open), `reason` (`rate`, `in_flight`, `streams`, or the store's `store_timeout`, `store_unavailable`, `store_circuit_open`), `subject`, `client_id`, `issuer`, `tenant`, `resource` (the tool of a per-tool limit, else empty), `retry_after_secs` |
//! | `arguments` | `outcome` (`deny`), `reason` (`arguments_too_large`, `arguments_invalid`), `subject`, `client_id`, `issuer`, `tenant`, `resource` (the tool) |
//! | `definitions` | `outcome` (`deny`), `reason` (`definition_not_pinned`), `subject`, `client_id`, `issuer`, `tenant`, `resource` (the tool, prompt or resource template) |
//! | `output_redacted` | `outcome` (`allow`: the result left, without the values), `rule` (`secret_value`, `private_key`, `jwt`, `cloud_key`, `authorization`, `url_credentials`, `email`, `payment_card`), `count`, `subject`, `client_id`, `issuer`, `tenant`, `resource` (the tool) |
//! | `revocation` | `outcome` (`allow`: in force; `error`: not shared with the fleet or the table is full), `reason` (`revoked`, a store reason such as `store_timeout`, `revocations_full`), `kind` (`subject`, `client_id`, `tenant`, `jti`), `value`, `issuer` (empty: every issuer), `by`, `revoked_at`, `expires_at` |
//! | `circuit` | `upstream` (`jwks`, `introspection`, `token_endpoint`, `vault`, `redis`), `endpoint`, `state`, `previous` (`closed`, `open`, `half_open`), `failures`, `retry_after` (seconds, when opening); at `WARN` when a breaker opens |
//!
//! # The ECS view
//!
//! With the feature `telemetry`, [`EcsJsonLayer`] (a `tracing-subscriber`
//! layer) writes each of these events as one [Elastic Common Schema]
//! document per line (`event.action`, `event.outcome`, `user.id`,
//! `organization.id`, `rule.name`, ... and our own fields under
//! `rmcp_guard.*`), so they land in Elasticsearch without an ingest
//! pipeline. The fields above stay as they are; the layer maps them. The
//! schema reference, versioned ([`SCHEMA_VERSION`], ECS [`ECS_VERSION`]),
//! with every event's keys and example documents, is
//! [`docs/audit-schema.md`](https://github.com/rmcp-guard/rmcp-guard/blob/main/docs/audit-schema.md);
//! `examples/audit_json.rs` is a server that writes them to stdout.
//!
//! | file | concept |
//! |---|---|
//! | `ecs` | [`EcsJsonLayer`]: the mapping to ECS and the JSON-lines writer (feature `telemetry`) |
//!
//! This module depends on nothing of the crate but [`Principal`]: each
//! module passes its own vocabulary in as codes.
//!
//! [Elastic Common Schema]: https://www.elastic.co/docs/reference/ecs

use std::fmt;

use crate::principal::Principal;

#[cfg(feature = "telemetry")]
mod ecs;

#[cfg(feature = "telemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "telemetry")))]
pub use ecs::{ECS_VERSION, EcsJsonLayer, SCHEMA_VERSION};

/// The `tracing` target of every audit event.
pub const TARGET: &str = "rmcp_guard::audit";

/// How a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Refused on its merits.
    Deny,
    /// Refused because the decision could not be made (an evaluation error,
    /// an upstream down): fail closed.
    Error,
}

impl Outcome {
    /// `allow`, `deny` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller as far as it is known: issuer, subject and client id are set
/// only once a token's signature verified.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// The token's issuer.
    pub issuer: Option<&'a str>,
    /// The token's subject.
    pub subject: Option<&'a str>,
    /// The client the token was issued to.
    pub client_id: Option<&'a str>,
    /// The caller's tenant.
    pub tenant: Option<&'a str>,
}

impl<'a> From<&'a Principal> for Caller<'a> {
    fn from(p: &'a Principal) -> Self {
        Caller {
            issuer: Some(p.issuer()),
            subject: Some(p.subject()),
            client_id: p.client_id(),
            tenant: p.tenant(),
        }
    }
}

impl<'a> From<Option<&'a Principal>> for Caller<'a> {
    fn from(p: Option<&'a Principal>) -> Self {
        p.map(Caller::from).unwrap_or_default()
    }
}

/// One audit event; see the [module docs](self) for the fields of each.
#[derive(Clone)]
#[non_exhaustive]
pub enum AuditEvent<'a> {
    /// The bearer layer accepted or refused a request.
    Authn {
        /// Allow, deny, or error (an upstream down).
        outcome: Outcome,
        /// `valid_token` or the refusal's reason code.
        reason: &'a str,
        /// The HTTP status of a refusal.
        status: Option<u16>,
        /// Who, as far as known.
        caller: Caller<'a>,
        /// Whether the verified-token cache answered.
        cached: bool,
    },
    /// The session-binding layer refused a request naming a session.
    Session {
        /// Why (`session_not_owned`, `session_evicted` (beyond its
        /// principal's bound, on another replica), `malformed_session_id`,
        /// `session_id_required`, `session_table_full`, `unauthenticated`, or
        /// the shared store's `store_timeout`, `store_unavailable`,
        /// `store_circuit_open`).
        reason: &'a str,
        /// The caller's subject, when known.
        subject: Option<&'a str>,
    },
    /// The step-up layer answered 403 `insufficient_scope` before rmcp.
    StepUp {
        /// The caller.
        principal: &'a Principal,
        /// The tool, resource or prompt.
        resource: &'a str,
        /// The action.
        action: &'a str,
        /// Every scope the new token needs.
        required_scopes: &'a [String],
    },
    /// One policy decision (a listing is one decision).
    PolicyDecision {
        /// The caller; `None` when none was in the request.
        principal: Option<&'a Principal>,
        /// The tool, resource or prompt; empty for a listing.
        resource: &'a str,
        /// The action.
        action: &'a str,
        /// Allow, deny, or error (the policy did not yield a boolean).
        outcome: Outcome,
        /// The first reason, or empty.
        reason: &'a str,
        /// The content hash of the policy that decided; empty when none ran.
        policy_version: &'a str,
        /// How long it took.
        duration_us: u64,
        /// Whether the per-thread memo answered.
        cached: bool,
    },
    /// A policy reload: applied (`Allow`) or refused (`Error`, the previous
    /// version keeps serving).
    PolicyReload {
        /// Applied or refused.
        outcome: Outcome,
        /// The version before.
        previous_version: &'a str,
        /// The version in force after.
        policy_version: &'a str,
        /// Why a reload was refused.
        error: Option<&'a dyn fmt::Display>,
    },
    /// One credential lookup.
    SecretAccess {
        /// The caller, when known.
        principal: Option<&'a Principal>,
        /// The service asked for.
        service: &'a str,
        /// The path template.
        template: &'a str,
        /// The resolved path; `None` when refused before resolution.
        path: Option<&'a str>,
        /// `ok` or the error's code.
        outcome: &'a str,
        /// The cache status (`hit`, `miss`, `joined`, `stale`, `bypass`, `none`).
        cache: &'a str,
    },
    /// One downstream token request.
    TokenExchange {
        /// The caller; `None` for client credentials.
        principal: Option<&'a Principal>,
        /// `token_exchange` or `client_credentials`.
        grant: &'a str,
        /// The audience asked for.
        audience: &'a str,
        /// `ok` or the error's code.
        outcome: &'a str,
        /// The cache status (`hit`, `miss`, `joined`, `none`).
        cache: &'a str,
    },
    /// A step of a user confirmation the policy asked for
    /// ([`Decision::confirmation_required`](crate::policy::Decision::confirmation_required)).
    Confirmation {
        /// The caller.
        principal: &'a Principal,
        /// The tool, prompt or resource.
        resource: &'a str,
        /// The action.
        action: &'a str,
        /// `asked`, `granted` or `refused`.
        step: &'a str,
        /// Why it was refused; empty otherwise.
        reason: &'a str,
    },
    /// A request refused by a request limit (HTTP 429, or a JSON-RPC error
    /// for a per-tool limit).
    Limit {
        /// The caller.
        principal: &'a Principal,
        /// Deny (over a limit), error (the shared store failed: refused), or
        /// allow (the store failed and the limits fail open).
        outcome: Outcome,
        /// Which limit (`rate`, `in_flight`, `streams`), or the store's
        /// failure (`store_timeout`, `store_unavailable`, `store_circuit_open`).
        reason: &'a str,
        /// The tool of a per-tool limit; empty otherwise.
        resource: &'a str,
        /// The `Retry-After` given, in seconds.
        retry_after_secs: u64,
    },
    /// A tool call refused before its tool ran for its arguments (feature
    /// `integrity`, [`ArgumentGuard`](crate::integrity::ArgumentGuard)):
    /// never the values.
    Arguments {
        /// The caller, when the request has one.
        principal: Option<&'a Principal>,
        /// Deny.
        outcome: Outcome,
        /// `arguments_too_large` or `arguments_invalid`.
        reason: &'a str,
        /// The tool.
        resource: &'a str,
    },
    /// A tool, prompt or resource template hidden or refused at runtime
    /// because its definition is not the pinned one (feature `integrity`,
    /// [`Pinned`](crate::integrity::Pinned)).
    Definitions {
        /// The caller, when the request has one.
        principal: Option<&'a Principal>,
        /// Deny.
        outcome: Outcome,
        /// `definition_not_pinned`.
        reason: &'a str,
        /// The tool's or prompt's name, or the template's `uriTemplate`.
        resource: &'a str,
    },
    /// Values removed from a tool's result before it left the server
    /// (feature `integrity`, [`OutputGuard`](crate::integrity::OutputGuard)):
    /// one event per rule that matched, never the value.
    OutputRedacted {
        /// The caller, when the request has one.
        principal: Option<&'a Principal>,
        /// The rule (`RedactionRule::as_str`): `secret_value`,
        /// `private_key`, `jwt`, ...
        rule: &'a str,
        /// How many values it removed from this result.
        count: usize,
        /// The tool.
        resource: &'a str,
    },
    /// A revocation was made (see the `revoke` module): identifiers only,
    /// never token material.
    Revocation {
        /// In force (`Allow`), or not shared / not stored locally (`Error`).
        outcome: Outcome,
        /// `revoked`, or why it is not fully in force.
        reason: &'a str,
        /// What it names: `subject`, `client_id`, `tenant` or `jti`.
        kind: &'a str,
        /// The subject, client id, tenant or `jti`.
        value: &'a str,
        /// The issuer it is limited to; `None`: every issuer.
        issuer: Option<&'a str>,
        /// Who asked for it, when the application said.
        by: Option<&'a str>,
        /// Tokens issued at or before this time are refused (Unix seconds).
        revoked_at: u64,
        /// When it is forgotten (Unix seconds).
        expires_at: u64,
    },
    /// An upstream's circuit breaker changed state (see the `breaker` module).
    Circuit {
        /// The kind of upstream (`Upstream::as_str`).
        upstream: &'a str,
        /// The issuer, endpoint URL or address.
        endpoint: &'a str,
        /// The new state (`CircuitState::as_str`).
        state: &'a str,
        /// The state before.
        previous: &'a str,
        /// Consecutive failures seen.
        failures: u32,
        /// How long it stays open, in seconds, when it opens.
        retry_after: Option<u64>,
    },
}

impl fmt::Debug for AuditEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEvent")
            .field("event", &self.name())
            .finish_non_exhaustive()
    }
}

impl AuditEvent<'_> {
    /// The `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::Authn { .. } => "authn",
            AuditEvent::Session { .. } => "session",
            AuditEvent::StepUp { .. } => "authz",
            AuditEvent::PolicyDecision { .. } => "policy_decision",
            AuditEvent::PolicyReload { .. } => "policy_reload",
            AuditEvent::SecretAccess { .. } => "secret_access",
            AuditEvent::TokenExchange { .. } => "token_exchange",
            AuditEvent::Confirmation { .. } => "confirmation",
            AuditEvent::Limit { .. } => "limit",
            AuditEvent::Arguments { .. } => "arguments",
            AuditEvent::Definitions { .. } => "definitions",
            AuditEvent::OutputRedacted { .. } => "output_redacted",
            AuditEvent::Revocation { .. } => "revocation",
            AuditEvent::Circuit { .. } => "circuit",
        }
    }

    /// Emit the event on [`TARGET`] (and count it, with the feature
    /// `telemetry`).
    pub(crate) fn emit(&self) {
        #[cfg(feature = "telemetry")]
        record_metrics(self);
        let event = self.name();
        match *self {
            AuditEvent::Authn {
                outcome,
                reason,
                status,
                caller,
                cached,
            } => tracing::info!(
                target: TARGET,
                event,
                outcome = outcome.as_str(),
                reason,
                status,
                subject = caller.subject,
                client_id = caller.client_id,
                issuer = caller.issuer,
                tenant = caller.tenant,
                cached,
            ),
            AuditEvent::Session { reason, subject } => {
                tracing::info!(target: TARGET, event, outcome = Outcome::Deny.as_str(), reason, subject)
            }
            AuditEvent::StepUp {
                principal,
                resource,
                action,
                required_scopes,
            } => tracing::info!(
                target: TARGET,
                event,
                outcome = Outcome::Deny.as_str(),
                reason = "insufficient_scope",
                subject = principal.subject(),
                client_id = principal.client_id(),
                issuer = principal.issuer(),
                resource,
                action,
                required_scopes = %required_scopes.join(" "),
            ),
            AuditEvent::PolicyDecision {
                principal,
                resource,
                action,
                outcome,
                reason,
                policy_version,
                duration_us,
                cached,
            } => tracing::info!(
                target: TARGET,
                event,
                subject = principal.map_or("", |p| p.subject()),
                issuer = principal.map_or("", |p| p.issuer()),
                resource,
                action,
                outcome = outcome.as_str(),
                allowed = outcome == Outcome::Allow,
                reason,
                policy_version,
                duration_us,
                cached,
            ),
            AuditEvent::PolicyReload {
                outcome,
                previous_version,
                policy_version,
                error,
            } => match error {
                None => tracing::info!(
                    target: TARGET,
                    event,
                    outcome = outcome.as_str(),
                    previous_version,
                    policy_version,
                ),
                Some(error) => tracing::error!(
                    target: TARGET,
                    event,
                    outcome = outcome.as_str(),
                    previous_version,
                    policy_version,
                    error = %error,
                ),
            },
            AuditEvent::SecretAccess {
                principal,
                service,
                template,
                path,
                outcome,
                cache,
            } => tracing::info!(
                target: TARGET,
                event,
                subject = principal.map_or("", |p| p.subject()),
                issuer = principal.map_or("", |p| p.issuer()),
                tenant = principal.and_then(|p| p.tenant()).unwrap_or(""),
                service,
                template,
                path = path.unwrap_or(""),
                outcome,
                cache,
            ),
            AuditEvent::TokenExchange {
                principal,
                grant,
                audience,
                outcome,
                cache,
            } => tracing::info!(
                target: TARGET,
                event,
                subject = principal.map_or("", |p| p.subject()),
                issuer = principal.map_or("", |p| p.issuer()),
                grant,
                audience,
                outcome,
                cache,
            ),
            AuditEvent::Confirmation {
                principal,
                resource,
                action,
                step,
                reason,
            } => tracing::info!(
                target: TARGET,
                event,
                step,
                reason,
                subject = principal.subject(),
                client_id = principal.client_id(),
                issuer = principal.issuer(),
                resource,
                action,
            ),
            AuditEvent::Limit {
                principal,
                outcome,
                reason,
                resource,
                retry_after_secs,
            } => tracing::info!(
                target: TARGET,
                event,
                outcome = outcome.as_str(),
                reason,
                subject = principal.subject(),
                client_id = principal.client_id(),
                issuer = principal.issuer(),
                tenant = principal.tenant(),
                resource,
                retry_after_secs,
            ),
            AuditEvent::Arguments {
                principal,
                outcome,
                reason,
                resource,
            }
            | AuditEvent::Definitions {
                principal,
                outcome,
                reason,
                resource,
            } => tracing::info!(
                target: TARGET,
                event,
                outcome = outcome.as_str(),
                reason,
                subject = principal.map(Principal::subject),
                client_id = principal.and_then(Principal::client_id),
                issuer = principal.map(Principal::issuer),
                tenant = principal.and_then(Principal::tenant),
                resource,
            ),
            AuditEvent::OutputRedacted {
                principal,
                rule,
                count,
                resource,
            } => tracing::info!(
                target: TARGET,
                event,
                outcome = Outcome::Allow.as_str(),
                rule,
                count,
                subject = principal.map(Principal::subject),
                client_id = principal.and_then(Principal::client_id),
                issuer = principal.map(Principal::issuer),
                tenant = principal.and_then(Principal::tenant),
                resource,
            ),
            AuditEvent::Revocation {
                outcome,
                reason,
                kind,
                value,
                issuer,
                by,
                revoked_at,
                expires_at,
            } => {
                let issuer = issuer.unwrap_or("");
                let by = by.unwrap_or("");
                if outcome == Outcome::Allow {
                    tracing::info!(target: TARGET, event, outcome = outcome.as_str(), reason, kind, value, issuer, by, revoked_at, expires_at)
                } else {
                    tracing::error!(target: TARGET, event, outcome = outcome.as_str(), reason, kind, value, issuer, by, revoked_at, expires_at)
                }
            }
            AuditEvent::Circuit {
                upstream,
                endpoint,
                state,
                previous,
                failures,
                retry_after,
            } => {
                if state == "open" {
                    tracing::warn!(target: TARGET, event, upstream, endpoint, state, previous, failures, retry_after)
                } else {
                    tracing::info!(target: TARGET, event, upstream, endpoint, state, previous, failures, retry_after)
                }
            }
        }
    }
}

/// Count the event in the metrics (feature `telemetry`).
#[cfg(feature = "telemetry")]
fn record_metrics(event: &AuditEvent<'_>) {
    use crate::telemetry::{KeyValue, client, kv, record_cache};
    let principal_client = |p: Option<&Principal>| client(p.and_then(Principal::client_id));
    let m = crate::telemetry::instruments();
    let name = KeyValue::new("event", event.name());
    match *event {
        AuditEvent::Authn {
            outcome,
            reason,
            status,
            caller,
            cached,
        } => {
            let (outcome_kv, reason, client) = (
                KeyValue::new("outcome", outcome.as_str()),
                kv("reason", reason),
                client(caller.client_id),
            );
            match status {
                Some(status) => m.requests.add(
                    1,
                    &[outcome_kv, reason, client, KeyValue::new("status", i64::from(status))],
                ),
                None => m.requests.add(1, &[outcome_kv, reason, client]),
            }
            if outcome == Outcome::Allow {
                record_cache("token", if cached { "hit" } else { "miss" });
            }
            m.audit_events
                .add(1, &[name, KeyValue::new("outcome", outcome.as_str())]);
        }
        AuditEvent::Session { reason, .. } => {
            m.requests.add(
                1,
                &[KeyValue::new("outcome", "deny"), kv("reason", reason), client(None)],
            );
            m.audit_events.add(1, &[name, KeyValue::new("outcome", "deny")]);
        }
        AuditEvent::StepUp { principal, .. } => {
            let principal = Some(principal);
            m.requests.add(
                1,
                &[
                    KeyValue::new("outcome", "deny"),
                    KeyValue::new("reason", "insufficient_scope"),
                    KeyValue::new("status", 403_i64),
                    principal_client(principal),
                ],
            );
            m.audit_events.add(1, &[name, KeyValue::new("outcome", "deny")]);
        }
        AuditEvent::PolicyDecision {
            principal,
            resource,
            action,
            outcome,
            duration_us,
            cached,
            ..
        } => {
            let outcome_kv = KeyValue::new("outcome", outcome.as_str());
            m.decisions.add(
                1,
                &[outcome_kv.clone(), kv("action", action), principal_client(principal)],
            );
            m.decision_duration
                .record(duration_us as f64 / 1_000_000.0, std::slice::from_ref(&outcome_kv));
            if outcome != Outcome::Allow {
                m.denials.add(
                    1,
                    &[
                        kv("subject", principal.map_or("unknown", Principal::subject)),
                        principal_client(principal),
                        kv("resource", resource),
                        kv("action", action),
                    ],
                );
            }
            record_cache("policy", if cached { "hit" } else { "miss" });
            m.audit_events.add(1, &[name, outcome_kv]);
        }
        AuditEvent::Limit {
            principal,
            outcome,
            reason,
            ..
        } => {
            let principal = Some(principal);
            let outcome_kv = KeyValue::new("outcome", outcome.as_str());
            m.limit_hits.add(
                1,
                &[outcome_kv.clone(), kv("reason", reason), principal_client(principal)],
            );
            m.audit_events.add(1, &[name, outcome_kv]);
        }
        AuditEvent::SecretAccess {
            service,
            outcome,
            cache,
            ..
        } => {
            m.secret_reads.add(1, &[kv("outcome", outcome), kv("service", service)]);
            if cache != "none" {
                record_cache("secret", cache);
            }
            m.audit_events.add(1, &[name, kv("outcome", outcome)]);
        }
        AuditEvent::TokenExchange { outcome, cache, .. } => {
            m.exchanges.add(1, &[kv("outcome", outcome)]);
            if cache != "none" {
                record_cache("exchange", cache);
            }
            m.audit_events.add(1, &[name, kv("outcome", outcome)]);
        }
        AuditEvent::Circuit {
            upstream,
            endpoint,
            state,
            ..
        } => {
            let level = match state {
                "open" => 2,
                "half_open" => 1,
                _ => 0,
            };
            m.breaker_state
                .record(level, &[kv("upstream", upstream), kv("endpoint", endpoint)]);
            m.breaker_transitions
                .add(1, &[kv("upstream", upstream), kv("state", state)]);
            m.audit_events.add(1, &[name]);
        }
        AuditEvent::OutputRedacted {
            rule, count, resource, ..
        } => {
            m.redactions
                .add(count as u64, &[kv("rule", rule), kv("resource", resource)]);
            m.audit_events.add(1, &[name, KeyValue::new("outcome", "allow")]);
        }
        AuditEvent::PolicyReload { outcome, .. }
        | AuditEvent::Arguments { outcome, .. }
        | AuditEvent::Definitions { outcome, .. }
        | AuditEvent::Revocation { outcome, .. } => {
            m.audit_events
                .add(1, &[name, KeyValue::new("outcome", outcome.as_str())]);
        }
        AuditEvent::Confirmation { .. } => {
            m.audit_events.add(1, &[name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of each kind. The match has no wildcard: a new variant
    /// fails to compile here until it has a sample (then `ecs::EVENTS` and
    /// docs/audit-schema.md are checked for it).
    pub(super) fn every_event_name() -> Vec<&'static str> {
        let p = Principal::unverified("i", "s").build();
        let samples = [
            AuditEvent::Authn {
                outcome: Outcome::Allow,
                reason: "valid_token",
                status: None,
                caller: Caller::from(&p),
                cached: false,
            },
            AuditEvent::Session {
                reason: "session_not_owned",
                subject: None,
            },
            AuditEvent::StepUp {
                principal: &p,
                resource: "t",
                action: "tools/call",
                required_scopes: &[],
            },
            AuditEvent::PolicyDecision {
                principal: None,
                resource: "",
                action: "tools/list",
                outcome: Outcome::Allow,
                reason: "",
                policy_version: "",
                duration_us: 0,
                cached: false,
            },
            AuditEvent::PolicyReload {
                outcome: Outcome::Allow,
                previous_version: "a",
                policy_version: "b",
                error: None,
            },
            AuditEvent::SecretAccess {
                principal: None,
                service: "s",
                template: "t",
                path: None,
                outcome: "ok",
                cache: "none",
            },
            AuditEvent::TokenExchange {
                principal: None,
                grant: "client_credentials",
                audience: "a",
                outcome: "ok",
                cache: "none",
            },
            AuditEvent::Confirmation {
                principal: &p,
                resource: "t",
                action: "tools/call",
                step: "asked",
                reason: "",
            },
            AuditEvent::Limit {
                principal: &p,
                outcome: Outcome::Deny,
                reason: "rate",
                resource: "",
                retry_after_secs: 1,
            },
            AuditEvent::Arguments {
                principal: None,
                outcome: Outcome::Deny,
                reason: "arguments_invalid",
                resource: "t",
            },
            AuditEvent::Definitions {
                principal: None,
                outcome: Outcome::Deny,
                reason: "definition_not_pinned",
                resource: "t",
            },
            AuditEvent::OutputRedacted {
                principal: None,
                rule: "jwt",
                count: 1,
                resource: "t",
            },
            AuditEvent::Revocation {
                outcome: Outcome::Allow,
                reason: "revoked",
                kind: "subject",
                value: "v",
                issuer: None,
                by: None,
                revoked_at: 1,
                expires_at: 2,
            },
            AuditEvent::Circuit {
                upstream: "redis",
                endpoint: "e",
                state: "open",
                previous: "closed",
                failures: 1,
                retry_after: None,
            },
        ];
        let mut seen = [false; 14];
        for event in &samples {
            let i = match event {
                AuditEvent::Authn { .. } => 0,
                AuditEvent::Session { .. } => 1,
                AuditEvent::StepUp { .. } => 2,
                AuditEvent::PolicyDecision { .. } => 3,
                AuditEvent::PolicyReload { .. } => 4,
                AuditEvent::SecretAccess { .. } => 5,
                AuditEvent::TokenExchange { .. } => 6,
                AuditEvent::Confirmation { .. } => 7,
                AuditEvent::Limit { .. } => 8,
                AuditEvent::Arguments { .. } => 9,
                AuditEvent::Definitions { .. } => 10,
                AuditEvent::OutputRedacted { .. } => 11,
                AuditEvent::Revocation { .. } => 12,
                AuditEvent::Circuit { .. } => 13,
            };
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "a sample of every event");
        samples.iter().map(AuditEvent::name).collect()
    }

    #[test]
    fn every_event_has_a_distinct_name() {
        let mut names = every_event_name();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn names_are_stable() {
        // Every event's name, pinned (a rename is a breaking change).
        assert_eq!(
            every_event_name(),
            [
                "authn",
                "session",
                "authz",
                "policy_decision",
                "policy_reload",
                "secret_access",
                "token_exchange",
                "confirmation",
                "limit",
                "arguments",
                "definitions",
                "output_redacted",
                "revocation",
                "circuit",
            ]
        );
        assert_eq!(Outcome::Error.as_str(), "error");
    }
}
