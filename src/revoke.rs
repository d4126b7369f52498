//! Revocations: a kill switch for tokens that are still valid.
//!
//! A [`Revocation`] names a subject, an OAuth client id, a tenant or a single
//! token (`jti`), optionally only as issued by one issuer. Once revoked, every
//! token that matches it and was issued (`iat`) **at or before** the
//! revocation time is refused with 401 `invalid_token` (`error_description`
//! "token revoked", audit reason `revoked`), on every request: tokens served
//! from the verified-token cache and introspected tokens too. Tokens issued
//! later work again, so a user whose sessions were killed can sign in anew.
//! `iat` has whole-second granularity: a token issued in the same second as
//! the revocation is refused too.
//!
//! A matching token **without `iat`** cannot prove it is newer than the
//! revocation and is refused while the revocation lives. Once it has expired
//! (see below) such a token is judged by its other claims again: give
//! revocable tokens an `iat` (every mainstream identity provider does).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use rmcp_guard::revoke::Revocation;
//! use rmcp_guard::store::SharedStore;
//! use rmcp_guard::{AuthError, Principal, TokenRejection};
//!
//! let store = SharedStore::memory();
//! // The same handle the `Guard` built on `store` checks every request with.
//! let revocations = store.revocations();
//! revocations
//!     .revoke(Revocation::subject("mallory").issuer("https://idp.example.com"))
//!     .await?;
//! let mallory = Principal::unverified("https://idp.example.com", "mallory")
//!     .claims(serde_json::json!({"iat": 1_000}).as_object().unwrap().clone())
//!     .build();
//! let refused = revocations.check(&mallory).unwrap_err();
//! assert_eq!(refused, AuthError::InvalidToken(TokenRejection::Revoked));
//! assert_eq!(refused.status(), 401);
//! # Ok(()) }
//! ```
//!
//! # Where revocations live
//!
//! One [`Revocations`] handle per [`SharedStore`]
//! ([`SharedStore::revocations`]): the application revokes through it and
//! [`Guard`](crate::Guard) checks with it.
//!
//! - **In memory** (one replica): a local table, effective at once.
//! - **With Redis** (a fleet): [`Revocations::revoke`] writes the revocation
//!   to Redis (one script: a sorted set `<prefix>revocations:expiry` scored by
//!   expiry and a hash `<prefix>revocations:at` holding the revocation time,
//!   both with an `EXPIREAT` of the latest expiry) and publishes it on the
//!   channel `<prefix>revocations:channel`. Every replica keeps a local copy,
//!   synced by one background task on a dedicated pub/sub connection: on
//!   every (re)connect it subscribes, then reads the whole set (resync), then
//!   applies what is published; a `PING` on that connection every 250 ms
//!   proves the subscription alive. The per-request check is a local lookup:
//!   no round trip.
//!
//! **How fast.** A revocation reaches every replica in one publish (well
//! under a second on a healthy network). A replica whose subscription has
//! not been proven alive for more than [`STALE_AFTER`] (1 s) cannot know
//! whether it missed one, and **fails closed**: every request gets 503 with
//! `Retry-After: 1` and the audit reason `revocations_unavailable`
//! ([`AuthError::RevocationsUnavailable`]), until it has reconnected (backoff
//! 50 ms doubling to 2 s) and resynced, by itself. A replica starting up
//! answers 503 until its first resync, a few milliseconds. The opt-out,
//! which keeps serving on the last known set while Redis is unreachable, is
//! [`Revocations::dangerous`]`().`[`allow_when_stale`](DangerousRevocations::allow_when_stale).
//! The background task stops when the last handle (and the last clone of
//! the store) is dropped.
//!
//! # Expiry and bounds
//!
//! A revocation is kept until the longest token it could match has expired:
//! its time plus the longest token lifetime the resource server accepts
//! ([`ResourceServerBuilder::max_token_lifetime`](crate::oauth::ResourceServerBuilder::max_token_lifetime),
//! 24 h by default) plus the clock-skew leeway; [`DEFAULT_RETENTION`] until a
//! [`Guard`](crate::Guard) with a longer bound uses the handle. In Redis both
//! keys carry that expiry.
//!
//! The local table holds at most [`DEFAULT_CAPACITY`] (100 000) live
//! revocations, each about 110 bytes plus the lengths of its value and
//! issuer (`cargo bench --bench revoke` measured 13 MB resident for 100 000
//! subjects of 23 bytes). A revocation is
//! never dropped to make room: one that does not fit is still written to
//! Redis (it wins), and checks **fail closed** (503,
//! `revocations_unavailable`) until it would have expired or a resync fits
//! the table. Revoke narrowly (a tenant rather than its every user).
//!
//! Clocks: the revocation time is the clock of the replica that revoked,
//! compared with the issuer's `iat`; keep them in sync (NTP).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::audit::{AuditEvent, Outcome};
use crate::error::{AuthError, TokenRejection};
use crate::principal::Principal;
use crate::store::{SharedStore, StoreError};

