//! The shared budget (coordinated mode) against the static split, side by side: several
//! deployments, instances that come and go, a foreign caller, a rate change. Every run drives
//! the real handler (`sim::drive`) against one FakeSfn, the account's exact token bucket; in
//! shared mode every starter leases from one budget item in a `MemoryStore` (the table): a
//! quick one (5 – 10 ms per call), and a faulty one as real tables are (slow tails, 500s, lost
//! answers, throttles: [`Table::faults`]), with or without clock skew between instances. The
//! store counts its own calls, refusals and write units. A probe of `Pacing::reserve` alone
//! gives the table's added latency per start. A thousand instances: [`crate::scale`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sfn::config::retry::RetryConfig;
use local_stack::fake_sfn::FakeSfnHandle;
use local_stack::sim::{drive, DlqEntry, Mapping, RunReport, SimQueue, DEFAULT_BATCHING_WINDOW};
use sfn_pacer::aws::SfnStarter;
use sfn_pacer::start::budget::{Store, Written};
use sfn_pacer::start::classify::{classify, Class};
use sfn_pacer::start::clock::Clock;
use sfn_pacer::start::memory::{MemoryStore, TableFaults};
use sfn_pacer::start::pacing::Pacing;
use sfn_pacer::start::{StartError, StartExecution, StartRequest, Started};
use sfn_pacer::Starter;
use tokio::time::Instant;

use crate::common::{body, config, sdk_config, BenchError, InstantStart, RequestDelay, Runtimes, STATE_MACHINE_ARN};
use crate::drain::Settings;
use crate::stats;

/// The quick table's latency per call: min, max (uniform in between).
pub const TABLE_LATENCY: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(10));
/// The skew of the skewed runs: instances alternate `+SKEW` and `−SKEW`.
pub const SKEW: Duration = Duration::from_millis(50);
/// The budget's key in the table (`QUOTA_KEY`), the same for every deployment.
pub const QUOTA_KEY: &str = "bench-account";
/// The seconds of refill beyond the burst in a busy deployment's backlog: `M = B + T* × r`.
pub const IDEAL_SECONDS: f64 = 10.0;
/// Scenario 4: when the replaced instance stops taking batches.
pub const REPLACE_AT: Duration = Duration::from_secs(3);
/// Scenario 5: the foreign caller starts this long before our drain, and takes this share of r.
pub const FOREIGN_LEAD: Duration = Duration::from_millis(500);
/// See [`FOREIGN_LEAD`].
pub const FOREIGN_SHARE: f64 = 1.0 / 3.0;
/// Scenario 5: our achieved rate is measured over this window (after the burst, before the tail).
pub const FOREIGN_WINDOW: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(9));
/// Scenario 6: when the rate changes, and how long the run lasts after that.
pub const CHANGE_AT: Duration = Duration::from_secs(4);
/// See [`CHANGE_AT`].
pub const CHANGE_AFTER: Duration = Duration::from_secs(7);
/// Scenario 6: the settling window, step and tolerance (a 1 s rate within 5 % of the new rate).
pub const SETTLE_WINDOW: Duration = Duration::from_secs(1);
/// See [`SETTLE_WINDOW`].
pub const SETTLE_STEP: Duration = Duration::from_millis(100);
/// See [`SETTLE_WINDOW`].
pub const SETTLE_TOLERANCE: f64 = 0.05;
/// The simulated StartExecution round trip of the latency probe.
const PROBE_CALL: Duration = Duration::from_millis(20);

/// The targets of the shared budget.
pub mod targets {
    /// Drain efficiency T*/T (scenarios 1 – 3).
    pub const EFFICIENCY: f64 = 0.97;
    /// Throttled calls / all calls, two busy deployments.
    pub const THROTTLE_RATIO: f64 = 0.002;
    /// Our throttled calls / our calls next to a foreign caller.
    pub const FOREIGN_THROTTLE_RATIO: f64 = 0.01;
    /// Our rate / what the foreign caller leaves.
    pub const FOREIGN_RATE_FRACTION: f64 = 0.95;
    /// Seconds until the rate is within 5 % of a new one.
    pub const SETTLE_SECONDS: f64 = 1.0;
    /// Table calls per start at full rate.
    pub const TABLE_CALLS_PER_START: f64 = 0.05;
    /// Drain efficiency T*/T with the faulty table (two busy deployments).
    pub const FAULTY_EFFICIENCY: f64 = 0.95;
}

/// The coordination table of a shared run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// 5 – 10 ms per call, no faults.
    Quick,
    /// As a real table can be: 10 – 30 ms per call, 3 % of answers 150 ms late, 1 % 500s, 1 %
    /// lost answers (applied), 1 % throttled.
    Faulty,
}

impl Table {
    /// The in-memory table's latency and faults (DynamoDB's per-item write limit in both).
    pub fn faults(self) -> TableFaults {
        match self {
            Table::Quick => TableFaults {
                latency_min: TABLE_LATENCY.0,
                latency_max: TABLE_LATENCY.1,
                ..TableFaults::default()
            },
            Table::Faulty => TableFaults::faulty(),
        }
    }

