//! The AWS SDK adapters of [`StartExecution`] and [`Queue`]. Tested against moto.

pub mod dynamo;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeNameForSends, MessageSystemAttributeValue, SendMessageBatchRequestEntry,
};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::close::dead_letter::{AttributeValue, DeadLetter};
use crate::close::queue::{Queue, QueueError, VisibilityChange};
use crate::config::{StateMachineTypes, WorkflowType};
use crate::plan::claim_check::{ObjectError, ObjectStore};
use crate::start::running::describe::{DescribeError, DescribeExecution, Described};
use crate::start::{StartError, StartExecution, StartRequest, Started};

/// The one HTTPS client of every SDK client in the workspace: hyper 1 + rustls with *ring*.
///
/// Why not the SDK's default client: its default features add a second, legacy HTTP/TLS stack
/// and aws-lc-rs, which made the bootstrap 14.7 MB; this one keeps it under 10 MB (BENCHMARKS.md)
/// with the same TLS (rustls, the system's trust roots).
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// `aws_config::defaults` with [`https_client`]: the loader for every SDK config (the
/// function, tools, tests). Region, credentials and endpoints come from the environment as usual.
pub fn sdk_config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client())
}

/// The starter with the SDK adapters, as the Lambda runs it (built once per execution environment):
/// StartExecution and DescribeExecution, SQS; with `COORDINATION_TABLE`, one table for the shared
/// budget, the claims of batch mode and the cap's slots; with `CLAIM_CHECK_BUCKET`, S3.
/// WORKFLOW_TYPE is checked first, once, against the state machine (DescribeStateMachine,
/// [`crate::config::check_workflow_type`]): exactly-once depends on it.
pub async fn starter(
    config: crate::Config,
    sdk_config: &aws_config::SdkConfig,
) -> Result<crate::Starter, crate::config::ConfigError> {
    use std::sync::Arc;
    let timeout = config.call_timeout;
    let sfn = Arc::new(SfnStarter::new(sdk_config, timeout));
    crate::config::check_workflow_type(&config, sfn.as_ref()).await?;
    let queue = Arc::new(SqsQueue::new(sdk_config, timeout));
    let claim_check = config.claim_check_bucket.is_some();
    let starter = match config.coordination_table.clone() {
        Some(table) => {
            let store = Arc::new(dynamo::DynamoStore::new(sdk_config, &table, timeout));
            crate::Starter::coordinated(config, sfn.clone(), queue, store.clone())
                .with_claims(store.clone())
                .with_cap(store.clone(), sfn, store)
        }
        None => crate::Starter::new(config, sfn, queue),
    };
    Ok(match claim_check {
        true => starter.with_claim_check(Arc::new(S3Objects::new(sdk_config, timeout))),
        false => starter,
    })
}

/// StartExecution through `aws-sdk-sfn`, one attempt per call: the SDK's retries are off,
/// because the pacer owns throttling and retries.
#[derive(Debug, Clone)]
pub struct SfnStarter {
    client: aws_sdk_sfn::Client,
}

impl SfnStarter {
    /// A client from `sdk_config` with retries disabled and each attempt bounded by `call_timeout`.
    pub fn new(sdk_config: &aws_config::SdkConfig, call_timeout: Duration) -> SfnStarter {
        let config = aws_sdk_sfn::config::Builder::from(sdk_config)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(call_timeout)
                    .operation_attempt_timeout(call_timeout)
                    .operation_timeout(call_timeout)
                    .build(),
            )
            .build();
        SfnStarter {
            client: aws_sdk_sfn::Client::from_conf(config),
        }
    }
    /// Wraps a client configured elsewhere (benchmarks compare other retry settings).
    pub fn from_client(client: aws_sdk_sfn::Client) -> SfnStarter {
        SfnStarter { client }
    }
}

/// Maps an SDK error to what the classifier needs: the error code, or the kind of failure.
pub fn start_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    error: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> StartError {
    match &error {
        SdkError::ServiceError(service) => StartError::Service {
            code: service.err().code().unwrap_or_default().to_string(),
            message: service.err().message().unwrap_or_default().to_string(),
            status: Some(service.raw().status().as_u16()),
        },
        SdkError::TimeoutError(_) => StartError::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => StartError::Timeout,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StartError::Transport(aws_smithy_types::error::display::DisplayErrorContext(&error).to_string())
        }
        SdkError::ConstructionFailure(_) => {
            StartError::NotSent(aws_smithy_types::error::display::DisplayErrorContext(&error).to_string())
        }
        _ => StartError::Transport(aws_smithy_types::error::display::DisplayErrorContext(&error).to_string()),
    }
}

#[async_trait]
impl StartExecution for SfnStarter {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        let output = self
            .client
            .start_execution()
            .state_machine_arn(&request.state_machine_arn)
            .set_name(request.name.clone())
            .input(&request.input)
            .set_trace_header(request.trace_header.clone())
            .send()
            .await
            .map_err(start_error)?;
        Ok(Started {
            execution_arn: output.execution_arn,
        })
    }
}

