//! An exact token bucket with an explicit clock, as Step Functions applies to `StartExecution`.
//!
//! The arithmetic is integer-only, so counts are exact: with capacity `B` and refill `r`
//! tokens per second, a bucket that starts full at time 0 and is drained continuously (so it
//! never sits full and wastes refill) grants exactly `B + floor(r × t)` tokens over `[0, t]`,
//! with no floating-point drift.

use std::time::Duration;

/// Internal units per token. The refill rate is held in milli-tokens per second and time in
/// nanoseconds, so one nanosecond at one milli-token per second adds exactly one unit
/// (10⁻³ token/s × 10⁻⁹ s = 10⁻¹² token).
const UNITS_PER_TOKEN: u128 = 1_000_000_000_000;

/// A token bucket: `capacity` tokens, refilled continuously at `refill_per_second` tokens per
/// second, starting full at time zero.
///
/// Invariants:
/// - the level never exceeds the capacity, and never goes below zero;
/// - a refused [`TokenBucket::try_take`] consumes nothing;
/// - time is the caller's (a `Duration` since an arbitrary epoch, e.g. server start); a `now`
///   earlier than the previous call is treated as no time having passed (never as negative);
/// - the refill rate is exact to 0.001 token per second (it is rounded to that precision).
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Capacity in units ([`UNITS_PER_TOKEN`] per token).
    capacity: u128,
    /// Refill rate in milli-tokens per second (= units per nanosecond).
    rate_milli: u128,
    /// Current level in units.
    level: u128,
    /// The latest time seen.
    last: Duration,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens that refills at `refill_per_second` tokens per second.
    /// A negative or non-finite rate is taken as 0 (no refill).
    pub fn new(capacity: u64, refill_per_second: f64) -> TokenBucket {
        let rate_milli = if refill_per_second.is_finite() && refill_per_second > 0.0 {
            (refill_per_second * 1000.0).round() as u128
        } else {
            0
        };
        let capacity = u128::from(capacity) * UNITS_PER_TOKEN;
        TokenBucket {
            capacity,
            rate_milli,
            level: capacity,
            last: Duration::ZERO,
        }
    }

    /// The capacity, in tokens.
    pub fn capacity(&self) -> u64 {
        (self.capacity / UNITS_PER_TOKEN) as u64
    }

    /// The refill rate, in tokens per second (after rounding to 0.001).
    pub fn refill_per_second(&self) -> f64 {
        self.rate_milli as f64 / 1000.0
    }

    /// Takes one token at time `now` if one is available. Returns whether it was taken.
    pub fn try_take(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.level >= UNITS_PER_TOKEN {
            self.level -= UNITS_PER_TOKEN;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at time `now` (refills first; takes nothing).
    pub fn available(&mut self, now: Duration) -> u64 {
        self.refill(now);
        (self.level / UNITS_PER_TOKEN) as u64
    }

    /// How long after `now` until one token is available (zero if one is available now).
    /// `None` if the bucket never refills and is empty.
    pub fn time_to_next_token(&mut self, now: Duration) -> Option<Duration> {
        self.refill(now);
        if self.level >= UNITS_PER_TOKEN {
            return Some(Duration::ZERO);
        }
        if self.rate_milli == 0 || self.capacity < UNITS_PER_TOKEN {
            return None;
        }
        let missing = UNITS_PER_TOKEN - self.level;
        let nanos = missing.div_ceil(self.rate_milli);
        Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    fn refill(&mut self, now: Duration) {
        if now <= self.last {
            return;
        }
        let elapsed = (now - self.last).as_nanos();
        self.last = now;
        let added = elapsed.saturating_mul(self.rate_milli);
        self.level = self.level.saturating_add(added).min(self.capacity);
    }
}
