//! What to delete after an invocation, from its outcome, as AWS's SQS event source mapping
//! decides with `FunctionResponseTypes: [ReportBatchItemFailures]`:
//!
//! - a function error or a timeout fails the whole batch: delete nothing;
//! - an empty body, `null`, `{}`, or an empty or `null` `batchItemFailures` list: delete all;
//! - a valid list: delete every record not listed; the listed ones become visible again;
//! - an invalid response (not JSON, not an object, an entry without a non-empty string
//!   `itemIdentifier`, or an identifier that is not a message id of the batch) fails the
//!   whole batch.
//!
//! How a function error shows: the Lambda Invoke API answers 200 with an
//! `X-Amz-Function-Error` header; `cargo lambda watch` (1.9) answers **500** with the
//! runtime's error document `{"errorType":…,"errorMessage":…}` for a handler error, and
//! **200** with that same document for an initialization error; it answers 404 for an unknown
//! function. So: any status other than 200, the header, or a 200 body that is an error
//! document (`errorType`/`errorMessage` and no `batchItemFailures`) is a function error.

use std::collections::HashSet;
use std::time::Duration;

/// Most characters of a response body quoted in a reason.
const SNIPPET_CHARS: usize = 300;

/// How an invocation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvokeOutcome {
    /// The endpoint answered.
    Response {
        /// HTTP status code.
        status: u16,
        /// The `X-Amz-Function-Error` header, if present.
        function_error: Option<String>,
        /// The response body.
        body: Vec<u8>,
    },
    /// No answer: connection refused or reset, a malformed HTTP response, …
    Transport(String),
    /// No answer within the function timeout.
    TimedOut(Duration),
}

/// The kind of result of one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record acknowledged.
    Success,
    /// Some records reported in `batchItemFailures`.
    PartialFailure,
    /// The response could not be accepted; the whole batch is retried.
    InvalidResponse(String),
    /// The function failed (or could not be reached); the whole batch is retried.
    FunctionError(String),
    /// The invocation timed out; the whole batch is retried.
    Timeout(Duration),
}

/// What to do with a batch after its invocation. Indices refer to the batch's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Records to delete (acknowledged).
    pub delete: Vec<usize>,
    /// Records to leave for a retry (they become visible again).
    pub retry: Vec<usize>,
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(SNIPPET_CHARS).collect();
    if text.chars().count() > SNIPPET_CHARS {
        s.push('…');
    }
    s
}

/// The function error a response carries, if any.
pub fn function_error(status: u16, header: Option<&str>, body: &[u8]) -> Option<String> {
    let doc = serde_json::from_slice::<serde_json::Value>(body).ok();
    let error_doc = doc.as_ref().and_then(|v| v.as_object()).and_then(|o| {
        if o.contains_key("batchItemFailures") {
            return None;
        }
        let kind = o.get("errorType").and_then(|v| v.as_str());
        let message = o.get("errorMessage").and_then(|v| v.as_str());
        if kind.is_none() && message.is_none() {
            return None;
        }
        Some(format!("{}: {}", kind.unwrap_or("Error"), message.unwrap_or_default()))
    });
    if status != 200 {
        let detail = error_doc.unwrap_or_else(|| snippet(body));
        return Some(format!("HTTP {status}: {detail}"));
    }
    if let Some(kind) = header {
        let detail = error_doc.unwrap_or_else(|| snippet(body));
        return Some(format!("{kind}: {detail}"));
    }
    error_doc
}

