//! Pacing: an adaptive token bucket that schedules StartExecution calls for one instance.
//!
//! Why not `governor` or `leaky-bucket`: their rate is fixed when the limiter is built.
//! This pacer must change its rate on the live bucket (AIMD on throttling) without losing
//! the bucket's state, and empty the bucket when AWS says the shared quota is exhausted.
//!
//! ## The math
//! State: `tokens` (may be negative: calls already scheduled in the future), `rate`
//! (tokens per second), `capacity` (the burst, in tokens), `last` (the instant `tokens`
//! refers to). At instant `now`, the bucket first refills:
//! `tokens = min(capacity, tokens + rate × (now − last))`. A reservation then takes one
//! token. If at least one token was there, the call may go at once; otherwise it waits
//! `(1 − tokens) / rate` seconds, the time the refill needs to cover it. So over any
//! window of `t` seconds at most `capacity + rate × t` calls are released: the AWS quota's
//! own token bucket, scaled to this instance's share.
//!
//! ## Adapting (AIMD)
//! On a throttle, the rate is multiplied by [`DECREASE_FACTOR`] (never below
//! [`MIN_RATE_FRACTION`] × target) and the bucket is emptied (`tokens ≤ 0`), because the
//! account's shared bucket is empty. Throttles of calls scheduled before the last decrease
//! carry no news and are ignored (each reservation carries an `epoch`), so one burst of
//! throttles halves the rate once, not once per call. Every success adds
//! `INCREASE_PER_SECOND × target / rate` to the rate, that is about
//! [`INCREASE_PER_SECOND`] × target per second of successful calls, up to the target.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Multiplicative decrease of the rate on a throttle.
pub const DECREASE_FACTOR: f64 = 0.5;
/// The rate never drops below this fraction of the target.
pub const MIN_RATE_FRACTION: f64 = 0.05;
/// Additive increase: the fraction of the target regained per second of successful calls.
pub const INCREASE_PER_SECOND: f64 = 0.1;

/// A permission to call, possibly after a wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// How long to wait before calling.
    pub wait: Duration,
    /// The adaptation epoch the slot was granted in (see the module docs); for a shared slot,
    /// the budget's version.
    pub epoch: u64,
    /// Who granted it.
    pub source: Source,
    /// When it is released: the instant of the reservation plus `wait`.
    pub at: Instant,
}

impl Slot {
    /// Waits until the slot's time. A slot already due is not waited for: a timer would round
    /// its deadline up to the runtime's next millisecond tick and park the task, so every due
    /// start would wait up to 1 ms (and the runtime would wake once per call).
    pub async fn until_due(&self) {
        if self.at > Instant::now() {
            tokio::time::sleep_until(self.at).await;
        }
    }
}

/// Who granted a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This instance's own pacer (the static split).
    Local,
    /// The shared budget ([`crate::start::budget`]).
    Shared,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    rate_per_second: f64,
    last: Instant,
    epoch: u64,
}

/// The pacer of one execution environment, shared by its concurrent calls and warm invocations.
#[derive(Debug)]
pub struct Pacer {
    target_per_second: f64,
    capacity: f64,
    state: Mutex<State>,
}

