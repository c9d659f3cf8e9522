//! The shared StartExecution budget: one token bucket for every instance of every deployment,
//! kept in one item of the coordination table (or spread over several when its load calls for
//! it: [`shards`]; each item is then the bucket below at its share) and leased in small chunks.
//!
//! ## The math (GCRA: the generic cell rate algorithm, a token bucket as one number)
//! The item holds `tat`, seconds since the Unix epoch: the theoretical arrival time of the next
//! slot at the effective rate `r = rate × factor` (slots per second). `τ = B / r` where `B` is
//! the effective burst (the configured burst less [`BURST_RESERVE`] of refill). At time `now`
//! the bucket holds `B − r × (max(tat, now) − now)` slots.
//!
//! Leasing `n` slots at `now`: `start = max(tat, now)`, `tat' = start + n / r`. Slot `j`
//! (1 ≤ j ≤ n) has the theoretical time `θ_j = start + j / r` and is released at
//! `ρ_j = max(answered, θ_j − τ)`, where `answered` is when the lease's answer arrived
//! ([`rules::release_at`]): a full bucket releases `B` slots at once, then one every `1/r`.
//! A lease of `n = min(demand, r × LEASE_SECONDS)` slots is allowed while its first slot is
//! released within [`HORIZON_SECONDS`] of `now`: `tat ≤ now + τ + HORIZON_SECONDS`. A lessee
//! asks only once that holds with half the horizon to spare, so lessees that ask at the same
//! moment all fit, and a refusal means the budget really is booked that far ahead. It is one
//! conditional UpdateItem without a prior read, in one of two shapes (`tat < now`: `SET tat = now + n/r`; else `SET tat = tat + n/r` under
//! `tat BETWEEN now AND limit`); a refusal returns the item as it is, so the next try is right.
//!
//! Invariant: over any window of `t` seconds, the slots released by all lessees together
//! number at most `B + r × t`, the quota's own bucket, whatever the interleaving — provided a
//! slot is used at its release time ([`SLOT_GRACE`]; a later slot is dropped, never used late).
//! A slot released later than `θ_j − τ` (a slow answer) only comes later. Each lessee reads
//! `now` from its own clock ([`crate::start::clock`]): one whose clock is `δ` ahead gets its slots `δ` early
//! in true time. The burst reserve (100 ms of refill) covers the grace and up to
//! [`rules::MAX_SKEW`] of skew, with room for the network's jitter ([`rules`]).
//!
//! ## Changing the rate keeps the bucket's level
//! `tat − now` is a backlog in seconds *at the rate it was booked at*. When the rate or the
//! burst changes (the operator's `set`, a throttle's decrease, the successes' increase), the
//! bucket's level in slots, `L = B − r × max(0, tat − now)`, is kept: `tat' = now + (B' − min(L,
//! B')) / r'` (a full bucket, `tat ≤ now`, stays full). Such a change is written as a
//! compare-and-set on `tat` (and the version), since it depends on `tat`'s exact value.
//!
//! ## Adapting, shared (AIMD)
//! A throttle seen by any instance halves `factor` (not below [`MIN_RATE_FRACTION`]) and
//! empties the bucket (`tat ≥ now + τ`), once per `version`. The throttled instance writes
//! nothing at once: its next lease carries the decrease, as a compare-and-set on `tat` and the
//! version the throttled slot was leased under, and bumps it (a lessee that finds the version
//! moved on knows someone else decreased). Successes raise `factor` back: each lease carries
//! the successes of the current version since the instance's last lease,
//! `factor += INCREASE_PER_SECOND × successes / r`, up to 1. Every change of rate, burst or
//! factor bumps `version`, and every lease is conditioned on it, so no instance leases with a
//! stale rate. The operator's `rate` and `burst` live in the same item.
//!
//! ## Repaying the static split
//! Starts an instance made on the static split while the table failed were not in the budget.
//! Its next lease books them too (`n + debt` slots of `tat`, `n` of them its own), so the
//! budget accounts for them once the table answers again.