/// The message ids a valid partial batch response lists as failed.
pub fn parse_batch_response(body: &[u8], batch_ids: &HashSet<&str>) -> Result<HashSet<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(HashSet::new());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("response is not JSON ({e}): {}", snippet(body)))?;
    let object = match value {
        serde_json::Value::Null => return Ok(HashSet::new()),
        serde_json::Value::Object(object) => object,
        other => {
            return Err(format!(
                "response is not a JSON object: {}",
                snippet(other.to_string().as_bytes())
            ))
        }
    };
    let items = match object.get("batchItemFailures") {
        None | Some(serde_json::Value::Null) => return Ok(HashSet::new()),
        Some(serde_json::Value::Array(items)) => items,
        Some(other) => return Err(format!("batchItemFailures is not a list: {other}")),
    };
    let mut failed = HashSet::new();
    for item in items {
        let id = item
            .as_object()
            .and_then(|o| o.get("itemIdentifier"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("batchItemFailures entry without a string itemIdentifier: {item}"))?;
        if id.is_empty() {
            return Err("batchItemFailures entry with an empty itemIdentifier".into());
        }
        if !batch_ids.contains(id) {
            return Err(format!("itemIdentifier {id:?} is not a message of this batch"));
        }
        failed.insert(id.to_string());
    }
    Ok(failed)
}

