//! The in-memory table as a [`ClaimStore`], modelling what DynamoDB enforces: a transaction
//! is all or nothing, each Put conditional on its item being absent; at most
//! [`MAX_TRANSACTION_ITEMS`] writes per transaction, [`MAX_ITEM_BYTES`] per item and
//! [`MAX_TRANSACTION_BYTES`] in all; at most [`MAX_BATCH_GET_KEYS`] keys per read; two write
//! units per KB of each item a transaction writes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::{lock, ItemWrite, MemoryStore};
use crate::start::claim::{claim_pk, execution_pk, ClaimRequest, ClaimStore, ClaimWrite, Record};
use crate::start::table::{
    write_units, StoreError, MAX_BATCH_GET_KEYS, MAX_ITEM_BYTES, MAX_TRANSACTION_BYTES, MAX_TRANSACTION_ITEMS,
};

/// A claim (`execution` set, no input) or an execution's record (`input` set; once its start
/// is confirmed, `started` and no input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimItem {
    /// The claim's execution name.
    pub execution: Option<String>,
    /// The record's input.
    pub input: Option<String>,
    /// Seconds since the epoch.
    pub expires_at_epoch_s: u64,
    /// The record's execution was confirmed started (its input dropped).
    pub started: bool,
}

impl ClaimItem {
    /// The item's size as DynamoDB counts it (approximately: names plus values).
    pub fn bytes(&self, pk: &str) -> usize {
        let text = |name: &str, v: &Option<String>| v.as_ref().map_or(0, |v| name.len() + v.len());
        let started = if self.started {
            "state".len() + "started".len()
        } else {
            0
        };
        "pk".len() + pk.len() + text("execution", &self.execution) + text("input", &self.input) + started + 20
    }
}

impl MemoryStore {
    /// Items written by claim transactions so far (claims and records).
    pub fn claim_writes(&self) -> u64 {
        self.claim_writes.load(Ordering::Relaxed)
    }

    /// The claim or record under `pk`.
    pub fn claim_item(&self, pk: &str) -> Option<ClaimItem> {
        lock(&self.claims).get(pk).cloned()
    }

    /// Every claim and record, by partition key.
    pub fn claim_items(&self) -> HashMap<String, ClaimItem> {
        lock(&self.claims).clone()
    }
}

/// The writes of one claim transaction: every claim, then the record.
fn transaction(request: &ClaimRequest<'_>) -> Vec<(String, ClaimItem)> {
    let expires_at_epoch_s = request.expires_at_epoch_s;
    let mut writes: Vec<(String, ClaimItem)> = request
        .keys
        .iter()
        .map(|key| {
            let claim = ClaimItem {
                execution: Some(request.execution.to_string()),
                input: None,
                expires_at_epoch_s,
                started: false,
            };
            (claim_pk(request.scope, key), claim)
        })
        .collect();
    let record = ClaimItem {
        execution: None,
        input: Some(request.input.to_string()),
        expires_at_epoch_s,
        started: false,
    };
    writes.push((execution_pk(request.scope, request.execution), record));
    writes
}

fn validate(writes: &[(String, ClaimItem)]) -> Result<(), StoreError> {
    if writes.len() > MAX_TRANSACTION_ITEMS {
        return Err(StoreError::permanent(format!(
            "ValidationException: {} actions, over {MAX_TRANSACTION_ITEMS}",
            writes.len()
        )));
    }
    let mut total = 0;
    for (pk, item) in writes {
        let bytes = item.bytes(pk);
        if bytes > MAX_ITEM_BYTES {
            return Err(StoreError::permanent(format!(
                "ValidationException: item {pk} is {bytes} bytes"
            )));
        }
        total += bytes;
    }
    if total > MAX_TRANSACTION_BYTES {
        return Err(StoreError::permanent(format!(
            "ValidationException: {total} bytes in one transaction"
        )));
    }
    let mut pks: Vec<&str> = writes.iter().map(|(pk, _)| pk.as_str()).collect();
    pks.sort_unstable();
    if pks.windows(2).any(|w| w[0] == w[1]) {
        return Err(StoreError::permanent("ValidationException: two operations on one item"));
    }
    Ok(())
}

#[async_trait]
impl ClaimStore for MemoryStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimWrite, StoreError> {
        let writes = transaction(request);
        validate(&writes)?;
        let units: Vec<ItemWrite> = writes
            .iter()
            .map(|(pk, item)| ItemWrite {
                pk: pk.clone(),
                units: write_units(item.bytes(pk), true),
            })
            .collect();
        self.call(&units, || {
            let mut items = lock(&self.claims);
            if writes.iter().any(|(pk, _)| items.contains_key(pk)) {
                return ClaimWrite::Refused;
            }
            self.claim_writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
            items.extend(writes);
            ClaimWrite::Written
        })
        .await
    }

    async fn claimed(&self, scope: &str, keys: &[String]) -> Result<HashMap<String, String>, StoreError> {
        if keys.len() > MAX_BATCH_GET_KEYS {
            return Err(StoreError::permanent(format!(
                "ValidationException: {} keys in one read",
                keys.len()
            )));
        }
        self.call(&[], || {
            let items = lock(&self.claims);
            keys.iter()
                .filter_map(|key| {
                    let execution = items.get(&claim_pk(scope, key))?.execution.clone()?;
                    Some((key.clone(), execution))
                })
                .collect()
        })
        .await
    }

    async fn recorded(&self, scope: &str, execution: &str) -> Result<Option<String>, StoreError> {
        self.call(&[], || {
            lock(&self.claims)
                .get(&execution_pk(scope, execution))
                .and_then(|i| i.input.clone())
        })
        .await
    }

    async fn record(&self, scope: &str, execution: &str) -> Result<Option<Record>, StoreError> {
        self.call(&[], || {
            let items = lock(&self.claims);
            let item = items.get(&execution_pk(scope, execution))?;
            match (&item.input, item.started) {
                (_, true) => Some(Record::Started),
                (Some(input), false) => Some(Record::Pending(input.clone())),
                (None, false) => None,
            }
        })
        .await
    }

    /// An UpdateItem of the record (if it exists): `started` set, the input removed; it
    /// consumes the write units of the larger of the item before and after, as DynamoDB bills.
    async fn confirm(&self, scope: &str, execution: &str) -> Result<(), StoreError> {
        let pk = execution_pk(scope, execution);
        let before = lock(&self.claims).get(&pk).map_or(0, |item| item.bytes(&pk));
        let writes = [ItemWrite {
            pk: pk.clone(),
            units: write_units(before, false),
        }];
        self.call(&writes, || {
            if let Some(item) = lock(&self.claims).get_mut(&pk) {
                item.input = None;
                item.started = true;
            }
        })
        .await
    }
}
