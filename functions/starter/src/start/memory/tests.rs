use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::start::budget::{Store, Update, Written};
use crate::start::table::StoreErrorKind;

const KEY: &str = "k";

fn create() -> Update {
    Update::Create(BudgetState::new(300.0, 1300.0))
}

/// A write that always applies: the operator's change of limits, as a compare-and-set on the
/// item as it is.
async fn set(store: &MemoryStore) -> Result<Written, StoreError> {
    let current = store.item(KEY).expect("the item exists");
    store
        .write(
            KEY,
            &current.plan_set_limits(current.rate_per_second, current.burst, 0.0),
        )
        .await
}

#[tokio::test(start_paused = true)]
async fn an_item_takes_a_thousand_write_units_a_second_then_throttles() {
    let store = MemoryStore::new();
    store.write(KEY, &create()).await.unwrap();
    let mut throttled = 0;
    for _ in 0..1_200 {
        match set(&store).await {
            Ok(Written::Applied(_)) => {}
            Err(e) if e.kind == StoreErrorKind::Throttled => throttled += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(throttled, 201, "1,000 units in the first second (one was the create)");
    assert_eq!(
        store.item(KEY).unwrap().version,
        1 + 999,
        "a throttled write is not applied"
    );
    assert_eq!(store.injected().get("item-throttled"), Some(&201));
    let (busiest, units) = store.busiest_item().unwrap();
    assert_eq!((busiest.as_str(), units), ("quota#k", 1_000));
    // Other items have their own capacity; this one refills with time.
    store.write("other", &create()).await.unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    let mut applied = 0;
    for _ in 0..200 {
        if set(&store).await.is_ok() {
            applied += 1;
        }
    }
    assert_eq!(applied, 100, "100 ms refill 100 units");
}

#[tokio::test(start_paused = true)]
async fn without_the_limit_nothing_is_throttled() {
    let store = MemoryStore::new().with_faults(TableFaults {
        item_write_units_per_second: None,
        ..TableFaults::default()
    });
    store.write(KEY, &create()).await.unwrap();
    for _ in 0..2_000 {
        set(&store).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_applied_and_a_500_or_a_throttle_is_not() {
    for (faults, applied, kind) in [
        (
            TableFaults {
                lost_answer_probability: 1.0,
                ..TableFaults::default()
            },
            true,
            StoreErrorKind::Unknown,
        ),
        (
            TableFaults {
                error_500_probability: 1.0,
                ..TableFaults::default()
            },
            false,
            StoreErrorKind::Unknown,
        ),
        (
            TableFaults {
                throttle_probability: 1.0,
                ..TableFaults::default()
            },
            false,
            StoreErrorKind::Throttled,
        ),
    ] {
        let store = MemoryStore::new();
        store.write(KEY, &create()).await.unwrap();
        store.set_faults(faults);
        let e = set(&store).await.unwrap_err();
        assert_eq!(e.kind, kind, "{faults:?}");
        assert_eq!(store.item(KEY).unwrap().version == 2, applied, "{faults:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_is_applied_on_time_and_answered_late() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(20), Duration::from_millis(20)));
    store.write(KEY, &create()).await.unwrap();
    store.set_faults(TableFaults {
        latency_min: Duration::from_millis(20),
        latency_max: Duration::from_millis(20),
        slow_probability: 1.0,
        slow_delay: Duration::from_millis(150),
        ..TableFaults::default()
    });
    let t0 = Instant::now();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { set(&store).await })
    };
    tokio::time::sleep(Duration::from_millis(11)).await;
    assert_eq!(store.item(KEY).unwrap().version, 2, "applied after half the latency");
    writer.await.unwrap().unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_millis(170), "answered 150 ms late");
}

#[tokio::test(start_paused = true)]
async fn faults_are_drawn_in_proportion_and_a_seed_repeats_them() {
    let faults = TableFaults {
        slow_probability: 0.03,
        error_500_probability: 0.01,
        lost_answer_probability: 0.01,
        throttle_probability: 0.01,
        item_write_units_per_second: None,
        ..TableFaults::default()
    };
    let run = |seed| async move {
        let store = MemoryStore::new().with_faults(faults).with_seed(seed);
        store.write(KEY, &create()).await.unwrap();
        let outcomes: Vec<bool> = {
            let mut v = Vec::new();
            for _ in 0..10_000 {
                v.push(set(&store).await.is_ok());
            }
            v
        };
        (outcomes, store.injected())
    };
    let (a, injected) = run(7).await;
    let (b, _) = run(7).await;
    assert_eq!(a, b, "the same seed, the same faults");
    for (what, p) in [
        ("slow", 0.03),
        ("error-500", 0.01),
        ("lost-answer", 0.01),
        ("throttle", 0.01),
    ] {
        let n = *injected.get(what).unwrap_or(&0) as f64;
        assert!((n - 10_000.0 * p).abs() < 10_000.0 * p * 0.5, "{what}: {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_table_fails_every_call() {
    let store = MemoryStore::new();
    store.set_failure(Some("unreachable"));
    let e = store.get(KEY).await.unwrap_err();
    assert_eq!(e.message, "unreachable");
    store.set_failure(None);
    assert_eq!(store.get(KEY).await.unwrap(), None);
    assert_eq!(store.calls(), 2);
}
