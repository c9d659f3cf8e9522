//! Dead letters: what the function sends to the DLQ for a message that can never start; and the
//! same letter re-sent to a message's own queue while it waits at the cap ([`resend_letter`]).
//!
//! The body is unchanged. Message attributes carry why (see [`ATTR_PREFIX`]); the
//! message's own attributes follow while SQS's limit of 10 attributes allows. A re-sent message
//! keeps all of them, its identity and its trace header, or is not re-sent.

use std::collections::BTreeMap;

use crate::plan::claim_check::Pointer;
use aws_lambda_events::event::sqs::SqsMessageAttribute;

use crate::plan::event::{is_fifo_arn, Message, DUE_AT_ATTRIBUTE, MESSAGE_ID_ATTRIBUTE};
use crate::plan::name::execution_name;
use crate::plan::Rejection;

/// Prefix of the attributes this function adds.
pub const ATTR_PREFIX: &str = "sfn-pacer.";
/// SQS's limit on message attributes per message.
pub const MAX_ATTRIBUTES: usize = 10;
/// The reason attribute is cut to this many characters.
pub const MAX_REASON_CHARS: usize = 1024;
/// SQS's limit on one message, body and attributes together, in bytes (1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1_048_576;
/// `SendMessageBatch`: at most this many entries per call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// `SendMessageBatch`: at most this many bytes per call, all entries together (1 MiB).
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// The longest `DelaySeconds` SQS accepts: 15 minutes.
pub const MAX_DELAY_SECONDS: u32 = 900;

/// One message attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// `String` (or a custom `String.x` type), with its data type.
    String(String, String),
    /// `Number`, as text, with its data type.
    Number(String, String),
    /// `Binary`, with its data type.
    Binary(Vec<u8>, String),
}

/// A message the function sends: to the DLQ, or back to its own queue ([`resend_letter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original body, unchanged.
    pub body: String,
    /// Attributes by name.
    pub attributes: BTreeMap<String, AttributeValue>,
    /// FIFO DLQs: the message group (the original group, or `sfn-pacer`).
    pub group_id: Option<String>,
    /// FIFO DLQs: the deduplication id, derived from the message id.
    pub deduplication_id: Option<String>,
    /// The producer's X-Ray trace header, sent on as the system attribute `AWSTraceHeader`.
    pub trace_header: Option<String>,
    /// `DelaySeconds` (0 to [`MAX_DELAY_SECONDS`]; standard queues only).
    pub delay_seconds: u32,
}

impl DeadLetter {
    /// Its size as SQS counts it, in bytes: the body, and each attribute's name, data type and value.
    pub fn size(&self) -> usize {
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| {
                name.len()
                    + match value {
                        AttributeValue::String(v, t) | AttributeValue::Number(v, t) => v.len() + t.len(),
                        AttributeValue::Binary(v, t) => v.len() + t.len(),
                    }
            })
            .sum();
        self.body.len() + attributes
    }

    /// The letter whose body is in the claim-check bucket: the pointer as its body, and the
    /// object's URL in the attribute `sfn-pacer.claim-check`.
    pub fn with_claim_check(mut self, pointer: &Pointer) -> DeadLetter {
        self.body = pointer.to_json();
        self.attributes.insert(
            format!("{ATTR_PREFIX}claim-check"),
            AttributeValue::String(pointer.url(), "String".to_string()),
        );
        self
    }

    /// The letter within SQS's limit: as it is, or without the message's own attributes (the
    /// reason is kept). `Err(size)` when even that is too large.
    pub fn fit(mut self) -> Result<DeadLetter, usize> {
        if self.size() <= MAX_MESSAGE_BYTES {
            return Ok(self);
        }
        self.attributes.retain(|name, _| name.starts_with(ATTR_PREFIX));
        match self.size() {
            size if size <= MAX_MESSAGE_BYTES => Ok(self),
            size => Err(size),
        }
    }
}

