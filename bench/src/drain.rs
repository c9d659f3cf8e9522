//! Drain at the quota's limit: the same backlog of M messages through the real handler,
//! driven like the event source mapping (`sim::drive`, K instances, redelivery), against
//! the fake Step Functions endpoint's exact token bucket, with three strategies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sfn::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_sfn::config::timeout::TimeoutConfig;
use local_stack::fake_sfn::{FakeSfn, FakeSfnHandle};
use local_stack::sim::{drive, DlqEntry, Mapping, SimQueue, DEFAULT_BATCHING_WINDOW};
use sfn_pacer::aws::SfnStarter;
use sfn_pacer::start::StartExecution;
use sfn_pacer::Starter;

use crate::common::{body, config, sdk_config, BenchError, RequestDelay, Runtimes, SERVER_THREAD};
use crate::cpu;
use crate::stats;

/// How StartExecution is paced and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// No pacing (a huge budget), one attempt in our loop, the SDK's standard retry (3 attempts).
    Naive,
    /// No pacing, one attempt in our loop, the SDK's adaptive retry mode (client-side rate limiter).
    SdkAdaptive,
    /// The real configuration: budget = the quota, split over K instances; SDK retries off.
    Ours,
    /// A prototype of the proposed fix, by configuration only: as [`Strategy::Ours`] with
    /// `STARTS_BURST` = B − r × headroom (the pacer keeps that much of the bucket in reserve
    /// for network jitter).
    OursHeadroom,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 4] = [
        Strategy::Naive,
        Strategy::SdkAdaptive,
        Strategy::Ours,
        Strategy::OursHeadroom,
    ];

    /// Whether this is our pacer (paced, SDK retries off).
    pub fn is_ours(self) -> bool {
        matches!(self, Strategy::Ours | Strategy::OursHeadroom)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Naive => "naive",
            Strategy::SdkAdaptive => "sdk-adaptive",
            Strategy::Ours => "ours",
            Strategy::OursHeadroom => "ours+headroom",
        })
    }
}

/// One quota and instance count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// Simulated Lambda instances (the mapping's MaximumConcurrency).
    pub instances: usize,
    /// The quota's bucket, in calls.
    pub burst: u64,
    /// The quota's refill, calls per second.
    pub refill_per_second: f64,
    /// Messages in the backlog.
    pub messages: u64,
}

/// The BatchSize for an instance's share: half a second of it (`0.5 × r / K` messages),
/// between 10 (the mapping's default without a batching window) and 100 (the template's
/// default). Large enough to keep 10+ calls in flight, small enough that the batches held by
/// the last busy instances at the end of a drain take at most about half a second.
pub fn auto_batch_size(refill_per_second: f64, instances: usize) -> usize {
    let half_second = 0.5 * refill_per_second / instances.max(1) as f64;
    (half_second.round() as usize).clamp(10, 100)
}

impl Scenario {
    /// The mapping's BatchSize in `settings` for this scenario.
    pub fn batch_size(&self, settings: &Settings) -> usize {
        settings
            .batch_size
            .unwrap_or_else(|| auto_batch_size(self.refill_per_second, self.instances))
    }

    /// The fastest possible drain `T*`, seconds.
    pub fn ideal_seconds(&self) -> f64 {
        stats::ideal_drain_seconds(self.messages, self.burst as f64, self.refill_per_second)
    }
}

/// What stays the same across the runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The endpoint's delay before each response (service time and response path): base, in ms.
    pub response_latency: Duration,
    /// Uniform jitter added to the response latency, `[0, jitter]`.
    pub response_jitter: Duration,
    /// The request path's delay before the call reaches the quota: base.
    pub request_latency: Duration,
    /// Uniform jitter added to the request-path delay.
    pub request_jitter: Duration,
    /// Records per invocation (BatchSize); `None`: [`auto_batch_size`].
    pub batch_size: Option<usize>,
    /// [`Strategy::OursHeadroom`]: the bucket kept in reserve, as time of refill
    /// (`STARTS_BURST` = B − r × headroom).
    pub headroom: Duration,
    /// Receives before the queue's redrive moves a message to the DLQ.
    pub max_receive_count: u32,
    /// The queue's visibility timeout (applies when the handler does not set one).
    pub visibility_timeout: Duration,
    /// `RETRY_BASE_SECONDS` / `RETRY_MAX_SECONDS` of every strategy: the visibility backoff of
    /// a message reported for retry, whole seconds.
    pub retry_base_seconds: u64,
    /// See `retry_base_seconds`.
    pub retry_max_seconds: u64,
    /// The function timeout given to each invocation.
    pub function_timeout: Duration,
    /// A run stops after this long, drained or not.
    pub max_run: Duration,
    /// Seed of the endpoint's jitter and of the request-path jitter.
    pub seed: u64,
}

