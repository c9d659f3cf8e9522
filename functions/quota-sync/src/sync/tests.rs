use std::sync::Arc;

use sfn_pacer::start::memory::MemoryStore;

use super::*;
use crate::memory::{quota, MemoryMetrics, MemoryQuotas, MemoryRecords};
use crate::quota::Quantity;

const KEY: &str = "start-execution-standard";
const NOW: f64 = 1_800_000_000.0;

struct Fixture {
    quotas: MemoryQuotas,
    metrics: MemoryMetrics,
    store: Arc<MemoryStore>,
    records: MemoryRecords,
}

fn fixture(bucket: f64, refill: f64) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    Fixture {
        quotas: MemoryQuotas {
            applied: vec![
                quota("L-B", Quantity::Bucket.quota_name(), bucket),
                quota("L-R", Quantity::Refill.quota_name(), refill),
            ],
            ..MemoryQuotas::default()
        },
        metrics: MemoryMetrics::default(),
        records: MemoryRecords::new(store.clone()),
        store,
    }
}

fn request(share: f64, force: bool, dry_run: bool) -> SyncRequest {
    SyncRequest {
        table: "coord".into(),
        key: KEY.into(),
        workflow_type: WorkflowType::Standard,
        share: Share::new(share).unwrap(),
        force,
        dry_run,
        now: NOW,
    }
}

async fn run(f: &Fixture, request: &SyncRequest) -> SyncOutcome {
    sync(&f.quotas, &f.metrics, f.store.as_ref(), &f.records, request)
        .await
        .unwrap()
}

fn limits(f: &Fixture) -> (f64, f64) {
    let b = f.store.item(KEY).unwrap();
    (b.rate_per_second, b.burst)
}

#[test]
fn shares_are_fractions_of_one() {
    for bad in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
        assert!(Share::new(bad).unwrap_err().starts_with("must be a fraction"), "{bad}");
    }
    assert_eq!(Share::new(1.0).unwrap().get(), 1.0);
    assert_eq!(round_down(0.9 * 1300.0), 1170.0);
    assert_eq!(round_down(2.0 / 3.0), 0.666);
}

#[tokio::test]
async fn creates_then_sets_then_leaves_the_budget() {
    let f = fixture(1300.0, 300.0);
    let outcome = run(&f, &request(0.9, false, false)).await;
    assert_eq!(outcome.action, Action::Created);
    assert_eq!(limits(&f), (270.0, 1170.0));
    assert!(outcome.recorded);

    // Same quota: nothing to write; the record is renewed.
    let outcome = run(&f, &request(0.9, false, false)).await;
    assert_eq!(outcome.action, Action::Unchanged);
    assert_eq!(f.store.item(KEY).unwrap().version, 1);

    // Another share: set, keeping the version rule of SetLimits.
    let outcome = run(&f, &request(0.5, false, false)).await;
    assert_eq!(outcome.action, Action::Set);
    assert_eq!(limits(&f), (150.0, 650.0));
    assert_eq!(outcome.after.unwrap().version, 2);
    assert!(!outcome.hand_changed);
}

#[tokio::test]
async fn the_first_sync_takes_over_a_budget_made_at_deploy() {
    let f = fixture(1300.0, 300.0);
    f.store
        .write(KEY, &Update::Create(BudgetState::new(150.0, 800.0)))
        .await
        .unwrap();
    let outcome = run(&f, &request(0.9, false, false)).await;
    assert_eq!((outcome.action, outcome.hand_changed), (Action::Set, false));
    assert_eq!(limits(&f), (270.0, 1170.0));
    assert_eq!(outcome.before.unwrap().rate_per_second, 150.0);
}

#[tokio::test]
async fn a_hand_change_is_kept_unless_forced() {
    let f = fixture(1300.0, 300.0);
    run(&f, &request(0.9, false, false)).await;
    let synced = f.store.item(KEY).unwrap();
    f.store
        .write(KEY, &synced.plan_set_limits(100.0, 400.0, NOW))
        .await
        .unwrap();

    let outcome = run(&f, &request(0.9, false, false)).await;
    assert_eq!(
        (outcome.action, outcome.hand_changed, outcome.recorded),
        (Action::Kept, true, false)
    );
    assert_eq!(limits(&f), (100.0, 400.0));
    let summary = outcome.summary();
    assert!(
        summary.contains("budget kept at rate 100 starts/s, burst 400: changed by hand"),
        "{summary}"
    );
    assert!(
        summary.contains("--force would set rate 270 starts/s, burst 1170"),
        "{summary}"
    );

    let outcome = run(&f, &request(0.9, true, false)).await;
    assert_eq!((outcome.action, outcome.hand_changed), (Action::Set, true));
    assert_eq!(limits(&f), (270.0, 1170.0));
    // Recorded again: the next sync is not forced to see a hand change.
    assert_eq!(run(&f, &request(0.9, false, false)).await.action, Action::Unchanged);
}

#[tokio::test]
async fn a_raised_quota_is_followed() {
    let mut f = fixture(1300.0, 300.0);
    run(&f, &request(0.9, false, false)).await;
    f.quotas.applied = vec![
        quota("L-B", Quantity::Bucket.quota_name(), 5000.0),
        quota("L-R", Quantity::Refill.quota_name(), 1000.0),
    ];
    let outcome = run(&f, &request(0.9, false, false)).await;
    assert_eq!(outcome.action, Action::Set);
    assert_eq!(limits(&f), (900.0, 4500.0));
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let f = fixture(1300.0, 300.0);
    let outcome = run(&f, &request(0.9, false, true)).await;
    assert_eq!(outcome.action, Action::Created);
    assert!(outcome.dry_run && !outcome.recorded);
    assert_eq!(outcome.after.as_ref().map(|b| b.burst), Some(1170.0));
    assert_eq!(f.store.item(KEY), None);
    assert!(
        outcome.summary().contains("budget would be created"),
        "{}",
        outcome.summary()
    );

    f.store
        .write(KEY, &Update::Create(BudgetState::new(150.0, 800.0)))
        .await
        .unwrap();
    let calls = f.store.calls();
    let outcome = run(&f, &request(0.9, false, true)).await;
    assert_eq!(outcome.action, Action::Set);
    assert_eq!(outcome.after.unwrap().rate_per_second, 270.0);
    assert_eq!(limits(&f), (150.0, 800.0));
    assert_eq!(f.store.calls(), calls + 1, "one read, no write");
}

#[tokio::test]
async fn a_table_failure_names_the_operation() {
    let f = fixture(1300.0, 300.0);
    f.store
        .set_failure(Some("ResourceNotFoundException: Requested resource not found"));
    let err = sync(
        &f.quotas,
        &f.metrics,
        f.store.as_ref(),
        &f.records,
        &request(0.9, false, false),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "GetItem on table coord: ResourceNotFoundException: Requested resource not found"
    );
}
