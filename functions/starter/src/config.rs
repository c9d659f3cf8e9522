//! Configuration, read once at init from environment variables.
//!
//! This module is the one place that knows the variable names, their defaults and their
//! units. The README's configuration table and the template's environment list the same
//! names ([`VARIABLES`]); a test checks that they agree.

use std::time::Duration;

/// Every environment variable the function reads (besides the Lambda runtime's own).
pub const VARIABLES: &[&str] = &[
    "STATE_MACHINE_ARN",
    "STARTS_PER_SECOND",
    "STARTS_BURST",
    "MAX_CONCURRENCY",
    "MAX_IN_FLIGHT",
    "EXECUTION_NAME",
    "INPUT",
    "WORKFLOW_TYPE",
    "DEADLINE_MARGIN_MS",
    "LOCAL_DEADLINE_MS",
    "CALL_TIMEOUT_MS",
    "MAX_ATTEMPTS",
    "DLQ_URL",
    "RETRY_BASE_SECONDS",
    "RETRY_MAX_SECONDS",
    "LOG_BODIES",
    "METRICS_NAMESPACE",
    "COORDINATION_TABLE",
    "QUOTA_KEY",
    "CLAIM_CHECK_BUCKET",
    "MESSAGES_PER_EXECUTION",
    "QUEUE_RETENTION_SECONDS",
    "DLQ_RETENTION_SECONDS",
    "MAX_RUNNING_EXECUTIONS",
    "RUNNING_KEY",
    "RUNNING_EXPIRY_SECONDS",
    "MAX_RECEIVE_COUNT",
];

/// The most messages one execution carries (`MESSAGES_PER_EXECUTION`): a DynamoDB
/// TransactWriteItems takes at most 100 actions, one claim per message plus the execution's record.
pub const MAX_MESSAGES_PER_EXECUTION: usize = 99;

/// How much of the quota's refill the pacer keeps out of its burst: 100 milliseconds' worth.
pub const BURST_RESERVE: Duration = Duration::from_millis(100);

/// The longest visibility timeout SQS accepts for ChangeMessageVisibility: 12 hours, in seconds.
pub const MAX_VISIBILITY_SECONDS: u64 = 43_200;

/// Where the execution name comes from (`EXECUTION_NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameSource {
    /// The SQS message id (default): one execution per message, idempotent across redeliveries.
    MessageId,
    /// A message attribute's value, by attribute name.
    Attribute(String),
    /// A field of the JSON body, by JSON pointer (RFC 6901), e.g. `/order/id`.
    BodyPointer(String),
    /// No name: AWS picks one. No idempotency.
    None,
}

/// What is passed as the execution input (`INPUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// The body, which must be JSON, passed as is (default).
    Body,
    /// `{"messageId", "body", "attributes", "messageAttributes", "sentTimestamp"}`.
    Envelope,
}

/// The state machine's type (`WORKFLOW_TYPE`): decides the delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowType {
    /// Standard: a name is unique for 90 days, so redeliveries are exactly-once by name.
    Standard,
    /// Express: names are not idempotent; a redelivered message may start again (at-least-once).
    Express,
}

/// The validated configuration. Invariants (checked by [`Config::from_lookup`]):
/// rates and counts are positive; `call_timeout < deadline_margin`;
/// `retry_base <= retry_max < 12 h`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `STATE_MACHINE_ARN` (required).
    pub state_machine_arn: String,
    /// `STARTS_PER_SECOND`: the global StartExecution budget, starts per second, for all instances.
    pub starts_per_second: f64,
    /// `STARTS_BURST`: the global burst, in starts, for all instances.
    pub starts_burst: f64,
    /// `MAX_CONCURRENCY`: how many instances share the budget (the ESM's MaximumConcurrency).
    pub max_concurrency: u32,
    /// `MAX_IN_FLIGHT`: StartExecution calls in flight at once in one instance.
    pub max_in_flight: usize,
    /// `EXECUTION_NAME`.
    pub name_source: NameSource,
    /// `INPUT`.
    pub input_mode: InputMode,
    /// `WORKFLOW_TYPE`.
    pub workflow_type: WorkflowType,
    /// `DEADLINE_MARGIN_MS`: no new call starts when less than this remains before the deadline.
    pub deadline_margin: Duration,
    /// `LOCAL_DEADLINE_MS`: the time budget used when the invocation's deadline is unknown.
    pub local_deadline: Duration,
    /// `CALL_TIMEOUT_MS`: the timeout of one StartExecution attempt.
    pub call_timeout: Duration,
    /// `MAX_ATTEMPTS`: StartExecution attempts per message within one invocation.
    pub max_attempts: u32,
    /// `DLQ_URL`: where permanent failures are sent; `None` leaves them to the queue's redrive.
    pub dlq_url: Option<String>,
    /// `RETRY_BASE_SECONDS`: the first visibility backoff step for a retryable failure.
    pub retry_base: Duration,
    /// `RETRY_MAX_SECONDS`: the cap of the visibility backoff, and of a deferral's delay.
    pub retry_max: Duration,
    /// `LOG_BODIES`: whether message bodies may appear in logs.
    pub log_bodies: bool,
    /// `METRICS_NAMESPACE`: the CloudWatch namespace of the embedded metrics.
    pub metrics_namespace: String,
    /// `COORDINATION_TABLE`: the DynamoDB table of the shared budget; `None`: static split.
    pub coordination_table: Option<String>,
    /// `QUOTA_KEY`: the budget's key in that table; every instance naming it shares it.
    pub quota_key: String,
    /// `CLAIM_CHECK_BUCKET`: the S3 bucket for inputs too large for StartExecution and dead
    /// letters too large for SQS; `None`: such inputs are rejected, such letters reported.
    pub claim_check_bucket: Option<String>,
    /// `MESSAGES_PER_EXECUTION`: messages grouped into one execution (`{"items": [...]}`), 1 to
    /// [`MAX_MESSAGES_PER_EXECUTION`]; 1 starts one execution per message. Above 1 on Standard,
    /// `coordination_table` is set (the per-message claims live there).
    pub messages_per_execution: usize,
    /// `QUEUE_RETENTION_SECONDS`: the work queue's MessageRetentionPeriod (60 s to 14 days;
    /// default 14 days, SQS's most). With `dlq_retention`, it bounds how long a message can
    /// come back, so how long its claim is kept ([`Config::claim_ttl`]).
    pub queue_retention: Duration,
    /// `DLQ_RETENTION_SECONDS`: the dead-letter queue's MessageRetentionPeriod (60 s to 14
    /// days; default 14 days).
    pub dlq_retention: Duration,
    /// The cap on running executions (`MAX_RUNNING_EXECUTIONS` and its settings); `None`: no
    /// cap. When set, `coordination_table` is set (the cap lives there).
    pub running: Option<RunningCap>,
    /// `MAX_RECEIVE_COUNT`: the source queue's `maxReceiveCount`. A message waiting at the cap is
    /// re-sent before its last receive, so that waiting alone never moves it to the DLQ.
    pub max_receive_count: u32,
}

