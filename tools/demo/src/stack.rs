//! The local AWS side: `moto_server` as a child process, the environment that points the
//! SDK at it, and the reads the demo makes (queue depths, executions, the DLQ).

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;
use tokio::process::Command;

use crate::accounting::{DeadLetter, Execution};
use crate::procs::{Handle, Supervisor};

/// The region of every local resource (moto's default account is 123456789012).
pub const REGION: &str = "us-east-1";
/// How long `moto_server` may take to answer after spawn.
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound of one AWS call made by the demo itself.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// DescribeExecution calls in flight while the executions are read.
const DESCRIBE_CONCURRENCY: usize = 16;

/// An error and its sources on one line (SDK errors say little at the top level).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Bounds `future` by [`CALL_TIMEOUT`], naming `what` on a timeout.
pub async fn bounded<T, E: std::error::Error + 'static>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {}", error_chain(&e))),
        Err(_) => Err(format!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs())),
    }
}

/// Opens (appending) a log file.
pub fn log_file(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Sends a child's stdout and stderr to `path`.
pub fn log_to(command: &mut Command, path: &Path) -> Result<(), String> {
    let file = log_file(path)?;
    let err = file.try_clone().map_err(|e| format!("{}: {e}", path.display()))?;
    command.stdin(Stdio::null()).stdout(file).stderr(err);
    Ok(())
}

/// The local endpoints: SQS and Step Functions may be two moto processes (each has its own
/// Python interpreter lock, so two of them serve about twice the calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// SQS (and the default for every other service).
    pub sqs: String,
    /// Step Functions.
    pub sfn: String,
}

impl Endpoints {
    /// One endpoint for both.
    pub fn single(endpoint: &str) -> Endpoints {
        Endpoints {
            sqs: endpoint.to_string(),
            sfn: endpoint.to_string(),
        }
    }
}

