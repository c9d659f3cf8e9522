//! The producer against moto's SQS: the library's SQS adapter, and the binary's CLI.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use indicatif::ProgressBar;
use local_stack::moto::Moto;
use producer::input::{spawn_reader, Decoration, GenerateConfig, Generator, Source};
use producer::send::{self, SendConfig};
use producer::sqs::SqsSender;

async fn create_queue(client: &Client, name: &str) -> String {
    let mut request = client.create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        request = request.attributes(QueueAttributeName::FifoQueue, "true");
    }
    request.send().await.unwrap().queue_url().unwrap().to_string()
}

async fn depth(client: &Client, url: &str) -> u64 {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    out.attributes().unwrap()[&QueueAttributeName::ApproximateNumberOfMessages]
        .parse()
        .unwrap()
}

/// Receives (and deletes, so that FIFO groups move on) until `expected` messages came back.
async fn drain(client: &Client, url: &str, expected: usize) -> Vec<aws_sdk_sqs::types::Message> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < expected && Instant::now() < deadline {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        got.extend(out.messages().iter().cloned());
    }
    got
}

fn is_json(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_95_messages_including_5_bad() {
    let moto = Moto::start().await.unwrap();
    let client = Client::new(&moto.sdk_config().await);
    let url = create_queue(&client, "producer-it").await;

    let generator = Generator::new(GenerateConfig {
        count: 95,
        size: 200,
        bad_share: 0.05,
        seed: 3,
        id_prefix: "it-".into(),
    })
    .unwrap();
    let decoration = Decoration {
        attribute: Some("key".into()),
        fifo_groups: None,
    };
    let input = spawn_reader(Source::Generate(Box::new(generator)), decoration, 64).unwrap();
    let config = SendConfig {
        in_flight: 4,
        ..SendConfig::default()
    };
    let report = send::run(
        &SqsSender::new(client.clone(), url.clone()),
        input,
        &config,
        &ProgressBar::hidden(),
    )
    .await;

    assert!(report.is_success(), "{report:?}");
    assert_eq!((report.read, report.sent, report.calls), (95, 95, 10));
    assert_eq!(depth(&client, &url).await, 95);

    let messages = drain(&client, &url, 95).await;
    assert_eq!(messages.len(), 95);
    let bad = messages
        .iter()
        .filter(|m| !is_json(m.body().unwrap_or_default()))
        .count();
    assert_eq!(bad, 5);
    for m in &messages {
        let key = m
            .message_attributes()
            .and_then(|a| a.get("key"))
            .and_then(|v| v.string_value());
        let key = key.expect("every message carries the key attribute");
        assert!(key.starts_with("it-"));
        assert!(m.body().unwrap_or_default().len() >= 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_sends_to_a_fifo_queue_and_prints_a_json_summary() {
    let moto = Moto::start().await.unwrap();
    let client = Client::new(&moto.sdk_config().await);
    let url = create_queue(&client, "producer-bin.fifo").await;

    let output = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args([
            "--queue-name",
            "producer-bin.fifo",
            "--generate",
            "30",
            "--group-count",
            "3",
        ])
        .args([
            "--bad-share",
            "0.1",
            "--rate",
            "200",
            "--summary-json",
            "--id-prefix",
            "b-",
        ])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["sent"], 30);
    assert_eq!(summary["failed"], 0);
    assert!(summary["messages_per_second"].as_f64().unwrap() > 0.0);

    let messages = drain(&client, &url, 30).await;
    assert_eq!(messages.len(), 30);
    let mut groups: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let attrs = m.attributes().unwrap();
        *groups
            .entry(attrs[&MessageSystemAttributeName::MessageGroupId].clone())
            .or_default() += 1;
        let dedup = &attrs[&MessageSystemAttributeName::MessageDeduplicationId];
        assert!(dedup.starts_with("b-"));
    }
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert!(groups.values().all(|n| *n == 10));
    assert_eq!(
        messages
            .iter()
            .filter(|m| !is_json(m.body().unwrap_or_default()))
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fails_clearly_on_a_missing_queue() {
    let moto = Moto::start().await.unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(["--queue-name", "does-not-exist", "--generate", "3"])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does-not-exist"), "{stderr}");
}
