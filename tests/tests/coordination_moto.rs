//! Coordinated mode against moto's DynamoDB (the real SDK adapter and protocol): several
//! `Starter`s in one process share one budget; the operator's change reaches them; a missing
//! table or an unreachable endpoint falls back to the static split, and the table is used
//! again once it answers. StartExecution goes to the fake endpoint, which enforces the quota's
//! exact token bucket. Rates are asserted only with generous bounds, on the test's own clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use local_stack::esm::event::sqs_event;
use local_stack::fake_sfn::{FakeSfn, FakeSfnHandle, DEFAULT_STATE_MACHINE_ARN};
use local_stack::moto::{create_coordination_table, free_port, sdk_config_for, Moto, REGION};
use local_stack::sim::{drive, Mapping, SimQueue, DEFAULT_BATCHING_WINDOW};
use serde_json::json;
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::aws::SfnStarter;
use sfn_pacer::start::budget::lease::FALLBACK_RETRY;
use sfn_pacer::start::budget::{Store, Update};
use sfn_pacer::start::pacing::Pacing;
use sfn_pacer::{Config, Starter};

const TABLE: &str = "sfn-pacer-coordination";
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The budget: 60 starts per second, burst 60, told to 3 instances.
fn config(table: &str) -> Config {
    Config::from_lookup(|k| {
        match k {
            "STATE_MACHINE_ARN" => Some(DEFAULT_STATE_MACHINE_ARN),
            "STARTS_PER_SECOND" => Some("60"),
            "STARTS_BURST" => Some("60"),
            "MAX_CONCURRENCY" => Some("3"),
            "MAX_ATTEMPTS" => Some("10"),
            "CALL_TIMEOUT_MS" => Some("2000"),
            "COORDINATION_TABLE" => Some(table),
            _ => None,
        }
        .map(String::from)
    })
    .unwrap()
}

async fn fake_sfn(burst: u64, rate: f64) -> FakeSfnHandle {
    FakeSfn::builder().bucket(burst, rate).seed(3).start().await.unwrap()
}

fn starter(config: &Config, sfn: &aws_config::SdkConfig, store: Arc<dyn Store>, queue: &Arc<SimQueue>) -> Arc<Starter> {
    let client = Arc::new(SfnStarter::new(sfn, CALL_TIMEOUT));
    Arc::new(Starter::coordinated(config.clone(), client, queue.clone(), store))
}

fn batch(queue: &SimQueue, n: usize) -> SqsEvent {
    let ids: Vec<String> = (0..n).map(|i| queue.send(json!({ "i": i }).to_string())).collect();
    let messages = queue.receive(n);
    assert_eq!(messages.len(), ids.len());
    sqs_event(&messages, queue.arn(), REGION)
}

fn deadline_in(seconds: u64) -> u64 {
    sfn_pacer::handler::now_epoch_ms() + seconds * 1000
}

fn shared(starter: &Starter) -> &sfn_pacer::start::budget::lease::SharedPacer {
    match starter.pacing() {
        Pacing::Shared(shared) => shared,
        Pacing::Local(_) => panic!("coordinated mode expected"),
    }
}

