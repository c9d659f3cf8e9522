//! The budget spread over as many items as its lessees' load needs (docs/scale.md).
//!
//! One DynamoDB item takes at most 1,000 writes a second. Leases are sized by demand, so the
//! lease writes are about `r / BatchSize` a second: 600 at Express's 6,000/s with BatchSize
//! 10, which one item does not take with its refusals and give-backs. The budget is then spread
//! over `S` items ("shards"), each a GCRA of its own at `r / S` and `B / S`
//! ([`BudgetState::shards`]): the sum of the shards is the budget, so the invariant (releases in
//! any window ≤ `B + r·t`) holds shard by shard, hence in sum.
//!
//! - **Items.** Shard 0 is the root item `quota#<key>`; shard `i ≥ 1` is `quota#<key>#<i>`.
//!   Each records the `shards` and the `layout` it was last scaled to; it is active while its
//!   index is below its own `shards`.
//! - **Homes.** A lessee leases from `hash mod S` (its home), S from the highest layout it has
//!   seen. A home not yet created sends it to the root until it is.
//! - **Load.** Every lease adds 1 to its item's `leases`; a lessee measures its home's applied
//!   leases per second over [`METER_SECONDS`] and counts the item throttles it meets. When the
//!   measure calls for another `S` ([`wanted`]), it takes the root's plan lock (one conditional
//!   write, at most one reshard per [`PLAN_SECONDS`]) and reshards ([`reshard`]).
//! - **Resharding keeps the sum of the rates within the budget at every write.** First every
//!   active shard whose share falls (or that is retired) is rescaled; only then are shards
//!   raised, created or made active again. Each starts empty when the slots booked before the
//!   reshard are out ([`BudgetState::plan_reshard`]).
//!   A reshard cut short leaves the budget below its rate, never above; the next one (any
//!   lessee whose home is missing asks for it) completes it.
//! - **The operator's change** (`set`, the quota sync) writes the root, then every other active
//!   shard ([`spread_limits`]).
//!
//! Hand-written (no crate does a sharded GCRA over conditional writes); the pure parts are
//! unit-tested, the reshard against the in-memory table and the 1,000-instance benchmark.

use super::{rules, BudgetState, Store, Update, Written};
use crate::close::backoff::unit_random;
use crate::start::table::{StoreError, StoreErrorKind};

/// The most items a budget is spread over.
pub const MAX_SHARDS: u32 = 32;
/// Applied leases per second on one item that a reshard aims at: with the refusals and
/// give-backs they bring, well under half of the item's 1,000 write units.
pub const TARGET_LEASES_PER_SECOND: f64 = 120.0;
/// Applied leases per second on one item above which the budget grows (the band between this
/// and [`TARGET_LEASES_PER_SECOND`] keeps a reshard from undoing the last one).
pub const GROW_AT: f64 = 200.0;
/// Item throttles a lessee meets within one measure that call for one more shard (a hot item,
/// whatever the leases say: reads, refusals and give-backs count too).
pub const THROTTLES_TO_GROW: u32 = 3;
/// The length of a lessee's measure of its home's load, seconds.
pub const METER_SECONDS: f64 = 2.0;
/// Measures in a row that must call for fewer items before the budget shrinks: a shrink is
/// never urgent, and the tail of a drain (a few instances left) is no reason to reshard.
pub const SHRINK_MEASURES: u32 = 5;
/// The plan lock's length, seconds: at most one reshard per this, and a reshard gives up when
/// it would run past [`RESHARD_SECONDS`].
pub const PLAN_SECONDS: f64 = 10.0;
/// The longest a reshard may write, seconds (well within the plan lock, so that two never
/// interleave).
pub const RESHARD_SECONDS: f64 = 5.0;
/// Tries of one shard's [`rescale`] before it gives up (the hot item it must write throttles
/// most of them: 40 tries span about 0.6 s, past the next second's capacity).
const STEP_ATTEMPTS: usize = 40;
/// How long a reshard holds leases off a shard while it reads and rescales it, seconds (at most:
/// the rescale unfreezes it).
const FREEZE_SECONDS: f64 = 1.0;
/// A lessee that finds its item frozen looks again this much later, seconds (the rescale that
/// unfreezes it is a table call away).
pub const FROZEN_POLL_SECONDS: f64 = 0.02;

/// The key of shard `index` of the budget `key`.
pub fn shard_key(key: &str, index: u32) -> String {
    match index {
        0 => key.to_string(),
        i => format!("{key}#{i}"),
    }
}

/// The home of a lessee whose hash is `hash` when the budget is spread over `shards` items.
pub fn home(hash: u64, shards: u32) -> u32 {
    (hash % u64::from(shards.max(1))) as u32
}

