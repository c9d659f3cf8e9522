//! The `aws-sdk-sqs` adapter: queue resolution and `SendMessageBatch`.

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;

use crate::batch::Entry;
use crate::retry::{BatchResult, CallError, EntryFailure};
use crate::send::BatchSender;

/// Error codes for which sending the same call again cannot help.
const NOT_RETRYABLE: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAddress",
    "InvalidSecurity",
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "AWS.SimpleQueueService.EmptyBatchRequest",
    "AWS.SimpleQueueService.InvalidBatchEntryId",
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "BatchEntryIdsNotDistinct",
    "TooManyEntriesInBatchRequest",
    "EmptyBatchRequest",
    "InvalidBatchEntryId",
    "BatchRequestTooLong",
    "InvalidParameterValue",
    "MissingParameter",
    "InvalidMessageContents",
];

/// Turns an SDK error into a [`CallError`]: transport and throttling errors are retryable,
/// request errors (missing queue, bad batch) are not.
pub fn call_error<E, R>(err: &SdkError<E, R>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("ServiceError").to_string();
            let retryable = !NOT_RETRYABLE.contains(&code.as_str());
            CallError {
                code,
                message,
                retryable,
            }
        }
        SdkError::ConstructionFailure(_) => CallError {
            code: "ConstructionFailure".into(),
            message,
            retryable: false,
        },
        SdkError::TimeoutError(_) => CallError {
            code: "Timeout".into(),
            message,
            retryable: true,
        },
        SdkError::DispatchFailure(_) => CallError {
            code: "DispatchFailure".into(),
            message,
            retryable: true,
        },
        _ => CallError {
            code: "ResponseError".into(),
            message,
            retryable: true,
        },
    }
}

/// True for a FIFO queue (its URL or name ends in `.fifo`).
pub fn is_fifo(queue_url: &str) -> bool {
    queue_url.ends_with(".fifo")
}

/// The queue URL: `url` as given, else `GetQueueUrl` for `name`.
pub async fn resolve_queue_url(client: &Client, url: Option<&str>, name: Option<&str>) -> Result<String, String> {
    if let Some(url) = url {
        return Ok(url.to_string());
    }
    let Some(name) = name else {
        return Err("give --queue-url or --queue-name".into());
    };
    let out = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| format!("GetQueueUrl for queue {name:?}: {}", DisplayErrorContext(&e)))?;
    out.queue_url()
        .map(str::to_string)
        .ok_or_else(|| format!("GetQueueUrl for queue {name:?} returned no URL"))
}

/// Sends batches to one queue.
#[derive(Clone, Debug)]
pub struct SqsSender {
    client: Client,
    queue_url: String,
}

impl SqsSender {
    /// A sender to the queue at `queue_url`.
    pub fn new(client: Client, queue_url: impl Into<String>) -> SqsSender {
        SqsSender {
            client,
            queue_url: queue_url.into(),
        }
    }
}

fn request_entry(entry: &Entry) -> Result<SendMessageBatchRequestEntry, CallError> {
    let construction = |e: aws_sdk_sqs::error::BuildError| CallError {
        code: "ConstructionFailure".into(),
        message: format!("message {}: {e}", entry.id),
        retryable: false,
    };
    let mut builder = SendMessageBatchRequestEntry::builder()
        .id(entry.entry_id())
        .message_body(&entry.body)
        .set_message_group_id(entry.group_id.clone())
        .set_message_deduplication_id(entry.dedup_id.clone());
    for (name, value) in &entry.attributes {
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(construction)?;
        builder = builder.message_attributes(name, attribute);
    }
    builder.build().map_err(construction)
}

impl BatchSender for SqsSender {
    async fn send_batch(&self, batch: &[Entry]) -> Result<BatchResult, CallError> {
        let entries = batch.iter().map(request_entry).collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| call_error(&e))?;
        Ok(BatchResult {
            successful: out.successful().iter().map(|s| s.id().to_string()).collect(),
            failed: out
                .failed()
                .iter()
                .map(|f| EntryFailure {
                    entry_id: f.id().to_string(),
                    code: f.code().to_string(),
                    message: f.message().unwrap_or_default().to_string(),
                    sender_fault: f.sender_fault(),
                })
                .collect(),
        })
    }
}