    /// The table as seeded for a run.
    pub fn store(self, seed: u64) -> MemoryStore {
        MemoryStore::new().with_faults(self.faults()).with_seed(seed)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Quick => "quick table",
            Table::Faulty => "faulty table",
        })
    }
}

/// How the instances pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `STARTS_PER_SECOND / MAX_CONCURRENCY` per instance.
    Static,
    /// One budget in the table (`COORDINATION_TABLE`).
    Shared(Table),
}

impl Mode {
    /// Whether the instances lease from the table.
    pub fn is_shared(self) -> bool {
        matches!(self, Mode::Shared(_))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Static => f.write_str("static"),
            Mode::Shared(Table::Quick) => f.write_str("shared"),
            Mode::Shared(table) => write!(f, "shared, {table}"),
        }
    }
}

/// One deployment: a queue, a mapping and its instances, and their configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// Instances (pollers), each with its own starter.
    pub instances: usize,
    /// Messages in its queue.
    pub messages: u64,
    /// `STARTS_PER_SECOND`.
    pub rate: f64,
    /// `STARTS_BURST`.
    pub burst: f64,
    /// `MAX_CONCURRENCY`.
    pub max_concurrency: usize,
    /// The mapping's BatchSize.
    pub batch_size: usize,
}

/// Something that happens during a run besides the drain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// Nothing.
    None,
    /// The first deployment's last instance stops taking batches at `at`; once its last batch
    /// is done, a fresh instance (new starter, full local bucket) takes its place.
    Replace {
        /// When the old instance stops.
        at: Duration,
    },
    /// A caller we do not pace calls StartExecution at `rate` per second for the whole run.
    Foreign {
        /// Calls per second.
        rate: f64,
    },
    /// At `at`, the account's refill drops to `rate` (FakeSfn's bucket becomes `capacity`
    /// tokens, refilled at `rate`) and, in shared mode, the operator writes `SetLimits`.
    RateChange {
        /// When.
        at: Duration,
        /// The new refill, per second.
        rate: f64,
        /// FakeSfn's new bucket (it starts full).
        capacity: u64,
    },
}

/// One run of a scenario in one mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The scenario's number (1 – 6).
    pub id: u32,
    /// A short title.
    pub title: &'static str,
    /// The mode.
    pub mode: Mode,
    /// The account's bucket: B, r.
    pub account: (u64, f64),
    /// The deployments, all against the account.
    pub deployments: Vec<Deployment>,
    /// The T* the efficiency is judged against, seconds.
    pub ideal_seconds: f64,
    /// What else happens.
    pub event: Event,
    /// The run stops after this long, drained or not.
    pub max_run: Duration,
    /// Shared mode: the instances' clocks are off by this much, alternately ahead and behind.
    pub skew: Duration,
}

/// Scenario 4's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Replaced {
    /// When the fresh instance took its first batch, seconds.
    pub fresh_at: f64,
    /// Throttles (every instance's) from then on.
    pub throttled_after: u64,
    /// Throttles of the fresh instance's own calls.
    pub throttled_fresh: u64,
    /// Calls of the fresh instance.
    pub calls_fresh: u64,
}

/// Scenario 5's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Foreign {
    /// The foreign caller's rate, per second.
    pub rate: f64,
    /// Its calls, and how many were throttled.
    pub calls: u64,
    /// See `calls`.
    pub throttled: u64,
    /// Our starts per second over [`FOREIGN_WINDOW`].
    pub our_rate: f64,
    /// What the foreign caller leaves: r − its rate.
    pub left_rate: f64,
}

/// Scenario 6's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// When the rate changed, seconds.
    pub at: f64,
    /// The old and new refill, per second.
    pub old_rate: f64,
    /// See `old_rate`.
    pub new_rate: f64,
    /// Our rate over the 2 s before the change.
    pub before_rate: f64,
    /// Our rate from 1 s after the change to the end.
    pub after_rate: f64,
    /// Seconds from the change until every 1 s rate stays within 5 % of the new rate.
    pub settle_seconds: Option<f64>,
    /// Throttles after the change.
    pub throttled_after: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SharedRun {
    /// The plan.
    pub plan: Plan,
    /// Wall time from the start to the last busy queue being empty (or the run's end).
    pub drain_seconds: f64,
    /// Whether every queue emptied.
    pub drained: bool,
    /// Messages in all queues.
    pub messages: u64,
    /// Our executions started.
    pub started: u64,
    /// Our StartExecution calls, and how many were throttled.
    pub calls: u64,
    /// See `calls`.
    pub throttled: u64,
    /// Calls to the table (reads and writes).
    pub table_calls: u64,
    /// Slots paced by the static split because the table failed.
    pub fallbacks: u64,
    /// Reshards of the budget (`BudgetReshards`: it spread over another number of items).
    pub reshards: u64,
    /// Leased slots neither used nor given back (`LeaseSlotsDropped`).
    pub dropped: u64,
    /// Table writes refused (a condition did not hold), and shared decreases after throttles.
    pub refused: u64,
    /// See `refused`.
    pub decreases: u64,
    /// Faults the table injected, and writes it throttled for the per-item limit.
    pub table_faults: u64,
    /// The most write units the budget's item took in one second.
    pub busiest_item_units: u64,
    /// The p99 of the table calls' latency, ms (`LeaseLatency`).
    pub lease_latency_p99_ms: Option<f64>,
    /// Messages redriven to the DLQ.
    pub redriven: u64,
    /// Our starts per second, from the start.
    pub starts_per_second: Vec<u64>,
    /// Throttles per second (all callers), from the start.
    pub throttles_per_second: Vec<u64>,
    /// Scenario 4.
    pub replaced: Option<Replaced>,
    /// Scenario 5.
    pub foreign: Option<Foreign>,
    /// Scenario 6.
    pub change: Option<Change>,
}

