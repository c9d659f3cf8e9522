//! The lessee on tokio's paused clock against the in-memory table and its fault model: each
//! timing rule of [`super::super::rules`], and the faults a real table has.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::start::budget::rules::{MAX_SKEW, MIN_CALL_TIME};
use crate::start::budget::{BudgetState, Shape, Update, DECREASE_FACTOR};
use crate::start::memory::{Fault, MemoryStore, TableFaults};
use crate::start::pace::{Pacer, Source};

const KEY: &str = "test";
/// Epoch seconds at the start of each test (the lessees' clocks follow the paused clock).
const EPOCH: f64 = 1_800_000_000.0;

fn full(rate: f64, burst: f64) -> BudgetState {
    BudgetState::new(rate, burst)
}

fn lessee(store: &Arc<MemoryStore>, rate: f64, burst: f64) -> SharedPacer {
    let fallback = Pacer::new(rate / 2.0, burst / 2.0, Instant::now());
    SharedPacer::new(store.clone(), KEY, full(rate, burst), fallback, Duration::from_secs(1))
        .with_clock(Clock::following_runtime(EPOCH))
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Takes slots for `run` with `demand` each time; returns the instants the calls go.
async fn take_slots(pacer: Arc<SharedPacer>, run: Duration, demand: u64) -> Vec<Instant> {
    let end = Instant::now() + run;
    let mut times = Vec::new();
    while let Some(slot) = pacer.reserve(end, || demand).await {
        if pacer.ready(slot).await {
            times.push(Instant::now());
            pacer.on_success(slot).await;
        }
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

// ---------------------------------------------------------------- sharing the budget

#[tokio::test(start_paused = true)]
async fn no_window_releases_more_than_burst_plus_rate_times_t_across_lessees() {
    let (rate, burst) = (200.0, 300.0);
    let effective_burst = full(rate, burst).effective_burst();
    for lessees in [1, 3, 8] {
        let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
        let mut tasks = Vec::new();
        for i in 0..lessees {
            let pacer = Arc::new(lessee(&store, rate, burst));
            let demand = [50, 1000, 7, 1][i % 4];
            tasks.push(tokio::spawn(take_slots(pacer, Duration::from_secs(6), demand)));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.extend(task.await.unwrap());
        }
        for window in [0.0, 0.05, 0.5, 1.0, 3.0] {
            let most = most_in_window(&mut times, Duration::from_secs_f64(window));
            // A slot due while its lease was being written comes when the answer arrives
            // (at most 10 ms late here); one slot of tolerance for the 0.1 ms tick.
            let bound = effective_burst + rate * (window + 0.010) + 1.0;
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
async fn a_crowd_of_small_leases_spreads_the_budget_and_a_lone_lessee_brings_it_back() {
    // 40 lessees leasing 5 slots at a time from 3,000/s: 600 leases a second on one item. Each
    // has its share of the static split (1/40).
    let (rate, burst) = (3_000.0, 600.0);
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
    let crowd: Vec<Arc<SharedPacer>> = (0..40)
        .map(|_| {
            let fallback = Pacer::new(rate / 40.0, burst / 40.0, Instant::now());
            let pacer = SharedPacer::new(store.clone(), KEY, full(rate, burst), fallback, Duration::from_secs(1));
            Arc::new(pacer.with_clock(Clock::following_runtime(EPOCH)))
        })
        .collect();
    let tasks: Vec<_> = crowd
        .iter()
        .map(|p| tokio::spawn(take_slots(p.clone(), Duration::from_secs(8), 5)))
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    let shards = store.item(KEY).unwrap().shards;
    assert!(shards >= 3, "spread over {shards} items");
    let reshards: u64 = crowd.iter().map(|p| p.take_counts().reshards).sum();
    assert!(reshards >= 1);
    let effective_burst = full(rate, burst).effective_burst();
    for window in [0.05, 0.5, 1.0, 4.0] {
        let most = most_in_window(&mut times, Duration::from_secs_f64(window));
        // As above, and one slot of tick per item.
        let bound = effective_burst + rate * (window + 0.010) + f64::from(shards);
        assert!(most as f64 <= bound, "{most} calls in {window} s > {bound}");
    }
    // The first second is lost in part to the one hot item the crowd starts on, and a reshard
    // starts its items empty (0.78 – 0.94 of this over runs).
    let expected = effective_burst + rate * 8.0;
    assert!(times.len() as f64 >= 0.7 * expected, "{} of {expected}", times.len());
    // One lessee left: its home's load calls for one item, measures in a row, and it shrinks.
    let lone = take_slots(crowd[0].clone(), Duration::from_secs(30), 10_000).await;
    assert_eq!(store.item(KEY).unwrap().shards, 1);
    assert!(lone.len() as f64 >= 0.5 * rate * 30.0, "{} starts alone", lone.len());
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

#[tokio::test(start_paused = true)]
async fn unused_slots_are_given_back_unless_someone_leased_since() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 100.0, 100.0);
    let slot = a.reserve(far(), || 10).await.unwrap();
    a.on_success(slot).await;
    let leased = store.item(KEY).unwrap();
    a.give_back(far()).await;
    let after = store.item(KEY).unwrap();
    // 9 of 10 slots back: tat moves back by 9 / r.
    assert!(
        (leased.tat - after.tat - 0.09).abs() < 2e-4,
        "{} → {}",
        leased.tat,
        after.tat
    );
    let counts = a.take_counts();
    assert_eq!((counts.leased, counts.returned, counts.dropped), (10, 9, 0));

    // Someone else leases in between: the give-back is refused, nothing is returned twice.
    a.reserve(far(), || 10).await.unwrap();
    let b = lessee(&store, 100.0, 100.0);
    b.reserve(far(), || 10).await.unwrap();
    let before = store.item(KEY).unwrap();
    a.give_back(far()).await;
    assert_eq!(store.item(KEY).unwrap(), before);
    assert_eq!(a.take_counts().dropped, 9);
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
    let next = a.reserve(far(), || 1).await.unwrap();
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
    let first = pacer.reserve(far(), || 5).await.unwrap();
    let calls = store.calls();
    pacer.put_back(first).await;
    let again = pacer.reserve(far(), || 5).await.unwrap();
    assert_eq!(again.at, first.at, "the same slot, no table call");
    assert_eq!(store.calls(), calls);
    // A slot put back past its grace is not used late: it goes back to the budget with the
    // lease's other unused slots.
    tokio::time::advance(SLOT_GRACE + Duration::from_millis(1) + again.wait).await;
    pacer.put_back(again).await;
    pacer.give_back(far()).await;
    let counts = pacer.take_counts();
    assert_eq!((counts.leased, counts.returned, counts.dropped), (5, 5, 0));
}

// ---------------------------------------------------------------- item 1: faults are not failures

#[tokio::test(start_paused = true)]
async fn a_table_call_cut_off_by_the_cutoff_means_no_slot_not_a_fallback() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(200), Duration::from_millis(200)));
    let a = lessee(&store, 100.0, 100.0);
    let began = Instant::now();
    let latest = began + Duration::from_millis(100);
    assert_eq!(a.reserve(latest, || 1).await, None);
    assert!(Instant::now() <= latest, "waited {:?}", began.elapsed());
    // The next caller, with time, leases from the table: no static split.
    let slot = a.reserve(far(), || 1).await.unwrap();
    assert_eq!(slot.source, Source::Shared);
    assert_eq!(a.take_counts().fallbacks, 0);
    assert_eq!(a.last_error(), None);
}

#[tokio::test(start_paused = true)]
async fn no_table_call_starts_just_before_the_cutoff() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(10), Duration::from_millis(10)));
    let a = lessee(&store, 100.0, 100.0);
    let latest = Instant::now() + MIN_CALL_TIME - Duration::from_millis(1);
    assert_eq!(a.reserve(latest, || 1).await, None);
    assert_eq!(store.calls(), 0, "a call that could not answer in time is not made");
    assert_eq!(a.take_counts().fallbacks, 0);
    assert!(a.reserve(far(), || 1).await.is_some_and(|s| s.source == Source::Shared));
}

