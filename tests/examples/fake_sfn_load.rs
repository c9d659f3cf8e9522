//! Load check of the fake Step Functions endpoint: the real `aws-sdk-sfn` client sends
//! StartExecution calls with many in flight, and prints requests per second.
//!
//! Bounded: at most `N` requests (default 20,000) and at most 10 seconds.
//!
//! ```text
//! cargo run --release -p sfn-pacer-tests --example fake_sfn_load -- [N] [CONCURRENCY]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sfn::config::retry::RetryConfig;
use sfn_pacer_tests::fake_sfn::{FakeSfn, DEFAULT_STATE_MACHINE_ARN};

/// Wall-clock bound of the run, in seconds.
const MAX_SECONDS: u64 = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let concurrency: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(128);

    let sfn = FakeSfn::builder().start().await?;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(sfn.endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sfn::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "fake-sfn-load",
        ))
        .load()
        .await;
    let config = aws_sdk_sfn::config::Builder::from(&sdk)
        .retry_config(RetryConfig::disabled())
        .build();
    let client = aws_sdk_sfn::Client::from_conf(config);

    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(MAX_SECONDS);
    let began = Instant::now();
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
                    .state_machine_arn(DEFAULT_STATE_MACHINE_ARN)
                    .name(format!("load-{i}"))
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
    let elapsed = began.elapsed();
    let stats = sfn.stats();
    println!(
        "{} StartExecution in {:.2} s with {concurrency} in flight: {:.0} requests/s ({} errors); server per second: {:?}",
        stats.start_execution_requests,
        elapsed.as_secs_f64(),
        stats.start_execution_requests as f64 / elapsed.as_secs_f64(),
        errors.load(Ordering::Relaxed),
        sfn.starts_per_second_series(),
    );
    sfn.shutdown().await;
    Ok(())
}
