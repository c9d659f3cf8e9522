//! The send pipeline: batches entries, keeps up to `in_flight` calls going, paces the first
//! attempts to `rate` messages per second, retries what failed, and reports.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use crate::batch::{BatchBuilder, Entry, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use crate::input::InputError;
use crate::retry::{settle, settle_call_error, Backoff, BatchResult, CallError, Failure, Settled};

/// Sends one batch (≤ 10 entries, ≤ 1 MiB) with `SendMessageBatch`.
pub trait BatchSender: Sync {
    /// One call. `Ok` carries the per-entry answer; `Err` is a whole-call failure.
    fn send_batch(&self, batch: &[Entry]) -> impl Future<Output = Result<BatchResult, CallError>> + Send;
}

/// How the pipeline sends.
#[derive(Clone, Debug)]
pub struct SendConfig {
    /// Most `SendMessageBatch` calls in flight at once (at least 1).
    pub in_flight: usize,
    /// Most sends of one entry, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Pace of first attempts, in messages per second (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Most entries per call (1 to 10).
    pub max_batch_entries: usize,
    /// Most bytes per call and per message.
    pub max_batch_bytes: usize,
    /// How long a partial batch waits for more input before it is sent anyway.
    pub linger: Duration,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            in_flight: 8,
            max_attempts: 5,
            backoff: Backoff::default(),
            rate: None,
            max_batch_entries: MAX_BATCH_ENTRIES,
            max_batch_bytes: MAX_BATCH_BYTES,
            linger: Duration::from_millis(50),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Messages read from the input.
    pub read: u64,
    /// Messages SQS accepted.
    pub sent: u64,
    /// Messages given up on, with the reasons.
    pub failed: Vec<Failure>,
    /// `SendMessageBatch` calls made (retries included).
    pub calls: u64,
    /// Entry re-sends (one entry sent a second time counts 1).
    pub retried: u64,
    /// A read error that stopped the input early.
    pub input_error: Option<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// Accepted messages per second of wall time.
    pub fn messages_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.sent as f64 / secs
        } else {
            0.0
        }
    }

    /// True when every message read was sent and the input was read to its end.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty() && self.input_error.is_none() && self.sent == self.read
    }
}

