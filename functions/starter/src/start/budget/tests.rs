//! The budget's math and the lessees, on tokio's paused clock (no sleeping, no network).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{SharedPacer, FALLBACK_RETRY};
use super::*;
use crate::start::memory::MemoryStore;
use crate::start::pace::{Pacer, Source};

const KEY: &str = "test";

fn full(rate: f64, burst: f64) -> BudgetState {
    BudgetState::new(rate, burst)
}

fn lessee(store: &Arc<MemoryStore>, rate: f64, burst: f64) -> SharedPacer {
    let fallback = Pacer::new(rate / 2.0, burst / 2.0, Instant::now());
    SharedPacer::new(store.clone(), KEY, full(rate, burst), fallback, Duration::from_secs(1))
}

/// Takes slots for `run` with `demand` each time; returns the instants the calls would go.
async fn take_slots(pacer: Arc<SharedPacer>, run: Duration, demand: u64) -> Vec<Instant> {
    let end = Instant::now() + run;
    let mut times = Vec::new();
    while let Some(slot) = pacer.reserve(end, || demand).await {
        tokio::time::sleep(slot.wait).await;
        times.push(Instant::now());
        pacer.on_success(slot).await;
    }
    times
}

/// The most calls in any window of `window` starting at a call.
fn most_in_window(times: &mut [Instant], window: Duration) -> usize {
    times.sort();
    let mut most = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while j < times.len() && times[j] <= times[i] + window {
            j += 1;
        }
        most = most.max(j - i);
    }
    most
}

#[test]
fn a_full_bucket_leases_from_now_and_releases_the_burst_at_once() {
    let state = full(300.0, 1300.0);
    let now = 1_000.0;
    let LeasePlan::Lease { update, slots } = state.plan_lease(now, 1_000, 0) else {
        panic!("a lease")
    };
    // At most 100 ms of the rate per lease.
    assert_eq!(slots, 30);
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    assert!((after.tat - (now + 0.1)).abs() < 1e-9, "{}", after.tat);
    // A full bucket (B = 1300 − 30 reserve = 1270) covers all 30: every one goes now.
    assert!(after.release_times(slots, now).iter().all(|t| (*t - now).abs() < 1e-9));
}

#[test]
fn an_empty_bucket_releases_one_slot_every_one_over_r() {
    let mut state = full(100.0, 100.0);
    let now = 50.0;
    state.tat = now + state.tau();
    let LeasePlan::Lease { update, slots } = state.plan_lease(now, 5, 0) else {
        panic!("a lease")
    };
    assert_eq!(slots, 5);
    assert!(matches!(
        update,
        Update::Lease {
            shape: Shape::Extend { .. },
            ..
        }
    ));
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    let times = after.release_times(slots, now);
    for (j, t) in times.iter().enumerate() {
        assert!((t - (now + (j + 1) as f64 / 100.0)).abs() < 2e-4, "slot {j} at {t}");
    }
}

#[test]
fn a_lease_past_the_horizon_waits_and_a_stale_version_is_refused() {
    let mut state = full(100.0, 100.0);
    let now = 10.0;
    state.tat = now + state.tau() + HORIZON_SECONDS;
    let LeasePlan::WaitUntil(at) = state.plan_lease(now, 1, 0) else {
        panic!("a wait")
    };
    // It asks again once the next slot is within half the horizon.
    assert!((at - (now + HORIZON_SECONDS / 2.0)).abs() < 1e-9, "{at}");
    let fresh = full(100.0, 100.0);
    let LeasePlan::Lease { update, .. } = fresh.plan_lease(now, 1, 0) else {
        panic!("a lease")
    };
    let changed = BudgetState {
        version: 2,
        ..fresh.clone()
    };
    assert_eq!(
        BudgetState::apply(Some(&changed), &update),
        Written::Refused(Some(changed.clone()))
    );
    assert_eq!(BudgetState::apply(None, &update), Written::Refused(None));
}

