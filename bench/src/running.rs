//! The cap on running executions (`MAX_RUNNING_EXECUTIONS`, issue 16): throughput against
//! Little's law's bound C / D̄, running-count violations, what a message costs while the cap is
//! saturated, the busiest item's writes, and the time to reclaim a slot whose event was lost.
//!
//! Each run drives K starters and the release function (the real handler and dispatcher, in
//! process) against the in-memory coordination table, the in-memory queue and executions that
//! take time (`local_stack::executions`), on tokio's paused clock, so that ten-minute executions
//! take simulated time only. A producer feeds 1.1 × C / D̄ messages per second (the cap binds;
//! the quota's bucket still applies), each ended execution's status change reaches the release
//! function as EventBridge delivers it, and a schedule runs the reclaim every minute.
//!
//! What simulated time leaves out: CPU time (the handler's own work takes none, so the billed
//! Lambda milliseconds are its waits: table latency, pacing, the line), StartExecution's latency,
//! and the scheduled sweeps' invocations (one a minute, not per message).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use local_stack::esm::gather::GatherConfig;
use local_stack::esm::in_process::InProcess;
use local_stack::esm::runner::{self as esm, EsmConfig};
use local_stack::executions::{schedule, Delivered, Durations, EventBridge, EventFaults, Executions};
use local_stack::sim::{DlqEntry, SimQueue, EMPTY_RECEIVES};
use serde_json::{json, Value};
use sfn_pacer::start::clock::Clock;
use sfn_pacer::start::memory::{MemoryStore, TableFaults};
use sfn_pacer::start::running::{HolderState, Item};
use sfn_pacer::Starter;
use tokio::time::Instant;

use crate::common::{body, config, BenchError, Timed};
use crate::report::{opt, pass};
use crate::stats::percentile;

/// The targets (issue 16).
pub mod targets {
    /// Steady throughput against min(C / D̄, the quota's refill).
    pub const THROUGHPUT: f64 = 0.95;
    /// Receives per message started while the cap is saturated, on average.
    pub const RECEIVES: f64 = 3.0;
    /// The busiest item's write units in one second, against DynamoDB's 1,000.
    pub const BUSIEST_ITEM_SHARE: f64 = 0.5;
}

const STATE_MACHINE_ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:bench-running";
const KEY: &str = "bench-running";
/// The template's defaults: 10 instances, BatchSize 10, function timeout 60 s, visibility 660 s,
/// maxReceiveCount 10. The batching window is 0 (a second of window is a second a freed slot may
/// wait for its message).
const INSTANCES: usize = 10;
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);
const VISIBILITY: Duration = Duration::from_secs(660);
const MAX_RECEIVE_COUNT: u32 = 10;
/// The producer feeds this many times the bound: the cap binds.
const FEED: f64 = 1.1;
/// Standard's quota in the large regions.
const QUOTA: (u64, f64) = (1300, 300.0);

/// One run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What it shows.
    pub title: &'static str,
    /// The cap C.
    pub cap: u64,
    /// How long executions run.
    pub durations: Durations,
    /// Their mean D̄.
    pub mean: Duration,
    /// Messages fed.
    pub messages: u64,
    /// The table's latency and faults.
    pub table: TableFaults,
    /// EventBridge's.
    pub events: EventFaults,
}

/// The table of the other sections (5 – 10 ms a call), faultless.
fn table() -> TableFaults {
    TableFaults {
        latency_min: Duration::from_millis(5),
        latency_max: Duration::from_millis(10),
        ..TableFaults::default()
    }
}

/// The same with the faults of a real table: a slow tail, 500s, lost answers, throttles.
fn faulty_table() -> TableFaults {
    TableFaults {
        slow_probability: 0.01,
        slow_delay: Duration::from_millis(2_500),
        error_500_probability: 0.005,
        lost_answer_probability: 0.005,
        throttle_probability: 0.01,
        ..table()
    }
}

