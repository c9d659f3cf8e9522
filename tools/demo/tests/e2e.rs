//! End to end: 300 messages through producer → SQS (moto) → local-esm → the `starter` function
//! (N processes on the Runtime API of `cargo lambda watch`) → Step Functions (moto), driven by
//! `sfn-pacer-demo run` with its defaults: two deployments, each with its own queue, state
//! machine and function, sharing one budget through the coordination table (DynamoDB, moto).
//! In each deployment every good message must have exactly one execution and every bad one
//! must be in its DLQ; the functions must have used the table (LeaseCalls) without falling back
//! to the static split; the sum of the deployments' rates must stay within the budget; and no
//! process the demo started may be left running.
//!
//! Needs `make venv` (moto_server and cargo-lambda in .venv). Bounded: the build of the
//! sibling binaries and the run each have a time limit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use local_stack::paths::{venv_bin, workspace_root};
use serde_json::Value;

const BUILD_LIMIT: Duration = Duration::from_secs(240);
const RUN_LIMIT: Duration = Duration::from_secs(150);

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

#[test]
fn three_hundred_messages_end_to_end() {
    let t0 = Instant::now();
    let demo = PathBuf::from(env!("CARGO_BIN_EXE_sfn-pacer-demo"));
    build_siblings(&demo);
    let build_time = t0.elapsed();

    let out_dir = std::env::temp_dir().join(format!("sfn-pacer-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("create the output folder");
    let report_path = out_dir.join("report.json");
    let venv_bin = venv_bin();
    let path = std::env::join_paths(
        std::iter::once(venv_bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let child = Command::new(&demo)
        .args([
            "run",
            "--messages",
            "300",
            "--rate",
            "50",
            "--burst",
            "25",
            "--max-concurrency",
            "2",
        ])
        .args([
            "--bad-share",
            "0.01",
            "--seed",
            "4",
            "--max-seconds",
            "90",
            "--progress-seconds",
            "5",
        ])
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

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .unwrap_or_else(|e| panic!("no report at {} ({e}); exit {status}", report_path.display())),
    )
    .expect("the report is JSON");
    assert!(
        status.success(),
        "sfn-pacer-demo exited with {status}: {:#}",
        report["problems"]
    );
    assert_eq!(report["ok"], true, "{:#}", report["problems"]);
    assert_eq!(report["accounted"], true);

    // In each deployment, every good message has exactly one execution; every bad one is in its DLQ.
    let deployments = report["deployments"].as_array().expect("deployments");
    assert_eq!(deployments.len(), 2, "two deployments by default");
    assert!(
        report["parameters"]["coordination_table"].is_string(),
        "coordinated by default"
    );
    let total = |field: &str| -> u64 {
        deployments
            .iter()
            .map(|d| d["accounting"][field].as_u64().expect(field))
            .sum()
    };
    assert_eq!((total("good"), total("bad")), (297, 3));
    for d in deployments {
        let (name, a) = (&d["name"], &d["accounting"]);
        let (good, bad) = (&a["good"], &a["bad"]);
        assert_eq!(&a["good_started_once"], good, "deployment {name}: {a:#}");
        assert_eq!(
            &d["executions_in_moto"], good,
            "deployment {name}: one execution per good message, no more"
        );
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
            "unexpected_dead_letters",
        ] {
            assert_eq!(a[list]["count"], 0, "deployment {name}: {list}: {a:#}");
        }
        assert_eq!(d["sent"].as_u64(), Some(150), "deployment {name}");
        // Coordinated: the function used the table, and never the static split.
        let f = &d["function"];
        assert!(
            f["LeaseCalls"].as_u64() > Some(0),
            "deployment {name}: no table calls: {f:#}"
        );
        assert_eq!(f["Fallbacks"], 0, "deployment {name}: {f:#}");
    }
    assert_eq!(report["drained"], true);

    // Together they stayed within the one budget (50/s): the sum of the achieved rates, and
    // the peak over 5 s checked by the demo itself.
    let sum: f64 = deployments
        .iter()
        .map(|d| d["achieved_rate"].as_f64().expect("achieved_rate"))
        .sum();
    assert!(sum > 0.0 && sum <= 50.0 * 1.1, "sum of the achieved rates {sum}/s");
    assert_eq!(report["budget"]["within"], true, "{:#}", report["budget"]);

    // No process the demo started is left: each ended, and no process remains in its group.
    let processes = report["processes"].as_array().expect("processes");
    let names: HashSet<&str> = processes.iter().filter_map(|p| p["name"].as_str()).collect();
    for expected in [
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
    ] {
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

    assert!(run_time < RUN_LIMIT, "the run took {run_time:?}");
    eprintln!(
        "e2e: build of the siblings {:.1} s, run {:.1} s",
        build_time.as_secs_f64(),
        run_time.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}
