//! The sync: the budget a quota implies, and whether to write it.
//!
//! The budget is `share × quota`: rate = share × refill (starts per second), burst = share ×
//! bucket (starts), each rounded down to 0.001, so the budget never exceeds its share; the rest
//! is left to the account's other callers.
//!
//! **Hand changes win.** Each sync records on the budget item the limits it wrote
//! (`synced_rate`, `synced_burst`, `synced_at`). A budget whose limits differ from that record
//! was changed since by someone else (`sfn-pacer-quota set`, or the item deleted and created
//! again by an instance from its STARTS_PER_SECOND and STARTS_BURST) and is kept, unless
//! forced. A budget never synced has no record: the first sync takes it over. The record is
//! written after the budget, on condition that the budget's limits are still the synced ones;
//! a crash between the two writes leaves the old record, and the next sync then sees a hand
//! change only if the quota changed meanwhile (else the budget already is the target, and the
//! record is repaired).

use async_trait::async_trait;
use sfn_pacer::config::WorkflowType;
use sfn_pacer::start::budget::{BudgetState, Store, Update};
use sfn_pacer::start::table::StoreError;

use crate::failure::{store_failure, Failure};
use crate::quota::{read_quota, Metrics, Quota, ServiceQuotas};
use crate::write::{write_budget, Wrote};

/// The default share of the quota the budget takes (`--share`, `QUOTA_SHARE`).
pub const DEFAULT_SHARE: f64 = 0.9;

/// Limits are rounded down to this, in their units (starts, starts per second).
const RESOLUTION: f64 = 1e-3;

/// `value` rounded down to [`RESOLUTION`].
fn round_down(value: f64) -> f64 {
    let rounded = (value / RESOLUTION).floor() * RESOLUTION;
    format!("{rounded:.3}").parse().unwrap_or(rounded)
}

/// The fraction of the account's quota the budget takes: `0 < share ≤ 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share(f64);

impl Share {
    /// Checks a share; the error says what is allowed (the caller names the flag or variable).
    pub fn new(share: f64) -> Result<Share, String> {
        if share.is_finite() && share > 0.0 && share <= 1.0 {
            Ok(Share(share))
        } else {
            Err(format!(
                "must be a fraction of the quota above 0 and at most 1 (e.g. 0.9 leaves a tenth to other callers), got {share}"
            ))
        }
    }

    /// The fraction.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// The budget a sync sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Starts per second: share × the quota's refill.
    pub rate_per_second: f64,
    /// Starts: share × the quota's bucket, at least 1.
    pub burst: f64,
}

impl Target {
    /// `share × quota`, rounded down to 0.001.
    pub fn of(quota: &Quota, share: Share) -> Target {
        Target {
            rate_per_second: round_down(quota.refill.value * share.get()).max(RESOLUTION),
            burst: round_down(quota.bucket.value * share.get()).max(1.0),
        }
    }

    fn is(&self, state: &BudgetState) -> bool {
        state.rate_per_second == self.rate_per_second && state.burst == self.burst
    }
}

/// What the last sync wrote, as recorded on the budget item.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRecord {
    /// The rate it set, starts per second.
    pub rate_per_second: f64,
    /// The burst it set, starts.
    pub burst: f64,
    /// When, seconds since the Unix epoch.
    pub at_epoch_s: f64,
}

impl SyncRecord {
    fn is_of(&self, state: &BudgetState) -> bool {
        state.rate_per_second == self.rate_per_second && state.burst == self.burst
    }
}

/// The sync's record on the budget item.
#[async_trait]
pub trait Records: Send + Sync {
    /// The record on the budget under `key` (`None`: never synced, or no budget).
    async fn read(&self, key: &str) -> Result<Option<SyncRecord>, StoreError>;
    /// Records `record` on the budget under `key`, on condition that the budget's limits are
    /// the record's; `false` when they are not (changed in between) or there is no budget.
    async fn write(&self, key: &str, record: &SyncRecord) -> Result<bool, StoreError>;
}

/// What the sync did (or, with `dry_run`, would do) to the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// There was no budget: created at the target.
    Created,
    /// The limits were set to the target.
    Set,
    /// The limits already were the target.
    Unchanged,
    /// The limits were changed by hand since the last sync: left as they are (not forced).
    Kept,
}

impl Action {
    /// The word for text and JSON (`created`, `set`, `unchanged`, `kept`).
    pub fn word(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Set => "set",
            Action::Unchanged => "unchanged",
            Action::Kept => "kept",
        }
    }
}

/// What to sync, and how.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The coordination table (for messages).
    pub table: String,
    /// The quota key of the budget.
    pub key: String,
    /// Whose quota: the budget's workflow type.
    pub workflow_type: WorkflowType,
    /// The budget's share of the quota.
    pub share: Share,
    /// Overwrite limits changed by hand since the last sync.
    pub force: bool,
    /// Read and decide, but write nothing.
    pub dry_run: bool,
    /// Now, seconds since the Unix epoch.
    pub now: f64,
}

/// The result of a sync.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOutcome {
    /// The account's quota, as read.
    pub quota: Quota,
    /// The share asked for.
    pub share: f64,
    /// The budget it implies.
    pub target: Target,
    /// What was (with `dry_run`: would be) done.
    pub action: Action,
    /// Nothing was written (`--dry-run`).
    pub dry_run: bool,
    /// The limits had been changed by hand since the last sync (overwritten only when forced).
    pub hand_changed: bool,
    /// The budget before (`None`: there was none).
    pub before: Option<BudgetState>,
    /// The budget after (as it would be, with `dry_run`; `None` when there is none).
    pub after: Option<BudgetState>,
    /// The record of the previous sync (`None`: never synced).
    pub last_sync: Option<SyncRecord>,
    /// This sync's record was written.
    pub recorded: bool,
}

