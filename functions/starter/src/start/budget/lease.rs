//! One instance's side of the shared budget: it leases slots in small chunks sized to its
//! demand, releases them at their times, reports throttles and successes, gives back what it
//! did not use, and falls back to the static split when the table cannot be used. The timing
//! of each step is one rule of [`super::rules`].
//!
//! Invariants:
//! - one table call at a time per instance (the lease lock is held across it, and across the
//!   wait for room before it); the instance's own state sits behind a plain lock never held
//!   across an await, so reporting a success, a throttle or a slot put back never waits on the
//!   table;
//! - a lease is written only when no leased slot is left, so the queue holds the unused tail of
//!   the last lease, in release order;
//! - a slot is used at most [`SLOT_GRACE`] after its release time ([`SharedPacer::ready`]
//!   checks it when the call is about to go); later it is dropped, never used late;
//! - no call waits on the table past the caller's `latest`, nor longer than the call timeout;
//!   an answer cut off by `latest` means "no slot", not a failure;
//! - after [`LEASE_ATTEMPTS`] transient errors, or one permanent, slots come from the static
//!   split ([`Pacer`]), started empty, for [`FALLBACK_RETRY`]; then the table is tried again,
//!   and the next lease repays the static split's starts to the budget.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::rules::{self, AfterError, Bound, SPREAD_MIN};
use super::shards::{self, Meter};
use super::{BudgetState, LeaseAsk, LeasePlan, Store, Update, Written};
use crate::close::backoff::unit_random;
use crate::start::clock::Clock;
use crate::start::pace::{Pacer, Slot, Source};
use crate::start::table::{StoreError, StoreErrorKind};

pub use super::rules::{FALLBACK_RETRY, LEASE_ATTEMPTS, SLOT_GRACE};

/// The most table-call latencies kept between two [`SharedPacer::take_counts`].
const MAX_LATENCIES: usize = 1_000;

/// The instance's view of the budget. Behind a plain lock, never held across an await.
#[derive(Debug)]
struct Local {
    /// The item as last seen.
    cached: Option<BudgetState>,
    /// Release instants of leased, unused slots, ascending.
    slots: VecDeque<Instant>,
    /// The version the slots were leased under.
    version: u64,
    /// `tat'` of the last lease, while its unused slots may still be given back.
    last_tat: Option<f64>,
    /// Slots of the last lease dropped unused since (given back with the rest).
    expired: u64,
    /// Successes of slots of the current version since the last lease.
    successes: u64,
    /// A throttle of a slot of this version, not yet written (the decrease).
    throttled: Option<u64>,
    /// Until when the static split is used.
    fallback_until: Option<Instant>,
    /// Starts made on the static split, not yet repaid to the budget.
    debt: u64,
    /// The contention spread ([`rules::widen`]).
    spread: Duration,
    /// Refusals and item throttles since the last lease.
    refusals: u32,
    /// Whether `cached` is older than this instance's last wait.
    stale: bool,
    /// Consecutive failed table calls (any answer resets it).
    failures: u32,
    /// Consecutive throttled writes (only a write's answer resets it: a read between them does
    /// not show the item takes writes again).
    throttles: u32,
    /// The shard `cached` is of ([`shards`]): the home, or the root while the home is missing.
    at: u32,
    /// The home shard, from the highest layout seen.
    home: u32,
    /// The highest layout seen, and its shard count.
    layout: u64,
    /// See `layout`.
    shards: u32,
    /// While the home shard is missing (a reshard not yet done), leases come from the root
    /// until then.
    away_until: Option<Instant>,
    /// The measure of the home's load.
    meter: Meter,
    /// A reshard to this many shards, to try before the next lease.
    plan: Option<u32>,
    /// No reshard is tried before this (epoch seconds): another lessee holds the plan lock.
    no_plan_before: f64,
}

