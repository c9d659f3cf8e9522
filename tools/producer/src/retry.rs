//! Retry bookkeeping for `SendMessageBatch`: which entries were sent, which to send again,
//! which to give up on (and why), and the backoff between attempts.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;

use crate::batch::Entry;

/// One entry that SQS refused in a `SendMessageBatch` answer (its `Failed` list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryFailure {
    /// The batch entry `Id` ([`Entry::entry_id`]).
    pub entry_id: String,
    /// The error code, e.g. `InternalError`.
    pub code: String,
    /// The error message.
    pub message: String,
    /// True when SQS blames the request (retrying the same entry will not help).
    pub sender_fault: bool,
}

/// The answer to one `SendMessageBatch` call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// Entry ids SQS accepted.
    pub successful: Vec<String>,
    /// Entries SQS refused.
    pub failed: Vec<EntryFailure>,
}

/// A whole `SendMessageBatch` call that failed (no answer per entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// The error code, or a short kind such as `dispatch` or `timeout`.
    pub code: String,
    /// A human-readable description.
    pub message: String,
    /// False when sending again cannot help (e.g. the queue does not exist).
    pub retryable: bool,
}

/// A message given up on after retries, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// The input position (0-based).
    pub seq: u64,
    /// The logical id.
    pub id: String,
    /// The last error code.
    pub code: String,
    /// The last error message.
    pub reason: String,
    /// How many times it was sent.
    pub attempts: u32,
}

/// How one attempt at a batch turned out.
#[derive(Debug, Default)]
pub struct Settled {
    /// Entries SQS accepted.
    pub sent: Vec<Entry>,
    /// Entries to send again.
    pub retry: Vec<Entry>,
    /// Entries given up on.
    pub given_up: Vec<Failure>,
}

fn failure(entry: &Entry, code: &str, reason: &str, attempts: u32) -> Failure {
    Failure {
        seq: entry.seq,
        id: entry.id.clone(),
        code: code.to_string(),
        reason: reason.to_string(),
        attempts,
    }
}

/// Sorts a batch after an answer. `attempt` is 1-based; at `attempt >= max_attempts` nothing
/// is retried. An entry that SQS lists as failed with `sender_fault` is given up at once; an
/// entry the answer does not mention at all is treated as failed (never as sent).
pub fn settle(batch: Vec<Entry>, result: &BatchResult, attempt: u32, max_attempts: u32) -> Settled {
    let failed: HashMap<&str, &EntryFailure> = result.failed.iter().map(|f| (f.entry_id.as_str(), f)).collect();
    let sent_ids: std::collections::HashSet<&str> = result.successful.iter().map(String::as_str).collect();
    let last = attempt >= max_attempts;
    let mut settled = Settled::default();
    for entry in batch {
        let entry_id = entry.entry_id();
        if let Some(f) = failed.get(entry_id.as_str()) {
            if f.sender_fault || last {
                settled.given_up.push(failure(&entry, &f.code, &f.message, attempt));
            } else {
                settled.retry.push(entry);
            }
        } else if sent_ids.contains(entry_id.as_str()) {
            settled.sent.push(entry);
        } else if last {
            settled.given_up.push(failure(
                &entry,
                "MissingFromResponse",
                "SQS did not report on this entry",
                attempt,
            ));
        } else {
            settled.retry.push(entry);
        }
    }
    settled
}

/// Sorts a batch after a whole-call error: everything is retried, unless the error is not
/// retryable or this was the last attempt.
pub fn settle_call_error(batch: Vec<Entry>, error: &CallError, attempt: u32, max_attempts: u32) -> Settled {
    if error.retryable && attempt < max_attempts {
        Settled {
            retry: batch,
            ..Settled::default()
        }
    } else {
        let given_up = batch
            .iter()
            .map(|e| failure(e, &error.code, &error.message, attempt))
            .collect();
        Settled {
            given_up,
            ..Settled::default()
        }
    }
}

/// Exponential backoff with jitter: before retry `n` (1-based) wait between half and all of
/// `min(max, base × 2^(n−1))`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay's upper bound.
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 milliseconds, doubling, capped at 5 seconds.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before retry `retry` (1-based).
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let exp = retry.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = ceiling / 2;
        let jitter_ms = rng.random_range(0..=half.as_millis().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn batch(n: u64) -> Vec<Entry> {
        (0..n).map(|i| Entry::new(i, format!("id{i}"), "{}")).collect()
    }

    fn fail(id: u64, code: &str, sender_fault: bool) -> EntryFailure {
        EntryFailure {
            entry_id: id.to_string(),
            code: code.into(),
            message: format!("{code} msg"),
            sender_fault,
        }
    }

    #[test]
    fn partial_failures_are_retried() {
        let result = BatchResult {
            successful: vec!["0".into(), "2".into()],
            failed: vec![fail(1, "InternalError", false), fail(3, "InternalError", false)],
        };
        let s = settle(batch(4), &result, 1, 3);
        assert_eq!(s.sent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(s.retry.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 3]);
        assert!(s.given_up.is_empty());
    }

    #[test]
    fn sender_faults_are_given_up_at_once() {
        let result = BatchResult {
            successful: vec!["0".into()],
            failed: vec![fail(1, "InvalidParameterValue", true)],
        };
        let s = settle(batch(2), &result, 1, 5);
        assert_eq!(s.sent.len(), 1);
        assert!(s.retry.is_empty());
        assert_eq!(s.given_up.len(), 1);
        assert_eq!(s.given_up[0].id, "id1");
        assert_eq!(s.given_up[0].code, "InvalidParameterValue");
        assert_eq!(s.given_up[0].attempts, 1);
    }

    #[test]
    fn last_attempt_gives_up_with_reason() {
        let result = BatchResult {
            successful: vec![],
            failed: vec![fail(0, "InternalError", false)],
        };
        let s = settle(batch(1), &result, 3, 3);
        assert!(s.retry.is_empty());
        assert_eq!(s.given_up[0].reason, "InternalError msg");
        assert_eq!(s.given_up[0].attempts, 3);
    }

    #[test]
    fn entries_missing_from_the_answer_are_not_counted_as_sent() {
        let result = BatchResult {
            successful: vec!["0".into()],
            failed: vec![],
        };
        let s = settle(batch(2), &result, 1, 2);
        assert_eq!(s.sent.len(), 1);
        assert_eq!(s.retry.len(), 1);
        let s = settle(batch(2), &result, 2, 2);
        assert_eq!(s.given_up[0].code, "MissingFromResponse");
    }

    #[test]
    fn call_errors() {
        let retryable = CallError {
            code: "dispatch".into(),
            message: "connection refused".into(),
            retryable: true,
        };
        assert_eq!(settle_call_error(batch(3), &retryable, 1, 2).retry.len(), 3);
        let s = settle_call_error(batch(3), &retryable, 2, 2);
        assert_eq!(s.given_up.len(), 3);
        assert_eq!(s.given_up[2].reason, "connection refused");
        let fatal = CallError {
            code: "QueueDoesNotExist".into(),
            message: "no queue".into(),
            retryable: false,
        };
        assert_eq!(settle_call_error(batch(2), &fatal, 1, 5).given_up.len(), 2);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let d1 = b.delay(1, &mut rng);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = b.delay(3, &mut rng);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d10 = b.delay(10, &mut rng);
            assert!(
                d10 >= Duration::from_millis(500) && d10 <= Duration::from_secs(1),
                "{d10:?}"
            );
            assert!(b.delay(u32::MAX, &mut rng) <= Duration::from_secs(1));
        }
    }
}
