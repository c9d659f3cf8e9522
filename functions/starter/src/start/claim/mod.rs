//! Per-message claims: what keeps batch executions exactly once per message on Standard.
//!
//! A redelivered message can land in a group with other neighbours, so an execution's name
//! (derived from its members) cannot deduplicate it. Before a group's execution starts, each
//! member is claimed in the coordination table, all in one transaction with the execution's
//! record: `claim#<scope>#<key>` → the execution's name, and `execution#<scope>#<name>` → its
//! input. Each write is conditional on the item being absent; one refusal writes nothing.
//!
//! Once the execution's start is confirmed (started, or found existing), its record is trimmed
//! to "started" ([`ClaimStore::confirm`]): its input served only a redelivery after a crash
//! between the claim and the start, and such a redelivery now finds "started" and acknowledges
//! its messages as duplicates, without a call. The claims stay: they are what a redelivery
//! finds.
//!
//! Invariants:
//! - a message key is claimed for at most one execution, until its claim expires: as long as
//!   SQS can deliver the message again (`Config::claim_ttl`: the work queue's retention plus the
//!   DLQ's), far less than Step Functions' 90-day name window;
//! - an execution is only ever started with the input recorded for it, so a restart of a
//!   recorded execution is idempotent (Standard: same name and input); a record is trimmed
//!   only after its execution's start is confirmed, so a trimmed record is never started again;
//! - [`resolve`] returns every member of the group exactly once: claimed now, claimed before
//!   (with that execution's recorded input), or not claimed (to be reported).
//!
//! The scope is the state machine's name: names are unique per state machine.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{timeout, Instant};

use crate::plan::batch::{Group, Member};
use crate::plan::Plan;
use crate::start::table::StoreError;

/// The partition key of the claim of `key` in `scope`.
pub fn claim_pk(scope: &str, key: &str) -> String {
    format!("claim#{scope}#{key}")
}

/// The partition key of the record of the execution `name` in `scope`.
pub fn execution_pk(scope: &str, name: &str) -> String {
    format!("execution#{scope}#{name}")
}

/// The claims' scope for a state machine, version or alias ARN: the state machine's name.
pub fn scope(state_machine_arn: &str) -> &str {
    state_machine_arn
        .split_once(":stateMachine:")
        .map_or(state_machine_arn, |(_, rest)| rest.split(':').next().unwrap_or(rest))
}

/// One claim transaction: every key → `execution`, and `execution`'s record with `input`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// See [`scope`].
    pub scope: &'a str,
    /// The execution's name.
    pub execution: &'a str,
    /// The execution's input, recorded with it.
    pub input: &'a str,
    /// The members' keys (at most 99: one transaction holds 100 writes).
    pub keys: &'a [String],
    /// When the items expire (the table's TTL attribute), seconds since the epoch.
    pub expires_at_epoch_s: u64,
}

/// What the claim transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimWrite {
    /// Every claim and the record were written.
    Written,
    /// Some item already existed: nothing was written.
    Refused,
}

/// An execution's record, as a redelivery finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Claimed, its start not confirmed: start it with this input (a no-op if it exists).
    Pending(String),
    /// Its start was confirmed: the input is gone, its messages are duplicates.
    Started,
}

/// The claims' storage, behind a narrow trait (the DynamoDB adapter is in [`crate::aws::dynamo`]).
#[async_trait]
pub trait ClaimStore: Send + Sync {
    /// In one transaction: each claim and the record, each only if absent; all or nothing.
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimWrite, StoreError>;
    /// The execution each of `keys` is claimed for (a strongly consistent read); unclaimed keys
    /// are absent from the map.
    async fn claimed(&self, scope: &str, keys: &[String]) -> Result<HashMap<String, String>, StoreError>;
    /// The input recorded for `execution` (strongly consistent), `None` when there is no record
    /// or its start was confirmed (trimmed).
    async fn recorded(&self, scope: &str, execution: &str) -> Result<Option<String>, StoreError>;
    /// The record of `execution` (strongly consistent), `None` when there is none. By default,
    /// from [`ClaimStore::recorded`]: a store that never trims has no started records.
    async fn record(&self, scope: &str, execution: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.recorded(scope, execution).await?.map(Record::Pending))
    }
    /// Trims the record of `execution`, whose start is confirmed, to [`Record::Started`]: the
    /// input is dropped. By default nothing is trimmed (the record expires with its claims).
    async fn confirm(&self, scope: &str, execution: &str) -> Result<(), StoreError> {
        let _ = (scope, execution);
        Ok(())
    }
}

/// Whether a resolved plan is a confirmed start found on a redelivery: [`resolve`] gives it
/// an empty input (a real input is JSON, never empty); it is acknowledged, not started.
pub fn confirmed(plan: &Plan) -> bool {
    plan.input.is_empty()
}

/// What became of some members of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Claimed for `plan`'s execution: by this call (`found` false), or before, by another
    /// delivery (`found` true: `plan` is the recorded execution, to start again — a no-op
    /// when it exists; or, with an empty input, one whose start was confirmed: see
    /// [`confirmed`]).
    Start {
        /// The members the execution carries from this batch.
        members: Vec<Member>,
        /// The execution.
        plan: Plan,
        /// Whether the claims were found rather than written.
        found: bool,
    },
    /// Not claimed (the table failed, or time ran out): to be reported, with backoff.
    Unclaimed {
        /// The members.
        members: Vec<Member>,
        /// Why, for the logs.
        reason: String,
    },
}