impl Default for Local {
    fn default() -> Local {
        Local {
            cached: None,
            slots: VecDeque::new(),
            version: 0,
            last_tat: None,
            expired: 0,
            successes: 0,
            throttled: None,
            fallback_until: None,
            debt: 0,
            spread: SPREAD_MIN,
            refusals: 0,
            stale: false,
            failures: 0,
            throttles: 0,
            at: 0,
            home: 0,
            layout: 0,
            shards: 1,
            away_until: None,
            meter: Meter::default(),
            plan: None,
            no_plan_before: 0.0,
        }
    }
}

/// Counts since the last [`SharedPacer::take_counts`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LeaseCounts {
    /// Calls to the table.
    pub calls: u64,
    /// Slots handed out by the static split because the table failed.
    pub fallbacks: u64,
    /// Leased slots neither used nor given back: quota lost to everyone (past their grace,
    /// dropped after a throttle, or a give-back refused or not attempted).
    pub dropped: u64,
    /// Slots leased, and given back.
    pub leased: u64,
    /// See `leased`.
    pub returned: u64,
    /// Each table call's latency, milliseconds (at most [`MAX_LATENCIES`]).
    pub latencies_ms: Vec<f64>,
    /// Reshards this instance made ([`shards::reshard`]).
    pub reshards: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    fallbacks: AtomicU64,
    dropped: AtomicU64,
    leased: AtomicU64,
    returned: AtomicU64,
    reshards: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
}

/// What one step of a reservation came to.
enum Step {
    /// Look at the slots again.
    Again,
    /// Wait until then, then look again.
    Wait(Instant),
    /// No slot for this caller.
    NoSlot,
}

/// The pacer of one instance in coordinated mode.
pub struct SharedPacer {
    store: Arc<dyn Store>,
    key: String,
    seed: BudgetState,
    fallback: Pacer,
    call_timeout: Duration,
    clock: Clock,
    local: Mutex<Local>,
    /// One table call at a time.
    lease_lock: tokio::sync::Mutex<()>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    /// Picks this instance's home shard ([`shards::home`]).
    hash: u64,
}

impl SharedPacer {
    /// Leases from the budget `key` in `store`; creates it from `seed` if absent; falls back to
    /// `fallback` (the static split). Each table call is bounded by `call_timeout`.
    pub fn new(store: Arc<dyn Store>, key: &str, seed: BudgetState, fallback: Pacer, call_timeout: Duration) -> Self {
        SharedPacer {
            store,
            key: key.to_string(),
            seed,
            fallback,
            call_timeout,
            clock: Clock::system(),
            local: Mutex::new(Local::default()),
            lease_lock: tokio::sync::Mutex::new(()),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            hash: (unit_random() * u32::MAX as f64) as u64,
        }
    }

    /// This pacer reading the time from `clock` (tests and benchmarks: skew, thaw).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        // Plain numbers: a panic while holding the lock cannot leave them inconsistent.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The static split used while the table fails.
    pub fn fallback(&self) -> &Pacer {
        &self.fallback
    }

    /// The budget as last seen (`None` before the first table call answered).
    pub async fn budget(&self) -> Option<BudgetState> {
        self.local().cached.clone()
    }

    /// The last table error, if the instance is (or was) falling back.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The counts since the last call, reset.
    pub fn take_counts(&self) -> LeaseCounts {
        let c = &self.counters;
        LeaseCounts {
            calls: c.calls.swap(0, Ordering::Relaxed),
            fallbacks: c.fallbacks.swap(0, Ordering::Relaxed),
            dropped: c.dropped.swap(0, Ordering::Relaxed),
            leased: c.leased.swap(0, Ordering::Relaxed),
            returned: c.returned.swap(0, Ordering::Relaxed),
            latencies_ms: std::mem::take(&mut *c.latencies_ms.lock().unwrap_or_else(|p| p.into_inner())),
            reshards: c.reshards.swap(0, Ordering::Relaxed),
        }
    }

