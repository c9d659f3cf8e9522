//! Tests of the fake Step Functions endpoint (`local_stack::fake_sfn`): the token bucket
//! under an explicit clock, name validation, and the server driven by the real `aws-sdk-sfn`
//! client on loopback. Every test is bounded (well under a few seconds).

use std::time::{Duration, Instant};

use aws_sdk_sfn::config::retry::RetryConfig;
use aws_sdk_sfn::config::timeout::TimeoutConfig;
use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sfn::operation::start_execution::{StartExecutionError, StartExecutionOutput};
use aws_sdk_sfn::Client;
use local_stack::fake_sfn::{
    is_valid_execution_name, ExistingNames, FakeSfn, FakeSfnHandle, Faults, InitialThrottle, LostResponseMode,
    SlowMode, ThrottleCause, TokenBucket, DEFAULT_STATE_MACHINE_ARN, MAX_INPUT_BYTES,
};

const SM: &str = DEFAULT_STATE_MACHINE_ARN;

type StartResult = Result<StartExecutionOutput, SdkError<StartExecutionError>>;

// ---------------------------------------------------------------- token bucket (pure)

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Takes tokens at `now` until refused; returns how many were taken.
fn drain(bucket: &mut TokenBucket, now: Duration) -> u64 {
    let mut n = 0;
    while bucket.try_take(now) {
        n += 1;
    }
    n
}

#[test]
fn bucket_starts_full_and_refills_exactly_300_per_second() {
    let mut b = TokenBucket::new(1300, 300.0);
    assert_eq!(drain(&mut b, Duration::ZERO), 1300);
    assert!(!b.try_take(Duration::ZERO));
    assert_eq!(drain(&mut b, Duration::from_secs(1)), 300);
    assert_eq!(drain(&mut b, Duration::from_secs(2)), 300);
    assert_eq!(drain(&mut b, ms(2500)), 150);
}

#[test]
fn bucket_continuous_drain_grants_capacity_plus_rate_times_t() {
    let mut b = TokenBucket::new(1300, 300.0);
    let mut taken = drain(&mut b, Duration::ZERO);
    // Then try 5 times per millisecond for 10 s: demand far above supply (0.3 per ms).
    for step in 1..=10_000u64 {
        let now = ms(step);
        for _ in 0..5 {
            if b.try_take(now) {
                taken += 1;
            }
        }
        if step % 1000 == 0 {
            assert_eq!(taken, 1300 + 300 * (step / 1000), "at {step} ms");
        }
    }
    assert_eq!(taken, 1300 + 3000);
}

#[test]
fn bucket_one_token_takes_exactly_one_over_rate_seconds() {
    let mut b = TokenBucket::new(1300, 300.0);
    assert_eq!(drain(&mut b, Duration::ZERO), 1300);
    // 1/300 s = 3,333,333.33 ns.
    assert!(!b.try_take(Duration::from_nanos(3_333_333)));
    assert!(b.try_take(Duration::from_nanos(3_333_334)));
    assert!(!b.try_take(Duration::from_nanos(3_333_334)));
    assert_eq!(
        b.time_to_next_token(Duration::from_nanos(3_333_334)),
        Some(Duration::from_nanos(3_333_333))
    );
}

#[test]
fn bucket_never_exceeds_capacity_and_refusals_cost_nothing() {
    let mut b = TokenBucket::new(1300, 300.0);
    assert_eq!(drain(&mut b, Duration::ZERO), 1300);
    // A thousand refusals at the same instant change nothing.
    for _ in 0..1000 {
        assert!(!b.try_take(ms(1)));
    }
    assert_eq!(b.available(Duration::from_secs(100)), 1300);
    assert_eq!(drain(&mut b, Duration::from_secs(100)), 1300);
    assert_eq!(b.capacity(), 1300);
    assert_eq!(b.refill_per_second(), 300.0);
}

