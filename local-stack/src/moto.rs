//! `moto_server` on 127.0.0.1, the SDK configs and child environments that point at it, and
//! the resources and reads a local run needs (queues, DLQ, state machine, executions).
//!
//! Invariants: moto listens on loopback only; it runs as a child of a [`Supervisor`], in its own
//! process group, so it is stopped with its owner and no run leaves a process behind. One
//! launcher serves tests (a free port, output discarded) and the demo (a fixed port, a log file,
//! one request at a time).
//!
//! Why no test-container crate: moto runs here as a plain process from the project's `.venv`;
//! there is no container engine on the machines this project targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;
use tokio::process::Command;

use crate::process::{Handle, Supervisor};
use crate::DisplayErrorContext;

/// The region of every local resource (moto's default account is 123456789012).
pub const REGION: &str = "us-east-1";
/// The role every local state machine names (moto does not check it).
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/sfn-pacer-local";
/// A one-state Pass machine: enough for StartExecution.
pub const PASS_DEFINITION: &str = r#"{"StartAt":"Done","States":{"Done":{"Type":"Pass","End":true}}}"#;
/// How long `moto_server` may take to answer after spawn.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound of one AWS call made by the local stack itself.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// DescribeExecution calls in flight while executions are read.
const DESCRIBE_CONCURRENCY: usize = 16;

/// moto's own server with its DynamoDB transactions made O(items touched) instead of O(table)
/// (see the script's header), run by `moto_server`'s interpreter. Arguments: host, port, and
/// `threaded` or `single` (one request at a time: moto's SQS is not thread-safe, a
/// DeleteMessageBatch rebuilds the message list, so two at once can bring a deleted message back,
/// and its interpreter lock lets one thread run at a time anyway).
const MOTO_LAUNCHER: &str = include_str!("moto_launcher.py");

/// How to start moto.
#[derive(Clone, Debug, Default)]
pub struct MotoOptions {
    /// The child's name in messages ("moto_server-sqs", ...); empty: "moto_server".
    pub name: String,
    /// The port on 127.0.0.1; `None`: a free one.
    pub port: Option<u16>,
    /// Where its output goes; `None`: discarded.
    pub log: Option<PathBuf>,
    /// One request at a time (moto's SQS is not thread-safe; its clients must not long-poll).
    /// Either way moto runs through [`MOTO_LAUNCHER`] when `moto_server`'s interpreter can be
    /// found; else as plain `moto_server` (threaded, with moto's table-copying transactions).
    pub single_threaded: bool,
}

/// A running `moto_server`. It stops with its [`Supervisor`]; [`Moto::start`] owns one, so
/// dropping that `Moto` stops it.
pub struct Moto {
    /// The child.
    pub handle: Handle,
    port: u16,
    _owned: Option<Arc<Supervisor>>,
}

impl Moto {
    /// moto on a free loopback port, output discarded, stopped when dropped (tests).
    pub async fn start() -> Result<Moto, String> {
        Moto::start_with(&MotoOptions::default()).await
    }

    /// moto with `options`, stopped when dropped (tests that need, say, one request at a time).
    pub async fn start_with(options: &MotoOptions) -> Result<Moto, String> {
        let supervisor = Supervisor::new();
        let mut moto = Moto::start_in(&supervisor, options).await?;
        moto._owned = Some(supervisor);
        Ok(moto)
    }

    /// moto serving one request at a time (its DynamoDB transactions are not thread-safe: two at
    /// once can fail with "dictionary changed size during iteration"), with the coordination
    /// table `table` created, and an SDK config pointed at it: what the tests of the table's
    /// stores start from. Stopped when dropped.
    pub async fn with_coordination_table(table: &str) -> Result<(Moto, aws_config::SdkConfig), String> {
        let options = MotoOptions {
            single_threaded: true,
            ..MotoOptions::default()
        };
        let moto = Moto::start_with(&options).await?;
        let aws = moto.sdk_config().await;
        create_coordination_table(&aws, table).await?;
        Ok((moto, aws))
    }