    /// Reserves the next call at or after now, unless it would have to wait past `latest`.
    /// `demand` tells how many calls the caller's invocation still needs slots for; it is read
    /// when a lease is planned (read earlier, it would be stale by the time the lease is
    /// written, and the lease too large).
    pub async fn reserve(&self, latest: Instant, demand: impl Fn() -> u64) -> Option<Slot> {
        loop {
            let now = Instant::now();
            if now >= latest {
                return None;
            }
            if let Some(taken) = self.take_local(now, latest) {
                return taken;
            }
            // A table call is needed: one at a time. The task holding the lease lock also
            // waits for room with it held, so the instance's other tasks wait behind it and
            // take the slots it leases as soon as they come (each waking up on its own, they
            // would let them expire).
            let Ok(_guard) = tokio::time::timeout_at(latest, self.lease_lock.lock()).await else {
                return None;
            };
            if !self.local().slots.is_empty() {
                continue; // another task leased while this one waited
            }
            match self.step(latest, &demand).await {
                Step::Again => {}
                Step::NoSlot => return None,
                Step::Wait(at) if at > latest => return None,
                Step::Wait(at) => {
                    tokio::time::sleep_until(at).await;
                    self.local().stale = true;
                }
            }
        }
    }

    /// A slot from what the instance holds: its next leased slot, or the static split's while
    /// it falls back (`Some(None)`: none before `latest`); `None` when the table is needed.
    fn take_local(&self, now: Instant, latest: Instant) -> Option<Option<Slot>> {
        let mut l = self.local();
        self.drop_expired(&mut l, now);
        if let Some(&release) = l.slots.front() {
            if release > latest {
                return Some(None);
            }
            l.slots.pop_front();
            return Some(Some(Slot {
                wait: release.saturating_duration_since(now),
                epoch: l.version,
                source: Source::Shared,
                at: release,
            }));
        }
        if l.fallback_until.is_some_and(|until| now < until) {
            let slot = self.fallback.reserve(now, latest);
            if slot.is_some() {
                l.debt += 1;
                self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            return Some(slot);
        }
        None
    }

    /// One table call (with the lease lock held): read the item, or write a lease; or first a
    /// reshard the home's load calls for.
    async fn step(&self, latest: Instant, demand: &impl Fn() -> u64) -> Step {
        let reshard = self.local().plan.take();
        if let Some(target) = reshard {
            self.reshard(target, latest).await;
            return Step::Again;
        }
        let (plan, spread) = {
            let mut l = self.local();
            self.aim(&mut l);
            let ask = self.ask(&l, demand(), Some(latest));
            // Refused since its last lease: it waits behind others, over its spread. Not: it
            // asks right when there is room (little jitter), as a lone instance should.
            let spread = match l.refusals {
                0 => SPREAD_MIN,
                _ => l.spread,
            };
            (l.cached.as_ref().map(|state| state.plan_lease(&ask)), spread)
        };
        // Contended (refused since the last lease) and back from a wait: read before writing.
        // A read takes none of the item's write capacity, and a write planned from a view that
        // old would most likely be refused.
        let (plan, contended_and_stale) = {
            let l = self.local();
            (plan, l.refusals > 0 && l.stale)
        };
        let plan = if contended_and_stale { None } else { plan };
        let (update, slots, repaid) = match plan {
            None => {
                return match self.fetch(latest).await {
                    Ok(()) => {
                        if contended_and_stale {
                            self.booked_out(&mut self.local());
                        }
                        Step::Again
                    }
                    Err(e) => self.failed(e, latest),
                }
            }
            // Asked again once there is room, a little later at random, so that lessees
            // waiting for the same moment do not all write at once.
            Some(LeasePlan::WaitUntil(epoch)) => {
                let room = self.clock.instant(epoch).max(Instant::now() + Duration::from_millis(1));
                return Step::Wait(rules::wait_for_room(room, latest, spread, unit_random()));
            }
            Some(LeasePlan::Nothing) => return Step::NoSlot,
            Some(LeasePlan::Lease { update, slots, repaid }) => (update, slots, repaid),
        };
        match self.write(&update, latest).await {
            Ok(Written::Applied(after)) => {
                self.leased(after, slots, repaid);
                Step::Again
            }
            // Refused because the budget is booked: contention, a wider spread. Refused
            // because the item moved on (a stale view: someone leased, or the bucket refilled
            // past the shape) while there is room: planned again at once, from the item as it is.
            Ok(Written::Refused(current)) => {
                let mut l = self.local();
                l.throttles = 0;
                self.seen(&mut l, current);
                self.booked_out(&mut l);
                Step::Again
            }
            Err(e) => self.failed(e, latest),
        }
    }

    /// After a failed table call: no slot, a retry, or the static split ([`rules::after_error`]).
    fn failed(&self, error: StoreError, latest: Instant) -> Step {
        let now = Instant::now();
        let mut l = self.local();
        let consecutive = match error.kind {
            StoreErrorKind::Throttled => {
                l.throttles += 1;
                if l.throttles > 1 {
                    l.meter.throttled(); // throttled again: a hot item, not a blip
                }
                l.throttles
            }
            StoreErrorKind::Deadline => 0,
            _ => {
                l.failures += 1;
                l.failures
            }
        };
        match rules::after_error(error.kind, consecutive) {
            AfterError::NoSlot => Step::NoSlot,
            // Throttled again: the item is hot, many lessees at once (contention).
            AfterError::Retry if error.kind == StoreErrorKind::Throttled && consecutive > 1 => {
                l.refusals += 1;
                l.spread = rules::widen(l.spread);
                Step::Wait(rules::wait_for_room(now, latest, l.spread, unit_random()))
            }
            AfterError::Retry => Step::Wait(now + rules::retry_backoff(unit_random())),
            AfterError::Fallback => {
                l.failures = 0;
                l.throttles = 0;
                l.fallback_until = Some(now + FALLBACK_RETRY);
                // The static split starts empty: its bucket refilled while unused, and the
                // other instances keep leasing the whole budget meanwhile.
                self.fallback.empty(now);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.message);
                Step::Again
            }
        }
    }

