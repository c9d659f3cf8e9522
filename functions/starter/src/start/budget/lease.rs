//! One instance's side of the shared budget: it leases slots in small chunks sized to its
//! demand, releases them at their times, reports throttles and successes, gives back what it
//! did not use, and falls back to the static split when the table cannot be used.
//!
//! Invariants:
//! - one lease call at a time per instance (the state lock is held across it); a lease is
//!   written only when no leased slot is left, so the queue holds the unused tail of the last
//!   lease, in release order;
//! - a slot is handed out only up to [`SLOT_GRACE`] after its release time; later it is dropped
//!   (used late, it could exceed the bucket: see the module docs of [`super`]);
//! - no call waits on the table past the caller's `latest`, nor longer than the call timeout;
//! - after a table failure, slots come from the static split ([`Pacer`]) for [`FALLBACK_RETRY`],
//!   then the table is tried again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{BudgetState, LeasePlan, Store, Update, Written, SLOT_GRACE};
use crate::close::backoff::unit_random;
use crate::start::pace::{Pacer, Slot, Source};
use crate::start::table::StoreError;

/// How long the static split is used after the table failed, before the table is tried again.
pub const FALLBACK_RETRY: Duration = Duration::from_secs(1);
/// Tries at lowering the shared rate after a throttle (each a compare-and-set on `tat`).
const DECREASE_ATTEMPTS: usize = 4;
/// The most a lessee adds to a wait for room in the budget, at random.
const LEASE_JITTER: Duration = Duration::from_millis(10);

/// Epoch seconds ↔ the runtime's monotonic instants (so tests can run on a paused clock).
#[derive(Debug, Clone, Copy)]
struct Clock {
    instant: Instant,
    epoch: f64,
}

impl Clock {
    fn now() -> Clock {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Clock {
            instant: Instant::now(),
            epoch,
        }
    }

    fn epoch(&self, at: Instant) -> f64 {
        if at >= self.instant {
            self.epoch + (at - self.instant).as_secs_f64()
        } else {
            self.epoch - (self.instant - at).as_secs_f64()
        }
    }

    fn instant(&self, epoch: f64) -> Instant {
        let offset = epoch - self.epoch;
        if offset >= 0.0 {
            self.instant + Duration::try_from_secs_f64(offset).unwrap_or(Duration::MAX / 4)
        } else {
            self.instant
                .checked_sub(Duration::try_from_secs_f64(-offset).unwrap_or_default())
                .unwrap_or(self.instant)
        }
    }
}

#[derive(Debug, Default)]
struct Leases {
    /// The item as last seen.
    cached: Option<BudgetState>,
    /// Release instants of leased, unused slots, ascending, and the version they were leased under.
    slots: VecDeque<Instant>,
    version: u64,
    /// `tat'` of the last lease, while its unused tail may still be given back.
    last_tat: Option<f64>,
    /// Successes of slots of the current version since the last lease.
    successes: u64,
    /// Until when the static split is used.
    fallback_until: Option<Instant>,
}

/// Counts since the last [`SharedPacer::take_counts`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCounts {
    /// Calls to the table.
    pub calls: u64,
    /// Slots handed out by the static split because the table failed.
    pub fallbacks: u64,
    /// Leased slots dropped unused (past their grace, or emptied by a throttle).
    pub dropped: u64,
}

/// The pacer of one instance in coordinated mode.
pub struct SharedPacer {
    store: Arc<dyn Store>,
    key: String,
    seed: BudgetState,
    fallback: Pacer,
    call_timeout: Duration,
    clock: Clock,
    state: tokio::sync::Mutex<Leases>,
    calls: AtomicU64,
    fallbacks: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
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
            clock: Clock::now(),
            state: tokio::sync::Mutex::new(Leases::default()),
            calls: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The static split used while the table fails.
    pub fn fallback(&self) -> &Pacer {
        &self.fallback
    }

    /// The budget as last seen (`None` before the first table call answered).
    pub async fn budget(&self) -> Option<BudgetState> {
        self.state.lock().await.cached.clone()
    }

