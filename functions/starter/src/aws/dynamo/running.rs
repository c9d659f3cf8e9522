//! The DynamoDB adapter of [`RunningStore`]: each [`Write`] is one `TransactWriteItems` (one
//! `UpdateItem` for the single-item writes) whose expressions mirror [`Write::apply`], with
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD`, so a refusal says what it found without a second
//! call. Reads are strongly consistent (`GetItem`, `BatchGetItem`); the due holders come from the
//! sparse global secondary index [`DUE_INDEX`] (`Query`). Tested against moto.
//!
//! Items (`pk` and `kind` on each):
//! - settings `running#K`: `cap`, `shards`, `version` (N), `rebalance` (BOOL);
//! - shard `running#K#shard#i`: `held`, `cap`, `freed`, `busy_ms` (N);
//! - holder `running#K#holder#<scope>#<name>`: `scope`, `name`, `state` (`held` | `released`),
//!   `execution_arn`, and while held `due` (S) (the index key), `shard`, `attempt`, `taken_at` (ms),
//!   `check_at` (s) (N), `express` (BOOL); a tombstone `released_at` (ms) and `expires_at` (s, the
//!   table's TTL attribute) instead of `due`;
//! - line `running#K#line`: `tat` (N, ms).
//!
//! A release (what a workflow's own last state does for an exact Express release, through the
//! DynamoDB integration, after a `GetItem` of its holder for `shard`, `attempt` and `taken_at`:
//! `infra/state-machine-express-release.asl.json`) is one `TransactWriteItems` of two updates:
//! - the holder: condition [`RELEASE_CONDITION`], update [`RELEASE_UPDATE`];
//! - its shard: condition [`UNCOUNT_CONDITION`], update [`UNCOUNT_UPDATE`] (`:freed` 1, `:busy_ms`
//!   the time since `taken_at`).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

use super::claims::{cancelled, text};
use super::{names, s, store_error, DynamoStore, Item as Attributes};
use crate::start::running::{
    due_index_key, due_key, holder_pk, line_pk, settings_pk, shard_pk, CapView, Found, Holder, HolderState, Line,
    LineShape, RunningStore, Settings, Shard, Write, Written, DUE_INDEX, DUE_PARTITIONS,
};
use crate::start::table::StoreError;

