//! The fake Step Functions endpoint's own capacity on this machine, with the same runtime
//! layout as the drain runs (the endpoint on one thread, the clients on two), so that it is
//! shown not to be the bottleneck.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sfn::config::retry::RetryConfig;
use local_stack::fake_sfn::{FakeSfn, FakeSfnHandle};

use crate::common::{sdk_config, BenchError, Runtimes, SERVER_THREAD, STATE_MACHINE_ARN};
use crate::cpu;

/// The endpoint's throughput.
#[derive(Debug, Clone)]
pub struct CapacityResult {
    /// StartExecution requests the endpoint answered.
    pub requests: u64,
    /// Over this long, seconds.
    pub seconds: f64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// CPU time of the endpoint's thread per request, µs.
    pub server_cpu_us: f64,
    /// Client-side errors (should be 0).
    pub errors: u64,
}

impl CapacityResult {
    /// Requests per second achieved (client and server sharing the 2 cores).
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// Requests per second the endpoint's thread could serve with a whole core.
    pub fn per_core_second(&self) -> f64 {
        if self.server_cpu_us > 0.0 {
            1e6 / self.server_cpu_us
        } else {
            0.0
        }
    }
}

/// Sends at most `total` requests with `concurrency` in flight, for at most `max` time.
pub fn measure(
    runtimes: &Runtimes,
    total: u64,
    concurrency: usize,
    max: Duration,
) -> Result<CapacityResult, BenchError> {
    let sfn: FakeSfnHandle = runtimes
        .server
        .block_on(FakeSfn::builder().start())
        .map_err(|e| format!("starting the fake Step Functions endpoint: {e}"))?;
    let result = runtimes.client.block_on(async {
        let sdk = sdk_config(&sfn.endpoint()).await;
        let conf = aws_sdk_sfn::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .build();
        let client = aws_sdk_sfn::Client::from_conf(conf);
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let server_before = cpu::named_threads_cpu(SERVER_THREAD)?;
        let began = Instant::now();
        let deadline = began + max;
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, next, errors) = (client.clone(), next.clone(), errors.clone());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || Instant::now() >= deadline {
                        break;
                    }
                    let sent = client
                        .start_execution()
                        .state_machine_arn(STATE_MACHINE_ARN)
                        .name(format!("capacity-{i}"))
                        .input(format!(r#"{{"i":{i}}}"#))
                        .send()
                        .await;
                    if sent.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        let seconds = began.elapsed().as_secs_f64();
        let server_cpu = cpu::named_threads_cpu(SERVER_THREAD)?.saturating_sub(server_before);
        let requests = sfn.stats().start_execution_requests;
        Ok::<_, BenchError>(CapacityResult {
            requests,
            seconds,
            concurrency,
            server_cpu_us: crate::stats::micros_per(server_cpu, requests),
            errors: errors.load(Ordering::Relaxed),
        })
    });
    runtimes.server.block_on(sfn.shutdown());
    result
}
