//! Planning: what each message asks for — the execution name and input — or why it can't be
//! started at all (a permanent [`Rejection`]).

pub mod batch;
pub mod claim_check;
pub mod event;
pub mod name;

use serde::de::IgnoredAny;
use serde_json::{json, Value};

use crate::config::{Config, InputMode, NameSource};
use crate::plan::event::Message;
use crate::plan::name::{execution_name, random_name};

/// The largest execution input Step Functions accepts, in UTF-8 bytes.
pub const MAX_INPUT_BYTES: usize = 262_144;

/// A StartExecution to make for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The execution name; `None` lets AWS pick one (`EXECUTION_NAME=none`).
    pub name: Option<String>,
    /// The execution input: valid JSON, of at most [`MAX_INPUT_BYTES`] unless a claim-check
    /// bucket is configured (then the start phase stores a larger one and passes a pointer).
    pub input: String,
    /// The producer's X-Ray trace header (the record's `AWSTraceHeader`), passed on as
    /// StartExecution's `traceHeader` so the trace continues into the execution.
    pub trace_header: Option<String>,
}

/// The longest `traceHeader` StartExecution accepts, in characters.
pub const MAX_TRACE_HEADER_CHARS: usize = 256;

/// The record's trace header, if it is one StartExecution accepts (a malformed one is
/// dropped: a trace is not worth failing a start for).
fn trace_header(message: &Message) -> Option<String> {
    let header = message.trace_header()?;
    let valid = !header.is_empty()
        && header.len() <= MAX_TRACE_HEADER_CHARS
        && header.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    valid.then(|| header.to_string())
}

/// Why a message can never start, whatever the retries: a permanent failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A short machine-readable code, e.g. `BodyNotJson`.
    pub code: String,
    /// A one-line human-readable reason (never contains the body).
    pub reason: String,
}