pub mod lease;
pub mod rules;
pub mod shards;

use async_trait::async_trait;

pub use self::rules::{HORIZON_SECONDS, LEASE_SECONDS, SLOT_GRACE};
use crate::config::BURST_RESERVE;
pub use crate::start::pace::{DECREASE_FACTOR, INCREASE_PER_SECOND, MIN_RATE_FRACTION};
use crate::start::table::StoreError;

/// Times are kept to this resolution, in seconds (0.1 ms): a `tat` of ~1.8e9 s then has 14
/// significant digits, which a Number attribute and an `f64` both hold exactly, so a `tat`
/// read back compares equal to the one written (the give-back's condition).
pub const TICK_SECONDS: f64 = 1e-4;

/// `seconds` rounded to the nearest tick: the `f64` nearest to that 4-decimal number, as a
/// Number attribute holding it reads back.
fn tick(seconds: f64) -> f64 {
    format!("{seconds:.4}").parse().unwrap_or(seconds)
}

/// `seconds` rounded up to a whole tick (durations: never lease less time than the slots take).
fn tick_up(seconds: f64) -> f64 {
    tick((seconds / TICK_SECONDS).ceil() * TICK_SECONDS)
}

/// The budget item, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetState {
    /// The operator's rate, slots per second (the quota's refill less what others use).
    pub rate_per_second: f64,
    /// The operator's burst, slots (the quota's bucket).
    pub burst: f64,
    /// The shared AIMD multiplier of the rate, in `[MIN_RATE_FRACTION, 1]`.
    pub factor: f64,
    /// Bumped by every change of rate, burst or factor.
    pub version: u64,
    /// The theoretical arrival time of the next slot, seconds since the Unix epoch.
    pub tat: f64,
    /// The contention spread the last lease wrote, seconds ([`rules::widen`]): lessees that
    /// wait for room start from it, so they learn together how many wait with them.
    pub spread: f64,
    /// The number of items the budget is spread over as this item was last scaled to
    /// ([`shards`]): this item holds `1 / shards` of the rate and the burst, and is retired when
    /// its index is `shards` or more. At least 1 (1: the budget is this one item).
    pub shards: u32,
    /// Bumped on every item by each change of `shards` ([`shards::reshard`]): lessees follow
    /// the highest layout they have seen.
    pub layout: u64,
    /// Leases applied to this item so far (lessees measure the item's write load from it).
    pub leases: u64,
    /// The root item only: until when (seconds since the epoch) a reshard holds the plan lock.
    pub plan_until: f64,
    /// The root item only: every shard that may exist has an index below this.
    pub span: u32,
    /// Until when (seconds since the epoch) no lease applies: a reshard rescales this item.
    pub frozen_until: f64,
}

