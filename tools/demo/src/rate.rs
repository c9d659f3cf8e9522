//! Rate arithmetic: the per-instance share of the budget, the fastest possible drain, rates
//! over sliding windows, achieved against target.

/// The window of the live starts/s figure and of the peak rate, in seconds.
pub const WINDOW_SECONDS: f64 = 5.0;

/// One instance's share of the global rate: `rate / instances` (as the function computes it).
pub fn instance_rate(global_rate: f64, instances: u32) -> f64 {
    global_rate / f64::from(instances.max(1))
}

/// The fastest possible drain of `messages` already queued, under a token bucket of `burst`
/// and `rate` per second: `max(0, (messages − burst) / rate)` seconds.
pub fn ideal_drain_seconds(messages: u64, burst: f64, rate: f64) -> f64 {
    if rate <= 0.0 {
        return f64::INFINITY;
    }
    ((messages as f64 - burst) / rate).max(0.0)
}

/// A lower bound of the drain when the producer also paces: the messages cannot start before
/// they are sent (`messages / produce_rate`), nor faster than the bucket allows.
pub fn paced_drain_bound_seconds(messages: u64, produce_rate: Option<f64>, burst: f64, rate: f64) -> f64 {
    let sending = match produce_rate {
        Some(p) if p > 0.0 => messages as f64 / p,
        _ => 0.0,
    };
    sending.max(ideal_drain_seconds(messages, burst, rate))
}

/// `count` per `seconds`, 0 when no time passed.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 && seconds.is_finite() {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `part / whole` in percent, 0 when `whole` is 0.
pub fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// Starts per second in the window `(now − window, now]`, from `(time, count)` samples.
pub fn window_rate(samples: &[(f64, u64)], now: f64, window: f64) -> f64 {
    if window <= 0.0 {
        return 0.0;
    }
    let sum: u64 = samples
        .iter()
        .filter(|(t, _)| *t > now - window && *t <= now)
        .map(|(_, n)| n)
        .sum();
    sum as f64 / window
}

/// The highest [`window_rate`] over windows ending at each sample.
pub fn peak_window_rate(samples: &[(f64, u64)], window: f64) -> f64 {
    samples
        .iter()
        .map(|(t, _)| window_rate(samples, *t, window))
        .fold(0.0, f64::max)
}

/// The producer's default pace: the start rate. Faster, the queue grows, and moto's SQS,
/// whose every call walks the whole queue, slows down until the demo stalls (measured: at
/// 1.1 x 100/s the queue passed 1,000 messages and starts fell to a few per second).
pub fn default_produce_rate(start_rate: f64) -> f64 {
    start_rate
}

/// The default high-water mark of the queue: the larger of 100 and two full rounds of
/// batches in flight (`2 × batch size × instances`), so that a healthy run is never held.
pub fn default_max_queue_depth(batch_size: u16, instances: u32) -> u64 {
    (2 * u64::from(batch_size) * u64::from(instances)).max(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_budget_is_split_like_the_function_splits_it() {
        assert!(close(instance_rate(100.0, 4), 25.0));
        assert!(close(instance_rate(100.0, 0), 100.0), "0 instances is treated as 1");
    }

    #[test]
    fn drain_bounds() {
        // The design's example: 3,000 queued, bucket 1,300, refill 300/s.
        assert!(close(ideal_drain_seconds(3000, 1300.0, 300.0), 1700.0 / 300.0));
        assert!(close(ideal_drain_seconds(500, 1300.0, 300.0), 0.0));
        assert!(ideal_drain_seconds(1, 0.0, 0.0).is_infinite());
        // Produced at 110/s, started at 100/s with a burst of 100: the bucket is the bound.
        assert!(close(paced_drain_bound_seconds(3000, Some(110.0), 100.0, 100.0), 29.0));
        // Produced slower than the start rate: the producer is the bound.
        assert!(close(paced_drain_bound_seconds(3000, Some(50.0), 100.0, 100.0), 60.0));
        assert!(close(paced_drain_bound_seconds(3000, None, 100.0, 100.0), 29.0));
    }

    #[test]
    fn rates_and_percentages() {
        assert!(close(per_second(300, 3.0), 100.0));
        assert!(close(per_second(300, 0.0), 0.0));
        assert!(close(percent(97.0, 100.0), 97.0));
        assert!(close(percent(1.0, 0.0), 0.0));
        assert!(close(default_produce_rate(100.0), 100.0));
        assert_eq!(default_max_queue_depth(10, 4), 100);
        assert_eq!(default_max_queue_depth(100, 4), 800);
    }

    #[test]
    fn sliding_windows() {
        // 10 starts every half second from t=0.5 to t=10: 20 per second.
        let samples: Vec<(f64, u64)> = (1..=20).map(|i| (f64::from(i) * 0.5, 10)).collect();
        assert!(close(window_rate(&samples, 10.0, 5.0), 20.0));
        // Only half a window has passed at t=2.5: 5 samples of 10 over 5 s.
        assert!(close(window_rate(&samples, 2.5, 5.0), 10.0));
        assert!(close(window_rate(&samples, 100.0, 5.0), 0.0));
        assert!(close(window_rate(&samples, 10.0, 0.0), 0.0));
        assert!(close(peak_window_rate(&samples, 5.0), 20.0));
        // A burst of 100 at t=1 stands out.
        let mut bursty = samples.clone();
        bursty.push((1.0, 100));
        assert!(close(peak_window_rate(&bursty, 5.0), 40.0));
        assert!(close(peak_window_rate(&[], 5.0), 0.0));
    }
}