    /// moto as a child of `sup`, waiting until it answers.
    pub async fn start_in(sup: &Supervisor, options: &MotoOptions) -> Result<Moto, String> {
        let path = crate::paths::moto_server()?;
        let name = if options.name.is_empty() {
            "moto_server"
        } else {
            &options.name
        };
        let port = match options.port {
            Some(port) if port_in_use(port) => {
                return Err(format!(
                    "127.0.0.1:{port} is already in use: stop what listens there, or pick another port"
                ))
            }
            Some(port) => port,
            None => free_port().map_err(|e| format!("no free port: {e}"))?,
        };
        let mut command = moto_command(&path, port, options.single_threaded);
        match &options.log {
            Some(log) => log_to(&mut command, log)?,
            None => {
                command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let (handle, _) = sup
            .spawn(name, command)
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let moto = Moto {
            handle,
            port,
            _owned: None,
        };
        moto.wait_ready(options.log.as_deref()).await?;
        Ok(moto)
    }

    /// Starts moto single-threaded, or, if that fails (moto's internals moved), as plain
    /// `moto_server`.
    pub async fn start_preferring_single_threaded(sup: &Supervisor, options: &MotoOptions) -> Result<Moto, String> {
        let single = MotoOptions {
            single_threaded: true,
            ..options.clone()
        };
        match Moto::start_in(sup, &single).await {
            Ok(moto) => Ok(moto),
            Err(e) => {
                tracing::warn!("single-threaded moto did not start ({e}); starting moto_server instead");
                Moto::start_in(sup, options).await
            }
        }
    }

    async fn wait_ready(&self, log: Option<&Path>) -> Result<(), String> {
        let see = log.map(|l| format!("; see {}", l.display())).unwrap_or_default();
        let client = http_client()?;
        let url = format!("{}/moto-api/", self.endpoint());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), client.get(&url).send()).await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(exit) = self.handle.exit() {
                return Err(format!("{} ended ({exit}) at start{see}", self.handle.name));
            }
            if Instant::now() >= deadline {
                let secs = START_TIMEOUT.as_secs();
                return Err(format!("{} did not answer within {secs} s{see}", self.handle.name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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

    /// An SDK config pointed at this server, with dummy credentials and [`REGION`].
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config_for(&self.endpoint()).await
    }
}

fn moto_command(moto_server: &Path, port: u16, single_threaded: bool) -> Command {
    match interpreter_of(moto_server) {
        Some(python) => {
            let mode = if single_threaded { "single" } else { "threaded" };
            let mut command = Command::new(python);
            command.args(["-c", MOTO_LAUNCHER, "127.0.0.1", &port.to_string(), mode]);
            command
        }
        None => {
            let mut command = Command::new(moto_server);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            command
        }
    }
}

/// The interpreter of a script, from its `#!` line (`None` for `#!/usr/bin/env ...`).
fn interpreter_of(script: &Path) -> Option<PathBuf> {
    let text = std::fs::read(script).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let interpreter = line.split_whitespace().next()?;
    (!interpreter.ends_with("/env")).then(|| PathBuf::from(interpreter))
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
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
        let name = &owner.name;
        if let Some(exit) = owner.exit() {
            return Err(format!(
                "{name} ended ({exit}) before listening on 127.0.0.1:{port}; {hint}"
            ));
        }
        if Instant::now() >= deadline {
            let secs = timeout.as_secs();
            return Err(format!(
                "{name} did not listen on 127.0.0.1:{port} within {secs} s; {hint}"
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

/// Opens (appending) a log file.
pub fn log_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
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

/// An SDK config for a local endpoint, with dummy credentials and [`REGION`].
pub async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    sfn_pacer::aws::sdk_config_loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "sfn-pacer-local-stack",
        ))
        .load()
        .await
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
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_S3",
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

/// Bounds `future` by [`CALL_TIMEOUT`], naming `what` in the error.
pub async fn bounded<T, E: std::error::Error + 'static>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {}", DisplayErrorContext(&e))),
        Err(_) => Err(format!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs())),
    }
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

/// Creates the work queue (with a redrive to the DLQ after `max_receive_count` receives and
/// `visibility_timeout_seconds`), the DLQ and a state machine named `name`. Each call is
/// bounded by [`CALL_TIMEOUT`].
pub async fn provision(
    sdk_config: &aws_config::SdkConfig,
    name: &str,
    max_receive_count: u32,
    visibility_timeout_seconds: u32,
) -> Result<Stack, String> {
    let sqs = aws_sdk_sqs::Client::new(sdk_config);
    let sfn = aws_sdk_sfn::Client::new(sdk_config);
    let dlq = bounded(
        "CreateQueue",
        sqs.create_queue().queue_name(format!("{name}-dlq")).send(),
    )
    .await?;
    let dlq_url = dlq.queue_url.unwrap_or_default();
    let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count});
    let create = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_seconds.to_string(),
        );
    let queue_url = bounded("CreateQueue", create.send())
        .await?
        .queue_url
        .unwrap_or_default();
    let queue_arn = queue_arn(&sqs, &queue_url).await?;
    let state_machine_arn = create_state_machine(&sfn, name).await?;
    Ok(Stack {
        queue_url,
        queue_arn,
        dlq_url,
        dlq_arn,
        state_machine_arn,
    })
}