impl Settings {
    /// A fresh FakeSfn on the server runtime: the account's bucket (`burst`, `rate` per second)
    /// and these settings' response latency and seed.
    pub fn fake_sfn(&self, runtimes: &Runtimes, burst: u64, rate: f64) -> Result<FakeSfnHandle, BenchError> {
        let builder = FakeSfn::builder()
            .bucket(burst, rate)
            .latency(self.response_latency, self.response_jitter)
            .seed(self.seed);
        runtimes
            .server
            .block_on(builder.start())
            .map_err(|e| format!("starting the fake Step Functions endpoint: {e}").into())
    }
}

/// The measurements of one run.
#[derive(Debug, Clone)]
pub struct DrainResult {
    /// The strategy.
    pub strategy: Strategy,
    /// The quota and instance count.
    pub scenario: Scenario,
    /// The mapping's BatchSize.
    pub batch_size: usize,
    /// The configured `STARTS_BURST` of ours (the quota's B, less any headroom); `None` for
    /// the baselines.
    pub starts_burst: Option<f64>,
    /// Drain time T: from the first invocation to the queue being empty, seconds.
    pub drain_seconds: f64,
    /// Whether the queue emptied before `max_run`.
    pub drained: bool,
    /// From the first invocation to the last execution started, seconds.
    pub last_start_seconds: f64,
    /// Distinct executions started.
    pub started: u64,
    /// StartExecution requests the endpoint received (every attempt, SDK retries included).
    pub calls: u64,
    /// Requests answered with ThrottlingException.
    pub throttled: u64,
    /// Messages moved to the DLQ by the redrive (maxReceiveCount reached).
    pub redriven: u64,
    /// Messages the function sent to the DLQ itself (permanent failures).
    pub dead_lettered: u64,
    /// Enqueue-to-start time of each started message, seconds (unsorted).
    pub enqueue_to_start: Vec<f64>,
    /// Process CPU time over the run (getrusage: handler, SDK, queue and the fake endpoint).
    pub cpu_process: Duration,
    /// CPU time of the fake endpoint's threads over the run.
    pub cpu_server: Duration,
    /// Records reported in `batchItemFailures` (each comes back for another receive).
    pub reported: u64,
    /// Invocations made, and those that failed or timed out.
    pub invocations: u64,
    /// See `invocations`.
    pub failed_invocations: u64,
    /// New executions per second from the first invocation.
    pub starts_per_second: Vec<u64>,
    /// Throttles per second from the first invocation.
    pub throttles_per_second: Vec<u64>,
}

impl DrainResult {
    /// Efficiency `T*/T`; `None` if the queue did not drain.
    pub fn efficiency(&self) -> Option<f64> {
        if !self.drained {
            return None;
        }
        stats::efficiency(self.scenario.ideal_seconds(), self.drain_seconds)
    }

    /// Throttled calls / all calls.
    pub fn throttle_ratio(&self) -> f64 {
        stats::ratio(self.throttled, self.calls)
    }

    /// Enqueue-to-start percentile `p`, seconds.
    pub fn enqueue_to_start(&self, p: f64) -> Option<f64> {
        stats::percentile(&self.enqueue_to_start, p)
    }

    /// Process CPU per message, microseconds.
    pub fn cpu_per_message_us(&self) -> f64 {
        stats::micros_per(self.cpu_process, self.scenario.messages)
    }

    /// CPU per message outside the fake endpoint's threads (handler, SDK, simulated queue), µs.
    pub fn client_cpu_per_message_us(&self) -> f64 {
        stats::micros_per(self.cpu_process.saturating_sub(self.cpu_server), self.scenario.messages)
    }
}

/// `STARTS_BURST` of our strategies: the quota's bucket, less the headroom's refill for
/// [`Strategy::OursHeadroom`] (at least 1).
fn starts_burst(strategy: Strategy, scenario: &Scenario, settings: &Settings) -> f64 {
    let burst = scenario.burst as f64;
    if strategy == Strategy::OursHeadroom {
        (burst - scenario.refill_per_second * settings.headroom.as_secs_f64()).max(1.0)
    } else {
        burst
    }
}

