//! Rate arithmetic: what each deployment is told of the budget, the fastest possible drain,
//! rates over sliding windows, achieved against target, and the limit the sum of the
//! deployments' starts must stay under.

/// The window of the live starts/s figure and of the peak rate, in seconds.
pub const WINDOW_SECONDS: f64 = 5.0;
/// The tolerance of the budget check: the peak over [`WINDOW_SECONDS`] may exceed what the
/// budget's own bucket allows by this factor (timestamps, network jitter).
pub const BUDGET_MARGIN: f64 = 1.1;

/// What one of `deployments` deployments is told of the budget `(rate, burst)`: the whole of
/// it when they coordinate (they share one bucket), else an even share (the static split).
pub fn deployment_budget(rate: f64, burst: f64, deployments: u32, coordinated: bool) -> (f64, f64) {
    if coordinated {
        (rate, burst)
    } else {
        let n = f64::from(deployments.max(1));
        (rate / n, burst / n)
    }
}

/// The most the sum of the starts may reach over any [`WINDOW_SECONDS`]: a bucket of `burst`
/// refilled at `rate` lets `burst + rate × window` through, that is `rate + burst / window` per
/// second; the check allows `rate × BUDGET_MARGIN + burst / window`.
pub fn budget_limit(rate: f64, burst: f64) -> f64 {
    rate * BUDGET_MARGIN + burst / WINDOW_SECONDS
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
/// they are sent (`messages / produce_rate`), nor faster than the bucket allows, which counts
/// executions: `⌈messages / messages_per_execution⌉` at best (every execution full).
pub fn paced_drain_bound_seconds(
    messages: u64,
    messages_per_execution: u32,
    produce_rate: Option<f64>,
    burst: f64,
    rate: f64,
) -> f64 {
    let sending = match produce_rate {
        Some(p) if p > 0.0 => messages as f64 / p,
        _ => 0.0,
    };
    let executions = messages.div_ceil(u64::from(messages_per_execution.max(1)));
    sending.max(ideal_drain_seconds(executions, burst, rate))
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

/// The highest [`window_rate`] over windows ending at each sample (sorted, one pass).
pub fn peak_window_rate(samples: &[(f64, u64)], window: f64) -> f64 {
    if window <= 0.0 {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut first, mut sum, mut peak) = (0, 0u64, 0u64);
    for (i, (t, n)) in sorted.iter().enumerate() {
        sum += n;
        // Samples at the same time all belong to the window ending at the last of them.
        if sorted.get(i + 1).is_some_and(|next| next.0 == *t) {
            continue;
        }
        while sorted[first].0 <= t - window {
            sum -= sorted[first].1;
            first += 1;
        }
        peak = peak.max(sum);
    }
    peak as f64 / window
}

/// The producer's default pace: the start rate times the messages one execution carries,
/// what the starts can take at best. Faster, the queue grows, and moto's SQS, whose every call
/// walks the whole queue, slows down until the demo stalls (measured: at 1.1 x 100/s the queue
/// passed 1,000 messages and starts fell to a few per second).
pub fn default_produce_rate(start_rate: f64, messages_per_execution: u32) -> f64 {
    start_rate * f64::from(messages_per_execution.max(1))
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
    fn deployments_are_told_the_whole_budget_only_when_they_coordinate() {
        assert_eq!(deployment_budget(100.0, 50.0, 2, true), (100.0, 50.0));
        assert_eq!(deployment_budget(100.0, 50.0, 2, false), (50.0, 25.0));
        assert_eq!(deployment_budget(100.0, 50.0, 1, false), (100.0, 50.0));
        // 100/s with a burst of 100: at most 200 in 5 s is 120/s; plus 10 % of the rate.
        assert!(close(budget_limit(100.0, 100.0), 130.0));
    }

    #[test]
    fn drain_bounds() {
        // The design's example: 3,000 queued, bucket 1,300, refill 300/s.
        assert!(close(ideal_drain_seconds(3000, 1300.0, 300.0), 1700.0 / 300.0));
        assert!(close(ideal_drain_seconds(500, 1300.0, 300.0), 0.0));
        assert!(ideal_drain_seconds(1, 0.0, 0.0).is_infinite());
        // Produced at 110/s, started at 100/s with a burst of 100: the bucket is the bound.
        assert!(close(
            paced_drain_bound_seconds(3000, 1, Some(110.0), 100.0, 100.0),
            29.0
        ));
        // Produced slower than the start rate: the producer is the bound.
        assert!(close(
            paced_drain_bound_seconds(3000, 1, Some(50.0), 100.0, 100.0),
            60.0
        ));
        assert!(close(paced_drain_bound_seconds(3000, 1, None, 100.0, 100.0), 29.0));
        // 10 messages per execution: 300 executions, (300 - 100) / 100 = 2 s; sending takes 3 s.
        assert!(close(paced_drain_bound_seconds(3000, 10, None, 100.0, 100.0), 2.0));
        assert!(close(
            paced_drain_bound_seconds(3000, 10, Some(1000.0), 100.0, 100.0),
            3.0
        ));
        assert!(paced_drain_bound_seconds(3001, 10, None, 100.0, 0.0).is_infinite());
    }

    #[test]
    fn rates_and_percentages() {
        assert!(close(per_second(300, 3.0), 100.0));
        assert!(close(per_second(300, 0.0), 0.0));
        assert!(close(percent(97.0, 100.0), 97.0));
        assert!(close(percent(1.0, 0.0), 0.0));
        assert!(close(default_produce_rate(100.0, 1), 100.0));
        assert!(close(default_produce_rate(100.0, 10), 1000.0));
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
        // Unsorted, with ties: the same as every window ending at a sample.
        let mixed = [(3.0, 1), (1.0, 2), (3.0, 4), (8.0, 1), (6.0, 1)];
        let brute = mixed
            .iter()
            .map(|(t, _)| window_rate(&mixed, *t, 5.0))
            .fold(0.0, f64::max);
        assert!(close(peak_window_rate(&mixed, 5.0), brute));
        assert!(close(brute, 7.0 / 5.0));
    }
}
