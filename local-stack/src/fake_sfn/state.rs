//! The fake's state: configuration, quota, executions, records and counters, and the decision
//! made for each `StartExecution` request. No I/O here; the server in `server.rs` carries out
//! the [`Plan`] decided.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::bucket::TokenBucket;
use super::{ExistingNames, Faults, InitialThrottle, LostResponseMode, SlowMode};

/// The largest execution input accepted, in bytes of UTF-8 (256 KiB).
pub const MAX_INPUT_BYTES: usize = 262_144;

/// The longest execution name accepted, in characters.
const MAX_NAME_CHARS: usize = 80;

/// Characters Step Functions forbids in execution names (besides whitespace and control chars).
const FORBIDDEN_NAME_CHARS: &[char] = &[
    '?', '*', '<', '>', '{', '}', '[', ']', '"', '#', '%', '\\', '^', '|', '~', '`', '$', '&', ',', ';', ':', '/',
];

/// Whether `name` is a valid execution name: 1–80 characters, no whitespace, no control
/// characters, none of ``? * < > { } [ ] " # % \ ^ | ~ ` $ & , ; : /``.
pub fn is_valid_execution_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&count)
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || FORBIDDEN_NAME_CHARS.contains(&c))
}

/// One execution the fake accepted (a new one: idempotent repeats are not recorded again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionRecord {
    /// The execution name (generated as a UUID when the request had none).
    pub name: String,
    /// The input JSON exactly as received (`{}` when the request had none).
    pub input: String,
    /// The state machine ARN of the request.
    pub state_machine_arn: String,
    /// The execution ARN returned to the client.
    pub execution_arn: String,
    /// When it was accepted: time since the server started, on the monotonic (Tokio) clock.
    pub accepted_at: Duration,
    /// The `startDate` returned (server start wall-clock time + `accepted_at`).
    pub start_date: SystemTime,
    /// Marked closed by [`FakeSfnState::close_execution`]: its name now answers
    /// `ExecutionAlreadyExists`.
    pub closed: bool,
}

/// Why a `StartExecution` was throttled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThrottleCause {
    /// The token bucket was empty.
    Quota,
    /// The initial throttle window ([`Faults::initial_throttle`]).
    InitialWindow,
    /// The random throttle fault ([`Faults::throttle_probability`]).
    Random,
}

/// One `ThrottlingException` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleRecord {
    /// Time since the server started (monotonic clock).
    pub at: Duration,
    /// What caused it.
    pub cause: ThrottleCause,
}

/// Counters, all since start (or the latest [`FakeSfnState::clear`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every HTTP request received, whatever the operation.
    pub requests: u64,
    /// `StartExecution` requests received.
    pub start_execution_requests: u64,
    /// New executions recorded (in Express mode, every accepted call).
    pub started: u64,
    /// Standard-mode repeats answered `200` with the existing execution's ARN.
    pub idempotent_repeats: u64,
    /// `ExecutionAlreadyExists` answers.
    pub already_exists: u64,
    /// `ThrottlingException` answers because the token bucket was empty.
    pub throttled_quota: u64,
    /// `ThrottlingException` answers injected by the initial window.
    pub throttled_initial: u64,
    /// `ThrottlingException` answers injected at random.
    pub throttled_random: u64,
    /// `InvalidName` answers.
    pub invalid_name: u64,
    /// `InvalidExecutionInput` answers.
    pub invalid_input: u64,
    /// `InvalidArn` answers.
    pub invalid_arn: u64,
    /// `StateMachineDoesNotExist` answers.
    pub state_machine_missing: u64,
    /// Requests that were not valid JSON or missed a required field.
    pub bad_requests: u64,
    /// Injected `500` responses (not counting lost responses answered with 500).
    pub injected_500: u64,
    /// Injected `503` responses (not counting slow, not-applied responses).
    pub injected_503: u64,
    /// Injected slow responses, whatever their [`SlowMode`].
    pub slow: u64,
    /// Injected connection resets (request not processed).
    pub resets: u64,
    /// Injected lost responses (request processed, response replaced).
    pub lost_responses: u64,
    /// Requests for other operations (`DescribeExecution`, `ListExecutions`, unknown).
    pub other_operations: u64,
}

