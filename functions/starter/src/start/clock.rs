//! Epoch time that follows the runtime's clock: what the coordination table stores (milliseconds
//! since the Unix epoch) read from tokio's `Instant`, so that tests on a paused clock see the
//! table's times advance with `tokio::time::advance`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Epoch milliseconds ↔ the runtime's instants, anchored once.
#[derive(Debug, Clone, Copy)]
pub struct EpochClock {
    instant: Instant,
    epoch_ms: u64,
}

impl EpochClock {
    /// Anchored at the system clock now.
    pub fn new() -> EpochClock {
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        EpochClock::at(epoch_ms)
    }

    /// Anchored so that now is `epoch_ms` (tests).
    pub fn at(epoch_ms: u64) -> EpochClock {
        EpochClock {
            instant: Instant::now(),
            epoch_ms,
        }
    }

    /// Now, milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at`, milliseconds since the epoch.
    pub fn ms_at(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.epoch_ms.saturating_add(after.as_millis() as u64),
            None => self
                .epoch_ms
                .saturating_sub(self.instant.saturating_duration_since(at).as_millis() as u64),
        }
    }

    /// The instant of `epoch_ms` (at most a year ahead of the anchor; before the process's
    /// clock began, its start).
    pub fn instant(&self, epoch_ms: u64) -> Instant {
        if epoch_ms >= self.epoch_ms {
            let ahead = Duration::from_millis(epoch_ms - self.epoch_ms).min(Duration::from_secs(365 * 86_400));
            self.instant + ahead
        } else {
            let before = Duration::from_millis(self.epoch_ms - epoch_ms);
            self.instant.checked_sub(before).unwrap_or(self.instant)
        }
    }
}

impl Default for EpochClock {
    fn default() -> EpochClock {
        EpochClock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn epoch_time_advances_with_the_runtimes_clock() {
        let clock = EpochClock::at(1_000_000);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_ms(), 1_001_500);
        assert_eq!(clock.ms_at(clock.instant(1_002_000)), 1_002_000);
        assert_eq!(clock.ms_at(clock.instant(999_000)), 999_000);
    }
}
