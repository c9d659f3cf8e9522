//! The benchmark's accounting: pure functions, unit-tested without a network.
//!
//! Units are in the names or the docs: seconds as `f64`, instants as [`Duration`] since an
//! origin the caller picks, rates in calls per second.

use std::time::Duration;

/// The fastest possible drain of `messages` through a token bucket of `burst` tokens refilled
/// at `refill_per_second`: `T* = max(0, (M − B) / r)`, in seconds. A bucket that never
/// refills (`r ≤ 0`) can drain at most `B` messages: then `T*` is 0 when `M ≤ B`, else infinite.
pub fn ideal_drain_seconds(messages: u64, burst: f64, refill_per_second: f64) -> f64 {
    let excess = (messages as f64 - burst).max(0.0);
    if excess == 0.0 {
        0.0
    } else if refill_per_second > 0.0 {
        excess / refill_per_second
    } else {
        f64::INFINITY
    }
}

/// Drain efficiency `T* / T` (1 is the quota's limit). `None` when the drain did not finish
/// (`actual_seconds` is not finite) or took no time while the ideal is positive.
pub fn efficiency(ideal_seconds: f64, actual_seconds: f64) -> Option<f64> {
    if !actual_seconds.is_finite() || !ideal_seconds.is_finite() || actual_seconds < 0.0 {
        return None;
    }
    if actual_seconds == 0.0 {
        return (ideal_seconds == 0.0).then_some(1.0);
    }
    Some(ideal_seconds / actual_seconds)
}

/// `part / whole`, or 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The `p`-th percentile (`p` in `[0, 100]`) of `values` by the nearest-rank method: the
/// smallest value such that at least `p` % of the values are at or below it. `None` for no
/// values. `values` need not be sorted.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() || !p.is_finite() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: ceil(p/100 × n), at least 1.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// Counts events per slot of `width`, from `origin`: element `i` counts the events in
/// `[origin + i × width, origin + (i + 1) × width)`. Events before `origin` are ignored.
/// The series covers at least `min_len` slots and ends at the slot of the latest event.
pub fn series(times: &[Duration], origin: Duration, width: Duration, min_len: usize) -> Vec<u64> {
    let mut out = vec![0u64; min_len];
    if width.is_zero() {
        return out;
    }
    for t in times {
        let Some(offset) = t.checked_sub(origin) else {
            continue;
        };
        let slot = (offset.as_nanos() / width.as_nanos()) as usize;
        if slot >= out.len() {
            out.resize(slot + 1, 0);
        }
        out[slot] += 1;
    }
    out
}

/// The largest number of events in any window `[t, t + window)` (sliding over every event).
/// `times` need not be sorted.
pub fn max_in_window(times: &[Duration], window: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] >= sorted[lo] + window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Events in `[from, to)`, per second of that window. 0 for an empty window.
pub fn rate_in(times: &[Duration], from: Duration, to: Duration) -> f64 {
    let Some(length) = to.checked_sub(from).filter(|d| !d.is_zero()) else {
        return 0.0;
    };
    let n = times.iter().filter(|t| **t >= from && **t < to).count();
    n as f64 / length.as_secs_f64()
}

/// Pacing error `|achieved − target| / target` (a fraction; 0.01 is 1 %).
pub fn pacing_error(achieved_per_second: f64, target_per_second: f64) -> f64 {
    if target_per_second <= 0.0 {
        return f64::INFINITY;
    }
    (achieved_per_second - target_per_second).abs() / target_per_second
}

/// `total` divided over `count` items, in microseconds each (0 for no items).
pub fn micros_per(total: Duration, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total.as_secs_f64() * 1e6 / count as f64
    }
}

