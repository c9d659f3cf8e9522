//! The DynamoDB adapter of [`ClaimStore`]: a claim transaction is one `TransactWriteItems` of
//! conditional Puts; reads are strongly consistent (`BatchGetItem`, `GetItem`). Tested against
//! moto.
//!
//! Items: a claim is `pk` (S) `claim#<scope>#<key>`, `kind` (S) `claim`, `execution` (S),
//! `expires_at` (N, seconds since the epoch: the table's TTL attribute); a record is `pk`
//! `execution#<scope>#<name>`, `kind` `execution`, `input` (S), `messages` (N), `expires_at`;
//! once its start is confirmed, only `pk`, `kind`, `state` (S) `started` and `expires_at`
//! (one UpdateItem): what a redelivery needs to acknowledge its messages.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use super::{s, store_error, DynamoStore, Item};
use crate::start::claim::{claim_pk, execution_pk, ClaimRequest, ClaimStore, ClaimWrite, Record};

/// A confirmed record's `state`.
const STARTED: &str = "started";
use crate::start::table::StoreError;

/// A Put of `item` on condition that no item has its `pk`.
fn put_if_absent(table: &str, item: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(#pk)")
        .expression_attribute_names("#pk", "pk")
        .build()
        .map_err(|e| StoreError::permanent(e.to_string()))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// The transaction's items: every claim, then the record.
fn transaction(table: &str, request: &ClaimRequest<'_>) -> Result<Vec<TransactWriteItem>, StoreError> {
    let expires_at = AttributeValue::N(request.expires_at_epoch_s.to_string());
    let mut items = Vec::with_capacity(request.keys.len() + 1);
    for key in request.keys {
        let claim = HashMap::from([
            ("pk".to_string(), s(&claim_pk(request.scope, key))),
            ("kind".to_string(), s("claim")),
            ("execution".to_string(), s(request.execution)),
            ("expires_at".to_string(), expires_at.clone()),
        ]);
        items.push(put_if_absent(table, claim)?);
    }
    let record = HashMap::from([
        ("pk".to_string(), s(&execution_pk(request.scope, request.execution))),
        ("kind".to_string(), s("execution")),
        ("input".to_string(), s(request.input)),
        (
            "messages".to_string(),
            AttributeValue::N(request.keys.len().to_string()),
        ),
        ("expires_at".to_string(), expires_at),
    ]);
    items.push(put_if_absent(table, record)?);
    Ok(items)
}

/// A cancelled transaction was refused (some item exists) when a condition failed. A list of
/// reasons without one (a conflict with another transaction, throttling) is an error to retry.
fn refused(e: &TransactWriteItemsError) -> bool {
    match e {
        TransactWriteItemsError::TransactionCanceledException(c) => {
            let reasons = c.cancellation_reasons();
            reasons.is_empty() || reasons.iter().any(|r| r.code() == Some("ConditionalCheckFailed"))
        }
        _ => false,
    }
}

/// A transaction cancelled for capacity or a conflict with another transaction (not applied,
/// worth retrying), by its cancellation reasons; `None` for any other error.
pub(super) fn cancelled(e: Option<&TransactWriteItemsError>) -> Option<StoreError> {
    let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e else {
        return None;
    };
    let codes: Vec<&str> = c.cancellation_reasons().iter().filter_map(|r| r.code()).collect();
    let message = format!("TransactionCanceledException: {}", codes.join(", "));
    if codes
        .iter()
        .any(|c| ["ThrottlingError", "ProvisionedThroughputExceeded"].contains(c))
    {
        Some(StoreError::throttled(message))
    } else {
        Some(StoreError::unknown(message))
    }
}

pub(super) fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

#[async_trait]
impl ClaimStore for DynamoStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimWrite, StoreError> {
        let items = transaction(&self.table, request)?;
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(ClaimWrite::Written),
            Err(e) if e.as_service_error().is_some_and(refused) => Ok(ClaimWrite::Refused),
            Err(e) => Err(cancelled(e.as_service_error()).unwrap_or_else(|| store_error(&e))),
        }
    }

    async fn claimed(&self, scope: &str, keys: &[String]) -> Result<HashMap<String, String>, StoreError> {
        let by_pk: HashMap<String, &String> = keys.iter().map(|k| (claim_pk(scope, k), k)).collect();
        let pks: Vec<String> = by_pk.keys().cloned().collect();
        let items = self.batch_get(&pks, &["pk", "execution"]).await?;
        Ok(items
            .into_iter()
            .filter_map(|(pk, item)| Some((by_pk.get(&pk).copied()?.clone(), text(&item, "execution")?)))
            .collect())
    }

    async fn record(&self, scope: &str, execution: &str) -> Result<Option<Record>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&execution_pk(scope, execution)))
            .consistent_read(true)
            .projection_expression("#input, #state")
            .expression_attribute_names("#input", "input")
            .expression_attribute_names("#state", "state")
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        Ok(match (text(item, "state").as_deref(), text(item, "input")) {
            (Some(STARTED), _) => Some(Record::Started),
            (_, Some(input)) => Some(Record::Pending(input)),
            _ => None,
        })
    }

    async fn confirm(&self, scope: &str, execution: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&execution_pk(scope, execution)))
            .condition_expression("attribute_exists(#pk)")
            .update_expression("SET #state = :started REMOVE #input, #messages")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#input", "input")
            .expression_attribute_names("#messages", "messages")
            .expression_attribute_values(":started", s(STARTED))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // No record (expired, or never written): nothing to trim.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(()),
            Err(e) => Err(store_error(&e)),
        }
    }

    async fn recorded(&self, scope: &str, execution: &str) -> Result<Option<String>, StoreError> {
        Ok(match self.record(scope, execution).await? {
            Some(Record::Pending(input)) => Some(input),
            _ => None,
        })
    }
}
