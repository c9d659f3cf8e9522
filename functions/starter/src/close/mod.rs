//! The close phase of an invocation: dead letters (`SendMessageBatch`) and visibility changes
//! (`ChangeMessageVisibilityBatch`), batched, each call checked against the time left.
//!
//! Invariants:
//! - no call starts when less than [`MIN_CALL_TIME`] is left before `hard_deadline`, and each
//!   is bounded by the time left, so the invocation answers before its deadline;
//! - a message is acknowledged as dead-lettered only when its send succeeded; otherwise it is
//!   reported (never lost);
//! - a reported message that was never tried comes back when a start is expected to fit:
//!   the rest of a FIFO group at once (visibility 0), a message the pacer had no slot for
//!   when its instance expects the next slot ([`Comeback::At`], at once in full flow); one
//!   that failed gets the jittered backoff on its receive count; in a FIFO group every
//!   reported message gets the group's backoff (SQS delivers no later message of a group
//!   while an earlier one is in flight);
//! - a message that waits at the cap comes back when it is due in the waiting line, or, before
//!   its last receive, is re-sent to its queue with its identity kept ([`waiting`]).

pub mod backoff;
pub mod dead_letter;
pub mod queue;
pub mod waiting;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::{timeout, Instant};

use crate::close::backoff::{deferral_seconds, unit_random, visibility_timeout_seconds};
use crate::close::dead_letter::{dead_letter, DeadLetter, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use crate::close::queue::{Queue, QueueError, VisibilityChange};
use crate::config::Config;
use crate::plan::claim_check::{check_in, ObjectStore, DEAD_LETTER_PREFIX};
use crate::plan::event::Message;
use crate::plan::Rejection;
use crate::start::running::cap::Cap;

/// No call starts with less than this left before the hard deadline.
pub const MIN_CALL_TIME: Duration = Duration::from_millis(20);

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Its execution was started. Acknowledged.
    Started,
    /// Its execution already existed. Acknowledged.
    Duplicate,
    /// It can never start and was sent to the DLQ. Acknowledged.
    DeadLettered,
    /// It waits at the cap and was re-sent to its queue (a new message, its identity kept).
    /// Acknowledged.
    Resent,
    /// Not started: listed in `batchItemFailures`, to be delivered again. The reason is for logs.
    Retry(String),
}

/// How a unit of the batch left the start phase.
#[derive(Debug, Clone)]
pub enum Settled {
    /// Started or a duplicate: acknowledged.
    Done(Disposition),
    /// A permanent failure: to the DLQ.
    Reject(Rejection),
    /// Not started: reported, to come back as `comeback` says.
    Retry {
        /// Why, for the logs.
        reason: String,
        /// When the message is delivered again.
        comeback: Comeback,
    },
}

/// When a reported message is delivered again (its visibility timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comeback {
    /// An attempt failed: after the jittered backoff on its receive count.
    Backoff,
    /// It was never tried: at once.
    Now,
    /// It was never tried for want of a slot: when its instance expects the next one, to the
    /// nearest second from the close phase, so that a starved instance does not spend the
    /// message's receives (`maxReceiveCount`) in a tight loop.
    At(Instant),
    /// It waits for a running slot (the cap): when it is due in the waiting line (`None`: the
    /// close phase puts it in line), at least a second from now, at most 12 hours.
    AtCap(Option<Instant>),
}

/// What the close phase did.
#[derive(Debug, Default)]
pub struct Closed {
    /// One disposition per record.
    pub dispositions: Vec<Disposition>,
    /// Messages sent to the DLQ.
    pub dead_lettered: u64,
    /// Reported messages that were never tried (made visible again at once when time allowed).
    pub deferred: u64,
    /// Messages that wait at the cap (re-sent ones too).
    pub waiting: u64,
    /// Waiting messages re-sent to their queue.
    pub resent: u64,
}