impl SyncOutcome {
    /// One line: the quota, where it came from, and what was done.
    pub fn summary(&self) -> String {
        let quota = format!(
            "quota {} starts/s, bucket {} ({}, {})",
            number(self.quota.refill.value),
            number(self.quota.bucket.value),
            self.quota.refill.source.tag(),
            self.quota.bucket.source.tag()
        );
        let target = format!(
            "rate {} starts/s, burst {} at share {}",
            number(self.target.rate_per_second),
            number(self.target.burst),
            number(self.share)
        );
        let would = if self.dry_run { "would be " } else { "" };
        let done = match (self.action, &self.before) {
            (Action::Created, _) => format!("budget {would}created: {target}"),
            (Action::Set, Some(before)) => format!(
                "budget {would}set from rate {} starts/s, burst {} to {target}{}",
                number(before.rate_per_second),
                number(before.burst),
                if self.hand_changed {
                    " (forced over a hand change)"
                } else {
                    ""
                }
            ),
            (Action::Unchanged, _) | (Action::Set, None) => format!("budget unchanged: {target}"),
            (Action::Kept, Some(before)) => format!(
                "budget kept at rate {} starts/s, burst {}: changed by hand since the last sync \
                 (which set rate {} starts/s, burst {}); --force would set {target}",
                number(before.rate_per_second),
                number(before.burst),
                self.last_sync
                    .as_ref()
                    .map_or("?".into(), |r| number(r.rate_per_second)),
                self.last_sync.as_ref().map_or("?".into(), |r| number(r.burst)),
            ),
            (Action::Kept, None) => "budget kept".into(),
        };
        format!("{quota}; {done}")
    }
}

/// `value` with at most 3 decimals, trailing zeros dropped (`250`, `0.5`, `0.734`).
pub fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

/// What to do with the budget `current`, given the last sync's record.
fn decide(current: Option<&BudgetState>, last: Option<&SyncRecord>, target: Target, force: bool) -> (Action, bool) {
    let Some(state) = current else {
        return (Action::Created, false);
    };
    let hand_changed = last.is_some_and(|record| !record.is_of(state));
    let action = if target.is(state) {
        Action::Unchanged
    } else if hand_changed && !force {
        Action::Kept
    } else {
        Action::Set
    };
    (action, hand_changed)
}

/// The write that carries out `action` on `current`, at `now`.
fn update_for(action: Action, current: Option<&BudgetState>, target: Target, now: f64) -> Option<Update> {
    match (action, current) {
        (Action::Created, _) => Some(Update::Create(BudgetState::new(target.rate_per_second, target.burst))),
        (Action::Set, Some(state)) => Some(state.plan_set_limits(target.rate_per_second, target.burst, now)),
        _ => None,
    }
}

/// The budget `current` after `update`, as a store applies it.
fn applied(current: Option<&BudgetState>, update: &Update) -> Option<BudgetState> {
    match BudgetState::apply(current, update) {
        sfn_pacer::start::budget::Written::Applied(state) => Some(state),
        sfn_pacer::start::budget::Written::Refused(state) => state,
    }
}

/// Reads the quota, then sets the budget under `request.key` to `share × quota` unless its
/// limits were changed by hand since the last sync (see the module's docs), and records it.
pub async fn sync(
    quotas: &dyn ServiceQuotas,
    metrics: &dyn Metrics,
    store: &dyn Store,
    records: &dyn Records,
    request: &SyncRequest,
) -> Result<SyncOutcome, Failure> {
    let quota = read_quota(quotas, metrics, request.workflow_type).await?;
    let target = Target::of(&quota, request.share);
    let table = request.table.as_str();
    let last_sync = records
        .read(&request.key)
        .await
        .map_err(|e| store_failure("GetItem", table, e))?;
    let mut decided = (Action::Unchanged, false);
    let (before, after) = if request.dry_run {
        let current = store
            .get(&request.key)
            .await
            .map_err(|e| store_failure("GetItem", table, e))?;
        decided = decide(current.as_ref(), last_sync.as_ref(), target, request.force);
        let after = match update_for(decided.0, current.as_ref(), target, request.now) {
            Some(update) => applied(current.as_ref(), &update),
            None => current.clone(),
        };
        (current, after)
    } else {
        let wrote = write_budget(store, table, &request.key, |current| {
            decided = decide(current, last_sync.as_ref(), target, request.force);
            Ok(update_for(decided.0, current, target, request.now))
        })
        .await?;
        match wrote {
            Wrote::Applied(outcome) => (outcome.before, Some(outcome.after)),
            Wrote::Nothing(current) => (current.clone(), current),
        }
    };
    let (action, hand_changed) = decided;
    let record = SyncRecord {
        rate_per_second: target.rate_per_second,
        burst: target.burst,
        at_epoch_s: request.now,
    };
    let recorded = match action {
        Action::Kept => false,
        _ if request.dry_run => false,
        _ => records
            .write(&request.key, &record)
            .await
            .map_err(|e| store_failure("UpdateItem", table, e))?,
    };
    Ok(SyncOutcome {
        quota,
        share: request.share.get(),
        target,
        action,
        dry_run: request.dry_run,
        hand_changed,
        before,
        after,
        last_sync,
        recorded,
    })
}

#[cfg(test)]
mod tests;
