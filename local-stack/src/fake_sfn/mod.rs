//! A fake, fault-injecting Step Functions endpoint for tests and benchmarks.
//!
//! [`FakeSfn`] is an HTTP/1.1 server on 127.0.0.1 that speaks enough of the Step Functions
//! `awsJson1_0` protocol for the real `aws-sdk-sfn` client (pointed at it with `endpoint_url`)
//! to work: `POST /` with `X-Amz-Target: AWSStepFunctions.StartExecution` (plus minimal
//! `DescribeExecution`, `ListExecutions` and `DescribeStateMachine`). Errors come back as a non-2xx status with both the
//! `X-Amzn-ErrorType` header and a `{"__type": .., "message": ..}` body, which is what the SDK's
//! error parser reads (header first, then `__type`).
//!
//! On top of that it models the account's `StartExecution` quota (an exact [`TokenBucket`]),
//! name idempotency (Standard) or its absence (Express), input and name validation, and
//! injects faults from a seeded RNG (so a failing run is reproducible for a given arrival order).
//! Everything it accepted, throttled or injected is recorded and readable in-process
//! ([`FakeSfnState`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use local_stack::fake_sfn::{FakeSfn, Faults, InitialThrottle};
//! let sfn = FakeSfn::builder()
//!     .bucket(1300, 300.0)
//!     .latency_ms(5, 2)
//!     .faults(Faults { initial_throttle: Some(InitialThrottle::Calls(3)), ..Faults::default() })
//!     .seed(42)
//!     .start()
//!     .await?;
//! // Point the SDK at `sfn.endpoint()` (`endpoint_url`), with any credentials and a region,
//! // then run the code under test.
//! println!("{:?} {:?}", sfn.stats(), sfn.starts_per_second_series());
//! sfn.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Invariants: it listens on 127.0.0.1 only; dropping or shutting down the handle stops the
//! accept loop and every connection task. Faults apply to `StartExecution` only.

mod bucket;
mod server;
mod state;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use bucket::TokenBucket;
pub use state::{
    is_valid_execution_name, ExecutionRecord, FakeSfnState, Stats, ThrottleCause, ThrottleRecord, MAX_INPUT_BYTES,
};

/// A state machine ARN for tests (the fake accepts any well-formed ARN unless told otherwise).
pub const DEFAULT_STATE_MACHINE_ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:sfn-pacer-fake";

/// A window at the start (of the server, or of the latest [`FakeSfnState::set_faults`]) during
/// which every `StartExecution` is answered with `ThrottlingException`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialThrottle {
    /// The first `n` `StartExecution` requests are throttled.
    Calls(u64),
    /// Every `StartExecution` request in the first duration is throttled.
    For(Duration),
}

/// What a "slow" response does besides being slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowMode {
    /// Sleep [`Faults::slow_delay`], record nothing, then answer `503 ServiceUnavailable`.
    #[default]
    NotApplied,
    /// Process the request now (quota, validation, recording), then sleep before sending
    /// the normal response.
    AppliedThenSlow,
    /// Sleep first, then process the request and send the normal response. The request is
    /// processed even if the client has given up (timed out) in the meantime.
    SlowThenApplied,
}

/// How a "lost response" is lost, after the request was processed normally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LostResponseMode {
    /// The TCP connection is reset (RST) instead of sending the response.
    #[default]
    Reset,
    /// A `500 InternalFailure` is sent instead of the real response.
    Status500,
}

/// Injected faults, all off by default. They apply to `StartExecution` requests only.
///
/// Each request gets at most one injected fault. The initial throttle window is checked first;
/// after it, one uniform draw in `[0, 1)` picks among the probability-driven faults, which are
/// disjoint outcomes: their probabilities must each lie in `[0, 1]` and sum to at most 1.
/// Injected throttles, 5xx and resets consume no quota token and record nothing; slow
/// (applied) and lost responses are processed normally (quota, validation, recording).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Throttle everything during this initial window, then behave normally.
    pub initial_throttle: Option<InitialThrottle>,
    /// Probability (0..=1) of an injected `ThrottlingException` (status 400).
    pub throttle_probability: f64,
    /// Probability (0..=1) of a `500` response.
    pub error_500_probability: f64,
    /// Probability (0..=1) of a `503` response.
    pub error_503_probability: f64,
    /// Probability (0..=1) of a slow response; see [`Faults::slow_delay`] and [`Faults::slow_mode`].
    pub slow_probability: f64,
    /// How long a slow response sleeps (set it beyond the client's timeout to provoke timeouts).
    pub slow_delay: Duration,
    /// Whether a slow request is applied, and when.
    pub slow_mode: SlowMode,
    /// Probability (0..=1) that the TCP connection is reset (RST, via `SO_LINGER` 0) without an
    /// HTTP response and without processing the request.
    pub reset_probability: f64,
    /// Probability (0..=1) that the request is processed (and recorded, if it succeeds), but its
    /// response is lost; see [`Faults::lost_response_mode`].
    pub lost_response_probability: f64,
    /// How the response is lost.
    pub lost_response_mode: LostResponseMode,
    /// When true, injected 500/503 responses have an empty body and no `X-Amzn-ErrorType`
    /// header (so the client sees no error code, only the status). When false they carry
    /// `InternalFailure` / `ServiceUnavailable`.
    pub plain_5xx: bool,
}