    /// How long until this instance expects its next slot, from what it last saw (no table
    /// call): its next leased slot, the static split while it falls back, or when the cached
    /// budget would release the next slot it leases (others may have leased since: an early
    /// estimate). Zero when a slot is due, or before the first answer.
    pub async fn free_in(&self) -> Duration {
        let now = Instant::now();
        let l = self.local();
        if let Some(&release) = l.slots.front() {
            return release.saturating_duration_since(now);
        }
        if l.fallback_until.is_some_and(|until| now < until) {
            return self.fallback.free_in(now);
        }
        match &l.cached {
            Some(state) => {
                let next = state.next_release(self.clock.epoch(now));
                self.clock.instant(next).saturating_duration_since(now)
            }
            None => Duration::ZERO,
        }
    }

    /// Waits for `slot`'s time; whether it may still be used then ([`rules::usable`]). A
    /// shared slot woken up past its grace is dropped (its call must reserve again).
    pub async fn ready(&self, slot: Slot) -> bool {
        slot.until_due().await;
        if slot.source == Source::Local || rules::usable(slot.at, Instant::now()) {
            return true;
        }
        self.note_expired(slot.epoch);
        false
    }

    /// Reports a successful call made in `slot`.
    pub async fn on_success(&self, slot: Slot) {
        match slot.source {
            Source::Shared => {
                let mut l = self.local();
                if l.cached.as_ref().is_some_and(|s| s.version == slot.epoch) {
                    l.successes += 1;
                }
            }
            Source::Local => self.fallback.on_success(slot, Instant::now()),
        }
    }

    /// Gives back a slot reserved and not used: a leased slot goes back to the front of the
    /// queue while it may still be used (within [`SLOT_GRACE`] of its release, in the version
    /// it was leased under); a fallback slot goes back to the static split.
    pub async fn put_back(&self, slot: Slot) {
        let now = Instant::now();
        match slot.source {
            Source::Local => {
                self.fallback.put_back(slot, now);
                let mut l = self.local();
                l.debt = l.debt.saturating_sub(1);
            }
            Source::Shared => {
                let mut l = self.local();
                if l.version == slot.epoch && rules::usable(slot.at, now) {
                    l.slots.push_front(slot.at);
                } else {
                    drop(l);
                    self.note_expired(slot.epoch);
                }
            }
        }
    }

