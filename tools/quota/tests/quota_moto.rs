//! The `sfn-pacer-quota` binary against moto's DynamoDB: show, set, and what the function's
//! own store (`DynamoStore`) reads back; sync, with Service Quotas and CloudWatch served by the
//! local stack's fake in their real protocols (moto has neither for `states`).

use std::process::{Command, Output};
use std::time::Duration;

use std::collections::BTreeMap;

use local_stack::fake_quotas::{Datapoint, FakeQuota, FakeQuotas, QuotaState};
use local_stack::moto::{create_coordination_table, Moto};
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::start::budget::Store;

const TABLE: &str = "quota-coordination";
const KEY: &str = "start-execution-standard";

/// Runs the binary against `moto` with dummy credentials and no other AWS environment.
fn quota(moto: &Moto, args: &[&str]) -> Output {
    let endpoint = moto.endpoint();
    run(&[], &[&["--endpoint-url", &endpoint][..], args].concat())
}

/// Runs the binary with DynamoDB on `moto` and Service Quotas and CloudWatch on `fake`.
fn quota_sync(moto: &Moto, fake: &FakeQuotas, args: &[&str]) -> Output {
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ENDPOINT_URL_SERVICE_QUOTAS", fake.endpoint().to_string()),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", fake.endpoint().to_string()),
    ];
    run(&env, args)
}

