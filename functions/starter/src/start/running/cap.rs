//! One instance's side of the cap: it takes a slot right before a StartExecution call, gives back a
//! slot its call surely did not use, puts messages in the waiting line, and keeps a view of the cap
//! (settings, shards, line) to pick shards with room and to estimate the completion rate.
//!
//! Invariants:
//! - a take writes only to a shard the instance believes has room; while none has, a take is
//!   refused without a call, and the view is read again at most every [`REFRESH`];
//! - a take refused on its shard updates the view from the refusal (the shard as it is) and tries
//!   another shard, at most [`TAKE_TRIES`] writes per take; so does a take throttled or whose
//!   answer was lost (found again by its `taken_at`);
//! - every table call is bounded by the call timeout and the caller's `latest`;
//! - concurrent takes of one instance spread over shards: a take counts its slot in the view
//!   before its write, and corrects it from the answer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::line::{self, Rate};
use super::{execution_arn, rebalance, seed, CapView, Found, Holder, HolderState, Line, RunningStore, Write, Written};
use crate::config::{Config, RunningCap, WorkflowType};
use crate::start::claim::scope;
use crate::start::clock::Clock;
use crate::start::table::{bounded, StoreError, StoreErrorKind};

/// A view without room is read again after this long, when a take needs a slot.
pub const REFRESH: Duration = Duration::from_millis(200);
/// At most this many writes per take.
pub const TAKE_TRIES: usize = 4;
/// A starter runs a reclaim sweep at most this often, when it finds the cap full.
pub const STARTER_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A Standard slot is first checked after this many times the mean time a slot is held ...
pub const FIRST_CHECK_MEANS: f64 = 3.0;
/// ... and no sooner than this after its take (nor later than `RUNNING_EXPIRY_SECONDS`).
pub const MIN_FIRST_CHECK: Duration = Duration::from_secs(60);

/// A take's pause before it tries again after a throttle or a lost answer, at least; up to twice it.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Whether a failed call may succeed if made again now: throttled, or no answer (a 5xx, a reset,
/// or the call timeout; not a permanent failure). The caller's own deadline stops the next call.
fn retryable(e: &StoreError) -> bool {
    matches!(
        e.kind,
        StoreErrorKind::Throttled | StoreErrorKind::Unknown | StoreErrorKind::Deadline
    )
}

async fn pause() {
    let jitter = rand::rng().random_range(1.0..2.0);
    tokio::time::sleep(RETRY_PAUSE.mul_f64(jitter)).await;
}

/// The slot of a holder a refusal found, when this take wrote it (a write whose answer was lost,
/// taken at one of `unanswered`).
fn ours(found: &[Found], unanswered: &[u64]) -> Option<Slot> {
    found.iter().find_map(|f| match f {
        Found::Holder(Some(h)) if h.state == HolderState::Held && unanswered.contains(&h.taken_at_ms) => Some(Slot {
            name: h.name.clone(),
            shard: h.shard,
            taken_at_ms: h.taken_at_ms,
        }),
        _ => None,
    })
}

/// A slot taken by this instance, to keep or give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The execution's name.
    pub name: String,
    /// Its shard.
    pub shard: u32,
    /// When it was taken, ms since the epoch (the holder's `taken_at`).
    pub taken_at_ms: u64,
}

/// What a take came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// Taken by this call.
    Now(Slot),
    /// The execution already holds a slot (an earlier or concurrent delivery took it).
    Held {
        /// When that slot was taken, ms since the epoch.
        taken_at_ms: u64,
        /// When its check is due, s since the epoch.
        check_at_s: u64,
    },
    /// The execution held a slot and ended (its holder is a tombstone of this attempt).
    Ended {
        /// The tombstone's attempt.
        attempt: u32,
    },
    /// No slot is free, as far as this instance knows.
    Full {
        /// Slots held, as last seen.
        held: u64,
        /// The cap, as last seen.
        cap: u64,
    },
    /// The table could not be used.
    Failed(StoreError),
}

#[derive(Debug, Default)]
struct Cache {
    view: Option<CapView>,
    read_at: Option<Instant>,
    rate: Rate,
}

