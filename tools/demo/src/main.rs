//! `sfn-pacer-demo`: the whole sfn-pacer system on this machine, on moto (no AWS account).
//!
//! Exit codes: 0 every message accounted for (`run`) or stopped by Ctrl-C (`serve`);
//! 1 the run failed or a message is unaccounted for; 2 setup error; 130 interrupted (`run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use local_stack::process::Supervisor;
use sfn_pacer_demo::rate;
use sfn_pacer_demo::run::{self, RunConfig};
use sfn_pacer_demo::serve::{self, ServeConfig};

/// The whole sfn-pacer system on this machine, on the moto AWS emulator: no AWS account needed.
#[derive(Parser, Debug)]
#[command(name = "sfn-pacer-demo", version)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run the demo: moto, and two deployments sharing one StartExecution budget through a
    /// DynamoDB coordination table, each with its own queue, state machine, function (N
    /// instances under cargo lambda watch), local event source mapping and producer; a live
    /// line; then a report. Exits 0 only if, in every deployment, every good message has
    /// exactly one execution (with --messages-per-execution above 1: is in exactly one
    /// execution's items) and every bad one is in the DLQ, and the starts of all of them
    /// together stayed within the budget (peak over 5 s <= rate x 1.1 + burst / 5 s).
    Run(RunArgs),
    /// Start moto on a fixed port (resources matching events/*.json) and the function under
    /// cargo lambda watch, for `make invoke`. Runs until Ctrl-C.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Messages to produce, in all (dealt to the deployments in turn). Default: 3000, or with
    /// --max-running 15 per slot of the cap.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: Option<u64>,
    /// The global StartExecution budget, starts per second: every deployment's
    /// STARTS_PER_SECOND when coordinated, split evenly with --static-split.
    #[arg(long, value_name = "STARTS_PER_SECOND", default_value_t = 100.0)]
    rate: f64,
    /// The global burst, in starts (STARTS_BURST, split like --rate). Default: one second's
    /// worth (= --rate).
    #[arg(long, value_name = "STARTS")]
    burst: Option<f64>,
    /// Function instances of each deployment: its MAX_CONCURRENCY and its ESM's MaximumConcurrency.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_concurrency: u32,
    /// Deployments sharing the budget ("a", "b"), each with its own queue, DLQ, state
    /// machine, function, local-esm and producer.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    deployments: u32,
    /// Turn coordination off: no COORDINATION_TABLE; each deployment is told its share of
    /// the budget (--rate and --burst divided by --deployments), split over its instances.
    #[arg(long)]
    static_split: bool,
    /// Fraction (0 to 1) of bad messages (bodies that are not JSON; they belong in the DLQ).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.002)]
    bad_share: f64,
    /// The ESM's batch size (above 10 uses a 1-second batching window). Raised to
    /// --messages-per-execution when smaller (an execution groups messages of one batch only).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=10000))]
    batch_size: u16,
    /// Messages per execution, every function's MESSAGES_PER_EXECUTION (1 to 99). Above 1, up
    /// to N messages of a batch start one execution whose input is {"items": [...]}, and each
    /// message is claimed in the coordination table (the state machines are Standard), so it
    /// cannot be combined with --static-split. The report then shows messages/s against the
    /// budget's refill.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    messages_per_execution: u32,
    /// Seed of the generator (which messages are bad).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cap running executions (every function's MAX_RUNNING_EXECUTIONS, one RUNNING_KEY shared by
    /// the deployments): executions take --execution-seconds, then the local stack ends them and
    /// delivers their status change events to the release function, as EventBridge would. The
    /// report shows the peak of running executions against the cap. Needs the coordination table.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_running: Option<u32>,
    /// With --max-running: how long each execution runs, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    execution_seconds: f64,
    /// With --max-running: EventBridge drops 5 % of the status change events and sends 10 % twice
    /// (a slot whose event was dropped comes back by the reclaim).
    #[arg(long)]
    event_faults: bool,
    /// Hard bound of the run, in seconds, from the producer's start.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    max_seconds: f64,
    /// The producers' pace, messages per second in all. Default: --rate x
    /// --messages-per-execution. (Faster, the queues grow until --max-queue-depth holds the
    /// producers back.)
    #[arg(long, value_name = "MSGS_PER_SECOND")]
    produce_rate: Option<f64>,
    /// Hold a deployment's producer back while more than N of its messages are sent but not
    /// yet started or dead-lettered, so that moto's queues stay shallow (its SQS slows down as
    /// a queue deepens). Default: the larger of 100 and 2 x batch size x instances.
    #[arg(long, value_name = "N")]
    max_queue_depth: Option<u64>,
    /// The work queues' maxReceiveCount (the redrive to the DLQ).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_receive_count: u32,
    /// Also write the report as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    report_json: Option<PathBuf>,
    /// Folder for the logs of every run (a sub-folder per run).
    #[arg(long, value_name = "DIR", default_value = "demo-out")]
    out_dir: PathBuf,
    /// When stderr is not a terminal: print the status line every SECONDS seconds (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    progress_seconds: f64,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// moto's port on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 5000)]
    moto_port: u16,
    /// The invoke API's port on 127.0.0.1 (cargo lambda watch --invoke-port).
    #[arg(long, value_name = "PORT", default_value_t = 9000)]
    invoke_port: u16,
    /// The function's STARTS_PER_SECOND.
    #[arg(long, value_name = "STARTS_PER_SECOND", default_value_t = 100.0)]
    rate: f64,
    /// The function's STARTS_BURST.
    #[arg(long, value_name = "STARTS", default_value_t = 100.0)]
    burst: f64,
    /// The longest wait for the first build and answer of the function, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    build_timeout: u64,
    /// Stop after this many seconds at most (default: a day).
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    max_seconds: u64,
    /// Folder for moto's log.
    #[arg(long, value_name = "DIR", default_value = "demo-out")]
    out_dir: PathBuf,
}