/// Builds the dead letter for `message`, rejected for `rejection`, bound for `dlq_url`.
pub fn dead_letter(message: &Message, rejection: &Rejection, dlq_url: &str) -> DeadLetter {
    let string = |v: &str| AttributeValue::String(v.to_string(), "String".to_string());
    let mut attributes = BTreeMap::new();
    let reason: String = rejection.reason.chars().take(MAX_REASON_CHARS).collect();
    attributes.insert(format!("{ATTR_PREFIX}error-code"), string(&rejection.code));
    attributes.insert(format!("{ATTR_PREFIX}reason"), string(&reason));
    attributes.insert(MESSAGE_ID_ATTRIBUTE.to_string(), string(&message.id));
    attributes.insert(
        format!("{ATTR_PREFIX}receive-count"),
        AttributeValue::Number(message.receive_count().to_string(), "Number".to_string()),
    );
    attributes.insert(
        format!("{ATTR_PREFIX}source-queue"),
        string(message.source_arn.as_deref().unwrap_or("unknown")),
    );
    for (name, value) in originals(message) {
        if attributes.len() >= MAX_ATTRIBUTES {
            break;
        }
        attributes.insert(name, value);
    }
    let fifo = is_fifo_url(dlq_url);
    DeadLetter {
        body: message.body.clone(),
        attributes,
        group_id: fifo.then(|| message.group_id().unwrap_or("sfn-pacer").to_string()),
        deduplication_id: if fifo {
            execution_name(message.id.as_bytes())
        } else {
            None
        },
        trace_header: message.trace_header().map(str::to_string),
        delay_seconds: 0,
    }
}

