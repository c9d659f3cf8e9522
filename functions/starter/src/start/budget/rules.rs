//! The coordinated pacer's timing rules, each written once with the time it may take. The
//! lessee ([`super::lease`]) applies them; each is tested on a paused clock.
//!
//! | rule | what it says | time it may take |
//! |---|---|---|
//! | lease size | `n = clamp(demand, 1, max(1, ⌊r × LEASE_SECONDS⌋))` slots | one conditional write |
//! | horizon | a lease is written only while its first slot is released within `HORIZON_SECONDS / 2` | waits until then |
//! | schedule | slot `j` is released at `max(answer, θ_j − τ)`: from when the answer arrives | — |
//! | grace | a slot is used at most [`SLOT_GRACE`] after its release, else dropped | [`SLOT_GRACE`] |
//! | table call | starts only with [`MIN_CALL_TIME`] left before the caller's `latest`; an answer cut off by `latest` means "no slot" (defer), not a failure | `min(CALL_TIMEOUT_MS, latest − now)` |
//! | retry | an unknown outcome (a 5xx, a lost answer, no answer in time) is tried again, [`LEASE_ATTEMPTS`] times in all, within the time left; a throttle of the table [`THROTTLED_ATTEMPTS`] times, the second and later ones as contention (a hot item) | [`retry_backoff`]; from the second throttle, the contention spread |
//! | contention | a lessee refused since its last lease reads before it writes, and waits `U[0, spread)` past the room it expects, within the time left ([`wait_for_room`]; one not refused, `U[0, SPREAD_MIN)`); finding the budget booked out widens its spread × [`WIDEN`] ([`SPREAD_MIN`] … [`SPREAD_MAX`]), finding room halves it, finding it idle resets it; each lease writes it in the item, and a lessee takes the item's when it is wider: so lessees learn together how many wait with them | `U[0, min(spread, time left))` |
//! | fallback | after those tries, or one permanent error: the static split, from an empty bucket, for [`FALLBACK_RETRY`]; its starts are repaid to the budget by the next lease | [`FALLBACK_RETRY`] |
//! | throttle | a throttle of a slot of the current version drops the instance's slots and marks a decrease that the next lease (or the give-back) writes: no table call | none |
//! | give-back | after the close phase, what the last lease left unused, if no one leased since | `min(CALL_TIMEOUT_MS, time left)` |
//!
//! **What the reserve covers.** The budget keeps [`BURST_RESERVE`] (100 ms) of refill out of
//! the burst. A slot used [`SLOT_GRACE`] late, and an instance whose clock is up to
//! [`MAX_SKEW`] ahead (it reads `now` later, so its slots come that much early in true time),
//! each shift at most `r × their time` of starts into a window: 50 ms + 50 ms, the whole
//! reserve. An instance further ahead, by `δ`, may shift `r × (δ − MAX_SKEW)` more (the README
//! says so). Late use matters only while the account's bucket is full: with the bucket empty
//! (a busy budget), a slot used late only comes later.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::BURST_RESERVE;
use crate::start::table::StoreErrorKind;

/// A lease covers at most this much of the budget's rate, in seconds: leased but unused slots
/// are quota lost to everyone, so leases stay small.
pub const LEASE_SECONDS: f64 = 0.1;
/// The first slot of a lease is released at most this far ahead, in seconds (its last at most
/// `HORIZON_SECONDS + LEASE_SECONDS` ahead). A lessee asks once half of it is free.
pub const HORIZON_SECONDS: f64 = 0.5;
/// How late a slot may still be used after its release time; later, it is dropped. A busy
/// instance's tasks wake up tens of milliseconds late now and then: shorter, slots are lost.
pub const SLOT_GRACE: Duration = Duration::from_millis(50);
/// The clock skew between instances (from the true time, either way) the reserve covers, with
/// [`SLOT_GRACE`].
pub const MAX_SKEW: Duration = Duration::from_millis(50);
/// A table call is not started with less than this left before the caller's `latest`: its
/// answer would come too late to use.
pub const MIN_CALL_TIME: Duration = Duration::from_millis(20);
/// Table calls of one lease (the first and its retries) ending in an unknown outcome before the
/// static split is used.
pub const LEASE_ATTEMPTS: u32 = 3;
/// Table calls of one lease throttled in a row before the static split is used. A throttled
/// item is contention among lessees: from the second, each try widens the spread, and
/// falling back at once would put every instance on the static split at once.
pub const THROTTLED_ATTEMPTS: u32 = 8;
/// How long the static split is used after the table failed, before the table is tried again.
pub const FALLBACK_RETRY: Duration = Duration::from_secs(1);
/// The contention spread: the least and the most a write waits at random after a refusal.
pub const SPREAD_MIN: Duration = Duration::from_millis(10);
/// See [`SPREAD_MIN`]. A lessee waiting this long tries about once per 2.5 s: a thousand
/// waiting lessees write about 400 times a second, under the item's 1,000.
pub const SPREAD_MAX: Duration = Duration::from_millis(2500);

