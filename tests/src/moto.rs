//! A `moto_server` child process on 127.0.0.1, for integration tests and the local demo.
//!
//! Invariants: the server listens on loopback only, on a port picked free at start; it is
//! killed when the [`Moto`] value is dropped, so no test leaves a process behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `moto_server` may take to accept connections after spawn.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server`. Dropping it kills the process.
pub struct Moto {
    child: Child,
    port: u16,
}

/// The `moto_server` executable: `$MOTO_SERVER`, else the project's `.venv` (made by `make venv`).
pub fn moto_server_path() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    workspace_root().join(".venv/bin/moto_server")
}

/// The workspace root (the folder that holds the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Moto {
    /// Spawns `moto_server` on a free loopback port and waits until it answers.
    pub fn start() -> std::io::Result<Moto> {
        let path = moto_server_path();
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} not found: run `make venv` (or set MOTO_SERVER)", path.display()),
            ));
        }
        let port = free_port()?;
        let child = Command::new(&path)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let moto = Moto { child, port };
        moto.wait_ready()?;
        Ok(moto)
    }

    fn wait_ready(&self) -> std::io::Result<()> {
        let started = Instant::now();
        loop {
            if self.http("GET", "/moto-api/").is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "moto_server did not start in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The endpoint to give the SDK as `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Clears every resource (`POST /moto-api/reset`).
    pub fn reset(&self) -> std::io::Result<()> {
        self.http("POST", "/moto-api/reset").map(|_| ())
    }

    /// An SDK config pointed at this server, with dummy credentials and `us-east-1`.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config_for(&self.endpoint()).await
    }

    /// A minimal HTTP/1.1 request on a fresh connection; returns the status line.
    fn http(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.lines().next().unwrap_or_default().to_string();
        if status.contains(" 200 ") {
            Ok(status)
        } else {
            Err(std::io::Error::other(format!("{method} {path}: {status}")))
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SDK config for a local endpoint, with dummy credentials and `us-east-1`.
pub async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "sfn-pacer-tests",
        ))
        .load()
        .await
}

/// The resources of a local sfn-pacer stack.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The work queue's URL.
    pub queue_url: String,
    /// The work queue's ARN.
    pub queue_arn: String,
    /// The dead-letter queue's URL.
    pub dlq_url: String,
    /// The dead-letter queue's ARN.
    pub dlq_arn: String,
    /// The state machine's ARN.
    pub state_machine_arn: String,
}

/// A one-state Pass machine: enough for StartExecution.
pub const PASS_DEFINITION: &str = r#"{"StartAt":"Done","States":{"Done":{"Type":"Pass","End":true}}}"#;

/// Creates the work queue (with a redrive to the DLQ after `max_receive_count` receives and
/// `visibility_timeout_seconds`), the DLQ and a state machine named `name`.
pub async fn provision(
    sdk_config: &aws_config::SdkConfig,
    name: &str,
    max_receive_count: u32,
    visibility_timeout_seconds: u32,
) -> Result<Stack, Box<dyn std::error::Error + Send + Sync>> {
    let sqs = aws_sdk_sqs::Client::new(sdk_config);
    let sfn = aws_sdk_sfn::Client::new(sdk_config);
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}).to_string();
    let queue_url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(A::RedrivePolicy, redrive)
        .attributes(A::VisibilityTimeout, visibility_timeout_seconds.to_string())
        .send()
        .await?
        .queue_url
        .unwrap_or_default();
    let queue_arn = queue_arn(&sqs, &queue_url).await?;
    let state_machine_arn = sfn
        .create_state_machine()
        .name(name)
        .definition(PASS_DEFINITION)
        .role_arn("arn:aws:iam::123456789012:role/sfn-pacer-local")
        .send()
        .await?
        .state_machine_arn;
    Ok(Stack {
        queue_url,
        queue_arn,
        dlq_url,
        dlq_arn,
        state_machine_arn,
    })
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await?;
    attributes
        .attributes
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| format!("no QueueArn for {url}").into())
}

/// Every execution of a state machine: name → input (ListExecutions + DescribeExecution).
pub async fn executions(
    sdk_config: &aws_config::SdkConfig,
    state_machine_arn: &str,
) -> Result<std::collections::BTreeMap<String, String>, Box<dyn std::error::Error + Send + Sync>> {
    let sfn = aws_sdk_sfn::Client::new(sdk_config);
    let mut out = std::collections::BTreeMap::new();
    let mut pages = sfn
        .list_executions()
        .state_machine_arn(state_machine_arn)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for e in page?.executions {
            let described = sfn.describe_execution().execution_arn(&e.execution_arn).send().await?;
            out.insert(e.name, described.input.unwrap_or_default());
        }
    }
    Ok(out)
}
