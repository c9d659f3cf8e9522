//! The in-memory coordination table ([`MemoryStore`]) as a [`ClaimStore`], modelling what
//! DynamoDB enforces: a transaction is all or nothing, each Put conditional on its item being
//! absent; at most [`MAX_TRANSACTION_ITEMS`] writes per transaction, [`MAX_ITEM_BYTES`] per
//! item and [`MAX_TRANSACTION_BYTES`] in all; at most [`MAX_BATCH_GET_KEYS`] keys per read.
//! Expired items are not removed (DynamoDB's TTL deletes them up to days late anyway).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::{claim_pk, execution_pk, ClaimRequest, ClaimStore, ClaimWrite};
use crate::start::budget::memory::MemoryStore;
use crate::start::budget::StoreError;

/// TransactWriteItems: at most 100 actions.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// An item's size limit: 400 KB (names and values).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// TransactWriteItems: at most 4 MB in all.
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;
/// BatchGetItem: at most 100 keys.
pub const MAX_BATCH_GET_KEYS: usize = 100;

/// A claim (`execution` set, no input) or an execution's record (`input` set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimItem {
    /// The claim's execution name.
    pub execution: Option<String>,
    /// The record's input.
    pub input: Option<String>,
    /// Seconds since the epoch.
    pub expires_at_epoch_s: u64,
}

impl ClaimItem {
    /// The item's size as DynamoDB counts it (approximately: names plus values).
    fn bytes(&self, pk: &str) -> usize {
        let text = |name: &str, v: &Option<String>| v.as_ref().map_or(0, |v| name.len() + v.len());
        "pk".len() + pk.len() + text("execution", &self.execution) + text("input", &self.input) + 20
    }
}

impl MemoryStore {
    /// Items written by claim transactions so far (claims and records).
    pub fn claim_writes(&self) -> u64 {
        self.claim_writes.load(Ordering::Relaxed)
    }

    /// The claim or record under `pk`.
    pub fn claim_item(&self, pk: &str) -> Option<ClaimItem> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner()).get(pk).cloned()
    }

    /// Every claim and record, by partition key.
    pub fn claim_items(&self) -> HashMap<String, ClaimItem> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
            };
            (claim_pk(request.scope, key), claim)
        })
        .collect();
    let record = ClaimItem {
        execution: None,
        input: Some(request.input.to_string()),
        expires_at_epoch_s,
    };
    writes.push((execution_pk(request.scope, request.execution), record));
    writes
}

fn validate(writes: &[(String, ClaimItem)]) -> Result<(), StoreError> {
    if writes.len() > MAX_TRANSACTION_ITEMS {
        return Err(StoreError(format!(
            "ValidationException: {} actions, over {MAX_TRANSACTION_ITEMS}",
            writes.len()
        )));
    }
    let mut total = 0;
    for (pk, item) in writes {
        let bytes = item.bytes(pk);
        if bytes > MAX_ITEM_BYTES {
            return Err(StoreError(format!("ValidationException: item {pk} is {bytes} bytes")));
        }
        total += bytes;
    }
    if total > MAX_TRANSACTION_BYTES {
        return Err(StoreError(format!(
            "ValidationException: {total} bytes in one transaction"
        )));
    }
    let mut pks: Vec<&str> = writes.iter().map(|(pk, _)| pk.as_str()).collect();
    pks.sort_unstable();
    if pks.windows(2).any(|w| w[0] == w[1]) {
        return Err(StoreError(
            "ValidationException: two operations on one item".to_string(),
        ));
    }
    Ok(())
}

#[async_trait]
impl ClaimStore for MemoryStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimWrite, StoreError> {
        self.call().await?;
        let writes = transaction(request);
        validate(&writes)?;
        let mut items = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if writes.iter().any(|(pk, _)| items.contains_key(pk)) {
            return Ok(ClaimWrite::Refused);
        }
        self.claim_writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
        items.extend(writes);
        Ok(ClaimWrite::Written)
    }

    async fn claimed(&self, scope: &str, keys: &[String]) -> Result<HashMap<String, String>, StoreError> {
        self.call().await?;
        if keys.len() > MAX_BATCH_GET_KEYS {
            return Err(StoreError(format!(
                "ValidationException: {} keys in one read",
                keys.len()
            )));
        }
        let items = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        Ok(keys
            .iter()
            .filter_map(|key| {
                let execution = items.get(&claim_pk(scope, key))?.execution.clone()?;
                Some((key.clone(), execution))
            })
            .collect())
    }

    async fn recorded(&self, scope: &str, execution: &str) -> Result<Option<String>, StoreError> {
        self.call().await?;
        let items = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        Ok(items.get(&execution_pk(scope, execution)).and_then(|i| i.input.clone()))
    }
}