/// The most live revocations one replica holds. Defaults to this: 100 000.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How long a Redis-backed replica trusts its local copy without proof that
/// its subscription is alive: 1 second. Past it, checks fail closed.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// How long a revocation is kept unless a [`Guard`](crate::Guard) needs
/// longer: the default longest token lifetime (24 h) plus the longest
/// clock-skew leeway (5 min).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600 + 300);

/// The longest value or issuer a revocation may name, in bytes.
const MAX_VALUE_BYTES: usize = 1024;

/// What a [`Revocation`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationKind {
    /// Every token of a subject (`sub`).
    Subject,
    /// Every token issued to an OAuth client (`client_id`, else `azp`).
    Client,
    /// Every token of a tenant (the configured tenant claim).
    Tenant,
    /// One token (`jti`).
    Jti,
}

impl RevocationKind {
    /// `subject`, `client_id`, `tenant` or `jti`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Subject => "subject",
            RevocationKind::Client => "client_id",
            RevocationKind::Tenant => "tenant",
            RevocationKind::Jti => "jti",
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the fleet sync
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "subject" => RevocationKind::Subject,
            "client_id" => RevocationKind::Client,
            "tenant" => RevocationKind::Tenant,
            "jti" => RevocationKind::Jti,
            _ => return None,
        })
    }

    /// The value of this kind a principal carries.
    fn of(self, principal: &Principal) -> Option<&str> {
        match self {
            RevocationKind::Subject => Some(principal.subject()),
            RevocationKind::Client => principal.client_id(),
            RevocationKind::Tenant => principal.tenant(),
            RevocationKind::Jti => principal.token_id(),
        }
    }
}

impl fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to revoke; see the [module docs](self).
///
/// ```
/// use rmcp_guard::revoke::{Revocation, RevocationKind};
///
/// let r = Revocation::client("leaky-ci").issuer("https://idp.example.com");
/// assert_eq!(r.kind(), RevocationKind::Client);
/// assert_eq!(r.value(), "leaky-ci");
/// assert_eq!(r.issuer_scope(), Some("https://idp.example.com"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Revocation {
    kind: RevocationKind,
    value: String,
    issuer: Option<String>,
    by: Option<String>,
}

impl Revocation {
    fn new(kind: RevocationKind, value: impl Into<String>) -> Self {
        Revocation {
            kind,
            value: value.into(),
            issuer: None,
            by: None,
        }
    }

    /// Every token of the subject `sub`.
    pub fn subject(sub: impl Into<String>) -> Self {
        Revocation::new(RevocationKind::Subject, sub)
    }

    /// Every token issued to the OAuth client `client_id`.
    pub fn client(client_id: impl Into<String>) -> Self {
        Revocation::new(RevocationKind::Client, client_id)
    }

    /// Every token of the tenant `tenant`.
    pub fn tenant(tenant: impl Into<String>) -> Self {
        Revocation::new(RevocationKind::Tenant, tenant)
    }

    /// The one token whose `jti` is `jti`.
    pub fn jti(jti: impl Into<String>) -> Self {
        Revocation::new(RevocationKind::Jti, jti)
    }

    /// Only tokens of this issuer (`iss`, exactly as configured). Defaults to
    /// every trusted issuer.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Who asked for it (an administrator's subject), for the audit event
    /// only. Defaults to none.
    pub fn requested_by(mut self, who: impl Into<String>) -> Self {
        self.by = Some(who.into());
        self
    }

    /// What it names.
    pub fn kind(&self) -> RevocationKind {
        self.kind
    }

