//! The pollers: up to `max_concurrency` of them, each gathering a batch, invoking the function,
//! and deleting what the function acknowledged; and the monitor that stops them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::event::{event_json, message_id, receipt_handle, ReceivedMessage};
use super::gather::{GatherConfig, Gatherer, Next};
use super::response::{decide, InvokeOutcome, Verdict};

/// Most entries of one `DeleteMessageBatch` / `ChangeMessageVisibilityBatch` call.
const MAX_BATCH_ENTRIES: usize = 10;
/// Attempts at one `DeleteMessageBatch` call that fails as a whole.
const DELETE_ATTEMPTS: u32 = 3;
/// Pause after a failed receive, or after an empty short poll.
const RECEIVE_PAUSE: Duration = Duration::from_secs(1);
/// The `local-esm` tool's pause after an empty receive with `WaitTimeSeconds` 0.
pub const SHORT_POLL_PAUSE: Duration = Duration::from_millis(200);
/// Longest time releasing held messages may take on shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time, beyond the function timeout, that pollers get to finish after a stop.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Message counts of a queue (from `GetQueueAttributes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// `ApproximateNumberOfMessages`.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible` (in flight).
    pub not_visible: u64,
    /// `ApproximateNumberOfMessagesDelayed`.
    pub delayed: u64,
}

impl QueueCounts {
    /// All messages, visible or not.
    pub fn total(&self) -> u64 {
        self.visible + self.not_visible + self.delayed
    }
}

/// One entry of a batch call on received messages: (entry id, receipt handle).
pub type ReceiptEntry = (String, String);

/// The queue side.
pub trait Queue: Send + Sync + 'static {
    /// `ReceiveMessage` with all system and message attributes. `max_messages` is 1 to 10,
    /// `wait` (the long poll) 0 to 20 s.
    fn receive(
        &self,
        max_messages: i32,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<ReceivedMessage>, String>> + Send;
    /// `DeleteMessageBatch` of at most 10 entries; returns the entries that failed (id, reason).
    fn delete(&self, entries: &[ReceiptEntry]) -> impl Future<Output = Result<Vec<(String, String)>, String>> + Send;
    /// Makes at most 10 held messages visible again at once (visibility timeout 0).
    fn release(&self, entries: &[ReceiptEntry]) -> impl Future<Output = Result<(), String>> + Send;
    /// The queue's message counts.
    fn counts(&self) -> impl Future<Output = Result<QueueCounts, String>> + Send;
}

/// The function side.
pub trait Invoker: Send + Sync + 'static {
    /// Invokes the function synchronously with an event (JSON bytes), for poller `poller`
    /// (0 to `max_concurrency` − 1: an in-process invoker runs one function instance per
    /// poller). The caller bounds it with the function timeout.
    fn invoke(&self, poller: usize, payload: Vec<u8>) -> impl Future<Output = InvokeOutcome> + Send;
}

/// The mapping's settings.
#[derive(Clone, Debug)]
pub struct EsmConfig {
    /// `BatchSize`, `MaximumBatchingWindowInSeconds` and the long-poll wait.
    pub gather: GatherConfig,
    /// `ScalingConfig.MaximumConcurrency`: pollers, hence batches in flight (at least 1).
    pub max_concurrency: usize,
    /// Longest wait for an invocation's answer; after it the batch is left for a retry.
    pub function_timeout: Duration,
    /// The queue ARN (the records' `eventSourceARN`).
    pub queue_arn: String,
    /// The records' `awsRegion`.
    pub region: String,
    /// Stop once the queue has been empty (nothing visible, in flight or delayed, nothing
    /// held) for `empty_polls` checks in a row.
    pub until_empty: bool,
    /// Consecutive empty checks that end an `until_empty` run (at least 1).
    pub empty_polls: u32,
    /// Time between queue checks for `until_empty`.
    pub poll_interval: Duration,
    /// Pause after an empty receive with `WaitTimeSeconds` 0 ([`SHORT_POLL_PAUSE`] for SQS).
    pub empty_receive_pause: Duration,
    /// Hard bound on the run time (`None`: none).
    pub max_run: Option<Duration>,
    /// Time between progress log lines (`None`: none).
    pub progress_interval: Option<Duration>,
}

