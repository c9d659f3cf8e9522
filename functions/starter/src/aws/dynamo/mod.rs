//! The DynamoDB adapter of [`Store`]: the budget as one item of the coordination table, each
//! [`Update`] as one conditional `UpdateItem` (or `PutItem`) whose expressions mirror
//! [`BudgetState::apply`]. Tested against moto.
//!
//! The item: `pk` (S) `quota#<QUOTA_KEY>`, `kind` (S) `quota`, `rate` and `burst` (N, per
//! second and slots), `factor` (N), `version` (N), `tat` (N, seconds since the epoch), `spread`
//! (N, seconds: the lessees' contention spread; absent in items written before it, read as 0),
//! `shards` and `layout` (N: the items the budget is spread over, see `budget::shards`; absent:
//! 1 and 0), `leases` (N, leases applied), and on the root `plan_until` (N, seconds) and `span`
//! (N). Shard `i ≥ 1` is the item `quota#<QUOTA_KEY>#<i>`.
//! The per-message claims of batch mode live beside it under other `pk` prefixes ([`claims`]).

mod claims;
pub mod running;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::start::budget::{BudgetState, Shape, Store, Update, Written};
use crate::start::table::StoreError;

type Item = HashMap<String, AttributeValue>;

/// Rounds of `BatchGetItem` for keys DynamoDB left unprocessed.
const READ_ROUNDS: usize = 3;

/// An SDK error with its whole chain of causes, as a [`StoreError`] of the kind its code or
/// failure says: capacity codes are throttles; 5xx codes, timeouts and broken connections leave
/// the outcome unknown; a request that could not be built, and any other code (a missing
/// table, no permission, a malformed request), will not succeed by retrying.
pub fn store_error<E, R>(e: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = DisplayErrorContext(e).to_string();
    match e {
        SdkError::ServiceError(service) => code_error(service.err().code(), message),
        SdkError::ConstructionFailure(_) => StoreError::permanent(message),
        _ => StoreError::unknown(message),
    }
}

/// The kind of a service error, by its code (`ProvideErrorMetadata::code`).
fn code_error(code: Option<&str>, message: String) -> StoreError {
    match code.unwrap_or_default() {
        "ThrottlingException" | "ProvisionedThroughputExceededException" | "RequestLimitExceeded" => {
            StoreError::throttled(message)
        }
        "InternalServerError" | "InternalFailure" | "ServiceUnavailable" | "TransactionConflictException" => {
            StoreError::unknown(message)
        }
        _ => StoreError::permanent(message),
    }
}

/// The partition key of the budget `key`.
pub fn budget_pk(key: &str) -> String {
    format!("quota#{key}")
}

/// The coordination table through `aws-sdk-dynamodb`: one attempt per call (a failure falls
/// back to the static split at once; the next lease tries again), bounded by `call_timeout`.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    /// The table `table` (name or ARN).
    pub fn new(sdk_config: &aws_config::SdkConfig, table: &str, call_timeout: Duration) -> DynamoStore {
        let config = aws_sdk_dynamodb::config::Builder::from(sdk_config)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(call_timeout)
                    .operation_timeout(call_timeout)
                    .build(),
            )
            .build();
        DynamoStore {
            client: aws_sdk_dynamodb::Client::from_conf(config),
            table: table.to_string(),
        }
    }

    /// The items of `pks` (at most 100), by `pk`, strongly consistent: only the attributes of
    /// `projection` (with `pk`) when it is not empty. Keys DynamoDB leaves unprocessed (it does so
    /// under load) are read again, [`READ_ROUNDS`] times at most.
    async fn batch_get(&self, pks: &[String], projection: &[&str]) -> Result<HashMap<String, Item>, StoreError> {
        let mut wanted: Vec<Item> = pks
            .iter()
            .map(|pk| HashMap::from([("pk".to_string(), s(pk))]))
            .collect();
        let mut out = HashMap::new();
        for _ in 0..READ_ROUNDS {
            if wanted.is_empty() {
                return Ok(out);
            }
            let mut read = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut wanted)))
                .consistent_read(true);
            if !projection.is_empty() {
                let names: Vec<String> = projection.iter().map(|n| format!("#{n}")).collect();
                read = read.projection_expression(names.join(", "));
                for name in projection {
                    read = read.expression_attribute_names(format!("#{name}"), *name);
                }
            }
            let read = read.build().map_err(|e| StoreError::permanent(e.to_string()))?;
            let answer = self
                .client
                .batch_get_item()
                .request_items(&self.table, read)
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            for item in answer
                .responses()
                .and_then(|r| r.get(&self.table))
                .into_iter()
                .flatten()
            {
                if let Some(AttributeValue::S(pk)) = item.get("pk") {
                    out.insert(pk.clone(), item.clone());
                }
            }
            wanted = answer
                .unprocessed_keys()
                .and_then(|u| u.get(&self.table))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
        }
        match wanted.is_empty() {
            true => Ok(out),
            false => Err(StoreError::throttled(format!(
                "{} items left unread by BatchGetItem",
                wanted.len()
            ))),
        }
    }

    async fn create(&self, key: &str, state: &BudgetState) -> Result<Written, StoreError> {
        let mut item = to_item(state);
        item.insert("pk".into(), s(&budget_pk(key)));
        item.insert("kind".into(), s("quota"));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Written::Applied(state.clone())),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(c)) => Ok(Written::Refused(from_item(c.item()))),
                _ => Err(store_error(&e)),
            },
        }
    }
}

