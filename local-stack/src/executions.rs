//! Standard executions that take time, in this process, for simulated runs on tokio's clock
//! (paused in the chaos test and the bench, so that ten-minute executions take no real time).
//!
//! - [`Executions`] is Step Functions for the function: StartExecution (Standard's idempotency by
//!   name: the same name and input while it runs returns it, else `ExecutionAlreadyExists`; the
//!   account's token bucket, `ThrottlingException` beyond it; some answers lost after the start is
//!   applied) and DescribeExecution. Each execution runs for a duration drawn from [`Durations`]
//!   and then ends (SUCCEEDED); it records every execution's start and stop, from which
//!   [`peak_running`] counts the most that ran at once.
//! - [`EventBridge`] delivers each ended execution's status change event to the release function
//!   ([`Starter::dispatch`]) as EventBridge and Lambda's asynchronous invoke do, with
//!   [`EventFaults`]: some never, some twice, each up to a while late (so out of order); a
//!   delivery whose invocation fails is retried twice, a minute and two minutes later (Lambda's
//!   default), then lost. [`schedule`] sends the reclaim's "Scheduled Event" at a fixed period.
//!
//! The demo uses [`EventFaults`] and [`EventBridge`] with moto's executions (which the local stack
//! ends itself, [`crate::events`]).
//!
//! What it leaves out: Express workflows (they send no events), redrives, executions that fail or
//! time out (every one succeeds: the cap treats every terminal status alike), and the latency of
//! Step Functions' calls (each is answered at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lambda_runtime::{Context, LambdaEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sfn_pacer::start::clock::Clock;
use sfn_pacer::start::running::describe::{DescribeError, DescribeExecution, Described};
use sfn_pacer::start::running::execution_arn;
use sfn_pacer::start::{StartError, StartExecution, StartRequest, Started};
use sfn_pacer::Starter;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::events::{scheduled, status_change_of, Change};
use crate::fake_sfn::TokenBucket;

/// Lambda's asynchronous retries of a failed invocation: 2, a minute then two minutes later.
pub const ASYNC_RETRIES: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(120)];

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long executions run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Durations {
    /// Each the same.
    Fixed(Duration),
    /// Uniform in `[min, max]`.
    Uniform(Duration, Duration),
}

impl Durations {
    fn draw(&self, rng: &mut StdRng) -> Duration {
        match *self {
            Durations::Fixed(d) => d,
            Durations::Uniform(min, max) => min + max.saturating_sub(min).mul_f64(rng.random::<f64>()),
        }
    }
}

/// One execution: when it started and stops, as offsets from the [`Executions`]' origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The execution's name.
    pub name: String,
    /// Its input.
    pub input: String,
    /// When it started.
    pub start: Duration,
    /// When it stops (or stopped).
    pub stop: Duration,
}

#[derive(Debug, Default)]
struct State {
    runs: Vec<Run>,
    by_name: HashMap<String, usize>,
    throttled: u64,
    lost_answers: u64,
}

/// Step Functions with Standard executions that take time (see the module's doc).
pub struct Executions {
    state_machine_arn: String,
    durations: Durations,
    clock: Clock,
    origin: Instant,
    quota: Option<Mutex<TokenBucket>>,
    lost_answer_probability: f64,
    rng: Mutex<StdRng>,
    state: Mutex<State>,
    events: Mutex<Option<Arc<EventBridge>>>,
}

impl Executions {
    /// Executions of `state_machine_arn` that each run for a draw of `durations`; epoch times
    /// (the events' `startDate`, `stopDate`) from `clock`; draws seeded with `seed`.
    pub fn new(state_machine_arn: &str, durations: Durations, clock: Clock, seed: u64) -> Executions {
        Executions {
            state_machine_arn: state_machine_arn.to_string(),
            durations,
            clock,
            origin: Instant::now(),
            quota: None,
            lost_answer_probability: 0.0,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            state: Mutex::default(),
            events: Mutex::new(None),
        }
    }

    /// StartExecution within the account's token bucket (`burst`, `per_second`), throttled beyond.
    pub fn with_quota(mut self, burst: u64, per_second: f64) -> Executions {
        self.quota = Some(Mutex::new(TokenBucket::new(burst, per_second)));
        self
    }

