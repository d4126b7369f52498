//! The budgets of a fleet: the same GCRA cell and in-flight counts as
//! [`table`](super::table), kept in Redis so that every replica counts
//! against one budget per caller. One Lua script decides one admission in
//! one round trip; permits are given back by a background task that sends
//! them in batches (one script per batch), off the request path.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use redis::Script;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::share::{Release, Shares, Sizes, Slot};
use super::table::{Over, Who};
use super::{CallerLimits, FLEET_LEASE, Rate};
use crate::store::{RedisStore, StoreError};

/// One admission, atomically on the server, on the server's clock (so
/// replicas whose clocks differ still agree). It takes up to `ARGV[6]` rate
/// units and one in-flight slot per id in `ARGV[7..]` (a replica's
/// [share](super::share); one of each for a request on its own):
///
/// 1. The GCRA rate (when `ARGV[1]`, the interval in microseconds, and
///    `ARGV[6]` are not 0): the theoretical arrival time in `KEYS[1]`, which
///    expires when the burst has come back (`PX`). The units that fit the
///    burst now are taken, up to `ARGV[6]`; none: `{1, wait in
///    microseconds}`, and nothing is written. It is written only when the
///    request is admitted (step 2 too): a request refused in flight costs
///    no rate.
/// 2. The requests in flight (when `ARGV[3]`, the bound, is not 0 and ids
///    are given): a sorted set `KEYS[2]` of permit ids scored by the expiry
///    of their lease; short of room for every id, expired ones are dropped,
///    and with room for at least one the ids are added while room lasts,
///    for `ARGV[4]` microseconds (the set expires with its last lease). No
///    room: `{2}`. A stream (`ARGV[5]` = `1`) needs room in flight but takes
///    its permit in the set `KEYS[3]`, with the same bound; no room: `{3}`.
///
/// Admitted: `{0, units taken, slots taken}` (the first ids given).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local wanted = tonumber(ARGV[6])
local ids = #ARGV - 6
-- The rate units are taken only once the request is admitted: a request
-- refused for the in-flight (or stream) bound costs nothing.
local units = 0
local take_rate = function() end
if interval > 0 and wanted > 0 then
  local burst = tonumber(ARGV[2])
  local tat = now
  local stored = redis.call('GET', KEYS[1])
  if stored then
    tat = math.max(tonumber(stored) or now, now)
  end
  -- The units whose arrival fits the burst now.
  units = math.min(wanted, math.floor((now + interval * burst - tat) / interval))
  if units < 1 then
    return {1, math.ceil(tat + interval - interval * burst - now)}
  end
  local next_tat = tat + interval * units
  take_rate = function()
    redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.max(1, math.ceil((next_tat - now) / 1000)))
  end
end
local max = tonumber(ARGV[3])
if max == 0 or ids == 0 then
  take_rate()
  return {0, units, 0}
end
local lease = tonumber(ARGV[4])
-- The room left in a set; short of room for every id, expired leases are
-- dropped and the count taken again.
local function room(set)
  local free = max - redis.call('ZCARD', set)
  if free < ids then
    redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
    free = max - redis.call('ZCARD', set)
  end
  return free
end
local free = room(KEYS[2])
if free < 1 then
  return {2}
end
local set = KEYS[2]
if ARGV[5] == '1' then
  set = KEYS[3]
  free = room(set)
  if free < 1 then
    return {3}
  end
end
take_rate()
local slots = math.min(ids, free)
local expiry = string.format('%.0f', now + lease)
for i = 1, slots do
  redis.call('ZADD', set, expiry, ARGV[6 + i])
end
redis.call('PEXPIRE', set, math.ceil(lease / 1000))
return {0, units, slots}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ADMIT));

/// Give back permits: `ARGV[i]` from the set `KEYS[i]`, for a batch of
/// releases in one round trip.
const RELEASE: &str = r"
for i, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[i])
end
return #KEYS
";

static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

/// Releases waiting to be sent; past it a release is dropped (its lease
/// expires instead).
const RELEASE_QUEUE: usize = 8192;
/// Releases sent in one round trip at most.
const RELEASE_BATCH: usize = 256;

