//! Throttling through the real SDK client: a loopback Step Functions endpoint of the tests'
//! own answers `ThrottlingException` for a while, then succeeds. Nothing is lost and the
//! pacer backs off. Rates are asserted only with generous bounds, on the test's own clock.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use local_stack::fake_sfn::{FakeSfn, Faults, InitialThrottle, DEFAULT_STATE_MACHINE_ARN};
use local_stack::moto::sdk_config_for;
use local_stack::sim::SimQueue;
use serde_json::json;
use sfn_pacer::aws::SfnStarter;
use sfn_pacer::{Config, Starter};

fn batch(queue_arn: &str, n: usize) -> SqsEvent {
    let records: Vec<_> = (0..n)
        .map(|i| {
            json!({"messageId": format!("t-{i:04}"), "receiptHandle": format!("rh-{i}"), "body": json!({"i": i}).to_string(),
                   "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "attributes": {"ApproximateReceiveCount": "1"}})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

#[tokio::test]
async fn throttling_backs_off_and_loses_nothing() {
    let sfn = FakeSfn::builder()
        .faults(Faults {
            initial_throttle: Some(InitialThrottle::For(Duration::from_millis(600))),
            ..Faults::default()
        })
        .seed(7)
        .start()
        .await
        .unwrap();
    let sdk = sdk_config_for(&sfn.endpoint()).await;
    let config = Config::from_lookup(|k| {
        match k {
            "STATE_MACHINE_ARN" => Some(DEFAULT_STATE_MACHINE_ARN),
            "STARTS_PER_SECOND" => Some("100"),
            "STARTS_BURST" => Some("20"),
            "MAX_ATTEMPTS" => Some("20"),
            "CALL_TIMEOUT_MS" => Some("1000"),
            _ => None,
        }
        .map(String::from)
    })
    .unwrap();
    let queue = SimQueue::new("work", 5, Duration::from_secs(30));
    let starter = Starter::new(
        config,
        Arc::new(SfnStarter::new(&sdk, Duration::from_secs(1))),
        queue.clone(),
    );
    let t0 = std::time::Instant::now();
    let deadline = sfn_pacer::handler::now_epoch_ms() + 60_000;
    let outcome = starter.process(batch(queue.arn(), 120), deadline).await.unwrap();
    let elapsed = t0.elapsed();

    assert!(
        outcome.response.batch_item_failures.is_empty(),
        "{:?}",
        outcome.response
    );
    assert_eq!(sfn.execution_count(), 120, "every message started once");
    for i in 0..120 {
        assert_eq!(sfn.name_count(&format!("t-{i:04}")), 1);
    }
    let stats = sfn.stats();
    assert!(stats.throttled_initial > 0, "the endpoint throttled");
    assert_eq!(
        outcome.report.throttled,
        stats.throttled(),
        "every throttle was seen by the pacer"
    );
    assert!(starter.pacer().rate_per_second() < 100.0, "the rate backed off");
    // Throttled calls were paced too: far fewer than an unpaced client would make in 600 ms.
    assert!(stats.throttled() < 60, "{} throttles", stats.throttled());
    // 120 starts at ≤ 100/s after a 600 ms outage: more than 0.6 s, and far less than the 60 s budget.
    assert!(
        elapsed > Duration::from_millis(600) && elapsed < Duration::from_secs(30),
        "{elapsed:?}"
    );
    sfn.shutdown().await;
}
