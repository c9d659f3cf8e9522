//! `local-esm`: a local SQS event source mapping for `cargo lambda watch`.
//!
//! Exit codes: 0 stopped normally (`--until-empty`, `--max-seconds`, Ctrl-C or SIGTERM);
//! 1 a poller failed; 2 usage or setup error; 130 a second Ctrl-C cut the shutdown short.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser};

use local_stack::esm::event::region_from_arn;
use local_stack::esm::gather::GatherConfig;
use local_stack::esm::invoke::HttpInvoker;
use local_stack::esm::runner::{self, EsmConfig, StopReason, Summary, SHORT_POLL_PAUSE};
use local_stack::esm::sqs::SqsQueue;

/// Poll an SQS queue and invoke a function with SQS events, like AWS's event source mapping
/// with ReportBatchItemFailures: acknowledged messages are deleted, reported failures (and
/// whole batches on a function error, an invalid response or a timeout) become visible again.
///
/// The AWS endpoint, region and credentials come from the usual AWS environment
/// (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...) unless given as flags.
#[derive(Parser, Debug)]
#[command(name = "local-esm", version)]
#[command(group(ArgGroup::new("queue").required(true).args(["queue_url", "queue_name"])))]
struct Cli {
    /// Queue URL.
    #[arg(long, value_name = "URL")]
    queue_url: Option<String>,
    /// Queue name, resolved with GetQueueUrl.
    #[arg(long, value_name = "NAME")]
    queue_name: Option<String>,

    /// The function (binary) name at the invoke endpoint.
    #[arg(long, value_name = "NAME", default_value = "starter")]
    function_name: String,
    /// Address of the invoke endpoint (cargo lambda watch --invoke-address).
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1")]
    invoke_address: String,
    /// Port of the invoke endpoint (cargo lambda watch --invoke-port).
    #[arg(long, value_name = "PORT", default_value_t = 9000)]
    invoke_port: u16,

    /// BatchSize: most messages per invocation (1 to 10000; above 10 needs --batching-window;
    /// at most 10 on FIFO queues).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=10000))]
    batch_size: u16,
    /// MaximumBatchingWindowInSeconds: how long to gather a fuller batch after its first
    /// message, in seconds (0 to 300; 0: invoke as soon as a receive returns messages).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    batching_window: f64,
    /// ScalingConfig.MaximumConcurrency: pollers, hence batches in flight at once (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1000))]
    max_concurrency: u16,
    /// Longest wait for an invocation's answer, in seconds; after it the batch is left for a
    /// retry (nothing deleted).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    function_timeout: f64,
    /// Long-poll wait of each ReceiveMessage while no batch is open, in seconds (0 to 20).
    #[arg(long, value_name = "SECONDS", default_value_t = 20, value_parser = clap::value_parser!(i32).range(0..=20))]
    wait_seconds: i32,

    /// Stop once the queue is empty (nothing visible, in flight or delayed) for --empty-polls
    /// checks in a row, --poll-interval apart. Start it once the work is queued.
    #[arg(long)]
    until_empty: bool,
    /// Consecutive empty checks that end an --until-empty run.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    empty_polls: u32,
    /// Time between queue checks for --until-empty, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    poll_interval: f64,
    /// Stop after this many seconds at most.
    #[arg(long, value_name = "SECONDS")]
    max_seconds: Option<f64>,
    /// Log a progress line every SECONDS seconds (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    progress_seconds: f64,
    /// Print the summary as one JSON line on stdout instead of a sentence.
    #[arg(long)]
    summary_json: bool,

    #[command(flatten)]
    aws: local_stack::cli::AwsArgs,
}

