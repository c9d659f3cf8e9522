//! The `aws-sdk-sqs` side of the mapping.

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
    QueueAttributeName,
};
use aws_sdk_sqs::Client;

use std::time::Duration;

use super::event::{base64_data, ReceivedMessage, SqsMessageAttribute};
use super::gather::MAX_WAIT_SECONDS;
use super::runner::{Queue, QueueCounts, ReceiptEntry};

/// What the mapping needs to know about its queue.
#[derive(Clone, Debug)]
pub struct QueueInfo {
    /// The queue URL.
    pub url: String,
    /// `QueueArn`.
    pub arn: String,
    /// `VisibilityTimeout`, in seconds.
    pub visibility_timeout_seconds: u64,
    /// `RedrivePolicy` (JSON), if any.
    pub redrive_policy: Option<String>,
}

impl QueueInfo {
    /// True for a FIFO queue.
    pub fn is_fifo(&self) -> bool {
        self.arn.ends_with(".fifo") || self.url.ends_with(".fifo")
    }
}

/// A queue reached through the SDK.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`.
    pub fn new(client: Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    /// Resolves the queue (by URL, else by name with `GetQueueUrl`) and reads its attributes.
    pub async fn resolve(client: &Client, url: Option<&str>, name: Option<&str>) -> Result<QueueInfo, String> {
        let url = match (url, name) {
            (Some(url), _) => url.to_string(),
            (None, Some(name)) => client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| format!("GetQueueUrl for queue {name:?}: {}", DisplayErrorContext(&e)))?
                .queue_url()
                .map(str::to_string)
                .ok_or_else(|| format!("GetQueueUrl for queue {name:?} returned no URL"))?,
            (None, None) => return Err("give --queue-url or --queue-name".into()),
        };
        let out = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| format!("GetQueueAttributes for {url}: {}", DisplayErrorContext(&e)))?;
        let attributes = out.attributes().cloned().unwrap_or_default();
        let arn = attributes
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .ok_or_else(|| format!("queue {url} has no QueueArn attribute"))?;
        let visibility_timeout_seconds = attributes
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let redrive_policy = attributes.get(&QueueAttributeName::RedrivePolicy).cloned();
        Ok(QueueInfo {
            url,
            arn,
            visibility_timeout_seconds,
            redrive_policy,
        })
    }
}

/// A received SDK message as its event record (`None` without an id or receipt handle).
pub fn received_message(m: &Message) -> Option<ReceivedMessage> {
    let mut out = ReceivedMessage::default();
    out.message_id = Some(m.message_id()?.to_string());
    out.receipt_handle = Some(m.receipt_handle()?.to_string());
    out.body = Some(m.body().unwrap_or_default().to_string());
    out.md5_of_body = m.md5_of_body().map(str::to_string);
    out.md5_of_message_attributes = m.md5_of_message_attributes().map(str::to_string);
    if let Some(attributes) = m.attributes() {
        out.attributes = attributes
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
    }
    for (name, v) in m.message_attributes().into_iter().flatten() {
        let bytes = |b: &aws_smithy_types::Blob| base64_data(b.as_ref());
        let mut attribute = SqsMessageAttribute::default();
        attribute.string_value = v.string_value().map(str::to_string);
        attribute.binary_value = v.binary_value().map(bytes);
        attribute.string_list_values = v.string_list_values().to_vec();
        attribute.binary_list_values = v.binary_list_values().iter().map(bytes).collect();
        attribute.data_type = Some(v.data_type().to_string());
        out.message_attributes.insert(name.clone(), attribute);
    }
    Some(out)
}

/// `WaitTimeSeconds` for a long poll of `wait`: whole seconds, rounded up (a receive returns as
/// soon as messages arrive anyway), at most 20.
pub fn wait_time_seconds(wait: Duration) -> i32 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    i32::try_from(seconds.min(u64::try_from(MAX_WAIT_SECONDS).unwrap_or(20))).unwrap_or(MAX_WAIT_SECONDS)
}

fn count(attributes: Option<&std::collections::HashMap<QueueAttributeName, String>>, name: QueueAttributeName) -> u64 {
    attributes
        .and_then(|a| a.get(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Queue for SqsQueue {
    async fn receive(&self, max_messages: i32, wait: Duration) -> Result<Vec<ReceivedMessage>, String> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max_messages.clamp(1, 10))
            .wait_time_seconds(wait_time_seconds(wait))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        let mut messages = Vec::new();
        for m in out.messages() {
            match received_message(m) {
                Some(received) => messages.push(received),
                None => tracing::warn!("skipping a received message without id or receipt handle"),
            }
        }
        Ok(messages)
    }

    async fn delete(&self, entries: &[ReceiptEntry]) -> Result<Vec<(String, String)>, String> {
        let entries = entries
            .iter()
            .map(|(id, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(receipt)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        Ok(out
            .failed()
            .iter()
            .map(|f| {
                (
                    f.id().to_string(),
                    format!("{}: {}", f.code(), f.message().unwrap_or_default()),
                )
            })
            .collect())
    }

    async fn release(&self, entries: &[ReceiptEntry]) -> Result<(), String> {
        let entries = entries
            .iter()
            .map(|(id, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        self.client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        Ok(())
    }

    async fn counts(&self) -> Result<QueueCounts, String> {
        queue_counts(&self.client, &self.url).await
    }
}

/// A queue's message counts (GetQueueAttributes: visible, not visible, delayed).
pub async fn queue_counts(client: &Client, url: &str) -> Result<QueueCounts, String> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(&e).to_string())?;
    let a = out.attributes();
    Ok(QueueCounts {
        visible: count(a, QueueAttributeName::ApproximateNumberOfMessages),
        not_visible: count(a, QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        delayed: count(a, QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_seconds_at_most_twenty() {
        assert_eq!(wait_time_seconds(Duration::ZERO), 0);
        assert_eq!(wait_time_seconds(Duration::from_millis(1)), 1);
        // 4.9 s left: rounded up to 5.
        assert_eq!(wait_time_seconds(Duration::from_millis(4_900)), 5);
        assert_eq!(wait_time_seconds(Duration::from_secs(5)), 5);
        assert_eq!(wait_time_seconds(Duration::from_secs(300)), 20);
    }
}
