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

//! The types are `aws_lambda_events`' own ([`SqsMessage`], [`SqsEvent`]): the event is what that
//! crate serialises, the same type the function deserialises.

pub use aws_lambda_events::encodings::Base64Data;
pub use aws_lambda_events::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};

/// One message as received from SQS, in the shape of its record in the event. Every receive
/// sets `message_id` and `receipt_handle`; the event source fields are set by [`sqs_event`].
pub type ReceivedMessage = SqsMessage;

/// Bytes a record adds to the event beyond its body, receipt handle and attributes (keys,
/// ARN, region, quoting); an over-estimate used to keep events under the invoke payload limit.
const RECORD_OVERHEAD_BYTES: usize = 512;

/// Binary data for a record's attribute (the type is `#[non_exhaustive]`).
pub fn base64_data(bytes: &[u8]) -> Base64Data {
    let mut data = Base64Data::default();
    data.extend_from_slice(bytes);
    data
}

/// The message id of a received message ("" if SQS gave none).
pub fn message_id(m: &ReceivedMessage) -> &str {
    m.message_id.as_deref().unwrap_or_default()
}

/// The receipt handle of a received message ("" if SQS gave none).
pub fn receipt_handle(m: &ReceivedMessage) -> &str {
    m.receipt_handle.as_deref().unwrap_or_default()
}

/// An over-estimate of a message's size in the event JSON, in bytes.
pub fn estimated_size(m: &ReceivedMessage) -> usize {
    let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let attributes: usize = m.attributes.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let message_attributes: usize = m
        .message_attributes
        .iter()
        .map(|(k, v)| {
            let binary = v.binary_value.as_ref().map_or(0, |b| b.0.len() * 4 / 3 + 4);
            k.len() + len(&v.string_value) + binary + len(&v.data_type) + 96
        })
        .sum();
    // Escaping can double a body's size in the worst case (mostly quotes or controls
    // would be more); bodies are JSON strings in the event.
    len(&m.body) * 2
        + len(&m.receipt_handle)
        + len(&m.message_id)
        + len(&m.md5_of_body)
        + len(&m.md5_of_message_attributes)
        + attributes
        + message_attributes
        + RECORD_OVERHEAD_BYTES
}

/// The SQS event for a batch: the messages with `eventSource`, `eventSourceARN` and `awsRegion` set.
pub fn sqs_event(messages: &[ReceivedMessage], queue_arn: &str, region: &str) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| {
            let mut record = m.clone();
            record.event_source = Some("aws:sqs".to_string());
            record.event_source_arn = Some(queue_arn.to_string());
            record.aws_region = Some(region.to_string());
            record
        })
        .collect();
    event
}

/// The SQS event for a batch, as JSON bytes.
pub fn event_json(messages: &[ReceivedMessage], queue_arn: &str, region: &str) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&sqs_event(messages, queue_arn, region))
}

/// The region of an ARN (`arn:aws:sqs:<region>:<account>:<name>`), if it has one.
pub fn region_from_arn(arn: &str) -> Option<&str> {
    let region = arn.split(':').nth(3)?;
    (!region.is_empty()).then_some(region)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:work";

    fn message(id: &str, body: &str) -> ReceivedMessage {
        let mut m = ReceivedMessage::default();
        m.message_id = Some(id.into());
        m.receipt_handle = Some(format!("rh-{id}"));
        m.body = Some(body.into());
        m.md5_of_body = Some("0123456789abcdef0123456789abcdef".into());
        for (k, v) in [
            ("ApproximateReceiveCount", "2"),
            ("SentTimestamp", "1700000000000"),
            ("SenderId", "AIDAEXAMPLE"),
            ("ApproximateFirstReceiveTimestamp", "1700000000500"),
        ] {
            m.attributes.insert(k.into(), v.into());
        }
        let mut key = SqsMessageAttribute::default();
        key.string_value = Some(format!("k-{id}"));
        key.data_type = Some("String".into());
        m.message_attributes.insert("key".into(), key);
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
        assert!(key["binaryValue"].is_null());
    }

    #[test]
    fn event_parses_as_aws_lambda_events_sqs_event() {
        let mut fifo = message("m2", "not json");
        fifo.attributes.insert("MessageGroupId".into(), "g1".into());
        fifo.attributes.insert("MessageDeduplicationId".into(), "d2".into());
        fifo.attributes
            .insert("SequenceNumber".into(), "18849496460467696128".into());
        let mut blob = SqsMessageAttribute::default();
        blob.binary_value = Some(base64_data(&[0, 1]));
        blob.data_type = Some("Binary".into());
        fifo.message_attributes.insert("blob".into(), blob);
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
        assert!(estimated_size(&m) >= actual, "{} < {actual}", estimated_size(&m));
    }
}
