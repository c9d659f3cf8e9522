//! The `sfn-pacer-quota` binary against moto's DynamoDB: show, set, and what the function's
//! own store (`DynamoStore`) reads back.

use std::process::{Command, Output};
use std::time::Duration;

use local_stack::moto::{create_coordination_table, Moto};
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::start::budget::Store;

const TABLE: &str = "quota-coordination";
const KEY: &str = "start-execution-standard";

/// Runs the binary against `moto` with dummy credentials and no other AWS environment.
fn quota(moto: &Moto, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_sfn-pacer-quota"))
        .args(["--endpoint-url", &moto.endpoint()])
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("COORDINATION_TABLE")
        .env_remove("QUOTA_KEY")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    eprintln!(
        "$ sfn-pacer-quota {}\n-> {:?}\nstdout: {}stderr: {}",
        args.join(" "),
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_creates_and_changes_the_budget() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    create_coordination_table(&sdk, TABLE).await.unwrap();

    // No budget yet: exit 1, and say how one comes to be.
    let out = quota(&moto, &["--table", TABLE, "show"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no budget under quota#{KEY} in table {TABLE} yet")),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // Create it.
    let out = quota(&moto, &["--table", TABLE, "set", "--rate", "250", "--burst", "1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("created the budget"), "{}", stdout(&out));

    let out = quota(&moto, &["--table", TABLE, "show", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["rate_per_second"], 250.0);
    assert_eq!(json["burst"], 1000.0);
    assert_eq!(json["factor"], 1.0);
    assert_eq!(json["version"], 1);
    assert_eq!(json["pk"], format!("quota#{KEY}"));
    // A fresh bucket is full: B_eff = 1000 − 250 × 0.1.
    assert_eq!(json["slots_now"], 975.0);

    // The function's own store reads the same item.
    let store = DynamoStore::new(&sdk, TABLE, Duration::from_secs(5));
    let state = store.get(KEY).await.unwrap().expect("the budget item");
    assert_eq!(state.rate_per_second, 250.0);
    assert_eq!(state.burst, 1000.0);
    assert_eq!(state.version, 1);

    // One field alone: the other stays, the version goes up.
    let out = quota(&moto, &["--table", TABLE, "set", "--burst", "1200"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("burst 1000 → 1200 slots (version 1 → 2)"), "{text}");
    assert!(text.contains("rate            250 starts/s"), "{text}");
    let state = store.get(KEY).await.unwrap().unwrap();
    assert_eq!((state.rate_per_second, state.burst, state.version), (250.0, 1200.0, 2));

    // Text show.
    let out = quota(&moto, &["--table", TABLE, "show"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("effective rate  250 starts/s"), "{text}");
    assert!(text.contains("version         2"), "{text}");

    // --express names another key, which has no budget.
    let out = quota(&moto, &["--table", TABLE, "--express", "show"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("quota#start-execution-express"),
        "{}",
        stderr(&out)
    );

    // Validation: exit 2, one line naming the flag, nothing written.
    let out = quota(&moto, &["--table", TABLE, "set", "--rate", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("sfn-pacer-quota: --rate "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(store.get(KEY).await.unwrap().unwrap().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_one_line_and_exit_2() {
    let moto = Moto::start().await.unwrap();
    for args in [
        &["--table", "no-such-table", "show"][..],
        &["--table", "no-such-table", "set", "--rate", "10", "--burst", "20"][..],
    ] {
        let out = quota(&moto, args);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(
            err.starts_with("sfn-pacer-quota: GetItem on table no-such-table: ResourceNotFoundException"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(stdout(&out).is_empty());
    }
}
