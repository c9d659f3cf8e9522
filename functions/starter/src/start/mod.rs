//! The StartExecution call, behind a narrow trait so the logic is tested without a network.

pub mod budget;
pub mod claim;
pub mod classify;
pub mod clock;
pub mod memory;
pub mod pace;
pub mod pacing;
pub mod running;
pub mod table;

use async_trait::async_trait;

/// One StartExecution request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// The state machine to start.
    pub state_machine_arn: String,
    /// The execution name; `None` lets AWS pick one.
    pub name: Option<String>,
    /// The execution input (JSON).
    pub input: String,
    /// The X-Ray trace header to continue (`traceHeader`).
    pub trace_header: Option<String>,
}

/// A started execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The execution's ARN.
    pub execution_arn: String,
}

/// Why a StartExecution attempt failed, as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The service answered with an error code (e.g. `ThrottlingException`).
    #[error("{code}: {message} (HTTP {status:?})")]
    Service {
        /// The error code (`ProvideErrorMetadata::code()`); empty when the service gave none.
        code: String,
        /// The service's message.
        message: String,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
    },
    /// The attempt timed out: it may or may not have been applied.
    #[error("timed out")]
    Timeout,
    /// The request could not be sent or its response not read (connection reset, refused,
    /// malformed response): it may or may not have been applied.
    #[error("transport: {0}")]
    Transport(String),
    /// The request could not be built (a bug or bad parameters); it was not sent.
    #[error("request not sent: {0}")]
    NotSent(String),
}

/// Starts Step Functions executions. Implementations make exactly one attempt per call:
/// retries are the caller's decision.
#[async_trait]
pub trait StartExecution: Send + Sync {
    /// Makes one StartExecution attempt.
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError>;
}
