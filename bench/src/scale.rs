//! A thousand busy instances on one budget (issue 17). Each instance is the real lessee
//! (`SharedPacer`, its own static split as fallback) leasing from one budget item of the
//! in-memory table (`MemoryStore`: DynamoDB's 1,000 write units per second per item, throttled
//! beyond; the quick or the faulty table), against the account's exact token bucket
//! (`TokenBucket`). It runs on tokio's paused clock: a discrete-event simulation, so a thousand
//! instances take seconds, and timing is exact but for the lessees' own random jitter.
//!
//! Each instance runs invocations back to back while messages are left: it takes a batch,
//! reserves a slot for each message (at most `MAX_IN_FLIGHT` at once, with the handler's
//! demand: messages not done less those holding a slot), waits for it (`Pacing::ready`),
//! "calls" StartExecution (a request path of 5 – 10 ms, then the account's bucket at that
//! instant: started or throttled), reports the outcome, and after the batch gives back what its
//! last lease left. A message not started (no slot before the invocation's cutoff, throttled)
//! goes back to the backlog.
//!
//! What it leaves out: SQS and the mapping (an instance takes its next batch at once), the
//! handler's retries within an invocation (a throttled message goes back to the backlog), the
//! response's time (only the request path counts against the bucket), CPU time (free here).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use local_stack::fake_sfn::TokenBucket;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sfn_pacer::start::budget::lease::{LeaseCounts, SharedPacer};
use sfn_pacer::start::budget::BudgetState;
use sfn_pacer::start::clock::Clock;
use sfn_pacer::start::memory::MemoryStore;
use sfn_pacer::start::pace::Pacer;
use tokio::time::Instant;

use crate::common::BenchError;
use crate::shared::{Table, QUOTA_KEY};
use crate::stats;

/// Epoch seconds at the simulation's start (the lessees' clocks follow the paused clock).
const EPOCH: f64 = 1_800_000_000.0;
/// The request path of a StartExecution call: min, max.
const REQUEST: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(10));
/// StartExecution calls in flight per instance (`MAX_IN_FLIGHT`'s default).
const MAX_IN_FLIGHT: usize = 32;
/// An invocation's time to start (the function timeout less the deadline margin).
const INVOCATION: Duration = Duration::from_secs(27);
/// `CALL_TIMEOUT_MS`'s default.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// An instance with nothing to take looks again after this long.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// The targets at a thousand instances.
pub mod targets {
    /// Drain efficiency T*/T.
    pub const EFFICIENCY: f64 = 0.95;
    /// Write units the budget's item takes in its busiest second.
    pub const BUSIEST_ITEM_UNITS: u64 = 500;
}

/// One run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePlan {
    /// What it models.
    pub title: &'static str,
    /// Busy instances.
    pub instances: usize,
    /// The account's (and the budget's) bucket: B, r.
    pub quota: (u64, f64),
    /// Messages in the backlog: `B + T* × r`.
    pub messages: u64,
    /// Messages per invocation (BatchSize).
    pub batch: u64,
    /// The table.
    pub table: Table,
    /// The instances' clocks are off by this much, alternately ahead and behind.
    pub skew: Duration,
    /// The instances start evenly over this long: Lambda adds at most 1,000 execution
    /// environments to a function every 10 seconds.
    pub arrival: Duration,
    /// The run stops after this long (simulated), drained or not.
    pub max_run: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct ScaleRun {
    /// The plan.
    pub plan: ScalePlan,
    /// Simulated seconds until every message started (or the run's end).
    pub drain_seconds: f64,
    /// Whether every message started.
    pub drained: bool,
    /// Messages started.
    pub started: u64,
    /// StartExecution calls, and how many the account's bucket throttled.
    pub calls: u64,
    /// See `calls`.
    pub throttled: u64,
    /// Calls to the table (reads and writes, failed ones too).
    pub table_calls: u64,
    /// Write units the busiest budget item took in its busiest second from [`START_SECONDS`] on,
    /// and over the run.
    pub busiest_item_units: u64,
    /// Write units the busiest budget item took in its busiest second before [`START_SECONDS`]:
    /// the first instances on a full, idle budget that is still one item.
    pub start_item_units: u64,
    /// Reads of the budget in the busiest second (read units; an item takes 3,000).
    pub busiest_reads: u64,
    /// See `busiest_item_units`.
    pub item_units: u64,
    /// Budget writes refused by their condition.
    pub refused: u64,
    /// Faults injected, and writes the per-item limit throttled.
    pub faults: u64,
    /// See `faults`.
    pub item_throttled: u64,
    /// The lessees' counts, summed (fallbacks, dropped slots, table calls' latencies).
    pub counts: LeaseCounts,
    /// Messages started in each second of the run.
    pub starts_per_second: Vec<u64>,
    /// The items the budget was spread over at the end, and the most at once (`budget::shards`).
    pub shards: (u32, u32),
    /// Wall time the simulation took, seconds.
    pub wall_seconds: f64,
}