    /// Reports a throttle of the call made in `slot`. Writes nothing: a throttle of a slot of
    /// the version this instance leases under drops its slots (the account's bucket is empty)
    /// and marks the decrease, which the next lease (or the give-back) carries. A throttle of
    /// an older version carries no news: someone already decreased, and the slots leased since
    /// stay.
    pub async fn on_throttle(&self, slot: Slot) {
        if slot.source == Source::Local {
            self.fallback.on_throttle(slot, Instant::now());
            return;
        }
        let mut l = self.local();
        if slot.epoch != l.version || l.cached.as_ref().is_some_and(|s| s.version != slot.epoch) {
            return;
        }
        let dropped = l.slots.len() as u64 + l.expired;
        self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        l.slots.clear();
        l.expired = 0;
        l.last_tat = None;
        l.throttled = Some(slot.epoch);
    }

    /// Gives back what the last lease left unused (its expired slots and its tail), if no one
    /// leased since, and writes a decrease not yet written. Called after the close phase, and
    /// bounded by `latest` ([`rules::give_back_latest`]).
    pub async fn give_back(&self, latest: Instant) {
        let Ok(_guard) = tokio::time::timeout_at(latest, self.lease_lock.lock()).await else {
            return;
        };
        let (update, returned, repaid) = {
            let mut l = self.local();
            self.drop_expired(&mut l, Instant::now());
            let n = l.slots.len() as u64 + l.expired;
            l.slots.clear();
            l.expired = 0;
            let tat = l.last_tat.take();
            match (tat, l.cached.clone()) {
                (Some(tat), Some(state)) if n > 0 && state.version == l.version && l.throttled.is_none() => {
                    (state.plan_give_back(tat, n), n, 0)
                }
                (_, state) => {
                    self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                    // Nothing to give back: a decrease or a debt may still be owed.
                    let ask = LeaseAsk {
                        now: self.clock.epoch(Instant::now()),
                        want: 0,
                        latest: f64::INFINITY,
                        successes: 0,
                        throttled: l.throttled,
                        debt: l.debt,
                        spread: l.spread.as_secs_f64(),
                    };
                    match state.map(|s| s.plan_lease(&ask)) {
                        Some(LeasePlan::Lease { update, repaid, .. }) => (update, 0, repaid),
                        _ => return,
                    }
                }
            }
        };
        match self.write(&update, latest).await {
            Ok(Written::Applied(after)) => {
                self.counters.returned.fetch_add(returned, Ordering::Relaxed);
                let mut l = self.local();
                l.debt = l.debt.saturating_sub(repaid);
                if l.throttled.is_some_and(|v| v < after.version) {
                    l.throttled = None;
                }
                l.cached = Some(after);
                self.follow(&mut l);
            }
            Ok(Written::Refused(current)) => {
                self.counters.dropped.fetch_add(returned, Ordering::Relaxed);
                let mut l = self.local();
                self.seen(&mut l, current);
            }
            Err(_) => {
                self.counters.dropped.fetch_add(returned, Ordering::Relaxed);
            }
        }
    }