    /// With `probability`, a start is applied and its answer lost (the call times out).
    pub fn with_lost_answers(mut self, probability: f64) -> Executions {
        self.lost_answer_probability = probability;
        self
    }

    /// Sends each ended execution's status change event to `bridge`.
    pub fn emit_to(&self, bridge: Arc<EventBridge>) {
        *lock(&self.events) = Some(bridge);
    }

    /// Every execution, in start order.
    pub fn runs(&self) -> Vec<Run> {
        lock(&self.state).runs.clone()
    }

    /// Executions started.
    pub fn started(&self) -> usize {
        lock(&self.state).runs.len()
    }

    /// Executions running now.
    pub fn running(&self) -> usize {
        let now = self.origin.elapsed();
        lock(&self.state).runs.iter().filter(|r| r.stop > now).count()
    }

    /// StartExecution calls throttled, and starts whose answer was lost.
    pub fn faults(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.throttled, s.lost_answers)
    }

    /// The most executions that ran at once.
    pub fn peak(&self) -> usize {
        let runs = self.runs();
        let intervals: Vec<(f64, f64)> = runs
            .iter()
            .map(|r| (r.start.as_secs_f64(), r.stop.as_secs_f64()))
            .collect();
        peak_running(&intervals)
    }

    /// The epoch milliseconds of `at` (an offset from the origin, as in [`Run`]).
    pub fn epoch_ms(&self, at: Duration) -> u64 {
        self.clock.ms_at(self.origin + at)
    }

    fn arn(&self, name: &str) -> String {
        execution_arn(&self.state_machine_arn, name)
    }

    /// Records a new execution and schedules its end (and its event).
    fn begin(&self, state: &mut State, name: &str, input: &str) {
        let duration = self.durations.draw(&mut lock(&self.rng));
        let start = self.origin.elapsed();
        let run = Run {
            name: name.to_string(),
            input: input.to_string(),
            start,
            stop: start + duration,
        };
        state.by_name.insert(name.to_string(), state.runs.len());
        state.runs.push(run);
        let Some(bridge) = lock(&self.events).clone() else {
            return;
        };
        let (arn, machine, name) = (self.arn(name), self.state_machine_arn.clone(), name.to_string());
        let start_ms = self.clock.now_ms();
        let stop_ms = start_ms + duration.as_millis() as u64;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            bridge.send(status_change_of(&Change {
                execution_arn: &arn,
                state_machine_arn: &machine,
                name: &name,
                status: "SUCCEEDED",
                start_ms,
                stop_ms: Some(stop_ms),
                input: None,
                redrive_count: 0,
            }));
        });
    }
}

fn service(code: &str, status: u16) -> StartError {
    StartError::Service {
        code: code.to_string(),
        message: format!("{code} (simulated)"),
        status: Some(status),
    }
}

#[async_trait]
impl StartExecution for Executions {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        let now = self.origin.elapsed();
        let mut state = lock(&self.state);
        if let Some(quota) = &self.quota {
            if !lock(quota).try_take(now) {
                state.throttled += 1;
                return Err(service("ThrottlingException", 400));
            }
        }
        let name = match &request.name {
            Some(name) => name.clone(),
            None => format!("generated-{}", state.runs.len()),
        };
        if let Some(&i) = state.by_name.get(&name) {
            let run = &state.runs[i];
            return match run.stop > now && run.input == request.input {
                true => Ok(Started {
                    execution_arn: self.arn(&name),
                }),
                false => Err(service("ExecutionAlreadyExists", 400)),
            };
        }
        self.begin(&mut state, &name, &request.input);
        if lock(&self.rng).random::<f64>() < self.lost_answer_probability {
            state.lost_answers += 1;
            return Err(StartError::Timeout);
        }
        Ok(Started {
            execution_arn: self.arn(&name),
        })
    }
}

#[async_trait]
impl DescribeExecution for Executions {
    async fn describe_execution(&self, execution_arn: &str) -> Result<Described, DescribeError> {
        let name = execution_arn.rsplit(':').next().unwrap_or_default();
        let now = self.origin.elapsed();
        let state = lock(&self.state);
        Ok(match state.by_name.get(name).map(|&i| &state.runs[i]) {
            None => Described::NotFound,
            Some(run) if run.stop > now => Described::Running { redrive_count: 0 },
            Some(run) => Described::Ended {
                redrive_count: 0,
                stop_ms: Some(self.epoch_ms(run.stop)),
            },
        })
    }
}

