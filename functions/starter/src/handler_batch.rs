//! The handler's batch phase (`MESSAGES_PER_EXECUTION` > 1), between plan and start: the
//! planned messages are grouped into executions ([`crate::plan::batch`]); on Standard each group is
//! claimed first ([`crate::start::claim`]). Messages rejected on their own stay units of their own,
//! so they reach the DLQ without spoiling their neighbours.

use futures::stream::{self, StreamExt};

use super::{now_epoch_ms, Attempt, Invocation, Unit, Work};
use crate::close::Comeback;
use crate::config::WorkflowType;
use crate::metrics::Count;
use crate::plan::batch::{self, Group, Member};
use crate::plan::{Plan, MAX_INPUT_BYTES};
use crate::start::claim::{self, Resolved};

impl Invocation<'_> {
    /// Groups the startable units into batch executions, claimed on Standard; the units come
    /// back in record order (of their first record), so FIFO groups keep their order.
    pub(super) async fn batch(&self, units: Vec<Unit>, fifo: bool) -> Vec<Unit> {
        let mut out = Vec::new();
        let mut members = Vec::new();
        for unit in units {
            match unit.work {
                Work::Start(plan) => members.push(self.member(unit.members, plan, fifo)),
                settled => out.push(Unit { work: settled, ..unit }),
            }
        }
        let groups = batch::group(members, self.config().messages_per_execution);
        match self.config().workflow_type {
            // At-least-once, as single starts on Express: no claims.
            WorkflowType::Express => out.extend(groups.into_iter().map(|g| {
                let plan = g.plan(self.named());
                unit(&g.members, Work::Start(plan))
            })),
            WorkflowType::Standard => {
                let claimed: Vec<Vec<Unit>> = stream::iter(groups)
                    .map(|g| self.claim(g, fifo))
                    .buffer_unordered(self.config().max_in_flight)
                    .collect()
                    .await;
                out.extend(claimed.into_iter().flatten());
            }
        }
        out.sort_by_key(|u| u.members.first().copied());
        out
    }

    /// Whether executions are named (with the cap, also with `EXECUTION_NAME=none`: a slot's holder
    /// is its execution's name).
    fn named(&self) -> bool {
        self.config().name_source != crate::config::NameSource::None || self.config().running.is_some()
    }

    /// One message of a group: its records (merged by name), key, item and FIFO group.
    fn member(&self, records: Vec<usize>, plan: Plan, fifo: bool) -> Member {
        let message = &self.messages[records[0]];
        let group = match fifo {
            true => message.group_id().unwrap_or_default().to_string(),
            false => String::new(),
        };
        Member {
            key: plan.name.unwrap_or_else(|| message.id.clone()),
            item: batch::item(message, &plan.input, self.config().input_mode),
            trace_header: plan.trace_header,
            group,
            records,
        }
    }

    /// Claims one group (its input claim-checked first when it is over the limit, so the record
    /// holds the pointer): the units to start, or to report when they could not be claimed.
    async fn claim(&self, group: Group, fifo: bool) -> Vec<Unit> {
        let Some(store) = self.starter.claims.as_deref() else {
            tracing::error!("batch mode on Standard without a claim store: reported for retry");
            return vec![unit(&group.members, retry("no claim store".to_string()))];
        };
        let mut plan = group.plan(true);
        if plan.input.len() > MAX_INPUT_BYTES {
            match self.claim_checked(&plan.input).await {
                Ok(pointer) => plan.input = pointer,
                Err(attempt) => return vec![unit(&group.members, Work::Settled(attempt.into()))],
            }
        }
        let scope = claim::scope(&self.config().state_machine_arn);
        let expires_at = now_epoch_ms() / 1000 + self.config().claim_ttl(fifo).as_secs();
        let resolved = claim::resolve(store, scope, group, plan, expires_at, self.cutoff).await;
        resolved.into_iter().map(|r| self.claimed(r)).collect()
    }

    /// A resolved claim as a unit, counted.
    fn claimed(&self, resolved: Resolved) -> Unit {
        match resolved {
            Resolved::Start {
                members,
                plan,
                found: true,
            } if claim::confirmed(&plan) => {
                self.tally.add_many(Count::ClaimFound, members.len() as u64);
                self.tally.add_many(Count::Duplicate, members.len() as u64);
                tracing::info!(
                    execution = plan.name.as_deref().unwrap_or_default(),
                    messages = members.len(),
                    "messages already claimed by an earlier delivery, whose execution started: acknowledged as duplicates"
                );
                unit(&members, Work::Settled(Attempt::Duplicate.into()))
            }
            Resolved::Start { members, plan, found } => {
                let count = match found {
                    true => Count::ClaimFound,
                    false => Count::ClaimWritten,
                };
                self.tally.add_many(count, members.len() as u64);
                if found {
                    tracing::info!(
                        execution = plan.name.as_deref().unwrap_or_default(),
                        messages = members.len(),
                        "messages already claimed by an earlier delivery: starting their recorded execution (a no-op if it exists)"
                    );
                }
                unit(&members, Work::Start(plan))
            }
            Resolved::Unclaimed { members, reason } => {
                tracing::warn!(messages = members.len(), %reason, "messages not claimed: reported for retry");
                unit(&members, retry(reason))
            }
        }
    }
}

impl Invocation<'_> {
    /// After a batch execution's start is confirmed (started, or found existing): trims its
    /// record to "started" in the claims' table, within the time left before the cutoff. A
    /// record left untrimmed (no time, or the table failed) is harmless: a redelivery restarts
    /// it as a no-op, and it expires with its claims.
    pub(super) async fn confirm_started(&self, plan: &Plan) {
        let config = self.config();
        let claims = match (&self.starter.claims, config.batching(), config.workflow_type) {
            (Some(claims), true, WorkflowType::Standard) => claims,
            _ => return,
        };
        let Some(name) = plan.name.as_deref() else {
            return;
        };
        let left = self.cutoff.saturating_duration_since(tokio::time::Instant::now());
        let bound = left.min(self.call_timeout);
        if bound.is_zero() {
            tracing::debug!(
                execution = name,
                "no time left to trim the record of a started execution"
            );
            return;
        }
        let scope = claim::scope(&config.state_machine_arn);
        match tokio::time::timeout(bound, claims.confirm(scope, name)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(execution = name, error = %e, "the record of a started execution was not trimmed")
            }
            Err(_) => tracing::debug!(execution = name, "trimming the record of a started execution timed out"),
        }
    }
}

/// A unit of these members.
fn unit(members: &[Member], work: Work) -> Unit {
    Unit {
        members: batch::records(members),
        carried: members.len() as u64,
        work,
    }
}

/// Reported with backoff, untried.
fn retry(reason: String) -> Work {
    Work::Settled(
        Attempt::Retry {
            reason,
            comeback: Comeback::Backoff,
        }
        .into(),
    )
}