    /// The subject, client id, tenant or `jti`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The issuer it is limited to, if any.
    pub fn issuer_scope(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    fn check(&self) -> Result<(), RevokeError> {
        if self.value.is_empty() || self.issuer.as_deref().is_some_and(str::is_empty) {
            return Err(RevokeError::Invalid("empty value or issuer"));
        }
        if self.value.len() > MAX_VALUE_BYTES || self.issuer.as_deref().is_some_and(|i| i.len() > MAX_VALUE_BYTES) {
            return Err(RevokeError::Invalid("value or issuer longer than 1024 bytes"));
        }
        Ok(())
    }
}

/// A revocation in force: returned by [`Revocations::revoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Revoked {
    /// What was revoked.
    pub revocation: Revocation,
    /// Tokens issued (`iat`) at or before this time, in seconds since the
    /// Unix epoch, are refused.
    pub revoked_at: u64,
    /// When the revocation is forgotten (every token it could match has
    /// expired by then), in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why [`Revocations::revoke`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// The revocation names nothing usable.
    #[error("invalid revocation: {0}")]
    Invalid(&'static str),
    /// Redis did not store it: this replica enforces it, the others may not.
    /// Revoke again.
    #[error("the revocation was not shared with the fleet: {0}")]
    Store(StoreError),
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One live revocation in the local table (the value is the table's key).
#[derive(Debug, Clone)]
struct Entry {
    kind: RevocationKind,
    issuer: Option<Box<str>>,
    revoked_at: u64,
    expires_at: u64,
}

/// The local copy, bounded by `capacity`.
#[derive(Debug)]
struct Table {
    by_value: HashMap<Box<str>, Vec<Entry>>,
    len: usize,
    capacity: usize,
    /// A live revocation did not fit: checks fail closed until then.
    overflow_until: u64,
}

/// What [`Table::insert`] did.
#[derive(Debug, PartialEq, Eq)]
enum Inserted {
    Stored,
    /// No room: the table is overflowed (checks fail closed).
    Overflow,
}

impl Table {
    fn new(capacity: usize) -> Self {
        Table {
            by_value: HashMap::new(),
            len: 0,
            capacity,
            overflow_until: 0,
        }
    }

    /// Add a revocation, or make an existing one later (the latest time
    /// covers every earlier one).
    fn insert(
        &mut self,
        kind: RevocationKind,
        issuer: Option<&str>,
        value: &str,
        at: u64,
        exp: u64,
        now: u64,
    ) -> Inserted {
        if exp <= now {
            return Inserted::Stored;
        }
        if let Some(entries) = self.by_value.get_mut(value)
            && let Some(entry) = entries
                .iter_mut()
                .find(|e| e.kind == kind && e.issuer.as_deref() == issuer)
        {
            entry.revoked_at = entry.revoked_at.max(at);
            entry.expires_at = entry.expires_at.max(exp);
            return Inserted::Stored;
        }
        if self.len >= self.capacity {
            self.purge(now);
        }
        if self.len >= self.capacity {
            // Never drop a live revocation: refuse every check instead
            // until this one would have expired.
            self.overflow_until = self.overflow_until.max(exp);
            return Inserted::Overflow;
        }
        let entries = self.by_value.entry(value.into()).or_default();
        // Most values carry one revocation: no room for four.
        entries.reserve_exact(1);
        entries.push(Entry {
            kind,
            issuer: issuer.map(Into::into),
            revoked_at: at,
            expires_at: exp,
        });
        self.len += 1;
        Inserted::Stored
    }

    /// Forget what has expired.
    fn purge(&mut self, now: u64) {
        let mut len = 0;
        self.by_value.retain(|_, entries| {
            entries.retain(|e| e.expires_at > now);
            len += entries.len();
            !entries.is_empty()
        });
        self.len = len;
        if self.overflow_until <= now {
            self.overflow_until = 0;
        }
    }

    /// Whether a live revocation refuses `principal`'s token.
    fn refuses(&self, principal: &Principal, now: u64) -> bool {
        let iat = principal.issued_at_unix();
        let issuer = principal.issuer();
        let mut seen: [Option<&str>; 4] = [None; 4];
        for (slot, kind) in [
            RevocationKind::Subject,
            RevocationKind::Client,
            RevocationKind::Tenant,
            RevocationKind::Jti,
        ]
        .into_iter()
        .enumerate()
        {
            let Some(value) = kind.of(principal) else { continue };
            // The same string under two kinds is one lookup.
            if seen[..slot].contains(&Some(value)) {
                continue;
            }
            seen[slot] = Some(value);
            let Some(entries) = self.by_value.get(value) else {
                continue;
            };
            for entry in entries {
                if entry.expires_at > now
                    && kind_matches(entry.kind, value, principal)
                    && entry.issuer.as_deref().is_none_or(|i| i == issuer)
                    && iat.is_none_or(|iat| iat <= entry.revoked_at)
                {
                    return true;
                }
            }
        }
        false
    }
}

/// Whether `principal` carries `value` as its `kind`.
fn kind_matches(kind: RevocationKind, value: &str, principal: &Principal) -> bool {
    kind.of(principal) == Some(value)
}

/// State shared by the handles and the sync task.
#[derive(Debug)]
struct State {
    table: RwLock<Table>,
    /// Live entries, or overflow: zero means nothing to look up.
    populated: AtomicUsize,
    retention_secs: AtomicU64,
    allow_when_stale: AtomicBool,
    /// Milliseconds since `epoch` (+1) when the subscription was last proven
    /// alive; 0: never.
    alive_at: AtomicU64,
    epoch: Instant,
}

impl State {
    fn new(capacity: usize) -> Self {
        State {
            table: RwLock::new(Table::new(capacity)),
            populated: AtomicUsize::new(0),
            retention_secs: AtomicU64::new(DEFAULT_RETENTION.as_secs()),
            allow_when_stale: AtomicBool::new(false),
            alive_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent
        // in a way that allows more than before: keep using it.
        self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish_len(&self, table: &Table) {
        self.populated
            .store(table.len + usize::from(table.overflow_until != 0), Ordering::Release);
    }

    fn insert(&self, kind: RevocationKind, issuer: Option<&str>, value: &str, at: u64, exp: u64) -> Inserted {
        let mut table = self.write();
        let inserted = table.insert(kind, issuer, value, at, exp, now_unix());
        self.publish_len(&table);
        inserted
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn mark_alive(&self) {
        self.alive_at.store(self.millis().saturating_add(1), Ordering::Release);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the fleet sync
    fn fresh(&self) -> bool {
        let alive = self.alive_at.load(Ordering::Acquire);
        alive != 0 && self.millis().saturating_add(1).saturating_sub(alive) <= STALE_AFTER.as_millis() as u64
    }
}

/// The revocations of one [`SharedStore`]; see the [module docs](self).
/// Cheap to clone: clones share one set.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Handle>,
}

struct Handle {
    state: Arc<State>,
    #[cfg(feature = "redis")]
    redis: Option<sync::Fleet>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("live", &self.len())
            .field("shared", &self.is_shared())
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// The revocations of this store: the same set for every call and every
    /// clone of the store, so what the application revokes the
    /// [`Guard`](crate::Guard) built on this store refuses. See
    /// [`revoke`](crate::revoke).
    pub fn revocations(&self) -> Revocations {
        self.handle(|| Revocations::for_store(self))
    }
}

impl Revocations {
    fn for_store(store: &SharedStore) -> Self {
        let state = Arc::new(State::new(DEFAULT_CAPACITY));
        #[cfg(feature = "redis")]
        let redis = store
            .redis_store()
            .map(|redis| sync::Fleet::new(redis.clone(), state.clone()));
        #[cfg(not(feature = "redis"))]
        let _ = store;
        Revocations {
            inner: Arc::new(Handle {
                state,
                #[cfg(feature = "redis")]
                redis,
            }),
        }
    }

    /// Whether revocations are shared with other replicas (Redis).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.inner.redis.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Live revocations in this replica's table (expired ones may be counted
    /// until they are purged).
    pub fn len(&self) -> usize {
        self.inner.state.read().len
    }

    /// Whether this replica's table holds no revocation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Revoke: every token matching `revocation` issued at or before now is
    /// refused from now on (on every replica within [`STALE_AFTER`]). This
    /// replica enforces it before this returns; with Redis it is written
    /// and published first. Emits the audit event `revocation`.
    ///
    /// # Errors
    ///
    /// [`RevokeError::Invalid`] for an empty or over-long value or issuer;
    /// [`RevokeError::Store`] when Redis did not take it (this replica still
    /// enforces it; revoke again).
    pub async fn revoke(&self, revocation: Revocation) -> Result<Revoked, RevokeError> {
        revocation.check()?;
        let state = &self.inner.state;
        let revoked_at = now_unix();
        let expires_at = revoked_at.saturating_add(state.retention_secs.load(Ordering::Relaxed));
        let kind = revocation.kind;
        let issuer = revocation.issuer.as_deref();
        let inserted = state.insert(kind, issuer, &revocation.value, revoked_at, expires_at);
        #[cfg(feature = "redis")]
        let shared = match &self.inner.redis {
            Some(fleet) => fleet
                .publish(kind, issuer, &revocation.value, revoked_at, expires_at)
                .await
                .map_err(RevokeError::Store),
            None => Ok(()),
        };
        #[cfg(not(feature = "redis"))]
        let shared: Result<(), RevokeError> = Ok(());
        let outcome = match (&shared, &inserted) {
            (Ok(()), Inserted::Stored) => Outcome::Allow,
            _ => Outcome::Error,
        };
        let reason = match (&shared, &inserted) {
            (Err(RevokeError::Store(e)), _) => e.reason(),
            (_, Inserted::Overflow) => "revocations_full",
            _ => "revoked",
        };
        AuditEvent::Revocation {
            outcome,
            reason,
            kind: kind.as_str(),
            value: &revocation.value,
            issuer,
            by: revocation.by.as_deref(),
            revoked_at,
            expires_at,
        }
        .emit();
        if inserted == Inserted::Overflow {
            tracing::error!(
                target: "rmcp_guard::revoke",
                capacity = DEFAULT_CAPACITY,
                "revocation table full: every request is refused (503) until revocations expire"
            );
        }
        shared?;
        Ok(Revoked {
            revocation,
            revoked_at,
            expires_at,
        })
    }

    /// Whether `principal`'s token may be used: `Ok`, 401 `invalid_token`
    /// ([`TokenRejection::Revoked`]) when a live revocation matches it, or
    /// 503 ([`AuthError::RevocationsUnavailable`]) when this replica cannot
    /// know (its copy is stale, or the table overflowed). A local lookup;
    /// an atomic load when nothing is revoked.
    ///
    /// # Errors
    ///
    /// As above.
    pub fn check(&self, principal: &Principal) -> Result<(), AuthError> {
        let state = &self.inner.state;
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.inner.redis {
            fleet.ensure_running();
            if !state.fresh() && !state.allow_when_stale.load(Ordering::Relaxed) {
                tracing::debug!(target: "rmcp_guard::revoke", "revocations stale: refusing (fail closed)");
                return Err(AuthError::RevocationsUnavailable { retry_after_secs: 1 });
            }
        }
        if state.populated.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let now = now_unix();
        let table = state.read();
        if table.overflow_until > now && !state.allow_when_stale.load(Ordering::Relaxed) {
            return Err(AuthError::RevocationsUnavailable { retry_after_secs: 1 });
        }
        if table.refuses(principal, now) {
            return Err(TokenRejection::Revoked.into());
        }
        Ok(())
    }

    /// Keep revocations at least `retention` (the longest token lifetime a
    /// resource server accepts, plus its leeway); the longest asked for wins.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // the bearer layer
    pub(crate) fn retain_for(&self, retention: Duration) {
        self.inner
            .state
            .retention_secs
            .fetch_max(retention.as_secs().saturating_add(1), Ordering::Relaxed);
    }

    /// How long a revocation made now is kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.inner.state.retention_secs.load(Ordering::Relaxed))
    }

    /// Settings that weaken a default, named so a reviewer sees them. They
    /// apply to the shared set (every clone and the store's handle).
    pub fn dangerous(self) -> DangerousRevocations {
        DangerousRevocations { revocations: self }
    }

    /// Whether this replica has proven its Redis subscription alive within
    /// [`STALE_AFTER`] (always `true` in memory).
    pub fn is_fresh(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.inner.redis {
            fleet.ensure_running();
            return self.inner.state.fresh();
        }
        true
    }
}

/// The settings of [`Revocations::dangerous`].
#[derive(Debug)]
#[must_use]
pub struct DangerousRevocations {
    revocations: Revocations,
}

impl DangerousRevocations {
    /// Keep checking against the last known set while Redis is unreachable,
    /// instead of refusing every request (503): a revocation made meanwhile
    /// reaches this replica only after it reconnects. Defaults to off (fail
    /// closed).
    pub fn allow_when_stale(self) -> Revocations {
        self.revocations
            .inner
            .state
            .allow_when_stale
            .store(true, Ordering::Relaxed);
        self.revocations
    }
}

/// The message published for one revocation, and the member naming it in
/// Redis: `[kind, issuer or null, value]` (+ `revoked_at`, `expires_at` in a
/// message).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // the fleet sync
fn identity(kind: RevocationKind, issuer: Option<&str>, value: &str) -> String {
    serde_json::json!([kind.as_str(), issuer, value]).to_string()
}

/// An identity (or a message) read back.
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // the fleet sync
#[derive(Debug)]
struct Parsed {
    kind: RevocationKind,
    issuer: Option<String>,
    value: String,
    /// `(revoked_at, expires_at)`, in a message.
    times: Option<(u64, u64)>,
}

/// The parts of an identity (and the times of a message).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // the fleet sync
fn parse_identity(text: &[u8]) -> Option<Parsed> {
    let Value::Array(parts) = serde_json::from_slice::<Value>(text).ok()? else {
        return None;
    };
    let kind = RevocationKind::parse(parts.first()?.as_str()?)?;
    let issuer = match parts.get(1)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => return None,
    };
    let value = parts.get(2)?.as_str()?.to_owned();
    let times = match (
        parts.get(3).and_then(Value::as_u64),
        parts.get(4).and_then(Value::as_u64),
    ) {
        (Some(at), Some(exp)) => Some((at, exp)),
        _ => None,
    };
    Some(Parsed {
        kind,
        issuer,
        value,
        times,
    })
}

#[cfg(feature = "redis")]
mod sync {
    //! The Redis side: the write script, and the task keeping the local copy.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, LazyLock};
    use std::time::Duration;

    use futures_util::StreamExt;
    use redis::Script;

    use super::{Parsed, State, Table, identity, now_unix, parse_identity};
    use crate::revoke::RevocationKind;
    use crate::store::{RedisStore, StoreError};

    const PING_EVERY: Duration = Duration::from_millis(250);
    const PING_TIMEOUT: Duration = Duration::from_millis(500);
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
    const RESYNC_TIMEOUT: Duration = Duration::from_secs(5);
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    const PURGE_EVERY: Duration = Duration::from_secs(10);

    /// Store (keeping the later time), forget the expired (at most 1000 per
    /// call), set both keys to expire with the latest entry, publish.
    /// KEYS: expiry zset, times hash. ARGV: member, revoked_at, expires_at,
    /// now, channel, message.
    static WRITE: LazyLock<Script> = LazyLock::new(|| {
        Script::new(
            r"
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) > old then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, 1000)
for _, m in ipairs(gone) do
  redis.call('HDEL', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('EXPIREAT', KEYS[1], last[2])
  redis.call('EXPIREAT', KEYS[2], last[2])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
",
        )
    });

    /// Every live revocation: `[member, expires_at, revoked_at, ...]`, at
    /// most ARGV[2] of them. KEYS: expiry zset, times hash. ARGV: now, limit.
    static READ: LazyLock<Script> = LazyLock::new(|| {
        Script::new(
            r"
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {}
for i = 1, #members, 2 do
  out[#out + 1] = members[i]
  out[#out + 1] = members[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], members[i]) or '0'
end
return out
",
        )
    });

    /// A replica's link to the fleet: the store, the keys, the task's stop
    /// signal (dropped with the last handle).
    pub(super) struct Fleet {
        redis: Arc<RedisStore>,
        state: Arc<State>,
        keys: Arc<Keys>,
        /// Whether the task runs; cleared by the task when it ends (also when
        /// its runtime shuts down), so the next check starts another.
        running: Arc<AtomicBool>,
        stop: tokio::sync::watch::Sender<()>,
    }

    /// Clears `running` when the task ends, however it ends.
    struct Running(Arc<AtomicBool>);

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }

    pub(super) struct Keys {
        expiry: Vec<u8>,
        times: Vec<u8>,
        channel: Vec<u8>,
    }

    impl Fleet {
        pub(super) fn new(redis: Arc<RedisStore>, state: Arc<State>) -> Self {
            let keys = Arc::new(Keys {
                expiry: redis.key("revocations", b"expiry"),
                times: redis.key("revocations", b"at"),
                channel: redis.key("revocations", b"channel"),
            });
            let (stop, _) = tokio::sync::watch::channel(());
            Fleet {
                redis,
                state,
                keys,
                running: Arc::new(AtomicBool::new(false)),
                stop,
            }
        }

        /// Start the sync task once, from within a tokio runtime.
        pub(super) fn ensure_running(&self) {
            if self.running.load(Ordering::Acquire) {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            if self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            let running = Running(self.running.clone());
            let task = run(
                self.redis.clone(),
                self.state.clone(),
                self.keys.clone(),
                self.stop.subscribe(),
            );
            runtime.spawn(async move {
                let _running = running;
                task.await;
            });
        }

        /// Write one revocation to Redis and publish it.
        pub(super) async fn publish(
            &self,
            kind: RevocationKind,
            issuer: Option<&str>,
            value: &str,
            revoked_at: u64,
            expires_at: u64,
        ) -> Result<(), StoreError> {
            self.ensure_running();
            let member = identity(kind, issuer, value);
            let message = serde_json::json!([kind.as_str(), issuer, value, revoked_at, expires_at]).to_string();
            let mut invocation = WRITE.prepare_invoke();
            invocation
                .key(&self.keys.expiry)
                .key(&self.keys.times)
                .arg(&member)
                .arg(revoked_at)
                .arg(expires_at)
                .arg(now_unix())
                .arg(&self.keys.channel)
                .arg(&message);
            self.redis.invoke::<i64>(invocation).await.map(drop)
        }
    }

    /// Keep the local copy in sync until stopped: connect, subscribe,
    /// resync, apply; reconnect with backoff on any failure.
    async fn run(
        redis: Arc<RedisStore>,
        state: Arc<State>,
        keys: Arc<Keys>,
        mut stop: tokio::sync::watch::Receiver<()>,
    ) {
        let mut backoff = MIN_BACKOFF;
        let mut healthy = true;
        loop {
            let mut synced = false;
            let failure = tokio::select! {
                _ = stop.changed() => return,
                failure = session(&redis, &state, &keys, &mut synced) => failure,
            };
            if synced {
                backoff = MIN_BACKOFF;
            }
            if healthy || synced {
                tracing::warn!(target: "rmcp_guard::revoke", error = %failure, "revocation sync lost; reconnecting (checks fail closed after 1 s)");
            }
            healthy = false;
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn timed<T>(
        limit: Duration,
        what: &'static str,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(limit, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(format!("{what}: {:?}", error.kind())),
            Err(_) => Err(format!("{what}: timed out")),
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(redis: &RedisStore, state: &State, keys: &Keys, synced: &mut bool) -> String {
        let result: Result<(), String> = async {
            let pubsub = timed(CONNECT_TIMEOUT, "connect", redis.client().get_async_pubsub()).await?;
            let (mut sink, mut stream) = pubsub.split();
            timed(CONNECT_TIMEOUT, "subscribe", sink.subscribe(&keys.channel)).await?;
            // Subscribed first, then read: nothing published in between is lost.
            let mut connection = timed(
                CONNECT_TIMEOUT,
                "connect",
                redis.client().get_multiplexed_async_connection(),
            )
            .await?;
            let mut read = READ.prepare_invoke();
            read.key(&keys.expiry)
                .key(&keys.times)
                .arg(now_unix())
                .arg(super::DEFAULT_CAPACITY + 1);
            let all: Vec<Vec<u8>> = timed(RESYNC_TIMEOUT, "resync", read.invoke_async(&mut connection)).await?;
            drop(connection);
            resync(state, &all);
            state.mark_alive();
            *synced = true;
            tracing::info!(target: "rmcp_guard::revoke", live = all.len() / 3, "revocations synced");
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut purge = tokio::time::interval(PURGE_EVERY);
            loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else {
                            return Err("subscription closed".to_owned());
                        };
                        apply(state, message.get_payload_bytes());
                    }
                    _ = ping.tick() => {
                        // Answered in order after every message published
                        // before it: alive and caught up.
                        timed(PING_TIMEOUT, "ping", sink.ping::<redis::Value>()).await?;
                        state.mark_alive();
                    }
                    _ = purge.tick() => {
                        let mut table = state.write();
                        table.purge(now_unix());
                        state.publish_len(&table);
                    }
                }
            }
        }
        .await;
        result.err().unwrap_or_default()
    }

    /// Replace the local copy with Redis's set (authoritative: it holds every
    /// revocation, also one that did not fit the table before).
    fn resync(state: &State, all: &[Vec<u8>]) {
        let now = now_unix();
        let capacity = state.read().capacity;
        let mut table = Table::new(capacity);
        for triple in all.chunks_exact(3) {
            let Some(Parsed {
                kind, issuer, value, ..
            }) = parse_identity(&triple[0])
            else {
                continue;
            };
            let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok().and_then(|s| s.parse::<f64>().ok());
            let (Some(exp), Some(at)) = (number(&triple[1]), number(&triple[2])) else {
                continue;
            };
            table.insert(kind, issuer.as_deref(), &value, at as u64, exp as u64, now);
        }
        let mut current = state.write();
        *current = table;
        state.publish_len(&current);
        if current.overflow_until != 0 {
            tracing::error!(target: "rmcp_guard::revoke", capacity, "revocation table full: every request is refused (503) until revocations expire");
        }
    }

    /// One published revocation.
    fn apply(state: &State, payload: &[u8]) {
        match parse_identity(payload) {
            Some(Parsed {
                kind,
                issuer,
                value,
                times: Some((at, exp)),
            }) => {
                state.insert(kind, issuer.as_deref(), &value, at, exp);
            }
            _ => tracing::warn!(target: "rmcp_guard::revoke", "unreadable revocation message ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn principal(sub: &str, iat: Option<u64>) -> crate::principal::PrincipalBuilder {
        let mut claims = serde_json::Map::new();
        if let Some(iat) = iat {
            claims.insert("iat".into(), json!(iat));
        }
        claims.insert("jti".into(), json!(format!("jti-{sub}")));
        Principal::unverified("https://idp", sub).claims(claims)
    }

    #[test]
    fn a_revocation_refuses_tokens_issued_at_or_before_it_only() {
        let mut t = Table::new(10);
        let now = 1_000;
        t.insert(RevocationKind::Subject, None, "alice", 900, 2_000, now);
        assert!(t.refuses(&principal("alice", Some(899)).build(), now));
        assert!(t.refuses(&principal("alice", Some(900)).build(), now));
        assert!(!t.refuses(&principal("alice", Some(901)).build(), now));
        // No iat: cannot prove it is newer.
        assert!(t.refuses(&principal("alice", None).build(), now));
        assert!(!t.refuses(&principal("bob", Some(1)).build(), now));
        // Expired revocations refuse nothing.
        assert!(!t.refuses(&principal("alice", Some(1)).build(), 2_000));
    }

    #[test]
    fn kinds_and_issuers_match_exactly() {
        let mut t = Table::new(10);
        let now = 1_000;
        t.insert(RevocationKind::Client, Some("https://idp"), "ci", 900, 2_000, now);
        t.insert(RevocationKind::Tenant, None, "globex", 900, 2_000, now);
        t.insert(RevocationKind::Jti, None, "jti-carol", 900, 2_000, now);
        // A subject named like a revoked client is not that client.
        assert!(!t.refuses(&principal("ci", Some(1)).build(), now));
        assert!(t.refuses(&principal("x", Some(1)).client_id("ci").build(), now));
        let other_issuer = Principal::unverified("https://other", "x").client_id("ci").build();
        assert!(!t.refuses(&other_issuer, now));
        assert!(t.refuses(&principal("y", Some(1)).tenant("globex").build(), now));
        assert!(!t.refuses(&principal("y", Some(1)).tenant("acme").build(), now));
        assert!(t.refuses(&principal("carol", Some(1)).build(), now));
        assert!(!t.refuses(&principal("dave", Some(1)).build(), now));
    }

    #[test]
    fn a_later_revocation_of_the_same_thing_extends_it() {
        let mut t = Table::new(10);
        t.insert(RevocationKind::Subject, None, "a", 100, 200, 50);
        t.insert(RevocationKind::Subject, None, "a", 150, 250, 50);
        t.insert(RevocationKind::Subject, None, "a", 120, 220, 50);
        assert_eq!(t.len, 1);
        let e = &t.by_value["a"][0];
        assert_eq!((e.revoked_at, e.expires_at), (150, 250));
    }

    #[test]
    fn a_full_table_drops_nothing_live_and_fails_closed_until_it_expires() {
        let mut t = Table::new(2);
        assert_eq!(
            t.insert(RevocationKind::Subject, None, "a", 1, 100, 10),
            Inserted::Stored
        );
        assert_eq!(
            t.insert(RevocationKind::Subject, None, "b", 1, 50, 10),
            Inserted::Stored
        );
        assert_eq!(
            t.insert(RevocationKind::Subject, None, "c", 1, 300, 10),
            Inserted::Overflow
        );
        assert_eq!(t.len, 2);
        assert_eq!(t.overflow_until, 300);
        // Once "b" expired there is room again.
        assert_eq!(
            t.insert(RevocationKind::Subject, None, "d", 1, 400, 60),
            Inserted::Stored
        );
        assert_eq!(t.len, 2);
        t.purge(299);
        assert_eq!(t.overflow_until, 300, "still failing closed for the dropped one");
        t.purge(300);
        assert_eq!(t.overflow_until, 0);
    }

    #[tokio::test]
    async fn the_store_hands_out_one_set_and_checks_fail_closed_when_full() {
        let store = SharedStore::memory();
        let a = store.revocations();
        let b = store.clone().revocations();
        assert!(!a.is_shared() && a.is_fresh());
        assert_eq!(a.retention(), DEFAULT_RETENTION);
        assert_eq!(a.inner.state.read().capacity, 100_000);
        assert_eq!(STALE_AFTER, Duration::from_secs(1));
        assert!(!a.inner.state.allow_when_stale.load(Ordering::Relaxed));
        let revoked = a
            .revoke(Revocation::tenant("globex").requested_by("root"))
            .await
            .unwrap();
        assert_eq!(revoked.expires_at - revoked.revoked_at, DEFAULT_RETENTION.as_secs());
        assert_eq!(b.len(), 1);
        let p = principal("x", Some(revoked.revoked_at)).tenant("globex").build();
        assert_eq!(b.check(&p), Err(AuthError::InvalidToken(TokenRejection::Revoked)));
        // Another store is another set.
        assert!(SharedStore::memory().revocations().check(&p).is_ok());
        assert!(matches!(
            a.revoke(Revocation::subject("")).await,
            Err(RevokeError::Invalid(_))
        ));
        assert!(matches!(
            a.revoke(Revocation::subject("x").issuer("i".repeat(2000))).await,
            Err(RevokeError::Invalid(_))
        ));
        // Retention only grows.
        a.retain_for(Duration::from_secs(10));
        assert_eq!(a.retention(), DEFAULT_RETENTION);
        a.retain_for(Duration::from_secs(48 * 3600));
        assert_eq!(b.retention(), Duration::from_secs(48 * 3600 + 1));

        a.inner.state.write().capacity = 1;
        a.revoke(Revocation::subject("overflow")).await.unwrap();
        let unrelated = principal("unrelated", Some(1)).build();
        assert_eq!(
            a.check(&unrelated),
            Err(AuthError::RevocationsUnavailable { retry_after_secs: 1 })
        );
    }

    #[test]
    fn identities_round_trip_and_garbage_is_refused() {
        let id = identity(RevocationKind::Client, Some("https://idp"), "c\"i");
        let p = parse_identity(id.as_bytes()).unwrap();
        assert_eq!(
            (p.kind, p.issuer.as_deref(), p.value.as_str(), p.times),
            (RevocationKind::Client, Some("https://idp"), "c\"i", None)
        );
        let message = json!(["jti", null, "j", 5, 9]).to_string();
        assert_eq!(parse_identity(message.as_bytes()).unwrap().times, Some((5, 9)));
        for bad in [
            &b"nope"[..],
            b"[]",
            b"[\"who\", null, \"x\"]",
            b"[\"jti\", 3, \"x\"]",
            b"{}",
        ] {
            assert!(parse_identity(bad).is_none());
        }
    }
}