/// A stream's lease is renewed this often while it stays open (an open
/// `GET` stream lives for as long as its token; a request is not renewed).
const RENEW_EVERY: Duration = Duration::from_secs(FLEET_LEASE.as_secs() / 2);

/// The Redis side of the limit layer.
pub(crate) struct Fleet {
    store: Arc<RedisStore>,
    /// Random per process: permit ids of two replicas never meet.
    nonce: u64,
    next: AtomicU64,
    /// The queue of the task that sends releases in batches, and this
    /// replica's shares of the budgets with large bounds (which give their
    /// slots back through it); started with the first admission (inside
    /// the runtime).
    local: OnceLock<(mpsc::Sender<Release>, Arc<Shares>)>,
}

/// A budget: the SHA-256 of its key (the caller's, the tenant's, or the
/// caller's and a tool's).
type Budget = [u8; 32];

/// The keys of one budget: `<prefix>limit:<what>:{<the budget, hex>}`; the
/// braces make them one Redis Cluster hash slot, as a script needs.
struct Keys {
    rate: Vec<u8>,
    in_flight: Vec<u8>,
    streams: Vec<u8>,
}

/// The interval and burst of `rate`, for the script: microseconds between
/// two requests (at least 1: a fleet-wide rate is at most 1 000 000/s) and
/// the burst (the rate's count unless set).
fn gcra(rate: Rate, burst: Option<u32>) -> (u64, u32) {
    let interval = (rate.period().as_micros() / u128::from(rate.count())).max(1);
    (
        u64::try_from(interval).unwrap_or(u64::MAX),
        burst.unwrap_or(rate.count()).max(1),
    )
}

/// `{<budget, hex>}`.
fn slot_tag(budget: &Budget) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = Vec::with_capacity(66);
    id.push(b'{');
    for byte in budget {
        id.push(HEX[usize::from(byte >> 4)]);
        id.push(HEX[usize::from(byte & 0xf)]);
    }
    id.push(b'}');
    id
}

fn keys(store: &RedisStore, budget: &Budget) -> Keys {
    let id = slot_tag(budget);
    Keys {
        rate: store.key("limit:rate", &id),
        in_flight: store.key("limit:in_flight", &id),
        streams: store.key("limit:streams", &id),
    }
}

impl Fleet {
    pub(crate) fn new(store: Arc<RedisStore>) -> Fleet {
        // Uniqueness, not secrecy: std's per-process random hash keys, mixed
        // with the process id and the time.
        let seed = (std::process::id(), std::time::SystemTime::now());
        let nonce = std::collections::hash_map::RandomState::new().hash_one(seed);
        Fleet {
            store,
            nonce,
            next: AtomicU64::new(0),
            local: OnceLock::new(),
        }
    }

