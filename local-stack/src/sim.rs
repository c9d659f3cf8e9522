//! An in-process SQS queue and event source mapping, for runs of thousands of messages.
//!
//! moto's SQS walks every message on each call, so it cannot hold the thousands of
//! messages a chaos run or a benchmark needs (DESIGN.md). This queue keeps SQS's
//! semantics that matter to the starter, in memory:
//! - a receive hides a message for the visibility timeout and bumps its receive count;
//! - a message received more than `max_receive_count` times is moved to the DLQ by the
//!   redrive instead of being delivered (as SQS does);
//! - a delete needs the receipt handle of the current receive (a stale one fails, as in SQS);
//! - ChangeMessageVisibility and the function's own DLQ sends go through [`Queue`].
//!
//! It is driven by the one mapping loop ([`crate::esm::run`], as an [`esm::runner::Queue`]):
//! [`drive`] runs it with K pollers, one per simulated Lambda instance, each with its own
//! [`Starter`] (its own pacer), invoked in-process ([`InProcess`]).
//!
//! - a FIFO queue (its name ends in `.fifo`) delivers each message group in order, and no
//!   later message of a group while an earlier one is in flight;
//! - a dead letter over SQS's 1 MiB limit is refused, as SQS refuses it;
//! - a message the function re-sends to the queue (waiting at the cap) is a new message, with its
//!   attributes and `DelaySeconds` (its `sent_at` is the re-send's); its receives also count for
//!   the message it was re-sent from ([`SimQueue::receives_by_origin`]);
//! - it counts the requests AWS would bill, by API ([`SimQueue::requests`]).
//!
//! What it leaves out: delay queues, FIFO deduplication and the 10-message limit of a FIFO
//! receive batch, and the latency of SQS calls (every call is instant).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsMessageAttribute;
use sfn_pacer::close::dead_letter::{AttributeValue, DeadLetter, MAX_MESSAGE_BYTES};
use sfn_pacer::close::queue::{Queue, QueueError, VisibilityChange};
use sfn_pacer::plan::event::MESSAGE_ID_ATTRIBUTE;
use sfn_pacer::Starter;
use tokio::time::Instant;

use crate::esm::event::{ReceivedMessage, SqsMessage};
use crate::esm::gather::GatherConfig;
use crate::esm::in_process::InProcess;
pub use crate::esm::in_process::Kill;
use crate::esm::runner::{self as esm, EsmConfig, QueueCounts, ReceiptEntry};
use crate::moto::REGION;

/// The key of [`SimQueue::requests`] for the receives that returned nothing.
pub const EMPTY_RECEIVES: &str = "ReceiveMessage (empty)";