/// The close phase of one invocation.
pub struct Closing<'a> {
    /// The function's own SQS calls.
    pub queue: &'a dyn Queue,
    /// The claim-check store, for dead letters too large for SQS (`CLAIM_CHECK_BUCKET`).
    pub objects: Option<&'a dyn ObjectStore>,
    /// The configuration.
    pub config: &'a Config,
    /// The batch's records.
    pub messages: &'a [Message],
    /// Every call of this phase ends before this.
    pub hard_deadline: Instant,
    /// The cap on running executions, whose waiting line the messages that wait join.
    pub cap: Option<&'a Cap>,
}

impl Closing<'_> {
    /// Settles every unit (`members` are record indices): dead letters first, then the
    /// visibility of everything reported.
    pub async fn close(&self, units: Vec<(Vec<usize>, Settled)>) -> Closed {
        let mut closed = Closed {
            dispositions: vec![Disposition::Retry("not processed".to_string()); self.messages.len()],
            ..Closed::default()
        };
        let mut comebacks: HashMap<usize, Comeback> = HashMap::new();
        let mut rejected = Vec::new();
        let mut waiting = Vec::new();
        for (members, settled) in units {
            let disposition = match settled {
                Settled::Done(done) => done,
                Settled::Reject(rejection) => {
                    rejected.push((members, rejection));
                    continue;
                }
                Settled::Retry {
                    reason,
                    comeback: Comeback::AtCap(due),
                } if self.cap.is_some() => {
                    waiting.push((members, due, reason));
                    continue;
                }
                Settled::Retry { reason, comeback } => {
                    if comeback != Comeback::Backoff {
                        closed.deferred += distinct(self.messages, &members).len() as u64;
                    }
                    comebacks.extend(members.iter().map(|&i| (i, comeback)));
                    Disposition::Retry(reason)
                }
            };
            for i in members {
                closed.dispositions[i] = disposition.clone();
            }
        }
        for (members, disposition) in self.dead_letter(rejected, &mut closed.dead_lettered).await {
            if matches!(disposition, Disposition::Retry(_)) {
                comebacks.extend(members.iter().map(|&i| (i, Comeback::Backoff)));
            }
            for i in members {
                closed.dispositions[i] = disposition.clone();
            }
        }
        if let Some(cap) = self.cap {
            self.wait(cap, waiting, &mut closed, &mut comebacks).await;
        }
        self.change_visibility(&closed.dispositions, &comebacks).await;
        closed
    }

    fn time_left(&self) -> Option<Duration> {
        let left = self.hard_deadline.saturating_duration_since(Instant::now());
        (left >= MIN_CALL_TIME).then(|| left.min(self.config.call_timeout))
    }

    /// Sends the rejected units' messages to the DLQ, in batches; returns their dispositions.
    async fn dead_letter(
        &self,
        rejected: Vec<(Vec<usize>, Rejection)>,
        sent_count: &mut u64,
    ) -> Vec<(Vec<usize>, Disposition)> {
        let Some(dlq_url) = self.config.dlq_url.as_deref() else {
            return rejected
                .into_iter()
                .map(|(members, rejection)| {
                    for m in distinct(self.messages, &members) {
                        log_rejection(
                            self.config,
                            m,
                            &rejection,
                            "reported for the queue's redrive (no DLQ_URL)",
                        );
                    }
                    (members, Disposition::Retry(rejection.reason))
                })
                .collect();
        };
        // Every distinct message of every rejected unit, as a letter that fits SQS's limit.
        let mut letters: Vec<((usize, &Message), DeadLetter)> = Vec::new();
        let mut failed: HashMap<usize, String> = HashMap::new();
        for (u, (members, rejection)) in rejected.iter().enumerate() {
            for m in distinct(self.messages, members) {
                match self.fitted(dead_letter(m, rejection, dlq_url)).await {
                    Ok(letter) => letters.push(((u, m), letter)),
                    Err(why) => {
                        log_rejection(
                            self.config,
                            m,
                            rejection,
                            &format!("{why}: reported for the queue's redrive"),
                        );
                        failed.insert(u, format!("{} ({why})", rejection.reason));
                    }
                }
            }
        }
        for batch in batches(&letters) {
            let entries: Vec<DeadLetter> = batch.iter().map(|(_, l)| l.clone()).collect();
            let results = self.send(To::Dlq(dlq_url), &entries).await;
            for (((u, m), _), result) in batch.iter().zip(results) {
                let rejection = &rejected[*u].1;
                match result {
                    Ok(()) => {
                        *sent_count += 1;
                        log_rejection(self.config, m, rejection, "sent to the DLQ");
                    }
                    Err(e) => {
                        tracing::error!(message_id = %m.id, error = %e, "could not send to the DLQ: reported for retry");
                        failed.insert(*u, format!("{} ({e})", rejection.reason));
                    }
                }
            }
        }
        rejected
            .into_iter()
            .enumerate()
            .map(|(u, (members, _))| match failed.remove(&u) {
                Some(reason) => (members, Disposition::Retry(reason)),
                None => (members, Disposition::DeadLettered),
            })
            .collect()
    }

    /// The letter within SQS's limit: without the message's own attributes if need be, else
    /// with its body in the claim-check bucket and a pointer in its place (the reason stays).
    async fn fitted(&self, letter: DeadLetter) -> Result<DeadLetter, String> {
        let size = match letter.clone().fit() {
            Ok(fitted) => return Ok(fitted),
            Err(size) => size,
        };
        let too_large = format!("too large for the DLQ even without its copied attributes ({size} bytes)");
        let (Some(bucket), Some(objects)) = (&self.config.claim_check_bucket, self.objects) else {
            return Err(too_large);
        };
        let Some(limit) = self.time_left() else {
            return Err(format!("{too_large}; no time left to store it"));
        };
        match timeout(limit, check_in(objects, bucket, DEAD_LETTER_PREFIX, &letter.body)).await {
            Ok(Ok(pointer)) => letter
                .with_claim_check(&pointer)
                .fit()
                .map_err(|size| format!("too large for the DLQ even as a pointer ({size} bytes)")),
            Ok(Err(e)) => Err(format!("{too_large}; storing it failed: {e}")),
            Err(_) => Err(format!("{too_large}; the claim-check bucket did not answer in time")),
        }
    }

    /// One `SendMessageBatch`, if there is time; a call that fails as a whole fails each entry.
    async fn send(&self, to: To<'_>, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        let Some(limit) = self.time_left() else {
            return vec![Err(QueueError("no time left to send".into())); letters.len()];
        };
        let sent = match to {
            To::Dlq(url) => self.queue.send_dead_letters(url, letters),
            To::Queue(arn) => self.queue.send_messages(arn, letters),
        };
        match timeout(limit, sent).await {
            Ok(results) => results,
            Err(_) => vec![
                Err(QueueError(format!(
                    "SendMessageBatch: no answer within {} ms",
                    limit.as_millis()
                )));
                letters.len()
            ],
        }
    }

    /// Delays or releases every reported message, per queue, in batches of 10.
    async fn change_visibility(&self, dispositions: &[Disposition], comebacks: &HashMap<usize, Comeback>) {
        let seconds = visibility_plan(self.messages, dispositions, comebacks, self.config, Instant::now());
        let mut by_queue: BTreeMap<&str, Vec<VisibilityChange>> = BTreeMap::new();
        for (i, s) in seconds {
            let m = &self.messages[i];
            let (Some(arn), Some(handle)) = (&m.source_arn, &m.receipt_handle) else {
                continue;
            };
            by_queue.entry(arn.as_str()).or_default().push(VisibilityChange {
                receipt_handle: handle.clone(),
                seconds: s,
            });
        }
        for (arn, changes) in by_queue {
            for chunk in changes.chunks(MAX_BATCH_ENTRIES) {
                let Some(limit) = self.time_left() else {
                    tracing::warn!("no time left to change the visibility of reported messages");
                    return;
                };
                let results = match timeout(limit, self.queue.change_visibility_batch(arn, chunk)).await {
                    Ok(results) => results,
                    Err(_) => vec![Err(QueueError(
                        "ChangeMessageVisibilityBatch: no answer in time".into(),
                    ))],
                };
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::warn!(error = %e, "could not change the visibility of a reported message");
                }
            }
        }
    }
}