fn positive(name: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("--{name} must be a positive number, got {value}"))
    }
}

/// The ESM's batch size for `messages_per_execution`: `asked`, raised to it when smaller, since
/// the function groups only messages of one batch. The second value is true when raised.
fn batch_size(asked: u16, messages_per_execution: u32) -> (u16, bool) {
    let needed = u16::try_from(messages_per_execution).unwrap_or(u16::MAX);
    (asked.max(needed), asked < needed)
}

fn run_config(a: RunArgs) -> Result<RunConfig, String> {
    if a.static_split && a.messages_per_execution > 1 {
        return Err(format!(
            "--messages-per-execution {} needs the coordination table, so it cannot be combined with \
             --static-split: on a Standard workflow each message of a batch execution is claimed there, which \
             keeps it exactly once",
            a.messages_per_execution
        ));
    }
    if a.static_split && a.max_running.is_some() {
        return Err(
            "--max-running needs the coordination table, so it cannot be combined with --static-split: \
                    the cap's slots are items of the table"
                .to_string(),
        );
    }
    let cap = match a.max_running {
        Some(max_running) => Some(sfn_pacer_demo::cap::CapSettings {
            max_running,
            execution_seconds: positive("execution-seconds", a.execution_seconds)?,
            event_faults: a.event_faults,
        }),
        None if a.event_faults => return Err("--event-faults needs --max-running".to_string()),
        None => None,
    };
    let messages = a
        .messages
        .unwrap_or_else(|| a.max_running.map_or(3000, |n| 15 * u64::from(n)).min(1_000_000));
    let (batch_size, raised) = batch_size(a.batch_size, a.messages_per_execution);
    if raised {
        eprintln!(
            "sfn-pacer-demo: --batch-size {} raised to {batch_size} (--messages-per-execution): the function \
             groups messages of one batch only",
            a.batch_size
        );
    }
    let rate = positive("rate", a.rate)?;
    let burst = positive("burst", a.burst.unwrap_or(rate))?;
    let produce_rate = positive(
        "produce-rate",
        a.produce_rate
            .unwrap_or_else(|| rate::default_produce_rate(rate, a.messages_per_execution)),
    )?;
    if !(0.0..=1.0).contains(&a.bad_share) {
        return Err(format!("--bad-share must be between 0 and 1, got {}", a.bad_share));
    }
    let max_seconds = positive("max-seconds", a.max_seconds)?;
    if !(a.progress_seconds.is_finite() && a.progress_seconds >= 0.0) {
        return Err(format!(
            "--progress-seconds must be 0 or more, got {}",
            a.progress_seconds
        ));
    }
    Ok(RunConfig {
        messages,
        cap,
        rate,
        burst,
        max_concurrency: a.max_concurrency,
        deployments: a.deployments,
        coordinated: !a.static_split,
        bad_share: a.bad_share,
        batch_size,
        seed: a.seed,
        max_seconds,
        produce_rate,
        max_receive_count: a.max_receive_count,
        report_json: a.report_json,
        out_dir: a.out_dir,
        progress_seconds: a.progress_seconds,
        max_queue_depth: a
            .max_queue_depth
            .unwrap_or_else(|| rate::default_max_queue_depth(batch_size, a.max_concurrency)),
        messages_per_execution: a.messages_per_execution,
    })
}