/// The median of `values` (the nearest-rank 50th percentile), `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn ideal_drain_is_the_excess_over_the_burst_at_the_refill_rate() {
        assert_eq!(ideal_drain_seconds(4300, 1300.0, 300.0), 10.0);
        assert_eq!(ideal_drain_seconds(2300, 800.0, 150.0), 10.0);
        assert_eq!(ideal_drain_seconds(500, 800.0, 150.0), 0.0, "within the burst: instant");
        assert_eq!(ideal_drain_seconds(800, 800.0, 150.0), 0.0);
        assert_eq!(ideal_drain_seconds(801, 800.0, 0.0), f64::INFINITY);
        assert_eq!(ideal_drain_seconds(10, 800.0, 0.0), 0.0);
    }

    #[test]
    fn efficiency_is_ideal_over_actual() {
        assert_eq!(efficiency(10.0, 10.0), Some(1.0));
        assert_eq!(efficiency(10.0, 12.5), Some(0.8));
        assert_eq!(efficiency(0.0, 0.3), Some(0.0));
        assert_eq!(efficiency(0.0, 0.0), Some(1.0));
        assert_eq!(
            efficiency(10.0, 0.0),
            None,
            "no time for a positive ideal is a bug upstream"
        );
        assert_eq!(efficiency(10.0, f64::INFINITY), None, "not drained");
        assert_eq!(efficiency(10.0, f64::NAN), None);
    }

    #[test]
    fn ratio_of_nothing_is_zero() {
        assert_eq!(ratio(0, 0), 0.0);
        assert_eq!(ratio(5, 1000), 0.005);
        assert_eq!(ratio(3, 3), 1.0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 0.5), Some(1.0));
        assert_eq!(percentile(&v, 99.5), Some(100.0));
        // Unsorted input, odd count.
        assert_eq!(percentile(&[5.0, 1.0, 3.0], 50.0), Some(3.0));
        assert_eq!(median(&[2.0, 1.0]), Some(1.0), "nearest rank: ceil(0.5 × 2) = 1st");
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&v, 250.0), Some(100.0), "clamped");
    }

    #[test]
    fn series_buckets_by_slot_from_the_origin() {
        let times = [ms(900), ms(1000), ms(1001), ms(2999), ms(3000), ms(500)];
        // Origin 1 s: 900 ms and 500 ms are before it and ignored.
        assert_eq!(series(&times, ms(1000), ms(1000), 0), vec![2, 1, 1]);
        assert_eq!(series(&times, Duration::ZERO, ms(1000), 0), vec![2, 2, 1, 1]);
        assert_eq!(
            series(&times, Duration::ZERO, ms(1000), 6),
            vec![2, 2, 1, 1, 0, 0],
            "padded"
        );
        assert_eq!(series(&[], Duration::ZERO, ms(1000), 2), vec![0, 0]);
        assert_eq!(
            series(&times, Duration::ZERO, Duration::ZERO, 1),
            vec![0],
            "a zero width counts nothing"
        );
        let total: u64 = series(&times, Duration::ZERO, ms(250), 0).iter().sum();
        assert_eq!(total, times.len() as u64, "every event counted once");
    }

    #[test]
    fn max_in_window_slides_over_every_event() {
        assert_eq!(max_in_window(&[], ms(1000)), 0);
        assert_eq!(max_in_window(&[ms(5)], ms(1000)), 1);
        // Half-open window: an event exactly one window later is not in it.
        assert_eq!(max_in_window(&[ms(0), ms(1000)], ms(1000)), 1);
        assert_eq!(max_in_window(&[ms(0), ms(999)], ms(1000)), 2);
        // The densest second is 1.5..2.5 s, not an aligned one.
        let times = [ms(0), ms(1500), ms(1600), ms(2100), ms(2400), ms(2600), ms(3700)];
        assert_eq!(max_in_window(&times, ms(1000)), 4);
        let shuffled = [ms(2400), ms(0), ms(3700), ms(1600), ms(2100), ms(1500), ms(2600)];
        assert_eq!(max_in_window(&shuffled, ms(1000)), 4);
    }

    #[test]
    fn rate_in_counts_a_half_open_window() {
        let times: Vec<Duration> = (0..100).map(|i| ms(i * 10)).collect(); // 100/s over 1 s
        assert_eq!(rate_in(&times, ms(0), ms(1000)), 100.0);
        assert_eq!(rate_in(&times, ms(500), ms(1000)), 100.0);
        assert_eq!(rate_in(&times, ms(0), ms(2000)), 50.0);
        assert_eq!(rate_in(&times, ms(10), ms(10)), 0.0);
        assert_eq!(rate_in(&times, ms(20), ms(10)), 0.0);
    }

    #[test]
    fn pacing_error_is_relative() {
        assert_eq!(pacing_error(99.0, 100.0), 0.01);
        assert_eq!(pacing_error(101.0, 100.0), 0.01);
        assert_eq!(pacing_error(300.0, 300.0), 0.0);
        assert_eq!(pacing_error(1.0, 0.0), f64::INFINITY);
    }

    #[test]
    fn micros_per_item() {
        assert_eq!(micros_per(Duration::from_millis(5), 1000), 5.0);
        assert_eq!(micros_per(Duration::from_secs(1), 0), 0.0);
    }
}