const _: () = assert!(
    SLOT_GRACE.as_millis() + MAX_SKEW.as_millis() <= BURST_RESERVE.as_millis(),
    "the reserve covers the grace and the skew"
);

/// Lease size: the slots a lease asks for, given the caller's `demand` (calls still needing a
/// slot) and the budget's effective rate. At least 1.
pub fn lease_size(demand: u64, rate_per_second: f64) -> u64 {
    let cap = (rate_per_second * LEASE_SECONDS).floor().max(1.0);
    (demand.max(1) as f64).min(cap) as u64
}

/// Schedule: the release time (epoch seconds) of a slot whose bucket time is `due`
/// (`θ − τ`), leased by a write answered at `answered`. A slot never counts as due before its
/// lease is known, so a slow answer costs latency, not slots.
pub fn release_at(due: f64, answered: f64) -> f64 {
    due.max(answered)
}

/// Grace: whether a slot released at `release` may still be used at `now`.
pub fn usable(release: Instant, now: Instant) -> bool {
    now <= release + SLOT_GRACE
}

/// Why a table call's wait is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// By the call timeout (`CALL_TIMEOUT_MS`): no answer in time is an unknown outcome.
    CallTimeout,
    /// By the caller's `latest`: no answer in time means no slot.
    Latest,
}

/// Table call: how long a call started at `now` may wait, and what bounds it; `None` when too
/// little time is left to start one ([`MIN_CALL_TIME`]).
pub fn call_limit(now: Instant, latest: Instant, call_timeout: Duration) -> Option<(Duration, Bound)> {
    let left = latest.saturating_duration_since(now);
    if left < MIN_CALL_TIME {
        return None;
    }
    Some(match left < call_timeout {
        true => (left, Bound::Latest),
        false => (call_timeout, Bound::CallTimeout),
    })
}

/// What a failed table call leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterError {
    /// The caller's time ran out: no slot now (its call is deferred); nothing failed.
    NoSlot,
    /// Try again within the time left (after [`retry_backoff`], or the spread for a throttle).
    Retry,
    /// Use the static split for [`FALLBACK_RETRY`].
    Fallback,
}

/// Retry and fallback: what the `failures`-th consecutive failure (1 for the first) of kind
/// `kind` leads to.
pub fn after_error(kind: StoreErrorKind, failures: u32) -> AfterError {
    match kind {
        StoreErrorKind::Deadline => AfterError::NoSlot,
        StoreErrorKind::Permanent => AfterError::Fallback,
        StoreErrorKind::Throttled if failures < THROTTLED_ATTEMPTS => AfterError::Retry,
        StoreErrorKind::Unknown if failures < LEASE_ATTEMPTS => AfterError::Retry,
        StoreErrorKind::Throttled | StoreErrorKind::Unknown => AfterError::Fallback,
    }
}

/// Retry: the wait before trying again after an unknown outcome (a 5xx, a lost answer, no
/// answer within the call timeout): 5 – 25 ms, `random` in `[0, 1)`.
pub fn retry_backoff(random: f64) -> Duration {
    Duration::from_millis(5) + Duration::from_millis(20).mul_f64(random.clamp(0.0, 1.0))
}

/// How much the spread widens each time a lessee finds the budget booked out. Gently: a
/// lessee halves it when it finds room, so the spread settles where about one look in five
/// finds room; doubling, ten instances would settle on a spread of seconds and leave the
/// budget idle at the end of a drain, when only a few of them still wait.
pub const WIDEN: f64 = 1.25;

/// Contention: the spread after a refusal or an item throttle (× [`WIDEN`], at most
/// [`SPREAD_MAX`]).
pub fn widen(spread: Duration) -> Duration {
    spread.mul_f64(WIDEN).clamp(SPREAD_MIN, SPREAD_MAX)
}

/// Contention: the spread after finding room (halved, at least [`SPREAD_MIN`]).
pub fn narrow(spread: Duration) -> Duration {
    (spread / 2).clamp(SPREAD_MIN, SPREAD_MAX)
}

/// Contention: the random wait `U[0, spread)`, `random` in `[0, 1)`.
pub fn jitter(spread: Duration, random: f64) -> Duration {
    spread.mul_f64(random.clamp(0.0, 1.0))
}

