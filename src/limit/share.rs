//! A replica's share of the fleet budgets whose bounds are large: one round
//! trip to Redis takes a few rate units and in-flight slots at once, and
//! the requests that follow on this replica use them without a round
//! trip. A budget never admits more than it would one request at a time:
//! units and slots are taken in Redis before they are used here (units
//! are used within the time the budget takes to earn them back; a slot is a
//! real member of the budget's in-flight set). What a share costs is the
//! other way: units and slots a replica holds and does not use are not
//! available to the others for a short while.
//!
//! Sizes: 1/[`SHARE_OF`] of the burst and of the in-flight bound, at most
//! [`MAX_SHARE`] of each. A budget whose burst or bound is under
//! `2 x SHARE_OF` (the defaults: burst 40, 16 in flight) takes exactly one
//! of each per request, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::FLEET_LEASE;

/// A share is at most this fraction of a budget's burst, and of its
/// in-flight bound.
pub(crate) const SHARE_OF: u32 = 32;
/// A share holds at most this many rate units, and as many slots.
pub(crate) const MAX_SHARE: u32 = 16;
/// Budgets this replica holds a share of at most (about 1 KB each at the
/// largest share); past it a new budget is counted one request per round
/// trip (exact, just slower): no caller's share is ever pushed out by
/// another's.
const SHARES: usize = 16_384;
/// A share unused for this long gives its slots back (and its units
/// lapse). Units lapse sooner when the budget earns them back sooner.
const IDLE: Duration = Duration::from_secs(1);
/// How often idle shares are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// A slot is used for new requests for half its lease at most: a request
/// that starts on it still counts for at least half a lease.
const SLOT_REUSE: Duration = Duration::from_secs(FLEET_LEASE.as_secs() / 2);

/// A slot to give back: its in-flight set and its id.
pub(crate) type Release = (Vec<u8>, [u8; 16]);

/// What one round trip takes for a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// Rate units (0: the budget has no rate).
    pub(crate) units: u32,
    /// In-flight slots (0: no in-flight bound).
    pub(crate) slots: u32,
    /// How long units taken are used for: the time the budget takes to
    /// earn a share back, at most [`IDLE`].
    pub(crate) unit_life: Duration,
}

impl Sizes {
    /// The sizes for a rate of one unit per `interval` microseconds (0: no
    /// rate) with `burst`, and `max` in flight (0: no bound).
    pub(crate) fn of(interval: u64, burst: u32, max: u32) -> Sizes {
        let share = |bound: u32| (bound / SHARE_OF).clamp(1, MAX_SHARE);
        let earned = Duration::from_micros(interval.saturating_mul(u64::from(burst / SHARE_OF)));
        Sizes {
            units: if interval == 0 { 0 } else { share(burst) },
            slots: if max == 0 { 0 } else { share(max) },
            unit_life: earned.min(IDLE),
        }
    }

    /// One unit and one slot (of the bounds the budget has): a request on
    /// its own.
    pub(crate) fn one(self) -> Sizes {
        Sizes {
            units: self.units.min(1),
            slots: self.slots.min(1),
            ..self
        }
    }

    /// Whether every bound the budget has is large enough for shares; if
    /// not, each request is its own round trip.
    pub(crate) fn shared(self) -> bool {
        let batched = |n: u32| n != 1;
        (self.units, self.slots) != (0, 0) && batched(self.units) && batched(self.slots)
    }
}

/// A slot of a share: its id, and until when it may start a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) id: [u8; 16],
    until: Instant,
}

/// What the share of one budget holds.
struct Share {
    units: u32,
    units_until: Instant,
    free: Vec<Slot>,
    /// Slots of this share in use by requests.
    in_use: u32,
    /// Requests of this budget waiting on a round trip: while one is, the
    /// others ask for one unit and slot each (a burst of requests must
    /// not take a share each).
    pending: u32,
    /// Free slots kept at most (the rest go back at once).
    keep: u32,
    last: Instant,
    /// The budget's in-flight set, where its slots go back.
    set: Vec<u8>,
}

impl Share {
    fn empty(sizes: Sizes, set: Vec<u8>, now: Instant) -> Share {
        Share {
            units: 0,
            units_until: now,
            free: Vec::new(),
            in_use: 0,
            pending: 0,
            keep: sizes.slots,
            last: now,
            set,
        }
    }

    fn unit(&self, now: Instant) -> bool {
        self.units > 0 && now < self.units_until
    }