#[test]
fn bucket_time_going_backwards_adds_nothing() {
    let mut b = TokenBucket::new(10, 1.0);
    assert_eq!(drain(&mut b, Duration::from_secs(5)), 10);
    assert_eq!(drain(&mut b, Duration::from_secs(1)), 0);
    assert_eq!(drain(&mut b, Duration::from_secs(6)), 1);
}

#[test]
fn bucket_fractional_and_zero_rates() {
    let mut half = TokenBucket::new(1, 0.5);
    assert!(half.try_take(Duration::ZERO));
    assert!(!half.try_take(ms(1999)));
    assert!(half.try_take(ms(2000)));

    let mut none = TokenBucket::new(2, 0.0);
    assert_eq!(drain(&mut none, Duration::from_secs(1_000_000)), 2);
    assert_eq!(none.time_to_next_token(Duration::from_secs(1_000_001)), None);

    let mut empty = TokenBucket::new(0, 100.0);
    assert_eq!(drain(&mut empty, Duration::from_secs(10)), 0);
}

#[test]
fn bucket_express_quota() {
    let mut b = TokenBucket::new(6000, 6000.0);
    assert_eq!(drain(&mut b, Duration::ZERO), 6000);
    assert_eq!(drain(&mut b, ms(500)), 3000);
    assert_eq!(drain(&mut b, ms(10_500)), 6000);
}

// ---------------------------------------------------------------- name validation

#[test]
fn execution_name_rules() {
    assert!(is_valid_execution_name("a"));
    assert!(is_valid_execution_name("order-42_retry.1"));
    assert!(is_valid_execution_name(&"x".repeat(80)));
    assert!(is_valid_execution_name("café"));
    assert!(!is_valid_execution_name(""));
    assert!(!is_valid_execution_name(&"x".repeat(81)));
    for c in "?*<>{}[]\"#%\\^|~`$&,;:/".chars() {
        assert!(!is_valid_execution_name(&format!("a{c}b")), "{c:?} must be refused");
    }
    for bad in ["a b", "a\tb", "a\nb", "a\u{0}b", "a\u{7f}b", "a\u{85}b", "a\u{a0}b"] {
        assert!(!is_valid_execution_name(bad), "{bad:?} must be refused");
    }
}

// ---------------------------------------------------------------- helpers for the server tests

/// A client for `endpoint` with dummy credentials, us-east-1 and SDK retries disabled.
async fn client(endpoint: &str) -> Client {
    client_with(endpoint, RetryConfig::disabled(), None).await
}

async fn client_with(endpoint: &str, retry: RetryConfig, attempt_timeout: Option<Duration>) -> Client {
    let sdk = local_stack::moto::sdk_config_for(endpoint).await;
    let mut builder = aws_sdk_sfn::config::Builder::from(&sdk).retry_config(retry);
    if let Some(timeout) = attempt_timeout {
        builder = builder.timeout_config(TimeoutConfig::builder().operation_attempt_timeout(timeout).build());
    }
    Client::from_conf(builder.build())
}

async fn start(client: &Client, name: &str, input: &str) -> StartResult {
    client
        .start_execution()
        .state_machine_arn(SM)
        .name(name)
        .input(input)
        .send()
        .await
}

fn code(result: &StartResult) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(e) => e.code().map(str::to_string),
    }
}

fn status(result: &StartResult) -> Option<u16> {
    match result {
        Err(e) => e.raw_response().map(|r| r.status().as_u16()),
        Ok(_) => Some(200),
    }
}

fn is_connection_error(result: &StartResult) -> bool {
    matches!(
        result,
        Err(SdkError::DispatchFailure(_)) | Err(SdkError::ResponseError(_))
    )
}

async fn fake(faults: Faults) -> (FakeSfnHandle, Client) {
    let sfn = FakeSfn::builder().faults(faults).seed(7).start().await.unwrap();
    let client = client(&sfn.endpoint()).await;
    (sfn, client)
}