/// Points a child's AWS SDK at the local endpoints with dummy credentials, whatever the
/// caller's shell holds (service-specific endpoints and profiles would win over
/// `AWS_ENDPOINT_URL`).
pub fn aws_env(command: &mut Command, endpoints: &Endpoints) {
    for var in [
        "AWS_ENDPOINT_URL_SQS",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ] {
        command.env_remove(var);
    }
    command
        .env("AWS_ENDPOINT_URL", &endpoints.sqs)
        .env("AWS_ENDPOINT_URL_SFN", &endpoints.sfn)
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// Whether something already listens on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Waits until 127.0.0.1:`port` accepts connections, at most `timeout`; fails early if
/// `owner` ends.
pub async fn wait_for_port(port: u16, timeout: Duration, owner: &Handle, hint: &str) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if let Some(exit) = owner.exit() {
            return Err(format!(
                "{} ended ({exit}) before listening on 127.0.0.1:{port}; {hint}",
                owner.name
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not listen on 127.0.0.1:{port} within {} s; {hint}",
                owner.name,
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client for loopback endpoints (no proxy).
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// moto's own server (`moto_server`), but serving one request at a time: moto's SQS is not
/// thread-safe (a DeleteMessageBatch rebuilds the message list, so two at once can bring a
/// deleted message back, to be delivered again after its visibility timeout), and its
/// interpreter lock lets one thread run at a time anyway. Arguments: host, port.
const SINGLE_THREADED_MOTO: &str = r#"
import os, sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)
"#;

/// The interpreter of a script, from its `#!` line (`None` for `#!/usr/bin/env ...`).
fn interpreter_of(script: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read(script).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let interpreter = line.split_whitespace().next()?;
    (!interpreter.ends_with("/env")).then(|| std::path::PathBuf::from(interpreter))
}

/// Starts moto on 127.0.0.1:`port` as child `name` (logging to `log`) and waits until it
/// answers. `single_threaded`: one request at a time (moto's SQS is not thread-safe; its
/// clients must not long-poll), when `moto_server`'s interpreter can be found.
pub async fn start_moto(
    sup: &Supervisor,
    name: &str,
    port: u16,
    log: &Path,
    single_threaded: bool,
) -> Result<Handle, String> {
    let path = crate::tools::moto_server()?;
    if port_in_use(port) {
        return Err(format!(
            "127.0.0.1:{port} is already in use: stop what listens there, or pick another port"
        ));
    }
    let mut command = match interpreter_of(&path).filter(|_| single_threaded) {
        Some(python) => {
            let mut command = Command::new(python);
            command.args(["-c", SINGLE_THREADED_MOTO, "127.0.0.1", &port.to_string()]);
            command
        }
        None => {
            let mut command = Command::new(&path);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            command
        }
    };
    log_to(&mut command, log)?;
    let (moto, _) = sup
        .spawn(name, command)
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let client = http_client()?;
    let url = format!("http://127.0.0.1:{port}/moto-api/");
    let deadline = Instant::now() + MOTO_START_TIMEOUT;
    loop {
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), client.get(&url).send()).await {
            if response.status().is_success() {
                return Ok(moto);
            }
        }
        if let Some(exit) = moto.exit() {
            return Err(format!("{name} ended ({exit}) at start; see {}", log.display()));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} did not answer within {} s; see {}",
                MOTO_START_TIMEOUT.as_secs(),
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts moto single-threaded, or, if that fails (moto's internals moved), as plain
/// `moto_server`.
pub async fn start_moto_preferring_single_threaded(
    sup: &Supervisor,
    name: &str,
    port: u16,
    log: &Path,
) -> Result<Handle, String> {
    match start_moto(sup, name, port, log, true).await {
        Ok(handle) => Ok(handle),
        Err(e) => {
            eprintln!("sfn-pacer-demo: single-threaded moto did not start ({e}); starting moto_server instead");
            start_moto(sup, name, port, log, false).await
        }
    }
}

pub use local_esm::runner::QueueCounts;

/// Reads a queue's counts, bounded in time.
pub async fn queue_counts(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<QueueCounts, String> {
    match tokio::time::timeout(CALL_TIMEOUT, local_esm::sqs::queue_counts(sqs, url)).await {
        Ok(result) => result.map_err(|e| format!("GetQueueAttributes: {e}")),
        Err(_) => Err(format!(
            "GetQueueAttributes: no answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// Every execution of a state machine: (name, ARN), by ListExecutions.
pub async fn list_executions(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    // Bounded: 10,000 pages of 1,000 is more than any demo starts.
    for _ in 0..10_000 {
        let page = bounded(
            "ListExecutions",
            sfn.list_executions()
                .state_machine_arn(state_machine_arn)
                .max_results(1000)
                .set_next_token(token.clone())
                .send(),
        )
        .await?;
        out.extend(page.executions.into_iter().map(|e| (e.name, e.execution_arn)));
        token = page.next_token.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
    Err("ListExecutions: too many pages".to_string())
}

/// The inputs of executions (DescribeExecution, several in flight).
pub async fn describe_executions(
    sfn: &aws_sdk_sfn::Client,
    executions: &[(String, String)],
) -> Result<Vec<Execution>, String> {
    let results: Vec<Result<Execution, String>> = futures::stream::iter(executions.iter())
        .map(|(name, arn)| async move {
            let described = bounded("DescribeExecution", sfn.describe_execution().execution_arn(arn).send()).await?;
            Ok(Execution {
                name: name.clone(),
                input: described.input.unwrap_or_default(),
            })
        })
        .buffer_unordered(DESCRIBE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Reads every message of a queue (the DLQ) without deleting it: each is hidden for
/// `hide_for` so that it is read once. Stops after two empty receives in a row, or `timeout`.
pub async fn read_queue(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    hide_for: Duration,
    timeout: Duration,
) -> Result<Vec<DeadLetter>, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        if Instant::now() >= deadline {
            return Err(format!("reading {url}: not finished within {} s", timeout.as_secs()));
        }
        let received = bounded(
            "ReceiveMessage",
            sqs.receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(i32::try_from(hide_for.as_secs()).unwrap_or(i32::MAX))
                .message_attribute_names("All")
                .send(),
        )
        .await?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in messages {
            let message_id = m.message_id.unwrap_or_default();
            if !seen.insert(message_id.clone()) {
                continue;
            }
            let attributes: BTreeMap<String, String> = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                .collect();
            out.push(DeadLetter {
                message_id,
                body: m.body.unwrap_or_default(),
                attributes,
            });
        }
    }
    Ok(out)
}

/// Creates a FIFO queue (content-based deduplication) and returns its URL.
pub async fn create_fifo_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_seconds: u32,
) -> Result<String, String> {
    let out = bounded(
        "CreateQueue",
        sqs.create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_timeout_seconds.to_string(),
            )
            .send(),
    )
    .await?;
    out.queue_url.ok_or_else(|| format!("CreateQueue {name}: no URL"))
}

/// Creates a one-state Pass state machine and returns its ARN.
pub async fn create_state_machine(sfn: &aws_sdk_sfn::Client, name: &str) -> Result<String, String> {
    let out = bounded(
        "CreateStateMachine",
        sfn.create_state_machine()
            .name(name)
            .definition(sfn_pacer_tests::moto::PASS_DEFINITION)
            .role_arn("arn:aws:iam::123456789012:role/sfn-pacer-local")
            .send(),
    )
    .await?;
    Ok(out.state_machine_arn)
}

/// Creates the work queue, its DLQ (redrive after `max_receive_count`) and a state machine,
/// all named after `name` (see `sfn_pacer_tests::moto::provision`).
pub async fn provision(
    sdk: &aws_config::SdkConfig,
    name: &str,
    max_receive_count: u32,
    visibility_timeout_seconds: u32,
) -> Result<sfn_pacer_tests::moto::Stack, String> {
    match tokio::time::timeout(
        CALL_TIMEOUT * 3,
        sfn_pacer_tests::moto::provision(sdk, name, max_receive_count, visibility_timeout_seconds),
    )
    .await
    {
        Ok(Ok(stack)) => Ok(stack),
        Ok(Err(e)) => Err(format!(
            "creating the queue, DLQ and state machine: {}",
            error_chain(e.as_ref())
        )),
        Err(_) => Err("creating the queue, DLQ and state machine: no answer in time".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "service error")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_chains_name_the_cause() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "service error: connection refused");
    }

    #[test]
    fn counts_add_up() {
        let c = QueueCounts {
            visible: 3,
            not_visible: 2,
            delayed: 1,
        };
        assert_eq!(c.total(), 6);
    }
}
