//! The SQS event a Lambda function receives from an event source mapping:
//!
//! ```json
//! {"Records":[{"messageId":"…","receiptHandle":"…","body":"…",
//!   "attributes":{"ApproximateReceiveCount":"1","SentTimestamp":"…","SenderId":"…",
//!                 "ApproximateFirstReceiveTimestamp":"…"},
//!   "messageAttributes":{"key":{"stringValue":"…","stringListValues":[],"binaryListValues":[],
//!                               "dataType":"String"}},
//!   "md5OfBody":"…","eventSource":"aws:sqs","eventSourceARN":"arn:aws:sqs:…","awsRegion":"…"}]}
//! ```
//!
//! FIFO queues add `MessageGroupId`, `MessageDeduplicationId` and `SequenceNumber` to
//! `attributes`. The system attributes are passed on as SQS returned them.

use std::collections::BTreeMap;

use serde::Serialize;

/// Bytes a record adds to the event beyond its body, receipt handle and attributes (keys,
/// ARN, region, quoting); an over-estimate used to keep events under the invoke payload limit.
const RECORD_OVERHEAD_BYTES: usize = 512;

/// One message as received from SQS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The SQS message id.
    pub message_id: String,
    /// The receipt handle of this receive.
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// The MD5 of the body (hex), as SQS computed it.
    pub md5_of_body: String,
    /// System attributes (`ApproximateReceiveCount`, `SentTimestamp`, …) by name.
    pub attributes: BTreeMap<String, String>,
    /// Message attributes by name.
    pub message_attributes: BTreeMap<String, MessageAttribute>,
}

/// A message attribute, in the event's shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageAttribute {
    /// The value of a `String` or `Number` attribute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    /// The value of a `Binary` attribute, base64-encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
    /// Reserved by SQS; always empty in practice.
    pub string_list_values: Vec<String>,
    /// Reserved by SQS; always empty in practice (base64 items).
    pub binary_list_values: Vec<String>,
    /// `String`, `Number`, `Binary`, or one of those with a custom suffix.
    pub data_type: String,
}

