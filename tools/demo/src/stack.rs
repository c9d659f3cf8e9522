//! The demo's reads of the local AWS side: queue depths, the DLQ, executions with their start
//! times; and the FIFO queue of `make watch`. moto itself, the SDK configs and the shared resources are the local stack's
//! (`local_stack::moto`).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use local_stack::moto::{bounded, CALL_TIMEOUT};

use crate::accounting::DeadLetter;

pub use local_stack::esm::runner::QueueCounts;

/// Reads a queue's counts, bounded in time.
pub async fn queue_counts(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<QueueCounts, String> {
    match tokio::time::timeout(CALL_TIMEOUT, local_stack::esm::sqs::queue_counts(sqs, url)).await {
        Ok(result) => result.map_err(|e| format!("GetQueueAttributes: {e}")),
        Err(_) => Err(format!(
            "GetQueueAttributes: no answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// Reads every message of a queue (the DLQ) without deleting it: each is hidden for
/// `hide_for` so that it is read once. Stops after two empty receives in a row, or `timeout`.
pub async fn read_queue(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    hide_for: Duration,
    timeout: Duration,
) -> Result<Vec<DeadLetter>, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        if Instant::now() >= deadline {
            return Err(format!("reading {url}: not finished within {} s", timeout.as_secs()));
        }
        let received = bounded(
            "ReceiveMessage",
            sqs.receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(i32::try_from(hide_for.as_secs()).unwrap_or(i32::MAX))
                .message_attribute_names("All")
                .send(),
        )
        .await?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in messages {
            let message_id = m.message_id.unwrap_or_default();
            if !seen.insert(message_id.clone()) {
                continue;
            }
            let attributes: BTreeMap<String, String> = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                .collect();
            out.push(DeadLetter {
                message_id,
                body: m.body.unwrap_or_default(),
                attributes,
            });
        }
    }
    Ok(out)
}

/// Creates a FIFO queue (content-based deduplication) and returns its URL.
pub async fn create_fifo_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_seconds: u32,
) -> Result<String, String> {
    let out = bounded(
        "CreateQueue",
        sqs.create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_timeout_seconds.to_string(),
            )
            .send(),
    )
    .await?;
    out.queue_url.ok_or_else(|| format!("CreateQueue {name}: no URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up() {
        let c = QueueCounts {
            visible: 3,
            not_visible: 2,
            delayed: 1,
        };
        assert_eq!(c.total(), 6);
    }
}
