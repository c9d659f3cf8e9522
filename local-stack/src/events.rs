//! EventBridge's events, as the local stack delivers them to the function (there is no
//! EventBridge here): the "Step Functions Execution Status Change" of an execution it ends in moto
//! (StopExecution: moto's executions otherwise run for ever), and a schedule's tick. Their shape is
//! the one of `events/status-change.json` and `events/scheduled.json`.

use std::time::Duration;

use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::types::ExecutionStatus;
use serde_json::{json, Value};

use crate::moto::{bounded, list_executions_in, REGION};

/// The status change event of a described execution.
pub fn status_change(execution: &DescribeExecutionOutput) -> Value {
    let millis = |d: &aws_smithy_types::DateTime| d.to_millis().map_or(0, |ms| u64::try_from(ms).unwrap_or(0));
    status_change_of(&Change {
        execution_arn: &execution.execution_arn,
        state_machine_arn: &execution.state_machine_arn,
        name: execution.name.as_deref().unwrap_or_default(),
        status: execution.status.as_str(),
        start_ms: millis(&execution.start_date),
        stop_ms: execution.stop_date.as_ref().map(millis),
        input: execution.input.as_deref(),
        redrive_count: execution.redrive_count.unwrap_or(0),
    })
}

/// What a status change event says.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// `detail.executionArn`.
    pub execution_arn: &'a str,
    /// `detail.stateMachineArn`.
    pub state_machine_arn: &'a str,
    /// `detail.name`.
    pub name: &'a str,
    /// `detail.status`: RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED.
    pub status: &'a str,
    /// `detail.startDate`, ms since the epoch.
    pub start_ms: u64,
    /// `detail.stopDate`, ms since the epoch (`None` while running).
    pub stop_ms: Option<u64>,
    /// `detail.input`.
    pub input: Option<&'a str>,
    /// `detail.redriveCount`.
    pub redrive_count: i32,
}

/// The status change event EventBridge sends for `change` (the shape of `events/status-change.json`).
pub fn status_change_of(change: &Change<'_>) -> Value {
    let account = change.execution_arn.split(':').nth(4).unwrap_or("123456789012");
    json!({
        "version": "0",
        "id": format!("local-{}-{}", change.name, change.status),
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": account,
        "region": REGION,
        "resources": [change.execution_arn],
        "detail": {
            "executionArn": change.execution_arn,
            "stateMachineArn": change.state_machine_arn,
            "name": change.name,
            "status": change.status,
            "startDate": change.start_ms,
            "stopDate": change.stop_ms,
            "input": change.input,
            "redriveCount": change.redrive_count,
        }
    })
}

/// A schedule's tick (an EventBridge rule's "Scheduled Event").
pub fn scheduled() -> Value {
    json!({
        "version": "0",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "region": REGION,
        "resources": [],
        "detail": {}
    })
}

/// Ends a running execution (StopExecution: ABORTED) and returns its status change event.
pub async fn end_execution(sfn: &aws_sdk_sfn::Client, execution_arn: &str) -> Result<Value, String> {
    bounded(
        "StopExecution",
        sfn.stop_execution().execution_arn(execution_arn).send(),
    )
    .await?;
    let described = bounded(
        "DescribeExecution",
        sfn.describe_execution().execution_arn(execution_arn).send(),
    )
    .await?;
    Ok(status_change(&described))
}

/// Ends every execution of `state_machine_arn` that has run for `duration` (by its start date, on
/// the system clock) and returns their status change events.
pub async fn end_executions_older_than(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    duration: Duration,
) -> Result<Vec<Value>, String> {
    let running = list_executions_in(sfn, state_machine_arn, Some(ExecutionStatus::Running)).await?;
    let now = sfn_pacer::start::clock::system_seconds();
    let mut events = Vec::new();
    for execution in running {
        if now - execution.started_at >= duration.as_secs_f64() {
            events.push(end_execution(sfn, &execution.arn).await?);
        }
    }
    Ok(events)
}