impl Rejection {
    /// A rejection with the given code and reason.
    pub fn new(code: impl Into<String>, reason: impl Into<String>) -> Rejection {
        Rejection {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

/// Plans the execution for `message`, or rejects it permanently.
pub fn plan(message: &Message, config: &Config) -> Result<Plan, Rejection> {
    let name = match &config.name_source {
        // The cap's holder needs the name before the answer: the one AWS would pick, chosen here.
        NameSource::None if config.running.is_some() => Some(random_name()),
        NameSource::None => None,
        source => {
            let key = name_key(message, source)?;
            Some(execution_name(&key).ok_or_else(|| Rejection::new("NoUsableName", "the name key is empty"))?)
        }
    };
    let input = check_size(input(message, config.input_mode)?, config)?;
    Ok(Plan {
        name,
        input,
        trace_header: trace_header(message),
    })
}

/// The raw key the name is derived from.
fn name_key(message: &Message, source: &NameSource) -> Result<Vec<u8>, Rejection> {
    match source {
        NameSource::MessageId | NameSource::None => Ok(message.original_id().as_bytes().to_vec()),
        NameSource::Attribute(attribute) => {
            let value = message
                .message_attributes
                .get(attribute)
                .ok_or_else(|| Rejection::new("NoUsableName", format!("message attribute {attribute:?} is missing")))?;
            if let Some(text) = &value.string_value {
                Ok(text.clone().into_bytes())
            } else if let Some(bytes) = &value.binary_value {
                Ok(bytes.0.clone())
            } else {
                Err(Rejection::new(
                    "NoUsableName",
                    format!("message attribute {attribute:?} has no value"),
                ))
            }
        }
        NameSource::BodyPointer(pointer) => {
            let body: Value = serde_json::from_str(&message.body).map_err(|e| {
                Rejection::new(
                    "NoUsableName",
                    format!("the name comes from body {pointer} but the body is not JSON: {e}"),
                )
            })?;
            match body.pointer(pointer) {
                None | Some(Value::Null) => Err(Rejection::new(
                    "NoUsableName",
                    format!("the body has no value at {pointer}"),
                )),
                Some(Value::String(text)) => Ok(text.clone().into_bytes()),
                Some(other) => Ok(other.to_string().into_bytes()),
            }
        }
    }
}

/// The execution input for the configured mode.
fn input(message: &Message, mode: InputMode) -> Result<String, Rejection> {
    let input = match mode {
        InputMode::Body => {
            // Validate without re-serialising: the body is passed on byte for byte.
            serde_json::from_str::<IgnoredAny>(&message.body)
                .map_err(|e| Rejection::new("BodyNotJson", format!("the body is not JSON (INPUT=body): {e}")))?;
            message.body.clone()
        }
        InputMode::Envelope => {
            let body =
                serde_json::from_str::<Value>(&message.body).unwrap_or_else(|_| Value::String(message.body.clone()));
            let envelope = json!({
                "messageId": message.id,
                "body": body,
                "attributes": message.attributes,
                "messageAttributes": message.message_attributes,
                "sentTimestamp": message.sent_timestamp_ms(),
            });
            envelope.to_string()
        }
    };
    Ok(input)
}

/// An input over Step Functions' limit is rejected, unless a claim-check bucket takes it
/// (`CLAIM_CHECK_BUCKET`: the start phase stores it and passes a pointer).
fn check_size(input: String, config: &Config) -> Result<String, Rejection> {
    if input.len() <= MAX_INPUT_BYTES || config.claim_check_bucket.is_some() {
        return Ok(input);
    }
    Err(Rejection::new(
        "InputTooLarge",
        format!(
            "the input is {} bytes, over the {MAX_INPUT_BYTES}-byte Step Functions limit (set CLAIM_CHECK_BUCKET to pass it through S3)",
            input.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::event::MESSAGE_ID_ATTRIBUTE;
    use aws_lambda_events::event::sqs::SqsMessageAttribute;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let mut all = vec![("STATE_MACHINE_ARN", "arn:aws:states:us-east-1:1:stateMachine:m")];
        all.extend_from_slice(pairs);
        Config::from_lookup(|k| all.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
    }

    fn message(body: &str) -> Message {
        Message {
            id: "m-1".into(),
            body: body.into(),
            ..Message::default()
        }
    }

    fn attribute(json: Value) -> SqsMessageAttribute {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_trace_header_is_passed_on_when_start_execution_accepts_it() {
        let mut m = message("{}");
        assert_eq!(plan(&m, &config(&[])).unwrap().trace_header, None);
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        m.attributes.insert("AWSTraceHeader".into(), header.into());
        assert_eq!(plan(&m, &config(&[])).unwrap().trace_header.as_deref(), Some(header));
        for bad in ["x".repeat(MAX_TRACE_HEADER_CHARS + 1), "Root=1\nx".to_string()] {
            m.attributes.insert("AWSTraceHeader".into(), bad);
            assert_eq!(plan(&m, &config(&[])).unwrap().trace_header, None);
        }
    }

    #[test]
    fn a_redriven_dead_letter_keeps_its_original_name() {
        let mut m = message("{}");
        assert_eq!(plan(&m, &config(&[])).unwrap().name.as_deref(), Some("m-1"));
        m.id = "new-id-after-redrive".into();
        m.message_attributes.insert(
            MESSAGE_ID_ATTRIBUTE.into(),
            attribute(json!({"stringValue": "m-1", "dataType": "String"})),
        );
        assert_eq!(plan(&m, &config(&[])).unwrap().name.as_deref(), Some("m-1"));
    }

    #[test]
    fn body_mode_passes_the_body_as_is() {
        let body = "{ \"b\": 1,\n  \"a\": [1, 2] }";
        let p = plan(&message(body), &config(&[])).unwrap();
        assert_eq!(
            p,
            Plan {
                name: Some("m-1".into()),
                input: body.into(),
                trace_header: None,
            }
        );
    }

    #[test]
    fn body_mode_rejects_what_is_not_json() {
        for body in ["", "not json", "{\"a\":", "{} trailing"] {
            let r = plan(&message(body), &config(&[])).unwrap_err();
            assert_eq!(r.code, "BodyNotJson", "{body:?}");
        }
    }

    #[test]
    fn oversized_input_is_rejected_and_the_limit_itself_passes() {
        let pad = |n: usize| format!("\"{}\"", "x".repeat(n - 2));
        assert!(plan(&message(&pad(MAX_INPUT_BYTES)), &config(&[])).is_ok());
        let r = plan(&message(&pad(MAX_INPUT_BYTES + 1)), &config(&[])).unwrap_err();
        assert_eq!(r.code, "InputTooLarge");
        let mib = pad(1024 * 1024);
        assert_eq!(plan(&message(&mib), &config(&[])).unwrap_err().code, "InputTooLarge");
        let claim_check = config(&[("CLAIM_CHECK_BUCKET", "inputs")]);
        assert_eq!(
            plan(&message(&mib), &claim_check).unwrap().input,
            mib,
            "passed on whole, to be stored"
        );
    }

    #[test]
    fn envelope_mode_wraps_any_body() {
        let mut m = message("plain text");
        m.attributes.insert("SentTimestamp".into(), "1700000000000".into());
        m.message_attributes
            .insert("k".into(), attribute(json!({"stringValue": "v", "dataType": "String"})));
        let p = plan(&m, &config(&[("INPUT", "envelope")])).unwrap();
        let v: Value = serde_json::from_str(&p.input).unwrap();
        assert_eq!(v["messageId"], "m-1");
        assert_eq!(v["body"], "plain text");
        assert_eq!(v["sentTimestamp"], 1_700_000_000_000u64);
        assert_eq!(v["attributes"]["SentTimestamp"], "1700000000000");
        assert_eq!(v["messageAttributes"]["k"]["stringValue"], "v");
        let json_body = plan(&message("{\"a\":1}"), &config(&[("INPUT", "envelope")])).unwrap();
        let v: Value = serde_json::from_str(&json_body.input).unwrap();
        assert_eq!(v["body"]["a"], 1, "a JSON body is embedded parsed");
    }

    #[test]
    fn names_come_from_attributes() {
        let c = config(&[("EXECUTION_NAME", "attribute:OrderId")]);
        let mut m = message("{}");
        assert_eq!(plan(&m, &c).unwrap_err().code, "NoUsableName");
        m.message_attributes.insert(
            "OrderId".into(),
            attribute(json!({"stringValue": "o-7", "dataType": "String"})),
        );
        assert_eq!(plan(&m, &c).unwrap().name.as_deref(), Some("o-7"));
        // Binary values that are not UTF-8 still give a valid, deterministic name.
        m.message_attributes.insert(
            "OrderId".into(),
            attribute(json!({"binaryValue": "/w==", "dataType": "Binary"})),
        );
        let name = plan(&m, &c).unwrap().name.unwrap();
        assert!(crate::plan::name::is_valid_name(&name));
        assert_eq!(Some(name), plan(&m, &c).unwrap().name);
        m.message_attributes.insert(
            "OrderId".into(),
            attribute(json!({"stringValue": "", "dataType": "String"})),
        );
        assert_eq!(plan(&m, &c).unwrap_err().code, "NoUsableName", "empty value");
    }

    #[test]
    fn names_come_from_body_pointers() {
        let c = config(&[("EXECUTION_NAME", "body:/order/id")]);
        assert_eq!(
            plan(&message(r#"{"order":{"id":"o/1"}}"#), &c)
                .unwrap()
                .name
                .unwrap()
                .len(),
            "o_1-".len() + 20
        );
        assert_eq!(
            plan(&message(r#"{"order":{"id":42}}"#), &c).unwrap().name.as_deref(),
            Some("42")
        );
        for body in [
            r#"{"order":{}}"#,
            r#"{"order":{"id":null}}"#,
            r#"{"order":{"id":""}}"#,
            "nope",
        ] {
            assert_eq!(plan(&message(body), &c).unwrap_err().code, "NoUsableName", "{body}");
        }
    }

    #[test]
    fn no_name_mode_leaves_the_name_to_aws() {
        assert_eq!(
            plan(&message("{}"), &config(&[("EXECUTION_NAME", "none")]))
                .unwrap()
                .name,
            None
        );
    }
}