/// The most `MAX_RUNNING_EXECUTIONS` accepts.
pub const MAX_RUNNING_EXECUTIONS: u32 = 1_000_000;
/// The longest Express execution, and so the longest `RUNNING_EXPIRY_SECONDS` on Express: 5 minutes.
pub const EXPRESS_MAX_DURATION: Duration = Duration::from_secs(300);
/// The longest `RUNNING_EXPIRY_SECONDS` on Standard: a day (the first check of a slot; later checks
/// come at doubling intervals, also at most a day apart).
pub const MAX_RUNNING_EXPIRY: Duration = Duration::from_secs(86_400);

/// The cap on running executions (see [`crate::start::running`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningCap {
    /// `MAX_RUNNING_EXECUTIONS`: the cap, 1 to [`MAX_RUNNING_EXECUTIONS`]. It seeds the cap's item
    /// when the item does not exist yet; after that the item is the source of truth.
    pub max_running: u32,
    /// `RUNNING_KEY`: the cap's key in the coordination table; every deployment naming the same
    /// table and key shares one cap. Default: the state machine's name.
    pub key: String,
    /// `RUNNING_EXPIRY_SECONDS`: when a slot is first checked (Standard: DescribeExecution; Express:
    /// released, as the execution cannot run longer). Default 300 s, at most 300 s on Express.
    pub expiry: Duration,
}

/// SQS's bounds of a queue's MessageRetentionPeriod, in seconds: 60 s to 14 days.
pub const RETENTION_SECONDS: std::ops::RangeInclusive<u64> = 60..=1_209_600;

/// Added to a claim's lifetime for the clocks of SQS and Lambda, which may disagree.
pub const CLAIM_CLOCK_MARGIN: Duration = Duration::from_secs(3600);

/// A configuration error; its message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn err(variable: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        reason: reason.into(),
    }
}

/// Reads variables through a lookup function, so tests need not touch the process environment.
struct Reader<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The trimmed value, `None` when unset or blank.
    fn get(&self, variable: &'static str) -> Option<String> {
        (self.lookup)(variable)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, variable: &'static str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.get(variable) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| err(variable, format!("expected {what}, got {raw:?}"))),
        }
    }

    fn positive_f64(&self, variable: &'static str, default: f64) -> Result<f64, ConfigError> {
        let value: f64 = self.parse(variable, default, "a positive number")?;
        if value.is_finite() && value > 0.0 {
            Ok(value)
        } else {
            Err(err(variable, format!("expected a positive number, got {value}")))
        }
    }

    fn positive_u64(&self, variable: &'static str, default: u64) -> Result<u64, ConfigError> {
        let value: u64 = self.parse(variable, default, "a positive whole number")?;
        if value == 0 {
            return Err(err(variable, "must be at least 1"));
        }
        Ok(value)
    }

    fn bool(&self, variable: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(variable).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["true", "1", "yes"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(err(variable, format!("expected true or false, got {v:?}"))),
        }
    }
}