impl SharedRun {
    /// T*/T, `None` if not drained.
    pub fn efficiency(&self) -> Option<f64> {
        if !self.drained {
            return None;
        }
        stats::efficiency(self.plan.ideal_seconds, self.drain_seconds)
    }

    /// Our throttled calls / our calls.
    pub fn throttle_ratio(&self) -> f64 {
        stats::ratio(self.throttled, self.calls)
    }

    /// Table calls per start (0 in static mode).
    pub fn table_calls_per_start(&self) -> f64 {
        stats::ratio(self.table_calls, self.started)
    }
}

/// The latency probe's measurements.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The mode.
    pub mode: Mode,
    /// Instances, each with its own starter.
    pub instances: usize,
    /// Units per simulated invocation.
    pub batch: usize,
    /// The offered load, starts per second (all instances).
    pub rate: f64,
    /// Starts made.
    pub starts: u64,
    /// Table calls made.
    pub table_calls: u64,
    /// Per start: from asking the pacer to the call going out (time in `reserve` + the slot's
    /// wait), milliseconds.
    pub latency_ms: Vec<f64>,
}

impl Probe {
    /// Table calls per start.
    pub fn table_calls_per_start(&self) -> f64 {
        stats::ratio(self.table_calls, self.starts)
    }

    /// Percentile `p` of the per-start latency, ms.
    pub fn latency(&self, p: f64) -> Option<f64> {
        stats::percentile(&self.latency_ms, p)
    }
}

/// `M = B + T* × r`: the backlog a bucket (`burst`, `rate`) drains in `ideal_seconds` at best.
pub fn backlog(burst: f64, rate: f64, ideal_seconds: f64) -> u64 {
    (burst + ideal_seconds * rate).round() as u64
}

/// The first offset `t ≥ 0` after `from` (in steps of `step`) from which every window
/// `[s, s + window)`, `from + t ≤ s` and `s + window ≤ until`, holds a rate within
/// `tolerance × target` of `target`. `None` if the last window is not within it (or there is
/// no window).
pub fn settle_seconds(
    times: &[Duration],
    from: Duration,
    until: Duration,
    window: Duration,
    step: Duration,
    target: f64,
    tolerance: f64,
) -> Option<f64> {
    if step.is_zero() || target <= 0.0 {
        return None;
    }
    let mut ok = Vec::new();
    let mut s = from;
    while s + window <= until {
        let rate = stats::rate_in(times, s, s + window);
        ok.push((rate - target).abs() <= tolerance * target);
        s += step;
    }
    if !ok.last().copied().unwrap_or(false) {
        return None;
    }
    let first_of_tail = ok.iter().rposition(|good| !good).map_or(0, |i| i + 1);
    Some(first_of_tail as f64 * step.as_secs_f64())
}

