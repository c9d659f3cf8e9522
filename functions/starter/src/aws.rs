//! The AWS SDK adapters of [`StartExecution`] and [`Queue`]. Tested against moto.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::MessageAttributeValue;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::dead_letter::{AttributeValue, DeadLetter};
use crate::queue::{Queue, QueueError};
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

/// The function's own SQS calls through `aws-sdk-sqs` (standard retries, bounded timeouts).
/// Queue URLs are resolved from the event's queue ARN with GetQueueUrl, once per queue.
#[derive(Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    urls: Mutex<HashMap<String, String>>,
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
            urls: Mutex::new(HashMap::new()),
        }
    }

    async fn queue_url(&self, queue_arn: &str) -> Result<String, QueueError> {
        if let Some(url) = self.urls.lock().unwrap_or_else(|p| p.into_inner()).get(queue_arn) {
            return Ok(url.clone());
        }
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = queue_arn.split(':').collect();
        let [_, _, "sqs", _, account, name] = parts.as_slice() else {
            return Err(QueueError(format!("not an SQS queue ARN: {queue_arn:?}")));
        };
        let output = self
            .client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| QueueError(format!("GetQueueUrl {name}: {}", sdk_message(&e))))?;
        let url = output
            .queue_url
            .ok_or_else(|| QueueError(format!("GetQueueUrl {name}: no URL")))?;
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue_arn.to_string(), url.clone());
        Ok(url)
    }
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

#[async_trait]
impl Queue for SqsQueue {
    async fn change_visibility(&self, queue_arn: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        let url = self.queue_url(queue_arn).await?;
        let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| QueueError(format!("ChangeMessageVisibility: {}", sdk_message(&e))))?;
        Ok(())
    }

    async fn send_dead_letter(&self, dlq_url: &str, letter: &DeadLetter) -> Result<(), QueueError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(dlq_url)
            .message_body(&letter.body)
            .set_message_group_id(letter.group_id.clone())
            .set_message_deduplication_id(letter.deduplication_id.clone());
        for (name, value) in &letter.attributes {
            request = request.message_attributes(name, attribute_value(value)?);
        }
        request
            .send()
            .await
            .map_err(|e| QueueError(format!("SendMessage to the DLQ: {}", sdk_message(&e))))?;
        Ok(())
    }
}