    /// A free slot still fit to start a request; those past it go back.
    fn slot(&mut self, now: Instant, back: &mut Vec<Release>) -> Option<Slot> {
        while let Some(slot) = self.free.pop() {
            if now < slot.until {
                return Some(slot);
            }
            back.push((self.set.clone(), slot.id));
        }
        None
    }
}

/// What a request takes before its round trip, if its share cannot admit
/// it alone: the unit and slot it reserved from the share, and how many
/// to ask Redis for.
#[derive(Debug)]
pub(crate) struct Need {
    pub(crate) unit: bool,
    pub(crate) slot: Option<Slot>,
    pub(crate) units: u32,
    pub(crate) slots: u32,
    /// Whether what the round trip brings beyond this request may be kept
    /// (false: no room for one more share).
    keep: bool,
}

/// The in-flight set of a budget, by its digest.
type SetOf = Box<dyn Fn(&[u8; 32]) -> Vec<u8> + Send + Sync>;

/// The shares of this replica, keyed by the budget's digest.
pub(crate) struct Shares {
    shares: Mutex<HashMap<[u8; 32], Share>>,
    releases: mpsc::Sender<Release>,
    set_of: SetOf,
    sweeping: std::sync::OnceLock<()>,
}

impl Shares {
    /// Shares whose slots go back through `releases`; `set_of` names a
    /// budget's in-flight set.
    pub(crate) fn new(releases: mpsc::Sender<Release>, set_of: SetOf) -> Arc<Shares> {
        Arc::new(Shares {
            shares: Mutex::new(HashMap::new()),
            releases,
            set_of,
            sweeping: std::sync::OnceLock::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Share>> {
        self.shares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn give_back(&self, back: Vec<Release>) {
        for release in back {
            // Full (Redis slow or down): the lease expires instead.
            let _ = self.releases.try_send(release);
        }
    }

    /// Admit one request of `budget` from its share: `Ok` with its slot
    /// (if the budget has a bound), else what to ask Redis for, with the
    /// unit or slot the share could give already reserved.
    pub(crate) fn take(&self, budget: &[u8; 32], sizes: Sizes, now: Instant) -> Result<Option<Slot>, Need> {
        let mut back = Vec::new();
        let answer = {
            let mut shares = self.lock();
            let room = shares.len() < SHARES;
            match shares.get_mut(budget) {
                Some(share) => {
                    let unit = sizes.units > 0 && share.unit(now);
                    let slot = if sizes.slots > 0 {
                        share.slot(now, &mut back)
                    } else {
                        None
                    };
                    share.last = now;
                    share.units -= u32::from(unit);
                    if (sizes.units == 0 || unit) && (sizes.slots == 0 || slot.is_some()) {
                        share.in_use += u32::from(slot.is_some());
                        Ok(slot)
                    } else {
                        let ask = if share.pending > 0 { sizes.one() } else { sizes };
                        share.pending += 1;
                        Err(Need {
                            unit,
                            slot,
                            units: if unit { 0 } else { ask.units },
                            slots: if slot.is_some() { 0 } else { ask.slots },
                            keep: true,
                        })
                    }
                }
                None if room => {
                    let share = Share::empty(sizes, self.set_of.as_ref()(budget), now);
                    shares.insert(*budget, Share { pending: 1, ..share });
                    Err(Need {
                        unit: false,
                        slot: None,
                        units: sizes.units,
                        slots: sizes.slots,
                        keep: true,
                    })
                }
                None => Err(Need {
                    unit: false,
                    slot: None,
                    units: sizes.one().units,
                    slots: sizes.one().slots,
                    keep: false,
                }),
            }
        };
        self.give_back(back);
        answer
    }

    /// Redis refused the request: what it reserved goes back to the share
    /// (or to Redis, the share swept meanwhile).
    pub(crate) fn refused(&self, budget: &[u8; 32], need: Need) {
        let mut shares = self.lock();
        match shares.get_mut(budget) {
            Some(share) => {
                share.pending = share.pending.saturating_sub(u32::from(need.keep));
                share.units += u32::from(need.unit);
                share.free.extend(need.slot);
            }
            None => {
                drop(shares);
                if let Some(slot) = need.slot {
                    self.give_back(vec![((self.set_of)(budget), slot.id)]);
                }
            }
        }
    }

    /// Redis admitted the request with `units` more units and the slots
    /// `ids`: the request takes what it needs,
    /// the share keeps the rest. Returns the request's slot.
    pub(crate) fn admitted(
        self: &Arc<Self>,
        budget: &[u8; 32],
        need: Need,
        sizes: Sizes,
        mut units: u32,
        ids: &[[u8; 16]],
        now: Instant,
    ) -> Option<Slot> {
        let fresh = |id| Slot {
            id,
            until: now + SLOT_REUSE,
        };
        let mut ids = ids.iter().copied().map(fresh);
        if !need.unit && units > 0 {
            units -= 1;
        }
        let slot = need.slot.or_else(|| ids.next());
        let mut back: Vec<Release> = Vec::new();
        {
            let mut shares = self.lock();
            // The share was made when the request missed it; swept since
            // (nothing in use, idle): made again if there is room.
            let share = if need.keep && (shares.len() < SHARES || shares.contains_key(budget)) {
                Some(
                    shares
                        .entry(*budget)
                        .or_insert_with(|| Share::empty(sizes, (self.set_of)(budget), now)),
                )
            } else {
                None
            };
            match share {
                Some(share) => {
                    share.pending = share.pending.saturating_sub(1);
                    if units > 0 {
                        // Units left from an earlier share lapse here rather
                        // than live on with these.
                        share.units = units;
                        share.units_until = now + sizes.unit_life;
                    }
                    share.in_use += u32::from(slot.is_some());
                    share.last = now;
                    for slot in ids {
                        share.free.push(slot);
                    }
                }
                None => {
                    let set = (self.set_of)(budget);
                    back.extend(ids.map(|slot| (set.clone(), slot.id)));
                }
            }
        }
        self.give_back(back);
        self.sweep_from_now();
        slot
    }

    /// A request of `budget` ended: its slot goes back to the share, or to
    /// Redis when the share keeps enough (or is gone).
    pub(crate) fn ended(&self, budget: &[u8; 32], slot: Slot) {
        let now = Instant::now();
        let mut shares = self.lock();
        if let Some(share) = shares.get_mut(budget) {
            share.in_use = share.in_use.saturating_sub(1);
            if now < slot.until && (share.free.len() as u32) < share.keep {
                share.free.push(slot);
                return;
            }
        }
        drop(shares);
        self.give_back(vec![((self.set_of)(budget), slot.id)]);
    }

    /// Start the task that gives idle shares back, once (inside a runtime).
    fn sweep_from_now(self: &Arc<Self>) {
        self.sweeping.get_or_init(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep(Arc::downgrade(self)));
            }
        });
    }

    /// Give back what idle shares hold; forget those with nothing in use.
    fn sweep(&self, now: Instant) {
        let mut back = Vec::new();
        self.lock().retain(|_, share| {
            let idle = now.saturating_duration_since(share.last) >= IDLE;
            if idle {
                share.units = 0;
                back.extend(share.free.drain(..).map(|slot| (share.set.clone(), slot.id)));
            } else {
                let set = &share.set;
                share.free.retain(|slot| {
                    let fit = now < slot.until;
                    if !fit {
                        back.push((set.clone(), slot.id));
                    }
                    fit
                });
            }
            !(idle && share.in_use == 0)
        });
        self.give_back(back);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Every [`SWEEP_EVERY`], until the shares are dropped.
async fn sweep(shares: Weak<Shares>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(shares) = shares.upgrade() else {
            return;
        };
        shares.sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: [u8; 32] = [7; 32];

    fn shares() -> (Arc<Shares>, mpsc::Receiver<Release>) {
        let (sender, receiver) = mpsc::channel(1024);
        (Shares::new(sender, Box::new(|_| b"set".to_vec())), receiver)
    }

    fn ids(n: u8) -> Vec<[u8; 16]> {
        (0..n).map(|i| [i; 16]).collect()
    }

    fn returned(receiver: &mut mpsc::Receiver<Release>) -> usize {
        let mut n = 0;
        while receiver.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn small_bounds_take_one_per_request_and_large_ones_a_share() {
        // The defaults: 20/s (one per 50 ms), burst 40, 16 in flight.
        assert!(!Sizes::of(50_000, 40, 16).shared());
        // A large burst with the default in-flight bound: still one each.
        assert!(!Sizes::of(50_000, 640, 16).shared());
        let sizes = Sizes::of(1, u32::MAX, u32::MAX);
        assert!(sizes.shared());
        assert_eq!((sizes.units, sizes.slots, sizes.unit_life), (16, 16, IDLE));
        // A share is 1/32 of the bound: 64 -> 2, and units last as long as
        // the budget takes to earn them back (2 x 10 ms at 100/s).
        let sizes = Sizes::of(10_000, 64, 64);
        assert_eq!((sizes.units, sizes.slots), (2, 2));
        assert_eq!(sizes.unit_life, Duration::from_millis(20));
        // A per-tool rate (no in-flight bound) with a burst of 100.
        let sizes = Sizes::of(36_000_000, 100, 0);
        assert!(sizes.shared());
        assert_eq!((sizes.units, sizes.slots, sizes.unit_life), (3, 0, IDLE));
        assert_eq!(Sizes::of(1, 64, 64).one().units, 1);
    }

    #[tokio::test]
    async fn a_share_admits_what_it_holds_then_asks_again() {
        let (shares, mut releases) = shares();
        let sizes = Sizes::of(1, 1 << 20, 1 << 20);
        let now = Instant::now();
        let need = shares.take(&BUDGET, sizes, now).unwrap_err();
        assert_eq!((need.units, need.slots), (16, 16));
        let first = shares.admitted(&BUDGET, need, sizes, 16, &ids(16), now).unwrap();
        // Fifteen units and slots left: fifteen requests without Redis.
        let mut held = vec![first];
        for _ in 0..15 {
            held.push(shares.take(&BUDGET, sizes, now).unwrap().unwrap());
        }
        let need = shares.take(&BUDGET, sizes, now).unwrap_err();
        assert_eq!(
            (need.unit, need.slot.is_some(), need.units, need.slots),
            (false, false, 16, 16)
        );
        // Redis refuses it: nothing was reserved, nothing changes.
        shares.refused(&BUDGET, need);
        // Every request ends: the share keeps one share's worth (16) of free
        // slots; nothing goes back.
        for slot in held {
            shares.ended(&BUDGET, slot);
        }
        assert_eq!(returned(&mut releases), 0);
        // Units are spent, slots are free: the next request reserves a slot
        // and asks for units only.
        let need = shares.take(&BUDGET, sizes, now).unwrap_err();
        assert!(need.slot.is_some());
        assert_eq!((need.units, need.slots), (16, 0));
        let slot = shares.admitted(&BUDGET, need, sizes, 16, &[], now).unwrap();
        shares.ended(&BUDGET, slot);
        assert_eq!(returned(&mut releases), 0);
    }

    #[tokio::test]
    async fn while_one_request_waits_on_redis_the_others_ask_for_one() {
        let (shares, _releases) = shares();
        let sizes = Sizes::of(1, 1 << 20, 1 << 20);
        let now = Instant::now();
        let first = shares.take(&BUDGET, sizes, now).unwrap_err();
        let second = shares.take(&BUDGET, sizes, now).unwrap_err();
        assert_eq!((first.units, first.slots), (16, 16));
        assert_eq!((second.units, second.slots), (1, 1));
        shares.admitted(&BUDGET, second, sizes, 1, &ids(1), now).unwrap();
        shares.admitted(&BUDGET, first, sizes, 16, &ids(16), now).unwrap();
        let third = shares.take(&BUDGET, sizes, now);
        assert!(third.is_ok(), "the share holds 15 units and slots");
    }

    #[tokio::test]
    async fn idle_shares_give_their_slots_back_and_units_lapse() {
        let (shares, mut releases) = shares();
        let sizes = Sizes::of(10_000, 64, 64);
        let now = Instant::now();
        let need = shares.take(&BUDGET, sizes, now).unwrap_err();
        let slot = shares.admitted(&BUDGET, need, sizes, 2, &ids(2), now).unwrap();
        // The unit left lapses after 20 ms (what 2 units take to come back).
        let later = now + Duration::from_millis(25);
        let need = shares.take(&BUDGET, sizes, later).unwrap_err();
        assert!(!need.unit && need.slot.is_some(), "{need:?}");
        shares.refused(&BUDGET, need);
        // In use: the share stays, its free slot goes back once idle.
        shares.sweep(later + IDLE);
        assert_eq!(returned(&mut releases), 1);
        assert_eq!(shares.len(), 1);
        shares.ended(&BUDGET, slot);
        shares.sweep(later + IDLE);
        assert_eq!(returned(&mut releases), 1);
        assert_eq!(shares.len(), 0);
        // A slot past its reuse window goes back instead of starting a request.
        let need = shares.take(&BUDGET, sizes, now).unwrap_err();
        shares.admitted(&BUDGET, need, sizes, 2, &ids(2), now).unwrap();
        let need = shares.take(&BUDGET, sizes, now + SLOT_REUSE).unwrap_err();
        assert!(need.slot.is_none() && need.slots == 2, "{need:?}");
        assert_eq!(returned(&mut releases), 1);
    }
}