#[tokio::test(start_paused = true)]
async fn one_transient_error_is_retried_within_the_time_left() {
    for fault in [Fault::Error500, Fault::Lost, Fault::Throttle] {
        let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(10), Duration::from_millis(20)));
        let a = lessee(&store, 100.0, 100.0);
        // The first lease works; the next lease write fails once.
        let first = a.reserve(far(), || 1).await.unwrap();
        a.on_success(first).await;
        store.inject_next(&[Some(fault)]);
        let slot = a.reserve(far(), || 1).await.unwrap();
        assert_eq!(slot.source, Source::Shared, "{fault:?}");
        let counts = a.take_counts();
        assert_eq!(counts.fallbacks, 0, "{fault:?}");
        assert_eq!(store.injected().values().sum::<u64>(), 1, "{fault:?} injected once");
    }
}

#[tokio::test(start_paused = true)]
async fn the_static_split_starts_empty_and_its_starts_are_repaid_to_the_budget() {
    let store = Arc::new(MemoryStore::new());
    let (rate, burst) = (100.0, 100.0);
    let t0 = Instant::now();
    let a = lessee(&store, rate, burst);
    a.reserve(far(), || 1).await.unwrap();
    a.give_back(far()).await;
    // A while later, the fallback's bucket has long refilled; then the table fails.
    tokio::time::advance(Duration::from_secs(30)).await;
    a.take_counts();
    store.set_failure(Some("InternalServerError"));
    let slot = a.reserve(far(), || 1).await.unwrap();
    assert_eq!(slot.source, Source::Local);
    // Empty: the first slot waits for the refill at the static split's rate (r/2 here).
    assert!(slot.wait >= Duration::from_millis(15), "{:?}", slot.wait);
    assert_eq!(a.last_error().as_deref(), Some("InternalServerError"));
    let counts = a.take_counts();
    assert_eq!((counts.calls, counts.fallbacks), (u64::from(LEASE_ATTEMPTS), 1));
    // Within FALLBACK_RETRY the table is not asked again.
    let more = a.reserve(far(), || 1).await.unwrap();
    assert_eq!(more.source, Source::Local);
    assert_eq!(a.take_counts().calls, 0);
    // The table answers again: the next lease books this lease's slot and the 2 fallback starts.
    store.set_failure(None);
    tokio::time::sleep(FALLBACK_RETRY).await;
    let now = EPOCH + t0.elapsed().as_secs_f64();
    let slot = a.reserve(far(), || 1).await.unwrap();
    assert_eq!(slot.source, Source::Shared);
    // The bucket was full (tat in the past): the lease books from now + MAX_SKEW.
    let booked = (store.item(KEY).unwrap().tat - now - MAX_SKEW.as_secs_f64()) * rate;
    assert!((booked - 3.0).abs() < 0.05, "1 slot + 2 repaid: {booked}");
    assert!(a.last_error().is_none());
}