impl Stats {
    /// Every `ThrottlingException` answered, whatever the cause.
    pub fn throttled(&self) -> u64 {
        self.throttled_quota + self.throttled_initial + self.throttled_random
    }
}

/// Construction parameters (from the builder).
pub(crate) struct Config {
    pub bucket: Option<(u64, f64)>,
    pub latency: Duration,
    pub jitter: Duration,
    pub faults: Faults,
    pub seed: u64,
    pub express: bool,
    pub existing_names: ExistingNames,
    pub state_machines: HashSet<String>,
}

/// The error codes the fake answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Throttling,
    ExecutionAlreadyExists,
    StateMachineDoesNotExist,
    InvalidArn,
    InvalidName,
    InvalidExecutionInput,
    Serialization,
    Validation,
    ExecutionDoesNotExist,
    UnknownOperation,
    InternalFailure,
    ServiceUnavailable,
}

impl ErrorKind {
    fn code(self) -> &'static str {
        match self {
            ErrorKind::Throttling => "ThrottlingException",
            ErrorKind::ExecutionAlreadyExists => "ExecutionAlreadyExists",
            ErrorKind::StateMachineDoesNotExist => "StateMachineDoesNotExist",
            ErrorKind::InvalidArn => "InvalidArn",
            ErrorKind::InvalidName => "InvalidName",
            ErrorKind::InvalidExecutionInput => "InvalidExecutionInput",
            ErrorKind::Serialization => "SerializationException",
            ErrorKind::Validation => "ValidationException",
            ErrorKind::ExecutionDoesNotExist => "ExecutionDoesNotExist",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::InternalFailure => "InternalFailure",
            ErrorKind::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    fn status(self) -> u16 {
        match self {
            ErrorKind::InternalFailure => 500,
            ErrorKind::ServiceUnavailable => 503,
            _ => 400,
        }
    }
}

/// A response to send: status, optional error code (for `X-Amzn-ErrorType`), JSON body.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub error_type: Option<&'static str>,
    pub body: Vec<u8>,
}

impl Reply {
    fn ok(body: serde_json::Value) -> Reply {
        Reply {
            status: 200,
            error_type: None,
            body: body.to_string().into_bytes(),
        }
    }

    pub(crate) fn error(kind: ErrorKind, message: &str) -> Reply {
        let body = json!({ "__type": kind.code(), "message": message });
        Reply {
            status: kind.status(),
            error_type: Some(kind.code()),
            body: body.to_string().into_bytes(),
        }
    }

    fn server_error(kind: ErrorKind, plain: bool) -> Reply {
        if plain {
            Reply {
                status: kind.status(),
                error_type: None,
                body: Vec::new(),
            }
        } else {
            Reply::error(kind, "Injected server error")
        }
    }

    fn throttled() -> Reply {
        Reply::error(ErrorKind::Throttling, "Rate exceeded")
    }
}

/// A rejected request (validation), decided before taking the lock.
#[derive(Clone, Debug)]
pub(crate) struct Rejection {
    kind: ErrorKind,
    message: String,
}

/// A parsed, validated `StartExecution` request.
#[derive(Clone, Debug)]
pub(crate) struct StartRequest {
    state_machine_arn: String,
    name: Option<String>,
    input: String,
}