impl Config {
    /// Reads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads and validates the configuration through `lookup` (variable name → value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let r = Reader { lookup };
        let state_machine_arn = r
            .get("STATE_MACHINE_ARN")
            .ok_or_else(|| err("STATE_MACHINE_ARN", "is required (the state machine to start)"))?;
        check_state_machine_arn(&state_machine_arn)?;
        let deadline_margin = Duration::from_millis(r.positive_u64("DEADLINE_MARGIN_MS", 3_000)?);
        let call_timeout = Duration::from_millis(r.positive_u64("CALL_TIMEOUT_MS", 2_000)?);
        check_call_timeout(call_timeout)?;
        if call_timeout >= deadline_margin {
            return Err(err(
                "CALL_TIMEOUT_MS",
                format!(
                    "must be below DEADLINE_MARGIN_MS ({} ms) so a call started before the margin ends before the deadline",
                    deadline_margin.as_millis()
                ),
            ));
        }
        let retry_base = r.positive_u64("RETRY_BASE_SECONDS", 10)?;
        let retry_max = r.positive_u64("RETRY_MAX_SECONDS", 900)?;
        if retry_max >= MAX_VISIBILITY_SECONDS {
            return Err(err(
                "RETRY_MAX_SECONDS",
                format!("must be below {MAX_VISIBILITY_SECONDS} (12 hours)"),
            ));
        }
        if retry_base > retry_max {
            return Err(err(
                "RETRY_BASE_SECONDS",
                format!("must not exceed RETRY_MAX_SECONDS ({retry_max})"),
            ));
        }
        let max_concurrency = r.positive_u64("MAX_CONCURRENCY", 1)?;
        let max_concurrency = u32::try_from(max_concurrency).map_err(|_| err("MAX_CONCURRENCY", "is too large"))?;
        let max_attempts =
            u32::try_from(r.positive_u64("MAX_ATTEMPTS", 5)?).map_err(|_| err("MAX_ATTEMPTS", "is too large"))?;
        let max_in_flight =
            usize::try_from(r.positive_u64("MAX_IN_FLIGHT", 32)?).map_err(|_| err("MAX_IN_FLIGHT", "is too large"))?;
        let metrics_namespace = r.get("METRICS_NAMESPACE").unwrap_or_else(|| "SfnPacer".to_string());
        check_metrics_namespace(&metrics_namespace)?;
        let workflow_type = parse_workflow_type(r.get("WORKFLOW_TYPE"))?;
        let coordination_table = r.get("COORDINATION_TABLE");
        if let Some(table) = &coordination_table {
            let valid = (3..=255).contains(&table.len())
                && table.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !valid && !table.starts_with("arn:") {
                return Err(err(
                    "COORDINATION_TABLE",
                    format!("expected a DynamoDB table name (3-255 of A-Z a-z 0-9 _ - .) or ARN, got {table:?}"),
                ));
            }
        }
        let quota_key = r
            .get("QUOTA_KEY")
            .unwrap_or_else(|| default_quota_key(workflow_type).to_string());
        if quota_key.len() > 200 || quota_key.chars().any(char::is_control) {
            return Err(err(
                "QUOTA_KEY",
                "must be at most 200 characters, without control characters",
            ));
        }
        let claim_check_bucket = r.get("CLAIM_CHECK_BUCKET");
        if let Some(bucket) = &claim_check_bucket {
            let valid = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !valid {
                return Err(err(
                    "CLAIM_CHECK_BUCKET",
                    format!("expected an S3 bucket name (3-63 of a-z 0-9 - .), got {bucket:?}"),
                ));
            }
        }
        let messages_per_execution = parse_messages_per_execution(&r, workflow_type, coordination_table.is_some())?;
        let name_source = parse_name_source(r.get("EXECUTION_NAME"))?;
        if messages_per_execution > 1 && workflow_type == WorkflowType::Standard && name_source == NameSource::None {
            return Err(err(
                "EXECUTION_NAME",
                "none cannot be combined with MESSAGES_PER_EXECUTION above 1 on Standard: claims need named executions",
            ));
        }
        let running = parse_running_cap(&r, &state_machine_arn, workflow_type, coordination_table.is_some())?;
        let max_receive_count = parse_max_receive_count(&r)?;
        let starts_per_second = r.positive_f64("STARTS_PER_SECOND", 150.0)?;
        let starts_burst = r.positive_f64("STARTS_BURST", 800.0)?;
        check_burst(starts_per_second, starts_burst)?;
        Ok(Config {
            state_machine_arn,
            starts_per_second,
            starts_burst,
            max_concurrency,
            max_in_flight,
            name_source,
            input_mode: parse_input_mode(r.get("INPUT"))?,
            workflow_type,
            deadline_margin,
            local_deadline: Duration::from_millis(r.positive_u64("LOCAL_DEADLINE_MS", 30_000)?),
            call_timeout,
            max_attempts,
            dlq_url: r.get("DLQ_URL"),
            retry_base: Duration::from_secs(retry_base),
            retry_max: Duration::from_secs(retry_max),
            log_bodies: r.bool("LOG_BODIES", false)?,
            metrics_namespace,
            coordination_table,
            quota_key,
            claim_check_bucket,
            messages_per_execution,
            queue_retention: retention(&r, "QUEUE_RETENTION_SECONDS")?,
            dlq_retention: retention(&r, "DLQ_RETENTION_SECONDS")?,
            running,
            max_receive_count,
        })
    }

    /// How long a message's claim (and its execution's record) is kept: as long as SQS can
    /// deliver the message again. A message lives in the work queue for its retention; moved
    /// to the DLQ it lives there until the DLQ's retention, counted from its first enqueue on a
    /// standard queue, from its move on a FIFO queue (whose DLQ resets the enqueue time); a
    /// redrive back makes it a new message with a new retention in the work queue. So:
    /// `queue + DLQ` on a standard queue, `2 × queue + DLQ` from a FIFO queue, plus
    /// [`CLAIM_CLOCK_MARGIN`]. (A redriven message gets a new message id: it finds its claim
    /// again only if its execution name comes from its body or an attribute.)
    pub fn claim_ttl(&self, fifo: bool) -> Duration {
        let queue = self.queue_retention * if fifo { 2 } else { 1 };
        queue + self.dlq_retention + CLAIM_CLOCK_MARGIN
    }

    /// Whether messages are grouped into batch executions (`MESSAGES_PER_EXECUTION` > 1).
    pub fn batching(&self) -> bool {
        self.messages_per_execution > 1
    }

    /// This instance's share of the budget, starts per second: `STARTS_PER_SECOND / MAX_CONCURRENCY`.
    pub fn instance_rate_per_second(&self) -> f64 {
        self.starts_per_second / f64::from(self.max_concurrency)
    }

    /// This instance's share of the burst, in starts (at least 1):
    /// `(STARTS_BURST − STARTS_PER_SECOND × BURST_RESERVE) / MAX_CONCURRENCY`.
    ///
    /// The reserve keeps [`BURST_RESERVE`] of refill out of the burst. Without it, when this
    /// bucket and the account's bucket run empty together, a call whose network delay is
    /// shorter than an earlier one's reaches AWS a moment too early and is throttled, and one
    /// throttle halves the rate (measured in BENCHMARKS.md: drain efficiency 0.89 → 0.99).
    pub fn instance_burst(&self) -> f64 {
        let reserved = self.starts_per_second * BURST_RESERVE.as_secs_f64();
        ((self.starts_burst - reserved) / f64::from(self.max_concurrency)).max(1.0)
    }
}

/// `CALL_TIMEOUT_MS` below this would cut healthy calls off: a StartExecution, DynamoDB or SQS
/// call takes tens of milliseconds (a new connection's TLS handshake more), and a call cut off
/// has an unknown outcome.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(100);