    /// The last table error, if the instance is (or was) falling back.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The counts since the last call, reset.
    pub fn take_counts(&self) -> LeaseCounts {
        LeaseCounts {
            calls: self.calls.swap(0, Ordering::Relaxed),
            fallbacks: self.fallbacks.swap(0, Ordering::Relaxed),
            dropped: self.dropped.swap(0, Ordering::Relaxed),
        }
    }

    /// Reserves the next call at or after now, unless it would have to wait past `latest`.
    /// `demand` tells how many calls the caller's invocation still needs slots for; it is read
    /// with the lease lock held, when a lease is planned (read earlier, it would be stale by
    /// the time the lease is written, and the lease too large).
    pub async fn reserve(&self, latest: Instant, demand: impl Fn() -> u64) -> Option<Slot> {
        let mut g = self.state.lock().await;
        loop {
            let now = Instant::now();
            if now >= latest {
                return None;
            }
            self.drop_expired(&mut g, now);
            if let Some(&release) = g.slots.front() {
                if release > latest {
                    return None;
                }
                g.slots.pop_front();
                let wait = release.saturating_duration_since(now);
                return Some(Slot {
                    wait,
                    epoch: g.version,
                    source: Source::Shared,
                    at: release,
                });
            }
            if g.fallback_until.is_some_and(|until| now < until) {
                return self.fallback_slot(now, latest);
            }
            let Some(state) = g.cached.clone() else {
                if let Err(e) = self.fetch(&mut g, latest).await {
                    self.enter_fallback(&mut g, now, e);
                }
                continue;
            };
            match state.plan_lease(self.clock.epoch(now), demand(), g.successes) {
                LeasePlan::WaitUntil(epoch) => {
                    let at = self.clock.instant(epoch);
                    if at > latest {
                        return None;
                    }
                    drop(g);
                    // A little jitter, so that lessees waiting for the same moment do not all
                    // write at once (one of them would win, the others be refused).
                    let jitter = Duration::from_secs_f64(LEASE_JITTER.as_secs_f64() * unit_random());
                    tokio::time::sleep_until(at.max(now + Duration::from_millis(1)) + jitter).await;
                    g = self.state.lock().await;
                }
                LeasePlan::Lease { update, slots } => match self.write(&update, latest).await {
                    // Scheduled from when the lease was asked for; slots already overdue by more
                    // than SLOT_GRACE when a slow write returns are dropped, never bunched up.
                    Ok(Written::Applied(after)) => self.leased(&mut g, after, slots, now),
                    Ok(Written::Refused(current)) => g.cached = current,
                    Err(e) => self.enter_fallback(&mut g, now, e),
                },
            }
        }
    }