fn seconds(name: &str, value: f64, min: f64, max: f64) -> Result<Duration, String> {
    if value.is_finite() && value >= min && value <= max {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("--{name} must be between {min} and {max} seconds, got {value}"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    local_stack::cli::init_tracing("info");
    let summary_json = cli.summary_json;
    let run = run(cli);
    // A second Ctrl-C cuts the graceful shutdown short.
    let second_interrupt = async {
        for _ in 0..2 {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = run => match result {
            Ok(summary) => {
                print_summary(&summary, summary_json);
                if summary.stop_reason == StopReason::WorkerFailed {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(message) => {
                eprintln!("local-esm: {message}");
                ExitCode::from(2)
            }
        },
        _ = second_interrupt => {
            eprintln!("local-esm: interrupted twice, exiting without waiting for in-flight batches");
            ExitCode::from(130)
        }
    }
}

/// Completes on Ctrl-C or (Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

async fn run(cli: Cli) -> Result<Summary, String> {
    let window = seconds("batching-window", cli.batching_window, 0.0, 300.0)?;
    let function_timeout = seconds("function-timeout", cli.function_timeout, 0.001, 900.0)?;
    let poll_interval = seconds("poll-interval", cli.poll_interval, 0.01, 3600.0)?;
    let max_run = cli
        .max_seconds
        .map(|s| seconds("max-seconds", s, 0.0, 1e9))
        .transpose()?;
    let progress = seconds("progress-seconds", cli.progress_seconds, 0.0, 1e9)?;
    let batch_size = usize::from(cli.batch_size);
    if batch_size > 10 && window.is_zero() {
        return Err("--batch-size above 10 needs a --batching-window of at least 1 second (as on AWS)".into());
    }

    let loader = cli.aws.sdk_loader().timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            // Long polls take up to 20 s.
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    let sdk_config = loader.load().await;
    let client = aws_sdk_sqs::Client::new(&sdk_config);
    let info = SqsQueue::resolve(&client, cli.queue_url.as_deref(), cli.queue_name.as_deref()).await?;
    if info.is_fifo() && batch_size > 10 {
        return Err(format!("--batch-size is at most 10 on a FIFO queue ({})", info.url));
    }
    let needed = function_timeout + window;
    if Duration::from_secs(info.visibility_timeout_seconds) < needed {
        tracing::warn!(
            visibility_timeout_seconds = info.visibility_timeout_seconds,
            needed_seconds = needed.as_secs_f64(),
            "the queue's visibility timeout is shorter than the function timeout plus the batching window: \
             messages may be delivered again while still being processed (AWS refuses this setup)"
        );
    }
    match &info.redrive_policy {
        Some(policy) => tracing::info!(%policy, "redrive policy"),
        None => tracing::info!("the queue has no redrive policy: failing messages are retried forever"),
    }
    let region = region_from_arn(&info.arn)
        .map(str::to_string)
        .or_else(|| sdk_config.region().map(|r| r.to_string()))
        .unwrap_or_else(|| "us-east-1".into());

    let endpoint = format!("http://{}:{}", cli.invoke_address, cli.invoke_port);
    let invoker = HttpInvoker::new(&endpoint, &cli.function_name)?;
    tracing::info!(
        queue = %info.url, function = %invoker.url(), batch_size, batching_window_seconds = window.as_secs_f64(),
        max_concurrency = cli.max_concurrency, "polling"
    );
    let config = EsmConfig {
        gather: GatherConfig::new(batch_size, window, cli.wait_seconds),
        max_concurrency: usize::from(cli.max_concurrency),
        function_timeout,
        queue_arn: info.arn.clone(),
        region,
        until_empty: cli.until_empty,
        empty_polls: cli.empty_polls,
        poll_interval,
        empty_receive_pause: SHORT_POLL_PAUSE,
        max_run,
        progress_interval: (!progress.is_zero()).then_some(progress),
    };
    let queue = Arc::new(SqsQueue::new(client, info.url.clone()));
    Ok(runner::run(queue, Arc::new(invoker), config, shutdown_signal()).await)
}

fn print_summary(summary: &Summary, json: bool) {
    if json {
        match serde_json::to_string(summary) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("local-esm: cannot serialize the summary: {e}"),
        }
        return;
    }
    let reason = match summary.stop_reason {
        StopReason::UntilEmpty => "queue empty",
        StopReason::MaxSeconds => "time bound reached",
        StopReason::Signal => "stopped by signal",
        StopReason::WorkerFailed => "a poller failed",
    };
    println!(
        "{reason} after {:.1} s: {} batches ({} records), {} invocations answered, {} deleted, \
         {} reported failures, {} function errors, {} invalid responses, {} timeouts, \
         {} delete errors, {} receive errors, {} released",
        summary.elapsed_seconds,
        summary.batches,
        summary.records,
        summary.invocations,
        summary.deleted,
        summary.reported_failures,
        summary.function_errors,
        summary.invalid_responses,
        summary.timeouts,
        summary.delete_errors,
        summary.receive_errors,
        summary.released
    );
}