    /// A lease of `n` slots (and `repaid` starts of the static split) was applied: its slots
    /// are scheduled from now, when its answer arrived ([`rules::release_at`]).
    fn leased(&self, after: BudgetState, n: u64, repaid: u64) {
        let now = Instant::now();
        let times = after.release_times(n, repaid, self.clock.epoch(now));
        let mut l = self.local();
        // A slot put back meanwhile (earlier than these) stays in front.
        l.slots.extend(times.into_iter().map(|t| self.clock.instant(t)));
        l.successes = 0;
        l.version = after.version;
        l.last_tat = Some(after.tat);
        // The last lease's slots that expired can no longer be given back: someone (this
        // instance) leased since.
        self.counters.dropped.fetch_add(l.expired, Ordering::Relaxed);
        l.expired = 0;
        l.debt = l.debt.saturating_sub(repaid);
        l.throttles = 0;
        l.spread = Self::spread_after_lease(&l);
        l.refusals = 0;
        l.stale = false;
        l.failures = 0;
        if l.throttled.is_some_and(|v| v < after.version) {
            l.throttled = None;
        }
        l.cached = Some(after);
        self.follow(&mut l);
        self.counters.leased.fetch_add(n, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Contention: when the item as just seen is booked past this lessee's horizon, others got
    /// there first: one more refusal, a wider spread.
    fn booked_out(&self, l: &mut Local) {
        let ask = self.ask(l, 1, None);
        match l.cached.as_ref().map(|s| s.plan_lease(&ask)) {
            Some(LeasePlan::WaitUntil(_)) => {
                l.refusals += 1;
                l.spread = rules::widen(l.spread);
            }
            // Room when it looked, after a wait: fewer wait than its spread assumed. A budget
            // left idle (its bucket refilling): no one else is waiting at all.
            _ => {
                let idle = l.cached.as_ref().is_some_and(|s| s.level(ask.now) > 0.0);
                l.spread = match idle {
                    true => SPREAD_MIN,
                    false => rules::narrow(l.spread),
                };
            }
        }
    }

    /// What this instance asks of the budget now, for `want` slots released by `latest`.
    fn ask(&self, l: &Local, want: u64, latest: Option<Instant>) -> LeaseAsk {
        LeaseAsk {
            now: self.clock.epoch(Instant::now()),
            want,
            latest: latest.map_or(f64::INFINITY, |at| self.clock.epoch(at)),
            successes: l.successes,
            throttled: l.throttled,
            debt: l.debt,
            spread: Self::spread_after_lease(l).as_secs_f64(),
        }
    }

    /// Contention: the spread a lease leaves (and writes in the item): halved when it was got
    /// at the first try, kept when it took refusals.
    fn spread_after_lease(l: &Local) -> Duration {
        match l.refusals {
            0 => rules::narrow(l.spread),
            _ => l.spread,
        }
    }

    /// The item as the table answered it (a refusal's current item, or a read): the lessee
    /// starts from the item's contention spread (the last lease's) when it is wider than its own.
    fn seen(&self, l: &mut Local, current: Option<BudgetState>) {
        l.stale = false;
        if let Some(state) = &current {
            let shared = Duration::try_from_secs_f64(state.spread).unwrap_or_default();
            l.spread = l.spread.max(shared).clamp(SPREAD_MIN, rules::SPREAD_MAX);
        }
        if let (Some(v), Some(state)) = (l.throttled, &current) {
            if state.version > v {
                l.throttled = None; // someone else decreased for this throttle
            }
        }
        l.failures = 0;
        l.cached = current;
        self.follow(l);
    }

    fn drop_expired(&self, l: &mut Local, now: Instant) {
        while l.slots.front().is_some_and(|&release| !rules::usable(release, now)) {
            l.slots.pop_front();
            l.expired += 1;
        }
    }

    /// A slot of `version` was not used within its grace: given back with the rest if it is
    /// of the last lease, else lost.
    fn note_expired(&self, version: u64) {
        let mut l = self.local();
        if version == l.version && l.last_tat.is_some() {
            l.expired += 1;
        } else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads the item, creating it from the seed if absent.
    async fn fetch(&self, latest: Instant) -> Result<(), StoreError> {
        let at = self.local().at;
        let found = self
            .call(self.store.get(&shards::shard_key(&self.key, at)), latest)
            .await?;
        let state = match found {
            Some(state) => state,
            None if at > 0 => {
                self.away(&mut self.local());
                return Ok(());
            }
            None => match self.write(&Update::Create(self.seed.clone()), latest).await? {
                Written::Applied(state) | Written::Refused(Some(state)) => state,
                Written::Refused(None) => return Err(StoreError::unknown("the budget item could not be created")),
            },
        };
        let mut l = self.local();
        self.seen(&mut l, Some(state));
        Ok(())
    }

    async fn write(&self, update: &Update, latest: Instant) -> Result<Written, StoreError> {
        let key = shards::shard_key(&self.key, self.local().at);
        self.call(self.store.write(&key, update), latest).await
    }

    /// Which shard to use now: the home, or the root while the home is missing. Changing shard
    /// forgets the cached item, so the next step reads the one it now uses.
    fn aim(&self, l: &mut Local) {
        let away = l.away_until.is_some_and(|until| Instant::now() < until);
        let at = if away { 0 } else { l.home };
        if at != l.at {
            l.at = at;
            l.cached = None;
        }
    }

    /// The home is missing or retired and no newer layout says where to go: the root meanwhile
    /// (for a second), and a reshard to complete the layout.
    fn away(&self, l: &mut Local) {
        l.away_until = Some(Instant::now() + Duration::from_secs(1));
        l.cached = None;
        l.at = 0;
        if self.clock.epoch(Instant::now()) >= l.no_plan_before {
            l.plan = Some(l.shards);
        }
    }

    /// The item just seen (`cached`, of shard `at`): a newer layout moves this lessee's home;
    /// a retired shard sends it to the root; its home's load may call for a reshard.
    fn follow(&self, l: &mut Local) {
        let Some(state) = l.cached.clone() else {
            return;
        };
        if state.layout > l.layout {
            l.layout = state.layout;
            l.shards = state.shards;
            l.home = shards::home(self.hash, state.shards);
            l.away_until = None;
            l.meter.reset();
            if l.home != l.at {
                self.rehome(l);
                return;
            }
        }
        if l.at >= state.shards {
            self.away(l);
            return;
        }
        let now = self.clock.epoch(Instant::now());
        if l.at == l.home && now >= l.no_plan_before {
            if let Some(want) = l.meter.observe(now, &state) {
                l.plan = Some(want);
            }
        }
    }

    /// The home moved: what this instance tracked of the old one (the give-back of its last
    /// lease, a decrease, its successes) does not apply to the new one. Its leased slots stay.
    fn rehome(&self, l: &mut Local) {
        self.counters.dropped.fetch_add(l.expired, Ordering::Relaxed);
        l.expired = 0;
        l.last_tat = None;
        l.throttled = None;
        l.successes = 0;
        l.cached = None;
        l.at = l.home;
    }

    /// Reshards the budget to `target` shards ([`shards::reshard`]), bounded by `latest` and
    /// [`shards::RESHARD_SECONDS`]. Whatever it did, the next step reads the item again.
    async fn reshard(&self, target: u32, latest: Instant) {
        let seen = self.local().layout;
        let clock = self.clock.clone();
        let now = move || clock.epoch(Instant::now());
        let until = latest.min(Instant::now() + Duration::from_secs_f64(shards::RESHARD_SECONDS));
        let done = tokio::time::timeout_at(until, shards::reshard(&*self.store, &self.key, target, seen, &now)).await;
        if let Ok(Ok(Some(_))) = done {
            self.counters.reshards.fetch_add(1, Ordering::Relaxed);
        }
        // Done, planned by another lessee, or cut short: the lock holds until then anyway.
        let mut l = self.local();
        l.no_plan_before = now() + shards::PLAN_SECONDS;
        l.cached = None;
    }

    /// One table call, bounded by [`rules::call_limit`]; its latency is recorded.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
        latest: Instant,
    ) -> Result<T, StoreError> {
        let sent = Instant::now();
        let Some((limit, bound)) = rules::call_limit(sent, latest, self.call_timeout) else {
            return Err(StoreError::deadline("too little time left for a table call"));
        };
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) if bound == Bound::Latest => Err(StoreError::deadline(format!(
                "no answer from the coordination table within the {} ms left",
                limit.as_millis()
            ))),
            Err(_) => Err(StoreError::unknown(format!(
                "no answer from the coordination table within CALL_TIMEOUT_MS ({} ms)",
                limit.as_millis()
            ))),
        };
        let mut latencies = self.counters.latencies_ms.lock().unwrap_or_else(|p| p.into_inner());
        if latencies.len() < MAX_LATENCIES {
            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        result
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