impl ScaleRun {
    /// T*/T, `None` if not drained.
    pub fn efficiency(&self) -> Option<f64> {
        let (burst, rate) = self.plan.quota;
        let ideal = stats::ideal_drain_seconds(self.plan.messages, burst as f64, rate);
        self.drained
            .then(|| stats::efficiency(ideal, self.drain_seconds))
            .flatten()
    }

    /// Throttled calls / calls.
    pub fn throttle_ratio(&self) -> f64 {
        stats::ratio(self.throttled, self.calls)
    }

    /// Table calls per start.
    pub fn table_calls_per_start(&self) -> f64 {
        stats::ratio(self.table_calls, self.started)
    }

    /// Write units per second on the budget's item, on average over the drain.
    pub fn mean_item_units(&self) -> f64 {
        self.item_units as f64 / self.drain_seconds.max(f64::MIN_POSITIVE)
    }

    /// The p99 of the table calls' latency, ms.
    pub fn latency_p99_ms(&self) -> Option<f64> {
        stats::percentile(&self.counts.latencies_ms, 99.0)
    }
}

/// T* of the backlog, seconds: the instances arrive in the first 10 s, then all of them are
/// busy (each holds a batch; the rest of the backlog waits in the queue).
pub const IDEAL_SECONDS: f64 = 60.0;
/// How long the instances take to arrive ([`ScalePlan::arrival`]).
pub const ARRIVAL: Duration = Duration::from_secs(10);

/// The plans: a thousand instances at Standard's quota (1,300 / 300 per s, BatchSize
/// `standard_batch`) and Express's (6,000 / 6,000 per s, BatchSize `express_batch`), each with
/// the quick and the faulty table; then Standard with the faulty table and clocks ±`skew`; then
/// Express at Standard's BatchSize, where the leases alone (one per invocation, r / BatchSize a
/// second) are more than one item takes (the budget spreads over several), with each table.
pub fn plans(instances: usize, standard_batch: u64, express_batch: u64, skew: Duration) -> Vec<ScalePlan> {
    let mut out = Vec::new();
    let quotas = [
        ("Standard", (1_300, 300.0), standard_batch),
        ("Express", (6_000, 6_000.0), express_batch),
    ];
    for (title, quota, batch) in quotas {
        for table in [Table::Quick, Table::Faulty] {
            out.push(ScalePlan {
                title,
                instances,
                quota,
                messages: crate::shared::backlog(quota.0 as f64, quota.1, IDEAL_SECONDS),
                batch,
                table,
                skew: Duration::ZERO,
                arrival: ARRIVAL,
                max_run: Duration::from_secs(180),
            });
        }
    }
    let skewed = ScalePlan { skew, ..out[1].clone() };
    let small_batches = ScalePlan {
        batch: standard_batch,
        ..out[2].clone()
    };
    let small_batches_faulty = ScalePlan {
        table: Table::Faulty,
        ..small_batches.clone()
    };
    out.push(skewed);
    out.push(small_batches);
    out.push(small_batches_faulty);
    out
}