/// `STATE_MACHINE_ARN` is a state machine's ARN (or one of its versions or aliases):
/// `arn:<partition>:states:<region>:<account>:stateMachine:<name>[:<version or alias>]`, not an
/// activity's or an execution's.
fn check_state_machine_arn(arn: &str) -> Result<(), ConfigError> {
    let bad = |what: &str| {
        err("STATE_MACHINE_ARN", format!("expected a Step Functions state machine ARN (arn:<partition>:states:<region>:<account>:stateMachine:<name>), got {what} {arn:?}"))
    };
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() < 6 || parts[0] != "arn" || parts[2] != "states" {
        return Err(bad("a value that is not one"));
    }
    match parts[5] {
        "stateMachine" if (7..=8).contains(&parts.len()) && parts[6..].iter().all(|p| !p.is_empty()) => Ok(()),
        "stateMachine" => Err(bad("a malformed one")),
        "activity" => Err(bad("an activity's ARN")),
        "execution" | "express" | "mapRun" => Err(bad("an execution's ARN")),
        _ => Err(bad("another resource's ARN")),
    }
}

/// The state machine's own ARN: `STATE_MACHINE_ARN` without a version or alias (every version
/// of a state machine has its type).
pub fn state_machine_base_arn(arn: &str) -> &str {
    match arn.match_indices(':').nth(6) {
        Some((i, _)) => &arn[..i],
        None => arn,
    }
}

/// `METRICS_NAMESPACE` is one CloudWatch takes: 1–255 of `A-Z a-z 0-9 . - _ / # :` and space,
/// not starting with `:` or `AWS/` (else every metric is dropped, with no error anywhere).
fn check_metrics_namespace(namespace: &str) -> Result<(), ConfigError> {
    let valid = (1..=255).contains(&namespace.len())
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ._-/#:".contains(c))
        && !namespace.starts_with(':')
        && !namespace.starts_with("AWS/");
    match valid {
        true => Ok(()),
        false => Err(err(
            "METRICS_NAMESPACE",
            format!("CloudWatch takes 1-255 of A-Z a-z 0-9 . - _ / # : and space, not starting with : or AWS/, got {namespace:?}"),
        )),
    }
}

/// `STARTS_BURST` covers the [`BURST_RESERVE`] the pacer keeps out of it (below, the burst
/// would silently become one start).
fn check_burst(starts_per_second: f64, starts_burst: f64) -> Result<(), ConfigError> {
    let reserve = starts_per_second * BURST_RESERVE.as_secs_f64();
    match starts_burst < reserve {
        false => Ok(()),
        true => Err(err(
            "STARTS_BURST",
            format!("must be at least STARTS_PER_SECOND x 0.1 = {reserve} (the 100 ms of refill the pacer keeps in reserve), got {starts_burst}"),
        )),
    }
}

/// `CALL_TIMEOUT_MS` is at least [`MIN_CALL_TIMEOUT`].
fn check_call_timeout(call_timeout: Duration) -> Result<(), ConfigError> {
    match call_timeout < MIN_CALL_TIMEOUT {
        false => Ok(()),
        true => Err(err(
            "CALL_TIMEOUT_MS",
            format!(
                "must be at least {} ms: shorter, healthy calls are cut off and their outcome is unknown",
                MIN_CALL_TIMEOUT.as_millis()
            ),
        )),
    }
}

/// Reads a state machine's type (behind a narrow trait: the SDK adapter is
/// [`crate::aws::SfnStarter`]'s `DescribeStateMachine`).
#[async_trait::async_trait]
pub trait StateMachineTypes: Send + Sync {
    /// The type of the state machine `arn` (its own ARN, no version or alias); `Err` with the
    /// reason when it cannot be read.
    async fn workflow_type(&self, arn: &str) -> Result<WorkflowType, String>;
}

/// At init: `WORKFLOW_TYPE` is the state machine's type (exactly-once delivery on Standard
/// depends on it). A mismatch is an error naming both; a state machine that cannot be described
/// (no permission, no network) is a warning, and the configured type is used.
pub async fn check_workflow_type(config: &Config, machines: &dyn StateMachineTypes) -> Result<(), ConfigError> {
    let arn = state_machine_base_arn(&config.state_machine_arn);
    let name = |t: WorkflowType| match t {
        WorkflowType::Standard => "standard",
        WorkflowType::Express => "express",
    };
    match machines.workflow_type(arn).await {
        Ok(actual) if actual == config.workflow_type => Ok(()),
        Ok(actual) => Err(err(
            "WORKFLOW_TYPE",
            format!(
                "is {} but the state machine {arn} is {} (DescribeStateMachine): set WORKFLOW_TYPE={}",
                name(config.workflow_type),
                name(actual),
                name(actual)
            ),
        )),
        Err(reason) => {
            tracing::warn!(
                state_machine_arn = arn,
                workflow_type = name(config.workflow_type),
                reason,
                "could not read the state machine's type (states:DescribeStateMachine): WORKFLOW_TYPE is not checked"
            );
            Ok(())
        }
    }
}

/// The default `QUOTA_KEY`: the account's StartExecution bucket of the workflow type (Standard
/// and Express have separate quotas).
pub fn default_quota_key(workflow_type: WorkflowType) -> &'static str {
    match workflow_type {
        WorkflowType::Standard => "start-execution-standard",
        WorkflowType::Express => "start-execution-express",
    }
}

fn parse_name_source(raw: Option<String>) -> Result<NameSource, ConfigError> {
    let Some(raw) = raw else {
        return Ok(NameSource::MessageId);
    };
    let bad = |reason: &str| err("EXECUTION_NAME", format!("{reason}, got {raw:?}"));
    if raw == "message-id" {
        Ok(NameSource::MessageId)
    } else if raw == "none" {
        Ok(NameSource::None)
    } else if let Some(name) = raw.strip_prefix("attribute:") {
        if name.is_empty() {
            return Err(bad("attribute:<Name> needs an attribute name"));
        }
        Ok(NameSource::Attribute(name.to_string()))
    } else if let Some(pointer) = raw.strip_prefix("body:") {
        if !pointer.starts_with('/') {
            return Err(bad("body:<json-pointer> needs a JSON pointer starting with '/'"));
        }
        Ok(NameSource::BodyPointer(pointer.to_string()))
    } else {
        Err(bad(
            "expected message-id, attribute:<Name>, body:<json-pointer> or none",
        ))
    }
}