/// A conditional write to the budget item. The store applies it only if its condition holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Creates the item if it does not exist.
    Create(BudgetState),
    /// Leases slots. Condition: `version = version` and the shape's condition on `tat`.
    /// `factor`: a new factor to write (then `version + 1`): raised by successes, or lowered
    /// by a throttle (then the bucket is emptied too; the shape is `Exact`). `SET spread`.
    Lease {
        /// The version the lease was computed under.
        version: u64,
        /// The lessee's now, seconds since the epoch: refused while the item is frozen
        /// (`frozen_until ≥ now`).
        now: f64,
        /// The shape.
        shape: Shape,
        /// A raised factor, if the lease carries successes.
        factor: Option<f64>,
        /// The lessee's contention spread, seconds.
        spread: f64,
    },
    /// Returns unused slots. Condition: `version = version AND tat = expected_tat`.
    GiveBack {
        /// The version of the lease.
        version: u64,
        /// `tat` right after the lease (no one leased since).
        expected_tat: f64,
        /// `tat` without the returned slots.
        new_tat: f64,
    },
    /// The operator's change, or a reshard: `SET rate, burst, shards, layout, version + 1, tat =
    /// new_tat, frozen_until = 0`. Condition: `version = version AND tat = expected_tat`.
    SetLimits {
        /// The version as read.
        version: u64,
        /// Slots per second.
        rate_per_second: f64,
        /// Slots.
        burst: f64,
        /// The items the budget is spread over ([`BudgetState::shards`]).
        shards: u32,
        /// The layout ([`BudgetState::layout`]).
        layout: u64,
        /// `tat` as read.
        expected_tat: f64,
        /// The rescaled `tat` (the bucket's level kept).
        new_tat: f64,
    },
    /// A reshard holds leases off this item while it reads and rescales it: `SET frozen_until =
    /// until`. Condition: the item exists.
    Freeze {
        /// Seconds since the epoch.
        until: f64,
    },
    /// The root's plan lock ([`shards::reshard`]). Condition: `layout = layout AND plan_until <
    /// now`. `SET plan_until = until, span = span`.
    Plan {
        /// The layout the plan was made under.
        layout: u64,
        /// Now, seconds since the epoch.
        now: f64,
        /// The lock's end, seconds since the epoch.
        until: f64,
        /// The new span.
        span: u32,
    },
}

/// The shapes of a lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `tat = expected`: `SET tat = tat_after` (a lease that also changes the rate: `tat`
    /// is rescaled, see the module docs).
    Exact {
        /// `tat` as read.
        expected: f64,
        /// The rescaled `tat` plus the lease.
        tat_after: f64,
    },
    /// `tat < now`: `SET tat = tat_after`.
    FromNow {
        /// Now, seconds since the epoch.
        now: f64,
        /// `now + n / r`.
        tat_after: f64,
    },
    /// `now ≤ tat ≤ limit`: `SET tat = tat + delta`.
    Extend {
        /// Now, seconds since the epoch.
        now: f64,
        /// The highest `tat` whose next slot is released within the horizon.
        limit: f64,
        /// `n / r`, seconds.
        delta: f64,
    },
}

/// What the store did with an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Applied: the item after the write.
    Applied(BudgetState),
    /// The condition did not hold: the item as it is (`None`: there is no item).
    Refused(Option<BudgetState>),
}

/// The budget item's storage: one conditional write per operation, behind a narrow trait.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads the item (strongly consistent); `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<BudgetState>, StoreError>;
    /// Applies `update` if its condition holds.
    async fn write(&self, key: &str, update: &Update) -> Result<Written, StoreError>;
}

/// What a lessee asks of the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseAsk {
    /// Now, seconds since the epoch (the lessee's clock).
    pub now: f64,
    /// The slots it wants ([`rules::lease_size`] caps them); 0: none, only what it carries.
    pub want: u64,
    /// The latest a slot may be released and still be used, seconds since the epoch (the
    /// caller's cutoff; `f64::INFINITY`: none). A lease holds no slot released after it.
    pub latest: f64,
    /// Successes of the budget's current version since its last lease (they raise the factor).
    pub successes: u64,
    /// The version a throttled slot was leased under, not yet written (a decrease).
    pub throttled: Option<u64>,
    /// Starts made on the static split, to repay to the budget.
    pub debt: u64,
    /// The lessee's contention spread, seconds (written with the lease).
    pub spread: f64,
}

/// What to do to get slots.
#[derive(Debug, Clone, PartialEq)]
pub enum LeasePlan {
    /// Write this lease of `slots` slots, which also books `repaid` starts of the static split.
    Lease {
        /// The conditional write.
        update: Update,
        /// Slots it leases.
        slots: u64,
        /// Starts of the static split it books.
        repaid: u64,
    },
    /// No slot fits within the horizon before this time (seconds since the epoch).
    WaitUntil(f64),
    /// Nothing to write (no slot wanted, nothing carried).
    Nothing,
}

