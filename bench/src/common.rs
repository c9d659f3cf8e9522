//! Pieces shared by the benchmarks: runtimes, the starter's configuration, StartExecution
//! stand-ins, and the SDK configuration pointed at a local endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sfn_pacer::start::{StartError, StartExecution, StartRequest, Started};
use sfn_pacer::Config;
use tokio::time::Instant;

/// The error type of the runner: a message for the person running it.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// The state machine every benchmark starts (the fake accepts any well-formed ARN).
pub const STATE_MACHINE_ARN: &str = local_stack::fake_sfn::DEFAULT_STATE_MACHINE_ARN;

/// Thread-name prefix of the runtime that serves the fake Step Functions endpoint; its CPU
/// time is read per thread and kept apart from the client side's.
pub const SERVER_THREAD: &str = "fake-sfn";

/// The two Tokio runtimes of a run: the fake endpoint's, and the client side's (simulated
/// Lambda instances, SDK, queue). Separate so their CPU time can be told apart.
pub struct Runtimes {
    /// Serves the fake endpoints (1 worker thread named [`SERVER_THREAD`]).
    pub server: tokio::runtime::Runtime,
    /// Runs the simulated instances and the SDK clients (2 worker threads).
    pub client: tokio::runtime::Runtime,
}

impl Runtimes {
    /// Builds both runtimes.
    pub fn new() -> Result<Runtimes, BenchError> {
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()
            .map_err(|e| format!("building the server runtime: {e}"))?;
        let client = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-client")
            .enable_all()
            .build()
            .map_err(|e| format!("building the client runtime: {e}"))?;
        Ok(Runtimes { server, client })
    }
}

/// The starter's configuration from `pairs` (variable, value) on top of the state machine ARN.
pub fn config(pairs: &[(&str, String)]) -> Result<Config, BenchError> {
    let mut map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    map.entry("STATE_MACHINE_ARN".to_string())
        .or_insert_with(|| STATE_MACHINE_ARN.to_string());
    Config::from_lookup(|k| map.get(k).cloned()).map_err(|e| format!("starter configuration: {e}").into())
}

/// The SDK configuration for a local endpoint: dummy credentials, us-east-1.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    local_stack::moto::sdk_config_for(endpoint).await
}

/// A StartExecution that succeeds at once, recording when each call was made.
#[derive(Debug, Default)]
pub struct InstantStart {
    calls: Mutex<Vec<Instant>>,
    record: bool,
}

impl InstantStart {
    /// A stand-in that records each call's instant (`record`) or only counts calls.
    pub fn new(record: bool) -> InstantStart {
        InstantStart {
            calls: Mutex::new(Vec::new()),
            record,
        }
    }

    /// The instants of the calls so far (empty unless recording).
    pub fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl StartExecution for InstantStart {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        if self.record {
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Instant::now());
        }
        let name = request.name.as_deref().unwrap_or("generated");
        Ok(Started {
            execution_arn: format!("arn:aws:states:us-east-1:123456789012:execution:sfn-pacer-fake:{name}"),
        })
    }
}

/// Adds a request-path delay (base plus uniform jitter) before each call of `inner`: the
/// fake endpoint applies a request when it arrives and delays only its response, so without
/// this, calls would reach the quota exactly when the pacer released them.
pub struct RequestDelay {
    inner: Arc<dyn StartExecution>,
    base: Duration,
    jitter: Duration,
    rng: Mutex<StdRng>,
}

impl RequestDelay {
    /// Wraps `inner`; each call waits `base` plus a uniform draw in `[0, jitter]`, seeded.
    pub fn new(inner: Arc<dyn StartExecution>, base: Duration, jitter: Duration, seed: u64) -> RequestDelay {
        RequestDelay {
            inner,
            base,
            jitter,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    fn delay(&self) -> Duration {
        let jitter_ns = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter_ns == 0 {
            0
        } else {
            self.rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_range(0..=jitter_ns)
        };
        self.base + Duration::from_nanos(extra)
    }
}

#[async_trait]
impl StartExecution for RequestDelay {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        let delay = self.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.inner.start_execution(request).await
    }
}

/// A message body like a producer's: a small JSON document, distinct per message.
pub fn body(i: u64) -> String {
    format!(
        r#"{{"orderId":"order-{i:08}","customer":"c-{}","amount":{}.{:02},"items":[1,2,3]}}"#,
        i % 977,
        i % 500,
        i % 100
    )
}

/// The in-process invoker, timed: the Lambda duration each invocation would be billed.
pub struct Timed {
    /// The invoker timed.
    pub inner: local_stack::esm::in_process::InProcess,
    invocations: std::sync::atomic::AtomicU64,
    billed_ms: std::sync::atomic::AtomicU64,
}

impl Timed {
    /// Times `inner`'s invocations.
    pub fn new(inner: local_stack::esm::in_process::InProcess) -> Timed {
        Timed {
            inner,
            invocations: Default::default(),
            billed_ms: Default::default(),
        }
    }

    /// Invocations so far.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lambda milliseconds billed so far (each invocation rounded up to the millisecond).
    pub fn billed_ms(&self) -> u64 {
        self.billed_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl local_stack::esm::runner::Invoker for Timed {
    async fn invoke(&self, poller: usize, payload: Vec<u8>) -> local_stack::esm::response::InvokeOutcome {
        let began = Instant::now();
        let outcome = self.inner.invoke(poller, payload).await;
        let ms = (crate::billing::billed_seconds(began.elapsed()) * 1000.0).round() as u64;
        self.invocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.billed_ms.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
        outcome
    }
}