    /// The release queue (its task started on first use) and the shares.
    fn local(&self) -> &(mpsc::Sender<Release>, Arc<Shares>) {
        self.local.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(RELEASE_QUEUE);
            // Invariant: called from `admit`, an async fn polled by a
            // tokio runtime; without one the queue just fills and the
            // leases expire.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(send_releases(self.store.clone(), receiver));
            }
            let store = self.store.clone();
            let shares = Shares::new(sender.clone(), Box::new(move |budget| keys(&store, budget).in_flight));
            (sender, shares)
        })
    }

    fn budget(who: &Who) -> Budget {
        Sha256::digest(who.as_bytes()).into()
    }

    fn permit_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.nonce.to_le_bytes());
        id[8..].copy_from_slice(&self.next.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        id
    }

    /// Count one request of `who` with `limits`: one script, one round trip,
    /// unless this replica's share of the budget admits it (see
    /// [`share`](super::share)). A `stream` needs room in flight and holds a
    /// stream permit (never from a share).
    pub(crate) async fn admit(
        &self,
        who: &Who,
        limits: CallerLimits,
        stream: bool,
    ) -> Result<Result<Option<Lease>, Over>, StoreError> {
        let budget = Fleet::budget(who);
        let (interval, burst) = limits.rate.map_or((0, 0), |rate| gcra(rate, limits.burst()));
        let max = limits.in_flight().unwrap_or(0);
        let sizes = Sizes::of(interval, burst, max);
        let (releases, shares) = self.local();
        if stream || !sizes.shared() {
            let one = sizes.one();
            let keys = keys(&self.store, &budget);
            let ids = [self.permit_id()];
            let ids = &ids[..one.slots as usize];
            return Ok(
                match self.run(&keys, interval, burst, max, stream, one.units, ids).await? {
                    Ok((_, 1)) => {
                        let set = if stream { keys.streams } else { keys.in_flight };
                        Ok(Some(Lease::held(&self.store, releases, set, ids[0], stream)))
                    }
                    Ok(_) => Ok(None),
                    Err(over) => Err(over),
                },
            );
        }
        let now = Instant::now();
        let need = match shares.take(&budget, sizes, now) {
            Ok(slot) => return Ok(Ok(slot.map(|slot| Lease::shared(shares, budget, slot)))),
            Err(need) => need,
        };
        let keys = keys(&self.store, &budget);
        let ids: Vec<[u8; 16]> = (0..need.slots).map(|_| self.permit_id()).collect();
        let answer = self.run(&keys, interval, burst, max, false, need.units, &ids).await;
        match answer {
            Ok(Ok((units, slots))) => {
                let slots = usize::try_from(slots).unwrap_or(0).min(ids.len());
                let slot = shares.admitted(&budget, need, sizes, units, &ids[..slots], now);
                Ok(Ok(slot.map(|slot| Lease::shared(shares, budget, slot))))
            }
            refused => {
                shares.refused(&budget, need);
                refused.map(|over| over.map(|_| None))
            }
        }
    }

    /// Run the script: up to `units` rate units and a slot per id (in the
    /// streams set for a `stream`). Admitted: the units and slots taken.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        keys: &Keys,
        interval: u64,
        burst: u32,
        max: u32,
        stream: bool,
        units: u32,
        ids: &[[u8; 16]],
    ) -> Result<Result<(u32, u32), Over>, StoreError> {
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(&keys.rate)
            .key(&keys.in_flight)
            .key(&keys.streams)
            .arg(interval)
            .arg(burst)
            .arg(max)
            .arg(FLEET_LEASE.as_micros() as u64)
            .arg(if stream { "1" } else { "0" })
            .arg(units);
        for id in ids {
            invocation.arg(&id[..]);
        }
        let answer: Vec<i64> = self.store.invoke(invocation).await?;
        let count = |n: i64| u32::try_from(n).ok();
        Ok(match answer.as_slice() {
            [0, taken, slots] => match (count(*taken), count(*slots)) {
                (Some(taken), Some(slots)) if taken <= units && slots as usize <= ids.len() => Ok((taken, slots)),
                // Not our script's answer: cannot count the request, so deny.
                _ => return Err(StoreError::Unavailable),
            },
            [1, wait] => Err(Over::Rate(Duration::from_micros((*wait).max(0) as u64))),
            [2] => Err(Over::InFlight),
            [3] => Err(Over::Streams),
            _ => return Err(StoreError::Unavailable),
        })
    }

    /// Take one unit of `rate` (burst: its count) from `who`'s budget.
    pub(crate) async fn take(&self, who: &Who, rate: Rate) -> Result<Result<(), Over>, StoreError> {
        let limits = CallerLimits::new().with_rate(rate);
        Ok(self.admit(who, limits, false).await?.map(|_| ()))
    }
}

/// Send queued releases, up to [`RELEASE_BATCH`] per round trip, until
/// every sender is gone. A batch that fails is dropped: its leases expire.
async fn send_releases(store: Arc<RedisStore>, mut queue: mpsc::Receiver<Release>) {
    let mut batch = Vec::with_capacity(RELEASE_BATCH);
    while queue.recv_many(&mut batch, RELEASE_BATCH).await > 0 {
        let mut invocation = RELEASE_SCRIPT.prepare_invoke();
        for (key, id) in &batch {
            invocation.key(key).arg(&id[..]);
        }
        let _ = store.invoke::<i64>(invocation).await;
        batch.clear();
    }
}