fn mapping(max_run: Duration) -> Mapping {
    Mapping {
        batch_size: 20,
        batching_window: DEFAULT_BATCHING_WINDOW,
        function_timeout: Duration::from_secs(30),
        short_deadline: None,
        max_run,
        idle_poll: Duration::from_millis(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_starters_share_one_budget_and_a_lone_one_uses_all_of_it() {
    let moto = Moto::start().await.unwrap();
    let ddb = moto.sdk_config().await;
    create_coordination_table(&ddb, TABLE).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(DynamoStore::new(&ddb, TABLE, CALL_TIMEOUT));
    let fake = fake_sfn(60, 60.0).await;
    let sfn = sdk_config_for(&fake.endpoint()).await;
    let config = config(TABLE);

    // Three busy instances, each told the whole budget (60/s), share it: no throttles.
    let queue = SimQueue::new("shared", 5, Duration::from_secs(30));
    for i in 0..240 {
        queue.send(json!({ "i": i }).to_string());
    }
    let starters: Vec<Arc<Starter>> = (0..3).map(|_| starter(&config, &sfn, store.clone(), &queue)).collect();
    let run = drive(queue.clone(), starters.clone(), mapping(Duration::from_secs(40))).await;
    assert!(run.drained, "{run:?}");
    assert_eq!(fake.execution_count(), 240);
    let stats = fake.stats();
    assert!(
        stats.throttled() * 100 <= stats.start_execution_requests * 2,
        "throttled {} of {} calls",
        stats.throttled(),
        stats.start_execution_requests
    );
    assert_eq!(run.function.fallbacks, 0, "the table answered");
    let calls = run.function.lease_calls;
    assert!(calls > 0 && calls < 240 / 2, "{calls} table calls for 240 starts");
    let item = store.get(&config.quota_key).await.unwrap().expect("the budget item");
    assert_eq!((item.rate_per_second, item.burst), (60.0, 60.0));

    // One instance alone, with work, uses the whole budget, not a third of it: 180 starts
    // take (180 − 60) / 60 = 2 s at the full rate, 8 s at the static split's 20/s.
    let lone_queue = SimQueue::new("lone", 5, Duration::from_secs(30));
    for i in 0..180 {
        lone_queue.send(json!({ "lone": i }).to_string());
    }
    // Let the shared bucket refill first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lone = starter(&config, &sfn, store.clone(), &lone_queue);
    let t0 = Instant::now();
    let run = drive(lone_queue.clone(), vec![lone], mapping(Duration::from_secs(30))).await;
    let elapsed = t0.elapsed();
    assert!(run.drained, "{run:?}");
    assert!(
        elapsed < Duration::from_secs(6),
        "a lone instance took {elapsed:?} for 180 starts"
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_change_reaches_a_running_instance() {
    let moto = Moto::start().await.unwrap();
    let ddb = moto.sdk_config().await;
    create_coordination_table(&ddb, TABLE).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(DynamoStore::new(&ddb, TABLE, CALL_TIMEOUT));
    let fake = fake_sfn(1000, 1000.0).await;
    let sfn = sdk_config_for(&fake.endpoint()).await;
    let config = config(TABLE);
    let queue = SimQueue::new("live", 5, Duration::from_secs(30));
    let starter = starter(&config, &sfn, store.clone(), &queue);
    // The first batch creates the budget at 60/s.
    let outcome = starter.process(batch(&queue, 10), deadline_in(30)).await.unwrap();
    assert_eq!(outcome.report.started, 10);
    // The operator lowers it to 10/s, burst 10 (what `sfn-pacer-quota set` writes).
    let key = &config.quota_key;
    let current = store.get(key).await.unwrap().unwrap();
    let now = sfn_pacer::handler::now_epoch_ms() as f64 / 1000.0;
    let written = store
        .write(key, &current.plan_set_limits(10.0, 10.0, now))
        .await
        .unwrap();
    assert!(
        matches!(written, sfn_pacer::start::budget::Written::Applied(_)),
        "{written:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let outcome = starter.process(batch(&queue, 40), deadline_in(60)).await.unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(outcome.report.started, 40);
    // 40 starts at 10/s with a burst of 10 (less 1 of reserve): about 3 s; at 60/s it is < 1 s.
    assert!(elapsed > Duration::from_secs(2), "still at the old rate: {elapsed:?}");
    assert!((outcome.report.shared_rate_per_second - 10.0).abs() < 1e-9);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_falls_back_to_the_static_split_until_it_exists() {
    let moto = Moto::start().await.unwrap();
    let ddb = moto.sdk_config().await;
    let store: Arc<dyn Store> = Arc::new(DynamoStore::new(&ddb, TABLE, CALL_TIMEOUT));
    let fake = fake_sfn(1000, 1000.0).await;
    let sfn = sdk_config_for(&fake.endpoint()).await;
    let config = config(TABLE);
    let queue = SimQueue::new("fallback", 5, Duration::from_secs(30));
    let starter = starter(&config, &sfn, store.clone(), &queue);

    let outcome = starter.process(batch(&queue, 10), deadline_in(30)).await.unwrap();
    assert_eq!(outcome.report.started, 10, "nothing waits on the table");
    assert_eq!(outcome.report.fallbacks, 10);
    let error = shared(&starter).last_error().unwrap_or_default();
    assert!(error.contains("ResourceNotFound"), "{error}");

    create_coordination_table(&ddb, TABLE).await.unwrap();
    tokio::time::sleep(FALLBACK_RETRY).await;
    let outcome = starter.process(batch(&queue, 10), deadline_in(30)).await.unwrap();
    assert_eq!(outcome.report.started, 10);
    assert_eq!(outcome.report.fallbacks, 0, "back on the shared budget");
    assert!(outcome.report.lease_calls > 0);
    assert!(store.get(&config.quota_key).await.unwrap().is_some());
    fake.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_endpoint_falls_back_within_the_call_timeout() {
    // Nothing listens on this port: every table call fails at once.
    let nowhere = sdk_config_for(&format!("http://127.0.0.1:{}", free_port().unwrap())).await;
    let store: Arc<dyn Store> = Arc::new(DynamoStore::new(&nowhere, TABLE, CALL_TIMEOUT));
    let fake = fake_sfn(1000, 1000.0).await;
    let sfn = sdk_config_for(&fake.endpoint()).await;
    let queue = SimQueue::new("down", 5, Duration::from_secs(30));
    let starter = starter(&config(TABLE), &sfn, store, &queue);
    let t0 = Instant::now();
    let outcome = starter.process(batch(&queue, 5), deadline_in(30)).await.unwrap();
    assert_eq!(outcome.report.started, 5);
    assert_eq!(outcome.report.fallbacks, 5);
    assert!(t0.elapsed() < CALL_TIMEOUT * 2, "{:?}", t0.elapsed());
    assert!(shared(&starter).last_error().is_some());
    fake.shutdown().await;
}

/// The DynamoDB adapter's expressions against moto mirror `BudgetState::apply`, the one
/// definition the in-memory store runs: the same updates give the same results on both.
#[tokio::test]
async fn the_dynamodb_adapter_applies_every_update_as_the_model_does() {
    use sfn_pacer::start::budget::{BudgetState, LeaseAsk, LeasePlan, Written};
    use sfn_pacer::start::memory::MemoryStore;
    let moto = Moto::start().await.unwrap();
    let ddb = moto.sdk_config().await;
    create_coordination_table(&ddb, TABLE).await.unwrap();
    let dynamo = DynamoStore::new(&ddb, TABLE, CALL_TIMEOUT);
    let model = MemoryStore::new();
    let now = 1_800_000_000.0;
    let seed = BudgetState::new(100.0, 50.0);
    let ask = |now: f64, successes: u64, throttled: Option<u64>| LeaseAsk {
        now,
        want: 8,
        latest: f64::INFINITY,
        successes,
        throttled,
        debt: 0,
        spread: 0.01,
    };
    let plan = |state: &BudgetState, ask: LeaseAsk| match state.plan_lease(&ask) {
        LeasePlan::Lease { update, .. } => update,
        other => panic!("no lease at {}: {other:?}", ask.now),
    };
    let lease = |state: &BudgetState, at: f64, successes: u64| plan(state, ask(at, successes, None));
    let mut state = seed.clone();
    let mut steps: Vec<Update> = vec![Update::Create(seed.clone()), Update::Create(seed.clone())];
    // Apply each step on both stores; derive the next step from the model's state.
    let mut results = Vec::new();
    for i in 0..15 {
        let update = match i {
            0 | 1 => steps.remove(0),
            2 => lease(&state, now, 0),        // from now
            3 => lease(&state, now + 0.01, 0), // extend
            4 => state.plan_give_back(state.tat, 3),
            5 => plan(&state, ask(now + 0.02, 0, Some(state.version))), // carries a decrease
            6 => state.plan_set_limits(80.0, 40.0, now + 0.03),
            7 => lease(&state, now + 5.0, 40), // carries successes: raises the factor
            // The plan lock of a reshard, taken; refused while held; the root spread over 3
            // items; the lock, refused for a layout that moved on.
            9 => Update::Plan {
                layout: 0,
                now: now + 7.0,
                until: now + 17.0,
                span: 3,
            },
            10 => Update::Plan {
                layout: 0,
                now: now + 8.0,
                until: now + 18.0,
                span: 3,
            },
            11 => state.plan_reshard(0, 3, 1, now + 9.0, now + 9.0),
            12 => Update::Plan {
                layout: 0,
                now: now + 20.0,
                until: now + 30.0,
                span: 3,
            },
            // A reshard freezes the item: a lease is refused until its rescale.
            13 => Update::Freeze { until: now + 31.0 },
            14 => lease(
                &BudgetState {
                    frozen_until: 0.0,
                    ..state.clone()
                },
                now + 30.5,
                0,
            ),
            _ => lease(
                &BudgetState {
                    version: 1,
                    ..state.clone()
                },
                now + 6.0,
                0,
            ), // stale: refused
        };
        let from_dynamo = dynamo.write("conformance", &update).await.unwrap();
        let from_model = model.write("conformance", &update).await.unwrap();
        assert_eq!(from_dynamo, from_model, "step {i}: {update:?}");
        if let Written::Applied(after) = &from_model {
            state = after.clone();
        }
        results.push(matches!(from_model, Written::Applied(_)));
    }
    assert_eq!(
        results,
        [true, false, true, true, true, true, true, true, false, true, false, true, false, true, false]
    );
    assert_eq!((state.shards, state.layout, state.span, state.leases), (3, 1, 3, 4));
    assert_eq!(dynamo.get("conformance").await.unwrap(), Some(state));
    assert_eq!(dynamo.get("absent").await.unwrap(), None);
}