/// Spaces first attempts so that on average at most `rate` messages per second go out.
#[derive(Debug)]
pub struct Pacer {
    per_message: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate` messages per second (`None`, or a rate that is not a positive
    /// number: no pacing).
    pub fn new(rate: Option<f64>) -> Pacer {
        let per_message = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        Pacer {
            per_message,
            next: None,
        }
    }

    /// When the next batch may go (`None`: now).
    pub fn ready_at(&self) -> Option<Instant> {
        self.next
    }

    /// Records that `n` messages go out at `now`.
    pub fn consume(&mut self, n: usize, now: Instant) {
        if let Some(per) = self.per_message {
            let start = self.next.map_or(now, |next| next.max(now));
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            self.next = Some(start + per.saturating_mul(n));
        }
    }
}

/// The outcome of delivering one batch, retries included.
#[derive(Debug, Default)]
struct Delivery {
    sent: u64,
    given_up: Vec<Failure>,
    calls: u64,
    retried: u64,
}

async fn deliver<S: BatchSender>(
    sender: &S,
    batch: Vec<Entry>,
    config: &SendConfig,
    progress: &ProgressBar,
) -> Delivery {
    let max_attempts = config.max_attempts.max(1);
    let mut delivery = Delivery::default();
    let mut pending = batch;
    for attempt in 1..=max_attempts {
        if attempt > 1 {
            delivery.retried += pending.len() as u64;
            let delay = config.backoff.delay(attempt - 1, &mut rand::rng());
            tokio::time::sleep(delay).await;
        }
        delivery.calls += 1;
        let settled: Settled = match sender.send_batch(&pending).await {
            Ok(result) => settle(pending, &result, attempt, max_attempts),
            Err(error) => {
                tracing::debug!(code = %error.code, message = %error.message, attempt, "SendMessageBatch failed");
                settle_call_error(pending, &error, attempt, max_attempts)
            }
        };
        let sent = settled.sent.len() as u64;
        delivery.sent += sent;
        progress.inc(sent);
        delivery.given_up.extend(settled.given_up);
        pending = settled.retry;
        if pending.is_empty() {
            break;
        }
    }
    delivery
}

/// Sends every entry that arrives on `input` and returns what happened. Never drops an entry
/// silently: each one is either counted as sent or listed in [`Report::failed`].
pub async fn run<S: BatchSender>(
    sender: &S,
    mut input: mpsc::Receiver<Result<Entry, InputError>>,
    config: &SendConfig,
    progress: &ProgressBar,
) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let mut builder = BatchBuilder::new(config.max_batch_entries, config.max_batch_bytes);
    let mut first_at: Option<Instant> = None;
    let mut pacer = Pacer::new(config.rate);
    let mut inflight = FuturesUnordered::new();
    let in_flight = config.in_flight.max(1);
    let mut input_done = false;

    loop {
        if input_done && builder.is_empty() && inflight.is_empty() {
            break;
        }
        let now = Instant::now();
        let linger_deadline = first_at.map(|t| t + config.linger);
        let ready =
            builder.is_full() || (!builder.is_empty() && (input_done || linger_deadline.is_some_and(|d| now >= d)));
        let slot = inflight.len() < in_flight;
        let pace_at = pacer.ready_at().filter(|t| *t > now);
        if ready && slot && pace_at.is_none() {
            let batch = builder.take();
            first_at = if builder.is_empty() { None } else { Some(now) };
            pacer.consume(batch.len(), now);
            inflight.push(deliver(sender, batch, config, progress));
            continue;
        }
        let far = now + Duration::from_secs(3600);
        tokio::select! {
            Some(delivery) = inflight.next(), if !inflight.is_empty() => {
                report.sent += delivery.sent;
                report.calls += delivery.calls;
                report.retried += delivery.retried;
                report.failed.extend(delivery.given_up);
            }
            _ = tokio::time::sleep_until(pace_at.unwrap_or(far)), if ready && slot && pace_at.is_some() => {}
            _ = tokio::time::sleep_until(linger_deadline.unwrap_or(far)), if !ready && linger_deadline.is_some() => {}
            item = input.recv(), if !input_done && !builder.is_full() => match item {
                None => input_done = true,
                Some(Err(error)) => {
                    report.input_error = Some(error.to_string());
                    input_done = true;
                }
                Some(Ok(entry)) => {
                    report.read += 1;
                    match builder.check(&entry) {
                        Err(too_large) => report.failed.push(Failure {
                            seq: entry.seq,
                            id: entry.id,
                            code: "MessageTooLong".into(),
                            reason: too_large.to_string(),
                            attempts: 0,
                        }),
                        Ok(()) => {
                            if builder.is_empty() {
                                first_at = Some(Instant::now());
                            }
                            builder.push(entry);
                        }
                    }
                }
            },
            else => break,
        }
    }
    // Unreachable in practice (the loop only ends with nothing pending); never drop silently.
    while !builder.is_empty() {
        for entry in builder.take() {
            report.failed.push(Failure {
                seq: entry.seq,
                id: entry.id,
                code: "NotSent".into(),
                reason: "the pipeline stopped before sending this message".into(),
                attempts: 0,
            });
        }
    }
    report.failed.sort_by_key(|f| f.seq);
    report.elapsed = started.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::EntryFailure;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A fake SQS: refuses each listed entry id a given number of times, records calls.
    #[derive(Default)]
    struct FakeSender {
        flaky: Mutex<HashMap<String, u32>>,
        fatal: Vec<String>,
        fail_calls: Mutex<u32>,
        calls: Mutex<Vec<Vec<u64>>>,
        accepted: Mutex<Vec<u64>>,
    }

    impl BatchSender for FakeSender {
        async fn send_batch(&self, batch: &[Entry]) -> Result<BatchResult, CallError> {
            assert!(batch.len() <= 10);
            self.calls.lock().unwrap().push(batch.iter().map(|e| e.seq).collect());
            {
                let mut fail_calls = self.fail_calls.lock().unwrap();
                if *fail_calls > 0 {
                    *fail_calls -= 1;
                    return Err(CallError {
                        code: "dispatch".into(),
                        message: "connection reset".into(),
                        retryable: true,
                    });
                }
            }
            let mut result = BatchResult::default();
            let mut flaky = self.flaky.lock().unwrap();
            for e in batch {
                let id = e.entry_id();
                if self.fatal.contains(&e.id) {
                    result.failed.push(EntryFailure {
                        entry_id: id,
                        code: "InvalidParameterValue".into(),
                        message: "bad chars".into(),
                        sender_fault: true,
                    });
                } else if let Some(left) = flaky.get_mut(&e.id).filter(|left| **left > 0) {
                    *left -= 1;
                    result.failed.push(EntryFailure {
                        entry_id: id,
                        code: "InternalError".into(),
                        message: "try again".into(),
                        sender_fault: false,
                    });
                } else {
                    self.accepted.lock().unwrap().push(e.seq);
                    result.successful.push(id);
                }
            }
            Ok(result)
        }
    }

    fn fast_config() -> SendConfig {
        SendConfig {
            backoff: Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            linger: Duration::from_millis(5),
            ..SendConfig::default()
        }
    }

    fn feed(n: u64) -> mpsc::Receiver<Result<Entry, InputError>> {
        let (tx, rx) = mpsc::channel(1000);
        for i in 0..n {
            tx.try_send(Ok(Entry::new(i, format!("m{i}"), "{}"))).unwrap();
        }
        rx
    }

    #[tokio::test]
    async fn sends_everything_in_batches_of_ten() {
        let sender = FakeSender::default();
        let report = run(&sender, feed(95), &fast_config(), &ProgressBar::hidden()).await;
        assert_eq!((report.read, report.sent, report.calls), (95, 95, 10));
        assert!(report.is_success());
        let mut accepted = sender.accepted.lock().unwrap().clone();
        accepted.sort();
        assert_eq!(accepted, (0..95).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn partial_failures_are_retried_until_sent() {
        let sender = FakeSender::default();
        sender.flaky.lock().unwrap().insert("m3".into(), 2);
        sender.flaky.lock().unwrap().insert("m17".into(), 1);
        *sender.fail_calls.lock().unwrap() = 1;
        let report = run(&sender, feed(30), &fast_config(), &ProgressBar::hidden()).await;
        assert_eq!(report.sent, 30, "{:?}", report.failed);
        assert!(report.is_success());
        // 3 retries for m3 and m17, plus the 10 entries of the call that failed whole.
        assert_eq!(report.retried, 13);
        let calls = sender.calls.lock().unwrap();
        assert!(calls.iter().any(|c| c == &vec![3]), "m3 resent alone: {calls:?}");
    }

    #[tokio::test]
    async fn entries_still_failing_are_reported_with_reason() {
        let sender = FakeSender {
            fatal: vec!["m5".into()],
            ..FakeSender::default()
        };
        sender.flaky.lock().unwrap().insert("m8".into(), 100);
        let config = SendConfig {
            max_attempts: 3,
            ..fast_config()
        };
        let report = run(&sender, feed(12), &config, &ProgressBar::hidden()).await;
        assert_eq!(report.sent, 10);
        assert!(!report.is_success());
        let failed: Vec<(&str, &str, u32)> = report
            .failed
            .iter()
            .map(|f| (f.id.as_str(), f.code.as_str(), f.attempts))
            .collect();
        assert_eq!(
            failed,
            vec![("m5", "InvalidParameterValue", 1), ("m8", "InternalError", 3)]
        );
    }

    #[tokio::test]
    async fn oversized_messages_are_reported_not_sent() {
        let sender = FakeSender::default();
        let (tx, rx) = mpsc::channel(10);
        tx.try_send(Ok(Entry::new(0, "small", "{}"))).unwrap();
        tx.try_send(Ok(Entry::new(1, "huge", "x".repeat(MAX_BATCH_BYTES + 1))))
            .unwrap();
        drop(tx);
        let report = run(&sender, rx, &fast_config(), &ProgressBar::hidden()).await;
        assert_eq!((report.read, report.sent), (2, 1));
        assert_eq!(report.failed[0].code, "MessageTooLong");
    }

    #[tokio::test]
    async fn input_errors_stop_the_run_and_are_reported() {
        let sender = FakeSender::default();
        let (tx, rx) = mpsc::channel(10);
        tx.try_send(Ok(Entry::new(0, "a", "{}"))).unwrap();
        tx.try_send(Err(InputError {
            line: 2,
            source: std::io::Error::other("boom"),
        }))
        .unwrap();
        let report = run(&sender, rx, &fast_config(), &ProgressBar::hidden()).await;
        assert_eq!(report.sent, 1);
        assert!(report.input_error.as_deref().unwrap_or_default().contains("line 2"));
        assert!(!report.is_success());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_paces_first_attempts() {
        let sender = FakeSender::default();
        let config = SendConfig {
            rate: Some(50.0),
            ..fast_config()
        };
        let started = Instant::now();
        let report = run(&sender, feed(100), &config, &ProgressBar::hidden()).await;
        assert_eq!(report.sent, 100);
        // 10 batches of 10 at 50 msg/s: the last one goes out after 9 × 0.2 s.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1790), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_slow_trickle_is_sent_after_the_linger() {
        let sender = FakeSender::default();
        let (tx, rx) = mpsc::channel(10);
        let feeder = tokio::spawn(async move {
            for i in 0..3 {
                tx.send(Ok(Entry::new(i, format!("m{i}"), "{}"))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Keep the input open a while: the batch must not wait for its end.
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let config = SendConfig {
            linger: Duration::from_millis(10),
            ..fast_config()
        };
        let report = run(&sender, rx, &config, &ProgressBar::hidden()).await;
        feeder.await.unwrap();
        assert_eq!(report.sent, 3);
        assert!(sender.calls.lock().unwrap().len() >= 2);
    }

    #[test]
    fn pacer_spaces_batches() {
        let mut pacer = Pacer::new(Some(10.0));
        let t0 = Instant::now();
        assert!(pacer.ready_at().is_none());
        pacer.consume(10, t0);
        assert_eq!(pacer.ready_at(), Some(t0 + Duration::from_secs(1)));
        // Idle for a long time: no burst of credit afterwards.
        let later = t0 + Duration::from_secs(60);
        pacer.consume(5, later);
        assert_eq!(pacer.ready_at(), Some(later + Duration::from_millis(500)));
        let mut off = Pacer::new(None);
        off.consume(10, t0);
        assert!(off.ready_at().is_none());
        assert!(Pacer::new(Some(0.0)).per_message.is_none());
    }
}
