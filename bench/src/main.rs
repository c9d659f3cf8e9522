//! `bench`: sfn-pacer's benchmark runner (issue 6).
//!
//! Sections (all by default, `--sections` to pick):
//! - `capacity`: the fake Step Functions endpoint's own requests per second;
//! - `drain`: the same backlog through the real handler, K simulated instances, three
//!   strategies (naive, sdk-adaptive, ours), against the quota's exact token bucket;
//! - `pacing`: achieved rate and largest 1 s burst at targets from 10/s to 3,000/s;
//! - `bootstrap`: the release bootstrap's size, init-to-ready time and peak RSS (VmHWM; not
//!   getrusage's children maxrss, which counts the runner's own RSS shared until exec);
//! - `cost`: handler CPU per message with the network stubbed, and callgrind instructions;
//! - `shared`: the shared budget (coordinated mode) against the static split: deployments
//!   sharing the account, instances replaced, a foreign caller, a rate change, table calls;
//! - `scale`: a thousand busy instances on one budget (Standard and Express, a quick and a
//!   faulty table, clock skew), simulated on a paused clock against the per-item write limit;
//! - `batch`: batch executions (`MESSAGES_PER_EXECUTION`): messages per second against the
//!   refill, the coordination table per message, enqueue → start, the bill per million;
//! - `sensitivity`: the drain at a fixed BatchSize (the tail of large batches);
//! - `running`: the cap on running executions (`MAX_RUNNING_EXECUTIONS`), in simulated time.
//!
//! Writes `results.md`, `results.json` and `drain.svg` (and `drain.png` with the `png`
//! feature) into `--out`. Every run is bounded in time; see `--help` for the knobs.

