use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::start::memory::MemoryStore;
use async_trait::async_trait;

const SCOPE: &str = "orders";

fn member(i: usize) -> Member {
    Member {
        records: vec![i],
        key: format!("m-{i}"),
        item: format!(r#"{{"messageId":"m-{i}","body":{i}}}"#),
        trace_header: None,
        group: String::new(),
    }
}

fn group(ids: impl IntoIterator<Item = usize>) -> Group {
    Group {
        members: ids.into_iter().map(member).collect(),
    }
}

async fn claim(store: &MemoryStore, g: Group) -> Vec<Resolved> {
    let plan = g.plan(true);
    resolve(store, SCOPE, g, plan, 1_000, Instant::now() + Duration::from_secs(5)).await
}

/// A Start's (member keys, execution name, found).
type Start = (Vec<String>, String, bool);
/// An Unclaimed's (member keys, reason).
type Unclaimed = (Vec<String>, String);

/// Each Start and each Unclaimed of `resolved`.
fn summary(resolved: &[Resolved]) -> (Vec<Start>, Vec<Unclaimed>) {
    let keys = |members: &[Member]| members.iter().map(|m| m.key.clone()).collect::<Vec<_>>();
    let mut starts = Vec::new();
    let mut unclaimed = Vec::new();
    for r in resolved {
        match r {
            Resolved::Start { members, plan, found } => {
                starts.push((keys(members), plan.name.clone().unwrap_or_default(), *found))
            }
            Resolved::Unclaimed { members, reason } => unclaimed.push((keys(members), reason.clone())),
        }
    }
    (starts, unclaimed)
}

fn keys(ids: impl IntoIterator<Item = usize>) -> Vec<String> {
    ids.into_iter().map(|i| format!("m-{i}")).collect()
}

#[tokio::test]
async fn a_fresh_group_is_claimed_in_one_transaction_with_its_record() {
    let store = MemoryStore::new();
    let g = group(0..5);
    let plan = g.plan(true);
    let (starts, unclaimed) = summary(&claim(&store, g).await);
    let name = plan.name.clone().unwrap();
    assert_eq!(starts, [(keys(0..5), name.clone(), false)]);
    assert!(unclaimed.is_empty());
    assert_eq!(store.claim_writes(), 6, "5 claims and 1 record");
    assert_eq!(store.calls(), 1);
    let claim = store.claim_item(&claim_pk(SCOPE, "m-3")).unwrap();
    assert_eq!(claim.execution.as_deref(), Some(name.as_str()));
    assert_eq!(claim.expires_at_epoch_s, 1_000);
    let record = store.claim_item(&execution_pk(SCOPE, &name)).unwrap();
    assert_eq!(record.input.as_deref(), Some(plan.input.as_str()));
}

#[tokio::test]
async fn a_redelivery_with_new_neighbours_goes_to_the_recorded_execution_and_claims_the_rest_anew() {
    let store = MemoryStore::new();
    let first = group(0..5);
    let first_plan = first.plan(true);
    claim(&store, first).await;
    let resolved = claim(&store, group([3, 4, 5, 6])).await;
    let (starts, unclaimed) = summary(&resolved);
    assert!(unclaimed.is_empty());
    let rest_name = crate::plan::batch::name(&keys([5, 6]));
    assert_eq!(
        starts,
        [
            (keys([3, 4]), first_plan.name.clone().unwrap(), true),
            (keys([5, 6]), rest_name.clone(), false)
        ]
    );
    let Resolved::Start { plan, .. } = &resolved[0] else {
        panic!("{resolved:?}")
    };
    assert_eq!(
        plan.input, first_plan.input,
        "the recorded input, with all five members"
    );
    assert_eq!(
        store.claim_item(&claim_pk(SCOPE, "m-6")).unwrap().execution,
        Some(rest_name)
    );
    assert_eq!(
        store.claim_item(&claim_pk(SCOPE, "m-3")).unwrap().execution,
        first_plan.name,
        "a claim is never moved"
    );
}

#[tokio::test]
async fn members_claimed_by_two_executions_go_to_each_and_nothing_new_is_written() {
    let store = MemoryStore::new();
    claim(&store, group([0, 1])).await;
    claim(&store, group([2, 3])).await;
    let writes = store.claim_writes();
    let (starts, unclaimed) = summary(&claim(&store, group([1, 2])).await);
    assert!(unclaimed.is_empty());
    assert_eq!(starts.len(), 2);
    assert!(starts.iter().all(|(members, _, found)| *found && members.len() == 1));
    assert_eq!(store.claim_writes(), writes);
}

#[tokio::test]
async fn a_table_failure_leaves_every_member_unclaimed_and_writes_nothing() {
    let store = MemoryStore::new();
    store.set_failure(Some("ProvisionedThroughputExceededException"));
    let (starts, unclaimed) = summary(&claim(&store, group(0..3)).await);
    assert!(starts.is_empty());
    assert_eq!(unclaimed.len(), 1);
    assert_eq!(unclaimed[0].0, keys(0..3));
    assert!(
        unclaimed[0].1.contains("ProvisionedThroughputExceeded"),
        "{}",
        unclaimed[0].1
    );
    assert!(store.claim_items().is_empty());
}

#[tokio::test]
async fn a_claim_without_its_record_is_not_started_blind() {
    let store = MemoryStore::new();
    claim(&store, group([0, 1])).await;
    let record = execution_pk(SCOPE, &crate::plan::batch::name(&keys([0, 1])));
    store.claims.lock().unwrap().remove(&record);
    let (starts, unclaimed) = summary(&claim(&store, group([1, 2])).await);
    assert_eq!(starts, [(keys([2]), crate::plan::batch::name(&keys([2])), false)]);
    assert_eq!(unclaimed.len(), 1);
    assert!(unclaimed[0].1.contains("no record"), "{}", unclaimed[0].1);
}

#[tokio::test]
async fn the_transaction_limit_is_dynamodbs() {
    let store = MemoryStore::new();
    let (starts, _) = summary(&claim(&store, group(0..99)).await);
    assert_eq!(starts.len(), 1, "99 claims and a record: 100 writes");
    let (starts, unclaimed) = summary(&claim(&store, group(100..200)).await);
    assert!(starts.is_empty());
    assert!(unclaimed[0].1.contains("ValidationException"), "{}", unclaimed[0].1);
}

#[tokio::test(start_paused = true)]
async fn no_call_is_made_after_the_deadline_and_a_slow_table_is_cut_off() {
    let store = MemoryStore::new();
    let g = group(0..2);
    let plan = g.plan(true);
    let resolved = resolve(&store, SCOPE, g, plan, 1_000, Instant::now()).await;
    assert!(matches!(&resolved[..], [Resolved::Unclaimed { .. }]));
    assert_eq!(store.calls(), 0);
    let slow = MemoryStore::new().with_latency(Duration::from_secs(2), Duration::from_secs(2));
    let g = group(0..2);
    let plan = g.plan(true);
    let at = Instant::now();
    let resolved = resolve(&slow, SCOPE, g, plan, 1_000, at + Duration::from_millis(500)).await;
    assert!(matches!(&resolved[..], [Resolved::Unclaimed { .. }]));
    assert_eq!(at.elapsed(), Duration::from_millis(500));
}

#[tokio::test]
async fn an_unnamed_group_is_never_started_unclaimed() {
    let store = MemoryStore::new();
    let g = group(0..2);
    let plan = g.plan(false);
    let resolved = resolve(&store, SCOPE, g, plan, 1, Instant::now() + Duration::from_secs(1)).await;
    assert!(matches!(&resolved[..], [Resolved::Unclaimed { .. }]));
}

#[test]
fn the_scope_is_the_state_machines_name_for_any_of_its_arns() {
    for arn in [
        "arn:aws:states:us-east-1:123456789012:stateMachine:orders",
        "arn:aws:states:us-east-1:123456789012:stateMachine:orders:prod",
        "arn:aws:states:us-east-1:123456789012:stateMachine:orders:7",
    ] {
        assert_eq!(scope(arn), "orders", "{arn}");
    }
    assert_eq!(claim_pk("orders", "m-1"), "claim#orders#m-1");
    assert_eq!(execution_pk("orders", "batch-1-ab"), "execution#orders#batch-1-ab");
}

/// A table that applies the first claim but loses its answer (a timeout after the write).
struct LostAnswer {
    table: MemoryStore,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ClaimStore for LostAnswer {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimWrite, StoreError> {
        let written = self.table.claim(request).await;
        match self.lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
            true => Err(StoreError::unknown("the answer was lost")),
            false => written,
        }
    }
    async fn claimed(&self, scope: &str, keys: &[String]) -> Result<HashMap<String, String>, StoreError> {
        self.table.claimed(scope, keys).await
    }
    async fn recorded(&self, scope: &str, execution: &str) -> Result<Option<String>, StoreError> {
        self.table.recorded(scope, execution).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_retried_after_its_answer_was_lost_finds_its_own_execution() {
    let store = LostAnswer {
        table: MemoryStore::new(),
        lost: true.into(),
    };
    let g = group(0..3);
    let plan = g.plan(true);
    let resolved = resolve(
        &store,
        SCOPE,
        g,
        plan.clone(),
        1,
        Instant::now() + Duration::from_secs(5),
    )
    .await;
    let [Resolved::Start {
        members,
        plan: started,
        found: true,
    }] = &resolved[..]
    else {
        panic!("{resolved:?}")
    };
    assert_eq!(members.len(), 3);
    assert_eq!(started, &plan, "the same name and input: one execution");
}