/// The shard count the load calls for: `per_item` applied leases per second on each of
/// `shards` items, and `throttles` item throttles met in the measure. It grows when an item is
/// over [`GROW_AT`] or hot, and shrinks when fewer items would each stay under
/// [`TARGET_LEASES_PER_SECOND`]; between the two it stays.
pub fn wanted(shards: u32, per_item: f64, throttles: u32) -> u32 {
    let shards = shards.clamp(1, MAX_SHARDS);
    let total = per_item.max(0.0) * f64::from(shards);
    let fit = ((total / TARGET_LEASES_PER_SECOND).ceil() as u32).clamp(1, MAX_SHARDS);
    if throttles >= THROTTLES_TO_GROW {
        return fit.max(shards + 1).min(MAX_SHARDS);
    }
    if per_item > GROW_AT {
        return fit.max(shards);
    }
    fit.min(shards)
}

/// A lessee's measure of its home's load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meter {
    /// Where the measure started: the item's layout, the time (epoch seconds), its `leases`.
    start: Option<(u64, f64, u64)>,
    throttles: u32,
    /// Measures in a row that called for fewer items.
    low: u32,
}

impl Meter {
    /// The home item as seen at `now` (epoch seconds): the shard count the measure calls for
    /// when it closes with a change, else `None`. A hot item (throttles) closes it at once; a
    /// shrink needs [`SHRINK_MEASURES`] measures in a row.
    pub fn observe(&mut self, now: f64, state: &BudgetState) -> Option<u32> {
        let Some((layout, since, leases)) = self.start else {
            self.restart(now, state);
            return None;
        };
        if layout != state.layout || state.leases < leases {
            self.restart(now, state);
            self.low = 0;
            return None;
        }
        let elapsed = now - since;
        if elapsed < METER_SECONDS && self.throttles < THROTTLES_TO_GROW {
            return None;
        }
        let per_item = (state.leases - leases) as f64 / elapsed.max(METER_SECONDS / 4.0);
        let want = wanted(state.shards, per_item, self.throttles);
        self.restart(now, state);
        self.low = match want < state.shards {
            true => self.low + 1,
            false => 0,
        };
        match want.cmp(&state.shards) {
            std::cmp::Ordering::Greater => Some(want),
            std::cmp::Ordering::Less if self.low >= SHRINK_MEASURES => Some(want),
            _ => None,
        }
    }

    /// An item throttle met.
    pub fn throttled(&mut self) {
        self.throttles = self.throttles.saturating_add(1);
    }

    /// Starts again (another home, or a new layout).
    pub fn reset(&mut self) {
        *self = Meter::default();
    }

    fn restart(&mut self, now: f64, state: &BudgetState) {
        self.start = Some((state.layout, now, state.leases));
        self.throttles = 0;
    }
}

/// One shard's change in a reshard.
struct Change<'a> {
    /// The root as the plan lock left it.
    root: &'a BudgetState,
    index: u32,
    target: u32,
    layout: u64,
    /// No raised or new share releases before this (epoch seconds).
    not_before: f64,
}

/// The two passes of a reshard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Shards whose share falls, or that retire.
    Lower,
    /// Shards whose share rises, made active again, or new.
    Raise,
}

/// Reshards the budget `key` to `target` items, if the root is still in `seen_layout` and its
/// plan lock is free; `now` reads the time (epoch seconds). Returns the new layout, or `None`
/// when another lessee planned first. The caller bounds it by [`RESHARD_SECONDS`] at most.
pub async fn reshard(
    store: &dyn Store,
    key: &str,
    target: u32,
    seen_layout: u64,
    now: &(dyn Fn() -> f64 + Send + Sync),
) -> Result<Option<u64>, StoreError> {
    let target = target.clamp(1, MAX_SHARDS);
    let Some(root) = store.get(key).await? else {
        return Ok(None);
    };
    let at = now();
    if root.layout != seen_layout || root.plan_until >= at {
        return Ok(None);
    }
    let plan = Update::Plan {
        layout: seen_layout,
        now: at,
        until: at + PLAN_SECONDS,
        span: root.span.max(root.shards).max(target),
    };
    let Written::Applied(root) = store.write(key, &plan).await? else {
        return Ok(None);
    };
    let layout = root.layout + 1;
    let change = |index, not_before| Change {
        root: &root,
        index,
        target,
        layout,
        not_before,
    };
    // When every slot booked before the reshard is out (at the rates it was booked at).
    let mut booked = now();
    for index in 0..root.span {
        if let Some(seen) = step(store, key, &change(index, booked), Pass::Lower, now).await? {
            if index < seen.shards {
                booked = booked.max(seen.tat - seen.tau());
            }
        }
    }
    for index in 0..target {
        step(store, key, &change(index, booked), Pass::Raise, now).await?;
    }
    Ok(Some(layout))
}

/// What [`rescale`] did to a shard.
struct Rescaled {
    /// The shard as last read before its write (`None`: absent).
    seen: Option<BudgetState>,
    /// Whether a write was applied (`plan` asked for one).
    wrote: bool,
}

