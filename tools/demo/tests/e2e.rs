//! End to end: messages through producer → SQS (moto) → local-esm → the `starter` function
//! (N processes on the Runtime API of `cargo lambda watch`) → Step Functions (moto), driven by
//! `sfn-pacer-demo run` with its defaults: two deployments, each with its own queue, state
//! machine and function, sharing one budget through the coordination table (DynamoDB, moto).
//! - One message per execution (300 messages): in each deployment every good message must have
//!   exactly one execution and every bad one must be in its DLQ; the functions must have used
//!   the table (LeaseCalls) without falling back to the static split; the sum of the
//!   deployments' rates must stay within the budget.
//! - Batch executions (`--messages-per-execution 10`, 600 messages, a budget of 10 starts/s):
//!   every good message must be in exactly one execution's items and every bad one in its DLQ;
//!   executions must carry more than one message on average, the messages must go faster than
//!   the budget's refill while the starts stay within it, and the functions must have claimed
//!   the messages in the table.
//!
//! In both, no process the demo started may be left running. The runs take turns (each starts
//! a dozen processes; two at once would share the machine's cores).
//!
//! Needs `make venv` (moto_server and cargo-lambda in .venv). Bounded: the build of the
//! sibling binaries and each run have a time limit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use local_stack::paths::{venv_bin, workspace_root};
use serde_json::Value;