#[test]
fn successes_raise_the_factor_and_bump_the_version() {
    let state = BudgetState {
        factor: 0.5,
        ..full(100.0, 100.0)
    };
    // 50 successes at 50/s are one second of calls: +0.1.
    let LeasePlan::Lease { update, .. } = state.plan_lease(5.0, 1, 50) else {
        panic!("a lease")
    };
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    assert!((after.factor - 0.6).abs() < 1e-9, "{}", after.factor);
    assert_eq!(after.version, state.version + 1);
}

#[tokio::test(start_paused = true)]
async fn no_window_releases_more_than_burst_plus_rate_times_t_across_lessees() {
    let (rate, burst) = (200.0, 300.0);
    let effective_burst = full(rate, burst).effective_burst();
    for lessees in [1, 3, 8] {
        let key_store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
        let mut tasks = Vec::new();
        for i in 0..lessees {
            let pacer = Arc::new(lessee(&key_store, rate, burst));
            let demand = [50, 1000, 7, 1][i % 4];
            tasks.push(tokio::spawn(take_slots(pacer, Duration::from_secs(6), demand)));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.extend(task.await.unwrap());
        }
        for window in [0.0, 0.05, 0.5, 1.0, 3.0] {
            let most = most_in_window(&mut times, Duration::from_secs_f64(window));
            // Measured on the calls: a call runs up to SLOT_GRACE behind its slot's time (the
            // lease's answer arrives a write's latency after the schedule starts), and one slot
            // of tolerance for the 0.1 ms tick of stored times. The burst reserve covers both.
            let bound = effective_burst + rate * (window + SLOT_GRACE.as_secs_f64()) + 1.0;
            assert!(
                most as f64 <= bound,
                "{lessees} lessees: {most} calls in {window} s > {bound}"
            );
        }
        // Together they still use the budget: at least 95 % of B + r × T.
        let expected = effective_burst + rate * 6.0;
        assert!(
            times.len() as f64 >= 0.95 * expected,
            "{lessees} lessees: {} of {expected}",
            times.len()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_lone_lessee_reaches_the_full_rate_with_few_table_calls() {
    let (rate, burst) = (300.0, 1300.0);
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
    let pacer = Arc::new(lessee(&store, rate, burst));
    let times = take_slots(pacer.clone(), Duration::from_secs(10), 10_000).await;
    let b = full(rate, burst).effective_burst();
    let ideal = b + rate * 10.0;
    assert!(times.len() as f64 >= 0.97 * ideal, "{} of {ideal}", times.len());
    let calls = pacer.take_counts().calls;
    // About one lease per 100 ms of the rate.
    let per_start = calls as f64 / times.len() as f64;
    assert!(per_start <= 0.05, "{calls} table calls for {} starts", times.len());
}

#[tokio::test(start_paused = true)]
async fn unused_slots_are_given_back_unless_someone_leased_since() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 100.0, 100.0);
    let latest = Instant::now() + Duration::from_secs(5);
    let slot = a.reserve(latest, || 10).await.unwrap();
    a.on_success(slot).await;
    let leased = store.item(KEY).unwrap();
    a.give_back(latest).await;
    let after = store.item(KEY).unwrap();
    // 9 of 10 slots back: tat moves back by 9 / r.
    assert!(
        (leased.tat - after.tat - 0.09).abs() < 2e-4,
        "{} → {}",
        leased.tat,
        after.tat
    );

    // Someone else leases in between: the give-back is refused, nothing is returned twice.
    a.reserve(latest, || 10).await.unwrap();
    let b = lessee(&store, 100.0, 100.0);
    b.reserve(latest, || 10).await.unwrap();
    let before = store.item(KEY).unwrap();
    a.give_back(latest).await;
    assert_eq!(store.item(KEY).unwrap(), before);
    assert!(a.take_counts().dropped >= 9);
}

#[tokio::test(start_paused = true)]
async fn throttles_lower_the_shared_rate_once_per_version() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 100.0, 100.0);
    let b = lessee(&store, 100.0, 100.0);
    let latest = Instant::now() + Duration::from_secs(5);
    let slot_a = a.reserve(latest, || 5).await.unwrap();
    let slot_b = b.reserve(latest, || 5).await.unwrap();
    assert_eq!(slot_a.source, Source::Shared);
    assert_eq!(slot_a.epoch, slot_b.epoch, "both leased under one version");
    a.on_throttle(slot_a).await;
    b.on_throttle(slot_b).await;
    let item = store.item(KEY).unwrap();
    assert!(
        (item.factor - DECREASE_FACTOR).abs() < 1e-9,
        "halved once: {}",
        item.factor
    );
    assert_eq!(item.version, slot_a.epoch + 1);
    // The bucket was emptied: the next slot waits about 1 / r of the new rate.
    let next = b.reserve(latest, || 1).await.unwrap();
    assert!(next.wait >= Duration::from_millis(15), "{:?}", next.wait);
    // Successes of the new version raise it back, one lease at a time.
    b.on_success(next).await;
    for _ in 0..60 {
        let slot = b.reserve(latest, || 1).await.unwrap();
        tokio::time::sleep(slot.wait).await;
        b.on_success(slot).await;
    }
    assert!(store.item(KEY).unwrap().factor > DECREASE_FACTOR);
}