impl BudgetState {
    /// A full bucket at `rate_per_second` and `burst`, version 1.
    pub fn new(rate_per_second: f64, burst: f64) -> BudgetState {
        BudgetState {
            rate_per_second,
            burst,
            factor: 1.0,
            version: 1,
            tat: 0.0,
            spread: 0.0,
            shards: 1,
            layout: 0,
            leases: 0,
            plan_until: 0.0,
            span: 1,
            frozen_until: 0.0,
        }
    }

    /// The effective rate of this item: `rate × factor / shards`, slots per second (positive).
    pub fn effective_rate(&self) -> f64 {
        (self.rate_per_second * self.factor / f64::from(self.shards.max(1))).max(f64::MIN_POSITIVE)
    }

    /// The whole budget's effective rate as this item's factor has it: `rate × factor`, slots
    /// per second (every item of a budget spread over several has its own factor).
    pub fn budget_rate(&self) -> f64 {
        self.rate_per_second * self.factor
    }

    /// The effective burst of this item: the burst less [`BURST_RESERVE`] of refill, over
    /// `shards`, at least 1 slot.
    pub fn effective_burst(&self) -> f64 {
        let burst = self.burst - self.rate_per_second * BURST_RESERVE.as_secs_f64();
        (burst / f64::from(self.shards.max(1))).max(1.0)
    }

    /// `τ = B / r`, seconds.
    pub fn tau(&self) -> f64 {
        self.effective_burst() / self.effective_rate()
    }

    /// The lease `ask` calls for: up to `ask.want` slots ([`rules::lease_size`]), carrying its
    /// successes (a raised factor), a throttle of this version (a lowered factor and an emptied
    /// bucket) and the static split's starts to repay.
    pub fn plan_lease(&self, ask: &LeaseAsk) -> LeasePlan {
        let now = ask.now;
        if self.frozen_until >= now {
            // A reshard unfreezes it with its next write, a table call away.
            return LeasePlan::WaitUntil(self.frozen_until.min(now + shards::FROZEN_POLL_SECONDS));
        }
        let decrease = ask.throttled == Some(self.version);
        let factor = match decrease {
            true => Some((self.factor * DECREASE_FACTOR).max(MIN_RATE_FRACTION)),
            false => self.raised_factor(ask.successes),
        };
        let mut next = self.clone();
        if let Some(f) = factor {
            next.factor = f;
        }
        let r = next.effective_rate();
        let start = match decrease {
            true => self.rescaled_tat(&next, now).max(now + next.tau()),
            false => self.tat.max(now),
        };
        let ahead = start - next.tau() - now;
        let booked = ahead > HORIZON_SECONDS / 2.0;
        if booked && !decrease {
            return LeasePlan::WaitUntil(start - next.tau() - HORIZON_SECONDS / 2.0);
        }
        // A decrease is written even when no slot fits (then it leases none).
        let n = match (ask.want, booked) {
            (0, _) | (_, true) => 0,
            (want, false) => {
                let from = start.max(self.booked_from(&next, now));
                rules::lease_size(want, r).min(self.slots_before(&next, from, now, ask.latest))
            }
        };
        if n == 0 && factor.is_none() && ask.debt == 0 {
            return LeasePlan::Nothing;
        }
        let delta = tick_up((n + ask.debt) as f64 / r);
        let lease = |shape, slots| LeasePlan::Lease {
            update: Update::Lease {
                version: self.version,
                now,
                shape,
                factor,
                spread: tick(ask.spread),
            },
            slots,
            repaid: ask.debt,
        };
        if factor.is_some() {
            let base = match decrease {
                true => start,
                false => self.rescaled_tat(&next, now).max(self.booked_from(&next, now)),
            };
            let shape = Shape::Exact {
                expected: self.tat,
                tat_after: tick(base + delta),
            };
            return lease(shape, n);
        }
        // Booked from `from`, not `now`: see [`BudgetState::booked_from`].
        let from = tick(self.booked_from(&next, now));
        let shape = if self.tat < from {
            Shape::FromNow {
                now: from,
                tat_after: tick(from + delta),
            }
        } else {
            Shape::Extend {
                now: from,
                limit: tick(now + HORIZON_SECONDS + next.tau()),
                delta,
            }
        };
        lease(shape, n)
    }

