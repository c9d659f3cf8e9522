//! The `aws-sdk-sqs` side of the mapping.

use std::collections::BTreeMap;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
    QueueAttributeName,
};
use aws_sdk_sqs::Client;

use crate::event::{MessageAttribute, ReceivedMessage};
use crate::runner::{Queue, QueueCounts, ReceiptEntry};

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

/// A received SDK message in the event's terms (`None` without an id or receipt handle).
pub fn received_message(m: &Message) -> Option<ReceivedMessage> {
    let attributes: BTreeMap<String, String> = m
        .attributes()
        .map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect())
        .unwrap_or_default();
    let message_attributes = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(name, v)| {
                    let attribute = MessageAttribute {
                        string_value: v.string_value().map(str::to_string),
                        binary_value: v.binary_value().map(|b| aws_smithy_types::base64::encode(b.as_ref())),
                        string_list_values: v.string_list_values().to_vec(),
                        binary_list_values: v
                            .binary_list_values()
                            .iter()
                            .map(|b| aws_smithy_types::base64::encode(b.as_ref()))
                            .collect(),
                        data_type: v.data_type().to_string(),
                    };
                    (name.clone(), attribute)
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ReceivedMessage {
        message_id: m.message_id()?.to_string(),
        receipt_handle: m.receipt_handle()?.to_string(),
        body: m.body().unwrap_or_default().to_string(),
        md5_of_body: m.md5_of_body().unwrap_or_default().to_string(),
        attributes,
        message_attributes,
    })
}

fn count(attributes: Option<&std::collections::HashMap<QueueAttributeName, String>>, name: QueueAttributeName) -> u64 {
    attributes
        .and_then(|a| a.get(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Queue for SqsQueue {
    async fn receive(&self, max_messages: i32, wait_seconds: i32) -> Result<Vec<ReceivedMessage>, String> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max_messages.clamp(1, 10))
            .wait_time_seconds(wait_seconds.clamp(0, 20))
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
