//! The SQS calls the function makes itself, behind a narrow trait.

use async_trait::async_trait;

use crate::dead_letter::DeadLetter;

/// A failed SQS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// SQS operations on the source queue and the dead-letter queue.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sets the visibility timeout (seconds) of a received message of the queue `queue_arn`.
    async fn change_visibility(&self, queue_arn: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError>;

    /// Sends a dead letter to the queue at `dlq_url`.
    async fn send_dead_letter(&self, dlq_url: &str, letter: &DeadLetter) -> Result<(), QueueError>;
}