/// What to write to a shard as it is read, at a time (epoch seconds); `None`: nothing.
type Plan<'a> = dyn Fn(Option<&BudgetState>, f64) -> Option<Update> + Send + Sync + 'a;

/// One shard rescaled as `plan` decides, the way a reshard and the operator's change both write
/// shards: frozen (no lease applies to it), read, and rescaled by a compare-and-set that
/// unfreezes it. A hot item moves under a plain compare-and-set with every lease; a throttle
/// or a refusal is tried again a little later ([`STEP_ATTEMPTS`]), within the caller's bound.
async fn rescale(
    store: &dyn Store,
    shard: &str,
    now: &(dyn Fn() -> f64 + Send + Sync),
    plan: &Plan<'_>,
) -> Result<Rescaled, StoreError> {
    let mut last = None;
    for attempt in 0..STEP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(rules::retry_backoff(unit_random())).await;
        }
        match try_rescale(store, shard, now, plan).await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(e) if e.kind == StoreErrorKind::Permanent => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| StoreError::unknown(format!("shard {shard} moved under each of {STEP_ATTEMPTS} writes"))))
}

/// One try of [`rescale`]: `Some` when it is done, `None` to try again.
async fn try_rescale(
    store: &dyn Store,
    shard: &str,
    now: &(dyn Fn() -> f64 + Send + Sync),
    plan: &Plan<'_>,
) -> Result<Option<Rescaled>, StoreError> {
    let mut seen = store.get(shard).await?;
    let done = |seen, wrote| Ok(Some(Rescaled { seen, wrote }));
    let Some(mut update) = plan(seen.as_ref(), now()) else {
        return done(seen, false);
    };
    if let Update::SetLimits { .. } = update {
        let freeze = Update::Freeze {
            until: now() + FREEZE_SECONDS,
        };
        if let Written::Refused(_) = store.write(shard, &freeze).await? {
            return Ok(None);
        }
        // Read again: what the freeze holds still.
        seen = store.get(shard).await?;
        match plan(seen.as_ref(), now()) {
            Some(again) => update = again,
            None => return done(seen, false),
        }
    }
    match store.write(shard, &update).await? {
        Written::Applied(_) => done(seen, true),
        Written::Refused(_) => Ok(None),
    }
}

/// One shard's part in a reshard's pass ([`rescale`] as [`step_update`] plans it). Returns the
/// shard as last read before its write.
async fn step(
    store: &dyn Store,
    key: &str,
    change: &Change<'_>,
    pass: Pass,
    now: &(dyn Fn() -> f64 + Send + Sync),
) -> Result<Option<BudgetState>, StoreError> {
    let plan = |current: Option<&BudgetState>, at| step_update(current, change, pass, at);
    Ok(rescale(store, &shard_key(key, change.index), now, &plan).await?.seen)
}

/// What a pass writes to a shard as it is (`None`: nothing).
fn step_update(current: Option<&BudgetState>, change: &Change<'_>, pass: Pass, now: f64) -> Option<Update> {
    let Change {
        root,
        index,
        target,
        layout,
        not_before,
    } = *change;
    match (current, pass) {
        (Some(s), _) if s.layout >= layout => None,
        (None, Pass::Lower) => None,
        (None, Pass::Raise) => {
            let mut fresh = BudgetState {
                shards: target,
                layout,
                version: 1,
                spread: 0.0,
                leases: 0,
                plan_until: 0.0,
                span: 0,
                frozen_until: 0.0,
                ..root.clone()
            };
            fresh.tat = super::tick(not_before.max(now) + fresh.tau());
            Some(Update::Create(fresh))
        }
        (Some(s), Pass::Lower) => {
            let active = index < s.shards;
            (active && (index >= target || s.shards < target))
                .then(|| s.plan_reshard(index, target, layout, now, not_before))
        }
        (Some(s), Pass::Raise) => Some(s.plan_reshard(index, target, layout, now, not_before)),
    }
}

/// After the operator's change to the root `root`: every other active shard takes its rate and
/// burst (each [`rescale`]d, keeping its level). Returns how many were written.
pub async fn spread_limits(store: &dyn Store, key: &str, root: &BudgetState, now: f64) -> Result<u32, StoreError> {
    let mut written = 0;
    for index in 1..root.span.max(root.shards) {
        let plan = |current: Option<&BudgetState>, at| {
            current
                .filter(|s| index < s.shards && (s.rate_per_second != root.rate_per_second || s.burst != root.burst))
                .map(|s| s.plan_set_limits(root.rate_per_second, root.burst, at))
        };
        if rescale(store, &shard_key(key, index), &move || now, &plan).await?.wrote {
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
#[path = "shards_tests.rs"]
mod tests;
