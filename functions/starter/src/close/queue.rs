//! The SQS calls the function makes itself, behind a narrow trait.

use async_trait::async_trait;

use crate::close::dead_letter::DeadLetter;

/// A failed SQS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// A new visibility timeout for a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    /// The message's receipt handle.
    pub receipt_handle: String,
    /// Seconds from now until it is visible again (0: at once).
    pub seconds: u32,
}

/// SQS operations on the source queue and the dead-letter queue.
///
/// The batch operations have a default of one call per entry; the SDK adapter overrides them
/// with SQS's batch calls.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sets the visibility timeout (seconds) of a received message of the queue `queue_arn`.
    async fn change_visibility(&self, queue_arn: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError>;

    /// Sends a dead letter to the queue at `dlq_url`.
    async fn send_dead_letter(&self, dlq_url: &str, letter: &DeadLetter) -> Result<(), QueueError>;

    /// Changes the visibility of at most 10 messages of the queue `queue_arn`; one result per change.
    async fn change_visibility_batch(
        &self,
        queue_arn: &str,
        changes: &[VisibilityChange],
    ) -> Vec<Result<(), QueueError>> {
        let mut results = Vec::with_capacity(changes.len());
        for change in changes {
            results.push(
                self.change_visibility(queue_arn, &change.receipt_handle, change.seconds)
                    .await,
            );
        }
        results
    }

    /// Sends at most 10 dead letters (at most 1 MiB together); one result per letter.
    async fn send_dead_letters(&self, dlq_url: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        let mut results = Vec::with_capacity(letters.len());
        for letter in letters {
            results.push(self.send_dead_letter(dlq_url, letter).await);
        }
        results
    }

    /// Sends at most 10 messages (at most 1 MiB together) to the queue `queue_arn`: messages re-sent
    /// to their own queue to wait at the cap; one result per message. A queue that cannot re-send
    /// fails each (the messages then wait by their visibility alone).
    async fn send_messages(&self, queue_arn: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        let error = QueueError(format!("this queue client cannot send to {queue_arn}"));
        vec![Err(error); letters.len()]
    }
}
