//! Gathering a batch: `BatchSize` and `MaximumBatchingWindowInSeconds` as AWS applies them.
//!
//! A poller receives up to 10 messages per call. It invokes when the batch holds `batch_size`
//! messages, when the invoke payload limit is reached, or when the batching window (counted
//! from the first message of the batch) has elapsed; with a window of 0, as soon as a receive
//! returned messages. Until then it receives again, long-polling for at most the rest of the
//! window (SQS takes whole seconds: its adapter rounds the wait up, see [`super::sqs`]).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::event::{estimated_size, ReceivedMessage};

/// Most messages one `ReceiveMessage` call returns.
pub const MAX_RECEIVE: usize = 10;
/// Longest long poll SQS allows, in seconds.
pub const MAX_WAIT_SECONDS: i32 = 20;
/// Longest long poll SQS allows.
const MAX_WAIT: Duration = Duration::from_secs(MAX_WAIT_SECONDS as u64);
/// Most bytes of a synchronous invoke request payload (6 MB).
pub const MAX_PAYLOAD_BYTES: usize = 6_291_456;

/// How batches are gathered.
#[derive(Clone, Debug)]
pub struct GatherConfig {
    /// Most messages per batch (`BatchSize`, 1 to 10,000).
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds`: longest wait for a fuller batch after its first message.
    pub window: Duration,
    /// Long-poll wait of a receive while no batch is open, in seconds (0 to 20).
    pub wait_seconds: i32,
    /// Most (estimated) event bytes per invocation.
    pub max_payload_bytes: usize,
}

impl GatherConfig {
    /// A mapping's batching: `batch_size` messages, a `window`, receives long-polling for
    /// `wait_seconds` while no batch is open, and Lambda's 6 MB payload limit.
    pub fn new(batch_size: usize, window: Duration, wait_seconds: i32) -> Self {
        GatherConfig {
            batch_size,
            window,
            wait_seconds,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
        }
    }
}

/// What the poller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Invoke with [`Gatherer::take_batch`].
    Invoke,
    /// Receive again.
    Receive {
        /// `MaxNumberOfMessages` (1 to 10).
        max_messages: i32,
        /// The long poll's wait (0 to 20 s).
        wait: Duration,
    },
}

/// The batch being gathered by one poller.
#[derive(Debug)]
pub struct Gatherer {
    config: GatherConfig,
    buffer: VecDeque<ReceivedMessage>,
    bytes: usize,
    opened_at: Option<Instant>,
}

impl Gatherer {
    /// An empty gatherer. `batch_size` is raised to at least 1 and `wait_seconds` clamped to 0..=20.
    pub fn new(mut config: GatherConfig) -> Gatherer {
        config.batch_size = config.batch_size.max(1);
        config.wait_seconds = config.wait_seconds.clamp(0, MAX_WAIT_SECONDS);
        Gatherer {
            config,
            buffer: VecDeque::new(),
            bytes: 0,
            opened_at: None,
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// True when no message is held.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The next step at time `now`.
    pub fn next(&self, now: Instant) -> Next {
        let held = self.buffer.len();
        if held >= self.config.batch_size || self.bytes >= self.config.max_payload_bytes {
            return Next::Invoke;
        }
        let room = (self.config.batch_size - held).min(MAX_RECEIVE) as i32;
        let Some(opened_at) = self.opened_at.filter(|_| held > 0) else {
            return Next::Receive {
                max_messages: room,
                wait: Duration::from_secs(u64::try_from(self.config.wait_seconds).unwrap_or(0)),
            };
        };
        let elapsed = now.saturating_duration_since(opened_at);
        if self.config.window.is_zero() || elapsed >= self.config.window {
            return Next::Invoke;
        }
        Next::Receive {
            max_messages: room,
            wait: (self.config.window - elapsed).min(MAX_WAIT),
        }
    }

    /// Adds received messages at time `now` (the window opens with the first message).
    pub fn add(&mut self, messages: Vec<ReceivedMessage>, now: Instant) {
        if messages.is_empty() {
            return;
        }
        if self.buffer.is_empty() {
            self.opened_at = Some(now);
        }
        for m in messages {
            self.bytes += estimated_size(&m);
            self.buffer.push_back(m);
        }
    }

    /// Takes the next batch: up to `batch_size` messages within the payload limit (at least
    /// one). What is left opens a new window at `now`.
    pub fn take_batch(&mut self, now: Instant) -> Vec<ReceivedMessage> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(front) = self.buffer.front() {
            let size = estimated_size(front);
            if batch.len() >= self.config.batch_size
                || (!batch.is_empty() && bytes + size > self.config.max_payload_bytes)
            {
                break;
            }
            bytes += size;
            if let Some(m) = self.buffer.pop_front() {
                batch.push(m);
            }
        }
        self.bytes = self.bytes.saturating_sub(bytes);
        self.opened_at = if self.buffer.is_empty() { None } else { Some(now) };
        batch
    }

    /// Takes every held message (to release them on shutdown).
    pub fn drain_all(&mut self) -> Vec<ReceivedMessage> {
        self.bytes = 0;
        self.opened_at = None;
        self.buffer.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(batch_size: usize, window_ms: u64) -> GatherConfig {
        GatherConfig::new(batch_size, Duration::from_millis(window_ms), 20)
    }

    fn msgs(n: usize, body_len: usize) -> Vec<ReceivedMessage> {
        (0..n)
            .map(|i| {
                let mut m = ReceivedMessage::default();
                m.message_id = Some(format!("m{i}"));
                m.body = Some("x".repeat(body_len));
                m
            })
            .collect()
    }

    #[test]
    fn empty_gatherer_long_polls_for_up_to_ten() {
        let t0 = Instant::now();
        let g = Gatherer::new(config(10, 0));
        assert_eq!(
            g.next(t0),
            Next::Receive {
                max_messages: 10,
                wait: Duration::from_secs(20)
            }
        );
        let g = Gatherer::new(config(3, 0));
        assert_eq!(
            g.next(t0),
            Next::Receive {
                max_messages: 3,
                wait: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn window_zero_invokes_with_whatever_came() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(config(10, 0));
        g.add(msgs(4, 10), t0);
        assert_eq!(g.next(t0), Next::Invoke);
        assert_eq!(g.take_batch(t0).len(), 4);
        assert!(g.is_empty());
    }

    #[test]
    fn batch_size_above_ten_gathers_several_receives() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(config(25, 5_000));
        g.add(msgs(10, 10), t0);
        assert_eq!(
            g.next(t0),
            Next::Receive {
                max_messages: 10,
                wait: Duration::from_secs(5)
            }
        );
        g.add(msgs(10, 10), t0 + Duration::from_millis(100));
        // 4.9 s left (the SQS adapter rounds it up to 5).
        assert_eq!(
            g.next(t0 + Duration::from_millis(100)),
            Next::Receive {
                max_messages: 5,
                wait: Duration::from_millis(4_900)
            }
        );
        g.add(msgs(5, 10), t0 + Duration::from_millis(200));
        assert_eq!(g.next(t0 + Duration::from_millis(200)), Next::Invoke);
        assert_eq!(g.take_batch(t0).len(), 25);
    }

    #[test]
    fn window_elapsing_invokes_a_partial_batch() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(config(100, 2_000));
        g.add(msgs(3, 10), t0);
        assert_eq!(
            g.next(t0 + Duration::from_millis(1_500)),
            Next::Receive {
                max_messages: 10,
                wait: Duration::from_millis(500)
            }
        );
        assert_eq!(g.next(t0 + Duration::from_millis(2_000)), Next::Invoke);
        // An empty receive changes nothing; the window counts from the first message.
        g.add(Vec::new(), t0 + Duration::from_millis(2_100));
        assert_eq!(g.next(t0 + Duration::from_millis(2_100)), Next::Invoke);
    }

    #[test]
    fn long_windows_wait_at_most_twenty_seconds_per_receive() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(config(1000, 300_000));
        g.add(msgs(1, 10), t0);
        assert_eq!(
            g.next(t0),
            Next::Receive {
                max_messages: 10,
                wait: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn payload_limit_splits_batches() {
        let t0 = Instant::now();
        let mut cfg = config(100, 60_000);
        cfg.max_payload_bytes = 10_000;
        let mut g = Gatherer::new(cfg);
        // Each message estimates to a little over 2 × 2000 bytes: two fit, the third does not.
        g.add(msgs(3, 2_000), t0);
        assert_eq!(g.next(t0), Next::Invoke);
        let first = g.take_batch(t0 + Duration::from_secs(1));
        assert_eq!(first.len(), 2);
        assert_eq!(g.len(), 1);
        // The remainder opens a new window at take time.
        assert!(matches!(g.next(t0 + Duration::from_secs(1)), Next::Receive { .. }));
        assert_eq!(g.next(t0 + Duration::from_secs(61)), Next::Invoke);
    }

    #[test]
    fn an_oversized_single_message_still_goes() {
        let t0 = Instant::now();
        let mut cfg = config(10, 0);
        cfg.max_payload_bytes = 100;
        let mut g = Gatherer::new(cfg);
        g.add(msgs(2, 1_000), t0);
        assert_eq!(g.take_batch(t0).len(), 1);
        assert_eq!(g.take_batch(t0).len(), 1);
        assert!(g.is_empty());
    }

    #[test]
    fn drain_all_releases_everything() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(config(50, 10_000));
        g.add(msgs(7, 10), t0);
        assert_eq!(g.drain_all().len(), 7);
        assert_eq!(
            g.next(t0),
            Next::Receive {
                max_messages: 10,
                wait: Duration::from_secs(20)
            }
        );
    }
}
