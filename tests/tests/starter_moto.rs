//! The starter with its real SDK adapters against a real `moto_server` on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use local_stack::esm::event::sqs_event;
use local_stack::esm::runner::Queue as EsmQueue;
use local_stack::esm::sqs::SqsQueue as EsmSqsQueue;
use local_stack::moto::{executions, provision, Moto, Stack, REGION};
use serde_json::json;
use sfn_pacer::aws::{SfnStarter, SqsQueue};
use sfn_pacer::{Config, Disposition, Starter};

fn config(stack: &Stack, extra: &[(&str, &str)]) -> Config {
    let mut all: Vec<(String, String)> = vec![
        ("STATE_MACHINE_ARN".into(), stack.state_machine_arn.clone()),
        ("STARTS_PER_SECOND".into(), "200".into()),
        ("STARTS_BURST".into(), "50".into()),
        ("DLQ_URL".into(), stack.dlq_url.clone()),
    ];
    all.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_lookup(|k| all.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap()
}

async fn starter(moto: &Moto, config: Config) -> Starter {
    let sdk = moto.sdk_config().await;
    let sfn = Arc::new(SfnStarter::new(&sdk, config.call_timeout));
    let queue = Arc::new(SqsQueue::new(&sdk, config.call_timeout));
    Starter::new(config, sfn, queue)
}

fn batch(stack: &Stack, bodies: &[String]) -> SqsEvent {
    let records: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({"messageId": format!("0000-msg-{i:03}"), "receiptHandle": format!("rh-{i}"), "body": body,
                   "eventSource": "aws:sqs", "eventSourceARN": stack.queue_arn,
                   "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1700000000000"}})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

fn deadline() -> u64 {
    sfn_pacer::handler::now_epoch_ms() + 60_000
}

fn bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| json!({"order": i, "item": format!("widget-{i}")}).to_string())
        .collect()
}

#[tokio::test]
async fn a_batch_starts_one_execution_per_message_and_a_redelivery_starts_none() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let stack = provision(&sdk, "work", 5, 30).await.unwrap();
    let starter = starter(&moto, config(&stack, &[])).await;
    let bodies = bodies(25);

    let outcome = starter.process(batch(&stack, &bodies), deadline()).await.unwrap();
    assert!(
        outcome.response.batch_item_failures.is_empty(),
        "{:?}",
        outcome.response
    );
    assert_eq!(outcome.report.started, 25);
    let started = executions(&sdk, &stack.state_machine_arn).await.unwrap();
    assert_eq!(started.len(), 25);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(
            started[&format!("0000-msg-{i:03}")],
            *body,
            "the body is the input, byte for byte"
        );
    }

    let again = starter.process(batch(&stack, &bodies), deadline()).await.unwrap();
    assert!(again.response.batch_item_failures.is_empty());
    assert_eq!(
        executions(&sdk, &stack.state_machine_arn).await.unwrap().len(),
        25,
        "no new executions"
    );
}

#[tokio::test]
async fn a_bad_body_is_reported_and_the_rest_start() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let stack = provision(&sdk, "work", 5, 30).await.unwrap();
    // Without DLQ_URL the bad message is reported in batchItemFailures.
    let mut c = config(&stack, &[]);
    c.dlq_url = None;
    let starter = starter(&moto, c).await;
    let mut bodies = bodies(9);
    bodies.insert(4, "{not json".to_string());
    let outcome = starter.process(batch(&stack, &bodies), deadline()).await.unwrap();
    let failed: Vec<_> = outcome
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, vec!["0000-msg-004".to_string()]);
    assert_eq!(executions(&sdk, &stack.state_machine_arn).await.unwrap().len(), 9);
}

