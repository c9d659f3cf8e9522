//! `sfn-pacer-demo run`: the whole system on this machine, then the accounting.
//!
//! - two moto processes, one request at a time each: SQS (queue, DLQ with redrive) and Step
//!   Functions (state machine). Two, because each is bound to one core by Python's lock;
//!   one request at a time, because moto's SQS is not thread-safe (see `stack`).
//! - `cargo lambda watch --only-lambda-apis`: the Runtime API; N prebuilt `starter`
//!   processes poll it at `/.rt/starter` (N instances, each with its own pacer, as on
//!   Lambda). Their stdout carries the EMF lines, summed here.
//! - `local-esm`: SQS events to the invoke API (`/2015-03-31/functions/starter/invocations`).
//! - `producer --stdin`, fed by the demo at the pace (see `feed`).
//!
//! Every wait is bounded; the hard bound is `--max-seconds`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::accounting::{account, expected_messages};
use crate::emf::{self, EmfLog};
use crate::feed::{self, FeedState, Feeder};
use crate::live::{Live, Status};
use crate::rate;
use crate::report::{Parameters, Report, Timing};
use crate::stack;
use crate::tools::Binaries;
use local_stack::moto::{self, aws_env, log_to, Endpoints, Moto, MotoOptions, REGION};
use local_stack::paths;
use local_stack::process::{Handle, Supervisor};
use local_stack::DisplayErrorContext;

/// The function name at the invoke endpoint (the binary's name).
pub const FUNCTION_NAME: &str = "starter";
/// The name of the queue (`<name>-dlq` for the DLQ) and of the state machine.
const RESOURCE_NAME: &str = "sfn-pacer-demo";
/// The prefix of the generated ids.
const ID_PREFIX: &str = "demo-";
/// Grace for a child to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A failure of the demo itself: setup (exit 2) or the run (exit 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoError {
    /// Something needed is missing or could not start.
    Setup(String),
    /// The run went wrong.
    Run(String),
}

impl DemoError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            DemoError::Setup(_) => 2,
            DemoError::Run(_) => 1,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            DemoError::Setup(m) | DemoError::Run(m) => m,
        }
    }
}

/// The settings of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Messages to produce.
    pub messages: u64,
    /// Global starts per second.
    pub rate: f64,
    /// Global burst.
    pub burst: f64,
    /// Instances (and ESM MaximumConcurrency).
    pub max_concurrency: u32,
    /// Share of bad messages.
    pub bad_share: f64,
    /// ESM batch size.
    pub batch_size: u16,
    /// Generator seed.
    pub seed: u64,
    /// Hard bound, seconds.
    pub max_seconds: f64,
    /// The producer's pace, messages per second.
    pub produce_rate: f64,
    /// The queue's maxReceiveCount.
    pub max_receive_count: u32,
    /// Where to write the JSON report.
    pub report_json: Option<PathBuf>,
    /// Where each run's logs go (a folder per run inside).
    pub out_dir: PathBuf,
    /// Period of the plain status line when stderr is not a terminal, seconds.
    pub progress_seconds: f64,
    /// Hold the producer back while the queue holds more than this many messages.
    pub max_queue_depth: u64,
}

/// A queue deeper than this slows moto's SQS noticeably (every call walks the whole queue).
const SLOW_QUEUE_DEPTH: u64 = 300;
/// The function's time budget per invocation under cargo lambda watch (its deadline is in 1970).
const LOCAL_DEADLINE_MS: u64 = 10_000;
/// The queue's visibility timeout, seconds: above the ESM's function timeout.
const VISIBILITY_TIMEOUT_SECONDS: u32 = 30;