const BUILD_LIMIT: Duration = Duration::from_secs(240);
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// One demo at a time (and one build of the siblings).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Waits for `child` at most `limit`; on a timeout sends SIGTERM (the demo then stops what it
/// started), waits a little more, kills it, and fails the test.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if t0.elapsed() > limit {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(15) {
                if child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cargo test --workspace` builds every package's binaries (each has an integration test),
/// with the features of that same build: use them as they are, so CI compiles the AWS SDK
/// once. Only when one is missing (`cargo test -p sfn-pacer-demo` alone) build them, as
/// `make demo` does (`--workspace --bins`), with the same profile.
fn build_siblings(demo: &Path) {
    let profile_dir = demo.parent().expect("the demo binary has a folder");
    if ["starter", "producer", "local-esm"]
        .iter()
        .all(|bin| profile_dir.join(bin).is_file())
    {
        return;
    }
    let target_dir = profile_dir.parent().expect("the profile folder has a parent");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["build", "--workspace", "--bins"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace_root());
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
    }
    let status = wait_bounded(command.spawn().expect("run cargo build"), BUILD_LIMIT, "cargo build");
    assert!(status.success(), "cargo build of the sibling binaries failed: {status}");
}

/// Process groups of every process alive now (pgid → pids), from /proc.
fn live_process_groups() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(state), Some(pgrp)) = (fields.first(), fields.get(2).and_then(|p| p.parse().ok())) {
            out.push((pid, pgrp, state.chars().next().unwrap_or('?')));
        }
    }
    out
}

/// A finished run: its exit status, its JSON report, how long it took.
struct Run {
    status: ExitStatus,
    report: Value,
    run_time: Duration,
    out_dir: PathBuf,
}

/// Runs `sfn-pacer-demo run` with `args` (bounded by [`RUN_LIMIT`]) and reads its report.
fn run_demo(name: &str, args: &[&str]) -> Run {
    let t0 = Instant::now();
    let demo = PathBuf::from(env!("CARGO_BIN_EXE_sfn-pacer-demo"));
    build_siblings(&demo);
    let build_time = t0.elapsed();

    let out_dir = std::env::temp_dir().join(format!("sfn-pacer-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("create the output folder");
    let report_path = out_dir.join("report.json");
    let venv_bin = venv_bin();
    let path = std::env::join_paths(
        std::iter::once(venv_bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let child = Command::new(&demo)
        .arg("run")
        .args(args)
        .args(["--progress-seconds", "5"])
        .arg("--report-json")
        .arg(&report_path)
        .arg("--out-dir")
        .arg(&out_dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .spawn()
        .expect("start sfn-pacer-demo");
    let status = wait_bounded(child, RUN_LIMIT, "sfn-pacer-demo run");
    let run_time = t0.elapsed() - build_time;
    eprintln!(
        "e2e {name}: build of the siblings {:.1} s, run {:.1} s",
        build_time.as_secs_f64(),
        run_time.as_secs_f64()
    );

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .unwrap_or_else(|e| panic!("no report at {} ({e}); exit {status}", report_path.display())),
    )
    .expect("the report is JSON");
    Run {
        status,
        report,
        run_time,
        out_dir,
    }
}

impl Run {
    /// The run succeeded, drained, and every message of every deployment is accounted for:
    /// each good one started once (`good_started_once`), each bad one dead-lettered with its
    /// reason, nothing lost, repeated or unexpected.
    fn assert_accounted(&self, deployments: usize, good: u64, bad: u64) {
        let report = &self.report;
        assert!(
            self.status.success(),
            "sfn-pacer-demo exited with {}: {:#}",
            self.status,
            report["problems"]
        );
        assert_eq!(report["ok"], true, "{:#}", report["problems"]);
        assert_eq!(report["accounted"], true);
        assert_eq!(report["drained"], true);
        let list = report["deployments"].as_array().expect("deployments");
        assert_eq!(list.len(), deployments);
        let total = |field: &str| -> u64 { list.iter().map(|d| d["accounting"][field].as_u64().expect(field)).sum() };
        assert_eq!((total("good"), total("bad")), (good, bad));
        for d in list {
            let (name, a) = (&d["name"], &d["accounting"]);
            let (good, bad) = (&a["good"], &a["bad"]);
            assert_eq!(&a["good_started_once"], good, "deployment {name}: {a:#}");
            assert_eq!(&a["bad_in_dlq"], bad, "deployment {name}: {a:#}");
            if bad.as_u64() > Some(0) {
                assert_eq!(
                    &a["reasons"]["BodyNotJson"], bad,
                    "deployment {name}: the function dead-letters them with their reason: {a:#}"
                );
            }
            for list in [
                "good_not_started",
                "good_started_more_than_once",
                "good_in_dlq",
                "bad_not_in_dlq",
                "bad_started",
                "unexpected_executions",
                "unexpected_items",
                "message_id_conflicts",
                "unexpected_dead_letters",
            ] {
                assert_eq!(a[list]["count"], 0, "deployment {name}: {list}: {a:#}");
            }
            let sent = good.as_u64().unwrap_or(0) + bad.as_u64().unwrap_or(0);
            assert_eq!(d["sent"].as_u64(), Some(sent), "deployment {name}");
        }
    }

    /// No process the demo started is left: each ended, and no process remains in its group.
    fn assert_no_process_left(&self, expected: &[&str]) {
        let processes = self.report["processes"].as_array().expect("processes");
        let names: HashSet<&str> = processes.iter().filter_map(|p| p["name"].as_str()).collect();
        for expected in expected {
            assert!(names.contains(expected), "{expected} not recorded: {names:?}");
        }
        let groups: HashSet<u32> = processes
            .iter()
            .map(|p| {
                assert!(
                    !p["exit"].is_null(),
                    "{} had not ended when the report was written",
                    p["name"]
                );
                p["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok()).expect("pid")
            })
            .collect();
        let left: Vec<(u32, u32, char)> = live_process_groups()
            .into_iter()
            .filter(|(pid, pgrp, _)| groups.contains(pid) || groups.contains(pgrp))
            .collect();
        assert!(
            left.is_empty(),
            "processes left behind (pid, process group, state): {left:?}"
        );
        assert!(self.run_time < RUN_LIMIT, "the run took {:?}", self.run_time);
    }

    fn clean_up(&self) {
        let _ = std::fs::remove_dir_all(&self.out_dir);
    }
}

/// Every process of the default run (two deployments, two instances each).
const TWO_DEPLOYMENTS_TWO_INSTANCES: [&str; 13] = [
    "moto_server-sqs",
    "moto_server-sfn",
    "moto_server-ddb",
    "cargo-lambda-watch-a",
    "cargo-lambda-watch-b",
    "starter-a-1",
    "starter-a-2",
    "starter-b-1",
    "starter-b-2",
    "local-esm-a",
    "local-esm-b",
    "producer-a",
    "producer-b",
];

#[test]
fn three_hundred_messages_end_to_end() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_demo(
        "single",
        &[
            "--messages",
            "300",
            "--rate",
            "50",
            "--burst",
            "25",
            "--max-concurrency",
            "2",
            "--bad-share",
            "0.01",
            "--seed",
            "4",
            "--max-seconds",
            "90",
        ],
    );
    run.assert_accounted(2, 297, 3);
    let report = &run.report;
    assert!(
        report["parameters"]["coordination_table"].is_string(),
        "coordinated by default"
    );
    assert_eq!(
        report["parameters"]["messages_per_execution"], 1,
        "one message per execution by default"
    );
    let deployments = report["deployments"].as_array().expect("deployments");
    for d in deployments {
        let (name, a) = (&d["name"], &d["accounting"]);
        assert_eq!(a["shape"], "single", "deployment {name}");
        assert_eq!(
            &d["executions_in_moto"], &a["good"],
            "deployment {name}: one execution per good message, no more"
        );
        // Coordinated: the function used the table, and never the static split.
        let f = &d["function"];
        assert!(
            f["LeaseCalls"].as_u64() > Some(0),
            "deployment {name}: no table calls: {f:#}"
        );
        assert_eq!(f["Fallbacks"], 0, "deployment {name}: {f:#}");
    }

    // Together they stayed within the one budget (50/s): the sum of the achieved rates, and
    // the peak over 5 s checked by the demo itself.
    let sum: f64 = deployments
        .iter()
        .map(|d| d["achieved_rate"].as_f64().expect("achieved_rate"))
        .sum();
    assert!(sum > 0.0 && sum <= 50.0 * 1.1, "sum of the achieved rates {sum}/s");
    assert_eq!(report["budget"]["within"], true, "{:#}", report["budget"]);

    run.assert_no_process_left(&TWO_DEPLOYMENTS_TWO_INSTANCES);
    run.clean_up();
}

/// Batch executions: 600 messages, up to 10 per execution, under a budget of 10 starts/s (a
/// burst of 10). One per execution, they would need about a minute; grouped, the messages go
/// several times faster than the refill while the starts stay within it. (moto, not the budget,
/// bounds the batch run here: its DynamoDB copies the table on every transaction.)
#[test]
fn batch_executions_end_to_end() {
    const RATE: f64 = 10.0;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_demo(
        "batch",
        &[
            "--messages",
            "600",
            "--messages-per-execution",
            "10",
            "--rate",
            "10",
            "--burst",
            "10",
            "--max-concurrency",
            "2",
            "--bad-share",
            "0.01",
            "--seed",
            "5",
            "--max-seconds",
            "90",
        ],
    );
    run.assert_accounted(2, 594, 6);
    let report = &run.report;
    assert_eq!(report["parameters"]["messages_per_execution"], 10);
    let deployments = report["deployments"].as_array().expect("deployments");
    for d in deployments {
        let (name, a, f) = (&d["name"], &d["accounting"], &d["function"]);
        assert_eq!(a["shape"], "batch", "deployment {name}");
        let good = a["good"].as_u64().expect("good");
        assert_eq!(
            a["carried"], good,
            "deployment {name}: the items are the good messages, once each"
        );
        let executions = d["executions_in_moto"].as_u64().expect("executions_in_moto");
        assert!(
            executions < good && a["largest_execution"].as_u64() <= Some(10),
            "deployment {name}: {executions} executions for {good} messages: {a:#}"
        );
        // Standard: each message claimed in the table (a claim written by a call that timed
        // out is found by the retry instead).
        let claimed = f["ClaimsWritten"].as_u64().unwrap_or(0) + f["ClaimsFound"].as_u64().unwrap_or(0);
        assert!(
            f["ClaimsWritten"].as_u64() > Some(0) && claimed >= good,
            "deployment {name}: {f:#}"
        );
        // An idempotent re-start of a running execution (after a timeout) counts again.
        assert!(f["Executions"].as_u64() >= Some(executions), "deployment {name}: {f:#}");
        assert_eq!(f["Fallbacks"], 0, "deployment {name}: {f:#}");
    }
    let t = &report["throughput"];
    let per_execution = t["messages_per_execution"].as_f64().expect("messages_per_execution");
    let message_rate = t["message_rate"].as_f64().expect("message_rate");
    assert!(per_execution > 1.0, "{t:#}");
    assert!(
        message_rate > RATE,
        "messages {message_rate:.1}/s, not above the refill of {RATE}/s: {t:#}"
    );
    assert_eq!(report["budget"]["within"], true, "{:#}", report["budget"]);
    eprintln!(
        "e2e batch: messages {message_rate:.1}/s = {:.1}x the refill, {per_execution:.1} messages per execution",
        t["refill_multiple"].as_f64().unwrap_or(0.0)
    );

    run.assert_no_process_left(&TWO_DEPLOYMENTS_TWO_INSTANCES);
    run.clean_up();
}

/// `--max-running`: executions that take time and end, their status change events delivered to
/// the release function with faults; never more running than the cap (moto's own times), every
/// message accounted for, every slot free at the end.
#[test]
fn a_capped_run_end_to_end() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_demo(
        "cap",
        &[
            "--max-running",
            "8",
            "--execution-seconds",
            "1",
            "--event-faults",
            "--messages",
            "80",
            "--deployments",
            "1",
            "--max-concurrency",
            "2",
            "--bad-share",
            "0",
            "--max-seconds",
            "90",
        ],
    );
    run.assert_accounted(1, 80, 0);
    let cap = &run.report["cap"];
    assert_eq!(cap["cap"], 8, "{cap:#}");
    let peak = cap["peak"].as_u64().expect("peak");
    assert!((1..=8).contains(&peak), "{peak} running at once: {cap:#}");
    assert_eq!(
        (cap["executions"].as_u64(), cap["held_at_end"].as_u64()),
        (Some(80), Some(0)),
        "{cap:#}"
    );
    run.clean_up();
}
