//! Chaos test of the cap on running executions (issue 16), in simulated time (tokio's paused
//! clock): hundreds of messages through the real handler, several instances and the release
//! function, the in-memory coordination table with faults, executions of random durations
//! ([`local_stack::executions`]), and EventBridge at its worst: 5 % of the status change events
//! dropped, 5 % delivered twice, all of them up to 30 s late (so out of order); some StartExecution
//! answers lost after the start was applied; the table slow, failing, throttling and losing answers;
//! invocations killed part-way (between a take and its start too).
//!
//! Then: at no instant did more executions run than the cap (from the executions' own start and
//! stop times, not from the table); every good message started exactly one execution, or was
//! moved to the DLQ by the queue's redrive after crashes took its last receives (SQS counts a
//! crashed invocation's receives; the function re-sends a message waiting at the cap before its
//! last receive, but cannot re-send from a crash), never for waiting alone; every poison message is
//! in the DLQ with its reason; and every slot is free once the executions have ended and the
//! reclaim has swept the lost events' slots.
//!
//! `CHAOS_SEED=<n>` picks the seed of the faults (events, executions, table, which messages are
//! poison); the handler's own jitter is not seeded. Bounded: the mapping stops after
//! [`MAX_RUN`] of simulated time, the settling after [`SETTLE`], and the test after [`TEST_BOUND`]
//! of real time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use local_stack::executions::{schedule, Durations, EventBridge, EventFaults, Executions};
use local_stack::sim::{drive_with_kills, DlqEntry, Kill, Mapping, SimQueue, DEFAULT_BATCHING_WINDOW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sfn_pacer::start::clock::Clock;
use sfn_pacer::start::memory::{MemoryStore, TableFaults};
use sfn_pacer::start::running::Item;
use sfn_pacer::{Config, Starter};

/// The seed when `CHAOS_SEED` is not set.
const DEFAULT_SEED: u64 = 16;
const STATE_MACHINE_ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:chaos-running";
/// The cap's key: the state machine's name (`RUNNING_KEY`'s default).
const KEY: &str = "chaos-running";
/// The cap.
const CAP: usize = 20;
const MESSAGES: usize = 600;
/// One message in this many is poison (a body that is not JSON).
const POISON_EVERY: usize = 100;
const INSTANCES: usize = 4;
/// Executions run a uniform 2 to 40 s: about 20 slots / 21 s ≈ 1 start a second at the cap.
const DURATIONS: Durations = Durations::Uniform(Duration::from_secs(2), Duration::from_secs(40));
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(20);
const VISIBILITY: Duration = Duration::from_secs(60);
const MAX_RECEIVE_COUNT: u32 = 5;
/// Every 40th invocation (the 4th of each 40) is killed 30 ms in (an invocation that holds a due
/// message for its slot lasts up to a second: most are still running then).
const KILL: Kill = Kill {
    every: 40,
    phase: 4,
    after: Duration::from_millis(30),
};
/// Simulated time the mapping may take to drain the queue.
const MAX_RUN: Duration = Duration::from_secs(4 * 3600);
/// Simulated time, after the drain, for the last executions to end and their slots to come back.
const SETTLE: Duration = Duration::from_secs(1800);
/// Real time the whole test may take.
const TEST_BOUND: Duration = Duration::from_secs(240);

fn seed() -> u64 {
    std::env::var("CHAOS_SEED").map_or(DEFAULT_SEED, |raw| {
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED must be a number, got {raw:?}"))
    })
}

fn config() -> Config {
    let pairs = [
        ("STATE_MACHINE_ARN", STATE_MACHINE_ARN.to_string()),
        ("COORDINATION_TABLE", "chaos-coordination".to_string()),
        ("MAX_RUNNING_EXECUTIONS", CAP.to_string()),
        ("RUNNING_EXPIRY_SECONDS", "60".to_string()),
        ("MAX_RECEIVE_COUNT", MAX_RECEIVE_COUNT.to_string()),
        ("STARTS_PER_SECOND", "20".to_string()),
        ("STARTS_BURST", "20".to_string()),
        ("MAX_CONCURRENCY", INSTANCES.to_string()),
        ("CALL_TIMEOUT_MS", "1000".to_string()),
        ("DEADLINE_MARGIN_MS", "2500".to_string()),
        ("RETRY_BASE_SECONDS", "1".to_string()),
        ("RETRY_MAX_SECONDS", "30".to_string()),
        (
            "DLQ_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/chaos-dlq".to_string(),
        ),
    ];
    Config::from_lookup(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap()
}

/// The table's faults: 1 – 8 ms a call, and 1 % each of slow answers (past the call timeout),
/// 500s, lost answers and throttles.
fn table_faults() -> TableFaults {
    TableFaults {
        latency_min: Duration::from_millis(1),
        latency_max: Duration::from_millis(8),
        slow_probability: 0.01,
        slow_delay: Duration::from_millis(1500),
        error_500_probability: 0.01,
        lost_answer_probability: 0.01,
        throttle_probability: 0.01,
        ..TableFaults::default()
    }
}

/// Slots the shards count, read from the table's items (past its faults).
fn held(store: &MemoryStore) -> u64 {
    store
        .running_items(KEY)
        .values()
        .map(|item| match item {
            Item::Shard(shard) => shard.held,
            _ => 0,
        })
        .sum()
}

/// Sends the messages, 1 % poison at seeded places; returns the good ids and the poison ids.
fn send(queue: &SimQueue, rng: &mut StdRng) -> (HashSet<String>, HashSet<String>) {
    let mut poison = vec![false; MESSAGES];
    poison.iter_mut().take(MESSAGES / POISON_EVERY).for_each(|p| *p = true);
    poison.shuffle(rng);
    let (mut good, mut bad) = (HashSet::new(), HashSet::new());
    for (i, is_poison) in poison.into_iter().enumerate() {
        match is_poison {
            true => bad.insert(queue.send("not json")),
            false => good.insert(queue.send(format!("{{\"order\":{i}}}"))),
        };
    }
    (good, bad)
}

#[test]
fn the_cap_holds_through_lost_duplicated_and_late_events_kills_and_table_faults() {
    let seed = seed();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        // A panic drops `done`: the receiver learns of it at once.
        runtime.block_on(chaos(seed));
        let _ = done.send(());
    });
    match finished.recv_timeout(TEST_BOUND) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("CHAOS_SEED={seed}: the run failed (above)"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("CHAOS_SEED={seed}: not done within {TEST_BOUND:?}"),
    }
}

