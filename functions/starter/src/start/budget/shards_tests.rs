//! Sharding: the load rule, the meter, and reshards on the in-memory table (the invariant that
//! the active shards' shares never sum above the budget, at every write).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::start::memory::MemoryStore;

#[test]
fn the_load_rule_grows_over_the_threshold_and_shrinks_with_a_band() {
    assert_eq!(wanted(1, 30.0, 0), 1, "Standard at BatchSize 10");
    assert_eq!(wanted(1, 600.0, 0), 5, "Express at BatchSize 10: 600 leases/s");
    assert_eq!(wanted(5, 120.0, 0), 5, "at the target: stays");
    assert_eq!(wanted(5, 150.0, 0), 5, "in the band: stays");
    assert_eq!(wanted(5, 210.0, 0), 9, "over the threshold: grows to fit");
    assert_eq!(wanted(5, 20.0, 0), 1, "the load fell: shrinks to fit");
    assert_eq!(wanted(4, 100.0, 0), 4, "three would be over the target");
    assert_eq!(
        wanted(2, 10.0, THROTTLES_TO_GROW),
        3,
        "a hot item grows by one at least"
    );
    assert_eq!(wanted(MAX_SHARDS, 1e6, 9), MAX_SHARDS);
    assert_eq!(wanted(0, f64::NAN, 0), 1);
}

#[test]
fn homes_spread_lessees_and_keys_name_the_shards() {
    assert_eq!(shard_key("k", 0), "k");
    assert_eq!(shard_key("k", 3), "k#3");
    assert_eq!(home(7, 1), 0);
    assert_eq!(home(7, 4), 3);
    assert_eq!(home(7, 0), 0);
}

#[test]
fn the_meter_measures_applied_leases_per_second_over_its_window() {
    let mut meter = Meter::default();
    let mut state = BudgetState::new(6_000.0, 6_000.0);
    assert_eq!(meter.observe(100.0, &state), None, "the first look starts the measure");
    state.leases = 600;
    assert_eq!(meter.observe(101.0, &state), None, "within the window");
    state.leases = 1_200;
    assert_eq!(meter.observe(102.0, &state), Some(5), "600 a second: five items");
    // Five items, 30 leases a second each: two would do, but only measures in a row shrink.
    state.shards = 5;
    for i in 1..SHRINK_MEASURES {
        state.leases += 60;
        assert_eq!(meter.observe(102.0 + 2.0 * f64::from(i), &state), None, "measure {i}");
    }
    state.leases += 60;
    assert_eq!(meter.observe(102.0 + 2.0 * f64::from(SHRINK_MEASURES), &state), Some(2));
    state.leases += 300;
    assert_eq!(
        meter.observe(114.0, &state),
        None,
        "150 a second on each of five: in the band"
    );
    state.layout = 1;
    assert_eq!(meter.observe(120.0, &state), None, "a new layout starts again");
    for _ in 0..THROTTLES_TO_GROW {
        meter.throttled();
    }
    assert_eq!(meter.observe(120.1, &state), Some(6), "a hot item: at once");
}

/// A store that checks, after every applied write, that the active shards' shares sum to at
/// most the whole budget.
struct Checked {
    inner: MemoryStore,
    key: String,
    worst: Mutex<f64>,
}

#[async_trait]
impl Store for Checked {
    async fn get(&self, key: &str) -> Result<Option<BudgetState>, StoreError> {
        self.inner.get(key).await
    }

    async fn write(&self, key: &str, update: &Update) -> Result<Written, StoreError> {
        let written = self.inner.write(key, update).await?;
        let share: f64 = (0..MAX_SHARDS)
            .filter_map(|i| self.inner.item(&shard_key(&self.key, i)).filter(|s| i < s.shards))
            .map(|s| 1.0 / f64::from(s.shards))
            .sum();
        let mut worst = self.worst.lock().unwrap();
        *worst = worst.max(share);
        Ok(written)
    }
}

/// A budget of 6,000/s under key `k`, on one item, in a [`Checked`] store.
async fn checked_budget() -> Checked {
    let store = Checked {
        inner: MemoryStore::default(),
        key: "k".into(),
        worst: Mutex::new(0.0),
    };
    let state = BudgetState::new(6_000.0, 6_000.0);
    store.write("k", &Update::Create(state)).await.unwrap();
    store
}

fn active(store: &MemoryStore, key: &str) -> Vec<(u32, u32, u64)> {
    (0..MAX_SHARDS)
        .filter_map(|i| store.item(&shard_key(key, i)).map(|s| (i, s.shards, s.layout)))
        .filter(|(i, shards, _)| i < shards)
        .collect()
}