/// Why the run stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The queue stayed empty (`--until-empty`).
    #[default]
    UntilEmpty,
    /// The run time bound was reached (`--max-seconds`).
    MaxSeconds,
    /// Stopped by a signal (Ctrl-C).
    Signal,
    /// A poller failed unexpectedly.
    WorkerFailed,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Batches gathered and sent to the function.
    pub batches: u64,
    /// Invocations the endpoint answered (success, partial failure, or function error).
    pub invocations: u64,
    /// Messages delivered in those batches (a redelivered message counts again).
    pub records: u64,
    /// Messages deleted (acknowledged).
    pub deleted: u64,
    /// Messages the function listed in `batchItemFailures` (left for a retry).
    pub reported_failures: u64,
    /// Batches failed by a function error, or by no answer at all (whole batch retried).
    pub function_errors: u64,
    /// Batches failed by an invalid response (whole batch retried).
    pub invalid_responses: u64,
    /// Batches failed by the function timeout (whole batch retried).
    pub timeouts: u64,
    /// Acknowledged messages whose delete failed (they will be delivered again).
    pub delete_errors: u64,
    /// Failed `ReceiveMessage` calls.
    pub receive_errors: u64,
    /// Messages held but not invoked at shutdown, made visible again.
    pub released: u64,
    /// Wall time of the run, in seconds.
    pub elapsed_seconds: f64,
    /// Why the run stopped.
    pub stop_reason: StopReason,
}

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    invocations: AtomicU64,
    records: AtomicU64,
    deleted: AtomicU64,
    reported_failures: AtomicU64,
    function_errors: AtomicU64,
    invalid_responses: AtomicU64,
    timeouts: AtomicU64,
    delete_errors: AtomicU64,
    receive_errors: AtomicU64,
    released: AtomicU64,
    /// Messages received and not yet settled (gathering or in an invocation).
    held: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    fn summary(&self, elapsed: Duration, stop_reason: StopReason) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Summary {
            batches: get(&self.batches),
            invocations: get(&self.invocations),
            records: get(&self.records),
            deleted: get(&self.deleted),
            reported_failures: get(&self.reported_failures),
            function_errors: get(&self.function_errors),
            invalid_responses: get(&self.invalid_responses),
            timeouts: get(&self.timeouts),
            delete_errors: get(&self.delete_errors),
            receive_errors: get(&self.receive_errors),
            released: get(&self.released),
            elapsed_seconds: elapsed.as_secs_f64(),
            stop_reason,
        }
    }
}

struct Shared<Q, I> {
    queue: Arc<Q>,
    invoker: Arc<I>,
    config: EsmConfig,
    stats: Stats,
}

/// Runs the mapping until `--until-empty`, `max_run`, or `shutdown` completes (e.g. Ctrl-C),
/// then lets in-flight invocations finish (bounded by the function timeout), releases held
/// messages, and returns the summary.
pub async fn run<Q: Queue, I: Invoker>(
    queue: Arc<Q>,
    invoker: Arc<I>,
    config: EsmConfig,
    shutdown: impl Future<Output = ()>,
) -> Summary {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        queue,
        invoker,
        config,
        stats: Stats::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    for poller in 0..shared.config.max_concurrency.max(1) {
        workers.spawn(poller_loop(poller, Arc::clone(&shared), stop_rx.clone()));
    }

    let config = &shared.config;
    let deadline = config.max_run.map(|d| started + d);
    let far = started + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut empty_checks = tokio::time::interval(config.poll_interval.max(Duration::from_millis(10)));
    empty_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let progress_every = config.progress_interval.unwrap_or(Duration::from_secs(3600));
    let mut progress = tokio::time::interval_at(started + progress_every, progress_every);
    let mut empty_streak = 0u32;
    tokio::pin!(shutdown);

    let stop_reason = loop {
        tokio::select! {
            _ = &mut shutdown => break StopReason::Signal,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => break StopReason::MaxSeconds,
            joined = workers.join_next() => {
                match joined {
                    Some(Err(e)) => tracing::error!(error = %e, "a poller failed"),
                    _ => tracing::error!("a poller stopped unexpectedly"),
                }
                break StopReason::WorkerFailed;
            }
            _ = progress.tick(), if config.progress_interval.is_some() => {
                let s = shared.stats.summary(started.elapsed(), StopReason::default());
                tracing::info!(
                    batches = s.batches, deleted = s.deleted, reported_failures = s.reported_failures,
                    function_errors = s.function_errors, invalid_responses = s.invalid_responses,
                    timeouts = s.timeouts, "progress"
                );
            }
            _ = empty_checks.tick(), if config.until_empty => {
                let held = shared.stats.held.load(Ordering::Relaxed);
                match shared.queue.counts().await {
                    Ok(counts) if counts.total() == 0 && held == 0 => {
                        empty_streak += 1;
                        if empty_streak >= config.empty_polls.max(1) {
                            break StopReason::UntilEmpty;
                        }
                    }
                    Ok(counts) => {
                        tracing::debug!(?counts, held, "queue not empty");
                        empty_streak = 0;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "GetQueueAttributes failed");
                        empty_streak = 0;
                    }
                }
            }
        }
    };

    tracing::info!(reason = ?stop_reason, "stopping");
    let _ = stop_tx.send(true);
    let grace = config.function_timeout + STOP_GRACE;
    let finished = tokio::time::timeout(grace, async {
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "a poller failed");
            }
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "pollers did not finish in time; aborting them"
        );
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    }
    shared.stats.summary(started.elapsed(), stop_reason)
}