/// The plans of `scenarios` (1 – 6) for an account of `burst`, `rate`: static, shared with the
/// quick table, shared with the faulty one, side by side; scenario 2 also with the faulty table
/// and clock skew. `k10_batch` is the BatchSize of scenario 3.
pub fn plans(scenarios: &[u32], burst: u64, rate: f64, k10_batch: usize) -> Vec<Plan> {
    let b = burst as f64;
    let full = backlog(b, rate, IDEAL_SECONDS);
    let auto = crate::drain::auto_batch_size;
    let mut out = Vec::new();
    for &id in scenarios {
        let runs = [
            (Mode::Static, Duration::ZERO),
            (Mode::Shared(Table::Quick), Duration::ZERO),
            (Mode::Shared(Table::Faulty), Duration::ZERO),
            (Mode::Shared(Table::Faulty), SKEW),
        ];
        for (mode, skew) in runs {
            if !skew.is_zero() && id != 2 {
                continue;
            }
            let dep = |instances: usize, messages: u64, r: f64, bu: f64, batch: usize| Deployment {
                instances,
                messages,
                rate: r,
                burst: bu,
                max_concurrency: instances,
                batch_size: batch,
            };
            let plan = |title, deployments, ideal_seconds, event, max_run: u64| Plan {
                id,
                title,
                mode,
                account: (burst, rate),
                deployments,
                ideal_seconds,
                event,
                max_run: Duration::from_secs(max_run),
                skew,
            };
            let p = match id {
                1 => {
                    // Static: each deployment was given half the quota. Shared: both name the
                    // same key with the full quota as seed. Only the first has work.
                    let (r, bu) = match mode {
                        Mode::Static => (rate / 2.0, b / 2.0),
                        Mode::Shared(_) => (rate, b),
                    };
                    let batch = auto(rate, 2);
                    plan(
                        "two deployments, one busy",
                        vec![dep(2, full, r, bu, batch), dep(2, 0, r, bu, batch)],
                        IDEAL_SECONDS,
                        Event::None,
                        35,
                    )
                }
                2 => {
                    // Both told the whole quota; the combined backlog is M, half each.
                    let batch = auto(rate, 4);
                    plan(
                        "two deployments, both busy (M/2 each)",
                        vec![
                            dep(2, full / 2, rate, b, batch),
                            dep(2, full - full / 2, rate, b, batch),
                        ],
                        IDEAL_SECONDS,
                        Event::None,
                        30,
                    )
                }
                3 => plan(
                    "one deployment, K = 10",
                    vec![dep(10, full, rate, b, k10_batch)],
                    IDEAL_SECONDS,
                    Event::None,
                    30,
                ),
                4 => plan(
                    "an instance replaced mid-drain",
                    vec![dep(2, full, rate, b, auto(rate, 2))],
                    IDEAL_SECONDS,
                    Event::Replace { at: REPLACE_AT },
                    30,
                ),
                5 => {
                    let foreign = rate * FOREIGN_SHARE;
                    let left = rate - foreign;
                    plan(
                        "a foreign caller takes r/3",
                        vec![dep(2, backlog(b, left, IDEAL_SECONDS), left, b, auto(left, 2))],
                        IDEAL_SECONDS,
                        Event::Foreign { rate: foreign },
                        30,
                    )
                }
                6 => plan(
                    "the rate halves mid-run",
                    vec![dep(2, full, rate, b, auto(rate, 2))],
                    // Not a drain: the run stops CHANGE_AFTER past the change.
                    f64::NAN,
                    Event::RateChange {
                        at: CHANGE_AT,
                        rate: rate / 2.0,
                        // The account's bucket in a drain's steady state holds about the
                        // pacer's 100 ms reserve; from there it refills at the new rate.
                        capacity: (rate * sfn_pacer::config::BURST_RESERVE.as_secs_f64()).round() as u64,
                    },
                    (CHANGE_AT + CHANGE_AFTER).as_secs(),
                ),
                _ => continue,
            };
            out.push(p);
        }
    }
    out
}

/// A StartExecution that counts its calls and throttles (one per instance).
pub(crate) struct Counted {
    inner: Arc<dyn StartExecution>,
    /// Calls made.
    pub(crate) calls: AtomicU64,
    /// Calls answered with a throttle.
    pub(crate) throttled: AtomicU64,
}