/// The starter's environment for a strategy.
fn environment(strategy: Strategy, scenario: &Scenario, settings: &Settings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("MAX_CONCURRENCY", scenario.instances.to_string()),
        ("RETRY_BASE_SECONDS", settings.retry_base_seconds.to_string()),
        ("RETRY_MAX_SECONDS", settings.retry_max_seconds.to_string()),
    ];
    match strategy {
        Strategy::Ours | Strategy::OursHeadroom => {
            env.push(("STARTS_PER_SECOND", scenario.refill_per_second.to_string()));
            env.push(("STARTS_BURST", starts_burst(strategy, scenario, settings).to_string()));
        }
        Strategy::Naive | Strategy::SdkAdaptive => {
            // No pacing; the SDK retries inside one attempt of ours, so give the call room.
            env.push(("STARTS_PER_SECOND", "1000000000".to_string()));
            env.push(("STARTS_BURST", "1000000000".to_string()));
            env.push(("MAX_ATTEMPTS", "1".to_string()));
            env.push(("CALL_TIMEOUT_MS", "10000".to_string()));
            env.push(("DEADLINE_MARGIN_MS", "11000".to_string()));
        }
    }
    env
}

/// The StartExecution client of one simulated instance.
fn client(
    strategy: Strategy,
    sdk: &aws_config::SdkConfig,
    call_timeout: Duration,
    partition: String,
) -> Arc<dyn StartExecution> {
    match strategy {
        Strategy::Ours | Strategy::OursHeadroom => Arc::new(SfnStarter::new(sdk, call_timeout)),
        Strategy::Naive | Strategy::SdkAdaptive => {
            let retry = if strategy == Strategy::Naive {
                RetryConfig::standard()
            } else {
                RetryConfig::adaptive()
            };
            // Each instance is its own process in Lambda: its own retry quota and rate limiter
            // (the SDK shares them per partition name in a static map).
            let conf = aws_sdk_sfn::config::Builder::from(sdk)
                .retry_config(retry)
                .retry_partition(RetryPartition::new(partition))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(2))
                        .operation_attempt_timeout(Duration::from_secs(2))
                        .operation_timeout(Duration::from_secs(9))
                        .build(),
                )
                .build();
            Arc::new(SfnStarter::from_client(aws_sdk_sfn::Client::from_conf(conf)))
        }
    }
}

/// Called about every 100 ms with (messages done: started or redriven, messages).
pub type ProgressFn<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Runs one strategy on one scenario. `run_id` keeps SDK retry partitions apart across runs.
pub fn run(
    runtimes: &Runtimes,
    strategy: Strategy,
    scenario: Scenario,
    settings: &Settings,
    run_id: u64,
    progress: ProgressFn<'_>,
) -> Result<DrainResult, BenchError> {
    let sfn = settings.fake_sfn(runtimes, scenario.burst, scenario.refill_per_second)?;
    let result = runtimes
        .client
        .block_on(run_on(&sfn, strategy, scenario, settings, run_id, progress));
    runtimes.server.block_on(sfn.shutdown());
    result
}