// ---------------------------------------------------------------- item 2: slow answers

#[tokio::test(start_paused = true)]
async fn a_slow_answer_costs_latency_not_slots() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(20), Duration::from_millis(20)));
    store.set_faults(TableFaults {
        latency_min: Duration::from_millis(20),
        latency_max: Duration::from_millis(20),
        slow_delay: Duration::from_millis(150),
        ..TableFaults::default()
    });
    let a = Arc::new(lessee(&store, 100.0, 100.0));
    // Read, create, then the lease: its answer comes 150 ms late.
    store.inject_next(&[None, None, Some(Fault::Slow)]);
    let times = take_slots(a.clone(), Duration::from_millis(400), 10).await;
    let counts = a.take_counts();
    assert_eq!(counts.dropped, 0, "no slot lost to the slow answer");
    assert!(times.len() >= 10, "{} calls", times.len());
    assert!(
        counts.latencies_ms.iter().any(|ms| *ms >= 170.0),
        "{:?}",
        counts.latencies_ms
    );
}

#[tokio::test(start_paused = true)]
async fn an_instance_with_little_demand_never_spins_on_lease_writes() {
    // Every answer is 150 ms late and the instance wants one slot at a time: r × latency = 15
    // slots, far more than it asks for.
    let store = Arc::new(MemoryStore::new().with_faults(TableFaults {
        latency_min: Duration::from_millis(10),
        latency_max: Duration::from_millis(10),
        slow_probability: 1.0,
        slow_delay: Duration::from_millis(150),
        ..TableFaults::default()
    }));
    let a = Arc::new(lessee(&store, 100.0, 100.0));
    let times = take_slots(a.clone(), Duration::from_secs(2), 1).await;
    let counts = a.take_counts();
    assert!(times.len() >= 10, "{} calls in 2 s", times.len());
    assert!(counts.calls <= times.len() as u64 + 3, "{} table calls", counts.calls);
    assert_eq!(counts.dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slot_woken_past_its_grace_is_not_used_and_goes_back_to_the_budget() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 100.0, 1.0);
    a.reserve(far(), || 3).await.unwrap();
    let second = a.reserve(far(), || 3).await.unwrap();
    assert!(second.wait > Duration::ZERO);
    // The task wakes up late (a busy runtime).
    tokio::time::advance(second.wait + SLOT_GRACE + Duration::from_millis(1)).await;
    assert!(
        !a.ready(second).await,
        "used late, it could exceed the account's bucket"
    );
    a.give_back(far()).await;
    let counts = a.take_counts();
    assert_eq!((counts.leased, counts.returned, counts.dropped), (3, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn the_table_calls_latencies_are_counted() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(30), Duration::from_millis(30)));
    let a = lessee(&store, 100.0, 100.0);
    a.reserve(far(), || 1).await.unwrap();
    let counts = a.take_counts();
    assert_eq!(counts.latencies_ms.len() as u64, counts.calls);
    assert!(
        counts.latencies_ms.iter().all(|ms| (*ms - 30.0).abs() < 1.0),
        "{counts:?}"
    );
}

