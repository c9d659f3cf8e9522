//! The in-memory table as the budget's [`Store`]: each [`Update`] is one conditional write of
//! the budget's item ([`BudgetState::apply`]), refused or applied.

use async_trait::async_trait;

use super::{lock, ItemWrite, MemoryStore};
use crate::aws::dynamo::budget_pk;
use crate::start::budget::{BudgetState, Store, Update, Written};
use crate::start::table::{write_units, StoreError};

/// The budget item's size as DynamoDB counts it: its key and six small attributes.
const BUDGET_ITEM_BYTES: usize = 128;

impl MemoryStore {
    /// The budget under `key`, as it is now.
    pub fn item(&self, key: &str) -> Option<BudgetState> {
        lock(&self.budgets).get(key).cloned()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<BudgetState>, StoreError> {
        self.call(&[], || {
            self.count_budget_read(key);
            self.item(key)
        })
        .await
    }

    async fn write(&self, key: &str, update: &Update) -> Result<Written, StoreError> {
        let writes = [ItemWrite {
            pk: budget_pk(key),
            units: write_units(BUDGET_ITEM_BYTES, false),
        }];
        self.call(&writes, || {
            let mut items = lock(&self.budgets);
            let before = items.get(key).map(|s| s.factor);
            let written = BudgetState::apply(items.get(key), update);
            match &written {
                Written::Applied(state) => {
                    let lowered = before.is_some_and(|f| state.factor < f);
                    self.count_budget(|c| {
                        c.applied += 1;
                        c.decreases += u64::from(lowered);
                    });
                    items.insert(key.to_string(), state.clone());
                }
                Written::Refused(_) => self.count_budget(|c| c.refused += 1),
            }
            written
        })
        .await
    }
}