    /// How long until this instance expects its next slot, from what it last saw (no table
    /// call): its next leased slot, the static split while it falls back, or when the cached
    /// budget lets a lease be written (others may have leased since: an early estimate).
    /// Zero when a slot is due, or before the first answer.
    pub async fn free_in(&self) -> Duration {
        let g = self.state.lock().await;
        let now = Instant::now();
        if let Some(&release) = g.slots.front() {
            return release.saturating_duration_since(now);
        }
        if g.fallback_until.is_some_and(|until| now < until) {
            return self.fallback.free_in(now);
        }
        match g
            .cached
            .as_ref()
            .map(|s| s.plan_lease(self.clock.epoch(now), 1, g.successes))
        {
            Some(LeasePlan::WaitUntil(epoch)) => self.clock.instant(epoch).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Reports a successful call made in `slot`.
    pub async fn on_success(&self, slot: Slot) {
        match slot.source {
            Source::Shared => {
                let mut g = self.state.lock().await;
                if g.cached.as_ref().is_some_and(|s| s.version == slot.epoch) {
                    g.successes += 1;
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
            Source::Local => self.fallback.put_back(slot, now),
            Source::Shared => {
                let mut g = self.state.lock().await;
                if g.version == slot.epoch && slot.at + SLOT_GRACE >= now {
                    g.slots.push_front(slot.at);
                } else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reports a throttle of the call made in `slot`: the shared rate drops once per version,
    /// and this instance's leased slots are dropped (the account's bucket is empty).
    pub async fn on_throttle(&self, slot: Slot) {
        if slot.source == Source::Local {
            self.fallback.on_throttle(slot, Instant::now());
            return;
        }
        let mut g = self.state.lock().await;
        let dropped = g.slots.len() as u64;
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        g.slots.clear();
        g.last_tat = None;
        let latest = Instant::now() + self.call_timeout;
        // A compare-and-set on `tat`: a lease by someone else in between refuses it; try again
        // with the item as it is, a few times.
        for _ in 0..DECREASE_ATTEMPTS {
            let Some(state) = g.cached.clone() else { return };
            let Some(update) = state.plan_decrease(slot.epoch, self.clock.epoch(Instant::now())) else {
                return;
            };
            match self.write(&update, latest).await {
                Ok(Written::Applied(after)) => {
                    tracing::info!(
                        rate_per_second = after.effective_rate(),
                        "throttled: the shared rate is lowered for every instance"
                    );
                    g.cached = Some(after);
                    return;
                }
                Ok(Written::Refused(current)) => g.cached = current,
                Err(e) => {
                    tracing::warn!(error = %e, "could not lower the shared rate after a throttle");
                    return;
                }
            }
        }
    }

    /// Gives back the unused slots of the last lease, if no one leased since; drops them
    /// otherwise. Bounded by `latest`.
    pub async fn give_back(&self, latest: Instant) {
        let mut g = self.state.lock().await;
        self.drop_expired(&mut g, Instant::now());
        let n = g.slots.len() as u64;
        let (Some(tat), Some(state)) = (g.last_tat, g.cached.clone()) else {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            g.slots.clear();
            return;
        };
        g.slots.clear();
        g.last_tat = None;
        if n == 0 || state.version != g.version {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        match self.write(&state.plan_give_back(tat, n), latest).await {
            Ok(Written::Applied(after)) => g.cached = Some(after),
            Ok(Written::Refused(current)) => {
                self.dropped.fetch_add(n, Ordering::Relaxed);
                g.cached = current;
            }
            Err(_) => {
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn leased(&self, g: &mut Leases, after: BudgetState, n: u64, now: Instant) {
        let times = after.release_times(n, self.clock.epoch(now));
        g.slots = times.into_iter().map(|t| self.clock.instant(t)).collect();
        g.version = after.version;
        g.last_tat = Some(after.tat);
        g.successes = 0;
        g.cached = Some(after);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn drop_expired(&self, g: &mut Leases, now: Instant) {
        while g.slots.front().is_some_and(|&release| release + SLOT_GRACE < now) {
            g.slots.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fallback_slot(&self, now: Instant, latest: Instant) -> Option<Slot> {
        let slot = self.fallback.reserve(now, latest)?;
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    fn enter_fallback(&self, g: &mut Leases, now: Instant, error: StoreError) {
        g.fallback_until = Some(now + FALLBACK_RETRY);
        g.cached = None;
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.message);
    }

    /// Reads the item, creating it from the seed if absent.
    async fn fetch(&self, g: &mut Leases, latest: Instant) -> Result<(), StoreError> {
        let found = self.bounded(self.store.get(&self.key), latest).await?;
        let state = match found {
            Some(state) => state,
            None => match self.write(&Update::Create(self.seed.clone()), latest).await? {
                Written::Applied(state) | Written::Refused(Some(state)) => state,
                Written::Refused(None) => return Err(StoreError::unknown("the budget item could not be created")),
            },
        };
        g.cached = Some(state);
        Ok(())
    }

    async fn write(&self, update: &Update, latest: Instant) -> Result<Written, StoreError> {
        self.bounded(self.store.write(&self.key, update), latest).await
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
        latest: Instant,
    ) -> Result<T, StoreError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let limit = latest.saturating_duration_since(Instant::now()).min(self.call_timeout);
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::deadline(format!(
                "no answer from the coordination table within {} ms",
                limit.as_millis()
            ))),
        }
    }
}