// ---------------------------------------------------------------- items 3 and 4: throttles

#[tokio::test(start_paused = true)]
async fn a_throttle_writes_nothing_and_the_next_lease_carries_the_decrease() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 100.0, 100.0);
    let b = lessee(&store, 100.0, 100.0);
    let slot_a = a.reserve(far(), || 5).await.unwrap();
    let slot_b = b.reserve(far(), || 5).await.unwrap();
    assert_eq!(slot_a.epoch, slot_b.epoch, "both leased under one version");
    // The table becomes slow: reporting a throttle must not wait on it.
    store.set_faults(TableFaults {
        latency_min: Duration::from_secs(5),
        latency_max: Duration::from_secs(5),
        ..TableFaults::default()
    });
    let calls = store.calls();
    let t0 = Instant::now();
    a.on_throttle(slot_a).await;
    b.on_throttle(slot_b).await;
    assert_eq!(Instant::now(), t0, "no wait");
    assert_eq!(store.calls(), calls, "no table call");
    assert_eq!(
        a.take_counts().dropped,
        4,
        "a's other slots: the account's bucket is empty"
    );
    store.set_faults(TableFaults::default());
    // Each one's next lease carries the decrease; the second finds it done (once per version).
    let next_a = a.reserve(far(), || 1).await.unwrap();
    let next_b = b.reserve(far(), || 1).await.unwrap();
    let item = store.item(KEY).unwrap();
    assert!(
        (item.factor - DECREASE_FACTOR).abs() < 1e-9,
        "halved once: {}",
        item.factor
    );
    assert_eq!(item.version, slot_a.epoch + 1);
    assert_eq!(store.budget_counts().decreases, 1);
    // The bucket was emptied: the slots come about one per 1 / r of the new rate.
    assert!(next_a.wait.max(next_b.wait) >= Duration::from_millis(15));
    // Successes of the new version raise it back, one lease at a time.
    b.on_success(next_b).await;
    for _ in 0..60 {
        let slot = b.reserve(far(), || 1).await.unwrap();
        assert!(b.ready(slot).await);
        b.on_success(slot).await;
    }
    assert!(store.item(KEY).unwrap().factor > DECREASE_FACTOR);
}