/// How often a long poll looks for visible messages again, while none are.
const LONG_POLL_STEP: Duration = Duration::from_millis(20);

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
    /// FIFO: the message group.
    group: Option<String>,
    body: String,
    /// Message attributes (a re-sent message's).
    attributes: HashMap<String, SqsMessageAttribute>,
    /// The first message's id: a re-sent message's `sfn-pacer.message-id`, else its own.
    origin: String,
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
    /// Receives of each message id so far (kept after the message is gone).
    receive_counts: HashMap<String, u32>,
    /// Receives of each first message, its re-sent copies' included.
    receives_by_origin: HashMap<String, u32>,
    /// The first id of each re-sent message.
    origins: HashMap<String, String>,
    /// Requests made, by SQS API.
    requests: BTreeMap<&'static str, u64>,
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

    /// Whether it is a FIFO queue (its name ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.arn.ends_with(".fifo")
    }

    /// How long until the message `id` is visible again (zero: it is); `None`: it is gone
    /// (deleted or moved to the DLQ). Where a reported message goes next.
    pub fn visible_in(&self, id: &str) -> Option<Duration> {
        let s = self.lock();
        let m = s.messages.get(id)?;
        Some(m.visible_at.saturating_duration_since(Instant::now()))
    }

    /// Enqueues a message; returns its id (`msg-000000001`, …, in send order).
    pub fn send(&self, body: impl Into<String>) -> String {
        self.send_message(None, body.into(), HashMap::new(), Duration::ZERO)
    }

    /// Enqueues a message of the FIFO message group `group`; returns its id.
    pub fn send_to_group(&self, group: &str, body: impl Into<String>) -> String {
        self.send_message(Some(group.to_string()), body.into(), HashMap::new(), Duration::ZERO)
    }

    fn send_message(
        &self,
        group: Option<String>,
        body: String,
        attributes: HashMap<String, SqsMessageAttribute>,
        delay: Duration,
    ) -> String {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("msg-{:09}", s.next_id);
        let now = Instant::now();
        let origin = attributes
            .get(MESSAGE_ID_ATTRIBUTE)
            .and_then(|a| a.string_value.clone())
            .unwrap_or_else(|| id.clone());
        if origin != id {
            s.origins.insert(id.clone(), origin.clone());
        }
        let message = SimMessage {
            id: id.clone(),
            group,
            body,
            attributes,
            origin,
            receive_count: 0,
            visible_at: now + delay,
            sent_at: now,
            receipt: None,
        };
        s.messages.insert(id.clone(), message);
        id
    }

    /// Receives up to `max` visible messages, applying the redrive first (a short poll).
    pub fn receive(&self, max: usize) -> Vec<ReceivedMessage> {
        let now = Instant::now();
        let mut s = self.lock();
        let mut records = Vec::new();
        // FIFO: a group with a message in flight delivers nothing more until it is settled.
        // (Standard queues have no groups: skip the walk over every message.)
        let in_flight: HashSet<String> = match self.is_fifo() {
            true => s
                .messages
                .values()
                .filter(|m| m.visible_at > now)
                .filter_map(|m| m.group.clone())
                .collect(),
            false => HashSet::new(),
        };
        let scan = if self.is_fifo() { usize::MAX } else { max * 2 + 16 };
        let visible: Vec<String> = s
            .messages
            .values()
            .filter(|m| m.visible_at <= now)
            .filter(|m| m.group.as_ref().is_none_or(|g| !in_flight.contains(g)))
            .map(|m| m.id.clone())
            .take(scan)
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
            records.push(record(entry, receipt));
            s.receive_counts.insert(id, m.receive_count + 1);
            *s.receives_by_origin.entry(m.origin).or_default() += 1;
        }
        records
    }

    /// Deletes the message of a receipt handle, if it is the current receive's (as in SQS).
    fn delete_receipt(&self, receipt: &str) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(id) = s.receipts.remove(receipt) else {
            return false;
        };
        if let Some(m) = s.messages.remove(&id) {
            s.deleted += 1;
            s.latencies.push(now - m.sent_at);
        }
        true
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

    /// How often the message `id` has been received.
    pub fn receive_count(&self, id: &str) -> u32 {
        self.lock().receive_counts.get(id).copied().unwrap_or(0)
    }

    /// The first id of the message `id` (a re-sent message's `sfn-pacer.message-id`, else `id`).
    pub fn origin(&self, id: &str) -> String {
        self.lock().origins.get(id).cloned().unwrap_or_else(|| id.to_string())
    }

    /// How often each first message was received, its re-sent copies' receives included.
    pub fn receives_by_origin(&self) -> HashMap<String, u32> {
        self.lock().receives_by_origin.clone()
    }

    /// Requests made so far, by SQS API (the mapping's and the function's).
    pub fn requests(&self) -> BTreeMap<&'static str, u64> {
        self.lock().requests.clone()
    }

    fn count(&self, api: &'static str) {
        *self.lock().requests.entry(api).or_default() += 1;
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

/// The event record of a receive.
fn record(m: &SimMessage, receipt: String) -> ReceivedMessage {
    let mut r = SqsMessage::default();
    r.message_id = Some(m.id.clone());
    r.receipt_handle = Some(receipt);
    r.body = Some(m.body.clone());
    r.message_attributes = m.attributes.clone();
    r.attributes
        .insert("ApproximateReceiveCount".into(), m.receive_count.to_string());
    r.attributes.insert("SentTimestamp".into(), "0".into());
    if let Some(group) = &m.group {
        r.attributes.insert("MessageGroupId".into(), group.clone());
    }
    r
}

impl esm::Queue for SimQueue {
    /// Waits up to `wait` for a visible message, as a long poll does (to the millisecond, where
    /// SQS takes whole seconds).
    async fn receive(&self, max_messages: i32, wait: Duration) -> Result<Vec<ReceivedMessage>, String> {
        let max = usize::try_from(max_messages.clamp(1, 10)).unwrap_or(10);
        let deadline = Instant::now() + wait.min(Duration::from_secs(20));
        loop {
            let messages = SimQueue::receive(self, max);
            if !messages.is_empty() || Instant::now() >= deadline {
                // The pollers' empty receives apart: they poll whether or not messages wait.
                self.count(match messages.is_empty() {
                    true => EMPTY_RECEIVES,
                    false => "ReceiveMessage",
                });
                return Ok(messages);
            }
            tokio::time::sleep(LONG_POLL_STEP.min(deadline - Instant::now())).await;
        }
    }

    async fn delete(&self, entries: &[ReceiptEntry]) -> Result<Vec<(String, String)>, String> {
        self.count("DeleteMessageBatch");
        Ok(entries
            .iter()
            .filter(|(_, receipt)| !self.delete_receipt(receipt))
            .map(|(id, _)| (id.clone(), "ReceiptHandleIsInvalid".to_string()))
            .collect())
    }

    async fn release(&self, entries: &[ReceiptEntry]) -> Result<(), String> {
        self.count("ChangeMessageVisibilityBatch");
        let now = Instant::now();
        let mut s = self.lock();
        for (_, receipt) in entries {
            if let Some(id) = s.receipts.get(receipt).cloned() {
                if let Some(m) = s.messages.get_mut(&id) {
                    m.visible_at = now;
                }
            }
        }
        Ok(())
    }

    async fn counts(&self) -> Result<QueueCounts, String> {
        let depth = self.depth();
        Ok(QueueCounts {
            visible: depth.visible as u64,
            not_visible: depth.in_flight as u64,
            delayed: 0,
        })
    }
}

/// A letter's attribute as a received message carries it.
fn received_attribute(value: &AttributeValue) -> SqsMessageAttribute {
    let mut out = SqsMessageAttribute::default();
    match value {
        AttributeValue::String(v, t) | AttributeValue::Number(v, t) => {
            out.string_value = Some(v.clone());
            out.data_type = Some(t.clone());
        }
        AttributeValue::Binary(v, t) => {
            out.binary_value = Some(crate::esm::event::base64_data(v));
            out.data_type = Some(t.clone());
        }
    }
    out
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
        self.count("ChangeMessageVisibility");
        self.set_visibility(queue_arn, receipt_handle, seconds)
    }

    async fn change_visibility_batch(
        &self,
        queue_arn: &str,
        changes: &[VisibilityChange],
    ) -> Vec<Result<(), QueueError>> {
        self.count("ChangeMessageVisibilityBatch");
        changes
            .iter()
            .map(|c| self.set_visibility(queue_arn, &c.receipt_handle, c.seconds))
            .collect()
    }

    async fn send_dead_letter(&self, _dlq_url: &str, letter: &DeadLetter) -> Result<(), QueueError> {
        self.count("SendMessage");
        self.dead_letter(letter)
    }

    async fn send_dead_letters(&self, _dlq_url: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        self.count("SendMessageBatch");
        letters.iter().map(|l| self.dead_letter(l)).collect()
    }

    async fn send_messages(&self, queue_arn: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        self.count("SendMessageBatch");
        letters
            .iter()
            .map(|letter| {
                if queue_arn != self.arn {
                    return Err(QueueError(format!("no queue {queue_arn}")));
                }
                if letter.size() > MAX_MESSAGE_BYTES {
                    return Err(QueueError(format!("InvalidParameterValue: {} bytes", letter.size())));
                }
                let attributes = letter
                    .attributes
                    .iter()
                    .map(|(name, value)| (name.clone(), received_attribute(value)))
                    .collect();
                let delay = Duration::from_secs(letter.delay_seconds.into());
                self.send_message(letter.group_id.clone(), letter.body.clone(), attributes, delay);
                Ok(())
            })
            .collect()
    }
}

