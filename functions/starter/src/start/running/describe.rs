//! DescribeExecution, behind a narrow trait (the SDK adapter is [`crate::aws::SfnStarter`]): what
//! the reclaim asks about a Standard execution whose slot's check is due.

use async_trait::async_trait;

/// What Step Functions says about an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Described {
    /// It runs (`RUNNING`), in its `redrive_count`-th redrive (0: its first run).
    Running {
        /// `redriveCount`.
        redrive_count: u32,
    },
    /// It ended (`SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`, or waiting for a redrive).
    Ended {
        /// `redriveCount`.
        redrive_count: u32,
        /// `stopDate`, ms since the epoch.
        stop_ms: Option<u64>,
    },
    /// `ExecutionDoesNotExist`: it never started (or is older than Step Functions keeps).
    NotFound,
}

/// Why a DescribeExecution call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    /// `ThrottlingException`: DescribeExecution's own quota is spent.
    #[error("throttled: {0}")]
    Throttled(String),
    /// Anything else (a timeout, a 5xx, no permission).
    #[error("{0}")]
    Failed(String),
}

/// Describes Standard executions. One attempt per call: retries are the caller's decision.
#[async_trait]
pub trait DescribeExecution: Send + Sync {
    /// Makes one DescribeExecution call.
    async fn describe_execution(&self, execution_arn: &str) -> Result<Described, DescribeError>;
}
