//! Messages that wait at the cap: when each comes back, and, before its last receive, its re-send.
//!
//! - Fresh messages join the waiting line, all of an invocation in ONE write
//!   ([`Cap::join_line`]): each is due one expected completion after the one before it. So does a
//!   due message that found no slot after waiting for one in its invocation (`HOLD`): it was one
//!   more than the line counted, and at the front it would take the slots of those the line
//!   counts. A re-sent one that came back early waits until its due time.
//! - Before any execution of the cap has ended there is no line: waiting messages probe, their
//!   waits doubling ([`line::probe_wait`]).
//! - No message reaches the DLQ for waiting alone: on a standard queue, a waiting message whose
//!   next receive would be its last (`receive count + 1 ≥ MAX_RECEIVE_COUNT`) is re-sent to its
//!   queue (`SendMessageBatch`, `DelaySeconds` up to 15 minutes, its attributes, trace header and
//!   identity kept, [`resend_letter`]) and acknowledged. A FIFO queue cannot re-send without
//!   breaking its group's order: there the group waits by visibility alone, in order, and the
//!   receive before the last waits as long as SQS allows (12 hours).
//! - Every call is bounded by the time left; what could not be re-sent waits by its visibility.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::unit_random;
use super::dead_letter::{resend_letter, DeadLetter, MAX_DELAY_SECONDS};
use super::{batches, distinct, Closed, Closing, Comeback, Disposition, To};
use crate::config::MAX_VISIBILITY_SECONDS;
use crate::plan::event::Message;
use crate::start::running::cap::Cap;
use crate::start::running::line::{self, MIN_WAIT};

/// The longest a message waits by its visibility in one receive: SQS's 12 hours, less a second.
pub const MAX_WAIT: Duration = Duration::from_secs(MAX_VISIBILITY_SECONDS - 1);

/// The visibility timeout, whole seconds, of a message that waits `wait` at the cap (`None`:
/// unknown): rounded, at least [`MIN_WAIT`], at most [`MAX_WAIT`].
pub fn wait_seconds(wait: Option<Duration>) -> u32 {
    let wait = wait.unwrap_or(MIN_WAIT).clamp(MIN_WAIT, MAX_WAIT);
    wait.as_secs_f64().round() as u32
}

/// A unit that waits: its records, the due time it was given (if any), why.
pub(super) type Waiting = (Vec<usize>, Option<Instant>, String);