// ---------------------------------------------------------------- server: happy path, idempotency

#[tokio::test]
async fn start_execution_succeeds_and_is_recorded() {
    let (sfn, client) = fake(Faults::default()).await;
    assert!(sfn.endpoint().starts_with("http://127.0.0.1:"));
    assert!(sfn.addr().ip().is_loopback());

    let before = std::time::SystemTime::now();
    let out = start(&client, "order-1", r#"{"id":1}"#).await.unwrap();
    assert_eq!(
        out.execution_arn(),
        "arn:aws:states:us-east-1:123456789012:execution:sfn-pacer-fake:order-1"
    );
    let start_secs = out.start_date().secs();
    let before_secs = before.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(
        (start_secs - before_secs).abs() <= 2,
        "startDate {start_secs} vs now {before_secs}"
    );

    let records = sfn.executions();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, "order-1");
    assert_eq!(records[0].input, r#"{"id":1}"#);
    assert_eq!(records[0].state_machine_arn, SM);
    assert_eq!(records[0].execution_arn, out.execution_arn());
    assert!(records[0].accepted_at <= sfn.elapsed());
    assert_eq!(sfn.execution("order-1").unwrap(), records[0]);
    let stats = sfn.stats();
    assert_eq!(
        (stats.requests, stats.start_execution_requests, stats.started),
        (1, 1, 1)
    );
    assert_eq!(sfn.starts_per_second_series().iter().sum::<u64>(), 1);
}

#[tokio::test]
async fn idempotent_repeat_returns_the_same_arn() {
    let (sfn, client) = fake(Faults::default()).await;
    let first = start(&client, "same", r#"{"a":1}"#).await.unwrap();
    let again = start(&client, "same", r#"{"a":1}"#).await.unwrap();
    assert_eq!(first.execution_arn(), again.execution_arn());
    assert_eq!(first.start_date(), again.start_date());
    assert_eq!(sfn.execution_count(), 1);
    assert_eq!(sfn.stats().idempotent_repeats, 1);
    assert_eq!(sfn.name_count("same"), 1);
}

#[tokio::test]
async fn same_name_different_input_is_execution_already_exists() {
    let (sfn, client) = fake(Faults::default()).await;
    start(&client, "dup", r#"{"a":1}"#).await.unwrap();
    let result = start(&client, "dup", r#"{"a":2}"#).await;
    assert_eq!(code(&result).as_deref(), Some("ExecutionAlreadyExists"));
    assert_eq!(status(&result), Some(400));
    assert!(result.unwrap_err().into_service_error().is_execution_already_exists());
    assert_eq!(sfn.execution_count(), 1);
    assert_eq!(sfn.stats().already_exists, 1);
}

#[tokio::test]
async fn closed_executions_and_already_exists_policy() {
    let (sfn, client) = fake(Faults::default()).await;
    start(&client, "will-close", "{}").await.unwrap();
    assert!(sfn.close_execution("will-close"));
    assert!(!sfn.close_execution("never-started"));
    let result = start(&client, "will-close", "{}").await;
    assert_eq!(code(&result).as_deref(), Some("ExecutionAlreadyExists"));

    let strict = FakeSfn::builder()
        .existing_names(ExistingNames::AlreadyExists)
        .start()
        .await
        .unwrap();
    let client = self::client(&strict.endpoint()).await;
    start(&client, "n", "{}").await.unwrap();
    assert_eq!(
        code(&start(&client, "n", "{}").await).as_deref(),
        Some("ExecutionAlreadyExists")
    );
    assert_eq!(strict.stats().already_exists, 1);
}

#[tokio::test]
async fn express_mode_records_every_call() {
    let sfn = FakeSfn::builder().express(true).start().await.unwrap();
    let client = client(&sfn.endpoint()).await;
    let a = start(&client, "e", "{}").await.unwrap();
    let b = start(&client, "e", "{}").await.unwrap();
    let c = start(&client, "e", r#"{"other":true}"#).await.unwrap();
    assert_ne!(a.execution_arn(), b.execution_arn());
    assert_ne!(b.execution_arn(), c.execution_arn());
    assert!(a.execution_arn().contains(":express:sfn-pacer-fake:e:"));
    assert_eq!(sfn.name_count("e"), 3);
    assert_eq!(sfn.execution_count(), 3);
    assert_eq!(sfn.stats().idempotent_repeats, 0);
}

#[tokio::test]
async fn missing_name_gets_a_generated_uuid() {
    let (sfn, client) = fake(Faults::default()).await;
    let out = client.start_execution().state_machine_arn(SM).send().await.unwrap();
    let record = &sfn.executions()[0];
    assert_eq!(record.name.len(), 36);
    assert!(is_valid_execution_name(&record.name));
    assert_eq!(record.input, "{}");
    assert!(out.execution_arn().ends_with(&record.name));
}

#[tokio::test]
async fn validation_errors() {
    let sfn = FakeSfn::builder().state_machine(SM).start().await.unwrap();
    let client = client(&sfn.endpoint()).await;

    let bad_name = start(&client, "has space", "{}").await;
    assert_eq!(code(&bad_name).as_deref(), Some("InvalidName"));
    assert_eq!(
        code(&start(&client, &"x".repeat(81), "{}").await).as_deref(),
        Some("InvalidName")
    );

    let not_json = start(&client, "nj", "{not json").await;
    assert_eq!(code(&not_json).as_deref(), Some("InvalidExecutionInput"));
    let big = format!("\"{}\"", "x".repeat(MAX_INPUT_BYTES - 1));
    let too_big = start(&client, "big", &big).await;
    assert_eq!(code(&too_big).as_deref(), Some("InvalidExecutionInput"));
    let fits = format!("\"{}\"", "x".repeat(MAX_INPUT_BYTES - 2));
    start(&client, "fits", &fits).await.unwrap();

    let other = "arn:aws:states:us-east-1:123456789012:stateMachine:unknown";
    let missing = client.start_execution().state_machine_arn(other).name("m").send().await;
    assert_eq!(code(&missing).as_deref(), Some("StateMachineDoesNotExist"));
    let malformed = client
        .start_execution()
        .state_machine_arn("nope")
        .name("m")
        .send()
        .await;
    assert_eq!(code(&malformed).as_deref(), Some("InvalidArn"));

    let stats = sfn.stats();
    assert_eq!(
        (stats.invalid_name, stats.invalid_input, stats.state_machine_missing),
        (2, 2, 1)
    );
    assert_eq!((stats.invalid_arn, stats.started), (1, 1));
}

#[tokio::test]
async fn describe_and_list_executions() {
    let (_sfn, client) = fake(Faults::default()).await;
    let out = start(&client, "d1", r#"{"k":"v"}"#).await.unwrap();
    start(&client, "d2", "{}").await.unwrap();
    let described = client
        .describe_execution()
        .execution_arn(out.execution_arn())
        .send()
        .await
        .unwrap();
    assert_eq!(described.name(), Some("d1"));
    assert_eq!(described.input(), Some(r#"{"k":"v"}"#));
    assert_eq!(described.status().as_str(), "RUNNING");
    let listed = client.list_executions().state_machine_arn(SM).send().await.unwrap();
    let names: Vec<&str> = listed.executions().iter().map(|e| e.name()).collect();
    assert_eq!(names, ["d2", "d1"]);
    let missing = client
        .describe_execution()
        .execution_arn(format!("{}x", out.execution_arn()))
        .send()
        .await;
    assert_eq!(missing.unwrap_err().code(), Some("ExecutionDoesNotExist"));
}

#[tokio::test]
async fn describe_state_machine_gives_the_workflow_type() {
    let (_sfn, standard_client) = fake(Faults::default()).await;
    let standard = standard_client
        .describe_state_machine()
        .state_machine_arn(SM)
        .send()
        .await
        .unwrap();
    assert_eq!(standard.r#type().as_str(), "STANDARD");
    assert_eq!(standard.name(), "sfn-pacer-fake");
    let sfn = FakeSfn::builder()
        .express(true)
        .state_machine(SM)
        .start()
        .await
        .unwrap();
    let express = client(&sfn.endpoint()).await;
    let described = express
        .describe_state_machine()
        .state_machine_arn(SM)
        .send()
        .await
        .unwrap();
    assert_eq!(described.r#type().as_str(), "EXPRESS");
    let missing = express
        .describe_state_machine()
        .state_machine_arn(format!("{SM}x"))
        .send()
        .await;
    assert_eq!(missing.unwrap_err().code(), Some("StateMachineDoesNotExist"));
}

// ---------------------------------------------------------------- quota and throttling

#[tokio::test]
async fn quota_throttles_after_the_bucket_empties() {
    let sfn = FakeSfn::builder().bucket(5, 0.0).start().await.unwrap();
    let client = client(&sfn.endpoint()).await;
    for i in 0..5 {
        start(&client, &format!("q{i}"), "{}").await.unwrap();
    }
    let result = start(&client, "q5", "{}").await;
    assert_eq!(code(&result).as_deref(), Some("ThrottlingException"));
    assert_eq!(status(&result), Some(400));
    let stats = sfn.stats();
    assert_eq!((stats.started, stats.throttled_quota, stats.throttled()), (5, 1, 1));
    assert_eq!(sfn.throttles()[0].cause, ThrottleCause::Quota);
    assert_eq!(sfn.throttle_times().len(), 1);
    assert_eq!(sfn.throttles_per_second_series().iter().sum::<u64>(), 1);

    sfn.set_bucket(Some((1, 0.0)));
    start(&client, "q6", "{}").await.unwrap();
    sfn.set_bucket(None);
    start(&client, "q7", "{}").await.unwrap();
}

#[tokio::test]
async fn initial_throttle_window_by_calls_then_success() {
    let (sfn, client) = fake(Faults {
        initial_throttle: Some(InitialThrottle::Calls(2)),
        ..Faults::default()
    })
    .await;
    for _ in 0..2 {
        let result = start(&client, "w", "{}").await;
        assert_eq!(code(&result).as_deref(), Some("ThrottlingException"));
    }
    start(&client, "w", "{}").await.unwrap();
    let stats = sfn.stats();
    assert_eq!(
        (stats.throttled_initial, stats.started, stats.start_execution_requests),
        (2, 1, 3)
    );
    assert!(sfn.throttles().iter().all(|t| t.cause == ThrottleCause::InitialWindow));
}

#[tokio::test]
async fn initial_throttle_window_by_time_then_success() {
    let (sfn, client) = fake(Faults::default()).await;
    sfn.set_faults(Faults {
        initial_throttle: Some(InitialThrottle::For(ms(500))),
        ..Faults::default()
    })
    .unwrap();
    let result = start(&client, "t", "{}").await;
    assert_eq!(code(&result).as_deref(), Some("ThrottlingException"));
    tokio::time::sleep(ms(550)).await;
    start(&client, "t", "{}").await.unwrap();
    assert_eq!(sfn.stats().throttled_initial, 1);
}

#[tokio::test]
async fn random_faults_are_reproducible_from_the_seed() {
    let faults = Faults {
        throttle_probability: 0.3,
        error_500_probability: 0.2,
        ..Faults::default()
    };
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let sfn = FakeSfn::builder().faults(faults).seed(1234).start().await.unwrap();
        let client = client(&sfn.endpoint()).await;
        let mut run = Vec::new();
        for i in 0..40 {
            run.push(code(&start(&client, &format!("r{i}"), "{}").await));
        }
        let stats = sfn.stats();
        assert_eq!(stats.throttled_random + stats.injected_500 + stats.started, 40);
        assert!(
            stats.throttled_random > 0 && stats.injected_500 > 0 && stats.started > 0,
            "{stats:?}"
        );
        outcomes.push(run);
    }
    assert_eq!(outcomes[0], outcomes[1]);
}

#[tokio::test]
async fn invalid_fault_probabilities_are_refused() {
    let bad = Faults {
        throttle_probability: 0.7,
        error_503_probability: 0.5,
        ..Faults::default()
    };
    assert!(FakeSfn::builder().faults(bad).start().await.is_err());
    let (sfn, _client) = fake(Faults::default()).await;
    assert!(sfn
        .set_faults(Faults {
            reset_probability: 1.5,
            ..Faults::default()
        })
        .is_err());
    assert!(sfn
        .set_faults(Faults {
            reset_probability: f64::NAN,
            ..Faults::default()
        })
        .is_err());
}

// ---------------------------------------------------------------- 5xx, resets, lost and slow responses

#[tokio::test]
async fn status_500_is_a_retryable_service_error() {
    let (sfn, client) = fake(Faults {
        error_500_probability: 1.0,
        ..Faults::default()
    })
    .await;
    let result = start(&client, "five", "{}").await;
    assert!(matches!(result, Err(SdkError::ServiceError(_))));
    assert_eq!(status(&result), Some(500));
    assert_eq!(code(&result).as_deref(), Some("InternalFailure"));
    assert_eq!(sfn.execution_count(), 0);

    // The SDK's standard retry treats it as transient: 3 attempts reach the server.
    let retry = RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(ms(1))
        .with_max_backoff(ms(5));
    let retrying = client_with(&sfn.endpoint(), retry, None).await;
    sfn.clear();
    let result = start(&retrying, "five", "{}").await;
    assert_eq!(status(&result), Some(500));
    assert_eq!(sfn.stats().start_execution_requests, 3);
    assert_eq!(sfn.stats().injected_500, 3);
}

#[tokio::test]
async fn plain_503_has_no_error_code() {
    let (sfn, client) = fake(Faults {
        error_503_probability: 1.0,
        plain_5xx: true,
        ..Faults::default()
    })
    .await;
    let result = start(&client, "503", "{}").await;
    assert!(matches!(result, Err(SdkError::ServiceError(_))));
    assert_eq!(status(&result), Some(503));
    assert_eq!(code(&result), None);
    assert_eq!(sfn.stats().injected_503, 1);
}

#[tokio::test]
async fn connection_reset_gives_a_dispatch_or_response_error() {
    let (sfn, client) = fake(Faults {
        reset_probability: 1.0,
        ..Faults::default()
    })
    .await;
    let result = start(&client, "rst", "{}").await;
    assert!(is_connection_error(&result), "{result:?}");
    assert_eq!(sfn.execution_count(), 0);
    assert_eq!(sfn.stats().resets, 1);

    // The server keeps serving new connections.
    sfn.set_faults(Faults::default()).unwrap();
    start(&client, "rst", "{}").await.unwrap();
}

#[tokio::test]
async fn lost_response_by_reset_records_the_execution() {
    let (sfn, client) = fake(Faults {
        lost_response_probability: 1.0,
        ..Faults::default()
    })
    .await;
    let result = start(&client, "lost", r#"{"n":1}"#).await;
    assert!(is_connection_error(&result), "{result:?}");
    let record = sfn.execution("lost").expect("applied although the response was lost");
    assert_eq!(sfn.stats().lost_responses, 1);

    // The client's retry finds the running execution: same ARN.
    sfn.set_faults(Faults::default()).unwrap();
    let again = start(&client, "lost", r#"{"n":1}"#).await.unwrap();
    assert_eq!(again.execution_arn(), record.execution_arn);
    assert_eq!(sfn.stats().idempotent_repeats, 1);
}

#[tokio::test]
async fn lost_response_by_500_records_the_execution() {
    let faults = Faults {
        lost_response_probability: 1.0,
        lost_response_mode: LostResponseMode::Status500,
        ..Faults::default()
    };
    let (sfn, client) = fake(faults).await;
    let result = start(&client, "lost500", "{}").await;
    assert_eq!(status(&result), Some(500));
    assert_eq!(sfn.execution_count(), 1);
}

fn slow(mode: SlowMode, delay: Duration) -> Faults {
    Faults {
        slow_probability: 1.0,
        slow_delay: delay,
        slow_mode: mode,
        ..Faults::default()
    }
}

#[tokio::test]
async fn slow_not_applied_times_out_and_records_nothing() {
    let sfn = FakeSfn::builder()
        .faults(slow(SlowMode::NotApplied, ms(400)))
        .start()
        .await
        .unwrap();
    let client = client_with(&sfn.endpoint(), RetryConfig::disabled(), Some(ms(150))).await;
    let result = start(&client, "slow", "{}").await;
    assert!(matches!(result, Err(SdkError::TimeoutError(_))), "{result:?}");
    tokio::time::sleep(ms(400)).await;
    assert_eq!(sfn.execution_count(), 0);
    assert_eq!(sfn.stats().slow, 1);
}

#[tokio::test]
async fn slow_then_applied_records_after_the_client_gave_up() {
    let sfn = FakeSfn::builder()
        .faults(slow(SlowMode::SlowThenApplied, ms(300)))
        .start()
        .await
        .unwrap();
    let client = client_with(&sfn.endpoint(), RetryConfig::disabled(), Some(ms(100))).await;
    let result = start(&client, "late", "{}").await;
    assert!(matches!(result, Err(SdkError::TimeoutError(_))), "{result:?}");
    assert_eq!(sfn.execution_count(), 0);
    tokio::time::sleep(ms(400)).await;
    assert_eq!(sfn.execution_count(), 1);
    assert!(sfn.executions()[0].accepted_at >= ms(300));
}

#[tokio::test]
async fn applied_then_slow_records_before_responding() {
    let sfn = FakeSfn::builder()
        .faults(slow(SlowMode::AppliedThenSlow, ms(300)))
        .start()
        .await
        .unwrap();
    let client = client_with(&sfn.endpoint(), RetryConfig::disabled(), Some(ms(100))).await;
    let result = start(&client, "early", "{}").await;
    assert!(matches!(result, Err(SdkError::TimeoutError(_))), "{result:?}");
    assert_eq!(sfn.execution_count(), 1);
}

#[tokio::test]
async fn latency_is_applied() {
    let sfn = FakeSfn::builder().latency_ms(60, 20).start().await.unwrap();
    let client = client(&sfn.endpoint()).await;
    start(&client, "warm", "{}").await.unwrap();
    let began = Instant::now();
    start(&client, "timed", "{}").await.unwrap();
    let took = began.elapsed();
    assert!(took >= ms(60), "{took:?}");
    assert!(took < ms(1000), "{took:?}");
}

#[tokio::test]
async fn concurrent_calls_all_recorded() {
    let (sfn, client) = fake(Faults::default()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        tasks.spawn(async move { start(&client, &format!("c{i}"), "{}").await.map(|_| ()) });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(sfn.execution_count(), 200);
    assert_eq!(sfn.stats().started, 200);
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let sfn = FakeSfn::builder().start().await.unwrap();
    let addr = sfn.addr();
    let state = sfn.state();
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    sfn.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(state.execution_count(), 0);

    let dropped = FakeSfn::builder().start().await.unwrap();
    let addr = dropped.addr();
    drop(dropped);
    // The accept loop ends on its next poll; give it a moment.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    assert!(refused);
}
