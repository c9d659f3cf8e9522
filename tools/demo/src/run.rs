//! `sfn-pacer-demo run`: the whole system on this machine, then the accounting.
//!
//! - moto, one request at a time per process: SQS (each deployment's queue and DLQ with
//!   redrive), Step Functions (each deployment's state machine) and, when coordinated,
//!   DynamoDB (the coordination table). One process each, because each is bound to one core
//!   by Python's lock; one request at a time, because moto's SQS is not thread-safe (see
//!   `stack`). DynamoDB gets its own process, not the Step Functions one: a start waits for
//!   its lease, so lease calls must not queue behind both deployments' StartExecution calls in
//!   one single-threaded server, and the Step Functions process then serves the same load
//!   coordinated or not (`--static-split`), which keeps the two comparable. The cost: one more
//!   Python process, started in parallel with the others.
//! - per deployment (`deployment`): `cargo lambda watch --only-lambda-apis`, its Runtime API
//!   (one each: cargo lambda routes only the workspace's binary names, so two functions of one
//!   binary need two of them, as two Lambda functions have two control planes); N prebuilt
//!   `starter` processes poll it at `/.rt/starter` (N instances, each with its own pacer, as
//!   on Lambda), their stdout carrying the EMF lines, summed per deployment; `local-esm` (its
//!   queue to its function); `producer --stdin`, fed by the demo at the pace (see `feed`).
//!
//! Every wait is bounded; the hard bound is `--max-seconds`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::accounting::{expected_messages, Shape};
use crate::deployment::{self, Coordination, Deployment, FunctionSettings, Reading, Site, LOCAL_DEADLINE_MS};
use crate::emf::FunctionTotals;
use crate::live::{Live, Status};
use crate::rate;
use crate::report::{Budget, DeploymentReport, Parameters, Report, Throughput, Timing};
use crate::tools::Binaries;
use local_stack::moto::{self, Endpoints, Moto, MotoOptions};
use local_stack::process::{Handle, Supervisor};
use local_stack::DisplayErrorContext;

/// The function name at the invoke endpoint of `make watch` (the binary's name).
pub const FUNCTION_NAME: &str = "starter";
/// The coordination table the deployments share.
pub const COORDINATION_TABLE: &str = "sfn-pacer-demo-coordination";
/// The budget's key in it (`QUOTA_KEY`), the same for every deployment.
pub const QUOTA_KEY: &str = "sfn-pacer-demo";
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
    /// Instances of each deployment (and its ESM's MaximumConcurrency).
    pub max_concurrency: u32,
    /// Deployments sharing the budget, each with its own queue, state machine and function.
    pub deployments: u32,
    /// Whether the deployments share one budget in the coordination table (else the static
    /// split: each is told its share of the rate).
    pub coordinated: bool,
    /// Share of bad messages.
    pub bad_share: f64,
    /// ESM batch size.
    pub batch_size: u16,
    /// Generator seed.
    pub seed: u64,
    /// Hard bound, seconds.
    pub max_seconds: f64,
    /// The producers' pace, messages per second, summed over the deployments.
    pub produce_rate: f64,
    /// The queue's maxReceiveCount.
    pub max_receive_count: u32,
    /// Where to write the JSON report.
    pub report_json: Option<PathBuf>,
    /// Where each run's logs go (a folder per run inside).
    pub out_dir: PathBuf,
    /// Period of the plain status line when stderr is not a terminal, seconds.
    pub progress_seconds: f64,
    /// Hold a deployment's producer back while more than this many of its messages are outstanding.
    pub max_queue_depth: u64,
    /// `MESSAGES_PER_EXECUTION` of every deployment's function (1 to 99; above 1 needs the
    /// coordination table: the demo's state machines are Standard).
    pub messages_per_execution: u32,
    /// `--max-running`: the cap on running executions, and executions that end.
    pub cap: Option<crate::cap::CapSettings>,
}

impl RunConfig {
    /// How the executions carry messages.
    pub fn shape(&self) -> Shape {
        Shape::for_messages_per_execution(self.messages_per_execution)
    }
}

/// A queue deeper than this slows moto's SQS noticeably (every call walks the whole queue).
const SLOW_QUEUE_DEPTH: u64 = 300;
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