/// Contention: when a lessee that expects room at `room` writes: `U[0, spread)` later, but
/// early enough for a call before `latest` (so a lessee with a long spread still tries once in
/// each invocation, and holds its messages meanwhile instead of handing them back). After
/// `latest` when `room` is.
pub fn wait_for_room(room: Instant, latest: Instant, spread: Duration, random: f64) -> Instant {
    let left = latest.saturating_duration_since(room).saturating_sub(MIN_CALL_TIME);
    room + jitter(spread.min(left), random)
}

/// Give-back: the latest instant of the give-back after the close phase, at `now`.
pub fn give_back_latest(now: Instant, call_timeout: Duration, hard_deadline: Instant) -> Instant {
    (now + call_timeout).min(hard_deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_sized_by_demand_up_to_a_tenth_of_a_second_of_the_rate() {
        assert_eq!(lease_size(1_000, 300.0), 30);
        assert_eq!(lease_size(7, 300.0), 7);
        assert_eq!(lease_size(0, 300.0), 1, "at least one");
        assert_eq!(lease_size(50, 6_000.0), 50);
        assert_eq!(lease_size(1_000, 6_000.0), 600);
        assert_eq!(lease_size(5, 2.0), 1, "a slow budget leases one at a time");
    }

    #[test]
    fn a_slot_is_never_due_before_its_lease_is_known() {
        assert_eq!(release_at(100.0, 100.2), 100.2);
        assert_eq!(release_at(100.5, 100.2), 100.5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_usable_for_its_grace_and_not_after() {
        assert_eq!(SLOT_GRACE, Duration::from_millis(50));
        let t0 = Instant::now();
        assert!(usable(t0, t0 + SLOT_GRACE));
        assert!(!usable(t0, t0 + SLOT_GRACE + Duration::from_millis(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_call_waits_for_the_timeout_or_the_callers_latest_whichever_is_first() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(2);
        assert_eq!(
            call_limit(t0, t0 + Duration::from_secs(5), timeout),
            Some((timeout, Bound::CallTimeout))
        );
        assert_eq!(
            call_limit(t0, t0 + Duration::from_millis(300), timeout),
            Some((Duration::from_millis(300), Bound::Latest))
        );
        assert_eq!(call_limit(t0, t0 + Duration::from_millis(19), timeout), None);
    }

    #[test]
    fn transient_errors_are_retried_before_the_fallback_and_a_cutoff_is_no_failure() {
        use StoreErrorKind::*;
        assert_eq!(after_error(Deadline, 1), AfterError::NoSlot);
        assert_eq!(after_error(Deadline, 9), AfterError::NoSlot);
        assert_eq!(after_error(Permanent, 1), AfterError::Fallback);
        for (kind, attempts) in [(Unknown, LEASE_ATTEMPTS), (Throttled, THROTTLED_ATTEMPTS)] {
            for failures in 1..attempts {
                assert_eq!(after_error(kind, failures), AfterError::Retry);
            }
            assert_eq!(after_error(kind, attempts), AfterError::Fallback);
        }
    }

    #[test]
    fn the_spread_widens_on_contention_and_halves_on_room_within_bounds() {
        assert_eq!(widen(Duration::ZERO), SPREAD_MIN);
        assert_eq!(widen(Duration::from_millis(80)), Duration::from_millis(100));
        assert_eq!(widen(SPREAD_MAX), SPREAD_MAX);
        assert_eq!(narrow(SPREAD_MIN), SPREAD_MIN);
        assert_eq!(narrow(Duration::from_millis(80)), Duration::from_millis(40));
        assert!(jitter(Duration::from_millis(100), 0.999) < Duration::from_millis(100));
        assert_eq!(retry_backoff(0.0), Duration::from_millis(5));
        assert!(retry_backoff(0.999) < Duration::from_millis(25));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_lessee_writes_within_its_spread_and_before_its_latest() {
        let t0 = Instant::now();
        let room = t0 + Duration::from_millis(100);
        let latest = t0 + Duration::from_secs(5);
        let at = wait_for_room(room, latest, Duration::from_secs(2), 0.5);
        assert_eq!(at, room + Duration::from_secs(1));
        let at = wait_for_room(room, latest, Duration::from_secs(30), 0.999);
        assert!(at <= latest - MIN_CALL_TIME, "{:?}", at - t0);
        assert!(wait_for_room(latest + Duration::from_millis(1), latest, SPREAD_MAX, 0.5) > latest);
    }

    #[tokio::test(start_paused = true)]
    async fn the_give_back_ends_by_the_deadline() {
        let t0 = Instant::now();
        let hard = t0 + Duration::from_millis(300);
        assert_eq!(give_back_latest(t0, Duration::from_secs(2), hard), hard);
        assert_eq!(
            give_back_latest(t0, Duration::from_millis(100), hard),
            t0 + Duration::from_millis(100)
        );
    }
}