fn num(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn number(item: &Attributes, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn flag(item: &Attributes, name: &str) -> bool {
    item.get(name).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false)
}

/// What an action of a write touches: how to read back what a refusal found.
#[derive(Debug, Clone, Copy)]
enum Target {
    Settings,
    Shard(u32),
    Holder,
    Line,
}

fn found(target: Target, item: Option<&Attributes>) -> Found {
    let item = item.filter(|i| !i.is_empty());
    match target {
        Target::Settings => Found::Settings(item.and_then(settings_from)),
        Target::Shard(i) => Found::Shard(i, item.and_then(shard_from)),
        Target::Holder => Found::Holder(item.and_then(holder_from)),
        Target::Line => Found::Line(item.and_then(line_from)),
    }
}

fn settings_from(item: &Attributes) -> Option<Settings> {
    Some(Settings {
        cap: number(item, "cap")?,
        shards: u32::try_from(number(item, "shards")?).ok()?,
        version: number(item, "version")?,
        rebalance: flag(item, "rebalance"),
    })
}

fn shard_from(item: &Attributes) -> Option<Shard> {
    Some(Shard {
        held: number(item, "held")?,
        cap: number(item, "cap")?,
        freed: number(item, "freed").unwrap_or(0),
        busy_ms: number(item, "busy_ms").unwrap_or(0),
    })
}

fn holder_from(item: &Attributes) -> Option<Holder> {
    let state = match text(item, "state")?.as_str() {
        "held" => HolderState::Held,
        _ => HolderState::Released,
    };
    Some(Holder {
        scope: text(item, "scope")?,
        name: text(item, "name")?,
        shard: u32::try_from(number(item, "shard")?).ok()?,
        state,
        attempt: u32::try_from(number(item, "attempt").unwrap_or(0)).ok()?,
        execution_arn: text(item, "execution_arn").unwrap_or_default(),
        taken_at_ms: number(item, "taken_at")?,
        check_at_s: number(item, "check_at").unwrap_or(0),
        express: flag(item, "express"),
        released_at_ms: number(item, "released_at"),
    })
}

fn line_from(item: &Attributes) -> Option<Line> {
    Some(Line {
        tat_ms: number(item, "tat")?,
    })
}

fn holder_item(key: &str, h: &Holder) -> Attributes {
    let mut item = HashMap::from([
        ("pk".to_string(), s(&holder_pk(key, &h.scope, &h.name))),
        ("kind".to_string(), s("running-holder")),
        ("scope".to_string(), s(&h.scope)),
        ("name".to_string(), s(&h.name)),
        ("shard".to_string(), num(h.shard.into())),
        (
            "state".to_string(),
            s(match h.state {
                HolderState::Held => "held",
                HolderState::Released => "released",
            }),
        ),
        ("attempt".to_string(), num(h.attempt.into())),
        ("execution_arn".to_string(), s(&h.execution_arn)),
        ("taken_at".to_string(), num(h.taken_at_ms)),
        ("check_at".to_string(), num(h.check_at_s)),
        ("express".to_string(), AttributeValue::Bool(h.express)),
    ]);
    match h.state {
        HolderState::Held => {
            item.insert("due".into(), s(&due_key(key, &h.name)));
        }
        HolderState::Released => {
            if let (Some(at), Some(expires)) = (h.released_at_ms, h.expires_at_s()) {
                item.insert("released_at".into(), num(at));
                item.insert("expires_at".into(), num(expires));
            }
        }
    }
    item
}

/// One action: its target, and its expressions (condition, update or `Put` item) and values.
struct Action {
    target: Target,
    pk: String,
    kind: ActionKind,
    condition: Option<String>,
    values: Vec<(&'static str, AttributeValue)>,
}

enum ActionKind {
    Put(Attributes),
    Update(String),
    Delete,
}

fn update(
    target: Target,
    pk: String,
    condition: Option<&str>,
    set: &str,
    values: Vec<(&'static str, AttributeValue)>,
) -> Action {
    Action {
        target,
        pk,
        kind: ActionKind::Update(set.to_string()),
        condition: condition.map(str::to_string),
        values,
    }
}

fn put_if_absent(target: Target, pk: String, mut item: Attributes) -> Action {
    item.insert("pk".into(), s(&pk));
    Action {
        target,
        pk,
        kind: ActionKind::Put(item),
        condition: Some("attribute_not_exists(#pk)".into()),
        values: Vec::new(),
    }
}

const HELD: &str = "held";
const RELEASED: &str = "released";

/// A release's condition on the holder (values `:held`, `:shard`, `:attempt`).
pub const RELEASE_CONDITION: &str = "#state = :held AND #shard = :shard AND #attempt <= :attempt";
/// A release's update of the holder (values `:released`, `:now_ms`, `:expires_s`).
pub const RELEASE_UPDATE: &str = "SET #state = :released, #released_at = :now_ms, #expires_at = :expires_s REMOVE #due";
/// The condition on the shard that uncounts a slot (value `:zero`).
pub const UNCOUNT_CONDITION: &str = "attribute_exists(#pk) AND #held > :zero";
/// The update of the shard that uncounts a slot (values `:one`, `:freed`, `:busy_ms`).
pub const UNCOUNT_UPDATE: &str = "SET #held = #held - :one, #freed = #freed + :freed, #busy_ms = #busy_ms + :busy_ms";

/// The value `:one`.
fn one() -> (&'static str, AttributeValue) {
    (":one", num(1))
}

/// The value `:zero`.
fn zero() -> (&'static str, AttributeValue) {
    (":zero", num(0))
}

/// The actions of `write`, mirroring [`Write::actions`].
fn actions(key: &str, write: &Write) -> Vec<Action> {
    let uncount = |i: u32, freed: u64, busy_ms: u64| {
        update(
            Target::Shard(i),
            shard_pk(key, i),
            Some(UNCOUNT_CONDITION),
            UNCOUNT_UPDATE,
            vec![one(), zero(), (":freed", num(freed)), (":busy_ms", num(busy_ms))],
        )
    };
    match write {
        Write::Seed { settings, shards } => seed(key, settings, shards),
        Write::Take { holder, above_cap } => take(key, holder, *above_cap),
        Write::GiveBack {
            scope,
            name,
            shard,
            taken_at_ms,
        } => vec![
            Action {
                target: Target::Holder,
                pk: holder_pk(key, scope, name),
                kind: ActionKind::Delete,
                condition: Some("#state = :held AND #shard = :shard AND #taken_at = :taken_at".into()),
                values: vec![
                    (":held", s(HELD)),
                    (":shard", num((*shard).into())),
                    (":taken_at", num(*taken_at_ms)),
                ],
            },
            uncount(*shard, 0, 0),
        ],
        Write::Release {
            scope,
            name,
            shard,
            attempt,
            busy_ms,
            released_at_ms,
        } => vec![
            update(
                Target::Holder,
                holder_pk(key, scope, name),
                Some(RELEASE_CONDITION),
                RELEASE_UPDATE,
                vec![
                    (":held", s(HELD)),
                    (":released", s(RELEASED)),
                    (":shard", num((*shard).into())),
                    (":attempt", num((*attempt).into())),
                    (":now_ms", num(*released_at_ms)),
                    (
                        ":expires_s",
                        num(released_at_ms / 1000 + crate::start::running::TOMBSTONE_TTL.as_secs()),
                    ),
                ],
            ),
            uncount(*shard, 1, *busy_ms),
        ],
        Write::Extend {
            scope,
            name,
            check_at_s,
            next_check_at_s,
            attempt,
        } => vec![update(
            Target::Holder,
            holder_pk(key, scope, name),
            Some("#state = :held AND #check_at = :check_at"),
            "SET #check_at = :next, #attempt = :attempt",
            vec![
                (":held", s(HELD)),
                (":check_at", num(*check_at_s)),
                (":next", num(*next_check_at_s)),
                (":attempt", num((*attempt).into())),
            ],
        )],
        Write::SetCap { version, cap, shards } => set_cap(key, *version, *cap, *shards),
        Write::Rebalance { version, held, caps } => rebalance(key, *version, held, caps),
        Write::Line(shape) => vec![line(key, shape)],
    }
}

/// [`Write::Seed`]: the settings and every shard, each only if absent.
fn seed(key: &str, settings: &Settings, shards: &[Shard]) -> Vec<Action> {
    let mut out = vec![put_if_absent(
        Target::Settings,
        settings_pk(key),
        HashMap::from([
            ("kind".to_string(), s("running")),
            ("cap".to_string(), num(settings.cap)),
            ("shards".to_string(), num(settings.shards.into())),
            ("version".to_string(), num(settings.version)),
            ("rebalance".to_string(), AttributeValue::Bool(settings.rebalance)),
        ]),
    )];
    for (i, shard) in (0u32..).zip(shards) {
        out.push(put_if_absent(
            Target::Shard(i),
            shard_pk(key, i),
            HashMap::from([
                ("kind".to_string(), s("running-shard")),
                ("held".to_string(), num(shard.held)),
                ("cap".to_string(), num(shard.cap)),
                ("freed".to_string(), num(shard.freed)),
                ("busy_ms".to_string(), num(shard.busy_ms)),
            ]),
        ));
    }
    out
}

/// [`Write::Take`]: the holder if absent (or a tombstone of an earlier attempt), counted on its
/// shard while it has room (or `above_cap`).
fn take(key: &str, holder: &Holder, above_cap: bool) -> Vec<Action> {
    let pk = holder_pk(key, &holder.scope, &holder.name);
    let put = Action {
        target: Target::Holder,
        kind: ActionKind::Put(holder_item(key, holder)),
        pk,
        condition: Some("attribute_not_exists(#pk) OR (#state = :released AND #attempt < :attempt)".into()),
        values: vec![(":released", s(RELEASED)), (":attempt", num(holder.attempt.into()))],
    };
    let room = match above_cap {
        true => "attribute_exists(#pk)",
        false => "attribute_exists(#pk) AND #held < #cap",
    };
    vec![
        put,
        update(
            Target::Shard(holder.shard),
            shard_pk(key, holder.shard),
            Some(room),
            "SET #held = #held + :one",
            vec![one()],
        ),
    ]
}

/// [`Write::SetCap`]: the new cap (version + 1, rebalance pending), every shard frozen.
fn set_cap(key: &str, version: u64, cap: u64, shards: u32) -> Vec<Action> {
    let mut out = vec![update(
        Target::Settings,
        settings_pk(key),
        Some("#version = :version"),
        "SET #cap = :cap, #shards = :shards, #version = #version + :one, #rebalance = :true",
        vec![
            (":version", num(version)),
            (":cap", num(cap)),
            (":shards", num(shards.into())),
            one(),
            (":true", AttributeValue::Bool(true)),
        ],
    )];
    for i in 0..shards {
        out.push(update(
            Target::Shard(i),
            shard_pk(key, i),
            None,
            "SET #cap = :zero, #kind = :kind, #held = if_not_exists(#held, :zero), \
             #freed = if_not_exists(#freed, :zero), #busy_ms = if_not_exists(#busy_ms, :zero)",
            vec![zero(), (":kind", s("running-shard"))],
        ));
    }
    out
}

/// [`Write::Rebalance`]: each shard's new cap, while it holds no more than was read.
fn rebalance(key: &str, version: u64, held: &[u64], caps: &[u64]) -> Vec<Action> {
    let mut out = vec![update(
        Target::Settings,
        settings_pk(key),
        Some("#version = :version AND #rebalance = :true"),
        "SET #version = #version + :one, #rebalance = :false",
        vec![
            (":version", num(version)),
            one(),
            (":true", AttributeValue::Bool(true)),
            (":false", AttributeValue::Bool(false)),
        ],
    )];
    for (i, (&h, &c)) in (0u32..).zip(held.iter().zip(caps)) {
        out.push(update(
            Target::Shard(i),
            shard_pk(key, i),
            Some("#held <= :held"),
            "SET #cap = :cap",
            vec![(":held", num(h)), (":cap", num(c))],
        ));
    }
    out
}

/// [`Write::Line`]: the line's `tat`, from now when it is in the past, or extended.
fn line(key: &str, shape: &LineShape) -> Action {
    let (condition, set, values) = match shape {
        LineShape::FromNow { now_ms, tat_ms } => (
            "attribute_not_exists(#pk) OR #tat < :now",
            "SET #tat = :tat, #kind = :kind",
            vec![
                (":now", num(*now_ms)),
                (":tat", num(*tat_ms)),
                (":kind", s("running-line")),
            ],
        ),
        LineShape::Extend { now_ms, delta_ms } => (
            "#tat >= :now",
            "SET #tat = #tat + :delta",
            vec![(":now", num(*now_ms)), (":delta", num(*delta_ms))],
        ),
    };
    update(Target::Line, line_pk(key), Some(condition), set, values)
}

/// The expressions' placeholders (`#name` → `name`) of an action.
fn action_names(action: &Action) -> Vec<(String, String)> {
    let update = match &action.kind {
        ActionKind::Update(set) => set.as_str(),
        _ => "",
    };
    names(&[action.condition.as_deref().unwrap_or_default(), update])
}

fn transact_item(table: &str, action: Action) -> Result<TransactWriteItem, StoreError> {
    let names: HashMap<String, String> = action_names(&action).into_iter().collect();
    let names = (!names.is_empty()).then_some(names);
    let values: HashMap<String, AttributeValue> = action.values.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let values = (!values.is_empty()).then_some(values);
    let all_old = Some(ReturnValuesOnConditionCheckFailure::AllOld);
    let built = match action.kind {
        ActionKind::Put(item) => Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .set_condition_expression(action.condition)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(values)
            .set_return_values_on_condition_check_failure(all_old)
            .build()
            .map(|put| TransactWriteItem::builder().put(put).build()),
        ActionKind::Update(set) => Update::builder()
            .table_name(table)
            .key("pk", s(&action.pk))
            .update_expression(set)
            .set_condition_expression(action.condition)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(values)
            .set_return_values_on_condition_check_failure(all_old)
            .build()
            .map(|update| TransactWriteItem::builder().update(update).build()),
        ActionKind::Delete => Delete::builder()
            .table_name(table)
            .key("pk", s(&action.pk))
            .set_condition_expression(action.condition)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(values)
            .set_return_values_on_condition_check_failure(all_old)
            .build()
            .map(|delete| TransactWriteItem::builder().delete(delete).build()),
    };
    built.map_err(|e| StoreError::permanent(e.to_string()))
}

impl DynamoStore {
    /// A single-item update (`Extend`, `Line`): `UpdateItem`, returning the item after it.
    async fn update_one(&self, action: Action) -> Result<Written, StoreError> {
        let ActionKind::Update(set) = &action.kind else {
            return Err(StoreError::permanent("a single write must be an update"));
        };
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&action.pk))
            .update_expression(set)
            .set_condition_expression(action.condition.clone())
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (placeholder, name) in action_names(&action) {
            request = request.expression_attribute_names(placeholder, name);
        }
        for (name, value) in action.values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(out) => Ok(Written::Applied(match action.target {
                Target::Line => out.attributes().and_then(line_from),
                _ => None,
            })),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Written::Refused(vec![found(action.target, c.item())]))
                }
                _ => Err(store_error(&e)),
            },
        }
    }

    async fn transact(&self, actions: Vec<Action>) -> Result<Written, StoreError> {
        let targets: Vec<Target> = actions.iter().map(|a| a.target).collect();
        let items = actions
            .into_iter()
            .map(|a| transact_item(&self.table, a))
            .collect::<Result<Vec<_>, _>>()?;
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let e = match result {
            Ok(_) => return Ok(Written::Applied(None)),
            Err(e) => e,
        };
        let Some(
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c),
        ) = e.as_service_error()
        else {
            return Err(store_error(&e));
        };
        let reasons = c.cancellation_reasons();
        let failed: Vec<Found> = targets
            .iter()
            .zip(reasons)
            .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
            .map(|(t, r)| found(*t, r.item()))
            .collect();
        let other = reasons
            .iter()
            .any(|r| !matches!(r.code(), None | Some("None") | Some("ConditionalCheckFailed")));
        match (failed.is_empty(), other) {
            (false, false) => Ok(Written::Refused(failed)),
            _ => Err(cancelled(e.as_service_error()).unwrap_or_else(|| store_error(&e))),
        }
    }

    async fn get(&self, pk: &str) -> Result<Option<Attributes>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(out.item().filter(|i| !i.is_empty()).cloned())
    }
}