/// DescribeExecution through the same client (one attempt, bounded by the call timeout): what the
/// cap's reclaim asks about a Standard execution.
#[async_trait]
impl DescribeExecution for SfnStarter {
    async fn describe_execution(&self, execution_arn: &str) -> Result<Described, DescribeError> {
        use aws_sdk_sfn::operation::describe_execution::DescribeExecutionError;
        use aws_sdk_sfn::types::ExecutionStatus;
        let answer = self
            .client
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await;
        let out = match answer {
            Ok(out) => out,
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DescribeExecutionError::ExecutionDoesNotExist(_))
                ) =>
            {
                return Ok(Described::NotFound)
            }
            Err(e) => {
                let message = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
                let throttled = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .is_some_and(|code| code.contains("Throttl"));
                return Err(match throttled {
                    true => DescribeError::Throttled(message),
                    false => DescribeError::Failed(message),
                });
            }
        };
        let redrive_count = out.redrive_count.map_or(0, |n| u32::try_from(n).unwrap_or(0));
        Ok(match out.status {
            ExecutionStatus::Running => Described::Running { redrive_count },
            _ => Described::Ended {
                redrive_count,
                stop_ms: out
                    .stop_date
                    .and_then(|d| d.to_millis().ok())
                    .and_then(|ms| u64::try_from(ms).ok()),
            },
        })
    }
}

/// The state machine's type through `DescribeStateMachine` (read once, at init).
#[async_trait]
impl StateMachineTypes for SfnStarter {
    async fn workflow_type(&self, arn: &str) -> Result<WorkflowType, String> {
        use aws_sdk_sfn::types::StateMachineType;
        let output = self
            .client
            .describe_state_machine()
            .state_machine_arn(arn)
            .send()
            .await
            .map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(&e).to_string())?;
        match output.r#type() {
            StateMachineType::Standard => Ok(WorkflowType::Standard),
            StateMachineType::Express => Ok(WorkflowType::Express),
            other => Err(format!("an unknown state machine type {other:?}")),
        }
    }
}

/// The function's own SQS calls through `aws-sdk-sqs` (standard retries, bounded timeouts).
/// Queue URLs are derived from the event's queue ARN, with no call (see [`queue_url`]).
#[derive(Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
}

impl SqsQueue {
    /// A client from `sdk_config` whose calls each take at most `timeout`.
    pub fn new(sdk_config: &aws_config::SdkConfig, timeout: Duration) -> SqsQueue {
        let config = aws_sdk_sqs::config::Builder::from(sdk_config)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            )
            .build();
        SqsQueue {
            client: aws_sdk_sqs::Client::from_conf(config),
        }
    }
}

/// The URL of the queue `arn:<partition>:sqs:<region>:<account>:<name>`: SQS's URLs are
/// `https://sqs.<region>.<domain>/<account>/<name>`, and the SDK sends every call to its
/// configured endpoint anyway, so no GetQueueUrl call is needed on the hot path.
pub fn queue_url(queue_arn: &str) -> Result<String, QueueError> {
    let parts: Vec<&str> = queue_arn.split(':').collect();
    let [_, partition, "sqs", region, account, name] = parts.as_slice() else {
        return Err(QueueError(format!("not an SQS queue ARN: {queue_arn:?}")));
    };
    let domain = match *partition {
        "aws-cn" => "amazonaws.com.cn",
        _ => "amazonaws.com",
    };
    Ok(format!("https://sqs.{region}.{domain}/{account}/{name}"))
}

fn sdk_message<E: std::error::Error + 'static, R: std::fmt::Debug>(error: &SdkError<E, R>) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(error).to_string()
}

fn attribute_value(value: &AttributeValue) -> Result<MessageAttributeValue, QueueError> {
    let builder = match value {
        AttributeValue::String(text, data_type) | AttributeValue::Number(text, data_type) => {
            MessageAttributeValue::builder().data_type(data_type).string_value(text)
        }
        AttributeValue::Binary(bytes, data_type) => MessageAttributeValue::builder()
            .data_type(data_type)
            .binary_value(aws_smithy_types::Blob::new(bytes.clone())),
    };
    builder
        .build()
        .map_err(|e| QueueError(format!("message attribute: {e}")))
}

/// The claim-check bucket through `aws-sdk-s3` (standard retries, bounded timeouts).
#[derive(Debug, Clone)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
}

impl S3Objects {
    /// A client from `sdk_config` whose calls each take at most `timeout`. Path-style addressing
    /// when an endpoint is configured (a local S3 such as moto has no per-bucket host names).
    pub fn new(sdk_config: &aws_config::SdkConfig, timeout: Duration) -> S3Objects {
        let config = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(sdk_config.endpoint_url().is_some())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            )
            .build();
        S3Objects {
            client: aws_sdk_s3::Client::from_conf(config),
        }
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(body.into())
            .send()
            .await
            .map_err(|e| ObjectError(format!("PutObject s3://{bucket}/{key}: {}", sdk_message(&e))))?;
        Ok(())
    }
}

