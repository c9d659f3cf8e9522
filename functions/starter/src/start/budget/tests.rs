//! The budget's math: leases, give-backs, rate changes and decreases, as pure functions (the
//! lessee's tests are in `lease_tests.rs`).

use super::*;

fn full(rate: f64, burst: f64) -> BudgetState {
    BudgetState::new(rate, burst)
}

/// What a lessee asks at `now` for `want` slots, carrying `successes`.
fn ask(now: f64, want: u64, successes: u64) -> LeaseAsk {
    LeaseAsk {
        now,
        want,
        latest: f64::INFINITY,
        successes,
        throttled: None,
        debt: 0,
        spread: 0.0,
    }
}

#[test]
fn a_full_bucket_leases_from_now_and_releases_the_burst_at_once() {
    let state = full(300.0, 1300.0);
    let now = 1_000.0;
    let LeasePlan::Lease { update, slots, .. } = state.plan_lease(&ask(now, 1_000, 0)) else {
        panic!("a lease")
    };
    // At most 100 ms of the rate per lease.
    assert_eq!(slots, 30);
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    // Booked from now + MAX_SKEW (a lagging clock cannot book in the true past).
    let from = now + rules::MAX_SKEW.as_secs_f64();
    assert!((after.tat - (from + 0.1)).abs() < 1e-9, "{}", after.tat);
    // A full bucket (B = 1300 − 30 reserve = 1270) covers all 30: every one goes now.
    assert!(after
        .release_times(slots, 0, now)
        .iter()
        .all(|t| (*t - now).abs() < 1e-9));
}

