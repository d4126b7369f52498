//! The token lifecycle: obtain, look up, renew at 2/3 of the TTL, log in
//! again. vaultrs has none of this.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vaultrs::client::VaultClient;

use super::{Connector, Shared, answered, classify, is_forbidden, lookup_self};
use crate::secrets::SecretError;
use crate::telemetry::trace;

/// The shortest wait between two renewal attempts.
const MIN_WAIT: Duration = Duration::from_millis(500);
/// The longest wait between two failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After a failed login, reads that find the token dead fail with the same
/// error for this long instead of each trying to log in (no login storm).
const LOGIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the store knows about its current token.
pub(super) struct State {
    /// TTL at `obtained`; `None` when the token does not expire.
    pub(super) ttl: Option<Duration>,
    pub(super) renewable: bool,
    pub(super) obtained: Instant,
    /// The TTL the token was created with: a renewal that returns much less
    /// means the max TTL is near, and a fresh login is due.
    pub(super) creation_ttl: Option<Duration>,
    pub(super) renewals: u64,
    pub(super) logins: u64,
    /// The last failed login, to rate-limit the next attempts.
    pub(super) login_failure: Option<(Instant, SecretError)>,
}

/// What `lookup-self` said about a fresh token.
pub(super) struct Lookup {
    ttl: Option<Duration>,
    creation_ttl: Option<Duration>,
    renewable: bool,
}

fn secs(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

impl State {
    pub(super) fn from_lookup(l: &Lookup, logins: u64) -> Self {
        State {
            ttl: l.ttl,
            renewable: l.renewable,
            obtained: Instant::now(),
            creation_ttl: l.creation_ttl,
            renewals: 0,
            logins,
            login_failure: None,
        }
    }
}

impl Connector {
    /// A client holding a fresh token (from a login, the token file or the
    /// static token), and what `lookup-self` says about it.
    pub(super) async fn fresh(&self) -> Result<(VaultClient, Lookup), SecretError> {
        let anon = self.client_or_internal("")?;
        let login = if self.auth.asks_vault() {
            let call = trace::Call::start(trace::Fetch::VaultLogin, &self.config.address);
            let login = call.run(self.auth.login(&anon)).await;
            call.finish(!matches!(login, Err(SecretError::Unreachable | SecretError::Sealed)));
            login?
        } else {
            self.auth.login(&anon).await?
        };
        let client = self.client_or_internal(&login.token)?;
        let call = trace::Call::start(trace::Fetch::VaultLookup, &self.config.address);
        let info = call.run(lookup_self(&client)).await;
        call.finish(answered(&info));
        let info = info.map_err(|e| {
            if is_forbidden(&e) {
                SecretError::AuthFailed
            } else {
                classify(&e)
            }
        })?;
        let lookup = Lookup {
            ttl: secs(info.ttl),
            creation_ttl: secs(info.creation_ttl),
            renewable: info.renewable.unwrap_or(false),
        };
        tracing::info!(
            method = self.auth.kind(),
            ttl_s = info.ttl,
            renewable = lookup.renewable,
            "vault token obtained"
        );
        Ok((client, lookup))
    }
}

enum Renewed {
    Done,
    /// Renewed, but the max TTL is near: log in again now.
    NearMax,
}

impl Shared {
    /// Replace the token, unless someone already did since `seen`.
    pub(super) async fn relogin(&self, seen: u64) -> Result<(), SecretError> {
        let _one_at_a_time = self.login_lock.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        if let Some((at, e)) = &self.lock_state().login_failure
            && at.elapsed() < LOGIN_RETRY_AFTER
        {
            return Err(e.clone());
        }
        let (client, lookup) = match self.conn.fresh().await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.lock_state().login_failure = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        *crate::cache::write(&self.client) = Arc::new(client);
        self.generation.fetch_add(1, Ordering::AcqRel);
        {
            let mut s = self.lock_state();
            let logins = s.logins + 1;
            let renewals = s.renewals;
            *s = State::from_lookup(&lookup, logins);
            s.renewals = renewals;
        }
        self.wake.notify_one();
        Ok(())
    }

    async fn renew(&self, seen: u64) -> Result<Renewed, SecretError> {
        let (client, generation) = self.current();
        if generation != seen {
            return Ok(Renewed::Done);
        }
        let call = trace::Call::start(trace::Fetch::VaultRenew, &self.conn.config.address);
        let renewed = call.run(vaultrs::token::renew_self(&*client, None)).await;
        call.finish(answered(&renewed));
        let auth = renewed.map_err(|e| classify(&e))?;
        let ttl = secs(auth.lease_duration);
        let mut s = self.lock_state();
        s.ttl = ttl;
        s.renewable = auth.renewable;
        s.obtained = Instant::now();
        s.renewals += 1;
        tracing::debug!(ttl_s = auth.lease_duration, "vault token renewed");
        let near_max = matches!((ttl, s.creation_ttl), (Some(t), Some(c)) if t < c / 2);
        Ok(if near_max { Renewed::NearMax } else { Renewed::Done })
    }
}

/// The background task: renew at 2/3 of the TTL, log in again when renewal
/// fails or the max TTL is near; back off while Vault is down. Runs until
/// the store drops (aborts) it.
pub(super) async fn run(shared: Arc<Shared>) {
    let can_login = shared.conn.auth.can_login();
    let mut backoff = Duration::from_secs(1);
    loop {
        let (ttl, renewable, obtained) = {
            let s = shared.lock_state();
            (s.ttl, s.renewable, s.obtained)
        };
        let generation = shared.generation.load(Ordering::Acquire);
        let Some(ttl) = ttl else {
            // Does not expire: nothing to do until a re-login changes that.
            shared.wake.notified().await;
            continue;
        };
        if !renewable && !can_login {
            tracing::info!(
                ttl_s = ttl.as_secs(),
                "vault token is not renewable and cannot be replaced; reads fail once it expires"
            );
            shared.wake.notified().await;
            continue;
        }
        let due = (obtained + ttl * 2 / 3).max(Instant::now() + MIN_WAIT);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = shared.wake.notified() => continue,
        }
        let mut login = !renewable;
        if renewable {
            match shared.renew(generation).await {
                Ok(Renewed::Done) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Ok(Renewed::NearMax) => login = true,
                Err(e) => {
                    tracing::warn!(error = %e, "vault token renewal failed");
                    login = true;
                }
            }
        }
        if login && can_login {
            match shared.relogin(generation).await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "vault login failed; retrying"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.wake.notified() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