#[tokio::test(start_paused = true)]
async fn a_failing_table_falls_back_to_the_static_split_and_recovers() {
    let store = Arc::new(MemoryStore::new());
    store.set_failure(Some("ResourceNotFoundException: no such table"));
    let a = lessee(&store, 100.0, 100.0);
    let latest = Instant::now() + Duration::from_secs(10);
    let slot = a.reserve(latest, || 5).await.unwrap();
    assert_eq!(slot.source, Source::Local);
    assert_eq!(
        a.last_error().as_deref(),
        Some("ResourceNotFoundException: no such table")
    );
    let counts = a.take_counts();
    assert_eq!((counts.calls, counts.fallbacks), (1, 1));
    // Within FALLBACK_RETRY the table is not asked again.
    a.reserve(latest, || 5).await.unwrap();
    assert_eq!(a.take_counts().calls, 0);
    store.set_failure(None);
    tokio::time::sleep(FALLBACK_RETRY).await;
    let slot = a.reserve(latest, || 5).await.unwrap();
    assert_eq!(slot.source, Source::Shared);
    assert!(a.last_error().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_slow_table_never_holds_a_call_past_its_latest() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_secs(5), Duration::from_secs(5)));
    let a = lessee(&store, 100.0, 100.0);
    let began = Instant::now();
    let latest = began + Duration::from_millis(300);
    // The table does not answer in time: the static split serves, within the bound.
    let slot = a.reserve(latest, || 1).await;
    assert!(Instant::now() <= latest, "waited {:?}", began.elapsed());
    assert!(slot.is_none_or(|s| s.source == Source::Local));
}

#[tokio::test(start_paused = true)]
async fn busy_lessees_make_about_one_table_call_per_lease() {
    // At 300/s a lease is 30 slots (0.033 calls per start); at 60/s it is 6 (0.167).
    for (rate, burst, most_per_start) in [(300.0, 1300.0, 0.05), (60.0, 60.0, 0.25)] {
        let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
        let pacers: Vec<Arc<SharedPacer>> = (0..3).map(|_| Arc::new(lessee(&store, rate, burst))).collect();
        let tasks: Vec<_> = pacers
            .iter()
            .map(|p| tokio::spawn(take_slots(p.clone(), Duration::from_secs(4), 1_000)))
            .collect();
        let mut starts = 0;
        for task in tasks {
            starts += task.await.unwrap().len();
        }
        let per_start = store.calls() as f64 / starts as f64;
        assert!(
            per_start <= most_per_start,
            "{rate}/s: {} calls for {starts} starts",
            store.calls()
        );
        assert_eq!(pacers.iter().map(|p| p.take_counts().dropped).sum::<u64>(), 0);
    }
}