#[tokio::test(start_paused = true)]
async fn a_decrease_not_yet_written_is_written_by_the_give_back() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 100.0, 100.0);
    let slot = a.reserve(far(), || 1).await.unwrap();
    a.on_throttle(slot).await;
    a.give_back(far()).await;
    assert_eq!(store.item(KEY).unwrap().factor, DECREASE_FACTOR);
}

#[tokio::test(start_paused = true)]
async fn a_stale_throttle_keeps_the_slots_leased_since() {
    let store = Arc::new(MemoryStore::new());
    let a = lessee(&store, 100.0, 100.0);
    let b = lessee(&store, 100.0, 100.0);
    let old = a.reserve(far(), || 1).await.unwrap();
    // b is throttled and decreases (version 2); a leases under version 2 after that.
    let slot_b = b.reserve(far(), || 1).await.unwrap();
    b.on_throttle(slot_b).await;
    b.reserve(far(), || 1).await.unwrap();
    let fresh = a.reserve(far(), || 5).await.unwrap();
    assert_eq!(fresh.epoch, old.epoch + 1);
    let calls = store.calls();
    // The throttle of a's old slot arrives late: it carries no news.
    a.on_throttle(old).await;
    let next = a.reserve(far(), || 5).await.unwrap();
    assert_eq!(next.epoch, fresh.epoch, "a leased slot, still held");
    assert_eq!(store.calls(), calls, "no table call: the slots were kept");
    assert_eq!(a.take_counts().dropped, 0);
    assert_eq!(store.item(KEY).unwrap().factor, DECREASE_FACTOR, "decreased once");
}

// ---------------------------------------------------------------- item 6: clocks