/// What every instance shares.
struct World {
    origin: Instant,
    account: Mutex<TokenBucket>,
    /// Messages not yet taken by an instance.
    backlog: AtomicU64,
    started: AtomicU64,
    calls: AtomicU64,
    throttled: AtomicU64,
    counts: Mutex<LeaseCounts>,
    drained_at: Mutex<Option<Duration>>,
    /// Starts in each second since `origin`.
    per_second: Mutex<Vec<u64>>,
    messages: u64,
    seed: u64,
}

impl World {
    /// Up to `n` messages from the backlog.
    fn take(&self, n: u64) -> u64 {
        let mut taken = 0;
        let _ = self.backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            taken = left.min(n);
            Some(left - taken)
        });
        taken
    }

    fn add_counts(&self, c: LeaseCounts) {
        let mut all = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        all.calls += c.calls;
        all.fallbacks += c.fallbacks;
        all.dropped += c.dropped;
        all.leased += c.leased;
        all.returned += c.returned;
        all.reshards += c.reshards;
        all.latencies_ms.extend(c.latencies_ms);
    }

    fn done(&self) -> bool {
        self.started.load(Ordering::Relaxed) >= self.messages
    }
}

/// The start of a run, seconds: the first instances find the budget full, idle and on one item;
/// a budget spread over several items takes a measure of the load first ([`shards`]).
///
/// [`shards`]: sfn_pacer::start::budget::shards
pub const START_SECONDS: u64 = 2;

/// Runs one plan on a paused current-thread runtime of its own.
pub fn run(plan: &ScalePlan, seed: u64) -> Result<ScaleRun, BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("building the simulation's runtime: {e}"))?;
    let wall = std::time::Instant::now();
    let mut run = runtime.block_on(simulate(plan, seed));
    run.wall_seconds = wall.elapsed().as_secs_f64();
    Ok(run)
}

async fn simulate(plan: &ScalePlan, seed: u64) -> ScaleRun {
    let (burst, rate) = plan.quota;
    let store = Arc::new(plan.table.store(seed));
    let world = Arc::new(World {
        origin: Instant::now(),
        account: Mutex::new(TokenBucket::new(burst, rate)),
        backlog: AtomicU64::new(plan.messages),
        started: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        counts: Mutex::new(LeaseCounts::default()),
        drained_at: Mutex::new(None),
        per_second: Mutex::new(Vec::new()),
        messages: plan.messages,
        seed,
    });
    let end = world.origin + plan.max_run;
    let mut instances = tokio::task::JoinSet::new();
    for i in 0..plan.instances {
        let skew = match i % 2 {
            1 => -plan.skew.as_secs_f64(),
            _ => plan.skew.as_secs_f64(),
        };
        let arrives = world.origin + plan.arrival.mul_f64(i as f64 / plan.instances as f64);
        let (store, world, plan) = (store.clone(), world.clone(), plan.clone());
        instances.spawn(async move {
            tokio::time::sleep_until(arrives).await;
            let pacer = lessee(&store, &plan, world.origin, skew);
            instance(Arc::new(pacer), world, plan.batch, i as u64, end).await;
        });
    }
    while instances.join_next().await.is_some() {}
    let drained_at = *world.drained_at.lock().unwrap_or_else(|p| p.into_inner());
    let units = store.write_units_by_item();
    let budget_units = units.values().copied().max().unwrap_or(0);
    let injected = store.injected();
    let counts = world.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let starts_per_second = world.per_second.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ScaleRun {
        plan: plan.clone(),
        drain_seconds: drained_at.unwrap_or(plan.max_run).as_secs_f64(),
        drained: drained_at.is_some(),
        started: world.started.load(Ordering::Relaxed),
        calls: world.calls.load(Ordering::Relaxed),
        throttled: world.throttled.load(Ordering::Relaxed),
        table_calls: store.calls(),
        busiest_item_units: store.busiest_item_from(START_SECONDS).map_or(0, |(_, u)| u),
        start_item_units: store.busiest_item().map_or(0, |(_, u)| u),
        shards: (
            store.item(QUOTA_KEY).map_or(1, |root| root.shards),
            store.item(QUOTA_KEY).map_or(1, |root| root.span),
        ),
        busiest_reads: store.busiest_budget_reads(),
        item_units: budget_units,
        refused: store.budget_counts().refused,
        faults: injected
            .iter()
            .filter(|(k, _)| **k != "item-throttled")
            .map(|(_, v)| v)
            .sum(),
        item_throttled: injected.get("item-throttled").copied().unwrap_or(0),
        counts,
        starts_per_second,
        wall_seconds: 0.0,
    }
}