mod batch;
mod billing;
mod bootstrap;
mod capacity;
mod chart;
mod common;
mod cost;
mod cpu;
mod drain;
mod pacing;
mod report;
mod running;
mod scale;
mod shared;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::common::{BenchError, Runtimes};
use crate::drain::{Scenario, Settings, Strategy};
use crate::report::Results;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "sfn-pacer benchmarks: drain against baselines, pacing accuracy, cost"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where results.md, results.json and the charts go.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Sections to run, comma-separated: capacity, drain, sensitivity (the drain's sensitivity
    /// to BatchSize), pacing, cost, bootstrap, shared (the shared budget against the static
    /// split), scale (a thousand instances on one budget), batch (batch executions,
    /// MESSAGES_PER_EXECUTION), running (the cap on running executions, MAX_RUNNING_EXECUTIONS).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "capacity,drain,sensitivity,pacing,cost,bootstrap,shared,scale,batch,running"
    )]
    sections: Vec<String>,
    /// The `scale` section's busy instances.
    #[arg(long, default_value_t = 1_000)]
    scale_instances: usize,
    /// The `scale` section's messages per invocation (BatchSize) at Standard's quota.
    #[arg(long, default_value_t = 10)]
    scale_batch: u64,
    /// The `scale` section's BatchSize at Express's quota (its last run uses `--scale-batch`).
    #[arg(long, default_value_t = 100)]
    scale_express_batch: u64,
    /// The `running` section's runs, by number (1 to 8; see BENCHMARKS.md).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8")]
    running_runs: Vec<usize>,
    /// The `batch` section's MESSAGES_PER_EXECUTION values (1 to 99).
    #[arg(long, value_delimiter = ',', default_value = "1,10,25")]
    messages_per_execution: Vec<usize>,
    /// The `batch` section's account quota, `burst/refill`.
    #[arg(long, default_value = "1300/300")]
    batch_quota: String,
    /// The `batch` section's instances (the mapping's MaximumConcurrency, MAX_CONCURRENCY).
    #[arg(long, default_value_t = 10)]
    batch_instances: usize,
    /// The `batch` section's BatchSize (records per invocation; at least the largest N).
    #[arg(long, default_value_t = 100)]
    batch_records: usize,
    /// The `batch` section's message body, bytes.
    #[arg(long, default_value_t = 200)]
    batch_body_bytes: usize,
    /// The `batch` section's steady feeds, messages per second (each run at every N whose quota
    /// allows 0.9 × N × r).
    #[arg(long, value_delimiter = ',', default_value = "250,2400")]
    batch_feeds: Vec<f64>,
    /// How long each feed sends, seconds.
    #[arg(long, default_value_t = 10.0)]
    batch_feed_seconds: f64,
    /// The feeds' batching window, ms (the template's MaximumBatchingWindowInSeconds is 1 s).
    #[arg(long, default_value_t = 1000)]
    batch_feed_window_ms: u64,
    /// The backlogs' batching window, ms (10: the simulated runs' default, as in `drain`).
    #[arg(long, default_value_t = 10)]
    batch_backlog_window_ms: u64,
    /// Scenarios of the `shared` section: 1 two deployments, one busy; 2 both busy; 3 K = 10 at
    /// BatchSize `--sensitivity-batch-size`; 4 an instance replaced mid-drain; 5 a foreign
    /// caller; 6 the rate halves mid-run; 7 the table's calls and latency per start.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7")]
    shared_scenarios: Vec<u32>,
    /// The account's quota in the `shared` section, `burst/refill`.
    #[arg(long, default_value = "1300/300")]
    shared_quota: String,
    /// Instance counts K of the drain runs (the mapping's MaximumConcurrency).
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    instances: Vec<usize>,
    /// Quotas of the drain runs, `burst/refill` (calls, calls per second).
    #[arg(long, value_delimiter = ',', default_value = "1300/300,800/150")]
    quotas: Vec<String>,
    /// Strategies of the drain runs: naive, sdk-adaptive, ours (and ours+headroom: an extra
    /// reserve on top of the pacer's own 100 ms, for experiments).
    #[arg(long, value_delimiter = ',', default_value = "naive,sdk-adaptive,ours")]
    strategies: Vec<String>,
    /// BatchSize of the `sensitivity` section (its runs: the largest K, each quota, ours), and of
    /// the `shared` section's scenario 3.
    #[arg(long, default_value_t = 100)]
    sensitivity_batch_size: usize,
    /// T* of the drain runs, seconds: M = B + T* × r.
    #[arg(long, default_value_t = 10.0)]
    ideal_seconds: f64,
    /// Records per invocation (the mapping's BatchSize): a number, or `auto` for half a
    /// second of an instance's share (0.5 × r / K), between 10 and 100.
    #[arg(long, default_value = "auto")]
    batch_size: String,
    /// ours+headroom: the bucket kept in reserve, ms of refill (STARTS_BURST = B − r × h).
    #[arg(long, default_value_t = 100)]
    headroom_ms: u64,
    /// The mapping's function timeout, seconds.
    #[arg(long, default_value_t = 30)]
    function_timeout_s: u64,
    /// The queue's maxReceiveCount.
    #[arg(long, default_value_t = 5)]
    max_receive_count: u32,
    /// The queue's visibility timeout, seconds.
    #[arg(long, default_value_t = 30)]
    visibility_timeout_s: u64,
    /// RETRY_BASE_SECONDS of every strategy (visibility backoff of a retried message).
    #[arg(long, default_value_t = 1)]
    retry_base_s: u64,
    /// RETRY_MAX_SECONDS of every strategy.
    #[arg(long, default_value_t = 8)]
    retry_max_s: u64,
    /// Request-path delay before a call reaches the quota, ms (plus `--request-jitter-ms`).
    #[arg(long, default_value_t = 5)]
    request_latency_ms: u64,
    /// Uniform jitter of the request path, ms.
    #[arg(long, default_value_t = 5)]
    request_jitter_ms: u64,
    /// The endpoint's delay before responding, ms (plus `--response-jitter-ms`).
    #[arg(long, default_value_t = 15)]
    response_latency_ms: u64,
    /// Uniform jitter of the response, ms.
    #[arg(long, default_value_t = 10)]
    response_jitter_ms: u64,
    /// Pacing targets, calls per second.
    #[arg(long, value_delimiter = ',', default_value = "10,100,300,1000,3000")]
    pacing_targets: Vec<f64>,
    /// Steady window of each pacing target, seconds.
    #[arg(long, default_value_t = 10)]
    pacing_window_s: u64,
    /// Messages of the cost loop.
    #[arg(long, default_value_t = 50_000)]
    cost_messages: u64,
    /// Skip the callgrind instruction count.
    #[arg(long)]
    no_callgrind: bool,
    /// Spawns of the bootstrap whose init-to-ready times give the median.
    #[arg(long, default_value_t = 10)]
    init_spawns: usize,
    /// The bootstrap to measure (default: <target dir>/release/starter).
    #[arg(long)]
    bootstrap: Option<PathBuf>,
    /// Seed of the latency jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Internal: the callgrind probe (decode + process + encode N messages, no output).
    #[command(hide = true)]
    CostProbe {
        /// Messages to process.
        #[arg(long)]
        messages: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CostProbe { messages }) => cost::probe(messages),
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The latency probes of the `shared` section: (instances, units per invocation), at the
/// quota's full rate.
const PROBES: [(usize, usize); 2] = [(1, 100), (10, 10)];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| local_stack::paths::workspace_root().join("target"))
}

