//! An in-process SQS queue and event source mapping, for runs of thousands of messages.
//!
//! moto's SQS walks every message on each call, so it cannot hold the thousands of
//! messages a chaos run or a benchmark needs (DESIGN.md). This queue keeps SQS's
//! semantics that matter to the starter, in memory:
//! - a receive hides a message for the visibility timeout and bumps its receive count;
//! - a message received more than `max_receive_count` times is moved to the DLQ by the
//!   redrive instead of being delivered (as SQS does);
//! - the mapping deletes every record not listed in `batchItemFailures`; a failed
//!   invocation (handler error or timeout) deletes nothing;
//! - ChangeMessageVisibility and the function's own DLQ sends go through [`Queue`].
//!
//! The ESM driver [`drive`] runs K workers, one per simulated Lambda instance, each with
//! its own [`Starter`] (its own pacer), invoking them one batch at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use serde_json::json;
use sfn_pacer::dead_letter::{AttributeValue, DeadLetter};
use sfn_pacer::queue::{Queue, QueueError};
use sfn_pacer::Starter;
use tokio::time::Instant;

/// Why a message is in the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqEntry {
    /// Sent by the function, with its reason attributes (code, reason).
    DeadLettered {
        /// The original message id (attribute `sfn-pacer.message-id`).
        message_id: String,
        /// The `sfn-pacer.error-code` attribute.
        code: String,
        /// The `sfn-pacer.reason` attribute.
        reason: String,
    },
    /// Moved by the queue's redrive after too many receives.
    Redriven {
        /// The message id.
        message_id: String,
        /// How often it was received.
        receive_count: u32,
    },
}

#[derive(Debug, Clone)]
struct SimMessage {
    id: String,
    body: String,
    receive_count: u32,
    visible_at: Instant,
    sent_at: Instant,
    receipt: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Messages in the queue (visible or in flight), by id; ids are sequence-ordered.
    messages: BTreeMap<String, SimMessage>,
    /// Receipt handle → message id, for the current receive of each in-flight message.
    receipts: HashMap<String, String>,
    dlq: Vec<DlqEntry>,
    deleted: u64,
    next_receipt: u64,
    next_id: u64,
    /// Time from send to the acknowledgement that removed it, per deleted message.
    latencies: Vec<Duration>,
}

/// An in-memory SQS standard queue with a redrive policy.
#[derive(Debug)]
pub struct SimQueue {
    arn: String,
    max_receive_count: u32,
    visibility_timeout: Duration,
    state: Mutex<State>,
}

/// Counts of a queue at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    /// Messages that can be received now.
    pub visible: usize,
    /// Messages received and not yet deleted or visible again.
    pub in_flight: usize,
    /// Messages in the DLQ.
    pub dlq: usize,
    /// Messages deleted (acknowledged).
    pub deleted: u64,
}