impl Pacer {
    /// A pacer releasing `per_second` calls per second with a burst of `burst` calls,
    /// starting with a full bucket at `now`. Both must be positive.
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Pacer {
        let capacity = burst.max(1.0);
        Pacer {
            target_per_second: per_second,
            capacity,
            state: Mutex::new(State {
                tokens: capacity,
                rate_per_second: per_second,
                last: now,
                epoch: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the plain numbers inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves the next call at or after `now`, unless it would have to wait past `latest`:
    /// then nothing is taken and `None` is returned.
    pub fn reserve(&self, now: Instant, latest: Instant) -> Option<Slot> {
        let mut s = self.lock();
        refill(&mut s, now, self.capacity);
        let wait = wait_for_token(&s);
        if now.checked_add(wait).is_none_or(|at| at > latest) {
            return None;
        }
        s.tokens -= 1.0;
        Some(Slot {
            wait,
            epoch: s.epoch,
            source: Source::Local,
            at: now + wait,
        })
    }

    /// Gives back a slot reserved and not used: its token returns to the bucket (up to the
    /// capacity), unless the rate changed since it was granted (then the bucket was emptied).
    pub fn put_back(&self, slot: Slot, now: Instant) {
        let mut s = self.lock();
        if slot.epoch != s.epoch {
            return;
        }
        refill(&mut s, now, self.capacity);
        s.tokens = (s.tokens + 1.0).min(self.capacity);
    }

    /// Empties the bucket at `now` (what it refilled while unused is gone): the next call waits
    /// for the refill. Coordinated mode falls back to this pacer from empty, since the other
    /// instances keep using the whole shared budget meanwhile.
    pub fn empty(&self, now: Instant) {
        let mut s = self.lock();
        refill(&mut s, now, self.capacity);
        s.tokens = s.tokens.min(0.0);
    }

    /// How long from `now` until a reservation would need no wait; takes nothing.
    pub fn free_in(&self, now: Instant) -> Duration {
        let mut s = self.lock();
        refill(&mut s, now, self.capacity);
        wait_for_token(&s)
    }

    /// Reports a throttle of the call granted `slot`.
    pub fn on_throttle(&self, slot: Slot, now: Instant) {
        let mut s = self.lock();
        if slot.epoch != s.epoch {
            return;
        }
        refill(&mut s, now, self.capacity);
        s.rate_per_second = (s.rate_per_second * DECREASE_FACTOR).max(self.target_per_second * MIN_RATE_FRACTION);
        s.tokens = s.tokens.min(0.0);
        s.epoch += 1;
    }

    /// Reports a successful call made in `slot`. A slot granted before the last decrease
    /// carries no news about the new rate: it does not raise it.
    pub fn on_success(&self, slot: Slot, now: Instant) {
        let mut s = self.lock();
        if s.rate_per_second >= self.target_per_second || slot.epoch != s.epoch {
            return;
        }
        refill(&mut s, now, self.capacity);
        let step = INCREASE_PER_SECOND * self.target_per_second / s.rate_per_second;
        s.rate_per_second = (s.rate_per_second + step).min(self.target_per_second);
    }

    /// The current rate, calls per second.
    pub fn rate_per_second(&self) -> f64 {
        self.lock().rate_per_second
    }

    /// The configured target rate, calls per second.
    pub fn target_per_second(&self) -> f64 {
        self.target_per_second
    }

    /// The burst capacity, in calls.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }
}

/// How long the refill needs to cover one token (zero when one is there).
fn wait_for_token(s: &State) -> Duration {
    if s.tokens >= 1.0 {
        return Duration::ZERO;
    }
    // A tiny configured rate gives a wait past any deadline, not a panic.
    Duration::try_from_secs_f64((1.0 - s.tokens) / s.rate_per_second).unwrap_or(Duration::MAX)
}

fn refill(s: &mut State, now: Instant, capacity: f64) {
    if now > s.last {
        let elapsed = (now - s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.rate_per_second).min(capacity);
        s.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAR: Duration = Duration::from_secs(3600);

    /// Releases as many calls as the pacer allows and returns their release instants.
    fn drain(p: &Pacer, t0: Instant, n: usize) -> Vec<Instant> {
        (0..n).map(|_| t0 + p.reserve(t0, t0 + FAR).unwrap().wait).collect()
    }

    #[tokio::test]
    async fn a_due_slot_is_ready_at_once_and_a_later_one_is_waited_for() {
        use futures::FutureExt;
        let p = Pacer::new(10.0, 1.0, Instant::now());
        let due = p.reserve(Instant::now(), Instant::now() + FAR).unwrap();
        assert!(due.until_due().now_or_never().is_some(), "no timer for a due slot");
        let later = p.reserve(Instant::now(), Instant::now() + FAR).unwrap();
        assert!(later.wait > Duration::ZERO);
        assert!(later.until_due().now_or_never().is_none(), "a later slot is waited for");
    }

    #[test]
    fn a_full_bucket_releases_the_burst_at_once_then_the_rate() {
        let t0 = Instant::now();
        let p = Pacer::new(10.0, 5.0, t0);
        let times = drain(&p, t0, 25);
        assert!(times[..5].iter().all(|t| *t == t0), "the burst goes at once");
        for (i, t) in times[5..].iter().enumerate() {
            let expected = Duration::from_secs_f64((i + 1) as f64 / 10.0);
            let got = *t - t0;
            assert!(
                got.abs_diff(expected) < Duration::from_micros(10),
                "call {}: {got:?} vs {expected:?}",
                i + 5
            );
        }
    }

    #[test]
    fn no_window_releases_more_than_burst_plus_rate_times_length() {
        let t0 = Instant::now();
        let p = Pacer::new(300.0, 130.0, t0);
        // Calls arrive in clumps over 20 s; count releases in every 1 s window.
        let mut releases = Vec::new();
        for step in 0..200u64 {
            let now = t0 + Duration::from_millis(step * 100);
            for _ in 0..40 {
                if let Some(slot) = p.reserve(now, now + Duration::from_millis(100)) {
                    releases.push(now + slot.wait);
                }
            }
        }
        releases.sort();
        for (i, start) in releases.iter().enumerate() {
            let in_window = releases[i..]
                .iter()
                .take_while(|t| **t < *start + Duration::from_secs(1))
                .count();
            assert!(in_window as f64 <= 130.0 + 300.0 + 1.0, "{in_window} calls in 1 s");
        }
        // And the rate is used: 20 s at 300/s plus the burst, minus the last window's slack.
        assert!(
            releases.len() as f64 >= 130.0 + 300.0 * 19.5,
            "{} released",
            releases.len()
        );
    }

    #[test]
    fn a_reservation_past_the_latest_instant_takes_nothing() {
        let t0 = Instant::now();
        let p = Pacer::new(1.0, 1.0, t0);
        assert_eq!(p.reserve(t0, t0).unwrap().wait, Duration::ZERO);
        assert_eq!(p.reserve(t0, t0 + Duration::from_millis(999)), None);
        // Nothing was taken by the refusal: the next call still waits exactly 1 s.
        assert_eq!(p.reserve(t0, t0 + FAR).unwrap().wait, Duration::from_secs(1));
    }

    #[test]
    fn a_throttle_halves_the_rate_once_per_epoch_and_empties_the_bucket() {
        let t0 = Instant::now();
        let p = Pacer::new(100.0, 50.0, t0);
        let slots: Vec<Slot> = (0..10).map(|_| p.reserve(t0, t0 + FAR).unwrap()).collect();
        for s in &slots {
            p.on_throttle(*s, t0);
        }
        assert_eq!(p.rate_per_second(), 50.0, "ten throttles of one epoch count once");
        // The bucket was emptied: the next call waits for refill at the new rate.
        let next = p.reserve(t0, t0 + FAR).unwrap();
        assert_eq!(next.wait, Duration::from_secs_f64(1.0 / 50.0));
        p.on_throttle(next, t0);
        assert_eq!(p.rate_per_second(), 25.0, "a throttle in the new epoch decreases again");
    }

    #[test]
    fn the_rate_never_drops_below_the_floor() {
        let t0 = Instant::now();
        let p = Pacer::new(100.0, 1.0, t0);
        for _ in 0..20 {
            let s = p.reserve(t0, t0 + FAR).unwrap();
            p.on_throttle(s, t0);
        }
        assert_eq!(p.rate_per_second(), 100.0 * MIN_RATE_FRACTION);
    }

    #[test]
    fn successes_raise_the_rate_additively_back_to_the_target() {
        let t0 = Instant::now();
        let p = Pacer::new(100.0, 1.0, t0);
        let s = p.reserve(t0, t0 + FAR).unwrap();
        p.on_throttle(s, t0);
        assert_eq!(p.rate_per_second(), 50.0);
        // One second of successes at ~50/s regains about 10 % of the target.
        let fresh = p.reserve(t0, t0 + FAR).unwrap();
        for _ in 0..50 {
            p.on_success(fresh, t0);
        }
        let after_one_second = p.rate_per_second();
        assert!((59.0..=61.0).contains(&after_one_second), "{after_one_second}");
        for _ in 0..10_000 {
            p.on_success(fresh, t0);
        }
        assert_eq!(p.rate_per_second(), 100.0, "capped at the target");
    }

    #[test]
    fn successes_of_slots_granted_before_a_decrease_do_not_raise_the_rate() {
        let t0 = Instant::now();
        let p = Pacer::new(100.0, 10.0, t0);
        let early: Vec<Slot> = (0..5).map(|_| p.reserve(t0, t0 + FAR).unwrap()).collect();
        p.on_throttle(early[0], t0);
        for slot in &early[1..] {
            p.on_success(*slot, t0);
        }
        assert_eq!(p.rate_per_second(), 50.0, "calls already in flight at the throttle");
    }

    #[test]
    fn a_tiny_rate_waits_long_but_never_panics() {
        let t0 = Instant::now();
        let p = Pacer::new(1e-300, 1.0, t0);
        assert!(p.reserve(t0, t0 + FAR).is_some());
        assert_eq!(p.reserve(t0, t0 + FAR), None, "the next slot is past any deadline");
    }

    #[test]
    fn a_slot_put_back_returns_its_token_unless_the_rate_changed() {
        let t0 = Instant::now();
        let p = Pacer::new(10.0, 1.0, t0);
        let slot = p.reserve(t0, t0 + FAR).unwrap();
        p.put_back(slot, t0);
        assert_eq!(
            p.reserve(t0, t0 + FAR).unwrap().wait,
            Duration::ZERO,
            "its token is back"
        );
        let late = p.reserve(t0, t0 + FAR).unwrap();
        p.on_throttle(late, t0);
        p.put_back(late, t0);
        assert!(
            p.free_in(t0) > Duration::ZERO,
            "the throttle emptied the bucket: nothing returns"
        );
    }

    #[test]
    fn an_emptied_bucket_waits_for_the_refill() {
        let t0 = Instant::now();
        let p = Pacer::new(10.0, 5.0, t0);
        let later = t0 + Duration::from_secs(60);
        p.empty(later);
        assert_eq!(p.reserve(later, later + FAR).unwrap().wait, Duration::from_millis(100));
    }

    #[test]
    fn an_idle_bucket_refills_only_to_its_capacity() {
        let t0 = Instant::now();
        let p = Pacer::new(10.0, 3.0, t0);
        drain(&p, t0, 3);
        let later = t0 + Duration::from_secs(60);
        let waits: Vec<Duration> = (0..4).map(|_| p.reserve(later, later + FAR).unwrap().wait).collect();
        assert_eq!(&waits[..3], &[Duration::ZERO; 3]);
        assert!(waits[3] > Duration::ZERO);
    }
}