/// Attempts at each table call (DynamoDB answers a 500 or a transaction conflict now and
/// then). A claim retried after an answer was lost is refused, and then finds its own claims:
/// the same execution, with the same recorded input.
const CALL_ATTEMPTS: u32 = 3;

/// The wait before the second attempt at a table call; it doubles, with jitter.
const CALL_RETRY_WAIT: Duration = Duration::from_millis(25);

/// How many times a group's remainder is claimed again after members were found claimed.
/// Each round removes at least one member, so rounds end; this bounds the calls.
const MAX_ROUNDS: usize = 4;

/// Claims the members of `group`, whose execution is `plan` (its input possibly claim-checked),
/// before `deadline`. Members claimed before, by another delivery, go to their recorded
/// execution; the rest is claimed again as a group of its own, named after its members.
pub async fn resolve(
    store: &dyn ClaimStore,
    scope: &str,
    group: Group,
    plan: Plan,
    expires_at_epoch_s: u64,
    deadline: Instant,
) -> Vec<Resolved> {
    let named = plan.name.is_some();
    let mut out = Vec::new();
    let (mut group, mut plan) = (group, plan);
    for _ in 0..MAX_ROUNDS {
        let Some(name) = plan.name.clone() else {
            return unclaimed(out, group.members, "a batch execution without a name cannot be claimed");
        };
        let keys = group.keys();
        let request = ClaimRequest {
            scope,
            execution: &name,
            input: &plan.input,
            keys: &keys,
            expires_at_epoch_s,
        };
        match attempts(deadline, || store.claim(&request)).await {
            Ok(ClaimWrite::Written) => {
                out.push(Resolved::Start {
                    members: group.members,
                    plan,
                    found: false,
                });
                return out;
            }
            Ok(ClaimWrite::Refused) => {}
            Err(e) => return unclaimed(out, group.members, &format!("could not claim: {e}")),
        }
        let (found, rest) = match found_claims(store, scope, group.members, deadline).await {
            Ok(split) => split,
            Err((members, reason)) => return unclaimed(out, members, &reason),
        };
        out.extend(found);
        if rest.is_empty() {
            return out;
        }
        group = Group { members: rest };
        plan = group.plan(named);
    }
    unclaimed(
        out,
        group.members,
        "claimed by other deliveries too many times in a row",
    )
}

/// After a refused claim: the members claimed before, as their recorded executions, and the
/// members still free. An error gives every member back, with the reason.
async fn found_claims(
    store: &dyn ClaimStore,
    scope: &str,
    members: Vec<Member>,
    deadline: Instant,
) -> Result<(Vec<Resolved>, Vec<Member>), (Vec<Member>, String)> {
    let keys: Vec<String> = members.iter().map(|m| m.key.clone()).collect();
    let claimed = match attempts(deadline, || store.claimed(scope, &keys)).await {
        Ok(claimed) if !claimed.is_empty() => claimed,
        Ok(_) => return Err((members, "the claim was refused, but no member is claimed".to_string())),
        Err(e) => return Err((members, format!("could not read the claims: {e}"))),
    };
    let mut by_execution: Vec<(String, Vec<Member>)> = Vec::new();
    let mut rest = Vec::new();
    for member in members {
        match claimed.get(&member.key) {
            Some(execution) => match by_execution.iter_mut().find(|(name, _)| name == execution) {
                Some((_, taken)) => taken.push(member),
                None => by_execution.push((execution.clone(), vec![member])),
            },
            None => rest.push(member),
        }
    }
    let mut found = Vec::new();
    for (execution, taken) in by_execution {
        match attempts(deadline, || store.record(scope, &execution)).await {
            Ok(Some(record)) => found.push(Resolved::Start {
                plan: Plan {
                    name: Some(execution),
                    input: match record {
                        Record::Pending(input) => input,
                        Record::Started => String::new(),
                    },
                    trace_header: taken.first().and_then(|m| m.trace_header.clone()),
                },
                members: taken,
                found: true,
            }),
            Ok(None) => found.push(Resolved::Unclaimed {
                members: taken,
                reason: format!("claimed for {execution}, which has no record"),
            }),
            Err(e) => found.push(Resolved::Unclaimed {
                members: taken,
                reason: format!("could not read the record of {execution}: {e}"),
            }),
        }
    }
    Ok((found, rest))
}

fn unclaimed(mut out: Vec<Resolved>, members: Vec<Member>, reason: &str) -> Vec<Resolved> {
    if !members.is_empty() {
        out.push(Resolved::Unclaimed {
            members,
            reason: reason.to_string(),
        });
    }
    out
}

/// A table call, up to [`CALL_ATTEMPTS`] times while an attempt and its wait fit before
/// `deadline`.
async fn attempts<T, F, Fut>(deadline: Instant, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = CALL_RETRY_WAIT;
    for attempt in 1.. {
        match bounded(deadline, call()).await {
            Ok(value) => return Ok(value),
            Err(e) if attempt >= CALL_ATTEMPTS || Instant::now() + wait >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(wait.mul_f64(0.5 + crate::close::backoff::unit_random())).await;
                wait *= 2;
            }
        }
    }
    unreachable!("the loop returns")
}

/// A table call, cut off at `deadline`.
async fn bounded<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(StoreError::deadline("no time left in this invocation"));
    }
    timeout(left, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::deadline("the coordination table did not answer in time")))
}

#[cfg(test)]
mod tests;