impl Closing<'_> {
    /// Settles the units that wait at the cap: their due times (one line write), re-sends before
    /// the last receive; their dispositions and comebacks go into `closed` and `comebacks`.
    pub(super) async fn wait(
        &self,
        cap: &Cap,
        waiting: Vec<Waiting>,
        closed: &mut Closed,
        comebacks: &mut HashMap<usize, Comeback>,
    ) {
        if waiting.is_empty() {
            return;
        }
        let dues = self.due_times(cap, &waiting).await;
        let now = Instant::now();
        let mut letters: Vec<((&str, &Message), DeadLetter)> = Vec::new();
        for ((members, _, _), due) in waiting.iter().zip(&dues) {
            let messages = distinct(self.messages, members);
            closed.waiting += messages.len() as u64;
            let last = messages
                .iter()
                .any(|m| m.receive_count().saturating_add(1) >= self.config.max_receive_count);
            if !last || messages.iter().any(|m| m.from_fifo_queue()) {
                continue;
            }
            let wait = due.saturating_duration_since(now);
            let delay = (wait.as_secs_f64().round() as u32).min(MAX_DELAY_SECONDS);
            let due_at_ms = cap.clock().ms_at(*due);
            let fitted: Option<Vec<_>> = messages
                .iter()
                .map(|m| Some(((m.source_arn.as_deref()?, *m), resend_letter(m, due_at_ms, delay)?)))
                .collect();
            match fitted {
                Some(fitted) => letters.extend(fitted),
                None => tracing::warn!(
                    message_id = %messages[0].id,
                    "a waiting message cannot be re-sent with its identity (too many attributes, or too large): it waits by its visibility"
                ),
            }
        }
        let resent = self.resend(letters).await;
        closed.resent += resent.len() as u64;
        for ((members, _, reason), due) in waiting.into_iter().zip(dues) {
            let mut reported = HashSet::new();
            for i in members {
                let m = &self.messages[i];
                if resent.contains(m.id.as_str()) {
                    closed.dispositions[i] = Disposition::Resent;
                    continue;
                }
                // The receive before the last of a FIFO message waits as long as SQS allows.
                let last = m.receive_count().saturating_add(1) >= self.config.max_receive_count;
                let due = match last && m.from_fifo_queue() {
                    true => due.max(now + MAX_WAIT),
                    false => due,
                };
                if reported.insert(m.id.as_str()) {
                    closed.deferred += 1;
                }
                comebacks.insert(i, Comeback::AtCap(Some(due)));
                closed.dispositions[i] = Disposition::Retry(reason.clone());
            }
        }
    }

    /// The due time of each waiting unit: given, else in the line (fresh messages, and due ones that
    /// found no slot after their hold); before `λ̂` is measured, a probe ([`line::probe_wait`]).
    async fn due_times(&self, cap: &Cap, waiting: &[Waiting]) -> Vec<Instant> {
        let now = Instant::now();
        if !cap.measured() {
            return waiting
                .iter()
                .map(|(members, given, _)| {
                    let receives = self.messages[members[0]].receive_count();
                    given.unwrap_or_else(|| now + line::probe_wait(receives, cap.expiry(), unit_random()))
                })
                .collect();
        }
        let latest = match self.time_left() {
            Some(_) => self.hard_deadline,
            None => now,
        };
        let joining = waiting.iter().filter(|(_, given, _)| given.is_none()).count();
        let mut in_line = cap.join_line(joining, latest).await.into_iter();
        waiting
            .iter()
            .map(|(_, given, _)| match given {
                Some(given) => *given,
                None => in_line.next().map_or(now + MIN_WAIT, |ms| cap.clock().instant_ms(ms)),
            })
            .collect()
    }

    /// Re-sends letters to their source queues, in batches; the ids of the messages re-sent.
    async fn resend<'m>(&self, letters: Vec<((&'m str, &'m Message), DeadLetter)>) -> HashSet<&'m str> {
        let mut by_queue: BTreeMap<&str, Vec<(&Message, DeadLetter)>> = BTreeMap::new();
        for ((arn, m), letter) in letters {
            by_queue.entry(arn).or_default().push((m, letter));
        }
        let mut resent = HashSet::new();
        for (arn, letters) in by_queue {
            for batch in batches(&letters) {
                let entries: Vec<DeadLetter> = batch.iter().map(|(_, l)| l.clone()).collect();
                for ((m, _), result) in batch.iter().zip(self.send(To::Queue(arn), &entries).await) {
                    match result {
                        Ok(()) => {
                            tracing::info!(message_id = %m.id, original_id = m.original_id(), "waiting at the cap: re-sent before its last receive");
                            resent.insert(m.id.as_str());
                        }
                        Err(e) => {
                            tracing::warn!(message_id = %m.id, error = %e, "could not re-send a waiting message: it waits by its visibility")
                        }
                    }
                }
            }
        }
        resent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_lasts_at_least_a_second_and_at_most_twelve_hours() {
        assert_eq!(wait_seconds(None), 1);
        assert_eq!(
            wait_seconds(Some(Duration::ZERO)),
            1,
            "0 would be a tight loop at the cap"
        );
        assert_eq!(wait_seconds(Some(Duration::from_millis(2_400))), 2);
        assert_eq!(wait_seconds(Some(Duration::from_secs(90_000))), 43_199);
    }
}