/// Decides what to delete. `message_ids[i]` is the `messageId` of record `i`.
pub fn decide(message_ids: &[&str], outcome: &InvokeOutcome) -> Decision {
    let all: Vec<usize> = (0..message_ids.len()).collect();
    let fail_all = |verdict| Decision {
        verdict,
        delete: Vec::new(),
        retry: all.clone(),
    };
    let body = match outcome {
        InvokeOutcome::Transport(reason) => {
            return fail_all(Verdict::FunctionError(format!("invoke failed: {reason}")))
        }
        InvokeOutcome::TimedOut(after) => return fail_all(Verdict::Timeout(*after)),
        InvokeOutcome::Response {
            status,
            function_error: header,
            body,
        } => {
            if let Some(reason) = function_error(*status, header.as_deref(), body) {
                return fail_all(Verdict::FunctionError(reason));
            }
            body
        }
    };
    let ids: HashSet<&str> = message_ids.iter().copied().collect();
    match parse_batch_response(body, &ids) {
        Err(reason) => fail_all(Verdict::InvalidResponse(reason)),
        Ok(failed) if failed.is_empty() => Decision {
            verdict: Verdict::Success,
            delete: all,
            retry: Vec::new(),
        },
        Ok(failed) => {
            let (retry, delete): (Vec<usize>, Vec<usize>) = all.iter().partition(|i| failed.contains(message_ids[**i]));
            Decision {
                verdict: Verdict::PartialFailure,
                delete,
                retry,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 4] = ["a", "b", "c", "d"];

    fn ok(body: &str) -> InvokeOutcome {
        InvokeOutcome::Response {
            status: 200,
            function_error: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn decide_ok(body: &str) -> Decision {
        decide(&IDS, &ok(body))
    }

    #[test]
    fn empty_and_null_responses_acknowledge_all() {
        for body in [
            "",
            "  ",
            "null",
            "{}",
            r#"{"batchItemFailures":[]}"#,
            r#"{"batchItemFailures":null}"#,
        ] {
            let d = decide_ok(body);
            assert_eq!(d.verdict, Verdict::Success, "{body:?}");
            assert_eq!(d.delete, vec![0, 1, 2, 3]);
            assert!(d.retry.is_empty());
        }
    }

    #[test]
    fn listed_failures_are_kept_the_rest_deleted() {
        let d = decide_ok(
            r#"{"batchItemFailures":[{"itemIdentifier":"b"},{"itemIdentifier":"d"},{"itemIdentifier":"b"}]}"#,
        );
        assert_eq!(d.verdict, Verdict::PartialFailure);
        assert_eq!(d.delete, vec![0, 2]);
        assert_eq!(d.retry, vec![1, 3]);
    }

    #[test]
    fn all_listed_deletes_nothing() {
        let body = r#"{"batchItemFailures":[{"itemIdentifier":"a"},{"itemIdentifier":"b"},{"itemIdentifier":"c"},{"itemIdentifier":"d"}]}"#;
        let d = decide_ok(body);
        assert_eq!(d.verdict, Verdict::PartialFailure);
        assert!(d.delete.is_empty());
    }

    #[test]
    fn invalid_responses_fail_the_whole_batch() {
        for body in [
            "not json",
            r#"{"batchItemFailures":[{"itemIdentifier":"zzz"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            r#"{"batchItemFailures":[{"itemidentifier":"a"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":1}]}"#,
            r#"{"batchItemFailures":["a"]}"#,
            r#"{"batchItemFailures":{"itemIdentifier":"a"}}"#,
            r#""ok""#,
            "[]",
        ] {
            let d = decide_ok(body);
            assert!(
                matches!(d.verdict, Verdict::InvalidResponse(_)),
                "{body}: {:?}",
                d.verdict
            );
            assert!(d.delete.is_empty(), "{body}");
            assert_eq!(d.retry, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn cargo_lambda_handler_error_is_a_function_error() {
        let outcome = InvokeOutcome::Response {
            status: 500,
            function_error: None,
            body: br#"{"errorType":"&alloc::boxed::Box<dyn core::error::Error>","errorMessage":"boom"}"#.to_vec(),
        };
        let d = decide(&IDS, &outcome);
        match &d.verdict {
            Verdict::FunctionError(reason) => {
                assert!(reason.contains("HTTP 500") && reason.contains("boom"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(d.delete.is_empty());
    }

    #[test]
    fn cargo_lambda_init_error_with_status_200_is_a_function_error() {
        let d = decide_ok(r#"{"errorType":"InitError","errorMessage":"missing env"}"#);
        assert!(
            matches!(d.verdict, Verdict::FunctionError(ref r) if r.contains("missing env")),
            "{:?}",
            d.verdict
        );
        assert!(d.delete.is_empty());
    }

    #[test]
    fn lambda_api_function_error_header_is_a_function_error() {
        let outcome = InvokeOutcome::Response {
            status: 200,
            function_error: Some("Unhandled".into()),
            body: br#"{"errorMessage":"2024-01-01 Task timed out after 3.00 seconds"}"#.to_vec(),
        };
        let d = decide(&IDS, &outcome);
        assert!(matches!(d.verdict, Verdict::FunctionError(ref r) if r.starts_with("Unhandled")));
        assert!(d.delete.is_empty());
    }

    #[test]
    fn other_statuses_are_function_errors() {
        let outcome = InvokeOutcome::Response {
            status: 404,
            function_error: None,
            body: br#"{"title":"Missing function","detail":"that function doesn't exist"}"#.to_vec(),
        };
        let d = decide(&IDS, &outcome);
        assert!(
            matches!(d.verdict, Verdict::FunctionError(ref r) if r.contains("404") && r.contains("Missing function"))
        );
    }

    #[test]
    fn timeouts_and_transport_errors_retry_all() {
        let d = decide(&IDS, &InvokeOutcome::TimedOut(Duration::from_secs(3)));
        assert_eq!(d.verdict, Verdict::Timeout(Duration::from_secs(3)));
        assert!(d.delete.is_empty());
        let d = decide(&IDS, &InvokeOutcome::Transport("connection refused".into()));
        assert!(matches!(d.verdict, Verdict::FunctionError(_)));
        assert_eq!(d.retry.len(), 4);
    }

    #[test]
    fn a_response_with_failures_and_error_fields_is_a_response() {
        let d = decide_ok(r#"{"batchItemFailures":[{"itemIdentifier":"a"}],"errorType":"x"}"#);
        assert_eq!(d.verdict, Verdict::PartialFailure);
    }

    #[test]
    fn snippets_are_bounded() {
        let d = decide_ok(&"x".repeat(10_000));
        match d.verdict {
            Verdict::InvalidResponse(reason) => assert!(reason.len() < 1_000),
            other => panic!("{other:?}"),
        }
    }
}