impl SimQueue {
    fn set_visibility(&self, queue_arn: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
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

    /// A dead letter, as the DLQ takes it (refused over SQS's size limit).
    fn dead_letter(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        if letter.size() > MAX_MESSAGE_BYTES {
            return Err(QueueError(format!(
                "InvalidParameterValue: the message is {} bytes, over SQS's limit",
                letter.size()
            )));
        }
        let entry = DlqEntry::DeadLettered {
            message_id: text(letter, "sfn-pacer.message-id"),
            code: text(letter, "sfn-pacer.error-code"),
            reason: text(letter, "sfn-pacer.reason"),
        };
        self.lock().dlq.push(entry);
        Ok(())
    }
}

/// The batching window of simulated runs: long enough to gather a batch from a deep queue
/// (receives are instant here), short enough not to delay the last, partial batches.
pub const DEFAULT_BATCHING_WINDOW: Duration = Duration::from_millis(10);

/// How the simulated event source mapping invokes the function.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Records per invocation (BatchSize).
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds`: above 10 records a batch is gathered from several
    /// receives, for at most this long (as on AWS, a BatchSize above 10 needs one; here it may
    /// be shorter than AWS's 1 s minimum: [`DEFAULT_BATCHING_WINDOW`]).
    pub batching_window: Duration,
    /// The function timeout: the deadline given to each invocation. An invocation still
    /// running at this time is cut off and its whole batch returns to the queue.
    pub function_timeout: Duration,
    /// Overrides the deadline of some invocations: `(every_nth, deadline)` gives every
    /// n-th invocation only `deadline`, so that it is cut off at its deadline.
    pub short_deadline: Option<(u64, Duration)>,
    /// The whole run stops after this long, drained or not.
    pub max_run: Duration,
    /// How long a poller pauses when nothing is visible.
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
    /// The handlers' counts (started, throttled, `possible_duplicates`, table calls, …),
    /// summed over invocations.
    pub function: sfn_pacer::metrics::Report,
    /// Invocations killed part-way ([`Kill`]).
    pub killed: u64,
    /// The messages of those invocations, by first id (a receive of each ended in a crash).
    pub killed_messages: Vec<String>,
    /// Wall time from the start to the queue being drained (or `max_run`).
    pub elapsed: Duration,
    /// Whether the queue was drained.
    pub drained: bool,
}

/// Runs the mapping loop with one poller per starter (one per simulated Lambda instance)
/// until the queue is drained or `mapping.max_run` passes. Bounded in time by construction.
pub async fn drive(queue: Arc<SimQueue>, starters: Vec<Arc<Starter>>, mapping: Mapping) -> RunReport {
    drive_with_kills(queue, starters, mapping, None).await
}

/// [`drive`], also killing some invocations part-way ([`Kill`]).
pub async fn drive_with_kills(
    queue: Arc<SimQueue>,
    starters: Vec<Arc<Starter>>,
    mapping: Mapping,
    kill: Option<Kill>,
) -> RunReport {
    let pollers = starters.len();
    let invoker = Arc::new(InProcess::new(starters, mapping.function_timeout, mapping.short_deadline).with_kill(kill));
    let config = EsmConfig {
        gather: GatherConfig::new(mapping.batch_size, mapping.batching_window, 0),
        max_concurrency: pollers,
        function_timeout: mapping.function_timeout,
        queue_arn: queue.arn().to_string(),
        region: REGION.to_string(),
        until_empty: true,
        empty_polls: 1,
        // Each check counts the queue (O(messages)): at most every 10 ms.
        poll_interval: mapping.idle_poll.max(Duration::from_millis(10)),
        empty_receive_pause: mapping.idle_poll,
        max_run: Some(mapping.max_run),
        progress_interval: None,
    };
    let summary = esm::run(queue.clone(), invoker.clone(), config, std::future::pending()).await;
    assert!(
        summary.stop_reason != esm::StopReason::WorkerFailed,
        "a mapping poller failed: {summary:?}"
    );
    RunReport {
        invocations: summary.batches,
        failed_invocations: summary.function_errors + summary.invalid_responses + summary.timeouts,
        reported: summary.reported_failures,
        function: invoker.totals(),
        killed: invoker.killed(),
        killed_messages: invoker.killed_messages(),
        elapsed: Duration::from_secs_f64(summary.elapsed_seconds),
        drained: queue.is_drained(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esm::event::{message_id, receipt_handle};
    use crate::esm::runner::Queue as _;

    /// The mapping's acknowledgement: deletes every received message not in `failed`.
    async fn acknowledge(q: &SimQueue, received: &[ReceivedMessage], failed: &[String]) {
        let entries: Vec<ReceiptEntry> = received
            .iter()
            .filter(|m| !failed.iter().any(|f| f == message_id(m)))
            .map(|m| (message_id(m).to_string(), receipt_handle(m).to_string()))
            .collect();
        q.delete(&entries).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn receive_hides_counts_and_redrives() {
        let q = SimQueue::new("q", 2, Duration::from_secs(10));
        let id = q.send("{}");
        let first = q.receive(10);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attributes["ApproximateReceiveCount"], "1");
        assert!(q.receive(10).is_empty(), "hidden while in flight");
        tokio::time::advance(Duration::from_secs(11)).await;
        let second = q.receive(10);
        assert_eq!(second[0].attributes["ApproximateReceiveCount"], "2");
        // A stale receipt cannot delete.
        acknowledge(&q, &first, &[]).await;
        assert!(!q.is_drained());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(q.receive(10).is_empty(), "the third receive redrives it");
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
        acknowledge(&q, &event, std::slice::from_ref(&a)).await;
        assert_eq!(
            q.depth(),
            Depth {
                visible: 0,
                in_flight: 1,
                dlq: 0,
                deleted: 1
            }
        );
        q.change_visibility(q.arn(), receipt_handle(&event[0]), 0)
            .await
            .unwrap();
        assert_eq!(q.depth().visible, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fifo_group_waits_while_its_earlier_message_is_in_flight() {
        let q = SimQueue::new("work.fifo", 5, Duration::from_secs(30));
        let a1 = q.send_to_group("a", "1");
        let a2 = q.send_to_group("a", "2");
        let b1 = q.send_to_group("b", "1");
        let first = q.receive(1);
        assert_eq!(message_id(&first[0]), a1);
        assert_eq!(first[0].attributes["MessageGroupId"], "a");
        let second = q.receive(10);
        let ids: Vec<&str> = second.iter().map(message_id).collect();
        assert_eq!(ids, [b1.as_str()], "a2 waits while a1 is in flight");
        // a1 is reported with a 2 s backoff: the group resumes then, not after 30 s.
        q.change_visibility(q.arn(), receipt_handle(&first[0]), 2)
            .await
            .unwrap();
        assert_eq!(q.visible_in(&a1), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        let third = q.receive(10);
        let ids: Vec<&str> = third.iter().map(message_id).collect();
        assert_eq!(ids, [a1.as_str(), a2.as_str()], "in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_sent_message_comes_back_after_its_delay_with_its_attributes() {
        let q = SimQueue::new("q", 5, Duration::from_secs(30));
        let letter = DeadLetter {
            body: "{}".into(),
            attributes: BTreeMap::from([(
                "sfn-pacer.message-id".to_string(),
                AttributeValue::String("first".into(), "String".into()),
            )]),
            group_id: None,
            deduplication_id: None,
            trace_header: None,
            delay_seconds: 3,
        };
        assert_eq!(q.send_messages(q.arn(), &[letter]).await, vec![Ok(())]);
        assert!(q.receive(10).is_empty(), "delayed");
        tokio::time::advance(Duration::from_secs(3)).await;
        let back = q.receive(10);
        assert_eq!(back.len(), 1);
        let attribute = &back[0].message_attributes["sfn-pacer.message-id"];
        assert_eq!(attribute.string_value.as_deref(), Some("first"));
        assert_eq!(
            q.receives_by_origin()["first"],
            1,
            "counted for the message it was re-sent from"
        );
        assert_eq!(q.requests()["SendMessageBatch"], 1);
    }

    #[tokio::test]
    async fn a_dead_letter_over_the_limit_is_refused() {
        let q = SimQueue::new("q", 5, Duration::from_secs(30));
        let letter = DeadLetter {
            body: "x".repeat(MAX_MESSAGE_BYTES + 1),
            attributes: BTreeMap::new(),
            group_id: None,
            deduplication_id: None,
            trace_header: None,
            delay_seconds: 0,
        };
        assert!(q.send_dead_letter("dlq", &letter).await.is_err());
        assert!(q.dlq().is_empty());
    }
}
