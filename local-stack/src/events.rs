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
    let millis = |d: &aws_smithy_types::DateTime| d.to_millis().unwrap_or(0);
    let arn = &execution.execution_arn;
    let account = arn.split(':').nth(4).unwrap_or("123456789012");
    json!({
        "version": "0",
        "id": format!("local-{}", execution.name.as_deref().unwrap_or_default()),
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": account,
        "region": REGION,
        "resources": [arn],
        "detail": {
            "executionArn": arn,
            "stateMachineArn": execution.state_machine_arn,
            "name": execution.name,
            "status": execution.status.as_str(),
            "startDate": millis(&execution.start_date),
            "stopDate": execution.stop_date.as_ref().map(millis),
            "input": execution.input,
            "redriveCount": execution.redrive_count.unwrap_or(0),
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut events = Vec::new();
    for execution in running {
        if now - execution.started_at >= duration.as_secs_f64() {
            events.push(end_execution(sfn, &execution.arn).await?);
        }
    }
    Ok(events)
}