fn parse_messages_per_execution<F: Fn(&str) -> Option<String>>(
    r: &Reader<F>,
    workflow_type: WorkflowType,
    has_table: bool,
) -> Result<usize, ConfigError> {
    const VARIABLE: &str = "MESSAGES_PER_EXECUTION";
    let n = r.positive_u64(VARIABLE, 1)?;
    if n > MAX_MESSAGES_PER_EXECUTION as u64 {
        return Err(err(
            VARIABLE,
            format!("must be at most {MAX_MESSAGES_PER_EXECUTION} (one DynamoDB transaction claims every message of an execution), got {n}"),
        ));
    }
    if n > 1 && workflow_type == WorkflowType::Standard && !has_table {
        return Err(err(
            VARIABLE,
            "above 1 on a Standard workflow needs COORDINATION_TABLE (the per-message claims that keep each message exactly once)",
        ));
    }
    Ok(n as usize)
}

/// A queue's retention, in seconds within SQS's bounds; SQS's most (14 days) when unset.
fn retention<F: Fn(&str) -> Option<String>>(r: &Reader<F>, variable: &'static str) -> Result<Duration, ConfigError> {
    let seconds = r.positive_u64(variable, *RETENTION_SECONDS.end())?;
    if !RETENTION_SECONDS.contains(&seconds) {
        return Err(err(
            variable,
            format!(
                "must be a queue's MessageRetentionPeriod, {} to {} seconds (14 days), got {seconds}",
                RETENTION_SECONDS.start(),
                RETENTION_SECONDS.end()
            ),
        ));
    }
    Ok(Duration::from_secs(seconds))
}

/// `MAX_RUNNING_EXECUTIONS` and its settings; `None` when it is unset (no cap). The cap lives in
/// the coordination table, so it needs `COORDINATION_TABLE`.
fn parse_running_cap<F: Fn(&str) -> Option<String>>(
    r: &Reader<F>,
    state_machine_arn: &str,
    workflow_type: WorkflowType,
    has_table: bool,
) -> Result<Option<RunningCap>, ConfigError> {
    const EXPIRY: &str = "RUNNING_EXPIRY_SECONDS";
    let longest = match workflow_type {
        WorkflowType::Standard => MAX_RUNNING_EXPIRY,
        WorkflowType::Express => EXPRESS_MAX_DURATION,
    };
    let expiry = Duration::from_secs(r.positive_u64(EXPIRY, EXPRESS_MAX_DURATION.as_secs())?);
    if expiry > longest {
        let why = match workflow_type {
            WorkflowType::Standard => "a day",
            WorkflowType::Express => "an Express execution's longest duration",
        };
        return Err(err(
            EXPIRY,
            format!(
                "must be at most {} ({why}), got {}",
                longest.as_secs(),
                expiry.as_secs()
            ),
        ));
    }
    let key = r
        .get("RUNNING_KEY")
        .unwrap_or_else(|| crate::start::claim::scope(state_machine_arn).to_string());
    if key.len() > 200 || key.chars().any(char::is_control) {
        return Err(err(
            "RUNNING_KEY",
            "must be at most 200 characters, without control characters",
        ));
    }
    let Some(raw) = r.get("MAX_RUNNING_EXECUTIONS") else {
        return Ok(None);
    };
    let max_running: u32 = raw
        .parse()
        .ok()
        .filter(|n| (1..=MAX_RUNNING_EXECUTIONS).contains(n))
        .ok_or_else(|| {
            err(
                "MAX_RUNNING_EXECUTIONS",
                format!("expected a whole number from 1 to {MAX_RUNNING_EXECUTIONS}, got {raw:?}"),
            )
        })?;
    if !has_table {
        return Err(err(
            "MAX_RUNNING_EXECUTIONS",
            "needs COORDINATION_TABLE (the cap's slots are kept there)",
        ));
    }
    Ok(Some(RunningCap {
        max_running,
        key,
        expiry,
    }))
}

/// `MAX_RECEIVE_COUNT`: 1 to 1,000 as SQS allows; default 5 (the least AWS recommends for Lambda
/// consumers: a message is then re-sent, if it must wait longer, on its 4th receive at the latest).
fn parse_max_receive_count<F: Fn(&str) -> Option<String>>(r: &Reader<F>) -> Result<u32, ConfigError> {
    const VARIABLE: &str = "MAX_RECEIVE_COUNT";
    let n = r.positive_u64(VARIABLE, 5)?;
    if n > 1_000 {
        return Err(err(VARIABLE, format!("must be at most 1000 (SQS's limit), got {n}")));
    }
    Ok(n as u32)
}

fn parse_input_mode(raw: Option<String>) -> Result<InputMode, ConfigError> {
    match raw.as_deref() {
        None | Some("body") => Ok(InputMode::Body),
        Some("envelope") => Ok(InputMode::Envelope),
        Some(other) => Err(err("INPUT", format!("expected body or envelope, got {other:?}"))),
    }
}