impl SimQueue {
    /// A queue named `name` whose redrive moves a message to the DLQ after `max_receive_count`
    /// receives; received messages stay hidden for `visibility_timeout`.
    pub fn new(name: &str, max_receive_count: u32, visibility_timeout: Duration) -> Arc<SimQueue> {
        Arc::new(SimQueue {
            arn: format!("arn:aws:sqs:us-east-1:123456789012:{name}"),
            max_receive_count,
            visibility_timeout,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue's ARN (the records' `eventSourceARN`).
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// Enqueues a message; returns its id (`msg-000000001`, …, in send order).
    pub fn send(&self, body: impl Into<String>) -> String {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("msg-{:09}", s.next_id);
        let now = Instant::now();
        let message = SimMessage {
            id: id.clone(),
            body: body.into(),
            receive_count: 0,
            visible_at: now,
            sent_at: now,
            receipt: None,
        };
        s.messages.insert(id.clone(), message);
        id
    }

    /// Receives up to `max` visible messages as an SQS event, applying the redrive first.
    pub fn receive(&self, max: usize) -> SqsEvent {
        let now = Instant::now();
        let mut s = self.lock();
        let mut records = Vec::new();
        let visible: Vec<String> = s
            .messages
            .values()
            .filter(|m| m.visible_at <= now)
            .map(|m| m.id.clone())
            .take(max * 2 + 16)
            .collect();
        for id in visible {
            if records.len() >= max {
                break;
            }
            let Some(m) = s.messages.get(&id).cloned() else {
                continue;
            };
            if let Some(old) = &m.receipt {
                s.receipts.remove(old);
            }
            if m.receive_count >= self.max_receive_count {
                s.messages.remove(&id);
                s.dlq.push(DlqEntry::Redriven {
                    message_id: id,
                    receive_count: m.receive_count,
                });
                continue;
            }
            s.next_receipt += 1;
            let receipt = format!("rh-{}", s.next_receipt);
            s.receipts.insert(receipt.clone(), id.clone());
            let Some(entry) = s.messages.get_mut(&id) else { continue };
            entry.receive_count += 1;
            entry.visible_at = now + self.visibility_timeout;
            entry.receipt = Some(receipt.clone());
            records.push(json!({
                "messageId": entry.id, "receiptHandle": receipt, "body": entry.body,
                "attributes": {"ApproximateReceiveCount": entry.receive_count.to_string(), "SentTimestamp": "0"},
                "eventSource": "aws:sqs", "eventSourceARN": self.arn, "awsRegion": "us-east-1",
            }));
        }
        serde_json::from_value(json!({ "Records": records })).unwrap_or_default()
    }

    /// Deletes every record of `event` whose id is not in `failed` (the ESM's acknowledgement).
    pub fn acknowledge(&self, event: &SqsEvent, failed: &[String]) {
        let now = Instant::now();
        let mut s = self.lock();
        for record in &event.records {
            let (Some(id), Some(receipt)) = (&record.message_id, &record.receipt_handle) else {
                continue;
            };
            if failed.contains(id) {
                continue;
            }
            // Only the current receive may delete: a stale receipt does nothing, as in SQS.
            if s.receipts.remove(receipt).is_some() {
                if let Some(m) = s.messages.remove(id) {
                    s.deleted += 1;
                    s.latencies.push(now - m.sent_at);
                }
            }
        }
    }

    /// Applies a partial batch response as the ESM does: deletes every record of `event`
    /// not listed in `response`; returns how many records it listed.
    pub fn apply_response(&self, event: &SqsEvent, response: &SqsBatchResponse) -> u64 {
        let failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        self.acknowledge(event, &failed);
        failed.len() as u64
    }

    /// The counts now.
    pub fn depth(&self) -> Depth {
        let now = Instant::now();
        let s = self.lock();
        let visible = s.messages.values().filter(|m| m.visible_at <= now).count();
        Depth {
            visible,
            in_flight: s.messages.len() - visible,
            dlq: s.dlq.len(),
            deleted: s.deleted,
        }
    }

    /// Whether nothing is left in the queue (visible or in flight).
    pub fn is_drained(&self) -> bool {
        self.lock().messages.is_empty()
    }

    /// The DLQ's entries.
    pub fn dlq(&self) -> Vec<DlqEntry> {
        self.lock().dlq.clone()
    }

    /// Send-to-delete times of the deleted messages.
    pub fn latencies(&self) -> Vec<Duration> {
        self.lock().latencies.clone()
    }
}

fn text(letter: &DeadLetter, name: &str) -> String {
    match letter.attributes.get(name) {
        Some(AttributeValue::String(v, _) | AttributeValue::Number(v, _)) => v.clone(),
        _ => String::new(),
    }
}

#[async_trait]
impl Queue for SimQueue {
    async fn change_visibility(&self, queue_arn: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        if queue_arn != self.arn {
            return Err(QueueError(format!("no queue {queue_arn}")));
        }
        let mut s = self.lock();
        let id = s
            .receipts
            .get(receipt_handle)
            .cloned()
            .ok_or_else(|| QueueError("receipt handle is stale".into()))?;
        if let Some(m) = s.messages.get_mut(&id) {
            m.visible_at = Instant::now() + Duration::from_secs(u64::from(seconds));
        }
        Ok(())
    }

    async fn send_dead_letter(&self, _dlq_url: &str, letter: &DeadLetter) -> Result<(), QueueError> {
        let entry = DlqEntry::DeadLettered {
            message_id: text(letter, "sfn-pacer.message-id"),
            code: text(letter, "sfn-pacer.error-code"),
            reason: text(letter, "sfn-pacer.reason"),
        };
        self.lock().dlq.push(entry);
        Ok(())
    }
}

/// How the simulated event source mapping invokes the function.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Records per invocation (BatchSize).
    pub batch_size: usize,
    /// The function timeout: the deadline given to each invocation. An invocation still
    /// running at this time is cut off and its whole batch returns to the queue.
    pub function_timeout: Duration,
    /// Overrides the deadline of some invocations: `(every_nth, deadline)` gives every
    /// n-th invocation only `deadline`, so that it is cut off at its deadline.
    pub short_deadline: Option<(u64, Duration)>,
    /// The whole run stops after this long, drained or not.
    pub max_run: Duration,
    /// How long a worker sleeps when nothing is visible.
    pub idle_poll: Duration,
}

/// What a run of the mapping did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Invocations made.
    pub invocations: u64,
    /// Invocations that ended in a handler error or were cut off by the function timeout.
    pub failed_invocations: u64,
    /// Records listed in `batchItemFailures`, summed over invocations.
    pub reported: u64,
    /// Wall time from the start to the queue being drained (or `max_run`).
    pub elapsed: Duration,
    /// Whether the queue was drained.
    pub drained: bool,
}

