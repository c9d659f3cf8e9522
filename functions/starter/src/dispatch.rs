//! One binary, three kinds of events, told apart by their shape:
//! - an SQS batch (`Records`) → [`Starter::handle`] (a partial batch response);
//! - an EventBridge "Step Functions Execution Status Change" (source `aws.states`) → the cap's
//!   release ([`crate::start::running::release`]);
//! - an EventBridge "Scheduled Event" → the cap's reclaim sweep
//!   ([`crate::start::running::reclaim`]).
//!
//! A foreign or malformed event gets one clear error log and an `Ok`: nothing else happens (a
//! retry would not help). A table failure while releasing is an error, so that Lambda's
//! asynchronous retry (and the rule's dead-letter queue) keeps the event.

use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::handler::{now_epoch_ms, time_budget, Starter, RESPONSE_RESERVE};
use crate::metrics::{Count, Report, Tally};
use crate::start::running::release::{Released, StatusChange, DETAIL_TYPE, SOURCE};

/// `detail-type` of an EventBridge schedule's events.
pub const SCHEDULED_EVENT: &str = "Scheduled Event";
/// Slots a scheduled sweep settles at most (bounded by the time left too).
pub const SCHEDULED_SWEEP_LIMIT: usize = 100;

/// What an event is, by its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An SQS batch.
    Batch,
    /// A Step Functions status change.
    StatusChange,
    /// A schedule's tick.
    Scheduled,
    /// Anything else: what it looks like, for the log.
    Other(String),
}

/// Tells an event's kind by its shape.
pub fn kind(event: &Value) -> Kind {
    if event.get("Records").is_some() {
        Kind::Batch
    } else if event["source"] == SOURCE && event["detail-type"] == DETAIL_TYPE {
        Kind::StatusChange
    } else if event["detail-type"] == SCHEDULED_EVENT {
        Kind::Scheduled
    } else {
        Kind::Other(format!(
            "source {}, detail-type {}",
            event.get("source").unwrap_or(&Value::Null),
            event.get("detail-type").unwrap_or(&Value::Null)
        ))
    }
}

impl Starter {
    /// The Lambda entry point for every event this function gets.
    pub async fn dispatch(&self, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
        let LambdaEvent { payload, context } = event;
        match kind(&payload) {
            Kind::Batch => {
                let batch: SqsEvent = serde_json::from_value(payload).inspect_err(|e| {
                    tracing::error!(error = %e, "the event has Records but is not an SQS batch: failing the invocation");
                })?;
                let response = self.handle(LambdaEvent::new(batch, context)).await?;
                Ok(serde_json::to_value(response)?)
            }
            Kind::StatusChange => self.release(&payload, &context).await,
            Kind::Scheduled => Ok(self.reclaim(&context).await),
            Kind::Other(what) => {
                tracing::error!(event = %what, "not an event this function handles (an SQS batch, a Step Functions status change, or a scheduled event): ignored");
                Ok(Value::Null)
            }
        }
    }

    /// The latest instant this invocation's calls may end by.
    fn latest(&self, context: &Context) -> Instant {
        let budget = time_budget(context.deadline, now_epoch_ms(), self.config().local_deadline);
        Instant::now() + budget.saturating_sub(RESPONSE_RESERVE)
    }

    /// A status change event: releases (or re-takes) the execution's slot.
    async fn release(&self, event: &Value, context: &Context) -> Result<Value, lambda_runtime::Error> {
        let Some(running) = self.running() else {
            tracing::error!("a status change event reached a function without MAX_RUNNING_EXECUTIONS: ignored");
            return Ok(Value::Null);
        };
        let change = match StatusChange::from_event(event) {
            Ok(change) => change,
            Err(why) => {
                tracing::error!(reason = %why, "a malformed status change event: ignored");
                return Ok(Value::Null);
            }
        };
        let started = Instant::now();
        let tally = Tally::default();
        tally.add(Count::ReleaseEvents);
        let released = running
            .cap()
            .on_status_change(&change, self.latest(context))
            .await
            .inspect_err(|e| {
                tracing::error!(error = %e, execution = %change.execution_arn, "could not release the slot: the event is retried");
            })?;
        match released {
            Released::Freed => tally.add(Count::SlotsReleased),
            Released::Duplicate => tally.add(Count::DuplicateReleaseEvents),
            Released::Retaken | Released::Ignored => {}
        }
        tracing::info!(execution = %change.execution_arn, outcome = ?released, "status change");
        self.emit(&tally, started.elapsed(), context);
        Ok(json!({ "execution": change.execution_arn, "outcome": format!("{released:?}") }))
    }

    /// A schedule's tick: the reclaim sweep.
    async fn reclaim(&self, context: &Context) -> Value {
        let Some(running) = self.running() else {
            tracing::error!("a scheduled event reached a function without MAX_RUNNING_EXECUTIONS: ignored");
            return Value::Null;
        };
        let started = Instant::now();
        let sweep = running.sweep(SCHEDULED_SWEEP_LIMIT, self.latest(context)).await;
        let tally = Tally::default();
        tally.add_many(Count::SlotsReclaimed, sweep.reclaimed);
        tracing::info!(
            checked = sweep.checked,
            described = sweep.described,
            extended = sweep.extended,
            reclaimed = sweep.reclaimed,
            errors = sweep.errors,
            "reclaim sweep"
        );
        self.emit(&tally, started.elapsed(), context);
        json!({ "checked": sweep.checked, "extended": sweep.extended, "reclaimed": sweep.reclaimed, "errors": sweep.errors })
    }

    /// Prints the EMF document of a release or sweep invocation.
    fn emit(&self, tally: &Tally, elapsed: Duration, context: &Context) {
        let mut report: Report = tally.report(0, 0, elapsed);
        report.running = self.running().and_then(|r| r.cap().running());
        report.running_cap = self.running().and_then(|r| r.cap().size());
        let doc = report.emf(
            &self.config().metrics_namespace,
            &context.env_config.function_name,
            now_epoch_ms(),
        );
        println!("{doc}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn events_are_told_apart_by_their_shape() {
        assert_eq!(kind(&fixture("batch.json")), Kind::Batch);
        assert_eq!(kind(&fixture("status-change.json")), Kind::StatusChange);
        assert_eq!(kind(&fixture("scheduled.json")), Kind::Scheduled);
        assert!(matches!(kind(&json!({"source": "aws.s3"})), Kind::Other(_)));
        assert!(matches!(kind(&json!(42)), Kind::Other(_)));
        let change = StatusChange::from_event(&fixture("status-change.json")).unwrap();
        assert_eq!(change.status, crate::start::running::release::Status::Ended);
    }
}
