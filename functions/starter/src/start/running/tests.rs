//! The cap on the in-memory table (conditional writes, all-or-nothing transactions, DynamoDB's
//! per-item write limit) and tokio's paused clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::time::Instant;

use super::cap::{Cap, Taken};
use super::describe::{DescribeError, DescribeExecution, Described};
use super::line::{self, Rate};
use super::release::{Released, StatusChange};
use super::*;
use crate::config::Config;
use crate::start::clock::Clock;
use crate::start::memory::MemoryStore;
use crate::start::pace::Pacer;
use crate::start::pacing::Pacing;
use crate::start::table::StoreError;

const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:orders";
const KEY: &str = "orders";
const T0_MS: u64 = 1_800_000_000_000;
const FAR: Duration = Duration::from_secs(3600);

fn config(cap: u32, more: &[(&str, &str)]) -> Config {
    let cap = cap.to_string();
    let mut pairs = vec![
        ("STATE_MACHINE_ARN", ARN),
        ("COORDINATION_TABLE", "coordination"),
        ("MAX_RUNNING_EXECUTIONS", cap.as_str()),
        ("RUNNING_EXPIRY_SECONDS", "60"),
    ];
    pairs.extend_from_slice(more);
    Config::from_lookup(|k| pairs.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
}

fn cap_on(store: &Arc<MemoryStore>, config: &Config) -> Cap {
    Cap::new(store.clone(), config, Clock::following_runtime(T0_MS as f64 / 1000.0)).unwrap()
}

fn setup(cap: u32) -> (Arc<MemoryStore>, Cap) {
    let store = Arc::new(MemoryStore::new());
    let c = cap_on(&store, &config(cap, &[]));
    (store, c)
}

fn later() -> Instant {
    Instant::now() + FAR
}

async fn take(cap: &Cap, name: &str) -> Taken {
    cap.take(name, 0, later()).await
}

fn held(store: &MemoryStore) -> u64 {
    store.held_holders(KEY).len() as u64
}

/// The slots the shards count, all together.
async fn counted(store: &MemoryStore) -> u64 {
    store.view(KEY).await.unwrap().map_or(0, |v| v.held())
}

/// Writes into `store` the history of a cap of `cap` slots (created if absent) under `key` whose one ended execution
/// ran `busy_ms`: its completion rate is then measured (`C / D̄`).
pub(crate) async fn history(store: &MemoryStore, key: &str, cap: u64, busy_ms: u64) {
    let holder = Holder {
        scope: "history".into(),
        name: "ended".into(),
        shard: 0,
        state: HolderState::Held,
        attempt: 0,
        execution_arn: "arn:aws:states:us-east-1:123456789012:execution:history:ended".into(),
        taken_at_ms: 0,
        check_at_s: 0,
        express: false,
        released_at_ms: None,
    };
    let release = Write::Release {
        scope: "history".into(),
        name: "ended".into(),
        shard: 0,
        attempt: 0,
        busy_ms,
        released_at_ms: busy_ms,
    };
    // The cap may exist already.
    store.write(key, &seed(cap)).await.unwrap();
    for write in [
        Write::Take {
            holder,
            above_cap: false,
        },
        release,
    ] {
        assert!(matches!(store.write(key, &write).await.unwrap(), Written::Applied(_)));
    }
}

/// A status change event of the execution `name` of `state_machine_arn`, as EventBridge sends it
/// (started at `T0_MS`, stopped 5 s later unless RUNNING).
pub(crate) fn status_change(
    state_machine_arn: &str,
    name: &str,
    status: &str,
    redrive_count: u32,
) -> serde_json::Value {
    json!({
        "version": "0",
        "source": "aws.states",
        "detail-type": "Step Functions Execution Status Change",
        "resources": [execution_arn(state_machine_arn, name)],
        "detail": {
            "executionArn": execution_arn(state_machine_arn, name),
            "stateMachineArn": state_machine_arn,
            "name": name,
            "status": status,
            "startDate": T0_MS,
            "stopDate": if status == "RUNNING" { serde_json::Value::Null } else { json!(T0_MS + 5_000) },
            "redriveCount": redrive_count,
        }
    })
}

fn event(name: &str, status: &str, redrive_count: u32) -> StatusChange {
    StatusChange::from_event(&status_change(ARN, name, status, redrive_count)).unwrap()
}

/// Step Functions as DescribeExecution sees it: executions by ARN (absent: does not exist).
#[derive(Default)]
pub(crate) struct FakeDescriber {
    executions: Mutex<HashMap<String, Described>>,
    calls: Mutex<u64>,
}

impl FakeDescriber {
    fn set(&self, name: &str, described: Described) {
        self.set_arn(&execution_arn(ARN, name), described);
    }
    pub(crate) fn set_arn(&self, execution_arn: &str, described: Described) {
        self.executions
            .lock()
            .unwrap()
            .insert(execution_arn.to_string(), described);
    }
    pub(crate) fn calls(&self) -> u64 {
        *self.calls.lock().unwrap()
    }
}

#[async_trait]
impl DescribeExecution for FakeDescriber {
    async fn describe_execution(&self, execution_arn: &str) -> Result<Described, DescribeError> {
        *self.calls.lock().unwrap() += 1;
        Ok(self
            .executions
            .lock()
            .unwrap()
            .get(execution_arn)
            .copied()
            .unwrap_or(Described::NotFound))
    }
}

fn pacing() -> Pacing {
    Pacing::Local(Pacer::new(100.0, 100.0, Instant::now()))
}

#[test]
fn shards_grow_with_the_cap_and_shares_sum_to_it() {
    assert_eq!(
        [1, 16, 17, 33, 300, 1024, 1_000_000].map(shards_for),
        [1, 1, 2, 3, 19, 64, 64]
    );
    assert_eq!(shares(10, 3), vec![4, 3, 3]);
    assert_eq!(shares(2, 4), vec![1, 1, 0, 0]);
    assert_eq!(shares(1_000_000, 64).iter().sum::<u64>(), 1_000_000);
    assert_eq!(
        execution_arn("arn:aws:states:us-east-1:1:stateMachine:orders:live", "n-1"),
        "arn:aws:states:us-east-1:1:execution:orders:n-1",
        "an alias's executions are the state machine's"
    );
    assert!((0..1000).all(|i| due_partition(&format!("n-{i}")) < DUE_PARTITIONS));
}

#[tokio::test(start_paused = true)]
async fn taking_and_freeing_are_idempotent() {
    let (store, cap) = setup(3);
    let Taken::Now(slot) = take(&cap, "a").await else {
        panic!("a slot")
    };
    assert_eq!(slot.name, "a");
    assert!(
        matches!(take(&cap, "a").await, Taken::Held { .. }),
        "a redelivery holds the same slot"
    );
    assert_eq!((held(&store), counted(&store).await), (1, 1));
    let latest = later();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        cap.on_status_change(&event("a", "SUCCEEDED", 0), latest).await.unwrap(),
        Released::Freed
    );
    assert_eq!(
        cap.on_status_change(&event("a", "SUCCEEDED", 0), latest).await.unwrap(),
        Released::Duplicate,
        "a duplicate event frees nothing"
    );
    assert_eq!((held(&store), counted(&store).await), (0, 0));
    assert_eq!(
        take(&cap, "a").await,
        Taken::Ended { attempt: 0 },
        "an ended execution takes no slot again"
    );
    assert_eq!(counted(&store).await, 0);
    let view = store.view(KEY).await.unwrap().unwrap();
    assert_eq!(view.freed(), (1, 5_000), "one release, held 5 s (take to release)");
    // The tombstone lives for the redrive window, and is out of the index.
    let tombstone = store
        .running_items(KEY)
        .into_values()
        .find_map(|i| match i {
            Item::Holder(h) => Some(h),
            _ => None,
        })
        .unwrap();
    assert_eq!(tombstone.state, HolderState::Released);
    assert_eq!(
        tombstone.expires_at_s(),
        Some(T0_MS / 1000 + 5 + TOMBSTONE_TTL.as_secs()),
        "released 5 s in"
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_for_no_slot_or_a_first_run_frees_nothing() {
    let (store, cap) = setup(3);
    let latest = later();
    assert_eq!(
        cap.on_status_change(&event("never-capped", "FAILED", 0), latest)
            .await
            .unwrap(),
        Released::Duplicate
    );
    assert!(matches!(take(&cap, "a").await, Taken::Now(_)));
    assert_eq!(
        cap.on_status_change(&event("a", "RUNNING", 0), latest).await.unwrap(),
        Released::Ignored
    );
    assert_eq!(counted(&store).await, 1);
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_cap_is_ever_held_by_concurrent_takers() {
    let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(2), Duration::from_millis(8)));
    let config = config(40, &[]);
    // Four instances, each with its own view, taking at once.
    let caps: Vec<Arc<Cap>> = (0..4).map(|_| Arc::new(cap_on(&store, &config))).collect();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let cap = caps[i % 4].clone();
        tasks.push(tokio::spawn(
            async move { cap.take(&format!("e-{i}"), 0, later()).await },
        ));
    }
    let mut taken = 0;
    for t in tasks {
        if let Taken::Now(_) = t.await.unwrap() {
            taken += 1;
        }
    }
    assert!(taken <= 40, "{taken} taken");
    assert_eq!(counted(&store).await, taken);
    assert_eq!(held(&store), taken, "every counted slot has its holder");
    // The instances' takes spread over the shards; what refusals left free is taken next.
    for i in 100..200 {
        let _ = caps[i % 4].take(&format!("e-{i}"), 0, later()).await;
        tokio::time::advance(super::cap::REFRESH).await;
    }
    assert_eq!(counted(&store).await, 40, "the cap is used whole");
    assert_eq!(held(&store), 40);
}

