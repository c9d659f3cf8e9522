//! The `starter` binary fails at init, with one line naming the variable, on bad config.
//! (Also makes `cargo test --workspace` build the binary that the end-to-end test runs.)

use std::process::Command;

fn run(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starter"));
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn a_missing_state_machine_arn_stops_init_with_a_message_naming_it() {
    let (code, text) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(text.contains("STATE_MACHINE_ARN"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
}

#[test]
fn a_bad_value_stops_init_with_a_json_line_naming_it() {
    let arn = "arn:aws:states:us-east-1:123456789012:stateMachine:m";
    let (code, text) = run(&[
        ("STATE_MACHINE_ARN", arn),
        ("MAX_CONCURRENCY", "zero"),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
    ]);
    assert_eq!(code, Some(1));
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["level"], "ERROR");
    assert!(line.to_string().contains("MAX_CONCURRENCY"), "{text}");
}