/// Completes on Ctrl-C, SIGTERM or SIGHUP; names the signal.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = wait(SignalKind::interrupt()) => "interrupted",
        _ = wait(SignalKind::terminate()) => "terminated",
        _ = wait(SignalKind::hangup()) => "hung up",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let sup = Supervisor::new();
    let serving = matches!(cli.command, Commands::Serve(_));
    let work = async {
        match cli.command {
            Commands::Run(args) => {
                let cfg = match run_config(args) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        eprintln!("sfn-pacer-demo: {e}");
                        return 2;
                    }
                };
                match run::run(&cfg, &sup).await {
                    Ok(report) => {
                        println!("{}", report.render());
                        if report.ok {
                            0
                        } else {
                            1
                        }
                    }
                    Err(e) => {
                        eprintln!("sfn-pacer-demo: {}", e.message());
                        e.exit_code()
                    }
                }
            }
            Commands::Serve(a) => {
                let cfg = ServeConfig {
                    moto_port: a.moto_port,
                    invoke_port: a.invoke_port,
                    rate: a.rate,
                    burst: a.burst,
                    build_timeout: a.build_timeout,
                    max_seconds: a.max_seconds,
                    out_dir: a.out_dir,
                };
                match serve::serve(&cfg, &sup).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("sfn-pacer-demo: {}", e.message());
                        e.exit_code()
                    }
                }
            }
        }
    };
    let (code, signal) = tokio::select! {
        code = work => (code, None),
        signal = shutdown_signal() => (if serving { 0 } else { 130 }, Some(signal)),
    };
    let running = sup.running().len();
    if let Some(signal) = signal {
        eprintln!("\nsfn-pacer-demo: {signal}: stopping the {running} process(es) it started…");
    }
    // A second Ctrl-C skips the grace period.
    tokio::select! {
        _ = sup.stop_all(Duration::from_secs(5)) => {}
        _ = shutdown_signal() => {
            sup.stop_all(Duration::ZERO).await;
        }
    }
    if signal.is_some() {
        let left = sup.running();
        if left.is_empty() {
            eprintln!("sfn-pacer-demo: every process stopped");
        } else {
            let names: Vec<String> = left.iter().map(|h| format!("{} (pid {})", h.name, h.pid)).collect();
            eprintln!("sfn-pacer-demo: still running: {}", names.join(", "));
        }
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<RunConfig, String> {
        let cli = Cli::try_parse_from(["sfn-pacer-demo", "run"].iter().chain(args)).map_err(|e| e.to_string())?;
        match cli.command {
            Commands::Run(a) => run_config(a),
            Commands::Serve(_) => unreachable!("run"),
        }
    }

    #[test]
    fn one_message_per_execution_by_default() {
        let cfg = config(&[]).unwrap();
        assert_eq!((cfg.messages_per_execution, cfg.batch_size), (1, 10));
        assert!((cfg.produce_rate - cfg.rate).abs() < 1e-9);
    }

    #[test]
    fn the_cap_needs_the_table_and_sizes_the_run_by_the_cap() {
        let cfg = config(&["--max-running", "20", "--execution-seconds", "2.5", "--event-faults"]).unwrap();
        let cap = cfg.cap.unwrap();
        assert_eq!(
            (cap.max_running, cap.execution_seconds, cap.event_faults),
            (20, 2.5, true)
        );
        assert_eq!(cfg.messages, 300, "15 per slot of the cap by default");
        assert_eq!(
            config(&["--max-running", "20", "--messages", "50"]).unwrap().messages,
            50
        );
        assert_eq!(config(&[]).unwrap().messages, 3000);
        assert!(config(&[]).unwrap().cap.is_none());
        let e = config(&["--max-running", "20", "--static-split"]).unwrap_err();
        assert!(e.contains("needs the coordination table") && !e.contains('\n'), "{e}");
        assert!(config(&["--event-faults"]).unwrap_err().contains("needs --max-running"));
        assert!(config(&["--max-running", "20", "--execution-seconds", "0"]).is_err());
    }

    #[test]
    fn batch_executions_need_the_coordination_table() {
        let e = config(&["--messages-per-execution", "10", "--static-split"]).unwrap_err();
        assert!(e.contains("needs the coordination table"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(config(&["--messages-per-execution", "1", "--static-split"]).is_ok());
        for bad in ["0", "100"] {
            assert!(config(&["--messages-per-execution", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn batch_executions_raise_the_batch_size_and_the_producers_pace() {
        let cfg = config(&["--messages-per-execution", "25", "--rate", "40"]).unwrap();
        assert_eq!(cfg.batch_size, 25, "raised to the messages per execution");
        assert!(
            (cfg.produce_rate - 1000.0).abs() < 1e-9,
            "rate x messages per execution"
        );
        let cfg = config(&[
            "--messages-per-execution",
            "5",
            "--batch-size",
            "50",
            "--produce-rate",
            "7",
        ])
        .unwrap();
        assert_eq!(cfg.batch_size, 50, "a larger batch is kept");
        assert!((cfg.produce_rate - 7.0).abs() < 1e-9);
        assert_eq!(batch_size(10, 10), (10, false));
        assert_eq!(batch_size(10, 11), (11, true));
    }
}