/// What the server must do for one `StartExecution` request.
pub(crate) enum Plan {
    /// Sleep `delay`, then send `reply`.
    Respond { reply: Reply, delay: Duration },
    /// Sleep `delay`, then reset the connection without a response.
    Reset { delay: Duration },
    /// Sleep `delay`, then process `request` (even if the client is gone) and send the result.
    ApplyLater {
        delay: Duration,
        request: Result<StartRequest, Rejection>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    state_machine_arn: Option<String>,
    name: Option<String>,
    input: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeBody {
    execution_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListBody {
    state_machine_arn: Option<String>,
    max_results: Option<usize>,
}

/// Shared, thread-safe handle to the fake's state: records, counters and runtime settings.
/// Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct FakeSfnState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Server start on the monotonic clock; every `Duration` "at" is measured from it.
    start: Instant,
    /// Server start on the wall clock, for `startDate`.
    start_wall: SystemTime,
    express: bool,
    existing_names: ExistingNames,
    state_machines: HashSet<String>,
    request_ids: AtomicU64,
    /// Every HTTP request received (outside the lock: counted before anything else).
    requests: AtomicU64,
    locked: Mutex<Locked>,
}

struct Locked {
    rng: StdRng,
    bucket: Option<TokenBucket>,
    latency: Duration,
    jitter: Duration,
    faults: Faults,
    /// When the current faults were set (the origin of the initial window).
    faults_since: Duration,
    /// `StartExecution` requests since the current faults were set.
    calls_since_faults: u64,
    executions: Vec<ExecutionRecord>,
    /// Execution ARN → index in `executions` (Standard only: Express ARNs are unique anyway).
    by_arn: HashMap<String, usize>,
    /// Name → index of the latest execution with that name.
    by_name: HashMap<String, usize>,
    /// Name → executions recorded under it.
    name_counts: HashMap<String, u64>,
    throttles: Vec<ThrottleRecord>,
    stats: Stats,
}

impl FakeSfnState {
    pub(crate) fn new(config: Config) -> FakeSfnState {
        let locked = Locked {
            rng: StdRng::seed_from_u64(config.seed),
            bucket: config.bucket.map(|(capacity, rate)| TokenBucket::new(capacity, rate)),
            latency: config.latency,
            jitter: config.jitter,
            faults: config.faults,
            faults_since: Duration::ZERO,
            calls_since_faults: 0,
            executions: Vec::new(),
            by_arn: HashMap::new(),
            by_name: HashMap::new(),
            name_counts: HashMap::new(),
            throttles: Vec::new(),
            stats: Stats::default(),
        };
        FakeSfnState {
            inner: Arc::new(Inner {
                start: Instant::now(),
                start_wall: SystemTime::now(),
                express: config.express,
                existing_names: config.existing_names,
                state_machines: config.state_machines,
                request_ids: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                locked: Mutex::new(locked),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        self.inner.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time since the server started, on the monotonic (Tokio) clock the records use.
    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }

    /// Every execution recorded, in order of acceptance.
    pub fn executions(&self) -> Vec<ExecutionRecord> {
        self.lock().executions.clone()
    }

    /// The latest execution recorded with this name.
    pub fn execution(&self, name: &str) -> Option<ExecutionRecord> {
        let locked = self.lock();
        locked
            .by_name
            .get(name)
            .and_then(|&i| locked.executions.get(i).cloned())
    }

    /// How many executions were recorded.
    pub fn execution_count(&self) -> usize {
        self.lock().executions.len()
    }

    /// How many executions were recorded under `name` (Express: every accepted call;
    /// Standard: at most one per state machine).
    pub fn name_count(&self, name: &str) -> u64 {
        self.lock().name_counts.get(name).copied().unwrap_or(0)
    }

    /// Every throttle answered, in order.
    pub fn throttles(&self) -> Vec<ThrottleRecord> {
        self.lock().throttles.clone()
    }

    /// When each throttle was answered (time since server start), in order.
    pub fn throttle_times(&self) -> Vec<Duration> {
        self.lock().throttles.iter().map(|t| t.at).collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.lock().stats.clone();
        stats.requests = self.inner.requests.load(Ordering::Relaxed);
        stats
    }

    /// New executions per time slot of `width` since server start: element `i` counts those
    /// accepted in `[i × width, (i + 1) × width)`. Ends at the slot of the latest one.
    pub fn starts_series(&self, width: Duration) -> Vec<u64> {
        let locked = self.lock();
        series(locked.executions.iter().map(|e| e.accepted_at), width)
    }

    /// New executions per second since server start (see [`FakeSfnState::starts_series`]).
    pub fn starts_per_second_series(&self) -> Vec<u64> {
        self.starts_series(Duration::from_secs(1))
    }

    /// Throttles per second since server start, whatever the cause.
    pub fn throttles_per_second_series(&self) -> Vec<u64> {
        let locked = self.lock();
        series(locked.throttles.iter().map(|t| t.at), Duration::from_secs(1))
    }

    /// Replaces the faults. The initial window (if any) starts now. Errors if the
    /// probabilities are invalid (see [`Faults::validate`]); the old faults then stay.
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        let now = self.elapsed();
        let mut locked = self.lock();
        locked.faults = faults;
        locked.faults_since = now;
        locked.calls_since_faults = 0;
        Ok(())
    }

    /// Replaces the base latency and its uniform jitter `[0, jitter]` for `StartExecution`.
    pub fn set_latency(&self, base: Duration, jitter: Duration) {
        let mut locked = self.lock();
        locked.latency = base;
        locked.jitter = jitter;
    }

    /// Replaces the quota with a new, full bucket of `capacity` tokens refilled at
    /// `refill_per_second` tokens per second; `None` removes the quota.
    pub fn set_bucket(&self, bucket: Option<(u64, f64)>) {
        let now = self.elapsed();
        let mut locked = self.lock();
        locked.bucket = bucket.map(|(capacity, rate)| {
            let mut b = TokenBucket::new(capacity, rate);
            // Move its clock to now; it stays full.
            b.available(now);
            b
        });
    }

    /// Marks the latest execution named `name` closed, so its name answers
    /// `ExecutionAlreadyExists` from now on. Returns whether one was found.
    pub fn close_execution(&self, name: &str) -> bool {
        let mut locked = self.lock();
        match locked.by_name.get(name).copied() {
            Some(i) => {
                if let Some(e) = locked.executions.get_mut(i) {
                    e.closed = true;
                }
                true
            }
            None => false,
        }
    }

    /// Forgets every execution, throttle record and counter (quota and faults stay).
    pub fn clear(&self) {
        let mut locked = self.lock();
        locked.executions.clear();
        locked.by_arn.clear();
        locked.by_name.clear();
        locked.name_counts.clear();
        locked.throttles.clear();
        locked.stats = Stats::default();
        self.inner.requests.store(0, Ordering::Relaxed);
    }

    // ---- used by the server ----

    pub(crate) fn count_request(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn next_request_id(&self) -> String {
        let n = self.inner.request_ids.fetch_add(1, Ordering::Relaxed);
        format!("fa4e5f70-0000-4000-8000-{n:012x}")
    }

    /// Parses and validates a `StartExecution` body (no lock taken).
    pub(crate) fn parse_start(&self, body: &[u8]) -> Result<StartRequest, Rejection> {
        let parsed: StartBody = serde_json::from_slice(body).map_err(|e| Rejection {
            kind: ErrorKind::Serialization,
            message: format!("Invalid request body: {e}"),
        })?;
        let state_machine_arn = parsed.state_machine_arn.ok_or_else(|| Rejection {
            kind: ErrorKind::Validation,
            message: "1 validation error detected: stateMachineArn must not be null".into(),
        })?;
        if !state_machine_arn.starts_with("arn:") {
            return Err(Rejection {
                kind: ErrorKind::InvalidArn,
                message: format!("Invalid Arn: '{state_machine_arn}'"),
            });
        }
        if !self.inner.state_machines.is_empty() && !self.inner.state_machines.contains(&state_machine_arn) {
            return Err(Rejection {
                kind: ErrorKind::StateMachineDoesNotExist,
                message: format!("State Machine Does Not Exist: '{state_machine_arn}'"),
            });
        }
        if let Some(name) = &parsed.name {
            if !is_valid_execution_name(name) {
                return Err(Rejection {
                    kind: ErrorKind::InvalidName,
                    message: format!("Invalid Name: '{name}'"),
                });
            }
        }
        let input = parsed.input.unwrap_or_else(|| "{}".to_string());
        if input.len() > MAX_INPUT_BYTES {
            return Err(Rejection {
                kind: ErrorKind::InvalidExecutionInput,
                message: format!("Input is {} bytes, more than {MAX_INPUT_BYTES}", input.len()),
            });
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&input) {
            return Err(Rejection {
                kind: ErrorKind::InvalidExecutionInput,
                message: format!("Invalid State Machine Execution Input: '{e}'"),
            });
        }
        Ok(StartRequest {
            state_machine_arn,
            name: parsed.name,
            input,
        })
    }

    /// Decides what to do with one `StartExecution` request, applying it now if the decision
    /// says so. Counts and records everything decided.
    pub(crate) fn plan_start(&self, request: Result<StartRequest, Rejection>) -> Plan {
        let now = self.elapsed();
        let mut locked = self.lock();
        let l = &mut *locked;
        l.stats.start_execution_requests += 1;
        let call = l.calls_since_faults;
        l.calls_since_faults += 1;
        let latency = if l.jitter.is_zero() {
            l.latency
        } else {
            let jitter_ns = u64::try_from(l.jitter.as_nanos()).unwrap_or(u64::MAX);
            l.latency + Duration::from_nanos(l.rng.random_range(0..=jitter_ns))
        };
        let f = l.faults;
        let in_window = match f.initial_throttle {
            Some(InitialThrottle::Calls(n)) => call < n,
            Some(InitialThrottle::For(d)) => now.saturating_sub(l.faults_since) < d,
            None => false,
        };
        if in_window {
            l.throttle(now, ThrottleCause::InitialWindow);
            return Plan::Respond {
                reply: Reply::throttled(),
                delay: latency,
            };
        }
        let any = f.reset_probability
            + f.throttle_probability
            + f.error_500_probability
            + f.error_503_probability
            + f.slow_probability
            + f.lost_response_probability
            > 0.0;
        let u: f64 = if any { l.rng.random() } else { 1.0 };
        let mut edge = f.reset_probability;
        if u < edge {
            l.stats.resets += 1;
            return Plan::Reset { delay: Duration::ZERO };
        }
        edge += f.throttle_probability;
        if u < edge {
            l.throttle(now, ThrottleCause::Random);
            return Plan::Respond {
                reply: Reply::throttled(),
                delay: latency,
            };
        }
        edge += f.error_500_probability;
        if u < edge {
            l.stats.injected_500 += 1;
            return Plan::Respond {
                reply: Reply::server_error(ErrorKind::InternalFailure, f.plain_5xx),
                delay: latency,
            };
        }
        edge += f.error_503_probability;
        if u < edge {
            l.stats.injected_503 += 1;
            let reply = Reply::server_error(ErrorKind::ServiceUnavailable, f.plain_5xx);
            return Plan::Respond { reply, delay: latency };
        }
        edge += f.slow_probability;
        if u < edge {
            l.stats.slow += 1;
            let delay = f.slow_delay;
            return match f.slow_mode {
                SlowMode::NotApplied => Plan::Respond {
                    reply: Reply::server_error(ErrorKind::ServiceUnavailable, f.plain_5xx),
                    delay,
                },
                SlowMode::AppliedThenSlow => Plan::Respond {
                    reply: self.apply(l, now, request),
                    delay,
                },
                SlowMode::SlowThenApplied => Plan::ApplyLater { delay, request },
            };
        }
        edge += f.lost_response_probability;
        if u < edge {
            l.stats.lost_responses += 1;
            let _lost = self.apply(l, now, request);
            return match f.lost_response_mode {
                LostResponseMode::Reset => Plan::Reset { delay: latency },
                LostResponseMode::Status500 => Plan::Respond {
                    reply: Reply::server_error(ErrorKind::InternalFailure, f.plain_5xx),
                    delay: latency,
                },
            };
        }
        Plan::Respond {
            reply: self.apply(l, now, request),
            delay: latency,
        }
    }

    /// Processes a request whose processing was deferred ([`Plan::ApplyLater`]).
    pub(crate) fn apply_later(&self, request: Result<StartRequest, Rejection>) -> Reply {
        let now = self.elapsed();
        let mut locked = self.lock();
        self.apply(&mut locked, now, request)
    }

    /// Quota, then validation result, then idempotency; records a new execution if accepted.
    fn apply(&self, l: &mut Locked, now: Duration, request: Result<StartRequest, Rejection>) -> Reply {
        if let Some(bucket) = l.bucket.as_mut() {
            if !bucket.try_take(now) {
                l.throttle(now, ThrottleCause::Quota);
                return Reply::throttled();
            }
        }
        let request = match request {
            Ok(request) => request,
            Err(rejection) => {
                let counter = match rejection.kind {
                    ErrorKind::InvalidName => &mut l.stats.invalid_name,
                    ErrorKind::InvalidExecutionInput => &mut l.stats.invalid_input,
                    ErrorKind::InvalidArn => &mut l.stats.invalid_arn,
                    ErrorKind::StateMachineDoesNotExist => &mut l.stats.state_machine_missing,
                    _ => &mut l.stats.bad_requests,
                };
                *counter += 1;
                return Reply::error(rejection.kind, &rejection.message);
            }
        };
        let name = match request.name {
            Some(name) => name,
            None => uuid_v4(&mut l.rng),
        };
        let execution_arn = if self.inner.express {
            let id = uuid_v4(&mut l.rng);
            execution_arn(&request.state_machine_arn, &name, Some(&id))
        } else {
            let arn = execution_arn(&request.state_machine_arn, &name, None);
            if let Some(existing) = l.by_arn.get(&arn).and_then(|&i| l.executions.get(i)) {
                let running = !existing.closed && self.inner.existing_names == ExistingNames::ReturnRunning;
                if running && existing.input == request.input {
                    let reply = start_reply(&existing.execution_arn, existing.start_date);
                    l.stats.idempotent_repeats += 1;
                    return reply;
                }
                l.stats.already_exists += 1;
                return Reply::error(
                    ErrorKind::ExecutionAlreadyExists,
                    &format!("Execution Already Exists: '{}'", existing.execution_arn),
                );
            }
            arn
        };
        let start_date = self.inner.start_wall + now;
        let reply = start_reply(&execution_arn, start_date);
        let index = l.executions.len();
        if !self.inner.express {
            l.by_arn.insert(execution_arn.clone(), index);
        }
        l.by_name.insert(name.clone(), index);
        *l.name_counts.entry(name.clone()).or_insert(0) += 1;
        l.executions.push(ExecutionRecord {
            name,
            input: request.input,
            state_machine_arn: request.state_machine_arn,
            execution_arn,
            accepted_at: now,
            start_date,
            closed: false,
        });
        l.stats.started += 1;
        reply
    }

    /// `DescribeExecution`: the recorded execution, always `RUNNING` unless closed
    /// (`SUCCEEDED` then).
    pub(crate) fn describe(&self, body: &[u8]) -> Reply {
        let mut locked = self.lock();
        locked.stats.other_operations += 1;
        let arn = match serde_json::from_slice::<DescribeBody>(body) {
            Ok(DescribeBody {
                execution_arn: Some(arn),
            }) => arn,
            _ => return Reply::error(ErrorKind::Validation, "executionArn must not be null"),
        };
        let found = match locked.by_arn.get(&arn) {
            Some(&i) => locked.executions.get(i),
            None => locked.executions.iter().rev().find(|e| e.execution_arn == arn),
        };
        match found {
            Some(e) => Reply::ok(json!({
                "executionArn": e.execution_arn,
                "stateMachineArn": e.state_machine_arn,
                "name": e.name,
                "status": status(e),
                "startDate": epoch_seconds(e.start_date),
                "input": e.input,
            })),
            None => Reply::error(
                ErrorKind::ExecutionDoesNotExist,
                &format!("Execution Does Not Exist: '{arn}'"),
            ),
        }
    }

    /// `DescribeStateMachine`: the machine's type (`EXPRESS` in Express mode, else `STANDARD`),
    /// for the function's WORKFLOW_TYPE check at init; an unregistered ARN does not exist.
    pub(crate) fn describe_state_machine(&self, body: &[u8]) -> Reply {
        self.lock().stats.other_operations += 1;
        let arn = match serde_json::from_slice::<ListBody>(body) {
            Ok(ListBody {
                state_machine_arn: Some(arn),
                ..
            }) => arn,
            _ => return Reply::error(ErrorKind::Validation, "stateMachineArn must not be null"),
        };
        if !self.inner.state_machines.is_empty() && !self.inner.state_machines.contains(&arn) {
            let message = format!("State Machine Does Not Exist: '{arn}'");
            return Reply::error(ErrorKind::StateMachineDoesNotExist, &message);
        }
        let name = arn.rsplit(':').next().unwrap_or_default();
        Reply::ok(json!({
            "stateMachineArn": arn,
            "name": name,
            "status": "ACTIVE",
            "definition": "{}",
            "roleArn": "arn:aws:iam::123456789012:role/fake-sfn",
            "type": if self.inner.express { "EXPRESS" } else { "STANDARD" },
            "creationDate": epoch_seconds(self.inner.start_wall),
        }))
    }

    /// `ListExecutions`: newest first, at most `maxResults` (default 100), no pagination.
    pub(crate) fn list(&self, body: &[u8]) -> Reply {
        let mut locked = self.lock();
        locked.stats.other_operations += 1;
        let (arn, max) = match serde_json::from_slice::<ListBody>(body) {
            Ok(ListBody {
                state_machine_arn: Some(arn),
                max_results,
            }) => (arn, max_results.unwrap_or(100)),
            _ => return Reply::error(ErrorKind::Validation, "stateMachineArn must not be null"),
        };
        let executions: Vec<serde_json::Value> = locked
            .executions
            .iter()
            .rev()
            .filter(|e| e.state_machine_arn == arn)
            .take(if max == 0 { 100 } else { max })
            .map(|e| {
                json!({
                    "executionArn": e.execution_arn,
                    "stateMachineArn": e.state_machine_arn,
                    "name": e.name,
                    "status": status(e),
                    "startDate": epoch_seconds(e.start_date),
                })
            })
            .collect();
        Reply::ok(json!({ "executions": executions }))
    }

    pub(crate) fn unknown_operation(&self, target: &str) -> Reply {
        self.lock().stats.other_operations += 1;
        Reply::error(ErrorKind::UnknownOperation, &format!("Unknown operation: '{target}'"))
    }
}

impl Locked {
    fn throttle(&mut self, now: Duration, cause: ThrottleCause) {
        match cause {
            ThrottleCause::Quota => self.stats.throttled_quota += 1,
            ThrottleCause::InitialWindow => self.stats.throttled_initial += 1,
            ThrottleCause::Random => self.stats.throttled_random += 1,
        }
        self.throttles.push(ThrottleRecord { at: now, cause });
    }
}

fn start_reply(execution_arn: &str, start_date: SystemTime) -> Reply {
    Reply::ok(json!({ "executionArn": execution_arn, "startDate": epoch_seconds(start_date) }))
}

fn status(e: &ExecutionRecord) -> &'static str {
    if e.closed {
        "SUCCEEDED"
    } else {
        "RUNNING"
    }
}

/// Seconds since the Unix epoch, with millisecond precision (the awsJson timestamp format).
fn epoch_seconds(t: SystemTime) -> f64 {
    let millis = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    millis as f64 / 1000.0
}

/// `arn:…:stateMachine:SM` → `arn:…:execution:SM:NAME` (Standard) or
/// `arn:…:express:SM:NAME:ID` (Express).
fn execution_arn(state_machine_arn: &str, name: &str, express_id: Option<&str>) -> String {
    let (prefix, machine) = state_machine_arn
        .split_once(":stateMachine:")
        .unwrap_or((state_machine_arn, "unknown"));
    match express_id {
        None => format!("{prefix}:execution:{machine}:{name}"),
        Some(id) => format!("{prefix}:express:{machine}:{name}:{id}"),
    }
}

/// A random (version 4) UUID from the seeded RNG.
fn uuid_v4(rng: &mut StdRng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Counts of `times` per slot of `width` (see [`FakeSfnState::starts_series`]).
fn series(times: impl Iterator<Item = Duration>, width: Duration) -> Vec<u64> {
    let width = width.as_nanos().max(1);
    let mut counts: Vec<u64> = Vec::new();
    for t in times {
        let slot = usize::try_from(t.as_nanos() / width).unwrap_or(usize::MAX);
        if slot >= counts.len() {
            counts.resize(slot.saturating_add(1), 0);
        }
        if let Some(c) = counts.get_mut(slot) {
            *c += 1;
        }
    }
    counts
}
