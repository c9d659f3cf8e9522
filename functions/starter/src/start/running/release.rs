//! Releasing slots when executions end: EventBridge's "Step Functions Execution Status Change"
//! events (source `aws.states`), delivered at least once, late or not at all.
//!
//! - A terminal status (SUCCEEDED, FAILED, TIMED_OUT, ABORTED) releases the execution's held slot
//!   if it is held for an attempt up to the event's `redriveCount`: a duplicate, or a late event
//!   of an earlier run, finds a tombstone or a later attempt and frees nothing.
//! - A RUNNING event of a redriven execution (`redriveCount` > 0) counts it again: its tombstone
//!   becomes a held holder of that attempt, on its shard, even above the cap (what runs is
//!   counted; new starts then wait until the cap has room). If the terminal event of the earlier
//!   run was lost and the holder is still held, the holder moves to the new attempt.
//! - Any other event frees nothing.
//! - A read or write the table throttled, or whose answer was lost, is tried again (a few times,
//!   within the time left) before the invocation fails: Lambda's own retry of the event comes a
//!   minute later, and the slot is held meanwhile.

use serde_json::Value;
use tokio::time::Instant;

use super::cap::Cap;
use super::{due_partition, Found, Holder, HolderState, Write, Written};
use crate::start::claim::scope;
use crate::start::table::{bounded, StoreError};

/// `source` of Step Functions' events.
pub const SOURCE: &str = "aws.states";
/// `detail-type` of an execution's status change.
pub const DETAIL_TYPE: &str = "Step Functions Execution Status Change";

/// An execution's status, as its events say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// RUNNING (also a redriven execution's new run).
    Running,
    /// SUCCEEDED, FAILED, TIMED_OUT or ABORTED.
    Ended,
    /// Any other value (for example PENDING_REDRIVE).
    Other,
}

/// The fields of a status change event the cap needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// `detail.executionArn`.
    pub execution_arn: String,
    /// `detail.stateMachineArn`.
    pub state_machine_arn: String,
    /// `detail.name`.
    pub name: String,
    /// `detail.status`.
    pub status: Status,
    /// `detail.redriveCount` (0 when absent).
    pub redrive_count: u32,
    /// `detail.startDate`, ms since the epoch.
    pub start_ms: Option<u64>,
    /// `detail.stopDate`, ms since the epoch (null while running).
    pub stop_ms: Option<u64>,
}

impl StatusChange {
    /// Reads a status change event; `Err` says what is wrong with it.
    pub fn from_event(event: &Value) -> Result<StatusChange, String> {
        if event["source"] != SOURCE || event["detail-type"] != DETAIL_TYPE {
            return Err(format!(
                "not a Step Functions status change: source {}, detail-type {}",
                event["source"], event["detail-type"]
            ));
        }
        let detail = &event["detail"];
        let text = |field: &str| {
            detail[field]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("detail.{field} is missing"))
        };
        let status = match text("status")?.as_str() {
            "RUNNING" => Status::Running,
            "SUCCEEDED" | "FAILED" | "TIMED_OUT" | "ABORTED" => Status::Ended,
            _ => Status::Other,
        };
        Ok(StatusChange {
            execution_arn: text("executionArn")?,
            state_machine_arn: text("stateMachineArn")?,
            name: text("name")?,
            status,
            redrive_count: detail["redriveCount"]
                .as_u64()
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            start_ms: detail["startDate"].as_u64(),
            stop_ms: detail["stopDate"].as_u64(),
        })
    }
}

/// What an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Its slot was released.
    Freed,
    /// A redriven execution's slot was counted again.
    Retaken,
    /// It freed nothing: the slot was released already, or belongs to a later attempt, or has
    /// no holder (the execution was not started under this cap).
    Duplicate,
    /// Not an event the cap acts on (a first RUNNING, another status).
    Ignored,
}