impl ReceivedMessage {
    /// An over-estimate of this message's size in the event JSON, in bytes.
    pub fn estimated_size(&self) -> usize {
        let attributes: usize = self.attributes.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let message_attributes: usize = self
            .message_attributes
            .iter()
            .map(|(k, v)| {
                k.len()
                    + v.string_value.as_ref().map_or(0, String::len)
                    + v.binary_value.as_ref().map_or(0, String::len)
                    + v.data_type.len()
                    + 96
            })
            .sum();
        // Escaping can double a body's size in the worst case (mostly quotes or controls
        // would be more); bodies are JSON strings in the event.
        self.body.len() * 2
            + self.receipt_handle.len()
            + self.message_id.len()
            + self.md5_of_body.len()
            + attributes
            + message_attributes
            + RECORD_OVERHEAD_BYTES
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    message_id: &'a str,
    receipt_handle: &'a str,
    body: &'a str,
    attributes: &'a BTreeMap<String, String>,
    message_attributes: &'a BTreeMap<String, MessageAttribute>,
    md5_of_body: &'a str,
    event_source: &'static str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
    aws_region: &'a str,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "Records")]
    records: Vec<Record<'a>>,
}

/// The SQS event for a batch, as JSON bytes.
pub fn event_json(messages: &[ReceivedMessage], queue_arn: &str, region: &str) -> Result<Vec<u8>, serde_json::Error> {
    let records = messages
        .iter()
        .map(|m| Record {
            message_id: &m.message_id,
            receipt_handle: &m.receipt_handle,
            body: &m.body,
            attributes: &m.attributes,
            message_attributes: &m.message_attributes,
            md5_of_body: &m.md5_of_body,
            event_source: "aws:sqs",
            event_source_arn: queue_arn,
            aws_region: region,
        })
        .collect();
    serde_json::to_vec(&Event { records })
}

/// The region of an ARN (`arn:aws:sqs:<region>:<account>:<name>`), if it has one.
pub fn region_from_arn(arn: &str) -> Option<&str> {
    let region = arn.split(':').nth(3)?;
    (!region.is_empty()).then_some(region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::sqs::SqsEvent;

    const ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:work";

    fn message(id: &str, body: &str) -> ReceivedMessage {
        let mut m = ReceivedMessage {
            message_id: id.into(),
            receipt_handle: format!("rh-{id}"),
            body: body.into(),
            md5_of_body: "0123456789abcdef0123456789abcdef".into(),
            ..ReceivedMessage::default()
        };
        for (k, v) in [
            ("ApproximateReceiveCount", "2"),
            ("SentTimestamp", "1700000000000"),
            ("SenderId", "AIDAEXAMPLE"),
            ("ApproximateFirstReceiveTimestamp", "1700000000500"),
        ] {
            m.attributes.insert(k.into(), v.into());
        }
        m.message_attributes.insert(
            "key".into(),
            MessageAttribute {
                string_value: Some(format!("k-{id}")),
                data_type: "String".into(),
                ..Default::default()
            },
        );
        m
    }

    #[test]
    fn event_has_the_lambda_record_shape() {
        let bytes = event_json(&[message("m1", r#"{"id":"1"}"#)], ARN, "eu-west-1").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let r = &v["Records"][0];
        assert_eq!(r["messageId"], "m1");
        assert_eq!(r["receiptHandle"], "rh-m1");
        assert_eq!(r["body"], r#"{"id":"1"}"#);
        assert_eq!(r["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(r["attributes"]["SenderId"], "AIDAEXAMPLE");
        assert_eq!(r["md5OfBody"], "0123456789abcdef0123456789abcdef");
        assert_eq!(r["eventSource"], "aws:sqs");
        assert_eq!(r["eventSourceARN"], ARN);
        assert_eq!(r["awsRegion"], "eu-west-1");
        let key = &r["messageAttributes"]["key"];
        assert_eq!(key["stringValue"], "k-m1");
        assert_eq!(key["dataType"], "String");
        assert_eq!(key["stringListValues"], serde_json::json!([]));
        assert_eq!(key["binaryListValues"], serde_json::json!([]));
        assert!(key.get("binaryValue").is_none());
    }

    #[test]
    fn event_parses_as_aws_lambda_events_sqs_event() {
        let mut fifo = message("m2", "not json");
        fifo.attributes.insert("MessageGroupId".into(), "g1".into());
        fifo.attributes.insert("MessageDeduplicationId".into(), "d2".into());
        fifo.attributes
            .insert("SequenceNumber".into(), "18849496460467696128".into());
        fifo.message_attributes.insert(
            "blob".into(),
            MessageAttribute {
                binary_value: Some(aws_smithy_types::base64::encode(b"\x00\x01")),
                data_type: "Binary".into(),
                ..Default::default()
            },
        );
        let bytes = event_json(&[message("m1", "{}"), fifo], ARN, "eu-west-1").unwrap();
        let event: SqsEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(event.records.len(), 2);
        let r = &event.records[1];
        assert_eq!(r.message_id.as_deref(), Some("m2"));
        assert_eq!(r.body.as_deref(), Some("not json"));
        assert_eq!(r.event_source_arn.as_deref(), Some(ARN));
        assert_eq!(r.attributes.get("MessageGroupId").map(String::as_str), Some("g1"));
        assert_eq!(r.message_attributes["key"].string_value.as_deref(), Some("k-m2"));
        let blob = r.message_attributes["blob"].binary_value.as_ref().unwrap();
        assert_eq!(blob.0, vec![0, 1]);
    }

    #[test]
    fn empty_batch_is_an_empty_records_list() {
        assert_eq!(
            event_json(&[], ARN, "us-east-1").unwrap(),
            br#"{"Records":[]}"#.to_vec()
        );
    }

    #[test]
    fn regions_from_arns() {
        assert_eq!(region_from_arn(ARN), Some("eu-west-1"));
        assert_eq!(region_from_arn("arn:aws:sqs::1:q"), None);
        assert_eq!(region_from_arn("nonsense"), None);
    }

    #[test]
    fn size_estimate_covers_the_json() {
        let m = message("m1", &"\"".repeat(1000));
        let actual = event_json(std::slice::from_ref(&m), ARN, "eu-west-1").unwrap().len();
        assert!(m.estimated_size() >= actual, "{} < {actual}", m.estimated_size());
    }
}
