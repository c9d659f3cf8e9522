//! The in-memory table as a [`RunningStore`]: each [`Write`] is applied as [`Write::apply`] says,
//! all or nothing, with the write units DynamoDB charges (two per KB of each item a transaction
//! writes; one for the single-item writes, [`Write::Extend`] and [`Write::Line`]) taken from each
//! item's capacity; the index query returns held holders whose check is due.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{lock, ItemWrite, MemoryStore};
use crate::start::running::{
    holder_pk, line_pk, settings_pk, shard_pk, CapView, Holder, HolderState, Item, RunningStore, Shard, Write, Written,
};
use crate::start::table::{write_units, StoreError, MAX_TRANSACTION_ITEMS};

/// An item's size as DynamoDB counts it (approximately: its key, names and values).
fn bytes(pk: &str, item: Option<&Item>) -> usize {
    let attributes = match item {
        Some(Item::Holder(h)) => 160 + h.scope.len() + h.name.len() + h.execution_arn.len() + pk.len(),
        Some(_) => 60,
        None => 0,
    };
    pk.len() + attributes
}

/// Whether DynamoDB makes `write` one transaction (several items) or one single-item write.
fn transactional(write: &Write) -> bool {
    !matches!(write, Write::Extend { .. } | Write::Line(_))
}

impl MemoryStore {
    /// Every item of the cap `key`, by partition key.
    pub fn running_items(&self, key: &str) -> HashMap<String, Item> {
        let prefix = settings_pk(key);
        lock(&self.running)
            .iter()
            .filter(|(pk, _)| **pk == prefix || pk.starts_with(&format!("{prefix}#")))
            .map(|(pk, item)| (pk.clone(), item.clone()))
            .collect()
    }

    /// Every held holder of the cap `key`.
    pub fn held_holders(&self, key: &str) -> Vec<Holder> {
        self.running_items(key)
            .into_values()
            .filter_map(|item| match item {
                Item::Holder(h) if h.state == HolderState::Held => Some(h),
                _ => None,
            })
            .collect()
    }

    fn running_view(&self, key: &str) -> Option<CapView> {
        let items = lock(&self.running);
        let Some(Item::Settings(settings)) = items.get(&settings_pk(key)).cloned() else {
            return None;
        };
        let shards = (0..settings.shards)
            .map(|i| match items.get(&shard_pk(key, i)) {
                Some(Item::Shard(s)) => *s,
                _ => Shard::default(),
            })
            .collect();
        let line = match items.get(&line_pk(key)) {
            Some(Item::Line(l)) => Some(*l),
            _ => None,
        };
        Some(CapView { settings, shards, line })
    }
}

#[async_trait]
impl RunningStore for MemoryStore {
    async fn write(&self, key: &str, write: &Write) -> Result<Written, StoreError> {
        let planned = {
            let items = lock(&self.running);
            write.actions(key, &|pk| items.get(pk).cloned())
        };
        if planned.len() > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::permanent(format!(
                "ValidationException: {} actions, over {MAX_TRANSACTION_ITEMS}",
                planned.len()
            )));
        }
        let units: Vec<ItemWrite> = planned
            .iter()
            .map(|(pk, after)| ItemWrite {
                pk: pk.clone(),
                units: write_units(
                    bytes(pk, after.as_ref().ok().and_then(Option::as_ref)),
                    transactional(write),
                ),
            })
            .collect();
        self.call(&units, || {
            let mut items = lock(&self.running);
            match write.apply(key, &|pk| items.get(pk).cloned()) {
                Err(found) => Written::Refused(found),
                Ok(after) => {
                    let mut line = None;
                    for (pk, item) in after {
                        match item {
                            Some(item) => {
                                if let Item::Line(l) = &item {
                                    line = Some(*l);
                                }
                                items.insert(pk, item);
                            }
                            None => {
                                items.remove(&pk);
                            }
                        }
                    }
                    Written::Applied(line)
                }
            }
        })
        .await
    }

    async fn view(&self, key: &str) -> Result<Option<CapView>, StoreError> {
        self.call(&[], || self.running_view(key)).await
    }

    async fn holder(&self, key: &str, scope: &str, name: &str) -> Result<Option<Holder>, StoreError> {
        self.call(&[], || match lock(&self.running).get(&holder_pk(key, scope, name)) {
            Some(Item::Holder(h)) => Some(h.clone()),
            _ => None,
        })
        .await
    }

    async fn due(&self, key: &str, now_s: u64, limit: usize) -> Result<Vec<Holder>, StoreError> {
        self.call(&[], || {
            let mut due: Vec<Holder> = self
                .held_holders(key)
                .into_iter()
                .filter(|h| h.check_at_s <= now_s)
                .collect();
            due.sort_by_key(|h| (h.check_at_s, h.name.clone()));
            due.truncate(limit);
            due
        })
        .await
    }
}
