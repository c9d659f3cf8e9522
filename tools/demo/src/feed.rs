//! Feeding the producer: the demo writes the generated messages to `producer --stdin` at the
//! configured pace, and holds back while too many are outstanding: written, but not yet
//! started or dead-lettered by the function (its EMF counts), nor moved to the DLQ by SQS's
//! redrive ([`Done`]). That bounds what sits in moto's queue (and in the producer's buffers,
//! which a queue-depth reading would miss).
//!
//! Why: moto's SQS walks the whole queue on every call, so once the queue deepens past a few
//! hundred messages every call slows down, the function receives less, the queue deepens
//! further, and the run stalls (measured here: starts fell from 100/s to under 10/s). Holding
//! the producer back turns that collapse into a slower run, and the report says how long the
//! producer was held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::task::JoinHandle;

/// How many lines may be written, and when to hold back.
#[derive(Clone, Debug)]
pub struct Feeder {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<f64>,
    high: u64,
    low: u64,
    held: bool,
    held_seconds: f64,
}

impl Feeder {
    /// `rate` lines per second (bursts of at most a tenth of a second's worth); hold back while
    /// more than `high_water` messages are outstanding, until they are down to half of that.
    pub fn new(rate: f64, high_water: u64) -> Feeder {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 1.0 };
        Feeder {
            rate,
            burst: (rate / 10.0).max(1.0),
            tokens: 0.0,
            last: None,
            high: high_water,
            low: high_water / 2,
            held: false,
            held_seconds: 0.0,
        }
    }

    /// At `now` (seconds), with `depth` messages outstanding (`None`: unknown), how many lines
    /// to write now.
    pub fn allow(&mut self, now: f64, depth: Option<u64>) -> usize {
        let dt = self.last.map_or(0.0, |last| (now - last).max(0.0));
        self.last = Some(now);
        if let Some(depth) = depth {
            if self.held && depth <= self.low {
                self.held = false;
            } else if !self.held && depth > self.high {
                self.held = true;
            }
        }
        if self.held {
            // No credit piles up while held: the pace resumes, it does not catch up.
            self.held_seconds += dt;
            self.tokens = 0.0;
            return 0;
        }
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let n = self.tokens.floor();
        self.tokens -= n;
        n as usize
    }

    /// Whether it is holding back.
    pub fn held(&self) -> bool {
        self.held
    }

    /// Seconds spent holding back.
    pub fn held_seconds(&self) -> f64 {
        self.held_seconds
    }
}

/// What has become of the messages written, as far as the demo can see.
#[derive(Debug, Default)]
pub struct Done {
    /// Messages the function started, found started, or dead-lettered (its EMF counts).
    pub by_function: AtomicU64,
    /// Of those, the ones it dead-lettered.
    pub dead_lettered: AtomicU64,
    /// The DLQ's depth as last read: the function's dead letters, and the messages SQS's
    /// redrive moved there after maxReceiveCount, which the function never reports.
    pub dlq_depth: AtomicU64,
}

impl Done {
    /// Messages done with: the function's, plus those redriven to the DLQ.
    pub fn count(&self) -> u64 {
        let redriven = self
            .dlq_depth
            .load(Ordering::Relaxed)
            .saturating_sub(self.dead_lettered.load(Ordering::Relaxed));
        self.by_function.load(Ordering::Relaxed) + redriven
    }
}

/// What the feeding task has done so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedState {
    /// Lines written.
    pub written: u64,
    /// Whether it holds back now.
    pub held: bool,
    /// Seconds spent holding back.
    pub held_seconds: f64,
    /// Set when the pipe broke (the producer ended early).
    pub error: Option<String>,
    /// Every line was written and stdin closed.
    pub done: bool,
}