/// The runs: cap and duration, and how many messages (each run feeds about 10 cycles: C × 10).
pub fn plans() -> Vec<Plan> {
    let s = Duration::from_secs;
    let plan = |title, cap: u64, durations: Durations, mean: Duration, cycles: u64| Plan {
        title,
        cap,
        durations,
        mean,
        messages: cap * cycles,
        table: table(),
        events: EventFaults::default(),
    };
    vec![
        plan("C 100, D 10 s", 100, Durations::Fixed(s(10)), s(10), 20),
        plan("C 3000, D 10 s (300 starts/s)", 3000, Durations::Fixed(s(10)), s(10), 8),
        plan("C 2850, D 10 s (285 starts/s)", 2850, Durations::Fixed(s(10)), s(10), 8),
        plan("C 100, D 10 min", 100, Durations::Fixed(s(600)), s(600), 8),
        plan("C 1000, D 10 min", 1000, Durations::Fixed(s(600)), s(600), 6),
        plan("C 100, D 1 – 19 s", 100, Durations::Uniform(s(1), s(19)), s(10), 20),
        Plan {
            table: faulty_table(),
            ..plan("C 100, D 10 s, faulty table", 100, Durations::Fixed(s(10)), s(10), 20)
        },
        Plan {
            events: EventFaults {
                drop: 0.03,
                duplicate: 0.03,
                late: s(1),
            },
            ..plan(
                "C 100, D 60 s, 3 % of events lost",
                100,
                Durations::Fixed(s(60)),
                s(60),
                10,
            )
        },
    ]
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct CapRun {
    /// The plan.
    pub plan: Plan,
    /// Executions started, and messages fed.
    pub started: u64,
    /// The steady window, seconds since the first start.
    pub window: (f64, f64),
    /// Starts per second in it.
    pub throughput: f64,
    /// min(C / D̄, the quota's refill): the most that can start per second.
    pub bound: f64,
    /// The most executions that ran at once (from their own times).
    pub peak: usize,
    /// Receives of the messages started in the window: mean, p99, largest (re-sends included).
    pub receives: (f64, f64, f64),
    /// The same over every message (the first cycle, before any execution ended, included).
    pub receives_all: (f64, f64),
    /// SQS requests per message (the mapping's and the function's; the pollers' empty receives
    /// apart: they poll whether or not messages wait).
    pub sqs_requests: f64,
    /// Write units per message: the cap's items, the budget's.
    pub write_units: (f64, f64),
    /// Table calls per message.
    pub table_calls: f64,
    /// Billed Lambda ms per message: the starters, the release function.
    pub lambda_ms: (f64, f64),
    /// The busiest item and its most write units in one second.
    pub busiest: (String, u64),
    /// Slots freed later than their event could have come (reclaimed): count, p50 and largest
    /// time from the execution's end, seconds.
    pub reclaimed: (u64, Option<f64>, Option<f64>),
    /// What EventBridge did.
    pub events: Delivered,
    /// Slots held at the end, and messages in the DLQ.
    pub held_at_end: u64,
    /// Messages in the DLQ.
    pub dead: u64,
    /// Simulated and real seconds.
    pub seconds: (f64, f64),
}

/// Runs `plan` on a paused clock of its own.
pub fn run(plan: &Plan, seed: u64) -> Result<CapRun, BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let began = std::time::Instant::now();
    let mut run = runtime.block_on(run_on(plan, seed))?;
    run.seconds.1 = began.elapsed().as_secs_f64();
    Ok(run)
}