fn n(value: f64) -> AttributeValue {
    AttributeValue::N(format!("{value}"))
}

/// A time or duration in seconds, to the budget's tick (0.1 ms): see `budget::TICK_SECONDS`.
fn t(seconds: f64) -> AttributeValue {
    AttributeValue::N(format!("{seconds:.4}"))
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

fn to_item(state: &BudgetState) -> Item {
    HashMap::from([
        ("rate".to_string(), n(state.rate_per_second)),
        ("burst".to_string(), n(state.burst)),
        ("factor".to_string(), n(state.factor)),
        ("version".to_string(), AttributeValue::N(state.version.to_string())),
        ("tat".to_string(), t(state.tat)),
        ("spread".to_string(), t(state.spread)),
        ("shards".to_string(), AttributeValue::N(state.shards.to_string())),
        ("layout".to_string(), AttributeValue::N(state.layout.to_string())),
        ("leases".to_string(), AttributeValue::N(state.leases.to_string())),
        ("plan_until".to_string(), t(state.plan_until)),
        ("span".to_string(), AttributeValue::N(state.span.to_string())),
        ("frozen_until".to_string(), t(state.frozen_until)),
    ])
}

/// The budget in an item; `None` when there is none or it is not a budget.
fn from_item(item: Option<&Item>) -> Option<BudgetState> {
    let item = item.filter(|i| !i.is_empty())?;
    let number = |name: &str| item.get(name)?.as_n().ok()?.parse::<f64>().ok();
    let whole = |name: &str| item.get(name)?.as_n().ok()?.parse::<u64>().ok();
    let shards = whole("shards").and_then(|n| u32::try_from(n).ok()).unwrap_or(1).max(1);
    Some(BudgetState {
        rate_per_second: number("rate")?,
        burst: number("burst")?,
        factor: number("factor").unwrap_or(1.0),
        version: item.get("version")?.as_n().ok()?.parse().ok()?,
        tat: number("tat").unwrap_or(0.0),
        spread: number("spread").unwrap_or(0.0),
        shards,
        layout: whole("layout").unwrap_or(0),
        leases: whole("leases").unwrap_or(0),
        plan_until: number("plan_until").unwrap_or(0.0),
        span: whole("span")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(shards),
        frozen_until: number("frozen_until").unwrap_or(0.0),
    })
}

/// The attribute names an expression uses (`#name` → `name`): every one is a placeholder, so
/// no attribute name can collide with DynamoDB's reserved words.
fn names(expressions: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for expression in expressions {
        for token in expression.split(|c: char| !(c.is_ascii_alphanumeric() || c == '#' || c == '_')) {
            if let Some(name) = token.strip_prefix('#') {
                if !out.iter().any(|(k, _)| k == token) {
                    out.push((token.to_string(), name.to_string()));
                }
            }
        }
    }
    out
}

/// The condition, update expression and values of an update (not `Create`).
fn expressions(update: &Update) -> (String, String, Vec<(&'static str, AttributeValue)>) {
    let version = |v: &u64| AttributeValue::N(v.to_string());
    match update {
        Update::Create(_) => (String::new(), String::new(), Vec::new()),
        Update::Lease {
            version: v,
            now: lessee_now,
            shape,
            factor,
            spread,
        } => {
            let (mut condition, mut set, mut values) = match shape {
                Shape::Exact { expected, tat_after } => (
                    "#version = :v AND #tat = :expected".to_string(),
                    "SET #tat = :tat".to_string(),
                    vec![(":expected", t(*expected)), (":tat", t(*tat_after))],
                ),
                Shape::FromNow { now, tat_after } => (
                    "#version = :v AND #tat < :now".to_string(),
                    "SET #tat = :tat".to_string(),
                    vec![(":now", t(*now)), (":tat", t(*tat_after))],
                ),
                Shape::Extend { now, limit, delta } => (
                    "#version = :v AND #tat BETWEEN :now AND :limit".to_string(),
                    "SET #tat = #tat + :d".to_string(),
                    vec![(":now", t(*now)), (":limit", t(*limit)), (":d", t(*delta))],
                ),
            };
            values.push((":v", version(v)));
            set.push_str(", #spread = :s");
            values.push((":s", t(*spread)));
            if let Some(f) = factor {
                set.push_str(", #factor = :f, #version = #version + :one");
                values.push((":f", n(*f)));
            }
            set.push_str(" ADD #leases :one");
            values.push((":one", AttributeValue::N("1".into())));
            condition.insert_str(0, "attribute_exists(#pk) AND ");
            condition.push_str(" AND (attribute_not_exists(#frozen_until) OR #frozen_until < :at)");
            values.push((":at", t(*lessee_now)));
            (condition, set, values)
        }
        Update::GiveBack {
            version: v,
            expected_tat,
            new_tat,
        } => (
            "#version = :v AND #tat = :expected".to_string(),
            "SET #tat = :tat".to_string(),
            vec![
                (":v", version(v)),
                (":expected", t(*expected_tat)),
                (":tat", t(*new_tat)),
            ],
        ),
        Update::SetLimits {
            version: v,
            rate_per_second,
            burst,
            shards,
            layout,
            expected_tat,
            new_tat,
        } => (
            "#version = :v AND #tat = :expected".to_string(),
            "SET #rate = :r, #burst = :b, #shards = :shards, #layout = :layout, #version = #version + :one, #tat = :tat, #frozen_until = :zero"
                .to_string(),
            vec![
                (":v", version(v)),
                (":expected", t(*expected_tat)),
                (":r", n(*rate_per_second)),
                (":b", n(*burst)),
                (":shards", AttributeValue::N(shards.to_string())),
                (":layout", version(layout)),
                (":one", AttributeValue::N("1".into())),
                (":tat", t(*new_tat)),
                (":zero", AttributeValue::N("0".into())),
            ],
        ),
        Update::Freeze { until } => (
            "attribute_exists(#pk)".to_string(),
            "SET #frozen_until = :until".to_string(),
            vec![(":until", t(*until))],
        ),
        Update::Plan {
            layout,
            now,
            until,
            span,
        } => {
            // An item written before layouts has none: it is layout 0.
            let same_layout = match layout {
                0 => "(attribute_not_exists(#layout) OR #layout = :layout)",
                _ => "#layout = :layout",
            };
            (
                format!("attribute_exists(#pk) AND {same_layout} AND (attribute_not_exists(#plan_until) OR #plan_until < :now)"),
                "SET #plan_until = :until, #span = :span".to_string(),
                vec![
                    (":layout", version(layout)),
                    (":now", t(*now)),
                    (":until", t(*until)),
                    (":span", AttributeValue::N(span.to_string())),
                ],
            )
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, key: &str) -> Result<Option<BudgetState>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&budget_pk(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(from_item(out.item()))
    }

    async fn write(&self, key: &str, update: &Update) -> Result<Written, StoreError> {
        if let Update::Create(state) = update {
            return self.create(key, state).await;
        }
        let (condition, set, values) = expressions(update);
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&budget_pk(key)))
            .condition_expression(&condition)
            .update_expression(&set)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (placeholder, name) in names(&[&condition, &set]) {
            request = request.expression_attribute_names(placeholder, name);
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(out) => from_item(out.attributes())
                .map(Written::Applied)
                .ok_or_else(|| StoreError::unknown("UpdateItem returned no budget")),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => Ok(Written::Refused(from_item(c.item()))),
                _ => Err(store_error(&e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_exactly() {
        let state = BudgetState {
            rate_per_second: 300.0,
            burst: 1300.0,
            factor: 0.5,
            version: 7,
            tat: 1_795_000_000.123_4,
            spread: 0.04,
            shards: 3,
            layout: 2,
            leases: 41,
            plan_until: 1_795_000_010.5,
            span: 4,
            frozen_until: 1_795_000_001.25,
        };
        assert_eq!(from_item(Some(&to_item(&state))), Some(state));
        assert_eq!(from_item(Some(&Item::new())), None);
        assert_eq!(from_item(None), None);
    }

    #[test]
    fn leases_are_conditioned_on_the_version_and_tat() {
        let update = Update::Lease {
            version: 3,
            now: 9.5,
            shape: Shape::Extend {
                now: 10.0,
                limit: 12.0,
                delta: 0.1,
            },
            factor: Some(0.75),
            spread: 0.02,
        };
        let (condition, set, values) = expressions(&update);
        assert_eq!(
            condition,
            "attribute_exists(#pk) AND #version = :v AND #tat BETWEEN :now AND :limit AND (attribute_not_exists(#frozen_until) OR #frozen_until < :at)"
        );
        assert_eq!(
            set,
            "SET #tat = #tat + :d, #spread = :s, #factor = :f, #version = #version + :one ADD #leases :one"
        );
        let placeholders: Vec<String> = names(&[&condition, &set]).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            placeholders,
            [
                "#pk",
                "#version",
                "#tat",
                "#frozen_until",
                "#spread",
                "#factor",
                "#leases"
            ]
        );
        let names: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, [":now", ":limit", ":d", ":v", ":s", ":f", ":one", ":at"]);
    }
}