/// A permit held in Redis: one member of a caller's in-flight (or stream)
/// set. A request's own is given back when dropped through the release
/// queue (sent in batches by a background task, off the request path; if
/// the queue is full or the release fails, the lease's expiry frees the
/// slot); one from this replica's share goes back to the share.
pub(crate) struct Lease {
    back: Back,
    renew: Option<tokio::task::AbortHandle>,
}

/// Where a permit goes when its request ends.
enum Back {
    Redis {
        releases: mpsc::Sender<Release>,
        key: Vec<u8>,
        id: [u8; 16],
    },
    Share {
        shares: Arc<Shares>,
        budget: Budget,
        slot: Slot,
    },
}

impl Lease {
    fn held(
        store: &Arc<RedisStore>,
        releases: &mpsc::Sender<Release>,
        key: Vec<u8>,
        id: [u8; 16],
        stream: bool,
    ) -> Lease {
        // An open stream keeps its lease for as long as it stays open.
        let renew = stream
            .then(|| tokio::runtime::Handle::try_current().ok())
            .flatten()
            .map(|runtime| {
                let (store, key) = (store.clone(), key.clone());
                runtime
                    .spawn(async move {
                        loop {
                            tokio::time::sleep(RENEW_EVERY).await;
                            let mut invocation = RENEW_SCRIPT.prepare_invoke();
                            invocation.key(&key).arg(&id[..]).arg(FLEET_LEASE.as_micros() as u64);
                            let _ = store.invoke::<i64>(invocation).await;
                        }
                    })
                    .abort_handle()
            });
        Lease {
            back: Back::Redis {
                releases: releases.clone(),
                key,
                id,
            },
            renew,
        }
    }

    fn shared(shares: &Arc<Shares>, budget: Budget, slot: Slot) -> Lease {
        Lease {
            back: Back::Share {
                shares: shares.clone(),
                budget,
                slot,
            },
            renew: None,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(renew) = self.renew.take() {
            renew.abort();
        }
        match &mut self.back {
            Back::Redis { releases, key, id } => {
                // Full (Redis slow or down): the lease expires instead.
                let _ = releases.try_send((std::mem::take(key), *id));
            }
            Back::Share { shares, budget, slot } => shares.ended(budget, *slot),
        }
    }
}

/// Renew the lease of permit `ARGV[1]` in the set `KEYS[1]` for `ARGV[2]`
/// microseconds, if it is still there (one that expired meanwhile is not
/// brought back over the bound); the set lives as long as its last lease.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[2])
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', string.format('%.0f', now + lease), ARGV[1])
if renewed == 1 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000), 'GT')
end
return renewed
";

static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_whole_microseconds_of_at_least_one() {
        assert_eq!(gcra("20/s".parse().unwrap(), Some(40)), (50_000, 40));
        assert_eq!(gcra("30/min".parse().unwrap(), None), (2_000_000, 30));
        assert_eq!(gcra("3/s".parse().unwrap(), None), (333_333, 3));
        assert_eq!(gcra(Rate::per_second(std::num::NonZeroU32::MAX), Some(0)), (1, 1));
    }

    #[tokio::test]
    async fn keys_are_hashed_prefixed_and_in_one_slot() {
        let store = Arc::new(RedisStore::new(crate::store::RedisConfig::new("redis://127.0.0.1:1")).unwrap());
        let fleet = Fleet::new(store);
        let who = Who::of(&crate::Principal::unverified("https://idp", "alice").build(), false);
        let keys = keys(&fleet.store, &Fleet::budget(&who));
        let rate = String::from_utf8(keys.rate).unwrap();
        assert!(rate.starts_with("rmcp-guard:limit:rate:{"), "{rate}");
        assert!(!rate.contains("alice"), "{rate}");
        let slot = |k: &str| k[k.find('{').unwrap()..].to_owned();
        assert_eq!(slot(&rate), slot(&String::from_utf8(keys.in_flight).unwrap()));
        assert_ne!(fleet.permit_id(), fleet.permit_id());
    }
}
