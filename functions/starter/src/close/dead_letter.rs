//! Dead letters: what the function sends to the DLQ for a message that can never start.
//!
//! The body is unchanged. Message attributes carry why (see [`ATTR_PREFIX`]); the
//! message's own attributes follow while SQS's limit of 10 attributes allows.

use std::collections::BTreeMap;

use crate::plan::claim_check::Pointer;
use crate::plan::event::{is_fifo_arn, Message, MESSAGE_ID_ATTRIBUTE};
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

/// A message for the DLQ.
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
    let mut originals: Vec<_> = message.message_attributes.iter().collect();
    originals.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in originals {
        if attributes.len() >= MAX_ATTRIBUTES || name.starts_with(ATTR_PREFIX) {
            continue;
        }
        let data_type = value.data_type.clone().unwrap_or_else(|| "String".to_string());
        let converted = if let Some(text) = &value.string_value {
            if data_type.starts_with("Number") {
                AttributeValue::Number(text.clone(), data_type)
            } else {
                AttributeValue::String(text.clone(), data_type)
            }
        } else if let Some(bytes) = &value.binary_value {
            AttributeValue::Binary(bytes.0.clone(), data_type)
        } else {
            continue;
        };
        attributes.insert(name.clone(), converted);
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
    }
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