/// Runs one worker per starter (one per simulated Lambda instance) until the queue is
/// drained or `mapping.max_run` passes. Bounded in time by construction.
pub async fn drive(queue: Arc<SimQueue>, starters: Vec<Arc<Starter>>, mapping: Mapping) -> RunReport {
    let started = Instant::now();
    let stop_at = started + mapping.max_run;
    let invocation_counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for starter in starters {
        let (queue, mapping, counter) = (queue.clone(), mapping.clone(), invocation_counter.clone());
        workers.push(tokio::spawn(async move {
            let mut report = RunReport::default();
            while Instant::now() < stop_at && !queue.is_drained() {
                let event = queue.receive(mapping.batch_size);
                if event.records.is_empty() {
                    tokio::time::sleep(mapping.idle_poll).await;
                    continue;
                }
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let budget = match mapping.short_deadline {
                    Some((every, short)) if every > 0 && n % every == 0 => short,
                    _ => mapping.function_timeout,
                };
                let deadline_ms = sfn_pacer::handler::now_epoch_ms() + budget.as_millis() as u64;
                report.invocations += 1;
                let result = tokio::time::timeout(budget, starter.process(event.clone(), deadline_ms)).await;
                match result {
                    Ok(Ok(outcome)) => report.reported += queue.apply_response(&event, &outcome.response),
                    // A handler error or a timeout: the whole batch comes back.
                    Ok(Err(_)) | Err(_) => report.failed_invocations += 1,
                }
            }
            report
        }));
    }
    let mut total = RunReport::default();
    for worker in workers {
        // A panic in the handler must fail the test, not silently remove an instance.
        let r = match worker.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a mapping worker did not finish: {e}"),
        };
        total.invocations += r.invocations;
        total.failed_invocations += r.failed_invocations;
        total.reported += r.reported;
    }
    total.elapsed = started.elapsed();
    total.drained = queue.is_drained();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn receive_hides_counts_and_redrives() {
        let q = SimQueue::new("q", 2, Duration::from_secs(10));
        let id = q.send("{}");
        let first = q.receive(10);
        assert_eq!(first.records.len(), 1);
        assert_eq!(first.records[0].attributes["ApproximateReceiveCount"], "1");
        assert!(q.receive(10).records.is_empty(), "hidden while in flight");
        tokio::time::advance(Duration::from_secs(11)).await;
        let second = q.receive(10);
        assert_eq!(second.records[0].attributes["ApproximateReceiveCount"], "2");
        // A stale receipt cannot delete.
        q.acknowledge(&first, &[]);
        assert!(!q.is_drained());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(q.receive(10).records.is_empty(), "the third receive redrives it");
        assert_eq!(
            q.dlq(),
            vec![DlqEntry::Redriven {
                message_id: id,
                receive_count: 2
            }]
        );
        assert!(q.is_drained());
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledge_deletes_all_but_the_failures() {
        let q = SimQueue::new("q", 5, Duration::from_secs(10));
        let a = q.send("a");
        let _b = q.send("b");
        let event = q.receive(10);
        q.acknowledge(&event, std::slice::from_ref(&a));
        assert_eq!(
            q.depth(),
            Depth {
                visible: 0,
                in_flight: 1,
                dlq: 0,
                deleted: 1
            }
        );
        q.change_visibility(q.arn(), event.records[0].receipt_handle.as_deref().unwrap(), 0)
            .await
            .unwrap();
        assert_eq!(q.depth().visible, 1);
    }
}
