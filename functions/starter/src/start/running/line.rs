//! The waiting line: messages deferred at the cap, coordinated across every instance and
//! deployment of the cap, in one item (`running#K#line`, [`Line`]).
//!
//! ## The math (GCRA again: a queue as one number)
//! `tat` is when the last message in line is due, ms since the epoch. `λ̂` is the cap's completion
//! rate, slots per second ([`Rate`]); the line runs at `μ = LINE_PACE × λ̂`. An invocation that
//! defers `k` fresh messages writes ONE conditional update, `tat' = max(tat, now) + k / μ`
//! ([`plan`]), and gives message `i` (0 ≤ i < k) the due time `max(tat, now) + (i + 1) / μ`
//! ([`due_times`]): the line's messages come back one per expected completion, in the order they
//! joined. A message that comes back is due:
//! it tries first, and if the cap is full it waits for a slot in its invocation for a moment
//! (`HOLD`: the slot it is due for is usually a moment late); a fresh message joins the back while
//! the line is non-empty (unless more slots are free than the due messages of the next
//! [`FRESH_ROOM_SECONDS`] would fill, which happens when `λ̂` underestimates the rate); a due
//! message that still finds no slot joins the back too: it was one more than the line counted (a
//! rate that overestimates, a release lost or late), and at the front it would take the slots of
//! those the line counts. The line spaces its messages at [`LINE_PACE`] × `λ̂`, a little slack that
//! absorbs the jitter of comebacks. No message comes back sooner than [`MIN_WAIT`] (visibility
//! timeouts are whole seconds; 0 would be a tight loop at the cap).
//!
//! Before any execution of the cap has ended, `λ̂` is not measured, and a guess would poison the
//! line: the due times it gives stay in the messages' visibility timeouts after the first
//! releases tell the real rate. So until then there is no line: a waiting message probes, coming
//! back after [`PROBE_WAIT`] × 2^(receives − 1), jittered, at most `RUNNING_EXPIRY_SECONDS`
//! ([`probe_wait`]), and fresh messages try for a slot. A cap's releases are counted in its
//! shards, so this happens once in a cap's life, not once per instance.

use std::collections::VecDeque;
use std::time::Duration;

use super::{CapView, Line, LineShape};

/// A message deferred at the cap comes back no sooner than this.
pub const MIN_WAIT: Duration = Duration::from_secs(1);
/// The line spaces its messages at this share of `λ̂`: a slot or two of slack, which absorbs the
/// jitter of comebacks (visibility timeouts are whole seconds) so that a due message rarely finds
/// its slot not yet freed, and a message that missed finds one soon.
pub const LINE_PACE: f64 = 0.98;
/// The first wait of a message deferred before any execution of the cap has ended.
pub const PROBE_WAIT: Duration = Duration::from_secs(4);
/// Fresh messages may take slots while the line is non-empty only if more are free than the line's
/// due messages of this many seconds take (the slack [`LINE_PACE`] leaves is used, not the slots
/// of the due messages about to come back).
pub const FRESH_ROOM_SECONDS: f64 = 0.5;
/// Readings older than this are dropped from the rate's window.
pub const RATE_WINDOW: Duration = Duration::from_secs(300);
/// The rate is measured over at least this much time between two readings.
pub const MIN_RATE_SPAN: Duration = Duration::from_secs(10);

/// The completion rate `λ̂`, slots per second, by Little's law: `C / D̄`, where `D̄` is the mean
/// held time of the releases between the oldest and the newest readings of the window (a few
/// minutes), else of every release so far, else `RUNNING_EXPIRY_SECONDS` (a slot is checked then).
///
/// Why `C / D̄` rather than the rate of releases itself: both agree while the cap is full, which is
/// when the line exists; the mean duration is also right while it is not (a line can start at any
/// moment), and it needs releases, not a full cap, to be measured.
#[derive(Debug, Clone, Default)]
pub struct Rate {
    /// Readings: (ms since the epoch, Σ freed, Σ busy_ms), oldest first.
    readings: VecDeque<(u64, u64, u64)>,
}

impl Rate {
    /// Records the view read at `now_ms`.
    pub fn record(&mut self, now_ms: u64, view: &CapView) {
        let (freed, busy) = view.freed();
        self.readings.push_back((now_ms, freed, busy));
        let window = RATE_WINDOW.as_millis() as u64;
        while self
            .readings
            .front()
            .is_some_and(|(at, _, _)| now_ms.saturating_sub(*at) > window)
        {
            self.readings.pop_front();
        }
    }