#[tokio::test(start_paused = true)]
async fn lessees_whose_clocks_are_skewed_stay_within_the_accounts_bucket() {
    let (rate, burst) = (200.0, 300.0);
    let skew = MAX_SKEW.as_secs_f64();
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
    let mut tasks = Vec::new();
    for (i, offset) in [skew, -skew, skew / 2.0, 0.0].into_iter().enumerate() {
        let clock = Clock::following_runtime(EPOCH).skewed(offset);
        let pacer = Arc::new(lessee(&store, rate, burst).with_clock(clock));
        let demand = [1000, 30, 7, 1][i];
        tasks.push(tokio::spawn(take_slots(pacer, Duration::from_secs(6), demand)));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    // In true time (the runtime's clock), the account's own bucket: B + r × t.
    for window in [0.0, 0.05, 0.2, 1.0, 3.0] {
        let most = most_in_window(&mut times, Duration::from_secs_f64(window));
        let bound = burst + rate * window;
        assert!(most as f64 <= bound, "{most} calls in {window} s > {bound}");
    }
    let expected = full(rate, burst).effective_burst() + rate * 6.0;
    assert!(times.len() as f64 >= 0.95 * expected, "{} of {expected}", times.len());
}

#[tokio::test(start_paused = true)]
async fn a_thawed_instance_does_not_see_the_bucket_as_booked_ahead() {
    let store = Arc::new(MemoryStore::new());
    // The wall clock: the runtime's, plus the time this instance spent frozen.
    let frozen_ms = Arc::new(AtomicU64::new(0));
    let clock = {
        let (start, frozen_ms) = (Instant::now(), frozen_ms.clone());
        Clock::with_wall(move || EPOCH + start.elapsed().as_secs_f64() + frozen_ms.load(Ordering::Relaxed) as f64 / 1e3)
    };
    let a = lessee(&store, 10.0, 10.0).with_clock(clock);
    // Drain the bucket: it is booked about a second ahead.
    let latest = Instant::now() + Duration::from_secs(1);
    while a.reserve(latest, || 10).await.is_some() {}
    a.give_back(far()).await;
    // Frozen for a minute: the monotonic clock stood still, the wall clock and the other
    // instances did not. The bucket is full again.
    frozen_ms.store(60_000, Ordering::Relaxed);
    let slot = a.reserve(far(), || 1).await.unwrap();
    assert_eq!(slot.wait, Duration::ZERO, "not booked ahead by the time frozen");
}

// ---------------------------------------------------------------- contention (item 8)

#[tokio::test(start_paused = true)]
async fn lessees_waiting_for_room_learn_the_spread_from_the_item() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (lessee(&store, 100.0, 10.0), lessee(&store, 100.0, 10.0));
    let first = a.reserve(far(), || 1).await.unwrap();
    a.on_success(first).await;
    // b books the budget past the horizon meanwhile: a's view is stale.
    let latest = Instant::now() + Duration::from_secs(3);
    for _ in 0..80 {
        b.reserve(latest, || 10).await.unwrap();
    }
    // a's next lease is refused: the budget is booked out, others got there first. Its spread
    // widens, and with no room before its latest, it has no slot (and wrote nothing more).
    assert_eq!(a.reserve(Instant::now() + Duration::from_millis(40), || 1).await, None);
    assert!(a.local().refusals > 0);
    assert!(a.local().spread > rules::SPREAD_MIN, "{:?}", a.local().spread);
    // A lease writes its lessee's spread in the item; a newcomer that finds the budget booked
    // starts from it, not from the least.
    let item = store.item(KEY).unwrap();
    let lease_of_none = Update::Lease {
        version: item.version,
        now: EPOCH,
        shape: Shape::Exact {
            expected: item.tat,
            tat_after: item.tat,
        },
        factor: None,
        spread: 1.0,
    };
    store.write(KEY, &lease_of_none).await.unwrap();
    assert_eq!(store.item(KEY).unwrap().spread, 1.0);
    let c = lessee(&store, 100.0, 10.0);
    assert_eq!(c.reserve(Instant::now() + Duration::from_millis(30), || 1).await, None);
    assert_eq!(c.local().spread, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_crowd_of_lessees_keeps_the_items_writes_bounded_and_the_budget_busy() {
    let (rate, burst) = (100.0, 100.0);
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(take_slots(
                Arc::new(lessee(&store, rate, burst)),
                Duration::from_secs(20),
                5,
            ))
        })
        .collect();
    let mut starts = 0;
    for task in tasks {
        starts += task.await.unwrap().len();
    }
    let expected = full(rate, burst).effective_burst() + rate * 20.0;
    assert!(starts as f64 >= 0.9 * expected, "{starts} of {expected}");
    // About 20 leases a second are needed; two hundred lessees wait for them. Waiting
    // lessees read before they write (a read takes none of the item's write capacity), and
    // spread their tries: the item is never throttled, and takes little on average.
    assert_eq!(store.injected().get("item-throttled"), None);
    let units: u64 = store.write_units_by_item().values().sum();
    assert!(units as f64 / 20.0 <= 100.0, "{units} write units in 20 s");
}

#[tokio::test(start_paused = true)]
async fn an_item_that_throttles_every_write_is_backed_off_then_left_for_the_static_split() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(5)));
    let a = lessee(&store, 100.0, 100.0);
    let first = a.reserve(far(), || 1).await.unwrap();
    a.on_success(first).await;
    // The item takes half a write unit a second: every write is throttled, reads still answer.
    store.set_faults(TableFaults {
        latency_min: Duration::from_millis(5),
        latency_max: Duration::from_millis(5),
        item_write_units_per_second: Some(0.5),
        ..TableFaults::default()
    });
    a.take_counts();
    let t0 = Instant::now();
    let slot = a.reserve(far(), || 1).await.unwrap();
    assert_eq!(slot.source, Source::Local, "the static split, after the throttles");
    let counts = a.take_counts();
    // Throttled writes, each after a wider wait (reads between them do not reset the count).
    let throttled = store.injected().get("item-throttled").copied().unwrap_or(0);
    // The throttles in a row also call for one more item: its reshard's plan lock is throttled
    // too, and the reshard given up.
    assert_eq!(throttled, u64::from(rules::THROTTLED_ATTEMPTS) + 1);
    assert_eq!(counts.reshards, 0);
    assert!(counts.calls <= 2 * throttled + 1, "{} table calls", counts.calls);
    assert!(
        t0.elapsed() >= Duration::from_millis(30),
        "backed off: {:?}",
        t0.elapsed()
    );
}