/// Waits until the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps, unless stopped first; true when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        _ = stopped(stop) => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

async fn poller_loop<Q: Queue, I: Invoker>(poller: usize, shared: Arc<Shared<Q, I>>, mut stop: watch::Receiver<bool>) {
    let stats = &shared.stats;
    let mut gatherer = Gatherer::new(shared.config.gather.clone());
    loop {
        if *stop.borrow() {
            break;
        }
        match gatherer.next(Instant::now()) {
            Next::Receive { max_messages, wait } => {
                let received = tokio::select! {
                    _ = stopped(&mut stop) => break,
                    received = shared.queue.receive(max_messages, wait) => received,
                };
                match received {
                    Ok(messages) => {
                        if messages.is_empty()
                            && wait.is_zero()
                            && pause(&mut stop, shared.config.empty_receive_pause).await
                        {
                            break;
                        }
                        add(&stats.held, messages.len() as u64);
                        gatherer.add(messages, Instant::now());
                    }
                    Err(e) => {
                        add(&stats.receive_errors, 1);
                        tracing::warn!(poller, error = %e, "ReceiveMessage failed");
                        if pause(&mut stop, RECEIVE_PAUSE).await {
                            break;
                        }
                    }
                }
            }
            Next::Invoke => {
                let batch = gatherer.take_batch(Instant::now());
                process_batch(poller, &shared, &batch).await;
                stats.held.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }
    let held = gatherer.drain_all();
    if !held.is_empty() {
        let n = held.len() as u64;
        let entries: Vec<ReceiptEntry> = held
            .iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), receipt_handle(m).to_string()))
            .collect();
        let release = async {
            for chunk in entries.chunks(MAX_BATCH_ENTRIES) {
                if let Err(e) = shared.queue.release(chunk).await {
                    tracing::warn!(poller, error = %e, "could not release held messages; they reappear after the visibility timeout");
                }
            }
        };
        if tokio::time::timeout(RELEASE_TIMEOUT, release).await.is_err() {
            tracing::warn!(poller, "releasing held messages timed out");
        }
        add(&stats.released, n);
        stats.held.fetch_sub(n, Ordering::Relaxed);
    }
}

async fn process_batch<Q: Queue, I: Invoker>(poller: usize, shared: &Shared<Q, I>, batch: &[ReceivedMessage]) {
    let stats = &shared.stats;
    let config = &shared.config;
    add(&stats.batches, 1);
    add(&stats.records, batch.len() as u64);
    let ids: Vec<&str> = batch.iter().map(message_id).collect();
    let outcome = match event_json(batch, &config.queue_arn, &config.region) {
        Err(e) => InvokeOutcome::Transport(format!("cannot serialize the event: {e}")),
        Ok(payload) => {
            match tokio::time::timeout(config.function_timeout, shared.invoker.invoke(poller, payload)).await {
                Ok(outcome) => outcome,
                Err(_) => InvokeOutcome::TimedOut(config.function_timeout),
            }
        }
    };
    if matches!(outcome, InvokeOutcome::Response { .. }) {
        add(&stats.invocations, 1);
    }
    let decision = decide(&ids, &outcome);
    match &decision.verdict {
        Verdict::Success => tracing::debug!(poller, records = batch.len(), "batch acknowledged"),
        Verdict::PartialFailure => {
            add(&stats.reported_failures, decision.retry.len() as u64);
            tracing::info!(
                poller,
                records = batch.len(),
                failed = decision.retry.len(),
                "batch partly failed"
            );
        }
        Verdict::FunctionError(reason) => {
            add(&stats.function_errors, 1);
            tracing::warn!(poller, records = batch.len(), %reason, "function error: the whole batch is retried");
        }
        Verdict::InvalidResponse(reason) => {
            add(&stats.invalid_responses, 1);
            tracing::warn!(poller, records = batch.len(), %reason, "invalid response: the whole batch is retried");
        }
        Verdict::Timeout(after) => {
            add(&stats.timeouts, 1);
            tracing::warn!(
                poller,
                records = batch.len(),
                timeout_seconds = after.as_secs_f64(),
                "invocation timed out: the whole batch is retried"
            );
        }
    }
    let entries: Vec<ReceiptEntry> = decision
        .delete
        .iter()
        .map(|&i| (i.to_string(), receipt_handle(&batch[i]).to_string()))
        .collect();
    for chunk in entries.chunks(MAX_BATCH_ENTRIES) {
        let failed = delete_with_retry(&*shared.queue, chunk).await;
        add(&stats.deleted, (chunk.len() - failed) as u64);
        add(&stats.delete_errors, failed as u64);
    }
}