#[tokio::test]
async fn a_bad_body_goes_to_the_dlq_with_its_reason() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let stack = provision(&sdk, "work", 5, 30).await.unwrap();
    let starter = starter(&moto, config(&stack, &[])).await;
    let outcome = starter
        .process(batch(&stack, &["not json".to_string()]), deadline())
        .await
        .unwrap();
    assert!(outcome.response.batch_item_failures.is_empty());
    assert_eq!(outcome.dispositions, vec![Disposition::DeadLettered]);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let received = sqs
        .receive_message()
        .queue_url(&stack.dlq_url)
        .message_attribute_names("All")
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let messages = received.messages.unwrap_or_default();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body.as_deref(), Some("not json"), "the body is unchanged");
    let attrs = messages[0].message_attributes.clone().unwrap_or_default();
    let text = |k: &str| attrs.get(k).and_then(|v| v.string_value.clone()).unwrap_or_default();
    assert_eq!(text("sfn-pacer.error-code"), "BodyNotJson");
    assert!(text("sfn-pacer.reason").contains("not JSON"));
    assert_eq!(text("sfn-pacer.message-id"), "0000-msg-000");
    assert_eq!(text("sfn-pacer.receive-count"), "1");
    assert_eq!(text("sfn-pacer.source-queue"), stack.queue_arn);
}

#[tokio::test]
async fn a_missing_state_machine_reports_every_message_without_a_handler_error() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let stack = provision(&sdk, "work", 5, 30).await.unwrap();
    let mut c = config(&stack, &[]);
    c.state_machine_arn = stack.state_machine_arn.replace(":work", ":missing");
    let starter = starter(&moto, c).await;
    let outcome = starter.process(batch(&stack, &bodies(12)), deadline()).await.unwrap();
    assert_eq!(outcome.response.batch_item_failures.len(), 12);
    assert!(outcome.dispositions.iter().all(|d| matches!(d, Disposition::Retry(_))));
}

/// moto with the stack (the queue's visibility timeout is 1 s) and one `{}` message queued.
async fn one_message_on_a_queue_with_a_1_s_visibility() -> (Moto, aws_config::SdkConfig, Stack, aws_sdk_sqs::Client) {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let stack = provision(&sdk, "work", 5, 1).await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    sqs.send_message()
        .queue_url(&stack.queue_url)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    (moto, sdk, stack, sqs)
}

#[tokio::test]
async fn retries_are_delayed_with_change_message_visibility() {
    let (moto, _sdk, stack, sqs) = one_message_on_a_queue_with_a_1_s_visibility().await;
    let received = sqs
        .receive_message()
        .queue_url(&stack.queue_url)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1);
    let m = &received[0];
    let event: SqsEvent = serde_json::from_value(json!({"Records": [{
        "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
        "eventSource": "aws:sqs", "eventSourceARN": stack.queue_arn,
        "attributes": {"ApproximateReceiveCount": "3"}}]}))
    .unwrap();
    // A missing state machine is retryable: on its third receive the message gets a full-jitter
    // visibility backoff uniform in [0, 4 × 3600 s) (capped at 7200 s), far beyond the queue's
    // 1 s; a draw under 2 s has probability 1/3600.
    let mut c = config(&stack, &[("RETRY_BASE_SECONDS", "3600"), ("RETRY_MAX_SECONDS", "7200")]);
    c.state_machine_arn = stack.state_machine_arn.replace(":work", ":missing");
    let outcome = starter(&moto, c).await.process(event, deadline()).await.unwrap();
    assert_eq!(outcome.response.batch_item_failures.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = sqs.receive_message().queue_url(&stack.queue_url).send().await.unwrap();
    assert!(
        again.messages.unwrap_or_default().is_empty(),
        "the message should still be invisible"
    );
}

#[tokio::test]
async fn the_sqs_adapter_changes_visibility_by_queue_arn() {
    use sfn_pacer::close::queue::Queue;
    let (_moto, sdk, stack, sqs) = one_message_on_a_queue_with_a_1_s_visibility().await;
    let receive = || {
        sqs.receive_message()
            .queue_url(&stack.queue_url)
            .wait_time_seconds(0)
            .send()
    };
    let first = receive().await.unwrap().messages.unwrap_or_default();
    let handle = first[0].receipt_handle.clone().unwrap();
    let adapter = SqsQueue::new(&sdk, Duration::from_secs(2));
    adapter.change_visibility(&stack.queue_arn, &handle, 30).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        receive().await.unwrap().messages.unwrap_or_default().is_empty(),
        "hidden for 30 s, not the queue's 1 s"
    );
    adapter.change_visibility(&stack.queue_arn, &handle, 0).await.unwrap();
    assert_eq!(
        receive().await.unwrap().messages.unwrap_or_default().len(),
        1,
        "visible again at once"
    );
    let bad = adapter
        .change_visibility("arn:aws:sqs:us-east-1:123456789012:nope", &handle, 5)
        .await;
    assert!(bad.is_err(), "an unknown queue is an error, not a panic");
}