/// The function's environment (besides the AWS endpoint and credentials).
pub fn function_env(
    state_machine_arn: &str,
    dlq_url: &str,
    rate: f64,
    burst: f64,
    instances: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("STATE_MACHINE_ARN", state_machine_arn.to_string()),
        ("DLQ_URL", dlq_url.to_string()),
        ("STARTS_PER_SECOND", rate.to_string()),
        ("STARTS_BURST", burst.to_string()),
        ("MAX_CONCURRENCY", instances.to_string()),
        ("LOCAL_DEADLINE_MS", LOCAL_DEADLINE_MS.to_string()),
        ("DEADLINE_MARGIN_MS", "3000".to_string()),
        ("CALL_TIMEOUT_MS", "2000".to_string()),
        // Short visibility backoffs, so a retried message comes back within the demo.
        ("RETRY_BASE_SECONDS", "1".to_string()),
        ("RETRY_MAX_SECONDS", "5".to_string()),
        ("NO_COLOR", "1".to_string()),
    ]
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Copies a starter's stdout into its log and sums its EMF lines; `handled` counts the
/// messages started, duplicate or dead-lettered.
fn capture_stdout(
    stdout: ChildStdout,
    log: PathBuf,
    emf_log: Arc<Mutex<EmfLog>>,
    handled: Arc<AtomicU64>,
    t0: Instant,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut file = match tokio::fs::OpenOptions::new().create(true).append(true).open(&log).await {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("sfn-pacer-demo: cannot write {}: {e}", log.display());
                None
            }
        };
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(sample) = emf::parse_line(&line) {
                handled.fetch_add(
                    sample.started + sample.duplicates + sample.dead_lettered,
                    Ordering::Relaxed,
                );
                let mut guard = emf_log.lock().unwrap_or_else(|p| p.into_inner());
                guard.record(t0.elapsed().as_secs_f64(), &sample);
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(line.as_bytes()).await;
                let _ = f.write_all(b"\n").await;
            }
        }
        if let Some(f) = file.as_mut() {
            let _ = f.flush().await;
        }
    })
}

/// The last JSON line of a file (a child's `--summary-json` output).
fn last_json_line(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
}