/// One instance's pacer: the whole budget as seed, its static split as fallback, its clock the
/// simulation's (from `origin`) off by `skew` seconds.
fn lessee(store: &Arc<MemoryStore>, plan: &ScalePlan, origin: Instant, skew: f64) -> SharedPacer {
    let (burst, rate) = plan.quota;
    let k = plan.instances.max(1) as f64;
    let fallback = Pacer::new(rate / k, (burst as f64 / k).max(1.0), Instant::now());
    let seed = BudgetState::new(rate, burst as f64);
    SharedPacer::new(store.clone(), QUOTA_KEY, seed, fallback, CALL_TIMEOUT)
        .with_clock(Clock::with_wall(move || EPOCH + origin.elapsed().as_secs_f64()).skewed(skew))
}

/// One instance: invocations back to back until every message started or `end`.
async fn instance(pacer: Arc<SharedPacer>, world: Arc<World>, batch: u64, id: u64, end: Instant) {
    let mut rng = StdRng::seed_from_u64(world.seed.wrapping_mul(1_000_003).wrapping_add(id));
    while !world.done() && Instant::now() < end {
        let taken = world.take(batch);
        if taken == 0 {
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        }
        let cutoff = (Instant::now() + INVOCATION).min(end);
        let latencies: Vec<Duration> = (0..taken)
            .map(|_| REQUEST.0 + (REQUEST.1 - REQUEST.0).mul_f64(rng.random::<f64>()))
            .collect();
        let started = invocation(&pacer, &world, latencies, cutoff).await;
        world.backlog.fetch_add(taken - started, Ordering::Relaxed);
        pacer.give_back(Instant::now() + CALL_TIMEOUT).await;
        world.add_counts(pacer.take_counts());
    }
}

/// One invocation of `latencies.len()` messages (each with its request path); how many started.
async fn invocation(pacer: &Arc<SharedPacer>, world: &Arc<World>, latencies: Vec<Duration>, cutoff: Instant) -> u64 {
    let pending = Arc::new(AtomicU64::new(latencies.len() as u64));
    let holding = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut units = tokio::task::JoinSet::new();
    for latency in latencies {
        let (pacer, world, pending, holding, permits) = (
            pacer.clone(),
            world.clone(),
            pending.clone(),
            holding.clone(),
            permits.clone(),
        );
        units.spawn(async move {
            let Ok(_permit) = permits.acquire().await else {
                return false;
            };
            let started = start(&pacer, &world, &pending, &holding, latency, cutoff).await;
            pending.fetch_sub(1, Ordering::Relaxed);
            started
        });
    }
    let mut started = 0;
    while let Some(result) = units.join_next().await {
        started += u64::from(result.unwrap_or(false));
    }
    started
}