#[test]
fn changing_the_rate_keeps_the_level_of_the_bucket() {
    let now = 100.0;
    // Drained: the bucket is empty (level 0) at 300/s.
    let mut state = full(300.0, 1300.0);
    state.tat = now + state.tau();
    assert!(state.level(now).abs() < 1e-6);
    let Written::Applied(halved) = BudgetState::apply(Some(&state), &state.plan_set_limits(150.0, 1300.0, now)) else {
        panic!("applied")
    };
    // Still empty at the new rate: no phantom burst of slots booked at the old one.
    assert!(halved.level(now).abs() < 0.01, "{}", halved.level(now));
    assert_eq!(halved.version, state.version + 1);
    // Booked 200 slots beyond empty: still 200 beyond empty after the change.
    state.tat = now + state.tau() + 200.0 / 300.0;
    let Written::Applied(after) = BudgetState::apply(Some(&state), &state.plan_set_limits(150.0, 1300.0, now)) else {
        panic!("applied")
    };
    assert!((after.level(now) + 200.0).abs() < 0.01, "{}", after.level(now));
    // A full bucket stays full.
    let idle = BudgetState {
        tat: 10.0,
        ..full(300.0, 1300.0)
    };
    let Written::Applied(after) = BudgetState::apply(Some(&idle), &idle.plan_set_limits(100.0, 500.0, now)) else {
        panic!("applied")
    };
    assert_eq!(after.tat, 10.0);
    // A lease in between (tat moved): the change is refused, to be planned again.
    let moved = BudgetState {
        tat: state.tat + 0.1,
        ..state.clone()
    };
    assert!(matches!(
        BudgetState::apply(Some(&moved), &state.plan_set_limits(150.0, 1300.0, now)),
        Written::Refused(Some(_))
    ));
}

#[test]
fn a_throttle_empties_the_bucket_at_the_lowered_rate_and_keeps_what_is_booked() {
    let now = 50.0;
    let mut state = full(100.0, 100.0);
    state.tat = now + state.tau() + 1.0; // 100 slots booked beyond empty
    let update = state.plan_decrease(state.version, now).unwrap();
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    assert_eq!(after.factor, DECREASE_FACTOR);
    assert!((after.level(now) + 100.0).abs() < 0.01, "{}", after.level(now));
    // An idle bucket is emptied: the account's bucket is empty when AWS throttles.
    let idle = full(100.0, 100.0);
    let Written::Applied(after) = BudgetState::apply(Some(&idle), &idle.plan_decrease(1, now).unwrap()) else {
        panic!("applied")
    };
    assert!(after.level(now).abs() < 0.01, "{}", after.level(now));
}

#[tokio::test(start_paused = true)]
async fn a_lessee_refused_a_slot_knows_when_the_next_one_is_due_without_a_table_call() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 10.0, 1.0);
    assert_eq!(a.free_in().await, Duration::ZERO, "nothing seen yet: no estimate");
    // Book the budget until a slot no longer fits in 300 ms.
    let latest = Instant::now() + Duration::from_millis(300);
    let mut granted = 0;
    while a.reserve(latest, || 10).await.is_some() {
        granted += 1;
    }
    assert!(granted >= 1, "the burst at least");
    a.take_counts();
    let free_in = a.free_in().await;
    assert_eq!(a.take_counts().calls, 0, "the estimate asks no table");
    let next = a.reserve(Instant::now() + Duration::from_secs(60), || 1).await.unwrap();
    assert!(
        free_in > Duration::from_millis(300),
        "past the refused window: {free_in:?}"
    );
    assert!(
        free_in <= next.wait,
        "never later than the slot: {free_in:?} vs {:?}",
        next.wait
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_put_back_is_the_next_one_handed_out_while_it_is_fresh() {
    let store = Arc::new(MemoryStore::new());
    let pacer = lessee(&store, 100.0, 1.0);
    let far = Instant::now() + Duration::from_secs(10);
    let first = pacer.reserve(far, || 5).await.unwrap();
    let calls = store.calls();
    pacer.put_back(first).await;
    let again = pacer.reserve(far, || 5).await.unwrap();
    assert_eq!(again.at, first.at, "the same slot, no table call");
    assert_eq!(store.calls(), calls);
    // A slot put back past its grace is dropped, never used late.
    tokio::time::advance(SLOT_GRACE + Duration::from_millis(1) + again.wait).await;
    pacer.put_back(again).await;
    assert_eq!(pacer.take_counts().dropped, 1);
}