    /// Whether an execution has ended (a release was counted): `λ̂` is then measured.
    pub fn measured(&self) -> bool {
        self.readings.back().is_some_and(|(_, freed, _)| *freed > 0)
    }

    /// The mean time a slot is held (`D̄`), once measured.
    pub fn mean_held(&self) -> Option<Duration> {
        let ms = self.windowed_mean_ms().or_else(|| self.overall_mean_ms())?;
        Duration::try_from_secs_f64(ms / 1000.0).ok()
    }

    /// `λ̂` for a cap of `cap` slots, slots per second (positive).
    pub fn per_second(&self, cap: u64, expiry: Duration) -> f64 {
        let mean_ms = self.windowed_mean_ms().or_else(|| self.overall_mean_ms());
        let mean_s = mean_ms.map_or(expiry.as_secs_f64(), |ms| ms / 1000.0).max(1e-3);
        (cap.max(1) as f64 / mean_s).max(1e-6)
    }

    fn windowed_mean_ms(&self) -> Option<f64> {
        let (first, last) = (self.readings.front()?, self.readings.back()?);
        let span = last.0.saturating_sub(first.0);
        let freed = last.1.saturating_sub(first.1);
        (span >= MIN_RATE_SPAN.as_millis() as u64 && freed > 0)
            .then(|| last.2.saturating_sub(first.2) as f64 / freed as f64)
    }

    fn overall_mean_ms(&self) -> Option<f64> {
        let (_, freed, busy) = *self.readings.back()?;
        (freed > 0).then(|| busy as f64 / freed as f64)
    }
}

/// The update that puts `k` messages in line at `now_ms`, given the line as last seen.
pub fn plan(seen: Option<Line>, now_ms: u64, k: usize, per_second: f64) -> LineShape {
    let delta_ms = span_ms(k, per_second);
    match seen {
        Some(line) if line.tat_ms >= now_ms => LineShape::Extend { now_ms, delta_ms },
        _ => LineShape::FromNow {
            now_ms,
            tat_ms: now_ms.saturating_add(delta_ms),
        },
    }
}

/// `k / λ̂` in milliseconds, at least 1.
pub fn span_ms(k: usize, per_second: f64) -> u64 {
    let ms = (k as f64 * 1000.0 / per_second).ceil();
    if ms.is_finite() {
        (ms as u64).max(1)
    } else {
        u64::MAX / 4
    }
}

/// The due times (ms since the epoch) of the `k` messages that the update to `after` put in line:
/// one every `1 / λ̂`, the last at `after.tat_ms`.
pub fn due_times(after: Line, k: usize, per_second: f64) -> Vec<u64> {
    let start = after.tat_ms.saturating_sub(span_ms(k, per_second));
    (1..=k)
        .map(|i| start.saturating_add(span_ms(i, per_second)).min(after.tat_ms))
        .collect()
}

/// The wait of a message deferred before `λ̂` is measured (no execution of the cap ended yet), at
/// its `receives`-th receive: [`PROBE_WAIT`] × 2^(receives − 1), scaled by `0.75 + u / 2` for a draw
/// `u` of `jitter` in `[0, 1)`, at most `expiry` (by then a slot has ended, or the reclaim looked at
/// it), at least [`MIN_WAIT`].
pub fn probe_wait(receives: u32, expiry: Duration, jitter: f64) -> Duration {
    let doubled = PROBE_WAIT.saturating_mul(1u32 << receives.saturating_sub(1).min(16));
    doubled
        .mul_f64(0.75 + jitter.clamp(0.0, 1.0) / 2.0)
        .min(expiry)
        .max(MIN_WAIT)
}

/// Whether a fresh message may try for a slot: the line is empty at `now_ms`, or `room` slots are
/// free beyond what the due messages of the next [`FRESH_ROOM_SECONDS`] take, or beyond the slack
/// the line leaves in a cap of `cap` (`(1 − LINE_PACE) × cap`), whichever is fewer: that slack is
/// for fresh messages to use.
pub fn admits_fresh(line: Option<Line>, room: u64, now_ms: u64, per_second: f64, cap: u64) -> bool {
    let slack = (1.0 - LINE_PACE) * cap as f64;
    let reserved = (per_second * FRESH_ROOM_SECONDS).min(slack).max(1.0);
    line.is_none_or(|l| l.tat_ms <= now_ms) || room as f64 > reserved
}