/// Deletes one chunk, retrying a call that fails as a whole; returns how many were not deleted.
async fn delete_with_retry<Q: Queue>(queue: &Q, chunk: &[ReceiptEntry]) -> usize {
    for attempt in 1..=DELETE_ATTEMPTS {
        match queue.delete(chunk).await {
            Ok(failed) => {
                for (id, reason) in &failed {
                    tracing::warn!(entry = %id, %reason, "DeleteMessageBatch entry failed");
                }
                return failed.len().min(chunk.len());
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "DeleteMessageBatch failed");
                if attempt < DELETE_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
    }
    chunk.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimQueue;
    use std::sync::Mutex;

    /// The in-memory SQS queue, holding `bodies`; received messages are hidden for `visibility`.
    fn queue(bodies: &[&str], visibility: Duration) -> (Arc<SimQueue>, Vec<String>) {
        let queue = SimQueue::new("q", 100, visibility);
        let ids = bodies.iter().map(|body| queue.send(*body)).collect();
        (queue, ids)
    }

    /// Fails records whose body contains "bad" until their receive count reaches `heal_at`.
    struct FakeFunction {
        heal_at: u32,
        mode: &'static str,
        events: Mutex<Vec<serde_json::Value>>,
    }

    impl Invoker for FakeFunction {
        async fn invoke(&self, _poller: usize, payload: Vec<u8>) -> InvokeOutcome {
            let event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            self.events.lock().unwrap().push(event.clone());
            match self.mode {
                "error" => {
                    return InvokeOutcome::Response {
                        status: 500,
                        function_error: None,
                        body: br#"{"errorType":"E","errorMessage":"boom"}"#.to_vec(),
                    }
                }
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                _ => {}
            }
            let failures: Vec<serde_json::Value> = event["Records"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| {
                    let count: u32 = r["attributes"]["ApproximateReceiveCount"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    r["body"].as_str().unwrap().contains("bad") && count < self.heal_at
                })
                .map(|r| serde_json::json!({ "itemIdentifier": r["messageId"] }))
                .collect();
            let body = serde_json::json!({ "batchItemFailures": failures })
                .to_string()
                .into_bytes();
            InvokeOutcome::Response {
                status: 200,
                function_error: None,
                body,
            }
        }
    }

    fn config(batch_size: usize, window_ms: u64) -> EsmConfig {
        EsmConfig {
            gather: GatherConfig::new(batch_size, Duration::from_millis(window_ms), 1),
            max_concurrency: 2,
            function_timeout: Duration::from_secs(2),
            queue_arn: "arn:aws:sqs:us-east-1:123456789012:q".into(),
            region: "us-east-1".into(),
            until_empty: true,
            empty_polls: 2,
            poll_interval: Duration::from_millis(50),
            empty_receive_pause: SHORT_POLL_PAUSE,
            max_run: Some(Duration::from_secs(20)),
            progress_interval: None,
        }
    }

    fn function(heal_at: u32, mode: &'static str) -> Arc<FakeFunction> {
        Arc::new(FakeFunction {
            heal_at,
            mode,
            events: Mutex::new(Vec::new()),
        })
    }

    #[tokio::test]
    async fn acknowledged_are_deleted_and_failures_retried_until_they_pass() {
        let bodies: Vec<String> = (0..23)
            .map(|i| {
                if i % 5 == 0 {
                    format!("bad {i}")
                } else {
                    format!("ok {i}")
                }
            })
            .collect();
        let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let (queue, ids) = queue(&bodies, Duration::from_millis(200));
        let f = function(3, "ok");
        let summary = run(
            Arc::clone(&queue),
            Arc::clone(&f),
            config(10, 0),
            std::future::pending(),
        )
        .await;
        assert_eq!(summary.stop_reason, StopReason::UntilEmpty);
        assert_eq!(summary.deleted, 23, "{summary:?}");
        // 5 bad messages, each reported on receives 1 and 2.
        assert_eq!(summary.reported_failures, 10);
        assert_eq!(
            summary.function_errors + summary.invalid_responses + summary.timeouts,
            0
        );
        assert_eq!(queue.depth().deleted, 23);
        for (i, id) in ids.iter().enumerate() {
            let count = queue.receive_count(id);
            assert_eq!(count, if i % 5 == 0 { 3 } else { 1 }, "{id}");
        }
        for event in f.events.lock().unwrap().iter() {
            assert!(event["Records"].as_array().unwrap().len() <= 10);
        }
    }

    #[tokio::test]
    async fn batch_size_above_ten_gathers_within_the_window() {
        let bodies: Vec<String> = (0..30).map(|i| format!("ok {i}")).collect();
        let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let (queue, _) = queue(&bodies, Duration::from_secs(5));
        let f = function(1, "ok");
        let mut cfg = config(25, 300);
        cfg.max_concurrency = 1;
        let summary = run(Arc::clone(&queue), Arc::clone(&f), cfg, std::future::pending()).await;
        assert_eq!(summary.deleted, 30);
        let sizes: Vec<usize> = f
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["Records"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![25, 5]);
    }

    #[tokio::test]
    async fn function_errors_delete_nothing() {
        let (queue, _) = queue(&["a", "b", "c"], Duration::from_millis(100));
        let f = function(1, "error");
        let mut cfg = config(10, 0);
        cfg.until_empty = false;
        cfg.max_run = Some(Duration::from_millis(700));
        let summary = run(Arc::clone(&queue), Arc::clone(&f), cfg, std::future::pending()).await;
        assert_eq!(summary.stop_reason, StopReason::MaxSeconds);
        assert_eq!(summary.deleted, 0);
        assert!(summary.function_errors >= 2, "{summary:?}");
        assert_eq!(summary.invocations, summary.batches);
        assert_eq!(queue.depth().deleted, 0);
    }

    #[tokio::test]
    async fn timeouts_delete_nothing_and_the_stop_is_bounded() {
        let (queue, _) = queue(&["a", "b"], Duration::from_secs(30));
        let f = function(1, "hang");
        let mut cfg = config(10, 0);
        cfg.until_empty = false;
        cfg.function_timeout = Duration::from_millis(300);
        cfg.max_run = Some(Duration::from_millis(500));
        let started = Instant::now();
        let summary = run(Arc::clone(&queue), Arc::clone(&f), cfg, std::future::pending()).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(summary.timeouts, 1, "{summary:?}");
        assert_eq!(summary.invocations, 0);
        assert_eq!(summary.deleted, 0);
    }

    #[tokio::test]
    async fn shutdown_releases_held_messages() {
        let (queue, _) = queue(&["a", "b", "c"], Duration::from_secs(30));
        let f = function(1, "ok");
        // A long window: the messages are held, never invoked, until the shutdown.
        let mut cfg = config(100, 60_000);
        cfg.until_empty = false;
        cfg.max_concurrency = 1;
        let summary = run(
            Arc::clone(&queue),
            Arc::clone(&f),
            cfg,
            tokio::time::sleep(Duration::from_millis(500)),
        )
        .await;
        assert_eq!(summary.stop_reason, StopReason::Signal);
        assert_eq!(summary.batches, 0);
        assert_eq!(summary.released, 3);
        let depth = queue.depth();
        assert_eq!(depth.visible, 3);
        assert_eq!(depth.in_flight, 0);
    }

    #[test]
    fn summary_serializes_with_a_kebab_case_reason() {
        let s = Summary {
            stop_reason: StopReason::UntilEmpty,
            deleted: 3,
            ..Summary::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["stop_reason"], "until-empty");
        assert_eq!(v["deleted"], 3);
    }
}