/// Posts an empty SQS batch to the function until it answers (at most `timeout`).
pub async fn warm_up(invoke_port: u16, timeout: Duration, owners: &[Handle]) -> Result<(), String> {
    let client = moto::http_client()?;
    let url = format!("http://127.0.0.1:{invoke_port}/2015-03-31/functions/{FUNCTION_NAME}/invocations");
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no answer");
    while Instant::now() < deadline {
        if let Some(dead) = owners.iter().find(|h| h.exit().is_some()) {
            return Err(format!(
                "{} ended ({}) before the function answered",
                dead.name,
                dead.exit().map(|e| e.to_string()).unwrap_or_default()
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.post(&url).body(r#"{"Records":[]}"#).send()).await {
            Ok(Ok(response)) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() && body.contains("batchItemFailures") {
                    return Ok(());
                }
                last_error = format!("HTTP {status}: {body}");
            }
            Ok(Err(e)) => last_error = DisplayErrorContext(&e).to_string(),
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "the function did not answer a warm-up invocation within {} s ({last_error})",
        timeout.as_secs()
    ))
}

/// Runs the demo. The caller stops every process still running afterwards (also on error).
pub async fn run(cfg: &RunConfig, sup: &Supervisor) -> Result<Report, DemoError> {
    let total_t0 = Instant::now();
    let setup = DemoError::Setup;
    let bins = Binaries::next_to_current_exe().map_err(setup)?;
    let cargo_lambda = paths::cargo_lambda().map_err(DemoError::Setup)?;
    let expected = expected_messages(cfg.messages, cfg.bad_share, cfg.seed, ID_PREFIX).map_err(DemoError::Setup)?;
    let bad = expected.iter().filter(|e| !e.good).count();
    let run_dir = cfg
        .out_dir
        .join(format!("run-{}-{}", unix_seconds(), std::process::id()));
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", run_dir.display())))?;
    let log = |name: &str| run_dir.join(name);
    let n = cfg.max_concurrency;
    eprintln!(
        "sfn-pacer demo: {} messages ({bad} bad) at {:.0} starts/s (burst {:.0}) over {n} instance(s) ({:.1}/s each), batch {}; logs in {}",
        cfg.messages,
        cfg.rate,
        cfg.burst,
        rate::instance_rate(cfg.rate, n),
        cfg.batch_size,
        run_dir.display()
    );

    // 1. moto (one process for SQS, one for Step Functions) and the resources.
    let port = || moto::free_port().map_err(|e| DemoError::Setup(format!("no free port: {e}")));
    let sqs_port = port()?;
    let mut sfn_port = port()?;
    for _ in 0..10 {
        if sfn_port != sqs_port {
            break;
        }
        sfn_port = port()?;
    }
    let (sqs_log, sfn_log) = (log("moto-sqs.log"), log("moto-sfn.log"));
    let options = |name: &str, port: u16, log: PathBuf| MotoOptions {
        name: name.to_string(),
        port: Some(port),
        log: Some(log),
        single_threaded: false,
    };
    let (sqs_options, sfn_options) = (
        options("moto_server-sqs", sqs_port, sqs_log),
        options("moto_server-sfn", sfn_port, sfn_log),
    );
    let (moto_sqs, moto_sfn) = tokio::try_join!(
        Moto::start_preferring_single_threaded(sup, &sqs_options),
        Moto::start_preferring_single_threaded(sup, &sfn_options),
    )
    .map_err(DemoError::Setup)?;
    let endpoints = Endpoints {
        sqs: moto_sqs.endpoint(),
        sfn: moto_sfn.endpoint(),
    };
    let sqs_sdk = moto_sqs.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sqs_sdk);
    let sfn = aws_sdk_sfn::Client::new(&moto_sfn.sdk_config().await);
    // The queues (and an unused state machine) on the SQS moto, the state machine on the other.
    let stack = moto::provision(
        &sqs_sdk,
        RESOURCE_NAME,
        cfg.max_receive_count,
        VISIBILITY_TIMEOUT_SECONDS,
    )
    .await
    .map_err(DemoError::Setup)?;
    let state_machine_arn = moto::create_state_machine(&sfn, RESOURCE_NAME)
        .await
        .map_err(DemoError::Setup)?;
    eprintln!(
        "[1/4] moto_server: SQS on {}, Step Functions on {}: queue, DLQ (maxReceiveCount {}), state machine created",
        endpoints.sqs, endpoints.sfn, cfg.max_receive_count
    );

    // 2. The Runtime API, and N starter instances polling it.
    let invoke_port = moto::free_port().map_err(|e| DemoError::Setup(format!("no free port: {e}")))?;
    let mut command = Command::new(&cargo_lambda);
    command
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(invoke_port.to_string())
        .current_dir(paths::workspace_root());
    log_to(&mut command, &log("cargo-lambda-watch.log")).map_err(DemoError::Setup)?;
    let (watch, _) = sup
        .spawn("cargo-lambda-watch", command)
        .map_err(|e| DemoError::Setup(format!("cannot start {}: {e}", cargo_lambda.display())))?;
    moto::wait_for_port(
        invoke_port,
        Duration::from_secs(60),
        &watch,
        &format!("see {}", log("cargo-lambda-watch.log").display()),
    )
    .await
    .map_err(DemoError::Setup)?;
    let emf_log = Arc::new(Mutex::new(EmfLog::default()));
    let handled = Arc::new(AtomicU64::new(0));
    let mut starters = Vec::new();
    let mut readers = Vec::new();
    // Times are measured from the producer's start; until then, from here.
    let t0 = Instant::now();
    for i in 1..=n {
        let name = format!("starter-{i}");
        let path = log(&format!("{name}.log"));
        let mut command = Command::new(&bins.starter);
        aws_env(&mut command, &endpoints);
        command
            .envs(function_env(&state_machine_arn, &stack.dlq_url, cfg.rate, cfg.burst, n))
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION_NAME)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{invoke_port}/.rt/{FUNCTION_NAME}"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(moto::log_file(&path).map_err(DemoError::Setup)?);
        let (handle, pipes) = sup
            .spawn(&name, command)
            .map_err(|e| DemoError::Setup(format!("cannot start {}: {e}", bins.starter.display())))?;
        if let Some(stdout) = pipes.stdout {
            readers.push(capture_stdout(
                stdout,
                path,
                Arc::clone(&emf_log),
                Arc::clone(&handled),
                t0,
            ));
        }
        starters.push(handle);
    }
    let mut owners = starters.clone();
    owners.push(watch.clone());
    warm_up(invoke_port, Duration::from_secs(30), &owners)
        .await
        .map_err(|e| DemoError::Setup(format!("{e}; see the logs in {}", run_dir.display())))?;
    eprintln!(
        "[2/4] cargo lambda watch (Runtime API on 127.0.0.1:{invoke_port}) with {n} starter instance(s): answering"
    );

    // 3. The event source mapping.
    let function_timeout = LOCAL_DEADLINE_MS / 1000 + 5;
    let mut command = Command::new(&bins.local_esm);
    aws_env(&mut command, &endpoints);
    command
        .args(["--queue-url", &stack.queue_url, "--function-name", FUNCTION_NAME])
        .args([
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &invoke_port.to_string(),
        ])
        .args([
            "--batch-size",
            &cfg.batch_size.to_string(),
            "--max-concurrency",
            &n.to_string(),
        ])
        .args([
            "--function-timeout",
            &function_timeout.to_string(),
            // Short polls: the SQS moto serves one request at a time, so a long poll would
            // stall every other call.
            "--wait-seconds",
            "0",
        ])
        .args(["--progress-seconds", "0", "--summary-json"])
        .args(["--max-seconds", &(cfg.max_seconds + 60.0).to_string()])
        .args(["--endpoint-url", &endpoints.sqs, "--region", REGION]);
    if cfg.batch_size > 10 {
        command.args(["--batching-window", "1"]);
    }
    command
        .stdin(Stdio::null())
        .stdout(moto::log_file(&log("local-esm.out")).map_err(DemoError::Setup)?)
        .stderr(moto::log_file(&log("local-esm.log")).map_err(DemoError::Setup)?);
    let (esm, _) = sup
        .spawn("local-esm", command)
        .map_err(|e| DemoError::Setup(format!("cannot start {}: {e}", bins.local_esm.display())))?;
    eprintln!("[3/4] local-esm: batch size {}, MaximumConcurrency {n}", cfg.batch_size);

    // 4. The producer, fed through its stdin at the pace (held back while the queue is deep).
    let mut command = Command::new(&bins.producer);
    aws_env(&mut command, &endpoints);
    command
        .args(["--queue-url", &stack.queue_url, "--stdin", "--quiet", "--summary-json"])
        .args(["--endpoint-url", &endpoints.sqs, "--region", REGION])
        .stdin(Stdio::piped())
        .stdout(moto::log_file(&log("producer.out")).map_err(DemoError::Setup)?)
        .stderr(moto::log_file(&log("producer.log")).map_err(DemoError::Setup)?);
    let produce_t0 = t0.elapsed().as_secs_f64();
    let (producer, pipes) = sup
        .spawn("producer", command)
        .map_err(|e| DemoError::Setup(format!("cannot start {}: {e}", bins.producer.display())))?;
    let stdin = pipes
        .stdin
        .ok_or_else(|| DemoError::Setup("the producer's stdin is not a pipe".to_string()))?;
    let feed_state = Arc::new(Mutex::new(FeedState::default()));
    let feeder = feed::spawn(
        stdin,
        expected.iter().map(|e| e.body.clone()).collect(),
        Feeder::new(cfg.produce_rate, cfg.max_queue_depth),
        Arc::clone(&handled),
        Arc::clone(&feed_state),
    );
    eprintln!(
        "[4/4] producer: {} messages at {:.0}/s (held back while more than {} are queued or in flight)",
        cfg.messages, cfg.produce_rate, cfg.max_queue_depth
    );

    // Watch until the producer is done and the queue is empty, or the bound.
    let mut live = Live::new(Duration::from_secs_f64(cfg.progress_seconds.max(0.0)));
    let mut must_run: Vec<Handle> = vec![
        moto_sqs.handle.clone(),
        moto_sfn.handle.clone(),
        watch.clone(),
        esm.clone(),
    ];
    must_run.extend(starters.iter().cloned());
    let mut status = Status {
        target: cfg.rate,
        phase: "producing".into(),
        ..Status::default()
    };
    let mut producer_exit = None;
    let mut empty_since: Option<f64> = None;
    let mut empty_checks = 0;
    let mut drained = false;
    let mut failure: Option<String> = None;
    let mut max_queue_depth = 0;
    let drain_seconds = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = t0.elapsed().as_secs_f64() - produce_t0;
        if let Some(dead) = must_run.iter().find(|h| h.exit().is_some()) {
            failure = Some(format!(
                "{} stopped unexpectedly ({}); see {}",
                dead.name,
                dead.exit().map(|e| e.to_string()).unwrap_or_default(),
                run_dir.display()
            ));
            break now;
        }
        if producer_exit.is_none() {
            if let Some(exit) = producer.exit() {
                producer_exit = Some(exit);
                status.phase = if exit.success() {
                    format!("produced {}", cfg.messages)
                } else {
                    format!("producer failed ({exit})")
                };
                live.println(&format!("producer finished after {now:.1} s ({exit})"));
            }
        }
        let counts = stack::queue_counts(&sqs, &stack.queue_url).await;
        if let Ok(c) = &counts {
            max_queue_depth = max_queue_depth.max(c.total());
        }
        if producer_exit.is_none() {
            let fed = feed_state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            status.phase = if let Some(e) = &fed.error {
                e.clone()
            } else if fed.held {
                format!(
                    "producing {}/{} (held: over {} outstanding)",
                    fed.written, cfg.messages, cfg.max_queue_depth
                )
            } else {
                format!("producing {}/{}", fed.written, cfg.messages)
            };
        }
        status.queue_visible = counts.as_ref().ok().map(|c| c.visible);
        status.queue_in_flight = counts.as_ref().ok().map(|c| c.not_visible + c.delayed);
        status.dlq = stack::queue_counts(&sqs, &stack.dlq_url).await.ok().map(|c| c.total());
        {
            let guard = emf_log.lock().unwrap_or_else(|p| p.into_inner());
            status.started = guard.totals.counts.started;
            status.rate = rate::window_rate(&guard.starts, t0.elapsed().as_secs_f64(), rate::WINDOW_SECONDS);
        }
        status.elapsed_seconds = now;
        live.update(&status);
        match (&producer_exit, &counts) {
            (Some(_), Ok(c)) if c.total() == 0 => {
                empty_checks += 1;
                let since = *empty_since.get_or_insert(now);
                if empty_checks >= 2 {
                    drained = true;
                    break since;
                }
            }
            _ => {
                empty_checks = 0;
                empty_since = None;
            }
        }
        if now >= cfg.max_seconds {
            live.println(&format!("--max-seconds {} reached: stopping", cfg.max_seconds));
            break now;
        }
    };
    live.finish(&status);
    feeder.abort();
    let fed = feed_state.lock().unwrap_or_else(|p| p.into_inner()).clone();

    // Stop the mapping first (gracefully: it prints its summary), then the function.
    let teardown_t0 = Instant::now();
    sup.stop(
        &[esm.clone(), producer.clone()],
        Duration::from_secs(function_timeout + 10),
    )
    .await;
    let mut function_side = starters.clone();
    function_side.push(watch.clone());
    sup.stop(&function_side, STOP_GRACE).await;
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    eprintln!(
        "stopped local-esm, the starters and cargo lambda watch ({:.1} s); counting in moto…",
        teardown_t0.elapsed().as_secs_f64()
    );

    // Count what happened, in moto.
    let count_t0 = Instant::now();
    let listed = moto::list_executions(&sfn, &state_machine_arn)
        .await
        .map_err(DemoError::Run)?;
    let executions = moto::describe_executions(&sfn, &listed).await.map_err(DemoError::Run)?;
    let dead_letters = stack::read_queue(&sqs, &stack.dlq_url, Duration::from_secs(600), Duration::from_secs(60))
        .await
        .map_err(DemoError::Run)?;
    let accounting = account(&expected, &executions, &dead_letters);
    eprintln!(
        "read {} executions and {} DLQ messages ({:.1} s)",
        executions.len(),
        dead_letters.len(),
        count_t0.elapsed().as_secs_f64()
    );
    sup.stop(&[moto_sqs.handle.clone(), moto_sfn.handle.clone()], STOP_GRACE)
        .await;
    sup.stop_all(STOP_GRACE).await;

    let producer_summary = last_json_line(&log("producer.out"));
    let esm_summary = last_json_line(&log("local-esm.out"));
    let sent = producer_summary
        .as_ref()
        .and_then(|v| v.get("sent"))
        .and_then(Value::as_u64);
    let not_sent = producer_summary
        .as_ref()
        .and_then(|v| v.get("failed"))
        .and_then(Value::as_u64);
    let (function, starts) = {
        let guard = emf_log.lock().unwrap_or_else(|p| p.into_inner());
        (guard.totals.clone(), guard.starts.clone())
    };
    let executions_in_moto = listed.len() as u64;
    let achieved = rate::per_second(executions_in_moto, drain_seconds);
    let timing = Timing {
        drain_seconds,
        producer_seconds: producer_summary
            .as_ref()
            .and_then(|v| v.get("elapsed_seconds"))
            .and_then(Value::as_f64),
        total_seconds: total_t0.elapsed().as_secs_f64(),
        target_rate: cfg.rate,
        achieved_rate: achieved,
        achieved_percent: rate::percent(achieved, cfg.rate),
        peak_rate_5s: rate::peak_window_rate(&starts, rate::WINDOW_SECONDS),
        drain_bound_seconds: rate::paced_drain_bound_seconds(
            accounting.good,
            Some(cfg.produce_rate),
            cfg.burst,
            cfg.rate,
        ),
        max_queue_depth,
        producer_held_seconds: fed.held_seconds,
    };

    let mut problems = accounting.problems();
    if let Some(f) = failure {
        problems.insert(0, f);
    }
    if !drained {
        let mut problem = format!("the queue did not drain within --max-seconds {}", cfg.max_seconds);
        if max_queue_depth > SLOW_QUEUE_DEPTH {
            problem.push_str(&format!(
                " (the queue reached {max_queue_depth} messages: moto's SQS slows down as the queue deepens, \
                 so this machine may not sustain {:.0}/s; try a lower --rate)",
                cfg.rate
            ));
        }
        problems.push(problem);
    }
    match producer_exit {
        Some(exit) if exit.success() => {}
        Some(exit) => problems.push(format!(
            "the producer failed ({exit}); see {}",
            log("producer.log").display()
        )),
        None => problems.push("the producer did not finish".to_string()),
    }
    if let Some(not) = not_sent.filter(|n| *n > 0) {
        problems.push(format!("{not} message(s) were not sent"));
    }
    let report = Report {
        ok: problems.is_empty(),
        accounted: accounting.is_complete(),
        problems,
        parameters: Parameters {
            messages: cfg.messages,
            bad_share: cfg.bad_share,
            seed: cfg.seed,
            rate: cfg.rate,
            burst: cfg.burst,
            max_concurrency: n,
            batch_size: cfg.batch_size,
            produce_rate: cfg.produce_rate,
            max_receive_count: cfg.max_receive_count,
            max_seconds: cfg.max_seconds,
        },
        sent,
        not_sent,
        executions_in_moto,
        accounting,
        function,
        timing,
        drained,
        producer: producer_summary,
        esm: esm_summary,
        processes: sup.records(),
        log_dir: run_dir.clone(),
    };
    if let Some(path) = &cfg.report_json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| DemoError::Run(format!("cannot serialize the report: {e}")))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| DemoError::Run(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(report)
}
