//! The budget's one write path for the operator's `set` and the quota sync: a compare-and-set
//! of the budget item, retried over the leases that move it in between.

use sfn_pacer::aws::dynamo::budget_pk;
use sfn_pacer::start::budget::shards::spread_limits;
use sfn_pacer::start::budget::{BudgetState, Store, Update, Written};
use sfn_pacer::start::clock::system_seconds;

use crate::failure::{operation_of, store_failure, Failure};

/// Writes a caller tries before it gives up (each retry follows a concurrent lease, create or
/// delete).
const WRITE_ATTEMPTS: usize = 10;

/// What a budget write did.
#[derive(Debug, Clone, PartialEq)]
pub struct SetOutcome {
    /// The budget before the write (`None`: the write created it).
    pub before: Option<BudgetState>,
    /// The budget after the write.
    pub after: BudgetState,
}

impl SetOutcome {
    /// True when the write created the budget.
    pub fn created(&self) -> bool {
        self.before.is_none()
    }
}

/// What [`write_budget`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Wrote {
    /// The plan asked for no write: the budget as last read (`None`: there is none).
    Nothing(Option<BudgetState>),
    /// The write was applied.
    Applied(SetOutcome),
}

/// Writes the budget under `key` as `plan` decides: `plan` gets the budget as read (`None`: no
/// budget yet) and returns the update to write (`Create`, or a compare-and-set such as
/// `SetLimits`), or `None` for no write. A refused write (a lease, a throttle's decrease or
/// another writer in between) hands the item as it now is back to `plan`, which decides
/// again: so a decision always rests on the budget it overwrites. A `Create` that loses to an
/// instance creating the budget at the same moment becomes a `SetLimits`, and a `SetLimits` on
/// an item deleted meanwhile becomes a create, as `plan` sees fit.
pub async fn write_budget(
    store: &dyn Store,
    table: &str,
    key: &str,
    mut plan: impl FnMut(Option<&BudgetState>) -> Result<Option<Update>, Failure>,
) -> Result<Wrote, Failure> {
    let mut current = store.get(key).await.map_err(|e| store_failure("GetItem", table, e))?;
    for _ in 0..WRITE_ATTEMPTS {
        let Some(update) = plan(current.as_ref())? else {
            return Ok(Wrote::Nothing(current));
        };
        let written = store
            .write(key, &update)
            .await
            .map_err(|e| store_failure(operation_of(&update), table, e))?;
        match (written, &update) {
            (Written::Applied(after), update) => {
                if let Update::SetLimits { .. } = update {
                    // A budget spread over several items: the others take the root's limits.
                    spread_limits(store, key, &after, system_seconds())
                        .await
                        .map_err(|e| store_failure("UpdateItem", table, e))?;
                }
                return Ok(Wrote::Applied(SetOutcome { before: current, after }));
            }
            // The item is there but is no budget (its attributes do not read as one).
            (Written::Refused(None), Update::Create(_)) => {
                return Err(Failure::Unexpected(format!(
                    "PutItem on table {table}: an item under {} exists but is not a budget \
                     (rate, burst and version are needed); delete it or use another --key",
                    budget_pk(key)
                )))
            }
            (Written::Refused(now), _) => current = now,
        }
    }
    Err(Failure::Unexpected(format!(
        "the budget under {} in table {table} changed under every one of {WRITE_ATTEMPTS} writes; try again",
        budget_pk(key)
    )))
}