fn run(env: &[(&str, String)], args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_sfn-pacer-quota"))
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
        .env_remove("AWS_ENDPOINT_URL_SERVICE_QUOTAS")
        .env_remove("AWS_ENDPOINT_URL_CLOUDWATCH")
        .envs(env.iter().map(|(k, v)| (k, v)))
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

const BUCKET: &str = "StartExecution throttle token bucket size";
const REFILL: &str = "StartExecution throttle token refill rate per second";

fn fake_quota(code: &str, name: &str, value: f64) -> FakeQuota {
    FakeQuota {
        code: code.into(),
        name: name.into(),
        value,
    }
}

/// Service Quotas as an account sees it: ~30 quotas of `states` (listed 10 a page), among them
/// the StartExecution bucket and refill, applied at 2,500 and 500 (raised), defaults 1,300 and 300.
fn account_quotas() -> QuotaState {
    let mut applied: Vec<FakeQuota> = (0..28)
        .map(|i| {
            fake_quota(
                &format!("L-{i:08}"),
                &format!("Other API throttle token bucket size {i}"),
                100.0,
            )
        })
        .collect();
    applied.insert(13, fake_quota("L-BUCKET01", BUCKET, 2500.0));
    applied.push(fake_quota("L-REFILL01", REFILL, 500.0));
    let defaults = vec![
        fake_quota("L-BUCKET01", BUCKET, 1300.0),
        fake_quota("L-REFILL01", REFILL, 300.0),
    ];
    QuotaState {
        applied,
        defaults,
        page_size: 10,
        ..QuotaState::default()
    }
}

fn json_out(output: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(output).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

async fn limits(store: &DynamoStore, key: &str) -> (f64, f64, u64) {
    let state = store.get(key).await.unwrap().expect("the budget item");
    (state.rate_per_second, state.burst, state.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sets_a_share_of_the_applied_quota_and_keeps_a_hand_change() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    create_coordination_table(&sdk, TABLE).await.unwrap();
    let store = DynamoStore::new(&sdk, TABLE, Duration::from_secs(5));
    let fake = FakeQuotas::start(account_quotas()).await.unwrap();
    // A budget made at deploy, never synced.
    let out = quota(&moto, &["--table", TABLE, "set", "--rate", "150", "--burst", "800"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // --dry-run: says what it would do, writes nothing.
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", "0.8", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("bucket          2500 starts, from Service Quotas, applied value of L-BUCKET01"),
        "{text}"
    );
    assert!(
        text.contains("share 0.8: rate 400 starts/s, burst 2000 slots"),
        "{text}"
    );
    assert!(
        text.contains("would set rate 150 → 400 starts/s, burst 800 → 2000 slots"),
        "{text}"
    );
    assert!(text.contains("(--dry-run: nothing written)"), "{text}");
    assert_eq!(limits(&store, KEY).await, (150.0, 800.0, 1));
    // Found by name across pages, then read with GetServiceQuota; no default or metric needed.
    let calls = fake.state().calls.clone();
    assert_eq!(
        calls.iter().filter(|c| *c == "ListServiceQuotas").count(),
        3,
        "{calls:?}"
    );
    assert_eq!(calls.iter().filter(|c| *c == "GetServiceQuota").count(), 2, "{calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| c == "GetMetricData" || c == "ListAWSDefaultServiceQuotas"),
        "{calls:?}"
    );

    // The sync: share 0.8 of 500/s and 2,500.
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", "0.8", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = json_out(&out);
    assert_eq!(json["action"], "set");
    assert_eq!(json["quota"]["bucket"]["value"], 2500.0);
    assert_eq!(json["quota"]["refill_per_second"]["source"], "service-quotas-applied");
    assert_eq!(json["target"]["rate_per_second"], 400.0);
    assert_eq!(json["previous"]["rate_per_second"], 150.0);
    assert_eq!(json["recorded"], true);
    assert_eq!(limits(&store, KEY).await, (400.0, 2000.0, 2));

    // A hand change since: kept (exit 1), unless --force.
    let out = quota(&moto, &["--table", TABLE, "set", "--rate", "100"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", "0.8"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("kept the budget at rate 100 starts/s, burst 2000 slots: it was changed by hand since the last sync, which set rate 400 starts/s, burst 2000 slots"),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.starts_with("sfn-pacer-quota: kept a budget changed by hand"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(limits(&store, KEY).await, (100.0, 2000.0, 3));

    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", "0.8", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("over a hand change (--force)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(limits(&store, KEY).await, (400.0, 2000.0, 4));
    // Synced again: the next sync finds nothing to do.
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", "0.8", "--json"]);
    assert_eq!(json_out(&out)["action"], "unchanged");
    assert_eq!(limits(&store, KEY).await, (400.0, 2000.0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_falls_back_to_defaults_then_to_cloudwatch() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    create_coordination_table(&sdk, TABLE).await.unwrap();
    let store = DynamoStore::new(&sdk, TABLE, Duration::from_secs(5));
    let mut state = account_quotas();
    // No applied values: the defaults, and the budget is created.
    state.applied.retain(|q| q.name != BUCKET && q.name != REFILL);
    let fake = FakeQuotas::start(state).await.unwrap();
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = json_out(&out);
    assert_eq!(json["action"], "created");
    assert_eq!(json["quota"]["bucket"]["source"], "service-quotas-default");
    assert_eq!(limits(&store, KEY).await, (270.0, 1170.0, 1));

    // Service Quotas denied: CloudWatch's latest datapoints (5-minute maxima).
    {
        let mut state = fake.state();
        state.denied = vec!["ListServiceQuotas".into(), "ListAWSDefaultServiceQuotas".into()];
        let now = sfn_pacer::start::clock::system_seconds();
        let dimensions = BTreeMap::from([("APIName".to_string(), "StartExecution".to_string())]);
        for (metric, old, latest) in [
            ("ProvisionedBucketSize", 1300.0, 5000.0),
            ("ProvisionedRefillRate", 300.0, 1000.0),
        ] {
            for (age, value) in [(7200.0, old), (600.0, latest), (5.0 * 3600.0, 1.0)] {
                state.datapoints.push(Datapoint {
                    namespace: "AWS/States".into(),
                    metric: metric.into(),
                    dimensions: dimensions.clone(),
                    timestamp: now - age,
                    value,
                });
            }
        }
    }
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", "0.5"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("refill          1000 starts/s, from CloudWatch AWS/States ProvisionedRefillRate"),
        "{text}"
    );
    assert!(
        text.contains("not found       ListServiceQuotas: AccessDeniedException"),
        "{text}"
    );
    assert_eq!(limits(&store, KEY).await, (500.0, 2500.0, 2));

    // Nothing anywhere: exit 2, one line saying what each source said; nothing written.
    {
        let mut state = fake.state();
        state.datapoints.clear();
    }
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("sfn-pacer-quota: no StartExecution bucket size or refill rate found"),
        "{err}"
    );
    assert!(err.contains("ProvisionedRefillRate: no datapoint"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(limits(&store, KEY).await, (500.0, 2500.0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_rejects_a_bad_share_before_any_call() {
    let moto = Moto::start().await.unwrap();
    let fake = FakeQuotas::start(account_quotas()).await.unwrap();
    for bad in ["0", "1.5", "-0.2", "NaN"] {
        let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = stderr(&out);
        assert!(
            err.starts_with("sfn-pacer-quota: --share must be a fraction of the quota above 0 and at most 1"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let out = quota_sync(&moto, &fake, &["--table", TABLE, "sync", "--share", "most"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--share"), "{}", stderr(&out));
    assert!(fake.state().calls.is_empty());
}

/// `cap show` and `cap set` against moto: the cap's size, the slots held and the oldest holders;
/// a change without a redeploy, read back by the function's own store; lowered below the slots
/// held, nothing is stopped and no new slot is taken until enough are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_and_sets_the_cap_on_running_executions() {
    use sfn_pacer::start::running::{HolderState, RunningStore, Write, Written};
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    create_coordination_table(&sdk, TABLE).await.unwrap();
    let cap = |args: &[&str]| {
        quota(
            &moto,
            &[&["--table", TABLE, "cap", "--running-key", "orders"][..], args].concat(),
        )
    };

    let out = cap(&["show"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no cap under running#orders in table"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);

    let out = cap(&["set", "--max", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("created the cap: 3 running executions"),
        "{}",
        stdout(&out)
    );

    // Three executions take the three slots (as the starter does).
    let store = DynamoStore::new(&sdk, TABLE, Duration::from_secs(5));
    let now_ms = sfn_pacer::handler::now_epoch_ms();
    let holder = |name: &str, ago_s: u64| sfn_pacer::start::running::Holder {
        scope: "orders".into(),
        name: name.into(),
        shard: 0,
        state: HolderState::Held,
        attempt: 0,
        execution_arn: format!("arn:aws:states:us-east-1:123456789012:execution:orders:{name}"),
        taken_at_ms: now_ms - ago_s * 1000,
        check_at_s: now_ms / 1000 + 300 - ago_s,
        express: false,
        released_at_ms: None,
    };
    for (name, ago_s) in [("middle", 20), ("oldest", 30), ("newest", 10)] {
        let take = Write::Take {
            holder: holder(name, ago_s),
            above_cap: false,
        };
        assert!(matches!(
            RunningStore::write(&store, "orders", &take).await.unwrap(),
            Written::Applied(_)
        ));
    }
    let out = cap(&["show", "--oldest", "2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (json["cap"].as_u64(), json["held"].as_u64(), json["free"].as_u64()),
        (Some(3), Some(3), Some(0))
    );
    let oldest: Vec<&str> = json["oldest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(oldest, ["oldest", "middle"]);
    assert_eq!(json["oldest"][0]["check_at_s"].as_u64(), Some(now_ms / 1000 + 270));
    let text = stdout(&cap(&["show"]));
    assert!(
        text.contains("held            3 slots (0 free)") && text.contains("next check in 2"),
        "{text}"
    );

    // Lowered below the slots held: nothing stops, no slot is free until two are released.
    let out = cap(&["set", "--max", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no new execution starts until 2 more end (none is stopped)"),
        "{}",
        stdout(&out)
    );
    let view = store.view("orders").await.unwrap().unwrap();
    assert_eq!((view.settings.cap, view.held(), view.room()), (1, 3, 0));
    let fourth = Write::Take {
        holder: holder("fourth", 0),
        above_cap: false,
    };
    assert!(matches!(
        RunningStore::write(&store, "orders", &fourth).await.unwrap(),
        Written::Refused(_)
    ));
    // Raised again: the room is there at once.
    let out = cap(&["set", "--max", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let view = store.view("orders").await.unwrap().unwrap();
    assert_eq!((view.settings.cap, view.held(), view.room()), (5, 3, 2));

    // Validation: exit 2, one line naming the flag, nothing written.
    let out = cap(&["set", "--max", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("sfn-pacer-quota: --max must be 1 to 1000000"),
        "{}",
        stderr(&out)
    );
    assert_eq!(store.view("orders").await.unwrap().unwrap().settings.cap, 5);
}