/// One message: a slot, then the call against the account's bucket.
async fn start(
    pacer: &SharedPacer,
    world: &World,
    pending: &AtomicU64,
    holding: &AtomicU64,
    latency: Duration,
    cutoff: Instant,
) -> bool {
    let demand = || {
        pending
            .load(Ordering::Relaxed)
            .saturating_sub(holding.load(Ordering::Relaxed))
            .max(1)
    };
    loop {
        let Some(slot) = pacer.reserve(cutoff, demand).await else {
            return false;
        };
        holding.fetch_add(1, Ordering::Relaxed);
        if !pacer.ready(slot).await {
            holding.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        tokio::time::sleep(latency).await;
        let at = world.origin.elapsed();
        let ok = world.account.lock().unwrap_or_else(|p| p.into_inner()).try_take(at);
        holding.fetch_sub(1, Ordering::Relaxed);
        world.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            world.throttled.fetch_add(1, Ordering::Relaxed);
            pacer.on_throttle(slot).await;
            return false;
        }
        pacer.on_success(slot).await;
        {
            let mut per_second = world.per_second.lock().unwrap_or_else(|p| p.into_inner());
            let second = at.as_secs() as usize;
            if per_second.len() <= second {
                per_second.resize(second + 1, 0);
            }
            per_second[second] += 1;
        }
        if world.started.fetch_add(1, Ordering::Relaxed) + 1 == world.messages {
            *world.drained_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        }
        return true;
    }
}