/// A queue's ARN.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, String> {
    let request = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn);
    let attributes = bounded("GetQueueAttributes", request.send()).await?;
    attributes
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| format!("no QueueArn for {url}"))
}

/// Creates a one-state Pass state machine and returns its ARN.
pub async fn create_state_machine(sfn: &aws_sdk_sfn::Client, name: &str) -> Result<String, String> {
    let request = sfn
        .create_state_machine()
        .name(name)
        .definition(PASS_DEFINITION)
        .role_arn(ROLE_ARN);
    Ok(bounded("CreateStateMachine", request.send()).await?.state_machine_arn)
}

/// Creates the coordination table (string partition key `pk`, on demand), as the template does,
/// with the cap's sparse index of held slots (`due-index`: `due` S, `check_at` N, all attributes),
/// and returns its name.
pub async fn create_coordination_table(sdk_config: &aws_config::SdkConfig, name: &str) -> Result<String, String> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
        ScalarAttributeType,
    };
    use sfn_pacer::start::running::DUE_INDEX;
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk_config);
    let attribute = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(|e| e.to_string())
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| e.to_string())
    };
    let due = GlobalSecondaryIndex::builder()
        .index_name(DUE_INDEX)
        .key_schema(key("due", KeyType::Hash)?)
        .key_schema(key("check_at", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(|e| e.to_string())?;
    let request = dynamodb
        .create_table()
        .table_name(name)
        .attribute_definitions(attribute("pk", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("due", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("check_at", ScalarAttributeType::N)?)
        .key_schema(key("pk", KeyType::Hash)?)
        .global_secondary_indexes(due)
        .billing_mode(BillingMode::PayPerRequest);
    bounded("CreateTable", request.send()).await?;
    Ok(name.to_string())
}

/// An execution found in Step Functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// Its name.
    pub name: String,
    /// Its input.
    pub input: String,
}

/// An execution as ListExecutions lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// Its ARN.
    pub arn: String,
    /// When Step Functions started it, seconds since the Unix epoch.
    pub started_at: f64,
    /// When it stopped, seconds since the Unix epoch (`None`: it runs).
    pub stopped_at: Option<f64>,
}

/// Every execution of a state machine, by ListExecutions.
pub async fn list_executions(sfn: &aws_sdk_sfn::Client, state_machine_arn: &str) -> Result<Vec<Listed>, String> {
    list_executions_in(sfn, state_machine_arn, None).await
}

/// The executions of a state machine in `status` (`None`: all), by ListExecutions.
pub async fn list_executions_in(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    status: Option<aws_sdk_sfn::types::ExecutionStatus>,
) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    // Bounded: 10,000 pages of 1,000 is more than any local run starts.
    for _ in 0..10_000 {
        let request = sfn
            .list_executions()
            .state_machine_arn(state_machine_arn)
            .set_status_filter(status.clone())
            .max_results(1000)
            .set_next_token(token.take());
        let page = bounded("ListExecutions", request.send()).await?;
        out.extend(page.executions.into_iter().map(|e| Listed {
            started_at: e.start_date.as_secs_f64(),
            stopped_at: e.stop_date.map(|d| d.as_secs_f64()),
            name: e.name,
            arn: e.execution_arn,
        }));
        token = page.next_token.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
    Err("ListExecutions: too many pages".to_string())
}

/// The inputs of executions listed by [`list_executions`] (DescribeExecution, several in flight).
pub async fn describe_executions(sfn: &aws_sdk_sfn::Client, executions: &[Listed]) -> Result<Vec<Execution>, String> {
    let results: Vec<Result<Execution, String>> = futures::stream::iter(executions.iter())
        .map(|listed| async move {
            let request = sfn.describe_execution().execution_arn(&listed.arn);
            let described = bounded("DescribeExecution", request.send()).await?;
            Ok(Execution {
                name: listed.name.clone(),
                input: described.input.unwrap_or_default(),
            })
        })
        .buffer_unordered(DESCRIBE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Every execution of a state machine: name → input.
pub async fn executions(
    sdk_config: &aws_config::SdkConfig,
    state_machine_arn: &str,
) -> Result<BTreeMap<String, String>, String> {
    let sfn = aws_sdk_sfn::Client::new(sdk_config);
    let listed = list_executions(&sfn, state_machine_arn).await?;
    let described = describe_executions(&sfn, &listed).await?;
    Ok(described.into_iter().map(|e| (e.name, e.input)).collect())
}