#[tokio::test]
async fn a_reshard_grows_and_shrinks_without_the_shares_passing_the_budget() {
    let store = checked_budget().await;
    let now = || 1_000.0;
    assert_eq!(reshard(&store, "k", 5, 0, &now).await.unwrap(), Some(1));
    assert_eq!(active(&store.inner, "k"), (0..5).map(|i| (i, 5, 1)).collect::<Vec<_>>());
    // A new shard starts empty: its refill while it did not exist was not the budget's.
    let fresh = store.inner.item("k#3").unwrap();
    assert!((fresh.tat - (1_000.0 + fresh.tau())).abs() < 1e-3, "{}", fresh.tat);
    assert!((fresh.effective_rate() - 1_200.0).abs() < 1e-9);
    // Another plan within the lock's time is refused.
    let later = || 1_005.0;
    assert_eq!(reshard(&store, "k", 2, 1, &later).await.unwrap(), None);
    let after = || 1_011.0;
    assert_eq!(
        reshard(&store, "k", 2, 0, &after).await.unwrap(),
        None,
        "a stale layout"
    );
    assert_eq!(reshard(&store, "k", 2, 1, &after).await.unwrap(), Some(2));
    assert_eq!(active(&store.inner, "k"), vec![(0, 2, 2), (1, 2, 2)]);
    assert_eq!(store.inner.item("k#4").unwrap().shards, 2, "retired");
    // Back to three: shard 2 is made active again, empty.
    let again = || 1_022.0;
    assert_eq!(reshard(&store, "k", 3, 2, &again).await.unwrap(), Some(3));
    assert_eq!(active(&store.inner, "k").len(), 3);
    let woken = store.inner.item("k#2").unwrap();
    assert!(woken.tat > 1_022.0, "made active again with an empty bucket");
    let worst = *store.worst.lock().unwrap();
    assert!(worst <= 1.0 + 1e-9, "the shares summed to {worst}");
}

#[tokio::test]
async fn the_operators_change_reaches_every_active_shard() {
    let store = checked_budget().await;
    let now = || 1_000.0;
    reshard(&store, "k", 3, 0, &now).await.unwrap();
    let root = store.inner.item("k").unwrap();
    let Written::Applied(root) = store
        .write("k", &root.plan_set_limits(3_000.0, 3_000.0, 1_001.0))
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    assert_eq!(spread_limits(&store, "k", &root, 1_001.0).await.unwrap(), 2);
    for i in 0..3 {
        let s = store.inner.item(&shard_key("k", i)).unwrap();
        assert_eq!((s.rate_per_second, s.burst, s.shards), (3_000.0, 3_000.0, 3));
    }
    assert_eq!(
        spread_limits(&store, "k", &root, 1_002.0).await.unwrap(),
        0,
        "nothing left to change"
    );
}

#[tokio::test]
async fn a_reshard_cut_short_leaves_the_budget_below_its_rate_and_the_next_completes_it() {
    let store = Arc::new(checked_budget().await);
    let now = || 1_000.0;
    reshard(&*store, "k", 4, 0, &now).await.unwrap();
    // A shrink to 2 whose second pass never runs: shards 2 and 3 retired, 0 and 1 still at 1/4.
    let Written::Applied(root) = store
        .write(
            "k",
            &Update::Plan {
                layout: 1,
                now: 1_011.0,
                until: 1_021.0,
                span: 4,
            },
        )
        .await
        .unwrap()
    else {
        panic!("the lock")
    };
    for index in 2..4 {
        let s = store.inner.item(&shard_key("k", index)).unwrap();
        let change = Change {
            root: &root,
            index,
            target: 2,
            layout: 2,
            not_before: 1_011.0,
        };
        let u = step_update(Some(&s), &change, Pass::Lower, 1_011.0).unwrap();
        store.write(&shard_key("k", index), &u).await.unwrap();
    }
    let share: f64 = active(&store.inner, "k")
        .iter()
        .map(|(_, s, _)| 1.0 / f64::from(*s))
        .sum();
    assert!((share - 0.5).abs() < 1e-9, "below the rate: {share}");
    // The next reshard, once the lock is free, completes the layout.
    let after = || 1_022.0;
    assert_eq!(reshard(&*store, "k", 2, root.layout, &after).await.unwrap(), Some(2));
    assert_eq!(active(&store.inner, "k"), vec![(0, 2, 2), (1, 2, 2)]);
    assert!(*store.worst.lock().unwrap() <= 1.0 + 1e-9);
}