async fn chaos(seed: u64) {
    if std::env::var("RUST_LOG").is_ok() {
        local_stack::cli::init_tracing("off");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = Clock::following_runtime(sfn_pacer::handler::now_epoch_ms() as f64 / 1e3);
    let store = Arc::new(MemoryStore::new().with_faults(table_faults()).with_seed(seed));
    let queue = SimQueue::new("chaos-running", MAX_RECEIVE_COUNT, VISIBILITY);
    let executions = Arc::new(
        Executions::new(STATE_MACHINE_ARN, DURATIONS, clock.clone(), seed)
            .with_quota(40, 20.0)
            .with_lost_answers(0.02),
    );
    let function = |config: Config| {
        Arc::new(
            Starter::coordinated(config, executions.clone(), queue.clone(), store.clone())
                .with_cap(store.clone(), executions.clone(), store.clone())
                .with_clock(clock.clone()),
        )
    };
    let release = function(config());
    let faults = EventFaults {
        drop: 0.05,
        duplicate: 0.05,
        late: Duration::from_secs(30),
    };
    let bridge = EventBridge::new(release.clone(), faults, seed);
    executions.emit_to(bridge.clone());
    let sweeps = schedule(release.clone(), Duration::from_secs(60));
    let (good, poison) = send(&queue, &mut rng);
    let starters = (0..INSTANCES).map(|_| function(config())).collect();
    let mapping = Mapping {
        batch_size: 10,
        batching_window: DEFAULT_BATCHING_WINDOW,
        function_timeout: FUNCTION_TIMEOUT,
        short_deadline: None,
        max_run: MAX_RUN,
        idle_poll: Duration::from_millis(100),
    };
    let report = drive_with_kills(queue.clone(), starters, mapping, Some(KILL)).await;
    let context = format!("CHAOS_SEED={seed}: {report:?}\nevents {:?}", bridge.delivered());
    assert!(report.drained, "{context}");

    // The executions end; their events (or the reclaim) free every slot.
    let settled = tokio::time::Instant::now() + SETTLE;
    let held = loop {
        let held = held(&store);
        let idle = executions.running() == 0 && bridge.pending() == 0;
        if (held == 0 && idle) || tokio::time::Instant::now() >= settled {
            break held;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    sweeps.abort();
    let context = format!("{context}\nevents {:?}", bridge.delivered());

    let peak = executions.peak();
    assert!(
        peak <= CAP,
        "{peak} executions ran at once, over the cap of {CAP}: {context}"
    );
    let mut started: HashMap<String, usize> = HashMap::new();
    for run in executions.runs() {
        *started.entry(run.name).or_default() += 1;
    }
    let names: HashSet<String> = started.keys().cloned().collect();
    let killed: HashSet<&String> = report.killed_messages.iter().collect();
    let mut crashed = HashSet::new();
    for entry in queue.dlq() {
        if let DlqEntry::Redriven { message_id, .. } = entry {
            let first = queue.origin(&message_id);
            assert!(
                killed.contains(&first),
                "{first} reached the DLQ waiting (its last receives were not crashes): {context}"
            );
            crashed.insert(first);
        }
    }
    let never: Vec<&String> = good.difference(&names).filter(|n| !crashed.contains(*n)).collect();
    let unknown: Vec<&String> = names.difference(&good).collect();
    assert!(
        never.is_empty() && unknown.is_empty(),
        "never started {never:?}, not sent {unknown:?}: dlq {:?} {context}",
        queue.dlq()
    );
    assert!(started.values().all(|n| *n == 1), "{context}");
    let mut dead = HashSet::new();
    for entry in queue.dlq() {
        match entry {
            DlqEntry::DeadLettered {
                message_id,
                code,
                reason,
            } => {
                assert!(!code.is_empty() && !reason.is_empty(), "{message_id}: {context}");
                dead.insert(message_id);
            }
            DlqEntry::Redriven { .. } => {}
        }
    }
    assert_eq!(dead, poison, "{context}");
    assert_eq!(held, 0, "slots still held at the end: {context}");
    assert!(store.held_holders(KEY).is_empty(), "{context}");

    // The faults happened.
    let delivered = bridge.delivered();
    let (_, lost_answers) = executions.faults();
    assert!(delivered.dropped > 0 && delivered.duplicated > 0, "{context}");
    assert!(delivered.duplicates > 0, "a duplicate freed nothing: {context}");
    assert!(lost_answers > 0 && report.killed > 0, "{context}");
    assert!(
        report.function.waiting_for_slot > 0 && report.function.resent > 0,
        "{context}"
    );
    let injected = store.injected();
    assert!(
        ["error-500", "lost-answer", "throttle", "slow"]
            .iter()
            .all(|f| injected.get(f).copied().unwrap_or(0) > 0),
        "{injected:?}: {context}"
    );
    eprintln!(
        "CHAOS_SEED={seed}: {} executions ({} redriven after crashes), peak {peak} of {CAP}, {} killed, events {delivered:?}, \
         lost answers {lost_answers}, table faults {injected:?}, waiting {} re-sent {} reclaimed (starters) {}",
        executions.started(),
        crashed.len(),
        report.killed,
        report.function.waiting_for_slot,
        report.function.resent,
        report.function.slots_reclaimed
    );
}