fn parse_quota(text: &str) -> Result<(u64, f64), BenchError> {
    let (b, r) = text
        .split_once('/')
        .ok_or_else(|| format!("--quotas: expected burst/refill, got {text:?}"))?;
    let burst = b
        .trim()
        .parse()
        .map_err(|_| format!("--quotas: bad burst in {text:?}"))?;
    let refill: f64 = r
        .trim()
        .parse()
        .map_err(|_| format!("--quotas: bad refill in {text:?}"))?;
    if refill <= 0.0 {
        return Err(format!("--quotas: the refill must be positive in {text:?}").into());
    }
    Ok((burst, refill))
}

fn parse_strategy(text: &str) -> Result<Strategy, BenchError> {
    Strategy::ALL
        .into_iter()
        .find(|s| s.to_string() == text.trim())
        .ok_or_else(|| format!("--strategies: unknown {text:?} (naive, sdk-adaptive, ours, ours+headroom)").into())
}

fn machine() -> Vec<String> {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    vec![
        format!("CPU: {cpu_model}, {cores} cores available (nproc)"),
        format!("Kernel: Linux {}", kernel.trim()),
        format!("Load average at start: {}", load_average()),
    ]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Prints a line above the progress bars, or to stderr when they are hidden (not a terminal).
fn note(overall: &ProgressBar, line: String) {
    if overall.is_hidden() {
        eprintln!("{line}");
    } else {
        overall.println(line);
    }
}

fn bar(multi: &MultiProgress, len: u64, message: String) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("  {msg:<34} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

fn run(cli: &Cli) -> Result<(), BenchError> {
    let began = Instant::now();
    let wants = |s: &str| cli.sections.iter().any(|x| x.trim() == s);
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("creating {}: {e}", cli.out.display()))?;
    #[cfg(feature = "png")]
    let font = chart::register_font()?;
    let runtimes = Runtimes::new()?;
    let mut results = Results {
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Results::default()
    };
    let multi = MultiProgress::new();
    let quotas: Vec<(u64, f64)> = cli.quotas.iter().map(|q| parse_quota(q)).collect::<Result<_, _>>()?;
    let strategies: Vec<Strategy> = cli
        .strategies
        .iter()
        .map(|s| parse_strategy(s))
        .collect::<Result<_, _>>()?;
    let drain_runs = if wants("drain") {
        cli.instances.len() * quotas.len() * strategies.len()
    } else {
        0
    };
    let sensitivity_runs = if wants("sensitivity") { quotas.len() } else { 0 };
    let batch_quota = parse_quota(&cli.batch_quota)?;
    let batch_plans = if wants("batch") {
        if let Some(n) = cli
            .messages_per_execution
            .iter()
            .find(|n| !(1..=sfn_pacer::config::MAX_MESSAGES_PER_EXECUTION).contains(n) || **n > cli.batch_records)
        {
            return Err(format!(
                "--messages-per-execution: {n} is not within 1 to {} and at most --batch-records {}",
                sfn_pacer::config::MAX_MESSAGES_PER_EXECUTION,
                cli.batch_records
            )
            .into());
        }
        batch::plans(
            &cli.messages_per_execution,
            &batch::Shape {
                instances: cli.batch_instances.max(1),
                batch_size: cli.batch_records,
                account: batch_quota,
                ideal_seconds: cli.ideal_seconds,
                body_bytes: cli.batch_body_bytes,
                feeds: cli.batch_feeds.clone(),
                feed_seconds: cli.batch_feed_seconds,
                feed_window: Duration::from_millis(cli.batch_feed_window_ms),
                backlog_window: Duration::from_millis(cli.batch_backlog_window_ms),
            },
        )
    } else {
        Vec::new()
    };
    let shared_quota = parse_quota(&cli.shared_quota)?;
    let shared_plans = if wants("shared") {
        shared::plans(
            &cli.shared_scenarios,
            shared_quota.0,
            shared_quota.1,
            cli.sensitivity_batch_size,
        )
    } else {
        Vec::new()
    };
    let shared_probes = if wants("shared") && cli.shared_scenarios.contains(&7) {
        PROBES.len() * 2
    } else {
        0
    };
    let scale_plans = if wants("scale") {
        scale::plans(
            cli.scale_instances,
            cli.scale_batch,
            cli.scale_express_batch,
            shared::SKEW,
        )
    } else {
        Vec::new()
    };
    let steps = [
        scale_plans.len(),
        wants("capacity") as usize,
        drain_runs,
        sensitivity_runs,
        if wants("pacing") { cli.pacing_targets.len() } else { 0 },
        wants("cost") as usize * 2,
        wants("bootstrap") as usize,
        shared_plans.len() + shared_probes,
        batch_plans.len(),
        if wants("running") { cli.running_runs.len() } else { 0 },
    ]
    .iter()
    .sum::<usize>();
    let overall = multi.add(ProgressBar::new(steps as u64));
    overall.set_style(
        ProgressStyle::with_template("{msg:<36} [{bar:30}] {pos}/{len} steps, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-"),
    );
    overall.set_message("sfn-pacer bench");

    if wants("capacity") {
        overall.set_message("fake endpoint capacity");
        results.capacity = Some(capacity::measure(&runtimes, 40_000, 64, Duration::from_secs(5))?);
        overall.inc(1);
    }

    let settings = Settings {
        response_latency: Duration::from_millis(cli.response_latency_ms),
        response_jitter: Duration::from_millis(cli.response_jitter_ms),
        request_latency: Duration::from_millis(cli.request_latency_ms),
        request_jitter: Duration::from_millis(cli.request_jitter_ms),
        batch_size: match cli.batch_size.trim() {
            "auto" => None,
            n => Some(
                n.parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--batch-size: expected a positive number or auto, got {n:?}"))?,
            ),
        },
        headroom: Duration::from_millis(cli.headroom_ms),
        max_receive_count: cli.max_receive_count,
        visibility_timeout: Duration::from_secs(cli.visibility_timeout_s),
        retry_base_seconds: cli.retry_base_s,
        retry_max_seconds: cli.retry_max_s,
        function_timeout: Duration::from_secs(cli.function_timeout_s),
        max_run: Duration::from_secs_f64((cli.ideal_seconds * 6.0).max(60.0)),
        seed: cli.seed,
    };
    let mut run_id = 0;
    let scenario_for = |k: usize, burst: u64, refill: f64| Scenario {
        instances: k,
        burst,
        refill_per_second: refill,
        messages: burst + (cli.ideal_seconds * refill).round() as u64,
    };
    let mut drain_one =
        |strategy: Strategy, scenario: Scenario, settings: &Settings| -> Result<drain::DrainResult, BenchError> {
            run_id += 1;
            let (k, burst, refill) = (scenario.instances, scenario.burst, scenario.refill_per_second);
            let label = format!(
                "{strategy} K={k} {burst}/{refill} batch {}",
                scenario.batch_size(settings)
            );
            overall.set_message(format!("drain: {label}"));
            let pb = bar(&multi, scenario.messages, label.clone());
            let progress = |done: u64, _total: u64| pb.set_position(done);
            let result = drain::run(&runtimes, strategy, scenario, settings, run_id, &progress)?;
            pb.finish_and_clear();
            multi.remove(&pb);
            note(
                &overall,
                format!(
                    "drain {label}: T = {:.2} s (T* = {:.1}), started {}, throttled {:.2} %, redriven {}",
                    result.drain_seconds,
                    scenario.ideal_seconds(),
                    result.started,
                    result.throttle_ratio() * 100.0,
                    result.redriven
                ),
            );
            overall.inc(1);
            Ok(result)
        };
    if wants("drain") {
        let mut panels = Vec::new();
        for &(burst, refill) in &quotas {
            for &k in &cli.instances {
                let scenario = scenario_for(k, burst, refill);
                let mut panel = chart::Panel {
                    title: format!("K = {k}, quota {burst} + {refill}/s, M = {}", scenario.messages),
                    refill_per_second: refill,
                    lines: Vec::new(),
                };
                for &strategy in &strategies {
                    let result = drain_one(strategy, scenario, &settings)?;
                    panel
                        .lines
                        .push((strategy.to_string(), result.starts_per_second.clone()));
                    results.drains.push(result);
                }
                panels.push(panel);
            }
        }
        let columns = cli.instances.len().max(1);
        let svg = cli.out.join("drain.svg");
        chart::svg(&svg, &panels, columns)?;
        results.charts.push("drain.svg".to_string());
        #[cfg(feature = "png")]
        {
            let png = cli.out.join("drain.png");
            chart::png(&png, &panels, columns)?;
            results.charts.push("drain.png".to_string());
            note(&overall, format!("charts drawn with the font {font}"));
        }
    }

    if wants("sensitivity") {
        let k = cli.instances.iter().copied().max().unwrap_or(10);
        let fixed = Settings {
            batch_size: Some(cli.sensitivity_batch_size),
            ..settings.clone()
        };
        for &(burst, refill) in &quotas {
            let result = drain_one(Strategy::Ours, scenario_for(k, burst, refill), &fixed)?;
            results.sensitivity.push(result);
        }
    }

    if !shared_plans.is_empty() || shared_probes > 0 {
        for plan in &shared_plans {
            run_id += 1;
            let label = format!("shared {} {}: {}", plan.id, plan.mode, plan.title);
            overall.set_message(label.clone());
            let r = shared::run(&runtimes, plan, &settings, run_id)?;
            note(
                &overall,
                format!(
                    "{label}: T = {:.2} s (T* = {:.1}), started {}, throttled {:.2} % ({} / {}), table calls/start {:.3}, reshards {}",
                    r.drain_seconds,
                    plan.ideal_seconds,
                    r.started,
                    r.throttle_ratio() * 100.0,
                    r.throttled,
                    r.calls,
                    r.table_calls_per_start(),
                    r.reshards
                ),
            );
            results.shared.push(r);
            overall.inc(1);
        }
        if shared_probes > 0 {
            for &(instances, batch) in &PROBES {
                for mode in [shared::Mode::Static, shared::Mode::Shared(shared::Table::Quick)] {
                    overall.set_message(format!("shared 7 {mode}: K = {instances}, batch {batch}"));
                    let p = shared::probe(
                        &runtimes,
                        mode,
                        instances,
                        batch,
                        shared_quota.1,
                        shared_quota,
                        Duration::from_secs(4),
                    )?;
                    note(
                        &overall,
                        format!(
                            "shared 7 {mode} K = {instances} batch {batch}: {} starts, table calls/start {:.3}, latency p50 {} / p99 {} ms",
                            p.starts,
                            p.table_calls_per_start(),
                            p.latency(50.0).map_or("?".to_string(), |v| format!("{v:.1}")),
                            p.latency(99.0).map_or("?".to_string(), |v| format!("{v:.1}")),
                        ),
                    );
                    results.probes.push(p);
                    overall.inc(1);
                }
            }
        }
    }
    for plan in &scale_plans {
        let label = format!(
            "scale: {} × {} at {}/s, BatchSize {}, {}{}",
            plan.instances,
            plan.title,
            plan.quota.1,
            plan.batch,
            plan.table,
            if plan.skew.is_zero() {
                String::new()
            } else {
                format!(", skew ±{} ms", plan.skew.as_millis())
            }
        );
        overall.set_message(label.clone());
        let r = scale::run(plan, cli.seed)?;
        note(
            &overall,
            format!(
                "{label}: T = {:.2} s, T*/T {}, throttled {:.2} % ({} / {}), busiest item {} WU/s, table calls/start {:.3}, fallbacks {}, dropped {} ({:.0} s wall)",
                r.drain_seconds,
                r.efficiency().map_or("—".to_string(), |e| format!("{e:.3}")),
                r.throttle_ratio() * 100.0,
                r.throttled,
                r.calls,
                r.busiest_item_units,
                r.table_calls_per_start(),
                r.counts.fallbacks,
                r.counts.dropped,
                r.wall_seconds,
            ),
        );
        results.scale.push(r);
        overall.inc(1);
    }
    for plan in &batch_plans {
        run_id += 1;
        let label = match plan.load {
            batch::Load::Backlog { messages } => format!("batch N={}: backlog of {messages}", plan.per_execution),
            batch::Load::Feed { per_second, .. } => format!("batch N={}: feed {per_second}/s", plan.per_execution),
        };
        overall.set_message(label.clone());
        let pb = bar(&multi, plan.messages(), label.clone());
        let progress = |done: u64, _total: u64| pb.set_position(done);
        let r = batch::run(&runtimes, plan, &settings, run_id, &progress)?;
        pb.finish_and_clear();
        multi.remove(&pb);
        note(
            &overall,
            format!(
                "{label}: {} messages in {} executions, T = {:.2} s, steady {} msg/s, throttled {} / {}, p50 / p99 {} / {} s",
                r.started,
                r.executions,
                r.drain_seconds,
                r.steady
                    .as_ref()
                    .map_or("—".to_string(), |s| format!("{:.0}", s.messages_per_second)),
                r.throttled,
                r.calls,
                r.latency(50.0).map_or("?".to_string(), |v| format!("{v:.3}")),
                r.latency(99.0).map_or("?".to_string(), |v| format!("{v:.3}")),
            ),
        );
        results.batches.push(r);
        overall.inc(1);
    }
    results.settings = Some(settings);

    if wants("running") {
        let plans = running::plans();
        for &n in &cli.running_runs {
            let plan = plans
                .get(n.wrapping_sub(1))
                .ok_or_else(|| format!("--running-runs: {n} is not 1 to {}", plans.len()))?;
            overall.set_message(format!("running: {}", plan.title));
            let r = running::run(plan, cli.seed)?;
            note(
                &overall,
                format!(
                    "running {}: {:.2}/s of {:.2}/s, peak {} of {}, receives {:.2} (all {:.2}), busiest item {} WCU/s, {:.0} s simulated in {:.0} s",
                    plan.title, r.throughput, r.bound, r.peak, plan.cap, r.receives.0, r.receives_all.0, r.busiest.1, r.seconds.0, r.seconds.1
                ),
            );
            results.running.push(r);
            overall.inc(1);
        }
    }

    if wants("pacing") {
        for &target in &cli.pacing_targets {
            overall.set_message(format!("pacing: {target}/s"));
            let result = pacing::run(
                &runtimes,
                target,
                target.max(1.0),
                Duration::from_secs(cli.pacing_window_s),
                10,
            )?;
            note(
                &overall,
                format!(
                    "pacing {target:>6}/s: achieved {:.2}/s (error {:.3} %), max {} in 1 s (bound {})",
                    result.achieved_per_second,
                    result.error() * 100.0,
                    result.max_in_one_second,
                    result.one_second_bound()
                ),
            );
            results.pacing.push(result);
            overall.inc(1);
        }
    }

    if wants("bootstrap") {
        overall.set_message("bootstrap: size, init, RSS");
        let exe = cli
            .bootstrap
            .clone()
            .unwrap_or_else(|| target_dir().join("release").join("starter"));
        let b = bootstrap::measure(&runtimes, &exe, cli.init_spawns, 20)?;
        note(
            &overall,
            format!(
                "bootstrap: {} bytes, init median {} ms, peak RSS {} KiB",
                b.size_bytes,
                stats::median(&b.init_ms).map_or("?".to_string(), |m| format!("{m:.1}")),
                b.peak_rss_kib
            ),
        );
        results.bootstrap = Some(b);
        let lambda = target_dir().join("lambda").join("starter").join("bootstrap");
        if let Ok(meta) = std::fs::metadata(&lambda) {
            results.lambda_bootstrap = Some((
                "target/lambda/starter/bootstrap".to_string(),
                bootstrap::elf_machine(&lambda).unwrap_or("?").to_string(),
                meta.len(),
            ));
        }
        overall.inc(1);
    }

    if wants("cost") {
        overall.set_message("cost: CPU per message");
        let c = cost::measure(cli.cost_messages)?;
        note(
            &overall,
            format!(
                "cost: process {:.2} µs/msg, decode+process+encode {:.2} µs/msg",
                c.process_us, c.end_to_end_us
            ),
        );
        results.cost = Some(c);
        let k = cost::measure_sdk(&runtimes, (cli.cost_messages / 5).max(1_000))?;
        note(
            &overall,
            format!(
                "cost with the SDK over loopback: {:.1} µs/msg (handler thread)",
                k.thread_us
            ),
        );
        results.sdk_cost = Some(k);
        overall.inc(1);
        if !cli.no_callgrind {
            overall.set_message("cost: callgrind");
            let counted = cost::instructions(1_000, 6_000).map_err(|e| e.to_string());
            if let Ok(i) = &counted {
                note(
                    &overall,
                    format!("cost: {:.0} instructions/msg (callgrind)", i.per_message),
                );
            }
            results.instructions = Some(counted);
        }
        overall.inc(1);
    }

    overall.finish_with_message(format!("done in {:.0} s", began.elapsed().as_secs_f64()));
    results.machine.push(format!(
        "Load average at the end: {}; the run took {:.0} s",
        load_average(),
        began.elapsed().as_secs_f64()
    ));
    let md_path = cli.out.join("results.md");
    std::fs::write(&md_path, results.markdown()).map_err(|e| format!("writing {}: {e}", md_path.display()))?;
    let json_path = cli.out.join("results.json");
    let json = serde_json::to_string_pretty(&results.json()).map_err(|e| format!("encoding results.json: {e}"))?;
    std::fs::write(&json_path, json).map_err(|e| format!("writing {}: {e}", json_path.display()))?;
    println!("{}", results.markdown());
    println!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}