#[async_trait]
impl RunningStore for DynamoStore {
    async fn write(&self, key: &str, write: &Write) -> Result<Written, StoreError> {
        let mut actions = actions(key, write);
        match write {
            Write::Extend { .. } | Write::Line(_) if actions.len() == 1 => self.update_one(actions.remove(0)).await,
            _ => self.transact(actions).await,
        }
    }

    async fn view(&self, key: &str) -> Result<Option<CapView>, StoreError> {
        let Some(settings) = self.get(&settings_pk(key)).await?.as_ref().and_then(settings_from) else {
            return Ok(None);
        };
        let mut pks: Vec<String> = (0..settings.shards).map(|i| shard_pk(key, i)).collect();
        pks.push(line_pk(key));
        let items = self.batch_get(&pks, &[]).await?;
        let shards = (0..settings.shards)
            .map(|i| items.get(&shard_pk(key, i)).and_then(shard_from).unwrap_or_default())
            .collect();
        let line = items.get(&line_pk(key)).and_then(line_from);
        Ok(Some(CapView { settings, shards, line }))
    }

    async fn holder(&self, key: &str, scope: &str, name: &str) -> Result<Option<Holder>, StoreError> {
        Ok(self
            .get(&holder_pk(key, scope, name))
            .await?
            .as_ref()
            .and_then(holder_from))
    }