#[test]
fn an_empty_bucket_releases_one_slot_every_one_over_r() {
    let mut state = full(100.0, 100.0);
    let now = 50.0;
    state.tat = now + state.tau();
    let LeasePlan::Lease { update, slots, .. } = state.plan_lease(&ask(now, 5, 0)) else {
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
    let times = after.release_times(slots, 0, now);
    for (j, t) in times.iter().enumerate() {
        assert!((t - (now + (j + 1) as f64 / 100.0)).abs() < 2e-4, "slot {j} at {t}");
    }
}

#[test]
fn a_lease_past_the_horizon_waits_and_a_stale_version_is_refused() {
    let mut state = full(100.0, 100.0);
    let now = 10.0;
    state.tat = now + state.tau() + HORIZON_SECONDS;
    let LeasePlan::WaitUntil(at) = state.plan_lease(&ask(now, 1, 0)) else {
        panic!("a wait")
    };
    // It asks again once the next slot is within half the horizon.
    assert!((at - (now + HORIZON_SECONDS / 2.0)).abs() < 1e-9, "{at}");
    let fresh = full(100.0, 100.0);
    let LeasePlan::Lease { update, .. } = fresh.plan_lease(&ask(now, 1, 0)) else {
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
    let LeasePlan::Lease { update, .. } = state.plan_lease(&ask(5.0, 1, 50)) else {
        panic!("a lease")
    };
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    assert!((after.factor - 0.6).abs() < 1e-9, "{}", after.factor);
    assert_eq!(after.version, state.version + 1);
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
    let throttled = |now, want| LeaseAsk {
        throttled: Some(1),
        ..ask(now, want, 0)
    };
    let mut state = full(100.0, 100.0);
    state.tat = now + state.tau() + 1.0; // 100 slots booked beyond empty
                                         // Booked past the horizon: the decrease is written alone (no slot).
    let LeasePlan::Lease { update, slots: 0, .. } = state.plan_lease(&throttled(now, 5)) else {
        panic!("a decrease")
    };
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    assert_eq!(after.factor, DECREASE_FACTOR);
    assert_eq!(after.version, 2);
    assert!((after.level(now) + 100.0).abs() < 0.01, "{}", after.level(now));
    // An idle bucket is emptied (the account's bucket is empty when AWS throttles), and the
    // lease that carries the decrease gets its slots one every 1/r' from now.
    let idle = full(100.0, 100.0);
    let LeasePlan::Lease { update, slots: 5, .. } = idle.plan_lease(&throttled(now, 5)) else {
        panic!("a lease carrying the decrease")
    };
    let Written::Applied(after) = BudgetState::apply(Some(&idle), &update) else {
        panic!("applied")
    };
    assert!((after.level(now) + 5.0).abs() < 0.01, "{}", after.level(now));
    let times = after.release_times(5, 0, now);
    assert!((times[0] - (now + 1.0 / 50.0)).abs() < 2e-4, "{times:?}");
    // The decrease is a compare-and-set: a lease in between refuses it; a later version
    // (someone else decreased) plans no decrease at all.
    let moved = BudgetState {
        tat: idle.tat + 0.5,
        ..idle.clone()
    };
    assert!(matches!(BudgetState::apply(Some(&moved), &update), Written::Refused(_)));
    let decreased = BudgetState { version: 2, ..idle };
    let LeasePlan::Lease {
        update: Update::Lease { factor: None, .. },
        ..
    } = decreased.plan_lease(&throttled(now, 5))
    else {
        panic!("a plain lease")
    };
}

#[test]
fn a_lease_books_the_static_splits_starts_after_its_own_slots() {
    let now = 10.0;
    let state = full(100.0, 100.0);
    let plan = state.plan_lease(&LeaseAsk {
        debt: 20,
        ..ask(now, 5, 0)
    });
    let LeasePlan::Lease {
        update,
        slots: 5,
        repaid: 20,
    } = plan
    else {
        panic!("{plan:?}")
    };
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    let from = now + rules::MAX_SKEW.as_secs_f64();
    assert!(
        (after.tat - (from + 0.25)).abs() < 1e-9,
        "25 slots booked: {}",
        after.tat
    );
    // The lessee's own 5 come first (from a full bucket: now).
    assert!(after.release_times(5, 20, now).iter().all(|t| (*t - now).abs() < 1e-9));
    // Nothing wanted and nothing carried: nothing to write.
    assert_eq!(state.plan_lease(&ask(now, 0, 0)), LeasePlan::Nothing);
}

#[test]
fn a_slot_is_released_no_earlier_than_its_leases_answer() {
    let state = full(100.0, 1.0);
    let now = 10.0;
    let LeasePlan::Lease { update, slots, .. } = state.plan_lease(&ask(now, 10, 0)) else {
        panic!("a lease")
    };
    let Written::Applied(after) = BudgetState::apply(Some(&state), &update) else {
        panic!("applied")
    };
    // τ = 10 ms, booked from now + τ: slot j (from 1) is due at now + j / 100. Answered 50 ms
    // late: the five due by then come at the answer, the rest on time.
    let times = after.release_times(slots, 0, now + 0.05);
    for (j, t) in times.iter().enumerate() {
        let expected = (now + (j + 1) as f64 / 100.0).max(now + 0.05);
        assert!((t - expected).abs() < 2e-4, "slot {j}: {t} vs {expected}");
    }
}

#[test]
fn a_lease_holds_no_slot_released_after_the_callers_latest() {
    let mut state = full(100.0, 100.0);
    let now = 10.0;
    // Empty: slot j comes at now + j × 10 ms.
    state.tat = now + state.tau();
    let plan = state.plan_lease(&LeaseAsk {
        latest: now + 0.05,
        ..ask(now, 30, 0)
    });
    let LeasePlan::Lease { slots, .. } = plan else {
        panic!("{plan:?}")
    };
    assert!((4..=5).contains(&slots), "{slots} slots by the latest");
    let none = state.plan_lease(&LeaseAsk {
        latest: now + 0.005,
        ..ask(now, 30, 0)
    });
    assert_eq!(none, LeasePlan::Nothing, "no slot before the latest: nothing to write");
}
