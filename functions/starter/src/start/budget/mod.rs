//! The shared StartExecution budget: one token bucket for every instance of every deployment,
//! kept in one item of the coordination table and leased in small chunks.
//!
//! ## The math (GCRA: the generic cell rate algorithm, a token bucket as one number)
//! The item holds `tat`, seconds since the Unix epoch: the theoretical arrival time of the next
//! slot at the effective rate `r = rate × factor` (slots per second). `τ = B / r` where `B` is
//! the effective burst (the configured burst less [`BURST_RESERVE`] of refill). At time `now`
//! the bucket holds `B − r × (max(tat, now) − now)` slots.
//!
//! Leasing `n` slots at `now`: `start = max(tat, now)`, `tat' = start + n / r`. Slot `j`
//! (1 ≤ j ≤ n) has the theoretical time `θ_j = start + j / r` and is released at
//! `ρ_j = max(now, θ_j − τ)`: a full bucket releases `B` slots at once, then one every `1/r`.
//! A lease of `n = min(demand, r × LEASE_SECONDS)` slots is allowed while its first slot is
//! released within [`HORIZON_SECONDS`] of `now`: `tat ≤ now + τ + HORIZON_SECONDS`. A lessee
//! asks only once that holds with half the horizon to spare, so lessees that ask at the same
//! moment all fit, and a refusal means the budget really is booked that far ahead. It is one conditional UpdateItem without a prior read,
//! in one of two shapes (`tat < now`: `SET tat = now + n/r`; else `SET tat = tat + n/r` under
//! `tat BETWEEN now AND limit`); a refusal returns the item as it is, so the next try is right.
//!
//! Invariant: over any window of `t` seconds, the slots released by all lessees together
//! number at most `B + r × t`, the quota's own bucket, whatever the interleaving — provided a
//! slot is used at its release time ([`SLOT_GRACE`]; a later slot is dropped, never used late).
//! Each lessee reads `now` from its own clock; Lambda's clocks agree within milliseconds, and
//! the burst reserve (100 ms of refill) absorbs that as it absorbs network jitter.
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
//! empties the bucket (`tat ≥ now + τ`), once per `version`: the update is conditioned on the
//! version the throttled slot was leased under, and bumps it. Successes raise `factor` back:
//! each lease carries the successes of the current version since the instance's last lease,
//! `factor += INCREASE_PER_SECOND × successes / r`, up to 1. Every change of rate, burst or
//! factor bumps `version`, and every lease is conditioned on it, so no instance leases with a
//! stale rate. The operator's `rate` and `burst` live in the same item.

pub mod lease;

use std::time::Duration;

use async_trait::async_trait;

use crate::config::BURST_RESERVE;
pub use crate::start::pace::{DECREASE_FACTOR, INCREASE_PER_SECOND, MIN_RATE_FRACTION};
use crate::start::table::StoreError;

/// A lease covers at most this much of the budget's rate, in seconds: leased but unused slots
/// are quota lost to everyone, so leases stay small.
pub const LEASE_SECONDS: f64 = 0.1;
/// The first slot of a lease is released at most this far ahead, in seconds (its last at most
/// `HORIZON_SECONDS + LEASE_SECONDS` ahead).
pub const HORIZON_SECONDS: f64 = 0.5;
/// How late a slot may still be used after its release time; later, it is dropped.
pub const SLOT_GRACE: Duration = Duration::from_millis(50);

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
}