/// The most intervals `[start, stop)` (seconds) that overlap at one instant: an execution that
/// stops at the instant another starts does not overlap it.
pub fn peak_running(intervals: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(start, stop)| [(start, 1), (stop, -1)])
        .collect();
    // At one instant, stops before starts.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, step) in edges {
        now += i64::from(step);
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// How EventBridge mistreats status change events (all off by default).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EventFaults {
    /// Probability that an event is never delivered.
    pub drop: f64,
    /// Probability that an event is delivered twice.
    pub duplicate: f64,
    /// Each delivery comes a uniform draw of up to this long after the execution ended, so events
    /// of executions that end close together arrive out of order.
    pub late: Duration,
}

impl EventFaults {
    /// When each copy of one event is delivered, after its execution ended: none (dropped), one,
    /// or two (duplicated).
    pub fn deliveries(&self, rng: &mut impl Rng) -> Vec<Duration> {
        let draw = rng.random::<f64>();
        let copies = if draw < self.drop {
            0
        } else if draw < self.drop + self.duplicate {
            2
        } else {
            1
        };
        (0..copies).map(|_| self.late.mul_f64(rng.random::<f64>())).collect()
    }
}

/// What an [`EventBridge`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Events sent to it.
    pub events: u64,
    /// Events it dropped.
    pub dropped: u64,
    /// Events it delivered twice.
    pub duplicated: u64,
    /// Invocations of the release function (retries included).
    pub invocations: u64,
    /// Invocations that failed (retried, up to [`ASYNC_RETRIES`]).
    pub failed: u64,
    /// Deliveries lost after every retry failed.
    pub lost: u64,
    /// Deliveries that freed a slot (`"outcome": "Freed"`).
    pub freed: u64,
    /// Deliveries that freed nothing (`"outcome": "Duplicate"`).
    pub duplicates: u64,
    /// Lambda milliseconds the invocations would be billed (each rounded up to the millisecond).
    pub billed_ms: u64,
}

/// Delivers events to a function as EventBridge does (see the module's doc).
pub struct EventBridge {
    to: Arc<Starter>,
    faults: EventFaults,
    rng: Mutex<StdRng>,
    stats: Mutex<Delivered>,
    pending: AtomicU64,
}

impl EventBridge {
    /// Delivers to `to` with `faults`, drawn from `seed`.
    pub fn new(to: Arc<Starter>, faults: EventFaults, seed: u64) -> Arc<EventBridge> {
        Arc::new(EventBridge {
            to,
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            stats: Mutex::default(),
            pending: AtomicU64::new(0),
        })
    }

