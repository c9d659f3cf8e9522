//! Claim-check against moto's S3 and SQS (the real SDK adapters): an input over Step Functions'
//! limit starts with a pointer to its copy in S3, and a dead letter over SQS's limit reaches
//! the DLQ with its reason, its body in S3.

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use local_stack::moto::{executions, provision, Moto, Stack};
use serde_json::{json, Value};
use sfn_pacer::aws::{S3Objects, SfnStarter, SqsQueue};
use sfn_pacer::{Config, Starter};

const BUCKET: &str = "sfn-pacer-claim-check";

fn config(stack: &Stack) -> Config {
    let pairs = [
        ("STATE_MACHINE_ARN", stack.state_machine_arn.as_str()),
        ("DLQ_URL", stack.dlq_url.as_str()),
        ("CLAIM_CHECK_BUCKET", BUCKET),
    ];
    Config::from_lookup(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
}

fn event(stack: &Stack, records: &[(&str, &str)]) -> SqsEvent {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, body)| {
            json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": body,
                   "eventSource": "aws:sqs", "eventSourceARN": stack.queue_arn,
                   "attributes": {"ApproximateReceiveCount": "1"}})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

async fn object(s3: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
    let out = s3.get_object().bucket(BUCKET).key(key).send().await.unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

#[tokio::test]
async fn large_inputs_and_dead_letters_go_through_s3_and_arrive_whole() {
    let moto = Moto::start().await.unwrap();
    let sdk = moto.sdk_config().await;
    let stack = provision(&sdk, "work", 5, 30).await.unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let config = config(&stack);
    let timeout = config.call_timeout;
    let starter = Starter::new(
        config,
        Arc::new(SfnStarter::new(&sdk, timeout)),
        Arc::new(SqsQueue::new(&sdk, timeout)),
    )
    .with_claim_check(Arc::new(S3Objects::new(&sdk, timeout)));

    let big = json!({ "blob": "x".repeat(400_000) }).to_string();
    let mib = "not json ".repeat(1024 * 1024 / 9 + 1);
    let deadline = sfn_pacer::handler::now_epoch_ms() + 60_000;
    let outcome = starter
        .process(event(&stack, &[("big", &big), ("huge", &mib)]), deadline)
        .await
        .unwrap();
    assert!(
        outcome.response.batch_item_failures.is_empty(),
        "{:?}",
        outcome.response
    );

    // The execution's input is the pointer; the object is the input, byte for byte.
    let started = executions(&sdk, &stack.state_machine_arn).await.unwrap();
    let pointer: Value = serde_json::from_str(&started["big"]).unwrap();
    let key = pointer["claimCheck"]["key"].as_str().unwrap();
    assert_eq!(pointer["claimCheck"]["bucket"], BUCKET);
    assert_eq!(pointer["claimCheck"]["size"], big.len());
    assert_eq!(object(&s3, key).await, big.as_bytes());

    // The dead letter: the pointer as its body, the reason and the object's URL as attributes.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let received = sqs
        .receive_message()
        .queue_url(&stack.dlq_url)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1);
    let letter = &received[0];
    let attributes = letter.message_attributes.clone().unwrap_or_default();
    let text = |name: &str| attributes[name].string_value.clone().unwrap_or_default();
    assert_eq!(text("sfn-pacer.error-code"), "BodyNotJson");
    assert_eq!(text("sfn-pacer.message-id"), "huge");
    let pointer: Value = serde_json::from_str(letter.body.as_deref().unwrap()).unwrap();
    let key = pointer["claimCheck"]["key"].as_str().unwrap();
    assert_eq!(text("sfn-pacer.claim-check"), format!("s3://{BUCKET}/{key}"));
    assert_eq!(object(&s3, key).await, mib.as_bytes());
}