/// Posts an empty SQS batch to `function_name` until it answers (at most `timeout`).
pub async fn warm_up(
    invoke_port: u16,
    function_name: &str,
    timeout: Duration,
    owners: &[Handle],
) -> Result<(), String> {
    let client = moto::http_client()?;
    let url = format!("http://127.0.0.1:{invoke_port}/2015-03-31/functions/{function_name}/invocations");
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

/// The moto processes.
struct Motos {
    sqs: Moto,
    sfn: Moto,
    /// DynamoDB, when the deployments coordinate.
    dynamodb: Option<Moto>,
}

impl Motos {
    /// Starts them at once, on distinct free ports, one request at a time each.
    async fn start(sup: &Supervisor, run_dir: &Path, coordinated: bool) -> Result<Motos, DemoError> {
        let ports = free_ports(3).map_err(|e| DemoError::Setup(format!("no free port: {e}")))?;
        let options = |service: &str, port: u16| MotoOptions {
            name: format!("moto_server-{service}"),
            port: Some(port),
            log: Some(run_dir.join(format!("moto-{service}.log"))),
            single_threaded: false,
        };
        let (sqs, sfn, dynamodb) = (
            options("sqs", ports[0]),
            options("sfn", ports[1]),
            options("ddb", ports[2]),
        );
        let dynamodb = async {
            if coordinated {
                Moto::start_preferring_single_threaded(sup, &dynamodb).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let (sqs, sfn, dynamodb) = tokio::try_join!(
            Moto::start_preferring_single_threaded(sup, &sqs),
            Moto::start_preferring_single_threaded(sup, &sfn),
            dynamodb,
        )
        .map_err(DemoError::Setup)?;
        Ok(Motos { sqs, sfn, dynamodb })
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            sqs: self.sqs.endpoint(),
            sfn: self.sfn.endpoint(),
        }
    }

    fn handles(&self) -> Vec<Handle> {
        let dynamodb = self.dynamodb.iter().map(|m| m.handle.clone());
        [self.sqs.handle.clone(), self.sfn.handle.clone()]
            .into_iter()
            .chain(dynamodb)
            .collect()
    }
}

/// `n` distinct TCP ports that were free on 127.0.0.1 a moment ago (held together while read).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Creates the coordination table (when coordinated) and returns what the functions are told.
async fn function_settings(cfg: &RunConfig, motos: &Motos) -> Result<FunctionSettings, DemoError> {
    let coordination = match &motos.dynamodb {
        Some(dynamodb) => {
            let table = moto::create_coordination_table(&dynamodb.sdk_config().await, COORDINATION_TABLE)
                .await
                .map_err(DemoError::Setup)?;
            Some(Coordination {
                table,
                quota_key: QUOTA_KEY.to_string(),
                endpoint: dynamodb.endpoint(),
            })
        }
        None => None,
    };
    let (rate, burst) = rate::deployment_budget(cfg.rate, cfg.burst, cfg.deployments, cfg.coordinated);
    Ok(FunctionSettings {
        rate,
        burst,
        instances: cfg.max_concurrency,
        messages_per_execution: cfg.messages_per_execution,
        coordination,
        cap: cfg.cap,
    })
}

/// What watching the run found.
#[derive(Default)]
struct Watched {
    /// From the producers' start until the queues were found empty (or the bound), seconds.
    drain_seconds: f64,
    drained: bool,
    /// A process that stopped unexpectedly.
    failure: Option<String>,
    /// The deepest the queues got together.
    max_queue_depth: u64,
}

/// The producers' phase for the live line.
fn phase(deployments: &[Deployment], messages: u64) -> String {
    let exits: Vec<_> = deployments.iter().filter_map(|d| d.producer_exit).collect();
    if exits.len() == deployments.len() {
        return match exits.iter().find(|e| !e.success()) {
            None => format!("produced {messages}"),
            Some(exit) => format!("a producer failed ({exit})"),
        };
    }
    let fed: Vec<_> = deployments.iter().map(Deployment::fed).collect();
    let written: u64 = fed.iter().map(|f| f.written).sum();
    match fed.iter().find_map(|f| f.error.clone()) {
        Some(error) => error,
        None if fed.iter().any(|f| f.held) => {
            format!("producing {written}/{messages} (held: a queue is over --max-queue-depth outstanding)")
        }
        None => format!("producing {written}/{messages}"),
    }
}

/// The live line's figures, summed over the deployments.
fn status(deployments: &[Deployment], readings: &[Reading], cfg: &RunConfig, elapsed_seconds: f64) -> Status {
    let sum = |f: fn(&Reading) -> Option<u64>| readings.iter().map(f).sum::<Option<u64>>();
    let rates: Vec<(String, f64)> = deployments
        .iter()
        .zip(readings)
        .map(|(d, r)| (d.name.clone(), r.rate))
        .collect();
    Status {
        elapsed_seconds,
        queue_visible: sum(|r| r.queue.map(|q| q.visible)),
        queue_in_flight: sum(|r| r.queue.map(|q| q.not_visible + q.delayed)),
        started: readings.iter().map(|r| r.started).sum(),
        executions: readings.iter().map(|r| r.executions).sum(),
        rate: rates.iter().map(|(_, r)| r).sum(),
        rates,
        target: cfg.rate,
        batch: cfg.shape() == Shape::Batch,
        message_rate: readings.iter().map(|r| r.message_rate).sum(),
        dlq: sum(|r| r.dlq),
        phase: phase(deployments, cfg.messages),
    }
}

/// Watches until every producer is done and every queue is empty, a process stops, or the bound.
async fn watch_run(
    cfg: &RunConfig,
    site: &Site<'_>,
    deployments: &mut [Deployment],
    sqs: &aws_sdk_sqs::Client,
    must_run: &[Handle],
    produce_t0: f64,
) -> Watched {
    let mut live = Live::new(Duration::from_secs_f64(cfg.progress_seconds.max(0.0)));
    let mut watched = Watched::default();
    let mut last = Status::default();
    let (mut empty_since, mut empty_checks) = (None, 0);
    watched.drain_seconds = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = site.t0.elapsed().as_secs_f64() - produce_t0;
        if let Some(dead) = must_run.iter().find(|h| h.exit().is_some()) {
            let exit = dead.exit().map(|e| e.to_string()).unwrap_or_default();
            watched.failure = Some(format!(
                "{} stopped unexpectedly ({exit}); see {}",
                dead.name,
                site.run_dir.display()
            ));
            break now;
        }
        let mut readings = Vec::new();
        for d in deployments.iter_mut() {
            if let Some(exit) = d.note_producer_exit() {
                live.println(&format!("producer-{} finished after {now:.1} s ({exit})", d.name));
            }
            readings.push(d.read(sqs, site.t0.elapsed().as_secs_f64()).await);
        }
        last = status(deployments, &readings, cfg, now);
        live.update(&last);
        let queued = readings.iter().map(|r| r.queue.map(|q| q.total())).sum::<Option<u64>>();
        watched.max_queue_depth = watched.max_queue_depth.max(queued.unwrap_or(0));
        let produced = deployments.iter().all(|d| d.producer_exit.is_some());
        if produced && queued == Some(0) {
            empty_checks += 1;
            let since = *empty_since.get_or_insert(now);
            if empty_checks >= 2 {
                watched.drained = true;
                break since;
            }
        } else {
            (empty_since, empty_checks) = (None, 0);
        }
        if now >= cfg.max_seconds {
            live.println(&format!("--max-seconds {} reached: stopping", cfg.max_seconds));
            break now;
        }
    };
    live.finish(&last);
    watched
}

/// Stops the mappings and producers first (gracefully: they print their summaries), then the
/// functions and their Runtime APIs.
async fn stop_deployments(sup: &Supervisor, deployments: &mut [Deployment]) {
    let t0 = Instant::now();
    for d in deployments.iter_mut() {
        d.stop_feeding();
    }
    let mapping: Vec<Handle> = deployments.iter().flat_map(Deployment::mapping).cloned().collect();
    sup.stop(&mapping, Duration::from_secs(deployment::FUNCTION_TIMEOUT_SECONDS + 10))
        .await;
    let function: Vec<Handle> = deployments.iter().flat_map(Deployment::function).cloned().collect();
    sup.stop(&function, STOP_GRACE).await;
    for d in deployments.iter_mut() {
        d.drain_stdout().await;
    }
    eprintln!(
        "stopped local-esm, the starters and cargo lambda watch ({:.1} s); counting in moto…",
        t0.elapsed().as_secs_f64()
    );
}

/// Reads what each deployment did in moto; returns their reports and every start time.
async fn count_in_moto(
    cfg: &RunConfig,
    site: &Site<'_>,
    deployments: &[Deployment],
    motos: &Motos,
    drain_seconds: f64,
) -> Result<(Vec<DeploymentReport>, Vec<(f64, u64)>), DemoError> {
    let t0 = Instant::now();
    let sqs = aws_sdk_sqs::Client::new(&motos.sqs.sdk_config().await);
    let sfn = aws_sdk_sfn::Client::new(&motos.sfn.sdk_config().await);
    let (mut reports, mut starts) = (Vec::new(), Vec::new());
    for d in deployments {
        let found = d.find(&sqs, &sfn, cfg.shape()).await.map_err(DemoError::Run)?;
        starts.extend(found.listed.iter().map(|l| (l.started_at, 1)));
        reports.push(d.report(site, found, drain_seconds, cfg.rate));
    }
    let dead: u64 = reports.iter().map(|r| r.accounting.dlq_depth).sum();
    eprintln!(
        "read {} executions and {dead} DLQ messages ({:.1} s)",
        starts.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok((reports, starts))
}

/// Why the run failed, besides the deployments' own problems.
fn run_problems(cfg: &RunConfig, watched: &Watched, budget: &Budget) -> Vec<String> {
    let mut problems: Vec<String> = watched.failure.iter().cloned().collect();
    if !watched.drained {
        let mut problem = format!("the queues did not drain within --max-seconds {}", cfg.max_seconds);
        if watched.max_queue_depth > SLOW_QUEUE_DEPTH {
            problem.push_str(&format!(
                " (the queues reached {} messages: moto's SQS slows down as a queue deepens, so this machine \
                 may not sustain {:.0}/s; try a lower --rate)",
                watched.max_queue_depth, cfg.rate
            ));
        }
        problems.push(problem);
    }
    if !budget.within {
        problems.push(format!(
            "the starts exceeded the budget: {:.1}/s over 5 s, above the limit {:.1}/s",
            budget.peak_rate_5s, budget.limit
        ));
    }
    problems
}

fn parameters(cfg: &RunConfig, settings: &FunctionSettings) -> Parameters {
    let coordination = settings.coordination.as_ref();
    Parameters {
        messages: cfg.messages,
        bad_share: cfg.bad_share,
        seed: cfg.seed,
        rate: cfg.rate,
        burst: cfg.burst,
        deployments: cfg.deployments,
        coordination_table: coordination.map(|c| c.table.clone()),
        quota_key: coordination.map(|c| c.quota_key.clone()),
        told_rate: settings.rate,
        told_burst: settings.burst,
        max_concurrency: cfg.max_concurrency,
        batch_size: cfg.batch_size,
        messages_per_execution: cfg.messages_per_execution,
        produce_rate: cfg.produce_rate,
        max_receive_count: cfg.max_receive_count,
        max_seconds: cfg.max_seconds,
    }
}

/// The opening line: what runs, and where the logs go.
fn announce(cfg: &RunConfig, deployments: &[Deployment], settings: &FunctionSettings, run_dir: &Path) {
    let bad: usize = deployments
        .iter()
        .map(|d| d.expected.iter().filter(|e| !e.good).count())
        .sum();
    let names: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
    let sharing = match &settings.coordination {
        Some(c) => format!("coordinated in DynamoDB table {} (QUOTA_KEY {})", c.table, c.quota_key),
        None => "static split".to_string(),
    };
    let grouping = match cfg.messages_per_execution {
        1 => String::new(),
        n => format!(", up to {n} messages per execution (claimed in the coordination table)"),
    };
    eprintln!(
        "sfn-pacer demo: {} messages ({bad} bad) over {} deployment(s) ({}) sharing {:.0} starts/s (burst {:.0}), \
         {sharing}: each told {}/s, burst {}, {} instance(s) each, batch {}{grouping}; logs in {}",
        cfg.messages,
        deployments.len(),
        names.join(", "),
        cfg.rate,
        cfg.burst,
        settings.rate,
        settings.burst,
        cfg.max_concurrency,
        cfg.batch_size,
        run_dir.display()
    );
}

/// Creates the run's log folder.
fn run_dir(out_dir: &Path) -> Result<PathBuf, DemoError> {
    let dir = out_dir.join(format!("run-{}-{}", unix_seconds(), std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Starts moto, creates the coordination table (when coordinated) and each deployment's
/// queues and state machine, with its share of the messages.
async fn provision(
    cfg: &RunConfig,
    sup: &Supervisor,
    run_dir: &Path,
) -> Result<(Motos, FunctionSettings, Vec<Deployment>), DemoError> {
    let expected = expected_messages(cfg.messages, cfg.bad_share, cfg.seed, ID_PREFIX).map_err(DemoError::Setup)?;
    let motos = Motos::start(sup, run_dir, cfg.coordinated).await?;
    let settings = function_settings(cfg, &motos).await?;
    let sqs_sdk = motos.sqs.sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&motos.sfn.sdk_config().await);
    let hands = deployment::deal(expected, cfg.deployments as usize);
    let mut deployments = Vec::new();
    for (name, hand) in deployment::names(cfg.deployments).iter().zip(hands) {
        let visibility = VISIBILITY_TIMEOUT_SECONDS;
        let d = Deployment::provision(name, hand, &sqs_sdk, &sfn, cfg.max_receive_count, visibility)
            .await
            .map_err(DemoError::Setup)?;
        deployments.push(d);
    }
    announce(cfg, &deployments, &settings, run_dir);
    let endpoints = motos.endpoints();
    let ddb = motos
        .dynamodb
        .as_ref()
        .map(|m| format!(", DynamoDB on {}", m.endpoint()))
        .unwrap_or_default();
    eprintln!(
        "[1/4] moto_server: SQS on {}, Step Functions on {}{ddb}: per deployment a queue, DLQ (maxReceiveCount {}) \
         and state machine",
        endpoints.sqs, endpoints.sfn, cfg.max_receive_count
    );
    Ok((motos, settings, deployments))
}

/// Starts each deployment's function, local-esm and producer; returns when the producers
/// started, in seconds since `site.t0`.
async fn start_deployments(
    cfg: &RunConfig,
    site: &Site<'_>,
    deployments: &mut [Deployment],
    settings: &FunctionSettings,
) -> Result<f64, DemoError> {
    for d in deployments.iter_mut() {
        d.start_function(site, settings).await.map_err(DemoError::Setup)?;
    }
    let ports: Vec<String> = deployments
        .iter()
        .map(|d| format!("{} on 127.0.0.1:{}", d.name, d.invoke_port))
        .collect();
    eprintln!(
        "[2/4] cargo lambda watch per deployment (Runtime API of {}), {} starter instance(s) each: answering",
        ports.join(", "),
        cfg.max_concurrency
    );
    for d in deployments.iter_mut() {
        d.spawn_esm(site, cfg.batch_size, cfg.max_concurrency, cfg.max_seconds)
            .map_err(DemoError::Setup)?;
    }
    eprintln!(
        "[3/4] local-esm per deployment: batch size {}, MaximumConcurrency {}",
        cfg.batch_size, cfg.max_concurrency
    );
    // Fed through their stdin at the pace, each held back while its queue is deep.
    let produce_t0 = site.t0.elapsed().as_secs_f64();
    let produce_rate = cfg.produce_rate / f64::from(cfg.deployments);
    for d in deployments.iter_mut() {
        d.spawn_producer(site, produce_rate, cfg.max_queue_depth)
            .map_err(DemoError::Setup)?;
    }
    eprintln!(
        "[4/4] producers: {} messages at {:.0}/s in all (each held back while more than {} of its own are queued \
         or in flight)",
        cfg.messages, cfg.produce_rate, cfg.max_queue_depth
    );
    Ok(produce_t0)
}

/// The timings of the run, from what was watched and the producers' summaries.
fn timing(cfg: &RunConfig, watched: &Watched, reports: &[DeploymentReport], total_seconds: f64) -> Timing {
    let good: u64 = reports.iter().map(|r| r.accounting.good).sum();
    Timing {
        drain_seconds: watched.drain_seconds,
        producer_seconds: reports
            .iter()
            .filter_map(|r| r.producer.as_ref()?.get("elapsed_seconds")?.as_f64())
            .reduce(f64::max),
        total_seconds,
        drain_bound_seconds: rate::paced_drain_bound_seconds(
            good,
            cfg.messages_per_execution,
            Some(cfg.produce_rate),
            cfg.burst,
            cfg.rate,
        ),
        max_queue_depth: watched.max_queue_depth,
    }
}

/// Runs the demo. The caller stops every process still running afterwards (also on error).
pub async fn run(cfg: &RunConfig, sup: &Supervisor) -> Result<Report, DemoError> {
    let total_t0 = Instant::now();
    let bins = Binaries::next_to_current_exe().map_err(DemoError::Setup)?;
    let run_dir = run_dir(&cfg.out_dir)?;
    let (motos, settings, mut deployments) = provision(cfg, sup, &run_dir).await?;
    let endpoints = motos.endpoints();
    let site = Site {
        sup,
        bins: &bins,
        endpoints: &endpoints,
        run_dir: &run_dir,
        t0: Instant::now(),
    };
    let produce_t0 = start_deployments(cfg, &site, &mut deployments, &settings).await?;

    let releases = start_releases(cfg, &motos, &deployments, &settings).await?;
    let mut must_run = motos.handles();
    must_run.extend(deployments.iter().flat_map(Deployment::must_run).cloned());
    let sqs = aws_sdk_sqs::Client::new(&motos.sqs.sdk_config().await);
    let watched = watch_run(cfg, &site, &mut deployments, &sqs, &must_run, produce_t0).await;
    let cap = match releases {
        Some(releases) => Some(releases.finish(watched.drain_seconds).await.map_err(DemoError::Run)?),
        None => None,
    };
    stop_deployments(sup, &mut deployments).await;
    let (reports, starts) = count_in_moto(cfg, &site, &deployments, &motos, watched.drain_seconds).await?;
    sup.stop(&motos.handles(), STOP_GRACE).await;
    sup.stop_all(STOP_GRACE).await;

    let peak = rate::peak_window_rate(&starts, rate::WINDOW_SECONDS);
    let budget = Budget::check(cfg.rate, cfg.burst, starts.len() as u64, watched.drain_seconds, peak);
    let mut problems = run_problems(cfg, &watched, &budget);
    problems.extend(cap.iter().flat_map(crate::cap::CapReport::problems));
    let mut function = FunctionTotals::default();
    for (d, r) in deployments.iter().zip(&reports) {
        problems.extend(d.problems(&site, r));
        function.merge(&r.function);
    }
    let carried = reports.iter().map(|r| r.accounting.carried).sum();
    let throughput = Throughput::new(carried, starts.len() as u64, watched.drain_seconds, cfg.rate);
    let report = Report {
        ok: problems.is_empty(),
        accounted: reports.iter().all(|r| r.accounting.is_complete()),
        problems,
        parameters: parameters(cfg, &settings),
        timing: timing(cfg, &watched, &reports, total_t0.elapsed().as_secs_f64()),
        deployments: reports,
        function,
        throughput,
        budget,
        drained: watched.drained,
        processes: sup.records(),
        log_dir: run_dir.clone(),
        cap,
    };
    write_json(cfg.report_json.as_deref(), &report)?;
    Ok(report)
}

/// With `--max-running`: the release function (in this process), the local stack's ender of
/// executions and EventBridge's delivery of their events, started with the deployments.
async fn start_releases(
    cfg: &RunConfig,
    motos: &Motos,
    deployments: &[Deployment],
    settings: &FunctionSettings,
) -> Result<Option<crate::cap::Releases>, DemoError> {
    let (Some(cap), Some(dynamodb), Some(first)) = (cfg.cap, &motos.dynamodb, deployments.first()) else {
        return Ok(None);
    };
    let machines = deployments.iter().map(|d| d.state_machine_arn.clone()).collect();
    let sfn_sdk = motos.sfn.sdk_config().await;
    let releases = crate::cap::Releases::start(
        cap,
        first.function_env(settings),
        &sfn_sdk,
        &dynamodb.sdk_config().await,
        machines,
        cfg.seed,
    )
    .await
    .map_err(DemoError::Setup)?;
    eprintln!(
        "      running executions cap {} (RUNNING_KEY {}), executions of {} s ended by the local stack, their \
         events delivered to the release function{}",
        cap.max_running,
        crate::cap::RUNNING_KEY,
        cap.execution_seconds,
        if cap.event_faults {
            " (5 % dropped, 10 % twice)"
        } else {
            ""
        }
    );
    Ok(Some(releases))
}

/// Writes the report as JSON to `path`, if given.
fn write_json(path: Option<&Path>, report: &Report) -> Result<(), DemoError> {
    let Some(path) = path else {
        return Ok(());
    };
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| DemoError::Run(format!("cannot serialize the report: {e}")))?;
    std::fs::write(path, json + "\n").map_err(|e| DemoError::Run(format!("cannot write {}: {e}", path.display())))
}