fn parse_workflow_type(raw: Option<String>) -> Result<WorkflowType, ConfigError> {
    match raw.map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("standard") => Ok(WorkflowType::Standard),
        Some("express") => Ok(WorkflowType::Express),
        Some(other) => Err(err(
            "WORKFLOW_TYPE",
            format!("expected standard or express, got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:demo";

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_only_the_arn_is_set() {
        let c = load(&[("STATE_MACHINE_ARN", ARN)]).unwrap();
        assert_eq!(c.starts_per_second, 150.0);
        assert_eq!(c.starts_burst, 800.0);
        assert_eq!(c.max_concurrency, 1);
        assert_eq!(c.max_in_flight, 32);
        assert_eq!(c.name_source, NameSource::MessageId);
        assert_eq!(c.input_mode, InputMode::Body);
        assert_eq!(c.workflow_type, WorkflowType::Standard);
        assert_eq!(c.deadline_margin, Duration::from_millis(3000));
        assert_eq!(c.local_deadline, Duration::from_millis(30_000));
        assert_eq!(c.call_timeout, Duration::from_millis(2000));
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.dlq_url, None);
        assert_eq!(c.retry_base, Duration::from_secs(10));
        assert_eq!(c.retry_max, Duration::from_secs(900));
        assert!(!c.log_bodies);
        assert_eq!(c.metrics_namespace, "SfnPacer");
    }

    #[test]
    fn messages_per_execution_is_bounded_and_needs_the_table_on_standard() {
        assert_eq!(load(&[("STATE_MACHINE_ARN", ARN)]).unwrap().messages_per_execution, 1);
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![("STATE_MACHINE_ARN", ARN)];
            all.extend_from_slice(pairs);
            load(&all)
        };
        let e = with(&[("MESSAGES_PER_EXECUTION", "10")]).unwrap_err();
        assert_eq!(e.variable, "MESSAGES_PER_EXECUTION");
        assert!(e.reason.contains("COORDINATION_TABLE"), "{e}");
        let table = ("COORDINATION_TABLE", "sfn-pacer");
        assert_eq!(
            with(&[("MESSAGES_PER_EXECUTION", "10"), table])
                .unwrap()
                .messages_per_execution,
            10
        );
        assert_eq!(
            with(&[("MESSAGES_PER_EXECUTION", "99"), table])
                .unwrap()
                .messages_per_execution,
            99
        );
        let e = with(&[("MESSAGES_PER_EXECUTION", "10"), table, ("EXECUTION_NAME", "none")]).unwrap_err();
        assert_eq!(e.variable, "EXECUTION_NAME");
        let express = ("WORKFLOW_TYPE", "express");
        assert_eq!(
            with(&[("MESSAGES_PER_EXECUTION", "25"), express])
                .unwrap()
                .messages_per_execution,
            25
        );
        for bad in ["0", "100", "-1", "2.5", "ten", "18446744073709551616"] {
            let e = with(&[("MESSAGES_PER_EXECUTION", bad), table]).unwrap_err();
            assert_eq!(e.variable, "MESSAGES_PER_EXECUTION", "{bad}");
        }
    }

    #[test]
    fn the_budget_is_split_between_instances() {
        let c = load(&[
            ("STATE_MACHINE_ARN", ARN),
            ("STARTS_PER_SECOND", "300"),
            ("STARTS_BURST", "1300"),
            ("MAX_CONCURRENCY", "10"),
        ])
        .unwrap();
        assert_eq!(c.instance_rate_per_second(), 30.0);
        // (1300 − 300 × 0.1 s) / 10: 100 ms of refill stays in reserve.
        assert_eq!(c.instance_burst(), 127.0);
        let tiny = load(&[
            ("STATE_MACHINE_ARN", ARN),
            ("STARTS_PER_SECOND", "10"),
            ("STARTS_BURST", "5"),
            ("MAX_CONCURRENCY", "10"),
        ])
        .unwrap();
        assert_eq!(tiny.instance_burst(), 1.0, "the burst never drops below one start");
    }

    #[test]
    fn name_sources_parse() {
        let with = |v: &str| load(&[("STATE_MACHINE_ARN", ARN), ("EXECUTION_NAME", v)]).map(|c| c.name_source);
        assert_eq!(
            with("attribute:OrderId").unwrap(),
            NameSource::Attribute("OrderId".into())
        );
        assert_eq!(
            with("body:/order/id").unwrap(),
            NameSource::BodyPointer("/order/id".into())
        );
        assert_eq!(with("none").unwrap(), NameSource::None);
        assert_eq!(with("body:order").unwrap_err().variable, "EXECUTION_NAME");
        assert_eq!(with("attribute:").unwrap_err().variable, "EXECUTION_NAME");
        assert_eq!(with("uuid").unwrap_err().variable, "EXECUTION_NAME");
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("STARTS_PER_SECOND", "fast", "STARTS_PER_SECOND"),
            ("STARTS_PER_SECOND", "0", "STARTS_PER_SECOND"),
            ("STARTS_PER_SECOND", "NaN", "STARTS_PER_SECOND"),
            ("STARTS_BURST", "-1", "STARTS_BURST"),
            ("MAX_CONCURRENCY", "0", "MAX_CONCURRENCY"),
            ("MAX_CONCURRENCY", "99999999999", "MAX_CONCURRENCY"),
            ("MAX_IN_FLIGHT", "1.5", "MAX_IN_FLIGHT"),
            ("INPUT", "raw", "INPUT"),
            ("WORKFLOW_TYPE", "sync", "WORKFLOW_TYPE"),
            ("DEADLINE_MARGIN_MS", "soon", "DEADLINE_MARGIN_MS"),
            ("CALL_TIMEOUT_MS", "5000", "CALL_TIMEOUT_MS"),
            ("MAX_ATTEMPTS", "0", "MAX_ATTEMPTS"),
            ("RETRY_MAX_SECONDS", "43200", "RETRY_MAX_SECONDS"),
            ("RETRY_BASE_SECONDS", "1000", "RETRY_BASE_SECONDS"),
            ("LOG_BODIES", "maybe", "LOG_BODIES"),
            ("METRICS_NAMESPACE", "AWS/States", "METRICS_NAMESPACE"),
            ("METRICS_NAMESPACE", "Sfn|Pacer", "METRICS_NAMESPACE"),
            ("METRICS_NAMESPACE", ":SfnPacer", "METRICS_NAMESPACE"),
            ("STARTS_BURST", "14", "STARTS_BURST"),
            ("CALL_TIMEOUT_MS", "99", "CALL_TIMEOUT_MS"),
        ];
        for (variable, value, named) in cases {
            let e = load(&[("STATE_MACHINE_ARN", ARN), (variable, value)]).unwrap_err();
            assert_eq!(&e.variable, named, "{variable}={value}");
            assert!(e.to_string().contains(named), "{e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn the_state_machine_arn_is_required_and_checked() {
        assert_eq!(load(&[]).unwrap_err().variable, "STATE_MACHINE_ARN");
        assert_eq!(
            load(&[("STATE_MACHINE_ARN", "  ")]).unwrap_err().variable,
            "STATE_MACHINE_ARN"
        );
        assert_eq!(
            load(&[("STATE_MACHINE_ARN", "my-machine")]).unwrap_err().variable,
            "STATE_MACHINE_ARN"
        );
    }

    #[test]
    fn blank_values_mean_the_default_and_case_is_forgiven() {
        let c = load(&[
            ("STATE_MACHINE_ARN", ARN),
            ("DLQ_URL", " "),
            ("WORKFLOW_TYPE", "EXPRESS"),
            ("LOG_BODIES", "TRUE"),
        ])
        .unwrap();
        assert_eq!(c.dlq_url, None);
        assert_eq!(c.workflow_type, WorkflowType::Express);
        assert!(c.log_bodies);
    }

    #[test]
    fn coordination_is_off_by_default_and_the_key_follows_the_workflow_type() {
        let c = load(&[("STATE_MACHINE_ARN", ARN)]).unwrap();
        assert_eq!(c.coordination_table, None);
        assert_eq!(c.quota_key, "start-execution-standard");
        let express = load(&[("STATE_MACHINE_ARN", ARN), ("WORKFLOW_TYPE", "express")]).unwrap();
        assert_eq!(express.quota_key, "start-execution-express");
        let c = load(&[
            ("STATE_MACHINE_ARN", ARN),
            ("COORDINATION_TABLE", "sfn-pacer-coordination"),
            ("QUOTA_KEY", "team-a"),
        ])
        .unwrap();
        assert_eq!(c.coordination_table.as_deref(), Some("sfn-pacer-coordination"));
        assert_eq!(c.quota_key, "team-a");
        let arn = "arn:aws:dynamodb:us-east-1:123456789012:table/shared";
        let c = load(&[("STATE_MACHINE_ARN", ARN), ("COORDINATION_TABLE", arn)]).unwrap();
        assert_eq!(c.coordination_table.as_deref(), Some(arn));
    }

    #[test]
    fn bad_coordination_settings_name_the_variable() {
        for (variable, value) in [
            ("COORDINATION_TABLE", "a b"),
            ("COORDINATION_TABLE", "ab"),
            ("QUOTA_KEY", "line\nbreak"),
        ] {
            let e = load(&[("STATE_MACHINE_ARN", ARN), (variable, value)]).unwrap_err();
            assert_eq!(e.variable, variable, "{e}");
            assert!(e.to_string().contains(variable));
        }
        let long = "k".repeat(201);
        let e = load(&[("STATE_MACHINE_ARN", ARN), ("QUOTA_KEY", &long)]).unwrap_err();
        assert_eq!(e.variable, "QUOTA_KEY");
    }

    #[test]
    fn alias_and_version_arns_of_state_machines_are_accepted() {
        for arn in [
            "arn:aws:states:us-east-1:123456789012:stateMachine:demo:live",
            "arn:aws:states:us-east-1:123456789012:stateMachine:demo:7",
            "arn:aws-us-gov:states:us-gov-west-1:123456789012:stateMachine:demo",
        ] {
            assert_eq!(load(&[("STATE_MACHINE_ARN", arn)]).unwrap().state_machine_arn, arn);
        }
    }

    #[test]
    fn the_claim_check_bucket_is_optional_and_checked() {
        assert_eq!(load(&[("STATE_MACHINE_ARN", ARN)]).unwrap().claim_check_bucket, None);
        let c = load(&[("STATE_MACHINE_ARN", ARN), ("CLAIM_CHECK_BUCKET", "my-inputs.eu")]).unwrap();
        assert_eq!(c.claim_check_bucket.as_deref(), Some("my-inputs.eu"));
        for bad in ["My_Bucket", "ab", "s3://bucket"] {
            let e = load(&[("STATE_MACHINE_ARN", ARN), ("CLAIM_CHECK_BUCKET", bad)]).unwrap_err();
            assert_eq!(e.variable, "CLAIM_CHECK_BUCKET", "{bad}");
        }
    }

    #[test]
    fn claims_are_kept_as_long_as_the_queues_can_deliver_a_message_again() {
        let day = Duration::from_secs(86_400);
        let defaults = load(&[("STATE_MACHINE_ARN", ARN)]).unwrap();
        assert_eq!((defaults.queue_retention, defaults.dlq_retention), (14 * day, 14 * day));
        assert_eq!(defaults.claim_ttl(false), 28 * day + CLAIM_CLOCK_MARGIN);
        let template = load(&[
            ("STATE_MACHINE_ARN", ARN),
            ("QUEUE_RETENTION_SECONDS", "345600"),
            ("DLQ_RETENTION_SECONDS", "1209600"),
        ])
        .unwrap();
        assert_eq!(template.claim_ttl(false), 18 * day + CLAIM_CLOCK_MARGIN);
        // A FIFO queue's DLQ resets the enqueue time: the work queue's retention counts twice.
        assert_eq!(template.claim_ttl(true), 22 * day + CLAIM_CLOCK_MARGIN);
        for variable in ["QUEUE_RETENTION_SECONDS", "DLQ_RETENTION_SECONDS"] {
            for bad in ["0", "59", "1209601", "4d", "-1"] {
                let e = load(&[("STATE_MACHINE_ARN", ARN), (variable, bad)]).unwrap_err();
                assert_eq!(e.variable, variable, "{bad}");
                assert!(!e.to_string().contains('\n'));
            }
        }
    }

    #[test]
    fn the_cap_is_off_by_default_and_needs_the_table() {
        let c = load(&[("STATE_MACHINE_ARN", ARN)]).unwrap();
        assert_eq!(c.running, None);
        assert_eq!(c.max_receive_count, 5);
        let e = load(&[("STATE_MACHINE_ARN", ARN), ("MAX_RUNNING_EXECUTIONS", "20")]).unwrap_err();
        assert_eq!(e.variable, "MAX_RUNNING_EXECUTIONS");
        assert!(e.reason.contains("COORDINATION_TABLE"), "{e}");
        let table = ("COORDINATION_TABLE", "sfn-pacer");
        let c = load(&[("STATE_MACHINE_ARN", ARN), table, ("MAX_RUNNING_EXECUTIONS", "20")]).unwrap();
        assert_eq!(
            c.running,
            Some(RunningCap {
                max_running: 20,
                key: "demo".into(),
                expiry: Duration::from_secs(300),
            }),
            "the key defaults to the state machine's name"
        );
        let c = load(&[
            ("STATE_MACHINE_ARN", ARN),
            table,
            ("MAX_RUNNING_EXECUTIONS", "1000000"),
            ("RUNNING_KEY", "database-a"),
            ("RUNNING_EXPIRY_SECONDS", "3600"),
            ("MAX_RECEIVE_COUNT", "10"),
        ])
        .unwrap();
        let cap = c.running.unwrap();
        assert_eq!((cap.max_running, cap.key.as_str()), (1_000_000, "database-a"));
        assert_eq!((cap.expiry, c.max_receive_count), (Duration::from_secs(3600), 10));
    }

    #[test]
    fn bad_cap_settings_name_their_variable() {
        let table = ("COORDINATION_TABLE", "sfn-pacer");
        let long_key = "k".repeat(201);
        for (variable, value, more) in [
            ("MAX_RUNNING_EXECUTIONS", "0", None),
            ("MAX_RUNNING_EXECUTIONS", "1000001", None),
            ("MAX_RUNNING_EXECUTIONS", "ten", None),
            ("RUNNING_KEY", long_key.as_str(), None),
            ("RUNNING_EXPIRY_SECONDS", "0", None),
            ("RUNNING_EXPIRY_SECONDS", "86401", None),
            ("RUNNING_EXPIRY_SECONDS", "301", Some(("WORKFLOW_TYPE", "express"))),
            ("MAX_RECEIVE_COUNT", "0", None),
            ("MAX_RECEIVE_COUNT", "1001", None),
        ] {
            let mut pairs = vec![("STATE_MACHINE_ARN", ARN), table, ("MAX_RUNNING_EXECUTIONS", "5")];
            pairs.extend(more);
            pairs.push((variable, value));
            let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let e = Config::from_lookup(|k| map.get(k).cloned()).unwrap_err();
            assert_eq!(e.variable, variable, "{variable}={value}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn only_a_state_machine_arn_is_accepted() {
        let prefix = "arn:aws:states:us-east-1:123456789012";
        for bad in [
            format!("{prefix}:activity:approve"),
            format!("{prefix}:execution:demo:run-1"),
            format!("{prefix}:express:demo:run-1:abc"),
            format!("{prefix}:stateMachine:"),
            format!("{prefix}:stateMachine:demo:1:extra"),
            "arn:aws:lambda:us-east-1:123456789012:function:demo".to_string(),
        ] {
            let e = load(&[("STATE_MACHINE_ARN", &bad)]).unwrap_err();
            assert_eq!(e.variable, "STATE_MACHINE_ARN", "{bad}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = load(&[("STATE_MACHINE_ARN", &format!("{prefix}:activity:approve"))]).unwrap_err();
        assert!(e.reason.contains("an activity's ARN"), "{e}");
        assert_eq!(
            state_machine_base_arn(&format!("{prefix}:stateMachine:demo:live")),
            format!("{prefix}:stateMachine:demo")
        );
        assert_eq!(state_machine_base_arn(ARN), ARN);
    }

    #[test]
    fn the_metrics_namespace_is_one_cloudwatch_takes() {
        for good in ["SfnPacer", "Team A/sfn-pacer", "a.b_c-d#e:f"] {
            assert_eq!(
                load(&[("STATE_MACHINE_ARN", ARN), ("METRICS_NAMESPACE", good)])
                    .unwrap()
                    .metrics_namespace,
                good
            );
        }
        for bad in ["AWS/States", ":x", "Ünïcode", "tab\there", &"n".repeat(256)] {
            let e = load(&[("STATE_MACHINE_ARN", ARN), ("METRICS_NAMESPACE", bad)]).unwrap_err();
            assert_eq!(e.variable, "METRICS_NAMESPACE", "{bad}");
        }
    }

    #[test]
    fn a_burst_below_the_reserve_and_a_tiny_call_timeout_are_refused() {
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![("STATE_MACHINE_ARN", ARN)];
            all.extend_from_slice(pairs);
            load(&all)
        };
        let e = with(&[("STARTS_PER_SECOND", "300"), ("STARTS_BURST", "29")]).unwrap_err();
        assert_eq!(e.variable, "STARTS_BURST");
        assert!(e.reason.contains("30"), "{e}");
        assert!(with(&[("STARTS_PER_SECOND", "300"), ("STARTS_BURST", "30")]).is_ok());
        assert_eq!(
            with(&[("CALL_TIMEOUT_MS", "50")]).unwrap_err().variable,
            "CALL_TIMEOUT_MS"
        );
        assert!(with(&[("CALL_TIMEOUT_MS", "100")]).is_ok());
    }

    struct Typed(Result<WorkflowType, String>, std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl StateMachineTypes for Typed {
        async fn workflow_type(&self, arn: &str) -> Result<WorkflowType, String> {
            self.1.lock().unwrap().push(arn.to_string());
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn the_workflow_type_must_be_the_state_machines() {
        let alias = format!("{ARN}:live");
        let express = load(&[("STATE_MACHINE_ARN", &alias), ("WORKFLOW_TYPE", "express")]).unwrap();
        let machines = Typed(Ok(WorkflowType::Standard), Default::default());
        let e = check_workflow_type(&express, &machines).await.unwrap_err();
        assert_eq!(e.variable, "WORKFLOW_TYPE");
        assert!(
            e.reason.contains("express") && e.reason.contains("standard") && e.reason.contains(ARN),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
        assert_eq!(
            machines.1.lock().unwrap().as_slice(),
            [ARN.to_string()],
            "described without the alias"
        );
        let standard = load(&[("STATE_MACHINE_ARN", ARN)]).unwrap();
        assert!(check_workflow_type(&standard, &machines).await.is_ok());
        // Not readable (no permission): the configured type is used, with a warning.
        let unknown = Typed(Err("AccessDeniedException".into()), Default::default());
        assert!(check_workflow_type(&express, &unknown).await.is_ok());
    }
}