    /// Sends one event: its copies are delivered in the background.
    pub fn send(self: &Arc<Self>, event: Value) {
        let copies = self.faults.deliveries(&mut *lock(&self.rng));
        {
            let mut stats = lock(&self.stats);
            stats.events += 1;
            stats.dropped += u64::from(copies.is_empty());
            stats.duplicated += u64::from(copies.len() > 1);
        }
        for late in copies {
            self.pending.fetch_add(1, Ordering::Relaxed);
            let (bridge, event) = (self.clone(), event.clone());
            tokio::spawn(async move {
                tokio::time::sleep(late).await;
                bridge.deliver(event).await;
                bridge.pending.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// One copy: invoked, and retried while the invocation fails.
    async fn deliver(&self, event: Value) {
        let mut retries = ASYNC_RETRIES.iter();
        loop {
            let began = Instant::now();
            let answer = invoke(&self.to, event.clone()).await;
            let done = {
                let mut stats = lock(&self.stats);
                stats.invocations += 1;
                stats.billed_ms += began.elapsed().as_nanos().div_ceil(1_000_000) as u64;
                match &answer {
                    Ok(answer) => {
                        stats.freed += u64::from(answer["outcome"] == "Freed");
                        stats.duplicates += u64::from(answer["outcome"] == "Duplicate");
                    }
                    Err(_) => stats.failed += 1,
                }
                answer.is_ok()
            };
            if done {
                return;
            }
            match retries.next() {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => {
                    lock(&self.stats).lost += 1;
                    return;
                }
            }
        }
    }

    /// Deliveries not yet done (waiting to be late, or being retried).
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// What it did so far.
    pub fn delivered(&self) -> Delivered {
        *lock(&self.stats)
    }
}

/// Invokes `starter` with an EventBridge event, as Lambda's asynchronous invoke does (no deadline
/// given: the function's `LOCAL_DEADLINE_MS`).
pub async fn invoke(starter: &Starter, event: Value) -> Result<Value, String> {
    starter
        .dispatch(LambdaEvent::new(event, Context::default()))
        .await
        .map_err(|e| e.to_string())
}

/// Sends a "Scheduled Event" to `starter` every `every`, the first one `every` from now, until
/// the task is aborted.
pub fn schedule(starter: Arc<Starter>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            ticks.tick().await;
            if let Err(e) = invoke(&starter, scheduled()).await {
                tracing::warn!(error = %e, "the scheduled sweep failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:sim";

    fn request(name: &str, input: &str) -> StartRequest {
        StartRequest {
            state_machine_arn: ARN.into(),
            name: Some(name.into()),
            input: input.into(),
            trace_header: None,
        }
    }

    #[test]
    fn the_peak_counts_overlaps_and_an_end_before_a_start_at_one_instant() {
        assert_eq!(peak_running(&[]), 0);
        assert_eq!(peak_running(&[(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]), 2);
        assert_eq!(peak_running(&[(0.0, 5.0), (1.0, 2.0), (1.5, 3.0)]), 3);
        assert_eq!(peak_running(&[(0.0, 1.0), (1.0, 2.0)]), 1);
    }

    #[test]
    fn faults_drop_and_duplicate_at_their_rates() {
        let faults = EventFaults {
            drop: 0.1,
            duplicate: 0.2,
            late: Duration::from_secs(4),
        };
        let mut rng = StdRng::seed_from_u64(7);
        let copies: Vec<Vec<Duration>> = (0..10_000).map(|_| faults.deliveries(&mut rng)).collect();
        let share = |n: usize| copies.iter().filter(|c| c.len() == n).count() as f64 / 10_000.0;
        assert!((share(0) - 0.1).abs() < 0.02 && (share(2) - 0.2).abs() < 0.02);
        assert!(copies.iter().flatten().all(|d| *d <= Duration::from_secs(4)));
        assert_eq!(EventFaults::default().deliveries(&mut rng), vec![Duration::ZERO]);
    }

    #[tokio::test(start_paused = true)]
    async fn executions_run_for_their_duration_and_keep_their_name() {
        let sfn = Executions::new(
            ARN,
            Durations::Fixed(Duration::from_secs(10)),
            Clock::following_runtime(0 as f64 / 1000.0),
            1,
        )
        .with_quota(2, 1.0);
        let arn = sfn.start_execution(&request("a", "{}")).await.unwrap().execution_arn;
        assert_eq!(arn, "arn:aws:states:us-east-1:123456789012:execution:sim:a");
        assert_eq!(
            sfn.start_execution(&request("a", "{}")).await.unwrap().execution_arn,
            arn
        );
        let throttled = sfn.start_execution(&request("b", "{}")).await.unwrap_err();
        assert!(matches!(throttled, StartError::Service { code, .. } if code == "ThrottlingException"));
        assert_eq!(
            sfn.describe_execution(&arn).await.unwrap(),
            Described::Running { redrive_count: 0 }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            sfn.describe_execution(&arn).await.unwrap(),
            Described::Ended {
                redrive_count: 0,
                stop_ms: Some(10_000)
            }
        );
        let closed = sfn.start_execution(&request("a", "{}")).await.unwrap_err();
        assert!(matches!(closed, StartError::Service { code, .. } if code == "ExecutionAlreadyExists"));
        assert_eq!(sfn.describe_execution("x:never").await.unwrap(), Described::NotFound);
        assert_eq!((sfn.started(), sfn.running(), sfn.peak()), (1, 0, 1));
    }
}