    async fn due(&self, key: &str, now_s: u64, limit: usize) -> Result<Vec<Holder>, StoreError> {
        let mut out = Vec::new();
        // Each sweep starts at another partition, so a small limit still reaches them all.
        let first = (now_s % u64::from(DUE_PARTITIONS)) as u32;
        for p in (0..DUE_PARTITIONS).map(|i| (first + i) % DUE_PARTITIONS) {
            let left = limit.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            let answer = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX)
                .key_condition_expression("#due = :due AND #check_at <= :now")
                .expression_attribute_names("#due", "due")
                .expression_attribute_names("#check_at", "check_at")
                .expression_attribute_values(":due", s(&due_index_key(key, p)))
                .expression_attribute_values(":now", num(now_s))
                .limit(i32::try_from(left).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            out.extend(
                answer
                    .items()
                    .iter()
                    .filter_map(holder_from)
                    .filter(|h| h.state == HolderState::Held),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_round_trip_and_only_held_ones_are_indexed() {
        let mut h = Holder {
            scope: "machine".into(),
            name: "order-7".into(),
            shard: 3,
            state: HolderState::Held,
            attempt: 1,
            execution_arn: "arn:aws:states:us-east-1:1:execution:machine:order-7".into(),
            taken_at_ms: 1_800_000_000_123,
            check_at_s: 1_800_000_300,
            express: false,
            released_at_ms: None,
        };
        let item = holder_item("k", &h);
        assert_eq!(holder_from(&item), Some(h.clone()));
        assert!(item.contains_key("due") && !item.contains_key("expires_at"));
        h.state = HolderState::Released;
        h.released_at_ms = Some(1_800_000_100_000);
        let item = holder_item("k", &h);
        assert_eq!(holder_from(&item), Some(h));
        assert!(!item.contains_key("due"));
        assert_eq!(number(&item, "expires_at"), Some(1_800_000_100 + 14 * 86_400));
    }

    #[test]
    fn every_placeholder_of_an_action_is_named() {
        let write = Write::Release {
            scope: "m".into(),
            name: "n".into(),
            shard: 0,
            attempt: 0,
            busy_ms: 5,
            released_at_ms: 10,
        };
        let names: Vec<String> = actions("k", &write)
            .iter()
            .flat_map(action_names)
            .map(|(k, _)| k)
            .collect();
        for expected in [
            "#state",
            "#shard",
            "#attempt",
            "#released_at",
            "#expires_at",
            "#due",
            "#held",
            "#pk",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
        }
    }
}