    /// When the next slot leased at `now` would be released, seconds since the epoch (no
    /// earlier than `now`; rate changes a lease may carry aside).
    pub fn next_release(&self, now: f64) -> f64 {
        let start = self.tat.max(self.booked_from(self, now));
        (start + 1.0 / self.effective_rate() - self.tau()).max(now)
    }

    /// How many slots booked from `start` (at the rate and burst of `next`) are released by
    /// `latest` (slot `j` at `max(now, start + j/r − τ)`).
    fn slots_before(&self, next: &BudgetState, start: f64, now: f64, latest: f64) -> u64 {
        let first_due = start - next.tau();
        let span = latest - first_due.max(now);
        if span < 0.0 {
            return 0;
        }
        let behind = (now - first_due).max(0.0);
        ((span + behind) * next.effective_rate())
            .floor()
            .clamp(0.0, u64::MAX as f64) as u64
    }

    /// Where a lease at `now` books from at the least: `now + min(MAX_SKEW, τ)`. An instance
    /// whose clock is behind by up to [`rules::MAX_SKEW`] would otherwise book slots in the
    /// true past, where a full bucket does not count them. In a busy budget `tat ≥ now + τ`
    /// already, so this costs nothing; from a full bucket it costs up to `r × MAX_SKEW` of the
    /// burst, once.
    fn booked_from(&self, next: &BudgetState, now: f64) -> f64 {
        now + rules::MAX_SKEW.as_secs_f64().min(next.tau())
    }

    /// The factor raised by `successes` (`None` when it stays as it is).
    fn raised_factor(&self, successes: u64) -> Option<f64> {
        if successes == 0 || self.factor >= 1.0 {
            return None;
        }
        let raised = self.factor + INCREASE_PER_SECOND * successes as f64 / self.effective_rate();
        Some(raised.min(1.0))
    }

    /// Release times (seconds since the epoch) of `n` slots leased right before the last
    /// `repaid` (the static split's starts booked with them), given this state right after the
    /// lease (its `tat` is the lease's `tat'`), whose answer arrived at `answered`
    /// ([`rules::release_at`]).
    pub fn release_times(&self, n: u64, repaid: u64, answered: f64) -> Vec<f64> {
        let r = self.effective_rate();
        let tau = self.tau();
        (1..=n)
            .map(|j| rules::release_at(self.tat - (n - j + repaid) as f64 / r - tau, answered))
            .collect()
    }

    /// The operator's change to `rate_per_second` and `burst`, at `now`, keeping the level.
    pub fn plan_set_limits(&self, rate_per_second: f64, burst: f64, now: f64) -> Update {
        let after = BudgetState {
            rate_per_second,
            burst,
            ..self.clone()
        };
        Update::SetLimits {
            version: self.version,
            rate_per_second,
            burst,
            shards: self.shards,
            layout: self.layout,
            expected_tat: self.tat,
            new_tat: self.rescaled_tat(&after, now),
        }
    }

    /// This item spread over `shards` items in `layout`, at `now`. It starts **empty**: it
    /// releases nothing before `not_before` (epoch seconds: when every item's slots booked
    /// before the reshard are out, as far as the reshard has read them) nor before its own
    /// booked slots, so old bookings and new shares never overlap ([`shards`]). An idle item's
    /// level is given up (at most its burst, once): kept, its full bucket would draw every
    /// lessee's lease at once, one of which wins each time (a full bucket leases from now), and
    /// a reshard happens when the items are hot.
    pub fn plan_reshard(&self, index: u32, shards: u32, layout: u64, now: f64, not_before: f64) -> Update {
        let after = BudgetState { shards, ..self.clone() };
        let own_booked = match index < self.shards {
            true => self.tat - self.tau(),
            false => now,
        };
        let empty = tick(not_before.max(own_booked).max(now) + after.tau());
        let new_tat = self.rescaled_tat(&after, now).max(empty);
        Update::SetLimits {
            version: self.version,
            rate_per_second: self.rate_per_second,
            burst: self.burst,
            shards,
            layout,
            expected_tat: self.tat,
            new_tat,
        }
    }

