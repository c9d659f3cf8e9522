//! local-esm against moto's SQS and a fake function endpoint of the test's own on 127.0.0.1.
//!
//! The fake answers `POST /2015-03-31/functions/<name>/invocations`; the function name picks
//! its behaviour: `partial` fails the records whose body contains "bad", `error` answers like
//! `cargo lambda watch` on a handler error (HTTP 500, error document), `invalid` lists an
//! unknown itemIdentifier, `slow` answers after 10 s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use local_stack::esm::gather::GatherConfig;
use local_stack::esm::invoke::HttpInvoker;
use local_stack::esm::runner::{self, EsmConfig, StopReason};
use local_stack::esm::sqs::SqsQueue;
use local_stack::moto::Moto;
use serde_json::json;

/// One record as the fake function saw it.
#[derive(Clone, Debug)]
struct Seen {
    function: String,
    message_id: String,
    body: String,
    receive_count: u32,
    record: serde_json::Value,
}

#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Seen>>,
}

async fn invoke(State(fake): State<Arc<Fake>>, Path(function): Path<String>, body: Bytes) -> Response {
    // The event must parse as the Lambda SQS event type.
    let event: SqsEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let raw: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut failures = Vec::new();
    {
        let mut seen = fake.seen.lock().unwrap();
        for (i, record) in event.records.iter().enumerate() {
            let message_id = record.message_id.clone().unwrap_or_default();
            let body = record.body.clone().unwrap_or_default();
            let receive_count = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if body.contains("bad") {
                failures.push(json!({ "itemIdentifier": message_id }));
            }
            seen.push(Seen {
                function: function.clone(),
                message_id,
                body,
                receive_count,
                record: raw["Records"][i].clone(),
            });
        }
    }
    match function.as_str() {
        "partial" => Json(json!({ "batchItemFailures": failures })).into_response(),
        "error" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "errorType": "Boom", "errorMessage": "handler failed" })),
        )
            .into_response(),
        "invalid" => Json(json!({ "batchItemFailures": [{ "itemIdentifier": "no-such-message" }] })).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Json(json!({})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, Json(json!({ "title": "Missing function" }))).into_response(),
    }
}

/// Starts the fake function on 127.0.0.1 (a task of the test's runtime); returns its port.
async fn start_fake() -> (Arc<Fake>, u16) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/2015-03-31/functions/{function}/invocations", post(invoke))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (fake, port)
}

async fn queue_arn(client: &Client, url: &str) -> String {
    local_stack::moto::queue_arn(client, url).await.unwrap()
}

/// A main queue (visibility timeout 1 s) with, when `max_receive_count` is given, a DLQ.
async fn create_queues(client: &Client, name: &str, max_receive_count: Option<u32>) -> (String, Option<String>) {
    let mut request = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, "1");
    let mut dlq_url = None;
    if let Some(count) = max_receive_count {
        let dlq = client
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .unwrap();
        let url = dlq.queue_url().unwrap().to_string();
        let policy =
            json!({ "deadLetterTargetArn": queue_arn(client, &url).await, "maxReceiveCount": count.to_string() });
        request = request.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        dlq_url = Some(url);
    }
    let url = request.send().await.unwrap().queue_url().unwrap().to_string();
    (url, dlq_url)
}

async fn send(client: &Client, url: &str, bodies: &[String]) {
    for (i, chunk) in bodies.chunks(10).enumerate() {
        let mut request = client.send_message_batch().queue_url(url);
        for (j, body) in chunk.iter().enumerate() {
            let key = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(format!("k{i}-{j}"))
                .build()
                .unwrap();
            request = request.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(j.to_string())
                    .message_body(body)
                    .message_attributes("key", key)
                    .build()
                    .unwrap(),
            );
        }
        let out = request.send().await.unwrap();
        assert!(out.failed().is_empty());
    }
}

async fn total(client: &Client, url: &str) -> u64 {
    local_stack::esm::sqs::queue_counts(client, url).await.unwrap().total()
}

fn env_for(command: &mut tokio::process::Command, moto: &Moto) {
    command
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
}