/// The cap as one instance uses it.
pub struct Cap {
    store: Arc<dyn RunningStore>,
    settings: RunningCap,
    state_machine_arn: String,
    express: bool,
    call_timeout: Duration,
    clock: Clock,
    cache: Mutex<Cache>,
    reading: tokio::sync::Mutex<()>,
    last_sweep: Mutex<Option<Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain numbers: a panic while holding the lock cannot leave them inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cap {
    /// The cap of `config` (its `MAX_RUNNING_EXECUTIONS`, `RUNNING_KEY`, ...) in `store`; `None`
    /// when the config has no cap.
    pub fn new(store: Arc<dyn RunningStore>, config: &Config, clock: Clock) -> Option<Cap> {
        Some(Cap {
            store,
            settings: config.running.clone()?,
            state_machine_arn: config.state_machine_arn.clone(),
            express: config.workflow_type == WorkflowType::Express,
            call_timeout: config.call_timeout,
            clock,
            cache: Mutex::new(Cache::default()),
            reading: tokio::sync::Mutex::new(()),
            last_sweep: Mutex::new(None),
        })
    }

    /// The cap's key (`RUNNING_KEY`).
    pub fn key(&self) -> &str {
        &self.settings.key
    }

    /// The store.
    pub fn store(&self) -> &dyn RunningStore {
        self.store.as_ref()
    }

    /// This cap, reading its times from `clock` (tests and simulations).
    pub fn with_clock(mut self, clock: Clock) -> Cap {
        self.clock = clock;
        self
    }

    /// The clock the cap's times are read from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// `RUNNING_EXPIRY_SECONDS`.
    pub fn expiry(&self) -> Duration {
        self.settings.expiry
    }

    /// The timeout of one table call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The view as last seen (`None` before the first read).
    pub fn seen(&self) -> Option<CapView> {
        lock(&self.cache).view.clone()
    }

    /// Slots held, as last seen.
    pub fn running(&self) -> Option<u64> {
        lock(&self.cache).view.as_ref().map(CapView::held)
    }

    /// The cap's size, as last seen.
    pub fn size(&self) -> Option<u64> {
        lock(&self.cache).view.as_ref().map(|v| v.settings.cap)
    }

    /// The completion rate `λ̂`, slots per second (see [`Rate`]).
    pub fn rate_per_second(&self) -> f64 {
        let cache = lock(&self.cache);
        let cap = cache
            .view
            .as_ref()
            .map_or(self.settings.max_running.into(), |v| v.settings.cap);
        cache.rate.per_second(cap, self.settings.expiry)
    }

    /// Whether `λ̂` is measured: an execution of the cap has ended (as last seen).
    pub fn measured(&self) -> bool {
        lock(&self.cache).rate.measured()
    }

    /// Whether a fresh message (first receive) may try for a slot now, or must join the line
    /// (there is no line before `λ̂` is measured).
    pub fn admits_fresh(&self) -> bool {
        let rate = self.rate_per_second();
        let cache = lock(&self.cache);
        let Some(view) = &cache.view else { return true };
        !cache.rate.measured()
            || line::admits_fresh(view.line, view.room(), self.clock.now_ms(), rate, view.settings.cap)
    }

    /// Whether this instance should run a sweep now (at most one every [`STARTER_SWEEP_INTERVAL`]);
    /// if so, the time is noted.
    pub fn sweep_due(&self) -> bool {
        let now = Instant::now();
        let mut last = lock(&self.last_sweep);
        if last.is_some_and(|at| now < at + STARTER_SWEEP_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Takes a slot for the execution `name` (of `attempt`: 0, or one more than a tombstone's to
    /// count a new Express execution of that name), unless it would wait past `latest`.
    ///
    /// A write the table refused for capacity, or whose answer was lost, is tried again (after a
    /// short pause, on a shard picked again), within [`TAKE_TRIES`] writes: a lost answer's write
    /// may have been applied, and then the next one finds the holder it wrote (its `taken_at`),
    /// which is this take's slot.
    pub async fn take(&self, name: &str, attempt: u32, latest: Instant) -> Taken {
        let mut unanswered: Vec<u64> = Vec::new();
        let mut failure = None;
        for _ in 0..TAKE_TRIES {
            let view = match self.current(latest).await {
                Ok(view) => view,
                Err(e) if retryable(&e) => {
                    failure = Some(e);
                    pause().await;
                    continue;
                }
                Err(e) => return Taken::Failed(e),
            };
            let Some(shard) = self.reserve() else {
                return Taken::Full {
                    held: view.held(),
                    cap: view.settings.cap,
                };
            };
            let holder = self.holder(name, shard, attempt);
            let write = Write::Take {
                holder: holder.clone(),
                above_cap: false,
            };
            match bounded(self.call_timeout, latest, self.store.write(self.key(), &write)).await {
                Ok(Written::Applied(_)) => {
                    return Taken::Now(Slot {
                        name: name.to_string(),
                        shard,
                        taken_at_ms: holder.taken_at_ms,
                    })
                }
                Ok(Written::Refused(found)) => {
                    self.unreserve(shard);
                    if let Some(slot) = ours(&found, &unanswered) {
                        return Taken::Now(slot);
                    }
                    if let Some(taken) = self.note(&found) {
                        return taken;
                    }
                }
                Err(e) if retryable(&e) => {
                    self.unreserve(shard);
                    if e.kind != StoreErrorKind::Throttled {
                        unanswered.push(holder.taken_at_ms);
                    }
                    if Instant::now() >= latest {
                        return Taken::Failed(e);
                    }
                    failure = Some(e);
                    pause().await;
                }
                Err(e) => {
                    self.unreserve(shard);
                    return Taken::Failed(e);
                }
            }
        }
        if let Some(e) = failure {
            return Taken::Failed(e);
        }
        let view = self.seen();
        Taken::Full {
            held: view.as_ref().map_or(0, CapView::held),
            cap: view.map_or(0, |v| v.settings.cap),
        }
    }

    /// Writes `write`, trying again after a throttle or a lost answer, within [`TAKE_TRIES`] writes
    /// and `latest`; with whether an earlier try's answer was lost (it may have been applied: a
    /// refusal may then be this write's own doing).
    pub(super) async fn write_retrying(&self, write: &Write, latest: Instant) -> Result<(Written, bool), StoreError> {
        let mut lost = false;
        let mut tries = 0;
        loop {
            tries += 1;
            match bounded(self.call_timeout, latest, self.store.write(self.key(), write)).await {
                Ok(written) => return Ok((written, lost)),
                Err(e) if retryable(&e) && tries < TAKE_TRIES && Instant::now() < latest => {
                    lost |= e.kind != StoreErrorKind::Throttled;
                    pause().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a holder, trying again after a throttle or a lost answer, as [`Cap::write_retrying`].
    pub(super) async fn holder_retrying(
        &self,
        scope: &str,
        name: &str,
        latest: Instant,
    ) -> Result<Option<Holder>, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match bounded(self.call_timeout, latest, self.store.holder(self.key(), scope, name)).await {
                Err(e) if retryable(&e) && tries < TAKE_TRIES && Instant::now() < latest => pause().await,
                read => return read,
            }
        }
    }

    /// Gives back a slot its call surely did not use. A failure leaves the holder to the reclaim
    /// (its execution does not exist: freed after the grace).
    pub async fn give_back(&self, slot: &Slot, latest: Instant) -> Result<(), StoreError> {
        let write = Write::GiveBack {
            scope: scope(&self.state_machine_arn).to_string(),
            name: slot.name.clone(),
            shard: slot.shard,
            taken_at_ms: slot.taken_at_ms,
        };
        match bounded(self.call_timeout, latest, self.store.write(self.key(), &write)).await? {
            Written::Applied(_) => self.unreserve(slot.shard),
            Written::Refused(found) => {
                self.note(&found);
            }
        }
        Ok(())
    }

    /// Puts `k` fresh messages in the waiting line (one write, a few if the line moved meanwhile):
    /// their due times, ms since the epoch, in order. If the table fails, the due times follow
    /// this instance's view alone.
    pub async fn join_line(&self, k: usize, latest: Instant) -> Vec<u64> {
        if k == 0 {
            return Vec::new();
        }
        let rate = self.rate_per_second() * line::LINE_PACE;
        let mut seen = self.seen().and_then(|v| v.line);
        for _ in 0..3 {
            let now_ms = self.clock.now_ms();
            let write = Write::Line(line::plan(seen, now_ms, k, rate));
            match bounded(self.call_timeout, latest, self.store.write(self.key(), &write)).await {
                Ok(Written::Applied(Some(after))) => {
                    self.note_line(after);
                    return line::due_times(after, k, rate);
                }
                Ok(Written::Refused(found)) => {
                    seen = found.iter().find_map(|f| match f {
                        Found::Line(line) => *line,
                        _ => None,
                    });
                }
                Ok(Written::Applied(None)) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "could not write the waiting line: due times from this instance's view");
                    break;
                }
            }
        }
        let now_ms = self.clock.now_ms();
        let start = seen.map_or(now_ms, |l| l.tat_ms.max(now_ms));
        line::due_times(
            Line {
                tat_ms: start.saturating_add(line::span_ms(k, rate)),
            },
            k,
            rate,
        )
    }

    /// The view: as last seen while it has room or is recent, else read again.
    async fn current(&self, latest: Instant) -> Result<CapView, StoreError> {
        if let Some(view) = self.fresh_or_roomy() {
            return Ok(view);
        }
        let _reading = self.reading.lock().await;
        // Another take may have read it meanwhile.
        if let Some(view) = self.fresh_or_roomy() {
            return Ok(view);
        }
        self.read(latest).await
    }

    fn fresh_or_roomy(&self) -> Option<CapView> {
        let cache = lock(&self.cache);
        let view = cache.view.as_ref()?;
        let recent = cache.read_at.is_some_and(|at| at.elapsed() < REFRESH);
        (recent || view.room() > 0).then(|| view.clone())
    }

    /// Reads the view (creating the cap from `MAX_RUNNING_EXECUTIONS` if it does not exist yet,
    /// and ending a freeze whose held slots now fit the cap), and notes it.
    pub async fn read(&self, latest: Instant) -> Result<CapView, StoreError> {
        let key = self.key();
        let found = bounded(self.call_timeout, latest, self.store.view(key)).await?;
        let mut view = match found {
            Some(view) => view,
            None => {
                let seeded = seed(self.settings.max_running.into());
                bounded(self.call_timeout, latest, self.store.write(key, &seeded)).await?;
                bounded(self.call_timeout, latest, self.store.view(key))
                    .await?
                    .ok_or_else(|| StoreError::unknown("the cap's settings could not be created"))?
            }
        };
        if let Some(write) = rebalance(&view) {
            if let Written::Applied(_) = bounded(self.call_timeout, latest, self.store.write(key, &write)).await? {
                tracing::info!(
                    cap = view.settings.cap,
                    held = view.held(),
                    "the cap's shards are rebalanced"
                );
                view = bounded(self.call_timeout, latest, self.store.view(key))
                    .await?
                    .unwrap_or(view);
            }
        }
        let mut cache = lock(&self.cache);
        cache.rate.record(self.clock.now_ms(), &view);
        cache.view = Some(view.clone());
        cache.read_at = Some(Instant::now());
        Ok(view)
    }

    /// Picks a shard with room in the view, at random, and counts the slot in it.
    fn reserve(&self) -> Option<u32> {
        let mut cache = lock(&self.cache);
        let view = cache.view.as_mut()?;
        let open: Vec<u32> = (0u32..)
            .zip(&view.shards)
            .filter(|(_, s)| s.held < s.cap)
            .map(|(i, _)| i)
            .collect();
        if open.is_empty() {
            return None;
        }
        let shard = open[rand::rng().random_range(0..open.len())];
        view.shards[shard as usize].held += 1;
        Some(shard)
    }

    /// Notes in the view a slot that `shard` no longer holds (given back or released).
    pub(super) fn unreserve(&self, shard: u32) {
        if let Some(s) = lock(&self.cache)
            .view
            .as_mut()
            .and_then(|v| v.shards.get_mut(shard as usize))
        {
            s.held = s.held.saturating_sub(1);
        }
    }

    /// Notes what a refusal found; the take's outcome when it was the holder.
    fn note(&self, found: &[Found]) -> Option<Taken> {
        let mut outcome = None;
        let mut cache = lock(&self.cache);
        for f in found {
            match f {
                Found::Shard(i, Some(shard)) => {
                    if let Some(s) = cache.view.as_mut().and_then(|v| v.shards.get_mut(*i as usize)) {
                        *s = *shard;
                    }
                }
                Found::Holder(Some(h)) => {
                    outcome = Some(match h.state {
                        HolderState::Held => Taken::Held {
                            taken_at_ms: h.taken_at_ms,
                            check_at_s: h.check_at_s,
                        },
                        HolderState::Released => Taken::Ended { attempt: h.attempt },
                    })
                }
                _ => {}
            }
        }
        outcome
    }

    fn note_line(&self, line: Line) {
        if let Some(view) = lock(&self.cache).view.as_mut() {
            view.line = Some(line);
        }
    }

    /// When a slot taken now is first checked by the reclaim, from now: Express, after
    /// `RUNNING_EXPIRY_SECONDS` (it is then released); Standard, after [`FIRST_CHECK_MEANS`] × the
    /// mean time a slot is held, at least [`MIN_FIRST_CHECK`], at most `RUNNING_EXPIRY_SECONDS`
    /// (before that mean is measured, the latter): a slot whose event was lost comes back a few
    /// durations after its execution ended, not a fixed five minutes later, and an execution that
    /// runs long is described about `log2(age / first check)` times (see the reclaim).
    pub fn first_check(&self) -> Duration {
        let expiry = self.settings.expiry;
        let mean = lock(&self.cache).rate.mean_held();
        match (self.express, mean) {
            (false, Some(mean)) => mean
                .mul_f64(FIRST_CHECK_MEANS)
                .clamp(MIN_FIRST_CHECK.min(expiry), expiry),
            _ => expiry,
        }
    }

    /// A held holder for `name` on `shard`, taken now, first checked after [`Cap::first_check`].
    fn holder(&self, name: &str, shard: u32, attempt: u32) -> Holder {
        let taken_at_ms = self.clock.now_ms();
        Holder {
            scope: scope(&self.state_machine_arn).to_string(),
            name: name.to_string(),
            shard,
            state: HolderState::Held,
            attempt,
            execution_arn: execution_arn(&self.state_machine_arn, name),
            taken_at_ms,
            check_at_s: taken_at_ms.div_ceil(1000) + self.first_check().as_secs(),
            express: self.express,
            released_at_ms: None,
        }
    }
}