/// Writes `lines` to the producer's stdin, paced by `feeder`; `done` counts the messages done
/// with. Closes stdin at the end. Abort the task to stop it early.
pub fn spawn(
    mut stdin: ChildStdin,
    lines: Vec<String>,
    mut feeder: Feeder,
    done: Arc<Done>,
    state: Arc<Mutex<FeedState>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut next = 0;
        let mut buffer = String::new();
        while next < lines.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let outstanding = (next as u64).saturating_sub(done.count());
            let n = feeder.allow(t0.elapsed().as_secs_f64(), Some(outstanding));
            let end = (next + n).min(lines.len());
            buffer.clear();
            for line in &lines[next..end] {
                buffer.push_str(line);
                buffer.push('\n');
            }
            if !buffer.is_empty() {
                if let Err(e) = stdin.write_all(buffer.as_bytes()).await {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.error = Some(format!("writing to the producer: {e}"));
                    return;
                }
                let _ = stdin.flush().await;
            }
            next = end;
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.written = next as u64;
            s.held = feeder.held();
            s.held_seconds = feeder.held_seconds();
        }
        let _ = stdin.shutdown().await;
        drop(stdin);
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.done = true;
        s.held = false;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks every 20 ms from `from` to `to` seconds; returns the lines allowed.
    fn run(f: &mut Feeder, from: f64, to: f64, depth: Option<u64>) -> usize {
        let mut total = 0;
        let mut t = from;
        while t < to - 1e-9 {
            t += 0.02;
            total += f.allow(t, depth);
        }
        total
    }

    #[test]
    fn paces_at_the_rate() {
        let mut f = Feeder::new(100.0, 100);
        f.allow(0.0, None);
        let n = run(&mut f, 0.0, 10.0, Some(0));
        assert!((995..=1000).contains(&n), "{n}");
        assert_eq!(f.held_seconds(), 0.0);
        // A slow tick does not release more than a tenth of a second's worth.
        assert_eq!(f.allow(15.0, Some(0)), 10);
    }

    #[test]
    fn holds_back_above_the_high_water_mark_until_half_of_it() {
        let mut f = Feeder::new(100.0, 100);
        f.allow(0.0, Some(0));
        assert!(run(&mut f, 0.0, 1.0, Some(100)) > 90, "at the mark: still feeding");
        assert_eq!(run(&mut f, 1.0, 3.0, Some(101)), 0, "above it: held");
        assert!(f.held());
        assert_eq!(run(&mut f, 3.0, 4.0, Some(60)), 0, "still above half: held");
        assert!((f.held_seconds() - 3.0).abs() < 0.05, "{}", f.held_seconds());
        let resumed = run(&mut f, 4.0, 5.0, Some(50));
        assert!(
            (95..=100).contains(&resumed),
            "resumes at the pace, no catch-up: {resumed}"
        );
        assert!(!f.held());
        assert!(run(&mut f, 5.0, 6.0, None) > 90, "an unknown depth changes nothing");
    }

    #[test]
    fn redriven_messages_are_done_too() {
        let done = Done::default();
        done.by_function.store(90, Ordering::Relaxed);
        done.dead_lettered.store(2, Ordering::Relaxed);
        assert_eq!(done.count(), 90, "the DLQ not read yet");
        done.dlq_depth.store(2, Ordering::Relaxed);
        assert_eq!(done.count(), 90, "the function's own dead letters count once");
        done.dlq_depth.store(12, Ordering::Relaxed);
        assert_eq!(done.count(), 100, "10 redriven by SQS after maxReceiveCount");
    }

    #[test]
    fn odd_rates_are_safe() {
        let mut f = Feeder::new(0.0, 10);
        f.allow(0.0, None);
        assert!(
            (1..=2).contains(&run(&mut f, 0.0, 2.0, None)),
            "a bad rate means one per second"
        );
        let mut slow = Feeder::new(0.5, 10);
        slow.allow(0.0, None);
        assert!((1..=2).contains(&run(&mut slow, 0.0, 4.0, None)));
    }
}