fn summary_of(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr: {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_are_deleted_failures_retried_then_redriven_to_the_dlq() {
    let moto = Moto::start().await.unwrap();
    let client = Client::new(&moto.sdk_config().await);
    let (fake, port) = start_fake().await;
    let (url, dlq_url) = create_queues(&client, "esm-main", Some(2)).await;
    let dlq_url = dlq_url.unwrap();
    let bodies: Vec<String> = (0..24)
        .map(|i| {
            if i % 6 == 0 {
                format!("bad message {i}")
            } else {
                json!({ "id": i.to_string() }).to_string()
            }
        })
        .collect();
    send(&client, &url, &bodies).await;

    let info = SqsQueue::resolve(&client, Some(&url), None).await.unwrap();
    let config = EsmConfig {
        gather: GatherConfig::new(10, Duration::ZERO, 1),
        max_concurrency: 2,
        function_timeout: Duration::from_secs(5),
        queue_arn: info.arn.clone(),
        region: "us-east-1".into(),
        until_empty: true,
        empty_polls: 2,
        poll_interval: Duration::from_millis(500),
        empty_receive_pause: runner::SHORT_POLL_PAUSE,
        max_run: Some(Duration::from_secs(40)),
        progress_interval: None,
    };
    let invoker = HttpInvoker::new(&format!("http://127.0.0.1:{port}"), "partial").unwrap();
    let summary = runner::run(
        Arc::new(SqsQueue::new(client.clone(), url.clone())),
        Arc::new(invoker),
        config,
        std::future::pending(),
    )
    .await;

    assert_eq!(summary.stop_reason, StopReason::UntilEmpty, "{summary:?}");
    assert_eq!(summary.deleted, 20, "{summary:?}");
    assert_eq!(
        summary.reported_failures, 8,
        "4 bad messages, each failed twice: {summary:?}"
    );
    assert_eq!(
        summary.function_errors + summary.invalid_responses + summary.timeouts + summary.delete_errors,
        0
    );

    let seen = fake.seen.lock().unwrap().clone();
    let mut counts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for s in &seen {
        counts.entry(s.body.clone()).or_default().push(s.receive_count);
    }
    for (body, receive_counts) in &counts {
        if body.contains("bad") {
            assert_eq!(receive_counts, &vec![1, 2], "{body}");
        } else {
            assert_eq!(receive_counts, &vec![1], "{body}");
        }
    }
    assert_eq!(counts.len(), 24);
    let record = &seen[0].record;
    assert_eq!(record["eventSource"], "aws:sqs");
    assert_eq!(record["eventSourceARN"], info.arn.as_str());
    assert_eq!(record["awsRegion"], "us-east-1");
    assert_eq!(record["md5OfBody"].as_str().map(str::len), Some(32));
    assert!(record["receiptHandle"].as_str().is_some_and(|r| !r.is_empty()));
    for key in [
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    ] {
        assert!(record["attributes"][key].is_string(), "{key}: {record}");
    }
    assert_eq!(record["messageAttributes"]["key"]["dataType"], "String");
    assert!(record["messageAttributes"]["key"]["stringValue"].is_string());
    assert!(seen.iter().all(|s| s.function == "partial" && !s.message_id.is_empty()));

    assert_eq!(total(&client, &url).await, 0);
    let dlq = client
        .receive_message()
        .queue_url(&dlq_url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap();
    let mut dlq_bodies: Vec<&str> = dlq.messages().iter().filter_map(|m| m.body()).collect();
    dlq_bodies.sort();
    assert_eq!(
        dlq_bodies,
        vec!["bad message 0", "bad message 12", "bad message 18", "bad message 6"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_leaves_the_batch_on_function_errors_and_stops_on_sigterm() {
    let moto = Moto::start().await.unwrap();
    let client = Client::new(&moto.sdk_config().await);
    let (fake, port) = start_fake().await;
    let (url, _) = create_queues(&client, "esm-errors", None).await;
    let bodies: Vec<String> = (0..5).map(|i| format!("{{\"id\":\"{i}\"}}")).collect();
    send(&client, &url, &bodies).await;

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_local-esm"));
    command.args([
        "--queue-name",
        "esm-errors",
        "--function-name",
        "error",
        "--invoke-port",
        &port.to_string(),
    ]);
    command.args([
        "--wait-seconds",
        "1",
        "--function-timeout",
        "5",
        "--summary-json",
        "--max-seconds",
        "30",
    ]);
    env_for(&mut command, &moto);
    let child = command.spawn().unwrap();
    let pid = child.id().unwrap();
    // Let it fail a few times (the visibility timeout is 1 s), then stop it with SIGTERM.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let summary = summary_of(&output);

    assert_eq!(summary["stop_reason"], "signal", "{summary}");
    assert_eq!(summary["deleted"], 0, "{summary}");
    assert!(summary["function_errors"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(summary["function_errors"], summary["batches"], "{summary}");
    assert_eq!(total(&client, &url).await, 5, "nothing deleted");
    let max_count = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.receive_count)
        .max()
        .unwrap_or(0);
    assert!(max_count >= 2, "messages came back after the function error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fails_whole_batches_on_invalid_responses_and_timeouts() {
    let moto = Moto::start().await.unwrap();
    let client = Client::new(&moto.sdk_config().await);
    let (_fake, port) = start_fake().await;
    let (url, _) = create_queues(&client, "esm-invalid", None).await;
    send(
        &client,
        &url,
        &["{\"id\":\"a\"}".to_string(), "{\"id\":\"b\"}".to_string()],
    )
    .await;

    for (function, counter) in [("invalid", "invalid_responses"), ("slow", "timeouts")] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_local-esm"));
        command.args([
            "--queue-url",
            &url,
            "--function-name",
            function,
            "--invoke-port",
            &port.to_string(),
        ]);
        command.args([
            "--wait-seconds",
            "1",
            "--function-timeout",
            "1",
            "--max-seconds",
            "3",
            "--summary-json",
        ]);
        command.args(["--max-concurrency", "1"]);
        env_for(&mut command, &moto);
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .unwrap()
            .unwrap();
        let summary = summary_of(&output);
        assert_eq!(summary["stop_reason"], "max-seconds", "{summary}");
        assert_eq!(summary["deleted"], 0, "{function}: {summary}");
        assert!(summary[counter].as_u64().unwrap() >= 1, "{function}: {summary}");
        assert_eq!(total(&client, &url).await, 2, "{function}: nothing deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_a_large_batch_without_a_window() {
    let moto = Moto::start().await.unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_local-esm"));
    command.args(["--queue-name", "whatever", "--batch-size", "100"]);
    env_for(&mut command, &moto);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("batching-window"));
}