/// The section's table and targets.
pub fn markdown(md: &mut String, runs: &[ScaleRun]) {
    let _ = writeln!(md, "## A thousand instances on one budget\n");
    let _ = writeln!(
        md,
        "Simulated on a paused clock: each instance is the real lessee (`SharedPacer`) against one `MemoryStore` \
         (1,000 write units/s per item, throttled beyond) and the account's exact bucket; the instances arrive \
         evenly over the first {} s (Lambda adds at most 1,000 environments to a function every 10 s); \
         invocations of BatchSize messages back to back, MAX_IN_FLIGHT {MAX_IN_FLIGHT}, request path {} – {} ms; \
         M = B + {IDEAL_SECONDS} r (T* = {IDEAL_SECONDS} s). WU = write units (a refused conditional write takes its \
         unit too), RU = read units (strongly consistent reads; an item takes 3,000 a second).\n",
        ARRIVAL.as_secs(),
        REQUEST.0.as_millis(),
        REQUEST.1.as_millis(),
    );
    let _ = writeln!(
        md,
        "| quota | instances × BatchSize | table | skew | T (s) | T*/T | throttled / calls | table calls / start | busiest item (WU in 1 s): from second 2; before | item WU/s (mean) | busiest reads (RU in 1 s) | items: at the end, most; reshards | refused writes | item throttles | faults | fallbacks | dropped slots | lease p99 (ms) | wall (s) |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let p = &r.plan;
        let _ = writeln!(
            md,
            "| {} {} / {} | {} × {} | {} | ±{} ms | {}{:.2} | {} | {:.2} % ({} / {}) | {:.3} | {}; {} | {:.0} | {} | {}, {}; {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            p.title,
            p.quota.0,
            p.quota.1,
            p.instances,
            p.batch,
            p.table,
            p.skew.as_millis(),
            if r.drained { "" } else { "> " },
            r.drain_seconds,
            r.efficiency().map_or("—".to_string(), |e| format!("{e:.3}")),
            r.throttle_ratio() * 100.0,
            r.throttled,
            r.calls,
            r.table_calls_per_start(),
            r.busiest_item_units,
            r.start_item_units,
            r.mean_item_units(),
            r.busiest_reads,
            r.shards.0,
            r.shards.1,
            r.counts.reshards,
            r.refused,
            r.item_throttled,
            r.faults,
            r.counts.fallbacks,
            r.counts.dropped,
            r.latency_p99_ms().map_or("—".to_string(), |v| format!("{v:.1}")),
            r.wall_seconds,
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| run | T*/T (≥ {}) | busiest item from second 2 (≤ {} WU in 1 s) | throttled / calls (≤ 0.2 %) |",
        targets::EFFICIENCY,
        targets::BUSIEST_ITEM_UNITS
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for r in runs {
        let p = &r.plan;
        let eff = r.efficiency();
        let _ = writeln!(
            md,
            "| {} {}, BatchSize {}, skew ±{} ms | {} {} | {} {} | {:.2} % {} |",
            p.title,
            p.table,
            p.batch,
            p.skew.as_millis(),
            eff.map_or("—".to_string(), |e| format!("{e:.3}")),
            crate::report::pass(eff.is_some_and(|e| e >= targets::EFFICIENCY)),
            r.busiest_item_units,
            crate::report::pass(r.busiest_item_units <= targets::BUSIEST_ITEM_UNITS),
            r.throttle_ratio() * 100.0,
            crate::report::pass(r.throttle_ratio() <= 0.002),
        );
    }
    let _ = writeln!(md);
}

/// The section's runs as JSON.
pub fn json(runs: &[ScaleRun]) -> Value {
    let rows: Vec<Value> = runs
        .iter()
        .map(|r| {
            let p = &r.plan;
            json!({
                "title": p.title, "instances": p.instances, "burst": p.quota.0, "refill_per_second": p.quota.1,
                "messages": p.messages, "batch": p.batch, "table": p.table.to_string(),
                "skew_ms": p.skew.as_millis() as u64, "drain_seconds": r.drain_seconds, "drained": r.drained,
                "efficiency": r.efficiency(), "started": r.started, "calls": r.calls, "throttled": r.throttled,
                "table_calls": r.table_calls, "table_calls_per_start": r.table_calls_per_start(),
                "busiest_item_write_units": r.busiest_item_units, "start_item_write_units": r.start_item_units,
                "item_write_units": r.item_units,
                "busiest_read_units": r.busiest_reads,
                "refused_writes": r.refused, "item_throttled": r.item_throttled, "faults": r.faults,
                "fallbacks": r.counts.fallbacks, "dropped_slots": r.counts.dropped,
                "lease_latency_p99_ms": r.latency_p99_ms(), "wall_seconds": r.wall_seconds,
                "starts_per_second": r.starts_per_second,
            })
        })
        .collect();
    Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_standard_and_express_with_both_tables_and_a_skewed_run() {
        let p = plans(1_000, 10, 100, Duration::from_millis(50));
        assert_eq!(p.len(), 7);
        assert_eq!((p[0].quota, p[0].messages, p[0].batch), ((1_300, 300.0), 19_300, 10));
        assert_eq!(
            (p[2].quota, p[2].messages, p[2].batch),
            ((6_000, 6_000.0), 366_000, 100)
        );
        assert!(p.iter().all(|p| p.arrival == ARRIVAL));
        assert_eq!(p[1].table, Table::Faulty);
        assert_eq!(
            (p[4].title, p[4].table, p[4].skew),
            ("Standard", Table::Faulty, Duration::from_millis(50))
        );
        assert_eq!((p[5].title, p[5].batch, p[5].table), ("Express", 10, Table::Quick));
        assert_eq!((p[6].title, p[6].batch, p[6].table), ("Express", 10, Table::Faulty));
        assert!(p.iter().all(|p| p.instances == 1_000));
    }

    #[test]
    fn a_small_simulation_drains_at_the_quota_without_throttles() {
        let plan = ScalePlan {
            title: "test",
            instances: 20,
            quota: (100, 100.0),
            messages: 600,
            batch: 10,
            table: Table::Quick,
            skew: Duration::ZERO,
            arrival: Duration::ZERO,
            max_run: Duration::from_secs(30),
        };
        let run = run(&plan, 1).unwrap();
        assert!(run.drained, "{run:?}");
        assert_eq!(run.started, 600);
        // T* = 5 s: a generous bound, the simulation's clock is exact.
        assert!(run.efficiency().unwrap() > 0.8, "{:?}", run.efficiency());
        assert_eq!(run.throttled, 0);
        assert!(run.table_calls > 0 && run.busiest_item_units > 0);
    }
}