/// Whether a refusal found the tombstone a release at `released_at_ms` leaves.
fn released_by(found: &[Found], released_at_ms: u64) -> bool {
    found.iter().any(|f| {
        matches!(f, Found::Holder(Some(h)) if h.state == HolderState::Released && h.released_at_ms == Some(released_at_ms))
    })
}

impl Cap {
    /// Applies a status change event. A table failure is an error, so that the event is retried.
    pub async fn on_status_change(&self, change: &StatusChange, latest: Instant) -> Result<Released, StoreError> {
        let scope = scope(&change.state_machine_arn);
        let holder = self.holder_retrying(scope, &change.name, latest).await?;
        match change.status {
            Status::Ended => self.release_ended(change, holder, latest).await,
            Status::Running if change.redrive_count > 0 => self.retake(change, holder, latest).await,
            _ => Ok(Released::Ignored),
        }
    }

    async fn release_ended(
        &self,
        change: &StatusChange,
        holder: Option<Holder>,
        latest: Instant,
    ) -> Result<Released, StoreError> {
        let Some(h) = holder.filter(|h| h.state == HolderState::Held && h.attempt <= change.redrive_count) else {
            return Ok(Released::Duplicate);
        };
        let now_ms = self.clock().now_ms();
        let shard = h.shard;
        let write = Write::Release {
            // How long the slot was held: until now, the event's delivery included (what the
            // line's completion rate needs), not only while the execution ran.
            busy_ms: now_ms.saturating_sub(h.taken_at_ms),
            scope: h.scope,
            name: h.name,
            shard,
            attempt: change.redrive_count,
            released_at_ms: now_ms,
        };
        match self.write_retrying(&write, latest).await? {
            (Written::Applied(_), _) => {
                self.unreserve(shard);
                Ok(Released::Freed)
            }
            // An earlier try was applied and its answer lost: the tombstone is this release's.
            (Written::Refused(found), true) if released_by(&found, now_ms) => {
                self.unreserve(shard);
                Ok(Released::Freed)
            }
            (Written::Refused(_), _) => Ok(Released::Duplicate),
        }
    }

    async fn retake(
        &self,
        change: &StatusChange,
        holder: Option<Holder>,
        latest: Instant,
    ) -> Result<Released, StoreError> {
        let attempt = change.redrive_count;
        let now_ms = self.clock().now_ms();
        let check_at_s = now_ms.div_ceil(1000) + self.expiry().as_secs();
        let write = match holder {
            Some(h) if h.attempt >= attempt => return Ok(Released::Duplicate),
            // The earlier run's terminal event was lost: the slot moves to this run.
            Some(h) if h.state == HolderState::Held => Write::Extend {
                scope: h.scope,
                name: h.name,
                check_at_s: h.check_at_s,
                next_check_at_s: check_at_s,
                attempt,
            },
            found => {
                let shard = match &found {
                    Some(h) => h.shard,
                    None => self.any_shard(&change.name, latest).await?,
                };
                Write::Take {
                    holder: Holder {
                        scope: scope(&change.state_machine_arn).to_string(),
                        name: change.name.clone(),
                        shard,
                        state: HolderState::Held,
                        attempt,
                        execution_arn: change.execution_arn.clone(),
                        taken_at_ms: now_ms,
                        check_at_s,
                        express: false,
                        released_at_ms: None,
                    },
                    above_cap: true,
                }
            }
        };
        match bounded(self.call_timeout(), latest, self.store().write(self.key(), &write)).await? {
            Written::Applied(_) => Ok(Released::Retaken),
            Written::Refused(_) => Ok(Released::Duplicate),
        }
    }

    /// A shard for a holder that has none yet (its tombstone expired): one of the cap's, by name.
    async fn any_shard(&self, name: &str, latest: Instant) -> Result<u32, StoreError> {
        let shards = match self.seen() {
            Some(view) => view.settings.shards,
            None => self.read(latest).await?.settings.shards,
        };
        Ok(due_partition(name) % shards.max(1))
    }
}