/// Where a `SendMessageBatch` goes.
#[derive(Debug, Clone, Copy)]
enum To<'a> {
    /// The DLQ, by URL.
    Dlq(&'a str),
    /// A source queue, by ARN (a re-sent message).
    Queue(&'a str),
}

/// The visibility timeout (seconds) at `now` of every reported message (by record index):
/// the jittered backoff for the tried ([`Comeback::Backoff`]), the deferral for the untried
/// (0 when none is given); in a FIFO group with a tried message, the group's backoff for
/// every one.
pub fn visibility_plan(
    messages: &[Message],
    dispositions: &[Disposition],
    comebacks: &HashMap<usize, Comeback>,
    config: &Config,
    now: Instant,
) -> Vec<(usize, u32)> {
    let backoff =
        |m: &Message| visibility_timeout_seconds(m.receive_count(), config.retry_base, config.retry_max, unit_random());
    let mut seen = HashSet::new();
    let reported: Vec<usize> = (0..messages.len())
        .filter(|&i| matches!(dispositions[i], Disposition::Retry(_)) && seen.insert(messages[i].id.as_str()))
        .collect();
    let mut group_backoff: HashMap<&str, u32> = HashMap::new();
    for &i in &reported {
        let m = &messages[i];
        let tried = comebacks.get(&i) == Some(&Comeback::Backoff);
        if let (true, Some(group), true) = (m.from_fifo_queue(), m.group_id(), tried) {
            group_backoff.entry(group).or_insert_with(|| backoff(m));
        }
    }
    reported
        .into_iter()
        .map(|i| {
            let m = &messages[i];
            let fifo_group = m.from_fifo_queue().then(|| m.group_id()).flatten();
            let seconds = match (fifo_group.and_then(|g| group_backoff.get(g)), comebacks.get(&i)) {
                (Some(&group), _) => group,
                (None, Some(Comeback::Backoff)) => backoff(m),
                (None, Some(Comeback::At(at))) => deferral_seconds(at.saturating_duration_since(now), config.retry_max),
                (None, Some(Comeback::AtCap(due))) => {
                    waiting::wait_seconds(due.map(|d| d.saturating_duration_since(now)))
                }
                (None, Some(Comeback::Now) | None) => 0,
            };
            (i, seconds)
        })
        .collect()
}

/// Letters in `SendMessageBatch` calls: at most [`MAX_BATCH_ENTRIES`] and
/// [`MAX_BATCH_BYTES`] each.
fn batches<T>(letters: &[(T, DeadLetter)]) -> Vec<&[(T, DeadLetter)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, letter)) in letters.iter().enumerate() {
        let size = letter.size();
        if i > start && (i - start == MAX_BATCH_ENTRIES || bytes + size > MAX_BATCH_BYTES) {
            out.push(&letters[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < letters.len() {
        out.push(&letters[start..]);
    }
    out
}

/// The distinct messages (by id) of a unit's records.
pub(crate) fn distinct<'m>(messages: &'m [Message], members: &[usize]) -> Vec<&'m Message> {
    let mut seen = HashSet::new();
    members
        .iter()
        .map(|&i| &messages[i])
        .filter(|m| seen.insert(m.id.as_str()))
        .collect()
}

fn log_rejection(config: &Config, m: &Message, rejection: &Rejection, what: &str) {
    if config.log_bodies {
        tracing::error!(message_id = %m.id, code = %rejection.code, reason = %rejection.reason, body = %m.body, "permanent failure: {what}");
    } else {
        tracing::error!(message_id = %m.id, code = %rejection.code, reason = %rejection.reason, "permanent failure: {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    fn letter(bytes: usize) -> ((), DeadLetter) {
        (
            (),
            DeadLetter {
                body: "x".repeat(bytes),
                attributes: Map::new(),
                group_id: None,
                deduplication_id: None,
                trace_header: None,
                delay_seconds: 0,
            },
        )
    }

    #[test]
    fn batches_hold_at_most_ten_letters_and_a_mebibyte() {
        let small: Vec<_> = (0..23).map(|_| letter(10)).collect();
        let sizes: Vec<usize> = batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [10, 10, 3]);
        let big: Vec<_> = (0..5).map(|_| letter(400_000)).collect();
        let sizes: Vec<usize> = batches(&big).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(batches::<()>(&[]).is_empty());
    }
}