impl Faults {
    /// Checks the probabilities: each finite and in `[0, 1]`, summing to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let probabilities = [
            ("throttle_probability", self.throttle_probability),
            ("error_500_probability", self.error_500_probability),
            ("error_503_probability", self.error_503_probability),
            ("slow_probability", self.slow_probability),
            ("reset_probability", self.reset_probability),
            ("lost_response_probability", self.lost_response_probability),
        ];
        let mut sum = 0.0;
        for (name, p) in probabilities {
            if !p.is_finite() || !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1], got {p}"));
            }
            sum += p;
        }
        if sum > 1.0 + 1e-9 {
            return Err(format!("fault probabilities sum to {sum}, more than 1"));
        }
        Ok(())
    }
}

/// What a `StartExecution` with the name of an already recorded (Standard) execution gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExistingNames {
    /// Like a RUNNING execution (moto's default): same input → `200` with the same
    /// `executionArn`; different input → `ExecutionAlreadyExists`. Executions marked closed
    /// with [`FakeSfnState::close_execution`] answer `ExecutionAlreadyExists`.
    #[default]
    ReturnRunning,
    /// Like a closed execution: any reuse of a name → `ExecutionAlreadyExists`.
    AlreadyExists,
}

/// Entry point: `FakeSfn::builder()...start().await`.
pub struct FakeSfn;

impl FakeSfn {
    /// A builder with everything off: no quota, no latency, no faults, Standard mode, any
    /// state machine ARN accepted, seed 0.
    pub fn builder() -> FakeSfnBuilder {
        FakeSfnBuilder::default()
    }
}

/// Configuration of a [`FakeSfn`] server.
#[derive(Clone, Debug, Default)]
pub struct FakeSfnBuilder {
    bucket: Option<(u64, f64)>,
    latency: Duration,
    jitter: Duration,
    faults: Faults,
    seed: u64,
    express: bool,
    existing_names: ExistingNames,
    state_machines: HashSet<String>,
}

impl FakeSfnBuilder {
    /// Enables the `StartExecution` quota: a token bucket of `capacity` tokens, refilled at
    /// `refill_per_second` tokens per second, full at start. Without it there is no quota.
    /// (AWS Standard in large regions: 1,300 and 300/s; Express: 6,000 and 6,000/s.)
    pub fn bucket(mut self, capacity: u64, refill_per_second: f64) -> Self {
        self.bucket = Some((capacity, refill_per_second));
        self
    }

    /// Base latency added before every `StartExecution` response, plus a uniform jitter in
    /// `[0, jitter]`.
    pub fn latency(mut self, base: Duration, jitter: Duration) -> Self {
        self.latency = base;
        self.jitter = jitter;
        self
    }

    /// [`FakeSfnBuilder::latency`] in milliseconds.
    pub fn latency_ms(self, base_ms: u64, jitter_ms: u64) -> Self {
        self.latency(Duration::from_millis(base_ms), Duration::from_millis(jitter_ms))
    }

    /// The faults to inject (validated by [`FakeSfnBuilder::start`]).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Seed of the RNG that drives faults, jitter and generated names.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Express mode: no name idempotency, every call records a new execution.
    pub fn express(mut self, express: bool) -> Self {
        self.express = express;
        self
    }

    /// What reusing a name does in Standard mode.
    pub fn existing_names(mut self, policy: ExistingNames) -> Self {
        self.existing_names = policy;
        self
    }

    /// Adds a known state machine ARN. When none is added, any well-formed ARN is accepted;
    /// otherwise an unknown one gets `StateMachineDoesNotExist`.
    pub fn state_machine(mut self, arn: impl Into<String>) -> Self {
        self.state_machines.insert(arn.into());
        self
    }

    /// Binds 127.0.0.1 on a free port and starts serving in a background task.
    /// Must be called inside a Tokio runtime.
    pub async fn start(self) -> std::io::Result<FakeSfnHandle> {
        self.faults
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = FakeSfnState::new(state::Config {
            bucket: self.bucket,
            latency: self.latency,
            jitter: self.jitter,
            faults: self.faults,
            seed: self.seed,
            express: self.express,
            existing_names: self.existing_names,
            state_machines: self.state_machines,
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(server::serve(listener, state.clone(), shutdown_rx));
        Ok(FakeSfnHandle {
            addr,
            state,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }
}

/// A running fake. Dropping it (or [`FakeSfnHandle::shutdown`]) stops the server.
///
/// It dereferences to its [`FakeSfnState`], so `handle.stats()`, `handle.executions()` etc.
/// work directly; [`FakeSfnHandle::state`] gives a clone that outlives the handle.
pub struct FakeSfnHandle {
    addr: SocketAddr,
    state: FakeSfnState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeSfnHandle {
    /// The bound address (127.0.0.1 and the port picked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL for the SDK, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A shared handle to the records, counters and runtime settings.
    pub fn state(&self) -> FakeSfnState {
        self.state.clone()
    }

    /// Stops accepting, closes every connection, and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Deref for FakeSfnHandle {
    type Target = FakeSfnState;

    fn deref(&self) -> &FakeSfnState {
        &self.state
    }
}

impl Drop for FakeSfnHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
