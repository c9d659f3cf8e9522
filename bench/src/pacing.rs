//! Pacing accuracy: the real handler, driven like the mapping, against a StartExecution that
//! returns at once (so only the pacer sets the pace). Measures the achieved rate over a
//! steady window and the largest number of calls in any 1 s window.

use std::sync::Arc;
use std::time::Duration;

use local_stack::sim::{drive, Mapping, SimQueue, DEFAULT_BATCHING_WINDOW};
use sfn_pacer::start::StartExecution;
use sfn_pacer::Starter;

use crate::common::{body, config, BenchError, InstantStart, Runtimes};
use crate::stats;

/// The measurements at one target rate.
#[derive(Debug, Clone)]
pub struct PacingResult {
    /// The configured rate (`STARTS_PER_SECOND`), calls per second.
    pub target_per_second: f64,
    /// The configured burst (`STARTS_BURST`), calls.
    pub burst: f64,
    /// The steady window's length, seconds (it starts 1 s after the first call, once the
    /// initial burst is spent).
    pub window_seconds: f64,
    /// Calls per second achieved over the steady window.
    pub achieved_per_second: f64,
    /// The largest number of calls in any 1 s window of the run.
    pub max_in_one_second: usize,
    /// Calls made in the whole run.
    pub calls: u64,
}

impl PacingResult {
    /// `|achieved − target| / target`.
    pub fn error(&self) -> f64 {
        stats::pacing_error(self.achieved_per_second, self.target_per_second)
    }

    /// The most a token bucket may release in 1 s: burst + rate × 1 s.
    pub fn one_second_bound(&self) -> f64 {
        self.burst + self.target_per_second
    }
}

/// Paces `target` calls per second with a burst of `burst` for the initial second plus a
/// steady `window`. One instance, BatchSize `batch_size`.
pub fn run(
    runtimes: &Runtimes,
    target: f64,
    burst: f64,
    window: Duration,
    batch_size: usize,
) -> Result<PacingResult, BenchError> {
    runtimes.client.block_on(async {
        let queue = SimQueue::new("pacing", 5, Duration::from_secs(60));
        let sfn = Arc::new(InstantStart::new(true));
        let cfg = config(&[
            ("STARTS_PER_SECOND", target.to_string()),
            ("STARTS_BURST", burst.to_string()),
            ("MAX_CONCURRENCY", "1".to_string()),
        ])?;
        let starter = Arc::new(Starter::new(cfg, sfn.clone() as Arc<dyn StartExecution>, queue.clone()));
        // Enough work to keep the pacer busy through the window and half a second more.
        let messages = (burst + target * (1.5 + window.as_secs_f64())).ceil() as u64;
        for i in 0..messages {
            queue.send(body(i));
        }
        let mapping = Mapping {
            batch_size,
            batching_window: DEFAULT_BATCHING_WINDOW,
            function_timeout: Duration::from_secs(60),
            short_deadline: None,
            max_run: window + Duration::from_secs(5),
            idle_poll: Duration::from_millis(1),
        };
        drive(queue, vec![starter], mapping).await;
        let calls = sfn.calls();
        let Some(first) = calls.iter().min().copied() else {
            return Err("no StartExecution call was made".into());
        };
        let times: Vec<Duration> = calls.iter().map(|t| *t - first).collect();
        let from = Duration::from_secs(1);
        Ok(PacingResult {
            target_per_second: target,
            burst,
            window_seconds: window.as_secs_f64(),
            achieved_per_second: stats::rate_in(&times, from, from + window),
            max_in_one_second: stats::max_in_window(&times, Duration::from_secs(1)),
            calls: calls.len() as u64,
        })
    })
}