impl Counted {
    pub(crate) fn new(inner: Arc<dyn StartExecution>) -> Counted {
        Counted {
            inner,
            calls: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl StartExecution for Counted {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.start_execution(request).await;
        if let Err(e) = &result {
            if classify(e) == Class::Throttled {
                self.throttled.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

/// Scenario 4: when the fresh instance started (seconds) and its counters.
type Fresh = Arc<Mutex<Option<(f64, Arc<Counted>)>>>;

/// Builds instances: their configuration, client and starter.
struct Builder {
    mode: Mode,
    skew: Duration,
    sdk: aws_config::SdkConfig,
    store: Arc<MemoryStore>,
    settings: Settings,
    counters: Mutex<Vec<Arc<Counted>>>,
}

impl Builder {
    fn starter(&self, d: &Deployment, queue: &Arc<SimQueue>) -> Result<(Arc<Starter>, Arc<Counted>), BenchError> {
        let s = &self.settings;
        let mut env = vec![
            ("STARTS_PER_SECOND", d.rate.to_string()),
            ("STARTS_BURST", d.burst.to_string()),
            ("MAX_CONCURRENCY", d.max_concurrency.to_string()),
            ("RETRY_BASE_SECONDS", s.retry_base_seconds.to_string()),
            ("RETRY_MAX_SECONDS", s.retry_max_seconds.to_string()),
            // Names from the body: the queues' message ids overlap, the order ids do not.
            ("EXECUTION_NAME", "body:/orderId".to_string()),
        ];
        if self.mode.is_shared() {
            env.push(("COORDINATION_TABLE", "bench-coordination".to_string()));
            env.push(("QUOTA_KEY", QUOTA_KEY.to_string()));
        }
        let cfg = config(&env)?;
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let seed = s.seed.wrapping_mul(1000).wrapping_add(counters.len() as u64);
        let inner: Arc<dyn StartExecution> = Arc::new(SfnStarter::new(&self.sdk, cfg.call_timeout));
        let delayed = Arc::new(RequestDelay::new(inner, s.request_latency, s.request_jitter, seed));
        let counted = Arc::new(Counted::new(delayed));
        counters.push(counted.clone());
        let sfn: Arc<dyn StartExecution> = counted.clone();
        // Alternately ahead and behind (the first instance ahead).
        let skew = match counters.len() % 2 {
            1 => -self.skew.as_secs_f64(),
            _ => self.skew.as_secs_f64(),
        };
        drop(counters);
        let starter = match self.mode {
            Mode::Static => Starter::new(cfg, sfn, queue.clone()),
            Mode::Shared(_) => Starter::coordinated(cfg, sfn, queue.clone(), self.store.clone())
                .with_clock(Clock::system().skewed(skew)),
        };
        Ok((Arc::new(starter), counted))
    }
}

/// Runs one plan against a fresh FakeSfn.
pub fn run(runtimes: &Runtimes, plan: &Plan, settings: &Settings, run_id: u64) -> Result<SharedRun, BenchError> {
    let (burst, rate) = plan.account;
    let sfn = settings.fake_sfn(runtimes, burst, rate)?;
    let result = runtimes.client.block_on(run_on(&sfn, plan, settings, run_id));
    runtimes.server.block_on(sfn.shutdown());
    result
}

fn mapping(d: &Deployment, settings: &Settings, max_run: Duration) -> Mapping {
    Mapping {
        batch_size: d.batch_size,
        batching_window: DEFAULT_BATCHING_WINDOW,
        function_timeout: settings.function_timeout,
        short_deadline: None,
        max_run,
        idle_poll: Duration::from_millis(10),
    }
}

/// Calls StartExecution at `rate` per second (no pacing, no SDK retries) until `stop`.
async fn foreign_caller(
    sdk: aws_config::SdkConfig,
    rate: f64,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    throttled: Arc<AtomicU64>,
) {
    let conf = aws_sdk_sfn::config::Builder::from(&sdk)
        .retry_config(RetryConfig::disabled())
        .build();
    let client: Arc<dyn StartExecution> = Arc::new(SfnStarter::from_client(aws_sdk_sfn::Client::from_conf(conf)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        i += 1;
        let (client, calls, throttled) = (client.clone(), calls.clone(), throttled.clone());
        tasks.spawn(async move {
            let request = StartRequest {
                state_machine_arn: STATE_MACHINE_ARN.to_string(),
                name: Some(format!("foreign-{i}")),
                input: "{}".to_string(),
                trace_header: None,
            };
            calls.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = client.start_execution(&request).await {
                if classify(&e) == Class::Throttled {
                    throttled.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

async fn run_on(sfn: &FakeSfnHandle, plan: &Plan, settings: &Settings, run_id: u64) -> Result<SharedRun, BenchError> {
    let (_, rate) = plan.account;
    let sdk = sdk_config(&sfn.endpoint()).await;
    let table = match plan.mode {
        Mode::Shared(table) => table,
        Mode::Static => Table::Quick,
    };
    let store = Arc::new(table.store(settings.seed.wrapping_add(run_id)));
    let builder = Arc::new(Builder {
        mode: plan.mode,
        skew: plan.skew,
        sdk: sdk.clone(),
        store: store.clone(),
        settings: settings.clone(),
        counters: Mutex::new(Vec::new()),
    });

    // The foreign caller runs from FOREIGN_LEAD before the drain to its end.
    let stop = Arc::new(AtomicBool::new(false));
    let (foreign_calls, foreign_throttled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let foreign_task = if let Event::Foreign { rate: foreign } = plan.event {
        let task = tokio::spawn(foreign_caller(
            sdk.clone(),
            foreign,
            stop.clone(),
            foreign_calls.clone(),
            foreign_throttled.clone(),
        ));
        tokio::time::sleep(FOREIGN_LEAD).await;
        Some(task)
    } else {
        None
    };

    let mut queues = Vec::new();
    let mut first = Vec::new();
    for (d, dep) in plan.deployments.iter().enumerate() {
        let queue = SimQueue::new(
            &format!("shared-{run_id}-{d}"),
            settings.max_receive_count,
            settings.visibility_timeout,
        );
        for i in 0..dep.messages {
            queue.send(body(d as u64 * 10_000_000 + i));
        }
        let mut starters = Vec::new();
        for _ in 0..dep.instances {
            starters.push(builder.starter(dep, &queue)?.0);
        }
        queues.push(queue);
        first.push(starters);
    }

    let origin = sfn.elapsed();
    let began = Instant::now();
    let fresh_at: Fresh = Arc::new(Mutex::new(None));
    let mut drives: Vec<tokio::task::JoinHandle<(usize, Vec<RunReport>, Duration)>> = Vec::new();
    for (d, (dep, starters)) in plan.deployments.iter().zip(first).enumerate() {
        let queue = queues[d].clone();
        let m = mapping(dep, settings, plan.max_run);
        match plan.event {
            Event::Replace { at } if d == 0 && starters.len() >= 2 => {
                let mut stay = starters;
                let leaving = stay.split_off(stay.len() - 1);
                let q = queue.clone();
                let main = m.clone();
                drives.push(tokio::spawn(async move {
                    let r = drive(q, stay, main).await;
                    (d, vec![r], began.elapsed())
                }));
                let (builder, dep, fresh_at) = (builder.clone(), dep.clone(), fresh_at.clone());
                let max_run = plan.max_run;
                drives.push(tokio::spawn(async move {
                    let old = drive(
                        queue.clone(),
                        leaving,
                        Mapping {
                            max_run: at,
                            ..m.clone()
                        },
                    )
                    .await;
                    // The old instance is gone; a fresh one, full local bucket, takes its place.
                    let Ok((fresh, counted)) = builder.starter(&dep, &queue) else {
                        return (d, vec![old], began.elapsed());
                    };
                    *fresh_at.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((began.elapsed().as_secs_f64(), counted));
                    let rest = max_run.saturating_sub(began.elapsed());
                    let new = drive(queue, vec![fresh], Mapping { max_run: rest, ..m }).await;
                    (d, vec![old, new], began.elapsed())
                }));
            }
            _ => drives.push(tokio::spawn(async move {
                let r = drive(queue, starters, m).await;
                (d, vec![r], began.elapsed())
            })),
        }
    }

    let change_task = if let Event::RateChange {
        at,
        rate: new_rate,
        capacity,
    } = plan.event
    {
        let (state, store, mode) = (sfn.state(), store.clone(), plan.mode);
        let burst = plan.deployments.first().map_or(0.0, |d| d.burst);
        Some(tokio::spawn(async move {
            tokio::time::sleep_until(began + at).await;
            let when = state.elapsed();
            state.set_bucket(Some((capacity, new_rate)));
            if mode.is_shared() {
                // What `sfn-pacer-quota set` does: read, then a compare-and-set (again if a
                // lease came in between, or the faulty table failed the call).
                let mut applied = false;
                for _ in 0..20 {
                    let Ok(current) = store.get(QUOTA_KEY).await else {
                        continue;
                    };
                    let Some(current) = current else { break };
                    let now = sfn_pacer::start::clock::system_seconds();
                    let update = current.plan_set_limits(new_rate, burst, now);
                    if let Ok(Written::Applied(_)) = store.write(QUOTA_KEY, &update).await {
                        applied = true;
                        break;
                    }
                }
                if !applied {
                    return Err("SetLimits: refused or failed 20 times in a row".to_string());
                }
            }
            Ok(when)
        }))
    } else {
        None
    };

    let mut ends = vec![Duration::ZERO; plan.deployments.len()];
    let mut function = sfn_pacer::metrics::Report::default();
    for handle in drives {
        let (d, reports, end) = handle
            .await
            .map_err(|e| format!("the simulated mapping panicked: {e}"))?;
        ends[d] = ends[d].max(end);
        for r in &reports {
            function.add_counts(&r.function);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(task) = foreign_task {
        task.await.map_err(|e| format!("the foreign caller panicked: {e}"))?;
    }
    let changed_at = match change_task {
        Some(task) => Some(task.await.map_err(|e| format!("the rate change panicked: {e}"))??),
        None => None,
    };

    let drained = queues.iter().all(|q| q.is_drained());
    let drain_seconds = plan
        .deployments
        .iter()
        .zip(&ends)
        .filter(|(d, _)| d.messages > 0)
        .map(|(_, e)| e.as_secs_f64())
        .fold(0.0, f64::max);
    let redriven = queues
        .iter()
        .flat_map(|q| q.dlq())
        .filter(|e| matches!(e, DlqEntry::Redriven { .. }))
        .count() as u64;
    let ours: Vec<Duration> = sfn
        .executions()
        .iter()
        .filter(|e| e.name.starts_with("order-"))
        .map(|e| e.accepted_at)
        .collect();
    let throttle_times = sfn.throttle_times();
    let counters = builder.counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let calls = counters.iter().map(|c| c.calls.load(Ordering::Relaxed)).sum();
    let throttled = counters.iter().map(|c| c.throttled.load(Ordering::Relaxed)).sum();
    let rel = |t: Duration| t.saturating_sub(origin);
    let ours_rel: Vec<Duration> = ours.iter().map(|t| rel(*t)).collect();
    let second = Duration::from_secs(1);
    let slots = drain_seconds.ceil() as usize;

    let replaced = fresh_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(at, counted)| Replaced {
            fresh_at: *at,
            throttled_after: throttle_times.iter().filter(|t| rel(**t).as_secs_f64() >= *at).count() as u64,
            throttled_fresh: counted.throttled.load(Ordering::Relaxed),
            calls_fresh: counted.calls.load(Ordering::Relaxed),
        });
    let foreign = match plan.event {
        Event::Foreign { rate: foreign } => Some(Foreign {
            rate: foreign,
            calls: foreign_calls.load(Ordering::Relaxed),
            throttled: foreign_throttled.load(Ordering::Relaxed),
            our_rate: stats::rate_in(&ours_rel, FOREIGN_WINDOW.0, FOREIGN_WINDOW.1),
            left_rate: rate - foreign,
        }),
        _ => None,
    };
    let change = match (plan.event, changed_at) {
        (Event::RateChange { rate: new_rate, .. }, Some(when)) => {
            let at = rel(when);
            let until = Duration::from_secs_f64(drain_seconds).min(plan.max_run);
            Some(Change {
                at: at.as_secs_f64(),
                old_rate: rate,
                new_rate,
                before_rate: stats::rate_in(&ours_rel, at.saturating_sub(2 * second), at),
                after_rate: stats::rate_in(&ours_rel, at + second, until),
                settle_seconds: settle_seconds(
                    &ours_rel,
                    at,
                    until,
                    SETTLE_WINDOW,
                    SETTLE_STEP,
                    new_rate,
                    SETTLE_TOLERANCE,
                ),
                throttled_after: throttle_times.iter().filter(|t| **t >= when).count() as u64,
            })
        }
        _ => None,
    };
    Ok(SharedRun {
        plan: plan.clone(),
        drain_seconds,
        drained,
        messages: plan.deployments.iter().map(|d| d.messages).sum(),
        started: ours.len() as u64,
        calls,
        throttled,
        table_calls: store.calls(),
        fallbacks: function.fallbacks,
        reshards: function.budget_reshards,
        dropped: function.lease_slots_dropped,
        refused: store.budget_counts().refused,
        decreases: store.budget_counts().decreases,
        table_faults: store.injected().values().sum(),
        busiest_item_units: store.busiest_item().map_or(0, |(_, units)| units),
        lease_latency_p99_ms: function.lease_latency_p99_ms(),
        redriven,
        starts_per_second: stats::series(&ours, origin, second, slots),
        throttles_per_second: stats::series(&throttle_times, origin, second, slots),
        replaced,
        foreign,
        change,
    })
}

/// The table's added latency per start: `instances` starters pace an offered load of `rate`
/// starts per second (all together), arriving as invocations of `batch` units each run
/// concurrently (at most MAX_IN_FLIGHT at once, as the handler does), through
/// `Pacing::reserve` alone: no network, each "call" takes [`PROBE_CALL`]. The account's quota
/// (`burst`, `quota_rate`) is configured; with `rate` at most the quota's rate the bucket never
/// runs dry, so the static split never waits and all of the shared mode's latency is the table's.
#[allow(clippy::too_many_arguments)]
pub fn probe(
    runtimes: &Runtimes,
    mode: Mode,
    instances: usize,
    batch: usize,
    rate: f64,
    quota: (u64, f64),
    length: Duration,
) -> Result<Probe, BenchError> {
    runtimes.client.block_on(async move {
        let store = Arc::new(Table::Quick.store(1));
        let queue = SimQueue::new("probe", 5, Duration::from_secs(30));
        let sfn: Arc<dyn StartExecution> = Arc::new(InstantStart::new(false));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let end = Instant::now() + length;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..instances {
            let cfg = config(&[
                ("STARTS_PER_SECOND", quota.1.to_string()),
                ("STARTS_BURST", quota.0.to_string()),
                ("MAX_CONCURRENCY", instances.to_string()),
                ("QUOTA_KEY", QUOTA_KEY.to_string()),
            ])?;
            let max_in_flight = cfg.max_in_flight;
            let starter = Arc::new(match mode {
                Mode::Static => Starter::new(cfg, sfn.clone(), queue.clone()),
                Mode::Shared(_) => Starter::coordinated(cfg, sfn.clone(), queue.clone(), store.clone()),
            });
            let every = Duration::from_secs_f64(batch as f64 * instances as f64 / rate);
            let latencies = latencies.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                let mut invocations = tokio::task::JoinSet::new();
                while Instant::now() < end {
                    tick.tick().await;
                    let (starter, latencies) = (starter.clone(), latencies.clone());
                    invocations.spawn(invocation(starter, batch, max_in_flight, latencies));
                }
                while invocations.join_next().await.is_some() {}
            });
        }
        while tasks.join_next().await.is_some() {}
        let latency_ms = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Probe {
            mode,
            instances,
            batch,
            rate,
            starts: latency_ms.len() as u64,
            table_calls: store.calls(),
            latency_ms,
        })
    })
}

/// One simulated invocation of the probe: `batch` units, at most `max_in_flight` at once; each
/// reserves a slot (demand: the units not yet done less those holding a slot, as the
/// handler's), waits for it, "calls".
async fn invocation(starter: Arc<Starter>, batch: usize, max_in_flight: usize, latencies: Arc<Mutex<Vec<f64>>>) {
    let pending = Arc::new(AtomicU64::new(batch as u64));
    let holding = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let latest = Instant::now() + Duration::from_secs(10);
    let mut units = tokio::task::JoinSet::new();
    for _ in 0..batch {
        let (starter, pending, holding, permits, latencies) = (
            starter.clone(),
            pending.clone(),
            holding.clone(),
            permits.clone(),
            latencies.clone(),
        );
        units.spawn(async move {
            let Ok(_permit) = permits.acquire().await else { return };
            let asked = Instant::now();
            // As the handler: the units that still need a slot, not those holding one, read
            // when a lease is planned.
            let demand = || {
                pending
                    .load(Ordering::Relaxed)
                    .saturating_sub(holding.load(Ordering::Relaxed))
                    .max(1)
            };
            let slot = starter.pacing().reserve(latest, demand).await;
            if let Some(slot) = slot {
                holding.fetch_add(1, Ordering::Relaxed);
                starter.pacing().ready(slot).await;
                let waited = asked.elapsed().as_secs_f64() * 1e3;
                latencies.lock().unwrap_or_else(|p| p.into_inner()).push(waited);
                tokio::time::sleep(PROBE_CALL).await;
                holding.fetch_sub(1, Ordering::Relaxed);
                starter.pacing().on_success(slot).await;
            }
            pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
    while units.join_next().await.is_some() {}
    if let Pacing::Shared(shared) = starter.pacing() {
        shared.give_back(Instant::now() + Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn the_backlog_drains_in_ideal_seconds_at_best() {
        assert_eq!(backlog(1300.0, 300.0, 10.0), 4300);
        assert_eq!(backlog(1300.0, 200.0, 10.0), 3300);
        assert_eq!(
            stats::ideal_drain_seconds(backlog(1300.0, 200.0, 10.0), 1300.0, 200.0),
            10.0
        );
    }

    /// Events at `rate` per second over `[from, to)` (ms).
    fn even(rate: f64, from: u64, to: u64) -> Vec<Duration> {
        let n = ((to - from) as f64 * rate / 1000.0).round() as u64;
        (0..n)
            .map(|i| ms(from) + Duration::from_secs_f64(i as f64 / rate))
            .collect()
    }

    #[test]
    fn settling_is_the_start_of_the_last_run_of_good_windows() {
        // 300/s until 4 s, 150/s from then on: settled at once.
        let mut t = even(300.0, 0, 4000);
        t.extend(even(150.0, 4000, 11_000));
        let settle = |times: &[Duration]| settle_seconds(times, ms(4000), ms(11_000), ms(1000), ms(100), 150.0, 0.05);
        assert_eq!(settle(&t), Some(0.0));
        // 300/s until 5 s: the first window within 5 % starts at 5 − 1/20 s (≤ 7.5 extra per 150).
        let mut late = even(300.0, 0, 5000);
        late.extend(even(150.0, 5000, 11_000));
        let s = settle(&late).unwrap();
        assert!((0.9..=1.0).contains(&s), "{s}");
        // A dip back out of tolerance later moves the settling time past it.
        let mut dip = even(150.0, 4000, 8000);
        dip.extend(even(75.0, 8000, 8500));
        dip.extend(even(150.0, 8500, 11_000));
        let s = settle(&dip).unwrap();
        assert!((4.4..=4.6).contains(&s), "{s}");
        // Never within: None; no window at all: None.
        assert_eq!(settle(&even(300.0, 0, 11_000)), None);
        assert_eq!(
            settle_seconds(&t, ms(4000), ms(4500), ms(1000), ms(100), 150.0, 0.05),
            None
        );
        assert_eq!(
            settle_seconds(&t, ms(4000), ms(11_000), ms(1000), Duration::ZERO, 150.0, 0.05),
            None
        );
    }

    #[test]
    fn plans_come_static_quick_and_faulty_with_the_scenarios_configuration() {
        let p = plans(&[1, 2, 3, 4, 5, 6, 9], 1300, 300.0, 100);
        assert_eq!(
            p.len(),
            19,
            "three runs a scenario, scenario 2 a fourth; unknown ones skipped"
        );
        let modes: Vec<Mode> = p.iter().take(3).map(|p| p.mode).collect();
        assert_eq!(
            modes,
            [Mode::Static, Mode::Shared(Table::Quick), Mode::Shared(Table::Faulty)]
        );
        // 1: static halves the quota per deployment; shared seeds the whole quota.
        assert_eq!((p[0].deployments[0].rate, p[0].deployments[0].burst), (150.0, 650.0));
        assert_eq!((p[1].deployments[0].rate, p[1].deployments[0].burst), (300.0, 1300.0));
        assert_eq!(p[1].deployments[1].messages, 0, "the second deployment is idle");
        // 2: the combined backlog is M, each deployment told the whole quota; skewed once.
        let two: Vec<&Plan> = p.iter().filter(|p| p.id == 2).collect();
        assert_eq!(two.len(), 4);
        assert_eq!(two[0].deployments.iter().map(|d| d.messages).sum::<u64>(), 4300);
        assert_eq!(two[0].deployments[0].rate, 300.0);
        assert_eq!((two[3].mode, two[3].skew), (Mode::Shared(Table::Faulty), SKEW));
        assert!(p.iter().filter(|p| p.id != 2).all(|p| p.skew.is_zero()));
        let find = |id: u32| p.iter().find(|p| p.id == id).unwrap();
        // 3: K = 10, BatchSize 100.
        assert_eq!(
            (find(3).deployments[0].instances, find(3).deployments[0].batch_size),
            (10, 100)
        );
        // 5: the backlog is sized on what the foreign caller leaves, 200/s.
        assert_eq!(find(5).deployments[0].messages, 3300);
        assert_eq!(find(5).deployments[0].rate, 200.0);
        // 6: the FakeSfn bucket drops to the 100 ms reserve, refilled at r/2.
        assert_eq!(
            find(6).event,
            Event::RateChange {
                at: CHANGE_AT,
                rate: 150.0,
                capacity: 30
            }
        );
    }

    #[test]
    fn the_faulty_table_is_the_issues_profile() {
        let f = Table::Faulty.faults();
        assert_eq!((f.latency_min, f.latency_max), (ms(10), ms(30)));
        assert_eq!((f.slow_probability, f.slow_delay), (0.03, ms(150)));
        assert_eq!(
            (
                f.error_500_probability,
                f.lost_answer_probability,
                f.throttle_probability
            ),
            (0.01, 0.01, 0.01)
        );
        assert_eq!(f.item_write_units_per_second, Some(1_000.0));
        assert_eq!(Table::Quick.faults().error_500_probability, 0.0);
    }
}
