//! The instance's clock: epoch time (what the coordination table stores: the budget's `tat` in
//! seconds, the cap's times in milliseconds) ↔ the runtime's monotonic instants (what the
//! instance sleeps on). One clock for the shared pacer and the running-execution cap.
//!
//! Epoch time is `paired_epoch + (now − paired_instant) + skew`, so it follows the runtime's
//! clock (a paused tokio clock in tests). The pair is taken again whenever the wall clock is
//! found ahead of that by more than [`THAW_RESYNC`]: a Lambda environment that was frozen
//! between invocations comes back with its monotonic clock behind the wall clock by the time it
//! was frozen. Without the new pair, the instance would read the budget's `tat` against a `now`
//! in the past, and see the bucket as booked ahead by the time it was frozen. A wall clock found
//! *behind* (an NTP step back, or a paused test clock that runs ahead of real time) is ignored:
//! the monotonic clock is the better one then.
//!
//! `skew` models an instance whose clock is off (tests and benchmarks only; in Lambda the clocks
//! agree within a millisecond or so: see [`super::budget::rules::MAX_SKEW`] for the bound the
//! reserve covers).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A wall clock found this far ahead of the paired monotonic clock takes a new pair (a thaw).
pub const THAW_RESYNC: Duration = Duration::from_millis(250);

/// The wall clock: seconds since the Unix epoch.
type Wall = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Epoch seconds ↔ monotonic instants, resynchronised after a thaw.
#[derive(Clone)]
pub struct Clock {
    wall: Wall,
    /// Seconds this instance's clock is ahead (positive) or behind (negative) the true time.
    skew: f64,
    pair: Arc<Mutex<(Instant, f64)>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("skew", &self.skew)
            .finish_non_exhaustive()
    }
}

/// Now on the system's wall clock, seconds since the Unix epoch (0 before it).
pub fn system_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock::with_wall(system_seconds)
    }

    /// A clock whose wall time follows the runtime's clock from `epoch` (seconds since the
    /// epoch) on: a paused tokio clock in tests and simulations, where the system's wall clock
    /// does not move with it.
    pub fn following_runtime(epoch: f64) -> Clock {
        let start = Instant::now();
        Clock::with_wall(move || epoch + start.elapsed().as_secs_f64())
    }

    /// A clock whose wall time is `wall()` (seconds since the epoch): tests move it to model a thaw.
    pub fn with_wall(wall: impl Fn() -> f64 + Send + Sync + 'static) -> Clock {
        let epoch = wall();
        Clock {
            wall: Arc::new(wall),
            skew: 0.0,
            pair: Arc::new(Mutex::new((Instant::now(), epoch))),
        }
    }

    /// This clock, `seconds` ahead (negative: behind) of the true time.
    pub fn skewed(mut self, seconds: f64) -> Clock {
        self.skew = seconds;
        self
    }

    /// The skew, seconds.
    pub fn skew(&self) -> f64 {
        self.skew
    }

    fn paired(&self) -> (Instant, f64) {
        let mut pair = self.pair.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let wall = (self.wall)();
        let followed = pair.1 + now.saturating_duration_since(pair.0).as_secs_f64();
        if wall > followed + THAW_RESYNC.as_secs_f64() {
            *pair = (now, wall);
        }
        *pair
    }

    /// The epoch time of `at`, seconds, as this instance reads it (skew included).
    pub fn epoch(&self, at: Instant) -> f64 {
        let (instant, epoch) = self.paired();
        let base = if at >= instant {
            epoch + (at - instant).as_secs_f64()
        } else {
            epoch - (instant - at).as_secs_f64()
        };
        base + self.skew
    }

    /// Now, milliseconds since the epoch (the cap's times).
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The epoch time of `at`, milliseconds (0 before the epoch).
    pub fn ms_at(&self, at: Instant) -> u64 {
        // A float-to-int cast saturates: a negative time is 0.
        (self.epoch(at) * 1000.0).round() as u64
    }

    /// The instant at which this instance's clock reads `epoch_ms` (milliseconds).
    pub fn instant_ms(&self, epoch_ms: u64) -> Instant {
        self.instant(epoch_ms as f64 / 1000.0)
    }

    /// The instant at which this instance's clock reads `epoch` (never before the pair's
    /// instant minus the clamp of a huge offset).
    pub fn instant(&self, epoch: f64) -> Instant {
        let (instant, paired) = self.paired();
        let offset = epoch - self.skew - paired;
        if offset >= 0.0 {
            instant + Duration::try_from_secs_f64(offset).unwrap_or(Duration::MAX / 4)
        } else {
            instant
                .checked_sub(Duration::try_from_secs_f64(-offset).unwrap_or_default())
                .unwrap_or(instant)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn epoch_time_follows_the_runtime_clock_and_the_skew() {
        let clock = Clock::with_wall(|| 1_000.0).skewed(0.05);
        let t0 = Instant::now();
        assert!((clock.epoch(t0) - 1_000.05).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(3)).await;
        // The wall clock stood still (behind): ignored, the runtime's clock is followed.
        assert!((clock.epoch(Instant::now()) - 1_003.05).abs() < 1e-9);
        let at = clock.instant(1_004.05);
        assert_eq!(at - Instant::now(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn milliseconds_follow_the_runtime_and_round_trip() {
        let clock = Clock::following_runtime(1_000_000.0);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_ms(), 1_000_001_500);
        assert_eq!(clock.ms_at(clock.instant_ms(1_000_002_000)), 1_000_002_000);
        assert_eq!(clock.ms_at(clock.instant_ms(999_999_000)), 999_999_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_thawed_instance_takes_the_wall_clock_again() {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let clock = {
            let wall = wall.clone();
            Clock::with_wall(move || wall.load(Ordering::Relaxed) as f64 / 1000.0)
        };
        let t0 = Instant::now();
        // Frozen for 40 s: the wall clock moved on, the monotonic clock did not.
        wall.store(1_040_000, Ordering::Relaxed);
        assert!((clock.epoch(t0) - 1_040.0).abs() < 1e-9, "{}", clock.epoch(t0));
        // A small drift ahead is not a thaw.
        wall.store(1_040_100, Ordering::Relaxed);
        assert!((clock.epoch(t0) - 1_040.0).abs() < 1e-9);
    }
}