/// A conditional write to the budget item. The store applies it only if its condition holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Creates the item if it does not exist.
    Create(BudgetState),
    /// Leases slots. Condition: `version = version` and the shape's condition on `tat`.
    /// `factor`: a new factor to write (then `version + 1`).
    Lease {
        /// The version the lease was computed under.
        version: u64,
        /// The shape.
        shape: Shape,
        /// A raised factor, if the lease carries successes.
        factor: Option<f64>,
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
    /// Lowers the factor after a throttle and empties the bucket: `SET factor, version + 1,
    /// tat = new_tat`. Condition: `version = version AND tat = expected_tat`.
    Decrease {
        /// The version the throttled slot was leased under.
        version: u64,
        /// The new factor.
        factor: f64,
        /// `tat` as read.
        expected_tat: f64,
        /// The rescaled `tat`, at least the empty bucket's.
        new_tat: f64,
    },
    /// The operator's change: `SET rate, burst, version + 1, tat = new_tat`. Condition:
    /// `version = version AND tat = expected_tat`.
    SetLimits {
        /// The version as read.
        version: u64,
        /// Slots per second.
        rate_per_second: f64,
        /// Slots.
        burst: f64,
        /// `tat` as read.
        expected_tat: f64,
        /// The rescaled `tat` (the bucket's level kept).
        new_tat: f64,
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

/// What to do to get slots.
#[derive(Debug, Clone, PartialEq)]
pub enum LeasePlan {
    /// Write this lease of `slots` slots.
    Lease {
        /// The conditional write.
        update: Update,
        /// Slots it leases.
        slots: u64,
    },
    /// No slot fits within the horizon before this time (seconds since the epoch).
    WaitUntil(f64),
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
        }
    }

    /// The effective rate `rate × factor`, slots per second (positive).
    pub fn effective_rate(&self) -> f64 {
        (self.rate_per_second * self.factor).max(f64::MIN_POSITIVE)
    }

    /// The effective burst: the burst less [`BURST_RESERVE`] of refill, at least 1 slot.
    pub fn effective_burst(&self) -> f64 {
        (self.burst - self.rate_per_second * BURST_RESERVE.as_secs_f64()).max(1.0)
    }

    /// `τ = B / r`, seconds.
    pub fn tau(&self) -> f64 {
        self.effective_burst() / self.effective_rate()
    }

    /// The lease of up to `want` slots at `now` (seconds since the epoch), carrying
    /// `successes` of this version since the lessee's last lease.
    pub fn plan_lease(&self, now: f64, want: u64, successes: u64) -> LeasePlan {
        let mut next = self.clone();
        let factor = self.raised_factor(successes);
        if let Some(f) = factor {
            next.factor = f;
        }
        let r = next.effective_rate();
        let start = self.tat.max(now);
        let ahead = start - next.tau() - now;
        if ahead > HORIZON_SECONDS / 2.0 {
            return LeasePlan::WaitUntil(start - next.tau() - HORIZON_SECONDS / 2.0);
        }
        let cap = (r * LEASE_SECONDS).floor().max(1.0);
        let n = (want.max(1) as f64).min(cap);
        let delta = tick_up(n / r);
        if factor.is_some() {
            let rescaled = self.rescaled_tat(&next, now).max(now);
            let shape = Shape::Exact {
                expected: self.tat,
                tat_after: tick(rescaled + delta),
            };
            let update = Update::Lease {
                version: self.version,
                shape,
                factor,
            };
            return LeasePlan::Lease {
                update,
                slots: n as u64,
            };
        }
        let now = tick(now);
        let shape = if self.tat < now {
            Shape::FromNow {
                now,
                tat_after: tick(now + delta),
            }
        } else {
            Shape::Extend {
                now,
                limit: tick(now + HORIZON_SECONDS + next.tau()),
                delta,
            }
        };
        LeasePlan::Lease {
            update: Update::Lease {
                version: self.version,
                shape,
                factor,
            },
            slots: n as u64,
        }
    }

    /// The factor raised by `successes` (`None` when it stays as it is).
    fn raised_factor(&self, successes: u64) -> Option<f64> {
        if successes == 0 || self.factor >= 1.0 {
            return None;
        }
        let raised = self.factor + INCREASE_PER_SECOND * successes as f64 / self.effective_rate();
        Some(raised.min(1.0))
    }

    /// Release times (seconds since the epoch) of the last `n` slots leased, given this state
    /// right after the lease (its `tat` is the lease's `tat'`), leased at `now`.
    pub fn release_times(&self, n: u64, now: f64) -> Vec<f64> {
        let r = self.effective_rate();
        let tau = self.tau();
        (1..=n)
            .map(|j| (self.tat - (n - j) as f64 / r - tau).max(now))
            .collect()
    }

    /// The decrease after a throttle of a slot leased under `version`, at `now`; `None`
    /// when that version is past (someone already decreased for this throttle).
    pub fn plan_decrease(&self, version: u64, now: f64) -> Option<Update> {
        if version != self.version {
            return None;
        }
        let factor = (self.factor * DECREASE_FACTOR).max(MIN_RATE_FRACTION);
        let after = BudgetState { factor, ..self.clone() };
        Some(Update::Decrease {
            version,
            factor,
            expected_tat: self.tat,
            new_tat: tick(self.rescaled_tat(&after, now).max(now + after.tau())),
        })
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
            expected_tat: self.tat,
            new_tat: self.rescaled_tat(&after, now),
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
            Update::Lease { version, shape, factor } => {
                if *version != s.version {
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
                if let Some(f) = factor {
                    next.factor = *f;
                    next.version += 1;
                }
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
            Update::Decrease {
                version,
                factor,
                expected_tat,
                new_tat,
            } => {
                if *version != s.version || s.tat != *expected_tat {
                    return refused();
                }
                next.factor = *factor;
                next.version += 1;
                next.tat = *new_tat;
            }
            Update::SetLimits {
                version,
                rate_per_second,
                burst,
                expected_tat,
                new_tat,
            } => {
                if *version != s.version || s.tat != *expected_tat {
                    return refused();
                }
                next.rate_per_second = *rate_per_second;
                next.burst = *burst;
                next.version += 1;
                next.tat = *new_tat;
            }
        }
        Written::Applied(next)
    }
}

#[cfg(test)]
mod tests;