async fn run_on(plan: &Plan, seed: u64) -> Result<CapRun, BenchError> {
    let clock = Clock::following_runtime(sfn_pacer::handler::now_epoch_ms() as f64 / 1e3);
    let t0 = Instant::now();
    let store = Arc::new(MemoryStore::new().with_faults(plan.table).with_seed(seed));
    let queue = SimQueue::new("bench-running", MAX_RECEIVE_COUNT, VISIBILITY);
    let executions =
        Arc::new(Executions::new(STATE_MACHINE_ARN, plan.durations, clock.clone(), seed).with_quota(QUOTA.0, QUOTA.1));
    let env = [
        ("STATE_MACHINE_ARN", STATE_MACHINE_ARN.to_string()),
        ("COORDINATION_TABLE", "bench-coordination".to_string()),
        ("MAX_RUNNING_EXECUTIONS", plan.cap.to_string()),
        ("MAX_RECEIVE_COUNT", MAX_RECEIVE_COUNT.to_string()),
        ("STARTS_PER_SECOND", QUOTA.1.to_string()),
        ("STARTS_BURST", QUOTA.0.to_string()),
        ("MAX_CONCURRENCY", INSTANCES.to_string()),
    ];
    let function = || -> Result<Arc<Starter>, BenchError> {
        Ok(Arc::new(
            Starter::coordinated(config(&env)?, executions.clone(), queue.clone(), store.clone())
                .with_cap(store.clone(), executions.clone(), store.clone())
                .with_clock(clock.clone()),
        ))
    };
    let release = function()?;
    let bridge = EventBridge::new(release.clone(), plan.events, seed);
    executions.emit_to(bridge.clone());
    let sweeps = schedule(release, Duration::from_secs(60));
    let starters = (0..INSTANCES).map(|_| function()).collect::<Result<Vec<_>, _>>()?;
    let invoker = Arc::new(Timed::new(InProcess::new(starters, FUNCTION_TIMEOUT, None)));
    let bound = (plan.cap as f64 / plan.mean.as_secs_f64()).min(QUOTA.1);
    let producer = tokio::spawn(feed(queue.clone(), plan.messages, bound * FEED));
    let done = {
        let queue = queue.clone();
        async move {
            while !(producer.is_finished() && queue.is_drained()) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mapping = EsmConfig {
        gather: GatherConfig::new(10, Duration::ZERO, 0),
        max_concurrency: INSTANCES,
        function_timeout: FUNCTION_TIMEOUT,
        queue_arn: queue.arn().to_string(),
        region: local_stack::moto::REGION.to_string(),
        until_empty: false,
        empty_polls: 1,
        poll_interval: Duration::from_millis(100),
        empty_receive_pause: Duration::from_millis(100),
        max_run: Some(plan.mean * (plan.messages / plan.cap.max(1) * 3 + 20) as u32),
        progress_interval: None,
    };
    esm::run(queue.clone(), invoker.clone(), mapping, done).await;
    // The last executions end; their events (or the reclaim) free their slots.
    let settle = Instant::now() + plan.mean * 2 + Duration::from_secs(1800);
    while (executions.running() > 0 || bridge.pending() > 0 || held(&store) > 0) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    sweeps.abort();
    Ok(measure(plan, &store, &queue, &executions, &bridge, &invoker, bound, t0))
}

/// Sends `messages` evenly at `per_second`.
async fn feed(queue: Arc<SimQueue>, messages: u64, per_second: f64) {
    let began = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let due = ((began.elapsed().as_secs_f64() * per_second) as u64 + 1).min(messages);
        for i in sent..due {
            queue.send(body(i));
        }
        sent = due.max(sent);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Slots the shards count.
fn held(store: &MemoryStore) -> u64 {
    let items = store.running_items(KEY);
    items
        .values()
        .map(|i| match i {
            Item::Shard(s) => s.held,
            _ => 0,
        })
        .sum()
}

#[allow(clippy::too_many_arguments)]
fn measure(
    plan: &Plan,
    store: &MemoryStore,
    queue: &SimQueue,
    executions: &Executions,
    bridge: &EventBridge,
    invoker: &Timed,
    bound: f64,
    t0: Instant,
) -> CapRun {
    let runs = executions.runs();
    let started = runs.len().max(1) as f64;
    let mean = runs.iter().map(|r| (r.stop - r.start).as_secs_f64()).sum::<f64>() / started;
    let first = runs.iter().map(|r| r.start).min().unwrap_or_default().as_secs_f64();
    let last = runs.iter().map(|r| r.start).max().unwrap_or_default().as_secs_f64();
    // Saturated: from two cycles in (the first releases measured the rate) until the feed ends
    // (then the line runs dry and the cap is no longer full).
    // (The executions' times count from their origin, made at the run's start: the same instant
    // on the paused clock.)
    let feed_end = plan.messages as f64 / (bound * FEED);
    let window = (first + 2.0 * mean, feed_end.min(last).max(first + 2.0 * mean));
    let in_window = |at: f64| at >= window.0 && at < window.1;
    let steady: Vec<&str> = runs
        .iter()
        .filter(|r| in_window(r.start.as_secs_f64()))
        .map(|r| r.name.as_str())
        .collect();
    let receives = queue.receives_by_origin();
    let of = |names: &mut dyn Iterator<Item = &str>| -> Vec<f64> {
        names
            .map(|n| f64::from(receives.get(n).copied().unwrap_or(0)))
            .collect()
    };
    let steady_receives = of(&mut steady.iter().copied());
    let all_receives = of(&mut runs.iter().map(|r| r.name.as_str()));
    let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let units = store.write_units_by_item();
    let units_of = |prefix: &str| {
        units
            .iter()
            .filter(|(pk, _)| pk.starts_with(prefix))
            .map(|(_, u)| *u)
            .sum::<u64>()
    };
    let events = bridge.delivered();
    CapRun {
        plan: plan.clone(),
        started: runs.len() as u64,
        window,
        throughput: steady.len() as f64 / (window.1 - window.0).max(1e-9),
        bound,
        peak: executions.peak(),
        receives: (
            mean_of(&steady_receives),
            percentile(&steady_receives, 99.0).unwrap_or(0.0),
            steady_receives.iter().copied().fold(0.0, f64::max),
        ),
        receives_all: (mean_of(&all_receives), all_receives.iter().copied().fold(0.0, f64::max)),
        sqs_requests: queue
            .requests()
            .iter()
            .filter(|(api, _)| **api != EMPTY_RECEIVES)
            .map(|(_, n)| n)
            .sum::<u64>() as f64
            / started,
        write_units: (
            units_of("running#") as f64 / started,
            units_of("quota#") as f64 / started,
        ),
        table_calls: store.calls() as f64 / started,
        lambda_ms: (invoker.billed_ms() as f64 / started, events.billed_ms as f64 / started),
        busiest: store.busiest_item().unwrap_or_default(),
        reclaimed: reclaims(store, executions, plan.events.late),
        events,
        held_at_end: held(store),
        dead: queue
            .dlq()
            .iter()
            .filter(|e| matches!(e, DlqEntry::Redriven { .. } | DlqEntry::DeadLettered { .. }))
            .count() as u64,
        seconds: (t0.elapsed().as_secs_f64(), 0.0),
    }
}

/// Slots freed more than a second after their event's latest delivery could have freed them:
/// their count, and the p50 and largest time from the execution's end to the release, seconds.
fn reclaims(store: &MemoryStore, executions: &Executions, late: Duration) -> (u64, Option<f64>, Option<f64>) {
    let stops: HashMap<String, u64> = executions
        .runs()
        .into_iter()
        .map(|r| (r.name, executions.epoch_ms(r.stop)))
        .collect();
    let delays: Vec<f64> = store
        .running_items(KEY)
        .into_values()
        .filter_map(|item| match item {
            Item::Holder(h) if h.state == HolderState::Released => {
                let delay = h.released_at_ms?.saturating_sub(*stops.get(&h.name)?) as f64 / 1000.0;
                (delay > late.as_secs_f64() + 1.0).then_some(delay)
            }
            _ => None,
        })
        .collect();
    let largest = delays.iter().copied().reduce(f64::max);
    (delays.len() as u64, percentile(&delays, 50.0), largest)
}

/// The section's tables.
pub fn markdown(md: &mut String, runs: &[CapRun]) {
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Running executions cap (MAX_RUNNING_EXECUTIONS)\n");
    let _ = writeln!(
        md,
        "Simulated time (tokio's paused clock): {INSTANCES} instances, BatchSize 10, no batching window, \
         maxReceiveCount {MAX_RECEIVE_COUNT}, quota {} / {}/s, fed at 1.1 × the bound.\n",
        QUOTA.0, QUOTA.1
    );
    let _ = writeln!(
        md,
        "| run | started | steady starts/s | bound min(C/D̄, r) | throughput ≥ {} | peak running ≤ C | receives / msg (mean, p99, max) ≤ {} | all msgs (mean, max) | SQS req / msg | WCU / msg (cap, budget) | table calls / msg | Lambda ms / msg (starters, release) | busiest item WCU/s | reclaimed (n, p50, max s) | held at end | DLQ | sim / real s |",
        targets::THROUGHPUT,
        targets::RECEIVES
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---|---|---|---|---:|---|---:|---|---|---|---:|---:|---|"
    );
    for r in runs {
        let ratio = r.throughput / r.bound;
        let busiest = r.busiest.1 as f64 / 1000.0;
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.3} {} | {} {} | {:.2}, {:.0}, {:.0} {} | {:.2}, {:.0} | {:.2} | {:.1}, {:.2} | {:.2} | {:.0}, {:.0} | {} ({:.0} %) {} | {}, {}, {} | {} | {} | {:.0} / {:.0} |",
            r.plan.title,
            r.started,
            r.throughput,
            r.bound,
            ratio,
            pass(ratio >= targets::THROUGHPUT),
            r.peak,
            pass(r.peak as u64 <= r.plan.cap),
            r.receives.0,
            r.receives.1,
            r.receives.2,
            pass(r.receives.0 <= targets::RECEIVES),
            r.receives_all.0,
            r.receives_all.1,
            r.sqs_requests,
            r.write_units.0,
            r.write_units.1,
            r.table_calls,
            r.lambda_ms.0,
            r.lambda_ms.1,
            r.busiest.1,
            busiest * 100.0,
            pass(busiest <= targets::BUSIEST_ITEM_SHARE),
            r.reclaimed.0,
            opt(r.reclaimed.1, 0),
            opt(r.reclaimed.2, 0),
            r.held_at_end,
            r.dead,
            r.seconds.0,
            r.seconds.1,
        );
    }
    let _ = writeln!(md);
}

/// The section's JSON.
pub fn json(runs: &[CapRun]) -> Value {
    Value::Array(
        runs.iter()
            .map(|r| {
                json!({
                    "title": r.plan.title, "cap": r.plan.cap, "mean_duration_s": r.plan.mean.as_secs_f64(),
                    "messages": r.plan.messages, "started": r.started, "window_s": [r.window.0, r.window.1],
                    "throughput_per_second": r.throughput, "bound_per_second": r.bound, "peak_running": r.peak,
                    "receives": {"mean": r.receives.0, "p99": r.receives.1, "max": r.receives.2,
                                 "all_mean": r.receives_all.0, "all_max": r.receives_all.1},
                    "sqs_requests_per_message": r.sqs_requests,
                    "write_units_per_message": {"cap": r.write_units.0, "budget": r.write_units.1},
                    "table_calls_per_message": r.table_calls,
                    "lambda_ms_per_message": {"starters": r.lambda_ms.0, "release": r.lambda_ms.1},
                    "busiest_item": {"pk": r.busiest.0, "write_units_in_one_second": r.busiest.1},
                    "reclaimed": {"count": r.reclaimed.0, "p50_s": r.reclaimed.1, "max_s": r.reclaimed.2},
                    "events": {"sent": r.events.events, "dropped": r.events.dropped, "duplicated": r.events.duplicated,
                               "freed": r.events.freed, "duplicates": r.events.duplicates},
                    "held_at_end": r.held_at_end, "dlq": r.dead,
                    "simulated_seconds": r.seconds.0, "real_seconds": r.seconds.1,
                })
            })
            .collect(),
    )
}
