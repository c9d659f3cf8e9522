//! Backoff: how long to wait before trying a message again.
//!
//! Both waits use exponential backoff with *full jitter* (AWS Architecture Blog,
//! "Exponential Backoff And Jitter"): the wait is uniform in `[0, min(cap, base × 2^(n−1)))`,
//! which spreads retries of many messages instead of synchronising them. The random
//! draw `unit` (in `[0, 1)`) is a parameter, so the math is tested without randomness.

use std::time::Duration;

use crate::config::MAX_VISIBILITY_SECONDS;

/// The first in-invocation retry waits up to this long.
pub const RETRY_WAIT_BASE: Duration = Duration::from_millis(50);
/// No in-invocation retry waits longer than this.
pub const RETRY_WAIT_CAP: Duration = Duration::from_secs(1);

fn full_jitter(n: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exponent = n.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// The wait before in-invocation retry number `attempt` (1 for the first retry).
pub fn retry_wait(attempt: u32, unit: f64) -> Duration {
    full_jitter(attempt, RETRY_WAIT_BASE, RETRY_WAIT_CAP, unit)
}

/// The visibility timeout, whole seconds, to give a message that failed on its
/// `receive_count`-th delivery, so that its next delivery is delayed with backoff.
/// Invariant: the result is at most `max` and below SQS's 12-hour limit.
pub fn visibility_timeout_seconds(receive_count: u32, base: Duration, max: Duration, unit: f64) -> u32 {
    let wait = full_jitter(receive_count.max(1), base, max, unit);
    let seconds = wait.as_secs().min(MAX_VISIBILITY_SECONDS - 1);
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// The visibility timeout, whole seconds, of a message deferred for want of a slot: `free_in`
/// (how long from now until its instance expects the next slot) rounded to the nearest second, so a
/// slot due within half a second brings it back at once; at most `max` and below SQS's
/// 12-hour limit.
pub fn deferral_seconds(free_in: Duration, max: Duration) -> u32 {
    let seconds = free_in.min(max).as_secs_f64().round() as u64;
    u32::try_from(seconds.min(MAX_VISIBILITY_SECONDS - 1)).unwrap_or(u32::MAX)
}

/// A uniform draw in `[0, 1)` from the thread's generator.
pub fn unit_random() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_grow_exponentially_up_to_the_cap() {
        assert_eq!(retry_wait(1, 1.0), Duration::from_millis(50));
        assert_eq!(retry_wait(2, 1.0), Duration::from_millis(100));
        assert_eq!(retry_wait(3, 1.0), Duration::from_millis(200));
        assert_eq!(retry_wait(10, 1.0), RETRY_WAIT_CAP);
        assert_eq!(retry_wait(u32::MAX, 1.0), RETRY_WAIT_CAP);
        assert_eq!(
            retry_wait(3, 0.5),
            Duration::from_millis(100),
            "jitter scales the ceiling"
        );
        assert_eq!(retry_wait(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn visibility_backoff_follows_the_receive_count() {
        let (base, max) = (Duration::from_secs(10), Duration::from_secs(900));
        assert_eq!(visibility_timeout_seconds(1, base, max, 0.999_999), 9);
        assert_eq!(visibility_timeout_seconds(2, base, max, 0.999_999), 19);
        assert_eq!(visibility_timeout_seconds(4, base, max, 0.5), 40);
        assert_eq!(visibility_timeout_seconds(50, base, max, 0.999_999), 899);
        assert_eq!(
            visibility_timeout_seconds(0, base, max, 0.5),
            5,
            "a missing count is the first delivery"
        );
    }

    #[test]
    fn visibility_stays_below_twelve_hours_whatever_the_config() {
        let huge = Duration::from_secs(10 * MAX_VISIBILITY_SECONDS);
        let v = visibility_timeout_seconds(40, huge, huge, 1.0);
        assert_eq!(u64::from(v), MAX_VISIBILITY_SECONDS - 1);
    }

    #[test]
    fn a_deferral_lasts_until_the_next_slot_to_the_nearest_second() {
        let max = Duration::from_secs(20);
        assert_eq!(deferral_seconds(Duration::ZERO, max), 0);
        assert_eq!(
            deferral_seconds(Duration::from_millis(499), max),
            0,
            "a slot due now-ish"
        );
        assert_eq!(deferral_seconds(Duration::from_millis(1_600), max), 2);
        assert_eq!(deferral_seconds(Duration::from_secs(3_600), max), 20, "capped");
        let huge = Duration::from_secs(10 * MAX_VISIBILITY_SECONDS);
        assert_eq!(
            u64::from(deferral_seconds(Duration::MAX, huge)),
            MAX_VISIBILITY_SECONDS - 1
        );
    }

    #[test]
    fn draws_are_in_the_unit_interval() {
        for _ in 0..1000 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