/// A batch call that failed as a whole fails each of its `n` entries.
fn all_failed(n: usize, error: QueueError) -> Vec<Result<(), QueueError>> {
    vec![Err(error); n]
}

/// Per-entry results of a batch call (entry `i` has id `i`): those SQS lists as failed failed.
fn entry_results(n: usize, failed: &[BatchResultErrorEntry]) -> Vec<Result<(), QueueError>> {
    (0..n)
        .map(|i| match failed.iter().find(|f| f.id() == i.to_string()) {
            Some(f) => Err(QueueError(format!("{}: {}", f.code(), f.message().unwrap_or_default()))),
            None => Ok(()),
        })
        .collect()
}

fn dead_letter_entry(i: usize, letter: &DeadLetter) -> Result<SendMessageBatchRequestEntry, QueueError> {
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(&letter.body)
        .set_message_group_id(letter.group_id.clone())
        .set_message_deduplication_id(letter.deduplication_id.clone());
    for (name, value) in &letter.attributes {
        entry = entry.message_attributes(name, attribute_value(value)?);
    }
    if letter.delay_seconds > 0 {
        entry = entry.delay_seconds(i32::try_from(letter.delay_seconds).unwrap_or(i32::MAX));
    }
    if let Some(header) = &letter.trace_header {
        let value = MessageSystemAttributeValue::builder()
            .data_type("String")
            .string_value(header)
            .build()
            .map_err(|e| QueueError(format!("AWSTraceHeader: {e}")))?;
        entry = entry.message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, value);
    }
    entry
        .build()
        .map_err(|e| QueueError(format!("SendMessageBatch entry: {e}")))
}

impl SqsQueue {
    /// One `SendMessageBatch` of `letters` to the queue at `url`; `what` names it in errors.
    async fn send_batch(&self, url: &str, letters: &[DeadLetter], what: &str) -> Vec<Result<(), QueueError>> {
        let entries: Result<Vec<_>, _> = letters
            .iter()
            .enumerate()
            .map(|(i, l)| dead_letter_entry(i, l))
            .collect();
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => return all_failed(letters.len(), e),
        };
        let sent = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => entry_results(letters.len(), out.failed()),
            Err(e) => all_failed(
                letters.len(),
                QueueError(format!("SendMessageBatch to {what}: {}", sdk_message(&e))),
            ),
        }
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn change_visibility(&self, queue_arn: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        let change = VisibilityChange {
            receipt_handle: receipt_handle.to_string(),
            seconds,
        };
        self.change_visibility_batch(queue_arn, &[change]).await.remove(0)
    }

    async fn send_dead_letter(&self, dlq_url: &str, letter: &DeadLetter) -> Result<(), QueueError> {
        self.send_dead_letters(dlq_url, std::slice::from_ref(letter))
            .await
            .remove(0)
    }

    async fn change_visibility_batch(
        &self,
        queue_arn: &str,
        changes: &[VisibilityChange],
    ) -> Vec<Result<(), QueueError>> {
        let url = match queue_url(queue_arn) {
            Ok(url) => url,
            Err(e) => return all_failed(changes.len(), e),
        };
        let entries: Result<Vec<_>, _> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&c.receipt_handle)
                    .visibility_timeout(i32::try_from(c.seconds).unwrap_or(i32::MAX))
                    .build()
            })
            .collect();
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                return all_failed(
                    changes.len(),
                    QueueError(format!("ChangeMessageVisibilityBatch entry: {e}")),
                )
            }
        };
        let sent = self
            .client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => entry_results(changes.len(), out.failed()),
            Err(e) => all_failed(
                changes.len(),
                QueueError(format!("ChangeMessageVisibilityBatch: {}", sdk_message(&e))),
            ),
        }
    }

    async fn send_dead_letters(&self, dlq_url: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        self.send_batch(dlq_url, letters, "the DLQ").await
    }

    async fn send_messages(&self, queue_arn: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        match queue_url(queue_arn) {
            Ok(url) => self.send_batch(&url, letters, "the source queue").await,
            Err(e) => all_failed(letters.len(), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_come_from_the_arn() {
        assert_eq!(
            queue_url("arn:aws:sqs:eu-west-1:123456789012:work.fifo").unwrap(),
            "https://sqs.eu-west-1.amazonaws.com/123456789012/work.fifo"
        );
        assert_eq!(
            queue_url("arn:aws-cn:sqs:cn-north-1:123456789012:q").unwrap(),
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q"
        );
        assert!(queue_url("arn:aws:sns:us-east-1:1:topic").is_err());
        assert!(queue_url("nonsense").is_err());
    }

    #[test]
    fn batch_results_follow_the_entry_ids() {
        let failed = [BatchResultErrorEntry::builder()
            .id("1")
            .code("ReceiptHandleIsInvalid")
            .message("gone")
            .sender_fault(true)
            .build()
            .unwrap()];
        let results = entry_results(3, &failed);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert_eq!(results[1], Err(QueueError("ReceiptHandleIsInvalid: gone".into())));
    }
}