/// The message's own attributes (not this function's), by name, as SQS takes them back.
fn originals(message: &Message) -> Vec<(String, AttributeValue)> {
    let mut out: Vec<(String, AttributeValue)> = message
        .message_attributes
        .iter()
        .filter(|(name, _)| !name.starts_with(ATTR_PREFIX))
        .filter_map(|(name, value)| Some((name.clone(), converted(value)?)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// An attribute as received, as SQS takes it back (`None`: it has no value).
fn converted(value: &SqsMessageAttribute) -> Option<AttributeValue> {
    let data_type = value.data_type.clone().unwrap_or_else(|| "String".to_string());
    if let Some(text) = &value.string_value {
        Some(match data_type.starts_with("Number") {
            true => AttributeValue::Number(text.clone(), data_type),
            false => AttributeValue::String(text.clone(), data_type),
        })
    } else {
        value
            .binary_value
            .as_ref()
            .map(|bytes| AttributeValue::Binary(bytes.0.clone(), data_type))
    }
}

/// The message re-sent to its own (standard) queue to wait longer at the cap, `delay_seconds`
/// from now (at most [`MAX_DELAY_SECONDS`]): its body, every one of its own attributes, its
/// identity (`sfn-pacer.message-id`: the execution name keeps following it, as a redriven dead
/// letter's does), when it is due (`sfn-pacer.due-at`, ms since the epoch) and its trace header.
/// `None` when that does not fit SQS's limits (10 attributes, 1 MiB): then it is not re-sent.
pub fn resend_letter(message: &Message, due_at_ms: u64, delay_seconds: u32) -> Option<DeadLetter> {
    let string = |v: &str| AttributeValue::String(v.to_string(), "String".to_string());
    let mut attributes: BTreeMap<String, AttributeValue> = originals(message).into_iter().collect();
    attributes.insert(MESSAGE_ID_ATTRIBUTE.to_string(), string(message.original_id()));
    attributes.insert(
        DUE_AT_ATTRIBUTE.to_string(),
        AttributeValue::Number(due_at_ms.to_string(), "Number".to_string()),
    );
    let letter = DeadLetter {
        body: message.body.clone(),
        attributes,
        group_id: None,
        deduplication_id: None,
        trace_header: message.trace_header().map(str::to_string),
        delay_seconds: delay_seconds.min(MAX_DELAY_SECONDS),
    };
    (letter.attributes.len() <= MAX_ATTRIBUTES && letter.size() <= MAX_MESSAGE_BYTES).then_some(letter)
}

/// Whether a queue URL (or ARN) names a FIFO queue.
pub fn is_fifo_url(url: &str) -> bool {
    is_fifo_arn(url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_over_the_limit_drops_the_copied_attributes_and_keeps_its_reason() {
        let mut m = message();
        m.message_attributes.insert(
            "big".into(),
            serde_json::from_value(serde_json::json!({"stringValue": "y".repeat(2_000), "dataType": "String"}))
                .unwrap(),
        );
        m.body = "x".repeat(MAX_MESSAGE_BYTES - 1_000);
        let letter = dead_letter(&m, &Rejection::new("InputTooLarge", "too big"), "https://q/dlq");
        assert!(letter.size() > MAX_MESSAGE_BYTES);
        let fitted = letter.fit().unwrap();
        assert!(fitted.size() <= MAX_MESSAGE_BYTES);
        assert!(!fitted.attributes.contains_key("big"));
        assert!(fitted.attributes.contains_key("sfn-pacer.reason"));
        m.body = "x".repeat(MAX_MESSAGE_BYTES);
        let too_big = dead_letter(&m, &Rejection::new("InputTooLarge", "too big"), "https://q/dlq");
        assert!(too_big.fit().unwrap_err() > MAX_MESSAGE_BYTES);
    }

    fn message() -> Message {
        let mut m = Message {
            id: "id-1".into(),
            body: "not json".into(),
            source_arn: Some("arn:aws:sqs:us-east-1:1:work".into()),
            ..Message::default()
        };
        m.attributes.insert("ApproximateReceiveCount".into(), "2".into());
        m
    }

    #[test]
    fn carries_the_reason_and_the_body_unchanged() {
        let letter = dead_letter(
            &message(),
            &Rejection::new("BodyNotJson", "the body is not JSON"),
            "https://q/dlq",
        );
        assert_eq!(letter.body, "not json");
        let get = |k: &str| letter.attributes.get(&format!("{ATTR_PREFIX}{k}")).cloned().unwrap();
        assert_eq!(
            get("error-code"),
            AttributeValue::String("BodyNotJson".into(), "String".into())
        );
        assert_eq!(
            get("reason"),
            AttributeValue::String("the body is not JSON".into(), "String".into())
        );
        assert_eq!(
            get("message-id"),
            AttributeValue::String("id-1".into(), "String".into())
        );
        assert_eq!(
            get("receive-count"),
            AttributeValue::Number("2".into(), "Number".into())
        );
        assert_eq!(
            get("source-queue"),
            AttributeValue::String("arn:aws:sqs:us-east-1:1:work".into(), "String".into())
        );
        assert_eq!(letter.group_id, None);
        assert_eq!(letter.deduplication_id, None);
    }

    #[test]
    fn fifo_dlqs_get_group_and_deduplication_ids() {
        let mut m = message();
        m.attributes.insert("MessageGroupId".into(), "g-1".into());
        let letter = dead_letter(&m, &Rejection::new("X", "y"), "https://q/dlq.fifo");
        assert_eq!(letter.group_id.as_deref(), Some("g-1"));
        assert_eq!(letter.deduplication_id.as_deref(), Some("id-1"));
    }

    #[test]
    fn a_resent_message_keeps_its_identity_attributes_and_trace() {
        let mut m = message();
        m.body = "{}".into();
        m.attributes.insert("AWSTraceHeader".into(), "Root=1-abc".into());
        let attr =
            |v: &str| serde_json::from_value(serde_json::json!({"stringValue": v, "dataType": "String"})).unwrap();
        m.message_attributes.insert("OrderId".into(), attr("o-7"));
        let letter = resend_letter(&m, 1_800_000_000_000, 2_000).unwrap();
        assert_eq!(letter.body, "{}");
        assert_eq!(letter.delay_seconds, MAX_DELAY_SECONDS, "SQS delays at most 15 minutes");
        assert_eq!(letter.trace_header.as_deref(), Some("Root=1-abc"));
        assert_eq!(
            letter.attributes["OrderId"],
            AttributeValue::String("o-7".into(), "String".into())
        );
        assert_eq!(
            letter.attributes[MESSAGE_ID_ATTRIBUTE],
            AttributeValue::String("id-1".into(), "String".into())
        );
        // Re-sent again, it keeps the first id, not its new one.
        m.id = "id-2".into();
        m.message_attributes.insert(MESSAGE_ID_ATTRIBUTE.into(), attr("id-1"));
        let again = resend_letter(&m, 1_800_000_000_000, 5).unwrap();
        assert_eq!(
            again.attributes[MESSAGE_ID_ATTRIBUTE],
            AttributeValue::String("id-1".into(), "String".into())
        );
        // Nine attributes of its own leave no room for the two it needs: not re-sent.
        for i in 0..8 {
            m.message_attributes.insert(format!("a{i}"), attr("v"));
        }
        assert!(resend_letter(&m, 1, 5).is_none());
    }

    #[test]
    fn original_attributes_follow_within_the_limit_of_ten() {
        let mut m = message();
        for i in 0..8 {
            let attr =
                serde_json::from_value(serde_json::json!({"stringValue": format!("v{i}"), "dataType": "String"}));
            m.message_attributes.insert(format!("a{i}"), attr.unwrap());
        }
        let long_reason = "r".repeat(5000);
        let letter = dead_letter(&m, &Rejection::new("X", long_reason), "https://q/dlq");
        assert_eq!(letter.attributes.len(), MAX_ATTRIBUTES);
        assert!(letter.attributes.contains_key("a0") && letter.attributes.contains_key("a4"));
        assert!(!letter.attributes.contains_key("a5"));
        match &letter.attributes[&format!("{ATTR_PREFIX}reason")] {
            AttributeValue::String(r, _) => assert_eq!(r.len(), MAX_REASON_CHARS),
            other => panic!("{other:?}"),
        }
    }
}