async fn run_on(
    sfn: &FakeSfnHandle,
    strategy: Strategy,
    scenario: Scenario,
    settings: &Settings,
    run_id: u64,
    progress: ProgressFn<'_>,
) -> Result<DrainResult, BenchError> {
    let sdk = sdk_config(&sfn.endpoint()).await;
    let queue = SimQueue::new(
        &format!("bench-{run_id}"),
        settings.max_receive_count,
        settings.visibility_timeout,
    );
    let env = environment(strategy, &scenario, settings);
    let mut starters = Vec::with_capacity(scenario.instances);
    for i in 0..scenario.instances {
        let cfg = config(&env)?;
        let inner = client(strategy, &sdk, cfg.call_timeout, format!("bench-{run_id}-{i}"));
        let delayed: Arc<dyn StartExecution> = Arc::new(RequestDelay::new(
            inner,
            settings.request_latency,
            settings.request_jitter,
            settings.seed.wrapping_mul(1000).wrapping_add(i as u64),
        ));
        starters.push(Arc::new(Starter::new(cfg, delayed, queue.clone())));
    }
    for i in 0..scenario.messages {
        queue.send(body(i));
    }
    let mapping = Mapping {
        batch_size: scenario.batch_size(settings),
        batching_window: DEFAULT_BATCHING_WINDOW,
        function_timeout: settings.function_timeout,
        short_deadline: None,
        max_run: settings.max_run,
        idle_poll: Duration::from_millis(10),
    };

    let cpu_before = cpu::process_cpu()?;
    let server_before = cpu::named_threads_cpu(SERVER_THREAD)?;
    // The backlog is complete: every message counts as enqueued now.
    let origin = sfn.elapsed();
    let drive = tokio::spawn(drive(queue.clone(), starters, mapping));
    // Report progress until the drive ends; bounded by the drive's own max_run.
    let report = {
        let mut drive = drive;
        loop {
            tokio::select! {
                r = &mut drive => break r.map_err(|e| format!("the simulated mapping panicked: {e}"))?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let done = sfn.execution_count() as u64 + queue.dlq().len() as u64;
                    progress(done, scenario.messages);
                }
            }
        }
    };
    let cpu_process = cpu::process_cpu()?.saturating_sub(cpu_before);
    let cpu_server = cpu::named_threads_cpu(SERVER_THREAD)?.saturating_sub(server_before);

    let executions = sfn.executions();
    let accepted: Vec<Duration> = executions.iter().map(|e| e.accepted_at).collect();
    let throttle_times = sfn.throttle_times();
    let server_stats = sfn.stats();
    let dlq = queue.dlq();
    let redriven = dlq.iter().filter(|e| matches!(e, DlqEntry::Redriven { .. })).count() as u64;
    let dead_lettered = dlq.len() as u64 - redriven;
    let enqueue_to_start = accepted
        .iter()
        .map(|t| t.saturating_sub(origin).as_secs_f64())
        .collect();
    let last_start_seconds = accepted
        .iter()
        .max()
        .map(|t| t.saturating_sub(origin).as_secs_f64())
        .unwrap_or(0.0);
    let slots = report.elapsed.as_secs() as usize + 1;
    let second = Duration::from_secs(1);
    progress(executions.len() as u64 + redriven, scenario.messages);
    Ok(DrainResult {
        strategy,
        scenario,
        batch_size: scenario.batch_size(settings),
        starts_burst: strategy.is_ours().then(|| starts_burst(strategy, &scenario, settings)),
        drain_seconds: report.elapsed.as_secs_f64(),
        drained: report.drained,
        last_start_seconds,
        started: executions.len() as u64,
        calls: server_stats.start_execution_requests,
        throttled: server_stats.throttled(),
        redriven,
        dead_lettered,
        enqueue_to_start,
        cpu_process,
        cpu_server,
        reported: report.reported,
        invocations: report.invocations,
        failed_invocations: report.failed_invocations,
        starts_per_second: stats::series(&accepted, origin, second, slots),
        throttles_per_second: stats::series(&throttle_times, origin, second, slots),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auto_batch_is_half_a_second_of_the_share_within_10_to_100() {
        assert_eq!(auto_batch_size(300.0, 1), 100, "150 capped at the template's 100");
        assert_eq!(auto_batch_size(150.0, 1), 75);
        assert_eq!(auto_batch_size(300.0, 10), 15);
        assert_eq!(auto_batch_size(150.0, 10), 10, "7.5 raised to the mapping's default 10");
        assert_eq!(auto_batch_size(150.0, 0), 75, "0 instances is taken as 1");
    }

    fn settings(headroom_ms: u64) -> Settings {
        Settings {
            response_latency: Duration::ZERO,
            response_jitter: Duration::ZERO,
            request_latency: Duration::ZERO,
            request_jitter: Duration::ZERO,
            batch_size: None,
            headroom: Duration::from_millis(headroom_ms),
            max_receive_count: 5,
            visibility_timeout: Duration::from_secs(30),
            retry_base_seconds: 1,
            retry_max_seconds: 8,
            function_timeout: Duration::from_secs(30),
            max_run: Duration::from_secs(60),
            seed: 1,
        }
    }

    #[test]
    fn the_ideal_drain_follows_the_scenario() {
        let s = Scenario {
            instances: 10,
            burst: 1300,
            refill_per_second: 300.0,
            messages: 4300,
        };
        assert_eq!(s.ideal_seconds(), 10.0);
        assert_eq!(s.batch_size(&settings(100)), 15);
        assert_eq!(
            s.batch_size(&Settings {
                batch_size: Some(100),
                ..settings(100)
            }),
            100
        );
    }

    #[test]
    fn only_the_headroom_prototype_lowers_the_burst() {
        let s = Scenario {
            instances: 10,
            burst: 1300,
            refill_per_second: 300.0,
            messages: 4300,
        };
        assert_eq!(starts_burst(Strategy::Ours, &s, &settings(100)), 1300.0);
        assert_eq!(starts_burst(Strategy::OursHeadroom, &s, &settings(100)), 1270.0);
        let tiny = Scenario { burst: 10, ..s };
        assert_eq!(
            starts_burst(Strategy::OursHeadroom, &tiny, &settings(1000)),
            1.0,
            "never below 1"
        );
        let env = environment(Strategy::Naive, &s, &settings(100));
        assert!(
            env.contains(&("MAX_ATTEMPTS", "1".to_string())),
            "baselines leave retries to the SDK"
        );
        assert!(env.contains(&("MAX_CONCURRENCY", "10".to_string())));
    }
}
