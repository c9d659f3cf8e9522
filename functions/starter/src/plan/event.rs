//! The incoming SQS event, checked and turned into [`Message`]s.
//!
//! Only an event that is not an SQS batch at all is an error here (the whole batch fails,
//! so nothing is lost). A bad *body* is never an error at this step: bodies are parsed
//! per message later, so one bad record cannot fail the batch.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessageAttribute};

/// The attribute that carries the original message id: a dead letter redriven back to the
/// queue gets a new id, and the execution name keeps following this one.
pub const MESSAGE_ID_ATTRIBUTE: &str = "sfn-pacer.message-id";

/// The attribute of a message re-sent to its queue to wait at the cap: when it is due, ms since
/// the epoch (a re-send's delay is at most 15 minutes; a longer wait continues on its return).
pub const DUE_AT_ATTRIBUTE: &str = "sfn-pacer.due-at";

/// One SQS record, as the rest of the pipeline sees it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The SQS message id; never empty (checked by [`messages`]).
    pub id: String,
    /// The receipt handle, needed to change the message's visibility.
    pub receipt_handle: Option<String>,
    /// The raw body (empty when the record has none).
    pub body: String,
    /// System attributes (`ApproximateReceiveCount`, `SentTimestamp`, `MessageGroupId`, ...).
    pub attributes: HashMap<String, String>,
    /// User message attributes.
    pub message_attributes: HashMap<String, SqsMessageAttribute>,
    /// The source queue's ARN (`eventSourceARN`).
    pub source_arn: Option<String>,
}

impl Message {
    /// `ApproximateReceiveCount` (1 on first delivery); 1 when absent or unreadable.
    pub fn receive_count(&self) -> u32 {
        self.attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .max(1)
    }

    /// The FIFO message group, when the record has one.
    pub fn group_id(&self) -> Option<&str> {
        self.attributes.get("MessageGroupId").map(String::as_str)
    }

    /// `SentTimestamp`, epoch milliseconds.
    pub fn sent_timestamp_ms(&self) -> Option<u64> {
        self.attributes.get("SentTimestamp").and_then(|v| v.parse().ok())
    }

    /// Whether the source queue is a FIFO queue (its ARN ends in `.fifo`).
    pub fn from_fifo_queue(&self) -> bool {
        self.source_arn.as_deref().is_some_and(is_fifo_arn)
    }

    /// The message id the name follows: the original one a dead letter or a re-sent message
    /// carries ([`MESSAGE_ID_ATTRIBUTE`]), else the message's own.
    pub fn original_id(&self) -> &str {
        self.message_attributes
            .get(MESSAGE_ID_ATTRIBUTE)
            .and_then(|a| a.string_value.as_deref())
            .filter(|id| !id.is_empty())
            .unwrap_or(&self.id)
    }

    /// When a message re-sent to wait at the cap is due ([`DUE_AT_ATTRIBUTE`]), ms since the epoch.
    pub fn due_at_ms(&self) -> Option<u64> {
        self.message_attributes
            .get(DUE_AT_ATTRIBUTE)
            .and_then(|a| a.string_value.as_deref())
            .and_then(|v| v.parse().ok())
    }

    /// Whether the message comes back (it was received before, or re-sent while it waited): a
    /// message in the waiting line, due, rather than a fresh one.
    pub fn is_comeback(&self) -> bool {
        self.receive_count() > 1 || self.due_at_ms().is_some()
    }

    /// The producer's X-Ray trace header (`AWSTraceHeader`), as received.
    pub fn trace_header(&self) -> Option<&str> {
        self.attributes.get("AWSTraceHeader").map(String::as_str)
    }
}

/// Whether a queue ARN names a FIFO queue.
pub fn is_fifo_arn(arn: &str) -> bool {
    arn.ends_with(".fifo")
}

/// Why an event is not a usable SQS batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A record has no `messageId`: it could be neither acknowledged nor reported.
    #[error("not an SQS event: record {index} has no messageId")]
    MissingMessageId {
        /// The record's position in `Records`.
        index: usize,
    },
    /// A record comes from another event source.
    #[error("not an SQS event: record {index} has eventSource {event_source:?}")]
    NotSqs {
        /// The record's position in `Records`.
        index: usize,
        /// What the record says it comes from.
        event_source: String,
    },
}

/// Checks the event and returns its messages in order.
pub fn messages(event: SqsEvent) -> Result<Vec<Message>, EventError> {
    event
        .records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            if let Some(source) = record.event_source.as_deref() {
                if source != "aws:sqs" {
                    return Err(EventError::NotSqs {
                        index,
                        event_source: source.to_string(),
                    });
                }
            }
            let id = record
                .message_id
                .filter(|id| !id.is_empty())
                .ok_or(EventError::MissingMessageId { index })?;
            Ok(Message {
                id,
                receipt_handle: record.receipt_handle,
                body: record.body.unwrap_or_default(),
                attributes: record.attributes,
                message_attributes: record.message_attributes,
                source_arn: record.event_source_arn,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> SqsEvent {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn records_become_messages_in_order() {
        let e = event(serde_json::json!({"Records": [
            {"messageId": "a", "receiptHandle": "r", "body": "{}", "eventSource": "aws:sqs",
             "eventSourceARN": "arn:aws:sqs:us-east-1:1:q.fifo",
             "attributes": {"ApproximateReceiveCount": "3", "MessageGroupId": "g", "SentTimestamp": "1700000000000"}},
            {"messageId": "b"}
        ]}));
        let m = messages(e).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].id, "a");
        assert_eq!(m[0].receive_count(), 3);
        assert_eq!(m[0].group_id(), Some("g"));
        assert_eq!(m[0].sent_timestamp_ms(), Some(1_700_000_000_000));
        assert!(m[0].from_fifo_queue());
        assert_eq!(m[1].body, "");
        assert_eq!(m[1].receive_count(), 1);
        assert!(!m[1].from_fifo_queue());
    }

    #[test]
    fn a_record_without_id_or_from_elsewhere_is_an_error() {
        let missing = event(serde_json::json!({"Records": [{"messageId": "a"}, {"body": "x"}]}));
        assert_eq!(
            messages(missing).unwrap_err(),
            EventError::MissingMessageId { index: 1 }
        );
        let empty = event(serde_json::json!({"Records": [{"messageId": ""}]}));
        assert_eq!(messages(empty).unwrap_err(), EventError::MissingMessageId { index: 0 });
        let s3 = event(serde_json::json!({"Records": [{"messageId": "a", "eventSource": "aws:s3"}]}));
        assert!(matches!(messages(s3).unwrap_err(), EventError::NotSqs { index: 0, .. }));
    }
}