/// Messages cut off by the deadline are made visible again at once (visibility 0, real receipt
/// handles), not after the queue's 120 s visibility timeout.
#[tokio::test]
async fn messages_deferred_by_the_deadline_are_visible_again_at_once() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let stack = provision(&sdk, "work", 5, 120).await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    for body in bodies(10) {
        sqs.send_message()
            .queue_url(&stack.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    // Received as the mapping receives them (real receipt handles and attributes).
    let work = EsmSqsQueue::new(sqs.clone(), stack.queue_url.clone());
    let received = EsmQueue::receive(&work, 10, Duration::ZERO).await.unwrap();
    assert_eq!(received.len(), 10);
    let event = sqs_event(&received, &stack.queue_arn, REGION);
    // 2/s with a burst of 1, a 2 s deadline and a 1 s margin: about 3 start, 7 are cut off.
    let c = config(
        &stack,
        &[
            ("STARTS_PER_SECOND", "2"),
            ("STARTS_BURST", "1"),
            ("DEADLINE_MARGIN_MS", "1000"),
            ("CALL_TIMEOUT_MS", "500"),
        ],
    );
    let deadline = sfn_pacer::handler::now_epoch_ms() + 2_000;
    let outcome = starter(&moto, c).await.process(event, deadline).await.unwrap();
    let deferred = outcome.response.batch_item_failures.len();
    assert!(deferred >= 5, "{deferred} deferred");
    assert_eq!(outcome.report.deferred as usize, deferred);
    let again = EsmQueue::receive(&work, 10, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), deferred, "the deferred messages are visible again at once");
}

/// The workflow-type check's SDK adapter (`DescribeStateMachine`) against moto: each state
/// machine's type, read through its ARN; an unknown ARN is an error to report, not a type.
#[tokio::test]
async fn the_state_machines_type_is_read_with_describe_state_machine() {
    use aws_sdk_sfn::types::StateMachineType;
    use local_stack::moto::{PASS_DEFINITION, ROLE_ARN};
    use sfn_pacer::config::{check_workflow_type, StateMachineTypes, WorkflowType};
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let client = aws_sdk_sfn::Client::new(&sdk);
    let mut arns = Vec::new();
    for (name, kind) in [
        ("standard", StateMachineType::Standard),
        ("express", StateMachineType::Express),
    ] {
        let created = client
            .create_state_machine()
            .name(name)
            .definition(PASS_DEFINITION)
            .role_arn(ROLE_ARN)
            .r#type(kind)
            .send()
            .await
            .unwrap();
        arns.push(created.state_machine_arn);
    }
    let adapter = SfnStarter::new(&sdk, Duration::from_secs(5));
    assert_eq!(adapter.workflow_type(&arns[0]).await, Ok(WorkflowType::Standard));
    assert_eq!(adapter.workflow_type(&arns[1]).await, Ok(WorkflowType::Express));
    let missing = arns[0].replace(":standard", ":missing");
    let error = adapter.workflow_type(&missing).await.unwrap_err();
    assert!(error.contains("StateMachineDoesNotExist"), "{error}");
    // The init check: Standard told Express is refused, naming both.
    let told = Config::from_lookup(|k| match k {
        "STATE_MACHINE_ARN" => Some(arns[0].clone()),
        "WORKFLOW_TYPE" => Some("express".to_string()),
        _ => None,
    })
    .unwrap();
    let e = check_workflow_type(&told, &adapter).await.unwrap_err();
    assert!(
        e.to_string().contains("WORKFLOW_TYPE") && e.to_string().contains(&arns[0]),
        "{e}"
    );
}