#[tokio::test(start_paused = true)]
async fn a_full_cap_refuses_without_a_call_until_its_view_is_stale() {
    let (store, cap) = setup(2);
    assert!(matches!(take(&cap, "a").await, Taken::Now(_)));
    assert!(matches!(take(&cap, "b").await, Taken::Now(_)));
    let calls = store.calls();
    assert_eq!(take(&cap, "c").await, Taken::Full { held: 2, cap: 2 });
    assert_eq!(store.calls(), calls, "the view says full: no call");
    tokio::time::advance(super::cap::REFRESH).await;
    assert!(matches!(take(&cap, "c").await, Taken::Full { .. }));
    assert_eq!(store.calls(), calls + 1, "a stale view is read once");
}

/// What the next writes through a [`Scripted`] store come to.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// Applied, and the answer lost.
    Lost,
    /// Throttled, not applied.
    Throttled,
}

/// The in-memory table, with scripted failures of the next writes.
struct Scripted {
    inner: Arc<MemoryStore>,
    next: Mutex<Vec<Next>>,
}

#[async_trait]
impl RunningStore for Scripted {
    async fn write(&self, key: &str, write: &Write) -> Result<Written, StoreError> {
        let next = self.next.lock().unwrap().pop();
        match next {
            None => self.inner.write(key, write).await,
            Some(Next::Throttled) => Err(StoreError::throttled("ThrottlingException")),
            Some(Next::Lost) => {
                self.inner.write(key, write).await?;
                Err(StoreError::unknown("connection reset"))
            }
        }
    }
    async fn view(&self, key: &str) -> Result<Option<CapView>, StoreError> {
        self.inner.view(key).await
    }
    async fn holder(&self, key: &str, scope: &str, name: &str) -> Result<Option<Holder>, StoreError> {
        self.inner.holder(key, scope, name).await
    }
    async fn due(&self, key: &str, now_s: u64, limit: usize) -> Result<Vec<Holder>, StoreError> {
        self.inner.due(key, now_s, limit).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_take_whose_answer_is_lost_or_throttled_tries_again_and_finds_its_own_slot() {
    let store = Arc::new(MemoryStore::new());
    let scripted = Arc::new(Scripted {
        inner: store.clone(),
        next: Mutex::new(vec![]),
    });
    let cap = Cap::new(
        scripted.clone(),
        &config(5, &[]),
        Clock::following_runtime(T0_MS as f64 / 1000.0),
    )
    .unwrap();
    let script = |next: Vec<Next>| *scripted.next.lock().unwrap() = next;
    assert!(matches!(take(&cap, "warm").await, Taken::Now(_)), "the view is read");
    // The first write is applied and its answer lost: the second finds the holder it wrote.
    script(vec![Next::Lost]);
    let Taken::Now(slot) = take(&cap, "a").await else {
        panic!("a lost answer is not a failure of the take")
    };
    let holder = store.holder(KEY, "orders", "a").await.unwrap().unwrap();
    assert_eq!((holder.shard, holder.taken_at_ms), (slot.shard, slot.taken_at_ms));
    assert_eq!((held(&store), counted(&store).await), (2, 2), "one slot for a, not two");
    // Throttled twice, then through.
    script(vec![Next::Throttled, Next::Throttled]);
    assert!(matches!(take(&cap, "b").await, Taken::Now(_)));
    assert_eq!((held(&store), counted(&store).await), (3, 3));
    // Throttled at every try: a failure, after TAKE_TRIES writes, nothing held.
    script(vec![Next::Throttled; super::cap::TAKE_TRIES + 1]);
    assert!(
        matches!(take(&cap, "c").await, Taken::Failed(e) if e.kind == crate::start::table::StoreErrorKind::Throttled)
    );
    assert_eq!(scripted.next.lock().unwrap().len(), 1, "bounded");
    assert_eq!(held(&store), 3);
    // An unreachable table: a failure after a bounded number of calls.
    script(vec![]);
    store.set_failure(Some("connection refused"));
    let calls = store.calls();
    assert!(matches!(take(&cap, "d").await, Taken::Failed(_)));
    let made = store.calls() - calls;
    assert!(made <= 2 * super::cap::TAKE_TRIES as u64, "{made}");
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_the_take_and_the_start_is_reclaimed_after_the_expiry() {
    let (store, cap) = setup(2);
    let describer = FakeDescriber::default();
    assert!(matches!(take(&cap, "crashed").await, Taken::Now(_)));
    // Nothing is due before the expiry (60 s).
    let sweep = cap.sweep(&describer, &pacing(), 10, later()).await;
    assert_eq!((sweep.checked, describer.calls()), (0, 0));
    tokio::time::advance(Duration::from_secs(61)).await;
    let sweep = cap.sweep(&describer, &pacing(), 10, later()).await;
    assert_eq!(
        (sweep.checked, sweep.described, sweep.reclaimed),
        (1, 1, 1),
        "ExecutionDoesNotExist after the grace: freed"
    );
    assert_eq!((held(&store), counted(&store).await), (0, 0));
    // Given back, not ended: the message, redelivered, takes a slot again and is counted (a
    // tombstone would let it start uncounted, over the cap).
    assert!(matches!(take(&cap, "crashed").await, Taken::Now(_)));
    assert_eq!((held(&store), counted(&store).await), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_slot_whose_execution_does_not_exist_yet_waits_for_the_grace() {
    let store = Arc::new(MemoryStore::new());
    let cap = cap_on(&store, &config(2, &[("RUNNING_EXPIRY_SECONDS", "5")]));
    let describer = FakeDescriber::default();
    assert!(matches!(take(&cap, "slow-start").await, Taken::Now(_)));
    tokio::time::advance(Duration::from_secs(6)).await;
    let sweep = cap.sweep(&describer, &pacing(), 10, later()).await;
    assert_eq!(
        (sweep.reclaimed, sweep.extended),
        (0, 1),
        "younger than the grace: kept"
    );
    let holder = &store.held_holders(KEY)[0];
    assert_eq!(holder.check_at_s, T0_MS / 1000 + reclaim::ORPHAN_GRACE.as_secs());
    tokio::time::advance(reclaim::ORPHAN_GRACE).await;
    let sweep = cap.sweep(&describer, &pacing(), 10, later()).await;
    assert_eq!(sweep.reclaimed, 1);
}

#[tokio::test(start_paused = true)]
async fn an_expired_slot_that_still_runs_is_checked_at_doubling_intervals_then_reclaimed() {
    let (store, cap) = setup(2);
    let describer = FakeDescriber::default();
    assert!(matches!(take(&cap, "long").await, Taken::Now(_)));
    describer.set("long", Described::Running { redrive_count: 0 });
    let mut checks = Vec::new();
    for _ in 0..4 {
        let check_at = store.held_holders(KEY)[0].check_at_s;
        checks.push(check_at - T0_MS / 1000);
        let now_s = cap.clock().now_ms() / 1000;
        tokio::time::advance(Duration::from_secs(check_at.saturating_sub(now_s) + 1)).await;
        let sweep = cap.sweep(&describer, &pacing(), 10, later()).await;
        assert_eq!(sweep.extended, 1);
    }
    // Checked after 60 s, then after its age again: 61 + 61, 123 + 123, ...
    assert_eq!(checks, [60, 122, 246, 494]);
    // Its end event was lost: the next check frees it.
    describer.set(
        "long",
        Described::Ended {
            redrive_count: 0,
            stop_ms: Some(T0_MS + 400_000),
        },
    );
    tokio::time::advance(Duration::from_secs(1_000)).await;
    let sweep = cap.sweep(&describer, &pacing(), 10, later()).await;
    assert_eq!(sweep.reclaimed, 1);
    assert_eq!(counted(&store).await, 0);
    let held_ms = cap.clock().now_ms() - T0_MS;
    assert_eq!(
        store.view(KEY).await.unwrap().unwrap().freed(),
        (1, held_ms),
        "held until the reclaim, not only while it ran"
    );
    // Its late event frees nothing.
    assert_eq!(
        cap.on_status_change(&event("long", "SUCCEEDED", 0), later())
            .await
            .unwrap(),
        Released::Duplicate
    );
}

#[tokio::test(start_paused = true)]
async fn express_slots_expire_without_describe() {
    let store = Arc::new(MemoryStore::new());
    let cap = cap_on(
        &store,
        &config(2, &[("WORKFLOW_TYPE", "express"), ("RUNNING_EXPIRY_SECONDS", "300")]),
    );
    let describer = FakeDescriber::default();
    assert!(matches!(take(&cap, "x").await, Taken::Now(_)));
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(cap.sweep(&describer, &pacing(), 10, later()).await.reclaimed, 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    let sweep = cap.sweep(&describer, &pacing(), 10, later()).await;
    assert_eq!((sweep.reclaimed, describer.calls()), (1, 0), "expired, not described");
    assert_eq!(counted(&store).await, 0);
    // A redelivered Express message is at-least-once: it counts a new run of the name.
    assert_eq!(take(&cap, "x").await, Taken::Ended { attempt: 0 });
    assert!(matches!(cap.take("x", 1, later()).await, Taken::Now(_)));
    assert_eq!(counted(&store).await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_redriven_execution_is_counted_again_even_above_the_cap() {
    let (store, cap) = setup(1);
    let latest = later();
    assert!(matches!(take(&cap, "r").await, Taken::Now(_)));
    assert_eq!(
        cap.on_status_change(&event("r", "FAILED", 0), latest).await.unwrap(),
        Released::Freed
    );
    tokio::time::advance(super::cap::REFRESH).await;
    assert!(matches!(take(&cap, "other").await, Taken::Now(_)));
    // Redriven while the cap is full: what runs is counted.
    assert_eq!(
        cap.on_status_change(&event("r", "RUNNING", 1), latest).await.unwrap(),
        Released::Retaken
    );
    assert_eq!(
        cap.on_status_change(&event("r", "RUNNING", 1), latest).await.unwrap(),
        Released::Duplicate
    );
    assert_eq!(counted(&store).await, 2, "one above the cap of 1");
    tokio::time::advance(super::cap::REFRESH).await;
    assert!(matches!(take(&cap, "new").await, Taken::Full { .. }), "new starts wait");
    // A late event of the first run frees nothing; the redriven run's end frees its slot.
    assert_eq!(
        cap.on_status_change(&event("r", "FAILED", 0), latest).await.unwrap(),
        Released::Duplicate
    );
    assert_eq!(
        cap.on_status_change(&event("r", "SUCCEEDED", 1), latest).await.unwrap(),
        Released::Freed
    );
    assert_eq!(counted(&store).await, 1);
    // A redrive whose earlier end event was lost moves the held slot to the new run.
    assert_eq!(
        cap.on_status_change(&event("other", "RUNNING", 1), latest)
            .await
            .unwrap(),
        Released::Retaken
    );
    assert_eq!(counted(&store).await, 1);
    assert_eq!(store.held_holders(KEY)[0].attempt, 1);
}

#[tokio::test(start_paused = true)]
async fn lowering_the_cap_below_the_slots_held_stops_new_starts_until_enough_end() {
    let (store, cap) = setup(10);
    for i in 0..10 {
        assert!(matches!(take(&cap, &format!("e-{i}")).await, Taken::Now(_)));
    }
    let changed = change_cap(store.as_ref(), KEY, 4).await.unwrap();
    assert!(changed.settings.rebalance, "10 held over a cap of 4: frozen");
    // Nothing is killed: every execution keeps its slot.
    assert_eq!((held(&store), counted(&store).await), (10, 10));
    let latest = later();
    for i in 0..7 {
        tokio::time::advance(super::cap::REFRESH).await;
        assert!(
            matches!(take(&cap, &format!("new-{i}")).await, Taken::Full { .. }),
            "{} held",
            10 - i
        );
        cap.on_status_change(&event(&format!("e-{i}"), "SUCCEEDED", 0), latest)
            .await
            .unwrap();
    }
    // 3 held under a cap of 4: the next take rebalances the shards and takes the one free slot.
    tokio::time::advance(super::cap::REFRESH).await;
    assert!(matches!(take(&cap, "new-a").await, Taken::Now(_)));
    assert!(matches!(take(&cap, "new-b").await, Taken::Full { held: 4, cap: 4 }));
    let view = store.view(KEY).await.unwrap().unwrap();
    assert!(!view.settings.rebalance);
    assert_eq!(view.shards.iter().map(|s| s.cap).sum::<u64>(), 4);
}

#[tokio::test(start_paused = true)]
async fn raising_the_cap_adds_shards_and_every_slot_can_be_taken() {
    let (store, cap) = setup(10);
    for i in 0..10 {
        assert!(matches!(take(&cap, &format!("e-{i}")).await, Taken::Now(_)));
    }
    let settings = store.view(KEY).await.unwrap().unwrap().settings;
    let changed = change_cap(store.as_ref(), KEY, 100).await.unwrap();
    assert!(!changed.settings.rebalance, "10 held fit 100: rebalanced at once");
    assert_eq!(changed.room(), 90);
    tokio::time::advance(super::cap::REFRESH).await;
    let mut taken = 10;
    for i in 10..200 {
        if let Taken::Now(_) = take(&cap, &format!("e-{i}")).await {
            taken += 1;
        }
    }
    assert_eq!(taken, 100);
    let view = store.view(KEY).await.unwrap().unwrap();
    assert_eq!((view.settings.shards, view.held()), (shards_for(100), 100));
    // A stale change (an old version) is refused.
    assert!(matches!(
        store.write(KEY, &set_cap(&settings, 5)).await.unwrap(),
        Written::Refused(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_change_creates_a_cap_that_does_not_exist_yet() {
    let store = MemoryStore::new();
    let view = change_cap(&store, "new", 50).await.unwrap();
    assert_eq!((view.settings.cap, view.settings.shards, view.room()), (50, 4, 50));
}

#[tokio::test(start_paused = true)]
async fn a_cap_at_the_quotas_full_rate_stays_under_half_an_items_write_limit() {
    // 300 starts and 300 ends a second for 10 s: with a cap of 300 (executions of about a second,
    // 19 shards), and of 33 (the smallest cap 300 starts/s stay under half the limit with: 3
    // shards, executions of about 0.1 s).
    for cap_size in [300u32, 33] {
        let (store, cap) = setup(cap_size);
        let latest = later();
        let mut running = std::collections::VecDeque::new();
        let mut started = 0;
        for n in 0..3_000 {
            tokio::time::advance(Duration::from_micros(3_333)).await;
            if let Taken::Now(slot) = take(&cap, &format!("e-{n}")).await {
                running.push_back(slot.name);
                started += 1;
            }
            if running.len() as u32 >= cap_size - 3 {
                let name = running.pop_front().unwrap();
                cap.on_status_change(&event(&name, "SUCCEEDED", 0), latest)
                    .await
                    .unwrap();
            }
        }
        assert!(started >= 2_900, "{started} of 3,000 started");
        assert_eq!(store.injected().get("item-throttled"), None);
        let (item, units) = store.busiest_item().unwrap();
        assert!(
            units <= 500,
            "cap {cap_size}: {item} took {units} write units in a second"
        );
    }
}

#[test]
fn the_waiting_line_gives_due_times_one_completion_apart() {
    let rate = 2.0; // slots per second
    let shape = line::plan(None, 10_000, 3, rate);
    assert_eq!(
        shape,
        LineShape::FromNow {
            now_ms: 10_000,
            tat_ms: 11_500
        }
    );
    assert_eq!(
        line::due_times(Line { tat_ms: 11_500 }, 3, rate),
        [10_500, 11_000, 11_500]
    );
    // The next invocation's messages join the back.
    assert_eq!(
        line::plan(Some(Line { tat_ms: 11_500 }), 10_200, 2, rate),
        LineShape::Extend {
            now_ms: 10_200,
            delta_ms: 1_000
        }
    );
    assert_eq!(line::due_times(Line { tat_ms: 12_500 }, 2, rate), [12_000, 12_500]);
    // Before any execution ended: probes, doubling, at most the expiry.
    let expiry = Duration::from_secs(300);
    assert_eq!(line::probe_wait(1, expiry, 0.5), line::PROBE_WAIT);
    assert_eq!(line::probe_wait(3, expiry, 0.5), line::PROBE_WAIT * 4);
    assert_eq!(line::probe_wait(9, expiry, 0.5), expiry);
    assert_eq!(line::probe_wait(1, expiry, 0.0), line::PROBE_WAIT.mul_f64(0.75));
    // Fresh messages try while the line is empty, or when more is free than it will take soon (at
    // 2 slots/s, 1), or than the line's slack (2 % of a cap of 1,000 at 40 slots/s: 20).
    assert!(line::admits_fresh(None, 0, 10_000, rate, 100));
    assert!(line::admits_fresh(Some(Line { tat_ms: 9_000 }), 0, 10_000, rate, 100));
    assert!(!line::admits_fresh(Some(Line { tat_ms: 12_000 }), 1, 10_000, rate, 100));
    assert!(line::admits_fresh(Some(Line { tat_ms: 12_000 }), 2, 10_000, rate, 100));
    assert!(!line::admits_fresh(
        Some(Line { tat_ms: 12_000 }),
        20,
        10_000,
        40.0,
        1_000
    ));
    assert!(line::admits_fresh(
        Some(Line { tat_ms: 12_000 }),
        21,
        10_000,
        40.0,
        1_000
    ));
    assert!(
        !line::admits_fresh(Some(Line { tat_ms: 12_000 }), 2, 10_000, 40.0, 100),
        "slack 2 < 20"
    );
    assert!(line::admits_fresh(Some(Line { tat_ms: 12_000 }), 3, 10_000, 40.0, 100));
}

#[tokio::test(start_paused = true)]
async fn invocations_join_one_shared_line_with_one_write_each() {
    let store = Arc::new(MemoryStore::new());
    let config = config(20, &[]);
    let a = cap_on(&store, &config);
    a.read(later()).await.unwrap();
    assert!(!a.measured(), "no execution has ended: no line");
    // One execution ran 60 s: λ̂ = C / D̄ = 20 / 60 s; the line runs at LINE_PACE of it, a message
    // every 3 s / LINE_PACE.
    history(&store, KEY, 20, 60_000).await;
    let b = cap_on(&store, &config);
    for i in 0..20 {
        assert!(matches!(take(&a, &format!("e-{i}")).await, Taken::Now(_)));
    }
    a.read(later()).await.unwrap();
    b.read(later()).await.unwrap();
    assert!(a.measured() && b.measured());
    assert!(
        b.admits_fresh(),
        "the line is empty: fresh messages try (and find the cap full)"
    );
    assert!((a.rate_per_second() - 20.0 / 60.0).abs() < 1e-9);
    let calls = store.calls();
    let first = a.join_line(3, later()).await;
    assert_eq!(store.calls(), calls + 1, "one write for the invocation");
    let pace = 20.0 / 60.0 * line::LINE_PACE;
    let nth = |i: usize| T0_MS + line::span_ms(i, pace);
    assert_eq!(first, [nth(1), nth(2), nth(3)]);
    // The other instance's view of the line is stale: its write is refused, then joins the back.
    let second = b.join_line(2, later()).await;
    assert_eq!(
        second,
        [nth(3) + line::span_ms(1, pace), nth(3) + line::span_ms(2, pace)]
    );
    assert!(!b.admits_fresh(), "the line holds messages: fresh ones join the back");
}

#[test]
fn the_completion_rate_follows_recent_durations() {
    let view = |freed: u64, busy_ms: u64| CapView {
        settings: Settings {
            cap: 100,
            shards: 1,
            version: 1,
            rebalance: false,
        },
        shards: vec![Shard {
            held: 100,
            cap: 100,
            freed,
            busy_ms,
        }],
        line: None,
    };
    let expiry = Duration::from_secs(300);
    let mut rate = Rate::default();
    assert_eq!(
        rate.per_second(100, expiry),
        100.0 / 300.0,
        "no release yet: C / expiry"
    );
    rate.record(0, &view(10, 100_000));
    assert_eq!(rate.per_second(100, expiry), 10.0, "every release so far: 10 s each");
    // Recent executions take 2 s: the window's mean wins.
    rate.record(20_000, &view(1_010, 2_100_000));
    assert_eq!(rate.per_second(100, expiry), 50.0);
}