    /// The level in slots at `now`: `B − r × max(0, tat − now)`; negative when booked beyond empty.
    pub fn level(&self, now: f64) -> f64 {
        self.effective_burst() - self.effective_rate() * (self.tat - now).max(0.0)
    }

    /// The `tat` that gives `next` (other rate, burst or factor) this bucket's level at `now`.
    fn rescaled_tat(&self, next: &BudgetState, now: f64) -> f64 {
        if self.tat <= now {
            return self.tat;
        }
        let level = self.level(now).min(next.effective_burst());
        tick(now + (next.effective_burst() - level) / next.effective_rate())
    }

    /// Returns the last `n` slots of a lease whose `tat'` was `expected_tat`.
    pub fn plan_give_back(&self, expected_tat: f64, n: u64) -> Update {
        Update::GiveBack {
            version: self.version,
            expected_tat,
            new_tat: tick(expected_tat - n as f64 / self.effective_rate()),
        }
    }

    /// Applies `update` to this item (`None`: the item does not exist) as a conditional write
    /// does: the one definition of each update's condition and effect, which the in-memory
    /// store runs and the DynamoDB adapter's expressions mirror.
    pub fn apply(current: Option<&BudgetState>, update: &Update) -> Written {
        let refused = || Written::Refused(current.cloned());
        let Some(s) = current else {
            return match update {
                Update::Create(initial) => Written::Applied(initial.clone()),
                _ => refused(),
            };
        };
        let mut next = s.clone();
        match update {
            Update::Create(_) => return refused(),
            Update::Lease {
                version,
                now,
                shape,
                factor,
                spread,
            } => {
                if *version != s.version || s.frozen_until >= *now {
                    return refused();
                }
                match shape {
                    Shape::Exact { expected, tat_after } if s.tat == *expected => next.tat = *tat_after,
                    Shape::FromNow { now, tat_after } if s.tat < *now => next.tat = *tat_after,
                    // A Number attribute adds exactly; 4 decimals plus 4 decimals stay on the tick.
                    Shape::Extend { now, limit, delta } if s.tat >= *now && s.tat <= *limit => {
                        next.tat = tick(s.tat + delta)
                    }
                    _ => return refused(),
                }
                next.leases += 1;
                if let Some(f) = factor {
                    next.factor = *f;
                    next.version += 1;
                }
                next.spread = *spread;
            }
            Update::GiveBack {
                version,
                expected_tat,
                new_tat,
            } => {
                if *version != s.version || s.tat != *expected_tat {
                    return refused();
                }
                next.tat = *new_tat;
            }
            Update::SetLimits {
                version,
                rate_per_second,
                burst,
                shards,
                layout,
                expected_tat,
                new_tat,
            } => {
                if *version != s.version || s.tat != *expected_tat {
                    return refused();
                }
                next.rate_per_second = *rate_per_second;
                next.burst = *burst;
                next.shards = *shards;
                next.layout = *layout;
                next.version += 1;
                next.tat = *new_tat;
                next.frozen_until = 0.0;
            }
            Update::Freeze { until } => next.frozen_until = *until,
            Update::Plan {
                layout,
                now,
                until,
                span,
            } => {
                if *layout != s.layout || s.plan_until >= *now {
                    return refused();
                }
                next.plan_until = *until;
                next.span = *span;
            }
        }
        Written::Applied(next)
    }
}

#[cfg(test)]
mod tests;
